//! The pulse: one beat per broker pair drives the elections of every group, so groups
//! that are not written to cost next to nothing.
//!
//! openraft gives every group timers of its own: a tick five times per heartbeat
//! interval on every replica and, from every leader, a heartbeat per follower each
//! interval. A broker with a thousand replicated partitions spent two thirds of a core
//! on them while nothing was written. Here openraft's timers are off for every group
//! (`enable_tick: false`) and each broker runs one loop instead. Every heartbeat
//! interval it
//! - sends each peer one [`Beat`] naming the groups it leads that the peer is a member
//!   of, with their terms;
//! - stands a replica for election (with pre-vote) once no beat has claimed its group,
//!   at its term or later, for a random election timeout, as openraft's timer would
//!   after missing heartbeats; a sole voter that does not lead, or a group this
//!   replica has just formed, stands at once;
//! - has a leader heartbeat a group only when a follower needs to hear from it: the
//!   follower does not know its leader (it says so in its beat), its broker came back
//!   (restarted, or silent for an election timeout), or it answered a beat saying a
//!   newer term has started (this leader was deposed unawares).
//!
//! Appends and commit indexes are openraft's replication, untouched. Safety is Raft's:
//! the pulse decides only *when* a replica stands for election; votes, terms and logs
//! are judged by openraft. A pre-vote is refused while a live leader claims the group
//! (leader stickiness, Raft thesis §9.6), so a replica that merely stopped hearing beats
//! cannot depose a leader the others still hear.
//!
//! What the loop knows of each group comes from openraft's server metrics, which change
//! only on elections and membership changes; a small task per group copies them into
//! [`Pulse`]'s table, so an idle group costs the loop a table entry, not a lock.
//!
//! Must never block the RPC handler (work that awaits goes to spawned tasks) nor hold a
//! lock across an await.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::metrics::RaftServerMetrics;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::network::{GroupRegistry, Network, WeakRegistry, encode};
use super::types::{NodeId, TypeConfig, Vote};
use super::{RaftHandle, RaftTuning};

/// A beat to a peer still unanswered after this long is given up; until then no new one
/// is sent to that peer.
const BEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// What one broker tells another every heartbeat interval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    pub from: NodeId,
    /// Drawn at every start of the sender: a new one means it restarted.
    pub incarnation: u64,
    /// `(group id, term)` of every group the sender leads.
    pub leading: Vec<(u64, u64)>,
    /// Groups the sender holds a replica of without knowing their leader, though some
    /// beat claims them: their leader should make itself known.
    pub want: Vec<u64>,
}

/// The answer to a [`Beat`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeatReply {
    /// Groups the sender claims at a term older than the receiver's: it was deposed
    /// and should hear so from the others (a heartbeat tells it).
    pub stale: Vec<u64>,
}

/// The last beat heard from one peer.
struct Heard {
    at: Instant,
    incarnation: u64,
    leading: HashMap<u64, u64>,
}

/// What the loop needs of one group, from its server metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Role {
    leading: bool,
    term: u64,
    knows_leader: bool,
    voter: bool,
    sole_voter: bool,
    /// The other members and their addresses.
    peers: Vec<(NodeId, String)>,
}

impl Role {
    fn of(m: &RaftServerMetrics<TypeConfig>) -> Self {
        let voters: Vec<NodeId> = m.membership_config.voter_ids().collect();
        Self {
            leading: m.state == ServerState::Leader,
            term: m.vote.leader_id().term,
            knows_leader: m.current_leader.is_some(),
            voter: voters.contains(&m.id),
            sole_voter: voters == [m.id],
            peers: m
                .membership_config
                .nodes()
                .filter(|(id, _)| **id != m.id)
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
        }
    }
}

/// One group as the loop sees it.
struct Tracked {
    raft: RaftHandle,
    /// `None` once the group's Raft core has stopped.
    role: Option<Role>,
    timer: Option<Timer>,
    watcher: JoinHandle<()>,
}

/// A follower's election timer.
struct Timer {
    /// The last beat claiming the group, or when the timer (re)started.
    since: Instant,
    timeout: Duration,
    /// Elections stood since a leader was last heard: each after the first doubles the
    /// next timeout (up to [`MAX_BACKOFF_DOUBLINGS`] times), so groups that cannot
    /// reach a quorum do not keep every broker busy with pre-votes.
    stood: u32,
}

/// How often a group's election timeout may double while no leader is heard.
pub const MAX_BACKOFF_DOUBLINGS: u32 = 3;

