//! The seed scenarios under `deploy/examples/`, applied step by step as the
//! demo applies them. Expectations are the outcomes the seed guides state
//! (and the API definition implies), written out by hand; each step is also
//! compiled and checked against the evaluator on the datapath lookup.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::fs;
use std::path::{Path, PathBuf};

use policy::compile::{Compiler, Scope};
use policy::eval::{Endpoint, evaluate};
use policy::manifest::{Object, parse_str};
use policy::{Cluster, Direction, ObjectKey, Protocol};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

fn read_dir_objects(dir: &Path) -> Vec<Object> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.iter().flat_map(|f| read_file_objects(f)).collect()
}

fn read_file_objects(f: &Path) -> Vec<Object> {
    let text = fs::read_to_string(f).unwrap();
    let parsed = parse_str(&f.display().to_string(), &text);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert!(parsed.ignored.is_empty(), "{:?}", parsed.ignored);
    parsed.objects.into_iter().map(|(_, o)| o).collect()
}

/// The cluster after applying policy files 01..=step.
fn step(n: usize) -> Cluster {
    let mut objects = read_dir_objects(&examples().join("workload"));
    let mut files: Vec<PathBuf> =
        fs::read_dir(examples().join("policies")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 9, "{files:?}");
    for f in files.iter().take(n) {
        objects.extend(read_file_objects(f));
    }
    Cluster::from_objects(objects)
}

fn ep(s: &str) -> Endpoint {
    match s.parse() {
        Ok(ip) => Endpoint::Ip(ip),
        Err(_) => Endpoint::Pod(s.parse::<ObjectKey>().unwrap()),
    }
}

