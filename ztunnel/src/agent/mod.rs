//! The node agent in local mode: manifests from a directory, policy compiled
//! for this node, the eBPF datapath kept in sync, a JSON flow log.
//!
//! One loop, every poll interval: read what changed in the directory, feed
//! each change to the incremental compiler, write each diff to the maps in
//! safe order, bump the policy epoch when anything changed (so tracked flows
//! re-check their verdicts), attach/detach classifiers as pods' interfaces
//! appear and go, and turn verdict events into flow-log lines (those also
//! every 50 ms in between, so the event ring never has to hold a whole
//! poll interval's worth).

pub mod admin;
pub mod dataplane;
pub mod flowlog;
pub mod guard;
pub mod links;
pub mod mesh;
pub mod routes;
pub mod services;
pub mod source;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use policy::compile::{Compiler, Scope};

use self::admin::{FlowLabels, Metrics, PacketLabels};
use self::dataplane::Dataplane;
use self::flowlog::{FlowLog, Rotation};
use self::source::Change;

/// Validated configuration of `ztunnel run`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where cluster objects come from.
    pub source: crate::kube_source::SourceSpec,
    /// This node's name (`spec.nodeName` of its pods).
    pub node: String,
    /// Flow log destination; stdout when `None`.
    pub flow_log: Option<PathBuf>,
    /// Rotate the flow-log file at this size (0: never).
    pub flow_log_max_bytes: u64,
    /// Rotated flow-log files kept.
    pub flow_log_keep: usize,
    /// How often to look for changes.
    pub poll: Duration,
    /// Where maps and links are pinned (a bpffs directory); `None` keeps
    /// them with the process.
    pub pin_dir: Option<PathBuf>,
    /// Admin endpoint (`/ready`, `/metrics`); `None` disables it.
    pub admin: Option<std::net::SocketAddr>,
    /// The mTLS side (CA connection, HBONE listener); `None` runs policy
    /// enforcement only.
    pub mesh: Option<mesh::MeshConfig>,
    /// Policy audit mode: flows NetworkPolicy denies are reported (flow
    /// log verdict `audit`) and let through, for rolling out policies.
    pub policy_audit: bool,
    /// Pod veth name prefixes guarded until attached ([`guard`]); empty:
    /// no guard.
    pub pod_interface_prefixes: Vec<String>,
    /// The cgroup (v2) whose sockets get Service ClusterIPs translated to
    /// backends ([`services`]); `None`: no translation.
    pub service_cgroup: Option<PathBuf>,
    /// The cluster's Service CIDRs: with translation and the mesh on, pod
    /// TCP still addressed to them at the veth is dropped.
    pub service_cidrs: Vec<(std::net::IpAddr, u8)>,
}

impl Config {
    /// Checks the configuration before anything is loaded.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.source.validate()?;
        anyhow::ensure!(!self.node.is_empty(), "--node must not be empty");
        anyhow::ensure!(
            self.poll >= Duration::from_millis(10) && self.poll <= Duration::from_secs(10),
            "--poll-ms must be between 10 and 10000"
        );
        anyhow::ensure!(self.flow_log_keep <= 100, "--flow-log-keep must be at most 100");
        for p in &self.pod_interface_prefixes {
            guard::validate_prefix(p)?;
        }
        if let Some(c) = &self.service_cgroup {
            anyhow::ensure!(
                c.is_dir(),
                "--service-cgroup {}: no such directory (the cgroup v2 hierarchy, usually /sys/fs/cgroup; `off` leaves Service cluster IPs to kube-proxy)",
                c.display()
            );
        }
        if let Some(cc) = self.mesh.as_ref().and_then(|m| m.local_cc.as_deref()) {
            crate::proxy::local_cc::validate(cc).map_err(|e| {
                anyhow::anyhow!("--local-congestion-control: {e} (`keep` leaves every socket on its own)")
            })?;
        }
        Ok(())
    }
}

