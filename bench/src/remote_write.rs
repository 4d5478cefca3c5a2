//! Remote-write ingest, side by side: the same generated load against `meerkat serve`,
//! VictoriaMetrics and Prometheus (remote-write receiver), one at a time on this machine.
//!
//! The load looks like what Prometheus servers send: many series with realistic label sets
//! (node_exporter-, cAdvisor- and application-style), one sample per series per request, a
//! new "scrape round" of monotonic timestamps every round, requests snappy-compressed
//! protobuf. Bodies are generated ahead by one thread; `concurrency` threads send them over
//! keep-alive connections as fast as the server answers.
//!
//! Reported per server: accepted samples per second (wall clock), the server process's CPU
//! seconds (user + system, from /proc), samples per CPU-second, peak RSS, and refusals.
//! Meerkat's figure includes its durable bus: every 2xx follows an fsync'd append.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gateway::proto::prometheus as pb;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Distinct series in the generated load
    #[arg(long, default_value_t = 100_000)]
    pub series: usize,
    /// Samples (one per series) in each remote-write request
    #[arg(long, default_value_t = 2_000)]
    pub samples_per_request: usize,
    /// Requests in flight at once
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Seconds of load per server
    #[arg(long, default_value_t = 30)]
    pub duration_seconds: u64,
    /// Simulated scrape interval: timestamps advance by this much per round
    #[arg(long, default_value_t = 10)]
    pub scrape_interval_seconds: u64,
    /// Cap on the load, samples per second in total (0: as fast as the server answers)
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Servers to measure, in order
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "meerkat,victoriametrics,prometheus"
    )]
    pub targets: Vec<String>,
    /// The meerkat binary (default: next to this benchmark's binary)
    #[arg(long)]
    pub meerkat: Option<PathBuf>,
}

