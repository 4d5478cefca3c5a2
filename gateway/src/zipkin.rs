//! Zipkin v2 JSON: `POST /api/v2/spans`, what Zipkin-instrumented applications (Brave,
//! zipkin-go, OpenZipkin clients) send.
//!
//! Spans are translated the way the OpenTelemetry Collector's Zipkin receiver does it, so a
//! Zipkin span and an OTLP span of the same operation look alike: the local endpoint's
//! service becomes the resource's `service.name`, 64-bit trace ids are zero-extended to 128
//! bits, microseconds become nanoseconds, tags become string attributes, annotations become
//! events, an `error` tag sets the span's status to error, and the endpoints become the
//! `net.*` / `peer.service` attributes.

use std::collections::BTreeMap;

use model::{
    AnyValue, InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans, Span, SpanBatch,
    SpanEvent, SpanId, SpanKind, SpanStatus, StatusCode, TraceId,
};
use serde::Deserialize;

use crate::GatewayError;
use crate::config::Limits;
use crate::validate::{Outcome, Rejection};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZipkinSpan {
    trace_id: String,
    id: String,
    #[serde(default)]
    parent_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    /// Microseconds since the epoch.
    #[serde(default)]
    timestamp: Option<u64>,
    /// Microseconds.
    #[serde(default)]
    duration: Option<u64>,
    #[serde(default)]
    local_endpoint: Option<Endpoint>,
    #[serde(default)]
    remote_endpoint: Option<Endpoint>,
    #[serde(default)]
    annotations: Vec<Annotation>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    debug: Option<bool>,
    #[serde(default)]
    shared: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Endpoint {
    #[serde(default)]
    service_name: Option<String>,
    #[serde(default)]
    ipv4: Option<String>,
    #[serde(default)]
    ipv6: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
struct Annotation {
    timestamp: u64,
    value: String,
}

/// The scope given to spans that arrived as Zipkin.
const SCOPE_NAME: &str = "zipkin";

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

/// A 64- or 128-bit hex trace id; 64-bit ids are zero-extended on the left.
fn trace_id(text: &str) -> Result<TraceId, String> {
    let bytes = hex_bytes(text).ok_or_else(|| format!("traceId {text:?} is not hex"))?;
    let mut id = [0u8; 16];
    match bytes.len() {
        8 => id[8..].copy_from_slice(&bytes),
        16 => id.copy_from_slice(&bytes),
        n => {
            return Err(format!(
                "traceId {text:?} must be 16 or 32 hex digits, not {}",
                n * 2
            ));
        }
    }
    let id = TraceId(id);
    if !id.is_valid() {
        return Err("traceId is all zeros".to_owned());
    }
    Ok(id)
}

fn span_id(what: &str, text: &str) -> Result<SpanId, String> {
    let bytes = hex_bytes(text).ok_or_else(|| format!("{what} {text:?} is not hex"))?;
    let id: [u8; 8] = bytes
        .try_into()
        .map_err(|_| format!("{what} {text:?} must be 16 hex digits"))?;
    let id = SpanId(id);
    if !id.is_valid() {
        return Err(format!("{what} is all zeros"));
    }
    Ok(id)
}

fn endpoint_attributes(endpoint: &Endpoint, prefix: &str, out: &mut Vec<KeyValue>) {
    if let Some(ip) = endpoint.ipv4.as_ref().or(endpoint.ipv6.as_ref()) {
        out.push(KeyValue::string(format!("net.{prefix}.ip"), ip.clone()));
    }
    if let Some(port) = endpoint.port {
        out.push(KeyValue::new(
            format!("net.{prefix}.port"),
            AnyValue::Int(i64::from(port)),
        ));
    }
}

fn convert_span(span: ZipkinSpan) -> Result<(String, Span), (&'static str, String)> {
    let trace = trace_id(&span.trace_id).map_err(|m| ("invalid_trace_id", m))?;
    let id = span_id("id", &span.id).map_err(|m| ("invalid_span_id", m))?;
    let parent = match span.parent_id.as_deref().filter(|p| !p.is_empty()) {
        None => None,
        Some(text) => Some(span_id("parentId", text).map_err(|m| ("invalid_span_id", m))?),
    };
    let start_ns = span.timestamp.unwrap_or(0).saturating_mul(1000);
    let end_ns = start_ns.saturating_add(span.duration.unwrap_or(0).saturating_mul(1000));
    let local = span.local_endpoint.unwrap_or_default();
    let service = local
        .service_name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown_service".to_owned());
    let mut attributes = Vec::with_capacity(span.tags.len() + 6);
    endpoint_attributes(&local, "host", &mut attributes);
    if let Some(remote) = &span.remote_endpoint {
        endpoint_attributes(remote, "peer", &mut attributes);
        if let Some(name) = remote.service_name.as_ref().filter(|s| !s.is_empty()) {
            attributes.push(KeyValue::string("peer.service", name.clone()));
        }
    }
    let mut status = SpanStatus::default();
    for (key, value) in span.tags {
        match key.as_str() {
            "error" => {
                status.code = StatusCode::Error;
                status.message = value.clone();
            }
            "otel.status_code" => {
                status.code = match value.as_str() {
                    "ERROR" => StatusCode::Error,
                    "OK" => StatusCode::Ok,
                    _ => StatusCode::Unset,
                };
                continue;
            }
            "otel.status_description" => {
                status.message = value;
                continue;
            }
            _ => {}
        }
        attributes.push(KeyValue::string(key, value));
    }
    if span.debug == Some(true) {
        attributes.push(KeyValue::new("zipkin.debug", AnyValue::Bool(true)));
    }
    if span.shared == Some(true) {
        attributes.push(KeyValue::new("zipkin.shared", AnyValue::Bool(true)));
    }
    let kind = match span.kind.as_deref() {
        Some("SERVER") => SpanKind::Server,
        Some("CLIENT") => SpanKind::Client,
        Some("PRODUCER") => SpanKind::Producer,
        Some("CONSUMER") => SpanKind::Consumer,
        _ => SpanKind::Internal,
    };
    let events = span
        .annotations
        .into_iter()
        .map(|a| SpanEvent {
            time_unix_nano: a.timestamp.saturating_mul(1000),
            name: a.value,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
        })
        .collect();
    Ok((
        service,
        Span {
            trace_id: trace,
            span_id: id,
            trace_state: String::new(),
            parent_span_id: parent,
            flags: 0,
            name: span.name.unwrap_or_default(),
            kind,
            start_time_unix_nano: start_ns,
            end_time_unix_nano: end_ns,
            attributes,
            dropped_attributes_count: 0,
            events,
            dropped_events_count: 0,
            links: Vec::new(),
            dropped_links_count: 0,
            status,
        },
    ))
}

/// Parses a Zipkin v2 JSON list of spans; spans with broken ids are refused one by one.
pub fn convert(body: &[u8], limits: &Limits) -> Result<(SpanBatch, Outcome), GatewayError> {
    // Each element is parsed on its own, so one malformed span does not sink its neighbours.
    let elements: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| {
        GatewayError::BadRequest(format!("body is not a JSON list of Zipkin v2 spans: {e}"))
    })?;
    if elements.len() as u64 > limits.max_series_per_request {
        return Err(GatewayError::BadRequest(format!(
            "request has {} spans, more than the limit of {}; send smaller batches",
            elements.len(),
            limits.max_series_per_request
        )));
    }
    let mut outcome = Outcome::default();
    let mut by_service: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for (index, element) in elements.into_iter().enumerate() {
        let parsed = serde_json::from_value::<ZipkinSpan>(element)
            .map_err(|e| ("invalid_span", format!("not a Zipkin v2 span: {e}")))
            .and_then(convert_span);
        match parsed {
            Ok((service, span)) => {
                by_service.entry(service).or_default().push(span);
                outcome.accepted += 1;
            }
            Err((reason, message)) => outcome.reject(
                Rejection::new(reason, format!("span #{}: {message}", index + 1)),
                1,
            ),
        }
    }
    let batch = SpanBatch {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Resource {
                    attributes: vec![KeyValue::string("service.name", service)],
                    dropped_attributes_count: 0,
                },
                schema_url: String::new(),
                scope_spans: vec![ScopeSpans {
                    scope: InstrumentationScope {
                        name: SCOPE_NAME.to_owned(),
                        ..InstrumentationScope::default()
                    },
                    schema_url: String::new(),
                    spans,
                }],
            })
            .collect(),
    };
    Ok((batch, outcome))
}

