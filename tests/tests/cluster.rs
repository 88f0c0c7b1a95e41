//! A real three-broker cluster (`--peers 1=..,2=..,3=..`): replicated topics, leader
//! failover under a running producer, a follower catching up after a restart, a
//! full-cluster crash that must lose nothing acknowledged, a cluster that forms and
//! serves before its lowest-id broker starts, and routing from a broker to partitions
//! it does not host.
//!
//! Replica state is checked per broker with `DescribeTopic` marked `sluice-forwarded`
//! (answered from that broker's own replicas) and with `Fetch` from each broker
//! ([`sluice_tests::inspect`]).
//! The tests run one at a time (each runs three brokers on a small machine).
//!
//! Producers are idempotent (the default): every test checks that each acknowledged
//! record is stored exactly once and each partition keeps the order records were sent
//! in, through failovers and restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_client::{Admin, Connection, DeliveryFuture, NewTopic, Producer, ProducerRecord};
use sluice_tests::inspect::{converged, describe, describe_on, leaders, read_replica};
use sluice_tests::{Cluster, client_config, connect, create_topic, producer_config};

const BROKER: &str = env!("CARGO_BIN_EXE_test-broker");

/// The tests each run three brokers; on a small machine they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Asserts every replica at `addrs` holds the same records for each partition, and
/// returns the records of each partition (from the first address).
async fn assert_replicas_identical(
    addrs: &[String],
    topic: &str,
    partitions: u32,
) -> Vec<Vec<(u64, String)>> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let first = read_replica(&addrs[0], topic, p)
            .await
            .expect("read replica");
        for addr in &addrs[1..] {
            let other = read_replica(addr, topic, p).await.expect("read replica");
            assert!(
                first == other,
                "{topic}/{p}: replica at {addr} ({} records) differs from {} ({} records)",
                other.len(),
                addrs[0],
                first.len()
            );
        }
        let offsets: Vec<u64> = first.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (0..first.len() as u64).collect::<Vec<_>>(),
            "{topic}/{p}: offsets are dense"
        );
        out.push(first);
    }
    out
}

/// Sends `count` records round-robin over `partitions`, values `{tag}-{i}`, and waits
/// for every acknowledgement. Returns the acknowledged values.
async fn produce_all(
    producer: &Producer,
    topic: &str,
    partitions: u32,
    tag: &str,
    count: u32,
) -> BTreeSet<String> {
    let mut pending = Vec::new();
    for i in 0..count {
        let value = format!("{tag}-{i}");
        let rec = ProducerRecord::new(topic, value.clone()).partition(i % partitions);
        pending.push((value, producer.send(rec).await.expect("buffered")));
    }
    producer.flush().await.expect("flush");
    let mut acked = BTreeSet::new();
    for (value, delivery) in pending {
        delivery
            .await
            .unwrap_or_else(|e| panic!("{value} not acknowledged: {e}"));
        acked.insert(value);
    }
    acked
}

