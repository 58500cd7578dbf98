//! Reactions to namespace, node and pod changes: identities, the ipcache and
//! endpoint membership. Policies affected are queued, not recompiled here.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::rules::{may_select_identity, may_select_namespace};
use super::{Compiler, EndpointState, LabelKey};
use crate::cluster::AddressOwner;
use crate::labels::Labels;
use crate::model::{NamespaceSelection, NetworkPolicy, ObjectKey, Peer, Pod};

use super::tables::{Identity, IdentityInfo, IpInfo};

impl Compiler {
    /// Creates or frees the namespace identity; returns whether it did.
    fn sync_namespace(&mut self, ns: &str) -> bool {
        let wanted = self.cluster.namespace(ns).is_some() || self.cluster.pods_in(ns).next().is_some();
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

    pub(super) fn namespace_changed(&mut self, ns: &str, old: &Labels) {
        let existence_changed = self.sync_namespace(ns);
        if existence_changed || self.cluster.namespace_labels(ns).as_ref() != old {
            self.cache.get_mut().namespaces.clear();
        }
        self.namespace_effects(ns, old, existence_changed);
        if crate::cluster::audit_label(old) != self.cluster.policy_audited(ns) {
            // Audit mode is a per-endpoint flag: only the entries change.
            let eps: Vec<_> = self.endpoints_by_ns.get(ns).into_iter().flatten().copied().collect();
            for ep in eps {
                self.refresh_endpoint_info(ep);
            }
        }
        if existence_changed {
            // Pods' ipcache entries carry the namespace identity.
            let ips: Vec<IpAddr> = self.cluster.pods_in(ns).flat_map(|p| p.ips.clone()).collect();
            for ip in ips {
                self.refresh_address(ip);
            }
        }
    }

    /// Queues the policies whose namespace-level peers change because the
    /// namespace's identity appeared or disappeared, or its labels changed.
    fn namespace_effects(&mut self, ns: &str, old: &Labels, existence_changed: bool) {
        let new = self.cluster.namespace_labels(ns).into_owned();
        let candidates: Vec<ObjectKey> =
            self.cross_ns_policies.iter().cloned().chain(self.cluster.policies_in(ns).map(|p| p.key.clone())).collect();
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
    }

    fn sync_node(&mut self, name: &str) {
        let wanted = self.cluster.node(name).is_some() || self.cluster.node_has_pods(name);
        match (self.node_ids.get(name).copied(), wanted) {
            (None, true) => {
                let id = self.next_node;
                self.next_node += 1;
                self.node_ids.insert(name.to_string(), id);
                self.journal.node(&mut self.tables, id, Some(name.to_string()));
            }
            (Some(id), false) => {
                self.node_ids.remove(name);
                self.journal.node(&mut self.tables, id, None);
            }
            _ => {}
        }
    }

    pub(super) fn node_changed(&mut self, name: &str, old_addresses: Vec<IpAddr>) {
        self.sync_node(name);
        let new = self.cluster.node(name).map(|n| n.addresses.clone()).unwrap_or_default();
        for ip in old_addresses.into_iter().chain(new) {
            self.refresh_address(ip);
        }
    }

    /// Recomputes the ipcache entry of one address from its owner. Queues
    /// the policies whose per-address rules it affects.
    pub(super) fn refresh_address(&mut self, ip: IpAddr) {
        let owner = match self.cluster.owner(ip) {
            AddressOwner::Pod(p) => Some(Ok(p.key.clone())),
            AddressOwner::Node(n) => Some(Err(n.to_string())),
            AddressOwner::External => None,
        };
        let desired = match owner {
            Some(Ok(pod)) => {
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
                    namespace: self.ns_ids.get(&*pod.namespace).copied().unwrap_or(0),
                    address,
                    node: 0,
                })
            }
            Some(Err(node)) => {
                self.free_address(ip);
                Some(IpInfo { node: self.node_ids.get(&node).copied().unwrap_or(0), ..IpInfo::default() })
            }
            None => {
                self.free_address(ip);
                None
            }
        };
        let before = self.tables.ipcache.get(&ip).copied();
        self.journal.ipcache(&mut self.tables, ip, desired);
        let owner_changed = before.map(|b| (b.identity, b.address)) != desired.map(|d| (d.identity, d.address));
        if owner_changed && !self.named_ipblock_policies.is_empty() {
            let keys: Vec<ObjectKey> = self
                .named_ipblock_policies
                .iter()
                .filter(|k| self.cluster.policy(k).is_some_and(|np| np.prefixes().any(|p| p.contains(&ip))))
                .cloned()
                .collect();
            self.dirty_policies.extend(keys);
        }
    }

    fn free_address(&mut self, ip: IpAddr) {
        if let Some(id) = self.addr_ids.remove(&ip) {
            self.free_identity(id);
        }
    }

    pub(super) fn pod_changed(&mut self, key: &ObjectKey, old: Option<Pod>) {
        let new = self.cluster.pod(key).cloned();
        if self.sync_namespace(&key.namespace) {
            self.cache.get_mut().namespaces.clear();
            let labels = self.cluster.namespace_labels(&key.namespace).into_owned();
            self.namespace_effects(&key.namespace, &labels, true);
        }
        let nodes: BTreeSet<String> = old.iter().chain(new.iter()).filter_map(|p| p.node.clone()).collect();
        for n in nodes {
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
                self.endpoints_by_ns.entry(key.namespace.to_string()).or_default().insert(ep);
                self.endpoint_state.insert(ep, EndpointState { pod: Some(key.clone()), ..Default::default() });
                self.dirty_endpoints.insert(ep);
            }
            (Some(ep), true) => {
                let summary = |p: &Pod| (p.labels.clone(), p.named_ports.clone(), p.node.clone());
                if old.as_ref().map(summary) != new.as_ref().map(summary) {
                    self.dirty_endpoints.insert(ep);
                }
            }
            (None, false) => {}
        }

        // Label identity.
        let new_key: Option<LabelKey> = new
            .as_ref()
            .filter(|p| p.is_policy_endpoint())
            .map(|p| (p.key.namespace.to_string(), p.labels.clone(), p.named_ports.clone()));
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
        let ips: BTreeSet<IpAddr> = old.iter().chain(new.iter()).flat_map(|p| p.ips.iter().copied()).collect();
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
        self.cache.get_mut().pods.remove(&k.0);
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
        self.cache.get_mut().pods.remove(&k.0);
        self.free_identity(id);
        self.identity_changed(k);
    }

    /// A label identity appeared or disappeared: queue the policies whose
    /// peers can select it.
    fn identity_changed(&mut self, k: &LabelKey) {
        let ns_labels = self.cluster.namespace_labels(&k.0).into_owned();
        let candidates: Vec<ObjectKey> = self
            .cross_ns_policies
            .iter()
            .cloned()
            .chain(self.cluster.policies_in(&k.0).map(|p| p.key.clone()))
            .filter(|key| self.cluster.policy(key).is_some_and(|np| may_select_identity(np, &k.0, &ns_labels, &k.1)))
            .collect();
        self.dirty_policies.extend(candidates);
    }
}

/// Whether a namespace label change flips any namespace selector of a policy.
fn namespace_selection_flips(np: &NetworkPolicy, old: &Labels, new: &Labels) -> bool {
    np.all_peers().any(|p| match p {
        Peer::Pods { namespaces: NamespaceSelection::Matching(s), .. } => s.matches(old) != s.matches(new),
        _ => false,
    })
}
