//! The CA server over real HTTPS on loopback: authentication, authorisation,
//! every rejection, long-polled bundles, garbage on the socket, metrics, and
//! a full root rotation while a client keeps issuing and verifying.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use ca::{Authority, AuthorityParams, CaState, IssuePolicy, TrustDomain, WorkloadIndex};
use ca_server::{CaClient, ClientError, Config, DirStore, FakeClock, Server, SystemClock};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, UnixTime, pem::PemObject};
use time::{Duration, OffsetDateTime};
use tokio::io::AsyncWriteExt;

/// Pods: bookstore/api runs on node-1 only; bookstore/db on node-2.
struct Index(BTreeSet<(String, String, String)>);

impl WorkloadIndex for Index {
    fn runs_on(&self, node: &str, ns: &str, sa: &str) -> bool {
        self.0.contains(&(node.to_string(), ns.to_string(), sa.to_string()))
    }
}

fn index() -> Arc<Index> {
    Arc::new(Index(BTreeSet::from([
        ("node-1".into(), "bookstore".into(), "api".into()),
        ("node-2".into(), "bookstore".into(), "db".into()),
    ])))
}

const API: &str = "spiffe://cluster.local/ns/bookstore/sa/api";
const DB: &str = "spiffe://cluster.local/ns/bookstore/sa/db";

fn csr(id: &str) -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

struct Ca {
    store: DirStore,
    _dir: tempfile::TempDir,
    addr: String,
    admin: String,
    bundle_pem: String,
    tokens: std::collections::BTreeMap<String, String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Ca {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn start(policy: IssuePolicy, clock: Arc<dyn ca_server::Clock>) -> Ca {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path());
    let td = TrustDomain::new("cluster.local").unwrap();
    let now = clock.now();
    let mut state =
        CaState::new(td.clone(), Authority::generate(&td, now, AuthorityParams::default()).unwrap(), policy, now);
    state.min_propagation = Duration::seconds(1);
    let lock = store.lock().unwrap();
    store.create(&state, &lock).unwrap();
    store.create_token("node-1", &lock).unwrap();
    store.create_token("node-2", &lock).unwrap();
    drop(lock);
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        reload: StdDuration::from_millis(100),
        ..Config::default()
    };
    let server = Server::bind(config, Box::new(store.clone()), index(), clock).await.unwrap();
    let addr = server.local_addr().unwrap().to_string();
    let admin = server.admin_addr().unwrap().to_string();
    let bundle_pem = server.bundle().pem();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    let tokens = store.tokens().unwrap();
    Ca { store, _dir: dir, addr, admin, bundle_pem, tokens, stop: Some(tx) }
}

impl Ca {
    fn client(&self, node: Option<&str>) -> CaClient {
        CaClient::new(&self.addr, "localhost", &self.bundle_pem, node.map(|n| self.tokens[n].clone())).unwrap()
    }

    fn modify(&self, f: impl FnOnce(&mut CaState)) {
        let lock = self.store.lock().unwrap();
        let mut s = self.store.load().unwrap();
        f(&mut s);
        self.store.save(&s, &lock).unwrap();
    }
}

