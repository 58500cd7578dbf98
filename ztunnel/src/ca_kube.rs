//! The CA in Kubernetes mode: key material and rotation state in a Secret,
//! node agents authenticated by TokenReview of their audience-bound service
//! account tokens, and the trust bundle published in a ConfigMap.
//!
//! Any number of replicas serve from the same Secret (signing is
//! stateless). The operator rotates by editing the state with
//! `ztunnel ca rotate ... --dir` on a copy and writing it back to the
//! Secret; every replica picks the new state up from its watch.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{SHA256, digest};
use ca::CaState;
use ca_server::auth::{AuthError, AuthFuture, Authenticator};
use ca_server::store::StoreError;
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tracing::{info, warn};

/// The key of the state in the Secret.
pub const STATE_KEY: &str = "state.json";
/// The key of the bundle in the ConfigMap (what agents mount).
pub const BUNDLE_KEY: &str = "root-cert.pem";
/// The `user.extra` key with the node of a pod-bound token.
const NODE_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// How long to wait for the API server's TokenReview answer.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a positive TokenReview is reused for the same token.
const REVIEW_CACHE: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(e) => e.into_inner(),
    }
}

/// Authenticates node agents by TokenReview: the token must be valid for
/// `audience`, belong to one of the agent service accounts, and be bound to
/// a pod, whose node becomes the caller's node.
pub struct TokenReviewAuth {
    api: Api<TokenReview>,
    audience: String,
    agents: Vec<String>,
    cache: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

impl std::fmt::Debug for TokenReviewAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuth").field("audience", &self.audience).field("agents", &self.agents).finish()
    }
}

impl TokenReviewAuth {
    /// `agents`: `namespace/name` of the agents' service accounts.
    pub fn new(client: kube::Client, audience: String, agents: &[String]) -> Self {
        let agents = agents
            .iter()
            .map(|a| match a.split_once('/') {
                Some((ns, sa)) => format!("system:serviceaccount:{ns}:{sa}"),
                None => format!("system:serviceaccount:{a}"),
            })
            .collect();
        Self { api: Api::all(client), audience, agents, cache: Mutex::new(HashMap::new()) }
    }

    async fn review(&self, token: &str) -> Result<String, AuthError> {
        let key: [u8; 32] = digest(&SHA256, token.as_bytes()).as_ref().try_into().unwrap_or([0; 32]);
        if let Some((node, at)) = lock(&self.cache).get(&key)
            && at.elapsed() < REVIEW_CACHE
        {
            return Ok(node.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let answer = tokio::time::timeout(REVIEW_TIMEOUT, self.api.create(&PostParams::default(), &review))
            .await
            .map_err(|_| AuthError::Unavailable(format!("TokenReview: no answer in {REVIEW_TIMEOUT:?}")))?
            .map_err(|e| AuthError::Unavailable(format!("TokenReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(match status.error {
                Some(e) if !e.is_empty() => AuthError::Rejected(e),
                _ => AuthError::Unknown,
            });
        }
        if !status.audiences.unwrap_or_default().iter().any(|a| a == &self.audience) {
            return Err(AuthError::Rejected(format!("token is not for audience {}", self.audience)));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if !self.agents.contains(&username) {
            return Err(AuthError::Rejected(format!("{username} is not a node agent")));
        }
        let node = user
            .extra
            .unwrap_or_default()
            .remove(NODE_EXTRA)
            .and_then(|v| v.into_iter().next())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| AuthError::Rejected("token is not bound to a pod on a node".into()))?;
        let mut cache = lock(&self.cache);
        cache.retain(|_, (_, at)| at.elapsed() < REVIEW_CACHE);
        cache.insert(key, (node.clone(), Instant::now()));
        Ok(node)
    }
}

impl Authenticator for TokenReviewAuth {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            if token.is_empty() {
                return Err(AuthError::Missing);
            }
            self.review(token).await
        })
    }
}

/// The latest version of the CA Secret, kept by a watch.
#[derive(Debug, Default)]
struct Latest {
    version: String,
    state: Option<Vec<u8>>,
}

/// CA state from a Secret, for [`ca_server::Server`].
pub struct SecretSource {
    what: String,
    latest: Arc<Mutex<Latest>>,
    auth: Arc<dyn Authenticator>,
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSource").field("secret", &self.what).finish()
    }
}

