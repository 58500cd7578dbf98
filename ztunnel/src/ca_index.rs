//! The CA's view of which node runs which identities, from the same
//! object source the node agents use (a manifest directory, or the API
//! server's pods).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use policy::Cluster;

use crate::agent::source::{Change, ObjectSource, PolicyKinds};
use crate::kube_source::SourceSpec;

type Triples = HashSet<(String, String, String)>;

/// (node, namespace, service account) of every scheduled pod, refreshed by
/// a polling thread. Invalid manifests keep their last good objects (the
/// source guarantees it), so a typo never revokes a node's identities.
pub struct ManifestIndex {
    current: Arc<RwLock<Triples>>,
}

fn triples(c: &Cluster) -> Triples {
    c.pods()
        .filter_map(|p| p.node.as_ref().map(|n| (n.clone(), p.key.namespace.to_string(), p.service_account.clone())))
        .collect()
}

impl ManifestIndex {
    /// Reads the source once, then keeps polling it every `poll_ms`.
    pub fn start(spec: &SourceSpec, poll_ms: u64) -> anyhow::Result<Self> {
        spec.validate()?;
        let mut source = crate::kube_source::open::<PolicyKinds>(spec, crate::kube_source::pod_resources())?;
        let mut cluster = Cluster::new();
        let apply = |cluster: &mut Cluster, source: &mut Box<dyn ObjectSource<PolicyKinds>>| -> bool {
            let poll = source.poll();
            for e in &poll.errors {
                tracing::warn!(error = %e, "manifest rejected; its last good objects stay in use");
            }
            let changed = !poll.changes.is_empty();
            for ch in poll.changes {
                match ch {
                    Change::Apply(o) => cluster.apply(o),
                    Change::Delete(r) => {
                        cluster.delete(&r);
                    }
                }
            }
            changed
        };
        apply(&mut cluster, &mut source);
        let current = Arc::new(RwLock::new(triples(&cluster)));
        let shared = current.clone();
        std::thread::Builder::new().name("ca-manifests".into()).spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(poll_ms));
                if apply(&mut cluster, &mut source) {
                    let t = triples(&cluster);
                    match shared.write() {
                        Ok(mut w) => *w = t,
                        Err(e) => *e.into_inner() = t,
                    }
                }
            }
        })?;
        Ok(Self { current })
    }
}

impl ca::WorkloadIndex for ManifestIndex {
    fn runs_on(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        let key = (node.to_string(), namespace.to_string(), service_account.to_string());
        match self.current.read() {
            Ok(s) => s.contains(&key),
            Err(e) => e.into_inner().contains(&key),
        }
    }
}
