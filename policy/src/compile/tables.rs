//! The dataplane tables the compiler produces, their diffs, and the lookup
//! the datapath performs on them (so tests can check the tables against the
//! reference evaluator exactly as the kernel will read them).
//!
//! # Tables
//! - **ipcache** (hash): pod or node address → [`IpInfo`] (its identities).
//! - **cidr** (LPM trie, per endpoint and direction): every prefix named by
//!   an `ipBlock` (block or exception) of the policies selecting the endpoint
//!   for that direction → that prefix's identity. The most specific match of
//!   an address names the most specific of those prefixes containing it, and
//!   a block allows exactly the prefixes inside it and outside its
//!   exceptions: `except` is exact, and one endpoint's blocks never inflate
//!   another endpoint's tables.
//! - **endpoints** (hash): local endpoint → [`EndpointInfo`] (node, isolation).
//! - **policy** (LPM trie): [`PolicyKey`] → [`PolicyValue`]. The key is
//!   `endpoint | direction | peer identity | protocol | port`, matched with a
//!   prefix length: the first 72 bits are always exact; a protocol of 0 is the
//!   "any protocol" wildcard (prefix stops before the protocol); the port is
//!   matched on its first [`PortPrefix::len`] bits, so a range is a few
//!   entries. Peer identity [`ANY`] is the "any peer" wildcard.
//!
//! # Lookup precedence (the datapath, see [`Tables::decide`])
//! 1. unknown endpoint → drop (fail closed);
//! 2. peer address is the endpoint's own → allow; peer is the endpoint's
//!    node → allow;
//! 3. direction not isolated → allow;
//! 4. look up the policy trie with each identity the peer has, in order:
//!    label identity, address identity, namespace identity, [`ALL_PODS`]
//!    (pods only), the CIDR identity from the endpoint's cidr trie, [`ANY`];
//!    the first hit allows. Entries only
//!    allow, so the order changes which rule is reported, never the verdict.
//! 5. otherwise drop.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::ports::PortPrefix;
use crate::labels::Labels;
use crate::model::{Direction, NamedPort, ObjectKey, Protocol};

/// A numeric security identity.
pub type Identity = u32;
/// A local endpoint (pod) number; 0 means "none".
pub type EndpointId = u32;
/// A node number; 0 means "not a node address".
pub type NodeId = u32;
/// A rule number (names a policy rule in flow logs).
pub type RuleId = u32;

/// Wildcard peer: matches every address, external ones included.
pub const ANY: Identity = 0;
/// Every pod of every namespace (`namespaceSelector: {}`), never an
/// external address.
pub const ALL_PODS: Identity = 1;
/// First identity the compiler allocates.
pub const FIRST_ALLOCATED: Identity = 256;

/// What an identity stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityInfo {
    /// Pods of one namespace with these labels and named ports. Named ports
    /// are part of the identity so an egress rule on a named port resolves
    /// the same for every member.
    Pods {
        /// Namespace.
        namespace: String,
        /// Pod labels.
        labels: Labels,
        /// Named container ports.
        named_ports: Vec<NamedPort>,
    },
    /// Every pod of a namespace.
    Namespace(String),
    /// The most specific `ipBlock` prefix containing an address.
    Cidr(IpNet),
    /// One pod address (used only for egress rules that combine `ipBlock`
    /// with a named port).
    Address(IpAddr),
}

/// The ipcache value: everything the datapath needs to know about a peer
/// address. Zero fields mean "not applicable".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
pub struct IpInfo {
    /// The local endpoint that owns the address (self-traffic check).
    pub endpoint: EndpointId,
    /// Label identity of the owning pod.
    pub identity: Identity,
    /// Namespace identity of the owning pod.
    pub namespace: Identity,
    /// Per-address identity (pod addresses).
    pub address: Identity,
    /// Node owning the address.
    pub node: NodeId,
}

