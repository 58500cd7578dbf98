//! In-process HBONE tests: a fake CA, two proxies' secret caches, the
//! inbound listener on loopback and the outbound client. Every rejection
//! case is a real connection that fails the way a user would see it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ca::api::SignResponse;
use ca::{Authority, AuthorityParams, CaState, IssuePolicy, Signer, SpiffeId, TrustDomain, validate_csr};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::inbound::{Inbound, InboundConfig, Workload, Workloads};
use super::outbound::{Outbound, OutboundError};
use crate::identity::manager::{new_csr, workload_cert};
use crate::identity::{Bundle, SecretCache, WorkloadCert};

struct Pki {
    state: CaState,
}

impl Pki {
    fn new(td: &str) -> Self {
        let td = TrustDomain::new(td).unwrap();
        let now = OffsetDateTime::now_utc();
        let a = Authority::generate(&td, now - time::Duration::days(3), AuthorityParams::default()).unwrap();
        Self { state: CaState::new(td, a, IssuePolicy::default(), now) }
    }

    fn id(&self, ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new(&self.state.trust_domain, ns, sa).unwrap()
    }

    /// A certificate for `id` issued at `now + shift` for `ttl`.
    fn cert(&self, id: &SpiffeId, shift: time::Duration, ttl: time::Duration) -> WorkloadCert {
        let (key, csr) = new_csr(id).unwrap();
        let v = validate_csr(csr.as_bytes(), &self.state.trust_domain).unwrap();
        let at = OffsetDateTime::now_utc() + shift;
        let policy =
            IssuePolicy { min_ttl: ttl, max_ttl: ttl, backdate: time::Duration::ZERO, ..IssuePolicy::default() };
        let i = Signer::new(&self.state.active).unwrap().issue(&v, id, Some(ttl), &policy, at).unwrap();
        let r = SignResponse {
            identity: i.identity,
            chain: i.chain,
            serial: i.serial,
            not_before: i.not_before,
            not_after: i.not_after,
            bundle: self.state.bundle(at),
        };
        workload_cert(id, &key, &r).unwrap()
    }

    fn bundle(&self) -> Bundle {
        Bundle::new(self.state.bundle(OffsetDateTime::now_utc())).unwrap()
    }
}

const HOUR: time::Duration = time::Duration::hours(1);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Pods: frontend (sa bookstore) and other (sa other) on node-a; db (sa db)
/// on node-b. Ingress to db:6380 is denied by policy `default/deny-6380`.
struct Cluster(HashMap<IpAddr, Workload>);

impl Workloads for Cluster {
    fn by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        self.0.get(&ip).cloned().map(Arc::new)
    }
    fn node_address(&self, _node: &str) -> Option<IpAddr> {
        None
    }
    fn ingress(&self, _src: IpAddr, _dst: IpAddr, port: u16) -> Result<(), String> {
        if port.is_multiple_of(2) { Err("isolated by default/deny-even-ports".into()) } else { Ok(()) }
    }
}

fn w(name: &str, sa: &str, node: &str) -> Workload {
    Workload::new(format!("default/{name}"), "default".into(), sa.into(), Some(node.into()))
}

/// The test workloads; `db_audited`: db's namespace is in policy audit mode.
fn cluster(db_audited: bool) -> Arc<Cluster> {
    Arc::new(Cluster(HashMap::from([
        (ip("127.0.0.10"), w("frontend", "bookstore", "node-a")),
        (ip("127.0.0.12"), w("other", "other", "node-a")),
        (ip("127.0.0.11"), w("db", "db", "node-b").with_policy_audit(db_audited)),
    ])))
}

/// An echo server standing for the db pod on 127.0.0.11 (odd port).
async fn echo_pod() -> SocketAddr {
    loop {
        let l = TcpListener::bind("127.0.0.11:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        if !addr.port().is_multiple_of(2) {
            tokio::spawn(async move {
                loop {
                    let Ok((mut s, _)) = l.accept().await else { return };
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            });
            return addr;
        }
    }
}

struct Mesh {
    pki: Pki,
    a: Arc<SecretCache>,
    b: Arc<SecretCache>,
    proxy_b: SocketAddr,
    out: Outbound,
    frontend: SpiffeId,
    db: SpiffeId,
    /// node-b's proxy metrics.
    metrics_b: Arc<super::metrics::ProxyMetrics>,
}

/// Where policy audit mode is on in a test mesh.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Audit {
    Off,
    /// The whole node (`--policy-audit`).
    Node,
    /// The destination's namespace (its label).
    Namespace,
}

