//! Rust mirrors of the map layouts in `bpf/maps.h`, and their encoding from
//! `policy::compile` tables. Field names and order match the C structs
//! exactly; the BTF test (`tests/layout.rs`) checks sizes and offsets against
//! the built object. LPM trie keys are stored without their leading
//! `prefixlen`, which aya's `lpm_trie::Key` adds.

// `aya::Pod` is an unsafe marker trait: each impl below states why the type
// qualifies (repr(C), integer fields only, explicit padding, no implicit
// padding bytes).
#![allow(unsafe_code)]

use std::mem::{offset_of, size_of};
use std::net::IpAddr;

use policy::Direction;
use policy::compile::{CidrKey, EndpointId, EndpointInfo, IpInfo, PolicyKey, PolicyValue};

/// `struct zt_addr`: family + address (IPv4 in `addr[0]`), network order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtAddr {
    /// 4 or 6.
    pub family: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// Address bytes as the packet carries them.
    pub addr: [u32; 4],
}

/// `struct zt_ip_info`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtIpInfo {
    /// Local endpoint owning the address.
    pub endpoint: u32,
    /// Label identity.
    pub identity: u32,
    /// Namespace identity.
    pub ns_identity: u32,
    /// Per-address identity.
    pub addr_identity: u32,
    /// Node owning the address.
    pub node: u32,
}

/// `struct zt_endpoint`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtEndpoint {
    /// Endpoint number (policy and cidr keys).
    pub endpoint: u32,
    /// Node of the endpoint.
    pub node: u32,
    /// 1 when ingress is isolated.
    pub ingress_isolated: u8,
    /// 1 when egress is isolated.
    pub egress_isolated: u8,
    /// 1 when the pod's namespace is in policy audit mode.
    pub audit: u8,
    /// Zero.
    pub pad: u8,
}

/// `struct zt_port`: the bridge a pod's veth is a port of.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtPort {
    /// The bridge's own MAC address (steered frames are addressed to it).
    pub l3_mac: [u8; 6],
    /// Zero.
    pub pad: [u8; 2],
}

/// `struct zt_svc_key`: a Service frontend.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtSvcKey {
    /// The cluster IP.
    pub addr: ZtAddr,
    /// The Service port, network order.
    pub port: u16,
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    /// Zero.
    pub pad: u8,
}

/// `struct zt_svc_value`: where a frontend's backends are.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtSvcValue {
    /// The backend list's id.
    pub id: u32,
    /// Its length (0: connections are refused).
    pub count: u32,
}

/// `struct zt_backend_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtBackendKey {
    /// The list's id.
    pub id: u32,
    /// Position in it.
    pub index: u32,
}

/// `struct zt_backend`: a backend (or, in `zt_svc_rev`, a frontend).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtBackend {
    /// Address.
    pub addr: ZtAddr,
    /// Port, network order.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

/// `struct zt_rev_key` (written by the programs only).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtRevKey {
    /// The socket's cookie.
    pub cookie: u64,
    /// The backend.
    pub addr: ZtAddr,
    /// Its port, network order.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

/// `struct zt_svc_cidr_key` without `prefixlen`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtSvcCidrKey {
    /// 4 or 6 (matched exactly: the first 32 bits of the prefix).
    pub family: u32,
    /// The address, network order.
    pub addr: [u32; 4],
}

/// The trie key of a Service CIDR `network/prefix_len` (host bits clear):
/// (prefix length with the family, key).
pub fn svc_cidr_key(network: IpAddr, prefix_len: u8) -> (u32, ZtSvcCidrKey) {
    let a = addr(network);
    (32 + u32::from(prefix_len), ZtSvcCidrKey { family: u32::from(a.family), addr: a.addr })
}

/// The frontend key of a Service port.
pub fn svc_key(ip: IpAddr, port: u16, protocol: u8) -> ZtSvcKey {
    ZtSvcKey { addr: addr(ip), port: port.to_be(), protocol, pad: 0 }
}

/// A backend entry.
pub fn backend(a: std::net::SocketAddr) -> ZtBackend {
    ZtBackend { addr: addr(a.ip()), port: a.port().to_be(), pad: 0 }
}

/// `struct zt_cidr4_key` without `prefixlen`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtCidr4Key {
    /// Endpoint.
    pub endpoint: u32,
    /// 0 ingress, 1 egress.
    pub direction: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// Network-order IPv4 address.
    pub addr: u32,
}

/// `struct zt_cidr6_key` without `prefixlen`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtCidr6Key {
    /// Endpoint.
    pub endpoint: u32,
    /// 0 ingress, 1 egress.
    pub direction: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// Network-order IPv6 address.
    pub addr: [u32; 4],
}

