//! Errors: [`ClientError`], one enum for everything the client can report.
//!
//! This module owns the mapping from the broker's wire errors (`sluice.v1.Error`, one
//! variant per `ErrorCode`, carrying the broker's own message and, for `NOT_LEADER` /
//! `NOT_CONTROLLER`, its leader hint) and from gRPC transport failures
//! (`tonic::Status`) to [`ClientError`], and the retry classification the rest of the
//! crate relies on ([`ClientError::is_retriable`], [`ClientError::is_stale_metadata`]).
//!
//! `ClientError` is `Clone`: one failed batch fails every record's delivery future
//! with the same error.

use sluice_proto::batch::BatchError;
use sluice_proto::v1;
use tonic::Code;

use crate::metadata::BrokerInfo;

/// Shorthand for `Result<T, ClientError>`.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Everything that can go wrong in the Sluice client.
///
/// Variants named after a broker `ErrorCode` carry the broker's message verbatim;
/// the broker words those so a person can act on them.
///
/// ```
/// use sluice_client::ClientError;
///
/// let err = ClientError::NotLeader { message: "partition 0 moved".into(), leader: None };
/// assert!(err.is_retriable());
/// assert!(!ClientError::InvalidArgument("bad".into()).is_retriable());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// `INTERNAL`: the broker hit a bug or an unexpected condition.
    #[error("broker internal error: {message}")]
    Internal { message: String },
    /// `UNKNOWN_TOPIC`: the topic does not exist.
    #[error("unknown topic: {message}")]
    UnknownTopic { message: String },
    /// `UNKNOWN_PARTITION`: the topic exists but not this partition.
    #[error("unknown partition: {message}")]
    UnknownPartition { message: String },
    /// `INVALID_TOPIC_NAME`.
    #[error("invalid topic name: {message}")]
    InvalidTopicName { message: String },
    /// `TOPIC_ALREADY_EXISTS`.
    #[error("topic already exists: {message}")]
    TopicAlreadyExists { message: String },
    /// `INVALID_PARTITIONS`: a partition count of zero, too many, or not an increase.
    #[error("invalid partition count: {message}")]
    InvalidPartitions { message: String },
    /// `INVALID_REPLICATION_FACTOR`.
    #[error("invalid replication factor: {message}")]
    InvalidReplicationFactor { message: String },
    /// `INVALID_CONFIG`: an unknown topic config key or a bad value.
    #[error("invalid topic config: {message}")]
    InvalidConfig { message: String },
    /// `INVALID_REQUEST`: the broker could not make sense of the request.
    #[error("invalid request: {message}")]
    InvalidRequest { message: String },
    /// `CORRUPT_BATCH`: the broker rejected a produced batch (CRC or framing).
    #[error("broker rejected the batch as corrupt: {message}")]
    CorruptBatch { message: String },
    /// `BATCH_TOO_LARGE`: the produced batch exceeds the broker's limit.
    #[error("batch too large: {message}")]
    BatchTooLarge { message: String },
    /// `OFFSET_OUT_OF_RANGE`: a fetch asked for an offset outside the log.
    #[error("offset out of range: {message}")]
    OffsetOutOfRange { message: String },
    /// `NOT_LEADER`: the broker does not lead the partition; `leader` is its hint.
    #[error("not the leader: {message}{}", hint(leader))]
    NotLeader {
        message: String,
        leader: Option<BrokerInfo>,
    },
    /// `NOT_CONTROLLER`: the request must go to the controller; `leader` is its hint.
    #[error("not the controller: {message}{}", hint(leader))]
    NotController {
        message: String,
        leader: Option<BrokerInfo>,
    },
    /// `TIMEOUT` from the broker, or a request that got no answer in time.
    #[error("timed out: {message}")]
    Timeout { message: String },
    /// `DISK_FULL`.
    #[error("broker disk full: {message}")]
    DiskFull { message: String },
    /// `STORAGE`: the broker's log failed.
    #[error("broker storage error: {message}")]
    Storage { message: String },
    /// `DUPLICATE_SEQUENCE` (idempotent producers).
    #[error("duplicate sequence: {message}")]
    DuplicateSequence { message: String },
    /// `OUT_OF_ORDER_SEQUENCE` (idempotent producers).
    #[error("out-of-order sequence: {message}")]
    OutOfOrderSequence { message: String },
    /// `UNKNOWN_PRODUCER` (idempotent producers).
    #[error("unknown producer: {message}")]
    UnknownProducer { message: String },
    /// `SHUTTING_DOWN`: the broker is stopping; another replica will take over.
    #[error("broker shutting down: {message}")]
    ShuttingDown { message: String },
    /// `PRODUCER_FENCED` (idempotent producers): the batch's epoch is older than
    /// one the partition has seen.
    #[error("producer fenced: {message}")]
    ProducerFenced { message: String },
    /// `NOT_COORDINATOR`: the broker does not coordinate the group; `coordinator` is
    /// its hint.
    #[error("not the group coordinator: {message}{}", hint(coordinator))]
    NotCoordinator {
        message: String,
        coordinator: Option<BrokerInfo>,
    },
    /// `COORDINATOR_NOT_AVAILABLE`: the group's coordinator is being elected, loading
    /// or created.
    #[error("group coordinator not available: {message}")]
    CoordinatorNotAvailable { message: String },
    /// `UNKNOWN_MEMBER_ID`: the member left or was removed from its group.
    #[error("unknown group member: {message}")]
    UnknownMemberId { message: String },
    /// `FENCED_MEMBER_EPOCH`: the member's epoch is stale, or it no longer owns the
    /// partition it commits.
    #[error("fenced group member: {message}")]
    FencedMemberEpoch { message: String },
    /// `GROUP_NOT_EMPTY`: the group has active members.
    #[error("group not empty: {message}")]
    GroupNotEmpty { message: String },
    /// `UNKNOWN_GROUP`.
    #[error("unknown group: {message}")]
    UnknownGroup { message: String },
    /// `INVALID_GROUP_ID`.
    #[error("invalid group id: {message}")]
    InvalidGroupId { message: String },
    /// A partition has no committed offset and `auto_offset_reset` is `None`.
    #[error("no offset: {0}")]
    NoOffset(String),
    /// An `ErrorCode` this client does not know (from a newer broker).
    #[error("broker error code {code}: {message}")]
    UnknownCode { code: i32, message: String },
    /// The broker could not be reached, or the connection broke.
    #[error("transport error talking to {addr}: {message}")]
    Transport { addr: String, message: String },
    /// The broker answered with something this client cannot use (bad gRPC status,
    /// malformed response).
    #[error("protocol error from {addr}: {message}")]
    Protocol { addr: String, message: String },
    /// A fetched batch could not be decoded.
    #[error("corrupt batch fetched from {topic}/{partition}: {source}")]
    Decode {
        topic: String,
        partition: u32,
        source: BatchError,
    },
    /// The caller passed something the client refuses before any request is sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The producer's buffer memory stayed full for longer than `max_block`.
    #[error("producer buffer full: {0}")]
    BufferFull(String),
    /// The producer (or consumer) was closed.
    #[error("closed: {0}")]
    Closed(String),
}

