//! Model-based property test of the embedded log.
//!
//! Random sequences of appends, torn appends (a crash mid-write), damaged tails, restarts,
//! retention runs, reads and offset commits are applied both to the real log and to a
//! simple in-memory model that knows the segment-roll and retention rules. After every step
//! the two must agree on the readable range, the segment count and the bytes on disk, and
//! every read must return exactly the model's records.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bus::embedded::{EmbeddedBus, EmbeddedBusConfig};
use bus::{Bus, BusError, ProduceRecord, TopicPartition};
use proptest::prelude::*;
use tempfile::TempDir;

const TOPIC: &str = "model";
const PARTITIONS: u32 = 2;
const SEGMENT_BYTES: u64 = 4096;
const RETENTION_BYTES: u64 = 12 * 1024;
const RETENTION_SECONDS: u64 = 60;
/// Batch header plus per-record overhead, from the documented on-disk format.
const BATCH_HEADER: u64 = 28;
const RECORD_OVERHEAD: u64 = 16;

fn config() -> EmbeddedBusConfig {
    EmbeddedBusConfig {
        segment_bytes: SEGMENT_BYTES,
        max_batch_bytes: SEGMENT_BYTES,
        index_interval_bytes: 256,
        retention_bytes: Some(RETENTION_BYTES),
        retention_seconds: Some(RETENTION_SECONDS),
        // Retention runs only when the test says so, with the test's clock.
        retention_check_interval_seconds: 1_000_000_000,
        ..EmbeddedBusConfig::default()
    }
}

#[derive(Clone, Debug, PartialEq)]
struct ModelRecord {
    offset: u64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    timestamp_ms: i64,
}

#[derive(Clone, Debug)]
struct ModelBatch {
    records: Vec<ModelRecord>,
    size: u64,
}

#[derive(Clone, Debug)]
struct ModelSegment {
    base: u64,
    batches: Vec<ModelBatch>,
}

impl ModelSegment {
    fn size(&self) -> u64 {
        self.batches.iter().map(|b| b.size).sum()
    }

    fn next_offset(&self) -> u64 {
        self.batches
            .last()
            .and_then(|b| b.records.last())
            .map_or(self.base, |r| r.offset + 1)
    }

    fn max_timestamp(&self) -> i64 {
        self.batches
            .iter()
            .flat_map(|b| &b.records)
            .map(|r| r.timestamp_ms)
            .max()
            .unwrap_or(i64::MIN)
    }
}

#[derive(Clone, Debug)]
struct ModelPartition {
    segments: Vec<ModelSegment>,
    committed: Option<u64>,
}

impl ModelPartition {
    fn new() -> Self {
        Self {
            segments: vec![ModelSegment {
                base: 0,
                batches: vec![],
            }],
            committed: None,
        }
    }

    fn next_offset(&self) -> u64 {
        self.segments.last().map_or(0, ModelSegment::next_offset)
    }

    fn log_start(&self) -> u64 {
        self.segments[0].base
    }

    fn size(&self) -> u64 {
        self.segments.iter().map(ModelSegment::size).sum()
    }

    /// The writer's roll rule: a batch that would overflow a non-empty segment starts a new one.
    fn roll_if_needed(&mut self, batch_size: u64) {
        let last = self
            .segments
            .last()
            .expect("a partition always has a segment");
        if last.size() + batch_size > SEGMENT_BYTES && last.size() > 0 {
            let base = self.next_offset();
            self.segments.push(ModelSegment {
                base,
                batches: vec![],
            });
        }
    }

    fn append(&mut self, batch: ModelBatch) {
        self.roll_if_needed(batch.size);
        self.segments.last_mut().unwrap().batches.push(batch);
    }