/// The timers every group's elections run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timing {
    beat: Duration,
    election_min: Duration,
    election_max: Duration,
}

impl Timing {
    fn of(tuning: &RaftTuning) -> Self {
        Self {
            beat: tuning.heartbeat_interval,
            election_min: tuning.election_timeout_min,
            election_max: tuning.election_timeout_max.max(tuning.election_timeout_min),
        }
    }

    /// Random, so that the replicas of a group rarely stand at once; doubled for each
    /// election stood without a leader emerging beyond the first (which a race with a
    /// peer's timer can lose).
    fn election_timeout(&self, stood: u32) -> Duration {
        let doublings = stood.saturating_sub(1).min(MAX_BACKOFF_DOUBLINGS);
        rand::random_range(self.election_min..=self.election_max) * (1 << doublings)
    }

    /// How recently a beat must have claimed a group for this broker to refuse a
    /// pre-vote in it. Shorter than the least election timeout by a beat: a candidate
    /// stands at the earliest that long after the last claim *it* heard, and the same
    /// beat may reach this broker up to a beat later.
    fn stickiness(&self) -> Duration {
        self.election_min.saturating_sub(self.beat)
    }
}

/// What beats asked of this broker's leaders since the loop last looked.
#[derive(Default)]
struct Asked {
    /// Peers that came back.
    returned: Vec<NodeId>,
    /// Groups whose followers do not know their leader.
    want: HashSet<u64>,
}

/// One broker's pulse: what it heard from its peers and what it knows of its groups.
/// Lives in the [`GroupRegistry`].
pub struct Pulse {
    incarnation: u64,
    heard: Mutex<HashMap<NodeId, Heard>>,
    groups: Mutex<HashMap<u64, Tracked>>,
    /// A group's members changed: the loop recomputes whom to beat.
    members_changed: AtomicBool,
    asked: Mutex<Asked>,
    /// Set when the loop starts.
    timing: OnceLock<Timing>,
}

impl Default for Pulse {
    fn default() -> Self {
        Self {
            incarnation: rand::random(),
            heard: Mutex::default(),
            groups: Mutex::default(),
            members_changed: AtomicBool::new(true),
            asked: Mutex::default(),
            timing: OnceLock::new(),
        }
    }
}

impl Pulse {
    /// The loop's timing; the defaults until it starts.
    fn timing(&self) -> Timing {
        self.timing
            .get()
            .copied()
            .unwrap_or_else(|| Timing::of(&RaftTuning::default()))
    }

    /// Starts following a group's role (called when it is registered).
    pub(super) fn track(self: &Arc<Self>, group_id: u64, raft: &RaftHandle) {
        let mut server = raft.server_metrics();
        let role = Role::of(&server.borrow_and_update());
        let pulse = Arc::downgrade(self);
        let watcher = tokio::spawn(async move {
            loop {
                let changed = server.changed().await;
                let role = changed
                    .is_ok()
                    .then(|| Role::of(&server.borrow_and_update()));
                let Some(pulse) = pulse.upgrade() else {
                    return;
                };
                let stopped = role.is_none();
                pulse.set_role(group_id, role);
                if stopped {
                    return;
                }
            }
        });
        let tracked = Tracked {
            raft: raft.clone(),
            role: Some(role),
            timer: None,
            watcher,
        };
        if let Some(old) = lock(&self.groups).insert(group_id, tracked) {
            old.watcher.abort();
        }
        self.members_changed.store(true, Ordering::Release);
    }

    /// Stops following a group (called when it is unregistered).
    pub(super) fn untrack(&self, group_id: u64) {
        if let Some(old) = lock(&self.groups).remove(&group_id) {
            old.watcher.abort();
        }
        self.members_changed.store(true, Ordering::Release);
    }

    fn set_role(&self, group_id: u64, role: Option<Role>) {
        if let Some(t) = lock(&self.groups).get_mut(&group_id) {
            if t.role.as_ref().map(|r| &r.peers) != role.as_ref().map(|r| &r.peers) {
                self.members_changed.store(true, Ordering::Release);
            }
            t.role = role;
        }
    }

