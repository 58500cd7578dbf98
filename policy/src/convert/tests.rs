//! Defaulting and validation, as the API server does them.

use super::*;
use crate::manifest::{Object, parse_str};
use crate::model::Direction;

fn policy(spec: &str) -> Result<NetworkPolicy, String> {
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n{spec}\n"
    );
    let parsed = parse_str("p.yaml", &yaml);
    if let Some(e) = parsed.errors.first() {
        return Err(e.to_string());
    }
    match parsed.objects.into_iter().next() {
        Some((_, Object::NetworkPolicy(np))) => Ok(np),
        other => Err(format!("unexpected {other:?}")),
    }
}

fn field_error(spec: &str) -> String {
    match policy(spec) {
        Ok(np) => panic!("accepted: {np:?}"),
        Err(e) => e,
    }
}

#[test]
fn policy_types_default() {
    let np = policy("  podSelector: {}").unwrap();
    assert_eq!((np.ingress.as_deref().map(<[_]>::len), np.egress.is_none()), (Some(0), true));
    let np = policy("  podSelector: {}\n  egress: [{}]").unwrap();
    assert!(np.ingress.is_some() && np.egress.is_some());
    let np = policy("  podSelector: {}\n  egress: []").unwrap();
    assert!(np.egress.is_none(), "empty egress does not add Egress");
    let np = policy("  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]").unwrap();
    assert!(np.ingress.is_none() && np.rules(Direction::Egress) == Some(&[]));
}

