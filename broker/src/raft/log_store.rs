//! openraft's `RaftLogStorage` and `RaftLogReader` over the partition's segmented
//! [`Log`]: the log *is* the Raft log, there is no second copy of the data.
//!
//! Owns: the mapping between openraft entries and log frames, the group-commit flusher
//! that acknowledges appends to openraft in order once they are fsynced, the
//! acks=leader notifications, and the `raft-meta` file (vote, committed, last purged).
//! Every append, truncation and purge is mirrored into the group's [`RecentEntries`],
//! which the reader serves from first.
//! Must never re-encode a record batch (the log stamps it in place), never acknowledge
//! an append before its fsync, and never hand openraft an entry at or below the last
//! purged id.
//!
//! Frames: `Normal(batch)` is a data frame (the log stamps base offset and term into the
//! batch), `Blank` a blank frame with no payload, `Membership` a membership frame whose
//! payload is a format-version byte then the membership as JSON.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend, RaftLogReader};
use sluice_proto::batch::BatchHeader;
use tokio::sync::{mpsc, oneshot};

use super::meta::{MetaStore, StateFileError};
use super::recent::RecentEntries;
use super::types::{Entry, LogId, Membership, RecordBatch, TypeConfig, Vote, entry_id, to_log_id};
use crate::log::{EntryKind, Frame, Log, LogError, NewEntry, Ticket};

/// Format version of a membership frame's payload.
pub const MEMBERSHIP_FORMAT_VERSION: u8 = 1;

/// Most payload bytes one replication read returns (always at least one entry).
pub const DEFAULT_MAX_APPEND_BYTES: usize = 8 << 20;

/// The first storage error of a group, kept typed so callers can tell a full disk from
/// other failures after openraft has turned it into a fatal error.
#[derive(Debug, Default)]
pub struct StorageFailure {
    first: Mutex<Option<Arc<LogError>>>,
}

impl StorageFailure {
    /// Remembers `e` (if it is the first) and turns it into the error openraft wants.
    pub fn record(&self, e: LogError) -> io::Error {
        let e = Arc::new(e);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e.clone());
        }
        io::Error::other(e)
    }

    pub fn get(&self) -> Option<Arc<LogError>> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Writers waiting to hear that their batch is appended and fsynced on the leader
/// (acks=leader). A batch is recognised by the address and length of its bytes: openraft
/// moves the caller's `Bytes` into the entry it appends, so they arrive here unchanged.
#[derive(Debug, Default)]
pub struct LeaderAcks {
    waiting: AtomicUsize,
    next_id: AtomicU64,
    map: Mutex<HashMap<(usize, usize), Vec<Registration>>>,
    #[cfg(test)]
    pub(crate) delivered: AtomicUsize,
}

/// One waiting writer. It keeps its batch alive, so no other batch can take the same
/// address while it waits.
#[derive(Debug)]
struct Registration {
    id: u64,
    _batch: Bytes,
    tx: oneshot::Sender<u64>,
}

/// A registration in [`LeaderAcks`]; dropping it withdraws the registration.
pub struct AckWaiter {
    acks: Arc<LeaderAcks>,
    key: (usize, usize),
    id: u64,
    /// Receives the batch's base offset once it is durable in the leader's log.
    pub appended: oneshot::Receiver<u64>,
}

impl Drop for AckWaiter {
    fn drop(&mut self) {
        self.acks.withdraw(self.key, self.id);
    }
}

fn batch_key(batch: &Bytes) -> (usize, usize) {
    (batch.as_ptr() as usize, batch.len())
}

impl LeaderAcks {
    pub fn register(self: &Arc<Self>, batch: &Bytes) -> AckWaiter {
        let key = batch_key(batch);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_default().push(Registration {
            id,
            _batch: batch.clone(),
            tx,
        });
        self.waiting.fetch_add(1, Ordering::AcqRel);
        AckWaiter {
            acks: self.clone(),
            key,
            id,
            appended: rx,
        }
    }

    fn withdraw(&self, key: (usize, usize), id: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(&key)
            && let Some(pos) = list.iter().position(|r| r.id == id)
        {
            list.remove(pos);
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if list.is_empty() {
                map.remove(&key);
            }
        }
    }

    fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    fn take(&self, batch: &Bytes) -> Option<oneshot::Sender<u64>> {
        let key = batch_key(batch);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get_mut(&key)?;
        let tx = list.remove(0).tx;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        if list.is_empty() {
            map.remove(&key);
        }
        Some(tx)
    }

    fn deliver(&self, tx: oneshot::Sender<u64>, base_offset: u64) {
        #[cfg(test)]
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let _ = tx.send(base_offset);
    }
}

