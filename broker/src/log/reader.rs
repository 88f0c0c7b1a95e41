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

/// Bytes from where a read starts that it asks the kernel to have read in: what it
/// walks and, for readers that go on (a fetch stream, a replicating follower), what
/// the next few reads will, so that the disk works while they are served.
const PREFETCH: usize = 8 << 20;

/// Starts reading in what walks from `start` of the first view will touch next.
/// Appends leave only the newest bytes cached (see [`super::cache`]), so a
/// reader further behind reads from disk, in large reads ahead of need.
fn prefetch(views: &[SegmentView], start: usize, max_bytes: usize) {
    if let Some(first) = views.first() {
        let len = max_bytes.max(PREFETCH);
        first.bytes.prefetch(start..start.saturating_add(len));
    }
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
