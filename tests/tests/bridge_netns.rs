//! Pods behind a bridge CNI (flannel's `cni0`, kubenet's `cbr0`): no host
//! route names a pod's veth, each veth is a port of the node's bridge, and
//! pods of one node reach each other through the bridge alone, past the
//! host's IP stack. The agent finds the veths by their peers' addresses,
//! policy holds between pods of one bridge, the unknown-interface guard
//! drops bridged frames of veths not attached yet, and the mesh carries
//! same-node flows through the proxy and cross-node ones in mTLS.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use testbed::cluster::{LinkCapture, Mesh, admin_get, example_manifests};
use testbed::{Testbed, probe, require_root};

mod agent_support;

use agent_support::*;

const API: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const DB: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const FRONT: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 10);

/// apiserver and db on node-1's bridge, frontend on node-2's.
fn bridged_cluster() -> Testbed {
    let mut tb = Testbed::bridged(&["node-1", "node-2"]).unwrap();
    tb.add_pod("default/apiserver", 0, API).unwrap();
    tb.add_pod("default/db", 0, DB).unwrap();
    tb.add_pod("default/frontend", 1, FRONT).unwrap();
    for p in &tb.pods {
        probe::serve(&p.ns, &[80], &[]).unwrap();
    }
    tb
}

fn ns_of(tb: &Testbed, key: &str) -> String {
    tb.pod(key).unwrap().ns.name().to_string()
}

fn stderr_of(logs: &[PathBuf]) -> String {
    logs.iter().map(|l| fs::read_to_string(l.with_extension("stderr")).unwrap_or_default()).collect()
}

/// The seed's default-deny and bookstore policies hold on bridge ports:
/// between pods of one bridge (frames switched port to port, which no
/// route or host firewall sees) as well as across nodes.
#[test]
fn bridged_pods_are_attached_and_policy_holds_between_pods_of_one_bridge() {
    if !require_root("bridged_pods_are_attached_and_policy_holds_between_pods_of_one_bridge") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = workload_dir(dir.path());
    let tb = bridged_cluster();
    let api = SocketAddr::from((API, 80));
    let (db, front) = (ns_of(&tb, "default/db"), ns_of(&tb, "default/frontend"));
    // Without the agent, the bridge passes everything.
    assert!(probe::tcp(&db, api) && probe::tcp(&front, api), "the bridged testbed is wired");

    for f in ["01-default-deny.yaml", "02-allow-dns.yaml", "03-bookstore.yaml"] {
        copy(&examples().join("policies").join(f), &manifests.join(f));
    }
    let (_agents, logs) = start_agents(&tb, &manifests, dir.path());
    assert!(
        wait_for(&logs, "attached", 3) && wait_for(&logs, "policy synced", 2),
        "the agents did not attach to the bridged pods:\n{}",
        stderr_of(&logs)
    );
    assert!(
        until(Duration::from_secs(3), false, || probe::tcp(&db, api)).is_some(),
        "db reached the API server across the bridge despite default-deny\n{}",
        stderr_of(&logs)
    );
    assert!(probe::tcp(&front, api), "bookstore: frontend may reach the API server");
    assert!(!probe::tcp(&front, SocketAddr::from((DB, 80))), "default-deny across nodes");
    let flows: String = logs.iter().map(|l| fs::read_to_string(l).unwrap_or_default()).collect();
    assert!(
        flows.lines().any(|l| l.contains("\"src\":\"10.244.1.11:")
            && l.contains("\"dst\":\"10.244.1.10:80\"")
            && l.contains("\"verdict\":\"denied\"")),
        "the flow log shows no denial between the bridge's pods:\n{flows}"
    );
}

