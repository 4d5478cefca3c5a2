//! The embedded store: what is written is read back, across flushes and restarts, and a
//! restart needs exactly the bus records after the durable offsets.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use model::{Labels, MetricBatch, Payload, Sample, Series, TenantId};
use storage::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use storage::{BusPosition, MatchOp, Matcher, Storage};
use tempfile::TempDir;

/// Label pairs and `(timestamp, value)` samples of one series.
type SeriesSpec<'a> = (&'a [(&'a str, &'a str)], &'a [(i64, f64)]);

fn batch(series: &[SeriesSpec]) -> Payload {
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

fn at(offset: u64) -> BusPosition {
    BusPosition {
        topic: "metrics".into(),
        partition: 0,
        offset,
    }
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

const DAY: i64 = 86_400_000;
const T0: i64 = 1_700_000_000_000;

async fn values(
    store: &dyn Storage,
    tenant_name: &str,
    matchers: &[Matcher],
) -> Vec<(String, Vec<(i64, f64)>)> {
    store
        .select(&tenant(tenant_name), matchers, i64::MIN, i64::MAX)
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

#[tokio::test]
async fn written_samples_are_selected_before_and_after_flush_and_restart() {
    let dir = TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    let up_api: &[(&str, &str)] = &[("__name__", "up"), ("job", "api")];
    let up_db: &[(&str, &str)] = &[("__name__", "up"), ("job", "db")];
    store
        .write(
            &tenant("a"),
            batch(&[
                (up_api, &[(T0, 1.0), (T0 + 15_000, 1.0)]),
                (up_db, &[(T0, 0.0)]),
            ]),
            &at(0),
        )
        .await
        .unwrap();
    let job_api = [Matcher::equal("job", "api")];
    assert_eq!(
        values(&store, "a", &job_api).await,
        [(
            r#"up{job="api"}"#.to_owned(),
            vec![(T0, 1.0), (T0 + 15_000, 1.0)]
        )]
    );

    let durable = store.flush().await.unwrap();
    assert_eq!(durable.get(&("metrics".to_owned(), 0)), Some(&1));
    assert_eq!(store.part_count(), 1);
    // After the flush the data is read from the part; a new sample is in the head.
    store
        .write(
            &tenant("a"),
            batch(&[(up_api, &[(T0 + 30_000, 0.0)])]),
            &at(1),
        )
        .await
        .unwrap();
    assert_eq!(
        values(&store, "a", &job_api).await[0].1,
        vec![(T0, 1.0), (T0 + 15_000, 1.0), (T0 + 30_000, 0.0)]
    );
    // Other tenants see nothing of tenant a.
    assert!(values(&store, "b", &[]).await.is_empty());
    store.close().await.unwrap();
    drop(store);

    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    assert_eq!(
        store
            .durable_offsets()
            .await
            .unwrap()
            .get(&("metrics".to_owned(), 0)),
        Some(&2)
    );
    let all = values(
        &store,
        "a",
        &[Matcher::new("__name__", MatchOp::Regex, "up").unwrap()],
    )
    .await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].1.len(), 3, "everything flushed at close is back");
    assert_eq!(
        store.label_values(&tenant("a"), "job", &[]).await.unwrap(),
        ["api", "db"]
    );
    assert_eq!(
        store.label_names(&tenant("a"), &job_api).await.unwrap(),
        ["__name__", "job"]
    );
}

#[tokio::test]
async fn unflushed_data_is_gone_after_a_crash_and_the_offsets_say_what_to_replay() {
    let dir = TempDir::new().unwrap();
    let series: &[(&str, &str)] = &[("__name__", "m")];
    {
        let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
        store
            .write(&tenant("a"), batch(&[(series, &[(T0, 1.0)])]), &at(0))
            .await
            .unwrap();
        store.flush().await.unwrap();
        store
            .write(&tenant("a"), batch(&[(series, &[(T0 + 1, 2.0)])]), &at(1))
            .await
            .unwrap();
        // Dropped without a flush: a crash.
    }
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    assert_eq!(
        store
            .durable_offsets()
            .await
            .unwrap()
            .get(&("metrics".to_owned(), 0)),
        Some(&1),
        "replay from offset 1"
    );
    assert_eq!(values(&store, "a", &[]).await[0].1, vec![(T0, 1.0)]);
    // The replay writes record 1 again, and record 0 too if a consumer re-reads it: no double counting.
    store
        .write(&tenant("a"), batch(&[(series, &[(T0, 1.0)])]), &at(0))
        .await
        .unwrap();
    store
        .write(&tenant("a"), batch(&[(series, &[(T0 + 1, 2.0)])]), &at(1))
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        values(&store, "a", &[]).await[0].1,
        vec![(T0, 1.0), (T0 + 1, 2.0)]
    );
}

