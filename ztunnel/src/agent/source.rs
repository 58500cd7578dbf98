//! The local object source: a directory of Kubernetes manifests, polled for
//! changes. Each poll re-reads only files whose size or modification time
//! changed, and yields the object-level changes (apply or delete) since the
//! last poll. Bad input never loses state: an unreadable file keeps its
//! previous objects, and an object whose document turned invalid keeps its
//! last good version until it is fixed or removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use policy::manifest::{Object, RawObject, decode_object, split_documents};
use policy::{ManifestError, ObjectKey, ObjectRef};

use crate::manifests::manifest_files;

/// The object kinds one consumer reads from manifests: how to parse a file
/// into them, name them, and order their changes. The node agent reads the
/// NetworkPolicy kinds ([`PolicyKinds`]); the ingress gateway reads its own
/// (`crate::ingress::model::GatewayKinds`). The same directory can feed both.
pub trait Kinds {
    /// A validated object.
    type Object: Clone + PartialEq + std::hash::Hash + std::fmt::Debug;
    /// What identifies it (and deletes it).
    type Ref: Ord + Clone + std::fmt::Debug;
    /// Decodes one document (a manifest document or an API object);
    /// `Ok(None)` for kinds this consumer does not read.
    fn decode(file: &str, raw: &RawObject) -> Result<Option<Self::Object>, ManifestError>;
    /// The reference of a document by kind and name alone (for deletions
    /// of objects that may not even be valid).
    fn raw_ref(raw: &RawObject) -> Option<Self::Ref>;
    /// Parses one file's text (no IO).
    fn parse(file: &str, text: &str) -> Parsed<Self::Object> {
        let (docs, errors) = split_documents(file, text);
        let mut parsed = Parsed { objects: Vec::new(), ignored: Vec::new(), errors };
        for raw in docs {
            match Self::decode(file, &raw) {
                Ok(Some(o)) => parsed.objects.push(o),
                Ok(None) => parsed
                    .ignored
                    .push(format!("document {}: {}/{} {}", raw.document, raw.api_version, raw.kind, raw.display_name)),
                Err(e) => parsed.errors.push(e),
            }
        }
        parsed
    }
    /// The object's reference.
    fn reference(o: &Self::Object) -> Self::Ref;
    /// `Kind namespace/name`, as the parse errors name objects.
    fn describe(o: &Self::Object) -> String;
    /// Apply order: lower ranks are applied first and deleted last.
    fn rank(r: &Self::Ref) -> u8;
}

/// One file parsed for a [`Kinds`].
#[derive(Debug)]
pub struct Parsed<O> {
    /// Valid objects.
    pub objects: Vec<O>,
    /// Documents of kinds this consumer does not read
    /// (`document N: apiVersion/kind name`).
    pub ignored: Vec<String>,
    /// Rejected documents.
    pub errors: Vec<ManifestError>,
}

/// The kinds the NetworkPolicy engine reads.
#[derive(Debug)]
pub enum PolicyKinds {}

impl Kinds for PolicyKinds {
    type Object = Object;
    type Ref = ObjectRef;

    fn decode(file: &str, raw: &RawObject) -> Result<Option<Object>, ManifestError> {
        decode_object(file, raw)
    }

    fn raw_ref(raw: &RawObject) -> Option<ObjectRef> {
        let (ns, name) = raw_names(raw)?;
        Some(match (raw.api_version.as_str(), raw.kind.as_str()) {
            ("v1", "Namespace") => ObjectRef::Namespace(name),
            ("v1", "Node") => ObjectRef::Node(name),
            ("v1", "Pod") => ObjectRef::Pod(ObjectKey::new(ns, name)),
            ("networking.k8s.io/v1", "NetworkPolicy") => ObjectRef::NetworkPolicy(ObjectKey::new(ns, name)),
            _ => return None,
        })
    }

    fn reference(o: &Object) -> ObjectRef {
        o.reference()
    }

    fn describe(o: &Object) -> String {
        o.describe()
    }

    fn rank(r: &ObjectRef) -> u8 {
        match r {
            ObjectRef::Namespace(_) | ObjectRef::Node(_) => 0,
            ObjectRef::Pod(_) => 1,
            ObjectRef::NetworkPolicy(_) => 2,
        }
    }
}

