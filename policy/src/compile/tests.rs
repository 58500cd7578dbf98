//! Shape of the compiled tables: what the datapath will hold for the common
//! selectors, and how small a diff one change produces.

use super::*;
use crate::labels::Selector;
use crate::model::Direction;
use crate::model::{IpBlock, NamespaceSelection, NetworkPolicy, Peer, PortMatch, PortRule, Protocol, Rule};
use crate::testutil::{cluster, model_pod, np, ns, pod};

fn policy(nsname: &str, name: &str, ingress: Vec<Rule>) -> NetworkPolicy {
    NetworkPolicy {
        key: ObjectKey::new(nsname, name),
        pod_selector: Selector::everything(),
        ingress: Some(ingress),
        egress: None,
    }
}

fn entries_of(t: &Tables, ep: EndpointId) -> Vec<&PolicyKey> {
    t.policy.keys().filter(|k| k.endpoint == ep).collect()
}

#[test]
fn namespace_wide_peers_compile_to_one_entry() {
    let mut c = Compiler::new(Scope::Cluster);
    for i in 0..50u8 {
        c.apply(Object::Pod(model_pod(
            "a",
            &format!("p{i}"),
            &[("i", &i.to_string())],
            &[&format!("10.0.0.{i}")],
            "n1",
        )));
    }
    c.apply(Object::Pod(model_pod("b", "x", &[], &["10.0.1.1"], "n1")));
    let own = Rule {
        peers: Some(vec![Peer::Pods { namespaces: NamespaceSelection::Own, pods: Selector::everything() }]),
        ports: None,
    };
    c.apply(Object::NetworkPolicy(policy("a", "own", vec![own])));
    let t = c.tables();
    let ep = t.endpoint_of(&ObjectKey::new("a", "p7")).unwrap();
    let keys = entries_of(t, ep);
    assert_eq!(keys.len(), 1, "one namespace identity, not 50 pod identities: {keys:?}");
    assert!(matches!(t.identities.get(&keys[0].peer), Some(IdentityInfo::Namespace(n)) if n == "a"));
    assert!(t.decide(ep, Direction::Ingress, "10.0.0.9".parse().unwrap(), Protocol::Tcp, 80).allowed());
    assert!(!t.decide(ep, Direction::Ingress, "10.0.1.1".parse().unwrap(), Protocol::Tcp, 80).allowed());

    let all = Rule {
        peers: Some(vec![Peer::Pods {
            namespaces: NamespaceSelection::Matching(Selector::everything()),
            pods: Selector::everything(),
        }]),
        ports: None,
    };
    c.apply(Object::NetworkPolicy(policy("a", "own", vec![all])));
    let t = c.tables();
    let keys = entries_of(t, ep);
    assert_eq!(keys.iter().map(|k| k.peer).collect::<Vec<_>>(), vec![ALL_PODS]);
    assert!(t.decide(ep, Direction::Ingress, "10.0.1.1".parse().unwrap(), Protocol::Tcp, 80).allowed());
    assert!(
        !t.decide(ep, Direction::Ingress, "203.0.113.1".parse().unwrap(), Protocol::Tcp, 80).allowed(),
        "all pods is not the world"
    );
}

#[test]
fn ip_block_except_becomes_more_specific_prefixes() {
    let c = cluster(&[
        ns("default", ""),
        pod("default", "db", "role: db", "10.1.0.1", "n1"),
        np(
            "default",
            "access-demo3",
            "  policyTypes: [Egress]\n  podSelector: {matchLabels: {role: db}}\n  egress:\n  - to:\n    - ipBlock: {cidr: 172.16.0.0/16, except: [172.16.0.40/32]}",
        ),
    ]
    .concat());
    let comp = Compiler::from_cluster(Scope::Node("n1".into()), &c);
    let t = comp.tables();
    let ep = t.endpoint_of(&ObjectKey::new("default", "db")).unwrap();
    let keys = entries_of(t, ep);
    assert_eq!(keys.len(), 1, "only the /16's identity is allowed: {keys:?}");
    let d = |ip: &str| t.decide(ep, Direction::Egress, ip.parse().unwrap(), Protocol::Tcp, 443);
    assert!(d("172.16.0.39").allowed());
    assert!(!d("172.16.0.40").allowed());
    assert!(!d("172.17.0.1").allowed());
    assert_eq!(d("10.1.0.1"), Decision::SelfTraffic);
}

