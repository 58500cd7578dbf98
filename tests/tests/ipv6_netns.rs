//! IPv6 on real traffic: dual-stack pods on two nodes, an agent per node,
//! a NetworkPolicy with pod selectors and a port; TCP connections over
//! IPv6 and IPv4 get exactly the evaluator's verdict, and UDP over IPv6
//! too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use policy::eval::evaluate_packet;
use policy::manifest::parse_str;
use policy::{Cluster, Protocol};
use testbed::cluster::{Proc, spawn_in, until};
use testbed::{Testbed, probe, require_root};

const MANIFESTS: &str = r#"
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
spec: {nodeName: node-1, containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.60, podIPs: [{ip: 10.244.1.60}, {ip: "fd00:244:1::60"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {nodeName: node-2, containers: [{name: c, image: x}]}
status: {podIP: 10.244.2.60, podIPs: [{ip: 10.244.2.60}, {ip: "fd00:244:2::60"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, labels: {app: other}}
spec: {nodeName: node-2, containers: [{name: c, image: x}]}
status: {podIP: 10.244.2.61, podIPs: [{ip: 10.244.2.61}, {ip: "fd00:244:2::61"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-from-client-80, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 80}, {port: 53, protocol: UDP}]
"#;

/// Dual-stack servers in a pod: TCP echo on `tcp`, UDP echo on 53.
fn serve(ns: &testbed::Netns, tcp: &[u16]) {
    for &port in tcp {
        let l = ns.run(move || TcpListener::bind(("::", port))).unwrap().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut b = [0u8; 64];
                    while let Ok(n) = c.read(&mut b) {
                        if n == 0 || c.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    let u = ns.run(|| UdpSocket::bind(("::", 53))).unwrap().unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while let Ok((n, from)) = u.recv_from(&mut b) {
            let _ = u.send_to(&b[..n], from);
        }
    });
}

#[test]
fn ipv6_traffic_gets_the_evaluators_verdicts() {
    if !require_root("ipv6_traffic_gets_the_evaluators_verdicts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    fs::create_dir(&manifests).unwrap();
    fs::write(manifests.join("all.yaml"), MANIFESTS).unwrap();
    let parsed = parse_str("all.yaml", MANIFESTS);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let cluster = Cluster::from_objects(parsed.objects.into_iter().map(|(_, o)| o));

    let mut tb = Testbed::new(&["node-1", "node-2"]).unwrap();
    let pods = [
        ("default/server", 0, Ipv4Addr::new(10, 244, 1, 60), "fd00:244:1::60"),
        ("default/client", 1, Ipv4Addr::new(10, 244, 2, 60), "fd00:244:2::60"),
        ("default/other", 1, Ipv4Addr::new(10, 244, 2, 61), "fd00:244:2::61"),
    ];
    for (key, node, v4, v6) in pods {
        tb.add_pod_dual(key, node, v4, v6.parse::<Ipv6Addr>().unwrap()).unwrap();
    }
    for p in &tb.pods {
        serve(&p.ns, &[80, 81]);
    }
    // The testbed routes IPv6 between nodes before any program is attached.
    let server_ns = tb.pod("default/server").unwrap().ns.name().to_string();
    let client6: SocketAddr = "[fd00:244:2::60]:80".parse().unwrap();
    assert!(until(Duration::from_secs(5), || probe::tcp(&server_ns, client6)), "no IPv6 path without the agents");
    let m = manifests.to_str().unwrap().to_string();
    let _agents: Vec<Proc> = ["node-1", "node-2"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let log = dir.path().join(format!("{n}.log"));
            spawn_in(
                tb.nodes[i].ns.name(),
                &["run", "--local", &m, "--node", n, "--no-pin", "--poll-ms", "100", "--flow-log", "/dev/null"],
                &log,
            )
            .unwrap()
        })
        .collect();
    let logs = || -> String {
        ["node-1", "node-2"]
            .iter()
            .map(|n| fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap_or_default())
            .collect()
    };
    assert!(
        until(Duration::from_secs(20), || logs().matches("attached").count() >= 3),
        "agents did not attach:\n{}",
        logs()
    );
    std::thread::sleep(Duration::from_millis(300));

    let (mut checked, mut denied) = (0, 0);
    for (from, _, _, _) in pods {
        let from_ns = tb.pod(from).unwrap().ns.name().to_string();
        let from_pod = cluster.pod(&from.parse().unwrap()).unwrap();
        for (to, _, _, _) in pods {
            if to == from {
                continue;
            }
            let to_pod = cluster.pod(&to.parse().unwrap()).unwrap();
            for (src, dst) in from_pod.ips.iter().zip(to_pod.ips.iter()) {
                for (port, proto) in [(80, Protocol::Tcp), (81, Protocol::Tcp), (53, Protocol::Udp)] {
                    let want = evaluate_packet(&cluster, *src, *dst, port, proto).allowed();
                    let addr = SocketAddr::new(*dst, port);
                    let got = match proto {
                        Protocol::Udp => probe::udp(&from_ns, addr),
                        _ => probe::tcp(&from_ns, addr),
                    };
                    assert_eq!(got, want, "{from} -> {to} {addr} {proto}: evaluator says {want}\n{}", logs());
                    checked += 1;
                    denied += usize::from(!want);
                }
            }
        }
    }
    assert!(checked == 36 && denied == 8, "{checked} probes, {denied} denied");
}
