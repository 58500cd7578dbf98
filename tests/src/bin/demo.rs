//! The local cluster-in-a-box demo (README command 1, via deploy/demo.sh).
//!
//! `demo up --ztunnel PATH`: removes a previous demo, builds two node
//! namespaces and the example workload's pods (real TCP/UDP servers in
//! each), starts the CA and one agent per node with the mesh, then walks
//! the seed NetworkPolicies step by step printing the observed reachability
//! matrix against the expected one, proves that cross-node traffic is
//! mutual TLS, serves an Ingress over HTTPS through the gateway pod into the
//! mesh, rotates the CA root during a running transfer, and leaves the
//! cluster running. `demo down` removes it. `demo serve` is the pods' server.

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use policy::eval::Endpoint;
use policy::manifest::parse_str;
use policy::matrix::matrix;
use policy::{Cluster, Protocol};
use testbed::cluster::{admin_get, ca_serve_args, mesh_agent_args, until};
use testbed::netns::run_in;
use testbed::{Testbed, probe};

const PREFIX: &str = "ztdemo";
const STATE: &str = "/tmp/ztunnel-demo";
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const TCP_PORTS: &str = "80,443,6379,8080";
const MARKER: &[u8] = b"ZT-DEMO-SECRET-PAYLOAD-7d1f";
/// Sent through the API server's Service (cluster IP).
const SERVICE_MARKER: &[u8] = b"ZT-DEMO-SERVICE-PAYLOAD-e29a";
/// The cluster IP of Service `default/api` (port 8080 -> the API server's 80).
const API_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
/// The Ingress gateway pod (namespace `ingress`, node-1).
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 50);
/// The HTTP port of the pods' demo backend (behind the Ingress).
const HTTP_PORT: u16 = 8000;

fn tty() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout())
}

fn paint(s: &str, code: &str) -> String {
    if tty() { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
}

fn heading(s: &str) {
    println!("\n{}", paint(&format!("==> {s}"), "1"));
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(),
        Some("down") => {
            down();
            println!("demo removed");
            Ok(())
        }
        Some("up") => {
            let zt = args.iter().position(|a| a == "--ztunnel").and_then(|i| args.get(i + 1)).map(PathBuf::from);
            let zt = zt.unwrap_or_else(|| root().join("target/release/ztunnel"));
            up(&fs::canonicalize(&zt).with_context(|| format!("{}", zt.display()))?)
        }
        _ => bail!("usage: demo up [--ztunnel PATH] | demo down | demo serve"),
    }
}

/// The pods' server: TCP echo on the demo ports, UDP echo on 53, and a
/// small HTTP server on 8000 (what the Ingress routes to).
fn serve() -> anyhow::Result<()> {
    testbed::gateway::http_backend(TcpListener::bind(("0.0.0.0", HTTP_PORT))?, "hello from the demo backend");
    for port in TCP_PORTS.split(',').filter_map(|p| p.parse::<u16>().ok()) {
        let l = TcpListener::bind(("0.0.0.0", port))?;
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }
    let u = UdpSocket::bind(("0.0.0.0", 53))?;
    let mut buf = [0u8; 512];
    loop {
        if let Ok((n, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(&buf[..n], from);
        }
    }
}

/// Removes a previous demo: processes, namespaces, bpffs, state.
fn down() {
    let _ = Command::new("pkill").args(["-f", STATE]).status();
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("pkill").args(["-9", "-f", STATE]).status();
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(&format!("{PREFIX}-")) {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    let _ = Command::new("umount").arg(format!("{STATE}/bpf")).stderr(Stdio::null()).status();
    let _ = fs::remove_dir_all(STATE);
}

fn spawn_bg(ns: &str, program: &Path, args: &[&str], log: &Path) -> anyhow::Result<()> {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(log)?))
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(())
}

