//! Dashboard queries, side by side: the panels of a typical Grafana dashboard run against
//! `meerkat serve`, Prometheus 2.42 and VictoriaMetrics 1.79 holding the same data.
//!
//! The data is the storage benchmark's (`storage-size`: request counters, CPU seconds,
//! memory and filesystem bytes, readiness ratios, sampled every 15 s with scrape jitter)
//! plus classic latency histograms (10 buckets), remote-written round by round to all three
//! servers. Once every server holds every sample, each query runs as Grafana runs it: range
//! queries over the last 1 h, 6 h and 24 h at Grafana's usual steps (15 s, 30 s, 2 m) with a
//! matching `rate` window, and stat-panel instant queries (`*_over_time` over the whole
//! range). Each query runs `--runs` times per server, servers taking turns so that noise
//! falls on all of them; VictoriaMetrics is asked not to use its result cache (`nocache=1`),
//! since the others have none. Printed: median and p99 latency per query and server, and
//! Meerkat's median as a ratio of each peer's (below 1: Meerkat faster).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use model::Sample;

use crate::remote_write::{Server, post_to_all, start_in};
use crate::storage_size::{Generator, INTERVAL_MS, one_sample_body, pb_labels};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Series of the storage benchmark's families
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Latency histograms (10 buckets each, plus `_sum` and `_count`)
    #[arg(long, default_value_t = 100)]
    histograms: usize,
    /// Hours of data at a 15 s interval, ending 10 minutes ago
    #[arg(long, default_value_t = 24)]
    hours: u64,
    /// Runs of each query on each server
    #[arg(long, default_value_t = 11)]
    runs: usize,
    /// Servers to compare (Meerkat's ratios are against the others)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "meerkat,prometheus,victoriametrics"
    )]
    targets: Vec<String>,
    /// The meerkat binary (default: next to this benchmark's binary)
    #[arg(long)]
    meerkat: Option<PathBuf>,
    /// Keeps Meerkat's data here; a later run with the same `--series`, `--histograms` and
    /// `--hours` reuses it instead of loading again (its queries then end when that data
    /// ends), so a change to the read path is measured in minutes
    #[arg(long)]
    meerkat_data: Option<PathBuf>,
}

/// What a kept Meerkat data directory holds, written once it holds every sample.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct KeptData {
    series: usize,
    histograms: usize,
    hours: u64,
    end_ms: i64,
}

const KEPT_DATA_FILE: &str = "bench-dashboard.json";

/// The kept data set in `dir`, if one of this shape is complete there.
fn kept_data(args: &Args, dir: &std::path::Path) -> Option<KeptData> {
    let text = std::fs::read_to_string(dir.join(KEPT_DATA_FILE)).ok()?;
    let kept: KeptData = serde_json::from_str(&text).ok()?;
    (kept.series == args.series && kept.histograms == args.histograms && kept.hours == args.hours)
        .then_some(kept)
}

const BUCKETS: [&str; 10] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf",
];

/// The latency histograms' series, as (labels, per-round state).
struct Histograms {
    labels: Vec<Vec<(String, String)>>,
    /// Per histogram: cumulative bucket counts, then sum, then count.
    state: Vec<[f64; 12]>,
}

impl Histograms {
    fn new(count: usize) -> Self {
        let mut labels = Vec::new();
        for i in 0..count {
            let base = |name: &str| {
                vec![
                    ("__name__".to_owned(), name.to_owned()),
                    ("job".to_owned(), "kubernetes-pods".to_owned()),
                    ("namespace".to_owned(), format!("team-{}", i % 30)),
                    ("service".to_owned(), format!("svc-{i}")),
                ]
            };
            for le in BUCKETS {
                let mut l = base("http_request_duration_seconds_bucket");
                l.insert(2, ("le".to_owned(), le.to_owned()));
                labels.push(l);
            }
            labels.push(base("http_request_duration_seconds_sum"));
            labels.push(base("http_request_duration_seconds_count"));
        }
        Self {
            labels,
            state: vec![[0.0; 12]; count],
        }
    }