/// `(namespace or "default", name)` of a raw document.
pub fn raw_names(raw: &RawObject) -> Option<(String, String)> {
    let meta = raw.value.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_string();
    let ns = meta.get("namespace").and_then(|n| n.as_str()).unwrap_or("default").to_string();
    Some((ns, name))
}

/// Whether a source is in touch with its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceHealth {
    /// False while the API server (or directory) cannot be read: the last
    /// known state stays in force.
    pub connected: bool,
    /// Why not.
    pub detail: String,
}

/// Where cluster objects come from: a manifest directory ([`DirSource`]) or
/// the API server (`crate::kube_source::KubeSource`). Consumers poll it and
/// apply the changes; both give the same changes for the same objects.
pub trait ObjectSource<K: Kinds>: Send {
    /// Changes since the last poll.
    fn poll(&mut self) -> Poll<K>;
    /// Connection state (a directory is always connected).
    fn health(&self) -> SourceHealth {
        SourceHealth { connected: true, detail: String::new() }
    }
    /// Waits up to `timeout` for something to poll; `true` when something
    /// arrived (the next [`ObjectSource::poll`] has it). A source that can
    /// only be polled just sleeps.
    fn wait(&mut self, timeout: std::time::Duration) -> bool {
        std::thread::sleep(timeout);
        false
    }
}

impl<K: Kinds> ObjectSource<K> for DirSource<K>
where
    K::Object: Send,
    K::Ref: Send,
{
    fn poll(&mut self) -> Poll<K> {
        DirSource::poll(self)
    }

    fn wait(&mut self, timeout: std::time::Duration) -> bool {
        self.wait_for_change(timeout)
    }
}

/// One change to apply to the cluster state.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<O = Object, R = ObjectRef> {
    /// Add or replace.
    Apply(O),
    /// Remove.
    Delete(R),
}

#[derive(Debug)]
struct FileState<K: Kinds> {
    stamp: Option<(u64, SystemTime)>,
    objects: BTreeMap<K::Ref, K::Object>,
}

impl<K: Kinds> Default for FileState<K> {
    fn default() -> Self {
        Self { stamp: None, objects: BTreeMap::new() }
    }
}

/// A polled manifest directory.
#[derive(Debug)]
pub struct DirSource<K: Kinds = PolicyKinds> {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState<K>>,
    current: BTreeMap<K::Ref, K::Object>,
    /// Told of changes in the directory itself (inotify), so a wait ends
    /// when a file is written, renamed or removed rather than at the next
    /// poll; `None` where that is not possible (polling still finds
    /// everything, including changes in subdirectories).
    notify: Option<nix::sys::inotify::Inotify>,
}

/// An inotify instance watching `dir` for anything that can change what a
/// poll reads (a ConfigMap mount's `..data` swap is a rename in it).
fn watch(dir: &Path) -> Option<nix::sys::inotify::Inotify> {
    use nix::sys::inotify::{AddWatchFlags as W, InitFlags, Inotify};
    let n = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
    let what = W::IN_CREATE
        | W::IN_DELETE
        | W::IN_MODIFY
        | W::IN_CLOSE_WRITE
        | W::IN_MOVED_FROM
        | W::IN_MOVED_TO
        | W::IN_ATTRIB
        | W::IN_DELETE_SELF
        | W::IN_MOVE_SELF;
    n.add_watch(dir, what).ok()?;
    Some(n)
}

/// What one poll found.
#[derive(Debug)]
pub struct Poll<K: Kinds = PolicyKinds> {
    /// Object changes, in a safe order (lower [`Kinds::rank`] first, e.g.
    /// namespaces and nodes, then pods, then policies; deletions last).
    pub changes: Vec<Change<K::Object, K::Ref>>,
    /// Invalid documents and unreadable files met in changed files.
    pub errors: Vec<ManifestError>,
    /// Objects of kinds the agent does not use, in changed files
    /// (`file: document N: apiVersion/kind name`).
    pub ignored: Vec<String>,
}

