//! Local-mode storage of the CA: one directory.
//!
//! ```text
//! <dir>/state.json     CaState with private keys       0600
//! <dir>/tokens/<node>  bootstrap token of one node     0600
//! <dir>/.lock          serialises writers (CLI, several servers)
//! ```
//!
//! Writes go to a temporary file that is renamed over the old one, so a
//! reader (a serving replica polling for changes) sees either the old or the
//! new state, never half of one.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ca::CaState;

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem error, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// State kept elsewhere (a Kubernetes Secret) could not be used.
    #[error("{what}: {reason}")]
    Remote {
        /// Where (`secret ztunnel-system/ztunnel-ca`).
        what: String,
        /// Why.
        reason: String,
    },
    /// No CA has been initialised here.
    #[error("{0}: no CA state (run `ztunnel ca init --dir {1}` first)")]
    Missing(PathBuf, String),
    /// A CA already exists.
    #[error("{0}: a CA already exists here")]
    Exists(PathBuf),
    /// The state file does not parse.
    #[error("{path}: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: ca::CaError,
    },
    /// Key material readable by others.
    #[error("{0}: mode {1:o} lets other users read CA keys; chmod 600 it")]
    Permissions(PathBuf, u32),
    /// A node name that cannot be a file name.
    #[error("invalid node name {0:?}")]
    NodeName(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// A CA directory.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

/// An exclusive lock on the directory, held while reading-modifying-writing.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

impl DirStore {
    /// The store at `dir` (not created yet).
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// Takes the directory's write lock (blocks while another writer holds it).
    pub fn lock(&self) -> Result<Lock, StoreError> {
        if !self.dir.exists() {
            fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(io(&self.dir))?;
        }
        let path = self.dir.join(".lock");
        let f =
            OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path).map_err(io(&path))?;
        f.lock().map_err(io(&path))?;
        Ok(Lock(f))
    }

    /// Whether a CA exists here.
    pub fn exists(&self) -> bool {
        self.state_path().exists()
    }

    /// Modification stamp of the state file, to notice changes cheaply.
    pub fn stamp(&self) -> Option<(SystemTime, u64)> {
        let m = fs::metadata(self.state_path()).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// Reads the state. Refuses a state file other users can read.
    pub fn load(&self) -> Result<CaState, StoreError> {
        let path = self.state_path();
        if !path.exists() {
            return Err(StoreError::Missing(path, self.dir.display().to_string()));
        }
        let mode = fs::metadata(&path).map_err(io(&path))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::Permissions(path, mode));
        }
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        CaState::from_json(&text).map_err(|source| StoreError::Corrupt { path, source })
    }

    /// Writes the state atomically, 0600. Call with the lock held.
    pub fn save(&self, state: &CaState, _lock: &Lock) -> Result<(), StoreError> {
        write_secret(&self.state_path(), state.to_json().as_bytes())
    }

    /// Creates the state of a new CA; refuses to overwrite one.
    pub fn create(&self, state: &CaState, lock: &Lock) -> Result<(), StoreError> {
        if self.exists() {
            return Err(StoreError::Exists(self.state_path()));
        }
        self.save(state, lock)
    }

    fn tokens_dir(&self) -> PathBuf {
        self.dir.join("tokens")
    }

    /// Creates (or replaces) a node's bootstrap token and returns its path.
    pub fn create_token(&self, node: &str, _lock: &Lock) -> Result<PathBuf, StoreError> {
        let ok = !node.is_empty()
            && node.len() <= 253
            && node.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !node.starts_with('.');
        if !ok {
            return Err(StoreError::NodeName(node.to_string()));
        }
        let mut raw = [0u8; 32];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| StoreError::Io {
            path: self.tokens_dir(),
            source: std::io::Error::other("random number generator failed"),
        })?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let dir = self.tokens_dir();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        let path = dir.join(node);
        write_secret(&path, format!("{token}\n").as_bytes())?;
        Ok(path)
    }

    /// All node tokens (node → token).
    pub fn tokens(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let dir = self.tokens_dir();
        let mut out = BTreeMap::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(StoreError::Io { path: dir, source: e }),
        };
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let Some(node) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
            if node.starts_with('.') {
                continue;
            }
            let token = fs::read_to_string(&path).map_err(io(&path))?.trim().to_string();
            if !token.is_empty() {
                out.insert(node, token);
            }
        }
        Ok(out)
    }

    /// Modification stamp of the tokens directory.
    pub fn tokens_stamp(&self) -> Option<SystemTime> {
        fs::metadata(self.tokens_dir()).ok()?.modified().ok()
    }
}

/// Writes `bytes` to `path` through a 0600 temporary file and a rename.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("state")));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new().create_new(true).write(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}
