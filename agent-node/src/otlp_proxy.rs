//! The node's local OTLP receiver (gRPC 4317, HTTP 4318): applications on the node export
//! to it, it adds the Kubernetes identity of the sending pod to each resource (looked up by
//! the connection's source IP) and forwards the request to the gateway's OTLP/HTTP
//! endpoint, answering the application with the gateway's verdict.
//!
//! Forwarding synchronously, instead of acknowledging and buffering, keeps the gateway's
//! promise intact end to end: an application's exporter sees success only once the data is
//! durable on the bus, and sees 429/503 (and retries, as OTLP exporters do) when the
//! gateway is overloaded or away. The SDKs already buffer and retry; a second buffer here
//! would only hide back-pressure.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;

/// Who is behind a source IP: the OTLP resource attributes of the pod that has it.
pub trait PodResolver: Send + Sync + 'static {
    /// Attributes (`k8s.pod.name`, `k8s.namespace.name`, …) of the pod with `ip`; empty for
    /// an unknown sender (a host-network process, say).
    fn resource_attributes(&self, ip: IpAddr) -> Vec<(String, String)>;
}

/// Where the proxy listens and forwards.
#[derive(Clone, Debug)]
pub struct OtlpProxyOptions {
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// The gateway's base URL; requests go to `<gateway>/v1/{traces,metrics,logs}`.
    pub gateway: String,
    /// Headers added to every forwarded request (the agent's tenant token); a sender's own
    /// `authorization` / `x-scope-orgid` are forwarded when the agent sets none.
    pub headers: Vec<(String, String)>,
    /// Added to every resource as `k8s.node.name`.
    pub node_name: String,
    /// Largest request accepted (after decompression).
    pub max_request_bytes: usize,
    /// Requests in flight at most (about three times their bytes each: received, decoded,
    /// re-encoded); beyond it senders are told to retry.
    pub max_inflight_bytes: usize,
    pub timeout: Duration,
}

impl OtlpProxyOptions {
    pub fn new(gateway: impl Into<String>, node_name: impl Into<String>) -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 4317)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 4318)),
            gateway: gateway.into(),
            headers: Vec::new(),
            node_name: node_name.into(),
            max_request_bytes: 16 << 20,
            max_inflight_bytes: 64 << 20,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why the proxy cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid gateway URL {0:?}: only http:// is supported")]
    Gateway(String),
}

/// One OTLP signal: its request type, the gateway path, and where its resources are.
trait Signal: Message + Default + Serialize + DeserializeOwned + Send + 'static {
    const PATH: &'static str;
    type Response: Message + Default + Serialize + DeserializeOwned + Send + 'static;
    fn resources(&mut self) -> Vec<&mut Option<Resource>>;
}

impl Signal for ExportTraceServiceRequest {
    const PATH: &'static str = "/v1/traces";
    type Response = ExportTraceServiceResponse;
    fn resources(&mut self) -> Vec<&mut Option<Resource>> {
        self.resource_spans
            .iter_mut()
            .map(|r| &mut r.resource)
            .collect()
    }
}

impl Signal for ExportMetricsServiceRequest {
    const PATH: &'static str = "/v1/metrics";
    type Response = ExportMetricsServiceResponse;
    fn resources(&mut self) -> Vec<&mut Option<Resource>> {
        self.resource_metrics
            .iter_mut()
            .map(|r| &mut r.resource)
            .collect()
    }
}

impl Signal for ExportLogsServiceRequest {
    const PATH: &'static str = "/v1/logs";
    type Response = ExportLogsServiceResponse;
    fn resources(&mut self) -> Vec<&mut Option<Resource>> {
        self.resource_logs
            .iter_mut()
            .map(|r| &mut r.resource)
            .collect()
    }
}

/// Adds `attributes` to every resource of `request` that lacks them: what the application
/// set itself wins (it may know better, e.g. behind a sidecar).
fn enrich<S: Signal>(request: &mut S, attributes: &[(String, String)]) {
    for resource in request.resources() {
        let resource = resource.get_or_insert_with(Resource::default);
        for (key, value) in attributes {
            if !resource.attributes.iter().any(|a| &a.key == key) {
                resource.attributes.push(KeyValue {
                    key: key.clone(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(value.clone())),
                    }),
                    ..Default::default()
                });
            }
        }
    }
}

/// What the gateway answered.
struct Forwarded {
    status: StatusCode,
    retry_after: Option<HeaderValue>,
    body: Bytes,
}

