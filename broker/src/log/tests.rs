//! Behaviour of the whole log: appends, reads, rolls, crash recovery, truncation,
//! retention and group commit, on a real directory with real fsyncs.

use std::path::Path;
use std::time::Duration;

use sluice_proto::batch::BatchHeader;
use sluice_proto::batch::header::{
    BASE_TIMESTAMP, BATCH_LENGTH, HEADER_LEN, LAST_OFFSET_DELTA, LOG_OVERHEAD, MAGIC, MAGIC_POS,
    MAX_TIMESTAMP, RECORD_COUNT,
};

use super::*;

/// A structurally valid batch header followed by `body` filler bytes. The log reads
/// only headers, so records need not decode here.
fn batch(records: u32, timestamp: i64, body: usize) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_LEN + body];
    let len = (b.len() - LOG_OVERHEAD) as i32;
    b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&len.to_be_bytes());
    b[MAGIC_POS] = MAGIC;
    b[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4]
        .copy_from_slice(&(records as i32 - 1).to_be_bytes());
    b[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&timestamp.to_be_bytes());
    b[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&timestamp.to_be_bytes());
    b[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&(records as i32).to_be_bytes());
    for (i, x) in b[HEADER_LEN..].iter_mut().enumerate() {
        *x = (i % 251) as u8 + 1;
    }
    b
}

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        segment_age: None,
        index_interval_bytes: 256,
        retention: RetentionPolicy::default(),
    }
}

fn data(index: u64, payload: &[u8]) -> NewEntry<'_> {
    NewEntry {
        id: EntryId { term: 1, index },
        kind: EntryKind::Data,
        payload,
    }
}

/// Appends `n` data entries of `records` records each, Raft indexes from 1,
/// timestamps 1000, 1010, ...
fn fill(log: &Log, n: u64, records: u32, body: usize) {
    let (first, term) = log.last_id().map_or((1, 1), |id| (id.index + 1, id.term));
    for i in 0..n {
        let idx = first + i;
        let b = batch(records, 1000 + 10 * idx as i64, body);
        let id = EntryId { term, index: idx };
        log.append(&[NewEntry {
            id,
            ..data(idx, &b)
        }])
        .expect("append");
    }
}

fn read_all(log: &Log) -> Vec<BatchHeader> {
    let r = log
        .read(log.start_offset(), usize::MAX, u64::MAX)
        .expect("read");
    r.batches
        .iter()
        .map(|b| BatchHeader::parse(b).expect("stored batch parses"))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("readdir") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

fn active_log_file(dir: &Path) -> std::path::PathBuf {
    segment_files(dir).pop().expect("a segment")
}

#[test]
fn appends_get_dense_offsets_and_read_back_stamped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    let a = log
        .append(&[data(1, &batch(3, 5, 10)), data(2, &batch(2, 6, 10))])
        .expect("append");
    assert_eq!((a.first_offset, a.next_offset), (0, 5));
    let blank = NewEntry {
        id: EntryId { term: 2, index: 3 },
        kind: EntryKind::Blank,
        payload: b"",
    };
    log.append(&[blank]).expect("append blank");
    let b = log
        .append(&[NewEntry {
            id: EntryId { term: 2, index: 4 },
            ..data(4, &batch(1, 7, 0))
        }])
        .expect("append");
    assert_eq!((b.first_offset, b.next_offset), (5, 6));
    let headers = read_all(&log);
    let bases: Vec<i64> = headers.iter().map(|h| h.base_offset).collect();
    assert_eq!(bases, vec![0, 3, 5]);
    assert_eq!(
        headers[2].partition_leader_epoch, 2,
        "term stamped as leader epoch"
    );
    assert_eq!(log.last_id(), Some(EntryId { term: 2, index: 4 }));
}