impl<K: Kinds> DirSource<K> {
    /// A source for `dir` (nothing read yet).
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), files: BTreeMap::new(), current: BTreeMap::new(), notify: watch(dir) }
    }

    /// Waits up to `timeout` for a change in the directory; `true` when
    /// one came (the next poll reads it). Without inotify, sleeps.
    pub fn wait_for_change(&mut self, timeout: std::time::Duration) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let Some(n) = &self.notify else {
            std::thread::sleep(timeout);
            return false;
        };
        let mut fds = [PollFd::new(n.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX)) {
            Ok(k) if k > 0 => {
                // Drained: one wake-up for a burst of events.
                while n.read_events().is_ok_and(|e| !e.is_empty()) {}
                true
            }
            Ok(_) => false,
            Err(_) => {
                std::thread::sleep(timeout);
                false
            }
        }
    }

    /// Reads what changed since the last poll.
    pub fn poll(&mut self) -> Poll<K> {
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
        let before = self.files.len();
        self.files.retain(|f, _| listed.contains(f));
        let mut changed = self.files.len() != before;
        for file in listed {
            let stamp = std::fs::metadata(&file).ok().and_then(|m| Some((m.len(), m.modified().ok()?)));
            let state = self.files.entry(file.clone()).or_default();
            if stamp.is_some() && state.stamp == stamp {
                continue;
            }
            changed = true;
            let name = file.display().to_string();
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(ManifestError::Syntax { file: name, document: 0, reason: format!("cannot read: {e}") });
                    continue; // keep the file's previous objects
                }
            };
            let parsed = K::parse(&name, &text);
            for what in &parsed.ignored {
                ignored.push(format!("{name}: {what}"));
            }
            let mut objects: BTreeMap<K::Ref, K::Object> =
                parsed.objects.into_iter().map(|o| (K::reference(&o), o)).collect();
            for e in &parsed.errors {
                // Keep the last good version of an object whose document is
                // now invalid.
                if let ManifestError::Object { error, .. } = e {
                    let named = format!("{} {}", error.kind, error.object);
                    for (r, o) in &state.objects {
                        if K::describe(o) == named && !objects.contains_key(r) {
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

        if !changed {
            // Nothing to merge: the usual poll costs a listing and a stat
            // per file, not a copy of every object.
            return Poll { changes: Vec::new(), errors, ignored };
        }
        // The merged view: later files win for an object defined twice.
        let mut merged: BTreeMap<K::Ref, K::Object> = BTreeMap::new();
        for state in self.files.values() {
            for (r, o) in &state.objects {
                merged.insert(r.clone(), o.clone());
            }
        }
        let mut applies: Vec<Change<K::Object, K::Ref>> = merged
            .iter()
            .filter(|(r, o)| self.current.get(*r) != Some(*o))
            .map(|(_, o)| Change::Apply(o.clone()))
            .collect();
        applies.sort_by_key(|c| match c {
            Change::Apply(o) => K::rank(&K::reference(o)),
            Change::Delete(r) => K::rank(r),
        });
        let mut deletes: Vec<K::Ref> = self.current.keys().filter(|r| !merged.contains_key(*r)).cloned().collect();
        deletes.sort_by_key(|r| std::cmp::Reverse(K::rank(r)));
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
    fn a_wait_ends_when_a_file_is_written_renamed_or_removed() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let mut src: DirSource = DirSource::new(dir.path());
        let _ = src.poll();
        // Nothing happens: the whole timeout passes.
        let t = Instant::now();
        assert!(!src.wait_for_change(Duration::from_millis(100)));
        assert!(t.elapsed() >= Duration::from_millis(90));
        let path = dir.path().to_path_buf();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(path.join("new.yaml.tmp"), np("x", "")).unwrap();
            std::fs::rename(path.join("new.yaml.tmp"), path.join("new.yaml")).unwrap();
        });
        let t = Instant::now();
        assert!(src.wait_for_change(Duration::from_secs(10)), "the write did not end the wait");
        assert!(t.elapsed() < Duration::from_secs(5));
        writer.join().unwrap();
        // A burst is one wake-up, and the poll then sees the file.
        std::thread::sleep(Duration::from_millis(20));
        let _ = src.wait_for_change(Duration::from_millis(1));
        assert_eq!(src.poll().changes.len(), 1);
        std::fs::remove_file(dir.path().join("new.yaml")).unwrap();
        assert!(src.wait_for_change(Duration::from_secs(10)), "the removal did not end the wait");
        assert_eq!(src.poll().changes.len(), 1, "the policy is deleted");
    }

    #[test]
    fn changes_are_incremental_and_bad_input_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, np("one", "")).unwrap();
        let mut src = DirSource::<PolicyKinds>::new(dir.path());
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
