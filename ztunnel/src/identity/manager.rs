//! Keeps a certificate for every identity this node needs.
//!
//! One task per identity: generate a P-256 key, send a CSR to the CA, store
//! the chain in the [`SecretCache`], renew at half-life; while the CA is
//! unreachable retry with jittered exponential backoff (the still-valid
//! certificate keeps serving). A bundle task long-polls the CA's trust
//! bundle and publishes each new version; when the bundle names a new
//! signer (a rotation's `switch`), every identity renews at once so the
//! old root can be retired.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ca::api::SignResponse;
use ca::{SpiffeId, TrustBundle};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::cache::{Bundle, SecretCache, WorkloadCert};

/// A boxed future (object-safe async).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where certificates and bundles come from.
pub trait CertSource: Send + Sync {
    /// Sends a CSR.
    fn sign(&self, csr_pem: String, ttl: Option<Duration>) -> BoxFuture<'_, Result<SignResponse, String>>;
    /// Long-polls the bundle: `None` if it stayed at `known` for `wait`.
    fn bundle(&self, known: Option<u64>, wait: Duration) -> BoxFuture<'_, Result<Option<TrustBundle>, String>>;
}

impl CertSource for ca_server::CaClient {
    fn sign(&self, csr_pem: String, ttl: Option<Duration>) -> BoxFuture<'_, Result<SignResponse, String>> {
        Box::pin(async move { ca_server::CaClient::sign(self, &csr_pem, ttl).await.map_err(|e| e.to_string()) })
    }

    fn bundle(&self, known: Option<u64>, wait: Duration) -> BoxFuture<'_, Result<Option<TrustBundle>, String>> {
        Box::pin(async move { ca_server::CaClient::bundle(self, known, Some(wait)).await.map_err(|e| e.to_string()) })
    }
}

/// Retry and renewal timing.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// First retry delay.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Requested certificate lifetime (the CA clamps it).
    pub ttl: Option<Duration>,
    /// Bundle long-poll length.
    pub bundle_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            ttl: None,
            bundle_wait: Duration::from_secs(30),
        }
    }
}

/// A random factor in [0.8, 1.2) so renewals of many nodes spread out.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let f = 0.8 + 0.4 * (u16::from_le_bytes(b) as f64 / 65536.0);
    d.mul_f64(f)
}

/// Builds a certificate entry from a CA answer and the key.
pub fn workload_cert(id: &SpiffeId, key: &KeyPair, r: &SignResponse) -> Result<WorkloadCert, String> {
    let chain: Vec<CertificateDer<'static>> = r
        .chain
        .iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).map_err(|e| format!("chain from the CA: {e}")))
        .collect::<Result<_, _>>()?;
    if chain.is_empty() {
        return Err("empty chain from the CA".into());
    }
    let got = ca::peer::identity_of(&chain[0]).map_err(|e| e.to_string())?;
    if &got != id {
        return Err(format!("the CA issued {got}, not the requested {id}"));
    }
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(WorkloadCert {
        identity: id.clone(),
        certified: Arc::new(CertifiedKey::new(chain, signing)),
        serial: r.serial.as_str().into(),
        not_before: r.not_before,
        not_after: r.not_after,
        authority: r.bundle.signer.clone(),
    })
}

/// A CSR for `id` with a new key.
pub fn new_csr(id: &SpiffeId) -> Result<(KeyPair, String), String> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(id.to_string().try_into().map_err(|e| format!("{e}"))?)];
    let csr = p.serialize_request(&key).map_err(|e| e.to_string())?.pem().map_err(|e| e.to_string())?;
    Ok((key, csr))
}

struct Shared {
    cache: Arc<SecretCache>,
    source: Arc<dyn CertSource>,
    timing: Timing,
    /// The signer named by the newest bundle.
    signer: watch::Sender<String>,
}

impl Shared {
    fn publish_bundle(&self, b: TrustBundle) {
        let known = self.cache.bundle().map(|x| x.bundle.version);
        if known.is_some_and(|v| v >= b.version) {
            return;
        }
        let signer = b.signer.clone();
        match Bundle::new(b) {
            Ok(b) => {
                info!(version = b.bundle.version, roots = b.roots.len(), signer = %signer, "trust bundle updated");
                self.cache.put_bundle(b);
                self.signer.send_if_modified(|s| {
                    let changed = *s != signer;
                    *s = signer;
                    changed
                });
            }
            Err(e) => warn!(error = %e, "trust bundle rejected; the previous one stays in use"),
        }
    }

