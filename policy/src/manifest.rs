//! Parsing of ordinary multi-document Kubernetes YAML into validated objects.
//!
//! One bad document never hides the good ones: each document (and each item
//! of a `kind: List`) is parsed and validated on its own, and every failure is
//! reported with the file, the document number, the object and the field.
//! This module does no IO; callers hand it the text of a file.

use serde::de::DeserializeOwned;
use serde_norway::Value;

use crate::convert;
use crate::error::{FieldError, ManifestError, NsName, ObjectError};
use crate::model::{Namespace, NetworkPolicy, Node, Pod};

/// An object the policy engine understands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Object {
    /// `v1/Namespace`.
    Namespace(Namespace),
    /// `v1/Pod`.
    Pod(Pod),
    /// `v1/Node`.
    Node(Node),
    /// `networking.k8s.io/v1/NetworkPolicy`.
    NetworkPolicy(NetworkPolicy),
}

impl Object {
    /// `Kind namespace/name` for messages.
    pub fn describe(&self) -> String {
        match self {
            Object::Namespace(n) => format!("Namespace {}", n.name),
            Object::Pod(p) => format!("Pod {}", p.key),
            Object::Node(n) => format!("Node {}", n.name),
            Object::NetworkPolicy(p) => format!("NetworkPolicy {}", p.key),
        }
    }
}

