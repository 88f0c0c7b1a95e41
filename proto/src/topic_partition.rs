//! [`TopicPartition`]: the name of one partition, shared by the client (assignments,
//! offsets) and the broker (group coordinator state). Must never grow behaviour
//! beyond naming: it is a key in maps on both sides.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::v1;

/// One partition of one topic.
///
/// ```
/// use sluice_proto::TopicPartition;
///
/// let tp = TopicPartition::new("orders", 3);
/// assert_eq!(tp.to_string(), "orders/3");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    /// `topic`'s partition `partition`.
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

impl TopicPartition {
    /// Partitions grouped by topic, as the wire carries them: topics in order, each
    /// with its partitions in order.
    pub fn to_wire(tps: impl IntoIterator<Item = TopicPartition>) -> Vec<v1::TopicPartitions> {
        let mut sorted: Vec<TopicPartition> = tps.into_iter().collect();
        sorted.sort();
        let mut out: Vec<v1::TopicPartitions> = Vec::new();
        for tp in sorted {
            match out.last_mut() {
                Some(last) if last.topic == tp.topic => last.partitions.push(tp.partition),
                _ => out.push(v1::TopicPartitions {
                    topic: tp.topic,
                    partitions: vec![tp.partition],
                }),
            }
        }
        out
    }

    /// The partitions of a wire list, one by one.
    pub fn from_wire(list: Vec<v1::TopicPartitions>) -> impl Iterator<Item = TopicPartition> {
        list.into_iter().flat_map(|t| {
            let topic = t.topic;
            t.partitions
                .into_iter()
                .map(move |p| TopicPartition::new(topic.clone(), p))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn partition_lists_are_grouped_by_topic_and_read_back() {
        let tps = vec![
            TopicPartition::new("b", 1),
            TopicPartition::new("a", 2),
            TopicPartition::new("a", 0),
        ];
        let wire = TopicPartition::to_wire(tps.clone());
        assert_eq!(wire.len(), 2);
        assert_eq!(
            (wire[0].topic.as_str(), wire[0].partitions.as_slice()),
            ("a", &[0, 2][..])
        );
        let mut back: Vec<TopicPartition> = TopicPartition::from_wire(wire).collect();
        back.sort();
        let mut want = tps;
        want.sort();
        assert_eq!(back, want);
    }

    #[test]
    fn partition_lists_round_trip_grouped_by_topic() {
        let set: BTreeSet<TopicPartition> = [("a", 0), ("a", 2), ("b", 1)]
            .into_iter()
            .map(|(t, p)| TopicPartition::new(t, p))
            .collect();
        let wire = TopicPartition::to_wire(set.clone());
        assert_eq!(wire.len(), 2);
        assert_eq!(wire[0].partitions, [0, 2]);
        assert_eq!(
            TopicPartition::from_wire(wire).collect::<BTreeSet<_>>(),
            set
        );
    }
}
