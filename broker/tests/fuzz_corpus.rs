//! Replays the seed and fuzzer-found corpora of the `frame_parse`, `log_recovery` and
//! `index_load` fuzz targets (`fuzz/corpus/<target>/`) through the same checks the
//! targets run (`fuzz/checks/broker.rs`), so the normal test suite covers them without
//! libFuzzer.
//!
//! `cargo test -p sluice-broker --test fuzz_corpus -- --ignored write_seed_corpora`
//! rewrites the hand-made seeds (files named `seed-*`).

#[path = "../../fuzz/checks/broker.rs"]
mod checks;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;

use prost::Message;
use replay::{corpus_dir, replay};
use sluice_broker::log::{EntryId, EntryKind, Log, LogConfig, NewEntry};
use sluice_proto::batch::{BatchBuilder, Compression};
use sluice_proto::raft::RaftRequest;

#[test]
fn frame_parse_corpus_replays() {
    assert!(replay("frame_parse", checks::frame_parse) > 0);
}

#[test]
fn log_recovery_corpus_replays() {
    assert!(replay("log_recovery", checks::log_recovery) > 0);
}

#[test]
fn index_load_corpus_replays() {
    assert!(replay("index_load", checks::index_load) > 0);
}

#[test]
fn peer_request_decode_corpus_replays() {
    assert!(replay("peer_request_decode", checks::peer_request_decode) > 0);
}

/// The peer seeds are real requests, so the fuzzer starts from inputs that reach
/// deep into the payload decoders.
#[test]
fn peer_seeds_decode_as_the_requests_they_are() {
    use sluice_broker::raft::network::{AppendEntriesRpc, VoteRpc, decode};
    let seed = |name: &str| {
        let bytes = std::fs::read(corpus_dir("peer_request_decode").join(format!("seed-{name}")))
            .expect("seed file");
        RaftRequest::decode(&bytes[..]).expect("envelope").payload
    };
    let append: AppendEntriesRpc = decode(&seed("append-entries")).expect("append entries");
    assert_eq!(append.entries.len(), 2);
    let (_, vote): VoteRpc = decode(&seed("pre-vote")).expect("pre-vote");
    assert_eq!(vote.last_log_id.map(|id| id.index), Some(5));
}

fn batch(records: usize, timestamp: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..records {
        let value = format!("value-{i}");
        b.append(
            timestamp + i as i64,
            Some(b"k"),
            Some(value.as_bytes()),
            &[],
        )
        .expect("append");
    }
    b.build().to_vec()
}

/// A small log written by `Log::append`: its `.log`, `.index` and `.timeindex` bytes.
fn small_log(index_interval_bytes: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 1 << 20,
        index_interval_bytes,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).expect("open");
    let batches: Vec<Vec<u8>> = (0..6).map(|i| batch(1 + i % 3, 1_000 * i as i64)).collect();
    let mut entries = vec![NewEntry {
        id: EntryId { term: 1, index: 1 },
        kind: EntryKind::Blank,
        payload: &[],
    }];
    for (i, b) in batches.iter().enumerate() {
        entries.push(NewEntry {
            id: EntryId {
                term: 1 + i as u64 / 3,
                index: 2 + i as u64,
            },
            kind: EntryKind::Data,
            payload: b,
        });
    }
    entries.push(NewEntry {
        id: EntryId { term: 2, index: 8 },
        kind: EntryKind::Membership,
        payload: b"membership",
    });
    log.append(&entries).expect("append");
    log.sync().expect("sync");
    drop(log);
    let stem = dir.path().join(checks::SEGMENT_STEM);
    let read = |ext| std::fs::read(stem.with_extension(ext)).expect("read segment file");
    (read("log"), read("index"), read("timeindex"))
}

#[test]
#[ignore = "writes the seed corpora; run by hand"]
fn write_seed_corpora() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
    };
    let (log, index, time_index) = small_log(64);
    write("frame_parse", "log", &log);
    write("index_load", "index", &index);
    write("index_load", "timeindex", &time_index);
    // mode bit 0: write the indexes; bits 1..4: interval 16 << 2 = 64.
    let with_indexes = checks::join_recovery_input(0b101, &log, &index, &time_index);
    write("log_recovery", "log-with-indexes", &with_indexes);
    write(
        "log_recovery",
        "log-no-indexes",
        &checks::join_recovery_input(0b100, &log, &[], &[]),
    );
    let torn = &log[..log.len() - 7];
    write(
        "log_recovery",
        "torn-tail",
        &checks::join_recovery_input(0b101, torn, &index, &time_index),
    );
    let (log1, index1, time_index1) = small_log(1 << 20);
    write(
        "log_recovery",
        "log-sparse-index",
        &checks::join_recovery_input(0b1, &log1, &index1, &time_index1),
    );
    for (name, payload) in peer_payloads() {
        let request = RaftRequest {
            group_id: 7,
            payload,
        };
        write("peer_request_decode", name, &request.encode_to_vec());
    }
}

/// One payload of each peer RPC, as a broker sends them.
fn peer_payloads() -> Vec<(&'static str, bytes::Bytes)> {
    use openraft::EntryPayload;
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use sluice_broker::raft::network::{AppendEntriesRpc, VoteKind, VoteRpc, encode};
    use sluice_broker::raft::types::{Entry, RecordBatch, Vote, log_id};
    let vote = Vote::new_committed(3, 1);
    let entries = vec![
        Entry {
            log_id: log_id(3, 4),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(3, 5),
            payload: EntryPayload::Normal(RecordBatch(batch(2, 1_000).into())),
        },
    ];
    let append: AppendEntriesRpc = AppendEntriesRequest {
        vote,
        prev_log_id: Some(log_id(3, 3)),
        entries,
        leader_commit: Some(log_id(3, 3)),
    };
    let pre_vote: VoteRpc = (
        VoteKind::PreVote,
        VoteRequest::new(Vote::new(4, 2), Some(log_id(3, 5))),
    );
    vec![
        ("append-entries", encode(&append).expect("encode")),
        ("pre-vote", encode(&pre_vote).expect("encode")),
    ]
}

/// Found by `log_recovery`: recovery computed `last.index + 1` for a frame following
/// one with Raft index `u64::MAX`, which overflowed (a panic with overflow checks, and
/// in release a wrap that took index 0 as contiguous). That frame now ends the log.
#[test]
fn recovery_stops_at_a_frame_after_raft_index_u64_max() {
    use sluice_broker::log::frame::encode_header;
    let mut log = Vec::new();
    for index in [u64::MAX, 0] {
        let id = EntryId { term: 1, index };
        log.extend_from_slice(&encode_header(id, EntryKind::Blank, &[]));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(checks::SEGMENT_STEM).with_extension("log");
    std::fs::write(&path, &log).expect("write segment");
    let opened = Log::open(dir.path(), LogConfig::default()).expect("recovers");
    let last = EntryId {
        term: 1,
        index: u64::MAX,
    };
    assert_eq!(opened.last_id(), Some(last));
    assert_eq!(opened.size(), log.len() as u64 / 2);
    checks::log_recovery(&checks::join_recovery_input(0, &log, &[], &[]));
}
