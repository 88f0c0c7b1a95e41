//! The read-only shared mappings of segment files, and giving their pages back once a
//! read is done with them, so the broker's resident memory does not grow with the
//! backlog it serves.
//!
//! Reads walk frames in the mapping (verifying every CRC) and hand out payloads as
//! `Bytes` that point into it. Every page a read touches becomes part of the process's
//! RSS (`RssFile`) and stays there as long as the mapping exists: a replay of a 2 GiB
//! backlog left 2 GiB resident. A read therefore hands out its payloads as slices of a
//! *window* ([`Mapping::window`]) over the bytes it walked; when the last slice of a
//! window is dropped (after the gRPC layer has encoded the response, or openraft has
//! applied or sent the entries), the window's pages are released with
//! `madvise(MADV_DONTNEED)`.
//!
//! Why `MADV_DONTNEED` on drop, and not the alternatives:
//! - On a shared file mapping `MADV_DONTNEED` only drops this process's page table
//!   entries; the pages stay in the page cache (and dirty ones are still written back),
//!   and a later touch maps them again from the cache, or from the file. It never
//!   changes what a read sees, so it is safe even while another reader's `Bytes`
//!   point at the same pages: that reader just faults them back in. Replay keeps its
//!   speed because nothing is copied and the page cache stays warm for the next reader.
//! - Unmapping idle sealed segments would also drop the pages, but a `Bytes` the
//!   network layer still holds may point into the mapping: unmapping under it is a
//!   use-after-free. (The window keeps its mapping alive until after the `madvise`.)
//! - `pread` into pooled buffers bounds RSS by the pool, but adds a copy per read on
//!   top of the one the gRPC encoder makes, and a pool to size and tune.
//! - `MADV_COLD`/`MADV_PAGEOUT` act on the page cache itself (deactivate or reclaim the
//!   pages for everyone), which is the kernel's business, not ours; a consumer right
//!   behind this one would pay for it.
//!
//! The release is only ever applied to file mappings: a [`Mapping`] can only be made by
//! mapping a file, and `MADV_DONTNEED` on anonymous memory would zero it.

use std::fs::File;
use std::io;
use std::ops::{Deref, Range};
use std::sync::OnceLock;

use bytes::Bytes;

/// A read-only shared mapping of (part of) a segment file, or a slice of one.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// The mapped bytes this value covers; keeps the whole mapping alive.
    bytes: Bytes,
    /// Addresses of the whole mapping, which a release may round out to.
    region: Range<usize>,
}

impl Mapping {
    /// Maps `len` bytes of `file` read-only and shared. The mapping may extend past the
    /// file's end; callers only touch bytes below it.
    pub fn map(file: &File, len: u64) -> io::Result<Self> {
        if len == 0 {
            return Ok(Self::default());
        }
        let len = usize::try_from(len).map_err(io::Error::other)?;
        // SAFETY: the broker is the only writer of its data directory; it writes with
        // pwrite (which the shared page cache makes visible here) and never shrinks a
        // file below bytes it has handed out, so no read through this mapping faults.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
        let start = map.as_ptr() as usize;
        // The kernel maps the last page whole.
        let region = start..start + len.next_multiple_of(page_size());
        Ok(Self {
            bytes: Bytes::from_owner(map),
            region,
        })
    }

    /// The bytes in `range`, still a mapping.
    pub fn slice(&self, range: Range<usize>) -> Self {
        Self {
            bytes: self.bytes.slice(range),
            region: self.region.clone(),
        }
    }

    /// The bytes in `range` as `Bytes` whose pages leave the process's resident set
    /// once it and every slice of it are dropped. Hand out slices of one window per
    /// read rather than one window per batch, so that pages two batches share go too.
    pub fn window(&self, range: Range<usize>) -> Bytes {
        Bytes::from_owner(Window {
            bytes: self.bytes.slice(range),
            region: self.region.clone(),
        })
    }

    /// Releases the pages under `range` now (see the module doc for why that is safe).
    pub fn release(&self, range: Range<usize>) {
        release(&self.bytes[range], &self.region);
    }

    /// Asks the kernel to read the bytes in `range` (clipped to this mapping) into the
    /// page cache now, in large reads, rather than a page fault at a time as a walk
    /// reaches them. Only a hint; it returns at once.
    pub fn prefetch(&self, range: Range<usize>) {
        let end = range.end.min(self.bytes.len());
        if range.start >= end {
            return;
        }
        let from = self.bytes[range.start..end].as_ptr() as usize;
        let start = (from & !(page_size() - 1)).max(self.region.start);
        let end = from + (end - range.start);
        // SAFETY: [start, end) lies inside this live file mapping; MADV_WILLNEED only
        // starts read-ahead of the file and never changes what the mapping reads.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_WILLNEED) };
        if rc != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "madvise(MADV_WILLNEED) failed");
        }
    }
}

impl Deref for Mapping {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The owner behind [`Mapping::window`]'s `Bytes`: releases its pages when dropped.
struct Window {
    bytes: Bytes,
    region: Range<usize>,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // `self.bytes` is dropped after this, so the mapping is still there.
        release(&self.bytes, &self.region);
    }
}

pub(super) fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n)
            .ok()
            .filter(|n| n.is_power_of_two())
            .unwrap_or(4096)
    })
}

/// The most a read fault on a file mapping maps around the faulting page: one page
/// table's worth (2 MiB on x86-64 and arm64 with 4 KiB pages). Fault-around maps the
/// cached pages of an aligned 64 KiB block by default, and recent kernels (6.18 here)
/// the whole large folio a page sits in, which large writes make up to that size.
const FAULT_BLOCK: usize = 2 << 20;

/// `madvise(MADV_DONTNEED)` over the bytes, from the start of the [`FAULT_BLOCK`] they
/// begin in (clipped to `region`, the whole mapping) to the end of their last page.
///
/// Only whole pages leak: a read's faults also map cached pages around it, which the
/// previous read had already released (whole pages left ~5% of a replayed log
/// resident, 64 KiB blocks 16% when it was written in 1 MiB appends). What a read's
/// faults map before it lies in the block it starts in, released here; what they map
/// past its end is released by the next read, which starts there. Only where a reader
/// stops can up to one block stay mapped, until a later read passes. Not rounding the
/// end out keeps a release off the reads queued behind it (a fetch stream reads ahead),
/// which would have to fault their pages in again. Rounding back is harmless, as a
/// released page is re-read from the page cache if touched again; clipping to
/// `region` matters, as before the mapping may lie anonymous memory, which
/// `MADV_DONTNEED` would zero.
fn release(bytes: &[u8], region: &Range<usize>) {
    if bytes.is_empty() {
        return;
    }
    let from = bytes.as_ptr() as usize;
    let start = (from & !(FAULT_BLOCK - 1)).max(region.start);
    let end = (from + bytes.len())
        .next_multiple_of(page_size())
        .min(region.end);
    if start >= end {
        return;
    }
    // SAFETY: [start, end) lies inside a live shared file mapping (the caller holds
    // it), for which MADV_DONTNEED only drops page table entries; contents stay.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    if rc != 0 {
        // Only a hint failed: the pages stay resident until the mapping goes.
        tracing::debug!(error = %io::Error::last_os_error(), "madvise(MADV_DONTNEED) failed");
    }
}
