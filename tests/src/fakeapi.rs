//! A fake Kubernetes API server for tests (no real one can run here): list
//! and watch with resourceVersions for the resources ztunnel reads, watch
//! bookmarks, `410 Gone` for a resourceVersion older than the retained
//! history, dropped watches, an outage switch, slow responses, simple field
//! selectors, ConfigMap get/create/replace and TokenReview.
//!
//! Objects are JSON values; the server assigns `metadata.resourceVersion`
//! from one cluster-wide counter, like etcd.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

type Body = BoxBody<Bytes, Infallible>;

/// A resource the fake serves: URL prefix and plural.
#[derive(Debug, Clone, Copy)]
struct Kind {
    /// `/api/v1` or `/apis/GROUP/VERSION`.
    prefix: &'static str,
    plural: &'static str,
    kind: &'static str,
    api_version: &'static str,
    namespaced: bool,
}

const KINDS: &[Kind] = &[
    Kind { prefix: "/api/v1", plural: "namespaces", kind: "Namespace", api_version: "v1", namespaced: false },
    Kind { prefix: "/api/v1", plural: "nodes", kind: "Node", api_version: "v1", namespaced: false },
    Kind { prefix: "/api/v1", plural: "pods", kind: "Pod", api_version: "v1", namespaced: true },
    Kind { prefix: "/api/v1", plural: "services", kind: "Service", api_version: "v1", namespaced: true },
    Kind { prefix: "/api/v1", plural: "secrets", kind: "Secret", api_version: "v1", namespaced: true },
    Kind { prefix: "/api/v1", plural: "configmaps", kind: "ConfigMap", api_version: "v1", namespaced: true },
    Kind {
        prefix: "/apis/networking.k8s.io/v1",
        plural: "networkpolicies",
        kind: "NetworkPolicy",
        api_version: "networking.k8s.io/v1",
        namespaced: true,
    },
    Kind {
        prefix: "/apis/networking.k8s.io/v1",
        plural: "ingresses",
        kind: "Ingress",
        api_version: "networking.k8s.io/v1",
        namespaced: true,
    },
    Kind {
        prefix: "/apis/networking.k8s.io/v1",
        plural: "ingressclasses",
        kind: "IngressClass",
        api_version: "networking.k8s.io/v1",
        namespaced: false,
    },
    Kind {
        prefix: "/apis/discovery.k8s.io/v1",
        plural: "endpointslices",
        kind: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
        namespaced: true,
    },
];

fn kind_of(k: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|x| x.kind == k)
}

/// A watch event: (resourceVersion, plural, type, object).
type WatchEvent = (u64, &'static str, &'static str, Value);

