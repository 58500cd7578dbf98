//! CA state and the staged root rotation.
//!
//! ```text
//!            prepare             propagate              switch              retire
//!   Stable ──────────▶ Prepared ──────────▶ Propagated ────────▶ Switched ────────▶ Stable
//!     ▲                   │                     │                   │     (old root gone)
//!     └───────────────────┴──── abort ──────────┴───────────────────┘
//! ```
//!
//! - `prepare`: a new authority (generated or imported) is held, nothing
//!   changes for anyone.
//! - `propagate`: its root joins the trust bundle; the old intermediate still
//!   signs. Agents pick the new bundle up (long-poll) and trust both roots.
//! - `switch` (after the bundle had `min_propagation` to spread): the new
//!   intermediate signs; agents see the new signer in the bundle and renew.
//! - `retire` (once every leaf the old intermediate signed has expired, i.e.
//!   `max_ttl` after the switch): the old root leaves the bundle.
//! - `abort`: back to the old authority from any stage before `retire`; if
//!   the new one already signed, its root stays trusted until those leaves
//!   expire, so no connection breaks either way.
//!
//! Every transition checks its precondition and is idempotent: repeating a
//! step that already happened changes nothing and says so. The state is a
//! plain value (serialised to JSON by the server or CLI with the keys, 0600);
//! time is always passed in.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::authority::{Authority, CertInfo};
use crate::error::CaError;
use crate::issue::IssuePolicy;
use crate::spiffe::TrustDomain;

/// Current on-disk format of [`CaState`].
pub const STATE_FORMAT: u32 = 1;

/// Why a rotation step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// The step does not follow from the current stage.
    #[error("cannot {step} in stage {stage}: {hint}")]
    WrongStage {
        /// Requested step.
        step: &'static str,
        /// Current stage name.
        stage: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// The precondition is not met yet.
    #[error("{step} refused: {why} (pass --force to override)")]
    NotYet {
        /// Requested step.
        step: &'static str,
        /// What is still pending.
        why: String,
    },
    /// A different authority is already prepared.
    #[error("authority {0} is already prepared: abort it first to prepare another")]
    AlreadyPrepared(String),
}

/// Where the rotation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// One authority; nothing in progress.
    Stable,
    /// A new authority is held but not yet trusted.
    Prepared {
        /// The new authority.
        next: Box<Authority>,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// The new root is in the bundle; the old intermediate still signs.
    Propagated {
        /// The new authority.
        next: Box<Authority>,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// The new intermediate signs; the old root is still trusted.
    Switched {
        /// The authority that signed before.
        previous: Box<Authority>,
        /// When.
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl Stage {
    /// The stage's name.
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Stable => "stable",
            Stage::Prepared { .. } => "prepared",
            Stage::Propagated { .. } => "propagated",
            Stage::Switched { .. } => "switched",
        }
    }
}

/// A root kept in the bundle after its authority stopped signing (an aborted
/// switch), until the last leaf it could have signed expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retained {
    /// The authority id.
    pub authority: String,
    /// Its root certificate.
    pub root_pem: String,
    /// Trusted until then.
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

/// One line of the rotation history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What happened.
    pub event: String,
}

/// Whether a step changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The state changed (and must be saved).
    Changed,
    /// The step had already happened.
    Unchanged,
}

/// A root in the trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRoot {
    /// The authority it belongs to.
    pub authority: String,
    /// PEM certificate.
    pub pem: String,
}

/// The set of roots workloads must trust, versioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundle {
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// Changes whenever the CA state changes (usable as an ETag).
    pub version: u64,
    /// The authority whose intermediate signs now. When it changes, holders
    /// of certificates from another authority renew.
    pub signer: String,
    /// Trusted roots (two or more during a rotation).
    pub roots: Vec<BundleRoot>,
}

impl TrustBundle {
    /// The roots as one PEM file.
    pub fn pem(&self) -> String {
        self.roots.iter().map(|r| r.pem.as_str()).collect()
    }
}

/// The whole persisted CA state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaState {
    /// [`STATE_FORMAT`].
    pub format: u32,
    /// Trust domain of every identity.
    pub trust_domain: TrustDomain,
    /// Issuance lifetimes.
    pub policy: IssuePolicy,
    /// How long a new root must be in the bundle before `switch`.
    #[serde(with = "crate::serde_secs")]
    pub min_propagation: Duration,
    /// Bumped on every change.
    pub version: u64,
    /// The authority that signs (in `Switched`, the new one).
    pub active: Authority,
    /// The rotation stage.
    pub stage: Stage,
    /// Roots still trusted after an aborted switch.
    #[serde(default)]
    pub retained: Vec<Retained>,
    /// What happened, oldest first (bounded).
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

