//! The command line: one binary, a subcommand per role.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{FlagOverrides, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "meerkat",
    version = crate::VERSION_LINE,
    about = "Meerkat: metrics, traces, logs and platform events in one backend, agents included",
    long_about = "Meerkat: metrics, traces, logs and platform events in one backend, agents included.\n\n\
        Configuration is layered: defaults, then the YAML file (--config, or ./meerkat.yaml if \
        present), then MEERKAT_* environment variables (MEERKAT_<KEY>, nesting with '__', e.g. \
        MEERKAT_BUS__PARTITIONS=8), then flags. `meerkat config print` shows the result."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file [default: ./meerkat.yaml if present]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of the embedded bus and store [config: data_dir]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address; port 0 picks a free port [config: http_listen]
    #[arg(long, global = true, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// OTLP/gRPC listen address [config: otlp_grpc_listen]
    #[arg(long, global = true, value_name = "ADDR")]
    pub otlp_grpc_listen: Option<SocketAddr>,
    /// OTLP/HTTP listen address [config: otlp_http_listen]
    #[arg(long, global = true, value_name = "ADDR")]
    pub otlp_http_listen: Option<SocketAddr>,
    /// Log filter, e.g. `info` or `info,bus=debug` [config: log.level]
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format [config: log.format]
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Prometheus rule files to evaluate: a glob, file or directory; repeatable
    /// [config: alerting.rule_files]
    #[arg(long = "rule-files", global = true, value_name = "GLOB")]
    pub rule_files: Vec<String>,
    /// An Alertmanager to send alerts to (`http://host:9093`); repeatable
    /// [config: alerting.alertmanager_urls]
    #[arg(long = "alertmanager-url", global = true, value_name = "URL")]
    pub alertmanager_url: Vec<String>,
}

impl GlobalArgs {
    pub fn overrides(&self) -> FlagOverrides {
        FlagOverrides {
            data_dir: self.data_dir.clone(),
            http_listen: self.http_listen,
            otlp_grpc_listen: self.otlp_grpc_listen,
            otlp_http_listen: self.otlp_http_listen,
            log_level: self.log_level.clone(),
            log_format: self.log_format,
            no_host_metrics: false,
            rule_files: self.rule_files.clone(),
            alertmanager_urls: self.alertmanager_url.clone(),
        }
    }
}

// Parsed once at start: boxing the agents' arguments would save nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Standalone mode: every server role in one process, on the embedded bus and store
    Serve(ServeArgs),
    /// The gateway role: accepts telemetry (remote-write, OTLP, Influx, Zipkin) onto the bus
    Gateway,
    /// The ingest role: moves telemetry from the bus into storage (with `bus.engine: kafka`)
    Ingest,
    /// The query role: PromQL, SQL, trace and log queries over HTTP
    Query,
    /// The alerting role: evaluates Prometheus rule files and notifies Alertmanager
    Alerting,
    /// The agents that run in customer clusters
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Inspect the effective configuration
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Prometheus rule files
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Print version and build information
    Version,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Do not collect this machine's own metrics in-process [config: host_metrics.enabled]
    #[arg(long)]
    pub no_host_metrics: bool,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// The node agent (DaemonSet): host, container and pod telemetry of one node
    Node(NodeAgentArgs),
    /// The cluster agent: Prometheus-compatible scraping and cluster state
    Cluster(ClusterAgentArgs),
}