    /// Records a peer's beat and says which of its claims are stale here.
    pub fn on_beat(&self, beat: Beat) -> BeatReply {
        let now = Instant::now();
        let silent = self.timing().election_max;
        let heard = Heard {
            at: now,
            incarnation: beat.incarnation,
            leading: beat.leading.iter().copied().collect(),
        };
        let previous = lock(&self.heard).insert(beat.from, heard);
        let came_back = previous.is_none_or(|p| {
            p.incarnation != beat.incarnation || now.duration_since(p.at) >= silent
        });
        if came_back || !beat.want.is_empty() {
            let mut asked = lock(&self.asked);
            if came_back {
                asked.returned.push(beat.from);
            }
            asked.want.extend(beat.want);
        }
        let groups = lock(&self.groups);
        let stale = beat
            .leading
            .iter()
            .filter(|&&(group_id, term)| {
                groups
                    .get(&group_id)
                    .and_then(|t| t.role.as_ref())
                    .is_some_and(|r| r.term > term)
            })
            .map(|&(group_id, _)| group_id)
            .collect();
        BeatReply { stale }
    }

    /// The leader that makes this replica refuse `candidate_vote`'s pre-vote, if any
    /// (see [`Voter::stands_by`]; a claim counts for [`Timing::stickiness`]).
    pub fn live_leader(
        &self,
        group_id: u64,
        raft: &RaftHandle,
        candidate_vote: &Vote,
    ) -> Option<NodeId> {
        let (me, leading, term) = {
            let m = raft.server_metrics();
            let m = m.borrow_watched();
            (
                m.id,
                m.state == ServerState::Leader,
                m.vote.leader_id().term,
            )
        };
        let here = Voter { me, leading, term };
        let candidate = candidate_vote.leader_id();
        let fresh = self.timing().stickiness();
        here.stands_by(
            &lock(&self.heard),
            group_id,
            (candidate.voted_for, candidate.term),
            Instant::now(),
            fresh,
        )
    }
}

/// What a pre-vote is judged against on the receiving replica.
struct Voter {
    me: NodeId,
    leading: bool,
    term: u64,
}

impl Voter {
    /// The leader this replica stands by against `(candidate, candidate term)`, if any:
    /// itself while it leads (unless the candidate is terms ahead, a sign this leader
    /// was deposed unawares), or a peer other than the candidate whose beat claimed the
    /// group at this replica's term or later less than `fresh` ago.
    fn stands_by(
        &self,
        heard: &HashMap<NodeId, Heard>,
        group_id: u64,
        (candidate, candidate_term): (NodeId, u64),
        now: Instant,
        fresh: Duration,
    ) -> Option<NodeId> {
        if self.leading {
            return (candidate_term <= self.term + 1).then_some(self.me);
        }
        heard
            .iter()
            .filter(|&(&peer, h)| {
                peer != candidate
                    && now.duration_since(h.at) < fresh
                    && h.leading.get(&group_id).is_some_and(|&t| t >= self.term)
            })
            .map(|(&peer, _)| peer)
            .next()
    }
}

/// Who last claimed `group_id` at `term` or later in a beat, and when.
fn claim(heard: &HashMap<NodeId, Heard>, group_id: u64, term: u64) -> Option<(NodeId, Instant)> {
    heard
        .iter()
        .filter(|(_, h)| h.leading.get(&group_id).is_some_and(|&t| t >= term))
        .map(|(&peer, h)| (peer, h.at))
        .max_by_key(|&(_, at)| at)
}

/// Starts the broker's pulse loop, once per registry; later calls do nothing. The loop
/// ends when the registry is dropped.
pub fn ensure_running(
    registry: &GroupRegistry,
    node_id: NodeId,
    network: &Network,
    tuning: &RaftTuning,
) {
    let timing = Timing::of(tuning);
    if registry.pulse().timing.set(timing).is_err() {
        return;
    }
    let looper = Loop {
        registry: registry.downgrade(),
        node_id,
        network: network.clone(),
        peers: BTreeMap::new(),
        in_flight: HashMap::new(),
    };
    tokio::spawn(looper.run(timing));
}

/// What one look over the groups found to do.
#[derive(Default)]
struct Scan {
    /// Per peer, the groups led here that it is a member of, with their terms.
    leading: HashMap<NodeId, Vec<(u64, u64)>>,
    /// Per peer, the groups it claims whose leader this broker's replica does not know.
    want: HashMap<NodeId, Vec<u64>>,
    /// Replicas to stand for election, and whether with a pre-vote.
    elect: Vec<(RaftHandle, bool)>,
    /// Leaders to heartbeat, with the peers whose replication back-off to reset.
    heartbeat: Vec<(RaftHandle, Vec<NodeId>)>,
}

struct Loop {
    registry: WeakRegistry,
    node_id: NodeId,
    network: Network,
    /// Whom to beat: every other member of a group here.
    peers: BTreeMap<NodeId, String>,
    in_flight: HashMap<NodeId, JoinHandle<()>>,
}

