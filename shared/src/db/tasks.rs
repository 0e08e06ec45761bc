//! Queries on listing tasks: loading one for a message, committing a listed
//! page (references, counters and checkpoint in one transaction), recording
//! failures, and finding tasks whose message was lost.
//!
//! Exactly-once effect rests on one rule: a page commits only if the task row
//! still has the `seq` the message carries, checked under the row lock; the
//! commit bumps `seq`. A redelivered or duplicated message therefore finds a
//! newer `seq` and does nothing.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{DbError, Store};
use crate::contract::{ImportRequest, Mode};
use crate::task::TaskMessage;

/// Namespace of the UUIDv5s that identify images and failures.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x5d1f_6c3e_8a2b_4c71_9e0d_7b3a_1f42_e8c6);

/// `tether.images.image_id`: stable for (`dataset_id`, `source_url`).
pub fn image_id(dataset_id: &str, source_url: &str) -> Uuid {
    Uuid::new_v5(
        &ID_NAMESPACE,
        format!("{dataset_id}\n{source_url}").as_bytes(),
    )
}

fn failure_key(source_url: &str) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, source_url.as_bytes())
}

/// A task that a message may advance, with its import's request.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub message: TaskMessage,
    pub import_id: Uuid,
    pub prefix: String,
    pub continuation: Option<String>,
    pub request: ImportRequest,
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
    pub code: &'static str,
    pub message: String,
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

/// What committing a page did.
#[derive(Debug, PartialEq, Eq)]
pub enum PageCommit {
    /// The message was stale (page already done, task or import ended).
    Stale,
    Committed {
        imported: i64,
        unchanged: i64,
        /// The message for the next page, to publish after the commit.
        next: Option<TaskMessage>,
    },
}

