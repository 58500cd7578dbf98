//! Running ztunnel in the testbed: the binary, background processes in a
//! namespace, admin requests, polling and a bpffs mount, shared by the
//! end-to-end tests.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::run_in;

/// The `ztunnel` binary of this build (built on demand when only the
/// end-to-end package was built).
pub fn ztunnel_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // A binary of this package sits beside it (target/PROFILE/); a test
    // sits one level below (target/PROFILE/deps/).
    let here = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if here.join("ztunnel").exists() {
        return here.join("ztunnel");
    }
    let dir = here.parent().map(Path::to_path_buf).unwrap_or_default();
    let bin = dir.join("ztunnel");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let _ = Command::new(cargo).args(["build", "-p", "ztunnel", "--bin", "ztunnel"]).status();
    }
    bin
}

/// A child process, killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ztunnel ARGS` inside namespace `ns`, stderr to `log`.
pub fn spawn_in(ns: &str, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
    spawn_env(ns, &[], args, log)
}

/// [`spawn_in`] with extra environment variables.
pub fn spawn_env(ns: &str, env: &[(&str, &str)], args: &[&str], log: &Path) -> anyhow::Result<Proc> {
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(ztunnel_bin())
        .args(args)
        // ZT_AGENT_LOG overrides the components' log filter (e.g. to compare
        // benchmark runs with and without per-connection logs); `env` may
        // set RUST_LOG too.
        .env("RUST_LOG", std::env::var("ZT_AGENT_LOG").unwrap_or_else(|_| "info".into()))
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(log)?))
        .spawn()?;
    Ok(Proc(child))
}

