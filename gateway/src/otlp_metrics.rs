//! OTLP metrics into Prometheus-shaped series, translated the way Prometheus's own OTLP
//! receiver does it (its `otlptranslator`), so a dashboard or alert written against a
//! Prometheus that receives OTLP works unchanged against Meerkat.
//!
//! What a request becomes:
//!
//! - **Names.** With [`TranslationStrategy::UnderscoreEscapingWithSuffixes`] (Prometheus's
//!   default) the name is split into tokens on every character outside `[a-zA-Z0-9:]`, the unit
//!   is turned into a Prometheus word (`s` → `seconds`, `By/s` → `bytes_per_second`, units in
//!   `{braces}` dropped) and appended unless it is already a token, monotonic sums get
//!   `_total`, gauges with unit `1` get `_ratio`, and a leading digit gets a `_` prefix. With
//!   [`TranslationStrategy::UnderscoreEscapingWithoutSuffixes`] only characters outside
//!   `[a-zA-Z0-9:_]` are replaced. A name that comes out empty or all underscores is refused.
//! - **Labels** come from the data point's attributes: characters outside `[a-zA-Z0-9_]` become
//!   `_`, a leading digit gets `key_`, a single leading underscore gets `key` (Prometheus's
//!   default `label_name_underscore_sanitization`), and attributes that end up with the same
//!   name are joined with `;` in the order of their original keys. Values are rendered like the
//!   collector's `pcommon.Value.AsString` (JSON for arrays and maps, base64 for bytes).
//! - **Resource.** `job` is `service.namespace/service.name` (or `service.name`), `instance` is
//!   `service.instance.id`; both go on every series, as do the attributes listed in
//!   [`OtlpConfig::promote_resource_attributes`] (unless the point already has that label). The
//!   other resource attributes go on one `target_info` gauge per resource, with samples from
//!   the resource's earliest to its latest data point timestamp every 2.5 minutes (half
//!   Prometheus's default lookback) plus one at the latest, so `target_info` joins work over the
//!   whole range.
//! - **Scope** name and version are not labels (Prometheus's `promote_scope_metadata` is off by
//!   default).
//! - **Points.** Gauges and sums become one float series each; explicit-bucket histograms become
//!   classic `_bucket{le}` (cumulative, plus `+Inf`), `_sum` (when present) and `_count` series;
//!   exponential histograms become native histograms (scale above 8 is downscaled to 8, below
//!   -4 is refused); summaries become `{quantile}`, `_sum` and `_count`. A point flagged
//!   `NoRecordedValue` becomes Prometheus's staleness marker. Timestamps go from ns to ms.
//! - **Exemplars** on sums and histograms keep `trace_id`/`span_id` (lowercase hex) and, if the
//!   whole set stays within OpenMetrics' 128 characters, the filtered attributes. A classic
//!   histogram's exemplar goes on the bucket that contains its value. Gauge exemplars are
//!   dropped, as Prometheus does (OpenMetrics allows exemplars on counters and buckets only).
//! - **Metadata**: one entry per metric family: type, description as help, unit as the
//!   Prometheus unit word.
//!
//! **Delta temporality is refused.** A delta sum or histogram only means something once it is
//! added up into a cumulative series, and that needs per-series state (the running total and
//! the last start time) that lives somewhere. The gateway is stateless and scaled
//! horizontally: consecutive deltas of one series land on different replicas, and a restart or
//! a rebalance loses the running totals, so any sum it produced would silently restart or
//! double count. Prometheus refuses delta by default for the same reason. Clients should send
//! cumulative temporality: `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=cumulative` in
//! the SDK, or the collector's `deltatocumulative` processor, which keeps that state in one
//! place.
//!
//! Every label set goes through [`series_labels`], so a series breaking a tenant limit is
//! refused with a reason while the rest of the request is kept; the series of one data point
//! (a histogram's buckets, a summary's quantiles) are kept or refused together. Points with
//! the same labels share one series, and once a request holds
//! [`Limits::max_series_per_request`] series, points that would add more are refused.
//!
//! Where this differs from Prometheus, on purpose: malformed points that Prometheus would store
//! half-right are refused with a reason (bucket counts that do not match the bounds, bounds
//! that are not strictly increasing, bucket counts that overflow, a number point without a
//! value); one bad point is refused alone rather than ending its metric; `target_info` gets at
//! most [`MAX_TARGET_INFO_SAMPLES`] samples per resource (Prometheus would write millions for a
//! point stamped 1970); exemplar attribute names are sanitized like label names (Meerkat's
//! labels are always valid); and downscaled exponential buckets are always merged correctly
//! (Prometheus misplaces counts when the first merged bucket is empty).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use model::{
    BucketSpan, Exemplar, HistogramCounts, Labels, METRIC_NAME_LABEL, MetricBatch, MetricMetadata,
    MetricType, NativeHistogram, ResetHint, STALE_NAN_BITS, Sample, Series, stale_nan,
};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    self as otlp, AggregationTemporality, ExponentialHistogramDataPoint, HistogramDataPoint,
    NumberDataPoint, SummaryDataPoint, exponential_histogram_data_point::Buckets, metric::Data,
    number_data_point,
};

use crate::config::{Limits, OtlpConfig, TranslationStrategy};
use crate::validate::{Outcome, Rejection, series_labels};

/// `DataPointFlags.FLAG_NO_RECORDED_VALUE`: the series ended (Prometheus writes a stale marker).
const NO_RECORDED_VALUE: u32 = 1;
const SERVICE_NAME: &str = "service.name";
const SERVICE_NAMESPACE: &str = "service.namespace";
const SERVICE_INSTANCE_ID: &str = "service.instance.id";
/// Resource attributes that make `job` and `instance` and so stay off `target_info`.
const IDENTIFYING_ATTRIBUTES: [&str; 3] = [SERVICE_NAMESPACE, SERVICE_NAME, SERVICE_INSTANCE_ID];
const TARGET_INFO: &str = "target_info";
/// Prometheus spaces `target_info` samples by half of its default 5-minute lookback delta.
const TARGET_INFO_INTERVAL_NS: i128 = 150 * 1_000_000_000;
/// The most `target_info` samples written for one resource (the most recent ones). Prometheus
/// has no such cap; one point with a zero timestamp would make it write one sample every 2.5
/// minutes since 1970.
pub const MAX_TARGET_INFO_SAMPLES: usize = 100;
/// Prometheus ignores OTLP's `zero_threshold` and uses this for every exponential histogram.
const ZERO_THRESHOLD: f64 = 1e-128;
const MAX_EXEMPLAR_RUNES: usize = crate::remote_write::MAX_EXEMPLAR_LABEL_RUNES;
const LOWEST_SCHEMA: i32 = -4;
const HIGHEST_SCHEMA: i32 = 8;

/// The kind of an OTLP metric, as far as naming is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Gauge,
    MonotonicCounter,
    NonMonotonicCounter,
    Histogram,
    ExponentialHistogram,
    Summary,
}

/// Converts an OTLP export request into series and metadata, refusing bad parts one by one.
pub fn convert(
    request: ExportMetricsServiceRequest,
    config: &OtlpConfig,
    limits: &Limits,
) -> (MetricBatch, Outcome) {
    let mut converter = Converter {
        config,
        limits,
        batch: MetricBatch::default(),
        outcome: Outcome::default(),
        positions: HashMap::new(),
        families: HashSet::new(),
        target_info_seen: HashSet::new(),
    };
    for resource_metrics in request.resource_metrics {
        converter.resource(resource_metrics);
    }
    (converter.batch, converter.outcome)
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// The Prometheus metric name of an OTLP metric (`otlptranslator.MetricNamer.Build`).
pub fn metric_name(
    name: &str,
    unit: &str,
    kind: MetricKind,
    strategy: TranslationStrategy,
) -> Result<String, String> {
    let normalized = match strategy {
        TranslationStrategy::UnderscoreEscapingWithSuffixes => name_with_suffixes(name, unit, kind),
        TranslationStrategy::UnderscoreEscapingWithoutSuffixes => name_without_suffixes(name),
    };
    if normalized.is_empty() {
        return Err(format!(
            "metric name {name:?} has no character Prometheus allows ([a-zA-Z0-9:_])"
        ));
    }
    if normalized != name && normalized.bytes().all(|b| b == b'_') {
        return Err(format!(
            "metric name {name:?} became {normalized:?}, which has nothing but underscores"
        ));
    }
    Ok(normalized)
}

/// The Prometheus label name of an attribute key (`otlptranslator.LabelNamer.Build` with
/// Prometheus's defaults: underscore sanitization on, repeated underscores kept).
pub fn label_name(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("an attribute key is empty".to_owned());
    }
    let sanitized: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let name = if sanitized.as_bytes()[0].is_ascii_digit() {
        format!("key_{sanitized}")
    } else if sanitized.starts_with('_') && !sanitized.starts_with("__") {
        format!("key{sanitized}")
    } else {
        sanitized
    };
    if name.bytes().all(|b| b == b'_') {
        return Err(format!(
            "attribute key {key:?} became label name {name:?}, which has nothing but underscores"
        ));
    }
    Ok(name)
}

/// The Prometheus unit word of an OTLP (UCUM) unit, as put in metadata
/// (`otlptranslator.UnitNamer.Build`): `By/s` → `bytes_per_second`, `1` and `{request}` → empty.
pub fn unit_name(unit: &str) -> String {
    let (main, per) = unit_suffixes(unit);
    let (main, per) = (clean_up_unit(&main), clean_up_unit(&per));
    let word = match (main.is_empty(), per.is_empty()) {
        (false, false) => format!("{main}_{per}"),
        (false, true) => main,
        _ => per,
    };
    let word = word.strip_prefix('_').unwrap_or(&word);
    word.strip_suffix('_').unwrap_or(word).to_owned()
}

fn is_metric_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == ':'
}

fn name_with_suffixes(name: &str, unit: &str, kind: MetricKind) -> String {
    // Splitting also collapses repeated underscores, as the OTel compatibility spec wants.
    let mut tokens: Vec<String> = name
        .split(|c: char| !is_metric_char(c))
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
        .collect();
    let (main, per) = unit_suffixes(unit);
    add_unit_tokens(&mut tokens, clean_up_unit(&main), clean_up_unit(&per));
    if kind == MetricKind::MonotonicCounter {
        tokens.retain(|token| token != "total");
        tokens.push("total".to_owned());
    }
    if unit == "1" && kind == MetricKind::Gauge {
        tokens.retain(|token| token != "ratio");
        tokens.push("ratio".to_owned());
    }
    with_digit_prefix(tokens.join("_"))
}

fn name_without_suffixes(name: &str) -> String {
    let tokens: Vec<&str> = name
        .split(|c: char| !(is_metric_char(c) || c == '_'))
        .filter(|token| !token.is_empty())
        .collect();
    with_digit_prefix(tokens.join("_"))
}

fn with_digit_prefix(name: String) -> String {
    if name.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        format!("_{name}")
    } else {
        name
    }
}

/// Appends the unit words unless the name already has them as tokens.
fn add_unit_tokens(tokens: &mut Vec<String>, main: String, per: String) {
    let mut main = if tokens.contains(&main) {
        String::new()
    } else {
        main
    };
    let per = if per == "per_" {
        String::new()
    } else {
        let per = per.strip_suffix('_').unwrap_or(&per).to_owned();
        if tokens.contains(&per) {
            String::new()
        } else {
            per
        }
    };
    if !per.is_empty()
        && let Some(stripped) = main.strip_suffix('_')
    {
        main = stripped.to_owned();
    }
    if !main.is_empty() {
        tokens.push(main);
    }
    if !per.is_empty() {
        tokens.push(per);
    }
}

/// The main and "per" unit words of a unit, before cleaning (`buildUnitSuffixes`).
fn unit_suffixes(unit: &str) -> (String, String) {
    let mut parts = unit.splitn(2, '/');
    let main = parts.next().unwrap_or_default().trim();
    let main = if main.is_empty() || main.contains(['{', '}']) {
        String::new()
    } else {
        main_unit_word(main).to_owned()
    };
    let per = match parts.next().map(str::trim) {
        Some(per) if !per.is_empty() && !per.contains(['{', '}']) => {
            let word = per_unit_word(per);
            if word.is_empty() {
                String::new()
            } else {
                format!("per_{word}")
            }
        }
        _ => String::new(),
    };
    (main, per)
}

/// Prometheus's unit map; anything else is kept as is.
fn main_unit_word(unit: &str) -> &str {
    match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "",
        "%" => "percent",
        other => other,
    }
}

fn per_unit_word(unit: &str) -> &str {
    match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    }
}

