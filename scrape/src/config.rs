//! Prometheus's configuration file, as far as scraping goes: users paste their
//! `prometheus.yml` (or a Prometheus agent-mode config) and it works as it is.
//!
//! Every key Prometheus 2.42 takes under `global` and `scrape_configs` is read with
//! Prometheus's defaults and validation; a key the agent cannot honour is an error that
//! says so (never silently ignored), and a key Prometheus does not know is an error naming
//! it. Durations and sizes use Prometheus's notation.

use std::collections::BTreeMap;

use model::duration::{format_duration_ms, parse_duration_ms};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::labels::LabelSet;
use crate::relabel::{self, RelabelConfigYaml, RelabelRule, is_valid_label_name};

/// A configuration Prometheus (or this agent) refuses: where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

/// A duration in Prometheus's notation, read from YAML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationMs(pub u64);

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration_ms(&text).map(DurationMs).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "not a valid duration string: {text:?} (use units y, w, d, h, m, s, ms, as in 1m30s)"
            ))
        })
    }
}

/// A size as Prometheus spells `body_size_limit` (`10MB`, base 2; `0` for none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SizeBytes(pub u64);

impl<'de> Deserialize<'de> for SizeBytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_size(&text).map(SizeBytes).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "not a valid size: {text:?} (as in 512KB, 10MB, 1GB)"
            ))
        })
    }
}

fn parse_size(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let number: u64 = text[..split].parse().ok()?;
    let unit: u64 = match &text[split..] {
        "B" => 1,
        "KB" | "KiB" => 1 << 10,
        "MB" | "MiB" => 1 << 20,
        "GB" | "GiB" => 1 << 30,
        "TB" | "TiB" => 1 << 40,
        "PB" | "PiB" => 1 << 50,
        "EB" | "EiB" => 1 << 60,
        _ => return None,
    };
    number.checked_mul(unit)
}

/// The whole file. Server-only sections are refused by [`PrometheusConfig::parse`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrometheusConfigYaml {
    #[serde(default)]
    global: GlobalYaml,
    #[serde(default)]
    scrape_configs: Vec<ScrapeConfigYaml>,
    #[serde(default)]
    remote_write: Vec<RemoteWriteYaml>,
    rule_files: Option<IgnoredAny>,
    alerting: Option<IgnoredAny>,
    remote_read: Option<IgnoredAny>,
    storage: Option<IgnoredAny>,
    tracing: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobalYaml {
    scrape_interval: Option<DurationMs>,
    scrape_timeout: Option<DurationMs>,
    /// Rule evaluation's: accepted because nearly every file sets it; agents evaluate nothing.
    #[allow(dead_code)]
    evaluation_interval: Option<DurationMs>,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    query_log_file: Option<IgnoredAny>,
}

