//! The Kubernetes object source: kube-rs watchers feeding the same change
//! stream as a manifest directory, so the agent, the gateway and the CA
//! have one code path for both modes.
//!
//! One watcher per resource (list, then watch from its resourceVersion;
//! bookmarks; a `410 Gone` or a dropped watch relists; errors back off).
//! Each object is decoded by the consumer's [`Kinds`] exactly as a
//! manifest document would be and only the slim model is kept, so memory
//! follows what is used, not what the API server sends. A relist replaces
//! that resource's objects atomically (objects missing from it are
//! deleted). An object that fails validation keeps its last good version
//! and is logged with the reason. While the API server is unreachable the
//! last known state stays (fail static) and [`SourceHealth`] says so.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use policy::ManifestError;
use policy::manifest::RawObject;
use tracing::{info, warn};

use crate::agent::source::{Change, Kinds, ObjectSource, Poll, SourceHealth};

/// A resource to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural (URL path segment).
    pub plural: &'static str,
    /// Field selector (e.g. `type=kubernetes.io/tls` for Secrets).
    pub field_selector: Option<&'static str>,
    /// Watch one namespace only (`None`: all).
    pub namespace: Option<String>,
}

impl Resource {
    /// `apiVersion` as manifests write it.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }
}

/// A decoded API object (or why not) and its reference.
type Decoded<K> = (Result<Option<<K as Kinds>::Object>, ManifestError>, Option<<K as Kinds>::Ref>);

enum Msg<K: Kinds> {
    Apply(usize, K::Object),
    Delete(usize, K::Ref),
    /// A complete list: the valid objects, and the references of invalid
    /// ones (whose last good version stays, as in a manifest directory).
    Relisted(usize, Vec<K::Object>, Vec<K::Ref>),
    Rejected(ManifestError),
}

#[derive(Debug, Default)]
struct Health {
    synced: Vec<bool>,
    error: Option<(String, Instant)>,
}

/// Watches resources and yields changes on [`ObjectSource::poll`].
///
/// It keeps a fingerprint per object, not the object: the consumer holds
/// the state, this only needs to tell a real change from a repeat (a
/// relist, a resync), so a large cluster is held once.
pub struct KubeSource<K: Kinds> {
    rx: mpsc::Receiver<Msg<K>>,
    /// Fingerprints of the objects the consumer has (or will have after
    /// the next poll).
    known: BTreeMap<K::Ref, u64>,
    owned: Vec<BTreeSet<K::Ref>>,
    /// Changes since the last poll, final state per object.
    pending: BTreeMap<K::Ref, Option<K::Object>>,
    errors: Vec<ManifestError>,
    health: Arc<Mutex<Health>>,
    _runtime: tokio::runtime::Runtime,
}

impl<K: Kinds> std::fmt::Debug for KubeSource<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource").field("objects", &self.known.len()).finish()
    }
}

/// A 64-bit fingerprint of an object's content (every field is hashed; a
/// collision would only hide one object's change until its next update,
/// and at 2^-64 per pair that does not happen).
fn fingerprint<T: std::hash::Hash>(o: &T) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    o.hash(&mut h);
    h.finish()
}

fn to_raw(r: &Resource, obj: DynamicObject) -> Result<RawObject, String> {
    let mut value = serde_norway::to_value(&obj).map_err(|e| e.to_string())?;
    // List items may come without apiVersion/kind: the resource says.
    if let Some(m) = value.as_mapping_mut() {
        m.insert("apiVersion".into(), r.api_version().into());
        m.insert("kind".into(), r.kind.into());
    }
    let name = obj.metadata.name.clone().unwrap_or_default();
    let display_name = match &obj.metadata.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    };
    Ok(RawObject { document: 0, api_version: r.api_version(), kind: r.kind.to_string(), display_name, value })
}

/// How often the API server is probed, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Records an error, keeping the time the trouble started.
fn note_error(h: &Mutex<Health>, e: String) {
    let mut h = lock(h);
    let since = h.error.as_ref().map_or_else(Instant::now, |(_, t)| *t);
    h.error = Some((e, since));
}

fn lock(h: &Mutex<Health>) -> std::sync::MutexGuard<'_, Health> {
    match h.lock() {
        Ok(g) => g,
        Err(e) => e.into_inner(),
    }
}

