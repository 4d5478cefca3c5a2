//! The files being followed: which ones, how far each was read, and reading what is new.
//!
//! Files are tracked by (device, inode) and read through a descriptor opened once, so a
//! rename (the kubelet's rotation: `0.log` → `0.log.<time>`, then a new `0.log`) changes
//! nothing for the reader: it finishes the old inode, which the runtime may still write for
//! a moment, while the new `0.log` is picked up as a new file. A size below the read offset,
//! or first bytes that no longer match, mean the file was truncated or rewritten in place
//! (copytruncate): it is read again from its start. Everything here is blocking file I/O and
//! runs on the blocking pool.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::checkpoint::{Entry, FINGERPRINT_BYTES, FileId, Fingerprint};
use super::discover::{self, LogFile};
use super::parse::{Assembler, Record};

/// How much one file may read in one step, so a busy file cannot starve the others.
const READ_PER_FILE_PER_STEP: usize = 1 << 20;
const READ_CHUNK: usize = 64 << 10;

/// Records read from one file, and where that leaves its checkpoint once delivered.
#[derive(Debug)]
pub struct FileChunk {
    pub file: Arc<LogFile>,
    pub records: Vec<Record>,
    pub mark: Entry,
}

/// What one step produced, in order.
#[derive(Debug)]
pub enum Op {
    Chunk(FileChunk),
    /// The file is gone and fully read: its checkpoint entry can go.
    Forget(FileId),
}

#[derive(Debug, Default)]
pub struct Step {
    pub ops: Vec<Op>,
    pub lines: u64,
    /// More is waiting to be read than this step took.
    pub more: bool,
    /// Bytes on disk not read yet.
    pub behind: u64,
    pub files: u64,
}

#[derive(Debug)]
struct Tracked {
    id: FileId,
    info: Arc<LogFile>,
    /// `None` once a rotated file is finished (kept to know it is not new).
    file: Option<File>,
    /// Next byte to read.
    offset: u64,
    /// The physical line being read (no newline seen yet).
    line: Vec<u8>,
    assembler: Assembler,
    /// Records ending at or before this were delivered before a restart.
    skip_until: u64,
    fingerprint: Fingerprint,
    size: u64,
    seen: bool,
    gone: bool,
    /// When it was first seen under a rotated name, and when it last grew.
    rotated_at: Option<Instant>,
    grew_at: Instant,
}

impl Tracked {
    fn reset(&mut self) {
        self.offset = 0;
        self.line.clear();
        self.assembler.reset();
        self.skip_until = 0;
        self.fingerprint = Fingerprint::default();
    }

    /// Reads what is new (up to `budget` bytes), appending records to `out`; returns the
    /// bytes read and whether more is waiting.
    fn read(
        &mut self,
        buffer: &mut [u8],
        max_line: usize,
        budget: usize,
        out: &mut Vec<Record>,
    ) -> std::io::Result<(usize, bool)> {
        let Some(file) = self.file.take() else {
            return Ok((0, false));
        };
        let result = self.read_from(&file, buffer, max_line, budget, out);
        self.file = Some(file);
        result
    }

    fn read_from(
        &mut self,
        file: &File,
        buffer: &mut [u8],
        max_line: usize,
        budget: usize,
        out: &mut Vec<Record>,
    ) -> std::io::Result<(usize, bool)> {
        let size = file.metadata()?.len();
        if size < self.offset
            || (size != self.size && self.fingerprint.len > 0 && !self.fingerprint.matches(file))
        {
            tracing::info!(path = %self.info.path.display(), "log file truncated or rewritten; reading it from the start");
            self.reset();
        }
        if size != self.size {
            self.grew_at = Instant::now();
            self.size = size;
        }
        let mut taken = 0;
        while self.offset < size && taken < budget {
            let want = (size - self.offset)
                .min((budget - taken) as u64)
                .min(buffer.len() as u64) as usize;
            let n = file.read_at(&mut buffer[..want], self.offset)?;
            if n == 0 {
                break;
            }
            taken += n;
            self.consume(&buffer[..n], max_line, out);
        }
        Ok((taken, self.offset < size))
    }

