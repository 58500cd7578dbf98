//! Keeping the kernel maps equal to the compiled tables.
//!
//! [`apply_diff`] orders a [`TableDiff`] so that no intermediate state allows
//! a packet that neither the old nor the new tables allow: every insertion
//! (ipcache, cidr, policy entries) first, then the endpoint map (isolation
//! flags), then every removal. Identities are never reused, so a stale entry
//! can never match a new owner of an address.
//!
//! Writes go through the [`MapWriter`] trait: [`AyaMaps`] writes the real
//! maps, tests use an in-memory fake.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use policy::ObjectKey;
use policy::compile::{Change, TableDiff, Tables};

use crate::maps::{
    self, CidrEntryKey, ZtAddr, ZtCidr4Key, ZtCidr6Key, ZtEndpoint, ZtIpInfo, ZtPolicyKey, ZtPolicyValue, ZtPort,
};

/// A map write failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The kernel refused a write (a full map reports `E2BIG`/`ENOSPC`).
    #[error("writing map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The error.
        #[source]
        source: aya::maps::MapError,
    },
    /// The object lacks a map (built from another version of the sources).
    #[error("map {0} not found in the loaded object")]
    Missing(&'static str),
    /// A value no map entry can hold.
    #[error("{0}")]
    Invalid(String),
}

/// Writes individual entries of the datapath maps.
pub trait MapWriter {
    /// ipcache insert/overwrite.
    fn put_ip(&mut self, k: ZtAddr, v: ZtIpInfo) -> Result<(), SyncError>;
    /// ipcache delete (absent is fine).
    fn del_ip(&mut self, k: ZtAddr) -> Result<(), SyncError>;
    /// Endpoint map insert/overwrite, by interface index.
    fn put_endpoint(&mut self, ifindex: u32, v: ZtEndpoint) -> Result<(), SyncError>;
    /// Endpoint map delete.
    fn del_endpoint(&mut self, ifindex: u32) -> Result<(), SyncError>;
    /// IPv4 cidr trie insert/overwrite.
    fn put_cidr4(&mut self, prefixlen: u32, k: ZtCidr4Key, id: u32) -> Result<(), SyncError>;
    /// IPv4 cidr trie delete.
    fn del_cidr4(&mut self, prefixlen: u32, k: ZtCidr4Key) -> Result<(), SyncError>;
    /// IPv6 cidr trie insert/overwrite.
    fn put_cidr6(&mut self, prefixlen: u32, k: ZtCidr6Key, id: u32) -> Result<(), SyncError>;
    /// IPv6 cidr trie delete.
    fn del_cidr6(&mut self, prefixlen: u32, k: ZtCidr6Key) -> Result<(), SyncError>;
    /// Policy trie insert/overwrite.
    fn put_policy(&mut self, prefixlen: u32, k: ZtPolicyKey, v: ZtPolicyValue) -> Result<(), SyncError>;
    /// Policy trie delete.
    fn del_policy(&mut self, prefixlen: u32, k: ZtPolicyKey) -> Result<(), SyncError>;
}

/// Applies a diff in the safe order (see the module docs). `ifindex_of` maps
/// a pod to the host-side interface its programs are attached to (pods
/// without one yet are skipped: no program reads their entry), and
/// `removed_ifindex` gives the interface a removed endpoint had.
pub fn apply_diff(
    w: &mut dyn MapWriter,
    diff: &TableDiff,
    ifindex_of: &dyn Fn(&ObjectKey) -> Option<u32>,
    removed_ifindex: &dyn Fn(u32) -> Option<u32>,
) -> Result<(), SyncError> {
    for c in &diff.ipcache {
        if let Change::Upsert(ip, info) = c {
            w.put_ip(maps::addr(*ip), maps::ip_info(info))?;
        }
    }
    for c in &diff.cidr {
        if let Change::Upsert(k, id) = c {
            match maps::cidr_key(k) {
                CidrEntryKey::V4(p, key) => w.put_cidr4(p, key, *id)?,
                CidrEntryKey::V6(p, key) => w.put_cidr6(p, key, *id)?,
            }
        }
    }
    for c in &diff.policy {
        if let Change::Upsert(k, v) = c {
            let (p, key) = maps::policy_key(k);
            w.put_policy(p, key, maps::policy_value(v))?;
        }
    }
    for c in &diff.endpoints {
        match c {
            Change::Upsert(id, info) => {
                if let Some(ifindex) = ifindex_of(&info.pod) {
                    w.put_endpoint(ifindex, maps::endpoint(*id, info))?;
                }
            }
            Change::Remove(id) => {
                if let Some(ifindex) = removed_ifindex(*id) {
                    w.del_endpoint(ifindex)?;
                }
            }
        }
    }
    for c in &diff.policy {
        if let Change::Remove(k) = c {
            let (p, key) = maps::policy_key(k);
            w.del_policy(p, key)?;
        }
    }
    for c in &diff.cidr {
        if let Change::Remove(k) = c {
            match maps::cidr_key(k) {
                CidrEntryKey::V4(p, key) => w.del_cidr4(p, key)?,
                CidrEntryKey::V6(p, key) => w.del_cidr6(p, key)?,
            }
        }
    }
    for c in &diff.ipcache {
        if let Change::Remove(ip) = c {
            w.del_ip(maps::addr(*ip))?;
        }
    }
    Ok(())
}

