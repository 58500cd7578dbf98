//! `ztunnel run` as a user runs it: one agent per node namespace, reading a
//! manifest directory. Policies written to the directory take effect on new
//! connections and cut established ones within a second or so; the flow log
//! names pods and policies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use policy::Cluster;
use policy::manifest::parse_str;
use testbed::{Testbed, probe, require_root};

mod agent_support;

use agent_support::*;

/// A TCP connection from inside `ns` kept open across a test: each
/// [`Held::echo`] sends one byte and says whether it came back.
struct Held {
    tx: std::sync::mpsc::Sender<u8>,
    done: std::sync::mpsc::Receiver<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl Held {
    fn open(ns: &str, to: SocketAddr) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<u8>();
        let (done_tx, done) = std::sync::mpsc::channel::<bool>();
        let thread = testbed::netns::run_in(ns, move || {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                let mut buf = [0u8; 1];
                for b in rx {
                    let ok = s.write_all(&[b]).is_ok() && s.read_exact(&mut buf).is_ok();
                    done_tx.send(ok).unwrap();
                }
            })
        })
        .unwrap();
        Held { tx, done, thread }
    }

    fn echo(&self, b: u8) -> bool {
        self.tx.send(b).unwrap();
        self.done.recv().unwrap()
    }

    fn close(self) {
        drop(self.tx);
        self.thread.join().unwrap();
    }
}

