//! A real single-node broker process on a free port: produce and consume through the
//! client and the CLI, replay, crash recovery, and typed errors for bad input.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_client::{
    Acks, Admin, ClientConfig, ClientError, Connection, Consumer, ConsumerConfig, NewTopic, Offset,
    Producer, ProducerConfig, ProducerRecord, TopicPartition,
};
use sluice_proto::batch::{BatchBuilder, Compression};
use sluice_proto::v1::{self, ErrorCode, sluice_client::SluiceClient};
use sluice_tests::BrokerProcess;

const BROKER: &str = env!("CARGO_BIN_EXE_test-broker");
const CLI: &str = env!("CARGO_BIN_EXE_test-sluice");

fn client_config(broker: &BrokerProcess) -> ClientConfig {
    let mut c = ClientConfig::new([broker.addr.clone()]);
    c.request_timeout = Duration::from_secs(10);
    c
}

async fn connect(broker: &BrokerProcess) -> Connection {
    Connection::connect(client_config(broker))
        .await
        .expect("connect")
}

/// Reads `topic` from the start of every partition, handing each record to `take`
/// until it returns false; false if 20 s pass first (or the consumer ends).
async fn read_from_start(
    conn: &Connection,
    topic: &str,
    mut take: impl FnMut(sluice_client::ConsumerRecord) -> bool,
) -> bool {
    let mut consumer = Consumer::new(conn.clone(), ConsumerConfig::default()).expect("consumer");
    let tps = consumer.assign_topic(topic).await.expect("assign");
    for tp in &tps {
        consumer.seek(tp, Offset::Earliest).expect("seek");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Some(Ok(r))) => {
                if !take(r) {
                    return true;
                }
            }
            Ok(Some(Err(e))) => panic!("consume failed: {e}"),
            Ok(None) | Err(_) => return false,
        }
    }
}

