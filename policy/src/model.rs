//! The validated, defaulted internal model of the objects the engine reads.
//!
//! Converting from `k8s-openapi` types (see [`crate::convert`]) applies the
//! API server's defaulting and validation once, so that the evaluator and the
//! compiler never see an optional field whose meaning depends on context.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::labels::{Labels, Selector};

/// `namespace/name` of a namespaced object. The parts are shared strings:
/// keys are cloned into many indexes and verdicts, and a clone must not
/// allocate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl ObjectKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for ObjectKey {
    type Err = String;
    /// Parses `namespace/name`; a bare `name` is in namespace `default`, as
    /// with `kubectl`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(Self::new(ns, name)),
            None if !s.is_empty() => Ok(Self::new("default", s)),
            _ => Err(format!("{s:?} is not of the form namespace/name")),
        }
    }
}

/// An IP protocol as the dataplane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Protocol {
    /// TCP (6).
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP (17).
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP (132).
    #[serde(rename = "SCTP")]
    Sctp,
    /// ICMP (1).
    #[serde(rename = "ICMP")]
    Icmp,
    /// ICMPv6 (58).
    #[serde(rename = "ICMPv6")]
    Icmpv6,
    /// Any other IP protocol number.
    #[serde(untagged)]
    Other(u8),
}

impl Protocol {
    /// The IANA protocol number, as carried in the IP header.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Icmp => 1,
            Protocol::Icmpv6 => 58,
            Protocol::Other(n) => n,
        }
    }

    /// The protocol with this IANA number.
    pub fn from_number(n: u8) -> Self {
        match n {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            132 => Protocol::Sctp,
            1 => Protocol::Icmp,
            58 => Protocol::Icmpv6,
            n => Protocol::Other(n),
        }
    }

    /// Whether NetworkPolicy port rules can name this protocol.
    pub fn is_policy_protocol(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp | Protocol::Sctp)
    }

    /// Whether packets of this protocol carry ports the policy can match.
    pub fn has_ports(self) -> bool {
        self.is_policy_protocol()
    }

    /// Parses a protocol name as written in Kubernetes objects (`TCP`, `UDP`,
    /// `SCTP`); case-sensitive, like the API server.
    pub fn from_k8s(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::Icmp => f.write_str("ICMP"),
            Protocol::Icmpv6 => f.write_str("ICMPv6"),
            Protocol::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    /// Case-insensitive, for the command line: `tcp`, `UDP`, `icmp`, `47`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            "ICMP" => Ok(Protocol::Icmp),
            "ICMPV6" => Ok(Protocol::Icmpv6),
            other => other
                .parse::<u8>()
                .map(Protocol::from_number)
                .map_err(|_| format!("unknown protocol {s:?} (TCP, UDP, SCTP, ICMP, ICMPv6 or a number)")),
        }
    }
}

/// A named container port of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NamedPort {
    /// `ports[].name` (an IANA service name).
    pub name: String,
    /// `ports[].protocol`, defaulted to TCP.
    pub protocol: Protocol,
    /// `ports[].containerPort`.
    pub port: u16,
}

/// A namespace and its labels, defaulted like the API server does
/// (`kubernetes.io/metadata.name` is always present).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels, including `kubernetes.io/metadata.name`.
    pub labels: Labels,
}

/// The label every namespace carries (set by the API server since 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl Namespace {
    /// The labels a namespace has when there is no Namespace object for it:
    /// only its name label.
    pub fn default_labels(name: &str) -> Labels {
        [(NAMESPACE_NAME_LABEL.to_string(), name.to_string())].into()
    }
}

/// The fields of a pod that policy depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Pod {
    /// `namespace/name`.
    pub key: ObjectKey,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `status.podIPs` (or `status.podIP`); empty until the pod has an address
    /// or after it has terminated.
    pub ips: Vec<IpAddr>,
    /// `spec.nodeName`, once scheduled.
    pub node: Option<String>,
    /// `spec.serviceAccountName`, defaulted to `default`.
    pub service_account: String,
    /// Named container ports, sorted and unique by name.
    pub named_ports: Vec<NamedPort>,
    /// `spec.hostNetwork`: such pods share the node's addresses and are
    /// neither selected nor matched by NetworkPolicy pod selectors.
    pub host_network: bool,
}

