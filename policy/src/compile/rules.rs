//! Compiling one policy's rules into peer identity sets and port blocks, and
//! one (endpoint, policy) pair into policy-trie entries.

use std::collections::BTreeSet;
use std::rc::Rc;

use ipnet::IpNet;

use super::Compiler;
use super::ports::{PortPrefix, range_to_prefixes};
use super::tables::{ALL_PODS, ANY, EndpointId, Identity, IdentityInfo, PolicyKey, RuleId};
use crate::labels::Selector;
use crate::model::{Direction, IpBlock, NamespaceSelection, NetworkPolicy, Peer, Pod, PortMatch, Protocol, Rule};

/// A rule, compiled against the current identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleState {
    pub(crate) id: RuleId,
    pub(crate) direction: Direction,
    /// Identities the rule's pod peers select.
    pub(crate) peers: BTreeSet<Identity>,
    /// The rule's `ipBlock` peers, resolved per endpoint against its cidr
    /// trie (see [`Compiler::contribution`]).
    pub(crate) blocks: Vec<IpBlock>,
    /// Numeric port blocks `(protocol, block)`; `(0, ANY)` when the rule has
    /// no ports.
    pub(crate) ports: Vec<(u8, PortPrefix)>,
    /// Named ports. Ingress: resolved against the selected endpoint.
    pub(crate) named: Vec<(Protocol, String)>,
    /// Egress named ports resolved against each destination:
    /// `(identity, protocol, port)`.
    pub(crate) named_grants: BTreeSet<(Identity, u8, u16)>,
}

/// Whether a network contains another (both truncated).
pub(crate) fn net_contains(outer: &IpNet, inner: &IpNet) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains(&inner.network())
}

impl Compiler {
    /// Namespaces (with an identity) that a namespace selection matches.
    /// Memoised per selector: many policies share one namespace selector.
    fn matching_namespaces(&self, np: &NetworkPolicy, sel: &NamespaceSelection) -> Rc<Vec<String>> {
        match sel {
            NamespaceSelection::Own => Rc::new(
                self.ns_ids
                    .contains_key(&*np.key.namespace)
                    .then(|| np.key.namespace.to_string())
                    .into_iter()
                    .collect(),
            ),
            NamespaceSelection::Matching(s) => {
                if let Some(hit) = self.cache.borrow().namespaces.get(s) {
                    return hit.clone();
                }
                let found: Rc<Vec<String>> = Rc::new(
                    self.ns_ids.keys().filter(|ns| s.matches(&self.cluster.namespace_labels(ns))).cloned().collect(),
                );
                self.cache.borrow_mut().namespaces.insert(s.clone(), found.clone());
                found
            }
        }
    }

    /// Label identities of one namespace that a pod selector matches
    /// (memoised per namespace and selector).
    fn namespace_pod_identities(&self, ns: &str, pods: &Selector) -> Rc<Vec<Identity>> {
        if let Some(hit) = self.cache.borrow().pods.get(ns).and_then(|m| m.get(pods)) {
            return hit.clone();
        }
        let found: Rc<Vec<Identity>> = Rc::new(
            self.labels_by_ns
                .get(ns)
                .into_iter()
                .flatten()
                .filter(|id| {
                    matches!(self.tables.identities.get(id), Some(IdentityInfo::Pods { labels, .. }) if pods.matches(labels))
                })
                .copied()
                .collect(),
        );
        self.cache.borrow_mut().pods.entry(ns.to_string()).or_default().insert(pods.clone(), found.clone());
        found
    }

    /// Label identities of the pods a `Pods` peer selects.
    fn pod_identities(&self, np: &NetworkPolicy, namespaces: &NamespaceSelection, pods: &Selector) -> Vec<Identity> {
        let mut out = Vec::new();
        for ns in self.matching_namespaces(np, namespaces).iter() {
            out.extend(self.namespace_pod_identities(ns, pods).iter().copied());
        }
        out
    }

    fn resolve_identity_port(&self, id: Identity, name: &str, proto: Protocol) -> Option<u16> {
        match self.tables.identities.get(&id) {
            Some(IdentityInfo::Pods { named_ports, .. }) => {
                named_ports.iter().find(|p| p.name == name && p.protocol == proto).map(|p| p.port)
            }
            _ => None,
        }
    }

