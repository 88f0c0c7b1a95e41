//! How much of what appends wrote stays in the page cache: a budget shared by every
//! segment of the broker.
//!
//! Every append copies its bytes into page-cache pages. Left alone, the cache grows
//! until memory runs short, and each of those pages is one the kernel has to find anew
//! (on a VM, one the host must back first): that made the copy half the broker's CPU
//! under load, while pages the kernel got back just before are hot. So segments hand
//! each chunk they start writing back to the [`TailCache`], which keeps the newest
//! chunks of all segments up to its budget and drops the pages of older ones with
//! `posix_fadvise(DONTNEED)`. Appends then reuse freed pages, readers that follow a
//! tail still find it cached, and readers further behind read from disk with
//! read-ahead ([`super::mapped::Mapping::prefetch`]). One budget for the broker, not
//! one per partition: a partition that starts writing takes pages the others no
//! longer need, instead of new ones.
//!
//! Kafka leaves the whole log to the page cache; Redpanda bypasses it and keeps a
//! cache of its own. This keeps the mmap read path and bounds what appends leave.
//!
//! It must never drop anything but clean, unmapped pages: `DONTNEED` skips dirty and
//! mapped ones, and a chunk is dropped only after a budget's worth of newer appends,
//! long after a group commit synced it. Dropping never changes what a read sees.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::mapped::page_size;

/// Part of a file handed to writeback, still counted as cached.
struct Chunk {
    /// Weak: a deleted segment's pages go with its last handle.
    file: Weak<File>,
    from: u64,
    len: u64,
}

/// The budget of appended bytes left in the page cache, oldest dropped first.
pub struct TailCache {
    limit: u64,
    queue: Mutex<(VecDeque<Chunk>, u64)>,
}

impl TailCache {
    /// A budget of `limit` bytes. The newest chunk always stays, whatever its size.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            queue: Mutex::new((VecDeque::new(), 0)),
        }
    }

    /// The broker's budget: `--log-cache-mib` if [`TailCache::configure`]d before the
    /// first log opens, else an eighth of physical memory (at least 256 MiB), which
    /// leaves the rest of the page cache to everything else on the machine.
    pub fn shared() -> Arc<Self> {
        SHARED
            .get_or_init(|| Arc::new(Self::new((physical_memory() / 8).max(256 << 20))))
            .clone()
    }

    /// Sets the broker's budget. Only before any log has opened: returns false, and
    /// changes nothing, once the budget is in use.
    pub fn configure(limit: u64) -> bool {
        SHARED.set(Arc::new(Self::new(limit))).is_ok()
    }

    /// Counts `len` bytes of `file` from `from`, just handed to writeback, as cached,
    /// and drops the pages of the oldest chunks beyond the budget.
    pub fn admit(&self, file: &Arc<File>, from: u64, len: u64) {
        let mut evicted = Vec::new();
        {
            let mut guard = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let (chunks, bytes) = &mut *guard;
            chunks.push_back(Chunk {
                file: Arc::downgrade(file),
                from,
                len,
            });
            *bytes += len;
            while *bytes > self.limit && chunks.len() > 1 {
                if let Some(c) = chunks.pop_front() {
                    *bytes -= c.len;
                    evicted.push(c);
                }
            }
        }
        for c in evicted {
            if let Some(file) = c.file.upgrade() {
                // SAFETY: plain syscall on a valid descriptor. Failure only loses the
                // hint.
                unsafe {
                    libc::posix_fadvise(
                        file.as_raw_fd(),
                        c.from as libc::off64_t,
                        c.len as libc::off64_t,
                        libc::POSIX_FADV_DONTNEED,
                    );
                }
            }
        }
    }
}

/// The budget every segment of this process counts against.
static SHARED: OnceLock<Arc<TailCache>> = OnceLock::new();

fn physical_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    u64::try_from(pages).unwrap_or(0) * page_size() as u64
}
