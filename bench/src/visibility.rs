//! Write-to-read visibility under load: how long after a server acknowledges a sample can
//! a read see it, while the remote-write benchmark's load runs against the same server.
//! The load, like Prometheus, backs off and retries requests answered 429 or 503 (which
//! Meerkat answers while ingest is more than `gateway.max_backlog_seconds` behind); the
//! table counts those retries.
//!
//! A probe thread writes one marker series (`bench_probe{seq="N"}`) at a time, notes when
//! the 2xx came back, then reads it back every 2 ms until it is there; then the next probe
//! (a few per second). Reported: the acknowledged → visible delay, p50 / p99 / max, and
//! probes never seen within 10 s.
//!
//! Reads: Meerkat has no query API yet (issue 5), so its standalone pipeline — embedded
//! bus, ingest, embedded store, gateway on a local HTTP port, as `meerkat serve` wires
//! them — runs inside this process and the probe reads with `Storage::select`, the call the
//! query engine makes; the HTTP hop it skips costs well under a millisecond locally.
//! VictoriaMetrics is read through `/api/v1/export` (raw samples, no query latency
//! offset), Prometheus through an instant query at the probe's timestamp.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bus::Bus;
use gateway::proto::prometheus as pb;
use model::TenantId;
use storage::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use storage::{MatchOp, Matcher, Storage};

use crate::remote_write::{self, Load};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Distinct series in the background load
    #[arg(long, default_value_t = 100_000)]
    series: usize,
    /// Samples (one per series) in each remote-write request of the load
    #[arg(long, default_value_t = 2_000)]
    samples_per_request: usize,
    /// Load requests in flight at once
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Cap on the load, samples per second (0: as fast as each server answers)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Meerkat's `gateway.max_backlog_seconds` (the default when not given)
    #[arg(long)]
    max_backlog_seconds: Option<f64>,
    /// Seconds of probing per server (after 5 s of load alone)
    #[arg(long, default_value_t = 30)]
    duration_seconds: u64,
    /// Servers to measure, in order
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "meerkat,victoriametrics,prometheus"
    )]
    targets: Vec<String>,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const READ_EVERY: Duration = Duration::from_millis(2);
const WARM_UP: Duration = Duration::from_secs(5);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn probe_body(seq: u64, timestamp: i64) -> anyhow::Result<Vec<u8>> {
    let label = |name: &str, value: String| pb::Label {
        name: name.to_owned().into(),
        value: value.into(),
    };
    let request = pb::WriteRequest {
        timeseries: vec![pb::TimeSeries {
            labels: vec![
                label("__name__", "bench_probe".to_owned()),
                label("seq", seq.to_string()),
            ],
            samples: vec![pb::Sample {
                value: seq as f64,
                timestamp,
            }],
            ..Default::default()
        }],
        metadata: vec![],
    };
    Ok(snap::raw::Encoder::new().compress_vec(&prost::Message::encode_to_vec(&request))?)
}

/// How a probe is read back.
enum Reader {
    Store(Arc<dyn Storage>, tokio::runtime::Handle),
    VictoriaMetrics(String),
    Prometheus(String),
}

impl Reader {
    fn visible(&self, agent: &ureq::Agent, seq: u64, timestamp: i64) -> anyhow::Result<bool> {
        let selector = format!("bench_probe{{seq=\"{seq}\"}}");
        match self {
            Self::Store(store, runtime) => {
                let matchers = [
                    Matcher::new("__name__", MatchOp::Equal, "bench_probe")?,
                    Matcher::new("seq", MatchOp::Equal, seq.to_string())?,
                ];
                let found = runtime.block_on(store.select(
                    &TenantId::default_tenant(),
                    &matchers,
                    timestamp,
                    timestamp,
                ))?;
                Ok(found.iter().any(|s| !s.samples.is_empty()))
            }
            Self::VictoriaMetrics(base) => {
                let body = agent
                    .get(&format!("{base}/api/v1/export"))
                    .query("match[]", &selector)
                    .call()?
                    .body_mut()
                    .read_to_string()?;
                Ok(!body.trim().is_empty())
            }
            Self::Prometheus(base) => {
                let body = agent
                    .get(&format!("{base}/api/v1/query"))
                    .query("query", &selector)
                    .query("time", format!("{:.3}", timestamp as f64 / 1000.0))
                    .call()?
                    .body_mut()
                    .read_to_string()?;
                Ok(body.contains("\"value\""))
            }
        }
    }
}

