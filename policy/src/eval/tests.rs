//! Corner cases of the NetworkPolicy API, each written from the API
//! definition (the `networking.k8s.io/v1` reference and the upstream
//! NetworkPolicy documentation), not from this implementation.

use super::*;
use crate::testutil::{allowed, cluster, np, ns, pod, verdict};

/// Two namespaces, three pods each, two nodes.
fn base() -> String {
    [
        ns("a", "team: x"),
        ns("b", "team: y"),
        pod("a", "web", "app: web", "10.0.1.1", "n1"),
        pod("a", "db", "app: db", "10.0.1.2", "n2"),
        pod("a", "plain", "", "10.0.1.3", "n1"),
        pod("b", "web", "app: web", "10.0.2.1", "n1"),
        pod("b", "cli", "app: cli, env: dev", "10.0.2.2", "n2"),
        pod("b", "prod", "app: cli, env: prod", "10.0.2.3", "n2"),
    ]
    .concat()
}

fn with(policies: &[String]) -> crate::cluster::Cluster {
    cluster(&(base() + &policies.concat()))
}

#[test]
fn no_policy_allows_everything() {
    let c = with(&[]);
    assert!(allowed(&c, "a/web", "b/cli", "80/TCP"));
    assert!(allowed(&c, "203.0.113.9", "a/db", "5432/TCP"));
    assert_eq!(verdict(&c, "a/web", "a/db", "80/TCP").ingress, SideVerdict::Allowed(Allow::NotIsolated));
}

#[test]
fn empty_pod_selector_selects_every_pod_of_its_namespace_only() {
    let c = with(&[np("a", "deny", "  podSelector: {}")]);
    for dst in ["a/web", "a/db", "a/plain"] {
        assert!(!allowed(&c, "b/cli", dst, "80/TCP"), "{dst} is isolated");
    }
    assert!(allowed(&c, "a/web", "b/web", "80/TCP"), "pods of other namespaces are not selected");
    match verdict(&c, "b/cli", "a/db", "80/TCP").ingress {
        SideVerdict::Denied { isolated_by } => {
            assert_eq!(isolated_by, vec![ObjectKey::new("a", "deny")])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ingress_empty_list_denies_and_empty_rule_allows_all() {
    let deny = with(&[np("a", "deny", "  podSelector: {}\n  ingress: []")]);
    assert!(!allowed(&deny, "a/web", "a/db", "80/TCP"));
    let allow = with(&[
        np("a", "deny", "  podSelector: {}\n  ingress: []"),
        np("a", "all", "  podSelector: {}\n  ingress: [{}]"),
    ]);
    assert!(allowed(&allow, "a/web", "a/db", "80/TCP"));
    assert!(allowed(&allow, "198.51.100.7", "a/db", "1/UDP"), "an empty rule admits external sources and every port");
    assert!(allowed(&allow, "198.51.100.7", "a/db", "0/ICMP"));
}

#[test]
fn missing_from_means_every_source_including_external() {
    let c = with(&[np("a", "p", "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - ports: [{port: 5432}]")]);
    assert!(allowed(&c, "b/cli", "a/db", "5432/TCP"));
    assert!(allowed(&c, "203.0.113.1", "a/db", "5432/TCP"));
    assert!(!allowed(&c, "203.0.113.1", "a/db", "5433/TCP"));
}

#[test]
fn empty_pod_selector_peer_means_own_namespace_only() {
    let c = with(&[np("a", "p", "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}}]")]);
    assert!(allowed(&c, "a/web", "a/db", "80/TCP"));
    assert!(!allowed(&c, "b/web", "a/db", "80/TCP"));
    assert!(!allowed(&c, "203.0.113.1", "a/db", "80/TCP"));
}

#[test]
fn empty_namespace_selector_peer_means_all_pods_never_external() {
    let c = with(&[np("a", "p", "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}}]")]);
    assert!(allowed(&c, "a/web", "a/db", "80/TCP"));
    assert!(allowed(&c, "b/prod", "a/db", "80/TCP"));
    assert!(!allowed(&c, "203.0.113.1", "a/db", "80/TCP"));
    assert!(!allowed(&c, "10.0.1.200", "a/db", "80/TCP"), "an unused pod-range address is not a pod");
}

#[test]
fn selectors_in_one_peer_are_anded_peers_are_ored() {
    let anded = with(&[np(
        "a",
        "p",
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: y}}\n      podSelector: {matchLabels: {app: cli}}",
    )]);
    assert!(allowed(&anded, "b/cli", "a/db", "80/TCP"));
    assert!(!allowed(&anded, "b/web", "a/db", "80/TCP"), "namespace matches but pod does not");
    assert!(!allowed(&anded, "a/web", "a/db", "80/TCP"));

    let ored = with(&[np(
        "a",
        "p",
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: y}}\n    - podSelector: {matchLabels: {app: web}}",
    )]);
    assert!(allowed(&ored, "b/web", "a/db", "80/TCP"), "any pod of team=y");
    assert!(allowed(&ored, "a/web", "a/db", "80/TCP"), "app=web of the policy's namespace");
    assert!(!allowed(&ored, "a/plain", "a/db", "80/TCP"));
}

