//! PromQL on Meerkat against a live Prometheus 2.42 holding the same data.
//!
//! One generated hour of data — counters with resets, classic histograms, gauges with NaN,
//! ±Inf, gaps longer than the lookback and a staleness marker, 300 series of one metric for
//! high-cardinality and regex selectors — is remote-written, request for request, to a real
//! Prometheus (its remote-write receiver) and to `meerkat serve`. Then every query of a large
//! set (every 2.42 function, operator and aggregation) runs against both, as instant queries
//! at five times (one after the data ends, one past the lookback) and as range queries at
//! two steps, and the answers are compared: result type, label sets exactly, timestamps
//! exactly, values to 1e-9 relative, errors by their `errorType`.
//!
//! It prints `N passed, M failed`. A query that differs must be listed, with the reason, in
//! `promql_vs_prometheus_known_differences.txt`; a listed query that now agrees fails the
//! test too, so the list stays true. `PROMQL_VS_PROMETHEUS=update` rewrites the list.
//!
//! Needs `prometheus`, which `./scripts/test` installs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Prometheus, Server, post, url_encode};
use gateway::proto::prometheus as pb;
use serde_json::Value;
use test_peers::ClickHouseServer;

const STEP_MS: i64 = 15_000;
/// One hour of samples per series.
const POINTS: i64 = 240;
const MINUTE: i64 = 60_000;