/// Work for the flusher, in append order.
enum FlushJob {
    Append {
        ticket: Ticket,
        callback: IOFlushed<TypeConfig>,
        acks: Vec<(oneshot::Sender<u64>, u64)>,
    },
    Barrier(oneshot::Sender<()>),
}

/// Acknowledges appends in order once they are durable. Waiting for one ticket syncs
/// everything appended so far, so the appends queued behind it find themselves durable
/// and cost no further fsync (group commit), while openraft hears about them in order.
async fn run_flusher(
    log: Arc<Log>,
    acks: Arc<LeaderAcks>,
    failure: Arc<StorageFailure>,
    mut jobs: mpsc::UnboundedReceiver<FlushJob>,
) {
    while let Some(job) = jobs.recv().await {
        match job {
            FlushJob::Append {
                ticket,
                callback,
                acks: waiting,
            } => match log.flush(ticket).await {
                Ok(()) => {
                    for (tx, base) in waiting {
                        acks.deliver(tx, base);
                    }
                    callback.io_completed(Ok(()));
                }
                Err(e) => callback.io_completed(Err(failure.record(e))),
            },
            FlushJob::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// The group's `RaftLogStorage`.
pub struct LogStore {
    log: Arc<Log>,
    meta: Arc<MetaStore>,
    recent: Arc<RecentEntries>,
    acks: Arc<LeaderAcks>,
    failure: Arc<StorageFailure>,
    flusher: mpsc::UnboundedSender<FlushJob>,
    max_append_bytes: usize,
}

impl LogStore {
    /// Wraps an open log and its meta file. Spawns the flusher on the current Tokio
    /// runtime; it ends when the store is dropped.
    pub fn new(
        log: Arc<Log>,
        meta: Arc<MetaStore>,
        recent: Arc<RecentEntries>,
        acks: Arc<LeaderAcks>,
        failure: Arc<StorageFailure>,
        max_append_bytes: usize,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_flusher(log.clone(), acks.clone(), failure.clone(), rx));
        Self {
            log,
            meta,
            recent,
            acks,
            failure,
            flusher: tx,
            max_append_bytes: max_append_bytes.max(1),
        }
    }

    fn reader(&self) -> LogReader {
        LogReader {
            log: self.log.clone(),
            meta: self.meta.clone(),
            recent: self.recent.clone(),
            failure: self.failure.clone(),
            max_append_bytes: self.max_append_bytes,
        }
    }

    /// Waits until every append queued before is acknowledged, so a vote, truncation or
    /// purge is ordered after them.
    async fn barrier(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.flusher
            .send(FlushJob::Barrier(tx))
            .map_err(|_| io::Error::other("log flusher stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("log flusher stopped"))
    }

    /// Writes the vote and committed id. An I/O failure counts as the group's storage
    /// failure like a log write's, so a full disk while voting also reads as DISK_FULL.
    async fn persist_meta(&self) -> io::Result<()> {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || meta.persist())
            .await
            .map_err(io::Error::other)?
            .map_err(|e| match e {
                StateFileError::Io { op, path, source } => {
                    self.storage(LogError::io(op, path, source))
                }
                other => io::Error::from(other),
            })
    }

    fn storage(&self, e: LogError) -> io::Error {
        self.failure.record(e)
    }
}

/// Encodes a membership as a frame payload.
pub fn encode_membership(m: &Membership) -> io::Result<Vec<u8>> {
    let mut out = vec![MEMBERSHIP_FORMAT_VERSION];
    serde_json::to_writer(&mut out, m).map_err(io::Error::other)?;
    Ok(out)
}

fn decode_membership(payload: &[u8]) -> io::Result<Membership> {
    match payload.split_first() {
        Some((&MEMBERSHIP_FORMAT_VERSION, body)) => {
            serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        }
        Some((v, _)) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("membership entry has unknown format version {v}"),
        )),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "membership entry is empty",
        )),
    }
}