/// The datapath maps of a loaded object, written with aya.
pub struct AyaMaps {
    ipcache: aya::maps::HashMap<aya::maps::MapData, ZtAddr, ZtIpInfo>,
    endpoints: aya::maps::HashMap<aya::maps::MapData, u32, ZtEndpoint>,
    ports: aya::maps::HashMap<aya::maps::MapData, u32, ZtPort>,
    cidr4: aya::maps::LpmTrie<aya::maps::MapData, ZtCidr4Key, u32>,
    cidr6: aya::maps::LpmTrie<aya::maps::MapData, ZtCidr6Key, u32>,
    policy: aya::maps::LpmTrie<aya::maps::MapData, ZtPolicyKey, ZtPolicyValue>,
}

pub(crate) fn take(bpf: &mut aya::Ebpf, name: &'static str) -> Result<aya::maps::Map, SyncError> {
    bpf.take_map(name).ok_or(SyncError::Missing(name))
}

pub(crate) fn conv<T>(map: &'static str, r: Result<T, aya::maps::MapError>) -> Result<T, SyncError> {
    r.map_err(|source| SyncError::Map { map, source })
}

/// Deleting an absent key is not an error: the goal state is reached.
pub(crate) fn del_ok(map: &'static str, r: Result<(), aya::maps::MapError>) -> Result<(), SyncError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(2) => Ok(()), // ENOENT
        other => conv(map, other),
    }
}

/// The object could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The embedded object does not parse (a build problem).
    #[error("parsing the BPF object: {0}")]
    Object(String),
    /// A map pinned by a predecessor has another definition than this
    /// build's and holds state that cannot simply be dropped.
    #[error(
        "pinned map {path} was made by an incompatible version ({found}; this build needs {wanted}): remove it, or the whole pin directory, to start afresh"
    )]
    IncompatiblePin {
        /// The pin.
        path: String,
        /// Its definition.
        found: String,
        /// This build's definition.
        wanted: String,
    },
    /// A replaceable pin could not be removed.
    #[error("replacing pinned map {path}: {source}")]
    Unpin {
        /// The pin.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The loader failed.
    #[error(transparent)]
    Ebpf(#[from] aya::EbpfError),
}

/// Maps whose contents need not outlive an agent (verdict events not yet
/// read, statistics): a pin of another definition is adapted to or
/// replaced, not refused.
const STATELESS: [&str; 2] = [crate::map_names::EVENTS, crate::map_names::COUNTERS];

/// What [`load_object`] did about a stateless map a predecessor pinned with
/// another definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinAdjustment {
    /// Only its size differs: re-adopted at the predecessor's size, so that
    /// nothing is lost — its unread events are still read, and its
    /// programs write to it until this agent's replace them
    /// ([`replace_pinned`]). This build's size applies once the pin is gone
    /// (the bpffs does not survive a reboot).
    KeptSize {
        /// The map.
        map: &'static str,
        /// Its entries (bytes, for the ring).
        entries: u32,
    },
    /// Another layout altogether: replaced by a fresh map (the
    /// predecessor's programs write to the old one until this agent's
    /// replace them).
    Replaced {
        /// The map.
        map: &'static str,
    },
}

