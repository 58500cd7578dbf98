//! The kernel programs against the reference evaluator on random clusters:
//! the property test of `policy/tests/properties.rs` (compiled tables
//! looked up in Rust) carried one step further, through the real maps and
//! the real classifiers (`BPF_PROG_TEST_RUN` on crafted packets): random
//! change sequences build a cluster (pods with IPv4 and IPv6 addresses,
//! host-network pods, nodes, namespaces, policies with selectors,
//! expressions, ipBlocks with except, named ports, ranges, TCP/UDP/SCTP),
//! it is compiled and written to the maps, and every direction of every
//! probe between its addresses and external ones must get the evaluator's
//! verdict.
//!
//! Needs root. Without root it skips loudly; with `CI=true` a skip fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::net::IpAddr;

use common::*;
use policy::arbitrary::{Op, op};
use policy::compile::{Compiler, Scope};
use policy::eval::evaluate_packet;
use policy::{Cluster, Direction, Protocol};
use proptest::prelude::*;

/// Addresses outside the cluster, inside and outside the generators' CIDR pool.
const EXTERNAL: [&str; 7] =
    ["10.0.0.200", "172.16.0.40", "172.16.1.1", "192.168.7.7", "8.8.8.8", "fd00::99", "2001:db8::1"];
const PORTS: [(u16, Protocol); 6] = [
    (80, Protocol::Tcp),
    (8080, Protocol::Tcp),
    (1005, Protocol::Tcp),
    (53, Protocol::Udp),
    (9, Protocol::Sctp),
    (0, Protocol::Icmp),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 64, .. ProptestConfig::default() })]

    #[test]
    fn kernel_verdicts_match_the_evaluator_on_random_clusters(ops in proptest::collection::vec(op(), 1..40)) {
        if !privileged("kernel_verdicts_match_the_evaluator_on_random_clusters") {
            return Ok(());
        }
        let mut cluster = Cluster::new();
        for o in ops {
            match o {
                Op::Apply(obj) => cluster.apply(obj),
                Op::Delete(r) => {
                    cluster.delete(&r);
                }
            }
        }
        let compiler = Compiler::from_cluster(Scope::Cluster, &cluster);
        let tables = compiler.tables();
        let mut dp = load(tables);
        let mut addrs: Vec<IpAddr> = cluster.pods().flat_map(|p| p.ips.clone()).collect();
        addrs.extend(cluster.nodes().flat_map(|n| n.addresses.clone()));
        addrs.extend(EXTERNAL.iter().map(|s| s.parse::<IpAddr>().unwrap()));
        addrs.sort();
        addrs.dedup();
        let mut checked = 0usize;
        for &src in &addrs {
            for &dst in addrs.iter().filter(|d| d.is_ipv4() == src.is_ipv4()) {
                for (port, proto) in PORTS {
                    let v = evaluate_packet(&cluster, src, dst, port, proto);
                    let pkt = packet(src, dst, proto, port);
                    for (subject, dir, want) in
                        [(src, Direction::Egress, &v.egress), (dst, Direction::Ingress, &v.ingress)]
                    {
                        let Some(pod) = cluster.pod_by_ip(subject) else { continue };
                        let Some(ep) = tables.endpoint_of(&pod.key) else { continue };
                        // The policy verdict, with a namespace's audit flag
                        // cleared: it must be the evaluator's.
                        let got = dp.run_with(tables, ep, dir, &pkt, |e| e.audit = 0);
                        checked += 1;
                        let expect = if want.allowed() { TC_ACT_OK } else { TC_ACT_SHOT };
                        prop_assert_eq!(
                            got, expect,
                            "{} of {}: {} -> {} {}/{}: evaluator says {:?}",
                            dir, pod.key, src, dst, port, proto, want
                        );
                        // As compiled: a namespace in audit mode passes what
                        // its policies deny; any other stays as decided.
                        // (Without the flag the entry is the one just run.)
                        let audited = cluster.policy_audited(&pod.key.namespace);
                        prop_assert_eq!(tables.endpoints[&ep].audit, audited);
                        if audited {
                            let got = dp.run(tables, ep, dir, &pkt);
                            prop_assert_eq!(
                                got, TC_ACT_OK,
                                "{} of {} (audited): {} -> {} {}/{}", dir, pod.key, src, dst, port, proto
                            );
                        }
                    }
                }
            }
        }
        // Every pod address is probed in both directions.
        let endpoints_with_addresses = cluster.pods().filter(|p| !p.ips.is_empty() && tables.endpoint_of(&p.key).is_some()).count();
        prop_assert!(endpoints_with_addresses == 0 || checked > 0);
    }
}
