//! `sluice topic create|list|describe|delete|alter`.

use std::io::Write;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use sluice_client::{Admin, NewTopic};

use crate::{GlobalArgs, Io, args, output};

/// `sluice topic ...`
#[derive(Debug, Clone, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List topics.
    List {
        /// Also list internal topics (__consumer_offsets).
        #[arg(long)]
        internal: bool,
    },
    /// Show a topic's partitions: leader, replicas, in-sync replicas, offsets.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and all its data.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Change a topic (raise its partition count).
    Alter(AlterArgs),
}

/// `sluice topic create`.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    #[arg(long, short = 'p', value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Replicas per partition (default: the broker's default).
    #[arg(long, short = 'r', value_parser = clap::value_parser!(u32).range(1..))]
    pub replication_factor: Option<u32>,
    /// A topic config entry, key=value (repeatable).
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = args::parse_key_value)]
    pub configs: Vec<(String, String)>,
}

/// `sluice topic alter`.
#[derive(Debug, Clone, Args)]
pub struct AlterArgs {
    /// Topic name.
    pub name: String,
    /// The new (larger) partition count.
    #[arg(long, short = 'p', value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
}

pub async fn run(cmd: TopicCommand, global: &GlobalArgs, io: &mut Io) -> anyhow::Result<()> {
    let admin = Admin::new(global.connect().await?);
    let format = global.output;
    let text = match cmd {
        TopicCommand::Create(a) => {
            let mut topic = NewTopic::new(&a.name, a.partitions);
            topic.replication_factor = a.replication_factor;
            topic.configs = a.configs.into_iter().collect();
            admin
                .create_topic(topic)
                .await
                .with_context(|| format!("cannot create topic '{}'", a.name))?;
            let rf = a.replication_factor.map_or_else(
                || "the default replication factor".to_owned(),
                |r| format!("replication factor {r}"),
            );
            output::action(
                &format!(
                    "Created topic '{}' with {} partition(s) and {rf}.",
                    a.name, a.partitions
                ),
                json!({"created": a.name, "partitions": a.partitions, "replication_factor": a.replication_factor}),
                format,
            )
        }
        TopicCommand::List { internal } => {
            output::topic_list(&admin.list_topics_with(internal).await?, format)
        }
        TopicCommand::Describe { name } => {
            let d = admin
                .describe_topic(&name)
                .await
                .with_context(|| format!("cannot describe topic '{name}'"))?;
            output::topic_description(&d, format)
        }
        TopicCommand::Delete { name } => {
            admin
                .delete_topic(&name)
                .await
                .with_context(|| format!("cannot delete topic '{name}'"))?;
            output::action(
                &format!("Deleted topic '{name}'."),
                json!({"deleted": name}),
                format,
            )
        }
        TopicCommand::Alter(a) => {
            admin
                .add_partitions(&a.name, a.partitions)
                .await
                .with_context(|| format!("cannot alter topic '{}'", a.name))?;
            output::action(
                &format!("Topic '{}' now has {} partitions.", a.name, a.partitions),
                json!({"altered": a.name, "partitions": a.partitions}),
                format,
            )
        }
    };
    io.stdout.write_all(text.as_bytes())?;
    Ok(())
}