#[derive(Clone)]
struct Proxy {
    client: Client<HttpConnector, Full<Bytes>>,
    gateway: String,
    options: Arc<OtlpProxyOptions>,
    resolver: Arc<dyn PodResolver>,
    /// KiB of requests in flight, bounded by `max_inflight_bytes`: beyond it senders get
    /// 503 / UNAVAILABLE and retry, instead of the agent's memory growing.
    inflight: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Room for a request of `bytes` (its decoded copies included), or `None` when full.
    fn admit(&self, bytes: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.saturating_mul(3) / 1024 + 1).unwrap_or(u32::MAX);
        self.inflight.clone().try_acquire_many_owned(kib).ok()
    }

    fn attributes(&self, peer: Option<IpAddr>) -> Vec<(String, String)> {
        let mut attributes = vec![("k8s.node.name".to_owned(), self.options.node_name.clone())];
        if let Some(ip) = peer {
            attributes.extend(self.resolver.resource_attributes(ip));
        }
        attributes
    }

    /// Enriches and forwards; `sender_headers` are the application's auth/tenant headers.
    ///
    /// Whose tenant: a sender with its own bearer token is forwarded as it is (pods of
    /// different tenants can share a node, and the gateway checks each token); a sender
    /// without one is sent as the agent (its token) when the agent has one, else with the
    /// sender's `X-Scope-OrgID` (auth off: the header names the tenant).
    async fn forward<S: Signal>(
        &self,
        request: S,
        peer: Option<IpAddr>,
        sender_headers: Vec<(String, String)>,
    ) -> Result<Forwarded, String> {
        let attributes = self.attributes(peer);
        // Enriching, encoding and compressing a request of up to 16 MiB is CPU work: off
        // the reactor, which has two threads on a node.
        let compressed = tokio::task::spawn_blocking(move || {
            let mut request = request;
            enrich(&mut request, &attributes);
            snap::raw::Encoder::new()
                .compress_vec(&request.encode_to_vec())
                .map_err(|e| format!("cannot compress: {e}"))
        })
        .await
        .map_err(|e| format!("encoding failed: {e}"))??;
        let mut builder = hyper::Request::post(format!("{}{}", self.gateway, S::PATH))
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header(header::CONTENT_ENCODING, "snappy");
        let sender_has_token = sender_headers
            .iter()
            .any(|(name, _)| name == "authorization");
        let headers = if sender_has_token || self.options.headers.is_empty() {
            &sender_headers
        } else {
            &self.options.headers
        };
        for (name, value) in headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(compressed)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = tokio::time::timeout(self.options.timeout, self.client.request(request))
            .await
            .map_err(|_| "the gateway did not answer in time".to_owned())?
            .map_err(|e| format!("cannot reach the gateway: {e}"))?;
        let status = response.status();
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("the gateway's answer broke off: {e}"))?
            .to_bytes();
        Ok(Forwarded {
            status,
            retry_after,
            body,
        })
    }
}

/// The `google.rpc.Status` body of OTLP errors (the gateway sends one; so do we).
#[derive(Clone, PartialEq, prost::Message, Serialize, serde::Deserialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

const SENDER_HEADERS: [&str; 2] = ["authorization", "x-scope-orgid"];

/// The sender's auth and tenant headers, from HTTP headers or gRPC metadata alike.
fn sender_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Vec<(String, String)> {
    SENDER_HEADERS
        .iter()
        .filter_map(|name| get(name).map(|v| ((*name).to_owned(), v.to_owned())))
        .collect()
}

/// How a gateway status reads to an OTLP client, as a `google.rpc.Code`. OTLP exporters
/// retry UNAVAILABLE (and RESOURCE_EXHAUSTED only with a RetryInfo detail, which we do not
/// send), so overload and throttling both map to UNAVAILABLE: the data must not be dropped.
fn rpc_code(status: StatusCode) -> tonic::Code {
    match status.as_u16() {
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        408 | 429 => tonic::Code::Unavailable,
        400..=499 => tonic::Code::InvalidArgument,
        _ => tonic::Code::Unavailable,
    }
}

/// The message of a gateway error answer (a `google.rpc.Status`, or plain text).
fn error_message(body: &[u8]) -> String {
    RpcStatus::decode(body)
        .map(|s| s.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

fn is_json(headers: &HeaderMap) -> Option<bool> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "application/x-protobuf" | "application/protobuf" => Some(false),
        "application/json" => Some(true),
        _ => None,
    }
}