#[test]
fn read_honours_start_offset_byte_limit_and_high_watermark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    fill(&log, 50, 2, 100);
    // Offset 7 lies inside the batch at 6; the whole batch is returned.
    let r = log.read(7, 1, u64::MAX).expect("read");
    assert_eq!(
        r.batches.len(),
        1,
        "at least one batch despite a tiny limit"
    );
    assert_eq!(
        BatchHeader::parse(&r.batches[0])
            .expect("batch")
            .base_offset,
        6
    );
    assert_eq!(r.next_offset, 8);
    let r = log.read(10, 3 * 161, u64::MAX).expect("read");
    assert_eq!(r.batches.len(), 3);
    let r = log.read(10, usize::MAX, 20).expect("read");
    assert_eq!(r.next_offset, 20, "stops at the high watermark");
    assert!(
        log.read(100, 10, u64::MAX)
            .expect("read at end")
            .batches
            .is_empty()
    );
    assert!(matches!(
        log.read(101, 10, u64::MAX),
        Err(LogError::OffsetOutOfRange {
            requested: 101,
            start: 0,
            end: 100
        })
    ));
}

#[test]
fn segments_roll_by_size_and_reads_span_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    fill(&log, 100, 1, 300);
    let bases = log.segment_base_offsets();
    assert!(bases.len() >= 8, "expected many segments, got {bases:?}");
    let headers = read_all(&log);
    let bases_read: Vec<i64> = headers.iter().map(|h| h.base_offset).collect();
    assert_eq!(bases_read, (0..100).collect::<Vec<i64>>());
    for offset in [0u64, 13, 57, 99] {
        let r = log.read(offset, 1, u64::MAX).expect("read");
        assert_eq!(
            BatchHeader::parse(&r.batches[0]).expect("b").base_offset as u64,
            offset
        );
    }
}

#[test]
fn reopen_restores_offsets_ids_and_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = {
        let log = Log::open(dir.path(), small_config()).expect("open");
        fill(&log, 77, 3, 120);
        log.sync().expect("sync");
        (
            read_all(&log),
            log.last_id(),
            log.next_offset(),
            log.segment_base_offsets(),
        )
    };
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    assert_eq!(
        (
            read_all(&log),
            log.last_id(),
            log.next_offset(),
            log.segment_base_offsets()
        ),
        before
    );
    fill(&log, 1, 1, 0);
    assert_eq!(log.next_offset(), 77 * 3 + 1);
}

#[test]
fn torn_tail_is_truncated_at_every_byte_of_the_last_frame() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 1 << 20,
        ..small_config()
    };
    let (frame_start, frame_end, expect) = {
        let log = Log::open(dir.path(), config.clone()).expect("open");
        fill(&log, 20, 2, 90);
        let start = log.size();
        let expect = (read_all(&log), log.last_id(), log.next_offset());
        fill(&log, 1, 2, 90);
        log.sync().expect("sync");
        (start, log.size(), expect)
    };
    let src = active_log_file(dir.path());
    for cut in frame_start..frame_end {
        let scratch = tempfile::tempdir().expect("tempdir");
        copy_dir(dir.path(), scratch.path());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(scratch.path().join(src.file_name().expect("name")))
            .expect("open segment");
        file.set_len(cut).expect("truncate");
        let log = Log::open(scratch.path(), config.clone()).expect("recover");
        assert_eq!(
            (read_all(&log), log.last_id(), log.next_offset()),
            expect,
            "cut at {cut}"
        );
        fill(&log, 1, 2, 90);
        assert_eq!(
            log.next_offset(),
            expect.2 + 2,
            "appends continue after recovery"
        );
    }
}