fn hint(leader: &Option<BrokerInfo>) -> String {
    match leader {
        Some(b) if b.id != 0 => format!(" (leader is broker {} at {})", b.id, b.addr),
        Some(b) => format!(" (leader is at {})", b.addr),
        None => String::new(),
    }
}

impl ClientError {
    /// Maps a broker `Error` to a `ClientError`; `None` when there is no error
    /// (absent, or code `NONE`).
    pub fn from_proto(err: Option<v1::Error>) -> Option<ClientError> {
        let err = err?;
        let message = err.message;
        let leader = err
            .leader
            .filter(|b| !b.addr.is_empty())
            .map(|b| BrokerInfo {
                id: b.id,
                addr: b.addr,
            });
        use v1::ErrorCode as C;
        let Ok(code) = C::try_from(err.code) else {
            return Some(ClientError::UnknownCode {
                code: err.code,
                message,
            });
        };
        Some(match code {
            C::None => return None,
            C::Internal => ClientError::Internal { message },
            C::UnknownTopic => ClientError::UnknownTopic { message },
            C::UnknownPartition => ClientError::UnknownPartition { message },
            C::InvalidTopicName => ClientError::InvalidTopicName { message },
            C::TopicAlreadyExists => ClientError::TopicAlreadyExists { message },
            C::InvalidPartitions => ClientError::InvalidPartitions { message },
            C::InvalidReplicationFactor => ClientError::InvalidReplicationFactor { message },
            C::InvalidConfig => ClientError::InvalidConfig { message },
            C::InvalidRequest => ClientError::InvalidRequest { message },
            C::CorruptBatch => ClientError::CorruptBatch { message },
            C::BatchTooLarge => ClientError::BatchTooLarge { message },
            C::OffsetOutOfRange => ClientError::OffsetOutOfRange { message },
            C::NotLeader => ClientError::NotLeader { message, leader },
            C::NotController => ClientError::NotController { message, leader },
            C::Timeout => ClientError::Timeout { message },
            C::DiskFull => ClientError::DiskFull { message },
            C::Storage => ClientError::Storage { message },
            C::DuplicateSequence => ClientError::DuplicateSequence { message },
            C::OutOfOrderSequence => ClientError::OutOfOrderSequence { message },
            C::UnknownProducer => ClientError::UnknownProducer { message },
            C::ShuttingDown => ClientError::ShuttingDown { message },
            C::ProducerFenced => ClientError::ProducerFenced { message },
            C::NotCoordinator => ClientError::NotCoordinator {
                message,
                coordinator: leader,
            },
            C::CoordinatorNotAvailable => ClientError::CoordinatorNotAvailable { message },
            C::UnknownMemberId => ClientError::UnknownMemberId { message },
            C::FencedMemberEpoch => ClientError::FencedMemberEpoch { message },
            C::GroupNotEmpty => ClientError::GroupNotEmpty { message },
            C::UnknownGroup => ClientError::UnknownGroup { message },
            C::InvalidGroupId => ClientError::InvalidGroupId { message },
        })
    }

