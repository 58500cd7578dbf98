//! The node's eBPF datapath as the agent drives it: one loaded object, its
//! maps kept equal to the compiled tables, and the classifiers attached to
//! every local pod's host-side interface.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use policy::ObjectKey;
use policy::compile::{EndpointId, TableDiff, Tables};
use zt_ebpf::loader::{
    AyaMaps, MapWriter, Numbers, PinAdjustment, PinnedPod, PodLinks, adopt_pinned, apply_diff, attach_bridge,
    attach_pod, attach_pod_pinned, detach_bridge, detach_pod, load_object, load_programs, replace_pinned, unpin_pod,
};
use zt_ebpf::maps::{self, ZtConfig, ZtEvent};

/// Idle timeout of tracked TCP flows.
const TCP_IDLE_NS: u64 = 3600 * 1_000_000_000;
/// Idle timeout of other tracked flows (UDP, ICMP, SCTP).
const OTHER_IDLE_NS: u64 = 120 * 1_000_000_000;

#[derive(Debug)]
enum Links {
    /// Pinned TCX links: they outlive the agent.
    Pinned(PinnedPod),
    /// Links that live as long as the process (no bpffs, or no TCX).
    Process(PodLinks),
}

#[derive(Debug)]
struct Attached {
    ifindex: u32,
    interface: String,
    endpoint: EndpointId,
    links: Links,
    /// The MAC of the bridge the interface is a port of, as written to
    /// `zt_ports` (`None`: a routed veth, no entry).
    bridge_mac: Option<[u8; 6]>,
}

/// The loaded datapath.
pub struct Dataplane {
    bpf: aya::Ebpf,
    maps: AyaMaps,
    config: aya::maps::Array<aya::maps::MapData, ZtConfig>,
    /// Current steering into the proxy.
    steering: Option<Steering>,
    events: aya::maps::RingBuf<aya::maps::MapData>,
    counters: aya::maps::PerCpuArray<aya::maps::MapData, maps::ZtCounter>,
    attached: BTreeMap<ObjectKey, Attached>,
    /// Links a previous agent pinned, not yet claimed by a pod.
    adopted: BTreeMap<u32, PinnedPod>,
    links_dir: Option<PathBuf>,
    epoch: u32,
    pruned: bool,
    /// Policy audit mode.
    audit: bool,
    /// Veth peers' addresses, for pods behind a bridge.
    peers: super::links::PeerAddresses,
    /// Bridges with attached pods as ports, and their `zt_bridge_in` links.
    bridges: BTreeMap<u32, (String, aya::programs::tc::SchedClassifierLinkId)>,
    /// Service translation at the socket, once enabled.
    services: Option<Services>,
}

/// The Service maps and what this agent wrote to them.
struct Services {
    maps: zt_ebpf::services::ServiceMaps,
    installed: BTreeMap<super::services::Frontend, super::services::Installed>,
    next_id: u32,
    /// What a predecessor left (pinned maps), removed after the first sync.
    leftover: Option<(Vec<maps::ZtSvcKey>, Vec<maps::ZtBackendKey>)>,
}

/// The bpffs magic number (`BPF_FS_MAGIC`).
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

fn on_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 as u64 == BPF_FS_MAGIC)
}

/// Makes `dir` a directory on a bpffs, mounting one there if needed.
fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if on_bpffs(dir) {
        return Ok(());
    }
    nix::mount::mount(Some("bpf"), dir, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>).with_context(
        || format!("{0} is not on a bpffs and mounting one there failed (mount -t bpf bpf {0})", dir.display()),
    )?;
    Ok(())
}

/// The cgroup2 magic number (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_MAGIC: u64 = 0x6367_7270;

