//! Kubernetes mode applies what the API server's watches report as it
//! arrives: with a poll interval of ten seconds, a NetworkPolicy added or
//! removed takes effect within a second or two, not at the next poll.
//! (Root: the agent loads its programs.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use serde_json::json;
use testbed::cluster::{admin_get, spawn_env, until};
use testbed::fakeapi::FakeApi;
use testbed::kubetest::pod;
use testbed::{Testbed, probe, require_root};

#[test]
fn kube_mode_agent_applies_changes_as_they_arrive_not_a_poll_later() {
    if !require_root("kube_mode_agent_applies_changes_as_they_arrive_not_a_poll_later") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut tb = Testbed::new(&["node-1"]).unwrap();
    let (server_ip, client_ip) = (Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 1, 11));
    tb.add_pod("default/server", 0, server_ip).unwrap();
    tb.add_pod("default/client", 0, client_ip).unwrap();
    probe::serve(&tb.pod("default/server").unwrap().ns, &[80], &[]).unwrap();
    let node_ns = tb.nodes[0].ns.name().to_string();
    let client_ns = tb.pod("default/client").unwrap().ns.name().to_string();

    let listener = tb.nodes[0].ns.run(|| TcpListener::bind("127.0.0.1:6443")).unwrap().unwrap();
    let api = FakeApi::start(listener).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}));
    api.apply(pod("default", "server", "node-1", "default", &server_ip.to_string()));
    api.apply(pod("default", "client", "node-1", "default", &client_ip.to_string()));

    let log = dir.path().join("agent.log");
    let _agent = spawn_env(
        &node_ns,
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        &["run", "--kube", "--node", "node-1", "--no-pin", "--flow-log", "/dev/null", "--poll-ms", "10000"],
        &log,
    )
    .unwrap();
    let ready = until(Duration::from_secs(30), || admin_get(&node_ns, 15021, "/ready").contains("200 OK"));
    assert!(ready, "agent not ready\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    let server = SocketAddr::from((server_ip, 80));
    assert!(until(Duration::from_secs(5), || probe::tcp(&client_ns, server)), "no policy: the client connects");

    // Twice each way, so that a change landing just before a poll cannot
    // pass by luck: each must show well inside one poll interval (10 s). A
    // refused probe itself takes its timeout (0.7 s).
    let deny = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "default"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    for round in 0..2 {
        let t = Instant::now();
        api.apply(deny.clone());
        assert!(until(Duration::from_secs(12), || !probe::tcp(&client_ns, server)), "round {round}: never denied");
        let took = t.elapsed();
        assert!(took < Duration::from_secs(3), "round {round}: the policy took {took:?} to apply");
        let t = Instant::now();
        assert!(api.delete("NetworkPolicy", "default", "deny"));
        assert!(until(Duration::from_secs(12), || probe::tcp(&client_ns, server)), "round {round}: never allowed");
        let took = t.elapsed();
        assert!(took < Duration::from_secs(3), "round {round}: the removal took {took:?} to apply");
    }
}