/// `(from, to, port/proto, allowed)`.
type Case = (&'static str, &'static str, &'static str, bool);

fn check(c: &Cluster, cases: &[Case]) {
    for (from, to, port, want) in cases {
        let (p, proto) = port.split_once('/').unwrap();
        let v = evaluate(c, &ep(from), &ep(to), p.parse().unwrap(), proto.parse::<Protocol>().unwrap()).unwrap();
        assert_eq!(v.allowed(), *want, "{from} -> {to} {port}: {v:?}");
    }
    check_compiled(c);
}

/// Both nodes' compiled tables agree with the evaluator on every pod pair of
/// the workload, for the ports the scenarios use.
fn check_compiled(c: &Cluster) {
    let tables: Vec<(String, Compiler)> = ["node-1", "node-2"]
        .iter()
        .map(|n| (n.to_string(), Compiler::from_cluster(Scope::Node(n.to_string()), c)))
        .collect();
    let mut addrs: Vec<std::net::IpAddr> = c.pods().flat_map(|p| p.ips.clone()).collect();
    addrs.extend(
        ["203.0.113.10", "172.16.0.10", "172.16.0.40", "192.168.100.1", "100.64.0.9"]
            .map(|s| s.parse::<std::net::IpAddr>().unwrap()),
    );
    for src in &addrs {
        for dst in &addrs {
            for (port, proto) in [
                (80, Protocol::Tcp),
                (6379, Protocol::Tcp),
                (53, Protocol::Udp),
                (53, Protocol::Tcp),
                (0, Protocol::Icmp),
            ] {
                let v = policy::evaluate_packet(c, *src, *dst, port, proto);
                for (subject, dir, peer, want) in
                    [(src, Direction::Egress, dst, &v.egress), (dst, Direction::Ingress, src, &v.ingress)]
                {
                    let Some(pod) = c.pod_by_ip(*subject) else {
                        continue;
                    };
                    let (_, comp) = tables.iter().find(|(n, _)| Some(n) == pod.node.as_ref()).unwrap();
                    let t = comp.tables();
                    let got = t.decide(t.endpoint_of(&pod.key).unwrap(), dir, *peer, proto, port).allowed();
                    assert_eq!(got, want.allowed(), "{dir} {src} -> {dst} {port}/{proto}");
                }
            }
        }
    }
}

#[test]
fn step0_no_policy_everything_reaches_everything() {
    let c = step(0);
    check(
        &c,
        &[
            ("default/test", "default/apiserver", "80/TCP", true),
            ("other/client", "default/db", "6379/TCP", true),
            ("203.0.113.10", "test-np/intranet", "80/TCP", true),
        ],
    );
}

#[test]
fn step1_default_deny_isolates_namespace_default_both_ways() {
    let c = step(1);
    check(
        &c,
        &[
            ("default/frontend", "default/apiserver", "80/TCP", false),
            ("other/client", "default/db", "6379/TCP", false),
            ("default/test", "kube-system/coredns", "53/UDP", false),
            ("default/db", "172.16.0.10", "443/TCP", false),
            ("other/client", "kube-system/coredns", "53/UDP", true),
            ("default/web", "default/web", "80/TCP", true),
        ],
    );
}

#[test]
fn step2_dns_is_open_on_udp_53_only() {
    let c = step(2);
    check(
        &c,
        &[
            ("default/test", "kube-system/coredns", "53/UDP", true),
            ("default/apiserver", "kube-system/coredns", "53/UDP", true),
            ("default/test", "kube-system/coredns", "53/TCP", false),
            ("default/test", "default/apiserver", "80/TCP", false),
            ("default/test", "203.0.113.10", "53/UDP", false),
        ],
    );
}

#[test]
fn step3_bookstore_api_accepts_bookstore_pods_only() {
    let c = step(3);
    check(
        &c,
        &[
            ("default/frontend", "default/apiserver", "80/TCP", true),
            ("default/test", "default/apiserver", "80/TCP", false),
            ("myproject/client", "default/apiserver", "80/TCP", false),
            ("default/apiserver", "default/frontend", "8080/TCP", false),
        ],
    );
}

#[test]
fn step4_db_accepts_frontend_on_6379_and_sends_only_to_web() {
    let c = step(4);
    check(
        &c,
        &[
            ("default/frontend", "default/db", "6379/TCP", true),
            ("default/frontend", "default/db", "6380/TCP", false),
            ("default/web", "default/db", "6379/TCP", false),
            ("default/test", "default/db", "6379/TCP", false),
            // db's egress to role=web is allowed, but web's ingress stays
            // isolated by default-deny: a connection needs both sides.
            ("default/db", "default/web", "80/TCP", false),
            ("default/db", "default/apiserver", "80/TCP", false),
        ],
    );
}

#[test]
fn step5_db_accepts_namespace_project_myproject() {
    let c = step(5);
    check(
        &c,
        &[
            ("myproject/client", "default/db", "6379/TCP", true),
            ("other/client", "default/db", "6379/TCP", false),
            ("myproject/client", "default/db", "80/TCP", false),
        ],
    );
}

#[test]
fn step6_db_reaches_172_16_except_40() {
    let c = step(6);
    check(
        &c,
        &[
            ("default/db", "172.16.0.10", "443/TCP", true),
            ("default/db", "172.16.0.40", "443/TCP", false),
            ("default/db", "203.0.113.10", "443/TCP", false),
        ],
    );
}

#[test]
fn step7_test_np_reaches_private_ranges_only_unless_labelled() {
    let c = step(7);
    check(
        &c,
        &[
            ("test-np/intranet", "203.0.113.10", "443/TCP", false),
            ("test-np/intranet", "172.16.0.10", "443/TCP", true),
            ("test-np/intranet", "default/db", "6379/TCP", false),
            ("test-np/intranet", "other/client", "80/TCP", true),
            ("test-np/internet", "203.0.113.10", "443/TCP", true),
            ("203.0.113.10", "test-np/intranet", "80/TCP", true),
            ("other/client", "test-np/intranet", "80/TCP", true),
        ],
    );
}

#[test]
fn step8_nginx_accepts_access_true_and_listed_ranges() {
    let c = step(8);
    check(
        &c,
        &[
            ("shop/busybox", "shop/nginx", "80/TCP", true),
            ("shop/plain", "shop/nginx", "80/TCP", false),
            ("100.64.0.9", "shop/nginx", "80/TCP", true),
            ("10.0.0.77", "shop/nginx", "80/TCP", true),
            ("203.0.113.10", "shop/nginx", "80/TCP", false),
        ],
    );
}

#[test]
fn step9_busybox_reaches_one_site_and_dns_only() {
    let c = step(9);
    check(
        &c,
        &[
            ("shop/busybox", "203.0.113.10", "443/TCP", true),
            ("shop/busybox", "203.0.113.12", "443/TCP", false),
            ("shop/busybox", "kube-system/coredns", "53/UDP", true),
            ("shop/busybox", "shop/nginx", "80/TCP", false),
        ],
    );
}