/// The endpoint map value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct EndpointInfo {
    /// The pod.
    pub pod: ObjectKey,
    /// The node the pod runs on (0 if unscheduled).
    pub node: NodeId,
    /// Some policy selects the pod for ingress.
    pub ingress_isolated: bool,
    /// Some policy selects the pod for egress.
    pub egress_isolated: bool,
    /// Its namespace is in policy audit mode
    /// ([`crate::cluster::POLICY_AUDIT_LABEL`]): denials of its own
    /// policies are reported, not enforced.
    pub audit: bool,
}

impl EndpointInfo {
    /// Isolation of one direction.
    pub fn isolated(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => self.ingress_isolated,
            Direction::Egress => self.egress_isolated,
        }
    }
}

/// A cidr trie key: the endpoint and direction are matched exactly, the
/// address on the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct CidrKey {
    /// The local endpoint.
    pub endpoint: EndpointId,
    /// Direction of the rules the prefix comes from.
    pub direction: Direction,
    /// The prefix.
    pub prefix: IpNet,
}

/// A policy trie key (see the module docs for the matching rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PolicyKey {
    /// The local endpoint whose policy this is.
    pub endpoint: EndpointId,
    /// Direction, from the endpoint's point of view.
    pub direction: Direction,
    /// Peer identity ([`ANY`] for every peer).
    pub peer: Identity,
    /// IP protocol number; 0 = any protocol (then `port` is [`PortPrefix::ANY`]).
    pub protocol: u8,
    /// Destination port block.
    pub port: PortPrefix,
}

/// The policy trie value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PolicyValue {
    /// The rule reported for flows this entry allows.
    pub rule: RuleId,
}

/// What a rule number names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RuleInfo {
    /// The policy.
    pub policy: ObjectKey,
    /// `spec.ingress` or `spec.egress`.
    pub direction: Direction,
    /// Index of the rule in that list.
    pub index: usize,
}

/// One change to one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Change<K, V> {
    /// Insert or overwrite.
    Upsert(K, V),
    /// Delete.
    Remove(K),
}

/// A batch of table changes. Applying the diffs of a sequence of updates in
/// order gives the tables of the final state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableDiff {
    /// ipcache changes.
    pub ipcache: Vec<Change<IpAddr, IpInfo>>,
    /// cidr trie changes.
    pub cidr: Vec<Change<CidrKey, Identity>>,
    /// Endpoint map changes.
    pub endpoints: Vec<Change<EndpointId, EndpointInfo>>,
    /// Policy trie changes.
    pub policy: Vec<Change<PolicyKey, PolicyValue>>,
    /// Identity descriptions (userspace, for flow logs).
    pub identities: Vec<Change<Identity, IdentityInfo>>,
    /// Rule descriptions (userspace, for flow logs).
    pub rules: Vec<Change<RuleId, RuleInfo>>,
    /// Node names (userspace).
    pub nodes: Vec<Change<NodeId, String>>,
}

impl TableDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.ipcache.is_empty()
            && self.cidr.is_empty()
            && self.endpoints.is_empty()
            && self.policy.is_empty()
            && self.identities.is_empty()
            && self.rules.is_empty()
            && self.nodes.is_empty()
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ipcache.len()
            + self.cidr.len()
            + self.endpoints.len()
            + self.policy.len()
            + self.identities.len()
            + self.rules.len()
            + self.nodes.len()
    }
}

/// Why the datapath allowed a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Decision {
    /// Self traffic.
    SelfTraffic,
    /// Traffic with the endpoint's own node.
    NodeTraffic,
    /// The direction is not isolated.
    NotIsolated,
    /// An entry allowed it.
    Allowed(RuleId),
    /// Dropped: isolated and no entry.
    Denied,
    /// Dropped: the endpoint is unknown.
    UnknownEndpoint,
}

impl Decision {
    /// Whether the packet passes.
    pub fn allowed(self) -> bool {
        !matches!(self, Decision::Denied | Decision::UnknownEndpoint)
    }
}

