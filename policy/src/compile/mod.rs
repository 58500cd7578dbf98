//! The incremental compiler from cluster state to dataplane tables.
//!
//! Design (our own, after Cilium's identities + ipcache + per-endpoint
//! policy map):
//! - **Identities** name sets of peers: one per distinct (namespace, pod
//!   labels, named ports) — the label identity; one per namespace; one per
//!   `ipBlock` prefix; one per pod address (only used by egress rules that
//!   combine `ipBlock` with a named port); plus the reserved [`ANY`] and
//!   [`ALL_PODS`]. Namespace-wide peers (`podSelector: {}`,
//!   `namespaceSelector` without `podSelector`) compile to one namespace
//!   identity instead of every pod identity in it, so the table size does not
//!   grow with the number of pods behind a broad selector.
//! - **ipcache**: every address or prefix → its identities (see [`IpInfo`]).
//!   `ipBlock` semantics with `except` are exact: every block and exception
//!   prefix gets an entry; an address resolves to the most specific prefix
//!   containing it, and a block selects exactly the prefixes inside it and
//!   outside its exceptions.
//! - **policy trie**, per local endpoint and direction: (peer identity,
//!   protocol, port block) → rule.
//!
//! Compilation is incremental: [`Compiler::apply`] and [`Compiler::delete`]
//! change the cluster by one object and return the [`TableDiff`] that takes
//! the previous tables to the new ones. Each change recomputes only what it
//! can affect: the policies whose peer sets can change and the endpoints
//! whose selecting policies can change.

mod journal;
mod ports;
mod rules;
pub mod tables;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use self::journal::Journal;
pub use self::ports::{PortPrefix, range_to_prefixes};
use self::rules::{
    RuleState, has_named_ipblock_egress, is_cross_namespace, may_select_identity,
    may_select_namespace, net_contains,
};
pub use self::tables::*;
use crate::cluster::{AddressOwner, Cluster, ObjectRef};
use crate::labels::Labels;
use crate::manifest::Object;
use crate::model::{Direction, NamedPort, ObjectKey, Pod};

/// Which pods are local endpoints (get endpoint and policy entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The pods scheduled on one node: what a node agent loads.
    Node(String),
    /// Every pod: for tools and tests.
    Cluster,
}

impl Scope {
    fn includes(&self, pod: &Pod) -> bool {
        pod.is_policy_endpoint()
            && match self {
                Scope::Cluster => true,
                Scope::Node(n) => pod.node.as_deref() == Some(n.as_str()),
            }
    }
}

type LabelKey = (String, Labels, Vec<NamedPort>);

#[derive(Debug)]
struct PolicyState {
    rules: Vec<RuleState>,
    selected: BTreeSet<EndpointId>,
    prefixes: BTreeSet<IpNet>,
    ingress: bool,
    egress: bool,
}

#[derive(Debug, Default)]
struct EndpointState {
    pod: Option<ObjectKey>,
    selected_by: BTreeSet<ObjectKey>,
    contrib: HashMap<ObjectKey, Vec<(PolicyKey, RuleId)>>,
}

/// The incremental compiler. Holds the cluster state and the tables compiled
/// from it.
#[derive(Debug)]
pub struct Compiler {
    scope: Scope,
    cluster: Cluster,
    tables: Tables,
    journal: Journal,
    next_identity: Identity,
    next_endpoint: EndpointId,
    next_rule: RuleId,
    next_node: NodeId,
    label_ids: HashMap<LabelKey, (Identity, BTreeSet<ObjectKey>)>,
    labels_by_ns: BTreeMap<String, BTreeSet<Identity>>,
    pod_label_id: HashMap<ObjectKey, (Identity, LabelKey)>,
    ns_ids: BTreeMap<String, Identity>,
    addr_ids: HashMap<IpAddr, Identity>,
    cidr_ids: BTreeMap<IpNet, (Identity, u32)>,
    node_ids: BTreeMap<String, NodeId>,
    endpoint_ids: HashMap<ObjectKey, EndpointId>,
    endpoints_by_ns: BTreeMap<String, BTreeSet<EndpointId>>,
    endpoint_state: HashMap<EndpointId, EndpointState>,
    /// Contributors of each policy-trie key: (rule, count).
    entries: HashMap<PolicyKey, Vec<(RuleId, u32)>>,
    policies: HashMap<ObjectKey, PolicyState>,
    cross_ns_policies: BTreeSet<ObjectKey>,
    ipblock_policies: BTreeSet<ObjectKey>,
    named_ipblock_policies: BTreeSet<ObjectKey>,
    dirty_policies: BTreeSet<ObjectKey>,
    dirty_endpoints: BTreeSet<EndpointId>,
}

