//! The bus contract, as tests any engine must pass.
//!
//! Each check takes a fresh bus (from a factory the engine's test file provides) and uses
//! only the `Bus` and `Consumer` traits, so the Kafka engine runs the very same checks.
//!
//! Group membership is asynchronous on Kafka: a member learns its share of the partitions
//! only by polling, and a rebalance completes only once every member has polled. The checks
//! therefore wait for an assignment by polling ([`poll_until_assigned`]) where the embedded
//! engine assigns at once (there the wait returns before polling at all).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, BusError, ConsumedRecord, ProduceRecord, TopicPartition, next_offsets};

/// Drains a partition from `from` to its high watermark with `fetch`.
pub async fn read_all(
    bus: &dyn Bus,
    topic: &str,
    partition: u32,
    from: u64,
) -> Vec<ConsumedRecord> {
    let high = bus
        .watermarks(topic, partition)
        .await
        .unwrap()
        .high_watermark;
    let mut out: Vec<ConsumedRecord> = Vec::new();
    let mut next = from;
    while next < high {
        let batch = bus.fetch(topic, partition, next, 64 * 1024).await.unwrap();
        assert!(
            !batch.is_empty(),
            "fetch at {next} below the high watermark {high} returned nothing"
        );
        next = batch.last().unwrap().offset + 1;
        out.extend(batch);
    }
    out
}

/// How long a check waits for records or a rebalance before failing. Generous: Kafka
/// members heartbeat every 3 s, and a cooperative rebalance takes two rounds.
const PATIENCE: Duration = Duration::from_secs(60);

/// Polls until `count` records arrived (or fails after a generous timeout).
pub async fn poll_exactly(consumer: &mut dyn bus::Consumer, count: usize) -> Vec<ConsumedRecord> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while out.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} records arrived",
            out.len()
        );
        out.extend(
            consumer
                .poll(count - out.len(), Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    assert_eq!(out.len(), count);
    out
}

/// Polls every member in turn until member `i` owns `shares[i]` partitions, and returns
/// what each member received meanwhile (each poll takes at most one record, so a member
/// receives at most one record after its share arrives). Checks the assignment before
/// every round, so an engine that assigns at once is never polled here.
pub async fn poll_until_assigned(
    members: &mut [&mut dyn bus::Consumer],
    shares: &[usize],
) -> Vec<Vec<ConsumedRecord>> {
    assert_eq!(members.len(), shares.len());
    let mut received = vec![Vec::new(); members.len()];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let owned: Vec<usize> = members.iter().map(|m| m.assignment().len()).collect();
        if owned == shares {
            return received;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group did not settle: members own {owned:?} partitions, expected {shares:?}"
        );
        for (member, got) in members.iter_mut().zip(&mut received) {
            got.extend(member.poll(1, Duration::from_millis(100)).await.unwrap());
        }
    }
}

pub async fn produce_then_fetch_keeps_order_keys_and_timestamps(bus: Arc<dyn Bus>) {
    bus.ensure_topic("orders", 1).await.unwrap();
    let records: Vec<ProduceRecord> = (0..100u32)
        .map(|i| {
            let record = ProduceRecord::new(format!("value-{i}").into_bytes())
                .with_timestamp_ms(1_000 + i64::from(i));
            if i % 2 == 0 {
                record.with_key(format!("key-{i}").into_bytes())
            } else {
                record
            }
        })
        .collect();
    let positions = bus.produce("orders", records).await.unwrap();
    let offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (0..100).collect::<Vec<u64>>());

    let read = read_all(bus.as_ref(), "orders", 0, 0).await;
    assert_eq!(read.len(), 100);
    for (i, record) in read.iter().enumerate() {
        assert_eq!(record.offset, i as u64);
        assert_eq!(record.value, format!("value-{i}").into_bytes());
        assert_eq!(record.timestamp_ms, 1_000 + i as i64);
        let expected_key = (i % 2 == 0).then(|| format!("key-{i}").into_bytes());
        assert_eq!(record.key.as_deref().map(<[u8]>::to_vec), expected_key);
    }
    // Replay from the middle.
    let tail = read_all(bus.as_ref(), "orders", 0, 60).await;
    assert_eq!(tail.first().unwrap().offset, 60);
    assert_eq!(tail.len(), 40);
    // Past the end: nothing, not an error.
    assert!(bus.fetch("orders", 0, 100, 1024).await.unwrap().is_empty());
}