/// `struct zt_policy_key` without `prefixlen`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtPolicyKey {
    /// Endpoint.
    pub endpoint: u32,
    /// Peer identity (0 = any).
    pub peer: u32,
    /// 0 ingress, 1 egress.
    pub direction: u8,
    /// IP protocol (0 = any, with `prefixlen` 72).
    pub protocol: u8,
    /// Destination port, network byte order.
    pub port: u16,
}

/// `struct zt_policy_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtPolicyValue {
    /// Rule number.
    pub rule: u32,
}

/// `struct zt_ct_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtCtKey {
    /// Endpoint.
    pub endpoint: u32,
    /// Direction the flow was first seen in at the endpoint.
    pub direction: u8,
    /// IP protocol.
    pub protocol: u8,
    /// 4 or 6.
    pub family: u8,
    /// Zero.
    pub pad: u8,
    /// Source address of the original direction.
    pub src: [u32; 4],
    /// Destination address of the original direction.
    pub dst: [u32; 4],
    /// Source port (network order).
    pub sport: u16,
    /// Destination port (network order).
    pub dport: u16,
}

/// `struct zt_leg_key`: the pod end of a node-local leg, as its socket
/// sees it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtLegKey {
    /// The pod's address.
    pub local: ZtAddr,
    /// The peer's (original) address.
    pub remote: ZtAddr,
    /// The pod's port (network order).
    pub lport: u16,
    /// The peer's port (network order).
    pub rport: u16,
}

/// `struct zt_local_cc`: a TCP congestion control name, NUL-padded; empty
/// for none.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtLocalCc {
    /// The name.
    pub name: [u8; 16],
}

/// `struct zt_ct_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtCtValue {
    /// Monotonic time of the last packet.
    pub last_seen_ns: u64,
    /// Policy epoch of the verdict.
    pub epoch: u32,
    /// Rule that allowed the flow.
    pub rule: u32,
}

/// `struct zt_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtConfig {
    /// Policy epoch; bumping it makes every tracked flow re-decided.
    pub epoch: u32,
    /// Non-zero: steer pod-to-pod TCP into the local proxy (fail closed).
    pub mesh: u32,
    /// Idle timeout of tracked TCP flows.
    pub tcp_idle_ns: u64,
    /// Idle timeout of other tracked flows.
    pub other_idle_ns: u64,
    /// Capture listener address (IPv4, network byte order).
    pub proxy_addr4: u32,
    /// Capture listener port (network byte order).
    pub proxy_port: u16,
    /// Zero.
    pub pad: u16,
    /// Mark set on steered packets (routed to the local stack).
    pub redirect_mark: u32,
    /// Non-zero: policy audit mode (denials are reported with
    /// [`REASON_AUDIT`] and let through).
    pub audit: u32,
}

/// `ZT_REASON_AUDIT`: a flow policy denies, let through in audit mode.
pub const REASON_AUDIT: u8 = 11;

/// `struct zt_event`, as read from the ring buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtEvent {
    /// Monotonic time.
    pub ts_ns: u64,
    /// Endpoint.
    pub endpoint: u32,
    /// Rule that allowed the flow (0 otherwise).
    pub rule: u32,
    /// Identity the allowing entry matched.
    pub peer_identity: u32,
    /// `enum zt_reason`.
    pub reason: u8,
    /// 0 ingress, 1 egress.
    pub direction: u8,
    /// IP protocol.
    pub protocol: u8,
    /// 4 or 6.
    pub family: u8,
    /// 1 when the packet passed.
    pub allowed: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// Source address.
    pub src: [u32; 4],
    /// Destination address.
    pub dst: [u32; 4],
    /// Source port (network order).
    pub sport: u16,
    /// Destination port (network order).
    pub dport: u16,
}

impl ZtEvent {
    /// Decodes an event from ring-buffer bytes (native endianness, the
    /// layout checked by the BTF test). `None` when the length is wrong.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != size_of::<Self>() {
            return None;
        }
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let addr_at = |o: usize| [u32_at(o), u32_at(o + 4), u32_at(o + 8), u32_at(o + 12)];
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[0..8]);
        Some(Self {
            ts_ns: u64::from_ne_bytes(ts),
            endpoint: u32_at(offset_of!(Self, endpoint)),
            rule: u32_at(offset_of!(Self, rule)),
            peer_identity: u32_at(offset_of!(Self, peer_identity)),
            reason: b[offset_of!(Self, reason)],
            direction: b[offset_of!(Self, direction)],
            protocol: b[offset_of!(Self, protocol)],
            family: b[offset_of!(Self, family)],
            allowed: b[offset_of!(Self, allowed)],
            pad: [0; 3],
            src: addr_at(offset_of!(Self, src)),
            dst: addr_at(offset_of!(Self, dst)),
            sport: u16::from_ne_bytes([b[offset_of!(Self, sport)], b[offset_of!(Self, sport) + 1]]),
            dport: u16::from_ne_bytes([b[offset_of!(Self, dport)], b[offset_of!(Self, dport) + 1]]),
        })
    }
}

