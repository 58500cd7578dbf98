//! The mesh on real traffic: a CA and two agents with the mTLS side, pods as
//! network namespaces. A pod-to-pod TCP connection across nodes is carried
//! inside TLS (a capture of the node-to-node link never shows the payload),
//! the destination pod sees the real source address, and port-based
//! NetworkPolicy on the destination still decides. The legs between pods
//! and proxies run their own congestion control; the tunnel keeps the
//! node's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use testbed::cluster::{
    BpfFs, LinkCapture, Mesh, Proc, admin_get, ca_init, ca_serve_args, example_manifests, mesh_agent_args,
    serial_in_dump, spawn_args, until, ztunnel_bin,
};
use testbed::netns::run_in;
use testbed::{Testbed, probe, require_root};

const MARKER: &[u8] = b"ZT-PLAINTEXT-MARKER-3f9c1e";

#[test]
fn cross_node_pod_traffic_is_mutual_tls_with_real_source_and_port_policy() {
    if !require_root("cross_node_pod_traffic_is_mutual_tls_with_real_source_and_port_policy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let manifests = example_manifests(root).unwrap();
    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::new(&nodes).unwrap();
    let api_ip = Ipv4Addr::new(10, 244, 1, 10);
    let front_ip = Ipv4Addr::new(10, 244, 2, 10);
    tb.add_pod("default/apiserver", 0, api_ip).unwrap();
    tb.add_pod("default/frontend", 1, front_ip).unwrap();
    for p in &tb.pods {
        probe::serve(&p.ns, &[80], &[]).unwrap();
    }
    probe::whoami_server(&tb.pod("default/apiserver").unwrap().ns, 9000).unwrap();
    let ns: Vec<String> = tb.nodes.iter().map(|n| n.ns.name().to_string()).collect();

    // The CA, on node-1's link address.
    let ca_dir = root.join("ca");
    ca_init(&ca_dir, &[]).unwrap();
    let d = ca_dir.to_str().unwrap();
    let m = manifests.to_str().unwrap();
    let _ca = spawn_args(&ns[0], &ca_serve_args(d, m), &root.join("ca.log")).unwrap();

    let agents: Vec<Proc> = (0..2)
        .map(|i| {
            let log = root.join(format!("{}.log", nodes[i]));
            let flows = root.join(format!("{}.flows.jsonl", nodes[i]));
            spawn_args(&ns[i], &mesh_agent_args(m, nodes[i], i, d, None, flows.to_str().unwrap()), &log).unwrap()
        })
        .collect();
    let logs = || -> String {
        nodes.iter().map(|n| fs::read_to_string(root.join(format!("{n}.log"))).unwrap_or_default()).collect()
    };
    let ready = until(Duration::from_secs(30), || {
        (0..2).all(|i| admin_get(&ns[i], 15021, "/config_dump").contains("spiffe://cluster.local/ns/default/sa/"))
            && logs().matches("attached").count() >= 2
    });
    assert!(ready, "agents did not get certificates or attach:\n{}", logs());

    // Capture the node-to-node link while a connection crosses it.
    let pcap = root.join("link.pcap");
    let capture = LinkCapture::start(&ns[0], "zt-link0", &pcap).unwrap();
    let front = tb.pod("default/frontend").unwrap().ns.name().to_string();
    let seen = probe::converse(&front, SocketAddr::from((api_ip, 9000)), MARKER);
    let (captured, summary) = capture.stop().unwrap();
    assert_eq!(
        seen.as_deref(),
        Some(front_ip.to_string().as_str()),
        "destination saw the real source address\n{}",
        logs()
    );
    assert!(captured.len() > 1000, "the capture saw the tunnel ({} bytes)", captured.len());
    assert!(!captured.windows(MARKER.len()).any(|w| w == MARKER), "payload crossed the link in plaintext");
    assert!(summary.contains(".15008"), "traffic went through HBONE port 15008:\n{summary}");
    assert!(!summary.contains(&format!("{api_ip}.9000")), "no direct pod-to-pod packets on the link:\n{summary}");

    eprintln!("link capture:\n{summary}\nagent logs:\n{}", logs());
    // The echo path works too.
    assert!(probe::tcp(&front, SocketAddr::from((api_ip, 80))));

    // Port-based policy at the destination still decides under the mesh.
    fs::write(
        manifests.join("port-80-only.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: port-80-only, namespace: default}\n\
         spec:\n  podSelector: {matchLabels: {role: api}}\n  ingress:\n  - ports: [{port: 80}]\n",
    )
    .unwrap();
    let enforced =
        until(Duration::from_secs(5), || probe::converse(&front, SocketAddr::from((api_ip, 9000)), b"x").is_none());
    assert!(enforced, "port 9000 still reachable after the policy\n{}", logs());
    assert!(probe::tcp(&front, SocketAddr::from((api_ip, 80))), "port 80 stays open");

    // A root rotation during a long-running transfer: the transfer never
    // stalls, both agents renew under the new signer, and new handshakes
    // present the new certificates.
    let serial_of = serial_in_dump;
    const BOOKSTORE: &str = "spiffe://cluster.local/ns/default/sa/bookstore";
    let before = serial_of(&admin_get(&ns[1], 15021, "/config_dump"), BOOKSTORE).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let transfer = {
        let (front, stop) = (front.clone(), stop.clone());
        std::thread::spawn(move || {
            run_in(&front, move || {
                let mut s =
                    TcpStream::connect_timeout(&SocketAddr::from((api_ip, 80)), Duration::from_secs(2)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let (mut rounds, chunk) = (0usize, [0x5au8; 32]);
                let mut back = [0u8; 32];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    s.write_all(&chunk).unwrap();
                    s.read_exact(&mut back).unwrap();
                    assert_eq!(back, chunk);
                    rounds += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                rounds
            })
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    for step in [&["prepare"][..], &["propagate"], &["switch", "--force"]] {
        let out = Command::new(ztunnel_bin()).args(["ca", "rotate"]).args(step).args(["--dir", d]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    let renewed = until(Duration::from_secs(15), || {
        serial_of(&admin_get(&ns[1], 15021, "/config_dump"), BOOKSTORE).is_some_and(|s| s != before)
    });
    assert!(renewed, "node-2 did not renew after the switch\n{}", logs());
    let after = serial_of(&admin_get(&ns[1], 15021, "/config_dump"), BOOKSTORE).unwrap();
    // A new flow opens a new tunnel connection with the renewed client
    // certificate; node-1 logs the serial each handshake presented.
    assert!(probe::tcp(&front, SocketAddr::from((api_ip, 80))), "new connections work after the rotation");
    let node1_log = || fs::read_to_string(root.join("node-1.log")).unwrap_or_default();
    assert!(
        until(Duration::from_secs(5), || node1_log().contains(&after)),
        "no handshake presented {after}\n{}",
        node1_log()
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = transfer.join().expect("the long transfer never failed during the rotation");
    assert!(rounds > 20, "only {rounds} rounds");

    // Metrics and readiness.
    let metrics = admin_get(&ns[0], 15021, "/metrics");
    assert!(metrics.contains("ztunnel_tcp_connections_opened_total{direction=\"inbound\""), "{metrics}");
    assert!(metrics.contains("ztunnel_certificate_expiry_seconds{identity=\"spiffe://"), "{metrics}");
    assert!(metrics.contains("ztunnel_hbone_connections{direction=\"inbound\"}"), "{metrics}");
    let client_metrics = admin_get(&ns[1], 15021, "/metrics");
    // The port policy's denial is counted where it was enforced: by
    // node-1's proxy (tunnel refused) or, when node-2 loaded the policy
    // first, by node-2's datapath (the SYN never left the source node).
    assert!(
        metrics.contains("ztunnel_tunnel_failures_total{reason=\"policy\"}")
            || metrics.contains("verdict=\"denied\"")
            || client_metrics.contains("verdict=\"denied\""),
        "{metrics}\n{client_metrics}"
    );
    assert!(client_metrics.contains("ztunnel_hbone_connections{direction=\"outbound\"}"), "{client_metrics}");
    assert!(admin_get(&ns[0], 15021, "/ready").starts_with("HTTP/1.0 200"));

    // SIGTERM on node-2's agent: it stops accepting (new pod connections
    // fail closed), lets the open tunnel finish, then exits.
    let mut agents = agents;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let transfer = {
        let (front, stop, count) = (front.clone(), stop.clone(), count.clone());
        std::thread::spawn(move || {
            run_in(&front, move || {
                let mut s =
                    TcpStream::connect_timeout(&SocketAddr::from((api_ip, 80)), Duration::from_secs(2)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut back = [0u8; 8];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    s.write_all(b"draining").unwrap();
                    s.read_exact(&mut back).unwrap();
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let pid = agents[1].0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(600));
    assert!(!probe::tcp(&front, SocketAddr::from((api_ip, 80))), "a new connection got through a draining agent");
    let during = count.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    assert!(count.load(std::sync::atomic::Ordering::Relaxed) > during, "the open tunnel kept flowing while draining");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    transfer.join().expect("the open tunnel finished cleanly");
    let exited = until(Duration::from_secs(5), || agents[1].0.try_wait().unwrap().is_some());
    assert!(exited, "the agent exited after its tunnels drained\n{}", logs());
    assert!(logs().contains("drained"), "{}", logs());
    drop(agents);
}

#[test]
fn a_killed_agent_fails_closed_and_a_restarted_one_resumes() {
    if !require_root("a_killed_agent_fails_closed_and_a_restarted_one_resumes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let manifests = example_manifests(root).unwrap();
    let bpffs = BpfFs::mount(&root.join("bpf")).unwrap();
    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::new(&nodes).unwrap();
    let (api_ip, db_ip) = (Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 1, 11));
    tb.add_pod("default/apiserver", 0, api_ip).unwrap();
    tb.add_pod("default/db", 0, db_ip).unwrap();
    tb.add_pod("default/frontend", 1, Ipv4Addr::new(10, 244, 2, 10)).unwrap();
    for p in &tb.pods {
        probe::serve(&p.ns, &[80], &[]).unwrap();
    }
    let ns: Vec<String> = tb.nodes.iter().map(|n| n.ns.name().to_string()).collect();
    let ca_dir = root.join("ca");
    ca_init(&ca_dir, &[]).unwrap();
    let (d, m) = (ca_dir.to_str().unwrap().to_string(), manifests.to_str().unwrap().to_string());
    let _ca = spawn_args(&ns[0], &ca_serve_args(&d, &m), &root.join("ca.log")).unwrap();
    let start = |i: usize| -> Proc {
        let pins = bpffs.0.join(nodes[i]);
        spawn_args(
            &ns[i],
            &mesh_agent_args(
                &m,
                nodes[i],
                i,
                &d,
                Some(pins.to_str().unwrap()),
                root.join(format!("{}.flows", nodes[i])).to_str().unwrap(),
            ),
            &root.join(format!("{}.log", nodes[i])),
        )
        .unwrap()
    };
    let mut agents: Vec<Proc> = (0..2).map(start).collect();
    let ready = |i: usize| admin_get(&ns[i], 15021, "/ready").starts_with("HTTP/1.0 200");
    assert!(until(Duration::from_secs(30), || ready(0) && ready(1)), "agents not ready");
    let front = tb.pod("default/frontend").unwrap().ns.name().to_string();
    let db = tb.pod("default/db").unwrap().ns.name().to_string();
    let api = SocketAddr::from((api_ip, 80));
    assert!(until(Duration::from_secs(5), || probe::tcp(&front, api)), "mesh path works before the kill");

    // kill -9 the source node's agent: pod TCP that needs its proxy fails
    // closed, and nothing crosses the link in clear.
    let pcap = root.join("down.pcap");
    let capture = LinkCapture::start(&ns[0], "zt-link0", &pcap).unwrap();
    let _ = agents[1].0.kill();
    let _ = agents[1].0.wait();
    std::thread::sleep(Duration::from_millis(800));
    for _ in 0..3 {
        assert!(!probe::tcp(&front, api), "a connection got through with node-2's proxy down");
    }
    let (_, summary) = capture.stop().unwrap();
    assert!(!summary.contains(&format!("> {api_ip}.80")), "plaintext SYN on the link with the proxy down:\n{summary}");
    // Node-1 is unaffected: its own pods still reach each other.
    assert!(probe::tcp(&db, api), "node-1 traffic broke when node-2's agent died");

    // Restart: service resumes without manual steps within 5 s.
    let restarted = Instant::now();
    agents[1] = start(1);
    let back = until(Duration::from_secs(5), || probe::tcp(&front, api));
    assert!(back, "traffic did not resume within 5 s of the restart");
    eprintln!("service resumed {:?} after the restart", restarted.elapsed());
    drop(agents);
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
metadata: {name: server, namespace: default, labels: {app: server}}
spec: {nodeName: node-1, serviceAccountName: server, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.70, podIPs: [{ip: 10.244.1.70}, {ip: "fd00:244:1::70"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {nodeName: node-2, serviceAccountName: client, containers: [{name: c, image: x}]}
status: {podIP: 10.244.2.70, podIPs: [{ip: 10.244.2.70}, {ip: "fd00:244:2::70"}]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: default}
spec: {clusterIPs: ["fd00:96::70"], ipFamilies: [IPv6], ports: [{name: whoami, port: 9900, targetPort: 9000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: server-v6, namespace: default, labels: {kubernetes.io/service-name: server}}
addressType: IPv6
ports: [{name: whoami, port: 9000}]
endpoints: [{addresses: ["fd00:244:1::70"]}]
"#;

/// The addresses of `default/server` (node-1) and `default/client` (node-2)
/// in [`DUAL_STACK`].
const SERVER: (Ipv4Addr, std::net::Ipv6Addr) =
    (Ipv4Addr::new(10, 244, 1, 70), std::net::Ipv6Addr::new(0xfd00, 0x244, 1, 0, 0, 0, 0, 0x70));
const CLIENT: (Ipv4Addr, std::net::Ipv6Addr) =
    (Ipv4Addr::new(10, 244, 2, 70), std::net::Ipv6Addr::new(0xfd00, 0x244, 2, 0, 0, 0, 0, 0x70));

/// Two nodes with the dual-stack server and client pods, and the manifest
/// directory (under `root`) that describes them.
fn dual_stack_cluster(root: &std::path::Path) -> (Testbed, std::path::PathBuf) {
    let manifests = root.join("manifests");
    fs::create_dir(&manifests).unwrap();
    fs::write(manifests.join("all.yaml"), DUAL_STACK).unwrap();
    let mut tb = Testbed::new(&["node-1", "node-2"]).unwrap();
    tb.add_pod_dual("default/server", 0, SERVER.0, SERVER.1).unwrap();
    tb.add_pod_dual("default/client", 1, CLIENT.0, CLIENT.1).unwrap();
    (tb, manifests)
}

#[test]
fn ipv6_pod_traffic_is_captured_and_carried_in_mutual_tls() {
    if !require_root("ipv6_pod_traffic_is_captured_and_carried_in_mutual_tls") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (tb, manifests) = dual_stack_cluster(root);
    let nodes = ["node-1", "node-2"];
    let (server6, client6) = (SERVER.1, CLIENT.1);
    probe::whoami_server(&tb.pod("default/server").unwrap().ns, 9000).unwrap();
    probe::whoami_server(&tb.pod("default/server").unwrap().ns, 80).unwrap();
    let ns: Vec<String> = tb.nodes.iter().map(|n| n.ns.name().to_string()).collect();
    let client = tb.pod("default/client").unwrap().ns.name().to_string();
    let to = |port: u16| SocketAddr::from((server6, port));
    // The testbed routes IPv6 between the nodes before any agent runs.
    assert!(until(Duration::from_secs(5), || probe::converse(&client, to(9000), b"x").is_some()), "no IPv6 path");

    let ca_dir = root.join("ca");
    ca_init(&ca_dir, &[]).unwrap();
    let (d, m) = (ca_dir.to_str().unwrap(), manifests.to_str().unwrap());
    let _ca = spawn_args(&ns[0], &ca_serve_args(d, m), &root.join("ca.log")).unwrap();
    // Pinned, so that a killed agent leaves its programs enforcing.
    let bpffs = BpfFs::mount(&root.join("bpf")).unwrap();
    let mut agents: Vec<Proc> = (0..2)
        .map(|i| {
            let log = root.join(format!("{}.log", nodes[i]));
            let pins = bpffs.0.join(nodes[i]);
            spawn_args(&ns[i], &mesh_agent_args(m, nodes[i], i, d, Some(pins.to_str().unwrap()), "/dev/null"), &log)
                .unwrap()
        })
        .collect();
    let logs = || -> String {
        nodes.iter().map(|n| fs::read_to_string(root.join(format!("{n}.log"))).unwrap_or_default()).collect()
    };
    let ready = until(Duration::from_secs(30), || {
        admin_get(&ns[0], 15021, "/config_dump").contains("spiffe://cluster.local/ns/default/sa/server")
            && admin_get(&ns[1], 15021, "/config_dump").contains("spiffe://cluster.local/ns/default/sa/client")
            && logs().matches("attached").count() >= 2
    });
    assert!(ready, "agents did not get certificates or attach:\n{}", logs());
    assert!(!logs().contains("no IPv6 capture"), "IPv6 capture listener missing:\n{}", logs());

    // An IPv6 connection across the nodes: through both proxies, inside
    // TLS on the link, delivered from the client's real IPv6 address.
    let pcap = root.join("link6.pcap");
    let capture = LinkCapture::start(&ns[0], "zt-link0", &pcap).unwrap();
    let seen = probe::converse(&client, to(9000), MARKER);
    let (captured, summary) = capture.stop().unwrap();
    assert_eq!(seen.as_deref(), Some(client6.to_string().as_str()), "destination saw the real source\n{}", logs());
    assert!(!captured.windows(MARKER.len()).any(|w| w == MARKER), "payload crossed the link in plaintext");
    assert!(summary.contains(".15008"), "traffic went through HBONE port 15008:\n{summary}");
    assert!(!summary.contains(&format!("{server6}.9000")), "no direct IPv6 pod packets on the link:\n{summary}");
    // The same through the server's IPv6 Service (cluster IP translated at
    // the client's socket): still the real source, still in TLS.
    let vip: std::net::Ipv6Addr = "fd00:96::70".parse().unwrap();
    let pcap = root.join("service6.pcap");
    let capture = LinkCapture::start(&ns[0], "zt-link0", &pcap).unwrap();
    let seen = probe::converse(&client, SocketAddr::from((vip, 9900)), MARKER);
    let (captured, _) = capture.stop().unwrap();
    assert_eq!(seen.as_deref(), Some(client6.to_string().as_str()), "through the IPv6 Service\n{}", logs());
    assert!(!captured.windows(MARKER.len()).any(|w| w == MARKER), "Service payload crossed the link in plaintext");
    let tunnels = admin_get(&ns[1], 15021, "/metrics");
    assert!(
        tunnels.lines().any(|l| l.starts_with("ztunnel_tcp_connections_opened_total{")
            && l.contains("direction=\"outbound\"")
            && !l.ends_with(" 0")),
        "the client's node counted no outbound tunnel:\n{tunnels}"
    );

    // Port policy at the destination decides for IPv6 under the mesh too.
    fs::write(
        manifests.join("port-80-only.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: port-80-only, namespace: default}\n\
         spec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - ports: [{port: 80}]\n",
    )
    .unwrap();
    let enforced = until(Duration::from_secs(5), || probe::converse(&client, to(9000), b"x").is_none());
    assert!(enforced, "IPv6 port 9000 still reachable after the policy\n{}", logs());
    assert_eq!(
        probe::converse(&client, to(80), b"y").as_deref(),
        Some(client6.to_string().as_str()),
        "port 80 stays open"
    );

    // kill -9 the client node's agent: IPv6 pod TCP fails closed as IPv4
    // does, and nothing crosses the link in clear.
    let pcap = root.join("down6.pcap");
    let capture = LinkCapture::start(&ns[0], "zt-link0", &pcap).unwrap();
    let _ = agents[1].0.kill();
    let _ = agents[1].0.wait();
    std::thread::sleep(Duration::from_millis(800));
    for _ in 0..3 {
        assert!(probe::converse(&client, to(80), b"z").is_none(), "an IPv6 connection got through with the proxy down");
    }
    let (_, summary) = capture.stop().unwrap();
    assert!(!summary.contains(&format!("> {server6}.80")), "plaintext IPv6 SYN on the link:\n{summary}");
    drop(agents);
}

fn cc_of(s: &impl AsFd) -> String {
    let v = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::TcpCongestion).unwrap();
    v.to_string_lossy().trim_end_matches('\0').to_string()
}

/// The congestion control of each established socket in `ns` whose local
/// or remote port is `port`, as `ss` shows it: (local, peer, algorithm).
fn ss_cc(ns: &str, port: u16) -> Vec<(String, String, String)> {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let out = Command::new("ip").args(["netns", "exec", ns, "ss", "-tinH", "state", "established", &filter]).output();
    let text = String::from_utf8_lossy(&out.unwrap().stdout).into_owned();
    let mut found = Vec::new();
    let mut addrs: Option<(String, String)> = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(char::is_whitespace) && words.len() >= 4 {
            addrs = Some((words[2].to_string(), words[3].to_string()));
        } else if let Some((l, p)) = addrs.take() {
            let cc = words.iter().find(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_')).unwrap_or(&"?");
            found.push((l, p, cc.to_string()));
        }
    }
    found
}

/// The node-local legs' congestion control on real sockets (IPv4, IPv4
/// mapped on a dual-stack socket, IPv6). A captured connection's pod ends
/// (the client pod's socket, whose peer is its node's proxy, and the server
/// pod's accepted socket, whose peer is the destination node's delivery
/// socket) and the proxy's own sockets on those legs run the configured
/// algorithm; the tunnel between the nodes, and a pod's socket that is no
/// leg, keep the node's default.
#[test]
fn local_legs_switch_congestion_control_and_the_tunnel_keeps_the_nodes() {
    if !require_root("local_legs_switch_congestion_control_and_the_tunnel_keeps_the_nodes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (tb, manifests) = dual_stack_cluster(root);
    let (server_ip, server6) = SERVER;
    let server_ns = tb.pod("default/server").unwrap().ns.name().to_string();
    let client_ns = tb.pod("default/client").unwrap().ns.name().to_string();
    let ns: Vec<String> = tb.nodes.iter().map(|n| n.ns.name().to_string()).collect();

    // An algorithm no socket here would have by itself.
    let default = run_in(&client_ns, || std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap())
        .unwrap()
        .trim()
        .to_string();
    let want = if default == "reno" { "cubic" } else { "reno" };
    let mesh = Mesh::start(root, &ns, &manifests, &["--local-congestion-control", want]).unwrap();
    let ready = until(Duration::from_secs(30), || {
        (0..2).all(|i| admin_get(&ns[i], 15021, "/ready").contains("ready"))
            && mesh.logs().matches("attached").count() >= 2
    });
    assert!(ready, "agents not ready:\n{}", mesh.logs());
    assert!(mesh.logs().contains("node-local legs (pod to proxy) use this congestion control"), "{}", mesh.logs());

    // The server pod: the algorithm of each accepted socket, after echoing;
    // the sockets stay open (so do the legs) until the end.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (served_tx, served_rx) = std::sync::mpsc::channel();
    let (end_server, end_server_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        run_in(&server_ns, move || {
            let l = TcpListener::bind("[::]:9100").unwrap();
            ready_tx.send(()).unwrap();
            let mut open = Vec::new();
            for _ in 0..3 {
                let (mut s, _) = l.accept().unwrap();
                let mut b = [0u8; 4];
                s.read_exact(&mut b).unwrap();
                s.write_all(&b).unwrap();
                served_tx.send(cc_of(&s)).unwrap();
                open.push(s);
            }
            let _ = end_server_rx.recv_timeout(Duration::from_secs(20));
        })
        .unwrap()
    });
    ready_rx.recv().unwrap();
    // The client pod: an IPv4 socket, a dual-stack one (the IPv4 address
    // mapped) and an IPv6 one, each held open until the node sockets are
    // looked at; and a loopback connection inside the pod, which is no leg.
    let targets = [
        SocketAddr::from((server_ip, 9100)),
        SocketAddr::from((server_ip.to_ipv6_mapped(), 9100)),
        SocketAddr::from((server6, 9100)),
    ];
    let (end_client, end_client_rx) = std::sync::mpsc::channel::<()>();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        run_in(&client_ns, move || {
            let mut out = Vec::new();
            let mut open = Vec::new();
            for addr in targets {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                s.write_all(b"ping").unwrap();
                let mut b = [0u8; 4];
                s.read_exact(&mut b).unwrap();
                out.push(cc_of(&s));
                open.push(s);
            }
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let local = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (accepted, _) = l.accept().unwrap();
            out.push(cc_of(&local));
            out.push(cc_of(&accepted));
            seen_tx.send(out).unwrap();
            let _ = end_client_rx.recv_timeout(Duration::from_secs(20));
        })
        .unwrap()
    });
    let seen = seen_rx.recv_timeout(Duration::from_secs(15)).expect("the client pod's connections");
    assert_eq!(seen[..3], [want; 3], "the client pod's sockets of captured connections\n{}", mesh.logs());
    assert_eq!(seen[3..], [default.as_str(), default.as_str()], "a loopback connection inside the pod is no leg");
    let served: Vec<String> = served_rx.iter().take(3).collect();
    assert_eq!(served, [want; 3], "the server pod's sockets of delivered connections");

    // The proxies: node-2's capture sockets and node-1's delivery sockets
    // run it; the HBONE tunnel between them keeps the node's default.
    let capture = ss_cc(&ns[1], 9100);
    let delivery = ss_cc(&ns[0], 9100);
    assert_eq!(capture.len(), 3, "node-2's capture sockets: {capture:?}");
    assert_eq!(delivery.len(), 3, "node-1's delivery sockets: {delivery:?}");
    for (l, p, cc) in capture.iter().chain(&delivery) {
        assert_eq!(cc, want, "{l} -> {p}");
    }
    let tunnel = ss_cc(&ns[1], 15008);
    assert!(!tunnel.is_empty(), "no tunnel on 15008");
    for (l, p, cc) in &tunnel {
        assert_eq!(cc, &default, "the tunnel {l} -> {p} keeps the node's algorithm");
    }
    end_client.send(()).unwrap();
    end_server.send(()).unwrap();
    client.join().unwrap();
    server.join().unwrap();
}
