//! `Log`: the ordered segments of one partition, which are also its Raft log.
//!
//! The log owns the segment list and is the one place that rolls, truncates, purges
//! and applies retention. Appends and index lookups take a short lock; reads then walk
//! the mapped bytes without it; durability is group commit ([`super::commit`]).
//!
//! Invariants: Raft indexes are contiguous across segments and terms never go back;
//! offsets are dense (a data entry's base offset is the previous next offset); the
//! last segment is the only one written to; at least one segment always exists.

use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::LogError;
use super::commit::{GroupCommit, SyncPlan, Ticket};
use super::config::LogConfig;
use super::frame::{EntryId, Frame};
use super::reader::{self, ReadBatches};
use super::retention::{self, SegmentStats};
use super::segment::{NewEntry, Role, Segment, SegmentView, Tail};

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Wait for this with [`Log::flush`] before acknowledging the append.
    pub ticket: Ticket,
    /// Base offset given to the first data entry of the append.
    pub first_offset: u64,
    /// Offset the next data entry will get.
    pub next_offset: u64,
}

pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    /// Opening cut a torn or garbled tail off the active segment.
    damaged: bool,
    inner: Mutex<Inner>,
    commit: GroupCommit,
}

struct Inner {
    /// Sorted by base offset; the last is the active segment.
    segments: Vec<Segment>,
    /// Bytes appended by this process: the ticket counter.
    written: Ticket,
    /// The segment sealed last, until a sync covers it, with the ticket at its seal.
    /// At most one: a roll syncs the previous one first, so recovery only ever finds
    /// a torn tail in the last two segments.
    unsynced: Option<(Ticket, Arc<File>)>,
}

impl Inner {
    fn active(&self) -> &Segment {
        self.segments.last().expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log always has a segment")
    }
}

