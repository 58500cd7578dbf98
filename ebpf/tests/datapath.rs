//! The kernel programs, run by the kernel on crafted packets
//! (`BPF_PROG_TEST_RUN`), against the reference evaluator: the seed example
//! cluster is compiled, written to the real maps with `apply_diff`, and every
//! direction of every probe packet between its pods, nodes and external
//! addresses — TCP, UDP, SCTP (this kernel has no SCTP module, so crafted
//! packets are the only way), ICMP — must get the evaluator's verdict.
//!
//! Needs root (loading BPF programs). Without root the tests skip loudly;
//! with `CI=true` a skip is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::net::IpAddr;

use policy::compile::{Compiler, Scope};
use policy::eval::evaluate_packet;
use policy::{Direction, Protocol};
use zt_ebpf::loader::{MapWriter, apply_diff};
use zt_ebpf::maps;

mod common;

use common::*;

#[test]
fn seed_cluster_verdicts_match_the_evaluator() {
    if !privileged("seed_cluster_verdicts_match_the_evaluator") {
        return;
    }
    let cluster = example_cluster();
    let compiler = Compiler::from_cluster(Scope::Cluster, &cluster);
    let tables = compiler.tables();
    let mut dp = load(tables);

    let mut addrs: Vec<IpAddr> = cluster.pods().flat_map(|p| p.ips.clone()).collect();
    addrs.extend(
        ["203.0.113.10", "172.16.0.10", "172.16.0.40", "192.168.100.1", "192.168.100.2", "100.64.0.9", "10.0.0.77"]
            .map(|s| s.parse::<IpAddr>().unwrap()),
    );
    let probes = [
        (80, Protocol::Tcp),
        (6379, Protocol::Tcp),
        (443, Protocol::Tcp),
        (53, Protocol::Udp),
        (53, Protocol::Tcp),
        (9, Protocol::Sctp),
        (0, Protocol::Icmp),
    ];
    let (mut checked, mut denied) = (0, 0);
    for &src in &addrs {
        for &dst in &addrs {
            for (port, proto) in probes {
                let v = evaluate_packet(&cluster, src, dst, port, proto);
                let pkt = packet(src, dst, proto, port);
                for (subject, dir, want) in [(src, Direction::Egress, &v.egress), (dst, Direction::Ingress, &v.ingress)]
                {
                    let Some(pod) = cluster.pod_by_ip(subject) else {
                        continue;
                    };
                    let ep = tables.endpoint_of(&pod.key).unwrap();
                    let got = dp.run(tables, ep, dir, &pkt);
                    let expect = if want.allowed() { TC_ACT_OK } else { TC_ACT_SHOT };
                    assert_eq!(
                        got, expect,
                        "{dir} of {}: {src} -> {dst} {port}/{proto}: evaluator says {want:?}",
                        pod.key
                    );
                    checked += 1;
                    denied += usize::from(!want.allowed());
                }
            }
        }
    }
    eprintln!("{checked} kernel verdicts checked, {denied} of them drops");
    assert!(checked > 2000 && denied > 500, "the probe set must exercise both verdicts");
}

#[test]
fn unknown_endpoint_and_malformed_packets_are_dropped_non_ip_passes() {
    if !privileged("unknown_endpoint_and_malformed_packets_are_dropped_non_ip_passes") {
        return;
    }
    let cluster = example_cluster();
    let compiler = Compiler::from_cluster(Scope::Cluster, &cluster);
    let mut dp = load(compiler.tables());
    let src: IpAddr = "10.244.2.12".parse().unwrap();
    let dst: IpAddr = "10.244.1.10".parse().unwrap();
    let pkt = packet(src, dst, Protocol::Tcp, 80);

    // No endpoint entry for the interface: fail closed.
    dp.maps.del_endpoint(TEST_IFINDEX).unwrap();
    assert_eq!(dp.test_run(Direction::Egress, &pkt), TC_ACT_SHOT);

    // ARP (not IP) passes even for an unknown interface.
    let mut arp = vec![0u8; 12];
    arp.extend_from_slice(&0x0806u16.to_be_bytes());
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(dp.test_run(Direction::Egress, &arp), TC_ACT_OK);

    // A truncated TCP header is dropped.
    let truncated = &pkt[..14 + 20 + 2];
    let ep = compiler.tables().endpoint_of(&policy::ObjectKey::new("default", "test")).unwrap();
    dp.maps.put_endpoint(TEST_IFINDEX, maps::endpoint(ep, &compiler.tables().endpoints[&ep])).unwrap();
    assert_eq!(dp.test_run(Direction::Egress, truncated), TC_ACT_SHOT);
}

