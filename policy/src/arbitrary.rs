//! Random cluster objects and change sequences for property tests (feature
//! `arbitrary`): small pools of names, labels, addresses and CIDRs, so that
//! selectors match, addresses collide and ipBlocks contain pods often. Used
//! by the compiler's property tests and by the kernel datapath's.

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use proptest::sample::select;

use crate::cluster::ObjectRef;
use crate::labels::{Labels, Requirement, Selector};
use crate::manifest::Object;
use crate::model::{
    IpBlock, NamedPort, Namespace, NamespaceSelection, NetworkPolicy, Node, ObjectKey, Peer, Pod, PortMatch, PortRule,
    Protocol, Rule,
};

pub const NAMESPACES: [&str; 3] = ["a", "b", "c"];
pub const NODES: [&str; 2] = ["n1", "n2"];

pub fn labels() -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(select(vec!["app", "env", "tier"]), select(vec!["x", "y", "z"]), 0..3)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

pub fn requirement() -> impl Strategy<Value = Requirement> {
    let key = select(vec!["app", "env", "tier", "team"]).prop_map(String::from);
    let values = proptest::collection::btree_set(select(vec!["x", "y", "z"]).prop_map(String::from), 1..3);
    prop_oneof![
        (key.clone(), values.clone()).prop_map(|(key, values)| Requirement::In { key, values }),
        (key.clone(), values).prop_map(|(key, values)| Requirement::NotIn { key, values }),
        key.clone().prop_map(|key| Requirement::Exists { key }),
        key.prop_map(|key| Requirement::DoesNotExist { key }),
    ]
}

pub fn selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        2 => Just(Selector::everything()),
        3 => (proptest::collection::btree_map(select(vec!["app", "env", "team"]), select(vec!["x", "y"]), 0..2),
              proptest::collection::vec(requirement(), 0..2))
            .prop_map(|(m, match_expressions)| Selector {
                match_labels: m.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                match_expressions,
            }),
    ]
}

pub fn pod_ips() -> impl Strategy<Value = Vec<IpAddr>> {
    // A small pool, so that duplicate addresses and ipBlocks that contain
    // pods happen often.
    (1u8..10, proptest::option::of(1u8..10), any::<bool>()).prop_map(|(v4, v6, none)| {
        if none {
            return vec![];
        }
        let mut ips = vec![IpAddr::from([10, 0, 0, v4])];
        if let Some(x) = v6 {
            ips.push(format!("fd00::{x}").parse().unwrap());
        }
        ips
    })
}

pub fn named_ports() -> impl Strategy<Value = Vec<NamedPort>> {
    let np = |name: &str, protocol, port| NamedPort { name: name.into(), protocol, port };
    (
        select(vec![
            None,
            Some(np("http", Protocol::Tcp, 8080)),
            Some(np("http", Protocol::Tcp, 9090)),
            Some(np("http", Protocol::Udp, 80)),
        ]),
        select(vec![None, Some(np("dns", Protocol::Udp, 53)), Some(np("dns", Protocol::Tcp, 53))]),
        select(vec![None, Some(np("metrics", Protocol::Tcp, 1005))]),
    )
        .prop_map(|(a, b, c)| {
            let mut v: Vec<NamedPort> = [a, b, c].into_iter().flatten().collect();
            v.sort();
            v
        })
}

pub fn pod() -> impl Strategy<Value = Pod> {
    (
        0usize..8,
        select(NAMESPACES.to_vec()),
        labels(),
        pod_ips(),
        select(vec![Some("n1"), Some("n2"), None]),
        named_ports(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(i, ns, labels, ips, node, named_ports, host_network)| Pod {
            key: ObjectKey::new(ns, format!("p{i}")),
            labels,
            ips: if host_network && node.is_some() {
                vec![IpAddr::from([192, 168, 0, if node == Some("n1") { 1 } else { 2 }])]
            } else {
                ips
            },
            node: node.map(String::from),
            service_account: "default".into(),
            named_ports,
            host_network,
        })
}

pub fn cidr_pool() -> Vec<&'static str> {
    vec![
        "0.0.0.0/0",
        "10.0.0.0/8",
        "10.0.0.0/24",
        "10.0.0.0/29",
        "10.0.0.4/30",
        "10.0.0.5/32",
        "10.0.0.8/32",
        "172.16.0.0/16",
        "172.16.0.40/32",
        "192.168.0.0/16",
        "192.168.0.1/32",
        "::/0",
        "fd00::/64",
        "fd00::/125",
        "fd00::3/128",
    ]
}

