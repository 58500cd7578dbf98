//! Command-line interface: argument types and dispatch. Each command is thin;
//! the logic lives in the library crates.

mod ca_cmd;
mod policy_cmd;
mod render;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ztunnel: NetworkPolicy in eBPF and transparent mTLS for Kubernetes pods.
#[derive(Debug, Parser)]
#[command(name = "ztunnel", version, about, propagate_version = true)]
pub struct Cli {
    /// Colour output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// When to use colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent (needs root: loads BPF programs).
    Run(RunArgs),
    /// Inspect NetworkPolicy decisions offline, from manifests.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Operate the certificate authority: init, status, rotation, serve.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run the Ingress TLS gateway (as a pod in the mesh).
    Gateway(GatewayArgs),
}

/// `ztunnel gateway`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["local", "kube"])))]
pub struct GatewayArgs {
    /// Local mode: a directory of Kubernetes manifests (Ingress,
    /// IngressClass, Service, EndpointSlice, Secret), watched for changes.
    #[arg(long = "local", value_name = "DIR", env = "ZTUNNEL_LOCAL")]
    pub local: Option<PathBuf>,
    /// Kubernetes mode: watch the API server (in-cluster service account,
    /// or `KUBECONFIG`).
    #[arg(long, conflicts_with = "local")]
    pub kube: bool,
    /// Kubernetes mode: read TLS Secrets only in these namespaces
    /// (repeatable or comma-separated; default: all namespaces, which needs
    /// cluster-wide Secret read access).
    #[arg(long = "secret-namespace", value_delimiter = ',', requires = "kube")]
    pub secret_namespaces: Vec<String>,
    /// HTTPS listener.
    #[arg(long, default_value = "0.0.0.0:443", env = "ZTUNNEL_GATEWAY_HTTPS")]
    pub https: std::net::SocketAddr,
    /// Plain-HTTP listener.
    #[arg(long, default_value = "0.0.0.0:80", env = "ZTUNNEL_GATEWAY_HTTP")]
    pub http: std::net::SocketAddr,
    /// No plain-HTTP listener.
    #[arg(long)]
    pub no_http: bool,
    /// Serve plain HTTP for TLS hosts too, instead of redirecting to HTTPS.
    #[arg(long)]
    pub no_https_redirect: bool,
    /// The HTTPS port clients see (in redirects; default: the --https port).
    #[arg(long, value_name = "PORT")]
    pub public_https_port: Option<u16>,
    /// IngressClass to serve (also: classes whose controller is
    /// `ztunnel.dev/ingress-gateway`).
    #[arg(long, default_value = "ztunnel", env = "ZTUNNEL_INGRESS_CLASS")]
    pub ingress_class: String,
    /// `namespace/name` of a TLS Secret for handshakes no Ingress covers
    /// (default: a generated self-signed certificate).
    #[arg(long, value_name = "NS/NAME")]
    pub default_certificate: Option<String>,
    /// Admin endpoint (`/ready`, `/metrics`, `/config_dump`).
    #[arg(long, default_value = "127.0.0.1:15021", env = "ZTUNNEL_ADMIN")]
    pub admin: std::net::SocketAddr,
    /// Access log: `stdout`, `off` or a file path.
    #[arg(long, default_value = "stdout", env = "ZTUNNEL_ACCESS_LOG")]
    pub access_log: String,
    /// How often to look for manifest changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub poll_ms: u64,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// TLS handshake timeout, seconds.
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout_secs: u64,
    /// HTTP/1 request header timeout (also idle keep-alive), seconds.
    #[arg(long, default_value_t = 15)]
    pub header_timeout_secs: u64,
    /// Close connections idle this long with no request in flight, seconds.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Time to the backend's response headers before a 504, seconds.
    #[arg(long, default_value_t = 60)]
    pub request_timeout_secs: u64,
    /// Backend connect timeout, milliseconds (then the next endpoint).
    #[arg(long, default_value_t = 3000)]
    pub connect_timeout_ms: u64,
    /// Largest request header block, bytes (431 above).
    #[arg(long, default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Client connections open at once.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, default_value_t = 128)]
    pub max_streams: u32,
    /// Expect a PROXY protocol header (v1 or v2) at the start of every
    /// connection, as a load balancer in front sends (HAProxy, AWS NLB, ...):
    /// its client address is the one logged and put in `X-Forwarded-For`.
    /// Connections without a valid header are closed.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Send `Strict-Transport-Security: max-age=N` on HTTPS responses
    /// (0: off). Browsers then refuse plain HTTP, and certificate errors
    /// cannot be clicked through, for that long: set it once every host
    /// has a certificate browsers trust.
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub hsts_max_age_secs: u64,
    /// With `--hsts-max-age-secs`: the policy covers subdomains too.
    #[arg(long, requires = "hsts_max_age_secs")]
    pub hsts_include_subdomains: bool,
    /// CA certificates (PEM) for backends whose Service port has
    /// `appProtocol: https`: the gateway speaks TLS to them and requires a
    /// certificate chaining to these and naming `<service>.<namespace>.svc`.
    /// Without it such backends answer 502 (never plain HTTP).
    #[arg(long, value_name = "PATH", env = "ZTUNNEL_GATEWAY_BACKEND_CA")]
    pub backend_ca: Option<PathBuf>,
}

