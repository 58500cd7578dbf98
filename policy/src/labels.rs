//! Label sets and `metav1.LabelSelector` semantics.
//!
//! A [`Selector`] is the validated form of a Kubernetes label selector: the
//! `matchLabels` map and `matchExpressions` list are ANDed. The empty selector
//! matches every object. `NotIn` and `DoesNotExist` match objects that lack the
//! key, exactly as `k8s.io/apimachinery/pkg/labels` does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;

use crate::error::FieldError;

/// A set of labels (`metadata.labels`). Ordered so that identities derived
/// from it are deterministic.
pub type Labels = BTreeMap<String, String>;

/// One requirement of a `matchExpressions` list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "operator", rename_all = "PascalCase")]
pub enum Requirement {
    /// The key is present and its value is one of the set.
    In {
        /// Label key.
        key: String,
        /// Accepted values (never empty).
        values: BTreeSet<String>,
    },
    /// The key is absent, or present with a value outside the set.
    NotIn {
        /// Label key.
        key: String,
        /// Rejected values (never empty).
        values: BTreeSet<String>,
    },
    /// The key is present, with any value.
    Exists {
        /// Label key.
        key: String,
    },
    /// The key is absent.
    DoesNotExist {
        /// Label key.
        key: String,
    },
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn { key, values } => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists { key } => labels.contains_key(key),
            Requirement::DoesNotExist { key } => !labels.contains_key(key),
        }
    }
}

