//! Kubernetes mode on real traffic: the seed workload and policies live in
//! the fake API server (inside node-1's namespace, reached over the node
//! link), the CA runs with `--kube` (state in a Secret, agents
//! authenticated by TokenReview) and both agents run with `--kube` and the
//! mesh. Every pod-to-pod probe must match the reference evaluator, as in
//! local mode; during an API outage enforcement stays (fail static) and
//! readiness says why; after it, policy changes apply again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use policy::eval::{Endpoint, evaluate};
use policy::manifest::parse_str;
use policy::{Cluster, Protocol};
use testbed::cluster::{CA_ADDR, Proc, admin_get, mesh_agent_args, spawn_env, until};
use testbed::fakeapi::{FakeApi, TokenIdentity};
use testbed::{Testbed, probe, require_root};

fn example_texts() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut out = Vec::new();
    for dir in ["workload", "policies"] {
        let mut files: Vec<_> = fs::read_dir(root.join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        out.extend(files.iter().map(|f| fs::read_to_string(f).unwrap()));
    }
    out
}

/// Probes every pod against every other on TCP 80 and UDP 53; returns the
/// mismatches with the evaluator.
fn conformance(tb: &Testbed, cluster: &Cluster) -> (usize, Vec<String>) {
    let ends: Vec<(String, Ipv4Addr, String)> =
        tb.pods.iter().map(|p| (p.key.clone(), p.ip, p.ns.name().to_string())).collect();
    let mut cases = Vec::new();
    for (from, _, ns) in &ends {
        for (to, ip, _) in &ends {
            if from != to {
                for (port, proto) in [(80u16, Protocol::Tcp), (53, Protocol::Udp)] {
                    cases.push((from.clone(), ns.clone(), to.clone(), *ip, port, proto));
                }
            }
        }
    }
    let mut failures = Vec::new();
    for chunk in cases.chunks(64) {
        let handles: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|(from, ns, to, ip, port, proto)| {
                let h = std::thread::spawn(move || match proto {
                    Protocol::Udp => probe::udp(&ns, SocketAddr::from((ip, port))),
                    _ => probe::tcp(&ns, SocketAddr::from((ip, port))),
                });
                (from, to, port, proto, h)
            })
            .collect();
        for (from, to, port, proto, h) in handles {
            let got = h.join().unwrap();
            let want = evaluate(
                cluster,
                &Endpoint::Pod(from.parse().unwrap()),
                &Endpoint::Pod(to.parse().unwrap()),
                port,
                proto,
            )
            .unwrap()
            .allowed();
            if got != want {
                failures.push(format!("{from} -> {to} {port}/{proto}: observed {got}, evaluator {want}"));
            }
        }
    }
    (cases.len(), failures)
}

