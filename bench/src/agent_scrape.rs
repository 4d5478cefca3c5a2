//! Scraping agents, side by side: `meerkat agent cluster`, Prometheus 2.42 in agent mode and
//! vmagent 1.79 scraping the same 200 targets with the same config and remote-writing to
//! the same sink, one agent at a time.
//!
//! Targets: a real node_exporter plus generated exporters served by this process (each a
//! page of application-style series — request counters by method, code and handler,
//! latency histograms, gauges — whose counters advance at every scrape). The sink counts the
//! samples each agent delivers, so an agent that scrapes less cannot look cheaper.
//! Reported per agent: samples delivered, CPU seconds (user + system, from /proc), peak RSS,
//! and Meerkat's figures as ratios of each peer's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use gateway::proto::prometheus as pb;
use prost::Message;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Targets in all (one of them node_exporter)
    #[arg(long, default_value_t = 200)]
    targets: usize,
    /// Series on each generated exporter's page
    #[arg(long, default_value_t = 1_000)]
    series_per_target: usize,
    /// Scrape interval
    #[arg(long, default_value_t = 15)]
    interval_seconds: u64,
    /// Seconds each agent runs
    #[arg(long, default_value_t = 120)]
    duration_seconds: u64,
    /// Agents to measure, in order (Meerkat's ratios are against the others)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "meerkat,prometheus-agent,vmagent"
    )]
    agents: Vec<String>,
    /// The meerkat binary (default: next to this benchmark's binary)
    #[arg(long)]
    meerkat: Option<PathBuf>,
}

/// What the exporters and the sink share.
pub(crate) struct Shared {
    pub(crate) series_per_target: usize,
    /// Pages served (each scrape advances the counters).
    pub(crate) scrapes: AtomicU64,
    pub(crate) samples_received: AtomicU64,
    pub(crate) requests_received: AtomicU64,
}

/// One generated exporter's page: its counters advance with `round`.
fn page(target: usize, round: u64, series: usize) -> String {
    const METHODS: [&str; 3] = ["GET", "POST", "PUT"];
    const CODES: [&str; 4] = ["200", "201", "404", "500"];
    const BUCKETS: [&str; 8] = ["0.01", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf"];
    let mut out = String::with_capacity(series * 90);
    out.push_str(
        "# HELP app_requests_total Requests handled.\n# TYPE app_requests_total counter\n",
    );
    let mut written = 0;
    let mut handler = 0;
    'outer: loop {
        for method in METHODS {
            for code in CODES {
                if written >= series * 6 / 10 {
                    break 'outer;
                }
                let value = (target as u64 + 1) * 10 + round * (handler as u64 % 7 + 1);
                out.push_str(&format!(
                    "app_requests_total{{method=\"{method}\",code=\"{code}\",handler=\"/api/v1/resource{handler}\"}} {value}\n"
                ));
                written += 1;
            }
        }
        handler += 1;
    }
    out.push_str("# HELP app_request_duration_seconds Latency.\n# TYPE app_request_duration_seconds histogram\n");
    let mut h = 0;
    while written + BUCKETS.len() + 2 <= series * 95 / 100 {
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += round * (i as u64 + 1);
            out.push_str(&format!(
                "app_request_duration_seconds_bucket{{handler=\"/h{h}\",le=\"{le}\"}} {cumulative}\n"
            ));
        }
        out.push_str(&format!(
            "app_request_duration_seconds_sum{{handler=\"/h{h}\"}} {}\n",
            round as f64 * 1.25
        ));
        out.push_str(&format!(
            "app_request_duration_seconds_count{{handler=\"/h{h}\"}} {cumulative}\n"
        ));
        written += BUCKETS.len() + 2;
        h += 1;
    }
    out.push_str("# TYPE app_queue_depth gauge\n");
    let mut q = 0;
    while written < series {
        out.push_str(&format!(
            "app_queue_depth{{queue=\"q{q}\"}} {}\n",
            (round + q) % 17
        ));
        written += 1;
        q += 1;
    }
    out
}