/// A label name and the values it takes.
type LabelValues = (&'static str, &'static [&'static str]);

/// Metric families and the extra labels they carry, as real exporters name them.
const FAMILIES: &[(&str, &[LabelValues])] = &[
    (
        "node_cpu_seconds_total",
        &[
            ("cpu", &["0", "1", "2", "3", "4", "5", "6", "7"]),
            ("mode", &["idle", "iowait", "system", "user", "steal"]),
        ],
    ),
    (
        "node_network_receive_bytes_total",
        &[("device", &["eth0", "eth1", "lo", "cni0"])],
    ),
    (
        "node_filesystem_avail_bytes",
        &[
            ("device", &["/dev/vda1", "/dev/vdb", "tmpfs"]),
            ("mountpoint", &["/", "/var/lib", "/run"]),
        ],
    ),
    (
        "container_cpu_usage_seconds_total",
        &[
            ("container", &["app", "sidecar", "istio-proxy"]),
            ("cpu", &["total"]),
        ],
    ),
    (
        "container_memory_working_set_bytes",
        &[("container", &["app", "sidecar", "istio-proxy"])],
    ),
    (
        "http_requests_total",
        &[
            ("method", &["GET", "POST", "PUT"]),
            ("code", &["200", "201", "404", "500"]),
            ("handler", &["/api/v1/orders", "/api/v1/users", "/healthz"]),
        ],
    ),
    (
        "http_request_duration_seconds_bucket",
        &[
            ("le", &["0.005", "0.01", "0.05", "0.1", "0.5", "1", "+Inf"]),
            ("handler", &["/api/v1/orders", "/api/v1/users"]),
        ],
    ),
    (
        "kube_pod_container_status_restarts_total",
        &[("container", &["app", "sidecar"])],
    ),
];

/// The label set of series `index`: a family, its own labels, and where it came from.
pub(crate) fn series_labels(index: usize) -> Vec<pb::Label> {
    let (family, extra) = FAMILIES[index % FAMILIES.len()];
    let mut rest = index / FAMILIES.len();
    let mut labels = vec![pb::Label {
        name: "__name__".into(),
        value: family.into(),
    }];
    for (name, values) in extra.iter() {
        labels.push(pb::Label {
            name: (*name).into(),
            value: values[rest % values.len()].into(),
        });
        rest /= values.len();
    }
    let node = rest % 500;
    let pod = rest / 500;
    labels.extend([
        pb::Label {
            name: "instance".into(),
            value: format!("10.{}.{}.{}:9100", node / 250, node % 250, pod % 200).into(),
        },
        pb::Label {
            name: "job".into(),
            value: "kubernetes-pods".into(),
        },
        pb::Label {
            name: "namespace".into(),
            value: format!("team-{}", pod % 40).into(),
        },
        pb::Label {
            name: "pod".into(),
            value: format!(
                "checkout-{:08x}-{:05x}",
                pod.wrapping_mul(2_654_435_761) & 0xffff_ffff,
                node
            )
            .into(),
        },
    ]);
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}

struct Body {
    bytes: Vec<u8>,
    samples: u64,
}

/// Generates request bodies round after round until told to stop.
fn generate(args: &Args, start_ms: i64, bodies: mpsc::SyncSender<Body>, stop: Arc<AtomicBool>) {
    let labels: Vec<Vec<pb::Label>> = (0..args.series).map(series_labels).collect();
    let mut encoder = snap::raw::Encoder::new();
    let mut round: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let timestamp = start_ms + round * (args.scrape_interval_seconds as i64) * 1000;
        for (chunk_index, chunk) in labels.chunks(args.samples_per_request).enumerate() {
            let request = pb::WriteRequest {
                timeseries: chunk
                    .iter()
                    .enumerate()
                    .map(|(i, labels)| pb::TimeSeries {
                        labels: labels.clone(),
                        samples: vec![pb::Sample {
                            value: (round as f64) * 10.0 + ((chunk_index * 7 + i) % 13) as f64,
                            timestamp,
                        }],
                        ..Default::default()
                    })
                    .collect(),
                metadata: vec![],
            };
            let raw = prost::Message::encode_to_vec(&request);
            let Ok(bytes) = encoder.compress_vec(&raw) else {
                return;
            };
            if bodies
                .send(Body {
                    bytes,
                    samples: chunk.len() as u64,
                })
                .is_err()
            {
                return;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
        round += 1;
    }
}

/// A server under test, started by this benchmark and stopped by its PID.
pub(crate) struct Server {
    pub name: &'static str,
    pub child: Child,
    /// VictoriaMetrics's rule evaluator, when the server evaluates rules.
    pub vmalert: Option<Child>,
    pub vmalert_metrics_url: Option<String>,
    pub write_url: String,
    /// The data directory, removed on drop unless the caller gave its own.
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(vmalert) = &mut self.vmalert {
            stop_child(vmalert, Duration::from_secs(30));
        }
        stop_child(&mut self.child, Duration::from_secs(30));
    }
}

/// Stops a peer or Meerkat the way an operator would: SIGTERM, up to `patience` to exit
/// cleanly, then SIGKILL.
pub(crate) fn stop_child(child: &mut Child, patience: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + patience;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(crate) fn wait_ready(url: &str) -> anyhow::Result<()> {
    let agent = ureq::Agent::new_with_defaults();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if agent.get(url).call().is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url} never became ready")
}

pub(crate) fn start(target: &str, meerkat: &Path) -> anyhow::Result<Server> {
    start_in(target, meerkat, None)
}

/// Starts `target` on `data_dir` (kept after the server stops), or on a temporary directory.
pub(crate) fn start_in(
    target: &str,
    meerkat: &Path,
    data_dir: Option<&Path>,
) -> anyhow::Result<Server> {
    start_evaluating(target, meerkat, data_dir, None)
}

/// Rule files a server evaluates, and how often.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules<'a> {
    pub file: &'a Path,
    pub interval_seconds: u64,
}

/// [`start_in`], evaluating `rules` too (VictoriaMetrics through its vmalert).
pub(crate) fn start_evaluating(
    target: &str,
    meerkat: &Path,
    data_dir: Option<&Path>,
    rules: Option<Rules<'_>>,
) -> anyhow::Result<Server> {
    let temporary = match data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir()?),
    };
    let dir: &Path = match (data_dir, &temporary) {
        (Some(path), _) => path,
        (None, Some(temporary)) => temporary.path(),
        (None, None) => bail!("no data directory"),
    };
    let addr = free_addr()?;
    let quiet = || Stdio::null();
    let mut vmalert = None;
    let mut vmalert_metrics_url = None;
    let (name, child, ready, write_path) = match target {
        "meerkat" => {
            let mut command = Command::new(meerkat);
            if let Some(rules) = rules {
                command.arg("--rule-files").arg(rules.file).env(
                    "MEERKAT_ALERTING__EVALUATION_INTERVAL_SECONDS",
                    rules.interval_seconds.to_string(),
                );
            }
            let child = command
                .arg("serve")
                // The peers store only the benchmark's load; so does Meerkat.
                .arg("--no-host-metrics")
                .arg("--http-listen")
                .arg(addr.to_string())
                .arg("--data-dir")
                .arg(dir)
                .arg("--log-level")
                .arg("warn")
                .env("MEERKAT_OTLP_GRPC_LISTEN", "127.0.0.1:0")
                .env("MEERKAT_OTLP_HTTP_LISTEN", "127.0.0.1:0")
                .stdout(quiet())
                .stderr(quiet())
                .spawn()
                .with_context(|| format!("cannot start {}", meerkat.display()))?;
            ("meerkat", child, "/health", "/api/v1/write")
        }
        "victoriametrics" => {
            let child = Command::new("victoria-metrics")
                .arg(format!("-storageDataPath={}", dir.display()))
                .arg(format!("-httpListenAddr={addr}"))
                .arg("-loggerLevel=ERROR")
                .stdout(quiet())
                .stderr(quiet())
                .spawn()
                .context("cannot start victoria-metrics (Debian package victoria-metrics)")?;
            if let Some(rules) = rules {
                // vmalert queries VictoriaMetrics and writes recorded series back to it; its
                // alerts go to a port nobody listens on (no Alertmanager in this benchmark).
                let nobody = free_addr()?;
                let vmalert_addr = free_addr()?;
                let child = Command::new("vmalert")
                    .arg(format!("-rule={}", rules.file.display()))
                    .arg(format!("-datasource.url=http://{addr}"))
                    .arg(format!("-remoteWrite.url=http://{addr}"))
                    .arg(format!("-notifier.url=http://{nobody}"))
                    .arg(format!("-evaluationInterval={}s", rules.interval_seconds))
                    .arg(format!("-httpListenAddr={vmalert_addr}"))
                    .arg("-loggerLevel=ERROR")
                    .stdout(quiet())
                    .stderr(quiet())
                    .spawn()
                    .context("cannot start vmalert (Debian package victoria-metrics)")?;
                vmalert = Some(child);
                vmalert_metrics_url = Some(format!("http://{vmalert_addr}/metrics"));
            }
            ("victoriametrics", child, "/health", "/api/v1/write")
        }
        "prometheus" => {
            let config = dir.join("prometheus.yml");
            let text = match rules {
                Some(rules) => format!(
                    "global:\n  scrape_interval: 1h\n  evaluation_interval: {}s\nrule_files: ['{}']\n",
                    rules.interval_seconds,
                    rules.file.display()
                ),
                None => "global:\n  scrape_interval: 1h\n".to_owned(),
            };
            std::fs::write(&config, text)?;
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--web.enable-remote-write-receiver")
                .arg("--log.level=error")
                .stdout(quiet())
                .stderr(quiet())
                .spawn()
                .context("cannot start prometheus (Debian package prometheus)")?;
            ("prometheus", child, "/-/ready", "/api/v1/write")
        }
        other => bail!("unknown target {other:?}: use meerkat, victoriametrics or prometheus"),
    };
    let server = Server {
        name,
        child,
        vmalert,
        vmalert_metrics_url,
        write_url: format!("http://{addr}{write_path}"),
        _dir: temporary,
    };
    wait_ready(&format!("http://{addr}{ready}"))?;
    Ok(server)
}

