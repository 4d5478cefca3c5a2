//! The ClickHouse engine against a real ClickHouse server (the Debian package, 18.16 here):
//! the storage conformance suite, then what is particular to ClickHouse (migrations,
//! version branching, dedup before merges, batching, regex push-down, partitions).
//!
//! Each test starts its own server on free ports with its own data directory and config,
//! uses its own database, and stops the server by its PID. `./scripts/install-peers`
//! installs the server.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod conformance;

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use conformance::{DAY, Engine, RETENTION_DAYS, T0, at, metrics, tenant};
use model::TenantId;
use storage::clickhouse::{
    ClickHouseConfig, ClickHouseStore, ClickHouseTable, Features, Scan, ServerVersion,
};
use storage::{MatchOp, Matcher, Storage};
use test_peers::ClickHouseServer;

/// A ClickHouse server of this test's own, stopped (by PID) when dropped.
struct Server(ClickHouseServer);

impl Server {
    fn start() -> Self {
        Self(ClickHouseServer::start())
    }

    fn url(&self) -> String {
        self.0.url()
    }

    fn client(&self) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(self.url())
            .with_validation(false)
    }

    fn data_dir(&self) -> &Path {
        self.0.dir()
    }
}

fn config(server: &Server, database: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: server.url(),
        database: database.to_owned(),
        retention_seconds: RETENTION_DAYS as u64 * 86_400,
        ..ClickHouseConfig::default()
    }
}

/// The conformance suite's view of a ClickHouse store: one server, one database.
struct ClickHouse {
    server: Server,
    database: String,
    last: Mutex<Option<Arc<ClickHouseStore>>>,
}

impl ClickHouse {
    fn new(database: &str) -> Self {
        Self {
            server: Server::start(),
            database: database.to_owned(),
            last: Mutex::new(None),
        }
    }
}

#[async_trait]
impl Engine for ClickHouse {
    async fn open(&self) -> Arc<dyn Storage> {
        let store = Arc::new(
            ClickHouseStore::open(config(&self.server, &self.database))
                .await
                .unwrap(),
        );
        *self.last.lock().unwrap() = Some(store.clone());
        store
    }

    async fn row_count(&self, tenant: &TenantId, table: &str) -> u64 {
        let store = self.last.lock().unwrap().clone().unwrap();
        store.row_count(tenant, table).await.unwrap()
    }

    /// Nothing to run: row counts read `FINAL`, which collapses versions not yet merged.
    async fn settle(&self) {}
}

#[tokio::test]
async fn histograms_are_kept() {
    conformance::histograms_are_kept(&ClickHouse::new("histograms_are_kept")).await;
}

#[tokio::test]
async fn select_with_every_matcher() {
    conformance::select_with_every_matcher(&ClickHouse::new("select_with_every_matcher")).await;
}

#[tokio::test]
async fn series_listing() {
    conformance::series_listing(&ClickHouse::new("series_listing")).await;
}

#[tokio::test]
async fn metadata_is_kept() {
    conformance::metadata_is_kept(&ClickHouse::new("metadata_is_kept")).await;
}

#[tokio::test]
async fn exemplars_are_kept() {
    conformance::exemplars_are_kept(&ClickHouse::new("exemplars_are_kept")).await;
}

#[tokio::test]
async fn label_names_and_values() {
    conformance::label_names_and_values(&ClickHouse::new("label_names_and_values")).await;
}

#[tokio::test]
async fn remote_write_bodies_are_stored_like_batches() {
    conformance::remote_write_bodies_are_stored_like_batches(&ClickHouse::new(
        "remote_write_bodies_are_stored_like_batches",
    ))
    .await;
}

#[tokio::test]
async fn metric_rewrites_count_once() {
    conformance::metric_rewrites_count_once(&ClickHouse::new("metric_rewrites_count_once")).await;
}

#[tokio::test]
async fn row_rewrites_count_once() {
    conformance::row_rewrites_count_once(&ClickHouse::new("row_rewrites_count_once")).await;
}

#[tokio::test]
async fn flush_returns_durable_offsets() {
    conformance::flush_returns_durable_offsets(&ClickHouse::new("flush_returns_durable_offsets"))
        .await;
}

#[tokio::test]
async fn durable_across_restart() {
    conformance::durable_across_restart(&ClickHouse::new("durable_across_restart")).await;
}

#[tokio::test]
async fn tenants_never_mix() {
    conformance::tenants_never_mix(&ClickHouse::new("tenants_never_mix")).await;
}

#[tokio::test]
async fn retention_drops_whole_days() {
    conformance::retention_drops_whole_days(&ClickHouse::new("retention_drops_whole_days")).await;
}

#[tokio::test]
async fn retention_drops_whole_days_of_rows() {
    conformance::retention_drops_whole_days_of_rows(&ClickHouse::new(
        "retention_drops_whole_days_of_rows",
    ))
    .await;
}

#[tokio::test]
async fn sql_reads_the_same_on_every_engine() {
    conformance::sql_reads_the_same_on_every_engine(&ClickHouse::new(
        "sql_reads_the_same_on_every_engine",
    ))
    .await;
}

#[tokio::test]
async fn sql_sees_one_tenant_only() {
    conformance::sql_sees_one_tenant_only(&ClickHouse::new("sql_sees_one_tenant_only")).await;
}

// What is particular to ClickHouse.