/// The query set. `{R}` stands for a range (each query runs once per range listed in
/// [`RANGES`]).
const QUERIES: &[&str] = &[
    // Selectors and matchers.
    "http_requests_total",
    r#"http_requests_total{code="200"}"#,
    r#"http_requests_total{code!="200"}"#,
    r#"http_requests_total{code=~"2.."}"#,
    r#"http_requests_total{code!~"2..|5.."}"#,
    r#"http_requests_total{method=~"get|GET"}"#,
    r#"{__name__=~"http_requests_total|memory_bytes", instance="a"}"#,
    r#"{__name__=~"request_duration_seconds_.*"}"#,
    r#"hc_gauge{id=~"1.*"}"#,
    r#"hc_gauge{id=~".*7", shard!="3"}"#,
    r#"hc_gauge{id!~"[0-9]{1,2}"}"#,
    r#"count(hc_gauge{shard=~"1|2|x"})"#,
    r#"hc_gauge{id="nope"}"#,
    "temperature",
    "memory_bytes",
    "http_requests_total offset 5m",
    "http_requests_total offset -2m",
    "memory_bytes @ start()",
    "memory_bytes @ end()",
    "http_requests_total[{R}]",
    "temperature[{R}]",
    // Rates and counters.
    "rate(http_requests_total[{R}])",
    "irate(http_requests_total[{R}])",
    "increase(http_requests_total[{R}])",
    "resets(http_requests_total[{R}])",
    "changes(memory_bytes[{R}])",
    "rate(node_cpu_seconds_total[{R}])",
    "sum by (mode) (rate(node_cpu_seconds_total[{R}]))",
    "sum without (cpu) (irate(node_cpu_seconds_total[{R}]))",
    "delta(memory_bytes[{R}])",
    "idelta(memory_bytes[{R}])",
    "deriv(memory_bytes[{R}])",
    "predict_linear(memory_bytes[{R}], 600)",
    "rate(http_requests_total[{R}] offset 10m)",
    "rate(temperature[{R}])",
    // Over time.
    "avg_over_time(memory_bytes[{R}])",
    "min_over_time(memory_bytes[{R}])",
    "max_over_time(memory_bytes[{R}])",
    "sum_over_time(memory_bytes[{R}])",
    "count_over_time(temperature[{R}])",
    "quantile_over_time(0.9, memory_bytes[{R}])",
    "quantile_over_time(0.5, hc_gauge{shard=\"1\"}[{R}])",
    "stddev_over_time(memory_bytes[{R}])",
    "stdvar_over_time(hc_gauge{shard=\"2\"}[{R}])",
    "last_over_time(temperature[{R}])",
    "present_over_time(temperature[{R}])",
    "absent_over_time(temperature[{R}])",
    r#"absent_over_time(nonexistent{job="x"}[{R}])"#,
    "holt_winters(memory_bytes[{R}], 0.3, 0.6)",
    // Histograms.
    "histogram_quantile(0.9, rate(request_duration_seconds_bucket[{R}]))",
    "histogram_quantile(0.5, sum by (le) (rate(request_duration_seconds_bucket[{R}])))",
    "histogram_quantile(0.99, sum by (le, instance) (rate(request_duration_seconds_bucket[{R}])))",
    "histogram_quantile(0, request_duration_seconds_bucket)",
    "histogram_quantile(1, request_duration_seconds_bucket)",
    "histogram_quantile(1.5, request_duration_seconds_bucket)",
    "rate(request_duration_seconds_sum[{R}]) / rate(request_duration_seconds_count[{R}])",
    // Aggregations.
    "sum(http_requests_total)",
    "sum by (code) (http_requests_total)",
    "sum without (instance, method) (http_requests_total)",
    "avg by (instance) (memory_bytes)",
    "min(hc_gauge)",
    "max by (shard) (hc_gauge)",
    "count by (shard) (hc_gauge)",
    "group by (code) (http_requests_total)",
    "stddev by (shard) (hc_gauge)",
    "stdvar(hc_gauge)",
    "topk(3, hc_gauge)",
    "bottomk(2, hc_gauge) by (shard)",
    "topk by (code) (1, http_requests_total)",
    "quantile(0.9, hc_gauge)",
    "quantile by (shard) (0.25, hc_gauge)",
    "count_values(\"value\", build_info)",
    "count_values by (shard) (\"bucket\", floor(hc_gauge / 25))",
    "sum(memory_bytes)",
    "avg(memory_bytes)",
    "max(memory_bytes)",
    "sum by (instance) (rate(http_requests_total[{R}]))",
    // Arithmetic and comparison.
    "memory_bytes / 1024 / 1024",
    "memory_bytes % 7",
    "memory_bytes ^ 0.5",
    "-memory_bytes",
    "memory_bytes - memory_bytes offset 1m",
    "http_requests_total / on (instance) group_left sum by (instance) (http_requests_total)",
    "sum by (instance) (http_requests_total) / ignoring (code) group_right http_requests_total{code=\"200\"}",
    "http_requests_total{code=\"200\"} / ignoring (code) http_requests_total{code=\"500\"}",
    "http_requests_total * on (instance) group_left (version) build_info",
    "memory_bytes > 2e9",
    "memory_bytes > bool 2e9",
    "memory_bytes < 1.5e9",
    "memory_bytes == memory_bytes",
    "memory_bytes != bool memory_bytes",
    "hc_gauge >= 50 <= 70",
    "2 > bool 1",
    "1 + 2 * 3 ^ 2 % 5",
    "atan2(memory_bytes, 1e9)",
    "memory_bytes atan2 on (instance) memory_bytes",
    // Set operators.
    "http_requests_total and http_requests_total{code=\"200\"}",
    "http_requests_total{code=\"200\"} or http_requests_total{code=\"500\"}",
    "http_requests_total unless on (code) http_requests_total{code=\"404\"}",
    "temperature or vector(0)",
    "memory_bytes and on (instance) build_info",
    // Math functions.
    "abs(-memory_bytes)",
    "ceil(hc_gauge)",
    "floor(hc_gauge)",
    "round(hc_gauge)",
    "round(hc_gauge, 5)",
    "exp(hc_gauge / 100)",
    "ln(hc_gauge)",
    "log2(hc_gauge)",
    "log10(memory_bytes)",
    "sqrt(hc_gauge)",
    "sgn(hc_gauge - 50)",
    "clamp(hc_gauge, 20, 80)",
    "clamp_max(hc_gauge, 40)",
    "clamp_min(hc_gauge, 60)",
    "clamp(hc_gauge, 80, 20)",
    "sin(hc_gauge)",
    "cos(hc_gauge)",
    "tan(hc_gauge / 100)",
    "asin(hc_gauge / 100)",
    "acos(hc_gauge / 100)",
    "atan(hc_gauge)",
    "sinh(hc_gauge / 100)",
    "cosh(hc_gauge / 100)",
    "tanh(hc_gauge / 100)",
    "asinh(hc_gauge)",
    "acosh(hc_gauge + 1)",
    "atanh(hc_gauge / 200)",
    "deg(hc_gauge)",
    "rad(hc_gauge)",
    "pi()",
    // Time and types.
    "time()",
    "timestamp(memory_bytes)",
    "timestamp(temperature)",
    "vector(time())",
    "scalar(sum(memory_bytes))",
    "scalar(memory_bytes)",
    "minute(vector(time()))",
    "hour()",
    "day_of_week()",
    "day_of_month(timestamp(memory_bytes))",
    "day_of_year()",
    "days_in_month()",
    "month()",
    "year(timestamp(memory_bytes))",
    "absent(nonexistent)",
    r#"absent(nonexistent{job="x", instance=~"y"})"#,
    "absent(memory_bytes)",
    "sort(hc_gauge{shard=\"0\"})",
    "sort_desc(memory_bytes)",
    // Labels.
    r#"label_replace(memory_bytes, "host", "$1", "instance", "(.*)")"#,
    r#"label_replace(memory_bytes, "instance", "x-$1", "instance", "a|b")"#,
    r#"label_replace(hc_gauge{shard="1"}, "tens", "$1", "id", "([0-9])[0-9]")"#,
    r#"label_join(build_info, "tag", "-", "instance", "version")"#,
    r#"label_join(memory_bytes, "instance", ",")"#,
    // Subqueries.
    "max_over_time(rate(http_requests_total[5m])[30m:1m])",
    "avg_over_time(memory_bytes[20m:2m])",
    "min_over_time(sum(memory_bytes)[15m:])",
    "rate(http_requests_total[10m:30s])",
    "max_over_time(deriv(memory_bytes[5m])[10m:1m] offset 5m)",
    // NaN, Inf and empty results.
    "memory_bytes{instance=\"b\"} * 0",
    "memory_bytes{instance=\"c\"} - memory_bytes{instance=\"c\"}",
    "sum(memory_bytes{instance=~\"b|c\"})",
    "max_over_time(memory_bytes{instance=~\"b|c\"}[{R}])",
    "nonexistent + 1",
    "sum(nonexistent)",
    "count(nonexistent) or vector(0)",
    "0 / 0",
    "1 / 0",
    "-1 / 0",
    // Edge cases.
    r#"absent((nonexistent{job="x"}))"#,
    "absent(sum(nonexistent))",
    "holt_winters(nonexistent[5m], 0.3, 2)",
    "holt_winters(memory_bytes[5m], 0.3, 2)",
    "timestamp(memory_bytes offset 3m)",
    "-temperature",
    "sort_desc(sum by (code) (rate(http_requests_total[5m])))",
    "topk(2, memory_bytes)",
    "bottomk(1, memory_bytes)",
    "quantile(0.5, memory_bytes)",
    "count(hc_gauge) by (shard) > 40",
    r#"{__name__=~".+"}"#,
    r#"count by (__name__) ({__name__=~".+"})"#,
    "increase(request_duration_seconds_count[{R}])",
    "changes(temperature[{R}])",
    "max_over_time(memory_bytes[10m:1m] @ end())",
    "sum(rate(http_requests_total[5m] @ start()))",
    "memory_bytes offset 1h",
    // One NaN or ±Inf sample per group: stddev aggregates it to 0, stddev_over_time not.
    r#"stddev by (instance) (memory_bytes{instance=~"b|c"})"#,
    r#"stdvar by (instance) (memory_bytes{instance=~"b|c"})"#,
    r#"stddev_over_time(memory_bytes{instance=~"b|c"}[{R}])"#,
    // Native histograms: counters (a reset, a change of resolution, a staleness marker)
    // and a gauge histogram of float counts with negative buckets.
    "rpc_duration_seconds",
    r#"rpc_duration_seconds{instance="b"}"#,
    "rpc_duration_seconds[{R}]",
    "queue_size",
    "queue_size[{R}]",
    "rate(rpc_duration_seconds[{R}])",
    "increase(rpc_duration_seconds[{R}])",
    "delta(queue_size[{R}])",
    "rate(rpc_duration_seconds[{R}] offset 10m)",
    "sum(rate(rpc_duration_seconds[{R}]))",
    "sum by (instance) (increase(rpc_duration_seconds[{R}]))",
    "sum(rpc_duration_seconds)",
    r#"sum({__name__=~"rpc_duration_seconds|memory_bytes"})"#,
    "count(rpc_duration_seconds)",
    r#"count by (__name__) ({__name__=~"rpc_duration_seconds|queue_size|memory_bytes"})"#,
    "group by (instance) (rpc_duration_seconds)",
    "histogram_quantile(0.9, rate(rpc_duration_seconds[{R}]))",
    "histogram_quantile(0.5, sum(rate(rpc_duration_seconds[{R}])))",
    "histogram_quantile(0.99, sum by (instance) (rate(rpc_duration_seconds[{R}])))",
    "histogram_quantile(0, rpc_duration_seconds)",
    "histogram_quantile(1, rpc_duration_seconds)",
    "histogram_quantile(0.25, queue_size)",
    "histogram_quantile(0.75, queue_size)",
    "histogram_quantile(1.5, queue_size)",
    "histogram_quantile(-1, queue_size)",
    r#"histogram_quantile(0.9, {__name__=~"rpc_duration_seconds|request_duration_seconds_bucket"})"#,
    "histogram_count(rpc_duration_seconds)",
    "histogram_sum(rpc_duration_seconds)",
    "histogram_count(rate(rpc_duration_seconds[{R}]))",
    "histogram_sum(rate(rpc_duration_seconds[{R}])) / histogram_count(rate(rpc_duration_seconds[{R}]))",
    "histogram_fraction(0, 0.1, rpc_duration_seconds)",
    "histogram_fraction(0.01, 2, rate(rpc_duration_seconds[{R}]))",
    "histogram_fraction(-3, 0, queue_size)",
    "histogram_fraction(-1, 1, queue_size)",
    "histogram_fraction(2, 1, queue_size)",
    "histogram_count(memory_bytes)",
    "rpc_duration_seconds + rpc_duration_seconds",
    "rpc_duration_seconds + on (instance) group_left rate(rpc_duration_seconds[5m])",
    "rpc_duration_seconds and on (instance) build_info",
    r#"rpc_duration_seconds unless on (instance) build_info{instance="a"}"#,
    "rpc_duration_seconds or memory_bytes",
    "count_over_time(rpc_duration_seconds[{R}])",
    "present_over_time(queue_size[{R}])",
    r#"absent_over_time(rpc_duration_seconds{instance="c"}[{R}])"#,
    "timestamp(rpc_duration_seconds)",
    "timestamp(rate(rpc_duration_seconds[5m]))",
    r#"absent(rpc_duration_seconds{instance="c"})"#,
    r#"label_replace(rpc_duration_seconds, "host", "h-$1", "instance", "(.*)")"#,
    "max_over_time(histogram_quantile(0.9, rate(rpc_duration_seconds[5m]))[30m:1m])",
    "rate(rpc_duration_seconds[10m:1m])",
    "histogram_count(sum(rpc_duration_seconds)[10m:2m] offset 1m)",
    // Where Prometheus 2.42 reads a histogram as the float 0 (listed as differences).
    "abs(rpc_duration_seconds)",
    "max(rpc_duration_seconds)",
    // Errors both must refuse the same way.
    "rate(memory_bytes)",
    "sum(",
    "http_requests_total + on (code) http_requests_total",
    "label_replace(memory_bytes, \"1bad\", \"x\", \"instance\", \".*\")",
];