    fn retention(&mut self, now_ms: i64) {
        let cutoff = now_ms - (RETENTION_SECONDS as i64) * 1000;
        let mut total = self.size();
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            if !(total > RETENTION_BYTES || oldest.max_timestamp() < cutoff) {
                break;
            }
            total -= oldest.size();
            self.segments.remove(0);
        }
    }

    fn records_from(&self, from: u64) -> Vec<&ModelRecord> {
        self.segments
            .iter()
            .flat_map(|s| &s.batches)
            .flat_map(|b| &b.records)
            .filter(|r| r.offset >= from)
            .collect()
    }
}

#[derive(Clone, Debug)]
struct RecordSpec {
    key: Option<Vec<u8>>,
    value_len: usize,
    timestamp_step_ms: i64,
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        partition: u32,
        records: Vec<RecordSpec>,
    },
    /// The process dies while writing this batch: only a prefix reaches the file.
    TornAppend {
        partition: u32,
        records: Vec<RecordSpec>,
        keep: f64,
    },
    /// The newest batch on disk is damaged (bit rot or a lying disk).
    DamageTail {
        partition: u32,
        at: f64,
        bit: u8,
    },
    Restart,
    Retention {
        advance_ms: i64,
    },
    Read {
        partition: u32,
        from: f64,
        max_bytes: usize,
    },
    Commit {
        partition: u32,
        at: f64,
    },
}