async fn mesh() -> Mesh {
    mesh_with(Audit::Off).await
}

async fn mesh_with(audit: Audit) -> Mesh {
    let pki = Pki::new("cluster.local");
    let (frontend, db) = (pki.id("default", "bookstore"), pki.id("default", "db"));
    let (a, b) = (Arc::new(SecretCache::new()), Arc::new(SecretCache::new()));
    a.put_bundle(pki.bundle());
    b.put_bundle(pki.bundle());
    a.put_cert(pki.cert(&frontend, time::Duration::ZERO, HOUR));
    b.put_cert(pki.cert(&db, time::Duration::ZERO, HOUR));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_b = listener.local_addr().unwrap();
    let config = InboundConfig {
        node: "node-b".into(),
        transparent: false,
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        policy_audit: audit == Audit::Node,
        local_cc: None,
    };
    let metrics = Arc::new(super::metrics::ProxyMetrics::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(tx); // never shut down during a test
    tokio::spawn(
        Arc::new(Inbound::new(b.clone(), cluster(audit == Audit::Namespace), config, metrics.clone(), rx))
            .serve(listener),
    );
    let out = Outbound::new(a.clone(), Default::default());
    Mesh { pki, a, b, proxy_b, out, frontend, db, metrics_b: metrics }
}

async fn roundtrip(io: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin), msg: &[u8]) -> Vec<u8> {
    io.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    io.read_exact(&mut buf).await.unwrap();
    buf
}

fn src(port: u16) -> SocketAddr {
    SocketAddr::new(ip("127.0.0.10"), port)
}

#[tokio::test]
async fn tunnel_carries_bytes_and_connections_are_pooled() {
    let m = mesh().await;
    let pod = echo_pod().await;
    let mut t1 = m.out.connect(&m.frontend, src(40000), &m.db, pod, m.proxy_b).await.unwrap();
    assert_eq!(roundtrip(&mut t1, b"hello db").await, b"hello db");
    let mut t2 = m.out.connect(&m.frontend, src(40001), &m.db, pod, m.proxy_b).await.unwrap();
    assert_eq!(roundtrip(&mut t2, &[7u8; 300_000]).await, vec![7u8; 300_000]);
    assert_eq!(m.out.pool_size().await, 1, "two flows, one connection");
    // Half-close: the pod sees EOF and closes its side; we read EOF.
    t1.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), t1.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn streams_per_connection_are_bounded_and_freed_slots_are_reused() {
    let mut m = mesh().await;
    m.out = Outbound::new(m.a.clone(), Default::default()).with_streams_per_connection(2);
    let pod = echo_pod().await;
    let mut t1 = m.out.connect(&m.frontend, src(40100), &m.db, pod, m.proxy_b).await.unwrap();
    let mut t2 = m.out.connect(&m.frontend, src(40101), &m.db, pod, m.proxy_b).await.unwrap();
    assert_eq!(m.out.pool_size().await, 1, "two tunnels fit on one connection");
    let mut t3 = m.out.connect(&m.frontend, src(40102), &m.db, pod, m.proxy_b).await.unwrap();
    assert_eq!(m.out.pool_size().await, 2, "the third opens a second connection");
    for (t, msg) in [(&mut t1, &b"one"[..]), (&mut t2, b"two"), (&mut t3, b"three")] {
        assert_eq!(roundtrip(t, msg).await, msg);
    }
    // A finished tunnel gives its slot back: the next one uses it.
    drop(t1);
    let mut t4 = m.out.connect(&m.frontend, src(40103), &m.db, pod, m.proxy_b).await.unwrap();
    assert_eq!(roundtrip(&mut t4, b"four").await, b"four");
    assert_eq!(m.out.pool_size().await, 2, "no third connection");
}

