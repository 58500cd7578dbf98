//! The local object source: a directory of Kubernetes manifests, polled for
//! changes. Each poll re-reads only files whose size or modification time
//! changed, and yields the object-level changes (apply or delete) since the
//! last poll. Bad input never loses state: an unreadable file keeps its
//! previous objects, and an object whose document turned invalid keeps its
//! last good version until it is fixed or removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use policy::manifest::{Object, parse_str};
use policy::{ManifestError, ObjectRef};

use crate::manifests::manifest_files;

/// One change to apply to the cluster state.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Add or replace.
    Apply(Object),
    /// Remove.
    Delete(ObjectRef),
}

#[derive(Debug, Default)]
struct FileState {
    stamp: Option<(u64, SystemTime)>,
    objects: BTreeMap<ObjectRef, Object>,
}

/// A polled manifest directory.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    current: BTreeMap<ObjectRef, Object>,
}

/// What one poll found.
#[derive(Debug, Default)]
pub struct Poll {
    /// Object changes, in a safe order (namespaces and nodes, then pods,
    /// then policies; deletions last).
    pub changes: Vec<Change>,
    /// Invalid documents and unreadable files met in changed files.
    pub errors: Vec<ManifestError>,
    /// Objects of kinds the agent does not use, in changed files
    /// (`file: document N: apiVersion/kind name`).
    pub ignored: Vec<String>,
}

fn rank(o: &ObjectRef) -> u8 {
    match o {
        ObjectRef::Namespace(_) | ObjectRef::Node(_) => 0,
        ObjectRef::Pod(_) => 1,
        ObjectRef::NetworkPolicy(_) => 2,
    }
}

impl DirSource {
    /// A source for `dir` (nothing read yet).
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), files: BTreeMap::new(), current: BTreeMap::new() }
    }

    /// Reads what changed since the last poll.
    pub fn poll(&mut self) -> Poll {
        let mut errors = Vec::new();
        let mut ignored = Vec::new();
        let listed = match manifest_files(&self.dir) {
            Ok(l) => l,
            Err(e) => {
                // The directory itself is unreadable: keep everything.
                errors.push(ManifestError::Syntax {
                    file: self.dir.display().to_string(),
                    document: 0,
                    reason: format!("cannot list: {e}"),
                });
                return Poll { changes: Vec::new(), errors, ignored: Vec::new() };
            }
        };
        self.files.retain(|f, _| listed.contains(f));
        for file in listed {
            let stamp = std::fs::metadata(&file).ok().and_then(|m| Some((m.len(), m.modified().ok()?)));
            let state = self.files.entry(file.clone()).or_default();
            if stamp.is_some() && state.stamp == stamp {
                continue;
            }
            let name = file.display().to_string();
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(ManifestError::Syntax { file: name, document: 0, reason: format!("cannot read: {e}") });
                    continue; // keep the file's previous objects
                }
            };
            let parsed = parse_str(&name, &text);
            for (doc, api, kind, obj) in &parsed.ignored {
                ignored.push(format!("{name}: document {doc}: {api}/{kind} {obj}"));
            }
            let mut objects: BTreeMap<ObjectRef, Object> =
                parsed.objects.into_iter().map(|(_, o)| (o.reference(), o)).collect();
            for e in &parsed.errors {
                // Keep the last good version of an object whose document is
                // now invalid.
                if let ManifestError::Object { error, .. } = e {
                    let named = format!("{} {}", error.kind, error.object);
                    for (r, o) in &state.objects {
                        if o.describe() == named && !objects.contains_key(r) {
                            objects.insert(r.clone(), o.clone());
                        }
                    }
                }
            }
            // A document that is not even YAML could have held any of the
            // file's objects: keep every previous object the new parse does
            // not mention, until the file is fixed or removed. (Dropping them
            // would delete policies and open traffic because of a typo.)
            if parsed.errors.iter().any(|e| matches!(e, ManifestError::Syntax { .. })) {
                for (r, o) in &state.objects {
                    objects.entry(r.clone()).or_insert_with(|| o.clone());
                }
            }
            errors.extend(parsed.errors);
            state.stamp = stamp;
            state.objects = objects;
        }

        // The merged view: later files win for an object defined twice.
        let mut merged: BTreeMap<ObjectRef, Object> = BTreeMap::new();
        for state in self.files.values() {
            for (r, o) in &state.objects {
                merged.insert(r.clone(), o.clone());
            }
        }
        let mut applies: Vec<Change> = merged
            .iter()
            .filter(|(r, o)| self.current.get(*r) != Some(*o))
            .map(|(_, o)| Change::Apply(o.clone()))
            .collect();
        applies.sort_by_key(|c| match c {
            Change::Apply(o) => rank(&o.reference()),
            Change::Delete(r) => rank(r),
        });
        let mut deletes: Vec<ObjectRef> = self.current.keys().filter(|r| !merged.contains_key(*r)).cloned().collect();
        deletes.sort_by_key(|r| std::cmp::Reverse(rank(r)));
        applies.extend(deletes.into_iter().map(Change::Delete));
        self.current = merged;
        Poll { changes: applies, errors, ignored }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(name: &str, extra: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: a}}\nspec: {{podSelector: {{}}{extra}}}\n"
        )
    }

    #[test]
    fn changes_are_incremental_and_bad_input_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, np("one", "")).unwrap();
        let mut src = DirSource::new(dir.path());
        let p = src.poll();
        assert_eq!(p.changes.len(), 1);
        assert!(src.poll().changes.is_empty(), "nothing changed");

        // Break the document: the last good version stays.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, np("one", ", policyTypes: [Sideways]")).unwrap();
        let p = src.poll();
        assert!(p.changes.is_empty(), "{:?}", p.changes);
        assert_eq!(p.errors.len(), 1);
        assert!(p.errors[0].to_string().contains("NetworkPolicy a/one"), "{}", p.errors[0]);

        // Not YAML at all (truncated mid-document): nothing is deleted.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, format!("{}---\nmetadata: {{name: [\n", np("other", ""))).unwrap();
        let p = src.poll();
        assert!(p.changes.iter().all(|c| !matches!(c, Change::Delete(_))), "{:?}", p.changes);
        assert!(!p.errors.is_empty());
        std::fs::write(&f, np("one", "")).unwrap();
        let p = src.poll();
        assert!(
            p.changes.iter().any(|c| matches!(c, Change::Delete(_))),
            "fixed file drops the extra object: {:?}",
            p.changes
        );

        // A second file adds an object; removing the first deletes it.
        std::fs::write(dir.path().join("q.yaml"), np("two", "")).unwrap();
        let p = src.poll();
        assert_eq!(p.changes.len(), 1);
        std::fs::remove_file(&f).unwrap();
        let p = src.poll();
        assert_eq!(p.changes, vec![Change::Delete(ObjectRef::NetworkPolicy(policy::ObjectKey::new("a", "one")))]);
    }
}