    /// Compiles one rule.
    pub(crate) fn compile_rule(&self, np: &NetworkPolicy, direction: Direction, rule: &Rule, id: RuleId) -> RuleState {
        let mut peers = BTreeSet::new();
        let mut blocks = Vec::new();
        match &rule.peers {
            None => {
                peers.insert(ANY);
            }
            Some(list) => {
                for peer in list {
                    match peer {
                        Peer::Pods { namespaces: NamespaceSelection::Matching(s), pods }
                            if s.is_empty() && pods.is_empty() =>
                        {
                            peers.insert(ALL_PODS);
                        }
                        Peer::Pods { namespaces, pods } if pods.is_empty() => {
                            for ns in self.matching_namespaces(np, namespaces).iter() {
                                if let Some(id) = self.ns_ids.get(ns) {
                                    peers.insert(*id);
                                }
                            }
                        }
                        Peer::Pods { namespaces, pods } => peers.extend(self.pod_identities(np, namespaces, pods)),
                        Peer::IpBlock(b) => blocks.push(b.clone()),
                    }
                }
            }
        }
        let mut ports = Vec::new();
        let mut named = Vec::new();
        match &rule.ports {
            None => ports.push((0, PortPrefix::ANY)),
            Some(list) => {
                for pr in list {
                    let proto = pr.protocol.number();
                    match &pr.port {
                        PortMatch::Any => ports.push((proto, PortPrefix::ANY)),
                        PortMatch::Range { start, end } => {
                            ports.extend(range_to_prefixes(*start, *end).into_iter().map(|p| (proto, p)));
                        }
                        PortMatch::Named(n) => named.push((pr.protocol, n.clone())),
                    }
                }
            }
        }
        ports.sort();
        ports.dedup();
        named.sort();
        named.dedup();
        let mut named_grants = BTreeSet::new();
        if direction == Direction::Egress && !named.is_empty() {
            // A named port resolves against the destination pod, and never
            // matches a destination that is not a pod. Label identities
            // carry named ports, so each selected identity resolves one way;
            // ipBlock peers resolve per address.
            let mut targets: BTreeSet<Identity> = BTreeSet::new();
            let mut addresses = Vec::new();
            match &rule.peers {
                None => targets.extend(self.labels_by_ns.values().flatten().copied()),
                Some(list) => {
                    for peer in list {
                        match peer {
                            Peer::Pods { namespaces, pods } => {
                                targets.extend(self.pod_identities(np, namespaces, pods))
                            }
                            Peer::IpBlock(b) => addresses.extend(
                                self.cluster
                                    .pod_addresses_in(b.cidr)
                                    .filter(|(ip, _)| b.contains(*ip))
                                    .map(|(ip, p)| (ip, p.clone())),
                            ),
                        }
                    }
                }
            }
            for (proto, name) in &named {
                for id in &targets {
                    if let Some(port) = self.resolve_identity_port(*id, name, *proto) {
                        named_grants.insert((*id, proto.number(), port));
                    }
                }
                for (ip, pod) in &addresses {
                    if let (Some(port), Some(aid)) = (pod.resolve_port(name, *proto), self.addr_ids.get(ip)) {
                        named_grants.insert((*aid, proto.number(), port));
                    }
                }
            }
        }
        blocks.sort();
        blocks.dedup();
        RuleState { id, direction, peers, blocks, ports, named, named_grants }
    }