fn http_reply(json: bool, status: StatusCode, message: &impl ToMessage) -> Response {
    let (body, content_type) = if json {
        (message.json(), "application/json")
    } else {
        (message.protobuf(), "application/x-protobuf")
    };
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

trait ToMessage {
    fn json(&self) -> Vec<u8>;
    fn protobuf(&self) -> Vec<u8>;
}

impl<T: Message + Serialize> ToMessage for T {
    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }
    fn protobuf(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

fn http_error(json: bool, status: StatusCode, message: impl Into<String>) -> Response {
    http_reply(
        json,
        status,
        &RpcStatus {
            code: rpc_code(status) as i32,
            message: message.into(),
        },
    )
}

fn decode_http<S: Signal>(headers: &HeaderMap, body: &[u8], limit: usize) -> Result<S, String> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .to_ascii_lowercase();
    let raw: Vec<u8> = match encoding.as_str() {
        "identity" | "" => body.to_vec(),
        "gzip" => {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("body is not valid gzip: {e}"))?;
            out
        }
        other => {
            return Err(format!(
                "Content-Encoding {other}: the node agent takes gzip or identity"
            ));
        }
    };
    if raw.len() > limit {
        return Err(format!("body is larger than {limit} bytes"));
    }
    if is_json(headers) == Some(true) {
        serde_json::from_slice(&raw).map_err(|e| format!("body is not valid OTLP JSON: {e}"))
    } else {
        S::decode(raw.as_slice()).map_err(|e| format!("body is not a valid OTLP message: {e}"))
    }
}

async fn export_http<S: Signal>(
    State(proxy): State<Proxy>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(json) = is_json(&headers) else {
        return http_error(
            false,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "OTLP/HTTP takes application/x-protobuf or application/json",
        );
    };
    let Some(_permit) = proxy.admit(body.len()) else {
        let mut response = http_error(
            json,
            StatusCode::SERVICE_UNAVAILABLE,
            "the node agent has too many requests in flight; retry shortly",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let limit = proxy.options.max_request_bytes;
    let decode_headers = headers.clone();
    let decoded =
        tokio::task::spawn_blocking(move || decode_http::<S>(&decode_headers, &body, limit))
            .await
            .map_err(|e| format!("decoding failed: {e}"))
            .and_then(|r| r);
    let request: S = match decoded {
        Ok(request) => request,
        Err(message) => return http_error(json, StatusCode::BAD_REQUEST, message),
    };
    let sender = sender_headers(|name| headers.get(name).and_then(|v| v.to_str().ok()));
    match proxy
        .forward(request, Some(peer.ip().to_canonical()), sender)
        .await
    {
        Ok(answer) if answer.status.is_success() => {
            let response = S::Response::decode(answer.body.as_ref()).unwrap_or_default();
            http_reply(json, StatusCode::OK, &response)
        }
        Ok(answer) => {
            let mut response = http_error(json, answer.status, error_message(&answer.body));
            if let Some(retry_after) = answer.retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry_after);
            }
            response
        }
        Err(message) => http_error(json, StatusCode::SERVICE_UNAVAILABLE, message),
    }
}

impl Proxy {
    async fn export_grpc<S: Signal>(
        &self,
        request: tonic::Request<S>,
    ) -> Result<tonic::Response<S::Response>, tonic::Status> {
        let peer = request.remote_addr().map(|a| a.ip().to_canonical());
        let headers =
            sender_headers(|name| request.metadata().get(name).and_then(|v| v.to_str().ok()));
        let size = request.get_ref().encoded_len();
        let Some(_permit) = self.admit(size) else {
            return Err(tonic::Status::unavailable(
                "the node agent has too many requests in flight; retry shortly",
            ));
        };
        match self.forward(request.into_inner(), peer, headers).await {
            Ok(answer) if answer.status.is_success() => Ok(tonic::Response::new(
                S::Response::decode(answer.body.as_ref()).unwrap_or_default(),
            )),
            Ok(answer) => Err(tonic::Status::new(
                rpc_code(answer.status),
                error_message(&answer.body),
            )),
            Err(message) => Err(tonic::Status::unavailable(message)),
        }
    }
}

#[tonic::async_trait]
impl TraceService for Proxy {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.export_grpc(request).await
    }
}

#[tonic::async_trait]
impl MetricsService for Proxy {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.export_grpc(request).await
    }
}

#[tonic::async_trait]
impl LogsService for Proxy {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.export_grpc(request).await
    }
}

