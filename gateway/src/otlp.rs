//! OTLP over gRPC (port 4317) and HTTP (port 4318: `/v1/traces`, `/v1/metrics`, `/v1/logs`,
//! protobuf or JSON bodies, gzip), as the OpenTelemetry SDKs and collectors send it.
//!
//! Partial success follows the OTLP specification: refused items are counted in the
//! response's `partial_success` with the first reason, and the rest is stored. Failures use
//! the status codes the exporters act on: 400 / INVALID_ARGUMENT (do not retry), 401 /
//! UNAUTHENTICATED, 429 / RESOURCE_EXHAUSTED with a retry delay, 503 / UNAVAILABLE.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use model::Payload;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;

use crate::config::{Limits, OtlpConfig};
use crate::metrics::{Protocol, Signal};
use crate::validate::Outcome;
use crate::{Gateway, GatewayError, TENANT_HEADER, http, otlp_logs, otlp_metrics, otlp_traces};

/// One OTLP signal: its request and response types and how its requests become model data.
trait Export: Send + Sync + 'static {
    type Request: prost::Message + Default + DeserializeOwned + Send + 'static;
    type Response: prost::Message + Serialize + Default;
    const SIGNAL: Signal;
    fn convert(
        request: Self::Request,
        config: &OtlpConfig,
        limits: &Limits,
    ) -> Result<(Payload, Outcome), GatewayError>;
    fn respond(outcome: &Outcome) -> Self::Response;
}

struct Traces;
struct Metrics;
struct Logs;

fn rejection(outcome: &Outcome) -> Option<(i64, String)> {
    (outcome.rejected_total() > 0).then(|| {
        (
            outcome.rejected_total() as i64,
            outcome.first_rejection.clone().unwrap_or_default(),
        )
    })
}

impl Export for Traces {
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    const SIGNAL: Signal = Signal::Spans;

    fn convert(
        request: Self::Request,
        _: &OtlpConfig,
        limits: &Limits,
    ) -> Result<(Payload, Outcome), GatewayError> {
        let (batch, outcome) = otlp_traces::convert(request, limits)?;
        Ok((Payload::Spans(batch), outcome))
    }

    fn respond(outcome: &Outcome) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: rejection(outcome).map(|(rejected_spans, error_message)| {
                ExportTracePartialSuccess {
                    rejected_spans,
                    error_message,
                }
            }),
        }
    }
}

impl Export for Metrics {
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;
    const SIGNAL: Signal = Signal::Samples;

    fn convert(
        request: Self::Request,
        config: &OtlpConfig,
        limits: &Limits,
    ) -> Result<(Payload, Outcome), GatewayError> {
        let (batch, outcome) = otlp_metrics::convert(request, config, limits);
        Ok((Payload::Metrics(batch), outcome))
    }

    fn respond(outcome: &Outcome) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: rejection(outcome).map(|(rejected_data_points, error_message)| {
                ExportMetricsPartialSuccess {
                    rejected_data_points,
                    error_message,
                }
            }),
        }
    }
}

impl Export for Logs {
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    const SIGNAL: Signal = Signal::LogRecords;

    fn convert(
        request: Self::Request,
        _: &OtlpConfig,
        limits: &Limits,
    ) -> Result<(Payload, Outcome), GatewayError> {
        let (batch, outcome) = otlp_logs::convert(request, limits)?;
        Ok((Payload::Logs(batch), outcome))
    }

    fn respond(outcome: &Outcome) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: rejection(outcome).map(|(rejected_log_records, error_message)| {
                ExportLogsPartialSuccess {
                    rejected_log_records,
                    error_message,
                }
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// OTLP/HTTP

/// The body formats OTLP/HTTP allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn of(headers: &HeaderMap) -> Result<Self, GatewayError> {
        let content_type = http::header_str(headers, "content-type").unwrap_or("");
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Self::Protobuf),
            "application/json" => Ok(Self::Json),
            _ => Err(GatewayError::UnsupportedMediaType(format!(
                "Content-Type {content_type}: OTLP/HTTP takes application/x-protobuf or application/json"
            ))),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }

    fn decode<T: prost::Message + Default + DeserializeOwned>(
        self,
        body: &[u8],
    ) -> Result<T, GatewayError> {
        match self {
            Self::Protobuf => T::decode(body).map_err(|e| {
                GatewayError::BadRequest(format!("body is not a valid OTLP protobuf message: {e}"))
            }),
            Self::Json => serde_json::from_slice(body)
                .map_err(|e| GatewayError::BadRequest(format!("body is not valid OTLP JSON: {e}"))),
        }
    }

