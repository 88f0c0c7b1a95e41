//! A cluster under attack: real brokers that reach each other only through
//! fault-injecting proxies, and the faults a test can throw at it.
//!
//! [`FaultyCluster`] starts `n` brokers where broker `a` dials broker `b` through its
//! own [`Proxy`] (`--peer-dial`), one per ordered pair, while clients reach every broker
//! directly. A test can then kill (SIGKILL), pause (SIGSTOP), resume and restart any
//! broker, and cut, one-way block or delay the links between brokers.
//!
//! [`Schedule`] is a seeded random sequence of such faults; the seed comes from
//! `SLUICE_FAULT_SEED` when set (to replay a failure) and is always printed.
//!
//! Owns the brokers (through [`Cluster`]) and the proxies, which run on a runtime of
//! their own so that they keep forwarding while a test thread is busy or blocked.
//! Dropping it kills every broker and stops every proxy, even when a test fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::checker::{PartitionReplicas, ReplicaLog};
use crate::inspect::{self, describe_on, eventually};
use crate::proxy::{Direction, Link, Proxy};
use crate::{BrokerProcess, Cluster};

/// Environment variable that forces the seed of a random schedule.
pub const SEED_ENV: &str = "SLUICE_FAULT_SEED";

/// Brokers behind proxies, and the proxies.
pub struct FaultyCluster {
    pub cluster: Cluster,
    /// `(from, to)` → the proxy `from` dials `to` through.
    links: BTreeMap<(u64, u64), Proxy>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultyCluster {
    /// Starts `n` brokers (ids 1..=n), data under `root`, every broker-to-broker
    /// connection through a proxy, and returns when every broker listens. In an async
    /// test, the runtime must be multi-threaded (the wait blocks one worker).
    pub fn start(program: impl Into<PathBuf>, root: &Path, n: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let mut cluster = Cluster::new(program, root, n);
        let addrs: BTreeMap<u64, String> = cluster
            .brokers
            .iter()
            .map(|b| (b.node_id, b.addr.clone()))
            .collect();
        let mut links = BTreeMap::new();
        for &from in addrs.keys() {
            for (&to, addr) in &addrs {
                if from != to {
                    let proxy = Proxy::start(runtime.handle(), addr.clone()).expect("start proxy");
                    links.insert((from, to), proxy);
                }
            }
        }
        for b in cluster.brokers.iter_mut() {
            let dial = links
                .iter()
                .filter(|((from, _), _)| *from == b.node_id)
                .map(|((_, to), p)| format!("{to}={}", p.addr()))
                .collect::<Vec<_>>()
                .join(",");
            b.add_args(["--peer-dial".to_string(), dial]);
        }
        let mut faulty = Self {
            cluster,
            links,
            runtime: Some(runtime),
        };
        tokio::task::block_in_place(|| faulty.cluster.start_stopped());
        faulty
    }

    pub fn ids(&self) -> Vec<u64> {
        self.cluster.brokers.iter().map(|b| b.node_id).collect()
    }

    /// Every broker's client address.
    pub fn addrs(&self) -> Vec<String> {
        self.cluster.addrs()
    }

    pub fn addr(&self, id: u64) -> String {
        self.broker_ref(id).addr.clone()
    }

    fn broker_ref(&self, id: u64) -> &BrokerProcess {
        self.cluster
            .brokers
            .iter()
            .find(|b| b.node_id == id)
            .expect("no broker with that id")
    }

    pub fn broker(&mut self, id: u64) -> &mut BrokerProcess {
        self.cluster.broker(id)
    }

    /// The proxy `from` dials `to` through.
    pub fn link(&self, from: u64, to: u64) -> &Proxy {
        self.links
            .get(&(from, to))
            .expect("no link between those brokers")
    }

    /// Whether every link has carried traffic both ways: the brokers do talk through
    /// the proxies (and so the faults below reach them).
    pub fn every_link_used(&self) -> bool {
        self.links
            .values()
            .all(|p| p.bytes(Direction::Forward) > 0 && p.bytes(Direction::Backward) > 0)
    }

    /// Cuts `id` off from every other broker, both ways; clients still reach it.
    pub fn isolate(&self, id: u64) {
        for ((from, to), p) in &self.links {
            if *from == id || *to == id {
                p.cut();
            }
        }
    }

    /// Cuts the two links between `a` and `b`.
    pub fn cut_between(&self, a: u64, b: u64) {
        self.link(a, b).cut();
        self.link(b, a).cut();
    }

    /// Nothing `from` sends reaches `to` (requests on its own connections, answers
    /// on `to`'s), while everything `to` sends reaches `from`.
    pub fn block_one_way(&self, from: u64, to: u64) {
        self.link(from, to).set(Link::one_way(Direction::Forward));
        self.link(to, from).set(Link::one_way(Direction::Backward));
    }

    /// Everything to and from `id` is `delay` late, each way.
    pub fn delay(&self, id: u64, delay: Duration) {
        for ((from, to), p) in &self.links {
            if *from == id || *to == id {
                p.set(Link::delayed(delay));
            }
        }
    }

    /// Every link passes everything again.
    pub fn heal_network(&self) {
        for p in self.links.values() {
            p.heal();
        }
    }

    pub fn kill(&mut self, id: u64) {
        self.broker(id).kill();
    }

    pub fn pause(&mut self, id: u64) {
        self.broker(id).pause();
    }

    pub fn resume(&mut self, id: u64) {
        self.broker(id).resume();
    }

    /// Kills `id` if running and starts it again; blocks until it listens.
    pub fn restart(&mut self, id: u64) {
        tokio::task::block_in_place(|| self.broker(id).restart());
    }

    /// Heals everything: the network, paused brokers, stopped brokers (started all at
    /// once). Blocks until every broker listens.
    pub fn heal_all(&mut self) {
        self.heal_network();
        for b in self.cluster.brokers.iter_mut() {
            b.resume();
        }
        tokio::task::block_in_place(|| self.cluster.start_stopped());
    }

    /// Every broker's log, for failure messages.
    pub fn logs(&self) -> String {
        self.cluster.logs()
    }

    /// The leader of each partition of `topic`: the broker that, asked about its own
    /// replica, names itself (so a stale follower's view does not count).
    pub async fn leaders(&self, topic: &str, timeout: Duration) -> Result<Vec<u64>, String> {
        eventually(timeout, || async move {
            let mut found: BTreeMap<u32, u64> = BTreeMap::new();
            let mut count = 0;
            for id in self.ids() {
                if self.broker_ref(id).is_paused() {
                    continue;
                }
                if let Some(d) = describe_on(&self.addr(id), topic).await {
                    count = d.partitions.len();
                    for p in d.partitions.iter().filter(|p| p.leader == id) {
                        found.insert(p.partition, id);
                    }
                }
            }
            if count > 0 && found.len() == count {
                return Ok(found.into_values().collect());
            }
            Err(format!(
                "{topic}: not every partition has a broker naming itself leader (found {found:?})"
            ))
        })
        .await
    }

    /// Waits until broker `id` has caught up: its replica of every partition of
    /// `topic` holds what that partition's leader had committed when the wait began.
    /// (The leader's in-sync set would not do under load: a follower that is never the
    /// fastest to acknowledge is always a few entries short of the latest commit.)
    pub async fn wait_caught_up(
        &self,
        id: u64,
        topic: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let leaders = self.leaders(topic, timeout).await?;
        let mut target = Vec::new();
        for (p, &leader) in leaders.iter().enumerate() {
            let hw = describe_on(&self.addr(leader), topic)
                .await
                .and_then(|d| d.partitions.into_iter().find(|d| d.partition == p as u32))
                .map(|d| d.high_watermark)
                .ok_or_else(|| format!("leader {leader} did not describe {topic}/{p}"))?;
            target.push(hw);
        }
        let addr = self.addr(id);
        let (addr, target) = (&addr, &target);
        eventually(timeout, || async move {
            let have: Vec<u64> = describe_on(addr, topic)
                .await
                .map(|d| d.partitions.iter().map(|p| p.high_watermark).collect())
                .unwrap_or_default();
            let behind: Vec<usize> = (0..target.len())
                .filter(|&p| have.get(p).is_none_or(|h| h < &target[p]))
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            Err(format!(
                "broker {id} has not caught up on partitions {behind:?} of {topic}: high watermarks {have:?}, want at least {target:?}"
            ))
        })
        .await
    }

    /// Once every broker runs again: waits until all replicas of `topic` agree on each
    /// partition's high watermark (at least `min` for each), then reads every partition
    /// from every broker.
    pub async fn read_all(
        &self,
        topic: &str,
        min: &[u64],
        timeout: Duration,
    ) -> Result<Vec<PartitionReplicas>, String> {
        let addrs = self.addrs();
        let hw = inspect::converged(&addrs, topic, min, timeout).await?;
        let mut out = Vec::new();
        for (p, &high_watermark) in hw.iter().enumerate() {
            let mut replicas = Vec::new();
            for id in self.ids() {
                let records = inspect::read_replica(&self.addr(id), topic, p as u32).await?;
                replicas.push(ReplicaLog {
                    broker: id,
                    records,
                });
            }
            out.push(PartitionReplicas {
                partition: p as u32,
                high_watermark,
                replicas,
            });
        }
        Ok(out)
    }
}

impl Drop for FaultyCluster {
    fn drop(&mut self) {
        for b in self.cluster.brokers.iter_mut() {
            b.kill();
        }
        self.links.clear();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The seed for a random schedule: `SLUICE_FAULT_SEED` if set, else fresh. Printed
/// either way, so a failing run can be replayed.
pub fn seed() -> u64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_ENV}={s:?} is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    println!("fault schedule seed: {seed} (replay with {SEED_ENV}={seed})");
    seed
}

/// A small deterministic generator (SplitMix64): the same seed gives the same
/// schedule on every machine and every version of every crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Uniform in `[lo, hi)` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

/// One fault of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, restarted when the fault ends.
    Kill(u64),
    /// SIGSTOP, SIGCONT when the fault ends.
    Pause(u64),
    /// Cut off from every other broker.
    Isolate(u64),
    /// Nothing `from` sends reaches `to`.
    OneWay { from: u64, to: u64 },
    /// Both links between two brokers cut.
    CutBetween(u64, u64),
    /// Everything to and from a broker delayed.
    Delay(u64, Duration),
}

