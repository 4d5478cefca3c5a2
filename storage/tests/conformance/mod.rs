//! The storage conformance suite: what every engine behind [`Storage`] must do, checked the
//! same way for each (`embedded_conformance.rs`, `clickhouse.rs` run it).
//!
//! An engine comes as an [`Engine`]: a way to open (and reopen, over the same data) its
//! store, and to count the rows of a row table the way its own query path reads them (the
//! trait has no read for spans, logs and events, so each engine answers that with its SQL).
//!
//! Reads are checked after a flush: that is when every engine must show the data (the
//! embedded store also shows it before; ClickHouse rows wait in a buffer until a flush or
//! a full batch).

#![allow(dead_code)] // each test file uses the checks it runs
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::util::display::array_value_to_string;
use model::{Labels, MetricBatch, MetricMetadata, MetricType, Payload, Sample, Series, TenantId};
use storage::{BusPosition, DurableOffsets, MatchOp, Matcher, Storage};

/// Retention every engine is opened with.
pub const RETENTION_DAYS: i64 = 2;
pub const DAY: i64 = 86_400_000;
/// 2023-11-14T22:13:20Z: less than two hours before the end of a UTC day.
pub const T0: i64 = 1_700_000_000_000;

/// An engine under test.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Opens the store over this engine's data (the same data every call: a second call is
    /// a restart), with a retention of [`RETENTION_DAYS`] days.
    async fn open(&self) -> Arc<dyn Storage>;

    /// Rows of `tenant` in `table` (`spans`, `logs`, `events`) in the store opened last,
    /// counted as the engine's queries read them.
    async fn row_count(&self, tenant: &TenantId, table: &str) -> u64;

    /// Runs the background maintenance that folds rewritten records together, as if every
    /// day written so far were over (the embedded store's compaction; ClickHouse's reads
    /// already collapse them).
    async fn settle(&self);
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

pub fn at(topic: &str, partition: u32, offset: u64) -> BusPosition {
    BusPosition {
        topic: topic.into(),
        partition,
        offset,
    }
}

fn metrics_at(offset: u64) -> BusPosition {
    at("metrics", 0, offset)
}

/// Label pairs and `(timestamp, value)` samples of one series.
pub type SeriesSpec<'a> = (&'a [(&'a str, &'a str)], &'a [(i64, f64)]);

/// A metric batch.
pub fn metrics(series: &[SeriesSpec]) -> Payload {
    Payload::Metrics(MetricBatch {
        series: series
            .iter()
            .map(|(labels, samples)| {
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
            })
            .collect(),
        metadata: vec![],
    })
}

/// Every series of `tenant` as `(labels, samples)`, over all time.
pub async fn everything(store: &dyn Storage, tenant_name: &str) -> Vec<(String, Vec<(i64, f64)>)> {
    select(store, tenant_name, &[], i64::MIN, i64::MAX).await
}

pub async fn select(
    store: &dyn Storage,
    tenant_name: &str,
    matchers: &[Matcher],
    start_ms: i64,
    end_ms: i64,
) -> Vec<(String, Vec<(i64, f64)>)> {
    store
        .select(&tenant(tenant_name), matchers, start_ms, end_ms)
        .await
        .unwrap()
        .into_iter()
        .map(|s| {
            (
                s.labels.to_string(),
                s.samples
                    .iter()
                    .map(|x| (x.timestamp_ms, x.value))
                    .collect(),
            )
        })
        .collect()
}

fn matcher(name: &str, op: MatchOp, value: &str) -> Matcher {
    Matcher::new(name, op, value).unwrap()
}

pub fn span(trace: u8, id: u8, start_ns: u64, name: &str) -> model::Span {
    model::Span {
        trace_id: model::TraceId([trace; 16]),
        span_id: model::SpanId([id; 8]),
        trace_state: String::new(),
        parent_span_id: None,
        flags: 0,
        name: name.to_owned(),
        kind: model::SpanKind::Server,
        start_time_unix_nano: start_ns,
        end_time_unix_nano: start_ns + 1_000_000,
        attributes: vec![model::KeyValue::new(
            "http.status_code",
            model::AnyValue::Int(500),
        )],
        dropped_attributes_count: 0,
        events: vec![],
        dropped_events_count: 0,
        links: vec![],
        dropped_links_count: 0,
        status: model::SpanStatus::default(),
    }
}

pub fn spans(list: Vec<model::Span>) -> Payload {
    spans_of("checkout", list)
}

/// Spans of the service `service`.
pub fn spans_of(service: &str, list: Vec<model::Span>) -> Payload {
    Payload::Spans(model::SpanBatch {
        resource_spans: vec![model::ResourceSpans {
            resource: model::Resource {
                attributes: vec![model::KeyValue::string("service.name", service)],
                dropped_attributes_count: 0,
            },
            schema_url: String::new(),
            scope_spans: vec![model::ScopeSpans {
                scope: model::InstrumentationScope::default(),
                schema_url: String::new(),
                spans: list,
            }],
        }],
    })
}

/// A log record of `severity_number` at `time_ns`.
pub fn log_record(body: &str, severity_number: i32, time_ns: u64) -> model::LogRecord {
    model::LogRecord {
        time_unix_nano: time_ns,
        observed_time_unix_nano: time_ns,
        body: model::AnyValue::String(body.into()),
        severity_number,
        severity_text: if severity_number >= 17 {
            "ERROR"
        } else {
            "INFO"
        }
        .into(),
        ..model::LogRecord::default()
    }
}

/// These log records, of the service `checkout`.
pub fn log_batch(records: Vec<model::LogRecord>) -> Payload {
    Payload::Logs(model::LogBatch {
        resource_logs: vec![model::ResourceLogs {
            resource: model::Resource {
                attributes: vec![model::KeyValue::string("service.name", "checkout")],
                dropped_attributes_count: 0,
            },
            schema_url: String::new(),
            scope_logs: vec![model::ScopeLogs {
                scope: model::InstrumentationScope::default(),
                schema_url: String::new(),
                log_records: records,
            }],
        }],
    })
}

/// Log records with these bodies, at `time_ns`.
pub fn logs(bodies: &[&str], time_ns: u64) -> Payload {
    Payload::Logs(model::LogBatch {
        resource_logs: vec![model::ResourceLogs {
            resource: model::Resource::default(),
            schema_url: String::new(),
            scope_logs: vec![model::ScopeLogs {
                scope: model::InstrumentationScope::default(),
                schema_url: String::new(),
                log_records: bodies
                    .iter()
                    .map(|body| model::LogRecord {
                        time_unix_nano: time_ns,
                        body: model::AnyValue::String((*body).into()),
                        severity_text: "ERROR".into(),
                        ..model::LogRecord::default()
                    })
                    .collect(),
            }],
        }],
    })
}

/// Deploy events, one per version, at `timestamp_ms`.
pub fn events(versions: &[&str], timestamp_ms: i64) -> Payload {
    Payload::Events(
        versions
            .iter()
            .map(|version| model::PlatformEvent {
                timestamp_ms,
                source: "pipeline-core".into(),
                attributes: vec![],
                kind: model::EventKind::Deploy(model::DeployEvent {
                    service: "checkout".into(),
                    version: (*version).into(),
                    environment: "prod".into(),
                    cluster: "eu".into(),
                    namespace: "shop".into(),
                    phase: model::DeployPhase::Succeeded,
                    actor: "ci".into(),
                    message: String::new(),
                }),
            })
            .collect(),
    )
}

const HTTP: &str = "http_requests_total";

/// Series for the matcher checks: (job, instance, code, extra label).
const SERIES: [(&str, &str, &str, (&str, &str)); 6] = [
    ("api", "a:1", "200", ("path", "/")),
    ("api", "a:2", "500", ("path", "/café")),
    ("db", "d:1", "", ("msg", "a\nb")),
    ("cache", "c:1", "200", ("path", "/x")),
    ("apiserver", "k:1", "404", ("path", "/api")),
    ("", "n:1", "", ("path", "/orphan")),
];