#[test]
fn flipped_byte_in_last_frame_is_caught_on_recovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 1 << 20,
        ..small_config()
    };
    let (frame_start, frame_end, expect) = {
        let log = Log::open(dir.path(), config.clone()).expect("open");
        fill(&log, 10, 1, 40);
        let start = log.size();
        let expect = (read_all(&log), log.last_id());
        fill(&log, 1, 1, 40);
        log.sync().expect("sync");
        (start, log.size(), expect)
    };
    let name = active_log_file(dir.path())
        .file_name()
        .expect("name")
        .to_owned();
    for at in frame_start..frame_end {
        let scratch = tempfile::tempdir().expect("tempdir");
        copy_dir(dir.path(), scratch.path());
        let path = scratch.path().join(&name);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[at as usize] ^= 0x20;
        std::fs::write(&path, bytes).expect("write");
        let log = Log::open(scratch.path(), config.clone()).expect("recover");
        assert_eq!((read_all(&log), log.last_id()), expect, "flip at {at}");
    }
}

#[test]
fn corrupt_frame_in_sealed_segment_is_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(dir.path(), small_config()).expect("open");
        fill(&log, 40, 1, 300);
    }
    let first = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).expect("read");
    bytes[500] ^= 0xff;
    std::fs::write(&first, bytes).expect("write");
    let log = Log::open(dir.path(), small_config()).expect("open");
    // The good batch before the damage is served; the damaged one never is.
    let good = log.read(0, usize::MAX, u64::MAX).expect("good prefix");
    assert_eq!(good.next_offset, 1);
    let err = log
        .read(1, usize::MAX, u64::MAX)
        .expect_err("corrupt frame");
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    // Data in later segments is still served.
    let later = log.segment_base_offsets()[2];
    assert!(
        !log.read(later, 1, u64::MAX)
            .expect("read")
            .batches
            .is_empty()
    );
}

#[test]
fn deleted_or_garbled_indexes_are_rebuilt_with_same_lookups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = |log: &Log| {
        let by_offset: Vec<_> = (0..300)
            .step_by(7)
            .map(|o| log.read(o, 1, u64::MAX).expect("read").batches)
            .collect();
        let by_index: Vec<_> = (1..150)
            .step_by(5)
            .map(|i| log.entries(i..i + 3, usize::MAX).expect("entries"))
            .collect();
        let by_time: Vec<_> = (990..2600)
            .step_by(37)
            .map(|t| log.batch_at_time(t).expect("time"))
            .collect();
        (by_offset, by_index, by_time)
    };
    let expect = {
        let log = Log::open(dir.path(), small_config()).expect("open");
        fill(&log, 150, 2, 150);
        probe(&log)
    };
    let mut indexes: Vec<_> = std::fs::read_dir(dir.path())
        .expect("readdir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "index" || x == "timeindex")
        })
        .collect();
    indexes.sort();
    assert!(indexes.len() > 4);
    for (i, path) in indexes.iter().enumerate() {
        if i % 2 == 0 {
            std::fs::remove_file(path).expect("delete index");
        } else {
            std::fs::write(path, [0xabu8; 64]).expect("garble index");
        }
    }
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    assert_eq!(probe(&log), expect);
    assert!(indexes.iter().all(|p| p.exists()), "indexes are rewritten");
}

#[test]
fn entries_by_raft_index_span_segments_and_kinds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    fill(&log, 30, 1, 500);
    let m = NewEntry {
        id: EntryId { term: 2, index: 31 },
        kind: EntryKind::Membership,
        payload: b"members",
    };
    log.append(&[m]).expect("append");
    let got = log.entries(5..32, usize::MAX).expect("entries");
    let ids: Vec<u64> = got.iter().map(|f| f.id.index).collect();
    assert_eq!(ids, (5..32).collect::<Vec<_>>());
    assert_eq!(
        got.last().map(|f| (f.kind, f.payload.as_ref())),
        Some((EntryKind::Membership, &b"members"[..]))
    );
    assert_eq!(log.entries(3..6, 1).expect("limited").len(), 1);
}

