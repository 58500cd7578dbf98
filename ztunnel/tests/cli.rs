//! The `ztunnel policy` commands, and `ztunnel run`'s checks of its
//! arguments, run as a user runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

fn ztunnel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ztunnel")).args(args).env("NO_COLOR", "1").output().expect("run ztunnel")
}

/// `ztunnel run` on the example manifests as node-1 without pins, with
/// `extra` arguments: for the checks made before anything is loaded.
fn run_agent(extra: &[&str]) -> Output {
    let examples = examples();
    let mut args = vec!["run", "--local", examples.to_str().expect("utf-8 path"), "--node", "node-1", "--no-pin"];
    args.extend_from_slice(extra);
    ztunnel(&args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_explains_and_sets_exit_code() {
    let ex = examples();
    let ex = ex.to_str().unwrap();
    let out = ztunnel(&[
        "policy",
        "check",
        "-f",
        ex,
        "--from",
        "default/frontend",
        "--to",
        "default/db",
        "--port",
        "6379/TCP",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.starts_with("ALLOWED default/frontend -> default/db 6379/TCP"), "{s}");
    assert!(s.contains("allowed by NetworkPolicy default/access-demo1, rule 0"), "{s}");

    let out = ztunnel(&["policy", "check", "-f", ex, "--from", "default/test", "--to", "default/apiserver"]);
    assert_eq!(out.status.code(), Some(1));
    let s = text(&out.stdout);
    assert!(s.contains("DENIED") && s.contains("isolated by default/api-allow, default/default-deny"), "{s}");

    let out = ztunnel(&["policy", "check", "-f", ex, "--from", "default/nope", "--to", "default/db"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("pod default/nope not found"));
}

#[test]
fn matrix_json_matches_the_seed_expectations() {
    let ex = examples();
    let out = ztunnel(&[
        "policy",
        "matrix",
        "-f",
        ex.to_str().unwrap(),
        "--port",
        "6379/TCP",
        "--external",
        "172.16.0.40",
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &v[0];
    let names: Vec<&str> = m["endpoints"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    let idx = |n: &str| names.iter().position(|x| *x == n).unwrap();
    let cell = |a: &str, b: &str| m["cells"][idx(a)][idx(b)]["allowed"].as_bool().unwrap();
    assert!(cell("default/frontend", "default/db"));
    assert!(cell("myproject/client", "default/db"));
    assert!(!cell("other/client", "default/db"));
    assert!(!cell("default/db", "172.16.0.40"));
    assert_eq!(names.last(), Some(&"172.16.0.40"));
}

#[test]
fn matrix_text_is_a_table() {
    let ex = examples();
    let out = ztunnel(&["policy", "matrix", "-f", ex.to_str().unwrap()]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(s.starts_with("Reachability on 80/TCP"), "{s}");
    assert!(s.lines().any(|l| l.contains("default/apiserver") && l.contains('✓') && l.contains('✗')), "{s}");
    assert!(!s.contains("\u{1b}["), "NO_COLOR disables colour");
}

#[test]
fn invalid_manifests_are_reported_and_the_rest_still_counts() {
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, body: &str| std::fs::write(dir.path().join(name), body).unwrap();
    w(
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: n}\nstatus: {podIP: 10.0.0.2}\n",
    );
    let np = |name: &str, spec: &str| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: n}}\nspec:\n{spec}\n"
        )
    };
    w(
        "bad.yaml",
        &[
            np("bad-cidr", "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/40}}]}]"),
            np("bad-proto", "  podSelector: {}\n  ingress: [{ports: [{protocol: ICMP}]}]"),
            np("bad-name", "  podSelector: {}\n  ingress: [{ports: [{port: a-very-long-port-name}]}]"),
            np("bad-range", "  podSelector: {}\n  ingress: [{ports: [{port: 90, endPort: 80}]}]"),
            np("bad-endport", "  podSelector: {}\n  ingress: [{ports: [{endPort: 80}]}]"),
        ]
        .concat(),
    );
    w("good.yaml", &np("deny", "  podSelector: {}"));
    w("notes.txt", "not a manifest, not read");
    let d = dir.path().to_str().unwrap();
    let out = ztunnel(&["policy", "check", "-f", d, "--from", "n/a", "--to", "n/b"]);
    let err = text(&out.stderr);
    for (name, field) in [
        ("bad-cidr", "spec.ingress[0].from[0].ipBlock.cidr"),
        ("bad-proto", "spec.ingress[0].ports[0].protocol"),
        ("bad-name", "spec.ingress[0].ports[0].port"),
        ("bad-range", "spec.ingress[0].ports[0].endPort"),
        ("bad-endport", "spec.ingress[0].ports[0].endPort"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("NetworkPolicy n/{name}")))
            .unwrap_or_else(|| panic!("{name} not reported: {err}"));
        assert!(line.contains("bad.yaml") && line.contains(field), "{line}");
    }
    assert!(err.contains("5 invalid object(s)"), "{err}");
    assert_eq!(out.status.code(), Some(1), "the valid default-deny still applies: {}", text(&out.stdout));
}

#[test]
fn check_notes_a_namespace_in_audit_mode() {
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, body: &str| std::fs::write(dir.path().join(name), body).unwrap();
    w(
        "pods.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: m}\nstatus: {podIP: 10.0.0.2}\n",
    );
    w(
        "deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: m}\nspec: {podSelector: {}}\n",
    );
    let ns = |audit: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: n}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: m, labels: {{ztunnel.io/policy-audit: \"{audit}\"}}}}\n"
        )
    };
    let d = dir.path().to_str().unwrap();
    w("ns.yaml", &ns("true"));
    let out = ztunnel(&["policy", "check", "-f", d, "--from", "n/a", "--to", "m/b"]);
    let s = text(&out.stdout);
    // The verdict is the policy's; the note says it is not enforced.
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(s.contains("DENIED") && s.contains("isolated by m/deny"), "{s}");
    assert!(s.contains("note: namespace m is in policy audit mode"), "{s}");
    let out = ztunnel(&["policy", "check", "-f", d, "--from", "n/a", "--to", "m/b", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&v["egress_audited"], &v["ingress_audited"]), (&false.into(), &true.into()), "{v}");
    assert!(v["ingress"].is_object() && v["egress"].is_object(), "the verdict is still there: {v}");
    // Allowed the other way round: no note for the audited side that allows.
    let out = ztunnel(&["policy", "check", "-f", d, "--from", "m/b", "--to", "n/a"]);
    assert!(!text(&out.stdout).contains("note:"), "{}", text(&out.stdout));
    // The matrix names the audited namespaces under the table.
    let out = ztunnel(&["policy", "matrix", "-f", d]);
    let s = text(&out.stdout);
    assert!(s.contains("note: in policy audit mode") && s.trim_end().ends_with(": m"), "{s}");
    // Any other value enforces, and gets no note.
    w("ns.yaml", &ns("yes"));
    let out = ztunnel(&["policy", "check", "-f", d, "--from", "n/a", "--to", "m/b"]);
    assert!(!text(&out.stdout).contains("note:"), "{}", text(&out.stdout));
    let out = ztunnel(&["policy", "matrix", "-f", d]);
    assert!(!text(&out.stdout).contains("note:"), "{}", text(&out.stdout));
}

#[test]
fn run_rejects_a_bad_pod_interface_prefix_before_touching_the_node() {
    // Validated before anything is loaded or installed (no root needed):
    // a prefix with a space or a wildcard would not mean what it says in
    // the guard's nftables rule.
    for bad in ["a b", "cali*", "x\"; flush ruleset", "abcdefghijklmno"] {
        let out = run_agent(&["--pod-interface-prefix", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains("--pod-interface-prefix") && err.contains("letters, digits"), "{bad:?}: {err}");
    }
}

#[test]
fn run_rejects_a_service_cgroup_that_is_not_a_directory() {
    let out = run_agent(&["--service-cgroup", "/nonexistent/cgroup"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("--service-cgroup /nonexistent/cgroup: no such directory") && err.contains("`off`"), "{err}");
}

#[test]
fn check_to_a_cluster_ip_judges_each_backend_as_the_datapath_does() {
    let dir = tempfile::tempdir().unwrap();
    let svc = dir.path().join("services.yaml");
    std::fs::write(
        &svc,
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: default}\n\
         spec: {clusterIP: 10.96.0.50, ports: [{name: http, port: 8080}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: api-1, namespace: default, labels: {kubernetes.io/service-name: api}}\n\
         addressType: IPv4\nports: [{name: http, port: 80}]\nendpoints: [{addresses: [10.244.1.10]}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\n\
         spec: {clusterIP: 10.96.0.60, ports: [{port: 80}]}\n",
    )
    .unwrap();
    let (ex, svc) = (examples(), svc.to_str().unwrap().to_string());
    let ex = ex.to_str().unwrap();
    for from in ["default/frontend", "default/test"] {
        // The verdict through the Service is the backend pod's.
        let direct =
            ztunnel(&["policy", "check", "-f", ex, "--from", from, "--to", "default/apiserver", "--port", "80"]);
        let via =
            ztunnel(&["policy", "check", "-f", ex, "-f", &svc, "--from", from, "--to", "10.96.0.50", "--port", "8080"]);
        assert_eq!(via.status.code(), direct.status.code(), "{from}: {}", text(&via.stdout));
        let s = text(&via.stdout);
        assert!(s.contains("a Service: each connection goes to one of 1 ready backend(s)"), "{s}");
        assert!(s.contains("backend default/apiserver (10.244.1.10:80)"), "{s}");
    }
    let out = ztunnel(&["policy", "check", "-f", ex, "-f", &svc, "--from", "default/frontend", "--to", "10.96.0.60"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("no ready endpoint: connections are refused"), "{}", text(&out.stdout));
    // Without the Service manifests the address is just an address.
    let out =
        ztunnel(&["policy", "check", "-f", ex, "--from", "default/frontend", "--to", "10.96.0.50", "--port", "8080"]);
    assert!(!text(&out.stdout).contains("a Service"), "{}", text(&out.stdout));
}

#[test]
fn run_rejects_a_service_cidr_with_host_bits() {
    let out = run_agent(&["--service-cidr", "10.96.0.0/12,10.96.0.1/12"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--service-cidr \"10.96.0.1/12\": host bits are set"), "{}", text(&out.stderr));
}

#[test]
fn run_rejects_a_congestion_control_the_kernel_lacks() {
    let out = run_agent(&[
        "--ca-address",
        "127.0.0.1:1",
        "--ca-bundle",
        "/nonexistent/bundle.pem",
        "--ca-token",
        "/nonexistent/token",
        "--local-congestion-control",
        "no_such_cc",
    ]);
    assert!(!out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("--local-congestion-control: this kernel has no \"no_such_cc\" congestion control"), "{err}");
    assert!(err.contains("`keep` leaves every socket on its own"), "{err}");
}
