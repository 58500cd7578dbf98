//! SPIFFE workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! The only identity shape the mesh issues or accepts. Parsing is strict (no
//! query, fragment, port, user info, percent-encoding or trailing segments) so
//! that two spellings can never name the same workload.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// It does not start with `spiffe://`.
    #[error("not a SPIFFE ID (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>): {0:?}")]
    NotSpiffe(String),
    /// The trust domain is empty or has characters SPIFFE forbids.
    #[error("invalid trust domain {0:?}: use lowercase letters, digits, '.', '-' and '_'")]
    TrustDomain(String),
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error("invalid workload path {0:?}: expected /ns/<namespace>/sa/<service-account>")]
    Path(String),
    /// A namespace or service account name is not a Kubernetes name.
    #[error("invalid {what} {name:?}: must be a lowercase RFC 1123 name of at most {max} characters")]
    Name {
        /// "namespace" or "service account".
        what: &'static str,
        /// The offending name.
        name: String,
        /// Length limit.
        max: usize,
    },
}

/// A validated trust domain (e.g. `cluster.local`). Shared, so a clone is
/// a reference count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    /// Validates a trust domain name.
    pub fn new(s: &str) -> Result<Self, IdentityError> {
        let ok = !s.is_empty()
            && s.len() <= 255
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'));
        if ok { Ok(Self(s.into())) } else { Err(IdentityError::TrustDomain(s.to_string())) }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A workload identity: trust domain, namespace and service account.
///
/// Shared: a clone is a reference count. The proxy clones identities on
/// every new tunnel (pool keys, metrics, the tunnel's own record of its
/// peer), and three strings per clone were most of a tunnel's set-up
/// allocations.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId(Arc<Parts>);

#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Parts {
    trust_domain: TrustDomain,
    namespace: String,
    service_account: String,
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

/// RFC 1123 label (namespaces) or subdomain (service accounts), lowercase.
fn valid_name(s: &str, max: usize, dots: bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || (dots && c == b'.'))
}

impl SpiffeId {
    /// Builds an identity from its parts, validating each.
    pub fn new(trust_domain: &TrustDomain, namespace: &str, service_account: &str) -> Result<Self, IdentityError> {
        if !valid_name(namespace, 63, false) {
            return Err(IdentityError::Name { what: "namespace", name: namespace.to_string(), max: 63 });
        }
        if !valid_name(service_account, 253, true) {
            return Err(IdentityError::Name { what: "service account", name: service_account.to_string(), max: 253 });
        }
        Ok(Self(Arc::new(Parts {
            trust_domain: trust_domain.clone(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })))
    }

    /// Parses `spiffe://td/ns/NS/sa/SA`.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri.strip_prefix("spiffe://").ok_or_else(|| IdentityError::NotSpiffe(uri.to_string()))?;
        let (td, path) = rest.split_once('/').ok_or_else(|| IdentityError::Path(String::new()))?;
        let td = TrustDomain::new(td)?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] => Self::new(&td, ns, sa),
            _ => Err(IdentityError::Path(format!("/{path}"))),
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.0.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.0.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.0.trust_domain, self.0.namespace, self.0.service_account)
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/bookstore/sa/api").unwrap();
        assert_eq!(id.namespace(), "bookstore");
        assert_eq!(id.service_account(), "api");
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/bookstore/sa/api");
    }

    #[test]
    fn rejects_every_other_shape() {
        for bad in [
            "",
            "https://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local:8443/ns/a/sa/b",
            "spiffe://user@cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "spiffe://cluster.local/ns/a/sa/b#f",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns/a%2f/sa/b",
            "spiffe://cluster.local/ns/a.b/sa/b",
            "spiffe://cluster.local/sa/b/ns/a",
            "spiffe://cluster.local/ns/-a/sa/b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("spiffe://td/ns/{}/sa/b", "a".repeat(64));
        assert!(SpiffeId::parse(&long).is_err());
        assert!(SpiffeId::parse("spiffe://td/ns/a/sa/b.c-d").is_ok());
    }
}
