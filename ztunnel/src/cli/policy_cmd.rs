//! `ztunnel policy check` and `ztunnel policy matrix`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::{Context, bail};
use policy::eval::{Endpoint, evaluate};
use policy::matrix::{Matrix, default_endpoints, matrix};
use policy::{ObjectKey, Protocol};

use super::render::{dim, explain, paint};
use super::{CheckArgs, MatrixArgs, Output};
use crate::manifests::{Loaded, load};

/// Parses `80/TCP`, `53/udp`, `8080` (TCP) or `ICMP`.
pub fn parse_port(s: &str) -> anyhow::Result<(u16, Protocol)> {
    let (port, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, proto),
        None if s.chars().all(|c| c.is_ascii_digit()) => (s, "TCP"),
        None => ("0", s),
    };
    let protocol: Protocol = proto.parse().map_err(|e: String| anyhow::anyhow!("--port {s:?}: {e}"))?;
    let port: u16 = port.parse().with_context(|| format!("--port {s:?}: {port:?} is not a port number"))?;
    if protocol.has_ports() && port == 0 {
        bail!("--port {s:?}: {protocol} needs a port between 1 and 65535");
    }
    Ok((port, protocol))
}

fn parse_endpoint(s: &str, flag: &str) -> anyhow::Result<Endpoint> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Endpoint::Ip(ip));
    }
    let key: ObjectKey = s.parse().map_err(|e: String| anyhow::anyhow!("{flag}: {e}"))?;
    Ok(Endpoint::Pod(key))
}

/// Loads manifests and reports invalid ones on stderr; they are left out and
/// everything valid still counts.
fn load_reporting(paths: &[std::path::PathBuf]) -> Loaded {
    let loaded = load(paths);
    for e in &loaded.errors {
        eprintln!("warning: {e}");
    }
    if !loaded.errors.is_empty() {
        eprintln!("warning: {} invalid object(s) or file(s) ignored; the rest is used", loaded.errors.len());
    }
    loaded
}

/// The Service frontends of the manifests (invalid Service documents are
/// reported by [`load_reporting`]'s pass or here, and left out).
fn service_table(
    paths: &[std::path::PathBuf],
) -> std::collections::BTreeMap<crate::agent::services::Frontend, Vec<std::net::SocketAddr>> {
    use crate::agent::services::{Objects, ServiceKinds};
    use crate::agent::source::{Change, Kinds};
    let mut objects = Objects::default();
    for path in paths {
        for file in crate::manifests::manifest_files(path).unwrap_or_default() {
            let Ok(text) = std::fs::read_to_string(&file) else { continue };
            let parsed = ServiceKinds::parse(&file.display().to_string(), &text);
            for e in &parsed.errors {
                eprintln!("warning: {e}");
            }
            for o in parsed.objects {
                objects.apply(&Change::Apply(o));
            }
        }
    }
    objects.table()
}