/// Makes `dir` a cgroup v2 directory, mounting the hierarchy there if it is
/// not one: `ip netns exec` (how an agent runs in a namespace it was not
/// started in) gives the process its own `/sys`, with an empty
/// `/sys/fs/cgroup`; the mount stays in that private mount namespace.
fn ensure_cgroup2(dir: &Path) -> anyhow::Result<()> {
    let is_cgroup2 =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 as u64 == CGROUP2_MAGIC);
    if is_cgroup2(dir) {
        return Ok(());
    }
    nix::mount::mount(Some("cgroup2"), dir, Some("cgroup2"), nix::mount::MsFlags::empty(), None::<&str>).with_context(
        || {
            format!(
                "{0} is not a cgroup v2 directory and mounting the hierarchy there failed (mount -t cgroup2 none {0})",
                dir.display()
            )
        },
    )?;
    Ok(())
}

/// Where the datapath steers pod-to-pod TCP when the proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steering {
    /// The capture listener.
    pub listener: std::net::SocketAddrV4,
    /// Mark on steered packets (routed locally by the agent's ip rule).
    pub mark: u32,
}

fn config(epoch: u32, steering: Option<Steering>, audit: bool) -> ZtConfig {
    let mut c = ZtConfig {
        epoch,
        tcp_idle_ns: TCP_IDLE_NS,
        other_idle_ns: OTHER_IDLE_NS,
        audit: u32::from(audit),
        ..ZtConfig::default()
    };
    if let Some(s) = steering {
        c.mesh = 1;
        c.proxy_addr4 = u32::from_ne_bytes(s.listener.ip().octets());
        c.proxy_port = s.listener.port().to_be();
        c.redirect_mark = s.mark;
    }
    c
}

impl Dataplane {
    /// Loads the object and its programs (the verifier runs here). With
    /// `pin_dir`, maps and links are pinned there and whatever a previous
    /// agent pinned is re-adopted; returns the largest numbers already in
    /// use so the compiler can number above them.
    ///
    /// `audit`: policy audit mode (denied flows are reported and let
    /// through). The epoch moves on at every load, so flows a predecessor
    /// let through in audit mode are decided again under this agent's mode.
    pub fn load(pin_dir: Option<&Path>, audit: bool) -> anyhow::Result<(Self, Numbers)> {
        let (maps_dir, links_dir) = match pin_dir {
            Some(d) => {
                ensure_bpffs(d)?;
                let (m, l) = (d.join("maps"), d.join("links"));
                std::fs::create_dir_all(&m).with_context(|| format!("creating {}", m.display()))?;
                std::fs::create_dir_all(&l).with_context(|| format!("creating {}", l.display()))?;
                (Some(m), Some(l))
            }
            None => (None, None),
        };
        let (mut bpf, adjusted) = load_object(maps_dir.as_deref()).context("loading the BPF object")?;
        for a in adjusted {
            match a {
                PinAdjustment::KeptSize { map, entries } => tracing::info!(
                    map,
                    entries,
                    "pinned map kept at its predecessor's size (this build's applies once the pins are cleared)"
                ),
                PinAdjustment::Replaced { map } => {
                    tracing::warn!(map, "pinned map had another layout; replaced by a fresh one")
                }
            }
        }
        load_programs(&mut bpf)?;
        let maps = AyaMaps::take(&mut bpf)?;
        let numbers = maps.max_numbers();
        let config_map = bpf.take_map(zt_ebpf::map_names::CONFIG).context("map zt_config")?;
        let mut config_array: aya::maps::Array<_, ZtConfig> = aya::maps::Array::try_from(config_map)?;
        // Continue the predecessor's epoch, so tracked flows re-check
        // against this agent's tables.
        let previous = config_array.get(&0, 0).ok();
        let epoch = previous.map(|c| c.epoch).unwrap_or(0).wrapping_add(1);
        // Steering stays as the predecessor left it until this agent's
        // proxy is up (`set_steering`): pod TCP keeps failing closed, never
        // passes unencrypted, while the agent restarts.
        let mut initial = config(epoch, None, audit);
        if let Some(p) = previous {
            (initial.mesh, initial.proxy_addr4, initial.proxy_port, initial.redirect_mark) =
                (p.mesh, p.proxy_addr4, p.proxy_port, p.redirect_mark);
        }
        config_array.set(0, initial, 0)?;
        let steering = (initial.mesh != 0).then(|| Steering {
            listener: std::net::SocketAddrV4::new(
                std::net::Ipv4Addr::from(initial.proxy_addr4.to_ne_bytes()),
                u16::from_be(initial.proxy_port),
            ),
            mark: initial.redirect_mark,
        });
        let events_map = bpf.take_map(zt_ebpf::map_names::EVENTS).context("map zt_events")?;
        let events = aya::maps::RingBuf::try_from(events_map)?;
        let counters_map = bpf.take_map(zt_ebpf::map_names::COUNTERS).context("map zt_counters")?;
        let counters = aya::maps::PerCpuArray::try_from(counters_map)?;
        let adopted = links_dir.as_deref().map(adopt_pinned).unwrap_or_default();
        if !adopted.is_empty() {
            tracing::info!(interfaces = adopted.len(), "found pinned attachments of a previous agent");
        }
        let dp = Self {
            bpf,
            maps,
            config: config_array,
            events,
            counters,
            attached: BTreeMap::new(),
            adopted,
            links_dir,
            epoch,
            pruned: false,
            peers: super::links::PeerAddresses::default(),
            bridges: BTreeMap::new(),
            services: None,
            steering,
            audit,
        };
        Ok((dp, numbers))
    }