/// Verifies a chain the way the mesh's TLS servers will: rustls/webpki
/// client-certificate verification against the bundle.
fn verify(chain: &[String], bundle_pem: &str) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
    let certs: Vec<CertificateDer<'static>> =
        chain.iter().map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap()).collect();
    v.verify_client_cert(&certs[0], &certs[1..], UnixTime::now()).map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn issues_only_what_the_node_runs_and_rejects_everything_else() {
    let ca = start(IssuePolicy::default(), Arc::new(SystemClock)).await;
    let n1 = ca.client(Some("node-1"));
    let ok = n1.sign(&csr(API), Some(StdDuration::from_secs(3600))).await.unwrap();
    assert_eq!(ok.identity.to_string(), API);
    assert_eq!(ok.chain.len(), 2);
    assert!((ok.not_after - ok.not_before - Duration::minutes(65)).abs() < Duration::seconds(5));
    verify(&ok.chain, &ok.bundle.pem()).unwrap();

    // node-2 cannot obtain an identity that only runs on node-1.
    let n2 = ca.client(Some("node-2"));
    match n2.sign(&csr(API), None).await {
        Err(ClientError::Refused { status: 403, body }) => {
            assert_eq!(body.reason, "denied");
            assert!(body.error.contains("node-2") && body.error.contains(API), "{}", body.error);
        }
        other => panic!("{other:?}"),
    }
    assert!(n2.sign(&csr(DB), None).await.is_ok());

    // No token, a wrong token.
    let anon = ca.client(None);
    assert!(matches!(anon.sign(&csr(API), None).await, Err(ClientError::Refused { status: 401, .. })));
    let wrong = CaClient::new(&ca.addr, "localhost", &ca.bundle_pem, Some("0".repeat(64))).unwrap();
    assert!(matches!(wrong.sign(&csr(API), None).await, Err(ClientError::Refused { status: 401, .. })));

    // Bad CSRs and a foreign trust domain.
    for bad in ["", "garbage", &csr("spiffe://evil.example/ns/bookstore/sa/api")] {
        match n1.sign(bad, None).await {
            Err(ClientError::Refused { status: 400, body }) => assert_eq!(body.reason, "bad_csr"),
            other => panic!("{other:?}"),
        }
    }

    // Garbage on the socket: the server keeps serving.
    for junk in [&b"\x16\x03\x01\x00\x05hello"[..], b"GET / HTTP/1.1\r\n\r\n", &[0u8; 4096][..]] {
        let mut s = tokio::net::TcpStream::connect(&ca.addr).await.unwrap();
        let _ = s.write_all(junk).await;
        drop(s);
    }
    assert!(n1.sign(&csr(API), None).await.is_ok());

    // Status and metrics.
    let status = anon.status().await.unwrap();
    assert_eq!(status["ca"]["stage"], "stable");
    assert!(!status.to_string().contains("PRIVATE KEY"));
    let metrics = reqwest_get(&ca.admin, "/metrics").await;
    assert!(metrics.contains("ztunnel_ca_certificates_issued_total 3"), "{metrics}");
    assert!(metrics.contains("reason=\"denied\""), "{metrics}");
    assert!(metrics.contains("reason=\"unauthenticated\""), "{metrics}");
    assert!(metrics.contains("reason=\"bad_csr\""), "{metrics}");
    assert!(metrics.contains("ztunnel_ca_certificate_expiry_seconds"), "{metrics}");
    assert!(!metrics.contains("PRIVATE KEY"));
}