/// `policy check` to a Service's cluster IP: the datapath sends each
/// connection to one ready backend (translated at the socket), so each is
/// judged as the pod it is. Exit 0 only when every backend is allowed.
fn check_service(
    args: &CheckArgs,
    cluster: &policy::Cluster,
    from: &Endpoint,
    frontend: crate::agent::services::Frontend,
    backends: &[std::net::SocketAddr],
    protocol: Protocol,
    color: bool,
) -> anyhow::Result<ExitCode> {
    let mut results = Vec::new();
    for b in backends {
        let to = Endpoint::Ip(b.ip());
        results.push((*b, evaluate(cluster, from, &to, b.port(), protocol)?));
    }
    let all = !results.is_empty() && results.iter().all(|(_, v)| v.allowed());
    match args.output {
        Output::Json => {
            let backends: Vec<serde_json::Value> =
                results.iter().map(|(b, v)| serde_json::json!({"backend": b.to_string(), "verdict": v})).collect();
            let out = serde_json::json!({
                "service": {"cluster_ip": frontend.ip.to_string(), "port": frontend.port},
                "allowed": all,
                "backends": backends,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Output::Text => {
            let label = port_label(frontend.port, protocol);
            let word = if all { "ALLOWED" } else { "DENIED" };
            if results.is_empty() {
                println!("{} {} -> {} {label}", paint(word, false, color), args.from, args.to);
                println!("  the Service has no ready endpoint: connections are refused");
            } else {
                println!(
                    "{} {} -> {} {label} (a Service: each connection goes to one of {} ready backend(s), judged as that pod)",
                    paint(word, all, color),
                    args.from,
                    args.to,
                    results.len()
                );
            }
            for (b, v) in &results {
                let name = cluster.pod_by_ip(b.ip()).map_or_else(|| b.ip().to_string(), |p| p.key.to_string());
                println!(
                    "  backend {name} ({b}): {}",
                    paint(if v.allowed() { "allowed" } else { "denied" }, v.allowed(), color)
                );
                println!("    egress  ({}): {}", args.from, explain(&v.egress));
                println!("    ingress ({name}): {}", explain(&v.ingress));
            }
        }
    }
    Ok(if all { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `policy check`: exit 0 when allowed, 1 when denied.
pub fn check(args: &CheckArgs, color: bool) -> anyhow::Result<ExitCode> {
    let (port, protocol) = parse_port(&args.port)?;
    let from = parse_endpoint(&args.from, "--from")?;
    let to = parse_endpoint(&args.to, "--to")?;
    let cluster = load_reporting(&args.sources.paths).cluster();
    if let Endpoint::Ip(ip) = to
        && matches!(protocol, Protocol::Tcp | Protocol::Udp)
    {
        let number = if protocol == Protocol::Tcp { crate::agent::services::TCP } else { crate::agent::services::UDP };
        let frontend = crate::agent::services::Frontend { ip, port, protocol: number };
        if let Some(backends) = service_table(&args.sources.paths).get(&frontend) {
            return check_service(args, &cluster, &from, frontend, backends, protocol, color);
        }
    }
    let verdict = evaluate(&cluster, &from, &to, port, protocol)?;
    match args.output {
        Output::Json => {
            /// The verdict, and which side's denial would only be reported
            /// (its namespace is in policy audit mode).
            #[derive(serde::Serialize)]
            struct Checked<'a> {
                #[serde(flatten)]
                verdict: &'a policy::Verdict,
                egress_audited: bool,
                ingress_audited: bool,
            }
            let audited = |e: &policy::Endpoint| audited_namespace(&cluster, e).is_some();
            let out = Checked { verdict: &verdict, egress_audited: audited(&from), ingress_audited: audited(&to) };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Output::Text => {
            let word = if verdict.allowed() { "ALLOWED" } else { "DENIED" };
            println!(
                "{} {} -> {} {}",
                paint(word, verdict.allowed(), color),
                args.from,
                args.to,
                port_label(port, protocol)
            );
            println!("  egress  ({}): {}", args.from, explain(&verdict.egress));
            println!("  ingress ({}): {}", args.to, explain(&verdict.ingress));
            for (side, endpoint) in [(&verdict.egress, &from), (&verdict.ingress, &to)] {
                if let Some(ns) = audited_namespace(&cluster, endpoint).filter(|_| !side.allowed()) {
                    println!(
                        "  note: namespace {ns} is in policy audit mode ({}=true): this denial is reported, not enforced",
                        policy::cluster::POLICY_AUDIT_LABEL
                    );
                }
            }
        }
    }
    Ok(if verdict.allowed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The namespace of a pod endpoint, when that namespace is in policy audit
/// mode (its side's denials are then reported, not enforced).
fn audited_namespace(cluster: &policy::Cluster, e: &policy::Endpoint) -> Option<String> {
    let ns = match e {
        policy::Endpoint::Pod(k) => k.namespace.to_string(),
        policy::Endpoint::Ip(ip) => cluster.pod_by_ip(*ip)?.key.namespace.to_string(),
    };
    cluster.policy_audited(&ns).then_some(ns)
}

fn port_label(port: u16, protocol: Protocol) -> String {
    if protocol.has_ports() { format!("{port}/{protocol}") } else { protocol.to_string() }
}

/// `policy matrix`.
pub fn matrix_cmd(args: &MatrixArgs, color: bool) -> anyhow::Result<ExitCode> {
    let ports = args.ports.iter().map(|p| parse_port(p)).collect::<anyhow::Result<Vec<_>>>()?;
    let cluster = load_reporting(&args.sources.paths).cluster();
    let endpoints = default_endpoints(&cluster, &args.external);
    let matrices =
        ports.iter().map(|(port, proto)| matrix(&cluster, &endpoints, *port, *proto)).collect::<Result<Vec<_>, _>>()?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&matrices)?),
        Output::Text => {
            for m in &matrices {
                print!("{}", render_matrix(m, color));
            }
            let audited: Vec<&str> =
                cluster.namespace_names().into_iter().filter(|ns| cluster.policy_audited(ns)).collect();
            if !audited.is_empty() {
                println!(
                    "note: in policy audit mode ({}=true), so their pods' denials are reported, not enforced: {}",
                    policy::cluster::POLICY_AUDIT_LABEL,
                    audited.join(", ")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Renders a matrix as a table: rows are sources, numbered columns are
/// destinations (the same list).
pub fn render_matrix(m: &Matrix, color: bool) -> String {
    let mut out = String::new();
    let n = m.endpoints.len();
    let allowed = m.cells.iter().flatten().filter(|c| c.allowed).count();
    let _ = writeln!(
        out,
        "Reachability on {} ({} of {} pairs allowed; rows: from, columns: to)",
        port_label(m.port, m.protocol),
        allowed,
        n * n
    );
    let width = m.endpoints.iter().map(String::len).max().unwrap_or(0);
    let num = n.to_string().len();
    let mut header = format!("{:>num$}  {:width$} ", "", "");
    for j in 0..n {
        let _ = write!(header, "{:>3}", j + 1);
    }
    let _ = writeln!(out, "{}", dim(&header, color));
    for (i, name) in m.endpoints.iter().enumerate() {
        let _ = write!(out, "{:>num$}  {:width$} ", i + 1, name);
        for cell in &m.cells[i] {
            let mark = if cell.allowed { paint("  ✓", true, color) } else { paint("  ✗", false, color) };
            out.push_str(&mark);
        }
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_forms() {
        assert_eq!(parse_port("80/TCP").unwrap(), (80, Protocol::Tcp));
        assert_eq!(parse_port("53/udp").unwrap(), (53, Protocol::Udp));
        assert_eq!(parse_port("8080").unwrap(), (8080, Protocol::Tcp));
        assert_eq!(parse_port("icmp").unwrap(), (0, Protocol::Icmp));
        assert!(parse_port("0/TCP").is_err());
        assert!(parse_port("80/QUIC").is_err());
        assert!(parse_port("x/TCP").is_err());
    }
}
