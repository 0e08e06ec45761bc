//! The internal task messages: which task to advance and which step of it
//! the message stands for. The task row in Postgres holds everything else,
//! so a message is small, and a duplicate (its `seq` already done) is
//! recognised and dropped.
//!
//! Two kinds, each on its own queue so that listing and copying scale
//! apart: a *list* task pages through one prefix; a *copy* task copies one
//! bounded batch of objects that a listed page produced.
//!
//! The rest of the module is the vocabulary of a task's work (where a
//! listing is, what a page or a batch produced, what committing it did),
//! shared by the workers and the queries of [`crate::db::tasks`] that
//! record it: the types live here, the SQL there.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::contract::ImportRequest;
use crate::model::FailureCode;

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

/// A task that a message may advance, with its import's request.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub message: TaskMessage,
    pub import_id: Uuid,
    pub work: Work,
    /// The request as stored (parsed once per import and process): an
    /// Azure source's SAS token is in `sealed_secret`, not here.
    pub request: Arc<ImportRequest>,
    /// What the scheduler sealed for this import (an Azure SAS token).
    pub sealed_secret: Option<Vec<u8>>,
}

/// Where a listing task is: the next page of `prefix`, from `continuation`,
/// with the delimiter if `delimited`, and only keys from `start_at` on and
/// before `end_before`.
#[derive(Debug, Clone)]
pub struct ListPosition {
    pub prefix: String,
    pub continuation: Option<String>,
    pub delimited: bool,
    pub start_at: Option<String>,
    pub end_before: Option<String>,
}

/// Objects per copy task unless `TETHER_COPY_BATCH_OBJECTS` says
/// otherwise: a copy task is the unit the fair share cannot cut short, so
/// a newcomer waits for about one of them (the worker's default, and the
/// batch of a requeue).
pub const DEFAULT_COPY_BATCH_OBJECTS: usize = 20;

/// What a task does.
#[derive(Debug, Clone)]
pub enum Work {
    /// List the next page.
    List(ListPosition),
    /// Copy these objects.
    Copy { items: Vec<CopyItem> },
}

/// An object a copy task copies, as the listing described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyItem {
    pub key: String,
    pub size: i64,
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
}

/// How a listed page's objects to copy are cut into copy tasks, so that
/// each task ends well within the broker's delivery timeout.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub max_objects: usize,
    pub max_bytes: i64,
}

/// What became of one object of a copy task.
#[derive(Debug, Clone)]
pub struct CopyOutcome {
    pub item: CopyItem,
    /// The stored URL, or why the copy failed.
    pub result: Result<String, FailureRow>,
}

/// An object from a listing page that passed the filters.
#[derive(Debug, Clone)]
pub struct ImageRow {
    pub source_url: String,
    pub size_bytes: i64,
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
}

/// A failed object, or a failed prefix.
#[derive(Debug, Clone)]
pub struct FailureRow {
    pub source_url: String,
    pub code: FailureCode,
    pub message: String,
    pub attempts: i32,
    /// The object, for a copy that `tetherctl requeue` may try again.
    pub object: Option<CopyItem>,
}

/// One listed page, ready to be committed.
#[derive(Debug, Default)]
pub struct PageResult {
    /// Objects seen, folder markers excluded.
    pub listed: i64,
    /// Left out by the extension filter.
    pub filtered: i64,
    pub images: Vec<ImageRow>,
    pub failures: Vec<FailureRow>,
    /// Continuation token of the next page; `None` when this was the last.
    pub next: Option<String>,
}

/// What a delimited page adds: listing tasks for its new sub-prefixes and,
/// once the import's cap on listing tasks is reached, the key from which the
/// task lists the rest of its prefix without the delimiter.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FanOut {
    /// Sub-prefixes that become listing tasks.
    pub sub_prefixes: Vec<String>,
    /// Set: the task goes on recursively from this key (the page's
    /// [`PageResult`] holds only what lies before it).
    pub recursive_from: Option<String>,
    /// The import's cap on listing tasks, if the new tasks must stay within
    /// it; `None` to add them regardless (see the worker's fan-out plan).
    pub cap: Option<i64>,
    /// Keys, in order, at which the rest of the task's key range is split:
    /// the task ends before the first, and each starts a task of its own
    /// that ends before the next (the last where the task ended).
    pub split_at: Vec<String>,
}

/// How many listing tasks an import has, and which of a page's sub-prefixes
/// already have theirs.
#[derive(Debug, Default)]
pub struct ListBudget {
    pub list_tasks: i64,
    pub existing: std::collections::HashSet<String>,
}

/// What committing a page did.
#[derive(Debug, PartialEq, Eq)]
pub enum PageCommit {
    /// The message was stale (page already done, task or import ended).
    Stale,
    /// Other tasks took the room under the cap meanwhile: plan again.
    OverCap,
    Committed {
        imported: i64,
        unchanged: i64,
        /// The listing message to publish after the commit: the next page,
        /// or, when this task ended, the sub-prefix task that took its slot.
        next: Option<TaskMessage>,
        /// Copy tasks made from this page (copy mode), recorded held: the
        /// scheduler releases them within the fair share ([`crate::db::dispatch`]).
        copy_tasks: usize,
        /// Listing tasks of new sub-prefixes, recorded held likewise.
        sub_prefix_tasks: usize,
    },
}
