//! A model-based property test of delivery's bounded buffer and its disk spool.
//!
//! Random sequences of operations — requests of random sizes pushed, the gateway (a local
//! axum receiver behind a TCP relay) switched between accepting, failing with 503, refusing
//! with 400, hanging and refusing connections, stops with and without a timeout spill, restarts from the spool directory,
//! spooled files corrupted or truncated while the agent is down, a buffer small enough to
//! overflow — end with the gateway up and a clean stop, and are checked against a model:
//!
//! - every request pushed was accepted by the gateway exactly once, in push order; or
//!   refused by it (a 400, counted as rejected); or dropped (counted), either because its
//!   spooled file was damaged or because the buffer overflowed — and then it was one of
//!   the oldest waiting at the moment of the drop (only the one being sent is spared);
//! - nothing is received twice, a damaged request is never accepted, and nothing is left
//!   on disk at the end.
//!
//! Each push is one request (`max_samples_per_request` = 1) whose only sample carries the
//! request's number as its value, so the receiver knows exactly what arrived.
//! `DELIVERY_MODEL_CASES` raises the case count (default 12, to keep CI fast).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use delivery::{Delivery, RemoteWriteConfig, prompb};
use proptest::prelude::*;
use prost::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Up = 0,
    Down = 1,
    Refusing = 2,
    Hanging = 3,
    /// New connections are closed at once (keep-alive ones get 503s).
    Unreachable = 4,
}

#[derive(Clone, Debug)]
enum Damage {
    /// One byte flipped at this fraction of the file.
    Corrupt(f64),
    /// Cut to this fraction of its length.
    Truncate(f64),
    /// Cut inside the header (a crash of the disk rather than of the agent).
    TruncateHeader(usize),
}