fn up(zt: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(testbed::is_root(), "the demo needs root (network namespaces, BPF): run it with sudo");
    heading("removing any previous demo");
    down();
    let state = PathBuf::from(STATE);
    let manifests = state.join("manifests");
    fs::create_dir_all(&manifests)?;
    let examples = root().join("deploy/examples");
    for f in ["namespaces.yaml", "nodes.yaml", "pods.yaml"] {
        fs::copy(examples.join("workload").join(f), manifests.join(f))?;
    }
    let text = fs::read_to_string(manifests.join("pods.yaml"))?;
    let cluster = Cluster::from_objects(parse_str("pods.yaml", &text).objects.into_iter().map(|(_, o)| o));
    let pki = ingress_manifests(&state, &manifests)?;
    // A Service with a cluster IP: the agents translate it at the socket
    // (the cluster in a box has no kube-proxy).
    fs::write(
        manifests.join("services.yaml"),
        testbed::gateway::service_yaml("default", "api", 8080, 80, &["10.244.1.10"])
            .replace("spec:\n  ports:", &format!("spec:\n  clusterIP: {API_VIP}\n  ports:")),
    )?;

    heading("cluster in a box: 2 node namespaces, pods as namespaces, 1 external host");
    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::with_prefix(PREFIX, &nodes)?;
    let demo_bin = std::env::current_exe()?;
    for pod in cluster.pods() {
        let (Some(node), Some(IpAddr::V4(ip))) = (pod.node.as_deref(), pod.ips.first()) else { continue };
        let Some(n) = nodes.iter().position(|x| *x == node) else { continue };
        tb.add_pod(&pod.key.to_string(), n, *ip)?;
        println!("  {:<28} {:<14} on {node}", pod.key.to_string(), ip.to_string());
    }
    tb.add_pod("ingress/gateway", 0, GATEWAY_IP)?;
    println!("  {:<28} {:<14} on node-1 (the Ingress gateway)", "ingress/gateway", GATEWAY_IP.to_string());
    tb.add_external(EXTERNAL)?;
    println!("  {:<28} {:<14} outside the cluster", "external", EXTERNAL.to_string());
    for p in tb.pods.iter().chain(tb.external.iter()) {
        spawn_bg(
            p.ns.name(),
            &demo_bin,
            &["serve", "--tag", STATE],
            &state.join(format!("{}.serve.log", p.ns.name())),
        )?;
    }

    heading("CA and node agents (local mode, mesh on)");
    let ca_dir = state.join("ca");
    let out = Command::new(zt)
        .args(["ca", "init", "--dir"])
        .arg(&ca_dir)
        .args(["--node", "node-1", "--node", "node-2", "--min-propagation-secs", "2"])
        .output()?;
    anyhow::ensure!(out.status.success(), "ca init: {}", String::from_utf8_lossy(&out.stderr));
    let (d, m) = (ca_dir.to_str().unwrap_or(STATE).to_string(), manifests.to_str().unwrap_or(STATE).to_string());
    let ns: Vec<String> = tb.nodes.iter().map(|n| n.ns.name().to_string()).collect();
    let ca_args = ca_serve_args(&d, &m);
    spawn_bg(&ns[0], zt, &ca_args.iter().map(String::as_str).collect::<Vec<_>>(), &state.join("ca.log"))?;
    let bpf = state.join("bpf");
    fs::create_dir_all(&bpf)?;
    let _ = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpf).status();
    for (i, node) in nodes.iter().enumerate() {
        let flows = state.join(format!("{node}.flows.jsonl"));
        let pins = bpf.join(node);
        let args = mesh_agent_args(&m, node, i, &d, pins.to_str(), flows.to_str().unwrap_or(STATE));
        spawn_bg(&ns[i], zt, &args.iter().map(String::as_str).collect::<Vec<_>>(), &state.join(format!("{node}.log")))?;
    }
    let ready = until(Duration::from_secs(60), || {
        (0..2).all(|i| admin_get(&ns[i], 15021, "/ready").starts_with("HTTP/1.0 200"))
    });
    anyhow::ensure!(ready, "agents not ready; see {STATE}/node-*.log");
    for (i, node) in nodes.iter().enumerate() {
        let dump = admin_get(&ns[i], 15021, "/config_dump");
        let n = dump.matches("\"serial\"").count();
        println!("  {node}: ready, {n} workload certificate(s)   logs {STATE}/{node}.log");
    }

    let gw_ns = tb.pod("ingress/gateway").map(|p| p.ns.name().to_string()).unwrap_or_default();
    let gw_args = ["gateway", "--local", &m, "--https", "0.0.0.0:8443", "--http", "0.0.0.0:8081"];
    spawn_bg(&gw_ns, zt, &gw_args, &state.join("gateway.log"))?;

    encryption_proof(&tb, &ns, &state)?;
    ingress(&tb, &ns, &gw_ns, &pki, &state)?;
    walk_policies(&tb, &cluster, &manifests, &examples)?;
    rotation(&tb, zt, &ns, &d)?;
    unknown_pod(&mut tb, &ns)?;

    heading("the cluster keeps running");
    let front = tb.pod("default/frontend").map(|p| p.ns.name().to_string()).unwrap_or_default();
    println!("  explore:   sudo ip netns exec {front} bash      (pod default/frontend)");
    println!("             sudo ip netns exec {} curl -s 127.0.0.1:15021/metrics | grep ztunnel_", ns[0]);
    println!("             sudo ip netns exec {} curl -s 127.0.0.1:15021/config_dump", ns[0]);
    println!("             sudo {} ca status --dir {d}", zt.display());
    let ext = tb.external.as_ref().map(|e| e.ns.name().to_string()).unwrap_or_default();
    println!(
        "  ingress:   sudo ip netns exec {ext} curl --cacert {}/ingress-pki/ca.crt --resolve shop.example.com:8443:{GATEWAY_IP} https://shop.example.com:8443/",
        STATE
    );
    println!("  flow logs: {STATE}/node-1.flows.jsonl, {STATE}/node-2.flows.jsonl");
    println!("  policies:  add or remove files in {m} (agents apply them within a second)");
    println!("  teardown:  sudo ./deploy/demo.sh down   (running the demo again also starts afresh)");
    // Leave namespaces, processes and pins in place.
    std::mem::forget(tb);
    Ok(())
}