/// Index of `zt_counters` whose `packets` counts verdict events lost to a
/// full `zt_events` ring (indices 0–3: direction * 2 + allowed).
pub const COUNTER_EVENTS_LOST: u32 = 4;

/// `struct zt_counter` (one per CPU).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ZtCounter {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

// SAFETY: every type is repr(C) with only integer fields and explicit
// padding arrays, so it has no implicit padding and every bit pattern is
// valid, which is what `Pod` requires.
unsafe impl aya::Pod for ZtAddr {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtIpInfo {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtEndpoint {}
// SAFETY: as above: `repr(C)`, byte fields only, no padding.
unsafe impl aya::Pod for ZtPort {}
// SAFETY: as above (24 bytes: a 20-byte address, then 2 + 1 + 1).
unsafe impl aya::Pod for ZtSvcKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtSvcValue {}
// SAFETY: as above (20 bytes of u32s).
unsafe impl aya::Pod for ZtSvcCidrKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtBackendKey {}
// SAFETY: as above (24 bytes: a 20-byte address, then 2 + 2).
unsafe impl aya::Pod for ZtBackend {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtCidr4Key {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtCidr6Key {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtPolicyKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtPolicyValue {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtCtKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtCtValue {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtLegKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtLocalCc {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for ZtCounter {}

/// Bits of a cidr key always matched exactly (endpoint, direction, pad).
pub const CIDR_FIXED_BITS: u32 = 64;
/// Bits of a policy key always matched exactly (endpoint, peer, direction).
pub const POLICY_FIXED_BITS: u32 = 72;

/// The layout of one C struct as its Rust mirror sees it: name, size, and
/// `(field, byte offset)` in order.
pub type Layout = (&'static str, usize, Vec<(&'static str, usize)>);

/// The layout of each mirror, with `prefixlen` at 0 for trie keys (compared
/// with the object's BTF by the layout test).
pub fn layouts() -> Vec<Layout> {
    macro_rules! fields {
        ($t:ty, $shift:expr, $($f:ident),*) => {{
            let mut v = Vec::new();
            if $shift > 0 { v.push(("prefixlen", 0)); }
            $( v.push((stringify!($f), offset_of!($t, $f) + $shift)); )*
            v
        }};
    }
    vec![
        ("zt_addr", size_of::<ZtAddr>(), fields!(ZtAddr, 0, family, pad, addr)),
        (
            "zt_ip_info",
            size_of::<ZtIpInfo>(),
            fields!(ZtIpInfo, 0, endpoint, identity, ns_identity, addr_identity, node),
        ),
        (
            "zt_endpoint",
            size_of::<ZtEndpoint>(),
            fields!(ZtEndpoint, 0, endpoint, node, ingress_isolated, egress_isolated, audit, pad),
        ),
        ("zt_port", size_of::<ZtPort>(), fields!(ZtPort, 0, l3_mac, pad)),
        ("zt_svc_key", size_of::<ZtSvcKey>(), fields!(ZtSvcKey, 0, addr, port, protocol, pad)),
        ("zt_svc_value", size_of::<ZtSvcValue>(), fields!(ZtSvcValue, 0, id, count)),
        ("zt_svc_cidr_key", 4 + size_of::<ZtSvcCidrKey>(), fields!(ZtSvcCidrKey, 4, family, addr)),
        ("zt_backend_key", size_of::<ZtBackendKey>(), fields!(ZtBackendKey, 0, id, index)),
        ("zt_backend", size_of::<ZtBackend>(), fields!(ZtBackend, 0, addr, port, pad)),
        ("zt_rev_key", size_of::<ZtRevKey>(), fields!(ZtRevKey, 0, cookie, addr, port, pad)),
        ("zt_cidr4_key", 4 + size_of::<ZtCidr4Key>(), fields!(ZtCidr4Key, 4, endpoint, direction, pad, addr)),
        ("zt_cidr6_key", 4 + size_of::<ZtCidr6Key>(), fields!(ZtCidr6Key, 4, endpoint, direction, pad, addr)),
        (
            "zt_policy_key",
            4 + size_of::<ZtPolicyKey>(),
            fields!(ZtPolicyKey, 4, endpoint, peer, direction, protocol, port),
        ),
        ("zt_policy_value", size_of::<ZtPolicyValue>(), fields!(ZtPolicyValue, 0, rule)),
        ("zt_leg_key", size_of::<ZtLegKey>(), fields!(ZtLegKey, 0, local, remote, lport, rport)),
        ("zt_local_cc", size_of::<ZtLocalCc>(), fields!(ZtLocalCc, 0, name)),
        (
            "zt_config",
            size_of::<ZtConfig>(),
            fields!(
                ZtConfig,
                0,
                epoch,
                mesh,
                tcp_idle_ns,
                other_idle_ns,
                proxy_addr4,
                proxy_port,
                pad,
                redirect_mark,
                audit
            ),
        ),
    ]
}

/// The wire number of a direction.
pub fn direction(d: Direction) -> u8 {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// The ipcache key of an address.
pub fn addr(ip: IpAddr) -> ZtAddr {
    let mut a = ZtAddr::default();
    match ip {
        IpAddr::V4(v4) => {
            a.family = 4;
            a.addr[0] = u32::from_ne_bytes(v4.octets());
        }
        IpAddr::V6(v6) => {
            a.family = 6;
            for (i, chunk) in v6.octets().chunks_exact(4).enumerate() {
                a.addr[i] = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
        }
    }
    a
}

/// The ipcache value.
pub fn ip_info(i: &IpInfo) -> ZtIpInfo {
    ZtIpInfo {
        endpoint: i.endpoint,
        identity: i.identity,
        ns_identity: i.namespace,
        addr_identity: i.address,
        node: i.node,
    }
}

/// The endpoint map value of an endpoint.
pub fn endpoint(id: EndpointId, e: &EndpointInfo) -> ZtEndpoint {
    ZtEndpoint {
        endpoint: id,
        node: e.node,
        ingress_isolated: u8::from(e.ingress_isolated),
        egress_isolated: u8::from(e.egress_isolated),
        audit: u8::from(e.audit),
        pad: 0,
    }
}

/// A cidr trie key with its prefix length: IPv4 keys go to `zt_cidr4`,
/// IPv6 keys to `zt_cidr6`.
pub enum CidrEntryKey {
    /// For `zt_cidr4`.
    V4(u32, ZtCidr4Key),
    /// For `zt_cidr6`.
    V6(u32, ZtCidr6Key),
}

/// Encodes a cidr trie key.
pub fn cidr_key(k: &CidrKey) -> CidrEntryKey {
    let a = addr(k.prefix.network());
    let plen = CIDR_FIXED_BITS + u32::from(k.prefix.prefix_len());
    let dir = direction(k.direction);
    if k.prefix.network().is_ipv4() {
        CidrEntryKey::V4(plen, ZtCidr4Key { endpoint: k.endpoint, direction: dir, pad: [0; 3], addr: a.addr[0] })
    } else {
        CidrEntryKey::V6(plen, ZtCidr6Key { endpoint: k.endpoint, direction: dir, pad: [0; 3], addr: a.addr })
    }
}

/// Encodes a policy trie key with its prefix length.
pub fn policy_key(k: &PolicyKey) -> (u32, ZtPolicyKey) {
    let plen = if k.protocol == 0 { POLICY_FIXED_BITS } else { POLICY_FIXED_BITS + 8 + u32::from(k.port.len) };
    let key = ZtPolicyKey {
        endpoint: k.endpoint,
        peer: k.peer,
        direction: direction(k.direction),
        protocol: k.protocol,
        port: k.port.port.to_be(),
    };
    (plen, key)
}

/// Encodes a policy trie value.
pub fn policy_value(v: &PolicyValue) -> ZtPolicyValue {
    ZtPolicyValue { rule: v.rule }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::compile::PortPrefix;

    #[test]
    fn addresses_keep_packet_byte_order() {
        let a = addr("10.1.2.3".parse().unwrap());
        assert_eq!(a.family, 4);
        assert_eq!(a.addr[0].to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(&a.addr[1..], &[0, 0, 0]);
        let a = addr("fd00::1".parse().unwrap());
        assert_eq!(a.addr[0].to_ne_bytes(), [0xfd, 0, 0, 0]);
        assert_eq!(a.addr[3].to_ne_bytes(), [0, 0, 0, 1]);
    }

    #[test]
    fn policy_prefix_lengths() {
        let key = |protocol, port| PolicyKey { endpoint: 1, direction: Direction::Egress, peer: 7, protocol, port };
        assert_eq!(policy_key(&key(0, PortPrefix::ANY)).0, 72);
        assert_eq!(policy_key(&key(6, PortPrefix::ANY)).0, 80);
        let (plen, k) = policy_key(&key(6, PortPrefix::single(443)));
        assert_eq!(plen, 96);
        assert_eq!(k.port.to_ne_bytes(), 443u16.to_be_bytes());
    }
}
