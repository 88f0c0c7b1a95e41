//! A consumer in a group: `subscribe`, the group's assignment applied inside `recv`,
//! and committed offsets (manual, automatic, and the final commit before a partition
//! is handed over).
//!
//! Assignment changes are applied between records, in `recv`. Revoked partitions stop
//! being read at once; with auto-commit on, their final commit is sent, and only once
//! it is acknowledged does `on_revoked` run and the coordinator hear they are released
//! (meanwhile `recv` goes on with the other partitions). Added partitions get their
//! committed offsets (or `auto_offset_reset`), then `on_assigned`. Partitions that
//! stay are not touched: they keep fetching throughout.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use tokio::sync::oneshot;

use super::group::{self, GroupEvent, GroupMember, Subscription};
use super::{Consumer, PartState, RebalanceListener};
use crate::coordinator::Coordinator;
use crate::error::{ClientError, Result};
use crate::types::{Offset, OffsetAndMetadata, OffsetReset, TopicPartition};

/// Revoked partitions (with their state, should the group hand one straight back)
/// waiting for their final commit.
pub(super) struct Revocation {
    parts: Vec<(TopicPartition, PartState)>,
    committed: oneshot::Receiver<Result<()>>,
}

/// The outcome of the oldest revocation's commit, when it comes. Cancel-safe.
pub(super) async fn next_revoked(revoking: &mut VecDeque<Revocation>) -> Result<()> {
    match revoking.front_mut() {
        Some(r) => group::committed((&mut r.committed).await),
        None => std::future::pending().await,
    }
}

/// The outcome of the automatic commit under way, when it comes. Cancel-safe; the
/// caller must clear `in_flight` once this returns.
pub(super) async fn auto_commit_answered(
    in_flight: &mut Option<oneshot::Receiver<Result<()>>>,
) -> Result<()> {
    match in_flight {
        Some(answer) => group::committed(answer.await),
        None => std::future::pending().await,
    }
}

impl Consumer {
    /// Joins consumer group `group` to read `topics`: the group's coordinator shares
    /// their partitions among its members, and `recv` reads this member's share,
    /// starting where the group last committed. Subscribing again to the same group
    /// changes the topics; a different group needs [`Consumer::unsubscribe`] first.
    pub fn subscribe<I, S>(&mut self, group: &str, topics: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        if topics.is_empty() || topics.iter().any(String::is_empty) {
            return Err(ClientError::InvalidArgument(
                "subscribe needs at least one topic, and no empty names".into(),
            ));
        }
        self.subscribe_with(
            group,
            Subscription {
                topics,
                regex: String::new(),
            },
        )
    }