impl<K: Kinds + 'static> KubeSource<K>
where
    K::Object: Send,
    K::Ref: Send,
{
    /// Starts watching `resources` with `client` (from `KUBECONFIG` or the
    /// pod's service account) and returns once every resource has been
    /// listed once (logging while the API server cannot be reached).
    pub fn start(client: kube::Client, resources: Vec<Resource>, runtime: tokio::runtime::Runtime) -> Self {
        let (tx, rx) = mpsc::channel();
        let health = Arc::new(Mutex::new(Health { synced: vec![false; resources.len()], error: None }));
        // Watchers only say something when an object changes; this probe
        // says whether the API server answers at all (and clears a watch
        // error once it does).
        {
            let (client, health) = (client.clone(), health.clone());
            runtime.spawn(async move {
                loop {
                    match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
                        Ok(Ok(_)) => lock(&health).error = None,
                        Ok(Err(e)) => note_error(&health, format!("API server: {e}")),
                        Err(_) => note_error(&health, format!("API server: no answer in {PROBE_TIMEOUT:?}")),
                    }
                    tokio::time::sleep(PROBE_EVERY).await;
                }
            });
        }
        for (i, r) in resources.iter().enumerate() {
            let gvk = GroupVersionKind::gvk(r.group, r.version, r.kind);
            let ar = ApiResource::from_gvk_with_plural(&gvk, r.plural);
            let api: Api<DynamicObject> = match &r.namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            let mut config = watcher::Config::default();
            if let Some(fs) = r.field_selector {
                config = config.fields(fs);
            }
            let (tx, health, r) = (tx.clone(), health.clone(), r.clone());
            runtime.spawn(async move {
                let mut stream = watcher::watcher(api, config).default_backoff().boxed();
                let mut buffer: Vec<K::Object> = Vec::new();
                let mut rejected: Vec<K::Ref> = Vec::new();
                while let Some(item) = stream.next().await {
                    let event = match item {
                        Ok(e) => e,
                        Err(e) => {
                            warn!(resource = r.plural, error = %e, "watch failed; keeping the last known state");
                            note_error(&health, format!("{}: {e}", r.plural));
                            continue;
                        }
                    };
                    let decode = |o: DynamicObject| -> Option<Decoded<K>> {
                        let raw = to_raw(&r, o).ok()?;
                        Some((K::decode(&format!("api:{}", r.plural), &raw), K::raw_ref(&raw)))
                    };
                    let sent = match event {
                        Event::Init => {
                            buffer.clear();
                            rejected.clear();
                            Ok(())
                        }
                        Event::InitApply(o) => {
                            match decode(o) {
                                Some((Ok(Some(obj)), _)) => buffer.push(obj),
                                Some((Err(e), reference)) => {
                                    rejected.extend(reference);
                                    let _ = tx.send(Msg::Rejected(e));
                                }
                                _ => {}
                            }
                            Ok(())
                        }
                        Event::InitDone => {
                            lock(&health).synced[i] = true;
                            tx.send(Msg::Relisted(i, std::mem::take(&mut buffer), std::mem::take(&mut rejected)))
                        }
                        Event::Apply(o) => match decode(o) {
                            Some((Ok(Some(obj)), _)) => tx.send(Msg::Apply(i, obj)),
                            Some((Err(e), _)) => tx.send(Msg::Rejected(e)),
                            _ => Ok(()),
                        },
                        Event::Delete(o) => match to_raw(&r, o).ok().and_then(|raw| K::raw_ref(&raw)) {
                            Some(reference) => tx.send(Msg::Delete(i, reference)),
                            None => Ok(()),
                        },
                    };
                    if sent.is_err() {
                        return; // the source was dropped
                    }
                }
            });
        }
        let start = Instant::now();
        let mut last_log = Instant::now();
        while !lock(&health).synced.iter().all(|s| *s) {
            std::thread::sleep(Duration::from_millis(20));
            if last_log.elapsed() > Duration::from_secs(10) {
                last_log = Instant::now();
                let error = lock(&health).error.as_ref().map(|(e, _)| e.clone());
                warn!(waited = ?start.elapsed(), error = ?error, "waiting for the first list from the API server");
            }
        }
        info!(resources = resources.len(), took = ?start.elapsed(), "listed every resource");
        Self {
            rx,
            known: BTreeMap::new(),
            owned: vec![BTreeSet::new(); resources.len()],
            pending: BTreeMap::new(),
            errors: Vec::new(),
            health,
            _runtime: runtime,
        }
    }

    fn apply(&mut self, i: usize, o: K::Object) {
        let r = K::reference(&o);
        let print = fingerprint(&o);
        if self.known.get(&r) != Some(&print) {
            self.known.insert(r.clone(), print);
            self.owned[i].insert(r.clone());
            self.pending.insert(r, Some(o));
        }
    }

    fn delete(&mut self, i: usize, r: K::Ref) {
        self.owned[i].remove(&r);
        if self.known.remove(&r).is_some() {
            self.pending.insert(r, None);
        }
    }

    fn handle(&mut self, m: Msg<K>) {
        match m {
            Msg::Apply(i, o) => self.apply(i, o),
            Msg::Delete(i, r) => self.delete(i, r),
            Msg::Relisted(i, objects, rejected) => {
                // Invalid objects in the list keep their last good version.
                let listed: BTreeSet<K::Ref> = objects.iter().map(K::reference).chain(rejected).collect();
                let gone: Vec<K::Ref> = self.owned[i].difference(&listed).cloned().collect();
                for r in gone {
                    self.delete(i, r);
                }
                for o in objects {
                    self.apply(i, o);
                }
            }
            Msg::Rejected(e) => self.errors.push(e),
        }
    }
}

