//! Mesh benchmark: pod-to-pod traffic across two nodes directly and through
//! the two node proxies (capture, HBONE mTLS tunnel, delivery), measured in
//! the same run, interleaved. Per mode: iperf3 1 and 4 streams, 1-byte
//! request/response p50/p99, HTTP/1.1 keep-alive requests/s (wrk, 16
//! connections), new connections/s; for the mesh also agent CPU during the
//! single-stream transfer, and agent RSS idle and with 10,000 concurrent
//! idle tunnelled connections. Needs root, iperf3 and wrk
//! (`benches/mesh.sh` installs them). `mesh_bench serve` is the pod server.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use testbed::cluster::{
    Proc, admin_get, ca_init, ca_serve_args, example_manifests, mesh_agent_args, spawn_args, spawn_env, until,
};
use testbed::perf::{conns_per_sec, cpu_seconds, iperf, rr, rss_mib, wrk};
use testbed::{Testbed, require_root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// TCP echo on 80, a minimal HTTP/1.1 keep-alive responder on 8080.
fn serve() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async {
        let echo = tokio::net::TcpListener::bind("0.0.0.0:80").await?;
        let http = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
        tokio::spawn(async move {
            loop {
                // Accept errors (a connection reset before accept, fd
                // pressure) must not end the server.
                let Ok((mut s, _)) = echo.accept().await else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        loop {
            let Ok((mut s, _)) = http.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut pending = Vec::new();
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    let mut out = Vec::new();
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    }
                    if !out.is_empty() && s.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}

struct Measured {
    single: f64,
    multi: f64,
    p50: Duration,
    p99: Duration,
    http: f64,
    cps: f64,
    /// Agent CPU (both agents, % of one core) during the 1-stream transfer.
    cpu: f64,
}

fn measure(client: &str, server: Ipv4Addr, agents: &[u32]) -> anyhow::Result<Measured> {
    let echo = SocketAddr::from((server, 80));
    // ZT_BENCH_ONLY=cps (or rr, iperf, iperf4): one measurement, for
    // profiling.
    if let Ok(only) = std::env::var("ZT_BENCH_ONLY") {
        let mut m = Measured {
            single: 1.0,
            multi: 1.0,
            p50: Duration::from_micros(1),
            p99: Duration::from_micros(1),
            http: 1.0,
            cps: 1.0,
            cpu: 0.0,
        };
        match only.as_str() {
            "cps" => m.cps = conns_per_sec(client, echo, 10.0)?,
            "rr" => (m.p50, m.p99) = rr(client, echo, 200_000)?,
            // ZT_BENCH_ONLY=hold: keep each mode up for a minute, to poke
            // at by hand (`ip netns exec CLIENT_NS iperf3 -c SERVER`).
            "hold" => {
                eprintln!("holding: client namespace {client}, server {server} (iperf3 -s, echo on :80)");
                std::thread::sleep(Duration::from_secs(60));
            }
            "iperf4" => m.multi = iperf(client, server, 4)?,
            _ => m.single = iperf(client, server, 1)?,
        }
        return Ok(m);
    }
    let cpu0: f64 = agents.iter().filter_map(|p| cpu_seconds(*p)).sum();
    let t = Instant::now();
    let single = iperf(client, server, 1).context("iperf3, 1 stream")?;
    let cpu = if agents.is_empty() {
        0.0
    } else {
        100.0 * (agents.iter().filter_map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0) / t.elapsed().as_secs_f64()
    };
    let multi = iperf(client, server, 4).context("iperf3, 4 streams")?;
    let (p50, p99) = rr(client, echo, 20_000).context("request/response")?;
    let http = wrk(client, &format!("http://{server}:8080/"), 16, 4).context("wrk")?;
    let cps = conns_per_sec(client, echo, 3.0).context("connection rate")?;
    Ok(Measured { single, multi, p50, p99, http, cps, cpu })
}

struct Mesh<'a> {
    ns: &'a [String],
    /// The agents' log filter: their default (`warn`: no line per tunnel)
    /// unless ZT_AGENT_LOG says otherwise.
    log: String,
    m: String,
    d: String,
    root: &'a Path,
}

impl Mesh<'_> {
    fn start(&self) -> anyhow::Result<Vec<Proc>> {
        let nodes = ["node-1", "node-2"];
        let agents = (0..2)
            .map(|i| {
                let args = mesh_agent_args(&self.m, nodes[i], i, &self.d, None, "/dev/null");
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                spawn_env(&self.ns[i], &[("RUST_LOG", &self.log)], &args, &self.root.join(format!("{}.log", nodes[i])))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let ready = until(Duration::from_secs(30), || {
            (0..2).all(|i| admin_get(&self.ns[i], 15021, "/ready").starts_with("HTTP/1.0 200"))
        });
        if !ready {
            // The logs go with their temporary directory: show their ends.
            let tails: Vec<String> = nodes
                .iter()
                .map(|n| {
                    let log = std::fs::read_to_string(self.root.join(format!("{n}.log"))).unwrap_or_default();
                    let lines: Vec<&str> = log.lines().collect();
                    format!("--- {n}:\n{}", lines[lines.len().saturating_sub(15)..].join("\n"))
                })
                .collect();
            anyhow::bail!("agents not ready\n{}", tails.join("\n"));
        }
        Ok(agents)
    }

    /// Stops the agents and removes what they leave for their successors
    /// (the unknown-interface guard's nftables table), so the direct path
    /// is measured as on nodes without the agent.
    fn stop(&self, agents: Vec<Proc>) {
        drop(agents);
        for ns in self.ns {
            for family in ["inet", "bridge"] {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "exec", ns, "nft", "delete", "table", family, GUARD_TABLE])
                    .output();
            }
        }
    }
}

/// The agent's guard table (`agent::guard::TABLE` in the ztunnel binary).
const GUARD_TABLE: &str = "ztunnel_guard";

/// Opens `n` connections from `ns` to `to`, each proven by an echo, and
/// keeps them open while `f` runs.
fn hold_connections<R>(ns: &str, to: SocketAddr, n: usize, f: impl FnOnce() -> R) -> anyhow::Result<R> {
    let conns = testbed::netns::run_in(ns, move || -> anyhow::Result<Vec<TcpStream>> {
        use std::io::{Read, Write};
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let mut s =
                TcpStream::connect_timeout(&to, Duration::from_secs(5)).with_context(|| format!("connection {i}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).with_context(|| format!("echo on connection {i}"))?;
            v.push(s);
        }
        Ok(v)
    })??;
    let r = f();
    drop(conns);
    Ok(r)
}

/// Drops the agent binary's pages from the page cache, so that the code the
/// agents map is what a freshly deployed binary maps. The kernel maps
/// 64 KiB around every code page the agents touch from what is cached
/// ("fault-around"), so a binary just written by the linker or `cp` (all of
/// it cached) shows up to ~1.7 MB more resident code than one read from
/// disk — the same build measured 28.0 or 29.4 MiB with 10,000 tunnels
/// depending on this alone.
fn uncache_binary() {
    let bin = testbed::cluster::ztunnel_bin();
    let Ok(f) = std::fs::File::open(&bin) else { return };
    // Written pages must reach the disk before they can be dropped.
    let _ = f.sync_all();
    if let Err(e) = nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED) {
        eprintln!("could not drop {} from the page cache: {e}", bin.display());
    }
}

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        return serve();
    }
    if !require_root("mesh benchmark") {
        return Ok(());
    }
    uncache_binary();
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let manifests = example_manifests(root)?;
    let (server_ip, client_ip) = (Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 2, 10));
    let mut tb = Testbed::new(&["node-1", "node-2"])?;
    tb.add_pod("default/apiserver", 0, server_ip)?;
    tb.add_pod("default/frontend", 1, client_ip)?;
    let server_ns = tb.pod("default/apiserver").context("server")?.ns.name().to_string();
    let client_ns = tb.pod("default/frontend").context("client")?.ns.name().to_string();
    let client_pod = &tb.pod("default/frontend").context("client")?.ns;
    client_pod.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    client_pod.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    // The proxies open one delivery connection per tunnel from the node
    // namespace; the connection-rate loop leaves many in TIME_WAIT there
    // too, so the nodes get the same port reuse as the client pod.
    // The delivery sockets are transparent (bound to the client pod's
    // address), and their TIME_WAIT entries would capture forwarded packets
    // of a later *direct* connection with the same 4-tuple (TCP early demux)
    // when the modes alternate; the node namespaces keep no TIME_WAIT
    // entries for that reason (with the mesh always on, as in production,
    // the two kinds of connection never coexist).
    for n in &tb.nodes {
        n.ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        n.ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        n.ns.sysctl("net.ipv4.tcp_max_tw_buckets", "0")?;
    }
    let me = std::env::current_exe()?;
    let _server = Proc(
        Command::new("ip").args(["netns", "exec", &server_ns]).arg(&me).arg("serve").stdout(Stdio::null()).spawn()?,
    );
    // Killed on every way out (a guard), also on an error.
    let iperf_srv = Proc(
        Command::new("ip")
            .args(["netns", "exec", &server_ns, "iperf3", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));

    let ns: Vec<String> = tb.nodes.iter().map(|n| n.ns.name().to_string()).collect();
    let ca_dir = root.join("ca");
    ca_init(&ca_dir, &[])?;
    let log = std::env::var("ZT_AGENT_LOG").unwrap_or_else(|_| "warn".into());
    eprintln!("agents log at {log:?} (ZT_AGENT_LOG)");
    let mesh = Mesh { log, ns: &ns, m: manifests.display().to_string(), d: ca_dir.display().to_string(), root };
    let _ca = spawn_args(&ns[0], &ca_serve_args(&mesh.d, &mesh.m), &root.join("ca.log"))?;

    // ZT_BENCH_ONLY=mem: only the memory measurement.
    let mem_only = std::env::var("ZT_BENCH_ONLY").is_ok_and(|o| o == "mem");
    let rounds: usize =
        if mem_only { 0 } else { std::env::var("ZT_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3) };
    let (mut direct, mut meshed) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        eprintln!("round {}: direct", round + 1);
        direct.push(measure(&client_ns, server_ip, &[]).context("direct")?);
        eprintln!("round {}: mesh", round + 1);
        let agents = mesh.start()?;
        let pids: Vec<u32> = agents.iter().map(|a| a.0.id()).collect();
        meshed.push(measure(&client_ns, server_ip, &pids).context("mesh")?);
        mesh.stop(agents);
        std::thread::sleep(Duration::from_millis(300));
    }

    // Memory: idle, then with 10,000 concurrent idle tunnelled connections.
    let agents = mesh.start()?;
    let pids: Vec<u32> = agents.iter().map(|a| a.0.id()).collect();
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss: Vec<f64> = pids.iter().filter_map(|p| rss_mib(*p)).collect();
    let n_idle: usize = std::env::var("ZT_BENCH_IDLE_CONNS").ok().and_then(|r| r.parse().ok()).unwrap_or(10_000);
    let t = Instant::now();
    let (loaded_rss, idle_cpu) = hold_connections(&client_ns, SocketAddr::from((server_ip, 80)), n_idle, || {
        let opened = t.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        let cpu0: f64 = pids.iter().filter_map(|p| cpu_seconds(*p)).sum();
        std::thread::sleep(Duration::from_secs(3));
        let cpu = 100.0 * (pids.iter().filter_map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0) / 3.0;
        eprintln!("{n_idle} tunnelled connections opened in {opened:?}");
        for p in &pids {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            let mem: Vec<&str> = status.lines().filter(|l| l.starts_with("Rss")).collect();
            eprintln!("agent {p}: {}", mem.join(", ").split_whitespace().collect::<Vec<_>>().join(" "));
            // ZT_BENCH_SMAPS=DIR keeps each agent's memory map for a look at
            // which mappings the RSS is made of.
            if let Ok(dir) = std::env::var("ZT_BENCH_SMAPS") {
                let smaps = std::fs::read_to_string(format!("/proc/{p}/smaps")).unwrap_or_default();
                let _ = std::fs::write(Path::new(&dir).join(format!("agent-{p}.smaps")), smaps);
            }
        }
        (pids.iter().filter_map(|p| rss_mib(*p)).collect::<Vec<f64>>(), cpu)
    })?;
    // No unbounded growth: the same load again (ZT_BENCH_MEM_REPEATS times,
    // default 4), each once the one before has closed. The first rounds
    // leave a high-water mark (bursts of a thousand opens or closes on one
    // pooled connection grow HTTP/2's per-connection stream table and frame
    // queues, which keep their capacity while the connection stays pooled);
    // after that the peaks must stay level.
    let repeats: usize = std::env::var("ZT_BENCH_MEM_REPEATS").ok().and_then(|r| r.parse().ok()).unwrap_or(4).max(2);
    let mut again_rss: Vec<Vec<f64>> = Vec::new();
    for _ in 0..repeats {
        std::thread::sleep(Duration::from_secs(2));
        again_rss.push(hold_connections(&client_ns, SocketAddr::from((server_ip, 80)), n_idle, || {
            std::thread::sleep(Duration::from_secs(1));
            pids.iter().filter_map(|p| rss_mib(*p)).collect::<Vec<f64>>()
        })?);
    }
    mesh.stop(agents);
    drop(iperf_srv);

    let med = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let summarise = |r: &[Measured]| Measured {
        single: med(r.iter().map(|m| m.single).collect()),
        multi: med(r.iter().map(|m| m.multi).collect()),
        p50: Duration::from_secs_f64(med(r.iter().map(|m| m.p50.as_secs_f64()).collect())),
        p99: Duration::from_secs_f64(med(r.iter().map(|m| m.p99.as_secs_f64()).collect())),
        http: med(r.iter().map(|m| m.http).collect()),
        cps: med(r.iter().map(|m| m.cps).collect()),
        cpu: med(r.iter().map(|m| m.cpu).collect()),
    };
    if mem_only {
        println!(
            "RSS per agent idle {idle_rss:?} MiB; with {n_idle} idle tunnels {loaded_rss:?} MiB; the same load {} more times {again_rss:?} MiB",
            again_rss.len()
        );
        return Ok(());
    }
    let (a, b) = (summarise(&direct), summarise(&meshed));
    println!("mesh benchmark: pod to pod across two nodes, median of {rounds} interleaved rounds");
    println!(
        "{:<24} {:>12} {:>12} {:>10} {:>10} {:>12} {:>10}",
        "mode", "1 stream", "4 streams", "rr p50", "rr p99", "HTTP req/s", "conn/s"
    );
    for (name, m) in [("direct", &a), ("through two proxies", &b)] {
        println!(
            "{:<24} {:>7.2} Gb/s {:>7.2} Gb/s {:>8.1}µs {:>8.1}µs {:>12.0} {:>10.0}",
            name,
            m.single,
            m.multi,
            m.p50.as_secs_f64() * 1e6,
            m.p99.as_secs_f64() * 1e6,
            m.http,
            m.cps
        );
    }
    let ok = |b: bool| if b { "ok" } else { "MISSED" };
    let r1 = b.single / a.single;
    let r4 = b.multi / a.multi;
    let rp50 = b.p50.as_secs_f64() / a.p50.as_secs_f64();
    let rhttp = b.http / a.http;
    let rcps = b.cps / a.cps;
    println!("ratios (mesh / direct; goal):");
    println!("  1 stream      {r1:.2}x  (>= 0.33)  {}", ok(r1 >= 0.33));
    println!("  4 streams     {r4:.2}x  (>= 0.33)  {}", ok(r4 >= 0.33));
    println!("  rr p50        {rp50:.2}x  (<= 2.6)   {}", ok(rp50 <= 2.6));
    println!("  rr p99        {:.2}x", b.p99.as_secs_f64() / a.p99.as_secs_f64());
    println!("  HTTP req/s    {rhttp:.2}x  (>= 0.32)  {}", ok(rhttp >= 0.32));
    println!("  conn/s        {rcps:.2}x  (>= 0.28)  {}", ok(rcps >= 0.28));
    // Each round's own ratios (direct and mesh of the same round), to show
    // the spread behind the medians.
    let per_round = |f: &dyn Fn(&Measured) -> f64| -> String {
        direct.iter().zip(&meshed).map(|(d, m)| format!("{:.2}", f(m) / f(d))).collect::<Vec<_>>().join(" ")
    };
    println!(
        "  per round: 1 stream {} | 4 streams {} | rr p50 {} | HTTP {} | conn/s {}",
        per_round(&|m| m.single),
        per_round(&|m| m.multi),
        per_round(&|m| m.p50.as_secs_f64()),
        per_round(&|m| m.http),
        per_round(&|m| m.cps)
    );
    println!("agents: CPU during 1-stream transfer {:.0}% of a core (both agents)", b.cpu);
    let max_idle = idle_rss.iter().copied().fold(0.0, f64::max);
    let max_loaded = loaded_rss.iter().chain(again_rss.iter().flatten()).copied().fold(0.0, f64::max);
    println!(
        "  RSS per agent idle {:?} MiB; with {n_idle} idle tunnels {:?} MiB (goal <= 30 MB)  {}; CPU with them idle {idle_cpu:.1}%",
        idle_rss.iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>(),
        loaded_rss.iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>(),
        ok(max_loaded <= 30.0 * 1e6 / (1 << 20) as f64 && max_idle <= 30.0 * 1e6 / (1 << 20) as f64)
    );
    let round = |v: &[f64]| v.iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>();
    let (before, last) = (&again_rss[again_rss.len() - 2], &again_rss[again_rss.len() - 1]);
    let growth = last.iter().zip(before).map(|(b, a)| b - a).fold(f64::MIN, f64::max);
    println!(
        "  RSS with the same {n_idle} tunnels opened {} more times {:?} MiB (last two rounds differ by {growth:+.1} MiB)",
        again_rss.len(),
        again_rss.iter().map(|r| round(r)).collect::<Vec<_>>()
    );
    Ok(())
}
