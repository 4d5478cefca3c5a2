//! The node agent's idle footprint on this host: `meerkat agent node` collecting host and
//! container metrics every interval (with its OTLP proxy and log tailer running, nothing
//! sent to them), beside node_exporter 1.5 scraped at the same interval — the program it
//! replaces on a node. Reported per program: average and peak RSS, CPU seconds per minute,
//! and for the agent the samples it delivered per minute; Meerkat's figures also as ratios.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::routing::post;

use crate::agent_scrape::{Shared, sink};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Collection (and node_exporter scrape) interval
    #[arg(long, default_value_t = 15)]
    interval_seconds: u64,
    /// Seconds each program runs
    #[arg(long, default_value_t = 180)]
    duration_seconds: u64,
    /// The meerkat binary (default: next to this benchmark's binary)
    #[arg(long)]
    meerkat: Option<PathBuf>,
}

struct Footprint {
    name: &'static str,
    cpu_seconds: f64,
    average_rss: f64,
    peak_rss: u64,
    samples: u64,
}

/// Samples CPU and RSS of `child` every 500 ms for the run; `tick` runs each interval
/// (node_exporter is scraped by it).
fn watch(
    name: &'static str,
    mut child: Child,
    args: &Args,
    mut tick: impl FnMut(),
) -> anyhow::Result<(f64, f64, u64)> {
    let started = Instant::now();
    let mut last_tick = None::<Instant>;
    let (mut cpu, mut peak, mut rss_sum, mut rss_count) = (0.0, 0u64, 0.0, 0u64);
    while started.elapsed() < Duration::from_secs(args.duration_seconds) {
        if last_tick.is_none_or(|at| at.elapsed() >= Duration::from_secs(args.interval_seconds)) {
            last_tick = Some(Instant::now());
            tick();
        }
        std::thread::sleep(Duration::from_millis(500));
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited early ({status})");
        }
        let (cpu_now, rss) = crate::remote_write::cpu_and_rss(child.id())?;
        cpu = cpu_now;
        peak = peak.max(rss);
        rss_sum += rss as f64;
        rss_count += 1;
        eprint!("\r  {name}: {:>3} s", started.elapsed().as_secs());
    }
    eprintln!();
    crate::remote_write::stop_child(&mut child, Duration::from_secs(20));
    Ok((cpu, rss_sum / rss_count.max(1) as f64, peak))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.interval_seconds == 0 || args.duration_seconds < args.interval_seconds {
        bail!("--duration-seconds must cover at least one --interval-seconds (at least 1)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared {
        series_per_target: 0,
        scrapes: AtomicU64::new(0),
        samples_received: AtomicU64::new(0),
        requests_received: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/api/v1/write", post(sink))
        .with_state(shared.clone());
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let gateway = listener.local_addr()?;
    runtime.spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir()?;
    println!(
        "Node agent idle footprint: collecting every {} s for {} s on this host ({} cores), \
         beside node_exporter scraped at the same interval.\n",
        args.interval_seconds,
        args.duration_seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let meerkat = crate::remote_write::meerkat_binary(args.meerkat.as_deref())?;
    let agent = Command::new(meerkat)
        .args(["agent", "node", "--gateway", &format!("http://{gateway}")])
        .args(["--interval-seconds", &args.interval_seconds.to_string()])
        .arg("--buffer-dir")
        .arg(dir.path().join("buffer"))
        .arg("--checkpoint-dir")
        .arg(dir.path().join("checkpoints"))
        .args([
            "--otlp-grpc-listen",
            &crate::remote_write::free_addr()?.to_string(),
        ])
        .args([
            "--otlp-http-listen",
            &crate::remote_write::free_addr()?.to_string(),
        ])
        .env("MEERKAT_LOG__LEVEL", "warn")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start meerkat agent node")?;
    let (cpu, average, peak) = watch("meerkat agent node", agent, args, || {})?;
    let meerkat = Footprint {
        name: "meerkat agent node",
        cpu_seconds: cpu,
        average_rss: average,
        peak_rss: peak,
        samples: shared.samples_received.load(Ordering::Relaxed),
    };

    let node = crate::remote_write::free_addr()?;
    let exporter = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address={node}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start prometheus-node-exporter (./scripts/install-peers installs it)")?;
    crate::remote_write::wait_ready(&format!("http://{node}/metrics"))?;
    let scraped = AtomicU64::new(0);
    let (cpu, average, peak) = watch("node_exporter", exporter, args, || {
        if let Ok(mut response) = ureq::get(&format!("http://{node}/metrics")).call() {
            let lines = response
                .body_mut()
                .read_to_string()
                .map(|page| page.lines().filter(|l| !l.starts_with('#')).count())
                .unwrap_or(0);
            scraped.fetch_add(lines as u64, Ordering::Relaxed);
        }
    })?;
    let node_exporter = Footprint {
        name: "node_exporter",
        cpu_seconds: cpu,
        average_rss: average,
        peak_rss: peak,
        samples: scraped.load(Ordering::Relaxed),
    };

    let minutes = args.duration_seconds as f64 / 60.0;
    let mib = |bytes: f64| bytes / f64::from(1 << 20);
    println!(
        "| program | CPU s per minute | average RSS MiB | peak RSS MiB | samples per minute |"
    );
    println!("|---|---:|---:|---:|---:|");
    for f in [&meerkat, &node_exporter] {
        println!(
            "| {} | {:.3} | {:.1} | {:.1} | {:.0} |",
            f.name,
            f.cpu_seconds / minutes,
            mib(f.average_rss),
            mib(f.peak_rss as f64),
            f.samples as f64 / minutes
        );
    }
    println!(
        "\nmeerkat agent node / node_exporter: CPU {:.2}x, average RSS {:.2}x, peak RSS {:.2}x \
         (the agent also delivers what it collects, runs pod discovery, the log tailer and \
         the OTLP proxy; node_exporter only answers scrapes)",
        meerkat.cpu_seconds / node_exporter.cpu_seconds.max(1e-9),
        meerkat.average_rss / node_exporter.average_rss.max(1.0),
        meerkat.peak_rss as f64 / node_exporter.peak_rss.max(1) as f64
    );
    Ok(())
}