    /// Writes one diff to the maps (safe order, see `apply_diff`).
    pub fn sync(&mut self, diff: &TableDiff) -> anyhow::Result<()> {
        let index: BTreeMap<ObjectKey, u32> = self.attached.iter().map(|(k, a)| (k.clone(), a.ifindex)).collect();
        let by_endpoint: BTreeMap<EndpointId, u32> = self.attached.values().map(|a| (a.endpoint, a.ifindex)).collect();
        apply_diff(&mut self.maps, diff, &|pod| index.get(pod).copied(), &|ep| by_endpoint.get(&ep).copied())?;
        Ok(())
    }

    /// Makes every tracked flow re-check its verdict on its next packet.
    pub fn bump_epoch(&mut self) -> anyhow::Result<()> {
        self.epoch = self.epoch.wrapping_add(1);
        self.config.set(0, config(self.epoch, self.steering, self.audit), 0)?;
        Ok(())
    }

    /// Turns steering into the proxy on (or off).
    pub fn set_steering(&mut self, steering: Option<Steering>) -> anyhow::Result<()> {
        self.steering = steering;
        self.config.set(0, config(self.epoch, steering, self.audit), 0)?;
        Ok(())
    }

    /// The indexes of the interfaces the classifiers are attached to.
    pub fn attached_ifindexes(&self) -> BTreeSet<u32> {
        self.attached.values().map(|a| a.ifindex).collect()
    }

    /// The interfaces the classifiers are attached to, by pod.
    pub fn attached_interfaces(&self) -> impl Iterator<Item = (&ObjectKey, &str)> {
        self.attached.iter().map(|(k, a)| (k, a.interface.as_str()))
    }

