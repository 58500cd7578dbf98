//! The route table: which Ingresses this gateway serves, and for a request's
//! host and path, which backend endpoints and which TLS Secret. Pure: built
//! from the decoded objects, rebuilt whole on every change, swapped in
//! atomically by the server.
//!
//! Matching follows the Ingress specification:
//! - Hosts: an exact host wins over a wildcard (`*.example.com` matches
//!   exactly one more label: `a.example.com`, not `example.com` nor
//!   `b.a.example.com`), which wins over rules without a host. If the most
//!   specific host has no matching path, the next group is tried; then the
//!   `defaultBackend`; then 404.
//! - Paths: the longest matching path wins; on a tie `Exact` beats `Prefix`,
//!   which beats `ImplementationSpecific`. `Prefix` matches element-wise on
//!   `/`-separated segments, ignoring a trailing slash (`/foo` matches
//!   `/foo`, `/foo/` and `/foo/bar`, not `/foobar`). `ImplementationSpecific`
//!   is a plain string prefix.
//! - The same host and path in two Ingresses: the first by namespace/name
//!   wins, the other is reported as a conflict. Likewise the TLS Secret of a
//!   host named by two Ingresses, and the `defaultBackend`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use policy::ObjectKey;

use super::model::{Backend, EndpointSlice, GatewayObject, Ingress, IngressClass, PathType, PortRef, Service};

/// Which Ingresses this gateway serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassSelector {
    /// The IngressClass name (default `ztunnel`).
    pub class: String,
    /// The controller value IngressClasses name for this gateway.
    pub controller: String,
}

impl Default for ClassSelector {
    fn default() -> Self {
        Self { class: "ztunnel".into(), controller: CONTROLLER.into() }
    }
}

/// `spec.controller` of this gateway's IngressClasses.
pub const CONTROLLER: &str = "ztunnel.dev/ingress-gateway";

/// A resolved backend: a Service port and its ready endpoints.
#[derive(Debug)]
pub struct Target {
    /// `namespace/service:port`, for logs.
    pub label: Arc<str>,
    /// Ready endpoints (empty: 503).
    pub endpoints: Vec<SocketAddr>,
    /// How the endpoints speak HTTP.
    pub protocol: BackendProtocol,
    /// The name a TLS backend's certificate must carry:
    /// `<service>.<namespace>.svc`.
    pub server_name: Arc<str>,
    next: AtomicUsize,
}

/// How a backend is spoken to, from its Service port's `appProtocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendProtocol {
    /// HTTP/1.1 keep-alive connections (the default).
    #[default]
    Http1,
    /// HTTP/2 without TLS, by prior knowledge (RFC 9113 3.3): gRPC and
    /// other HTTP/2-only servers. One multiplexed connection per endpoint.
    H2c,
    /// HTTP/1.1 over TLS, for backends that serve only HTTPS: the
    /// certificate must chain to `--backend-ca` and name the Service
    /// (`<service>.<namespace>.svc`).
    Https,
}

impl BackendProtocol {
    /// `kubernetes.io/h2c` (the standard value, KEP-3726), and the names
    /// other meshes use for the same thing: `h2c`, `http2`, `grpc`;
    /// `https` (the IANA service name) is HTTP/1.1 over TLS. Any other
    /// value (`http`, `kubernetes.io/ws`, ...) is HTTP/1.1.
    pub fn from_app_protocol(app_protocol: Option<&str>) -> Self {
        match app_protocol.map(str::to_ascii_lowercase).as_deref() {
            Some("kubernetes.io/h2c" | "h2c" | "http2" | "grpc") => Self::H2c,
            Some("https") => Self::Https,
            _ => Self::Http1,
        }
    }
}

impl Target {
    /// The endpoints in the order to try them for one request: round-robin
    /// start, then the others (so a connect failure moves to the next).
    pub fn attempt_order(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.endpoints.len();
        let start = if n == 0 { 0 } else { self.next.fetch_add(1, Ordering::Relaxed) % n };
        (0..n).map(move |i| self.endpoints[(start + i) % n])
    }