impl Compiler {
    /// An empty compiler for `scope`.
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            cluster: Cluster::new(),
            tables: Tables::default(),
            journal: Journal::default(),
            next_identity: FIRST_ALLOCATED,
            next_endpoint: 1,
            next_rule: 1,
            next_node: 1,
            label_ids: HashMap::new(),
            labels_by_ns: BTreeMap::new(),
            pod_label_id: HashMap::new(),
            ns_ids: BTreeMap::new(),
            addr_ids: HashMap::new(),
            cidr_ids: BTreeMap::new(),
            node_ids: BTreeMap::new(),
            endpoint_ids: HashMap::new(),
            endpoints_by_ns: BTreeMap::new(),
            endpoint_state: HashMap::new(),
            entries: HashMap::new(),
            policies: HashMap::new(),
            cross_ns_policies: BTreeSet::new(),
            ipblock_policies: BTreeSet::new(),
            named_ipblock_policies: BTreeSet::new(),
            dirty_policies: BTreeSet::new(),
            dirty_endpoints: BTreeSet::new(),
        }
    }

    /// Compiles a whole cluster from scratch.
    pub fn from_cluster(scope: Scope, cluster: &Cluster) -> Self {
        let mut c = Self::new(scope);
        c.load(cluster);
        c
    }

    /// Loads every object of `cluster` (namespaces and nodes first, then
    /// pods, then policies, which is the cheapest order) and returns the
    /// combined diff.
    pub fn load(&mut self, cluster: &Cluster) -> TableDiff {
        let before = self.tables.clone();
        let objects = cluster
            .namespace_names()
            .into_iter()
            .filter_map(|n| cluster.namespace(n).cloned().map(Object::Namespace))
            .chain(cluster.nodes().cloned().map(Object::Node))
            .chain(cluster.pods().cloned().map(Object::Pod))
            .chain(cluster.policies().cloned().map(Object::NetworkPolicy))
            .collect::<Vec<_>>();
        for o in objects {
            self.apply(o);
        }
        diff_tables(&before, &self.tables)
    }

    /// The compiled tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The cluster state the tables were compiled from.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Adds or replaces one object; returns the table changes.
    pub fn apply(&mut self, obj: Object) -> TableDiff {
        match obj {
            Object::Namespace(ns) => {
                let name = ns.name.clone();
                let old = self.cluster.namespace_labels(&name).into_owned();
                self.cluster.apply(Object::Namespace(ns));
                self.namespace_changed(&name, &old);
            }
            Object::Node(n) => {
                let name = n.name.clone();
                let old = self
                    .cluster
                    .node(&name)
                    .map(|n| n.addresses.clone())
                    .unwrap_or_default();
                self.cluster.apply(Object::Node(n));
                self.node_changed(&name, old);
            }
            Object::Pod(p) => {
                let key = p.key.clone();
                let old = self.cluster.pod(&key).cloned();
                self.cluster.apply(Object::Pod(p));
                self.pod_changed(&key, old);
            }
            Object::NetworkPolicy(np) => {
                let key = np.key.clone();
                self.cluster.apply(Object::NetworkPolicy(np));
                self.policy_changed(&key);
            }
        }
        self.finish()
    }

    /// Deletes one object; returns the table changes (empty if it was absent).
    pub fn delete(&mut self, r: &ObjectRef) -> TableDiff {
        match r {
            ObjectRef::Namespace(name) => {
                let old = self.cluster.namespace_labels(name).into_owned();
                self.cluster.delete(r);
                self.namespace_changed(name, &old);
            }
            ObjectRef::Node(name) => {
                let old = self
                    .cluster
                    .node(name)
                    .map(|n| n.addresses.clone())
                    .unwrap_or_default();
                self.cluster.delete(r);
                self.node_changed(name, old);
            }
            ObjectRef::Pod(key) => {
                let old = self.cluster.pod(key).cloned();
                self.cluster.delete(r);
                self.pod_changed(key, old);
            }
            ObjectRef::NetworkPolicy(key) => {
                self.cluster.delete(r);
                self.policy_changed(key);
            }
        }
        self.finish()
    }

    fn alloc_identity(&mut self, info: IdentityInfo) -> Identity {
        let id = self.next_identity;
        self.next_identity = self.next_identity.wrapping_add(1).max(FIRST_ALLOCATED);
        self.journal.identity(&mut self.tables, id, Some(info));
        id
    }

    fn free_identity(&mut self, id: Identity) {
        self.journal.identity(&mut self.tables, id, None);
    }

    // ---- namespaces and nodes -------------------------------------------

    /// Creates or frees the namespace identity; returns whether it did.
    fn sync_namespace(&mut self, ns: &str) -> bool {
        let wanted =
            self.cluster.namespace(ns).is_some() || self.cluster.pods_in(ns).next().is_some();
        match (self.ns_ids.get(ns).copied(), wanted) {
            (None, true) => {
                let id = self.alloc_identity(IdentityInfo::Namespace(ns.to_string()));
                self.ns_ids.insert(ns.to_string(), id);
                true
            }
            (Some(id), false) => {
                self.ns_ids.remove(ns);
                self.free_identity(id);
                true
            }
            _ => false,
        }
    }

    fn namespace_changed(&mut self, ns: &str, old: &Labels) {
        let existence_changed = self.sync_namespace(ns);
        self.namespace_effects(ns, old, existence_changed);
    }

    /// Marks the policies whose namespace-level peers change because the
    /// namespace's identity appeared or disappeared, or its labels changed.
    fn namespace_effects(&mut self, ns: &str, old: &Labels, existence_changed: bool) {
        let new = self.cluster.namespace_labels(ns).into_owned();
        let candidates: Vec<ObjectKey> = self
            .cross_ns_policies
            .iter()
            .cloned()
            .chain(self.cluster.policies_in(ns).map(|p| p.key.clone()))
            .collect();
        for key in candidates {
            let Some(np) = self.cluster.policy(&key) else {
                continue;
            };
            let affected = (existence_changed && may_select_namespace(np, ns, &[old, &new]))
                || (old != &new && namespace_selection_flips(np, old, &new));
            if affected {
                self.dirty_policies.insert(key);
            }
        }
        if existence_changed {
            // Pods' ipcache entries carry the namespace identity.
            let ips: Vec<IpAddr> = self
                .cluster
                .pods_in(ns)
                .flat_map(|p| p.ips.clone())
                .collect();
            for ip in ips {
                self.refresh_address(ip);
            }
        }
    }

    fn sync_node(&mut self, name: &str) {
        let wanted = self.cluster.node(name).is_some()
            || self.cluster.pods().any(|p| p.node.as_deref() == Some(name));
        match (self.node_ids.get(name).copied(), wanted) {
            (None, true) => {
                let id = self.next_node;
                self.next_node += 1;
                self.node_ids.insert(name.to_string(), id);
                self.journal
                    .node(&mut self.tables, id, Some(name.to_string()));
            }
            (Some(id), false) => {
                self.node_ids.remove(name);
                self.journal.node(&mut self.tables, id, None);
            }
            _ => {}
        }
    }

    fn node_changed(&mut self, name: &str, old_addresses: Vec<IpAddr>) {
        self.sync_node(name);
        let new = self
            .cluster
            .node(name)
            .map(|n| n.addresses.clone())
            .unwrap_or_default();
        for ip in old_addresses.into_iter().chain(new) {
            self.refresh_address(ip);
        }
    }

    // ---- ipcache -----------------------------------------------------------

    fn most_specific_cidr(&self, ip: IpAddr) -> Identity {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        for len in (0..=max).rev() {
            if let Ok(net) = IpNet::new(ip, len)
                && let Some((id, _)) = self.cidr_ids.get(&net.trunc())
            {
                return *id;
            }
        }
        0
    }

    /// Recomputes the ipcache entry of one address (host prefix). Returns
    /// whether the owner's identities changed (for per-address rules).
    fn refresh_address(&mut self, ip: IpAddr) -> bool {
        enum Owner {
            Pod(ObjectKey),
            Node(String),
            External,
        }
        let host = IpNet::from(ip);
        let owner = match self.cluster.owner(ip) {
            AddressOwner::Pod(p) => Owner::Pod(p.key.clone()),
            AddressOwner::Node(n) => Owner::Node(n.to_string()),
            AddressOwner::External => Owner::External,
        };
        let cidr = self.most_specific_cidr(ip);
        let desired = match owner {
            Owner::Pod(pod) => {
                let address = match self.addr_ids.get(&ip) {
                    Some(id) => *id,
                    None => {
                        let id = self.alloc_identity(IdentityInfo::Address(ip));
                        self.addr_ids.insert(ip, id);
                        id
                    }
                };
                Some(IpInfo {
                    endpoint: self.endpoint_ids.get(&pod).copied().unwrap_or(0),
                    identity: self.pod_label_id.get(&pod).map_or(0, |(id, _)| *id),
                    namespace: self.ns_ids.get(&pod.namespace).copied().unwrap_or(0),
                    address,
                    cidr,
                    node: 0,
                })
            }
            Owner::Node(node) => {
                self.free_address(ip);
                Some(IpInfo {
                    cidr,
                    node: self.node_ids.get(&node).copied().unwrap_or(0),
                    ..IpInfo::default()
                })
            }
            Owner::External => {
                self.free_address(ip);
                self.cidr_ids.get(&host).map(|(id, _)| IpInfo {
                    cidr: *id,
                    ..IpInfo::default()
                })
            }
        };
        let before = self.tables.ipcache.get(&host).copied();
        self.journal.ipcache(&mut self.tables, host, desired);
        let changed =
            before.map(|b| (b.identity, b.address)) != desired.map(|d| (d.identity, d.address));
        if changed {
            let keys: Vec<ObjectKey> = self
                .named_ipblock_policies
                .iter()
                .filter(|k| {
                    self.cluster
                        .policy(k)
                        .is_some_and(|np| np.prefixes().any(|p| p.contains(&ip)))
                })
                .cloned()
                .collect();
            self.dirty_policies.extend(keys);
        }
        changed
    }

    fn free_address(&mut self, ip: IpAddr) {
        if let Some(id) = self.addr_ids.remove(&ip) {
            self.free_identity(id);
        }
    }

    fn prefix_changed(&mut self, q: IpNet) {
        if q.prefix_len() == q.max_prefix_len() {
            self.refresh_address(q.network());
        } else {
            let v = self.cidr_ids.get(&q).map(|(id, _)| IpInfo {
                cidr: *id,
                ..IpInfo::default()
            });
            self.journal.ipcache(&mut self.tables, q, v);
        }
        // Addresses inside q now resolve to a different most-specific prefix.
        let inside: Vec<IpAddr> = self
            .cluster
            .pod_addresses()
            .map(|(ip, _)| ip)
            .chain(self.cluster.node_addresses().map(|(ip, _)| ip))
            .filter(|ip| q.contains(ip))
            .collect();
        for ip in inside {
            self.refresh_address(ip);
        }
        let affected: Vec<ObjectKey> = self
            .ipblock_policies
            .iter()
            .filter(|k| {
                self.cluster
                    .policy(k)
                    .is_some_and(|np| np.prefixes().any(|p| net_contains(&p, &q)))
            })
            .cloned()
            .collect();
        self.dirty_policies.extend(affected);
    }

    // ---- pods ----------------------------------------------------------------

    fn pod_changed(&mut self, key: &ObjectKey, old: Option<Pod>) {
        let new = self.cluster.pod(key).cloned();
        if self.sync_namespace(&key.namespace) {
            let labels = self.cluster.namespace_labels(&key.namespace).into_owned();
            self.namespace_effects(&key.namespace, &labels, true);
        }
        for n in old
            .iter()
            .chain(new.iter())
            .filter_map(|p| p.node.clone())
            .collect::<BTreeSet<_>>()
        {
            self.sync_node(&n);
        }

        // Endpoint membership.
        let in_scope = new.as_ref().is_some_and(|p| self.scope.includes(p));
        match (self.endpoint_ids.get(key).copied(), in_scope) {
            (Some(ep), false) => self.remove_endpoint(ep),
            (None, true) => {
                let ep = self.next_endpoint;
                self.next_endpoint += 1;
                self.endpoint_ids.insert(key.clone(), ep);
                self.endpoints_by_ns
                    .entry(key.namespace.clone())
                    .or_default()
                    .insert(ep);
                self.endpoint_state.insert(
                    ep,
                    EndpointState {
                        pod: Some(key.clone()),
                        ..Default::default()
                    },
                );
                self.dirty_endpoints.insert(ep);
            }
            (Some(ep), true) => {
                let (o, n) = (old.as_ref(), new.as_ref());
                if o.map(|p| (&p.labels, &p.named_ports, &p.node))
                    != n.map(|p| (&p.labels, &p.named_ports, &p.node))
                {
                    self.dirty_endpoints.insert(ep);
                }
            }
            (None, false) => {}
        }

        // Label identity.
        let new_key: Option<LabelKey> = new.as_ref().filter(|p| p.is_policy_endpoint()).map(|p| {
            (
                p.key.namespace.clone(),
                p.labels.clone(),
                p.named_ports.clone(),
            )
        });
        let old_key = self.pod_label_id.get(key).map(|(_, k)| k.clone());
        if old_key != new_key {
            if let Some(k) = old_key {
                self.pod_label_id.remove(key);
                self.leave_identity(&k, key);
            }
            if let Some(k) = new_key {
                let id = self.join_identity(&k, key);
                self.pod_label_id.insert(key.clone(), (id, k));
            }
        }

        // Addresses.
        let ips: BTreeSet<IpAddr> = old
            .iter()
            .chain(new.iter())
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        for ip in ips {
            self.refresh_address(ip);
        }
    }

    fn join_identity(&mut self, k: &LabelKey, pod: &ObjectKey) -> Identity {
        if let Some((id, members)) = self.label_ids.get_mut(k) {
            members.insert(pod.clone());
            return *id;
        }
        let id = self.alloc_identity(IdentityInfo::Pods {
            namespace: k.0.clone(),
            labels: k.1.clone(),
            named_ports: k.2.clone(),
        });
        self.label_ids.insert(k.clone(), (id, [pod.clone()].into()));
        self.labels_by_ns.entry(k.0.clone()).or_default().insert(id);
        self.identity_changed(k);
        id
    }

    fn leave_identity(&mut self, k: &LabelKey, pod: &ObjectKey) {
        let Some((id, members)) = self.label_ids.get_mut(k) else {
            return;
        };
        members.remove(pod);
        if !members.is_empty() {
            return;
        }
        let id = *id;
        self.label_ids.remove(k);
        if let Some(set) = self.labels_by_ns.get_mut(&k.0) {
            set.remove(&id);
            if set.is_empty() {
                self.labels_by_ns.remove(&k.0);
            }
        }
        self.free_identity(id);
        self.identity_changed(k);
    }

    /// A label identity appeared or disappeared: policies whose peers can
    /// select it must be recompiled.
    fn identity_changed(&mut self, k: &LabelKey) {
        let ns_labels = self.cluster.namespace_labels(&k.0).into_owned();
        let candidates: Vec<ObjectKey> = self
            .cross_ns_policies
            .iter()
            .cloned()
            .chain(self.cluster.policies_in(&k.0).map(|p| p.key.clone()))
            .filter(|key| {
                self.cluster
                    .policy(key)
                    .is_some_and(|np| may_select_identity(np, &k.0, &ns_labels, &k.1))
            })
            .collect();
        self.dirty_policies.extend(candidates);
    }

    fn remove_endpoint(&mut self, ep: EndpointId) {
        let Some(state) = self.endpoint_state.remove(&ep) else {
            return;
        };
        for (policy, contrib) in state.contrib {
            for (k, r) in contrib {
                self.unref_entry(k, r);
            }
            if let Some(ps) = self.policies.get_mut(&policy) {
                ps.selected.remove(&ep);
            }
        }
        if let Some(pod) = state.pod {
            self.endpoint_ids.remove(&pod);
            if let Some(set) = self.endpoints_by_ns.get_mut(&pod.namespace) {
                set.remove(&ep);
                if set.is_empty() {
                    self.endpoints_by_ns.remove(&pod.namespace);
                }
            }
        }
        self.dirty_endpoints.remove(&ep);
        self.journal.endpoint(&mut self.tables, ep, None);
    }

    // ---- policies ------------------------------------------------------------

    fn policy_changed(&mut self, key: &ObjectKey) {
        let new = self.cluster.policy(key).cloned();
        let old_prefixes = self
            .policies
            .get(key)
            .map(|s| s.prefixes.clone())
            .unwrap_or_default();
        let new_prefixes: BTreeSet<IpNet> = new.iter().flat_map(|np| np.prefixes()).collect();

        for set in [
            &mut self.cross_ns_policies,
            &mut self.ipblock_policies,
            &mut self.named_ipblock_policies,
        ] {
            set.remove(key);
        }
        if let Some(np) = &new {
            if is_cross_namespace(np) {
                self.cross_ns_policies.insert(key.clone());
            }
            if !new_prefixes.is_empty() {
                self.ipblock_policies.insert(key.clone());
            }
            if has_named_ipblock_egress(np) {
                self.named_ipblock_policies.insert(key.clone());
            }
        }

        // Prefix reference counts.
        let mut changed_prefixes = Vec::new();
        for q in new_prefixes.difference(&old_prefixes) {
            let entry = self.cidr_ids.get_mut(q);
            match entry {
                Some((_, n)) => *n += 1,
                None => {
                    let id = self.alloc_identity(IdentityInfo::Cidr(*q));
                    self.cidr_ids.insert(*q, (id, 1));
                    changed_prefixes.push(*q);
                }
            }
        }
        for q in old_prefixes.difference(&new_prefixes) {
            if let Some((id, n)) = self.cidr_ids.get_mut(q) {
                *n -= 1;
                if *n == 0 {
                    let id = *id;
                    self.cidr_ids.remove(q);
                    self.free_identity(id);
                    changed_prefixes.push(*q);
                }
            }
        }

        match new {
            Some(_) => {
                if let Some(s) = self.policies.get_mut(key) {
                    s.prefixes = new_prefixes;
                }
                self.dirty_policies.insert(key.clone());
            }
            None => {
                self.dirty_policies.remove(key);
                if let Some(state) = self.policies.remove(key) {
                    for ep in &state.selected {
                        self.set_contribution(*ep, key, Vec::new());
                        if let Some(es) = self.endpoint_state.get_mut(ep) {
                            es.selected_by.remove(key);
                        }
                        self.refresh_endpoint_info(*ep);
                    }
                    for r in state.rules {
                        self.journal.rule(&mut self.tables, r.id, None);
                    }
                }
            }
        }
        for q in changed_prefixes {
            self.prefix_changed(q);
        }
    }

    /// Recompiles a policy and its contribution to every endpoint it selects
    /// or selected.
    fn refresh_policy(&mut self, key: &ObjectKey) {
        let Some(np) = self.cluster.policy(key).cloned() else {
            return;
        };
        let old = self.policies.remove(key);
        let mut old_ids: BTreeMap<(Direction, usize), RuleId> = BTreeMap::new();
        if let Some(o) = &old {
            let mut counters: BTreeMap<Direction, usize> = BTreeMap::new();
            for r in &o.rules {
                let i = counters.entry(r.direction).or_default();
                old_ids.insert((r.direction, *i), r.id);
                *i += 1;
            }
        }
        let mut rules = Vec::new();
        for dir in [Direction::Ingress, Direction::Egress] {
            for (i, rule) in np.rules(dir).into_iter().flatten().enumerate() {
                let id = match old_ids.remove(&(dir, i)) {
                    Some(id) => id,
                    None => {
                        let id = self.next_rule;
                        self.next_rule += 1;
                        id
                    }
                };
                self.journal.rule(
                    &mut self.tables,
                    id,
                    Some(RuleInfo {
                        policy: key.clone(),
                        direction: dir,
                        index: i,
                    }),
                );
                rules.push(self.compile_rule(&np, dir, rule, id));
            }
        }
        for id in old_ids.into_values() {
            self.journal.rule(&mut self.tables, id, None);
        }
        let selected: BTreeSet<EndpointId> = self
            .endpoints_by_ns
            .get(&key.namespace)
            .into_iter()
            .flatten()
            .copied()
            .filter(|ep| {
                self.endpoint_pod(*ep)
                    .is_some_and(|p| np.pod_selector.matches(&p.labels))
            })
            .collect();
        let (old_rules, old_selected) = match old {
            Some(o) => (Some(o.rules), o.selected),
            None => (None, BTreeSet::new()),
        };
        let rules_same = old_rules.as_ref() == Some(&rules);
        for ep in old_selected.difference(&selected) {
            self.set_contribution(*ep, key, Vec::new());
            if let Some(es) = self.endpoint_state.get_mut(ep) {
                es.selected_by.remove(key);
            }
            self.refresh_endpoint_info(*ep);
        }
        let state = PolicyState {
            rules,
            selected: selected.clone(),
            prefixes: np.prefixes().collect(),
            ingress: np.ingress.is_some(),
            egress: np.egress.is_some(),
        };
        self.policies.insert(key.clone(), state);
        for ep in &selected {
            if !(rules_same && old_selected.contains(ep)) {
                self.recompute_contribution(*ep, key);
                if let Some(es) = self.endpoint_state.get_mut(ep) {
                    es.selected_by.insert(key.clone());
                }
            }
            // Policy types can change without any rule changing.
            self.refresh_endpoint_info(*ep);
        }
    }

    fn endpoint_pod(&self, ep: EndpointId) -> Option<&Pod> {
        self.endpoint_state
            .get(&ep)
            .and_then(|s| s.pod.as_ref())
            .and_then(|k| self.cluster.pod(k))
    }

    fn recompute_contribution(&mut self, ep: EndpointId, policy: &ObjectKey) {
        let contrib = match (self.endpoint_pod(ep), self.policies.get(policy)) {
            (Some(pod), Some(ps)) => Self::contribution(ep, pod, &ps.rules),
            _ => Vec::new(),
        };
        self.set_contribution(ep, policy, contrib);
    }

    /// Re-evaluates which policies select an endpoint and rebuilds its
    /// entries from each of them.
    fn refresh_endpoint(&mut self, ep: EndpointId) {
        let Some(pod) = self.endpoint_pod(ep).cloned() else {
            return;
        };
        let now: BTreeSet<ObjectKey> = self
            .cluster
            .policies_in(&pod.key.namespace)
            .filter(|np| np.pod_selector.matches(&pod.labels))
            .map(|np| np.key.clone())
            .collect();
        let before = self
            .endpoint_state
            .get(&ep)
            .map(|s| s.selected_by.clone())
            .unwrap_or_default();
        for p in before.difference(&now) {
            self.set_contribution(ep, p, Vec::new());
            if let Some(ps) = self.policies.get_mut(p) {
                ps.selected.remove(&ep);
            }
        }
        for p in &now {
            self.recompute_contribution(ep, p);
            if let Some(ps) = self.policies.get_mut(p) {
                ps.selected.insert(ep);
            }
        }
        if let Some(s) = self.endpoint_state.get_mut(&ep) {
            s.selected_by = now;
        }
        self.refresh_endpoint_info(ep);
    }

    fn refresh_endpoint_info(&mut self, ep: EndpointId) {
        let Some(state) = self.endpoint_state.get(&ep) else {
            return;
        };
        let Some(pod) = state.pod.as_ref().and_then(|k| self.cluster.pod(k)) else {
            return;
        };
        let isolated = |dir: Direction| {
            state.selected_by.iter().any(|k| {
                self.policies.get(k).is_some_and(|p| match dir {
                    Direction::Ingress => p.ingress,
                    Direction::Egress => p.egress,
                })
            })
        };
        let info = EndpointInfo {
            pod: pod.key.clone(),
            node: pod
                .node
                .as_ref()
                .and_then(|n| self.node_ids.get(n).copied())
                .unwrap_or(0),
            ingress_isolated: isolated(Direction::Ingress),
            egress_isolated: isolated(Direction::Egress),
        };
        self.journal.endpoint(&mut self.tables, ep, Some(info));
    }

    // ---- policy trie entries -------------------------------------------------

    fn set_contribution(
        &mut self,
        ep: EndpointId,
        policy: &ObjectKey,
        new: Vec<(PolicyKey, RuleId)>,
    ) {
        let Some(state) = self.endpoint_state.get_mut(&ep) else {
            return;
        };
        let old = if new.is_empty() {
            state.contrib.remove(policy)
        } else {
            state.contrib.insert(policy.clone(), new.clone())
        };
        let old = old.unwrap_or_default();
        if old == new {
            return;
        }
        for (k, r) in old {
            self.unref_entry(k, r);
        }
        for (k, r) in new {
            let list = self.entries.entry(k).or_default();
            match list.iter_mut().find(|(id, _)| *id == r) {
                Some((_, n)) => *n += 1,
                None => list.push((r, 1)),
            }
            self.sync_entry(k);
        }
    }

    fn unref_entry(&mut self, k: PolicyKey, r: RuleId) {
        if let Some(list) = self.entries.get_mut(&k) {
            if let Some(pos) = list.iter().position(|(id, _)| *id == r) {
                list[pos].1 -= 1;
                if list[pos].1 == 0 {
                    list.swap_remove(pos);
                }
            }
            if list.is_empty() {
                self.entries.remove(&k);
            }
        }
        self.sync_entry(k);
    }

    /// Writes the trie value of a key: absent without contributors, else the
    /// contributing rule that sorts first by (policy, direction, index), so
    /// the reported rule does not depend on the order of events.
    fn sync_entry(&mut self, k: PolicyKey) {
        let value = self.entries.get(&k).and_then(|list| {
            list.iter()
                .map(|(r, _)| *r)
                .min_by(|a, b| {
                    let ia = self.tables.rules.get(a);
                    let ib = self.tables.rules.get(b);
                    ia.cmp(&ib).then(a.cmp(b))
                })
                .map(|rule| PolicyValue { rule })
        });
        self.journal.policy(&mut self.tables, k, value);
    }

    /// Processes the work the last change queued, and returns its diff.
    fn finish(&mut self) -> TableDiff {
        // Rule descriptions can change the preferred rule of an entry, so
        // policies go first, then endpoints.
        while let Some(key) = self.dirty_policies.pop_first() {
            self.refresh_policy(&key);
        }
        while let Some(ep) = self.dirty_endpoints.pop_first() {
            self.refresh_endpoint(ep);
        }
        self.journal.finish(&self.tables)
    }
}

