//! Platform events through `POST /api/v1/events` onto the bus's events topic, per tenant.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Harness, send};
use gateway::GatewayConfig;
use model::{EventKind, Payload};

fn event(reason: &str) -> serde_json::Value {
    serde_json::json!({
        "timestamp_ms": 1_764_670_000_000_i64,
        "source": "agent-cluster/prod",
        "attributes": [{"key": "k8s.event.uid", "value": {"String": "e-1"}}],
        "kind": {"Kubernetes": {
            "cluster": "prod", "namespace": "shop", "involved_kind": "Pod",
            "involved_name": "web-1", "involved_uid": "u-1", "reason": reason,
            "message": "Back-off restarting failed container", "event_type": "Warning",
            "count": 3, "first_timestamp_ms": 1_764_669_000_000_i64,
            "last_timestamp_ms": 1_764_670_000_000_i64,
            "reporting_component": "kubelet", "reporting_host": "node-a"
        }}
    })
}

fn post(body: serde_json::Value) -> Request<Body> {
    Request::post("/api/v1/events")
        .header("content-type", "application/json")
        .header("X-Scope-OrgID", "team-a")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn events_are_durable_in_the_tenant_before_200_and_a_bad_item_refuses_the_request() {
    let h = Harness::new(GatewayConfig::default()).await;
    let answer = send(
        &h.router(),
        post(serde_json::json!([event("BackOff"), event("Pulled")])),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.text(), r#"{"accepted":2}"#);
    let mut reasons = Vec::new();
    for envelope in h.envelopes(bus::topics::EVENTS).await {
        assert_eq!(envelope.tenant.as_str(), "team-a");
        let Payload::Events(events) = envelope.payload else {
            panic!("not events")
        };
        for e in events {
            let EventKind::Kubernetes(k) = e.kind else {
                panic!("not a Kubernetes event")
            };
            reasons.push(k.reason);
        }
    }
    reasons.sort();
    assert_eq!(reasons, ["BackOff", "Pulled"]);

    let mut broken = event("Killing");
    broken["kind"]["Kubernetes"]["event_type"] = "Catastrophic".into();
    let answer = send(
        &h.router(),
        post(serde_json::json!([event("Killing"), broken])),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer
            .text()
            .starts_with("events[1].kind.Kubernetes.event_type"),
        "{}",
        answer.text()
    );
    // All or nothing: the good first item was not written either.
    let count: usize = h
        .envelopes(bus::topics::EVENTS)
        .await
        .into_iter()
        .map(|e| match e.payload {
            Payload::Events(events) => events.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(count, 2);
}
