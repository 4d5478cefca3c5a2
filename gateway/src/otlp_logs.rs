//! OTLP logs into the model: every field of every record is kept; a record with a broken
//! trace context is refused alone.

use model::{LogBatch, LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;

use crate::GatewayError;
use crate::config::Limits;
use crate::otlp_common::{
    any_value, attributes, optional, resource, scope, service_name, span_id, trace_id,
};
use crate::validate::{Outcome, Rejection};

pub fn convert(
    request: ExportLogsServiceRequest,
    limits: &Limits,
) -> Result<(LogBatch, Outcome), GatewayError> {
    let total: usize = request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    if total as u64 > limits.max_series_per_request {
        return Err(GatewayError::BadRequest(format!(
            "request has {total} log records, more than the limit of {}; send smaller batches",
            limits.max_series_per_request
        )));
    }
    let mut outcome = Outcome::default();
    let mut batch = LogBatch::default();
    for resource_logs in request.resource_logs {
        let resource = resource(resource_logs.resource);
        let mut scopes = Vec::with_capacity(resource_logs.scope_logs.len());
        for scope_logs in resource_logs.scope_logs {
            let mut records = Vec::with_capacity(scope_logs.log_records.len());
            for record in scope_logs.log_records {
                let ids = optional(&record.trace_id, 16, trace_id)
                    .and_then(|t| Ok((t, optional(&record.span_id, 8, span_id)?)));
                match ids {
                    Ok((trace, span)) => records.push(LogRecord {
                        time_unix_nano: record.time_unix_nano,
                        observed_time_unix_nano: record.observed_time_unix_nano,
                        severity_number: record.severity_number,
                        severity_text: record.severity_text,
                        body: any_value(record.body),
                        attributes: attributes(record.attributes),
                        dropped_attributes_count: record.dropped_attributes_count,
                        flags: record.flags,
                        trace_id: trace,
                        span_id: span,
                        event_name: record.event_name,
                    }),
                    Err(message) => outcome.reject(
                        Rejection::new(
                            "invalid_trace_context",
                            format!(
                                "log record of service {:?}: {message}",
                                service_name(&resource)
                            ),
                        ),
                        1,
                    ),
                }
            }
            outcome.accepted += records.len() as u64;
            if !records.is_empty() {
                scopes.push(ScopeLogs {
                    scope: scope(scope_logs.scope),
                    schema_url: scope_logs.schema_url,
                    log_records: records,
                });
            }
        }
        if !scopes.is_empty() {
            batch.resource_logs.push(ResourceLogs {
                resource,
                schema_url: resource_logs.schema_url,
                scope_logs: scopes,
            });
        }
    }
    Ok((batch, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue as PbAny, KeyValue as PbKv, KeyValueList, any_value::Value,
    };
    use opentelemetry_proto::tonic::logs::v1 as pb;
    use proptest::prelude::*;

    fn record(trace: Vec<u8>, span: Vec<u8>) -> pb::LogRecord {
        pb::LogRecord {
            time_unix_nano: 5,
            observed_time_unix_nano: 6,
            severity_number: 17,
            severity_text: "ERROR".into(),
            body: Some(PbAny {
                value: Some(Value::KvlistValue(KeyValueList {
                    values: vec![PbKv {
                        key: "msg".into(),
                        value: Some(PbAny {
                            value: Some(Value::StringValue("disk full".into())),
                        }),
                        ..Default::default()
                    }],
                })),
            }),
            trace_id: trace,
            span_id: span,
            event_name: "device.error".into(),
            ..Default::default()
        }
    }

    fn request(records: Vec<pb::LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![pb::ResourceLogs {
                scope_logs: vec![pb::ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn records_keep_body_severity_and_trace_context() {
        let (batch, outcome) = convert(
            request(vec![
                record(vec![7; 16], vec![8; 8]),
                record(vec![], vec![]),
            ]),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(outcome.accepted, 2);
        let records = &batch.resource_logs[0].scope_logs[0].log_records;
        assert_eq!(records[0].severity_number, 17);
        assert_eq!(records[0].event_name, "device.error");
        assert_eq!(
            records[0].trace_id.map(|t| t.to_string()).as_deref(),
            Some("07070707070707070707070707070707")
        );
        assert!(
            matches!(&records[0].body, model::AnyValue::KeyValueList(kv) if kv[0].key == "msg")
        );
        assert_eq!(
            records[1].trace_id, None,
            "no trace context is fine for a log"
        );
    }

    #[test]
    fn a_broken_trace_context_refuses_only_that_record() {
        let (batch, outcome) = convert(
            request(vec![
                record(vec![7; 16], vec![8; 8]),
                record(vec![7; 5], vec![]),
            ]),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(batch.record_count(), 1);
        assert_eq!(outcome.rejected, vec![("invalid_trace_context", 1)]);
    }

    proptest! {
        #[test]
        fn arbitrary_protobuf_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            if let Ok(request) = <ExportLogsServiceRequest as prost::Message>::decode(bytes.as_slice()) {
                let _ = convert(request, &Limits::default());
            }
        }
    }
}