#[test]
fn kube_mode_agents_and_ca_enforce_the_seed_policies_like_local_mode() {
    if !require_root("kube_mode_agents_and_ca_enforce_the_seed_policies_like_local_mode") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let texts = example_texts();
    let mut objects = Vec::new();
    for t in &texts {
        objects.extend(parse_str("example", t).objects.into_iter().map(|(_, o)| o));
    }
    let cluster = Cluster::from_objects(objects);

    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::with_prefix("ztkube", &nodes).unwrap();
    for pod in cluster.pods() {
        let node = nodes.iter().position(|n| Some(*n) == pod.node.as_deref()).unwrap();
        let IpAddr::V4(ip) = pod.ips[0] else { panic!("v4 workload") };
        tb.add_pod(&pod.key.to_string(), node, ip).unwrap();
    }
    for p in &tb.pods {
        probe::serve(&p.ns, &[80], &[53]).unwrap();
    }
    let ns: Vec<String> = tb.nodes.iter().map(|n| n.ns.name().to_string()).collect();

    // The API server, on node-1's link address.
    let listener = tb.nodes[0].ns.run(|| TcpListener::bind("192.168.100.1:6443")).unwrap().unwrap();
    let api = FakeApi::start(listener).unwrap();
    let kubeconfig = root.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    for t in &texts {
        api.apply_yaml(t).unwrap();
    }

    // The CA's state in its Secret; agent tokens known to TokenReview.
    let ca_dir = root.join("ca");
    testbed::kubetest::ca_in_secret(&api, &ca_dir);
    let tokens = root.join("tokens");
    fs::create_dir_all(&tokens).unwrap();
    for n in nodes {
        let token = format!("projected-token-of-the-agent-on-{n}");
        api.add_token(
            &token,
            TokenIdentity {
                username: "system:serviceaccount:ztunnel-system:ztunnel-agent".into(),
                node: Some(n.into()),
                audiences: vec!["ztunnel-ca".into()],
            },
        );
        fs::write(tokens.join(n), token).unwrap();
    }
    let kc = kubeconfig.to_str().unwrap();
    let env = [("KUBECONFIG", kc)];
    let _ca = spawn_env(
        &ns[0],
        &env,
        &["ca", "serve", "--kube", "--listen", CA_ADDR, "--admin", "127.0.0.1:15022", "--poll-ms", "200"],
        &root.join("ca.log"),
    )
    .unwrap();
    let d = ca_dir.to_str().unwrap();
    let _agents: Vec<Proc> = (0..2)
        .map(|i| {
            let flows = root.join(format!("{}.flows.jsonl", nodes[i]));
            let mut args = mesh_agent_args("-", nodes[i], i, d, None, flows.to_str().unwrap());
            // Kubernetes mode: no manifest directory; the token is the
            // TokenReview one.
            let at = args.iter().position(|a| a == "--local").unwrap();
            args.splice(at..at + 2, ["--kube".to_string()]);
            let t = args.iter().position(|a| a == "--ca-token").unwrap();
            args[t + 1] = tokens.join(nodes[i]).display().to_string();
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            spawn_env(&ns[i], &env, &refs, &root.join(format!("{}.log", nodes[i]))).unwrap()
        })
        .collect();
    let logs = || -> String {
        ["ca.log", "node-1.log", "node-2.log"]
            .iter()
            .map(|f| format!("--- {f}\n{}", fs::read_to_string(root.join(f)).unwrap_or_default()))
            .collect()
    };
    let ready =
        until(Duration::from_secs(40), || (0..2).all(|i| admin_get(&ns[i], 15021, "/ready").contains("200 OK")));
    assert!(ready, "agents not ready in Kubernetes mode\n{}", logs());
    assert!(admin_get(&ns[0], 15021, "/config_dump").contains("spiffe://cluster.local/ns/default/sa/bookstore"));
    assert!(api.reviews() >= 1, "the CA asked the API server about the agents' tokens");

    // The same verdicts as the evaluator on the same objects.
    let (n, failures) = conformance(&tb, &cluster);
    assert!(failures.is_empty(), "{} of {n} probes differ:\n{}\n{}", failures.len(), failures.join("\n"), logs());
    eprintln!("{n} probes in Kubernetes mode match the evaluator");

    // API outage: enforcement and the mesh go on with the last known state,
    // readiness reports it.
    api.set_down(true);
    let unready =
        until(Duration::from_secs(15), || admin_get(&ns[0], 15021, "/ready").contains("API server unreachable"));
    assert!(unready, "readiness did not report the outage\n{}", admin_get(&ns[0], 15021, "/ready"));
    let (_, failures) = conformance(&tb, &cluster);
    assert!(failures.is_empty(), "during the outage:\n{}", failures.join("\n"));

    // Back: a policy change made through the API applies.
    api.set_down(false);
    assert!(until(Duration::from_secs(40), || (0..2).all(|i| admin_get(&ns[i], 15021, "/ready").contains("200 OK"))));
    assert!(api.delete("NetworkPolicy", "default", "default-deny"));
    let mut after = Vec::new();
    for t in &texts {
        after.extend(parse_str("example", t).objects.into_iter().map(|(_, o)| o));
    }
    after.retain(|o| o.describe() != "NetworkPolicy default/default-deny");
    let cluster_after = Cluster::from_objects(after);
    let converged = until(Duration::from_secs(20), || conformance(&tb, &cluster_after).1.is_empty());
    assert!(converged, "{:?}", conformance(&tb, &cluster_after).1);

    // Namespace audit mode through the API: labelling `default` lets what
    // its policies deny through — in the datapath on both nodes and in the
    // destination proxy's re-check — and reports it; the label's removal
    // enforces again.
    let test_ns = tb.pod("default/test").unwrap().ns.name().to_string();
    let apiserver = SocketAddr::from((Ipv4Addr::new(10, 244, 1, 10), 80));
    assert!(!probe::tcp(&test_ns, apiserver), "default/test -> apiserver is denied by default/api-allow");
    let namespace = |labels: serde_json::Value| serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "labels": labels}});
    api.apply(namespace(serde_json::json!({"ztunnel.io/policy-audit": "true"})));
    let audited = until(Duration::from_secs(20), || probe::tcp(&test_ns, apiserver));
    assert!(audited, "the audit label did not let the denied flow through\n{}", logs());
    let metrics = admin_get(&ns[0], 15021, "/metrics");
    assert!(!metrics.contains("ztunnel_policy_audit_pods 0"), "{metrics}");
    let audits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ztunnel_tunnel_policy_audits_total ")?.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(audits >= 1.0, "the destination proxy's re-check was audited too: {metrics}");
    api.apply(namespace(serde_json::json!({})));
    let enforced = until(Duration::from_secs(20), || !probe::tcp(&test_ns, apiserver));
    assert!(enforced, "removing the label did not enforce again\n{}", logs());

    // A Service made through the API: its cluster IP reaches the API server
    // for a pod its policy admits, and stays closed to one it does not.
    api.apply_yaml(
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: default}\n\
         spec: {clusterIP: 10.96.0.50, ports: [{name: http, port: 8080}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: api-1, namespace: default, labels: {kubernetes.io/service-name: api}}\n\
         addressType: IPv4\nports: [{name: http, port: 80}]\nendpoints: [{addresses: [10.244.1.10]}]\n",
    )
    .unwrap();
    let front = tb.pod("default/frontend").unwrap().ns.name().to_string();
    let vip = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 50), 8080));
    let served = until(Duration::from_secs(20), || probe::tcp(&front, vip));
    assert!(served, "the Service from the API was not translated\n{}", logs());
    assert!(!probe::tcp(&test_ns, vip), "default/api-allow denies default/test through the Service too");
}
