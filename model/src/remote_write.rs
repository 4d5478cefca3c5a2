//! Reading Prometheus remote-write requests without decoding them into objects.
//!
//! A remote-write body is the bulk of everything Meerkat ingests, so it is read in place: a
//! [`WriteRequestReader`] walks the protobuf wire format of a (decompressed) `WriteRequest`
//! and hands out borrowed views of each series — label names and values as slices of the
//! request buffer, samples as they are — with no allocation. The gateway validates requests
//! with it, and a fully valid request travels on the bus as the body it arrived in
//! ([`crate::Payload::RemoteWrite`]); consumers turn that back into a [`MetricBatch`] with
//! [`decode_metric_batch`].
//!
//! Field numbers are remote-write 1.0's (`prometheus/prompb`): WriteRequest { 1 timeseries,
//! 3 metadata }, TimeSeries { 1 labels, 2 samples, 3 exemplars, 4 histograms }, Label
//! { 1 name, 2 value }, Sample { 1 value (double), 2 timestamp (int64) }, MetricMetadata
//! { 1 type, 2 metric_family_name, 4 help, 5 unit }. Unknown fields are skipped, as
//! protobuf requires.

use crate::{Labels, MetricBatch, MetricMetadata, MetricType, ModelError, Sample, Series};

/// A wire-format problem: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError(pub String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn wire_error(what: &str) -> WireError {
    WireError(format!("malformed protobuf: {what}"))
}

/// A cursor over protobuf wire data.
#[derive(Clone, Copy, Debug)]
struct Wire<'a> {
    data: &'a [u8],
}

/// One field: its number and payload.
#[derive(Clone, Copy, Debug)]
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32,
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value: u64 = 0;
        for (i, byte) in self.data.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.data = &self.data[i + 1..];
                return Ok(value);
            }
        }
        Err(wire_error("truncated or overlong varint"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.data.len() {
            return Err(wire_error("field runs past the end of its message"));
        }
        let (taken, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(taken)
    }

    /// The next field, or `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Field<'a>)>, WireError> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 {
            return Err(wire_error("field number 0"));
        }
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                let bytes = self.take(8)?;
                let mut word = [0u8; 8];
                word.copy_from_slice(bytes);
                Field::Fixed64(u64::from_le_bytes(word))
            }
            2 => {
                let length =
                    usize::try_from(self.varint()?).map_err(|_| wire_error("length too large"))?;
                Field::Bytes(self.take(length)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed32
            }
            other => return Err(wire_error(&format!("unsupported wire type {other}"))),
        };
        Ok(Some((number, field)))
    }
}

/// A series of a request, read in place.
#[derive(Clone, Copy, Debug)]
pub struct SeriesView<'a> {
    body: &'a [u8],
}

/// A label as it is on the wire: not yet known to be UTF-8 or a valid name.
pub type RawLabel<'a> = (&'a [u8], &'a [u8]);

impl<'a> SeriesView<'a> {
    /// Calls `label` for each label, in wire order.
    pub fn for_each_label(&self, mut label: impl FnMut(RawLabel<'a>)) -> Result<(), WireError> {
        let mut wire = Wire { data: self.body };
        while let Some((number, field)) = wire.field()? {
            if let (1, Field::Bytes(bytes)) = (number, field) {
                let mut inner = Wire { data: bytes };
                let (mut name, mut value): (&[u8], &[u8]) = (&[], &[]);
                while let Some((number, field)) = inner.field()? {
                    match (number, field) {
                        (1, Field::Bytes(b)) => name = b,
                        (2, Field::Bytes(b)) => value = b,
                        (1 | 2, _) => {
                            return Err(wire_error("label name or value is not length-delimited"));
                        }
                        _ => {}
                    }
                }
                label((name, value));
            }
        }
        Ok(())
    }

    /// Calls `sample` for each float sample.
    pub fn for_each_sample(&self, mut sample: impl FnMut(Sample)) -> Result<(), WireError> {
        let mut wire = Wire { data: self.body };
        while let Some((number, field)) = wire.field()? {
            if let (2, Field::Bytes(bytes)) = (number, field) {
                let mut inner = Wire { data: bytes };
                let mut value = 0.0;
                let mut timestamp_ms = 0;
                while let Some((number, field)) = inner.field()? {
                    match (number, field) {
                        (1, Field::Fixed64(bits)) => value = f64::from_bits(bits),
                        (2, Field::Varint(v)) => timestamp_ms = v as i64,
                        (1 | 2, _) => return Err(wire_error("sample field of the wrong type")),
                        _ => {}
                    }
                }
                sample(Sample {
                    timestamp_ms,
                    value,
                });
            }
        }
        Ok(())
    }

    /// How many exemplars and native histograms the series carries (the fields this
    /// reader leaves to a full decoder).
    pub fn exemplars_and_histograms(&self) -> Result<usize, WireError> {
        let mut wire = Wire { data: self.body };
        let mut count = 0;
        while let Some((number, _)) = wire.field()? {
            if number == 3 || number == 4 {
                count += 1;
            }
        }
        Ok(count)
    }
}

/// Walks a decompressed `WriteRequest`.
#[derive(Clone, Copy, Debug)]
pub struct WriteRequestReader<'a> {
    body: &'a [u8],
}