/// The Ingress objects: the gateway pod, a Service and EndpointSlice for
/// `default/web`'s HTTP server, a TLS Secret from a throwaway CA, and the
/// Ingress for `shop.example.com`. Returns the CA certificate's path.
fn ingress_manifests(state: &Path, manifests: &Path) -> anyhow::Result<PathBuf> {
    let mut pki = testbed::gateway::Pki::new(&state.join("ingress-pki"))?;
    let (cert, key) = pki.issue(&["shop.example.com"], 90)?;
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ingress, labels: {{name: ingress}}}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: gateway, namespace: ingress, labels: {{app: ztunnel-gateway}}}}\n\
         spec: {{nodeName: node-1, serviceAccountName: ztunnel-gateway, containers: [{{name: gateway, image: ztunnel}}]}}\n\
         status: {{phase: Running, podIP: {GATEWAY_IP}, podIPs: [{{ip: {GATEWAY_IP}}}]}}\n---\n{}---\n{}---\n\
         apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: shop, namespace: default}}\nspec:\n  ingressClassName: ztunnel\n\
         \x20 tls: [{{hosts: [shop.example.com], secretName: shop-tls}}]\n  rules:\n  - host: shop.example.com\n\
         \x20   http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n",
        testbed::gateway::service_yaml("default", "web", 80, HTTP_PORT, &["10.244.2.11"]),
        testbed::gateway::tls_secret_yaml("default", "shop-tls", &cert, &key),
    );
    fs::write(manifests.join("ingress.yaml"), yaml)?;
    Ok(pki.ca())
}

