//! Crash test of the embedded log: a child process appends in a loop and is killed with
//! SIGKILL at random moments, many times over the same directory. After every kill the log
//! is reopened and must hold every record the child was told was durable, in order, with no
//! damaged record ever returned.
//!
//! The same executable is parent and child (`--child DIR`), so the child is exactly the
//! code under test; this file therefore has its own `main` (`harness = false`).
//!
//! Tuning: `BUS_CRASH_ITERATIONS` (default 40) and `BUS_CRASH_SEED` (default: random, printed
//! so a failure can be replayed).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus::embedded::{EmbeddedBus, EmbeddedBusConfig};
use bus::{Bus, ProduceRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOPIC: &str = "crash";
const PARTITIONS: u32 = 2;
/// Concurrent producer tasks in the child; several per partition, so group commit is
/// exercised while the process dies.
const TASKS: u32 = 6;

fn config() -> EmbeddedBusConfig {
    EmbeddedBusConfig {
        segment_bytes: 64 * 1024,
        max_batch_bytes: 32 * 1024,
        index_interval_bytes: 1024,
        retention_bytes: None,
        retention_seconds: None,
        ..EmbeddedBusConfig::default()
    }
}

/// The bytes of record `seq` of task `task`: a header naming it, and a body derived from it,
/// so the reader can tell a damaged or misplaced record from a good one.
fn payload(task: u32, seq: u64) -> Vec<u8> {
    let len = ((seq * 7919 + u64::from(task) * 104_729) % 1500) as usize;
    let mut out = format!("{task}:{seq}:").into_bytes();
    let mut state = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(task);
    for _ in 0..len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push(state as u8);
    }
    out
}

fn parse(value: &[u8]) -> Option<(u32, u64)> {
    let mut fields = value.splitn(3, |b| *b == b':');
    let task = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let seq = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    fields.next()?;
    Some((task, seq))
}

/// Reads a whole partition and checks every record; returns each task's records in order.
async fn verify_partition(bus: &EmbeddedBus, partition: u32) -> HashMap<u32, Vec<u64>> {
    let watermarks = bus.watermarks(TOPIC, partition).await.expect("watermarks");
    assert_eq!(
        watermarks.log_start, 0,
        "nothing may be removed: retention is off"
    );
    let mut sequences: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut next = 0;
    while next < watermarks.high_watermark {
        let records = bus
            .fetch(TOPIC, partition, next, 256 * 1024)
            .await
            .unwrap_or_else(|e| panic!("reading partition {partition} at {next}: {e}"));
        assert!(
            !records.is_empty(),
            "no records at {next} below the high watermark"
        );
        for record in records {
            assert_eq!(record.offset, next, "offsets are dense");
            let (task, seq) =
                parse(&record.value).unwrap_or_else(|| panic!("unparseable record at {next}"));
            assert_eq!(
                task % PARTITIONS,
                partition,
                "record of task {task} in the wrong partition"
            );
            assert_eq!(
                record.value,
                payload(task, seq),
                "record {task}:{seq} at offset {next} is damaged"
            );
            sequences.entry(task).or_default().push(seq);
            next += 1;
        }
    }
    sequences
}

fn child(dir: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let bus = Arc::new(EmbeddedBus::open(dir, config()).expect("open"));
        bus.ensure_topic(TOPIC, PARTITIONS).await.expect("topic");
        // Continue each task's sequence where the log (as recovered) ends.
        let mut next_seq: HashMap<u32, u64> = HashMap::new();
        for partition in 0..PARTITIONS {
            for (task, seqs) in verify_partition(&bus, partition).await {
                next_seq.insert(task, seqs.last().map_or(0, |s| s + 1));
            }
        }
        let stdout = Arc::new(Mutex::new(std::io::stdout()));
        let mut handles = Vec::new();
        for task in 0..TASKS {
            let bus = bus.clone();
            let stdout = stdout.clone();
            let mut seq = next_seq.get(&task).copied().unwrap_or(0);
            handles.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(u64::from(task) ^ seq);
                loop {
                    let count = rng.random_range(1..=20u64);
                    let records = (seq..seq + count)
                        .map(|s| {
                            ProduceRecord::new(payload(task, s)).with_partition(task % PARTITIONS)
                        })
                        .collect();
                    bus.produce(TOPIC, records).await.expect("produce");
                    seq += count;
                    // Acknowledged: tell the parent before anything else happens.
                    let mut out = stdout.lock().expect("stdout");
                    use std::io::Write;
                    writeln!(out, "ack {task} {}", seq - 1).expect("write ack");
                    out.flush().expect("flush ack");
                }
            }));
        }
        for handle in handles {
            let _ = handle.await;
        }
    });
}