    /// Splits bytes at newlines (a line longer than `max_line` is cut into pieces).
    fn consume(&mut self, mut data: &[u8], max_line: usize, out: &mut Vec<Record>) {
        let start_len = out.len();
        while !data.is_empty() {
            let room = max_line.saturating_sub(self.line.len());
            let window = &data[..data.len().min(room + 1)];
            if let Some(i) = window.iter().position(|b| *b == b'\n') {
                self.line.extend_from_slice(&data[..i]);
                let end = self.offset + i as u64 + 1;
                let start = end - self.line.len() as u64 - 1;
                self.assembler.push(&self.line, start, end, false, out);
                self.line.clear();
                self.offset = end;
                data = &data[i + 1..];
            } else if window.len() > room {
                self.line.extend_from_slice(&data[..room]);
                self.offset += room as u64;
                let start = self.offset - self.line.len() as u64;
                self.assembler
                    .push(&self.line, start, self.offset, true, out);
                self.line.clear();
                data = &data[room..];
            } else {
                self.line.extend_from_slice(data);
                self.offset += data.len() as u64;
                data = &[];
            }
        }
        // Lines delivered before a restart are read again only to rebuild partial state.
        let skip = self.skip_until;
        if skip > 0 {
            let new = out.split_off(start_len);
            out.extend(new.into_iter().filter(|r| r.end > skip));
        }
    }

    /// Emits what waits for an end that will never come (the file is finished).
    fn finish(&mut self, out: &mut Vec<Record>) {
        if !self.line.is_empty() {
            let start = self.offset - self.line.len() as u64;
            let line = std::mem::take(&mut self.line);
            self.assembler.push(&line, start, self.offset, true, out);
        }
        self.assembler.flush(out);
        out.retain(|r| r.end > self.skip_until);
    }

    fn chunk(&mut self, records: Vec<Record>) -> Option<FileChunk> {
        let last = records.last()?;
        let (restart, delivered) = (last.restart, last.end);
        let wanted = delivered.min(FINGERPRINT_BYTES);
        if self.fingerprint.len < wanted
            && let Some(file) = &self.file
            && let Ok(print) = Fingerprint::of(file, wanted)
        {
            self.fingerprint = print;
        }
        Some(FileChunk {
            file: self.info.clone(),
            mark: Entry {
                id: self.id,
                path: self.info.path.clone(),
                restart,
                delivered,
                fingerprint: self.fingerprint,
            },
            records,
        })
    }
}

/// Every file followed, and what is needed to find new ones.
#[derive(Debug)]
pub struct Reader {
    pods_dir: PathBuf,
    files: HashMap<FileId, Tracked>,
    /// Checkpoint entries not matched to a file yet (until the first scan).
    resume: HashMap<FileId, Entry>,
    scanned: bool,
    /// Rotated files unknown to the checkpoint are read only if written since this (on a
    /// first run) ...
    started: SystemTime,
    /// ... or always after a restart: every rotated file this agent saw is in its checkpoint
    /// until it is deleted, so one that is not was never read (created and rotated while
    /// the agent was away or between two looks).
    had_checkpoint: bool,
    max_line_bytes: usize,
    rotated_idle: Duration,
    buffer: Vec<u8>,
}

impl Reader {
    pub fn new(
        pods_dir: PathBuf,
        resume: HashMap<FileId, Entry>,
        had_checkpoint: bool,
        max_line_bytes: usize,
        rotated_idle: Duration,
    ) -> Self {
        Self {
            pods_dir,
            files: HashMap::new(),
            resume,
            scanned: false,
            started: SystemTime::now(),
            had_checkpoint,
            max_line_bytes: max_line_bytes.max(1),
            rotated_idle,
            buffer: vec![0; READ_CHUNK],
        }
    }

    /// Finds new and vanished files.
    fn scan(&mut self) {
        for tracked in self.files.values_mut() {
            tracked.seen = false;
        }
        for log in discover::scan(&self.pods_dir) {
            let Ok(metadata) = std::fs::metadata(&log.path) else {
                continue;
            };
            if !metadata.is_file() {
                continue;
            }
            let id = FileId::of(&metadata);
            if let Some(tracked) = self.files.get_mut(&id) {
                tracked.seen = true;
                if !log.live && tracked.rotated_at.is_none() {
                    tracked.rotated_at = Some(Instant::now());
                }
                if tracked.info.path != log.path {
                    tracked.info = Arc::new(log);
                }
                continue;
            }
            let resume = self.resume.remove(&id);
            let recent = metadata.modified().is_ok_and(|m| m >= self.started);
            if !log.live && resume.is_none() && !recent && !self.had_checkpoint {
                // A rotated file from before this agent's first start: history, not ours.
                continue;
            }
            if let Some(tracked) = self.open(id, log, resume) {
                self.files.insert(id, tracked);
            }
        }
        // Not listed is not enough to be gone (a listing can fail): the file must be deleted
        // (no links left), or else it would be read again from its start once listed.
        for tracked in self.files.values_mut() {
            if !tracked.seen && !tracked.gone {
                tracked.gone = match &tracked.file {
                    Some(file) => file.metadata().is_ok_and(|m| m.nlink() == 0),
                    None => !std::fs::metadata(&tracked.info.path)
                        .is_ok_and(|m| FileId::of(&m) == tracked.id),
                };
            }
        }
    }

