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
//! - **ipcache**: pod and node addresses → their identities ([`IpInfo`]).
//! - **cidr trie**, per local endpoint and direction: the `ipBlock` prefixes
//!   of the policies selecting it → prefix identity. Keeping these per
//!   endpoint means a `0.0.0.0/0` block in one namespace is one entry per
//!   selected pod, however many other prefixes other policies name.
//! - **policy trie**, per local endpoint and direction: (peer identity,
//!   protocol, port block) → rule.
//!
//! Compilation is incremental: [`Compiler::apply`] and [`Compiler::delete`]
//! change the cluster by one object and return the [`TableDiff`] that takes
//! the previous tables to the new ones. Each change recomputes only what it
//! can affect: the policies whose peer sets can change and the endpoints
//! whose selecting policies can change.

mod journal;
mod objects;
mod policies;
mod ports;
mod rules;
pub mod tables;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::rc::Rc;

use ipnet::IpNet;
use rustc_hash::FxHashMap as HashMap;

use self::journal::Journal;
pub use self::ports::{PortPrefix, range_to_prefixes};
use self::rules::RuleState;
pub use self::tables::*;
use crate::cluster::{Cluster, ObjectRef};
use crate::labels::{Labels, Selector};
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

/// Memoised selector results, valid until the namespaces or the label
/// identities they were computed from change.
#[derive(Debug, Default)]
struct SelectorCache {
    /// Namespace selector → namespaces it matches.
    namespaces: HashMap<Selector, Rc<Vec<String>>>,
    /// Namespace → pod selector → label identities of that namespace it matches.
    pods: HashMap<String, HashMap<Selector, Rc<Vec<Identity>>>>,
}

/// (namespace, labels, named ports): what makes pods share a label identity.
type LabelKey = (String, Labels, Vec<NamedPort>);

#[derive(Debug)]
struct PolicyState {
    rules: Vec<RuleState>,
    selected: BTreeSet<EndpointId>,
    /// All prefixes of the policy (for reference counts of CIDR identities).
    prefixes: BTreeSet<IpNet>,
    /// Prefixes per direction (ingress, egress), for endpoints' cidr tries.
    dir_prefixes: [BTreeSet<IpNet>; 2],
    ingress: bool,
    egress: bool,
}

#[derive(Debug, Default)]
struct EndpointState {
    pod: Option<ObjectKey>,
    selected_by: BTreeSet<ObjectKey>,
    /// The endpoint's cidr trie prefixes (ingress, egress).
    prefixes: [BTreeSet<IpNet>; 2],
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
    /// Identity and reference count (policies naming it) of each prefix.
    cidr_ids: BTreeMap<IpNet, (Identity, u32)>,
    node_ids: BTreeMap<String, NodeId>,
    endpoint_ids: HashMap<ObjectKey, EndpointId>,
    endpoints_by_ns: BTreeMap<String, BTreeSet<EndpointId>>,
    endpoint_state: HashMap<EndpointId, EndpointState>,
    /// Contributors of each policy-trie key: (rule, count).
    entries: HashMap<PolicyKey, Vec<(RuleId, u32)>>,
    policies: HashMap<ObjectKey, PolicyState>,
    /// Policies whose peers can select pods of other namespaces.
    cross_ns_policies: BTreeSet<ObjectKey>,
    /// Policies with egress rules combining `ipBlock` and named ports.
    named_ipblock_policies: BTreeSet<ObjectKey>,
    dirty_policies: BTreeSet<ObjectKey>,
    dirty_endpoints: BTreeSet<EndpointId>,
    cache: RefCell<SelectorCache>,
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
            label_ids: HashMap::default(),
            labels_by_ns: BTreeMap::new(),
            pod_label_id: HashMap::default(),
            ns_ids: BTreeMap::new(),
            addr_ids: HashMap::default(),
            cidr_ids: BTreeMap::new(),
            node_ids: BTreeMap::new(),
            endpoint_ids: HashMap::default(),
            endpoints_by_ns: BTreeMap::new(),
            endpoint_state: HashMap::default(),
            entries: HashMap::default(),
            policies: HashMap::default(),
            cross_ns_policies: BTreeSet::new(),
            named_ipblock_policies: BTreeSet::new(),
            dirty_policies: BTreeSet::new(),
            dirty_endpoints: BTreeSet::new(),
            cache: RefCell::default(),
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

    /// Makes every number allocated from now on larger than the given ones.
    /// A restarted agent calls this with the largest numbers found in the
    /// maps its predecessor left, so no stale entry can match a new number.
    pub fn reserve_numbers(&mut self, identity: Identity, endpoint: EndpointId, rule: RuleId) {
        self.next_identity = self.next_identity.max(identity.saturating_add(1)).max(FIRST_ALLOCATED);
        self.next_endpoint = self.next_endpoint.max(endpoint.saturating_add(1));
        self.next_rule = self.next_rule.max(rule.saturating_add(1));
    }

    /// The compiled tables.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The policies that isolate endpoint `ep` in direction `dir` (select
    /// it and have rules of that direction): the ones a denial there comes
    /// from, for flow logs.
    pub fn isolated_by(&self, ep: EndpointId, dir: Direction) -> impl Iterator<Item = &ObjectKey> {
        self.endpoint_state.get(&ep).into_iter().flat_map(|s| s.selected_by.iter()).filter(move |k| {
            self.policies.get(*k).is_some_and(|p| match dir {
                Direction::Ingress => p.ingress,
                Direction::Egress => p.egress,
            })
        })
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
                let old = self.cluster.node(&name).map(|n| n.addresses.clone()).unwrap_or_default();
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
                let old = self.cluster.node(name).map(|n| n.addresses.clone()).unwrap_or_default();
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

    /// Processes the work the last change queued, and returns its diff.
    fn finish(&mut self) -> TableDiff {
        // Policies first: an endpoint refresh reads their compiled rules.
        while let Some(key) = self.dirty_policies.pop_first() {
            self.refresh_policy(&key);
        }
        while let Some(ep) = self.dirty_endpoints.pop_first() {
            self.refresh_endpoint(ep);
        }
        self.journal.finish(&self.tables)
    }
}

/// The diff between two table sets.
pub fn diff_tables(before: &Tables, after: &Tables) -> TableDiff {
    fn d<K: Ord + Clone, V: PartialEq + Clone>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> Vec<Change<K, V>> {
        let mut out: Vec<Change<K, V>> =
            a.keys().filter(|k| !b.contains_key(*k)).map(|k| Change::Remove(k.clone())).collect();
        out.extend(b.iter().filter(|(k, v)| a.get(*k) != Some(*v)).map(|(k, v)| Change::Upsert(k.clone(), v.clone())));
        out
    }
    TableDiff {
        ipcache: d(&before.ipcache, &after.ipcache),
        cidr: d(&before.cidr, &after.cidr),
        endpoints: d(&before.endpoints, &after.endpoints),
        policy: d(&before.policy, &after.policy),
        identities: d(&before.identities, &after.identities),
        rules: d(&before.rules, &after.rules),
        nodes: d(&before.nodes, &after.nodes),
    }
}

#[cfg(test)]
mod tests;
