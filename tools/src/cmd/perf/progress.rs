//! The live counters the load generators bump and the once-a-second progress line
//! that reads them. The counters are for people watching; the summary never reads
//! them (it counts on its own, without the warm-up).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;

/// Live counters the progress line reads.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) acked: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) bytes: AtomicU64,
    /// Ack latency since the last progress line.
    pub(super) ack_sum_us: AtomicU64,
    pub(super) ack_max_us: AtomicU64,
    pub(super) consumed: AtomicU64,
    pub(super) consumed_bytes: AtomicU64,
    pub(super) e2e_sum_us: AtomicU64,
    pub(super) e2e_max_us: AtomicU64,
}

pub(super) type Lines = mpsc::UnboundedSender<String>;

/// One progress line a second: the last second's rates and latency.
pub(super) async fn report_progress(
    counters: Arc<Counters>,
    lines: Lines,
    start: Instant,
    measure_from: Instant,
    producing: bool,
) {
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let (mut last_acked, mut last_bytes, mut last_consumed, mut last_consumed_bytes) =
        (0u64, 0u64, 0u64, 0u64);
    let mut last = start;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let secs = (now - last).as_secs_f64().max(1e-9);
        let warming_up = last < measure_from;
        last = now;
        let acked = counters.acked.load(Ordering::Relaxed);
        let bytes = counters.bytes.load(Ordering::Relaxed);
        let consumed = counters.consumed.load(Ordering::Relaxed);
        let consumed_bytes = counters.consumed_bytes.load(Ordering::Relaxed);
        let ack_sum = counters.ack_sum_us.swap(0, Ordering::Relaxed);
        let ack_max = counters.ack_max_us.swap(0, Ordering::Relaxed);
        let e2e_sum = counters.e2e_sum_us.swap(0, Ordering::Relaxed);
        let e2e_max = counters.e2e_max_us.swap(0, Ordering::Relaxed);
        let mut line = format!("[{:>4.0}s]", (now - start).as_secs_f64());
        if warming_up {
            line.push_str(" warm-up:");
        }
        if producing {
            let n = acked - last_acked;
            line.push_str(&format!(
                " produced {acked} ({:.1} records/s, {:.2} MB/s), ack latency avg {:.3} ms max {:.3} ms",
                n as f64 / secs,
                mb(bytes - last_bytes) / secs,
                if n > 0 { ack_sum as f64 / n as f64 / 1000.0 } else { 0.0 },
                ack_max as f64 / 1000.0,
            ));
        }
        if !producing || consumed > 0 {
            let n = consumed - last_consumed;
            line.push_str(&format!(
                "{} consumed {consumed} ({:.1} records/s, {:.2} MB/s)",
                if producing { ";" } else { "" },
                n as f64 / secs,
                mb(consumed_bytes - last_consumed_bytes) / secs,
            ));
            if e2e_sum > 0 || e2e_max > 0 {
                line.push_str(&format!(
                    ", end-to-end avg {:.3} ms max {:.3} ms",
                    if n > 0 {
                        e2e_sum as f64 / n as f64 / 1000.0
                    } else {
                        0.0
                    },
                    e2e_max as f64 / 1000.0
                ));
            }
        }
        let failed = counters.failed.load(Ordering::Relaxed);
        if failed > 0 {
            line.push_str(&format!(", {failed} failed"));
        }
        line.push('\n');
        if lines.send(line).is_err() {
            return;
        }
        (last_acked, last_bytes, last_consumed, last_consumed_bytes) =
            (acked, bytes, consumed, consumed_bytes);
    }
}
