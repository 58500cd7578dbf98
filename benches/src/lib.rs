//! Shared helpers for the benchmarks: a deterministic generator of realistic
//! clusters, and a counting allocator for peak-memory measurements.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use policy::Object;
use policy::labels::{Labels, Requirement, Selector};
use policy::model::{
    IpBlock, NamedPort, Namespace, NamespaceSelection, NetworkPolicy, Node, ObjectKey, Peer, Pod, PortMatch, PortRule,
    Protocol, Rule,
};

/// A global allocator that counts live and peak bytes.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: delegates every call to the system allocator unchanged; only
// counts sizes on the side.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

/// Bytes currently allocated.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Resets the peak to the current live size and returns it.
pub fn reset_peak() -> usize {
    let now = LIVE.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// Peak bytes since the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// A small deterministic PRNG (xorshift64*), so runs are comparable.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Size of a generated cluster.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Namespaces (the first two are `kube-system` and `monitoring`).
    pub namespaces: usize,
    /// Pods per namespace.
    pub pods_per_namespace: usize,
    /// Nodes.
    pub nodes: usize,
}

impl Scale {
    /// The size the targets are stated for: 1,000 namespaces, 50,000 pods,
    /// 10,000 policies.
    pub const TARGET: Scale = Scale { namespaces: 1000, pods_per_namespace: 50, nodes: 500 };
    /// A quick size for smoke runs.
    pub const SMALL: Scale = Scale { namespaces: 40, pods_per_namespace: 20, nodes: 10 };
}

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// Name of namespace `i`.
pub fn ns_name(i: usize) -> String {
    match i {
        0 => "kube-system".into(),
        1 => "monitoring".into(),
        i => format!("ns-{i:04}"),
    }
}

const ROLES: [&str; 5] = ["web", "api", "db", "cache", "worker"];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];

/// Pod `j` of namespace `i`.
pub fn pod(scale: Scale, i: usize, j: usize, version: usize) -> Pod {
    let idx = i * scale.pods_per_namespace + j;
    let app = j % 10;
    let role = ROLES[app / 2];
    let mut l = labels(&[
        ("app", format!("app{app}")),
        ("version", format!("v{version}")),
        ("role", role.to_string()),
        ("tier", if app < 4 { "frontend" } else { "backend" }.to_string()),
    ]);
    if i == 0 {
        l = labels(&[("k8s-app", "kube-dns".into())]);
    } else if i == 1 {
        l = labels(&[("app", "prometheus".into())]);
    } else if i.is_multiple_of(10) && app == 9 {
        l.insert("app".into(), "gateway".into());
    }
    let ip = Ipv4Addr::from(0x0A00_0000u32 + idx as u32 + 1);
    Pod {
        key: ObjectKey::new(ns_name(i), format!("pod-{j}")),
        labels: l,
        ips: vec![IpAddr::V4(ip)],
        node: Some(format!("node-{}", idx % scale.nodes)),
        service_account: format!("app{app}"),
        named_ports: vec![
            NamedPort { name: "grpc".into(), protocol: Protocol::Tcp, port: 9000 },
            NamedPort { name: "http".into(), protocol: Protocol::Tcp, port: 8080 },
            NamedPort { name: "metrics".into(), protocol: Protocol::Tcp, port: 9090 },
        ],
        host_network: false,
    }
}

fn sel(pairs: &[(&str, &str)]) -> Selector {
    Selector::from_labels(pairs.iter().map(|(k, v)| (*k, *v)))
}

fn tcp(start: u16, end: u16) -> PortRule {
    PortRule { protocol: Protocol::Tcp, port: PortMatch::Range { start, end } }
}

fn named(n: &str) -> PortRule {
    PortRule { protocol: Protocol::Tcp, port: PortMatch::Named(n.into()) }
}

fn pods_peer(namespaces: NamespaceSelection, pods: Selector) -> Peer {
    Peer::Pods { namespaces, pods }
}

