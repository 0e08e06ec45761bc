//! The internal task messages: which task to advance and which step of it
//! the message stands for. The task row in Postgres holds everything else,
//! so a message is small, and a duplicate (its `seq` already done) is
//! recognised and dropped.
//!
//! Two kinds, each on its own queue so that listing and copying scale
//! apart: a *list* task pages through one prefix; a *copy* task copies one
//! bounded batch of objects that a listed page produced.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where the task queues dead-letter poison messages, for staff to inspect.
pub const TASK_DEAD_LETTER_QUEUE: &str = "tether.tasks.dead-letter";
/// Where `tether.import-requests` dead-letters a request that kept failing.
pub const REQUEST_DEAD_LETTER_QUEUE: &str = "tether.import-requests.dead-letter";

/// Delays (seconds) of the retry queues: RabbitMQ 3.10 has no delayed
/// delivery, so a retry waits in a queue with this TTL whose dead-letter
/// target is the task's queue.
pub const RETRY_TIERS_SECS: [u32; 5] = [1, 5, 15, 60, 300];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    List,
    Copy,
}

impl TaskKind {
    pub const ALL: [TaskKind; 2] = [TaskKind::List, TaskKind::Copy];

    /// The quorum queue of this kind of task.
    pub fn queue(self) -> &'static str {
        match self {
            TaskKind::List => "tether.tasks",
            TaskKind::Copy => "tether.copy-tasks",
        }
    }

    /// The name in `tether.tasks.kind` and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::List => "list",
            TaskKind::Copy => "copy",
        }
    }

    /// The retry queue that holds a task of this kind for `delay` (rounded
    /// up to the next tier) before dead-lettering it back to its queue.
    pub fn retry_queue(self, delay: std::time::Duration) -> (String, u32) {
        let tier = RETRY_TIERS_SECS
            .iter()
            .copied()
            .find(|t| u64::from(*t) >= delay.as_secs())
            .unwrap_or(RETRY_TIERS_SECS[RETRY_TIERS_SECS.len() - 1]);
        (format!("{}.retry-{tier}s", self.queue()), tier)
    }

    pub fn from_queue(queue: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.queue() == queue)
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMessage {
    pub task_id: Uuid,
    /// The step this message stands for: equal to the task row's `seq` or stale.
    pub seq: i32,
}