fn events(dp: &mut Datapath) -> Vec<maps::ZtEvent> {
    let mut rb = aya::maps::RingBuf::try_from(dp.bpf.map_mut(zt_ebpf::map_names::EVENTS).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        out.push(maps::ZtEvent::from_bytes(&item).expect("event size"));
    }
    out
}

/// The example cluster's datapath with the test interface as `default/db`
/// (its event ring drained).
fn at_db() -> (Compiler, Datapath, u32) {
    let cluster = example_cluster();
    let compiler = Compiler::from_cluster(Scope::Cluster, &cluster);
    let mut dp = load(compiler.tables());
    let tables = compiler.tables();
    let db = tables.endpoint_of(&policy::ObjectKey::new("default", "db")).unwrap();
    dp.maps.put_endpoint(TEST_IFINDEX, maps::endpoint(db, &tables.endpoints[&db])).unwrap();
    let _ = events(&mut dp);
    (compiler, dp, db)
}

/// A full event ring loses events, never verdicts, and counts every lost
/// event: events drained + events lost = new flows judged.
#[test]
fn a_full_event_ring_counts_lost_events() {
    if !privileged("a_full_event_ring_counts_lost_events") {
        return;
    }
    let (_, mut dp, _) = at_db();
    let lost = |dp: &Datapath| -> u64 {
        let c: aya::maps::PerCpuArray<_, maps::ZtCounter> =
            aya::maps::PerCpuArray::try_from(dp.bpf.map(zt_ebpf::map_names::COUNTERS).unwrap()).unwrap();
        c.get(&maps::COUNTER_EVENTS_LOST, 0).unwrap().iter().map(|c| c.packets).sum()
    };
    let before = lost(&dp);
    // More new flows than the ring holds, none drained in between.
    let flows = 5000u16;
    for i in 0..flows {
        let syn = tcp("10.244.2.10", 20000 + i, "10.244.1.11", 6379, 0x02);
        assert_eq!(dp.test_run(Direction::Ingress, &syn), TC_ACT_OK, "the verdict stands when the ring is full");
    }
    let drained = events(&mut dp).len() as u64;
    let lost = lost(&dp) - before;
    assert!(lost > 0 && drained > 0, "drained {drained}, lost {lost}");
    assert_eq!(drained + lost, u64::from(flows));
}

#[test]
fn conntrack_passes_replies_and_policy_changes_revoke_flows() {
    if !privileged("conntrack_passes_replies_and_policy_changes_revoke_flows") {
        return;
    }
    let (mut compiler, mut dp, db) = at_db();

    let syn = tcp("10.244.2.10", 40000, "10.244.1.11", 6379, 0x02);
    let syn_ack = tcp("10.244.1.11", 6379, "10.244.2.10", 40000, 0x12);
    let ack = tcp("10.244.2.10", 40000, "10.244.1.11", 6379, 0x10);

    // db is egress-isolated (default-deny) with no rule towards the
    // frontend: its SYN-ACK passes only as the reply of a tracked flow.
    dp.clear_ct();
    assert_eq!(dp.test_run(Direction::Egress, &syn_ack), TC_ACT_SHOT, "untracked reply");
    assert_eq!(dp.test_run(Direction::Ingress, &syn), TC_ACT_OK, "frontend may open 6379");
    assert_eq!(dp.test_run(Direction::Egress, &syn_ack), TC_ACT_OK, "reply of a tracked flow");
    assert_eq!(dp.test_run(Direction::Ingress, &ack), TC_ACT_OK, "established");
    // A SYN in the reply direction is a new connection, never a reply.
    let reverse_syn = tcp("10.244.1.11", 6379, "10.244.2.10", 40000, 0x02);
    assert_eq!(dp.test_run(Direction::Egress, &reverse_syn), TC_ACT_SHOT);

    let evs = events(&mut dp);
    assert!(
        evs.iter().any(|e| e.endpoint == db
            && e.direction == 0
            && e.allowed == 1
            && u16::from_be(e.dport) == 6379
            && e.rule != 0),
        "an allow event names the rule: {evs:?}"
    );
    assert!(evs.iter().any(|e| e.allowed == 0), "drops are reported: {evs:?}");

    // Revoke: delete the policies that admit the frontend, sync the maps in
    // order, bump the epoch. The established flow's next packet is dropped.
    let mut diffs = Vec::new();
    for name in ["access-demo1", "access-demo4"] {
        diffs.push(compiler.delete(&policy::ObjectRef::NetworkPolicy(policy::ObjectKey::new("default", name))));
    }
    for d in &diffs {
        apply_diff(&mut dp.maps, d, &|_| None, &|_| None).unwrap();
    }
    let info = &compiler.tables().endpoints[&db];
    dp.maps.put_endpoint(TEST_IFINDEX, maps::endpoint(db, info)).unwrap();
    dp.set_config(maps::ZtConfig { epoch: 1, ..Default::default() });
    assert_eq!(dp.test_run(Direction::Ingress, &ack), TC_ACT_SHOT, "revoked flow is cut");
    assert_eq!(dp.test_run(Direction::Egress, &syn_ack), TC_ACT_SHOT, "and so are its replies");
    let evs = events(&mut dp);
    assert!(evs.iter().any(|e| e.reason == 9 && e.allowed == 0), "revocation is reported: {evs:?}");
}