#[test]
fn agent_enforces_policy_changes_from_the_manifest_directory() {
    if !require_root("agent_enforces_policy_changes_from_the_manifest_directory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = workload_dir(dir.path());
    let text = fs::read_to_string(manifests.join("pods.yaml")).unwrap();
    let cluster = Cluster::from_objects(parse_str("pods.yaml", &text).objects.into_iter().map(|(_, o)| o));

    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::new(&nodes).unwrap();
    for key in ["default/apiserver", "default/frontend", "default/test"] {
        let pod = cluster.pod(&key.parse().unwrap()).unwrap();
        let node = nodes.iter().position(|n| Some(*n) == pod.node.as_deref()).unwrap();
        let std::net::IpAddr::V4(ip) = pod.ips[0] else { panic!() };
        tb.add_pod(key, node, ip).unwrap();
    }
    for p in &tb.pods {
        probe::serve(&p.ns, &[80], &[]).unwrap();
    }
    let (_agents, logs) = start_agents(&tb, &manifests, dir.path());

    // Wait until both agents have attached to their pods and synced.
    let ready = until(Duration::from_secs(20), true, || {
        let text: String =
            logs.iter().map(|l| fs::read_to_string(l.with_extension("stderr")).unwrap_or_default()).collect();
        text.matches("attached").count() >= 3 && text.matches("policy synced").count() >= 2
    });
    assert!(ready.is_some(), "agents did not attach");

    let api = SocketAddr::from((Ipv4Addr::new(10, 244, 1, 10), 80));
    let (test_ns, front_ns) = (
        tb.pod("default/test").unwrap().ns.name().to_string(),
        tb.pod("default/frontend").unwrap().ns.name().to_string(),
    );
    // No policy yet: open.
    assert!(probe::tcp(&test_ns, api), "open before any policy");

    // An established connection from default/test to the API server.
    let long = Held::open(&test_ns, api);
    assert!(long.echo(b'a'), "the long connection works before the policy");

    // Default-deny, DNS and the bookstore policies.
    let t0 = Instant::now();
    for f in ["01-default-deny.yaml", "02-allow-dns.yaml", "03-bookstore.yaml"] {
        copy(&examples().join("policies").join(f), &manifests.join(f));
    }
    let closed = until(Duration::from_secs(3), false, || probe::tcp(&test_ns, api));
    assert!(closed.is_some(), "default/test -> apiserver still open after 3 s");
    assert!(probe::tcp(&front_ns, api), "bookstore frontend keeps access");
    let elapsed = t0.elapsed();
    eprintln!("policy took effect on new connections within {elapsed:?} (probe included)");

    // The established connection is cut too (its next packet re-checks).
    assert!(!long.echo(b'b'), "the established connection must be revoked");
    long.close();

    // Relabelling the pod while traffic runs: app=bookstore is admitted by
    // api-allow and may send through allow-bookstore-egress.
    let pods = manifests.join("pods.yaml");
    let original = fs::read_to_string(&pods).unwrap();
    let plain = "  name: test\n  namespace: default\n";
    assert!(original.contains(plain));
    fs::write(&pods, original.replace(plain, "  name: test\n  namespace: default\n  labels:\n    app: bookstore\n"))
        .unwrap();
    let opened = until(Duration::from_secs(3), true, || probe::tcp(&test_ns, api));
    assert!(opened.is_some(), "relabel to app=bookstore did not open the path");
    eprintln!("relabel took effect within {:?}", opened.unwrap_or_default());
    fs::write(&pods, &original).unwrap();
    assert!(
        until(Duration::from_secs(3), false, || probe::tcp(&test_ns, api)).is_some(),
        "relabel back did not close it"
    );

    // Removing the policies opens the path again.
    for f in ["01-default-deny.yaml", "02-allow-dns.yaml", "03-bookstore.yaml"] {
        fs::remove_file(manifests.join(f)).unwrap();
    }
    assert!(
        until(Duration::from_secs(3), true, || probe::tcp(&test_ns, api)).is_some(),
        "policy removal did not take effect"
    );

    // The admin endpoint reports readiness and the datapath's counters.
    let metrics = testbed::netns::run_in(tb.nodes[1].ns.name(), || {
        let get = |path: &str| {
            let mut s = TcpStream::connect("127.0.0.1:15021").unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        (get("/ready"), get("/metrics"))
    })
    .unwrap();
    assert!(metrics.0.starts_with("HTTP/1.0 200"), "{}", metrics.0);
    let count = |needle: &str| -> u64 {
        metrics
            .1
            .lines()
            .filter(|l| l.starts_with(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(count("ztunnel_flows_total{direction=\"egress\",verdict=\"denied\"") > 0, "{}", metrics.1);
    assert!(count("ztunnel_datapath_packets_total{direction=\"egress\",verdict=\"dropped\"}") > 0, "{}", metrics.1);
    assert!(count("ztunnel_datapath_packets_total{direction=\"ingress\",verdict=\"allowed\"}") > 0, "{}", metrics.1);
    assert_eq!(count("ztunnel_attached_pods"), 2, "{}", metrics.1);
    // Exported, and nothing lost at this rate.
    assert!(metrics.1.lines().any(|l| l == "ztunnel_flow_events_lost_total 0"), "{}", metrics.1);

    // The flow log names pods, verdicts and policies.
    std::thread::sleep(Duration::from_millis(300));
    let lines: Vec<serde_json::Value> = logs
        .iter()
        .flat_map(|l| fs::read_to_string(l).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>())
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|r| r["verdict"] == "denied" && r["pod"] == "default/test" && r["direction"] == "egress"),
        "a drop of default/test's egress is logged"
    );
    assert!(
        lines.iter().any(|r| r["verdict"] == "allowed"
            && r["pod"] == "default/apiserver"
            && r["policy"] == "default/api-allow"),
        "an allow names its policy"
    );
    if !lines.iter().any(|r| r["reason"] == "revoked") {
        for l in &logs {
            eprintln!("== {}\n{}", l.display(), fs::read_to_string(l.with_extension("stderr")).unwrap_or_default());
        }
        let revs: Vec<_> = lines.iter().filter(|r| r["pod"] == "default/test").collect();
        panic!("the revocation is not logged: {revs:#?}");
    }
}

/// A bpffs mounted for the test, unmounted (dropping every pin) on drop.
struct BpfFs(PathBuf);

impl BpfFs {
    fn mount(dir: &Path) -> Self {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(dir).output().unwrap();
        assert!(out.status.success(), "mount bpffs: {}", String::from_utf8_lossy(&out.stderr));
        BpfFs(dir.to_path_buf())
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

/// Two nodes with the API server (node-1), the frontend and `default/test`
/// (node-2), all serving TCP 80, the default-deny, DNS and bookstore
/// policies, and a bpffs for pins: the state of the restart tests.
struct Pinned {
    manifests: PathBuf,
    bpffs: BpfFs,
    tb: Testbed,
    nodes: [&'static str; 2],
    logs: Vec<PathBuf>,
}

fn pinned_bookstore(dir: &Path) -> Pinned {
    let manifests = workload_dir(dir);
    for f in ["01-default-deny.yaml", "02-allow-dns.yaml", "03-bookstore.yaml"] {
        copy(&examples().join("policies").join(f), &manifests.join(f));
    }
    let bpffs = BpfFs::mount(&dir.join("bpf"));
    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::new(&nodes).unwrap();
    tb.add_pod("default/apiserver", 0, Ipv4Addr::new(10, 244, 1, 10)).unwrap();
    tb.add_pod("default/frontend", 1, Ipv4Addr::new(10, 244, 2, 10)).unwrap();
    tb.add_pod("default/test", 1, Ipv4Addr::new(10, 244, 2, 12)).unwrap();
    for p in &tb.pods {
        probe::serve(&p.ns, &[80], &[]).unwrap();
    }
    let logs = nodes.iter().map(|n| dir.join(format!("{n}.flows.jsonl"))).collect();
    Pinned { manifests, bpffs, tb, nodes, logs }
}

impl Pinned {
    /// One agent per node on the pinned maps, with `extra` arguments.
    fn start(&self, extra: &[&str]) -> Vec<Agent> {
        let Pinned { manifests, bpffs, tb, nodes, logs } = self;
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                start_agent_with(tb.nodes[i].ns.name(), manifests, n, &logs[i], Some(&bpffs.0.join(n)), extra)
            })
            .collect()
    }
}

/// Every flow-log record the agents have written to `logs` so far.
fn flow_records(logs: &[PathBuf]) -> Vec<serde_json::Value> {
    logs.iter()
        .flat_map(|l| fs::read_to_string(l).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

#[test]
fn enforcement_survives_agent_kill_and_restart() {
    if !require_root("enforcement_survives_agent_kill_and_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pinned = pinned_bookstore(dir.path());
    let Pinned { manifests, tb, logs, .. } = &pinned;
    let api = SocketAddr::from((Ipv4Addr::new(10, 244, 1, 10), 80));
    let test_ns = tb.pod("default/test").unwrap().ns.name().to_string();
    let front_ns = tb.pod("default/frontend").unwrap().ns.name().to_string();
    let check = |when: &str| {
        assert!(!probe::tcp(&test_ns, api), "{when}: default/test must be denied");
        assert!(probe::tcp(&front_ns, api), "{when}: the frontend must be allowed");
    };

    // With the unknown-interface guard: its table and set outlive the
    // agents as the pins do, so judged pods keep passing while no agent
    // runs and after the next one takes over.
    let guard = ["--pod-interface-prefix", "ztv"];
    let agents = pinned.start(&guard);
    assert!(wait_for(logs, "attached", 3), "agents did not attach");
    check("agents running");

    // kill -9: the pinned links and maps keep enforcing.
    for mut a in agents {
        let _ = a.0.kill();
        let _ = a.0.wait();
        std::mem::forget(a);
    }
    check("agents killed");

    // Restart: the new agents re-adopt the links and maps, without a gap.
    let agents = pinned.start(&guard);
    assert!(wait_for(logs, "re-adopted", 3), "restarted agents did not re-adopt");
    check("agents restarted");

    // And they still apply changes.
    for f in ["01-default-deny.yaml", "02-allow-dns.yaml", "03-bookstore.yaml"] {
        fs::remove_file(manifests.join(f)).unwrap();
    }
    assert!(until(Duration::from_secs(3), true, || probe::tcp(&test_ns, api)).is_some(), "changes after restart");
    drop(agents);
}

#[test]
fn bad_input_while_running_keeps_the_last_good_state_enforced() {
    if !require_root("bad_input_while_running_keeps_the_last_good_state_enforced") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = workload_dir(dir.path());
    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::new(&nodes).unwrap();
    tb.add_pod("default/apiserver", 0, Ipv4Addr::new(10, 244, 1, 10)).unwrap();
    tb.add_pod("default/frontend", 1, Ipv4Addr::new(10, 244, 2, 10)).unwrap();
    tb.add_pod("default/test", 1, Ipv4Addr::new(10, 244, 2, 12)).unwrap();
    tb.add_external(Ipv4Addr::new(203, 0, 113, 10)).unwrap();
    for p in &tb.pods {
        probe::serve(&p.ns, &[80], &[]).unwrap();
    }
    for f in ["01-default-deny.yaml", "02-allow-dns.yaml", "03-bookstore.yaml"] {
        copy(&examples().join("policies").join(f), &manifests.join(f));
    }
    let (mut agents, logs) = start_agents(&tb, &manifests, dir.path());
    assert!(wait_for(&logs, "attached", 3) && wait_for(&logs, "policy synced", 2), "agents did not start");
    let api = SocketAddr::from((Ipv4Addr::new(10, 244, 1, 10), 80));
    let test = tb.pod("default/test").unwrap().ns.name().to_string();
    let front = tb.pod("default/frontend").unwrap().ns.name().to_string();
    assert!(until(Duration::from_secs(3), false, || probe::tcp(&test, api)).is_some(), "default-deny in force");
    assert!(probe::tcp(&front, api), "bookstore allowed");
    // Only default-deny isolates default/test from the external host.
    let ext = tb.external.as_ref().unwrap().ns.name().to_string();
    let test_addr = SocketAddr::from((Ipv4Addr::new(10, 244, 2, 12), 80));
    assert!(!probe::tcp(&ext, test_addr), "default-deny keeps the outside out");

    // An invalid NetworkPolicy, a truncated YAML file, an unknown kind, and
    // the default-deny file itself broken mid-document.
    fs::write(
        manifests.join("bad-cidr.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad-cidr, namespace: default}\n\
         spec:\n  podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/33}}]\n",
    )
    .unwrap();
    fs::write(
        manifests.join("truncated.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, na",
    )
    .unwrap();
    fs::write(manifests.join("unknown.yaml"), "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}\n")
        .unwrap();
    let deny = manifests.join("01-default-deny.yaml");
    let text = fs::read_to_string(&deny).unwrap();
    // Cut mid-document and left with an unclosed flow mapping: a YAML
    // syntax error, so the file's objects cannot be read at all.
    fs::write(&deny, format!("{}\nmetadata: {{name: [", &text[..text.len() / 2])).unwrap();
    assert!(wait_for(&logs, "rejected manifest", 2), "the agents did not report the bad input");
    std::thread::sleep(Duration::from_millis(500));

    // Still running, still enforcing the last good state.
    for a in &mut agents {
        assert!(a.0.try_wait().unwrap().is_none(), "an agent exited on bad input");
    }
    assert!(!probe::tcp(&test, api), "the broken default-deny file must keep its last good policy");
    assert!(!probe::tcp(&ext, test_addr), "default-deny was dropped with its broken file");
    assert!(probe::tcp(&front, api), "valid policies still apply");
    let stderr: String =
        logs.iter().map(|l| fs::read_to_string(l.with_extension("stderr")).unwrap_or_default()).collect();
    assert!(stderr.contains("bad-cidr.yaml") && stderr.contains("10.0.0.0/33"), "{stderr}");
    assert!(stderr.contains("truncated.yaml"), "{stderr}");
    assert!(stderr.contains("example.com/v1/Gadget"), "the unknown kind is reported: {stderr}");
}

#[test]
fn a_new_pod_selected_by_a_policy_is_isolated_from_its_first_packet() {
    if !require_root("a_new_pod_selected_by_a_policy_is_isolated_from_its_first_packet") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = workload_dir(dir.path());
    copy(&examples().join("policies").join("01-default-deny.yaml"), &manifests.join("01-default-deny.yaml"));
    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::new(&nodes).unwrap();
    tb.add_pod("default/apiserver", 0, Ipv4Addr::new(10, 244, 1, 10)).unwrap();
    for p in &tb.pods {
        probe::serve(&p.ns, &[80], &[]).unwrap();
    }
    let (_agents, logs) = start_agents(&tb, &manifests, dir.path());
    assert!(wait_for(&logs, "attached", 1) && wait_for(&logs, "policy synced", 2), "agents did not start");

    // The pod is created the way Kubernetes does it: the object first (the
    // agent learns its address and that default-deny selects it), then the
    // network (the agent attaches when the veth and route appear), then the
    // workload starts — here, once the agent has attached.
    let new_ip = Ipv4Addr::new(10, 244, 2, 77);
    fs::write(
        manifests.join("newcomer.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: newcomer, namespace: default}}\n\
             spec: {{nodeName: node-2, containers: [{{name: c, image: x}}]}}\nstatus: {{podIP: {new_ip}}}\n"
        ),
    )
    .unwrap();
    assert!(wait_for(&logs, "policy synced", 3), "the new pod was not compiled");
    tb.add_pod("default/newcomer", 1, new_ip).unwrap();
    assert!(wait_for(&logs, "attached", 2), "the new pod was not attached");

    let newcomer = tb.pod("default/newcomer").unwrap().ns.name().to_string();
    assert!(!probe::tcp(&newcomer, SocketAddr::from((Ipv4Addr::new(10, 244, 1, 10), 80))), "first connection got out");
    std::thread::sleep(Duration::from_millis(500));
    // Its very first flow in the flow log is a drop.
    let flows = fs::read_to_string(&logs[1]).unwrap_or_default();
    let first = flows.lines().find(|l| l.contains(&new_ip.to_string())).unwrap_or_default().to_string();
    assert!(first.contains("\"verdict\":\"denied\""), "first flow of the new pod: {first}\n{flows}");
}

#[test]
fn policy_audit_mode_reports_denials_and_restarting_without_it_enforces() {
    if !require_root("policy_audit_mode_reports_denials_and_restarting_without_it_enforces") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pinned = pinned_bookstore(dir.path());
    let Pinned { tb, logs, .. } = &pinned;
    let api = SocketAddr::from((Ipv4Addr::new(10, 244, 1, 10), 80));
    let test_ns = tb.pod("default/test").unwrap().ns.name().to_string();
    let front_ns = tb.pod("default/frontend").unwrap().ns.name().to_string();

    // Audit mode: what the policies deny still connects, and is reported.
    let agents = pinned.start(&["--policy-audit"]);
    assert!(wait_for(logs, "attached", 3), "agents did not attach");
    let audit_gauge = |tb: &Testbed| testbed::cluster::admin_get(tb.nodes[0].ns.name(), 15021, "/metrics");
    assert!(audit_gauge(tb).contains("ztunnel_policy_audit_mode 1"), "{}", audit_gauge(tb));
    assert!(probe::tcp(&test_ns, api), "audit mode: default/test -> apiserver must pass");
    assert!(probe::tcp(&front_ns, api), "the frontend is allowed anyway");
    let audited = || {
        flow_records(logs)
            .into_iter()
            .filter(|v| v["verdict"] == "audit" && v["reason"] == "audit")
            .map(|v| (v["src"].as_str().unwrap_or("").to_string(), v["pod"].as_str().unwrap_or("").to_string()))
            .collect::<Vec<_>>()
    };
    assert!(
        until(Duration::from_secs(3), true, || audited().iter().any(|(src, _)| src.starts_with("10.244.2.12:")))
            .is_some(),
        "no audit record of default/test's connection: {:?}",
        audited()
    );
    assert!(!audited().iter().any(|(src, _)| src.starts_with("10.244.2.10:")), "an allowed flow was audited");

    // A connection let through by audit mode, held across the restart.
    let long = Held::open(&test_ns, api);
    assert!(long.echo(b'a'), "the held connection works in audit mode");

    // Restarted without audit mode: enforced again, the held connection too.
    drop(agents);
    let agents = pinned.start(&[]);
    assert!(wait_for(logs, "re-adopted", 3), "restarted agents did not re-adopt");
    assert!(!probe::tcp(&test_ns, api), "enforcing again: default/test must be denied");
    assert!(audit_gauge(tb).contains("ztunnel_policy_audit_mode 0"), "{}", audit_gauge(tb));
    assert!(probe::tcp(&front_ns, api), "the frontend keeps access");
    assert!(!long.echo(b'b'), "the connection audit mode let through must be cut");
    long.close();
    drop(agents);
}

#[test]
fn a_namespace_label_audits_its_pods_and_removing_it_enforces_again() {
    if !require_root("a_namespace_label_audits_its_pods_and_removing_it_enforces_again") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pinned = pinned_bookstore(dir.path());
    let Pinned { manifests, tb, logs, .. } = &pinned;
    let _agents = pinned.start(&[]);
    assert!(wait_for(logs, "attached", 3), "agents did not attach");
    let api = SocketAddr::from((Ipv4Addr::new(10, 244, 1, 10), 80));
    let test_ns = tb.pod("default/test").unwrap().ns.name().to_string();
    let front_ns = tb.pod("default/frontend").unwrap().ns.name().to_string();
    assert!(!probe::tcp(&test_ns, api), "enforcing: default/test -> apiserver is denied");

    // Label the namespace: every agent flags its pods, nothing else changes.
    let namespaces = manifests.join("namespaces.yaml");
    let original = fs::read_to_string(&namespaces).unwrap();
    assert!(original.contains("  name: default\n"), "{original}");
    let labelled = original.replacen(
        "  name: default\n",
        "  name: default\n  labels:\n    ztunnel.io/policy-audit: \"true\"\n",
        1,
    );
    let metrics = |i: usize| testbed::cluster::admin_get(tb.nodes[i].ns.name(), 15021, "/metrics");
    // The gauge counts the node's pods of the manifests in `default`.
    let audit_pods = |i: usize| {
        metrics(i).lines().find_map(|l| l.strip_prefix("ztunnel_policy_audit_pods ")?.trim().parse::<u64>().ok())
    };
    assert_eq!((audit_pods(0), audit_pods(1)), (Some(0), Some(0)));
    fs::write(&namespaces, &labelled).unwrap();
    assert!(
        until(Duration::from_secs(5), true, || audit_pods(0) > Some(0) && audit_pods(1) > Some(0)).is_some(),
        "the audit gauge did not follow the label:\n{}\n{}",
        metrics(0),
        metrics(1)
    );
    assert!(metrics(0).contains("ztunnel_policy_audit_mode 0"), "the node itself still enforces");
    assert!(probe::tcp(&test_ns, api), "namespace audit: default/test -> apiserver must pass");
    assert!(probe::tcp(&front_ns, api), "the frontend is allowed anyway");
    let audited = || {
        flow_records(logs)
            .into_iter()
            .filter(|v| v["verdict"] == "audit")
            .map(|v| v["src"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        until(Duration::from_secs(3), true, || audited().iter().any(|src| src.starts_with("10.244.2.12:"))).is_some(),
        "no audit record of default/test's connection: {:?}",
        audited()
    );
    // The audit record at the API server names the policies that isolate it
    // (node-1's record may reach its log after node-2's, waited for above).
    let isolating = || -> Vec<String> {
        flow_records(&logs[..1])
            .into_iter()
            .filter(|v| v["verdict"] == "audit" && v["direction"] == "ingress")
            .flat_map(|v| v["isolated_by"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect()
    };
    assert!(
        until(Duration::from_secs(3), true, || isolating().iter().any(|p| p == "default/default-deny")).is_some(),
        "{:?}",
        isolating()
    );
    let long = Held::open(&test_ns, api);
    assert!(long.echo(b'a'), "the held connection works while audited");

    // Label removed: enforced again, and the audited connection is cut.
    fs::write(&namespaces, &original).unwrap();
    assert!(
        until(Duration::from_secs(5), true, || audit_pods(0) == Some(0) && audit_pods(1) == Some(0)).is_some(),
        "{}",
        metrics(1)
    );
    assert!(!probe::tcp(&test_ns, api), "enforcing again: default/test must be denied");
    assert!(probe::tcp(&front_ns, api), "the frontend keeps access");
    assert!(!long.echo(b'b'), "the connection the label let through must be cut");
    long.close();
}

/// Local mode applies a manifest change when the file is written (inotify
/// on the directory), not at the next poll: with a ten-second poll, a
/// policy file added and removed takes effect within a second or two.
#[test]
fn local_mode_applies_a_written_file_at_once_not_a_poll_later() {
    if !require_root("local_mode_applies_a_written_file_at_once_not_a_poll_later") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = workload_dir(dir.path());
    let mut tb = Testbed::new(&["node-1"]).unwrap();
    tb.add_pod("default/apiserver", 0, Ipv4Addr::new(10, 244, 1, 10)).unwrap();
    tb.add_pod("default/db", 0, Ipv4Addr::new(10, 244, 1, 11)).unwrap();
    probe::serve(&tb.pod("default/apiserver").unwrap().ns, &[80], &[]).unwrap();
    let db = tb.pod("default/db").unwrap().ns.name().to_string();
    let log = dir.path().join("node-1.flows.jsonl");
    let _agent = spawn_agent(tb.nodes[0].ns.name(), &manifests, "node-1", &log, None, &[], 10_000);
    assert!(wait_for(std::slice::from_ref(&log), "attached", 2), "agent did not start");
    let api = SocketAddr::from((Ipv4Addr::new(10, 244, 1, 10), 80));
    assert!(until(Duration::from_secs(12), true, || probe::tcp(&db, api)).is_some(), "no policy: allowed");
    let policy = manifests.join("deny.yaml");
    for round in 0..2 {
        let t = Instant::now();
        fs::write(
            &policy,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: default}\n\
             spec: {podSelector: {}, policyTypes: [Ingress]}\n",
        )
        .unwrap();
        assert!(
            until(Duration::from_secs(12), false, || probe::tcp(&db, api)).is_some(),
            "round {round}: never denied"
        );
        assert!(t.elapsed() < Duration::from_secs(3), "round {round}: the file took {:?} to apply", t.elapsed());
        let t = Instant::now();
        fs::remove_file(&policy).unwrap();
        assert!(
            until(Duration::from_secs(12), true, || probe::tcp(&db, api)).is_some(),
            "round {round}: never allowed"
        );
        assert!(t.elapsed() < Duration::from_secs(3), "round {round}: the removal took {:?} to apply", t.elapsed());
    }
}
