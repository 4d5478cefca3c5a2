//! Prometheus remote-write 1.0: `POST /api/v1/write`, a snappy-compressed protobuf
//! `WriteRequest` carrying samples, exemplars, native histograms and metadata.
//!
//! As Prometheus's own receiver does, a bad series does not sink the request: the good
//! series are stored and the answer is 400 naming the first bad one (Prometheus's sender
//! does not retry a 4xx, so nothing is sent twice).

use model::{
    BucketSpan, Exemplar, HistogramCounts, Labels, MetricBatch, MetricMetadata, MetricType,
    NativeHistogram, ResetHint, Sample, Series,
};

use crate::config::Limits;
use crate::proto::prometheus as pb;
use crate::validate::{Outcome, Rejection, labels_from_refs};
use crate::{GatewayError, http};

/// OpenMetrics' limit on the combined length of an exemplar's label names and values.
pub const MAX_EXEMPLAR_LABEL_RUNES: usize = 128;

/// Decompresses and decodes a request body with the full decoder.
pub fn decode(body: &[u8], limits: &Limits) -> Result<pb::WriteRequest, GatewayError> {
    decode_raw(http::snappy_decompress(
        body,
        limits.max_decompressed_body_bytes,
    )?)
}

/// Decodes a decompressed body. Label names and values stay slices of the buffer (no
/// allocation per string).
pub fn decode_raw(raw: Vec<u8>) -> Result<pb::WriteRequest, GatewayError> {
    prost::Message::decode(bytes::Bytes::from(raw)).map_err(|e| {
        GatewayError::BadRequest(format!(
            "body is not a valid remote-write WriteRequest protobuf: {e}"
        ))
    })
}