/// An external client reaches `default/web` (node-2) over HTTPS through
/// the gateway pod (node-1): TLS ends at the gateway, and its request to
/// the backend crosses the nodes inside the mesh under its own identity.
fn ingress(tb: &Testbed, ns: &[String], gw_ns: &str, ca: &Path, state: &Path) -> anyhow::Result<()> {
    heading("Ingress: HTTPS from outside the cluster, through the gateway pod, into the mesh");
    let ready = until(Duration::from_secs(30), || admin_get(gw_ns, 15021, "/ready").starts_with("HTTP/1.0 200"));
    anyhow::ensure!(ready, "gateway not ready; see {STATE}/gateway.log");
    let ext = tb.external.as_ref().map(|e| e.ns.name().to_string()).unwrap_or_default();
    let curl = |url: &str, extra: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &ext, "curl", "-sS", "--max-time", "10", "--cacert"])
            .arg(ca)
            .args(["--resolve", &format!("shop.example.com:8443:{GATEWAY_IP}")])
            .args(["--resolve", &format!("shop.example.com:8081:{GATEWAY_IP}")])
            .args(extra)
            .arg(url)
            .output()?;
        Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    println!(
        "  $ curl --cacert ingress-ca.crt https://shop.example.com:8443/cart   (from the external host {EXTERNAL})"
    );
    let body = curl("https://shop.example.com:8443/cart", &[])?;
    for l in body.lines() {
        println!("    {}", paint(l, "36"));
    }
    let served = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ip netns exec {ext} openssl s_client -connect {GATEWAY_IP}:8443 -servername shop.example.com -alpn h2 </dev/null 2>/dev/null | grep -E '^(subject|issuer)=|ALPN protocol'"
        ))
        .output()?;
    for l in String::from_utf8_lossy(&served.stdout).lines() {
        println!("  {}", paint(l.trim(), "2"));
    }
    let redirect =
        curl("http://shop.example.com:8081/cart", &["-o", "/dev/null", "-w", "%{http_code} -> %{redirect_url}"])?;
    println!("  plain HTTP: {redirect}");
    let metrics = admin_get(&ns[1], 15021, "/metrics");
    let gateway_id = "spiffe://cluster.local/ns/ingress/sa/ztunnel-gateway";
    let seen = metrics.lines().any(|l| l.contains("direction=\"inbound\"") && l.contains(gateway_id));
    println!(
        "  node-2 proxy received the gateway's request from {}: {}",
        paint(gateway_id, "36"),
        if seen { paint("yes", "32") } else { paint("no", "31") }
    );
    println!(
        "  the backend saw the gateway pod as its peer and the client in X-Forwarded-For; logs {}",
        state.join("gateway.log").display()
    );
    Ok(())
}

