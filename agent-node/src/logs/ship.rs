//! Batches of records as OTLP/HTTP logs requests to the gateway.
//!
//! One `ResourceLogs` per file in a batch, carrying the container's identity (and whatever
//! the pod lookup adds), so the gateway stores each line with its pod. The request is
//! protobuf, snappy-compressed (the Meerkat gateway takes snappy as well as gzip, and
//! snappy costs the node far less CPU). How an answer is classified follows `delivery`'s
//! remote-write sender: 2xx delivered, 429/5xx/network errors retried, any other 4xx
//! refused for good.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::PodAttributes;
use super::tail::FileChunk;

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn resource(chunk: &FileChunk, lookup: Option<&PodAttributes>) -> Resource {
    let file = &chunk.file;
    let mut attributes = vec![
        string("k8s.namespace.name", &file.pod.namespace),
        string("k8s.pod.name", &file.pod.pod),
        string("k8s.pod.uid", &file.pod.uid),
        string("k8s.container.name", &file.pod.container),
        KeyValue {
            key: "k8s.container.restart_count".to_owned(),
            value: Some(AnyValue {
                value: Some(Value::IntValue(i64::from(file.restart_count))),
            }),
            ..Default::default()
        },
        string("log.file.path", file.path.to_string_lossy()),
    ];
    if let Some(lookup) = lookup {
        for (key, value) in lookup(&file.pod) {
            // The file's own identity wins over a lookup that disagrees.
            if !attributes.iter().any(|a| a.key == key) {
                attributes.push(string(&key, value));
            }
        }
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// The OTLP request for `chunks`; `now` is the observed time of every record.
pub fn encode(
    chunks: &[&FileChunk],
    lookup: Option<&PodAttributes>,
    now_unix_nano: u64,
) -> ExportLogsServiceRequest {
    let scope = InstrumentationScope {
        name: "meerkat-agent-node/logs".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    };
    let resource_logs = chunks
        .iter()
        .map(|chunk| ResourceLogs {
            resource: Some(resource(chunk, lookup)),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope.clone()),
                log_records: chunk
                    .records
                    .iter()
                    .map(|record| {
                        let mut attributes = Vec::new();
                        if let Some(stream) = record.stream.as_str() {
                            attributes.push(string("log.iostream", stream));
                        }
                        if record.truncated {
                            attributes.push(KeyValue {
                                key: "log.truncated".to_owned(),
                                value: Some(AnyValue {
                                    value: Some(Value::BoolValue(true)),
                                }),
                                ..Default::default()
                            });
                        }
                        LogRecord {
                            time_unix_nano: record.time_unix_nano,
                            observed_time_unix_nano: now_unix_nano,
                            body: Some(AnyValue {
                                value: Some(Value::StringValue(record.body.clone())),
                            }),
                            attributes,
                            ..Default::default()
                        }
                    })
                    .collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    ExportLogsServiceRequest { resource_logs }
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// Taken; the gateway may still have refused some records (partial success).
    Delivered {
        rejected: u64,
    },
    Refused(String),
    Retry {
        reason: String,
        after: Option<Duration>,
    },
}

/// The HTTP side: one client, reused connections.
#[derive(Debug)]
pub struct Sender {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: hyper::Uri,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

impl Sender {
    pub fn new(uri: hyper::Uri, headers: Vec<(String, String)>, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            uri,
            headers,
            timeout,
        }
    }

    /// Encodes and compresses a request (CPU work: call it off the async threads for big
    /// batches).
    pub fn body(request: &ExportLogsServiceRequest) -> Result<Bytes, String> {
        snap::raw::Encoder::new()
            .compress_vec(&request.encode_to_vec())
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    }

    pub async fn send(&self, body: Bytes) -> Outcome {
        let mut request = hyper::Request::post(self.uri.clone())
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .header(
                "user-agent",
                concat!("meerkat-agent/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = match request.body(Full::new(body)) {
            Ok(request) => request,
            Err(error) => return Outcome::Refused(format!("cannot build the request: {error}")),
        };
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await
        {
            Err(_) => {
                return Outcome::Retry {
                    reason: format!("no answer within {:?}", self.timeout),
                    after: None,
                };
            }
            Ok(Err(error)) => {
                return Outcome::Retry {
                    reason: error.to_string(),
                    after: None,
                };
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read the body so the connection can be reused, and for partial success or why.
        let body = match tokio::time::timeout(self.timeout, response.into_body().collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            _ => Bytes::new(),
        };
        if status.is_success() {
            let rejected = ExportLogsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map_or(0, |p| u64::try_from(p.rejected_log_records).unwrap_or(0));
            Outcome::Delivered { rejected }
        } else if status.as_u16() == 429 || status.is_server_error() {
            Outcome::Retry {
                reason: format!("{status}: {}", String::from_utf8_lossy(&body).trim()),
                after,
            }
        } else {
            Outcome::Refused(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body).trim()
            ))
        }
    }
}
