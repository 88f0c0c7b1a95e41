//! Rendering: aligned text tables and JSON for the admin commands (groups in
//! `groups`), and the per-record formats of `consume` (`--format` templates, JSON
//! lines).
//!
//! Everything here returns strings or bytes and does no I/O, so it is unit-tested
//! directly. Keys and values are written as raw bytes in templates (records need
//! not be UTF-8); in JSON they are strings when they are UTF-8 and
//! `{"base64": "..."}` otherwise.

mod groups;

use std::fmt::Write as _;
use std::str::FromStr;

use clap::ValueEnum;
use serde_json::{Value, json};
use sluice_client::{ClusterInfo, ConsumerRecord, TopicDescription, TopicListing};

pub use groups::{PartitionLag, group_description, group_list, offset_reset};

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts (one object per line for `consume`).
    Json,
}

/// A text table: a header row and aligned columns separated by two spaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank, extra cells are dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let cell = |row: &Vec<String>, i: usize| row.get(i).map_or("", String::as_str).to_owned();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(cell(row, i).chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate().take(cols) {
                let text = cell(row, i);
                if i + 1 < cols {
                    let _ = write!(line, "{text:<width$}  ");
                } else {
                    line.push_str(&text);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn ids(ids: &[u64]) -> String {
    if ids.is_empty() {
        "-".into()
    } else {
        ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    }
}

fn pretty(value: &Value) -> String {
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    s.push('\n');
    s
}

/// `topic list`.
pub fn topic_list(topics: &[TopicListing], format: OutputFormat) -> String {
    match format {
        OutputFormat::Table => {
            let mut t = Table::new(&["NAME", "PARTITIONS", "REPLICATION-FACTOR"]);
            for topic in topics {
                t.row(vec![
                    topic.name.clone(),
                    topic.partitions.to_string(),
                    topic.replication_factor.to_string(),
                ]);
            }
            t.render()
        }
        OutputFormat::Json => pretty(&Value::Array(
            topics
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "partitions": t.partitions,
                        "replication_factor": t.replication_factor,
                    })
                })
                .collect(),
        )),
    }
}

/// `topic describe`.
pub fn topic_description(d: &TopicDescription, format: OutputFormat) -> String {
    match format {
        OutputFormat::Table => {
            let mut out = format!(
                "Topic: {}  Partitions: {}  Replication factor: {}\n",
                d.name,
                d.partitions.len(),
                d.replication_factor
            );
            let configs: Vec<String> = d.configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                out,
                "Configs: {}",
                if configs.is_empty() {
                    "(defaults)".to_owned()
                } else {
                    configs.join(", ")
                }
            );
            out.push('\n');
            let mut t = Table::new(&[
                "PARTITION",
                "LEADER",
                "REPLICAS",
                "ISR",
                "LOG-START",
                "HIGH-WATERMARK",
                "LOG-END",
            ]);
            for p in &d.partitions {
                t.row(vec![
                    p.partition.to_string(),
                    p.leader.map_or_else(|| "-".to_owned(), |l| l.to_string()),
                    ids(&p.replicas),
                    ids(&p.in_sync_replicas),
                    p.log_start_offset.to_string(),
                    p.high_watermark.to_string(),
                    p.log_end_offset.to_string(),
                ]);
            }
            out.push_str(&t.render());
            out
        }
        OutputFormat::Json => pretty(&json!({
            "name": d.name,
            "replication_factor": d.replication_factor,
            "configs": d.configs,
            "partitions": d.partitions.iter().map(|p| json!({
                "partition": p.partition,
                "leader": p.leader,
                "replicas": p.replicas,
                "in_sync_replicas": p.in_sync_replicas,
                "log_start_offset": p.log_start_offset,
                "high_watermark": p.high_watermark,
                "log_end_offset": p.log_end_offset,
            })).collect::<Vec<_>>(),
        })),
    }
}

/// `cluster info`.
pub fn cluster_info(info: &ClusterInfo, format: OutputFormat) -> String {
    let controller = info.controller.as_ref().map(|c| c.id);
    match format {
        OutputFormat::Table => {
            let mut t = Table::new(&["ID", "ADDRESS", "ROLE"]);
            for b in &info.brokers {
                let role = if Some(b.id) == controller {
                    "controller"
                } else {
                    ""
                };
                t.row(vec![b.id.to_string(), b.addr.clone(), role.into()]);
            }
            let mut out = t.render();
            if controller.is_none() {
                out.push_str("No controller is known (an election may be under way).\n");
            }
            out
        }
        OutputFormat::Json => pretty(&json!({
            "brokers": info.brokers.iter().map(|b| json!({"id": b.id, "addr": b.addr})).collect::<Vec<_>>(),
            "controller": controller,
        })),
    }
}

