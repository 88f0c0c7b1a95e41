//! Rendering of `sluice group ...`: group lists, a group's members and per-partition
//! lag, and offset resets. Pure: strings in, strings out.

use std::fmt::Write as _;

use serde_json::{Value, json};
use sluice_client::{GroupDescription, GroupListing, TopicPartition};

use super::{OutputFormat, Table, pretty};

/// One partition of a described group: who reads it, where the group stands in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub tp: TopicPartition,
    pub member: Option<String>,
    pub committed: Option<u64>,
    /// The high watermark; `None` if it could not be read.
    pub end: Option<u64>,
}

impl PartitionLag {
    /// Records committed to the partition that the group has not committed past.
    pub fn lag(&self) -> Option<u64> {
        Some(self.end?.saturating_sub(self.committed?))
    }
}

fn cell(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn tp_list(tps: &[TopicPartition]) -> String {
    if tps.is_empty() {
        "-".into()
    } else {
        tps.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `group list`.
pub fn group_list(groups: &[GroupListing], format: OutputFormat) -> String {
    match format {
        OutputFormat::Table => {
            let mut t = Table::new(&["GROUP", "STATE", "MEMBERS"]);
            for g in groups {
                t.row(vec![
                    g.group_id.clone(),
                    g.state.clone(),
                    g.members.to_string(),
                ]);
            }
            t.render()
        }
        OutputFormat::Json => pretty(&Value::Array(
            groups
                .iter()
                .map(|g| json!({"group": g.group_id, "state": g.state, "members": g.members}))
                .collect(),
        )),
    }
}

/// `group describe`: the group, its members, then one row per partition.
pub fn group_description(
    d: &GroupDescription,
    partitions: &[PartitionLag],
    format: OutputFormat,
) -> String {
    match format {
        OutputFormat::Table => {
            let mut out = format!(
                "Group: {}  State: {}  Epoch: {}  Members: {}\n\n",
                d.group_id,
                d.state,
                d.group_epoch,
                d.members.len()
            );
            if !d.members.is_empty() {
                let mut t = Table::new(&[
                    "MEMBER",
                    "CLIENT",
                    "EPOCH",
                    "SUBSCRIPTION",
                    "ASSIGNED",
                    "REVOKING",
                ]);
                for m in &d.members {
                    let mut subscription = m.subscribed_topics.join(",");
                    if !m.subscribed_regex.is_empty() {
                        if !subscription.is_empty() {
                            subscription.push(',');
                        }
                        let _ = write!(subscription, "/{}/", m.subscribed_regex);
                    }
                    t.row(vec![
                        m.member_id.clone(),
                        m.client_id.clone(),
                        m.member_epoch.to_string(),
                        subscription,
                        tp_list(&m.assigned),
                        tp_list(&m.revoking),
                    ]);
                }
                out.push_str(&t.render());
                out.push('\n');
            }
            let mut t = Table::new(&[
                "TOPIC",
                "PARTITION",
                "MEMBER",
                "COMMITTED",
                "END-OFFSET",
                "LAG",
            ]);
            for p in partitions {
                t.row(vec![
                    p.tp.topic.clone(),
                    p.tp.partition.to_string(),
                    cell(p.member.as_deref()),
                    cell(p.committed),
                    cell(p.end),
                    cell(p.lag()),
                ]);
            }
            out.push_str(&t.render());
            out
        }
        OutputFormat::Json => pretty(&json!({
            "group": d.group_id,
            "state": d.state,
            "epoch": d.group_epoch,
            "members": d.members.iter().map(|m| json!({
                "member_id": m.member_id,
                "client_id": m.client_id,
                "epoch": m.member_epoch,
                "topics": m.subscribed_topics,
                "regex": m.subscribed_regex,
                "assigned": m.assigned.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "revoking": m.revoking.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "partitions": partitions.iter().map(|p| json!({
                "topic": p.tp.topic,
                "partition": p.tp.partition,
                "member": p.member,
                "committed": p.committed,
                "end_offset": p.end,
                "lag": p.lag(),
            })).collect::<Vec<_>>(),
        })),
    }
}

/// `group reset-offsets`: the offsets set, per partition.
pub fn offset_reset(
    group: &str,
    offsets: &[(TopicPartition, u64)],
    format: OutputFormat,
) -> String {
    match format {
        OutputFormat::Table => {
            let mut out = format!("Reset the committed offsets of group '{group}':\n");
            let mut t = Table::new(&["TOPIC", "PARTITION", "NEW-OFFSET"]);
            for (tp, o) in offsets {
                t.row(vec![
                    tp.topic.clone(),
                    tp.partition.to_string(),
                    o.to_string(),
                ]);
            }
            out.push_str(&t.render());
            out
        }
        OutputFormat::Json => pretty(&json!({
            "group": group,
            "offsets": offsets.iter().map(|(tp, o)| json!({
                "topic": tp.topic, "partition": tp.partition, "offset": o,
            })).collect::<Vec<_>>(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_client::MemberDescription;

    fn description() -> GroupDescription {
        GroupDescription {
            group_id: "billing".into(),
            state: "stable".into(),
            group_epoch: 4,
            members: vec![MemberDescription {
                member_id: "m1".into(),
                client_id: "sluice".into(),
                member_epoch: 2,
                subscribed_topics: vec!["orders".into()],
                subscribed_regex: String::new(),
                assigned: vec![TopicPartition::new("orders", 0)],
                revoking: vec![],
            }],
            offsets: Default::default(),
        }
    }

    fn rows() -> Vec<PartitionLag> {
        vec![
            PartitionLag {
                tp: TopicPartition::new("orders", 0),
                member: Some("m1".into()),
                committed: Some(7),
                end: Some(10),
            },
            PartitionLag {
                tp: TopicPartition::new("orders", 1),
                member: None,
                committed: None,
                end: Some(3),
            },
        ]
    }

    #[test]
    fn described_groups_show_members_and_lag_per_partition() {
        let text = group_description(&description(), &rows(), OutputFormat::Table);
        assert!(
            text.starts_with("Group: billing  State: stable  Epoch: 4  Members: 1\n"),
            "{text}"
        );
        assert!(
            text.contains("m1      sluice  2      orders        orders/0  -"),
            "{text}"
        );
        assert!(
            text.contains("orders  0          m1      7          10          3"),
            "{text}"
        );
        assert!(
            text.contains("orders  1          -       -          3           -"),
            "{text}"
        );
        let v: Value = serde_json::from_str(&group_description(
            &description(),
            &rows(),
            OutputFormat::Json,
        ))
        .unwrap();
        assert_eq!(v["partitions"][0]["lag"], 3);
        assert_eq!(v["partitions"][1]["lag"], Value::Null);
        assert_eq!(v["members"][0]["assigned"][0], "orders/0");
    }

    #[test]
    fn group_lists_and_resets() {
        let groups = vec![GroupListing {
            group_id: "billing".into(),
            state: "empty".into(),
            members: 0,
        }];
        assert_eq!(
            group_list(&groups, OutputFormat::Table),
            "GROUP    STATE  MEMBERS\nbilling  empty  0\n"
        );
        let reset = offset_reset(
            "g",
            &[(TopicPartition::new("t", 1), 0)],
            OutputFormat::Table,
        );
        assert!(
            reset.ends_with("TOPIC  PARTITION  NEW-OFFSET\nt      1          0\n"),
            "{reset}"
        );
        let v: Value = serde_json::from_str(&offset_reset(
            "g",
            &[(TopicPartition::new("t", 1), 0)],
            OutputFormat::Json,
        ))
        .unwrap();
        assert_eq!(v["offsets"][0]["offset"], 0);
    }
}
