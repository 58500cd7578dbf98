//! The demo (README command 1's driver) run end to end: every seed step's
//! observed matrix equals the expected one with the mesh on, the node link
//! never carries the payload in clear, and a root rotation does not
//! interrupt a running transfer. The demo is removed afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::PathBuf;
use std::process::Command;

use testbed::require_root;

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join(name);
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let pkg = if name == "ztunnel" { "ztunnel" } else { "ztunnel-e2e" };
        let status = Command::new(cargo).args(["build", "-p", pkg, "--bin", name]).status().unwrap();
        assert!(status.success());
    }
    bin
}

struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(&self.0).arg("down").output();
    }
}

#[test]
fn demo_walk_matches_expected_with_the_mesh_on() {
    if !require_root("demo_walk_matches_expected_with_the_mesh_on") {
        return;
    }
    let demo = bin("demo");
    let _down = Down(demo.clone());
    let out = Command::new(&demo).args(["up", "--ztunnel"]).arg(bin("ztunnel")).env("NO_COLOR", "1").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("every observed connection matched the expected verdict"), "{text}");
    assert_eq!(text.matches("observed = expected").count(), 10, "all ten steps matched\n{text}");
    assert!(text.contains("in the capture: never — encrypted"), "{text}");
    assert!(text.contains("translated at the socket to 10.244.1.10:80): echo ok"), "{text}");
    assert!(text.contains("0 pod-to-pod packets in clear"), "{text}");
    assert!(text.contains("never interrupted"), "{text}");
    // Ingress: HTTPS from outside, through the gateway pod, into the mesh.
    assert!(text.contains("hello from the demo backend\n    path=/cart\n    peer=10.244.1.50"), "{text}");
    assert!(text.contains("x-forwarded-for=203.0.113.10"), "{text}");
    assert!(text.contains("plain HTTP: 308 -> https://shop.example.com:8443/cart"), "{text}");
    assert!(text.contains("spiffe://cluster.local/ns/ingress/sa/ztunnel-gateway: yes"), "{text}");
    assert!(text.contains("ok (new handshake, new certificate)"), "{text}");
    // The unknown-interface guard.
    assert!(text.contains("before its Pod object exists -> default/apiserver:80: dropped — sends nothing"), "{text}");
}
