//! Reading out of segment views, without holding the log's lock.
//!
//! The log finds where to start under its lock and hands over views (mapped bytes up to
//! each segment's size); these functions walk frames from there, verifying every
//! frame's CRC so a damaged frame is never served. What they hand out are slices of one
//! window per segment over the bytes the walk read, so those pages leave the process's
//! resident set once the caller drops them (see [`super::mapped`]).

use std::ops::{ControlFlow, Range};

use bytes::Bytes;
use sluice_proto::batch::BatchHeader;

use super::LogError;
use super::frame::{self, EntryKind, Frame, FrameRef};
use super::segment::SegmentView;

/// Batches read from the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBatches {
    /// Whole batches as stored, each a slice of a segment's mapping. The first may
    /// start before the requested offset (as in Kafka); readers skip those records.
    pub batches: Vec<Bytes>,
    /// Offset after the last record returned (the requested offset if none).
    pub next_offset: u64,
}

impl ReadBatches {
    pub fn bytes(&self) -> usize {
        self.batches.iter().map(Bytes::len).sum()
    }
}

/// Walks frames from `start` in the first view, then through the following views.
/// `visit` gets the index of the view a frame is in. Returns, for each view entered,
/// the bytes read there: from where the walk began in it to the end of the last frame
/// parsed (also when the walk fails).
fn walk(
    views: &[SegmentView],
    start: usize,
    mut visit: impl FnMut(usize, &FrameRef, Option<&BatchHeader>) -> ControlFlow<()>,
) -> (Vec<Range<usize>>, Result<(), LogError>) {
    let mut touched: Vec<Range<usize>> = Vec::new();
    for (i, view) in views.iter().enumerate() {
        let mut pos = if i == 0 { start } else { 0 };
        touched.push(pos..pos);
        while pos < view.bytes.len() {
            let corrupt = |detail: &str| LogError::Corrupt {
                path: (*view.path).clone(),
                position: pos as u64,
                detail: detail.to_string(),
            };
            let f = match frame::parse(&view.bytes, pos, true) {
                Ok(f) => f,
                Err(_) => return (touched, Err(corrupt("frame fails its CRC"))),
            };
            if let Some(t) = touched.last_mut() {
                t.end = f.end();
            }
            let batch = match f.kind {
                EntryKind::Data => match BatchHeader::parse(&view.bytes[f.payload_range()]) {
                    Ok(h) => Some(h),
                    Err(_) => return (touched, Err(corrupt("stored batch unreadable"))),
                },
                _ => None,
            };
            if visit(i, &f, batch.as_ref()).is_break() {
                return (touched, Ok(()));
            }
            pos = f.end();
        }
    }
    (touched, Ok(()))
}

/// One window per view a walk read, to slice what it found from. Dropping the last
/// slice of a window (or the window unused) releases its pages.
struct Windows(Vec<(usize, Bytes)>);

impl Windows {
    fn new(views: &[SegmentView], touched: Vec<Range<usize>>) -> Self {
        Self(
            views
                .iter()
                .zip(touched)
                .map(|(view, range)| (range.start, view.bytes.window(range)))
                .collect(),
        )
    }

    /// The bytes at `range` of view `view`, which the walk read.
    fn slice(&self, view: usize, range: Range<usize>) -> Bytes {
        let (start, window) = &self.0[view];
        window.slice(range.start - start..range.end - start)
    }
}

/// How far ahead of a read the kernel is asked to read, in aligned chunks of this size:
/// readers that go on (a fetch stream, a replicating follower) then find the disk has
/// worked while they were served.
const READ_AHEAD: usize = 4 << 20;

/// Asks the kernel to read in what a walk from `start` of the first view reads, and,
/// when the read crosses into a new [`READ_AHEAD`] chunk, the chunk after it. Appends
/// leave only the newest bytes cached (see [`super::cache`]), so a reader further
/// behind reads from disk, in large reads ahead of need. Only chunk crossings read
/// ahead, so a sequential reader has each page looked up about twice, not once per
/// read that could reach it: on a cached replay those page-cache lookups were 9% of
/// the broker's time.
fn prefetch(views: &[SegmentView], start: usize, max_bytes: usize) {
    let Some(first) = views.first() else {
        return;
    };
    let end = start.saturating_add(max_bytes).min(first.bytes.len());
    first.bytes.prefetch(start..end);
    if let Some(ahead) = read_ahead(start, end) {
        first.bytes.prefetch(ahead);
    }
}

/// The chunk to read ahead for a read of `start..end`: the one after the chunk the
/// read ends in, if the read crossed into that chunk.
fn read_ahead(start: usize, end: usize) -> Option<Range<usize>> {
    let last_chunk = end.saturating_sub(1) / READ_AHEAD;
    if end <= start || start / READ_AHEAD == last_chunk && !start.is_multiple_of(READ_AHEAD) {
        return None;
    }
    let from = (last_chunk + 1).checked_mul(READ_AHEAD)?;
    Some(from..from.saturating_add(READ_AHEAD))
}

