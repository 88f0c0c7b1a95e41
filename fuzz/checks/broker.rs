//! The checks behind the `sluice-broker` fuzz targets, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and the corpus replay (`broker/tests/fuzz_corpus.rs`), so
//! both run exactly the same code. Every function must accept any input without
//! panicking; an `assert!` here is a property the library promises.

use std::path::Path;

use sluice_broker::log::frame::{self, EntryKind, FRAME_HEADER_LEN};
use sluice_broker::log::index::{Index, IndexEntry, OffsetEntry, TimeEntry};
use sluice_broker::log::{EntryId, Log, LogConfig};
use sluice_broker::raft::network::{self, AppendEntriesRpc, SnapshotRpc, VoteRpc};
use sluice_broker::raft::pulse;
use sluice_proto::raft::RaftRequest;

/// Name of the single segment `log_recovery` writes.
pub const SEGMENT_STEM: &str = "00000000000000000000";

/// `frame_parse`: the frame at 0, then a walk over consecutive frames. A frame that
/// passes its CRC also parses without verification, identically, and lies in the buffer.
pub fn frame_parse(data: &[u8]) {
    let mut pos = 0usize;
    while let Ok(f) = frame::parse(data, pos, true) {
        assert_eq!(f.position, pos);
        assert!(f.end() <= data.len() && f.end() >= pos + FRAME_HEADER_LEN);
        assert_eq!(frame::parse(data, pos, false), Ok(f));
        let header = frame::encode_header(f.id, f.kind, &[&data[f.payload_range()]]);
        assert_eq!(&header[..], &data[pos..pos + FRAME_HEADER_LEN]);
        pos = f.end();
    }
    // Without verification only the structure is checked; it must not panic either.
    let _ = frame::parse(data, 0, false);
}

/// `index_load`: the input as an `.index` and as a `.timeindex` file. Whatever `load`
/// returns is well formed: in order and inside the log.
pub fn index_load(data: &[u8]) {
    let dir = tempdir();
    let path = dir.path().join("fuzz.index");
    std::fs::write(&path, data).expect("write index file");
    for log_len in [u64::MAX, data.len() as u64, 4096] {
        check_loaded::<OffsetEntry>(&path, log_len);
        check_loaded::<TimeEntry>(&path, log_len);
    }
}

fn check_loaded<E: IndexEntry>(path: &Path, log_len: u64) {
    if let Ok(entries) = Index::<E>::load(path, log_len) {
        for e in &entries {
            assert!(e.position() != 0 && u64::from(e.position()) < log_len);
        }
        for w in entries.windows(2) {
            assert!(w[0].precedes(&w[1]));
        }
    }
}

/// `log_recovery`: the input as a partition's only segment, recovered by `Log::open`
/// and read back whole with `read` and `entries`. Nothing may panic, every frame served
/// must be one that passes its CRC in the input, and reopening the recovered log must
/// find the same log.
///
/// Input layout: `[mode][index len: u16 le][timeindex len: u16 le]` then the `.log`
/// bytes, then the `.index` and `.timeindex` bytes (written only if bit 0 of `mode` is
/// set). Bits 1..4 of `mode` choose the index interval (16 << n bytes). An input shorter
/// than the 5-byte prefix is the whole `.log` file.
pub fn log_recovery(data: &[u8]) {
    let (mode, log, index, time_index) = split_recovery_input(data);
    let dir = tempdir();
    let stem = dir.path().join(SEGMENT_STEM);
    std::fs::write(stem.with_extension("log"), log).expect("write segment");
    if mode & 1 == 1 {
        std::fs::write(stem.with_extension("index"), index).expect("write index");
        std::fs::write(stem.with_extension("timeindex"), time_index).expect("write timeindex");
    }
    let config = LogConfig {
        segment_bytes: 1 << 20,
        index_interval_bytes: 16 << ((mode >> 1) & 7),
        ..LogConfig::default()
    };
    let Ok(log_handle) = Log::open(dir.path(), config.clone()) else {
        return;
    };
    let state = |l: &Log| (l.start_offset(), l.next_offset(), l.first_id(), l.last_id());
    let before = state(&log_handle);
    read_all(&log_handle, log);
    drop(log_handle);
    let again = Log::open(dir.path(), config).expect("a recovered log reopens");
    assert_eq!(
        before,
        state(&again),
        "reopening a recovered log changed it"
    );
    read_all(&again, log);
}