/// Sends a marker through a cross-node connection while capturing the node
/// link; shows the identities and that the payload never crossed in clear.
fn encryption_proof(tb: &Testbed, ns: &[String], state: &Path) -> anyhow::Result<()> {
    heading("proof: cross-node pod traffic is mutual TLS");
    let (Some(front), Some(api)) = (tb.pod("default/frontend"), tb.pod("default/apiserver")) else {
        bail!("example pods missing")
    };
    let pcap = state.join("link.pcap");
    let mut dump = Command::new("ip")
        .args(["netns", "exec", &ns[0], "tcpdump", "-i", "zt-link0", "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("tcpdump")?;
    std::thread::sleep(Duration::from_millis(800));
    let echo = |to: SocketAddr, marker: &'static [u8]| {
        run_in(front.ns.name(), move || {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            s.write_all(marker).ok()?;
            let mut back = vec![0u8; marker.len()];
            s.read_exact(&mut back).ok()?;
            Some(back == marker)
        })
    };
    let echoed = echo(SocketAddr::from((api.ip, 80)), MARKER)?;
    let via_service = echo(SocketAddr::from((API_VIP, 8080)), SERVICE_MARKER)?;
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").args(["-INT", &dump.id().to_string()]).status();
    let _ = dump.wait();
    println!(
        "  default/frontend ({}, node-2) -> default/apiserver ({}:80, node-1): echo {}",
        front.ip,
        api.ip,
        if echoed == Some(true) { paint("ok", "32") } else { paint("FAILED", "31") }
    );
    println!(
        "  default/frontend -> Service default/api ({API_VIP}:8080, no kube-proxy: translated at the socket to {}:80): echo {}",
        api.ip,
        if via_service == Some(true) { paint("ok", "32") } else { paint("FAILED", "31") }
    );
    let log = fs::read_to_string(state.join("node-1.log")).unwrap_or_default();
    if let Some(line) = log.lines().rev().find(|l| l.contains("tunnel closed") && l.contains(&front.ip.to_string())) {
        let id = line.split("peer_identity=").nth(1).and_then(|r| r.split(['}', ' ']).next()).unwrap_or("?");
        println!("  node-1 proxy accepted the tunnel from {} (source {})", paint(id, "36"), front.ip);
    }
    let captured = fs::read(&pcap).unwrap_or_default();
    let summary = Command::new("tcpdump").args(["-nn", "-r"]).arg(&pcap).output()?;
    let summary = String::from_utf8_lossy(&summary.stdout);
    let hbone = summary.lines().filter(|l| l.contains(".15008")).count();
    let direct = summary.lines().filter(|l| l.contains(&format!("{}.80", api.ip))).count();
    let clear = captured.windows(MARKER.len()).any(|w| w == MARKER)
        || captured.windows(SERVICE_MARKER.len()).any(|w| w == SERVICE_MARKER);
    println!(
        "  capture of the node link ({}): {hbone} packets on HBONE port 15008, {direct} pod-to-pod packets in clear",
        pcap.display()
    );
    for l in summary.lines().filter(|l| l.contains(".15008")).take(4) {
        println!("    {}", paint(l, "2"));
    }
    println!(
        "  payloads {:?} and {:?} in the capture: {}",
        String::from_utf8_lossy(MARKER),
        String::from_utf8_lossy(SERVICE_MARKER),
        if clear { paint("FOUND (plaintext!)", "31") } else { paint("never — encrypted", "32") }
    );
    Ok(())
}

/// A pod the CNI has wired but the agent does not know (no Pod object
/// yet): with the unknown-interface guard it sends nothing, although no
/// policy is in force any more.
fn unknown_pod(tb: &mut Testbed, ns: &[String]) -> anyhow::Result<()> {
    heading("fail closed: a pod veth the agent has not attached to");
    let late = Ipv4Addr::new(10, 244, 2, 99);
    tb.add_pod("default/late", 1, late)?;
    let late_ns = tb.pod("default/late").map(|p| p.ns.name().to_string()).unwrap_or_default();
    let api = tb.pod("default/apiserver").map(|p| p.ip).context("example pods missing")?;
    let reached = probe::tcp(&late_ns, SocketAddr::from((api, 80)));
    println!(
        "  a pod wired at {late} on node-2 before its Pod object exists -> default/apiserver:80: {}",
        if reached { paint("CONNECTED (unjudged!)", "31") } else { paint("dropped — sends nothing", "32") }
    );
    let rules =
        Command::new("ip").args(["netns", "exec", &ns[1], "nft", "list", "table", "inet", "ztunnel_guard"]).output()?;
    for l in String::from_utf8_lossy(&rules.stdout).lines().filter(|l| l.contains("@judged")) {
        println!("  node-2: {}", paint(l.trim(), "2"));
    }
    Ok(())
}

/// Applies the seed policies one by one; after each, the observed matrix
/// (real connections) against the expected one (`ztunnel policy matrix`).
fn walk_policies(tb: &Testbed, cluster: &Cluster, manifests: &Path, examples: &Path) -> anyhow::Result<()> {
    let mut steps: Vec<PathBuf> =
        fs::read_dir(examples.join("policies"))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    steps.sort();
    let ports: [(u16, Protocol); 10] = [
        (80, Protocol::Tcp),
        (80, Protocol::Tcp),
        (53, Protocol::Udp),
        (80, Protocol::Tcp),
        (6379, Protocol::Tcp),
        (6379, Protocol::Tcp),
        (443, Protocol::Tcp),
        (443, Protocol::Tcp),
        (80, Protocol::Tcp),
        (443, Protocol::Tcp),
    ];
    let mut applied: Vec<PathBuf> = Vec::new();
    let mut total_diff = 0;
    for i in 0..=steps.len() {
        if i == 0 {
            heading("step 0: no NetworkPolicy");
        } else {
            let f = &steps[i - 1];
            let text = fs::read_to_string(f)?;
            // The file's leading comment block says what the step does.
            let summary: Vec<&str> = text
                .lines()
                .take_while(|l| l.starts_with('#'))
                .map(|l| l.trim_start_matches('#').trim())
                .filter(|l| !l.is_empty())
                .collect();
            heading(&format!("step {i}: {}", f.file_name().and_then(|n| n.to_str()).unwrap_or("")));
            for line in summary {
                println!("  {}", paint(line, "2"));
            }
            fs::copy(f, manifests.join(f.file_name().unwrap_or_default()))?;
            applied.push(f.clone());
            // Agents poll every 200 ms; give them a moment to sync.
            std::thread::sleep(Duration::from_millis(1500));
        }
        let (port, proto) = ports[i.min(ports.len() - 1)];
        let mut objects: Vec<_> = fs::read_dir(manifests)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| fs::read_to_string(&p).ok().map(|t| (p, t)))
            .flat_map(|(p, t)| parse_str(&p.display().to_string(), &t).objects.into_iter().map(|(_, o)| o))
            .collect();
        objects.sort_by_key(|o| o.describe());
        let state = Cluster::from_objects(objects);
        let endpoints: Vec<Endpoint> = cluster
            .pods()
            .filter(|p| tb.pod(&p.key.to_string()).is_some())
            .map(|p| Endpoint::Pod(p.key.clone()))
            .chain([Endpoint::Ip(IpAddr::V4(EXTERNAL))])
            .collect();
        let expected = matrix(&state, &endpoints, port, proto)?;
        let observed = observe(tb, &expected.endpoints, port, proto);
        total_diff += print_matrix(&expected, &observed, port, proto);
    }
    let verdict = if total_diff == 0 {
        paint("every observed connection matched the expected verdict", "32")
    } else {
        paint(&format!("{total_diff} observed cell(s) differ from the expected verdict"), "31")
    };
    println!("\n  {verdict}");
    Ok(())
}

