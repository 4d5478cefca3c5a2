//! OTLP's shared pieces (attribute values, resources, scopes, ids) into the model.
//!
//! Every attribute of every type is kept: OTLP's `AnyValue` maps one to one.

use model::{AnyValue, InstrumentationScope, KeyValue, Resource, SpanId, TraceId};
use opentelemetry_proto::tonic::common::v1 as pb;
use opentelemetry_proto::tonic::resource::v1 as resource_pb;

pub fn any_value(value: Option<pb::AnyValue>) -> AnyValue {
    use pb::any_value::Value;
    match value.and_then(|v| v.value) {
        None => AnyValue::Empty,
        Some(Value::StringValue(s)) => AnyValue::String(s),
        Some(Value::BoolValue(b)) => AnyValue::Bool(b),
        Some(Value::IntValue(i)) => AnyValue::Int(i),
        Some(Value::DoubleValue(d)) => AnyValue::Double(d),
        Some(Value::BytesValue(b)) => AnyValue::Bytes(b),
        Some(Value::ArrayValue(array)) => AnyValue::Array(
            array
                .values
                .into_iter()
                .map(|v| any_value(Some(v)))
                .collect(),
        ),
        Some(Value::KvlistValue(list)) => AnyValue::KeyValueList(attributes(list.values)),
        // An index into a profile's string table: meaningless outside profiles.
        Some(Value::StringValueStrindex(_)) => AnyValue::Empty,
    }
}

pub fn attributes(list: Vec<pb::KeyValue>) -> Vec<KeyValue> {
    list.into_iter()
        .map(|kv| KeyValue {
            key: kv.key,
            value: any_value(kv.value),
        })
        .collect()
}

pub fn resource(resource: Option<resource_pb::Resource>) -> Resource {
    let resource = resource.unwrap_or_default();
    Resource {
        attributes: attributes(resource.attributes),
        dropped_attributes_count: resource.dropped_attributes_count,
    }
}

pub fn scope(scope: Option<pb::InstrumentationScope>) -> InstrumentationScope {
    let scope = scope.unwrap_or_default();
    InstrumentationScope {
        name: scope.name,
        version: scope.version,
        attributes: attributes(scope.attributes),
        dropped_attributes_count: scope.dropped_attributes_count,
    }
}

/// A required trace id: 16 bytes, not all zero (OTLP's rule).
pub fn trace_id(bytes: &[u8]) -> Result<TraceId, String> {
    let id: [u8; 16] = bytes
        .try_into()
        .map_err(|_| format!("trace id must be 16 bytes, got {}", bytes.len()))?;
    let id = TraceId(id);
    if !id.is_valid() {
        return Err("trace id is all zeros".to_owned());
    }
    Ok(id)
}

/// A required span id: 8 bytes, not all zero.
pub fn span_id(bytes: &[u8]) -> Result<SpanId, String> {
    let id: [u8; 8] = bytes
        .try_into()
        .map_err(|_| format!("span id must be 8 bytes, got {}", bytes.len()))?;
    let id = SpanId(id);
    if !id.is_valid() {
        return Err("span id is all zeros".to_owned());
    }
    Ok(id)
}

/// An optional id (parent span, a log's trace context): empty or all zeros means none.
pub fn optional<T>(
    bytes: &[u8],
    zero_len: usize,
    parse: impl Fn(&[u8]) -> Result<T, String>,
) -> Result<Option<T>, String> {
    if bytes.is_empty() || (bytes.len() == zero_len && bytes.iter().all(|b| *b == 0)) {
        return Ok(None);
    }
    parse(bytes).map(Some)
}

/// The `service.name` resource attribute, for error messages.
pub fn service_name(resource: &Resource) -> &str {
    match model::attribute(&resource.attributes, "service.name") {
        Some(AnyValue::String(name)) => name,
        _ => "unknown_service",
    }
}