#[tokio::test]
async fn migrations_are_applied_once_and_the_18_16_schema_is_used() {
    let server = Server::start();
    let store = ClickHouseStore::open(config(&server, "migrations"))
        .await
        .unwrap();
    let version = store.server_version();
    assert_eq!(
        store.features(),
        Features::of(version),
        "features follow the version"
    );
    let client = server.client().with_database("migrations");
    let applied: Vec<(u32, String)> = client
        .query("SELECT version, name FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        applied,
        [
            (1, "series".to_owned()),
            (2, "samples".to_owned()),
            (3, "spans".to_owned()),
            (4, "logs".to_owned()),
            (5, "events".to_owned()),
            (6, "bus_offsets".to_owned()),
            (7, "metric_metadata".to_owned()),
            (8, "exemplars".to_owned()),
            (9, "histograms".to_owned()),
        ]
    );
    drop(store);
    let _again = ClickHouseStore::open(config(&server, "migrations"))
        .await
        .unwrap();
    let rows: u64 = client
        .query("SELECT count() FROM schema_migrations")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(rows, 9, "a second start applies nothing");

    let tenant_type: String = client
        .query("SELECT type FROM system.columns WHERE database = 'migrations' AND table = 'samples' AND name = 'tenant'")
        .fetch_one()
        .await
        .unwrap();
    let partition_key: String = client
        .query("SELECT partition_key FROM system.tables WHERE database = 'migrations' AND name = 'samples'")
        .fetch_one()
        .await
        .unwrap_or_default();
    if version < Features::MODERN {
        // The Debian package: 18.16, where LowCardinality is experimental and codecs missing.
        assert_eq!(
            version,
            ServerVersion {
                major: 18,
                minor: 16
            }
        );
        assert_eq!(tenant_type, "String");
    } else {
        assert_eq!(tenant_type, "LowCardinality(String)");
    }
    let create: String = client
        .query("SHOW CREATE TABLE samples")
        .fetch_one()
        .await
        .unwrap();
    assert!(
        create.contains("PARTITION BY intDiv(timestamp_ms, 86400000)")
            || partition_key.contains("intDiv"),
        "{create}"
    );
    assert!(create.contains("ReplacingMergeTree(version)"), "{create}");
}

#[tokio::test]
async fn a_database_from_a_newer_build_is_refused() {
    let server = Server::start();
    let store = ClickHouseStore::open(config(&server, "newer"))
        .await
        .unwrap();
    drop(store);
    server
        .client()
        .with_database("newer")
        .query("INSERT INTO schema_migrations VALUES (999, 'future', now())")
        .execute()
        .await
        .unwrap();
    let error = ClickHouseStore::open(config(&server, "newer"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("schema version 999"), "{error}");
}

#[tokio::test]
async fn reads_do_not_double_count_before_merges() {
    let server = Server::start();
    let client = server.client().with_database("dedup");
    let store = ClickHouseStore::open(config(&server, "dedup"))
        .await
        .unwrap();
    client.query("SYSTEM STOP MERGES").execute().await.unwrap();
    let series: &[(&str, &str)] = &[("__name__", "m"), ("job", "api")];
    let a = tenant("a");
    for round in 0..3 {
        store
            .write(
                &a,
                metrics(&[(series, &[(T0, 1.0), (T0 + 15_000, round as f64)])]),
                &at("metrics", 0, 0),
            )
            .await
            .unwrap();
        store
            .write(
                &a,
                conformance::spans(vec![conformance::span(1, 1, T0 as u64 * 1_000_000, "x")]),
                &at("spans", 0, 0),
            )
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let raw: u64 = client
        .query("SELECT count() FROM samples")
        .fetch_one()
        .await
        .unwrap();
    let parts: u64 = client
        .query("SELECT count() FROM system.parts WHERE database = 'dedup' AND table = 'samples' AND active")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (raw, parts),
        (6, 3),
        "three unmerged inserts of the same samples"
    );
    let selected = store.select(&a, &[], i64::MIN, i64::MAX).await.unwrap();
    assert_eq!(selected.len(), 1);
    let samples: Vec<(i64, f64)> = selected[0]
        .samples
        .iter()
        .map(|s| (s.timestamp_ms, s.value))
        .collect();
    assert_eq!(
        samples,
        [(T0, 1.0), (T0 + 15_000, 2.0)],
        "once each, latest write"
    );
    assert_eq!(store.row_count(&a, "spans").await.unwrap(), 1);
    assert_eq!(store.row_count(&a, "series").await.unwrap(), 1);
    client.query("SYSTEM START MERGES").execute().await.unwrap();
    client
        .query("OPTIMIZE TABLE samples FINAL")
        .execute()
        .await
        .unwrap();
    let merged: u64 = client
        .query("SELECT count() FROM samples")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(merged, 2, "a merge keeps one row per sample");
    assert_eq!(
        store.select(&a, &[], i64::MIN, i64::MAX).await.unwrap(),
        selected
    );
}

#[tokio::test]
async fn a_full_buffer_is_inserted_before_the_flush_but_offsets_wait_for_it() {
    let server = Server::start();
    let store = ClickHouseStore::open(ClickHouseConfig {
        insert_batch_rows: 10,
        ..config(&server, "batches")
    })
    .await
    .unwrap();
    let a = tenant("a");
    for i in 0..23 {
        let pod = format!("p{i}");
        let labels: &[(&str, &str)] = &[("__name__", "m"), ("pod", &pod)];
        store
            .write(
                &a,
                metrics(&[(labels, &[(T0 + i, 1.0)])]),
                &at("metrics", 0, i as u64),
            )
            .await
            .unwrap();
    }
    // Each write buffers a series and a sample: every fifth write fills the buffer, which
    // is inserted in the background while writes go on.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let visible = store
            .select(&a, &[], i64::MIN, i64::MAX)
            .await
            .unwrap()
            .len();
        assert!(visible <= 20, "the last 3 writes wait for the flush");
        if visible == 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {visible} series visible before the flush"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        store.durable_offsets().await.unwrap().is_empty(),
        "nothing is durable before a flush records it"
    );
    let durable = store.flush().await.unwrap();
    assert_eq!(durable.get(&("metrics".to_owned(), 0)), Some(&23));
    assert_eq!(
        store
            .select(&a, &[], i64::MIN, i64::MAX)
            .await
            .unwrap()
            .len(),
        23
    );
}

