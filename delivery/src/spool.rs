//! Requests kept on disk while the gateway does not take them, so an agent that restarts
//! (or is rescheduled onto the same node) sends them after all.
//!
//! One file per compressed request, named by a sequence number so order survives a restart:
//! written under a temporary name, fsync'd, then renamed, so a crash leaves either a whole
//! request or a temporary file (deleted at the next start). Each file starts with the CRC32C
//! of its body and its sample count; a file whose body does not match is dropped and
//! counted, never sent. The sample count is in the name too (`<seq>-<samples>.req`), so a
//! file cut inside its header is still counted when it is dropped.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

const HEADER: usize = 4 + 8;
const SUFFIX: &str = "req";

/// One request on disk.
#[derive(Clone, Debug)]
pub(crate) struct Spooled {
    pub(crate) seq: u64,
    pub(crate) path: PathBuf,
    pub(crate) samples: u64,
    /// Bytes of the body (what counts against the buffer bound).
    pub(crate) len: usize,
}

#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    next_seq: u64,
}

fn header_of(path: &Path) -> std::io::Result<(u32, u64, usize)> {
    let mut file = std::fs::File::open(path)?;
    let mut header = [0u8; HEADER];
    std::io::Read::read_exact(&mut file, &mut header)?;
    let crc = u32::from_le_bytes(header[..4].try_into().unwrap_or_default());
    let samples = u64::from_le_bytes(header[4..].try_into().unwrap_or_default());
    let len = file.metadata()?.len() as usize;
    Ok((crc, samples, len.saturating_sub(HEADER)))
}

/// `<seq>-<samples>`, or `<seq>` as files were named before the count joined the name.
fn parse_name(stem: &str) -> Option<(u64, Option<u64>)> {
    match stem.split_once('-') {
        Some((seq, samples)) => Some((seq.parse().ok()?, Some(samples.parse().ok()?))),
        None => Some((stem.parse().ok()?, None)),
    }
}

impl Spool {
    /// Opens (creating) `dir`; returns the requests already there, oldest first.
    pub(crate) fn open(dir: &Path) -> std::io::Result<(Self, Vec<Spooled>)> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".tmp") {
                // A write a crash cut short: it was never acknowledged as buffered.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some((seq, named_samples)) = name
                .strip_suffix(&format!(".{SUFFIX}"))
                .and_then(parse_name)
            else {
                continue;
            };
            match (header_of(&path), named_samples) {
                (Ok((_, samples, len)), _) => found.push(Spooled {
                    seq,
                    path,
                    samples,
                    len,
                }),
                // Queued like the others: the sender finds it damaged and counts its samples.
                (Err(error), Some(samples)) => {
                    tracing::warn!(path = %path.display(), %error, "buffered request cut short; it will be dropped and counted");
                    found.push(Spooled {
                        seq,
                        path,
                        samples,
                        len: 0,
                    });
                }
                (Err(error), None) => {
                    tracing::warn!(path = %path.display(), %error, "unreadable buffered request; removed");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        found.sort_by_key(|s| s.seq);
        let next_seq = found.last().map_or(0, |s| s.seq + 1);
        Ok((
            Self {
                dir: dir.to_path_buf(),
                next_seq,
            },
            found,
        ))
    }

    /// A sequence number for a request, taken when the request is made, so one written
    /// later (at close) still sorts where it was queued.
    pub(crate) fn reserve(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    /// Writes request `seq` durably.
    pub(crate) fn write(
        &mut self,
        seq: u64,
        body: &[u8],
        samples: u64,
    ) -> std::io::Result<Spooled> {
        let path = self.dir.join(format!("{seq:020}-{samples}.{SUFFIX}"));
        let temporary = self.dir.join(format!("{seq:020}.tmp"));
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&crc32c::crc32c(body).to_le_bytes())?;
        file.write_all(&samples.to_le_bytes())?;
        file.write_all(body)?;
        file.sync_data()?;
        std::fs::rename(&temporary, &path)?;
        Ok(Spooled {
            seq,
            path,
            samples,
            len: body.len(),
        })
    }

    /// The body of a spooled request; `None` if it is gone or damaged.
    pub(crate) fn read(spooled: &Spooled) -> Option<Bytes> {
        let data = std::fs::read(&spooled.path).ok()?;
        if data.len() < HEADER {
            return None;
        }
        let crc = u32::from_le_bytes(data[..4].try_into().ok()?);
        let body = &data[HEADER..];
        (crc32c::crc32c(body) == crc).then(|| Bytes::copy_from_slice(body))
    }

    pub(crate) fn remove(spooled: &Spooled) {
        if let Err(error) = std::fs::remove_file(&spooled.path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %spooled.path.display(), %error, "cannot remove a sent request");
        }
    }
}