impl Loop {
    async fn run(mut self, timing: Timing) {
        let mut ticker = tokio::time::interval(timing.beat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(registry) = self.registry.upgrade() else {
                return;
            };
            let scan = self.scan(&registry, timing);
            self.act(scan, registry.pulse().incarnation);
        }
    }

    fn scan(&mut self, registry: &GroupRegistry, timing: Timing) -> Scan {
        let now = Instant::now();
        let pulse = registry.pulse();
        let asked = std::mem::take(&mut *lock(&pulse.asked));
        let mut groups = lock(&pulse.groups);
        if pulse.members_changed.swap(false, Ordering::AcqRel) {
            self.peers = groups
                .values()
                .filter_map(|t| t.role.as_ref())
                .flat_map(|r| r.peers.iter().cloned())
                .collect();
        }
        let heard = lock(&pulse.heard);
        let mut scan = Scan::default();
        for (&group_id, tracked) in groups.iter_mut() {
            let Some(role) = &tracked.role else {
                continue;
            };
            if role.leading {
                tracked.timer = None;
                for (peer, _) in &role.peers {
                    let led = scan.leading.entry(*peer).or_default();
                    led.push((group_id, role.term));
                }
                let back: Vec<NodeId> = asked
                    .returned
                    .iter()
                    .copied()
                    .filter(|p| role.peers.iter().any(|(id, _)| id == p))
                    .collect();
                if !back.is_empty() || asked.want.contains(&group_id) {
                    scan.heartbeat.push((tracked.raft.clone(), back));
                }
                continue;
            }
            let claimed = claim(&heard, group_id, role.term);
            if !role.knows_leader
                && let Some((claimer, _)) = claimed
            {
                scan.want.entry(claimer).or_default().push(group_id);
            }
            if !role.voter || registry.abstention(group_id).is_some() {
                tracked.timer = None;
                continue;
            }
            // A sole voter has nobody to wait for, and a group this replica has just
            // formed (term 0) has no leader yet to hear from.
            let at_once = role.sole_voter || role.term == 0;
            let timer = tracked.timer.get_or_insert_with(|| Timer {
                since: now,
                timeout: if at_once {
                    Duration::ZERO
                } else {
                    timing.election_timeout(0)
                },
                stood: 0,
            });
            if let Some((_, at)) = claimed
                && at > timer.since
            {
                timer.since = at;
                if timer.stood > 0 {
                    timer.stood = 0;
                    timer.timeout = timing.election_timeout(0);
                }
            }
            if now.duration_since(timer.since) >= timer.timeout {
                scan.elect.push((tracked.raft.clone(), !role.sole_voter));
                timer.since = now;
                timer.stood = timer.stood.saturating_add(1);
                timer.timeout = timing.election_timeout(timer.stood);
            }
        }
        scan
    }

    fn act(&mut self, scan: Scan, incarnation: u64) {
        let Scan {
            mut leading,
            mut want,
            elect,
            heartbeat,
        } = scan;
        if !elect.is_empty() || !heartbeat.is_empty() {
            tracing::debug!(
                node_id = self.node_id,
                elections = elect.len(),
                heartbeats = heartbeat.len(),
                "pulse"
            );
            tokio::spawn(async move {
                for (raft, pre_vote) in elect {
                    let _ = raft.trigger().elect(pre_vote).await;
                }
                for (raft, back) in heartbeat {
                    if !back.is_empty() {
                        let _ = raft.trigger().reset_backoff(back).await;
                    }
                    let _ = raft.trigger().heartbeat().await;
                }
            });
        }
        self.in_flight.retain(|_, h| !h.is_finished());
        for (&peer, addr) in &self.peers {
            if self.in_flight.contains_key(&peer) {
                continue;
            }
            let beat = Beat {
                from: self.node_id,
                incarnation,
                leading: leading.remove(&peer).unwrap_or_default(),
                want: want.remove(&peer).unwrap_or_default(),
            };
            let payload = match encode(&beat) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a beat");
                    return;
                }
            };
            let send = send_beat(
                self.network.clone(),
                self.registry.clone(),
                self.node_id,
                peer,
                addr.clone(),
                payload,
            );
            self.in_flight.insert(peer, tokio::spawn(send));
        }
    }
}

