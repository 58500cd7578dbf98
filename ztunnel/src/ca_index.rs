//! The CA's view of which node runs which identities, from the same
//! object source the node agents use (a manifest directory, or the API
//! server's pods).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use policy::{Object, ObjectRef};

use crate::agent::source::{Change, ObjectSource, PolicyKinds};
use crate::kube_source::SourceSpec;

type Triple = (String, String, String);

/// (node, namespace, service account) of every scheduled pod, refreshed by
/// a polling thread and updated per pod (no cluster copy: a large cluster
/// costs one small entry per pod). Invalid objects keep their last good
/// version (the source guarantees it), so a typo never revokes a node's
/// identities.
pub struct ManifestIndex {
    current: Arc<RwLock<HashMap<Triple, usize>>>,
}

#[derive(Default)]
struct Pods {
    by_pod: HashMap<policy::ObjectKey, Triple>,
}

impl Pods {
    /// Applies a poll's changes to `counts`; returns whether any pod changed.
    fn apply(&mut self, changes: Vec<Change>, counts: &RwLock<HashMap<Triple, usize>>) -> bool {
        let mut counts = match counts.write() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        let mut changed = false;
        let forget = |counts: &mut HashMap<Triple, usize>, t: Triple| {
            if let Some(n) = counts.get_mut(&t) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&t);
                }
            }
        };
        for ch in changes {
            match ch {
                Change::Apply(Object::Pod(p)) => {
                    changed = true;
                    if let Some(old) = self.by_pod.remove(&p.key) {
                        forget(&mut counts, old);
                    }
                    if let Some(node) = &p.node {
                        let t = (node.clone(), p.key.namespace.to_string(), p.service_account.clone());
                        *counts.entry(t.clone()).or_default() += 1;
                        self.by_pod.insert(p.key.clone(), t);
                    }
                }
                Change::Delete(ObjectRef::Pod(k)) => {
                    changed = true;
                    if let Some(old) = self.by_pod.remove(&k) {
                        forget(&mut counts, old);
                    }
                }
                _ => {}
            }
        }
        changed
    }
}

impl ManifestIndex {
    /// Reads the source once, then keeps polling it every `poll_ms`.
    pub fn start(spec: &SourceSpec, poll_ms: u64) -> anyhow::Result<Self> {
        spec.validate()?;
        let mut source = crate::kube_source::open::<PolicyKinds>(spec, crate::kube_source::pod_resources())?;
        let current = Arc::new(RwLock::new(HashMap::new()));
        let mut pods = Pods::default();
        let mut poll = move |source: &mut Box<dyn ObjectSource<PolicyKinds>>,
                             current: &RwLock<HashMap<Triple, usize>>| {
            let p = source.poll();
            for e in &p.errors {
                tracing::warn!(error = %e, "object rejected; its last good version stays in use");
            }
            pods.apply(p.changes, current);
        };
        poll(&mut source, &current);
        let shared = current.clone();
        std::thread::Builder::new().name("ca-pods".into()).spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(poll_ms));
                poll(&mut source, &shared);
            }
        })?;
        Ok(Self { current })
    }
}

impl ca::WorkloadIndex for ManifestIndex {
    fn runs_on(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        let key = (node.to_string(), namespace.to_string(), service_account.to_string());
        match self.current.read() {
            Ok(s) => s.contains_key(&key),
            Err(e) => e.into_inner().contains_key(&key),
        }
    }
}