    /// Attaches the classifiers to local endpoints that have an interface
    /// now, and detaches those of endpoints that are gone or moved.
    /// Returns one message per failure; failures are retried next time.
    pub fn reconcile(&mut self, tables: &Tables) -> Vec<String> {
        let mut problems = Vec::new();
        let routes = match super::routes::read() {
            Ok(r) => r,
            Err(e) => return vec![format!("reading routes: {e}")],
        };
        // This runs every poll, so it walks the node's host routes (about
        // one per local pod) and looks each address up in the ipcache, not
        // the ipcache (every address of the cluster: 50,000 entries cost an
        // idle agent 2.4% of a core in a debug build). Routes go in address
        // order, so an endpoint with several addresses gets the interface of
        // its lowest routed one, as before.
        let mut host_routes: Vec<(std::net::IpAddr, &str)> = super::routes::host_routes(&routes).into_iter().collect();
        host_routes.sort_unstable();
        // The node's links, and the addresses behind its veths: pods behind
        // a bridge have no host route, only a veth whose other end holds
        // their address (one link dump per poll; see `links`).
        let snapshot = match self.peers.refresh() {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(format!("reading links: {e}"));
                None
            }
        };
        let mut iface_of: BTreeMap<EndpointId, String> = BTreeMap::new();
        for (ip, iface) in host_routes {
            if let Some(info) = tables.ipcache.get(&ip)
                && info.endpoint != 0
            {
                iface_of.entry(info.endpoint).or_insert_with(|| iface.to_string());
            }
        }
        if let Some(snap) = &snapshot {
            let mut peers: Vec<(&std::net::IpAddr, &u32)> = snap.by_peer_address.iter().collect();
            peers.sort_unstable();
            for (ip, index) in peers {
                if let Some(info) = tables.ipcache.get(ip)
                    && info.endpoint != 0
                    && let Some(link) = snap.links.get(index)
                {
                    // A host route, where there is one, said it first.
                    iface_of.entry(info.endpoint).or_insert_with(|| link.name.clone());
                }
            }
        }
        let wanted: BTreeMap<ObjectKey, (EndpointId, Option<String>)> =
            tables.endpoints.iter().map(|(id, info)| (info.pod.clone(), (*id, iface_of.remove(id)))).collect();
        // The interfaces as they are now, by name: a CNI that recreates a
        // pod's sandbox between two polls leaves the same name, address and
        // route on a new veth, which has none of the programs; only its
        // index tells it apart.
        let links: Option<HashMap<String, u32>> = match &snapshot {
            Some(snap) => Some(snap.links.values().map(|l| (l.name.clone(), l.index)).collect()),
            None => match nix::net::if_::if_nameindex() {
                Ok(list) => Some(list.iter().map(|i| (i.name().to_string_lossy().into_owned(), i.index())).collect()),
                Err(e) => {
                    problems.push(format!("listing interfaces: {e}"));
                    None
                }
            },
        };
        // Detach what is gone, moved to another interface, or whose
        // interface was replaced.
        let stale: Vec<ObjectKey> = self
            .attached
            .iter()
            .filter(|(k, a)| {
                let replaced = links.as_ref().is_some_and(|l| l.get(&a.interface) != Some(&a.ifindex));
                replaced
                    || wanted
                        .get(*k)
                        .is_none_or(|(id, i)| i.as_deref() != Some(a.interface.as_str()) || *id != a.endpoint)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(a) = self.attached.remove(&k) {
                let res = match a.links {
                    Links::Pinned(p) => unpin_pod(p).map_err(|e| e.to_string()),
                    Links::Process(l) => detach_pod(&mut self.bpf, l).map_err(|e| e.to_string()),
                };
                if let Err(e) = res {
                    problems.push(format!("detaching {k} from {}: {e}", a.interface));
                }
                if let Err(e) = self.maps.del_endpoint(a.ifindex) {
                    problems.push(format!("removing endpoint of {k}: {e}"));
                }
                if a.bridge_mac.is_some()
                    && let Err(e) = self.maps.del_port(a.ifindex)
                {
                    problems.push(format!("removing the bridge entry of {k}: {e}"));
                }
                tracing::info!(pod = %k, interface = %a.interface, "detached");
            }
        }
        // A bridge's MAC can change under its ports (a bridge without a MAC
        // of its own takes its lowest port's); keep the entries current.
        if let Some(snap) = &snapshot {
            for (k, a) in self.attached.iter_mut() {
                let mac = snap.bridge_mac(a.ifindex);
                if mac == a.bridge_mac {
                    continue;
                }
                let res = match mac {
                    Some(m) => self.maps.put_port(a.ifindex, m),
                    None => self.maps.del_port(a.ifindex),
                };
                match res {
                    Ok(()) => a.bridge_mac = mac,
                    Err(e) => problems.push(format!("bridge entry for {k}: {e}")),
                }
            }
        }
        for (pod, (endpoint, iface)) in wanted {
            if self.attached.contains_key(&pod) {
                continue;
            }
            let Some(iface) = iface else { continue }; // no route yet: the CNI is still wiring it
            let Ok(ifindex) = nix::net::if_::if_nametoindex(iface.as_str()) else {
                continue;
            };
            // The endpoint entry goes in before the programs, so the first
            // packet they see is judged, not dropped as unknown.
            let Some(info) = tables.endpoints.get(&endpoint) else {
                continue;
            };
            if let Err(e) = self.maps.put_endpoint(ifindex, maps::endpoint(endpoint, info)) {
                problems.push(format!("endpoint entry for {pod}: {e}"));
                continue;
            }
            // So is the bridge entry: without it a steered frame for a pod
            // of the same bridge would be switched past the proxy. (Deleting
            // clears what a predecessor left on a reused index.)
            let bridge_mac = snapshot.as_ref().and_then(|s| s.bridge_mac(ifindex));
            let port = match bridge_mac {
                Some(mac) => self.maps.put_port(ifindex, mac),
                None => self.maps.del_port(ifindex),
            };
            if let Err(e) = port {
                problems.push(format!("bridge entry for {pod}: {e}"));
                continue;
            }
            // And the bridge's own program, which assigns the proxy socket
            // to what the pod's program steers.
            if bridge_mac.is_some()
                && let Some(snap) = &snapshot
                && let Err(e) = self.ensure_bridge(snap, ifindex)
            {
                problems.push(format!("{pod}: {e}"));
                continue;
            }
            // A previous agent's pinned links on this interface: this
            // agent's programs take their place without a gap (and so do
            // its maps, where it made fresh ones).
            if let Some(p) = self.adopted.remove(&ifindex) {
                if p.complete()
                    && let Some(dir) = &self.links_dir
                {
                    let links = match replace_pinned(&mut self.bpf, p, &iface, ifindex, dir) {
                        Ok(new) => {
                            tracing::info!(pod = %pod, interface = %iface, ifindex, "re-adopted, programs replaced");
                            new
                        }
                        Err(failed) => {
                            problems.push(format!(
                                "replacing the programs on {pod} ({iface}): {}; the previous ones keep enforcing",
                                failed.error
                            ));
                            failed.old
                        }
                    };
                    self.attached.insert(
                        pod,
                        Attached { ifindex, interface: iface, endpoint, links: Links::Pinned(links), bridge_mac },
                    );
                    continue;
                }
                let _ = unpin_pod(p);
            }
            let links = match &self.links_dir {
                Some(dir) => attach_pod_pinned(&mut self.bpf, &iface, ifindex, dir).map(Links::Pinned),
                None => attach_pod(&mut self.bpf, &iface).map(Links::Process),
            };
            match links {
                Ok(links) => {
                    tracing::info!(pod = %pod, interface = %iface, ifindex, "attached");
                    self.attached.insert(pod, Attached { ifindex, interface: iface, endpoint, links, bridge_mac });
                }
                Err(e) => problems.push(format!("attaching to {pod} ({iface}): {e}")),
            }
        }
        // Bridges: attached to every one an attached pod is a port of (a
        // veth can move to another), released by the last.
        if let Some(snap) = &snapshot {
            let ports: Vec<(ObjectKey, u32)> = self
                .attached
                .iter()
                .filter(|(_, a)| a.bridge_mac.is_some())
                .map(|(k, a)| (k.clone(), a.ifindex))
                .collect();
            for (k, ifindex) in ports {
                if let Err(e) = self.ensure_bridge(snap, ifindex) {
                    problems.push(format!("{k}: {e}"));
                }
            }
            let needed: BTreeSet<u32> = self
                .attached
                .values()
                .filter(|a| a.bridge_mac.is_some())
                .filter_map(|a| snap.links.get(&a.ifindex)?.master)
                .collect();
            let unneeded: Vec<u32> = self.bridges.keys().filter(|b| !needed.contains(b)).copied().collect();
            for b in unneeded {
                if let Some((name, link)) = self.bridges.remove(&b) {
                    // A bridge that is gone took its link along.
                    if snap.links.contains_key(&b)
                        && let Err(e) = detach_bridge(&mut self.bpf, link)
                    {
                        problems.push(format!("detaching from bridge {name}: {e}"));
                    }
                    tracing::info!(bridge = %name, "bridge released");
                }
            }
        }
        problems
    }

