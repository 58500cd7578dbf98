//! Datapath benchmark: the cost of the classifiers on real traffic between
//! two pods on two nodes, measured in one run against a baseline without
//! programs.
//!
//! Modes: (a) no programs; (b) programs with one policy selecting both pods;
//! (c) programs with the generated 1,000-namespace cluster (10,000 policies,
//! 50,000 pods' addresses and identities in the maps) plus the same pods.
//! Per mode: iperf3 single stream and `-P 4` throughput, request/response
//! round trips (1-byte echo, p50/p99) and new TCP connections per second.
//! Prints ratios against (a). Needs root and iperf3 (`benches/datapath.sh`
//! installs it).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use policy::compile::{Compiler, Scope, Tables, diff_tables};
use policy::labels::Selector;
use policy::model::{NamedPort, NetworkPolicy, ObjectKey, Pod, Protocol, Rule};
use policy::{Cluster, Object};
use testbed::perf::{conns_per_sec, iperf, percentiles, pinned_echo, rr_samples_on};
use testbed::{Testbed, probe, require_root};
use zt_ebpf::loader::{AyaMaps, MapWriter, PodLinks, apply_diff, attach_pod, detach_pod, load_programs};

/// One node's programs and maps, loaded with a mode's tables; attached to
/// the node's pod interfaces only while that mode is measured.
struct Loaded {
    bpf: aya::Ebpf,
    _maps: AyaMaps,
    ifaces: Vec<String>,
    links: Vec<PodLinks>,
}

fn pod(ns: &str, name: &str, ip: Ipv4Addr, node: &str) -> Pod {
    Pod {
        key: ObjectKey::new(ns, name),
        labels: [("app".to_string(), name.to_string())].into(),
        ips: vec![ip.into()],
        node: Some(node.into()),
        service_account: "default".into(),
        named_ports: vec![NamedPort { name: "iperf".into(), protocol: Protocol::Tcp, port: 5201 }],
        host_network: false,
    }
}

fn load(tb: &Testbed, node: usize, tables: Tables) -> anyhow::Result<Loaded> {
    let ifaces: Vec<(String, String)> =
        tb.pods.iter().filter(|p| p.node == node).map(|p| (p.key.clone(), p.host_if.clone())).collect();
    tb.nodes[node].ns.run(move || -> anyhow::Result<Loaded> {
        let mut bpf = aya::Ebpf::load(zt_ebpf::OBJECT)?;
        load_programs(&mut bpf)?;
        let mut maps = AyaMaps::take(&mut bpf)?;
        let index: std::collections::BTreeMap<String, u32> = ifaces
            .iter()
            .map(|(k, i)| Ok((k.clone(), nix::net::if_::if_nametoindex(i.as_str())?)))
            .collect::<anyhow::Result<_>>()?;
        apply_diff(
            &mut maps,
            &diff_tables(&Tables::default(), &tables),
            &|p| index.get(&p.to_string()).copied(),
            &|_| None,
        )?;
        Ok(Loaded { bpf, _maps: maps, ifaces: ifaces.into_iter().map(|(_, i)| i).collect(), links: Vec::new() })
    })?
}

/// An Ethernet + IPv4 + TCP packet with `flags`.
fn tcp_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    p.extend_from_slice(&ip);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = flags;
    p.extend_from_slice(&tcp);
    p
}

