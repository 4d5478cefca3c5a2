//! Remote-write bodies as the gateway keeps them on the bus, read in place by both engines.

use model::remote_write::{RawLabel, WriteRequestReader};
use model::{RemoteWriteBody, Sample};

use crate::{Result, StorageError};

/// The protobuf `WriteRequest` of a body (decompressed before any lock is taken).
pub(crate) fn decompress(body: &RemoteWriteBody) -> Result<Vec<u8>> {
    body.decompress()
        .map_err(|e| StorageError::Decode(e.to_string()))
}

/// Calls `series` for each series of a decompressed body that has samples, with its raw
/// labels, their fingerprint ([`model::Labels::fingerprint`] of the series' label set) and
/// its samples. An engine that already knows the fingerprint needs no `Labels`; one that
/// does not builds them with [`labels`].
///
/// The gateway keeps only bodies whose labels are a valid set as sent (sorted, no empty
/// values), whose raw fingerprint is then the label set's. A body from elsewhere that is
/// not (unsorted, empty values) has its fingerprint computed from its label set, so the
/// series is the same whichever way its labels were sent.
///
/// A body damaged after the gateway accepted it fails where the damage is; the series
/// before it have been handed out (and stored: they were good).
pub(crate) fn for_each_series(
    body: &[u8],
    mut series: impl FnMut(&[RawLabel], u64, &[Sample]) -> Result<()>,
) -> Result<()> {
    let mut raw: Vec<RawLabel> = Vec::with_capacity(16);
    let mut samples: Vec<Sample> = Vec::with_capacity(16);
    WriteRequestReader::new(body).for_each_series(|view| -> Result<()> {
        raw.clear();
        samples.clear();
        view.for_each_label(|label| raw.push(label))?;
        view.for_each_sample(|sample| samples.push(sample))?;
        if samples.is_empty() {
            return Ok(());
        }
        let canonical = raw.windows(2).all(|pair| pair[0].0 < pair[1].0)
            && raw.iter().all(|(_, value)| !value.is_empty());
        let fingerprint = if canonical {
            model::fingerprint_of(raw.iter().copied())
        } else {
            labels(&raw)?.fingerprint()
        };
        series(&raw, fingerprint, &samples)
    })
}

/// The label set of raw labels, or the decode error that they are not one.
pub(crate) fn labels(raw: &[RawLabel]) -> Result<model::Labels> {
    model::remote_write::labels_from_raw(raw).map_err(|e| StorageError::Decode(e.to_string()))
}
