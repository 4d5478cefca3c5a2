//! `/api/v1/sql` over a real embedded store: answers in every format, one tenant's tables
//! only, and Prometheus-style errors that name the problem.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use model::auth::AuthConfig;
use model::{Labels, MetricBatch, Payload, Sample, Series, TenantId};
use query::{QueryConfig, QueryService};
use serde_json::{Value, json};
use storage::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use storage::{BusPosition, Storage};
use tempfile::TempDir;
use tower::ServiceExt;

const T0: i64 = 1_700_000_000_000;

struct Answer {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// `data.rows` of a successful JSON answer.
    fn rows(&self) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{}", self.json());
        self.json()["data"]["rows"].clone()
    }

    /// `(errorType, error)` of a failed answer.
    fn error(&self) -> (String, String) {
        let body = self.json();
        assert_eq!(body["status"], "error", "{body}");
        (
            body["errorType"].as_str().unwrap().to_owned(),
            body["error"].as_str().unwrap().to_owned(),
        )
    }
}

async fn send(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap()
        .to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// GET `/api/v1/sql` with these parameters, as `tenant` (by header) when given.
fn get(tenant: Option<&str>, params: &[(&str, &str)]) -> Request<Body> {
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let mut request = Request::get(format!("/api/v1/sql?{}", query.join("&")));
    if let Some(tenant) = tenant {
        request = request.header("X-Scope-OrgID", tenant);
    }
    request.body(Body::empty()).unwrap()
}

fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Series {
    Series::with_samples(
        Labels::new(labels.iter().copied()).unwrap(),
        samples
            .iter()
            .map(|(t, v)| Sample {
                timestamp_ms: *t,
                value: *v,
            })
            .collect(),
    )
}

/// Tenant `a` has `up{job="api"}` (1, then NaN) and `up{job="db"}` (0); tenant `b` has
/// `secret` (42).
async fn store_with_data(dir: &TempDir) -> Arc<dyn Storage> {
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    let write = |tenant: &str, series: Vec<Series>, offset: u64| {
        let payload = Payload::Metrics(MetricBatch {
            series,
            metadata: vec![],
        });
        let at = BusPosition {
            topic: "metrics".into(),
            partition: 0,
            offset,
        };
        let tenant = TenantId::new(tenant).unwrap();
        let store = &store;
        async move { store.write(&tenant, payload, &at).await.unwrap() }
    };
    write(
        "a",
        vec![
            series(
                &[("__name__", "up"), ("job", "api")],
                &[(T0, 1.0), (T0 + 15_000, f64::NAN)],
            ),
            series(&[("__name__", "up"), ("job", "db")], &[(T0, 0.0)]),
        ],
        0,
    )
    .await;
    write(
        "b",
        vec![series(&[("__name__", "secret")], &[(T0, 42.0)])],
        1,
    )
    .await;
    Arc::new(store)
}

fn router(store: Arc<dyn Storage>, auth: AuthConfig, config: QueryConfig) -> Router {
    QueryService::new(store, &auth, config)
        .unwrap()
        .http_routes()
}

const BY_JOB: &str = "SELECT s.labels, count(*) AS n, max(x.timestamp_ms) AS last \
                      FROM samples x JOIN series s USING (series_id) \
                      GROUP BY s.labels ORDER BY s.labels";

#[tokio::test]
async fn answers_json_csv_and_arrow_for_the_tenant_only() {
    let dir = TempDir::new().unwrap();
    let router = router(
        store_with_data(&dir).await,
        AuthConfig::default(),
        QueryConfig::default(),
    );

    let answer = send(&router, get(Some("a"), &[("query", BY_JOB)])).await;
    assert_eq!(answer.content_type, "application/json");
    assert_eq!(
        answer.json(),
        json!({"status": "success", "data": {
            "columns": [
                {"name": "labels", "type": "Utf8"},
                {"name": "n", "type": "Int64"},
                {"name": "last", "type": "Int64"},
            ],
            "rows": [
                [r#"{"__name__":"up","job":"api"}"#, 2, T0 + 15_000],
                [r#"{"__name__":"up","job":"db"}"#, 1, T0],
            ],
        }})
    );

    // NaN, which JSON cannot hold, as Prometheus writes it; a float as a number.
    let answer = send(
        &router,
        get(
            Some("a"),
            &[(
                "query",
                "SELECT value FROM samples ORDER BY timestamp_ms, value",
            )],
        ),
    )
    .await;
    assert_eq!(answer.rows(), json!([[0.0], [1.0], ["NaN"]]));

    // The same by POST form body, as Grafana sends.
    let body = format!("query={}&format=csv", encode(BY_JOB));
    let request = Request::post("/api/v1/sql")
        .header("X-Scope-OrgID", "a")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    let answer = send(&router, request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type, "text/csv; charset=utf-8");
    assert_eq!(
        String::from_utf8(answer.body).unwrap(),
        format!(
            "labels,n,last\n\"{{\"\"__name__\"\":\"\"up\"\",\"\"job\"\":\"\"api\"\"}}\",2,{}\n\
             \"{{\"\"__name__\"\":\"\"up\"\",\"\"job\"\":\"\"db\"\"}}\",1,{T0}\n",
            T0 + 15_000
        )
    );

    // Arrow IPC keeps the types.
    let answer = send(
        &router,
        get(Some("a"), &[("query", BY_JOB), ("format", "arrow")]),
    )
    .await;
    assert_eq!(answer.content_type, "application/vnd.apache.arrow.stream");
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(
        std::io::Cursor::new(answer.body),
        None,
    )
    .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(
        text.contains(r#"| {"__name__":"up","job":"db"}  | 1 | 1700000000000 |"#),
        "{text}"
    );

    // Another tenant sees its own data only; no header means the default tenant.
    let count = "SELECT count(*) AS n FROM samples";
    let answer = send(&router, get(Some("b"), &[("query", count)])).await;
    assert_eq!(answer.rows(), json!([[1]]));
    let answer = send(&router, get(None, &[("query", count)])).await;
    assert_eq!(answer.rows(), json!([[0]]));

    // An empty result still has its columns, and CSV its header.
    let answer = send(
        &router,
        get(
            Some("a"),
            &[
                (
                    "query",
                    "SELECT timestamp_ms FROM samples WHERE timestamp_ms < 0",
                ),
                ("format", "csv"),
            ],
        ),
    )
    .await;
    assert_eq!(String::from_utf8(answer.body).unwrap(), "timestamp_ms\n");
}

/// A request's parameters.
type Params<'a> = &'a [(&'a str, &'a str)];

#[tokio::test]
async fn bad_requests_get_prometheus_errors_that_name_the_problem() {
    let dir = TempDir::new().unwrap();
    let store = store_with_data(&dir).await;
    let router = router(
        store.clone(),
        AuthConfig::default(),
        QueryConfig {
            max_rows: 2,
            ..QueryConfig::default()
        },
    );
    let cases: &[(Params, StatusCode, &str, &str)] = &[
        (
            &[],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "query parameter is missing",
        ),
        (
            &[("query", "SELEC 1")],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "SELEC",
        ),
        (
            &[("query", "SELECT * FROM nope")],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "nope",
        ),
        (
            &[("query", "DROP VIEW samples")],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "DDL not supported",
        ),
        (
            &[("query", "SET datafusion.execution.batch_size = 1")],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "Statement not supported",
        ),
        (
            &[("query", "SELECT 1"), ("format", "xml")],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "unknown format \"xml\"",
        ),
        (
            &[("query", "SELECT 1"), ("timeout", "soon")],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "invalid duration \"soon\"",
        ),
        (
            &[("query", "SELECT * FROM samples")],
            StatusCode::UNPROCESSABLE_ENTITY,
            "execution",
            "more than 2 rows (query.max_rows)",
        ),
        (
            &[
                (
                    "query",
                    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t \
                     WHERE n < 100000000) SELECT count(*) FROM t",
                ),
                ("timeout", "1ms"),
            ],
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "timed out after 0.001 s",
        ),
    ];
    for (params, status, kind, message) in cases {
        let answer = send(&router, get(Some("a"), params)).await;
        let (error_type, error) = answer.error();
        assert_eq!(
            (answer.status, error_type.as_str()),
            (*status, *kind),
            "{params:?}: {error}"
        );
        assert!(error.contains(message), "{params:?}: {error}");
    }
    // The store is unchanged by what was refused.
    let answer = send(
        &router,
        get(Some("a"), &[("query", "SELECT count(*) FROM samples")]),
    )
    .await;
    assert_eq!(answer.rows(), json!([[3]]));
    let answer = send(&router, get(Some("../x"), &[("query", "SELECT 1")])).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn with_tokens_the_token_decides_the_tenant() {
    let dir = TempDir::new().unwrap();
    let auth = AuthConfig {
        tokens: [("s3cret".to_owned(), "b".to_owned())].into(),
    };
    let router = router(store_with_data(&dir).await, auth, QueryConfig::default());
    let count = "SELECT count(*) FROM samples";
    let answer = send(&router, get(Some("a"), &[("query", count)])).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.error().1.contains("bearer token"));
    let mut request = get(Some("a"), &[("query", count)]);
    request
        .headers_mut()
        .insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
    // The header asks for `a`; the token says `b`.
    assert_eq!(send(&router, request).await.rows(), json!([[1]]));
}
