//! The objects the ingress gateway reads, decoded from Kubernetes manifests
//! (or API objects) into the few fields it uses, and validated. No IO.
//!
//! Only what routing and TLS need is kept (hosts, paths, backends, service
//! ports, ready endpoint addresses, TLS key pairs), so a large cluster costs
//! little memory. Every rejection names the object and the field, like the
//! NetworkPolicy manifests do.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as net;
use policy::manifest::RawObject;
use policy::{FieldError, ManifestError, ObjectError, ObjectKey};

use crate::agent::source::Kinds;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The annotation that marks the default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The pre-`ingressClassName` annotation, still honoured.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// How a path is matched (`spec.rules[].http.paths[].pathType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathType {
    /// The whole path, case-sensitive.
    Exact,
    /// Element-wise prefix on `/`-separated segments.
    Prefix,
    /// This gateway's choice: a plain string prefix (`/api` matches `/apix`).
    ImplementationSpecific,
}

/// A Service port named by an Ingress backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    /// `port.number`.
    Number(u16),
    /// `port.name`.
    Name(String),
}

/// An Ingress backend: a Service in the Ingress's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// The Service.
    pub service: ObjectKey,
    /// Its port.
    pub port: PortRef,
}

/// One path of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IngressPath {
    /// The path (always starts with `/`).
    pub path: String,
    /// How it matches.
    pub kind: PathType,
    /// Where it goes.
    pub backend: Backend,
}

/// One host rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IngressRule {
    /// `host` (exact or `*.suffix`), `None` for every host.
    pub host: Option<String>,
    /// Its paths, in order.
    pub paths: Vec<IngressPath>,
}

/// One `spec.tls[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IngressTls {
    /// Hosts (exact or wildcard) the certificate is for.
    pub hosts: Vec<String>,
    /// The `kubernetes.io/tls` Secret in the Ingress's namespace.
    pub secret: Option<ObjectKey>,
}

/// A `networking.k8s.io/v1` Ingress.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ingress {
    /// namespace/name.
    pub key: ObjectKey,
    /// `spec.ingressClassName`, else the legacy annotation.
    pub class: Option<String>,
    /// `spec.defaultBackend`.
    pub default_backend: Option<Backend>,
    /// `spec.tls`.
    pub tls: Vec<IngressTls>,
    /// `spec.rules`.
    pub rules: Vec<IngressRule>,
}

/// A `networking.k8s.io/v1` IngressClass.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IngressClass {
    /// Name.
    pub name: String,
    /// `spec.controller`.
    pub controller: Option<String>,
    /// Marked as the cluster's default class.
    pub is_default: bool,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// `name` (may be empty for a single-port Service).
    pub name: String,
    /// `port`.
    pub port: u16,
    /// `appProtocol` (e.g. `kubernetes.io/h2c`): how the backend speaks.
    pub app_protocol: Option<String>,
}

/// A `v1` Service: only its ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    /// namespace/name.
    pub key: ObjectKey,
    /// TCP ports.
    pub ports: Vec<ServicePort>,
}

/// A `discovery.k8s.io/v1` EndpointSlice: ready addresses and ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointSlice {
    /// namespace/name.
    pub key: ObjectKey,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: ObjectKey,
    /// `ports[]`: name → port.
    pub ports: Vec<(String, u16)>,
    /// Addresses of ready endpoints.
    pub ready: Vec<IpAddr>,
}

/// A `kubernetes.io/tls` Secret. The key never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TlsSecret {
    /// namespace/name.
    pub key: ObjectKey,
    /// `tls.crt`: PEM chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// `tls.key`: PEM private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSecret")
            .field("key", &self.key.to_string())
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// An object the gateway reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GatewayObject {
    /// Ingress.
    Ingress(Ingress),
    /// IngressClass.
    IngressClass(IngressClass),
    /// Service.
    Service(Service),
    /// EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// TLS Secret.
    Secret(TlsSecret),
}

/// What names (and deletes) a [`GatewayObject`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum GatewayRef {
    /// A Secret.
    Secret(ObjectKey),
    /// A Service.
    Service(ObjectKey),
    /// An EndpointSlice.
    EndpointSlice(ObjectKey),
    /// An IngressClass by name.
    IngressClass(String),
    /// An Ingress.
    Ingress(ObjectKey),
}