/// Loads the object. With `pin_dir`, every map is pinned there by name and
/// an existing pin is reused: a restarted agent re-adopts the maps its
/// predecessor left, so enforcement never starts from empty. The loader
/// would adopt a pin whatever its definition — and read a ring or array of
/// another size with this build's size — so each pin is checked first
/// (type, key and value size, entries): see [`PinAdjustment`] for the
/// stateless maps; any other map that differs is refused with
/// [`LoadError::IncompatiblePin`] rather than misread.
pub fn load_object(pin_dir: Option<&Path>) -> Result<(aya::Ebpf, Vec<PinAdjustment>), LoadError> {
    let mut loader = aya::EbpfLoader::new();
    let mut adjusted = Vec::new();
    if let Some(dir) = pin_dir {
        let object = aya_obj::Object::parse(crate::OBJECT).map_err(|e| LoadError::Object(e.to_string()))?;
        for name in crate::map_names::ALL {
            let path = dir.join(name);
            // No pin (or one the loader cannot open either, and reports).
            let Ok(info) = aya::maps::MapInfo::from_pin(&path) else { continue };
            let Some(def) = object.maps.get(name) else { continue };
            let same_layout = info.map_type().ok().map(|t| t as u32) == Some(def.map_type())
                && (info.key_size(), info.value_size()) == (def.key_size(), def.value_size());
            if same_layout && info.max_entries() == def.max_entries() {
                continue;
            }
            if !STATELESS.contains(&name) {
                let shown = |k: u32, v: u32, n: u32| format!("key {k} B, value {v} B, {n} entries");
                return Err(LoadError::IncompatiblePin {
                    path: path.display().to_string(),
                    found: shown(info.key_size(), info.value_size(), info.max_entries()),
                    wanted: shown(def.key_size(), def.value_size(), def.max_entries()),
                });
            }
            if same_layout {
                loader.map_max_entries(name, info.max_entries());
                adjusted.push(PinAdjustment::KeptSize { map: name, entries: info.max_entries() });
            } else {
                std::fs::remove_file(&path)
                    .map_err(|source| LoadError::Unpin { path: path.display().to_string(), source })?;
                adjusted.push(PinAdjustment::Replaced { map: name });
            }
        }
        for name in crate::map_names::ALL {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    Ok((loader.load(crate::OBJECT)?, adjusted))
}

/// The largest numbers found in existing maps: (identity, endpoint, rule).
/// A restarted agent numbers above them so that no stale entry can ever
/// match a new identity while it replaces the old entries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Numbers {
    /// Largest identity.
    pub identity: u32,
    /// Largest endpoint.
    pub endpoint: u32,
    /// Largest rule.
    pub rule: u32,
}

impl AyaMaps {
    /// The largest numbers in the maps.
    pub fn max_numbers(&self) -> Numbers {
        let mut n = Numbers::default();
        for (_, v) in self.ipcache.iter().flatten() {
            n.identity = n.identity.max(v.identity).max(v.ns_identity).max(v.addr_identity);
            n.endpoint = n.endpoint.max(v.endpoint);
        }
        for (_, v) in self.endpoints.iter().flatten() {
            n.endpoint = n.endpoint.max(v.endpoint);
        }
        for (k, v) in self.cidr4.iter().flatten() {
            n.identity = n.identity.max(v);
            n.endpoint = n.endpoint.max(k.data().endpoint);
        }
        for (k, v) in self.cidr6.iter().flatten() {
            n.identity = n.identity.max(v);
            n.endpoint = n.endpoint.max(k.data().endpoint);
        }
        for (k, v) in self.policy.iter().flatten() {
            let d = k.data();
            n.identity = n.identity.max(d.peer);
            n.endpoint = n.endpoint.max(d.endpoint);
            n.rule = n.rule.max(v.rule);
        }
        n
    }

    /// Deletes every entry that `tables` (and the attached interfaces in
    /// `ifindexes`) do not hold: what a previous agent left behind. Call it
    /// after the desired entries are written.
    pub fn prune(&mut self, tables: &Tables, ifindexes: &HashSet<u32>) -> Result<usize, SyncError> {
        let mut removed = 0;
        let ips: HashSet<ZtAddr> = tables.ipcache.keys().map(|ip| maps::addr(*ip)).collect();
        let stale: Vec<ZtAddr> = self.ipcache.keys().flatten().filter(|k| !ips.contains(k)).collect();
        for k in stale {
            self.del_ip(k)?;
            removed += 1;
        }
        let stale: Vec<u32> = self.endpoints.keys().flatten().filter(|k| !ifindexes.contains(k)).collect();
        for k in stale {
            self.del_endpoint(k)?;
            removed += 1;
        }
        let stale: Vec<u32> = self.ports.keys().flatten().filter(|k| !ifindexes.contains(k)).collect();
        for k in stale {
            self.del_port(k)?;
            removed += 1;
        }
        let (mut c4, mut c6) = (HashSet::new(), HashSet::new());
        for k in tables.cidr.keys() {
            match maps::cidr_key(k) {
                CidrEntryKey::V4(p, key) => c4.insert((p, key)),
                CidrEntryKey::V6(p, key) => c6.insert((p, key)),
            };
        }
        let stale: Vec<(u32, ZtCidr4Key)> =
            self.cidr4.keys().flatten().map(|k| (k.prefix_len(), k.data())).filter(|k| !c4.contains(k)).collect();
        for (p, k) in stale {
            self.del_cidr4(p, k)?;
            removed += 1;
        }
        let stale: Vec<(u32, ZtCidr6Key)> =
            self.cidr6.keys().flatten().map(|k| (k.prefix_len(), k.data())).filter(|k| !c6.contains(k)).collect();
        for (p, k) in stale {
            self.del_cidr6(p, k)?;
            removed += 1;
        }
        let pol: HashSet<(u32, ZtPolicyKey)> = tables.policy.keys().map(maps::policy_key).collect();
        let stale: Vec<(u32, ZtPolicyKey)> =
            self.policy.keys().flatten().map(|k| (k.prefix_len(), k.data())).filter(|k| !pol.contains(k)).collect();
        for (p, k) in stale {
            self.del_policy(p, k)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Marks an attached interface as a port of the bridge with MAC
    /// `l3_mac` (see `zt_ports` in maps.h).
    pub fn put_port(&mut self, ifindex: u32, l3_mac: [u8; 6]) -> Result<(), SyncError> {
        conv("zt_ports", self.ports.insert(ifindex, ZtPort { l3_mac, pad: [0; 2] }, 0))
    }

    /// Forgets an interface's bridge (absent is fine).
    pub fn del_port(&mut self, ifindex: u32) -> Result<(), SyncError> {
        del_ok("zt_ports", self.ports.remove(&ifindex))
    }

    /// Takes the datapath maps out of a loaded object.
    pub fn take(bpf: &mut aya::Ebpf) -> Result<Self, SyncError> {
        use crate::map_names::*;
        Ok(Self {
            ipcache: conv(IPCACHE, aya::maps::HashMap::try_from(take(bpf, IPCACHE)?))?,
            endpoints: conv(ENDPOINTS, aya::maps::HashMap::try_from(take(bpf, ENDPOINTS)?))?,
            ports: conv(PORTS, aya::maps::HashMap::try_from(take(bpf, PORTS)?))?,
            cidr4: conv(CIDR4, aya::maps::LpmTrie::try_from(take(bpf, CIDR4)?))?,
            cidr6: conv(CIDR6, aya::maps::LpmTrie::try_from(take(bpf, CIDR6)?))?,
            policy: conv(POLICY, aya::maps::LpmTrie::try_from(take(bpf, POLICY)?))?,
        })
    }
}

impl MapWriter for AyaMaps {
    fn put_ip(&mut self, k: ZtAddr, v: ZtIpInfo) -> Result<(), SyncError> {
        conv("zt_ipcache", self.ipcache.insert(k, v, 0))
    }
    fn del_ip(&mut self, k: ZtAddr) -> Result<(), SyncError> {
        del_ok("zt_ipcache", self.ipcache.remove(&k))
    }
    fn put_endpoint(&mut self, ifindex: u32, v: ZtEndpoint) -> Result<(), SyncError> {
        conv("zt_endpoints", self.endpoints.insert(ifindex, v, 0))
    }
    fn del_endpoint(&mut self, ifindex: u32) -> Result<(), SyncError> {
        del_ok("zt_endpoints", self.endpoints.remove(&ifindex))
    }
    fn put_cidr4(&mut self, prefixlen: u32, k: ZtCidr4Key, id: u32) -> Result<(), SyncError> {
        conv("zt_cidr4", self.cidr4.insert(&aya::maps::lpm_trie::Key::new(prefixlen, k), id, 0))
    }
    fn del_cidr4(&mut self, prefixlen: u32, k: ZtCidr4Key) -> Result<(), SyncError> {
        del_ok("zt_cidr4", self.cidr4.remove(&aya::maps::lpm_trie::Key::new(prefixlen, k)))
    }
    fn put_cidr6(&mut self, prefixlen: u32, k: ZtCidr6Key, id: u32) -> Result<(), SyncError> {
        conv("zt_cidr6", self.cidr6.insert(&aya::maps::lpm_trie::Key::new(prefixlen, k), id, 0))
    }
    fn del_cidr6(&mut self, prefixlen: u32, k: ZtCidr6Key) -> Result<(), SyncError> {
        del_ok("zt_cidr6", self.cidr6.remove(&aya::maps::lpm_trie::Key::new(prefixlen, k)))
    }
    fn put_policy(&mut self, prefixlen: u32, k: ZtPolicyKey, v: ZtPolicyValue) -> Result<(), SyncError> {
        conv("zt_policy", self.policy.insert(&aya::maps::lpm_trie::Key::new(prefixlen, k), v, 0))
    }
    fn del_policy(&mut self, prefixlen: u32, k: ZtPolicyKey) -> Result<(), SyncError> {
        del_ok("zt_policy", self.policy.remove(&aya::maps::lpm_trie::Key::new(prefixlen, k)))
    }
}

/// Attaching programs failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The object lacks a program.
    #[error("program {0} not found in the loaded object")]
    Missing(&'static str),
    /// A link could not be pinned on bpffs.
    #[error("pinning {path}: {reason}")]
    Pin {
        /// The pin path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The kernel refused to load or attach.
    #[error("{what} {program} on {interface}: {source}")]
    Program {
        /// load or attach.
        what: &'static str,
        /// Program name.
        program: &'static str,
        /// Interface.
        interface: String,
        /// The error (boxed: aya's error is large).
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

pub(crate) fn prog_err(
    what: &'static str,
    program: &'static str,
    interface: &str,
) -> impl FnOnce(aya::programs::ProgramError) -> AttachError {
    let interface = interface.to_string();
    move |source| AttachError::Program { what, program, interface, source: Box::new(source) }
}

fn classifier<'a>(
    bpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::programs::SchedClassifier, AttachError> {
    bpf.program_mut(name).ok_or(AttachError::Missing(name))?.try_into().map_err(prog_err("load", name, ""))
}

/// Loads the classifiers into the kernel (verifier), once per object.
pub fn load_programs(bpf: &mut aya::Ebpf) -> Result<(), AttachError> {
    for name in [crate::programs::FROM_POD, crate::programs::TO_POD, crate::programs::BRIDGE_IN] {
        classifier(bpf, name)?.load().map_err(prog_err("load", name, ""))?;
    }
    Ok(())
}

/// The attachments of one pod interface.
#[derive(Debug)]
pub struct PodLinks {
    from_pod: aya::programs::tc::SchedClassifierLinkId,
    to_pod: aya::programs::tc::SchedClassifierLinkId,
}

/// Attaches the classifiers to a pod's host-side interface: `from_pod` at
/// TC ingress (what the pod sends), `to_pod` at TC egress (what it
/// receives). Uses TCX links where the kernel has them (6.6+), clsact
/// otherwise. Must run in the network namespace that holds the interface.
pub fn attach_pod(bpf: &mut aya::Ebpf, interface: &str) -> Result<PodLinks, AttachError> {
    use aya::programs::TcAttachType;
    let tcx = aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    if !tcx {
        // clsact may already exist (another agent run, another tool): fine.
        let _ = aya::programs::tc::qdisc_add_clsact(interface);
    }
    let from = crate::programs::FROM_POD;
    let from_pod =
        classifier(bpf, from)?.attach(interface, TcAttachType::Ingress).map_err(prog_err("attach", from, interface))?;
    let to = crate::programs::TO_POD;
    match classifier(bpf, to)?.attach(interface, TcAttachType::Egress).map_err(prog_err("attach", to, interface)) {
        Ok(to_pod) => Ok(PodLinks { from_pod, to_pod }),
        Err(e) => {
            // The egress classifier stays attached (half the enforcement
            // beats none); the caller reports the error and retries the pod.
            Err(e)
        }
    }
}

/// Attaches `zt_bridge_in` at TC ingress of a bridge whose ports are pods'
/// veths. The link lives as long as the process: while no agent runs there
/// is no proxy either, and steered frames without a socket are dropped all
/// the same.
pub fn attach_bridge(
    bpf: &mut aya::Ebpf,
    interface: &str,
) -> Result<aya::programs::tc::SchedClassifierLinkId, AttachError> {
    use aya::programs::TcAttachType;
    let tcx = aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    if !tcx {
        let _ = aya::programs::tc::qdisc_add_clsact(interface);
    }
    let name = crate::programs::BRIDGE_IN;
    classifier(bpf, name)?.attach(interface, TcAttachType::Ingress).map_err(prog_err("attach", name, interface))
}

/// Detaches `zt_bridge_in` from a bridge.
pub fn detach_bridge(bpf: &mut aya::Ebpf, link: aya::programs::tc::SchedClassifierLinkId) -> Result<(), AttachError> {
    let name = crate::programs::BRIDGE_IN;
    classifier(bpf, name)?.detach(link).map_err(prog_err("detach", name, ""))
}

/// Detaches a pod's classifiers.
pub fn detach_pod(bpf: &mut aya::Ebpf, links: PodLinks) -> Result<(), AttachError> {
    let (from, to) = (crate::programs::FROM_POD, crate::programs::TO_POD);
    let a = classifier(bpf, from).and_then(|p| p.detach(links.from_pod).map_err(prog_err("detach", from, "")));
    let b = classifier(bpf, to).and_then(|p| p.detach(links.to_pod).map_err(prog_err("detach", to, "")));
    a.and(b)
}

/// A pod's classifiers attached with TCX links pinned on bpffs: they stay
/// attached when the agent exits, and a restarted agent adopts them.
#[derive(Debug)]
pub struct PinnedPod {
    from_pod: Option<aya::programs::links::PinnedLink>,
    to_pod: Option<aya::programs::links::PinnedLink>,
}

fn link_pin(dir: &Path, ifindex: u32, which: &str) -> std::path::PathBuf {
    dir.join(format!("{ifindex}-{which}"))
}

/// Attaches a pod's classifiers and pins both links under `dir` as
/// `<ifindex>-from` and `<ifindex>-to`. Needs TCX (kernel 6.6+).
pub fn attach_pod_pinned(
    bpf: &mut aya::Ebpf,
    interface: &str,
    ifindex: u32,
    dir: &Path,
) -> Result<PinnedPod, AttachError> {
    let links = attach_pod(bpf, interface)?;
    let mut pin = |name: &'static str, id, which: &str| -> Result<aya::programs::links::PinnedLink, AttachError> {
        let link = classifier(bpf, name)?.take_link(id).map_err(prog_err("pin", name, interface))?;
        let path = link_pin(dir, ifindex, which);
        let pin_err = |reason: String| AttachError::Pin { path: path.display().to_string(), reason };
        let fd: aya::programs::links::FdLink =
            link.try_into().map_err(|e: aya::programs::links::LinkError| pin_err(e.to_string()))?;
        let _ = std::fs::remove_file(&path); // a dead pod's leftover for a reused ifindex
        fd.pin(&path).map_err(|e| pin_err(e.to_string()))
    };
    let from_pod = pin(crate::programs::FROM_POD, links.from_pod, "from")?;
    let to_pod = pin(crate::programs::TO_POD, links.to_pod, "to")?;
    Ok(PinnedPod { from_pod: Some(from_pod), to_pod: Some(to_pod) })
}

/// Moves a pod's pinned links from a predecessor's programs to this
/// object's, so that an upgraded agent's datapath (and maps) apply to pods
/// that were already running, with no moment without enforcement: the new
/// programs are attached behind the old ones (TCX runs them in order and the
/// first verdict ends the chain, so the old ones keep deciding), each new
/// link is pinned beside the old pin and renamed over it (bpffs renames
/// atomically; a crash leaves one of the two pinned and attached), and only
/// then are the old links let go, which detaches them. On failure the error
/// comes back with the old links, which keep enforcing.
pub fn replace_pinned(
    bpf: &mut aya::Ebpf,
    old: PinnedPod,
    interface: &str,
    ifindex: u32,
    dir: &Path,
) -> Result<PinnedPod, Box<ReplaceFailed>> {
    use aya::programs::links::{FdLink, LinkError, PinnedLink};
    let links = match attach_pod(bpf, interface) {
        Ok(l) => l,
        Err(error) => return Err(Box::new(ReplaceFailed { error, old })),
    };
    let mut swap = |name: &'static str, id, which: &str| -> Result<PinnedLink, AttachError> {
        let link = classifier(bpf, name)?.take_link(id).map_err(prog_err("pin", name, interface))?;
        let path = link_pin(dir, ifindex, which);
        let pin_err = |reason: String| AttachError::Pin { path: path.display().to_string(), reason };
        let fd: FdLink = link.try_into().map_err(|e: LinkError| pin_err(e.to_string()))?;
        let staged = staged_pin(&path);
        let _ = std::fs::remove_file(&staged);
        let pinned = fd.pin(&staged).map_err(|e| pin_err(e.to_string()))?;
        if let Err(e) = std::fs::rename(&staged, &path) {
            // Unpinned and closed below: the new link goes, the old stays.
            let _ = std::fs::remove_file(&staged);
            return Err(pin_err(e.to_string()));
        }
        // The pin now names the new link; hold it by its real path.
        drop(pinned);
        PinnedLink::from_pin(&path).map_err(|e| pin_err(e.to_string()))
    };
    let from_pod = match swap(crate::programs::FROM_POD, links.from_pod, "from") {
        Ok(l) => l,
        Err(error) => return Err(Box::new(ReplaceFailed { error, old })),
    };
    let to_pod = match swap(crate::programs::TO_POD, links.to_pod, "to") {
        Ok(l) => l,
        // The old to-pod link stays; the from-pod pin already names the new
        // link, which enforces either way.
        Err(error) => return Err(Box::new(ReplaceFailed { error, old })),
    };
    // The last references to the old links: dropping them detaches them.
    drop(old);
    Ok(PinnedPod { from_pod: Some(from_pod), to_pod: Some(to_pod) })
}

/// A replacement of a pod's programs that did not happen.
#[derive(Debug)]
pub struct ReplaceFailed {
    /// Why.
    pub error: AttachError,
    /// The previous links, still attached and enforcing.
    pub old: PinnedPod,
}

/// Where a replacement link is pinned before it is renamed over `path`
/// (bpffs refuses names with a dot).
fn staged_pin(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-new");
    p.into()
}

/// The pinned pod links a previous agent left under `dir`, by ifindex.
/// A staged pin (`*-new`) is a replacement a crash interrupted before its
/// rename: the old pin beside it still enforces, so it is removed.
pub fn adopt_pinned(dir: &Path) -> BTreeMap<u32, PinnedPod> {
    let mut out: BTreeMap<u32, PinnedPod> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with("-new") {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        let Some((idx, which)) = name.split_once('-') else { continue };
        let Ok(ifindex) = idx.parse::<u32>() else { continue };
        let Ok(link) = aya::programs::links::PinnedLink::from_pin(e.path()) else { continue };
        let slot = out.entry(ifindex).or_insert(PinnedPod { from_pod: None, to_pod: None });
        match which {
            "from" => slot.from_pod = Some(link),
            "to" => slot.to_pod = Some(link),
            _ => {}
        }
    }
    out
}

/// Whether both classifiers are attached.
impl PinnedPod {
    /// Both directions are attached.
    pub fn complete(&self) -> bool {
        self.from_pod.is_some() && self.to_pod.is_some()
    }
}

/// Unpins and detaches a pod's classifiers.
pub fn unpin_pod(p: PinnedPod) -> std::io::Result<()> {
    for link in [p.from_pod, p.to_pod].into_iter().flatten() {
        // Removing the pin and dropping the last fd detaches the program.
        drop(link.unpin()?);
    }
    Ok(())
}