/// The full set of tables (what the kernel maps hold, plus the userspace
/// descriptions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tables {
    /// ipcache.
    pub ipcache: BTreeMap<IpAddr, IpInfo>,
    /// cidr trie.
    pub cidr: BTreeMap<CidrKey, Identity>,
    /// Endpoint map.
    pub endpoints: BTreeMap<EndpointId, EndpointInfo>,
    /// Policy trie.
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    /// Identity descriptions.
    pub identities: BTreeMap<Identity, IdentityInfo>,
    /// Rule descriptions.
    pub rules: BTreeMap<RuleId, RuleInfo>,
    /// Node names.
    pub nodes: BTreeMap<NodeId, String>,
}

fn apply_changes<K: Ord + Clone, V: Clone>(map: &mut BTreeMap<K, V>, changes: &[Change<K, V>]) {
    for c in changes {
        match c {
            Change::Upsert(k, v) => {
                map.insert(k.clone(), v.clone());
            }
            Change::Remove(k) => {
                map.remove(k);
            }
        }
    }
}

impl Tables {
    /// Applies a diff.
    pub fn apply(&mut self, diff: &TableDiff) {
        apply_changes(&mut self.ipcache, &diff.ipcache);
        apply_changes(&mut self.cidr, &diff.cidr);
        apply_changes(&mut self.endpoints, &diff.endpoints);
        apply_changes(&mut self.policy, &diff.policy);
        apply_changes(&mut self.identities, &diff.identities);
        apply_changes(&mut self.rules, &diff.rules);
        apply_changes(&mut self.nodes, &diff.nodes);
    }

    /// The ipcache entry of an address; all zeros for an address that is
    /// neither a pod's nor a node's.
    pub fn lookup_ip(&self, ip: IpAddr) -> IpInfo {
        self.ipcache.get(&ip).copied().unwrap_or_default()
    }

    /// Longest-prefix match in an endpoint's cidr trie: the identity of the
    /// most specific `ipBlock` prefix containing `ip`, or 0.
    pub fn lookup_cidr(&self, endpoint: EndpointId, direction: Direction, ip: IpAddr) -> Identity {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        for len in (0..=max).rev() {
            if let Ok(net) = IpNet::new(ip, len) {
                let key = CidrKey { endpoint, direction, prefix: net.trunc() };
                if let Some(id) = self.cidr.get(&key) {
                    return *id;
                }
            }
        }
        0
    }

    /// Longest-prefix match in the policy trie for one peer identity.
    pub fn lookup_policy(
        &self,
        endpoint: EndpointId,
        direction: Direction,
        peer: Identity,
        protocol: u8,
        port: u16,
    ) -> Option<PolicyValue> {
        let key = |protocol, port| PolicyKey { endpoint, direction, peer, protocol, port };
        if protocol != 0 {
            for len in (0..=16u8).rev() {
                let mask = if len == 0 { 0 } else { u16::MAX << (16 - u32::from(len)) };
                if let Some(v) = self.policy.get(&key(protocol, PortPrefix { port: port & mask, len })) {
                    return Some(*v);
                }
            }
        }
        self.policy.get(&key(0, PortPrefix::ANY)).copied()
    }