/// The ranges substituted for `{R}`.
const RANGES: &[&str] = &["1m", "5m", "17m"];

/// Where instant queries run, in minutes after the first sample: inside the data, at odd
/// times, 2 minutes after its end (inside the lookback) and 7 minutes after (outside).
const INSTANT_MINUTES: &[f64] = &[7.5, 30.0, 45.29, 62.0, 67.0];

const KNOWN_DIFFERENCES: &str = "tests/promql_vs_prometheus_known_differences.txt";

/// A little deterministic generator: the same data on every run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One series: labels, and its samples as (timestamp, value) and native histograms.
#[derive(Default)]
struct Generated {
    labels: Vec<(String, String)>,
    samples: Vec<(i64, f64)>,
    histograms: Vec<pb::Histogram>,
}

/// A span list covering the bucket indexes `lowest..=highest` in one run.
fn one_span(lowest: i32, highest: i32) -> Vec<pb::BucketSpan> {
    vec![pb::BucketSpan {
        offset: lowest,
        length: (highest - lowest + 1) as u32,
    }]
}

/// The bucket index of a positive observation at `schema` (Prometheus's: the smallest
/// `i` with `2^(i·2^-schema) >= value`).
fn bucket_index(value: f64, schema: i32) -> i32 {
    (value.log2() * 2f64.powi(schema)).ceil() as i32
}

