//! Error types. Every error names the object and the field it is about, so an
//! operator can find the line to fix; none of them is ever a panic.

use std::fmt;

/// A field of an object failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// JSON-path-like location inside the object, e.g. `spec.ingress[0].ports[1].endPort`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// A Kubernetes object was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {error}")]
pub struct ObjectError {
    /// The object's kind (`NetworkPolicy`, `Pod`, ...).
    pub kind: String,
    /// `namespace/name`, or just `name` for cluster-scoped objects.
    pub object: String,
    /// The field that failed.
    pub error: FieldError,
}

impl ObjectError {
    /// An error in `object` of `kind`, at a field.
    pub fn new(kind: &str, object: impl Into<String>, error: FieldError) -> Self {
        Self { kind: kind.to_string(), object: object.into(), error }
    }
}

/// A manifest file (or one document inside it) could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The document is not valid YAML (or not a mapping).
    #[error("{file}: document {document}: {reason}")]
    Syntax {
        /// File name as given by the caller.
        file: String,
        /// 1-based index of the YAML document in the file.
        document: usize,
        /// Parser message, including line and column where known.
        reason: String,
    },
    /// The document is a Kubernetes object, but the object is invalid.
    #[error("{file}: document {document}: {error}")]
    Object {
        /// File name as given by the caller.
        file: String,
        /// 1-based index of the YAML document in the file.
        document: usize,
        /// What is wrong, naming the object and the field.
        error: Box<ObjectError>,
    },
}

impl ManifestError {
    /// The file the error is about.
    pub fn file(&self) -> &str {
        match self {
            ManifestError::Syntax { file, .. } | ManifestError::Object { file, .. } => file,
        }
    }
}

/// Display helper for `namespace/name`.
pub(crate) struct NsName<'a>(pub Option<&'a str>, pub &'a str);

impl fmt::Display for NsName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(ns) => write!(f, "{ns}/{}", self.1),
            None => f.write_str(self.1),
        }
    }
}
