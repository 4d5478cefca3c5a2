//! Metric data: float samples, classic and native histograms, exemplars and metadata,
//! shaped after Prometheus's remote-write model so nothing is lost on the way in.

use serde::{Deserialize, Serialize};

use crate::{Label, Labels, ModelError};

/// Bit pattern of Prometheus's staleness marker: a NaN that means "this series ended here".
///
/// It must be told apart from an ordinary NaN sample, which is a real value.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The staleness marker as a float.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Whether `value` is the staleness marker (and not just any NaN).
pub fn is_stale_nan(value: f64) -> bool {
    value.to_bits() == STALE_NAN_BITS
}

/// One float sample. Timestamps are Unix milliseconds, as in Prometheus.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub timestamp_ms: i64,
    pub value: f64,
}

/// An exemplar: a sampled trace (or other labelled event) attached to a series value, which
/// lets a dashboard jump from a latency panel to the trace that caused it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exemplar {
    /// Usually `trace_id` and `span_id`. Not a series identity, so it may be empty.
    pub labels: Labels,
    pub value: f64,
    pub timestamp_ms: i64,
}

/// A run of consecutive buckets in a native histogram's sparse layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSpan {
    /// Gap to the previous span's end (or, for the first span, the index of its first bucket).
    pub offset: i32,
    pub length: u32,
}

/// Whether a native histogram sample is known to follow a counter reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResetHint {
    #[default]
    Unknown,
    Yes,
    No,
    /// A gauge histogram: resets are meaningless.
    Gauge,
}

impl ResetHint {
    pub const ALL: [ResetHint; 4] = [Self::Unknown, Self::Yes, Self::No, Self::Gauge];

    /// The hint's name as storage keeps it (and Prometheus's enum names it).
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Yes => "yes",
            Self::No => "no",
            Self::Gauge => "gauge",
        }
    }

    /// The hint [`ResetHint::name`] names; `Unknown` for any other name.
    pub fn from_name(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|hint| hint.name() == name)
            .unwrap_or_default()
    }
}

/// Bucket counts of a native histogram, in the two encodings remote-write carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HistogramCounts {
    /// Integer counts; buckets are delta-encoded against the previous bucket.
    Integer {
        count: u64,
        zero_count: u64,
        positive_deltas: Vec<i64>,
        negative_deltas: Vec<i64>,
    },
    /// Float counts (after aggregation or from OTLP); buckets are absolute.
    Float {
        count: f64,
        zero_count: f64,
        positive_counts: Vec<f64>,
        negative_counts: Vec<f64>,
    },
}

/// A native (sparse, exponential) histogram sample, as Prometheus defines it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NativeHistogram {
    pub timestamp_ms: i64,
    /// Resolution: bucket boundaries are powers of `2^(2^-schema)`; -4..=8.
    pub schema: i32,
    pub zero_threshold: f64,
    pub sum: f64,
    pub reset_hint: ResetHint,
    pub counts: HistogramCounts,
    pub positive_spans: Vec<BucketSpan>,
    pub negative_spans: Vec<BucketSpan>,
}

/// The schemas Prometheus accepts for exponential native histograms.
pub const NATIVE_HISTOGRAM_SCHEMAS: std::ops::RangeInclusive<i32> = -4..=8;