/// Where the CA state lives: a directory (local mode) or a Secret
/// (Kubernetes mode).
#[derive(Debug, Args)]
pub struct CaDir {
    /// CA directory: state with keys (0600), node tokens, bundle.pem.
    #[arg(long = "dir", env = "ZTUNNEL_CA_DIR", default_value_os_t = ca_cmd::default_dir())]
    pub dir: PathBuf,
    /// Kubernetes mode: the state is in a Secret (`KUBECONFIG` or the
    /// in-cluster service account).
    #[arg(long)]
    pub kube: bool,
    /// Kubernetes mode: the CA's namespace.
    #[arg(long, default_value = "ztunnel-system", env = "ZTUNNEL_CA_NAMESPACE")]
    pub namespace: String,
    /// Kubernetes mode: the Secret with the CA state (`state.json`).
    #[arg(long, default_value = "ztunnel-ca")]
    pub secret: String,
}

/// `ztunnel ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new CA (root + intermediate) and node tokens.
    Init(InitArgs),
    /// Import an operator-supplied root/intermediate: initialises a new CA,
    /// or prepares a rotation to it if a CA exists.
    Import(ImportArgs),
    /// Create (or replace) a node's bootstrap token; prints its path.
    Token {
        #[command(flatten)]
        dir: CaDir,
        /// Node name.
        #[arg(long)]
        node: String,
    },
    /// Roots, intermediates, expiries, rotation stage and next step.
    Status {
        #[command(flatten)]
        dir: CaDir,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// One step of a root rotation (prepare → propagate → switch → retire,
    /// or abort), or `intermediate` to renew the intermediate alone.
    Rotate {
        /// The step.
        #[arg(value_enum)]
        step: RotateStep,
        #[command(flatten)]
        dir: CaDir,
        /// Skip the waiting precondition of `switch` or `retire`.
        #[arg(long)]
        force: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Serve the CA API (local mode: pods from a manifest directory).
    Serve(ServeArgs),
}

/// Rotation steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RotateStep {
    /// Generate the next root and intermediate (not trusted yet).
    Prepare,
    /// Add the new root to the trust bundle.
    Propagate,
    /// Sign with the new intermediate; workloads renew.
    Switch,
    /// Remove the old root from the bundle.
    Retire,
    /// Return to the previous authority.
    Abort,
    /// Renew the intermediate under the same root.
    Intermediate,
}