    /// Turns on Service translation at the socket: the cgroup programs on
    /// `cgroup` (pinned beside the pods' links when those are), numbering
    /// backend lists above whatever a predecessor left in pinned maps.
    pub fn enable_services(&mut self, cgroup: &Path) -> anyhow::Result<()> {
        ensure_cgroup2(cgroup)?;
        zt_ebpf::services::attach_socket_programs(&mut self.bpf, cgroup, self.links_dir.as_deref())
            .with_context(|| format!("attaching the Service translation programs to cgroup {}", cgroup.display()))?;
        let maps = zt_ebpf::services::ServiceMaps::take(&mut self.bpf)?;
        let (fronts, backs) = maps.existing();
        let top = fronts.iter().map(|(_, v)| v.id).chain(backs.iter().map(|k| k.id)).max().unwrap_or(0);
        let leftover = Some((fronts.into_iter().map(|(k, _)| k).collect(), backs));
        self.services =
            Some(Services { maps, installed: BTreeMap::new(), next_id: top.wrapping_add(1).max(1), leftover });
        Ok(())
    }

    /// Sets the congestion control the pods' ends of node-local legs
    /// switch to (`None`: they keep theirs). Takes effect where the socket
    /// programs are attached ([`Self::enable_services`]).
    pub fn set_local_cc(&mut self, name: Option<&str>) -> anyhow::Result<()> {
        zt_ebpf::services::set_local_cc(&mut self.bpf, name).context("writing the node-local legs' congestion control")
    }