#[test]
fn audit_mode_passes_and_reports_what_policy_denies_until_it_is_turned_off() {
    if !privileged("audit_mode_passes_and_reports_what_policy_denies_until_it_is_turned_off") {
        return;
    }
    let (_compiler, mut dp, db) = at_db();
    // db may not open connections to the frontend (egress default-deny).
    let syn = tcp("10.244.1.11", 41000, "10.244.2.10", 80, 0x02);
    let ack = tcp("10.244.1.11", 41000, "10.244.2.10", 80, 0x10);
    dp.clear_ct();
    assert_eq!(dp.test_run(Direction::Egress, &syn), TC_ACT_SHOT, "enforcing: denied");
    let evs = events(&mut dp);
    assert!(evs.iter().any(|e| e.reason == 0 && e.allowed == 0), "the denial is reported: {evs:?}");

    dp.set_config(maps::ZtConfig { epoch: 1, audit: 1, ..Default::default() });
    assert_eq!(dp.test_run(Direction::Egress, &syn), TC_ACT_OK, "audit mode: let through");
    assert_eq!(dp.test_run(Direction::Egress, &ack), TC_ACT_OK, "and tracked");
    let evs = events(&mut dp);
    let audited: Vec<_> = evs.iter().filter(|e| e.reason == maps::REASON_AUDIT).collect();
    assert_eq!(audited.len(), 1, "one audit event for the new flow, none per packet: {evs:?}");
    assert!(audited[0].endpoint == db && audited[0].direction == 1 && audited[0].allowed == 1, "{evs:?}");
    assert!(!evs.iter().any(|e| e.allowed == 0), "nothing dropped in audit mode: {evs:?}");

    // Audit off with a new epoch (what an agent restarted without the flag
    // does): the tracked flow is decided again and cut.
    dp.set_config(maps::ZtConfig { epoch: 2, audit: 0, ..Default::default() });
    assert_eq!(dp.test_run(Direction::Egress, &ack), TC_ACT_SHOT, "enforcing again: the audited flow is cut");
    let evs = events(&mut dp);
    assert!(evs.iter().any(|e| e.reason == 9 && e.allowed == 0), "revocation is reported: {evs:?}");
}