#[test]
fn each_rule_pairs_its_peers_with_its_own_ports_only() {
    let c = with(&[np(
        "a",
        "p",
        "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 80}]\n  - from: [{podSelector: {matchLabels: {}}}]\n    ports: [{port: 443}]\n  - from: [{namespaceSelector: {matchLabels: {team: y}}}]\n    ports: [{port: 8443}]",
    )]);
    assert!(allowed(&c, "a/web", "a/db", "80/TCP"));
    assert!(allowed(&c, "a/plain", "a/db", "443/TCP"));
    assert!(!allowed(&c, "a/plain", "a/db", "80/TCP"));
    assert!(allowed(&c, "b/web", "a/db", "8443/TCP"));
    assert!(!allowed(&c, "b/web", "a/db", "80/TCP"), "no cross product of rule 3's peers with rule 1's ports");
    assert!(!allowed(&c, "b/web", "a/db", "443/TCP"));
    match verdict(&c, "a/web", "a/db", "443/TCP").ingress {
        SideVerdict::Allowed(Allow::Rule { policy, rule }) => {
            assert_eq!((&*policy.name, rule), ("p", 1));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn match_expressions() {
    let c = with(&[np(
        "b",
        "p",
        "  podSelector: {matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}\n  ingress: []",
    )]);
    assert!(!allowed(&c, "a/web", "b/cli", "80/TCP"), "env=dev is selected");
    assert!(!allowed(&c, "a/web", "b/web", "80/TCP"), "NotIn selects pods without the key");
    assert!(allowed(&c, "a/web", "b/prod", "80/TCP"));

    let c = with(&[np(
        "b",
        "p",
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {}\n      podSelector:\n        matchExpressions:\n        - {key: app, operator: In, values: [web, cli]}\n        - {key: env, operator: DoesNotExist}",
    )]);
    assert!(allowed(&c, "a/web", "b/cli", "80/TCP"));
    assert!(!allowed(&c, "b/cli", "b/web", "80/TCP"), "b/cli has env");
    assert!(!allowed(&c, "a/db", "b/web", "80/TCP"));
    let c = with(&[np("b", "p", "  podSelector: {matchExpressions: [{key: env, operator: Exists}]}\n  ingress: []")]);
    assert!(!allowed(&c, "a/web", "b/cli", "80/TCP"));
    assert!(allowed(&c, "a/web", "b/web", "80/TCP"));
}

#[test]
fn ip_block_except_and_pod_addresses() {
    let c = with(&[np(
        "a",
        "egress",
        "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {cidr: 172.16.0.0/16, except: [172.16.0.40/32]}",
    )]);
    assert!(allowed(&c, "a/web", "172.16.0.10", "443/TCP"));
    assert!(!allowed(&c, "a/web", "172.16.0.40", "443/TCP"));
    assert!(!allowed(&c, "a/web", "172.17.0.1", "443/TCP"));
    assert!(!allowed(&c, "a/web", "a/db", "443/TCP"), "pods outside the block");

    // `except` carves the address out of that block only: another peer, or
    // another policy, may still allow it.
    let c = with(&[
        np(
            "a",
            "egress",
            "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {cidr: 172.16.0.0/16, except: [172.16.0.0/24]}\n    - ipBlock: {cidr: 172.16.0.40/32}",
        ),
        np(
            "a",
            "other",
            "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 172.16.0.41/32}}]",
        ),
    ]);
    assert!(allowed(&c, "a/web", "172.16.0.40", "1/TCP"));
    assert!(allowed(&c, "a/web", "172.16.0.41", "1/TCP"));
    assert!(!allowed(&c, "a/web", "172.16.0.42", "1/TCP"));
    assert!(allowed(&c, "a/web", "172.16.1.1", "1/TCP"));

    // ipBlock matches pod addresses too.
    let c = with(&[np(
        "a",
        "p",
        "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.3/32]}}]",
    )]);
    assert!(allowed(&c, "b/web", "a/db", "80/TCP"));
    assert!(!allowed(&c, "b/prod", "a/db", "80/TCP"));
    assert!(!allowed(&c, "a/web", "a/db", "80/TCP"));
}

#[test]
fn ipv6_blocks_and_pods() {
    let yaml = [
        ns("v6", ""),
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: ds, namespace: v6, labels: {app: ds}}\nspec: {nodeName: n1, containers: [{name: c}]}\nstatus: {podIP: 10.9.0.1, podIPs: [{ip: 10.9.0.1}, {ip: \"fd00::1\"}]}\n".to_string(),
        np("v6", "p", "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: \"2001:db8::/32\", except: [\"2001:db8:1::/48\"]}}]"),
    ]
    .concat();
    let c = cluster(&yaml);
    assert!(allowed(&c, "fd00::1", "2001:db8::5", "443/TCP"));
    assert!(!allowed(&c, "fd00::1", "2001:db8:1::5", "443/TCP"));
    assert!(!allowed(&c, "v6/ds", "192.0.2.1", "443/TCP"), "a v6 block never matches v4");
    assert!(allowed(&c, "v6/ds", "2001:db8::5", "443/TCP"), "the pod's v6 address is used for a v6 peer");
}

#[test]
fn named_ports_resolve_against_the_destination_pod() {
    let extra = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: alt, namespace: a, labels: {app: db}}\nspec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}\nstatus: {podIP: 10.0.1.9}\n";
    let ingress = cluster(
        &(base()
            + extra
            + &np("a", "p", "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - ports: [{port: http}]")),
    );
    assert!(allowed(&ingress, "b/cli", "a/db", "8080/TCP"));
    assert!(!allowed(&ingress, "b/cli", "a/db", "9090/TCP"));
    assert!(allowed(&ingress, "b/cli", "a/alt", "9090/TCP"), "the name resolves per destination pod");
    assert!(!allowed(&ingress, "b/cli", "a/alt", "8080/TCP"));

    let egress = cluster(
        &(base()
            + extra
            + &np(
                "b",
                "p",
                "  podSelector: {matchLabels: {app: cli}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: http}, {port: dns, protocol: UDP}]",
            )),
    );
    assert!(allowed(&egress, "b/cli", "a/db", "8080/TCP"));
    assert!(allowed(&egress, "b/cli", "a/alt", "9090/TCP"));
    assert!(!allowed(&egress, "b/cli", "a/alt", "8080/TCP"));
    assert!(!allowed(&egress, "b/cli", "203.0.113.1", "8080/TCP"), "a name never matches a non-pod destination");
    assert!(allowed(&egress, "b/cli", "a/db", "53/UDP"));
    assert!(!allowed(&egress, "b/cli", "a/db", "53/TCP"), "protocol must match the named port's");

    let wrong_proto = with(&[np(
        "a",
        "p",
        "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - ports: [{port: http, protocol: UDP}]",
    )]);
    assert!(!allowed(&wrong_proto, "b/cli", "a/db", "8080/TCP"));
    assert!(!allowed(&wrong_proto, "b/cli", "a/db", "8080/UDP"), "http is a TCP port");
    let unknown =
        with(&[np("a", "p", "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - ports: [{port: nosuch}]")]);
    assert!(!allowed(&unknown, "b/cli", "a/db", "8080/TCP"), "unresolvable names open nothing but still isolate");
}

#[test]
fn end_port_ranges_and_protocols() {
    let c = with(&[np(
        "a",
        "p",
        "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 32000, endPort: 32768}\n    - {protocol: UDP, port: 53}\n    - {protocol: SCTP}",
    )]);
    assert!(allowed(&c, "b/cli", "a/db", "32000/TCP"));
    assert!(allowed(&c, "b/cli", "a/db", "32768/TCP"), "endPort is inclusive");
    assert!(!allowed(&c, "b/cli", "a/db", "32769/TCP"));
    assert!(!allowed(&c, "b/cli", "a/db", "31999/TCP"));
    assert!(allowed(&c, "b/cli", "a/db", "53/UDP"));
    assert!(!allowed(&c, "b/cli", "a/db", "53/TCP"), "a UDP rule never opens TCP");
    assert!(allowed(&c, "b/cli", "a/db", "9/SCTP"), "protocol without port: every port");
    assert!(!allowed(&c, "b/cli", "a/db", "9/TCP"), "an SCTP rule never opens TCP");
    assert!(!allowed(&c, "b/cli", "a/db", "0/ICMP"), "port rules never match ICMP");
    assert!(!allowed(&c, "b/cli", "a/db", "32000/UDP"));
}

#[test]
fn isolation_needs_the_policy_type() {
    // policyTypes defaults to [Ingress] (+Egress only with egress rules).
    let c = with(&[np("a", "p", "  podSelector: {}\n  egress: []")]);
    assert!(!allowed(&c, "b/cli", "a/db", "80/TCP"), "ingress isolated by default");
    assert!(allowed(&c, "a/db", "b/cli", "80/TCP"), "empty egress list does not add Egress");
    let c = with(&[np("a", "p", "  podSelector: {}\n  egress: [{ports: [{port: 53, protocol: UDP}]}]")]);
    assert!(!allowed(&c, "a/db", "b/cli", "80/TCP"), "non-empty egress adds Egress");
    assert!(allowed(&c, "a/db", "b/cli", "53/UDP"));
    // Explicit types: rules of a type not listed are ignored.
    let c = with(&[np("a", "p", "  podSelector: {}\n  policyTypes: [Egress]\n  ingress: []\n  egress: [{}]")]);
    assert!(allowed(&c, "b/cli", "a/db", "80/TCP"), "ingress section without Ingress type does not isolate");
}

#[test]
fn connection_needs_egress_and_ingress() {
    let c = with(&[
        np(
            "b",
            "out",
            "  podSelector: {matchLabels: {app: cli}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {team: x}}}]",
        ),
        np(
            "a",
            "in",
            "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]",
        ),
    ]);
    let v = verdict(&c, "b/cli", "a/db", "80/TCP");
    assert!(v.egress.allowed() && !v.ingress.allowed());
    assert!(!v.allowed());
    let v = verdict(&c, "b/cli", "a/web", "80/TCP");
    assert!(v.allowed());
    let v = verdict(&c, "b/cli", "b/web", "80/TCP");
    assert!(!v.egress.allowed(), "egress only to team=x");
}

#[test]
fn policies_are_a_union() {
    let c = with(&[
        np(
            "a",
            "one",
            "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]",
        ),
        np(
            "a",
            "two",
            "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: y}}}]\n    ports: [{port: 5432}]",
        ),
    ]);
    assert!(allowed(&c, "a/web", "a/db", "80/TCP"));
    assert!(allowed(&c, "b/cli", "a/db", "5432/TCP"));
    assert!(!allowed(&c, "b/cli", "a/db", "80/TCP"));
    assert!(!allowed(&c, "a/web", "a/plain", "80/TCP"), "plain is selected by `two` only");
}

#[test]
fn self_node_and_reply_traffic() {
    let c = with(&[np("a", "deny", "  podSelector: {}\n  policyTypes: [Ingress, Egress]")]);
    let v = verdict(&c, "a/web", "a/web", "80/TCP");
    assert_eq!(v.egress, SideVerdict::Allowed(Allow::SelfTraffic));
    assert!(v.allowed());
    assert!(!allowed(&c, "a/web", "a/plain", "80/TCP"), "same node, different pod: denied");

    let nodes = "---\napiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 192.168.1.1}, {type: Hostname, address: n1}]}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n2}\nstatus: {addresses: [{type: InternalIP, address: 192.168.1.2}]}\n";
    let c = cluster(&(base() + nodes + &np("a", "deny", "  podSelector: {}\n  policyTypes: [Ingress, Egress]")));
    assert_eq!(verdict(&c, "192.168.1.1", "a/web", "10250/TCP").ingress, SideVerdict::Allowed(Allow::NodeTraffic));
    assert!(allowed(&c, "a/web", "192.168.1.1", "443/TCP"), "pod to its own node");
    assert!(!allowed(&c, "192.168.1.2", "a/web", "80/TCP"), "another node is not exempt");
    assert!(!allowed(&c, "a/web", "192.168.1.2", "80/TCP"));

    // Replies to an allowed connection are allowed even though the replying
    // pod is egress-isolated with no rule for the client.
    let c = with(&[
        np("a", "deny", "  podSelector: {}\n  policyTypes: [Egress]"),
        np("a", "in", "  podSelector: {}\n  ingress: [{}]"),
    ]);
    let forward = verdict(&c, "b/cli", "a/db", "5432/TCP");
    assert!(forward.allowed());
    assert!(!allowed(&c, "a/db", "b/cli", "40000/TCP"), "a new connection the other way is denied");
    assert!(evaluate_reply(&forward));
}

#[test]
fn host_network_pods_are_not_subjects_and_match_only_ip_blocks() {
    let host = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: agent, namespace: a, labels: {app: web}}\nspec: {nodeName: n1, hostNetwork: true, containers: [{name: c}]}\nstatus: {podIP: 192.168.1.1}\n";
    let c = cluster(
        &(base()
            + host
            + &np(
                "a",
                "p",
                "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]",
            )
            + &np("a", "deny", "  podSelector: {matchLabels: {app: web}}\n  ingress: []")),
    );
    assert!(!allowed(&c, "a/agent", "a/db", "80/TCP"), "host-network pods are not matched by pod selectors");
    assert!(allowed(&c, "a/db", "a/agent", "80/TCP"), "and not isolated by the policy selecting app=web");
    let c = cluster(
        &(base()
            + host
            + &np("a", "p", "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 192.168.0.0/16}}]")),
    );
    assert!(allowed(&c, "a/agent", "a/db", "80/TCP"));
    assert!(allowed(&c, "a/agent", "a/web", "80/TCP"), "host-network pod's node is n1 == a/web's node anyway");
}

#[test]
fn namespace_name_label_is_defaulted() {
    // No Namespace object for `b`, and `a`'s object does not list the label.
    let yaml = [
        ns("a", ""),
        pod("a", "x", "", "10.0.0.1", "n1"),
        pod("b", "y", "", "10.0.0.2", "n1"),
        np(
            "a",
            "p",
            "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: b}}}]",
        ),
    ]
    .concat();
    let c = cluster(&yaml);
    assert!(allowed(&c, "b/y", "a/x", "80/TCP"));
    let yaml2 = yaml.replace("metadata.name: b", "metadata.name: a");
    let c = cluster(&yaml2);
    assert!(!allowed(&c, "b/y", "a/x", "80/TCP"));
}

#[test]
fn errors_for_unknown_pods_and_families() {
    let c = with(&[]);
    let e = evaluate(
        &c,
        &Endpoint::Pod(ObjectKey::new("a", "nope")),
        &Endpoint::Pod(ObjectKey::new("a", "web")),
        80,
        Protocol::Tcp,
    );
    assert_eq!(e.unwrap_err(), EvalError::NoSuchPod(ObjectKey::new("a", "nope")));
    let e = evaluate(
        &c,
        &Endpoint::Pod(ObjectKey::new("a", "web")),
        &Endpoint::Ip("2001:db8::1".parse().unwrap()),
        80,
        Protocol::Tcp,
    );
    assert!(matches!(e, Err(EvalError::NoCommonFamily { .. })));
}
