//! A shard over a real single-node replica: writes, reloads and compaction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::group::TopicPartition;
use crate::group::membership::GroupState;
use crate::group::records::offset;
use crate::log::{LogConfig, RetentionPolicy};
use crate::metadata::TopicConfig;
use crate::raft::{BasicNode, GroupRegistry, Network, RaftTuning, Replica, ReplicaSpec};

async fn partition(dir: &std::path::Path, registry: &GroupRegistry) -> Arc<Partition> {
    let members = BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]);
    let log = LogConfig {
        segment_bytes: 8 << 10,
        segment_age: None,
        index_interval_bytes: 256,
        retention: RetentionPolicy::default(),
    };
    let spec = ReplicaSpec::new(9, 1, dir, members)
        .log_config(log.clone())
        .tuning(RaftTuning {
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            ..RaftTuning::default()
        });
    let replica = Replica::start(spec, registry, &Network::default())
        .await
        .expect("start replica");
    replica
        .wait_for_leader(Duration::from_secs(5))
        .await
        .expect("leader");
    let mut config = TopicConfig::parse(&BTreeMap::new()).expect("config");
    config.log = log;
    Arc::new(Partition {
        topic: crate::group::OFFSETS_TOPIC.into(),
        partition: 0,
        group_id: 9,
        replicas: vec![1],
        config,
        replica,
    })
}

/// Commits the way the coordinator does: apply, queue the records, wait for them.
async fn commit_all(shard: &Shard, records: Vec<GroupRecord>) {
    shard
        .update(|loaded| {
            for r in &records {
                if let GroupRecord::Offset {
                    group,
                    topic,
                    partition,
                    committed,
                } = r
                {
                    let tp = TopicPartition::new(topic.clone(), *partition);
                    loaded.offsets.commit(group, tp, committed.clone());
                }
            }
            Ok(((), records))
        })
        .await
        .expect("commit");
}

async fn offsets(shard: &Shard) -> OffsetStore {
    shard
        .update(|loaded| Ok((loaded.offsets.clone(), Vec::new())))
        .await
        .expect("read offsets")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_reload_and_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = GroupRegistry::default();
    let p = partition(dir.path(), &registry).await;
    let shard = Shard::new(p.clone());
    commit_all(&shard, vec![offset("a", 0, 5), offset("b", 1, 9)]).await;
    commit_all(&shard, vec![offset("a", 0, 7)]).await;
    let state = GroupState {
        id: "a".into(),
        epoch: 3,
        ..GroupState::default()
    };
    shard
        .update(|_| Ok(((), vec![GroupRecord::Group(state)])))
        .await
        .expect("write group");
    let before = offsets(&shard).await;

    shard.unload().await;
    let reloaded = offsets(&shard).await;
    assert_eq!(reloaded, before);
    let mut guard = shard.lock().await.expect("lock");
    let loaded = guard.state().expect("loaded");
    assert_eq!(loaded.groups["a"].state().epoch, 3, "group state replayed");
    drop(guard);

    p.replica.shutdown().await.expect("stop");
    let p = partition(dir.path(), &registry).await;
    let restarted = offsets(&Shard::new(p.clone())).await;
    assert_eq!(restarted, before);
    let a = restarted.group("a").expect("group a");
    assert_eq!(a[&TopicPartition::new("t", 0)].offset, 7);
    p.replica.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_writes_and_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = GroupRegistry::default();
    let p = partition(dir.path(), &registry).await;
    let shard = Arc::new(Shard::new(p.clone()));
    let writers: Vec<_> = (0..50u32)
        .map(|i| {
            let shard = shard.clone();
            tokio::spawn(
                async move { commit_all(&shard, vec![offset("g", i, u64::from(i))]).await },
            )
        })
        .collect();
    for w in writers {
        w.await.expect("commit task");
    }
    let entries = p.replica.log().last_id().expect("entries").index;
    assert!(
        entries < 50,
        "50 commits took {entries} log entries: they were not grouped"
    );
    shard.unload().await;
    let after = offsets(&shard).await;
    assert_eq!(after.len(), 50, "every commit is in the log");
    p.replica.shutdown().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_purges_the_log_and_keeps_every_live_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = GroupRegistry::default();
    let p = partition(dir.path(), &registry).await;
    let shard = Shard::new(p.clone());
    // 3000 commits over 10 live offsets: far more stale records than live ones.
    for round in 0..300u64 {
        let records = (0..10)
            .map(|i| offset("g", i, round * 10 + i as u64))
            .collect();
        commit_all(&shard, records).await;
    }
    assert_eq!(p.replica.log().start_offset(), 0);
    let before = offsets(&shard).await;
    assert_eq!(before.len(), 10);

    assert!(shard.compact().await.expect("compact"), "enough is stale");
    let start = p.replica.log().start_offset();
    assert!(
        start > 2000,
        "log purged up to near the checkpoint, starts at {start}"
    );
    assert!(
        !shard.compact().await.expect("compact again"),
        "nothing stale now"
    );

    // A new leader (here: a reload) sees exactly the same offsets from the cut log.
    shard.unload().await;
    assert_eq!(offsets(&shard).await, before);
    p.replica.shutdown().await.expect("stop");
    let p = partition(dir.path(), &registry).await;
    assert_eq!(offsets(&Shard::new(p.clone())).await, before);
    p.replica.shutdown().await.expect("stop");
}
