//! The client against an in-process mock of the `sluice.v1` service
//! (`support/mock.rs`). It checks the client's
//! network behaviour — pipelined produce, leader and controller hints, retries,
//! back-pressure, follow-mode fetch — without a real broker. End-to-end tests
//! against the real broker live in the workspace's `tests/` crate.

#[path = "support/mock.rs"]
mod mock;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use mock::Cluster;
use sluice_client::{
    Acks, Admin, ClientConfig, ClientError, Connection, Consumer, ConsumerConfig, NewTopic, Offset,
    OffsetReset, Producer, ProducerConfig, ProducerRecord, TopicPartition,
};
use sluice_proto::batch::BatchHeader;
use sluice_proto::v1;

fn client_config(addrs: &[&str]) -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        retry_backoff: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(50),
        ..ClientConfig::new(addrs.iter().copied())
    }
}

fn producer_config() -> ProducerConfig {
    ProducerConfig {
        retry_backoff: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(50),
        request_timeout: Duration::from_secs(5),
        ..ProducerConfig::default()
    }
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test step timed out")
}

/// Sends `record` and waits for its acknowledgement.
async fn acked(producer: &Producer, record: ProducerRecord) -> sluice_client::RecordMetadata {
    within(within(producer.send(record)).await.unwrap())
        .await
        .unwrap()
}

/// A one-broker mock cluster with topic `topic`, and a connection to it.
async fn one_broker_with_topic(topic: &str, partitions: u32) -> (Cluster, Connection) {
    let cluster = Cluster::new();
    let addr = cluster.start_broker(1).await;
    let conn = within(Connection::connect(client_config(&[&addr])))
        .await
        .unwrap();
    within(Admin::new(conn.clone()).create_topic(NewTopic::new(topic, partitions)))
        .await
        .unwrap();
    (cluster, conn)
}

#[tokio::test]
async fn produce_and_consume_round_trip() {
    let cluster = Cluster::new();
    let addr = cluster.start_broker(1).await;
    let conn = within(Connection::connect(client_config(&[&addr])))
        .await
        .unwrap();
    let admin = Admin::new(conn.clone());
    within(admin.create_topic(NewTopic::new("orders", 3)))
        .await
        .unwrap();
    let err = within(admin.create_topic(NewTopic::new("orders", 3)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::TopicAlreadyExists { .. }),
        "{err}"
    );

    let producer = Producer::new(conn.clone(), producer_config()).unwrap();
    let mut acks = Vec::new();
    for i in 0..600u32 {
        let mut record = ProducerRecord::new("orders", format!("value-{i}"));
        if i % 2 == 0 {
            record = record.key(format!("key-{}", i % 10));
        }
        acks.push(within(producer.send(record)).await.unwrap());
    }
    let mut offsets: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for ack in acks {
        let md = within(ack).await.unwrap();
        offsets.entry(md.partition).or_default().push(md.offset);
    }
    for (p, mut offs) in offsets.clone() {
        offs.sort();
        assert_eq!(
            offs,
            (0..offs.len() as u64).collect::<Vec<_>>(),
            "partition {p}"
        );
    }
    // Keyed records land where Kafka's partitioner puts them.
    for (offset, key, _) in cluster.records("orders", 1) {
        if let Some(key) = key {
            assert_eq!(
                sluice_client::partitioner::partition_for_key(&key, 3),
                1,
                "offset {offset}"
            );
        }
    }
    within(producer.close()).await.unwrap();

    let mut consumer = Consumer::new(conn, ConsumerConfig::default()).unwrap();
    let tps: Vec<TopicPartition> = (0..3).map(|p| TopicPartition::new("orders", p)).collect();
    consumer.assign(tps.clone());
    for tp in &tps {
        consumer.seek(tp, Offset::Earliest).unwrap();
    }
    let mut seen = 0;
    let mut values = std::collections::BTreeSet::new();
    {
        let mut stream = consumer.stream();
        while seen < 600 {
            let r = within(stream.next()).await.unwrap().unwrap();
            values.insert(String::from_utf8(r.value.unwrap().to_vec()).unwrap());
            seen += 1;
        }
    }
    assert_eq!(values.len(), 600);
    for tp in &tps {
        let expected = offsets[&tp.partition].len() as u64;
        assert_eq!(within(consumer.position(tp)).await.unwrap(), expected);
        assert_eq!(consumer.lag(tp), Some(0));
    }
    let description = within(admin.describe_topic("orders")).await.unwrap();
    assert_eq!(description.partitions.len(), 3);
    let total: u64 = description
        .partitions
        .iter()
        .map(|p| p.high_watermark)
        .sum();
    assert_eq!(total, 600);
    let err = within(admin.describe_topic("nope")).await.unwrap_err();
    assert!(matches!(err, ClientError::UnknownTopic { .. }), "{err}");
}

