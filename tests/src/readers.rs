//! The read side of a fault test: consumers in one group reading every partition and
//! committing (the client's auto-commit and its commit before a revocation, plus a
//! synchronous commit every second whose outcome is counted) while faults happen, and
//! a watcher sampling the group's committed offsets from its coordinator.
//!
//! Owns the consumers and the [`CommitHistory`]. It judges nothing (see
//! [`crate::checker::check_commits`]) and never retries on its own: a failed fetch,
//! commit or offset lookup is counted and the loop goes on, since riding out faults
//! is the client library's job and what is under test.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_client::{Admin, Connection, Consumer, ConsumerConfig, OffsetReset};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::workload::{client_config, error_kind};

/// Members of the group.
const MEMBERS: usize = 2;
/// How often the members commit what they read.
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);
/// How often the members also commit synchronously, counting the outcome.
const SYNC_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the watcher asks for the committed offsets.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait for one offset lookup, and for a member to leave at the end.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// What the group did, as the watcher and the members saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitHistory {
    /// Per partition, the committed offsets the coordinator reported, in the order
    /// the watcher asked (a partition without a commit yet is left out).
    pub samples: BTreeMap<u32, Vec<u64>>,
    /// Records the members were handed.
    pub read: u64,
    /// Offset lookups that failed (coordinator moving, broker down).
    pub lookup_errors: u64,
    /// Errors the members' `recv` returned.
    pub read_errors: u64,
    /// Synchronous commits the coordinator acknowledged.
    pub commits: u64,
    /// Synchronous commits that failed, by error.
    pub commit_errors: BTreeMap<String, usize>,
}

#[derive(Default)]
struct Counters {
    read: AtomicU64,
    lookup_errors: AtomicU64,
    read_errors: AtomicU64,
    commits: AtomicU64,
    commit_errors: Mutex<BTreeMap<String, usize>>,
}

impl Counters {
    fn commit_failed(&self, kind: String) {
        *self
            .commit_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
}

/// Group members and the watcher, running until [`Readers::stop`].
pub struct Readers {
    stop_members: watch::Sender<bool>,
    stop_watcher: watch::Sender<bool>,
    members: Vec<JoinHandle<()>>,
    watcher: JoinHandle<()>,
    samples: Arc<Mutex<BTreeMap<u32, Vec<u64>>>>,
    counters: Arc<Counters>,
}

impl Readers {
    /// Starts [`MEMBERS`] consumers in `group` subscribed to `topic`, reading from the
    /// earliest offset, and the watcher.
    pub async fn start(bootstrap: Vec<String>, topic: &str, group: &str) -> Result<Self, String> {
        let (stop_members, members_stopped) = watch::channel(false);
        let (stop_watcher, watcher_stopped) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let samples: Arc<Mutex<BTreeMap<u32, Vec<u64>>>> = Arc::default();
        let mut members = Vec::new();
        for id in 0..MEMBERS {
            let conn = connect(&bootstrap, &format!("group member {id}")).await?;
            let config = ConsumerConfig {
                auto_offset_reset: OffsetReset::Earliest,
                enable_auto_commit: true,
                auto_commit_interval: COMMIT_INTERVAL,
                client_id: format!("{group}-{id}"),
                ..ConsumerConfig::default()
            };
            let mut consumer =
                Consumer::new(conn, config).map_err(|e| format!("group member {id}: {e}"))?;
            consumer
                .subscribe(group, [topic])
                .map_err(|e| format!("group member {id} cannot subscribe: {e}"))?;
            members.push(tokio::spawn(read(
                consumer,
                members_stopped.clone(),
                counters.clone(),
            )));
        }
        let admin = Admin::new(connect(&bootstrap, "offset watcher").await?);
        let watcher = tokio::spawn(watch_offsets(
            admin,
            group.to_string(),
            watcher_stopped,
            samples.clone(),
            counters.clone(),
        ));
        Ok(Self {
            stop_members,
            stop_watcher,
            members,
            watcher,
            samples,
            counters,
        })
    }

    /// Records read so far.
    pub fn read(&self) -> u64 {
        self.counters.read.load(Ordering::Relaxed)
    }

    /// Stops the members (each commits and leaves), then the watcher, whose last
    /// sample so includes the final commits.
    pub async fn stop(self) -> CommitHistory {
        let _ = self.stop_members.send(true);
        for t in self.members {
            // A task that panicked recorded what it could; the checker judges.
            let _ = t.await;
        }
        tokio::time::sleep(SAMPLE_INTERVAL * 2).await;
        let _ = self.stop_watcher.send(true);
        let _ = self.watcher.await;
        let samples = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()));
        CommitHistory {
            samples,
            read: self.counters.read.load(Ordering::Relaxed),
            lookup_errors: self.counters.lookup_errors.load(Ordering::Relaxed),
            read_errors: self.counters.read_errors.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
            commit_errors: self
                .counters
                .commit_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

async fn connect(bootstrap: &[String], who: &str) -> Result<Connection, String> {
    Connection::connect(client_config(bootstrap.to_vec()))
        .await
        .map_err(|e| format!("{who} cannot connect: {e}"))
}

/// One member's loop: read (auto-commit commits along), and commit synchronously
/// every [`SYNC_COMMIT_INTERVAL`], until told to stop.
async fn read(mut consumer: Consumer, mut stop: watch::Receiver<bool>, counters: Arc<Counters>) {
    let mut sync_commit = tokio::time::interval(SYNC_COMMIT_INTERVAL);
    sync_commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tokio::select! {
            next = consumer.recv() => match next {
                Some(Ok(_)) => {
                    counters.read.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(_)) => {
                    counters.read_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(COMMIT_INTERVAL).await;
                }
                None => break,
            },
            _ = sync_commit.tick() => {
                match tokio::time::timeout(CALL_TIMEOUT, consumer.commit()).await {
                    Ok(Ok(())) => {
                        counters.commits.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => counters.commit_failed(error_kind(&e)),
                    Err(_) => counters.commit_failed("no answer".into()),
                }
            }
            _ = stop.changed() => {}
        }
    }
    let _ = tokio::time::timeout(CALL_TIMEOUT, consumer.close()).await;
}

/// Samples the group's committed offsets until told to stop.
async fn watch_offsets(
    admin: Admin,
    group: String,
    mut stop: watch::Receiver<bool>,
    samples: Arc<Mutex<BTreeMap<u32, Vec<u64>>>>,
    counters: Arc<Counters>,
) {
    while !*stop.borrow() {
        match tokio::time::timeout(CALL_TIMEOUT, admin.group_offsets(&group)).await {
            Ok(Ok(offsets)) => {
                let mut samples = samples.lock().unwrap_or_else(|p| p.into_inner());
                for (tp, o) in offsets {
                    samples.entry(tp.partition).or_default().push(o.offset);
                }
            }
            Ok(Err(_)) | Err(_) => {
                counters.lookup_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_INTERVAL) => {}
            _ = stop.changed() => {}
        }
    }
}
