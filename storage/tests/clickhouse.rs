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
use storage::clickhouse::{ClickHouseConfig, ClickHouseStore, Features, ServerVersion};
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
async fn select_with_every_matcher() {
    conformance::select_with_every_matcher(&ClickHouse::new("select_with_every_matcher")).await;
}

#[tokio::test]
async fn label_names_and_values() {
    conformance::label_names_and_values(&ClickHouse::new("label_names_and_values")).await;
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
    assert_eq!(rows, 6, "a second start applies nothing");

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
    // Each write buffers a series and a sample: every fifth write fills the buffer.
    let visible = store
        .select(&a, &[], i64::MIN, i64::MAX)
        .await
        .unwrap()
        .len();
    assert_eq!(visible, 20, "series visible before the flush");
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