#[tokio::test]
async fn produce_to_an_unknown_topic_fails_at_once() {
    let cluster = Cluster::new();
    let addr = cluster.start_broker(1).await;
    let producer = within(Producer::connect(
        client_config(&[&addr]),
        producer_config(),
    ))
    .await
    .unwrap();
    let err = within(producer.send(ProducerRecord::new("nope", "v")))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::UnknownTopic { .. }), "{err}");
}

#[tokio::test]
async fn stale_leaders_and_controllers_are_followed_by_hint() {
    let cluster = Cluster::new();
    let a = cluster.start_broker(1).await;
    let b = cluster.start_broker(2).await;
    // Broker 2 is the controller, but metadata says broker 1.
    {
        let mut st = cluster.state();
        st.controller = 2;
        st.advertised_controller = 1;
    }
    let conn = within(Connection::connect(client_config(&[&a])))
        .await
        .unwrap();
    let admin = Admin::new(conn.clone());
    within(admin.create_topic(NewTopic::new("t", 1)))
        .await
        .unwrap();
    // Created by broker 2, which leads it; metadata will say broker 1 leads it.
    cluster.state().topics.get_mut("t").unwrap()[0].advertised = 1;
    within(conn.refresh_metadata()).await.unwrap();
    assert_eq!(conn.metadata().leader("t", 0).unwrap().id, 1);

    let producer = Producer::new(conn.clone(), producer_config()).unwrap();
    let md = acked(&producer, ProducerRecord::new("t", "v")).await;
    assert_eq!(md.offset, 0);
    // The hint patched the cache.
    assert_eq!(conn.metadata().leader("t", 0).unwrap().addr, b);
    within(producer.close()).await.unwrap();

    // The consumer follows the hint too (metadata stale again).
    cluster.state().topics.get_mut("t").unwrap()[0].advertised = 1;
    within(conn.refresh_metadata()).await.unwrap();
    let mut consumer = Consumer::new(conn, ConsumerConfig::default()).unwrap();
    let tp = TopicPartition::new("t", 0);
    consumer.assign(vec![tp.clone()]);
    consumer.seek(&tp, Offset::Earliest).unwrap();
    let r = within(consumer.recv()).await.unwrap().unwrap();
    assert_eq!(r.value.as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn retriable_produce_errors_are_retried_without_duplicates() {
    let (cluster, conn) = one_broker_with_topic("t", 1).await;
    cluster.state().produce_faults.extend([
        v1::ErrorCode::Timeout,
        v1::ErrorCode::ShuttingDown,
        v1::ErrorCode::NotLeader,
    ]);
    let producer = Producer::new(
        conn,
        ProducerConfig {
            max_in_flight: 1,
            ..producer_config()
        },
    )
    .unwrap();
    let mut acks = Vec::new();
    for i in 0..10 {
        acks.push(
            within(producer.send(ProducerRecord::new("t", format!("{i}"))))
                .await
                .unwrap(),
        );
    }
    for (i, ack) in acks.into_iter().enumerate() {
        let md = within(ack).await.unwrap();
        assert_eq!(md.offset, i as u64);
    }
    let stored: Vec<Bytes> = cluster
        .records("t", 0)
        .into_iter()
        .map(|(_, _, v)| v.unwrap())
        .collect();
    let want: Vec<Bytes> = (0..10).map(|i| Bytes::from(i.to_string())).collect();
    assert_eq!(stored, want, "in order, once each");
    assert!(cluster.state().produce_requests >= 4);
    // Idempotent by default: one producer id, sequences numbering the records.
    let stamps = stamps(&cluster, "t", 0);
    let mut next = 0;
    for (pid, epoch, seq, count) in stamps {
        assert_eq!((pid, epoch, seq), (0, 0, next));
        next += count;
    }
    assert_eq!(next, 10);
}

/// (producer id, epoch, base sequence, records) of each batch stored in a partition.
fn stamps(cluster: &Cluster, topic: &str, partition: usize) -> Vec<(i64, i16, i32, i32)> {
    cluster.state().topics[topic][partition]
        .batches
        .iter()
        .map(|b| {
            let h = BatchHeader::parse(b).unwrap();
            (
                h.producer_id,
                h.producer_epoch,
                h.base_sequence,
                h.record_count,
            )
        })
        .collect()
}

#[tokio::test]
async fn fatal_produce_errors_fail_the_records() {
    let (cluster, conn) = one_broker_with_topic("t", 1).await;
    cluster
        .state()
        .produce_faults
        .push_back(v1::ErrorCode::BatchTooLarge);
    let producer = Producer::new(conn, producer_config()).unwrap();
    let ack = within(producer.send(ProducerRecord::new("t", "big")))
        .await
        .unwrap();
    let err = within(ack).await.unwrap_err();
    assert!(matches!(err, ClientError::BatchTooLarge { .. }), "{err}");
    // The producer carries on.
    let md = acked(&producer, ProducerRecord::new("t", "ok")).await;
    assert_eq!(md.offset, 0);
    // The failed batch left a gap in epoch 0's sequence: the partition moved on.
    assert_eq!(stamps(&cluster, "t", 0), vec![(0, 1, 0, 1)]);
}

#[tokio::test]
async fn a_batch_that_may_be_stored_is_never_resent_under_a_new_epoch() {
    let (cluster, conn) = one_broker_with_topic("t", 1).await;
    cluster.state().withhold_produce = true;
    let producer = Producer::new(
        conn,
        ProducerConfig {
            request_timeout: Duration::from_millis(200),
            linger: Duration::ZERO,
            batch_bytes: 1,
            max_in_flight: 2,
            ..producer_config()
        },
    )
    .unwrap();
    let first = within(producer.send(ProducerRecord::new("t", "r0")))
        .await
        .unwrap();
    let second = within(producer.send(ProducerRecord::new("t", "r1")))
        .await
        .unwrap();
    // Both requests time out unanswered: for all the producer knows, both are stored.
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let mut st = cluster.state();
        st.withhold_produce = false;
        st.produce_faults
            .extend([v1::ErrorCode::BatchTooLarge, v1::ErrorCode::NotLeader]);
    }
    let err = within(first).await.unwrap_err();
    assert!(matches!(err, ClientError::BatchTooLarge { .. }), "{err}");
    // The first batch failing for good moves the partition to epoch 1; the second
    // must not be stored again under it, so it fails with its outcome unknown.
    let err = within(second).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Timeout { message } if message.contains("outcome unknown")),
        "{err}"
    );
    let md = acked(&producer, ProducerRecord::new("t", "r2")).await;
    assert_eq!(md.offset, 0);
    assert_eq!(stamps(&cluster, "t", 0), vec![(0, 1, 0, 1)]);
}