    async fn identity_loop(self: Arc<Self>, id: SpiffeId) {
        let mut backoff = self.timing.backoff_min;
        let mut signer_rx = self.signer.subscribe();
        loop {
            let result = async {
                let (key, csr) = new_csr(&id)?;
                let r = self.source.sign(csr, self.timing.ttl).await?;
                let cert = workload_cert(&id, &key, &r)?;
                Ok::<_, String>((cert, r.bundle))
            }
            .await;
            let wait = match result {
                Ok((cert, bundle)) => {
                    backoff = self.timing.backoff_min;
                    let now = OffsetDateTime::now_utc();
                    let life = (cert.not_after - now).max(time::Duration::ZERO);
                    info!(identity = %id, serial = %cert.serial, not_after = %cert.not_after, "certificate issued");
                    self.publish_bundle(bundle);
                    self.cache.put_cert(cert);
                    signer_rx.mark_unchanged();
                    // Renew at half of the remaining life.
                    Duration::try_from(life / 2).unwrap_or(Duration::ZERO).max(Duration::from_millis(100))
                }
                Err(e) => {
                    let still_valid = self.cache.cert(&id).is_some_and(|c| c.not_after > OffsetDateTime::now_utc());
                    warn!(identity = %id, error = %e, retry_in = ?backoff, still_valid, "certificate request failed");
                    let w = jitter(backoff);
                    backoff = (backoff * 2).min(self.timing.backoff_max);
                    w
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // A rotation switched signers: renew now.
                Ok(()) = signer_rx.changed() => {
                    let mine = self.cache.cert(&id).map(|c| c.authority.clone());
                    let now_signer = signer_rx.borrow_and_update().clone();
                    if mine.as_deref() == Some(now_signer.as_str()) {
                        continue;
                    }
                    info!(identity = %id, signer = %now_signer, "signer changed; renewing");
                }
            }
        }
    }

    async fn bundle_loop(self: Arc<Self>) {
        let mut backoff = self.timing.backoff_min;
        loop {
            let known = self.cache.bundle().map(|b| b.bundle.version);
            match self.source.bundle(known, self.timing.bundle_wait).await {
                Ok(Some(b)) => {
                    backoff = self.timing.backoff_min;
                    self.publish_bundle(b);
                }
                Ok(None) => backoff = self.timing.backoff_min,
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "trust bundle poll failed; the current bundle stays in use");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(self.timing.backoff_max);
                }
            }
        }
    }
}

/// The identity manager.
pub struct IdentityManager {
    shared: Arc<Shared>,
    tasks: Mutex<HashMap<SpiffeId, JoinHandle<()>>>,
    bundle_task: JoinHandle<()>,
}

impl IdentityManager {
    /// Starts the bundle watcher; identities are added with [`Self::set_wanted`].
    pub fn start(cache: Arc<SecretCache>, source: Arc<dyn CertSource>, timing: Timing) -> Self {
        let shared = Arc::new(Shared { cache, source, timing, signer: watch::channel(String::new()).0 });
        let bundle_task = tokio::spawn(shared.clone().bundle_loop());
        Self { shared, tasks: Mutex::new(HashMap::new()), bundle_task }
    }

    /// Makes the set of maintained identities equal to `wanted`: starts
    /// tasks for new ones, stops and forgets the others.
    pub fn set_wanted(&self, wanted: &std::collections::BTreeSet<SpiffeId>) {
        let Ok(mut tasks) = self.tasks.lock() else { return };
        tasks.retain(|id, task| {
            let keep = wanted.contains(id);
            if !keep {
                task.abort();
                self.shared.cache.remove_cert(id);
                info!(identity = %id, "identity no longer used on this node; certificate dropped");
            }
            keep
        });
        for id in wanted {
            if !tasks.contains_key(id) {
                tasks.insert(id.clone(), tokio::spawn(self.shared.clone().identity_loop(id.clone())));
            }
        }
    }
}

