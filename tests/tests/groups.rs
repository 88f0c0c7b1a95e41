//! Consumer groups on a real three-broker cluster: members sharing a topic's
//! partitions, a member killed (in process, and a `sluice consume --group` process),
//! a member joining, the coordinator killed, committed offsets across a restart of
//! every broker, offset resets with the CLI, and (on one broker) a pattern
//! subscription picking up new topics and partitions.
//!
//! Members run in tasks of the test (the real `Consumer`, subscribed) and record what
//! they read, what they committed and what the group gave and took; the checks are
//! on those records: every record read, exactly once where nothing failed, and where
//! a member died, again only from the last offset it committed.
//! The tests run one at a time (each runs three brokers on a small machine).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_client::{
    Admin, Connection, Consumer, ConsumerConfig, Offset, OffsetAndMetadata, OffsetReset, Producer,
    ProducerRecord, RebalanceListener, TopicPartition,
};
use sluice_proto::v1;
use sluice_proto::v1::group_coordinator_client::GroupCoordinatorClient;
use sluice_tests::{BrokerProcess, CliProcess, Cluster, connect, create_topic, producer_config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const BROKER: &str = env!("CARGO_BIN_EXE_test-broker");
const SLUICE: &str = env!("CARGO_BIN_EXE_test-sluice");

/// The tests each run three brokers; on a small machine they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a test holds while it runs: its turn (the tests run one at a time), the data
/// directory, three brokers and a connection to them. Bound in that order, they are
/// dropped in reverse: the brokers before their directory, the turn last.
type Held = (
    tokio::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    Cluster,
    Connection,
);

/// Waits for this test's turn, starts three brokers and creates `topic` (replication
/// factor 3). Three partitions of `__consumer_offsets` (one led by each broker) rather
/// than the default six: every partition is a Raft group, and these tests are about
/// what groups do, not how many shards hold them.
async fn start_with_topic(topic: &str, partitions: u32) -> Held {
    let serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster =
        Cluster::new(BROKER, dir.path(), 3).with_args(&["--offsets-topic-partitions", "3"]);
    cluster.start_stopped();
    let conn = connect(&cluster).await;
    create_topic(&conn, topic, partitions).await;
    (serial, dir, cluster, conn)
}

fn producer(conn: &Connection) -> Producer {
    Producer::new(conn.clone(), producer_config()).expect("producer")
}

/// Writes `per_partition` records to each of `partitions` and waits for every ack.
async fn produce(producer: &Producer, topic: &str, partitions: u32, per_partition: u32) {
    let mut pending = Vec::new();
    for i in 0..per_partition {
        for p in 0..partitions {
            let rec = ProducerRecord::new(topic, format!("{p}-{i}")).partition(p);
            pending.push(producer.send(rec).await.expect("buffered"));
        }
    }
    producer.flush().await.expect("flush");
    for d in pending {
        d.await.expect("acknowledged");
    }
}

/// Writes one record to every partition every `every` until stopped.
fn produce_steadily(
    producer: Producer,
    topic: &'static str,
    partitions: u32,
    every: Duration,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut pending = Vec::new();
        let mut i = 0u64;
        loop {
            for p in 0..partitions {
                let rec = ProducerRecord::new(topic, format!("{p}-{i}")).partition(p);
                pending.push(producer.send(rec).await.expect("buffered"));
            }
            i += 1;
            tokio::select! {
                _ = &mut stopped => break,
                () = tokio::time::sleep(every) => {}
            }
        }
        producer.flush().await.expect("flush");
        for d in pending {
            d.await.expect("acknowledged");
        }
    });
    (stop, task)
}

/// Polls `check` until it holds, failing with `what` after `timeout`.
async fn wait_for(what: &str, timeout: Duration, check: impl FnMut() -> bool) {
    wait_or_dump(what, timeout, &[], check).await
}