/// Minimal HTTP/1.1 GET for the plain admin endpoint.
async fn reqwest_get(addr: &str, path: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn bundle_long_poll_wakes_on_change() {
    let ca = start(IssuePolicy::default(), Arc::new(SystemClock)).await;
    let c = ca.client(None);
    let b = c.bundle(None, None).await.unwrap().unwrap();
    assert_eq!(b.roots.len(), 1);
    // Unchanged: a short wait returns "not modified".
    assert!(c.bundle(Some(b.version), Some(StdDuration::from_secs(1))).await.unwrap().is_none());
    let waiter = {
        let c = ca.client(None);
        let v = b.version;
        tokio::spawn(async move { c.bundle(Some(v), Some(StdDuration::from_secs(20))).await })
    };
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let td = TrustDomain::new("cluster.local").unwrap();
    ca.modify(|s| {
        let now = OffsetDateTime::now_utc();
        s.prepare(now, || Authority::generate(&td, now, AuthorityParams::default())).unwrap();
        s.propagate(now).unwrap();
    });
    let nb = waiter.await.unwrap().unwrap().expect("changed bundle");
    assert!(started.elapsed() < StdDuration::from_secs(3), "{:?}", started.elapsed());
    assert!(nb.version > b.version);
    assert_eq!(nb.roots.len(), 2);
}

#[tokio::test]
async fn a_broken_state_file_keeps_the_last_good_state_serving() {
    let ca = start(IssuePolicy::default(), Arc::new(SystemClock)).await;
    let n1 = ca.client(Some("node-1"));
    ca_server::store::write_secret(&ca.store.dir().join("state.json"), b"{ truncated").unwrap();
    tokio::time::sleep(StdDuration::from_millis(400)).await;
    let r = n1.sign(&csr(API), None).await.unwrap();
    verify(&r.chain, &ca.bundle_pem).unwrap();
    let metrics = reqwest_get(&ca.admin, "/metrics").await;
    assert!(!metrics.contains("ztunnel_ca_reload_errors_total 0"), "{metrics}");
}

#[tokio::test]
async fn fake_clock_sets_validity() {
    // The CA's clock runs an hour behind; leaves live 30 minutes.
    let t0 = OffsetDateTime::now_utc() - Duration::hours(1);
    let clock = Arc::new(FakeClock::new(t0));
    let ca = start(IssuePolicy { max_ttl: Duration::minutes(30), ..IssuePolicy::default() }, clock.clone()).await;
    let n1 = ca.client(Some("node-1"));
    let a = n1.sign(&csr(API), None).await.unwrap();
    assert!((a.not_after - t0 - Duration::minutes(30)).abs() < Duration::seconds(1), "{}", a.not_after);
    assert!((t0 - a.not_before - Duration::minutes(5)).abs() < Duration::seconds(1), "backdated: {}", a.not_before);
    // Expired by the real clock, and webpki says so.
    let err = verify(&a.chain, &ca.bundle_pem).unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
    clock.advance(Duration::hours(1));
    let b = n1.sign(&csr(API), None).await.unwrap();
    assert!(b.not_after >= a.not_after + Duration::minutes(59));
    verify(&b.chain, &ca.bundle_pem).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_rotation_while_a_client_keeps_issuing_and_verifying() {
    let policy = IssuePolicy { max_ttl: Duration::seconds(2), min_ttl: Duration::seconds(1), ..IssuePolicy::default() };
    let ca = Arc::new(start(policy, Arc::new(SystemClock)).await);
    let old_signer = ca.store.load().unwrap().active.id;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The client: sign, then verify the chain against the newest bundle it
    // holds — exactly what a peer would do on its next handshake.
    let worker = {
        let ca = ca.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = ca.client(Some("node-1"));
            let mut bundle = c.bundle(None, None).await.unwrap().unwrap();
            let (mut ok, mut signers) = (0usize, BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(b) = c.bundle(Some(bundle.version), None).await.unwrap() {
                    bundle = b;
                }
                let r = c.sign(&csr(API), None).await.expect("issuance never fails during a rotation");
                verify(&r.chain, &bundle.pem()).expect("chain verifies against the current bundle");
                verify(&r.chain, &r.bundle.pem()).unwrap();
                signers.insert(r.bundle.signer.clone());
                ok += 1;
            }
            (ok, signers)
        })
    };
    let step = |f: fn(&mut CaState, OffsetDateTime) -> Result<ca::Outcome, ca::CaError>| {
        let ca = ca.clone();
        async move {
            tokio::time::sleep(StdDuration::from_millis(400)).await;
            ca.modify(|s| {
                f(s, OffsetDateTime::now_utc()).unwrap();
            });
        }
    };
    step(|s, now| {
        let td = s.trust_domain.clone();
        s.prepare(now, || Authority::generate(&td, now, AuthorityParams::default()))
    })
    .await;
    step(|s, now| s.propagate(now)).await;
    // Wait out min_propagation (1 s) rather than forcing.
    tokio::time::sleep(StdDuration::from_millis(800)).await;
    step(|s, now| s.switch(now, false)).await;
    // Retire only once leaves of the old root have expired (max_ttl 2 s).
    tokio::time::sleep(StdDuration::from_millis(2000)).await;
    step(|s, now| s.retire(now, false)).await;
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, signers) = worker.await.unwrap();
    assert!(ok > 20, "only {ok} issuances");
    assert_eq!(signers.len(), 2, "both authorities signed: {signers:?}");
    let state = ca.store.load().unwrap();
    assert_ne!(state.active.id, old_signer);
    assert_eq!(state.bundle(OffsetDateTime::now_utc()).roots.len(), 1);
    // A fresh client that only knows the old bundle is refused by the new
    // server certificate — the old root is really gone.
    let stale = ca.client(None);
    assert!(matches!(stale.status().await, Err(ClientError::Tls { .. })));
}