async fn write_matcher_series(store: &dyn Storage, tenant_name: &str) {
    let mut written = 0;
    for (i, (job, instance, code, extra)) in SERIES.iter().enumerate() {
        let labels = [
            ("__name__", HTTP),
            ("job", *job),
            ("instance", *instance),
            ("code", *code),
            *extra,
        ];
        let value = i as f64;
        let summary = store
            .write(
                &tenant(tenant_name),
                metrics(&[(&labels, &[(T0, value), (T0 + 15_000, value + 0.5)])]),
                &metrics_at(i as u64),
            )
            .await
            .unwrap();
        assert_eq!(summary.accepted, 2);
        written += 2;
    }
    assert_eq!(written, 12);
}

/// The instances of the series selected by `matchers`.
async fn instances(store: &dyn Storage, matchers: &[Matcher]) -> Vec<String> {
    let mut out: Vec<String> = store
        .select(&tenant("a"), matchers, i64::MIN, i64::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.labels.get("instance").unwrap_or_default().to_owned())
        .collect();
    out.sort();
    out
}

/// `select` with every matcher type and Prometheus's rules: anchored regexes, an absent
/// label matches as the empty string, regexes mean what Prometheus means (Unicode classes,
/// `.` matching a newline and any code point), time ranges are inclusive, and series
/// without samples in the range are left out.
pub async fn select_with_every_matcher(engine: &dyn Engine) {
    use MatchOp::*;
    let store = engine.open().await;
    write_matcher_series(store.as_ref(), "a").await;
    store.flush().await.unwrap();

    let cases: Vec<(Vec<Matcher>, Vec<&str>)> = vec![
        (vec![Matcher::equal("job", "api")], vec!["a:1", "a:2"]),
        (
            vec![matcher("job", Regex, "api|db")],
            vec!["a:1", "a:2", "d:1"],
        ),
        (vec![matcher("job", Regex, "ap")], vec![]),
        (
            vec![matcher("job", Regex, "api.*")],
            vec!["a:1", "a:2", "k:1"],
        ),
        (
            vec![matcher("job", NotEqual, "api")],
            vec!["c:1", "d:1", "k:1", "n:1"],
        ),
        (
            vec![matcher("job", NotRegex, "a.*")],
            vec!["c:1", "d:1", "n:1"],
        ),
        (vec![Matcher::equal("job", "")], vec!["n:1"]),
        (vec![Matcher::equal("code", "")], vec!["d:1", "n:1"]),
        (
            vec![matcher("code", NotEqual, "")],
            vec!["a:1", "a:2", "c:1", "k:1"],
        ),
        (
            vec![matcher("code", Regex, "2.*|")],
            vec!["a:1", "c:1", "d:1", "n:1"],
        ),
        (
            vec![Matcher::equal("job", "api"), Matcher::equal("code", "500")],
            vec!["a:2"],
        ),
        (vec![Matcher::equal("missing", "x")], vec![]),
        (
            vec![matcher("missing", NotEqual, "x")],
            vec!["a:1", "a:2", "c:1", "d:1", "k:1", "n:1"],
        ),
        (
            vec![matcher("__name__", Regex, ".+")],
            vec!["a:1", "a:2", "c:1", "d:1", "k:1", "n:1"],
        ),
        (vec![Matcher::equal("__name__", "up")], vec![]),
        (vec![matcher("__name__", NotEqual, HTTP)], vec![]),
        (vec![matcher("job", Regex, "(?i)API")], vec!["a:1", "a:2"]),
        (
            vec![matcher("instance", Regex, r"a:\d")],
            vec!["a:1", "a:2"],
        ),
        (vec![matcher("path", Regex, "/caf.")], vec!["a:2"]),
        (vec![matcher("msg", Regex, "a.b")], vec!["d:1"]),
        (vec![matcher("job", Regex, r"\bapi\b")], vec!["a:1", "a:2"]),
        (
            vec![
                matcher("job", NotRegex, r"\bapi\b"),
                matcher("code", Regex, ".+"),
            ],
            vec!["c:1", "k:1"],
        ),
        (
            vec![
                matcher("path", Regex, "/(api|x)"),
                matcher("job", NotEqual, ""),
            ],
            vec!["c:1", "k:1"],
        ),
    ];
    for (matchers, expected) in cases {
        assert_eq!(
            instances(store.as_ref(), &matchers).await,
            expected,
            "matchers {}",
            matchers
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let api = [Matcher::equal("job", "api")];
    let all = select(store.as_ref(), "a", &api, i64::MIN, i64::MAX).await;
    assert_eq!(
        all,
        [
            (
                r#"http_requests_total{code="200", instance="a:1", job="api", path="/"}"#
                    .to_owned(),
                vec![(T0, 0.0), (T0 + 15_000, 0.5)]
            ),
            (
                r#"http_requests_total{code="500", instance="a:2", job="api", path="/café"}"#
                    .to_owned(),
                vec![(T0, 1.0), (T0 + 15_000, 1.5)]
            ),
        ],
        "sorted by labels, samples by time"
    );
    assert_eq!(
        select(store.as_ref(), "a", &api, T0 + 15_000, T0 + 15_000).await[1].1,
        vec![(T0 + 15_000, 1.5)],
        "both ends of the range are inclusive"
    );
    assert_eq!(
        select(store.as_ref(), "a", &api, T0, T0 + 14_999)
            .await
            .len(),
        2
    );
    assert!(
        select(store.as_ref(), "a", &api, T0 + 1, T0 + 14_999)
            .await
            .is_empty(),
        "series without samples in the range are left out"
    );
}

/// Label names and values, of all series or of those matching.
pub async fn label_names_and_values(engine: &dyn Engine) {
    let store = engine.open().await;
    write_matcher_series(store.as_ref(), "a").await;
    store.flush().await.unwrap();
    let a = tenant("a");
    assert_eq!(
        store.label_names(&a, &[]).await.unwrap(),
        ["__name__", "code", "instance", "job", "msg", "path"]
    );
    assert_eq!(
        store
            .label_names(&a, &[Matcher::equal("job", "db")])
            .await
            .unwrap(),
        ["__name__", "instance", "job", "msg"]
    );
    assert_eq!(
        store
            .label_names(&a, &[matcher("job", MatchOp::Regex, r"\bapi\b")])
            .await
            .unwrap(),
        ["__name__", "code", "instance", "job", "path"],
        "a matcher only the engine itself can check"
    );
    assert_eq!(
        store.label_values(&a, "job", &[]).await.unwrap(),
        ["api", "apiserver", "cache", "db"],
        "an absent label has no value"
    );
    assert_eq!(
        store
            .label_values(&a, "code", &[matcher("job", MatchOp::Regex, "api.*")])
            .await
            .unwrap(),
        ["200", "404", "500"]
    );
    assert_eq!(
        store
            .label_values(&a, "instance", &[Matcher::equal("code", "")])
            .await
            .unwrap(),
        ["d:1", "n:1"]
    );
    assert_eq!(
        store
            .label_values(&a, "path", &[matcher("job", MatchOp::NotRegex, r"\bapi\b")])
            .await
            .unwrap(),
        ["/api", "/orphan", "/x"]
    );
    assert!(
        store
            .label_values(&a, "nope", &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .label_names(&tenant("nobody"), &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .label_values(&tenant("nobody"), "job", &[])
            .await
            .unwrap()
            .is_empty()
    );
}

/// `series`: label sets by matchers, every series without a range, and with one only the
/// series with samples inside it (inclusive).
pub async fn series_listing(engine: &dyn Engine) {
    let store = engine.open().await;
    write_matcher_series(store.as_ref(), "a").await;
    let a = tenant("a");
    let late = [("__name__", HTTP), ("job", "late"), ("instance", "l:1")];
    store
        .write(
            &a,
            metrics(&[(&late, &[(T0 + 3_600_000, 1.0)])]),
            &metrics_at(100),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    {
        let instances_of = |labels: Vec<Labels>| -> Vec<String> {
            labels
                .iter()
                .map(|l| l.get("instance").unwrap_or_default().to_owned())
                .collect()
        };
        let api = [matcher("job", MatchOp::Regex, "api|late")];
        assert_eq!(
            instances_of(store.series(&a, &api, None).await.unwrap()),
            ["a:1", "a:2", "l:1"],
            "every series, sorted by labels"
        );
        assert_eq!(store.series_count(&a, &api).await.unwrap(), 3);
        assert_eq!(
            store.series_count(&tenant("nobody"), &api).await.unwrap(),
            0
        );
        assert_eq!(
            instances_of(store.series(&a, &api, Some((T0, T0))).await.unwrap()),
            ["a:1", "a:2"],
            "only series with samples in the range"
        );
        assert_eq!(
            instances_of(
                store
                    .series(&a, &api, Some((T0 + 15_001, T0 + 3_600_000)))
                    .await
                    .unwrap()
            ),
            ["l:1"],
            "the range is inclusive at its end"
        );
        let all = store.series(&a, &[], None).await.unwrap();
        assert_eq!(all.len(), SERIES.len() + 1);
        assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
        assert!(
            store
                .series(&tenant("b"), &api, None)
                .await
                .unwrap()
                .is_empty(),
            "another tenant sees nothing"
        );
    }
}

/// Writing the same metric record again — before a flush, after it, after a restart —
/// changes nothing; a later write of the same series and timestamp wins.
pub async fn metric_rewrites_count_once(engine: &dyn Engine) {
    let series: &[(&str, &str)] = &[("__name__", "m"), ("pod", "p1")];
    let record = || metrics(&[(series, &[(T0, 1.0), (T0 + 15_000, 2.0)])]);
    let expected = vec![(
        "m{pod=\"p1\"}".to_owned(),
        vec![(T0, 1.0), (T0 + 15_000, 2.0)],
    )];
    let store = engine.open().await;
    let a = tenant("a");
    store.write(&a, record(), &metrics_at(0)).await.unwrap();
    store.write(&a, record(), &metrics_at(0)).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(everything(store.as_ref(), "a").await, expected);
    store.write(&a, record(), &metrics_at(0)).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(everything(store.as_ref(), "a").await, expected);
    store.close().await.unwrap();
    drop(store);

    let store = engine.open().await;
    store.write(&a, record(), &metrics_at(0)).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(everything(store.as_ref(), "a").await, expected);
    assert_eq!(
        store.label_values(&a, "pod", &[]).await.unwrap(),
        ["p1"],
        "one series"
    );

    // The same sample written later with another value: the later write wins.
    store
        .write(&a, metrics(&[(series, &[(T0, 9.0)])]), &metrics_at(1))
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        everything(store.as_ref(), "a").await[0].1,
        vec![(T0, 9.0), (T0 + 15_000, 2.0)]
    );
    // Within one record the last sample of a timestamp wins too.
    store
        .write(
            &a,
            metrics(&[(series, &[(T0, 10.0), (T0, 11.0)])]),
            &metrics_at(2),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        everything(store.as_ref(), "a").await[0].1,
        vec![(T0, 11.0), (T0 + 15_000, 2.0)]
    );
    store.close().await.unwrap();
}

/// Two spans (of trace `offset + 1`), three log records and an event, each at bus
/// position `offset` of its topic.
async fn write_rows(store: &dyn Storage, tenant_name: &str, start_ns: u64, offset: u64) {
    let t = tenant(tenant_name);
    let trace = offset as u8 + 1;
    let summary = store
        .write(
            &t,
            spans(vec![
                span(trace, 1, start_ns, "GET /"),
                span(trace, 2, start_ns, "db"),
            ]),
            &at("spans", 0, offset),
        )
        .await
        .unwrap();
    assert_eq!(summary.accepted, 2);
    let summary = store
        .write(
            &t,
            logs(&["disk full", "disk still full", "ok"], start_ns),
            &at("logs", 0, offset),
        )
        .await
        .unwrap();
    assert_eq!(summary.accepted, 3);
    let summary = store
        .write(
            &t,
            events(&["1.2.3"], (start_ns / 1_000_000) as i64),
            &at("events", 0, offset),
        )
        .await
        .unwrap();
    assert_eq!(summary.accepted, 1);
}

async fn row_counts(engine: &dyn Engine, tenant_name: &str) -> [u64; 3] {
    let t = tenant(tenant_name);
    [
        engine.row_count(&t, "spans").await,
        engine.row_count(&t, "logs").await,
        engine.row_count(&t, "events").await,
    ]
}

/// Spans (keyed by trace and span id), log records and events (keyed by bus position)
/// written again — before a flush, after it, after a restart — are stored once.
pub async fn row_rewrites_count_once(engine: &dyn Engine) {
    let start = (T0 as u64) * 1_000_000;
    let store = engine.open().await;
    write_rows(store.as_ref(), "a", start, 0).await;
    write_rows(store.as_ref(), "a", start, 0).await;
    store.flush().await.unwrap();
    assert_eq!(
        row_counts(engine, "a").await,
        [2, 3, 1],
        "written twice before a flush"
    );
    write_rows(store.as_ref(), "a", start, 0).await;
    store.flush().await.unwrap();
    assert_eq!(
        row_counts(engine, "a").await,
        [2, 3, 1],
        "written again after a flush"
    );
    store.close().await.unwrap();
    drop(store);
    let store = engine.open().await;
    write_rows(store.as_ref(), "a", start, 0).await;
    store.flush().await.unwrap();
    assert_eq!(
        row_counts(engine, "a").await,
        [2, 3, 1],
        "written again after a restart"
    );
    // Log records and events with the same content at another bus position are other
    // records (and these spans are of another trace).
    write_rows(store.as_ref(), "a", start, 1).await;
    store.flush().await.unwrap();
    assert_eq!(row_counts(engine, "a").await, [4, 6, 2]);
    // A span sent again with changes (a later version of it, at another bus position)
    // replaces the stored one once the engine has folded the versions together.
    store
        .write(
            &tenant("a"),
            spans(vec![span(1, 1, start, "GET / (renamed)")]),
            &at("spans", 0, 9),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    engine.settle().await;
    assert_eq!(row_counts(engine, "a").await, [4, 6, 2]);
    store.close().await.unwrap();
}

fn offsets(entries: &[(&str, u32, u64)]) -> DurableOffsets {
    entries
        .iter()
        .map(|(topic, partition, next)| (((*topic).to_owned(), *partition), *next))
        .collect::<BTreeMap<_, _>>()
}

/// A flush returns, per bus partition, the next offset after everything written, and
/// `durable_offsets` says the same, also after a restart; offsets never go back.
pub async fn flush_returns_durable_offsets(engine: &dyn Engine) {
    let store = engine.open().await;
    assert!(store.durable_offsets().await.unwrap().is_empty());
    let a = tenant("a");
    let series: &[(&str, &str)] = &[("__name__", "m")];
    store
        .write(&a, metrics(&[(series, &[(T0, 1.0)])]), &at("metrics", 0, 5))
        .await
        .unwrap();
    store
        .write(
            &a,
            metrics(&[(series, &[(T0 + 1, 1.0)])]),
            &at("metrics", 1, 2),
        )
        .await
        .unwrap();
    // A record with nothing in it still moves its partition's offset.
    store
        .write(&a, metrics(&[]), &at("metrics", 2, 9))
        .await
        .unwrap();
    let start = (T0 as u64) * 1_000_000;
    store
        .write(&a, spans(vec![span(7, 1, start, "x")]), &at("spans", 0, 0))
        .await
        .unwrap();
    store
        .write(&a, logs(&["hello"], start), &at("logs", 2, 7))
        .await
        .unwrap();
    store
        .write(&a, events(&["1"], T0), &at("events", 0, 3))
        .await
        .unwrap();
    let expected = offsets(&[
        ("events", 0, 4),
        ("logs", 2, 8),
        ("metrics", 0, 6),
        ("metrics", 1, 3),
        ("metrics", 2, 10),
        ("spans", 0, 1),
    ]);
    assert_eq!(store.flush().await.unwrap(), expected);
    assert_eq!(store.durable_offsets().await.unwrap(), expected);
    // A replayed older record does not move an offset back.
    store
        .write(&a, metrics(&[(series, &[(T0, 1.0)])]), &at("metrics", 0, 3))
        .await
        .unwrap();
    assert_eq!(store.flush().await.unwrap(), expected);
    assert_eq!(store.flush().await.unwrap(), expected, "an empty flush");
    store.close().await.unwrap();
    drop(store);
    let store = engine.open().await;
    assert_eq!(store.durable_offsets().await.unwrap(), expected);
    store
        .write(
            &a,
            metrics(&[(series, &[(T0 + 2, 1.0)])]),
            &at("metrics", 0, 6),
        )
        .await
        .unwrap();
    let mut later = expected.clone();
    later.insert(("metrics".to_owned(), 0), 7);
    assert_eq!(store.flush().await.unwrap(), later);
    store.close().await.unwrap();
}

/// What a flush made durable survives a crash (the store dropped without closing); what
/// came after is not promised, and the durable offsets say where to replay from. Replaying
/// restores everything, once.
pub async fn durable_across_restart(engine: &dyn Engine) {
    let a = tenant("a");
    let series: &[(&str, &str)] = &[("__name__", "m"), ("job", "api")];
    let start = (T0 as u64) * 1_000_000;
    let store = engine.open().await;
    store
        .write(&a, metrics(&[(series, &[(T0, 1.0)])]), &metrics_at(0))
        .await
        .unwrap();
    write_rows(store.as_ref(), "a", start, 0).await;
    let flushed = store.flush().await.unwrap();
    store
        .write(&a, metrics(&[(series, &[(T0 + 1, 2.0)])]), &metrics_at(1))
        .await
        .unwrap();
    drop(store); // a crash: no flush, no close

    let store = engine.open().await;
    assert_eq!(store.durable_offsets().await.unwrap(), flushed);
    assert_eq!(
        flushed.get(&("metrics".to_owned(), 0)),
        Some(&1),
        "replay from offset 1"
    );
    let samples = &everything(store.as_ref(), "a").await[0].1;
    assert_eq!(samples[0], (T0, 1.0), "the flushed sample survived");
    assert_eq!(row_counts(engine, "a").await, [2, 3, 1]);
    // Ingest replays from the durable offsets (and may repeat a record before them).
    store
        .write(&a, metrics(&[(series, &[(T0, 1.0)])]), &metrics_at(0))
        .await
        .unwrap();
    store
        .write(&a, metrics(&[(series, &[(T0 + 1, 2.0)])]), &metrics_at(1))
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = engine.open().await;
    assert_eq!(
        everything(store.as_ref(), "a").await,
        [("m{job=\"api\"}".to_owned(), vec![(T0, 1.0), (T0 + 1, 2.0)])]
    );
    assert_eq!(
        store
            .durable_offsets()
            .await
            .unwrap()
            .get(&("metrics".to_owned(), 0)),
        Some(&2)
    );
    assert_eq!(row_counts(engine, "a").await, [2, 3, 1]);
}

/// A remote-write body as the gateway puts it on the bus: protobuf `WriteRequest`
/// (encoded here by hand, independently of any reader), snappy-compressed.
pub fn remote_write(series: &[SeriesSpec]) -> Payload {
    remote_write_with_metadata(series, &[])
}

/// [`remote_write`] with metadata entries: (family, type number as remote-write numbers
/// them, help).
pub fn remote_write_with_metadata(
    series: &[SeriesSpec],
    metadata: &[(&str, u64, &str)],
) -> Payload {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn bytes(field: u64, data: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }
    let mut request = Vec::new();
    let mut samples = 0;
    for (labels, points) in series {
        let mut body = Vec::new();
        for (name, value) in labels.iter() {
            let mut label = Vec::new();
            bytes(1, name.as_bytes(), &mut label);
            bytes(2, value.as_bytes(), &mut label);
            bytes(1, &label, &mut body);
        }
        for (timestamp, value) in points.iter() {
            let mut sample = Vec::new();
            varint(1 << 3 | 1, &mut sample);
            sample.extend_from_slice(&value.to_bits().to_le_bytes());
            varint(2 << 3, &mut sample);
            varint(*timestamp as u64, &mut sample);
            bytes(2, &sample, &mut body);
            samples += 1;
        }
        bytes(1, &body, &mut request);
    }
    for (family, kind, help) in metadata {
        let mut entry = Vec::new();
        varint(1 << 3, &mut entry);
        varint(*kind, &mut entry);
        bytes(2, family.as_bytes(), &mut entry);
        bytes(4, help.as_bytes(), &mut entry);
        bytes(3, &entry, &mut request);
    }
    Payload::RemoteWrite(model::RemoteWriteBody {
        snappy: snap::raw::Encoder::new().compress_vec(&request).unwrap(),
        samples,
        affinity: 0,
    })
}

/// Metric metadata from metric batches and from remote-write bodies: each distinct entry
/// once, per tenant, kept across a restart.
pub async fn metadata_is_kept(engine: &dyn Engine) {
    let a = tenant("a");
    let entry = |name: &str, metric_type, help: &str| MetricMetadata {
        metric_family_name: name.to_owned(),
        metric_type,
        help: help.to_owned(),
        unit: String::new(),
    };
    let store = engine.open().await;
    let batch = MetricBatch {
        series: vec![],
        metadata: vec![entry(
            "http_requests_total",
            MetricType::Counter,
            "Requests.",
        )],
    };
    store
        .write(&a, Payload::Metrics(batch.clone()), &metrics_at(0))
        .await
        .unwrap();
    let up: &[(&str, &str)] = &[("__name__", "up"), ("job", "api")];
    // Remote-write numbers types: 1 counter, 2 gauge.
    for (offset, body) in [
        remote_write_with_metadata(&[(up, &[(T0, 1.0)])], &[("up", 2, "Up.")]),
        remote_write_with_metadata(
            &[],
            &[("up", 2, "Up."), ("http_requests_total", 1, "Requests.")],
        ),
        remote_write_with_metadata(&[], &[("http_requests_total", 1, "Requests served.")]),
    ]
    .into_iter()
    .enumerate()
    {
        store
            .write(&a, body, &metrics_at(offset as u64 + 1))
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    let expected = vec![
        entry(
            "http_requests_total",
            MetricType::Counter,
            "Requests served.",
        ),
        entry("http_requests_total", MetricType::Counter, "Requests."),
        entry("up", MetricType::Gauge, "Up."),
    ];
    let sorted = |mut entries: Vec<MetricMetadata>| {
        entries.sort_by(|x, y| {
            (&x.metric_family_name, &x.help).cmp(&(&y.metric_family_name, &y.help))
        });
        entries
    };
    assert_eq!(sorted(store.metadata(&a).await.unwrap()), expected);
    assert!(store.metadata(&tenant("b")).await.unwrap().is_empty());
    drop(store);
    let store = engine.open().await;
    assert_eq!(
        sorted(store.metadata(&a).await.unwrap()),
        expected,
        "after a restart"
    );
}

/// Exemplars of metric batches: one row per series and timestamp (a resent batch is
/// stored once), with the series' labels, the exemplar's labels and its trace id, readable
/// through SQL and kept across a restart; another tenant's are not visible.
pub async fn exemplars_are_kept(engine: &dyn Engine) {
    let a = tenant("a");
    let exemplar = |trace: &str, value: f64, timestamp_ms: i64| model::Exemplar {
        labels: Labels::new([("trace_id", trace)]).unwrap(),
        value,
        timestamp_ms,
    };
    let mut fast = Series::with_samples(
        Labels::new([("__name__", "latency_bucket"), ("le", "0.1")]).unwrap(),
        vec![Sample {
            timestamp_ms: T0,
            value: 4.0,
        }],
    );
    fast.exemplars = vec![
        exemplar("aa01", 0.05, T0),
        exemplar("aa02", 0.07, T0 + 15_000),
    ];
    let mut slow = Series::with_samples(
        Labels::new([("__name__", "latency_bucket"), ("le", "+Inf")]).unwrap(),
        vec![Sample {
            timestamp_ms: T0,
            value: 5.0,
        }],
    );
    slow.exemplars = vec![exemplar("bb01", 2.5, T0)];
    let batch = MetricBatch {
        series: vec![fast, slow],
        metadata: vec![],
    };
    let store = engine.open().await;
    for offset in [0, 1] {
        store
            .write(&a, Payload::Metrics(batch.clone()), &metrics_at(offset))
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    engine.settle().await;
    let query = "SELECT metric_name, series_labels, value, labels, trace_id, \
                 CAST(timestamp AS BIGINT) - 1700000000000 FROM exemplars \
                 ORDER BY timestamp, series_labels";
    let expected = [
        r#"latency_bucket,{"__name__":"latency_bucket","le":"+Inf"},2.5,{"trace_id":"bb01"},bb01,0"#,
        r#"latency_bucket,{"__name__":"latency_bucket","le":"0.1"},0.05,{"trace_id":"aa01"},aa01,0"#,
        r#"latency_bucket,{"__name__":"latency_bucket","le":"0.1"},0.07,{"trace_id":"aa02"},aa02,15000"#,
    ];
    assert_eq!(sql(store.as_ref(), "a", query).await, expected);
    assert_eq!(engine.row_count(&a, "exemplars").await, 3);
    assert_eq!(engine.row_count(&tenant("b"), "exemplars").await, 0);
    drop(store);
    let store = engine.open().await;
    assert_eq!(
        sql(store.as_ref(), "a", query).await,
        expected,
        "after a restart"
    );
}

/// An integer native histogram at `t`: `n` observations in the zero bucket and bucket
/// spans `[-1, 0]` and `[3]` (schema 1).
fn native_histogram(t: i64, n: u64) -> model::NativeHistogram {
    model::NativeHistogram {
        timestamp_ms: t,
        schema: 1,
        zero_threshold: 0.001,
        sum: n as f64 * 1.5,
        reset_hint: model::ResetHint::No,
        counts: model::HistogramCounts::Integer {
            count: 4 * n,
            zero_count: n,
            positive_deltas: vec![n as i64, n as i64, -(n as i64)],
            negative_deltas: vec![],
        },
        positive_spans: vec![
            model::BucketSpan {
                offset: -1,
                length: 2,
            },
            model::BucketSpan {
                offset: 2,
                length: 1,
            },
        ],
        negative_spans: vec![],
    }
}

/// A float native histogram at `t` with a negative bucket and a stale-marker sum.
fn float_histogram(t: i64, count: f64) -> model::NativeHistogram {
    model::NativeHistogram {
        timestamp_ms: t,
        schema: -1,
        zero_threshold: 0.0,
        sum: model::stale_nan(),
        reset_hint: model::ResetHint::Gauge,
        counts: model::HistogramCounts::Float {
            count,
            zero_count: 0.0,
            positive_counts: vec![count / 2.0],
            negative_counts: vec![count / 4.0, count / 4.0],
        },
        positive_spans: vec![model::BucketSpan {
            offset: 2,
            length: 1,
        }],
        negative_spans: vec![model::BucketSpan {
            offset: 0,
            length: 2,
        }],
    }
}

/// The histogram samples of each series of `tenant` selected by `matchers`.
async fn histograms_of(
    store: &dyn Storage,
    tenant_name: &str,
    matchers: &[Matcher],
    start_ms: i64,
    end_ms: i64,
) -> Vec<(String, Vec<(i64, model::FloatHistogram)>)> {
    store
        .select(&tenant(tenant_name), matchers, start_ms, end_ms)
        .await
        .unwrap()
        .into_iter()
        .map(|s| {
            (
                s.labels.to_string(),
                s.histograms
                    .into_iter()
                    .map(|h| (h.timestamp_ms, h.histogram))
                    .collect(),
            )
        })
        .collect()
}

/// Native histogram samples are kept exactly (integer and float counts, every bucket, a
/// stale sum bit for bit), beside float samples of the same series; a rewrite of one
/// timestamp keeps the latest, a replayed record counts once, reads select by matchers and
/// time, SQL shows them in `histograms`, and all of it survives a restart.
pub async fn histograms_are_kept(engine: &dyn Engine) {
    let a = tenant("a");
    let latency = Labels::new([("__name__", "latency_seconds"), ("job", "api")]).unwrap();
    let sizes = Labels::new([("__name__", "sizes"), ("job", "db")]).unwrap();
    let batch = |histograms: Vec<(Labels, Vec<model::NativeHistogram>, Vec<Sample>)>| {
        Payload::Metrics(MetricBatch {
            series: histograms
                .into_iter()
                .map(|(labels, histograms, samples)| Series {
                    labels,
                    samples,
                    histograms,
                    exemplars: vec![],
                })
                .collect(),
            metadata: vec![],
        })
    };
    let first = batch(vec![
        (
            latency.clone(),
            (0..3)
                .map(|i| native_histogram(T0 + i * 15_000, 1 + i as u64))
                .collect(),
            // A float sample between histograms: the series changed type, and back.
            vec![Sample {
                timestamp_ms: T0 + 50_000,
                value: 7.0,
            }],
        ),
        (sizes.clone(), vec![float_histogram(T0, 8.0)], vec![]),
    ]);
    // The latest write of T0 + 15 s wins.
    let rewrite = batch(vec![(
        latency.clone(),
        vec![native_histogram(T0 + 15_000, 9)],
        vec![],
    )]);
    let store = engine.open().await;
    for (offset, payload) in [(0, first.clone()), (1, first), (2, rewrite)] {
        let summary = store.write(&a, payload, &metrics_at(offset)).await.unwrap();
        assert!(summary.accepted > 0);
    }
    store.flush().await.unwrap();
    engine.settle().await;

    let float = |h: model::NativeHistogram| model::FloatHistogram::from_native(&h);
    let expected_latency: Vec<(i64, model::FloatHistogram)> = vec![
        (T0, float(native_histogram(T0, 1))),
        (T0 + 15_000, float(native_histogram(T0 + 15_000, 9))),
        (T0 + 30_000, float(native_histogram(T0 + 30_000, 3))),
    ];
    let check = |got: Vec<(String, Vec<(i64, model::FloatHistogram)>)>, when: &str| {
        assert_eq!(got.len(), 2, "{when}: {got:?}");
        assert_eq!(got[0].0, latency.to_string(), "{when}");
        assert_eq!(got[0].1, expected_latency, "{when}");
        assert_eq!(got[1].0, sizes.to_string(), "{when}");
        let (t, sizes_histogram) = &got[1].1[0];
        assert_eq!(*t, T0);
        assert_eq!(
            sizes_histogram.sum.to_bits(),
            model::STALE_NAN_BITS,
            "{when}"
        );
        assert_eq!(sizes_histogram.positive, vec![(2, 4.0)], "{when}");
        assert_eq!(sizes_histogram.negative, vec![(0, 2.0), (1, 2.0)], "{when}");
        assert_eq!(sizes_histogram.counter_reset, model::ResetHint::Gauge);
    };
    check(
        histograms_of(store.as_ref(), "a", &[], i64::MIN, i64::MAX).await,
        "after a flush",
    );
    // The float sample is there too, and only it among the float samples.
    assert_eq!(
        everything(store.as_ref(), "a").await,
        vec![
            (latency.to_string(), vec![(T0 + 50_000, 7.0)]),
            (sizes.to_string(), vec![])
        ]
    );
    // Matchers and the time range select histograms as they do samples.
    let job_api = [matcher("job", MatchOp::Equal, "api")];
    assert_eq!(
        histograms_of(store.as_ref(), "a", &job_api, T0 + 10_000, T0 + 40_000).await,
        vec![(latency.to_string(), expected_latency[1..].to_vec())]
    );
    let sizes_only = [matcher("__name__", MatchOp::Equal, "sizes")];
    assert!(
        histograms_of(store.as_ref(), "a", &sizes_only, T0 + 1, T0 + 60_000)
            .await
            .is_empty(),
        "a series without samples in the range is left out"
    );
    assert!(
        histograms_of(store.as_ref(), "b", &[], i64::MIN, i64::MAX)
            .await
            .is_empty()
    );
    assert_eq!(engine.row_count(&a, "histograms").await, 4);
    let query = "SELECT CAST(timestamp_ms AS BIGINT) - 1700000000000, schema, count,                  zero_count, counter_reset, positive_indexes, positive_counts,                  negative_indexes, negative_counts FROM histograms                  ORDER BY timestamp_ms, schema";
    let expected_sql = [
        "0,-1,8.0,0.0,gauge,[2],[4.0],[0, 1],[2.0, 2.0]",
        "0,1,4.0,1.0,no,[-1, 0, 3],[1.0, 2.0, 1.0],[],[]",
        "15000,1,36.0,9.0,no,[-1, 0, 3],[9.0, 18.0, 9.0],[],[]",
        "30000,1,12.0,3.0,no,[-1, 0, 3],[3.0, 6.0, 3.0],[],[]",
    ];
    assert_eq!(sql(store.as_ref(), "a", query).await, expected_sql);
    drop(store);
    let store = engine.open().await;
    check(
        histograms_of(store.as_ref(), "a", &[], i64::MIN, i64::MAX).await,
        "after a restart",
    );
    assert_eq!(sql(store.as_ref(), "a", query).await, expected_sql);
}

/// Remote-write bodies kept as received on the bus are stored like the same series in a
/// metric batch: one series per label set whichever way it arrived, before and after a
/// restart; a body that is not what the gateway accepted is a decode error.
pub async fn remote_write_bodies_are_stored_like_batches(engine: &dyn Engine) {
    let a = tenant("a");
    let up: &[(&str, &str)] = &[("__name__", "up"), ("job", "api")];
    let other: &[(&str, &str)] = &[("__name__", "up"), ("instance", "h:1"), ("job", "db")];
    let store = engine.open().await;
    let summary = store
        .write(
            &a,
            remote_write(&[
                (up, &[(T0, 1.0), (T0 + 15_000, 2.0)]),
                (other, &[(T0, 7.5)]),
            ]),
            &metrics_at(0),
        )
        .await
        .unwrap();
    assert_eq!(summary.accepted, 3);
    store
        .write(&a, metrics(&[(up, &[(T0 + 30_000, 3.0)])]), &metrics_at(1))
        .await
        .unwrap();
    store
        .write(
            &a,
            remote_write(&[(up, &[(T0 + 45_000, 4.0)])]),
            &metrics_at(2),
        )
        .await
        .unwrap();
    let bad = Payload::RemoteWrite(model::RemoteWriteBody {
        snappy: b"not snappy".to_vec(),
        samples: 1,
        affinity: 0,
    });
    assert!(matches!(
        store.write(&a, bad, &metrics_at(3)).await,
        Err(storage::StorageError::Decode(_))
    ));
    store.flush().await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = engine.open().await;
    store
        .write(
            &a,
            remote_write(&[(up, &[(T0 + 60_000, 5.0)])]),
            &metrics_at(4),
        )
        .await
        .unwrap();
    // Not what the gateway keeps (unsorted, an empty value), but the same series.
    let unsorted: &[(&str, &str)] = &[("job", "api"), ("env", ""), ("__name__", "up")];
    store
        .write(
            &a,
            remote_write(&[(unsorted, &[(T0 + 75_000, 6.0)])]),
            &metrics_at(5),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        everything(store.as_ref(), "a").await,
        [
            (
                "up{instance=\"h:1\", job=\"db\"}".to_owned(),
                vec![(T0, 7.5)]
            ),
            (
                "up{job=\"api\"}".to_owned(),
                vec![
                    (T0, 1.0),
                    (T0 + 15_000, 2.0),
                    (T0 + 30_000, 3.0),
                    (T0 + 45_000, 4.0),
                    (T0 + 60_000, 5.0),
                    (T0 + 75_000, 6.0)
                ]
            ),
        ]
    );
    store.close().await.unwrap();
}

/// No read of one tenant ever sees another tenant's data, even for the same series.
pub async fn tenants_never_mix(engine: &dyn Engine) {
    let store = engine.open().await;
    let shared: &[(&str, &str)] = &[("__name__", "up"), ("job", "api")];
    let only_b: &[(&str, &str)] = &[("__name__", "up"), ("job", "secret")];
    store
        .write(
            &tenant("a"),
            metrics(&[(shared, &[(T0, 1.0)])]),
            &metrics_at(0),
        )
        .await
        .unwrap();
    store
        .write(
            &tenant("b"),
            metrics(&[(shared, &[(T0, 42.0)]), (only_b, &[(T0, 7.0)])]),
            &metrics_at(1),
        )
        .await
        .unwrap();
    let start = (T0 as u64) * 1_000_000;
    write_rows(store.as_ref(), "b", start, 0).await;
    store.flush().await.unwrap();

    assert_eq!(
        everything(store.as_ref(), "a").await,
        [("up{job=\"api\"}".to_owned(), vec![(T0, 1.0)])]
    );
    assert_eq!(
        everything(store.as_ref(), "b").await,
        [
            ("up{job=\"api\"}".to_owned(), vec![(T0, 42.0)]),
            ("up{job=\"secret\"}".to_owned(), vec![(T0, 7.0)]),
        ]
    );
    assert!(
        select(
            store.as_ref(),
            "a",
            &[Matcher::equal("job", "secret")],
            i64::MIN,
            i64::MAX
        )
        .await
        .is_empty()
    );
    assert_eq!(
        store.label_values(&tenant("a"), "job", &[]).await.unwrap(),
        ["api"]
    );
    assert_eq!(
        store
            .label_values(
                &tenant("a"),
                "job",
                &[matcher("job", MatchOp::Regex, r"\bsecret")]
            )
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        store.label_values(&tenant("b"), "job", &[]).await.unwrap(),
        ["api", "secret"]
    );
    assert!(everything(store.as_ref(), "c").await.is_empty());
    assert_eq!(row_counts(engine, "a").await, [0, 0, 0]);
    assert_eq!(row_counts(engine, "b").await, [2, 3, 1]);
    store.close().await.unwrap();
}

fn day_start(timestamp_ms: i64) -> i64 {
    timestamp_ms.div_euclid(DAY) * DAY
}

/// Retention removes whole UTC days older than the retention period, of every series and
/// tenant, and keeps the rest; it lasts across a restart.
pub async fn retention_drops_whole_days(engine: &dyn Engine) {
    let store = engine.open().await;
    let s: &[(&str, &str)] = &[("__name__", "m")];
    let day0 = day_start(T0);
    // Day 0: two samples (its start and T0); days 1-3: one each, day 1's at its first ms.
    let writes = [
        (day0, 0.0),
        (T0, 0.5),
        (day0 + DAY, 1.0),
        (T0 + 2 * DAY, 2.0),
        (T0 + 3 * DAY, 3.0),
    ];
    for (i, (timestamp, value)) in writes.iter().enumerate() {
        for name in ["a", "b"] {
            store
                .write(
                    &tenant(name),
                    metrics(&[(s, &[(*timestamp, *value)])]),
                    &metrics_at(i as u64),
                )
                .await
                .unwrap();
        }
        store.flush().await.unwrap();
    }
    // Now is day 3: with two days of retention, day 0 goes (cut-off in day 1).
    store.enforce_retention(T0 + 3 * DAY).await.unwrap();
    let kept = |rows: Vec<(String, Vec<(i64, f64)>)>| -> Vec<f64> {
        rows.into_iter()
            .flat_map(|(_, samples)| samples)
            .map(|(_, v)| v)
            .collect()
    };
    assert_eq!(
        kept(everything(store.as_ref(), "a").await),
        [1.0, 2.0, 3.0],
        "the whole of day 0 is gone, the first millisecond of day 1 is kept"
    );
    assert_eq!(kept(everything(store.as_ref(), "b").await), [1.0, 2.0, 3.0]);
    store.close().await.unwrap();
    drop(store);
    let store = engine.open().await;
    assert_eq!(kept(everything(store.as_ref(), "a").await), [1.0, 2.0, 3.0]);
    store.enforce_retention(T0 + 3 * DAY).await.unwrap();
    assert_eq!(
        kept(everything(store.as_ref(), "a").await),
        [1.0, 2.0, 3.0],
        "again: nothing more"
    );
}

/// Retention removes whole days of spans, log records and events too.
pub async fn retention_drops_whole_days_of_rows(engine: &dyn Engine) {
    let store = engine.open().await;
    for day in 0..4i64 {
        let start_ns = ((T0 + day * DAY) as u64) * 1_000_000;
        write_rows(store.as_ref(), "a", start_ns, day as u64).await;
        store.flush().await.unwrap();
    }
    assert_eq!(row_counts(engine, "a").await, [8, 12, 4]);
    store.enforce_retention(T0 + 3 * DAY).await.unwrap();
    assert_eq!(row_counts(engine, "a").await, [6, 9, 3], "day 0 is gone");
    store.close().await.unwrap();
}

/// Rows as text: cells joined by `,`, NULL as `NULL`.
pub fn rows_text(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|column| {
                    if column.is_null(row) {
                        "NULL".to_owned()
                    } else {
                        array_value_to_string(column, row).unwrap()
                    }
                })
                .collect();
            out.push(cells.join(","));
        }
    }
    out
}

/// The rows `query` returns in `tenant_name`'s SQL session, as text.
pub async fn sql(store: &dyn Storage, tenant_name: &str, query: &str) -> Vec<String> {
    let context = store.session(&tenant(tenant_name)).await.unwrap();
    let frame = context
        .sql(query)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    let batches = frame
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    rows_text(&batches)
}

/// The columns of each SQL table, as `name: type`, NULL-able ones marked `?`; `series_id`
/// as `series_id: key`, its type being the engine's (checked to be an unsigned integer).
async fn sql_schemas(store: &dyn Storage) -> BTreeMap<String, Vec<String>> {
    use datafusion::arrow::datatypes::DataType;
    let context = store.session(&tenant("a")).await.unwrap();
    let mut out = BTreeMap::new();
    for table in ["samples", "histograms", "series", "spans", "logs", "events"] {
        let frame = context.table(table).await.unwrap();
        let columns = frame
            .schema()
            .fields()
            .iter()
            .map(|field| {
                if field.name() == "series_id" {
                    assert!(
                        matches!(field.data_type(), DataType::UInt32 | DataType::UInt64),
                        "{table}.series_id is {}",
                        field.data_type()
                    );
                    return "series_id: key".to_owned();
                }
                let nullable = if field.is_nullable() { "?" } else { "" };
                format!("{}: {}{nullable}", field.name(), field.data_type())
            })
            .collect();
        out.insert(table.to_owned(), columns);
    }
    out
}

/// Metrics, spans of two services, log records of several severities and times, and two
/// events, all of tenant `a`, flushed.
async fn write_sql_data(store: &dyn Storage) {
    let a = tenant("a");
    let api: &[(&str, &str)] = &[("__name__", HTTP), ("job", "api"), ("code", "200")];
    let db: &[(&str, &str)] = &[("__name__", HTTP), ("job", "db")];
    let up: &[(&str, &str)] = &[("__name__", "up"), ("job", "api")];
    store
        .write(
            &a,
            metrics(&[
                (api, &[(T0, 1.0), (T0 + 15_000, 2.0), (T0 + 30_000, 4.0)]),
                (db, &[(T0, 10.0), (T0 + 15_000, 20.0)]),
                (up, &[(T0, 1.0)]),
            ]),
            &metrics_at(0),
        )
        .await
        .unwrap();
    let start = (T0 as u64) * 1_000_000;
    let mut child = span(1, 2, start + 1_000_000, "db");
    child.parent_span_id = Some(model::SpanId([1; 8]));
    store
        .write(
            &a,
            spans_of("checkout", vec![span(1, 1, start, "GET /"), child]),
            &at("spans", 0, 0),
        )
        .await
        .unwrap();
    store
        .write(
            &a,
            spans_of(
                "cart",
                vec![
                    span(2, 1, start, "POST /cart"),
                    span(2, 2, start, "db"),
                    span(2, 3, start, "cache"),
                ],
            ),
            &at("spans", 0, 1),
        )
        .await
        .unwrap();
    let minute = 60_000_000_000;
    let mut traced = log_record("it's", 13, start + minute);
    traced.trace_id = Some(model::TraceId([1; 16]));
    store
        .write(
            &a,
            log_batch(vec![
                log_record("disk full", 17, start),
                log_record("disk still full", 17, start + minute),
                log_record("ok", 9, start + minute),
                log_record("late error", 17, start + 60 * minute),
                traced,
            ]),
            &at("logs", 0, 0),
        )
        .await
        .unwrap();
    store
        .write(
            &a,
            events(&["1.2.3", "1.2.4"], T0 + 60_000),
            &at("events", 0, 0),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
}

/// The same SQL gives the same rows on every engine: the tables have the same columns
/// (but for the type of the `series_id` key), filters mean the same (NULLs included),
/// joins of samples to series, timestamps, limits and filters DataFusion applies itself.
pub async fn sql_reads_the_same_on_every_engine(engine: &dyn Engine) {
    let store = engine.open().await;
    write_sql_data(store.as_ref()).await;
    let store = store.as_ref();
    let schemas = sql_schemas(store).await;
    let expected_schemas: BTreeMap<String, Vec<String>> = [
        (
            "samples",
            "series_id: key|timestamp_ms: Int64|value: Float64",
        ),
        ("series", "series_id: key|metric_name: Utf8|labels: Utf8"),
        (
            "histograms",
            "series_id: key|timestamp_ms: Int64|schema: Int32|zero_threshold: Float64|\
             zero_count: Float64|count: Float64|sum: Float64|counter_reset: Utf8|\
             positive_indexes: List(non-null Int32)|positive_counts: List(non-null Float64)|\
             negative_indexes: List(non-null Int32)|negative_counts: List(non-null Float64)",
        ),
        (
            "spans",
            "trace_id: Utf8|span_id: Utf8|parent_span_id: Utf8?|service_name: Utf8|name: Utf8|\
             kind: Utf8|start_time: Timestamp(ns, \"UTC\")|end_time: Timestamp(ns, \"UTC\")|\
             duration_ns: Int64|status_code: Utf8|status_message: Utf8|attributes: Utf8|\
             resource_attributes: Utf8|scope_name: Utf8|scope_version: Utf8|events: Utf8|\
             links: Utf8|trace_state: Utf8|flags: UInt32",
        ),
        (
            "logs",
            "timestamp: Timestamp(ns, \"UTC\")|observed_timestamp: Timestamp(ns, \"UTC\")|\
             service_name: Utf8|severity_number: Int32|severity_text: Utf8|body: Utf8|\
             attributes: Utf8|resource_attributes: Utf8|scope_name: Utf8|trace_id: Utf8?|\
             span_id: Utf8?|event_name: Utf8|flags: UInt32|bus_partition: UInt32|\
             bus_offset: UInt64|bus_index: UInt32",
        ),
        (
            "events",
            "timestamp: Timestamp(ms, \"UTC\")|kind: Utf8|source: Utf8|details: Utf8|\
             attributes: Utf8|bus_partition: UInt32|bus_offset: UInt64|bus_index: UInt32",
        ),
    ]
    .into_iter()
    .map(|(table, columns)| {
        (
            table.to_owned(),
            columns.split('|').map(str::to_owned).collect(),
        )
    })
    .collect();
    assert_eq!(schemas, expected_schemas);

    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "SELECT service_name, count(*) FROM spans GROUP BY service_name ORDER BY service_name"
                .into(),
            vec!["cart,3", "checkout,2"],
        ),
        (
            // Severity and a time range: T0 + 10 s up to (not including) T0 + 1 h.
            "SELECT body FROM logs WHERE severity_number >= 17 \
             AND timestamp >= TIMESTAMP '2023-11-14T22:13:30Z' \
             AND timestamp < TIMESTAMP '2023-11-14T23:13:20Z' ORDER BY body"
                .into(),
            vec!["disk still full"],
        ),
        (
            "SELECT timestamp, severity_text, body, trace_id FROM logs \
             WHERE body IN ('ok', 'it''s') ORDER BY body"
                .into(),
            vec![
                "2023-11-14T22:14:20Z,INFO,it's,01010101010101010101010101010101",
                "2023-11-14T22:14:20Z,INFO,ok,NULL",
            ],
        ),
        (
            format!(
                "SELECT s.metric_name, count(*), sum(x.value) FROM samples x \
                 JOIN series s USING (series_id) \
                 WHERE x.timestamp_ms BETWEEN {T0} AND {} \
                 GROUP BY s.metric_name ORDER BY s.metric_name",
                T0 + 15_000
            ),
            vec!["http_requests_total,4,33.0", "up,1,1.0"],
        ),
        (
            "SELECT labels FROM series WHERE metric_name = 'http_requests_total' ORDER BY labels"
                .into(),
            vec![
                r#"{"__name__":"http_requests_total","code":"200","job":"api"}"#,
                r#"{"__name__":"http_requests_total","job":"db"}"#,
            ],
        ),
        (
            "SELECT max(timestamp_ms), count(*) FROM samples \
             WHERE series_id IN (SELECT series_id FROM series WHERE metric_name = 'up')"
                .into(),
            vec!["1700000000000,1"],
        ),
        (
            "SELECT count(*) FROM spans WHERE parent_span_id IS NULL".into(),
            vec!["4"],
        ),
        (
            // NULL = '...' is NULL, and so is its negation: no row.
            "SELECT name FROM spans WHERE NOT (parent_span_id = '0101010101010101')".into(),
            vec![],
        ),
        (
            "SELECT service_name, name FROM spans WHERE parent_span_id NOT IN ('ffffffffffffffff')"
                .into(),
            vec!["checkout,db"],
        ),
        (
            "SELECT count(*) FROM logs WHERE trace_id IS NULL OR severity_number > 16".into(),
            vec!["4"],
        ),
        (
            "SELECT body FROM logs WHERE NOT (trace_id != '01010101010101010101010101010101')"
                .into(),
            vec!["it's"],
        ),
        (
            "SELECT kind, source, count(*) FROM events \
             WHERE timestamp >= TIMESTAMP '2023-11-14T22:14:20Z' GROUP BY kind, source"
                .into(),
            vec!["deploy,pipeline-core,2"],
        ),
        (
            // A filter no engine pushes anywhere: DataFusion applies it.
            "SELECT service_name, name FROM spans WHERE upper(name) = 'DB' ORDER BY service_name"
                .into(),
            vec!["cart,db", "checkout,db"],
        ),
        (
            "SELECT body FROM logs WHERE body LIKE 'disk%' ORDER BY body".into(),
            vec!["disk full", "disk still full"],
        ),
        (
            "SELECT count(*) FROM (SELECT body FROM logs LIMIT 2)".into(),
            vec!["2"],
        ),
        (
            format!("SELECT count(*) FROM samples WHERE timestamp_ms > {T0}"),
            vec!["3"],
        ),
        (
            // Aggregations by a column: ClickHouse computes them (see clickhouse.rs).
            "SELECT severity_text, count(*), min(body), max(body), sum(severity_number), \
             avg(severity_number), count(trace_id), max(trace_id), min(timestamp), max(flags) \
             FROM logs GROUP BY severity_text ORDER BY severity_text"
                .into(),
            vec![
                "ERROR,3,disk full,late error,51,17.0,0,NULL,2023-11-14T22:13:20Z,0",
                "INFO,2,it's,ok,22,11.0,1,01010101010101010101010101010101,\
                 2023-11-14T22:14:20Z,0",
            ],
        ),
        (
            // Over no rows SQL answers NULL, but count 0.
            "SELECT count(*), sum(severity_number), avg(severity_number), min(body), \
             max(timestamp), count(body) FROM logs WHERE severity_number > 100"
                .into(),
            vec!["0,NULL,NULL,NULL,NULL,0"],
        ),
        (
            "SELECT count(*), sum(value), avg(value), min(timestamp_ms), max(timestamp_ms) \
             FROM samples"
                .into(),
            vec!["6,38.0,6.333333333333333,1700000000000,1700000030000"],
        ),
        (
            // Series counted by name.
            "SELECT metric_name, count(*) FROM series GROUP BY metric_name ORDER BY metric_name"
                .into(),
            vec!["http_requests_total,2", "up,1"],
        ),
    ];
    for (query, expected) in cases {
        assert_eq!(sql(store, "a", &query).await, expected, "{query}");
    }
    store.close().await.unwrap();
}

/// SQL in one tenant's session never sees another tenant's rows, in any table.
pub async fn sql_sees_one_tenant_only(engine: &dyn Engine) {
    let store = engine.open().await;
    let only_a: &[(&str, &str)] = &[("__name__", "up"), ("job", "api")];
    let only_b: &[(&str, &str)] = &[("__name__", "up"), ("job", "secret")];
    store
        .write(
            &tenant("a"),
            metrics(&[(only_a, &[(T0, 1.0)])]),
            &metrics_at(0),
        )
        .await
        .unwrap();
    store
        .write(
            &tenant("b"),
            metrics(&[(only_b, &[(T0, 7.0), (T0 + 1, 8.0)])]),
            &metrics_at(1),
        )
        .await
        .unwrap();
    let start = (T0 as u64) * 1_000_000;
    write_rows(store.as_ref(), "a", start, 0).await;
    write_rows(store.as_ref(), "b", start, 1).await;
    write_rows(store.as_ref(), "b", start, 2).await;
    store.flush().await.unwrap();
    let store = store.as_ref();

    let counts = |tenant_name: &'static str| async move {
        let mut out = Vec::new();
        for table in ["samples", "series", "spans", "logs", "events"] {
            let rows = sql(store, tenant_name, &format!("SELECT count(*) FROM {table}")).await;
            out.push(rows.join(""));
        }
        out
    };
    assert_eq!(counts("a").await, ["1", "1", "2", "3", "1"]);
    assert_eq!(counts("b").await, ["2", "1", "4", "6", "2"]);
    assert_eq!(counts("nobody").await, ["0", "0", "0", "0", "0"]);
    assert_eq!(
        sql(store, "a", "SELECT labels FROM series").await,
        [r#"{"__name__":"up","job":"api"}"#]
    );
    assert!(
        sql(store, "a", "SELECT value FROM samples WHERE value > 1")
            .await
            .is_empty()
    );
    assert_eq!(
        sql(
            store,
            "a",
            "SELECT DISTINCT trace_id FROM spans ORDER BY trace_id"
        )
        .await,
        ["01010101010101010101010101010101"],
        "only a's trace"
    );
    assert!(
        sql(
            store,
            "b",
            "SELECT s.labels FROM samples x JOIN series s USING (series_id) WHERE s.labels LIKE '%api%'"
        )
        .await
        .is_empty()
    );
    store.close().await.unwrap();
}