async fn exporter(UrlPath(target): UrlPath<usize>, State(shared): State<Arc<Shared>>) -> String {
    let round = shared.scrapes.fetch_add(1, Ordering::Relaxed);
    page(target, round, shared.series_per_target)
}

/// A remote-write receiver that counts the samples it is sent.
pub(crate) async fn sink(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let Ok(raw) = snap::raw::Decoder::new().decompress_vec(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let Ok(request) = pb::WriteRequest::decode(&raw[..]) else {
        return StatusCode::BAD_REQUEST;
    };
    let samples: usize = request.timeseries.iter().map(|s| s.samples.len()).sum();
    shared
        .samples_received
        .fetch_add(samples as u64, Ordering::Relaxed);
    shared.requests_received.fetch_add(1, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

/// The scrape config every agent runs (vmagent's without `remote_write`: it takes the URL
/// as a flag and refuses the section).
fn scrape_config(
    args: &Args,
    exporters: SocketAddr,
    node: SocketAddr,
    sink: Option<&str>,
) -> String {
    let mut config = format!(
        "global:\n  scrape_interval: {}s\n  scrape_timeout: {}s\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['{node}']\n  - job_name: app\n    static_configs:\n",
        args.interval_seconds,
        args.interval_seconds.min(10)
    );
    for i in 1..args.targets {
        config.push_str(&format!(
            "      - targets: ['{exporters}']\n        labels: {{__metrics_path__: /gen/{i}, instance: 'app-{i}:8080'}}\n"
        ));
    }
    if let Some(url) = sink {
        config.push_str(&format!("remote_write:\n  - url: {url}\n"));
    }
    config
}

struct Measured {
    name: String,
    samples: u64,
    cpu_seconds: f64,
    peak_rss: u64,
    final_rss: u64,
}

fn start_agent(
    name: &str,
    args: &Args,
    dir: &Path,
    exporters: SocketAddr,
    node: SocketAddr,
    sink_url: &str,
) -> anyhow::Result<Child> {
    let with_sink = dir.join("with-sink.yml");
    std::fs::write(
        &with_sink,
        scrape_config(args, exporters, node, Some(sink_url)),
    )?;
    let without_sink = dir.join("scrape-only.yml");
    std::fs::write(&without_sink, scrape_config(args, exporters, node, None))?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut command = match name {
        "meerkat" => {
            let mut command = Command::new(crate::remote_write::meerkat_binary(
                args.meerkat.as_deref(),
            )?);
            command
                .args(["agent", "cluster", "--scrape-config"])
                .arg(&with_sink);
            command.env("MEERKAT_LOG__LEVEL", "warn");
            command
        }
        "prometheus-agent" => {
            let mut command = Command::new("prometheus");
            command
                .arg("--enable-feature=agent")
                .arg(format!("--config.file={}", with_sink.display()))
                .arg(format!(
                    "--storage.agent.path={}",
                    dir.join("agent-wal").display()
                ))
                .arg(format!(
                    "--web.listen-address={}",
                    crate::remote_write::free_addr()?
                ));
            command
        }
        "vmagent" => {
            let mut command = Command::new("vmagent");
            command
                .arg(format!("-promscrape.config={}", without_sink.display()))
                .arg(format!("-remoteWrite.url={sink_url}"))
                .arg(format!(
                    "-remoteWrite.tmpDataPath={}",
                    dir.join("vmagent-data").display()
                ))
                .arg(format!(
                    "-httpListenAddr={}",
                    crate::remote_write::free_addr()?
                ));
            command
        }
        other => bail!("unknown agent {other:?}: use meerkat, prometheus-agent or vmagent"),
    };
    command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    command.spawn().with_context(|| {
        format!("cannot start {name} (./scripts/install-peers installs the peers)")
    })
}

fn measure(
    name: &str,
    args: &Args,
    shared: &Shared,
    exporters: SocketAddr,
    node: SocketAddr,
    sink_url: &str,
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let before = shared.samples_received.load(Ordering::Relaxed);
    let mut child = start_agent(name, args, dir.path(), exporters, node, sink_url)?;
    let started = Instant::now();
    let mut peak_rss = 0;
    let mut last = (0.0, 0);
    while started.elapsed() < Duration::from_secs(args.duration_seconds) {
        std::thread::sleep(Duration::from_millis(500));
        if let Some(status) = child.try_wait()? {
            let log =
                std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap_or_default();
            bail!("{name} exited early ({status}):\n{log}");
        }
        last = crate::remote_write::cpu_and_rss(child.id())?;
        peak_rss = peak_rss.max(last.1);
        eprint!(
            "\r  {name}: {:>3} s, {} samples delivered",
            started.elapsed().as_secs(),
            shared.samples_received.load(Ordering::Relaxed) - before
        );
    }
    eprintln!();
    let samples = shared.samples_received.load(Ordering::Relaxed) - before;
    crate::remote_write::stop_child(&mut child, Duration::from_secs(20));
    Ok(Measured {
        name: name.to_owned(),
        samples,
        cpu_seconds: last.0,
        peak_rss,
        final_rss: last.1,
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.targets < 2 {
        bail!("--targets must be at least 2 (node_exporter and one generated exporter)");
    }
    if args.agents.first().map(String::as_str) != Some("meerkat") {
        bail!("--agents must start with meerkat: the ratios are Meerkat's against the others");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared {
        series_per_target: args.series_per_target,
        scrapes: AtomicU64::new(0),
        samples_received: AtomicU64::new(0),
        requests_received: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/gen/{target}", get(exporter))
        .route("/api/v1/write", post(sink))
        .with_state(shared.clone());
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let exporters = listener.local_addr()?;
    runtime.spawn(async move { axum::serve(listener, app).await });
    let sink_url = format!("http://{exporters}/api/v1/write");

    let node = crate::remote_write::free_addr()?;
    let mut node_exporter = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address={node}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start prometheus-node-exporter (./scripts/install-peers installs it)")?;
    crate::remote_write::wait_ready(&format!("http://{node}/metrics"))?;
    let node_series = ureq::get(&format!("http://{node}/metrics"))
        .call()?
        .body_mut()
        .read_to_string()?
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();

    println!(
        "Scraping agents: {} targets (node_exporter with {node_series} series, {} generated \
         exporters with {} series each) every {} s, remote-written to one sink; {} s per \
         agent, one agent at a time; {} cores.\n",
        args.targets,
        args.targets - 1,
        args.series_per_target,
        args.interval_seconds,
        args.duration_seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut results = Vec::new();
    for name in &args.agents {
        let measured = measure(name, args, &shared, exporters, node, &sink_url);
        match measured {
            Ok(m) => results.push(m),
            Err(error) => {
                let _ = node_exporter.kill();
                return Err(error);
            }
        }
    }
    let _ = node_exporter.kill();
    let _ = node_exporter.wait();

    println!(
        "| agent | samples delivered | CPU s | CPU s per million samples | peak RSS MiB | RSS at end MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for m in &results {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.1} | {:.1} |",
            m.name,
            m.samples,
            m.cpu_seconds,
            m.cpu_seconds / (m.samples.max(1) as f64 / 1e6),
            m.peak_rss as f64 / (1 << 20) as f64,
            m.final_rss as f64 / (1 << 20) as f64
        );
    }
    let meerkat = &results[0];
    println!();
    for peer in &results[1..] {
        let cpu_ratio = (meerkat.cpu_seconds / meerkat.samples.max(1) as f64)
            / (peer.cpu_seconds / peer.samples.max(1) as f64);
        println!(
            "meerkat / {}: CPU per sample {:.2}x, peak RSS {:.2}x, samples delivered {:.2}x",
            peer.name,
            cpu_ratio,
            meerkat.peak_rss as f64 / peer.peak_rss.max(1) as f64,
            meerkat.samples as f64 / peer.samples.max(1) as f64
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pages_have_the_asked_series_and_advance() {
        let first = page(3, 1, 1_000);
        let lines = |p: &str| p.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(lines(&first), 1_000);
        let second = page(3, 2, 1_000);
        assert_ne!(first, second, "counters advance");
    }
}