/// Namespace audit mode: the Namespace label sets the pod's endpoint flag,
/// its denials pass and are reported; taking the label off (a new epoch,
/// as every policy sync makes) cuts the audited flow.
#[test]
fn a_namespace_in_audit_mode_passes_and_reports_its_denials() {
    if !privileged("a_namespace_in_audit_mode_passes_and_reports_its_denials") {
        return;
    }
    let (mut compiler, mut dp, db) = at_db();
    let namespace = |labels: &str| {
        let yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels: {{{labels}}}\n");
        let mut parsed = policy::parse_str("ns.yaml", &yaml);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        parsed.objects.remove(0).1
    };
    let sync = |compiler: &mut Compiler, dp: &mut Datapath, labels: &str, epoch: u32| {
        let diff = compiler.apply(namespace(labels));
        apply_diff(&mut dp.maps, &diff, &|_| None, &|_| None).unwrap();
        dp.maps.put_endpoint(TEST_IFINDEX, maps::endpoint(db, &compiler.tables().endpoints[&db])).unwrap();
        dp.set_config(maps::ZtConfig { epoch, ..Default::default() });
        // Whether db's endpoint entry changed.
        diff.endpoints.iter().any(|c| matches!(c, policy::compile::Change::Upsert(ep, _) if *ep == db))
    };
    let syn = tcp("10.244.1.11", 42000, "10.244.2.10", 80, 0x02);
    let ack = tcp("10.244.1.11", 42000, "10.244.2.10", 80, 0x10);
    dp.clear_ct();
    assert_eq!(dp.test_run(Direction::Egress, &syn), TC_ACT_SHOT, "enforcing: denied");

    // Any value but "true" enforces.
    assert!(!sync(&mut compiler, &mut dp, "ztunnel.io/policy-audit: \"yes\"", 1));
    assert_eq!(dp.test_run(Direction::Egress, &syn), TC_ACT_SHOT, "only \"true\" audits");

    assert!(sync(&mut compiler, &mut dp, "ztunnel.io/policy-audit: \"true\"", 2), "the label flips the entry");
    assert!(compiler.tables().endpoints[&db].audit);
    let _ = events(&mut dp);
    assert_eq!(dp.test_run(Direction::Egress, &syn), TC_ACT_OK, "namespace audit: let through");
    assert_eq!(dp.test_run(Direction::Egress, &ack), TC_ACT_OK, "and tracked");
    let evs = events(&mut dp);
    let audited: Vec<_> = evs.iter().filter(|e| e.reason == maps::REASON_AUDIT).collect();
    assert_eq!(audited.len(), 1, "one audit event for the new flow: {evs:?}");
    assert!(audited[0].endpoint == db && audited[0].allowed == 1, "{evs:?}");

    assert!(sync(&mut compiler, &mut dp, "", 3));
    assert!(!compiler.tables().endpoints[&db].audit);
    assert_eq!(dp.test_run(Direction::Egress, &ack), TC_ACT_SHOT, "label removed: the audited flow is cut");
}

/// The mark steered packets carry.
const STEERING_MARK: u32 = 0x7a00;

/// Steering on, towards a capture listener that does not exist (port 9,
/// discard, on the test's loopback): every steered packet finds no proxy.
fn steering_without_a_proxy() -> maps::ZtConfig {
    maps::ZtConfig {
        mesh: 1,
        redirect_mark: STEERING_MARK,
        proxy_addr4: u32::from_ne_bytes([127, 0, 0, 1]),
        proxy_port: 9u16.to_be(),
        ..Default::default()
    }
}

