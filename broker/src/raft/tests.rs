//! Tests of the Raft glue on real directories, real fsyncs and real loopback gRPC.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use sluice_proto::batch::{BatchBuilder, BatchHeader, Compression};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::log_store::{LeaderAcks, LogStore, StorageFailure};
use super::meta::MetaStore;
use super::state_machine::{CheckpointPolicy, StateMachine};
use super::*;
use crate::log::{Log, LogConfig, RetentionPolicy};

fn small_log() -> LogConfig {
    LogConfig {
        segment_bytes: 512,
        segment_age: None,
        index_interval_bytes: 64,
        retention: RetentionPolicy::default(),
    }
}

/// A fresh log store and state machine over one log in a temp dir, for openraft's suite.
struct TempStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(Log::open(dir.path().join("log"), small_log()).expect("open log"));
        let meta = Arc::new(MetaStore::open(dir.path().join("raft-meta")).expect("meta"));
        let recent = Arc::new(RecentEntries::new(Arc::new(EntryBudget::new(1 << 20))));
        let store = LogStore::new(
            log.clone(),
            meta,
            recent.clone(),
            Arc::new(LeaderAcks::default()),
            Arc::new(StorageFailure::default()),
            1024,
        );
        let (sm, _hw) = StateMachine::open(
            log,
            recent,
            dir.path().join("sm-state"),
            None,
            CheckpointPolicy::default(),
        )
        .expect("state machine");
        Ok((dir, store, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_log_store_conformance_suite() {
    Suite::test_all(TempStores)
        .await
        .expect("openraft log store suite");
}

fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Quicker than the defaults, yet with an election timeout that survives a scheduler
/// stall of a few hundred milliseconds: unit tests run in parallel on small, shared
/// machines, and at 150 ms a loaded run saw leaders deposed mid-test.
fn fast_tuning() -> RaftTuning {
    trace();
    RaftTuning {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(500),
        election_timeout_max: Duration::from_millis(800),
        write_timeout: Duration::from_secs(5),
        ..RaftTuning::default()
    }
}

/// A valid batch of `records` records whose values tell `tag` and the record number.
fn batch(tag: u64, records: u64) -> Bytes {
    let mut b = BatchBuilder::new(Compression::None);
    for r in 0..records {
        let value = format!("batch {tag} record {r}");
        b.append(
            1_700_000_000_000 + tag as i64,
            None,
            Some(value.as_bytes()),
            &[],
        )
        .expect("append record");
    }
    b.build()
}

/// Every stored batch below `hw`, with the offsets checked dense from 0.
fn read_all(log: &Log, hw: u64) -> Vec<Bytes> {
    let read = log.read(0, usize::MAX, hw).expect("read");
    let mut next = 0;
    for b in &read.batches {
        let h = BatchHeader::parse(b).expect("stored header");
        assert_eq!(h.base_offset as u64, next, "offsets are dense");
        next += h.offset_count();
    }
    assert_eq!(next, hw, "read up to the high watermark");
    read.batches
}

/// Whether two replicas hold the same stored batches, byte for byte.
fn same_bytes(a: &[Bytes], b: &[Bytes]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Starts `spec` (a group whose only member is this node) and waits until it leads.
async fn start_leading(spec: ReplicaSpec, registry: &GroupRegistry) -> Replica {
    let replica = Replica::start(spec, registry, &Network::default())
        .await
        .expect("start");
    replica
        .wait_for_leader(Duration::from_secs(5))
        .await
        .expect("leader");
    replica
}

async fn wait_hw(replica: &Replica, want: u64, within: Duration) {
    let mut rx = replica.watch_high_watermark();
    tokio::time::timeout(within, rx.wait_for(|hw| *hw >= want))
        .await
        .expect("high watermark in time")
        .expect("watch open");
    assert_eq!(replica.high_watermark(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_writes_restarts_and_continues() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = GroupRegistry::new();
    let network = Network::default();
    let members = BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]);
    let spec = ReplicaSpec::new(7, 1, dir.path(), members)
        .log_config(LogConfig {
            segment_bytes: 4 << 10,
            ..small_log()
        })
        .tuning(RaftTuning {
            // Checkpoints along the way: the restart resumes from one and re-applies
            // only what follows it.
            checkpoint: CheckpointPolicy {
                every_entries: 16,
                ..CheckpointPolicy::default()
            },
            ..fast_tuning()
        });

    let replica = Replica::start(spec.clone(), &registry, &network)
        .await
        .expect("start");
    assert_eq!(registry.group_ids(), vec![7]);
    let twice = Replica::start(spec.clone(), &registry, &network).await;
    assert!(
        matches!(
            twice,
            Err(ReplicaError::Transport(
                network::TransportError::AlreadyRegistered { group_id: 7 }
            ))
        ),
        "{twice:?}"
    );
    let leader = replica
        .wait_for_leader(Duration::from_secs(5))
        .await
        .expect("leader");
    assert_eq!(leader, 1);
    assert!(replica.is_leader());

    let mut next = 0u64;
    for i in 0..100u64 {
        let records = i % 5 + 1;
        let w = replica
            .write(batch(i, records), Acks::All)
            .await
            .expect("write");
        assert_eq!(w.base_offset, Some(next), "batch {i}");
        next += records;
        assert_eq!(w.high_watermark, next);
    }
    assert_eq!(replica.high_watermark(), next);
    let before = read_all(replica.log(), next);
    assert_eq!(before.len(), 100);
    assert!(
        replica.log().segment_base_offsets().len() > 1,
        "the test spans segments"
    );

    let bad = replica.write(Bytes::from_static(b"junk"), Acks::All).await;
    assert!(matches!(bad, Err(ReplicaError::InvalidBatch(_))), "{bad:?}");

    replica.shutdown().await.expect("shutdown");
    assert!(registry.group_ids().is_empty());
    assert!(
        dir.path().join("sm-state").exists(),
        "a checkpoint was taken"
    );

    let replica = start_leading(spec, &registry).await;
    // The restart resumed from a checkpoint behind `next`: until the leader has applied
    // the rest, it must not vouch for a high watermark that went backward.
    let settled = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match replica.settled_high_watermark() {
                Ok(hw) => return hw,
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    })
    .await
    .expect("the leader settles");
    assert_eq!(settled, next, "latest offset after restart");
    wait_hw(&replica, next, Duration::from_secs(5)).await;
    let after = read_all(replica.log(), next);
    assert!(same_bytes(&before, &after), "data intact after restart");

    let w = replica
        .write(batch(100, 3), Acks::All)
        .await
        .expect("write after restart");
    assert_eq!(w.base_offset, Some(next));
    assert_eq!(w.high_watermark, next + 3);
    replica.shutdown().await.expect("shutdown");
    eprintln!("single node test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_leader_and_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = GroupRegistry::new();
    let members = BTreeMap::from([(5, BasicNode::new("127.0.0.1:1"))]);
    let spec = ReplicaSpec::new(3, 5, dir.path(), members).tuning(fast_tuning());
    let replica = start_leading(spec, &registry).await;

    let mut next = 0;
    for i in 0..20u64 {
        let w = replica
            .write(batch(i, 2), Acks::Leader)
            .await
            .expect("acks=leader");
        assert_eq!(w.base_offset, Some(next));
        next += 2;
    }
    let delivered = replica.acks.delivered.load(Ordering::Relaxed);
    assert!(
        delivered > 0,
        "acks=leader answered from the leader's fsync, not only from commit"
    );
    for i in 0..10u64 {
        let w = replica
            .write(batch(100 + i, 1), Acks::None)
            .await
            .expect("acks=none");
        assert_eq!(w.base_offset, None);
    }
    next += 10;
    wait_hw(&replica, next, Duration::from_secs(5)).await;
    read_all(replica.log(), next);
    replica.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_hook_sees_every_batch_in_order_even_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = GroupRegistry::new();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let hook_seen = seen.clone();
    let hook: ApplyHook = Arc::new(move |base, _batch: &Bytes| {
        hook_seen.lock().expect("lock").push(base);
    });
    let members = BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]);
    let spec = ReplicaSpec::new(0, 1, dir.path(), members)
        .tuning(fast_tuning())
        .hook(hook);
    let replica = start_leading(spec.clone(), &registry).await;
    for i in 0..5 {
        replica.write(batch(i, 2), Acks::All).await.expect("write");
    }
    assert_eq!(*seen.lock().expect("lock"), vec![0, 2, 4, 6, 8]);
    replica.shutdown().await.expect("shutdown");

    seen.lock().expect("lock").clear();
    let replica = Replica::start(spec, &registry, &Network::default())
        .await
        .expect("restart");
    wait_hw(&replica, 10, Duration::from_secs(5)).await;
    assert_eq!(*seen.lock().expect("lock"), vec![0, 2, 4, 6, 8]);
    replica.shutdown().await.expect("shutdown");
}

/// A broker's Raft transport on a loopback port.
struct Server {
    addr: SocketAddr,
    registry: GroupRegistry,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let registry = GroupRegistry::new();
        let service = RaftService::new(registry.clone()).into_server();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("raft server stopped: {e}");
            }
        });
        Self {
            addr,
            registry,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// Three Raft transports on loopback, the membership naming them (ids 1 to 3), and a
/// data directory for each.
async fn three_nodes() -> (Vec<Server>, BTreeMap<NodeId, BasicNode>, Vec<TempDir>) {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Server::start().await);
    }
    let members = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u64 + 1, BasicNode::new(s.addr.to_string())))
        .collect();
    let dirs = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    (servers, members, dirs)
}

