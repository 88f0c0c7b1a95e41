//! Fetch: a server stream of committed batches, pushed as soon as they commit.
//!
//! The stream reads from the partition's log up to the high watermark, then sleeps on
//! the replica's high-watermark watch (no polling) until more commits or the client
//! goes away. Batches are slices of the log's mapping; nothing is copied here. Any
//! replica serves what it has committed, but only a confirmed leader answers that an
//! offset lies beyond the log.

use std::sync::Arc;

use sluice_proto::v1::{self, ErrorCode};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::errors::{self, error};
use crate::node::Node;

/// Batch bytes per response when the request names no bound.
const DEFAULT_MAX_BYTES: u32 = 1 << 20;
/// Upper bound on one response's batch bytes (one oversized batch still goes alone).
///
/// The batches are not copied here, but the gRPC encoder copies each response into a
/// buffer of its size, and HTTP/2 holds that buffer until the socket takes it: a fetch
/// stream costs the broker about two responses of heap. Replaying 8 partitions with
/// 4 MiB responses grew the heap by ~100 MiB that the allocator then kept. The stream
/// goes on with the next response anyway, so a larger response only saves messages.
const MAX_RESPONSE_BYTES: u32 = 1 << 20;

type Item = Result<v1::FetchResponse, Status>;

pub fn serve(node: Arc<Node>, req: v1::FetchRequest) -> ReceiverStream<Item> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let fail = |e: v1::Error| v1::FetchResponse {
            error: Some(e),
            ..Default::default()
        };
        let partition = match node.local_partition(&req.topic, req.partition) {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Ok(fail(e))).await;
                return;
            }
        };
        let replica = &partition.replica;
        let mut hw_watch = replica.watch_high_watermark();
        let max_bytes = match req.max_bytes {
            0 => DEFAULT_MAX_BYTES,
            n => n.min(MAX_RESPONSE_BYTES),
        } as usize;
        let mut offset = req.offset;
        let mut sent_any = false;
        loop {
            let hw = *hw_watch.borrow_and_update();
            let log = replica.log();
            if offset > hw && offset > log.next_offset() {
                // Only the leader may say an offset does not exist: a follower that
                // has not got this far (a restarted replica whose log lost a damaged
                // tail, or one cut off from the leader) would make the consumer reset
                // its position and read, and commit, again from there.
                if let Err(e) = replica.confirm_leadership().await {
                    let _ = tx.send(Ok(fail(errors::from_replica(&e)))).await;
                    return;
                }
                let e = error(
                    ErrorCode::OffsetOutOfRange,
                    format!(
                        "offset {offset} is beyond the log end {}: seek to a valid offset",
                        log.next_offset()
                    ),
                );
                let _ = tx.send(Ok(fail(e))).await;
                return;
            }
            if offset < hw {
                match log.read(offset, max_bytes, hw) {
                    Ok(read) => {
                        offset = read.next_offset;
                        sent_any = true;
                        let resp = v1::FetchResponse {
                            batches: read.batches,
                            high_watermark: hw,
                            log_start_offset: log.start_offset(),
                            error: None,
                        };
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Ok(fail(errors::from_log(&e)))).await;
                        return;
                    }
                }
                continue;
            }
            if !req.follow {
                // Caught up. Say so, with the watermark, if nothing was sent.
                if !sent_any {
                    let _ = tx
                        .send(Ok(v1::FetchResponse {
                            batches: Vec::new(),
                            high_watermark: hw,
                            log_start_offset: log.start_offset(),
                            error: None,
                        }))
                        .await;
                }
                return;
            }
            tokio::select! {
                changed = hw_watch.changed() => {
                    if changed.is_err() {
                        let e = error(ErrorCode::ShuttingDown, "the partition was closed on this broker; reconnect");
                        let _ = tx.send(Ok(fail(e))).await;
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(rx)
}
