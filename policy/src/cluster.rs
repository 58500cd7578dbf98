//! The cluster state index: the objects policy depends on, keyed and
//! cross-indexed. A pure state machine: objects are applied and deleted, and
//! queries answer from memory. Both the reference evaluator and the compiler
//! read it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap as HashMap;

use crate::labels::Labels;
use crate::manifest::Object;
use crate::model::{Namespace, NetworkPolicy, Node, ObjectKey, Pod};

/// A reference to an object, for deletion.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectRef {
    /// A Namespace by name.
    Namespace(String),
    /// A Pod.
    Pod(ObjectKey),
    /// A Node by name.
    Node(String),
    /// A NetworkPolicy.
    NetworkPolicy(ObjectKey),
}

impl Object {
    /// The reference that deletes this object.
    pub fn reference(&self) -> ObjectRef {
        match self {
            Object::Namespace(n) => ObjectRef::Namespace(n.name.clone()),
            Object::Pod(p) => ObjectRef::Pod(p.key.clone()),
            Object::Node(n) => ObjectRef::Node(n.name.clone()),
            Object::NetworkPolicy(p) => ObjectRef::NetworkPolicy(p.key.clone()),
        }
    }
}

/// Who an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressOwner<'a> {
    /// A (non-host-network) pod.
    Pod(&'a Pod),
    /// A node (a Node address, or a host-network pod's address).
    Node(&'a str),
    /// Nothing the cluster knows: an external address.
    External,
}

/// The Namespace label that puts a namespace's NetworkPolicy in audit mode
/// (value `"true"`): what its policies deny on its pods' side of a flow is
/// let through and reported (flow-log verdict `audit`), so a team can roll
/// out policies one namespace at a time. Only the exact value `"true"`
/// counts; anything else enforces, so a typo never opens traffic.
pub const POLICY_AUDIT_LABEL: &str = "ztunnel.io/policy-audit";

/// Whether a namespace's labels ask for audit mode.
pub fn audit_label(labels: &Labels) -> bool {
    labels.get(POLICY_AUDIT_LABEL).is_some_and(|v| v == "true")
}

/// The indexed cluster state.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    namespaces: HashMap<String, Namespace>,
    /// Pods by namespace, then name. Hashed at both levels: the evaluator
    /// looks up two pods per packet, and ordered maps of 50,000 pods cost a
    /// string comparison (often a cache miss) per tree level; listings sort.
    pods: HashMap<String, HashMap<String, Pod>>,
    nodes: BTreeMap<String, Node>,
    /// Policies by namespace, then name.
    policies: HashMap<String, BTreeMap<String, NetworkPolicy>>,
    /// Owners of each pod address. More than one pod can briefly claim an
    /// address (a terminating pod and its replacement); the smallest key wins
    /// so the answer does not depend on the order of events.
    pod_ips: BTreeMap<IpAddr, BTreeSet<ObjectKey>>,
    /// Node of each node address (Node objects' addresses and host-network
    /// pods' addresses); smallest node name wins on conflict.
    node_ips: BTreeMap<IpAddr, BTreeSet<(String, Option<ObjectKey>)>>,
    /// Number of pods scheduled on each node.
    pods_per_node: BTreeMap<String, usize>,
}

