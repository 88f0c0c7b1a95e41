//! Small versioned state files written atomically, and the `raft-meta` file of a group
//! (vote, committed log id, last purged log id).
//!
//! Owns: the on-disk format of these files (one format-version byte, then JSON) and the
//! write protocol (write a temporary file, fsync it, rename it over the old one, fsync
//! the directory), so a crash leaves either the old or the new file, never a mix. Must
//! never hold log data and never write outside the group's directory.
//!
//! JSON because these files are tiny, rare to write and worth reading by hand; the
//! version byte lets a later openraft, whose serde encodings are not stable, migrate them.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::types::{LogId, Vote};

/// Format version of the `raft-meta` and `sm-state` files.
pub const STATE_FILE_VERSION: u8 = 1;

/// How often, at most, a moving committed log id is written out (it is advisory:
/// a stale one only means more entries are re-applied at start).
const COMMITTED_FLUSH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum StateFileError {
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} has format version {version}; this broker reads version {STATE_FILE_VERSION}")]
    UnsupportedVersion { path: PathBuf, version: u8 },
    #[error("{path} is unreadable: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

impl StateFileError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<StateFileError> for io::Error {
    fn from(e: StateFileError) -> Self {
        match e {
            StateFileError::Io { source, .. } => source,
            other => io::Error::other(other),
        }
    }
}

/// Replaces `path` with `value`, durably and atomically.
pub fn write_state<T: Serialize>(path: &Path, value: &T) -> Result<(), StateFileError> {
    let mut body = vec![STATE_FILE_VERSION];
    serde_json::to_writer(&mut body, value).map_err(|e| StateFileError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("cannot encode: {e}"),
    })?;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| StateFileError::io("create", &tmp, e))?;
    f.write_all(&body)
        .map_err(|e| StateFileError::io("write", &tmp, e))?;
    f.sync_all()
        .map_err(|e| StateFileError::io("fsync", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| StateFileError::io("rename", path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StateFileError::io("fsync dir", dir, e))
}

/// Reads a file written by [`write_state`]; `None` if it does not exist.
pub fn read_state<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateFileError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateFileError::io("read", path, e)),
    };
    let Some((&version, body)) = bytes.split_first() else {
        return Err(StateFileError::Corrupt {
            path: path.to_path_buf(),
            detail: "empty file".into(),
        });
    };
    if version != STATE_FILE_VERSION {
        return Err(StateFileError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| StateFileError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

/// What `raft-meta` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MetaState {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
}

/// The `raft-meta` file and its in-memory copy, shared by the log store and its readers.
#[derive(Debug)]
pub struct MetaStore {
    path: PathBuf,
    state: Mutex<MetaState>,
    /// Serializes writers; whoever holds it writes the newest state.
    write: Mutex<Instant>,
}

impl MetaStore {
    pub fn open(path: PathBuf) -> Result<Self, StateFileError> {
        let state = read_state::<MetaState>(&path)?.unwrap_or_default();
        Ok(Self {
            path,
            state: Mutex::new(state),
            write: Mutex::new(Instant::now()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, MetaState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> MetaState {
        self.lock().clone()
    }

    pub fn vote(&self) -> Option<Vote> {
        self.lock().vote
    }

    pub fn purged(&self) -> Option<LogId> {
        self.lock().purged
    }

    pub fn committed(&self) -> Option<LogId> {
        self.lock().committed
    }

    pub fn set_vote(&self, vote: Vote) {
        self.lock().vote = Some(vote);
    }

    pub fn set_purged(&self, purged: LogId) {
        let mut s = self.lock();
        if s.purged.is_none_or(|p| p < purged) {
            s.purged = Some(purged);
        }
    }

    /// Records the committed id; returns whether it is time to write it out.
    pub fn set_committed(&self, committed: Option<LogId>) -> bool {
        self.lock().committed = committed;
        let last = *self.write.lock().unwrap_or_else(|p| p.into_inner());
        last.elapsed() >= COMMITTED_FLUSH_INTERVAL
    }

    /// Writes the current state out durably (blocking).
    pub fn persist(&self) -> Result<(), StateFileError> {
        let mut last = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.state();
        write_state(&self.path, &state)?;
        *last = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::log_id;

    #[test]
    fn meta_round_trips_and_rejects_unknown_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft-meta");
        let store = MetaStore::open(path.clone()).expect("open");
        assert_eq!(store.state(), MetaState::default());
        store.set_vote(Vote::new(3, 1));
        store.set_purged(log_id(2, 10));
        store.set_purged(log_id(1, 5));
        store.set_committed(Some(log_id(3, 20)));
        store.persist().expect("persist");
        let again = MetaStore::open(path.clone()).expect("reopen");
        assert_eq!(again.state(), store.state());
        assert_eq!(again.purged(), Some(log_id(2, 10)));
        assert!(!dir.path().join("raft-meta.tmp").exists());

        fs::write(&path, [9u8, b'{', b'}']).expect("write");
        assert!(matches!(
            MetaStore::open(path.clone()),
            Err(StateFileError::UnsupportedVersion { version: 9, .. })
        ));
        fs::write(&path, [STATE_FILE_VERSION, b'x']).expect("write");
        assert!(matches!(
            MetaStore::open(path),
            Err(StateFileError::Corrupt { .. })
        ));
    }
}
