//! How group coordinators write to `__consumer_offsets`: one record per fact.
//!
//! A record's key names what it is about (`offset/<group>/<topic>/<partition>`,
//! `group/<group>`, `checkpoint/<id>`), so a person reading the topic can tell; its
//! value is a version byte and the [`GroupRecord`] in postcard. The latest record about
//! a key wins; `GroupDeleted` drops a group and all its offsets.
//!
//! A checkpoint rewrites every live fact between `CheckpointBegin` and `CheckpointEnd`
//! records (possibly over several batches): once one is complete, nothing before its
//! begin is needed, which is what lets the coordinator purge the log before it.
//!
//! Must never change the meaning of an existing encoding: add variants at the end and
//! bump [`RECORD_VERSION`] only for an incompatible change.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_proto::batch::{Batch, BatchBuilder, Compression};
use thiserror::Error;

use super::membership::GroupState;

/// Encoding version of a record's value.
pub const RECORD_VERSION: u8 = 1;

/// Batch bytes a coordinator aims for when it writes many records (checkpoints).
pub const TARGET_BATCH_BYTES: usize = 1 << 20;

/// A committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: u64,
    pub metadata: String,
    pub timestamp_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRecord {
    Offset {
        group: String,
        topic: String,
        partition: u32,
        committed: Committed,
    },
    Group(GroupState),
    GroupDeleted {
        group: String,
    },
    CheckpointBegin {
        id: u64,
    },
    CheckpointEnd {
        id: u64,
    },
}

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("undecodable batch at offset {offset}: {reason}")]
    Batch { offset: u64, reason: String },
    #[error("undecodable group record at offset {offset}: {reason}")]
    Record { offset: u64, reason: String },
}

impl GroupRecord {
    pub fn key(&self) -> String {
        match self {
            Self::Offset {
                group,
                topic,
                partition,
                ..
            } => format!("offset/{group}/{topic}/{partition}"),
            Self::Group(g) => format!("group/{}", g.id),
            Self::GroupDeleted { group } => format!("group/{group}"),
            Self::CheckpointBegin { id } | Self::CheckpointEnd { id } => {
                format!("checkpoint/{id}")
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_VERSION];
        // Plain data into a Vec: postcard cannot fail here.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    pub fn decode(value: &[u8]) -> Result<Self, String> {
        match value.split_first() {
            Some((&RECORD_VERSION, body)) => postcard::from_bytes(body).map_err(|e| e.to_string()),
            Some((v, _)) => Err(format!("unknown record version {v}")),
            None => Err("empty record".into()),
        }
    }
}

/// Packs records into batches of about [`TARGET_BATCH_BYTES`] each, in order.
pub fn encode_batches(records: &[GroupRecord], timestamp_ms: i64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut builder = BatchBuilder::new(Compression::None);
    for record in records {
        let key = record.key();
        let value = record.encode();
        if !builder.is_empty()
            && builder.encoded_len() + key.len() + value.len() > TARGET_BATCH_BYTES
        {
            out.push(std::mem::replace(&mut builder, BatchBuilder::new(Compression::None)).build());
        }
        // A record fits an empty builder: group state is far below the 1 GiB limit.
        if let Err(e) = builder.append(timestamp_ms, Some(key.as_bytes()), Some(&value), &[]) {
            tracing::error!(error = %e, key, "group record too large to write");
        }
    }
    if !builder.is_empty() {
        out.push(builder.build());
    }
    out
}

/// A commit of `offset` by `group` in partition `partition` of topic "t" (tests).
#[cfg(test)]
pub(crate) fn offset(group: &str, partition: u32, offset: u64) -> GroupRecord {
    GroupRecord::Offset {
        group: group.into(),
        topic: "t".into(),
        partition,
        committed: Committed {
            offset,
            metadata: format!("after {offset}"),
            timestamp_ms: 7,
        },
    }
}

/// The records of a stored batch whose base offset is `offset`.
pub fn decode_batch(offset: u64, bytes: Bytes) -> Result<Vec<GroupRecord>, RecordError> {
    let batch = Batch::decode(bytes).map_err(|e| RecordError::Batch {
        offset,
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for record in batch.records() {
        let record = record.map_err(|e| RecordError::Batch {
            offset,
            reason: e.to_string(),
        })?;
        let at = u64::try_from(record.offset).unwrap_or(offset);
        let value = record.value.ok_or_else(|| RecordError::Record {
            offset: at,
            reason: "no value".into(),
        })?;
        out.push(
            GroupRecord::decode(&value)
                .map_err(|reason| RecordError::Record { offset: at, reason })?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_batches() {
        let records = vec![
            GroupRecord::CheckpointBegin { id: 3 },
            offset("g", 0, 10),
            GroupRecord::Group(GroupState {
                id: "g".into(),
                epoch: 4,
                ..GroupState::default()
            }),
            GroupRecord::GroupDeleted { group: "h".into() },
            GroupRecord::CheckpointEnd { id: 3 },
        ];
        let batches = encode_batches(&records, 1);
        assert_eq!(batches.len(), 1);
        let back = decode_batch(0, batches[0].clone()).expect("decode");
        assert_eq!(back, records);
        assert_eq!(records[1].key(), "offset/g/t/0");
        assert_eq!(records[2].key(), "group/g");
    }

    #[test]
    fn many_records_split_into_bounded_batches() {
        let records: Vec<GroupRecord> = (0..40_000).map(|i| offset("group", i, 1)).collect();
        let batches = encode_batches(&records, 1);
        assert!(batches.len() > 1);
        let mut back = Vec::new();
        for b in &batches {
            assert!(b.len() <= TARGET_BATCH_BYTES + 1024);
            back.extend(decode_batch(0, b.clone()).expect("decode"));
        }
        assert_eq!(back, records);
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        assert!(GroupRecord::decode(&[]).is_err());
        assert!(GroupRecord::decode(&[9, 1, 2]).is_err());
        assert!(GroupRecord::decode(&[RECORD_VERSION, 200, 1]).is_err());
        assert!(decode_batch(5, Bytes::from_static(b"not a batch")).is_err());
    }
}
