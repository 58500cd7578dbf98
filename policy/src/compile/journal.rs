//! Change tracking for the compiled tables: every write goes through here,
//! the first write to a key remembers its old value, and [`Journal::finish`]
//! emits only the keys whose final value differs. A burst of writes that ends
//! where it started therefore produces no diff at all.

use std::collections::BTreeMap;

use std::net::IpAddr;

use super::tables::{
    Change, CidrKey, EndpointId, EndpointInfo, Identity, IdentityInfo, IpInfo, NodeId, PolicyKey, PolicyValue, RuleId,
    RuleInfo, TableDiff, Tables,
};

#[derive(Debug, Default)]
pub(crate) struct Journal {
    ipcache: BTreeMap<IpAddr, Option<IpInfo>>,
    cidr: BTreeMap<CidrKey, Option<Identity>>,
    endpoints: BTreeMap<EndpointId, Option<EndpointInfo>>,
    policy: BTreeMap<PolicyKey, Option<PolicyValue>>,
    identities: BTreeMap<Identity, Option<IdentityInfo>>,
    rules: BTreeMap<RuleId, Option<RuleInfo>>,
    nodes: BTreeMap<NodeId, Option<String>>,
}

fn write<K: Ord + Clone, V: Clone>(map: &mut BTreeMap<K, V>, log: &mut BTreeMap<K, Option<V>>, k: K, v: Option<V>) {
    log.entry(k.clone()).or_insert_with(|| map.get(&k).cloned());
    match v {
        Some(v) => {
            map.insert(k, v);
        }
        None => {
            map.remove(&k);
        }
    }
}

fn drain<K: Ord + Clone, V: Clone + PartialEq>(
    map: &BTreeMap<K, V>,
    log: &mut BTreeMap<K, Option<V>>,
) -> Vec<Change<K, V>> {
    let mut out = Vec::new();
    for (k, before) in std::mem::take(log) {
        let now = map.get(&k);
        if now == before.as_ref() {
            continue;
        }
        out.push(match now {
            Some(v) => Change::Upsert(k, v.clone()),
            None => Change::Remove(k),
        });
    }
    out
}

impl Journal {
    pub(crate) fn ipcache(&mut self, t: &mut Tables, k: IpAddr, v: Option<IpInfo>) {
        write(&mut t.ipcache, &mut self.ipcache, k, v);
    }
    pub(crate) fn cidr(&mut self, t: &mut Tables, k: CidrKey, v: Option<Identity>) {
        write(&mut t.cidr, &mut self.cidr, k, v);
    }
    pub(crate) fn endpoint(&mut self, t: &mut Tables, k: EndpointId, v: Option<EndpointInfo>) {
        write(&mut t.endpoints, &mut self.endpoints, k, v);
    }
    pub(crate) fn policy(&mut self, t: &mut Tables, k: PolicyKey, v: Option<PolicyValue>) {
        write(&mut t.policy, &mut self.policy, k, v);
    }
    pub(crate) fn identity(&mut self, t: &mut Tables, k: Identity, v: Option<IdentityInfo>) {
        write(&mut t.identities, &mut self.identities, k, v);
    }
    pub(crate) fn rule(&mut self, t: &mut Tables, k: RuleId, v: Option<RuleInfo>) {
        write(&mut t.rules, &mut self.rules, k, v);
    }
    pub(crate) fn node(&mut self, t: &mut Tables, k: NodeId, v: Option<String>) {
        write(&mut t.nodes, &mut self.nodes, k, v);
    }

    /// The net effect of everything written since the last call. Descriptions
    /// (identities, rules, nodes) come first in the diff's own fields so a
    /// consumer can apply them before the entries that refer to them.
    pub(crate) fn finish(&mut self, t: &Tables) -> TableDiff {
        TableDiff {
            ipcache: drain(&t.ipcache, &mut self.ipcache),
            cidr: drain(&t.cidr, &mut self.cidr),
            endpoints: drain(&t.endpoints, &mut self.endpoints),
            policy: drain(&t.policy, &mut self.policy),
            identities: drain(&t.identities, &mut self.identities),
            rules: drain(&t.rules, &mut self.rules),
            nodes: drain(&t.nodes, &mut self.nodes),
        }
    }
}
