//! Rule evaluation, side by side: 1,000 alerting and recording rules (10 groups of 100)
//! over the storage benchmark's data, evaluated by `meerkat serve`, Prometheus 2.42 and
//! vmalert 1.79 (over VictoriaMetrics) holding the same data.
//!
//! The last `--minutes` of data are remote-written to all three, then a new round every
//! 15 s while the benchmark runs, so the rules' 5- and 10-minute windows stay full. After a
//! warm-up, each interval the time every server took to evaluate all its groups is read —
//! `evaluationTime` of `/api/v1/rules` for Meerkat and Prometheus, the change in
//! `vmalert_iteration_duration_seconds` for vmalert — and the medians are printed with
//! Meerkat's as a ratio of each peer's (below 1: Meerkat faster). The series the recording
//! rules wrote are counted on each server, so a server that evaluates less is seen.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::remote_write::{Rules, Server, post_to_all, start_evaluating};
use crate::storage_size::{Generator, INTERVAL_MS, one_sample_body, pb_labels};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Series of the storage benchmark's families
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Rules, half alerting and half recording, in groups of 100
    #[arg(long, default_value_t = 1_000)]
    rules: usize,
    /// Minutes of data written before measuring
    #[arg(long, default_value_t = 15)]
    minutes: u64,
    /// Evaluation interval of every group, seconds
    #[arg(long, default_value_t = 15)]
    interval_seconds: u64,
    /// Intervals measured (after two of warm-up)
    #[arg(long, default_value_t = 8)]
    intervals: usize,
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
}

/// The rule file: for namespace `team-N` and rule `i`, queries of the kinds dashboards'
/// alert rules hold (rates summed by label, averages, minimums, `*_over_time`).
fn rule_file(rules: usize) -> String {
    let mut out = String::from("groups:\n");
    for i in 0..rules {
        if i % 100 == 0 {
            let _ = writeln!(out, "  - name: bench-{}\n    rules:", i / 100);
        }
        let ns = i % 30;
        if i % 2 == 0 {
            let expr = match (i / 2) % 4 {
                0 => format!(
                    "sum by (pod) (rate(http_requests_total{{namespace=\"team-{ns}\"}}[5m]))"
                ),
                1 => format!(
                    "avg by (instance) (rate(node_cpu_seconds_total{{namespace=\"team-{ns}\"}}[5m]))"
                ),
                2 => format!(
                    "sum by (namespace) (container_memory_working_set_bytes{{namespace=\"team-{ns}\"}})"
                ),
                _ => format!(
                    "min_over_time(node_filesystem_avail_bytes{{namespace=\"team-{ns}\"}}[10m])"
                ),
            };
            let _ = writeln!(
                out,
                "      - record: bench:recorded:{}\n        expr: '{expr}'\n        labels:\n          rule: '{i}'",
                (i / 2) % 4
            );
        } else {
            let expr = match (i / 2) % 4 {
                0 => format!(
                    "sum by (namespace) (rate(http_requests_total{{namespace=\"team-{ns}\"}}[5m])) > 1"
                ),
                1 => format!(
                    "max by (pod) (rate(node_cpu_seconds_total{{namespace=\"team-{ns}\"}}[5m])) > 0.05"
                ),
                2 => format!(
                    "avg by (namespace) (container_memory_working_set_bytes{{namespace=\"team-{ns}\"}}) > 1.2e9"
                ),
                _ => format!(
                    "min by (pod) (kube_pod_container_status_ready{{namespace=\"team-{ns}\"}}) < 0.9"
                ),
            };
            let _ = writeln!(
                out,
                "      - alert: BenchAlert{i}\n        expr: '{expr}'\n        for: 1m\n        labels:\n          severity: warning\n        annotations:\n          summary: '{{{{ $labels.namespace }}}} at {{{{ $value | humanize }}}}'"
            );
        }
    }
    out
}

/// The base URL (`http://addr`) of a server.
fn base(server: &Server) -> anyhow::Result<String> {
    Ok(server
        .write_url
        .strip_suffix("/api/v1/write")
        .context("write URL")?
        .to_owned())
}

fn get_json(agent: &ureq::Agent, url: &str) -> anyhow::Result<serde_json::Value> {
    let body = agent.get(url).call()?.body_mut().read_to_string()?;
    Ok(serde_json::from_str(&body)?)
}

/// Sum of every group's last evaluation time and the newest evaluation time stamp, from a
/// Prometheus-shaped `/api/v1/rules`.
fn rules_api_time(agent: &ureq::Agent, base: &str) -> anyhow::Result<(f64, String)> {
    let json = get_json(agent, &format!("{base}/api/v1/rules"))?;
    let groups = json["data"]["groups"].as_array().context("no groups")?;
    let total = groups
        .iter()
        .filter_map(|g| g["evaluationTime"].as_f64())
        .sum();
    let newest = groups
        .iter()
        .filter_map(|g| g["lastEvaluation"].as_str())
        .max()
        .unwrap_or("")
        .to_owned();
    Ok((total, newest))
}

