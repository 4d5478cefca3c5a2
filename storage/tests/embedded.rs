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
