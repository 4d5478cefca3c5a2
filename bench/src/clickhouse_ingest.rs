//! ClickHouse ingest throughput through `ingest`, and what bounds it.
//!
//! Distributed mode's write path after the gateway: remote-write bodies sit on Kafka (a
//! real Kafka-protocol broker, Tansu) as the gateway leaves them; an ingest worker (the
//! code `meerkat ingest` runs) consumes them into a real ClickHouse server (the Debian
//! package), and the clock stops when ClickHouse holds everything durably (the store's
//! durable offsets reach the topic's end). Both services are started by this benchmark.
//!
//! To say what bounds it, the same bodies are also written straight into a ClickHouse
//! store from memory (decode + insert, no Kafka), and the CPU seconds of this process
//! (Meerkat's side: consume, decode, encode RowBinary), ClickHouse and the broker are
//! reported for each run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bus::Bus;
use bus::kafka::{KafkaBus, KafkaBusConfig};
use gateway::proto::prometheus as pb;
use model::{Envelope, Payload, RemoteWriteBody, TenantId};
use storage::clickhouse::{ClickHouseConfig, ClickHouseStore};
use storage::{BusPosition, Storage};
use test_peers::{ClickHouseServer, KafkaBroker};

use crate::remote_write::series_labels;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Distinct series
    #[arg(long, default_value_t = 100_000)]
    series: usize,
    /// Scrape rounds (one sample per series each)
    #[arg(long, default_value_t = 20)]
    rounds: u64,
    /// Samples per remote-write body (one bus record each)
    #[arg(long, default_value_t = 2_000)]
    samples_per_request: usize,
    /// Partitions of the metrics topic
    #[arg(long, default_value_t = 4)]
    partitions: u32,
}

/// The bodies of every round, as the gateway puts them on the bus.
fn bodies(args: &Args) -> anyhow::Result<Vec<RemoteWriteBody>> {
    let labels: Vec<Vec<pb::Label>> = (0..args.series).map(series_labels).collect();
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64
        - 3_600_000;
    let mut encoder = snap::raw::Encoder::new();
    let mut out = Vec::new();
    for round in 0..args.rounds {
        for (chunk_index, chunk) in labels.chunks(args.samples_per_request).enumerate() {
            let request = pb::WriteRequest {
                timeseries: chunk
                    .iter()
                    .enumerate()
                    .map(|(i, labels)| pb::TimeSeries {
                        labels: labels.clone(),
                        samples: vec![pb::Sample {
                            value: (round * 10 + (i % 7) as u64) as f64,
                            timestamp: start_ms + round as i64 * 15_000,
                        }],
                        ..Default::default()
                    })
                    .collect(),
                metadata: vec![],
            };
            out.push(RemoteWriteBody {
                snappy: encoder.compress_vec(&prost::Message::encode_to_vec(&request))?,
                samples: chunk.len() as u64,
                affinity: chunk_index as u64,
            });
        }
    }
    Ok(out)
}

fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = procfs::process::Process::new(pid as i32)?.stat()?;
    Ok((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

struct Run {
    path: &'static str,
    samples: u64,
    seconds: f64,
    meerkat_cpu: f64,
    clickhouse_cpu: f64,
    broker_cpu: f64,
}

struct Processes<'a> {
    clickhouse: &'a ClickHouseServer,
    broker: &'a KafkaBroker,
}

impl Processes<'_> {
    fn cpu(&self) -> anyhow::Result<[f64; 3]> {
        Ok([
            cpu_seconds(std::process::id())?,
            cpu_seconds(self.clickhouse.pid())?,
            cpu_seconds(self.broker.pid())?,
        ])
    }
}

fn store_config(clickhouse: &ClickHouseServer, database: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: clickhouse.url(),
        database: database.to_owned(),
        ..ClickHouseConfig::default()
    }
}

/// The bodies written straight into ClickHouse from memory.
async fn direct(bodies: &[RemoteWriteBody], processes: &Processes<'_>) -> anyhow::Result<Run> {
    let store = ClickHouseStore::open(store_config(processes.clickhouse, "bench_direct")).await?;
    let tenant = TenantId::default_tenant();
    let before = processes.cpu()?;
    let started = Instant::now();
    let mut samples = 0;
    for (offset, body) in bodies.iter().enumerate() {
        let position = BusPosition {
            topic: bus::topics::METRICS.to_owned(),
            partition: 0,
            offset: offset as u64,
        };
        samples += store
            .write(&tenant, Payload::RemoteWrite(body.clone()), &position)
            .await?
            .accepted;
    }
    store.flush().await?;
    let seconds = started.elapsed().as_secs_f64();
    let after = processes.cpu()?;
    store.close().await?;
    Ok(Run {
        path: "memory → ClickHouse (decode, insert)",
        samples,
        seconds,
        meerkat_cpu: after[0] - before[0],
        clickhouse_cpu: after[1] - before[1],
        broker_cpu: after[2] - before[2],
    })
}