impl SecretSource {
    /// Watches Secret `namespace/name` on the current runtime; returns once
    /// it has been read (or found missing) once.
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        name: &str,
        auth: Arc<dyn Authenticator>,
    ) -> anyhow::Result<Self> {
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let latest = Arc::new(Mutex::new(Latest::default()));
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let shared = latest.clone();
        let what = format!("Secret {namespace}/{name}");
        let label = what.clone();
        tokio::spawn(async move {
            let mut first = Some(first_tx);
            let mut stream = watcher::watcher(api, config).default_backoff().boxed();
            let mut listed: Option<Secret> = None;
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(Event::Apply(s) | Event::InitApply(s)) => listed = Some(s),
                    Ok(Event::Delete(_)) => listed = None,
                    Ok(Event::Init) => {
                        listed = None;
                        continue;
                    }
                    Ok(Event::InitDone) => {}
                    Err(e) => {
                        warn!(secret = %label, error = %e, "watch failed; keeping the last CA state");
                        continue;
                    }
                }
                let mut l = lock(&shared);
                match &listed {
                    Some(s) => {
                        l.version = s.metadata.resource_version.clone().unwrap_or_default();
                        l.state = s.data.as_ref().and_then(|d| d.get(STATE_KEY)).map(|b| b.0.clone());
                    }
                    None => *l = Latest::default(),
                }
                drop(l);
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
        });
        let _ = first_rx.await;
        Ok(Self { what, latest, auth })
    }

    fn state(&self) -> Result<CaState, StoreError> {
        let l = lock(&self.latest);
        let bytes = l.state.as_ref().ok_or_else(|| StoreError::Remote {
            what: self.what.clone(),
            reason: format!(
                "missing or without `{STATE_KEY}` (create it from `ztunnel ca init --dir DIR`: kubectl create secret generic ... --from-file=DIR/{STATE_KEY})"
            ),
        })?;
        let text = std::str::from_utf8(bytes)
            .map_err(|e| StoreError::Remote { what: self.what.clone(), reason: format!("{STATE_KEY}: {e}") })?;
        CaState::from_json(text)
            .map_err(|e| StoreError::Remote { what: self.what.clone(), reason: format!("{STATE_KEY}: {e}") })
    }
}

impl ca_server::Source for SecretSource {
    fn fingerprint(&self) -> String {
        lock(&self.latest).version.clone()
    }

    fn load_state(&self) -> Result<CaState, StoreError> {
        self.state()
    }

    fn load_authenticator(&self) -> Result<Arc<dyn Authenticator>, StoreError> {
        Ok(self.auth.clone())
    }
}

impl SecretSource {
    /// Keeps ConfigMap `namespace/name` holding the current trust bundle
    /// (`root-cert.pem`), checking every `every`. Replicas write the same
    /// content, so concurrent writers agree.
    pub fn publish_bundle(self: &Arc<Self>, client: kube::Client, namespace: &str, name: &str, every: Duration) {
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let (source, name) = (self.clone(), name.to_string());
        tokio::spawn(async move {
            let mut published = String::new();
            loop {
                if let Ok(state) = source.state() {
                    let pem = state.bundle(time::OffsetDateTime::now_utc()).pem();
                    if pem != published {
                        match write_configmap(&api, &name, &pem).await {
                            Ok(()) => {
                                info!(configmap = %name, roots = pem.matches("BEGIN CERTIFICATE").count(), "trust bundle published");
                                published = pem;
                            }
                            Err(e) => warn!(configmap = %name, error = %e, "cannot publish the trust bundle"),
                        }
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
    }
}

async fn write_configmap(api: &Api<ConfigMap>, name: &str, pem: &str) -> Result<(), kube::Error> {
    let data = BTreeMap::from([(BUNDLE_KEY.to_string(), pem.to_string())]);
    match api.get_opt(name).await? {
        Some(mut cm) => {
            if cm.data.as_ref() == Some(&data) {
                return Ok(());
            }
            cm.data = Some(data);
            api.replace(name, &PostParams::default(), &cm).await.map(|_| ())
        }
        None => {
            let cm = ConfigMap {
                metadata: kube::api::ObjectMeta { name: Some(name.to_string()), ..Default::default() },
                data: Some(data),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await.map(|_| ())
        }
    }
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f)
}

/// Reads the CA state from Secret `namespace/name` (for the operator CLI);
/// returns it with the Secret, whose resourceVersion guards the write.
pub fn read_state(namespace: &str, name: &str) -> anyhow::Result<(CaState, Secret)> {
    block_on(async {
        let client = crate::kube_source::client_here().await?;
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let secret = api.get(name).await.map_err(|e| anyhow::anyhow!("Secret {namespace}/{name}: {e}"))?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(STATE_KEY))
            .ok_or_else(|| anyhow::anyhow!("Secret {namespace}/{name} has no {STATE_KEY}"))?;
        let text = std::str::from_utf8(&bytes.0)?;
        Ok((CaState::from_json(text)?, secret))
    })
}

/// Writes the CA state: creates the Secret (`previous` = `None`) or
/// replaces it, refusing if someone changed it since it was read.
pub fn write_state(namespace: &str, name: &str, state: &CaState, previous: Option<Secret>) -> anyhow::Result<()> {
    block_on(async {
        let client = crate::kube_source::client_here().await?;
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let data = BTreeMap::from([(STATE_KEY.to_string(), k8s_openapi::ByteString(state.to_json().into_bytes()))]);
        match previous {
            Some(mut s) => {
                // metadata.resourceVersion stays: the API server rejects the
                // write with 409 if the Secret changed in between.
                s.data = Some(data);
                api.replace(name, &PostParams::default(), &s).await.map_err(|e| match e {
                    kube::Error::Api(ref s) if s.code == 409 => {
                        anyhow::anyhow!("Secret {namespace}/{name} changed while this step ran; run it again")
                    }
                    e => anyhow::anyhow!("Secret {namespace}/{name}: {e}"),
                })?;
            }
            None => {
                let s = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: Some(namespace.to_string()),
                        ..Default::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(data),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &s)
                    .await
                    .map_err(|e| anyhow::anyhow!("Secret {namespace}/{name}: {e}"))?;
            }
        }
        Ok(())
    })
}