#[derive(Clone, Debug)]
enum Op {
    /// A request whose label carries this many padding bytes (its size).
    Push(usize),
    Gateway(Mode),
    /// Let the sender work a while.
    Wait(u64),
    /// Stop (close and wait, or with `timeout` abort after a short wait and spill), damage
    /// one spooled file (the `pick`-th, modulo their number) if asked, start again.
    Restart {
        timeout: bool,
        damage: Option<(usize, Damage)>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let mode = prop_oneof![
        Just(Mode::Up),
        Just(Mode::Down),
        Just(Mode::Refusing),
        Just(Mode::Hanging),
        Just(Mode::Unreachable),
    ];
    let damage = prop_oneof![
        (0.0..1.0f64).prop_map(Damage::Corrupt),
        (0.0..1.0f64).prop_map(Damage::Truncate),
        (0usize..12).prop_map(Damage::TruncateHeader),
    ];
    prop_oneof![
        8 => (0usize..1500).prop_map(Op::Push),
        2 => mode.prop_map(Op::Gateway),
        2 => (0u64..60).prop_map(Op::Wait),
        1 => (any::<bool>(), proptest::option::of((any::<usize>(), damage)))
            .prop_map(|(timeout, damage)| Op::Restart { timeout, damage }),
    ]
}

/// What the receiver saw, in order: (request number, accepted).
type Log = Arc<Mutex<Vec<(u64, bool)>>>;

/// The request numbers in a remote-write body; `None` if it is not one.
fn decode(body: &[u8]) -> Option<Vec<u64>> {
    let raw = snap::raw::Decoder::new().decompress_vec(body).ok()?;
    let request = prompb::WriteRequest::decode(&raw[..]).ok()?;
    Some(
        request
            .timeseries
            .iter()
            .flat_map(|s| s.samples.iter().map(|x| x.value as u64))
            .collect(),
    )
}

/// What the receiver got that was no remote-write request at all (a damaged body sent).
const GARBAGE: u64 = u64::MAX;

/// The gateway stand-in: answers by the current mode; records what it answered 200 or 400.
async fn receiver(mode: Arc<AtomicU8>, log: Log) -> String {
    let relay_mode = mode.clone();
    let app = Router::new().route(
        "/api/v1/write",
        post(move |body: Bytes| {
            let (mode, log) = (mode.clone(), log.clone());
            async move {
                match mode.load(Ordering::SeqCst) {
                    0 | 2 => {
                        let accepted = mode.load(Ordering::SeqCst) == 0;
                        let mut log = log.lock().unwrap();
                        for id in decode(&body).unwrap_or_else(|| vec![GARBAGE]) {
                            log.push((id, accepted));
                        }
                        if accepted {
                            StatusCode::OK
                        } else {
                            StatusCode::BAD_REQUEST
                        }
                    }
                    1 | 4 => StatusCode::SERVICE_UNAVAILABLE,
                    _ => {
                        // Longer than the client's timeout: it gives up and retries.
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // In front: a TCP relay that drops new connections while the gateway is unreachable.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v1/write", relay.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = relay.accept().await else {
                return;
            };
            if relay_mode.load(Ordering::SeqCst) == Mode::Unreachable as u8 {
                drop(inbound);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(server).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    url
}

fn series(id: u64, pad: usize, seed: &mut u64) -> prompb::TimeSeries {
    // Pseudo-random padding, so snappy cannot shrink it and sizes really vary.
    let padding: String = (0..pad)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(b'a' + (*seed >> 59) as u8 % 26)
        })
        .collect();
    prompb::TimeSeries {
        labels: vec![
            prompb::Label {
                name: Bytes::from_static(b"__name__"),
                value: Bytes::from_static(b"model"),
            },
            prompb::Label {
                name: Bytes::from_static(b"pad"),
                value: Bytes::from(padding),
            },
        ],
        samples: vec![prompb::Sample {
            value: id as f64,
            timestamp: id as i64,
        }],
        ..Default::default()
    }
}

fn spooled_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "req"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// A drop seen right after the push of request `id`: `count` requests went.
#[derive(Debug)]
struct DropEvent {
    id: u64,
    count: u64,
    /// How much of the receiver's log was there before the push, and after the drop was
    /// seen (the sender may have got some through meanwhile).
    before: usize,
    after: usize,
}

struct Running {
    delivery: Delivery,
    task: tokio::task::JoinHandle<()>,
}

struct Harness {
    config: RemoteWriteConfig,
    running: Option<Running>,
    /// Drops and refusals counted by delivery instances already stopped.
    dropped: u64,
    rejected: u64,
    /// The running instance's drops already attributed to events.
    seen_dropped: u64,
}

impl Harness {
    fn start(&mut self) {
        let (delivery, task) = Delivery::start(self.config.clone()).unwrap();
        self.running = Some(Running { delivery, task });
        self.seen_dropped = 0;
    }

    async fn stop(&mut self, timeout: bool) {
        let Some(Running { delivery, mut task }) = self.running.take() else {
            return;
        };
        delivery.close();
        let wait = if timeout {
            Duration::from_millis(30)
        } else {
            Duration::from_secs(20)
        };
        if tokio::time::timeout(wait, &mut task).await.is_err() {
            assert!(timeout, "a clean stop did not finish within {wait:?}");
            task.abort();
            let _ = task.await;
            delivery.spill();
        }
        let stats = delivery.stats();
        self.dropped += stats.dropped_samples;
        self.rejected += stats.rejected_samples;
    }
}

async fn run_case(ops: Vec<Op>, buffer_bytes: usize, spill_after: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mode = Arc::new(AtomicU8::new(Mode::Up as u8));
    let log: Log = Arc::default();
    let url = receiver(mode.clone(), log.clone()).await;
    let config = RemoteWriteConfig {
        timeout: Duration::from_millis(150),
        max_samples_per_request: 1,
        flush_interval: Duration::from_millis(10),
        buffer_bytes,
        min_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(20),
        spool_dir: Some(dir.path().to_path_buf()),
        spill_after_requests: spill_after,
        ..RemoteWriteConfig::new(url)
    };
    let mut harness = Harness {
        config,
        running: None,
        dropped: 0,
        rejected: 0,
        seen_dropped: 0,
    };
    harness.start();
    let mut pushed = 0u64;
    let mut seed = 0x5eed_u64;
    let mut damaged: BTreeSet<u64> = BTreeSet::new();
    let mut events: Vec<DropEvent> = Vec::new();
    for op in ops {
        match op {
            Op::Push(pad) => {
                let id = pushed;
                pushed += 1;
                let before = log.lock().unwrap().len();
                let running = harness.running.as_ref().unwrap();
                running.delivery.push(vec![series(id, pad, &mut seed)]);
                let dropped = running.delivery.stats().dropped_samples;
                let after = log.lock().unwrap().len();
                let count = dropped - harness.seen_dropped;
                harness.seen_dropped = dropped;
                if count > 0 {
                    events.push(DropEvent {
                        id,
                        count,
                        before,
                        after,
                    });
                }
            }
            Op::Gateway(m) => mode.store(m as u8, Ordering::SeqCst),
            Op::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Op::Restart { timeout, damage } => {
                harness.stop(timeout).await;
                if let Some((pick, damage)) = damage {
                    let files = spooled_files(dir.path());
                    let whole = files
                        .get(pick % files.len().max(1))
                        .map(|path| (path, std::fs::read(path).unwrap()))
                        .and_then(|(path, data)| {
                            // One damaged before and not reached by the sender yet stays so.
                            let ids = decode(data.get(12..)?)?;
                            Some((path, data, ids))
                        });
                    if let Some((path, mut data, ids)) = whole {
                        damaged.extend(ids);
                        match damage {
                            Damage::Corrupt(at) => {
                                // In the body: a flipped sample count leaves the request
                                // whole, only a wrong count would follow.
                                let body = data.len() - 12;
                                let i = 12 + ((body as f64 * at) as usize).min(body - 1);
                                data[i] ^= 0x5a;
                            }
                            Damage::Truncate(to) => {
                                data.truncate((data.len() as f64 * to) as usize);
                            }
                            Damage::TruncateHeader(to) => data.truncate(to),
                        }
                        std::fs::write(path, &data).unwrap();
                    }
                }
                harness.start();
            }
        }
    }
    // The end: the gateway takes everything. A stop gives up on the gateway after one
    // failed attempt (what was unsent stays on disk), so a last start sends that.
    mode.store(Mode::Up as u8, Ordering::SeqCst);
    harness.stop(false).await;
    harness.start();
    harness.stop(false).await;

    let log = log.lock().unwrap().clone();
    assert!(
        !log.iter().any(|r| r.0 == GARBAGE),
        "a damaged body was sent: {log:?}"
    );
    let mut seen = HashSet::new();
    for (id, _) in &log {
        assert!(seen.insert(*id), "request {id} received twice: {log:?}");
    }
    let accepted: Vec<u64> = log.iter().filter(|r| r.1).map(|r| r.0).collect();
    assert!(
        accepted.windows(2).all(|w| w[0] < w[1]),
        "accepted out of push order: {accepted:?}"
    );
    let refused = log.len() as u64 - accepted.len() as u64;
    for id in &accepted {
        assert!(!damaged.contains(id), "damaged request {id} was accepted");
    }
    assert_eq!(harness.rejected, refused, "refusals counted");
    let lost: Vec<u64> = (0..pushed).filter(|i| !seen.contains(i)).collect();
    assert_eq!(
        harness.dropped,
        lost.len() as u64,
        "dropped count vs requests never received {lost:?} (damaged {damaged:?})"
    );
    // Oldest first: replay the drops. At each, the model's queue is what was pushed, not
    // received before the push and not dropped earlier; the lost requests must be among its
    // oldest: `count`, one more for the request being sent, those the sender got through
    // meanwhile, and the damaged ones (their drop is counted whenever the sender meets them).
    let mut assigned: HashSet<u64> = HashSet::new();
    for event in &events {
        let received: HashSet<u64> = log[..event.before].iter().map(|r| r.0).collect();
        let slack = 1 + (event.after - event.before) + damaged.len();
        let taken: Vec<u64> = (0..=event.id)
            .filter(|i| !received.contains(i) && !assigned.contains(i))
            .take(event.count as usize + slack)
            .filter(|i| !seen.contains(i) && !damaged.contains(i))
            .take(event.count as usize)
            .collect();
        assigned.extend(taken);
    }
    for id in &lost {
        assert!(
            assigned.contains(id) || damaged.contains(id),
            "request {id} was dropped but was not among the oldest when the buffer overflowed \
             (drops {events:?}, received {log:?}, damaged {damaged:?})"
        );
    }
    let left = spooled_files(dir.path());
    assert!(left.is_empty(), "left on disk after a clean stop: {left:?}");
}

fn cases() -> u32 {
    std::env::var("DELIVERY_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_request_arrives_once_in_order_or_is_counted(
        ops in proptest::collection::vec(op(), 1..40),
        buffer_bytes in 1_500usize..8_000,
        spill_after in 0usize..4,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run_case(ops, buffer_bytes, spill_after));
    }
}
