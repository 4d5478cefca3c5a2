//! One segment file of a partition, its sparse offset index, and its recovery.
//!
//! A partition's log is split into segments named by their first offset
//! (`00000000000000001234.log`) so retention can drop whole files. Only the newest segment
//! is written to. When it is sealed, a small `.idx` file records its sparse index and
//! summary, so a restart reads one small file per old segment instead of rescanning
//! gigabytes; only the newest segment, the one a crash can leave torn, is scanned and cut
//! back to its last whole batch.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use bytes::Bytes;

use super::format::{BATCH_HEADER_LEN, BatchHeader, StoredRecord, decode_batch};
use crate::{BusError, Result};

/// Where a batch starts: the sparse index maps offsets to file positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Base offset of the batch at `position`.
    pub offset: u64,
    pub position: u64,
}

/// What a segment holds, as far as it is durable.
#[derive(Clone, Debug)]
pub(crate) struct SegmentState {
    /// Bytes of whole, fsync'd batches.
    pub len: u64,
    /// One past the last record's offset (`base_offset` when empty).
    pub next_offset: u64,
    /// Largest record timestamp; `i64::MIN` when empty.
    pub max_timestamp_ms: i64,
    pub index: Vec<IndexEntry>,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: u64,
    pub log_path: PathBuf,
    reader: File,
    state: RwLock<SegmentState>,
}

/// What recovery found in a segment.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Bytes cut from the end because they did not form whole, valid batches.
    pub truncated_bytes: u64,
    pub reason: Option<String>,
    /// The cut bytes held acknowledged records (damage, not a torn write).
    pub damaged: bool,
    /// Where the damaged bytes were kept for inspection.
    pub saved_to: Option<PathBuf>,
}

/// How far a read got.
#[derive(Debug)]
pub(crate) struct ReadProgress {
    pub bytes: usize,
    /// Whether the read reached the end of the segment's durable data.
    pub exhausted: bool,
}

pub(crate) fn log_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

fn index_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("idx")
}

/// Parses `00000000000000001234.log` into 1234.
pub(crate) fn parse_log_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Makes a directory entry (a new or renamed file) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BusError::io("syncing directory", dir, e))
}

