//! Traffic measurements between namespaces for the benchmarks: iperf3
//! throughput, request/response latency, connection rate, HTTP requests/s
//! (wrk) and a process's CPU time and RSS.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

/// iperf3 throughput in Gb/s from `client_ns` to an `iperf3 -s` at `server`.
pub fn iperf(client_ns: &str, server: Ipv4Addr, parallel: u32) -> anyhow::Result<f64> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            client_ns,
            "iperf3",
            "-c",
            &server.to_string(),
            "-t",
            "4",
            "-J",
            "-P",
            &parallel.to_string(),
        ])
        .output()?;
    anyhow::ensure!(out.status.success(), "iperf3: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // "sum_received": {... "bits_per_second": N ...}
    let i = text.find("\"sum_received\"").context("iperf3 output")?;
    let j = text[i..].find("\"bits_per_second\"").context("iperf3 output")? + i;
    let num: String = text[j + 18..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    Ok(num.parse::<f64>()? / 1e9)
}

/// Request/response round trips of one byte on one connection: (p50, p99).
pub fn rr(client_ns: &str, to: SocketAddr, n: usize) -> anyhow::Result<(Duration, Duration)> {
    let times = rr_samples(client_ns, to, n)?;
    Ok(percentiles(times))
}

/// The round-trip times of `n` one-byte request/responses on one connection.
pub fn rr_samples(client_ns: &str, to: SocketAddr, n: usize) -> anyhow::Result<Vec<Duration>> {
    rr_samples_on(client_ns, to, n, None)
}

/// [`rr_samples`] with the client thread pinned to `cpu`: the scheduler's
/// placement of client and server otherwise moves a round trip between
/// ~5 µs (same CPU) and ~15 µs (two CPUs) from one run to the next.
pub fn rr_samples_on(client_ns: &str, to: SocketAddr, n: usize, cpu: Option<usize>) -> anyhow::Result<Vec<Duration>> {
    crate::netns::run_in(client_ns, move || -> anyhow::Result<Vec<Duration>> {
        if let Some(cpu) = cpu {
            pin_current_thread(cpu)?;
        }
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 1];
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            s.write_all(b"x")?;
            s.read_exact(&mut buf)?;
            times.push(t.elapsed());
        }
        Ok(times)
    })?
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// A one-byte echo server on `port` in `ns` whose connection threads run
/// on `cpu` (see [`rr_samples_on`]).
pub fn pinned_echo(ns: &crate::netns::Netns, port: u16, cpu: usize) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let listener = ns.run(move || std::net::TcpListener::bind(("0.0.0.0", port)))??;
    std::thread::spawn(move || {
        // Threads inherit the affinity of the thread that creates them.
        if pin_current_thread(cpu).is_err() {
            return;
        }
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// p50 and p99 of `times` (not empty).
pub fn percentiles(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let n = times.len();
    (times[n / 2], times[n * 99 / 100])
}

/// New connections per second (connect, echo one byte, close).
pub fn conns_per_sec(client_ns: &str, to: SocketAddr, secs: f64) -> anyhow::Result<f64> {
    crate::netns::run_in(client_ns, move || -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })?
}

/// HTTP/1.1 keep-alive requests per second measured by wrk (1 thread,
/// `connections` connections, `secs` seconds) from `client_ns` to `url`.
pub fn wrk(client_ns: &str, url: &str, connections: u32, secs: u32) -> anyhow::Result<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", client_ns, "wrk", "-t1", &format!("-c{connections}"), &format!("-d{secs}s"), url])
        .output()?;
    anyhow::ensure!(out.status.success(), "wrk: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("Requests/sec:")).context("wrk output")?;
    Ok(line.trim_start_matches("Requests/sec:").trim().parse()?)
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Resident set size of a process in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