    /// Maps a gRPC status from talking to `addr`. Unreachable brokers, broken
    /// connections and cancelled calls are [`ClientError::Transport`] (retriable);
    /// statuses that say the request itself is wrong are [`ClientError::Protocol`].
    pub fn from_status(addr: &str, status: &tonic::Status) -> ClientError {
        let addr = addr.to_owned();
        let mut message = if status.message().is_empty() {
            format!("gRPC status {:?}", status.code())
        } else {
            format!("{} (gRPC status {:?})", status.message(), status.code())
        };
        // tonic hides the interesting part ("connection refused") in the source chain.
        let mut source = std::error::Error::source(status);
        while let Some(err) = source {
            let text = err.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = err.source();
        }
        match status.code() {
            Code::DeadlineExceeded => ClientError::Timeout {
                message: format!("{addr}: {message}"),
            },
            Code::InvalidArgument
            | Code::OutOfRange
            | Code::FailedPrecondition
            | Code::Unimplemented
            | Code::ResourceExhausted
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::NotFound
            | Code::AlreadyExists => ClientError::Protocol { addr, message },
            Code::Ok
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss => ClientError::Transport { addr, message },
        }
    }

    /// The broker `ErrorCode` this error stands for, if it came from a broker.
    pub fn code(&self) -> Option<v1::ErrorCode> {
        use v1::ErrorCode as C;
        Some(match self {
            ClientError::Internal { .. } => C::Internal,
            ClientError::UnknownTopic { .. } => C::UnknownTopic,
            ClientError::UnknownPartition { .. } => C::UnknownPartition,
            ClientError::InvalidTopicName { .. } => C::InvalidTopicName,
            ClientError::TopicAlreadyExists { .. } => C::TopicAlreadyExists,
            ClientError::InvalidPartitions { .. } => C::InvalidPartitions,
            ClientError::InvalidReplicationFactor { .. } => C::InvalidReplicationFactor,
            ClientError::InvalidConfig { .. } => C::InvalidConfig,
            ClientError::InvalidRequest { .. } => C::InvalidRequest,
            ClientError::CorruptBatch { .. } => C::CorruptBatch,
            ClientError::BatchTooLarge { .. } => C::BatchTooLarge,
            ClientError::OffsetOutOfRange { .. } => C::OffsetOutOfRange,
            ClientError::NotLeader { .. } => C::NotLeader,
            ClientError::NotController { .. } => C::NotController,
            ClientError::Timeout { .. } => C::Timeout,
            ClientError::DiskFull { .. } => C::DiskFull,
            ClientError::Storage { .. } => C::Storage,
            ClientError::DuplicateSequence { .. } => C::DuplicateSequence,
            ClientError::OutOfOrderSequence { .. } => C::OutOfOrderSequence,
            ClientError::UnknownProducer { .. } => C::UnknownProducer,
            ClientError::ShuttingDown { .. } => C::ShuttingDown,
            ClientError::ProducerFenced { .. } => C::ProducerFenced,
            ClientError::NotCoordinator { .. } => C::NotCoordinator,
            ClientError::CoordinatorNotAvailable { .. } => C::CoordinatorNotAvailable,
            ClientError::UnknownMemberId { .. } => C::UnknownMemberId,
            ClientError::FencedMemberEpoch { .. } => C::FencedMemberEpoch,
            ClientError::GroupNotEmpty { .. } => C::GroupNotEmpty,
            ClientError::UnknownGroup { .. } => C::UnknownGroup,
            ClientError::InvalidGroupId { .. } => C::InvalidGroupId,
            _ => return None,
        })
    }