/// Splits a `log_recovery` input into (mode, log, index, timeindex).
pub fn split_recovery_input(data: &[u8]) -> (u8, &[u8], &[u8], &[u8]) {
    if data.len() < 5 {
        return (0, data, &[], &[]);
    }
    let mode = data[0];
    let rest = &data[5..];
    let time_len = usize::from(u16::from_le_bytes([data[3], data[4]])).min(rest.len());
    let (rest, time_index) = rest.split_at(rest.len() - time_len);
    let index_len = usize::from(u16::from_le_bytes([data[1], data[2]])).min(rest.len());
    let (log, index) = rest.split_at(rest.len() - index_len);
    (mode, log, index, time_index)
}

/// Builds a `log_recovery` input (the inverse of [`split_recovery_input`]).
pub fn join_recovery_input(mode: u8, log: &[u8], index: &[u8], time_index: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(&(index.len() as u16).to_le_bytes());
    out.extend_from_slice(&(time_index.len() as u16).to_le_bytes());
    out.extend_from_slice(log);
    out.extend_from_slice(index);
    out.extend_from_slice(time_index);
    out
}

/// Reads every batch and every entry of `log`, checking each against `input`.
fn read_all(log: &Log, input: &[u8]) {
    let end = log.next_offset();
    let mut from = log.start_offset();
    for _ in 0..100_000 {
        match log.read(from, 4096, u64::MAX) {
            Ok(r) if r.batches.is_empty() => break,
            Ok(r) => {
                for batch in &r.batches {
                    assert_served(input, None, Some(EntryKind::Data), batch);
                }
                assert!(r.next_offset > from && r.next_offset <= end);
                from = r.next_offset;
            }
            Err(_) => break,
        }
    }
    let mut next = log.first_id().map_or(0, |id| id.index);
    for _ in 0..100_000 {
        match log.entries(next..u64::MAX, 4096) {
            Ok(frames) if frames.is_empty() => break,
            Ok(frames) => {
                for f in &frames {
                    assert!(f.id.index >= next);
                    assert_served(input, Some(f.id), Some(f.kind), &f.payload);
                }
                let last = frames.last().map_or(next, |f| f.id.index);
                match last.checked_add(1) {
                    Some(n) if n > next => next = n,
                    _ => break,
                }
            }
            Err(_) => break,
        }
    }
}

/// Asserts `payload` is the payload of a frame of `input` that passes its CRC.
fn assert_served(input: &[u8], id: Option<EntryId>, kind: Option<EntryKind>, payload: &[u8]) {
    let len = payload.len();
    let found = (0..input.len().saturating_sub(FRAME_HEADER_LEN + len) + 1).any(|p| {
        input.len() >= p + FRAME_HEADER_LEN + len
            && input[p..p + 4] == (len as u32).to_le_bytes()
            && &input[p + FRAME_HEADER_LEN..p + FRAME_HEADER_LEN + len] == payload
            && frame::parse(input, p, true)
                .is_ok_and(|f| id.is_none_or(|id| id == f.id) && kind.is_none_or(|k| k == f.kind))
    });
    assert!(
        found,
        "served a {len}-byte payload that is no CRC-valid frame of the input"
    );
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create temp dir")
}

/// `peer_request_decode`: the input as a broker-to-broker Raft request, its payload
/// decoded as each RPC the peer service accepts (another broker's bytes are input
/// like any other: a broken or hostile peer must get an error, not a panic). The raw
/// input is tried as a payload too, so the fuzzer reaches the payload decoders
/// without first having to learn the protobuf envelope.
pub fn peer_request_decode(data: &[u8]) {
    use prost::Message;
    let payload = RaftRequest::decode(data).map(|r| r.payload).ok();
    let raw = bytes::Bytes::copy_from_slice(data);
    for p in [Some(&raw), payload.as_ref()].into_iter().flatten() {
        let _ = network::decode::<AppendEntriesRpc>(p);
        let _ = network::decode::<VoteRpc>(p);
        let _ = network::decode::<SnapshotRpc>(p);
        let _ = network::decode::<pulse::Beat>(p);
        let _ = network::decode::<pulse::BeatReply>(p);
    }
}