impl GatewayObject {
    /// Its reference.
    pub fn reference(&self) -> GatewayRef {
        match self {
            GatewayObject::Ingress(i) => GatewayRef::Ingress(i.key.clone()),
            GatewayObject::IngressClass(c) => GatewayRef::IngressClass(c.name.clone()),
            GatewayObject::Service(s) => GatewayRef::Service(s.key.clone()),
            GatewayObject::EndpointSlice(s) => GatewayRef::EndpointSlice(s.key.clone()),
            GatewayObject::Secret(s) => GatewayRef::Secret(s.key.clone()),
        }
    }

    /// `Kind namespace/name`.
    pub fn describe(&self) -> String {
        match self {
            GatewayObject::Ingress(i) => format!("Ingress {}", i.key),
            GatewayObject::IngressClass(c) => format!("IngressClass {}", c.name),
            GatewayObject::Service(s) => format!("Service {}", s.key),
            GatewayObject::EndpointSlice(s) => format!("EndpointSlice {}", s.key),
            GatewayObject::Secret(s) => format!("Secret {}", s.key),
        }
    }
}

/// The gateway's kinds, for [`crate::agent::source::DirSource`].
#[derive(Debug)]
pub enum GatewayKinds {}

impl Kinds for GatewayKinds {
    type Object = GatewayObject;
    type Ref = GatewayRef;

    fn decode(file: &str, raw: &RawObject) -> Result<Option<GatewayObject>, ManifestError> {
        decode(file, raw)
    }
    fn raw_ref(raw: &RawObject) -> Option<GatewayRef> {
        let (ns, name) = crate::agent::source::raw_names(raw)?;
        Some(match (raw.api_version.as_str(), raw.kind.as_str()) {
            ("networking.k8s.io/v1", "Ingress") => GatewayRef::Ingress(ObjectKey::new(ns, name)),
            ("networking.k8s.io/v1", "IngressClass") => GatewayRef::IngressClass(name),
            ("v1", "Service") => GatewayRef::Service(ObjectKey::new(ns, name)),
            ("discovery.k8s.io/v1", "EndpointSlice") => GatewayRef::EndpointSlice(ObjectKey::new(ns, name)),
            ("v1", "Secret") => GatewayRef::Secret(ObjectKey::new(ns, name)),
            _ => return None,
        })
    }
    fn reference(o: &GatewayObject) -> GatewayRef {
        o.reference()
    }
    fn describe(o: &GatewayObject) -> String {
        o.describe()
    }
    fn rank(r: &GatewayRef) -> u8 {
        // Secrets and backends before the Ingresses that use them, so a new
        // Ingress never routes (or serves TLS) before what it names exists.
        match r {
            GatewayRef::Secret(_) | GatewayRef::Service(_) | GatewayRef::EndpointSlice(_) => 0,
            GatewayRef::IngressClass(_) => 1,
            GatewayRef::Ingress(_) => 2,
        }
    }
}

/// Parses every gateway object in one file's text.
#[cfg(test)]
pub fn parse_str(file: &str, text: &str) -> crate::agent::source::Parsed<GatewayObject> {
    GatewayKinds::parse(file, text)
}

/// Decodes one document; `Ok(None)` for kinds (or Secret types) the gateway
/// does not read.
pub fn decode(file: &str, raw: &RawObject) -> Result<Option<GatewayObject>, ManifestError> {
    let invalid = |field: String, reason: String| ManifestError::Object {
        file: file.into(),
        document: raw.document,
        error: Box::new(ObjectError::new(&raw.kind, &raw.display_name, FieldError::new(field, reason))),
    };
    let obj = match (raw.api_version.as_str(), raw.kind.as_str()) {
        ("networking.k8s.io/v1", "Ingress") => {
            GatewayObject::Ingress(ingress(&raw.decode::<net::Ingress>(file)?).map_err(|(f, r)| invalid(f, r))?)
        }
        ("networking.k8s.io/v1", "IngressClass") => {
            let c = raw.decode::<net::IngressClass>(file)?;
            let name = c.metadata.name.clone().ok_or_else(|| invalid("metadata.name".into(), "required".into()))?;
            let is_default = annotation(&c.metadata, DEFAULT_CLASS_ANNOTATION) == Some("true");
            GatewayObject::IngressClass(IngressClass {
                name,
                controller: c.spec.and_then(|s| s.controller),
                is_default,
            })
        }
        ("v1", "Service") => {
            GatewayObject::Service(service(&raw.decode::<core::Service>(file)?).map_err(|(f, r)| invalid(f, r))?)
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => GatewayObject::EndpointSlice(
            endpoint_slice(&raw.decode::<discovery::EndpointSlice>(file)?).map_err(|(f, r)| invalid(f, r))?,
        ),
        ("v1", "Secret") => {
            let s = raw.decode::<core::Secret>(file)?;
            if s.type_.as_deref() != Some("kubernetes.io/tls") {
                return Ok(None);
            }
            GatewayObject::Secret(tls_secret(&s).map_err(|(f, r)| invalid(f, r))?)
        }
        _ => return Ok(None),
    };
    Ok(Some(obj))
}

type FieldResult<T> = Result<T, (String, String)>;

fn annotation<'a>(meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, k: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(k).map(String::as_str)
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> FieldResult<ObjectKey> {
    let name = meta.name.as_deref().ok_or(("metadata.name".to_string(), "required".to_string()))?;
    Ok(ObjectKey::new(meta.namespace.as_deref().unwrap_or("default"), name))
}

/// A DNS name as Ingress hosts allow it: lower-case labels, optionally a
/// leading `*.` wildcard label; no IP addresses, ports or trailing dot.
pub fn valid_host(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("host `{host}` is not a DNS name"));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!("host `{host}` is an IP address; Ingress hosts are DNS names"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!("host `{host}` is not a lower-case DNS name (label `{label}`)"));
        }
    }
    Ok(())
}

