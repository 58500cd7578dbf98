//! Maps pinned by a predecessor are re-adopted only when their definition
//! is this build's: the loader itself would reuse any pin, and a ring or
//! array of another size would then be misread. Needs root (bpffs, maps).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

mod common;

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use common::privileged;
use zt_ebpf::loader::{LoadError, load_object};
use zt_ebpf::map_names::{ALL, COUNTERS, CT, EVENTS};

/// A directory on the bpffs, removed with its pins.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> Self {
        let dir = PathBuf::from(format!("/sys/fs/bpf/zt-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory on /sys/fs/bpf (bpffs)");
        Self(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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

#[test]
fn pins_of_another_definition_are_replaced_or_refused() {
    if !privileged("pins_of_another_definition_are_replaced_or_refused") {
        return;
    }
    let dir = PinDir::new("pins");
    // A predecessor with a 1 MiB event ring and four counters.
    pin_as_predecessor(&dir.0, &ALL, &[(EVENTS, 1 << 20), (COUNTERS, 4)]);
    assert_eq!(entries(&dir.0, EVENTS), 1 << 20);

    // Stateless maps of another size are made afresh; the rest re-adopted.
    let (bpf, replaced) = load_object(Some(&dir.0)).unwrap();
    assert_eq!(replaced, [EVENTS, COUNTERS]);
    assert_eq!(entries(&dir.0, EVENTS), wanted(EVENTS));
    assert_eq!(entries(&dir.0, COUNTERS), wanted(COUNTERS));
    drop(bpf);
    let (bpf, replaced) = load_object(Some(&dir.0)).unwrap();
    assert!(replaced.is_empty(), "a second start replaces nothing: {replaced:?}");
    drop(bpf);

    // A map that carries state (connection tracking) of another size is
    // refused with its path, never reused.
    std::fs::remove_file(dir.0.join(CT)).unwrap();
    pin_as_predecessor(&dir.0, &[CT], &[(CT, 1024)]);
    match load_object(Some(&dir.0)) {
        Err(e @ LoadError::IncompatiblePin { .. }) => {
            assert!(e.to_string().contains(CT), "{e}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an incompatible conntrack pin was adopted"),
    }
    assert_eq!(entries(&dir.0, CT), 1024, "the refused pin is left alone");
}
