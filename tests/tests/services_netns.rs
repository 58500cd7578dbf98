//! Service ClusterIPs on real traffic. The testbed has no kube-proxy: a
//! cluster IP leads nowhere unless the agent translates it, at the socket,
//! to a ready backend. Then policy judges the backend pod (a pod allowed to
//! reach the API server reaches its Service; one that is not, does not),
//! the mesh carries the flow in mTLS like any pod-to-pod flow, and the
//! application sees the address it asked for (a UDP reply comes from the
//! cluster IP, `getpeername` names it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use testbed::cluster::{LinkCapture, Mesh, admin_get, example_manifests, spawn_args, until};
use testbed::netns::run_in;
use testbed::{Testbed, probe, require_root};

const API_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// The API server behind `default/api` (8080 → 80), CoreDNS behind
/// `kube-system/kube-dns` (53/UDP and 53/TCP), and a Service without ready
/// endpoints.
const SERVICES: &str = "apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec: {clusterIP: 10.96.0.50, ports: [{name: http, port: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: default, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 80}]
endpoints: [{addresses: [10.244.1.10]}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv4
ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
endpoints: [{addresses: [10.244.1.2]}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec: {clusterIP: 10.96.0.60, ports: [{port: 80}]}
";

/// A UDP exchange from `ns` with `to`: the reply's payload and source.
fn udp_exchange(ns: &str, to: SocketAddr) -> Option<(Vec<u8>, SocketAddr)> {
    run_in(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.send_to(b"query", to).ok()?;
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf).ok()?;
        Some((buf[..n].to_vec(), from))
    })
    .ok()
    .flatten()
}

/// A TCP connection from `ns` to `to`: the peer address the socket reports,
/// once one byte went there and back.
fn tcp_peer(ns: &str, to: SocketAddr) -> Option<SocketAddr> {
    run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"p").ok()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok()?;
        s.peer_addr().ok()
    })
    .ok()
    .flatten()
}

const MARKER: &[u8] = b"ZT-SERVICE-PLAINTEXT-51c0";