/// Checks that every acknowledged value is in `records` exactly once, that no value
/// is stored twice, and that within each partition the values of each tag (`{tag}-{i}`,
/// sent in increasing `i`) are stored in the order they were sent.
fn assert_exactly_once_in_order(acked: &BTreeSet<String>, records: &[Vec<(u64, String)>]) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, v) in records.iter().flatten() {
        *seen.entry(v.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = acked
        .iter()
        .filter(|v| !seen.contains_key(v.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged record(s) lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let twice: Vec<(&str, usize)> = seen.into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} record(s) stored more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(10)]
    );
    for (p, log) in records.iter().enumerate() {
        let mut last: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for (offset, v) in log {
            let Some((tag, i)) = v.rsplit_once('-') else {
                continue;
            };
            let i: u64 = i.parse().expect("values are {tag}-{i}");
            if let Some(&(prev, at)) = last.get(tag) {
                assert!(
                    i > prev,
                    "partition {p}: {v} at offset {offset} follows {tag}-{prev} at offset {at}"
                );
            }
            last.insert(tag, (i, *offset));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_topic_survives_leader_kill() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(BROKER, dir.path(), 3);
    let conn = connect(&cluster).await;
    const TOPIC: &str = "failover";
    const PARTITIONS: u32 = 6;
    create_topic(&conn, TOPIC, PARTITIONS).await;

    // Before any failure: every replica converges on the same log.
    let producer = Producer::new(conn.clone(), producer_config()).expect("producer");
    let mut acked = produce_all(&producer, TOPIC, PARTITIONS, "before", 600).await;
    let addrs = cluster.addrs();
    let hw = converged(&addrs, TOPIC, &[100; 6], Duration::from_secs(15))
        .await
        .expect("replicas converge");
    assert_eq!(hw, vec![100; 6], "each partition holds exactly its records");
    assert_replicas_identical(&addrs, TOPIC, PARTITIONS).await;

    // Kill the leader of partition 0 while a producer keeps writing to every partition.
    let leader_of = leaders(&addrs, TOPIC, Duration::from_secs(10))
        .await
        .expect("every partition has a leader");
    let victim = leader_of[0];
    let affected: BTreeSet<u32> = (0..PARTITIONS)
        .filter(|&p| leader_of[p as usize] == victim)
        .collect();
    let acks: Arc<Mutex<Vec<(u32, String, Instant)>>> = Arc::default();
    let writer = {
        let producer = producer.clone();
        let acks = acks.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            let start = Instant::now();
            let mut i = 0u32;
            while start.elapsed() < Duration::from_secs(5) {
                let p = i % PARTITIONS;
                let value = format!("during-{i}");
                let rec = ProducerRecord::new(TOPIC, value.clone()).partition(p);
                let delivery: DeliveryFuture = producer.send(rec).await.expect("buffered");
                let acks = acks.clone();
                tasks.push(tokio::spawn(async move {
                    let result = delivery.await;
                    let at = Instant::now();
                    let ok = result.is_ok();
                    if ok {
                        acks.lock().unwrap().push((p, value, at));
                    }
                    result.map(|_| ())
                }));
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            producer.flush().await.expect("flush");
            let mut failures = Vec::new();
            for t in tasks {
                if let Err(e) = t.await.expect("delivery task") {
                    failures.push(e.to_string());
                }
            }
            (i, failures)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let survivors: Vec<String> = cluster
        .brokers
        .iter()
        .filter(|b| b.node_id != victim)
        .map(|b| b.addr.clone())
        .collect();
    let killed_at = Instant::now();
    cluster.broker(victim).kill();
    // When a survivor first names a new leader of partition 0.
    let elected = {
        let survivor = survivors[0].clone();
        tokio::spawn(async move {
            loop {
                if let Some(d) = describe_on(&survivor, TOPIC).await
                    && ![0, victim].contains(&d.partitions[0].leader)
                {
                    return killed_at.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let (sent, failures) = writer.await.expect("writer");
    let elected = elected.await.expect("election watch");
    assert!(
        failures.is_empty(),
        "{} of {sent} records failed during failover, e.g. {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        cluster.logs()
    );
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    assert_eq!(acks.len(), sent as usize);
    // Time from the kill to the first acknowledgement on each partition it led.
    let recovery: Vec<Duration> = affected
        .iter()
        .map(|p| {
            acks.iter()
                .filter(|(ap, _, at)| ap == p && *at > killed_at)
                .map(|(_, _, at)| *at - killed_at)
                .min()
                .expect("the partition took writes after the kill")
        })
        .collect();
    println!(
        "failover: killed broker {victim} (led partitions {affected:?}); partition 0 had a new leader after {elected:?}; first produce acknowledged after {:?} (slowest partition {:?})",
        recovery.iter().min().expect("one affected partition"),
        recovery.iter().max().expect("one affected partition"),
    );
    acked.extend(acks.into_iter().map(|(_, v, _)| v));

    // The survivors agree and hold everything acknowledged.
    converged(&survivors, TOPIC, &hw, Duration::from_secs(15))
        .await
        .expect("replicas converge");
    let records = assert_replicas_identical(&survivors, TOPIC, PARTITIONS).await;
    assert_exactly_once_in_order(&acked, &records);
    println!(
        "failover: {} acknowledged records all present once, in order",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_follower_restarts_and_catches_up() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(BROKER, dir.path(), 3);
    let conn = connect(&cluster).await;
    create_topic(&conn, "early", 3).await;
    let producer = Producer::new(conn.clone(), producer_config()).expect("producer");
    let mut acked = produce_all(&producer, "early", 3, "one", 300).await;
    let addrs = cluster.addrs();
    converged(&addrs, "early", &[100; 3], Duration::from_secs(15))
        .await
        .expect("replicas converge");

    // Broker 1 (the lowest id, which forms new groups) goes away; the other two take
    // writes, including to a topic created while it is down.
    let started = Instant::now();
    cluster.broker(1).stop();
    let stopped = started.elapsed();
    acked.extend(produce_all(&producer, "early", 3, "two", 300).await);
    let produced = started.elapsed();
    create_topic(&conn, "late", 3).await;
    let created = started.elapsed();
    acked.extend(produce_all(&producer, "late", 3, "late", 300).await);
    println!(
        "follower: broker 1 stopped in {stopped:?}; 300 records to the old topic acknowledged by {produced:?}, new topic created by {created:?}, 300 records to it by {:?}",
        started.elapsed()
    );

    // Back again: it catches up on both topics, byte for byte.
    let restarted = Instant::now();
    cluster.start_stopped();
    let addrs = cluster.addrs();
    converged(&addrs, "early", &[200; 3], Duration::from_secs(20))
        .await
        .expect("replicas converge");
    converged(&addrs, "late", &[100; 3], Duration::from_secs(20))
        .await
        .expect("replicas converge");
    println!(
        "follower: restarted broker caught up in {:?}",
        restarted.elapsed()
    );
    let mut records = assert_replicas_identical(&addrs, "early", 3).await;
    records.extend(assert_replicas_identical(&addrs, "late", 3).await);
    assert_exactly_once_in_order(&acked, &records);
    println!("follower: {} records present once, in order", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_brokers_restarted_lose_nothing_acknowledged() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(BROKER, dir.path(), 3);
    let conn = connect(&cluster).await;
    create_topic(&conn, "durable", 3).await;
    let producer = Producer::new(conn.clone(), producer_config()).expect("producer");
    let mut acked = produce_all(&producer, "durable", 3, "before", 600).await;
    drop(producer);
    drop(conn);

    // SIGKILL everyone: no shutdown, no flush.
    for b in cluster.brokers.iter_mut() {
        b.kill();
    }
    let restarted = Instant::now();
    cluster.start_stopped();
    let addrs = cluster.addrs();
    leaders(&addrs, "durable", Duration::from_secs(20))
        .await
        .expect("every partition has a leader");
    println!(
        "restart: all partitions led again {:?} after the restart",
        restarted.elapsed()
    );

    // Everything acknowledged is there, on every replica, and the cluster takes writes.
    let conn = connect(&cluster).await;
    let producer = Producer::new(conn.clone(), producer_config()).expect("producer");
    acked.extend(produce_all(&producer, "durable", 3, "after", 300).await);
    converged(&addrs, "durable", &[300; 3], Duration::from_secs(20))
        .await
        .expect("replicas converge");
    let records = assert_replicas_identical(&addrs, "durable", 3).await;
    assert_exactly_once_in_order(&acked, &records);
    println!("restart: {} records present once, in order", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_broker_routes_to_partitions_it_does_not_host() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start(BROKER, dir.path(), 3);
    // The client knows only broker 1; with one replica per partition, two of the
    // three partitions live elsewhere.
    let mut config = client_config(cluster.addrs());
    config.bootstrap.truncate(1);
    let conn = Connection::connect(config).await.expect("connect");
    Admin::new(conn.clone())
        .create_topic(NewTopic::new("sparse", 3).replication_factor(1))
        .await
        .expect("create topic");
    let addrs = cluster.addrs();
    let described = describe(&addrs[0], "sparse", false)
        .await
        .expect("describe");
    for p in &described.partitions {
        assert_eq!(
            vec![p.leader],
            p.replicas,
            "broker 1 names the leader of every partition: {described:?}"
        );
    }
    let producer = Producer::new(conn.clone(), producer_config()).expect("producer");
    let acked = produce_all(&producer, "sparse", 3, "sparse", 300).await;
    let mut records = Vec::new();
    for p in &described.partitions {
        let addr = &addrs[p.leader as usize - 1];
        let r = read_replica(addr, "sparse", p.partition)
            .await
            .expect("read replica");
        assert_eq!(r.len(), 100, "sparse/{}", p.partition);
        records.push(r);
    }
    assert_exactly_once_in_order(&acked, &records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_forms_and_serves_before_its_first_broker_starts() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Broker 1, which would form the controller and every new group, is not there.
    let mut cluster = Cluster::new(BROKER, dir.path(), 3);
    let started = Instant::now();
    cluster.start_some(&[2, 3]);
    let conn = connect(&cluster).await;
    create_topic(&conn, "without-1", 3).await;
    let producer = Producer::new(conn.clone(), producer_config()).expect("producer");
    let acked = produce_all(&producer, "without-1", 3, "two-of-three", 300).await;
    println!(
        "late start: two of three brokers took 300 records {:?} after starting",
        started.elapsed()
    );

    // It joins late, fresh, and catches up on everything.
    cluster.start_some(&[1]);
    let addrs = cluster.addrs();
    converged(&addrs, "without-1", &[100; 3], Duration::from_secs(20))
        .await
        .expect("replicas converge");
    let records = assert_replicas_identical(&addrs, "without-1", 3).await;
    assert_exactly_once_in_order(&acked, &records);
}