/// A raw document that parsed as YAML and names its kind.
#[derive(Debug, Clone, PartialEq)]
pub struct RawObject {
    /// 1-based document number in the file.
    pub document: usize,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.namespace` / `metadata.name` for messages.
    pub display_name: String,
    /// The whole document.
    pub value: Value,
}

impl RawObject {
    /// Deserialises the document into a typed object; a failure names the
    /// field (`spec.ingress[0].ports[0].port`), never panics.
    pub fn decode<T: DeserializeOwned>(&self, file: &str) -> Result<T, ManifestError> {
        serde_path_to_error::deserialize(self.value.clone()).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "<document>".to_string() } else { path };
            ManifestError::Object {
                file: file.to_string(),
                document: self.document,
                error: Box::new(ObjectError::new(
                    &self.kind,
                    &self.display_name,
                    FieldError::new(field, e.into_inner().to_string()),
                )),
            }
        })
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

/// Splits a file into its documents (flattening `kind: List`). Returns the
/// documents that parsed and the errors for those that did not. A YAML syntax
/// error ends the file: the parser cannot resynchronise after it.
pub fn split_documents(file: &str, text: &str) -> (Vec<RawObject>, Vec<ManifestError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value: Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(ManifestError::Syntax {
                    file: file.into(),
                    document,
                    reason: format!("invalid YAML: {e}"),
                });
                break;
            }
        };
        collect(file, document, value, &mut out, &mut errors);
    }
    (out, errors)
}

fn collect(file: &str, document: usize, value: Value, out: &mut Vec<RawObject>, errors: &mut Vec<ManifestError>) {
    if value.is_null() {
        return; // empty document (e.g. a trailing `---`)
    }
    let syntax = |reason: &str| ManifestError::Syntax { file: file.into(), document, reason: reason.into() };
    if !value.is_mapping() {
        errors.push(syntax("not a Kubernetes object (expected a mapping with apiVersion and kind)"));
        return;
    }
    let (Some(kind), Some(api_version)) = (str_at(&value, &["kind"]), str_at(&value, &["apiVersion"])) else {
        errors.push(syntax("missing `apiVersion` or `kind`"));
        return;
    };
    let (kind, api_version) = (kind.to_string(), api_version.to_string());
    if kind == "List" || kind.ends_with("List") && value.get("items").is_some() {
        match value.get("items").and_then(Value::as_sequence) {
            Some(items) => {
                for item in items.clone() {
                    collect(file, document, item, out, errors);
                }
            }
            None => errors.push(syntax("a List must have a sequence `items`")),
        }
        return;
    }
    let display_name = NsName(
        str_at(&value, &["metadata", "namespace"]),
        str_at(&value, &["metadata", "name"]).unwrap_or("<unnamed>"),
    )
    .to_string();
    out.push(RawObject { document, api_version, kind, display_name, value });
}

/// The result of parsing one file.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Parsed {
    /// Valid objects, with the 1-based document each came from.
    pub objects: Vec<(usize, Object)>,
    /// Documents of kinds this engine does not use (`Deployment`, ...):
    /// `(document, apiVersion, kind, name)`.
    pub ignored: Vec<(usize, String, String, String)>,
    /// Everything that was rejected.
    pub errors: Vec<ManifestError>,
}

/// Parses and validates every NetworkPolicy-relevant object in `text`.
pub fn parse_str(file: &str, text: &str) -> Parsed {
    let (docs, errors) = split_documents(file, text);
    let mut parsed = Parsed { errors, ..Default::default() };
    for raw in docs {
        match decode_object(file, &raw) {
            Ok(Some(obj)) => parsed.objects.push((raw.document, obj)),
            Ok(None) => parsed.ignored.push((raw.document, raw.api_version, raw.kind, raw.display_name)),
            Err(e) => parsed.errors.push(e),
        }
    }
    parsed
}

/// Decodes one raw document into an [`Object`], `Ok(None)` for kinds the
/// policy engine does not read.
pub fn decode_object(file: &str, raw: &RawObject) -> Result<Option<Object>, ManifestError> {
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::networking::v1 as net;
    let invalid = |error: ObjectError| ManifestError::Object {
        file: file.into(),
        document: raw.document,
        error: Box::new(error),
    };
    let obj = match (raw.api_version.as_str(), raw.kind.as_str()) {
        ("v1", "Namespace") => {
            Object::Namespace(convert::namespace(&raw.decode::<core::Namespace>(file)?).map_err(invalid)?)
        }
        ("v1", "Pod") => Object::Pod(convert::pod(&raw.decode::<core::Pod>(file)?).map_err(invalid)?),
        ("v1", "Node") => Object::Node(convert::node(&raw.decode::<core::Node>(file)?).map_err(invalid)?),
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            Object::NetworkPolicy(convert::network_policy(&raw.decode::<net::NetworkPolicy>(file)?).map_err(invalid)?)
        }
        _ => return Ok(None),
    };
    Ok(Some(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_with_list_and_unknown_kinds() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: x}}
---
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: p, namespace: a, labels: {app: web}}
  status: {podIP: 10.0.0.1}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: np}
  spec: {podSelector: {}}
"#;
        let p = parse_str("f.yaml", text);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.objects.len(), 3);
        assert_eq!(p.ignored.len(), 1);
        assert_eq!(p.ignored[0].2, "Deployment");
        match &p.objects[2].1 {
            Object::NetworkPolicy(np) => assert_eq!(&*np.key.namespace, "default"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_document_does_not_hide_good_ones_and_names_field() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: ns1}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/33}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: badtype, namespace: ns1}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: [1, 2]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: good, namespace: ns1}
spec: {podSelector: {}}
"#;
        let p = parse_str("dir/policies.yaml", text);
        assert_eq!(p.objects.len(), 1);
        assert_eq!(p.errors.len(), 2);
        let msg = p.errors[0].to_string();
        assert!(msg.contains("dir/policies.yaml"), "{msg}");
        assert!(msg.contains("document 1"), "{msg}");
        assert!(msg.contains("NetworkPolicy ns1/bad"), "{msg}");
        assert!(msg.contains("spec.ingress[0].from[0].ipBlock.cidr"), "{msg}");
        let msg = p.errors[1].to_string();
        assert!(msg.contains("NetworkPolicy ns1/badtype"), "{msg}");
        assert!(msg.contains("spec.ingress[0].ports[0].port"), "{msg}");
    }

    #[test]
    fn syntax_error_reports_location() {
        let p = parse_str("x.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n");
        assert_eq!(p.errors.len(), 1);
        assert!(matches!(p.errors[0], ManifestError::Syntax { .. }));
        assert!(p.errors[0].to_string().contains("line"), "{}", p.errors[0]);
    }

    #[test]
    fn non_objects_are_rejected() {
        let p = parse_str("x.yaml", "- 1\n- 2\n---\njust a string\n---\n{kind: Pod}\n");
        assert_eq!(p.errors.len(), 3, "{:?}", p.errors);
        assert!(p.objects.is_empty());
    }
}