pub async fn keys_pick_stable_partitions(bus: Arc<dyn Bus>) {
    bus.ensure_topic("keyed", 4).await.unwrap();
    let mut seen: HashMap<String, u32> = HashMap::new();
    for round in 0..3 {
        let records = (0..20).map(|k| {
            ProduceRecord::new(format!("{round}").into_bytes())
                .with_key(format!("k{k}").into_bytes())
        });
        let positions = bus.produce("keyed", records.collect()).await.unwrap();
        for (k, position) in positions.iter().enumerate() {
            assert_eq!(
                position.partition,
                bus::partition_for_key(format!("k{k}").as_bytes(), 4)
            );
            let previous = seen.entry(format!("k{k}")).or_insert(position.partition);
            assert_eq!(*previous, position.partition, "key k{k} moved partitions");
        }
    }
    let used: std::collections::HashSet<u32> = seen.values().copied().collect();
    assert!(used.len() > 1, "20 keys all landed in one partition");
    let explicit = bus
        .produce(
            "keyed",
            vec![
                ProduceRecord::new(&b"x"[..])
                    .with_key(&b"k1"[..])
                    .with_partition(3),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        explicit[0].partition, 3,
        "an explicit partition overrides the key"
    );
}

pub async fn errors_name_the_problem(bus: Arc<dyn Bus>) {
    let err = bus
        .produce("missing", vec![ProduceRecord::new(&b"x"[..])])
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::UnknownTopic { .. }), "{err}");
    assert!(err.to_string().contains("missing"));
    bus.ensure_topic("two", 2).await.unwrap();
    bus.ensure_topic("two", 2).await.unwrap();
    let err = bus.ensure_topic("two", 3).await.unwrap_err();
    assert!(
        matches!(
            err,
            BusError::PartitionCountMismatch {
                existing: 2,
                requested: 3,
                ..
            }
        ),
        "{err}"
    );
    let err = bus
        .produce("two", vec![ProduceRecord::new(&b"x"[..]).with_partition(7)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, BusError::UnknownPartition { partition: 7, .. }),
        "{err}"
    );
    let err = bus.ensure_topic("../escape", 1).await.unwrap_err();
    assert!(matches!(err, BusError::InvalidName { .. }), "{err}");
    assert!(!err.is_retryable());
}