/// Invalid characters to `_`, runs of `_` collapsed, one leading `_` dropped.
fn clean_up_unit(unit: &str) -> String {
    let mut out = String::with_capacity(unit.len());
    for c in unit.chars() {
        let c = if is_metric_char(c) { c } else { '_' };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    match out.strip_prefix('_') {
        Some(rest) => rest.to_owned(),
        None => out,
    }
}

// ---------------------------------------------------------------------------------------------
// Attribute values, rendered like pcommon.Value.AsString
// ---------------------------------------------------------------------------------------------

fn any_value_string(value: Option<&AnyValue>) -> String {
    use any_value::Value as V;
    match value.and_then(|v| v.value.as_ref()) {
        None | Some(V::StringValueStrindex(_)) => String::new(),
        Some(V::StringValue(s)) => s.clone(),
        Some(V::BoolValue(b)) => b.to_string(),
        Some(V::IntValue(i)) => i.to_string(),
        Some(V::DoubleValue(f)) => es6_float(*f)
            .unwrap_or_else(|| format!("json: unsupported value: {}", model::format_go_f(*f))),
        Some(V::BytesValue(bytes)) => base64(bytes),
        Some(V::ArrayValue(_) | V::KvlistValue(_)) => {
            let mut out = String::new();
            // Go's json.Marshal fails on NaN and infinities, and AsString then gives "".
            match json_value(value, &mut out) {
                Some(()) => out,
                None => String::new(),
            }
        }
    }
}

/// A finite float the way Go's JSON encoder writes it (ES6 number formatting).
fn es6_float(value: f64) -> Option<String> {
    if !value.is_finite() {
        return None;
    }
    let abs = value.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let scientific = format!("{value:e}");
        let (mantissa, exponent) = scientific.split_once('e')?;
        let exponent: i32 = exponent.parse().ok()?;
        let sign = if exponent < 0 { '-' } else { '+' };
        Some(format!("{mantissa}e{sign}{}", exponent.abs()))
    } else {
        Some(format!("{value}"))
    }
}

/// Go's `json.Marshal` of the value's raw form; `None` where Go would fail.
fn json_value(value: Option<&AnyValue>, out: &mut String) -> Option<()> {
    use any_value::Value as V;
    match value.and_then(|v| v.value.as_ref()) {
        None | Some(V::StringValueStrindex(_)) => out.push_str("null"),
        Some(V::StringValue(s)) => json_string(s, out),
        Some(V::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(V::IntValue(i)) => out.push_str(&i.to_string()),
        Some(V::DoubleValue(f)) => out.push_str(&es6_float(*f)?),
        Some(V::BytesValue(bytes)) => json_string(&base64(bytes), out),
        Some(V::ArrayValue(array)) => {
            out.push('[');
            for (i, item) in array.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_value(Some(item), out)?;
            }
            out.push(']');
        }
        Some(V::KvlistValue(list)) => {
            // A Go map: later duplicates win, keys come out sorted.
            let map: BTreeMap<&str, Option<&AnyValue>> = list
                .values
                .iter()
                .map(|kv| (kv.key.as_str(), kv.value.as_ref()))
                .collect();
            out.push('{');
            for (i, (key, item)) in map.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(key, out);
                out.push(':');
                json_value(item, out)?;
            }
            out.push('}');
        }
    }
    Some(())
}

/// A JSON string as Go's encoder writes it (HTML characters escaped).
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Labels
// ---------------------------------------------------------------------------------------------

/// Sets a label as Prometheus's `labels.Builder` does: an empty value removes it.
fn set_label(labels: &mut BTreeMap<String, String>, name: String, value: String) {
    if value.is_empty() {
        labels.remove(&name);
    } else {
        labels.insert(name, value);
    }
}

/// Attributes as labels: keys sorted, names sanitized, collisions joined with `;`.
fn attribute_labels(
    attributes: &[KeyValue],
    ignore: &[&str],
) -> Result<BTreeMap<String, String>, String> {
    let mut pairs: Vec<(&str, String)> = attributes
        .iter()
        .filter(|kv| !ignore.contains(&kv.key.as_str()))
        .map(|kv| (kv.key.as_str(), any_value_string(kv.value.as_ref())))
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let mut labels = BTreeMap::new();
    for (key, value) in pairs {
        let name = label_name(key)?;
        let value = match labels.get(&name) {
            Some(existing) => format!("{existing};{value}"),
            None => value,
        };
        set_label(&mut labels, name, value);
    }
    Ok(labels)
}