/// Runs the agent until the process is stopped.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    cfg.validate()?;
    let mut flowlog = match &cfg.flow_log {
        Some(p) if cfg.flow_log_max_bytes > 0 => {
            FlowLog::rotating(Rotation::new(p.clone(), cfg.flow_log_max_bytes, cfg.flow_log_keep))
                .with_context(|| format!("--flow-log {}", p.display()))?
        }
        Some(p) => {
            FlowLog::new(Box::new(flowlog::open_append(p).with_context(|| format!("--flow-log {}", p.display()))?))
        }
        None => FlowLog::new(Box::new(std::io::stdout())),
    };
    let metrics = Arc::new(Metrics::default());
    metrics.policy_audit.set(i64::from(cfg.policy_audit));
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let state = Arc::new(admin::State {
        ready: AtomicBool::new(false),
        registry: Mutex::new(registry),
        certs: Mutex::new(None),
        routes: Mutex::new(None),
        services: Mutex::new(None),
        not_ready: Mutex::new("not synced yet\n".into()),
    });
    if let Some(addr) = cfg.admin {
        let bound = admin::serve(addr, state.clone()).with_context(|| format!("--admin {addr}"))?;
        tracing::info!(%bound, "admin endpoint listening");
    }
    let mut last_counters = [(0u64, 0u64); 4];
    if cfg.policy_audit {
        tracing::warn!("policy audit mode: NetworkPolicy denials are reported, not enforced");
    }
    let (mut dp, numbers) = Dataplane::load(cfg.pin_dir.as_deref(), cfg.policy_audit)?;
    // Before the first attachment: from here on a pod veth of these
    // prefixes passes traffic only once it is judged. Interfaces a previous
    // agent left judged (pinned) stay in the set until the first sync.
    let mut guard = if cfg.pod_interface_prefixes.is_empty() {
        metrics.guard_judged.set(-1);
        match guard::remove_leftover() {
            Ok(true) => tracing::info!(
                "removed the unknown-interface guard a previous agent installed (no --pod-interface-prefix now)"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not remove a previous agent's unknown-interface guard; new pod veths stay dropped")
            }
        }
        None
    } else {
        let g = guard::Guard::install(&cfg.pod_interface_prefixes).context("--pod-interface-prefix")?;
        tracing::info!(prefixes = ?cfg.pod_interface_prefixes, "pod interfaces the classifiers do not judge yet are dropped (unknown-interface guard)");
        Some(g)
    };
    // The counter lives in the (pinned) maps across agents: count from here.
    let mut last_lost = dp.events_lost();
    let mut compiler = Compiler::new(Scope::Node(cfg.node.clone()));
    compiler.reserve_numbers(numbers.identity, numbers.endpoint, numbers.rule);
    let mesh = match &cfg.mesh {
        Some(m) => {
            let mesh = {
                let mut registry = state.registry.lock().map_err(|_| anyhow::anyhow!("metrics registry poisoned"))?;
                mesh::Mesh::start(m, &cfg.node, &mut registry)?
            };
            if let Ok(mut c) = state.certs.lock() {
                *c = Some(mesh.cache.clone());
            }
            if let Some(listener) = m.capture {
                dp.set_steering(Some(dataplane::Steering { listener, mark: mesh::REDIRECT_MARK }))?;
                tracing::info!(%listener, "pod-to-pod TCP is steered into the proxy");
            }
            Some(mesh)
        }
        None => {
            // Policy enforcement only: nothing is steered.
            dp.set_steering(None)?;
            None
        }
    };
    let mut service_source = match &cfg.service_cgroup {
        Some(cgroup) => {
            dp.enable_services(cgroup)?;
            tracing::info!(cgroup = %cgroup.display(), "Service cluster IPs are translated to their backends at the socket");
            dp.set_service_cidrs(&cfg.service_cidrs)?;
            if !cfg.service_cidrs.is_empty() {
                let cidrs: Vec<String> = cfg.service_cidrs.iter().map(|(n, l)| format!("{n}/{l}")).collect();
                tracing::info!(cidrs = ?cidrs, "pod TCP to these Service CIDRs is dropped unless translated");
            }
            Some(crate::kube_source::open::<services::ServiceKinds>(
                &cfg.source,
                crate::kube_source::service_resources(),
            )?)
        }
        None => {
            dp.disable_services();
            // Without translation every cluster IP is left to kube-proxy.
            dp.set_service_cidrs(&[])?;
            metrics.service_frontends.set(-1);
            None
        }
    };
    // The pods' ends of node-local legs: set by the socket programs, so only
    // where they are attached (else the datapath would record legs nobody
    // takes). An agent without it clears what a predecessor set.
    let pods_cc = match (&cfg.mesh, &cfg.service_cgroup) {
        (Some(m), Some(_)) if m.capture.is_some() => m.local_cc.as_deref(),
        _ => None,
    };
    dp.set_local_cc(pods_cc)?;
    if let Some(cc) = pods_cc {
        tracing::info!(congestion_control = cc, "node-local legs (pod to proxy) use this congestion control");
    }
    let mut service_objects = services::Objects::default();
    let stop = stop_flag()?;
    let mut source =
        crate::kube_source::open::<source::PolicyKinds>(&cfg.source, crate::kube_source::policy_resources())?;
    tracing::info!(node = %cfg.node, source = %cfg.source.describe(), "agent started");
    let mut last_problems: Vec<String> = Vec::new();
    let mut unguarded: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut last_trim: Option<std::time::Instant> = None;
    loop {
        let pass_began = std::time::Instant::now();
        let poll = source.poll();
        for e in &poll.errors {
            tracing::warn!(error = %e, "rejected manifest");
        }
        for i in &poll.ignored {
            // Services and EndpointSlices are the Service source's.
            if service_source.is_some()
                && (i.contains(": v1/Service ") || i.contains(": discovery.k8s.io/v1/EndpointSlice "))
            {
                continue;
            }
            tracing::info!(object = %i, "ignored object: its kind is not used by the agent");
        }
        metrics.rejected_objects.inc_by(poll.errors.len() as u64);
        let mut changed = false;
        if let Some(m) = &mesh {
            for change in &poll.changes {
                m.apply(change);
            }
            if !poll.changes.is_empty() {
                m.refresh_identities();
            }
        }
        for change in poll.changes {
            let diff = match &change {
                Change::Apply(o) => compiler.apply(o.clone()),
                Change::Delete(r) => compiler.delete(r),
            };
            if diff.is_empty() {
                continue;
            }
            changed = true;
            metrics.syncs.inc();
            if let Err(e) = dp.sync(&diff) {
                metrics.sync_errors.inc();
                // A full or failing map: the affected entries are missing,
                // which only ever denies (no entry opens traffic).
                tracing::error!(error = %e, "map sync failed; affected traffic is denied");
            }
        }
        if let Some(src) = &mut service_source {
            sync_services(src.as_mut(), &mut service_objects, &mut dp, &metrics, &state);
        }
        let mut problems = dp.reconcile(compiler.tables());
        if let Some(g) = &mut guard {
            // A pod veth outside every prefix is judged, but a new or
            // replaced one of that pod would not be guarded: the prefix is
            // probably wrong for this CNI. Said once per interface.
            for (pod, iface) in dp.attached_interfaces() {
                if !cfg.pod_interface_prefixes.iter().any(|p| iface.starts_with(p.as_str()))
                    && unguarded.insert(iface.to_string())
                {
                    tracing::warn!(
                        pod = %pod,
                        interface = iface,
                        prefixes = ?cfg.pod_interface_prefixes,
                        "pod interface outside --pod-interface-prefix: the guard does not cover this pod's veths"
                    );
                }
            }
            let judged = dp.attached_ifindexes();
            match g.sync(&judged) {
                Ok(()) => {
                    metrics.guard_judged.set(i64::try_from(judged.len()).unwrap_or(i64::MAX));
                }
                Err(e) => {
                    // The set is stale: new veths stay dropped, replaced
                    // ones too (their index is not in it); retried every
                    // poll.
                    metrics.guard_sync_errors.inc();
                    problems.push(format!("updating the unknown-interface guard: {e}"));
                }
            }
        }
        if problems != last_problems {
            for p in &problems {
                tracing::warn!(problem = %p, "attachment");
            }
            last_problems = problems;
        }
        dp.prune_once(compiler.tables())?;
        if changed {
            dp.bump_epoch()?;
            let audited = compiler.tables().endpoints.values().filter(|e| e.audit).count();
            let audited = i64::try_from(audited).unwrap_or(i64::MAX);
            if audited != metrics.policy_audit_pods.get() {
                if audited > 0 {
                    tracing::warn!(
                        pods = audited,
                        "pods of this node in policy audit mode by their namespace label (ztunnel.io/policy-audit): their denials are reported, not enforced"
                    );
                } else {
                    tracing::info!("no pod of this node is in namespace policy audit mode any more");
                }
            }
            metrics.policy_audit_pods.set(audited);
            tracing::info!(
                endpoints = compiler.tables().endpoints.len(),
                policy_entries = compiler.tables().policy.len(),
                "policy synced"
            );
        }
        log_events(&mut dp, &mut flowlog, &compiler, &metrics);
        let lost = dp.events_lost();
        if lost > last_lost {
            tracing::warn!(lost = lost - last_lost, "flow events lost: the event ring was full");
            metrics.flow_events_lost.inc_by(lost - last_lost);
        }
        last_lost = lost;
        let now = dp.counters();
        for (i, ((p, b), (lp, lb))) in now.iter().zip(last_counters.iter()).enumerate() {
            let labels = PacketLabels {
                direction: if i / 2 == 0 { "ingress" } else { "egress" }.to_string(),
                verdict: if i % 2 == 1 { "allowed" } else { "dropped" }.to_string(),
            };
            metrics.packets.get_or_create(&labels).inc_by(p.saturating_sub(*lp));
            metrics.bytes.get_or_create(&labels).inc_by(b.saturating_sub(*lb));
        }
        last_counters = now;
        metrics.attached_pods.set(i64::try_from(dp.attached_count()).unwrap_or(i64::MAX));
        // Ready once policy is synced and, with the mesh, every local
        // identity has its certificate.
        // Out of touch with the API server, the last known state stays
        // enforced (fail static) and readiness says so.
        let mut health = source.health();
        if let Some(src) = &service_source {
            let h = src.health();
            if !h.connected && health.connected {
                health = h;
            }
        }
        if let Ok(mut r) = state.not_ready.lock() {
            *r = if health.connected {
                "certificates pending\n".to_string()
            } else {
                format!("API server unreachable, enforcing the last known state: {}\n", health.detail)
            };
        }
        let started = mesh.as_ref().is_none_or(mesh::Mesh::ready);
        state.ready.store(started && health.connected, Ordering::Relaxed);
        if stop.load(Ordering::Relaxed) {
            tracing::info!("SIGTERM: draining");
            state.ready.store(false, Ordering::Relaxed);
            if let Some(m) = &mesh {
                m.drain(DRAIN_DEADLINE);
            }
            // Pinned programs and maps stay: enforcement (and, with the
            // mesh, fail-closed steering) continues until the next agent.
            // Unpinned ones leave with this process, so the guard stops
            // counting their veths as judged: until the next agent, pods
            // send nothing rather than anything.
            if cfg.pin_dir.is_none()
                && let Some(g) = &mut guard
                && let Err(e) = g.sync(&std::collections::BTreeSet::new())
            {
                tracing::error!(error = %e, "could not empty the guard's judged set; pods may pass unjudged");
            }
            return Ok(());
        }
        // First once start-up is over (datapath loaded, certificates
        // issued), then periodically.
        if started && last_trim.is_none_or(|t| t.elapsed() >= TRIM_EVERY) {
            last_trim = Some(std::time::Instant::now());
            let _ = release_free_memory();
        }
        // Between polls the event ring is drained more often than the
        // manifests are read, so that a burst of new flows fits in it. A
        // source that is told of changes (the API server's watches, the
        // manifest directory's inotify) ends the wait early: a new pod is
        // attached — and, with the guard, passes traffic — soon after its
        // address is known rather than up to a poll later. At most one pass per REACT under a stream of
        // changes, which then arrive batched.
        let next_poll = std::time::Instant::now() + cfg.poll;
        let mut arrived = false;
        loop {
            let deadline = if arrived { (pass_began + REACT).min(next_poll) } else { next_poll };
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            arrived |= source.wait(left.min(EVENT_DRAIN));
            log_events(&mut dp, &mut flowlog, &compiler, &metrics);
        }
    }
}