/// Reads `count` records from the start of every partition of `topic`.
async fn read_all(
    conn: &Connection,
    topic: &str,
    count: usize,
) -> Vec<sluice_client::ConsumerRecord> {
    let mut out = Vec::new();
    if count > 0 {
        let complete = read_from_start(conn, topic, |r| {
            out.push(r);
            out.len() < count
        })
        .await;
        assert!(complete, "only {} of {count} records arrived", out.len());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_finds_added_partitions_once_its_metadata_ages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(BROKER, &dir.path().join("b1"));
    let mut config = client_config(&broker);
    config.metadata_max_age = Duration::from_millis(300);
    let conn = Connection::connect(config).await.expect("connect");
    let admin = Admin::new(conn.clone());
    admin
        .create_topic(NewTopic::new("growing", 1))
        .await
        .expect("create topic");
    let producer = Producer::new(conn.clone(), ProducerConfig::default()).expect("producer");
    let send = |i: u32| {
        let producer = producer.clone();
        async move {
            let record = ProducerRecord::new("growing", "v").key(format!("key-{i}"));
            let delivery = producer.send(record).await.expect("buffered");
            delivery.await.expect("stored").partition
        }
    };
    assert_eq!(send(0).await, 0, "one partition so far");
    // Another admin's change: this producer hears of it only by refreshing its
    // metadata, which it must do once the cache is older than metadata_max_age.
    let other = Admin::new(connect(&broker).await);
    other
        .add_partitions("growing", 4)
        .await
        .expect("add partitions");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 1;
    loop {
        if send(i).await > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keyed records still all go to partition 0 after 10 s"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_in_order_per_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(BROKER, &dir.path().join("b1"));
    let conn = connect(&broker).await;
    Admin::new(conn.clone())
        .create_topic(NewTopic::new("orders", 3))
        .await
        .expect("create topic");
    let producer = Producer::new(conn.clone(), ProducerConfig::default()).expect("producer");
    let mut acks = Vec::new();
    for i in 0..600u32 {
        let key = format!("customer-{}", i % 7);
        let rec = ProducerRecord::new("orders", format!("{key}:{i}")).key(key);
        acks.push(producer.send(rec).await.expect("buffered"));
    }
    producer.flush().await.expect("flush");
    let mut acked = Vec::new();
    for a in acks {
        acked.push(a.await.expect("acknowledged"));
    }
    let records = read_all(&conn, "orders", 600).await;
    assert_eq!(records.len(), 600);
    // Offsets per partition are dense, and each key's values arrive in send order.
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut last_seq: BTreeMap<String, u32> = BTreeMap::new();
    for r in &records {
        per_partition.entry(r.partition).or_default().push(r.offset);
        let value = String::from_utf8(r.value.clone().expect("value").to_vec()).expect("utf8");
        let (key, seq) = value.split_once(':').expect("key:seq");
        let seq: u32 = seq.parse().expect("seq");
        if let Some(prev) = last_seq.insert(key.to_string(), seq) {
            assert!(seq > prev, "{key}: {seq} after {prev}");
        }
        assert_eq!(r.key.as_deref(), Some(key.as_bytes()));
    }
    for offsets in per_partition.values() {
        assert_eq!(*offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    }
    // The same key always lands on the same partition.
    let mut key_partition: BTreeMap<String, u32> = BTreeMap::new();
    for r in &records {
        let key = String::from_utf8(r.key.clone().expect("key").to_vec()).expect("utf8");
        assert_eq!(
            *key_partition.entry(key).or_insert(r.partition),
            r.partition
        );
    }
    assert_eq!(acked.len(), 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_earliest_an_offset_and_a_timestamp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(BROKER, &dir.path().join("b1"));
    let conn = connect(&broker).await;
    Admin::new(conn.clone())
        .create_topic(NewTopic::new("events", 1))
        .await
        .expect("create topic");
    let producer = Producer::new(conn.clone(), ProducerConfig::default()).expect("producer");
    let base_ts = 1_700_000_000_000i64;
    for i in 0..100i64 {
        let rec = ProducerRecord::new("events", format!("e{i}")).timestamp(base_ts + i * 1000);
        producer
            .send(rec)
            .await
            .expect("buffered")
            .await
            .expect("acked");
    }
    let tp = TopicPartition::new("events", 0);
    let mut consumer = Consumer::new(conn.clone(), ConsumerConfig::default()).expect("consumer");
    consumer.assign(vec![tp.clone()]);
    for (start, first) in [
        (Offset::Earliest, 0u64),
        (Offset::At(42), 42),
        (Offset::Timestamp(base_ts + 57_500), 58),
        (Offset::Timestamp(base_ts + 30_000), 30),
    ] {
        consumer.seek(&tp, start).expect("seek");
        let r = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .expect("a record in time")
            .expect("stream open")
            .expect("record");
        assert_eq!(r.offset, first, "start {start:?}");
        assert_eq!(r.value.as_deref(), Some(format!("e{first}").as_bytes()));
        assert_eq!(r.timestamp, base_ts + first as i64 * 1000);
    }
    let admin = Admin::new(conn.clone());
    assert_eq!(
        admin
            .list_offset(&tp, Offset::Latest)
            .await
            .expect("latest"),
        100
    );
    assert_eq!(
        admin
            .list_offset(&tp, Offset::Timestamp(base_ts + 10_000_000))
            .await
            .expect("future"),
        100
    );
}

fn cli(broker: &BrokerProcess, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(CLI)
        .arg("--bootstrap")
        .arg(&broker.addr)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cli");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("cli output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sluice perf` against a real broker: `produce` reports exactly the records it was
/// asked for, each acknowledged and timed; `consume` reads them all back; and
/// `end-to-end` sees every record it produced after the warm-up arrive.
#[test]
fn perf_produces_consumes_and_measures_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(BROKER, &dir.path().join("b1"));
    let perf = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--output", "json", "perf"];
        all.extend_from_slice(args);
        let (ok, out, err) = cli(&broker, &all, "");
        assert!(ok, "perf {args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("perf {args:?} printed {out}: {e}"))
    };
    let produced = perf(&[
        "produce",
        "--topic",
        "p",
        "--create",
        "--partitions",
        "3",
        "--records",
        "3000",
        "--record-size",
        "100",
        "--producers",
        "2",
    ]);
    assert_eq!(produced["records"], 3000, "{produced}");
    assert_eq!(produced["failed"], 0, "{produced}");
    assert_eq!(produced["bytes"], 300_000, "{produced}");
    assert!(
        produced["ack_latency_ms"]["count"] == 3000
            && produced["ack_latency_ms"]["max"].as_f64() > Some(0.0),
        "{produced}"
    );
    let consumed = perf(&["consume", "--topic", "p"]);
    assert_eq!(consumed["records"], 3000, "{consumed}");
    assert_eq!(consumed["bytes"], 300_000, "{consumed}");
    let e2e = perf(&[
        "end-to-end",
        "--topic",
        "e",
        "--create",
        "--record-size",
        "64",
        "--rate",
        "1000",
        "--duration",
        "1",
        "--warmup",
        "0.5",
    ]);
    // Only the second after the warm-up counts, on both sides alike.
    let sent = e2e["records"].as_u64().unwrap_or(0);
    assert!((500..=1100).contains(&sent), "{e2e}");
    assert_eq!(e2e["consumed"], sent, "{e2e}");
    assert_eq!(e2e["end_to_end_latency_ms"]["count"], sent, "{e2e}");
}

/// Idle partitions cost little memory: 200 empty partitions add well under 512 KiB of
/// heap each (an allocator that asked for transparent huge pages pinned 2 MiB each).
#[tokio::test]
async fn idle_partitions_hold_little_heap() {
    const PARTITIONS: u32 = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(BROKER, &dir.path().join("b1"));
    let conn = connect(&broker).await;
    let before = broker.anon_rss_kib().expect("broker memory");
    Admin::new(conn.clone())
        .create_topic(NewTopic::new("idle", PARTITIONS))
        .await
        .expect("create");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let md = conn.refresh_metadata().await.expect("metadata");
        let led = md
            .topic("idle")
            .map_or(0, |t| t.available_partitions().len());
        if led == PARTITIONS as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{led} of {PARTITIONS} partitions led"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = broker.anon_rss_kib().expect("broker memory") - before;
    assert!(
        grown < u64::from(PARTITIONS) * 512,
        "heap grew by {grown} KiB for {PARTITIONS} partitions"
    );
}

#[test]
fn cli_creates_produces_consumes_and_describes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(BROKER, &dir.path().join("b1"));
    let (ok, _, err) = cli(
        &broker,
        &[
            "topic",
            "create",
            "logs",
            "--partitions",
            "2",
            "--config",
            "retention.ms=3600000",
        ],
        "",
    );
    assert!(ok, "create: {err}");
    let (ok, _, err) = cli(
        &broker,
        &["produce", "logs", "--key-separator", "="],
        "a=1\nb=2\na=3\nc=4\n",
    );
    assert!(ok, "produce: {err}");
    let (ok, out, err) = cli(
        &broker,
        &[
            "consume",
            "logs",
            "--from-beginning",
            "--format",
            "{key}={value}",
        ],
        "",
    );
    assert!(ok, "consume: {err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, vec!["a=1", "a=3", "b=2", "c=4"]);
    let (ok, out, err) = cli(
        &broker,
        &["topic", "describe", "logs", "--output", "json"],
        "",
    );
    assert!(ok, "describe: {err}");
    assert!(
        out.contains("retention.ms") && out.contains("3600000"),
        "{out}"
    );
    let (ok, out, _) = cli(&broker, &["topic", "list"], "");
    assert!(ok && out.contains("logs"), "{out}");
    let (ok, _, err) = cli(&broker, &["consume", "nope", "--from-beginning"], "");
    assert!(!ok, "unknown topic must fail");
    assert!(err.to_lowercase().contains("unknown topic"), "{err}");
    let (ok, _, err) = cli(
        &broker,
        &["topic", "create", "bad name!", "--partitions", "1"],
        "",
    );
    assert!(
        !ok && err.to_lowercase().contains("invalid topic name"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_kill_9_under_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = BrokerProcess::start(BROKER, &dir.path().join("b1"));
    let conn = connect(&broker).await;
    Admin::new(conn.clone())
        .create_topic(NewTopic::new("ledger", 2).config("retention.bytes", "1073741824"))
        .await
        .expect("create topic");
    let producer = Producer::new(
        conn.clone(),
        ProducerConfig {
            acks: Acks::All,
            ..ProducerConfig::default()
        },
    )
    .expect("producer");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let writer = {
        let (producer, acked) = (producer.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0u64.. {
                let value = format!("v{i}");
                let Ok(delivery) = producer
                    .send(ProducerRecord::new("ledger", value.clone()))
                    .await
                else {
                    return;
                };
                let acked = acked.clone();
                tokio::spawn(async move {
                    if delivery.await.is_ok() {
                        acked.lock().expect("lock").push(value);
                    }
                });
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().expect("lock").len() < 2000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.kill();
    writer.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let acked: Vec<String> = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 1000,
        "too few acknowledged before the kill: {}",
        acked.len()
    );

    broker.restart();
    let conn = connect(&broker).await;
    let desc = Admin::new(conn.clone())
        .describe_topic("ledger")
        .await
        .expect("topic survives");
    assert_eq!(
        desc.configs.get("retention.bytes").map(String::as_str),
        Some("1073741824")
    );
    // The producer is still running and resends what it had in flight to the new
    // broker, so the partitions grow while this reads: read until every acknowledged
    // record was seen (a lost one never shows up, and the deadline fails the test).
    let mut missing: std::collections::HashSet<String> = acked.iter().cloned().collect();
    read_from_start(&conn, "ledger", |r| {
        let value = r.value.expect("value");
        missing.remove(String::from_utf8_lossy(&value).as_ref());
        !missing.is_empty()
    })
    .await;
    let lost: Vec<&String> = missing.iter().take(5).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged records lost, e.g. {lost:?}",
        missing.len(),
        acked.len()
    );
}

async fn raw_client(broker: &BrokerProcess) -> SluiceClient<tonic::transport::Channel> {
    SluiceClient::connect(format!("http://{}", broker.addr))
        .await
        .expect("raw connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

fn code(e: &Option<v1::Error>) -> ErrorCode {
    e.as_ref()
        .and_then(|e| ErrorCode::try_from(e.code).ok())
        .unwrap_or(ErrorCode::None)
}

async fn produce_raw(
    client: &mut SluiceClient<tonic::transport::Channel>,
    topic: &str,
    partition: u32,
    batch: Bytes,
) -> v1::ProduceResponse {
    let req = v1::ProduceRequest {
        correlation_id: 7,
        topic: topic.into(),
        partition,
        acks: v1::Acks::All as i32,
        batch,
        timeout_ms: 5000,
    };
    let mut replies = client
        .produce(futures::stream::iter([req]))
        .await
        .expect("produce stream")
        .into_inner();
    replies.message().await.expect("reply").expect("one reply")
}

/// A batch without an idempotent producer's stamp.
fn batch_of(values: &[&[u8]]) -> Bytes {
    stamped(-1, -1, -1, values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = BrokerProcess::start(BROKER, &dir.path().join("b1"));
    let mut client = raw_client(&broker).await;
    let create = |name: &str, partitions: u32, configs: &[(&str, &str)]| v1::CreateTopicRequest {
        name: name.into(),
        partitions,
        replication_factor: 0,
        configs: configs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let r = client
        .create_topic(create("ok", 1, &[("max.message.bytes", "4096")]))
        .await
        .expect("rpc")
        .into_inner();
    assert_eq!(code(&r.error), ErrorCode::None);
    for (req, want) in [
        (create("bad/name", 1, &[]), ErrorCode::InvalidTopicName),
        (create("zero", 0, &[]), ErrorCode::InvalidPartitions),
        (create("ok", 1, &[]), ErrorCode::TopicAlreadyExists),
        (
            create("cfg", 1, &[("retention.ms", "soon")]),
            ErrorCode::InvalidConfig,
        ),
        (create("rf", 1, &[]), ErrorCode::None),
    ] {
        let r = client.create_topic(req).await.expect("rpc").into_inner();
        assert_eq!(code(&r.error), want, "{:?}", r.error);
    }
    let mut rf = create("rf3", 1, &[]);
    rf.replication_factor = 3;
    let r = client.create_topic(rf).await.expect("rpc").into_inner();
    assert_eq!(code(&r.error), ErrorCode::InvalidReplicationFactor);

    let good = batch_of(&[b"hello"]);
    assert_eq!(
        code(
            &produce_raw(&mut client, "missing", 0, good.clone())
                .await
                .error
        ),
        ErrorCode::UnknownTopic
    );
    assert_eq!(
        code(&produce_raw(&mut client, "ok", 5, good.clone()).await.error),
        ErrorCode::UnknownPartition
    );
    let big = batch_of(&[&[7u8; 8192]]);
    assert_eq!(
        code(&produce_raw(&mut client, "ok", 0, big).await.error),
        ErrorCode::BatchTooLarge
    );
    let mut corrupt = good.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    assert_eq!(
        code(
            &produce_raw(&mut client, "ok", 0, Bytes::from(corrupt))
                .await
                .error
        ),
        ErrorCode::CorruptBatch
    );
    assert_eq!(
        code(
            &produce_raw(&mut client, "ok", 0, Bytes::from_static(b"junk"))
                .await
                .error
        ),
        ErrorCode::CorruptBatch
    );

    // Nothing bad was stored, and good batches still go through.
    let ok = produce_raw(&mut client, "ok", 0, good.clone()).await;
    assert_eq!((code(&ok.error), ok.base_offset), (ErrorCode::None, 0));
    let fetch = v1::FetchRequest {
        topic: "ok".into(),
        partition: 0,
        offset: 99,
        max_bytes: 0,
        follow: false,
    };
    let mut stream = client.fetch(fetch).await.expect("fetch").into_inner();
    let first = stream
        .message()
        .await
        .expect("fetch reply")
        .expect("one reply");
    assert_eq!(code(&first.error), ErrorCode::OffsetOutOfRange);
    let fetch = v1::FetchRequest {
        topic: "ok".into(),
        partition: 0,
        offset: 0,
        max_bytes: 0,
        follow: false,
    };
    let mut stream = client.fetch(fetch).await.expect("fetch").into_inner();
    let first = stream
        .message()
        .await
        .expect("fetch reply")
        .expect("one reply");
    assert_eq!(
        (
            code(&first.error),
            first.batches.len(),
            first.high_watermark
        ),
        (ErrorCode::None, 1, 1)
    );

    // The typed client maps the codes too.
    let admin = Admin::connect(client_config(&broker)).await.expect("admin");
    assert!(matches!(
        admin.describe_topic("missing").await,
        Err(ClientError::UnknownTopic { .. })
    ));
}

fn stamped(producer_id: i64, epoch: i16, first_seq: i32, values: &[&[u8]]) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None).producer(producer_id, epoch, first_seq);
    for v in values {
        b.append(1_700_000_000_000, None, Some(v), &[])
            .expect("append");
    }
    b.build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_batches_are_stored_once_and_sequence_gaps_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = BrokerProcess::start(BROKER, &dir.path().join("b1"));
    let mut client = raw_client(&broker).await;
    let created = client
        .create_topic(v1::CreateTopicRequest {
            name: "idem".into(),
            partitions: 1,
            replication_factor: 0,
            configs: Default::default(),
        })
        .await
        .expect("create")
        .into_inner();
    assert!(created.error.is_none(), "{:?}", created.error);
    let id = client
        .init_producer_id(v1::InitProducerIdRequest {})
        .await
        .expect("init producer id")
        .into_inner();
    assert!(id.error.is_none(), "{:?}", id.error);
    let other = client
        .init_producer_id(v1::InitProducerIdRequest {})
        .await
        .expect("init producer id")
        .into_inner();
    assert_ne!(id.producer_id, other.producer_id, "ids are unique");
    let pid = id.producer_id;

    let first = stamped(pid, 0, 0, &[b"a", b"b"]);
    let r = produce_raw(&mut client, "idem", 0, first.clone()).await;
    assert_eq!(
        (code(&r.error), r.base_offset, r.duplicate),
        (ErrorCode::None, 0, false)
    );
    // The same batch again (a retry after a lost answer): the original's offset.
    let r = produce_raw(&mut client, "idem", 0, first.clone()).await;
    assert_eq!(
        (code(&r.error), r.base_offset, r.duplicate),
        (ErrorCode::None, 0, true)
    );
    // A gap, a fresh producer not starting at 0 (its first batches must come first),
    // an old epoch: refused, nothing stored.
    let r = produce_raw(&mut client, "idem", 0, stamped(pid, 0, 5, &[b"x"])).await;
    assert_eq!(
        code(&r.error),
        ErrorCode::OutOfOrderSequence,
        "{:?}",
        r.error
    );
    let r = produce_raw(
        &mut client,
        "idem",
        0,
        stamped(other.producer_id, 0, 3, &[b"x"]),
    )
    .await;
    assert_eq!(
        code(&r.error),
        ErrorCode::OutOfOrderSequence,
        "{:?}",
        r.error
    );
    let r = produce_raw(&mut client, "idem", 0, stamped(pid, 0, 2, &[b"c"])).await;
    assert_eq!((code(&r.error), r.base_offset), (ErrorCode::None, 2));
    let r = produce_raw(&mut client, "idem", 0, stamped(pid, 1, 0, &[b"d"])).await;
    assert_eq!(
        (code(&r.error), r.base_offset),
        (ErrorCode::None, 3),
        "a new epoch"
    );
    let r = produce_raw(&mut client, "idem", 0, stamped(pid, 0, 3, &[b"y"])).await;
    assert_eq!(code(&r.error), ErrorCode::ProducerFenced, "{:?}", r.error);

    // The producer state survives a crash: the retry is still recognized.
    broker.restart();
    let mut client = raw_client(&broker).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = produce_raw(&mut client, "idem", 0, stamped(pid, 1, 0, &[b"d"])).await;
        if code(&r.error) != ErrorCode::NotLeader || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (code(&r.error), r.base_offset, r.duplicate),
        (ErrorCode::None, 3, true)
    );
    let conn = connect(&broker).await;
    let values: Vec<Bytes> = read_all(&conn, "idem", 4)
        .await
        .into_iter()
        .map(|r| r.value.expect("value"))
        .collect();
    assert_eq!(values, [&b"a"[..], b"b", b"c", b"d"]);
}