#[test]
fn port_ranges_compile_to_masked_entries() {
    let mut c = Compiler::new(Scope::Cluster);
    c.apply(Object::Pod(model_pod("a", "p", &[], &["10.0.0.1"], "n1")));
    let rule = Rule {
        peers: None,
        ports: Some(vec![PortRule { protocol: Protocol::Tcp, port: PortMatch::Range { start: 32000, end: 32767 } }]),
    };
    c.apply(Object::NetworkPolicy(policy("a", "r", vec![rule])));
    let t = c.tables();
    let ep = t.endpoint_of(&ObjectKey::new("a", "p")).unwrap();
    let ports: Vec<PortPrefix> = entries_of(t, ep).iter().map(|k| k.port).collect();
    assert_eq!(ports, range_to_prefixes(32000, 32767));
    for (port, ok) in [(31999, false), (32000, true), (32500, true), (32767, true), (32768, false)] {
        let d = t.decide(ep, Direction::Ingress, "203.0.113.1".parse().unwrap(), Protocol::Tcp, port);
        assert_eq!(d.allowed(), ok, "port {port}");
    }
    assert!(!t.decide(ep, Direction::Ingress, "203.0.113.1".parse().unwrap(), Protocol::Udp, 32000).allowed());
}

#[test]
fn unknown_endpoint_fails_closed() {
    let t = Tables::default();
    assert_eq!(
        t.decide(7, Direction::Egress, "10.0.0.1".parse().unwrap(), Protocol::Tcp, 80),
        Decision::UnknownEndpoint
    );
    assert!(!Decision::UnknownEndpoint.allowed());
}

#[test]
fn one_label_change_gives_a_small_diff() {
    let mut c = Compiler::new(Scope::Cluster);
    for i in 0..200u16 {
        let (hi, lo) = ((i / 250) as u8, (i % 250) as u8);
        c.apply(Object::Pod(model_pod(
            "a",
            &format!("p{i}"),
            &[("app", if i % 2 == 0 { "web" } else { "db" })],
            &[&format!("10.0.{hi}.{lo}")],
            "n1",
        )));
    }
    let rule = Rule {
        peers: Some(vec![Peer::Pods {
            namespaces: NamespaceSelection::Own,
            pods: Selector::from_labels([("app", "web")]),
        }]),
        ports: Some(vec![PortRule { protocol: Protocol::Tcp, port: PortMatch::Range { start: 5432, end: 5432 } }]),
    };
    let mut np = policy("a", "db", vec![rule]);
    np.pod_selector = Selector::from_labels([("app", "db")]);
    c.apply(Object::NetworkPolicy(np));
    // p1 (a db) becomes a web pod: it leaves the policy's selection and joins
    // an existing identity; nobody else's entries change.
    let diff = c.apply(Object::Pod(model_pod("a", "p1", &[("app", "web")], &["10.0.0.1"], "n1")));
    assert!(diff.len() <= 4, "{diff:#?}");
    assert_eq!(diff.policy.len(), 1, "p1 loses its one entry");
    assert_eq!(diff.ipcache.len(), 1, "p1's address changes identity");
    // A no-op apply yields an empty diff.
    let diff = c.apply(Object::Pod(model_pod("a", "p1", &[("app", "web")], &["10.0.0.1"], "n1")));
    assert!(diff.is_empty(), "{diff:?}");
}

#[test]
fn deleting_everything_empties_the_tables() {
    let text = [
        ns("a", "team: x"),
        pod("a", "w", "app: w", "10.0.0.1", "n1"),
        np("a", "p", "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/24]}}, {namespaceSelector: {matchLabels: {team: x}}}]\n    ports: [{port: http}]"),
    ]
    .concat();
    let parsed = crate::manifest::parse_str("t.yaml", &text);
    let mut c = Compiler::new(Scope::Cluster);
    let mut replay = Tables::default();
    for (_, o) in &parsed.objects {
        replay.apply(&c.apply(o.clone()));
    }
    assert!(!c.tables().policy.is_empty());
    for (_, o) in parsed.objects.iter().rev() {
        replay.apply(&c.delete(&o.reference()));
    }
    assert_eq!(c.tables(), &Tables::default());
    assert_eq!(replay, Tables::default());
}

