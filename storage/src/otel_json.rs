//! OTLP data as JSON text, the same way in every engine's row tables: attributes of every
//! type losslessly (bytes as base64, non-finite floats as strings), so SQL's JSON and
//! string functions can read them and both engines answer the same.

use model::{AnyValue, KeyValue, Resource, Span, attribute};
use serde_json::{Map, Value, json};

/// An attribute value as JSON.
pub(crate) fn json_value(value: &AnyValue) -> Value {
    match value {
        AnyValue::Empty => Value::Null,
        AnyValue::String(s) => Value::String(s.clone()),
        AnyValue::Bool(b) => Value::Bool(*b),
        AnyValue::Int(i) => json!(i),
        AnyValue::Double(d) if d.is_finite() => json!(d),
        AnyValue::Double(d) => Value::String(d.to_string()),
        AnyValue::Bytes(b) => Value::String(base64(b)),
        AnyValue::Array(items) => Value::Array(items.iter().map(json_value).collect()),
        AnyValue::KeyValueList(list) => Value::Object(json_object(list)),
    }
}

pub(crate) fn json_object(list: &[KeyValue]) -> Map<String, Value> {
    list.iter()
        .map(|kv| (kv.key.clone(), json_value(&kv.value)))
        .collect()
}

/// A label set as a JSON object (`{"__name__":"up","job":"api"}`), as the `series` and
/// `exemplars` tables show labels.
pub(crate) fn labels_json(labels: &model::Labels) -> String {
    Value::Object(
        labels
            .iter()
            .map(|l| (l.name.to_owned(), Value::String(l.value.to_owned())))
            .collect(),
    )
    .to_string()
}

pub(crate) fn attributes_json(list: &[KeyValue]) -> String {
    Value::Object(json_object(list)).to_string()
}

pub(crate) fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn service_name(resource: &Resource) -> String {
    match attribute(&resource.attributes, "service.name") {
        Some(AnyValue::String(name)) => name.clone(),
        _ => "unknown_service".to_owned(),
    }
}

/// A span's events as a JSON array.
pub(crate) fn span_events_json(span: &Span) -> String {
    Value::Array(
        span.events
            .iter()
            .map(|e| json!({"time_unix_nano": e.time_unix_nano, "name": e.name, "attributes": json_object(&e.attributes)}))
            .collect(),
    )
    .to_string()
}

/// A span's links as a JSON array.
pub(crate) fn span_links_json(span: &Span) -> String {
    Value::Array(
        span.links
            .iter()
            .map(|l| json!({"trace_id": l.trace_id.to_string(), "span_id": l.span_id.to_string(), "trace_state": l.trace_state, "attributes": json_object(&l.attributes)}))
            .collect(),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_become_json_losslessly() {
        let value = AnyValue::KeyValueList(vec![
            KeyValue::new("s", AnyValue::String("x".into())),
            KeyValue::new("b", AnyValue::Bytes(vec![0, 1, 2, 255])),
            KeyValue::new("nan", AnyValue::Double(f64::NAN)),
            KeyValue::new(
                "a",
                AnyValue::Array(vec![
                    AnyValue::Int(i64::MAX),
                    AnyValue::Bool(false),
                    AnyValue::Empty,
                ]),
            ),
        ]);
        assert_eq!(
            json_value(&value).to_string(),
            r#"{"a":[9223372036854775807,false,null],"b":"AAEC/w==","nan":"NaN","s":"x"}"#
        );
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b""), "");
    }
}
