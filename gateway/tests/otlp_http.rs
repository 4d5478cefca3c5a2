//! OTLP/HTTP through the gateway's routes: JSON and protobuf bodies, partial success, and
//! the error shapes OTLP exporters act on.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Harness, send};
use gateway::GatewayConfig;
use model::Payload;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;

/// A trace export in OTLP/JSON: hex ids, camelCase, 64-bit integers as strings.
const TRACES_JSON: &str = r#"{
  "resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "cart"}}]},
    "scopeSpans": [{
      "scope": {"name": "manual"},
      "spans": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
         "name": "add item", "kind": 2,
         "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
         "attributes": [{"key": "items", "value": {"intValue": "3"}},
                        {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}}],
         "status": {"code": 2, "message": "oops"}},
        {"traceId": "5b8e", "spanId": "eee19b7ec3c1b174", "name": "bad trace id"}
      ]
    }]
  }]
}"#;

fn post(path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", content_type)
        .body(body.into())
        .unwrap()
}

#[tokio::test]
async fn json_traces_partially_succeed_with_the_reason_in_the_response() {
    let h = Harness::new(GatewayConfig::default()).await;
    let router = h.gateway.otlp_http_routes();
    let answer = send(&router, post("/v1/traces", "application/json", TRACES_JSON)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    let response: ExportTraceServiceResponse = serde_json::from_slice(&answer.body).unwrap();
    let partial = response.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial.error_message.contains("trace id"),
        "{}",
        partial.error_message
    );

    let mut spans = Vec::new();
    for envelope in h.envelopes(bus::topics::SPANS).await {
        let Payload::Spans(batch) = envelope.payload else {
            panic!()
        };
        spans.extend(
            batch
                .resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans),
        );
    }
    assert_eq!(spans.len(), 1);
    assert_eq!(
        spans[0].trace_id.to_string(),
        "5b8efff798038103d269b633813fc60c"
    );
    assert_eq!(spans[0].start_time_unix_nano, 1_544_712_660_000_000_000);
    assert_eq!(
        model::attribute(&spans[0].attributes, "items"),
        Some(&model::AnyValue::Int(3))
    );
}

#[tokio::test]
async fn protobuf_errors_are_rpc_status_bodies_with_the_right_codes() {
    let h = Harness::new(GatewayConfig::default()).await;
    let router = h.gateway.otlp_http_routes();

    let garbage = send(
        &router,
        post(
            "/v1/metrics",
            "application/x-protobuf",
            vec![0xff, 0xff, 0xff],
        ),
    )
    .await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        garbage.content_type.as_deref(),
        Some("application/x-protobuf")
    );
    #[derive(Clone, PartialEq, prost::Message)]
    struct Status {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    let status: Status = prost::Message::decode(garbage.body.as_slice()).unwrap();
    assert_eq!(status.code, 3, "INVALID_ARGUMENT");
    assert!(status.message.contains("protobuf"), "{}", status.message);

    let bad_json = send(&router, post("/v1/logs", "application/json", "{not json")).await;
    assert_eq!(bad_json.status, StatusCode::BAD_REQUEST);
    let json: serde_json::Value = serde_json::from_slice(&bad_json.body).unwrap();
    assert!(json["message"].as_str().unwrap().contains("JSON"), "{json}");

    let wrong_type = send(&router, post("/v1/traces", "text/plain", "hello")).await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let not_gzip = Request::post("/v1/traces")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(Body::from(TRACES_JSON))
        .unwrap();
    assert_eq!(
        send(&router, not_gzip).await.status,
        StatusCode::BAD_REQUEST
    );

    // An empty but valid export is fine and stores nothing.
    let empty = send(
        &router,
        post("/v1/metrics", "application/x-protobuf", Vec::new()),
    )
    .await;
    assert_eq!(empty.status, StatusCode::OK);
    assert!(h.envelopes(bus::topics::METRICS).await.is_empty());
}

#[tokio::test]
async fn delta_metrics_are_refused_by_name_and_cumulative_ones_kept() {
    let h = Harness::new(GatewayConfig::default()).await;
    let router = h.gateway.otlp_http_routes();
    let body = r#"{"resourceMetrics": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
      "scopeMetrics": [{"metrics": [
        {"name": "requests", "sum": {"aggregationTemporality": 1, "isMonotonic": true,
          "dataPoints": [{"asInt": "5", "timeUnixNano": "1700000000000000000"}]}},
        {"name": "errors", "sum": {"aggregationTemporality": 2, "isMonotonic": true,
          "dataPoints": [{"asInt": "2", "timeUnixNano": "1700000000000000000"}]}}
      ]}]}]}"#;
    let answer = send(&router, post("/v1/metrics", "application/json", body)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    // proto3 JSON allows a 64-bit integer as a number or a string.
    assert_eq!(
        json["partialSuccess"]["rejectedDataPoints"]
            .to_string()
            .trim_matches('"'),
        "1",
        "{json}"
    );
    let message = json["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("requests") && message.contains("cumulative"),
        "{message}"
    );
    let series = h.series().await;
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].1, r#"errors_total{job="api"}"#);
    assert_eq!(series[0].2, vec![2.0]);
}

#[tokio::test]
async fn nan_and_infinite_timestamps_are_bad_requests_not_panics() {
    let h = Harness::new(GatewayConfig::default()).await;
    let otlp = h.gateway.otlp_http_routes();
    for timestamp in [r#""NaN""#, r#""Infinity""#, "1e400", r#""-1""#] {
        let body = format!(
            r#"{{"resourceSpans": [{{"scopeSpans": [{{"spans": [{{"traceId": "5b8efff798038103d269b633813fc60c",
               "spanId": "eee19b7ec3c1b174", "name": "x", "startTimeUnixNano": {timestamp}}}]}}]}}]}}"#
        );
        let answer = send(&otlp, post("/v1/traces", "application/json", body)).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{timestamp}: {}",
            answer.text()
        );
    }
    // Zipkin (JSON numbers) and Influx (line protocol) refuse them too.
    let main = h.router();
    let zipkin =
        r#"[{"traceId": "5982fe77008310cc", "id": "bd7a977555f6b982", "timestamp": 1e400}]"#;
    let answer = send(&main, post("/api/v2/spans", "application/json", zipkin)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
    let influx = Request::post("/api/v2/write")
        .body(Body::from("m v=1 NaN\nm v=2 +Inf\n"))
        .unwrap();
    let answer = send(&main, influx).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
    assert!(answer.text().contains("line 1"), "{}", answer.text());
    assert!(h.envelopes(bus::topics::SPANS).await.is_empty());
    assert!(h.series().await.is_empty());
}

/// Agents have one gateway address: OTLP/HTTP is on the main port's routes too.
#[tokio::test]
async fn the_main_port_takes_otlp_http_as_well() {
    let h = Harness::new(GatewayConfig::default()).await;
    let router = h.gateway.http_routes();
    let answer = send(&router, post("/v1/traces", "application/json", TRACES_JSON)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(h.envelopes(bus::topics::SPANS).await.len(), 1);
    // The main port's own routes are still there.
    let answer = send(&router, post("/api/v1/write", "application/x-protobuf", "")).await;
    assert_ne!(answer.status, StatusCode::NOT_FOUND);
}