/// Where the agent sends what it scrapes (the first entry; Meerkat's gateway speaks it).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteYaml {
    pub url: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub remote_timeout: Option<DurationMs>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuthYaml>,
    #[serde(default)]
    pub authorization: Option<AuthorizationYaml>,
    #[serde(default)]
    pub bearer_token: Option<String>,
    #[serde(default)]
    pub bearer_token_file: Option<String>,
    #[serde(default)]
    pub write_relabel_configs: Vec<RelabelConfigYaml>,
    #[serde(default)]
    pub tls_config: Option<TlsConfigYaml>,
    #[serde(default)]
    pub queue_config: Option<IgnoredAny>,
    #[serde(default)]
    pub metadata_config: Option<IgnoredAny>,
    #[serde(default)]
    pub send_exemplars: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthYaml {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationYaml {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub credentials: Option<String>,
    #[serde(default)]
    pub credentials_file: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfigYaml {
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub max_version: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticConfigYaml {
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSdConfigYaml {
    pub files: Vec<String>,
    #[serde(default)]
    pub refresh_interval: Option<DurationMs>,
}

/// `kubernetes_sd_configs`: read here, discovered by the cluster agent.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSdConfigYaml {
    pub role: String,
    #[serde(default)]
    pub api_server: Option<String>,
    #[serde(default)]
    pub kubeconfig_file: Option<String>,
    #[serde(default)]
    pub namespaces: Option<KubernetesNamespacesYaml>,
    #[serde(default)]
    pub selectors: Vec<KubernetesSelectorYaml>,
    #[serde(default)]
    pub attach_metadata: Option<KubernetesAttachMetadataYaml>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuthYaml>,
    #[serde(default)]
    pub authorization: Option<AuthorizationYaml>,
    #[serde(default)]
    pub bearer_token: Option<String>,
    #[serde(default)]
    pub bearer_token_file: Option<String>,
    #[serde(default)]
    pub tls_config: Option<TlsConfigYaml>,
    #[serde(default)]
    pub follow_redirects: Option<bool>,
    #[serde(default)]
    pub enable_http2: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesNamespacesYaml {
    #[serde(default)]
    pub own_namespace: bool,
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSelectorYaml {
    pub role: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub field: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesAttachMetadataYaml {
    #[serde(default)]
    pub node: bool,
}

#[derive(Debug, Deserialize)]
struct ScrapeConfigYaml {
    job_name: String,
    #[serde(default)]
    honor_labels: bool,
    #[serde(default)]
    honor_timestamps: Option<bool>,
    #[serde(default)]
    params: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    scrape_interval: Option<DurationMs>,
    #[serde(default)]
    scrape_timeout: Option<DurationMs>,
    #[serde(default)]
    metrics_path: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    basic_auth: Option<BasicAuthYaml>,
    #[serde(default)]
    authorization: Option<AuthorizationYaml>,
    #[serde(default)]
    bearer_token: Option<String>,
    #[serde(default)]
    bearer_token_file: Option<String>,
    #[serde(default)]
    tls_config: Option<TlsConfigYaml>,
    #[serde(default)]
    follow_redirects: Option<bool>,
    /// Accepted as Prometheus accepts it; the agent's client speaks HTTP/1.1 either way.
    #[serde(default)]
    #[allow(dead_code)]
    enable_http2: Option<bool>,
    #[serde(default)]
    static_configs: Vec<StaticConfigYaml>,
    #[serde(default)]
    file_sd_configs: Vec<FileSdConfigYaml>,
    #[serde(default)]
    kubernetes_sd_configs: Vec<KubernetesSdConfigYaml>,
    #[serde(default)]
    relabel_configs: Vec<RelabelConfigYaml>,
    #[serde(default)]
    metric_relabel_configs: Vec<RelabelConfigYaml>,
    #[serde(default)]
    sample_limit: usize,
    #[serde(default)]
    target_limit: usize,
    #[serde(default)]
    label_limit: usize,
    #[serde(default)]
    label_name_length_limit: usize,
    #[serde(default)]
    label_value_length_limit: usize,
    #[serde(default)]
    body_size_limit: SizeBytes,
    /// Every other key: refused in [`ScrapeJob::compile`] with a message saying why.
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// How the agent authenticates to a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    Basic {
        username: String,
        password: Secret,
    },
    /// `Authorization: <kind> <credentials>` (`bearer_token` is `Bearer`).
    Header {
        kind: String,
        credentials: Secret,
    },
}

/// A secret given inline or read from a file at each scrape (so rotated tokens work).
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Inline(String),
    File(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("<secret>"),
            Self::File(path) => write!(f, "<secret in {path}>"),
        }
    }
}

impl Auth {
    /// The `Authorization` header's value (secrets in files are read now, so rotated
    /// tokens are picked up).
    pub fn header_value(&self) -> Result<String, String> {
        use base64::Engine;
        Ok(match self {
            Self::Basic { username, password } => {
                let password = password.read()?;
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                format!("Basic {encoded}")
            }
            Self::Header { kind, credentials } => format!("{kind} {}", credentials.read()?),
        })
    }
}

impl KubernetesSdConfigYaml {
    /// How to authenticate to `api_server` (with the same rules as a scrape job's auth).
    pub fn auth(&self) -> Result<Option<Auth>, ConfigError> {
        auth_of(
            &self.basic_auth,
            &self.authorization,
            &self.bearer_token,
            &self.bearer_token_file,
        )
    }
}

impl RemoteWriteYaml {
    /// How to authenticate to the endpoint.
    pub fn auth(&self) -> Result<Option<Auth>, ConfigError> {
        auth_of(
            &self.basic_auth,
            &self.authorization,
            &self.bearer_token,
            &self.bearer_token_file,
        )
    }
}

impl Secret {
    /// The secret's text (a file's content without its trailing newline, as Prometheus).
    pub fn read(&self) -> Result<String, String> {
        match self {
            Self::Inline(text) => Ok(text.clone()),
            Self::File(path) => std::fs::read_to_string(path)
                .map(|text| text.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| format!("cannot read {path}: {e}")),
        }
    }
}

/// A group of targets with common labels, from `static_configs` or a file.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Where it came from (`static_configs[0]`, a file name), for messages.
    pub source: String,
}

/// One validated `scrape_configs` entry.
#[derive(Clone, Debug)]
pub struct ScrapeJob {
    pub name: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub metrics_path: String,
    pub scheme: Scheme,
    pub params: BTreeMap<String, Vec<String>>,
    pub honor_labels: bool,
    pub honor_timestamps: bool,
    pub auth: Option<Auth>,
    pub tls: TlsConfigYaml,
    pub follow_redirects: bool,
    pub static_groups: Vec<TargetGroup>,
    pub file_sd: Vec<FileSdConfigYaml>,
    pub kubernetes_sd: Vec<KubernetesSdConfigYaml>,
    pub relabel: Vec<RelabelRule>,
    pub metric_relabel: Vec<RelabelRule>,
    pub sample_limit: usize,
    pub target_limit: usize,
    pub label_limit: usize,
    pub label_name_length_limit: usize,
    pub label_value_length_limit: usize,
    pub body_size_limit_bytes: u64,
}

/// A whole validated configuration.
#[derive(Clone, Debug)]
pub struct PrometheusConfig {
    pub external_labels: LabelSet,
    pub jobs: Vec<ScrapeJob>,
    pub remote_write: Vec<RemoteWriteYaml>,
}

const DEFAULT_SCRAPE_INTERVAL_MS: u64 = 60_000;
const DEFAULT_SCRAPE_TIMEOUT_MS: u64 = 10_000;

/// Service discoveries Prometheus has and this agent does not.
fn is_unsupported_discovery(key: &str) -> bool {
    key.ends_with("_sd_configs")
}

impl PrometheusConfig {
    /// Reads and validates a Prometheus configuration file's text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let yaml: PrometheusConfigYaml = if text.trim().is_empty() {
            PrometheusConfigYaml::default()
        } else {
            let mut path = None;
            serde_saphyr::with_deserializer_from_str(text, |deserializer| {
                serde_path_to_error::deserialize(deserializer).map_err(|error| {
                    path = Some(error.path().to_string());
                    error.into_inner()
                })
            })
            .map_err(|error| match path.filter(|p| p != ".") {
                Some(path) => ConfigError(format!("{path}: {error}")),
                None => ConfigError(error.to_string()),
            })?
        };
        for (key, present) in [
            ("rule_files", yaml.rule_files.is_some()),
            ("alerting", yaml.alerting.is_some()),
            ("remote_read", yaml.remote_read.is_some()),
            ("storage", yaml.storage.is_some()),
            ("tracing", yaml.tracing.is_some()),
            (
                "global.query_log_file",
                yaml.global.query_log_file.is_some(),
            ),
        ] {
            if present {
                return fail(format!(
                    "{key}: configures a Prometheus server, not a scraping agent; remove it \
                     (Meerkat evaluates rules in `meerkat serve --rule-files`)"
                ));
            }
        }
        let interval = yaml
            .global
            .scrape_interval
            .map_or(DEFAULT_SCRAPE_INTERVAL_MS, |d| d.0);
        let timeout = match yaml.global.scrape_timeout {
            Some(d) => d.0,
            None => DEFAULT_SCRAPE_TIMEOUT_MS.min(interval),
        };
        if timeout > interval {
            return fail("global scrape timeout greater than scrape interval");
        }
        for name in yaml.global.external_labels.keys() {
            if !is_valid_label_name(name) {
                return fail(format!("{name:?} is not a valid label name"));
            }
        }
        let external_labels = LabelSet::from_pairs(yaml.global.external_labels.clone());
        let mut jobs = Vec::with_capacity(yaml.scrape_configs.len());
        for (i, job) in yaml.scrape_configs.iter().enumerate() {
            let compiled = ScrapeJob::compile(job, interval, timeout).map_err(|e| {
                ConfigError(format!("scrape_configs[{i}] ({}): {}", job.job_name, e.0))
            })?;
            if jobs.iter().any(|j: &ScrapeJob| j.name == compiled.name) {
                return fail(format!(
                    "found multiple scrape configs with job name {:?}",
                    compiled.name
                ));
            }
            jobs.push(compiled);
        }
        for (i, remote) in yaml.remote_write.iter().enumerate() {
            let at = |what: &str| format!("remote_write[{i}].{what}");
            if !remote.write_relabel_configs.is_empty() {
                return fail(format!(
                    "{}: not supported by Meerkat's agent yet; use metric_relabel_configs",
                    at("write_relabel_configs")
                ));
            }
            if !remote.url.starts_with("http://") && !remote.url.starts_with("https://") {
                return fail(format!("{}: use an http:// or https:// URL", at("url")));
            }
            // Checked here, so a bad one refuses the file rather than failing at send.
            if let Some(tls) = &remote.tls_config {
                crate::tls::client_config(tls)
                    .map_err(|e| ConfigError(format!("{}: {e}", at("tls_config"))))?;
            }
            remote
                .auth()
                .map_err(|e| ConfigError(format!("{}: {}", at("auth"), e.0)))?;
        }
        if yaml.remote_write.len() > 1 {
            return fail("remote_write: Meerkat's agent sends to one endpoint; give one entry");
        }
        Ok(Self {
            external_labels,
            jobs,
            remote_write: yaml.remote_write,
        })
    }
}

