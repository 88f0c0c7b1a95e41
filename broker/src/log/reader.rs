//! Reading out of segment views, without holding the log's lock.
//!
//! The log finds where to start under its lock and hands over views (mapped bytes up to
//! each segment's size); these functions walk frames from there, verifying every
//! frame's CRC so a damaged frame is never served.

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
fn walk(
    views: &[SegmentView],
    start: usize,
    mut visit: impl FnMut(&SegmentView, &FrameRef, Option<&BatchHeader>) -> ControlFlow<()>,
) -> Result<(), LogError> {
    for (i, view) in views.iter().enumerate() {
        let mut pos = if i == 0 { start } else { 0 };
        while pos < view.bytes.len() {
            let corrupt = |detail: &str| LogError::Corrupt {
                path: (*view.path).clone(),
                position: pos as u64,
                detail: detail.to_string(),
            };
            let f =
                frame::parse(&view.bytes, pos, true).map_err(|_| corrupt("frame fails its CRC"))?;
            let batch = match f.kind {
                EntryKind::Data => Some(
                    BatchHeader::parse(&view.bytes[f.payload_range()])
                        .map_err(|_| corrupt("stored batch unreadable"))?,
                ),
                _ => None,
            };
            if visit(view, &f, batch.as_ref()).is_break() {
                return Ok(());
            }
            pos = f.end();
        }
    }
    Ok(())
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
    let mut out = ReadBatches {
        batches: Vec::new(),
        next_offset: from,
    };
    let mut bytes = 0usize;
    let walked = walk(views, start, |view, f, batch| {
        let Some(h) = batch else {
            return ControlFlow::Continue(());
        };
        let base = h.base_offset as u64;
        let next = base + h.offset_count();
        if next <= from {
            return ControlFlow::Continue(());
        }
        if base >= upto || (!out.batches.is_empty() && bytes + f.payload_len > max_bytes) {
            return ControlFlow::Break(());
        }
        out.batches.push(view.bytes.slice(f.payload_range()));
        out.next_offset = next;
        bytes += f.payload_len;
        ControlFlow::Continue(())
    });
    match walked {
        Err(e) if out.batches.is_empty() => Err(e),
        // Serve what was good; the next read from here reports the damage.
        _ => Ok(out),
    }
}

/// Frames with Raft indexes in `range`, up to `max_bytes` of payload (at least one).
pub fn read_entries(
    views: &[SegmentView],
    start: usize,
    range: Range<u64>,
    max_bytes: usize,
) -> Result<Vec<Frame>, LogError> {
    let mut out: Vec<Frame> = Vec::new();
    let mut bytes = 0usize;
    walk(views, start, |view, f, _| {
        if f.id.index < range.start {
            return ControlFlow::Continue(());
        }
        if f.id.index >= range.end || (!out.is_empty() && bytes + f.payload_len > max_bytes) {
            return ControlFlow::Break(());
        }
        bytes += f.payload_len;
        out.push(Frame {
            id: f.id,
            kind: f.kind,
            payload: view.bytes.slice(f.payload_range()),
        });
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

/// The first batch whose max timestamp is at or after `ts`, as stored.
pub fn find_batch_at_time(
    views: &[SegmentView],
    start: usize,
    ts: i64,
) -> Result<Option<Bytes>, LogError> {
    let mut found = None;
    walk(views, start, |view, f, batch| match batch {
        Some(h) if h.max_timestamp >= ts => {
            found = Some(view.bytes.slice(f.payload_range()));
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })?;
    Ok(found)
}