/// The running proxy; [`OtlpProxy::stop`] ends both listeners.
#[derive(Debug)]
pub struct OtlpProxy {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn stopped(mut receiver: watch::Receiver<bool>) {
    while !*receiver.borrow() {
        if receiver.changed().await.is_err() {
            return;
        }
    }
}

impl OtlpProxy {
    /// Binds both ports (port 0 picks a free one) and starts serving.
    pub async fn start(
        options: OtlpProxyOptions,
        resolver: Arc<dyn PodResolver>,
    ) -> Result<Self, ProxyError> {
        let gateway = options.gateway.trim_end_matches('/').to_owned();
        if !gateway.starts_with("http://") {
            return Err(ProxyError::Gateway(options.gateway.clone()));
        }
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Listen { addr, source })
        };
        let grpc_listener = bind(options.grpc_listen).await?;
        let http_listener = bind(options.http_listen).await?;
        let local = |listener: &TcpListener, addr: SocketAddr| {
            listener
                .local_addr()
                .map_err(|source| ProxyError::Listen { addr, source })
        };
        let grpc_addr = local(&grpc_listener, options.grpc_listen)?;
        let http_addr = local(&http_listener, options.http_listen)?;
        let max = options.max_request_bytes;
        let proxy = Proxy {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .build(HttpConnector::new()),
            gateway,
            inflight: Arc::new(tokio::sync::Semaphore::new(
                (options.max_inflight_bytes / 1024).max(1),
            )),
            options: Arc::new(options),
            resolver,
        };
        let (stop, receiver) = watch::channel(false);
        let grpc_server = tonic::transport::Server::builder()
            .add_service(
                TraceServiceServer::new(proxy.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(max),
            )
            .add_service(
                MetricsServiceServer::new(proxy.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(max),
            )
            .add_service(
                LogsServiceServer::new(proxy.clone())
                    .accept_compressed(CompressionEncoding::Gzip)
                    .max_decoding_message_size(max),
            );
        let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
        let grpc = tokio::spawn(
            grpc_server.serve_with_incoming_shutdown(incoming, stopped(receiver.clone())),
        );
        let app = axum::Router::new()
            .route("/v1/traces", post(export_http::<ExportTraceServiceRequest>))
            .route(
                "/v1/metrics",
                post(export_http::<ExportMetricsServiceRequest>),
            )
            .route("/v1/logs", post(export_http::<ExportLogsServiceRequest>))
            .layer(axum::extract::DefaultBodyLimit::max(max))
            .with_state(proxy);
        let http = tokio::spawn(async move {
            axum::serve(
                http_listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stopped(receiver))
            .await
        });
        tracing::info!(grpc = %grpc_addr, http = %http_addr, "OTLP proxy listening");
        Ok(Self {
            grpc_addr,
            http_addr,
            stop,
            grpc,
            http,
        })
    }

    /// Stops accepting and waits (up to 10 s) for requests in flight.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let (grpc, http) = (self.grpc.abort_handle(), self.http.abort_handle());
        let both = async {
            let _ = self.grpc.await;
            let _ = self.http.await;
        };
        if tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .is_err()
        {
            grpc.abort();
            http.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

    fn value(resource: &Resource, key: &str) -> Option<String> {
        resource
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
    }

    #[test]
    fn gateway_answers_map_to_codes_otlp_exporters_act_on() {
        assert_eq!(
            rpc_code(StatusCode::TOO_MANY_REQUESTS),
            tonic::Code::Unavailable
        );
        assert_eq!(
            rpc_code(StatusCode::SERVICE_UNAVAILABLE),
            tonic::Code::Unavailable
        );
        assert_eq!(
            rpc_code(StatusCode::BAD_REQUEST),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            rpc_code(StatusCode::NOT_FOUND),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            rpc_code(StatusCode::UNAUTHORIZED),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            rpc_code(StatusCode::FORBIDDEN),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn enrichment_fills_in_without_overriding_the_application() {
        let mut request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![KeyValue {
                            key: "k8s.pod.name".to_owned(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue("own".to_owned())),
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ResourceSpans::default(),
            ],
        };
        enrich(
            &mut request,
            &[
                ("k8s.pod.name".to_owned(), "looked-up".to_owned()),
                ("k8s.namespace.name".to_owned(), "shop".to_owned()),
            ],
        );
        let first = request.resource_spans[0].resource.as_ref().unwrap();
        assert_eq!(value(first, "k8s.pod.name").as_deref(), Some("own"));
        assert_eq!(value(first, "k8s.namespace.name").as_deref(), Some("shop"));
        let second = request.resource_spans[1].resource.as_ref().unwrap();
        assert_eq!(value(second, "k8s.pod.name").as_deref(), Some("looked-up"));
    }
}