/// A validated label selector. The default value is the empty selector, which
/// matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Selector {
    /// `matchLabels`: every pair must be present.
    pub match_labels: Labels,
    /// `matchExpressions`: every requirement must hold.
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every object (`{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector with only `matchLabels`.
    pub fn from_labels<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Self {
            match_labels: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether this is the empty selector (matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy every term of the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Validates and converts a Kubernetes `LabelSelector`, as the API server
    /// does: keys and values must be valid label syntax, `In`/`NotIn` need at
    /// least one value, `Exists`/`DoesNotExist` take none.
    pub fn from_k8s(sel: &LabelSelector, path: &str) -> Result<Self, FieldError> {
        let mut match_labels = Labels::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            validate_label_key(k).map_err(|r| FieldError::new(format!("{path}.matchLabels"), r))?;
            validate_label_value(v).map_err(|r| FieldError::new(format!("{path}.matchLabels.{k}"), r))?;
            match_labels.insert(k.clone(), v.clone());
        }
        let mut match_expressions = Vec::new();
        for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
            let p = format!("{path}.matchExpressions[{i}]");
            validate_label_key(&expr.key).map_err(|r| FieldError::new(format!("{p}.key"), r))?;
            let values: BTreeSet<String> = expr.values.iter().flatten().cloned().collect();
            for v in &values {
                validate_label_value(v).map_err(|r| FieldError::new(format!("{p}.values"), r))?;
            }
            let key = expr.key.clone();
            let req = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(FieldError::new(
                        format!("{p}.values"),
                        format!("must be specified when `operator` is '{}'", expr.operator),
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(FieldError::new(
                        format!("{p}.values"),
                        format!("may not be specified when `operator` is '{}'", expr.operator),
                    ));
                }
                "In" => Requirement::In { key, values },
                "NotIn" => Requirement::NotIn { key, values },
                "Exists" => Requirement::Exists { key },
                "DoesNotExist" => Requirement::DoesNotExist { key },
                other => {
                    return Err(FieldError::new(
                        format!("{p}.operator"),
                        format!("unsupported operator {other:?}: must be one of In, NotIn, Exists, DoesNotExist"),
                    ));
                }
            };
            match_expressions.push(req);
        }
        Ok(Self { match_labels, match_expressions })
    }
}

impl fmt::Display for Selector {
    /// Renders the selector the way `kubectl` prints one (`a=b,c in (d,e)`),
    /// or `<all>` for the empty selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("<all>");
        }
        let mut parts: Vec<String> = self.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for r in &self.match_expressions {
            let join = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
            parts.push(match r {
                Requirement::In { key, values } => format!("{key} in ({})", join(values)),
                Requirement::NotIn { key, values } => format!("{key} notin ({})", join(values)),
                Requirement::Exists { key } => key.clone(),
                Requirement::DoesNotExist { key } => format!("!{key}"),
            });
        }
        f.write_str(&parts.join(","))
    }
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A qualified name segment: at most 63 characters of `[A-Za-z0-9_.-]`,
/// starting and ending with an alphanumeric character.
fn validate_name_segment(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if s.len() > 63 {
        return Err(format!("name part {s:?} must be no more than 63 characters"));
    }
    let ok_chars = s.chars().all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'));
    let ok_ends = s.starts_with(is_alnum) && s.ends_with(is_alnum);
    if !ok_chars || !ok_ends {
        return Err(format!(
            "name part {s:?} must consist of alphanumeric characters, '-', '_' or '.', \
             and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain: at most 253 characters of lowercase alphanumerics,
/// '-' and '.', starting and ending with an alphanumeric character.
pub(crate) fn validate_dns_subdomain(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok { Ok(()) } else { Err(format!("{s:?} is not a valid DNS-1123 subdomain")) }
}

/// Label keys are `[prefix/]name` where prefix is a DNS subdomain.
pub(crate) fn validate_label_key(key: &str) -> Result<(), String> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            validate_dns_subdomain(prefix).map_err(|e| format!("label key {key:?}: prefix {e}"))?;
            validate_name_segment(name).map_err(|e| format!("label key {key:?}: {e}"))
        }
        None => validate_name_segment(key).map_err(|e| format!("label key {key:?}: {e}")),
    }
}

/// Label values are empty, or a name segment.
pub(crate) fn validate_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    validate_name_segment(v).map_err(|e| format!("label value: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() { None } else { Some(values.iter().map(|s| s.to_string()).collect()) },
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::from_k8s(&LabelSelector::default(), "spec.podSelector").unwrap();
        assert!(s.is_empty());
        assert!(s.matches(&Labels::new()));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![expr("tier", "In", &["fe", "be"])]),
        };
        let s = Selector::from_k8s(&sel, "x").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "fe")])));
    }

    #[test]
    fn notin_and_doesnotexist_match_missing_key() {
        let notin = Selector::from_k8s(
            &LabelSelector { match_expressions: Some(vec![expr("env", "NotIn", &["prod"])]), ..Default::default() },
            "x",
        )
        .unwrap();
        assert!(notin.matches(&Labels::new()), "NotIn matches objects lacking the key");
        assert!(notin.matches(&labels(&[("env", "dev")])));
        assert!(!notin.matches(&labels(&[("env", "prod")])));

        let dne = Selector::from_k8s(
            &LabelSelector { match_expressions: Some(vec![expr("env", "DoesNotExist", &[])]), ..Default::default() },
            "x",
        )
        .unwrap();
        assert!(dne.matches(&Labels::new()));
        assert!(!dne.matches(&labels(&[("env", "")])));

        let ex = Selector::from_k8s(
            &LabelSelector { match_expressions: Some(vec![expr("env", "Exists", &[])]), ..Default::default() },
            "x",
        )
        .unwrap();
        assert!(ex.matches(&labels(&[("env", "")])));
        assert!(!ex.matches(&Labels::new()));
    }

    #[test]
    fn invalid_selectors_are_rejected_with_field_path() {
        let bad_op = LabelSelector { match_expressions: Some(vec![expr("a", "Gt", &["1"])]), ..Default::default() };
        let e = Selector::from_k8s(&bad_op, "spec.podSelector").unwrap_err();
        assert_eq!(e.field, "spec.podSelector.matchExpressions[0].operator");

        let in_without_values =
            LabelSelector { match_expressions: Some(vec![expr("a", "In", &[])]), ..Default::default() };
        let e = Selector::from_k8s(&in_without_values, "s").unwrap_err();
        assert_eq!(e.field, "s.matchExpressions[0].values");

        let exists_with_values =
            LabelSelector { match_expressions: Some(vec![expr("a", "Exists", &["x"])]), ..Default::default() };
        assert!(Selector::from_k8s(&exists_with_values, "s").is_err());

        let bad_key =
            LabelSelector { match_labels: Some([("-bad".to_string(), "v".to_string())].into()), ..Default::default() };
        assert!(Selector::from_k8s(&bad_key, "s").is_err());
        let bad_value =
            LabelSelector { match_labels: Some([("k".to_string(), "a b".to_string())].into()), ..Default::default() };
        assert!(Selector::from_k8s(&bad_value, "s").is_err());
    }

    #[test]
    fn label_key_syntax() {
        assert!(validate_label_key("app").is_ok());
        assert!(validate_label_key("kubernetes.io/metadata.name").is_ok());
        assert!(validate_label_key("Example.com/x").is_err(), "prefix must be lowercase");
        assert!(validate_label_key(&"a".repeat(64)).is_err());
        assert!(validate_label_key("a/b/c").is_err());
        assert!(validate_label_value("").is_ok());
    }

    #[test]
    fn display_like_kubectl() {
        let s = Selector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![Requirement::Exists { key: "x".into() }],
        };
        assert_eq!(s.to_string(), "app=web,x");
        assert_eq!(Selector::everything().to_string(), "<all>");
    }
}