/// Counter histograms of `rpc_duration_seconds`, every bucket of a fixed range present
/// in every sample (so that no store's layout differs): `a` is reset at 40 minutes, `b`
/// falls from schema 2 to schema 0 at 30 minutes, `c` ends with a staleness marker at 45.
fn rpc_histograms(rng: &mut SplitMix, base_ms: i64, instance: &str) -> Vec<pb::Histogram> {
    let zero_threshold = 0.001;
    let mut out = Vec::new();
    let (mut count, mut zero, mut sum) = (0u64, 0u64, 0.0f64);
    let mut observations: Vec<f64> = Vec::new();
    for i in 0..POINTS {
        let t = base_ms + i * STEP_MS + 300;
        let minute = (t - base_ms) / MINUTE;
        if instance == "c" && minute >= 45 {
            out.push(pb::Histogram {
                count: Some(pb::histogram::Count::CountInt(0)),
                sum: f64::from_bits(0x7ff0_0000_0000_0002),
                schema: 2,
                zero_threshold,
                zero_count: Some(pb::histogram::ZeroCount::ZeroCountInt(0)),
                timestamp: t,
                ..Default::default()
            });
            break;
        }
        if instance == "a" && i == 160 {
            (count, zero, sum) = (0, 0, 0.0);
            observations.clear();
        }
        for _ in 0..(rng.next() % 12) {
            // Mostly 1 ms to 10 s, some in the zero bucket.
            let value = if rng.unit() < 0.05 {
                rng.unit() * zero_threshold
            } else {
                10f64.powf(rng.unit() * 4.0 - 3.0)
            };
            count += 1;
            sum += value;
            if value <= zero_threshold {
                zero += 1;
            } else {
                observations.push(value);
            }
        }
        let schema = if instance == "b" && minute >= 30 {
            0
        } else {
            2
        };
        let (lowest, highest) = (
            bucket_index(zero_threshold, schema),
            bucket_index(10.0, schema),
        );
        let mut buckets = vec![0i64; (highest - lowest + 1) as usize];
        for value in &observations {
            buckets[(bucket_index(*value, schema) - lowest) as usize] += 1;
        }
        let mut previous = 0;
        let deltas = buckets
            .iter()
            .map(|b| {
                let delta = b - previous;
                previous = *b;
                delta
            })
            .collect();
        out.push(pb::Histogram {
            count: Some(pb::histogram::Count::CountInt(count)),
            sum,
            schema,
            zero_threshold,
            zero_count: Some(pb::histogram::ZeroCount::ZeroCountInt(zero)),
            positive_spans: one_span(lowest, highest),
            positive_deltas: deltas,
            timestamp: t,
            ..Default::default()
        });
    }
    out
}

