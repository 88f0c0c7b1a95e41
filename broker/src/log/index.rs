//! Sparse indexes of a segment: `.index` and `.timeindex`.
//!
//! `.index` maps (record offset, Raft index) to a file position; both keys grow in file
//! order, so one index serves both lookups. `.timeindex` maps the largest timestamp seen
//! so far to a file position. An entry is added every `index_interval_bytes` of log, and
//! never for position 0, so an all-zero slot marks the end of a file's entries.
//!
//! The active segment keeps its entries in memory and appends them to the file with
//! plain writes; a sealed segment's index is memory-mapped read-only. Why not a writable,
//! pre-allocated mapping as Kafka does: a store into a mapped page of a sparse file on a
//! full disk raises SIGBUS, where a write returns ENOSPC we can report. Indexes are
//! hints: recovery checks them against the log and rebuilds them when they disagree.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use memmap2::Mmap;

/// One fixed-size index entry.
pub trait IndexEntry: Copy {
    const SIZE: usize;
    fn encode(&self, out: &mut [u8]);
    /// `None` for an all-zero (unused) slot.
    fn decode(bytes: &[u8]) -> Option<Self>;
    fn position(&self) -> u32;
    /// Whether `next` may follow `self` in a well-formed index.
    fn precedes(&self, next: &Self) -> bool;
}

/// `.index` entry: offset and Raft index of the frame at `position`.
///
/// For a data frame `offset` is its batch's base offset; for other frames it is the
/// offset the next batch will get. Either way every batch at or after `position` starts
/// at or after `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
    pub raft_index: u64,
}

impl IndexEntry for OffsetEntry {
    const SIZE: usize = 16;

    fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.relative_offset.to_le_bytes());
        out[4..8].copy_from_slice(&self.position.to_le_bytes());
        out[8..16].copy_from_slice(&self.raft_index.to_le_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let position = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
        (position != 0).then(|| Self {
            relative_offset: u32::from_le_bytes(bytes[0..4].try_into().unwrap_or_default()),
            position,
            raft_index: u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default()),
        })
    }

    fn position(&self) -> u32 {
        self.position
    }

    fn precedes(&self, next: &Self) -> bool {
        self.position < next.position
            && self.relative_offset <= next.relative_offset
            && self.raft_index < next.raft_index
    }
}

/// `.timeindex` entry: every batch before `position` has a max timestamp ≤ `timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp: i64,
    pub position: u32,
}

impl IndexEntry for TimeEntry {
    const SIZE: usize = 12;

    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.timestamp.to_le_bytes());
        out[8..12].copy_from_slice(&self.position.to_le_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let position = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
        (position != 0).then(|| Self {
            timestamp: i64::from_le_bytes(bytes[0..8].try_into().unwrap_or_default()),
            position,
        })
    }

    fn position(&self) -> u32 {
        self.position
    }

    fn precedes(&self, next: &Self) -> bool {
        self.position < next.position && self.timestamp < next.timestamp
    }
}

/// Why an index file cannot be trusted; the caller rebuilds it from the log.
#[derive(Debug)]
pub enum IndexDefect {
    Missing,
    Malformed,
    Io(io::Error),
}

enum Store {
    /// Active segment: entries in memory, appended to `file` as they are added.
    Active { entries: Vec<u8>, file: File },
    /// Sealed segment: the file, mapped read-only.
    Sealed { map: Option<Mmap>, len: usize },
}

/// A sparse index over one segment.
pub struct Index<E: IndexEntry> {
    store: Store,
    _entry: std::marker::PhantomData<E>,
}