/// Steering behind a bridge: the pod's program addresses a steered frame to
/// the bridge and marks it (so the bridge hands it up to the host), and
/// leaves the socket to the bridge's program, which assigns it or, with no
/// proxy socket to take it, drops it (fail closed). A routed veth's packet
/// without a proxy socket is dropped by the pod's program itself. Frames
/// the pod's program did not steer pass the bridge's untouched.
#[test]
fn steering_on_a_bridge_port_addresses_the_bridge_and_fails_closed_without_a_proxy() {
    if !privileged("steering_on_a_bridge_port_addresses_the_bridge_and_fails_closed_without_a_proxy") {
        return;
    }
    let cluster = example_cluster();
    let compiler = Compiler::from_cluster(Scope::Cluster, &cluster);
    let mut dp = load(compiler.tables());
    let tables = compiler.tables();
    let front = tables.endpoint_of(&policy::ObjectKey::new("default", "frontend")).unwrap();
    dp.maps.put_endpoint(TEST_IFINDEX, maps::endpoint(front, &tables.endpoints[&front])).unwrap();
    const MARK: u32 = STEERING_MARK;
    dp.set_config(steering_without_a_proxy());
    let _ = events(&mut dp);
    // frontend -> apiserver:80 is allowed (bookstore).
    let syn = tcp("10.244.2.10", 40000, "10.244.1.10", 80, 0x02);
    let from = zt_ebpf::programs::FROM_POD;

    // A routed veth: no proxy socket, no packet.
    dp.clear_ct();
    assert_eq!(dp.test_run_marked(from, &syn, 0).0, TC_ACT_SHOT, "routed: fail closed");
    let evs = events(&mut dp);
    assert!(evs.iter().any(|e| e.reason == 10), "no-proxy drop reported: {evs:?}");

    // A bridge port: to the bridge's MAC, marked, passed on to the bridge.
    let bridge_mac = [0x02, 0x42, 0xac, 0x11, 0x00, 0x01];
    dp.maps.put_port(TEST_IFINDEX, bridge_mac).unwrap();
    dp.clear_ct();
    let (verdict, out, mark) = dp.test_run_marked(from, &syn, 0);
    assert_eq!(verdict, TC_ACT_OK, "the port's program leaves the socket to the bridge's");
    assert_eq!(out[..6], bridge_mac, "steered frame addressed to the bridge");
    assert_eq!(out[6..], syn[6..], "nothing else rewritten");
    assert_eq!(mark, MARK, "steered frame marked for local delivery");
    // Traffic to what is not a pod is not steered: no rewrite, no mark.
    dp.clear_ct();
    let (_, out, mark) = dp.test_run_marked(from, &tcp("10.244.2.10", 40001, "192.168.100.1", 15012, 0x02), 0);
    assert_eq!((out[..6] == bridge_mac, mark), (false, 0), "non-pod traffic untouched");

    // The bridge's program: a steered frame with no proxy socket is
    // dropped and reported; anything unmarked passes untouched.
    let bridge = zt_ebpf::programs::BRIDGE_IN;
    let _ = events(&mut dp);
    let steered = {
        let mut f = syn.clone();
        f[..6].copy_from_slice(&bridge_mac);
        f
    };
    assert_eq!(dp.test_run_marked(bridge, &steered, MARK).0, TC_ACT_SHOT, "no proxy behind the bridge: dropped");
    let evs = events(&mut dp);
    assert!(evs.iter().any(|e| e.reason == 10 && e.endpoint == front), "reported for the sender: {evs:?}");
    assert_eq!(dp.test_run_marked(bridge, &steered, 0).0, TC_ACT_OK, "unmarked frames pass");
    assert_eq!(dp.test_run_marked(bridge, &steered, 0x4000).0, TC_ACT_OK, "others' marks are not ours");
    let udp = packet("10.244.2.10".parse().unwrap(), "10.244.1.10".parse().unwrap(), Protocol::Udp, 53);
    assert_eq!(dp.test_run_marked(bridge, &udp, MARK).0, TC_ACT_SHOT, "only pod TCP is ever marked");
}

/// `l4` behind one hop-by-hop options header (router alert, as MLD sends
/// it) in an IPv6 packet from `src` to `dst`.
fn behind_hop_by_hop(src: &str, dst: &str, next: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = packet(src.parse().unwrap(), dst.parse().unwrap(), Protocol::Other(0), 0);
    p.truncate(14 + 40);
    let len = u16::try_from(8 + l4.len()).unwrap();
    p[14 + 4..14 + 6].copy_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[next, 0, 5, 2, 0, 0, 1, 0]); // router alert, PadN
    p.extend_from_slice(l4);
    p
}