    fn new(service: ObjectKey, port: PortRef, endpoints: Vec<SocketAddr>, protocol: BackendProtocol) -> Self {
        let label = match &port {
            PortRef::Number(n) => format!("{service}:{n}"),
            PortRef::Name(s) => format!("{service}:{s}"),
        };
        let server_name = format!("{}.{}.svc", service.name, service.namespace).into();
        Self { label: label.into(), endpoints, protocol, server_name, next: AtomicUsize::new(0) }
    }
}

/// One path route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index in [`RouteTable::labels`] (per-route metrics).
    pub id: usize,
    /// `namespace/ingress path` (`... default` for a defaultBackend).
    pub label: Arc<str>,
    /// The Ingress it came from (`namespace/name`), for metrics and logs.
    pub ingress: Arc<str>,
    /// The path as written.
    pub path: String,
    /// How it matches.
    pub kind: PathType,
    /// Where it goes.
    pub target: Arc<Target>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathType::Exact => path == self.path,
            PathType::ImplementationSpecific => path.starts_with(&self.path),
            PathType::Prefix => prefix_matches(&self.path, path),
        }
    }

    fn rank(&self) -> (usize, u8) {
        let kind = match self.kind {
            PathType::Exact => 2,
            PathType::Prefix => 1,
            PathType::ImplementationSpecific => 0,
        };
        (self.path.len(), kind)
    }
}

/// `Prefix` matching: every `/`-separated element of `prefix` equals the
/// request's element at the same position; a trailing slash is ignored on
/// both sides.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        return true; // `/` matches everything
    }
    let r = path.trim_end_matches('/');
    r == p || (r.starts_with(p) && r.as_bytes().get(p.len()) == Some(&b'/'))
}

/// The table.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<Route>>,
    wildcard: HashMap<String, Vec<Route>>,
    any_host: Vec<Route>,
    default_backend: Option<Route>,
    tls_exact: HashMap<String, Option<ObjectKey>>,
    tls_wildcard: HashMap<String, Option<ObjectKey>>,
    /// `(host, label)` of every route, by [`Route::id`]: the rule's host
    /// (`*` without host, `-` for a defaultBackend; bounded metric labels,
    /// never the client's Host header) and `namespace/ingress path`.
    pub labels: Vec<(Arc<str>, Arc<str>)>,
    /// Ingresses served, by namespace/name.
    pub served: Vec<String>,
    /// Conflicts and unresolved references, for logs and `/config_dump`.
    pub problems: Vec<String>,
}

/// Lower-case host without port or trailing dot.
pub fn normalize_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or("")
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { authority })
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host) // the common case: no allocation
    }
}

fn wildcard_suffix(host: &str) -> Option<&str> {
    host.split_once('.').map(|(_, rest)| rest).filter(|r| !r.is_empty())
}

