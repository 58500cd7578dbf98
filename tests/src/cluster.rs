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
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(ztunnel_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
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
