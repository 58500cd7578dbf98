//! Reactions to policy changes, and the per-endpoint bookkeeping that turns
//! compiled rules into cidr-trie and policy-trie entries.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::rules::{dir_index, has_named_ipblock_egress, is_cross_namespace};
use super::tables::{CidrKey, EndpointId, EndpointInfo, IdentityInfo, PolicyKey, PolicyValue, RuleId, RuleInfo};
use super::{Compiler, PolicyState};
use crate::model::{Direction, ObjectKey, Pod};

const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

impl Compiler {
    pub(super) fn policy_changed(&mut self, key: &ObjectKey) {
        let new = self.cluster.policy(key).cloned();
        let old_prefixes = self.policies.get(key).map(|s| s.prefixes.clone()).unwrap_or_default();
        let new_prefixes: BTreeSet<IpNet> = new.iter().flat_map(|np| np.prefixes()).collect();

        self.cross_ns_policies.remove(key);
        self.named_ipblock_policies.remove(key);
        if let Some(np) = &new {
            if is_cross_namespace(np) {
                self.cross_ns_policies.insert(key.clone());
            }
            if has_named_ipblock_egress(np) {
                self.named_ipblock_policies.insert(key.clone());
            }
        }

        // Reference counts of prefix identities.
        for q in new_prefixes.difference(&old_prefixes) {
            match self.cidr_ids.get_mut(q) {
                Some((_, n)) => *n += 1,
                None => {
                    let id = self.alloc_identity(IdentityInfo::Cidr(*q));
                    self.cidr_ids.insert(*q, (id, 1));
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
                let Some(state) = self.policies.remove(key) else {
                    return;
                };
                let had_prefixes = state.dir_prefixes.iter().any(|s| !s.is_empty());
                for ep in &state.selected {
                    self.deselect(*ep, key, had_prefixes);
                }
                for r in state.rules {
                    self.journal.rule(&mut self.tables, r.id, None);
                }
            }
        }
    }

    /// Recompiles a policy and its contribution to every endpoint it selects
    /// or selected.
    pub(super) fn refresh_policy(&mut self, key: &ObjectKey) {
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
        for dir in DIRECTIONS {
            for (i, rule) in np.rules(dir).into_iter().flatten().enumerate() {
                let id = match old_ids.remove(&(dir, i)) {
                    Some(id) => id,
                    None => {
                        let id = self.next_rule;
                        self.next_rule += 1;
                        id
                    }
                };
                let info = RuleInfo { policy: key.clone(), direction: dir, index: i };
                self.journal.rule(&mut self.tables, id, Some(info));
                rules.push(self.compile_rule(&np, dir, rule, id));
            }
        }
        for id in old_ids.into_values() {
            self.journal.rule(&mut self.tables, id, None);
        }
        let selected: BTreeSet<EndpointId> = self
            .endpoints_by_ns
            .get(&*key.namespace)
            .into_iter()
            .flatten()
            .copied()
            .filter(|ep| self.endpoint_pod(*ep).is_some_and(|p| np.pod_selector.matches(&p.labels)))
            .collect();
        let dir_prefixes = DIRECTIONS.map(|d| np.prefixes_of(d).collect::<BTreeSet<_>>());
        let (old_rules, old_selected, old_dir_prefixes) = match old {
            Some(o) => (Some(o.rules), o.selected, o.dir_prefixes),
            None => (None, BTreeSet::new(), Default::default()),
        };
        let rules_same = old_rules.as_ref() == Some(&rules);
        let has_prefixes = dir_prefixes.iter().any(|s| !s.is_empty());
        let prefixes_changed = old_dir_prefixes != dir_prefixes;
        let had_prefixes = old_dir_prefixes.iter().any(|s| !s.is_empty());

        for ep in old_selected.difference(&selected) {
            self.deselect(*ep, key, had_prefixes);
        }
        self.policies.insert(
            key.clone(),
            PolicyState {
                rules,
                selected: selected.clone(),
                prefixes: np.prefixes().collect(),
                dir_prefixes,
                ingress: np.ingress.is_some(),
                egress: np.egress.is_some(),
            },
        );
        for ep in &selected {
            let newly = !old_selected.contains(ep);
            if (newly && has_prefixes) || (!newly && prefixes_changed) {
                // The endpoint's cidr trie changes: rebuild the endpoint.
                self.dirty_endpoints.insert(*ep);
                continue;
            }
            if newly || !rules_same {
                self.recompute_contribution(*ep, key);
                if let Some(es) = self.endpoint_state.get_mut(ep) {
                    es.selected_by.insert(key.clone());
                }
            }
            // Policy types can change without any rule changing.
            self.refresh_endpoint_info(*ep);
        }
    }

    /// A policy no longer selects an endpoint: drop its entries, and rebuild
    /// the endpoint's cidr trie if the policy contributed prefixes to it.
    fn deselect(&mut self, ep: EndpointId, policy: &ObjectKey, had_prefixes: bool) {
        self.set_contribution(ep, policy, Vec::new());
        if let Some(es) = self.endpoint_state.get_mut(&ep) {
            es.selected_by.remove(policy);
        }
        if had_prefixes {
            self.dirty_endpoints.insert(ep);
        } else {
            self.refresh_endpoint_info(ep);
        }
    }

    pub(super) fn endpoint_pod(&self, ep: EndpointId) -> Option<&Pod> {
        self.endpoint_state.get(&ep).and_then(|s| s.pod.as_ref()).and_then(|k| self.cluster.pod(k))
    }

    fn recompute_contribution(&mut self, ep: EndpointId, policy: &ObjectKey) {
        let contrib = match (self.endpoint_pod(ep), self.policies.get(policy), self.endpoint_state.get(&ep)) {
            (Some(pod), Some(ps), Some(es)) => self.contribution(ep, pod, &ps.rules, &es.prefixes),
            _ => Vec::new(),
        };
        self.set_contribution(ep, policy, contrib);
    }

    /// Re-evaluates which policies select an endpoint, rebuilds its cidr trie
    /// and its entries from each selecting policy.
    pub(super) fn refresh_endpoint(&mut self, ep: EndpointId) {
        let Some(pod) = self.endpoint_pod(ep).cloned() else {
            return;
        };
        let now: BTreeSet<ObjectKey> = self
            .cluster
            .policies_in(&pod.key.namespace)
            .filter(|np| np.pod_selector.matches(&pod.labels))
            .map(|np| np.key.clone())
            .collect();
        let mut prefixes: [BTreeSet<IpNet>; 2] = Default::default();
        for p in &now {
            if let Some(ps) = self.policies.get(p) {
                for (mine, theirs) in prefixes.iter_mut().zip(&ps.dir_prefixes) {
                    mine.extend(theirs.iter().copied());
                }
            }
        }
        let (before, old_prefixes) = match self.endpoint_state.get_mut(&ep) {
            Some(s) => (s.selected_by.clone(), std::mem::replace(&mut s.prefixes, prefixes.clone())),
            None => return,
        };
        for d in DIRECTIONS {
            let i = dir_index(d);
            for q in old_prefixes[i].difference(&prefixes[i]) {
                self.journal.cidr(&mut self.tables, CidrKey { endpoint: ep, direction: d, prefix: *q }, None);
            }
            for q in &prefixes[i] {
                let id = self.cidr_ids.get(q).map(|(id, _)| *id);
                self.journal.cidr(&mut self.tables, CidrKey { endpoint: ep, direction: d, prefix: *q }, id);
            }
        }
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

    pub(super) fn remove_endpoint(&mut self, ep: EndpointId) {
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
        for d in DIRECTIONS {
            for q in &state.prefixes[dir_index(d)] {
                self.journal.cidr(&mut self.tables, CidrKey { endpoint: ep, direction: d, prefix: *q }, None);
            }
        }
        if let Some(pod) = state.pod {
            self.endpoint_ids.remove(&pod);
            if let Some(set) = self.endpoints_by_ns.get_mut(&*pod.namespace) {
                set.remove(&ep);
                if set.is_empty() {
                    self.endpoints_by_ns.remove(&*pod.namespace);
                }
            }
        }
        self.dirty_endpoints.remove(&ep);
        self.journal.endpoint(&mut self.tables, ep, None);
    }

    pub(super) fn refresh_endpoint_info(&mut self, ep: EndpointId) {
        let Some(state) = self.endpoint_state.get(&ep) else {
            return;
        };
        let Some(pod) = state.pod.as_ref().and_then(|k| self.cluster.pod(k)) else {
            return;
        };
        let isolated = |dir: Direction| self.isolated_by(ep, dir).next().is_some();
        let info = EndpointInfo {
            pod: pod.key.clone(),
            node: pod.node.as_ref().and_then(|n| self.node_ids.get(n).copied()).unwrap_or(0),
            ingress_isolated: isolated(Direction::Ingress),
            egress_isolated: isolated(Direction::Egress),
            audit: self.cluster.policy_audited(&pod.key.namespace),
        };
        self.journal.endpoint(&mut self.tables, ep, Some(info));
    }

    /// Replaces the entries one policy gives one endpoint, adjusting the
    /// reference counts of the shared trie keys.
    pub(super) fn set_contribution(&mut self, ep: EndpointId, policy: &ObjectKey, new: Vec<(PolicyKey, RuleId)>) {
        let Some(state) = self.endpoint_state.get_mut(&ep) else {
            return;
        };
        let old = state.contrib.remove(policy).unwrap_or_default();
        if old == new {
            if !new.is_empty() {
                state.contrib.insert(policy.clone(), new);
            }
            return;
        }
        for (k, r) in old {
            self.unref_entry(k, r);
        }
        for &(k, r) in &new {
            let list = self.entries.entry(k).or_default();
            match list.iter_mut().find(|(id, _)| *id == r) {
                Some((_, n)) => *n += 1,
                None => list.push((r, 1)),
            }
            self.sync_entry(k);
        }
        if !new.is_empty()
            && let Some(state) = self.endpoint_state.get_mut(&ep)
        {
            state.contrib.insert(policy.clone(), new);
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
        let value = match self.entries.get(&k).map(Vec::as_slice) {
            None | Some([]) => None,
            Some([(only, _)]) => Some(PolicyValue { rule: *only }),
            Some(list) => list
                .iter()
                .map(|(r, _)| *r)
                .min_by(|a, b| {
                    let ia = self.tables.rules.get(a);
                    let ib = self.tables.rules.get(b);
                    ia.cmp(&ib).then(a.cmp(b))
                })
                .map(|rule| PolicyValue { rule }),
        };
        self.journal.policy(&mut self.tables, k, value);
    }
}