/// The number of HBONE connections `metrics` counts open in `direction`,
/// once it equals `want` (or what it is after 5 s).
async fn hbone_connections(metrics: &super::metrics::ProxyMetrics, direction: &'static str, want: i64) -> i64 {
    let g = metrics.hbone_connections.get_or_create(&super::metrics::DirectionLabels { direction }).clone();
    for _ in 0..250 {
        if g.get() == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    g.get()
}

#[tokio::test]
async fn a_connection_is_retired_when_the_last_tunnel_of_a_burst_ends_and_not_otherwise() {
    let mut m = mesh().await;
    let metrics = Arc::new(super::metrics::ProxyMetrics::default());
    m.out = Outbound::new(m.a.clone(), metrics.clone()).with_retire_after(2);
    let pod = echo_pod().await;
    // Two tunnels at a time: not above the bound, the connection stays.
    for round in 0..2u16 {
        let mut a = m.out.connect(&m.frontend, src(40200 + 2 * round), &m.db, pod, m.proxy_b).await.unwrap();
        let mut b = m.out.connect(&m.frontend, src(40201 + 2 * round), &m.db, pod, m.proxy_b).await.unwrap();
        assert_eq!(roundtrip(&mut a, b"a").await, b"a");
        assert_eq!(roundtrip(&mut b, b"b").await, b"b");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(m.out.pool_size().await, 1, "a small peak keeps the connection pooled");
    assert_eq!(hbone_connections(&metrics, "outbound", 1).await, 1);
    // Three at a time: once all three have ended, cleanly, it is closed.
    let mut ts = Vec::new();
    for i in 0..3 {
        ts.push(m.out.connect(&m.frontend, src(40210 + i), &m.db, pod, m.proxy_b).await.unwrap());
    }
    assert_eq!(m.out.pool_size().await, 1, "the burst shares the pooled connection");
    for (i, t) in ts.iter_mut().enumerate() {
        let msg = format!("burst {i}");
        assert_eq!(roundtrip(t, msg.as_bytes()).await, msg.as_bytes());
    }
    for mut t in ts {
        // Each ends with a half-close both ways; the last one's END_STREAM
        // must still reach the peer (graceful close, no reset).
        t.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty());
    }
    assert_eq!(hbone_connections(&metrics, "outbound", 0).await, 0, "retired on the client");
    assert_eq!(hbone_connections(&m.metrics_b, "inbound", 0).await, 0, "and closed on the server");
    assert_eq!(m.out.pool_size().await, 0);
    let labels = super::metrics::ConnLabels {
        direction: "inbound",
        source_identity: m.frontend.to_string(),
        destination_identity: m.db.to_string(),
    };
    assert_eq!(m.metrics_b.closed.get_or_create(&labels).get(), 7, "every tunnel ended on the server");
    let failures: u64 = ["connect_failed", "bad_request", "policy"]
        .iter()
        .map(|reason| m.metrics_b.tunnel_failures.get_or_create(&super::metrics::ReasonLabels { reason }).get())
        .sum();
    assert_eq!(failures, 0);
    // The next tunnel opens a fresh connection.
    let mut t = m.out.connect(&m.frontend, src(40220), &m.db, pod, m.proxy_b).await.unwrap();
    assert_eq!(roundtrip(&mut t, b"again").await, b"again");
    assert_eq!(m.out.pool_size().await, 1);
    assert_eq!(hbone_connections(&metrics, "outbound", 1).await, 1);
}

#[tokio::test]
async fn inbound_counts_tunnels_and_bytes_per_identity_pair() {
    let m = mesh().await;
    let pod = echo_pod().await;
    for i in 0..2 {
        let mut t = m.out.connect(&m.frontend, src(41000 + i), &m.db, pod, m.proxy_b).await.unwrap();
        assert_eq!(roundtrip(&mut t, b"12345").await, b"12345");
        t.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut rest)).await.unwrap().unwrap();
    }
    let labels = super::metrics::ConnLabels {
        direction: "inbound",
        source_identity: m.frontend.to_string(),
        destination_identity: m.db.to_string(),
    };
    let metrics = &m.metrics_b;
    // The tunnel tasks finish just after the EOF the client saw.
    for _ in 0..100 {
        if metrics.closed.get_or_create(&labels).get() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metrics.opened.get_or_create(&labels).get(), 2);
    assert_eq!(metrics.closed.get_or_create(&labels).get(), 2);
    assert_eq!(metrics.bytes_sent.get_or_create(&labels).get(), 10, "bytes towards the pod");
    assert_eq!(metrics.bytes_received.get_or_create(&labels).get(), 10, "bytes from the pod");
    assert_eq!(metrics.active.get(), 0);
}