/// The guard on a bridge: a pod the CNI wired to the bridge before the
/// agent knew it sends nothing, not even to a pod of the same bridge, until
/// the agent attaches to it.
#[test]
fn the_guard_drops_bridged_frames_of_veths_not_attached_yet() {
    if !require_root("the_guard_drops_bridged_frames_of_veths_not_attached_yet") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = workload_dir(dir.path());
    let mut tb = bridged_cluster();
    let logs: Vec<PathBuf> = tb.nodes.iter().map(|n| dir.path().join(format!("{}.flows.jsonl", n.name))).collect();
    let _agents: Vec<Agent> = tb
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            start_agent_with(n.ns.name(), &manifests, &n.name, &logs[i], None, &["--pod-interface-prefix", "ztv"])
        })
        .collect();
    assert!(wait_for(&logs, "attached", 3), "agents did not start:\n{}", stderr_of(&logs));
    let api = SocketAddr::from((API, 80));
    let db = ns_of(&tb, "default/db");
    assert!(
        until(Duration::from_secs(3), true, || probe::tcp(&db, api)).is_some(),
        "no policy: attached pods of one bridge talk\n{}",
        stderr_of(&logs)
    );

    tb.add_pod("default/newcomer", 0, Ipv4Addr::new(10, 244, 1, 77)).unwrap();
    let newcomer = ns_of(&tb, "default/newcomer");
    std::thread::sleep(Duration::from_millis(300)); // a few polls: still unknown
    assert!(!probe::tcp(&newcomer, api), "an unjudged bridge port passed a frame to a pod of its bridge");
    assert!(!probe::tcp(&newcomer, SocketAddr::from((FRONT, 80))), "an unjudged bridge port passed traffic off-node");

    fs::write(
        manifests.join("newcomer.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: newcomer, namespace: default}\n\
         spec: {nodeName: node-1, containers: [{name: main, image: busybox}]}\n\
         status: {podIP: 10.244.1.77, podIPs: [{ip: 10.244.1.77}]}\n",
    )
    .unwrap();
    assert!(
        until(Duration::from_secs(5), true, || probe::tcp(&newcomer, api)).is_some(),
        "the attached newcomer still cannot reach a pod of its bridge\n{}",
        stderr_of(&logs)
    );
}

