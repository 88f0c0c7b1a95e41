//! Replays the seed and fuzzer-found corpora of the `batch_decode` and `request_decode`
//! fuzz targets (`fuzz/corpus/<target>/`) through the same checks the targets run
//! (`fuzz/checks/proto.rs`), so the normal test suite covers them without libFuzzer.
//!
//! `cargo test -p sluice-proto --test fuzz_corpus -- --ignored write_seed_corpora`
//! rewrites the hand-made seeds (files named `seed-*`).

#[path = "../../fuzz/checks/proto.rs"]
mod checks;
#[path = "../../fuzz/checks/replay.rs"]
mod replay;

use bytes::Bytes;
use prost::Message;
use replay::{corpus_dir, replay};
use sluice_proto::batch::{BatchBuilder, Compression, Header};
use sluice_proto::v1;

#[test]
fn batch_decode_corpus_replays() {
    assert!(replay("batch_decode", checks::batch_decode) > 0);
}

#[test]
fn request_decode_corpus_replays() {
    assert!(replay("request_decode", checks::request_decode) > 0);
}

fn seed_batches() -> Vec<(&'static str, Bytes)> {
    let mut out = Vec::new();
    for (name, codec) in [
        ("none", Compression::None),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        let mut one = BatchBuilder::new(codec);
        one.append(1_700_000_000_000, Some(b"key"), Some(b"value"), &[])
            .expect("append");
        out.push((name, one.build()));
        let mut many = BatchBuilder::new(codec).producer(7, 1, 42);
        for i in 0..5i64 {
            let headers = [
                Header::new("h", Some(Bytes::from_static(b"hv"))),
                Header::new("null", None),
            ];
            let key = format!("k{i}");
            let value = vec![b'a' + i as u8; 10 + i as usize];
            let key = (i % 2 == 0).then_some(key.as_bytes());
            let value = (i != 3).then_some(&value[..]);
            many.append(
                1_700_000_000_000 + 7 - i,
                key,
                value,
                &headers[..(i % 3) as usize],
            )
            .expect("append");
        }
        out.push((name, many.build()));
    }
    out.push(("empty", BatchBuilder::new(Compression::None).build()));
    out
}

#[test]
#[ignore = "writes the seed corpora; run by hand"]
fn write_seed_corpora() {
    let batches = seed_batches();
    let dir = corpus_dir("batch_decode");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (i, (name, b)) in batches.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}-{name}")), b).expect("write seed");
    }
    let dir = corpus_dir("request_decode");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut requests: Vec<(String, Vec<u8>)> = batches
        .iter()
        .enumerate()
        .map(|(i, (name, b))| {
            let req = v1::ProduceRequest {
                correlation_id: i as u64,
                topic: "orders".into(),
                partition: 2,
                batch: b.clone(),
                timeout_ms: 1000,
                ..Default::default()
            };
            (format!("produce-{i}-{name}"), req.encode_to_vec())
        })
        .collect();
    let fetch = v1::FetchRequest {
        topic: "orders".into(),
        partition: 1,
        offset: 42,
        max_bytes: 1 << 20,
        follow: true,
    };
    requests.push(("fetch".into(), fetch.encode_to_vec()));
    let mut create = v1::CreateTopicRequest {
        name: "orders".into(),
        partitions: 3,
        replication_factor: 3,
        ..Default::default()
    };
    create
        .configs
        .insert("retention.ms".into(), "86400000".into());
    requests.push(("create-topic".into(), create.encode_to_vec()));
    let list = v1::ListOffsetsRequest {
        topic: "orders".into(),
        partition: 0,
        spec: Some(v1::list_offsets_request::Spec::Timestamp(1_700_000_000_000)),
    };
    requests.push(("list-offsets".into(), list.encode_to_vec()));
    let meta = v1::MetadataRequest {
        topics: vec!["orders".into(), "greetings".into()],
    };
    requests.push(("metadata".into(), meta.encode_to_vec()));
    for (name, bytes) in requests {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
    }
}