fn record_spec() -> impl Strategy<Value = RecordSpec> + Clone {
    (
        prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        0usize..300,
        0i64..1000,
    )
        .prop_map(|(key, value_len, timestamp_step_ms)| RecordSpec {
            key,
            value_len,
            timestamp_step_ms,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let records = prop::collection::vec(record_spec(), 1..8);
    prop_oneof![
        8 => (0..PARTITIONS, records.clone()).prop_map(|(partition, records)| Op::Append { partition, records }),
        2 => (0..PARTITIONS, records, 0.0f64..1.0).prop_map(|(partition, records, keep)| Op::TornAppend { partition, records, keep }),
        1 => (0..PARTITIONS, 0.0f64..1.0, 0u8..8).prop_map(|(partition, at, bit)| Op::DamageTail { partition, at, bit }),
        2 => Just(Op::Restart),
        2 => (0i64..120_000).prop_map(|advance_ms| Op::Retention { advance_ms }),
        3 => (0..PARTITIONS, 0.0f64..1.0, 1usize..3000).prop_map(|(partition, from, max_bytes)| Op::Read { partition, from, max_bytes }),
        1 => (0..PARTITIONS, 0.0f64..=1.0).prop_map(|(partition, at)| Op::Commit { partition, at }),
    ]
}

struct Harness {
    dir: TempDir,
    bus: Option<EmbeddedBus>,
    model: Vec<ModelPartition>,
    now_ms: i64,
    counter: u64,
}

impl Harness {
    async fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
        bus.ensure_topic(TOPIC, PARTITIONS).await.unwrap();
        Self {
            dir,
            bus: Some(bus),
            model: (0..PARTITIONS).map(|_| ModelPartition::new()).collect(),
            now_ms: 1_000_000_000,
            counter: 0,
        }
    }

    fn bus(&self) -> &EmbeddedBus {
        self.bus.as_ref().unwrap()
    }

    async fn restart(&mut self) {
        let bus = self.bus.take().unwrap();
        bus.close().await.unwrap();
        drop(bus);
        self.bus = Some(EmbeddedBus::open(self.dir.path(), config()).unwrap());
    }

    fn build(&mut self, specs: &[RecordSpec]) -> (Vec<ProduceRecord>, Vec<ModelRecord>, u64) {
        self.now_ms += 1000;
        let mut produce = Vec::new();
        let mut model = Vec::new();
        let mut size = BATCH_HEADER;
        for spec in specs {
            self.counter += 1;
            let mut value = format!("#{}:", self.counter).into_bytes();
            value.resize(value.len() + spec.value_len, (self.counter % 251) as u8);
            let timestamp_ms = self.now_ms + spec.timestamp_step_ms;
            size +=
                RECORD_OVERHEAD + spec.key.as_ref().map_or(0, Vec::len) as u64 + value.len() as u64;
            let mut record = ProduceRecord::new(value.clone()).with_timestamp_ms(timestamp_ms);
            if let Some(key) = &spec.key {
                record = record.with_key(key.clone());
            }
            produce.push(record);
            model.push(ModelRecord {
                offset: 0,
                key: spec.key.clone(),
                value,
                timestamp_ms,
            });
        }
        (produce, model, size)
    }

    async fn append(&mut self, partition: u32, specs: &[RecordSpec]) {
        let (records, mut model_records, size) = self.build(specs);
        let records = records
            .into_iter()
            .map(|r| r.with_partition(partition))
            .collect();
        let positions = self.bus().produce(TOPIC, records).await.unwrap();
        let model = &mut self.model[partition as usize];
        let base = model.next_offset();
        for (i, (position, record)) in positions.iter().zip(&mut model_records).enumerate() {
            assert_eq!(position.partition, partition);
            assert_eq!(
                position.offset,
                base + i as u64,
                "offsets continue the log densely"
            );
            record.offset = position.offset;
        }
        model.append(ModelBatch {
            records: model_records,
            size,
        });
    }

    fn last_log_file(&self, partition: u32) -> PathBuf {
        last_log_file(&self.bus().partition_dir(TOPIC, partition))
    }

    async fn torn_append(&mut self, partition: u32, specs: &[RecordSpec], keep: f64) {
        let before_file = self.last_log_file(partition);
        let before_len = fs::metadata(&before_file).unwrap().len();
        let (records, _, size) = self.build(specs);
        let records = records
            .into_iter()
            .map(|r| r.with_partition(partition))
            .collect();
        self.bus().produce(TOPIC, records).await.unwrap();
        let after_file = self.last_log_file(partition);
        let start = if after_file == before_file {
            before_len
        } else {
            0
        };
        let written = fs::metadata(&after_file).unwrap().len() - start;
        assert_eq!(written, size, "the batch has the documented size");
        let bus = self.bus.take().unwrap();
        bus.close().await.unwrap();
        drop(bus);
        // Keep a strict prefix of the batch, as a crash mid-write would.
        let kept = ((written as f64) * keep) as u64;
        OpenOptions::new()
            .write(true)
            .open(&after_file)
            .unwrap()
            .set_len(start + kept.min(written - 1))
            .unwrap();
        self.model[partition as usize].roll_if_needed(size);
        self.bus = Some(EmbeddedBus::open(self.dir.path(), config()).unwrap());
    }

    async fn damage_tail(&mut self, partition: u32, at: f64, bit: u8) {
        let model = &mut self.model[partition as usize];
        let last = model.segments.last_mut().unwrap();
        let Some(batch) = last.batches.last() else {
            return; // nothing in the active segment to damage
        };
        let segment_size = last.size();
        let batch_start = segment_size - batch.size;
        let position = batch_start + ((batch.size as f64 * at) as u64).min(batch.size - 1);
        last.batches.pop();
        let file = self.last_log_file(partition);
        let bus = self.bus.take().unwrap();
        bus.close().await.unwrap();
        drop(bus);
        let handle = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        let mut byte = [0u8; 1];
        handle.read_exact_at(&mut byte, position).unwrap();
        byte[0] ^= 1 << bit;
        handle.write_all_at(&byte, position).unwrap();
        drop(handle);
        self.bus = Some(EmbeddedBus::open(self.dir.path(), config()).unwrap());
    }

    async fn read(&self, partition: u32, from: f64, max_bytes: usize) {
        let model = &self.model[partition as usize];
        let (start, end) = (model.log_start(), model.next_offset());
        let from = start + ((end - start) as f64 * from) as u64;
        let expected = model.records_from(from);
        let mut got = Vec::new();
        let mut next = from;
        while next < end {
            let batch = self
                .bus()
                .fetch(TOPIC, partition, next, max_bytes)
                .await
                .unwrap();
            assert!(
                !batch.is_empty(),
                "no progress at offset {next} (end {end})"
            );
            next = batch.last().unwrap().offset + 1;
            got.extend(batch);
        }
        assert_eq!(got.len(), expected.len(), "records from offset {from}");
        for (record, model) in got.iter().zip(expected) {
            assert_eq!(record.offset, model.offset);
            assert_eq!(
                record.value.as_ref(),
                model.value.as_slice(),
                "value at {}",
                model.offset
            );
            assert_eq!(
                record.key.as_deref(),
                model.key.as_deref(),
                "key at {}",
                model.offset
            );
            assert_eq!(record.timestamp_ms, model.timestamp_ms);
        }
        if start > 0 {
            let err = self
                .bus()
                .fetch(TOPIC, partition, start - 1, max_bytes)
                .await
                .unwrap_err();
            assert!(matches!(err, BusError::OffsetOutOfRange { .. }), "{err}");
        }
    }

    async fn commit(&mut self, partition: u32, at: f64) {
        let offset = (self.model[partition as usize].next_offset() as f64 * at) as u64;
        let mut consumer = self.bus().subscribe("model-group", &[TOPIC]).await.unwrap();
        consumer
            .commit(&[(TopicPartition::new(TOPIC, partition), offset)])
            .await
            .unwrap();
        self.model[partition as usize].committed = Some(offset);
    }

    async fn check(&self) {
        for partition in 0..PARTITIONS {
            let model = &self.model[partition as usize];
            let watermarks = self.bus().watermarks(TOPIC, partition).await.unwrap();
            assert_eq!(
                watermarks.log_start,
                model.log_start(),
                "log start of partition {partition}"
            );
            assert_eq!(
                watermarks.high_watermark,
                model.next_offset(),
                "high watermark of partition {partition}"
            );
            assert_eq!(
                self.bus().segment_count(TOPIC, partition).unwrap(),
                model.segments.len(),
                "segments of partition {partition}"
            );
            assert_eq!(
                self.bus().partition_size_bytes(TOPIC, partition).unwrap(),
                model.size(),
                "bytes of partition {partition}"
            );
            let committed = self
                .bus()
                .committed_offset("model-group", TOPIC, partition)
                .await
                .unwrap();
            assert_eq!(
                committed, model.committed,
                "committed offset of partition {partition}"
            );
        }
    }

    async fn apply(&mut self, op: &Op) {
        match op {
            Op::Append { partition, records } => self.append(*partition, records).await,
            Op::TornAppend {
                partition,
                records,
                keep,
            } => self.torn_append(*partition, records, *keep).await,
            Op::DamageTail { partition, at, bit } => self.damage_tail(*partition, *at, *bit).await,
            Op::Restart => self.restart().await,
            Op::Retention { advance_ms } => {
                self.now_ms += advance_ms;
                self.bus().enforce_retention(self.now_ms);
                let now = self.now_ms;
                self.model.iter_mut().for_each(|m| m.retention(now));
            }
            Op::Read {
                partition,
                from,
                max_bytes,
            } => self.read(*partition, *from, *max_bytes).await,
            Op::Commit { partition, at } => self.commit(*partition, *at).await,
        }
        self.check().await;
    }
}

fn last_log_file(dir: &Path) -> PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max()
        .unwrap()
}

fn cases() -> u32 {
    std::env::var("BUS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn embedded_log_behaves_like_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut harness = Harness::new().await;
            for op in &ops {
                harness.apply(op).await;
            }
            // Whatever happened, a final restart reads back exactly the model.
            harness.restart().await;
            harness.check().await;
            for partition in 0..PARTITIONS {
                harness.read(partition, 0.0, 1 << 20).await;
            }
        });
    }
}