/// Applies what the Service source reports to the Service maps (the first
/// time even if nothing was reported: that sync also clears what a
/// predecessor left).
fn sync_services(
    src: &mut dyn source::ObjectSource<services::ServiceKinds>,
    objects: &mut services::Objects,
    dp: &mut Dataplane,
    metrics: &Metrics,
    state: &admin::State,
) {
    let p = src.poll();
    for e in &p.errors {
        tracing::warn!(error = %e, "rejected manifest");
    }
    metrics.rejected_objects.inc_by(p.errors.len() as u64);
    let mut any = false;
    for c in &p.changes {
        any |= objects.apply(c);
    }
    if !any && objects.synced() {
        return;
    }
    let table = objects.table();
    for e in dp.sync_services(&table) {
        tracing::error!(error = %e, "Service map sync");
    }
    objects.mark_synced();
    metrics.service_frontends.set(i64::try_from(table.len()).unwrap_or(i64::MAX));
    if let Ok(mut d) = state.services.lock() {
        *d = Some(services::dump(&table));
    }
    tracing::info!(frontends = table.len(), "Services synced");
}

/// The shortest time between two passes of the agent's loop when changes
/// end the wait between polls early.
const REACT: Duration = Duration::from_millis(25);

/// How often verdict events are drained between polls: the 256 KiB ring
/// holds ~3,600, so ~70k new flows per second pass without loss.
const EVENT_DRAIN: Duration = Duration::from_millis(50);