#[tokio::test]
async fn without_idempotence_batches_are_not_stamped() {
    let (cluster, conn) = one_broker_with_topic("t", 1).await;
    let config = ProducerConfig {
        idempotence: false,
        ..producer_config()
    };
    let producer = Producer::new(conn, config).unwrap();
    let ack = within(producer.send(ProducerRecord::new("t", "x")))
        .await
        .unwrap();
    within(ack).await.unwrap();
    assert_eq!(stamps(&cluster, "t", 0), vec![(-1, -1, -1, 1)]);
    assert_eq!(cluster.state().producer_ids, 0, "no producer id requested");
}

#[tokio::test]
async fn a_full_buffer_blocks_send_then_fails_with_buffer_full() {
    let (cluster, conn) = one_broker_with_topic("t", 1).await;
    cluster.state().withhold_produce = true;
    let producer = Producer::new(
        conn,
        ProducerConfig {
            batch_bytes: 1024,
            buffer_memory: 4096,
            max_block: Duration::from_millis(300),
            linger: Duration::ZERO,
            ..producer_config()
        },
    )
    .unwrap();
    let mut acks = Vec::new();
    let err = loop {
        match within(producer.send(ProducerRecord::new("t", vec![0u8; 500]))).await {
            Ok(ack) => acks.push(ack),
            Err(e) => break e,
        }
        assert!(acks.len() < 100, "send never blocked");
    };
    assert!(matches!(err, ClientError::BufferFull(_)), "{err}");
    assert!(acks.len() >= 5 && acks.len() <= 8, "{}", acks.len());
}

