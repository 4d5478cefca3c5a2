//! What travels on the bus: a tenant plus one batch of telemetry, and its binary encoding.
//!
//! The encoding is a one-byte format version followed by the batch in `postcard` (serde's
//! compact varint format). It was chosen by measurement against protobuf (`prost`),
//! `bitcode` and JSON on realistic batches: see `bench/README.md` ("Bus record encoding") for
//! the figures and `cargo run -p bench -- encoding` to repeat them. The version byte lets a
//! later format be introduced without breaking records already on disk.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{LogBatch, MetricBatch, ModelError, PlatformEvent, SpanBatch};

/// The format version written by this build. Readers accept every version they know.
pub const ENVELOPE_FORMAT_VERSION: u8 = 1;

/// A tenant id, validated with the rules Cortex and Mimir use for `X-Scope-OrgID`: 1–150
/// bytes of ASCII letters, digits and `!-_.*'()`, and not `.` or `..` (tenant ids end up in
/// paths and table names).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct TenantId(String);

/// Serialized as the plain string, without the copy serde's `into` would make.
impl Serialize for TenantId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// The tenant used when auth is off and the request names none.
pub const DEFAULT_TENANT: &str = "default";

/// Longest tenant id accepted.
pub const MAX_TENANT_ID_BYTES: usize = 150;

impl TenantId {
    pub fn new(id: impl Into<String>) -> Result<Self, ModelError> {
        let id = id.into();
        let valid_chars = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!-_.*'()".contains(&b));
        if id.is_empty()
            || id.len() > MAX_TENANT_ID_BYTES
            || !valid_chars
            || id == "."
            || id == ".."
        {
            return Err(ModelError::InvalidTenant { id });
        }
        Ok(Self(id))
    }

    pub fn default_tenant() -> Self {
        Self(DEFAULT_TENANT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = ModelError;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        Self::new(id)
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> Self {
        id.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One batch of one kind of telemetry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    Metrics(MetricBatch),
    Spans(SpanBatch),
    Logs(LogBatch),
    Events(Vec<PlatformEvent>),
    /// A remote-write request that the gateway found entirely valid, kept as it arrived
    /// (snappy-compressed protobuf): a fraction of the bytes of a [`MetricBatch`], and no
    /// re-encoding on the hottest path. [`RemoteWriteBody::decode`] gives the batch.
    RemoteWrite(RemoteWriteBody),
}

impl Payload {
    /// The metric batch this payload carries, whichever form it travels in (`None` for
    /// spans, logs and events): what every metrics consumer reads.
    pub fn into_metric_batch(self) -> Result<Option<MetricBatch>, ModelError> {
        match self {
            Self::Metrics(batch) => Ok(Some(batch)),
            Self::RemoteWrite(body) => body.decode().map(Some),
            Self::Spans(_) | Self::Logs(_) | Self::Events(_) => Ok(None),
        }
    }

    /// Samples (float and histogram), spans, log records or events in the payload.
    pub fn record_count(&self) -> u64 {
        let count = match self {
            Self::Metrics(batch) => batch.sample_count(),
            Self::RemoteWrite(body) => return body.samples,
            Self::Spans(batch) => batch.span_count(),
            Self::Logs(batch) => batch.record_count(),
            Self::Events(events) => events.len(),
        };
        count as u64
    }
}

/// A validated remote-write body (series with labels and float samples, and metadata; no
/// exemplars or native histograms, which travel as a [`MetricBatch`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteWriteBody {
    #[serde(with = "serde_bytes")]
    pub snappy: Vec<u8>,
    /// Float samples in the body, known from validation (for metrics and limits downstream).
    pub samples: u64,
    /// A hash of the first series' labels. Prometheus shards its sending by series, so
    /// partitioning by this keeps one sender shard's series in one partition.
    pub affinity: u64,
}

impl RemoteWriteBody {
    /// The body as a metric batch.
    pub fn decode(&self) -> Result<MetricBatch, ModelError> {
        crate::remote_write::decode_metric_batch(&self.decompress()?)
    }

    /// The protobuf `WriteRequest`, for reading in place with
    /// [`crate::remote_write::WriteRequestReader`].
    pub fn decompress(&self) -> Result<Vec<u8>, ModelError> {
        snap::raw::Decoder::new()
            .decompress_vec(&self.snappy)
            .map_err(|e| ModelError::Decode {
                reason: format!("remote-write body is not valid snappy: {e}"),
            })
    }
}

/// A bus record's value: whose data it is, and the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub tenant: TenantId,
    pub payload: Payload,
}

impl Envelope {
    /// Encodes into a fresh buffer.
    pub fn encode(&self) -> Result<Vec<u8>, ModelError> {
        postcard::to_extend(self, vec![ENVELOPE_FORMAT_VERSION]).map_err(|e| ModelError::Encode {
            reason: e.to_string(),
        })
    }

