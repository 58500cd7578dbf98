//! Network namespaces, veths and routes, driven with `ip` (iproute2).

use std::fs::File;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

fn run(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

impl Netns {
    /// Creates a namespace with its loopback up.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", name]).output(); // leftover of a killed run
        run(&["ip", "netns", "add", name])?;
        let ns = Self { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]).map(|_| ())
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it
    /// creates live there.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> anyhow::Result<R> {
        run_in(&self.name, f)
    }

    /// Spawns `f` on a thread inside the namespace and returns at once.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        Ok(std::thread::spawn(move || {
            if setns(file, CloneFlags::CLONE_NEWNET).is_ok() {
                f();
            }
        }))
    }
}

/// Runs `f` on a thread inside the namespace called `name`.
pub fn run_in<R: Send + 'static>(name: &str, f: impl FnOnce() -> R + Send + 'static) -> anyhow::Result<R> {
    let path = format!("/var/run/netns/{name}");
    let handle = std::thread::spawn(move || -> anyhow::Result<R> {
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        setns(file, CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f())
    });
    handle.join().map_err(|_| anyhow::anyhow!("thread in {name} panicked"))?
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// A pod of the testbed.
#[derive(Debug)]
pub struct PodNs {
    /// `namespace/name` of the Kubernetes pod it stands for.
    pub key: String,
    /// Its network namespace.
    pub ns: Netns,
    /// Its address.
    pub ip: std::net::Ipv4Addr,
    /// Index of its node in [`Testbed::nodes`].
    pub node: usize,
    /// Name of the host-side veth in the node namespace.
    pub host_if: String,
}

/// A node of the testbed.
#[derive(Debug)]
pub struct NodeNs {
    /// Kubernetes node name.
    pub name: String,
    /// Its network namespace (the "host").
    pub ns: Netns,
    /// Its address on the node link.
    pub ip: std::net::Ipv4Addr,
}

/// Nodes and pods as namespaces. Dropping it removes every namespace (and
/// with them every veth and route).
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    /// Pods (dropped before nodes).
    pub pods: Vec<PodNs>,
    /// Nodes.
    pub nodes: Vec<NodeNs>,
    /// An "external" host outside the cluster, attached to the first node.
    pub external: Option<PodNs>,
    /// Whether the nodes have IPv6 on their link.
    v6: bool,
    /// Whether pods hang off a bridge per node (see [`Testbed::bridged`]).
    bridge: bool,
    /// Whether the bridges have their IPv6 range.
    v6_bridges: bool,
}

/// A veth pair: `eth0` in the pod namespace `ns`, `host_if` in `node_ns`.
fn veth_pair(ns: &Netns, host_if: &str, node_ns: &Netns) -> anyhow::Result<()> {
    run(&[
        "ip",
        "link",
        "add",
        host_if,
        "netns",
        node_ns.name(),
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    Ok(())
}

/// The bridge of a [`Testbed::bridged`] node.
pub const BRIDGE: &str = "ztbr0";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The process that created a [`Testbed::new`] namespace, from its name
/// (`zt<PID>x<N>-<role>`); `None` for any other name (fixed prefixes such
/// as the demo's are replaced by their next run instead).
fn creator(name: &str) -> Option<u32> {
    let (pid, rest) = name.strip_prefix("zt")?.split_once('x')?;
    let (n, role) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    if role.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Removes what interrupted runs left behind: namespaces of
/// [`Testbed::new`] whose creating process is gone (a benchmark stopped
/// with a signal never runs its destructors), after killing the processes
/// still inside them (the agents that run had started). Without this, every
/// interrupted run leaves its nodes, pods, veths and agents on the machine.
/// Namespaces of live processes are never touched.
pub fn reap_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else { return };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = creator(&name) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &name]).output() {
            for p in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", p]).output();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
    }
}

