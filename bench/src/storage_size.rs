//! Bytes on disk per sample: Meerkat's embedded store vs VictoriaMetrics on the same data.
//!
//! The data looks like a day of scrapes: `series` series (node_exporter-, cAdvisor- and
//! application-style families) sampled every 15 s with a few milliseconds of scrape jitter;
//! counters grow by realistic increments (integer request counts, CPU seconds at 10 ms
//! resolution), gauges wander (memory and filesystem bytes, ratios).
//!
//! Meerkat: the samples are written to an embedded store the way ingest writes them (one
//! scrape round at a time, a flush every hour of data), then compacted. VictoriaMetrics:
//! the same samples are remote-written, then flushed and force-merged. Reported: bytes of
//! the whole data directory of each (Meerkat: sample parts plus the series catalog;
//! VictoriaMetrics: data plus indexdb) divided by the number of samples.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gateway::proto::prometheus as pb;
use model::{Labels, MetricBatch, Payload, Sample, Series, TenantId};
use storage::embedded::{EmbeddedStore, EmbeddedStoreConfig};
use storage::{BusPosition, Storage};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Distinct series
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Hours of data at a 15 s interval
    #[arg(long, default_value_t = 24)]
    hours: u64,
}

pub(crate) const INTERVAL_MS: i64 = 15_000;

/// What a series measures, which decides how its value moves.
#[derive(Clone, Copy)]
enum Kind {
    /// Integer count, growing by a series-specific rate.
    Requests,
    /// CPU seconds at 10 ms resolution.
    CpuSeconds,
    /// Bytes that drift.
    Bytes,
    /// A ratio in [0, 1].
    Ratio,
}

fn labels_of(index: usize) -> (Vec<(String, String)>, Kind) {
    let kinds = [
        ("http_requests_total", Kind::Requests),
        ("node_cpu_seconds_total", Kind::CpuSeconds),
        ("container_memory_working_set_bytes", Kind::Bytes),
        ("node_filesystem_avail_bytes", Kind::Bytes),
        ("kube_pod_container_status_ready", Kind::Ratio),
    ];
    let (name, kind) = kinds[index % kinds.len()];
    let rest = index / kinds.len();
    let labels = vec![
        ("__name__".to_owned(), name.to_owned()),
        (
            "instance".to_owned(),
            format!("10.0.{}.{}:9100", rest / 250 % 250, rest % 250),
        ),
        ("job".to_owned(), "kubernetes-pods".to_owned()),
        ("namespace".to_owned(), format!("team-{}", rest % 30)),
        (
            "pod".to_owned(),
            format!(
                "app-{:06x}-{}",
                rest.wrapping_mul(2_654_435_761) & 0xff_ffff,
                rest % 7
            ),
        ),
    ];
    (labels, kind)
}

/// A deterministic pseudo-random stream per series.
fn noise(series: usize, step: u64) -> u64 {
    let mut x = (series as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ step.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 29)
}

pub(crate) struct Generator {
    pub(crate) labels: Vec<Vec<(String, String)>>,
    kinds: Vec<Kind>,
    state: Vec<f64>,
    start_ms: i64,
}

impl Generator {
    pub(crate) fn new(series: usize, start_ms: i64) -> Self {
        let (labels, kinds): (Vec<_>, Vec<_>) = (0..series).map(labels_of).unzip();
        let state = (0..series)
            .map(|i| match kinds[i] {
                Kind::Bytes => 1e9 + (noise(i, 0) % 1_000_000_000) as f64,
                Kind::Ratio => 1.0,
                _ => 0.0,
            })
            .collect();
        Self {
            labels,
            kinds,
            state,
            start_ms,
        }
    }

    /// The samples of scrape round `step`, series by series.
    pub(crate) fn round(&mut self, step: u64) -> Vec<Sample> {
        (0..self.labels.len())
            .map(|i| {
                let r = noise(i, step);
                let value = &mut self.state[i];
                match self.kinds[i] {
                    Kind::Requests => *value += ((i % 50) as u64 + r % 20) as f64,
                    Kind::CpuSeconds => {
                        *value = ((*value * 100.0).round() + (r % 1500) as f64) / 100.0
                    }
                    Kind::Bytes => {
                        *value = (*value + (r % 2_000_001) as f64 - 1_000_000.0)
                            .max(0.0)
                            .round()
                    }
                    Kind::Ratio => *value = if r.is_multiple_of(500) { 0.0 } else { 1.0 },
                }
                Sample {
                    timestamp_ms: self.start_ms + step as i64 * INTERVAL_MS + (r % 4) as i64,
                    value: *value,
                }
            })
            .collect()
    }
}

/// Label sets as remote-write carries them.
pub(crate) fn pb_labels(labels: &[Vec<(String, String)>]) -> Vec<Vec<pb::Label>> {
    labels
        .iter()
        .map(|l| {
            l.iter()
                .map(|(n, v)| pb::Label {
                    name: n.clone().into(),
                    value: v.clone().into(),
                })
                .collect()
        })
        .collect()
}