    /// Whether the same request may succeed if sent again (after a metadata refresh
    /// and a back-off): leadership or a group's coordinator moved, the broker is
    /// stopping or timed out, or the connection failed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            ClientError::NotLeader { .. }
                | ClientError::NotController { .. }
                | ClientError::NotCoordinator { .. }
                | ClientError::CoordinatorNotAvailable { .. }
                | ClientError::Timeout { .. }
                | ClientError::ShuttingDown { .. }
                | ClientError::Transport { .. }
        )
    }

    /// Whether the broker refused the request before storing anything: a produce that
    /// failed this way was certainly not appended. Any other failure (a timeout, a lost
    /// connection, a leader that stopped after accepting the batch) leaves the batch
    /// possibly stored, which an idempotent producer must not send under a new stamp.
    pub fn proves_not_stored(&self) -> bool {
        matches!(
            self,
            ClientError::UnknownTopic { .. }
                | ClientError::UnknownPartition { .. }
                | ClientError::InvalidRequest { .. }
                | ClientError::CorruptBatch { .. }
                | ClientError::BatchTooLarge { .. }
                | ClientError::DuplicateSequence { .. }
                | ClientError::OutOfOrderSequence { .. }
                | ClientError::UnknownProducer { .. }
                | ClientError::ProducerFenced { .. }
        )
    }

    /// Whether the client's metadata may be out of date: the broker does not (yet)
    /// know the topic or partition, or leadership moved. Requests aimed at a partition
    /// leader retry these after refreshing metadata, as long as the refreshed metadata
    /// still lists the partition.
    pub fn is_stale_metadata(&self) -> bool {
        matches!(
            self,
            ClientError::UnknownTopic { .. }
                | ClientError::UnknownPartition { .. }
                | ClientError::NotLeader { .. }
                | ClientError::NotController { .. }
        )
    }

    /// The leader hint carried by `NOT_LEADER` / `NOT_CONTROLLER` (or the
    /// coordinator carried by `NOT_COORDINATOR`), if any.
    pub fn leader_hint(&self) -> Option<&BrokerInfo> {
        match self {
            ClientError::NotLeader { leader, .. }
            | ClientError::NotController { leader, .. }
            | ClientError::NotCoordinator {
                coordinator: leader,
                ..
            } => leader.as_ref(),
            _ => None,
        }
    }
}