/// Link housekeeping passes a pod whose policies isolate it, as ARP does:
/// MLD behind its hop-by-hop header and IGMP on 224.0.0.0/24 (behind a
/// bridge every pod receives the host's). IGMP elsewhere, and TCP behind a
/// hop-by-hop header, are judged (the TCP by its ports).
#[test]
fn multicast_housekeeping_passes_and_hop_by_hop_tcp_is_judged_by_its_ports() {
    if !privileged("multicast_housekeeping_passes_and_hop_by_hop_tcp_is_judged_by_its_ports") {
        return;
    }
    let (compiler, mut dp, _db) = at_db();
    let tables = compiler.tables();
    let mld = behind_hop_by_hop("fe80::1", "ff02::16", 58, &[143, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(dp.test_run(Direction::Ingress, &mld), TC_ACT_OK, "MLD report to an isolated pod");
    assert_eq!(dp.test_run(Direction::Egress, &mld), TC_ACT_OK, "MLD report from an isolated pod");
    let igmp = |dst: &str| packet("10.244.1.1".parse().unwrap(), dst.parse().unwrap(), Protocol::Other(2), 0);
    assert_eq!(dp.test_run(Direction::Ingress, &igmp("224.0.0.22")), TC_ACT_OK, "IGMPv3 report");
    assert_eq!(dp.test_run(Direction::Ingress, &igmp("224.0.0.1")), TC_ACT_OK, "IGMP query");
    assert_eq!(dp.test_run(Direction::Ingress, &igmp("239.1.2.3")), TC_ACT_SHOT, "IGMP to a group: judged");
    assert!(events(&mut dp).iter().all(|e| e.protocol == 2), "housekeeping emits no verdicts");

    // TCP behind a hop-by-hop header is TCP with its ports, not a
    // protocol-0 packet (the seed cluster has no IPv6 pods, so the peer is
    // an address outside it).
    let front = tables.endpoint_of(&policy::ObjectKey::new("default", "frontend")).unwrap();
    dp.maps.put_endpoint(TEST_IFINDEX, maps::endpoint(front, &tables.endpoints[&front])).unwrap();
    let tcp_hdr = |dport: u16| {
        let mut h = vec![0u8; 20];
        h[0..2].copy_from_slice(&40000u16.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[12] = 0x50;
        h[13] = 0x02;
        h
    };
    // frontend's egress is isolated and opens nothing towards that
    // address: denied, and reported as TCP to port 80.
    dp.clear_ct();
    let out = behind_hop_by_hop("fd00::9", "fd00::10", 6, &tcp_hdr(80));
    assert_eq!(dp.test_run(Direction::Egress, &out), TC_ACT_SHOT);
    let evs = events(&mut dp);
    assert!(evs.iter().any(|e| e.protocol == 6 && e.dport == 80u16.to_be()), "judged as TCP port 80: {evs:?}");
}

/// With steering on, pod TCP to the Service CIDR that reaches the pod's
/// veth was not translated at its socket: dropped and reported, never
/// passed on for kube-proxy to carry in the clear. Other addresses outside
/// the pods pass as before.
#[test]
fn untranslated_cluster_ip_tcp_is_dropped_when_the_service_cidr_is_known() {
    if !privileged("untranslated_cluster_ip_tcp_is_dropped_when_the_service_cidr_is_known") {
        return;
    }
    let cluster = example_cluster();
    let compiler = Compiler::from_cluster(Scope::Cluster, &cluster);
    let mut dp = load(compiler.tables());
    let tables = compiler.tables();
    let front = tables.endpoint_of(&policy::ObjectKey::new("default", "frontend")).unwrap();
    let mut entry = maps::endpoint(front, &tables.endpoints[&front]);
    entry.egress_isolated = 0; // judge steering, not policy
    dp.maps.put_endpoint(TEST_IFINDEX, entry).unwrap();
    dp.set_config(steering_without_a_proxy());
    let to_vip = tcp("10.244.2.10", 40000, "10.96.0.99", 80, 0x02);
    let to_world = tcp("10.244.2.10", 40001, "192.0.2.7", 80, 0x02);
    dp.clear_ct();
    assert_eq!(dp.test_run(Direction::Egress, &to_vip), TC_ACT_OK, "no Service CIDR known: an address like any");
    zt_ebpf::services::set_service_cidrs(&mut dp.bpf, &[("10.96.0.0".parse().unwrap(), 12)]).unwrap();
    let _ = events(&mut dp);
    dp.clear_ct();
    assert_eq!(dp.test_run(Direction::Egress, &to_vip), TC_ACT_SHOT, "untranslated cluster IP: dropped");
    assert!(events(&mut dp).iter().any(|e| e.reason == 10), "reported as no proxy");
    dp.clear_ct();
    assert_eq!(dp.test_run(Direction::Egress, &to_world), TC_ACT_OK, "outside the Service CIDR: passes");
    // UDP is not steered, so not dropped for it either (policy decides).
    let udp = packet("10.244.2.10".parse().unwrap(), "10.96.0.99".parse().unwrap(), Protocol::Udp, 53);
    dp.clear_ct();
    assert_eq!(dp.test_run(Direction::Egress, &udp), TC_ACT_OK);
    // Emptied: passes again.
    zt_ebpf::services::set_service_cidrs(&mut dp.bpf, &[]).unwrap();
    dp.clear_ct();
    assert_eq!(dp.test_run(Direction::Egress, &to_vip), TC_ACT_OK);
}