impl RouteTable {
    /// Builds the table from the current objects.
    pub fn build<'a>(objects: impl IntoIterator<Item = &'a GatewayObject>, selector: &ClassSelector) -> Self {
        let mut ingresses: BTreeMap<ObjectKey, &Ingress> = BTreeMap::new();
        let mut classes: Vec<&IngressClass> = Vec::new();
        let mut services: HashMap<&ObjectKey, &Service> = HashMap::new();
        let mut slices: HashMap<&ObjectKey, Vec<&EndpointSlice>> = HashMap::new();
        let mut secrets: Vec<&ObjectKey> = Vec::new();
        for o in objects {
            match o {
                GatewayObject::Ingress(i) => {
                    ingresses.insert(i.key.clone(), i);
                }
                GatewayObject::IngressClass(c) => classes.push(c),
                GatewayObject::Service(s) => {
                    services.insert(&s.key, s);
                }
                GatewayObject::EndpointSlice(s) => slices.entry(&s.service).or_default().push(s),
                GatewayObject::Secret(s) => secrets.push(&s.key),
            }
        }
        let ours = |class: &str| {
            class == selector.class
                || classes.iter().any(|c| c.name == class && c.controller.as_deref() == Some(&selector.controller))
        };
        let default_class = classes.iter().any(|c| {
            c.is_default && (c.name == selector.class || c.controller.as_deref() == Some(&selector.controller))
        });

        let mut t = RouteTable::default();
        let mut targets: HashMap<Backend, Arc<Target>> = HashMap::new();
        let mut resolve = |b: &Backend, problems: &mut Vec<String>| -> Arc<Target> {
            targets
                .entry(b.clone())
                .or_insert_with(|| {
                    let (endpoints, protocol) =
                        resolve_endpoints(b, services.get(&b.service).copied(), &slices, problems);
                    Arc::new(Target::new(b.service.clone(), b.port.clone(), endpoints, protocol))
                })
                .clone()
        };
        let mut seen_paths: HashMap<(Option<String>, String, PathType), Arc<str>> = HashMap::new();
        for (key, ing) in &ingresses {
            let served = match &ing.class {
                Some(c) => ours(c),
                None => default_class,
            };
            if !served {
                continue;
            }
            let name: Arc<str> = key.to_string().into();
            t.served.push(name.to_string());
            if let Some(b) = &ing.default_backend {
                if let Some(first) = &t.default_backend {
                    t.problems.push(format!(
                        "Ingress {name}: defaultBackend ignored: Ingress {} already sets one",
                        first.ingress
                    ));
                } else {
                    let target = resolve(b, &mut t.problems);
                    let (id, label, host): (usize, Arc<str>, Arc<str>) =
                        (t.labels.len(), format!("{name} default").into(), "-".into());
                    t.labels.push((host.clone(), label.clone()));
                    t.default_backend = Some(Route {
                        id,
                        label,
                        ingress: name.clone(),
                        path: "default".into(),
                        kind: PathType::Prefix,
                        target,
                    });
                }
            }
            for tls in &ing.tls {
                if let Some(s) = &tls.secret
                    && !secrets.contains(&s)
                {
                    t.problems.push(format!(
                        "Ingress {name}: TLS Secret {s} not found (or not a valid kubernetes.io/tls Secret); the default certificate is served"
                    ));
                }
                for host in &tls.hosts {
                    let (map, h) = match host.strip_prefix("*.") {
                        Some(suffix) => (&mut t.tls_wildcard, suffix.to_string()),
                        None => (&mut t.tls_exact, host.clone()),
                    };
                    match map.entry(h) {
                        std::collections::hash_map::Entry::Occupied(_) => t.problems.push(format!(
                            "Ingress {name}: TLS host {host} already has a certificate from an earlier Ingress"
                        )),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(tls.secret.clone());
                        }
                    }
                }
            }
            for rule in &ing.rules {
                for p in &rule.paths {
                    let k = (rule.host.clone(), p.path.clone(), p.kind);
                    if let Some(first) = seen_paths.get(&k) {
                        t.problems.push(format!(
                            "Ingress {name}: {} {:?} {} ignored: Ingress {first} already routes it",
                            rule.host.as_deref().unwrap_or("*"),
                            p.kind,
                            p.path
                        ));
                        continue;
                    }
                    seen_paths.insert(k, name.clone());
                    let host: Arc<str> = rule.host.as_deref().unwrap_or("*").into();
                    let label: Arc<str> = format!("{name} {}", p.path).into();
                    t.labels.push((host.clone(), label.clone()));
                    let route = Route {
                        id: t.labels.len() - 1,
                        label,
                        ingress: name.clone(),
                        path: p.path.clone(),
                        kind: p.kind,
                        target: resolve(&p.backend, &mut t.problems),
                    };
                    let list = match rule.host.as_deref() {
                        None => &mut t.any_host,
                        Some(h) => match h.strip_prefix("*.") {
                            Some(suffix) => t.wildcard.entry(suffix.to_string()).or_default(),
                            None => t.exact.entry(h.to_string()).or_default(),
                        },
                    };
                    list.push(route);
                }
            }
        }
        // Most specific first, so the first match is the answer.
        for list in t.exact.values_mut().chain(t.wildcard.values_mut()).chain(std::iter::once(&mut t.any_host)) {
            list.sort_by_key(|r| std::cmp::Reverse(r.rank()));
        }
        t
    }

    /// The route for `host` (normalised) and `path` (without query).
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Route> {
        let groups =
            [self.exact.get(host), wildcard_suffix(host).and_then(|s| self.wildcard.get(s)), Some(&self.any_host)];
        for routes in groups.into_iter().flatten() {
            if let Some(r) = routes.iter().find(|r| r.matches(path)) {
                return Some(r);
            }
        }
        self.default_backend.as_ref()
    }

    /// The TLS entry for a server name: `Some(Some(secret))` for a host with
    /// a Secret, `Some(None)` for a TLS host without one (default
    /// certificate), `None` for a host without TLS.
    pub fn tls_for(&self, host: &str) -> Option<Option<&ObjectKey>> {
        if let Some(s) = self.tls_exact.get(host) {
            return Some(s.as_ref());
        }
        wildcard_suffix(host).and_then(|suffix| self.tls_wildcard.get(suffix)).map(Option::as_ref)
    }

    /// Every endpoint any route may use.
    pub fn endpoints(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(std::iter::once(&self.any_host))
            .flatten()
            .map(|r| &r.target)
            .chain(self.default_backend.iter().map(|d| &d.target))
            .flat_map(|t| t.endpoints.iter().copied())
    }

    /// Every route as `host path kind -> backend (n endpoints)`, for
    /// `/config_dump`.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut push = |host: &str, r: &Route| {
            out.push(format!(
                "{host}{} {:?} -> {}{} ({} endpoints) [{}]",
                r.path,
                r.kind,
                r.target.label,
                if r.target.protocol == BackendProtocol::H2c { " h2c" } else { "" },
                r.target.endpoints.len(),
                r.ingress
            ));
        };
        let mut exact: Vec<_> = self.exact.iter().collect();
        exact.sort_by_key(|(h, _)| h.as_str());
        for (h, routes) in exact {
            routes.iter().for_each(|r| push(h, r));
        }
        let mut wild: Vec<_> = self.wildcard.iter().collect();
        wild.sort_by_key(|(h, _)| h.as_str());
        for (h, routes) in wild {
            routes.iter().for_each(|r| push(&format!("*.{h}"), r));
        }
        self.any_host.iter().for_each(|r| push("*", r));
        if let Some(d) = &self.default_backend {
            out.push(format!("default -> {} ({} endpoints) [{}]", d.target.label, d.target.endpoints.len(), d.ingress));
        }
        out
    }
}

