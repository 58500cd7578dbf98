//! Kubernetes mode at scale: 50,000 pods from the fake API server, each
//! carrying fields nobody reads. Its own test binary so it does not compete
//! with the timing-sensitive tests for the two cores. No root needed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::time::Duration;

use serde_json::json;
use testbed::cluster::until;
use testbed::fakeapi::{FakeApi, TokenIdentity};
use testbed::kubetest::{ca_in_secret, csr, http_get, local_api, pod, sign, spawn};

fn rss_mib(pid: u32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// 50,000 pods, each carrying 4 KiB of fields nobody reads: the watchers
/// keep only the fields used (and a fingerprint per object), so the CA's
/// memory stays bounded and far below what the API server sent (~214 MiB),
/// and the last pod is authorised like the first.
#[test]
fn fifty_thousand_pods_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (api, kubeconfig) = local_api(root);
    let ca_dir = root.join("ca");
    ca_in_secret(&api, &ca_dir);
    // 4 KiB of fields per pod that nothing reads (measured: the resident
    // set is the same within 5 MiB with 16 bytes or 4 KiB of them).
    let filler = "x".repeat(4096);
    const PODS: usize = 50_000;
    for i in 0..PODS {
        let mut p = pod(
            &format!("ns-{}", i % 500),
            &format!("pod-{i}"),
            &format!("node-{}", i % 1000),
            &format!("sa-{}", i % 7),
            &format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
        );
        p["metadata"]["annotations"] = json!({"example.com/unused": filler});
        p["metadata"]["labels"] = json!({"app": format!("app-{}", i % 50), "tier": "web"});
        api.apply(p);
    }
    api.add_token(
        "agent",
        TokenIdentity {
            username: "system:serviceaccount:ztunnel-system:ztunnel-agent".into(),
            node: Some(format!("node-{}", (PODS - 1) % 1000)),
            audiences: vec!["ztunnel-ca".into()],
        },
    );
    let log = root.join("ca.log");
    let ca = spawn(
        &["ca", "serve", "--kube", "--listen", "127.0.0.1:25112", "--admin", "127.0.0.1:25122"],
        &kubeconfig,
        &log,
    );
    assert!(
        until(Duration::from_secs(120), || http_get("127.0.0.1:25122", "/ready").contains("200")),
        "CA not ready\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_mib(ca.0.id());
    let last = format!("spiffe://cluster.local/ns/ns-{}/sa/sa-{}", (PODS - 1) % 500, (PODS - 1) % 7);
    let (code, body) = sign("127.0.0.1:25112", &ca_dir.join("bundle.pem"), "agent", &csr(root, &last));
    assert_eq!(code, "200", "{body}");
    let sent_mib = (PODS * (4096 + 400)) as f64 / 1024.0 / 1024.0;
    eprintln!("50,000 pods (~{sent_mib:.0} MiB as JSON): CA resident set {rss:.1} MiB");
    assert!(
        rss < 160.0 && rss < sent_mib * 0.75,
        "CA uses {rss:.1} MiB with 50,000 pods (~{sent_mib:.0} MiB received)"
    );
}

/// The node agent in Kubernetes mode with 50,000 pods on 1,000 nodes and
/// policies selecting them: it lists everything, compiles its node's view
/// and becomes ready with bounded memory, and a later change still applies
/// (root: the agent loads its programs).
#[test]
fn agent_with_fifty_thousand_pods() {
    if !testbed::require_root("agent_with_fifty_thousand_pods") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let tb = testbed::Testbed::with_prefix("ztscale", &["node-1"]).unwrap();
    let node_ns = tb.nodes[0].ns.name().to_string();
    let listener = tb.nodes[0].ns.run(|| std::net::TcpListener::bind("127.0.0.1:6443")).unwrap().unwrap();
    let api = FakeApi::start(listener).unwrap();
    let kubeconfig = root.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    const PODS: usize = 50_000;
    for ns in 0..500 {
        api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{ns}"), "labels": {"team": format!("t{}", ns % 10)}}}));
    }
    let filler = "x".repeat(2048);
    for i in 0..PODS {
        let mut p = pod(
            &format!("ns-{}", i % 500),
            &format!("pod-{i}"),
            &format!("node-{}", i % 1000 + 1),
            &format!("sa-{}", i % 7),
            &format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256),
        );
        p["metadata"]["annotations"] = json!({"example.com/unused": filler});
        p["metadata"]["labels"] = json!({"app": format!("app-{}", i % 50), "tier": "web"});
        api.apply(p);
    }
    for ns in 0..500 {
        api.apply(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "web", "namespace": format!("ns-{ns}")},
            "spec": {"podSelector": {"matchLabels": {"tier": "web"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "t1"}}, "podSelector": {"matchLabels": {"app": "app-3"}}}],
                    "ports": [{"port": 80}]}]}}));
    }
    let log = root.join("agent.log");
    let kc = kubeconfig.to_str().unwrap();
    let start = std::time::Instant::now();
    let agent = testbed::cluster::spawn_env(
        &node_ns,
        &[("KUBECONFIG", kc)],
        &["run", "--kube", "--node", "node-1", "--no-pin", "--flow-log", "/dev/null", "--poll-ms", "200"],
        &log,
    )
    .unwrap();
    let ready =
        until(Duration::from_secs(180), || testbed::cluster::admin_get(&node_ns, 15021, "/ready").contains("200 OK"));
    assert!(ready, "agent not ready\n{}", fs::read_to_string(&log).unwrap_or_default());
    let took = start.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_mib(agent.0.id());
    eprintln!("agent with 50,000 pods and 500 policies: ready in {took:?}, resident set {rss:.1} MiB");
    // A change after the initial list still applies.
    api.apply(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "late", "namespace": "ns-0"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}));
    let synced = until(Duration::from_secs(20), || {
        testbed::cluster::admin_get(&node_ns, 15021, "/metrics")
            .lines()
            .find(|l| l.starts_with("ztunnel_policy_syncs_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .is_some_and(|n| n >= 2.0)
    });
    assert!(synced, "{}", fs::read_to_string(&log).unwrap_or_default());
    assert!(rss < 300.0, "agent uses {rss:.1} MiB with 50,000 pods");
    // What the agent costs a node while nothing changes (a figure for
    // BENCHMARKS.md, not a timed assertion).
    let pid = agent.0.id();
    let (before, t0) = (testbed::perf::cpu_seconds(pid).unwrap_or(0.0), std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let used = testbed::perf::cpu_seconds(pid).unwrap_or(0.0) - before;
    eprintln!(
        "agent with 50,000 pods, nothing changing: {:.2}% of a core (poll every 200 ms)",
        used * 100.0 / t0.elapsed().as_secs_f64()
    );
}