/// A gauge histogram of float counts, `queue_size`: values from -4 to 8 each sample anew.
fn queue_histograms(rng: &mut SplitMix, base_ms: i64) -> Vec<pb::Histogram> {
    (0..POINTS)
        .map(|i| {
            let positive: Vec<f64> = (0..8).map(|_| (rng.next() % 20) as f64 * 0.5).collect();
            let negative: Vec<f64> = (0..4).map(|_| (rng.next() % 10) as f64 * 0.25).collect();
            let zero = (rng.next() % 5) as f64;
            let count = zero + positive.iter().sum::<f64>() + negative.iter().sum::<f64>() + 0.5;
            pb::Histogram {
                count: Some(pb::histogram::Count::CountFloat(count)),
                sum: rng.unit() * 100.0 - 30.0,
                schema: 1,
                zero_threshold: 0.5,
                zero_count: Some(pb::histogram::ZeroCount::ZeroCountFloat(zero)),
                // Schema 1 buckets 0..=7 are (1, 8]; negative 0..=3 are [-2, -1].
                positive_spans: one_span(0, 7),
                positive_counts: positive,
                negative_spans: one_span(0, 3),
                negative_counts: negative,
                reset_hint: pb::histogram::ResetHint::Gauge as i32,
                timestamp: base_ms + i * STEP_MS + 800,
                ..Default::default()
            }
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// Prometheus's staleness marker.
fn stale_nan() -> f64 {
    f64::from_bits(0x7ff0_0000_0000_0002)
}

/// The hour of data, starting at `base_ms`.
fn generate(base_ms: i64) -> Vec<Generated> {
    let mut rng = SplitMix(42);
    let mut out = Vec::new();
    let times = |jitter_ms: i64| -> Vec<i64> {
        (0..POINTS)
            .map(|i| base_ms + i * STEP_MS + jitter_ms)
            .collect()
    };
    // Counters with occasional resets, scraped with a per-target offset.
    for (i, instance) in ["a", "b", "c"].into_iter().enumerate() {
        for code in ["200", "404", "500"] {
            for method in ["GET", "POST"] {
                let mut value = (rng.next() % 1000) as f64;
                let samples = times(i as i64 * 1_234)
                    .into_iter()
                    .map(|t| {
                        if rng.unit() < 0.02 {
                            value = (rng.next() % 5) as f64;
                        } else {
                            value += (rng.next() % 20) as f64;
                        }
                        (t, value)
                    })
                    .collect();
                out.push(Generated {
                    labels: labels(&[
                        ("__name__", "http_requests_total"),
                        ("job", "api"),
                        ("instance", instance),
                        ("code", code),
                        ("method", method),
                    ]),
                    samples,
                    ..Default::default()
                });
            }
        }
    }
    for instance in ["a", "b"] {
        for cpu in ["0", "1"] {
            for mode in ["idle", "user", "system"] {
                let mut value = rng.unit() * 1e5;
                let samples = times(0)
                    .into_iter()
                    .map(|t| {
                        value += rng.unit() * 15.0;
                        (t, value)
                    })
                    .collect();
                out.push(Generated {
                    labels: labels(&[
                        ("__name__", "node_cpu_seconds_total"),
                        ("instance", instance),
                        ("cpu", cpu),
                        ("mode", mode),
                    ]),
                    samples,
                    ..Default::default()
                });
            }
        }
    }
    // Gauges: a random walk; `b` has one NaN, `c` one +Inf and one -Inf.
    for instance in ["a", "b", "c"] {
        let mut value = 1e9 + rng.unit() * 1e9;
        let samples = times(500)
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                value += (rng.unit() - 0.5) * 1e8;
                let v = match (instance, i) {
                    ("b", 100) => f64::NAN,
                    ("c", 50) => f64::INFINITY,
                    ("c", 150) => f64::NEG_INFINITY,
                    _ => value,
                };
                (t, v)
            })
            .collect();
        out.push(Generated {
            labels: labels(&[
                ("__name__", "memory_bytes"),
                ("job", "node"),
                ("instance", instance),
            ]),
            samples,
            ..Default::default()
        });
        out.push(Generated {
            labels: labels(&[
                ("__name__", "build_info"),
                ("instance", instance),
                ("version", if instance == "c" { "1.1" } else { "1.2" }),
            ]),
            samples: times(0).into_iter().map(|t| (t, 1.0)).collect(),
            ..Default::default()
        });
    }
    // Classic histograms: cumulative buckets, `_sum` and `_count`.
    for instance in ["a", "b"] {
        let bounds = ["0.1", "0.5", "1", "5", "+Inf"];
        let mut buckets = [0.0f64; 5];
        let mut sum = 0.0;
        let mut series: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 7];
        for t in times(700) {
            for _ in 0..(rng.next() % 30) {
                let observed = rng.unit() * rng.unit() * 8.0;
                sum += observed;
                for (i, bound) in [0.1, 0.5, 1.0, 5.0, f64::INFINITY].iter().enumerate() {
                    if observed <= *bound {
                        buckets[i] += 1.0;
                    }
                }
            }
            for (i, count) in buckets.iter().enumerate() {
                series[i].push((t, *count));
            }
            series[5].push((t, sum));
            series[6].push((t, buckets[4]));
        }
        for (i, samples) in series.into_iter().enumerate() {
            let name = match i {
                5 => "request_duration_seconds_sum",
                6 => "request_duration_seconds_count",
                _ => "request_duration_seconds_bucket",
            };
            let mut l = labels(&[("__name__", name), ("instance", instance)]);
            if i < 5 {
                l.push(("le".to_owned(), bounds[i].to_owned()));
            }
            out.push(Generated {
                labels: l,
                samples,
                ..Default::default()
            });
        }
    }
    // Temperatures: `attic` stops for 10 minutes (past the lookback); `lab` is marked stale
    // at 30 minutes and comes back at 40; `cellar` ends at 50 minutes.
    for room in ["attic", "lab", "cellar"] {
        let mut value = 20.0 + rng.unit() * 5.0;
        let samples = times(0)
            .into_iter()
            .filter_map(|t| {
                value += rng.unit() - 0.5;
                let minute = (t - base_ms) / MINUTE;
                match room {
                    "attic" if (20..30).contains(&minute) => None,
                    "lab" if (t - base_ms) == 30 * MINUTE => Some((t, stale_nan())),
                    "lab" if (30..40).contains(&minute) => None,
                    "cellar" if minute >= 50 => None,
                    _ => Some((t, value)),
                }
            })
            .collect();
        out.push(Generated {
            labels: labels(&[("__name__", "temperature"), ("room", room)]),
            samples,
            ..Default::default()
        });
    }
    // Native histograms.
    for instance in ["a", "b", "c"] {
        out.push(Generated {
            labels: labels(&[
                ("__name__", "rpc_duration_seconds"),
                ("job", "api"),
                ("instance", instance),
            ]),
            histograms: rpc_histograms(&mut rng, base_ms, instance),
            ..Default::default()
        });
    }
    out.push(Generated {
        labels: labels(&[("__name__", "queue_size"), ("instance", "a")]),
        histograms: queue_histograms(&mut rng, base_ms),
        ..Default::default()
    });
    // 300 series of one metric, fractional values (no ties for topk and sort).
    for id in 0..300 {
        let shard = (id % 7).to_string();
        let id = id.to_string();
        let samples = times(0)
            .into_iter()
            .map(|t| (t, rng.unit() * 100.0))
            .collect();
        out.push(Generated {
            labels: labels(&[("__name__", "hc_gauge"), ("id", &id), ("shard", &shard)]),
            samples,
            ..Default::default()
        });
    }
    out
}

