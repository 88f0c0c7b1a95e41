//! Turning the broker's typed errors into the client API's `Error` (code + message).
//!
//! The one place that decides which code a failure gets; handlers never build codes
//! by hand for failures that have a type here.

use sluice_proto::batch::BatchError;
use sluice_proto::v1::{self, ErrorCode};

use crate::group::GroupError;
use crate::log::LogError;
use crate::metadata::ControllerError;
use crate::metadata::state::MetadataError;
use crate::raft::ReplicaError;
use crate::raft::producers::SequenceError;

/// An API error with `code` and a message a person can act on.
pub fn error(code: ErrorCode, message: impl Into<String>) -> v1::Error {
    v1::Error {
        code: code as i32,
        message: message.into(),
        leader: None,
    }
}

pub fn unknown_topic(topic: &str) -> v1::Error {
    error(
        ErrorCode::UnknownTopic,
        format!("unknown topic '{topic}': create it first"),
    )
}

pub fn unknown_partition(topic: &str, partition: u32, count: usize) -> v1::Error {
    error(
        ErrorCode::UnknownPartition,
        format!("topic '{topic}' has {count} partitions; partition {partition} does not exist"),
    )
}

/// A user request to change an internal topic (`what`: "created", "deleted", ...).
pub fn reserved_topic(topic: &str, what: &str) -> v1::Error {
    error(
        ErrorCode::InvalidTopicName,
        format!(
            "'{topic}' is an internal topic (names starting with '__' are reserved); it cannot be {what} by clients"
        ),
    )
}

pub fn from_group(e: &GroupError) -> v1::Error {
    let code = match e {
        GroupError::NotCoordinator { leader } => {
            return v1::Error {
                code: ErrorCode::NotCoordinator as i32,
                message: e.to_string(),
                leader: leader.as_ref().map(|(id, addr)| v1::Broker {
                    id: *id,
                    addr: addr.clone(),
                }),
            };
        }
        GroupError::Replica(r) => return from_replica(r),
        GroupError::CoordinatorNotAvailable(_) | GroupError::Controller(_) => {
            ErrorCode::CoordinatorNotAvailable
        }
        GroupError::UnknownMember { .. } => ErrorCode::UnknownMemberId,
        GroupError::Fenced(_) => ErrorCode::FencedMemberEpoch,
        GroupError::GroupNotEmpty { .. } => ErrorCode::GroupNotEmpty,
        GroupError::UnknownGroup(_) => ErrorCode::UnknownGroup,
        GroupError::InvalidGroupId(_) => ErrorCode::InvalidGroupId,
        GroupError::UnknownTopic(_) => ErrorCode::UnknownTopic,
        GroupError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
        GroupError::InvalidRequest(_) => ErrorCode::InvalidRequest,
    };
    error(code, e.to_string())
}

pub fn from_metadata(e: &MetadataError) -> v1::Error {
    let code = match e {
        MetadataError::TopicExists(_) => ErrorCode::TopicAlreadyExists,
        MetadataError::UnknownTopic(_) => ErrorCode::UnknownTopic,
        MetadataError::InvalidTopicName(_) => ErrorCode::InvalidTopicName,
        MetadataError::InvalidPartitions { .. } => ErrorCode::InvalidPartitions,
        MetadataError::InvalidReplicationFactor { .. } => ErrorCode::InvalidReplicationFactor,
        MetadataError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        MetadataError::Undecodable(_) => ErrorCode::Internal,
        // Only a controller change between reading and committing the id causes it.
        MetadataError::ProducerIdTaken { .. } => ErrorCode::NotController,
    };
    error(code, e.to_string())
}

pub fn from_controller(e: &ControllerError) -> v1::Error {
    match e {
        ControllerError::Invalid(m) => from_metadata(m),
        ControllerError::NotController { leader } => v1::Error {
            code: ErrorCode::NotController as i32,
            message: e.to_string(),
            leader: leader.as_ref().map(|(id, addr)| v1::Broker {
                id: *id,
                addr: addr.clone(),
            }),
        },
        ControllerError::Replica(r) => from_replica(r),
    }
}

pub fn from_replica(e: &ReplicaError) -> v1::Error {
    match e {
        ReplicaError::NotLeader { leader } => v1::Error {
            code: ErrorCode::NotLeader as i32,
            message: e.to_string(),
            leader: leader.as_ref().map(|(id, addr)| v1::Broker {
                id: *id,
                addr: addr.clone(),
            }),
        },
        ReplicaError::LeaderNotReady { leader: (id, addr) } => v1::Error {
            code: ErrorCode::NotLeader as i32,
            message: e.to_string(),
            leader: Some(v1::Broker {
                id: *id,
                addr: addr.clone(),
            }),
        },
        ReplicaError::Sequence(s) => {
            let code = match s {
                SequenceError::Fenced { .. } => ErrorCode::ProducerFenced,
                SequenceError::OutOfOrder { .. } | SequenceError::Skipped { .. } => {
                    ErrorCode::OutOfOrderSequence
                }
                SequenceError::UnknownProducer { .. } => ErrorCode::UnknownProducer,
                SequenceError::OldDuplicate { .. } => ErrorCode::DuplicateSequence,
            };
            error(code, s.to_string())
        }
        ReplicaError::Storage(log) => from_log(log),
        ReplicaError::InvalidBatch(e) => error(ErrorCode::CorruptBatch, e.to_string()),
        ReplicaError::Timeout(_) => error(ErrorCode::Timeout, e.to_string()),
        ReplicaError::Shutdown => error(ErrorCode::ShuttingDown, e.to_string()),
        _ => error(ErrorCode::Internal, e.to_string()),
    }
}

pub fn from_log(e: &LogError) -> v1::Error {
    let code = match e {
        LogError::DiskFull { .. } => ErrorCode::DiskFull,
        LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        LogError::InvalidBatch(_) | LogError::PayloadTooLarge { .. } => ErrorCode::InvalidRequest,
        _ => ErrorCode::Storage,
    };
    error(code, e.to_string())
}

pub fn from_batch(e: &BatchError) -> v1::Error {
    let code = match e {
        BatchError::CrcMismatch { .. } => ErrorCode::CorruptBatch,
        BatchError::TooLarge { .. } | BatchError::DecompressedTooLarge { .. } => {
            ErrorCode::BatchTooLarge
        }
        _ => ErrorCode::CorruptBatch,
    };
    error(code, format!("rejected batch: {e}"))
}
