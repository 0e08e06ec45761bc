//! The internal task message: which listing chain to advance and which page
//! of it the message stands for. The task row in Postgres holds everything
//! else, so a message is small, and a duplicate (same `seq` already done) is
//! recognised and dropped.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The queue of listing tasks (quorum, with a delivery limit).
pub const TASK_QUEUE: &str = "tether.tasks";
/// Where the task queue dead-letters poison messages, for staff to inspect.
pub const TASK_DEAD_LETTER_QUEUE: &str = "tether.tasks.dead-letter";
/// Where `tether.import-requests` dead-letters a request that kept failing.
pub const REQUEST_DEAD_LETTER_QUEUE: &str = "tether.import-requests.dead-letter";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMessage {
    pub task_id: Uuid,
    /// The page this message lists: equal to the task row's `seq` or stale.
    pub seq: i32,
}