/// `ztunnel ca init`
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub dir: CaDir,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Root validity in days.
    #[arg(long, default_value_t = 3650)]
    pub root_validity_days: i64,
    /// Intermediate validity in days.
    #[arg(long, default_value_t = 365)]
    pub intermediate_validity_days: i64,
    /// Default workload certificate TTL in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub default_ttl_secs: u64,
    /// Longest workload certificate TTL in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub max_ttl_secs: u64,
    /// Seconds a new root must be in the bundle before `switch`.
    #[arg(long, default_value_t = 30)]
    pub min_propagation_secs: u64,
    /// Create a bootstrap token for this node; repeatable.
    #[arg(long = "node")]
    pub nodes: Vec<String>,
}

/// `ztunnel ca import`
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub dir: CaDir,
    /// Directory with ca.crt/tls.crt/tls.key or root-cert.pem/cert-chain.pem/ca-key.pem.
    #[arg(long, conflicts_with_all = ["root", "cert_chain", "key"])]
    pub from: Option<PathBuf>,
    /// Root certificate (PEM).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Signing certificate, optionally followed by intermediates (PEM).
    #[arg(long)]
    pub cert_chain: Option<PathBuf>,
    /// Key of the signing certificate (or of the root, without --cert-chain).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Trust domain (only when initialising).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
}

/// `ztunnel ca serve`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["local", "kube"])))]
pub struct ServeArgs {
    #[command(flatten)]
    pub dir: CaDir,
    /// Local mode: the manifest directory with the pods (authorisation: a
    /// node gets only identities of pods scheduled on it); keys in --dir.
    #[arg(long = "local", value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// Kubernetes mode: the ConfigMap the trust bundle is published in
    /// (`root-cert.pem`).
    #[arg(long, default_value = "ztunnel-trust-bundle")]
    pub bundle_configmap: String,
    /// Kubernetes mode: the audience agents' tokens must carry.
    #[arg(long, default_value = "ztunnel-ca")]
    pub token_audience: String,
    /// Kubernetes mode: `namespace/name` of the node agents' service
    /// account; repeatable.
    #[arg(long = "agent-service-account", default_values_t = ["ztunnel-system/ztunnel-agent".to_string()])]
    pub agent_service_accounts: Vec<String>,
    /// HTTPS API address.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub listen: std::net::SocketAddr,
    /// Plain-HTTP admin address (`/metrics`, `/ready`).
    #[arg(long, default_value = "127.0.0.1:15022")]
    pub admin: std::net::SocketAddr,
    /// DNS name in the API certificate; repeatable.
    #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "ztunnel-ca".to_string(), "ztunnel-ca.ztunnel-system.svc".to_string()])]
    pub server_names: Vec<String>,
    /// How often to look for CA state and manifest changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub poll_ms: u64,
}