    /// Sets the Service CIDRs whose untranslated pod TCP is dropped while
    /// steering is on (see `zt_svc_cidr` in maps.h).
    pub fn set_service_cidrs(&mut self, cidrs: &[(std::net::IpAddr, u8)]) -> anyhow::Result<()> {
        zt_ebpf::services::set_service_cidrs(&mut self.bpf, cidrs).context("writing the Service CIDRs")
    }

    /// Removes Service translation links a predecessor pinned (an agent
    /// started without translation: left in place, they would translate
    /// with maps nobody keeps current).
    pub fn disable_services(&self) {
        if let Some(dir) = &self.links_dir {
            zt_ebpf::services::unpin_socket_programs(dir);
        }
    }

    /// Makes the Service maps hold `want`; returns the failures (retried
    /// with the next change). The first call also removes what a
    /// predecessor left that `want` does not hold.
    pub fn sync_services(
        &mut self,
        want: &BTreeMap<super::services::Frontend, Vec<std::net::SocketAddr>>,
    ) -> Vec<String> {
        use super::services::{Op, plan};
        let Some(svc) = &mut self.services else { return Vec::new() };
        let mut problems = Vec::new();
        let key = |f: &super::services::Frontend| maps::svc_key(f.ip, f.port, f.protocol);
        for op in plan(&mut svc.installed, want, &mut svc.next_id) {
            let r = match &op {
                Op::PutBackends(id, b) => svc.maps.put_backends(*id, b),
                Op::PutFrontend(f, id, n) => svc.maps.put_frontend(key(f), *id, *n),
                Op::DelFrontend(f) => svc.maps.del_frontend(key(f)),
                Op::DelBackends(id, n) => svc.maps.del_backends(*id, *n),
            };
            if let Err(e) = r {
                problems.push(format!("{op:?}: {e}"));
            }
        }
        if let Some((fronts, backs)) = svc.leftover.take() {
            let current: HashSet<maps::ZtSvcKey> = svc.installed.keys().map(key).collect();
            let ids: HashSet<u32> = svc.installed.values().map(|i| i.id).collect();
            for k in fronts.into_iter().filter(|k| !current.contains(k)) {
                if let Err(e) = svc.maps.del_frontend(k) {
                    problems.push(format!("removing a stale Service frontend: {e}"));
                }
            }
            for k in backs.into_iter().filter(|k| !ids.contains(&k.id)) {
                if let Err(e) = svc.maps.del_backend(k) {
                    problems.push(format!("removing a stale Service backend: {e}"));
                }
            }
        }
        problems
    }