impl Segment {
    /// Creates a new, empty segment file and makes its directory entry durable.
    pub fn create(dir: &Path, base_offset: u64) -> Result<Self> {
        let log_path = dir.join(log_file_name(base_offset));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&log_path)
            .map_err(|e| BusError::io("creating segment", &log_path, e))?;
        sync_dir(dir)?;
        Self::open_reader(log_path, base_offset, SegmentState::empty(base_offset))
    }

    fn open_reader(log_path: PathBuf, base_offset: u64, state: SegmentState) -> Result<Self> {
        let reader =
            File::open(&log_path).map_err(|e| BusError::io("opening segment", &log_path, e))?;
        Ok(Self {
            base_offset,
            log_path,
            reader,
            state: RwLock::new(state),
        })
    }

    /// Opens a segment at start-up. A sealed segment with a valid `.idx` is trusted; any
    /// other is scanned batch by batch, and everything after the last valid batch is cut
    /// (and the cut made durable) so later appends never follow garbage.
    ///
    /// A crash can only tear what the last group commit was writing, which was never
    /// acknowledged: at most `tail_window` bytes at the end of the newest segment. Invalid
    /// data anywhere else (a sealed segment, or further from the end) is damage to
    /// acknowledged records: it is still cut so the log can go on, but the cut bytes are
    /// kept beside the segment (`<segment>.damaged-at-<position>`) and the recovery says so.
    pub fn recover(
        log_path: PathBuf,
        base_offset: u64,
        sealed: bool,
        tail_window: u64,
        index_interval_bytes: u64,
    ) -> Result<(Self, Recovery)> {
        let file_len = fs::metadata(&log_path)
            .map_err(|e| BusError::io("reading metadata of", &log_path, e))?
            .len();
        if sealed
            && let Some(state) = read_index_file(&index_path(&log_path), base_offset, file_len)
        {
            return Ok((
                Self::open_reader(log_path, base_offset, state)?,
                Recovery::default(),
            ));
        }
        let file =
            File::open(&log_path).map_err(|e| BusError::io("opening segment", &log_path, e))?;
        let (state, reason) = scan(&file, base_offset, file_len, index_interval_bytes)
            .map_err(|e| BusError::io("scanning segment", &log_path, e))?;
        let mut recovery = Recovery::default();
        if state.len < file_len {
            let cut = file_len - state.len;
            recovery.truncated_bytes = cut;
            recovery.reason = reason;
            recovery.damaged = sealed || cut > tail_window;
            if recovery.damaged {
                let saved =
                    PathBuf::from(format!("{}.damaged-at-{}", log_path.display(), state.len));
                save_range(&file, state.len, cut, &saved)
                    .map_err(|e| BusError::io("saving damaged bytes to", &saved, e))?;
                recovery.saved_to = Some(saved);
            }
            let writable = OpenOptions::new()
                .write(true)
                .open(&log_path)
                .map_err(|e| BusError::io("opening segment for repair", &log_path, e))?;
            writable
                .set_len(state.len)
                .and_then(|()| writable.sync_all())
                .map_err(|e| BusError::io("truncating torn tail of", &log_path, e))?;
        }
        let segment = Self::open_reader(log_path, base_offset, state)?;
        if sealed {
            segment.write_index_file()?;
        }
        Ok((segment, recovery))
    }

    pub fn state(&self) -> SegmentState {
        self.read_state().clone()
    }

    pub fn len(&self) -> u64 {
        self.read_state().len
    }

    pub fn next_offset(&self) -> u64 {
        self.read_state().next_offset
    }

    pub fn max_timestamp_ms(&self) -> i64 {
        self.read_state().max_timestamp_ms
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, SegmentState> {
        // A poisoned lock only means a panic elsewhere; the state itself is always whole.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes newly fsync'd batches visible to readers.
    pub fn publish(
        &self,
        len: u64,
        next_offset: u64,
        max_timestamp_ms: i64,
        entries: &[IndexEntry],
    ) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.len = len;
        state.next_offset = next_offset;
        state.max_timestamp_ms = state.max_timestamp_ms.max(max_timestamp_ms);
        state.index.extend_from_slice(entries);
    }

    /// Persists the sparse index and summary; called when the segment is sealed.
    pub fn write_index_file(&self) -> Result<()> {
        let state = self.state();
        let path = index_path(&self.log_path);
        let temp = path.with_extension("idx.tmp");
        let mut bytes = Vec::with_capacity(state.index.len() * 16 + 36);
        for entry in &state.index {
            bytes.extend_from_slice(&entry.offset.to_le_bytes());
            bytes.extend_from_slice(&entry.position.to_le_bytes());
        }
        bytes.extend_from_slice(&state.len.to_le_bytes());
        bytes.extend_from_slice(&state.next_offset.to_le_bytes());
        bytes.extend_from_slice(&state.max_timestamp_ms.to_le_bytes());
        bytes.extend_from_slice(&(state.index.len() as u64).to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        fs::write(&temp, &bytes)
            .and_then(|()| File::open(&temp)?.sync_all())
            .and_then(|()| fs::rename(&temp, &path))
            .map_err(|e| BusError::io("writing segment index", &path, e))
    }

    /// Removes the segment's files (retention). Readers holding it keep reading: the data
    /// stays until their file handle closes.
    pub fn delete_files(&self) -> Result<()> {
        let index = index_path(&self.log_path);
        match fs::remove_file(&index) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BusError::io("deleting segment index", &index, e)),
        }
        fs::remove_file(&self.log_path)
            .map_err(|e| BusError::io("deleting segment", &self.log_path, e))
    }

    /// Reads records with offsets in `[from, until)` into `out`, stopping once `max_bytes`
    /// of batches have been read (a batch is never split, so at least one is read).
    ///
    /// Batches before `from` are skipped by their headers alone, so each header must
    /// continue the previous one exactly; a header that does not is reported as damage
    /// rather than trusted, so damage never makes a reader skip records silently.
    pub fn read(
        &self,
        from: u64,
        until: u64,
        max_bytes: usize,
        out: &mut Vec<StoredRecord>,
    ) -> Result<ReadProgress> {
        let (len, mut position, mut expected) = {
            let state = self.read_state();
            let floor = state.index.partition_point(|entry| entry.offset <= from);
            match floor.checked_sub(1).map(|i| state.index[i]) {
                Some(entry) => (state.len, entry.position, entry.offset),
                None => (state.len, 0, self.base_offset),
            }
        };
        let mut bytes = 0usize;
        while position < len {
            if bytes >= max_bytes {
                return Ok(ReadProgress {
                    bytes,
                    exhausted: false,
                });
            }
            let mut header_bytes = [0u8; BATCH_HEADER_LEN];
            self.reader
                .read_exact_at(&mut header_bytes, position)
                .map_err(|e| BusError::io("reading segment", &self.log_path, e))?;
            let header = BatchHeader::parse(&header_bytes);
            let corrupt = |reason: String| BusError::Corrupt {
                path: self.log_path.clone(),
                position,
                reason,
            };
            header
                .check_shape(expected, len - position)
                .map_err(corrupt)?;
            expected = header.next_offset();
            if header.next_offset() <= from {
                position += header.total_len();
                continue;
            }
            if header.base_offset >= until {
                break;
            }
            let mut batch = vec![0u8; header.total_len() as usize];
            self.reader
                .read_exact_at(&mut batch, position)
                .map_err(|e| BusError::io("reading segment", &self.log_path, e))?;
            let records = decode_batch(&header, Bytes::from(batch)).map_err(corrupt)?;
            out.extend(
                records
                    .into_iter()
                    .filter(|record| record.offset >= from && record.offset < until),
            );
            bytes += header.total_len() as usize;
            position += header.total_len();
        }
        Ok(ReadProgress {
            bytes,
            exhausted: true,
        })
    }
}