    fn encode<T: prost::Message + Serialize>(self, message: &T) -> Vec<u8> {
        match self {
            Self::Protobuf => message.encode_to_vec(),
            // Serializing generated OTLP types cannot fail; an empty object is the fallback.
            Self::Json => serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec()),
        }
    }
}

/// `google.rpc.Status`, the error body OTLP/HTTP specifies.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn reply(format: Format, status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
}

fn error_reply(format: Format, error: GatewayError) -> Response {
    let status = RpcStatus {
        code: grpc_code(&error) as i32,
        message: error.to_string(),
    };
    let mut response = reply(format, error.status(), format.encode(&status));
    if let Some(seconds) = error.retry_after_seconds() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

async fn export_http<E: Export>(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let format = match Format::of(&headers) {
        Ok(format) => format,
        Err(error) => return error_reply(Format::Protobuf, error),
    };
    let encoding = http::header_str(&headers, "content-encoding").map(str::to_owned);
    let config = gateway.otlp_config().clone();
    let result = gateway
        .handle_http(
            Protocol::OtlpHttp,
            E::SIGNAL,
            &headers,
            body,
            move |body, limits| {
                let raw = http::decode_content(
                    body,
                    encoding.as_deref(),
                    limits.max_decompressed_body_bytes,
                )?;
                let request: E::Request = format.decode(&raw)?;
                E::convert(request, &config, limits)
            },
        )
        .await;
    match result {
        Ok(outcome) => reply(format, StatusCode::OK, format.encode(&E::respond(&outcome))),
        Err(error) => error_reply(format, error),
    }
}

impl Gateway {
    /// The OTLP/HTTP routes (served on their own port, 4318 by default).
    pub fn otlp_http_routes(&self) -> Router {
        Router::new()
            .route("/v1/traces", post(export_http::<Traces>))
            .route("/v1/metrics", post(export_http::<Metrics>))
            .route("/v1/logs", post(export_http::<Logs>))
            .with_state(self.clone())
    }
}

// ---------------------------------------------------------------------------------------
// OTLP/gRPC

fn grpc_code(error: &GatewayError) -> tonic::Code {
    match error {
        GatewayError::Unauthorized => tonic::Code::Unauthenticated,
        GatewayError::BadTenant(_)
        | GatewayError::BadRequest(_)
        | GatewayError::BodyTooLarge { .. }
        | GatewayError::UnsupportedMediaType(_) => tonic::Code::InvalidArgument,
        GatewayError::RateLimited { .. } => tonic::Code::ResourceExhausted,
        GatewayError::Overloaded
        | GatewayError::Backlogged { .. }
        | GatewayError::Unavailable(_) => tonic::Code::Unavailable,
    }
}

/// `google.rpc.RetryInfo` inside `google.rpc.Status.details`: what tells an OTLP exporter
/// that RESOURCE_EXHAUSTED is worth retrying, and when.
#[derive(Clone, PartialEq, prost::Message)]
struct StatusWithDetails {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types_any::Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types_any::Duration>,
}

/// The two well-known protobuf types needed above, declared here rather than pulling in
/// a whole crate of well-known types.
mod prost_types_any {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Any {
        #[prost(string, tag = "1")]
        pub type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

fn grpc_status(error: GatewayError) -> tonic::Status {
    let code = grpc_code(&error);
    let message = error.to_string();
    match error.retry_after_seconds() {
        Some(seconds) => {
            let retry = RetryInfo {
                retry_delay: Some(prost_types_any::Duration {
                    seconds: seconds as i64,
                    nanos: 0,
                }),
            };
            let details = StatusWithDetails {
                code: code as i32,
                message: message.clone(),
                details: vec![prost_types_any::Any {
                    type_url: "type.googleapis.com/google.rpc.RetryInfo".to_owned(),
                    value: prost::Message::encode_to_vec(&retry),
                }],
            };
            tonic::Status::with_details(
                code,
                message,
                prost::Message::encode_to_vec(&details).into(),
            )
        }
        None => tonic::Status::new(code, message),
    }
}

/// The gRPC services, sharing the gateway.
#[derive(Clone, Debug)]
struct Grpc {
    gateway: Gateway,
}

impl Grpc {
    async fn export<E: Export>(
        &self,
        request: tonic::Request<E::Request>,
    ) -> Result<E::Response, tonic::Status> {
        let started = Instant::now();
        let result = self.export_inner::<E>(request).await;
        self.gateway.request_done(
            Protocol::OtlpGrpc,
            crate::outcome_label(&result),
            started.elapsed().as_secs_f64(),
        );
        result
            .map(|outcome| E::respond(&outcome))
            .map_err(grpc_status)
    }

    async fn export_inner<E: Export>(
        &self,
        request: tonic::Request<E::Request>,
    ) -> Result<Outcome, GatewayError> {
        let metadata = request.metadata();
        let tenant = self.gateway.tenant(
            metadata.get("authorization").and_then(|v| v.to_str().ok()),
            metadata.get(TENANT_HEADER).and_then(|v| v.to_str().ok()),
        )?;
        let limits = self.gateway.limits(&tenant);
        let message = request.into_inner();
        let size = prost::Message::encoded_len(&message) as u64;
        if size > limits.limits.max_decompressed_body_bytes {
            return Err(GatewayError::BodyTooLarge {
                limit: limits.limits.max_decompressed_body_bytes,
            });
        }
        // The message is in memory already: it waits for ingest inside the budget.
        let _permit = self.gateway.admit(size)?;
        self.gateway.wait_for_backlog().await?;
        let config = self.gateway.otlp_config().clone();
        let tenant_limits = limits.limits.clone();
        let (payload, outcome) =
            tokio::task::spawn_blocking(move || E::convert(message, &config, &tenant_limits))
                .await
                .map_err(|e| GatewayError::Unavailable(format!("decoding task failed: {e}")))??;
        self.gateway
            .accept(
                Protocol::OtlpGrpc,
                E::SIGNAL,
                &tenant,
                &limits,
                payload,
                outcome,
            )
            .await
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.export::<Traces>(request)
            .await
            .map(tonic::Response::new)
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.export::<Metrics>(request)
            .await
            .map(tonic::Response::new)
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.export::<Logs>(request).await.map(tonic::Response::new)
    }
}

// ---------------------------------------------------------------------------------------
// Servers

/// The OTLP listeners: gRPC and HTTP, each on its own port, stopped together.
#[derive(Debug)]
pub struct OtlpServers {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
}

async fn stopped(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stop| *stop).await;
}

impl OtlpServers {
    /// Binds both ports (port 0 picks a free one) and starts serving.
    pub async fn start(
        gateway: &Gateway,
        grpc_addr: SocketAddr,
        http_addr: SocketAddr,
    ) -> Result<Self, GatewayError> {
        let bind_error = |addr: SocketAddr, e: std::io::Error| {
            GatewayError::Unavailable(format!("cannot listen on {addr}: {e}"))
        };
        let grpc_listener = TcpListener::bind(grpc_addr)
            .await
            .map_err(|e| bind_error(grpc_addr, e))?;
        let http_listener = TcpListener::bind(http_addr)
            .await
            .map_err(|e| bind_error(http_addr, e))?;
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(|e| bind_error(grpc_addr, e))?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|e| bind_error(http_addr, e))?;
        let (stop, receiver) = watch::channel(false);

        let max_message = usize::try_from(gateway.max_message_bytes()).unwrap_or(usize::MAX);
        let service = Grpc {
            gateway: gateway.clone(),
        };
        let grpc_server = tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(service.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                MetricsServiceServer::new(service.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(max_message),
            )
            .add_service(
                LogsServiceServer::new(service)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(max_message),
            );
        let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
        let grpc = tokio::spawn(
            grpc_server.serve_with_incoming_shutdown(incoming, stopped(receiver.clone())),
        );

        let app = gateway.otlp_http_routes();
        let http = tokio::spawn(async move {
            axum::serve(http_listener, app)
                .with_graceful_shutdown(stopped(receiver))
                .await
        });
        tracing::info!(grpc = %grpc_addr, http = %http_addr, "OTLP listening");
        Ok(Self {
            grpc_addr,
            http_addr,
            stop,
            grpc,
            http,
        })
    }

    /// Stops accepting, lets requests in flight finish for up to `grace`, then cuts them.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let (grpc_abort, http_abort) = (self.grpc.abort_handle(), self.http.abort_handle());
        let both = async {
            let _ = self.grpc.await;
            let _ = self.http.await;
        };
        if tokio::time::timeout(grace, both).await.is_err() {
            grpc_abort.abort();
            http_abort.abort();
            tracing::warn!("OTLP requests still in flight after the grace period were cut off");
        }
    }
}