    /// The datapath's decision for the first packet of a flow between local
    /// endpoint `endpoint` and `peer`, in `direction` (egress: the endpoint
    /// sends to `peer` on `port`; ingress: `peer` sends to the endpoint on
    /// `port`). Ports are ignored for protocols without ports.
    pub fn decide(
        &self,
        endpoint: EndpointId,
        direction: Direction,
        peer: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Decision {
        let Some(ep) = self.endpoints.get(&endpoint) else {
            return Decision::UnknownEndpoint;
        };
        let info = self.lookup_ip(peer);
        if info.endpoint != 0 && info.endpoint == endpoint {
            return Decision::SelfTraffic;
        }
        if info.node != 0 && info.node == ep.node {
            return Decision::NodeTraffic;
        }
        if !ep.isolated(direction) {
            return Decision::NotIsolated;
        }
        let port = if protocol.has_ports() { port } else { 0 };
        let cidr = self.lookup_cidr(endpoint, direction, peer);
        let is_pod = info.identity != 0;
        let candidates = [
            (info.identity, is_pod),
            (info.address, info.address != 0),
            (info.namespace, info.namespace != 0),
            (ALL_PODS, is_pod),
            (cidr, cidr != 0),
            (ANY, true),
        ];
        for (id, present) in candidates {
            if present && let Some(v) = self.lookup_policy(endpoint, direction, id, protocol.number(), port) {
                return Decision::Allowed(v.rule);
            }
        }
        Decision::Denied
    }

    /// The endpoint number of a pod, if it is a local endpoint.
    pub fn endpoint_of(&self, pod: &ObjectKey) -> Option<EndpointId> {
        self.endpoints.iter().find(|(_, e)| &e.pod == pod).map(|(id, _)| *id)
    }

    /// The tables with every number replaced by what it names, for comparing
    /// two compilations whose numbering differs (numbers depend on the order
    /// of events; meaning must not).
    pub fn canonical(&self) -> CanonicalTables {
        let id = |i: Identity| -> String {
            match i {
                ANY => "any".into(),
                ALL_PODS => "all-pods".into(),
                i => self.identities.get(&i).map_or_else(|| format!("dangling-identity-{i}"), |d| format!("{d:?}")),
            }
        };
        let ep = |e: EndpointId| -> String {
            match e {
                0 => "-".into(),
                e => self.endpoints.get(&e).map_or_else(|| format!("dangling-endpoint-{e}"), |x| x.pod.to_string()),
            }
        };
        let node = |n: NodeId| -> String {
            match n {
                0 => "-".into(),
                n => self.nodes.get(&n).cloned().unwrap_or_else(|| format!("dangling-node-{n}")),
            }
        };
        let opt = |i: Identity| if i == 0 { "-".to_string() } else { id(i) };
        CanonicalTables {
            ipcache: self
                .ipcache
                .iter()
                .map(|(k, v)| {
                    let v = [ep(v.endpoint), opt(v.identity), opt(v.namespace), opt(v.address), node(v.node)];
                    (k.to_string(), v.join(" | "))
                })
                .collect(),
            cidr: self
                .cidr
                .iter()
                .map(|(k, v)| ((ep(k.endpoint), k.direction, k.prefix.to_string()), id(*v)))
                .collect(),
            endpoints: self
                .endpoints
                .values()
                .map(|e| (e.pod.to_string(), (node(e.node), e.ingress_isolated, e.egress_isolated, e.audit)))
                .collect(),
            policy: self
                .policy
                .iter()
                .map(|(k, v)| {
                    let rule = self.rules.get(&v.rule).map_or_else(
                        || format!("dangling-rule-{}", v.rule),
                        |r| format!("{}/{}[{}]", r.policy, r.direction, r.index),
                    );
                    ((ep(k.endpoint), k.direction, id(k.peer), k.protocol, k.port), rule)
                })
                .collect(),
        }
    }
}

/// [`Tables`] with numbers replaced by names (see [`Tables::canonical`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalTables {
    /// address → "endpoint | identity | namespace | address | node".
    pub ipcache: BTreeMap<String, String>,
    /// (endpoint, direction, prefix) → identity.
    pub cidr: BTreeMap<(String, Direction, String), String>,
    /// pod → (node, ingress isolated, egress isolated, audit).
    pub endpoints: BTreeMap<String, (String, bool, bool, bool)>,
    /// (endpoint, direction, peer, protocol, port) → rule.
    pub policy: BTreeMap<(String, Direction, String, u8, PortPrefix), String>,
}
