//! Small constructors for tests (compiled only for tests).

use std::net::IpAddr;

use crate::cluster::Cluster;
use crate::eval::{Endpoint, Verdict, evaluate};
use crate::manifest::parse_str;
use crate::model::{NamedPort, ObjectKey, Pod, Protocol};

/// Parses YAML into a cluster, failing the test on any error.
pub(crate) fn cluster(yaml: &str) -> Cluster {
    let parsed = parse_str("test.yaml", yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    Cluster::from_objects(parsed.objects.into_iter().map(|(_, o)| o))
}

/// A pod manifest.
pub(crate) fn pod(ns: &str, name: &str, labels: &str, ip: &str, node: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}, \
         {{name: dns, containerPort: 53, protocol: UDP}}]}}]}}\nstatus: {{podIP: \"{ip}\"}}\n"
    )
}

/// A namespace manifest.
pub(crate) fn ns(name: &str, labels: &str) -> String {
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n")
}

/// A NetworkPolicy manifest with the given spec (YAML flow or block, indented
/// by two spaces).
pub(crate) fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

/// Parses `80/TCP`.
pub(crate) fn port(s: &str) -> (u16, Protocol) {
    let (p, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    (p.parse().unwrap_or(0), proto.parse().unwrap_or(Protocol::Tcp))
}

/// `ns/name` or an IP address.
pub(crate) fn ep(s: &str) -> Endpoint {
    match s.parse::<IpAddr>() {
        Ok(ip) => Endpoint::Ip(ip),
        Err(_) => Endpoint::Pod(s.parse::<ObjectKey>().unwrap_or_else(|e| panic!("{e}"))),
    }
}

/// Evaluates `from` → `to` on `port` (`80/TCP`).
pub(crate) fn verdict(c: &Cluster, from: &str, to: &str, p: &str) -> Verdict {
    let (port, proto) = port(p);
    evaluate(c, &ep(from), &ep(to), port, proto).unwrap_or_else(|e| panic!("{e}"))
}

/// Whether `from` may connect to `to` on `port`.
pub(crate) fn allowed(c: &Cluster, from: &str, to: &str, p: &str) -> bool {
    verdict(c, from, to, p).allowed()
}

/// A model pod built directly.
#[allow(dead_code)]
pub(crate) fn model_pod(ns: &str, name: &str, labels: &[(&str, &str)], ips: &[&str], node: &str) -> Pod {
    Pod {
        key: ObjectKey::new(ns, name),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ips: ips.iter().map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))).collect(),
        node: Some(node.to_string()),
        service_account: "default".into(),
        named_ports: vec![NamedPort { name: "http".into(), protocol: Protocol::Tcp, port: 8080 }],
        host_network: false,
    }
}