fn auth_of(
    basic: &Option<BasicAuthYaml>,
    authorization: &Option<AuthorizationYaml>,
    bearer_token: &Option<String>,
    bearer_token_file: &Option<String>,
) -> Result<Option<Auth>, ConfigError> {
    let given = [
        basic.is_some(),
        authorization.is_some(),
        bearer_token.is_some() || bearer_token_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return fail(
            "at most one of basic_auth, authorization and bearer_token & bearer_token_file must be configured",
        );
    }
    if bearer_token.is_some() && bearer_token_file.is_some() {
        return fail("at most one of bearer_token & bearer_token_file must be configured");
    }
    if let Some(basic) = basic {
        let password = match (&basic.password, &basic.password_file) {
            (Some(_), Some(_)) => {
                return fail(
                    "at most one of basic_auth password & password_file must be configured",
                );
            }
            (Some(p), None) => Secret::Inline(p.clone()),
            (None, Some(f)) => Secret::File(f.clone()),
            (None, None) => Secret::Inline(String::new()),
        };
        return Ok(Some(Auth::Basic {
            username: basic.username.clone(),
            password,
        }));
    }
    if let Some(authorization) = authorization {
        let kind = authorization
            .kind
            .clone()
            .unwrap_or_else(|| "Bearer".to_owned());
        if kind.eq_ignore_ascii_case("basic") {
            return fail(
                "authorization type cannot be set to \"basic\", use \"basic_auth\" instead",
            );
        }
        let credentials = match (&authorization.credentials, &authorization.credentials_file) {
            (Some(_), Some(_)) => {
                return fail(
                    "at most one of authorization credentials & credentials_file must be configured",
                );
            }
            (Some(c), None) => Secret::Inline(c.clone()),
            (None, Some(f)) => Secret::File(f.clone()),
            (None, None) => Secret::Inline(String::new()),
        };
        return Ok(Some(Auth::Header { kind, credentials }));
    }
    if let Some(token) = bearer_token {
        return Ok(Some(Auth::Header {
            kind: "Bearer".into(),
            credentials: Secret::Inline(token.clone()),
        }));
    }
    if let Some(file) = bearer_token_file {
        return Ok(Some(Auth::Header {
            kind: "Bearer".into(),
            credentials: Secret::File(file.clone()),
        }));
    }
    Ok(None)
}