/// Polls `f` every 100 ms until it holds or `limit` passes.
pub fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// `GET path` on a loopback admin port inside `ns` (whole response).
pub fn admin_get(ns: &str, port: u16, path: &'static str) -> String {
    run_in(ns, move || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
        let _ = s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .unwrap_or_default()
}

/// The serial of `identity`'s certificate in an agent's `/config_dump`.
pub fn serial_in_dump(dump: &str, identity: &str) -> Option<String> {
    let body = dump.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["certificates"].as_array()?.iter().find(|c| c["identity"] == identity)?["serial"].as_str().map(str::to_string)
}

/// A bpffs mounted at a directory, unmounted on drop.
#[derive(Debug)]
pub struct BpfFs(pub PathBuf);

impl BpfFs {
    /// Mounts a bpffs at `dir`.
    pub fn mount(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        let out = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(dir).output()?;
        anyhow::ensure!(out.status.success(), "mount bpffs: {}", String::from_utf8_lossy(&out.stderr));
        Ok(BpfFs(dir.to_path_buf()))
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

/// A CA in node-1's namespace and one mesh agent per node of a two-node
/// testbed, logs under `root` (`ca.log`, `node-N.log`, `node-N.flows.jsonl`).
pub struct Mesh {
    /// The CA, then the agents (stopped on drop).
    pub procs: Vec<Proc>,
    root: PathBuf,
}

/// The node names [`Mesh::start`] uses.
pub const MESH_NODES: [&str; 2] = ["node-1", "node-2"];

impl Mesh {
    /// Initialises a CA under `root/ca`, serves it from `ns[0]`, and starts
    /// a mesh agent (programs tied to the process) in each of `ns` reading
    /// `manifests`, with `extra` arguments.
    pub fn start(root: &Path, ns: &[String], manifests: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let ca_dir = root.join("ca");
        ca_init(&ca_dir, &[])?;
        let (d, m) = (ca_dir.to_string_lossy().into_owned(), manifests.to_string_lossy().into_owned());
        let mut procs = vec![spawn_args(&ns[0], &ca_serve_args(&d, &m), &root.join("ca.log"))?];
        for (i, node) in MESH_NODES.iter().enumerate() {
            let flows = root.join(format!("{node}.flows.jsonl"));
            let mut args = mesh_agent_args(&m, node, i, &d, None, &flows.to_string_lossy());
            args.extend(extra.iter().map(|a| a.to_string()));
            procs.push(spawn_args(&ns[i], &args, &root.join(format!("{node}.log")))?);
        }
        Ok(Self { procs, root: root.to_path_buf() })
    }

    /// Both agents' logs.
    pub fn logs(&self) -> String {
        MESH_NODES.iter().map(|n| fs::read_to_string(self.root.join(format!("{n}.log"))).unwrap_or_default()).collect()
    }
}

/// Where the tests' CA listens: node-1's link address.
pub const CA_ADDR: &str = "192.168.100.1:15012";

/// `ztunnel ca serve` arguments for the testbed's CA (in node-1's namespace).
pub fn ca_serve_args(ca_dir: &str, manifests: &str) -> Vec<String> {
    ["ca", "serve", "--dir", ca_dir, "--local", manifests, "--listen", CA_ADDR]
        .iter()
        .map(|s| s.to_string())
        .chain(["--admin", "127.0.0.1:15022", "--poll-ms", "100"].iter().map(|s| s.to_string()))
        .collect()
}

/// `ztunnel run` arguments for node `index` (0-based; its link address is
/// 192.168.100.<index+1>) with the mesh on. `pins`: a bpffs directory, or
/// `None` to tie the programs to the process.
pub fn mesh_agent_args(
    manifests: &str,
    node: &str,
    index: usize,
    ca_dir: &str,
    pins: Option<&str>,
    flow_log: &str,
) -> Vec<String> {
    // The unknown-interface guard on the testbed's pod veths, as deployed.
    let mut a: Vec<String> = [
        "run",
        "--local",
        manifests,
        "--node",
        node,
        "--poll-ms",
        "100",
        "--flow-log",
        flow_log,
        "--pod-interface-prefix",
        "ztv",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match pins {
        Some(p) => a.extend(["--bpffs".to_string(), p.to_string()]),
        None => a.push("--no-pin".into()),
    }
    a.extend([
        "--ca-address".to_string(),
        CA_ADDR.to_string(),
        "--ca-bundle".to_string(),
        format!("{ca_dir}/bundle.pem"),
        "--ca-token".to_string(),
        format!("{ca_dir}/tokens/{node}"),
        "--hbone".to_string(),
        format!("192.168.100.{}:15008", index + 1),
        "--transparent".to_string(),
    ]);
    a
}

/// [`spawn_in`] with owned arguments.
pub fn spawn_args(ns: &str, args: &[String], log: &Path) -> anyhow::Result<Proc> {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_in(ns, &refs, log)
}

/// A manifest directory `root/manifests` holding the example workload
/// (namespaces, nodes, pods of `deploy/examples/workload`).
pub fn example_manifests(root: &Path) -> anyhow::Result<PathBuf> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/workload");
    let manifests = root.join("manifests");
    fs::create_dir_all(&manifests)?;
    for f in ["namespaces.yaml", "nodes.yaml", "pods.yaml"] {
        fs::copy(examples.join(f), manifests.join(f))?;
    }
    Ok(manifests)
}

/// `ztunnel ca init` in `ca_dir` with tokens for node-1 and node-2, plus
/// `extra` arguments.
pub fn ca_init(ca_dir: &Path, extra: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(ztunnel_bin())
        .args(["ca", "init", "--dir"])
        .arg(ca_dir)
        .args(["--node", "node-1", "--node", "node-2"])
        .args(extra)
        .output()?;
    anyhow::ensure!(out.status.success(), "ca init: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A `tcpdump` capture of one interface inside a namespace.
#[derive(Debug)]
pub struct LinkCapture {
    child: Child,
    path: PathBuf,
}

impl LinkCapture {
    /// Starts capturing `iface` in `ns` into `path` (and waits a moment so
    /// the capture is live).
    pub fn start(ns: &str, iface: &str, path: &Path) -> anyhow::Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-i", iface, "-U", "-s", "0", "-w"])
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(800));
        Ok(Self { child, path: path.to_path_buf() })
    }

    /// Stops the capture; returns the raw capture file and `tcpdump -nn -r`
    /// of it.
    pub fn stop(mut self) -> anyhow::Result<(Vec<u8>, String)> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let raw = fs::read(&self.path)?;
        let summary = Command::new("tcpdump").args(["-nn", "-r"]).arg(&self.path).output()?;
        Ok((raw, String::from_utf8_lossy(&summary.stdout).into_owned()))
    }
}