impl<E: IndexEntry> Index<E> {
    /// Creates an empty index for a new active segment, replacing any file at `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Self::active(Vec::new(), file))
    }

    /// Reads an index file's entries and checks they are well formed and within `log_len`.
    pub fn load(path: &Path, log_len: u64) -> Result<Vec<E>, IndexDefect> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(IndexDefect::Missing),
            Err(e) => return Err(IndexDefect::Io(e)),
        };
        let mut entries: Vec<E> = Vec::with_capacity(bytes.len() / E::SIZE);
        for chunk in bytes.chunks(E::SIZE) {
            if chunk.len() != E::SIZE {
                // A torn last entry of an active index: the rest is still good.
                break;
            }
            let Some(entry) = E::decode(chunk) else { break };
            if u64::from(entry.position()) >= log_len {
                break;
            }
            if let Some(prev) = entries.last()
                && !prev.precedes(&entry)
            {
                return Err(IndexDefect::Malformed);
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// An active index over a file that already holds `entries` (as [`Self::load`]
    /// returned them); anything after them in the file is cut off.
    pub fn resume(path: &Path, entries: &[E]) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = vec![0u8; entries.len() * E::SIZE];
        for (e, out) in entries.iter().zip(bytes.chunks_mut(E::SIZE)) {
            e.encode(out);
        }
        file.set_len(bytes.len() as u64)?;
        use std::io::Seek;
        file.seek(io::SeekFrom::End(0))?;
        Ok(Self::active(bytes, file))
    }

    /// Turns this index into a sealed one: synced, then mapped read-only.
    pub fn seal(&mut self, path: &Path) -> io::Result<()> {
        if let Store::Active { file, .. } = &self.store {
            file.sync_data()?;
        }
        *self = Self::open_sealed(path, self.len())?;
        Ok(())
    }

    /// Turns a sealed index back into an active one (after a Raft truncation).
    pub fn unseal(&mut self, path: &Path) -> io::Result<()> {
        if matches!(self.store, Store::Sealed { .. }) {
            *self = Self::resume(path, &self.entries())?;
        }
        Ok(())
    }

    /// A placeholder with no entries and no file, replaced before use.
    pub fn create_detached() -> Self {
        Self {
            store: Store::Sealed { map: None, len: 0 },
            _entry: std::marker::PhantomData,
        }
    }

    fn active(entries: Vec<u8>, file: File) -> Self {
        Self {
            store: Store::Active { entries, file },
            _entry: std::marker::PhantomData,
        }
    }

    /// Maps a sealed index file read-only. An empty file is not mapped.
    pub fn open_sealed(path: &Path, entries: usize) -> io::Result<Self> {
        let len = entries * E::SIZE;
        let map = if len == 0 {
            None
        } else {
            let file = File::open(path)?;
            if file.metadata()?.len() < len as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "index file shorter than its entries",
                ));
            }
            // SAFETY: sealed index files are never written or shrunk while the broker runs.
            Some(unsafe { memmap2::MmapOptions::new().len(len).map(&file)? })
        };
        Ok(Self {
            store: Store::Sealed { map, len },
            _entry: std::marker::PhantomData,
        })
    }

    fn bytes(&self) -> &[u8] {
        match &self.store {
            Store::Active { entries, .. } => entries,
            Store::Sealed { map: Some(m), len } => &m[..*len],
            Store::Sealed { map: None, .. } => &[],
        }
    }

    pub fn len(&self) -> usize {
        self.bytes().len() / E::SIZE
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> Option<E> {
        let bytes = self.bytes().get(i * E::SIZE..(i + 1) * E::SIZE)?;
        E::decode(bytes)
    }

    pub fn last(&self) -> Option<E> {
        self.len().checked_sub(1).and_then(|i| self.get(i))
    }

    /// All entries, decoded.
    pub fn entries(&self) -> Vec<E> {
        (0..self.len()).filter_map(|i| self.get(i)).collect()
    }

    /// The last entry for which `le(entry)` holds, given that `le` holds for a prefix.
    pub fn last_where(&self, le: impl Fn(&E) -> bool) -> Option<E> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(e) if le(&e) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo.checked_sub(1).and_then(|i| self.get(i))
    }

    /// Appends an entry (active indexes only).
    pub fn push(&mut self, entry: E) -> io::Result<()> {
        let Store::Active { entries, file } = &mut self.store else {
            return Err(io::Error::other("push to a sealed index"));
        };
        const { assert!(E::SIZE <= 32) };
        let mut buf = [0u8; 32];
        entry.encode(&mut buf[..E::SIZE]);
        file.write_all(&buf[..E::SIZE])?;
        entries.extend_from_slice(&buf[..E::SIZE]);
        Ok(())
    }

    /// Keeps only the entries whose position is below `position` (active indexes only).
    pub fn truncate_from(&mut self, position: u64) -> io::Result<()> {
        let keep = (0..self.len())
            .take_while(|&i| {
                self.get(i)
                    .is_some_and(|e| u64::from(e.position()) < position)
            })
            .count();
        let Store::Active { entries, file } = &mut self.store else {
            return Err(io::Error::other("truncate of a sealed index"));
        };
        entries.truncate(keep * E::SIZE);
        file.set_len(entries.len() as u64)?;
        use std::io::Seek;
        file.seek(io::SeekFrom::End(0))?;
        Ok(())
    }

    /// Makes the file durable; called when the segment is sealed.
    pub fn sync(&self) -> io::Result<()> {
        match &self.store {
            Store::Active { file, .. } => file.sync_data(),
            Store::Sealed { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u32) -> OffsetEntry {
        OffsetEntry {
            relative_offset: i * 10,
            position: i * 100,
            raft_index: u64::from(i) + 5,
        }
    }

    #[test]
    fn pushed_entries_reopen_and_seal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.index");
        let mut index = Index::<OffsetEntry>::create(&path).expect("create");
        for i in 1..=50 {
            index.push(entry(i)).expect("push");
        }
        let found = index
            .last_where(|e| e.relative_offset <= 255)
            .expect("entry");
        assert_eq!(found, entry(25));
        let reopened = Index::<OffsetEntry>::load(&path, 10_000).expect("open");
        assert_eq!(reopened, (1..=50).map(entry).collect::<Vec<_>>());
        let sealed = Index::<OffsetEntry>::open_sealed(&path, reopened.len()).expect("seal");
        assert_eq!(sealed.last(), Some(entry(50)));
        assert_eq!(sealed.last_where(|e| e.raft_index <= 5), None);
    }

    #[test]
    fn entries_beyond_the_log_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.index");
        let mut index = Index::<OffsetEntry>::create(&path).expect("create");
        for i in 1..=10 {
            index.push(entry(i)).expect("push");
        }
        let reopened = Index::<OffsetEntry>::load(&path, 450).expect("open");
        assert_eq!(reopened.len(), 4);
    }

    #[test]
    fn out_of_order_entries_are_malformed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.index");
        let mut index = Index::<OffsetEntry>::create(&path).expect("create");
        index.push(entry(2)).expect("push");
        index.push(entry(1)).expect("push");
        assert!(matches!(
            Index::<OffsetEntry>::load(&path, 10_000),
            Err(IndexDefect::Malformed)
        ));
    }

    #[test]
    fn truncate_keeps_entries_below_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.timeindex");
        let mut index = Index::<TimeEntry>::create(&path).expect("create");
        for i in 1..=5 {
            index
                .push(TimeEntry {
                    timestamp: i64::from(i),
                    position: i * 10,
                })
                .expect("push");
        }
        index.truncate_from(30).expect("truncate");
        assert_eq!(index.len(), 2);
        assert_eq!(
            Index::<TimeEntry>::load(&path, 1000).expect("open").len(),
            2
        );
    }
}