impl Testbed {
    /// Creates `nodes` node namespaces joined by one link
    /// (192.168.100.0/24 for two nodes). Node `i` routes pod addresses of
    /// 10.244.(i+1).0/24 itself and the other nodes' ranges via their link
    /// address.
    pub fn new(node_names: &[&str]) -> anyhow::Result<Self> {
        reap_stale();
        let prefix = format!("zt{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        Self::with_prefix(&prefix, node_names)
    }

    /// [`Testbed::new`] with a chosen name prefix (the demo uses a fixed one
    /// so a later run can find and remove it).
    pub fn with_prefix(prefix: &str, node_names: &[&str]) -> anyhow::Result<Self> {
        let prefix = prefix.to_string();
        let mut tb = Testbed {
            prefix: prefix.clone(),
            pods: Vec::new(),
            nodes: Vec::new(),
            external: None,
            v6: false,
            bridge: false,
            v6_bridges: false,
        };
        for (i, name) in node_names.iter().enumerate() {
            let ns = Netns::create(&format!("{prefix}-n{i}"))?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
            let ip = std::net::Ipv4Addr::new(192, 168, 100, u8::try_from(i + 1)?);
            tb.nodes.push(NodeNs { name: name.to_string(), ns, ip });
        }
        if tb.nodes.len() == 2 {
            let (a, b) = (&tb.nodes[0], &tb.nodes[1]);
            run(&[
                "ip",
                "link",
                "add",
                "zt-link0",
                "netns",
                a.ns.name(),
                "type",
                "veth",
                "peer",
                "name",
                "zt-link1",
                "netns",
                b.ns.name(),
            ])?;
            for (node, dev, peer, other_range) in
                [(a, "zt-link0", b.ip, "10.244.2.0/24"), (b, "zt-link1", a.ip, "10.244.1.0/24")]
            {
                node.ns.ip(&["addr", "add", &format!("{}/24", node.ip), "dev", dev])?;
                node.ns.ip(&["link", "set", dev, "up"])?;
                node.ns.ip(&["route", "add", other_range, "via", &peer.to_string()])?;
            }
        }
        Ok(tb)
    }

    /// [`Testbed::new`] wired like a bridge CNI (flannel's `cni0`, kubenet's
    /// `cbr0`): each node has a bridge, [`BRIDGE`], holding the first
    /// address of its pod range (10.244.(i+1).1/24), pods added later get
    /// `ip/24` with a default route via that address, and their host-side
    /// veths are ports of the bridge: no host route names a pod's veth,
    /// and pods of one node reach each other through the bridge alone.
    pub fn bridged(node_names: &[&str]) -> anyhow::Result<Self> {
        let mut tb = Self::new(node_names)?;
        for (i, node) in tb.nodes.iter().enumerate() {
            node.ns.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
            node.ns.ip(&["addr", "add", &format!("10.244.{}.1/24", i + 1), "dev", BRIDGE])?;
            node.ns.ip(&["link", "set", BRIDGE, "up"])?;
        }
        tb.bridge = true;
        Ok(tb)
    }

    /// Adds a pod namespace on node `node` with address `ip`, Calico-style:
    /// `eth0` holds `ip/32` with a default route via 169.254.1.1 (held by
    /// the host side), and the node routes `ip/32` to the veth.
    pub fn add_pod(&mut self, key: &str, node: usize, ip: std::net::Ipv4Addr) -> anyhow::Result<&PodNs> {
        let pod = self.make_pod(key, node, ip)?;
        self.pods.push(pod);
        self.pods.last().context("just pushed")
    }

    /// Adds a dual-stack pod: like [`Testbed::add_pod`], plus `ip6`/128 on
    /// `eth0` with a default route via the link-local gateway `fe80::1`
    /// (held by the host-side veth) and the node routing `ip6`/128 to the
    /// veth. The first call gives the nodes IPv6 on their link
    /// (fd00:100::<n>/64) and routes to each other's pods' /128s.
    pub fn add_pod_dual(
        &mut self,
        key: &str,
        node: usize,
        ip: std::net::Ipv4Addr,
        ip6: std::net::Ipv6Addr,
    ) -> anyhow::Result<&PodNs> {
        if !self.v6 {
            for (i, n) in self.nodes.iter().enumerate() {
                n.ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
                n.ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
                n.ns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("fd00:100::{}/64", i + 1),
                    "dev",
                    &format!("zt-link{i}"),
                    "nodad",
                ])?;
            }
            self.v6 = true;
        }
        if self.bridge {
            return self.add_bridged_pod_dual(key, node, ip, ip6);
        }
        let pod = self.make_pod(key, node, ip)?;
        pod.ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        pod.ns.ip(&["-6", "addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"])?;
        let node_ns = &self.nodes[node].ns;
        node_ns.ip(&["-6", "addr", "add", "fe80::1/64", "dev", &pod.host_if, "nodad"])?;
        pod.ns.ip(&["-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"])?;
        node_ns.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", &pod.host_if])?;
        for (i, other) in self.nodes.iter().enumerate() {
            if i != node {
                other.ns.ip(&[
                    "-6",
                    "route",
                    "add",
                    &format!("{ip6}/128"),
                    "via",
                    &format!("fd00:100::{}", node + 1),
                ])?;
            }
        }
        self.pods.push(pod);
        self.pods.last().context("just pushed")
    }

    /// [`Testbed::add_pod_dual`] behind a bridge: node `i`'s pods share
    /// fd00:244:(i+1)::/64 on its bridge, which holds fd00:244:(i+1)::1 (the
    /// pods' default route; `ip6` must be in that range), and the nodes
    /// route each other's /64 over their link.
    fn add_bridged_pod_dual(
        &mut self,
        key: &str,
        node: usize,
        ip: std::net::Ipv4Addr,
        ip6: std::net::Ipv6Addr,
    ) -> anyhow::Result<&PodNs> {
        let range = |i: usize| format!("fd00:244:{}::", i + 1);
        if !self.v6_bridges {
            for (i, n) in self.nodes.iter().enumerate() {
                n.ns.ip(&["-6", "addr", "add", &format!("{}1/64", range(i)), "dev", BRIDGE, "nodad"])?;
                for (j, _) in self.nodes.iter().enumerate().filter(|(j, _)| *j != i) {
                    n.ns.ip(&[
                        "-6",
                        "route",
                        "add",
                        &format!("{}/64", range(j)),
                        "via",
                        &format!("fd00:100::{}", j + 1),
                    ])?;
                }
            }
            self.v6_bridges = true;
        }
        let pod = self.make_pod(key, node, ip)?;
        pod.ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        pod.ns.ip(&["-6", "addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"])?;
        pod.ns.ip(&["-6", "route", "add", "default", "via", &format!("{}1", range(node)), "dev", "eth0"])?;
        self.pods.push(pod);
        self.pods.last().context("just pushed")
    }

    /// Adds the external host (an address outside the cluster, wired like a
    /// pod to node 0; the other nodes route it via node 0).
    pub fn add_external(&mut self, ip: std::net::Ipv4Addr) -> anyhow::Result<()> {
        let ext = self.make_pod("external", 0, ip)?;
        let via = self.nodes[0].ip.to_string();
        for node in &self.nodes[1..] {
            node.ns.ip(&["route", "add", &format!("{ip}/32"), "via", &via])?;
        }
        self.external = Some(ext);
        Ok(())
    }

    fn make_pod(&self, key: &str, node: usize, ip: std::net::Ipv4Addr) -> anyhow::Result<PodNs> {
        let n = if key == "external" { "ext".to_string() } else { self.pods.len().to_string() };
        let ns = Netns::create(&format!("{}-p{n}", self.prefix))?;
        // Interface names are per namespace; only the 15-byte limit matters.
        // Pods' veths share a prefix (`ztv`, the testbed's "CNI prefix" for
        // the agent's unknown-interface guard); the external host is no pod.
        let host_if = if key == "external" { "ztext0".to_string() } else { format!("ztv{n}") };
        if self.bridge && key != "external" {
            self.wire_bridged(&ns, &host_if, node, ip)?;
        } else {
            self.wire(&ns, &host_if, node, ip)?;
        }
        Ok(PodNs { key: key.to_string(), ns, ip, node, host_if })
    }

    /// Replaces a pod's veth pair by a new one with the same names,
    /// addresses and routes, as a CNI does when a pod's sandbox is
    /// recreated: only the interfaces' indexes change (IPv4 wiring only;
    /// the IPv6 addresses of [`Testbed::add_pod_dual`] are not restored).
    pub fn replug(&self, key: &str) -> anyhow::Result<()> {
        let pod = self.pod(key).with_context(|| format!("no pod {key}"))?;
        let node_ns = &self.nodes[pod.node].ns;
        // Deleting one end of a veth deletes the pair (and its routes).
        node_ns.ip(&["link", "del", &pod.host_if])?;
        if self.bridge {
            self.wire_bridged(&pod.ns, &pod.host_if, pod.node, pod.ip)
        } else {
            self.wire(&pod.ns, &pod.host_if, pod.node, pod.ip)
        }
    }

    /// A veth from `ns` (`eth0`, `ip/24`, default route via the bridge's
    /// address) whose host side `host_if` is a port of node `node`'s
    /// bridge.
    fn wire_bridged(&self, ns: &Netns, host_if: &str, node: usize, ip: std::net::Ipv4Addr) -> anyhow::Result<()> {
        let node_ns = &self.nodes[node].ns;
        veth_pair(ns, host_if, node_ns)?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &format!("10.244.{}.1", node + 1), "dev", "eth0"])?;
        node_ns.ip(&["link", "set", host_if, "master", BRIDGE])?;
        node_ns.ip(&["link", "set", host_if, "up"])?;
        Ok(())
    }

    /// A veth from `ns` (`eth0`) to node `node` (`host_if`), with the pod's
    /// address, its default route and the node's host route.
    fn wire(&self, ns: &Netns, host_if: &str, node: usize, ip: std::net::Ipv4Addr) -> anyhow::Result<()> {
        let node_ns = &self.nodes[node].ns;
        veth_pair(ns, host_if, node_ns)?;
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", "169.254.1.1", "dev", "eth0"])?;
        // The pod's gateway answers ARP because the host side holds it, as
        // a /32 on every host-side veth.
        node_ns.ip(&["addr", "add", "169.254.1.1/32", "dev", host_if, "scope", "link"])?;
        node_ns.ip(&["link", "set", host_if, "up"])?;
        node_ns.sysctl(&format!("net.ipv4.conf.{host_if}.rp_filter"), "0")?;
        node_ns.ip(&["route", "add", &format!("{ip}/32"), "dev", host_if])?;
        Ok(())
    }

    /// The pod with this key.
    pub fn pod(&self, key: &str) -> Option<&PodNs> {
        self.pods.iter().find(|p| p.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::creator;

    #[test]
    fn only_testbed_names_have_a_creator() {
        assert_eq!(creator("zt4242x0-n1"), Some(4242));
        assert_eq!(creator("zt4242x17-p12"), Some(4242));
        for other in
            ["ztdemo-n0", "ztkube-n1", "ztgw-p0", "zt4242x0", "zt4242x-n0", "ztx0-n0", "zt12ax0-n0", "zt4242x0-", "lab"]
        {
            assert_eq!(creator(other), None, "{other}");
        }
    }
}
