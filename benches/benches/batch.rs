//! Record batch codec throughput: encode (`BatchBuilder`), verify (`Batch::verify`, the
//! broker's produce path) and decode (verify, then `Batch::decode` and iterate every
//! record, as a consumer that checks what it reads would).
//!
//! `cargo bench -p sluice-benches --bench batch`. Batches are ~16 KiB of 1 KiB records
//! and of 100 B records; the 1 KiB case also runs with lz4 and zstd. Throughput is in
//! *uncompressed* batch bytes for every codec, so the figures compare directly.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_proto::batch::{Batch, BatchBuilder, Compression};

const BATCH_BYTES: usize = 16 * 1024;

/// Keys and values of one batch; values are half structured text, half random
/// alphanumerics, so the codecs see data about as compressible as typical JSON events.
struct Workload {
    name: &'static str,
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

fn workload(name: &'static str, value_len: usize) -> Workload {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    // ~24 bytes per record go to the key and the record framing.
    let count = BATCH_BYTES / (value_len + 24);
    let records = (0..count)
        .map(|i| {
            let key = format!("user-{:06}", next() % 100_000).into_bytes();
            let mut value = format!(
                "{{\"seq\":{i},\"event\":\"page_view\",\"region\":\"eu-west-1\",\"payload\":\""
            )
            .into_bytes();
            while value.len() < value_len / 2 {
                value.extend_from_slice(b"status=ok;");
            }
            while value.len() < value_len {
                value.push(ALNUM[(next() % ALNUM.len() as u64) as usize]);
            }
            value.truncate(value_len);
            (key, value)
        })
        .collect();
    Workload { name, records }
}

fn build(w: &Workload, codec: Compression) -> Bytes {
    let mut b = BatchBuilder::with_capacity(codec, BATCH_BYTES + 1024);
    for (i, (key, value)) in w.records.iter().enumerate() {
        b.append(1_700_000_000_000 + i as i64, Some(key), Some(value), &[])
            .expect("bench batch fits");
    }
    b.build()
}

fn cases() -> Vec<(Workload, Compression)> {
    let big = || workload("1KiB-records", 1024);
    vec![
        (big(), Compression::None),
        (big(), Compression::Lz4),
        (big(), Compression::Zstd),
        (workload("100B-records", 100), Compression::None),
    ]
}

fn configure(c: &mut Criterion) {
    let cases = cases();
    for (w, codec) in &cases {
        let uncompressed = build(w, Compression::None).len();
        let encoded = build(w, *codec);
        eprintln!(
            "{}/{codec}: {} records, {uncompressed} bytes uncompressed, {} bytes encoded",
            w.name,
            w.records.len(),
            encoded.len()
        );
    }

    let mut group = c.benchmark_group("batch/encode");
    for (w, codec) in &cases {
        group.throughput(Throughput::Bytes(build(w, Compression::None).len() as u64));
        group.bench_with_input(BenchmarkId::new(w.name, codec), w, |b, w| {
            b.iter(|| build(black_box(w), *codec))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("batch/verify");
    for (w, codec) in &cases {
        let bytes = build(w, *codec);
        group.throughput(Throughput::Bytes(build(w, Compression::None).len() as u64));
        group.bench_with_input(BenchmarkId::new(w.name, codec), &bytes, |b, bytes| {
            b.iter(|| Batch::verify(black_box(bytes)).expect("valid batch"))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("batch/decode");
    for (w, codec) in &cases {
        let bytes = build(w, *codec);
        group.throughput(Throughput::Bytes(build(w, Compression::None).len() as u64));
        group.bench_with_input(BenchmarkId::new(w.name, codec), &bytes, |b, bytes| {
            b.iter(|| {
                Batch::verify(black_box(bytes)).expect("valid batch");
                let batch = Batch::decode(bytes.clone()).expect("valid batch");
                let mut value_bytes = 0usize;
                for record in &batch {
                    let record = record.expect("valid record");
                    value_bytes += record.value.map_or(0, |v| v.len());
                }
                value_bytes
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(15)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        // 12 benchmarks: keep the analysis short so the file runs in under a minute.
        .nresamples(20_000)
        .without_plots();
    targets = configure
}
criterion_main!(benches);
