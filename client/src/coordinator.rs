//! Reaching a consumer group's coordinator.
//!
//! A group's requests (heartbeats, commits, offset fetches, admin calls) must go to
//! the broker that coordinates it. [`Coordinator`] asks any broker which one that is
//! (`FindCoordinator`, trying brokers in the connection's order), remembers the
//! answer, and forgets it when a request fails in a way that says it moved:
//! `NOT_COORDINATOR` (following its hint at once), `COORDINATOR_NOT_AVAILABLE`, or a
//! broken connection. Retriable failures are retried with back-off up to the client's
//! `max_retries`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use sluice_proto::v1;
use sluice_proto::v1::group_coordinator_client::GroupCoordinatorClient;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::connection::Connection;
use crate::error::{CallError, ClientError, Result, check};
use crate::types::{OffsetAndMetadata, TopicPartition};

/// The route to one group's coordinator.
#[derive(Debug)]
pub(crate) struct Coordinator {
    conn: Connection,
    group: String,
    addr: Mutex<Option<String>>,
}

impl Coordinator {
    pub(crate) fn new(conn: Connection, group: impl Into<String>) -> Self {
        Self {
            conn,
            group: group.into(),
            addr: Mutex::new(None),
        }
    }

    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    fn cached(&self) -> Option<String> {
        self.addr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn remember(&self, addr: Option<String>) {
        *self.addr.lock().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// Asks the brokers which one coordinates the group, retrying while none can say.
    async fn find(&self) -> Result<String> {
        let config = self.conn.config();
        let backoff = Backoff::new(config.retry_backoff, config.retry_backoff_max);
        let mut last = None;
        for attempt in 0..=config.max_retries {
            for addr in self.conn.candidates() {
                let req = v1::FindCoordinatorRequest {
                    group_id: self.group.clone(),
                };
                let found = self
                    .attempt(&addr, |mut c| async move {
                        let resp = c.find_coordinator(req).await?.into_inner();
                        check(resp.error)?;
                        resp.coordinator.ok_or_else(|| {
                            CallError::Client(ClientError::CoordinatorNotAvailable {
                                message: "the broker named no coordinator".into(),
                            })
                        })
                    })
                    .await;
                match found {
                    Ok(b) if !b.addr.is_empty() => {
                        self.remember(Some(b.addr.clone()));
                        return Ok(b.addr);
                    }
                    Ok(_) => {}
                    // The broker can tell, and says the request is wrong: final.
                    Err(e) if !e.is_retriable() => return Err(e),
                    Err(e) => {
                        tracing::debug!(%addr, group = %self.group, %e, "find coordinator");
                        last = Some(e);
                    }
                }
            }
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
        Err(
            last.unwrap_or_else(|| ClientError::CoordinatorNotAvailable {
                message: format!("no broker named a coordinator for group '{}'", self.group),
            }),
        )
    }

    async fn attempt<T, F, Fut>(&self, addr: &str, op: F) -> Result<T>
    where
        F: FnOnce(GroupCoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<T, CallError>>,
    {
        let client = self.conn.group_client(addr)?;
        let timeout = self.conn.config().request_timeout;
        match tokio::time::timeout(timeout, op(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.into_client(addr)),
            Err(_) => Err(ClientError::Timeout {
                message: format!("{addr} did not answer within {timeout:?}"),
            }),
        }
    }

    /// One attempt at the coordinator (found first if unknown). A failure saying the
    /// coordinator moved makes the next call find it again.
    pub(crate) async fn call_once<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnOnce(GroupCoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<T, CallError>>,
    {
        let addr = match self.cached() {
            Some(addr) => addr,
            None => self.find().await?,
        };
        let result = self.attempt(&addr, op).await;
        if let Err(e) = &result {
            match e {
                ClientError::NotCoordinator {
                    coordinator: Some(b),
                    ..
                } if b.addr != addr => self.remember(Some(b.addr.clone())),
                e if e.is_retriable() => self.remember(None),
                _ => {}
            }
        }
        result
    }

    /// Calls the coordinator, retrying retriable failures with back-off.
    pub(crate) async fn call<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut(GroupCoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<T, CallError>>,
    {
        let config = self.conn.config();
        let backoff = Backoff::new(config.retry_backoff, config.retry_backoff_max);
        let mut attempt = 0;
        loop {
            match self.call_once(&mut op).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retriable() && attempt < config.max_retries => {
                    tracing::debug!(group = %self.group, attempt, %e, "retrying group request");
                    // A hint was remembered: follow it without waiting.
                    if !matches!(
                        e,
                        ClientError::NotCoordinator {
                            coordinator: Some(_),
                            ..
                        }
                    ) {
                        tokio::time::sleep(backoff.delay(attempt)).await;
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Coordinator {
    /// The group's committed offsets: of `partitions`, or all with `None`. Those
    /// without a commit are left out.
    pub(crate) async fn committed(
        &self,
        partitions: Option<&[TopicPartition]>,
    ) -> Result<BTreeMap<TopicPartition, OffsetAndMetadata>> {
        let req = v1::OffsetFetchRequest {
            group_id: self.group.clone(),
            partitions: TopicPartition::to_wire(partitions.unwrap_or_default().iter().cloned()),
        };
        let offsets = self
            .call(|mut c| {
                let req = req.clone();
                async move {
                    let resp = c.offset_fetch(req).await?.into_inner();
                    check(resp.error)?;
                    Ok(resp.offsets)
                }
            })
            .await?;
        Ok(committed_from_proto(offsets))
    }
}

pub(crate) fn committed_from_proto(
    list: Vec<v1::CommittedOffset>,
) -> BTreeMap<TopicPartition, OffsetAndMetadata> {
    list.into_iter()
        .map(|o| {
            let committed = OffsetAndMetadata {
                offset: o.offset,
                metadata: o.metadata,
            };
            (TopicPartition::new(o.topic, o.partition), committed)
        })
        .collect()
}
