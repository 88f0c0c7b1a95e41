//! One consumer group: its members, their epochs and sessions, and the incremental
//! hand-over of partitions between them.
//!
//! Owns the rules of the heartbeat protocol (KIP-848 style):
//! - a member joins with epoch 0, heartbeats with the epoch it was last given and
//!   leaves with -1; every heartbeat carries its subscription and what it owns. A join
//!   with the id of a member that exists carries that member on (joins are
//!   idempotent: a client resends one whose reply it did not get);
//! - the group epoch moves whenever members, subscriptions or the subscribed topics'
//!   partitions change; the target assignment is then recomputed (see
//!   [`super::assignor`]);
//! - a member converges on its target one heartbeat at a time: partitions it must give
//!   up are *revoked* at once, and a partition is *granted* only once no other member
//!   owns or is still releasing it. So a partition never has two owners, and members
//!   whose partitions do not move never stop;
//! - the member epoch moves whenever its assignment does; a commit must come from a
//!   member owning the partition, with an epoch not older than the grant (fencing);
//! - a member is removed when its session expires, or when it keeps revoked
//!   partitions past its rebalance timeout.
//!
//! Pure: no I/O; the clock is a parameter. Sessions are not persisted: a coordinator
//! that loads a group starts every member's session afresh.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::assignor::{self, Assignment};
use super::{GroupError, TopicPartition};

/// Longest subscription regex accepted.
const MAX_REGEX_LEN: usize = 1024;

/// Longest member id accepted.
const MAX_MEMBER_ID_LEN: usize = 255;

/// A member as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub id: String,
    pub client_id: String,
    pub epoch: i32,
    pub topics: BTreeSet<String>,
    /// Empty: no regex.
    pub regex: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    /// Partitions it may own, each with the member epoch that granted it.
    pub assigned: BTreeMap<TopicPartition, i32>,
    /// Partitions it must release, each with the member epoch that granted it.
    pub revoking: BTreeMap<TopicPartition, i32>,
}

impl MemberState {
    fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session_timeout_ms)
    }

    fn rebalance_timeout(&self) -> Duration {
        Duration::from_millis(self.rebalance_timeout_ms)
    }

    fn holds(&self, tp: &TopicPartition) -> bool {
        self.assigned.contains_key(tp) || self.revoking.contains_key(tp)
    }

    pub fn assigned_set(&self) -> BTreeSet<TopicPartition> {
        self.assigned.keys().cloned().collect()
    }
}

/// A group as persisted: what a new coordinator needs to carry on without a rebalance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub id: String,
    pub epoch: i32,
    /// The group epoch `target` was computed at.
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, MemberState>,
    pub target: Assignment,
    /// Partition counts of the subscribed topics `target` was computed from.
    pub view: BTreeMap<String, u32>,
}

/// What a heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub member_id: String,
    pub member_epoch: i32,
    pub client_id: String,
    pub topics: BTreeSet<String>,
    pub regex: String,
    pub owned: BTreeSet<TopicPartition>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub member_id: String,
    pub member_epoch: i32,
    /// What the member may own from now on, when it differs from what it reported.
    pub assignment: Option<BTreeSet<TopicPartition>>,
    pub session_timeout: Duration,
    /// The member has not reached its target yet (it waits for partitions others
    /// are releasing): it should heartbeat sooner than usual.
    pub reconciling: bool,
}

/// Why a member was removed by [`Group::expire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    SessionExpired,
    RevocationTimedOut,
}

#[derive(Debug, Clone, Copy)]
struct Session {
    expires: Instant,
    revoke_by: Option<Instant>,
}

/// A group with its live sessions.
#[derive(Debug)]
pub struct Group {
    state: GroupState,
    sessions: HashMap<String, Session>,
    regexes: HashMap<String, Regex>,
}

impl Group {
    pub fn new(id: &str) -> Self {
        Self::load(
            GroupState {
                id: id.to_string(),
                ..GroupState::default()
            },
            Instant::now(),
        )
    }

