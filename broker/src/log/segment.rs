//! One segment of a partition log: a `.log` file of frames, named by the first record
//! offset it may hold, with its `.index` and `.timeindex`.
//!
//! A segment owns its files and its in-memory tail state (next offset, last Raft id,
//! max timestamp). It appends with `pwritev` (never through the mapping), serves reads
//! as `Bytes` slices of a read-only mapping, and recovers by scanning frames.
//!
//! What it hands to writeback it counts against the broker's [`TailCache`], which
//! drops the oldest appended pages beyond its budget from the page cache.
//!
//! It must never let anything touch its mapping beyond the file's length (SIGBUS):
//! only `[0, size)` is handed out, and a running broker never shrinks a file below
//! bytes it handed out; a Raft truncation punches a hole instead, which reads as zeros.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sluice_proto::batch::BatchHeader;
use sluice_proto::batch::header::{BATCH_LENGTH, LEADER_EPOCH};

use super::LogError;
use super::cache::TailCache;
use super::frame::{self, EntryId, EntryKind, FRAME_HEADER_LEN, FrameRef, MAX_PAYLOAD_LEN};
use super::index::{Index, IndexDefect, OffsetEntry, TimeEntry};
use super::mapped::Mapping;

/// An entry to append. Data payloads are record batches; the log stamps their base
/// offset and leader epoch (the Raft term) as it writes them.
#[derive(Debug, Clone, Copy)]
pub struct NewEntry<'a> {
    pub id: EntryId,
    pub kind: EntryKind,
    pub payload: &'a [u8],
}

impl NewEntry<'_> {
    pub fn frame_len(&self) -> u64 {
        (FRAME_HEADER_LEN + self.payload.len()) as u64
    }
}

/// What is known at the end of a run of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// Offset the next data entry gets.
    pub next_offset: u64,
    /// Last entry of the log up to here (possibly in an earlier segment).
    pub last_id: Option<EntryId>,
    /// Largest batch max-timestamp up to here, within this segment.
    pub max_timestamp: i64,
    bytes_since_index: u64,
}

impl Tail {
    pub fn new(next_offset: u64, last_id: Option<EntryId>) -> Self {
        Self {
            next_offset,
            last_id,
            max_timestamp: i64::MIN,
            bytes_since_index: 0,
        }
    }

    /// Checks that an entry may follow: no holes in Raft indexes, no term going back.
    pub fn check_next(&self, id: EntryId) -> Result<(), LogError> {
        if let Some(last) = self.last_id {
            if last.index.checked_add(1) != Some(id.index) {
                return Err(LogError::NotContiguous {
                    last: last.index,
                    got: id.index,
                });
            }
            if id.term < last.term {
                return Err(LogError::TermRegression {
                    last: last.term,
                    got: id.term,
                });
            }
        }
        Ok(())
    }
}

/// A read-only window on a segment's frames, usable without the log's lock.
#[derive(Debug, Clone)]
pub struct SegmentView {
    pub base_offset: u64,
    pub path: Arc<PathBuf>,
    /// Exactly the segment's valid frames. Hand out what a read walked as slices of
    /// one [`Mapping::window`], so its pages leave the resident set afterwards.
    pub bytes: Mapping,
}

pub struct Segment {
    base_offset: u64,
    log_path: Arc<PathBuf>,
    index_path: PathBuf,
    time_index_path: PathBuf,
    file: Arc<File>,
    /// A mapping of the `.log` file, possibly longer than the file.
    map: Mapping,
    size: u64,
    /// Length of the file on disk; at least `size` (a truncation leaves a hole).
    file_len: u64,
    index: Index<OffsetEntry>,
    time_index: Index<TimeEntry>,
    first_id: Option<EntryId>,
    tail: Tail,
    sealed: bool,
    activated_at: Instant,
    index_interval: u64,
    map_len_hint: u64,
    /// Bytes already handed to the kernel's writeback (see `start_writeback`).
    written_back: u64,
    /// The budget of appended bytes left in the page cache.
    cache: Arc<TailCache>,
    /// Recovery cut off an incomplete or corrupt tail.
    torn_tail: bool,
}

/// How recovery treats a segment's tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The last segment: a torn tail is expected after a crash and cut off.
    Active,
    /// The segment sealed last, whose fsync may not have finished before a crash: a
    /// torn tail is cut off and reported ([`Segment::torn_tail`]).
    SealedMaybeUnsynced,
    /// Older segments were synced before the next roll: anything invalid is corruption.
    Sealed,
}