/// The data as remote-write bodies, one per 10 minutes, in time order (Prometheus takes
/// samples in order only).
fn write_requests(data: &[Generated], base_ms: i64) -> Vec<Vec<u8>> {
    (0..6)
        .map(|window| {
            let (from, to) = (
                base_ms + window * 10 * MINUTE,
                base_ms + (window + 1) * 10 * MINUTE,
            );
            let request = pb::WriteRequest {
                timeseries: data
                    .iter()
                    .map(|g| pb::TimeSeries {
                        labels: g
                            .labels
                            .iter()
                            .map(|(n, v)| pb::Label {
                                name: n.clone().into(),
                                value: v.clone().into(),
                            })
                            .collect(),
                        samples: g
                            .samples
                            .iter()
                            .filter(|(t, _)| *t >= from && *t < to)
                            .map(|(t, v)| pb::Sample {
                                value: *v,
                                timestamp: *t,
                            })
                            .collect(),
                        histograms: g
                            .histograms
                            .iter()
                            .filter(|h| h.timestamp >= from && h.timestamp < to)
                            .cloned()
                            .collect(),
                        ..Default::default()
                    })
                    .filter(|s| !s.samples.is_empty() || !s.histograms.is_empty())
                    .collect(),
                metadata: vec![],
            };
            snap::raw::Encoder::new()
                .compress_vec(&prost::Message::encode_to_vec(&request))
                .unwrap()
        })
        .collect()
}

fn remote_write(addr: SocketAddr, body: &[u8]) {
    let answer = post(
        addr,
        "/api/v1/write",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        body,
    )
    .unwrap();
    assert!(
        (200..300).contains(&answer.status),
        "remote write to {addr}: {} {}",
        answer.status,
        answer.body
    );
}

/// An API answer: its status code and JSON body (de-chunked).
fn api(addr: SocketAddr, path: &str) -> (u16, Value) {
    let answer = common::get(addr, path).unwrap();
    let body = if answer
        .headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&answer.body)
    } else {
        answer.body.clone()
    };
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{addr}{path}: {e}: {}", answer.body));
    (answer.status, json)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// A comparable result: its type and, per label set, the points.
#[derive(Debug, PartialEq)]
enum Answer {
    Error(String),
    Series {
        kind: String,
        /// Label set (JSON) → points; order kept for `sort` checks.
        series: Vec<(String, Vec<(i64, Point)>)>,
    },
}

/// A point's value: a float, or a native histogram as the API writes it (count, sum, and
/// each populated bucket's boundary rule, bounds and count).
#[derive(Debug, PartialEq)]
enum Point {
    Float(f64),
    Histogram {
        count: f64,
        sum: f64,
        buckets: Vec<(u64, f64, f64, f64)>,
    },
}

fn number(text: &Value) -> f64 {
    match text.as_str().unwrap() {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        text => text.parse().unwrap(),
    }
}

fn time_of(pair: &Value) -> i64 {
    (pair[0].as_f64().unwrap() * 1000.0).round() as i64
}

fn point(pair: &Value) -> (i64, Point) {
    (time_of(pair), Point::Float(number(&pair[1])))
}

