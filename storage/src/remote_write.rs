//! Remote-write bodies as the gateway keeps them on the bus, read in place by both engines.

use model::remote_write::{RawLabel, WriteRequestReader};
use model::{RemoteWriteBody, Sample};

use crate::{Result, StorageError};

/// Calls `series` for each series of `body` that has samples, with its raw labels, their
/// fingerprint ([`model::fingerprint_of`]: the same as the label set's, since the gateway
/// keeps only bodies whose labels are a valid sorted set as sent) and its samples. An engine
/// that already knows the fingerprint needs no `Labels`; one that does not builds them with
/// [`model::remote_write::labels_from_raw`].
///
/// A body damaged after the gateway accepted it fails where the damage is; the series
/// before it have been handed out (and stored: they were good).
pub(crate) fn for_each_series(
    body: &RemoteWriteBody,
    mut series: impl FnMut(&[RawLabel], u64, &[Sample]) -> Result<()>,
) -> Result<()> {
    let raw_body = body
        .decompress()
        .map_err(|e| StorageError::Decode(e.to_string()))?;
    let mut labels: Vec<RawLabel> = Vec::with_capacity(16);
    let mut samples: Vec<Sample> = Vec::with_capacity(16);
    WriteRequestReader::new(&raw_body).for_each_series(|view| -> Result<()> {
        labels.clear();
        samples.clear();
        view.for_each_label(|label| labels.push(label))?;
        view.for_each_sample(|sample| samples.push(sample))?;
        if samples.is_empty() {
            return Ok(());
        }
        let fingerprint = model::fingerprint_of(labels.iter().copied());
        series(&labels, fingerprint, &samples)
    })
}

/// The label set of raw labels, or the decode error that they are not one.
pub(crate) fn labels(raw: &[RawLabel]) -> Result<model::Labels> {
    model::remote_write::labels_from_raw(raw).map_err(|e| StorageError::Decode(e.to_string()))
}