#[tokio::test]
async fn files_left_by_a_crash_before_the_manifest_are_removed() {
    let dir = TempDir::new().unwrap();
    let series: &[(&str, &str)] = &[("__name__", "m")];
    {
        let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
        store
            .write(&tenant("a"), batch(&[(series, &[(T0, 1.0)])]), &at(0))
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let stray = dir
        .path()
        .join("tenants/a/metrics/19675/part-99999999.parquet");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"half written").unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    assert!(!stray.exists());
    assert_eq!(values(&store, "a", &[]).await[0].1, vec![(T0, 1.0)]);
}

#[tokio::test]
async fn out_of_order_samples_within_the_window_are_kept_and_later_writes_win() {
    let dir = TempDir::new().unwrap();
    let config = EmbeddedStoreConfig {
        out_of_order_window_seconds: 60,
        ..EmbeddedStoreConfig::default()
    };
    let store = EmbeddedStore::open(dir.path(), config).unwrap();
    let s: &[(&str, &str)] = &[("__name__", "m")];
    store
        .write(&tenant("a"), batch(&[(s, &[(T0 + 100_000, 1.0)])]), &at(0))
        .await
        .unwrap();
    let summary = store
        .write(
            &tenant("a"),
            batch(&[(
                s,
                &[(T0 + 50_000, 2.0), (T0 + 30_000, 3.0), (T0 + 100_000, 9.0)],
            )]),
            &at(1),
        )
        .await
        .unwrap();
    assert_eq!(summary.accepted, 2);
    assert_eq!(
        summary.too_old, 1,
        "70 s behind the newest sample, window 60 s"
    );
    store.flush().await.unwrap();
    store
        .write(&tenant("a"), batch(&[(s, &[(T0 + 50_000, 5.0)])]), &at(2))
        .await
        .unwrap();
    assert_eq!(
        values(&store, "a", &[]).await[0].1,
        vec![(T0 + 50_000, 5.0), (T0 + 100_000, 9.0)]
    );
}

