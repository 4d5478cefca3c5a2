//! Meerkat's configuration: one typed tree, layered defaults → file → environment → flags.
//!
//! Every key of `meerkat.yaml` can be overridden by an environment variable named after its
//! path (`MEERKAT_` + the path in upper case, nesting separated by `__`, e.g.
//! `MEERKAT_BUS__EMBEDDED__SEGMENT_BYTES`), and the most used keys by flags. Unknown keys,
//! in the file or in `MEERKAT_` variables, are errors that name the key's path: a typo must
//! never silently fall back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use bus::embedded::EmbeddedBusConfig;
use bus::kafka::KafkaBusConfig;
use gateway::GatewayConfig;
use ingest::IngestConfig;
use query::QueryConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use storage::clickhouse::ClickHouseConfig;
use storage::embedded::EmbeddedStoreConfig;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "meerkat.yaml";
/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "MEERKAT_";
/// Separator between path segments in environment variable names.
const ENV_NESTING: &str = "__";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the embedded bus and the embedded store keep their files.
    pub data_dir: PathBuf,
    /// Address of the HTTP server every server role runs (remote-write, query APIs,
    /// `/health`, `/metrics`). Port 0 picks a free port and logs it.
    pub http_listen: SocketAddr,
    /// OTLP over gRPC (traces, metrics, logs). Port 0 picks a free port and logs it.
    pub otlp_grpc_listen: SocketAddr,
    /// OTLP over HTTP (`/v1/traces`, `/v1/metrics`, `/v1/logs`).
    pub otlp_http_listen: SocketAddr,
    pub log: LogConfig,
    pub bus: BusConfig,
    pub gateway: GatewayConfig,
    pub ingest: IngestConfig,
    pub query: QueryConfig,
    pub storage: StorageConfig,
    pub shutdown: ShutdownConfig,
    pub host_metrics: HostMetricsConfig,
    pub alerting: AlertingConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9797)),
            otlp_grpc_listen: SocketAddr::from(([127, 0, 0, 1], 4317)),
            otlp_http_listen: SocketAddr::from(([127, 0, 0, 1], 4318)),
            log: LogConfig::default(),
            bus: BusConfig::default(),
            gateway: GatewayConfig::default(),
            ingest: IngestConfig::default(),
            query: QueryConfig::default(),
            storage: StorageConfig::default(),
            shutdown: ShutdownConfig::default(),
            host_metrics: HostMetricsConfig::default(),
            alerting: AlertingConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`info`) or per-module directives (`info,bus=debug`).
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Which bus: `embedded` (standalone, one process) or `kafka` (distributed).
    pub engine: BusEngine,
    /// Partitions of each telemetry topic (metrics, spans, logs, events) when created.
    /// Ingest parallelism is bounded by it; it cannot change once a topic exists.
    pub partitions: u32,
    /// The embedded log of standalone mode (under `<data_dir>/bus`).
    pub embedded: EmbeddedBusConfig,
    /// Kafka, for distributed mode.
    pub kafka: KafkaBusConfig,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            engine: BusEngine::Embedded,
            partitions: 4,
            embedded: EmbeddedBusConfig::default(),
            kafka: KafkaBusConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusEngine {
    #[default]
    Embedded,
    Kafka,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Which store: `embedded` (standalone, under `<data_dir>/store`) or `clickhouse`
    /// (distributed).
    pub engine: StorageEngine,
    /// The embedded columnar store of standalone mode.
    pub embedded: EmbeddedStoreConfig,
    /// ClickHouse, for distributed mode.
    pub clickhouse: ClickHouseConfig,
}

