//! Command-line interface: argument types and dispatch. Each command is thin;
//! the logic lives in the library crates.

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
}

/// `ztunnel run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Local mode: a directory of Kubernetes manifests, watched for changes.
    #[arg(long = "local", value_name = "DIR")]
    pub local: PathBuf,
    /// This node's name.
    #[arg(long)]
    pub node: String,
    /// Write the JSON flow log here (default: stdout).
    #[arg(long, value_name = "PATH")]
    pub flow_log: Option<PathBuf>,
    /// How often to look for manifest changes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub poll_ms: u64,
    /// Pin maps and program links in this bpffs directory so enforcement
    /// survives agent restarts (default: /sys/fs/bpf/ztunnel/NODE).
    #[arg(long, value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
    /// Do not pin: programs are detached when the agent exits.
    #[arg(long, conflicts_with = "bpffs")]
    pub no_pin: bool,
    /// Admin endpoint address (`/ready`, `/metrics`).
    #[arg(long, default_value = "127.0.0.1:15021")]
    pub admin: std::net::SocketAddr,
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
    /// Destination: `namespace/pod`, `pod` or an IP address.
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
                manifests: args.local,
                node: args.node,
                flow_log: args.flow_log,
                poll: std::time::Duration::from_millis(args.poll_ms),
                pin_dir: if args.no_pin { None } else { Some(args.bpffs.unwrap_or(default_pins)) },
                admin: Some(args.admin),
            })?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Check(args)) => policy_cmd::check(&args, color),
        Command::Policy(PolicyCommand::Matrix(args)) => policy_cmd::matrix_cmd(&args, color),
    }
}