/// Batches holding offsets in `[from, upto)`, stopping once `max_bytes` is reached
/// (always at least one batch, so an oversized batch still gets through).
pub fn read_batches(
    views: &[SegmentView],
    start: usize,
    from: u64,
    upto: u64,
    max_bytes: usize,
) -> Result<ReadBatches, LogError> {
    prefetch(views, start, max_bytes);
    let mut found: Vec<(usize, Range<usize>)> = Vec::new();
    let mut next_offset = from;
    let mut bytes = 0usize;
    let (touched, walked) = walk(views, start, |i, f, batch| {
        let Some(h) = batch else {
            return ControlFlow::Continue(());
        };
        let base = h.base_offset as u64;
        let next = base + h.offset_count();
        if next <= from {
            return ControlFlow::Continue(());
        }
        if base >= upto || (!found.is_empty() && bytes + f.payload_len > max_bytes) {
            return ControlFlow::Break(());
        }
        found.push((i, f.payload_range()));
        next_offset = next;
        bytes += f.payload_len;
        ControlFlow::Continue(())
    });
    let windows = Windows::new(views, touched);
    match walked {
        Err(e) if found.is_empty() => Err(e),
        // Serve what was good; the next read from here reports the damage.
        _ => Ok(ReadBatches {
            batches: found
                .into_iter()
                .map(|(i, range)| windows.slice(i, range))
                .collect(),
            next_offset,
        }),
    }
}

/// Frames with Raft indexes in `range`, up to `max_bytes` of payload (at least one).
pub fn read_entries(
    views: &[SegmentView],
    start: usize,
    range: Range<u64>,
    max_bytes: usize,
) -> Result<Vec<Frame>, LogError> {
    prefetch(views, start, max_bytes);
    let mut found: Vec<(usize, FrameRef)> = Vec::new();
    let mut bytes = 0usize;
    let (touched, walked) = walk(views, start, |i, f, _| {
        if f.id.index < range.start {
            return ControlFlow::Continue(());
        }
        if f.id.index >= range.end || (!found.is_empty() && bytes + f.payload_len > max_bytes) {
            return ControlFlow::Break(());
        }
        bytes += f.payload_len;
        found.push((i, *f));
        ControlFlow::Continue(())
    });
    let windows = Windows::new(views, touched);
    walked?;
    Ok(found
        .into_iter()
        .map(|(i, f)| Frame {
            id: f.id,
            kind: f.kind,
            payload: windows.slice(i, f.payload_range()),
        })
        .collect())
}

/// The first batch whose max timestamp is at or after `ts`, as stored.
pub fn find_batch_at_time(
    views: &[SegmentView],
    start: usize,
    ts: i64,
) -> Result<Option<Bytes>, LogError> {
    let mut found = None;
    let (touched, walked) = walk(views, start, |i, f, batch| match batch {
        Some(h) if h.max_timestamp >= ts => {
            found = Some((i, f.payload_range()));
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    let windows = Windows::new(views, touched);
    walked?;
    Ok(found.map(|(i, range)| windows.slice(i, range)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn a_sequential_reader_reads_ahead_once_per_chunk() {
        let chunk = READ_AHEAD;
        // Reads of 1 MiB from 0: only those entering a chunk ask for the next one.
        let ahead: Vec<Option<Range<usize>>> =
            (0..8).map(|i| read_ahead(i * MIB, (i + 1) * MIB)).collect();
        let entering = |k: usize| Some((k + 1) * chunk..(k + 2) * chunk);
        assert_eq!(ahead[0], entering(0));
        assert_eq!(ahead[1..4], [None, None, None]);
        assert_eq!(ahead[4], entering(1));
        assert_eq!(ahead[5..8], [None, None, None]);
    }

    #[test]
    fn a_read_that_crosses_chunks_reads_ahead_of_where_it_ends() {
        let chunk = READ_AHEAD;
        assert_eq!(
            read_ahead(chunk - MIB, chunk + MIB),
            Some(2 * chunk..3 * chunk)
        );
        assert_eq!(read_ahead(MIB, 3 * chunk), Some(3 * chunk..4 * chunk));
        assert_eq!(read_ahead(5 * MIB, 5 * MIB), None, "nothing read");
        assert_eq!(read_ahead(usize::MAX - 1, usize::MAX), None, "no overflow");
        // Entering the last chunk there is: nothing after it to read ahead.
        let last = usize::MAX / chunk * chunk;
        assert_eq!(read_ahead(last, usize::MAX), None, "no chunk past the end");
    }
}