/// A fault, when it starts (after the previous one ended) and how long it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub after: Duration,
    pub fault: Fault,
    pub lasts: Duration,
}

/// A seeded sequence of faults, applied one after another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub seed: u64,
    pub steps: Vec<Step>,
}

impl Schedule {
    /// `steps` random faults on brokers `ids`, each lasting 0.5–3 s after a quiet gap
    /// of up to 1 s.
    pub fn random(seed: u64, ids: &[u64], steps: usize) -> Self {
        let mut rng = Rng::new(seed);
        let steps = (0..steps)
            .map(|_| {
                let a = *rng.pick(ids);
                let others: Vec<u64> = ids.iter().copied().filter(|&i| i != a).collect();
                let b = *rng.pick(&others);
                let fault = match rng.below(6) {
                    0 => Fault::Kill(a),
                    1 => Fault::Pause(a),
                    2 => Fault::Isolate(a),
                    3 => Fault::OneWay { from: a, to: b },
                    4 => Fault::CutBetween(a, b),
                    _ => Fault::Delay(a, rng.millis(20, 200)),
                };
                Step {
                    after: rng.millis(0, 1000),
                    fault,
                    lasts: rng.millis(500, 3000),
                }
            })
            .collect();
        Self { seed, steps }
    }

    /// Runs every step against `cluster`, healing each fault before the next.
    pub async fn run(&self, cluster: &mut FaultyCluster) {
        for (i, step) in self.steps.iter().enumerate() {
            tokio::time::sleep(step.after).await;
            println!("fault {i}: {:?} for {:?}", step.fault, step.lasts);
            apply(cluster, step.fault);
            tokio::time::sleep(step.lasts).await;
            heal(cluster, step.fault);
        }
    }
}