    /// Attaches `zt_bridge_in` to the bridge `port` is a port of, unless it
    /// is attached already.
    fn ensure_bridge(&mut self, snap: &super::links::Snapshot, port: u32) -> anyhow::Result<()> {
        let Some(master) = snap.links.get(&port).and_then(|l| l.master) else { return Ok(()) };
        let Some(bridge) = snap.links.get(&master) else { return Ok(()) };
        match self.bridges.remove(&master) {
            Some((name, link)) if name == bridge.name => {
                self.bridges.insert(master, (name, link));
                return Ok(());
            }
            // Renamed, or a new bridge on a reused index: attach afresh.
            Some((_, link)) => {
                let _ = detach_bridge(&mut self.bpf, link);
            }
            None => {}
        }
        let link = attach_bridge(&mut self.bpf, &bridge.name)
            .with_context(|| format!("attaching to its bridge {}", bridge.name))?;
        tracing::info!(bridge = %bridge.name, ifindex = master, "bridge attached");
        self.bridges.insert(master, (bridge.name.clone(), link));
        Ok(())
    }

    /// After the first full sync: detach adopted links no pod claimed, and
    /// delete every map entry the current tables do not hold (what a
    /// previous agent left). Runs once.
    pub fn prune_once(&mut self, tables: &Tables) -> anyhow::Result<()> {
        if self.pruned {
            return Ok(());
        }
        for (ifindex, p) in std::mem::take(&mut self.adopted) {
            tracing::info!(ifindex, "detaching a stale pinned attachment");
            let _ = unpin_pod(p);
        }
        let ifindexes: HashSet<u32> = self.attached.values().map(|a| a.ifindex).collect();
        let removed = self.maps.prune(tables, &ifindexes)?;
        if removed > 0 {
            tracing::info!(removed, "removed stale map entries");
        }
        self.pruned = true;
        Ok(())
    }

    /// Packet and byte totals per (direction, allowed), summed over CPUs:
    /// index `direction * 2 + allowed`.
    pub fn counters(&self) -> [(u64, u64); 4] {
        let mut out = [(0, 0); 4];
        for (i, slot) in out.iter_mut().enumerate() {
            let Ok(i) = u32::try_from(i) else { continue };
            if let Ok(per_cpu) = self.counters.get(&i, 0) {
                for c in per_cpu.iter() {
                    slot.0 += c.packets;
                    slot.1 += c.bytes;
                }
            }
        }
        out
    }

    /// Verdict events lost to a full event ring so far, summed over CPUs
    /// (0 with maps pinned by an agent that predates the counter).
    pub fn events_lost(&self) -> u64 {
        self.counters
            .get(&maps::COUNTER_EVENTS_LOST, 0)
            .map(|per_cpu| per_cpu.iter().map(|c| c.packets).sum())
            .unwrap_or(0)
    }

    /// Number of pods with classifiers attached.
    pub fn attached_count(&self) -> usize {
        self.attached.len()
    }

    /// Drains the verdict events.
    pub fn drain_events(&mut self, mut f: impl FnMut(ZtEvent)) {
        while let Some(item) = self.events.next() {
            if let Some(e) = ZtEvent::from_bytes(&item) {
                f(e);
            }
        }
    }
}