impl NativeHistogram {
    /// Checks the structural rules a reader relies on: a known schema, spans that describe
    /// exactly the buckets given, no negative counts, and a total count that covers the
    /// buckets.
    pub fn validate(&self) -> Result<(), ModelError> {
        let invalid = |reason: String| Err(ModelError::InvalidHistogram { reason });
        if !NATIVE_HISTOGRAM_SCHEMAS.contains(&self.schema) {
            return invalid(format!(
                "schema {} is outside {NATIVE_HISTOGRAM_SCHEMAS:?}",
                self.schema
            ));
        }
        if self.zero_threshold.is_nan() || self.zero_threshold < 0.0 {
            return invalid(format!(
                "zero threshold {} must be a non-negative number",
                self.zero_threshold
            ));
        }
        for (side, spans) in [
            ("positive", &self.positive_spans),
            ("negative", &self.negative_spans),
        ] {
            if let Some(span) = spans.iter().skip(1).find(|span| span.offset < 0) {
                return invalid(format!(
                    "{side} span offset {} is negative after the first span",
                    span.offset
                ));
            }
        }
        let span_buckets = |spans: &[BucketSpan]| spans.iter().map(|s| s.length as usize).sum();
        let (positive_len, negative_len) = match &self.counts {
            HistogramCounts::Integer {
                positive_deltas,
                negative_deltas,
                ..
            } => (positive_deltas.len(), negative_deltas.len()),
            HistogramCounts::Float {
                positive_counts,
                negative_counts,
                ..
            } => (positive_counts.len(), negative_counts.len()),
        };
        for (side, spans, buckets) in [
            ("positive", &self.positive_spans, positive_len),
            ("negative", &self.negative_spans, negative_len),
        ] {
            let described: usize = span_buckets(spans);
            if described != buckets {
                return invalid(format!(
                    "{side} spans describe {described} buckets but {buckets} are given"
                ));
            }
        }
        match &self.counts {
            HistogramCounts::Integer {
                count,
                zero_count,
                positive_deltas,
                negative_deltas,
            } => {
                let mut total = u128::from(*zero_count);
                for (side, deltas) in [("positive", positive_deltas), ("negative", negative_deltas)]
                {
                    let mut absolute: i128 = 0;
                    for delta in deltas {
                        absolute += i128::from(*delta);
                        if absolute < 0 {
                            return invalid(format!("{side} bucket count {absolute} is negative"));
                        }
                        total += absolute as u128;
                    }
                }
                if total > u128::from(*count) {
                    return invalid(format!(
                        "count {count} is less than the {total} observations in the buckets"
                    ));
                }
            }
            HistogramCounts::Float {
                count,
                zero_count,
                positive_counts,
                negative_counts,
            } => {
                let buckets = positive_counts.iter().chain(negative_counts);
                if let Some(bad) = std::iter::once(zero_count)
                    .chain(buckets.clone())
                    .find(|c| c.is_nan() || **c < 0.0)
                {
                    return invalid(format!("bucket count {bad} is negative or NaN"));
                }
                let total: f64 = zero_count + buckets.sum::<f64>();
                // Float histograms come out of aggregation, where rounding may leave the total
                // a hair above the count; only a real excess is an error.
                if !count.is_nan() && total > count * (1.0 + 1e-9) + 1e-9 {
                    return invalid(format!(
                        "count {count} is less than the {total} observations in the buckets"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A classic (Prometheus text format) histogram: cumulative buckets with upper bounds.
///
/// Stored as ordinary series; this type exists so collectors and protocol translators expand
/// it into exactly the series Prometheus would scrape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassicHistogram {
    /// Cumulative counts by ascending upper bound; the `+Inf` bucket is implied by `count`.
    pub buckets: Vec<ClassicBucket>,
    pub count: f64,
    pub sum: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassicBucket {
    pub upper_bound: f64,
    pub cumulative_count: f64,
}

impl ClassicHistogram {
    /// Expands into the `<name>_bucket{le=…}`, `<name>_sum` and `<name>_count` series that
    /// Prometheus scrapes for this histogram, each with one sample at `timestamp_ms`.
    pub fn to_series(
        &self,
        name: &str,
        labels: &Labels,
        timestamp_ms: i64,
    ) -> Result<Vec<Series>, ModelError> {
        let with = |suffix: &str, extra: Option<(&str, String)>, value: f64| {
            let mut set: Vec<Label> = labels
                .iter()
                .filter(|l| l.name != crate::METRIC_NAME_LABEL)
                .map(|l| l.to_owned())
                .collect();
            set.push(Label::new(
                crate::METRIC_NAME_LABEL,
                format!("{name}{suffix}"),
            ));
            if let Some((extra_name, extra_value)) = extra {
                set.retain(|l| l.name != extra_name);
                set.push(Label::new(extra_name, extra_value));
            }
            Ok::<_, ModelError>(Series::with_samples(
                Labels::from_labels(set)?,
                vec![Sample {
                    timestamp_ms,
                    value,
                }],
            ))
        };
        let mut series = Vec::with_capacity(self.buckets.len() + 3);
        for bucket in self
            .buckets
            .iter()
            .filter(|b| b.upper_bound != f64::INFINITY)
        {
            series.push(with(
                "_bucket",
                Some(("le", format_prometheus_float(bucket.upper_bound))),
                bucket.cumulative_count,
            )?);
        }
        series.push(with(
            "_bucket",
            Some(("le", "+Inf".to_owned())),
            self.count,
        )?);
        series.push(with("_sum", None, self.sum)?);
        series.push(with("_count", None, self.count)?);
        Ok(series)
    }
}

/// A float as Go's `strconv.FormatFloat(v, 'f', -1, 64)` writes it: the shortest digits
/// that read back, never an exponent (`1000000`, not `1e+06`). Prometheus uses it for
/// sample values in its JSON API, `count_values` labels, and the `le`/`quantile` labels its
/// OTLP receiver writes.
pub fn format_go_f(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        // Rust's `Display` for f64 is the shortest round-trip decimal, never an exponent.
        format!("{value}")
    }
}

/// Formats a sample value the way Prometheus's HTTP API writes one (its `MarshalValue`):
/// Go's shortest `'f'` form, or its `'e'` form below 1e-6 and from 1e21 in magnitude, so
/// `0.25`, `1e-07`, `1.7976931348623157e+308`.
pub fn format_api_value(value: f64) -> String {
    let magnitude = value.abs();
    if value.is_finite() && magnitude != 0.0 && !(1e-6..1e21).contains(&magnitude) {
        let scientific = format!("{value:e}");
        if let Some((mantissa, exponent)) = scientific.split_once('e') {
            let exponent: i32 = exponent.parse().unwrap_or(0);
            let sign = if exponent < 0 { '-' } else { '+' };
            return format!("{mantissa}e{sign}{:02}", exponent.abs());
        }
    }
    format_go_f(value)
}

/// Formats a float the way Prometheus writes `le` and `quantile` label values (Go's
/// `strconv.FormatFloat(v, 'g', -1, 64)`), so series built by Meerkat carry exactly the
/// label values Prometheus would give them: `0.005`, `100000`, `1e+06`, `+Inf`.
pub fn format_prometheus_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_owned();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, like Go's precision -1.
    let scientific = format!("{value:e}");
    let Some((mantissa, exponent)) = scientific.split_once('e') else {
        return scientific;
    };
    let exponent: i32 = exponent.parse().unwrap_or(0);
    // Go switches to exponent form when the exponent is < -4 or >= 6 (its "shortest" rule).
    if !(-4..6).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    } else {
        format!("{value}")
    }
}

/// One series with the samples, histograms and exemplars that arrived for it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<Sample>,
    pub histograms: Vec<NativeHistogram>,
    pub exemplars: Vec<Exemplar>,
}

impl Series {
    pub fn with_samples(labels: Labels, samples: Vec<Sample>) -> Self {
        Self {
            labels,
            samples,
            ..Self::default()
        }
    }
}

/// The metric types of Prometheus metadata (and OpenMetrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricType {
    #[default]
    Unknown,
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
}

impl MetricType {
    pub const ALL: [MetricType; 8] = [
        Self::Unknown,
        Self::Counter,
        Self::Gauge,
        Self::Histogram,
        Self::GaugeHistogram,
        Self::Summary,
        Self::Info,
        Self::StateSet,
    ];

    /// The name Prometheus's metadata API gives the type.
    pub fn prometheus_name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::GaugeHistogram => "gaugehistogram",
            Self::Summary => "summary",
            Self::Info => "info",
            Self::StateSet => "stateset",
        }
    }