fn apply(cluster: &mut FaultyCluster, fault: Fault) {
    match fault {
        Fault::Kill(id) => cluster.kill(id),
        Fault::Pause(id) => cluster.pause(id),
        Fault::Isolate(id) => cluster.isolate(id),
        Fault::OneWay { from, to } => cluster.block_one_way(from, to),
        Fault::CutBetween(a, b) => cluster.cut_between(a, b),
        Fault::Delay(id, d) => cluster.delay(id, d),
    }
}

fn heal(cluster: &mut FaultyCluster, fault: Fault) {
    match fault {
        Fault::Kill(_) | Fault::Pause(_) => cluster.heal_all(),
        Fault::Isolate(_) | Fault::OneWay { .. } | Fault::CutBetween(..) | Fault::Delay(..) => {
            cluster.heal_network()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_schedule() {
        let a = Schedule::random(42, &[1, 2, 3], 20);
        assert_eq!(a, Schedule::random(42, &[1, 2, 3], 20));
        assert_ne!(a, Schedule::random(43, &[1, 2, 3], 20));
    }

    #[test]
    fn schedules_mix_faults_on_every_broker_within_bounds() {
        let s = Schedule::random(7, &[1, 2, 3], 200);
        let kinds: std::collections::HashSet<std::mem::Discriminant<Fault>> = s
            .steps
            .iter()
            .map(|st| std::mem::discriminant(&st.fault))
            .collect();
        assert_eq!(kinds.len(), 6, "every kind of fault appears");
        for st in &s.steps {
            assert!(st.after < Duration::from_secs(1));
            assert!((Duration::from_millis(500)..Duration::from_secs(3)).contains(&st.lasts));
            match st.fault {
                Fault::OneWay { from: a, to: b } | Fault::CutBetween(a, b) => {
                    assert_ne!(a, b);
                    assert!((1..=3).contains(&a) && (1..=3).contains(&b));
                }
                Fault::Kill(a) | Fault::Pause(a) | Fault::Isolate(a) | Fault::Delay(a, _) => {
                    assert!((1..=3).contains(&a));
                }
            }
        }
    }
}