/// The zero-padded file stem of a segment: 20 digits, as Kafka names them.
pub fn file_stem(base_offset: u64) -> String {
    format!("{base_offset:020}")
}

impl Segment {
    /// Creates an empty active segment whose first data entry gets `tail.next_offset`.
    pub fn create(
        dir: &Path,
        tail: Tail,
        segment_bytes: u64,
        index_interval: u64,
    ) -> Result<Self, LogError> {
        let base_offset = tail.next_offset;
        let stem = file_stem(base_offset);
        let log_path = dir.join(format!("{stem}.log"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)
            .map_err(|e| LogError::io("create segment", &log_path, e))?;
        let index_path = dir.join(format!("{stem}.index"));
        let time_index_path = dir.join(format!("{stem}.timeindex"));
        let index =
            Index::create(&index_path).map_err(|e| LogError::io("create index", &index_path, e))?;
        let time_index = Index::create(&time_index_path)
            .map_err(|e| LogError::io("create index", &time_index_path, e))?;
        let map =
            Mapping::map(&file, segment_bytes).map_err(|e| LogError::io("map", &log_path, e))?;
        Ok(Self {
            base_offset,
            log_path: Arc::new(log_path),
            index_path,
            time_index_path,
            file: Arc::new(file),
            map,
            size: 0,
            file_len: 0,
            index,
            time_index,
            first_id: None,
            tail: Tail::new(base_offset, tail.last_id),
            sealed: false,
            activated_at: Instant::now(),
            index_interval,
            map_len_hint: segment_bytes,
            written_back: 0,
            cache: TailCache::shared(),
            torn_tail: false,
        })
    }

    /// Opens a segment found on disk and recovers it.
    ///
    /// The scan starts from the last index entry that points at a valid frame (or from
    /// the start if the indexes are missing or malformed, rebuilding them), verifies each
    /// frame's CRC and continuity, and ends at the first frame that fails. For the last
    /// (`active`) segment whatever follows is a torn tail and is cut off; a sealed
    /// segment may only be followed by zeros, or it is corrupt. `prev` is the tail of the
    /// segment before, which this one must continue.
    pub fn open(
        dir: &Path,
        base_offset: u64,
        prev: Option<Tail>,
        role: Role,
        segment_bytes: u64,
        index_interval: u64,
    ) -> Result<Self, LogError> {
        let active = role == Role::Active;
        let stem = file_stem(base_offset);
        let log_path = dir.join(format!("{stem}.log"));
        let index_path = dir.join(format!("{stem}.index"));
        let time_index_path = dir.join(format!("{stem}.timeindex"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(|e| LogError::io("open segment", &log_path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| LogError::io("stat segment", &log_path, e))?
            .len();
        let map_len = if active {
            segment_bytes.max(file_len)
        } else {
            file_len
        };
        let map = Mapping::map(&file, map_len).map_err(|e| LogError::io("map", &log_path, e))?;
        let data = map.slice(0..file_len as usize);

        let prev_last = prev.and_then(|t| t.last_id);
        let loaded = Index::<OffsetEntry>::load(&index_path, file_len)
            .and_then(|o| Ok((o, Index::<TimeEntry>::load(&time_index_path, file_len)?)));
        let mut start: Option<(OffsetEntry, Vec<OffsetEntry>, Vec<TimeEntry>)> = None;
        let mut rebuild = true;
        match loaded {
            Ok((mut offsets, times)) => {
                rebuild = false;
                // The last entry whose frame checks out; entries after it outran the log.
                while let Some(e) = offsets.last().copied() {
                    if index_entry_matches(&data, base_offset, &e) {
                        start = Some((e, offsets, times));
                        break;
                    }
                    offsets.pop();
                }
            }
            Err(IndexDefect::Missing | IndexDefect::Malformed) => {
                tracing::warn!(segment = %log_path.display(), "index missing or malformed; rebuilding");
            }
            Err(IndexDefect::Io(e)) => return Err(LogError::io("read index", &index_path, e)),
        }

        let mut seg = Self {
            base_offset,
            log_path: Arc::new(log_path),
            index_path,
            time_index_path,
            file: Arc::new(file),
            map,
            size: 0,
            file_len,
            index: Index::create_detached(),
            time_index: Index::create_detached(),
            first_id: None,
            tail: Tail::new(base_offset, prev_last),
            sealed: false,
            activated_at: Instant::now(),
            index_interval,
            map_len_hint: segment_bytes,
            written_back: 0,
            cache: TailCache::shared(),
            torn_tail: false,
        };
        let from = match start {
            Some((entry, offsets, times)) => {
                let p = entry.position;
                let times: Vec<TimeEntry> = times.into_iter().filter(|t| t.position <= p).collect();
                seg.index = Index::resume(&seg.index_path, &offsets)
                    .map_err(|e| LogError::io("open index", &seg.index_path, e))?;
                seg.time_index = Index::resume(&seg.time_index_path, &times)
                    .map_err(|e| LogError::io("open index", &seg.time_index_path, e))?;
                seg.tail = Tail {
                    next_offset: base_offset + u64::from(entry.relative_offset),
                    last_id: None,
                    max_timestamp: times.last().map_or(i64::MIN, |t| t.timestamp),
                    bytes_since_index: 0,
                };
                let first = frame::parse(&data, 0, true)
                    .map_err(|_| seg.corrupt(0, "first frame unreadable"))?;
                seg.first_id = Some(first.id);
                p as usize
            }
            None => {
                if !rebuild {
                    // Indexes were fine but empty or all stale: rebuild from the start too.
                    tracing::debug!(segment = %seg.log_path.display(), "scanning from the start");
                }
                seg.index = Index::create(&seg.index_path)
                    .map_err(|e| LogError::io("create index", &seg.index_path, e))?;
                seg.time_index = Index::create(&seg.time_index_path)
                    .map_err(|e| LogError::io("create index", &seg.time_index_path, e))?;
                0
            }
        };
        let end = seg.scan(&data, from, true)?;
        // Recovery read these pages once; a rebuild may have walked the whole segment.
        data.release(from..end);
        seg.size = end as u64;
        if end < data.len() {
            let rest = &data[end..];
            let zeros = rest.iter().all(|&b| b == 0);
            if role == Role::Sealed && !zeros {
                return Err(seg.corrupt(end as u64, "invalid frame inside a sealed segment"));
            }
            if !zeros {
                tracing::warn!(
                    segment = %seg.log_path.display(),
                    valid = end,
                    dropped = rest.len(),
                    "truncating an incomplete or corrupt tail"
                );
                seg.torn_tail = true;
            }
            drop(data);
            seg.file
                .set_len(end as u64)
                .map_err(|e| LogError::io("truncate torn tail", &*seg.log_path, e))?;
            seg.file_len = end as u64;
        }
        if seg.first_id.is_none() && seg.size > 0 {
            return Err(seg.corrupt(0, "segment has bytes but no frame"));
        }
        if !active {
            seg.seal()?;
        }
        Ok(seg)
    }

    fn corrupt(&self, position: u64, detail: &str) -> LogError {
        LogError::Corrupt {
            path: (*self.log_path).clone(),
            position,
            detail: detail.to_string(),
        }
    }

    /// Walks valid, continuous frames from `from`, updating the tail (and the indexes
    /// when `index` is set). Returns where the walk stopped.
    fn scan(&mut self, data: &[u8], from: usize, index: bool) -> Result<usize, LogError> {
        let mut pos = from;
        while let Ok(f) = frame::parse(data, pos, true) {
            let batch = match f.kind {
                EntryKind::Data => match BatchHeader::parse(&data[f.payload_range()]) {
                    Ok(h) if h.base_offset as u64 == self.tail.next_offset => Some(h),
                    _ => break,
                },
                _ => None,
            };
            if self.tail.check_next(f.id).is_err() {
                break;
            }
            self.track(&f, batch.as_ref(), index)
                .map_err(|e| LogError::io("write index", &self.index_path, e))?;
            pos = f.end();
        }
        Ok(pos)
    }

    /// Accounts for a frame now in the segment: tail state and sparse index entries.
    fn track(&mut self, f: &FrameRef, batch: Option<&BatchHeader>, index: bool) -> io::Result<()> {
        let position = f.position as u64;
        if index && position > 0 && self.tail.bytes_since_index >= self.index_interval {
            self.index.push(OffsetEntry {
                relative_offset: (self.tail.next_offset - self.base_offset) as u32,
                position: position as u32,
                raft_index: f.id.index,
            })?;
            if self.tail.max_timestamp > self.time_index.last().map_or(i64::MIN, |t| t.timestamp) {
                self.time_index.push(TimeEntry {
                    timestamp: self.tail.max_timestamp,
                    position: position as u32,
                })?;
            }
            self.tail.bytes_since_index = 0;
        }
        self.tail.bytes_since_index += (f.end() - f.position) as u64;
        self.first_id.get_or_insert(f.id);
        self.tail.last_id = Some(f.id);
        if let Some(h) = batch {
            self.tail.next_offset += h.offset_count();
            self.tail.max_timestamp = self.tail.max_timestamp.max(h.max_timestamp);
        }
        Ok(())
    }

    /// Appends entries after checking them all; either all are written or none is.
    /// Returns the bytes written. Durability is the caller's (group commit).
    pub fn append(&mut self, entries: &[NewEntry<'_>]) -> Result<u64, LogError> {
        if self.sealed {
            return Err(LogError::io(
                "append",
                &*self.log_path,
                io::Error::other("segment is sealed"),
            ));
        }
        // Check everything and lay out the frames before writing a byte.
        let mut tail = self.tail;
        let mut prefixes: Vec<[u8; 16]> = Vec::with_capacity(entries.len());
        let mut headers: Vec<[u8; FRAME_HEADER_LEN]> = Vec::with_capacity(entries.len());
        let mut planned: Vec<(FrameRef, Option<BatchHeader>)> = Vec::with_capacity(entries.len());
        let mut position = self.size;
        for e in entries {
            if e.payload.len() > MAX_PAYLOAD_LEN {
                return Err(LogError::PayloadTooLarge {
                    len: e.payload.len(),
                    max: MAX_PAYLOAD_LEN,
                });
            }
            tail.check_next(e.id)?;
            tail.last_id = Some(e.id);
            let batch = if e.kind == EntryKind::Data {
                let mut h = BatchHeader::parse(e.payload)?;
                h.base_offset = tail.next_offset as i64;
                let mut prefix = [0u8; 16];
                prefix[..8].copy_from_slice(&h.base_offset.to_be_bytes());
                prefix[BATCH_LENGTH..LEADER_EPOCH]
                    .copy_from_slice(&e.payload[BATCH_LENGTH..LEADER_EPOCH]);
                let epoch = i32::try_from(e.id.term).unwrap_or(i32::MAX);
                prefix[LEADER_EPOCH..16].copy_from_slice(&epoch.to_be_bytes());
                headers.push(frame::encode_header(
                    e.id,
                    e.kind,
                    &[&prefix, &e.payload[16..]],
                ));
                prefixes.push(prefix);
                tail.next_offset += h.offset_count();
                Some(h)
            } else {
                headers.push(frame::encode_header(e.id, e.kind, &[e.payload]));
                None
            };
            planned.push((
                FrameRef {
                    id: e.id,
                    kind: e.kind,
                    position: position as usize,
                    payload_len: e.payload.len(),
                },
                batch,
            ));
            position += e.frame_len();
        }
        let total = position - self.size;
        if position > self.map.len() as u64 {
            self.remap(position)?;
        }

        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(entries.len() * 3);
        let mut prefix_iter = prefixes.iter();
        for (e, header) in entries.iter().zip(&headers) {
            slices.push(IoSlice::new(header));
            if e.kind == EntryKind::Data {
                if let Some(prefix) = prefix_iter.next() {
                    slices.push(IoSlice::new(prefix));
                }
                slices.push(IoSlice::new(&e.payload[16..]));
            } else {
                slices.push(IoSlice::new(e.payload));
            }
        }
        let old = (self.tail, self.first_id);
        let written = pwritev_all(&self.file, &mut slices, self.size).and_then(|()| {
            for (f, batch) in &planned {
                self.track(f, batch.as_ref(), true)?;
            }
            Ok(())
        });
        if let Err(e) = written {
            self.undo_append(old);
            return Err(LogError::io("append", &*self.log_path, e));
        }
        self.size = position;
        self.file_len = self.file_len.max(position);
        self.start_writeback();
        Ok(total)
    }

    /// Asks the kernel to start writing recent appends to disk without waiting for
    /// it, so that dirty pages never pile up: the fsync of a group commit or of a
    /// segment roll then finds little left to write, instead of stalling appends
    /// while a whole segment goes to disk. What it hands over counts against the
    /// page-cache budget from then on.
    fn start_writeback(&mut self) {
        const WRITEBACK_CHUNK: u64 = 4 << 20;
        let pending = self.size.saturating_sub(self.written_back);
        if pending < WRITEBACK_CHUNK {
            return;
        }
        // SAFETY: plain syscall on a valid descriptor. Failure only loses the hint.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                self.written_back as libc::off64_t,
                pending as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.cache.admit(&self.file, self.written_back, pending);
        self.written_back = self.size;
    }

    /// Puts the segment back as it was before a failed append. The failed bytes were
    /// never handed out; zero them so recovery cannot mistake them for frames.
    fn undo_append(&mut self, (tail, first_id): (Tail, Option<EntryId>)) {
        self.tail = tail;
        self.first_id = first_id;
        // Best effort: the append already failed, and recovery drops whatever is left.
        let _ = self.index.truncate_from(self.size);
        let _ = self.time_index.truncate_from(self.size + 1);
        // Bytes past the old file length were never handed out, so the file may shrink
        // back to it; below it lies at most a punched hole, which readers may map.
        let _ = self.file.set_len(self.file_len);
        let _ = punch_hole(&self.file, self.size, self.file_len - self.size);
    }

    fn remap(&mut self, needed: u64) -> Result<(), LogError> {
        let len = needed.max(self.map_len_hint).max(self.map.len() as u64 * 2);
        self.map =
            Mapping::map(&self.file, len).map_err(|e| LogError::io("map", &*self.log_path, e))?;
        Ok(())
    }

    /// Makes the segment read-only: indexes synced and mapped. The frames are not
    /// synced here; the log's group commit covers the segment sealed last.
    pub fn seal(&mut self) -> Result<(), LogError> {
        self.index
            .seal(&self.index_path)
            .map_err(|e| LogError::io("seal index", &self.index_path, e))?;
        self.time_index
            .seal(&self.time_index_path)
            .map_err(|e| LogError::io("seal index", &self.time_index_path, e))?;
        self.sealed = true;
        Ok(())
    }

    /// Turns a sealed segment back into the active one (after a Raft truncation).
    fn unseal(&mut self) -> Result<(), LogError> {
        if !self.sealed {
            return Ok(());
        }
        self.index
            .unseal(&self.index_path)
            .map_err(|e| LogError::io("open index", &self.index_path, e))?;
        self.time_index
            .unseal(&self.time_index_path)
            .map_err(|e| LogError::io("open index", &self.time_index_path, e))?;
        if (self.map.len() as u64) < self.map_len_hint {
            self.remap(self.map_len_hint)?;
        }
        self.sealed = false;
        self.activated_at = Instant::now();
        Ok(())
    }

    /// Removes every frame whose Raft index is above `keep_through` (`None`: every
    /// frame), leaving this the active segment. `prev` is the tail before this segment.
    pub fn truncate_after(
        &mut self,
        keep_through: Option<u64>,
        prev: Tail,
    ) -> Result<(), LogError> {
        let (cut, tail) = self.cut_point(keep_through, prev)?;
        self.unseal()?;
        punch_hole(&self.file, cut, self.file_len - cut)
            .map_err(|e| LogError::io("truncate", &*self.log_path, e))?;
        self.size = cut;
        self.written_back = self.written_back.min(cut);
        self.tail = tail;
        if cut == 0 {
            self.first_id = None;
        }
        self.index
            .truncate_from(cut)
            .map_err(|e| LogError::io("truncate index", &self.index_path, e))?;
        self.time_index
            .truncate_from(cut + 1)
            .map_err(|e| LogError::io("truncate index", &self.time_index_path, e))?;
        self.file
            .sync_data()
            .map_err(|e| LogError::io("fsync", &*self.log_path, e))
    }

    /// Position of the first frame above `keep_through`, and the tail just before it.
    /// The tail right after the frame with Raft index `through` (which this segment
    /// must hold, or precede).
    pub fn tail_after(&self, through: u64, prev: Tail) -> Result<Tail, LogError> {
        Ok(self.cut_point(Some(through), prev)?.1)
    }

    fn cut_point(&self, keep_through: Option<u64>, prev: Tail) -> Result<(u64, Tail), LogError> {
        let fresh = Tail::new(self.base_offset, prev.last_id);
        let Some(keep_through) = keep_through else {
            return Ok((0, fresh));
        };
        let data = self.map.slice(0..self.size as usize);
        let (mut pos, mut tail) = match self.index.last_where(|e| e.raft_index <= keep_through) {
            Some(e) => (e.position as usize, self.tail_at_index_point(&e)),
            None => (0, fresh),
        };
        let walk_from = pos;
        let mut walked = pos;
        while pos < data.len() {
            let f = frame::parse(&data, pos, true)
                .map_err(|_| self.corrupt(pos as u64, "frame unreadable"))?;
            walked = f.end();
            if f.id.index > keep_through {
                break;
            }
            let batch = match f.kind {
                EntryKind::Data => Some(
                    BatchHeader::parse(&data[f.payload_range()])
                        .map_err(|_| self.corrupt(pos as u64, "stored batch unreadable"))?,
                ),
                _ => None,
            };
            tail.bytes_since_index += (f.end() - f.position) as u64;
            tail.last_id = Some(f.id);
            if let Some(h) = batch {
                tail.next_offset += h.offset_count();
                tail.max_timestamp = tail.max_timestamp.max(h.max_timestamp);
            }
            pos = f.end();
        }
        // Asked after every commit (the high watermark), so over time this walks the
        // whole log: leave none of it resident.
        data.release(walk_from..walked);
        Ok((pos as u64, tail))
    }

    /// The tail state at an index point, as far as the indexes tell it.
    fn tail_at_index_point(&self, e: &OffsetEntry) -> Tail {
        Tail {
            next_offset: self.base_offset + u64::from(e.relative_offset),
            last_id: None,
            max_timestamp: self
                .time_index
                .last_where(|t| t.position <= e.position)
                .map_or(i64::MIN, |t| t.timestamp),
            bytes_since_index: 0,
        }
    }

    /// Deletes the segment's files. Readers holding views keep their mappings.
    pub fn delete(self) -> Result<(), LogError> {
        for path in [&*self.log_path, &self.index_path, &self.time_index_path] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io("delete segment", path, e)),
            }
        }
        Ok(())
    }

    pub fn view(&self) -> SegmentView {
        SegmentView {
            base_offset: self.base_offset,
            path: self.log_path.clone(),
            bytes: self.map.slice(0..self.size as usize),
        }
    }

    /// Where to start scanning for the batch holding `offset`.
    pub fn position_for_offset(&self, offset: u64) -> usize {
        let rel = offset.saturating_sub(self.base_offset);
        self.index
            .last_where(|e| u64::from(e.relative_offset) <= rel)
            .map_or(0, |e| e.position as usize)
    }

    /// Where to start scanning for the entry with Raft index `raft_index`.
    pub fn position_for_raft_index(&self, raft_index: u64) -> usize {
        self.index
            .last_where(|e| e.raft_index <= raft_index)
            .map_or(0, |e| e.position as usize)
    }

    /// Where to start scanning for the first batch with a timestamp at or after `ts`.
    pub fn position_for_timestamp(&self, ts: i64) -> usize {
        self.time_index
            .last_where(|t| t.timestamp < ts)
            .map_or(0, |t| t.position as usize)
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn tail(&self) -> Tail {
        self.tail
    }

    pub fn first_id(&self) -> Option<EntryId> {
        self.first_id
    }

    /// Whether recovery cut off an incomplete or corrupt tail.
    pub fn torn_tail(&self) -> bool {
        self.torn_tail
    }

    pub fn age(&self) -> std::time::Duration {
        self.activated_at.elapsed()
    }

    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.log_path
    }
}

/// Whether an index entry points at a valid frame with the Raft index (and, for data,
/// the offset) it claims.
fn index_entry_matches(data: &[u8], base_offset: u64, e: &OffsetEntry) -> bool {
    let Ok(f) = frame::parse(data, e.position as usize, true) else {
        return false;
    };
    if f.id.index != e.raft_index {
        return false;
    }
    match f.kind {
        EntryKind::Data => BatchHeader::parse(&data[f.payload_range()])
            .is_ok_and(|h| h.base_offset as u64 == base_offset + u64::from(e.relative_offset)),
        _ => true,
    }
}

/// Writes all of `slices` at `offset`, as few `pwritev` calls as the kernel allows.
fn pwritev_all(file: &File, mut slices: &mut [IoSlice<'_>], mut offset: u64) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let count = slices.len().min(IOV_MAX);
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix; the pointers are valid
        // for the duration of the call.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                slices.as_ptr().cast::<libc::iovec>(),
                count as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        IoSlice::advance_slices(&mut slices, n as usize);
    }
    Ok(())
}

/// Zeroes `len` bytes at `offset` without changing the file's length, so mappings of
/// that range read zeros instead of faulting.
fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: plain syscall on a valid descriptor.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(err);
    }
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 64 * 1024];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::mapped::page_size;

    fn on_tmpfs(path: &Path) -> bool {
        const TMPFS_MAGIC: libc::c_long = 0x0102_1994;
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid C string and `fs` a plain struct statfs fills in.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statfs(c.as_ptr(), &mut fs) };
        rc == 0 && fs.f_type as libc::c_long == TMPFS_MAGIC
    }

    /// Which pages of `file` (its first `len` bytes) are in the page cache.
    fn cached_pages(file: &File, len: usize) -> Vec<bool> {
        // SAFETY: a read-only mapping used only for mincore; nothing reads through it.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file) }.unwrap();
        let mut vec = vec![0u8; len.div_ceil(page_size())];
        // SAFETY: `vec` has one byte per page of the mapping.
        let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        vec.iter().map(|b| b & 1 == 1).collect()
    }

    /// A segment in a directory on a disk (the page cache cannot drop tmpfs pages),
    /// counting against `cache`.
    fn segment_on_disk(cache: &Arc<TailCache>) -> (tempfile::TempDir, Segment) {
        let mut dir = tempfile::tempdir().unwrap();
        if on_tmpfs(dir.path()) {
            dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        }
        let mut seg = Segment::create(dir.path(), Tail::new(0, None), 64 << 20, 4096).unwrap();
        seg.cache = Arc::clone(cache);
        (dir, seg)
    }

    /// Appends `mib` MiB in 256 KiB frames, each synced as a group commit would.
    fn append_synced(seg: &mut Segment, mib: u64, payload: &[u8]) {
        let first = seg.tail.last_id.map_or(1, |id| id.index + 1);
        for index in first..first + mib * 4 {
            let entry = NewEntry {
                id: EntryId { term: 1, index },
                kind: EntryKind::Membership,
                payload,
            };
            seg.append(&[entry]).unwrap();
            seg.file.sync_data().unwrap();
        }
    }

    fn count(pages: &[bool], cached: bool) -> usize {
        pages.iter().filter(|c| **c == cached).count()
    }

    #[test]
    fn appends_leave_only_the_newest_bytes_in_the_page_cache() {
        let cache = Arc::new(TailCache::new(8 << 20));
        let (_dir, mut seg) = segment_on_disk(&cache);
        let payload = vec![7u8; (256 << 10) - FRAME_HEADER_LEN];
        append_synced(&mut seg, 24, &payload);
        let size = seg.size() as usize;
        assert_eq!(size, 24 << 20);
        // Writeback starts every 4 MiB; the budget keeps the last two such chunks.
        let pages = cached_pages(&seg.file, size);
        let (old, newest) = pages.split_at((16 << 20) / page_size());
        assert_eq!(
            count(old, true),
            0,
            "pages of the oldest 16 MiB still cached"
        );
        assert_eq!(
            count(newest, false),
            0,
            "pages of the newest 8 MiB not cached"
        );
        // What was dropped reads back from disk as it was written.
        let view = seg.map.slice(0..size);
        let first = frame::parse(&view, 0, true).unwrap();
        assert_eq!(&view[first.payload_range()], &payload[..]);
    }

    #[test]
    fn a_partition_that_starts_writing_takes_the_budget_of_older_appends() {
        let cache = Arc::new(TailCache::new(8 << 20));
        let payload = vec![7u8; (256 << 10) - FRAME_HEADER_LEN];
        let (_a_dir, mut a) = segment_on_disk(&cache);
        append_synced(&mut a, 8, &payload);
        assert_eq!(count(&cached_pages(&a.file, 8 << 20), false), 0);
        let (_b_dir, mut b) = segment_on_disk(&cache);
        append_synced(&mut b, 8, &payload);
        assert_eq!(
            count(&cached_pages(&a.file, 8 << 20), true),
            0,
            "a is still cached"
        );
        assert_eq!(
            count(&cached_pages(&b.file, 8 << 20), false),
            0,
            "b is not cached"
        );
    }
}