fn backend(ns: &str, b: &net::IngressBackend, field: &str) -> FieldResult<Backend> {
    if b.resource.is_some() {
        return Err((format!("{field}.resource"), "resource backends are not supported; use a service".into()));
    }
    let svc = b.service.as_ref().ok_or((format!("{field}.service"), "required".to_string()))?;
    let port = svc.port.as_ref().ok_or((format!("{field}.service.port"), "required".to_string()))?;
    let port = match (&port.number, &port.name) {
        (Some(n), None) => PortRef::Number(
            u16::try_from(*n)
                .ok()
                .filter(|p| *p != 0)
                .ok_or((format!("{field}.service.port.number"), format!("{n} is not a port (1-65535)")))?,
        ),
        (None, Some(name)) if !name.is_empty() => PortRef::Name(name.clone()),
        _ => {
            return Err((format!("{field}.service.port"), "exactly one of `number` and `name` is required".into()));
        }
    };
    Ok(Backend { service: ObjectKey::new(ns, svc.name.as_str()), port })
}

fn ingress(i: &net::Ingress) -> FieldResult<Ingress> {
    let key = key_of(&i.metadata)?;
    let ns = key.namespace.clone();
    let spec = i.spec.clone().unwrap_or_default();
    let class = spec
        .ingress_class_name
        .clone()
        .or_else(|| annotation(&i.metadata, LEGACY_CLASS_ANNOTATION).map(str::to_string));
    let default_backend = match &spec.default_backend {
        Some(b) => Some(backend(&ns, b, "spec.defaultBackend")?),
        None => None,
    };
    let mut tls = Vec::new();
    for (n, t) in spec.tls.iter().flatten().enumerate() {
        let hosts = t.hosts.clone().unwrap_or_default();
        for (h, host) in hosts.iter().enumerate() {
            valid_host(host).map_err(|r| (format!("spec.tls[{n}].hosts[{h}]"), r))?;
        }
        let secret = t.secret_name.as_ref().filter(|s| !s.is_empty()).map(|s| ObjectKey::new(ns.clone(), s.as_str()));
        tls.push(IngressTls { hosts, secret });
    }
    let mut rules = Vec::new();
    for (n, r) in spec.rules.iter().flatten().enumerate() {
        let host = r.host.clone().filter(|h| !h.is_empty());
        if let Some(h) = &host {
            valid_host(h).map_err(|reason| (format!("spec.rules[{n}].host"), reason))?;
        }
        let mut paths = Vec::new();
        for (p, hp) in r.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let field = format!("spec.rules[{n}].http.paths[{p}]");
            let kind = match hp.path_type.as_str() {
                "Exact" => PathType::Exact,
                "Prefix" => PathType::Prefix,
                "ImplementationSpecific" => PathType::ImplementationSpecific,
                other => {
                    return Err((
                        format!("{field}.pathType"),
                        format!("`{other}` is not Exact, Prefix or ImplementationSpecific"),
                    ));
                }
            };
            let path = hp.path.clone().unwrap_or_else(|| "/".to_string());
            if !path.starts_with('/') {
                return Err((format!("{field}.path"), format!("`{path}` must start with `/`")));
            }
            if kind != PathType::ImplementationSpecific && path.contains(['?', '#']) {
                return Err((format!("{field}.path"), format!("`{path}` must not contain `?` or `#`")));
            }
            paths.push(IngressPath { path, kind, backend: backend(&ns, &hp.backend, &format!("{field}.backend"))? });
        }
        rules.push(IngressRule { host, paths });
    }
    if default_backend.is_none() && rules.iter().all(|r| r.paths.is_empty()) {
        return Err(("spec".into(), "an Ingress needs a defaultBackend or at least one rule with paths".into()));
    }
    Ok(Ingress { key, class, default_backend, tls, rules })
}

