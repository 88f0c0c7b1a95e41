//! Fault tolerance, in the spirit of Jepsen's tests of Kafka and Redpanda: three real
//! brokers, talking to each other only through fault-injecting proxies, take writes
//! from acks=all producers on six partitions (replication factor 3) while a scenario
//! kills, pauses, isolates, partitions, restarts, corrupts or starves them. Then every
//! fault heals, writes must go through again, and the checker reads every partition
//! from every replica and holds the history against it: nothing acknowledged lost,
//! acknowledged offsets true, order kept, nothing invented, replicas identical, and,
//! with `checker::EXACTLY_ONCE` on (idempotent producers), no duplicate and each
//! producer's records in the order it sent them. A consumer group reads along and
//! commits; the committed offsets it was answered must never go backward nor pass
//! the end of the log. One more test pins why they could: a follower behind a
//! consumer must send it to the leader, not answer "offset out of range".
//!
//! Each scenario prints one row of the summary table (scenario, acknowledged, lost,
//! duplicated, failed sends, read by the group, committed offsets sampled, seed). The random one prints its seed first; rerun it
//! with `SLUICE_FAULT_SEED=<seed>`. Scenarios run one at a time, each bounded by
//! explicit deadlines that fail with every broker's log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_client::{Connection, Producer, ProducerRecord};
use sluice_proto::v1;
use sluice_tests::checker::{self, Verdict};
use sluice_tests::damage;
use sluice_tests::disk::SmallDisk;
use sluice_tests::faults::{self, FaultyCluster, Schedule};
use sluice_tests::inspect::eventually;
use sluice_tests::inspect::raw_client;
use sluice_tests::readers::Readers;
use sluice_tests::workload::{History, Outcome, Workload, WorkloadConfig, client_config};
use sluice_tests::{create_topic, producer_config};

const BROKER: &str = env!("CARGO_BIN_EXE_test-broker");
const TOPIC: &str = "jepsen";
const PARTITIONS: u32 = 6;

/// Each scenario runs three brokers and two producers; on a small machine one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long an election may take after a fault (≈1.1 s measured), with room to spare.
const FAILOVER: Duration = Duration::from_secs(10);
/// How long, once every fault has healed, the cluster may take to take writes again
/// and for every replica to catch up.
const RECOVERY: Duration = Duration::from_secs(30);
/// Records that must be acknowledged to count writes as flowing.
const FLOWING: u64 = 60;

/// One scenario's cluster, its data, and its name for messages.
struct Scenario {
    name: &'static str,
    cluster: FaultyCluster,
    /// The data root, unless the test keeps it itself.
    _dir: Option<tempfile::TempDir>,
    /// The consumer group reading along, until the verdict.
    readers: Option<Readers>,
    /// Released last, once every broker is gone.
    _serial: tokio::sync::MutexGuard<'static, ()>,
    started: Instant,
}

impl Scenario {
    /// [`Scenario::start_in`] a fresh directory, with the workload writing.
    async fn under_load(name: &'static str) -> (Self, Workload) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        Self::start_in(name, &root, Some(dir)).await
    }

    /// Once no other scenario runs: three brokers behind proxies with their data under
    /// `root`, the topic created, every link seen carrying traffic (so faults on the
    /// links do reach the brokers), and the workload writing.
    async fn start_in(
        name: &'static str,
        root: &std::path::Path,
        dir: Option<tempfile::TempDir>,
    ) -> (Self, Workload) {
        let serial = SERIAL.lock().await;
        let started = Instant::now();
        let cluster = FaultyCluster::start(BROKER, root, 3);
        let s = Self {
            name,
            cluster,
            _dir: dir,
            readers: None,
            _serial: serial,
            started,
        };
        let conn = Connection::connect(client_config(s.cluster.addrs()))
            .await
            .unwrap_or_else(|e| s.fail(&format!("connect: {e}")));
        // A create retried after its answer was lost finds its own topic: that is fine.
        create_topic(&conn, TOPIC, PARTITIONS).await;
        s.check(s.cluster.leaders(TOPIC, FAILOVER).await);
        let linked = eventually(FAILOVER, || async {
            if s.cluster.every_link_used() {
                return Ok(());
            }
            Err("some broker pair never talked through its proxy".to_string())
        });
        s.check(linked.await);
        let config = WorkloadConfig::new(TOPIC, PARTITIONS, s.name);
        let w = s.check(Workload::start(s.cluster.addrs(), config).await);
        let group = format!("{name}-readers");
        let readers = s.check(Readers::start(s.cluster.addrs(), TOPIC, &group).await);
        let mut s = s;
        s.readers = Some(readers);
        s.flowing(&w, FAILOVER, "before the faults").await;
        (s, w)
    }