/// A series' full label list: the point's labels, the metric name and an optional `le` or
/// `quantile`.
fn series_pairs(
    base: &BTreeMap<String, String>,
    name: &str,
    extra: Option<(&str, String)>,
) -> Vec<(String, String)> {
    let mut labels = base.clone();
    labels.insert(METRIC_NAME_LABEL.to_owned(), name.to_owned());
    if let Some((extra_name, value)) = extra {
        set_label(&mut labels, extra_name.to_owned(), value);
    }
    labels.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------------------------

/// A data point timestamp: Prometheus's `int64(ns) / 1e6`.
fn point_ms(ns: u64) -> i64 {
    (ns as i64) / 1_000_000
}

/// An exemplar or `target_info` timestamp: Go's `time.Unix(0, ns).UnixMilli()` (floor).
fn floor_ms(ns: i128) -> i64 {
    ns.div_euclid(1_000_000) as i64
}

/// Where `target_info` samples go for a resource whose points span `earliest..=latest` (ns).
fn target_info_timestamps(earliest: u64, latest: u64) -> Vec<i64> {
    // Prometheus converts the unsigned timestamps through int64, as here.
    let (first, last) = (i128::from(earliest as i64), i128::from(latest as i64));
    let mut timestamps = Vec::new();
    if first < last {
        let steps = (last - first + TARGET_INFO_INTERVAL_NS - 1) / TARGET_INFO_INTERVAL_NS;
        let start = (steps - (MAX_TARGET_INFO_SAMPLES as i128 - 1)).max(0);
        for step in start..steps {
            timestamps.push(floor_ms(first + step * TARGET_INFO_INTERVAL_NS));
        }
    }
    timestamps.push(floor_ms(last));
    timestamps
}

fn point_timestamps(data: &Data) -> Vec<u64> {
    match data {
        Data::Gauge(g) => g.data_points.iter().map(|p| p.time_unix_nano).collect(),
        Data::Sum(s) => s.data_points.iter().map(|p| p.time_unix_nano).collect(),
        Data::Histogram(h) => h.data_points.iter().map(|p| p.time_unix_nano).collect(),
        Data::ExponentialHistogram(h) => h.data_points.iter().map(|p| p.time_unix_nano).collect(),
        Data::Summary(s) => s.data_points.iter().map(|p| p.time_unix_nano).collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// Histograms
// ---------------------------------------------------------------------------------------------

/// Series samples one classic histogram point turns into.
fn classic_samples(point: &HistogramDataPoint) -> u64 {
    point.explicit_bounds.len() as u64 + 2 + u64::from(point.sum.is_some())
}

/// Checks what Prometheus takes on trust: OTLP's shape rules and counts that cannot overflow.
fn check_explicit_buckets(point: &HistogramDataPoint) -> Result<(), String> {
    let (bounds, counts) = (point.explicit_bounds.len(), point.bucket_counts.len());
    if !(counts == bounds + 1 || (counts == 0 && bounds == 0)) {
        return Err(format!(
            "histogram point has {counts} bucket counts for {bounds} explicit bounds; OTLP requires one count more than bounds (or neither)"
        ));
    }
    if let Some(bad) = point
        .explicit_bounds
        .iter()
        .find(|b| b.is_nan() || **b == f64::INFINITY)
    {
        return Err(format!(
            "histogram explicit bound {bad} is not allowed (the +Inf bucket is implied)"
        ));
    }
    if point.explicit_bounds.windows(2).any(|w| w[0] >= w[1]) {
        return Err("histogram explicit bounds are not strictly increasing".to_owned());
    }
    if point
        .bucket_counts
        .iter()
        .try_fold(0u64, |total, count| total.checked_add(*count))
        .is_none()
    {
        return Err("histogram bucket counts add up to more than 2^64".to_owned());
    }
    Ok(())
}

/// An exponential histogram point as a native histogram (`exponentialToNativeHistogram`).
fn native_histogram(point: &ExponentialHistogramDataPoint) -> Result<NativeHistogram, String> {
    if point.scale < LOWEST_SCHEMA {
        return Err(format!(
            "exponential histogram scale {} is below {LOWEST_SCHEMA}, the coarsest native histogram schema",
            point.scale
        ));
    }
    let (schema, scale_down) = if point.scale > HIGHEST_SCHEMA {
        (HIGHEST_SCHEMA, point.scale - HIGHEST_SCHEMA)
    } else {
        (point.scale, 0)
    };
    let layout = |buckets: &Option<Buckets>| match buckets {
        Some(b) => buckets_layout(&b.bucket_counts, b.offset, scale_down),
        None => Ok((Vec::new(), Vec::new())),
    };
    let (positive_spans, positive_deltas) = layout(&point.positive)?;
    let (negative_spans, negative_deltas) = layout(&point.negative)?;
    let stale = point.flags & NO_RECORDED_VALUE != 0;
    let histogram = NativeHistogram {
        timestamp_ms: point_ms(point.time_unix_nano),
        schema,
        zero_threshold: ZERO_THRESHOLD,
        sum: if stale {
            stale_nan()
        } else {
            point.sum.unwrap_or(0.0)
        },
        // Prometheus cannot be sure of resets from OTLP, so it never claims to know.
        reset_hint: ResetHint::Unknown,
        counts: HistogramCounts::Integer {
            count: if stale { STALE_NAN_BITS } else { point.count },
            zero_count: point.zero_count,
            positive_deltas,
            negative_deltas,
        },
        positive_spans,
        negative_spans,
    };
    histogram.validate().map_err(|e| e.to_string())?;
    Ok(histogram)
}

/// OTLP's dense exponential buckets as Prometheus's sparse spans and delta-encoded counts,
/// merging `2^scale_down` buckets into one (`convertBucketsLayout`, with OTLP's index `i`
/// becoming Prometheus's `i + 1`). Gaps of up to two empty buckets are filled with zeros,
/// longer ones start a new span.
fn buckets_layout(
    counts: &[u64],
    offset: i32,
    scale_down: i32,
) -> Result<(Vec<BucketSpan>, Vec<i64>), String> {
    if counts.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let shift = scale_down.clamp(0, 63);
    let index = |i: usize| -> Result<i64, String> {
        let i = i64::try_from(i).map_err(|_| "too many buckets".to_owned())?;
        let merged = ((i + i64::from(offset)) >> shift) + 1;
        if i32::try_from(merged).is_err() {
            return Err(format!(
                "exponential histogram bucket index {merged} is out of range"
            ));
        }
        Ok(merged)
    };
    // Sum the counts of each merged bucket, in index order.
    let mut groups: Vec<(i64, u64)> = Vec::new();
    for (i, &count) in counts.iter().enumerate() {
        let merged = index(i)?;
        match groups.last_mut() {
            Some((last, total)) if *last == merged => {
                *total = total
                    .checked_add(count)
                    .ok_or("exponential histogram bucket counts overflow")?;
            }
            _ => groups.push((merged, count)),
        }
    }
    let span_offset =
        |gap: i64| i32::try_from(gap).map_err(|_| "bucket gap out of range".to_owned());
    let first = groups.first().map_or(0, |g| g.0);
    let mut spans = vec![BucketSpan {
        offset: span_offset(first)?,
        length: 0,
    }];
    let mut deltas = Vec::new();
    let mut previous: i64 = 0;
    // Index the next appended bucket lands on.
    let mut next = first;
    let last = groups.len() - 1;
    for (position, &(merged, count)) in groups.iter().enumerate() {
        // Empty buckets are only written to fill a small gap, or when they are the last one.
        if count == 0 && position != last {
            continue;
        }
        let count = i64::try_from(count)
            .map_err(|_| format!("exponential histogram bucket count {count} is too large"))?;
        let gap = merged - next;
        if gap > 2 {
            spans.push(BucketSpan {
                offset: span_offset(gap)?,
                length: 0,
            });
        } else {
            for _ in 0..gap {
                append_bucket(&mut spans, &mut deltas, &mut previous, 0);
            }
        }
        append_bucket(&mut spans, &mut deltas, &mut previous, count);
        next = merged + 1;
    }
    Ok((spans, deltas))
}

fn append_bucket(spans: &mut [BucketSpan], deltas: &mut Vec<i64>, previous: &mut i64, count: i64) {
    if let Some(span) = spans.last_mut() {
        span.length = span.length.saturating_add(1);
    }
    deltas.push(count - *previous);
    *previous = count;
}

// ---------------------------------------------------------------------------------------------
// Exemplars
// ---------------------------------------------------------------------------------------------

/// A trace or span id in hex; `None` when absent (empty or all zeros, as pdata's `IsEmpty`).
fn id_hex(what: &str, id: &[u8], size: usize) -> Result<Option<String>, String> {
    if id.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    if id.len() != size {
        return Err(format!(
            "exemplar {what} is {} bytes long; OTLP requires {size}",
            id.len()
        ));
    }
    Ok(Some(hex(id)))
}

fn convert_exemplar(exemplar: otlp::Exemplar) -> Result<Exemplar, String> {
    let value = match exemplar.value {
        Some(otlp::exemplar::Value::AsDouble(v)) => v,
        Some(otlp::exemplar::Value::AsInt(v)) => v as f64,
        None => return Err("exemplar has no value".to_owned()),
    };
    let trace_id = id_hex("trace_id", &exemplar.trace_id, 16)?;
    let span_id = id_hex("span_id", &exemplar.span_id, 8)?;
    let mut runes = 0;
    for (key, id) in [("trace_id", &trace_id), ("span_id", &span_id)] {
        if let Some(id) = id {
            runes += key.len() + id.len();
        }
    }
    runes += exemplar
        .filtered_attributes
        .iter()
        .map(|kv| kv.key.chars().count() + any_value_string(kv.value.as_ref()).chars().count())
        .sum::<usize>();
    // The attributes only come along if the whole set fits OpenMetrics' limit; their names are
    // sanitized (a name that cannot be is left out).
    let mut labels = if runes <= MAX_EXEMPLAR_RUNES {
        let usable: Vec<KeyValue> = exemplar
            .filtered_attributes
            .into_iter()
            .filter(|kv| label_name(&kv.key).is_ok())
            .collect();
        attribute_labels(&usable, &[])?
    } else {
        BTreeMap::new()
    };
    for (key, id) in [("trace_id", trace_id), ("span_id", span_id)] {
        if let Some(id) = id {
            labels.insert(key.to_owned(), id);
        }
    }
    Ok(Exemplar {
        labels: Labels::new(labels).map_err(|e| format!("exemplar labels: {e}"))?,
        value,
        timestamp_ms: floor_ms(i128::from(exemplar.time_unix_nano as i64)),
    })
}

// ---------------------------------------------------------------------------------------------
// The conversion
// ---------------------------------------------------------------------------------------------

/// What every series of one resource shares.
struct Resource {
    attributes: Vec<KeyValue>,
    job: String,
    instance: String,
    /// Promoted resource attributes, by label name.
    promoted: BTreeMap<String, String>,
}

impl Resource {
    /// Sets `job` and `instance` where the resource has them (an attribute of that name stays
    /// otherwise, as in Prometheus).
    fn identify(&self, labels: &mut BTreeMap<String, String>) {
        for (name, value) in [("job", &self.job), ("instance", &self.instance)] {
            if !value.is_empty() {
                labels.insert(name.to_owned(), value.clone());
            }
        }
    }
}

/// One series' worth of one data point, before its labels are checked.
struct Pending {
    pairs: Vec<(String, String)>,
    sample: Option<Sample>,
    histogram: Option<NativeHistogram>,
    exemplars: Vec<Exemplar>,
}

impl Pending {
    fn float(pairs: Vec<(String, String)>, timestamp_ms: i64, value: f64) -> Self {
        Self {
            pairs,
            sample: Some(Sample {
                timestamp_ms,
                value,
            }),
            histogram: None,
            exemplars: Vec::new(),
        }
    }
}

struct Converter<'a> {
    config: &'a OtlpConfig,
    limits: &'a Limits,
    batch: MetricBatch,
    outcome: Outcome,
    /// Series positions in the batch by label fingerprint, so equal label sets share a series.
    positions: HashMap<u64, Vec<usize>>,
    /// Metric families that already have metadata.
    families: HashSet<String>,
    /// `target_info` samples already written (several resources may share one).
    target_info_seen: HashSet<(Labels, i64)>,
}

impl Converter<'_> {
    fn reject(&mut self, reason: &'static str, message: String, items: u64) {
        self.outcome.reject(Rejection::new(reason, message), items);
    }

    fn resource(&mut self, resource_metrics: otlp::ResourceMetrics) {
        let attributes = resource_metrics
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        let resource = self.resource_context(attributes);
        // target_info covers every point of the resource, refused ones included, as in
        // Prometheus (it takes the range before looking at temporality).
        let mut range: Option<(u64, u64)> = None;
        for scope in &resource_metrics.scope_metrics {
            for metric in &scope.metrics {
                let Some(data) = &metric.data else { continue };
                for ts in point_timestamps(data) {
                    range = Some(match range {
                        Some((earliest, latest)) => (earliest.min(ts), latest.max(ts)),
                        None => (ts, ts),
                    });
                }
            }
        }
        for scope in resource_metrics.scope_metrics {
            for metric in scope.metrics {
                self.metric(&resource, metric);
            }
        }
        if let Some((earliest, latest)) = range {
            self.target_info(&resource, earliest, latest);
        }
    }

    fn resource_context(&self, attributes: Vec<KeyValue>) -> Resource {
        let get = |key: &str| {
            attributes
                .iter()
                .find(|kv| kv.key == key)
                .map(|kv| any_value_string(kv.value.as_ref()))
        };
        let job = match (get(SERVICE_NAME), get(SERVICE_NAMESPACE)) {
            (Some(name), Some(namespace)) => format!("{namespace}/{name}"),
            (Some(name), None) => name,
            (None, _) => String::new(),
        };
        let instance = get(SERVICE_INSTANCE_ID).unwrap_or_default();
        let mut promoted = BTreeMap::new();
        for kv in &attributes {
            if self.config.promote_resource_attributes.contains(&kv.key)
                && let Ok(name) = label_name(&kv.key)
            {
                set_label(&mut promoted, name, any_value_string(kv.value.as_ref()));
            }
        }
        Resource {
            attributes,
            job,
            instance,
            promoted,
        }
    }

    /// A data point's labels, without the metric name.
    fn point_labels(
        &self,
        resource: &Resource,
        attributes: &[KeyValue],
    ) -> Result<BTreeMap<String, String>, String> {
        let mut labels = attribute_labels(attributes, &[])?;
        for (name, value) in &resource.promoted {
            if !labels.contains_key(name) {
                labels.insert(name.clone(), value.clone());
            }
        }
        resource.identify(&mut labels);
        Ok(labels)
    }

    fn metric(&mut self, resource: &Resource, metric: otlp::Metric) {
        let Some(data) = metric.data else {
            self.reject(
                "unsupported_metric",
                format!("metric {:?} has no data of a known type", metric.name),
                1,
            );
            return;
        };
        let (kind, temporality, items) = match &data {
            Data::Gauge(g) => (MetricKind::Gauge, None, g.data_points.len() as u64),
            Data::Sum(s) => (
                if s.is_monotonic {
                    MetricKind::MonotonicCounter
                } else {
                    MetricKind::NonMonotonicCounter
                },
                Some(s.aggregation_temporality),
                s.data_points.len() as u64,
            ),
            Data::Histogram(h) => (
                MetricKind::Histogram,
                Some(h.aggregation_temporality),
                h.data_points.iter().map(classic_samples).sum(),
            ),
            Data::ExponentialHistogram(h) => (
                MetricKind::ExponentialHistogram,
                Some(h.aggregation_temporality),
                h.data_points.len() as u64,
            ),
            Data::Summary(s) => (
                MetricKind::Summary,
                None,
                s.data_points
                    .iter()
                    .map(|p| p.quantile_values.len() as u64 + 2)
                    .sum(),
            ),
        };
        if items == 0 {
            return;
        }
        match temporality.map(AggregationTemporality::try_from) {
            None | Some(Ok(AggregationTemporality::Cumulative)) => {}
            Some(Ok(AggregationTemporality::Delta)) => {
                self.reject(
                    "delta_temporality",
                    format!(
                        "metric {:?} has delta temporality, which Meerkat does not accept: send cumulative temporality (OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=cumulative in the OpenTelemetry SDK, or the collector's deltatocumulative processor)",
                        metric.name
                    ),
                    items,
                );
                return;
            }
            Some(_) => {
                self.reject(
                    "invalid_temporality",
                    format!(
                        "metric {:?} has no valid aggregation temporality; send cumulative temporality",
                        metric.name
                    ),
                    items,
                );
                return;
            }
        }
        let name = match metric_name(
            &metric.name,
            &metric.unit,
            kind,
            self.config.translation_strategy,
        ) {
            Ok(name) => name,
            Err(message) => {
                self.reject("invalid_metric_name", message, items);
                return;
            }
        };
        let mut accepted = false;
        let metric_type = match data {
            Data::Gauge(gauge) => {
                for point in gauge.data_points {
                    accepted |= self.number_point(resource, &name, point, false);
                }
                MetricType::Gauge
            }
            Data::Sum(sum) => {
                for point in sum.data_points {
                    accepted |= self.number_point(resource, &name, point, true);
                }
                if sum.is_monotonic {
                    MetricType::Counter
                } else {
                    MetricType::Gauge
                }
            }
            Data::Histogram(histogram) => {
                for point in histogram.data_points {
                    accepted |= self.histogram_point(resource, &name, point);
                }
                MetricType::Histogram
            }
            Data::ExponentialHistogram(histogram) => {
                for point in histogram.data_points {
                    accepted |= self.exponential_point(resource, &name, point);
                }
                MetricType::Histogram
            }
            Data::Summary(summary) => {
                for point in summary.data_points {
                    accepted |= self.summary_point(resource, &name, point);
                }
                MetricType::Summary
            }
        };
        if accepted {
            self.metadata(
                name,
                metric_type,
                metric.description,
                unit_name(&metric.unit),
            );
        }
    }

    fn metadata(&mut self, name: String, metric_type: MetricType, help: String, unit: String) {
        if self.families.insert(name.clone()) {
            self.batch.metadata.push(MetricMetadata {
                metric_family_name: name,
                metric_type,
                help,
                unit,
            });
        }
    }

    /// The point's labels, or its refusal (counting `items`).
    fn labels_or_reject(
        &mut self,
        resource: &Resource,
        name: &str,
        attributes: &[KeyValue],
        items: u64,
    ) -> Option<BTreeMap<String, String>> {
        match self.point_labels(resource, attributes) {
            Ok(labels) => Some(labels),
            Err(message) => {
                self.reject("invalid_label", format!("metric {name}: {message}"), items);
                None
            }
        }
    }

    fn exemplars(&mut self, name: &str, exemplars: Vec<otlp::Exemplar>) -> Vec<Exemplar> {
        let mut out = Vec::with_capacity(exemplars.len());
        for exemplar in exemplars {
            match convert_exemplar(exemplar) {
                Ok(exemplar) => out.push(exemplar),
                Err(message) => {
                    self.reject("invalid_exemplar", format!("metric {name}: {message}"), 1);
                }
            }
        }
        out
    }

    fn number_point(
        &mut self,
        resource: &Resource,
        name: &str,
        point: NumberDataPoint,
        with_exemplars: bool,
    ) -> bool {
        let value = if point.flags & NO_RECORDED_VALUE != 0 {
            stale_nan()
        } else {
            match point.value {
                Some(number_data_point::Value::AsDouble(v)) => v,
                Some(number_data_point::Value::AsInt(v)) => v as f64,
                None => {
                    self.reject(
                        "missing_value",
                        format!("metric {name}: a data point has no value"),
                        1,
                    );
                    return false;
                }
            }
        };
        let Some(base) = self.labels_or_reject(resource, name, &point.attributes, 1) else {
            return false;
        };
        let mut pending = Pending::float(
            series_pairs(&base, name, None),
            point_ms(point.time_unix_nano),
            value,
        );
        if with_exemplars {
            pending.exemplars = self.exemplars(name, point.exemplars);
        }
        self.commit(vec![pending])
    }

    fn histogram_point(
        &mut self,
        resource: &Resource,
        name: &str,
        point: HistogramDataPoint,
    ) -> bool {
        let items = classic_samples(&point);
        if let Err(message) = check_explicit_buckets(&point) {
            self.reject(
                "invalid_histogram",
                format!("metric {name}: {message}"),
                items,
            );
            return false;
        }
        let Some(base) = self.labels_or_reject(resource, name, &point.attributes, items) else {
            return false;
        };
        let stale = point.flags & NO_RECORDED_VALUE != 0;
        let value = |v: f64| if stale { stale_nan() } else { v };
        let timestamp = point_ms(point.time_unix_nano);
        let bounds = &point.explicit_bounds;
        // Each exemplar goes to the bucket holding its value: the first bound at or above it.
        let mut bucket_exemplars: Vec<Vec<Exemplar>> = vec![Vec::new(); bounds.len() + 1];
        for exemplar in self.exemplars(name, point.exemplars) {
            let bucket = bounds
                .iter()
                .position(|bound| exemplar.value <= *bound)
                .unwrap_or(bounds.len());
            bucket_exemplars[bucket].push(exemplar);
        }
        let mut pending = Vec::with_capacity(bounds.len() + 3);
        let sum_name = format!("{name}_sum");
        let count_name = format!("{name}_count");
        let bucket_name = format!("{name}_bucket");
        if let Some(sum) = point.sum {
            pending.push(Pending::float(
                series_pairs(&base, &sum_name, None),
                timestamp,
                value(sum),
            ));
        }
        pending.push(Pending::float(
            series_pairs(&base, &count_name, None),
            timestamp,
            value(point.count as f64),
        ));
        let mut cumulative: u64 = 0;
        let mut exemplars = bucket_exemplars.into_iter();
        for (bound, count) in bounds.iter().zip(&point.bucket_counts) {
            // Cannot overflow: check_explicit_buckets summed them all.
            cumulative = cumulative.saturating_add(*count);
            let mut bucket = Pending::float(
                series_pairs(
                    &base,
                    &bucket_name,
                    Some(("le", model::format_go_f(*bound))),
                ),
                timestamp,
                value(cumulative as f64),
            );
            bucket.exemplars = exemplars.next().unwrap_or_default();
            pending.push(bucket);
        }
        let mut infinity = Pending::float(
            series_pairs(&base, &bucket_name, Some(("le", "+Inf".to_owned()))),
            timestamp,
            value(point.count as f64),
        );
        infinity.exemplars = exemplars.next().unwrap_or_default();
        pending.push(infinity);
        self.commit(pending)
    }

    fn exponential_point(
        &mut self,
        resource: &Resource,
        name: &str,
        point: ExponentialHistogramDataPoint,
    ) -> bool {
        let histogram = match native_histogram(&point) {
            Ok(histogram) => histogram,
            Err(message) => {
                self.reject("invalid_histogram", format!("metric {name}: {message}"), 1);
                return false;
            }
        };
        let Some(base) = self.labels_or_reject(resource, name, &point.attributes, 1) else {
            return false;
        };
        let exemplars = self.exemplars(name, point.exemplars);
        self.commit(vec![Pending {
            pairs: series_pairs(&base, name, None),
            sample: None,
            histogram: Some(histogram),
            exemplars,
        }])
    }

    fn summary_point(&mut self, resource: &Resource, name: &str, point: SummaryDataPoint) -> bool {
        let items = point.quantile_values.len() as u64 + 2;
        let Some(base) = self.labels_or_reject(resource, name, &point.attributes, items) else {
            return false;
        };
        let stale = point.flags & NO_RECORDED_VALUE != 0;
        let value = |v: f64| if stale { stale_nan() } else { v };
        let timestamp = point_ms(point.time_unix_nano);
        let mut pending = vec![
            Pending::float(
                series_pairs(&base, &format!("{name}_sum"), None),
                timestamp,
                value(point.sum),
            ),
            Pending::float(
                series_pairs(&base, &format!("{name}_count"), None),
                timestamp,
                value(point.count as f64),
            ),
        ];
        for quantile in &point.quantile_values {
            pending.push(Pending::float(
                series_pairs(
                    &base,
                    name,
                    Some(("quantile", model::format_go_f(quantile.quantile))),
                ),
                timestamp,
                value(quantile.value),
            ));
        }
        self.commit(pending)
    }

    fn target_info(&mut self, resource: &Resource, earliest: u64, latest: u64) {
        let identifying = IDENTIFYING_ATTRIBUTES
            .iter()
            .filter(|key| resource.attributes.iter().any(|kv| kv.key == **key))
            .count();
        if resource.attributes.len() <= identifying {
            // Only job and instance: target_info would say nothing.
            return;
        }
        let timestamps = target_info_timestamps(earliest, latest);
        let mut labels = match attribute_labels(&resource.attributes, &IDENTIFYING_ATTRIBUTES) {
            Ok(labels) => labels,
            Err(message) => {
                self.reject(
                    "invalid_label",
                    format!("{TARGET_INFO}: {message}"),
                    timestamps.len() as u64,
                );
                return;
            }
        };
        resource.identify(&mut labels);
        if !labels.contains_key("job") && !labels.contains_key("instance") {
            // Nothing to join it on.
            return;
        }
        labels.insert(METRIC_NAME_LABEL.to_owned(), TARGET_INFO.to_owned());
        let pairs: Vec<(String, String)> = labels.into_iter().collect();
        let identity = match series_labels(pairs.clone(), self.limits) {
            Ok(identity) => identity,
            Err(rejection) => {
                self.outcome.reject(rejection, timestamps.len() as u64);
                return;
            }
        };
        let pending: Vec<Pending> = timestamps
            .into_iter()
            .filter(|ts| self.target_info_seen.insert((identity.clone(), *ts)))
            .map(|ts| Pending::float(pairs.clone(), ts, 1.0))
            .collect();
        if !pending.is_empty() && self.commit(pending) {
            self.metadata(
                TARGET_INFO.to_owned(),
                MetricType::Gauge,
                "Target metadata".to_owned(),
                String::new(),
            );
        }
    }

    fn find(&self, labels: &Labels) -> Option<usize> {
        self.positions
            .get(&labels.fingerprint())?
            .iter()
            .copied()
            .find(|&i| self.batch.series[i].labels == *labels)
    }

    /// Checks the labels of every series of one data point and adds them all, or refuses them
    /// all (counting one item per series).
    fn commit(&mut self, pending: Vec<Pending>) -> bool {
        let items = pending.len() as u64;
        let mut checked = Vec::with_capacity(pending.len());
        for p in pending {
            match series_labels(p.pairs, self.limits) {
                Ok(labels) => checked.push((labels, p.sample, p.histogram, p.exemplars)),
                Err(rejection) => {
                    self.outcome.reject(rejection, items);
                    return false;
                }
            }
        }
        let new: HashSet<&Labels> = checked
            .iter()
            .map(|(labels, ..)| labels)
            .filter(|labels| self.find(labels).is_none())
            .collect();
        let limit = usize::try_from(self.limits.max_series_per_request).unwrap_or(usize::MAX);
        if self.batch.series.len().saturating_add(new.len()) > limit {
            let message =
                format!("request has more than {limit} series, the limit; send smaller batches");
            self.reject("too_many_series", message, items);
            return false;
        }
        for (labels, sample, histogram, exemplars) in checked {
            let position = match self.find(&labels) {
                Some(position) => position,
                None => {
                    let position = self.batch.series.len();
                    self.positions
                        .entry(labels.fingerprint())
                        .or_default()
                        .push(position);
                    self.batch.series.push(Series {
                        labels,
                        ..Series::default()
                    });
                    position
                }
            };
            let series = &mut self.batch.series[position];
            series.samples.extend(sample);
            series.histograms.extend(histogram);
            series.exemplars.extend(exemplars);
        }
        self.outcome.accepted += items;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::is_stale_nan;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, InstrumentationScope, KeyValueList};
    use opentelemetry_proto::tonic::metrics::v1::{
        ExponentialHistogram, Gauge, Histogram, Metric, ResourceMetrics, ScopeMetrics, Sum,
        Summary, summary_data_point::ValueAtQuantile,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource as OtlpResource;
    use proptest::prelude::*;

    const T: u64 = 1_700_000_000_000_000_000;
    const T_MS: i64 = 1_700_000_000_000;
    const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;
    const DELTA: i32 = AggregationTemporality::Delta as i32;

    fn value(v: any_value::Value) -> Option<AnyValue> {
        Some(AnyValue { value: Some(v) })
    }

    fn kv(key: &str, v: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value(any_value::Value::StringValue(v.into())),
            ..Default::default()
        }
    }

    fn kv_any(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value(v),
            ..Default::default()
        }
    }

    fn metric(name: &str, unit: &str, data: Data) -> Metric {
        Metric {
            name: name.into(),
            unit: unit.into(),
            data: Some(data),
            ..Default::default()
        }
    }

    fn number(
        attributes: Vec<KeyValue>,
        time: u64,
        v: number_data_point::Value,
    ) -> NumberDataPoint {
        NumberDataPoint {
            attributes,
            time_unix_nano: time,
            value: Some(v),
            ..Default::default()
        }
    }

    fn gauge(name: &str, unit: &str, points: Vec<NumberDataPoint>) -> Metric {
        metric(
            name,
            unit,
            Data::Gauge(Gauge {
                data_points: points,
            }),
        )
    }

    fn counter(name: &str, unit: &str, temporality: i32, points: Vec<NumberDataPoint>) -> Metric {
        metric(
            name,
            unit,
            Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: temporality,
                is_monotonic: true,
            }),
        )
    }

    fn request(resource: Vec<KeyValue>, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(OtlpResource {
                    attributes: resource,
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "io.opentelemetry.http".into(),
                        version: "1.2.3".into(),
                        ..Default::default()
                    }),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn run(request: ExportMetricsServiceRequest) -> (MetricBatch, Outcome) {
        convert(request, &OtlpConfig::default(), &Limits::default())
    }

    /// Every float sample as `labels value`, in batch order.
    fn render(batch: &MetricBatch) -> Vec<String> {
        batch
            .series
            .iter()
            .flat_map(|s| {
                s.samples
                    .iter()
                    .map(move |x| format!("{} {}", s.labels, x.value))
            })
            .collect()
    }

    fn find<'a>(batch: &'a MetricBatch, rendered_labels: &str) -> &'a Series {
        batch
            .series
            .iter()
            .find(|s| s.labels.to_string() == rendered_labels)
            .unwrap_or_else(|| panic!("no series {rendered_labels} in {:#?}", render(batch)))
    }

    #[test]
    #[rustfmt::skip]
    fn metric_names_follow_prometheus_vectors() {
        use MetricKind::*;
        // From Prometheus's metric_name_builder_test.go and otlptranslator's
        // metric_namer_test.go (UnderscoreEscapingWithSuffixes).
        let with_suffixes = [
            ("system.filesystem.usage", "By", Gauge, "system_filesystem_usage_bytes"),
            ("system.io", "By", MonotonicCounter, "system_io_bytes_total"),
            ("network_transmitted_bytes_total", "By", MonotonicCounter, "network_transmitted_bytes_total"),
            ("\t system.filesystem.usage       ", "  By\t", Gauge, "system_filesystem_usage_bytes"),
            ("system.network.dropped", "{packets}", Gauge, "system_network_dropped"),
            ("system.network.dropped", "nonstandard:_1", Gauge, "system_network_dropped_nonstandard:_1"),
            ("system.network.dropped", "{packets}", MonotonicCounter, "system_network_dropped_total"),
            ("system.network.dropped", "packets", Gauge, "system_network_dropped_packets"),
            ("system.network.packets.dropped", "packets", Gauge, "system_network_packets_dropped"),
            ("system.network.packets", "packets", Gauge, "system_network_packets"),
            ("system.network.dropped", "packets", MonotonicCounter, "system_network_dropped_packets_total"),
            ("system.network.packets", "packets", MonotonicCounter, "system_network_packets_total"),
            ("hw.gpu.memory.utilization", "1", Gauge, "hw_gpu_memory_utilization_ratio"),
            ("hw.fan.speed_ratio", "1", Gauge, "hw_fan_speed_ratio"),
            ("objects", "1", MonotonicCounter, "objects_total"),
            ("hw.cpu.speed_limit", "Hz", Gauge, "hw_cpu_speed_limit_hertz"),
            ("broken.metric.speed", "km/h", Gauge, "broken_metric_speed_km_per_hour"),
            ("astro.light.speed_limit", "m/s", Gauge, "astro_light_speed_limit_meters_per_second"),
            ("system.network.dropped", "non/standard:_1", Gauge, "system_network_dropped_non_per_standard:_1"),
            ("broken.metric.speed", "km/°", Gauge, "broken_metric_speed_km"),
            ("broken.metric.success_ratio", "%", Gauge, "broken_metric_success_ratio_percent"),
            ("broken.metric.success_percent", "%", Gauge, "broken_metric_success_percent"),
            ("test.metric.no_unit", "", Gauge, "test_metric_no_unit"),
            ("test.metric.spaces", "   \t  ", Gauge, "test_metric_spaces"),
            ("active_directory.ds.replication.network.io", "By", MonotonicCounter, "active_directory_ds_replication_network_io_bytes_total"),
            ("active_directory.ds.replication.object.rate", "{objects}/s", Gauge, "active_directory_ds_replication_object_rate_per_second"),
            ("apache.workers", "connections", Gauge, "apache_workers_connections"),
            ("bigip.virtual_server.request.count", "{requests}", MonotonicCounter, "bigip_virtual_server_request_count_total"),
            ("system.disk.operation_time", "s", MonotonicCounter, "system_disk_operation_time_seconds_total"),
            ("system.cpu.load_average.15m", "1", Gauge, "system_cpu_load_average_15m_ratio"),
            ("memcached.operation_hit_ratio", "%", Gauge, "memcached_operation_hit_ratio_percent"),
            ("mongodbatlas.process.journaling.data_files", "MiBy", Gauge, "mongodbatlas_process_journaling_data_files_mebibytes"),
            ("mongodbatlas.process.oplog.rate", "GiBy/h", Gauge, "mongodbatlas_process_oplog_rate_gibibytes_per_hour"),
            ("mongodbatlas.process.db.query_targeting.scanned_per_returned", "{scanned}/{returned}", Gauge, "mongodbatlas_process_db_query_targeting_scanned_per_returned"),
            ("nsxt.node.memory.usage", "KBy", Gauge, "nsxt_node_memory_usage_kilobytes"),
            ("redis.latest_fork", "us", Gauge, "redis_latest_fork_microseconds"),
            ("3.14 digits", "", Gauge, "_3_14_digits"),
            ("envoy__rule_engine_zlib_buf_error", "", Gauge, "envoy_rule_engine_zlib_buf_error"),
            (":foo::bar", "", Gauge, ":foo::bar"),
            (":foo::bar", "", MonotonicCounter, ":foo::bar_total"),
            ("foo.bar", "1", Gauge, "foo_bar_ratio"),
            ("system.io", "foo/bar", MonotonicCounter, "system_io_foo_per_bar_total"),
            ("metric_with_字符_foreign_characters", "", MonotonicCounter, "metric_with_foreign_characters_total"),
            ("requests", "1", NonMonotonicCounter, "requests"),
            ("requests_total", "", MonotonicCounter, "requests_total"),
            ("cpu_usage_ratio", "1", Gauge, "cpu_usage_ratio"),
            ("response_time_seconds", "s", Gauge, "response_time_seconds"),
            ("requests", "1/s", Gauge, "requests_per_second"),
            ("metric__with__multiple__underscores", "unit__multiple__underscores", Gauge, "metric_with_multiple_underscores_unit_multiple_underscores"),
            ("custom_metric", "unit@with#special/chars", Gauge, "custom_metric_unit_with_special_per_chars"),
            ("custom_metric", "By/{custom}", Gauge, "custom_metric_bytes"),
            ("capacity", "TiBy", Gauge, "capacity_tibibytes"),
            ("temperature", "Cel", Gauge, "temperature_celsius"),
            ("invoices", "1/mo", Gauge, "invoices_per_month"),
            ("custom", "1/custom_unit", Gauge, "custom_per_custom_unit"),
            ("metric", "By/", Gauge, "metric_bytes"),
            ("metric", " By / s ", Gauge, "metric_bytes_per_second"),
            ("metric", "/", Gauge, "metric"),
            ("http.request.duration", "ms", Histogram, "http_request_duration_milliseconds"),
            ("request_size", "By", ExponentialHistogram, "request_size_bytes"),
            ("response_time", "ms", Summary, "response_time_milliseconds"),
        ];
        for (name, unit, kind, expected) in with_suffixes {
            let got = metric_name(name, unit, kind, TranslationStrategy::UnderscoreEscapingWithSuffixes);
            assert_eq!(got.as_deref(), Ok(expected), "{name:?} {unit:?} {kind:?}");
        }
        let without_suffixes = [
            ("system.io", "By", MonotonicCounter, "system_io"),
            ("3.14 digits", "By", Gauge, "_3_14_digits"),
            ("envoy__rule_engine_zlib_buf_error", "", Gauge, "envoy__rule_engine_zlib_buf_error"),
            (":foo::bar", "", MonotonicCounter, ":foo::bar"),
            ("foo.bar", "1", Gauge, "foo_bar"),
            ("system.io", "foo/bar", MonotonicCounter, "system_io"),
            ("metric_with_字符_foreign_characters", "", MonotonicCounter, "metric_with___foreign_characters"),
            ("metric@@##$$name", "", Gauge, "metric_name"),
            ("123metric", "", Gauge, "_123metric"),
        ];
        for (name, unit, kind, expected) in without_suffixes {
            let got = metric_name(name, unit, kind, TranslationStrategy::UnderscoreEscapingWithoutSuffixes);
            assert_eq!(got.as_deref(), Ok(expected), "{name:?} {unit:?} {kind:?}");
        }
        for strategy in [
            TranslationStrategy::UnderscoreEscapingWithSuffixes,
            TranslationStrategy::UnderscoreEscapingWithoutSuffixes,
        ] {
            for bad in ["", "@#$%", "字符"] {
                assert!(metric_name(bad, "", Gauge, strategy).is_err(), "{bad:?}");
            }
        }
        // A name that is all underscores is fine only if it was sent that way.
        let without = TranslationStrategy::UnderscoreEscapingWithoutSuffixes;
        assert_eq!(metric_name("__", "", Gauge, without).as_deref(), Ok("__"));
        assert!(metric_name("_.", "", Gauge, without).is_err());
    }

    #[test]
    fn unit_words_follow_prometheus_vectors() {
        // The wantUnitName column of otlptranslator's metric_namer_test.go.
        let cases = [
            ("", ""),
            ("1", ""),
            ("ms", "milliseconds"),
            ("By", "bytes"),
            ("1/s", "per_second"),
            ("By/s", "bytes_per_second"),
            ("custom_unit", "custom_unit"),
            ("{custom}", ""),
            ("By/{custom}", "bytes"),
            ("unit__multiple__underscores", "unit_multiple_underscores"),
            ("unit@with#special/chars", "unit_with_special_per_chars"),
            ("KiBy", "kibibytes"),
            ("%", "percent"),
            ("1/custom_unit", "per_custom_unit"),
            ("By/", "bytes"),
            (" By / s ", "bytes_per_second"),
            ("/", ""),
            ("1/y", "per_year"),
        ];
        for (unit, expected) in cases {
            assert_eq!(unit_name(unit), expected, "{unit:?}");
        }
    }

    #[test]
    fn label_names_follow_prometheus_vectors() {
        // otlptranslator's label_namer_test.go with Prometheus's defaults.
        let cases = [
            ("label:with:colons", "label_with_colons"),
            ("LabelWithCapitalLetters", "LabelWithCapitalLetters"),
            ("label!with&special$chars)", "label_with_special_chars_"),
            (
                "label_with_foreign_characters_字符",
                "label_with_foreign_characters___",
            ),
            ("label.with.dots", "label_with_dots"),
            ("123label", "key_123label"),
            (
                "_label_starting_with_underscore",
                "key_label_starting_with_underscore",
            ),
            (
                "__label_starting_with_2underscores",
                "__label_starting_with_2underscores",
            ),
            ("regular label", "regular_label"),
            ("_", "key_"),
        ];
        for (key, expected) in cases {
            assert_eq!(label_name(key).as_deref(), Ok(expected), "{key:?}");
        }
        for bad in ["", "__", "ようこそ", "_.", "__.."] {
            assert!(label_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn attribute_values_render_like_pdata_as_string() {
        use any_value::Value as V;
        let render = |v: V| any_value_string(value(v).as_ref());
        assert_eq!(render(V::StringValue("a b".into())), "a b");
        assert_eq!(render(V::BoolValue(true)), "true");
        assert_eq!(render(V::IntValue(-42)), "-42");
        assert_eq!(render(V::DoubleValue(1.5)), "1.5");
        assert_eq!(render(V::DoubleValue(100.0)), "100");
        assert_eq!(render(V::DoubleValue(1e21)), "1e+21");
        assert_eq!(render(V::DoubleValue(1e20)), "100000000000000000000");
        assert_eq!(render(V::DoubleValue(1e-7)), "1e-7");
        assert_eq!(render(V::DoubleValue(1.25e-12)), "1.25e-12");
        assert_eq!(render(V::DoubleValue(0.000001)), "0.000001");
        assert_eq!(
            render(V::DoubleValue(f64::NAN)),
            "json: unsupported value: NaN"
        );
        assert_eq!(
            render(V::DoubleValue(f64::INFINITY)),
            "json: unsupported value: +Inf"
        );
        assert_eq!(render(V::BytesValue(b"hello".to_vec())), "aGVsbG8=");
        assert_eq!(render(V::BytesValue(vec![0xff, 0xfe])), "//4=");
        assert_eq!(render(V::BytesValue(vec![])), "");
        let array = V::ArrayValue(ArrayValue {
            values: vec![
                AnyValue {
                    value: Some(V::StringValue("x<y>&\"\n\u{1}".into())),
                },
                AnyValue {
                    value: Some(V::IntValue(1)),
                },
                AnyValue {
                    value: Some(V::BoolValue(false)),
                },
                AnyValue { value: None },
                AnyValue {
                    value: Some(V::DoubleValue(2.5)),
                },
                AnyValue {
                    value: Some(V::BytesValue(vec![1, 2, 3])),
                },
            ],
        });
        assert_eq!(
            render(array),
            r#"["x\u003cy\u003e\u0026\"\n\u0001",1,false,null,2.5,"AQID"]"#
        );
        let map = V::KvlistValue(KeyValueList {
            values: vec![kv("b", "2"), kv("a", "1"), kv("b", "3")],
        });
        assert_eq!(render(map), r#"{"a":"1","b":"3"}"#);
        let nan_inside = V::ArrayValue(ArrayValue {
            values: vec![AnyValue {
                value: Some(V::DoubleValue(f64::NAN)),
            }],
        });
        assert_eq!(render(nan_inside), "");
    }

    #[test]
    fn le_and_quantile_values_are_written_like_prometheus_otlp() {
        assert_eq!(model::format_go_f(0.005), "0.005");
        assert_eq!(model::format_go_f(1e6), "1000000");
        assert_eq!(model::format_go_f(1e-7), "0.0000001");
        assert_eq!(model::format_go_f(1e21), "1000000000000000000000");
        assert_eq!(model::format_go_f(-2.5), "-2.5");
        assert_eq!(model::format_go_f(f64::INFINITY), "+Inf");
        assert_eq!(model::format_go_f(f64::NEG_INFINITY), "-Inf");
        assert_eq!(model::format_go_f(f64::NAN), "NaN");
    }

    #[test]
    #[rustfmt::skip]
    fn bucket_layouts_match_prometheus_vectors() {
        let span = |offset, length| BucketSpan { offset, length };
        // (counts, offset, scale down, spans, deltas) from histograms_test.go.
        type Case = (Vec<u64>, i32, i32, Vec<BucketSpan>, Vec<i64>);
        let cases: Vec<Case> = vec![
            (vec![4, 3, 2, 1], 0, 0, vec![span(1, 4)], vec![4, -1, -1, -1]),
            (vec![4, 3, 2, 1], 0, 1, vec![span(1, 2)], vec![7, -4]),
            (vec![4, 3, 2, 1], 0, 2, vec![span(1, 1)], vec![10]),
            (vec![4, 3, 2, 1], 1, 1, vec![span(1, 3)], vec![4, 1, -4]),
            (vec![4, 3, 2, 1], 1, 2, vec![span(1, 2)], vec![9, -8]),
            (vec![4, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 4, 0, vec![span(5, 4), span(12, 1)], vec![4, -2, -2, 2, -1]),
            (vec![4, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 4, 1, vec![span(3, 2), span(6, 1)], vec![6, -4, -1]),
            (vec![4, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 4, 2, vec![span(2, 1), span(3, 1)], vec![8, -7]),
            (vec![4, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1], 4, 0, vec![span(5, 4), span(8, 1)], vec![4, -2, -2, 2, -1]),
            (vec![4, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1], 4, 2, vec![span(2, 4)], vec![8, -8, 0, 1]),
            (vec![3, 1, 0, 0, 0, 1], -2, 0, vec![span(-1, 2), span(3, 1)], vec![3, -2, 0]),
            (vec![3, 1, 0, 0, 0, 1], -2, 1, vec![span(0, 3)], vec![4, -4, 1]),
            (vec![3, 1, 0, 0, 0, 1], -2, 2, vec![span(0, 2)], vec![4, -3]),
            (vec![3, 1, 0, 1, 0, 1], -2, 0, vec![span(-1, 6)], vec![3, -2, -1, 1, -1, 1]),
            (vec![3, 1, 0, 1, 0, 1], -2, 1, vec![span(0, 3)], vec![4, -3, 0]),
            (vec![3, 0, 0, 1, 0, 0, 1], -2, 0, vec![span(-1, 7)], vec![3, -3, 0, 1, -1, 0, 1]),
            (vec![3, 0, 0, 1, 0, 0, 1], -2, 1, vec![span(0, 4)], vec![3, -2, -1, 1]),
            (vec![3, 0, 0, 1, 0, 0, 1], -2, 2, vec![span(0, 3)], vec![3, -2, 0]),
            (vec![], 0, 0, vec![], vec![]),
            // Leading and trailing empty buckets, as Prometheus writes them.
            (vec![0, 5], 0, 0, vec![span(1, 2)], vec![0, 5]),
            (vec![0, 0, 0, 0, 5], 0, 0, vec![span(1, 0), span(4, 1)], vec![5]),
            (vec![5, 0, 0, 0, 0], 0, 0, vec![span(1, 1), span(3, 1)], vec![5, -5]),
            // Prometheus puts the 3 on index 1 here; it belongs to merged index 2.
            (vec![0, 0, 3, 0], 0, 1, vec![span(1, 2)], vec![0, 3]),
        ];
        for (counts, offset, scale_down, spans, deltas) in cases {
            let got = buckets_layout(&counts, offset, scale_down);
            assert_eq!(got, Ok((spans, deltas)), "{counts:?} offset {offset} down {scale_down}");
        }
        assert!(buckets_layout(&[1, 1], i32::MAX, 0).is_err());
        assert!(buckets_layout(&[u64::MAX, 1], 0, 1).is_err());
        assert!(buckets_layout(&[1], -5, 40).is_ok());
    }

    #[test]
    fn a_full_request_becomes_the_series_prometheus_would_store() {
        use number_data_point::Value::{AsDouble, AsInt};
        let trace_id: Vec<u8> = (1..=16).collect();
        let span_id: Vec<u8> = (0xa1..=0xa8).collect();
        let exemplar = |v: f64, attributes: Vec<KeyValue>| otlp::Exemplar {
            filtered_attributes: attributes,
            time_unix_nano: T - 1_500_000,
            value: Some(otlp::exemplar::Value::AsDouble(v)),
            span_id: span_id.clone(),
            trace_id: trace_id.clone(),
        };
        let mut requests = counter(
            "http.server.requests",
            "{request}",
            CUMULATIVE,
            vec![NumberDataPoint {
                exemplars: vec![exemplar(1.0, vec![kv("user.id", "u1")])],
                ..number(
                    vec![
                        kv("http.method", "GET"),
                        kv_any("http.status_code", any_value::Value::IntValue(200)),
                    ],
                    T,
                    AsDouble(42.0),
                )
            }],
        );
        requests.description = "Requests served.".into();
        let mut duration = metric(
            "http.server.request.duration",
            "s",
            Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: vec![kv("http.route", "/cart")],
                    time_unix_nano: T,
                    count: 10,
                    sum: Some(12.5),
                    bucket_counts: vec![1, 2, 3, 4],
                    explicit_bounds: vec![0.005, 0.1, 1e6],
                    exemplars: vec![
                        exemplar(0.05, vec![]),
                        exemplar(2e6, vec![]),
                        exemplar(0.005, vec![]),
                    ],
                    ..Default::default()
                }],
                aggregation_temporality: CUMULATIVE,
            }),
        );
        duration.description = "Duration of HTTP server requests.".into();
        let rpc = metric(
            "rpc.server.duration",
            "ms",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    time_unix_nano: T,
                    count: 5,
                    sum: Some(10.1),
                    scale: 1,
                    zero_count: 1,
                    positive: Some(Buckets {
                        offset: 1,
                        bucket_counts: vec![1, 1],
                    }),
                    negative: Some(Buckets {
                        offset: 1,
                        bucket_counts: vec![1, 1],
                    }),
                    exemplars: vec![exemplar(3.0, vec![])],
                    ..Default::default()
                }],
                aggregation_temporality: CUMULATIVE,
            }),
        );
        let gc = metric(
            "go.gc.pause",
            "s",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    time_unix_nano: T,
                    count: 7,
                    sum: 0.5,
                    quantile_values: vec![
                        ValueAtQuantile {
                            quantile: 0.5,
                            value: 0.01,
                        },
                        ValueAtQuantile {
                            quantile: 0.99,
                            value: 0.2,
                        },
                    ],
                    ..Default::default()
                }],
            }),
        );
        let resource = vec![
            kv("service.name", "checkout"),
            kv("service.namespace", "shop"),
            kv("service.instance.id", "pod-7"),
            kv("k8s.pod.name", "checkout-7f9"),
            kv("host.name", "node-1"),
            kv("deployment.environment", "prod"),
        ];
        let request = request(
            resource,
            vec![
                gauge(
                    "system.memory.usage",
                    "By",
                    vec![number(vec![kv("state", "used")], T, AsInt(1024))],
                ),
                requests,
                duration,
                rpc,
                gc,
                gauge(
                    "process.cpu.utilization",
                    "1",
                    vec![NumberDataPoint {
                        // Gauge exemplars are dropped, as Prometheus does.
                        exemplars: vec![exemplar(0.3, vec![])],
                        ..number(vec![], T, AsDouble(0.25))
                    }],
                ),
            ],
        );
        let config = OtlpConfig {
            promote_resource_attributes: vec!["k8s.pod.name".into()],
            ..OtlpConfig::default()
        };
        let (batch, outcome) = convert(request, &config, &Limits::default());
        assert_eq!(outcome.rejected, vec![]);
        let common = r#"instance="pod-7", job="shop/checkout", k8s_pod_name="checkout-7f9""#;
        let expected: Vec<String> = [
            format!(r#"system_memory_usage_bytes{{{common}, state="used"}} 1024"#),
            format!(r#"http_server_requests_total{{http_method="GET", http_status_code="200", {common}}} 42"#),
            format!(r#"http_server_request_duration_seconds_sum{{http_route="/cart", {common}}} 12.5"#),
            format!(r#"http_server_request_duration_seconds_count{{http_route="/cart", {common}}} 10"#),
            format!(r#"http_server_request_duration_seconds_bucket{{http_route="/cart", {common}, le="0.005"}} 1"#),
            format!(r#"http_server_request_duration_seconds_bucket{{http_route="/cart", {common}, le="0.1"}} 3"#),
            format!(r#"http_server_request_duration_seconds_bucket{{http_route="/cart", {common}, le="1000000"}} 6"#),
            format!(r#"http_server_request_duration_seconds_bucket{{http_route="/cart", {common}, le="+Inf"}} 10"#),
            format!(r#"go_gc_pause_seconds_sum{{{common}}} 0.5"#),
            format!(r#"go_gc_pause_seconds_count{{{common}}} 7"#),
            format!(r#"go_gc_pause_seconds{{{common}, quantile="0.5"}} 0.01"#),
            format!(r#"go_gc_pause_seconds{{{common}, quantile="0.99"}} 0.2"#),
            format!(r#"process_cpu_utilization_ratio{{{common}}} 0.25"#),
            r#"target_info{deployment_environment="prod", host_name="node-1", instance="pod-7", job="shop/checkout", k8s_pod_name="checkout-7f9"} 1"#.to_owned(),
        ]
        .into_iter()
        .collect();
        assert_eq!(render(&batch), expected);
        assert!(
            batch
                .series
                .iter()
                .flat_map(|s| &s.samples)
                .all(|s| s.timestamp_ms == T_MS)
        );
        // 14 float samples and one native histogram.
        assert_eq!(outcome.accepted, 15);
        assert_eq!(batch.sample_count(), 15);

        // The native histogram (Prometheus's "convert exp. to native histogram" vector).
        let native = find(
            &batch,
            &format!("rpc_server_duration_milliseconds{{{common}}}"),
        );
        assert_eq!(native.samples, vec![]);
        let h = &native.histograms[0];
        assert_eq!(
            (h.schema, h.zero_threshold, h.sum, h.timestamp_ms),
            (1, 1e-128, 10.1, T_MS)
        );
        assert_eq!(h.reset_hint, ResetHint::Unknown);
        assert_eq!(
            h.positive_spans,
            vec![BucketSpan {
                offset: 2,
                length: 2
            }]
        );
        assert_eq!(
            h.negative_spans,
            vec![BucketSpan {
                offset: 2,
                length: 2
            }]
        );
        assert_eq!(
            h.counts,
            HistogramCounts::Integer {
                count: 5,
                zero_count: 1,
                positive_deltas: vec![1, 0],
                negative_deltas: vec![1, 0],
            }
        );
        assert_eq!(native.exemplars.len(), 1);

        // Exemplars: ids in hex, attributes sanitized, on the bucket holding the value.
        let ids = r#"span_id="a1a2a3a4a5a6a7a8", trace_id="0102030405060708090a0b0c0d0e0f10""#;
        let counter_series = find(
            &batch,
            &format!(
                r#"http_server_requests_total{{http_method="GET", http_status_code="200", {common}}}"#
            ),
        );
        assert_eq!(counter_series.exemplars.len(), 1);
        assert_eq!(
            counter_series.exemplars[0].labels.to_string(),
            format!(r#"{{{ids}, user_id="u1"}}"#)
        );
        assert_eq!(counter_series.exemplars[0].value, 1.0);
        assert_eq!(counter_series.exemplars[0].timestamp_ms, T_MS - 2);
        let bucket = |le: &str| {
            find(
                &batch,
                &format!(r#"http_server_request_duration_seconds_bucket{{http_route="/cart", {common}, le="{le}"}}"#),
            )
            .exemplars
            .iter()
            .map(|e| e.value)
            .collect::<Vec<_>>()
        };
        assert_eq!(bucket("0.005"), vec![0.005]);
        assert_eq!(bucket("0.1"), vec![0.05]);
        assert_eq!(bucket("1000000"), Vec::<f64>::new());
        assert_eq!(bucket("+Inf"), vec![2e6]);
        let ratio = find(
            &batch,
            &format!("process_cpu_utilization_ratio{{{common}}}"),
        );
        assert!(ratio.exemplars.is_empty());

        let metadata: Vec<(&str, MetricType, &str, &str)> = batch
            .metadata
            .iter()
            .map(|m| {
                (
                    m.metric_family_name.as_str(),
                    m.metric_type,
                    m.help.as_str(),
                    m.unit.as_str(),
                )
            })
            .collect();
        assert_eq!(
            metadata,
            vec![
                ("system_memory_usage_bytes", MetricType::Gauge, "", "bytes"),
                (
                    "http_server_requests_total",
                    MetricType::Counter,
                    "Requests served.",
                    ""
                ),
                (
                    "http_server_request_duration_seconds",
                    MetricType::Histogram,
                    "Duration of HTTP server requests.",
                    "seconds"
                ),
                (
                    "rpc_server_duration_milliseconds",
                    MetricType::Histogram,
                    "",
                    "milliseconds"
                ),
                ("go_gc_pause_seconds", MetricType::Summary, "", "seconds"),
                ("process_cpu_utilization_ratio", MetricType::Gauge, "", ""),
                ("target_info", MetricType::Gauge, "Target metadata", ""),
            ]
        );
    }

    #[test]
    fn the_no_recorded_value_flag_writes_staleness_markers() {
        let stale_number = NumberDataPoint {
            time_unix_nano: T,
            flags: NO_RECORDED_VALUE,
            ..Default::default()
        };
        let stale_histogram = HistogramDataPoint {
            time_unix_nano: T,
            count: 3,
            sum: Some(1.0),
            bucket_counts: vec![1, 2],
            explicit_bounds: vec![1.0],
            flags: NO_RECORDED_VALUE,
            ..Default::default()
        };
        let stale_exponential = ExponentialHistogramDataPoint {
            time_unix_nano: T,
            count: 2,
            sum: Some(1.0),
            positive: Some(Buckets {
                offset: 0,
                bucket_counts: vec![2],
            }),
            flags: NO_RECORDED_VALUE,
            ..Default::default()
        };
        let stale_summary = SummaryDataPoint {
            time_unix_nano: T,
            count: 1,
            sum: 1.0,
            quantile_values: vec![ValueAtQuantile {
                quantile: 0.5,
                value: 1.0,
            }],
            flags: NO_RECORDED_VALUE,
            ..Default::default()
        };
        let (batch, outcome) = run(request(
            vec![kv("service.name", "svc")],
            vec![
                gauge("up", "", vec![stale_number.clone()]),
                counter("hits", "", CUMULATIVE, vec![stale_number]),
                metric(
                    "latency",
                    "",
                    Data::Histogram(Histogram {
                        data_points: vec![stale_histogram],
                        aggregation_temporality: CUMULATIVE,
                    }),
                ),
                metric(
                    "size",
                    "",
                    Data::ExponentialHistogram(ExponentialHistogram {
                        data_points: vec![stale_exponential],
                        aggregation_temporality: CUMULATIVE,
                    }),
                ),
                metric(
                    "pause",
                    "",
                    Data::Summary(Summary {
                        data_points: vec![stale_summary],
                    }),
                ),
            ],
        ));
        assert_eq!(outcome.rejected, vec![]);
        // up, hits_total, 4 latency series, 3 pause series: all stale. No target_info (only
        // service.name on the resource).
        let floats: Vec<&Sample> = batch.series.iter().flat_map(|s| &s.samples).collect();
        assert_eq!(floats.len(), 9, "{:#?}", render(&batch));
        assert!(
            floats
                .iter()
                .all(|s| is_stale_nan(s.value) && s.timestamp_ms == T_MS)
        );
        let native = &find(&batch, r#"size{job="svc"}"#).histograms[0];
        assert!(is_stale_nan(native.sum));
        assert!(matches!(
            native.counts,
            HistogramCounts::Integer {
                count: STALE_NAN_BITS,
                ..
            }
        ));
        assert_eq!(outcome.accepted, 10);
    }

    #[test]
    fn delta_temporality_is_refused_with_advice_and_the_rest_is_kept() {
        use number_data_point::Value::AsDouble;
        let points = vec![
            number(vec![], T, AsDouble(1.0)),
            number(vec![kv("a", "b")], T, AsDouble(2.0)),
        ];
        let delta_histogram = metric(
            "latency",
            "s",
            Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    time_unix_nano: T,
                    count: 1,
                    bucket_counts: vec![1, 0],
                    explicit_bounds: vec![1.0],
                    ..Default::default()
                }],
                aggregation_temporality: DELTA,
            }),
        );
        let unspecified = counter("unset", "", 0, vec![number(vec![], T, AsDouble(1.0))]);
        let (batch, outcome) = run(request(
            vec![],
            vec![
                counter("http.requests", "", DELTA, points.clone()),
                delta_histogram,
                unspecified,
                gauge("temperature", "Cel", points),
            ],
        ));
        // Two counter points, and the histogram's _count + two buckets.
        assert_eq!(
            outcome.rejected,
            vec![("delta_temporality", 5), ("invalid_temporality", 1)]
        );
        let message = outcome.first_rejection.unwrap();
        for needle in [
            "\"http.requests\"",
            "cumulative",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=cumulative",
            "deltatocumulative",
        ] {
            assert!(message.contains(needle), "{needle} missing from {message}");
        }
        assert_eq!(
            render(&batch),
            vec!["temperature_celsius{} 1", r#"temperature_celsius{a="b"} 2"#]
        );
        assert_eq!(outcome.accepted, 2);
        assert_eq!(batch.metadata.len(), 1);
    }

    #[test]
    fn colliding_attributes_are_joined_in_key_order() {
        use number_data_point::Value::AsDouble;
        let attributes = vec![
            kv("a_b", "2"),
            kv("a.b", "1"),
            kv("a-b", "3"),
            kv("_x", "u"),
            kv("1st", "v"),
            kv("e.f", ""),
            kv("e_f", "w"),
            kv("g.h", "x"),
            kv("g_h", ""),
            kv("__name__", "ignored"),
            kv_any("empty", any_value::Value::StringValue(String::new())),
            KeyValue {
                key: "unset".into(),
                value: None,
                ..Default::default()
            },
        ];
        let (batch, outcome) = run(request(
            vec![kv("service.name", "api"), kv("service.instance.id", "i-1")],
            vec![gauge("g", "", vec![number(attributes, T, AsDouble(1.0))])],
        ));
        assert_eq!(outcome.rejected, vec![]);
        // "a-b" < "a.b" < "a_b" byte-wise; an empty first value is no value, an empty later one
        // still adds its separator, as Prometheus's builder does.
        assert_eq!(
            render(&batch),
            vec![
                r#"g{a_b="3;1;2", e_f="w", g_h="x;", instance="i-1", job="api", key_1st="v", key_x="u"} 1"#
            ]
        );
        // A key that cannot become a label name refuses that point only.
        let (batch, outcome) = run(request(
            vec![],
            vec![gauge(
                "g",
                "",
                vec![
                    number(vec![kv("ようこそ", "x")], T, AsDouble(1.0)),
                    number(vec![kv("", "x")], T, AsDouble(1.0)),
                    number(vec![kv("ok", "x")], T, AsDouble(1.0)),
                ],
            )],
        ));
        assert_eq!(outcome.rejected, vec![("invalid_label", 2)]);
        assert_eq!(render(&batch), vec![r#"g{ok="x"} 1"#]);
    }

    #[test]
    fn job_instance_promotion_and_attribute_precedence() {
        use number_data_point::Value::AsDouble;
        let config = OtlpConfig {
            promote_resource_attributes: vec!["cloud.region".into(), "zone".into()],
            ..OtlpConfig::default()
        };
        let request = request(
            vec![
                kv("service.name", "api"),
                kv("cloud.region", "eu-west-1"),
                kv("zone", "z1"),
            ],
            vec![gauge(
                "g",
                "",
                vec![
                    // The point's own attribute wins over a promoted one; job always comes
                    // from the resource.
                    number(vec![kv("zone", "z9"), kv("job", "mine")], T, AsDouble(1.0)),
                ],
            )],
        );
        let (batch, outcome) = convert(request, &config, &Limits::default());
        assert_eq!(outcome.rejected, vec![]);
        assert_eq!(
            render(&batch),
            vec![
                r#"g{cloud_region="eu-west-1", job="api", zone="z9"} 1"#,
                r#"target_info{cloud_region="eu-west-1", job="api", zone="z1"} 1"#,
            ]
        );

        // Without service.name, an attribute called job is kept, on points and on target_info;
        // an empty service.namespace still makes "ns/".
        let request = super::tests::request(
            vec![kv("job", "batch"), kv("host.name", "h")],
            vec![gauge(
                "g",
                "",
                vec![number(vec![kv("job", "point")], T, AsDouble(1.0))],
            )],
        );
        let (batch, _) = convert(request, &config, &Limits::default());
        assert_eq!(
            render(&batch),
            vec![
                r#"g{job="point"} 1"#,
                r#"target_info{host_name="h", job="batch"} 1"#,
            ]
        );
        let request = super::tests::request(
            vec![kv("service.name", ""), kv("service.namespace", "ns")],
            vec![gauge("g", "", vec![number(vec![], T, AsDouble(1.0))])],
        );
        let (batch, _) = convert(request, &config, &Limits::default());
        assert_eq!(render(&batch), vec![r#"g{job="ns/"} 1"#]);
    }

    #[test]
    fn target_info_spans_the_resource_and_needs_job_or_instance() {
        use number_data_point::Value::AsDouble;
        let minute = 60_000_000_000;
        let points = vec![
            number(vec![], T, AsDouble(1.0)),
            number(vec![], T + 10 * minute, AsDouble(2.0)),
        ];
        let (batch, _) = run(request(
            vec![kv("service.name", "api"), kv("host.name", "h")],
            vec![gauge("g", "", points.clone())],
        ));
        let info = find(&batch, r#"target_info{host_name="h", job="api"}"#);
        let times: Vec<i64> = info.samples.iter().map(|s| s.timestamp_ms - T_MS).collect();
        assert_eq!(times, vec![0, 150_000, 300_000, 450_000, 600_000]);
        assert!(info.samples.iter().all(|s| s.value == 1.0));

        // A point stamped 1970 does not produce millions of samples.
        let (batch, _) = run(request(
            vec![kv("service.name", "api"), kv("host.name", "h")],
            vec![gauge(
                "g",
                "",
                vec![
                    number(vec![], 0, AsDouble(1.0)),
                    number(vec![], T, AsDouble(1.0)),
                ],
            )],
        ));
        let info = find(&batch, r#"target_info{host_name="h", job="api"}"#);
        assert_eq!(info.samples.len(), MAX_TARGET_INFO_SAMPLES);
        assert_eq!(info.samples.last().map(|s| s.timestamp_ms), Some(T_MS));

        // Only identifying attributes, or nothing to identify it by: no target_info.
        for resource in [
            vec![kv("service.name", "api"), kv("service.instance.id", "1")],
            vec![kv("host.name", "h")],
            vec![],
        ] {
            let (batch, _) = run(request(
                resource.clone(),
                vec![gauge("g", "", points.clone())],
            ));
            assert!(
                batch
                    .series
                    .iter()
                    .all(|s| s.labels.metric_name() != Some("target_info")),
                "{resource:?}"
            );
        }

        // Two resources with the same target_info at the same time write it once.
        let mut twice = request(
            vec![kv("service.name", "api"), kv("host.name", "h")],
            vec![gauge("g", "", vec![number(vec![], T, AsDouble(1.0))])],
        );
        twice
            .resource_metrics
            .push(twice.resource_metrics[0].clone());
        let (batch, outcome) = run(twice);
        let info = find(&batch, r#"target_info{host_name="h", job="api"}"#);
        assert_eq!(info.samples.len(), 1);
        // The gauge series gets both (identical) samples, as Prometheus would append them.
        assert_eq!(outcome.accepted, 3);
    }

    #[test]
    fn malformed_histograms_are_refused_with_a_reason() {
        let point = |bounds: Vec<f64>, counts: Vec<u64>| HistogramDataPoint {
            time_unix_nano: T,
            count: 3,
            bucket_counts: counts,
            explicit_bounds: bounds,
            ..Default::default()
        };
        let exponential = |scale: i32| ExponentialHistogramDataPoint {
            time_unix_nano: T,
            count: 4,
            scale,
            positive: Some(Buckets {
                offset: 0,
                bucket_counts: vec![1, 1, 1, 1],
            }),
            ..Default::default()
        };
        let (batch, outcome) = run(request(
            vec![],
            vec![
                metric(
                    "classic",
                    "",
                    Data::Histogram(Histogram {
                        data_points: vec![
                            point(vec![1.0, 2.0], vec![1, 2]),
                            point(vec![1.0], vec![]),
                            point(vec![2.0, 1.0], vec![1, 1, 1]),
                            point(vec![f64::NAN], vec![1, 1]),
                            point(vec![f64::INFINITY], vec![1, 1]),
                            point(vec![1.0], vec![u64::MAX, 1]),
                            point(vec![], vec![]),
                        ],
                        aggregation_temporality: CUMULATIVE,
                    }),
                ),
                metric(
                    "expo",
                    "",
                    Data::ExponentialHistogram(ExponentialHistogram {
                        data_points: vec![
                            exponential(-5),
                            exponential(10),
                            ExponentialHistogramDataPoint {
                                count: 1,
                                ..exponential(0)
                            },
                        ],
                        aggregation_temporality: CUMULATIVE,
                    }),
                ),
            ],
        ));
        // Six bad classic points (4 + 3 + 4 + 3 + 3 + 3 samples) and two bad exponential ones
        // (scale -5, and a count below its buckets).
        assert_eq!(outcome.rejected, vec![("invalid_histogram", 22)]);
        assert!(
            outcome
                .first_rejection
                .unwrap()
                .contains("2 bucket counts for 2 explicit bounds")
        );
        assert_eq!(
            render(&batch),
            vec!["classic_count{} 3", r#"classic_bucket{le="+Inf"} 3"#]
        );
        // Scale 10 is downscaled to 8: four buckets merge into one.
        let h = &find(&batch, "expo{}").histograms[0];
        assert_eq!(h.schema, 8);
        assert_eq!(
            h.positive_spans,
            vec![BucketSpan {
                offset: 1,
                length: 1
            }]
        );
        assert!(
            matches!(&h.counts, HistogramCounts::Integer { positive_deltas, .. } if *positive_deltas == vec![4])
        );
    }

    #[test]
    fn exemplars_that_break_the_rules_are_refused_or_trimmed() {
        use number_data_point::Value::AsDouble;
        let good_trace: Vec<u8> = vec![0xab; 16];
        let exemplars = vec![
            otlp::Exemplar {
                trace_id: vec![1, 2, 3],
                value: Some(otlp::exemplar::Value::AsDouble(1.0)),
                ..Default::default()
            },
            otlp::Exemplar {
                trace_id: good_trace.clone(),
                ..Default::default()
            },
            otlp::Exemplar {
                trace_id: good_trace.clone(),
                span_id: vec![0; 8],
                filtered_attributes: vec![kv("comment", &"x".repeat(100))],
                value: Some(otlp::exemplar::Value::AsInt(7)),
                time_unix_nano: T,
            },
            otlp::Exemplar {
                filtered_attributes: vec![kv("trace_id", "from-attribute"), kv("http.target", "/")],
                value: Some(otlp::exemplar::Value::AsDouble(2.0)),
                ..Default::default()
            },
        ];
        let (batch, outcome) = run(request(
            vec![],
            vec![counter(
                "c",
                "",
                CUMULATIVE,
                vec![NumberDataPoint {
                    exemplars,
                    ..number(vec![], T, AsDouble(1.0))
                }],
            )],
        ));
        assert_eq!(outcome.rejected, vec![("invalid_exemplar", 2)]);
        let series = find(&batch, "c_total{}");
        let rendered: Vec<String> = series
            .exemplars
            .iter()
            .map(|e| format!("{} {} {}", e.labels, e.value, e.timestamp_ms))
            .collect();
        assert_eq!(
            rendered,
            vec![
                // Too long with its attribute: only the trace id stays; a zero span id is none.
                format!(r#"{{trace_id="{}"}} 7 {T_MS}"#, "ab".repeat(16)),
                r#"{http_target="/", trace_id="from-attribute"} 2 0"#.to_owned(),
            ]
        );
        assert_eq!(outcome.accepted, 1);
    }

    #[test]
    fn limits_refuse_whole_points_and_keep_the_rest() {
        use number_data_point::Value::AsDouble;
        let limits = Limits {
            max_labels_per_series: 3,
            ..Limits::default()
        };
        let histogram = metric(
            "h",
            "",
            Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: vec![kv("a", "1"), kv("b", "2")],
                    time_unix_nano: T,
                    count: 1,
                    bucket_counts: vec![1, 0],
                    explicit_bounds: vec![1.0],
                    ..Default::default()
                }],
                aggregation_temporality: CUMULATIVE,
            }),
        );
        let request = request(
            vec![],
            vec![
                gauge(
                    "g",
                    "",
                    vec![
                        number(
                            vec![kv("a", "1"), kv("b", "2"), kv("c", "3")],
                            T,
                            AsDouble(1.0),
                        ),
                        number(vec![kv("a", "1")], T, AsDouble(2.0)),
                    ],
                ),
                // _count fits (3 labels) but the buckets (4 with le) do not: all refused.
                histogram,
            ],
        );
        let (batch, outcome) = convert(request, &OtlpConfig::default(), &limits);
        assert_eq!(outcome.rejected, vec![("too_many_labels", 4)]);
        assert_eq!(render(&batch), vec![r#"g{a="1"} 2"#]);
        assert_eq!(outcome.accepted, 1);

        let limits = Limits {
            max_series_per_request: 2,
            ..Limits::default()
        };
        let request = request_with_gauges(3);
        let (batch, outcome) = convert(request, &OtlpConfig::default(), &limits);
        assert_eq!(batch.series.len(), 2);
        assert_eq!(outcome.rejected, vec![("too_many_series", 1)]);
    }

    fn request_with_gauges(n: usize) -> ExportMetricsServiceRequest {
        let points = (0..n)
            .map(|i| {
                number(
                    vec![kv("i", &i.to_string())],
                    T,
                    number_data_point::Value::AsDouble(1.0),
                )
            })
            .collect();
        request(vec![], vec![gauge("g", "", points)])
    }

    #[test]
    fn names_and_points_that_cannot_be_translated_are_refused() {
        use number_data_point::Value::AsDouble;
        let (batch, outcome) = run(request(
            vec![],
            vec![
                gauge("字符", "", vec![number(vec![], T, AsDouble(1.0))]),
                Metric {
                    name: "nothing".into(),
                    ..Default::default()
                },
                gauge(
                    "g",
                    "",
                    vec![NumberDataPoint {
                        time_unix_nano: T,
                        ..Default::default()
                    }],
                ),
                gauge("empty", "", vec![]),
            ],
        ));
        assert_eq!(
            outcome.rejected,
            vec![
                ("invalid_metric_name", 1),
                ("unsupported_metric", 1),
                ("missing_value", 1)
            ]
        );
        assert!(batch.series.is_empty() && batch.metadata.is_empty());
    }

    #[test]
    fn without_suffixes_names_are_only_escaped() {
        use number_data_point::Value::AsDouble;
        let config = OtlpConfig {
            translation_strategy: TranslationStrategy::UnderscoreEscapingWithoutSuffixes,
            ..OtlpConfig::default()
        };
        let request = request(
            vec![],
            vec![
                counter(
                    "http.server.requests",
                    "{request}",
                    CUMULATIVE,
                    vec![number(vec![], T, AsDouble(3.0))],
                ),
                metric(
                    "rpc.latency",
                    "s",
                    Data::Summary(Summary {
                        data_points: vec![SummaryDataPoint {
                            time_unix_nano: T,
                            count: 2,
                            sum: 1.0,
                            ..Default::default()
                        }],
                    }),
                ),
            ],
        );
        let (batch, _) = convert(request, &config, &Limits::default());
        assert_eq!(
            render(&batch),
            vec![
                "http_server_requests{} 3",
                "rpc_latency_sum{} 1",
                "rpc_latency_count{} 2"
            ]
        );
        assert_eq!(batch.metadata[1].metric_family_name, "rpc_latency");
        assert_eq!(batch.metadata[1].unit, "seconds");
    }

    fn any_value_strategy() -> BoxedStrategy<Option<AnyValue>> {
        use any_value::Value as V;
        let leaf = prop_oneof![
            Just(None),
            ".{0,8}".prop_map(|s| Some(V::StringValue(s))),
            any::<bool>().prop_map(|b| Some(V::BoolValue(b))),
            any::<i64>().prop_map(|i| Some(V::IntValue(i))),
            any::<f64>().prop_map(|f| Some(V::DoubleValue(f))),
            proptest::collection::vec(any::<u8>(), 0..6).prop_map(|b| Some(V::BytesValue(b))),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(|values| Some(
                    V::ArrayValue(ArrayValue {
                        values: values.into_iter().map(|value| AnyValue { value }).collect()
                    })
                )),
                proptest::collection::vec(("[a-z.]{0,3}", inner), 0..3).prop_map(|pairs| Some(
                    V::KvlistValue(KeyValueList {
                        values: pairs
                            .into_iter()
                            .map(|(key, value)| KeyValue {
                                key,
                                value: Some(AnyValue { value }),
                                ..Default::default()
                            })
                            .collect()
                    })
                )),
            ]
        })
        .prop_map(|value| Some(AnyValue { value }))
        .boxed()
    }

    fn attributes_strategy() -> BoxedStrategy<Vec<KeyValue>> {
        proptest::collection::vec(
            (
                prop_oneof![
                    4 => "[a-z][a-z._]{0,5}",
                    1 => ".{0,6}",
                    1 => Just("service.name".to_owned())
                ],
                any_value_strategy(),
            ),
            0..4,
        )
        .prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(key, value)| KeyValue {
                    key,
                    value,
                    ..Default::default()
                })
                .collect()
        })
        .boxed()
    }

    fn exemplars_strategy() -> BoxedStrategy<Vec<otlp::Exemplar>> {
        proptest::collection::vec(
            (
                attributes_strategy(),
                any::<u64>(),
                proptest::option::of(any::<f64>()),
                proptest::collection::vec(any::<u8>(), 0..17),
                proptest::collection::vec(any::<u8>(), 0..9),
            )
                .prop_map(
                    |(filtered_attributes, time_unix_nano, value, trace_id, span_id)| {
                        otlp::Exemplar {
                            filtered_attributes,
                            time_unix_nano,
                            value: value.map(otlp::exemplar::Value::AsDouble),
                            trace_id,
                            span_id,
                        }
                    },
                ),
            0..3,
        )
        .boxed()
    }

    fn data_strategy() -> impl Strategy<Value = Data> {
        let time = prop_oneof![Just(T), any::<u64>(), Just(0)];
        let flags = prop_oneof![4 => Just(0u32), 1 => Just(1), 1 => any::<u32>()];
        let temporality = prop_oneof![4 => Just(CUMULATIVE), 1 => Just(DELTA), 1 => -1..4];
        let number = (
            attributes_strategy(),
            time.clone(),
            flags.clone(),
            proptest::option::weighted(
                0.9,
                prop_oneof![
                    any::<f64>().prop_map(number_data_point::Value::AsDouble),
                    any::<i64>().prop_map(number_data_point::Value::AsInt),
                ],
            ),
            exemplars_strategy(),
        )
            .prop_map(|(attributes, time_unix_nano, flags, value, exemplars)| {
                NumberDataPoint {
                    attributes,
                    time_unix_nano,
                    flags,
                    value,
                    exemplars,
                    ..Default::default()
                }
            });
        let count = prop_oneof![4 => 0u64..20, 1 => any::<u64>()];
        let classic = (
            attributes_strategy(),
            time.clone(),
            flags.clone(),
            count.clone(),
            proptest::option::of(any::<f64>()),
            proptest::collection::vec(count.clone(), 0..5),
            prop_oneof![
                proptest::collection::vec(-10.0..10.0f64, 0..4).prop_map(|mut b| {
                    b.sort_by(f64::total_cmp);
                    b.dedup();
                    b
                }),
                proptest::collection::vec(any::<f64>(), 0..4),
            ],
            exemplars_strategy(),
            any::<bool>(),
        )
            .prop_map(
                |(
                    attributes,
                    time_unix_nano,
                    flags,
                    mut count,
                    sum,
                    mut bucket_counts,
                    explicit_bounds,
                    exemplars,
                    consistent,
                )| {
                    if consistent {
                        bucket_counts.resize(explicit_bounds.len() + 1, 1);
                        count = bucket_counts
                            .iter()
                            .fold(0, |a: u64, c| a.saturating_add(*c));
                    }
                    HistogramDataPoint {
                        attributes,
                        time_unix_nano,
                        flags,
                        count,
                        sum,
                        bucket_counts,
                        explicit_bounds,
                        exemplars,
                        ..Default::default()
                    }
                },
            );
        let buckets = proptest::option::of(
            (
                prop_oneof![-5..5i32, any::<i32>()],
                proptest::collection::vec(count.clone(), 0..8),
            )
                .prop_map(|(offset, bucket_counts)| Buckets {
                    offset,
                    bucket_counts,
                }),
        );
        let exponential = (
            attributes_strategy(),
            time.clone(),
            flags.clone(),
            count.clone(),
            prop_oneof![-6..12i32, any::<i32>()],
            count.clone(),
            buckets.clone(),
            buckets,
            exemplars_strategy(),
            any::<bool>(),
        )
            .prop_map(
                |(
                    attributes,
                    time_unix_nano,
                    flags,
                    mut count,
                    scale,
                    zero_count,
                    positive,
                    negative,
                    exemplars,
                    consistent,
                )| {
                    if consistent {
                        count = [&positive, &negative]
                            .into_iter()
                            .flatten()
                            .flat_map(|b| &b.bucket_counts)
                            .fold(zero_count, |a, c| a.saturating_add(*c));
                    }
                    ExponentialHistogramDataPoint {
                        attributes,
                        time_unix_nano,
                        flags,
                        count,
                        scale,
                        zero_count,
                        positive,
                        negative,
                        exemplars,
                        ..Default::default()
                    }
                },
            );
        let summary = (
            attributes_strategy(),
            time,
            flags,
            count,
            any::<f64>(),
            proptest::collection::vec((any::<f64>(), any::<f64>()), 0..3),
        )
            .prop_map(
                |(attributes, time_unix_nano, flags, count, sum, quantiles)| SummaryDataPoint {
                    attributes,
                    time_unix_nano,
                    flags,
                    count,
                    sum,
                    quantile_values: quantiles
                        .into_iter()
                        .map(|(quantile, value)| ValueAtQuantile { quantile, value })
                        .collect(),
                    ..Default::default()
                },
            );
        prop_oneof![
            proptest::collection::vec(number.clone(), 0..3)
                .prop_map(|data_points| Data::Gauge(Gauge { data_points })),
            (
                proptest::collection::vec(number, 0..3),
                temporality.clone(),
                any::<bool>()
            )
                .prop_map(|(data_points, aggregation_temporality, is_monotonic)| {
                    Data::Sum(Sum {
                        data_points,
                        aggregation_temporality,
                        is_monotonic,
                    })
                }),
            (
                proptest::collection::vec(classic, 0..3),
                temporality.clone()
            )
                .prop_map(|(data_points, aggregation_temporality)| Data::Histogram(
                    Histogram {
                        data_points,
                        aggregation_temporality,
                    }
                )),
            (proptest::collection::vec(exponential, 0..3), temporality).prop_map(
                |(data_points, aggregation_temporality)| {
                    Data::ExponentialHistogram(ExponentialHistogram {
                        data_points,
                        aggregation_temporality,
                    })
                }
            ),
            proptest::collection::vec(summary, 0..3)
                .prop_map(|data_points| Data::Summary(Summary { data_points })),
        ]
    }

    fn request_strategy() -> impl Strategy<Value = ExportMetricsServiceRequest> {
        let metric = (
            prop_oneof!["[a-z._]{0,10}", ".{0,10}", "[0-9 {}/%:_-]{0,6}"],
            prop_oneof![
                Just(String::new()),
                Just("1".to_owned()),
                Just("By/s".to_owned()),
                "[a-zA-Z{}/% _-]{0,6}",
                ".{0,6}"
            ],
            proptest::option::weighted(0.9, data_strategy()),
        )
            .prop_map(|(name, unit, data)| Metric {
                name,
                unit,
                data,
                ..Default::default()
            });
        let resource = (
            attributes_strategy(),
            proptest::collection::vec(metric, 0..4),
        )
            .prop_map(|(mut attributes, metrics)| {
                attributes.push(kv("service.instance.id", "i"));
                ResourceMetrics {
                    resource: Some(OtlpResource {
                        attributes,
                        ..Default::default()
                    }),
                    scope_metrics: vec![ScopeMetrics {
                        metrics,
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            });
        proptest::collection::vec(resource, 0..3)
            .prop_map(|resource_metrics| ExportMetricsServiceRequest { resource_metrics })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_requests_never_panic_and_are_accounted_for(request in request_strategy()) {
            let config = OtlpConfig {
                promote_resource_attributes: vec!["service.name".into(), "".into()],
                ..OtlpConfig::default()
            };
            let limits = Limits { max_labels_per_series: 6, max_series_per_request: 40, ..Limits::default() };
            let (batch, outcome) = convert(request, &config, &limits);
            prop_assert_eq!(outcome.accepted, batch.sample_count() as u64);
            prop_assert!(batch.series.len() <= 40);
            let distinct: HashSet<&Labels> = batch.series.iter().map(|s| &s.labels).collect();
            prop_assert_eq!(distinct.len(), batch.series.len());
            for series in &batch.series {
                prop_assert!(series.labels.metric_name().is_some());
                for histogram in &series.histograms {
                    prop_assert!(histogram.validate().is_ok());
                }
            }
            let families: HashSet<&str> =
                batch.metadata.iter().map(|m| m.metric_family_name.as_str()).collect();
            prop_assert_eq!(families.len(), batch.metadata.len());
        }

        #[test]
        fn names_never_panic_and_are_valid_when_accepted(name in ".{0,16}", unit in ".{0,8}") {
            for strategy in [
                TranslationStrategy::UnderscoreEscapingWithSuffixes,
                TranslationStrategy::UnderscoreEscapingWithoutSuffixes,
            ] {
                for kind in [MetricKind::Gauge, MetricKind::MonotonicCounter, MetricKind::Summary] {
                    if let Ok(built) = metric_name(&name, &unit, kind, strategy) {
                        prop_assert!(model::is_valid_metric_name(&built), "{built:?}");
                    }
                }
            }
            if let Ok(label) = label_name(&name) {
                prop_assert!(model::is_valid_label_name(&label), "{label:?}");
            }
            let _ = unit_name(&unit);
        }
    }
}