impl Pod {
    /// Resolves a named port for `protocol`: the name must exist with the same
    /// protocol.
    pub fn resolve_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports.iter().find(|p| p.name == name && p.protocol == protocol).map(|p| p.port)
    }

    /// Whether NetworkPolicy applies to this pod (it is not host-networked).
    pub fn is_policy_endpoint(&self) -> bool {
        !self.host_network
    }
}

/// A node and its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Node {
    /// Name.
    pub name: String,
    /// `status.addresses` of type InternalIP and ExternalIP.
    pub addresses: Vec<IpAddr>,
}

/// An `ipBlock` peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct IpBlock {
    /// The block (host bits cleared).
    pub cidr: IpNet,
    /// Strict sub-blocks removed from this block (host bits cleared).
    pub except: Vec<IpNet>,
}

impl IpBlock {
    /// Whether `ip` is in the block and in none of its exceptions.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// Which namespaces a pod peer draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum NamespaceSelection {
    /// The policy's own namespace (`podSelector` without `namespaceSelector`).
    Own,
    /// Namespaces whose labels match (`namespaceSelector: {}` is all of them).
    Matching(Selector),
}

/// One entry of `from` / `to`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Peer {
    /// Pods selected by namespace and pod selectors (ANDed). Never matches
    /// an address that is not a pod's.
    Pods {
        /// Namespaces.
        namespaces: NamespaceSelection,
        /// Pods within them (`{}` when no `podSelector` was given).
        pods: Selector,
    },
    /// Addresses in a CIDR block, pods' addresses included.
    IpBlock(IpBlock),
}

/// The port part of a `NetworkPolicyPort`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PortMatch {
    /// No `port`: every port of the protocol.
    Any,
    /// `port` (and `endPort`): an inclusive range; a single port has
    /// `start == end`.
    Range {
        /// First port.
        start: u16,
        /// Last port (inclusive).
        end: u16,
    },
    /// A named port, resolved against the destination pod.
    Named(String),
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PortRule {
    /// Protocol, defaulted to TCP.
    pub protocol: Protocol,
    /// Port(s).
    pub port: PortMatch,
}

/// An ingress or egress rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    /// `from` / `to`; `None` when missing or empty: every peer, external
    /// addresses included.
    pub peers: Option<Vec<Peer>>,
    /// `ports`; `None` when missing or empty: every port of every protocol.
    pub ports: Option<Vec<PortRule>>,
}

/// Traffic direction, from the point of view of the selected pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Direction {
    /// Traffic into the pod.
    Ingress,
    /// Traffic out of the pod.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// A validated, defaulted NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct NetworkPolicy {
    /// `namespace/name`.
    pub key: ObjectKey,
    /// `spec.podSelector` (missing = `{}`).
    pub pod_selector: Selector,
    /// Ingress rules when `Ingress` is one of the (defaulted) policy types:
    /// the policy then isolates its pods for ingress. `Some(vec![])` denies.
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules when `Egress` is one of the (defaulted) policy types.
    pub egress: Option<Vec<Rule>>,
}

impl NetworkPolicy {
    /// The rules of one direction, if the policy has that policy type.
    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// The peers of every rule of one direction (a rule with no peers
    /// contributes none).
    pub fn peers(&self, dir: Direction) -> impl Iterator<Item = &Peer> + '_ {
        self.rules(dir).into_iter().flatten().flat_map(|r| r.peers.iter().flatten())
    }

    /// The peers of every rule of both directions.
    pub fn all_peers(&self) -> impl Iterator<Item = &Peer> + '_ {
        self.peers(Direction::Ingress).chain(self.peers(Direction::Egress))
    }

    /// The CIDR prefixes (blocks and their exceptions) of one direction's
    /// `ipBlock` peers.
    pub fn prefixes_of(&self, dir: Direction) -> impl Iterator<Item = IpNet> + '_ {
        block_prefixes(self.peers(dir))
    }

    /// The CIDR prefixes of both directions.
    pub fn prefixes(&self) -> impl Iterator<Item = IpNet> + '_ {
        block_prefixes(self.all_peers())
    }
}

fn block_prefixes<'a>(peers: impl Iterator<Item = &'a Peer> + 'a) -> impl Iterator<Item = IpNet> + 'a {
    peers
        .filter_map(|p| match p {
            Peer::IpBlock(b) => Some(b),
            Peer::Pods { .. } => None,
        })
        .flat_map(|b| std::iter::once(b.cidr).chain(b.except.iter().copied()))
}
