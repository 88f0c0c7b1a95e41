//! The server-side assignor: which member of a group should own which partition.
//!
//! Sticky and balanced, in the spirit of Kafka's KIP-848 `uniform` assignor. Starting
//! from the previous target, every partition keeps its owner while that member still
//! exists and is subscribed to its topic; partitions without an owner go to the
//! eligible member holding the fewest; then partitions move, one at a time, from the
//! most loaded member to a less loaded eligible one while the two differ by more than
//! one. With identical subscriptions this ends with no member holding more than
//! ceil(P/M) partitions, and only the partitions that must move do: a member that
//! joins takes its share from the most loaded, a member that leaves has its own
//! partitions spread over the rest. With different subscriptions the balance is the
//! best such moves reach.
//!
//! Pure: no I/O, no clock, deterministic (ties go to the smaller member id).
//! Must never assign a partition to a member not subscribed to its topic.

use std::collections::{BTreeMap, BTreeSet};

use super::TopicPartition;

/// Member id → the partitions it should own.
pub type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

/// Computes the target assignment of `members` (id → subscribed topics) over the
/// partitions of `topics` (name → partition count), sticking to `previous`.
pub fn assign(
    members: &BTreeMap<String, BTreeSet<String>>,
    topics: &BTreeMap<String, u32>,
    previous: &Assignment,
) -> Assignment {
    let mut out: Assignment = members
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    let eligible = |member: &str, topic: &str| {
        members.get(member).is_some_and(|t| t.contains(topic)) && topics.contains_key(topic)
    };
    let exists = |tp: &TopicPartition| topics.get(&tp.topic).is_some_and(|&n| tp.partition < n);

    let mut owned: BTreeSet<TopicPartition> = BTreeSet::new();
    for (member, tps) in previous {
        for tp in tps {
            if exists(tp) && eligible(member, &tp.topic) && owned.insert(tp.clone()) {
                out.entry(member.clone()).or_default().insert(tp.clone());
            }
        }
    }

    for (topic, &count) in topics {
        for partition in 0..count {
            let tp = TopicPartition::new(topic.clone(), partition);
            if owned.contains(&tp) {
                continue;
            }
            let least = out
                .iter()
                .filter(|(m, _)| eligible(m, topic))
                .min_by_key(|(m, tps)| (tps.len(), (*m).clone()))
                .map(|(m, _)| m.clone());
            if let Some(member) = least {
                owned.insert(tp.clone());
                out.entry(member).or_default().insert(tp);
            }
        }
    }

    balance(&mut out, &eligible);
    out
}