/// vmalert's `vmalert_iteration_duration_seconds` sum and count per group.
fn vmalert_iterations(
    agent: &ureq::Agent,
    url: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, (f64, f64)>> {
    let text = agent.get(url).call()?.body_mut().read_to_string()?;
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        let (is_sum, rest) =
            if let Some(r) = line.strip_prefix("vmalert_iteration_duration_seconds_sum{") {
                (true, r)
            } else if let Some(r) = line.strip_prefix("vmalert_iteration_duration_seconds_count{") {
                (false, r)
            } else {
                continue;
            };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        let entry = out.entry(labels.to_owned()).or_insert((0.0, 0.0));
        if is_sum {
            entry.0 = value;
        } else {
            entry.1 = value;
        }
    }
    Ok(out)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The generator and its series' labels, written round by round.
struct Feed {
    generator: Generator,
    labels: Vec<Vec<gateway::proto::prometheus::Label>>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.rules == 0 || args.series < 5 || args.intervals == 0 {
        bail!("--rules, --intervals must be at least 1 and --series at least 5");
    }
    if args.targets.first().map(String::as_str) != Some("meerkat") {
        bail!("--targets must start with meerkat: the ratios are Meerkat's against the others");
    }
    let meerkat = crate::remote_write::meerkat_binary(args.meerkat.as_deref())?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, rule_file(args.rules))?;
    let rules = Rules {
        file: &file,
        interval_seconds: args.interval_seconds,
    };
    println!(
        "Rule evaluation: {} rules in {} groups every {} s over {} series (storage benchmark \
         families, 15 s samples, {} min of history then live); {} cores.\n",
        args.rules,
        args.rules.div_ceil(100),
        args.interval_seconds,
        args.series,
        args.minutes,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut servers = Vec::new();
    for name in &args.targets {
        servers.push(start_evaluating(name, &meerkat, None, Some(rules))?);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let steps = args.minutes * 60_000 / INTERVAL_MS as u64;
    let start_ms = (now_ms / INTERVAL_MS - steps as i64) * INTERVAL_MS;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let generator = Generator::new(args.series, start_ms);
    let labels = pb_labels(&generator.labels);
    let mut feed = Feed { generator, labels };
    let mut encoder = snap::raw::Encoder::new();
    let all: Vec<&Server> = servers.iter().collect();
    let mut write_round = |feed: &mut Feed, step: u64| -> anyhow::Result<()> {
        let samples = feed.generator.round(step);
        for (l, s) in feed.labels.chunks(5_000).zip(samples.chunks(5_000)) {
            let body = one_sample_body(&mut encoder, l, s)?;
            post_to_all(&agent, &all, &body)?;
        }
        Ok(())
    };
    let began = Instant::now();
    let mut step = 0u64;
    // History, then live rounds until the measurement ends.
    loop {
        let due_ms = start_ms + step as i64 * INTERVAL_MS;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        if due_ms > now {
            break;
        }
        write_round(&mut feed, step)?;
        step += 1;
    }
    eprintln!(
        "  history written: {step} rounds in {:.0} s",
        began.elapsed().as_secs_f64()
    );
    let interval = Duration::from_secs(args.interval_seconds);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    let mut previous_vm: Option<std::collections::BTreeMap<String, (f64, f64)>> = None;
    let mut next_round = Instant::now();
    let measure_start = Instant::now() + interval * 2;
    let measure_end = measure_start + interval * args.intervals as u32;
    let mut next_sample = measure_start;
    while Instant::now() < measure_end {
        if Instant::now() >= next_round {
            write_round(&mut feed, step)?;
            step += 1;
            next_round += Duration::from_millis(INTERVAL_MS as u64);
        }
        if Instant::now() >= next_sample {
            for (i, server) in servers.iter().enumerate() {
                match server.name {
                    "victoriametrics" => {
                        let url = server
                            .vmalert_metrics_url
                            .as_deref()
                            .context("vmalert is not running")?;
                        let now = vmalert_iterations(&agent, url)?;
                        if let Some(before) = &previous_vm {
                            let per_group: f64 = now
                                .iter()
                                .filter_map(|(group, (sum, count))| {
                                    let (s0, c0) = before.get(group)?;
                                    (count > c0).then(|| (sum - s0) / (count - c0))
                                })
                                .sum();
                            samples[i].push(per_group);
                        }
                        previous_vm = Some(now);
                    }
                    _ => {
                        let (total, _) = rules_api_time(&agent, &base(server)?)?;
                        samples[i].push(total);
                    }
                }
            }
            next_sample += interval;
            eprint!(
                "\r  measured {} of {} intervals",
                samples[0].len(),
                args.intervals
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!();

    // What each wrote back: the recording rules' series (a server that skipped rules or
    // failed them shows fewer), a minute ago — VictoriaMetrics shows the newest 30 s of
    // data only later (`-search.latencyOffset`).
    let a_minute_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        - 60;
    let mut recorded = Vec::new();
    for server in &servers {
        let url = format!(
            "{}/api/v1/query?time={a_minute_ago}&query={}",
            base(server)?,
            "count(%7B__name__%3D~%22bench%3Arecorded%3A.*%22%7D)"
        );
        let json = get_json(&agent, &url)?;
        recorded.push(
            json["data"]["result"][0]["value"][1]
                .as_str()
                .unwrap_or("0")
                .to_owned(),
        );
    }
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    println!("| server | evaluation of all groups per interval, median ms | recorded series |");
    println!("|---|---:|---:|");
    for ((server, m), r) in servers.iter().zip(&medians).zip(&recorded) {
        let name = if server.name == "victoriametrics" {
            "vmalert (victoriametrics)"
        } else {
            server.name
        };
        println!("| {name} | {:.1} | {r} |", m * 1000.0);
    }
    println!();
    for (server, m) in servers.iter().zip(&medians).skip(1) {
        println!(
            "meerkat / {}: {:.2}",
            if server.name == "victoriametrics" {
                "vmalert"
            } else {
                server.name
            },
            medians[0] / m
        );
    }
    Ok(())
}
