//! # ztunnel-ebpf
//!
//! The kernel half of the datapath: TC classifiers for the host side of
//! every pod veth (`bpf/datapath.c`), built by `build.rs` with clang and
//! embedded here, and the one definition of the maps they read
//! (`bpf/maps.h`) with its Rust mirrors ([`maps`]). The programs only look
//! things up; every decision is precompiled by `policy::compile`.

pub mod loader;
pub mod maps;
pub mod services;

/// The compiled BPF object (ELF), 8-byte aligned for the loader.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"));

/// Program names in the object.
pub mod programs {
    /// Packets a pod sends: TC ingress of its host-side veth.
    pub const FROM_POD: &str = "zt_from_pod";
    /// Packets delivered to a pod: TC egress of its host-side veth.
    pub const TO_POD: &str = "zt_to_pod";
    /// Steered frames a bridge hands up: TC ingress of a bridge whose ports
    /// are pods' veths.
    pub const BRIDGE_IN: &str = "zt_bridge_in";
    /// Service translation at the socket (cgroup programs).
    pub const SOCKET: [&str; 8] = [
        "zt_connect4",
        "zt_sendmsg4",
        "zt_recvmsg4",
        "zt_getpeername4",
        "zt_connect6",
        "zt_sendmsg6",
        "zt_recvmsg6",
        "zt_getpeername6",
    ];
    /// Node-local legs' congestion control (cgroup `sock_ops`).
    pub const SOCK_OPS: &str = "zt_sockops";
}

/// Map names in the object.
pub mod map_names {
    /// Address → identities.
    pub const IPCACHE: &str = "zt_ipcache";
    /// Interface index → endpoint.
    pub const ENDPOINTS: &str = "zt_endpoints";
    /// Interface index → the bridge of a pod's veth (bridge CNIs only).
    pub const PORTS: &str = "zt_ports";
    /// Service frontends.
    pub const SVC: &str = "zt_svc";
    /// Service backend lists.
    pub const SVC_BACKENDS: &str = "zt_svc_backends";
    /// Translated sockets' frontends, for replies.
    pub const SVC_REV: &str = "zt_svc_rev";
    /// The cluster's Service CIDRs.
    pub const SVC_CIDR: &str = "zt_svc_cidr";
    /// IPv4 cidr trie.
    pub const CIDR4: &str = "zt_cidr4";
    /// IPv6 cidr trie.
    pub const CIDR6: &str = "zt_cidr6";
    /// Policy trie.
    pub const POLICY: &str = "zt_policy";
    /// Connection tracking.
    pub const CT: &str = "zt_ct";
    /// Global settings (policy epoch, timeouts).
    pub const CONFIG: &str = "zt_config";
    /// Verdict events.
    pub const EVENTS: &str = "zt_events";
    /// Per-CPU packet/byte counters.
    pub const COUNTERS: &str = "zt_counters";
    /// Pod ends of node-local legs, until their sockets are established.
    pub const LEGS: &str = "zt_legs";
    /// The congestion control for those sockets.
    pub const LOCAL_CC: &str = "zt_local_cc";
    /// Every map (pinned by these names).
    pub const ALL: [&str; 15] = [
        IPCACHE,
        ENDPOINTS,
        PORTS,
        SVC,
        SVC_BACKENDS,
        SVC_REV,
        CIDR4,
        CIDR6,
        POLICY,
        CT,
        CONFIG,
        EVENTS,
        COUNTERS,
        LEGS,
        LOCAL_CC,
    ];
}