/// Turns a response's optional `Error` into a `Result`.
pub(crate) fn check(err: Option<v1::Error>) -> Result<()> {
    match ClientError::from_proto(err) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// What one attempt of an RPC can fail with, before the transport status is tied to
/// the broker address it came from.
#[derive(Debug)]
pub(crate) enum CallError {
    Status(tonic::Status),
    Client(ClientError),
}

impl CallError {
    pub(crate) fn into_client(self, addr: &str) -> ClientError {
        match self {
            CallError::Status(s) => ClientError::from_status(addr, &s),
            CallError::Client(e) => e,
        }
    }
}

impl From<tonic::Status> for CallError {
    fn from(s: tonic::Status) -> Self {
        CallError::Status(s)
    }
}

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> Self {
        CallError::Client(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::ErrorCode as C;

    fn proto(code: i32, message: &str) -> Option<v1::Error> {
        Some(v1::Error {
            code,
            message: message.into(),
            leader: None,
        })
    }

    #[test]
    fn absent_and_none_are_success() {
        assert_eq!(ClientError::from_proto(None), None);
        assert_eq!(ClientError::from_proto(proto(0, "")), None);
        assert!(check(None).is_ok());
    }

    #[test]
    fn every_error_code_maps_to_its_variant_and_back() {
        let all = [
            C::Internal,
            C::UnknownTopic,
            C::UnknownPartition,
            C::InvalidTopicName,
            C::TopicAlreadyExists,
            C::InvalidPartitions,
            C::InvalidReplicationFactor,
            C::InvalidConfig,
            C::InvalidRequest,
            C::CorruptBatch,
            C::BatchTooLarge,
            C::OffsetOutOfRange,
            C::NotLeader,
            C::NotController,
            C::Timeout,
            C::DiskFull,
            C::Storage,
            C::DuplicateSequence,
            C::OutOfOrderSequence,
            C::UnknownProducer,
            C::ShuttingDown,
            C::ProducerFenced,
            C::NotCoordinator,
            C::CoordinatorNotAvailable,
            C::UnknownMemberId,
            C::FencedMemberEpoch,
            C::GroupNotEmpty,
            C::UnknownGroup,
            C::InvalidGroupId,
        ];
        // The list above covers every code but NONE.
        assert_eq!(all.len(), 29);
        for code in all {
            let msg = format!("message for {}", code.as_str_name());
            let err = ClientError::from_proto(proto(code as i32, &msg)).unwrap();
            assert_eq!(err.code(), Some(code), "{err:?}");
            assert!(err.to_string().contains(&msg), "{err}");
        }
    }

    #[test]
    fn unknown_codes_keep_number_and_message() {
        let err = ClientError::from_proto(proto(99, "from the future")).unwrap();
        assert_eq!(
            err,
            ClientError::UnknownCode {
                code: 99,
                message: "from the future".into()
            }
        );
        assert_eq!(err.code(), None);
        assert!(!err.is_retriable());
    }

    #[test]
    fn not_leader_carries_the_leader_hint() {
        let err = ClientError::from_proto(Some(v1::Error {
            code: C::NotLeader as i32,
            message: "broker 1 does not lead orders/3".into(),
            leader: Some(v1::Broker {
                id: 2,
                addr: "10.0.0.2:9700".into(),
            }),
        }))
        .unwrap();
        assert_eq!(
            err.leader_hint(),
            Some(&BrokerInfo {
                id: 2,
                addr: "10.0.0.2:9700".into()
            })
        );
        let text = err.to_string();
        assert!(
            text.contains("orders/3") && text.contains("10.0.0.2:9700"),
            "{text}"
        );
        assert!(err.is_retriable() && err.is_stale_metadata());

        // A hint without an address is no hint.
        let err = ClientError::from_proto(Some(v1::Error {
            code: C::NotController as i32,
            message: "m".into(),
            leader: Some(v1::Broker {
                id: 3,
                addr: String::new(),
            }),
        }))
        .unwrap();
        assert_eq!(err.leader_hint(), None);
    }

    #[test]
    fn retry_classification() {
        let retriable = [
            C::NotLeader,
            C::NotController,
            C::Timeout,
            C::ShuttingDown,
            C::NotCoordinator,
            C::CoordinatorNotAvailable,
        ];
        for code in retriable {
            assert!(
                ClientError::from_proto(proto(code as i32, "x"))
                    .unwrap()
                    .is_retriable()
            );
        }
        for code in [
            C::Internal,
            C::UnknownTopic,
            C::InvalidConfig,
            C::CorruptBatch,
            C::BatchTooLarge,
            C::OffsetOutOfRange,
            C::DiskFull,
            C::UnknownMemberId,
            C::FencedMemberEpoch,
            C::GroupNotEmpty,
        ] {
            assert!(
                !ClientError::from_proto(proto(code as i32, "x"))
                    .unwrap()
                    .is_retriable(),
                "{code:?}"
            );
        }
        let stale = ClientError::UnknownPartition {
            message: "x".into(),
        };
        assert!(stale.is_stale_metadata() && !stale.is_retriable());
        for local in [
            ClientError::InvalidArgument("x".into()),
            ClientError::BufferFull("x".into()),
            ClientError::Closed("x".into()),
        ] {
            assert!(!local.is_retriable() && local.code().is_none());
        }
    }

    #[test]
    fn grpc_statuses_map_to_transport_timeout_or_protocol() {
        let unavailable = tonic::Status::unavailable("tcp connect error");
        let err = ClientError::from_status("b1:9700", &unavailable);
        assert!(matches!(&err, ClientError::Transport { addr, .. } if addr == "b1:9700"));
        assert!(err.is_retriable());
        assert!(err.to_string().contains("tcp connect error"), "{err}");

        let deadline = tonic::Status::deadline_exceeded("slow");
        assert!(matches!(
            ClientError::from_status("b", &deadline),
            ClientError::Timeout { .. }
        ));

        let unimplemented = tonic::Status::unimplemented("");
        let err = ClientError::from_status("b", &unimplemented);
        assert!(matches!(err, ClientError::Protocol { .. }));
        assert!(!err.is_retriable());
        assert!(err.to_string().contains("Unimplemented"), "{err}");
    }
}