// ---------------------------------------------------------------------------------------
// HTTP

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use model::Payload;

use crate::metrics::{Protocol, Signal};
use crate::{Gateway, http};

/// `POST /api/v2/spans`.
pub(crate) async fn handler(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let encoding = http::header_str(&headers, "content-encoding").map(str::to_owned);
    let content_type = http::header_str(&headers, "content-type").unwrap_or("application/json");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return GatewayError::UnsupportedMediaType(format!(
            "Content-Type {content_type}: Zipkin spans are accepted as application/json (v2)"
        ))
        .into_response();
    }
    let result = gateway
        .handle_http(
            Protocol::Zipkin,
            Signal::Spans,
            &headers,
            body,
            move |body, limits| {
                let raw = http::decode_content(
                    body,
                    encoding.as_deref(),
                    limits.max_decompressed_body_bytes,
                )?;
                let (batch, outcome) = convert(&raw, limits)?;
                Ok((Payload::Spans(batch), outcome))
            },
        )
        .await;
    match result {
        // Zipkin's collector answers 202 Accepted.
        Ok(outcome) => match &outcome.first_rejection {
            None => axum::http::StatusCode::ACCEPTED.into_response(),
            Some(first) => (
                axum::http::StatusCode::BAD_REQUEST,
                format!(
                    "{} spans refused, {} accepted; first problem: {first}\n",
                    outcome.rejected_total(),
                    outcome.accepted
                ),
            )
                .into_response(),
        },
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spans_translate_like_the_collectors_zipkin_receiver() {
        let body = include_bytes!("../testdata/zipkin_v2.json");
        let (batch, outcome) = convert(body, &Limits::default()).unwrap();
        assert_eq!(outcome.accepted, 3);
        assert_eq!(
            outcome.rejected,
            vec![("invalid_trace_id", 1), ("invalid_span", 1)]
        );
        let services: Vec<&str> = batch
            .resource_spans
            .iter()
            .map(
                |r| match model::attribute(&r.resource.attributes, "service.name") {
                    Some(AnyValue::String(s)) => s.as_str(),
                    _ => "",
                },
            )
            .collect();
        assert_eq!(services, ["backend", "frontend"]);
        let frontend = &batch.resource_spans[1].scope_spans[0].spans;
        let client = &frontend[0];
        assert_eq!(
            client.trace_id.to_string(),
            "00000000000000005982fe77008310cc",
            "64-bit ids are zero-extended"
        );
        assert_eq!(client.kind, SpanKind::Client);
        assert_eq!(client.start_time_unix_nano, 1_458_702_548_467_000_000);
        assert_eq!(
            client.end_time_unix_nano - client.start_time_unix_nano,
            386_000_000
        );
        assert_eq!(
            model::attribute(&client.attributes, "http.path"),
            Some(&AnyValue::String("/api".into()))
        );
        assert_eq!(
            model::attribute(&client.attributes, "peer.service"),
            Some(&AnyValue::String("backend".into()))
        );
        assert_eq!(
            model::attribute(&client.attributes, "net.peer.port"),
            Some(&AnyValue::Int(8080))
        );
        assert_eq!(
            model::attribute(&client.attributes, "net.host.ip"),
            Some(&AnyValue::String("192.168.99.1".into()))
        );
        assert_eq!(client.events[0].name, "wire.send");
        assert_eq!(client.status.code, StatusCode::Unset);
        let failed = &frontend[1];
        assert_eq!(failed.status.code, StatusCode::Error);
        assert_eq!(failed.status.message, "timeout");
        assert_eq!(
            failed.trace_id.to_string(),
            "5982fe77008310cc80f1da5e10147517"
        );
        let backend = &batch.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            backend.parent_span_id.map(|p| p.to_string()).as_deref(),
            Some("bd7a977555f6b982")
        );
        assert_eq!(backend.kind, SpanKind::Server);
        assert_eq!(
            model::attribute(&backend.attributes, "zipkin.shared"),
            Some(&AnyValue::Bool(true))
        );
    }

    #[test]
    fn not_a_list_is_a_bad_request() {
        let err = convert(br#"{"traceId": "1"}"#, &Limits::default()).unwrap_err();
        assert!(err.to_string().contains("Zipkin v2"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics(text in "\\PC{0,300}") {
            let _ = convert(text.as_bytes(), &Limits::default());
        }

        #[test]
        fn arbitrary_ids_never_panic(trace in "\\PC{0,40}", id in "\\PC{0,20}", ts in any::<u64>(), duration in any::<u64>()) {
            let body = serde_json::json!([{ "traceId": trace, "id": id, "timestamp": ts, "duration": duration }]);
            let _ = convert(body.to_string().as_bytes(), &Limits::default());
        }
    }
}
