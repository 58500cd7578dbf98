//! The agent and pod interfaces as CNIs change them: a veth replaced
//! under the same name is attached again, and with the unknown-interface
//! guard (`--pod-interface-prefix`) a veth the agent has not attached to
//! passes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use testbed::{Testbed, probe, require_root};

mod agent_support;

use agent_support::*;

/// A pod's veth replaced by a CNI between two polls (sandbox recreated:
/// same interface name, address and route, new interface index) is
/// enforced again, never left without programs.
#[test]
fn a_pod_whose_veth_is_replaced_is_enforced_on_the_new_one() {
    if !require_root("a_pod_whose_veth_is_replaced_is_enforced_on_the_new_one") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = workload_dir(dir.path());
    for f in ["01-default-deny.yaml", "02-allow-dns.yaml", "03-bookstore.yaml"] {
        copy(&examples().join("policies").join(f), &manifests.join(f));
    }
    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::new(&nodes).unwrap();
    tb.add_pod("default/apiserver", 0, Ipv4Addr::new(10, 244, 1, 10)).unwrap();
    tb.add_pod("default/db", 0, Ipv4Addr::new(10, 244, 1, 11)).unwrap();
    tb.add_pod("default/frontend", 1, Ipv4Addr::new(10, 244, 2, 10)).unwrap();
    for p in &tb.pods {
        probe::serve(&p.ns, &[80], &[]).unwrap();
    }
    // Polls far apart, so that the replacement falls between two of them
    // (the case where the agent never sees the interface missing).
    let logs: Vec<PathBuf> = nodes.iter().map(|n| dir.path().join(format!("{n}.flows.jsonl"))).collect();
    let _agents: Vec<Agent> = tb
        .nodes
        .iter()
        .enumerate()
        // A guard prefix that is not this CNI's (the testbed's veths are
        // `ztv*`): harmless, and the agent says so.
        .map(|(i, n)| {
            spawn_agent(n.ns.name(), &manifests, &n.name, &logs[i], None, &["--pod-interface-prefix", "cali"], 4000)
        })
        .collect();
    assert!(wait_for(&logs, "attached", 3) && wait_for(&logs, "policy synced", 2), "agents did not start");
    assert!(
        wait_for(&logs, "outside --pod-interface-prefix", 3),
        "a pod veth the guard does not cover was not reported"
    );
    let api = SocketAddr::from((Ipv4Addr::new(10, 244, 1, 10), 80));
    let db = tb.pod("default/db").unwrap().ns.name().to_string();
    let front = tb.pod("default/frontend").unwrap().ns.name().to_string();
    assert!(until(Duration::from_secs(3), false, || probe::tcp(&db, api)).is_some(), "default-deny in force");
    assert!(probe::tcp(&front, api), "bookstore allowed");

    tb.replug("default/apiserver").unwrap();
    tb.replug("default/db").unwrap();
    // The agent attaches to the new interfaces at its next poll.
    assert!(
        wait_for(&logs, "attached", 5),
        "the replaced veths were not attached again\n{}",
        fs::read_to_string(logs[0].with_extension("stderr")).unwrap_or_default()
    );
    assert!(!probe::tcp(&db, api), "default-deny must hold on the new veths");
    assert!(probe::tcp(&front, api), "bookstore must still be allowed through the new veth");
}