    /// The type [`MetricType::prometheus_name`] names; `unknown` for any other name.
    pub fn from_prometheus_name(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|t| t.prometheus_name() == name)
            .unwrap_or_default()
    }
}

/// Type, help and unit of a metric family, as carried by remote-write and scrapes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricMetadata {
    pub metric_family_name: String,
    pub metric_type: MetricType,
    pub help: String,
    pub unit: String,
}

/// What one write request brings for metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricBatch {
    pub series: Vec<Series>,
    pub metadata: Vec<MetricMetadata>,
}

impl MetricBatch {
    /// Exemplars of all series.
    pub fn exemplar_count(&self) -> usize {
        self.series.iter().map(|s| s.exemplars.len()).sum()
    }

    /// Float samples plus histogram samples: what rate limits and metrics count.
    pub fn sample_count(&self) -> usize {
        self.series
            .iter()
            .map(|s| s.samples.len() + s.histograms.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_values_are_written_as_prometheus_writes_them() {
        let cases = [
            (0.25, "0.25"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1e-6, "0.000001"),
            (1e-7, "1e-07"),
            (-2.5e-9, "-2.5e-09"),
            (123456789.0, "123456789"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Inf"),
        ];
        for (value, text) in cases {
            assert_eq!(format_api_value(value), text, "{value}");
        }
    }

    fn integer_histogram(count: u64, positive_deltas: Vec<i64>, length: u32) -> NativeHistogram {
        NativeHistogram {
            timestamp_ms: 1,
            schema: 3,
            zero_threshold: 1e-128,
            sum: 10.0,
            reset_hint: ResetHint::No,
            counts: HistogramCounts::Integer {
                count,
                zero_count: 1,
                positive_deltas,
                negative_deltas: vec![],
            },
            positive_spans: vec![BucketSpan { offset: 0, length }],
            negative_spans: vec![],
        }
    }

    #[test]
    fn staleness_marker_is_a_specific_nan() {
        assert!(is_stale_nan(stale_nan()));
        assert!(stale_nan().is_nan());
        assert!(!is_stale_nan(f64::NAN));
        assert!(!is_stale_nan(1.0));
    }

    #[test]
    fn histogram_validation_accepts_consistent_and_names_the_problem() {
        // Buckets 2, 3, 1 (deltas 2, +1, -2) plus zero bucket 1 = 7 observations.
        assert!(integer_histogram(7, vec![2, 1, -2], 3).validate().is_ok());

        let err = integer_histogram(7, vec![2, 1], 3).validate().unwrap_err();
        assert!(
            err.to_string().contains("describe 3 buckets but 2"),
            "{err}"
        );

        let err = integer_histogram(7, vec![2, -3], 2).validate().unwrap_err();
        assert!(err.to_string().contains("negative"), "{err}");

        let err = integer_histogram(5, vec![2, 1, -2], 3)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("count 5"), "{err}");

        let mut bad_schema = integer_histogram(7, vec![2, 1, -2], 3);
        bad_schema.schema = 9;
        assert!(bad_schema.validate().is_err());

        let mut bad_span = integer_histogram(7, vec![2, 1, -2], 3);
        bad_span.positive_spans = vec![
            BucketSpan {
                offset: -5,
                length: 1,
            },
            BucketSpan {
                offset: -1,
                length: 2,
            },
        ];
        assert!(bad_span.validate().is_err());

        let float = NativeHistogram {
            counts: HistogramCounts::Float {
                count: 3.0,
                zero_count: 0.5,
                positive_counts: vec![1.5, f64::NAN],
                negative_counts: vec![],
            },
            positive_spans: vec![BucketSpan {
                offset: 0,
                length: 2,
            }],
            ..integer_histogram(0, vec![], 0)
        };
        assert!(float.validate().is_err());
    }

    #[test]
    fn floats_are_formatted_like_go() {
        let cases = [
            (0.005, "0.005"),
            (0.1, "0.1"),
            (1.0, "1"),
            (2.5, "2.5"),
            (100000.0, "100000"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e100, "1e+100"),
            (-2.5e-7, "-2.5e-07"),
            (0.0, "0"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ];
        for (value, expected) in cases {
            assert_eq!(format_prometheus_float(value), expected, "{value:e}");
        }
    }

    #[test]
    fn classic_histogram_expands_to_prometheus_series() {
        let histogram = ClassicHistogram {
            buckets: vec![
                ClassicBucket {
                    upper_bound: 0.5,
                    cumulative_count: 2.0,
                },
                ClassicBucket {
                    upper_bound: 1e6,
                    cumulative_count: 5.0,
                },
            ],
            count: 6.0,
            sum: 12.5,
        };
        let base = Labels::new([("job", "api")]).unwrap();
        let series = histogram
            .to_series("http_request_duration_seconds", &base, 1000)
            .unwrap();
        let rendered: Vec<String> = series
            .iter()
            .map(|s| format!("{} {}", s.labels, s.samples[0].value))
            .collect();
        assert_eq!(
            rendered,
            [
                r#"http_request_duration_seconds_bucket{job="api", le="0.5"} 2"#,
                r#"http_request_duration_seconds_bucket{job="api", le="1e+06"} 5"#,
                r#"http_request_duration_seconds_bucket{job="api", le="+Inf"} 6"#,
                r#"http_request_duration_seconds_sum{job="api"} 12.5"#,
                r#"http_request_duration_seconds_count{job="api"} 6"#,
            ]
        );
    }
}