/// A review answer for a token.
#[derive(Debug, Clone)]
pub struct TokenIdentity {
    /// `system:serviceaccount:NS:NAME`.
    pub username: String,
    /// Node the token is bound to (`user.extra`), if any.
    pub node: Option<String>,
    /// Audiences the token is valid for.
    pub audiences: Vec<String>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (plural, namespace, name) → object.
    objects: BTreeMap<(&'static str, String, String), Value>,
    /// Oldest resourceVersion a watch may resume from.
    oldest: u64,
    /// Every event since `oldest`, replayed to watches that resume.
    history: Vec<WatchEvent>,
    down: bool,
    delay: Duration,
    tokens: HashMap<String, TokenIdentity>,
    reviews: usize,
    lists: HashMap<&'static str, usize>,
}

/// The fake API server.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<WatchEvent>,
    drop_watches: broadcast::Sender<()>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApi").field("addr", &self.addr).finish()
    }
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    match s.lock() {
        Ok(g) => g,
        Err(e) => e.into_inner(),
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

impl FakeApi {
    /// Serves on `listener` (bind it where clients can reach it, e.g. inside
    /// a node's network namespace) from a background thread.
    pub fn start(listener: TcpListener) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (events, _) = broadcast::channel(100_000);
        let (drop_watches, _) = broadcast::channel(16);
        let api = FakeApi { state: Arc::new(Mutex::new(State::default())), events, drop_watches, addr };
        let server = api.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                loop {
                    let Ok((tcp, _)) = listener.accept().await else { continue };
                    let api = server.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let api = api.clone();
                            async move { Ok::<_, Infallible>(api.handle(req).await) }
                        });
                        let _ =
                            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                    });
                }
            });
        });
        Ok(api)
    }

    /// On a loopback port.
    pub fn start_local() -> anyhow::Result<Self> {
        Self::start(TcpListener::bind("127.0.0.1:0")?)
    }

    /// Writes a kubeconfig for this server (no authentication) to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(path, text)?;
        Ok(())
    }

    /// Creates or replaces an object (a JSON value with apiVersion, kind
    /// and metadata). Returns its new resourceVersion.
    pub fn apply(&self, mut obj: Value) -> u64 {
        let Some(kind) = obj["kind"].as_str().and_then(kind_of) else { return 0 };
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let ns = if kind.namespaced {
            obj["metadata"]["namespace"].as_str().unwrap_or("default").to_string()
        } else {
            String::new()
        };
        if kind.namespaced {
            obj["metadata"]["namespace"] = json!(ns);
        }
        let mut s = lock(&self.state);
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (kind.plural, ns, name);
        let ty = if s.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        s.objects.insert(key, obj.clone());
        s.history.push((rv, kind.plural, ty, obj.clone()));
        let _ = self.events.send((rv, kind.plural, ty, obj));
        rv
    }

    /// Applies every object of a YAML manifest text (multi-document).
    pub fn apply_yaml(&self, text: &str) -> anyhow::Result<usize> {
        let mut n = 0;
        for doc in serde_norway::Deserializer::from_str(text) {
            let v: Value = serde::Deserialize::deserialize(doc)?;
            if v.is_null() {
                continue;
            }
            self.apply(v);
            n += 1;
        }
        Ok(n)
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let Some(k) = kind_of(kind) else { return false };
        let ns = if k.namespaced { namespace.to_string() } else { String::new() };
        let mut s = lock(&self.state);
        let Some(mut obj) = s.objects.remove(&(k.plural, ns, name.to_string())) else { return false };
        s.rv += 1;
        let rv = s.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.history.push((rv, k.plural, "DELETED", obj.clone()));
        let _ = self.events.send((rv, k.plural, "DELETED", obj));
        true
    }

    /// An object as stored.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let k = kind_of(kind)?;
        let ns = if k.namespaced { namespace.to_string() } else { String::new() };
        lock(&self.state).objects.get(&(k.plural, ns, name.to_string())).cloned()
    }

    /// Forgets the watch history: watches resuming from an older
    /// resourceVersion get `410 Gone` and must relist.
    pub fn compact(&self) {
        let mut s = lock(&self.state);
        s.oldest = s.rv + 1;
        s.history.clear();
    }

    /// Ends every open watch (as an API server restart or a load balancer
    /// timeout would).
    pub fn drop_watches(&self) {
        let _ = self.drop_watches.send(());
    }

    /// Outage: every request fails with 503 and open watches end.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
        if down {
            self.drop_watches();
        }
    }

    /// Delays every response.
    pub fn set_delay(&self, d: Duration) {
        lock(&self.state).delay = d;
    }

    /// What a TokenReview says about `token`.
    pub fn add_token(&self, token: &str, who: TokenIdentity) {
        lock(&self.state).tokens.insert(token.to_string(), who);
    }

    /// TokenReviews answered so far.
    pub fn reviews(&self) -> usize {
        lock(&self.state).reviews
    }

    /// Lists served so far for a plural (`pods`, ...).
    pub fn lists(&self, plural: &str) -> usize {
        lock(&self.state).lists.iter().filter(|(k, _)| **k == plural).map(|(_, v)| *v).sum()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (down, delay) = {
            let s = lock(&self.state);
            (s.down, s.delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if down {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &status(503, "ServiceUnavailable", "down for a test"),
            );
        }
        let path = req.uri().path().to_string();
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        let method = req.method().clone();
        if path == "/version" {
            return json_response(
                StatusCode::OK,
                &json!({"major": "1", "minor": "35", "gitVersion": "v1.35.0-fake", "gitCommit": "0", "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64"}),
            );
        }
        if method == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return self.token_review(&body);
        }
        let Some((kind, ns, name)) = route(&path) else {
            return json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &format!("{path}: not served")));
        };
        match (method, name) {
            (Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(kind, ns, &query)
            }
            (Method::GET, None) => self.list(kind, ns, &query),
            (Method::GET, Some(name)) => match self.get(kind.kind, ns.as_deref().unwrap_or(""), &name) {
                Some(o) => json_response(StatusCode::OK, &o),
                None => json_response(StatusCode::NOT_FOUND, &status(404, "NotFound", &format!("{name} not found"))),
            },
            (Method::POST, None) | (Method::PUT, Some(_)) => {
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                    return json_response(StatusCode::BAD_REQUEST, &status(400, "BadRequest", "not JSON"));
                };
                obj["kind"] = json!(kind.kind);
                obj["apiVersion"] = json!(kind.api_version);
                if let Some(ns) = ns {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                // Optimistic concurrency: a replace names the version it read.
                let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let stored = self.get(kind.kind, obj["metadata"]["namespace"].as_str().unwrap_or(""), &name);
                if let (Some(want), Some(have)) = (
                    obj["metadata"]["resourceVersion"].as_str(),
                    stored.as_ref().and_then(|o| o["metadata"]["resourceVersion"].as_str()),
                ) && want != have
                {
                    return json_response(
                        StatusCode::CONFLICT,
                        &status(409, "Conflict", "the object has been modified"),
                    );
                }
                self.apply(obj.clone());
                let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let stored = self.get(kind.kind, obj["metadata"]["namespace"].as_str().unwrap_or(""), &name);
                json_response(StatusCode::CREATED, &stored.unwrap_or(obj))
            }
            _ => json_response(StatusCode::METHOD_NOT_ALLOWED, &status(405, "MethodNotAllowed", "not supported")),
        }
    }

    fn selected(obj: &Value, query: &HashMap<String, String>) -> bool {
        let Some(sel) = query.get("fieldSelector") else { return true };
        sel.split(',').filter(|c| !c.is_empty()).all(|cond| {
            let Some((field, want)) = cond.split_once('=') else { return true };
            let have = match field {
                "metadata.name" => obj["metadata"]["name"].as_str(),
                "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
                "type" => obj["type"].as_str(),
                _ => return true,
            };
            have == Some(want)
        })
    }

    fn list(&self, kind: &'static Kind, ns: Option<String>, query: &HashMap<String, String>) -> Response<Body> {
        let mut s = lock(&self.state);
        *s.lists.entry(kind.plural).or_default() += 1;
        // Pages (`limit`, `continue` = the index to resume at), as a real
        // API server cuts large lists.
        let start: usize = query.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
        let matching = s
            .objects
            .iter()
            .filter(|((p, n, _), _)| *p == kind.plural && ns.as_ref().is_none_or(|want| want == n))
            .map(|(_, o)| o)
            .filter(|o| Self::selected(o, query));
        let mut items: Vec<Value> = matching.skip(start).take(limit.saturating_add(1)).cloned().collect();
        let more = items.len() > limit;
        items.truncate(limit);
        let rv = s.rv;
        drop(s);
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if more {
            meta["continue"] = json!((start + limit).to_string());
        }
        json_response(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", kind.kind),
                "apiVersion": kind.api_version,
                "metadata": meta,
                "items": items,
            }),
        )
    }

    fn watch(&self, kind: &'static Kind, ns: Option<String>, query: &HashMap<String, String>) -> Response<Body> {
        let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
        let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
        let timeout = query.get("timeoutSeconds").and_then(|v| v.parse::<u64>().ok()).unwrap_or(290);
        let (tx, rx) = mpsc::channel::<Bytes>(1024);
        // Subscribe, then take the history under the same lock that
        // publishes events: nothing falls between the two.
        let (oldest, replay, mut events) = {
            let s = lock(&self.state);
            let replay: Vec<WatchEvent> = s.history.iter().filter(|e| e.0 > from).cloned().collect();
            (s.oldest, replay, self.events.subscribe())
        };
        let mut dropped = self.drop_watches.subscribe();
        let query = query.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            let line = |v: Value| Bytes::from(format!("{v}\n"));
            if from != 0 && from < oldest {
                let gone = status(410, "Expired", &format!("too old resource version: {from} ({oldest})"));
                let _ = tx.send(line(json!({"type": "ERROR", "object": gone}))).await;
                return;
            }
            let mut sent = from;
            for (rv, plural, ty, obj) in replay {
                let in_ns = ns.as_ref().is_none_or(|n| obj["metadata"]["namespace"].as_str() == Some(n));
                if plural == kind.plural
                    && in_ns
                    && Self::selected(&obj, &query)
                    && tx.send(line(json!({"type": ty, "object": obj}))).await.is_err()
                {
                    return;
                }
                sent = sent.max(rv);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok((rv, plural, ty, obj)) => {
                            let in_ns = ns.as_ref().is_none_or(|n| obj["metadata"]["namespace"].as_str() == Some(n));
                            if plural == kind.plural && rv > sent && in_ns && Self::selected(&obj, &query)
                                && tx.send(line(json!({"type": ty, "object": obj}))).await.is_err()
                            {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tick.tick(), if bookmarks => {
                        let rv = lock(&state).rv;
                        let mark = json!({"type": "BOOKMARK", "object": {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": {"resourceVersion": rv.to_string()}}});
                        if tx.send(line(mark)).await.is_err() { return; }
                    }
                    _ = dropped.recv() => return,
                    _ = tokio::time::sleep_until(deadline) => return,
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
        r
    }

    fn token_review(&self, body: &[u8]) -> Response<Body> {
        let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let token = req["spec"]["token"].as_str().unwrap_or_default();
        let wanted: Vec<String> = req["spec"]["audiences"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut s = lock(&self.state);
        s.reviews += 1;
        let status_v = match s.tokens.get(token) {
            Some(who) if wanted.is_empty() || wanted.iter().any(|w| who.audiences.contains(w)) => {
                let mut user = json!({"username": who.username, "groups": ["system:serviceaccounts"]});
                if let Some(node) = &who.node {
                    user["extra"] = json!({"authentication.kubernetes.io/node-name": [node]});
                }
                let aud: Vec<&String> =
                    who.audiences.iter().filter(|a| wanted.is_empty() || wanted.contains(a)).collect();
                json!({"authenticated": true, "user": user, "audiences": aud})
            }
            Some(_) => json!({"authenticated": false, "error": "token audiences do not match"}),
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        drop(s);
        let mut out = req.clone();
        out["status"] = status_v;
        out["kind"] = json!("TokenReview");
        out["apiVersion"] = json!("authentication.k8s.io/v1");
        json_response(StatusCode::CREATED, &out)
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(kind, namespace, name)` of a request path.
fn route(path: &str) -> Option<(&'static Kind, Option<String>, Option<String>)> {
    for k in KINDS {
        let Some(rest) = path.strip_prefix(k.prefix) else { continue };
        let parts: Vec<&str> = rest.trim_start_matches('/').split('/').filter(|p| !p.is_empty()).collect();
        match parts.as_slice() {
            [p] if *p == k.plural => return Some((k, None, None)),
            [p, name] if *p == k.plural && !k.namespaced => return Some((k, None, Some(name.to_string()))),
            ["namespaces", ns, p] if *p == k.plural && k.namespaced => return Some((k, Some(ns.to_string()), None)),
            ["namespaces", ns, p, name] if *p == k.plural && k.namespaced => {
                return Some((k, Some(ns.to_string()), Some(name.to_string())));
            }
            _ => {}
        }
    }
    None
}

/// Standard base64 (for Secret `data`).
pub fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn routes() {
        assert_eq!(route("/api/v1/pods").map(|r| r.0.kind), Some("Pod"));
        let (k, ns, name) = route("/api/v1/namespaces/a/secrets/b").unwrap();
        assert_eq!((k.kind, ns.as_deref(), name.as_deref()), ("Secret", Some("a"), Some("b")));
        assert_eq!(route("/api/v1/namespaces/x").map(|r| (r.0.kind, r.2)), Some(("Namespace", Some("x".into()))));
        assert_eq!(route("/apis/discovery.k8s.io/v1/endpointslices").map(|r| r.0.kind), Some("EndpointSlice"));
        assert!(route("/api/v1/unknown").is_none());
    }
}
