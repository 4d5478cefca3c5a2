//! The embedded log: the shared bus contract, plus what only a log on local disk has
//! (segments, recovery from torn writes and damage, retention, group commit).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod conformance;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bus::embedded::{EmbeddedBus, EmbeddedBusConfig};
use bus::{Bus, BusError, ProduceRecord};
use conformance::read_all;
use tempfile::TempDir;

fn small_segments() -> EmbeddedBusConfig {
    EmbeddedBusConfig {
        segment_bytes: 8 * 1024,
        max_batch_bytes: 4 * 1024,
        index_interval_bytes: 512,
        retention_bytes: None,
        retention_seconds: None,
        ..EmbeddedBusConfig::default()
    }
}

fn open(dir: &Path, config: EmbeddedBusConfig) -> Arc<dyn Bus> {
    Arc::new(EmbeddedBus::open(dir, config).unwrap())
}

fn value(i: usize) -> Vec<u8> {
    format!("record-{i:05}-{}", "x".repeat(i % 97)).into_bytes()
}

async fn write_values(bus: &dyn Bus, topic: &str, range: std::ops::Range<usize>) {
    for chunk in range.collect::<Vec<_>>().chunks(7) {
        let records = chunk
            .iter()
            .map(|i| ProduceRecord::new(value(*i)).with_partition(0))
            .collect();
        bus.produce(topic, records).await.unwrap();
    }
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_produce_fetch() {
    let dir = TempDir::new().unwrap();
    conformance::produce_then_fetch_keeps_order_keys_and_timestamps(open(
        dir.path(),
        small_segments(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_keys() {
    let dir = TempDir::new().unwrap();
    conformance::keys_pick_stable_partitions(open(dir.path(), EmbeddedBusConfig::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_errors() {
    let dir = TempDir::new().unwrap();
    conformance::errors_name_the_problem(open(dir.path(), EmbeddedBusConfig::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_consumer_groups_survive_restart() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().to_path_buf();
    conformance::consumer_group_commits_and_resumes(move || {
        let path = path.clone();
        Box::pin(async move { open(&path, small_segments()) })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_group_members() {
    let dir = TempDir::new().unwrap();
    conformance::group_members_share_partitions(open(dir.path(), EmbeddedBusConfig::default()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_poll_wakes() {
    let dir = TempDir::new().unwrap();
    conformance::poll_wakes_on_new_records(open(dir.path(), EmbeddedBusConfig::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_close() {
    let dir = TempDir::new().unwrap();
    conformance::closed_bus_refuses_writes(open(dir.path(), EmbeddedBusConfig::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_roll_and_reads_cross_them_after_restart() {
    let dir = TempDir::new().unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), small_segments()).unwrap();
        bus.ensure_topic("t", 1).await.unwrap();
        write_values(&bus, "t", 0..600).await;
        assert!(
            bus.segment_count("t", 0).unwrap() > 5,
            "8 KiB segments must have rolled"
        );
        bus.close().await.unwrap();
    }
    let partition = dir.path().join("topics/t/0");
    let sealed_indexes = fs::read_dir(&partition)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "idx")
        })
        .count();
    assert_eq!(
        sealed_indexes,
        log_files(&partition).len() - 1,
        "every sealed segment has an index"
    );

    let bus = EmbeddedBus::open(dir.path(), small_segments()).unwrap();
    let all = read_all(&bus, "t", 0, 0).await;
    assert_eq!(all.len(), 600);
    for (i, record) in all.iter().enumerate() {
        assert_eq!(record.offset, i as u64);
        assert_eq!(record.value.as_ref(), value(i).as_slice());
    }
    // Random-access reads land exactly, whichever segment holds the offset.
    for start in [0u64, 1, 99, 250, 251, 598, 599] {
        let got = bus.fetch("t", 0, start, 1).await.unwrap();
        assert_eq!(got[0].offset, start);
        assert_eq!(got[0].value.as_ref(), value(start as usize).as_slice());
    }
    // Writing continues after the recovered end.
    let next = bus
        .produce("t", vec![ProduceRecord::new(&b"after"[..])])
        .await
        .unwrap();
    assert_eq!(next[0].offset, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_and_garbage_tails_are_cut_and_writing_resumes() {
    let dir = TempDir::new().unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), small_segments()).unwrap();
        bus.ensure_topic("t", 1).await.unwrap();
        write_values(&bus, "t", 0..20).await;
        bus.close().await.unwrap();
    }
    let partition = dir.path().join("topics/t/0");
    let last = log_files(&partition).pop().unwrap();
    let intact_len = fs::metadata(&last).unwrap().len();
    // A crash mid-write leaves part of a batch, and some filesystems leave zeros.
    let mut file = OpenOptions::new().append(true).open(&last).unwrap();
    file.write_all(&[0x40, 0, 0, 0, 1, 2, 3]).unwrap();
    file.write_all(&[0u8; 300]).unwrap();
    drop(file);

    let bus = EmbeddedBus::open(dir.path(), small_segments()).unwrap();
    assert_eq!(
        fs::metadata(&last).unwrap().len(),
        intact_len,
        "the torn tail was cut"
    );
    let all = read_all(&bus, "t", 0, 0).await;
    assert_eq!(all.len(), 20);
    let next = bus
        .produce("t", vec![ProduceRecord::new(&b"resumed"[..])])
        .await
        .unwrap();
    assert_eq!(next[0].offset, 20);
    let back = bus.fetch("t", 0, 20, 1024).await.unwrap();
    assert_eq!(back[0].value.as_ref(), b"resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_inside_a_sealed_segment_is_an_error_never_bad_records() {
    let dir = TempDir::new().unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), small_segments()).unwrap();
        bus.ensure_topic("t", 1).await.unwrap();
        write_values(&bus, "t", 0..300).await;
        bus.close().await.unwrap();
    }
    let partition = dir.path().join("topics/t/0");
    let first = log_files(&partition).remove(0);
    let mut bytes = fs::read(&first).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    fs::write(&first, &bytes).unwrap();

    let bus = EmbeddedBus::open(dir.path(), small_segments()).unwrap();
    let mut offset = 0;
    let mut saw_error = false;
    while offset < 300 {
        match bus.fetch("t", 0, offset, 256).await {
            Ok(records) => {
                for record in &records {
                    assert_eq!(
                        record.value.as_ref(),
                        value(record.offset as usize).as_slice(),
                        "a damaged record was returned"
                    );
                }
                offset = records.last().unwrap().offset + 1;
            }
            Err(BusError::Corrupt { reason, .. }) => {
                assert!(
                    reason.contains("checksum") || reason.contains("batch"),
                    "{reason}"
                );
                saw_error = true;
                offset += 1;
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert!(saw_error, "the flipped bit went unnoticed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_drops_whole_old_segments_only() {
    let dir = TempDir::new().unwrap();
    let config = EmbeddedBusConfig {
        retention_bytes: Some(20 * 1024),
        ..small_segments()
    };
    let bus = EmbeddedBus::open(dir.path(), config).unwrap();
    bus.ensure_topic("t", 1).await.unwrap();
    write_values(&bus, "t", 0..800).await;
    let before = bus.partition_size_bytes("t", 0).unwrap();
    assert!(before > 20 * 1024);
    let removed = bus.enforce_retention(i64::MAX);
    assert!(removed > 0);
    let after = bus.partition_size_bytes("t", 0).unwrap();
    assert!(after <= 20 * 1024, "{after} bytes left");
    let watermarks = bus.watermarks("t", 0).await.unwrap();
    assert!(watermarks.log_start > 0);
    assert_eq!(watermarks.high_watermark, 800);
    // Everything from the new start is intact; before it is out of range.
    let kept = read_all(&bus, "t", 0, watermarks.log_start).await;
    assert_eq!(kept.len() as u64, 800 - watermarks.log_start);
    let err = bus.fetch("t", 0, 0, 1024).await.unwrap_err();
    assert!(
        matches!(err, BusError::OffsetOutOfRange { log_start, .. } if log_start == watermarks.log_start),
        "{err}"
    );
    // A consumer group positioned before the start is moved to it, not stuck.
    let mut consumer = bus.subscribe("late", &["t"]).await.unwrap();
    let got = consumer
        .poll(1, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got[0].offset, watermarks.log_start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_uses_record_timestamps_and_keeps_the_active_segment() {
    let dir = TempDir::new().unwrap();
    let config = EmbeddedBusConfig {
        retention_seconds: Some(60),
        ..small_segments()
    };
    let bus = EmbeddedBus::open(dir.path(), config).unwrap();
    bus.ensure_topic("t", 1).await.unwrap();
    let old =
        (0..300).map(|i| ProduceRecord::new(value(i)).with_timestamp_ms(1_000_000 + i as i64));
    for chunk in old.collect::<Vec<_>>().chunks(10) {
        bus.produce("t", chunk.to_vec()).await.unwrap();
    }
    let fresh: Vec<ProduceRecord> = (300..310)
        .map(|i| ProduceRecord::new(value(i)).with_timestamp_ms(2_000_000))
        .collect();
    bus.produce("t", fresh).await.unwrap();
    // At 1_100_000 ms nothing is older than 60 s... except records before 1_040_000: none.
    assert_eq!(bus.enforce_retention(1_000_000 + 60_000), 0);
    // Much later, every sealed segment has only old records; the active one stays.
    let removed = bus.enforce_retention(2_000_000 + 59_000);
    assert!(removed > 0);
    let watermarks = bus.watermarks("t", 0).await.unwrap();
    assert_eq!(bus.segment_count("t", 0).unwrap(), 1);
    let kept = read_all(&bus, "t", 0, watermarks.log_start).await;
    assert!(
        kept.iter().any(|r| r.timestamp_ms == 2_000_000),
        "fresh records survive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_share_fsyncs_and_lose_nothing() {
    let dir = TempDir::new().unwrap();
    let bus = Arc::new(EmbeddedBus::open(dir.path(), EmbeddedBusConfig::default()).unwrap());
    bus.ensure_topic("t", 1).await.unwrap();
    let mut tasks = Vec::new();
    for task in 0..16u32 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..50u32 {
                let record = ProduceRecord::new(format!("{task}:{i}").into_bytes());
                offsets.push(bus.produce("t", vec![record]).await.unwrap()[0].offset);
            }
            offsets
        }));
    }
    let mut all_offsets = Vec::new();
    for task in tasks {
        let offsets = task.await.unwrap();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "a producer's records keep their order"
        );
        all_offsets.extend(offsets);
    }
    all_offsets.sort_unstable();
    assert_eq!(
        all_offsets,
        (0..800).collect::<Vec<u64>>(),
        "offsets are dense and unique"
    );

    let mut registry = prometheus_client::registry::Registry::default();
    bus.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("meerkat_bus_produced_records_total{topic=\"t\"} 800"),
        "{text}"
    );
    let fsyncs: f64 = text
        .lines()
        .find(|l| l.starts_with("meerkat_bus_requests_per_fsync_count"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        fsyncs < 800.0,
        "800 concurrent requests took {fsyncs} fsyncs: no group commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_are_refused_and_big_requests_split() {
    let dir = TempDir::new().unwrap();
    let bus = EmbeddedBus::open(dir.path(), small_segments()).unwrap();
    bus.ensure_topic("t", 1).await.unwrap();
    let err = bus
        .produce("t", vec![ProduceRecord::new(vec![0u8; 5000])])
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::RecordTooLarge { limit: 4096, .. }),
        "{err}"
    );
    assert!(!err.is_retryable());
    // 40 KiB in one request: split into batches that fit, all acknowledged in order.
    let records: Vec<ProduceRecord> = (0..40)
        .map(|i| ProduceRecord::new(vec![i as u8; 1000]))
        .collect();
    let positions = bus.produce("t", records).await.unwrap();
    assert_eq!(
        positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
        (0..40).collect::<Vec<u64>>()
    );
    let all = read_all(&bus, "t", 0, 0).await;
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, r)| r.value.len() == 1000 && r.value[0] == i as u8)
    );
}

#[test]
fn invalid_config_is_refused_with_the_field_named() {
    let dir = TempDir::new().unwrap();
    let config = EmbeddedBusConfig {
        segment_bytes: 100,
        ..EmbeddedBusConfig::default()
    };
    let err = EmbeddedBus::open(dir.path(), config).unwrap_err();
    assert!(err.to_string().contains("segment_bytes"), "{err}");
    let config = EmbeddedBusConfig {
        retention_bytes: Some(1024 * 1024),
        ..EmbeddedBusConfig::default()
    };
    let err = EmbeddedBus::open(dir.path(), config).unwrap_err();
    assert!(err.to_string().contains("retention_bytes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowering_max_batch_bytes_keeps_batches_written_under_the_old_limit() {
    let dir = TempDir::new().unwrap();
    let big = EmbeddedBusConfig {
        segment_bytes: 256 * 1024,
        max_batch_bytes: 64 * 1024,
        ..small_segments()
    };
    {
        let bus = EmbeddedBus::open(dir.path(), big.clone()).unwrap();
        bus.ensure_topic("t", 1).await.unwrap();
        for round in 0..12u8 {
            bus.produce("t", vec![ProduceRecord::new(vec![round; 40_000])])
                .await
                .unwrap();
        }
        bus.close().await.unwrap();
    }
    let bus = EmbeddedBus::open(dir.path(), small_segments()).unwrap();
    let all = read_all(&bus, "t", 0, 0).await;
    assert_eq!(all.len(), 12, "nothing was cut for exceeding the new limit");
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, r)| r.value.len() == 40_000 && r.value[0] == i as u8)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_far_from_the_tail_is_kept_aside_and_its_offsets_never_reused() {
    let dir = TempDir::new().unwrap();
    // A crash can tear at most group_commit_max_bytes + max_batch_bytes = 8 KiB at the end.
    let config = EmbeddedBusConfig {
        segment_bytes: 1024 * 1024,
        group_commit_max_bytes: 4 * 1024,
        ..small_segments()
    };
    {
        let bus = EmbeddedBus::open(dir.path(), config.clone()).unwrap();
        bus.ensure_topic("t", 1).await.unwrap();
        write_values(&bus, "t", 0..700).await;
        bus.close().await.unwrap();
    }
    let partition = dir.path().join("topics/t/0");
    let segment = log_files(&partition).pop().unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    let damaged_at = 10 * 1024;
    assert!(bytes.len() > damaged_at + 20 * 1024);
    bytes[damaged_at] ^= 0x01;
    fs::write(&segment, &bytes).unwrap();

    let bus = EmbeddedBus::open(dir.path(), config).unwrap();
    // The lost offsets are a gap below the high watermark: read until nothing comes.
    let mut survivors = Vec::new();
    loop {
        let next = survivors.len() as u64;
        let batch = bus.fetch("t", 0, next, 4096).await.unwrap();
        if batch.is_empty() {
            break;
        }
        survivors.extend(batch);
    }
    assert!(!survivors.is_empty() && survivors.len() < 700);
    for (i, record) in survivors.iter().enumerate() {
        assert_eq!(record.value.as_ref(), value(i).as_slice());
    }
    let saved: Vec<_> = fs::read_dir(&partition)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".damaged-at-"))
        .collect();
    assert_eq!(saved.len(), 1, "the damaged bytes are kept for inspection");
    // Consumers may know offsets up to 699: new records must come after them.
    let next = bus
        .produce("t", vec![ProduceRecord::new(&b"after damage"[..])])
        .await
        .unwrap();
    assert!(
        next[0].offset >= 700,
        "offset {} handed out again",
        next[0].offset
    );
    let back = bus
        .fetch("t", 0, survivors.len() as u64, 1024)
        .await
        .unwrap();
    assert_eq!(back[0].offset, next[0].offset, "readers skip the gap");
    assert_eq!(back[0].value.as_ref(), b"after damage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_header_in_skipped_batches_is_an_error_not_a_silent_skip() {
    let dir = TempDir::new().unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), small_segments()).unwrap();
        bus.ensure_topic("t", 1).await.unwrap();
        write_values(&bus, "t", 0..300).await;
        bus.close().await.unwrap();
    }
    let partition = dir.path().join("topics/t/0");
    let first = log_files(&partition).remove(0);
    let mut bytes = fs::read(&first).unwrap();
    // The record count of the first batch (bytes 16..20): a reader skipping it would
    // otherwise land on the wrong offsets.
    bytes[16] ^= 0x02;
    fs::write(&first, &bytes).unwrap();

    let bus = EmbeddedBus::open(dir.path(), small_segments()).unwrap();
    let err = bus.fetch("t", 0, 10, 1024).await.unwrap_err();
    assert!(matches!(err, BusError::Corrupt { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_cannot_open_the_same_bus() {
    let dir = TempDir::new().unwrap();
    let first = EmbeddedBus::open(dir.path(), EmbeddedBusConfig::default()).unwrap();
    let err = EmbeddedBus::open(dir.path(), EmbeddedBusConfig::default()).unwrap_err();
    assert!(matches!(err, BusError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("another process"), "{err}");
    first.close().await.unwrap();
    drop(first);
    EmbeddedBus::open(dir.path(), EmbeddedBusConfig::default())
        .expect("the lock is released with the bus");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrepresentably_long_retention_keeps_everything() {
    let dir = TempDir::new().unwrap();
    let config = EmbeddedBusConfig {
        retention_seconds: Some(u64::MAX),
        ..small_segments()
    };
    let bus = EmbeddedBus::open(dir.path(), config).unwrap();
    bus.ensure_topic("t", 1).await.unwrap();
    write_values(&bus, "t", 0..300).await;
    assert_eq!(bus.enforce_retention(i64::MAX), 0);
    assert_eq!(bus.watermarks("t", 0).await.unwrap().log_start, 0);
}