async fn wait_for_new_leader(replicas: &[&Replica], old: NodeId, within: Duration) -> NodeId {
    let deadline = Instant::now() + within;
    loop {
        let leaders: Vec<Option<NodeId>> = replicas.iter().map(|r| r.leader()).collect();
        if let Some(Some(l)) = leaders.first()
            && *l != old
            && leaders.iter().all(|x| *x == Some(*l))
            && let Some(leader) = replicas.iter().find(|r| r.node_id() == *l && r.is_leader())
        {
            // And its lease is established, so it takes writes.
            let left = deadline.saturating_duration_since(Instant::now());
            let id = leader.wait_for_leader(left).await.expect("writable leader");
            assert_eq!(id, *l);
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader in time: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts group `group_id` with a replica on each server and waits for its leader.
async fn start_group_on(
    servers: &[Server],
    group_id: u64,
    members: &BTreeMap<NodeId, BasicNode>,
    dirs: &[TempDir],
) -> (Vec<Replica>, NodeId) {
    let mut replicas = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let spec = ReplicaSpec::new(group_id, i as u64 + 1, dirs[i].path(), members.clone())
            .log_config(small_log())
            .tuning(fast_tuning());
        let replica = Replica::start(spec, &server.registry, &Network::default())
            .await
            .expect("start");
        replicas.push(replica);
    }
    let all: Vec<&Replica> = replicas.iter().collect();
    let leader = wait_for_new_leader(&all, u64::MAX, Duration::from_secs(5)).await;
    (replicas, leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_over_grpc_replicate_and_fail_over() {
    let started = Instant::now();
    let (mut servers, members, dirs) = three_nodes().await;
    let mut replicas = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let spec = ReplicaSpec::new(11, i as u64 + 1, dirs[i].path(), members.clone())
            .log_config(small_log())
            .tuning(fast_tuning());
        let network = Network::default();
        replicas.push(Some(
            Replica::start(spec, &server.registry, &network)
                .await
                .expect("start"),
        ));
    }
    let live = |rs: &Vec<Option<Replica>>| -> Vec<usize> {
        (0..rs.len()).filter(|&i| rs[i].is_some()).collect()
    };

    let first = replicas[0]
        .as_ref()
        .expect("replica")
        .wait_for_leader(Duration::from_secs(5))
        .await
        .expect("leader");
    let all: Vec<&Replica> = replicas.iter().flatten().collect();
    let leader = wait_for_new_leader(&all, u64::MAX, Duration::from_secs(5)).await;
    assert_eq!(leader, first);
    let li = leader as usize - 1;

    // A follower refuses writes and names the leader.
    let follower = replicas[(li + 1) % 3].as_ref().expect("replica");
    match follower.write(batch(0, 1), Acks::All).await {
        Err(ReplicaError::NotLeader {
            leader: Some((id, addr)),
        }) => {
            assert_eq!(id, leader);
            assert_eq!(addr, servers[li].addr.to_string());
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }

    let mut next = 0u64;
    for i in 0..30u64 {
        let records = i % 3 + 1;
        let w = replicas[li]
            .as_ref()
            .expect("leader replica")
            .write(batch(i, records), Acks::All)
            .await
            .expect("write");
        assert_eq!(w.base_offset, Some(next));
        next += records;
    }
    for i in live(&replicas) {
        wait_hw(
            replicas[i].as_ref().expect("replica"),
            next,
            Duration::from_secs(5),
        )
        .await;
    }
    let reference = read_all(replicas[0].as_ref().expect("replica").log(), next);
    for (i, r) in replicas.iter().enumerate().skip(1) {
        let other = read_all(r.as_ref().expect("replica").log(), next);
        assert!(same_bytes(&reference, &other), "replica {i} differs");
    }

    // The leader goes away; the other two elect a new one and carry on.
    let old = replicas[li].take().expect("leader replica");
    old.shutdown().await.expect("leader shutdown");
    let old_server = servers.remove(li);
    old_server.stop().await;
    let rest: Vec<&Replica> = replicas.iter().flatten().collect();
    let leader = wait_for_new_leader(&rest, leader, Duration::from_secs(5)).await;
    let new_leader = rest
        .iter()
        .find(|r| r.node_id() == leader)
        .expect("new leader replica");
    for i in 0..10u64 {
        let w = new_leader
            .write(batch(1000 + i, 2), Acks::All)
            .await
            .expect("write after failover");
        assert_eq!(w.base_offset, Some(next));
        next += 2;
    }
    for r in &rest {
        wait_hw(r, next, Duration::from_secs(5)).await;
    }
    let a = read_all(rest[0].log(), next);
    let b = read_all(rest[1].log(), next);
    assert!(same_bytes(&a, &b), "survivors agree byte for byte");
    assert!(same_bytes(&reference, &a[..reference.len()]));

    for r in replicas.into_iter().flatten() {
        r.shutdown().await.expect("shutdown");
    }
    for s in servers {
        s.stop().await;
    }
    eprintln!("three replica test took {:?}", started.elapsed());
}

/// openraft's own timers are off (see `raft::pulse`): a group nobody writes to sends
/// no heartbeats and holds no elections, yet its leader takes the next write at once,
/// renewing the lease that ran out meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_group_stays_quiet_and_its_leader_takes_the_next_write() {
    let (servers, members, dirs) = three_nodes().await;
    let (replicas, id) = start_group_on(&servers, 32, &members, &dirs).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    let leader = all[id as usize - 1];
    let term = leader.term();
    let w = leader.write(batch(1, 1), Acks::All).await.expect("write");
    assert_eq!(w.base_offset, Some(0));

    let quiet = fast_tuning().election_timeout_max * 2;
    tokio::time::sleep(quiet).await;
    let acked = leader
        .raft()
        .metrics()
        .borrow_watched()
        .last_quorum_acked
        .map(|t| t.elapsed());
    assert!(
        acked.is_some_and(|a| a >= quiet / 2),
        "followers were still heartbeaten while idle: last acknowledged {acked:?} ago"
    );
    for r in &all {
        assert_eq!(r.leader(), Some(id), "an election happened while idle");
        assert_eq!(r.term(), term);
    }

    let w = leader
        .write(batch(2, 1), Acks::All)
        .await
        .expect("first write after a quiet spell");
    assert_eq!(w.base_offset, Some(1));
    for r in &all {
        wait_hw(r, 2, Duration::from_secs(5)).await;
    }
    for r in replicas {
        r.shutdown().await.expect("shutdown");
    }
    for s in servers {
        s.stop().await;
    }
}

/// A leader cut off from both followers still believes it leads for a while (openraft
/// steps down only when it hears of a higher term); reads of what it keeps in memory
/// must not be served then, since the followers may elect another and take writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_cannot_confirm_its_leadership() {
    let (mut servers, members, dirs) = three_nodes().await;
    let (replicas, leader) = start_group_on(&servers, 31, &members, &dirs).await;
    let li = leader as usize - 1;
    replicas[li]
        .confirm_leadership()
        .await
        .expect("a leader with its quorum confirms");

    // The followers' transports go away: nothing reaches them any more.
    let leader_server = servers.remove(li);
    for s in servers {
        s.stop().await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match replicas[li].confirm_leadership().await {
            Err(ReplicaError::NotLeader { .. }) => break,
            Err(e) => panic!("expected NotLeader, got {e}"),
            Ok(()) => {
                assert!(
                    Instant::now() < deadline,
                    "a leader cut off for 10 s still confirms its leadership"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    for r in replicas {
        r.shutdown().await.expect("shutdown");
    }
    leader_server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_follower_catches_up_from_a_snapshot_after_the_leader_purged() {
    let started = Instant::now();
    let (servers, members, dirs) = three_nodes().await;
    let spec = |i: usize| {
        ReplicaSpec::new(21, i as u64 + 1, dirs[i].path(), members.clone())
            .log_config(small_log())
            .tuning(fast_tuning())
    };
    // Nodes 1 and 2 form a quorum of the three voters; node 3 is not there yet.
    let network = Network::default();
    let r1 = Replica::start(spec(0), &servers[0].registry, &network)
        .await
        .expect("start 1");
    let r2 = Replica::start(spec(1), &servers[1].registry, &Network::default())
        .await
        .expect("start 2");
    let leader_id = wait_for_new_leader(&[&r1, &r2], u64::MAX, Duration::from_secs(5)).await;
    let (leader, other) = if leader_id == 1 {
        (&r1, &r2)
    } else {
        (&r2, &r1)
    };
    let mut next = 0;
    for i in 0..40u64 {
        leader.write(batch(i, 2), Acks::All).await.expect("write");
        next += 2;
    }

    // Retention's part, done by hand: snapshot, then purge the log up to it.
    leader.raft().trigger().snapshot().await.expect("snapshot");
    let m = leader
        .raft()
        .wait(Some(Duration::from_secs(5)))
        .metrics(|m| m.snapshot.is_some(), "snapshot built")
        .await
        .expect("snapshot built");
    let snap = m.snapshot.expect("snapshot id");
    leader
        .raft()
        .trigger()
        .purge_log(snap.index)
        .await
        .expect("purge");
    leader
        .raft()
        .wait(Some(Duration::from_secs(5)))
        .purged(Some(snap), "purged")
        .await
        .expect("purged");
    let leader_start = leader.log().start_offset();
    assert!(leader_start > 0, "whole segments were deleted");

    // Node 3 arrives with an empty log: the entries it needs are gone, so it gets the
    // snapshot, resets its log to start after it, and replicates from there.
    let r3 = Replica::start(spec(2), &servers[2].registry, &Network::default())
        .await
        .expect("start 3");
    wait_hw(&r3, next, Duration::from_secs(5)).await;
    let start3 = r3.log().start_offset();
    assert!(start3 > 0 && start3 <= next, "node 3 starts at {start3}");

    for i in 0..5u64 {
        let w = leader
            .write(batch(100 + i, 1), Acks::All)
            .await
            .expect("write after catch-up");
        assert_eq!(w.base_offset, Some(next));
        next += 1;
    }
    for r in [leader, other, &r3] {
        wait_hw(r, next, Duration::from_secs(5)).await;
    }
    let from_leader = leader.log().read(start3, usize::MAX, next).expect("read");
    let from_3 = r3.log().read(start3, usize::MAX, next).expect("read");
    assert_eq!(from_3.next_offset, next);
    assert!(
        same_bytes(&from_leader.batches, &from_3.batches),
        "node 3 holds the leader's batches from its start offset"
    );

    // Node 3 restarts: its state (snapshot + log after it) is intact.
    r3.shutdown().await.expect("shutdown 3");
    let r3 = Replica::start(spec(2), &servers[2].registry, &Network::default())
        .await
        .expect("restart 3");
    wait_hw(&r3, next, Duration::from_secs(5)).await;
    assert_eq!(r3.log().start_offset(), start3);

    for r in [r1, r2, r3] {
        r.shutdown().await.expect("shutdown");
    }
    for s in servers {
        s.stop().await;
    }
    eprintln!("snapshot catch-up test took {:?}", started.elapsed());
}

#[test]
fn a_storage_failure_keeps_its_type_through_openraft() {
    use openraft::errors::Fatal;
    use openraft::type_config::TypeConfigExt;

    let failure = StorageFailure::default();
    let io = failure.record(crate::log::LogError::DiskFull {
        path: "/data/p0".into(),
    });
    let fatal = Fatal::StorageError(StorageError::write_logs(TypeConfig::err_from_error(&io)));
    let err = fatal_error(fatal, &failure);
    assert!(err.is_disk_full(), "{err:?}");
    assert!(matches!(
        fatal_error(Fatal::Stopped, &failure),
        ReplicaError::Shutdown
    ));
    let none = StorageFailure::default();
    let fatal = Fatal::StorageError(StorageError::write_logs(TypeConfig::err_from_string("x")));
    assert!(matches!(fatal_error(fatal, &none), ReplicaError::Fatal(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_writes_keep_their_order_while_acks_overlap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = GroupRegistry::new();
    let members = BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]);
    let spec = ReplicaSpec::new(9, 1, dir.path(), members).tuning(fast_tuning());
    let replica = start_leading(spec, &registry).await;
    let mut pending = Vec::new();
    for i in 0..200u64 {
        pending.push(
            replica
                .submit(batch(i, 2), Acks::All)
                .await
                .expect("submit"),
        );
    }
    let acks = futures::future::join_all(pending.into_iter().map(|p| replica.complete(p))).await;
    for (i, w) in acks.into_iter().enumerate() {
        assert_eq!(
            w.expect("acked").base_offset,
            Some(2 * i as u64),
            "submission order is log order"
        );
    }
    replica.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_snapshots_then_purges_and_the_replica_restarts_from_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = GroupRegistry::new();
    let members = BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]);
    let spec = ReplicaSpec::new(11, 1, dir.path(), members)
        .log_config(LogConfig {
            segment_bytes: 4 << 10,
            retention: RetentionPolicy {
                max_bytes: Some(16 << 10),
                max_age: None,
            },
            ..small_log()
        })
        .tuning(fast_tuning());
    let replica = start_leading(spec.clone(), &registry).await;
    for i in 0..300u64 {
        replica.write(batch(i, 2), Acks::All).await.expect("write");
    }
    assert_eq!(replica.log().start_offset(), 0);
    assert!(
        replica
            .enforce_retention(crate::log::now_ms())
            .await
            .expect("retention")
    );
    let start = replica.log().start_offset();
    assert!(start > 0, "old segments went");
    assert!(
        replica.log().size() < 24 << 10,
        "kept about retention.bytes: {}",
        replica.log().size()
    );
    assert!(matches!(
        replica.log().read(0, 1, 600),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    replica.shutdown().await.expect("shutdown");

    let replica = start_leading(spec, &registry).await;
    wait_hw(&replica, 600, Duration::from_secs(5)).await;
    assert_eq!(replica.log().start_offset(), start);
    let w = replica
        .write(batch(300, 1), Acks::All)
        .await
        .expect("write after restart");
    assert_eq!(w.base_offset, Some(600));
    let read = replica
        .log()
        .read(start, usize::MAX, 601)
        .expect("read from start");
    assert_eq!(read.next_offset, 601);
    replica.shutdown().await.expect("shutdown");
}

#[test]
fn the_preferred_leader_forms_a_new_group_first_then_the_rest_by_id() {
    let members: BTreeMap<NodeId, BasicNode> = [3, 1, 2]
        .into_iter()
        .map(|id| (id, BasicNode::new(format!("127.0.0.1:{id}"))))
        .collect();
    assert_eq!(init_order(&members, None), [1, 2, 3]);
    assert_eq!(init_order(&members, Some(2)), [2, 1, 3]);
    // A preferred leader that is not a member changes nothing.
    assert_eq!(init_order(&members, Some(9)), [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_log_lost_committed_entries_still_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = GroupRegistry::new();
    let network = Network::default();
    let members = BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]);
    let spec = ReplicaSpec::new(9, 1, dir.path(), members).tuning(fast_tuning());
    let replica = start_leading(spec.clone(), &registry).await;
    for i in 0..10 {
        replica.write(batch(i, 1), Acks::All).await.expect("write");
    }
    let last = replica.log().last_id().expect("entries");
    replica.shutdown().await.expect("shutdown");
    assert!(
        !dir.path().join("sm-state").exists(),
        "no checkpoint: the state machine re-applies from the committed id"
    );

    // A damaged disk: the last frame is torn, though the saved committed id covers it.
    let segment = dir.path().join("log").join("00000000000000000000.log");
    let len = std::fs::metadata(&segment).expect("segment").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|f| f.set_len(len - 10))
        .expect("tear the last frame");

    let replica = Replica::start(spec, &registry, &network)
        .await
        .expect("starts from what the log kept");
    assert_eq!(
        replica.log().last_id().map(|id| id.index),
        Some(last.index - 1)
    );
    replica
        .wait_for_leader(Duration::from_secs(5))
        .await
        .expect("leader again");
    let w = replica
        .write(batch(10, 1), Acks::All)
        .await
        .expect("write after the damage");
    assert_eq!(w.base_offset, Some(9), "offsets continue from what is left");
    replica.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn appended_entries_are_read_from_memory_until_applied() {
    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::{EntryPayload, RaftLogReader};
    use std::os::unix::fs::FileExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(Log::open(dir.path().join("log"), small_log()).expect("open log"));
    let meta = Arc::new(MetaStore::open(dir.path().join("raft-meta")).expect("meta"));
    let recent = Arc::new(RecentEntries::new(Arc::new(EntryBudget::new(1 << 20))));
    let mut store = LogStore::new(
        log,
        meta,
        recent.clone(),
        Arc::new(LeaderAcks::default()),
        Arc::new(StorageFailure::default()),
        1 << 20,
    );
    let batches: Vec<Bytes> = (0..3).map(|i| batch(i, 4)).collect();
    let entries = batches.iter().enumerate().map(|(i, b)| types::Entry {
        log_id: types::log_id(1, i as u64),
        payload: EntryPayload::Normal(types::RecordBatch(b.clone())),
    });
    store
        .append(entries, IOFlushed::noop())
        .await
        .expect("append");

    // Damage the first frame's payload on disk (the mapping sees the write).
    let segment = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("log").join(format!("{:020}.log", 0)))
        .expect("open segment");
    segment.write_at(&[0xff; 8], 60).expect("damage");

    let mut reader = store.get_log_reader().await;
    let held = reader.try_get_log_entries(0..3).await.expect("from memory");
    let payloads: Vec<Bytes> = held
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(b) => b.0.clone(),
            other => panic!("unexpected payload {other:?}"),
        })
        .collect();
    assert_eq!(payloads, batches);

    // Applied entries leave memory: the log serves them, and its CRC check finds the
    // damage rather than handing it out.
    recent.release_through(2);
    assert!(reader.try_get_log_entries(0..3).await.is_err());
}
