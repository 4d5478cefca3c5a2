//! `/api/v1/query` and `/api/v1/query_range` over a real embedded store: Prometheus's JSON
//! shapes, values as strings, and its errors.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use model::auth::AuthConfig;
use model::{
    Exemplar, Labels, MetricBatch, MetricMetadata, MetricType, Payload, Sample, Series, TenantId,
};
use query::{QueryConfig, QueryService};
use serde_json::{Value, json};
use storage::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use storage::{BusPosition, Storage};
use tempfile::TempDir;
use tower::ServiceExt;

/// 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000;

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn form(params: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    pairs.join("&")
}

async fn get(router: &axum::Router, path: &str, params: &[(&str, &str)]) -> (StatusCode, Value) {
    get_as(router, "a", path, params).await
}

async fn get_as(
    router: &axum::Router,
    tenant: &str,
    path: &str,
    params: &[(&str, &str)],
) -> (StatusCode, Value) {
    let request = Request::get(format!("{path}?{}", form(params)))
        .header("X-Scope-OrgID", tenant)
        .body(Body::empty())
        .unwrap();
    send(router, request).await
}

/// A POST with a form body, as Grafana sends its requests, for `tenant`.
async fn post(
    router: &axum::Router,
    tenant: &str,
    path: &str,
    params: &[(&str, &str)],
) -> (StatusCode, Value) {
    let request = Request::post(path)
        .header("X-Scope-OrgID", tenant)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form(params)))
        .unwrap();
    send(router, request).await
}

async fn send(router: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let (status, text) = send_text(router, request).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: {text:?}: {e}")),
    )
}

