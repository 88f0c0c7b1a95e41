//! [`RebalanceListener`]: what a subscribed consumer tells the application when its
//! share of the group's partitions changes.

use crate::types::TopicPartition;

/// Called by [`crate::Consumer::recv`] (never from another task) as the group moves
/// partitions to and from this consumer.
///
/// - `on_assigned`: the partitions were added; reading starts at the group's
///   committed offsets (or per `auto_offset_reset`).
/// - `on_revoked`: the partitions are about to go to other members. With auto-commit
///   on, the positions reached have just been committed; the partitions are released
///   when the callback returns, so work on their records must be finished or given
///   up by then.
/// - `on_lost`: the consumer was removed from the group (its session expired, or it
///   was fenced): the partitions already belong to others and nothing could be
///   committed. Defaults to `on_revoked`.
///
/// ```
/// use sluice_client::{RebalanceListener, TopicPartition};
///
/// struct Log;
/// impl RebalanceListener for Log {
///     fn on_assigned(&mut self, partitions: &[TopicPartition]) {
///         println!("now reading {partitions:?}");
///     }
///     fn on_revoked(&mut self, partitions: &[TopicPartition]) {
///         println!("giving up {partitions:?}");
///     }
/// }
/// ```
pub trait RebalanceListener: Send {
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }

    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }

    fn on_lost(&mut self, partitions: &[TopicPartition]) {
        self.on_revoked(partitions);
    }
}