impl StorageConfig {
    /// How long the configured engine keeps data.
    pub fn retention_seconds(&self) -> u64 {
        match self.engine {
            StorageEngine::Embedded => self.embedded.retention_seconds,
            StorageEngine::Clickhouse => self.clickhouse.retention_seconds,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageEngine {
    #[default]
    Embedded,
    Clickhouse,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before they are
    /// cut off. Flushing the bus comes after and is never cut short.
    pub grace_period_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period_seconds: 30,
        }
    }
}

/// This machine's own metrics (node_exporter names), collected in-process by `meerkat serve`
/// so a newcomer sees something within a minute, with no agent to install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostMetricsConfig {
    /// On by default in `serve`; `--no-host-metrics` or `false` here turns it off.
    pub enabled: bool,
    pub interval_seconds: u64,
    /// The tenant they are written as. With `gateway.auth.tokens` set, a token of this
    /// tenant must be among them.
    pub tenant: String,
}

impl Default for HostMetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_seconds: 15,
            tenant: "default".to_owned(),
        }
    }
}

/// Prometheus rule files evaluated by `serve` (and the `alerting` role), and where their
/// alerts go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertingConfig {
    /// Rule files of the default tenant: globs, files, or directories (their `*.yml` and
    /// `*.yaml`). Reloaded when they change and on `POST /-/reload`.
    pub rule_files: Vec<String>,
    /// Rule files of other tenants, by tenant; their rules read and write that tenant's data.
    pub tenant_rule_files: BTreeMap<String, Vec<String>>,
    /// Alertmanager base URLs (`http://alertmanager:9093`); alerts go to `/api/v2/alerts`.
    pub alertmanager_urls: Vec<String>,
    /// URLs that receive Alertmanager's webhook payload for each batch of alerts.
    pub webhook_urls: Vec<String>,
    /// How often groups without their own `interval` are evaluated.
    pub evaluation_interval_seconds: u64,
    /// A firing alert is sent again at most this often (Prometheus's resend delay).
    pub resend_delay_seconds: u64,
    /// The URL alerts link back to (`generatorURL`, `$externalURL`); empty: this server's
    /// HTTP address.
    pub external_url: String,
    /// Labels added to every alert sent (that does not have them) and visible to templates
    /// as `$externalLabels`.
    pub external_labels: BTreeMap<String, String>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            rule_files: Vec::new(),
            tenant_rule_files: BTreeMap::new(),
            alertmanager_urls: Vec::new(),
            webhook_urls: Vec::new(),
            evaluation_interval_seconds: 60,
            resend_delay_seconds: 60,
            external_url: String::new(),
            external_labels: BTreeMap::new(),
        }
    }
}

/// Values given as command-line flags; they override everything else.
#[derive(Clone, Debug, Default)]
pub struct FlagOverrides {
    pub data_dir: Option<PathBuf>,
    pub http_listen: Option<SocketAddr>,
    pub otlp_grpc_listen: Option<SocketAddr>,
    pub otlp_http_listen: Option<SocketAddr>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    /// `serve --no-host-metrics`.
    pub no_host_metrics: bool,
    /// `--rule-files` (repeatable): replaces `alerting.rule_files`.
    pub rule_files: Vec<String>,
    /// `--alertmanager-url` (repeatable): replaces `alerting.alertmanager_urls`.
    pub alertmanager_urls: Vec<String>,
}

/// Where the effective configuration came from, for `config check` and the start-up log.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub file: Option<PathBuf>,
    pub env_vars: Vec<String>,
    pub flags: Vec<&'static str>,
}

impl fmt::Display for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("defaults")?;
        if let Some(file) = &self.file {
            write!(f, ", file {}", file.display())?;
        }
        if !self.env_vars.is_empty() {
            write!(f, ", environment {}", self.env_vars.join(" "))?;
        }
        if !self.flags.is_empty() {
            write!(f, ", flags {}", self.flags.join(" "))?;
        }
        Ok(())
    }
}

impl Config {
    /// Builds the effective configuration.
    ///
    /// `explicit_file` is `--config`: it must exist. Without it, `./meerkat.yaml` is read if
    /// present. `env` is the process environment (passed in so tests need not mutate it).
    pub fn load(
        explicit_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &FlagOverrides,
    ) -> anyhow::Result<(Self, Sources)> {
        let mut sources = Sources::default();
        let file = match explicit_file {
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        let mut config = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                Self::from_yaml(&text)
                    .with_context(|| format!("in config file {}", path.display()))?
            }
            None => Self::default(),
        };
        sources.file = file;