/// Probes every cell at once (real connections; a refused cell costs the
/// probe timeout, so they run in parallel).
fn observe(tb: &Testbed, names: &[String], port: u16, proto: Protocol) -> BTreeMap<(usize, usize), bool> {
    let addr = |n: &str| -> Option<(String, Ipv4Addr)> {
        if n == EXTERNAL.to_string() {
            return tb.external.as_ref().map(|e| (e.ns.name().to_string(), e.ip));
        }
        tb.pod(n).map(|p| (p.ns.name().to_string(), p.ip))
    };
    let mut handles = Vec::new();
    for (i, from) in names.iter().enumerate() {
        for (j, to) in names.iter().enumerate() {
            let (Some((ns, _)), Some((_, ip))) = (addr(from), addr(to)) else { continue };
            let dst = SocketAddr::from((ip, port));
            handles.push((
                (i, j),
                std::thread::spawn(move || match proto {
                    Protocol::Udp => probe::udp(&ns, dst),
                    _ => probe::tcp(&ns, dst),
                }),
            ));
        }
    }
    handles.into_iter().map(|(k, h)| (k, h.join().unwrap_or(false))).collect()
}

/// Prints observed (✓/·) with expected differences marked; returns the
/// number of differences.
fn print_matrix(
    expected: &policy::matrix::Matrix,
    observed: &BTreeMap<(usize, usize), bool>,
    port: u16,
    proto: Protocol,
) -> usize {
    let short = |n: &str| -> String {
        let s = n.rsplit('/').next().unwrap_or(n);
        s.chars().take(5).collect()
    };
    println!("  {port}/{proto}: observed (✓ connects, · refused; ! differs from expected)");
    let mut head = format!("  {:<24}", "from \\ to");
    for n in &expected.endpoints {
        head.push_str(&format!("{:>6}", short(n)));
    }
    println!("{}", paint(&head, "2"));
    let mut diffs = 0;
    for (i, from) in expected.endpoints.iter().enumerate() {
        let mut row = format!("  {from:<24}");
        for j in 0..expected.endpoints.len() {
            let want = expected.cells[i][j].allowed;
            let got = observed.get(&(i, j)).copied().unwrap_or(false);
            let cell = match (got, got == want) {
                (true, true) => paint("✓", "32"),
                (false, true) => paint("·", "2"),
                (true, false) => paint("!✓", "31"),
                (false, false) => paint("!·", "31"),
            };
            if got != want {
                diffs += 1;
            }
            let pad = if got == want { 5 } else { 4 };
            row.push_str(&format!("{}{cell}", " ".repeat(pad)));
        }
        println!("{row}");
    }
    if diffs == 0 {
        println!("  {}", paint("observed = expected", "32"));
    }
    diffs
}