#[test]
fn egress_named_port_with_ip_block_resolves_per_address() {
    let text = [
        pod("a", "src", "app: src", "10.0.0.1", "n1"),
        pod("a", "in", "app: dst", "10.0.0.2", "n1"),
        pod("a", "out", "app: dst", "10.0.1.2", "n1"),
        np("a", "p", "  podSelector: {matchLabels: {app: src}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/24}}]\n    ports: [{port: http}]"),
    ]
    .concat();
    let c = Compiler::from_cluster(Scope::Cluster, &cluster(&text));
    let t = c.tables();
    let ep = t.endpoint_of(&ObjectKey::new("a", "src")).unwrap();
    let d = |ip: &str, port| t.decide(ep, Direction::Egress, ip.parse().unwrap(), Protocol::Tcp, port).allowed();
    assert!(d("10.0.0.2", 8080));
    assert!(!d("10.0.1.2", 8080), "same label identity, address outside the block");
    assert!(!d("10.0.0.9", 8080), "not a pod: a name never matches");
}

#[test]
fn ip_block_contains_honours_except() {
    let b = IpBlock { cidr: "10.0.0.0/8".parse().unwrap(), except: vec!["10.1.0.0/16".parse().unwrap()] };
    assert!(b.contains("10.2.0.1".parse().unwrap()));
    assert!(!b.contains("10.1.0.1".parse().unwrap()));
}

#[test]
fn reserved_numbers_are_never_reused() {
    let mut c = Compiler::new(Scope::Cluster);
    c.reserve_numbers(10_000, 500, 70);
    c.apply(Object::Pod(model_pod("a", "p", &[], &["10.0.0.1"], "n1")));
    let rule = Rule { peers: None, ports: None };
    c.apply(Object::NetworkPolicy(policy("a", "r", vec![rule])));
    let t = c.tables();
    assert!(t.identities.keys().all(|id| *id > 10_000));
    assert!(t.endpoints.keys().all(|ep| *ep > 500));
    assert!(t.rules.keys().all(|r| *r > 70));
}

#[test]
fn namespace_audit_label_flags_only_that_namespaces_endpoints() {
    let text = [
        ns("a", "team: x"),
        ns("b", "team: y"),
        pod("a", "w", "app: w", "10.0.0.1", "n1"),
        pod("b", "v", "app: v", "10.0.0.2", "n1"),
        np("a", "p", "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: x}}}]"),
    ]
    .join("---\n");
    let mut c = Compiler::from_cluster(Scope::Cluster, &cluster(&text));
    let (w, v) = (
        c.tables().endpoint_of(&ObjectKey::new("a", "w")).unwrap(),
        c.tables().endpoint_of(&ObjectKey::new("b", "v")).unwrap(),
    );
    assert!(!c.tables().endpoints[&w].audit && !c.tables().endpoints[&v].audit);
    let relabel = |labels: &str| crate::parse_str("ns.yaml", &ns("a", labels)).objects.remove(0).1;
    let diff = c.apply(relabel("team: x, ztunnel.io/policy-audit: \"true\""));
    assert_eq!(diff.endpoints.len(), 1, "only a/w's entry changes: {diff:#?}");
    assert!(diff.policy.is_empty() && diff.ipcache.is_empty(), "audit is not a policy change: {diff:#?}");
    assert!(c.tables().endpoints[&w].audit && !c.tables().endpoints[&v].audit);
    // The incremental tables equal a fresh compile of the same cluster.
    let fresh = Compiler::from_cluster(Scope::Cluster, c.cluster());
    assert_eq!(fresh.tables().endpoints[&w], c.tables().endpoints[&w]);
    // Only "true" audits; any other value (or none) enforces again.
    c.apply(relabel("team: x, ztunnel.io/policy-audit: \"True\""));
    assert!(!c.tables().endpoints[&w].audit);
}
