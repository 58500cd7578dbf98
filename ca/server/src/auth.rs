//! Authentication of node agents.
//!
//! Local mode: each node has a bootstrap token (a 256-bit random string in a
//! 0600 file that `ztunnel ca token` creates); the agent sends it as
//! `Authorization: Bearer <token>`. Kubernetes mode implements
//! [`Authenticator`] with a TokenReview instead.

use std::collections::BTreeMap;

use aws_lc_rs::digest::{SHA256, digest};

/// Why a caller was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No or malformed `Authorization` header.
    #[error("missing bearer token")]
    Missing,
    /// The token is not known.
    #[error("unknown token")]
    Unknown,
    /// The token is known but not acceptable (wrong audience, not a node
    /// agent's service account, no node binding).
    #[error("token rejected: {0}")]
    Rejected(String),
    /// The authority that checks tokens (the API server) did not answer.
    #[error("cannot check the token now: {0}")]
    Unavailable(String),
}

/// The future of an authentication.
pub type AuthFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, AuthError>> + Send + 'a>>;

/// Maps a bearer token to the node it belongs to. Asynchronous because
/// Kubernetes mode asks the API server (a TokenReview).
pub trait Authenticator: Send + Sync {
    /// The node name of the token's holder.
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;
}

/// Node bootstrap tokens (local mode). Tokens are compared by their SHA-256
/// digests in constant time, so response timing reveals nothing about them.
#[derive(Default)]
pub struct NodeTokens {
    by_node: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for NodeTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTokens").field("nodes", &self.by_node.iter().map(|(n, _)| n).collect::<Vec<_>>()).finish()
    }
}

fn hash(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

impl NodeTokens {
    /// From node → token.
    pub fn new(tokens: &BTreeMap<String, String>) -> Self {
        Self { by_node: tokens.iter().map(|(n, t)| (n.clone(), hash(t))).collect() }
    }
}

impl Authenticator for NodeTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(std::future::ready(self.check(token)))
    }
}

impl NodeTokens {
    /// The node of a token (synchronous: no IO).
    pub fn check(&self, token: &str) -> Result<String, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let h = hash(token);
        let mut found = None;
        for (node, expected) in &self.by_node {
            // Every entry is compared in full: no early exit.
            let diff = expected.iter().zip(h.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(node.clone());
            }
        }
        found.ok_or(AuthError::Unknown)
    }
}

/// The token from an `Authorization: Bearer ...` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let v = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = v.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_their_node() {
        let t = NodeTokens::new(&BTreeMap::from([("node-1".into(), "aaa".into()), ("node-2".into(), "bbb".into())]));
        assert_eq!(t.check("aaa").unwrap(), "node-1");
        assert_eq!(t.check("bbb").unwrap(), "node-2");
        assert_eq!(t.check("ccc"), Err(AuthError::Unknown));
        assert_eq!(t.check(""), Err(AuthError::Missing));
        assert!(!format!("{t:?}").contains("aaa"));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::Missing));
        assert_eq!(bearer(Some("Bearer")), Err(AuthError::Missing));
        assert_eq!(bearer(None), Err(AuthError::Missing));
    }
}