/// Sends one beat; a peer that says a claim is stale gets that group's heartbeat, which
/// makes this deposed leader learn the newer term and step down.
async fn send_beat(
    network: Network,
    registry: WeakRegistry,
    me: NodeId,
    peer: NodeId,
    addr: String,
    payload: Bytes,
) {
    match network.beat(me, peer, &addr, payload, BEAT_TIMEOUT).await {
        Ok(reply) => {
            let Some(registry) = registry.upgrade() else {
                return;
            };
            let stale: Vec<RaftHandle> = reply
                .stale
                .iter()
                .filter_map(|&g| registry.get(g).ok())
                .collect();
            drop(registry);
            for raft in stale {
                let _ = raft.trigger().heartbeat().await;
            }
        }
        Err(e) => tracing::trace!(peer, error = %e, "beat not delivered"),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::network::decode;

    fn heard(at: Instant, leading: &[(u64, u64)]) -> Heard {
        Heard {
            at,
            incarnation: 1,
            leading: leading.iter().copied().collect(),
        }
    }

    #[test]
    fn a_claim_counts_only_at_the_replicas_term_or_later() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(50);
        let heard = HashMap::from([(2, heard(t0, &[(7, 3)])), (3, heard(t1, &[(7, 4), (8, 1)]))]);
        assert_eq!(claim(&heard, 7, 3), Some((3, t1)), "the latest claim");
        assert_eq!(claim(&heard, 7, 4), Some((3, t1)));
        assert_eq!(claim(&heard, 7, 5), None, "a deposed leader's claim");
        assert_eq!(claim(&heard, 8, 1), Some((3, t1)));
        assert_eq!(claim(&heard, 9, 0), None, "nobody claims it");
    }

    #[test]
    fn a_pre_vote_is_refused_only_for_a_live_leader_other_than_the_candidate() {
        let now = Instant::now();
        let fresh = Duration::from_millis(200);
        let recent = now - Duration::from_millis(50);
        let old = now - Duration::from_millis(250);
        let heard = HashMap::from([(2, heard(recent, &[(7, 3)])), (3, heard(old, &[(8, 3)]))]);
        let follower = Voter {
            me: 1,
            leading: false,
            term: 3,
        };
        assert_eq!(follower.stands_by(&heard, 7, (3, 4), now, fresh), Some(2));
        assert_eq!(
            follower.stands_by(&heard, 7, (2, 4), now, fresh),
            None,
            "the claimant itself may stand again"
        );
        assert_eq!(
            follower.stands_by(&heard, 8, (2, 4), now, fresh),
            None,
            "a claim heard too long ago"
        );
        let ahead = Voter {
            term: 4,
            ..follower
        };
        assert_eq!(
            ahead.stands_by(&heard, 7, (3, 5), now, fresh),
            None,
            "a claim from an older term"
        );
        let leader = Voter {
            leading: true,
            ..follower
        };
        assert_eq!(leader.stands_by(&heard, 9, (2, 4), now, fresh), Some(1));
        assert_eq!(
            leader.stands_by(&heard, 9, (2, 6), now, fresh),
            None,
            "a candidate terms ahead: this leader was deposed"
        );
    }

    #[test]
    fn election_timeouts_stay_within_the_tuning_and_back_off_to_a_cap() {
        let timing = Timing::of(&RaftTuning::default());
        let (min, max) = (timing.election_min, timing.election_max);
        for _ in 0..1000 {
            let t = timing.election_timeout(0);
            assert!((min..=max).contains(&t), "{t:?}");
            let t = timing.election_timeout(1);
            assert!((min..=max).contains(&t), "{t:?}");
            let t = timing.election_timeout(3);
            assert!((min * 4..=max * 4).contains(&t), "{t:?}");
            let t = timing.election_timeout(99);
            assert!((min * 8..=max * 8).contains(&t), "{t:?}");
        }
    }

    #[test]
    fn a_peer_comes_back_when_it_restarts_or_after_silence_and_asks_are_collected() {
        let pulse = Pulse::default();
        let beat = |incarnation, want: Vec<u64>| Beat {
            from: 2,
            incarnation,
            leading: vec![(5, 1)],
            want,
        };
        pulse.on_beat(beat(10, vec![]));
        pulse.on_beat(beat(10, vec![7]));
        pulse.on_beat(beat(11, vec![]));
        let asked = std::mem::take(&mut *lock(&pulse.asked));
        assert_eq!(asked.returned, vec![2, 2], "first heard, then restarted");
        assert_eq!(asked.want, HashSet::from([7]));
    }

    #[test]
    fn beats_round_trip_the_wire_encoding() {
        let beat = Beat {
            from: 2,
            incarnation: 99,
            leading: vec![(0, 4), (17, 2)],
            want: vec![3],
        };
        let back: Beat = decode(&encode(&beat).expect("encode")).expect("decode");
        assert_eq!(back, beat);
    }
}