/// Rebuilds the openraft entry a frame holds.
pub fn frame_to_entry(frame: Frame) -> io::Result<Entry> {
    let payload = match frame.kind {
        EntryKind::Data => EntryPayload::Normal(RecordBatch(frame.payload)),
        EntryKind::Blank => EntryPayload::Blank,
        EntryKind::Membership => EntryPayload::Membership(decode_membership(&frame.payload)?),
    };
    Ok(Entry {
        log_id: to_log_id(frame.id),
        payload,
    })
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let purged = self.meta.purged();
        let last = self.log.last_id().map(to_log_id);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: std::cmp::max(last, purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.barrier().await?;
        self.meta.set_vote(*vote);
        self.persist_meta().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        if self.meta.set_committed(committed) {
            // Advisory: written in the background, at most every so often.
            let meta = self.meta.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = meta.persist() {
                    tracing::warn!(error = %e, "could not write the committed log id");
                }
            });
        }
        Ok(())
    }

    /// The saved committed id, but never past the log's last entry: recovery may have
    /// cut a damaged tail that held committed entries (the rest of the group still has
    /// them), and openraft re-applies up to this id at start. What the log kept up to
    /// there was committed then; the leader re-sends the rest.
    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        let committed = self.meta.committed();
        Ok(match (committed, self.log.last_id()) {
            (Some(c), Some(last)) if c.index > last.index => {
                tracing::warn!(dir = %self.log.dir().display(), committed = %c, last = ?last, "the log ends before its committed id; committed entries will come from the leader");
                Some(to_log_id(last))
            }
            (Some(_), None) => None,
            (c, _) => c,
        })
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut encoded: Vec<Option<Vec<u8>>> = Vec::with_capacity(entries.len());
        for e in &entries {
            encoded.push(match &e.payload {
                EntryPayload::Membership(m) => Some(encode_membership(m)?),
                _ => None,
            });
        }
        let new: Vec<NewEntry<'_>> = entries
            .iter()
            .zip(&encoded)
            .map(|(e, enc)| {
                let (kind, payload): (EntryKind, &[u8]) = match &e.payload {
                    EntryPayload::Normal(batch) => (EntryKind::Data, &batch.0),
                    EntryPayload::Membership(_) => {
                        (EntryKind::Membership, enc.as_deref().unwrap_or_default())
                    }
                    EntryPayload::Blank => (EntryKind::Blank, &[]),
                };
                NewEntry {
                    id: entry_id(&e.log_id),
                    kind,
                    payload,
                }
            })
            .collect();
        let appended = match self.log.append(&new) {
            Ok(a) => a,
            Err(e) => {
                // What the log kept of a failed append is unknown here.
                self.recent.clear();
                return Err(self.storage(e));
            }
        };

        let mut waiting = Vec::new();
        if self.acks.is_waiting() {
            let mut next = appended.first_offset;
            for e in &entries {
                if let EntryPayload::Normal(batch) = &e.payload {
                    let base = next;
                    next += BatchHeader::parse(&batch.0).map_or(0, |h| h.offset_count());
                    if let Some(tx) = self.acks.take(&batch.0) {
                        waiting.push((tx, base));
                    }
                }
            }
        }
        drop(new);
        self.recent.appended(entries);
        self.flusher
            .send(FlushJob::Append {
                ticket: appended.ticket,
                callback,
                acks: waiting,
            })
            .map_err(|_| io::Error::other("log flusher stopped"))
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> io::Result<()> {
        self.barrier().await?;
        self.recent.truncate_after(last.map(|l| l.index));
        self.log
            .truncate_after(last.map(|l| l.index))
            .map_err(|e| self.storage(e))
    }

    async fn purge(&mut self, upto: LogId) -> io::Result<()> {
        self.barrier().await?;
        // Record the purge first: a crash before the segments go leaves entries that are
        // merely hidden, never a gap between the purged id and the first entry.
        self.meta.set_purged(upto);
        self.persist_meta().await?;
        let id = entry_id(&upto);
        self.recent.release_through(id.index);
        let beyond_end = self.log.last_id().is_none_or(|last| last.index < id.index);
        if beyond_end {
            // Nothing past `upto` is kept: restart the log right after it so the next
            // append must follow it.
            self.log
                .reset(self.log.next_offset(), Some(id))
                .map_err(|e| self.storage(e))?;
        } else {
            self.log
                .purge_through(id.index)
                .map_err(|e| self.storage(e))?;
        }
        Ok(())
    }
}

/// Reads entries for replication and the state machine, from memory while they are
/// recent ([`RecentEntries`]), else from the log; cheap to clone.
#[derive(Clone)]
pub struct LogReader {
    log: Arc<Log>,
    meta: Arc<MetaStore>,
    recent: Arc<RecentEntries>,
    failure: Arc<StorageFailure>,
    max_append_bytes: usize,
}

impl LogReader {
    fn read(&self, range: impl RangeBounds<u64>, max_bytes: usize) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let floor = self.meta.purged().map_or(0, |p| p.index + 1);
        let start = start.max(floor);
        if start >= end {
            return Ok(Vec::new());
        }
        if let Some(entries) = self.recent.read(start..end, max_bytes) {
            return Ok(entries);
        }
        let frames = self
            .log
            .entries(start..end, max_bytes)
            .map_err(|e| self.failure.record(e))?;
        frames.into_iter().map(frame_to_entry).collect()
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        self.read(range, usize::MAX)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.meta.vote())
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        self.read(start..end, self.max_append_bytes)
    }
}