fn parent() {
    let iterations: u32 = std::env::var("BUS_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("BUS_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("crash test: {iterations} kills, seed {seed} (BUS_CRASH_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::TempDir::new().expect("temp dir");
    let exe = std::env::current_exe().expect("own executable");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The highest sequence number each task was told is durable, across all runs.
    let mut acknowledged: HashMap<u32, u64> = HashMap::new();
    let mut total_acks = 0u64;
    let started = Instant::now();

    for iteration in 0..iterations {
        let mut child = Command::new(&exe)
            .arg("--child")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace();
                if parts.next() == Some("ack") {
                    let task: u32 = parts.next().and_then(|t| t.parse().ok()).expect("task");
                    let seq: u64 = parts.next().and_then(|s| s.parse().ok()).expect("seq");
                    acks.push((task, seq));
                }
            }
            acks
        });
        // Sometimes kill during start-up recovery, mostly mid-stream.
        let delay = if rng.random_bool(0.15) {
            rng.random_range(1..30)
        } else {
            rng.random_range(30..400)
        };
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().expect("SIGKILL child");
        let status = child.wait().expect("reap child");
        assert!(
            !status.success(),
            "the child must die by the signal, not exit: {status}"
        );
        let acks = reader.join().expect("ack reader");
        total_acks += acks.len() as u64;
        for (task, seq) in acks {
            let best = acknowledged.entry(task).or_insert(seq);
            *best = (*best).max(seq);
        }

        runtime.block_on(async {
            let bus = EmbeddedBus::open(dir.path(), config()).expect("reopen after kill");
            // A child killed before its topic was created (a slow start on a loaded
            // machine) wrote nothing: fine only if nothing was ever acknowledged.
            if let Err(bus::BusError::UnknownTopic { .. }) = bus.watermarks(TOPIC, 0).await {
                assert!(
                    acknowledged.is_empty(),
                    "iteration {iteration}: the topic is gone but writes were acknowledged"
                );
                bus.close().await.expect("close");
                return;
            }
            let mut found: HashMap<u32, Vec<u64>> = HashMap::new();
            for partition in 0..PARTITIONS {
                found.extend(verify_partition(&bus, partition).await);
            }
            for (task, seqs) in &found {
                let expected: Vec<u64> = (0..seqs.len() as u64).collect();
                assert!(seqs == &expected, "task {task}: records out of order or missing");
            }
            for (task, acked) in &acknowledged {
                let present = found.get(task).map_or(0, |s| s.len() as u64);
                assert!(
                    present > *acked,
                    "iteration {iteration}: task {task} was acknowledged up to {acked} but only {present} records survived"
                );
            }
            bus.close().await.expect("close");
        });
    }
    assert!(
        total_acks > u64::from(iterations),
        "the child barely wrote ({total_acks} acknowledgements): the test proved nothing"
    );
    println!(
        "crash test: ok — {iterations} kills, {total_acks} acknowledged produce calls, all present, in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--child") {
        Some(i) => child(Path::new(
            args.get(i + 1).expect("--child needs a directory"),
        )),
        // `cargo test -- --list` and friends: this test has a single, unnamed case.
        None if args.iter().any(|a| a == "--list") => println!("crash: test"),
        None => parent(),
    }
}