/// Whether a namespace label change flips any namespace selector of a policy.
fn namespace_selection_flips(np: &crate::model::NetworkPolicy, old: &Labels, new: &Labels) -> bool {
    use crate::model::{NamespaceSelection, Peer};
    np.rules(Direction::Ingress)
        .into_iter()
        .chain(np.rules(Direction::Egress))
        .flatten()
        .flat_map(|r| r.peers.iter().flatten())
        .any(|p| match p {
            Peer::Pods {
                namespaces: NamespaceSelection::Matching(s),
                ..
            } => s.matches(old) != s.matches(new),
            _ => false,
        })
}

/// The diff between two table sets.
pub fn diff_tables(before: &Tables, after: &Tables) -> TableDiff {
    fn d<K: Ord + Clone, V: PartialEq + Clone>(
        a: &BTreeMap<K, V>,
        b: &BTreeMap<K, V>,
    ) -> Vec<Change<K, V>> {
        let mut out: Vec<Change<K, V>> = a
            .keys()
            .filter(|k| !b.contains_key(*k))
            .map(|k| Change::Remove(k.clone()))
            .collect();
        out.extend(
            b.iter()
                .filter(|(k, v)| a.get(*k) != Some(*v))
                .map(|(k, v)| Change::Upsert(k.clone(), v.clone())),
        );
        out
    }
    TableDiff {
        ipcache: d(&before.ipcache, &after.ipcache),
        endpoints: d(&before.endpoints, &after.endpoints),
        policy: d(&before.policy, &after.policy),
        identities: d(&before.identities, &after.identities),
        rules: d(&before.rules, &after.rules),
        nodes: d(&before.nodes, &after.nodes),
    }
}

#[cfg(test)]
mod tests;