    fn fail(&self, message: &str) -> ! {
        panic!("{}: {message}\n{}", self.name, self.cluster.logs())
    }

    fn check<T>(&self, result: Result<T, String>) -> T {
        result.unwrap_or_else(|e| self.fail(&e))
    }

    /// Waits until writes flow: `FLOWING` more records acknowledged within `within`.
    async fn flowing(&self, workload: &Workload, within: Duration, when: &str) {
        if let Err(e) = workload.wait_for_acks(FLOWING, within).await {
            self.fail(&format!("writes did not flow {when}: {e}"));
        }
    }

    /// The leader of partition 0 right now.
    async fn leader(&self) -> u64 {
        self.check(self.cluster.leaders(TOPIC, FAILOVER).await)[0]
    }

    /// Heals every fault, checks writes flow again, stops the workload, and judges.
    async fn finish(mut self, workload: Workload, seed: Option<u64>) -> Verdict {
        self.cluster.heal_all();
        self.flowing(&workload, RECOVERY, "after every fault healed")
            .await;
        let history = workload.stop().await;
        self.judge(&history, seed).await
    }

    /// Reads every replica once they agree, checks `history` against them, prints the
    /// table row, and fails on any broken guarantee.
    async fn judge(&mut self, history: &History, seed: Option<u64>) -> Verdict {
        let mut min = vec![0u64; PARTITIONS as usize];
        for op in &history.ops {
            if let Outcome::Acked { offset } = op.outcome {
                let m = &mut min[op.partition as usize];
                *m = (*m).max(offset + 1);
            }
        }
        let commits = match self.readers.take() {
            Some(readers) => readers.stop().await,
            None => self.fail("the consumer group was never started"),
        };
        let replicas = self.check(self.cluster.read_all(TOPIC, &min, RECOVERY).await);
        let mut verdict = checker::check(history, &replicas);
        checker::check_commits(&mut verdict, &commits, &replicas);
        println!("{}", Verdict::TABLE_HEADER);
        println!("{}", verdict.table_row(self.name, seed));
        println!(
            "{}: failed sends by error: {:?}; acknowledged without an offset: {}; group: read errors {}, commits {} (failed: {:?}), failed offset lookups {}; took {:?}",
            self.name,
            history.failures(),
            verdict.acked_without_offset,
            commits.read_errors,
            commits.commits,
            commits.commit_errors,
            commits.lookup_errors,
            self.started.elapsed()
        );
        let problems = verdict.problems();
        if !problems.is_empty() {
            self.fail(&problems.join("\n"));
        }
        if verdict.acked == 0 {
            self.fail("nothing was acknowledged: the scenario tested nothing");
        }
        if verdict.commit_samples == 0 {
            // Not a broken guarantee: a coordinator stalled for the whole scenario (a
            // loaded machine timing out Raft RPCs) commits nothing. The row shows 0.
            println!(
                "{}: the group's committed offsets were never seen ({} commits acknowledged, failed: {:?}; {} failed lookups): nothing to check them against",
                self.name, commits.commits, commits.commit_errors, commits.lookup_errors
            );
        }
        verdict
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_loses_no_acknowledged_write() {
    let (mut s, w) = Scenario::under_load("leader-kill").await;

    let victim = s.leader().await;
    s.cluster.kill(victim);
    s.flowing(&w, FAILOVER, &format!("with leader {victim} killed"))
        .await;
    s.finish(w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_acknowledges_nothing_that_is_lost() {
    let (mut s, w) = Scenario::under_load("leader-pause").await;

    // Frozen well past the election timeout, with produce requests in flight to it;
    // the others elect, and when it thaws it must not acknowledge what it still holds.
    let victim = s.leader().await;
    s.cluster.pause(victim);
    s.flowing(&w, FAILOVER, &format!("with leader {victim} paused"))
        .await;
    let elected = s.leader().await;
    if elected == victim {
        s.fail("the paused broker is still named leader of partition 0");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.cluster.resume(victim);
    s.flowing(&w, FAILOVER, &format!("with broker {victim} resumed"))
        .await;
    s.finish(w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_reachable_by_clients_loses_nothing() {
    let (s, w) = Scenario::under_load("leader-isolated").await;

    // Clients still reach it; it cannot reach a quorum, so it must not acknowledge.
    let victim = s.leader().await;
    s.cluster.isolate(victim);
    s.flowing(&w, FAILOVER, &format!("with leader {victim} isolated"))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.finish(w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_partition_of_the_leader_loses_nothing() {
    let (s, w) = Scenario::under_load("one-way").await;

    // The leader hears the others but nothing it sends reaches them.
    let victim = s.leader().await;
    for other in s.cluster.ids().into_iter().filter(|&id| id != victim) {
        s.cluster.block_one_way(victim, other);
    }
    s.flowing(
        &w,
        FAILOVER,
        &format!("with leader {victim} unable to send"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.finish(w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_broker_loses_nothing() {
    let (mut s, w) = Scenario::under_load("rolling-restart").await;

    for id in s.cluster.ids() {
        // Graceful for the first broker, SIGKILL for the others.
        if id == 1 {
            s.cluster.broker(id).stop();
        } else {
            s.cluster.kill(id);
        }
        s.flowing(&w, FAILOVER, &format!("with broker {id} down"))
            .await;
        s.cluster.restart(id);
        s.check(s.cluster.wait_caught_up(id, TOPIC, RECOVERY).await);
    }
    s.finish(w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_killed_at_once_loses_nothing() {
    let (mut s, w) = Scenario::under_load("all-killed").await;

    for id in s.cluster.ids() {
        s.cluster.kill(id);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.finish(w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_with_torn_and_garbled_tail_recovers_and_serves_only_valid_data() {
    let (mut s, w) = Scenario::under_load("torn-tail").await;

    // A follower of partition 0 crashes; its disk tore the last write and garbled
    // a sector before it, in the active segment of every partition.
    let leader = s.leader().await;
    let victim = s
        .cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    s.cluster.kill(victim);
    let data_dir = s.cluster.broker(victim).data_dir.clone();
    let segments = s.check(damage::active_segments(&data_dir, TOPIC));
    let mut damaged = 0;
    for segment in &segments {
        if s.check(damage::tear_and_garble(segment)).is_some() {
            damaged += 1;
        }
    }
    if damaged < PARTITIONS as usize {
        s.fail(&format!(
            "only {damaged} of {} segments had two frames to damage",
            segments.len()
        ));
    }
    s.flowing(&w, FAILOVER, &format!("with broker {victim} down"))
        .await;
    s.cluster.restart(victim);
    s.check(s.cluster.wait_caught_up(victim, TOPIC, RECOVERY).await);
    let log = s.cluster.broker(victim).log();
    if !log.contains("truncating an incomplete or corrupt tail") {
        s.fail(&format!("broker {victim} did not notice the damage"));
    }
    // Its lost tail may have held entries it acknowledged: voting at once could elect
    // a lagging peer without them (a follower then held a committed entry the new
    // leader lacked). It waits until a leader has brought it up to date.
    if !log.contains("not voting until a leader brings it up to date")
        || !log.contains("caught up after a damaged log tail: votes again")
    {
        s.fail(&format!(
            "broker {victim} did not sit out elections until it had caught up"
        ));
    }
    s.finish(w, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_writes_clearly_and_resumes_when_space_returns() {
    // Every broker's data on one small tmpfs (their logs stay outside it).
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SmallDisk::mount(&dir.path().join("disk"), 64 << 20)
        .unwrap_or_else(|e| panic!("disk-full scenario cannot run: {e}"));
    for id in 1..=3 {
        let data = disk.path().join(format!("b{id}"));
        std::fs::create_dir_all(&data).expect("data dir");
        std::os::unix::fs::symlink(&data, dir.path().join(format!("b{id}"))).expect("symlink");
    }
    // Dropped in reverse: brokers first, then the tmpfs, then the directory.
    let (mut s, w) = Scenario::start_in("disk-full", dir.path(), None).await;

    let filled = s.check(disk.fill());
    let failed_before = w.progress().failed();
    // The tail of the last allocated pages still takes writes, and a loaded machine is
    // slow to reach it: allow the recovery window, not the failover one.
    let refused = eventually(RECOVERY, || async {
        if w.progress().failed() >= failed_before + 10 {
            return Ok(());
        }
        Err(format!(
            "a full disk (filler of {filled} bytes, {:?} bytes free) did not make produce fail",
            disk.free_bytes()
        ))
    });
    s.check(refused.await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.check(disk.free());
    s.flowing(&w, RECOVERY, "after space returned").await;
    let history = w.stop().await;

    let failures: BTreeMap<String, usize> = history.failures();
    let clear = ["ERROR_CODE_DISK_FULL", "ERROR_CODE_STORAGE"];
    if !failures.keys().any(|k| clear.contains(&k.as_str())) {
        s.fail(&format!(
            "produce on a full disk failed without a disk-full or storage error: {failures:?}"
        ));
    }
    s.judge(&history, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_fault_schedule_loses_nothing() {
    let seed = faults::seed();
    let (mut s, w) = Scenario::under_load("random").await;
    let schedule = Schedule::random(seed, &s.cluster.ids(), 6);
    schedule.run(&mut s.cluster).await;
    s.finish(w, Some(seed)).await;
}

/// A follower that has not got as far as a consumer has read (cut off from the leader
/// here; after a restart, one whose log lost a damaged tail) sends the consumer to the
/// leader. Were it to answer "offset out of range", the consumer would reset its
/// position and read, and commit, again from the start: a committed offset going back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_consumer_sends_it_to_the_leader() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = FaultyCluster::start(BROKER, dir.path(), 3);
    let conn = Connection::connect(client_config(cluster.addrs()))
        .await
        .expect("connect");
    create_topic(&conn, "lagging", 1).await;
    let leader = cluster.leaders("lagging", FAILOVER).await.expect("leader")[0];
    let behind = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    cluster.isolate(behind);

    let producer = Producer::new(conn.clone(), producer_config()).expect("producer");
    for i in 0..20 {
        let delivery = producer
            .send(ProducerRecord::new("lagging", format!("r{i}")))
            .await
            .expect("sent");
        delivery
            .await
            .expect("acknowledged by the leader and the other follower");
    }
    let mut client = raw_client(&cluster.addr(behind)).await.expect("client");
    let request = v1::FetchRequest {
        topic: "lagging".into(),
        partition: 0,
        offset: 20,
        max_bytes: 0,
        follow: false,
    };
    let answer = client
        .fetch(request)
        .await
        .expect("fetch")
        .into_inner()
        .message()
        .await
        .expect("an answer")
        .and_then(|r| r.error)
        .expect("an error");
    assert_eq!(
        answer.code,
        v1::ErrorCode::NotLeader as i32,
        "broker {behind}, cut off from leader {leader}, answered {answer:?}"
    );
    cluster.heal_network();
}
