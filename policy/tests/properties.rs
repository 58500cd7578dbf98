//! Property tests of the compiler against the reference evaluator.
//!
//! For random clusters built by random sequences of object changes:
//! 1. the compiled tables, looked up the way the datapath looks them up
//!    ([`Tables::decide`]), give exactly the evaluator's verdict for every
//!    direction of every packet between pods, nodes and external addresses;
//! 2. compiling incrementally gives the same tables as compiling the final
//!    state from scratch (up to numbering);
//! 3. the diffs, applied in order to empty tables, rebuild the tables.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use policy::Direction;
use policy::arbitrary::{Op, op};
use policy::cluster::AddressOwner;
use policy::compile::{Compiler, Scope, Tables};
use policy::eval::{evaluate_ingress, evaluate_packet};
use policy::model::Protocol;
use proptest::prelude::*;
use proptest::sample::select;

/// Every address worth probing: pods', nodes', and external ones chosen to
/// sit inside and outside the CIDR pool.
fn probe_addresses(c: &policy::Cluster) -> Vec<IpAddr> {
    let mut set: BTreeSet<IpAddr> = c.pods().flat_map(|p| p.ips.iter().copied()).collect();
    set.extend(c.nodes().flat_map(|n| n.addresses.iter().copied()));
    for s in [
        "10.0.0.200",
        "10.0.0.5",
        "172.16.0.40",
        "172.16.0.41",
        "203.0.113.5",
        "192.168.7.7",
        "fd00::ff",
        "fd00::3",
        "2001:db8::1",
    ] {
        set.insert(s.parse().unwrap());
    }
    set.into_iter().collect()
}

/// Checks every packet between probe addresses against the evaluator, with
/// each side decided by the tables of the node the pod is on (or the
/// cluster-scope tables).
fn check_against_evaluator(
    tables: &BTreeMap<Option<String>, Tables>,
    c: &policy::Cluster,
    ports: &[(u16, Protocol)],
) -> Result<(), TestCaseError> {
    let addrs = probe_addresses(c);
    let decide = |subject: IpAddr, dir: Direction, peer: IpAddr, proto: Protocol, port: u16| -> Option<bool> {
        let AddressOwner::Pod(p) = c.owner(subject) else {
            return None;
        };
        let mut verdicts = Vec::new();
        for (scope, t) in tables {
            if scope.is_some() && scope.as_ref() != p.node.as_ref() {
                continue;
            }
            let ep = t.endpoint_of(&p.key).unwrap_or_else(|| panic!("{} has no endpoint in {scope:?}", p.key));
            verdicts.push(t.decide(ep, dir, peer, proto, port).allowed());
        }
        assert!(verdicts.windows(2).all(|w| w[0] == w[1]), "scopes disagree: {verdicts:?}");
        verdicts.first().copied()
    };
    for &src in &addrs {
        for &dst in &addrs {
            if src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            for &(port, proto) in ports {
                let v = evaluate_packet(c, src, dst, port, proto);
                prop_assert_eq!(&evaluate_ingress(c, src, dst, port, proto), &v.ingress, "ingress half alone");
                if let Some(egress) = decide(src, Direction::Egress, dst, proto, port) {
                    prop_assert_eq!(
                        egress,
                        v.egress.allowed(),
                        "egress {} -> {} {}/{}: evaluator {:?}",
                        src,
                        dst,
                        port,
                        proto,
                        v.egress
                    );
                }
                if let Some(ingress) = decide(dst, Direction::Ingress, src, proto, port) {
                    prop_assert_eq!(
                        ingress,
                        v.ingress.allowed(),
                        "ingress {} -> {} {}/{}: evaluator {:?}",
                        src,
                        dst,
                        port,
                        proto,
                        v.ingress
                    );
                }
            }
        }
    }
    Ok(())
}

fn probe_ports() -> impl Strategy<Value = Vec<(u16, Protocol)>> {
    proptest::collection::vec(
        (
            select(vec![53u16, 80, 1000, 1005, 1010, 2100, 8080, 9090, 9180]),
            select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]),
        ),
        2..4,
    )
    .prop_map(|mut v| {
        v.push((0, Protocol::Icmp));
        v
    })
}

fn run(ops: &[Op], ports: &[(u16, Protocol)]) -> Result<(), TestCaseError> {
    let scopes = [Scope::Cluster, Scope::Node("n1".into()), Scope::Node("n2".into())];
    let mut compilers: Vec<Compiler> = scopes.iter().cloned().map(Compiler::new).collect();
    let mut replayed: Vec<Tables> = vec![Tables::default(); scopes.len()];
    for op in ops {
        for (c, r) in compilers.iter_mut().zip(replayed.iter_mut()) {
            let diff = match op {
                Op::Apply(o) => c.apply(o.clone()),
                Op::Delete(d) => c.delete(d),
            };
            r.apply(&diff);
        }
    }
    let mut by_scope = BTreeMap::new();
    for (c, r) in compilers.iter().zip(&replayed) {
        prop_assert_eq!(r, c.tables(), "diffs must rebuild the tables ({:?})", c.scope());
        let scratch = Compiler::from_cluster(c.scope().clone(), c.cluster());
        prop_assert_eq!(
            scratch.tables().canonical(),
            c.tables().canonical(),
            "incremental != scratch ({:?})",
            c.scope()
        );
        let key = match c.scope() {
            Scope::Cluster => None,
            Scope::Node(n) => Some(n.clone()),
        };
        by_scope.insert(key, c.tables().clone());
    }
    check_against_evaluator(&by_scope, compilers[0].cluster(), ports)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, max_shrink_iters: 4000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_tables_agree_with_evaluator(ops in proptest::collection::vec(op(), 1..40), ports in probe_ports()) {
        run(&ops, &ports)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Larger clusters built in one go, then churned.
    #[test]
    fn churn_on_larger_clusters(
        base in proptest::collection::vec(op(), 40..80),
        churn in proptest::collection::vec(op(), 1..20),
        ports in probe_ports(),
    ) {
        let ops: Vec<Op> = base.into_iter().chain(churn).collect();
        run(&ops, &ports)?;
    }
}
