//! `sluice group list|describe|reset-offsets|delete`: consumer groups.
//!
//! `describe` adds what the coordinator does not know: each partition's end offset
//! (its high watermark, from the partition's leader) and so the group's lag.
//! `reset-offsets` works out the new offsets here (earliest, latest, an offset, a
//! time, or a shift of the committed ones, always kept inside the log) and sets them
//! in one request, which the coordinator refuses while the group has members unless
//! `--force`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use sluice_client::{Admin, ClientError, Offset, TopicPartition};

use crate::output::{self, PartitionLag};
use crate::{GlobalArgs, Io, args};

/// `sluice group ...`
#[derive(Debug, Clone, Subcommand)]
pub enum GroupCommand {
    /// List the consumer groups.
    List,
    /// Show a group's members and, per partition, its owner, committed offset, end
    /// offset and lag.
    Describe {
        /// Group id.
        group: String,
    },
    /// Set a group's committed offsets (refused while it has members unless --force).
    ResetOffsets(ResetArgs),
    /// Delete a group (it must have no members) and its committed offsets.
    Delete {
        /// Group id.
        group: String,
    },
}

/// `sluice group reset-offsets`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("to").required(true).multiple(false)))]
pub struct ResetArgs {
    /// Group id.
    pub group: String,
    /// Topic whose offsets to reset.
    #[arg(long)]
    pub topic: String,
    /// Only this partition (default: every partition of the topic).
    #[arg(long, value_name = "P")]
    pub partition: Option<u32>,
    /// The oldest record still kept: replay everything.
    #[arg(long, group = "to")]
    pub to_earliest: bool,
    /// The end: skip everything committed so far.
    #[arg(long, group = "to")]
    pub to_latest: bool,
    /// This offset (kept inside the log).
    #[arg(long, group = "to", value_name = "N")]
    pub to_offset: Option<u64>,
    /// The first record at or after this time: RFC 3339 or ms since the epoch.
    #[arg(long, group = "to", value_name = "TS", value_parser = args::parse_timestamp)]
    pub to_datetime: Option<i64>,
    /// Move the committed offsets by N (negative: back), kept inside the log.
    #[arg(long, group = "to", value_name = "N", allow_hyphen_values = true)]
    pub shift_by: Option<i64>,
    /// Reset even while the group has members (they are removed, rejoin, and read
    /// from the new offsets).
    #[arg(long)]
    pub force: bool,
}

pub async fn run(cmd: GroupCommand, global: &GlobalArgs, io: &mut Io) -> anyhow::Result<()> {
    let admin = Admin::new(global.connect().await?);
    let format = global.output;
    let text = match cmd {
        GroupCommand::List => output::group_list(&admin.list_groups().await?, format),
        GroupCommand::Describe { group } => {
            let d = admin
                .describe_group(&group)
                .await
                .with_context(|| format!("cannot describe group '{group}'"))?;
            let partitions = partition_lags(&admin, &d).await;
            output::group_description(&d, &partitions, format)
        }
        GroupCommand::ResetOffsets(a) => {
            let offsets = target_offsets(&admin, &a)
                .await
                .with_context(|| format!("cannot reset offsets of group '{}'", a.group))?;
            admin
                .reset_offsets(&a.group, offsets.clone(), a.force)
                .await
                .map_err(|e| match e {
                    ClientError::GroupNotEmpty { .. } => anyhow::anyhow!(
                        "{e}: stop its consumers first, or pass --force to remove them"
                    ),
                    e => anyhow::Error::new(e),
                })
                .with_context(|| format!("cannot reset offsets of group '{}'", a.group))?;
            let list: Vec<(TopicPartition, u64)> = offsets.into_iter().collect();
            output::offset_reset(&a.group, &list, format)
        }
        GroupCommand::Delete { group } => {
            admin
                .delete_group(&group)
                .await
                .with_context(|| format!("cannot delete group '{group}'"))?;
            output::action(
                &format!("Deleted group '{group}'."),
                json!({"deleted": group}),
                format,
            )
        }
    };
    io.stdout.write_all(text.as_bytes())?;
    Ok(())
}

/// One row per partition of every topic the group reads or has committed.
async fn partition_lags(admin: &Admin, d: &sluice_client::GroupDescription) -> Vec<PartitionLag> {
    let mut topics: BTreeSet<String> = d.offsets.keys().map(|tp| tp.topic.clone()).collect();
    for m in &d.members {
        topics.extend(m.subscribed_topics.iter().cloned());
        topics.extend(m.assigned.iter().map(|tp| tp.topic.clone()));
    }
    let mut tps: BTreeSet<TopicPartition> = d.offsets.keys().cloned().collect();
    for topic in &topics {
        if let Ok(t) = admin.connection().topic(topic).await {
            tps.extend(
                t.partitions
                    .iter()
                    .map(|p| TopicPartition::new(topic, p.partition)),
            );
        }
    }
    let mut rows = Vec::with_capacity(tps.len());
    for tp in tps {
        let end = admin.list_offset(&tp, Offset::Latest).await.ok();
        rows.push(PartitionLag {
            member: d.owner(&tp).map(|m| m.member_id.clone()),
            committed: d.offsets.get(&tp).map(|o| o.offset),
            end,
            tp,
        });
    }
    rows
}

/// The offsets `a` asks for, per partition.
async fn target_offsets(
    admin: &Admin,
    a: &ResetArgs,
) -> anyhow::Result<BTreeMap<TopicPartition, u64>> {
    let topic = admin
        .connection()
        .topic(&a.topic)
        .await
        .with_context(|| format!("cannot read topic '{}'", a.topic))?;
    let count = topic.partition_count();
    let partitions: Vec<u32> = match a.partition {
        Some(p) if p >= count => bail!(
            "topic '{}' has {count} partition(s); --partition {p} does not exist",
            a.topic
        ),
        Some(p) => vec![p],
        None => topic.partitions.iter().map(|p| p.partition).collect(),
    };
    let committed = if a.shift_by.is_some() {
        admin.group_offsets(&a.group).await?
    } else {
        BTreeMap::new()
    };
    let mut out = BTreeMap::new();
    for p in partitions {
        let tp = TopicPartition::new(&a.topic, p);
        let earliest = admin.list_offset(&tp, Offset::Earliest).await?;
        let latest = admin.list_offset(&tp, Offset::Latest).await?;
        let wanted = if a.to_earliest {
            earliest
        } else if a.to_latest {
            latest
        } else if let Some(n) = a.to_offset {
            n
        } else if let Some(ts) = a.to_datetime {
            admin.list_offset(&tp, Offset::Timestamp(ts)).await?
        } else if let Some(shift) = a.shift_by {
            let Some(current) = committed.get(&tp) else {
                bail!(
                    "{tp} has no committed offset to shift; use --to-earliest, --to-latest or --to-offset"
                );
            };
            current.offset.saturating_add_signed(shift)
        } else {
            bail!(
                "say where to: --to-earliest, --to-latest, --to-offset, --to-datetime or --shift-by"
            );
        };
        out.insert(tp, wanted.clamp(earliest, latest.max(earliest)));
    }
    Ok(out)
}