#[tokio::test]
async fn select_filters_time_and_matchers_across_days_and_parts() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap());
    for day in 0..3 {
        for i in 0..50 {
            let pod = format!("{i}");
            let labels: &[(&str, &str)] = &[("__name__", "requests_total"), ("pod", &pod)];
            store
                .write(
                    &tenant("a"),
                    batch(&[(labels, &[(T0 + day * DAY + i, day as f64)])]),
                    &at(day as u64),
                )
                .await
                .unwrap();
        }
        store.flush().await.unwrap();
    }
    assert_eq!(store.part_count(), 3);
    let pods = [Matcher::new("pod", MatchOp::Regex, "1.").unwrap()];
    let second_day = store
        .select(&tenant("a"), &pods, T0 + DAY, T0 + 2 * DAY - 1)
        .await
        .unwrap();
    assert_eq!(second_day.len(), 10);
    assert!(
        second_day
            .iter()
            .all(|s| s.samples.len() == 1 && s.samples[0].value == 1.0)
    );
    let none = store
        .select(
            &tenant("a"),
            &[Matcher::equal("pod", "nope")],
            i64::MIN,
            i64::MAX,
        )
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn retention_drops_whole_old_days() {
    let dir = TempDir::new().unwrap();
    let config = EmbeddedStoreConfig {
        retention_seconds: 2 * 86_400,
        ..EmbeddedStoreConfig::default()
    };
    let store = EmbeddedStore::open(dir.path(), config).unwrap();
    let s: &[(&str, &str)] = &[("__name__", "m")];
    for day in 0..4 {
        store
            .write(
                &tenant("a"),
                batch(&[(s, &[(T0 + day * DAY, day as f64)])]),
                &at(day as u64),
            )
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    store.enforce_retention(T0 + 3 * DAY).await.unwrap();
    let kept: Vec<f64> = values(&store, "a", &[]).await[0]
        .1
        .iter()
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(kept, [1.0, 2.0, 3.0], "the day older than two days is gone");
    assert_eq!(store.part_count(), 3);
}

fn span(trace: u8, id: u8, start_ns: u64, name: &str) -> model::Span {
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

fn spans(list: Vec<model::Span>) -> Payload {
    Payload::Spans(model::SpanBatch {
        resource_spans: vec![model::ResourceSpans {
            resource: model::Resource {
                attributes: vec![model::KeyValue::string("service.name", "checkout")],
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

fn strings(batches: &[datafusion::arrow::array::RecordBatch], column: &str) -> Vec<String> {
    use datafusion::arrow::array::{Array, StringArray};
    let mut out = Vec::new();
    for batch in batches {
        let array = batch
            .column_by_name(column)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        out.extend((0..array.len()).map(|i| array.value(i).to_owned()));
    }
    out.sort();
    out
}

#[tokio::test]
async fn spans_logs_and_events_are_stored_once_across_flushes_and_restarts() {
    let dir = TempDir::new().unwrap();
    let start = (T0 as u64) * 1_000_000;
    {
        let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
        store
            .write(
                &tenant("a"),
                spans(vec![span(1, 1, start, "GET /"), span(1, 2, start, "db")]),
                &at(0),
            )
            .await
            .unwrap();
        store.flush().await.unwrap();
        // The same span again (a re-delivery), with a later version of its name.
        store
            .write(
                &tenant("a"),
                spans(vec![span(1, 2, start, "db query")]),
                &at(1),
            )
            .await
            .unwrap();
        let logs = Payload::Logs(model::LogBatch {
            resource_logs: vec![model::ResourceLogs {
                resource: model::Resource::default(),
                schema_url: String::new(),
                scope_logs: vec![model::ScopeLogs {
                    scope: model::InstrumentationScope::default(),
                    schema_url: String::new(),
                    log_records: vec![model::LogRecord {
                        time_unix_nano: start,
                        body: model::AnyValue::String("disk full".into()),
                        severity_text: "ERROR".into(),
                        ..model::LogRecord::default()
                    }],
                }],
            }],
        });
        let logs_position = BusPosition {
            topic: "logs".into(),
            partition: 0,
            offset: 7,
        };
        store
            .write(&tenant("a"), logs.clone(), &logs_position)
            .await
            .unwrap();
        store
            .write(&tenant("a"), logs, &logs_position)
            .await
            .unwrap();
        let events = Payload::Events(vec![model::PlatformEvent {
            timestamp_ms: T0,
            source: "pipeline-core".into(),
            attributes: vec![],
            kind: model::EventKind::Deploy(model::DeployEvent {
                service: "checkout".into(),
                version: "1.2.3".into(),
                environment: "prod".into(),
                cluster: "eu".into(),
                namespace: "shop".into(),
                phase: model::DeployPhase::Succeeded,
                actor: "ci".into(),
                message: String::new(),
            }),
        }]);
        store
            .write(
                &tenant("a"),
                events,
                &BusPosition {
                    topic: "events".into(),
                    partition: 0,
                    offset: 0,
                },
            )
            .await
            .unwrap();
        store.close().await.unwrap();
    }
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    let stored_spans = store.rows(&tenant("a"), "spans").await.unwrap();
    assert_eq!(
        strings(&stored_spans, "name"),
        ["GET /", "db", "db query"],
        "one row per flush until compaction merges them"
    );
    assert_eq!(strings(&stored_spans, "service_name"), ["checkout"; 3]);
    assert_eq!(
        strings(&stored_spans, "attributes")[0],
        r#"{"http.status_code":500}"#
    );
    let logs = store.rows(&tenant("a"), "logs").await.unwrap();
    assert_eq!(
        strings(&logs, "body"),
        ["disk full"],
        "a re-delivered log record is stored once"
    );
    let events = store.rows(&tenant("a"), "events").await.unwrap();
    assert_eq!(strings(&events, "kind"), ["deploy"]);
    assert!(strings(&events, "details")[0].contains("1.2.3"));
    assert!(store.rows(&tenant("b"), "spans").await.unwrap().is_empty());
    assert!(store.rows(&tenant("a"), "nope").await.is_err());
}

async fn sql(store: &EmbeddedStore, tenant_name: &str, query: &str) -> Vec<String> {
    let context = store.session(&tenant(tenant_name)).await.unwrap();
    let batches = context.sql(query).await.unwrap().collect().await.unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    text.lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

#[tokio::test]
async fn sql_sees_parts_and_recent_rows_of_one_tenant_only() {
    let dir = TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    let api: &[(&str, &str)] = &[("__name__", "up"), ("job", "api")];
    let db: &[(&str, &str)] = &[("__name__", "up"), ("job", "db")];
    store
        .write(
            &tenant("a"),
            batch(&[(api, &[(T0, 1.0)]), (db, &[(T0, 0.0)])]),
            &at(0),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    store
        .write(&tenant("a"), batch(&[(api, &[(T0 + 15_000, 1.0)])]), &at(1))
        .await
        .unwrap();
    store
        .write(&tenant("other"), batch(&[(api, &[(T0, 42.0)])]), &at(2))
        .await
        .unwrap();
    store
        .write(
            &tenant("a"),
            spans(vec![span(3, 1, (T0 as u64) * 1_000_000, "GET /")]),
            &BusPosition {
                topic: "spans".into(),
                partition: 0,
                offset: 0,
            },
        )
        .await
        .unwrap();

    assert_eq!(
        sql(&store, "a", "SELECT count(*) FROM samples").await,
        ["3"],
        "a part and the head"
    );
    assert_eq!(
        sql(
            &store,
            "a",
            "SELECT s.metric_name, s.labels, sum(x.value) FROM samples x JOIN series s USING (series_id) \
             GROUP BY s.metric_name, s.labels ORDER BY s.labels"
        )
        .await,
        [r#"up,{"__name__":"up","job":"api"},2.0"#, r#"up,{"__name__":"up","job":"db"},0.0"#]
    );
    assert_eq!(
        sql(
            &store,
            "a",
            &format!("SELECT count(*) FROM samples WHERE timestamp_ms > {T0}")
        )
        .await,
        ["1"]
    );
    assert_eq!(
        sql(&store, "a", "SELECT name, service_name, kind FROM spans").await,
        ["GET /,checkout,server"]
    );
    assert_eq!(
        sql(&store, "other", "SELECT max(value) FROM samples").await,
        ["42.0"],
        "tenants never mix"
    );
    assert_eq!(
        sql(&store, "nobody", "SELECT count(*) FROM logs").await,
        ["0"]
    );
}

#[tokio::test]
async fn compaction_merges_a_days_parts_and_keeps_the_latest_writes() {
    let dir = TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    // Three flushes into the same (past) day; the third overwrites one sample.
    for round in 0..3i64 {
        for pod in 0..5000 {
            let pod_name = format!("pod-{pod}");
            let labels: &[(&str, &str)] = &[("__name__", "cpu"), ("pod", &pod_name)];
            let value = if round == 2 && pod == 7 {
                99.0
            } else {
                (round * 10 + pod) as f64
            };
            let ts = if round == 2 && pod == 7 {
                T0
            } else {
                T0 + round * 15_000
            };
            store
                .write(
                    &tenant("a"),
                    batch(&[(labels, &[(ts, value)])]),
                    &at(round as u64),
                )
                .await
                .unwrap();
        }
        store.flush().await.unwrap();
    }
    assert_eq!(store.part_count(), 3);
    let before = values(&store, "a", &[Matcher::equal("pod", "pod-7")]).await;
    assert_eq!(
        before[0].1,
        vec![(T0, 99.0), (T0 + 15_000, 17.0)],
        "the later write of T0 wins"
    );

    let removed = store.compact(T0 + 2 * DAY).await.unwrap();
    assert_eq!(removed, 3);
    assert_eq!(store.part_count(), 1);
    assert_eq!(
        values(&store, "a", &[Matcher::equal("pod", "pod-7")]).await,
        before
    );
    let all = store
        .select(&tenant("a"), &[], i64::MIN, i64::MAX)
        .await
        .unwrap();
    assert_eq!(all.len(), 5000);
    assert_eq!(
        all.iter().map(|s| s.samples.len()).sum::<usize>(),
        5000 * 3 - 1
    );
    drop(store);
    let reopened = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    assert_eq!(reopened.part_count(), 1);
    assert_eq!(
        values(&reopened, "a", &[Matcher::equal("pod", "pod-7")]).await,
        before
    );
    let files = std::fs::read_dir(
        dir.path()
            .join("tenants/a/metrics")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap()
    .count();
    assert_eq!(files, 1, "the merged parts' files are gone");
}

/// A series' labels and samples, owned and borrowed.
type OwnedSpec = (Vec<(String, String)>, Vec<(i64, f64)>);
type BorrowedSpec<'a> = (Vec<(&'a str, &'a str)>, &'a [(i64, f64)]);

/// Values that exercise every way a part stores a value: integers, short and long
/// decimals (each decimal scale), values no decimal mantissa holds, and the special
/// floats, including the staleness marker's NaN bits.
fn awkward_values() -> Vec<f64> {
    let mut values = vec![
        0.0,
        -0.0,
        1.0,
        -17.0,
        9_007_199_254_740_993.0,
        -4.0e18,
        1.0e300,
        f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        model::stale_nan(),
        1.0 / 3.0,
        std::f64::consts::PI,
        0.1 + 0.2,
    ];
    // One decimal of each scale, both signs.
    for scale in 0..=14 {
        let text = format!("{}.{}7", 12_345, "0".repeat(scale));
        values.push(text.parse().unwrap());
        values.push(-text.parse::<f64>().unwrap());
    }
    values
}

#[tokio::test]
async fn every_value_comes_back_bit_for_bit_from_parts_and_sql() {
    let dir = TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    let values = awkward_values();
    // Each value alone in a series (so it decides that series' encoding), and all of them
    // in one series (which then cannot use integer mantissas).
    let mut specs: Vec<OwnedSpec> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                vec![
                    ("__name__".into(), "v".into()),
                    ("i".into(), format!("{i:02}")),
                ],
                vec![(T0, *v), (T0 + 15_000, *v)],
            )
        })
        .collect();
    specs.push((
        vec![("__name__".into(), "all".into())],
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (T0 + i as i64 * 1_000, *v))
            .collect(),
    ));
    let borrowed: Vec<BorrowedSpec> = specs
        .iter()
        .map(|(labels, samples)| {
            (
                labels
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect(),
                samples.as_slice(),
            )
        })
        .collect();
    let specs: Vec<SeriesSpec> = borrowed.iter().map(|(l, s)| (l.as_slice(), *s)).collect();
    // Two flushed parts, then compacted into one.
    let (first, second) = specs.split_at(specs.len() / 2);
    store
        .write(&tenant("a"), batch(first), &at(0))
        .await
        .unwrap();
    store.flush().await.unwrap();
    store
        .write(&tenant("a"), batch(second), &at(1))
        .await
        .unwrap();
    store.flush().await.unwrap();

    let bits = |samples: &[(i64, f64)]| {
        samples
            .iter()
            .map(|(t, v)| (*t, v.to_bits()))
            .collect::<Vec<_>>()
    };
    let check = |read: Vec<(String, Vec<(i64, f64)>)>, when: &str| {
        assert_eq!(read.len(), specs.len(), "{when}");
        for (labels, samples) in &read {
            let written = specs
                .iter()
                .find(|(l, _)| Labels::new(l.iter().copied()).unwrap().to_string() == *labels)
                .unwrap();
            assert_eq!(bits(samples), bits(written.1), "{when}: {labels}");
        }
    };
    check(values_of(&store).await, "flushed parts");
    assert!(store.compact(T0 + 10 * DAY).await.unwrap() > 0);
    assert_eq!(store.part_count(), 1);
    check(values_of(&store).await, "after compaction");

    // SQL computes the value from the same columns with the same float operations.
    let context = store.session(&tenant("a")).await.unwrap();
    let batches = context
        .sql("SELECT s.labels, x.timestamp_ms, x.value FROM samples x JOIN series s USING (series_id)")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut compared = 0;
    for batch in &batches {
        use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
        let labels = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let times = batch
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let sql_values = batch
            .column(2)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        for row in 0..batch.num_rows() {
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(labels.value(row)).unwrap();
            let written = specs
                .iter()
                .find(|(l, _)| {
                    l.len() == object.len()
                        && l.iter()
                            .all(|(n, v)| object.get(*n).and_then(|x| x.as_str()) == Some(*v))
                })
                .unwrap();
            let (_, value) = written
                .1
                .iter()
                .find(|(t, _)| *t == times.value(row))
                .unwrap();
            assert!(!sql_values.is_null(row));
            assert_eq!(
                sql_values.value(row).to_bits(),
                value.to_bits(),
                "{}",
                labels.value(row)
            );
            compared += 1;
        }
    }
    assert_eq!(compared, specs.iter().map(|(_, s)| s.len()).sum::<usize>());
}

async fn values_of(store: &EmbeddedStore) -> Vec<(String, Vec<(i64, f64)>)> {
    values(store, "a", &[]).await
}

#[tokio::test]
async fn parts_of_the_first_layout_are_rewritten_at_open_and_read_the_same() {
    use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, UInt32Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    let dir = TempDir::new().unwrap();
    let up: &[(&str, &str)] = &[("__name__", "up"), ("job", "api")];
    let written = [(T0, 1.5), (T0 + 15_000, f64::NAN), (T0 + 30_000, 3.0)];
    {
        let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
        store
            .write(&tenant("a"), batch(&[(up, &written)]), &at(0))
            .await
            .unwrap();
        store.flush().await.unwrap();
        store.close().await.unwrap();
    }
    // Turn the store into what the first layout wrote: a float64 `value` column only, and
    // a version 1 manifest.
    let manifest_path = dir.path().join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["version"] = 1.into();
    let part = manifest["tenants"]["a"]["parts"][0]["file"]
        .as_str()
        .unwrap()
        .to_owned();
    let part_path = dir.path().join("tenants/a").join(&part);
    let schema = Arc::new(Schema::new(vec![
        Field::new("series_id", DataType::UInt32, false),
        Field::new("timestamp_ms", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
    ]));
    let old = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt32Array::from(vec![0u32; 3])),
            Arc::new(Int64Array::from_iter_values(
                written.iter().map(|(t, _)| *t),
            )),
            Arc::new(Float64Array::from_iter_values(
                written.iter().map(|(_, v)| *v),
            )),
        ],
    )
    .unwrap();
    let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&part_path).unwrap(),
        schema,
        None,
    )
    .unwrap();
    writer.write(&old).unwrap();
    writer.close().unwrap();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();

    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    let read = values(&store, "a", &[]).await;
    assert_eq!(read.len(), 1);
    let bits = |s: &[(i64, f64)]| s.iter().map(|(t, v)| (*t, v.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&read[0].1), bits(&written));
    assert!(!part_path.exists(), "the old part is replaced");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    assert_eq!(manifest["version"], 2);
    assert_eq!(
        sql(
            &store,
            "a",
            "SELECT value FROM samples ORDER BY timestamp_ms"
        )
        .await,
        ["1.5", "NaN", "3.0"]
    );
}

/// Rows the Parquet scans of an executed plan read (in-memory sources report none).
fn parquet_rows_read(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> usize {
    let own = if plan.name() == "DataSourceExec" {
        plan.metrics().and_then(|m| m.output_rows()).unwrap_or(0)
    } else {
        0
    };
    own + plan
        .children()
        .into_iter()
        .map(parquet_rows_read)
        .sum::<usize>()
}

#[tokio::test]
async fn sql_filters_on_series_prune_the_sample_parts_read() {
    let dir = TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    // 9,000 series of three metrics, created interleaved, 120 samples each: one part of
    // 1.08 M rows, sorted by series.
    let mut series = Vec::new();
    for i in 0..3000 {
        for name in ["a_metric", "b_metric", "c_metric"] {
            let labels = Labels::new([("__name__", name), ("i", &i.to_string())]).unwrap();
            let samples = (0..120)
                .map(|k| Sample {
                    timestamp_ms: T0 + k * 15_000,
                    value: k as f64,
                })
                .collect();
            series.push(Series::with_samples(labels, samples));
        }
    }
    let total_rows = 9000 * 120;
    let payload = Payload::Metrics(MetricBatch {
        series,
        metadata: vec![],
    });
    store.write(&tenant("a"), payload, &at(0)).await.unwrap();
    store.flush().await.unwrap();

    let context = store.session(&tenant("a")).await.unwrap();
    let query = r#"SELECT count(*), sum(value) FROM samples JOIN series USING (series_id)
                   WHERE metric_name = 'b_metric' AND labels LIKE '%"i":"7"%'"#;
    let plan = context
        .sql(query)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let batches = datafusion::physical_plan::collect(plan.clone(), context.task_ctx())
        .await
        .unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(text.contains("| 120      | 7140.0"), "{text}");
    let read = parquet_rows_read(&plan);
    assert!(
        read > 0 && read * 20 < total_rows,
        "the series filter should reach the sample scan: {read} of {total_rows} rows read"
    );

    // `select` over the same part (many pages, most skipped by their series bounds) gives
    // exactly the selected series and samples: two at the part's ends, and a regex set.
    let b = Matcher::equal("__name__", "b_metric");
    let ends = Matcher::new("i", MatchOp::Regex, "0|2999").unwrap();
    let window = (T0 + 10 * 15_000, T0 + 20 * 15_000);
    let found = store
        .select(&tenant("a"), &[b.clone(), ends], window.0, window.1)
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    for s in &found {
        let values: Vec<f64> = s.samples.iter().map(|x| x.value).collect();
        assert_eq!(
            values,
            (10..=20).map(f64::from).collect::<Vec<_>>(),
            "{:?}",
            s.labels
        );
    }
    let ones = Matcher::new("i", MatchOp::Regex, "1.*").unwrap();
    let found = store
        .select(&tenant("a"), &[b, ones], T0, T0 + 120 * 15_000)
        .await
        .unwrap();
    assert_eq!(found.len(), 1 + 10 + 100 + 1000);
    assert!(found.iter().all(|s| s.samples.len() == 120));
}

#[tokio::test]
async fn a_head_of_several_arrow_chunks_reads_the_same_before_and_after_flush() {
    let dir = TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap();
    // 150,000 samples of 7 series, written interleaved in small batches: more than two
    // head chunks, each series' samples spread over all of them.
    for round in 0..1000i64 {
        let series = (0..7)
            .map(|s| {
                let labels = Labels::new([("__name__", "chunked"), ("s", &s.to_string())]).unwrap();
                let samples = (0..150 / 7 + 1)
                    .map(|k| Sample {
                        timestamp_ms: T0 + (round * 22 + k) * 1000,
                        value: (s * 1_000_000 + round * 22 + k) as f64,
                    })
                    .collect();
                Series::with_samples(labels, samples)
            })
            .collect();
        let payload = Payload::Metrics(MetricBatch {
            series,
            metadata: vec![],
        });
        store
            .write(&tenant("a"), payload, &at(round as u64))
            .await
            .unwrap();
    }
    let expected_per_series = 1000 * 22;
    let check = |when: &'static str| {
        let store = &store;
        async move {
            let read = values(store, "a", &[]).await;
            assert_eq!(read.len(), 7, "{when}");
            for (s, (_, samples)) in read.iter().enumerate() {
                assert_eq!(samples.len(), expected_per_series, "{when}");
                let base = (s * 1_000_000) as f64;
                assert!(
                    samples
                        .iter()
                        .enumerate()
                        .all(|(k, (t, v))| *t == T0 + k as i64 * 1000 && *v == base + k as f64),
                    "{when}: series {s} out of order or wrong"
                );
            }
            assert_eq!(
                sql(
                    store,
                    "a",
                    "SELECT count(*), count(DISTINCT series_id) FROM samples"
                )
                .await,
                [format!("{},7", 7 * expected_per_series)],
                "{when}"
            );
        }
    };
    check("in the head").await;
    store.flush().await.unwrap();
    check("in parts").await;
}