pub async fn consumer_group_commits_and_resumes(make: impl Fn() -> BoxFuture<Arc<dyn Bus>>) {
    let bus = make().await;
    bus.ensure_topic("events", 2).await.unwrap();
    let records =
        (0..50).map(|i| ProduceRecord::new(format!("{i}").into_bytes()).with_partition(i % 2));
    bus.produce("events", records.collect()).await.unwrap();

    let mut consumer = bus.subscribe("ingest", &["events"]).await.unwrap();
    let mut first = poll_until_assigned(&mut [consumer.as_mut()], &[2])
        .await
        .remove(0);
    let mut assigned = consumer.assignment();
    assigned.sort();
    assert_eq!(
        assigned,
        vec![
            TopicPartition::new("events", 0),
            TopicPartition::new("events", 1)
        ]
    );
    assert!(first.len() <= 1);
    first.extend(poll_exactly(consumer.as_mut(), 30 - first.len()).await);
    consumer.commit(&next_offsets(&first)).await.unwrap();
    let mut committed = 0;
    for partition in [0, 1] {
        committed += bus
            .committed_offset("ingest", "events", partition)
            .await
            .unwrap()
            .unwrap_or(0);
    }
    assert_eq!(
        committed, 30,
        "committed offsets must cover exactly what was processed"
    );
    drop(consumer);
    bus.close().await.unwrap();
    drop(bus);

    // A new process (new bus instance) resumes after the committed records, not from 0.
    let bus = make().await;
    let mut consumer = bus.subscribe("ingest", &["events"]).await.unwrap();
    let rest = poll_exactly(consumer.as_mut(), 20).await;
    let mut values: Vec<u32> = first
        .iter()
        .chain(&rest)
        .map(|r| String::from_utf8_lossy(&r.value).parse().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(
        values,
        (0..50).collect::<Vec<u32>>(),
        "every record exactly once across the restart"
    );
    assert!(
        consumer
            .poll(10, Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );

    // Replay: seek back and read again, independent of the commit.
    let tp = TopicPartition::new("events", 0);
    consumer.seek(&tp, 0).unwrap();
    let replayed = poll_exactly(consumer.as_mut(), 25).await;
    assert!(replayed.iter().all(|r| r.partition == 0));
    assert_eq!(replayed.first().unwrap().offset, 0);

    // A different group has its own offsets and starts at the beginning.
    let mut other = bus.subscribe("audit", &["events"]).await.unwrap();
    assert_eq!(poll_exactly(other.as_mut(), 50).await.len(), 50);
    bus.close().await.unwrap();
}

pub async fn group_members_share_partitions(bus: Arc<dyn Bus>) {
    bus.ensure_topic("shared", 4).await.unwrap();
    let mut a = bus.subscribe("workers", &["shared"]).await.unwrap();
    let during = poll_until_assigned(&mut [a.as_mut()], &[4]).await;
    assert!(during.iter().all(Vec::is_empty), "nothing was produced yet");
    assert_eq!(a.assignment().len(), 4);
    let mut b = bus.subscribe("workers", &["shared"]).await.unwrap();
    let during = poll_until_assigned(&mut [a.as_mut(), b.as_mut()], &[2, 2]).await;
    assert!(during.iter().all(Vec::is_empty), "nothing was produced yet");
    let (mut on_a, mut on_b) = (a.assignment(), b.assignment());
    assert_eq!(on_a.len() + on_b.len(), 4);
    assert_eq!(on_a.len(), 2);
    on_a.append(&mut on_b);
    on_a.sort();
    on_a.dedup();
    assert_eq!(on_a.len(), 4, "every partition has exactly one owner");

    let records =
        (0..40).map(|i| ProduceRecord::new(format!("{i}").into_bytes()).with_partition(i % 4));
    bus.produce("shared", records.collect()).await.unwrap();
    let from_a = poll_exactly(a.as_mut(), 20).await;
    let from_b = poll_exactly(b.as_mut(), 20).await;
    let partitions_a: std::collections::HashSet<u32> = from_a.iter().map(|r| r.partition).collect();
    let partitions_b: std::collections::HashSet<u32> = from_b.iter().map(|r| r.partition).collect();
    assert!(partitions_a.is_disjoint(&partitions_b));

    // Committing a partition owned by another member is refused.
    let foreign = b.assignment()[0].clone();
    let err = a.commit(&[(foreign, 1)]).await.unwrap_err();
    assert!(matches!(err, BusError::NotAssigned { .. }), "{err}");

    // When b leaves, a takes over everything, resuming b's partitions at their commits
    // (and its own where it was: it keeps them through the rebalance).
    b.commit(&next_offsets(&from_b)).await.unwrap();
    drop(b);
    let during = poll_until_assigned(&mut [a.as_mut()], &[4]).await;
    assert!(
        during.iter().all(Vec::is_empty),
        "records were redelivered after b left: {during:?}"
    );
    assert_eq!(a.assignment().len(), 4);
    bus.produce(
        "shared",
        (0..4)
            .map(|p| ProduceRecord::new(&b"late"[..]).with_partition(p))
            .collect(),
    )
    .await
    .unwrap();
    let after = poll_exactly(a.as_mut(), 4).await;
    assert!(
        after.iter().all(|r| r.value.as_ref() == b"late"),
        "b's committed records were not redelivered"
    );
}

pub async fn poll_wakes_on_new_records(bus: Arc<dyn Bus>) {
    bus.ensure_topic("live", 1).await.unwrap();
    let mut consumer = bus.subscribe("tail", &["live"]).await.unwrap();
    assert!(
        consumer
            .poll(10, Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty()
    );
    let producer = bus.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        producer
            .produce("live", vec![ProduceRecord::new(&b"hello"[..])])
            .await
            .unwrap();
    });
    let started = std::time::Instant::now();
    let got = consumer.poll(10, Duration::from_secs(20)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "poll slept through the append"
    );
    writer.await.unwrap();
}

pub async fn closed_bus_refuses_writes(bus: Arc<dyn Bus>) {
    bus.ensure_topic("closing", 1).await.unwrap();
    bus.produce("closing", vec![ProduceRecord::new(&b"before"[..])])
        .await
        .unwrap();
    bus.close().await.unwrap();
    let err = bus
        .produce("closing", vec![ProduceRecord::new(&b"after"[..])])
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Closed), "{err}");
    assert!(err.is_retryable());
}

pub type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;