impl<'a> WriteRequestReader<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Self { body }
    }

    /// Calls `series` for each time series, in order; stops at the first error it returns.
    pub fn for_each_series<E>(
        &self,
        mut series: impl FnMut(SeriesView<'a>) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<WireError>,
    {
        let mut wire = Wire { data: self.body };
        while let Some((number, field)) = wire.field()? {
            match (number, field) {
                (1, Field::Bytes(body)) => series(SeriesView { body })?,
                (1, _) => return Err(wire_error("timeseries is not length-delimited").into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// The metric metadata entries.
    pub fn metadata(&self) -> Result<Vec<MetricMetadata>, WireError> {
        let mut wire = Wire { data: self.body };
        let mut out = Vec::new();
        while let Some((number, field)) = wire.field()? {
            if let (3, Field::Bytes(body)) = (number, field) {
                let mut inner = Wire { data: body };
                let mut metadata = MetricMetadata {
                    metric_family_name: String::new(),
                    metric_type: MetricType::Unknown,
                    help: String::new(),
                    unit: String::new(),
                };
                let text = |b: &[u8]| {
                    std::str::from_utf8(b)
                        .map(str::to_owned)
                        .map_err(|_| wire_error("metadata text is not UTF-8"))
                };
                while let Some((number, field)) = inner.field()? {
                    match (number, field) {
                        (1, Field::Varint(t)) => metadata.metric_type = metric_type(t),
                        (2, Field::Bytes(b)) => metadata.metric_family_name = text(b)?,
                        (4, Field::Bytes(b)) => metadata.help = text(b)?,
                        (5, Field::Bytes(b)) => metadata.unit = text(b)?,
                        _ => {}
                    }
                }
                out.push(metadata);
            }
        }
        Ok(out)
    }
}

/// The number [`metric_type`] reads back (what agents send).
pub fn metric_type_number(metric_type: MetricType) -> u64 {
    match metric_type {
        MetricType::Unknown => 0,
        MetricType::Counter => 1,
        MetricType::Gauge => 2,
        MetricType::Histogram => 3,
        MetricType::GaugeHistogram => 4,
        MetricType::Summary => 5,
        MetricType::Info => 6,
        MetricType::StateSet => 7,
    }
}

/// Remote-write's `MetricMetadata.MetricType` numbers.
pub fn metric_type(number: u64) -> MetricType {
    match number {
        1 => MetricType::Counter,
        2 => MetricType::Gauge,
        3 => MetricType::Histogram,
        4 => MetricType::GaugeHistogram,
        5 => MetricType::Summary,
        6 => MetricType::Info,
        7 => MetricType::StateSet,
        _ => MetricType::Unknown,
    }
}

impl From<WireError> for ModelError {
    fn from(error: WireError) -> Self {
        ModelError::Decode { reason: error.0 }
    }
}

/// The label set of a series' raw labels; an error if they are not UTF-8 or not a valid
/// set.
pub fn labels_from_raw(raw: &[RawLabel]) -> Result<Labels, ModelError> {
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        match (std::str::from_utf8(name), std::str::from_utf8(value)) {
            (Ok(name), Ok(value)) => pairs.push((name, value)),
            _ => {
                return Err(ModelError::Decode {
                    reason: "label is not UTF-8".to_owned(),
                });
            }
        }
    }
    Labels::from_pairs(&mut pairs)
}

/// Turns a decompressed remote-write body that was validated when it was accepted (labels,
/// no exemplars or native histograms) into a metric batch. A series that does not form a
/// valid label set after all is an error: the body is not what the gateway accepted.
pub fn decode_metric_batch(body: &[u8]) -> Result<MetricBatch, ModelError> {
    let reader = WriteRequestReader::new(body);
    let mut batch = MetricBatch {
        series: Vec::new(),
        metadata: reader.metadata()?,
    };
    let mut raw: Vec<RawLabel> = Vec::with_capacity(16);
    reader.for_each_series(|view| -> Result<(), ModelError> {
        raw.clear();
        view.for_each_label(|label| raw.push(label))?;
        let labels = labels_from_raw(&raw)?;
        let mut samples = Vec::new();
        view.for_each_sample(|s| samples.push(s))?;
        batch.series.push(Series::with_samples(labels, samples));
        Ok(())
    })?;
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn metric_type_numbers_round_trip() {
        for metric_type in MetricType::ALL {
            assert_eq!(
                super::metric_type(metric_type_number(metric_type)),
                metric_type
            );
        }
        assert_eq!(metric_type_number(MetricType::Counter), 1);
    }

    /// A minimal protobuf writer, to build requests independently of the reader.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn bytes_field(number: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn series(labels: &[(&str, &str)], samples: &[(f64, i64)], extra_unknown: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in labels {
            let mut label = Vec::new();
            bytes_field(1, name.as_bytes(), &mut label);
            bytes_field(2, value.as_bytes(), &mut label);
            bytes_field(1, &label, &mut out);
        }
        for (value, ts) in samples {
            let mut sample = Vec::new();
            varint(1 << 3 | 1, &mut sample);
            sample.extend_from_slice(&value.to_bits().to_le_bytes());
            varint(2 << 3, &mut sample);
            varint(*ts as u64, &mut sample);
            bytes_field(2, &sample, &mut out);
        }
        if extra_unknown {
            // Field 9, varint, and field 10, fixed32: both must be skipped.
            varint(9 << 3, &mut out);
            varint(12345, &mut out);
            varint(10 << 3 | 5, &mut out);
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out
    }

    fn request(all: &[Vec<u8>], metadata: Option<(&str, u64)>) -> Vec<u8> {
        let mut out = Vec::new();
        for s in all {
            bytes_field(1, s, &mut out);
        }
        if let Some((name, kind)) = metadata {
            let mut m = Vec::new();
            varint(1 << 3, &mut m);
            varint(kind, &mut m);
            bytes_field(2, name.as_bytes(), &mut m);
            bytes_field(4, b"Help text.", &mut m);
            bytes_field(3, &m, &mut out);
        }
        out
    }

    #[test]
    fn reads_labels_samples_metadata_and_skips_unknown_fields() {
        let body = request(
            &[
                series(
                    &[("__name__", "up"), ("job", "api")],
                    &[(1.0, 1000), (0.0, 2000)],
                    true,
                ),
                series(
                    &[("__name__", "up"), ("job", "db")],
                    &[(f64::NAN, -5)],
                    false,
                ),
            ],
            Some(("up", 2)),
        );
        let batch = decode_metric_batch(&body).unwrap();
        assert_eq!(batch.series.len(), 2);
        assert_eq!(batch.series[0].labels.to_string(), r#"up{job="api"}"#);
        assert_eq!(
            batch.series[0].samples[1],
            Sample {
                timestamp_ms: 2000,
                value: 0.0
            }
        );
        assert!(batch.series[1].samples[0].value.is_nan());
        assert_eq!(
            batch.series[1].samples[0].timestamp_ms, -5,
            "negative timestamps survive"
        );
        assert_eq!(batch.metadata[0].metric_type, MetricType::Gauge);
        assert_eq!(batch.metadata[0].help, "Help text.");
    }

    #[test]
    fn broken_wire_data_is_an_error() {
        let good = request(&[series(&[("__name__", "up")], &[(1.0, 1)], false)], None);
        for cut in 1..good.len() {
            assert!(decode_metric_batch(&good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(
            decode_metric_batch(&[
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ])
            .is_err()
        );
        assert!(
            decode_metric_batch(&[0x0b]).is_err(),
            "wire type 3 (groups) is not supported"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_metric_batch(&bytes);
            let reader = WriteRequestReader::new(&bytes);
            let _ = reader.for_each_series(|view| -> Result<(), WireError> {
                view.for_each_label(|_| {})?;
                view.for_each_sample(|_| {})?;
                view.exemplars_and_histograms()?;
                Ok(())
            });
        }

        #[test]
        fn what_is_written_is_read_back(
            labels in proptest::collection::btree_map("[a-z_][a-z0-9_]{0,6}", "[ -~]{1,10}", 0..6),
            samples in proptest::collection::vec((any::<f64>(), any::<i64>()), 0..5),
        ) {
            let mut pairs: Vec<(&str, &str)> = labels.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            pairs.push(("__name__", "m"));
            let body = request(&[series(&pairs, &samples, true)], None);
            let batch = decode_metric_batch(&body).unwrap();
            let expected = Labels::from_pairs(&mut pairs.clone()).unwrap();
            prop_assert_eq!(&batch.series[0].labels, &expected);
            let read: Vec<(u64, i64)> = batch.series[0].samples.iter().map(|s| (s.value.to_bits(), s.timestamp_ms)).collect();
            let written: Vec<(u64, i64)> = samples.iter().map(|(v, t)| (v.to_bits(), *t)).collect();
            prop_assert_eq!(read, written);
        }
    }
}
