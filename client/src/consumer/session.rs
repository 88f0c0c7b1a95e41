//! The running fetch tasks of a consumer, one per partition, and what they delivered.
//!
//! Partitions start and stop one at a time: a partition that stays assigned keeps its
//! task (and its stream) while others come and go, which is what lets a group member
//! keep reading through a rebalance that does not move its partitions. Every task has
//! an id; events from a task that was stopped (by `seek`, a revocation or a new
//! assignment) are dropped, as are records it delivered that were not handed out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::ConsumerRecord;
use super::fetcher::{FetchEvent, FetchTask};
use crate::config::ConsumerConfig;
use crate::connection::Connection;
use crate::types::TopicPartition;

struct Running {
    id: u64,
    handle: JoinHandle<()>,
}

pub(super) struct Session {
    tx: mpsc::Sender<FetchEvent>,
    rx: mpsc::Receiver<FetchEvent>,
    tasks: BTreeMap<TopicPartition, Running>,
    by_id: HashMap<u64, TopicPartition>,
    next_id: u64,
    /// Records delivered and not yet handed out, with their partition.
    current: Option<(TopicPartition, std::vec::IntoIter<ConsumerRecord>)>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for r in self.tasks.values() {
            r.handle.abort();
        }
    }
}

impl Session {
    /// A session buffering up to `capacity` fetch responses over all partitions.
    pub(super) fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Self {
            tx,
            rx,
            tasks: BTreeMap::new(),
            by_id: HashMap::new(),
            next_id: 0,
            current: None,
        }
    }

    /// Starts fetching `tp` from `position` (replacing a running task).
    pub(super) fn start(
        &mut self,
        conn: &Connection,
        config: &ConsumerConfig,
        tp: &TopicPartition,
        position: u64,
    ) {
        self.stop(tp);
        let id = self.next_id;
        self.next_id += 1;
        let handle = tokio::spawn(
            FetchTask {
                conn: conn.clone(),
                config: config.clone(),
                task: id,
                topic: Arc::from(tp.topic.as_str()),
                partition: tp.partition,
                position,
                events: self.tx.clone(),
            }
            .run(),
        );
        self.by_id.insert(id, tp.clone());
        self.tasks.insert(tp.clone(), Running { id, handle });
    }

    /// Stops fetching `tp` and drops what it delivered and was not handed out.
    pub(super) fn stop(&mut self, tp: &TopicPartition) {
        if let Some(r) = self.tasks.remove(tp) {
            r.handle.abort();
            self.by_id.remove(&r.id);
        }
        if self.current.as_ref().is_some_and(|(c, _)| c == tp) {
            self.current = None;
        }
    }

    /// Forgets `tp`'s task, which stopped by itself (a fatal error).
    pub(super) fn forget(&mut self, tp: &TopicPartition) {
        self.stop(tp);
    }

    pub(super) fn stop_all(&mut self) {
        let tps: Vec<TopicPartition> = self.tasks.keys().cloned().collect();
        for tp in tps {
            self.stop(&tp);
        }
        self.current = None;
    }

    pub(super) fn is_running(&self, tp: &TopicPartition) -> bool {
        self.tasks.contains_key(tp)
    }

    /// The next delivered record not yet handed out, with its partition.
    pub(super) fn next_buffered(&mut self) -> Option<(&TopicPartition, ConsumerRecord)> {
        if self.current.as_ref().is_some_and(|(_, r)| r.len() == 0) {
            self.current = None;
        }
        let (tp, records) = self.current.as_mut()?;
        let record = records.next()?;
        Some((tp, record))
    }

    /// Keeps `records` of `tp` to hand out next.
    pub(super) fn buffer(&mut self, tp: TopicPartition, records: Vec<ConsumerRecord>) {
        self.current = Some((tp, records.into_iter()));
    }

    /// The next event of a running task, with its partition. Cancel-safe. Waits
    /// forever when nothing is running.
    pub(super) async fn next_event(&mut self) -> (TopicPartition, FetchEvent) {
        loop {
            // The session holds a sender itself, so the channel never closes.
            let Some(event) = self.rx.recv().await else {
                std::future::pending::<()>().await;
                continue;
            };
            let id = match &event {
                FetchEvent::Records { task, .. }
                | FetchEvent::Reset { task, .. }
                | FetchEvent::Error { task, .. } => *task,
            };
            if let Some(tp) = self.by_id.get(&id) {
                return (tp.clone(), event);
            }
        }
    }
}
