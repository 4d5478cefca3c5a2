//! The one door through which telemetry enters Meerkat.
//!
//! Each protocol decoder turns a request into model batches plus an [`validate::Outcome`]
//! (what was accepted, what was refused and why); everything after that is the same for
//! every protocol: the tenant's rate limit, the bus (a request is answered 2xx only after
//! its data is durably appended), and the gateway's metrics.
//!
//! Protocols: Prometheus remote-write (`POST /api/v1/write`), InfluxDB line protocol
//! (`POST /api/v2/write`, `POST /write`), Zipkin v2 JSON (`POST /api/v2/spans`), platform
//! events as JSON (`POST /api/v1/events`, see [`events`]), and OTLP over gRPC and HTTP on
//! their own ports (see [`OtlpServers`]).

pub mod agents;
mod config;
mod error;
pub mod events;
pub mod http;
pub mod influx;
mod limits;
pub mod metrics;
mod otlp;
mod otlp_common;
pub mod otlp_logs;
pub mod otlp_metrics;
pub mod otlp_traces;
pub mod remote_write;
mod sink;
pub mod validate;
pub mod zipkin;

/// Types generated from `proto/remote.proto`.
pub mod proto {
    pub use prompb as prometheus;
}

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use bus::Bus;
use model::{Payload, TenantId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use config::{
    AuthConfig, GatewayConfig, LimitOverrides, Limits, OtlpConfig, TranslationStrategy,
};
pub use error::GatewayError;
pub use limits::TenantLimits;
pub use model::auth::TENANT_HEADER;
pub use otlp::OtlpServers;
pub use sink::{DEFAULT_MAX_RECORD_BYTES, Sink};

use crate::limits::LimitsRegistry;
use crate::metrics::{GatewayMetrics, Protocol, Signal};
use crate::validate::Outcome;
use model::auth::TenantResolver;

/// How far behind the gateway's data its consumer is: in standalone mode, ingest. The
/// gateway refuses writes while it is more than `gateway.max_backlog_seconds` behind.
pub trait Backlog: Send + Sync {
    /// How long data accepted now would wait before it is stored.
    fn delay(&self) -> std::time::Duration;
}

impl<F: Fn() -> std::time::Duration + Send + Sync> Backlog for F {
    fn delay(&self) -> std::time::Duration {
        self()
    }
}

/// Where the gateway reads its [`Backlog`], once one is set.
#[derive(Default)]
struct BacklogSource(std::sync::OnceLock<Arc<dyn Backlog>>);

impl std::fmt::Debug for BacklogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "set"
        } else {
            "unset"
        })
    }
}

/// Longest a write waits for a consumer that is too far behind before it is answered 503:
/// within the timeouts of Prometheus's remote-write (30 s) and OTLP exporters (10 s).
pub const BACKLOG_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a waiting write looks at the consumer's delay again.
const BACKLOG_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// The gateway: shared by every protocol's handlers.
#[derive(Clone, Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    tenants: TenantResolver,
    limits: LimitsRegistry,
    /// One permit per KiB of request body in flight.
    inflight: Arc<Semaphore>,
    sink: Sink,
    metrics: GatewayMetrics,
    otlp: OtlpConfig,
    /// The largest decompressed body any tenant may send (bounds gRPC message decoding).
    max_message_bytes: u64,
    backlog: BacklogSource,
    max_backlog_seconds: f64,
}

/// A request's share of the in-flight budget, released when the request is answered.
#[derive(Debug)]
pub struct InflightPermit {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    metrics: GatewayMetrics,
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.metrics.inflight_bytes.dec_by(self.bytes as i64);
    }
}

impl Gateway {
    /// Builds the gateway on `bus`, whose telemetry topics must exist; `metrics` come from
    /// [`GatewayMetrics::new`] on the process's registry.
    pub async fn new(
        config: &GatewayConfig,
        bus: Arc<dyn Bus>,
        metrics: GatewayMetrics,
    ) -> Result<Self, GatewayError> {
        config.validate().map_err(GatewayError::BadRequest)?;
        let kib = usize::try_from(config.max_inflight_bytes.div_ceil(1024))
            .unwrap_or(Semaphore::MAX_PERMITS);
        Ok(Self {
            shared: Arc::new(Shared {
                tenants: TenantResolver::new(&config.auth)?,
                limits: LimitsRegistry::new(config),
                inflight: Arc::new(Semaphore::new(kib.min(Semaphore::MAX_PERMITS))),
                sink: Sink::new(bus, DEFAULT_MAX_RECORD_BYTES).await?,
                metrics,
                otlp: config.otlp.clone(),
                max_message_bytes: config
                    .tenant_limits
                    .values()
                    .map(|o| config.limits.with(o).max_decompressed_body_bytes)
                    .fold(config.limits.max_decompressed_body_bytes, u64::max),
                backlog: BacklogSource::default(),
                max_backlog_seconds: config.max_backlog_seconds,
            }),
        })
    }