#[tokio::test]
async fn spoofed_and_unknown_sources_and_policy_denials_are_refused() {
    let m = mesh().await;
    let pod = echo_pod().await;
    // frontend's certificate, but the source address belongs to `other`.
    let r = m.out.connect(&m.frontend, SocketAddr::new(ip("127.0.0.12"), 1), &m.db, pod, m.proxy_b).await;
    assert!(matches!(r, Err(OutboundError::Refused(s)) if s == 403), "{r:?}");
    // An address no workload owns.
    let r = m.out.connect(&m.frontend, SocketAddr::new(ip("127.0.0.99"), 1), &m.db, pod, m.proxy_b).await;
    assert!(matches!(r, Err(OutboundError::Refused(s)) if s == 403), "{r:?}");
    // Ingress policy: even ports are denied.
    let denied = SocketAddr::new(pod.ip(), pod.port() + 1);
    let r = m.out.connect(&m.frontend, src(2), &m.db, denied, m.proxy_b).await;
    assert!(matches!(r, Err(OutboundError::Refused(s)) if s == 403), "{r:?}");
    // A destination not on node-b.
    let r = m.out.connect(&m.frontend, src(3), &m.db, SocketAddr::new(ip("127.0.0.12"), 81), m.proxy_b).await;
    assert!(matches!(r, Err(OutboundError::Refused(s)) if s == 404), "{r:?}");
    // Nothing listening at the destination: 503.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.11:0").unwrap();
        let mut a = l.local_addr().unwrap();
        drop(l);
        if a.port().is_multiple_of(2) {
            a.set_port(a.port() - 1);
        }
        a
    };
    let r = m.out.connect(&m.frontend, src(4), &m.db, closed, m.proxy_b).await;
    assert!(matches!(r, Err(OutboundError::Refused(s)) if s == 503), "{r:?}");
    // The proxy still serves after all that.
    let mut t = m.out.connect(&m.frontend, src(5), &m.db, pod, m.proxy_b).await.unwrap();
    assert_eq!(roundtrip(&mut t, b"ok").await, b"ok");
}

