//! Service ClusterIPs, translated where the connection starts.
//!
//! The design asks that traffic to a Service's ClusterIP be judged by the
//! policies of the backend pod it reaches, as under kube-proxy — and that
//! pod-to-pod TCP be carried in mTLS. kube-proxy translates in the node's
//! netfilter, after the pod's packet has left its veth, so the classifiers
//! there would see the ClusterIP: egress policy would judge an address no
//! rule names (a pod allowed to reach `app=db` could not reach the `db`
//! Service), and the proxy would not capture the flow (not a pod address),
//! which kube-proxy would then carry to the backend in the clear.
//!
//! So the agent translates at the socket instead, as Cilium's socket load
//! balancing does: cgroup programs on `connect`, `sendmsg` (UDP) rewrite a
//! ClusterIP:port to one ready backend's address and port before any packet
//! exists, and `recvmsg`/`getpeername` give the application the ClusterIP
//! back. The pod's packets then carry the backend pod's address from the
//! first one on: policy, steering and the proxy see what they see for any
//! pod-to-pod flow.
//!
//! This module is the pure part: Services and EndpointSlices as the agent
//! reads them, and the table of frontends (ClusterIP, port, protocol) to
//! their ready backends.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use policy::manifest::RawObject;
use policy::{FieldError, ManifestError, ObjectError, ObjectKey};

use super::source::Kinds;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// IANA protocol numbers of the protocols translated.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// `name` (empty for a single unnamed port).
    pub name: String,
    /// `port`.
    pub port: u16,
    /// [`TCP`] or [`UDP`].
    pub protocol: u8,
}

/// A `v1` Service: its cluster IPs and ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    /// namespace/name.
    pub key: ObjectKey,
    /// `spec.clusterIPs` (or `clusterIP`); empty for a headless Service or
    /// one without an address yet.
    pub cluster_ips: Vec<IpAddr>,
    /// TCP and UDP ports.
    pub ports: Vec<ServicePort>,
}

/// A `discovery.k8s.io/v1` EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slice {
    /// namespace/name.
    pub key: ObjectKey,
    /// Its Service.
    pub service: ObjectKey,
    /// `ports[]`: (name, port, protocol).
    pub ports: Vec<(String, u16, u8)>,
    /// Addresses of ready endpoints.
    pub ready: Vec<IpAddr>,
}

/// What the agent reads for Services.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServiceObject {
    /// A Service.
    Service(Service),
    /// An EndpointSlice.
    Slice(Slice),
}

/// A reference to one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServiceRef {
    /// A Service.
    Service(ObjectKey),
    /// An EndpointSlice.
    Slice(ObjectKey),
}

/// The Service kinds, for an object source.
#[derive(Debug)]
pub enum ServiceKinds {}

impl Kinds for ServiceKinds {
    type Object = ServiceObject;
    type Ref = ServiceRef;

    fn decode(file: &str, raw: &RawObject) -> Result<Option<ServiceObject>, ManifestError> {
        let invalid = |(field, reason): (String, String)| ManifestError::Object {
            file: file.into(),
            document: raw.document,
            error: Box::new(ObjectError::new(&raw.kind, &raw.display_name, FieldError::new(field, reason))),
        };
        Ok(Some(match (raw.api_version.as_str(), raw.kind.as_str()) {
            ("v1", "Service") => ServiceObject::Service(service(&raw.decode::<core::Service>(file)?).map_err(invalid)?),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                ServiceObject::Slice(slice(&raw.decode::<discovery::EndpointSlice>(file)?).map_err(invalid)?)
            }
            _ => return Ok(None),
        }))
    }

    fn raw_ref(raw: &RawObject) -> Option<ServiceRef> {
        let (ns, name) = super::source::raw_names(raw)?;
        match (raw.api_version.as_str(), raw.kind.as_str()) {
            ("v1", "Service") => Some(ServiceRef::Service(ObjectKey::new(ns, name))),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(ServiceRef::Slice(ObjectKey::new(ns, name))),
            _ => None,
        }
    }

    fn reference(o: &ServiceObject) -> ServiceRef {
        match o {
            ServiceObject::Service(s) => ServiceRef::Service(s.key.clone()),
            ServiceObject::Slice(s) => ServiceRef::Slice(s.key.clone()),
        }
    }

    fn describe(o: &ServiceObject) -> String {
        match o {
            ServiceObject::Service(s) => format!("Service {}", s.key),
            ServiceObject::Slice(s) => format!("EndpointSlice {}", s.key),
        }
    }

    fn rank(_: &ServiceRef) -> u8 {
        0
    }
}

