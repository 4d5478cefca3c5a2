//! The on-disk record batch format of the embedded log.
//!
//! A segment file is a sequence of record batches. Each produce request to a partition
//! becomes one batch, written with one `pwrite` and covered by one CRC, so recovery can tell
//! a complete batch from a torn one without trusting anything but the checksum:
//!
//! ```text
//! batch   := length:u32  crc:u32  base_offset:u64  count:u32  max_timestamp_ms:i64  record*
//! record  := timestamp_ms:i64  key_length:u32  key  value_length:u32  value
//! ```
//!
//! Integers are little-endian. `length` counts the bytes after itself; `crc` is CRC-32C
//! (Castagnoli, hardware-accelerated) of everything after the crc field. A key length of
//! `u32::MAX` means "no key". A zero-filled tail (what some filesystems leave after a crash)
//! reads as `length = 0`, which is invalid, so it is cut like any torn write.

use bytes::Bytes;

use crate::ProduceRecord;

/// Bytes before the first record of a batch.
pub(crate) const BATCH_HEADER_LEN: usize = 28;
/// Fixed bytes of each record besides its key and value.
pub(crate) const RECORD_OVERHEAD: usize = 16;
const NO_KEY: u32 = u32::MAX;

/// The header fields of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    /// Bytes after the length field.
    pub length: u32,
    pub crc: u32,
    pub base_offset: u64,
    pub count: u32,
    pub max_timestamp_ms: i64,
}

impl BatchHeader {
    /// Total bytes the batch occupies in the file.
    pub fn total_len(&self) -> u64 {
        4 + u64::from(self.length)
    }

    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.count)
    }

    pub fn parse(bytes: &[u8; BATCH_HEADER_LEN]) -> Self {
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        Self {
            length: u32_at(0),
            crc: u32_at(4),
            base_offset: u64_at(8),
            count: u32_at(16),
            max_timestamp_ms: u64_at(20) as i64,
        }
    }

    /// Checks everything that can be checked before reading the body: that the batch
    /// continues the log at `expected_base`, holds at least one record and no more than its
    /// length allows, and fits in the `available` bytes left. So a damaged header never
    /// makes a reader skip records, allocate gigabytes, or overflow an offset.
    ///
    /// The limit is the data on disk, never the configured `max_batch_bytes`: lowering
    /// that setting must not make batches written under the old value unreadable.
    pub fn check_shape(&self, expected_base: u64, available: u64) -> Result<(), String> {
        let minimum = (BATCH_HEADER_LEN - 4 + RECORD_OVERHEAD) as u64;
        if u64::from(self.length) < minimum {
            return Err(format!(
                "batch length {} is below the minimum {minimum}",
                self.length
            ));
        }
        if self.count == 0 {
            return Err("batch holds no records".to_owned());
        }
        let body = u64::from(self.length) - (BATCH_HEADER_LEN - 4) as u64;
        if u64::from(self.count) * RECORD_OVERHEAD as u64 > body {
            return Err(format!(
                "batch claims {} records but has room for at most {}",
                self.count,
                body / RECORD_OVERHEAD as u64
            ));
        }
        if self.base_offset != expected_base {
            return Err(format!(
                "batch starts at offset {} where {expected_base} was expected",
                self.base_offset
            ));
        }
        if self
            .base_offset
            .checked_add(u64::from(self.count))
            .is_none()
        {
            return Err(format!("batch offsets overflow from {}", self.base_offset));
        }
        if self.total_len() > available {
            return Err(format!(
                "batch of {} bytes runs past the end of the data ({available} bytes left)",
                self.total_len()
            ));
        }
        Ok(())
    }
}

/// A record as stored: the producer's fields plus the offset it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredRecord {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
}

/// The encoded size of one record.
pub(crate) fn record_len(record: &ProduceRecord) -> u64 {
    (RECORD_OVERHEAD + record.key.as_ref().map_or(0, |k| k.len()) + record.value.len()) as u64
}