#[tokio::test]
async fn a_failed_insert_keeps_the_rows_for_the_next_flush() {
    let server = Server::start();
    let store = ClickHouseStore::open(config(&server, "failures"))
        .await
        .unwrap();
    let client = server.client().with_database("failures");
    let a = tenant("a");
    let labels: &[(&str, &str)] = &[("__name__", "m")];
    store
        .write(&a, metrics(&[(labels, &[(T0, 1.0)])]), &at("metrics", 0, 0))
        .await
        .unwrap();
    client
        .query("RENAME TABLE samples TO samples_away")
        .execute()
        .await
        .unwrap();
    let error = store.flush().await.unwrap_err();
    assert!(error.to_string().contains("samples"), "{error}");
    assert!(store.durable_offsets().await.unwrap().is_empty());
    client
        .query("RENAME TABLE samples_away TO samples")
        .execute()
        .await
        .unwrap();
    let durable = store.flush().await.unwrap();
    assert_eq!(durable.get(&("metrics".to_owned(), 0)), Some(&1));
    assert_eq!(
        store.select(&a, &[], i64::MIN, i64::MAX).await.unwrap()[0]
            .samples
            .len(),
        1
    );
}

#[tokio::test]
async fn a_failed_background_insert_is_reported_by_the_next_write_and_loses_nothing() {
    let server = Server::start();
    let store = ClickHouseStore::open(ClickHouseConfig {
        insert_batch_rows: 4,
        ..config(&server, "background_failures")
    })
    .await
    .unwrap();
    let client = server.client().with_database("background_failures");
    let a = tenant("a");
    let labels: &[(&str, &str)] = &[("__name__", "m")];
    client
        .query("RENAME TABLE samples TO samples_away")
        .execute()
        .await
        .unwrap();
    // A series row and three samples fill the buffer: the third write starts an insert
    // in the background, which fails; a later write reports it.
    let mut error = None;
    for i in 0..50u64 {
        let written = store
            .write(
                &a,
                metrics(&[(labels, &[(T0 + i as i64, i as f64)])]),
                &at("metrics", 0, i),
            )
            .await;
        if let Err(e) = written {
            error = Some((i, e));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (failed_at, error) = error.expect("a later write reports the failed insert");
    assert!(error.to_string().contains("samples"), "{error}");
    assert!(store.durable_offsets().await.unwrap().is_empty());
    client
        .query("RENAME TABLE samples_away TO samples")
        .execute()
        .await
        .unwrap();
    // Ingest would replay from the committed offsets; here the write that reported the
    // error is simply done again.
    store
        .write(
            &a,
            metrics(&[(labels, &[(T0 + failed_at as i64, failed_at as f64)])]),
            &at("metrics", 0, failed_at),
        )
        .await
        .unwrap();
    let durable = store.flush().await.unwrap();
    assert_eq!(
        durable.get(&("metrics".to_owned(), 0)),
        Some(&(failed_at + 1))
    );
    let stored = &store.select(&a, &[], i64::MIN, i64::MAX).await.unwrap()[0].samples;
    assert_eq!(
        stored.len() as u64,
        failed_at + 1,
        "the rows of the failed insert went back to the buffer"
    );
}

/// Regexes pushed down to ClickHouse mean what they mean in Prometheus: `label_values`
/// with only pushed-down matchers is answered by ClickHouse alone, so any difference shows.
#[tokio::test]
async fn regex_push_down_agrees_with_prometheus_semantics() {
    let server = Server::start();
    let store = ClickHouseStore::open(config(&server, "regexes"))
        .await
        .unwrap();
    let a = tenant("a");
    let values = [
        "a\nb",
        "aßb",
        "STRASSE",
        "straße",
        "١٢٣",
        "123",
        "café",
        "cafe",
        "x",
        "ſ",
        "K",
        "k",
        "a.b",
        "a+b",
        "[x]",
        "tab\there",
        "ünïcödé",
        "😀",
        "a😀b",
        "",
    ];
    for (i, value) in values.iter().enumerate() {
        let id = i.to_string();
        let labels: &[(&str, &str)] = &[("__name__", "m"), ("id", &id), ("v", value)];
        store
            .write(
                &a,
                metrics(&[(labels, &[(T0, 1.0)])]),
                &at("metrics", 0, i as u64),
            )
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    let patterns = [
        ".*",
        ".+",
        "a.b",
        "(?i)straße",
        "(?i)STRASSE",
        r"\d+",
        r"\w+",
        r"[^a]+",
        "x|",
        "caf(é|e)",
        r"\s",
        r"\S+",
        "[[:alpha:]]+",
        "(?m)^b$",
        "(?i)k",
        "(?i)s",
        "a.?b",
        ".{2}",
        r"\p{L}+",
        r"a\.b",
        r"\[x\]",
        "(a|b)*",
        "a[+.]b",
        "😀",
        r"a\x{1F600}b",
        ".",
        "(?s:.)*",
        "[a-c]{1,2}",
        "(?U)a.*b",
        "",
        "ü.*",
    ];
    for pattern in patterns {
        for op in [MatchOp::Regex, MatchOp::NotRegex] {
            let matcher = Matcher::new("v", op, pattern).unwrap();
            // Through ClickHouse: the ids of the series whose value matches.
            let got = store
                .label_values(&a, "id", std::slice::from_ref(&matcher))
                .await
                .unwrap();
            let mut expected: Vec<String> = values
                .iter()
                .enumerate()
                .filter(|(_, v)| matcher.matches(v))
                .map(|(i, _)| i.to_string())
                .collect();
            expected.sort();
            assert_eq!(got, expected, "{matcher}");
        }
    }
}

#[tokio::test]
async fn retention_drops_partitions_of_every_table() {
    let server = Server::start();
    let client = server.client().with_database("partitions");
    let store = ClickHouseStore::open(config(&server, "partitions"))
        .await
        .unwrap();
    let a = tenant("a");
    let labels: &[(&str, &str)] = &[("__name__", "m")];
    for day in 0..3i64 {
        let t = T0 + day * DAY;
        store
            .write(
                &a,
                metrics(&[(labels, &[(t, 1.0)])]),
                &at("metrics", 0, day as u64),
            )
            .await
            .unwrap();
        store
            .write(
                &a,
                conformance::logs(&["x"], t as u64 * 1_000_000),
                &at("logs", 0, day as u64),
            )
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    let partitions = |table: &'static str| {
        let client = client.clone();
        async move {
            let mut days: Vec<String> = client
                .query("SELECT DISTINCT partition FROM system.parts WHERE database = 'partitions' AND table = ? AND active")
                .bind(table)
                .fetch_all()
                .await
                .unwrap();
            days.sort();
            days
        }
    };
    let day0 = T0.div_euclid(DAY);
    let names = |days: &[i64]| {
        days.iter()
            .map(|d| (day0 + d).to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(partitions("samples").await, names(&[0, 1, 2]));
    assert_eq!(partitions("logs").await, names(&[0, 1, 2]));
    store.enforce_retention(T0 + 3 * DAY).await.unwrap();
    assert_eq!(partitions("samples").await, names(&[1, 2]));
    assert_eq!(partitions("logs").await, names(&[1, 2]));
    assert!(server.data_dir().join("data").exists());
}

// SQL over ClickHouse: what is pushed down, and that it means what DataFusion means.

/// The rows of `query` in `tenant_name`'s session, and the last scan of `table` in it.
async fn sql_scan(
    store: &ClickHouseStore,
    tenant_name: &str,
    query: &str,
    table: &str,
) -> (Vec<String>, Scan) {
    let context = store.session(&tenant(tenant_name)).await.unwrap();
    let batches = context
        .sql(query)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    let provider = context.table_provider(table).await.unwrap();
    let scan = ClickHouseTable::of(&provider)
        .unwrap()
        .last_scan()
        .unwrap_or_else(|| panic!("{query}: no scan of {table}"));
    (conformance::rows_text(&batches), scan)
}

/// `T0 + seconds` as an SQL timestamp literal.
fn timestamp(seconds: i64) -> String {
    let at = T0 / 1000 + seconds; // T0 is 2023-11-14T22:13:20Z
    let (hour, minute, second) = (at / 3600 % 24, at / 60 % 60, at % 60);
    format!("TIMESTAMP '2023-11-14T{hour:02}:{minute:02}:{second:02}Z'")
}

/// 100 log records of tenant `a`, one a second from T0: `line <i>`, severity 17 for every
/// tenth, 9 for the others.
async fn write_lines(store: &ClickHouseStore) {
    let start = (T0 as u64) * 1_000_000;
    let records = (0..100u64)
        .map(|i| {
            let severity = if i % 10 == 0 { 17 } else { 9 };
            conformance::log_record(&format!("line {i}"), severity, start + i * 1_000_000_000)
        })
        .collect();
    store
        .write(
            &tenant("a"),
            conformance::log_batch(records),
            &at("logs", 0, 0),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
}

#[tokio::test]
async fn sql_pushes_time_filters_projections_limits_and_counts_into_clickhouse() {
    let server = Server::start();
    let store = ClickHouseStore::open(config(&server, "sql_pushdown"))
        .await
        .unwrap();
    write_lines(&store).await;
    let (from, to) = (
        T0 * 1_000_000 + 10_000_000_000,
        T0 * 1_000_000 + 20_000_000_000,
    );

    // A time range: ClickHouse filters it, and sends only the one column asked for.
    let query = format!(
        "SELECT body FROM logs WHERE timestamp >= {} AND timestamp < {} ORDER BY body",
        timestamp(10),
        timestamp(20)
    );
    let (rows, scan) = sql_scan(&store, "a", &query, "logs").await;
    let expected: Vec<String> = (10..20).map(|i| format!("line {i}")).collect();
    assert_eq!(rows, expected);
    assert!(
        scan.sql
            .starts_with("SELECT body FROM logs FINAL WHERE tenant = 'a' AND "),
        "{}",
        scan.sql
    );
    assert!(
        scan.sql.contains(&format!("timestamp_ns >= {from}")),
        "{}",
        scan.sql
    );
    assert!(
        scan.sql.contains(&format!("timestamp_ns < {to}")),
        "{}",
        scan.sql
    );
    assert_eq!(scan.rows_received, 10, "only the rows in the range travel");

    // count(*) with pushed filters: ClickHouse counts, one row travels.
    let (rows, scan) = sql_scan(
        &store,
        "a",
        "SELECT count(*) FROM logs WHERE severity_number >= 17",
        "logs",
    )
    .await;
    assert_eq!(rows, ["10"]);
    assert_eq!(
        scan.sql,
        "SELECT toInt64(count()) FROM logs FINAL WHERE tenant = 'a' AND severity_number >= 17"
    );
    assert_eq!(scan.rows_received, 1);
    let (rows, scan) = sql_scan(&store, "a", "SELECT count(*) FROM logs", "logs").await;
    assert_eq!((rows, scan.rows_received), (vec!["100".to_owned()], 1));

    // Grouped aggregations: ClickHouse groups, one row per group travels, and each
    // aggregate but count comes with the count that tells SQL's NULL from ClickHouse's 0.
    let query = format!(
        "SELECT severity_number, count(*), min(body), max(timestamp), sum(flags) FROM logs \
         WHERE timestamp < {} GROUP BY severity_number ORDER BY severity_number",
        timestamp(50)
    );
    let (rows, scan) = sql_scan(&store, "a", &query, "logs").await;
    assert_eq!(
        rows,
        [
            "9,45,line 1,2023-11-14T22:14:09Z,0",
            "17,5,line 0,2023-11-14T22:14:00Z,0"
        ]
    );
    assert_eq!(
        scan.sql,
        format!(
            "SELECT severity_number, toInt64(count()), min(body), toInt64(count(body)), \
             max(timestamp_ns), toInt64(count(timestamp_ns)), toUInt64(sum(flags)), \
             toInt64(count(flags)) FROM logs FINAL WHERE tenant = 'a' AND timestamp_ns < {} \
             GROUP BY severity_number",
            T0 * 1_000_000 + 50_000_000_000
        )
    );
    assert_eq!(scan.rows_received, 2, "one row per group");
    // An average DataFusion takes over floats is taken over floats by ClickHouse too: its
    // integer sum of these fingerprints (random 64-bit keys) would wrap.
    let labels: Vec<Vec<(String, String)>> = (0..20)
        .map(|i| {
            vec![
                ("__name__".into(), "wide".into()),
                ("i".into(), i.to_string()),
            ]
        })
        .collect();
    let borrowed: Vec<Vec<(&str, &str)>> = labels
        .iter()
        .map(|l| l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
        .collect();
    let specs: Vec<conformance::SeriesSpec> = borrowed
        .iter()
        .map(|l| (l.as_slice(), &[(T0, 1.0)][..]))
        .collect();
    store
        .write(&tenant("a"), metrics(&specs), &at("metrics", 0, 0))
        .await
        .unwrap();
    store.flush().await.unwrap();
    let (ids, _) = sql_scan(&store, "a", "SELECT series_id FROM samples", "samples").await;
    let expected = ids
        .iter()
        .map(|id| id.parse::<u64>().unwrap() as f64)
        .sum::<f64>()
        / 20.0;
    let (rows, scan) = sql_scan(&store, "a", "SELECT avg(series_id) FROM samples", "samples").await;
    assert!(
        scan.sql.contains("avg(toFloat64(fingerprint))"),
        "{}",
        scan.sql
    );
    let average: f64 = rows[0].parse().unwrap();
    assert!(
        ((average - expected) / expected).abs() < 1e-9,
        "ClickHouse {average}, DataFusion's meaning {expected}"
    );

    // Not pushed: a float's max (NaN makes ClickHouse's depend on row order) and an
    // expression as argument. DataFusion aggregates the rows instead.
    for query in [
        "SELECT max(value) FROM samples",
        "SELECT sum(severity_number + 1) FROM logs",
    ] {
        let table = if query.contains("samples") {
            "samples"
        } else {
            "logs"
        };
        let context = store.session(&tenant("a")).await.unwrap();
        context.sql(query).await.unwrap().collect().await.unwrap();
        let provider = context.table_provider(table).await.unwrap();
        let scan = ClickHouseTable::of(&provider).unwrap().last_scan().unwrap();
        assert!(
            !scan.sql.contains("max(") && !scan.sql.contains("sum("),
            "{query}: {}",
            scan.sql
        );
    }

    // A limit with only pushed filters goes to ClickHouse.
    let (rows, scan) = sql_scan(
        &store,
        "a",
        "SELECT body, severity_number FROM logs WHERE severity_number = 9 LIMIT 3",
        "logs",
    )
    .await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.ends_with(",9")), "{rows:?}");
    assert!(
        // The columns in table order.
        scan.sql
            .starts_with("SELECT severity_number, body FROM logs FINAL WHERE"),
        "{}",
        scan.sql
    );
    assert!(scan.sql.ends_with(" LIMIT 3"), "{}", scan.sql);
    assert_eq!(scan.rows_received, 3);

    // A filter ClickHouse is not given is applied by DataFusion, with the limit after it.
    let query = format!(
        "SELECT body FROM logs WHERE upper(body) = 'LINE 42' AND timestamp >= {} LIMIT 5",
        timestamp(40)
    );
    let (rows, scan) = sql_scan(&store, "a", &query, "logs").await;
    assert_eq!(rows, ["line 42"]);
    assert!(scan.sql.contains("timestamp_ns >= "), "{}", scan.sql);
    assert!(
        !scan.sql.contains("upper") && !scan.sql.contains("LIMIT"),
        "{}",
        scan.sql
    );
    assert_eq!(
        scan.rows_received, 60,
        "the time filter was applied in ClickHouse, the other one after"
    );
}

#[tokio::test]
async fn sql_collapses_versions_not_yet_merged_and_filters_samples_on_their_key_only() {
    let server = Server::start();
    let client = server.client().with_database("sql_dedup");
    let store = ClickHouseStore::open(config(&server, "sql_dedup"))
        .await
        .unwrap();
    client.query("SYSTEM STOP MERGES").execute().await.unwrap();
    let series: &[(&str, &str)] = &[("__name__", "m"), ("job", "api")];
    let a = tenant("a");
    let start = T0 as u64 * 1_000_000;
    for round in 0..3 {
        store
            .write(
                &a,
                metrics(&[(series, &[(T0, round as f64), (T0 + 15_000, 5.0)])]),
                &at("metrics", 0, 0),
            )
            .await
            .unwrap();
        store
            .write(
                &a,
                conformance::spans(vec![conformance::span(1, 1, start, "x")]),
                &at("spans", 0, 0),
            )
            .await
            .unwrap();
        store
            .write(&a, conformance::logs(&["once"], start), &at("logs", 0, 0))
            .await
            .unwrap();
        store.flush().await.unwrap();
    }
    let raw: u64 = client
        .query("SELECT count() FROM samples")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(raw, 6, "three unmerged versions of two samples");

    let (rows, scan) = sql_scan(
        &store,
        "a",
        "SELECT timestamp_ms, value FROM samples ORDER BY timestamp_ms",
        "samples",
    )
    .await;
    assert_eq!(
        rows,
        ["1700000000000,2.0", "1700000015000,5.0"],
        "the latest writes, once"
    );
    assert_eq!(scan.rows_received, 6);
    for (query, table, expected) in [
        ("SELECT count(*) FROM samples", "samples", "2"),
        ("SELECT count(*) FROM series", "series", "1"),
        ("SELECT count(*) FROM spans", "spans", "1"),
        ("SELECT count(*) FROM logs", "logs", "1"),
        ("SELECT count(*) FROM spans WHERE name = 'x'", "spans", "1"),
    ] {
        let (rows, _) = sql_scan(&store, "a", query, table).await;
        assert_eq!(rows, [expected], "{query}");
    }

    // An older version matching a filter on `value` must not come back: that filter is
    // applied after the collapse, never in ClickHouse.
    for (query, expected) in [
        ("SELECT timestamp_ms FROM samples WHERE value = 0", vec![]),
        ("SELECT count(*) FROM samples WHERE value = 0", vec!["0"]),
        (
            "SELECT timestamp_ms FROM samples WHERE value = 2",
            vec!["1700000000000"],
        ),
    ] {
        let (rows, scan) = sql_scan(&store, "a", query, "samples").await;
        assert_eq!(rows, expected, "{query}");
        assert!(!scan.sql.contains("value ="), "{}", scan.sql);
        assert_eq!(scan.rows_received, 6, "{query}");
    }

    // The key columns are filtered in ClickHouse.
    let (ids, _) = sql_scan(&store, "a", "SELECT series_id FROM series", "series").await;
    let fingerprint = &ids[0];
    let query = format!(
        "SELECT value FROM samples WHERE series_id = {fingerprint} AND timestamp_ms > {T0}"
    );
    let (rows, scan) = sql_scan(&store, "a", &query, "samples").await;
    assert_eq!(rows, ["5.0"]);
    assert!(
        scan.sql.contains(&format!("fingerprint = {fingerprint}"))
            && scan.sql.contains(&format!("timestamp_ms > {T0}")),
        "{}",
        scan.sql
    );
    assert_eq!(scan.rows_received, 3, "one sample's three versions");
    let (rows, _) = sql_scan(&store, "a", "SELECT value FROM samples LIMIT 1", "samples").await;
    assert_eq!(rows.len(), 1);
}

/// Each filter gives the same rows through ClickHouse as DataFusion gives over a copy of
/// the table in memory, and is pushed down exactly when expected.
#[tokio::test]
async fn pushed_filters_mean_what_datafusion_means() {
    use datafusion::datasource::MemTable;

    let server = Server::start();
    let store = ClickHouseStore::open(config(&server, "sql_semantics"))
        .await
        .unwrap();
    let bodies = [
        "disk full",
        "it's",
        "back\\slash",
        "a\nb",
        "über",
        "ok",
        "",
        "50%",
        "DISK FULL",
        "é",
        "x'); DROP TABLE logs; --",
        "ok",
    ];
    let start = (T0 as u64) * 1_000_000;
    let minute = 60_000_000_000u64;
    let records = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let mut record =
                conformance::log_record(body, [0, 9, 13, 17, 21][i % 5], start + i as u64 * minute);
            if i % 2 == 0 {
                record.trace_id = Some(model::TraceId([i as u8; 16]));
            }
            record
        })
        .collect();
    store
        .write(
            &tenant("a"),
            conformance::log_batch(records),
            &at("logs", 0, 7),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();

    let context = store.session(&tenant("a")).await.unwrap();
    let all = context
        .sql("SELECT * FROM logs")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let schema = all[0].schema();
    context
        .register_table(
            "logs_copy",
            Arc::new(MemTable::try_new(schema, vec![all]).unwrap()),
        )
        .unwrap();
    let provider = context.table_provider("logs").await.unwrap();
    let logs = ClickHouseTable::of(&provider).unwrap();
    let trace0 = "00000000000000000000000000000000";
    let trace2 = "02020202020202020202020202020202";

    // (filter, pushed down?); None: either is right.
    let filters: Vec<(String, Option<bool>)> = vec![
        ("severity_number >= 17".into(), Some(true)),
        ("severity_number = 9".into(), Some(true)),
        ("severity_number <> 9".into(), Some(true)),
        ("9 < severity_number".into(), Some(true)),
        ("NOT (severity_number < 10)".into(), Some(true)),
        ("severity_number BETWEEN 5 AND 13".into(), Some(true)),
        ("severity_number NOT BETWEEN 5 AND 13".into(), Some(true)),
        ("severity_number IN (9, 17)".into(), Some(true)),
        ("severity_number NOT IN (9, 17)".into(), Some(true)),
        ("trace_id IS NULL".into(), Some(true)),
        ("trace_id IS NOT NULL".into(), Some(true)),
        (format!("trace_id = '{trace2}'"), Some(true)),
        (format!("trace_id <> '{trace2}'"), Some(true)),
        (format!("NOT (trace_id = '{trace2}')"), Some(true)),
        (format!("trace_id IN ('{trace0}', '{trace2}')"), Some(true)),
        (format!("trace_id NOT IN ('{trace2}')"), Some(true)),
        (
            format!("trace_id NOT IN ('{trace0}', '{trace2}')"),
            Some(true),
        ),
        ("NOT (trace_id IN ('x', 'y', 'z'))".into(), Some(true)),
        // Lists of more than three stay IN lists in DataFusion (shorter ones become ORs),
        // and there NULL differs: in 18.16 `NULL NOT IN (...)` is 1.
        (
            format!("trace_id NOT IN ('{trace0}', '{trace2}', 'x', 'y')"),
            Some(true),
        ),
        (
            format!("NOT (trace_id IN ('{trace0}', '{trace2}', 'x', 'y'))"),
            Some(true),
        ),
        (
            format!("trace_id IN ('{trace0}', '{trace2}', 'x', 'y')"),
            Some(true),
        ),
        ("severity_number NOT IN (0, 9, 13, 1000)".into(), Some(true)),
        (
            "trace_id NOT IN ('x', 'y') OR severity_number = 13".into(),
            Some(true),
        ),
        ("NOT (trace_id NOT IN ('x'))".into(), Some(true)),
        (format!("trace_id > '{trace0}'"), Some(true)),
        ("trace_id = 'x' OR severity_number > 0".into(), Some(true)),
        (
            "NOT (trace_id = 'x' OR severity_number > 100)".into(),
            Some(true),
        ),
        (
            "NOT (trace_id = 'x' AND severity_number > 0)".into(),
            Some(true),
        ),
        ("NOT (trace_id IS NULL AND body = 'ok')".into(), Some(true)),
        ("trace_id LIKE '02%'".into(), Some(true)),
        ("trace_id NOT LIKE '02%'".into(), Some(true)),
        ("NOT (trace_id LIKE '0%')".into(), Some(true)),
        ("body = 'it''s'".into(), Some(true)),
        ("body = 'back\\slash'".into(), Some(true)),
        ("body = 'x''); DROP TABLE logs; --'".into(), Some(true)),
        ("body = ''".into(), Some(true)),
        ("body IN ('ok', 'é', '')".into(), Some(true)),
        (
            "body IN ('ok', 'é', '', 'it''s', 'back\\slash')".into(),
            Some(true),
        ),
        ("body > 'm'".into(), Some(true)),
        ("body < 'é'".into(), Some(true)),
        ("body LIKE '%full%'".into(), Some(true)),
        ("body NOT LIKE 'disk%'".into(), Some(true)),
        ("body LIKE '_k'".into(), Some(true)),
        ("body LIKE 'ü%'".into(), Some(true)),
        ("body LIKE '_ber'".into(), Some(true)),
        ("body LIKE 'a%b'".into(), Some(true)),
        ("body LIKE 'a_b'".into(), Some(true)),
        ("body LIKE '%'".into(), None), // DataFusion drops it: always true
        ("body LIKE '50\\%'".into(), Some(false)),
        ("body ILIKE 'disk%'".into(), Some(false)),
        ("upper(body) = 'DISK FULL'".into(), Some(false)),
        ("length(body) > 3".into(), Some(false)),
        ("severity_number > 9.5".into(), None),
        ("bus_offset > -1".into(), None),
        ("bus_index = 3".into(), Some(true)),
        ("flags = 0".into(), Some(true)),
        (
            "service_name = 'checkout' AND severity_number > 0".into(),
            Some(true),
        ),
        (format!("timestamp >= {}", timestamp(240)), Some(true)),
        (
            format!(
                "timestamp BETWEEN {} AND {}",
                timestamp(120),
                timestamp(300)
            ),
            Some(true),
        ),
        (
            format!("observed_timestamp < {}", timestamp(180)),
            Some(true),
        ),
        (
            format!("timestamp < {} OR upper(body) = 'OK'", timestamp(60)),
            Some(false),
        ),
    ];
    for (filter, pushed) in filters {
        let query = |table: &str| {
            format!("SELECT bus_index, body FROM {table} WHERE {filter} ORDER BY bus_index")
        };
        let run = |query: String| {
            let context = context.clone();
            async move {
                let batches = context
                    .sql(&query)
                    .await
                    .unwrap_or_else(|e| panic!("{query}: {e}"))
                    .collect()
                    .await
                    .unwrap_or_else(|e| panic!("{query}: {e}"));
                conformance::rows_text(&batches)
            }
        };
        let through_clickhouse = run(query("logs")).await;
        let sql = logs.last_scan().unwrap().sql;
        let in_memory = run(query("logs_copy")).await;
        assert_eq!(
            through_clickhouse, in_memory,
            "{filter}: ClickHouse got {sql}"
        );
        if let Some(pushed) = pushed {
            assert_eq!(
                sql.contains("tenant = 'a' AND "),
                pushed,
                "{filter}: ClickHouse got {sql}"
            );
        }
    }
}

/// A tenant id may hold a quote (`'` is allowed in them): it is escaped, so a tenant named
/// to close the string and widen the condition sees only its own rows.
#[tokio::test]
async fn sql_quotes_the_tenant() {
    let server = Server::start();
    let store = ClickHouseStore::open(config(&server, "sql_tenants"))
        .await
        .unwrap();
    let start = (T0 as u64) * 1_000_000;
    store
        .write(
            &tenant("a"),
            conformance::logs(&["a's"], start),
            &at("logs", 0, 0),
        )
        .await
        .unwrap();
    let sly = "'OR(1)OR'";
    store
        .write(
            &tenant(sly),
            conformance::logs(&["sly"], start),
            &at("logs", 0, 1),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    let (rows, scan) = sql_scan(&store, sly, "SELECT body FROM logs", "logs").await;
    assert_eq!(rows, ["sly"], "{}", scan.sql);
    let (rows, _) = sql_scan(&store, sly, "SELECT count(*) FROM logs", "logs").await;
    assert_eq!(rows, ["1"]);
    let (rows, _) = sql_scan(&store, "a", "SELECT body FROM logs", "logs").await;
    assert_eq!(rows, ["a's"]);
}

/// Results larger than an HTTP chunk and than a batch: rows split across chunks are put
/// together, batches follow the session's batch size, and sample versions that straddle
/// two batches still collapse into one.
#[tokio::test]
async fn large_results_stream_in_batches() {
    let server = Server::start();
    let client = server.client().with_database("sql_large");
    let store = ClickHouseStore::open(config(&server, "sql_large"))
        .await
        .unwrap();
    client.query("SYSTEM STOP MERGES").execute().await.unwrap();
    let a = tenant("a");
    let start = (T0 as u64) * 1_000_000;
    let records = (0..20_000u64)
        .map(|i| {
            let body = format!("record {i} {}", "x".repeat((i % 50) as usize));
            conformance::log_record(&body, (i % 24) as i32, start + i)
        })
        .collect();
    store
        .write(&a, conformance::log_batch(records), &at("logs", 0, 0))
        .await
        .unwrap();
    // 5,000 samples over 50 series, written three times with different values.
    for round in 0..3u64 {
        let pods: Vec<String> = (0..50).map(|p| format!("p{p}")).collect();
        let samples: Vec<Vec<(i64, f64)>> = (0..50)
            .map(|p| {
                (0..100)
                    .map(|t| {
                        (
                            T0 + t * 1000,
                            (round * 1_000_000 + p * 100 + t as u64) as f64,
                        )
                    })
                    .collect()
            })
            .collect();
        let labels: Vec<[(&str, &str); 2]> = pods
            .iter()
            .map(|p| [("__name__", "m"), ("pod", p.as_str())])
            .collect();
        let series: Vec<conformance::SeriesSpec> = labels
            .iter()
            .zip(&samples)
            .map(|(l, s)| (&l[..], &s[..]))
            .collect();
        store
            .write(&a, metrics(&series), &at("metrics", 0, round))
            .await
            .unwrap();
        store.flush().await.unwrap();
    }

    let context = store.session(&a).await.unwrap();
    context
        .sql("SET datafusion.execution.batch_size = 7")
        .await
        .unwrap();
    let query = |sql: &'static str| {
        let context = context.clone();
        async move {
            let batches = context.sql(sql).await.unwrap().collect().await.unwrap();
            conformance::rows_text(&batches)
        }
    };
    let bytes: u64 = (0..20_000u64)
        .map(|i| format!("record {i} ").len() as u64 + i % 50)
        .sum();
    assert_eq!(
        query(
            "SELECT count(body), count(DISTINCT body), sum(length(body)), sum(severity_number), \
             min(timestamp), max(observed_timestamp), count(trace_id) FROM logs"
        )
        .await,
        [format!(
            "20000,20000,{bytes},{},2023-11-14T22:13:20Z,2023-11-14T22:13:20.000019999Z,0",
            (0..20_000u64).map(|i| i % 24).sum::<u64>()
        )]
    );
    let provider = context.table_provider("logs").await.unwrap();
    assert_eq!(
        ClickHouseTable::of(&provider)
            .unwrap()
            .last_scan()
            .unwrap()
            .rows_received,
        20_000
    );
    let batches = context
        .sql("SELECT body FROM logs")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let sizes: Vec<usize> = batches.iter().map(|b| b.num_rows()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 20_000);
    assert!(
        sizes.iter().all(|n| *n <= 7) && sizes.len() >= 20_000 / 7,
        "{sizes:?}"
    );
    // The latest round's values: 2,000,000 + p * 100 + t for every (p, t).
    let latest: u64 = (0..50u64)
        .flat_map(|p| (0..100u64).map(move |t| 2_000_000 + p * 100 + t))
        .sum();
    assert_eq!(
        query("SELECT count(value), sum(value), count(DISTINCT series_id) FROM samples").await,
        [format!("5000,{latest}.0,50")]
    );
    let provider = context.table_provider("samples").await.unwrap();
    assert_eq!(
        ClickHouseTable::of(&provider)
            .unwrap()
            .last_scan()
            .unwrap()
            .rows_received,
        15_000,
        "three versions of each sample travel, one is kept"
    );
}