fn resolve_endpoints(
    b: &Backend,
    svc: Option<&Service>,
    slices: &HashMap<&ObjectKey, Vec<&EndpointSlice>>,
    problems: &mut Vec<String>,
) -> (Vec<SocketAddr>, BackendProtocol) {
    let Some(svc) = svc else {
        problems.push(format!("Service {} not found", b.service));
        return (Vec::new(), BackendProtocol::Http1);
    };
    let port = match &b.port {
        PortRef::Number(n) => svc.ports.iter().find(|p| p.port == *n),
        PortRef::Name(name) => svc.ports.iter().find(|p| &p.name == name),
    };
    let Some(port) = port else {
        problems.push(format!("Service {} has no TCP port {:?}", b.service, b.port));
        return (Vec::new(), BackendProtocol::Http1);
    };
    let protocol = BackendProtocol::from_app_protocol(port.app_protocol.as_deref());
    let mut out: Vec<SocketAddr> = slices
        .get(&b.service)
        .into_iter()
        .flatten()
        .flat_map(|s| {
            let target = s.ports.iter().find(|(n, _)| *n == port.name).map(|(_, p)| *p);
            s.ready.iter().filter_map(move |ip| target.map(|p| SocketAddr::new(*ip, p)))
        })
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        problems.push(format!("Service {} port {:?}: no ready endpoints", b.service, b.port));
    }
    (out, protocol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::model::parse_str;

    fn table(yaml: &str) -> RouteTable {
        let p = parse_str("t.yaml", yaml);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        RouteTable::build(&p.objects, &ClassSelector::default())
    }

    fn svc(name: &str, port: u16, ip: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: n}}\nspec: {{ports: [{{name: http, port: {port}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-x, namespace: n, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8{port}}}]\nendpoints: [{{addresses: [{ip}]}}]\n"
        )
    }

    fn ingress(name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: n}}\nspec:\n  ingressClassName: ztunnel\n{spec}\n"
        )
    }

    fn path(p: &str, kind: &str, svc: &str) -> String {
        format!(
            "      - {{path: '{p}', pathType: {kind}, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}\n"
        )
    }

    fn routed(t: &RouteTable, host: &str, path: &str) -> Option<String> {
        // The Service name out of `namespace/name:port`.
        t.lookup(host, path).map(|m| m.target.label.split(['/', ':']).nth(1).unwrap_or("").to_string())
    }

    #[test]
    fn backend_protocol_from_the_service_port() {
        use BackendProtocol::{H2c, Http1, Https};
        for (value, want) in [
            (None, Http1),
            (Some("kubernetes.io/h2c"), H2c),
            (Some("https"), Https),
            (Some("HTTPS"), Https),
            (Some("GRPC"), H2c),
            (Some("http2"), H2c),
            (Some("h2c"), H2c),
            (Some("http"), Http1),
            (Some("kubernetes.io/ws"), Http1),
            (Some("kubernetes.io/h2c-ish"), Http1),
        ] {
            assert_eq!(BackendProtocol::from_app_protocol(value), want, "{value:?}");
        }
        let yaml = svc("plain", 80, "10.0.0.1")
            + &svc("rpc", 81, "10.0.0.2")
                .replace("{name: http, port: 81}", "{name: http, port: 81, appProtocol: kubernetes.io/h2c}")
            + &ingress(
                "i",
                "  rules:\n  - http:\n      paths:\n      - {path: /rpc, pathType: Prefix, backend: {service: {name: rpc, port: {number: 81}}}}\n      - {path: /, pathType: Prefix, backend: {service: {name: plain, port: {number: 80}}}}\n",
            );
        assert!(yaml.contains("appProtocol"));
        let t = table(&yaml);
        assert_eq!(t.lookup("x", "/rpc/Call").unwrap().target.protocol, H2c);
        assert_eq!(t.lookup("x", "/other").unwrap().target.protocol, Http1);
        assert!(t.describe().iter().any(|l| l.contains("n/rpc:81 h2c")), "{:?}", t.describe());
    }

    /// The examples table of the Ingress specification (Prefix/Exact).
    #[test]
    fn spec_path_examples() {
        // (paths, request, expected match: Some(service) or None)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, Option<&'a str>);
        let cases: &[Case<'_>] = &[
            (&[("/", "Prefix")], "/", Some("s0")),
            (&[("/", "Prefix")], "/anything/x", Some("s0")),
            (&[("/foo", "Exact")], "/foo", Some("s0")),
            (&[("/foo", "Exact")], "/bar", None),
            (&[("/foo", "Exact")], "/foo/", None),
            (&[("/foo/", "Exact")], "/foo", None),
            (&[("/foo", "Prefix")], "/foo", Some("s0")),
            (&[("/foo", "Prefix")], "/foo/", Some("s0")),
            (&[("/foo/", "Prefix")], "/foo", Some("s0")),
            (&[("/foo/", "Prefix")], "/foo/", Some("s0")),
            (&[("/aaa/bb", "Prefix")], "/aaa/bbb", None),
            (&[("/aaa/bbb", "Prefix")], "/aaa/bbb", Some("s0")),
            (&[("/aaa/bbb/", "Prefix")], "/aaa/bbb", Some("s0")),
            (&[("/aaa/bbb", "Prefix")], "/aaa/bbb/", Some("s0")),
            (&[("/aaa/bbb", "Prefix")], "/aaa/bbb/ccc", Some("s0")),
            (&[("/aaa/bbb", "Prefix")], "/aaa/bbbxyz", None),
            (&[("/", "Prefix"), ("/aaa", "Prefix")], "/aaa/ccc", Some("s1")),
            (&[("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/aaa/bbb", Some("s2")),
            (&[("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/ccc", Some("s0")),
            (&[("/aaa", "Prefix")], "/ccc", None),
            (&[("/foo", "Prefix"), ("/foo", "Exact")], "/foo", Some("s1")),
            (&[("/foo", "Exact"), ("/foo", "Prefix")], "/foo", Some("s0")),
            (&[("/foo", "Exact"), ("/foo", "Prefix")], "/foo/x", Some("s1")),
            (&[("/api", "ImplementationSpecific")], "/apix", Some("s0")),
            (&[("/api", "ImplementationSpecific"), ("/api", "Prefix")], "/api/x", Some("s1")),
        ];
        for (paths, req, want) in cases {
            let mut spec = "  rules:\n  - http:\n      paths:\n".to_string();
            for (i, (p, k)) in paths.iter().enumerate() {
                spec.push_str(&path(p, k, &format!("s{i}")));
            }
            let t = table(&ingress("i", &spec));
            assert_eq!(routed(&t, "x.example", req).as_deref(), *want, "paths {paths:?}, request {req}");
        }
    }

    #[test]
    fn hosts_exact_over_wildcard_over_any_and_fallthrough() {
        let spec = format!(
            "  defaultBackend: {{service: {{name: dflt, port: {{number: 80}}}}}}\n  rules:\n  - host: a.example.com\n    http:\n      paths:\n{}  - host: '*.example.com'\n    http:\n      paths:\n{}  - http:\n      paths:\n{}",
            path("/api", "Prefix", "exact"),
            path("/", "Prefix", "wild"),
            path("/only-any", "Exact", "any"),
        );
        let t = table(&ingress("i", &spec));
        assert_eq!(routed(&t, "a.example.com", "/api/v1").as_deref(), Some("exact"));
        // No path in the exact host: the wildcard group is next.
        assert_eq!(routed(&t, "a.example.com", "/web").as_deref(), Some("wild"));
        assert_eq!(routed(&t, "b.example.com", "/api").as_deref(), Some("wild"));
        // A wildcard covers exactly one label.
        assert_eq!(routed(&t, "c.b.example.com", "/x").as_deref(), Some("dflt"));
        assert_eq!(routed(&t, "example.com", "/x").as_deref(), Some("dflt"));
        assert_eq!(routed(&t, "other.org", "/only-any").as_deref(), Some("any"));
        assert_eq!(routed(&t, "other.org", "/nope").as_deref(), Some("dflt"));
    }

    #[test]
    fn class_selection() {
        let rules = format!("  rules:\n  - http:\n      paths:\n{}", path("/", "Prefix", "s"));
        let other = ingress("i", &rules).replace("ingressClassName: ztunnel", "ingressClassName: nginx");
        assert!(table(&other).served.is_empty());
        let none = ingress("i", &rules).replace("  ingressClassName: ztunnel\n", "");
        assert!(table(&none).served.is_empty(), "no class and no default class");
        let default_class = "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: ztunnel, annotations: {ingressclass.kubernetes.io/is-default-class: 'true'}}\nspec: {controller: ztunnel.dev/ingress-gateway}\n";
        assert_eq!(table(&format!("{none}{default_class}")).served, vec!["n/i"]);
        // Another class name whose controller is this gateway.
        let alias = "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: edge}\nspec: {controller: ztunnel.dev/ingress-gateway}\n";
        let edge = ingress("i", &rules).replace("ingressClassName: ztunnel", "ingressClassName: edge");
        assert_eq!(table(&format!("{edge}{alias}")).served, vec!["n/i"]);
    }

    #[test]
    fn endpoints_and_conflicts() {
        let rules = format!("  rules:\n  - host: a.b\n    http:\n      paths:\n{}", path("/", "Prefix", "api"));
        let y = format!(
            "{}{}{}{}",
            svc("api", 80, "10.0.0.1"),
            svc("other", 80, "10.0.0.9"),
            ingress("a-first", &rules),
            ingress("b-second", &rules.replace("name: api", "name: other")),
        );
        let t = table(&y);
        let m = t.lookup("a.b", "/").unwrap();
        assert_eq!(&*m.ingress, "n/a-first");
        assert_eq!(m.target.endpoints, vec!["10.0.0.1:880".parse().unwrap()]);
        assert!(t.problems.iter().any(|p| p.contains("b-second") && p.contains("already routes")), "{:?}", t.problems);

        // Port by name, missing service, missing port, no ready endpoint.
        let y = format!(
            "{}{}",
            svc("api", 80, "10.0.0.1"),
            ingress(
                "i",
                "  rules:\n  - http:\n      paths:\n      - {path: /n, pathType: Prefix, backend: {service: {name: api, port: {name: http}}}}\n      - {path: /missing, pathType: Prefix, backend: {service: {name: nope, port: {number: 80}}}}\n      - {path: /badport, pathType: Prefix, backend: {service: {name: api, port: {number: 81}}}}\n"
            )
        );
        let t = table(&y);
        assert_eq!(t.lookup("h", "/n").unwrap().target.endpoints.len(), 1);
        assert!(t.lookup("h", "/missing").unwrap().target.endpoints.is_empty());
        assert!(t.lookup("h", "/badport").unwrap().target.endpoints.is_empty());
        assert!(t.problems.iter().any(|p| p.contains("Service n/nope not found")), "{:?}", t.problems);
        assert!(t.problems.iter().any(|p| p.contains("no TCP port")), "{:?}", t.problems);
    }

    #[test]
    fn tls_hosts_and_round_robin() {
        let spec = format!(
            "  tls:\n  - {{hosts: [a.example.com], secretName: a}}\n  - {{hosts: ['*.example.com'], secretName: wild}}\n  - {{hosts: [nosecret.org]}}\n  rules:\n  - http:\n      paths:\n{}",
            path("/", "Prefix", "s")
        );
        let t = table(&ingress("i", &spec));
        assert_eq!(t.tls_for("a.example.com"), Some(Some(&ObjectKey::new("n", "a"))));
        assert_eq!(t.tls_for("b.example.com"), Some(Some(&ObjectKey::new("n", "wild"))));
        assert_eq!(t.tls_for("nosecret.org"), Some(None));
        assert_eq!(t.tls_for("x.b.example.com"), None);
        assert!(t.problems.iter().any(|p| p.contains("TLS Secret n/a not found")));

        let target = Target::new(
            ObjectKey::new("n", "s"),
            PortRef::Number(80),
            vec!["10.0.0.1:1".parse().unwrap(), "10.0.0.2:1".parse().unwrap()],
            BackendProtocol::Http1,
        );
        assert_eq!(&*target.label, "n/s:80");
        let a: Vec<_> = target.attempt_order().collect();
        let b: Vec<_> = target.attempt_order().collect();
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], b[0], "round robin");
        assert_eq!(a[1], b[0], "the next endpoint is tried after a failure");
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalize_host("A.Example.com:8443"), "a.example.com");
        assert_eq!(normalize_host("a.example.com."), "a.example.com");
        assert_eq!(normalize_host("[::1]:443"), "::1");
        assert_eq!(normalize_host("a.b"), "a.b");
    }
}