/// Moves partitions from heavier to lighter eligible members until no move narrows a
/// gap of more than one. Every move lowers the sum of squared loads, so this ends.
fn balance(out: &mut Assignment, eligible: &impl Fn(&str, &str) -> bool) {
    loop {
        let mut by_load: Vec<(usize, String)> =
            out.iter().map(|(m, tps)| (tps.len(), m.clone())).collect();
        by_load.sort();
        let mut moved = false;
        'search: for (heavy_load, heavy) in by_load.iter().rev() {
            for (light_load, light) in &by_load {
                if light_load + 1 >= *heavy_load {
                    break;
                }
                let candidate = out[heavy]
                    .iter()
                    .rev()
                    .find(|tp| eligible(light, &tp.topic))
                    .cloned();
                if let Some(tp) = candidate {
                    if let Some(tps) = out.get_mut(heavy) {
                        tps.remove(&tp);
                    }
                    out.entry(light.clone()).or_default().insert(tp);
                    moved = true;
                    break 'search;
                }
            }
        }
        if !moved {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subs(members: &[&str], topics: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
        members
            .iter()
            .map(|m| {
                (
                    m.to_string(),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn counts(a: &Assignment) -> Vec<usize> {
        a.values().map(BTreeSet::len).collect()
    }

    fn owners(a: &Assignment) -> BTreeMap<TopicPartition, String> {
        a.iter()
            .flat_map(|(m, tps)| tps.iter().map(move |tp| (tp.clone(), m.clone())))
            .collect()
    }

    #[test]
    fn twelve_partitions_over_three_members_are_four_each() {
        let topics = BTreeMap::from([("t".to_string(), 12)]);
        let a = assign(&subs(&["a", "b", "c"], &["t"]), &topics, &Assignment::new());
        assert_eq!(counts(&a), [4, 4, 4]);
        assert_eq!(owners(&a).len(), 12);
    }

    #[test]
    fn a_joining_member_takes_partitions_only_from_others_surplus() {
        let topics = BTreeMap::from([("t".to_string(), 12)]);
        let before = assign(&subs(&["a", "b", "c"], &["t"]), &topics, &Assignment::new());
        let after = assign(&subs(&["a", "b", "c", "d"], &["t"]), &topics, &before);
        assert_eq!(counts(&after), [3, 3, 3, 3]);
        for (tp, owner) in owners(&after) {
            let old = &owners(&before)[&tp];
            assert!(owner == *old || owner == "d", "{tp} moved {old} -> {owner}");
        }
    }

    #[test]
    fn a_leaving_members_partitions_go_to_the_others() {
        let topics = BTreeMap::from([("t".to_string(), 12)]);
        let before = assign(&subs(&["a", "b", "c"], &["t"]), &topics, &Assignment::new());
        let after = assign(&subs(&["a", "c"], &["t"]), &topics, &before);
        assert_eq!(counts(&after), [6, 6]);
        for (tp, owner) in owners(&before) {
            if owner != "b" {
                assert_eq!(owners(&after)[&tp], owner, "{tp} should not move");
            }
        }
    }

    #[test]
    fn partitions_go_only_to_subscribers() {
        let mut members = subs(&["a"], &["x"]);
        members.extend(subs(&["b"], &["x", "y"]));
        let topics = BTreeMap::from([("x".to_string(), 2), ("y".to_string(), 4)]);
        let a = assign(&members, &topics, &Assignment::new());
        assert!(a["a"].iter().all(|tp| tp.topic == "x"));
        assert_eq!(owners(&a).len(), 6);
        // a can only take x's partitions: both of them, b the rest.
        assert_eq!(counts(&a), [2, 4]);
    }

    #[test]
    fn vanished_topics_and_partitions_are_dropped() {
        let topics = BTreeMap::from([("t".to_string(), 2)]);
        let previous = Assignment::from([(
            "a".to_string(),
            BTreeSet::from([
                TopicPartition::new("t", 5),
                TopicPartition::new("gone", 0),
                TopicPartition::new("t", 1),
            ]),
        )]);
        let a = assign(&subs(&["a"], &["t", "gone"]), &topics, &previous);
        assert_eq!(
            a["a"],
            BTreeSet::from([TopicPartition::new("t", 0), TopicPartition::new("t", 1)])
        );
    }

    fn arb_case() -> impl Strategy<Value = (Vec<String>, u32, Vec<String>, u64)> {
        (
            prop::collection::btree_set("[a-f]{1,2}", 1..8),
            1u32..40,
            prop::collection::btree_set("[a-f]{1,2}", 0..8),
            any::<u64>(),
        )
            .prop_map(|(a, p, b, seed)| (a.into_iter().collect(), p, b.into_iter().collect(), seed))
    }

    proptest! {
        #[test]
        fn homogeneous_assignments_are_complete_balanced_and_sticky(
            (first, partitions, second, _seed) in arb_case()
        ) {
            let topics = BTreeMap::from([("t".to_string(), partitions)]);
            let m1: Vec<&str> = first.iter().map(String::as_str).collect();
            let before = assign(&subs(&m1, &["t"]), &topics, &Assignment::new());
            let m2: Vec<&str> = second.iter().map(String::as_str).collect();
            let after = assign(&subs(&m2, &["t"]), &topics, &before);
            for (members, a) in [(&m1, &before), (&m2, &after)] {
                let o = owners(a);
                if members.is_empty() {
                    prop_assert!(o.is_empty());
                    continue;
                }
                // Every partition exactly once (owners() would hide a duplicate).
                let total: usize = counts(a).iter().sum();
                prop_assert_eq!(total, partitions as usize);
                prop_assert_eq!(o.len(), partitions as usize);
                let ceil = (partitions as usize).div_ceil(members.len());
                let (min, max) = (counts(a).into_iter().min(), counts(a).into_iter().max());
                prop_assert!(max.unwrap_or(0) <= ceil, "max {:?} > ceil {}", max, ceil);
                prop_assert!(max.unwrap_or(0) - min.unwrap_or(0) <= 1);
            }
            // Sticky: a member that stays keeps at least min(what it had, its share).
            if !m2.is_empty() {
                let floor = partitions as usize / m2.len();
                for m in m1.iter().filter(|m| m2.contains(m)) {
                    let kept = before[*m].intersection(&after[*m]).count();
                    prop_assert!(kept >= before[*m].len().min(floor), "{} kept {}", m, kept);
                }
            }
        }

        #[test]
        fn mixed_subscriptions_only_assign_subscribed_topics(
            (members, partitions, _other, seed) in arb_case()
        ) {
            let names = ["x", "y", "z"];
            let topics: BTreeMap<String, u32> = names
                .iter()
                .enumerate()
                .map(|(i, t)| (t.to_string(), partitions + i as u32))
                .collect();
            let subscriptions: BTreeMap<String, BTreeSet<String>> = members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let bits = (seed >> (3 * i)) & 0b111;
                    let set = names
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| bits & (1 << k) != 0)
                        .map(|(_, t)| t.to_string())
                        .collect();
                    (m.clone(), set)
                })
                .collect();
            let a = assign(&subscriptions, &topics, &Assignment::new());
            let o = owners(&a);
            for (topic, &count) in &topics {
                let subscribed = subscriptions.values().any(|s| s.contains(topic));
                for p in 0..count {
                    let tp = TopicPartition::new(topic.clone(), p);
                    prop_assert_eq!(o.contains_key(&tp), subscribed, "{}", tp);
                    if let Some(owner) = o.get(&tp) {
                        prop_assert!(subscriptions[owner].contains(topic));
                    }
                }
            }
            let total: usize = counts(&a).iter().sum();
            prop_assert_eq!(total, o.len());
        }
    }
}
