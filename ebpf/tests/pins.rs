//! Maps pinned by a predecessor are re-adopted only when their definition
//! is this build's: the loader itself would reuse any pin, and a ring or
//! array of another size would then be misread. Needs root (bpffs, maps).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use common::{Datapath, TC_ACT_OK, TEST_IFINDEX, privileged};
use policy::Direction;
use policy::compile::{Compiler, Scope, Tables, diff_tables};
use zt_ebpf::loader::{AyaMaps, LoadError, MapWriter, PinAdjustment, apply_diff, load_object, load_programs};
use zt_ebpf::map_names::{ALL, COUNTERS, CT, EVENTS};

/// A bpffs instance of the test's own, mounted on a fresh directory (the
/// host's `/sys/fs/bpf` need not be mounted), unmounted with its pins.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("zt-test-bpffs-{tag}-{}", std::process::id()));
        let _ = std::process::Command::new("umount").arg(&dir).output();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the bpffs");
        let out = std::process::Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir).output().expect("mount");
        assert!(out.status.success(), "mount bpffs: {}", String::from_utf8_lossy(&out.stderr));
        Self(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).output();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Loads the object the way an older build would have, with `sizes`
/// overriding map sizes, pinning the maps named in `pin`.
fn pin_as_predecessor(dir: &Path, pin: &[&'static str], sizes: &[(&'static str, u32)]) {
    let mut loader = aya::EbpfLoader::new();
    for name in pin {
        loader.map_pin_path(name, dir.join(name));
    }
    for (name, n) in sizes {
        loader.map_max_entries(name, *n);
    }
    drop(loader.load(zt_ebpf::OBJECT).expect("load as a predecessor"));
}

fn entries(dir: &Path, name: &str) -> u32 {
    MapInfo::from_pin(dir.join(name)).expect("pinned map").max_entries()
}

fn wanted(name: &str) -> u32 {
    aya_obj::Object::parse(zt_ebpf::OBJECT).unwrap().maps[name].max_entries()
}

/// Drains the event ring of `bpf`, checking every event.
fn drain(bpf: &mut aya::Ebpf, dport: u16) -> u64 {
    let mut rb = aya::maps::RingBuf::try_from(bpf.map_mut(EVENTS).unwrap()).unwrap();
    let mut n = 0;
    while let Some(item) = rb.next() {
        let e = zt_ebpf::maps::ZtEvent::from_bytes(&item).expect("an event of the right size");
        assert_eq!(u16::from_be(e.dport), dport, "event read intact");
        n += 1;
    }
    n
}

#[test]
fn pins_of_another_definition_are_adapted_to_or_refused() {
    if !privileged("pins_of_another_definition_are_adapted_to_or_refused") {
        return;
    }
    let dir = PinDir::new("pins");
    // A predecessor with a 1 MiB event ring and four counters.
    pin_as_predecessor(&dir.0, &ALL, &[(EVENTS, 1 << 20), (COUNTERS, 4)]);
    assert_ne!(wanted(EVENTS), 1 << 20);

    // Only their sizes differ: both re-adopted at the predecessor's size
    // (its programs, still attached to pods, write to them).
    let (mut bpf, adjusted) = load_object(Some(&dir.0)).unwrap();
    assert_eq!(
        adjusted,
        [
            PinAdjustment::KeptSize { map: EVENTS, entries: 1 << 20 },
            PinAdjustment::KeptSize { map: COUNTERS, entries: 4 }
        ]
    );
    assert_eq!(entries(&dir.0, EVENTS), 1 << 20);
    // The ring is read with its real size: 20,000 events (1.4 MB) wrap the
    // 1 MiB ring, and every one comes out intact.
    load_programs(&mut bpf).unwrap();
    let mut maps = AyaMaps::take(&mut bpf).unwrap();
    let cluster = common::example_cluster();
    let compiler = Compiler::from_cluster(Scope::Cluster, &cluster);
    let tables = compiler.tables();
    apply_diff(&mut maps, &diff_tables(&Tables::default(), tables), &|_| None, &|_| None).unwrap();
    let db = tables.endpoint_of(&policy::ObjectKey::new("default", "db")).unwrap();
    maps.put_endpoint(TEST_IFINDEX, zt_ebpf::maps::endpoint(db, &tables.endpoints[&db])).unwrap();
    let mut dp = Datapath { bpf, maps };
    drain(&mut dp.bpf, 6379);
    let mut seen = 0;
    for i in 0..20_000u32 {
        let syn = common::tcp("10.244.2.10", 10_000 + u16::try_from(i).unwrap(), "10.244.1.11", 6379, 0x02);
        assert_eq!(dp.test_run(Direction::Ingress, &syn), TC_ACT_OK);
        if i % 1000 == 999 {
            seen += drain(&mut dp.bpf, 6379);
        }
    }
    seen += drain(&mut dp.bpf, 6379);
    assert_eq!(seen, 20_000);
    drop(dp);

    // A map that carries state (connection tracking) of another size is
    // refused with its path, never reused.
    std::fs::remove_file(dir.0.join(CT)).unwrap();
    pin_as_predecessor(&dir.0, &[CT], &[(CT, 1024)]);
    match load_object(Some(&dir.0)) {
        Err(e @ LoadError::IncompatiblePin { .. }) => assert!(e.to_string().contains(CT), "{e}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an incompatible conntrack pin was adopted"),
    }
    assert_eq!(entries(&dir.0, CT), 1024, "the refused pin is left alone");
}

