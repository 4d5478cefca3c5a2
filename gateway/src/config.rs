//! The gateway's configuration (the `gateway:` section of `meerkat.yaml`).

use std::collections::BTreeMap;

pub use model::auth::AuthConfig;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub auth: AuthConfig,
    /// Limits every tenant gets unless `tenant_limits` says otherwise.
    pub limits: Limits,
    /// Per-tenant overrides of `limits`; a key left out keeps the default.
    pub tenant_limits: BTreeMap<String, LimitOverrides>,
    /// Request bytes (compressed, as received) being decoded or waiting for the bus, across
    /// all tenants. Past it the gateway answers 503 with Retry-After instead of buffering:
    /// this is what keeps memory bounded when the bus is slower than the input.
    pub max_inflight_bytes: u64,
    /// Standalone mode: while ingest is further behind the bus than this many seconds
    /// (its data that old is only now becoming queryable), writes wait, and are answered
    /// 503 with Retry-After if it stays behind for `BACKLOG_WAIT` (5 s). It keeps
    /// acknowledged data quick to query and stops the bus from filling faster than ingest
    /// empties it, which bus retention would end by dropping data. 0 turns it off. Without
    /// ingest in the process (distributed mode) there is nothing to measure and it has no
    /// effect.
    pub max_backlog_seconds: f64,
    pub otlp: OtlpConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            auth: AuthConfig::default(),
            limits: Limits::default(),
            tenant_limits: BTreeMap::new(),
            max_inflight_bytes: 256 << 20,
            max_backlog_seconds: 0.5,
            otlp: OtlpConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body as received (compressed).
    pub max_request_body_bytes: u64,
    /// Largest request body after decompression.
    pub max_decompressed_body_bytes: u64,
    /// Series (or spans, or log records) in one request.
    pub max_series_per_request: u64,
    pub max_labels_per_series: u64,
    pub max_label_name_bytes: u64,
    pub max_label_value_bytes: u64,
    /// Sustained ingest rate: samples (and histogram samples), spans and log records
    /// count one each.
    pub ingestion_rate_per_second: f64,
    /// How far above the sustained rate a burst may go.
    pub ingestion_burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 16 << 20,
            max_decompressed_body_bytes: 128 << 20,
            max_series_per_request: 200_000,
            max_labels_per_series: 64,
            max_label_name_bytes: 1024,
            max_label_value_bytes: 4096,
            ingestion_rate_per_second: 5_000_000.0,
            ingestion_burst: 10_000_000.0,
        }
    }
}

/// A tenant's exceptions to the default limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitOverrides {
    pub max_request_body_bytes: Option<u64>,
    pub max_decompressed_body_bytes: Option<u64>,
    pub max_series_per_request: Option<u64>,
    pub max_labels_per_series: Option<u64>,
    pub max_label_name_bytes: Option<u64>,
    pub max_label_value_bytes: Option<u64>,
    pub ingestion_rate_per_second: Option<f64>,
    pub ingestion_burst: Option<f64>,
}

impl Limits {
    /// These limits with a tenant's overrides applied.
    pub fn with(&self, overrides: &LimitOverrides) -> Self {
        Self {
            max_request_body_bytes: overrides
                .max_request_body_bytes
                .unwrap_or(self.max_request_body_bytes),
            max_decompressed_body_bytes: overrides
                .max_decompressed_body_bytes
                .unwrap_or(self.max_decompressed_body_bytes),
            max_series_per_request: overrides
                .max_series_per_request
                .unwrap_or(self.max_series_per_request),
            max_labels_per_series: overrides
                .max_labels_per_series
                .unwrap_or(self.max_labels_per_series),
            max_label_name_bytes: overrides
                .max_label_name_bytes
                .unwrap_or(self.max_label_name_bytes),
            max_label_value_bytes: overrides
                .max_label_value_bytes
                .unwrap_or(self.max_label_value_bytes),
            ingestion_rate_per_second: overrides
                .ingestion_rate_per_second
                .unwrap_or(self.ingestion_rate_per_second),
            ingestion_burst: overrides.ingestion_burst.unwrap_or(self.ingestion_burst),
        }
    }

    pub fn validate(&self, what: &str) -> Result<(), String> {
        if self.max_request_body_bytes == 0
            || self.max_decompressed_body_bytes < self.max_request_body_bytes
        {
            return Err(format!(
                "{what}: max_decompressed_body_bytes must be at least max_request_body_bytes, and both above 0"
            ));
        }
        if self.ingestion_rate_per_second.is_nan()
            || self.ingestion_rate_per_second <= 0.0
            || self.ingestion_burst < self.ingestion_rate_per_second
        {
            return Err(format!(
                "{what}: ingestion_rate_per_second must be above 0 and ingestion_burst at least as large"
            ));
        }
        if self.max_series_per_request == 0 || self.max_labels_per_series == 0 {
            return Err(format!(
                "{what}: max_series_per_request and max_labels_per_series must be above 0"
            ));
        }
        Ok(())
    }
}

/// How OTLP metric names and attributes become Prometheus names, as Prometheus's own OTLP
/// receiver does it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TranslationStrategy {
    /// Invalid characters become `_`; unit and type suffixes are added
    /// (`http.server.duration` in `s` → `http_server_duration_seconds`). Prometheus's default.
    #[default]
    UnderscoreEscapingWithSuffixes,
    /// Invalid characters become `_`; names are kept without unit or type suffixes.
    UnderscoreEscapingWithoutSuffixes,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    pub translation_strategy: TranslationStrategy,
    /// Resource attributes copied onto every series of the resource as labels (besides
    /// `job` and `instance`, which always are); all of them stay on `target_info`.
    pub promote_resource_attributes: Vec<String>,
}

impl GatewayConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.limits.validate("gateway.limits")?;
        if !(self.max_backlog_seconds.is_finite() && self.max_backlog_seconds >= 0.0) {
            return Err(format!(
                "gateway.max_backlog_seconds must be a number of seconds, 0 or more (got {})",
                self.max_backlog_seconds
            ));
        }
        for (tenant, overrides) in &self.tenant_limits {
            model::TenantId::new(tenant.clone())
                .map_err(|e| format!("gateway.tenant_limits: {e}"))?;
            let limits = self.limits.with(overrides);
            limits.validate(&format!("gateway.tenant_limits.{tenant}"))?;
            if limits.max_request_body_bytes > self.max_inflight_bytes {
                return Err(format!(
                    "gateway.tenant_limits.{tenant}.max_request_body_bytes exceeds gateway.max_inflight_bytes: such a request could never be admitted"
                ));
            }
        }
        for (token, tenant) in &self.auth.tokens {
            if token.is_empty() {
                return Err("gateway.auth.tokens: a token must not be empty".to_owned());
            }
            model::TenantId::new(tenant.clone())
                .map_err(|e| format!("gateway.auth.tokens: {e}"))?;
        }
        if self.max_inflight_bytes < self.limits.max_request_body_bytes {
            return Err(
                "gateway.max_inflight_bytes must be at least gateway.limits.max_request_body_bytes"
                    .to_owned(),
            );
        }
        Ok(())
    }
}