/// The ten policies of namespace `i` (a realistic mix: default deny, DNS,
/// monitoring by named port, same-namespace port range, per-app rules with
/// namespace-level cross-namespace peers, `ipBlock` with `except`, and
/// `matchExpressions`).
pub fn policies(i: usize, revision: u16) -> Vec<NetworkPolicy> {
    let ns = ns_name(i);
    let key = |n: &str| ObjectKey::new(ns.clone(), n);
    let own = NamespaceSelection::Own;
    let by_name = |n: &str| NamespaceSelection::Matching(sel(&[("kubernetes.io/metadata.name", n)]));
    let mut out = vec![
        NetworkPolicy {
            key: key("default-deny"),
            pod_selector: Selector::everything(),
            ingress: Some(vec![]),
            egress: Some(vec![]),
        },
        NetworkPolicy {
            key: key("allow-dns"),
            pod_selector: Selector::everything(),
            ingress: None,
            egress: Some(vec![Rule {
                peers: Some(vec![pods_peer(by_name("kube-system"), sel(&[("k8s-app", "kube-dns")]))]),
                ports: Some(vec![
                    PortRule { protocol: Protocol::Udp, port: PortMatch::Range { start: 53, end: 53 } },
                    tcp(53, 53),
                ]),
            }]),
        },
        NetworkPolicy {
            key: key("allow-monitoring"),
            pod_selector: Selector::everything(),
            ingress: Some(vec![Rule {
                peers: Some(vec![pods_peer(by_name("monitoring"), Selector::everything())]),
                ports: Some(vec![named("metrics")]),
            }]),
            egress: None,
        },
        NetworkPolicy {
            key: key("allow-same-namespace"),
            pod_selector: Selector {
                match_labels: Labels::new(),
                match_expressions: vec![Requirement::In {
                    key: "tier".into(),
                    values: ["frontend".into(), "backend".into()].into(),
                }],
            },
            ingress: Some(vec![Rule {
                peers: Some(vec![pods_peer(own.clone(), Selector::everything())]),
                ports: Some(vec![tcp(8080, 8090 + revision)]),
            }]),
            egress: None,
        },
    ];
    for k in 0..5 {
        out.push(NetworkPolicy {
            key: key(&format!("app{k}")),
            pod_selector: sel(&[("app", &format!("app{k}"))]),
            ingress: Some(vec![Rule {
                peers: Some(vec![
                    pods_peer(own.clone(), sel(&[("app", &format!("app{}", k + 5))])),
                    pods_peer(
                        NamespaceSelection::Matching(sel(&[("team", &format!("t{}", i % 100))])),
                        Selector::everything(),
                    ),
                ]),
                ports: Some(vec![named("http"), tcp(9000, 9000)]),
            }]),
            egress: Some(vec![Rule {
                peers: Some(vec![pods_peer(own.clone(), sel(&[("app", &format!("app{}", k + 5))]))]),
                ports: Some(vec![tcp(5432, 5432), tcp(6379, 6379)]),
            }]),
        });
    }
    if i.is_multiple_of(2) {
        out.push(NetworkPolicy {
            key: key("egress-internet"),
            pod_selector: sel(&[("role", "web")]),
            ingress: None,
            egress: Some(vec![
                Rule {
                    peers: Some(vec![Peer::IpBlock(IpBlock {
                        cidr: "0.0.0.0/0".parse().unwrap_or_else(|_| unreachable!()),
                        except: ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
                            .iter()
                            .filter_map(|s| s.parse().ok())
                            .collect(),
                    })]),
                    ports: Some(vec![tcp(443, 443)]),
                },
                Rule {
                    peers: Some(vec![Peer::IpBlock(IpBlock {
                        cidr: format!("198.18.{}.0/24", i % 256).parse().unwrap_or_else(|_| unreachable!()),
                        except: vec![],
                    })]),
                    ports: Some(vec![tcp(8443, 8443)]),
                },
            ]),
        });
    } else {
        out.push(NetworkPolicy {
            key: key("gateway-from-prod"),
            pod_selector: sel(&[("app", "app2"), ("role", "api")]),
            ingress: Some(vec![Rule {
                peers: Some(vec![pods_peer(
                    NamespaceSelection::Matching(Selector {
                        match_labels: Labels::new(),
                        match_expressions: vec![Requirement::NotIn {
                            key: "env".into(),
                            values: ["dev".into()].into(),
                        }],
                    }),
                    sel(&[("app", "gateway")]),
                )]),
                ports: Some(vec![named("grpc")]),
            }]),
            egress: None,
        });
    }
    out
}

/// A namespace.
pub fn namespace(i: usize) -> Namespace {
    let name = ns_name(i);
    let mut l = labels(&[("team", format!("t{}", i % 100)), ("env", ENVS[i % 3].to_string())]);
    l.extend(Namespace::default_labels(&name));
    Namespace { name, labels: l }
}

/// Every object of a generated cluster: namespaces, nodes, pods, policies.
pub fn cluster(scale: Scale) -> Vec<Object> {
    let mut out = Vec::new();
    for i in 0..scale.namespaces {
        out.push(Object::Namespace(namespace(i)));
    }
    for n in 0..scale.nodes {
        let ip = Ipv4Addr::from(0xC0A8_0000u32 + n as u32 + 1);
        out.push(Object::Node(Node { name: format!("node-{n}"), addresses: vec![IpAddr::V4(ip)] }));
    }
    for i in 0..scale.namespaces {
        for j in 0..scale.pods_per_namespace {
            out.push(Object::Pod(pod(scale, i, j, 1 + j % 2)));
        }
    }
    for i in 0..scale.namespaces {
        out.extend(policies(i, 0).into_iter().map(Object::NetworkPolicy));
    }
    out
}
