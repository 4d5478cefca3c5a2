use std::io;
use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid label matcher {0}")]
    BadMatcher(String),
    #[error("corrupt data in {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot decode a bus record: {0}")]
    Decode(String),
    #[error("parquet: {0}")]
    Parquet(String),
    #[error("query: {0}")]
    Query(String),
    #[error("invalid storage configuration: {0}")]
    Config(String),
    #[error("the store is closed")]
    Closed,
}

impl StorageError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Whether retrying the same operation later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Parquet(_))
    }
}

impl From<datafusion::parquet::errors::ParquetError> for StorageError {
    fn from(error: datafusion::parquet::errors::ParquetError) -> Self {
        Self::Parquet(error.to_string())
    }
}

impl From<datafusion::arrow::error::ArrowError> for StorageError {
    fn from(error: datafusion::arrow::error::ArrowError) -> Self {
        Self::Parquet(error.to_string())
    }
}

impl From<model::remote_write::WireError> for StorageError {
    fn from(error: model::remote_write::WireError) -> Self {
        Self::Decode(error.to_string())
    }
}
