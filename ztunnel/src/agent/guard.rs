//! The unknown-interface guard: packets that arrive on a pod interface the
//! datapath has not attached to yet are dropped.
//!
//! The classifiers judge a pod's traffic only once the agent has attached
//! them to its veth, which it does at its next poll after the CNI wired the
//! pod (and, when a CNI recreates a sandbox, after the veth was replaced by
//! one with the same name). In between, the veth has no programs and its
//! traffic would pass unjudged. With `--pod-interface-prefix` (the CNI's
//! veth name prefix: `cali` for Calico), the agent keeps an nftables table
//! in the node's network namespace that drops, before routing, anything
//! arriving on an interface of that prefix whose index is not in the set
//! of interfaces it has attached to — Calico's own "unknown interface" rule,
//! by index so that a replaced veth is caught too:
//!
//! ```text
//! table inet ztunnel_guard {
//!     set judged { type iface_index; }
//!     chain prerouting {
//!         type filter hook prerouting priority raw; policy accept;
//!         iifname "cali*" iif != @judged counter drop
//!     }
//! }
//! ```
//!
//! Behind a bridge CNI (flannel's `cni0`) a pod's packets reach the IP
//! stack from the bridge, not from the pod's veth, and packets between two
//! pods of the bridge never reach it at all; so the same rule, and a set of
//! the same members, also sit in a `bridge` family table of the same name,
//! whose prerouting hook sees each frame with the port it came in on
//! (`meta protocol { ip, ip6 }`: ARP still passes, as it does on a routed
//! veth).
//!
//! The table outlives the agent, as pinned programs do: while no agent
//! runs, attached veths stay judged by their pinned programs and new ones
//! stay dropped. Every update is one `nft -f` transaction (atomic), so the
//! set is never seen half-written, and a restarting agent replaces the rules
//! without a moment in which the chain is empty.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use thiserror::Error;

/// The guard's nftables tables (families `inet` and `bridge`).
pub const TABLE: &str = "ztunnel_guard";

/// What can go wrong with the guard.
#[derive(Debug, Error)]
pub enum GuardError {
    /// A prefix that is not an interface-name prefix.
    #[error(
        "--pod-interface-prefix {0:?}: expected 1 to 14 characters of letters, digits, '-', '_' or '.' (the start of the CNI's veth names, e.g. cali)"
    )]
    Prefix(String),
    /// `nft` could not be run.
    #[error("running nft (package nftables): {0}")]
    Spawn(std::io::Error),
    /// `nft` refused the transaction.
    #[error("nft: {0}")]
    Nft(String),
}

/// Checks one `--pod-interface-prefix`: the start of an interface name
/// (at most 15 bytes, of which the prefix leaves at least one), in
/// characters that need no quoting in nftables.
pub fn validate_prefix(p: &str) -> Result<(), GuardError> {
    let ok = !p.is_empty()
        && p.len() <= 14
        && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok { Ok(()) } else { Err(GuardError::Prefix(p.to_string())) }
}

/// The transaction that creates the table, set and chain if missing (the
/// set keeps its members) and replaces the chain's rules.
pub fn install_script(prefixes: &[String]) -> String {
    let mut s = format!(
        "table inet {TABLE} {{\n  set judged {{ type iface_index; }}\n  chain prerouting {{ type filter hook prerouting priority raw; policy accept; }}\n}}\nflush chain inet {TABLE} prerouting\n\
         table bridge {TABLE} {{\n  set judged {{ type iface_index; }}\n  chain prerouting {{ type filter hook prerouting priority -300; policy accept; }}\n}}\nflush chain bridge {TABLE} prerouting\n"
    );
    for p in prefixes {
        s.push_str(&format!("add rule inet {TABLE} prerouting iifname \"{p}*\" iif != @judged counter drop\n"));
        s.push_str(&format!(
            "add rule bridge {TABLE} prerouting meta protocol {{ ip, ip6 }} iifname \"{p}*\" iif != @judged counter drop\n"
        ));
    }
    s
}