type FieldResult<T> = Result<T, (String, String)>;

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> FieldResult<ObjectKey> {
    let name = meta.name.as_deref().ok_or(("metadata.name".to_string(), "required".to_string()))?;
    Ok(ObjectKey::new(meta.namespace.as_deref().unwrap_or("default"), name))
}

/// `TCP` (the default) or `UDP`; `None` for SCTP, which is not translated.
fn protocol(p: Option<&str>, field: impl Fn() -> String) -> FieldResult<Option<u8>> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Some(TCP)),
        "UDP" => Ok(Some(UDP)),
        "SCTP" => Ok(None),
        other => Err((field(), format!("`{other}` is not a protocol (TCP, UDP or SCTP)"))),
    }
}

fn port(n: i32, field: impl Fn() -> String) -> FieldResult<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| (field(), format!("{n} is not a port (1-65535)")))
}

fn service(s: &core::Service) -> FieldResult<Service> {
    let key = key_of(&s.metadata)?;
    let spec = s.spec.as_ref();
    let mut cluster_ips = Vec::new();
    let listed = spec.and_then(|s| s.cluster_ips.clone()).filter(|l| !l.is_empty());
    let single = spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]);
    for (i, ip) in listed.or(single).unwrap_or_default().iter().enumerate() {
        if ip.is_empty() || ip == "None" {
            continue; // headless
        }
        let ip: IpAddr =
            ip.parse().map_err(|_| (format!("spec.clusterIPs[{i}]"), format!("`{ip}` is not an IP address")))?;
        cluster_ips.push(ip);
    }
    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        cluster_ips.clear();
    }
    let mut ports = Vec::new();
    for (n, p) in spec.iter().flat_map(|s| s.ports.iter().flatten()).enumerate() {
        let Some(protocol) = protocol(p.protocol.as_deref(), || format!("spec.ports[{n}].protocol"))? else {
            continue;
        };
        let port = port(p.port, || format!("spec.ports[{n}].port"))?;
        ports.push(ServicePort { name: p.name.clone().unwrap_or_default(), port, protocol });
    }
    Ok(Service { key, cluster_ips, ports })
}

fn slice(s: &discovery::EndpointSlice) -> FieldResult<Slice> {
    let key = key_of(&s.metadata)?;
    let service = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).ok_or((
        "metadata.labels".to_string(),
        format!("`{SERVICE_NAME_LABEL}` is required to tie the slice to its Service"),
    ))?;
    let service = ObjectKey::new(key.namespace.clone(), service.clone());
    let family_ok = |ip: &IpAddr| match s.address_type.as_str() {
        "IPv4" => ip.is_ipv4(),
        "IPv6" => ip.is_ipv6(),
        _ => false,
    };
    if !matches!(s.address_type.as_str(), "IPv4" | "IPv6" | "FQDN") {
        return Err(("addressType".into(), format!("`{}` is not an address type", s.address_type)));
    }
    let mut ports = Vec::new();
    for (n, p) in s.ports.iter().flatten().enumerate() {
        let Some(protocol) = protocol(p.protocol.as_deref(), || format!("ports[{n}].protocol"))? else { continue };
        let Some(number) = p.port else { continue };
        ports.push((p.name.clone().unwrap_or_default(), port(number, || format!("ports[{n}].port"))?, protocol));
    }
    let mut ready = Vec::new();
    for (e, ep) in s.endpoints.iter().enumerate() {
        // Ready unless it says otherwise (the API's own default).
        if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        for (a, addr) in ep.addresses.iter().enumerate() {
            if s.address_type == "FQDN" {
                continue;
            }
            let ip: IpAddr = addr.parse().ok().filter(family_ok).ok_or((
                format!("endpoints[{e}].addresses[{a}]"),
                format!("`{addr}` is not an {} address", s.address_type),
            ))?;
            ready.push(ip);
        }
    }
    Ok(Slice { key, service, ports, ready })
}

/// A Service frontend: a cluster IP, a port and a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// The cluster IP.
    pub ip: IpAddr,
    /// The Service port.
    pub port: u16,
    /// [`TCP`] or [`UDP`].
    pub protocol: u8,
}

