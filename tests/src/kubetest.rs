//! Helpers for Kubernetes-mode tests: run `ztunnel` against a fake API
//! server's kubeconfig, pods as API objects, and CA sign requests made
//! with `openssl` and `curl`, as an agent's would be.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::cluster::{Proc, ztunnel_bin};

/// Starts `ztunnel ARGS` with `KUBECONFIG`, stderr to `log`.
#[allow(clippy::expect_used)] // test helper: a failure to start is a test failure
pub fn spawn(args: &[&str], kubeconfig: &Path, log: &Path) -> Proc {
    let child = Command::new(ztunnel_bin())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(log).expect("test helper")))
        .spawn()
        .expect("test helper");
    Proc(child)
}

/// `GET path` over plain HTTP/1.0; the whole response (empty if unreachable).
pub fn http_get(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else { return String::new() };
    let _ = s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A running pod as the API server would return it.
pub fn pod(ns: &str, name: &str, node: &str, sa: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// A P-256 CSR for `identity` (URI SAN), key written to `dir/w.key`.
#[allow(clippy::expect_used)] // test helper
pub fn csr(dir: &Path, identity: &str) -> String {
    let out = Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout"])
        .arg(dir.join("w.key"))
        .args(["-subj", "/", "-addext", &format!("subjectAltName=URI:{identity}")])
        .output()
        .expect("test helper");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("test helper")
}

/// `POST /v1/sign` with `token` over HTTPS (trusting `bundle`); returns
/// (HTTP code, body).
#[allow(clippy::expect_used)] // test helper
pub fn sign(addr: &str, bundle: &Path, token: &str, csr: &str) -> (String, String) {
    let body = json!({"csr": csr}).to_string();
    let port = addr.rsplit(':').next().expect("test helper");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(bundle)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1"), "-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/json", "--data-binary", &body, "-w", "\n%{http_code}"])
        .arg(format!("https://localhost:{port}/v1/sign"))
        .output()
        .expect("test helper");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
}

/// `ztunnel ca init --dir ca_dir` (as an operator would), then the state
/// stored in Secret `ztunnel-system/ztunnel-ca` of the fake API server.
#[allow(clippy::expect_used)] // test helper
pub fn ca_in_secret(api: &crate::fakeapi::FakeApi, ca_dir: &Path) {
    if !ca_dir.join("state.json").exists() {
        let init = Command::new(ztunnel_bin()).args(["ca", "init", "--dir"]).arg(ca_dir).output().expect("ztunnel");
        assert!(init.status.success(), "ca init: {}", String::from_utf8_lossy(&init.stderr));
    }
    let state = fs::read(ca_dir.join("state.json")).expect("state.json");
    api.apply(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ztunnel-ca", "namespace": "ztunnel-system"},
        "type": "Opaque", "data": {"state.json": crate::fakeapi::b64(&state)}}),
    );
}

/// A fake API server on loopback and a kubeconfig for it in `root`.
#[allow(clippy::expect_used)] // test helper
pub fn local_api(root: &Path) -> (crate::fakeapi::FakeApi, std::path::PathBuf) {
    let api = crate::fakeapi::FakeApi::start_local().expect("fake API server");
    let kubeconfig = root.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    (api, kubeconfig)
}
