//! Group commit: one `fdatasync` makes every append written before it durable.
//!
//! Each append gets a ticket (bytes ever appended by this process, so tickets only
//! grow). A caller that needs its append durable waits for its ticket. Waiters queue
//! on one async lock; whoever holds it syncs everything written so far, and the
//! waiters queued behind find their tickets covered and return without a syscall. No
//! background task, and the more appenders wait, the more each fsync covers.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Position in the stream of appended bytes; durable once a sync has covered it.
pub type Ticket = u64;

#[derive(Debug, Default)]
pub struct GroupCommit {
    durable: AtomicU64,
    failed: AtomicBool,
    sync_lock: tokio::sync::Mutex<()>,
}

/// What a sync covers: everything written up to `target`, all in `files` (the
/// segment sealed last, if it may be unsynced, then the active one).
pub struct SyncPlan {
    pub target: Ticket,
    pub files: Vec<Arc<File>>,
}

impl GroupCommit {
    pub fn is_durable(&self, ticket: Ticket) -> bool {
        self.durable.load(Ordering::Acquire) >= ticket
    }

    /// After a failed fsync the page cache may hold bytes that never reach the disk;
    /// nothing more may be acknowledged until the log is reopened and recovered.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Records that everything up to `ticket` is durable by other means (a segment
    /// sealed with its own fsync, a truncation).
    pub fn mark_durable(&self, ticket: Ticket) {
        self.durable.fetch_max(ticket, Ordering::AcqRel);
    }

    /// Waits until `ticket` is durable, syncing if nobody else is.
    /// `plan` is asked, under the caller's lock, what the next sync should cover.
    pub async fn wait(
        &self,
        ticket: Ticket,
        plan: impl FnOnce() -> SyncPlan,
    ) -> std::io::Result<()> {
        if self.is_durable(ticket) {
            return Ok(());
        }
        let _turn = self.sync_lock.lock().await;
        if self.has_failed() {
            return Err(std::io::Error::other("an earlier fsync of this log failed"));
        }
        if self.is_durable(ticket) {
            return Ok(());
        }
        let SyncPlan { target, files } = plan();
        let synced =
            tokio::task::spawn_blocking(move || files.iter().try_for_each(|f| f.sync_data()))
                .await
                .unwrap_or_else(|join| Err(std::io::Error::other(join)));
        match synced {
            Ok(()) => {
                self.mark_durable(target);
                Ok(())
            }
            Err(e) => {
                self.failed.store(true, Ordering::Release);
                Err(e)
            }
        }
    }
}