/// Tunnels counted by a node's proxy from `src` to `dst` (service accounts
/// of `default`) in `direction`.
fn tunnels(node_ns: &str, direction: &str, src: &str, dst: &str) -> u64 {
    let want = [
        format!("direction=\"{direction}\""),
        format!("source_identity=\"spiffe://cluster.local/ns/default/sa/{src}\""),
        format!("destination_identity=\"spiffe://cluster.local/ns/default/sa/{dst}\""),
    ];
    admin_get(node_ns, 15021, "/metrics")
        .lines()
        .filter(|l| l.starts_with("ztunnel_tcp_connections_opened_total{") && want.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

const MARKER: &[u8] = b"ZT-BRIDGED-PLAINTEXT-7d41";

/// The mesh behind a bridge: a flow between two pods of one bridge goes
/// through the node's proxy (the bridge would otherwise switch it straight
/// to the destination), and a flow across nodes is mTLS on the link; both
/// reach the destination from the real source address.
#[test]
fn the_mesh_carries_bridged_pods_same_node_and_across_nodes() {
    if !require_root("the_mesh_carries_bridged_pods_same_node_and_across_nodes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let manifests = example_manifests(root).unwrap();
    let tb = bridged_cluster();
    probe::whoami_server(&tb.pod("default/apiserver").unwrap().ns, 9000).unwrap();
    let ns: Vec<String> = tb.nodes.iter().map(|n| n.ns.name().to_string()).collect();
    let mesh = Mesh::start(root, &ns, &manifests, &[]).unwrap();
    let logs = || mesh.logs();
    let ready = testbed::cluster::until(Duration::from_secs(30), || {
        (0..2).all(|i| admin_get(&ns[i], 15021, "/config_dump").contains("spiffe://cluster.local/ns/default/sa/"))
            && logs().matches("attached").count() >= 3
    });
    assert!(ready, "agents did not get certificates or attach:\n{}", logs());
    let to_api = SocketAddr::from((API, 9000));

    // Same bridge: through node-1's proxy, from db's own address.
    let before = tunnels(&ns[0], "inbound", "db", "bookstore");
    let seen = probe::converse(&ns_of(&tb, "default/db"), to_api, MARKER);
    assert_eq!(seen.as_deref(), Some(DB.to_string().as_str()), "same-bridge flow\n{}", logs());
    assert!(
        tunnels(&ns[0], "outbound", "db", "bookstore") > 0 && tunnels(&ns[0], "inbound", "db", "bookstore") > before,
        "the same-bridge flow was switched past the proxy:\n{}",
        admin_get(&ns[0], 15021, "/metrics")
    );

    // Across nodes: mTLS on the link, from frontend's own address.
    let pcap = root.join("link.pcap");
    let capture = LinkCapture::start(&ns[0], "zt-link0", &pcap).unwrap();
    let seen = probe::converse(&ns_of(&tb, "default/frontend"), to_api, MARKER);
    let (captured, summary) = capture.stop().unwrap();
    assert_eq!(seen.as_deref(), Some(FRONT.to_string().as_str()), "cross-node flow\n{}", logs());
    assert!(!captured.windows(MARKER.len()).any(|w| w == MARKER), "payload crossed the link in plaintext");
    assert!(summary.contains(".15008"), "traffic went through HBONE port 15008:\n{summary}");
    assert!(!summary.contains(&format!("{API}.9000")), "no direct pod-to-pod packets on the link:\n{summary}");
    assert!(tunnels(&ns[1], "outbound", "bookstore", "bookstore") > 0, "frontend's node counted no tunnel");
}

const DUAL_STACK: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 192.168.100.1}, {type: InternalIP, address: "fd00:100::1"}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
status: {addresses: [{type: InternalIP, address: 192.168.100.2}, {type: InternalIP, address: "fd00:100::2"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: default}
spec: {nodeName: node-1, serviceAccountName: server, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.70, podIPs: [{ip: 10.244.1.70}, {ip: "fd00:244:1::70"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: neighbour, namespace: default}
spec: {nodeName: node-1, serviceAccountName: neighbour, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.71, podIPs: [{ip: 10.244.1.71}, {ip: "fd00:244:1::71"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec: {nodeName: node-2, serviceAccountName: client, containers: [{name: c, image: x}]}
status: {podIP: 10.244.2.70, podIPs: [{ip: 10.244.2.70}, {ip: "fd00:244:2::70"}]}
"#;

/// IPv6 behind bridges: the peers' IPv6 addresses are found too, and the
/// mesh carries an IPv6 flow between two pods of one bridge through the
/// proxy and one across nodes in mTLS, each from its real source address.
#[test]
fn the_mesh_carries_bridged_ipv6_same_node_and_across_nodes() {
    if !require_root("the_mesh_carries_bridged_ipv6_same_node_and_across_nodes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let manifests = root.join("manifests");
    fs::create_dir(&manifests).unwrap();
    fs::write(manifests.join("all.yaml"), DUAL_STACK).unwrap();
    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::bridged(&nodes).unwrap();
    let server6: std::net::Ipv6Addr = "fd00:244:1::70".parse().unwrap();
    let neighbour6: std::net::Ipv6Addr = "fd00:244:1::71".parse().unwrap();
    let client6: std::net::Ipv6Addr = "fd00:244:2::70".parse().unwrap();
    tb.add_pod_dual("default/server", 0, Ipv4Addr::new(10, 244, 1, 70), server6).unwrap();
    tb.add_pod_dual("default/neighbour", 0, Ipv4Addr::new(10, 244, 1, 71), neighbour6).unwrap();
    tb.add_pod_dual("default/client", 1, Ipv4Addr::new(10, 244, 2, 70), client6).unwrap();
    probe::whoami_server(&tb.pod("default/server").unwrap().ns, 9000).unwrap();
    let to = SocketAddr::from((server6, 9000));
    let (neighbour, client) = (ns_of(&tb, "default/neighbour"), ns_of(&tb, "default/client"));
    assert!(
        testbed::cluster::until(Duration::from_secs(5), || probe::converse(&client, to, b"x").is_some()),
        "no IPv6 path between the bridges"
    );

    let ns: Vec<String> = tb.nodes.iter().map(|n| n.ns.name().to_string()).collect();
    let mesh = Mesh::start(root, &ns, &manifests, &[]).unwrap();
    let logs = || mesh.logs();
    let ready = testbed::cluster::until(Duration::from_secs(30), || {
        admin_get(&ns[0], 15021, "/config_dump").contains("spiffe://cluster.local/ns/default/sa/server")
            && admin_get(&ns[1], 15021, "/config_dump").contains("spiffe://cluster.local/ns/default/sa/client")
            && logs().matches("attached").count() >= 3
    });
    assert!(ready, "agents did not get certificates or attach:\n{}", logs());

    let seen = probe::converse(&neighbour, to, MARKER);
    assert_eq!(seen.as_deref(), Some(neighbour6.to_string().as_str()), "same-bridge IPv6 flow\n{}", logs());
    assert!(
        tunnels(&ns[0], "inbound", "neighbour", "server") > 0,
        "the same-bridge IPv6 flow was switched past the proxy:\n{}",
        admin_get(&ns[0], 15021, "/metrics")
    );

    let pcap = root.join("link6.pcap");
    let capture = LinkCapture::start(&ns[0], "zt-link0", &pcap).unwrap();
    let seen = probe::converse(&client, to, MARKER);
    let (captured, summary) = capture.stop().unwrap();
    assert_eq!(seen.as_deref(), Some(client6.to_string().as_str()), "cross-node IPv6 flow\n{}", logs());
    assert!(!captured.windows(MARKER.len()).any(|w| w == MARKER), "payload crossed the link in plaintext");
    assert!(summary.contains(".15008"), "traffic went through HBONE port 15008:\n{summary}");
    assert!(!summary.contains(&format!("{server6}.9000")), "no direct IPv6 pod packets on the link:\n{summary}");
}