impl ScrapeJob {
    fn compile(
        yaml: &ScrapeConfigYaml,
        global_interval: u64,
        global_timeout: u64,
    ) -> Result<Self, ConfigError> {
        if let Some(key) = yaml.other.keys().next() {
            if is_unsupported_discovery(key) {
                return fail(format!(
                    "{key}: this service discovery is not supported; use static_configs, \
                     file_sd_configs or kubernetes_sd_configs"
                ));
            }
            return match key.as_str() {
                "oauth2"
                | "proxy_url"
                | "no_proxy"
                | "proxy_from_environment"
                | "proxy_connect_header" => {
                    fail(format!("{key}: not supported by Meerkat's agent yet"))
                }
                _ => fail(format!("unknown field `{key}`")),
            };
        }
        if yaml.job_name.is_empty() {
            return fail("job_name is empty");
        }
        let interval_ms = yaml.scrape_interval.map_or(global_interval, |d| d.0);
        let timeout_ms = match yaml.scrape_timeout {
            Some(d) => d.0,
            // Prometheus: the global timeout, capped at this job's interval.
            None => global_timeout.min(interval_ms),
        };
        if interval_ms == 0 {
            return fail("scrape_interval must be above 0");
        }
        if timeout_ms > interval_ms {
            return fail(format!(
                "scrape timeout greater than scrape interval for scrape config with job name {:?}",
                yaml.job_name
            ));
        }
        let scheme = match yaml.scheme.as_deref().unwrap_or("http") {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return fail(format!("invalid scheme {other:?}: use http or https")),
        };
        if let Some(tls) = &yaml.tls_config {
            crate::tls::validate(tls).map_err(|e| ConfigError(e.to_string()))?;
        }
        let metrics_path = yaml
            .metrics_path
            .clone()
            .unwrap_or_else(|| "/metrics".into());
        let auth = auth_of(
            &yaml.basic_auth,
            &yaml.authorization,
            &yaml.bearer_token,
            &yaml.bearer_token_file,
        )?;
        let mut static_groups = Vec::new();
        for (i, group) in yaml.static_configs.iter().enumerate() {
            for name in group.labels.keys() {
                if !is_valid_label_name(name) {
                    return fail(format!(
                        "static_configs[{i}]: {name:?} is not a valid label name"
                    ));
                }
            }
            for target in &group.targets {
                check_target_address(target)
                    .map_err(|e| ConfigError(format!("static_configs[{i}]: {e}")))?;
            }
            static_groups.push(TargetGroup {
                targets: group.targets.clone(),
                labels: group.labels.clone(),
                source: format!("static_configs[{i}]"),
            });
        }
        for (i, file_sd) in yaml.file_sd_configs.iter().enumerate() {
            for pattern in &file_sd.files {
                let name = pattern.rsplit('/').next().unwrap_or_default();
                let ok = [".json", ".yml", ".yaml"]
                    .iter()
                    .any(|ext| name.ends_with(ext));
                if !ok {
                    return fail(format!(
                        "file_sd_configs[{i}]: path name {pattern:?} is not valid for file discovery: it must end in .json, .yml or .yaml"
                    ));
                }
            }
        }
        for (i, kubernetes) in yaml.kubernetes_sd_configs.iter().enumerate() {
            if ![
                "pod",
                "service",
                "endpoints",
                "endpointslice",
                "node",
                "ingress",
            ]
            .contains(&kubernetes.role.as_str())
            {
                return fail(format!(
                    "kubernetes_sd_configs[{i}]: unknown Kubernetes SD role {:?}",
                    kubernetes.role
                ));
            }
        }
        let relabel = relabel::compile_all(&yaml.relabel_configs)
            .map_err(|e| ConfigError(format!("relabel_configs: {e}")))?;
        let metric_relabel = relabel::compile_all(&yaml.metric_relabel_configs)
            .map_err(|e| ConfigError(format!("metric_relabel_configs: {e}")))?;
        Ok(Self {
            name: yaml.job_name.clone(),
            interval_ms,
            timeout_ms,
            metrics_path,
            scheme,
            params: yaml.params.clone(),
            honor_labels: yaml.honor_labels,
            honor_timestamps: yaml.honor_timestamps.unwrap_or(true),
            auth,
            tls: yaml.tls_config.clone().unwrap_or_default(),
            follow_redirects: yaml.follow_redirects.unwrap_or(true),
            static_groups,
            file_sd: yaml.file_sd_configs.clone(),
            kubernetes_sd: yaml.kubernetes_sd_configs.clone(),
            relabel,
            metric_relabel,
            sample_limit: yaml.sample_limit,
            target_limit: yaml.target_limit,
            label_limit: yaml.label_limit,
            label_name_length_limit: yaml.label_name_length_limit,
            label_value_length_limit: yaml.label_value_length_limit,
            body_size_limit_bytes: yaml.body_size_limit.0,
        })
    }
}