#[tokio::test]
async fn certificates_that_must_not_be_accepted_are_not() {
    let m = mesh().await;
    let pod = echo_pod().await;
    // A foreign CA in another trust domain: node-b rejects the handshake.
    let foreign = Pki::new("evil.example");
    let evil = foreign.id("default", "bookstore");
    let c = Arc::new(SecretCache::new());
    c.put_bundle(m.pki.bundle());
    c.put_cert(foreign.cert(&evil, time::Duration::ZERO, HOUR));
    let r = Outbound::new(c, Default::default()).connect(&evil, src(1), &m.db, pod, m.proxy_b).await;
    assert!(matches!(r, Err(OutboundError::Tls(..) | OutboundError::Http(_))), "{r:?}");
    // A foreign CA in *our* trust domain: the chain does not verify.
    let rogue = Pki::new("cluster.local");
    let c = Arc::new(SecretCache::new());
    c.put_bundle(m.pki.bundle());
    c.put_cert(rogue.cert(&m.frontend, time::Duration::ZERO, HOUR));
    let r = Outbound::new(c, Default::default()).connect(&m.frontend, src(1), &m.db, pod, m.proxy_b).await;
    assert!(matches!(r, Err(OutboundError::Tls(..) | OutboundError::Http(_))), "{r:?}");
    // Expired, and not yet valid.
    for (shift, what) in [(-HOUR * 3, "expired"), (HOUR * 2, "not yet valid")] {
        let c = Arc::new(SecretCache::new());
        c.put_bundle(m.pki.bundle());
        c.put_cert(m.pki.cert(&m.frontend, shift, HOUR));
        let r = Outbound::new(c, Default::default()).connect(&m.frontend, src(1), &m.db, pod, m.proxy_b).await;
        assert!(matches!(r, Err(OutboundError::Tls(..) | OutboundError::Http(_))), "{what}: {r:?}");
    }
    // No certificate for the source identity: fails closed before dialling.
    let c = Arc::new(SecretCache::new());
    c.put_bundle(m.pki.bundle());
    let r = Outbound::new(c, Default::default()).connect(&m.frontend, src(1), &m.db, pod, m.proxy_b).await;
    assert!(matches!(r, Err(OutboundError::NoCertificate(_))), "{r:?}");
    // The client refuses a server that is not the expected identity: node-b
    // holds no certificate for `other`, so it cannot prove it.
    let other = m.pki.id("default", "other");
    let r = m.out.connect(&m.frontend, src(1), &other, pod, m.proxy_b).await;
    assert!(r.is_err(), "{r:?}");
    // Every refusal above that reached node-b's handshake (all but the
    // missing certificate) is counted there, by reason.
    let count = |reason| m.metrics_b.handshake_failures.get_or_create(&super::metrics::ReasonLabels { reason }).get();
    for _ in 0..200 {
        if count("tls") + count("identity") >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count("tls"), 5);
    // Still serving the legitimate client.
    let mut t = m.out.connect(&m.frontend, src(2), &m.db, SocketAddr::new(pod.ip(), pod.port()), m.proxy_b).await;
    let t = t.as_mut().unwrap();
    assert_eq!(roundtrip(t, b"x").await, b"x");
}

#[tokio::test]
async fn garbage_and_non_connect_requests_are_rejected_without_harm() {
    let m = mesh().await;
    let pod = echo_pod().await;
    for junk in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0u8; 1000][..], b"\x16\x03\x01\x00\x01\x00"] {
        let mut s = tokio::net::TcpStream::connect(m.proxy_b).await.unwrap();
        let _ = s.write_all(junk).await;
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    }
    // A mutually authenticated HTTP/2 GET instead of CONNECT: 405.
    let config = super::tls::client_config(&m.a, &m.frontend, &m.db).unwrap();
    let tcp = tokio::net::TcpStream::connect(m.proxy_b).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(super::tls::sni_for(&m.db)).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("https://{pod}/"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 405);
    // CONNECT without a source address: 400.
    let req = http::Request::builder()
        .method("CONNECT")
        .uri(pod.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 400);
    let mut t = m.out.connect(&m.frontend, src(9), &m.db, pod, m.proxy_b).await.unwrap();
    assert_eq!(roundtrip(&mut t, b"still fine").await, b"still fine");
}