/// The label pairs of a series as `&str`, or the reason they are not UTF-8.
fn label_refs<'a>(
    labels: &'a [pb::Label],
    out: &mut Vec<(&'a str, &'a str)>,
) -> Result<(), Rejection> {
    out.clear();
    for label in labels {
        match (
            std::str::from_utf8(&label.name),
            std::str::from_utf8(&label.value),
        ) {
            (Ok(name), Ok(value)) => out.push((name, value)),
            _ => {
                return Err(Rejection::new(
                    "invalid_utf8",
                    format!(
                        "series with label {:?}: label names and values must be UTF-8",
                        String::from_utf8_lossy(&label.name)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Why a request cannot take the fast path: it needs the full decoder (exemplars, native
/// histograms, unsorted or empty labels) or has problems the full decoder will name.
#[derive(Debug)]
pub struct NeedsFullDecode;

impl From<model::remote_write::WireError> for NeedsFullDecode {
    fn from(_: model::remote_write::WireError) -> Self {
        Self
    }
}

/// The fast path: checks a decompressed body in place, without building anything. When
/// every series is valid as it stands (labels sorted, valid, within the tenant's limits;
/// float samples only) the body can go on the bus as it arrived. Returns the number of
/// samples and a hash of the first series' labels.
pub fn check_in_place(raw: &[u8], limits: &Limits) -> Result<(u64, u64), NeedsFullDecode> {
    let reader = model::remote_write::WriteRequestReader::new(raw);
    let mut series_count: u64 = 0;
    let mut samples: u64 = 0;
    let mut affinity: Option<u64> = None;
    reader.for_each_series(|view| -> Result<(), NeedsFullDecode> {
        series_count += 1;
        if series_count > limits.max_series_per_request || view.exemplars_and_histograms()? > 0 {
            return Err(NeedsFullDecode);
        }
        let mut labels: u64 = 0;
        let mut previous: Option<&[u8]> = None;
        let mut has_name = false;
        let mut valid = true;
        let mut hasher = affinity.is_none().then(xxhash_rust::xxh3::Xxh3::new);
        view.for_each_label(|(name, value)| {
            labels += 1;
            valid &= name.len() as u64 <= limits.max_label_name_bytes
                && value.len() as u64 <= limits.max_label_value_bytes
                && !value.is_empty()
                && previous.is_none_or(|p| p < name)
                && std::str::from_utf8(value).is_ok()
                && std::str::from_utf8(name).is_ok_and(model::is_valid_label_name);
            if name == model::METRIC_NAME_LABEL.as_bytes() {
                has_name = true;
                valid &= std::str::from_utf8(value).is_ok_and(model::is_valid_metric_name);
            }
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(name);
                hasher.update(&[0xff]);
                hasher.update(value);
                hasher.update(&[0xff]);
            }
            previous = Some(name);
        })?;
        if !valid || !has_name || labels > limits.max_labels_per_series {
            return Err(NeedsFullDecode);
        }
        if let Some(hasher) = hasher {
            affinity = Some(hasher.digest());
        }
        let mut count = 0;
        view.for_each_sample(|_| count += 1)?;
        samples += count;
        Ok(())
    })?;
    // Metadata must decode too (UTF-8 text), or the full decoder names the problem.
    reader.metadata()?;
    Ok((samples, affinity.unwrap_or(0)))
}

/// Converts a decoded request into a batch of valid series, refusing bad series one by one.
pub fn convert(
    request: pb::WriteRequest,
    limits: &Limits,
) -> Result<(MetricBatch, Outcome), GatewayError> {
    if request.timeseries.len() as u64 > limits.max_series_per_request {
        return Err(GatewayError::BadRequest(format!(
            "request has {} series, more than the limit of {}; send smaller batches",
            request.timeseries.len(),
            limits.max_series_per_request
        )));
    }
    let mut outcome = Outcome::default();
    let mut batch = MetricBatch {
        series: Vec::with_capacity(request.timeseries.len()),
        metadata: request.metadata.into_iter().map(metadata).collect(),
    };
    // One buffer of borrowed pairs, reused for every series.
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(16);
    for series in &request.timeseries {
        let items = (series.samples.len() + series.histograms.len()).max(1) as u64;
        let labels = match label_refs(&series.labels, &mut pairs)
            .and_then(|()| labels_from_refs(&mut pairs, limits))
        {
            Ok(labels) => labels,
            Err(rejection) => {
                outcome.reject(rejection, items);
                continue;
            }
        };
        let mut histograms = Vec::with_capacity(series.histograms.len());
        for histogram in &series.histograms {
            match native_histogram(histogram.clone()) {
                Ok(h) => histograms.push(h),
                Err(reason) => outcome.reject(
                    Rejection::new("invalid_histogram", format!("series {labels}: {reason}")),
                    1,
                ),
            }
        }
        let mut exemplars = Vec::with_capacity(series.exemplars.len());
        for exemplar in &series.exemplars {
            match convert_exemplar(exemplar) {
                Ok(e) => exemplars.push(e),
                Err(reason) => outcome.reject(
                    Rejection::new("invalid_exemplar", format!("series {labels}: {reason}")),
                    1,
                ),
            }
        }
        let samples: Vec<Sample> = series
            .samples
            .iter()
            .map(|s| Sample {
                timestamp_ms: s.timestamp,
                value: s.value,
            })
            .collect();
        outcome.accepted += (samples.len() + histograms.len()) as u64;
        batch.series.push(Series {
            labels,
            samples,
            histograms,
            exemplars,
        });
    }
    Ok((batch, outcome))
}

fn metadata(m: pb::MetricMetadata) -> MetricMetadata {
    use pb::metric_metadata::MetricType as T;
    let metric_type = match T::try_from(m.r#type).unwrap_or(T::Unknown) {
        T::Unknown => MetricType::Unknown,
        T::Counter => MetricType::Counter,
        T::Gauge => MetricType::Gauge,
        T::Histogram => MetricType::Histogram,
        T::Gaugehistogram => MetricType::GaugeHistogram,
        T::Summary => MetricType::Summary,
        T::Info => MetricType::Info,
        T::Stateset => MetricType::StateSet,
    };
    MetricMetadata {
        metric_family_name: m.metric_family_name,
        metric_type,
        help: m.help,
        unit: m.unit,
    }
}

fn convert_exemplar(exemplar: &pb::Exemplar) -> Result<Exemplar, String> {
    let mut pairs = Vec::with_capacity(exemplar.labels.len());
    label_refs(&exemplar.labels, &mut pairs).map_err(|r| format!("exemplar {}", r.message))?;
    let runes: usize = pairs
        .iter()
        .map(|(n, v)| n.chars().count() + v.chars().count())
        .sum();
    if runes > MAX_EXEMPLAR_LABEL_RUNES {
        return Err(format!(
            "exemplar labels are {runes} characters long, more than OpenMetrics' {MAX_EXEMPLAR_LABEL_RUNES}"
        ));
    }
    let labels = Labels::from_pairs(&mut pairs).map_err(|e| format!("exemplar labels: {e}"))?;
    Ok(Exemplar {
        labels,
        value: exemplar.value,
        timestamp_ms: exemplar.timestamp,
    })
}

fn native_histogram(h: pb::Histogram) -> Result<NativeHistogram, String> {
    use pb::histogram::{Count, ResetHint as Hint, ZeroCount};
    let spans = |spans: Vec<pb::BucketSpan>| {
        spans
            .into_iter()
            .map(|s| BucketSpan {
                offset: s.offset,
                length: s.length,
            })
            .collect::<Vec<_>>()
    };
    let counts = match h.count {
        Some(Count::CountInt(count)) => HistogramCounts::Integer {
            count,
            zero_count: match h.zero_count {
                Some(ZeroCount::ZeroCountInt(z)) => z,
                Some(ZeroCount::ZeroCountFloat(_)) => {
                    return Err("integer histogram with a float zero count".to_owned());
                }
                None => 0,
            },
            positive_deltas: h.positive_deltas,
            negative_deltas: h.negative_deltas,
        },
        Some(Count::CountFloat(count)) => HistogramCounts::Float {
            count,
            zero_count: match h.zero_count {
                Some(ZeroCount::ZeroCountFloat(z)) => z,
                Some(ZeroCount::ZeroCountInt(_)) => {
                    return Err("float histogram with an integer zero count".to_owned());
                }
                None => 0.0,
            },
            positive_counts: h.positive_counts,
            negative_counts: h.negative_counts,
        },
        None => return Err("native histogram without a count".to_owned()),
    };
    let histogram = NativeHistogram {
        timestamp_ms: h.timestamp,
        schema: h.schema,
        zero_threshold: h.zero_threshold,
        sum: h.sum,
        reset_hint: match Hint::try_from(h.reset_hint).unwrap_or(Hint::Unknown) {
            Hint::Unknown => ResetHint::Unknown,
            Hint::Yes => ResetHint::Yes,
            Hint::No => ResetHint::No,
            Hint::Gauge => ResetHint::Gauge,
        },
        counts,
        positive_spans: spans(h.positive_spans),
        negative_spans: spans(h.negative_spans),
    };
    histogram.validate().map_err(|e| e.to_string())?;
    Ok(histogram)
}

// ---------------------------------------------------------------------------------------
// HTTP

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use model::Payload;

use crate::metrics::{Protocol, Signal};
use crate::{Gateway, validate};

/// `POST /api/v1/write`.
pub(crate) async fn handler(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let encoding = http::header_str(&headers, "content-encoding").map(str::to_owned);
    let result = gateway
        .handle_http(
            Protocol::RemoteWrite,
            Signal::Samples,
            &headers,
            body,
            move |body, limits| {
                // Remote-write bodies are snappy whatever the header says (the spec requires it).
                if encoding
                    .as_deref()
                    .is_some_and(|e| !e.eq_ignore_ascii_case("snappy"))
                {
                    return Err(GatewayError::UnsupportedMediaType(format!(
                        "Content-Encoding {}: remote-write bodies must be snappy-compressed",
                        encoding.unwrap_or_default()
                    )));
                }
                let raw = http::snappy_decompress(&body, limits.max_decompressed_body_bytes)?;
                // The common case: every series valid as sent. The body goes on the bus as it
                // arrived, with nothing decoded into objects or re-encoded.
                if !raw.is_empty()
                    && let Ok((samples, affinity)) = check_in_place(&raw, limits)
                {
                    let outcome = validate::Outcome {
                        accepted: samples,
                        ..validate::Outcome::default()
                    };
                    let payload = Payload::RemoteWrite(model::RemoteWriteBody {
                        snappy: body.to_vec(),
                        samples,
                        affinity,
                    });
                    return Ok((payload, outcome));
                }
                let request = decode_raw(raw)?;
                let (batch, outcome) = convert(request, limits)?;
                Ok((Payload::Metrics(batch), outcome))
            },
        )
        .await;
    match result {
        Ok(outcome) => match outcome.first_rejection {
            None => StatusCode::NO_CONTENT.into_response(),
            Some(first) => (
                StatusCode::BAD_REQUEST,
                format!(
                    "{} samples refused, {} accepted; first problem: {first}\n",
                    outcome.rejected.iter().map(|(_, n)| n).sum::<u64>(),
                    outcome.accepted
                ),
            )
                .into_response(),
        },
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn label(name: &str, value: &str) -> pb::Label {
        pb::Label {
            name: bytes::Bytes::copy_from_slice(name.as_bytes()),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn series(labels: Vec<pb::Label>, samples: usize) -> pb::TimeSeries {
        pb::TimeSeries {
            labels,
            samples: (0..samples)
                .map(|i| pb::Sample {
                    value: i as f64,
                    timestamp: 1_700_000_000_000 + i as i64 * 15_000,
                })
                .collect(),
            ..Default::default()
        }
    }

    pub(crate) fn encode(request: &pb::WriteRequest) -> Vec<u8> {
        let raw = prost::Message::encode_to_vec(request);
        snap::raw::Encoder::new().compress_vec(&raw).unwrap()
    }

    #[test]
    fn good_series_are_kept_beside_bad_ones_and_the_first_bad_one_is_named() {
        let request = pb::WriteRequest {
            timeseries: vec![
                series(vec![label("__name__", "up"), label("job", "a")], 2),
                series(
                    vec![
                        label("__name__", "up"),
                        label("job", "b"),
                        label("job", "c"),
                    ],
                    3,
                ),
                series(vec![label("__name__", "bad-name")], 1),
                series(
                    vec![
                        label("job", "z"),
                        label("__name__", "up"),
                        label("instance", ""),
                    ],
                    1,
                ),
            ],
            metadata: vec![pb::MetricMetadata {
                r#type: pb::metric_metadata::MetricType::Gauge as i32,
                metric_family_name: "up".into(),
                help: "Target is up.".into(),
                unit: String::new(),
            }],
        };
        let decoded = decode(&encode(&request), &Limits::default()).unwrap();
        let (batch, outcome) = convert(decoded, &Limits::default()).unwrap();
        assert_eq!(batch.series.len(), 2);
        assert_eq!(
            batch.series[1].labels.to_string(),
            r#"up{job="z"}"#,
            "sorted, empty label dropped"
        );
        assert_eq!(outcome.accepted, 3);
        assert_eq!(
            outcome.rejected,
            vec![("duplicate_label", 3), ("invalid_metric_name", 1)]
        );
        let first = outcome.first_rejection.unwrap();
        assert!(
            first.contains("job") && first.contains("duplicate"),
            "{first}"
        );
        assert_eq!(batch.metadata[0].metric_type, MetricType::Gauge);
    }

    #[test]
    fn native_histograms_and_exemplars_survive_and_bad_ones_are_refused() {
        let good = pb::Histogram {
            count: Some(pb::histogram::Count::CountInt(5)),
            zero_count: Some(pb::histogram::ZeroCount::ZeroCountInt(1)),
            sum: 12.5,
            schema: 1,
            zero_threshold: 0.001,
            positive_spans: vec![pb::BucketSpan {
                offset: 0,
                length: 2,
            }],
            positive_deltas: vec![2, 0],
            reset_hint: pb::histogram::ResetHint::No as i32,
            timestamp: 1000,
            ..Default::default()
        };
        let bad = pb::Histogram {
            positive_deltas: vec![2],
            ..good.clone()
        };
        let mut ts = series(vec![label("__name__", "latency_seconds")], 0);
        ts.histograms = vec![good, bad];
        ts.exemplars = vec![
            pb::Exemplar {
                labels: vec![label("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736")],
                value: 0.3,
                timestamp: 1000,
            },
            pb::Exemplar {
                labels: vec![label("trace_id", &"x".repeat(200))],
                value: 0.3,
                timestamp: 1000,
            },
        ];
        let (batch, outcome) = convert(
            pb::WriteRequest {
                timeseries: vec![ts],
                metadata: vec![],
            },
            &Limits::default(),
        )
        .unwrap();
        let series = &batch.series[0];
        assert_eq!(series.histograms.len(), 1);
        assert_eq!(series.histograms[0].reset_hint, ResetHint::No);
        assert_eq!(series.exemplars.len(), 1);
        assert_eq!(
            series.exemplars[0].labels.get("trace_id"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(outcome.accepted, 1);
        assert_eq!(
            outcome.rejected,
            vec![("invalid_histogram", 1), ("invalid_exemplar", 1)]
        );
    }

    #[test]
    fn malformed_bodies_are_bad_requests_with_a_reason() {
        let limits = Limits::default();
        let not_snappy = decode(b"definitely not snappy", &limits).unwrap_err();
        assert!(not_snappy.to_string().contains("snappy"), "{not_snappy}");
        let garbage = snap::raw::Encoder::new().compress_vec(&[0xff; 64]).unwrap();
        let not_protobuf = decode(&garbage, &limits).unwrap_err();
        assert!(
            not_protobuf.to_string().contains("WriteRequest"),
            "{not_protobuf}"
        );
        let request = pb::WriteRequest {
            timeseries: vec![series(vec![label("__name__", "up")], 1); 10],
            metadata: vec![],
        };
        let body = encode(&request);
        let truncated = decode(&body[..body.len() - 3], &limits).unwrap_err();
        assert!(
            matches!(truncated, GatewayError::BadRequest(_)),
            "{truncated}"
        );
        let small = Limits {
            max_series_per_request: 5,
            ..Limits::default()
        };
        let too_many = convert(request, &small).unwrap_err();
        assert!(too_many.to_string().contains("10 series"), "{too_many}");
    }

    #[test]
    fn labels_that_are_not_utf8_refuse_their_series_only() {
        let mut bad = series(vec![label("__name__", "up")], 1);
        bad.labels.push(pb::Label {
            name: bytes::Bytes::from_static(b"job"),
            value: bytes::Bytes::from_static(&[0xff, 0xfe]),
        });
        let request = pb::WriteRequest {
            timeseries: vec![bad, series(vec![label("__name__", "up")], 1)],
            metadata: vec![],
        };
        let decoded = decode(&encode(&request), &Limits::default()).unwrap();
        let (batch, outcome) = convert(decoded, &Limits::default()).unwrap();
        assert_eq!(batch.series.len(), 1);
        assert_eq!(outcome.rejected, vec![("invalid_utf8", 1)]);
        assert!(outcome.first_rejection.unwrap().contains("UTF-8"));
    }

    #[test]
    fn a_body_that_inflates_past_the_limit_is_refused_before_decompressing() {
        let request = pb::WriteRequest {
            timeseries: vec![
                series(
                    vec![label("__name__", "up"), label("pad", &"p".repeat(4000))],
                    1
                );
                100
            ],
            metadata: vec![],
        };
        let body = encode(&request);
        let limits = Limits {
            max_decompressed_body_bytes: 10_000,
            ..Limits::default()
        };
        assert!(matches!(
            decode(&body, &limits),
            Err(GatewayError::BodyTooLarge { limit: 10_000 })
        ));
    }

    /// The fast path and the full decoder must agree on every request the fast path takes.
    fn both_paths(request: &pb::WriteRequest) -> Option<(MetricBatch, MetricBatch)> {
        let raw = prost::Message::encode_to_vec(request);
        let limits = Limits::default();
        let (samples, _) = check_in_place(&raw, &limits).ok()?;
        let fast = model::remote_write::decode_metric_batch(&raw).unwrap();
        let (slow, outcome) = convert(decode_raw(raw).unwrap(), &limits).unwrap();
        assert_eq!(samples, outcome.accepted);
        assert!(
            outcome.first_rejection.is_none(),
            "the fast path took a request with problems"
        );
        Some((fast, slow))
    }

    #[test]
    fn the_fast_path_takes_plain_valid_requests_only() {
        let plain = pb::WriteRequest {
            timeseries: vec![series(vec![label("__name__", "up"), label("job", "a")], 3)],
            metadata: vec![],
        };
        let (fast, slow) = both_paths(&plain).expect("plain and sorted: fast path");
        assert_eq!(fast.series[0].labels, slow.series[0].labels);
        assert_eq!(fast.series[0].samples, slow.series[0].samples);

        let limits = Limits::default();
        let check = |request: &pb::WriteRequest| {
            check_in_place(&prost::Message::encode_to_vec(request), &limits).is_ok()
        };
        let unsorted = pb::WriteRequest {
            timeseries: vec![series(vec![label("job", "a"), label("__name__", "up")], 1)],
            metadata: vec![],
        };
        assert!(
            !check(&unsorted),
            "unsorted labels need the full decoder (which sorts)"
        );
        let mut with_exemplar = plain.clone();
        with_exemplar.timeseries[0]
            .exemplars
            .push(pb::Exemplar::default());
        assert!(!check(&with_exemplar));
        let duplicate = pb::WriteRequest {
            timeseries: vec![series(
                vec![label("__name__", "up"), label("a", "1"), label("a", "2")],
                1,
            )],
            metadata: vec![],
        };
        assert!(!check(&duplicate));
        let empty_value = pb::WriteRequest {
            timeseries: vec![series(vec![label("__name__", "up"), label("a", "")], 1)],
            metadata: vec![],
        };
        assert!(!check(&empty_value));
        let no_name = pb::WriteRequest {
            timeseries: vec![series(vec![label("job", "a")], 1)],
            metadata: vec![],
        };
        assert!(!check(&no_name));
        let long = Limits {
            max_label_value_bytes: 1,
            ..Limits::default()
        };
        assert!(check_in_place(&prost::Message::encode_to_vec(&plain), &long).is_err());
    }

    proptest! {
        #[test]
        fn fast_and_full_paths_agree(
            names in proptest::collection::btree_set("[a-z_][a-z0-9_]{0,5}", 0..5),
            values in proptest::collection::vec("[ -~]{0,6}", 5),
            samples in proptest::collection::vec((any::<f64>(), any::<i64>()), 0..4),
        ) {
            let mut labels = vec![label("__name__", "m")];
            labels.extend(names.iter().zip(&values).map(|(n, v)| label(n, v)));
            labels.sort_by(|a, b| a.name.cmp(&b.name));
            let request = pb::WriteRequest {
                timeseries: vec![pb::TimeSeries {
                    labels,
                    samples: samples.iter().map(|(v, t)| pb::Sample { value: *v, timestamp: *t }).collect(),
                    ..Default::default()
                }],
                metadata: vec![],
            };
            if let Some((fast, slow)) = both_paths(&request) {
                prop_assert_eq!(&fast.series[0].labels, &slow.series[0].labels);
                let bits = |b: &MetricBatch| b.series[0].samples.iter().map(|s| (s.value.to_bits(), s.timestamp_ms)).collect::<Vec<_>>();
                prop_assert_eq!(bits(&fast), bits(&slow));
            }
        }

        #[test]
        fn the_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let limits = Limits::default();
            if let Ok(request) = decode(&bytes, &limits) {
                let _ = convert(request, &limits);
            }
            // Also as the payload of valid snappy framing.
            let _ = check_in_place(&bytes, &limits);
            let framed = snap::raw::Encoder::new().compress_vec(&bytes).unwrap();
            if let Ok(request) = decode(&framed, &limits) {
                let _ = convert(request, &limits);
            }
        }
    }
}