/// Every frontend of `services` and its ready backends (sorted, each once;
/// empty when the Service has none ready, which refuses connections as
/// kube-proxy does). A backend is an endpoint address of the frontend's
/// family with the port its slice gives for the Service port's name and
/// protocol.
pub fn table<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a Slice>,
) -> BTreeMap<Frontend, Vec<SocketAddr>> {
    let mut by_service: BTreeMap<&ObjectKey, Vec<&Slice>> = BTreeMap::new();
    for s in slices {
        by_service.entry(&s.service).or_default().push(s);
    }
    let mut out = BTreeMap::new();
    for svc in services {
        let slices = by_service.get(&svc.key).map(Vec::as_slice).unwrap_or_default();
        for ip in &svc.cluster_ips {
            for p in &svc.ports {
                let mut backends = BTreeSet::new();
                for s in slices {
                    let Some(&(_, target, _)) =
                        s.ports.iter().find(|(name, _, proto)| *name == p.name && *proto == p.protocol)
                    else {
                        continue;
                    };
                    for a in s.ready.iter().filter(|a| a.is_ipv4() == ip.is_ipv4()) {
                        backends.insert(SocketAddr::new(*a, target));
                    }
                }
                out.insert(Frontend { ip: *ip, port: p.port, protocol: p.protocol }, backends.into_iter().collect());
            }
        }
    }
    out
}

/// The table as `/config_dump` shows it: one entry per frontend,
/// `ip:port/PROTO` → backends (`[ip]:port` for IPv6).
pub fn dump(table: &BTreeMap<Frontend, Vec<SocketAddr>>) -> serde_json::Value {
    let entries: serde_json::Map<String, serde_json::Value> = table
        .iter()
        .map(|(f, b)| {
            let proto = if f.protocol == TCP { "TCP" } else { "UDP" };
            (
                format!("{}/{proto}", SocketAddr::new(f.ip, f.port)),
                serde_json::Value::from(b.iter().map(ToString::to_string).collect::<Vec<_>>()),
            )
        })
        .collect();
    serde_json::Value::Object(entries)
}

/// Parses a Service CIDR (`10.96.0.0/12`, `fd00:96::/108`): the network
/// and its prefix length; host bits must be clear.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let bad = |why: &str| format!("--service-cidr {s:?}: {why}");
    let (net, len) = s.split_once('/').ok_or_else(|| bad("expected ADDRESS/PREFIX, e.g. 10.96.0.0/12"))?;
    let net: IpAddr = net.parse().map_err(|_| bad("not an IP address before the /"))?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    let len: u8 = len.parse().ok().filter(|l| *l <= max).ok_or_else(|| bad("the prefix length is out of range"))?;
    let bits: u128 = match net {
        IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        IpAddr::V6(a) => u128::from(a),
    };
    let host = if len == 0 { bits } else { bits << len };
    if host != 0 {
        return Err(bad("host bits are set (give the network address)"));
    }
    Ok((net, len))
}

/// A frontend as written to the maps: the id of its backend list, and the
/// list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Backend list id.
    pub id: u32,
    /// The backends under it.
    pub backends: Vec<SocketAddr>,
}

/// One map write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write backend list `id`.
    PutBackends(u32, Vec<SocketAddr>),
    /// Point a frontend at list `id` of `count` entries.
    PutFrontend(Frontend, u32, u32),
    /// Remove a frontend.
    DelFrontend(Frontend),
    /// Delete list `id` of `count` entries.
    DelBackends(u32, u32),
}

/// The map writes that take `installed` to `want`, in a safe order: a
/// changed frontend gets its new list under a fresh id before it points at
/// it, and its old list goes only after that, so a connect never finds a
/// frontend pointing at a half-written or deleted list. `installed` is
/// updated to the result; ids come from `next_id`.
pub fn plan(
    installed: &mut BTreeMap<Frontend, Installed>,
    want: &BTreeMap<Frontend, Vec<SocketAddr>>,
    next_id: &mut u32,
) -> Vec<Op> {
    let (mut puts, mut points, mut unpoints, mut dels) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let count = |v: &[SocketAddr]| u32::try_from(v.len()).unwrap_or(u32::MAX);
    for (f, backends) in want {
        if installed.get(f).is_some_and(|i| i.backends == *backends) {
            continue;
        }
        let id = *next_id;
        *next_id = next_id.wrapping_add(1).max(1);
        if !backends.is_empty() {
            puts.push(Op::PutBackends(id, backends.clone()));
        }
        points.push(Op::PutFrontend(*f, id, count(backends)));
        if let Some(old) = installed.insert(*f, Installed { id, backends: backends.clone() })
            && !old.backends.is_empty()
        {
            dels.push(Op::DelBackends(old.id, count(&old.backends)));
        }
    }
    let gone: Vec<Frontend> = installed.keys().filter(|f| !want.contains_key(f)).copied().collect();
    for f in gone {
        if let Some(old) = installed.remove(&f) {
            unpoints.push(Op::DelFrontend(f));
            if !old.backends.is_empty() {
                dels.push(Op::DelBackends(old.id, count(&old.backends)));
            }
        }
    }
    puts.into_iter().chain(points).chain(unpoints).chain(dels).collect()
}