fn service(s: &core::Service) -> FieldResult<Service> {
    let key = key_of(&s.metadata)?;
    let mut ports = Vec::new();
    for (n, p) in s.spec.iter().flat_map(|s| s.ports.iter().flatten()).enumerate() {
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or((format!("spec.ports[{n}].port"), format!("{} is not a port (1-65535)", p.port)))?;
        ports.push(ServicePort {
            name: p.name.clone().unwrap_or_default(),
            port,
            app_protocol: p.app_protocol.clone(),
        });
    }
    Ok(Service { key, ports })
}

fn endpoint_slice(s: &discovery::EndpointSlice) -> FieldResult<EndpointSlice> {
    let key = key_of(&s.metadata)?;
    let service = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).ok_or((
        "metadata.labels".to_string(),
        format!("`{SERVICE_NAME_LABEL}` is required to tie the slice to its Service"),
    ))?;
    let family_ok = |ip: &IpAddr| match s.address_type.as_str() {
        "IPv4" => ip.is_ipv4(),
        "IPv6" => ip.is_ipv6(),
        _ => false,
    };
    if !matches!(s.address_type.as_str(), "IPv4" | "IPv6") {
        return Err(("addressType".into(), format!("`{}` is not supported (IPv4 or IPv6)", s.address_type)));
    }
    let mut ports = Vec::new();
    for (n, p) in s.ports.iter().flatten().enumerate() {
        if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
            continue;
        }
        let Some(port) = p.port else { continue };
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or((format!("ports[{n}].port"), format!("{port} is not a port (1-65535)")))?;
        ports.push((p.name.clone().unwrap_or_default(), port));
    }
    let mut ready = Vec::new();
    for (n, e) in s.endpoints.iter().enumerate() {
        // The EndpointSlice API: a nil `ready` means ready.
        if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        for (a, addr) in e.addresses.iter().enumerate() {
            let ip: IpAddr = addr
                .parse()
                .ok()
                .filter(family_ok)
                .ok_or((format!("endpoints[{n}].addresses[{a}]"), format!("`{addr}` is not an {}", s.address_type)))?;
            ready.push(ip);
        }
    }
    Ok(EndpointSlice {
        key: key.clone(),
        service: ObjectKey::new(key.namespace.clone(), service.as_str()),
        ports,
        ready,
    })
}