/// Prometheus's `CheckTargetAddress`: a host and port, no path.
fn check_target_address(address: &str) -> Result<(), String> {
    if address.contains('/') {
        return Err(format!("{address:?} is not a valid hostname"));
    }
    Ok(())
}

/// A target ready to scrape: its final labels and where to fetch it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The labels every series of the target gets (`job`, `instance`, the rest).
    pub labels: LabelSet,
    /// `scheme://address/path?params`.
    pub url: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

/// Prometheus's `PopulateLabels`: a discovered target's labels (`__address__`, group labels,
/// `__meta_*`) plus the job's defaults, relabeled; `Ok(None)` when relabeling drops it.
pub fn populate_target(discovered: &LabelSet, job: &ScrapeJob) -> Result<Option<Target>, String> {
    let mut labels = discovered.clone();
    let defaults = [
        ("job", job.name.clone()),
        ("__scrape_interval__", format_duration_ms(job.interval_ms)),
        ("__scrape_timeout__", format_duration_ms(job.timeout_ms)),
        ("__metrics_path__", job.metrics_path.clone()),
        ("__scheme__", job.scheme.as_str().to_owned()),
    ];
    for (name, value) in defaults {
        if !labels.contains(name) {
            labels.set(name, value);
        }
    }
    for (name, values) in &job.params {
        let param = format!("__param_{name}");
        if !labels.contains(&param)
            && let Some(first) = values.first()
        {
            labels.set(&param, first.clone());
        }
    }
    if !relabel::process(&mut labels, &job.relabel) {
        return Ok(None);
    }
    let Some(mut address) = labels.get("__address__").map(str::to_owned) else {
        return Err("no address".to_owned());
    };
    let scheme = labels.get("__scheme__").unwrap_or("http").to_owned();
    if needs_default_port(&address) {
        address = match scheme.as_str() {
            "http" | "" => format!("{address}:80"),
            "https" => format!("{address}:443"),
            other => return Err(format!("invalid scheme: {other:?}")),
        };
        labels.set("__address__", address.clone());
    }
    check_target_address(&address)?;
    let duration_label = |name: &str| -> Result<u64, String> {
        let text = labels.get(name).unwrap_or_default();
        match parse_duration_ms(text) {
            Some(ms) if ms > 0 => Ok(ms),
            Some(_) => Err(format!("{name} cannot be 0")),
            None => Err(format!(
                "error parsing {name}: {text:?} is not a valid duration"
            )),
        }
    };
    let interval_ms = duration_label("__scrape_interval__")?;
    let timeout_ms = duration_label("__scrape_timeout__")?;
    if timeout_ms > interval_ms {
        return Err(format!(
            "scrape timeout {} greater than scrape interval {}",
            format_duration_ms(timeout_ms),
            format_duration_ms(interval_ms)
        ));
    }
    let path = labels
        .get("__metrics_path__")
        .unwrap_or_default()
        .to_owned();
    // Params: the job's, the first value of each replaced by its `__param_<name>` label.
    let mut params: BTreeMap<String, Vec<String>> = job.params.clone();
    for (name, value) in labels.iter() {
        if let Some(param) = name.strip_prefix("__param_") {
            let values = params.entry(param.to_owned()).or_default();
            match values.first_mut() {
                Some(first) => *first = value.to_owned(),
                None => values.push(value.to_owned()),
            }
        }
    }
    let mut url = format!("{scheme}://{address}{path}");
    if !params.is_empty() {
        let query: Vec<String> = params
            .iter()
            .flat_map(|(n, values)| {
                values
                    .iter()
                    .map(move |v| format!("{}={}", url_escape(n), url_escape(v)))
            })
            .collect();
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&query.join("&"));
    }
    labels.retain(|name| !name.starts_with("__"));
    if !labels.contains("instance") {
        labels.set("instance", address);
    }
    Ok(Some(Target {
        labels,
        url,
        interval_ms,
        timeout_ms,
    }))
}