        let overrides: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        if !overrides.is_empty() {
            config = config.with_env(&overrides)?;
            sources.env_vars = overrides.into_keys().collect();
        }

        if let Some(dir) = &flags.data_dir {
            config.data_dir = dir.clone();
            sources.flags.push("--data-dir");
        }
        if let Some(addr) = flags.http_listen {
            config.http_listen = addr;
            sources.flags.push("--http-listen");
        }
        if let Some(addr) = flags.otlp_grpc_listen {
            config.otlp_grpc_listen = addr;
            sources.flags.push("--otlp-grpc-listen");
        }
        if let Some(addr) = flags.otlp_http_listen {
            config.otlp_http_listen = addr;
            sources.flags.push("--otlp-http-listen");
        }
        if let Some(level) = &flags.log_level {
            config.log.level = level.clone();
            sources.flags.push("--log-level");
        }
        if let Some(format) = flags.log_format {
            config.log.format = format;
            sources.flags.push("--log-format");
        }
        if flags.no_host_metrics {
            config.host_metrics.enabled = false;
            sources.flags.push("--no-host-metrics");
        }
        if !flags.rule_files.is_empty() {
            config.alerting.rule_files = flags.rule_files.clone();
            sources.flags.push("--rule-files");
        }
        if !flags.alertmanager_urls.is_empty() {
            config.alerting.alertmanager_urls = flags.alertmanager_urls.clone();
            sources.flags.push("--alertmanager-url");
        }
        config.validate()?;
        Ok((config, sources))
    }

    /// Parses a YAML document; errors name the key path and the line.
    pub fn from_yaml(text: &str) -> anyhow::Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut path = None;
        let parsed = serde_saphyr::with_deserializer_from_str(text, |deserializer| {
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                path = Some(error.path().to_string());
                error.into_inner()
            })
        });
        parsed.map_err(|error| match path.filter(|p| p != ".") {
            Some(path) => anyhow!("{path}: {error}"),
            None => anyhow!("{error}"),
        })
    }

    /// Applies `MEERKAT_…` variables on top of this configuration.
    fn with_env(self, overrides: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let mut tree = serde_json::to_value(&self).context("cannot represent the configuration")?;
        for (name, raw) in overrides {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split(ENV_NESTING)
                .map(str::to_ascii_lowercase)
                .collect();
            let slot = lookup_mut(&mut tree, &path).ok_or_else(|| {
                anyhow!(
                    "environment variable {name} names no configuration key ({}); \
                     nested keys are separated by '__', e.g. MEERKAT_BUS__PARTITIONS",
                    path.join(".")
                )
            })?;
            if slot.is_object() {
                bail!(
                    "environment variable {name} names the section {}; set one of its keys instead",
                    path.join(".")
                );
            }
            // Values are YAML scalars, so numbers, booleans and null keep their types.
            *slot = serde_saphyr::from_str::<Value>(raw)
                .with_context(|| format!("environment variable {name}: cannot parse {raw:?}"))?;
        }
        serde_path_to_error::deserialize(tree).map_err(|error| {
            let path = error.path().to_string();
            let variable = format!(
                "{ENV_PREFIX}{}",
                path.replace('.', ENV_NESTING).to_ascii_uppercase()
            );
            anyhow!(
                "environment variable {variable} ({path}): {}",
                error.into_inner()
            )
        })
    }

    /// Checks what types alone cannot: relations between keys and parseable strings.
    /// The bearer token `serve`'s own host metrics are written with: none when auth is
    /// off, else one of `gateway.auth.tokens` that maps to `host_metrics.tenant`.
    pub fn host_metrics_token(&self) -> anyhow::Result<Option<String>> {
        if self.gateway.auth.tokens.is_empty() {
            return Ok(None);
        }
        self.gateway
            .auth
            .tokens
            .iter()
            .find(|(_, tenant)| **tenant == self.host_metrics.tenant)
            .map(|(token, _)| Some(token.clone()))
            .ok_or_else(|| {
                anyhow!(
                    "host_metrics.tenant is {:?} but no gateway.auth.tokens entry maps to it: \
                     add a token for it, name another tenant, or set host_metrics.enabled: false",
                    self.host_metrics.tenant
                )
            })
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            bail!("data_dir must not be empty");
        }
        if self.bus.partitions == 0 || self.bus.partitions > 1024 {
            bail!(
                "bus.partitions is {}; it must be between 1 and 1024",
                self.bus.partitions
            );
        }
        self.bus
            .embedded
            .validate()
            .map_err(|e| anyhow!("bus.embedded: {e}"))?;
        self.bus
            .kafka
            .validate()
            .map_err(|e| anyhow!("bus.kafka: {e}"))?;
        self.gateway.validate().map_err(|e| anyhow!("{e}"))?;
        // Its tenant's token is looked up when serve starts it: a configuration with auth on
        // and no token for that tenant runs without host metrics (and says so) rather than
        // refusing to start, and other commands reading this file are not concerned.
        if self.host_metrics.enabled && self.host_metrics.interval_seconds == 0 {
            bail!("host_metrics.interval_seconds must be at least 1");
        }
        if self.alerting.evaluation_interval_seconds == 0 {
            bail!("alerting.evaluation_interval_seconds must be at least 1");
        }
        for tenant in self.alerting.tenant_rule_files.keys() {
            model::TenantId::new(tenant)
                .map_err(|e| anyhow!("alerting.tenant_rule_files: tenant {tenant:?}: {e}"))?;
        }
        self.query.validate().map_err(|e| anyhow!("{e}"))?;
        self.storage
            .embedded
            .validate()
            .map_err(|e| anyhow!("storage.embedded: {e}"))?;
        self.storage
            .clickhouse
            .validate()
            .map_err(|e| anyhow!("storage.clickhouse: {e}"))?;
        if let Some(retention) = self.bus.embedded.retention_seconds
            && retention < self.ingest.flush_interval_seconds.saturating_mul(10)
        {
            bail!(
                "bus.embedded.retention_seconds ({retention}) must be at least ten ingest flush intervals \
                 (ingest.flush_interval_seconds = {}): the bus keeps what storage has not made durable yet",
                self.ingest.flush_interval_seconds
            );
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| anyhow!("log.level {:?} is not a valid filter: {e}", self.log.level))?;
        Ok(())
    }

    /// The configuration as YAML, every key present: what `config print` shows.
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        serde_saphyr::to_string(self).context("cannot print the configuration")
    }

    /// Where the embedded bus lives.
    pub fn bus_dir(&self) -> PathBuf {
        self.data_dir.join("bus")
    }

    /// Where the embedded store lives.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join("store")
    }
}

