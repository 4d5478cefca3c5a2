//! The `meerkat` binary: every role of Meerkat, chosen by subcommand.
//!
//! This crate only wires: command line, configuration, logging, and the lifecycle of the
//! roles, whose logic lives in the library crates.

mod cli;
mod components;
mod config;
mod http;
mod lifecycle;
mod rules;
mod serve;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::cli::{AgentCommand, Cli, Command, ConfigCommand, RulesCommand};
use crate::config::Config;

/// mimalloc instead of glibc's allocator: the ingest path allocates a string per label of
/// every series, and glibc's malloc/free took about a quarter of the gateway's CPU in
/// profiles of the remote-write benchmark.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `meerkat <version> (<git revision>)`.
pub const VERSION_LINE: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GIT_REVISION"), ")");

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("meerkat: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<(Config, config::Sources)> {
    let mut overrides = cli.global.overrides();
    if let Command::Serve(args) = &cli.command {
        overrides.no_host_metrics = args.no_host_metrics;
    }
    // The agents' cluster name is read by them, not by the configuration (which refuses
    // MEERKAT_ variables that name no key).
    Config::load(
        cli.global.config.as_deref(),
        std::env::vars().filter(|(name, _)| name != cli::CLUSTER_NAME_ENV),
        &overrides,
    )
}

/// `--token-file` as the header every request of an agent carries.
fn agent_headers(token_file: Option<&PathBuf>) -> anyhow::Result<Vec<(String, String)>> {
    let Some(path) = token_file else {
        return Ok(Vec::new());
    };
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        anyhow::bail!("the token file {} is empty", path.display());
    }
    Ok(vec![(
        "authorization".to_owned(),
        format!("Bearer {token}"),
    )])
}

/// `--heartbeat-interval`, checked.
fn heartbeat_interval(seconds: f64) -> anyhow::Result<std::time::Duration> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 600.0) {
        anyhow::bail!("--heartbeat-interval must be within (0, 600] seconds, not {seconds}");
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// `--cluster-name`, else `$MEERKAT_CLUSTER_NAME`; empty when neither says.
fn cluster_name(flag: Option<&String>) -> String {
    flag.cloned()
        .or_else(|| std::env::var(cli::CLUSTER_NAME_ENV).ok())
        .unwrap_or_default()
}

/// `meerkat agent cluster`: scrapes until SIGINT/SIGTERM, then marks series stale and flushes.
fn run_cluster_agent(cli: &Cli, args: &cli::ClusterAgentArgs) -> anyhow::Result<ExitCode> {
    let (config, _) = load_config(cli)?;
    telemetry::init_logging(&config.log)?;
    let heartbeat_interval = heartbeat_interval(args.heartbeat_interval)?;
    let cluster_name = cluster_name(args.cluster_name.as_ref());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("meerkat-agent")
        .build()?;
    let options = agent_cluster::ClusterAgentOptions {
        scrape_config: args.scrape_config.clone(),
        gateway: args.gateway.clone(),
        headers: agent_headers(args.token_file.as_ref())?,
        buffer_bytes: args.buffer_bytes,
        buffer_dir: Some(args.buffer_dir.clone()),
        cluster_name,
        heartbeat_interval,
        metrics_listen: args.metrics_listen,
        kube_api_url: args.kube_api_url.clone(),
        cluster_state: !args.no_cluster_state,
        cluster_state_interval: args
            .cluster_state_interval
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(std::time::Duration::from_secs_f64),
        kube_events: !args.no_kube_events,
    };
    run_agent(runtime, |stop| async move {
        agent_cluster::run(options, stop)
            .await
            .map_err(anyhow::Error::from)
    })
}

/// `meerkat agent node`: collects until SIGINT/SIGTERM, then marks series stale and flushes.
fn run_node_agent(cli: &Cli, args: &cli::NodeAgentArgs) -> anyhow::Result<ExitCode> {
    let (config, _) = load_config(cli)?;
    telemetry::init_logging(&config.log)?;
    if args.interval_seconds == 0 {
        anyhow::bail!("--interval-seconds must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("meerkat-agent")
        .build()?;
    let mut options = agent_node::agent::NodeAgentOptions::new(args.gateway.clone());
    options.root = args.root.clone();
    if let Some(name) = args
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
    {
        options.node_name = name;
    }
    options.interval = std::time::Duration::from_secs(args.interval_seconds);
    options.buffer_bytes = args.buffer_bytes;
    options.buffer_dir = Some(args.buffer_dir.clone());
    options.headers = agent_headers(args.token_file.as_ref())?;
    options.pods.kubelet_url = args.kubelet_url.clone();
    options.pods.kubelet_token_file = args.kubelet_token_file.clone();
    if let Some(path) = &args.pod_rules {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        options.pods.classify = agent_node::pods::ClassifyConfig::from_yaml(&text)
            .with_context(|| format!("in {}", path.display()))?;
    }
    options.containers = !args.no_containers;
    options.watch_pods = args.watch_pods;
    options.metrics_listen = args.metrics_listen;
    options.kube_api_url = args.kube_api_url.clone();
    options.log_checkpoint_dir = (!args.no_logs).then(|| args.checkpoint_dir.clone());
    options.otlp_listen =
        (!args.no_otlp_proxy).then_some((config.otlp_grpc_listen, config.otlp_http_listen));
    options.heartbeat_interval = heartbeat_interval(args.heartbeat_interval)?;
    let cluster = cluster_name(args.cluster_name.as_ref());
    if !cluster.is_empty() {
        options.cluster_name = cluster;
    }
    run_agent(runtime, |stop| async move {
        agent_node::agent::run(options, stop)
            .await
            .map_err(anyhow::Error::from)
    })
}

/// Runs an agent on `runtime` until SIGINT/SIGTERM (the future `agent` gets resolves then),
/// and gives its tasks five seconds to finish after it returns.
fn run_agent<F, Fut>(runtime: tokio::runtime::Runtime, agent: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    runtime.block_on(async {
        let mut signals = lifecycle::ShutdownSignals::install()?;
        agent(Box::pin(async move {
            let signal = signals.recv().await;
            tracing::info!(signal, "stopping");
        }))
        .await
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    Ok(ExitCode::SUCCESS)
}

fn run_role(cli: &Cli, role: serve::Role) -> anyhow::Result<ExitCode> {
    let (config, sources) = load_config(cli)?;
    telemetry::init_logging(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("meerkat")
        .build()?;
    let result = runtime.block_on(serve::run(role, config, sources));
    // Every component has stopped (flushed, closed) by now; a blocking task still running
    // is a client library waiting on a peer that went away, which must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result?;
    Ok(ExitCode::SUCCESS)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Rules(RulesCommand::Check { files }) => Ok(rules::check(files)),
        Command::Rules(RulesCommand::Test { files }) => rules::test(files),
        Command::Version => {
            println!("meerkat {VERSION_LINE}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check) => {
            let (_, sources) = load_config(&cli)?;
            println!("configuration OK ({sources})");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Print) => {
            let (config, _) = load_config(&cli)?;
            print!("{}", config.to_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(_) => run_role(&cli, serve::Role::Serve),
        Command::Gateway => run_role(&cli, serve::Role::Gateway),
        Command::Ingest => run_role(&cli, serve::Role::Ingest),
        Command::Query => run_role(&cli, serve::Role::Query),
        Command::Alerting => run_role(&cli, serve::Role::Alerting),
        Command::Agent(AgentCommand::Node(args)) => run_node_agent(&cli, args),
        Command::Agent(AgentCommand::Cluster(args)) => run_cluster_agent(&cli, args),
    }
}