#[test]
fn out_of_order_or_invalid_entries_are_rejected_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    fill(&log, 3, 1, 10);
    let size = log.size();
    let b = batch(1, 0, 10);
    assert!(matches!(
        log.append(&[data(5, &b)]),
        Err(LogError::NotContiguous { last: 3, got: 5 })
    ));
    let stale = NewEntry {
        id: EntryId { term: 0, index: 4 },
        ..data(4, &b)
    };
    assert!(matches!(
        log.append(&[stale]),
        Err(LogError::TermRegression { .. })
    ));
    assert!(matches!(
        log.append(&[data(4, &b), data(5, &b[..20])]),
        Err(LogError::InvalidBatch(_))
    ));
    let mut bad_magic = b.clone();
    bad_magic[MAGIC_POS] = 1;
    assert!(log.append(&[data(4, &bad_magic)]).is_err());
    assert_eq!(
        (
            log.size(),
            log.next_offset(),
            log.last_id().map(|i| i.index)
        ),
        (size, 3, Some(3))
    );
}

#[test]
fn truncate_after_rewinds_offsets_across_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    fill(&log, 100, 2, 300);
    let segments = log.segment_base_offsets().len();
    log.truncate_after(Some(40)).expect("truncate");
    assert_eq!(log.last_id().map(|i| i.index), Some(40));
    assert_eq!(log.next_offset(), 80);
    assert!(log.segment_base_offsets().len() < segments);
    assert_eq!(read_all(&log).len(), 40);
    // A new leader's entries take the freed indexes and offsets.
    let b = batch(5, 0, 300);
    let a = log
        .append(&[NewEntry {
            id: EntryId { term: 3, index: 41 },
            ..data(41, &b)
        }])
        .expect("append after truncate");
    assert_eq!(a.first_offset, 80);
    fill(&log, 20, 2, 300);
    let expect = (read_all(&log), log.last_id(), log.next_offset());
    drop(log);
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    assert_eq!((read_all(&log), log.last_id(), log.next_offset()), expect);
    log.truncate_after(None).expect("truncate all");
    assert_eq!(
        (log.last_id(), log.next_offset(), read_all(&log).len()),
        (None, 0, 0)
    );
}

#[test]
fn size_retention_deletes_oldest_segments_and_advances_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        retention: RetentionPolicy {
            max_bytes: Some(10_000),
            max_age: None,
        },
        ..small_config()
    };
    let log = Log::open(dir.path(), config).expect("open");
    fill(&log, 200, 1, 300);
    let before = log.segment_base_offsets();
    let deleted = log
        .enforce_retention(now_ms(), u64::MAX)
        .expect("retention");
    let after = log.segment_base_offsets();
    assert_eq!(after, before[deleted..].to_vec());
    assert!(
        log.size() >= 10_000 && log.size() < 10_000 + 4096 + 400,
        "kept {}",
        log.size()
    );
    assert_eq!(log.start_offset(), after[0]);
    assert!(matches!(
        log.read(0, 1, u64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    for base in &before[..deleted] {
        assert!(!dir.path().join(format!("{base:020}.log")).exists());
    }
    // Retention never deletes what is not yet committed.
    let log2_dir = tempfile::tempdir().expect("tempdir");
    let log2 = Log::open(
        log2_dir.path(),
        LogConfig {
            retention: RetentionPolicy {
                max_bytes: Some(0),
                max_age: None,
            },
            ..small_config()
        },
    )
    .expect("open");
    fill(&log2, 200, 1, 300);
    log2.enforce_retention(now_ms(), 30).expect("retention");
    assert!(log2.start_offset() <= 30);
}

#[test]
fn age_retention_deletes_segments_whose_newest_record_is_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        retention: RetentionPolicy {
            max_bytes: None,
            max_age: Some(Duration::from_millis(500)),
        },
        ..small_config()
    };
    let log = Log::open(dir.path(), config).expect("open");
    // Timestamps are 1000 + 10*index: "now" = 2000 keeps batches newer than 1500.
    fill(&log, 100, 1, 300);
    log.enforce_retention(2000, u64::MAX).expect("retention");
    let start = log.start_offset();
    let first = read_all(&log)[0];
    assert!(start > 0 && start <= 50, "start {start}");
    assert!(
        first.max_timestamp >= 1000 + 10 * 40,
        "kept too much: {}",
        first.max_timestamp
    );
}