/// A one-line confirmation of an admin action: the message for tables, the object
/// for JSON.
pub fn action(message: &str, details: Value, format: OutputFormat) -> String {
    match format {
        OutputFormat::Table => format!("{message}\n"),
        OutputFormat::Json => format!("{details}\n"),
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= n {
                out.push(BASE64[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn bytes_json(data: Option<&[u8]>) -> Value {
    match data {
        None => Value::Null,
        Some(d) => match std::str::from_utf8(d) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => json!({ "base64": base64(d) }),
        },
    }
}

/// A consumed record as one JSON line (with the trailing newline).
pub fn record_json(r: &ConsumerRecord) -> String {
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|h| json!({"key": h.key, "value": bytes_json(h.value.as_deref())}))
        .collect();
    let mut line = json!({
        "topic": &*r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "key": bytes_json(r.key.as_deref()),
        "value": bytes_json(r.value.as_deref()),
        "headers": headers,
    })
    .to_string();
    line.push('\n');
    line
}

/// One piece of a `--format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Key,
    Value,
    Offset,
    Partition,
    Timestamp,
    Topic,
}

/// A `--format` template: text with `{key}`, `{value}`, `{offset}`, `{partition}`,
/// `{timestamp}` and `{topic}` fields, `{{` / `}}` for literal braces, and the
/// escapes `\t`, `\n` and `\\`. A missing key or value prints as `null`. Each
/// record's line ends with a newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Default for Template {
    /// `{value}`: one value per line.
    fn default() -> Self {
        Self {
            parts: vec![Part::Value],
        }
    }
}

impl FromStr for Template {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(format!(
                                    "unclosed {{ in format {s:?}; write {{{{ for a literal brace"
                                ));
                            }
                        }
                    }
                    let part = match name.trim() {
                        "key" => Part::Key,
                        "value" => Part::Value,
                        "offset" => Part::Offset,
                        "partition" => Part::Partition,
                        "timestamp" => Part::Timestamp,
                        "topic" => Part::Topic,
                        other => {
                            return Err(format!(
                                "unknown field {{{other}}} in format; use {{key}}, {{value}}, \
                                 {{offset}}, {{partition}}, {{timestamp}} or {{topic}}"
                            ));
                        }
                    };
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(part);
                }
                '}' => {
                    return Err(format!(
                        "unmatched }} in format {s:?}; write }}}} for a literal brace"
                    ));
                }
                '\\' => match chars.next() {
                    Some('t') => text.push('\t'),
                    Some('n') => text.push('\n'),
                    Some('\\') => text.push('\\'),
                    Some(other) => {
                        text.push('\\');
                        text.push(other);
                    }
                    None => text.push('\\'),
                },
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Self { parts })
    }
}

