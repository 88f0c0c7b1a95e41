//! The checks behind the `sluice-proto` fuzz targets, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and the corpus replay (`proto/tests/fuzz_corpus.rs`), so
//! both run exactly the same code. Every function must accept any input without
//! panicking; an `assert!` here is a property the library promises.

use bytes::Bytes;
use prost::Message;
use sluice_proto::batch::Batch;
use sluice_proto::{TopicPartition, v1};

/// `batch_decode`: decode and iterate any input; whatever `verify` accepts must decode
/// and iterate without error, giving exactly the records its header announces.
pub fn batch_decode(data: &[u8]) {
    let decoded = Batch::decode(Bytes::copy_from_slice(data));
    if let Ok(batch) = &decoded {
        for record in batch.records() {
            if record.is_err() {
                break;
            }
        }
    }
    if let Ok(header) = Batch::verify(data) {
        let batch = match decoded {
            Ok(batch) => batch,
            Err(e) => panic!("verify accepted a batch that decode rejects: {e}"),
        };
        assert_eq!(*batch.header(), header);
        let mut count = 0i64;
        for record in batch.records() {
            if let Err(e) = record {
                panic!("verify accepted a batch whose record {count} fails: {e}");
            }
            count += 1;
        }
        assert_eq!(count, i64::from(header.record_count));
    }
}

/// `request_decode`: the input as each client request the broker decodes (the
/// `sluice.v1` client and group-coordinator services); a produce request's batch then
/// goes through `Batch::verify`, as the broker's produce path does, and a request's
/// partition lists through their grouping.
pub fn request_decode(data: &[u8]) {
    if let Ok(req) = v1::ProduceRequest::decode(data)
        && Batch::verify(&req.batch[..]).is_ok()
    {
        batch_decode(&req.batch[..]);
    }
    let _ = v1::FetchRequest::decode(data);
    let _ = v1::CreateTopicRequest::decode(data);
    let _ = v1::DeleteTopicRequest::decode(data);
    let _ = v1::ListTopicsRequest::decode(data);
    let _ = v1::DescribeTopicRequest::decode(data);
    let _ = v1::AddPartitionsRequest::decode(data);
    let _ = v1::ListOffsetsRequest::decode(data);
    let _ = v1::MetadataRequest::decode(data);
    let _ = v1::InitProducerIdRequest::decode(data);
    let _ = v1::FindCoordinatorRequest::decode(data);
    if let Ok(req) = v1::HeartbeatRequest::decode(data) {
        let _ = TopicPartition::from_wire(req.owned).count();
    }
    let _ = v1::OffsetCommitRequest::decode(data);
    if let Ok(req) = v1::OffsetFetchRequest::decode(data) {
        let _ = TopicPartition::from_wire(req.partitions).count();
    }
    let _ = v1::ListGroupsRequest::decode(data);
    let _ = v1::DescribeGroupRequest::decode(data);
    let _ = v1::DeleteGroupRequest::decode(data);
    let _ = v1::ResetOffsetsRequest::decode(data);
}