fn histogram_point(pair: &Value) -> (i64, Point) {
    let h = &pair[1];
    let buckets = h["buckets"]
        .as_array()
        .map(|buckets| {
            buckets
                .iter()
                .map(|b| {
                    (
                        b[0].as_u64().unwrap(),
                        number(&b[1]),
                        number(&b[2]),
                        number(&b[3]),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (
        time_of(pair),
        Point::Histogram {
            count: number(&h["count"]),
            sum: number(&h["sum"]),
            buckets,
        },
    )
}

fn same_point(a: &Point, b: &Point) -> bool {
    match (a, b) {
        (Point::Float(a), Point::Float(b)) => same_value(*a, *b),
        (
            Point::Histogram {
                count: count_a,
                sum: sum_a,
                buckets: buckets_a,
            },
            Point::Histogram {
                count: count_b,
                sum: sum_b,
                buckets: buckets_b,
            },
        ) => {
            same_value(*count_a, *count_b)
                && same_value(*sum_a, *sum_b)
                && buckets_a.len() == buckets_b.len()
                && buckets_a.iter().zip(buckets_b).all(|(a, b)| {
                    // Boundaries exactly: they are the same buckets or not.
                    a.0 == b.0 && a.1 == b.1 && a.2 == b.2 && same_value(a.3, b.3)
                })
        }
        _ => false,
    }
}

fn answer(status: u16, body: &Value) -> Answer {
    if body["status"] != "success" {
        return Answer::Error(format!(
            "{status} {}",
            body["errorType"].as_str().unwrap_or("?")
        ));
    }
    let data = &body["data"];
    let kind = data["resultType"].as_str().unwrap().to_owned();
    let series = match kind.as_str() {
        "scalar" | "string" => vec![(String::new(), vec![point(&data["result"])])],
        _ => data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(s["metric"].clone()).unwrap();
                let mut points: Vec<(i64, Point)> = Vec::new();
                if let Some(values) = s.get("values") {
                    points.extend(values.as_array().unwrap().iter().map(point));
                }
                if let Some(histograms) = s.get("histograms") {
                    points.extend(histograms.as_array().unwrap().iter().map(histogram_point));
                }
                if let Some(value) = s.get("value") {
                    points.push(point(value));
                }
                if let Some(histogram) = s.get("histogram") {
                    points.push(histogram_point(histogram));
                }
                points.sort_by_key(|(t, _)| *t);
                (serde_json::to_string(&labels).unwrap(), points)
            })
            .collect(),
    };
    Answer::Series { kind, series }
}

fn same_value(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    // 1e-9 relative; an absolute floor for results that should be 0 but carry rounding.
    let diff = (a - b).abs();
    diff <= 1e-9 * a.abs().max(b.abs()) || diff < 1e-12
}

/// Why `got` (Meerkat) differs from `want` (Prometheus), or `None`.
fn difference(want: &Answer, got: &Answer, ordered: bool) -> Option<String> {
    match (want, got) {
        (Answer::Error(a), Answer::Error(b)) => {
            (a != b).then(|| format!("error {b}, Prometheus {a}"))
        }
        (Answer::Error(a), _) => Some(format!("answered; Prometheus refused: {a}")),
        (_, Answer::Error(b)) => Some(format!("refused ({b}); Prometheus answered")),
        (
            Answer::Series {
                kind: want_kind,
                series: want_series,
            },
            Answer::Series {
                kind: got_kind,
                series: got_series,
            },
        ) => {
            if want_kind != got_kind {
                return Some(format!("result type {got_kind}, Prometheus {want_kind}"));
            }
            let want_labels: Vec<&String> = want_series.iter().map(|(l, _)| l).collect();
            let got_labels: Vec<&String> = got_series.iter().map(|(l, _)| l).collect();
            if ordered && want_labels != got_labels {
                return Some(format!("order {got_labels:?}, Prometheus {want_labels:?}"));
            }
            let want_map: BTreeMap<&String, &Vec<(i64, Point)>> =
                want_series.iter().map(|(l, p)| (l, p)).collect();
            let got_map: BTreeMap<&String, &Vec<(i64, Point)>> =
                got_series.iter().map(|(l, p)| (l, p)).collect();
            let want_keys: BTreeSet<_> = want_map.keys().collect();
            let got_keys: BTreeSet<_> = got_map.keys().collect();
            if want_keys != got_keys || got_map.len() != got_series.len() {
                let missing: Vec<_> = want_keys.difference(&got_keys).take(3).collect();
                let extra: Vec<_> = got_keys.difference(&want_keys).take(3).collect();
                return Some(format!(
                    "{} series, Prometheus {}; missing {missing:?}, extra {extra:?}",
                    got_series.len(),
                    want_series.len()
                ));
            }
            for (labels, want_points) in &want_map {
                let got_points = got_map[labels];
                if want_points.len() != got_points.len() {
                    return Some(format!(
                        "{labels}: {} points, Prometheus {}",
                        got_points.len(),
                        want_points.len()
                    ));
                }
                for (w, g) in want_points.iter().zip(got_points.iter()) {
                    if w.0 != g.0 || !same_point(&w.1, &g.1) {
                        return Some(format!("{labels}: {g:?}, Prometheus {w:?}"));
                    }
                }
            }
            None
        }
    }
}

/// Polls until `meerkat` holds `samples` samples (float and histogram).
fn wait_until_stored(meerkat: SocketAddr, samples: usize) {
    let count = |table: &str| {
        let path = format!(
            "/api/v1/sql?query={}",
            url_encode(&format!("SELECT count(*) FROM {table}"))
        );
        let (status, body) = api(meerkat, &path);
        assert_eq!(status, 200, "{body}");
        body["data"]["rows"][0][0].as_u64().unwrap() as usize
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stored = count("samples") + count("histograms");
        if stored >= samples {
            assert_eq!(
                stored, samples,
                "Meerkat stored more samples than were written"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Meerkat holds {stored} of {samples} samples"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn known_differences(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn promql_on_the_embedded_store_answers_as_prometheus_2_42_does() {
    compare_with_prometheus(&[], "embedded");
}

#[test]
fn promql_on_clickhouse_answers_as_prometheus_2_42_does() {
    let clickhouse = ClickHouseServer::start();
    let url = clickhouse.url();
    compare_with_prometheus(
        &[
            ("MEERKAT_STORAGE__ENGINE", "clickhouse"),
            ("MEERKAT_STORAGE__CLICKHOUSE__URL", &url),
            ("MEERKAT_STORAGE__CLICKHOUSE__DATABASE", "meerkat_promql"),
            ("MEERKAT_INGEST__FLUSH_INTERVAL_SECONDS", "1"),
        ],
        "clickhouse",
    );
}

/// Runs the whole comparison against `meerkat serve` started with `env`.
fn compare_with_prometheus(env: &[(&str, &str)], engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let meerkat = Server::start(
        dir.path(),
        &[
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().unwrap(),
        ],
        env,
    );
    let prometheus_dir = dir.path().join("prometheus");
    std::fs::create_dir_all(&prometheus_dir).unwrap();
    let prometheus = Prometheus::start_with(
        &prometheus_dir,
        "global:\n  scrape_interval: 1m\n",
        &[
            "--web.enable-remote-write-receiver",
            "--enable-feature=native-histograms",
        ],
    );

    // An hour ending about now, on a whole minute, so that day/hour functions see today.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let base_ms = (now_ms - 70 * MINUTE) / MINUTE * MINUTE;
    let data = generate(base_ms);
    let total: usize = data
        .iter()
        .map(|g| g.samples.len() + g.histograms.len())
        .sum();
    for body in write_requests(&data, base_ms) {
        remote_write(prometheus.addr, &body);
        remote_write(meerkat.addr, &body);
    }
    wait_until_stored(meerkat.addr, total);

    let seconds = |ms: i64| format!("{:.3}", ms as f64 / 1000.0);
    let mut cases: Vec<(String, String, String)> = Vec::new(); // (query, mode, path)
    for template in QUERIES {
        let expanded: Vec<String> = if template.contains("{R}") {
            RANGES.iter().map(|r| template.replace("{R}", r)).collect()
        } else {
            vec![(*template).to_owned()]
        };
        for query in expanded {
            let encoded = url_encode(&query);
            for minutes in INSTANT_MINUTES {
                let at = base_ms + (minutes * MINUTE as f64) as i64;
                cases.push((
                    query.clone(),
                    format!("instant at +{minutes}m"),
                    format!("/api/v1/query?query={encoded}&time={}", seconds(at)),
                ));
            }
            for (step, from, to) in [("60", 0, 70 * MINUTE), ("37", 90_500, 64 * MINUTE)] {
                cases.push((
                    query.clone(),
                    format!("range step {step}s"),
                    format!(
                        "/api/v1/query_range?query={encoded}&start={}&end={}&step={step}",
                        seconds(base_ms + from),
                        seconds(base_ms + to)
                    ),
                ));
            }
        }
    }

    let mut passed = 0;
    // Cases where Prometheus answered with data, not an empty result or an error: what the
    // comparison is worth.
    let mut with_data = 0;
    let mut failed_queries: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (query, mode, path) in &cases {
        let (want_status, want_body) = api(prometheus.addr, path);
        let (got_status, got_body) = api(meerkat.addr, path);
        let want = answer(want_status, &want_body);
        let got = answer(got_status, &got_body);
        if matches!(&want, Answer::Series { series, .. } if !series.is_empty()) {
            with_data += 1;
        }
        let ordered = query.starts_with("sort") && mode.starts_with("instant");
        match difference(&want, &got, ordered) {
            None => passed += 1,
            Some(why) => failed_queries
                .entry(query.clone())
                .or_default()
                .push(format!("{mode}: {why}")),
        }
    }
    // The metadata endpoints over the same data. Prometheus answers from whole blocks (here
    // all data is in its head block), so only ranges covering all the data compare.
    let whole = format!(
        "&start={}&end={}",
        seconds(base_ms),
        seconds(base_ms + 70 * MINUTE)
    );
    for (path, range) in [
        ("/api/v1/labels?", ""),
        ("/api/v1/labels?match[]=temperature", whole.as_str()),
        ("/api/v1/label/__name__/values?", ""),
        ("/api/v1/label/instance/values?", whole.as_str()),
        ("/api/v1/label/room/values?match[]=temperature", ""),
        (
            r#"/api/v1/label/le/values?match[]={instance="b"}"#,
            whole.as_str(),
        ),
        (
            r#"/api/v1/series?match[]={__name__=~"memory_bytes|build_info"}"#,
            "",
        ),
        (
            r#"/api/v1/series?match[]=temperature&match[]=hc_gauge{id=~"2.+"}"#,
            whole.as_str(),
        ),
        (r#"/api/v1/series?match[]={job=~".+"}"#, whole.as_str()),
    ] {
        let path = format!(
            "{}{range}",
            path.replace('"', "%22")
                .replace('{', "%7B")
                .replace('}', "%7D")
                .replace('+', "%2B")
        );
        let (want_status, want) = api(prometheus.addr, &path);
        let (got_status, got) = api(meerkat.addr, &path);
        let as_set = |body: &Value| -> BTreeSet<String> {
            body["data"]
                .as_array()
                .map(|items| items.iter().map(Value::to_string).collect())
                .unwrap_or_default()
        };
        cases.push((path.clone(), "metadata".to_owned(), path.clone()));
        if want_status == got_status && as_set(&want) == as_set(&got) && !as_set(&want).is_empty() {
            passed += 1;
            with_data += 1;
        } else {
            failed_queries.entry(path).or_default().push(format!(
                "metadata: {got_status} {got}, Prometheus {want_status} {want}"
            ));
        }
    }

    let failed: usize = failed_queries.values().map(Vec::len).sum();
    for (query, reasons) in &failed_queries {
        println!("DIFFERS {query}");
        for reason in reasons.iter().take(3) {
            println!("    {reason}");
        }
    }
    println!(
        "{engine}: {passed} passed, {failed} failed ({} queries, {} cases of which {with_data} with \
         data, {} differing queries)",
        cases.iter().map(|c| &c.0).collect::<BTreeSet<_>>().len(),
        cases.len(),
        failed_queries.len()
    );

    let known_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(KNOWN_DIFFERENCES);
    let differing: BTreeSet<String> = failed_queries.keys().cloned().collect();
    if std::env::var("PROMQL_VS_PROMETHEUS").as_deref() == Ok("update") {
        let mut text = String::from(
            "# Queries on which Meerkat and Prometheus 2.42 answer differently over the same\n\
             # data (tests/promql_vs_prometheus.rs). Each needs its reason in a comment.\n",
        );
        for query in &differing {
            text.push_str(query);
            text.push('\n');
        }
        std::fs::write(&known_path, text).unwrap();
    }
    let known = known_differences(&known_path);
    let unexpected: Vec<_> = differing.difference(&known).collect();
    let fixed: Vec<_> = known.difference(&differing).collect();
    assert!(
        unexpected.is_empty() && fixed.is_empty(),
        "differing but not listed in {KNOWN_DIFFERENCES}: {unexpected:#?}\n\
         listed but now agreeing (remove them): {fixed:#?}"
    );
    assert!(
        with_data * 10 > cases.len() * 8,
        "only {with_data} of {} cases had data: the comparison proves little",
        cases.len()
    );
}
