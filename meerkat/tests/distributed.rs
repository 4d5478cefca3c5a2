//! Distributed mode end to end: `meerkat gateway` and `meerkat ingest` as separate
//! processes on a real Kafka-protocol broker (Tansu) and a real ClickHouse server, both
//! started by the test. Telemetry written to the gateway in three protocols is read back
//! from ClickHouse through the storage engine the query role uses; the ingest process is
//! killed with SIGKILL mid-stream and restarted, and every acknowledged sample must be
//! stored exactly once. (The query role joins this test when it exists: issue 5.)

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use common::{Server, post};
use gateway::proto::prometheus as pb;
use model::TenantId;
use storage::clickhouse::{ClickHouseConfig, ClickHouseStore};
use storage::{MatchOp, Matcher, Storage};
use test_peers::{ClickHouseServer, KafkaBroker};

/// An hour before the test started: well inside retention, which the ingest role
/// enforces as it starts.
static T0: LazyLock<i64> = LazyLock::new(|| {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    now - now % 1000 - 3_600_000
});
const SERIES_PER_REQUEST: u64 = 10;

/// Environment putting a role on the broker and the ClickHouse server.
fn distributed_env(broker: &KafkaBroker, clickhouse: &ClickHouseServer) -> Vec<(String, String)> {
    [
        ("MEERKAT_BUS__ENGINE", "kafka".to_owned()),
        ("MEERKAT_BUS__KAFKA__BROKERS", broker.address().to_string()),
        ("MEERKAT_BUS__PARTITIONS", "2".to_owned()),
        ("MEERKAT_STORAGE__ENGINE", "clickhouse".to_owned()),
        ("MEERKAT_STORAGE__CLICKHOUSE__URL", clickhouse.url()),
        (
            "MEERKAT_STORAGE__CLICKHOUSE__DATABASE",
            "meerkat_e2e".to_owned(),
        ),
        ("MEERKAT_INGEST__FLUSH_INTERVAL_SECONDS", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn start(role: &str, dir: &Path, env: &[(String, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let data = dir.join(role);
    Server::start_role(
        role,
        dir,
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &env,
    )
}

/// A remote-write request: `SERIES_PER_REQUEST` series of `e2e_requests`, labelled with
/// the request id, one sample each whose value is the id.
fn remote_write(id: u64) -> Vec<u8> {
    let request = pb::WriteRequest {
        timeseries: (0..SERIES_PER_REQUEST)
            .map(|i| pb::TimeSeries {
                labels: vec![
                    pb::Label {
                        name: "__name__".into(),
                        value: "e2e_requests".into(),
                    },
                    pb::Label {
                        name: "request".into(),
                        value: id.to_string().into(),
                    },
                    pb::Label {
                        name: "series".into(),
                        value: i.to_string().into(),
                    },
                ],
                samples: vec![pb::Sample {
                    value: id as f64,
                    timestamp: *T0 + id as i64,
                }],
                ..Default::default()
            })
            .collect(),
        metadata: vec![],
    };
    snap::raw::Encoder::new()
        .compress_vec(&prost::Message::encode_to_vec(&request))
        .unwrap()
}

fn clickhouse_config(clickhouse: &ClickHouseServer) -> ClickHouseConfig {
    ClickHouseConfig {
        url: clickhouse.url(),
        database: "meerkat_e2e".to_owned(),
        ..ClickHouseConfig::default()
    }
}

/// Samples of `e2e_requests` in ClickHouse, by request id.
async fn stored_requests(store: &ClickHouseStore) -> BTreeMap<u64, usize> {
    let name = Matcher::new("__name__", MatchOp::Equal, "e2e_requests").unwrap();
    let series = store
        .select(&TenantId::default_tenant(), &[name], i64::MIN, i64::MAX)
        .await
        .unwrap();
    let mut per_request = BTreeMap::new();
    for one in series {
        let id: u64 = one.labels.get("request").unwrap().parse().unwrap();
        assert_eq!(one.samples.len(), 1, "{:?}", one.labels);
        assert_eq!(one.samples[0].value, id as f64);
        *per_request.entry(id).or_default() += 1;
    }
    per_request
}

/// Waits until `check` holds, polling ClickHouse; panics with `what` after a minute.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match check().await {
            Ok(()) => return,
            Err(state) if Instant::now() > deadline => panic!("{what}: {state}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

#[test]
fn gateway_and_ingest_processes_on_kafka_and_clickhouse() {
    let broker = KafkaBroker::start();
    let clickhouse = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let env = distributed_env(&broker, &clickhouse);
    let gateway = start("gateway", dir.path(), &env);
    let mut ingest = start("ingest", dir.path(), &env);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = runtime
        .block_on(ClickHouseStore::open(clickhouse_config(&clickhouse)))
        .unwrap();

    // Three protocols through the gateway: remote-write, Influx line protocol, Zipkin.
    for id in 0..5 {
        let answer = post(
            gateway.addr,
            "/api/v1/write",
            &[("Content-Encoding", "snappy")],
            &remote_write(id),
        )
        .unwrap();
        assert_eq!(answer.status, 204, "{}", answer.body);
    }
    let influx = format!(
        "e2e_disk,host=a used=42i {ns}\ne2e_disk,host=b used=7i {ns}\n",
        ns = *T0 * 1_000_000
    );
    let answer = post(gateway.addr, "/write?db=e2e", &[], influx.as_bytes()).unwrap();
    assert_eq!(answer.status, 204, "{}", answer.body);
    let zipkin = format!(
        r#"[{{"traceId":"4bf92f3577b34da6a3ce929d0e0e4736","id":"00f067aa0ba902b7","name":"get /","timestamp":{us},"duration":1500,"localEndpoint":{{"serviceName":"e2e"}}}}]"#,
        us = *T0 * 1000
    );
    let answer = post(
        gateway.addr,
        "/api/v2/spans",
        &[("Content-Type", "application/json")],
        zipkin.as_bytes(),
    )
    .unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);

    runtime.block_on(eventually(
        "everything written reaches ClickHouse",
        || async {
            let requests = stored_requests(&store).await;
            let expected: BTreeMap<u64, usize> =
                (0..5).map(|id| (id, SERIES_PER_REQUEST as usize)).collect();
            let disk = store
                .select(
                    &TenantId::default_tenant(),
                    &[Matcher::new("__name__", MatchOp::Equal, "e2e_disk_used").unwrap()],
                    i64::MIN,
                    i64::MAX,
                )
                .await
                .unwrap();
            let disk: BTreeMap<String, f64> = disk
                .iter()
                .map(|s| (s.labels.get("host").unwrap().to_owned(), s.samples[0].value))
                .collect();
            let spans = store
                .row_count(&TenantId::default_tenant(), "spans")
                .await
                .unwrap();
            let expected_disk = BTreeMap::from([("a".to_owned(), 42.0), ("b".to_owned(), 7.0)]);
            if requests == expected && disk == expected_disk && spans == 1 {
                Ok(())
            } else {
                Err(format!(
                    "requests {requests:?}, disk {disk:?}, spans {spans}"
                ))
            }
        },
    ));

    // SIGKILL ingest while a client writes, restart it: every acknowledged sample is
    // stored, once.
    let acknowledged: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = std::thread::spawn({
        let (addr, acknowledged, stop) = (gateway.addr, acknowledged.clone(), stop.clone());
        move || {
            let mut id = 1000;
            while !stop.load(Ordering::Relaxed) {
                let answer = post(
                    addr,
                    "/api/v1/write",
                    &[("Content-Encoding", "snappy")],
                    &remote_write(id),
                );
                if answer.is_some_and(|a| a.status == 204) {
                    acknowledged.lock().unwrap().insert(id);
                }
                id += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(2500));
    ingest.child.kill().unwrap();
    ingest.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let ingest = start("ingest", dir.path(), &env);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 50,
        "only {} writes were acknowledged",
        acknowledged.len()
    );

    runtime.block_on(eventually("every acknowledged write is stored", || async {
        let requests = stored_requests(&store).await;
        let missing: Vec<u64> = acknowledged
            .iter()
            .filter(|id| requests.get(id) != Some(&(SERIES_PER_REQUEST as usize)))
            .copied()
            .take(10)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} acknowledged, first missing {missing:?}",
                acknowledged.len()
            ))
        }
    }));
    // Exactly once as reads see it: `stored_requests` checks each series has one sample,
    // whatever the restart replayed.
    let requests = runtime.block_on(stored_requests(&store));
    assert!(requests.values().all(|n| *n == SERIES_PER_REQUEST as usize));

    drop(ingest);
    drop(gateway);
}