/// Rotates the CA root while a transfer runs through the mesh; shows the new
/// serial in use and the transfer unaffected.
fn rotation(tb: &Testbed, zt: &Path, ns: &[String], ca_dir: &str) -> anyhow::Result<()> {
    heading("certificate rotation during a running transfer");
    for f in fs::read_dir(format!("{STATE}/manifests"))?.filter_map(|e| e.ok()) {
        if f.file_name().to_string_lossy().starts_with(char::is_numeric) {
            let _ = fs::remove_file(f.path());
        }
    }
    println!("  (policies removed again so the transfer path is open)");
    std::thread::sleep(Duration::from_millis(1500));
    let serial = |i: usize| -> String {
        let dump = admin_get(&ns[i], 15021, "/config_dump");
        dump.split("spiffe://cluster.local/ns/default/sa/bookstore")
            .nth(1)
            .and_then(|r| r.split("\"serial\": \"").nth(1))
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_string()
    };
    let before = serial(1);
    let (Some(front), Some(api)) = (tb.pod("default/frontend"), tb.pod("default/apiserver")) else { bail!("pods") };
    let (stop, bytes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let to = SocketAddr::from((api.ip, 8080));
    let transfer = {
        let (stop, bytes, ns) = (stop.clone(), bytes.clone(), front.ns.name().to_string());
        std::thread::spawn(move || -> bool {
            run_in(&ns, move || {
                let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(3)) else { return false };
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let chunk = [0xa5u8; 16 * 1024];
                let mut back = vec![0u8; chunk.len()];
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(&chunk).is_err() || s.read_exact(&mut back).is_err() {
                        return false;
                    }
                    bytes.fetch_add(chunk.len() * 2, Ordering::Relaxed);
                }
                true
            })
            .unwrap_or(false)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "  transfer default/frontend -> default/apiserver:8080 running; node-2 serves bookstore with serial {before}"
    );
    for step in [&["prepare"][..], &["propagate"], &["switch", "--force"]] {
        let out =
            Command::new(zt).args(["ca", "rotate"]).args(step).args(["--dir", ca_dir]).env("NO_COLOR", "1").output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        println!("  $ ztunnel ca rotate {:<18} {}", step.join(" "), text.lines().next().unwrap_or(""));
    }
    let renewed = until(Duration::from_secs(20), || serial(1) != before);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let ok = transfer.join().unwrap_or(false);
    let after = serial(1);
    println!(
        "  node-2 renewed under the new root: serial {} -> {}",
        before,
        if renewed { paint(&after, "36") } else { paint("not renewed", "31") }
    );
    println!(
        "  running transfer: {} MiB echoed, {}",
        bytes.load(Ordering::Relaxed) / (1 << 20),
        if ok { paint("never interrupted", "32") } else { paint("INTERRUPTED", "31") }
    );
    let fresh = probe::tcp(front.ns.name(), SocketAddr::from((api.ip, 80)));
    println!(
        "  a new connection after the rotation: {}",
        if fresh { paint("ok (new handshake, new certificate)", "32") } else { paint("FAILED", "31") }
    );
    println!("  next: `ztunnel ca rotate retire --dir {ca_dir}` once the old leaves expire (see `ztunnel ca status`)");
    Ok(())
}