const HISTORY_LIMIT: usize = 100;

/// RFC 3339 to the second, for messages.
fn ts(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

impl CaState {
    /// A new CA around `active`.
    pub fn new(trust_domain: TrustDomain, active: Authority, policy: IssuePolicy, now: OffsetDateTime) -> Self {
        let mut s = Self {
            format: STATE_FORMAT,
            trust_domain,
            policy,
            min_propagation: Duration::seconds(30),
            version: 1,
            active,
            stage: Stage::Stable,
            retained: Vec::new(),
            history: Vec::new(),
        };
        let id = s.active.id.clone();
        s.log(now, format!("initialised with authority {id}"));
        s
    }

    /// Parses persisted state.
    pub fn from_json(text: &str) -> Result<Self, CaError> {
        let s: Self = serde_json::from_str(text).map_err(|e| CaError::State(e.to_string()))?;
        if s.format != STATE_FORMAT {
            return Err(CaError::State(format!("format {} is not supported (expected {STATE_FORMAT})", s.format)));
        }
        Ok(s)
    }

    /// Serialises the state (contains private keys: store it 0600).
    pub fn to_json(&self) -> String {
        // Serialising plain data into a String cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    fn log(&mut self, at: OffsetDateTime, event: String) {
        self.history.push(HistoryEntry { at, event });
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }

    fn changed(&mut self, at: OffsetDateTime, event: String) -> Outcome {
        self.version += 1;
        self.log(at, event);
        Outcome::Changed
    }

    fn wrong(&self, step: &'static str, hint: &'static str) -> CaError {
        RotationError::WrongStage { step, stage: self.stage.name(), hint }.into()
    }

    /// The trust bundle at `now`.
    pub fn bundle(&self, now: OffsetDateTime) -> TrustBundle {
        let mut roots = vec![BundleRoot { authority: self.active.id.clone(), pem: self.active.root_pem.clone() }];
        match &self.stage {
            Stage::Propagated { next, .. } => {
                roots.push(BundleRoot { authority: next.id.clone(), pem: next.root_pem.clone() })
            }
            Stage::Switched { previous, .. } => {
                roots.push(BundleRoot { authority: previous.id.clone(), pem: previous.root_pem.clone() })
            }
            Stage::Stable | Stage::Prepared { .. } => {}
        }
        for r in self.retained.iter().filter(|r| r.until > now) {
            if !roots.iter().any(|x| x.pem == r.root_pem) {
                roots.push(BundleRoot { authority: r.authority.clone(), pem: r.root_pem.clone() });
            }
        }
        // Two authorities may share a root (intermediate-only import).
        roots.dedup_by(|a, b| a.pem == b.pem);
        TrustBundle {
            trust_domain: self.trust_domain.clone(),
            version: self.version,
            signer: self.active.id.clone(),
            roots,
        }
    }

    /// Step 1: hold a new authority. `make` is called only if nothing is
    /// prepared yet, so repeating the step does not generate keys again.
    pub fn prepare(
        &mut self,
        now: OffsetDateTime,
        make: impl FnOnce() -> Result<Authority, CaError>,
    ) -> Result<Outcome, CaError> {
        match &self.stage {
            Stage::Prepared { .. } => Ok(Outcome::Unchanged),
            Stage::Stable => {
                let next = make()?;
                let id = next.id.clone();
                self.stage = Stage::Prepared { next: Box::new(next), at: now };
                Ok(self.changed(now, format!("prepared authority {id}")))
            }
            _ => Err(self.wrong("prepare", "finish (retire) or abort the rotation in progress first")),
        }
    }

    /// Step 1 with given (imported) material. Repeating it with the same
    /// root and intermediate is a no-op; a different one is refused.
    pub fn prepare_with(&mut self, now: OffsetDateTime, next: Authority) -> Result<Outcome, CaError> {
        if let Stage::Prepared { next: held, .. } = &self.stage {
            if held.root_pem == next.root_pem && held.intermediate_pem == next.intermediate_pem {
                return Ok(Outcome::Unchanged);
            }
            return Err(RotationError::AlreadyPrepared(held.id.clone()).into());
        }
        self.prepare(now, || Ok(next))
    }

    /// Step 2: publish the new root in the bundle.
    pub fn propagate(&mut self, now: OffsetDateTime) -> Result<Outcome, CaError> {
        match std::mem::replace(&mut self.stage, Stage::Stable) {
            Stage::Prepared { next, .. } => {
                let id = next.id.clone();
                self.stage = Stage::Propagated { next, at: now };
                Ok(self.changed(now, format!("root of {id} added to the trust bundle")))
            }
            other @ Stage::Propagated { .. } => {
                self.stage = other;
                Ok(Outcome::Unchanged)
            }
            other => {
                self.stage = other;
                Err(self.wrong("propagate", "run `prepare` first"))
            }
        }
    }

    /// When `switch` becomes allowed (in `Propagated`).
    pub fn switch_ready_at(&self) -> Option<OffsetDateTime> {
        match &self.stage {
            Stage::Propagated { at, .. } => Some(*at + self.min_propagation),
            _ => None,
        }
    }

    /// Step 3: the new intermediate signs. Refused until the new root has
    /// been in the bundle for `min_propagation`, unless `force`.
    pub fn switch(&mut self, now: OffsetDateTime, force: bool) -> Result<Outcome, CaError> {
        match &self.stage {
            Stage::Switched { .. } => return Ok(Outcome::Unchanged),
            Stage::Propagated { .. } => {}
            _ => return Err(self.wrong("switch", "run `prepare` and `propagate` first")),
        }
        if let Some(ready) = self.switch_ready_at()
            && now < ready
            && !force
        {
            return Err(RotationError::NotYet {
                step: "switch",
                why: format!(
                    "the new root has been in the trust bundle for less than {} s; allowed from {}",
                    self.min_propagation.whole_seconds(),
                    ts(ready)
                ),
            }
            .into());
        }
        let Stage::Propagated { next, .. } = std::mem::replace(&mut self.stage, Stage::Stable) else {
            return Err(self.wrong("switch", "run `prepare` and `propagate` first"));
        };
        let previous = std::mem::replace(&mut self.active, *next);
        let (old, new) = (previous.id.clone(), self.active.id.clone());
        self.stage = Stage::Switched { previous: Box::new(previous), at: now };
        Ok(self.changed(now, format!("{new} signs now (was {old}); workloads renew")))
    }

    /// When every leaf the previous intermediate signed has expired (in
    /// `Switched`): the switch time plus the longest TTL ever granted.
    pub fn retire_ready_at(&self) -> Option<OffsetDateTime> {
        match &self.stage {
            Stage::Switched { at, .. } => Some(*at + self.policy.longest()),
            _ => None,
        }
    }

    /// Step 4: drop the old root. Refused while leaves under it may still be
    /// valid, unless `force`.
    pub fn retire(&mut self, now: OffsetDateTime, force: bool) -> Result<Outcome, CaError> {
        match &self.stage {
            Stage::Stable => return Ok(Outcome::Unchanged),
            Stage::Switched { .. } => {}
            _ => return Err(self.wrong("retire", "run `switch` first (or `abort`)")),
        }
        let early = self.retire_ready_at().filter(|ready| now < *ready);
        if let Some(ready) = early
            && !force
        {
            return Err(RotationError::NotYet {
                step: "retire",
                why: format!("certificates signed under the old root may be valid until {}", ts(ready)),
            }
            .into());
        }
        let Stage::Switched { previous, .. } = std::mem::replace(&mut self.stage, Stage::Stable) else {
            return Err(self.wrong("retire", "run `switch` first (or `abort`)"));
        };
        let note = if early.is_some() { " (forced before its leaves expired)" } else { "" };
        Ok(self.changed(now, format!("root of {} removed from the trust bundle{note}", previous.id)))
    }

    /// Goes back to the authority that signed before the rotation. From
    /// `Switched`, the abandoned root stays trusted until the leaves it
    /// signed have expired.
    pub fn abort(&mut self, now: OffsetDateTime) -> Result<Outcome, CaError> {
        match std::mem::replace(&mut self.stage, Stage::Stable) {
            Stage::Stable => Ok(Outcome::Unchanged),
            Stage::Prepared { next, .. } => Ok(self.changed(now, format!("aborted: dropped prepared {}", next.id))),
            Stage::Propagated { next, .. } => {
                Ok(self.changed(now, format!("aborted: root of {} removed from the trust bundle", next.id)))
            }
            Stage::Switched { previous, .. } => {
                let abandoned = std::mem::replace(&mut self.active, *previous);
                let until = now + self.policy.longest();
                let id = abandoned.id.clone();
                self.retained.push(Retained { authority: id.clone(), root_pem: abandoned.root_pem, until });
                Ok(self.changed(
                    now,
                    format!("aborted: {} signs again; root of {id} trusted until {}", self.active.id, ts(until)),
                ))
            }
        }
    }

    /// Replaces the signing intermediate under the same root (stable stage
    /// only). Leaves of the old intermediate stay valid: they chain to the
    /// same root.
    pub fn renew_intermediate(&mut self, now: OffsetDateTime, validity: Duration) -> Result<Outcome, CaError> {
        if self.stage != Stage::Stable {
            return Err(self.wrong("renew the intermediate", "finish or abort the rotation in progress first"));
        }
        self.active = self.active.renew_intermediate(&self.trust_domain, now, validity)?;
        let id = self.active.id.clone();
        Ok(self.changed(now, format!("intermediate of {id} renewed")))
    }

    /// Drops retained roots whose leaves have all expired.
    pub fn tick(&mut self, now: OffsetDateTime) -> Outcome {
        let before = self.retained.len();
        self.retained.retain(|r| r.until > now);
        if self.retained.len() == before {
            return Outcome::Unchanged;
        }
        self.changed(now, "expired retained roots removed from the trust bundle".into())
    }

    /// A summary for operators (no keys).
    pub fn status(&self, now: OffsetDateTime) -> Result<CaStatus, CaError> {
        let describe = |a: &Authority, role: &'static str| -> Result<AuthorityStatus, CaError> {
            Ok(AuthorityStatus {
                id: a.id.clone(),
                role,
                root: a.root_info()?,
                intermediate: a.intermediate_info()?,
                has_root_key: a.root_key.is_some(),
            })
        };
        let mut authorities = vec![describe(&self.active, "signing")?];
        let next_step = match &self.stage {
            Stage::Stable => "none (run `ztunnel ca rotate prepare` to start a root rotation)".to_string(),
            Stage::Prepared { next, .. } => {
                authorities.push(describe(next, "prepared")?);
                "propagate".to_string()
            }
            Stage::Propagated { next, .. } => {
                authorities.push(describe(next, "trusted, not yet signing")?);
                match self.switch_ready_at() {
                    Some(t) if t > now => format!("switch (allowed from {})", ts(t)),
                    _ => "switch".to_string(),
                }
            }
            Stage::Switched { previous, .. } => {
                authorities.push(describe(previous, "trusted, no longer signing")?);
                match self.retire_ready_at() {
                    Some(t) if t > now => format!("retire (allowed from {})", ts(t)),
                    _ => "retire".to_string(),
                }
            }
        };
        Ok(CaStatus {
            trust_domain: self.trust_domain.clone(),
            stage: self.stage.name(),
            version: self.version,
            next_step,
            authorities,
            bundle: self.bundle(now).roots.into_iter().map(|r| r.authority).collect(),
            retained: self.retained.clone(),
            policy: self.policy,
            history: self.history.iter().rev().take(10).cloned().collect(),
        })
    }
}

/// One authority in [`CaStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthorityStatus {
    /// Authority id.
    pub id: String,
    /// Its role now.
    pub role: &'static str,
    /// Root certificate.
    pub root: CertInfo,
    /// Intermediate certificate.
    pub intermediate: CertInfo,
    /// Whether the CA holds the root key (can renew intermediates).
    pub has_root_key: bool,
}

/// Operator view of the CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaStatus {
    /// Trust domain.
    pub trust_domain: TrustDomain,
    /// Stage name.
    pub stage: &'static str,
    /// State version (= bundle version).
    pub version: u64,
    /// What to do next.
    pub next_step: String,
    /// Authorities involved.
    pub authorities: Vec<AuthorityStatus>,
    /// Authority ids whose roots are in the bundle.
    pub bundle: Vec<String>,
    /// Roots kept after an aborted switch.
    pub retained: Vec<Retained>,
    /// Issuance policy.
    pub policy: IssuePolicy,
    /// Latest events, newest first.
    pub history: Vec<HistoryEntry>,
}
