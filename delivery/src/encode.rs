//! Remote-write's protobuf written straight from borrowed labels and samples.
//!
//! An agent turns every scraped sample into wire bytes; building `prompb` structs first
//! would copy every label into its own allocation only to copy it again while encoding. A
//! [`SeriesBuffer`] holds `WriteRequest.timeseries` fields already encoded, so a request is
//! the concatenation of buffers (plus metadata) and the hot path allocates nothing per label.
//! Field numbers are remote-write 1.0's (see `prompb/proto/remote.proto`).

use prost::Message;

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Tag of a length-delimited field.
fn bytes_field(out: &mut Vec<u8>, field: u32, payload: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn label_len(name: &str, value: &str) -> usize {
    1 + varint_len(name.len() as u64)
        + name.len()
        + 1
        + varint_len(value.len() as u64)
        + value.len()
}

fn label(out: &mut Vec<u8>, field: u32, name: &str, value: &str) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, label_len(name, value) as u64);
    bytes_field(out, 1, name.as_bytes());
    bytes_field(out, 2, value.as_bytes());
}

/// A sample: `value` (double, field 1) and `timestamp` (int64, field 2).
fn sample(out: &mut Vec<u8>, field: u32, value: f64, timestamp_ms: i64) {
    let len = 1 + 8 + 1 + varint_len(timestamp_ms as u64);
    varint(out, u64::from(field << 3 | 2));
    varint(out, len as u64);
    out.push(1 << 3 | 1);
    out.extend_from_slice(&value.to_le_bytes());
    out.push(2 << 3);
    varint(out, timestamp_ms as u64);
}

/// An exemplar to encode with a series.
#[derive(Clone, Copy, Debug)]
pub struct ExemplarRef<'a> {
    pub labels: &'a [(&'a str, &'a str)],
    pub value: f64,
    pub timestamp_ms: i64,
}

/// Encoded `TimeSeries` fields waiting to become a request.
#[derive(Clone, Debug, Default)]
pub struct SeriesBuffer {
    pub(crate) bytes: Vec<u8>,
    pub(crate) samples: usize,
    /// One series' body, reused.
    scratch: Vec<u8>,
}

impl SeriesBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Appends one series with one sample. `labels` must be sorted by name (as remote-write
    /// requires) and hold no empty values.
    pub fn push<'a>(
        &mut self,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        value: f64,
        timestamp_ms: i64,
        exemplar: Option<ExemplarRef<'_>>,
    ) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        for (name, value) in labels {
            label(&mut scratch, 1, name, value);
        }
        sample(&mut scratch, 2, value, timestamp_ms);
        if let Some(exemplar) = exemplar {
            let mut inner = Vec::new();
            for (name, value) in exemplar.labels {
                label(&mut inner, 1, name, value);
            }
            inner.push(2 << 3 | 1);
            inner.extend_from_slice(&exemplar.value.to_le_bytes());
            inner.push(3 << 3);
            varint(&mut inner, exemplar.timestamp_ms as u64);
            bytes_field(&mut scratch, 3, &inner);
        }
        bytes_field(&mut self.bytes, 1, &scratch);
        self.samples += 1;
        self.scratch = scratch;
    }

    /// Appends `prompb` series (tests, and callers that have them already).
    pub fn push_message(&mut self, series: &prompb::TimeSeries) {
        bytes_field(&mut self.bytes, 1, &series.encode_to_vec());
        self.samples += series.samples.len() + series.histograms.len();
    }

    /// The `WriteRequest` of these series and `metadata`.
    pub(crate) fn request(&self, metadata: &[prompb::MetricMetadata]) -> Vec<u8> {
        let mut out = self.bytes.clone();
        for one in metadata {
            bytes_field(&mut out, 3, &one.encode_to_vec());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_what_prost_decodes() {
        let mut buffer = SeriesBuffer::new();
        let long = "v".repeat(200);
        buffer.push(
            [("__name__", "up"), ("job", long.as_str())],
            1.5,
            1_700_000_000_123,
            None,
        );
        buffer.push(
            [("__name__", "req_total")],
            f64::NAN,
            -5,
            Some(ExemplarRef {
                labels: &[("trace_id", "abc")],
                value: 0.25,
                timestamp_ms: 42,
            }),
        );
        let metadata = [prompb::MetricMetadata {
            r#type: 1,
            metric_family_name: "req".into(),
            help: "Requests.".into(),
            unit: String::new(),
        }];
        let request = prompb::WriteRequest::decode(&buffer.request(&metadata)[..]).unwrap();
        assert_eq!(request.timeseries.len(), 2);
        let first = &request.timeseries[0];
        assert_eq!(&first.labels[1].value[..], long.as_bytes());
        assert_eq!(
            (first.samples[0].value, first.samples[0].timestamp),
            (1.5, 1_700_000_000_123)
        );
        let second = &request.timeseries[1];
        assert!(second.samples[0].value.is_nan());
        assert_eq!(second.samples[0].timestamp, -5);
        assert_eq!(&second.exemplars[0].labels[0].name[..], b"trace_id");
        assert_eq!(
            (second.exemplars[0].value, second.exemplars[0].timestamp),
            (0.25, 42)
        );
        assert_eq!(request.metadata[0].help, "Requests.");
        assert_eq!(buffer.samples(), 2);
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
        }
    }
}