#[tokio::test]
async fn a_peer_that_hangs_does_not_delay_tunnels_to_other_peers() {
    let m = mesh().await;
    let pod = echo_pod().await;
    // A "node" that accepts TCP and then never answers the TLS handshake.
    let hole = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let out = Arc::new(Outbound::new(m.a.clone(), Default::default()));
    let stuck = {
        let (out, frontend, db) = (out.clone(), m.frontend.clone(), m.db.clone());
        tokio::spawn(async move { out.connect(&frontend, src(50000), &db, pod, hole_addr).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = std::time::Instant::now();
    let mut t = out.connect(&m.frontend, src(50001), &m.db, pod, m.proxy_b).await.unwrap();
    assert_eq!(roundtrip(&mut t, b"not blocked").await, b"not blocked");
    assert!(t0.elapsed() < Duration::from_secs(3), "waited {:?} behind the hanging peer", t0.elapsed());
    assert!(!stuck.is_finished(), "the hanging dial is still pending");
    stuck.abort();
}

#[tokio::test]
async fn a_peer_that_never_speaks_http2_is_dropped() {
    let m = mesh().await;
    let config = super::tls::client_config(&m.a, &m.frontend, &m.db).unwrap();
    let tcp = tokio::net::TcpStream::connect(m.proxy_b).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(super::tls::sni_for(&m.db)).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
    // Mutually authenticated, then silence: no HTTP/2 preface. The server
    // gives up after its handshake timeout (2 s here) and closes.
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent connection is still open");
    let reason = super::metrics::ReasonLabels { reason: "timeout" };
    assert_eq!(m.metrics_b.handshake_failures.get_or_create(&reason).get(), 1);
}

#[tokio::test]
async fn renewal_and_bundle_change_take_effect_on_new_handshakes_only() {
    let m = mesh().await;
    let pod = echo_pod().await;
    let mut long = m.out.connect(&m.frontend, src(100), &m.db, pod, m.proxy_b).await.unwrap();
    assert_eq!(roundtrip(&mut long, b"before").await, b"before");
    let old_serial = m.b.cert(&m.db).unwrap().serial.clone();

    // Rotate to a new root: both nodes get the new bundle (old + new roots),
    // then node-b's certificate is renewed under the new authority.
    let mut pki = m.pki;
    let now = OffsetDateTime::now_utc();
    let td = pki.state.trust_domain.clone();
    pki.state
        .prepare(now, || Authority::generate(&td, now - time::Duration::days(1), AuthorityParams::default()))
        .unwrap();
    pki.state.propagate(now).unwrap();
    pki.state.switch(now, true).unwrap();
    m.a.put_bundle(pki.bundle());
    m.b.put_bundle(pki.bundle());
    m.b.put_cert(pki.cert(&m.db, time::Duration::ZERO, HOUR));
    let new_serial = m.b.cert(&m.db).unwrap().serial.clone();
    assert_ne!(old_serial, new_serial);

    // The established tunnel is untouched.
    assert_eq!(roundtrip(&mut long, b"during").await, b"during");
    // A fresh client handshakes and sees the new serial.
    let config = super::tls::client_config(&m.a, &m.frontend, &m.db).unwrap();
    let tcp = tokio::net::TcpStream::connect(m.proxy_b).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(super::tls::sni_for(&m.db)).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&presented).unwrap();
    assert_eq!(cert.raw_serial_as_string().replace(':', ""), &*new_serial);
    // And new tunnels work across the rotation.
    let out = Outbound::new(m.a.clone(), Default::default());
    let mut t = out.connect(&m.frontend, src(101), &m.db, pod, m.proxy_b).await.unwrap();
    assert_eq!(roundtrip(&mut t, b"after").await, b"after");
    assert_eq!(roundtrip(&mut long, b"still").await, b"still");
}

#[tokio::test]
async fn policy_audit_mode_lets_policy_denials_through_but_not_identity_failures() {
    for audit in [Audit::Node, Audit::Namespace] {
        audit_lets_policy_denials_through_but_not_identity_failures(audit).await;
    }
}

async fn audit_lets_policy_denials_through_but_not_identity_failures(audit: Audit) {
    let m = mesh_with(audit).await;
    // An echo pod on an even port, which the test policy denies (the
    // kernel picks odd ports for `bind` to port 0, so one is named).
    let mut port = 20_000u16;
    let l = loop {
        match tokio::net::TcpListener::bind(("127.0.0.11", port)).await {
            Ok(l) => break l,
            Err(_) => port += 2,
        }
    };
    let pod = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let mut t = m.out.connect(&m.frontend, src(2), &m.db, pod, m.proxy_b).await.unwrap();
    assert_eq!(roundtrip(&mut t, b"audited").await, b"audited", "{audit:?}");
    assert_eq!(m.metrics_b.policy_audits.get(), 1, "{audit:?}");
    assert_eq!(m.metrics_b.tunnel_failures.get_or_create(&super::metrics::ReasonLabels { reason: "policy" }).get(), 0);
    // A certificate that does not own the source address is still refused.
    let r = m.out.connect(&m.frontend, SocketAddr::new(ip("127.0.0.12"), 1), &m.db, pod, m.proxy_b).await;
    assert!(matches!(r, Err(OutboundError::Refused(s)) if s == 403), "{r:?}");
}