/// Appends one batch holding `records` (timestamps already resolved) to `out`.
pub(crate) fn encode_batch(base_offset: u64, records: &[(i64, &ProduceRecord)], out: &mut Vec<u8>) {
    let start = out.len();
    let body_len: u64 = records.iter().map(|(_, r)| record_len(r)).sum();
    let length = (BATCH_HEADER_LEN - 4) as u64 + body_len;
    let max_timestamp = records.iter().map(|(ts, _)| *ts).max().unwrap_or(i64::MIN);
    out.reserve(4 + length as usize);
    out.extend_from_slice(&(length as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled below
    out.extend_from_slice(&base_offset.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&max_timestamp.to_le_bytes());
    for (timestamp, record) in records {
        out.extend_from_slice(&timestamp.to_le_bytes());
        match &record.key {
            Some(key) => {
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
            }
            None => out.extend_from_slice(&NO_KEY.to_le_bytes()),
        }
        out.extend_from_slice(&(record.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&record.value);
    }
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Verifies and splits a whole batch (`batch` is the bytes from the length field on).
///
/// Records share `batch`'s allocation: no copy per record.
pub(crate) fn decode_batch(
    header: &BatchHeader,
    batch: Bytes,
) -> Result<Vec<StoredRecord>, String> {
    if batch.len() as u64 != header.total_len() {
        return Err(format!(
            "batch is {} bytes but its header says {}",
            batch.len(),
            header.total_len()
        ));
    }
    let actual_crc = crc32c::crc32c(&batch[8..]);
    if actual_crc != header.crc {
        return Err(format!(
            "checksum mismatch (stored {:#010x}, computed {actual_crc:#010x})",
            header.crc
        ));
    }
    let mut records = Vec::with_capacity(header.count as usize);
    let mut at = BATCH_HEADER_LEN;
    let take_u32 = |at: &mut usize| -> Result<u32, String> {
        let bytes = batch
            .get(*at..*at + 4)
            .ok_or("record runs past the batch end")?;
        *at += 4;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    };
    for index in 0..header.count {
        let ts_bytes = batch
            .get(at..at + 8)
            .ok_or("record runs past the batch end")?;
        let mut word = [0u8; 8];
        word.copy_from_slice(ts_bytes);
        at += 8;
        let key_len = take_u32(&mut at)?;
        let key = if key_len == NO_KEY {
            None
        } else {
            let end = at + key_len as usize;
            if end > batch.len() {
                return Err("record key runs past the batch end".to_owned());
            }
            let key = batch.slice(at..end);
            at = end;
            Some(key)
        };
        let value_len = take_u32(&mut at)? as usize;
        if at + value_len > batch.len() {
            return Err("record value runs past the batch end".to_owned());
        }
        let value = batch.slice(at..at + value_len);
        at += value_len;
        records.push(StoredRecord {
            offset: header.base_offset + u64::from(index),
            timestamp_ms: i64::from_le_bytes(word),
            key,
            value,
        });
    }
    if at != batch.len() {
        return Err(format!(
            "{} unused bytes after the last record",
            batch.len() - at
        ));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<ProduceRecord> {
        vec![
            ProduceRecord::new(&b"first"[..]).with_key(&b"k1"[..]),
            ProduceRecord::new(&b""[..]),
            ProduceRecord::new(vec![7u8; 300]).with_key(&b""[..]),
        ]
    }

    fn encoded(base: u64) -> Vec<u8> {
        let records = records();
        let stamped: Vec<(i64, &ProduceRecord)> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (100 + i as i64, r))
            .collect();
        let mut out = Vec::new();
        encode_batch(base, &stamped, &mut out);
        out
    }

    fn header_of(bytes: &[u8]) -> BatchHeader {
        let mut header = [0u8; BATCH_HEADER_LEN];
        header.copy_from_slice(&bytes[..BATCH_HEADER_LEN]);
        BatchHeader::parse(&header)
    }

    #[test]
    fn round_trips_keys_values_offsets_and_timestamps() {
        let bytes = encoded(41);
        let header = header_of(&bytes);
        assert_eq!(header.total_len(), bytes.len() as u64);
        assert_eq!(header.count, 3);
        assert_eq!(header.max_timestamp_ms, 102);
        assert_eq!(header.next_offset(), 44);
        header.check_shape(41, bytes.len() as u64).unwrap();
        assert!(
            header.check_shape(40, bytes.len() as u64).is_err(),
            "a batch must continue the log"
        );
        assert!(
            header.check_shape(41, bytes.len() as u64 - 1).is_err(),
            "a batch must fit"
        );
        let decoded = decode_batch(&header, Bytes::from(bytes)).unwrap();
        let offsets: Vec<u64> = decoded.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [41, 42, 43]);
        assert_eq!(decoded[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(decoded[1].key, None);
        // An empty key is a key, distinct from no key.
        assert_eq!(decoded[2].key.as_deref(), Some(&b""[..]));
        assert_eq!(decoded[2].value.len(), 300);
        assert_eq!(decoded[1].timestamp_ms, 101);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encoded(0);
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                let header = header_of(&damaged);
                let accepted = header.check_shape(0, damaged.len() as u64).is_ok()
                    && header.total_len() == damaged.len() as u64
                    && decode_batch(&header, Bytes::from(damaged)).is_ok();
                assert!(!accepted, "flip of bit {bit} at byte {at} went unnoticed");
            }
        }
    }

    #[test]
    fn zero_filled_tail_is_invalid() {
        let header = BatchHeader::parse(&[0; BATCH_HEADER_LEN]);
        assert!(header.check_shape(0, 1 << 20).is_err());
    }

    #[test]
    fn oversized_length_or_count_is_refused_before_reading() {
        let mut bytes = encoded(0);
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = header_of(&bytes).check_shape(0, 1 << 20).unwrap_err();
        assert!(err.contains("runs past the end"), "{err}");

        let mut bytes = encoded(0);
        bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = header_of(&bytes).check_shape(0, 1 << 20).unwrap_err();
        assert!(err.contains("room for at most"), "{err}");

        let bytes = encoded(u64::MAX - 1);
        let err = header_of(&bytes)
            .check_shape(u64::MAX - 1, 1 << 20)
            .unwrap_err();
        assert!(err.contains("overflow"), "{err}");
    }
}