/// Like [`wait_for`], showing what `members` saw if it times out.
async fn wait_or_dump(
    what: &str,
    timeout: Duration,
    members: &[&Member],
    mut check: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() >= deadline {
            let dump: Vec<String> = members
                .iter()
                .map(|m| {
                    let seen = m.seen.lock().unwrap();
                    let events: Vec<_> = seen.events.iter().map(|(w, p, _)| (w, p)).collect();
                    format!(
                        "owned {:?}, {} records, events {events:?}",
                        seen.owned,
                        seen.records.len()
                    )
                })
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; members:\n{}",
                dump.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a member saw.
#[derive(Debug, Default)]
struct Seen {
    /// (partition, offset, when handed out).
    records: Vec<(u32, u64, Instant)>,
    owned: BTreeSet<u32>,
    /// ("assigned" | "revoked" | "lost", partitions, when).
    events: Vec<(&'static str, Vec<u32>, Instant)>,
    /// Offsets this member committed and had acknowledged, per partition.
    committed: BTreeMap<u32, u64>,
    /// What it owns, with topic names (for tests reading several topics).
    owned_topics: BTreeSet<TopicPartition>,
}

struct Recorder(Arc<Mutex<Seen>>);

impl Recorder {
    fn note(&self, what: &'static str, partitions: &[TopicPartition]) {
        let mut seen = self.0.lock().unwrap();
        let ps: Vec<u32> = partitions.iter().map(|tp| tp.partition).collect();
        if what == "assigned" {
            seen.owned.extend(&ps);
            seen.owned_topics.extend(partitions.iter().cloned());
        } else {
            for tp in partitions {
                seen.owned.remove(&tp.partition);
                seen.owned_topics.remove(tp);
            }
        }
        seen.events.push((what, ps, Instant::now()));
    }
}

impl RebalanceListener for Recorder {
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        self.note("assigned", partitions);
    }
    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        self.note("revoked", partitions);
    }
    fn on_lost(&mut self, partitions: &[TopicPartition]) {
        self.note("lost", partitions);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commits {
    /// Auto-commit every 500 ms (and before revocations, and on leaving).
    Auto,
    /// Commit by hand after every tenth offset of a partition; nothing automatic.
    EveryTenth,
}

enum Stop {
    /// Drop the consumer: no commit, no leave, as if the process died.
    Crash,
    /// `close()`: final commit and leave.
    Leave,
}

/// A subscribed consumer running in a task of the test.
struct Member {
    seen: Arc<Mutex<Seen>>,
    stop: Option<oneshot::Sender<Stop>>,
    task: Option<JoinHandle<()>>,
}

impl Member {
    fn start(
        conn: &Connection,
        name: &str,
        group: &str,
        topic: &'static str,
        commits: Commits,
        session: Option<Duration>,
    ) -> Self {
        Self::spawn(conn, name, commits, session, |c| {
            c.subscribe(group, [topic])
        })
    }

    /// A member subscribed by `subscribe`.
    fn spawn(
        conn: &Connection,
        name: &str,
        commits: Commits,
        session: Option<Duration>,
        subscribe: impl FnOnce(&mut Consumer) -> sluice_client::Result<()>,
    ) -> Self {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (stop, mut stop_rx) = oneshot::channel();
        let config = ConsumerConfig {
            auto_offset_reset: OffsetReset::Earliest,
            enable_auto_commit: commits == Commits::Auto,
            auto_commit_interval: Duration::from_millis(500),
            session_timeout: session,
            client_id: name.to_string(),
            ..ConsumerConfig::default()
        };
        let mut consumer = Consumer::new(conn.clone(), config).expect("consumer");
        consumer.set_rebalance_listener(Recorder(seen.clone()));
        subscribe(&mut consumer).expect("subscribe");
        let (name, record) = (name.to_string(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    how = &mut stop_rx => {
                        if let Ok(Stop::Leave) = how {
                            consumer.close().await.expect("leave the group");
                        }
                        return;
                    }
                    next = consumer.recv() => match next {
                        Some(Ok(r)) => {
                            record.lock().unwrap().records.push((r.partition, r.offset, Instant::now()));
                            if commits == Commits::EveryTenth && (r.offset + 1) % 10 == 0 {
                                let tp = TopicPartition::new(&*r.topic, r.partition);
                                let offsets = BTreeMap::from([(tp, OffsetAndMetadata::new(r.offset + 1))]);
                                match consumer.commit_offsets(offsets).await {
                                    Ok(()) => {
                                        record.lock().unwrap().committed.insert(r.partition, r.offset + 1);
                                    }
                                    Err(e) => eprintln!("{name}: commit failed: {e}"),
                                }
                            }
                        }
                        Some(Err(e)) => {
                            eprintln!("{name}: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        None => tokio::time::sleep(Duration::from_millis(50)).await,
                    },
                }
            }
        });
        Self {
            seen,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn owned(&self) -> BTreeSet<u32> {
        self.seen.lock().unwrap().owned.clone()
    }

    fn records(&self) -> Vec<(u32, u64, Instant)> {
        self.seen.lock().unwrap().records.clone()
    }

    async fn stop(&mut self, how: Stop) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(how);
        }
        if let Some(task) = self.task.take() {
            task.await.expect("member task");
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// (partition, offset) → how many times members read it.
fn reads(members: &[&Member]) -> BTreeMap<(u32, u64), usize> {
    let mut out = BTreeMap::new();
    for m in members {
        for (p, o, _) in m.records() {
            *out.entry((p, o)).or_insert(0) += 1;
        }
    }
    out
}

/// Every offset below `ends[p]` of every partition, read at least once.
fn assert_all_read(reads: &BTreeMap<(u32, u64), usize>, ends: &[u64]) {
    for (p, &end) in ends.iter().enumerate() {
        let missing: Vec<u64> = (0..end)
            .filter(|o| !reads.contains_key(&(p as u32, *o)))
            .collect();
        assert!(
            missing.is_empty(),
            "partition {p}: offsets never read: {missing:?}"
        );
    }
}

/// Whether every offset below `ends[p]` of every partition was read.
fn all_read(reads: &BTreeMap<(u32, u64), usize>, ends: &[u64]) -> bool {
    ends.iter()
        .enumerate()
        .all(|(p, &end)| (0..end).all(|o| reads.contains_key(&(p as u32, o))))
}

/// Whether the members own disjoint sets covering all `partitions`, `each` apiece.
fn balanced(members: &[&Member], partitions: u32, each: usize) -> bool {
    let owned: Vec<BTreeSet<u32>> = members.iter().map(|m| m.owned()).collect();
    let all: BTreeSet<u32> = owned.iter().flatten().copied().collect();
    owned.iter().all(|o| o.len() == each)
        && all.len() == partitions as usize
        && owned.iter().map(BTreeSet::len).sum::<usize>() == partitions as usize
}

async fn end_offsets(admin: &Admin, topic: &str, partitions: u32) -> Vec<u64> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let tp = TopicPartition::new(topic, p);
        out.push(
            admin
                .list_offset(&tp, Offset::Latest)
                .await
                .expect("end offset"),
        );
    }
    out
}

/// Runs `sluice --bootstrap ... ARGS` to completion: (success, stdout, stderr).
async fn sluice(cluster: &Cluster, args: &[&str]) -> (bool, String, String) {
    let bootstrap = cluster.addrs().join(",");
    let out = tokio::process::Command::new(SLUICE)
        .args(["--bootstrap", &bootstrap, "--timeout", "10s"])
        .args(args)
        .output()
        .await
        .expect("run the sluice CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_twelve_partitions_and_read_every_record_once() {
    const TOPIC: &str = "shared";
    let (_serial, _dir, _cluster, conn) = start_with_topic(TOPIC, 12).await;
    produce(&producer(&conn), TOPIC, 12, 100).await;
    // At least 100 each; more where a produce was retried.
    let ends = end_offsets(&Admin::new(conn.clone()), TOPIC, 12).await;

    // They join one after another, so partitions move while records are being read.
    let mut members = Vec::new();
    for name in ["a", "b", "c"] {
        members.push(Member::start(
            &conn,
            name,
            "sharers",
            TOPIC,
            Commits::Auto,
            None,
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let all: Vec<&Member> = members.iter().collect();
    wait_or_dump(
        "4 partitions each and every record read",
        Duration::from_secs(40),
        &all,
        || balanced(&all, 12, 4) && all_read(&reads(&all), &ends),
    )
    .await;
    let reads = reads(&all);
    assert_all_read(&reads, &ends);
    let twice: Vec<_> = reads.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "records read more than once: {twice:?}");
    let group = Admin::new(conn.clone())
        .describe_group("sharers")
        .await
        .expect("describe");
    assert_eq!(group.members.len(), 3);
    assert!(
        group.members.iter().all(|m| m.assigned.len() == 4),
        "{group:?}"
    );
    for m in &mut members {
        m.stop(Stop::Leave).await;
    }
    // Leaving commits the final positions: the end of every partition.
    let offsets = Admin::new(conn.clone())
        .group_offsets("sharers")
        .await
        .expect("offsets");
    let committed: Vec<u64> = (0..12)
        .map(|p| offsets[&TopicPartition::new(TOPIC, p)].offset)
        .collect();
    assert_eq!(committed, ends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_members_partitions_resume_from_its_last_commit() {
    const TOPIC: &str = "crash";
    let (_serial, _dir, _cluster, conn) = start_with_topic(TOPIC, 6).await;
    let admin = Admin::new(conn.clone());
    let session = Some(Duration::from_secs(6));
    let mut members: Vec<Member> = ["a", "b", "victim"]
        .into_iter()
        .map(|n| Member::start(&conn, n, "crashers", TOPIC, Commits::EveryTenth, session))
        .collect();
    {
        let all: Vec<&Member> = members.iter().collect();
        wait_or_dump("a stable group", Duration::from_secs(30), &all, || {
            balanced(&all, 6, 2)
        })
        .await;
    }
    let producer = producer(&conn);
    produce(&producer, TOPIC, 6, 25).await;
    let ends = end_offsets(&admin, TOPIC, 6).await;
    {
        let all: Vec<&Member> = members.iter().collect();
        wait_or_dump(
            "the first records read",
            Duration::from_secs(30),
            &all,
            || all_read(&reads(&all), &ends),
        )
        .await;
    }
    // The victim read its partitions to the end and committed every tenth offset.
    let victim_parts = members[2].owned();
    let victim_committed = members[2].seen.lock().unwrap().committed.clone();
    for p in &victim_parts {
        let end = ends[*p as usize];
        assert_eq!(
            victim_committed.get(p),
            Some(&(end / 10 * 10)),
            "partition {p}"
        );
    }
    let crashed_at = Instant::now();
    members[2].stop(Stop::Crash).await;
    produce(&producer, TOPIC, 6, 25).await;
    let ends = end_offsets(&admin, TOPIC, 6).await;
    let survivors: Vec<&Member> = members[..2].iter().collect();
    {
        let all: Vec<&Member> = members.iter().collect();
        wait_or_dump(
            "the survivors to own everything and read it all",
            Duration::from_secs(40),
            &all,
            || balanced(&survivors, 6, 3) && all_read(&reads(&all), &ends),
        )
        .await;
    }
    let all: Vec<&Member> = members.iter().collect();
    let reads = reads(&all);
    // Only the victim's uncommitted records came twice: its partitions resumed
    // exactly at its last commit.
    for ((p, o), n) in &reads {
        let uncommitted = victim_parts.contains(p) && *o >= victim_committed[p] && {
            let victim_last = members[2]
                .records()
                .iter()
                .filter(|r| r.0 == *p)
                .map(|r| r.1)
                .max();
            victim_last.is_some_and(|last| *o <= last)
        };
        let expected = if uncommitted { 2 } else { 1 };
        assert_eq!(*n, expected, "{p}/{o} read {n} times");
    }
    let mut resumed = None;
    for m in &survivors {
        for p in &victim_parts {
            let first = m
                .records()
                .into_iter()
                .filter(|(rp, _, at)| rp == p && *at > crashed_at)
                .min_by_key(|(_, o, _)| *o);
            if let Some((_, o, at)) = first {
                assert_eq!(o, victim_committed[p], "partition {p} resumed at {o}");
                resumed = Some(resumed.map_or(at, |r: Instant| r.min(at)));
            }
        }
    }
    let resumed = resumed.expect("the victim's partitions were read again");
    println!(
        "rebalance after a crashed member (session timeout 6 s): {:.2} s",
        resumed.duration_since(crashed_at).as_secs_f64()
    );
    for m in &mut members[..2] {
        m.stop(Stop::Leave).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cli_member_is_replaced_within_the_default_session_timeout() {
    const TOPIC: &str = "cli-crash";
    const GROUP: &str = "mixed";
    let (_serial, _dir, cluster, conn) = start_with_topic(TOPIC, 6).await;
    let admin = Admin::new(conn.clone());
    // Default session timeout (10 s) and heartbeat interval (1 s) everywhere.
    let bootstrap = cluster.addrs().join(",");
    let mut cli = CliProcess::spawn(
        SLUICE,
        &[
            "--bootstrap",
            &bootstrap,
            "consume",
            TOPIC,
            "--group",
            GROUP,
            "--follow",
            "--from-beginning",
            "--commit-interval",
            "1s",
            "--format",
            "{partition} {offset}",
        ],
    );
    let mut members: Vec<Member> = ["a", "b"]
        .into_iter()
        .map(|n| Member::start(&conn, n, GROUP, TOPIC, Commits::Auto, None))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    let cli_parts: BTreeSet<u32> = loop {
        let d = admin.describe_group(GROUP).await;
        if let Ok(d) = &d
            && d.members.len() == 3
            && d.state == "stable"
            && d.members.iter().all(|m| m.assigned.len() == 2)
            && let Some(m) = d.members.iter().find(|m| m.client_id == "sluice-cli")
        {
            break m.assigned.iter().map(|tp| tp.partition).collect();
        }
        assert!(
            Instant::now() < deadline,
            "group never settled: {d:?}\n{:?}",
            cli.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (stop_producing, producing) =
        produce_steadily(producer(&conn), TOPIC, 6, Duration::from_millis(50));
    // Let the CLI read and commit a while: until it has printed records and a commit
    // interval has passed (a loaded machine may take a few seconds to get going).
    let reading_by = Instant::now() + Duration::from_secs(20);
    while cli.stdout().is_empty() && Instant::now() < reading_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cli.kill();
    let killed_at = Instant::now();
    let printed: Vec<(u32, u64)> = cli
        .stdout()
        .iter()
        .filter_map(|l| {
            let (p, o) = l.split_once(' ')?;
            Some((p.parse().ok()?, o.parse().ok()?))
        })
        .collect();
    assert!(
        !printed.is_empty(),
        "the CLI read nothing: {:?}",
        cli.stderr()
    );
    // Nobody commits the dead member's partitions until they move: this is where
    // their new owners must start (once a commit it sent just before dying is in).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let committed = admin.group_offsets(GROUP).await.expect("committed offsets");
    let survivors: Vec<&Member> = members.iter().collect();
    wait_for(
        "the survivors to own all 6 partitions",
        Duration::from_secs(30),
        || balanced(&survivors, 6, 3),
    )
    .await;
    let mut first_after: BTreeMap<u32, (u64, Instant)> = BTreeMap::new();
    wait_for(
        "every moved partition to be read again",
        Duration::from_secs(20),
        || {
            for m in &survivors {
                for (p, o, at) in m.records() {
                    if cli_parts.contains(&p) && at > killed_at {
                        let e = first_after.entry(p).or_insert((o, at));
                        if o < e.0 {
                            *e = (o, at);
                        }
                    }
                }
            }
            first_after.len() == cli_parts.len()
        },
    )
    .await;
    let rebalance = first_after
        .values()
        .map(|(_, at)| at.duration_since(killed_at))
        .min()
        .expect("moved partitions");
    println!(
        "rebalance after a killed `sluice consume --group` (default session timeout 10 s, heartbeat 1 s): \
         {:.2} s from SIGKILL to its partitions being read again",
        rebalance.as_secs_f64()
    );
    assert!(rebalance < Duration::from_secs(15), "took {rebalance:?}");
    for (p, (first, _)) in &first_after {
        let tp = TopicPartition::new(TOPIC, *p);
        let resumed_at = committed.get(&tp).map_or(0, |c| c.offset);
        assert_eq!(
            *first, resumed_at,
            "partition {p} resumes at the dead member's commit"
        );
        let last_printed = printed
            .iter()
            .filter(|(pp, _)| pp == p)
            .map(|(_, o)| *o)
            .max();
        assert!(
            last_printed.is_none_or(|l| *first <= l + 1),
            "partition {p}: gap between {last_printed:?} and {first}"
        );
    }
    let _ = stop_producing.send(());
    producing.await.expect("producer");
    let ends = end_offsets(&admin, TOPIC, 6).await;
    let total: u64 = ends.iter().sum();
    wait_for(
        "everything produced to be read",
        Duration::from_secs(30),
        || {
            let mut all = reads(&survivors);
            for (p, o) in &printed {
                *all.entry((*p, *o)).or_insert(0) += 1;
            }
            all.len() as u64 == total
        },
    )
    .await;
    let mut all = reads(&survivors);
    for (p, o) in &printed {
        *all.entry((*p, *o)).or_insert(0) += 1;
    }
    assert_all_read(&all, &ends);
    for ((p, o), n) in &all {
        if *n > 1 {
            let from = committed
                .get(&TopicPartition::new(TOPIC, *p))
                .map_or(0, |c| c.offset);
            assert!(
                cli_parts.contains(p) && *o >= from,
                "{p}/{o} read {n} times, but only the dead member's uncommitted records may repeat"
            );
        }
    }
    for m in &mut members {
        m.stop(Stop::Leave).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_pauses_only_the_partitions_that_move() {
    const TOPIC: &str = "joining";
    let (_serial, _dir, _cluster, conn) = start_with_topic(TOPIC, 12).await;
    let mut members: Vec<Member> = ["a", "b", "c"]
        .into_iter()
        .map(|n| Member::start(&conn, n, "joiners", TOPIC, Commits::Auto, None))
        .collect();
    {
        let all: Vec<&Member> = members.iter().collect();
        wait_or_dump(
            "a stable group of three",
            Duration::from_secs(30),
            &all,
            || balanced(&all, 12, 4),
        )
        .await;
    }
    let before: Vec<BTreeSet<u32>> = members.iter().map(Member::owned).collect();
    let (stop_producing, producing) =
        produce_steadily(producer(&conn), TOPIC, 12, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let joined_at = Instant::now();
    members.push(Member::start(
        &conn,
        "d",
        "joiners",
        TOPIC,
        Commits::Auto,
        None,
    ));
    {
        let all: Vec<&Member> = members.iter().collect();
        wait_or_dump(
            "a stable group of four",
            Duration::from_secs(30),
            &all,
            || balanced(&all, 12, 3),
        )
        .await;
    }
    let settled_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_producing.send(());
    producing.await.expect("producer");

    let moved: BTreeSet<u32> = members[3].owned();
    assert_eq!(moved.len(), 3);
    for (m, old) in members[..3].iter().zip(&before) {
        let now = m.owned();
        assert!(now.is_subset(old), "a member only gives partitions up");
        assert_eq!(old.difference(&now).count(), 1, "one partition from each");
        let seen = m.seen.lock().unwrap();
        let changes: Vec<_> = seen
            .events
            .iter()
            .filter(|(_, _, at)| *at > joined_at)
            .collect();
        assert_eq!(
            changes.len(),
            1,
            "one revocation, nothing else: {changes:?}"
        );
        assert_eq!(changes[0].0, "revoked");
        assert!(changes[0].1.iter().all(|p| moved.contains(p)));
    }
    // Partitions that stayed were read throughout the join; the moved ones paused.
    let all: Vec<&Member> = members.iter().collect();
    let mut last: BTreeMap<u32, Instant> = BTreeMap::new();
    let mut longest: BTreeMap<u32, Duration> = BTreeMap::new();
    let mut records: Vec<(u32, u64, Instant)> = all.iter().flat_map(|m| m.records()).collect();
    records.sort_by_key(|(_, _, at)| *at);
    for (p, _, at) in records {
        if at < joined_at - Duration::from_millis(500) || at > settled_at {
            continue;
        }
        if let Some(prev) = last.insert(p, at) {
            let gap = at.duration_since(prev);
            let l = longest.entry(p).or_default();
            *l = (*l).max(gap);
        }
    }
    let kept_gap = longest
        .iter()
        .filter(|(p, _)| !moved.contains(p))
        .map(|(_, g)| *g)
        .max()
        .unwrap_or_default();
    let moved_gap = longest
        .iter()
        .filter(|(p, _)| moved.contains(p))
        .map(|(_, g)| *g)
        .max()
        .unwrap_or_default();
    println!(
        "join: settled in {:.2} s; longest pause of a moved partition {:.2} s, of a kept one {:.2} s",
        settled_at.duration_since(joined_at).as_secs_f64(),
        moved_gap.as_secs_f64(),
        kept_gap.as_secs_f64()
    );
    let reads = reads(&all);
    let twice: Vec<_> = reads.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "records read more than once: {twice:?}");
    let ends = end_offsets(&Admin::new(conn.clone()), TOPIC, 12).await;
    wait_for("every record read", Duration::from_secs(20), || {
        let r = self::reads(&all);
        r.len() as u64 == ends.iter().sum::<u64>()
    })
    .await;
    assert_all_read(&self::reads(&all), &ends);
    for m in &mut members {
        m.stop(Stop::Leave).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_restart_of_every_broker() {
    const TOPIC: &str = "durable";
    let (_serial, _dir, mut cluster, conn) = start_with_topic(TOPIC, 4).await;
    produce(&producer(&conn), TOPIC, 4, 100).await;
    let admin = Admin::new(conn.clone());
    let ends = end_offsets(&admin, TOPIC, 4).await;
    let mut m = Member::start(&conn, "a", "keepers", TOPIC, Commits::Auto, None);
    wait_or_dump("every record read", Duration::from_secs(30), &[&m], || {
        all_read(&reads(&[&m]), &ends)
    })
    .await;
    m.stop(Stop::Leave).await;
    let before = admin.group_offsets("keepers").await.expect("offsets");
    let committed: Vec<u64> = (0..4)
        .map(|p| before[&TopicPartition::new(TOPIC, p)].offset)
        .collect();
    assert_eq!(
        committed, ends,
        "leaving committed the end of each partition"
    );

    for b in cluster.brokers.iter_mut() {
        b.kill();
    }
    cluster.start_stopped();
    let conn = connect(&cluster).await;
    let admin = Admin::new(conn.clone());
    let after = admin
        .group_offsets("keepers")
        .await
        .expect("offsets after restart");
    assert_eq!(after, before);

    // A new member starts at the committed offsets: only new records are read.
    produce(&producer(&conn), TOPIC, 4, 10).await;
    let new_ends = end_offsets(&admin, TOPIC, 4).await;
    let mut m = Member::start(&conn, "b", "keepers", TOPIC, Commits::Auto, None);
    let expected: BTreeSet<(u32, u64)> = (0..4u32)
        .flat_map(|p| (ends[p as usize]..new_ends[p as usize]).map(move |o| (p, o)))
        .collect();
    wait_or_dump(
        "the new records read",
        Duration::from_secs(30),
        &[&m],
        || m.records().len() >= expected.len(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read: Vec<(u32, u64)> = m.records().iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(read.len(), expected.len(), "each new record once");
    assert_eq!(
        read.into_iter().collect::<BTreeSet<_>>(),
        expected,
        "nothing before the commits was read again"
    );
    m.stop(Stop::Leave).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_offsets_to_earliest_replays_the_whole_topic() {
    const TOPIC: &str = "replay";
    const GROUP: &str = "replayers";
    let (_serial, _dir, cluster, conn) = start_with_topic(TOPIC, 4).await;
    produce(&producer(&conn), TOPIC, 4, 50).await;
    let ends = end_offsets(&Admin::new(conn.clone()), TOPIC, 4).await;
    let total: u64 = ends.iter().sum();
    let mut a = Member::start(&conn, "a", GROUP, TOPIC, Commits::Auto, None);
    wait_or_dump("every record read", Duration::from_secs(30), &[&a], || {
        all_read(&reads(&[&a]), &ends)
    })
    .await;

    // Refused while the group has a member.
    let (ok, _, err) = sluice(
        &cluster,
        &[
            "group",
            "reset-offsets",
            GROUP,
            "--topic",
            TOPIC,
            "--to-earliest",
        ],
    )
    .await;
    assert!(
        !ok && err.contains("--force") && err.contains("not empty"),
        "{err}"
    );
    a.stop(Stop::Leave).await;

    let (ok, out, err) = sluice(&cluster, &["group", "list"]).await;
    assert!(
        ok && out.contains(GROUP) && out.contains("empty"),
        "{out}{err}"
    );
    let (ok, out, err) = sluice(
        &cluster,
        &[
            "group",
            "reset-offsets",
            GROUP,
            "--topic",
            TOPIC,
            "--to-earliest",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.ends_with(" 0")).count(),
        4,
        "{out}"
    );
    let (ok, out, err) = sluice(&cluster, &["--output", "json", "group", "describe", GROUP]).await;
    assert!(ok, "{err}");
    let described: serde_json::Value = serde_json::from_str(&out).expect("json");
    let rows = described["partitions"].as_array().expect("partitions");
    assert_eq!(rows.len(), 4, "{out}");
    for row in rows {
        let end = ends[row["partition"].as_u64().expect("partition") as usize];
        assert_eq!(row["committed"], 0, "{row}");
        assert_eq!(row["end_offset"], end, "{row}");
        assert_eq!(row["lag"], end, "{row}");
        assert!(row["member"].is_null(), "{row}");
    }
    let (ok, out, _) = sluice(&cluster, &["group", "describe", GROUP]).await;
    assert!(
        ok && out.contains("LAG") && out.contains("State: empty"),
        "{out}"
    );

    // A new member replays everything.
    let mut b = Member::start(&conn, "b", GROUP, TOPIC, Commits::Auto, None);
    wait_or_dump(
        "every record read again",
        Duration::from_secs(30),
        &[&b],
        || all_read(&reads(&[&b]), &ends),
    )
    .await;
    assert_eq!(b.records().len() as u64, total, "each record once");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, _, err) = sluice(&cluster, &["group", "delete", GROUP]).await;
    assert!(!ok && err.contains("not empty"), "{err}");

    // --force removes the member; it rejoins and replays from the new offsets.
    let (ok, _, err) = sluice(
        &cluster,
        &[
            "group",
            "reset-offsets",
            GROUP,
            "--topic",
            TOPIC,
            "--to-offset",
            "40",
            "--force",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let replay: u64 = ends.iter().map(|e| e - 40).sum();
    wait_or_dump(
        "the member to read from 40 again",
        Duration::from_secs(30),
        &[&b],
        || b.records().len() as u64 == total + replay,
    )
    .await;
    let again: Vec<u64> = b.records()[total as usize..]
        .iter()
        .map(|(_, o, _)| *o)
        .collect();
    assert!(again.iter().all(|o| *o >= 40), "{again:?}");
    assert!(
        b.seen
            .lock()
            .unwrap()
            .events
            .iter()
            .any(|(what, _, _)| *what == "lost")
    );
    b.stop(Stop::Leave).await;

    let (ok, out, err) = sluice(&cluster, &["group", "delete", GROUP]).await;
    assert!(ok && out.contains("Deleted group"), "{out}{err}");
    let (ok, _, err) = sluice(&cluster, &["group", "describe", GROUP]).await;
    assert!(!ok && err.contains("unknown group"), "{err}");

    // `sluice consume --group` without --follow reads its share to the end, commits
    // and leaves.
    let (ok, out, err) = sluice(
        &cluster,
        &[
            "consume",
            TOPIC,
            "--group",
            "cli-readers",
            "--from-beginning",
            "--format",
            "{partition} {offset}",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let lines: BTreeSet<&str> = out.lines().collect();
    assert_eq!(
        (out.lines().count() as u64, lines.len() as u64),
        (total, total),
        "{err}"
    );
    assert!(err.contains("assigned: "), "{err}");
    let (ok, out, err) = sluice(
        &cluster,
        &["--output", "json", "group", "describe", "cli-readers"],
    )
    .await;
    assert!(ok, "{err}");
    let described: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        described["members"].as_array().map(Vec::len),
        Some(0),
        "{out}"
    );
    for row in described["partitions"].as_array().expect("partitions") {
        assert_eq!(row["lag"], 0, "{row}");
    }

    // The offsets topic is internal: hidden from `topic list`, closed to producers.
    let (_, out, _) = sluice(&cluster, &["topic", "list"]).await;
    assert!(!out.contains("__consumer_offsets"), "{out}");
    let (_, out, _) = sluice(&cluster, &["topic", "list", "--internal"]).await;
    assert!(out.contains("__consumer_offsets"), "{out}");
    let sent = producer(&conn)
        .send(ProducerRecord::new("__consumer_offsets", "forged").partition(0))
        .await
        .expect("buffered")
        .await;
    assert!(
        sent.as_ref()
            .is_err_and(|e| e.to_string().contains("internal topic")),
        "{sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_picks_up_new_topics_and_partitions() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // One broker is enough: this is about what the coordinator assigns.
    let broker = BrokerProcess::start(BROKER, dir.path());
    let mut config = sluice_client::ClientConfig::new([broker.addr.clone()]);
    config.request_timeout = Duration::from_secs(5);
    let conn = Connection::connect(config).await.expect("connect");
    let admin = Admin::new(conn.clone());
    let create = |name: &'static str, partitions: u32| {
        let admin = admin.clone();
        async move {
            admin
                .create_topic(sluice_client::NewTopic::new(name, partitions))
                .await
                .expect("create topic");
        }
    };
    create("orders-eu", 2).await;
    let m = Member::spawn(&conn, "m", Commits::Auto, None, |c| {
        c.subscribe_pattern("regional", "orders-.*")
    });
    let seen = m.seen.clone();
    let owns = |want: &[(&str, u32)]| {
        let want: BTreeSet<TopicPartition> = want
            .iter()
            .map(|(t, p)| TopicPartition::new(*t, *p))
            .collect();
        let seen = seen.clone();
        move || seen.lock().unwrap().owned_topics == want
    };
    wait_or_dump(
        "orders-eu",
        Duration::from_secs(20),
        &[&m],
        owns(&[("orders-eu", 0), ("orders-eu", 1)]),
    )
    .await;
    create("orders-us", 1).await;
    create("payments", 1).await;
    admin
        .add_partitions("orders-eu", 3)
        .await
        .expect("grow orders-eu");
    let all = [
        ("orders-eu", 0),
        ("orders-eu", 1),
        ("orders-eu", 2),
        ("orders-us", 0),
    ];
    wait_or_dump(
        "the new topic and partition",
        Duration::from_secs(20),
        &[&m],
        owns(&all),
    )
    .await;
    // And it reads them.
    let producer = producer(&conn);
    for (topic, partition) in all {
        let rec = ProducerRecord::new(topic, "x").partition(partition);
        producer
            .send(rec)
            .await
            .expect("buffered")
            .await
            .expect("acknowledged");
    }
    wait_or_dump("a record from each", Duration::from_secs(20), &[&m], || {
        m.records().len() == 4
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_keep_their_partitions_when_the_coordinator_fails() {
    const TOPIC: &str = "steady";
    const GROUP: &str = "steadfast";
    let (_serial, _dir, mut cluster, conn) = start_with_topic(TOPIC, 6).await;
    let mut members: Vec<Member> = ["a", "b"]
        .into_iter()
        .map(|n| Member::start(&conn, n, GROUP, TOPIC, Commits::Auto, None))
        .collect();
    {
        let all: Vec<&Member> = members.iter().collect();
        wait_or_dump("a stable group", Duration::from_secs(30), &all, || {
            balanced(&all, 6, 3)
        })
        .await;
    }
    let (stop_producing, producing) =
        produce_steadily(producer(&conn), TOPIC, 6, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Kill the coordinator: the leader of the group's offsets partition.
    let mut finder = GroupCoordinatorClient::connect(format!("http://{}", cluster.addrs()[0]))
        .await
        .expect("connect");
    let coordinator = finder
        .find_coordinator(v1::FindCoordinatorRequest {
            group_id: GROUP.into(),
        })
        .await
        .expect("find coordinator")
        .into_inner()
        .coordinator
        .expect("a coordinator");
    let killed_at = Instant::now();
    cluster.broker(coordinator.id).kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _ = stop_producing.send(());
    producing.await.expect("producer");
    let admin = Admin::new(conn.clone());
    let ends = end_offsets(&admin, TOPIC, 6).await;
    let all: Vec<&Member> = members.iter().collect();
    wait_or_dump("every record read", Duration::from_secs(40), &all, || {
        all_read(&reads(&all), &ends)
    })
    .await;
    // The new coordinator knew the members and their assignment: nothing moved, so
    // nothing was read twice.
    for m in &members {
        let seen = m.seen.lock().unwrap();
        let after: Vec<_> = seen
            .events
            .iter()
            .filter(|(_, _, at)| *at > killed_at)
            .collect();
        assert!(after.is_empty(), "the group rebalanced: {after:?}");
    }
    let twice: Vec<_> = reads(&all).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "records read more than once: {twice:?}");
    // Commits go on at the new coordinator.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let offsets = admin.group_offsets(GROUP).await;
        let at_end = offsets.as_ref().is_ok_and(|o| {
            (0..6).all(|p| {
                o.get(&TopicPartition::new(TOPIC, p))
                    .is_some_and(|c| c.offset == ends[p as usize])
            })
        });
        if at_end {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "commits stopped short of {ends:?}: {offsets:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for m in &mut members {
        m.stop(Stop::Leave).await;
    }
}