/// The bodies put on Kafka first, then consumed by an ingest worker into ClickHouse.
async fn through_ingest(
    args: &Args,
    bodies: &[RemoteWriteBody],
    processes: &Processes<'_>,
) -> anyhow::Result<Run> {
    let bus: Arc<dyn Bus> = Arc::new(KafkaBus::new(KafkaBusConfig {
        brokers: processes.broker.address().to_string(),
        ..KafkaBusConfig::default()
    })?);
    for topic in bus::topics::ALL {
        bus.ensure_topic(topic, args.partitions).await?;
    }
    let tenant = TenantId::default_tenant();
    for batch in bodies.chunks(32) {
        let records = batch
            .iter()
            .map(|body| {
                let value = Envelope {
                    tenant: tenant.clone(),
                    payload: Payload::RemoteWrite(body.clone()),
                }
                .encode()?;
                let partition = (body.affinity % u64::from(args.partitions)) as u32;
                Ok(bus::ProduceRecord::new(value).with_partition(partition))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        bus.produce(bus::topics::METRICS, records).await?;
    }
    let mut ends = Vec::new();
    for partition in 0..args.partitions {
        ends.push(
            bus.watermarks(bus::topics::METRICS, partition)
                .await?
                .high_watermark,
        );
    }
    eprintln!("  {} records on Kafka; ingesting", bodies.len());

    let store =
        Arc::new(ClickHouseStore::open(store_config(processes.clickhouse, "bench_ingest")).await?);
    let mut registry = prometheus_client::registry::Registry::default();
    let before = processes.cpu()?;
    let started = Instant::now();
    let worker = ingest::IngestWorker::start(
        bus.clone(),
        store.clone(),
        ingest::IngestConfig {
            flush_interval_seconds: 1,
            ..ingest::IngestConfig::default()
        },
        ingest::IngestMetrics::new(&mut registry),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let durable = store.durable_offsets().await?;
        let done = (0..args.partitions).all(|p| {
            durable
                .get(&(bus::topics::METRICS.to_owned(), p))
                .is_some_and(|next| *next >= ends[p as usize])
        });
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!("ingest did not finish within 30 minutes: durable {durable:?}, ends {ends:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = processes.cpu()?;
    worker.stop().await?;
    store.close().await?;
    bus.close().await?;
    Ok(Run {
        path: "Kafka → ingest → ClickHouse",
        samples: bodies.iter().map(|b| b.samples).sum(),
        seconds,
        meerkat_cpu: after[0] - before[0],
        clickhouse_cpu: after[1] - before[1],
        broker_cpu: after[2] - before[2],
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let clickhouse = ClickHouseServer::start();
    let broker = KafkaBroker::start();
    let processes = Processes {
        clickhouse: &clickhouse,
        broker: &broker,
    };
    let version = clickhouse
        .sql("SELECT version()")
        .map_err(|e| anyhow::anyhow!(e))
        .context("cannot ask ClickHouse its version")?;
    println!(
        "ClickHouse ingest: {} series x {} rounds = {} samples in bodies of {}, {} partitions, ClickHouse {}, {} cores.\n",
        args.series,
        args.rounds,
        args.series as u64 * args.rounds,
        args.samples_per_request,
        args.partitions,
        version.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let bodies = bodies(args)?;
    let runs = runtime.block_on(async {
        let direct = direct(&bodies, &processes).await?;
        let ingest = through_ingest(args, &bodies, &processes).await?;
        anyhow::Ok([direct, ingest])
    })?;
    println!(
        "| path | samples | seconds | samples/s | Meerkat CPU s | ClickHouse CPU s | broker CPU s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for run in &runs {
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} |",
            run.path,
            run.samples,
            run.seconds,
            run.samples as f64 / run.seconds,
            run.meerkat_cpu,
            run.clickhouse_cpu,
            run.broker_cpu,
        );
    }
    Ok(())
}