/// The transaction that makes the set exactly `members`.
pub fn members_script(members: &BTreeSet<u32>) -> String {
    let mut s = String::new();
    for family in ["inet", "bridge"] {
        s.push_str(&format!("flush set {family} {TABLE} judged\n"));
        if !members.is_empty() {
            let list: Vec<String> = members.iter().map(u32::to_string).collect();
            s.push_str(&format!("add element {family} {TABLE} judged {{ {} }}\n", list.join(", ")));
        }
    }
    s
}

fn nft(script: &str) -> Result<(), GuardError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GuardError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(GuardError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(GuardError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(GuardError::Nft(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// Removes a guard a previous agent installed, when this one runs without
/// `--pod-interface-prefix`: left in place, nothing would add new pods'
/// veths to its set and they would stay dropped for good. Returns whether
/// there was one. Without `nft` there is nothing to remove.
pub fn remove_leftover() -> Result<bool, GuardError> {
    let mut found = false;
    // One at a time: a guard from before the bridge table has only the
    // inet one.
    for family in ["inet", "bridge"] {
        let out = match Command::new("nft").args(["list", "table", family, TABLE]).output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(GuardError::Spawn(e)),
        };
        if out.status.success() {
            nft(&format!("delete table {family} {TABLE}\n"))?;
            found = true;
        }
    }
    Ok(found)
}

/// The installed guard.
#[derive(Debug)]
pub struct Guard {
    /// The set's members as last written; `None` until the first sync
    /// (members left by a previous agent are replaced then).
    written: Option<BTreeSet<u32>>,
}

impl Guard {
    /// Installs (or takes over) the table for `prefixes`.
    pub fn install(prefixes: &[String]) -> Result<Self, GuardError> {
        for p in prefixes {
            validate_prefix(p)?;
        }
        nft(&install_script(prefixes))?;
        Ok(Self { written: None })
    }

    /// Makes the set of judged interfaces `attached` (the indexes the
    /// classifiers are attached to). Runs `nft` only when it changed; a
    /// failure is retried at the next call.
    pub fn sync(&mut self, attached: &BTreeSet<u32>) -> Result<(), GuardError> {
        if self.written.as_ref() == Some(attached) {
            return Ok(());
        }
        nft(&members_script(attached))?;
        self.written = Some(attached.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_interface_name_starts() {
        for ok in ["cali", "ztv", "veth", "lxc", "a", "gke-1_x.y"] {
            assert!(validate_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["", "cali*", "a b", "x\"; flush ruleset", "abcdefghijklmno", "é"] {
            let e = validate_prefix(bad).unwrap_err().to_string();
            assert!(e.contains("--pod-interface-prefix"), "{e}");
        }
    }

    #[test]
    fn the_install_keeps_the_set_and_replaces_the_rules_in_one_transaction() {
        let s = install_script(&["cali".to_string(), "ztv".to_string()]);
        // Creating a table or set that exists is a no-op in a script; only
        // the chain is flushed, and its rules follow in the same input.
        assert!(!s.contains("flush set"), "{s}");
        let flush = s.find("flush chain inet ztunnel_guard prerouting").unwrap();
        let first_rule = s.find("add rule").unwrap();
        assert!(flush < first_rule);
        assert!(s.contains("iifname \"cali*\" iif != @judged counter drop"), "{s}");
        assert!(s.contains("iifname \"ztv*\" iif != @judged counter drop"), "{s}");
        assert!(s.contains("priority raw"), "{s}");
        // The same rules for frames between the ports of a bridge.
        let flush = s.find("flush chain bridge ztunnel_guard prerouting").unwrap();
        let rule = s.find("add rule bridge ztunnel_guard prerouting meta protocol { ip, ip6 } iifname \"cali*\" iif != @judged counter drop").unwrap();
        assert!(flush < rule, "{s}");
    }

    #[test]
    fn members_are_replaced_whole() {
        assert_eq!(
            members_script(&BTreeSet::new()),
            "flush set inet ztunnel_guard judged\nflush set bridge ztunnel_guard judged\n"
        );
        let s = members_script(&BTreeSet::from([7, 3]));
        assert_eq!(
            s,
            "flush set inet ztunnel_guard judged\nadd element inet ztunnel_guard judged { 3, 7 }\n\
             flush set bridge ztunnel_guard judged\nadd element bridge ztunnel_guard judged { 3, 7 }\n"
        );
    }
}