/// Posts a snappy-compressed remote-write body, with the headers Prometheus sends.
pub(crate) fn post(
    agent: &ureq::Agent,
    url: &str,
    body: &[u8],
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    agent
        .post(url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .send(body)
}

/// Remote-writes one body to every server, retrying each while it sheds load (429, 5xx).
pub(crate) fn post_to_all(
    agent: &ureq::Agent,
    servers: &[&Server],
    body: &[u8],
) -> anyhow::Result<()> {
    for server in servers {
        let mut backoff = Backoff::new();
        loop {
            let response = post(agent, &server.write_url, body)
                .with_context(|| format!("remote-write to {}", server.name))?;
            let status = response.status().as_u16();
            if status == 429 || status >= 500 {
                backoff.wait();
                continue;
            }
            if status >= 300 {
                bail!("{} refused a remote-write: {status}", server.name);
            }
            break;
        }
    }
    Ok(())
}

/// The wait between retries of a refused request: Prometheus's remote-write defaults,
/// 30 ms doubling up to 5 s.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Self(Duration::from_millis(30))
    }

    /// Sleeps for the current wait and doubles it.
    pub(crate) fn wait(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

/// User + system CPU seconds and resident bytes of a process.
pub(crate) fn cpu_and_rss(pid: u32) -> anyhow::Result<(f64, u64)> {
    let process = procfs::process::Process::new(pid as i32)?;
    let stat = process.stat()?;
    let ticks = procfs::ticks_per_second() as f64;
    Ok((
        (stat.utime + stat.stime) as f64 / ticks,
        stat.rss * procfs::page_size(),
    ))
}

struct Measurement {
    name: &'static str,
    samples: u64,
    seconds: f64,
    cpu_seconds: f64,
    peak_rss: u64,
    refused: u64,
    retried: u64,
    first_refusal: Option<String>,
}

/// The generated load running against one server: a generator thread and `concurrency`
/// sender threads, until [`Load::finish`].
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    generator: std::thread::JoinHandle<()>,
    senders: Vec<std::thread::JoinHandle<()>>,
    receiver: Arc<Mutex<mpsc::Receiver<Body>>>,
    pub accepted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    /// Requests answered 429/5xx and sent again.
    retried: Arc<AtomicU64>,
    first_refusal: Arc<Mutex<Option<String>>>,
}

