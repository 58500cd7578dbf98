//! The reference evaluator: the plain reading of the NetworkPolicy API, used
//! as the oracle for the compiled dataplane tables, the CLI and the tests.
//!
//! Semantics (networking.k8s.io/v1):
//! - a pod is isolated for a direction iff some policy in its namespace
//!   selects it and has that policy type; a non-isolated direction allows;
//! - an isolated direction allows a packet iff some rule of some selecting
//!   policy matches it (policies are a union; there is no order and no deny);
//! - a packet needs the source's egress and the destination's ingress;
//! - a pod can always reach itself, and a pod and its own node can always
//!   reach each other;
//! - replies of an allowed connection are allowed (see [`evaluate_reply`]);
//!   the dataplane implements that with connection tracking.
//!
//! Host-network pods and addresses outside the cluster are not subject to
//! policy; as peers they are matched only by `ipBlock` (and rules with no
//! peers).

use std::net::IpAddr;

use serde::Serialize;

use crate::cluster::{AddressOwner, Cluster};
use crate::labels::Labels;
use crate::model::{Direction, NamespaceSelection, NetworkPolicy, ObjectKey, Peer, Pod, PortMatch, Protocol, Rule};

/// One end of a flow, as given to the evaluator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A pod, by key (its first address of the flow's family is used).
    Pod(ObjectKey),
    /// An address: resolved to a pod or node if one owns it.
    Ip(IpAddr),
}

/// A flow endpoint resolved against the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Party<'a> {
    /// The address, if known (a pending pod has none).
    pub ip: Option<IpAddr>,
    /// The pod, if the address is a (non-host-network) pod's.
    pub pod: Option<&'a Pod>,
    /// The node, if the address is a node's.
    pub node: Option<&'a str>,
}

impl<'a> Party<'a> {
    /// Resolves an address.
    pub fn from_ip(cluster: &'a Cluster, ip: IpAddr) -> Self {
        match cluster.owner(ip) {
            AddressOwner::Pod(p) => Party { ip: Some(ip), pod: Some(p), node: None },
            AddressOwner::Node(n) => Party { ip: Some(ip), pod: None, node: Some(n) },
            AddressOwner::External => Party { ip: Some(ip), pod: None, node: None },
        }
    }

    /// A pod with one of its addresses (or none).
    pub fn from_pod(pod: &'a Pod, ip: Option<IpAddr>) -> Self {
        if pod.host_network {
            return Party { ip, pod: None, node: pod.node.as_deref() };
        }
        Party { ip, pod: Some(pod), node: None }
    }
}

/// Why a direction allowed a packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Allow {
    /// The endpoint on this side is not subject to NetworkPolicy (external
    /// address, node, host-network pod).
    NotSubject,
    /// No policy selects the pod for this direction.
    NotIsolated,
    /// The packet stays within one pod.
    SelfTraffic,
    /// The packet is between a pod and its own node.
    NodeTraffic,
    /// A rule allowed it.
    Rule {
        /// The policy.
        policy: ObjectKey,
        /// Index of the rule in `spec.ingress` or `spec.egress`.
        rule: usize,
    },
}

/// The decision of one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SideVerdict {
    /// Allowed, and why.
    Allowed(Allow),
    /// Denied: the pod is isolated by these policies and none of their rules
    /// matches.
    Denied {
        /// Policies selecting the pod for this direction.
        isolated_by: Vec<ObjectKey>,
    },
}

impl SideVerdict {
    /// Whether this direction allows.
    pub fn allowed(&self) -> bool {
        matches!(self, SideVerdict::Allowed(_))
    }
}

/// The verdict on a packet opening a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The source's egress decision.
    pub egress: SideVerdict,
    /// The destination's ingress decision.
    pub ingress: SideVerdict,
}

impl Verdict {
    /// Whether the packet may pass: both directions allow.
    pub fn allowed(&self) -> bool {
        self.egress.allowed() && self.ingress.allowed()
    }
}

/// Errors of the convenience entry point [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The named pod does not exist.
    #[error("pod {0} not found")]
    NoSuchPod(ObjectKey),
    /// The two ends have no address of a common family.
    #[error("{from} and {to} have no addresses of the same IP family")]
    NoCommonFamily {
        /// Source.
        from: String,
        /// Destination.
        to: String,
    },
}

