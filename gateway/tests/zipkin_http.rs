//! Zipkin v2 JSON through the gateway's HTTP route onto the bus.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Harness, send};
use gateway::GatewayConfig;
use model::Payload;

#[tokio::test]
async fn zipkin_spans_are_accepted_with_202_and_stored_by_service() {
    let h = Harness::new(GatewayConfig::default()).await;
    let fixture: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("../testdata/zipkin_v2.json")).unwrap();
    let good = serde_json::to_vec(&fixture[..3]).unwrap();
    let request = Request::post("/api/v2/spans")
        .header("content-type", "application/json")
        .body(Body::from(good))
        .unwrap();
    let answer = send(&h.router(), request).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text());
    let mut spans = 0;
    for envelope in h.envelopes(bus::topics::SPANS).await {
        let Payload::Spans(batch) = envelope.payload else {
            panic!("not spans")
        };
        spans += batch.span_count();
    }
    assert_eq!(spans, 3);

    // The whole fixture: two broken spans refused by position, the three good ones kept.
    let request = Request::post("/api/v2/spans")
        .header("content-type", "application/json")
        .body(Body::from(include_str!("../testdata/zipkin_v2.json")))
        .unwrap();
    let answer = send(&h.router(), request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.text().contains("2 spans refused, 3 accepted"),
        "{}",
        answer.text()
    );
    assert!(answer.text().contains("span #4"), "{}", answer.text());

    let thrift = Request::post("/api/v2/spans")
        .header("content-type", "application/x-thrift")
        .body(Body::from(vec![1, 2, 3]))
        .unwrap();
    assert_eq!(
        send(&h.router(), thrift).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let garbage = Request::post("/api/v2/spans")
        .header("content-type", "application/json")
        .body(Body::from("[{"))
        .unwrap();
    let answer = send(&h.router(), garbage).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.text().contains("JSON"), "{}", answer.text());
}
