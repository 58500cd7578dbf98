//! `ztunnel ca ...`: the operator CLI of the CA (local mode: a CA directory).
//!
//! Every command that changes the CA takes the directory's lock, loads the
//! state, applies one step of the core state machine and saves it; running
//! servers pick the change up within their reload interval. `bundle.pem`
//! (public) is rewritten after each change for tools and bootstrapping.
//!
//! Exit codes: 0 done (or already done), 1 refused (wrong stage or
//! precondition not met), 2 bad input or IO error.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use ca::{Authority, AuthorityParams, CaError, CaState, IssuePolicy, Outcome, TrustDomain};
use ca_server::DirStore;
use ca_server::store::Lock;
use time::{Duration, OffsetDateTime};

use super::render::paint;
use super::{CaCommand, CaDir, ImportArgs, InitArgs, Output, RotateStep, ServeArgs};

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn write_bundle(store: &DirStore, state: &CaState) -> anyhow::Result<()> {
    let path = store.dir().join("bundle.pem");
    let tmp = store.dir().join(".bundle.pem.tmp");
    std::fs::write(&tmp, state.bundle(now()).pem()).with_context(|| format!("{}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("{}", path.display()))?;
    Ok(())
}

/// Reads an import source: explicit files, or a directory in one of the
/// usual layouts.
fn import_material(args: &ImportArgs) -> anyhow::Result<(String, String, String)> {
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    if let Some(dir) = &args.from {
        // cert-manager / kubernetes.io/tls: ca.crt (root), tls.crt (signing
        // cert, maybe a chain), tls.key. Istio plug-in CA: root-cert.pem,
        // ca-cert.pem, ca-key.pem, cert-chain.pem.
        let layouts: [(&str, &str, &str); 3] = [
            ("ca.crt", "tls.crt", "tls.key"),
            ("root-cert.pem", "cert-chain.pem", "ca-key.pem"),
            ("root-cert.pem", "ca-cert.pem", "ca-key.pem"),
        ];
        for (root, chain, key) in layouts {
            let (r, c, k) = (dir.join(root), dir.join(chain), dir.join(key));
            if r.exists() && c.exists() && k.exists() {
                return Ok((read(&r)?, read(&c)?, read(&k)?));
            }
        }
        bail!(
            "{}: expected ca.crt + tls.crt + tls.key, or root-cert.pem + cert-chain.pem (or ca-cert.pem) + ca-key.pem",
            dir.display()
        );
    }
    match (&args.root, &args.cert_chain, &args.key) {
        (Some(r), Some(c), Some(k)) => Ok((read(r)?, read(c)?, read(k)?)),
        (Some(r), None, Some(k)) => {
            let root = read(r)?;
            Ok((root.clone(), root, read(k)?))
        }
        _ => bail!("give --from DIR, or --root and --key (and --cert-chain for an intermediate)"),
    }
}

fn params(args: &InitArgs) -> AuthorityParams {
    AuthorityParams {
        root_validity: Duration::days(args.root_validity_days),
        intermediate_validity: Duration::days(args.intermediate_validity_days),
    }
}

fn refused(e: &CaError) -> bool {
    matches!(e, CaError::Rotation(_))
}

fn locked(dir: &CaDir) -> anyhow::Result<(DirStore, Lock, CaState)> {
    let store = DirStore::new(&dir.dir);
    let lock = store.lock()?;
    let state = store.load()?;
    Ok((store, lock, state))
}

/// Runs `ztunnel ca ...`.
pub fn run(cmd: CaCommand, color: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCommand::Init(args) => init(&args, color),
        CaCommand::Import(args) => import(&args, color),
        CaCommand::Token { dir, node } => {
            if dir.kube {
                bail!("node tokens are for local mode; in Kubernetes mode agents present service account tokens");
            }
            let store = DirStore::new(&dir.dir);
            let lock = store.lock()?;
            if !store.exists() {
                bail!("{}: no CA here (run `ztunnel ca init` first)", dir.dir.display());
            }
            let path = store.create_token(&node, &lock)?;
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Status { dir, output } => {
            let state = if dir.kube {
                crate::ca_kube::read_state(&dir.namespace, &dir.secret)?.0
            } else {
                DirStore::new(&dir.dir).load()?
            };
            let status = state.status(now())?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                Output::Text => print!("{}", render_status(&status, color)),
            }
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Rotate { step, dir, force, output } => rotate(step, &dir, force, output, color),
        CaCommand::Serve(args) => serve(args),
    }
}

fn init(args: &InitArgs, color: bool) -> anyhow::Result<ExitCode> {
    let td = TrustDomain::new(&args.trust_domain)?;
    if args.dir.kube {
        if crate::ca_kube::read_state(&args.dir.namespace, &args.dir.secret).is_ok() {
            eprintln!("Secret {}/{}: a CA already exists there; nothing changed", args.dir.namespace, args.dir.secret);
            return Ok(ExitCode::from(1));
        }
        let t = now();
        let state = new_state(args, td, t)?;
        crate::ca_kube::write_state(&args.dir.namespace, &args.dir.secret, &state, None)?;
        println!("{} CA initialised in Secret {}/{}", paint("✓", true, color), args.dir.namespace, args.dir.secret);
        println!("  trust domain  {}", state.trust_domain);
        println!("  authority     {}", state.active.id);
        return Ok(ExitCode::SUCCESS);
    }
    let store = DirStore::new(&args.dir.dir);
    let lock = store.lock()?;
    if store.exists() {
        eprintln!("{}: a CA already exists here; nothing changed", args.dir.dir.display());
        return Ok(ExitCode::from(1));
    }
    let t = now();
    let state = new_state(args, td, t)?;
    store.create(&state, &lock)?;
    write_bundle(&store, &state)?;
    for node in &args.nodes {
        store.create_token(node, &lock)?;
    }
    println!("{} CA initialised in {}", paint("✓", true, color), args.dir.dir.display());
    println!("  trust domain  {}", state.trust_domain);
    println!("  authority     {}", state.active.id);
    println!("  trust bundle  {}", store.dir().join("bundle.pem").display());
    for node in &args.nodes {
        println!("  token         {}", store.dir().join("tokens").join(node).display());
    }
    Ok(ExitCode::SUCCESS)
}

fn new_state(args: &InitArgs, td: TrustDomain, t: OffsetDateTime) -> anyhow::Result<CaState> {
    let authority = Authority::generate(&td, t, params(args))?;
    let policy = IssuePolicy {
        default_ttl: Duration::seconds(args.default_ttl_secs.min(args.max_ttl_secs) as i64),
        max_ttl: Duration::seconds(args.max_ttl_secs as i64),
        // Short maximum lifetimes (demos, tests) lower the floor too.
        min_ttl: IssuePolicy::default().min_ttl.min(Duration::seconds(args.max_ttl_secs as i64)),
        ..IssuePolicy::default()
    };
    let mut state = CaState::new(td, authority, policy, t);
    state.min_propagation = Duration::seconds(args.min_propagation_secs as i64);
    Ok(state)
}

fn import(args: &ImportArgs, color: bool) -> anyhow::Result<ExitCode> {
    if args.dir.kube {
        bail!("import works on a CA directory; import there, then store its state.json in the Secret");
    }
    let (root, chain, key) = import_material(args)?;
    let store = DirStore::new(&args.dir.dir);
    let lock = store.lock()?;
    let t = now();
    if !store.exists() {
        let td = TrustDomain::new(&args.trust_domain)?;
        let authority = Authority::import(&td, &root, &chain, &key, t, AuthorityParams::default())?;
        let state = CaState::new(td, authority, IssuePolicy::default(), t);
        store.create(&state, &lock)?;
        write_bundle(&store, &state)?;
        println!("{} CA initialised from imported material (authority {})", paint("✓", true, color), state.active.id);
        return Ok(ExitCode::SUCCESS);
    }
    let mut state = store.load()?;
    let authority = Authority::import(&state.trust_domain, &root, &chain, &key, t, AuthorityParams::default())?;
    match state.prepare_with(t, authority) {
        Ok(Outcome::Changed) => {
            store.save(&state, &lock)?;
            write_bundle(&store, &state)?;
            println!(
                "{} imported material prepared for rotation; next: `ztunnel ca rotate propagate`",
                paint("✓", true, color)
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(Outcome::Unchanged) => {
            println!("already prepared; nothing changed");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if refused(&e) => {
            eprintln!("{} {e}", paint("refused:", false, color));
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

fn rotate(step: RotateStep, dir: &CaDir, force: bool, output: Output, color: bool) -> anyhow::Result<ExitCode> {
    // Kubernetes mode: read the Secret, step, write it back only if nobody
    // changed it meanwhile (resourceVersion precondition).
    let mut kube_secret = None;
    let (place, mut state) = if dir.kube {
        let (state, secret) = crate::ca_kube::read_state(&dir.namespace, &dir.secret)?;
        kube_secret = Some(secret);
        (None, state)
    } else {
        let (store, lock, state) = locked(dir)?;
        (Some((store, lock)), state)
    };
    let t = now();
    let td = state.trust_domain.clone();
    let result = match step {
        RotateStep::Prepare => state.prepare(t, || Authority::generate(&td, t, AuthorityParams::default())),
        RotateStep::Propagate => state.propagate(t),
        RotateStep::Switch => state.switch(t, force),
        RotateStep::Retire => state.retire(t, force),
        RotateStep::Abort => state.abort(t),
        RotateStep::Intermediate => state.renew_intermediate(t, AuthorityParams::default().intermediate_validity),
    };
    let name = format!("{step:?}").to_lowercase();
    let (code, outcome, message) = match result {
        Ok(Outcome::Changed) => {
            match (&place, kube_secret) {
                (Some((store, lock)), _) => {
                    store.save(&state, lock)?;
                    write_bundle(store, &state)?;
                }
                (None, Some(secret)) => crate::ca_kube::write_state(&dir.namespace, &dir.secret, &state, Some(secret))?,
                (None, None) => bail!("no CA state location"),
            }
            let last = state.history.last().map(|h| h.event.clone()).unwrap_or_default();
            (ExitCode::SUCCESS, "changed", last)
        }
        Ok(Outcome::Unchanged) => (ExitCode::SUCCESS, "unchanged", format!("{name}: already done; nothing changed")),
        Err(e) if refused(&e) => (ExitCode::from(1), "refused", e.to_string()),
        Err(e) => return Err(e.into()),
    };
    let status = state.status(t)?;
    match output {
        Output::Json => {
            let v = serde_json::json!({ "step": name, "outcome": outcome, "message": message, "status": status });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            let ok = outcome != "refused";
            let mark = if ok { "✓" } else { "✗" };
            println!("{} {message}", paint(mark, ok, color));
            println!("  stage {}  ·  next: {}", status.stage, status.next_step);
        }
    }
    Ok(code)
}

/// Human-readable `ca status`.
pub fn render_status(s: &ca::CaStatus, color: bool) -> String {
    let mut o = String::new();
    let fmt =
        |t: &OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string());
    let _ = writeln!(o, "trust domain   {}", s.trust_domain);
    let _ = writeln!(o, "stage          {} (state version {})", s.stage, s.version);
    let _ = writeln!(o, "next step      {}", s.next_step);
    let _ = writeln!(o, "trust bundle   {}", s.bundle.join(", "));
    let _ = writeln!(
        o,
        "leaf TTL       default {} s, max {} s",
        s.policy.default_ttl.whole_seconds(),
        s.policy.max_ttl.whole_seconds()
    );
    let t = now();
    for a in &s.authorities {
        let _ = writeln!(o, "\nauthority {}  [{}]", a.id, a.role);
        for (kind, c) in [("root", &a.root), ("intermediate", &a.intermediate)] {
            let left = (c.not_after - t).whole_days();
            let _ = writeln!(
                o,
                "  {kind:<13} serial {}  expires {} ({})",
                &c.serial[..c.serial.len().min(16)],
                fmt(&c.not_after),
                paint(&format!("{left} days"), left > 30, color)
            );
        }
        if !a.has_root_key {
            let _ = writeln!(o, "  root key      not held (imported offline root)");
        }
    }
    for r in &s.retained {
        let _ = writeln!(o, "\nretained root {} until {}", r.authority, fmt(&r.until));
    }
    if !s.history.is_empty() {
        let _ = writeln!(o, "\nrecent events");
        for h in &s.history {
            let _ = writeln!(o, "  {}  {}", fmt(&h.at), h.event);
        }
    }
    o
}

/// [`crate::ca_kube::SecretSource`] shared with the bundle publisher.
struct Shared(Arc<crate::ca_kube::SecretSource>);

impl ca_server::Source for Shared {
    fn fingerprint(&self) -> String {
        self.0.fingerprint()
    }
    fn load_state(&self) -> Result<ca::CaState, ca_server::store::StoreError> {
        self.0.load_state()
    }
    fn load_authenticator(&self) -> Result<Arc<dyn ca_server::auth::Authenticator>, ca_server::store::StoreError> {
        self.0.load_authenticator()
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let spec = match &args.local {
        Some(dir) if !args.dir.kube => crate::kube_source::SourceSpec::Local(dir.clone()),
        _ => crate::kube_source::SourceSpec::Kube,
    };
    let index = Arc::new(crate::ca_index::ManifestIndex::start(&spec, args.poll_ms)?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let source: Box<dyn ca_server::Source> = match spec {
            crate::kube_source::SourceSpec::Local(_) => Box::new(DirStore::new(&args.dir.dir)),
            crate::kube_source::SourceSpec::Kube => {
                let client = crate::kube_source::client_here().await?;
                let auth = Arc::new(crate::ca_kube::TokenReviewAuth::new(
                    client.clone(),
                    args.token_audience.clone(),
                    &args.agent_service_accounts,
                ));
                let secret = Arc::new(
                    crate::ca_kube::SecretSource::start(client.clone(), &args.dir.namespace, &args.dir.secret, auth)
                        .await?,
                );
                secret.publish_bundle(
                    client,
                    &args.dir.namespace,
                    &args.bundle_configmap,
                    std::time::Duration::from_millis(args.poll_ms.max(500)),
                );
                Box::new(Shared(secret))
            }
        };
        let config = ca_server::Config {
            listen: args.listen,
            admin: Some(args.admin),
            server_names: args.server_names.clone(),
            reload: std::time::Duration::from_millis(args.poll_ms),
        };
        let server = ca_server::Server::bind(config, source, index, Arc::new(ca_server::SystemClock)).await?;
        tracing::info!(
            listen = ?server.local_addr(),
            admin = ?server.admin_addr(),
            "CA serving"
        );
        eprintln!(
            "CA serving on https://{} (admin http://{})",
            server.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            server.admin_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        server.serve(shutdown_signal()).await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// For argument defaults.
pub fn default_dir() -> PathBuf {
    PathBuf::from("/var/lib/ztunnel/ca")
}