pub fn ip_block() -> impl Strategy<Value = IpBlock> {
    (select(cidr_pool()), proptest::collection::vec(select(cidr_pool()), 0..3)).prop_map(|(c, ex)| {
        let cidr: IpNet = c.parse().unwrap();
        let mut except: Vec<IpNet> = ex
            .into_iter()
            .map(|e| e.parse::<IpNet>().unwrap())
            .filter(|e| cidr.contains(&e.network()) && e.prefix_len() > cidr.prefix_len())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        except.sort();
        IpBlock { cidr, except }
    })
}

pub fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        (selector(), any::<bool>()).prop_map(|(pods, _)| Peer::Pods { namespaces: NamespaceSelection::Own, pods }),
        (selector(), selector())
            .prop_map(|(ns, pods)| Peer::Pods { namespaces: NamespaceSelection::Matching(ns), pods }),
        ip_block().prop_map(Peer::IpBlock),
    ]
}

pub fn port_rule() -> impl Strategy<Value = PortRule> {
    let proto = select(vec![Protocol::Tcp, Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
    let port = prop_oneof![
        Just(PortMatch::Any),
        (select(vec![53u16, 80, 1000, 8080]), select(vec![0u16, 0, 10, 1100]))
            .prop_map(|(s, w)| PortMatch::Range { start: s, end: s.saturating_add(w) }),
        select(vec!["http", "dns", "metrics", "nosuch"]).prop_map(|n| PortMatch::Named(n.into())),
    ];
    (proto, port).prop_map(|(protocol, port)| PortRule { protocol, port })
}

pub fn rule() -> impl Strategy<Value = Rule> {
    (
        proptest::option::weighted(0.8, proptest::collection::vec(peer(), 1..3)),
        proptest::option::weighted(0.7, proptest::collection::vec(port_rule(), 1..3)),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

pub fn policy() -> impl Strategy<Value = NetworkPolicy> {
    (
        0usize..5,
        select(NAMESPACES.to_vec()),
        selector(),
        proptest::option::weighted(0.8, proptest::collection::vec(rule(), 0..3)),
        proptest::option::weighted(0.5, proptest::collection::vec(rule(), 0..3)),
    )
        .prop_map(|(i, ns, pod_selector, ingress, egress)| NetworkPolicy {
            key: ObjectKey::new(ns, format!("np{i}")),
            pod_selector,
            ingress,
            egress,
        })
}

pub fn namespace() -> impl Strategy<Value = Namespace> {
    (
        select(NAMESPACES.to_vec()),
        proptest::collection::btree_map(select(vec!["team", "env"]), select(vec!["x", "y"]), 0..3),
        select(vec![None, None, Some("true"), Some("false")]),
    )
        .prop_map(|(name, m, audit)| {
            let mut labels: Labels = m.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            if let Some(a) = audit {
                // Audit mode flips only endpoint flags: the incremental and
                // from-scratch tables must still agree.
                labels.insert(crate::cluster::POLICY_AUDIT_LABEL.to_string(), a.to_string());
            }
            labels.extend(Namespace::default_labels(name));
            Namespace { name: name.into(), labels }
        })
}

pub fn node() -> impl Strategy<Value = Node> {
    (select(NODES.to_vec()), any::<bool>(), any::<bool>()).prop_map(|(name, v6, clash)| {
        let n: u8 = if name == "n1" { 1 } else { 2 };
        let mut addresses = vec![IpAddr::from([192, 168, 0, n])];
        if v6 {
            addresses.push(format!("fd00:1::{n}").parse().unwrap());
        }
        if clash {
            // A node claiming a pod-range address: pods take precedence.
            addresses.push(IpAddr::from([10, 0, 0, n]));
        }
        Node { name: name.into(), addresses }
    })
}

#[derive(Debug, Clone)]
pub enum Op {
    Apply(Object),
    Delete(ObjectRef),
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => pod().prop_map(|p| Op::Apply(Object::Pod(p))),
        4 => policy().prop_map(|p| Op::Apply(Object::NetworkPolicy(p))),
        2 => namespace().prop_map(|n| Op::Apply(Object::Namespace(n))),
        1 => node().prop_map(|n| Op::Apply(Object::Node(n))),
        2 => (select(NAMESPACES.to_vec()), 0usize..8).prop_map(|(ns, i)| Op::Delete(ObjectRef::Pod(ObjectKey::new(ns, format!("p{i}"))))),
        1 => (select(NAMESPACES.to_vec()), 0usize..5).prop_map(|(ns, i)| Op::Delete(ObjectRef::NetworkPolicy(ObjectKey::new(ns, format!("np{i}"))))),
        1 => select(NAMESPACES.to_vec()).prop_map(|n| Op::Delete(ObjectRef::Namespace(n.into()))),
        1 => select(NODES.to_vec()).prop_map(|n| Op::Delete(ObjectRef::Node(n.into()))),
    ]
}