/// What a load achieved.
pub(crate) struct LoadTotals {
    pub accepted: u64,
    pub refused: u64,
    pub retried: u64,
    pub first_refusal: Option<String>,
}

impl Load {
    /// Starts sending `args`'s load to the remote-write endpoint `write_url`, with
    /// timestamps from an hour ago onwards.
    pub(crate) fn start(args: &Args, write_url: &str) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (bodies, receiver) = mpsc::sync_channel::<Body>(args.concurrency * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let start_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64
            - 3_600_000;
        let generator = {
            let stop = stop.clone();
            let args = Args {
                targets: vec![],
                meerkat: None,
                ..*args
            };
            std::thread::spawn(move || generate(&args, start_ms, bodies, stop))
        };
        let accepted = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let retried = Arc::new(AtomicU64::new(0));
        let first_refusal: Arc<Mutex<Option<String>>> = Arc::default();
        let mut senders = Vec::new();
        for _ in 0..args.concurrency {
            let receiver = receiver.clone();
            let url = write_url.to_owned();
            let (accepted, refused, retried, first_refusal, stop) = (
                accepted.clone(),
                refused.clone(),
                retried.clone(),
                first_refusal.clone(),
                stop.clone(),
            );
            let per_sender_rate = args.rate as f64 / args.concurrency.max(1) as f64;
            senders.push(std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let (began, mut sent) = (Instant::now(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    if per_sender_rate > 0.0 {
                        let due = Duration::from_secs_f64(sent as f64 / per_sender_rate);
                        if let Some(wait) = due.checked_sub(began.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let body = match receiver.lock().map(|r| r.recv()) {
                        Ok(Ok(body)) => body,
                        _ => return,
                    };
                    // Like Prometheus's remote-write queue: a 429 or 5xx is retried with
                    // the same body after a backoff.
                    let mut backoff = Backoff::new();
                    let response = loop {
                        let response = post(&agent, &url, &body.bytes);
                        let retry = matches!(&response, Ok(r) if r.status() == 429 || r.status().is_server_error());
                        if !retry || stop.load(Ordering::Relaxed) {
                            break response;
                        }
                        retried.fetch_add(1, Ordering::Relaxed);
                        backoff.wait();
                    };
                    sent += body.samples;
                    match response {
                        Ok(r) if r.status().is_success() => {
                            accepted.fetch_add(body.samples, Ordering::Relaxed);
                        }
                        Ok(mut r) => {
                            refused.fetch_add(body.samples, Ordering::Relaxed);
                            let text = r.body_mut().read_to_string().unwrap_or_default();
                            let mut first = first_refusal.lock().unwrap_or_else(|e| e.into_inner());
                            first.get_or_insert_with(|| format!("{}: {}", r.status(), text.trim()));
                        }
                        Err(error) => {
                            refused.fetch_add(body.samples, Ordering::Relaxed);
                            let mut first = first_refusal.lock().unwrap_or_else(|e| e.into_inner());
                            first.get_or_insert_with(|| error.to_string());
                        }
                    }
                }
            }));
        }
        Ok(Self {
            stop,
            generator,
            senders,
            receiver,
            accepted,
            refused,
            retried,
            first_refusal,
        })
    }

    /// Stops the load and waits for its threads.
    pub(crate) fn finish(self) -> LoadTotals {
        self.stop.store(true, Ordering::Relaxed);
        for sender in self.senders {
            let _ = sender.join();
        }
        drop(self.receiver);
        let _ = self.generator.join();
        let first_refusal = self
            .first_refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        LoadTotals {
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            first_refusal,
        }
    }
}

fn measure(server: &Server, args: &Args) -> anyhow::Result<Measurement> {
    let pid = server.child.id();
    let (cpu_before, _) = cpu_and_rss(pid)?;
    let started = Instant::now();
    let load = Load::start(args, &server.write_url)?;
    let mut peak_rss = 0;
    let deadline = started + Duration::from_secs(args.duration_seconds);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        peak_rss = peak_rss.max(cpu_and_rss(pid)?.1);
        eprint!(
            "\r  {:<16} {:>5.1}s  {:>12} samples accepted",
            server.name,
            started.elapsed().as_secs_f64(),
            load.accepted.load(Ordering::Relaxed)
        );
    }
    let totals = load.finish();
    let seconds = started.elapsed().as_secs_f64();
    let (cpu_after, rss) = cpu_and_rss(pid)?;
    eprintln!();
    Ok(Measurement {
        name: server.name,
        samples: totals.accepted,
        seconds,
        cpu_seconds: cpu_after - cpu_before,
        peak_rss: peak_rss.max(rss),
        refused: totals.refused,
        retried: totals.retried,
        first_refusal: totals.first_refusal,
    })
}