    /// A group as persisted; every member's session starts at `now`.
    pub fn load(state: GroupState, now: Instant) -> Self {
        let sessions = state
            .members
            .values()
            .map(|m| {
                let revoke_by = (!m.revoking.is_empty()).then(|| now + m.rebalance_timeout());
                (
                    m.id.clone(),
                    Session {
                        expires: now + m.session_timeout(),
                        revoke_by,
                    },
                )
            })
            .collect();
        let mut group = Self {
            state,
            sessions,
            regexes: HashMap::new(),
        };
        let patterns: Vec<String> = group
            .state
            .members
            .values()
            .map(|m| m.regex.clone())
            .collect();
        for p in patterns {
            // Persisted patterns were valid when accepted.
            let _ = group.regex(&p);
        }
        group
    }

    pub fn state(&self) -> &GroupState {
        &self.state
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    pub fn is_empty(&self) -> bool {
        self.state.members.is_empty()
    }

    /// "empty", "stable" (every member holds exactly its target) or "reconciling".
    pub fn phase(&self) -> &'static str {
        if self.state.members.is_empty() {
            return "empty";
        }
        let settled = self.state.epoch == self.state.assignment_epoch
            && self.state.members.values().all(|m| {
                m.revoking.is_empty()
                    && self
                        .state
                        .target
                        .get(&m.id)
                        .is_none_or(|t| *t == m.assigned_set())
                    && (self.state.target.contains_key(&m.id) || m.assigned.is_empty())
            });
        if settled { "stable" } else { "reconciling" }
    }

