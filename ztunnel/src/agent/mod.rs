//! The node agent in local mode: manifests from a directory, policy compiled
//! for this node, the eBPF datapath kept in sync, a JSON flow log.
//!
//! One loop, every poll interval: read what changed in the directory, feed
//! each change to the incremental compiler, write each diff to the maps in
//! safe order, bump the policy epoch when anything changed (so tracked flows
//! re-check their verdicts), attach/detach classifiers as pods' interfaces
//! appear and go, and turn verdict events into flow-log lines.

pub mod dataplane;
pub mod flowlog;
pub mod routes;
pub mod source;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use policy::compile::{Compiler, Scope};

use self::dataplane::Dataplane;
use self::flowlog::FlowLog;
use self::source::{Change, DirSource};

/// Validated configuration of `ztunnel run`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Manifest directory (local mode).
    pub manifests: PathBuf,
    /// This node's name (`spec.nodeName` of its pods).
    pub node: String,
    /// Flow log destination; stdout when `None`.
    pub flow_log: Option<PathBuf>,
    /// How often to look for changes.
    pub poll: Duration,
    /// Where maps and links are pinned (a bpffs directory); `None` keeps
    /// them with the process.
    pub pin_dir: Option<PathBuf>,
}

impl Config {
    /// Checks the configuration before anything is loaded.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.manifests.is_dir(), "--local {}: not a directory", self.manifests.display());
        anyhow::ensure!(!self.node.is_empty(), "--node must not be empty");
        anyhow::ensure!(
            self.poll >= Duration::from_millis(10) && self.poll <= Duration::from_secs(10),
            "--poll-ms must be between 10 and 10000"
        );
        Ok(())
    }
}

/// Runs the agent until the process is stopped.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    cfg.validate()?;
    let out: Box<dyn std::io::Write + Send> = match &cfg.flow_log {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("--flow-log {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut flowlog = FlowLog::new(out);
    let (mut dp, numbers) = Dataplane::load(cfg.pin_dir.as_deref())?;
    let mut compiler = Compiler::new(Scope::Node(cfg.node.clone()));
    compiler.reserve_numbers(numbers.identity, numbers.endpoint, numbers.rule);
    let mut source = DirSource::new(&cfg.manifests);
    tracing::info!(node = %cfg.node, manifests = %cfg.manifests.display(), "agent started");
    let mut last_problems: Vec<String> = Vec::new();
    loop {
        let poll = source.poll();
        for e in &poll.errors {
            tracing::warn!(error = %e, "rejected manifest");
        }
        let mut changed = false;
        for change in poll.changes {
            let diff = match &change {
                Change::Apply(o) => compiler.apply(o.clone()),
                Change::Delete(r) => compiler.delete(r),
            };
            if diff.is_empty() {
                continue;
            }
            changed = true;
            if let Err(e) = dp.sync(&diff) {
                // A full or failing map: the affected entries are missing,
                // which only ever denies (no entry opens traffic).
                tracing::error!(error = %e, "map sync failed; affected traffic is denied");
            }
        }
        let problems = dp.reconcile(compiler.tables());
        if problems != last_problems {
            for p in &problems {
                tracing::warn!(problem = %p, "attachment");
            }
            last_problems = problems;
        }
        dp.prune_once(compiler.tables())?;
        if changed {
            dp.bump_epoch()?;
            tracing::info!(
                endpoints = compiler.tables().endpoints.len(),
                policy_entries = compiler.tables().policy.len(),
                "policy synced"
            );
        }
        let tables = compiler.tables();
        dp.drain_events(|e| flowlog.write(&e, tables));
        std::thread::sleep(cfg.poll);
    }
}