impl<K: Kinds + 'static> ObjectSource<K> for KubeSource<K>
where
    K::Object: Send,
    K::Ref: Send,
{
    fn poll(&mut self) -> Poll<K> {
        while let Ok(m) = self.rx.try_recv() {
            self.handle(m);
        }
        let mut applies = Vec::new();
        let mut deletes = Vec::new();
        for (r, o) in std::mem::take(&mut self.pending) {
            match o {
                Some(o) => applies.push(Change::Apply(o)),
                None => deletes.push(r),
            }
        }
        applies.sort_by_key(|c| match c {
            Change::Apply(o) => K::rank(&K::reference(o)),
            Change::Delete(r) => K::rank(r),
        });
        deletes.sort_by_key(|r| std::cmp::Reverse(K::rank(r)));
        applies.extend(deletes.into_iter().map(Change::Delete));
        Poll { changes: applies, errors: std::mem::take(&mut self.errors), ignored: Vec::new() }
    }

    fn wait(&mut self, timeout: Duration) -> bool {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => {
                self.handle(m);
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // No watcher left to report anything (it would return at
                // once and spin the caller's loop): wait like a poll-only
                // source.
                std::thread::sleep(timeout);
                false
            }
        }
    }

    fn health(&self) -> SourceHealth {
        let h = lock(&self.health);
        match &h.error {
            Some((e, since)) => SourceHealth { connected: false, detail: format!("{e} (for {:?})", since.elapsed()) },
            None => SourceHealth { connected: true, detail: String::new() },
        }
    }
}

/// A client from `KUBECONFIG` / `~/.kube/config` or the in-cluster service
/// account, on `runtime`.
pub fn client(runtime: &tokio::runtime::Runtime) -> anyhow::Result<kube::Client> {
    runtime.block_on(client_here())
}

/// [`client`] on the current runtime. kube's own request retries are off:
/// the watchers back off themselves, and an outage must surface as errors
/// (for readiness, and for TokenReviews that must fail fast) rather than
/// as requests that hang through 15 retries.
pub async fn client_here() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await.map_err(|e| anyhow::anyhow!("Kubernetes client config: {e}"))?;
    config.default_retry = false;
    kube::Client::try_from(config).map_err(|e| anyhow::anyhow!("Kubernetes client: {e}"))
}

/// A small runtime for the watchers.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("kube").enable_all().build()?)
}

/// Where a component reads cluster objects from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A directory of manifests, polled.
    Local(std::path::PathBuf),
    /// The API server (`KUBECONFIG` or in-cluster).
    Kube,
}

impl SourceSpec {
    /// Checks a local directory exists.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let SourceSpec::Local(d) = self {
            anyhow::ensure!(d.is_dir(), "--local {}: not a directory", d.display());
        }
        Ok(())
    }

    /// For logs.
    pub fn describe(&self) -> String {
        match self {
            SourceSpec::Local(d) => format!("manifests in {}", d.display()),
            SourceSpec::Kube => "the Kubernetes API server".to_string(),
        }
    }
}

fn res(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    field_selector: Option<&'static str>,
) -> Resource {
    Resource { group, version, kind, plural, field_selector, namespace: None }
}

/// What the node agent watches.
pub fn policy_resources() -> Vec<Resource> {
    vec![
        res("", "v1", "Namespace", "namespaces", None),
        res("", "v1", "Node", "nodes", None),
        res("", "v1", "Pod", "pods", None),
        res("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", None),
    ]
}

/// What the node agent watches for Service translation.
pub fn service_resources() -> Vec<Resource> {
    vec![
        res("", "v1", "Service", "services", None),
        res("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", None),
    ]
}

/// What the CA watches: pods only (which identities run on which node).
pub fn pod_resources() -> Vec<Resource> {
    vec![res("", "v1", "Pod", "pods", None)]
}

/// What the Ingress gateway watches: TLS Secrets only, and only in
/// `secret_namespaces` when given (so its RBAC can be per namespace and
/// never reach the CA's Secret).
pub fn gateway_resources(secret_namespaces: &[String]) -> Vec<Resource> {
    let mut v = vec![
        res("networking.k8s.io", "v1", "Ingress", "ingresses", None),
        res("networking.k8s.io", "v1", "IngressClass", "ingressclasses", None),
        res("", "v1", "Service", "services", None),
        res("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", None),
    ];
    let secrets = res("", "v1", "Secret", "secrets", Some("type=kubernetes.io/tls"));
    if secret_namespaces.is_empty() {
        v.push(secrets);
    } else {
        v.extend(secret_namespaces.iter().map(|ns| Resource { namespace: Some(ns.clone()), ..secrets.clone() }));
    }
    v
}

/// Opens a source of `K` objects: the directory, or watchers of
/// `resources` (blocks until the first list of each).
pub fn open<K: Kinds + 'static>(spec: &SourceSpec, resources: Vec<Resource>) -> anyhow::Result<Box<dyn ObjectSource<K>>>
where
    K::Object: Send,
    K::Ref: Send,
{
    Ok(match spec {
        SourceSpec::Local(dir) => Box::new(crate::agent::source::DirSource::<K>::new(dir)),
        SourceSpec::Kube => {
            let rt = runtime()?;
            let c = client(&rt)?;
            Box::new(KubeSource::<K>::start(c, resources, rt))
        }
    })
}