/// Per-packet cost of the classifiers (BPF_PROG_TEST_RUN, averaged over a
/// million runs each) with `tables` loaded, as the client pod's programs:
/// an established flow's packet leaving the pod, its reply arriving, and a
/// new flow's SYN (policy lookups, conntrack insert, event). Steadier than
/// the network measurements: no scheduler, no other traffic.
fn per_packet(tables: &Tables, client: Ipv4Addr, server: Ipv4Addr) -> anyhow::Result<[(&'static str, f64); 3]> {
    use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
    let mut bpf = aya::Ebpf::load(zt_ebpf::OBJECT)?;
    load_programs(&mut bpf)?;
    let mut maps = AyaMaps::take(&mut bpf)?;
    apply_diff(&mut maps, &diff_tables(&Tables::default(), tables), &|_| None, &|_| None)?;
    let (id, info) =
        tables.endpoints.iter().find(|(_, e)| e.pod.to_string() == "bench/client").context("client endpoint")?;
    // Test runs see the loopback device (ifindex 1) as the packet's.
    maps.put_endpoint(1, zt_ebpf::maps::endpoint(*id, info))?;
    let run = |name: &str, pkt: &[u8], repeat: u32| -> anyhow::Result<f64> {
        let prog: &SchedClassifier = bpf.program(name).context("program")?.try_into()?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(pkt);
        opts.repeat = repeat;
        let r = prog.test_run(opts)?;
        anyhow::ensure!(r.return_value == 0, "{name}: verdict {} (expected allow)", r.return_value);
        Ok(r.duration.as_nanos() as f64)
    };
    let (from, to) = (zt_ebpf::programs::FROM_POD, zt_ebpf::programs::TO_POD);
    let syn = tcp_packet(client, 40000, server, 80, 0x02);
    run(from, &syn, 1)?;
    let out = run(from, &tcp_packet(client, 40000, server, 80, 0x10), 1_000_000)?;
    let back = run(to, &tcp_packet(server, 80, client, 40000, 0x10), 1_000_000)?;
    let new = run(from, &syn, 1_000_000)?;
    Ok([("established, leaving the pod", out), ("established, reply arriving", back), ("new flow (SYN)", new)])
}

/// Attaches (`on`) or detaches a node's loaded programs.
fn switch(tb: &Testbed, node: usize, mut l: Loaded, on: bool) -> anyhow::Result<Loaded> {
    tb.nodes[node].ns.run(move || -> anyhow::Result<Loaded> {
        if on {
            l.links = l.ifaces.iter().map(|i| attach_pod(&mut l.bpf, i)).collect::<Result<Vec<_>, _>>()?;
        } else {
            for links in std::mem::take(&mut l.links) {
                detach_pod(&mut l.bpf, links)?;
            }
        }
        Ok(l)
    })?
}

struct Measured {
    name: &'static str,
    single: f64,
    multi: f64,
    p50: Duration,
    p99: Duration,
    cps: f64,
}

/// The pinned echo server for round trips (CPU 1; the client runs on 0).
const RR_PORT: u16 = 81;

/// One round of one mode; the round trips' samples are kept for pooling.
struct Round {
    single: f64,
    multi: f64,
    rr: Vec<Duration>,
    cps: f64,
}

fn measure(name: &'static str, client: &str, server: Ipv4Addr) -> anyhow::Result<Round> {
    let echo = SocketAddr::from((server, 80));
    let single = iperf(client, server, 1)?;
    let multi = iperf(client, server, 4)?;
    // Round trips against a second echo server, client and server pinned
    // to different CPUs: the same placement in every mode and round.
    let rr = rr_samples_on(client, SocketAddr::from((server, RR_PORT)), 10_000, Some(0))?;
    let cps = conns_per_sec(client, echo, 2.0)?;
    if std::env::var("ZT_BENCH_DEBUG").is_ok() {
        let out = Command::new("ip")
            .args(["netns", "exec", client, "nstat", "-az", "TcpExtTCPSynRetrans", "TcpRetransSegs", "TcpActiveOpens"])
            .output()?;
        eprintln!("{name}: {}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(Round { single, multi, rr, cps })
}

fn main() -> anyhow::Result<()> {
    if !require_root("datapath benchmark") {
        return Ok(());
    }
    let (client_ip, server_ip) = (Ipv4Addr::new(10, 244, 1, 50), Ipv4Addr::new(10, 244, 2, 50));
    let mut tb = Testbed::new(&["bench-1", "bench-2"])?;
    tb.add_pod("bench/client", 0, client_ip)?;
    tb.add_pod("bench/server", 1, server_ip)?;
    let server_ns = tb.pod("bench/server").context("server")?.ns.name().to_string();
    let client_ns = tb.pod("bench/client").context("client")?.ns.name().to_string();
    probe::serve(&tb.pod("bench/server").context("server")?.ns, &[80], &[])?;
    let server_cpu = usize::from(std::thread::available_parallelism().map_or(1, usize::from) > 1);
    pinned_echo(&tb.pod("bench/server").context("server")?.ns, RR_PORT, server_cpu)?;
    // The connection-rate loop leaves thousands of TIME_WAIT sockets; let
    // the client reuse them and widen its port range, or each later mode
    // would measure the kernel's ephemeral-port search, not the datapath.
    let client_pod = &tb.pod("bench/client").context("client")?.ns;
    client_pod.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    client_pod.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    // Killed on every way out (a guard), also on an early return or error.
    let _iperf_srv = testbed::cluster::Proc(
        Command::new("ip")
            .args(["netns", "exec", &server_ns, "iperf3", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));

    let ours = [
        Object::Pod(pod("bench", "client", client_ip, "bench-1")),
        Object::Pod(pod("bench", "server", server_ip, "bench-2")),
        Object::NetworkPolicy(NetworkPolicy {
            key: ObjectKey::new("bench", "allow"),
            pod_selector: Selector::everything(),
            ingress: Some(vec![Rule::default()]),
            egress: Some(vec![Rule::default()]),
        }),
    ];
    let tables =
        |cluster: &Cluster, node: &str| Compiler::from_cluster(Scope::Node(node.into()), cluster).tables().clone();

    // The three modes, interleaved over rounds (drift on a shared VM hits
    // every mode alike).
    let small = Cluster::from_objects(ours.iter().cloned());
    let mut objs = ztunnel_benches::cluster(ztunnel_benches::Scale::TARGET);
    objs.extend(ours.iter().cloned());
    let big = Cluster::from_objects(objs);
    let small_tables = (tables(&small, "bench-1"), tables(&small, "bench-2"));
    let big_tables = (tables(&big, "bench-1"), tables(&big, "bench-2"));
    eprintln!(
        "(c) maps per node: {} ipcache entries, {} identities",
        big_tables.0.ipcache.len(),
        big_tables.0.identities.len()
    );
    let mut micro = Vec::new();
    for (name, t) in [("(b)", &small_tables.0), ("(c)", &big_tables.0)] {
        micro.push((name, per_packet(t, client_ip, server_ip)?));
    }
    for (name, m) in &micro {
        for (what, ns) in m {
            println!("per packet {name} {what:<30} {ns:>6.0} ns");
        }
    }
    if std::env::var("ZT_BENCH_ONLY").is_ok_and(|o| o == "micro") {
        return Ok(());
    }
    let rounds: usize = std::env::var("ZT_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let names = ["(a) no programs", "(b) programs, 1 policy", "(c) programs, 10k policies"];
    // Both program sets are loaded once, with their tables; a mode switch
    // only attaches or detaches (milliseconds), so the modes interleave
    // finely and each round rotates which mode goes first.
    let mut loaded: Vec<Option<(Loaded, Loaded)>> = vec![
        None,
        Some((load(&tb, 0, small_tables.0.clone())?, load(&tb, 1, small_tables.1.clone())?)),
        Some((load(&tb, 0, big_tables.0.clone())?, load(&tb, 1, big_tables.1.clone())?)),
    ];
    let mut runs: Vec<Vec<Round>> = (0..3).map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..3 {
            let i = (round + k) % 3;
            if let Some((a, b)) = loaded[i].take() {
                loaded[i] = Some((switch(&tb, 0, a, true)?, switch(&tb, 1, b, true)?));
            }
            std::thread::sleep(Duration::from_millis(200));
            runs[i].push(measure(names[i], &client_ns, server_ip)?);
            if let Some((a, b)) = loaded[i].take() {
                loaded[i] = Some((switch(&tb, 0, a, false)?, switch(&tb, 1, b, false)?));
            }
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let results: Vec<Measured> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // Round-trip percentiles over every round's samples pooled.
            let (p50, p99) = percentiles(r.iter().flat_map(|m| m.rr.iter().copied()).collect());
            Measured {
                name: names[i],
                single: med(&mut r.iter().map(|m| m.single).collect()),
                multi: med(&mut r.iter().map(|m| m.multi).collect()),
                p50,
                p99,
                cps: med(&mut r.iter().map(|m| m.cps).collect()),
            }
        })
        .collect();

    let base = &results[0];
    println!(
        "datapath benchmark: pod to pod across two nodes (veth + node link), {rounds} interleaved rounds (throughput and conn/s: medians; round trips: pooled percentiles)"
    );
    println!(
        "{:<28} {:>12} {:>12} {:>10} {:>10} {:>12}",
        "mode", "1 stream", "4 streams", "rr p50", "rr p99", "conn/s"
    );
    for r in &results {
        println!(
            "{:<28} {:>7.2} Gb/s {:>7.2} Gb/s {:>8.1}µs {:>8.1}µs {:>12.0}",
            r.name,
            r.single,
            r.multi,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            r.cps
        );
    }
    for r in &results[1..] {
        println!(
            "{:<28} {:>11.1}% {:>11.1}% {:>9.1}% {:>9.1}% {:>11.1}%   (ratio to (a))",
            r.name,
            100.0 * r.single / base.single,
            100.0 * r.multi / base.multi,
            100.0 * r.p50.as_secs_f64() / base.p50.as_secs_f64(),
            100.0 * r.p99.as_secs_f64() / base.p99.as_secs_f64(),
            100.0 * r.cps / base.cps
        );
    }
    Ok(())
}
