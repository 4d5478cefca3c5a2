use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Everything the bus can fail with. Each variant says whether retrying can help
/// ([`BusError::is_retryable`]), which is what the gateway needs to choose between a 4xx and
/// a 503.
#[derive(Debug, Error)]
pub enum BusError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("topic {topic:?} does not exist")]
    UnknownTopic { topic: String },
    #[error("topic {topic:?} has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error("topic {topic:?} exists with {existing} partitions, not {requested}")]
    PartitionCountMismatch {
        topic: String,
        existing: u32,
        requested: u32,
    },
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("record of {size} bytes is larger than the limit of {limit} bytes")]
    RecordTooLarge { size: u64, limit: u64 },
    #[error(
        "offset {requested} of {topic}/{partition} is before the log start {log_start} (removed by retention)"
    )]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        requested: u64,
        log_start: u64,
    },
    #[error("corrupt record batch in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error(
        "partition {topic}/{partition} stopped accepting writes after an I/O failure: {reason}"
    )]
    PartitionFailed {
        topic: String,
        partition: u32,
        reason: String,
    },
    #[error("partition {topic}/{partition} is not assigned to this consumer of group {group:?}")]
    NotAssigned {
        group: String,
        topic: String,
        partition: u32,
    },
    #[error(
        "another process is using the bus directory (it holds {path}); stop it, or give this one its own data directory"
    )]
    Locked { path: PathBuf },
    #[error("the bus is closed")]
    Closed,
    #[error("invalid bus configuration: {0}")]
    Config(String),
    /// A failure reported by Kafka (the broker or the client library) that no variant above
    /// describes. `retryable` is decided from Kafka's error code when the error is made.
    #[error("kafka: {action}: {reason}")]
    Kafka {
        action: &'static str,
        reason: String,
        retryable: bool,
    },
}

impl BusError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Whether the same request may succeed later (disk full, shutting down, broker away),
    /// as opposed to a request that is wrong and will always fail.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Kafka { retryable, .. } => *retryable,
            _ => matches!(
                self,
                Self::Io { .. }
                    | Self::PartitionFailed { .. }
                    | Self::Closed
                    | Self::NotAssigned { .. }
            ),
        }
    }
}

pub type Result<T, E = BusError> = std::result::Result<T, E>;

/// Kafka's rule for topic names, used by both engines for topics and consumer groups (the
/// embedded bus makes both into file names; Kafka refuses other topic names).
pub(crate) fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(BusError::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 249 {
        return invalid("must be 1 to 249 characters long");
    }
    if name == "." || name == ".." {
        return invalid("must not be \".\" or \"..\"");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return invalid("may only contain ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}
