//! The Kafka engine against a real broker: the shared bus contract, plus what only Kafka
//! has (librdkafka's limits, an unreachable cluster, concurrent idempotent producers).
//!
//! Each test starts its own Tansu broker (Kafka's wire protocol; storage in a temporary
//! directory) on a free port and kills it by PID when it ends (`test_peers::KafkaBroker`).
//! Tansu is installed by `./scripts/install-peers`; without it these tests fail, they
//! never skip.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod conformance;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::kafka::{KafkaBus, KafkaBusConfig};
use bus::{Bus, BusError, ProduceRecord};
use conformance::read_all;
use test_peers::KafkaBroker;

/// A Tansu broker of this test's own (see [`KafkaBroker`]), with the bus's logs shown.
struct Broker {
    broker: KafkaBroker,
}

impl Broker {
    fn start() -> Self {
        // librdkafka's logs (through tracing) show with a failing test's output. To debug,
        // BUS_KAFKA_DEBUG sets librdkafka's `debug` (e.g. "cgrp,fetch") and prints
        // everything, from every thread, on stderr.
        let debug = std::env::var_os("BUS_KAFKA_DEBUG").is_some();
        let subscriber =
            tracing_subscriber::fmt().with_env_filter(if debug { "bus=debug" } else { "bus=info" });
        let _ = if debug {
            subscriber.with_writer(std::io::stderr).try_init()
        } else {
            subscriber.with_test_writer().try_init()
        };
        Self {
            broker: KafkaBroker::start(),
        }
    }

    fn config(&self) -> KafkaBusConfig {
        let mut config = KafkaBusConfig {
            brokers: self.broker.address().to_string(),
            client_id: "meerkat-bus-test".to_owned(),
            request_timeout_seconds: 10,
            delivery_timeout_seconds: 30,
            ..KafkaBusConfig::default()
        };
        if let Ok(debug) = std::env::var("BUS_KAFKA_DEBUG") {
            config.extra.insert("debug".to_owned(), debug);
        }
        config
    }