    /// One scrape round: each histogram observes a few requests.
    fn round(&mut self, step: u64) -> Vec<f64> {
        let bounds = [
            0.005,
            0.01,
            0.025,
            0.05,
            0.1,
            0.25,
            0.5,
            1.0,
            2.5,
            f64::INFINITY,
        ];
        let mut values = Vec::with_capacity(self.labels.len());
        for (i, state) in self.state.iter_mut().enumerate() {
            let r = noise(i, step);
            for k in 0..(r % 40) {
                // Mostly fast, with a tail: a latency from 1 ms to ~4 s.
                let x = noise(i, step * 64 + k) % 10_000;
                let seconds = 0.001 * (1.0 + (x as f64 / 1_200.0).exp());
                for (b, bound) in bounds.iter().enumerate() {
                    if seconds <= *bound {
                        state[b] += 1.0;
                    }
                }
                state[10] += seconds;
                state[11] += 1.0;
            }
            values.extend_from_slice(state);
        }
        values
    }
}

fn noise(series: usize, step: u64) -> u64 {
    let mut x = (series as u64 ^ 0xA5A5_5A5A).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ step.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 29)
}

/// A dashboard range: its length, Grafana's step for it, and the `rate` window it picks.
struct Range {
    name: &'static str,
    seconds: i64,
    step: &'static str,
    rate: &'static str,
}

const RANGES: [Range; 3] = [
    Range {
        name: "1h",
        seconds: 3_600,
        step: "15",
        rate: "1m",
    },
    Range {
        name: "6h",
        seconds: 6 * 3_600,
        step: "30",
        rate: "2m",
    },
    Range {
        name: "24h",
        seconds: 24 * 3_600,
        step: "120",
        rate: "5m",
    },
];

/// The panels: (name, query with `$rate` and `$range`, instant?).
const PANELS: &[(&str, &str, bool)] = &[
    (
        "request rate",
        "sum(rate(http_requests_total[$rate]))",
        false,
    ),
    (
        "rate by namespace",
        "sum by (namespace) (rate(http_requests_total[$rate]))",
        false,
    ),
    (
        "top 5 pods by CPU",
        "topk(5, sum by (pod) (rate(node_cpu_seconds_total[$rate])))",
        false,
    ),
    (
        "p99 latency",
        "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[$rate])))",
        false,
    ),
    (
        "p90 by service",
        "histogram_quantile(0.9, sum by (service, le) (rate(http_request_duration_seconds_bucket{namespace=~\"team-1.*\"}[$rate])))",
        false,
    ),
    (
        "memory by namespace",
        "sum by (namespace) (container_memory_working_set_bytes)",
        false,
    ),
    (
        "fs free, regex",
        "avg_over_time(node_filesystem_avail_bytes{pod=~\"app-0.*\"}[$rate])",
        false,
    ),
    (
        "pods not ready",
        "count(kube_pod_container_status_ready == 0)",
        false,
    ),
    (
        "stat: peak memory",
        "max by (namespace) (max_over_time(container_memory_working_set_bytes[$range]))",
        true,
    ),
    (
        "stat: avg latency",
        "sum(increase(http_request_duration_seconds_sum[$range])) / sum(increase(http_request_duration_seconds_count[$range]))",
        true,
    ),
];

struct Target {
    server: Server,
    base: String,
    /// Asks for no result cache (VictoriaMetrics).
    nocache: bool,
}