/// `ztunnel run`
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["local", "kube"])))]
pub struct RunArgs {
    /// Local mode: a directory of Kubernetes manifests, watched for changes.
    #[arg(long = "local", value_name = "DIR", env = "ZTUNNEL_LOCAL")]
    pub local: Option<PathBuf>,
    /// Kubernetes mode: watch the API server (in-cluster service account,
    /// or `KUBECONFIG`).
    #[arg(long, conflicts_with = "local")]
    pub kube: bool,
    /// This node's name.
    #[arg(long, env = "ZTUNNEL_NODE")]
    pub node: String,
    /// Write the JSON flow log here (default: stdout).
    #[arg(long, value_name = "PATH", env = "ZTUNNEL_FLOW_LOG")]
    pub flow_log: Option<PathBuf>,
    /// Rotate the --flow-log file once it holds this many MiB (0: never).
    #[arg(long, value_name = "MIB", default_value_t = 100, env = "ZTUNNEL_FLOW_LOG_MAX_MIB")]
    pub flow_log_max_mib: u64,
    /// Rotated flow-log files kept (PATH.1, PATH.2, ...).
    #[arg(long, value_name = "N", default_value_t = 5, env = "ZTUNNEL_FLOW_LOG_KEEP")]
    pub flow_log_keep: usize,
    /// How often to look for manifest changes, in milliseconds.
    #[arg(long, default_value_t = 200, env = "ZTUNNEL_POLL_MS")]
    pub poll_ms: u64,
    /// Pin maps and program links in this bpffs directory so enforcement
    /// survives agent restarts (default: /sys/fs/bpf/ztunnel/NODE).
    #[arg(long, value_name = "DIR", env = "ZTUNNEL_BPFFS")]
    pub bpffs: Option<PathBuf>,
    /// Do not pin: programs are detached when the agent exits.
    #[arg(long, conflicts_with = "bpffs")]
    pub no_pin: bool,
    /// Policy audit mode, for rolling out NetworkPolicy: flows a policy
    /// denies are let through and reported (flow log verdict `audit`,
    /// `ztunnel_flows_total{verdict="audit"}`). Restarting without it
    /// enforces again, cutting the flows it let through.
    #[arg(long, env = "ZTUNNEL_POLICY_AUDIT")]
    pub policy_audit: bool,
    /// The CNI's pod veth name prefix (`cali` for Calico; repeatable or
    /// comma-separated): traffic arriving on such an interface before the
    /// agent has attached its programs to it is dropped (an nftables table,
    /// `ztunnel_guard`), so a new or recreated pod is never unjudged.
    /// Needs the `nft` command.
    #[arg(
        long = "pod-interface-prefix",
        value_name = "PREFIX",
        value_delimiter = ',',
        env = "ZTUNNEL_POD_INTERFACE_PREFIX"
    )]
    pub pod_interface_prefix: Vec<String>,
    /// The cgroup v2 directory whose sockets (the pods', and everything
    /// below it) get Service cluster IPs translated to a ready backend at
    /// `connect`/`sendmsg`, so that policy and the mesh see the backend pod
    /// as under kube-proxy; `off` leaves cluster IPs to kube-proxy.
    #[arg(long, value_name = "PATH|off", default_value = "/sys/fs/cgroup", env = "ZTUNNEL_SERVICE_CGROUP")]
    pub service_cgroup: String,
    /// The cluster's Service CIDR(s) (`--service-cluster-ip-range` of the
    /// API server; repeatable or comma-separated). With the mesh on, pod
    /// TCP to these addresses that was not translated at its socket (a
    /// Service the agent has not seen yet) is dropped rather than left to
    /// kube-proxy, which would carry it past the mesh in the clear.
    #[arg(long = "service-cidr", value_name = "CIDR", value_delimiter = ',', env = "ZTUNNEL_SERVICE_CIDR")]
    pub service_cidr: Vec<String>,
    /// Admin endpoint address (`/ready`, `/metrics`).
    #[arg(long, default_value = "127.0.0.1:15021", env = "ZTUNNEL_ADMIN")]
    pub admin: std::net::SocketAddr,
    /// CA API address: enables the mTLS side (workload certificates and the
    /// HBONE listener).
    #[arg(long, value_name = "HOST:PORT", requires_all = ["ca_bundle", "ca_token"], env = "ZTUNNEL_CA_ADDRESS")]
    pub ca_address: Option<String>,
    /// Name in the CA's certificate.
    #[arg(long, default_value = "localhost", env = "ZTUNNEL_CA_SERVER_NAME")]
    pub ca_server_name: String,
    /// Bootstrap trust bundle (the CA directory's bundle.pem).
    #[arg(long, value_name = "PATH", env = "ZTUNNEL_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// This node's CA token file.
    #[arg(long, value_name = "PATH", env = "ZTUNNEL_CA_TOKEN")]
    pub ca_token: Option<PathBuf>,
    /// Trust domain of workload identities.
    #[arg(long, default_value = "cluster.local", env = "ZTUNNEL_TRUST_DOMAIN")]
    pub trust_domain: String,
    /// HBONE listen address.
    #[arg(long, default_value = "0.0.0.0:15008", env = "ZTUNNEL_HBONE")]
    pub hbone: std::net::SocketAddr,
    /// Connect to pods from the original source address (IP_TRANSPARENT).
    #[arg(long)]
    pub transparent: bool,
    /// Capture listener (IPv4) the datapath steers pod-to-pod TCP to.
    #[arg(long, default_value = "127.0.0.1:15001", env = "ZTUNNEL_CAPTURE")]
    pub capture: std::net::SocketAddrV4,
    /// Do not steer pod TCP into the proxy (serve inbound tunnels only).
    #[arg(long)]
    pub no_capture: bool,
    /// TCP congestion control of the node-local legs between pods and the
    /// proxy: the proxy's capture and delivery sockets, and (where the
    /// socket programs are attached, see --service-cgroup) the pods' own
    /// sockets of captured and delivered connections. Their peer is one
    /// veth away, so a pacing algorithm (BBR) there only costs timers; the
    /// tunnel between nodes keeps the node's default. `keep` leaves every
    /// socket on its own.
    #[arg(long, value_name = "NAME|keep", default_value = "cubic", env = "ZTUNNEL_LOCAL_CONGESTION_CONTROL")]
    pub local_congestion_control: String,
    /// Proxy worker threads (1: every hand-off of a tunnel stays on one
    /// core, the lowest latency; raise on nodes with cores to spare).
    #[arg(long, default_value_t = 1, env = "ZTUNNEL_PROXY_THREADS")]
    pub proxy_threads: usize,
}

