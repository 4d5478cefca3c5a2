//! `POST /api/v1/events`: platform events (deploys, pipeline runs, alert transitions,
//! Kubernetes events from the cluster agents) as a JSON array of `model::PlatformEvent`,
//! in the serde shape model derives.
//!
//! Events are few and each one matters, so a request is all or nothing: one bad item
//! refuses the request with 400 naming the item and the field, and nothing of it is
//! written (a client that retries a fixed batch does not duplicate its good half). A
//! request answered 2xx is durably on the bus (`Payload::Events`), as for every protocol.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use model::{EventKind, Payload, PlatformEvent};

use crate::metrics::{Protocol, Signal};
use crate::validate::Outcome;
use crate::{Gateway, GatewayError, Limits, http};

/// Events per request at most (an agent batches a few hundred).
pub const MAX_EVENTS_PER_REQUEST: usize = 10_000;
/// The longest `source` accepted.
const MAX_SOURCE_LEN: usize = 256;

/// Parses and validates a request body; the error names the first bad item and field.
pub fn parse(body: &[u8]) -> Result<Vec<PlatformEvent>, GatewayError> {
    let items: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| {
        GatewayError::BadRequest(format!(
            "the body must be a JSON array of platform events: {e}"
        ))
    })?;
    if items.len() > MAX_EVENTS_PER_REQUEST {
        return Err(GatewayError::BadRequest(format!(
            "{} events in one request; send at most {MAX_EVENTS_PER_REQUEST}",
            items.len()
        )));
    }
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let event: PlatformEvent = serde_path_to_error::deserialize(item).map_err(|e| {
            let path = e.path().to_string();
            GatewayError::BadRequest(format!("events[{i}].{path}: {}", e.into_inner()))
        })?;
        validate(&event).map_err(|(field, why)| {
            GatewayError::BadRequest(format!("events[{i}].{field}: {why}"))
        })?;
        events.push(event);
    }
    Ok(events)
}

/// What serde cannot check: the field and why it is refused.
fn validate(event: &PlatformEvent) -> Result<(), (&'static str, String)> {
    if event.timestamp_ms <= 0 {
        return Err((
            "timestamp_ms",
            "must be milliseconds since the Unix epoch, above 0".to_owned(),
        ));
    }
    if event.source.trim().is_empty() {
        return Err(("source", "must name who emitted the event".to_owned()));
    }
    if event.source.len() > MAX_SOURCE_LEN {
        return Err(("source", format!("is longer than {MAX_SOURCE_LEN} bytes")));
    }
    if let EventKind::Kubernetes(k) = &event.kind {
        if k.reason.trim().is_empty() {
            return Err(("kind.Kubernetes.reason", "must not be empty".to_owned()));
        }
        if k.involved_kind.trim().is_empty() || k.involved_name.trim().is_empty() {
            return Err((
                "kind.Kubernetes.involved_name",
                "the involved object's kind and name must be set".to_owned(),
            ));
        }
    }
    Ok(())
}

fn decode(
    body: Bytes,
    encoding: Option<&str>,
    limits: &Limits,
) -> Result<(Payload, Outcome), GatewayError> {
    let raw = http::decode_content(body, encoding, limits.max_decompressed_body_bytes)?;
    let events = parse(&raw)?;
    let outcome = Outcome {
        accepted: events.len() as u64,
        ..Outcome::default()
    };
    Ok((Payload::Events(events), outcome))
}

#[derive(serde::Serialize)]
struct Answer {
    accepted: u64,
}

/// `POST /api/v1/events`: 200 `{"accepted": n}` once durable.
pub(crate) async fn handler(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let encoding = http::header_str(&headers, "content-encoding").map(str::to_owned);
    if let Some(content_type) = http::header_str(&headers, "content-type")
        && !content_type
            .to_ascii_lowercase()
            .starts_with("application/json")
    {
        return GatewayError::UnsupportedMediaType(format!(
            "Content-Type {content_type}: platform events are accepted as application/json"
        ))
        .into_response();
    }
    let result = gateway
        .handle_http(
            Protocol::Events,
            Signal::Events,
            &headers,
            body,
            move |body, limits| decode(body, encoding.as_deref(), limits),
        )
        .await;
    match result {
        Ok(outcome) => Json(Answer {
            accepted: outcome.accepted,
        })
        .into_response(),
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubernetes_event() -> serde_json::Value {
        serde_json::json!({
            "timestamp_ms": 1_764_670_000_000_i64,
            "source": "agent-cluster/prod",
            "attributes": [],
            "kind": {"Kubernetes": {
                "cluster": "prod", "namespace": "shop", "involved_kind": "Pod",
                "involved_name": "web-1", "involved_uid": "u", "reason": "BackOff",
                "message": "Back-off restarting failed container", "event_type": "Warning",
                "count": 3, "first_timestamp_ms": 1_764_669_000_000_i64,
                "last_timestamp_ms": 1_764_670_000_000_i64,
                "reporting_component": "kubelet", "reporting_host": "node-a"
            }}
        })
    }

    fn error_of(body: serde_json::Value) -> String {
        match parse(body.to_string().as_bytes()) {
            Err(GatewayError::BadRequest(message)) => message,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn a_good_batch_parses() {
        let events = parse(
            serde_json::json!([kubernetes_event()])
                .to_string()
                .as_bytes(),
        )
        .expect("valid");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind.name(), "kubernetes");
    }

    #[test]
    fn the_bad_item_and_field_are_named() {
        let mut missing = kubernetes_event();
        missing["kind"]["Kubernetes"]
            .as_object_mut()
            .expect("object")
            .remove("reason");
        let message = error_of(serde_json::json!([kubernetes_event(), missing]));
        assert!(
            message.starts_with("events[1].kind.Kubernetes") && message.contains("reason"),
            "{message}"
        );
        let mut old = kubernetes_event();
        old["timestamp_ms"] = 0.into();
        assert_eq!(
            error_of(serde_json::json!([old])),
            "events[0].timestamp_ms: must be milliseconds since the Unix epoch, above 0"
        );
        let mut anonymous = kubernetes_event();
        anonymous["source"] = " ".into();
        assert!(error_of(serde_json::json!([anonymous])).starts_with("events[0].source:"));
        assert!(error_of(serde_json::json!({"not": "an array"})).contains("JSON array"));
    }
}