#[derive(Debug, Args)]
pub struct ClusterAgentArgs {
    /// A Prometheus configuration file: its `scrape_configs` run as they are (re-read when
    /// it changes and on SIGHUP)
    #[arg(long, value_name = "FILE")]
    pub scrape_config: PathBuf,
    /// The gateway to deliver to (remote-write to <URL>/api/v1/write), unless the file
    /// names a `remote_write` URL
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9797")]
    pub gateway: String,
    /// Compressed remote-write requests held while the gateway does not take them; the
    /// oldest are dropped (and counted) beyond this
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub buffer_bytes: usize,
    /// Where unsent requests wait on disk, so a restarted agent still sends them (a
    /// hostPath or volume in Kubernetes)
    #[arg(long, value_name = "DIR", default_value = "./data/agent-buffer")]
    pub buffer_dir: PathBuf,
    /// The cluster name announced to the gateway [default: $MEERKAT_CLUSTER_NAME, else the
    /// configuration's external label `cluster`, else `default`]
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Seconds between heartbeats to the gateway (it marks the agent stale after 3 missed)
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub heartbeat_interval: f64,
    /// The Kubernetes API server for `kubernetes_sd_configs` (`kubectl proxy`, tests,
    /// out-of-cluster use) [default: the pod's service account, else the kubeconfig]
    #[arg(long, value_name = "URL")]
    pub kube_api_url: Option<String>,
    /// Do not send cluster state metrics (kube-state-metrics names from watches of pods,
    /// deployments, statefulsets, daemonsets and nodes; on by default in a pod or with
    /// --kube-api-url)
    #[arg(long)]
    pub no_cluster_state: bool,
    /// Seconds between cluster state sends [default: the configuration's global
    /// scrape_interval, else 60]
    #[arg(long, value_name = "SECONDS")]
    pub cluster_state_interval: Option<f64>,
    /// Do not send the cluster's Kubernetes events to the gateway (on by default in a pod
    /// or with --kube-api-url)
    #[arg(long)]
    pub no_kube_events: bool,
    /// Serve the agent's own /metrics and /health here (port 0 picks a free one)
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A file holding the bearer token the gateway maps to this agent's tenant (sent as
    /// `Authorization: Bearer …` on everything the agent sends; re-read at start)
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// The environment variable naming the cluster agent's cluster (read by the agent, so not a
/// configuration key: [`crate::config`] must not refuse it as unknown).
pub const CLUSTER_NAME_ENV: &str = "MEERKAT_CLUSTER_NAME";

#[derive(Debug, Args)]
pub struct NodeAgentArgs {
    /// The gateway to deliver to (remote-write to <URL>/api/v1/write)
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9797")]
    pub gateway: String,
    /// The host's root as this process sees it (`/host` when the DaemonSet mounts it
    /// there); /proc, /sys and mount points are read under it
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// This node's name, the `instance` label of host series [default: $NODE_NAME (the
    /// downward API's spec.nodeName in the DaemonSet), else the hostname]
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Seconds between host metric collections
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    pub interval_seconds: u64,
    /// Compressed remote-write requests held while the gateway does not take them; the
    /// oldest are dropped (and counted) beyond this
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub buffer_bytes: usize,
    /// Where unsent requests wait on disk, so a restarted agent still sends them
    #[arg(long, value_name = "DIR", default_value = "./data/node-agent-buffer")]
    pub buffer_dir: PathBuf,
    /// The kubelet's pod list for pod metadata (labels, owners, IPs), e.g.
    /// http://$NODE_IP:10255/pods; without it pods are known from the filesystem only
    #[arg(long, value_name = "URL")]
    pub kubelet_url: Option<String>,
    /// A bearer token file for the kubelet (the service-account token)
    #[arg(long, value_name = "FILE")]
    pub kubelet_token_file: Option<PathBuf>,
    /// Watch this node's pods on the Kubernetes API (a `spec.nodeName` field selector:
    /// never every pod of the cluster), with the pod's service account
    #[arg(long)]
    pub watch_pods: bool,
    /// The Kubernetes API server for --watch-pods [default: the service account, else the
    /// kubeconfig]
    #[arg(long, value_name = "URL")]
    pub kube_api_url: Option<String>,
    /// Pod classification rules (YAML; the defaults follow Erda's conventions)
    #[arg(long, value_name = "FILE")]
    pub pod_rules: Option<PathBuf>,
    /// Where log tailing keeps its checkpoints (a hostPath in the DaemonSet, so a restart
    /// neither loses nor repeats lines)
    #[arg(long, value_name = "DIR", default_value = "./data/node-agent-logs")]
    pub checkpoint_dir: PathBuf,
    /// Do not tail container logs under <root>/var/log/pods
    #[arg(long)]
    pub no_logs: bool,
    /// Do not collect container metrics from the kubepods cgroups
    #[arg(long)]
    pub no_containers: bool,
    /// Do not run the local OTLP receiver (--otlp-grpc-listen, --otlp-http-listen)
    #[arg(long)]
    pub no_otlp_proxy: bool,
    /// Serve the agent's own /metrics and /health here (port 0 picks a free one)
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The cluster name announced to the gateway [default: $MEERKAT_CLUSTER_NAME, else
    /// `default`]
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Seconds between heartbeats to the gateway (it marks the agent stale after 3 missed)
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub heartbeat_interval: f64,
    /// A file holding the bearer token the gateway maps to this agent's tenant (sent as
    /// `Authorization: Bearer …` on everything the agent sends; re-read at start)
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Check rule files as `promtool check rules` does; exits 1 when any file fails
    Check {
        /// Rule files in Prometheus's format
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Run rule unit tests written for `promtool test rules`; exits 1 when any fails
    Test {
        /// Test files in promtool's format (their `rule_files` are relative to them)
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration (file, environment and flags) and exit
    Check,
    /// Print the effective configuration as YAML
    Print,
}