    /// The policy-trie entries `rules` (of one policy) give endpoint `ep`
    /// (pod `pod`), whose cidr tries hold `prefixes` (ingress, egress).
    pub(crate) fn contribution(
        &self,
        ep: EndpointId,
        pod: &Pod,
        rules: &[RuleState],
        prefixes: &[BTreeSet<IpNet>; 2],
    ) -> Vec<(PolicyKey, RuleId)> {
        let mut out = Vec::new();
        for rs in rules {
            let key = |peer, protocol, port| PolicyKey { endpoint: ep, direction: rs.direction, peer, protocol, port };
            // A block selects the endpoint's prefixes inside it and outside
            // its exceptions; the trie's longest match makes that exact.
            let mut block_ids = Vec::new();
            for b in &rs.blocks {
                for q in &prefixes[dir_index(rs.direction)] {
                    if net_contains(&b.cidr, q)
                        && !b.except.iter().any(|e| net_contains(e, q))
                        && let Some((id, _)) = self.cidr_ids.get(q)
                    {
                        block_ids.push(*id);
                    }
                }
            }
            for peer in rs.peers.iter().chain(&block_ids) {
                for (proto, pp) in &rs.ports {
                    out.push((key(*peer, *proto, *pp), rs.id));
                }
                if rs.direction == Direction::Ingress {
                    for (proto, name) in &rs.named {
                        if let Some(port) = pod.resolve_port(name, *proto) {
                            out.push((key(*peer, proto.number(), PortPrefix::single(port)), rs.id));
                        }
                    }
                }
            }
            for (peer, proto, port) in &rs.named_grants {
                out.push((key(*peer, *proto, PortPrefix::single(*port)), rs.id));
            }
        }
        out.sort_by_key(|(k, r)| (*k, *r));
        out.dedup();
        out
    }
}

/// Index of a direction in per-direction arrays.
pub(crate) fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// Whether a policy has a rule whose compiled peers could include the label
/// identity of pods in `ns` with `labels` (so creating or deleting that
/// identity changes the policy's tables).
pub(crate) fn may_select_identity(
    np: &NetworkPolicy,
    ns: &str,
    ns_labels: &crate::labels::Labels,
    labels: &crate::labels::Labels,
) -> bool {
    for dir in [Direction::Ingress, Direction::Egress] {
        for rule in np.rules(dir).into_iter().flatten() {
            let named_egress =
                dir == Direction::Egress && rule.ports.iter().flatten().any(|p| matches!(p.port, PortMatch::Named(_)));
            match &rule.peers {
                None if named_egress => return true,
                None => {}
                Some(peers) => {
                    for p in peers {
                        if let Peer::Pods { namespaces, pods } = p {
                            let ns_ok = match namespaces {
                                NamespaceSelection::Own => &*np.key.namespace == ns,
                                NamespaceSelection::Matching(s) => s.matches(ns_labels),
                            };
                            if ns_ok && (named_egress || !pods.is_empty()) && pods.matches(labels) {
                                return true;
                            }
                        }
                    }
                }
            }
        }
    }
    false
}

/// Whether a policy has a namespace-level peer (a `Pods` peer with an empty
/// pod selector) whose namespace selection matches `ns` under any of
/// `labels`.
pub(crate) fn may_select_namespace(np: &NetworkPolicy, ns: &str, labels: &[&crate::labels::Labels]) -> bool {
    np.all_peers().any(|p| match p {
        Peer::Pods { namespaces: NamespaceSelection::Own, .. } => &*np.key.namespace == ns,
        Peer::Pods { namespaces: NamespaceSelection::Matching(s), .. } => labels.iter().any(|l| s.matches(l)),
        Peer::IpBlock(_) => false,
    })
}

/// Whether a policy can select pods outside its own namespace: it has a
/// `namespaceSelector` peer, or an egress rule on a named port to every peer.
pub(crate) fn is_cross_namespace(np: &NetworkPolicy) -> bool {
    let named_egress_any = np
        .rules(Direction::Egress)
        .into_iter()
        .flatten()
        .any(|r| r.peers.is_none() && r.ports.iter().flatten().any(|p| matches!(p.port, PortMatch::Named(_))));
    named_egress_any
        || np
            .rules(Direction::Ingress)
            .into_iter()
            .chain(np.rules(Direction::Egress))
            .flatten()
            .flat_map(|r| r.peers.iter().flatten())
            .any(|p| matches!(p, Peer::Pods { namespaces: NamespaceSelection::Matching(_), .. }))
}

/// Whether a policy has egress rules that combine `ipBlock` peers with
/// named ports (the only rules that depend on individual pod addresses).
pub(crate) fn has_named_ipblock_egress(np: &NetworkPolicy) -> bool {
    np.rules(Direction::Egress).into_iter().flatten().any(|r| {
        r.ports.iter().flatten().any(|p| matches!(p.port, PortMatch::Named(_)))
            && r.peers.iter().flatten().any(|p| matches!(p, Peer::IpBlock(_)))
    })
}