    fn regex(&mut self, pattern: &str) -> Result<Option<&Regex>, GroupError> {
        if pattern.is_empty() {
            return Ok(None);
        }
        if !self.regexes.contains_key(pattern) {
            if pattern.len() > MAX_REGEX_LEN {
                return Err(GroupError::InvalidRequest(format!(
                    "subscription regex is longer than {MAX_REGEX_LEN} characters"
                )));
            }
            let re = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                GroupError::InvalidRequest(format!("invalid subscription regex '{pattern}': {e}"))
            })?;
            self.regexes.insert(pattern.to_string(), re);
        }
        Ok(self.regexes.get(pattern))
    }

    /// Topics each member subscribes to that exist in `topics` (name → partitions).
    fn subscriptions(&self, topics: &BTreeMap<String, u32>) -> BTreeMap<String, BTreeSet<String>> {
        self.state
            .members
            .values()
            .map(|m| {
                let re = self.regexes.get(&m.regex);
                let set = topics
                    .keys()
                    .filter(|t| m.topics.contains(*t) || re.is_some_and(|r| r.is_match(t)))
                    .cloned()
                    .collect();
                (m.id.clone(), set)
            })
            .collect()
    }

    /// Handles one heartbeat at `now`, against the cluster's `topics`. Returns the
    /// reply and whether the persisted state changed (and must be written before the
    /// reply is sent). `new_member_id` names a member joining without an id.
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        topics: &BTreeMap<String, u32>,
        now: Instant,
        new_member_id: impl FnOnce() -> String,
    ) -> Result<(HeartbeatReply, bool), GroupError> {
        self.regex(&hb.regex)?;
        let mut dirty = false;
        let id = match hb.member_epoch {
            -1 => {
                let left = self.remove(&hb.member_id);
                return Ok((
                    HeartbeatReply {
                        member_id: hb.member_id,
                        member_epoch: -1,
                        assignment: None,
                        session_timeout: hb.session_timeout,
                        reconciling: false,
                    },
                    left,
                ));
            }
            0 => {
                let id = if hb.member_id.is_empty() {
                    new_member_id()
                } else {
                    hb.member_id.clone()
                };
                if id.len() > MAX_MEMBER_ID_LEN || id.chars().any(char::is_control) {
                    return Err(GroupError::InvalidRequest(format!(
                        "member id must be 1 to {MAX_MEMBER_ID_LEN} characters without control characters"
                    )));
                }
                // A join of a known member (its earlier join's reply was lost, or it
                // was fenced and dropped what it owned) carries on with what the member
                // holds: the reply tells it all it may own, so joining twice changes
                // nothing and a slow coordinator cannot make joins chase each other.
                if !self.state.members.contains_key(&id) {
                    self.state.members.insert(
                        id.clone(),
                        MemberState {
                            id: id.clone(),
                            client_id: hb.client_id.clone(),
                            epoch: 1,
                            topics: hb.topics.clone(),
                            regex: hb.regex.clone(),
                            session_timeout_ms: millis(hb.session_timeout),
                            rebalance_timeout_ms: millis(hb.rebalance_timeout),
                            assigned: BTreeMap::new(),
                            revoking: BTreeMap::new(),
                        },
                    );
                    self.state.epoch += 1;
                    dirty = true;
                }
                id
            }
            epoch if epoch < -1 => {
                return Err(GroupError::InvalidRequest(format!(
                    "member epoch {epoch} is invalid: use 0 to join, -1 to leave"
                )));
            }
            epoch => {
                let member = self.state.members.get(&hb.member_id).ok_or_else(|| {
                    GroupError::UnknownMember {
                        group: self.state.id.clone(),
                        member: hb.member_id.clone(),
                    }
                })?;
                // An older epoch is a member that missed a reply; it may carry on if it
                // owns nothing it should not.
                if epoch > member.epoch
                    || (epoch < member.epoch && !hb.owned.iter().all(|tp| member.holds(tp)))
                {
                    return Err(GroupError::Fenced(format!(
                        "member '{}' sent epoch {epoch}; its epoch is {}: rejoin",
                        hb.member_id, member.epoch
                    )));
                }
                hb.member_id.clone()
            }
        };

        let Some(member) = self.state.members.get_mut(&id) else {
            return Err(GroupError::UnknownMember {
                group: self.state.id.clone(),
                member: id,
            });
        };
        let session_ms = millis(hb.session_timeout);
        let rebalance_ms = millis(hb.rebalance_timeout);
        if member.client_id != hb.client_id
            || member.session_timeout_ms != session_ms
            || member.rebalance_timeout_ms != rebalance_ms
        {
            member.client_id = hb.client_id.clone();
            member.session_timeout_ms = session_ms;
            member.rebalance_timeout_ms = rebalance_ms;
            dirty = true;
        }
        if member.topics != hb.topics || member.regex != hb.regex {
            member.topics = hb.topics.clone();
            member.regex = hb.regex.clone();
            self.state.epoch += 1;
            dirty = true;
        }
        let released = member.revoking.len();
        member.revoking.retain(|tp, _| hb.owned.contains(tp));
        dirty |= member.revoking.len() != released;
        let still_revoking = !member.revoking.is_empty();
        let session = self.sessions.entry(id.clone()).or_insert(Session {
            expires: now,
            revoke_by: None,
        });
        session.expires = now + hb.session_timeout;
        if !still_revoking {
            session.revoke_by = None;
        }

        dirty |= self.refresh_target(topics);
        dirty |= self.reconcile(&id, now);

        let Some(member) = self.state.members.get(&id) else {
            return Err(GroupError::UnknownMember {
                group: self.state.id.clone(),
                member: id,
            });
        };
        let assigned = member.assigned_set();
        let reconciling = self
            .state
            .target
            .get(&id)
            .is_some_and(|target| *target != assigned);
        Ok((
            HeartbeatReply {
                member_id: id,
                member_epoch: member.epoch,
                assignment: (assigned != hb.owned).then_some(assigned),
                session_timeout: hb.session_timeout,
                reconciling,
            },
            dirty,
        ))
    }

    /// Recomputes the target if the group epoch or the subscribed topics moved.
    fn refresh_target(&mut self, topics: &BTreeMap<String, u32>) -> bool {
        let subscriptions = self.subscriptions(topics);
        let view: BTreeMap<String, u32> = subscriptions
            .values()
            .flatten()
            .filter_map(|t| topics.get(t).map(|&n| (t.clone(), n)))
            .collect();
        if view != self.state.view {
            self.state.view = view;
            self.state.epoch += 1;
        }
        if self.state.epoch == self.state.assignment_epoch {
            return false;
        }
        self.state.target = assignor::assign(&subscriptions, &self.state.view, &self.state.target);
        self.state.assignment_epoch = self.state.epoch;
        true
    }

    /// Moves member `id` one step toward its target: revoke what it must give up,
    /// grant what nobody else holds. Returns whether its assignment changed.
    fn reconcile(&mut self, id: &str, now: Instant) -> bool {
        let target = self.state.target.get(id).cloned().unwrap_or_default();
        let held_elsewhere: BTreeSet<TopicPartition> = self
            .state
            .members
            .values()
            .filter(|m| m.id != id)
            .flat_map(|m| m.assigned.keys().chain(m.revoking.keys()).cloned())
            .collect();
        let Some(member) = self.state.members.get_mut(id) else {
            return false;
        };
        let revoke: Vec<TopicPartition> = member
            .assigned
            .keys()
            .filter(|tp| !target.contains(*tp))
            .cloned()
            .collect();
        // Re-targeted partitions it is still releasing come straight back.
        let reclaim: Vec<TopicPartition> = member
            .revoking
            .keys()
            .filter(|tp| target.contains(*tp))
            .cloned()
            .collect();
        let grant: Vec<TopicPartition> = target
            .iter()
            .filter(|tp| !member.holds(tp) && !held_elsewhere.contains(*tp))
            .cloned()
            .collect();
        if revoke.is_empty() && reclaim.is_empty() && grant.is_empty() {
            return false;
        }
        member.epoch += 1;
        let epoch = member.epoch;
        for tp in revoke {
            if let Some(granted) = member.assigned.remove(&tp) {
                member.revoking.insert(tp, granted);
            }
        }
        for tp in reclaim {
            if let Some(granted) = member.revoking.remove(&tp) {
                member.assigned.insert(tp, granted);
            }
        }
        for tp in grant {
            member.assigned.insert(tp, epoch);
        }
        let revoking = !member.revoking.is_empty();
        let rebalance = member.rebalance_timeout();
        if let Some(s) = self.sessions.get_mut(id) {
            if revoking {
                s.revoke_by.get_or_insert(now + rebalance);
            } else {
                s.revoke_by = None;
            }
        }
        true
    }

    /// Removes a member, freeing what it holds. Returns whether it was a member.
    pub fn remove(&mut self, id: &str) -> bool {
        self.sessions.remove(id);
        if self.state.members.remove(id).is_some() {
            self.state.epoch += 1;
            true
        } else {
            false
        }
    }

    /// Removes every member (an administrator's forced offset reset).
    pub fn remove_all(&mut self) -> usize {
        let ids: Vec<String> = self.state.members.keys().cloned().collect();
        ids.iter().filter(|id| self.remove(id)).count()
    }

    /// Removes members whose session expired or who kept revoked partitions too long.
    /// `last_heard` tells when a member's latest request arrived, which may be later
    /// than the last heartbeat handled (requests wait their turn behind writes): a
    /// member is alive for a session timeout after that too.
    pub fn expire(
        &mut self,
        now: Instant,
        last_heard: impl Fn(&str) -> Option<Instant>,
    ) -> Vec<(String, Removal)> {
        let members = &self.state.members;
        let gone: Vec<(String, Removal)> = self
            .sessions
            .iter()
            .filter_map(|(id, s)| {
                let heard = last_heard(id)
                    .zip(members.get(id))
                    .map(|(at, m)| at + m.session_timeout());
                let expires = heard.map_or(s.expires, |h| h.max(s.expires));
                if expires <= now {
                    Some((id.clone(), Removal::SessionExpired))
                } else if s.revoke_by.is_some_and(|t| t <= now) {
                    Some((id.clone(), Removal::RevocationTimedOut))
                } else {
                    None
                }
            })
            .collect();
        for (id, _) in &gone {
            self.remove(id);
        }
        gone
    }

    /// Checks that `member_id` at `epoch` may commit offsets of `partitions`. An empty
    /// member id is a commit from outside the group, accepted only while it has no
    /// members.
    pub fn check_commit<'a>(
        &self,
        member_id: &str,
        epoch: i32,
        partitions: impl IntoIterator<Item = &'a TopicPartition>,
    ) -> Result<(), GroupError> {
        if member_id.is_empty() {
            if self.state.members.is_empty() {
                return Ok(());
            }
            return Err(GroupError::GroupNotEmpty {
                group: self.state.id.clone(),
                members: self.state.members.len(),
            });
        }
        let member =
            self.state
                .members
                .get(member_id)
                .ok_or_else(|| GroupError::UnknownMember {
                    group: self.state.id.clone(),
                    member: member_id.to_string(),
                })?;
        if epoch > member.epoch {
            return Err(GroupError::Fenced(format!(
                "commit with epoch {epoch} from member '{member_id}' whose epoch is {}",
                member.epoch
            )));
        }
        for tp in partitions {
            let granted = member.assigned.get(tp).or_else(|| member.revoking.get(tp));
            match granted {
                Some(&g) if epoch >= g => {}
                Some(&g) => {
                    return Err(GroupError::Fenced(format!(
                        "commit of {tp} with epoch {epoch}, but member '{member_id}' was given it at epoch {g}"
                    )));
                }
                None => {
                    return Err(GroupError::Fenced(format!(
                        "member '{member_id}' does not own {tp}: it moved to another member"
                    )));
                }
            }
        }
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: Duration = Duration::from_secs(10);

    fn topics(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn hb(id: &str, epoch: i32, owned: &BTreeSet<TopicPartition>) -> Heartbeat {
        Heartbeat {
            member_id: id.into(),
            member_epoch: epoch,
            client_id: "test".into(),
            topics: BTreeSet::from(["t".to_string()]),
            regex: String::new(),
            owned: owned.clone(),
            session_timeout: SESSION,
            rebalance_timeout: Duration::from_secs(30),
        }
    }

    /// A member as a well-behaved client runs it: owns exactly what it was told.
    struct Client {
        id: String,
        epoch: i32,
        owned: BTreeSet<TopicPartition>,
    }

    impl Client {
        fn join(g: &mut Group, id: &str, t: &BTreeMap<String, u32>, now: Instant) -> Self {
            let mut c = Client {
                id: id.into(),
                epoch: 0,
                owned: BTreeSet::new(),
            };
            c.beat(g, t, now);
            c
        }

        fn beat(&mut self, g: &mut Group, t: &BTreeMap<String, u32>, now: Instant) -> bool {
            let id = self.id.clone();
            let (reply, _) = g
                .heartbeat(hb(&self.id, self.epoch, &self.owned), t, now, || id)
                .expect("heartbeat");
            self.epoch = reply.member_epoch;
            match reply.assignment {
                Some(a) => {
                    self.owned = a;
                    true
                }
                None => false,
            }
        }
    }

    fn settle(g: &mut Group, clients: &mut [Client], t: &BTreeMap<String, u32>, now: Instant) {
        for _ in 0..10 {
            let mut changed = false;
            for c in clients.iter_mut() {
                changed |= c.beat(g, t, now);
            }
            if !changed {
                return;
            }
        }
        panic!("group did not settle: {:?}", g.state());
    }

    /// Group "g" with members `ids` joined at `now` and settled.
    fn settled_group(
        ids: &[&str],
        t: &BTreeMap<String, u32>,
        now: Instant,
    ) -> (Group, Vec<Client>) {
        let mut g = Group::new("g");
        let mut clients: Vec<Client> = ids
            .iter()
            .map(|id| Client::join(&mut g, id, t, now))
            .collect();
        settle(&mut g, &mut clients, t, now);
        (g, clients)
    }

    fn assert_exclusive(clients: &[Client]) {
        let mut seen = BTreeSet::new();
        for c in clients {
            for tp in &c.owned {
                assert!(seen.insert(tp.clone()), "{tp} owned twice");
            }
        }
    }

    #[test]
    fn three_members_share_twelve_partitions_four_each() {
        let t = topics(&[("t", 12)]);
        let now = Instant::now();
        let (g, clients) = settled_group(&["a", "b", "c"], &t, now);
        assert_exclusive(&clients);
        for c in &clients {
            assert_eq!(c.owned.len(), 4, "{}", c.id);
        }
        assert_eq!(g.phase(), "stable");
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_released_it() {
        let t = topics(&[("t", 4)]);
        let now = Instant::now();
        let mut g = Group::new("g");
        let mut a = Client::join(&mut g, "a", &t, now);
        assert_eq!(a.owned.len(), 4);
        let mut b = Client::join(&mut g, "b", &t, now);
        // b's target is two of a's partitions, but a still holds them.
        assert!(b.owned.is_empty());
        assert_eq!(g.phase(), "reconciling");
        // a is told to give two up; b still gets nothing until a heartbeats without them.
        let before = a.owned.clone();
        assert!(a.beat(&mut g, &t, now));
        assert_eq!(a.owned.len(), 2);
        let revoked: BTreeSet<_> = before.difference(&a.owned).cloned().collect();
        // A member that has not acknowledged yet blocks the hand-over.
        let (reply, _) = g
            .heartbeat(hb("b", b.epoch, &b.owned), &t, now, || unreachable!())
            .expect("hb");
        assert!(reply.assignment.is_none());
        assert!(
            reply.reconciling,
            "b waits for partitions: it heartbeats sooner"
        );
        // a acknowledges; now b gets them.
        a.beat(&mut g, &t, now);
        assert!(b.beat(&mut g, &t, now));
        assert_eq!(b.owned, revoked);
        assert_exclusive(&[a, b]);
        assert_eq!(g.phase(), "stable");
    }

    #[test]
    fn members_that_keep_their_partitions_are_not_disturbed_by_a_join() {
        let t = topics(&[("t", 12)]);
        let now = Instant::now();
        let (mut g, mut clients) = settled_group(&["a", "b", "c"], &t, now);
        let before: Vec<_> = clients.iter().map(|c| c.owned.clone()).collect();
        clients.push(Client::join(&mut g, "d", &t, now));
        settle(&mut g, &mut clients, &t, now);
        assert_exclusive(&clients);
        for (c, old) in clients.iter().zip(&before) {
            assert_eq!(c.owned.len(), 3);
            assert!(c.owned.is_subset(old), "{} only loses partitions", c.id);
        }
    }

    #[test]
    fn an_expired_member_is_removed_and_its_partitions_freed() {
        let t = topics(&[("t", 6)]);
        let now = Instant::now();
        let (mut g, mut clients) = settled_group(&["a", "b"], &t, now);
        let later = now + SESSION / 2;
        clients[0].beat(&mut g, &t, later);
        assert!(g.expire(later, |_| None).is_empty());
        let gone = g.expire(now + SESSION, |_| None);
        assert_eq!(gone, vec![("b".to_string(), Removal::SessionExpired)]);
        clients[0].beat(&mut g, &t, now + SESSION);
        assert_eq!(clients[0].owned.len(), 6);
        // A heartbeat that arrived but waited its turn keeps a member alive.
        let (a, late) = (clients[0].id.clone(), now + SESSION + SESSION / 2);
        assert!(g.expire(late, |id| (id == a).then_some(late)).is_empty());
        // The removed member is told so.
        let err = g
            .heartbeat(
                hb("b", clients[1].epoch, &clients[1].owned),
                &t,
                now,
                || unreachable!(),
            )
            .unwrap_err();
        assert!(matches!(err, GroupError::UnknownMember { .. }), "{err}");
    }

    #[test]
    fn a_member_keeping_revoked_partitions_too_long_is_removed() {
        let t = topics(&[("t", 2)]);
        let now = Instant::now();
        let mut g = Group::new("g");
        let mut a = Client::join(&mut g, "a", &t, now);
        let _b = Client::join(&mut g, "b", &t, now);
        a.beat(&mut g, &t, now);
        // a got the revocation but keeps reporting both partitions.
        let stubborn = BTreeSet::from([TopicPartition::new("t", 0), TopicPartition::new("t", 1)]);
        let later = now + Duration::from_secs(31);
        g.heartbeat(hb("a", a.epoch, &stubborn), &t, later, || unreachable!())
            .expect("hb");
        let gone = g.expire(later, |_| None);
        assert!(gone.contains(&("a".to_string(), Removal::RevocationTimedOut)));
    }

    #[test]
    fn commits_are_fenced_by_ownership_and_epoch() {
        let t = topics(&[("t", 2)]);
        let now = Instant::now();
        let mut g = Group::new("g");
        let mut a = Client::join(&mut g, "a", &t, now);
        let tp0 = TopicPartition::new("t", 0);
        let tp1 = TopicPartition::new("t", 1);
        g.check_commit("a", a.epoch, [&tp0, &tp1])
            .expect("owner commits");
        assert!(matches!(
            g.check_commit("a", a.epoch + 1, [&tp0]),
            Err(GroupError::Fenced(_))
        ));
        assert!(matches!(
            g.check_commit("zombie", 1, [&tp0]),
            Err(GroupError::UnknownMember { .. })
        ));
        assert!(matches!(
            g.check_commit("", -1, [&tp0]),
            Err(GroupError::GroupNotEmpty { .. })
        ));
        let mut b = Client::join(&mut g, "b", &t, now);
        a.beat(&mut g, &t, now);
        let (kept, gave) = if a.owned.contains(&tp0) {
            (tp0.clone(), tp1.clone())
        } else {
            (tp1.clone(), tp0.clone())
        };
        // While releasing, a may still commit what it gives up (a final commit).
        g.check_commit("a", a.epoch, [&gave]).expect("final commit");
        a.beat(&mut g, &t, now);
        b.beat(&mut g, &t, now);
        assert!(b.owned.contains(&gave));
        assert!(matches!(
            g.check_commit("a", a.epoch, [&gave]),
            Err(GroupError::Fenced(_))
        ));
        g.check_commit("a", a.epoch, [&kept]).expect("still owns");
        // A commit with an epoch from before the grant is stale.
        assert!(matches!(
            g.check_commit("b", b.epoch - 1, [&gave]),
            Err(GroupError::Fenced(_))
        ));
        g.remove_all();
        g.check_commit("", -1, [&tp0])
            .expect("empty group accepts admin commits");
    }

    #[test]
    fn new_partitions_and_matching_topics_are_picked_up() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let mut join = hb("", 0, &BTreeSet::new());
        join.topics.clear();
        join.regex = "orders-.*".into();
        let t1 = topics(&[("orders-eu", 2), ("payments", 3)]);
        let (reply, _) = g.heartbeat(join, &t1, now, || "m".into()).expect("join");
        let owned = reply.assignment.expect("assignment");
        assert_eq!(owned.len(), 2);
        let t2 = topics(&[("orders-eu", 4), ("orders-us", 1), ("payments", 3)]);
        let mut next = hb("m", reply.member_epoch, &owned);
        next.topics.clear();
        next.regex = "orders-.*".into();
        let (reply, dirty) = g.heartbeat(next, &t2, now, || unreachable!()).expect("hb");
        assert!(dirty);
        let owned = reply.assignment.expect("grown");
        assert_eq!(owned.len(), 5);
        assert!(owned.iter().all(|tp| tp.topic.starts_with("orders-")));
    }

    #[test]
    fn bad_requests_are_refused_without_changing_the_group() {
        let t = topics(&[("t", 1)]);
        let now = Instant::now();
        let mut g = Group::new("g");
        let mut bad = hb("", 0, &BTreeSet::new());
        bad.regex = "(".into();
        assert!(matches!(
            g.heartbeat(bad, &t, now, || "x".into()),
            Err(GroupError::InvalidRequest(_))
        ));
        assert!(g.is_empty());
        assert!(matches!(
            g.heartbeat(hb("x", -7, &BTreeSet::new()), &t, now, || "x".into()),
            Err(GroupError::InvalidRequest(_))
        ));
        let a = Client::join(&mut g, "a", &t, now);
        assert!(matches!(
            g.heartbeat(hb("a", a.epoch + 5, &a.owned), &t, now, || unreachable!()),
            Err(GroupError::Fenced(_))
        ));
    }

    #[test]
    fn a_repeated_join_carries_the_member_on() {
        let t = topics(&[("t", 4)]);
        let now = Instant::now();
        let mut g = Group::new("g");
        let a = Client::join(&mut g, "a", &t, now);
        let epoch = g.state().epoch;
        // Its reply was lost: the client joins again with what it owns (nothing).
        let (reply, dirty) = g
            .heartbeat(hb("a", 0, &BTreeSet::new()), &t, now, || unreachable!())
            .expect("join again");
        assert!(!dirty, "nothing changed");
        assert_eq!(g.state().epoch, epoch);
        assert_eq!(reply.member_epoch, a.epoch);
        assert_eq!(reply.assignment, Some(a.owned.clone()));
    }

    #[test]
    fn a_persisted_group_resumes_with_fresh_sessions() {
        let t = topics(&[("t", 4)]);
        let now = Instant::now();
        let mut g = Group::new("g");
        let mut a = Client::join(&mut g, "a", &t, now);
        let restored_at = now + Duration::from_secs(60);
        let mut g2 = Group::load(g.state().clone(), restored_at);
        assert!(g2.expire(restored_at, |_| None).is_empty());
        assert!(!a.beat(&mut g2, &t, restored_at), "nothing changes");
        assert_eq!(a.owned.len(), 4);
        let leave = hb("a", -1, &a.owned);
        let (_, dirty) = g2
            .heartbeat(leave, &t, now, || unreachable!())
            .expect("leave");
        assert!(dirty && g2.is_empty());
    }
}