fn describe(e: &Endpoint) -> String {
    match e {
        Endpoint::Pod(k) => k.to_string(),
        Endpoint::Ip(ip) => ip.to_string(),
    }
}

/// Evaluates a connection from `from` to `to` on `port`/`protocol`. Pods are
/// given addresses of a common family (IPv4 first); a pod without any address
/// is evaluated by its labels alone (no `ipBlock` can match it).
pub fn evaluate(
    cluster: &Cluster,
    from: &Endpoint,
    to: &Endpoint,
    port: u16,
    protocol: Protocol,
) -> Result<Verdict, EvalError> {
    let pod_of = |e: &Endpoint| -> Result<Option<&Pod>, EvalError> {
        match e {
            Endpoint::Pod(k) => cluster.pod(k).map(Some).ok_or_else(|| EvalError::NoSuchPod(k.clone())),
            Endpoint::Ip(_) => Ok(None),
        }
    };
    let (fp, tp) = (pod_of(from)?, pod_of(to)?);
    fn addrs<'e>(e: &'e Endpoint, p: Option<&'e Pod>) -> &'e [IpAddr] {
        match (e, p) {
            (Endpoint::Ip(ip), _) => std::slice::from_ref(ip),
            (_, Some(p)) => &p.ips,
            _ => &[],
        }
    }
    let (fa, ta) = (addrs(from, fp), addrs(to, tp));
    let pair = if fa.is_empty() || ta.is_empty() {
        (fa.first().copied(), ta.first().copied())
    } else {
        let mut found = None;
        'outer: for want_v4 in [true, false] {
            for f in fa.iter().filter(|a| a.is_ipv4() == want_v4) {
                if let Some(t) = ta.iter().find(|a| a.is_ipv4() == want_v4) {
                    found = Some((Some(*f), Some(*t)));
                    break 'outer;
                }
            }
        }
        found.ok_or_else(|| EvalError::NoCommonFamily { from: describe(from), to: describe(to) })?
    };
    let (src, dst) = (party(cluster, fp, pair.0), party(cluster, tp, pair.1));
    Ok(evaluate_parties(cluster, src, dst, port, protocol))
}

fn party<'a>(cluster: &'a Cluster, pod: Option<&'a Pod>, ip: Option<IpAddr>) -> Party<'a> {
    match (pod, ip) {
        (Some(p), ip) => Party::from_pod(p, ip),
        (None, Some(ip)) => Party::from_ip(cluster, ip),
        (None, None) => Party { ip: None, pod: None, node: None },
    }
}

/// Evaluates a packet between two addresses.
pub fn evaluate_packet(cluster: &Cluster, src: IpAddr, dst: IpAddr, port: u16, protocol: Protocol) -> Verdict {
    evaluate_parties(cluster, Party::from_ip(cluster, src), Party::from_ip(cluster, dst), port, protocol)
}

/// Only the ingress half of [`evaluate_packet`]: whether `dst`'s ingress
/// policy admits the packet (what a receiving node's proxy re-checks for
/// each tunnel, without paying for the source side it does not use).
pub fn evaluate_ingress(cluster: &Cluster, src: IpAddr, dst: IpAddr, port: u16, protocol: Protocol) -> SideVerdict {
    let (src, dst) = (Party::from_ip(cluster, src), Party::from_ip(cluster, dst));
    side(cluster, Direction::Ingress, &dst, &src, &dst, port, protocol)
}

/// The verdict on a packet travelling in the reply direction of a connection
/// whose opening packet got `forward`: allowed exactly when the connection
/// was. NetworkPolicy has no other state; the dataplane keeps this one bit
/// per connection in its conntrack table.
pub fn evaluate_reply(forward: &Verdict) -> bool {
    forward.allowed()
}

/// Evaluates a packet between two resolved parties.
pub fn evaluate_parties(cluster: &Cluster, src: Party<'_>, dst: Party<'_>, port: u16, protocol: Protocol) -> Verdict {
    Verdict {
        egress: side(cluster, Direction::Egress, &src, &dst, &dst, port, protocol),
        ingress: side(cluster, Direction::Ingress, &dst, &src, &dst, port, protocol),
    }
}