impl Store {
    /// The task a message points at, if the message is current and the
    /// import still runs.
    pub async fn load_task(&self, message: TaskMessage) -> Result<Option<TaskContext>, DbError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT t.import_id, t.prefix, t.continuation, i.request
                 FROM tether.tasks t JOIN tether.imports i USING (import_id)
                 WHERE t.task_id = $1 AND t.seq = $2 AND t.state = 'pending'
                   AND i.state IN ('queued', 'running')",
                &[&message.task_id, &message.seq],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let request = ImportRequest::from_stored_json(&row.get(3)).map_err(DbError::Corrupt)?;
        Ok(Some(TaskContext {
            message,
            import_id: row.get(0),
            prefix: row.get(1),
            continuation: row.get(2),
            request,
        }))
    }

    /// Writes a page's references and failures, adds its counts to the
    /// import, and checkpoints the continuation token, in one transaction.
    pub async fn commit_page(
        &self,
        task: &TaskContext,
        page: &PageResult,
    ) -> Result<PageCommit, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !lock_current(&tx, task.message).await? {
            return Ok(PageCommit::Stale);
        }
        let request = &task.request;
        let ids: Vec<Uuid> = page
            .images
            .iter()
            .map(|i| image_id(&request.dataset_id, &i.source_url))
            .collect();
        let urls: Vec<&str> = page.images.iter().map(|i| i.source_url.as_str()).collect();
        let sizes: Vec<i64> = page.images.iter().map(|i| i.size_bytes).collect();
        let etags: Vec<Option<&str>> = page.images.iter().map(|i| i.etag.as_deref()).collect();
        let modified: Vec<Option<DateTime<Utc>>> =
            page.images.iter().map(|i| i.last_modified).collect();
        let storage = match request.mode {
            Mode::Link => "link",
            Mode::Copy => "copy",
        };
        // New objects are inserted; changed ones (other ETag) re-imported.
        // A link import leaves an existing copy alone: that counts as skipped.
        let imported = tx
            .execute(
                "INSERT INTO tether.images AS im (image_id, import_id, workspace_id, dataset_id, source_url,
                                                  size_bytes, etag, last_modified, storage, stored_url)
                 SELECT u.id, $1, $2, $3, u.url, u.size, u.etag, u.modified, $9, NULL
                 FROM unnest($4::uuid[], $5::text[], $6::int8[], $7::text[], $8::timestamptz[])
                      AS u(id, url, size, etag, modified)
                 ON CONFLICT (image_id) DO UPDATE
                 SET import_id = EXCLUDED.import_id, size_bytes = EXCLUDED.size_bytes, etag = EXCLUDED.etag,
                     last_modified = EXCLUDED.last_modified
                 WHERE im.etag IS DISTINCT FROM EXCLUDED.etag AND im.storage = 'link'",
                &[
                    &task.import_id,
                    &request.workspace_id,
                    &request.dataset_id,
                    &ids,
                    &urls,
                    &sizes,
                    &etags,
                    &modified,
                    &storage,
                ],
            )
            .await? as i64;
        insert_failures(&tx, task.import_id, &page.failures).await?;
        let unchanged = page.images.len() as i64 - imported;
        let running = tx
            .execute(
                "UPDATE tether.imports
                 SET objects_listed = objects_listed + $2, objects_imported = objects_imported + $3,
                     objects_filtered = objects_filtered + $4, objects_unchanged = objects_unchanged + $5,
                     objects_failed = objects_failed + $6,
                     state = 'running', started_at = coalesce(started_at, now())
                 WHERE import_id = $1 AND state IN ('queued', 'running')",
                &[
                    &task.import_id,
                    &page.listed,
                    &imported,
                    &page.filtered,
                    &unchanged,
                    &(page.failures.len() as i64),
                ],
            )
            .await?;
        if running == 0 {
            // Cancelled or failed meanwhile: keep nothing of this page.
            return Ok(PageCommit::Stale);
        }
        let next = match &page.next {
            Some(token) => {
                tx.execute(
                    "UPDATE tether.tasks SET continuation = $2, seq = seq + 1, attempts = 0,
                            published_at = now(), updated_at = now()
                     WHERE task_id = $1",
                    &[&task.message.task_id, token],
                )
                .await?;
                Some(TaskMessage {
                    task_id: task.message.task_id,
                    seq: task.message.seq + 1,
                })
            }
            None => {
                tx.execute(
                    "UPDATE tether.tasks SET state = 'done', continuation = NULL, seq = seq + 1, updated_at = now()
                     WHERE task_id = $1",
                    &[&task.message.task_id],
                )
                .await?;
                None
            }
        };
        tx.commit().await?;
        Ok(PageCommit::Committed {
            imported,
            unchanged,
            next,
        })
    }

    /// Ends a task whose prefix cannot be listed (e.g. access denied): one
    /// failure row for the prefix, the rest of the import goes on.
    pub async fn fail_task(
        &self,
        task: &TaskContext,
        failure: &FailureRow,
    ) -> Result<bool, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !lock_current(&tx, task.message).await? {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO tether.import_failures (import_id, failure_key, source_url, code, message)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (import_id, failure_key) DO UPDATE
             SET code = EXCLUDED.code, message = EXCLUDED.message,
                 attempts = tether.import_failures.attempts + 1, last_attempt_at = now()",
            &[
                &task.import_id,
                &task.message.task_id,
                &failure.source_url,
                &failure.code,
                &failure.message,
            ],
        )
        .await?;
        tx.execute(
            "UPDATE tether.tasks SET state = 'failed', seq = seq + 1, updated_at = now() WHERE task_id = $1",
            &[&task.message.task_id],
        )
        .await?;
        tx.execute(
            "UPDATE tether.imports SET state = 'running', started_at = coalesce(started_at, now())
             WHERE import_id = $1 AND state = 'queued'",
            &[&task.import_id],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Fails a whole import (credentials refused, bucket missing): its other
    /// tasks stop and the scheduler makes it `failed` with `error`.
    pub async fn fail_import(&self, import_id: Uuid, error: &str) -> Result<(), DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Tasks first, then the import: the order page commits lock them in.
        tx.execute(
            "UPDATE tether.tasks SET state = 'cancelled', updated_at = now()
             WHERE import_id = $1 AND state = 'pending'",
            &[&import_id],
        )
        .await?;
        tx.execute(
            "UPDATE tether.imports SET error = coalesce(error, $2), started_at = coalesce(started_at, now())
             WHERE import_id = $1 AND state IN ('queued', 'running')",
            &[&import_id, &error],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Counts one more failed attempt at a task's current page.
    pub async fn record_attempt(&self, message: TaskMessage) -> Result<i32, DbError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE tether.tasks SET attempts = attempts + 1
                 WHERE task_id = $1 AND seq = $2 AND state = 'pending' RETURNING attempts",
                &[&message.task_id, &message.seq],
            )
            .await?;
        Ok(row.map_or(0, |r| r.get(0)))
    }

    /// Pending tasks whose message went out more than `after_secs` ago without
    /// progress since: the message may be lost (a crash between commit and
    /// publish, a broker restart). Marks them published again and returns
    /// them; a duplicate does no harm.
    pub async fn tasks_to_republish(
        &self,
        after_secs: f64,
        limit: i64,
    ) -> Result<Vec<TaskMessage>, DbError> {
        Ok(self
            .client()
            .await?
            .query(
                "UPDATE tether.tasks SET published_at = now()
                 WHERE task_id IN (
                     SELECT task_id FROM tether.tasks
                     WHERE state = 'pending'
                       AND published_at < now() - make_interval(secs => $1)
                       AND updated_at < now() - make_interval(secs => $1)
                     ORDER BY published_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING task_id, seq",
                &[&after_secs, &limit],
            )
            .await?
            .iter()
            .map(|r| TaskMessage {
                task_id: r.get(0),
                seq: r.get(1),
            })
            .collect())
    }
}

/// Locks the task row and tells whether the message is still current.
async fn lock_current(
    tx: &tokio_postgres::Transaction<'_>,
    message: TaskMessage,
) -> Result<bool, DbError> {
    let row = tx
        .query_opt(
            "SELECT seq, state FROM tether.tasks WHERE task_id = $1 FOR UPDATE",
            &[&message.task_id],
        )
        .await?;
    Ok(row.is_some_and(|r| r.get::<_, i32>(0) == message.seq && r.get::<_, &str>(1) == "pending"))
}

async fn insert_failures(
    tx: &tokio_postgres::Transaction<'_>,
    import_id: Uuid,
    failures: &[FailureRow],
) -> Result<(), DbError> {
    if failures.is_empty() {
        return Ok(());
    }
    let keys: Vec<Uuid> = failures
        .iter()
        .map(|f| failure_key(&f.source_url))
        .collect();
    let urls: Vec<&str> = failures.iter().map(|f| f.source_url.as_str()).collect();
    let codes: Vec<&str> = failures.iter().map(|f| f.code).collect();
    let messages: Vec<&str> = failures.iter().map(|f| f.message.as_str()).collect();
    tx.execute(
        "INSERT INTO tether.import_failures (import_id, failure_key, source_url, code, message)
         SELECT $1, u.k, u.url, u.code, u.message
         FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[]) AS u(k, url, code, message)
         ON CONFLICT (import_id, failure_key) DO UPDATE
         SET code = EXCLUDED.code, message = EXCLUDED.message,
             attempts = tether.import_failures.attempts + 1, last_attempt_at = now()",
        &[&import_id, &keys, &urls, &codes, &messages],
    )
    .await?;
    Ok(())
}
