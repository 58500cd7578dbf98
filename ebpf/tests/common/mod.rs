//! Shared by the kernel tests: running the classifiers on crafted packets
//! with `BPF_PROG_TEST_RUN` over maps written from compiled tables.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::net::IpAddr;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use policy::compile::Tables;
use policy::{Direction, Protocol};
use zt_ebpf::loader::{AyaMaps, MapWriter, apply_diff};
use zt_ebpf::maps;

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
/// BPF_PROG_TEST_RUN runs skb programs on the loopback device.
pub const TEST_IFINDEX: u32 = 1;

pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Returns false (after saying so) when the test cannot run here.
pub fn privileged(test: &str) -> bool {
    if is_root() {
        return true;
    }
    let msg = format!("SKIPPED {test}: needs root to load BPF programs");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true turns this skip into a failure)");
    }
    eprintln!("{msg}");
    false
}

/// The seed example cluster (`deploy/examples`: workload and policies).
pub fn example_cluster() -> policy::Cluster {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut objects = Vec::new();
    for dir in ["workload", "policies"] {
        let mut files: Vec<_> = fs::read_dir(root.join(dir)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let parsed = policy::manifest::parse_str(&f.display().to_string(), &fs::read_to_string(&f).unwrap());
            assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
            objects.extend(parsed.objects.into_iter().map(|(_, o)| o));
        }
    }
    policy::Cluster::from_objects(objects)
}

/// An IPv4 TCP packet with the given ports and flags.
pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = packet(src.parse().unwrap(), dst.parse().unwrap(), Protocol::Tcp, dport);
    let l4 = 14 + 20;
    p[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
    p[l4 + 13] = flags;
    p
}

/// Ethernet + IP + the first bytes of the L4 header (ports, or ICMP type).
pub fn packet(src: IpAddr, dst: IpAddr, proto: Protocol, dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 12]; // MACs
    let l4: Vec<u8> = match proto {
        Protocol::Tcp | Protocol::Udp | Protocol::Sctp => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&40000u16.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            if proto == Protocol::Tcp {
                h[12] = 0x50;
                h[13] = 0x02; // SYN
            }
            h
        }
        Protocol::Icmp => vec![8, 0, 0, 0, 0, 0, 0, 0], // echo request
        Protocol::Icmpv6 => vec![128, 0, 0, 0, 0, 0, 0, 0], // echo request
        Protocol::Other(_) => vec![0; 8],
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = (20 + l4.len()) as u16;
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto.number(), 0, 0];
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            p.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            ip.push(proto.number());
            ip.push(64);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            p.extend_from_slice(&ip);
        }
        _ => panic!("mixed families"),
    }
    p.extend_from_slice(&l4);
    p
}

pub struct Datapath {
    pub bpf: aya::Ebpf,
    pub maps: AyaMaps,
}

pub fn load(tables: &Tables) -> Datapath {
    let mut bpf = aya::Ebpf::load(zt_ebpf::OBJECT).expect("load object");
    for name in [zt_ebpf::programs::FROM_POD, zt_ebpf::programs::TO_POD, zt_ebpf::programs::BRIDGE_IN] {
        let p: &mut SchedClassifier =
            bpf.program_mut(name).unwrap_or_else(|| panic!("program {name}")).try_into().unwrap();
        p.load().unwrap_or_else(|e| panic!("verifier rejected {name}: {e}"));
    }
    let mut maps = AyaMaps::take(&mut bpf).unwrap();
    let diff = policy::compile::diff_tables(&Tables::default(), tables);
    apply_diff(&mut maps, &diff, &|_| None, &|_| None).unwrap();
    Datapath { bpf, maps }
}

impl Datapath {
    /// Forgets every tracked connection.
    pub fn clear_ct(&mut self) {
        let mut ct: aya::maps::HashMap<_, maps::ZtCtKey, maps::ZtCtValue> =
            aya::maps::HashMap::try_from(self.bpf.map_mut(zt_ebpf::map_names::CT).unwrap()).unwrap();
        let keys: Vec<maps::ZtCtKey> = ct.keys().map(|k| k.unwrap()).collect();
        for k in keys {
            ct.remove(&k).unwrap();
        }
    }

    /// Runs one program for `endpoint` (mapped to the test interface) on
    /// the first packet of a flow (no tracked connections).
    pub fn run(&mut self, tables: &Tables, endpoint: u32, dir: Direction, pkt: &[u8]) -> u32 {
        self.run_with(tables, endpoint, dir, pkt, |_| {})
    }

    /// The same with the endpoint entry edited first (e.g. its audit flag
    /// cleared, to see the policy verdict under it).
    pub fn run_with(
        &mut self,
        tables: &Tables,
        endpoint: u32,
        dir: Direction,
        pkt: &[u8],
        edit: impl FnOnce(&mut maps::ZtEndpoint),
    ) -> u32 {
        self.clear_ct();
        let mut entry = maps::endpoint(endpoint, &tables.endpoints[&endpoint]);
        edit(&mut entry);
        self.maps.put_endpoint(TEST_IFINDEX, entry).unwrap();
        self.test_run(dir, pkt)
    }

    /// Replaces the datapath's configuration (epoch, audit, ...).
    pub fn set_config(&mut self, c: maps::ZtConfig) {
        let mut cfg: aya::maps::Array<_, maps::ZtConfig> =
            aya::maps::Array::try_from(self.bpf.map_mut(zt_ebpf::map_names::CONFIG).unwrap()).unwrap();
        cfg.set(0, c, 0).unwrap();
    }

    /// Runs program `name` on a packet whose `skb->mark` is `mark`; returns
    /// the verdict, the packet as the program left it, and its mark then.
    pub fn test_run_marked(&self, name: &str, pkt: &[u8], mark: u32) -> (u32, Vec<u8>, u32) {
        // struct __sk_buff: len, pkt_type, mark, ... (192 bytes); the kernel
        // takes a prefix of it and zeroes the rest.
        const SKB_CTX: usize = 192;
        const MARK: usize = 8;
        let mut ctx_in = [0u8; MARK + 4];
        ctx_in[MARK..].copy_from_slice(&mark.to_ne_bytes());
        let mut ctx_out = [0u8; SKB_CTX];
        let mut out = vec![0u8; pkt.len()];
        let prog: &SchedClassifier = self.bpf.program(name).unwrap().try_into().unwrap();
        let opts = TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            ..TestRunOptions::default()
        };
        let verdict = prog.test_run(opts).unwrap().return_value;
        let mark = u32::from_ne_bytes(ctx_out[MARK..MARK + 4].try_into().unwrap());
        (verdict, out, mark)
    }

    /// Runs one program on a packet with the maps as they are.
    pub fn test_run(&self, dir: Direction, pkt: &[u8]) -> u32 {
        let name = match dir {
            Direction::Egress => zt_ebpf::programs::FROM_POD,
            Direction::Ingress => zt_ebpf::programs::TO_POD,
        };
        let prog: &SchedClassifier = self.bpf.program(name).unwrap().try_into().unwrap();
        let opts = TestRunOptions { data_in: Some(pkt), ..TestRunOptions::default() };
        prog.test_run(opts).unwrap().return_value
    }
}