#[tokio::test]
async fn request_timeouts_resend_the_batch() {
    let (cluster, conn) = one_broker_with_topic("t", 1).await;
    cluster.state().withhold_produce = true;
    let producer = Producer::new(
        conn,
        ProducerConfig {
            request_timeout: Duration::from_millis(200),
            ..producer_config()
        },
    )
    .unwrap();
    let ack = within(producer.send(ProducerRecord::new("t", "v")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.state().withhold_produce = false;
    let md = within(ack).await.unwrap();
    assert_eq!(md.offset, 0);
    assert!(cluster.state().produce_requests >= 2);
}

#[tokio::test]
async fn delivery_timeout_fails_records_that_never_get_through() {
    let (cluster, conn) = one_broker_with_topic("t", 1).await;
    cluster.state().withhold_produce = true;
    let producer = Producer::new(
        conn,
        ProducerConfig {
            request_timeout: Duration::from_millis(100),
            delivery_timeout: Duration::from_millis(500),
            ..producer_config()
        },
    )
    .unwrap();
    let ack = within(producer.send(ProducerRecord::new("t", "v")))
        .await
        .unwrap();
    let err = within(ack).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("delivery_timeout"), "{err}");
    // flush and close return: nothing is left.
    within(producer.flush()).await.unwrap();
    within(producer.close()).await.unwrap();
}

#[tokio::test]
async fn following_consumers_get_records_as_they_commit() {
    let cluster = Cluster::new();
    let addr = cluster.start_broker(1).await;
    let conn = within(Connection::connect(client_config(&[&addr])))
        .await
        .unwrap();
    within(Admin::new(conn.clone()).create_topic(NewTopic::new("t", 2)))
        .await
        .unwrap();
    let producer = Producer::new(
        conn.clone(),
        ProducerConfig {
            acks: Acks::Leader,
            ..producer_config()
        },
    )
    .unwrap();
    acked(&producer, ProducerRecord::new("t", "old").partition(0)).await;

    let mut consumer = Consumer::new(conn, ConsumerConfig::default()).unwrap();
    let tps = within(consumer.assign_topic("t")).await.unwrap();
    assert_eq!(tps.len(), 2);
    // Default start: latest. Resolve now, before producing more.
    for tp in &tps {
        within(consumer.position(tp)).await.unwrap();
    }
    let consuming = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut stream = consumer.stream();
        while got.len() < 4 {
            let r = stream.next().await.unwrap().unwrap();
            got.push((r.partition, r.offset, r.value.unwrap()));
        }
        got
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (p, v) in [(0, "a"), (1, "b"), (0, "c"), (1, "d")] {
        acked(&producer, ProducerRecord::new("t", v).partition(p)).await;
    }
    let mut got = within(consuming).await.unwrap();
    got.sort();
    assert_eq!(
        got,
        [
            (0, 1, Bytes::from("a")),
            (0, 2, Bytes::from("c")),
            (1, 0, Bytes::from("b")),
            (1, 1, Bytes::from("d")),
        ]
    );
}

#[tokio::test]
async fn seeking_into_a_batch_skips_the_earlier_records() {
    let (cluster, conn) = one_broker_with_topic("t", 1).await;
    let producer = Producer::new(
        conn.clone(),
        ProducerConfig {
            linger: Duration::from_millis(50),
            ..producer_config()
        },
    )
    .unwrap();
    let mut acks = Vec::new();
    for i in 0..10 {
        acks.push(
            within(producer.send(ProducerRecord::new("t", format!("{i}")).timestamp(1000 + i)))
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        within(ack).await.unwrap();
    }
    assert_eq!(cluster.state().topics["t"][0].batches.len(), 1, "one batch");

    let mut consumer = Consumer::new(
        conn,
        ConsumerConfig {
            auto_offset_reset: OffsetReset::None,
            ..Default::default()
        },
    )
    .unwrap();
    let tp = TopicPartition::new("t", 0);
    consumer.assign(vec![tp.clone()]);
    consumer.seek(&tp, Offset::At(7)).unwrap();
    let r = within(consumer.recv()).await.unwrap().unwrap();
    assert_eq!((r.offset, r.value.as_deref()), (7, Some(&b"7"[..])));
    // By timestamp.
    consumer.seek(&tp, Offset::Timestamp(1004)).unwrap();
    let r = within(consumer.recv()).await.unwrap().unwrap();
    assert_eq!((r.offset, r.timestamp), (4, 1004));
    assert_eq!(within(consumer.position(&tp)).await.unwrap(), 5);
    // Out of range without a reset policy is an error.
    consumer.seek(&tp, Offset::At(50)).unwrap();
    let err = within(consumer.recv()).await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::OffsetOutOfRange { .. }), "{err}");
}