impl Drop for IdentityManager {
    fn drop(&mut self) {
        self.bundle_task.abort();
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.values() {
                t.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeSet;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use ca::{Authority, AuthorityParams, CaState, IssuePolicy, SpiffeId, TrustDomain, WorkloadIndex};
    use ca_server::{CaClient, Config, DirStore, Server, SystemClock};

    use super::{IdentityManager, Timing};
    use crate::identity::SecretCache;

    struct Node1;
    impl WorkloadIndex for Node1 {
        fn runs_on(&self, node: &str, _ns: &str, _sa: &str) -> bool {
            node == "node-1"
        }
    }

    /// A runtime shut down without waiting when dropped (from async code).
    struct CaRt(Option<tokio::runtime::Runtime>);

    impl Drop for CaRt {
        fn drop(&mut self) {
            if let Some(rt) = self.0.take() {
                rt.shutdown_background();
            }
        }
    }

    /// A CA server on its own runtime (dropping it kills every connection).
    fn ca(store: &DirStore, addr: SocketAddr) -> (CaRt, SocketAddr) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let bound = rt.block_on(async {
            let config = Config { listen: addr, reload: Duration::from_millis(100), ..Config::default() };
            let s =
                Server::bind(config, Box::new(store.clone()), Arc::new(Node1), Arc::new(SystemClock)).await.unwrap();
            let a = s.local_addr().unwrap();
            tokio::spawn(s.serve(std::future::pending()));
            a
        });
        (CaRt(Some(rt)), bound)
    }

    fn init(dir: &std::path::Path) -> DirStore {
        let td = TrustDomain::new("cluster.local").unwrap();
        let now = time::OffsetDateTime::now_utc();
        let policy = IssuePolicy {
            max_ttl: time::Duration::seconds(4),
            min_ttl: time::Duration::seconds(1),
            default_ttl: time::Duration::seconds(4),
            ..IssuePolicy::default()
        };
        let state =
            CaState::new(td.clone(), Authority::generate(&td, now, AuthorityParams::default()).unwrap(), policy, now);
        let store = DirStore::new(dir);
        let lock = store.lock().unwrap();
        store.create(&state, &lock).unwrap();
        store.create_token("node-1", &lock).unwrap();
        store
    }

    async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn timing() -> Timing {
        Timing {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(400),
            ttl: None,
            bundle_wait: Duration::from_secs(1),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renews_at_half_life_and_when_the_signer_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path());
        let (_ca_rt, addr) = tokio::task::block_in_place(|| ca(&store, "127.0.0.1:0".parse().unwrap()));
        let bundle = store.load().unwrap().bundle(time::OffsetDateTime::now_utc()).pem();
        let token = store.tokens().unwrap()["node-1"].clone();
        let client = CaClient::new(&addr.to_string(), "localhost", &bundle, Some(token)).unwrap();
        let cache = Arc::new(SecretCache::new());
        let m = IdentityManager::start(cache.clone(), Arc::new(client), timing());
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/db").unwrap();
        m.set_wanted(&BTreeSet::from([id.clone()]));
        wait_for("a certificate", Duration::from_secs(10), || cache.cert(&id).is_some()).await;
        let first = cache.cert(&id).unwrap();
        // Lifetime 4 s: renewed after ~2 s, well before expiry.
        wait_for("renewal at half-life", Duration::from_secs(5), || {
            cache.cert(&id).is_some_and(|c| c.serial != first.serial)
        })
        .await;
        assert!(time::OffsetDateTime::now_utc() < first.not_after, "renewed before expiry");

        // Root rotation up to `switch`: the new bundle arrives by long-poll
        // and the certificate is re-issued by the new signer at once.
        let lock = store.lock().unwrap();
        let mut s = store.load().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let td = s.trust_domain.clone();
        s.prepare(now, || Authority::generate(&td, now, AuthorityParams::default())).unwrap();
        s.propagate(now).unwrap();
        s.switch(now, true).unwrap();
        let new_signer = s.active.id.clone();
        store.save(&s, &lock).unwrap();
        drop(lock);
        wait_for("the new signer's certificate", Duration::from_secs(5), || {
            cache.cert(&id).is_some_and(|c| c.authority == new_signer)
                && cache.bundle().is_some_and(|b| b.roots.len() == 2)
        })
        .await;

        // An identity no longer wanted is dropped.
        m.set_wanted(&BTreeSet::new());
        assert!(cache.cert(&id).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_serving_while_the_ca_is_down_and_resumes_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = init(dir.path());
        let (ca_rt, addr) = tokio::task::block_in_place(|| ca(&store, "127.0.0.1:0".parse().unwrap()));
        let bundle = store.load().unwrap().bundle(time::OffsetDateTime::now_utc()).pem();
        let token = store.tokens().unwrap()["node-1"].clone();
        let client = CaClient::new(&addr.to_string(), "localhost", &bundle, Some(token)).unwrap();
        let cache = Arc::new(SecretCache::new());
        let m = IdentityManager::start(cache.clone(), Arc::new(client), timing());
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/api").unwrap();
        m.set_wanted(&BTreeSet::from([id.clone()]));
        wait_for("a certificate", Duration::from_secs(10), || cache.cert(&id).is_some()).await;
        let before = cache.cert(&id).unwrap();

        // CA down: renewals fail, the certificate stays until it expires.
        drop(ca_rt);
        // Past half-life (2 s of 4): renewals are being attempted and fail.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let held = cache.cert(&id).unwrap();
        assert_eq!(held.serial, before.serial, "nothing to renew from");
        assert!(held.not_after > time::OffsetDateTime::now_utc(), "still valid, still served");

        // CA back on the same address: renewals resume.
        let (_ca_rt, _) = tokio::task::block_in_place(|| ca(&store, addr));
        wait_for("renewal after the CA returned", Duration::from_secs(10), || {
            cache.cert(&id).is_some_and(|c| c.serial != before.serial)
        })
        .await;
    }
}
