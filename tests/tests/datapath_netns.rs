//! The eBPF datapath enforcing the seed scenarios on real traffic: two node
//! namespaces joined by a link, the seed workload's pods as namespaces on
//! both, an external host, and the classifiers attached to every pod's
//! host-side veth with the tables each node compiles for itself. Every probe
//! (a TCP connection that echoes, a UDP datagram that comes back) must have
//! the outcome the reference evaluator gives. Replies cross egress-isolated
//! pods, so connection tracking is exercised too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use policy::compile::{Compiler, Scope, Tables, diff_tables};
use policy::eval::{Endpoint, evaluate};
use policy::manifest::{Object, parse_str};
use policy::{Cluster, ObjectKey, Protocol};
use testbed::{Testbed, probe, require_root};
use zt_ebpf::loader::{AyaMaps, PodLinks, apply_diff, attach_pod, load_programs};

fn objects(dirs: &[&str]) -> Vec<Object> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut out = Vec::new();
    for dir in dirs {
        let mut files: Vec<_> = fs::read_dir(root.join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let parsed = parse_str(&f.display().to_string(), &fs::read_to_string(&f).unwrap());
            assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
            out.extend(parsed.objects.into_iter().map(|(_, o)| o));
        }
    }
    out
}

/// One node's loaded datapath (the object owns the maps and the links).
struct NodeDatapath {
    _bpf: aya::Ebpf,
    _maps: AyaMaps,
    _links: Vec<PodLinks>,
}

fn start_node(tb: &Testbed, node: usize, tables: Tables) -> NodeDatapath {
    let ifaces: BTreeMap<String, String> =
        tb.pods.iter().filter(|p| p.node == node).map(|p| (p.key.clone(), p.host_if.clone())).collect();
    tb.nodes[node]
        .ns
        .run(move || {
            let mut bpf = aya::Ebpf::load(zt_ebpf::OBJECT).unwrap();
            load_programs(&mut bpf).unwrap();
            let mut maps = AyaMaps::take(&mut bpf).unwrap();
            let index: BTreeMap<String, u32> = ifaces
                .iter()
                .map(|(k, ifname)| (k.clone(), nix::net::if_::if_nametoindex(ifname.as_str()).unwrap()))
                .collect();
            let diff = diff_tables(&Tables::default(), &tables);
            apply_diff(&mut maps, &diff, &|pod: &ObjectKey| index.get(&pod.to_string()).copied(), &|_| None).unwrap();
            let links = ifaces.values().map(|ifname| attach_pod(&mut bpf, ifname).unwrap()).collect();
            NodeDatapath { _bpf: bpf, _maps: maps, _links: links }
        })
        .unwrap()
}

#[test]
fn seed_scenarios_on_real_traffic_match_the_evaluator() {
    if !require_root("seed_scenarios_on_real_traffic_match_the_evaluator") {
        return;
    }
    let objs = objects(&["workload", "policies"]);
    let cluster = Cluster::from_objects(objs);
    let node_names = ["node-1", "node-2"];
    let mut tb = Testbed::new(&node_names).unwrap();
    for pod in cluster.pods() {
        let node = node_names.iter().position(|n| Some(*n) == pod.node.as_deref()).unwrap();
        let IpAddr::V4(ip) = pod.ips[0] else { panic!("v4 workload") };
        tb.add_pod(&pod.key.to_string(), node, ip).unwrap();
    }
    let external = Ipv4Addr::new(203, 0, 113, 10);
    tb.add_external(external).unwrap();
    for p in tb.pods.iter().chain(tb.external.iter()) {
        probe::serve(&p.ns, &[80, 6379], &[53]).unwrap();
    }

    let _datapaths: Vec<NodeDatapath> = node_names
        .iter()
        .enumerate()
        .map(|(i, n)| start_node(&tb, i, Compiler::from_cluster(Scope::Node(n.to_string()), &cluster).tables().clone()))
        .collect();

    // Every pod and the external host against every other, on TCP 80,
    // TCP 6379 and UDP 53, concurrently (a dropped probe costs a timeout).
    let mut cases = Vec::new();
    let ends: Vec<(String, Ipv4Addr)> =
        tb.pods.iter().map(|p| (p.key.clone(), p.ip)).chain([("external".to_string(), external)]).collect();
    for (from, _) in &ends {
        for (to, to_ip) in &ends {
            if from == to {
                continue;
            }
            for (port, proto) in [(80, Protocol::Tcp), (6379, Protocol::Tcp), (53, Protocol::Udp)] {
                cases.push((from.clone(), to.clone(), *to_ip, port, proto));
            }
        }
    }
    let endpoint = |key: &str| match key {
        "external" => Endpoint::Ip(IpAddr::V4(external)),
        k => Endpoint::Pod(k.parse().unwrap()),
    };
    let mut failures = Vec::new();
    let (mut allowed, mut denied) = (0, 0);
    for chunk in cases.chunks(96) {
        let handles: Vec<_> = chunk
            .iter()
            .map(|(from, to, to_ip, port, proto)| {
                let ns_name =
                    tb.pods.iter().chain(tb.external.iter()).find(|p| &p.key == from).unwrap().ns.name().to_string();
                let (to_ip, port, proto) = (*to_ip, *port, *proto);
                let h = std::thread::spawn(move || {
                    let addr = SocketAddr::from((to_ip, port));
                    match proto {
                        Protocol::Udp => probe::udp(&ns_name, addr),
                        _ => probe::tcp(&ns_name, addr),
                    }
                });
                (from.clone(), to.clone(), port, proto, h)
            })
            .collect();
        for (from, to, port, proto, h) in handles {
            let got = h.join().unwrap();
            let want = evaluate(&cluster, &endpoint(&from), &endpoint(&to), port, proto).unwrap().allowed();
            if got != want {
                failures.push(format!("{from} -> {to} {port}/{proto}: datapath {got}, evaluator {want}"));
            }
            if want { allowed += 1 } else { denied += 1 }
        }
    }
    eprintln!("{} probes: {allowed} allowed, {denied} denied by the evaluator", cases.len());
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    assert!(allowed > 50 && denied > 50, "both outcomes exercised");
}