#[tokio::test]
async fn admin_lists_alters_and_deletes() {
    let cluster = Cluster::new();
    let addr = cluster.start_broker(1).await;
    let admin = within(Admin::connect(client_config(&[&addr])))
        .await
        .unwrap();
    within(admin.create_topic(NewTopic::new("b", 1)))
        .await
        .unwrap();
    within(admin.create_topic(NewTopic::new("a", 2)))
        .await
        .unwrap();
    let names: Vec<String> = within(admin.list_topics())
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    within(admin.add_partitions("a", 4)).await.unwrap();
    assert_eq!(
        admin
            .connection()
            .metadata()
            .topic("a")
            .unwrap()
            .partition_count(),
        4,
        "the cache is refreshed after a change"
    );
    let err = within(admin.add_partitions("a", 2)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::InvalidPartitions { .. }),
        "{err}"
    );
    within(admin.delete_topic("b")).await.unwrap();
    let err = within(admin.delete_topic("b")).await.unwrap_err();
    assert!(matches!(err, ClientError::UnknownTopic { .. }), "{err}");
    let info = within(admin.cluster_info()).await.unwrap();
    assert_eq!(info.brokers.len(), 1);
    assert_eq!(info.controller.unwrap().addr, addr);
}

/// A coordinator slower to answer a commit than the auto-commit interval (a loaded
/// one) must not make a revocation wait behind a queue of stale automatic commits:
/// with one sent per interval regardless, the queue grew for as long as the member
/// read, and the revoked partition's final commit (and so its release to the new
/// owner) waited behind all of them.
#[tokio::test]
async fn a_revocation_waits_for_at_most_one_automatic_commit_under_slow_commits() {
    const COMMIT_DELAY: Duration = Duration::from_millis(200);
    let (cluster, conn) = one_broker_with_topic("t", 2).await;
    {
        let mut st = cluster.state();
        st.group.target = BTreeSet::from([("t".to_string(), 0), ("t".to_string(), 1)]);
        st.group.commit_delay = COMMIT_DELAY;
    }
    let producer = Producer::new(
        conn.clone(),
        ProducerConfig {
            acks: Acks::Leader,
            ..producer_config()
        },
    )
    .unwrap();
    // Records keep coming, so every automatic commit has positions to send.
    let producing = tokio::spawn(async move {
        loop {
            for p in 0..2 {
                let sent = producer.send(ProducerRecord::new("t", "v").partition(p));
                if let Ok(delivery) = sent.await {
                    drop(delivery);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let config = ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        enable_auto_commit: true,
        auto_commit_interval: Duration::from_millis(10),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(conn, config).unwrap();
    consumer.subscribe("g", ["t"]).unwrap();
    let consuming = tokio::spawn(async move {
        loop {
            if let Some(Err(e)) = consumer.recv().await {
                panic!("recv: {e}");
            }
        }
    });
    let owns = |want: &[u32]| {
        let want: BTreeSet<(String, u32)> = want.iter().map(|p| ("t".to_string(), *p)).collect();
        let st = cluster.state();
        !st.group.owned.is_empty() && st.group.owned.values().all(|o| *o == want)
    };
    within(async {
        while !owns(&[0, 1]) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Read for a while: dozens of intervals, a handful of commits' time.
    tokio::time::sleep(COMMIT_DELAY * 10).await;
    let revoked_at = Instant::now();
    cluster.state().group.target = BTreeSet::from([("t".to_string(), 0)]);
    let deadline = revoked_at + Duration::from_secs(15);
    while !owns(&[0]) {
        assert!(
            Instant::now() < deadline,
            "partition 1 not released {:?} after its revocation; {} commits answered since",
            revoked_at.elapsed(),
            cluster
                .state()
                .group
                .commits
                .iter()
                .filter(|c| c.at > revoked_at)
                .count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let released_after = revoked_at.elapsed();
    consuming.abort();
    producing.abort();
    let st = cluster.state();
    let (_, told_at) = st
        .group
        .assignments
        .iter()
        .find(|(a, at)| *at > revoked_at && a.len() == 1)
        .expect("the revocation was sent");
    let since: Vec<_> = st
        .group
        .commits
        .iter()
        .filter(|c| c.at > *told_at)
        .map(|c| c.offsets.clone())
        .collect();
    println!(
        "released {released_after:?} after the revocation, {} commits answered after the \
         member was told",
        since.len()
    );
    // The automatic commit under way, perhaps one more sent before the member applied
    // the revocation, then the final commit of partition 1.
    assert!(
        since.len() <= 3,
        "released after {released_after:?}, behind {} commits: {since:?}",
        since.len()
    );
    assert!(
        since.iter().flatten().any(|(t, p, _)| t == "t" && *p == 1),
        "partition 1 is committed before it is released: {since:?}"
    );
}

/// A commit asked for before the member was removed from the group carries the epoch
/// it was asked under, even when it is sent after the member rejoined (same id, new
/// epoch): positions read under the old membership must be fenced by the coordinator.
/// Stamped when sent, a stale commit passed for the new membership and could move a
/// partition's committed offset back past what another member had committed since.
#[tokio::test]
async fn a_commit_queued_before_removal_keeps_the_epoch_it_was_asked_under() {
    let (cluster, conn) = one_broker_with_topic("t", 1).await;
    let target = BTreeSet::from([("t".to_string(), 0)]);
    {
        let mut st = cluster.state();
        st.group.target = target.clone();
        st.group.commit_delay = Duration::from_millis(300);
    }
    let producer = Producer::new(conn.clone(), producer_config()).unwrap();
    for _ in 0..3 {
        acked(&producer, ProducerRecord::new("t", "v").partition(0)).await;
    }
    let config = ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        enable_auto_commit: false,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(conn, config).unwrap();
    consumer.subscribe("g", ["t"]).unwrap();
    within(consumer.recv()).await.unwrap().unwrap();
    // Settled: the member reports what it was given, and has heard the epoch since.
    within(async {
        while cluster.state().group.owned.values().all(|o| *o != target) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cluster.state().group.epoch;
    consumer.commit_async().unwrap();
    consumer.commit_async().unwrap();
    cluster.state().group.expel_next = true;
    within(async {
        loop {
            {
                let st = cluster.state();
                if st.group.commits.len() >= 2 && st.group.epoch > before {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let epochs: Vec<i32> = cluster
        .state()
        .group
        .commits
        .iter()
        .map(|c| c.member_epoch)
        .collect();
    assert_eq!(
        epochs,
        vec![before, before],
        "both commits were asked for at epoch {before}"
    );
}

/// `send_with` hands each record's outcome to its callback, on the producer's task:
/// every record once, with its offset, all before `close` returns; a callback that
/// panics does not stop the producer.
#[tokio::test]
async fn send_with_calls_back_once_per_record_and_survives_a_panicking_callback() {
    let (_cluster, conn) = one_broker_with_topic("t", 1).await;
    let producer = Producer::new(conn, producer_config()).unwrap();
    let outcomes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for i in 0..100u64 {
        let outcomes = outcomes.clone();
        let record = ProducerRecord::new("t", format!("v{i}")).partition(0);
        within(producer.send_with(record, move |result| {
            if i == 10 {
                panic!("a callback that panics");
            }
            outcomes.lock().unwrap().push(result.map(|md| md.offset));
        }))
        .await
        .unwrap();
    }
    // Still sending after the panic.
    let later = acked(&producer, ProducerRecord::new("t", "after").partition(0)).await;
    within(producer.close()).await.unwrap();
    let mut offsets: Vec<u64> = outcomes
        .lock()
        .unwrap()
        .iter()
        .map(|r| *r.as_ref().expect("acknowledged"))
        .collect();
    offsets.sort_unstable();
    let expected: Vec<u64> = (0..100).filter(|&o| o != 10).collect();
    assert_eq!(offsets, expected);
    assert_eq!(later.offset, 100);
}