/// Whether Prometheus adds the scheme's port: a host without one (a bare IPv6 address is
/// left alone, as Go's `SplitHostPort` cannot split it either way).
fn needs_default_port(address: &str) -> bool {
    if let Some(rest) = address.strip_prefix('[') {
        return rest
            .split_once(']')
            .is_some_and(|(_, after)| after.is_empty());
    }
    !address.contains(':')
}

/// Query-string escaping as Go's `url.QueryEscape`.
fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char);
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The discovered labels of one target of a group: `__address__` and the group's labels.
pub fn discovered_labels(group: &TargetGroup, target: &str) -> LabelSet {
    let mut labels = LabelSet::from_pairs(group.labels.clone());
    labels.set("__address__", target.to_owned());
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> PrometheusConfig {
        PrometheusConfig::parse(text).unwrap_or_else(|e| panic!("{text}\n{e}"))
    }

    fn parse_error(text: &str) -> String {
        PrometheusConfig::parse(text).expect_err(text).0
    }

    #[test]
    fn defaults_follow_prometheus() {
        let config = parse(
            "scrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: [a:9100]\n",
        );
        let job = &config.jobs[0];
        assert_eq!((job.interval_ms, job.timeout_ms), (60_000, 10_000));
        assert_eq!(job.metrics_path, "/metrics");
        assert_eq!(job.scheme, Scheme::Http);
        assert!(job.honor_timestamps && !job.honor_labels && job.follow_redirects);
        // A job's timeout defaults to the global one capped at its own interval.
        let config = parse(
            "global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\nscrape_configs:\n  - job_name: fast\n    scrape_interval: 5s\n",
        );
        assert_eq!(
            (config.jobs[0].interval_ms, config.jobs[0].timeout_ms),
            (5_000, 5_000)
        );
        assert!(parse("").jobs.is_empty());
    }

    #[test]
    fn a_full_agent_config_is_read() {
        let config = parse(
            r#"
global:
  scrape_interval: 15s
  scrape_timeout: 10s
  external_labels: {cluster: prod}
scrape_configs:
  - job_name: secured
    scheme: https
    metrics_path: /probe
    params: {module: [http_2xx], target: [a, b]}
    basic_auth: {username: u, password: p}
    tls_config: {insecure_skip_verify: true, server_name: x}
    honor_labels: true
    honor_timestamps: false
    sample_limit: 1000
    body_size_limit: 10MB
    static_configs:
      - targets: ['h:1', 'h:2']
        labels: {env: prod}
    file_sd_configs:
      - files: [/etc/targets/*.json]
        refresh_interval: 1m
    kubernetes_sd_configs:
      - role: pod
        namespaces: {names: [default]}
        selectors: [{role: pod, field: spec.nodeName=n1}]
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
    metric_relabel_configs:
      - source_labels: [__name__]
        regex: go_.*
        action: drop
remote_write:
  - url: http://127.0.0.1:9797/api/v1/write
"#,
        );
        assert_eq!(config.external_labels.get("cluster"), Some("prod"));
        let job = &config.jobs[0];
        assert_eq!(job.scheme, Scheme::Https);
        assert_eq!(job.body_size_limit_bytes, 10 << 20);
        assert_eq!(
            job.auth,
            Some(Auth::Basic {
                username: "u".into(),
                password: Secret::Inline("p".into())
            })
        );
        assert_eq!(job.static_groups[0].targets, ["h:1", "h:2"]);
        assert_eq!(job.kubernetes_sd[0].role, "pod");
        assert_eq!(
            config.remote_write[0].url,
            "http://127.0.0.1:9797/api/v1/write"
        );
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        for (text, needle) in [
            (
                "scrape_configs:\n  - job_name: a\n    scrape_interval: 5s\n    scrape_timeout: 10s\n",
                "scrape timeout greater than scrape interval",
            ),
            (
                "scrape_configs:\n  - job_name: a\n  - job_name: a\n",
                "multiple scrape configs with job name \"a\"",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    scrape_interval: 5 seconds\n",
                "not a valid duration",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    consul_sd_configs: []\n",
                "consul_sd_configs: this service discovery is not supported",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    colour: red\n",
                "unknown field `colour`",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    oauth2: {}\n",
                "oauth2: not supported",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    scheme: ftp\n",
                "invalid scheme",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    basic_auth: {username: u}\n    bearer_token: t\n",
                "at most one of basic_auth",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - action: hashmod\n        target_label: x\n",
                "relabel_configs: rule 1: relabel configuration for hashmod requires non-zero modulus",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    static_configs:\n      - targets: [a/b]\n",
                "not a valid hostname",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    file_sd_configs:\n      - files: [x.txt]\n",
                "must end in .json, .yml or .yaml",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    kubernetes_sd_configs:\n      - role: pods\n",
                "unknown Kubernetes SD role",
            ),
            (
                "rule_files: [a.yml]\n",
                "rule_files: configures a Prometheus server",
            ),
            ("global:\n  scrape_intervals: 1m\n", "scrape_intervals"),
            (
                "remote_write:\n  - url: http://a/w\n    write_relabel_configs:\n      - action: drop\n",
                "write_relabel_configs: not supported",
            ),
            ("remote_write:\n  - url: ftp://a/w\n", "http:// or https://"),
            (
                "remote_write:\n  - url: https://a/w\n    tls_config: {cert_file: /c.pem}\n",
                "remote_write[0].tls_config",
            ),
            (
                "remote_write:\n  - url: http://a/w\n  - url: http://b/w\n",
                "one endpoint",
            ),
            (
                "remote_write:\n  - url: http://a/w\n    basic_auth: {username: u}\n    bearer_token: t\n",
                "at most one of basic_auth",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    body_size_limit: 10 megs\n",
                "not a valid size",
            ),
        ] {
            let error = parse_error(text);
            assert!(error.contains(needle), "{text}\n=> {error}");
        }
    }

    fn first_job(text: &str) -> ScrapeJob {
        parse(text).jobs.remove(0)
    }

    #[test]
    fn targets_get_prometheus_s_labels_and_urls() {
        let job = first_job(
            "scrape_configs:\n  - job_name: node\n    scrape_interval: 15s\n    params: {collect: [cpu, mem]}\n    static_configs:\n      - targets: [host]\n        labels: {env: prod, __meta_x: y}\n",
        );
        let group = &job.static_groups[0];
        let target = populate_target(&discovered_labels(group, "host"), &job)
            .unwrap()
            .unwrap();
        assert_eq!(
            target.labels.iter().collect::<Vec<_>>(),
            [("env", "prod"), ("instance", "host:80"), ("job", "node")]
        );
        assert_eq!(target.url, "http://host:80/metrics?collect=cpu&collect=mem");
        assert_eq!((target.interval_ms, target.timeout_ms), (15_000, 10_000));

        // Relabeling can set the address, scheme, path, params, interval and instance.
        let job = job_with_relabel(
            "- source_labels: [__address__]\n  target_label: __param_target\n\
             - target_label: __address__\n  replacement: exporter:9115\n\
             - target_label: __scheme__\n  replacement: https\n\
             - target_label: __metrics_path__\n  replacement: /probe\n\
             - target_label: __scrape_interval__\n  replacement: 30s\n\
             - source_labels: [__param_target]\n  target_label: instance\n",
        );
        let target = populate_target(
            &discovered_labels(&job.static_groups[0], "example.com"),
            &job,
        )
        .unwrap()
        .unwrap();
        assert_eq!(target.url, "https://exporter:9115/probe?target=example.com");
        assert_eq!(target.interval_ms, 30_000);
        assert_eq!(target.labels.get("instance"), Some("example.com"));

        // Dropped by relabeling, or broken by it.
        let job = job_with_relabel(
            "- source_labels: [__address__]\n  regex: example.*\n  action: drop\n",
        );
        assert_eq!(
            populate_target(
                &discovered_labels(&job.static_groups[0], "example.com"),
                &job
            ),
            Ok(None)
        );
        let job = job_with_relabel("- target_label: __scrape_timeout__\n  replacement: 2m\n");
        let error =
            populate_target(&discovered_labels(&job.static_groups[0], "a:1"), &job).unwrap_err();
        assert!(error.contains("greater than scrape interval"), "{error}");
        let job = job_with_relabel("- regex: __address__\n  action: labeldrop\n");
        let error =
            populate_target(&discovered_labels(&job.static_groups[0], "a:1"), &job).unwrap_err();
        assert_eq!(error, "no address");

        // IPv6 addresses and https default ports.
        let job = first_job(
            "scrape_configs:\n  - job_name: v6\n    scheme: https\n    static_configs:\n      - targets: ['[::1]']\n",
        );
        let target = populate_target(&discovered_labels(&job.static_groups[0], "[::1]"), &job)
            .unwrap()
            .unwrap();
        assert_eq!(target.url, "https://[::1]:443/metrics");
    }

    fn job_with_relabel(rules: &str) -> ScrapeJob {
        let indented: String = rules.lines().map(|l| format!("      {l}\n")).collect();
        first_job(&format!(
            "scrape_configs:\n  - job_name: j\n    static_configs:\n      - targets: [x]\n    relabel_configs:\n{indented}"
        ))
    }

    #[test]
    fn sizes_are_base_2() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("512KB"), Some(512 << 10));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("10"), None);
        assert_eq!(parse_size("10 MB"), None);
    }

    #[test]
    fn remote_write_takes_a_tls_config() {
        let config = PrometheusConfig::parse(
            "remote_write:\n  - url: https://gateway:9797/api/v1/write\n    tls_config: {insecure_skip_verify: true, min_version: TLS12}\n",
        )
        .expect("a remote_write with tls_config parses");
        assert!(config.remote_write[0].tls_config.is_some());
    }
}