/// The status and the body as sent.
async fn send_text(router: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn metadata(name: &str, metric_type: MetricType, help: &str) -> MetricMetadata {
    MetricMetadata {
        metric_family_name: name.to_owned(),
        metric_type,
        help: help.to_owned(),
        unit: String::new(),
    }
}

/// A counter `requests_total{job="api"}` rising 10 per 15 s over 10 minutes, with a reset at
/// 5 minutes, and `up{job="api"}` = 1.
async fn router() -> (TempDir, axum::Router) {
    router_with(QueryConfig::default()).await
}

async fn router_with(config: QueryConfig) -> (TempDir, axum::Router) {
    let dir = TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    let counter = (0..=40)
        .map(|i| Sample {
            timestamp_ms: T0 + i * 15_000,
            value: if i < 20 {
                i as f64 * 10.0
            } else {
                (i - 20) as f64 * 10.0
            },
        })
        .collect();
    let up = vec![Sample {
        timestamp_ms: T0,
        value: 1.0,
    }];
    let payload = Payload::Metrics(MetricBatch {
        series: vec![
            Series {
                exemplars: vec![
                    Exemplar {
                        labels: Labels::new([("trace_id", "abc")]).unwrap(),
                        value: 10.0,
                        timestamp_ms: T0 + 60_000,
                    },
                    Exemplar {
                        labels: Labels::new([("trace_id", "def")]).unwrap(),
                        value: 50.0,
                        timestamp_ms: T0 + 300_000,
                    },
                ],
                ..Series::with_samples(
                    Labels::new([("__name__", "requests_total"), ("job", "api")]).unwrap(),
                    counter,
                )
            },
            Series::with_samples(
                Labels::new([("__name__", "up"), ("job", "api")]).unwrap(),
                up,
            ),
        ],
        metadata: vec![
            metadata("requests_total", MetricType::Counter, "Requests served."),
            metadata(
                "requests_total",
                MetricType::Counter,
                "Requests, by another target.",
            ),
            metadata("up", MetricType::Gauge, "Whether the target is up."),
        ],
    });
    let at = BusPosition {
        topic: "metrics".into(),
        partition: 0,
        offset: 0,
    };
    store
        .write(&TenantId::new("a").unwrap(), payload, &at)
        .await
        .unwrap();
    let store: Arc<dyn Storage> = Arc::new(store);
    let service = QueryService::new(store, &AuthConfig::default(), config).unwrap();
    (dir, service.http_routes())
}

#[tokio::test]
async fn instant_and_range_queries_answer_as_prometheus_does() {
    let (_dir, router) = router().await;
    let at = ((T0 + 120_000) / 1000).to_string();

    let (status, body) = get(&router, "/api/v1/query", &[("query", "up"), ("time", &at)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"__name__": "up", "job": "api"}, "value": [1_700_000_120, "1"]}
        ]}})
    );

    // rate over a window with the reset: the reset is corrected, the name dropped.
    let (_, body) = get(
        &router,
        "/api/v1/query",
        &[
            ("query", "rate(requests_total[2m])"),
            ("time", "2023-11-14T22:23:20Z"),
        ],
    )
    .await;
    let result = &body["data"]["result"][0];
    assert_eq!(result["metric"], json!({"job": "api"}));
    let rate: f64 = result["value"][1].as_str().unwrap().parse().unwrap();
    assert!((rate - 10.0 / 15.0).abs() < 1e-9, "{body}");

    // Values as Prometheus writes them in JSON (Go's 'f' format: no exponent).
    let (_, body) = get(
        &router,
        "/api/v1/query",
        &[("query", "1234567 * 10"), ("time", &at)],
    )
    .await;
    assert_eq!(body["data"]["result"][1], "12345670");

    let (_, body) = get(
        &router,
        "/api/v1/query",
        &[("query", "1 + 2"), ("time", &at)],
    )
    .await;
    assert_eq!(
        body["data"],
        json!({"resultType": "scalar", "result": [1_700_000_120, "3"]})
    );

    // A range query: one point per step where the series has a value, as strings.
    let (status, body) = get(
        &router,
        "/api/v1/query_range",
        &[
            ("query", "up * 2"),
            ("start", &(T0 / 1000).to_string()),
            ("end", &((T0 + 600_000) / 1000).to_string()),
            ("step", "2m"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // up's only sample is at T0; the lookback keeps it for 5 minutes (T0, +2m, +4m).
    assert_eq!(
        body["data"],
        json!({"resultType": "matrix", "result": [{"metric": {"job": "api"}, "values": [
            [1_700_000_000, "2"], [1_700_000_120, "2"], [1_700_000_240, "2"]
        ]}]})
    );
    // The matrix is serialized without a JSON tree; its bytes stay those of one (keys in
    // order, numbers written alike).
    let request = Request::get(format!(
        "/api/v1/query_range?{}",
        form(&[
            ("query", "up * 2"),
            ("start", &(T0 / 1000).to_string()),
            ("end", &((T0 + 600_000) / 1000).to_string()),
            ("step", "2m"),
        ])
    ))
    .header("X-Scope-OrgID", "a")
    .body(Body::empty())
    .unwrap();
    let (_, text) = send_text(&router, request).await;
    let tree: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(text, tree.to_string());
}

/// A request's parameters.
type Params<'a> = &'a [(&'a str, &'a str)];

#[tokio::test]
async fn or_fills_gaps_of_a_range_query_as_one_series() {
    let (_dir, router) = router().await;
    // sum(up) exists while up's sample is within the lookback (T0 to T0 + 5m); vector(0)
    // fills the other steps. Same labels ({}), so one series.
    let (status, body) = get(
        &router,
        "/api/v1/query_range",
        &[
            ("query", "sum(up) or vector(0)"),
            ("start", &(T0 / 1000).to_string()),
            ("end", &((T0 + 600_000) / 1000).to_string()),
            ("step", "120"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let values: Vec<&str> = body["data"]["result"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[1].as_str().unwrap())
        .collect();
    assert_eq!(
        body["data"]["result"].as_array().unwrap().len(),
        1,
        "{body}"
    );
    assert_eq!(values, ["1", "1", "1", "0", "0", "0"]);
}

#[tokio::test]
async fn at_start_inside_a_subquery_is_the_query_start() {
    let (_dir, router) = router().await;
    // `up @ start()` is up at the range query's start (T0: 1) at every subquery step.
    // Subquery steps fall on whole minutes and T0 is 20 s past one, so each 2-minute
    // window holds 2 of them. (Were `start()` the subquery's own first step, before T0,
    // there would be no data at all.)
    let (status, body) = get(
        &router,
        "/api/v1/query_range",
        &[
            ("query", "count_over_time((up @ start())[2m:1m])"),
            ("start", &(T0 / 1000).to_string()),
            ("end", &((T0 + 240_000) / 1000).to_string()),
            ("step", "120"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let values: Vec<&str> = body["data"]["result"][0]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|v| v[1].as_str().unwrap())
        .collect();
    assert_eq!(values, ["2", "2", "2"], "{body}");
}

#[tokio::test]
async fn queries_too_large_to_answer_are_refused_not_run() {
    let (_dir, router) = router().await;
    let (status, body) = get(
        &router,
        "/api/v1/query",
        &[
            ("query", "max_over_time(up[30d:1ms])"),
            ("time", "1700000000"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errorType"], "execution");
    assert!(body["error"].as_str().unwrap().contains("steps"), "{body}");
    // topk's k must fit an int64, as in Prometheus.
    let (status, body) = get(
        &router,
        "/api/v1/query",
        &[("query", "topk(NaN, up)"), ("time", "1700000000")],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "Scalar value NaN overflows int64");
    let (status, body) = get(
        &router,
        "/api/v1/query",
        &[("query", "up"), ("time", "1e19")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("out of range"),
        "{body}"
    );
}

#[tokio::test]
async fn bad_queries_get_prometheus_errors() {
    let (_dir, router) = router().await;
    let cases: &[(&str, Params, &str)] = &[
        (
            "/api/v1/query",
            &[("query", "sum(")],
            "unclosed left parenthesis",
        ),
        ("/api/v1/query", &[], "query is missing"),
        (
            "/api/v1/query",
            &[("query", "up"), ("time", "yesterday")],
            "\"time\"",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", "100"),
                ("end", "50"),
                ("step", "1"),
            ],
            "end timestamp must not be before start time",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", "0"),
                ("end", "100000"),
                ("step", "1"),
            ],
            "11,000 points",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up[5m]"),
                ("start", "0"),
                ("end", "100"),
                ("step", "10"),
            ],
            "range",
        ),
    ];
    for (path, params, message) in cases {
        let (status, body) = get(&router, path, params).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{params:?}: {body}");
        assert_eq!(body["errorType"], "bad_data", "{body}");
        assert!(
            body["error"].as_str().unwrap().contains(message),
            "{params:?}: {body}"
        );
    }
}

#[tokio::test]
async fn series_labels_and_label_values_answer_as_prometheus_does() {
    let (_dir, router) = router().await;
    let (status, body) = get(&router, "/api/v1/series", &[("match[]", "up")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "success", "data": [{"__name__": "up", "job": "api"}]})
    );

    // Several match[]: the union, each series once, sorted; POST form bodies too.
    let both = [
        ("match[]", r#"{job="api"}"#),
        ("match[]", "up"),
        ("match[]", r#"requests_total{job=~"a.*"}"#),
    ];
    let (_, body) = post(&router, "a", "/api/v1/series", &both).await;
    assert_eq!(
        body["data"],
        json!([
            {"__name__": "requests_total", "job": "api"},
            {"__name__": "up", "job": "api"}
        ])
    );

    // A time range keeps only series with samples in it: `up` has one sample, at T0.
    let after = ((T0 + 60_000) / 1000).to_string();
    let end = ((T0 + 600_000) / 1000).to_string();
    let (_, body) = get(
        &router,
        "/api/v1/series",
        &[
            ("match[]", r#"{job="api"}"#),
            ("start", &after),
            ("end", &end),
        ],
    )
    .await;
    assert_eq!(
        body["data"],
        json!([{"__name__": "requests_total", "job": "api"}])
    );

    // `limit` cuts, and says so as Prometheus does.
    let (_, body) = get(
        &router,
        "/api/v1/series",
        &[("match[]", r#"{job="api"}"#), ("limit", "1")],
    )
    .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["warnings"], json!(["results truncated due to limit"]));

    let (_, body) = get(&router, "/api/v1/labels", &[]).await;
    assert_eq!(body["data"], json!(["__name__", "job"]));
    let (_, body) = get(&router, "/api/v1/label/__name__/values", &[]).await;
    assert_eq!(body["data"], json!(["requests_total", "up"]));
    let (_, body) = get(
        &router,
        "/api/v1/label/__name__/values",
        &[("match[]", r#"{job="api"}"#), ("start", &after)],
    )
    .await;
    assert_eq!(body["data"], json!(["requests_total"]));
    let (_, body) = get(&router, "/api/v1/label/nope/values", &[]).await;
    assert_eq!(body["data"], json!([]));

    // Another tenant sees none of it.
    for path in [
        "/api/v1/series",
        "/api/v1/labels",
        "/api/v1/label/job/values",
    ] {
        let (status, body) = get_as(&router, "b", path, &[("match[]", r#"{job="api"}"#)]).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["data"], json!([]), "{path}");
    }

    // Bad input: 400 bad_data naming the problem.
    for (path, params, says) in [
        ("/api/v1/series", vec![], "no match[] parameter provided"),
        (
            "/api/v1/series",
            vec![("match[]", "rate(up[5m])")],
            "not a series selector",
        ),
        (
            "/api/v1/series",
            vec![("match[]", r#"{job=~".*"}"#)],
            "non-empty matcher",
        ),
        ("/api/v1/labels", vec![("match[]", "up{")], "match[]"),
        ("/api/v1/labels", vec![("start", "yesterday")], "\"start\""),
        (
            "/api/v1/labels",
            vec![("start", "20"), ("end", "10")],
            "\"end\"",
        ),
        ("/api/v1/labels", vec![("limit", "-1")], "\"limit\""),
        ("/api/v1/label/a-b/values", vec![], "invalid label name"),
    ] {
        let (status, body) = get(&router, path, &params).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {params:?}: {body}");
        assert_eq!(body["errorType"], "bad_data");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(says), "{path} {params:?}: {message}");
    }
}

#[tokio::test]
async fn format_query_and_status_answer_as_prometheus_does() {
    let (_dir, router) = router().await;
    let (status, body) = get(
        &router,
        "/api/v1/format_query",
        &[("query", "sum by(job)(rate(requests_total{job='api'}[5m]))")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"],
        r#"sum by (job) (rate(requests_total{job="api"}[5m]))"#
    );
    let (status, body) = get(&router, "/api/v1/format_query", &[("query", "sum(")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errorType"], "bad_data");

    let (_, body) = get(&router, "/api/v1/status/buildinfo", &[]).await;
    assert_eq!(body["status"], "success");
    assert_eq!(body["data"]["version"], "2.42.0");
    let (_, body) = get(&router, "/api/v1/status/runtimeinfo", &[]).await;
    let started = body["data"]["startTime"].as_str().unwrap();
    assert!(started.ends_with('Z') && started.len() > 20, "{body}");
    assert!(body["data"]["GOMAXPROCS"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn queries_past_the_series_and_sample_limits_fail_saying_which() {
    // Both series have samples in the 5 minutes before.
    let at = ((T0 + 120_000) / 1000).to_string();
    let (_dir, router) = router_with(QueryConfig {
        max_series: 1,
        ..QueryConfig::default()
    })
    .await;
    let (status, _) = get(&router, "/api/v1/query", &[("query", "up"), ("time", &at)]).await;
    assert_eq!(status, StatusCode::OK, "one series is within the limit");
    // Two selectors of one series each: the limit is over the whole query.
    for query in [r#"{job="api"}"#, "up + requests_total"] {
        let (status, body) =
            get(&router, "/api/v1/query", &[("query", query), ("time", &at)]).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["errorType"], "execution");
        assert!(
            body["error"].as_str().unwrap().contains("query.max_series"),
            "{body}"
        );
    }

    // 41 samples in 10 minutes; as a range query, one point per step on top.
    let at = ((T0 + 600_000) / 1000).to_string();
    let (_dir, router) = router_with(QueryConfig {
        max_samples: 60,
        ..QueryConfig::default()
    })
    .await;
    let (status, body) = get(
        &router,
        "/api/v1/query",
        &[("query", "requests_total[10m]"), ("time", &at)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let start = (T0 / 1000).to_string();
    let (status, body) = get(
        &router,
        "/api/v1/query_range",
        &[
            ("query", "requests_total"),
            ("start", &start),
            ("end", &at),
            ("step", "15s"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("too many samples"),
        "{body}"
    );
}

#[tokio::test]
async fn metadata_answers_as_prometheus_does() {
    let (_dir, router) = router().await;
    let (status, body) = get(&router, "/api/v1/metadata", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "success", "data": {
            "requests_total": [
                {"type": "counter", "help": "Requests served.", "unit": ""},
                {"type": "counter", "help": "Requests, by another target.", "unit": ""}
            ],
            "up": [{"type": "gauge", "help": "Whether the target is up.", "unit": ""}]
        }})
    );
    let (_, body) = get(&router, "/api/v1/metadata", &[("metric", "up")]).await;
    assert_eq!(body["data"].as_object().unwrap().len(), 1);
    assert_eq!(body["data"]["up"][0]["type"], "gauge");
    let (_, body) = get(&router, "/api/v1/metadata", &[("limit", "1")]).await;
    assert_eq!(body["data"].as_object().unwrap().len(), 1);
    let (_, body) = get(&router, "/api/v1/metadata", &[("limit_per_metric", "1")]).await;
    assert_eq!(body["data"]["requests_total"].as_array().unwrap().len(), 1);
    let (_, body) = get(&router, "/api/v1/metadata", &[("metric", "nope")]).await;
    assert_eq!(body["data"], json!({}));
    let (_, body) = get_as(&router, "b", "/api/v1/metadata", &[]).await;
    assert_eq!(body["data"], json!({}), "another tenant sees none of it");
    let (status, body) = get(&router, "/api/v1/metadata", &[("limit", "x")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "limit must be a number");
}

#[tokio::test]
async fn exemplars_of_the_selected_series_answer_as_prometheus_does() {
    let (_dir, router) = router().await;
    let start = (T0 / 1000).to_string();
    let end = ((T0 + 600_000) / 1000).to_string();
    let query = r#"sum(rate(requests_total{job="api"}[5m])) / sum(up)"#;
    let (status, body) = get(
        &router,
        "/api/v1/query_exemplars",
        &[("query", query), ("start", &start), ("end", &end)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"status": "success", "data": [{
            "seriesLabels": {"__name__": "requests_total", "job": "api"},
            "exemplars": [
                {"labels": {"trace_id": "abc"}, "value": "10", "timestamp": 1_700_000_060},
                {"labels": {"trace_id": "def"}, "value": "50", "timestamp": 1_700_000_300}
            ]
        }]})
    );
    // The time range is inclusive and filters exemplars; POST form bodies work too.
    let after = format!("{:.3}", (T0 + 60_001) as f64 / 1000.0);
    let (_, body) = post(
        &router,
        "a",
        "/api/v1/query_exemplars",
        &[
            ("query", "requests_total"),
            ("start", &after),
            ("end", &end),
        ],
    )
    .await;
    assert_eq!(body["data"][0]["exemplars"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["exemplars"][0]["labels"]["trace_id"], "def");
    // Selectors that match no series with exemplars, and another tenant, get none.
    for (tenant, query) in [
        ("a", "up"),
        ("a", r#"requests_total{job="db"}"#),
        ("b", "requests_total"),
    ] {
        let (status, body) = get_as(
            &router,
            tenant,
            "/api/v1/query_exemplars",
            &[("query", query)],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"], json!([]), "{tenant} {query}");
    }
    let (status, body) = get(&router, "/api/v1/query_exemplars", &[("query", "rate(")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errorType"], "bad_data");
}

#[tokio::test]
async fn an_exemplar_stored_twice_is_answered_once() {
    let dir = TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    let series = Series {
        exemplars: vec![Exemplar {
            labels: Labels::new([("trace_id", "abc")]).unwrap(),
            value: 1.0,
            timestamp_ms: T0,
        }],
        ..Series::with_samples(
            Labels::new([("__name__", "requests_total")]).unwrap(),
            vec![Sample {
                timestamp_ms: T0,
                value: 1.0,
            }],
        )
    };
    // A batch resent after a timeout: two bus records, two flushes, two parts.
    for offset in [0, 1] {
        let payload = Payload::Metrics(MetricBatch {
            series: vec![series.clone()],
            metadata: vec![],
        });
        let at = BusPosition {
            topic: "metrics".into(),
            partition: 0,
            offset,
        };
        store
            .write(&TenantId::new("a").unwrap(), payload, &at)
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let store: Arc<dyn Storage> = Arc::new(store);
    let router = QueryService::new(store, &AuthConfig::default(), QueryConfig::default())
        .unwrap()
        .http_routes();
    let (status, body) = get(
        &router,
        "/api/v1/query_exemplars",
        &[("query", "requests_total")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"][0]["exemplars"].as_array().unwrap().len(),
        1,
        "{body}"
    );
}

/// A native histogram at `t` (schema 0, zero bucket ±0.5): 1 in [-1, -0.5), `zero` in the
/// zero bucket, 2 in (0.5, 1] and 1 in (1, 2].
fn native_histogram(t: i64, zero: u64) -> model::NativeHistogram {
    model::NativeHistogram {
        timestamp_ms: t,
        schema: 0,
        zero_threshold: 0.5,
        sum: 3.5,
        reset_hint: model::ResetHint::No,
        counts: model::HistogramCounts::Integer {
            count: 4 + zero,
            zero_count: zero,
            positive_deltas: vec![2, -1],
            negative_deltas: vec![1],
        },
        positive_spans: vec![model::BucketSpan {
            offset: 0,
            length: 2,
        }],
        negative_spans: vec![model::BucketSpan {
            offset: 0,
            length: 1,
        }],
    }
}

#[tokio::test]
async fn native_histograms_are_written_as_prometheus_writes_them() {
    let dir = TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    let labels = Labels::new([("__name__", "latency_seconds"), ("job", "api")]).unwrap();
    let payload = Payload::Metrics(MetricBatch {
        series: vec![Series {
            labels,
            samples: vec![],
            histograms: vec![native_histogram(T0, 1), native_histogram(T0 + 15_000, 0)],
            exemplars: vec![],
        }],
        metadata: vec![],
    });
    let at = BusPosition {
        topic: "metrics".into(),
        partition: 0,
        offset: 0,
    };
    store
        .write(&TenantId::new("a").unwrap(), payload, &at)
        .await
        .unwrap();
    let store: Arc<dyn Storage> = Arc::new(store);
    let router = QueryService::new(store, &AuthConfig::default(), QueryConfig::default())
        .unwrap()
        .http_routes();
    let with_zero = json!({"count": "5", "sum": "3.5", "buckets": [
        [1, "-1", "-0.5", "1"], [3, "-0.5", "0.5", "1"], [0, "0.5", "1", "2"], [0, "1", "2", "1"]
    ]});
    // An empty zero bucket is not written.
    let without_zero = json!({"count": "4", "sum": "3.5", "buckets": [
        [1, "-1", "-0.5", "1"], [0, "0.5", "1", "2"], [0, "1", "2", "1"]
    ]});
    let metric = json!({"__name__": "latency_seconds", "job": "api"});

    let time = (T0 / 1000).to_string();
    let (status, body) = get(
        &router,
        "/api/v1/query",
        &[("query", "latency_seconds"), ("time", &time)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["data"],
        json!({"resultType": "vector", "result": [
            {"metric": metric, "histogram": [1_700_000_000, with_zero]}
        ]})
    );

    let (start, end) = ((T0 / 1000).to_string(), (T0 / 1000 + 15).to_string());
    let range = [
        ("query", "latency_seconds"),
        ("start", start.as_str()),
        ("end", end.as_str()),
        ("step", "15"),
    ];
    let (_, body) = get(&router, "/api/v1/query_range", &range).await;
    assert_eq!(
        body["data"]["result"],
        json!([{"metric": metric, "histograms": [
            [1_700_000_000, with_zero], [1_700_000_015, without_zero]
        ]}]),
        "no \"values\" list for a series of histograms only"
    );
    // The streamed matrix writes a histogram's fields in Prometheus's order.
    let request = Request::get(format!("/api/v1/query_range?{}", form(&range)))
        .header("X-Scope-OrgID", "a")
        .body(Body::empty())
        .unwrap();
    let (_, text) = send_text(&router, request).await;
    assert!(
        text.contains(r#"[1700000015,{"count":"4","sum":"3.5","buckets":[[1,"-1","-0.5","1"]"#),
        "{text}"
    );

    // Functions of histograms are floats; a rate is a histogram.
    let (_, body) = get(
        &router,
        "/api/v1/query",
        &[
            (
                "query",
                "histogram_count(latency_seconds) + histogram_sum(latency_seconds)",
            ),
            ("time", &end),
        ],
    )
    .await;
    assert_eq!(
        body["data"]["result"][0]["value"],
        json!([1_700_000_015, "7.5"])
    );
    let (_, body) = get(
        &router,
        "/api/v1/query",
        &[
            ("query", "histogram_quantile(0.5, latency_seconds)"),
            ("time", &end),
        ],
    )
    .await;
    // Rank 2 of 4: the second of the two observations in (0.5, 1], halfway in.
    assert_eq!(
        body["data"]["result"][0]["value"],
        json!([1_700_000_015, "0.75"])
    );
    let (_, body) = get(
        &router,
        "/api/v1/query",
        &[("query", "increase(latency_seconds[1m])"), ("time", &end)],
    )
    .await;
    let increase = &body["data"]["result"][0];
    assert_eq!(increase["metric"], json!({"job": "api"}));
    // The zero bucket went from 1 to 0: a counter reset, so the first histogram is added
    // back, leaving the last one's 4 observations over 15 s, extrapolated to 22.5 s (half
    // a gap before the first sample; the last one is at the window's end).
    assert_eq!(increase["histogram"][1]["count"], json!("6"), "{body}");
}
