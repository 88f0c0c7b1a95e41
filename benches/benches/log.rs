//! Partition log throughput: append without fsync, append with group-commit fsync
//! (concurrent appenders), and reads from a warm log.
//!
//! `cargo bench -p sluice-benches --bench log`. Compare the fsync figures with
//! `dd if=/dev/zero of=FILE bs=16k count=20000 conv=fdatasync` on the same disk.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_benches::storage_batch;
use sluice_broker::log::{EntryId, EntryKind, Log, LogConfig, NewEntry, RetentionPolicy};

const BATCH_BYTES: usize = 16 * 1024;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 128 << 20,
        segment_age: None,
        index_interval_bytes: 4096,
        // Keeps the bench's disk footprint bounded; enforced every few thousand appends.
        retention: RetentionPolicy {
            max_bytes: Some(512 << 20),
            max_age: None,
        },
    }
}

/// Appends data entries with consecutive Raft indexes, from any number of tasks.
struct Appender {
    log: Log,
    next_index: Mutex<u64>,
}

impl Appender {
    fn new(dir: &std::path::Path) -> Self {
        Self {
            log: Log::open(dir, config()).expect("open"),
            next_index: Mutex::new(0),
        }
    }

    fn append(&self, batch: &[u8]) -> u64 {
        let mut next = self.next_index.lock().expect("lock");
        *next += 1;
        let entry = NewEntry {
            id: EntryId {
                term: 1,
                index: *next,
            },
            kind: EntryKind::Data,
            payload: batch,
        };
        let appended = self.log.append(&[entry]).expect("append");
        if next.is_multiple_of(4096) {
            self.log
                .enforce_retention(i64::MAX, u64::MAX)
                .expect("retention");
        }
        appended.ticket
    }
}

fn workloads() -> [(&'static str, Vec<u8>); 2] {
    [
        (
            "1KiB-records",
            storage_batch((BATCH_BYTES / 1032) as u32, 1024),
        ),
        (
            "100B-records",
            storage_batch((BATCH_BYTES / 108) as u32, 100),
        ),
    ]
}

/// The same bytes written with plain `write(2)` to a file that is replaced every
/// 128 MiB, as the log's segments are: the machine's own limit, in the same run.
struct RawWriter {
    dir: std::path::PathBuf,
    file: std::fs::File,
    written: usize,
    files: usize,
}

impl RawWriter {
    fn new(dir: &std::path::Path) -> Self {
        let file = std::fs::File::create(dir.join("raw-0")).expect("create");
        Self {
            dir: dir.to_path_buf(),
            file,
            written: 0,
            files: 0,
        }
    }

    fn write(&mut self, buf: &[u8]) {
        use std::io::Write;
        self.file.write_all(buf).expect("write");
        self.written += buf.len();
        if self.written >= 128 << 20 {
            self.files += 1;
            let next = self.dir.join(format!("raw-{}", self.files));
            self.file = std::fs::File::create(&next).expect("create");
            if self.files >= 4 {
                let _ = std::fs::remove_file(self.dir.join(format!("raw-{}", self.files - 4)));
            }
            self.written = 0;
        }
    }
}

fn append_no_fsync(c: &mut Criterion) {
    let mut g = c.benchmark_group("log-append-no-fsync");
    g.measurement_time(Duration::from_secs(4)).sample_size(20);
    {
        let (_, batch) = &workloads()[0];
        let dir = tempfile::tempdir().expect("tempdir");
        let mut raw = RawWriter::new(dir.path());
        g.throughput(Throughput::Bytes(batch.len() as u64));
        g.bench_function("baseline-raw-write", |b| b.iter(|| raw.write(batch)));
    }
    for (name, batch) in workloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = Appender::new(dir.path());
        g.throughput(Throughput::Bytes(batch.len() as u64));
        g.bench_function(name, |b| b.iter(|| app.append(&batch)));
    }
    g.finish();
}

/// `appenders` tasks each append a batch and wait for it to be durable, in a loop.
fn append_group_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("log-append-group-commit");
    g.measurement_time(Duration::from_secs(6)).sample_size(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    {
        // Baseline: 32 × 16 KiB written, then one fdatasync, as a full group would be.
        let (_, batch) = &workloads()[0];
        let dir = tempfile::tempdir().expect("tempdir");
        let mut raw = RawWriter::new(dir.path());
        g.throughput(Throughput::Bytes((batch.len() * 32) as u64));
        g.bench_function("baseline-raw-write-fdatasync/32-writes", |b| {
            b.iter(|| {
                for _ in 0..32 {
                    raw.write(batch);
                }
                raw.file.sync_data().expect("fdatasync");
            })
        });
    }
    for appenders in [1usize, 8, 32, 128] {
        let (name, batch) = &workloads()[0];
        let batch = Arc::new(batch.clone());
        let dir = tempfile::tempdir().expect("tempdir");
        let app = Arc::new(Appender::new(dir.path()));
        g.throughput(Throughput::Bytes((batch.len() * appenders) as u64));
        g.bench_function(format!("{name}/{appenders}-appenders"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                rt.block_on(async {
                    let mut tasks = Vec::new();
                    for _ in 0..appenders {
                        let (app, batch) = (app.clone(), batch.clone());
                        tasks.push(tokio::spawn(async move {
                            for _ in 0..iters {
                                let ticket = app.append(&batch);
                                app.log.flush(ticket).await.expect("flush");
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.expect("task");
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn read_warm(c: &mut Criterion) {
    let mut g = c.benchmark_group("log-read-warm");
    g.measurement_time(Duration::from_secs(4)).sample_size(20);
    let (name, batch) = &workloads()[0];
    let dir = tempfile::tempdir().expect("tempdir");
    let app = Appender::new(dir.path());
    // 256 MiB: warm in the page cache, larger than the CPU caches.
    let total_batches = (256 << 20) / batch.len();
    for _ in 0..total_batches {
        app.append(batch);
    }
    let log = app.log;
    let end = log.next_offset();
    let total_bytes = (total_batches * batch.len()) as u64;
    g.throughput(Throughput::Bytes(total_bytes));
    g.bench_function(format!("{name}/1MiB-reads"), |b| {
        b.iter(|| {
            let mut offset = log.start_offset();
            let mut bytes = 0usize;
            while offset < end {
                let r = log.read(offset, 1 << 20, end).expect("read");
                bytes += r.bytes();
                offset = r.next_offset;
            }
            assert_eq!(bytes as u64, total_bytes);
        })
    });
    g.finish();
}

criterion_group!(benches, append_no_fsync, append_group_commit, read_warm);
criterion_main!(benches);