impl SegmentState {
    pub fn empty(base_offset: u64) -> Self {
        Self {
            len: 0,
            next_offset: base_offset,
            max_timestamp_ms: i64::MIN,
            index: Vec::new(),
        }
    }
}

/// Reads a segment from the start and returns the state of its valid prefix, plus why the
/// scan stopped early (if it did).
fn scan(
    file: &File,
    base_offset: u64,
    file_len: u64,
    index_interval_bytes: u64,
) -> std::io::Result<(SegmentState, Option<String>)> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut state = SegmentState::empty(base_offset);
    let mut last_indexed: Option<u64> = None;
    loop {
        let mut header_bytes = [0u8; BATCH_HEADER_LEN];
        match read_full(&mut reader, &mut header_bytes)? {
            0 => return Ok((state, None)),
            n if n < BATCH_HEADER_LEN => {
                return Ok((state, Some(format!("torn batch header ({n} bytes)"))));
            }
            _ => {}
        }
        let header = BatchHeader::parse(&header_bytes);
        if let Err(reason) = header.check_shape(state.next_offset, file_len - state.len) {
            return Ok((state, Some(reason)));
        }
        let mut batch = vec![0u8; header.total_len() as usize];
        batch[..BATCH_HEADER_LEN].copy_from_slice(&header_bytes);
        let body = read_full(&mut reader, &mut batch[BATCH_HEADER_LEN..])?;
        if body < batch.len() - BATCH_HEADER_LEN {
            return Ok((state, Some("torn batch".to_owned())));
        }
        if let Err(reason) = decode_batch(&header, Bytes::from(batch)) {
            return Ok((state, Some(reason)));
        }
        if last_indexed.is_none_or(|at| state.len - at >= index_interval_bytes) {
            state.index.push(IndexEntry {
                offset: header.base_offset,
                position: state.len,
            });
            last_indexed = Some(state.len);
        }
        state.len += header.total_len();
        state.next_offset = header.next_offset();
        state.max_timestamp_ms = state.max_timestamp_ms.max(header.max_timestamp_ms);
    }
}

/// Copies `len` bytes at `position` of `file` into a new file, durably.
fn save_range(file: &File, position: u64, len: u64, to: &Path) -> std::io::Result<()> {
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, position)?;
    let mut out = File::create(to)?;
    std::io::Write::write_all(&mut out, &bytes)?;
    out.sync_all()?;
    if let Some(dir) = to.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Like `read_exact`, but reports how much was read instead of failing at end of file.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Loads a sealed segment's `.idx`; `None` if missing, damaged or not matching the log.
fn read_index_file(path: &Path, base_offset: u64, log_len: u64) -> Option<SegmentState> {
    let bytes = fs::read(path).ok()?;
    if bytes.len() < 36 || (bytes.len() - 36) % 16 != 0 {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
    };
    let trailer = body.len() - 32;
    let len = word(trailer)?;
    let next_offset = word(trailer + 8)?;
    let max_timestamp_ms = word(trailer + 16)? as i64;
    let entries = word(trailer + 24)? as usize;
    if len != log_len || entries * 16 != trailer || next_offset < base_offset {
        return None;
    }
    let index = (0..entries)
        .map(|i| {
            Some(IndexEntry {
                offset: word(i * 16)?,
                position: word(i * 16 + 8)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(SegmentState {
        len,
        next_offset,
        max_timestamp_ms,
        index,
    })
}