    /// Decodes a record written by [`Envelope::encode`] of this or an earlier format.
    ///
    /// Every invariant of the model (label rules, tenant rules) is checked on the way in, so
    /// a damaged record is an error, never a bad value.
    pub fn decode(bytes: &[u8]) -> Result<Self, ModelError> {
        let Some((&version, body)) = bytes.split_first() else {
            return Err(ModelError::Decode {
                reason: "empty record".to_owned(),
            });
        };
        if version != ENVELOPE_FORMAT_VERSION {
            return Err(ModelError::Decode {
                reason: format!(
                    "unknown envelope format version {version} (this build reads {ENVELOPE_FORMAT_VERSION})"
                ),
            });
        }
        let (envelope, rest) =
            postcard::take_from_bytes::<Self>(body).map_err(|e| ModelError::Decode {
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(ModelError::Decode {
                reason: format!("{} trailing bytes after the envelope", rest.len()),
            });
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use proptest::prelude::*;

    fn sample_envelopes() -> Vec<Envelope> {
        let tenant = TenantId::new("team-a").unwrap();
        let labels = Labels::new([("__name__", "http_requests_total"), ("code", "200")]).unwrap();
        let exemplar_labels = Labels::new([("trace_id", "4bf92f3577b34da6")]).unwrap();
        let metrics = MetricBatch {
            series: vec![Series {
                labels,
                samples: vec![
                    Sample {
                        timestamp_ms: 1_700_000_000_000,
                        value: 1.5,
                    },
                    Sample {
                        timestamp_ms: 1_700_000_015_000,
                        value: stale_nan(),
                    },
                ],
                histograms: vec![NativeHistogram {
                    timestamp_ms: 1_700_000_000_000,
                    schema: 0,
                    zero_threshold: 0.001,
                    sum: 3.0,
                    reset_hint: ResetHint::Unknown,
                    counts: HistogramCounts::Integer {
                        count: 2,
                        zero_count: 0,
                        positive_deltas: vec![1, 0],
                        negative_deltas: vec![],
                    },
                    positive_spans: vec![BucketSpan {
                        offset: 1,
                        length: 2,
                    }],
                    negative_spans: vec![],
                }],
                exemplars: vec![Exemplar {
                    labels: exemplar_labels,
                    value: 0.25,
                    timestamp_ms: 1_700_000_000_001,
                }],
            }],
            metadata: vec![MetricMetadata {
                metric_family_name: "http_requests_total".into(),
                metric_type: MetricType::Counter,
                help: "Requests.".into(),
                unit: String::new(),
            }],
        };
        let span = Span {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([3; 8]),
            trace_state: String::new(),
            parent_span_id: None,
            flags: 1,
            name: "GET /".into(),
            kind: SpanKind::Server,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: vec![KeyValue::new(
                "nested",
                AnyValue::KeyValueList(vec![KeyValue::new("bytes", AnyValue::Bytes(vec![0, 255]))]),
            )],
            dropped_attributes_count: 0,
            events: vec![],
            dropped_events_count: 0,
            links: vec![],
            dropped_links_count: 0,
            status: SpanStatus {
                code: StatusCode::Error,
                message: "boom".into(),
            },
        };
        let spans = SpanBatch {
            resource_spans: vec![ResourceSpans {
                resource: Resource::default(),
                schema_url: String::new(),
                scope_spans: vec![ScopeSpans {
                    scope: InstrumentationScope::default(),
                    schema_url: String::new(),
                    spans: vec![span],
                }],
            }],
        };
        let logs = LogBatch {
            resource_logs: vec![ResourceLogs {
                resource: Resource::default(),
                schema_url: String::new(),
                scope_logs: vec![ScopeLogs {
                    scope: InstrumentationScope::default(),
                    schema_url: String::new(),
                    log_records: vec![LogRecord {
                        body: AnyValue::String("hello".into()),
                        severity_number: 9,
                        trace_id: Some(TraceId([1; 16])),
                        ..LogRecord::default()
                    }],
                }],
            }],
        };
        let events = vec![PlatformEvent {
            timestamp_ms: 5,
            source: "pipeline-core".into(),
            attributes: vec![],
            kind: EventKind::Pipeline(PipelineEvent {
                pipeline: "build".into(),
                run_id: "42".into(),
                stage: Some("test".into()),
                phase: PipelinePhase::Failed,
                duration_ms: Some(1200),
                message: "exit 1".into(),
            }),
        }];
        [
            Payload::Metrics(metrics),
            Payload::Spans(spans),
            Payload::Logs(logs),
            Payload::Events(events),
        ]
        .into_iter()
        .map(|payload| Envelope {
            tenant: tenant.clone(),
            payload,
        })
        .collect()
    }

    #[test]
    fn every_payload_kind_round_trips() {
        for envelope in sample_envelopes() {
            let bytes = envelope.encode().unwrap();
            assert_eq!(bytes[0], ENVELOPE_FORMAT_VERSION);
            let decoded = Envelope::decode(&bytes).unwrap();
            // NaN != NaN, so compare encodings for the metrics batch with a staleness marker.
            assert_eq!(decoded.encode().unwrap(), bytes);
            if let (Payload::Metrics(a), Payload::Metrics(b)) =
                (&decoded.payload, &envelope.payload)
            {
                assert!(is_stale_nan(a.series[0].samples[1].value));
                assert_eq!(a.series[0].labels, b.series[0].labels);
            } else {
                assert_eq!(decoded, envelope);
            }
        }
    }

    #[test]
    fn decode_rejects_unknown_versions_trailing_bytes_and_truncation() {
        let bytes = sample_envelopes()[0].encode().unwrap();
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 99;
        let err = Envelope::decode(&wrong_version).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");

        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Envelope::decode(&trailing).is_err());

        for cut in 0..bytes.len() {
            assert!(Envelope::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn decode_enforces_model_invariants() {
        // A record whose labels are out of order must not decode into a `Labels`.
        let unsorted = postcard::to_stdvec(&("b1a2", [1u32, 2, 3, 4])).unwrap();
        assert!(postcard::from_bytes::<Labels>(&unsorted).is_err());

        let bad_tenant = postcard::to_stdvec("../etc").unwrap();
        assert!(postcard::from_bytes::<TenantId>(&bad_tenant).is_err());
    }

    #[test]
    fn tenant_ids_follow_mimir_rules() {
        for good in ["default", "team-a", "A.b_c!*'()", &"x".repeat(150)] {
            assert!(TenantId::new(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(151)] {
            assert!(TenantId::new(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic_the_decoder(index in any::<prop::sample::Index>(), bit in 0u8..8) {
            for envelope in sample_envelopes() {
                let mut bytes = envelope.encode().unwrap();
                let at = index.index(bytes.len());
                bytes[at] ^= 1 << bit;
                let _ = Envelope::decode(&bytes);
            }
        }
    }
}
