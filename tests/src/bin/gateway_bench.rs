//! Ingress gateway benchmark: the ztunnel gateway against nginx configured
//! as a TLS-terminating reverse proxy, same certificate, same backend (a
//! separate nginx serving a short body), same client (`wrk`), measured in
//! the same run with the two proxies interleaved round by round.
//!
//! Measures keep-alive requests/s and p99 latency, and new connections per
//! second (`Connection: close`: a TCP and TLS handshake per request).
//! Prints the ratios ztunnel / nginx. Loopback only; no root needed.
//!
//! Environment: `ZT_BENCH_ROUNDS` (default 3), `ZT_BENCH_SECS` (default 10).

#![allow(clippy::print_stdout)] // a benchmark report

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use testbed::cluster::{Proc, until, ztunnel_bin};
use testbed::gateway::{Pki, service_yaml, tls_secret_yaml};

const BACKEND: &str = "127.0.9.2:8080";
const NGINX: &str = "127.0.9.3:8443";
const ZTUNNEL: &str = "127.0.9.1:8443";

fn env_num(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// An nginx master process, stopped with SIGTERM so its workers go too.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

fn nginx(dir: &Path, name: &str, body: &str) -> anyhow::Result<Nginx> {
    let d = dir.join(name);
    fs::create_dir_all(&d)?;
    let conf = format!(
        "worker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 8192; }}\nhttp {{\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n{body}\n}}\n",
        workers = if name == "backend" { 1 } else { 2 },
        d = d.display()
    );
    fs::write(d.join("nginx.conf"), conf)?;
    let child = Command::new("nginx")
        .args(["-p", &d.display().to_string(), "-c", &d.join("nginx.conf").display().to_string(), "-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(d.join("stderr.log"))?))
        .spawn()
        .context("starting nginx (apt install nginx-light)")?;
    Ok(Nginx(child))
}

struct Result {
    rps: f64,
    p99_ms: f64,
}

fn parse_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("us") {
        return v.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    if let Some(v) = s.strip_suffix("ms") {
        return v.parse().ok();
    }
    s.strip_suffix('s').and_then(|v| v.parse::<f64>().ok()).map(|v| v * 1000.0)
}

fn wrk(url: &str, secs: u32, extra: &[&str]) -> anyhow::Result<Result> {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency"])
        .args(extra)
        .arg(url)
        .output()
        .context("wrk (apt install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors: connect") {
        bail!("wrk against {url} reported errors:\n{text}");
    }
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.trim_start_matches("Requests/sec:").trim().parse().ok())
        .context("wrk Requests/sec")?;
    let p99_ms = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| parse_ms(l.trim_start().trim_start_matches("99%")))
        .context("wrk 99%")?;
    Ok(Result { rps, p99_ms })
}

/// CPU seconds used by `pid` and its children processes (nginx workers).
fn cpu_tree(pid: u32) -> f64 {
    let mut total = testbed::perf::cpu_seconds(pid).unwrap_or(0.0);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let parent = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
            if parent == Some(pid) {
                total += testbed::perf::cpu_seconds(child).unwrap_or(0.0);
            }
        }
    }
    total
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let rounds = env_num("ZT_BENCH_ROUNDS", 3);
    let secs = env_num("ZT_BENCH_SECS", 10);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let mut pki = Pki::new(&dir.join("pki"))?;
    let (cert, key) = pki.issue(&["bench.example.com"], 90)?;
    fs::write(dir.join("tls.crt"), &cert)?;
    fs::write(dir.join("tls.key"), &key)?;

    let _backend = nginx(
        dir,
        "backend",
        &format!(
            "  access_log off;\n  server {{ listen {BACKEND} backlog=4096; keepalive_requests 100000; location / {{ return 200 \"hello from the backend\\n\"; }} }}"
        ),
    )?;
    let nginx_proc = nginx(
        dir,
        "proxy",
        &format!(
            "  access_log {d}/proxy/access.log;\n  upstream backend {{ server {BACKEND}; keepalive 128; keepalive_requests 100000; }}\n  server {{\n    listen {NGINX} ssl http2 backlog=4096;\n    keepalive_requests 100000;\n    ssl_certificate {d}/tls.crt; ssl_certificate_key {d}/tls.key;\n    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m;\n    location / {{\n      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";\n      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host;\n    }}\n  }}",
            d = dir.display()
        ),
    )?;

    let m = dir.join("manifests");
    fs::create_dir_all(&m)?;
    fs::write(m.join("secret.yaml"), tls_secret_yaml("bench", "tls", &cert, &key))?;
    fs::write(m.join("svc.yaml"), service_yaml("bench", "backend", 80, 8080, &["127.0.9.2"]))?;
    fs::write(
        m.join("ingress.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bench, namespace: bench}\nspec:\n  ingressClassName: ztunnel\n  defaultBackend: {service: {name: backend, port: {number: 80}}}\n",
    )?;
    let child = Command::new(ztunnel_bin())
        .args(["gateway", "--local"])
        .arg(&m)
        .args(["--https", ZTUNNEL, "--no-http", "--admin", "127.0.9.1:15021", "--default-certificate", "bench/tls"])
        .arg("--access-log")
        .arg(std::env::var_os("ZT_BENCH_ACCESS_LOG").unwrap_or_else(|| dir.join("gateway-access.log").into()))
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(dir.join("gateway.log"))?))
        .spawn()?;
    let gateway_proc = Proc(child);
    let ready = until(Duration::from_secs(20), || {
        ["127.0.9.1:8443", "127.0.9.3:8443", BACKEND].iter().all(|a| std::net::TcpStream::connect(a).is_ok())
    });
    if !ready {
        bail!("servers did not start:\n{}", fs::read_to_string(dir.join("gateway.log")).unwrap_or_default());
    }
    // Warm up both (and check they answer 200).
    for addr in [ZTUNNEL, NGINX] {
        wrk(&format!("https://{addr}/"), 2, &[])?;
    }

    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = Vec::new();
    let (mut z_cpu, mut n_cpu): (Vec<f64>, Vec<f64>) = (vec![], vec![]);
    let (mut z_rps, mut n_rps, mut z_p99, mut n_p99, mut z_new, mut n_new) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        for (name, addr) in [("nginx", NGINX), ("ztunnel", ZTUNNEL)] {
            let pid = if name == "nginx" { nginx_proc.0.id() } else { gateway_proc.0.id() };
            let cpu0 = cpu_tree(pid);
            let keep = wrk(&format!("https://{addr}/"), secs, &[])?;
            // Proxy CPU per request: independent of how much CPU the VM
            // gave the run.
            let us_per_request = (cpu_tree(pid) - cpu0) * 1e6 / (keep.rps * f64::from(secs));
            let fresh = wrk(&format!("https://{addr}/"), secs, &["-H", "Connection: close"])?;
            println!(
                "round {round} {name:8} keep-alive {:>9.0} req/s p99 {:>6.2} ms cpu {us_per_request:>5.1} us/req | new connections {:>7.0}/s",
                keep.rps, keep.p99_ms, fresh.rps
            );
            if name == "nginx" {
                n_cpu.push(us_per_request)
            } else {
                z_cpu.push(us_per_request)
            }
            let (rps, p99, new) = if name == "nginx" {
                (&mut n_rps, &mut n_p99, &mut n_new)
            } else {
                (&mut z_rps, &mut z_p99, &mut z_new)
            };
            rps.push(keep.rps);
            p99.push(keep.p99_ms);
            new.push(fresh.rps);
        }
    }
    rows.push(("keep-alive requests/s", z_rps, n_rps));
    rows.push(("keep-alive p99 ms", z_p99, n_p99));
    rows.push(("new TLS connections/s", z_new, n_new));
    rows.push(("proxy CPU us/request", z_cpu, n_cpu));
    println!("\nmedian of {rounds} rounds ({secs} s each, wrk -t2 -c64, interleaved):");
    println!("{:24} {:>10} {:>10} {:>8}", "", "ztunnel", "nginx", "ratio");
    for (name, z, n) in rows {
        let (z, n) = (median(z), median(n));
        println!("{name:24} {z:>10.2} {n:>10.2} {:>7.2}x", z / n);
    }
    Ok(())
}