/// A veth pair nothing sends on, deleted (both ends) on drop.
struct Dummy(String);

impl Dummy {
    fn new(name: &str) -> Self {
        let _ = std::process::Command::new("ip").args(["link", "del", name]).output();
        let peer = format!("{name}p");
        for args in [vec!["link", "add", name, "type", "veth", "peer", "name", &peer], vec!["link", "set", name, "up"]]
        {
            let out = std::process::Command::new("ip").args(&args).output().expect("ip");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Self(name.to_string())
    }

    fn ifindex(&self) -> u32 {
        std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", self.0)).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// Program ids attached to `iface` in TCX order, per direction.
fn attached(iface: &str) -> (Vec<u32>, Vec<u32>) {
    use aya::programs::{SchedClassifier, TcAttachType};
    let ids = |t| SchedClassifier::query_tcx(iface, t).unwrap().1.iter().map(|p| p.id()).collect();
    (ids(TcAttachType::Ingress), ids(TcAttachType::Egress))
}

fn loaded_ids(bpf: &aya::Ebpf) -> (u32, u32) {
    use aya::programs::SchedClassifier;
    let id = |name| -> u32 {
        let p: &SchedClassifier = bpf.program(name).unwrap().try_into().unwrap();
        p.info().unwrap().id()
    };
    (id(zt_ebpf::programs::FROM_POD), id(zt_ebpf::programs::TO_POD))
}

#[test]
fn a_restarted_agent_puts_its_programs_in_place_of_its_predecessors() {
    if !privileged("a_restarted_agent_puts_its_programs_in_place_of_its_predecessors") {
        return;
    }
    let dir = PinDir::new("links");
    let iface = Dummy::new(&format!("zt-t{}", std::process::id() % 100_000));
    let ifindex = iface.ifindex();

    // The predecessor attached and pinned, then went away.
    let (mut old, _) = load_object(None).unwrap();
    load_programs(&mut old).unwrap();
    let old_ids = loaded_ids(&old);
    drop(zt_ebpf::loader::attach_pod_pinned(&mut old, &iface.0, ifindex, &dir.0).unwrap());
    drop(old);
    assert_eq!(attached(&iface.0), (vec![old_ids.0], vec![old_ids.1]), "pins keep the predecessor's programs");

    // The new agent adopts the pins and replaces the programs behind them.
    let (mut new, _) = load_object(None).unwrap();
    load_programs(&mut new).unwrap();
    let new_ids = loaded_ids(&new);
    let mut adopted = zt_ebpf::loader::adopt_pinned(&dir.0);
    let pod = adopted.remove(&ifindex).expect("the predecessor's pins");
    assert!(pod.complete());
    let pod = zt_ebpf::loader::replace_pinned(&mut new, pod, &iface.0, ifindex, &dir.0).map_err(|f| f.error).unwrap();
    assert_eq!(attached(&iface.0), (vec![new_ids.0], vec![new_ids.1]), "only the new programs, on both sides");
    // (A fresh bpffs also holds the kernel's `maps.debug` and `progs.debug`.)
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".debug"))
        .collect();
    assert_eq!(leftovers.len(), 2, "one pin per direction, nothing staged: {leftovers:?}");

    // The replaced pins are ordinary pins: unpinning detaches.
    zt_ebpf::loader::unpin_pod(pod).unwrap();
    drop(new);
    assert_eq!(attached(&iface.0), (vec![], vec![]));
}