/// `ztunnel policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Whether one connection is allowed, and why.
    Check(CheckArgs),
    /// The reachability matrix of every pod against every pod.
    Matrix(MatrixArgs),
}

/// Where manifests come from.
#[derive(Debug, Args)]
pub struct Sources {
    /// Manifest files or directories (read recursively); repeatable.
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// `ztunnel policy check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// Source: `namespace/pod`, `pod` (namespace default) or an IP address.
    #[arg(long)]
    pub from: String,
    /// Destination: `namespace/pod`, `pod` or an IP address; a Service's
    /// cluster IP is judged for each of its ready backends, as the datapath
    /// sends each connection to one of them.
    #[arg(long)]
    pub to: String,
    /// Destination port and protocol, e.g. `80/TCP`, `53/UDP`, `ICMP`.
    #[arg(long, default_value = "80/TCP")]
    pub port: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `ztunnel policy matrix`
#[derive(Debug, Args)]
pub struct MatrixArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// Ports to check (one matrix each); repeatable.
    #[arg(long = "port", default_value = "80/TCP")]
    pub ports: Vec<String>,
    /// Addresses outside the cluster to include as rows and columns; repeatable.
    #[arg(long = "external", value_name = "IP")]
    pub external: Vec<std::net::IpAddr>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let color = render::use_color(cli.color);
    match cli.command {
        Command::Run(args) => {
            let default_pins = PathBuf::from("/sys/fs/bpf/ztunnel").join(&args.node);
            crate::agent::run(crate::agent::Config {
                source: source_spec(args.local, args.kube),
                node: args.node,
                flow_log: args.flow_log,
                flow_log_max_bytes: args.flow_log_max_mib.saturating_mul(1 << 20),
                flow_log_keep: args.flow_log_keep,
                poll: std::time::Duration::from_millis(args.poll_ms),
                pin_dir: if args.no_pin { None } else { Some(args.bpffs.unwrap_or(default_pins)) },
                admin: Some(args.admin),
                pod_interface_prefixes: args.pod_interface_prefix,
                service_cgroup: (args.service_cgroup != "off").then(|| PathBuf::from(&args.service_cgroup)),
                service_cidrs: args
                    .service_cidr
                    .iter()
                    .map(|c| crate::agent::services::parse_cidr(c))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!(e))?,
                mesh: match (args.ca_address, args.ca_bundle, args.ca_token) {
                    (Some(ca_address), Some(ca_bundle), Some(ca_token)) => Some(crate::agent::mesh::MeshConfig {
                        ca_address,
                        ca_server_name: args.ca_server_name,
                        ca_bundle,
                        ca_token,
                        trust_domain: args.trust_domain,
                        hbone: args.hbone,
                        transparent: args.transparent,
                        capture: (!args.no_capture).then_some(args.capture),
                        threads: args.proxy_threads,
                        policy_audit: args.policy_audit,
                        local_cc: (args.local_congestion_control != "keep").then_some(args.local_congestion_control),
                    }),
                    _ => None,
                },
                policy_audit: args.policy_audit,
            })?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Check(args)) => policy_cmd::check(&args, color),
        Command::Policy(PolicyCommand::Matrix(args)) => policy_cmd::matrix_cmd(&args, color),
        Command::Ca(cmd) => ca_cmd::run(cmd, color),
        Command::Gateway(args) => {
            crate::ingress::run(gateway_config(args)?)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

fn source_spec(local: Option<PathBuf>, kube: bool) -> crate::kube_source::SourceSpec {
    match local {
        Some(dir) if !kube => crate::kube_source::SourceSpec::Local(dir),
        _ => crate::kube_source::SourceSpec::Kube,
    }
}

fn gateway_config(a: GatewayArgs) -> anyhow::Result<crate::ingress::Config> {
    use std::time::Duration;
    if let Some(s) = &a.default_certificate
        && s.parse::<policy::ObjectKey>().is_err()
    {
        anyhow::bail!("--default-certificate: `{s}` is not namespace/name");
    }
    let default_secret =
        a.default_certificate.map(|s| s.parse::<policy::ObjectKey>().map(|k| k.to_string()).unwrap_or(s));
    if a.max_header_bytes < 1024 {
        anyhow::bail!("--max-header-bytes: {} is too small (at least 1024)", a.max_header_bytes);
    }
    if a.max_connections == 0 || a.max_streams == 0 {
        anyhow::bail!("--max-connections and --max-streams must be positive");
    }
    let access_log = match a.access_log.as_str() {
        "off" => crate::ingress::AccessLogTarget::Off,
        "stdout" | "-" => crate::ingress::AccessLogTarget::Stdout,
        path => crate::ingress::AccessLogTarget::File(PathBuf::from(path)),
    };
    Ok(crate::ingress::Config {
        source: source_spec(a.local, a.kube),
        secret_namespaces: a.secret_namespaces,
        https: Some(a.https),
        http: (!a.no_http).then_some(a.http),
        redirect_port: (!a.no_https_redirect).then(|| a.public_https_port.unwrap_or(a.https.port())),
        admin: Some(a.admin),
        selector: crate::ingress::routes::ClassSelector { class: a.ingress_class, ..Default::default() },
        default_secret,
        limits: crate::ingress::server::Limits {
            handshake_timeout: Duration::from_secs(a.handshake_timeout_secs),
            header_timeout: Duration::from_secs(a.header_timeout_secs),
            idle_timeout: Duration::from_secs(a.idle_timeout_secs),
            request_timeout: Duration::from_secs(a.request_timeout_secs),
            connect_timeout: Duration::from_millis(a.connect_timeout_ms),
            max_header_bytes: a.max_header_bytes,
            max_connections: a.max_connections,
            max_streams: a.max_streams,
            proxy_protocol: a.proxy_protocol,
        },
        access_log,
        poll: Duration::from_millis(a.poll_ms.max(10)),
        threads: a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        hsts: (a.hsts_max_age_secs > 0).then(|| {
            let sub = if a.hsts_include_subdomains { "; includeSubDomains" } else { "" };
            format!("max-age={}{sub}", a.hsts_max_age_secs)
        }),
        backend_ca: a.backend_ca,
    })
}