/// A snappy remote-write body: each series of `labels` with its one sample of `samples`.
pub(crate) fn one_sample_body(
    encoder: &mut snap::raw::Encoder,
    labels: &[Vec<pb::Label>],
    samples: &[Sample],
) -> anyhow::Result<Vec<u8>> {
    let request = pb::WriteRequest {
        timeseries: labels
            .iter()
            .zip(samples)
            .map(|(l, s)| pb::TimeSeries {
                labels: l.clone(),
                samples: vec![pb::Sample {
                    value: s.value,
                    timestamp: s.timestamp_ms,
                }],
                ..Default::default()
            })
            .collect(),
        metadata: vec![],
    };
    Ok(encoder.compress_vec(&prost::Message::encode_to_vec(&request))?)
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

async fn meerkat(args: &Args, steps: u64, start_ms: i64) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default())?;
    let mut generator = Generator::new(args.series, start_ms);
    let labels: Vec<Labels> = generator
        .labels
        .iter()
        .map(|l| Labels::new(l.iter().map(|(n, v)| (n.as_str(), v.as_str()))))
        .collect::<Result<_, _>>()?;
    let tenant = TenantId::default_tenant();
    let steps_per_hour = 3_600_000 / INTERVAL_MS as u64;
    for step in 0..steps {
        let samples = generator.round(step);
        let batch = MetricBatch {
            series: labels
                .iter()
                .zip(samples)
                .map(|(l, s)| Series::with_samples(l.clone(), vec![s]))
                .collect(),
            metadata: vec![],
        };
        let position = BusPosition {
            topic: "metrics".into(),
            partition: 0,
            offset: step,
        };
        store
            .write(&tenant, Payload::Metrics(batch), &position)
            .await?;
        if (step + 1) % steps_per_hour == 0 {
            store.flush().await?;
            eprint!("\r  meerkat: {} of {steps} rounds", step + 1);
        }
    }
    store.flush().await?;
    let parts_before = store.part_count();
    store
        .compact(start_ms + (steps as i64 + 1) * INTERVAL_MS + 2 * 86_400_000)
        .await?;
    eprintln!(
        "\r  meerkat: {steps} rounds, {parts_before} parts compacted to {}",
        store.part_count()
    );
    store.close().await?;
    Ok(dir_bytes(dir.path()))
}

struct Vm {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn victoria_metrics(args: &Args, steps: u64, start_ms: i64) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir()?;
    let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let child = Command::new("victoria-metrics")
        .arg(format!("-storageDataPath={}", dir.path().display()))
        .arg(format!("-httpListenAddr={addr}"))
        .arg("-loggerLevel=ERROR")
        .arg("-retentionPeriod=100y")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start victoria-metrics (Debian package victoria-metrics)")?;
    let vm = Vm { child, addr };
    let agent = ureq::Agent::new_with_defaults();
    let base = format!("http://{}", vm.addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.get(format!("{base}/health")).call().is_err() {
        if Instant::now() > deadline {
            bail!("victoria-metrics never became ready");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut generator = Generator::new(args.series, start_ms);
    let labels = pb_labels(&generator.labels);
    let mut encoder = snap::raw::Encoder::new();
    for step in 0..steps {
        let samples = generator.round(step);
        for (chunk_labels, chunk_samples) in labels.chunks(5_000).zip(samples.chunks(5_000)) {
            let body = one_sample_body(&mut encoder, chunk_labels, chunk_samples)?;
            crate::remote_write::post(&agent, &format!("{base}/api/v1/write"), &body)
                .context("remote-write to victoria-metrics")?;
        }
        if (step + 1) % 240 == 0 {
            eprint!("\r  victoriametrics: {} of {steps} rounds", step + 1);
        }
    }
    agent.get(format!("{base}/internal/force_flush")).call()?;
    agent.get(format!("{base}/internal/force_merge")).call()?;
    // Force-merge runs in the background; wait until the size stops changing.
    let mut previous = 0;
    let mut stable = 0;
    while stable < 5 {
        std::thread::sleep(Duration::from_secs(2));
        let now = dir_bytes(dir.path());
        stable = if now == previous { stable + 1 } else { 0 };
        previous = now;
    }
    eprintln!("\r  victoriametrics: {steps} rounds, flushed and merged");
    Ok(previous)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let steps = args.hours * 3_600_000 / INTERVAL_MS as u64;
    let samples = steps * args.series as u64;
    // A recent, day-aligned start, within VictoriaMetrics' accepted time range.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let start_ms = (now / 86_400_000 - 3) * 86_400_000;
    println!(
        "Bytes on disk per sample: {} series x {} h at 15 s = {samples} samples.\n",
        args.series, args.hours
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let meerkat_bytes = runtime.block_on(meerkat(args, steps, start_ms))?;
    let vm_bytes = victoria_metrics(args, steps, start_ms)?;
    println!("| store | bytes on disk | bytes per sample | vs VictoriaMetrics |");
    println!("|---|---:|---:|---:|");
    for (name, bytes) in [
        ("meerkat (embedded store)", meerkat_bytes),
        ("victoriametrics", vm_bytes),
    ] {
        println!(
            "| {name} | {bytes} | {:.3} | {:.2}x |",
            bytes as f64 / samples as f64,
            bytes as f64 / vm_bytes.max(1) as f64
        );
    }
    Ok(())
}
