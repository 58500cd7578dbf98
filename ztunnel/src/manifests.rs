//! Reading Kubernetes manifests from files and directories (the IO edge of
//! `policy::manifest`). Directories are read recursively in name order, so
//! `NN-*.yaml` files apply in a predictable sequence; only `.yaml`, `.yml`
//! and `.json` files are read.

use std::fs;
use std::path::{Path, PathBuf};

use policy::manifest::{Object, parse_str};
use policy::{Cluster, ManifestError};

/// Everything read from a set of paths.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid objects, in file order.
    pub objects: Vec<Object>,
    /// Invalid documents and unreadable files; the rest still counts.
    pub errors: Vec<ManifestError>,
    /// Files read.
    pub files: Vec<PathBuf>,
}

impl Loaded {
    /// The cluster the valid objects describe.
    pub fn cluster(&self) -> Cluster {
        Cluster::from_objects(self.objects.iter().cloned())
    }
}

fn is_manifest(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

/// Lists the manifest files under `path` (a file is returned as is).
pub fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = fs::metadata(path)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(path)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue; // editor swap files, `..data` links of mounted ConfigMaps
        }
        if p.is_dir() {
            out.extend(manifest_files(&p)?);
        } else if is_manifest(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Reads and parses every manifest under `paths`. Unreadable files and bad
/// documents are collected as errors; nothing here fails as a whole.
pub fn load(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    for path in paths {
        let files = match manifest_files(path) {
            Ok(f) => f,
            Err(e) => {
                loaded.errors.push(ManifestError::Syntax {
                    file: path.display().to_string(),
                    document: 0,
                    reason: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        for file in files {
            let name = file.display().to_string();
            match fs::read_to_string(&file) {
                Ok(text) => {
                    let parsed = parse_str(&name, &text);
                    loaded.objects.extend(parsed.objects.into_iter().map(|(_, o)| o));
                    loaded.errors.extend(parsed.errors);
                }
                Err(e) => loaded.errors.push(ManifestError::Syntax {
                    file: name,
                    document: 0,
                    reason: format!("cannot read: {e}"),
                }),
            }
            loaded.files.push(file);
        }
    }
    loaded
}