/// The Services and EndpointSlices seen so far.
#[derive(Debug, Default)]
pub struct Objects {
    services: BTreeMap<ObjectKey, Service>,
    slices: BTreeMap<ObjectKey, Slice>,
    synced: bool,
}

impl Objects {
    /// Applies one change; whether anything changed.
    pub fn apply(&mut self, change: &super::source::Change<ServiceObject, ServiceRef>) -> bool {
        use super::source::Change;
        match change {
            Change::Apply(ServiceObject::Service(s)) => {
                self.services.insert(s.key.clone(), s.clone()).as_ref() != Some(s)
            }
            Change::Apply(ServiceObject::Slice(s)) => self.slices.insert(s.key.clone(), s.clone()).as_ref() != Some(s),
            Change::Delete(ServiceRef::Service(k)) => self.services.remove(k).is_some(),
            Change::Delete(ServiceRef::Slice(k)) => self.slices.remove(k).is_some(),
        }
    }

    /// The frontend table.
    pub fn table(&self) -> BTreeMap<Frontend, Vec<SocketAddr>> {
        table(self.services.values(), self.slices.values())
    }

    /// Whether the maps were written once (with no Service at all the
    /// first sync still runs: it clears what a predecessor left).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Notes the first sync.
    pub fn mark_synced(&mut self) {
        self.synced = true;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(text: &str) -> (Vec<ServiceObject>, Vec<String>) {
        let p = ServiceKinds::parse("t.yaml", text);
        (p.objects, p.errors.iter().map(ToString::to_string).collect())
    }

    const DNS: &str = "apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
  - {name: metrics, port: 9153}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-x1, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv4
ports:
- {name: dns, port: 5353, protocol: UDP}
- {name: dns-tcp, port: 5353, protocol: TCP}
endpoints:
- addresses: [10.244.1.2]
- addresses: [10.244.2.2]
  conditions: {ready: true}
- addresses: [10.244.2.3]
  conditions: {ready: false}
";

    #[test]
    fn frontends_get_the_ready_backends_on_their_target_ports() {
        let (objs, errors) = parse(DNS);
        assert!(errors.is_empty(), "{errors:?}");
        let svcs: Vec<Service> = objs
            .iter()
            .filter_map(|o| match o {
                ServiceObject::Service(s) => Some(s.clone()),
                ServiceObject::Slice(_) => None,
            })
            .collect();
        let slices: Vec<Slice> = objs
            .iter()
            .filter_map(|o| match o {
                ServiceObject::Slice(s) => Some(s.clone()),
                ServiceObject::Service(_) => None,
            })
            .collect();
        let t = table(&svcs, &slices);
        let vip: IpAddr = "10.96.0.10".parse().unwrap();
        let want: Vec<SocketAddr> = vec!["10.244.1.2:5353".parse().unwrap(), "10.244.2.2:5353".parse().unwrap()];
        assert_eq!(t[&Frontend { ip: vip, port: 53, protocol: UDP }], want, "not-ready endpoints left out");
        assert_eq!(t[&Frontend { ip: vip, port: 53, protocol: TCP }], want);
        // A port no slice names has no backends: connections are refused.
        assert_eq!(t[&Frontend { ip: vip, port: 9153, protocol: TCP }], Vec::<SocketAddr>::new());
        assert_eq!(t.len(), 3);
        assert_eq!(
            dump(&t)["10.96.0.10:53/UDP"],
            serde_json::json!(["10.244.1.2:5353", "10.244.2.2:5353"]),
            "{}",
            dump(&t)
        );
        // No slices at all: every frontend without backends.
        assert!(table(&svcs, &[]).values().all(Vec::is_empty));
    }

    #[test]
    fn headless_external_name_and_dual_stack_services() {
        let (objs, errors) = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: h}\nspec: {clusterIP: None, ports: [{port: 80}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {type: ExternalName, externalName: a.example, ports: [{port: 80}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: d}\nspec: {clusterIPs: [10.96.0.20, \"fd00:96::20\"], ports: [{port: 80}]}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: d6, labels: {kubernetes.io/service-name: d}}\n\
             addressType: IPv6\nports: [{port: 8080}]\nendpoints: [{addresses: [\"fd00:244:1::5\"]}]\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let svcs: Vec<Service> = objs
            .iter()
            .filter_map(|o| if let ServiceObject::Service(s) = o { Some(s.clone()) } else { None })
            .collect();
        assert!(svcs[0].cluster_ips.is_empty() && svcs[1].cluster_ips.is_empty(), "{svcs:?}");
        let slices: Vec<Slice> =
            objs.iter().filter_map(|o| if let ServiceObject::Slice(s) = o { Some(s.clone()) } else { None }).collect();
        let t = table(&svcs, &slices);
        let v6 = Frontend { ip: "fd00:96::20".parse().unwrap(), port: 80, protocol: TCP };
        assert_eq!(t[&v6], vec!["[fd00:244:1::5]:8080".parse::<SocketAddr>().unwrap()]);
        let v4 = Frontend { ip: "10.96.0.20".parse().unwrap(), port: 80, protocol: TCP };
        assert!(t[&v4].is_empty(), "an IPv6 slice does not serve the IPv4 cluster IP");
        assert_eq!(t.len(), 2);
    }

    fn fe(port: u16) -> Frontend {
        Frontend { ip: "10.96.0.1".parse().unwrap(), port, protocol: TCP }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn plans_write_new_lists_before_pointing_at_them_and_delete_old_ones_last() {
        let mut installed = BTreeMap::new();
        let mut next = 1;
        let want = BTreeMap::from([(fe(80), addrs(&["10.244.1.5:8080"])), (fe(81), vec![])]);
        let ops = plan(&mut installed, &want, &mut next);
        assert_eq!(
            ops,
            vec![
                Op::PutBackends(1, addrs(&["10.244.1.5:8080"])),
                Op::PutFrontend(fe(80), 1, 1),
                Op::PutFrontend(fe(81), 2, 0),
            ]
        );
        assert!(plan(&mut installed, &want, &mut next).is_empty(), "nothing changed, nothing written");
        // A backend added to :80, :81 removed.
        let want = BTreeMap::from([(fe(80), addrs(&["10.244.1.5:8080", "10.244.2.5:8080"]))]);
        let ops = plan(&mut installed, &want, &mut next);
        assert_eq!(
            ops,
            vec![
                Op::PutBackends(3, addrs(&["10.244.1.5:8080", "10.244.2.5:8080"])),
                Op::PutFrontend(fe(80), 3, 2),
                Op::DelFrontend(fe(81)),
                Op::DelBackends(1, 1),
            ]
        );
        assert_eq!(installed[&fe(80)].id, 3);
        let ops = plan(&mut installed, &BTreeMap::new(), &mut next);
        assert_eq!(ops, vec![Op::DelFrontend(fe(80)), Op::DelBackends(3, 2)]);
        assert!(installed.is_empty());
    }

    #[test]
    fn service_cidrs_parse_and_bad_ones_say_why() {
        assert_eq!(parse_cidr("10.96.0.0/12"), Ok(("10.96.0.0".parse().unwrap(), 12)));
        assert_eq!(parse_cidr("fd00:96::/108"), Ok(("fd00:96::".parse().unwrap(), 108)));
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok(("0.0.0.0".parse().unwrap(), 0)));
        for (bad, why) in [
            ("10.96.0.0", "ADDRESS/PREFIX"),
            ("10.96.0.1/12", "host bits"),
            ("10.96.0.0/33", "out of range"),
            ("ten/8", "not an IP"),
            ("fd00::1/64", "host bits"),
        ] {
            let e = parse_cidr(bad).unwrap_err();
            assert!(e.contains(why) && e.contains("--service-cidr"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_documents_are_rejected_with_their_field() {
        for (doc, field) in [
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n",
                "clusterIPs[0]",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 70000}]}\n",
                "spec.ports[0].port",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 80, protocol: QUIC}]}\n",
                "protocol",
            ),
            (
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\n",
                "kubernetes.io/service-name",
            ),
            (
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, labels: {kubernetes.io/service-name: a}}\naddressType: IPv4\nendpoints: [{addresses: [\"fd00::1\"]}]\n",
                "endpoints[0].addresses[0]",
            ),
        ] {
            let (objs, errors) = parse(doc);
            assert!(objs.is_empty(), "{doc}");
            assert!(errors.len() == 1 && errors[0].contains(field), "{doc}: {errors:?}");
        }
        // SCTP ports are left to kube-proxy, not rejected.
        let (objs, errors) = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 80, protocol: SCTP}]}\n",
        );
        assert!(errors.is_empty());
        assert!(matches!(&objs[0], ServiceObject::Service(s) if s.ports.is_empty()));
    }
}