fn lookup_mut<'a>(tree: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter()
        .try_fold(tree, |node, key| node.as_object_mut()?.get_mut(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("meerkat.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_need_no_file() {
        let (config, sources) = Config::load(None, env(&[]), &FlagOverrides::default()).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.http_listen.to_string(), "127.0.0.1:9797");
        assert_eq!(sources.to_string(), "defaults");
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "data_dir: /var/lib/meerkat\nhttp_listen: 0.0.0.0:1000\nbus:\n  partitions: 8\n  embedded:\n    segment_bytes: 33554432\n",
        );
        let vars = env(&[
            ("MEERKAT_HTTP_LISTEN", "127.0.0.1:2000"),
            ("MEERKAT_BUS__EMBEDDED__RETENTION_SECONDS", "null"),
            ("MEERKAT_LOG__FORMAT", "json"),
            ("PATH", "/usr/bin"),
        ]);
        let flags = FlagOverrides {
            http_listen: Some("127.0.0.1:3000".parse().unwrap()),
            ..FlagOverrides::default()
        };
        let (config, sources) = Config::load(Some(&file), vars, &flags).unwrap();
        assert_eq!(
            config.data_dir,
            PathBuf::from("/var/lib/meerkat"),
            "from the file"
        );
        assert_eq!(config.bus.partitions, 8, "from the file");
        assert_eq!(config.bus.embedded.segment_bytes, 32 << 20, "from the file");
        assert_eq!(
            config.bus.embedded.retention_seconds, None,
            "from the environment"
        );
        assert_eq!(config.log.format, LogFormat::Json, "from the environment");
        assert_eq!(
            config.http_listen.port(),
            3000,
            "flags win over the environment"
        );
        assert_eq!(
            config.bus.embedded.max_batch_bytes,
            EmbeddedBusConfig::default().max_batch_bytes,
            "untouched keys keep their defaults"
        );
        let described = sources.to_string();
        assert!(
            described.contains("MEERKAT_HTTP_LISTEN") && described.contains("--http-listen"),
            "{described}"
        );
    }

    #[test]
    fn unknown_keys_in_the_file_name_their_path() {
        let err = Config::from_yaml("bus:\n  embedded:\n    segmnet_bytes: 5\n").unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("bus.embedded.segmnet_bytes"), "{message}");
        assert!(message.contains("unknown field"), "{message}");
        assert!(
            message.contains("line 3"),
            "the line is named too: {message}"
        );

        let err = Config::from_yaml("http_listne: 1\n").unwrap_err();
        assert!(format!("{err:#}").contains("http_listne"), "{err:#}");
    }

    #[test]
    fn wrong_types_name_their_path() {
        let err = Config::from_yaml("bus:\n  partitions: many\n").unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("bus.partitions"), "{message}");
        let err = Config::from_yaml("http_listen: not-an-address\n").unwrap_err();
        assert!(format!("{err:#}").contains("http_listen"), "{err:#}");
    }

    #[test]
    fn unknown_or_bad_environment_variables_are_named() {
        let err = Config::load(
            None,
            env(&[("MEERKAT_HTTP_LISTN", "x")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("MEERKAT_HTTP_LISTN"), "{err:#}");
        let err = Config::load(
            None,
            env(&[("MEERKAT_BUS", "3")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("section bus"), "{err:#}");
        let err = Config::load(
            None,
            env(&[("MEERKAT_BUS__PARTITIONS", "lots")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.contains("MEERKAT_BUS__PARTITIONS") && message.contains("bus.partitions"),
            "{message}"
        );
    }

    #[test]
    fn semantic_errors_are_caught_at_start() {
        let err = Config::from_yaml("bus:\n  partitions: 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("bus.partitions"), "{err}");
        let err = Config::from_yaml("bus:\n  embedded:\n    segment_bytes: 10\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("segment_bytes"), "{err}");
        let err = Config::from_yaml("log:\n  level: 'info,=[broken'\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("log.level"), "{err}");
        let missing = Config::load(
            Some(Path::new("/nonexistent/meerkat.yaml")),
            env(&[]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert!(
            format!("{missing:#}").contains("/nonexistent/meerkat.yaml"),
            "{missing:#}"
        );
    }

    #[test]
    fn printed_config_reads_back_identically() {
        let mut config = Config::default();
        config.bus.partitions = 12;
        config.bus.embedded.retention_bytes = None;
        config.log.format = LogFormat::Json;
        let yaml = config.to_yaml().unwrap();
        assert!(yaml.contains("partitions: 12"), "{yaml}");
        assert_eq!(Config::from_yaml(&yaml).unwrap(), config);
    }

    #[test]
    fn the_example_file_documents_exactly_the_defaults() {
        let example = include_str!("../../meerkat.example.yaml");
        assert_eq!(Config::from_yaml(example).unwrap(), Config::default());
        // Every key of the effective configuration appears in the example.
        let printed = Config::default().to_yaml().unwrap();
        for line in printed.lines() {
            let key = line.trim_start().split(':').next().unwrap();
            assert!(
                example.contains(&format!("{key}:")),
                "meerkat.example.yaml lacks {key}"
            );
        }
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(Config::from_yaml("").unwrap(), Config::default());
        assert_eq!(
            Config::from_yaml("# only a comment\n").unwrap(),
            Config::default()
        );
    }
}