/// With `--pod-interface-prefix`, a pod the CNI has wired but the agent has
/// not attached to yet (its Pod object not seen yet) sends nothing: the
/// guard drops what arrives on an unjudged pod veth. Without the guard the
/// same packets would pass unjudged. Once the agent attaches, its traffic
/// is judged by policy as usual.
#[test]
fn the_guard_drops_traffic_of_pod_veths_not_attached_yet() {
    if !require_root("the_guard_drops_traffic_of_pod_veths_not_attached_yet") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = workload_dir(dir.path());
    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::new(&nodes).unwrap();
    tb.add_pod("default/apiserver", 0, Ipv4Addr::new(10, 244, 1, 10)).unwrap();
    tb.add_pod("default/frontend", 1, Ipv4Addr::new(10, 244, 2, 10)).unwrap();
    for p in &tb.pods {
        probe::serve(&p.ns, &[80], &[]).unwrap();
    }
    let logs: Vec<PathBuf> = nodes.iter().map(|n| dir.path().join(format!("{n}.flows.jsonl"))).collect();
    let mut agents: Vec<Agent> = tb
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            start_agent_with(n.ns.name(), &manifests, &n.name, &logs[i], None, &["--pod-interface-prefix", "ztv"])
        })
        .collect();
    assert!(wait_for(&logs, "attached", 2) && wait_for(&logs, "policy synced", 2), "agents did not start");
    let api = SocketAddr::from((Ipv4Addr::new(10, 244, 1, 10), 80));
    let front = tb.pod("default/frontend").unwrap().ns.name().to_string();
    assert!(probe::tcp(&front, api), "no policy: an attached pod reaches the API server");

    // The CNI wires a new pod before the agent knows it.
    let new_ip = Ipv4Addr::new(10, 244, 2, 77);
    tb.add_pod("default/newcomer", 1, new_ip).unwrap();
    let newcomer = tb.pod("default/newcomer").unwrap().ns.name().to_string();
    std::thread::sleep(Duration::from_millis(300)); // a few polls: still unknown
    assert!(!probe::tcp(&newcomer, api), "an unjudged pod veth passed traffic");
    let node2 = tb.nodes[1].ns.name().to_string();
    let rules = Command::new("ip")
        .args(["netns", "exec", &node2, "nft", "list", "table", "inet", "ztunnel_guard"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout).to_string();
    assert!(rules.contains("iifname \"ztv*\" iif != @judged") && !rules.contains("packets 0 "), "{rules}");
    // node-2's agent judges the frontend only, so far.
    let metrics = testbed::cluster::admin_get(&node2, 15021, "/metrics");
    assert!(metrics.contains("ztunnel_guard_judged_interfaces 1\n"), "{metrics}");

    // The Pod object arrives; the agent attaches and the pod is judged.
    fs::write(
        manifests.join("newcomer.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: newcomer, namespace: default}}\n\
             spec: {{nodeName: node-2, containers: [{{name: c, image: x}}]}}\nstatus: {{podIP: {new_ip}}}\n"
        ),
    )
    .unwrap();
    assert!(wait_for(&logs, "attached", 3), "the new pod was not attached");
    assert!(
        until(Duration::from_secs(3), true, || probe::tcp(&newcomer, api)).is_some(),
        "the attached pod is allowed (no policy)"
    );

    // An unpinned agent's programs leave with it: stopped cleanly, it takes
    // its veths out of the judged set, so its pods fail closed.
    for a in &agents {
        Command::new("kill").args(["-TERM", &a.0.id().to_string()]).status().unwrap();
    }
    for a in &mut agents {
        assert!(until(Duration::from_secs(15), true, || a.0.try_wait().unwrap().is_some()).is_some(), "no exit");
    }
    assert!(!probe::tcp(&front, api), "pods of a stopped unpinned agent must not pass unjudged");

    // Turned off: an agent without the flag removes the guard it finds
    // (nothing would ever add new veths to its set).
    let log = dir.path().join("node-2-unguarded.flows.jsonl");
    let _plain = start_agent(&node2, &manifests, "node-2", &log, None);
    let listed = |family: &str| {
        Command::new("ip")
            .args(["netns", "exec", &node2, "nft", "list", "table", family, "ztunnel_guard"])
            .output()
            .unwrap()
    };
    assert!(
        until(Duration::from_secs(10), false, || listed("inet").status.success() || listed("bridge").status.success())
            .is_some(),
        "the guard outlived the flag\n{}",
        fs::read_to_string(log.with_extension("stderr")).unwrap_or_default()
    );
}