    fn bus(&self) -> Arc<dyn Bus> {
        Arc::new(KafkaBus::new(self.config()).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_produce_fetch() {
    let broker = Broker::start();
    conformance::produce_then_fetch_keeps_order_keys_and_timestamps(broker.bus()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_keys() {
    let broker = Broker::start();
    conformance::keys_pick_stable_partitions(broker.bus()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_errors() {
    let broker = Broker::start();
    conformance::errors_name_the_problem(broker.bus()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_consumer_groups_survive_restart() {
    let broker = Broker::start();
    let config = broker.config();
    // A "restart" is a new bus (new producer, new consumers) on the same cluster.
    conformance::consumer_group_commits_and_resumes(move || {
        let config = config.clone();
        Box::pin(async move { Arc::new(KafkaBus::new(config).unwrap()) as Arc<dyn Bus> })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_group_members() {
    let broker = Broker::start();
    conformance::group_members_share_partitions(broker.bus()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_poll_wakes() {
    let broker = Broker::start();
    conformance::poll_wakes_on_new_records(broker.bus()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_close() {
    let broker = Broker::start();
    conformance::closed_bus_refuses_writes(broker.bus()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_above_the_limit_are_refused_before_anything_is_sent() {
    let broker = Broker::start();
    let bus = KafkaBus::new(KafkaBusConfig {
        message_max_bytes: 1_000,
        ..broker.config()
    })
    .unwrap();
    bus.ensure_topic("limited", 1).await.unwrap();
    let err = bus
        .produce(
            "limited",
            vec![
                ProduceRecord::new(vec![1u8; 10]),
                ProduceRecord::new(vec![2u8; 990]).with_key(vec![0u8; 11]),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BusError::RecordTooLarge {
                size: 1_001,
                limit: 1_000
            }
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    let watermarks = bus.watermarks("limited", 0).await.unwrap();
    assert_eq!(
        watermarks.high_watermark, 0,
        "the request is refused whole, before its first record is sent"
    );
    let fits = bus
        .produce("limited", vec![ProduceRecord::new(vec![3u8; 1_000])])
        .await
        .unwrap();
    assert_eq!(fits[0].offset, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_keep_their_order_and_lose_nothing() {
    let broker = Broker::start();
    let bus = broker.bus();
    bus.ensure_topic("busy", 2).await.unwrap();
    let mut tasks = Vec::new();
    for task in 0..8u32 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..25u32 {
                let records = (0..4)
                    .map(|j| {
                        ProduceRecord::new(format!("{task}:{i}:{j}").into_bytes())
                            .with_key(format!("producer-{task}").into_bytes())
                    })
                    .collect();
                let positions = bus.produce("busy", records).await.unwrap();
                offsets.extend(positions);
            }
            offsets
        }));
    }
    let mut per_partition: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for task in tasks {
        let positions = task.await.unwrap();
        assert!(
            positions.windows(2).all(|w| w[0].offset < w[1].offset),
            "a producer's records keep their order"
        );
        per_partition[positions[0].partition as usize].extend(positions.iter().map(|p| p.offset));
    }
    for (partition, offsets) in per_partition.iter_mut().enumerate() {
        offsets.sort_unstable();
        let expected: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(
            *offsets, expected,
            "partition {partition}: dense, unique offsets"
        );
        let stored = read_all(bus.as_ref(), "busy", partition as u32, 0).await;
        assert_eq!(stored.len(), offsets.len());
        // Each producer's records are stored in the order it sent them.
        let mut last_seen: std::collections::HashMap<String, (u32, u32)> = Default::default();
        for record in stored {
            let text = String::from_utf8(record.value.to_vec()).unwrap();
            let mut parts = text.split(':');
            let task = parts.next().unwrap().to_owned();
            let i: u32 = parts.next().unwrap().parse().unwrap();
            let j: u32 = parts.next().unwrap().parse().unwrap();
            if let Some(previous) = last_seen.insert(task, (i, j)) {
                assert!(previous < (i, j), "{text} after {previous:?}");
            }
        }
    }
    let total: usize = per_partition.iter().map(Vec::len).sum();
    assert_eq!(total, 8 * 25 * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_of_unknown_groups_and_partitions() {
    let broker = Broker::start();
    let bus = broker.bus();
    bus.ensure_topic("quiet", 3).await.unwrap();
    assert_eq!(bus.partition_count("quiet").await.unwrap(), 3);
    assert_eq!(
        bus.committed_offset("nobody", "quiet", 1).await.unwrap(),
        None
    );
    let err = bus.watermarks("quiet", 3).await.unwrap_err();
    assert!(
        matches!(
            err,
            BusError::UnknownPartition {
                partition: 3,
                partitions: 3,
                ..
            }
        ),
        "{err}"
    );
    let err = bus.subscribe("g", &["absent"]).await.unwrap_err();
    assert!(matches!(err, BusError::UnknownTopic { .. }), "{err}");
    let err = bus.fetch("absent", 0, 0, 1024).await.unwrap_err();
    assert!(matches!(err, BusError::UnknownTopic { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_a_retryable_error() {
    // A port nothing listens on: bind, note the port, close.
    let port = test_peers::free_port();
    let bus = KafkaBus::new(KafkaBusConfig {
        brokers: format!("127.0.0.1:{port}"),
        request_timeout_seconds: 1,
        delivery_timeout_seconds: 2,
        ..KafkaBusConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let err = bus.ensure_topic("anything", 1).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(matches!(err, BusError::Kafka { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the request timeout bounds the wait"
    );
}

#[test]
fn bad_extra_properties_are_a_configuration_error() {
    let mut config = KafkaBusConfig::default();
    config
        .extra
        .insert("no.such.property".to_owned(), "1".to_owned());
    let err = KafkaBus::new(config).unwrap_err();
    assert!(matches!(err, BusError::Config(_)), "{err}");
    assert!(err.to_string().contains("no.such.property"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_without_a_broker_fails_within_the_request_timeout() {
    let broker = Broker::start();
    let bus = KafkaBus::new(KafkaBusConfig {
        request_timeout_seconds: 2,
        ..broker.config()
    })
    .unwrap();
    bus.ensure_topic("t", 1).await.unwrap();
    let mut consumer = bus.subscribe("g", &["t"]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.assignment().is_empty() {
        assert!(Instant::now() < deadline, "no assignment within 30 s");
        consumer.poll(10, Duration::from_millis(200)).await.unwrap();
    }
    let partition = consumer.assignment()[0].clone();
    drop(broker); // SIGKILL: no coordinator any more
    let started = Instant::now();
    let err = consumer.commit(&[(partition, 0)]).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the commit took {:?}",
        started.elapsed()
    );
}