/// Verdict events into the flow log and the per-verdict flow counter.
fn log_events(dp: &mut Dataplane, flowlog: &mut FlowLog, compiler: &policy::Compiler, metrics: &Metrics) {
    dp.drain_events(|e| {
        let rec = flowlog.write(&e, compiler);
        metrics
            .flows
            .get_or_create(&FlowLabels { direction: rec.direction, verdict: rec.verdict, reason: rec.reason })
            .inc();
    });
    flowlog.flush();
}

/// How often the allocator is asked to give free pages back.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Returns the allocator's free pages to the kernel now rather than after
/// jemalloc's decay time: loading the datapath (the kernel's BTF is parsed
/// into ~10 MB of short-lived tables), a policy recompile or a burst of
/// tunnels that closed leave free pages behind. Runs on this control
/// thread, once start-up is over and then every `TRIM_EVERY`.
fn release_free_memory() -> bool {
    // "arena.<MALLCTL_ARENAS_ALL>.purge": every arena's unused pages.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    #[allow(unsafe_code)]
    // SAFETY: the name is NUL-terminated and this control takes no value
    // and returns none (all pointers null, length 0).
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        tracing::debug!(rc, "jemalloc purge failed");
    }
    rc == 0
}

/// How long a draining agent lets open tunnels finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Sets the returned flag on SIGTERM or SIGINT (a tiny runtime on its own
/// thread; no unsafe signal handler).
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    let mut term = {
        let _g = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?
    };
    let mut int = {
        let _g = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?
    };
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        });
        set.store(true, Ordering::Relaxed);
    })?;
    Ok(flag)
}

#[cfg(test)]
mod tests {
    /// The purge names a control this jemalloc has (with a wrong name it
    /// would do nothing, and start-up's freed pages would stay resident
    /// until jemalloc's decay got to them), here with freed pages to purge.
    #[test]
    fn the_allocator_purge_is_accepted() {
        let big = vec![1u8; 8 << 20];
        drop(std::hint::black_box(big));
        assert!(super::release_free_memory());
    }
}