/// Meerkat's standalone pipeline in this process, as `meerkat serve` wires it.
struct Pipeline {
    runtime: tokio::runtime::Runtime,
    store: Arc<EmbeddedStore>,
    ingest: Option<ingest::IngestWorker>,
    bus: Arc<dyn Bus>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    fn start(max_backlog_seconds: Option<f64>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let root: PathBuf = dir.path().to_owned();
        let (store, ingest, bus, addr) = runtime.block_on(async move {
            let mut registry = prometheus_client::registry::Registry::default();
            let bus: Arc<dyn Bus> = Arc::new(bus::embedded::EmbeddedBus::open(
                root.join("bus"),
                bus::embedded::EmbeddedBusConfig::default(),
            )?);
            for topic in bus::topics::ALL {
                bus.ensure_topic(topic, 4).await?;
            }
            let store = Arc::new(EmbeddedStore::open(
                root.join("store"),
                EmbeddedStoreConfig::default(),
            )?);
            let ingest = ingest::IngestWorker::start(
                bus.clone(),
                store.clone(),
                ingest::IngestConfig::default(),
                ingest::IngestMetrics::new(&mut registry),
            )
            .await?;
            let mut config = gateway::GatewayConfig::default();
            if let Some(seconds) = max_backlog_seconds {
                config.max_backlog_seconds = seconds;
            }
            let gateway = gateway::Gateway::new(
                &config,
                bus.clone(),
                gateway::metrics::GatewayMetrics::new(&mut registry),
            )
            .await?;
            // As `meerkat serve` wires them: writes wait while ingest is behind.
            let delay = ingest.delay();
            gateway.set_backlog(Arc::new(move || delay.get()));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let routes = gateway.http_routes();
            tokio::spawn(async move { axum::serve(listener, routes).await });
            anyhow::Ok((store, ingest, bus, addr))
        })?;
        Ok(Self {
            runtime,
            store,
            ingest: Some(ingest),
            bus,
            addr,
            _dir: dir,
        })
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(ingest) = self.ingest.take() {
            let _ = self.runtime.block_on(ingest.stop());
        }
        let _ = self.runtime.block_on(self.store.close());
        let _ = self.runtime.block_on(self.bus.close());
    }
}

struct Result {
    name: String,
    delays_ms: Vec<f64>,
    /// From first sending the probe (waits and retries included) to visible.
    send_delays_ms: Vec<f64>,
    missed: usize,
    load_samples_per_second: f64,
    /// Load requests answered 429/503 and sent again after a backoff.
    retried: u64,
}

