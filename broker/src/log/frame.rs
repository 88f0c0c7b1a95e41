//! The frame: how one Raft entry is laid out in a `.log` file.
//!
//! ```text
//! 0      4      8        16       24   25
//! | len  | crc  | term   | index  |kind| payload (len bytes) ...
//! ```
//! All integers little-endian. `crc` is crc32fast (CRC-32/IEEE) over `len` and
//! everything after `crc`, so a flipped bit anywhere in a frame, its length included,
//! is caught. This module encodes and checks frames; it never does I/O.

use bytes::Bytes;

/// Bytes before the payload.
pub const FRAME_HEADER_LEN: usize = 25;

/// Largest payload a frame may carry; bounds what a corrupt length can make us read.
pub const MAX_PAYLOAD_LEN: usize = 256 * 1024 * 1024;

/// What a Raft entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    /// A record batch (Kafka RecordBatch v2); consumes offsets.
    Data = 1,
    /// A Raft membership change, opaque to the log.
    Membership = 2,
    /// A Raft blank entry (a new leader's first entry), opaque to the log.
    Blank = 3,
}

impl EntryKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Data),
            2 => Some(Self::Membership),
            3 => Some(Self::Blank),
            _ => None,
        }
    }
}

/// Identity of an entry in the Raft log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    pub term: u64,
    pub index: u64,
}

/// An entry read back from the log; `payload` borrows the segment's mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: EntryId,
    pub kind: EntryKind,
    pub payload: Bytes,
}

/// The parsed header of a frame found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    pub id: EntryId,
    pub kind: EntryKind,
    /// Position of the frame's first byte in the scanned buffer.
    pub position: usize,
    pub payload_len: usize,
}

impl FrameRef {
    pub fn payload_range(&self) -> std::ops::Range<usize> {
        let start = self.position + FRAME_HEADER_LEN;
        start..start + self.payload_len
    }

    pub fn end(&self) -> usize {
        self.position + FRAME_HEADER_LEN + self.payload_len
    }
}

/// Why no valid frame starts at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameDefect {
    /// The buffer ends inside the frame: a torn write if it is the tail.
    Incomplete,
    /// The frame is whole but its checksum or kind is wrong.
    Corrupt,
}

/// Encodes a frame header for a payload given in parts (so a stamped batch prefix and
/// the untouched rest need not be joined).
pub fn encode_header(id: EntryId, kind: EntryKind, payload: &[&[u8]]) -> [u8; FRAME_HEADER_LEN] {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[8..16].copy_from_slice(&id.term.to_le_bytes());
    header[16..24].copy_from_slice(&id.index.to_le_bytes());
    header[24] = kind as u8;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[0..4]);
    crc.update(&header[8..]);
    for part in payload {
        crc.update(part);
    }
    header[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    header
}

/// Reads the frame at `position`. With `verify` the checksum is checked; without it
/// only the structure (bounds, kind) is, for callers that verified the bytes before.
pub fn parse(buf: &[u8], position: usize, verify: bool) -> Result<FrameRef, FrameDefect> {
    let Some(header) = buf.get(position..position + FRAME_HEADER_LEN) else {
        return Err(FrameDefect::Incomplete);
    };
    let payload_len = u32::from_le_bytes(le_array(&header[0..4])) as usize;
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(FrameDefect::Corrupt);
    }
    let start = position + FRAME_HEADER_LEN;
    let Some(payload) = buf.get(start..start + payload_len) else {
        return Err(FrameDefect::Incomplete);
    };
    if verify {
        let stored = u32::from_le_bytes(le_array(&header[4..8]));
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[0..4]);
        crc.update(&header[8..]);
        crc.update(payload);
        if crc.finalize() != stored {
            return Err(FrameDefect::Corrupt);
        }
    }
    let kind = EntryKind::from_u8(header[24]).ok_or(FrameDefect::Corrupt)?;
    Ok(FrameRef {
        id: EntryId {
            term: u64::from_le_bytes(le_array(&header[8..16])),
            index: u64::from_le_bytes(le_array(&header[16..24])),
        },
        kind,
        position,
        payload_len,
    })
}

fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let id = EntryId { term: 3, index: 7 };
        let mut buf = encode_header(id, EntryKind::Blank, &[payload]).to_vec();
        buf.extend_from_slice(payload);
        buf
    }

    #[test]
    fn encoded_frame_parses_back() {
        let buf = frame(b"hello");
        let f = parse(&buf, 0, true).expect("valid frame");
        assert_eq!(f.id, EntryId { term: 3, index: 7 });
        assert_eq!(f.kind, EntryKind::Blank);
        assert_eq!(&buf[f.payload_range()], b"hello");
        assert_eq!(f.end(), buf.len());
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let buf = frame(b"some payload bytes");
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x5a;
            assert!(parse(&bad, 0, true).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let buf = frame(b"0123456789");
        for len in 0..buf.len() {
            assert_eq!(parse(&buf[..len], 0, true), Err(FrameDefect::Incomplete));
        }
    }

    #[test]
    fn zeroed_bytes_are_not_a_frame() {
        let buf = [0u8; 64];
        assert_eq!(parse(&buf, 0, true), Err(FrameDefect::Corrupt));
    }
}