fn side(
    cluster: &Cluster,
    dir: Direction,
    subject: &Party<'_>,
    peer: &Party<'_>,
    destination: &Party<'_>,
    port: u16,
    protocol: Protocol,
) -> SideVerdict {
    let Some(pod) = subject.pod else {
        return SideVerdict::Allowed(Allow::NotSubject);
    };
    if peer.pod.is_some_and(|p| std::ptr::eq(p, pod) || p.key == pod.key) {
        return SideVerdict::Allowed(Allow::SelfTraffic);
    }
    if let (Some(peer_node), Some(own)) = (peer.node, pod.node.as_deref())
        && peer_node == own
    {
        return SideVerdict::Allowed(Allow::NodeTraffic);
    }
    // The peer's namespace labels are looked up once, not once per peer of
    // every rule.
    let peer_ns = peer.pod.map(|p| cluster.namespace_labels(&p.key.namespace));
    let mut isolated_by = Vec::new();
    for np in cluster.policies_in(&pod.key.namespace) {
        let Some(rules) = np.rules(dir) else { continue };
        if !np.pod_selector.matches(&pod.labels) {
            continue;
        }
        for (i, rule) in rules.iter().enumerate() {
            let peer_ok = match &rule.peers {
                None => true,
                Some(peers) => peers.iter().any(|p| peer_matches_with(np, p, peer, peer_ns.as_deref())),
            };
            if peer_ok && ports_match(rule, destination, port, protocol) {
                return SideVerdict::Allowed(Allow::Rule { policy: np.key.clone(), rule: i });
            }
        }
        isolated_by.push(np.key.clone());
    }
    if isolated_by.is_empty() { SideVerdict::Allowed(Allow::NotIsolated) } else { SideVerdict::Denied { isolated_by } }
}

/// Whether `rule` of `np` matches a packet whose other end is `peer` and
/// whose destination is `destination` (for named ports).
pub fn rule_matches(
    cluster: &Cluster,
    np: &NetworkPolicy,
    rule: &Rule,
    peer: &Party<'_>,
    destination: &Party<'_>,
    port: u16,
    protocol: Protocol,
) -> bool {
    let peer_ok = match &rule.peers {
        None => true,
        Some(peers) => peers.iter().any(|p| peer_matches(cluster, np, p, peer)),
    };
    peer_ok && ports_match(rule, destination, port, protocol)
}

fn ports_match(rule: &Rule, destination: &Party<'_>, port: u16, protocol: Protocol) -> bool {
    match &rule.ports {
        None => true,
        Some(ports) => ports.iter().any(|pr| {
            pr.protocol == protocol
                && match &pr.port {
                    PortMatch::Any => true,
                    PortMatch::Range { start, end } => (*start..=*end).contains(&port),
                    PortMatch::Named(name) => {
                        destination.pod.and_then(|d| d.resolve_port(name, protocol)) == Some(port)
                    }
                }
        }),
    }
}

/// Whether one `from`/`to` entry matches a party.
pub fn peer_matches(cluster: &Cluster, np: &NetworkPolicy, peer: &Peer, party: &Party<'_>) -> bool {
    let ns = party.pod.map(|p| cluster.namespace_labels(&p.key.namespace));
    peer_matches_with(np, peer, party, ns.as_deref())
}

/// [`peer_matches`] with the party's namespace labels already looked up.
fn peer_matches_with(np: &NetworkPolicy, peer: &Peer, party: &Party<'_>, party_ns: Option<&Labels>) -> bool {
    match peer {
        Peer::IpBlock(b) => party.ip.is_some_and(|ip| b.contains(ip)),
        Peer::Pods { namespaces, pods } => {
            let Some(p) = party.pod else { return false };
            let ns_ok = match (namespaces, party_ns) {
                (NamespaceSelection::Own, _) => p.key.namespace == np.key.namespace,
                (NamespaceSelection::Matching(sel), Some(labels)) => sel.matches(labels),
                (NamespaceSelection::Matching(_), None) => false,
            };
            ns_ok && pods.matches(&p.labels)
        }
    }
}

#[cfg(test)]
mod tests;