    fn open(&self, id: FileId, log: LogFile, resume: Option<Entry>) -> Option<Tracked> {
        let file = match File::open(&log.path) {
            Ok(file) => file,
            Err(error) => {
                tracing::debug!(path = %log.path.display(), %error, "cannot open a log file");
                return None;
            }
        };
        let size = file.metadata().ok().filter(|m| FileId::of(m) == id)?.len();
        let now = Instant::now();
        let mut tracked = Tracked {
            id,
            rotated_at: (!log.live).then_some(now),
            info: Arc::new(log),
            file: Some(file),
            offset: 0,
            line: Vec::new(),
            assembler: Assembler::new(self.max_line_bytes),
            skip_until: 0,
            fingerprint: Fingerprint::default(),
            size: 0,
            seen: true,
            gone: false,
            grew_at: now,
        };
        if let Some(entry) = resume {
            let same = tracked
                .file
                .as_ref()
                .is_some_and(|f| entry.fingerprint.matches(f));
            if same && entry.restart <= size && entry.delivered <= size {
                tracked.offset = entry.restart;
                tracked.skip_until = entry.delivered;
                tracked.fingerprint = entry.fingerprint;
                tracked.size = size;
            } else {
                tracing::info!(path = %tracked.info.path.display(), "log file changed while the agent was away; reading it from the start");
            }
        }
        Some(tracked)
    }

    /// Scans (when asked), then reads every file, at most `budget` bytes in all.
    pub fn step(&mut self, rescan: bool, budget: usize) -> Step {
        let mut step = Step::default();
        if rescan || !self.scanned {
            self.scan();
            if !self.scanned {
                self.scanned = true;
                // Checkpoint entries whose file is gone: nothing left to resume.
                for id in std::mem::take(&mut self.resume).into_keys() {
                    step.ops.push(Op::Forget(id));
                }
            }
        }
        // Rotated (older) files first; then by path, so output order is stable.
        let mut order: Vec<(bool, PathBuf, FileId)> = self
            .files
            .values()
            .map(|t| (t.info.live, t.info.path.clone(), t.id))
            .collect();
        order.sort();
        let mut left = budget;
        let mut finished = Vec::new();
        for (_, _, id) in order {
            let Some(tracked) = self.files.get_mut(&id) else {
                continue;
            };
            let mut records = Vec::new();
            let allowed = left.min(READ_PER_FILE_PER_STEP);
            match tracked.read(&mut self.buffer, self.max_line_bytes, allowed, &mut records) {
                Ok((taken, more)) => {
                    left -= taken.min(left);
                    step.more |= more;
                    let idle = tracked.grew_at.elapsed() >= self.rotated_idle
                        && tracked
                            .rotated_at
                            .is_some_and(|at| at.elapsed() >= self.rotated_idle);
                    if !more && (tracked.gone || (idle && tracked.file.is_some())) {
                        tracked.finish(&mut records);
                        finished.push(id);
                    }
                }
                Err(error) => {
                    tracing::warn!(path = %tracked.info.path.display(), %error, "cannot read a log file");
                    if tracked.gone {
                        tracked.finish(&mut records);
                        finished.push(id);
                    }
                }
            }
            step.lines += records.len() as u64;
            if let Some(chunk) = tracked.chunk(records) {
                step.ops.push(Op::Chunk(chunk));
            }
        }
        for id in finished {
            let Some(tracked) = self.files.get_mut(&id) else {
                continue;
            };
            tracked.file = None;
            if tracked.gone {
                self.files.remove(&id);
                step.ops.push(Op::Forget(id));
            }
        }
        // A finished rotated file is kept (closed) until it vanishes, so it is not new.
        self.files.retain(|id, t| {
            let drop = t.gone && t.file.is_none();
            if drop {
                step.ops.push(Op::Forget(*id));
            }
            !drop
        });
        for tracked in self.files.values() {
            if tracked.file.is_some() {
                step.files += 1;
                step.behind += tracked.size.saturating_sub(tracked.offset);
            }
        }
        step
    }
}
