//! A replica whose log lost a damaged tail at start stays out of elections until a
//! leader has brought it back up to date.
//!
//! Recovery cuts a torn or garbled tail, and that tail may have held entries this
//! replica had acknowledged, as part of the quorum that committed them. Were it to
//! vote at once, it could elect a peer that lags behind and lacks those entries too,
//! and the group would lose committed records (the fault suite's torn-tail scenario
//! did: a follower then held a committed entry the new leader did not). So it
//! neither campaigns nor grants votes until it has applied, from the current term, an
//! entry at or past the first commit index a leader sent it: its log then holds
//! everything committed before. If no leader shows up for [`LEADERLESS_GRACE`] (every
//! replica was damaged, as after a power loss), it votes again.
//!
//! It decides nothing else: appends, reads and replication go on as usual.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;

use super::RaftHandle;
use super::types::LogId;

/// How long a damaged replica waits for a leader before it votes again anyway.
pub const LEADERLESS_GRACE: Duration = Duration::from_secs(5);

/// Whether a replica abstains, and what it waits for.
#[derive(Debug, Default)]
pub struct Abstention {
    /// The first leader commit index heard plus one (0: none heard yet).
    target: AtomicU64,
    over: AtomicBool,
}

impl Abstention {
    /// Whether the replica must still refuse votes.
    pub fn active(&self) -> bool {
        !self.over.load(Ordering::Acquire)
    }

    /// Notes the commit index an accepted AppendEntries carried; the first one heard
    /// is the point the replica must reach (a later one would move on under load).
    pub fn heard_commit(&self, leader_commit: Option<LogId>) {
        let next = leader_commit.map_or(0, |c| c.index + 1);
        let _ = self
            .target
            .compare_exchange(0, next.max(1), Ordering::AcqRel, Ordering::Acquire);
    }

    /// Caught up: applied an entry of the current term at or past the target.
    fn caught_up(&self, applied: Option<LogId>, current_term: u64) -> bool {
        let target = self.target.load(Ordering::Acquire);
        target > 0
            && applied.is_some_and(|a| a.index + 1 >= target && a.leader_id.term == current_term)
    }
}

/// Ends the abstention once `raft` has caught up (or found no leader for
/// [`LEADERLESS_GRACE`]). Meanwhile the pulse does not stand it for election and the
/// RPC server refuses votes on its behalf.
pub fn until_caught_up(raft: RaftHandle, abstention: Arc<Abstention>, group_id: u64) {
    tokio::spawn(async move {
        let mut metrics = raft.metrics();
        let mut leaderless_since = Some(Instant::now());
        loop {
            let (caught_up, leaderless) = {
                let m = metrics.borrow_and_update();
                match m.current_leader {
                    Some(_) => leaderless_since = None,
                    None => {
                        leaderless_since.get_or_insert_with(Instant::now);
                    }
                }
                (
                    abstention.caught_up(m.last_applied, m.current_term),
                    leaderless_since.is_some_and(|t| t.elapsed() >= LEADERLESS_GRACE),
                )
            };
            if caught_up || leaderless {
                abstention.over.store(true, Ordering::Release);
                if caught_up {
                    tracing::info!(group_id, "caught up after a damaged log tail: votes again");
                } else {
                    tracing::warn!(
                        group_id,
                        "no leader for {LEADERLESS_GRACE:?} after a damaged log tail: votes again"
                    );
                }
                return;
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::log_id;

    #[test]
    fn caught_up_needs_a_leader_commit_and_an_applied_entry_of_the_current_term() {
        let a = Abstention::default();
        assert!(a.active());
        assert!(!a.caught_up(Some(log_id(2, 50)), 2), "no leader heard yet");
        a.heard_commit(Some(log_id(1, 30)));
        a.heard_commit(Some(log_id(2, 90)));
        assert!(
            !a.caught_up(Some(log_id(2, 29)), 2),
            "before the first commit heard"
        );
        assert!(
            !a.caught_up(Some(log_id(1, 40)), 2),
            "an entry of an older term"
        );
        assert!(a.caught_up(Some(log_id(2, 30)), 2));
    }
}
