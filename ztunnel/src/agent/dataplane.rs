//! The node's eBPF datapath as the agent drives it: one loaded object, its
//! maps kept equal to the compiled tables, and the classifiers attached to
//! every local pod's host-side interface.

use std::collections::BTreeMap;

use anyhow::Context;
use policy::ObjectKey;
use policy::compile::{EndpointId, TableDiff, Tables};
use zt_ebpf::loader::{
    AyaMaps, MapWriter, PodLinks, apply_diff, attach_pod, detach_pod, load_programs,
};
use zt_ebpf::maps::{self, ZtConfig, ZtEvent};

/// Idle timeout of tracked TCP flows.
const TCP_IDLE_NS: u64 = 3600 * 1_000_000_000;
/// Idle timeout of other tracked flows (UDP, ICMP, SCTP).
const OTHER_IDLE_NS: u64 = 120 * 1_000_000_000;

#[derive(Debug)]
struct Attached {
    ifindex: u32,
    interface: String,
    endpoint: EndpointId,
    links: PodLinks,
}

/// The loaded datapath.
pub struct Dataplane {
    bpf: aya::Ebpf,
    maps: AyaMaps,
    config: aya::maps::Array<aya::maps::MapData, ZtConfig>,
    events: aya::maps::RingBuf<aya::maps::MapData>,
    attached: BTreeMap<ObjectKey, Attached>,
    epoch: u32,
}

impl Dataplane {
    /// Loads the object and its programs (the verifier runs here).
    pub fn load() -> anyhow::Result<Self> {
        let mut bpf = aya::Ebpf::load(zt_ebpf::OBJECT).context("loading the BPF object")?;
        load_programs(&mut bpf)?;
        let maps = AyaMaps::take(&mut bpf)?;
        let config_map = bpf
            .take_map(zt_ebpf::map_names::CONFIG)
            .context("map zt_config")?;
        let mut config = aya::maps::Array::try_from(config_map)?;
        config.set(
            0,
            ZtConfig {
                epoch: 0,
                pad: 0,
                tcp_idle_ns: TCP_IDLE_NS,
                other_idle_ns: OTHER_IDLE_NS,
            },
            0,
        )?;
        let events_map = bpf
            .take_map(zt_ebpf::map_names::EVENTS)
            .context("map zt_events")?;
        let events = aya::maps::RingBuf::try_from(events_map)?;
        Ok(Self {
            bpf,
            maps,
            config,
            events,
            attached: BTreeMap::new(),
            epoch: 0,
        })
    }

    /// Writes one diff to the maps (safe order, see `apply_diff`).
    pub fn sync(&mut self, diff: &TableDiff) -> anyhow::Result<()> {
        let index: BTreeMap<ObjectKey, u32> = self
            .attached
            .iter()
            .map(|(k, a)| (k.clone(), a.ifindex))
            .collect();
        let by_endpoint: BTreeMap<EndpointId, u32> = self
            .attached
            .values()
            .map(|a| (a.endpoint, a.ifindex))
            .collect();
        apply_diff(
            &mut self.maps,
            diff,
            &|pod| index.get(pod).copied(),
            &|ep| by_endpoint.get(&ep).copied(),
        )?;
        Ok(())
    }

    /// Makes every tracked flow re-check its verdict on its next packet.
    pub fn bump_epoch(&mut self) -> anyhow::Result<()> {
        self.epoch = self.epoch.wrapping_add(1);
        self.config.set(
            0,
            ZtConfig {
                epoch: self.epoch,
                pad: 0,
                tcp_idle_ns: TCP_IDLE_NS,
                other_idle_ns: OTHER_IDLE_NS,
            },
            0,
        )?;
        Ok(())
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
        let wanted: BTreeMap<ObjectKey, (EndpointId, Option<String>)> = tables
            .endpoints
            .iter()
            .map(|(id, info)| {
                let iface = tables
                    .ipcache
                    .iter()
                    .filter(|(_, i)| i.endpoint == *id)
                    .find_map(|(ip, _)| {
                        super::routes::interface_for(&routes, *ip).map(String::from)
                    });
                (info.pod.clone(), (*id, iface))
            })
            .collect();
        // Detach what is gone or moved to another interface.
        let stale: Vec<ObjectKey> = self
            .attached
            .iter()
            .filter(|(k, a)| {
                wanted.get(*k).is_none_or(|(id, i)| {
                    i.as_deref() != Some(a.interface.as_str()) || *id != a.endpoint
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            if let Some(a) = self.attached.remove(&k) {
                if let Err(e) = detach_pod(&mut self.bpf, a.links) {
                    problems.push(format!("detaching {k} from {}: {e}", a.interface));
                }
                if let Err(e) = self.maps.del_endpoint(a.ifindex) {
                    problems.push(format!("removing endpoint of {k}: {e}"));
                }
                tracing::info!(pod = %k, interface = %a.interface, "detached");
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
            if let Err(e) = self
                .maps
                .put_endpoint(ifindex, maps::endpoint(endpoint, info))
            {
                problems.push(format!("endpoint entry for {pod}: {e}"));
                continue;
            }
            match attach_pod(&mut self.bpf, &iface) {
                Ok(links) => {
                    tracing::info!(pod = %pod, interface = %iface, ifindex, "attached");
                    self.attached.insert(
                        pod,
                        Attached {
                            ifindex,
                            interface: iface,
                            endpoint,
                            links,
                        },
                    );
                }
                Err(e) => problems.push(format!("attaching to {pod} ({iface}): {e}")),
            }
        }
        problems
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