/// The meerkat binary to run: the one given, or the one next to this benchmark's binary.
pub(crate) fn meerkat_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    Ok(match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .context("benchmark binary has no directory")?
            .join("meerkat"),
    })
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let meerkat = meerkat_binary(args.meerkat.as_deref())?;
    println!(
        "Remote-write ingest: {} series, {} samples/request, {} concurrent, {} s per server, {} cores.\n",
        args.series,
        args.samples_per_request,
        args.concurrency,
        args.duration_seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut results = Vec::new();
    for target in &args.targets {
        let server = start(target, &meerkat)?;
        results.push(measure(&server, args)?);
    }
    let baseline = results
        .iter()
        .find(|m| m.name == "victoriametrics")
        .map(|m| m.samples as f64 / m.cpu_seconds.max(1e-9));
    println!(
        "| server | accepted samples/s | server CPU s | samples per CPU-second | vs VictoriaMetrics | peak RSS MiB | refused | retried requests |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for m in &results {
        let per_cpu = m.samples as f64 / m.cpu_seconds.max(1e-9);
        println!(
            "| {} | {:.0} | {:.1} | {:.0} | {} | {:.0} | {} | {} |",
            m.name,
            m.samples as f64 / m.seconds,
            m.cpu_seconds,
            per_cpu,
            baseline.map_or("-".to_owned(), |b| format!("{:.2}x", per_cpu / b)),
            m.peak_rss as f64 / (1 << 20) as f64,
            m.refused,
            m.retried,
        );
    }
    for m in &results {
        if let Some(first) = &m.first_refusal {
            println!("\n{} refused {} samples; first: {first}", m.name, m.refused);
        }
    }
    Ok(())
}