fn probe(
    name: &str,
    write_url: &str,
    reader: &Reader,
    args: &Args,
    load_args: &remote_write::Args,
) -> anyhow::Result<Result> {
    let load = Load::start(load_args, write_url)?;
    std::thread::sleep(WARM_UP);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let started = Instant::now();
    let accepted_before = load.accepted.load(std::sync::atomic::Ordering::Relaxed);
    let (mut delays_ms, mut send_delays_ms, mut missed) = (Vec::new(), Vec::new(), 0);
    let mut seq = 0u64;
    while started.elapsed() < Duration::from_secs(args.duration_seconds) {
        seq += 1;
        let timestamp = now_ms();
        let body = probe_body(seq, timestamp)?;
        // Sent until accepted, backing off on 429/503 as the load does.
        let sent = Instant::now();
        let mut backoff = remote_write::Backoff::new();
        loop {
            let status = remote_write::post(&agent, write_url, &body)?.status();
            if status.is_success() {
                break;
            }
            if status != 429 && status != 503 {
                bail!("{name} refused a probe: {status}");
            }
            if sent.elapsed() > Duration::from_secs(60) {
                bail!("{name} answered {status} to a probe for 60 s");
            }
            backoff.wait();
        }
        let acknowledged = Instant::now();
        loop {
            if reader.visible(&agent, seq, timestamp)? {
                delays_ms.push(acknowledged.elapsed().as_secs_f64() * 1000.0);
                send_delays_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if acknowledged.elapsed() > PROBE_TIMEOUT {
                missed += 1;
                break;
            }
            std::thread::sleep(READ_EVERY);
        }
        eprint!(
            "\r  {name:<16} {:>5.1}s  {} probes",
            started.elapsed().as_secs_f64(),
            delays_ms.len() + missed
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let load_rate = (load.accepted.load(std::sync::atomic::Ordering::Relaxed) - accepted_before)
        as f64
        / started.elapsed().as_secs_f64();
    let totals = load.finish();
    eprintln!();
    if let Some(refusal) = totals.first_refusal {
        eprintln!(
            "  {name}: the load saw refusals ({}), first: {refusal}",
            totals.refused
        );
    }
    Ok(Result {
        name: name.to_owned(),
        delays_ms,
        send_delays_ms,
        missed,
        load_samples_per_second: load_rate,
        retried: totals.retried,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let load_args = remote_write::Args {
        series: args.series,
        samples_per_request: args.samples_per_request,
        concurrency: args.concurrency,
        duration_seconds: args.duration_seconds,
        scrape_interval_seconds: 10,
        rate: args.rate,
        targets: vec![],
        meerkat: None,
    };
    println!(
        "Acknowledged → visible under load: {} series in the load, {} samples/request, {} concurrent, rate cap {}, {} s of probes per server, {} cores.\n",
        args.series,
        args.samples_per_request,
        args.concurrency,
        if args.rate == 0 {
            "none".to_owned()
        } else {
            format!("{} samples/s", args.rate)
        },
        args.duration_seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut results = Vec::new();
    for target in &args.targets {
        let result = match target.as_str() {
            "meerkat" => {
                let pipeline = Pipeline::start(args.max_backlog_seconds)
                    .context("cannot start Meerkat's pipeline")?;
                let reader =
                    Reader::Store(pipeline.store.clone(), pipeline.runtime.handle().clone());
                let url = format!("http://{}/api/v1/write", pipeline.addr);
                probe("meerkat", &url, &reader, args, &load_args)?
            }
            "victoriametrics" | "prometheus" => {
                let server = remote_write::start(target, std::path::Path::new("meerkat"))?;
                let base = server
                    .write_url
                    .trim_end_matches("/api/v1/write")
                    .to_owned();
                let reader = if target == "prometheus" {
                    Reader::Prometheus(base)
                } else {
                    Reader::VictoriaMetrics(base)
                };
                probe(server.name, &server.write_url, &reader, args, &load_args)?
            }
            other => bail!("unknown target {other:?}: use meerkat, victoriametrics or prometheus"),
        };
        results.push(result);
    }
    println!(
        "| server | probes | p50 ms | p99 ms | max ms | sent→visible p50 ms | sent→visible p99 ms | not seen in 10 s | load samples/s | load requests retried |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &mut results {
        r.delays_ms.sort_by(f64::total_cmp);
        r.send_delays_ms.sort_by(f64::total_cmp);
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.0} | {} |",
            r.name,
            r.delays_ms.len() + r.missed,
            percentile(&r.delays_ms, 50.0),
            percentile(&r.delays_ms, 99.0),
            r.delays_ms.last().copied().unwrap_or(f64::NAN),
            percentile(&r.send_delays_ms, 50.0),
            percentile(&r.send_delays_ms, 99.0),
            r.missed,
            r.load_samples_per_second,
            r.retried,
        );
    }
    Ok(())
}
