//! Kill -9 `meerkat serve` while a client writes: every remote-write request that was
//! answered 2xx must be on the bus after the restart.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::Bus;
use bus::embedded::{EmbeddedBus, EmbeddedBusConfig};
use common::{Server, post};
use gateway::proto::prometheus as pb;
use model::Envelope;

fn request_body(id: u64) -> Vec<u8> {
    let request = pb::WriteRequest {
        timeseries: (0..20)
            .map(|i| pb::TimeSeries {
                labels: vec![
                    pb::Label {
                        name: "__name__".into(),
                        value: "crash_test".into(),
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
                    timestamp: 1_700_000_000_000 + id as i64,
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

/// Request ids whose 20 series are all on the bus.
async fn complete_requests(dir: &std::path::Path) -> HashSet<u64> {
    let bus = EmbeddedBus::open(dir, EmbeddedBusConfig::default()).unwrap();
    let mut series_per_request: std::collections::HashMap<u64, usize> = Default::default();
    for partition in 0..bus.partition_count(bus::topics::METRICS).await.unwrap() {
        let end = bus
            .watermarks(bus::topics::METRICS, partition)
            .await
            .unwrap()
            .high_watermark;
        let mut next = 0;
        while next < end {
            let records = bus
                .fetch(bus::topics::METRICS, partition, next, 1 << 20)
                .await
                .unwrap();
            next = records.last().unwrap().offset + 1;
            for record in records {
                let payload = Envelope::decode(&record.value).unwrap().payload;
                let Some(batch) = payload.into_metric_batch().unwrap() else {
                    continue;
                };
                for series in batch.series {
                    let id: u64 = series.labels.get("request").unwrap().parse().unwrap();
                    *series_per_request.entry(id).or_default() += 1;
                }
            }
        }
    }
    series_per_request
        .into_iter()
        .filter(|(_, n)| *n >= 20)
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn every_acknowledged_write_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap().to_owned();
    let acknowledged: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let mut next_id = 0u64;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..4 {
        let mut server = Server::start(
            dir.path(),
            &["--http-listen", "127.0.0.1:0", "--data-dir", &data_arg],
            &[],
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for writer in 0..3u64 {
            let addr = server.addr;
            let stop = stop.clone();
            let acknowledged = acknowledged.clone();
            let first = next_id + writer * 1_000_000;
            writers.push(std::thread::spawn(move || {
                let mut id = first;
                while !stop.load(Ordering::Relaxed) {
                    let body = request_body(id);
                    let answer = post(
                        addr,
                        "/api/v1/write",
                        &[("Content-Encoding", "snappy")],
                        &body,
                    );
                    if answer.is_some_and(|a| a.status == 204) {
                        acknowledged.lock().unwrap().insert(id);
                    }
                    id += 1;
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(300 + 150 * round));
        server.child.kill().unwrap(); // SIGKILL, mid-stream
        server.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.join().unwrap();
        }
        next_id += 10_000_000;

        let present = runtime.block_on(complete_requests(&data.join("bus")));
        let acked = acknowledged.lock().unwrap().clone();
        assert!(
            acked.len() > 10 * (round as usize + 1),
            "round {round}: only {} acknowledged writes",
            acked.len()
        );
        let missing: Vec<_> = acked.difference(&present).collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged but lost: {missing:?}"
        );
    }
}