#[test]
fn batch_at_time_finds_the_first_batch_not_older() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    fill(&log, 100, 1, 200);
    for t in [0i64, 1010, 1015, 1500, 1999, 2000] {
        let got = log
            .batch_at_time(t)
            .expect("lookup")
            .map(|b| BatchHeader::parse(&b).expect("b").max_timestamp);
        let want = (1..=100).map(|i| 1000 + 10 * i).find(|&ts| ts >= t);
        assert_eq!(got, want, "t={t}");
    }
    assert_eq!(log.batch_at_time(2001).expect("lookup"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_share_fsyncs_and_all_become_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::sync::Arc::new(
        Log::open(
            dir.path(),
            LogConfig {
                segment_bytes: 1 << 20,
                ..small_config()
            },
        )
        .expect("open"),
    );
    let next = std::sync::Arc::new(std::sync::Mutex::new(1u64));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (log, next) = (log.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let b = batch(1, 0, 64);
                let ticket = {
                    let mut n = next.lock().expect("lock");
                    let a = log.append(&[data(*n, &b)]).expect("append");
                    *n += 1;
                    a.ticket
                };
                log.flush(ticket).await.expect("flush");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(log.next_offset(), 320);
    drop(log);
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    assert_eq!(log.next_offset(), 320);
}

#[test]
fn next_offset_after_gives_the_offset_following_each_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    fill(&log, 60, 3, 300);
    for index in [1u64, 2, 17, 40, 59, 60] {
        assert_eq!(
            log.next_offset_after(index).expect("lookup"),
            index * 3,
            "index {index}"
        );
    }
    assert_eq!(log.next_offset_after(0).expect("before"), 0);
    assert_eq!(log.next_offset_after(1000).expect("after"), 180);
}

#[test]
fn reset_starts_an_empty_log_at_the_given_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), small_config()).expect("open");
    fill(&log, 60, 3, 300);
    let last = EntryId {
        term: 4,
        index: 500,
    };
    log.reset(9000, Some(last)).expect("reset");
    assert_eq!(
        (log.start_offset(), log.next_offset(), log.last_id()),
        (9000, 9000, Some(last))
    );
    let b = batch(2, 0, 10);
    let a = log
        .append(&[NewEntry {
            id: EntryId {
                term: 4,
                index: 501,
            },
            ..data(501, &b)
        }])
        .expect("append after reset");
    assert_eq!(a.first_offset, 9000);
    drop(log);
    let log = Log::open(dir.path(), small_config()).expect("reopen");
    assert_eq!((log.start_offset(), log.next_offset()), (9000, 9002));
    assert_eq!(log.segment_base_offsets(), vec![9000]);
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .expect("readdir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs
}

#[test]
fn torn_tail_in_the_segment_sealed_last_drops_the_segment_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(dir.path(), small_config()).expect("open");
        fill(&log, 40, 1, 300);
        log.sync().expect("sync");
    }
    let logs = segment_files(dir.path());
    assert!(logs.len() >= 3);
    // As if the crash came before the fsync of the segment sealed last finished.
    let sealed_last = &logs[logs.len() - 2];
    let len = std::fs::metadata(sealed_last).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(sealed_last)
        .expect("open");
    file.set_len(len - 10).expect("tear");
    drop(file);
    let log = Log::open(dir.path(), small_config()).expect("recover");
    assert_eq!(
        segment_files(dir.path()).len(),
        logs.len() - 1,
        "the last segment went"
    );
    let headers = read_all(&log);
    let bases: Vec<i64> = headers.iter().map(|h| h.base_offset).collect();
    assert_eq!(
        bases,
        (0..bases.len() as i64).collect::<Vec<_>>(),
        "no holes"
    );
    assert_eq!(log.next_offset(), bases.len() as u64);
    assert_eq!(log.last_id().map(|id| id.index), Some(bases.len() as u64));
    fill(&log, 5, 1, 300);
    assert_eq!(log.next_offset(), bases.len() as u64 + 5);
}