    /// Like [`Consumer::subscribe`], for every topic whose whole name matches
    /// `regex` (Rust `regex` syntax, matched by the coordinator), including topics
    /// created later. Internal topics never match.
    pub fn subscribe_pattern(&mut self, group: &str, regex: &str) -> Result<()> {
        if regex.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the subscription pattern is empty".into(),
            ));
        }
        self.subscribe_with(
            group,
            Subscription {
                topics: Vec::new(),
                regex: regex.to_string(),
            },
        )
    }

    fn subscribe_with(&mut self, group: &str, subscription: Subscription) -> Result<()> {
        if group.is_empty() {
            return Err(ClientError::InvalidArgument("a group needs an id".into()));
        }
        if let Some(g) = &self.group {
            if g.group() == group {
                g.resubscribe(subscription);
                return Ok(());
            }
            return Err(ClientError::InvalidArgument(format!(
                "already in group '{}': unsubscribe before joining '{group}'",
                g.group()
            )));
        }
        self.session.stop_all();
        self.parts.clear();
        self.committed.clear();
        self.target = None;
        self.last_auto_commit = Instant::now();
        self.auto_commit_in_flight = None;
        let coordinator = Coordinator::new(self.conn.clone(), group);
        self.group = Some(GroupMember::join(coordinator, subscription, &self.config));
        Ok(())
    }

    /// Sets the listener told of partitions assigned to and revoked from this member.
    pub fn set_rebalance_listener(&mut self, listener: impl RebalanceListener + 'static) {
        self.listener = Some(std::sync::Mutex::new(Box::new(listener)));
    }

    fn listener(&mut self) -> Option<&mut Box<dyn RebalanceListener>> {
        let l = self.listener.as_mut()?;
        Some(l.get_mut().unwrap_or_else(|p| p.into_inner()))
    }

    /// This member's id and epoch in its group, once it has joined.
    pub fn group_member(&self) -> Option<(String, i32)> {
        self.group
            .as_ref()
            .map(GroupMember::identity)
            .filter(|(_, epoch)| *epoch > 0)
    }

    /// Leaves the group: commits the positions reached (with auto-commit on), calls
    /// `on_revoked` for everything owned, stops fetching and tells the coordinator,
    /// so the partitions move on at once. Nothing is assigned afterwards.
    pub async fn unsubscribe(&mut self) -> Result<()> {
        let Some(g) = self.group.take() else {
            return Ok(());
        };
        let mut owned = self.assignment();
        // Revocations under way are earlier in the commit queue: done by then.
        owned.extend(
            self.revoking
                .drain(..)
                .flat_map(|r| r.parts.into_iter().map(|(tp, _)| tp)),
        );
        let committed = if self.config.enable_auto_commit {
            g.commit(self.positions(&owned)).await
        } else {
            Ok(())
        };
        if !owned.is_empty()
            && let Some(l) = self.listener()
        {
            l.on_revoked(&owned);
        }
        self.session.stop_all();
        self.parts.clear();
        self.target = None;
        self.auto_commit_in_flight = None;
        let left = g.leave().await;
        committed.and(left)
    }

    /// Leaves the group (see [`Consumer::unsubscribe`]) and closes the consumer.
    /// Dropping a consumer instead leaves its group only when its session expires,
    /// as a crash would.
    pub async fn close(mut self) -> Result<()> {
        self.unsubscribe().await
    }

    fn member(&self) -> Result<&GroupMember> {
        self.group.as_ref().ok_or_else(|| {
            ClientError::InvalidArgument("committing needs a group: subscribe first".into())
        })
    }

    /// The positions reached in `partitions` (those with one), to commit.
    fn positions(&self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, OffsetAndMetadata)> {
        partitions
            .iter()
            .filter_map(|tp| {
                let position = self.parts.get(tp)?.position?;
                Some((tp.clone(), OffsetAndMetadata::new(position)))
            })
            .collect()
    }

    /// Commits the positions reached in every assigned partition (the offsets after
    /// the records handed out) and waits until the coordinator has them.
    pub async fn commit(&mut self) -> Result<()> {
        let offsets = self.positions(&self.assignment());
        self.commit_offsets(offsets.into_iter().collect()).await
    }

    /// Like [`Consumer::commit`] without waiting. Commits are sent in order; a
    /// failure is logged (a later commit covers it).
    pub fn commit_async(&mut self) -> Result<()> {
        let offsets = self.positions(&self.assignment());
        self.member()?.commit_async(offsets.clone())?;
        self.note_committed(&offsets);
        Ok(())
    }

    /// Commits the given offsets (each the offset of the next record to read, with
    /// optional metadata) and waits. This member must own every partition in them.
    pub async fn commit_offsets(
        &mut self,
        offsets: BTreeMap<TopicPartition, OffsetAndMetadata>,
    ) -> Result<()> {
        let offsets: Vec<(TopicPartition, OffsetAndMetadata)> = offsets.into_iter().collect();
        self.member()?.commit(offsets.clone()).await?;
        self.note_committed(&offsets);
        Ok(())
    }

    fn note_committed(&mut self, offsets: &[(TopicPartition, OffsetAndMetadata)]) {
        for (tp, o) in offsets {
            self.committed.insert(tp.clone(), o.offset);
        }
    }

    /// The group's committed offsets of `partitions` (assigned here or not); those
    /// without a commit are left out.
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, OffsetAndMetadata>> {
        Ok(self
            .member()?
            .committed(partitions)
            .await?
            .into_iter()
            .collect())
    }

    /// When the next automatic commit is due, if auto-commit is on and none is
    /// under way (the next one waits for its answer: see [`Consumer::auto_commit`]).
    pub(super) fn auto_commit_due(&self) -> Option<Instant> {
        (self.config.enable_auto_commit && self.auto_commit_in_flight.is_none())
            .then(|| self.last_auto_commit + self.config.auto_commit_interval)
    }

    /// The automatic commit under way was answered.
    pub(super) fn note_auto_committed(&mut self, answer: Result<()>) {
        self.auto_commit_in_flight = None;
        if let Err(e) = answer {
            tracing::warn!(%e, "automatic commit failed");
        }
    }

    /// Sends (without waiting) the positions that moved since they were last
    /// committed, if an automatic commit is due and none is under way.
    ///
    /// One at a time: commits are sent in order, one after another, so when a commit
    /// takes longer than the interval (a loaded coordinator), queueing one per
    /// interval would grow the queue without bound, and the final commit of a
    /// revocation, queued behind them all, would hold the partition back from its new
    /// owner for ever longer. The commit sent after the answer covers every position
    /// that moved meanwhile.
    fn auto_commit(&mut self) -> Result<()> {
        if let Some(answer) = self.auto_commit_in_flight.as_mut() {
            use oneshot::error::TryRecvError;
            let answered = match answer.try_recv() {
                Ok(outcome) => outcome,
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Closed) => Err(ClientError::Closed(
                    "the consumer's committer stopped".into(),
                )),
            };
            self.note_auto_committed(answered);
        }
        if self
            .auto_commit_due()
            .is_none_or(|due| Instant::now() < due)
        {
            return Ok(());
        }
        self.last_auto_commit = Instant::now();
        let moved: Vec<(TopicPartition, OffsetAndMetadata)> = self
            .positions(&self.assignment())
            .into_iter()
            .filter(|(tp, o)| self.committed.get(tp) != Some(&o.offset))
            .collect();
        if moved.is_empty() {
            return Ok(());
        }
        let answer = self.member()?.commit_then(moved.clone())?;
        self.auto_commit_in_flight = Some(answer);
        self.note_committed(&moved);
        Ok(())
    }

    /// Takes what the group said since the last call, applies a new assignment, and
    /// auto-commits if due.
    pub(super) async fn maintain_group(&mut self) -> Result<()> {
        while let Some(event) = self.group.as_mut().and_then(|g| g.events.try_recv().ok()) {
            self.on_group_event(event)?;
        }
        // A consumer busy with records never waits in `recv`: look here too.
        while let Some(done) = self.revoking.front_mut().and_then(|r| {
            use oneshot::error::TryRecvError;
            match r.committed.try_recv() {
                Ok(outcome) => Some(outcome),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Closed) => Some(Err(ClientError::Closed(
                    "the consumer's committer stopped".into(),
                ))),
            }
        }) {
            self.release_revoked(done)?;
        }
        if let Some(target) = self.target.take()
            && let Err(e) = self.apply_assignment(&target).await
        {
            // Try again on the next call (unless a newer assignment came meanwhile).
            self.target.get_or_insert(target);
            return Err(e);
        }
        self.auto_commit()
    }

    pub(super) fn on_group_event(&mut self, event: GroupEvent) -> Result<()> {
        match event {
            GroupEvent::Assignment(target) => {
                self.target = Some(target);
                Ok(())
            }
            GroupEvent::Lost(why) => {
                let mut lost = self.assignment();
                lost.extend(
                    self.revoking
                        .drain(..)
                        .flat_map(|r| r.parts.into_iter().map(|(tp, _)| tp)),
                );
                tracing::warn!(%why, partitions = lost.len(), "lost the group's partitions");
                if !lost.is_empty()
                    && let Some(l) = self.listener()
                {
                    l.on_lost(&lost);
                }
                self.session.stop_all();
                self.parts.clear();
                self.committed.clear();
                self.target = None;
                Ok(())
            }
            GroupEvent::Error { error, fatal } => {
                if fatal {
                    // Membership is over (e.g. an invalid group id): nothing is ours.
                    self.group = None;
                    self.session.stop_all();
                    self.parts.clear();
                    self.revoking.clear();
                    self.target = None;
                }
                Err(error)
            }
        }
    }

    /// What the coordinator is told this member owns: what it reads, and what it
    /// is still releasing.
    fn reported_owned(&self) -> BTreeSet<TopicPartition> {
        let releasing = self
            .revoking
            .iter()
            .flat_map(|r| r.parts.iter().map(|(tp, _)| tp.clone()));
        self.parts.keys().cloned().chain(releasing).collect()
    }

    /// The oldest revocation's final commit is answered: `on_revoked`, then release.
    pub(super) fn release_revoked(&mut self, committed: Result<()>) -> Result<()> {
        let Some(done) = self.revoking.pop_front() else {
            return Ok(());
        };
        if let Err(e) = committed {
            tracing::warn!(%e, "final commit of revoked partitions failed");
        }
        let revoked: Vec<TopicPartition> = done.parts.into_iter().map(|(tp, _)| tp).collect();
        if !revoked.is_empty()
            && let Some(l) = self.listener()
        {
            l.on_revoked(&revoked);
        }
        self.member()?.set_owned(self.reported_owned());
        Ok(())
    }

    /// Moves from what this member owns to `target`: revoke, then add.
    async fn apply_assignment(&mut self, target: &BTreeSet<TopicPartition>) -> Result<()> {
        let owned: BTreeSet<TopicPartition> = self.parts.keys().cloned().collect();
        let revoked: Vec<TopicPartition> = owned.difference(target).cloned().collect();
        let mut added: Vec<TopicPartition> = target.difference(&owned).cloned().collect();
        if !revoked.is_empty() {
            let offsets = self.positions(&revoked);
            let mut parts = Vec::with_capacity(revoked.len());
            for tp in &revoked {
                self.session.stop(tp);
                self.committed.remove(tp);
                if let Some(state) = self.parts.remove(tp) {
                    parts.push((tp.clone(), state));
                }
            }
            if self.config.enable_auto_commit {
                let committed = self.member()?.commit_then(offsets)?;
                self.revoking.push_back(Revocation { parts, committed });
            } else {
                if let Some(l) = self.listener() {
                    l.on_revoked(&revoked);
                }
                self.member()?.set_owned(self.reported_owned());
            }
        }
        // A partition handed straight back while still being released carries on.
        added.retain(|tp| {
            let back = self.revoking.iter_mut().find_map(|r| {
                let i = r.parts.iter().position(|(t, _)| t == tp)?;
                Some(r.parts.remove(i).1)
            });
            match back {
                Some(state) => {
                    self.parts.insert(tp.clone(), state);
                    false
                }
                None => true,
            }
        });
        if added.is_empty() {
            return Ok(());
        }
        let committed = self.member()?.committed(&added).await?;
        let mut without_offset = Vec::new();
        for tp in &added {
            let mut state = PartState::default();
            match committed.get(tp) {
                Some(c) => {
                    state.pending = Some(Offset::At(c.offset));
                    self.committed.insert(tp.clone(), c.offset);
                }
                None => match self.config.auto_offset_reset {
                    OffsetReset::Earliest => state.pending = Some(Offset::Earliest),
                    OffsetReset::Latest => state.pending = Some(Offset::Latest),
                    OffsetReset::None => {
                        state.stopped = true;
                        without_offset.push(tp.to_string());
                    }
                },
            }
            self.parts.insert(tp.clone(), state);
        }
        self.member()?.set_owned(self.reported_owned());
        if let Some(l) = self.listener() {
            l.on_assigned(&added);
        }
        if without_offset.is_empty() {
            Ok(())
        } else {
            Err(ClientError::NoOffset(format!(
                "{} ha{} no committed offset and auto_offset_reset is None: seek to read",
                without_offset.join(", "),
                if without_offset.len() == 1 { "s" } else { "ve" }
            )))
        }
    }
}
