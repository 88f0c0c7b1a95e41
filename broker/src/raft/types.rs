//! The openraft type configuration every Sluice Raft group shares, and the small
//! conversions between openraft's ids and the log's.
//!
//! Owns: [`TypeConfig`] (node ids are `u64`, nodes are [`BasicNode`], application data is
//! a [`RecordBatch`], responses are [`Applied`]) and the leader-id mode. Must never hold
//! state or do I/O.
//!
//! Leader ids use openraft's *standard* mode (`leader_id_std`): one leader per term, so a
//! committed leader id is just the term and a log id is `(term, index)` — exactly what a
//! log frame stores. The advanced mode would also need the node id in every frame.

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::log::EntryId;

/// A broker's id; the same in every group it is a member of.
pub type NodeId = u64;

/// Where a broker serves the Raft transport: `host:port`.
///
/// Sluice's own node type (not openraft's `BasicNode`) because openraft's conformance
/// suite needs `Default`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BasicNode {
    pub addr: String,
}

impl BasicNode {
    pub fn new(addr: impl Into<String>) -> Self {
        Self { addr: addr.into() }
    }
}

impl fmt::Display for BasicNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

/// A Kafka RecordBatch v2, as produced (unstamped) or as stored (stamped with its base
/// offset and the Raft term). Cloning shares the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordBatch(pub Bytes);

impl fmt::Debug for RecordBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordBatch({} bytes)", self.0.len())
    }
}

impl fmt::Display for RecordBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} bytes", self.0.len())
    }
}

impl Serialize for RecordBatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for RecordBatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RecordBatch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("record batch bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RecordBatch, E> {
                Ok(RecordBatch(shared_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<RecordBatch, E> {
                Ok(RecordBatch(Bytes::from(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RecordBatch, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(RecordBatch(Bytes::from(out)))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

/// What applying an entry yields: where a data batch landed and the high watermark
/// right after it. For a blank or membership entry `base_offset` equals the high
/// watermark (it consumed no offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub base_offset: u64,
    pub high_watermark: u64,
}

openraft::declare_raft_types!(
    /// The openraft configuration of every Sluice group (partitions and the controller).
    pub TypeConfig:
        D = RecordBatch,
        R = Applied,
        NodeId = NodeId,
        Node = BasicNode,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
);

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, BasicNode>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

/// The log id of the entry with Raft `term` and `index`.
pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new_term_index(term, index)
}

/// The log's id for an openraft log id.
pub fn entry_id(id: &LogId) -> EntryId {
    EntryId {
        term: id.leader_id.term,
        index: id.index,
    }
}

/// The openraft log id for a log entry id.
pub fn to_log_id(id: EntryId) -> LogId {
    log_id(id.term, id.index)
}

thread_local! {
    /// The buffer [`decode_sharing`] is decoding from, if any.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` (synchronous: no await may happen inside) with `source` as the buffer
/// record batches borrow from: each batch decoded from it becomes a slice of `source`
/// (a reference count), not a copy. Batches are most of a Raft append's bytes.
pub(crate) fn decode_sharing<R>(source: &Bytes, decode: impl FnOnce() -> R) -> R {
    struct Reset(Option<Bytes>);
    impl Drop for Reset {
        fn drop(&mut self) {
            SOURCE.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let _reset = Reset(SOURCE.with(|s| s.borrow_mut().replace(source.clone())));
    decode()
}

/// `v` as a slice of the buffer being decoded, if it lies in it; else a copy.
fn shared_slice(v: &[u8]) -> Bytes {
    SOURCE.with(|s| match s.borrow().as_ref() {
        Some(src)
            if src.as_ptr_range().start <= v.as_ptr_range().start
                && v.as_ptr_range().end <= src.as_ptr_range().end =>
        {
            src.slice_ref(v)
        }
        _ => Bytes::copy_from_slice(v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ids_round_trip_through_entry_ids() {
        let id = log_id(7, 42);
        assert_eq!(entry_id(&id), EntryId { term: 7, index: 42 });
        assert_eq!(to_log_id(entry_id(&id)), id);
    }

    #[test]
    fn record_batch_serializes_as_bytes() {
        let b = RecordBatch(Bytes::from_static(b"\x01\x02\x03"));
        let enc = postcard::to_allocvec(&b).expect("encode");
        assert_eq!(enc, vec![3, 1, 2, 3]);
        let dec: RecordBatch = postcard::from_bytes(&enc).expect("decode");
        assert_eq!(dec, b);
        let json = serde_json::to_vec(&b).expect("json");
        let back: RecordBatch = serde_json::from_slice(&json).expect("json back");
        assert_eq!(back, b);
    }

    #[test]
    fn batches_decoded_while_sharing_are_slices_of_the_source() {
        let batches = vec![
            RecordBatch(Bytes::from(vec![7u8; 100])),
            RecordBatch(Bytes::from(vec![9u8; 50])),
        ];
        let source = Bytes::from(postcard::to_allocvec(&batches).expect("encode"));
        let decoded: Vec<RecordBatch> =
            decode_sharing(&source, || postcard::from_bytes(&source)).expect("decode");
        assert_eq!(decoded, batches);
        let inside = |b: &RecordBatch| source.as_ptr_range().contains(&b.0.as_ptr());
        assert!(decoded.iter().all(inside), "batches were copied");
        // Outside `decode_sharing`, decoding copies (nothing to share with).
        let copied: Vec<RecordBatch> = postcard::from_bytes(&source).expect("decode");
        assert!(!copied.iter().any(inside));
    }
}