impl Log {
    /// Opens the log in `dir` (creating it if needed) and recovers it: see
    /// [`Segment::open`] for what recovery checks.
    pub fn open(dir: impl Into<PathBuf>, config: LogConfig) -> Result<Self, LogError> {
        config.validate()?;
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| LogError::io("create log dir", &dir, e))?;
        let bases = segment_bases(&dir)?;
        let mut damaged = false;
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len().max(1));
        let mut bases = bases;
        let mut i = 0;
        while i < bases.len() {
            let base = bases[i];
            let prev = segments.last().map(Segment::tail);
            if let Some(p) = prev
                && p.next_offset != base
            {
                return Err(LogError::Corrupt {
                    path: dir.join(super::segment::file_stem(base)),
                    position: 0,
                    detail: format!(
                        "segment starts at offset {base}, expected {}",
                        p.next_offset
                    ),
                });
            }
            let role = match bases.len() - i {
                1 => Role::Active,
                2 => Role::SealedMaybeUnsynced,
                _ => Role::Sealed,
            };
            let open = |role| {
                Segment::open(
                    &dir,
                    base,
                    prev,
                    role,
                    config.segment_bytes,
                    config.index_interval_bytes,
                )
            };
            let mut seg = open(role)?;
            if role == Role::SealedMaybeUnsynced && seg.torn_tail() {
                // Its sync never finished, so nothing after it was acknowledged either:
                // the last segment goes, and this one becomes the active segment again.
                drop(seg);
                let last = bases.pop().unwrap_or(base);
                for ext in ["log", "index", "timeindex"] {
                    let path = dir.join(format!("{}.{ext}", super::segment::file_stem(last)));
                    if let Err(e) = std::fs::remove_file(&path)
                        && e.kind() != std::io::ErrorKind::NotFound
                    {
                        return Err(LogError::io("delete segment", path, e));
                    }
                }
                tracing::warn!(dir = %dir.display(), segment = last, "dropped the segment after a torn sealed segment");
                seg = open(Role::Active)?;
            }
            damaged |= seg.torn_tail();
            segments.push(seg);
            i += 1;
        }
        if segments.is_empty() {
            segments.push(Segment::create(
                &dir,
                Tail::new(0, None),
                config.segment_bytes,
                config.index_interval_bytes,
            )?);
            sync_dir(&dir)?;
        }
        Ok(Self {
            dir,
            config,
            damaged,
            inner: Mutex::new(Inner {
                segments,
                written: 0,
                unsynced: None,
            }),
            commit: GroupCommit::default(),
        })
    }

    /// Whether opening cut a torn or garbled tail: bytes that were written, and may
    /// have been acknowledged, are gone.
    pub fn recovered_damage(&self) -> bool {
        self.damaged
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the in-memory state unknown; the files
        // are still consistent, so carry on as recovery would.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends entries in order; every entry is checked before it is written. The
    /// entries are readable when this returns and durable once [`Log::flush`] of the
    /// returned ticket returns. If an append spanning a segment roll fails midway, the
    /// entries before the roll stay (the error says the log must be re-read).
    pub fn append(&self, entries: &[NewEntry<'_>]) -> Result<Appended, LogError> {
        if self.commit.has_failed() {
            return Err(LogError::io(
                "append",
                &self.dir,
                std::io::Error::other("an earlier fsync failed; reopen the log to recover"),
            ));
        }
        let mut inner = self.lock();
        let first_offset = inner.active().tail().next_offset;
        let mut rest = entries;
        while !rest.is_empty() {
            if self.should_roll(inner.active(), &rest[0]) {
                self.roll(&mut inner)?;
            }
            let room = self
                .config
                .segment_bytes
                .saturating_sub(inner.active().size());
            let mut take = 0;
            let mut bytes = 0;
            for e in rest {
                bytes += e.frame_len();
                if take > 0 && bytes > room {
                    break;
                }
                take += 1;
            }
            let written = inner.active_mut().append(&rest[..take])?;
            inner.written += written;
            rest = &rest[take..];
        }
        Ok(Appended {
            ticket: inner.written,
            first_offset,
            next_offset: inner.active().tail().next_offset,
        })
    }

    fn should_roll(&self, active: &Segment, next: &NewEntry<'_>) -> bool {
        let tail = active.tail();
        if active.size() == 0 || tail.next_offset == active.base_offset() {
            // Rolling now would reuse this segment's name.
            return false;
        }
        let full = active.size() + next.frame_len() > self.config.segment_bytes;
        let aged = self
            .config
            .segment_age
            .is_some_and(|age| active.age() >= age);
        let offsets_exhausted = tail.next_offset - active.base_offset() > u64::from(u32::MAX / 2);
        full || aged || offsets_exhausted
    }

    fn roll(&self, inner: &mut Inner) -> Result<(), LogError> {
        let tail = inner.active().tail();
        // At most one sealed segment waits for a sync (see `Inner::unsynced`). Early
        // writeback has had a whole segment's time to write it, so this is quick.
        if let Some((ticket, file)) = inner.unsynced.take()
            && !self.commit.is_durable(ticket)
        {
            file.sync_data()
                .map_err(|e| LogError::io("fsync", inner.active().path(), e))?;
        }
        inner.active_mut().seal()?;
        inner.unsynced = Some((inner.written, inner.active().file().clone()));
        let next = Segment::create(
            &self.dir,
            tail,
            self.config.segment_bytes,
            self.config.index_interval_bytes,
        )?;
        inner.segments.push(next);
        sync_dir(&self.dir)?;
        tracing::debug!(dir = %self.dir.display(), base_offset = tail.next_offset, "rolled segment");
        Ok(())
    }

    /// Rolls the active segment if it is older than `segment_age` and holds data.
    pub fn roll_if_aged(&self) -> Result<bool, LogError> {
        let mut inner = self.lock();
        let active = inner.active();
        let aged = self
            .config
            .segment_age
            .is_some_and(|age| active.age() >= age);
        if aged && active.tail().next_offset > active.base_offset() {
            self.roll(&mut inner)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Returns once the append that got `ticket` is on disk. Concurrent callers share
    /// one `fdatasync` (group commit).
    pub async fn flush(&self, ticket: Ticket) -> Result<(), LogError> {
        self.commit
            .wait(ticket, || {
                let mut inner = self.lock();
                SyncPlan {
                    target: inner.written,
                    files: self.files_to_sync(&mut inner),
                }
            })
            .await
            .map_err(|e| LogError::io("fsync", &self.dir, e))
    }

    /// The files a sync must cover now: the segment sealed last while a sync may
    /// not have covered it, then the active segment.
    fn files_to_sync(&self, inner: &mut Inner) -> Vec<Arc<File>> {
        if inner
            .unsynced
            .as_ref()
            .is_some_and(|(ticket, _)| self.commit.is_durable(*ticket))
        {
            inner.unsynced = None;
        }
        let mut files: Vec<Arc<File>> = inner.unsynced.iter().map(|(_, f)| f.clone()).collect();
        files.push(inner.active().file().clone());
        files
    }

    /// Makes everything appended so far durable, blocking the calling thread.
    pub fn sync(&self) -> Result<(), LogError> {
        let mut inner = self.lock();
        self.sync_locked(&mut inner)
    }

    fn sync_locked(&self, inner: &mut Inner) -> Result<(), LogError> {
        for file in self.files_to_sync(inner) {
            file.sync_data()
                .map_err(|e| LogError::io("fsync", inner.active().path(), e))?;
        }
        inner.unsynced = None;
        self.commit.mark_durable(inner.written);
        Ok(())
    }

    /// Batches holding offsets in `[from, upto)`, at most about `max_bytes` (at least
    /// one batch). `upto` is the high watermark; it is capped at the log's end.
    pub fn read(&self, from: u64, max_bytes: usize, upto: u64) -> Result<ReadBatches, LogError> {
        let (views, start, upto) = {
            let inner = self.lock();
            let start_offset = inner.segments[0].base_offset();
            let end = inner.active().tail().next_offset;
            if from < start_offset || from > end {
                return Err(LogError::OffsetOutOfRange {
                    requested: from,
                    start: start_offset,
                    end,
                });
            }
            let upto = upto.min(end);
            if from >= upto {
                return Ok(ReadBatches {
                    batches: Vec::new(),
                    next_offset: from,
                });
            }
            let first = inner
                .segments
                .partition_point(|s| s.base_offset() <= from)
                .saturating_sub(1);
            let segs = &inner.segments[first..];
            (views_of(segs), segs[0].position_for_offset(from), upto)
        };
        reader::read_batches(&views, start, from, upto, max_bytes)
    }

    /// Entries with Raft indexes in `range` still in the log, at most about `max_bytes`.
    pub fn entries(&self, range: Range<u64>, max_bytes: usize) -> Result<Vec<Frame>, LogError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let (views, start) = {
            let inner = self.lock();
            let first = inner
                .segments
                .partition_point(|s| s.first_id().is_none_or(|id| id.index <= range.start))
                .saturating_sub(1);
            let segs = &inner.segments[first..];
            (views_of(segs), segs[0].position_for_raft_index(range.start))
        };
        reader::read_entries(&views, start, range, max_bytes)
    }

    /// The first stored batch whose newest record is at or after `timestamp` (ms), or
    /// `None` if every batch is older.
    pub fn batch_at_time(&self, timestamp: i64) -> Result<Option<Bytes>, LogError> {
        let (views, start) = {
            let inner = self.lock();
            let Some(first) = inner
                .segments
                .iter()
                .position(|s| s.tail().max_timestamp >= timestamp)
            else {
                return Ok(None);
            };
            let segs = &inner.segments[first..];
            (views_of(segs), segs[0].position_for_timestamp(timestamp))
        };
        reader::find_batch_at_time(&views, start, timestamp)
    }

    /// Removes every entry with a Raft index above `keep_through` (`None`: all of
    /// them), as Raft does when a new leader's log disagrees. Durable on return.
    pub fn truncate_after(&self, keep_through: Option<u64>) -> Result<(), LogError> {
        let mut inner = self.lock();
        let Some(last) = inner.active().tail().last_id else {
            return Ok(());
        };
        if keep_through.is_some_and(|k| k >= last.index) {
            return Ok(());
        }
        let keeps_nothing_of = |seg: &Segment| {
            seg.first_id()
                .is_none_or(|id| keep_through.is_none_or(|k| id.index > k))
        };
        // Later segments holding nothing to keep go whole; the first segment stays.
        while inner.segments.len() > 1 && keeps_nothing_of(inner.active()) {
            if let Some(seg) = inner.segments.pop() {
                seg.delete()?;
            }
        }
        let n = inner.segments.len();
        let prev = if n > 1 {
            inner.segments[n - 2].tail()
        } else {
            Tail::new(inner.segments[0].base_offset(), None)
        };
        let keep = if keeps_nothing_of(inner.active()) {
            None
        } else {
            keep_through
        };
        inner.active_mut().truncate_after(keep, prev)?;
        sync_dir(&self.dir)?;
        self.sync_locked(&mut inner)
    }

    /// The offset the next data entry got after the entry with Raft index `index`,
    /// i.e. the high watermark once that entry is committed. An index before the log's
    /// first entry gives the log start offset; one past the last, the log end.
    pub fn next_offset_after(&self, index: u64) -> Result<u64, LogError> {
        let inner = self.lock();
        let pos = inner
            .segments
            .partition_point(|s| s.first_id().is_none_or(|id| id.index <= index));
        if pos == 0 {
            return Ok(inner.segments[0].base_offset());
        }
        let prev = match pos.checked_sub(2) {
            Some(i) => inner.segments[i].tail(),
            None => Tail::new(inner.segments[0].base_offset(), None),
        };
        Ok(inner.segments[pos - 1].tail_after(index, prev)?.next_offset)
    }

    /// Throws the whole log away and starts it afresh after `last`, with the next data
    /// entry at `next_offset`: how a follower takes a snapshot from a leader whose log
    /// no longer holds what the follower misses. Durable on return.
    pub fn reset(&self, next_offset: u64, last: Option<EntryId>) -> Result<(), LogError> {
        let mut inner = self.lock();
        // Old segments go first. A crash before the new one exists leaves an empty
        // directory; the Raft layer, which persisted the snapshot, resets again.
        for seg in inner.segments.drain(..) {
            seg.delete()?;
        }
        let fresh = Segment::create(
            &self.dir,
            Tail::new(next_offset, last),
            self.config.segment_bytes,
            self.config.index_interval_bytes,
        )?;
        inner.segments.push(fresh);
        inner.unsynced = None;
        sync_dir(&self.dir)?;
        self.sync_locked(&mut inner)
    }

    /// Deletes whole segments whose entries all have Raft indexes at or below
    /// `through`, never the active segment (openraft's purge).
    pub fn purge_through(&self, through: u64) -> Result<usize, LogError> {
        let mut inner = self.lock();
        let count = inner.segments[..inner.segments.len() - 1]
            .iter()
            .take_while(|s| s.tail().last_id.is_some_and(|id| id.index <= through))
            .count();
        self.delete_oldest(&mut inner, count)
    }

    /// The last entry of the longest run of sealed segments, oldest first, holding
    /// only offsets below `keep_from` and Raft indexes up to `max_index`: what may be
    /// purged to keep both. `None` if no segment qualifies.
    pub fn purge_point(&self, keep_from: u64, max_index: u64) -> Option<EntryId> {
        let inner = self.lock();
        let sealed = &inner.segments[..inner.segments.len() - 1];
        let count = sealed
            .iter()
            .take_while(|s| {
                let tail = s.tail();
                tail.next_offset <= keep_from
                    && tail.last_id.is_some_and(|id| id.index <= max_index)
            })
            .count();
        count
            .checked_sub(1)
            .and_then(|last| sealed[last].tail().last_id)
    }

    /// Deletes old segments as the retention policy says, keeping every offset at or
    /// above `protect_from`. Returns how many segments went.
    pub fn enforce_retention(&self, now_ms: i64, protect_from: u64) -> Result<usize, LogError> {
        let mut inner = self.lock();
        let count = self.retention_count(&inner, now_ms, protect_from);
        self.delete_oldest(&mut inner, count)
    }

    /// The last entry of the segments retention would delete now, keeping every
    /// offset at or above `protect_from`; `None` if it would delete nothing. The Raft
    /// layer snapshots up to this entry and then purges through it.
    pub fn retention_point(&self, now_ms: i64, protect_from: u64) -> Option<EntryId> {
        let inner = self.lock();
        let count = self.retention_count(&inner, now_ms, protect_from);
        count
            .checked_sub(1)
            .and_then(|last| inner.segments[last].tail().last_id)
    }

    fn retention_count(&self, inner: &Inner, now_ms: i64, protect_from: u64) -> usize {
        let (sealed, active) = inner.segments.split_at(inner.segments.len() - 1);
        let stats: Vec<SegmentStats> = sealed
            .iter()
            .map(|s| SegmentStats {
                size: s.size(),
                next_offset: s.tail().next_offset,
                max_timestamp: s.tail().max_timestamp,
            })
            .collect();
        retention::segments_to_delete(
            &self.config.retention,
            &stats,
            active[0].size(),
            now_ms,
            protect_from,
        )
    }

    fn delete_oldest(&self, inner: &mut Inner, count: usize) -> Result<usize, LogError> {
        if count == 0 {
            return Ok(0);
        }
        for seg in inner.segments.drain(..count) {
            seg.delete()?;
        }
        sync_dir(&self.dir)?;
        tracing::debug!(dir = %self.dir.display(), count, "deleted old segments");
        Ok(count)
    }

    /// First offset still in the log.
    pub fn start_offset(&self) -> u64 {
        self.lock().segments[0].base_offset()
    }

    /// Offset the next data entry will get (the log end offset).
    pub fn next_offset(&self) -> u64 {
        self.lock().active().tail().next_offset
    }

    /// First entry still in the log.
    pub fn first_id(&self) -> Option<EntryId> {
        self.lock().segments.iter().find_map(Segment::first_id)
    }

    /// Last entry appended.
    pub fn last_id(&self) -> Option<EntryId> {
        self.lock().active().tail().last_id
    }

    /// Bytes of frames in all segments.
    pub fn size(&self) -> u64 {
        self.lock().segments.iter().map(Segment::size).sum()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<u64> {
        self.lock()
            .segments
            .iter()
            .map(Segment::base_offset)
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }
}

/// Current time in milliseconds since the epoch, as retention and timestamps use it.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn views_of(segments: &[Segment]) -> Vec<SegmentView> {
    segments.iter().map(Segment::view).collect()
}

/// Base offsets of the `.log` files in `dir`, sorted.
fn segment_bases(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut bases = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io("list log dir", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("list log dir", dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if stem.len() == 20
            && let Ok(base) = stem.parse::<u64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Makes file creations and deletions in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io("fsync dir", dir, e))
}
