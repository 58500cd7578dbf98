//! What the agent test files share: starting agents in node namespaces
//! on a manifest directory, the example workload, and polling helpers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure
#![allow(dead_code)] // each test file uses its own part

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testbed::Testbed;

/// `deploy/examples` (the seed workload and policies).
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

/// The `ztunnel` binary of this build (built on demand when only this
/// package's tests were built).
pub fn ztunnel_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("ztunnel");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo).args(["build", "-p", "ztunnel", "--bin", "ztunnel"]).status().unwrap();
        assert!(status.success());
    }
    bin
}

pub struct Agent(pub Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An agent on node `node` in namespace `ns` reading `dir`, flow log at
/// `log` (stderr beside it), pinned under `pins` or tied to the process.
pub fn start_agent(ns: &str, dir: &Path, node: &str, log: &Path, pins: Option<&Path>) -> Agent {
    start_agent_with(ns, dir, node, log, pins, &[])
}

/// [`start_agent`] with extra arguments.
pub fn start_agent_with(ns: &str, dir: &Path, node: &str, log: &Path, pins: Option<&Path>, extra: &[&str]) -> Agent {
    spawn_agent(ns, dir, node, log, pins, extra, 100)
}

/// [`start_agent_with`] polling every `poll_ms`.
pub fn spawn_agent(
    ns: &str,
    dir: &Path,
    node: &str,
    log: &Path,
    pins: Option<&Path>,
    extra: &[&str],
    poll_ms: u32,
) -> Agent {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(ztunnel_bin()).args(["run", "--local"]).arg(dir);
    cmd.args(["--node", node, "--poll-ms", &poll_ms.to_string(), "--flow-log"]).arg(log).args(extra);
    match pins {
        Some(p) => cmd.arg("--bpffs").arg(p),
        None => cmd.arg("--no-pin"),
    };
    let child = cmd
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            fs::OpenOptions::new().create(true).append(true).open(log.with_extension("stderr")).unwrap(),
        ))
        .spawn()
        .unwrap();
    Agent(child)
}

/// One agent per node of `tb` (programs tied to the process), flow logs in
/// `dir`; returns the agents and their flow-log paths (stderr beside them).
pub fn start_agents(tb: &Testbed, manifests: &Path, dir: &Path) -> (Vec<Agent>, Vec<PathBuf>) {
    let logs: Vec<PathBuf> = tb.nodes.iter().map(|n| dir.join(format!("{}.flows.jsonl", n.name))).collect();
    let agents = tb
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| start_agent(n.ns.name(), manifests, &n.name, &logs[i], None))
        .collect();
    (agents, logs)
}

/// Copies a file (panics on failure).
pub fn copy(from: &Path, to: &Path) {
    fs::copy(from, to).unwrap();
}

/// A manifest directory under `root` holding the example workload.
pub fn workload_dir(root: &Path) -> PathBuf {
    let manifests = root.join("manifests");
    fs::create_dir(&manifests).unwrap();
    for f in ["namespaces.yaml", "nodes.yaml", "pods.yaml"] {
        copy(&examples().join("workload").join(f), &manifests.join(f));
    }
    manifests
}

/// Polls `probe` until it returns `want`, up to `limit`; returns the time it took.
pub fn until(limit: Duration, want: bool, mut probe: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if probe() == want {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Whether the agents' stderr logs beside `logs` contain `needle` at least
/// `count` times within 20 s.
pub fn wait_for(logs: &[PathBuf], needle: &str, count: usize) -> bool {
    until(Duration::from_secs(20), true, || {
        let text: String =
            logs.iter().map(|l| fs::read_to_string(l.with_extension("stderr")).unwrap_or_default()).collect();
        text.matches(needle).count() >= count
    })
    .is_some()
}