/// Remote-writes the whole data set to every target, round by round.
fn load(args: &Args, targets: &[Target], start_ms: i64, steps: u64) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut generator = Generator::new(args.series, start_ms);
    let mut histograms = Histograms::new(args.histograms);
    let mut labels = pb_labels(&generator.labels);
    labels.extend(pb_labels(&histograms.labels));
    let mut encoder = snap::raw::Encoder::new();
    let servers: Vec<&Server> = targets.iter().map(|t| &t.server).collect();
    let began = Instant::now();
    for step in 0..steps {
        let mut samples = generator.round(step);
        let at = start_ms + step as i64 * INTERVAL_MS;
        samples.extend(histograms.round(step).into_iter().map(|value| Sample {
            timestamp_ms: at,
            value,
        }));
        for (chunk_labels, chunk_samples) in labels.chunks(5_000).zip(samples.chunks(5_000)) {
            let body = one_sample_body(&mut encoder, chunk_labels, chunk_samples)?;
            post_to_all(&agent, &servers, &body)?;
        }
        if (step + 1) % 240 == 0 {
            eprint!(
                "\r  loading: {} of {steps} rounds ({:.0} s)",
                step + 1,
                began.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!();
    Ok(())
}

/// A query's URL on `target`.
fn query_url(target: &Target, query: &str, range: &Range, end_s: i64, instant: bool) -> String {
    let mut url = if instant {
        format!("{}/api/v1/query?time={end_s}", target.base)
    } else {
        format!(
            "{}/api/v1/query_range?start={}&end={end_s}&step={}",
            target.base,
            end_s - range.seconds,
            range.step
        )
    };
    url.push_str("&query=");
    url.push_str(&encode(query));
    if target.nocache {
        url.push_str("&nocache=1");
    }
    url
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `url` and returns the latency and the number of result series.
fn time_query(agent: &ureq::Agent, url: &str) -> anyhow::Result<(Duration, usize)> {
    let began = Instant::now();
    let mut response = agent.get(url).call()?;
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()?;
    let elapsed = began.elapsed();
    let json: serde_json::Value = serde_json::from_str(&body)?;
    if json["status"] != "success" {
        bail!("{body}");
    }
    let series = json["data"]["result"].as_array().map_or(0, Vec::len);
    Ok((elapsed, series))
}

/// Waits until `target` holds every sample of the histograms (the last family written in
/// each round, so the rest is in too).
fn wait_complete(target: &Target, args: &Args, end_ms: i64, steps: u64) -> anyhow::Result<()> {
    let agent = ureq::Agent::new_with_defaults();
    let expected = (args.histograms * BUCKETS.len()) as u64 * steps;
    let query = format!(
        "sum(count_over_time(http_request_duration_seconds_bucket[{}h]))",
        args.hours + 1
    );
    let url = query_url(target, &query, &RANGES[0], end_ms / 1000 + 1, true);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let body = agent.get(&url).call()?.body_mut().read_to_string()?;
        let json: serde_json::Value = serde_json::from_str(&body)?;
        let held = json["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        if held == expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} holds {held} of {expected} bucket samples",
                target.server.name
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The median and the p99 (nearest rank) of `latencies`, in milliseconds.
fn median_p99(latencies: &mut [Duration]) -> (f64, f64) {
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let n = latencies.len();
    let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n) - 1;
    (ms(latencies[n / 2]), ms(latencies[rank]))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.runs == 0 || args.series < 5 {
        bail!("--runs must be at least 1 and --series at least 5");
    }
    if args.targets.first().map(String::as_str) != Some("meerkat") {
        bail!("--targets must start with meerkat: the ratios are Meerkat's against the others");
    }
    let meerkat = crate::remote_write::meerkat_binary(args.meerkat.as_deref())?;
    let steps = args.hours * 3_600_000 / INTERVAL_MS as u64;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let kept = args
        .meerkat_data
        .as_deref()
        .and_then(|dir| kept_data(args, dir));
    if kept.is_some() && args.targets.len() > 1 {
        bail!("--meerkat-data holds an earlier run's data: compare it with --targets meerkat only");
    }
    if let (Some(dir), None) = (&args.meerkat_data, &kept) {
        if dir.exists() {
            bail!(
                "--meerkat-data {} exists but holds no complete data of this shape",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir)?;
    }
    let end_ms = match &kept {
        Some(kept) => kept.end_ms,
        None => (now_ms - 600_000) / 60_000 * 60_000,
    };
    let start_ms = end_ms - steps as i64 * INTERVAL_MS;
    let series = args.series + args.histograms * (BUCKETS.len() + 2);
    println!(
        "Dashboard queries: {series} series x {} h at 15 s = {} samples; {} runs per query \
         and server; {} cores.\n",
        args.hours,
        series as u64 * steps,
        args.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut targets = Vec::new();
    for name in &args.targets {
        let data_dir = args.meerkat_data.as_deref().filter(|_| name == "meerkat");
        let server = start_in(name, &meerkat, data_dir)?;
        let base = server
            .write_url
            .strip_suffix("/api/v1/write")
            .context("write URL")?
            .to_owned();
        targets.push(Target {
            nocache: server.name == "victoriametrics",
            server,
            base,
        });
    }
    if kept.is_none() {
        load(args, &targets, start_ms, steps)?;
    }
    for target in &targets {
        wait_complete(target, args, end_ms, steps)?;
        eprintln!("  {} holds all the data", target.server.name);
    }
    if let (Some(dir), None) = (&args.meerkat_data, &kept) {
        let shape = KeptData {
            series: args.series,
            histograms: args.histograms,
            hours: args.hours,
            end_ms,
        };
        std::fs::write(dir.join(KEPT_DATA_FILE), serde_json::to_string(&shape)?)?;
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into();
    let end_s = end_ms / 1000;
    let mut header = String::from("| panel | range |");
    let mut rule = String::from("|---|---|");
    for target in &targets {
        header.push_str(&format!(" {} median / p99 ms |", target.server.name));
        rule.push_str("---:|");
    }
    for target in targets.iter().skip(1) {
        header.push_str(&format!(" meerkat / {} |", target.server.name));
        rule.push_str("---:|");
    }
    println!("{header}\n{rule}");
    let mut wins = vec![0usize; targets.len()];
    let mut cases = 0;
    for range in &RANGES {
        if range.seconds > args.hours as i64 * 3_600 {
            continue;
        }
        for (panel, template, instant) in PANELS {
            let query = template
                .replace("$rate", range.rate)
                .replace("$range", range.name);
            let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); targets.len()];
            let mut sizes: Vec<usize> = vec![0; targets.len()];
            for run in 0..args.runs {
                for k in 0..targets.len() {
                    let i = (run + k) % targets.len();
                    let url = query_url(&targets[i], &query, range, end_s, *instant);
                    let (latency, size) = time_query(&agent, &url)
                        .with_context(|| format!("{} on {}", query, targets[i].server.name))?;
                    latencies[i].push(latency);
                    sizes[i] = size;
                }
            }
            let stats: Vec<(f64, f64)> = latencies.iter_mut().map(|l| median_p99(l)).collect();
            let mut row = format!(
                "| {panel} | {}{} |",
                range.name,
                if *instant { " (instant)" } else { "" }
            );
            for (median, p99) in &stats {
                row.push_str(&format!(" {median:.1} / {p99:.1} |"));
            }
            for (i, (median, _)) in stats.iter().enumerate().skip(1) {
                row.push_str(&format!(" {:.2}x |", stats[0].0 / median));
                if stats[0].0 <= *median {
                    wins[i] += 1;
                }
            }
            println!("{row}");
            cases += 1;
            if sizes.iter().any(|s| *s != sizes[0]) {
                println!("  (result series differ: {sizes:?})");
            }
        }
    }
    println!();
    for (i, target) in targets.iter().enumerate().skip(1) {
        println!(
            "Meerkat's median at or below {}'s on {} of {cases} queries.",
            target.server.name, wins[i]
        );
    }
    Ok(())
}
