//! Where each file was delivered up to, kept across restarts.
//!
//! Files are known by (device, inode) because rotation renames them: the path is kept only
//! to say which file it was. Inodes are reused once a file is deleted, so each entry also
//! holds a hash of the file's first bytes; a file whose first bytes differ is another file
//! and is read from its start. The checkpoint is written whole to a temporary file, fsync'd
//! and renamed over the old one, so a crash leaves either the old or the new checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::LogsError;

/// How many leading bytes the fingerprint covers (fewer while the file is shorter).
pub const FINGERPRINT_BYTES: u64 = 1024;

const FILE_NAME: &str = "logs-checkpoint.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

/// A hash of a file's first `len` bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub len: u64,
    pub hash: u64,
}

impl Fingerprint {
    /// The fingerprint of the first `min(upto, FINGERPRINT_BYTES)` bytes of `file`.
    pub fn of(file: &std::fs::File, upto: u64) -> std::io::Result<Self> {
        let len = upto.min(FINGERPRINT_BYTES);
        let mut buffer = vec![0; len as usize];
        file.read_exact_at(&mut buffer, 0)?;
        Ok(Self {
            len,
            hash: xxhash_rust::xxh64::xxh64(&buffer, 0),
        })
    }

    /// Whether `file` still starts with the bytes this fingerprint was taken from.
    pub fn matches(&self, file: &std::fs::File) -> bool {
        Self::of(file, self.len).is_ok_and(|now| now == *self)
    }
}

/// One file's delivered position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: FileId,
    pub path: PathBuf,
    /// Where to start reading after a restart (before any partial line not yet complete).
    pub restart: u64,
    /// End of the last line delivered: records ending at or before it are not sent again.
    pub delivered: u64,
    pub fingerprint: Fingerprint,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    files: Vec<Entry>,
}

/// The checkpoint file in its directory.
#[derive(Debug)]
pub struct Checkpoints {
    dir: PathBuf,
    pub entries: HashMap<FileId, Entry>,
    /// A checkpoint was there at start: this is not the agent's first run on the node.
    pub existed: bool,
}

impl Checkpoints {
    /// Reads the checkpoint in `dir` (creating the directory); none yet is an empty one.
    /// A damaged file is an error rather than a silent restart from scratch, which would
    /// ship every log on the node again.
    pub fn load(dir: &Path) -> Result<Self, LogsError> {
        let io = |source| LogsError::Checkpoint {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                let on_disk: OnDisk =
                    serde_json::from_slice(&bytes).map_err(|e| LogsError::CheckpointDamaged {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if on_disk.version != 1 {
                    return Err(LogsError::CheckpointDamaged {
                        path,
                        reason: format!("unknown version {}", on_disk.version),
                    });
                }
                on_disk.files.into_iter().map(|e| (e.id, e)).collect()
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(error) => return Err(io(error)),
        };
        let checkpoints = Self {
            dir: dir.to_path_buf(),
            entries,
            existed,
        };
        if !existed {
            // Written at once, so the next start knows this was not the first.
            write(dir, &checkpoints.encode())?;
        }
        Ok(checkpoints)
    }

    /// The serialized checkpoint, ready for [`write`] (done off the async threads).
    pub fn encode(&self) -> Vec<u8> {
        let mut files: Vec<Entry> = self.entries.values().cloned().collect();
        files.sort_by_key(|e| e.id);
        // Serializing plain structs to a Vec cannot fail.
        serde_json::to_vec(&OnDisk { version: 1, files }).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Replaces the checkpoint in `dir` with `bytes`: temp file, fsync, rename, fsync the
/// directory (so the rename itself survives a crash).
pub fn write(dir: &Path, bytes: &[u8]) -> Result<(), LogsError> {
    let io = |source| LogsError::Checkpoint {
        path: dir.to_path_buf(),
        source,
    };
    let temp = dir.join(format!("{FILE_NAME}.tmp"));
    let mut file = std::fs::File::create(&temp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&temp, dir.join(FILE_NAME)).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_write_and_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut checkpoints = Checkpoints::load(&dir.path().join("c")).expect("load");
        assert!(checkpoints.entries.is_empty());
        let id = FileId { dev: 1, ino: 2 };
        checkpoints.entries.insert(
            id,
            Entry {
                id,
                path: "/x/0.log".into(),
                restart: 10,
                delivered: 20,
                fingerprint: Fingerprint { len: 5, hash: 7 },
            },
        );
        write(checkpoints.dir(), &checkpoints.encode()).expect("write");
        let again = Checkpoints::load(&dir.path().join("c")).expect("load");
        assert_eq!(again.entries, checkpoints.entries);
        assert!(
            !dir.path()
                .join("c")
                .join(format!("{FILE_NAME}.tmp"))
                .exists()
        );
    }

    #[test]
    fn a_damaged_checkpoint_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE_NAME), b"{\"version\":1,\"fi").expect("write");
        let error = Checkpoints::load(dir.path()).expect_err("damaged");
        assert!(error.to_string().contains(FILE_NAME), "{error}");
    }

    #[test]
    fn fingerprints_tell_files_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello world").expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let print = Fingerprint::of(&file, 5).expect("fingerprint");
        assert_eq!(print.len, 5);
        assert!(print.matches(&file));
        std::fs::write(&path, b"HELLO world").expect("write");
        assert!(!print.matches(&file));
        std::fs::write(&path, b"hel").expect("write");
        assert!(!print.matches(&file), "shorter than the fingerprint");
    }
}