#[test]
fn garbage_after_the_frames_of_an_older_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(dir.path(), small_config()).expect("open");
        fill(&log, 40, 1, 300);
    }
    let logs = segment_files(dir.path());
    let older = &logs[logs.len() - 3];
    let mut bytes = std::fs::read(older).expect("read");
    let at = bytes.len() - 5;
    bytes[at] ^= 0x55;
    std::fs::write(older, bytes).expect("write");
    assert!(matches!(
        Log::open(dir.path(), small_config()),
        Err(LogError::Corrupt { .. })
    ));
}

/// Bytes of this process's mappings of `.log` files under `dir` that are resident
/// (the `Rss:` lines of /proc/self/smaps), i.e. what reads left in `RssFile`.
fn resident_log_bytes(dir: &Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let dir = dir.to_str().expect("utf-8 temp dir");
    let mut ours = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if !first.ends_with(':') {
            // A mapping's header: range, perms, offset, device, inode, path.
            let path = line.split_whitespace().nth(5).unwrap_or("");
            ours = path.starts_with(dir) && path.ends_with(".log");
        } else if ours && first == "Rss:" {
            kib += fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .expect("Rss value");
        }
    }
    kib * 1024
}

#[test]
fn replaying_sealed_segments_does_not_keep_them_resident() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 8 * MIB,
        segment_age: None,
        index_interval_bytes: 4096,
        retention: RetentionPolicy::default(),
    };
    let log = Log::open(dir.path(), config).expect("open");
    // 48 MiB in batches of 64 KiB and a bit, so reads end mid-page, appended 16 at a
    // time as a busy partition does (large writes make large page-cache folios, which
    // a fault maps whole): five sealed segments and some of the active one.
    let body = vec![batch(16, 1000, (64 << 10) + 100); 16];
    for round in 0..48u64 {
        let entries: Vec<NewEntry<'_>> = (0..16u64)
            .map(|i| data(round * 16 + i + 1, &body[i as usize]))
            .collect();
        log.append(&entries).expect("append");
    }
    assert!(log.segment_base_offsets().len() >= 6, "segments rolled");
    let end = log.next_offset();

    // Replay from offset 0 in 1 MiB reads, as a fetch stream does.
    let mut offset = 0;
    let mut reads = 0;
    while offset < end {
        let read = log.read(offset, MIB as usize, end).expect("read");
        assert!(!read.batches.is_empty(), "progress at {offset}");
        if reads == 10 {
            // While a read is held its pages are mapped: the measure sees them.
            assert!(
                resident_log_bytes(dir.path()) >= MIB / 2,
                "a held read shows as resident"
            );
        }
        offset = read.next_offset;
        reads += 1;
    }
    let after_reads = resident_log_bytes(dir.path());

    // The Raft path (replication and apply) reads the same bytes by entry.
    let last = log.last_id().expect("entries").index;
    let mut index = 1;
    while index <= last {
        let frames = log.entries(index..last + 1, MIB as usize).expect("entries");
        index = frames.last().expect("an entry").id.index + 1;
    }
    let after_entries = resident_log_bytes(dir.path());

    // A batch read more than once is still served; the page cache kept it.
    let again = log.read(0, MIB as usize, end).expect("read again");
    assert_eq!(
        BatchHeader::parse(&again.batches[0])
            .expect("parse")
            .base_offset,
        0
    );
    drop(again);

    // Without the release every page read stays mapped: all 48 MiB. Releasing whole
    // pages, or 64 KiB blocks, still left 7.8 MB: a fault also maps the cached pages
    // around it, beyond the read (see `mapped::release`). Now nothing read stays.
    let bound = 64 << 10;
    assert!(
        after_reads < bound && after_entries < bound,
        "segment pages left resident: {after_reads} bytes after reads, \
         {after_entries} after entries (bound {bound})"
    );
}