    /// The routes served on the main HTTP port. OTLP/HTTP is served here too (as well as on
    /// its own port, 4318), so an agent needs one gateway address for every signal.
    pub fn http_routes(&self) -> Router {
        self.otlp_http_routes().merge(self.main_routes())
    }

    fn main_routes(&self) -> Router {
        Router::new()
            .route("/api/v1/write", post(remote_write::handler))
            .route("/api/v2/write", post(influx::v2_handler))
            .route("/write", post(influx::v1_handler))
            .route("/ping", get(influx::ping).head(influx::ping))
            .route("/api/v2/spans", post(zipkin::handler))
            .route("/api/v1/agents/heartbeat", post(agents::heartbeat_handler))
            .route("/api/v1/agents", get(agents::list_handler))
            .route("/api/v1/events", post(events::handler))
            .with_state(self.clone())
    }

    /// The agents heard from by heartbeat (in this process).
    pub fn agents(&self) -> &agents::AgentRegistry {
        &self.shared.metrics.agents
    }

    pub fn otlp_config(&self) -> &OtlpConfig {
        &self.shared.otlp
    }

    /// The largest decompressed request any tenant may send.
    pub fn max_message_bytes(&self) -> u64 {
        self.shared.max_message_bytes
    }

    /// Records a finished request in the gateway's metrics.
    pub fn request_done(&self, protocol: Protocol, outcome: &'static str, seconds: f64) {
        self.shared.metrics.request_done(protocol, outcome, seconds);
    }

    /// The tenant of a request, from its `Authorization` and `X-Scope-OrgID` values.
    pub fn tenant(
        &self,
        authorization: Option<&str>,
        org_id: Option<&str>,
    ) -> Result<TenantId, GatewayError> {
        Ok(self.shared.tenants.resolve(authorization, org_id)?)
    }

    pub fn limits(&self, tenant: &TenantId) -> Arc<TenantLimits> {
        self.shared.limits.for_tenant(tenant)
    }

    /// Holds a request while the consumer is more than `gateway.max_backlog_seconds`
    /// behind; 503 if that lasts [`BACKLOG_WAIT`]. Waiting (rather than answering 503 at
    /// once) slows each sender to what is stored, as a blocking append would, without the
    /// idle gaps of client backoff. HTTP requests wait before their body is read and before
    /// taking in-flight budget; a gRPC message is already in memory, so it waits holding
    /// its budget.
    pub async fn wait_for_backlog(&self) -> Result<(), GatewayError> {
        let limit = self.shared.max_backlog_seconds;
        let Some(backlog) = self.shared.backlog.0.get().filter(|_| limit > 0.0) else {
            return Ok(());
        };
        let deadline = Instant::now() + BACKLOG_WAIT;
        loop {
            let behind = backlog.delay().as_secs_f64();
            if behind <= limit {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(GatewayError::Backlogged {
                    behind_seconds: behind,
                    limit_seconds: limit,
                });
            }
            tokio::time::sleep(BACKLOG_POLL).await;
        }
    }

    /// Makes writes wait for `backlog` (see [`Backlog`]); once, at start.
    pub fn set_backlog(&self, backlog: Arc<dyn Backlog>) {
        if self.shared.backlog.0.set(backlog).is_err() {
            tracing::warn!("the gateway's backlog source was already set; keeping the first");
        }
    }

    /// Reserves room for a request of `bytes`; refuses (503) when the gateway is already
    /// holding as much as it may.
    pub fn admit(&self, bytes: u64) -> Result<InflightPermit, GatewayError> {
        let kib =
            u32::try_from(bytes.div_ceil(1024).max(1)).map_err(|_| GatewayError::Overloaded)?;
        let permit = self
            .shared
            .inflight
            .clone()
            .try_acquire_many_owned(kib)
            .map_err(|_| GatewayError::Overloaded)?;
        self.shared.metrics.inflight_bytes.inc_by(bytes as i64);
        Ok(InflightPermit {
            _permit: permit,
            bytes,
            metrics: self.shared.metrics.clone(),
        })
    }

