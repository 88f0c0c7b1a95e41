//! What can go wrong in a partition log, in terms a caller can act on.

use std::io;
use std::path::PathBuf;

use sluice_proto::batch::HeaderError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("disk full while writing {path}: free space, then retry; nothing was appended")]
    DiskFull { path: PathBuf },
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] HeaderError),
    #[error("entry payload of {len} bytes exceeds the {max}-byte limit")]
    PayloadTooLarge { len: usize, max: usize },
    #[error("Raft index {got} does not follow the last index {last}: the log takes no holes")]
    NotContiguous { last: u64, got: u64 },
    #[error("Raft term {got} is below the last entry's term {last}")]
    TermRegression { last: u64, got: u64 },
    #[error("offset {requested} is outside the log [{start}, {end}): seek to a valid offset")]
    OffsetOutOfRange {
        requested: u64,
        start: u64,
        end: u64,
    },
    #[error("corrupt log {path} at byte {position}: {detail}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        detail: String,
    },
    #[error("invalid log configuration: {0}")]
    Config(String),
}

impl LogError {
    /// Wraps an I/O error, singling out a full disk so callers can say so.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            Self::DiskFull { path }
        } else {
            Self::Io { op, path, source }
        }
    }
}