fn tls_secret(s: &core::Secret) -> FieldResult<TlsSecret> {
    let key = key_of(&s.metadata)?;
    let mut fields: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    for (k, v) in s.data.iter().flatten() {
        fields.insert(k, v.0.clone());
    }
    // `stringData` wins over `data`, as the API server merges them.
    for (k, v) in s.string_data.iter().flatten() {
        fields.insert(k, v.clone().into_bytes());
    }
    let cert_pem = fields.remove("tls.crt").filter(|v| !v.is_empty());
    let key_pem = fields.remove("tls.key").filter(|v| !v.is_empty());
    match (cert_pem, key_pem) {
        (Some(cert_pem), Some(key_pem)) => Ok(TlsSecret { key, cert_pem, key_pem }),
        (None, _) => Err(("data.tls.crt".into(), "a kubernetes.io/tls Secret needs `tls.crt`".into())),
        (_, None) => Err(("data.tls.key".into(), "a kubernetes.io/tls Secret needs `tls.key`".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<GatewayObject, String> {
        let p = parse_str("t.yaml", text);
        if let Some(e) = p.errors.first() {
            return Err(e.to_string());
        }
        p.objects.into_iter().next().ok_or_else(|| "ignored".to_string())
    }

    #[test]
    fn ingress_fields_and_defaults() {
        let o = one(r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: shop, annotations: {kubernetes.io/ingress.class: ztunnel}}
spec:
  tls: [{hosts: ["shop.example.com", "*.shop.example.com"], secretName: shop-tls}]
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {number: 8080}}}}
      - {pathType: Exact, backend: {service: {name: web, port: {name: http}}}}
"#)
        .unwrap();
        let GatewayObject::Ingress(i) = o else { panic!("{o:?}") };
        assert_eq!(i.class.as_deref(), Some("ztunnel"));
        assert_eq!(i.tls[0].secret, Some(ObjectKey::new("shop", "shop-tls")));
        assert_eq!(i.rules[0].paths[0].backend.port, PortRef::Number(8080));
        assert_eq!(i.rules[0].paths[1].path, "/");
        assert_eq!(i.rules[0].paths[1].backend.port, PortRef::Name("http".into()));
    }

    #[test]
    fn bad_ingresses_name_the_field() {
        let base = |rule: &str| {
            format!(
                "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: x, namespace: n}}\nspec:\n  rules:\n  - {rule}\n"
            )
        };
        let cases = [
            (
                "{host: Shop.Example.com, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}]}}",
                "spec.rules[0].host",
            ),
            (
                "{host: 10.0.0.1, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}]}}",
                "IP address",
            ),
            (
                "{http: {paths: [{path: /, pathType: Regex, backend: {service: {name: a, port: {number: 80}}}}]}}",
                "pathType",
            ),
            (
                "{http: {paths: [{path: api, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}]}}",
                "must start with",
            ),
            (
                "{http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 0}}}}]}}",
                "port.number",
            ),
            ("{http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: a, port: {}}}}]}}", "exactly one"),
            (
                "{http: {paths: [{path: /, pathType: Prefix, backend: {resource: {kind: Bucket, name: b}}}]}}",
                "resource backends",
            ),
            ("{host: a.example.com}", "defaultBackend or at least one rule"),
        ];
        for (rule, want) in cases {
            let err = one(&base(rule)).unwrap_err();
            assert!(err.contains(want), "{rule}: {err}");
            assert!(err.contains("Ingress n/x"), "{err}");
        }
    }

    #[test]
    fn endpoint_slices_keep_ready_addresses_only() {
        let o = one(r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 53, protocol: UDP}]
endpoints:
- {addresses: [10.0.0.1]}
- {addresses: [10.0.0.2], conditions: {ready: true}}
- {addresses: [10.0.0.3], conditions: {ready: false}}
"#)
        .unwrap();
        let GatewayObject::EndpointSlice(s) = o else { panic!() };
        assert_eq!(s.service, ObjectKey::new("shop", "api"));
        assert_eq!(s.ports, vec![("http".to_string(), 8080)]);
        assert_eq!(s.ready, vec!["10.0.0.1".parse::<IpAddr>().unwrap(), "10.0.0.2".parse().unwrap()]);

        let err = one("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\nendpoints: [{addresses: [fd00::1]}]\n").unwrap_err();
        assert!(err.contains("endpoints[0].addresses[0]"), "{err}");
        let err = one("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: []\n").unwrap_err();
        assert!(err.contains("kubernetes.io/service-name"), "{err}");
    }

    #[test]
    fn secrets_tls_only_and_key_redacted() {
        // tls.crt = "CERT", tls.key = "KEY" (base64).
        let o = one("apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: n}\ntype: kubernetes.io/tls\ndata: {tls.crt: Q0VSVA==, tls.key: S0VZ}\n").unwrap();
        let GatewayObject::Secret(s) = o else { panic!() };
        assert_eq!(s.cert_pem, b"CERT");
        assert_eq!(s.key_pem, b"KEY");
        assert!(!format!("{s:?}").contains("KEY\""), "{s:?}");
        let opaque = one("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: Opaque\ndata: {a: Q0VSVA==}\n");
        assert_eq!(opaque.unwrap_err(), "ignored");
        let err = one(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: kubernetes.io/tls\nstringData: {tls.crt: x}\n",
        )
        .unwrap_err();
        assert!(err.contains("tls.key"), "{err}");
    }

    #[test]
    fn hosts() {
        for ok in ["a.example.com", "*.example.com", "localhost", "x-1.y"] {
            assert!(valid_host(ok).is_ok(), "{ok}");
        }
        for bad in ["", "*", "*.", "a..b", "-a.b", "a_b.c", "A.b", "a.b:443", "::1", "a.*.b"] {
            assert!(valid_host(bad).is_err(), "{bad}");
        }
    }
}