    /// Everything after decoding: rate limit, durable append, metrics.
    pub async fn accept(
        &self,
        protocol: Protocol,
        signal: Signal,
        tenant: &TenantId,
        limits: &TenantLimits,
        payload: Payload,
        outcome: Outcome,
    ) -> Result<Outcome, GatewayError> {
        let metrics = &self.shared.metrics;
        if let Err(error) = limits.admit(outcome.accepted) {
            metrics.reject(
                protocol,
                tenant.as_str(),
                signal,
                error.reason(),
                outcome.accepted + outcome.rejected_total(),
            );
            return Err(error);
        }
        // A request may carry only metadata (Prometheus sends it on its own): still written.
        if !payload_is_empty(&payload)
            && let Err(error) = self.shared.sink.write(tenant, payload).await
        {
            metrics.reject(
                protocol,
                tenant.as_str(),
                signal,
                error.reason(),
                outcome.accepted,
            );
            return Err(error);
        }
        metrics.record(protocol, tenant.as_str(), signal, &outcome);
        Ok(outcome)
    }

    /// The common path of an HTTP write: tenant, admission, bounded body, decode on a
    /// blocking thread, accept. `decode` turns the (decompressed) body into a payload.
    pub async fn handle_http<F>(
        &self,
        protocol: Protocol,
        signal: Signal,
        headers: &HeaderMap,
        body: Body,
        decode: F,
    ) -> Result<Outcome, GatewayError>
    where
        F: FnOnce(axum::body::Bytes, &Limits) -> Result<(Payload, Outcome), GatewayError>
            + Send
            + 'static,
    {
        let started = Instant::now();
        let result = self
            .handle_http_inner(protocol, signal, headers, body, decode)
            .await;
        self.request_done(
            protocol,
            outcome_label(&result),
            started.elapsed().as_secs_f64(),
        );
        result
    }

    async fn handle_http_inner<F>(
        &self,
        protocol: Protocol,
        signal: Signal,
        headers: &HeaderMap,
        body: Body,
        decode: F,
    ) -> Result<Outcome, GatewayError>
    where
        F: FnOnce(axum::body::Bytes, &Limits) -> Result<(Payload, Outcome), GatewayError>
            + Send
            + 'static,
    {
        let tenant = self.tenant(
            http::header_str(headers, "authorization"),
            http::header_str(headers, TENANT_HEADER),
        )?;
        let limits = self.limits(&tenant);
        let max_body = limits.limits.max_request_body_bytes;
        self.wait_for_backlog().await?;
        let _permit = self.admit(
            http::content_length(headers)
                .unwrap_or(max_body)
                .min(max_body),
        )?;
        let body = http::read_body(headers, body, max_body).await?;
        let tenant_limits = limits.limits.clone();
        let decoded = tokio::task::spawn_blocking(move || decode(body, &tenant_limits))
            .await
            .map_err(|e| GatewayError::Unavailable(format!("decoding task failed: {e}")));
        let (payload, outcome) = match decoded.and_then(|r| r) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.shared
                    .metrics
                    .reject(protocol, tenant.as_str(), signal, error.reason(), 1);
                return Err(error);
            }
        };
        self.accept(protocol, signal, &tenant, &limits, payload, outcome)
            .await
    }
}

/// How a request ended, as the `outcome` label of the request metrics.
fn outcome_label(result: &Result<Outcome, GatewayError>) -> &'static str {
    match result {
        Ok(outcome) if outcome.rejected_total() > 0 => "partial",
        Ok(_) => "ok",
        Err(error) => error.reason(),
    }
}

fn payload_is_empty(payload: &Payload) -> bool {
    match payload {
        Payload::Metrics(batch) => batch.series.is_empty() && batch.metadata.is_empty(),
        Payload::Spans(batch) => batch.resource_spans.is_empty(),
        Payload::Logs(batch) => batch.resource_logs.is_empty(),
        Payload::Events(events) => events.is_empty(),
        Payload::RemoteWrite(body) => body.snappy.is_empty(),
    }
}