#[test]
fn missing_pod_selector_is_empty_and_namespace_defaults() {
    let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {}\n";
    let parsed = parse_str("p.yaml", yaml);
    match &parsed.objects[0].1 {
        Object::NetworkPolicy(np) => {
            assert!(np.pod_selector.is_empty());
            assert_eq!(&*np.key.namespace, "default");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn port_defaults_and_forms() {
    let np = policy("  podSelector: {}\n  ingress:\n  - ports: [{port: 80}, {protocol: UDP}, {port: web}, {port: 1000, endPort: 2000}]").unwrap();
    let ports = np.ingress.unwrap()[0].ports.clone().unwrap();
    assert_eq!(ports[0], PortRule { protocol: Protocol::Tcp, port: PortMatch::Range { start: 80, end: 80 } });
    assert_eq!(ports[1], PortRule { protocol: Protocol::Udp, port: PortMatch::Any });
    assert_eq!(ports[2], PortRule { protocol: Protocol::Tcp, port: PortMatch::Named("web".into()) });
    assert_eq!(ports[3].port, PortMatch::Range { start: 1000, end: 2000 });
}

#[test]
fn empty_lists_mean_everything() {
    let np = policy("  podSelector: {}\n  ingress:\n  - from: []\n    ports: []").unwrap();
    let r = &np.ingress.unwrap()[0];
    assert!(r.peers.is_none() && r.ports.is_none());
}

#[test]
fn invalid_ports_are_rejected_with_field() {
    let e = field_error("  podSelector: {}\n  ingress:\n  - ports: [{protocol: ICMP}]");
    assert!(e.contains("spec.ingress[0].ports[0].protocol") && e.contains("unsupported protocol"), "{e}");
    let e = field_error("  podSelector: {}\n  ingress:\n  - ports: [{protocol: tcp}]");
    assert!(e.contains("protocol"), "protocols are case-sensitive: {e}");
    let e = field_error("  podSelector: {}\n  ingress:\n  - ports: [{port: 0}]");
    assert!(e.contains("spec.ingress[0].ports[0].port"), "{e}");
    let e = field_error("  podSelector: {}\n  ingress:\n  - ports: [{port: 70000}]");
    assert!(e.contains("port"), "{e}");
    let e = field_error("  podSelector: {}\n  egress:\n  - ports: [{endPort: 90}]");
    assert!(e.contains("spec.egress[0].ports[0].endPort") && e.contains("`port` is not specified"), "{e}");
    let e = field_error("  podSelector: {}\n  ingress:\n  - ports: [{port: 90, endPort: 80}]");
    assert!(e.contains("endPort") && e.contains("greater than or equal"), "{e}");
    let e = field_error("  podSelector: {}\n  ingress:\n  - ports: [{port: http, endPort: 80}]");
    assert!(e.contains("named port"), "{e}");
    let e = field_error("  podSelector: {}\n  ingress:\n  - ports: [{port: averyveryverylongname}]");
    assert!(e.contains("1 to 15 characters"), "{e}");
    let e = field_error("  podSelector: {}\n  ingress:\n  - ports: [{port: \"8080\"}]");
    assert!(e.contains("at least one letter"), "{e}");
}

#[test]
fn invalid_peers_are_rejected_with_field() {
    let e = field_error("  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]");
    assert!(e.contains("spec.ingress[0].from[0]") && e.contains("both ipBlock"), "{e}");
    let e = field_error("  podSelector: {}\n  ingress:\n  - from: [{}]");
    assert!(e.contains("must specify a peer"), "{e}");
    let e = field_error("  podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/24]}}]");
    assert!(e.contains("spec.egress[0].to[0].ipBlock.except[0]") && e.contains("strict subset"), "{e}");
    let e = field_error("  podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]");
    assert!(e.contains("strict subset"), "{e}");
    let e = field_error("  podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: nonsense}}]");
    assert!(e.contains("ipBlock.cidr") && e.contains("not a valid CIDR"), "{e}");
    let e = field_error(
        "  podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: \"10.0.0.0/8\", except: [\"fd00::/64\"]}}]",
    );
    assert!(e.contains("strict subset"), "mixed families: {e}");
    let e = field_error("  podSelector: {}\n  policyTypes: [Ingress, Sideways]");
    assert!(e.contains("spec.policyTypes[1]"), "{e}");
}

#[test]
fn sloppy_cidrs_are_accepted_and_truncated() {
    let np = policy("  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.1/24}}]").unwrap();
    match &np.ingress.unwrap()[0].peers.as_ref().unwrap()[0] {
        Peer::IpBlock(b) => assert_eq!(b.cidr.to_string(), "10.0.0.0/24"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pod_conversion() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: n, labels: {app: x}}
spec:
  nodeName: node1
  serviceAccountName: sa1
  initContainers:
  - {name: side, restartPolicy: Always, ports: [{name: metrics, containerPort: 9090}]}
  - {name: init, ports: [{name: ignored, containerPort: 1}]}
  containers:
  - name: c
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 53, protocol: UDP}
    - {containerPort: 9}
status:
  podIP: 10.1.0.5
  podIPs: [{ip: 10.1.0.5}, {ip: "fd00::5"}]
"#;
    let parsed = parse_str("p.yaml", yaml);
    let Object::Pod(p) = &parsed.objects[0].1 else { panic!("{parsed:?}") };
    assert_eq!(p.ips.len(), 2);
    assert_eq!(p.node.as_deref(), Some("node1"));
    assert_eq!(p.service_account, "sa1");
    assert_eq!(p.resolve_port("http", Protocol::Tcp), Some(8080));
    assert_eq!(p.resolve_port("dns", Protocol::Udp), Some(53));
    assert_eq!(p.resolve_port("dns", Protocol::Tcp), None);
    assert_eq!(p.resolve_port("metrics", Protocol::Tcp), Some(9090), "sidecar ports count");
    assert_eq!(p.resolve_port("ignored", Protocol::Tcp), None, "plain init containers do not");

    let done = yaml.replace("status:\n", "status:\n  phase: Succeeded\n");
    let parsed = parse_str("p.yaml", &done);
    let Object::Pod(p) = &parsed.objects[0].1 else { panic!() };
    assert!(p.ips.is_empty(), "terminated pods released their addresses");

    let sa_default = parse_str("p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: q}\nspec: {containers: []}\n");
    let Object::Pod(p) = &sa_default.objects[0].1 else { panic!() };
    assert_eq!((p.service_account.as_str(), &*p.key.namespace), ("default", "default"));

    let bad = yaml.replace("10.1.0.5}, {ip", "10.1.0.500}, {ip");
    let parsed = parse_str("p.yaml", &bad);
    assert!(parsed.errors[0].to_string().contains("status.podIPs[0].ip"), "{:?}", parsed.errors);
    let dup = yaml.replace("name: dns", "name: http");
    assert!(parse_str("p.yaml", &dup).errors[0].to_string().contains("duplicate port name"));
}

#[test]
fn namespace_gets_its_name_label() {
    let parsed = parse_str("n.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: kube-system}\n");
    let Object::Namespace(n) = &parsed.objects[0].1 else { panic!() };
    assert_eq!(n.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str), Some("kube-system"));
}

#[test]
fn missing_name_is_rejected() {
    let parsed = parse_str("n.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {}\nspec: {}\n");
    assert!(parsed.errors[0].to_string().contains("metadata.name"), "{:?}", parsed.errors);
}

#[test]
fn port_name_rules() {
    assert!(validate_port_name("http").is_ok());
    assert!(validate_port_name("h2c-alt").is_ok());
    assert!(validate_port_name("-http").is_err());
    assert!(validate_port_name("ht--tp").is_err());
    assert!(validate_port_name("HTTP").is_err());
    assert!(validate_port_name("1234").is_err());
    assert!(validate_port_name("abcdefghijklmnop").is_err());
}
