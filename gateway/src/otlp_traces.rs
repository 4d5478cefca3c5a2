//! OTLP traces into the model: spans keep every field; a span with a broken id is refused
//! alone, with a reason, and its neighbours are kept.

use model::{
    ResourceSpans, ScopeSpans, Span, SpanBatch, SpanEvent, SpanKind, SpanLink, SpanStatus,
    StatusCode,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1 as pb;

use crate::GatewayError;
use crate::config::Limits;
use crate::otlp_common::{attributes, optional, resource, scope, service_name, span_id, trace_id};
use crate::validate::{Outcome, Rejection};

pub fn convert(
    request: ExportTraceServiceRequest,
    limits: &Limits,
) -> Result<(SpanBatch, Outcome), GatewayError> {
    let total: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    if total as u64 > limits.max_series_per_request {
        return Err(GatewayError::BadRequest(format!(
            "request has {total} spans, more than the limit of {}; send smaller batches",
            limits.max_series_per_request
        )));
    }
    let mut outcome = Outcome::default();
    let mut batch = SpanBatch::default();
    for resource_spans in request.resource_spans {
        let resource = resource(resource_spans.resource);
        let mut scopes = Vec::with_capacity(resource_spans.scope_spans.len());
        for scope_spans in resource_spans.scope_spans {
            let mut spans = Vec::with_capacity(scope_spans.spans.len());
            for span in scope_spans.spans {
                match convert_span(span) {
                    Ok(span) => spans.push(span),
                    Err((reason, message)) => outcome.reject(
                        Rejection::new(
                            reason,
                            format!("span of service {:?}: {message}", service_name(&resource)),
                        ),
                        1,
                    ),
                }
            }
            outcome.accepted += spans.len() as u64;
            if !spans.is_empty() {
                scopes.push(ScopeSpans {
                    scope: scope(scope_spans.scope),
                    schema_url: scope_spans.schema_url,
                    spans,
                });
            }
        }
        if !scopes.is_empty() {
            batch.resource_spans.push(ResourceSpans {
                resource,
                schema_url: resource_spans.schema_url,
                scope_spans: scopes,
            });
        }
    }
    Ok((batch, outcome))
}

fn convert_span(span: pb::Span) -> Result<Span, (&'static str, String)> {
    let name = span.name;
    let with_name =
        |reason: &'static str, message: String| (reason, format!("span {name:?}: {message}"));
    let trace = trace_id(&span.trace_id).map_err(|m| with_name("invalid_trace_id", m))?;
    let id = span_id(&span.span_id).map_err(|m| with_name("invalid_span_id", m))?;
    let parent = optional(&span.parent_span_id, 8, span_id)
        .map_err(|m| with_name("invalid_span_id", format!("parent {m}")))?;
    let mut links = Vec::with_capacity(span.links.len());
    for link in span.links {
        links.push(SpanLink {
            trace_id: trace_id(&link.trace_id)
                .map_err(|m| with_name("invalid_trace_id", format!("link {m}")))?,
            span_id: span_id(&link.span_id)
                .map_err(|m| with_name("invalid_span_id", format!("link {m}")))?,
            trace_state: link.trace_state,
            attributes: attributes(link.attributes),
            dropped_attributes_count: link.dropped_attributes_count,
            flags: link.flags,
        });
    }
    let status = span.status.unwrap_or_default();
    Ok(Span {
        trace_id: trace,
        span_id: id,
        trace_state: span.trace_state,
        parent_span_id: parent,
        flags: span.flags,
        kind: match pb::span::SpanKind::try_from(span.kind)
            .unwrap_or(pb::span::SpanKind::Unspecified)
        {
            pb::span::SpanKind::Unspecified => SpanKind::Unspecified,
            pb::span::SpanKind::Internal => SpanKind::Internal,
            pb::span::SpanKind::Server => SpanKind::Server,
            pb::span::SpanKind::Client => SpanKind::Client,
            pb::span::SpanKind::Producer => SpanKind::Producer,
            pb::span::SpanKind::Consumer => SpanKind::Consumer,
        },
        name,
        start_time_unix_nano: span.start_time_unix_nano,
        end_time_unix_nano: span.end_time_unix_nano,
        attributes: attributes(span.attributes),
        dropped_attributes_count: span.dropped_attributes_count,
        events: span
            .events
            .into_iter()
            .map(|event| SpanEvent {
                time_unix_nano: event.time_unix_nano,
                name: event.name,
                attributes: attributes(event.attributes),
                dropped_attributes_count: event.dropped_attributes_count,
            })
            .collect(),
        dropped_events_count: span.dropped_events_count,
        links,
        dropped_links_count: span.dropped_links_count,
        status: SpanStatus {
            code: match pb::status::StatusCode::try_from(status.code)
                .unwrap_or(pb::status::StatusCode::Unset)
            {
                pb::status::StatusCode::Unset => StatusCode::Unset,
                pb::status::StatusCode::Ok => StatusCode::Ok,
                pb::status::StatusCode::Error => StatusCode::Error,
            },
            message: status.message,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue as PbAny, KeyValue as PbKv, any_value::Value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource as PbResource;
    use proptest::prelude::*;

    fn kv(key: &str, value: Value) -> PbKv {
        PbKv {
            key: key.into(),
            value: Some(PbAny { value: Some(value) }),
            ..Default::default()
        }
    }

    fn span(trace: Vec<u8>, id: Vec<u8>, parent: Vec<u8>) -> pb::Span {
        pb::Span {
            trace_id: trace,
            span_id: id,
            parent_span_id: parent,
            name: "GET /orders".into(),
            kind: pb::span::SpanKind::Server as i32,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000,
            attributes: vec![
                kv("http.response.status_code", Value::IntValue(503)),
                kv("retry", Value::BoolValue(true)),
                kv("ratio", Value::DoubleValue(0.5)),
                kv("raw", Value::BytesValue(vec![0, 1])),
            ],
            events: vec![pb::span::Event {
                time_unix_nano: 1_500,
                name: "exception".into(),
                attributes: vec![kv("exception.type", Value::StringValue("Timeout".into()))],
                dropped_attributes_count: 1,
            }],
            links: vec![pb::span::Link {
                trace_id: vec![9; 16],
                span_id: vec![8; 8],
                ..Default::default()
            }],
            status: Some(pb::Status {
                message: "upstream timed out".into(),
                code: pb::status::StatusCode::Error as i32,
            }),
            dropped_events_count: 2,
            ..Default::default()
        }
    }

    fn request(spans: Vec<pb::Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![pb::ResourceSpans {
                resource: Some(PbResource {
                    attributes: vec![kv("service.name", Value::StringValue("orders".into()))],
                    ..Default::default()
                }),
                scope_spans: vec![pb::ScopeSpans {
                    scope: Some(
                        opentelemetry_proto::tonic::common::v1::InstrumentationScope {
                            name: "flask".into(),
                            version: "1.0".into(),
                            ..Default::default()
                        },
                    ),
                    spans,
                    schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    #[test]
    fn every_field_survives() {
        let (batch, outcome) = convert(
            request(vec![span(vec![1; 16], vec![2; 8], vec![3; 8])]),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(outcome.accepted, 1);
        let scope = &batch.resource_spans[0].scope_spans[0];
        assert_eq!(scope.scope.name, "flask");
        assert_eq!(scope.schema_url, "https://opentelemetry.io/schemas/1.21.0");
        let s = &scope.spans[0];
        assert_eq!(s.trace_id.to_string(), "01010101010101010101010101010101");
        assert_eq!(
            s.parent_span_id.map(|p| p.to_string()).as_deref(),
            Some("0303030303030303")
        );
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.status.code, StatusCode::Error);
        assert_eq!(s.status.message, "upstream timed out");
        assert_eq!(
            model::attribute(&s.attributes, "http.response.status_code"),
            Some(&model::AnyValue::Int(503))
        );
        assert_eq!(
            model::attribute(&s.attributes, "raw"),
            Some(&model::AnyValue::Bytes(vec![0, 1]))
        );
        assert_eq!(s.events[0].name, "exception");
        assert_eq!(s.events[0].dropped_attributes_count, 1);
        assert_eq!(s.links[0].span_id.to_string(), "0808080808080808");
        assert_eq!(s.dropped_events_count, 2);
    }

    #[test]
    fn broken_ids_refuse_only_their_span() {
        let spans = vec![
            span(vec![1; 16], vec![2; 8], vec![]),
            span(vec![1; 15], vec![2; 8], vec![]),
            span(vec![0; 16], vec![2; 8], vec![]),
            span(vec![1; 16], vec![0; 8], vec![]),
            span(vec![1; 16], vec![2; 8], vec![0; 8]),
            span(vec![1; 16], vec![2; 8], vec![5; 3]),
        ];
        let (batch, outcome) = convert(request(spans), &Limits::default()).unwrap();
        assert_eq!(outcome.accepted, 2);
        assert_eq!(
            outcome.rejected,
            vec![("invalid_trace_id", 2), ("invalid_span_id", 2)]
        );
        let first = outcome.first_rejection.unwrap();
        assert!(
            first.contains("orders") && first.contains("16 bytes"),
            "{first}"
        );
        let kept = &batch.resource_spans[0].scope_spans[0].spans;
        assert_eq!(
            kept[1].parent_span_id, None,
            "an all-zero parent is a root span"
        );
    }

    #[test]
    fn too_many_spans_is_a_bad_request() {
        let limits = Limits {
            max_series_per_request: 1,
            ..Limits::default()
        };
        let spans = vec![span(vec![1; 16], vec![2; 8], vec![]); 2];
        assert!(matches!(
            convert(request(spans), &limits),
            Err(GatewayError::BadRequest(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_protobuf_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            if let Ok(request) = <ExportTraceServiceRequest as prost::Message>::decode(bytes.as_slice()) {
                let _ = convert(request, &Limits::default());
            }
        }

        #[test]
        fn arbitrary_json_never_panics(text in "\\PC{0,300}") {
            if let Ok(request) = serde_json::from_str::<ExportTraceServiceRequest>(&text) {
                let _ = convert(request, &Limits::default());
            }
        }
    }
}