#[test]
fn cluster_ips_reach_backends_judged_by_their_policy_and_carried_in_mutual_tls() {
    if !require_root("cluster_ips_reach_backends_judged_by_their_policy_and_carried_in_mutual_tls") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let manifests = example_manifests(root).unwrap();
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/policies");
    for f in ["01-default-deny.yaml", "02-allow-dns.yaml", "03-bookstore.yaml"] {
        fs::copy(policies.join(f), manifests.join(f)).unwrap();
    }
    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::new(&nodes).unwrap();
    tb.add_pod("default/apiserver", 0, Ipv4Addr::new(10, 244, 1, 10)).unwrap();
    tb.add_pod("default/db", 0, Ipv4Addr::new(10, 244, 1, 11)).unwrap();
    tb.add_pod("kube-system/coredns", 0, Ipv4Addr::new(10, 244, 1, 2)).unwrap();
    tb.add_pod("default/frontend", 1, Ipv4Addr::new(10, 244, 2, 10)).unwrap();
    probe::serve(&tb.pod("default/apiserver").unwrap().ns, &[80], &[]).unwrap();
    probe::serve(&tb.pod("kube-system/coredns").unwrap().ns, &[53], &[53]).unwrap();
    let front = tb.pod("default/frontend").unwrap().ns.name().to_string();
    let db = tb.pod("default/db").unwrap().ns.name().to_string();
    let api = SocketAddr::from((API_VIP, 8080));
    let dns = SocketAddr::from((DNS_VIP, 53));
    // No kube-proxy here: a cluster IP leads nowhere by itself.
    assert!(!probe::tcp(&front, api), "the testbed routes cluster IPs?");

    fs::write(manifests.join("services.yaml"), SERVICES).unwrap();
    let ns: Vec<String> = tb.nodes.iter().map(|n| n.ns.name().to_string()).collect();
    let mesh = Mesh::start(root, &ns, &manifests, &["--service-cidr", "10.96.0.0/16"]).unwrap();
    let logs = || mesh.logs();
    let ready = until(Duration::from_secs(30), || {
        (0..2).all(|i| admin_get(&ns[i], 15021, "/ready").contains("ready"))
            && logs().matches("Services synced").count() >= 2
            && logs().matches("attached").count() >= 4
    });
    assert!(ready, "agents not ready:\n{}", logs());

    // The bookstore policy lets frontend reach the API server: through its
    // Service too, and the socket names the Service.
    assert!(until(Duration::from_secs(5), || probe::tcp(&front, api)), "frontend -> api Service\n{}", logs());
    assert_eq!(tcp_peer(&front, api), Some(api), "getpeername names the cluster IP");
    // Default-deny keeps db from the API server, whatever address it uses.
    assert!(!probe::tcp(&db, api), "db reached the API server through its Service despite default-deny");
    assert!(!probe::tcp(&db, SocketAddr::from(([10, 244, 1, 10], 80))), "and directly");
    // DNS (allowed to kube-system on 53/UDP): the answer comes from the
    // cluster IP, as resolvers require.
    let reply = udp_exchange(&front, dns);
    assert_eq!(reply, Some((b"query".to_vec(), dns)), "DNS through its Service\n{}", logs());
    // A dual-stack socket (Java's default) reaches the IPv4 Service by its
    // mapped address, and is answered from it.
    let mapped = |v4: Ipv4Addr, port: u16| SocketAddr::from((v4.to_ipv6_mapped(), port));
    assert_eq!(tcp_peer(&front, mapped(API_VIP, 8080)), Some(mapped(API_VIP, 8080)), "IPv6 socket, IPv4 Service");
    let dns6 = mapped(DNS_VIP, 53);
    let reply = run_in(&front, move || {
        let s = UdpSocket::bind("[::]:0").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.send_to(b"query", dns6).ok()?;
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf).ok()?;
        Some((buf[..n].to_vec(), from))
    })
    .unwrap();
    assert_eq!(reply, Some((b"query".to_vec(), dns6)), "DNS from an IPv6 socket");
    // TCP 53 is not in allow-dns: denied through the Service as directly.
    assert!(!probe::tcp(&front, dns), "DNS over TCP is not allowed by the seed policy");
    // No ready endpoint: refused at once.
    let empty = SocketAddr::from(([10, 96, 0, 60], 80));
    let refused =
        run_in(&front, move || TcpStream::connect_timeout(&empty, Duration::from_secs(2)).err().map(|e| e.kind()))
            .unwrap();
    assert_eq!(refused, Some(std::io::ErrorKind::PermissionDenied), "no backend: refused");

    // Across nodes the Service's TCP is mesh traffic: TLS on the link.
    let pcap = root.join("link.pcap");
    let capture = LinkCapture::start(&ns[0], "zt-link0", &pcap).unwrap();
    let echoed = run_in(&front, move || {
        let mut s = TcpStream::connect_timeout(&api, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(MARKER).ok()?;
        let mut back = vec![0u8; MARKER.len()];
        s.read_exact(&mut back).ok()?;
        Some(back)
    })
    .unwrap();
    let (captured, summary) = capture.stop().unwrap();
    assert_eq!(echoed.as_deref(), Some(MARKER), "echo through the Service\n{}", logs());
    assert!(!captured.windows(MARKER.len()).any(|w| w == MARKER), "Service traffic crossed the link in plaintext");
    assert!(summary.contains(".15008"), "through HBONE:\n{summary}");
    let metrics = admin_get(&ns[1], 15021, "/metrics");
    assert!(metrics.contains("ztunnel_service_frontends 4\n"), "{metrics}");
    let dump = admin_get(&ns[1], 15021, "/config_dump");
    assert!(dump.contains("\"10.96.0.50:8080/TCP\": [\n      \"10.244.1.10:80\"\n    ]"), "{dump}");
    assert!(dump.contains("\"10.96.0.60:80/TCP\": []"), "{dump}");

    // A cluster IP no Service the agent knows has: not translated, so its
    // TCP reaches the veth addressed to the Service CIDR and is dropped
    // there (with kube-proxy it would otherwise leave in the clear).
    // (From CoreDNS, whose egress no policy isolates: the drop is the
    // mesh's, not a policy's.)
    let dns_pod = tb.pod("kube-system/coredns").unwrap().ns.name().to_string();
    assert!(!probe::tcp(&dns_pod, SocketAddr::from(([10, 96, 0, 99], 80))));
    let dropped = until(Duration::from_secs(5), || {
        fs::read_to_string(root.join("node-1.flows.jsonl"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("\"dst\":\"10.96.0.99:80\"") && l.contains("\"reason\":\"no-proxy\""))
    });
    assert!(dropped, "no no-proxy drop of the untranslated cluster IP in the flow log");

    // The Service's endpoints change: the next connections follow.
    fs::write(
        manifests.join("services.yaml"),
        SERVICES.replace("endpoints: [{addresses: [10.244.1.10]}]", "endpoints: []"),
    )
    .unwrap();
    let refused = until(Duration::from_secs(5), || {
        run_in(&front, move || TcpStream::connect_timeout(&api, Duration::from_secs(1)).is_err()).unwrap_or(false)
    });
    assert!(refused, "the api Service still has a backend after its endpoints went away\n{}", logs());
}

/// With pinned programs and maps, translation outlives the agent (kill -9:
/// connections to the Service keep reaching its backend), and a restarted
/// agent takes over without a gap and applies changes again.
#[test]
fn translation_survives_a_killed_agent_and_a_restart_takes_over() {
    if !require_root("translation_survives_a_killed_agent_and_a_restart_takes_over") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let manifests = example_manifests(root).unwrap();
    // A cluster IP of its own: the agents of a test running beside this one
    // translate for the whole cgroup tree too.
    let services = SERVICES.replace("10.96.0.50", "10.96.1.50");
    fs::write(manifests.join("services.yaml"), &services).unwrap();
    let mut tb = Testbed::new(&["node-1", "node-2"]).unwrap();
    tb.add_pod("default/apiserver", 0, Ipv4Addr::new(10, 244, 1, 10)).unwrap();
    tb.add_pod("default/frontend", 1, Ipv4Addr::new(10, 244, 2, 10)).unwrap();
    probe::serve(&tb.pod("default/apiserver").unwrap().ns, &[80], &[]).unwrap();
    let front = tb.pod("default/frontend").unwrap().ns.name().to_string();
    let node2 = tb.nodes[1].ns.name().to_string();
    let bpffs = testbed::cluster::BpfFs::mount(&root.join("bpf")).unwrap();
    let m = manifests.to_str().unwrap().to_string();
    let start = |ns: &str, node: &str, log: &str| {
        let pins = bpffs.0.join(node);
        let args: Vec<String> = [
            "run",
            "--local",
            &m,
            "--node",
            node,
            "--poll-ms",
            "100",
            "--flow-log",
            "/dev/null",
            "--bpffs",
            pins.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        spawn_args(ns, &args, &root.join(log)).unwrap()
    };
    let logs = || fs::read_to_string(root.join("node-2.log")).unwrap_or_default();
    // One agent only: every agent translates for the whole machine's
    // cgroup tree, so a second one would hide what the pins do.
    let mut agent = start(&node2, "node-2", "node-2.log");
    let api = SocketAddr::from(([10, 96, 1, 50], 8080));
    assert!(until(Duration::from_secs(10), || probe::tcp(&front, api)), "Service before the kill\n{}", logs());

    let _ = agent.0.kill();
    let _ = agent.0.wait();
    assert!(probe::tcp(&front, api), "translation stopped with the agent (pinned links and maps should hold)");

    let _agent = start(&node2, "node-2", "node-2b.log");
    let logs2 = || fs::read_to_string(root.join("node-2b.log")).unwrap_or_default();
    assert!(until(Duration::from_secs(10), || logs2().contains("Services synced")), "restart\n{}", logs2());
    assert!(probe::tcp(&front, api), "Service after the restart\n{}", logs2());
    // The restarted agent keeps the maps current.
    fs::write(
        manifests.join("services.yaml"),
        services.replace("endpoints: [{addresses: [10.244.1.10]}]", "endpoints: []"),
    )
    .unwrap();
    let gone = until(Duration::from_secs(5), || {
        run_in(&front, move || TcpStream::connect_timeout(&api, Duration::from_secs(1)).is_err()).unwrap_or(false)
    });
    assert!(gone, "the restarted agent did not apply the endpoint change\n{}", logs2());
    drop(bpffs);
}