impl Template {
    /// Appends the record's line (with its newline) to `out`.
    pub fn render(&self, r: &ConsumerRecord, out: &mut Vec<u8>) {
        let bytes = |out: &mut Vec<u8>, b: Option<&[u8]>| match b {
            Some(b) => out.extend_from_slice(b),
            None => out.extend_from_slice(b"null"),
        };
        for part in &self.parts {
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Key => bytes(out, r.key.as_deref()),
                Part::Value => bytes(out, r.value.as_deref()),
                Part::Offset => out.extend_from_slice(r.offset.to_string().as_bytes()),
                Part::Partition => out.extend_from_slice(r.partition.to_string().as_bytes()),
                Part::Timestamp => out.extend_from_slice(r.timestamp.to_string().as_bytes()),
                Part::Topic => out.extend_from_slice(r.topic.as_bytes()),
            }
        }
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_client::{BrokerInfo, Header, PartitionDescription};
    use std::sync::Arc;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: Arc::from("orders"),
            partition: 2,
            offset: 41,
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"k1")),
            value: Some(Bytes::from_static(b"hello")),
            headers: vec![Header::new(
                "trace",
                Some(Bytes::from_static(&[0xff, 0x00])),
            )],
        }
    }

    fn render(t: &Template, r: &ConsumerRecord) -> String {
        let mut out = Vec::new();
        t.render(r, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn tables_align_columns_and_trim_trailing_space() {
        let mut t = Table::new(&["NAME", "N"]);
        t.row(vec!["a-long-name".into(), "1".into()]);
        t.row(vec!["b".into()]);
        assert_eq!(t.render(), "NAME         N\na-long-name  1\nb\n");
    }

    #[test]
    fn topic_list_table_and_json() {
        let topics = vec![TopicListing {
            name: "orders".into(),
            partitions: 12,
            replication_factor: 3,
        }];
        assert_eq!(
            topic_list(&topics, OutputFormat::Table),
            "NAME    PARTITIONS  REPLICATION-FACTOR\norders  12          3\n"
        );
        let v: Value = serde_json::from_str(&topic_list(&topics, OutputFormat::Json)).unwrap();
        assert_eq!(
            v,
            json!([{"name": "orders", "partitions": 12, "replication_factor": 3}])
        );
        assert_eq!(
            topic_list(&[], OutputFormat::Table),
            "NAME  PARTITIONS  REPLICATION-FACTOR\n"
        );
    }

    #[test]
    fn topic_description_table_and_json() {
        let d = TopicDescription {
            name: "orders".into(),
            replication_factor: 3,
            configs: [("retention.ms".to_owned(), "1000".to_owned())].into(),
            partitions: vec![
                PartitionDescription {
                    partition: 0,
                    leader: Some(1),
                    replicas: vec![1, 2, 3],
                    in_sync_replicas: vec![1, 2],
                    log_start_offset: 0,
                    high_watermark: 120,
                    log_end_offset: 121,
                },
                PartitionDescription {
                    partition: 1,
                    leader: None,
                    replicas: vec![2],
                    in_sync_replicas: vec![],
                    log_start_offset: 5,
                    high_watermark: 5,
                    log_end_offset: 5,
                },
            ],
        };
        let table = topic_description(&d, OutputFormat::Table);
        assert_eq!(
            table,
            "Topic: orders  Partitions: 2  Replication factor: 3\n\
             Configs: retention.ms=1000\n\
             \n\
             PARTITION  LEADER  REPLICAS  ISR  LOG-START  HIGH-WATERMARK  LOG-END\n\
             0          1       1,2,3     1,2  0          120             121\n\
             1          -       2         -    5          5               5\n"
        );
        let v: Value = serde_json::from_str(&topic_description(&d, OutputFormat::Json)).unwrap();
        assert_eq!(v["partitions"][0]["in_sync_replicas"], json!([1, 2]));
        assert_eq!(v["partitions"][1]["leader"], Value::Null);
        assert_eq!(v["configs"]["retention.ms"], "1000");
    }

    #[test]
    fn cluster_info_marks_the_controller() {
        let info = ClusterInfo {
            brokers: vec![
                BrokerInfo {
                    id: 1,
                    addr: "10.0.0.1:9700".into(),
                },
                BrokerInfo {
                    id: 2,
                    addr: "10.0.0.2:9700".into(),
                },
            ],
            controller: Some(BrokerInfo {
                id: 2,
                addr: "10.0.0.2:9700".into(),
            }),
        };
        assert_eq!(
            cluster_info(&info, OutputFormat::Table),
            "ID  ADDRESS        ROLE\n1   10.0.0.1:9700\n2   10.0.0.2:9700  controller\n"
        );
        let v: Value = serde_json::from_str(&cluster_info(&info, OutputFormat::Json)).unwrap();
        assert_eq!(v["controller"], 2);
        assert_eq!(v["brokers"][1]["addr"], "10.0.0.2:9700");
        let none = ClusterInfo {
            controller: None,
            ..info
        };
        assert!(cluster_info(&none, OutputFormat::Table).contains("No controller"));
    }

    #[test]
    fn templates_render_fields_escapes_and_nulls() {
        let t: Template = "{offset} {key} {value}".parse().unwrap();
        assert_eq!(render(&t, &record()), "41 k1 hello\n");
        let t: Template = "{topic}/{partition}@{offset}\\t{timestamp}\\t{{x}}\\\\"
            .parse()
            .unwrap();
        assert_eq!(render(&t, &record()), "orders/2@41\t1700000000000\t{x}\\\n");
        let tomb = ConsumerRecord {
            key: None,
            value: None,
            ..record()
        };
        let t: Template = "{key}={value}".parse().unwrap();
        assert_eq!(render(&t, &tomb), "null=null\n");
        assert_eq!(render(&Template::default(), &record()), "hello\n");
    }

    #[test]
    fn templates_write_raw_bytes() {
        let r = ConsumerRecord {
            value: Some(Bytes::from_static(&[0xff, b'\n'])),
            ..record()
        };
        let mut out = Vec::new();
        Template::default().render(&r, &mut out);
        assert_eq!(out, [0xff, b'\n', b'\n']);
    }

    #[test]
    fn bad_templates_are_explained() {
        let err = "{offest}".parse::<Template>().unwrap_err();
        assert!(
            err.contains("{offest}") && err.contains("{offset}"),
            "{err}"
        );
        assert!(
            "{value"
                .parse::<Template>()
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            "value}"
                .parse::<Template>()
                .unwrap_err()
                .contains("unmatched")
        );
    }

    #[test]
    fn records_as_json_lines() {
        let line = record_json(&record());
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({
                "topic": "orders",
                "partition": 2,
                "offset": 41,
                "timestamp": 1_700_000_000_000i64,
                "key": "k1",
                "value": "hello",
                "headers": [{"key": "trace", "value": {"base64": "/wA="}}],
            })
        );
        let tomb = ConsumerRecord {
            key: None,
            value: None,
            headers: vec![],
            ..record()
        };
        let v: Value = serde_json::from_str(&record_json(&tomb)).unwrap();
        assert_eq!(
            (v["key"].clone(), v["value"].clone()),
            (Value::Null, Value::Null)
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn actions_print_a_message_or_an_object() {
        let details = json!({"created": "t"});
        assert_eq!(
            action("Created topic 't'", details.clone(), OutputFormat::Table),
            "Created topic 't'\n"
        );
        assert_eq!(
            action("x", details, OutputFormat::Json),
            "{\"created\":\"t\"}\n"
        );
    }
}