impl Cluster {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a cluster from objects.
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut c = Self::new();
        for o in objects {
            c.apply(o);
        }
        c
    }

    /// Adds or replaces an object.
    pub fn apply(&mut self, obj: Object) {
        match obj {
            Object::Namespace(ns) => {
                self.namespaces.insert(ns.name.clone(), ns);
            }
            Object::Pod(pod) => {
                self.remove_pod_index(&pod.key);
                self.index_pod(&pod);
                self.pods.entry(pod.key.namespace.to_string()).or_default().insert(pod.key.name.to_string(), pod);
            }
            Object::Node(node) => {
                self.remove_node_index(&node.name);
                for ip in &node.addresses {
                    self.node_ips.entry(*ip).or_default().insert((node.name.clone(), None));
                }
                self.nodes.insert(node.name.clone(), node);
            }
            Object::NetworkPolicy(np) => {
                self.policies.entry(np.key.namespace.to_string()).or_default().insert(np.key.name.to_string(), np);
            }
        }
    }

    /// Removes an object; returns it if it was present.
    pub fn delete(&mut self, r: &ObjectRef) -> Option<Object> {
        match r {
            ObjectRef::Namespace(n) => self.namespaces.remove(n).map(Object::Namespace),
            ObjectRef::Pod(k) => {
                self.remove_pod_index(k);
                let inner = self.pods.get_mut(&*k.namespace)?;
                let pod = inner.remove(&*k.name);
                if inner.is_empty() {
                    self.pods.remove(&*k.namespace);
                }
                pod.map(Object::Pod)
            }
            ObjectRef::Node(n) => {
                self.remove_node_index(n);
                self.nodes.remove(n).map(Object::Node)
            }
            ObjectRef::NetworkPolicy(k) => remove_nested(&mut self.policies, k).map(Object::NetworkPolicy),
        }
    }

    fn index_pod(&mut self, pod: &Pod) {
        if let Some(node) = &pod.node {
            *self.pods_per_node.entry(node.clone()).or_default() += 1;
        }
        for ip in &pod.ips {
            if pod.host_network {
                if let Some(node) = &pod.node {
                    self.node_ips.entry(*ip).or_default().insert((node.clone(), Some(pod.key.clone())));
                }
            } else {
                self.pod_ips.entry(*ip).or_default().insert(pod.key.clone());
            }
        }
    }

    fn remove_pod_index(&mut self, key: &ObjectKey) {
        let Some((old_ips, old_node)) = self.pod(key).map(|p| (p.ips.clone(), p.node.clone())) else {
            return;
        };
        if let Some(node) = old_node
            && let Some(n) = self.pods_per_node.get_mut(&node)
        {
            *n -= 1;
            if *n == 0 {
                self.pods_per_node.remove(&node);
            }
        }
        for ip in &old_ips {
            if let Some(set) = self.pod_ips.get_mut(ip) {
                set.remove(key);
                if set.is_empty() {
                    self.pod_ips.remove(ip);
                }
            }
            if let Some(set) = self.node_ips.get_mut(ip) {
                set.retain(|(_, p)| p.as_ref() != Some(key));
                if set.is_empty() {
                    self.node_ips.remove(ip);
                }
            }
        }
    }

    fn remove_node_index(&mut self, name: &str) {
        let Some(old) = self.nodes.get(name) else {
            return;
        };
        for ip in &old.addresses {
            if let Some(set) = self.node_ips.get_mut(ip) {
                set.retain(|(n, p)| !(n == name && p.is_none()));
                if set.is_empty() {
                    self.node_ips.remove(ip);
                }
            }
        }
    }

    /// A namespace object, if one was applied.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// The labels of a namespace: its object's labels, or only the name label
    /// when there is no Namespace object.
    pub fn namespace_labels(&self, name: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(ns) => Cow::Borrowed(&ns.labels),
            None => Cow::Owned(Namespace::default_labels(name)),
        }
    }

    /// Whether NetworkPolicy in namespace `name` is audited rather than
    /// enforced: its Namespace carries [`POLICY_AUDIT_LABEL`]` = "true"`.
    pub fn policy_audited(&self, name: &str) -> bool {
        self.namespaces.get(name).is_some_and(|ns| audit_label(&ns.labels))
    }

    /// Names of every namespace that has an object or a pod.
    pub fn namespace_names(&self) -> BTreeSet<&str> {
        self.namespaces.keys().chain(self.pods.keys()).map(String::as_str).collect()
    }

    /// A pod.
    pub fn pod(&self, key: &ObjectKey) -> Option<&Pod> {
        self.pods.get(&*key.namespace).and_then(|m| m.get(&*key.name))
    }

    /// All pods, ordered by key.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        sorted(&self.pods).flat_map(sorted_by_name)
    }

    /// Pods of one namespace, ordered by name.
    pub fn pods_in(&self, ns: &str) -> impl Iterator<Item = &Pod> {
        self.pods.get(ns).into_iter().flat_map(sorted_by_name)
    }

    /// A node.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// All nodes.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// A policy.
    pub fn policy(&self, key: &ObjectKey) -> Option<&NetworkPolicy> {
        self.policies.get(&*key.namespace).and_then(|m| m.get(&*key.name))
    }

    /// All policies, ordered by key.
    pub fn policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        sorted(&self.policies).flat_map(BTreeMap::values)
    }

    /// Policies of one namespace, ordered by name.
    pub fn policies_in(&self, ns: &str) -> impl Iterator<Item = &NetworkPolicy> {
        self.policies.get(ns).into_iter().flat_map(BTreeMap::values)
    }

    /// The pod that owns `ip`, if a (non-host-network) pod does.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pod_ips.get(&ip).and_then(|s| s.first()).and_then(|k| self.pod(k))
    }

    /// The node that owns `ip`, if it is a node address.
    pub fn node_by_ip(&self, ip: IpAddr) -> Option<&str> {
        self.node_ips.get(&ip).and_then(|s| s.first()).map(|(n, _)| n.as_str())
    }

    /// Who owns an address. A pod address takes precedence over a node
    /// address (a misconfigured Node listing a pod IP must not turn the pod
    /// into host traffic).
    pub fn owner(&self, ip: IpAddr) -> AddressOwner<'_> {
        if let Some(p) = self.pod_by_ip(ip) {
            AddressOwner::Pod(p)
        } else if let Some(n) = self.node_by_ip(ip) {
            AddressOwner::Node(n)
        } else {
            AddressOwner::External
        }
    }

    /// Every pod address with its owner, ordered by address.
    pub fn pod_addresses(&self) -> impl Iterator<Item = (IpAddr, &Pod)> {
        self.pod_ips.iter().filter_map(|(ip, owners)| owners.first().and_then(|k| self.pod(k)).map(|p| (*ip, p)))
    }

    /// Every node address with its node, ordered by address (pod addresses
    /// excluded, see [`Cluster::owner`]).
    pub fn node_addresses(&self) -> impl Iterator<Item = (IpAddr, &str)> {
        self.node_ips
            .iter()
            .filter(|(ip, _)| !self.pod_ips.contains_key(ip))
            .filter_map(|(ip, owners)| owners.first().map(|(n, _)| (*ip, n.as_str())))
    }

    /// The names of every node that has a Node object or a pod scheduled on it.
    pub fn node_names(&self) -> BTreeSet<&str> {
        self.nodes.keys().map(String::as_str).chain(self.pods().filter_map(|p| p.node.as_deref())).collect()
    }

    /// Whether any pod is scheduled on `node`.
    pub fn node_has_pods(&self, node: &str) -> bool {
        self.pods_per_node.contains_key(node)
    }

    /// Pod addresses inside `net`, with their owners, in address order.
    pub fn pod_addresses_in(&self, net: IpNet) -> impl Iterator<Item = (IpAddr, &Pod)> {
        self.pod_ips
            .range(net.network()..=net.broadcast())
            .filter_map(|(ip, owners)| owners.first().and_then(|k| self.pod(k)).map(|p| (*ip, p)))
    }

    /// Node addresses inside `net` (pod addresses excluded).
    pub fn node_addresses_in(&self, net: IpNet) -> impl Iterator<Item = (IpAddr, &str)> {
        self.node_ips
            .range(net.network()..=net.broadcast())
            .filter(|(ip, _)| !self.pod_ips.contains_key(ip))
            .filter_map(|(ip, owners)| owners.first().map(|(n, _)| (*ip, n.as_str())))
    }

    /// Whether `ip` is an address of node `node`.
    pub fn is_node_address(&self, node: &str, ip: IpAddr) -> bool {
        self.owner(ip) == AddressOwner::Node(node)
    }
}

fn remove_nested<V>(map: &mut HashMap<String, BTreeMap<String, V>>, key: &ObjectKey) -> Option<V> {
    let inner = map.get_mut(&*key.namespace)?;
    let v = inner.remove(&*key.name);
    if inner.is_empty() {
        map.remove(&*key.namespace);
    }
    v
}

/// The pods of one namespace in name order.
fn sorted_by_name(pods: &HashMap<String, Pod>) -> std::vec::IntoIter<&Pod> {
    let mut v: Vec<&Pod> = pods.values().collect();
    v.sort_unstable_by(|a, b| a.key.name.cmp(&b.key.name));
    v.into_iter()
}

/// The values of a namespace-keyed map in namespace order, so that listings
/// do not depend on hashing.
fn sorted<V>(map: &HashMap<String, V>) -> impl Iterator<Item = &V> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    keys.into_iter().filter_map(move |k| map.get(k))
}
