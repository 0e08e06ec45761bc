//! Queries on tasks (what a task is and does, [`crate::task`], is kept
//! apart from the SQL here): loading one for a message, committing a listed page
//! (references or copy tasks, sub-prefix tasks, counters and checkpoint in
//! one transaction), committing a copied batch, recording failures, and
//! finding tasks whose message was lost.
//!
//! Exactly-once effect rests on one rule: a page commits only if the task row
//! still has the `seq` the message carries, checked under the row lock; the
//! commit bumps `seq`. A redelivered or duplicated message therefore finds a
//! newer `seq` and does nothing. Sub-prefix tasks have ids derived from
//! (import, prefix), so even a prefix that a store reports twice becomes one
//! task.
//!
//! The statements of the per-page path are prepared once per connection
//! (`prepare_cached`): a page is a handful of statements, and parsing and
//! planning them each time cost Postgres more than running them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use serde_json::Value;
use uuid::Uuid;

use super::request_cache::CachedRequest;
use super::{DbError, Store};
use crate::contract::{ImportRequest, Mode};
use crate::model::FailureCode;
use crate::task::{
    Batching, CopyItem, CopyOutcome, FailureRow, FanOut, ImageRow, ListBudget, ListPosition, PageCommit,
    PageResult, TaskContext, TaskKind, TaskMessage, Work,
};

/// Namespace of the UUIDv5s that identify images and failures.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x5d1f_6c3e_8a2b_4c71_9e0d_7b3a_1f42_e8c6);

/// The `image_id` of an image new to its dataset: a UUIDv8 whose first 4
/// bytes come from (`workspace_id`, `dataset_id`) and the next 28 bits from
/// the time in milliseconds (wrapping every 74 hours), the rest random. New
/// rows of one dataset thus land at one point of the primary key instead
/// of on a random page of it (migration 0017). An id is given once: a
/// re-import finds the row by its name and keeps the id it has.
pub fn new_image_id(workspace_id: &str, dataset_id: &str) -> Uuid {
    let dataset = Uuid::new_v5(&ID_NAMESPACE, format!("{workspace_id}\n{dataset_id}").as_bytes());
    let millis = u64::try_from(Utc::now().timestamp_millis()).unwrap_or_default();
    let mut bytes: [u8; 16] = rand::random();
    bytes[..4].copy_from_slice(&dataset.as_bytes()[..4]);
    // Byte 6's high nibble is the version (set by new_v8): the time's 28
    // bits go around it, most significant first.
    let [.., t3, t2, t1, t0] = (millis & 0x0fff_ffff).to_be_bytes();
    bytes[4] = (t3 << 4) | (t2 >> 4);
    bytes[5] = (t2 << 4) | (t1 >> 4);
    bytes[6] = t1 & 0x0f;
    bytes[7] = t0;
    Uuid::new_v8(bytes)
}

fn failure_key(source_url: &str) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, source_url.as_bytes())
}

/// The id of the listing task of a sub-prefix met by a delimited listing.
pub fn sub_prefix_task_id(import_id: Uuid, prefix: &str) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, format!("{import_id}\nlist\n{prefix}").as_bytes())
}

impl Store {
    /// The task a message points at, if the message is current, of the
    /// kind expected, and its import still runs.
    pub async fn load_task(
        &self,
        kind: TaskKind,
        message: TaskMessage,
    ) -> Result<Option<TaskContext>, DbError> {
        let client = self.client().await?;
        // The request comes from the cache (request_cache): only the task's
        // own row is read per message.
        let statement = client
            .prepare_cached(
                "SELECT t.import_id, t.prefix, t.continuation, t.items, t.delimited, t.start_at, t.end_before
                 FROM tether.tasks t JOIN tether.imports i USING (import_id)
                 WHERE t.task_id = $1 AND t.seq = $2 AND t.kind = $3 AND t.state = 'pending'
                   AND i.state IN ('queued', 'running')",
            )
            .await?;
        let row = client.query_opt(&statement, &[&message.task_id, &message.seq, &kind.as_str()]).await?;
        let Some(row) = row else { return Ok(None) };
        let import_id: Uuid = row.get(0);
        let work = match kind {
            TaskKind::List => Work::List(ListPosition {
                prefix: row.get::<_, Option<String>>(1).unwrap_or_default(),
                continuation: row.get(2),
                delimited: row.get(4),
                start_at: row.get(5),
                end_before: row.get(6),
            }),
            TaskKind::Copy => {
                let items: Option<Value> = row.get(3);
                let items = serde_json::from_value(items.unwrap_or_default())
                    .map_err(|e| DbError::Corrupt(format!("copy task items: {e}")))?;
                Work::Copy { items }
            }
        };
        let cached = match self.requests.get(import_id) {
            Some(cached) => cached,
            None => {
                let row = client
                    .query_one(
                        "SELECT request, source_secret, octet_length(request::text) FROM tether.imports
                         WHERE import_id = $1",
                        &[&import_id],
                    )
                    .await?;
                let request = ImportRequest::from_stored_json(&row.get(0)).map_err(DbError::Corrupt)?;
                let bytes = usize::try_from(row.get::<_, Option<i32>>(2).unwrap_or(0)).unwrap_or(0);
                self.requests.insert(
                    import_id,
                    CachedRequest { request: Arc::new(request), sealed_secret: row.get(1), bytes },
                )
            }
        };
        Ok(Some(TaskContext {
            message,
            import_id,
            work,
            request: Arc::clone(&cached.request),
            sealed_secret: cached.sealed_secret.clone(),
        }))
    }

    /// The room a delimited page's sub-prefixes may take: the import's
    /// listing tasks, and which of `prefixes` have a task already.
    pub async fn list_budget(&self, import_id: Uuid, prefixes: &[String]) -> Result<ListBudget, DbError> {
        let ids: Vec<Uuid> = prefixes.iter().map(|p| sub_prefix_task_id(import_id, p)).collect();
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT (SELECT list_tasks FROM tether.imports WHERE import_id = $1),
                        ARRAY(SELECT prefix FROM tether.tasks WHERE task_id = ANY($2))",
            )
            .await?;
        let row = client.query_one(&statement, &[&import_id, &ids]).await?;
        Ok(ListBudget {
            list_tasks: row.get::<_, Option<i32>>(0).map_or(0, i64::from),
            existing: row.get::<_, Vec<String>>(1).into_iter().collect(),
        })
    }

    /// Commits a listed page in one transaction: in link mode its
    /// references, in copy mode its copy tasks (objects already copied and
    /// unchanged are skipped); its failures and counts; the listing tasks of
    /// its new sub-prefixes; and the continuation token (or the switch to a
    /// recursive listing).
    pub async fn commit_page(
        &self,
        task: &TaskContext,
        page: &PageResult,
        fan_out: &FanOut,
        batching: Batching,
    ) -> Result<PageCommit, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !lock_current(&tx, task.message).await? {
            return Ok(PageCommit::Stale);
        }
        let request = &task.request;
        let (imported, copies) = match request.mode {
            Mode::Link => (upsert_images(&tx, task, &page.images, None).await?, Vec::new()),
            Mode::Copy => (0, insert_copy_tasks(&tx, task, &page.images, batching).await?),
        };
        let unchanged = page.images.len() as i64 - imported - copies.iter().map(|(_, n)| n).sum::<i64>();
        insert_failures(&tx, task.import_id, &page.failures).await?;
        let counts = Counts {
            listed: page.listed,
            imported,
            filtered: page.filtered,
            unchanged,
            failed: page.failures.len() as i64,
            bytes_copied: 0,
        };
        if !add_counts(&tx, task.import_id, &counts).await? {
            // Cancelled or failed meanwhile: keep nothing of this page.
            return Ok(PageCommit::Stale);
        }
        let Some(mut sub_prefixes) = insert_sub_prefix_tasks(&tx, task.import_id, fan_out).await? else {
            // Dropping the transaction rolls the page back.
            return Ok(PageCommit::OverCap);
        };
        let Some(ranges) = insert_range_tasks(&tx, task, fan_out).await? else {
            return Ok(PageCommit::OverCap);
        };
        sub_prefixes.extend(ranges);
        let next = if fan_out.recursive_from.is_some() || page.next.is_some() {
            // The next page: from the continuation token, or (switching to a
            // recursive listing) from `start_at` without a token.
            let statement = tx
                .prepare_cached(
                    "UPDATE tether.tasks
                     SET continuation = CASE WHEN $3::text IS NULL THEN $2 END,
                         start_at = coalesce($3, start_at), delimited = delimited AND $3::text IS NULL,
                         end_before = coalesce($4, end_before),
                         seq = seq + 1, attempts = 0, published_at = now(), updated_at = now()
                     WHERE task_id = $1",
                )
                .await?;
            let end_before = fan_out.split_at.first();
            tx.execute(
                &statement,
                &[&task.message.task_id, &page.next, &fan_out.recursive_from, &end_before],
            )
            .await?;
            Some(TaskMessage { task_id: task.message.task_id, seq: task.message.seq + 1 })
        } else {
            finish_task(&tx, task.message).await?;
            match sub_prefixes.first() {
                // The ending task hands its slot to its first sub-prefix: no
                // cap is passed, and a deep chain of single sub-prefixes
                // goes on without waiting for the scheduler at each level.
                Some(heir) => {
                    let statement = tx
                        .prepare_cached(
                            "UPDATE tether.tasks SET held = false, published_at = now() WHERE task_id = $1",
                        )
                        .await?;
                    tx.execute(&statement, &[&heir.task_id]).await?;
                    Some(*heir)
                }
                None => None,
            }
        };
        tx.commit().await?;
        Ok(PageCommit::Committed {
            imported,
            unchanged,
            next,
            copy_tasks: copies.len(),
            sub_prefix_tasks: sub_prefixes.len(),
        })
    }

    /// Commits a copied batch: references to the copies, failures, counts
    /// and bytes, and the task's end, in one transaction. Returns false if
    /// the message was stale (the batch was committed before).
    pub async fn commit_copies(&self, task: &TaskContext, outcomes: &[CopyOutcome]) -> Result<bool, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !lock_current(&tx, task.message).await? {
            return Ok(false);
        }
        let source = &task.request.source;
        let mut copied = Vec::new();
        let mut stored = Vec::new();
        let mut failures = Vec::new();
        for outcome in outcomes {
            match &outcome.result {
                Ok(url) => {
                    copied.push(ImageRow {
                        source_url: source.url(&outcome.item.key),
                        size_bytes: outcome.item.size,
                        etag: outcome.item.etag.clone(),
                        last_modified: outcome.item.last_modified,
                    });
                    stored.push(url.as_str());
                }
                Err(failure) => failures.push(failure.clone()),
            }
        }
        let imported = upsert_images(&tx, task, &copied, Some(&stored)).await?;
        insert_failures(&tx, task.import_id, &failures).await?;
        let counts = Counts {
            imported,
            failed: failures.len() as i64,
            bytes_copied: copied.iter().map(|c| c.size_bytes).sum(),
            ..Counts::default()
        };
        if !add_counts(&tx, task.import_id, &counts).await? {
            return Ok(false);
        }
        finish_task(&tx, task.message).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ends a task whose prefix cannot be listed (e.g. access denied): one
    /// failure row for the prefix, the rest of the import goes on.
    pub async fn fail_task(&self, task: &TaskContext, failure: &FailureRow) -> Result<bool, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !lock_current(&tx, task.message).await? {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO tether.import_failures (import_id, failure_key, source_url, code, message, attempts)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (import_id, failure_key) DO UPDATE
             SET code = EXCLUDED.code, message = EXCLUDED.message,
                 attempts = tether.import_failures.attempts + EXCLUDED.attempts, last_attempt_at = now()",
            &[
                &task.import_id,
                &task.message.task_id,
                &failure.source_url,
                &failure.code.as_str(),
                &failure.message,
                &failure.attempts,
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

    /// Fails a whole import (credentials refused, bucket missing) once: its
    /// listing tasks stop (a requeue resumes them), the objects of its
    /// pending copy tasks are recorded as failed with `code` in one statement
    /// (a requeue copies them again), and the scheduler makes it `failed`
    /// with `error`. Its counts still add up: imported + skipped + failed =
    /// listed.
    pub async fn fail_import(&self, import_id: Uuid, error: &str, code: FailureCode) -> Result<(), DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Tasks first, then the import: the order page commits lock them in.
        let stopped = tx
            .query(
                "UPDATE tether.tasks SET state = CASE kind WHEN 'copy' THEN 'done' ELSE 'cancelled' END,
                        seq = seq + 1, updated_at = now()
                 WHERE import_id = $1 AND state = 'pending'
                 RETURNING items",
                &[&import_id],
            )
            .await?;
        let request: Option<Value> = tx
            .query_opt("SELECT request FROM tether.imports WHERE import_id = $1", &[&import_id])
            .await?
            .and_then(|r| r.get(0));
        let mut failures = Vec::new();
        if let Some(request) = request.as_ref().and_then(|r| ImportRequest::from_stored_json(r).ok()) {
            for row in &stopped {
                let Some(items) = row.get::<_, Option<Value>>(0) else { continue };
                let items: Vec<CopyItem> = serde_json::from_value(items)
                    .map_err(|e| DbError::Corrupt(format!("copy task items: {e}")))?;
                failures.extend(items.into_iter().map(|item| FailureRow {
                    source_url: request.source.url(&item.key),
                    code,
                    message: error.to_owned(),
                    attempts: 0,
                    object: Some(item),
                }));
            }
        }
        insert_failures(&tx, import_id, &failures).await?;
        tx.execute(
            "UPDATE tether.imports SET error = coalesce(error, $2), started_at = coalesce(started_at, now()),
                    objects_failed = objects_failed + $3
             WHERE import_id = $1 AND state IN ('queued', 'running')",
            &[&import_id, &error, &(failures.len() as i64)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Counts one more failed attempt at a task's current page. The task's
    /// message is parked for its retry right after: that counts as its
    /// publication, so the scheduler does not send a duplicate meanwhile.
    pub async fn record_attempt(&self, message: TaskMessage) -> Result<i32, DbError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE tether.tasks SET attempts = attempts + 1, published_at = now()
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
    ) -> Result<Vec<(TaskKind, TaskMessage)>, DbError> {
        Ok(self
            .client()
            .await?
            .query(
                "UPDATE tether.tasks SET published_at = now()
                 WHERE task_id IN (
                     SELECT task_id FROM tether.tasks
                     WHERE state = 'pending' AND NOT held
                       AND published_at < now() - make_interval(secs => $1)
                       AND updated_at < now() - make_interval(secs => $1)
                     ORDER BY published_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING task_id, seq, kind",
                &[&after_secs, &limit],
            )
            .await?
            .iter()
            .filter_map(|r| {
                Some((TaskKind::parse(r.get(2))?, TaskMessage { task_id: r.get(0), seq: r.get(1) }))
            })
            .collect())
    }
}

/// Locks the task row and tells whether the message is still current.
async fn lock_current(tx: &Transaction<'_>, message: TaskMessage) -> Result<bool, DbError> {
    let statement =
        tx.prepare_cached("SELECT seq, state FROM tether.tasks WHERE task_id = $1 FOR UPDATE").await?;
    let row = tx.query_opt(&statement, &[&message.task_id]).await?;
    Ok(row.is_some_and(|r| r.get::<_, i32>(0) == message.seq && r.get::<_, &str>(1) == "pending"))
}

async fn finish_task(tx: &Transaction<'_>, message: TaskMessage) -> Result<(), DbError> {
    let statement = tx
        .prepare_cached(
            "UPDATE tether.tasks SET state = 'done', continuation = NULL, seq = seq + 1, updated_at = now()
             WHERE task_id = $1",
        )
        .await?;
    tx.execute(&statement, &[&message.task_id]).await?;
    Ok(())
}

/// Records the listing tasks of a page's new sub-prefixes and counts them on
/// the import; `None` if that would pass the cap the plan assumed room under.
async fn insert_sub_prefix_tasks(
    tx: &Transaction<'_>,
    import_id: Uuid,
    fan_out: &FanOut,
) -> Result<Option<Vec<TaskMessage>>, DbError> {
    if fan_out.sub_prefixes.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let ids: Vec<Uuid> = fan_out.sub_prefixes.iter().map(|p| sub_prefix_task_id(import_id, p)).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO tether.tasks (task_id, import_id, kind, prefix, state, delimited, held)
             SELECT u.id, $1, 'list', u.prefix, 'pending', true, true
             FROM unnest($2::uuid[], $3::text[]) AS u(id, prefix)
             ON CONFLICT (task_id) DO NOTHING
             RETURNING task_id",
        )
        .await?;
    let inserted: Vec<TaskMessage> = tx
        .query(&statement, &[&import_id, &ids, &fan_out.sub_prefixes])
        .await?
        .iter()
        .map(|r| TaskMessage { task_id: r.get(0), seq: 0 })
        .collect();
    count_list_tasks(tx, import_id, inserted, fan_out.cap).await
}

/// Adds `inserted` to the import's count of listing tasks, unless that
/// passes `cap`; `None` then (the caller rolls back).
async fn count_list_tasks(
    tx: &Transaction<'_>,
    import_id: Uuid,
    inserted: Vec<TaskMessage>,
    cap: Option<i64>,
) -> Result<Option<Vec<TaskMessage>>, DbError> {
    let statement = tx
        .prepare_cached(
            "UPDATE tether.imports SET list_tasks = list_tasks + $2
             WHERE import_id = $1 AND ($3::int8 IS NULL OR list_tasks + $2 <= $3)",
        )
        .await?;
    let added = i32::try_from(inserted.len()).unwrap_or(i32::MAX);
    let counted = tx.execute(&statement, &[&import_id, &added, &cap]).await?;
    Ok((counted == 1).then_some(inserted))
}

/// The listing tasks of the key ranges a page splits off its task's range
/// (see [`FanOut::split_at`]), recorded held like sub-prefix tasks (the
/// fair share releases them), within the cap; `None` if over it. Their ids
/// come from the import, prefix and start key, so a page committed twice
/// adds them once.
async fn insert_range_tasks(
    tx: &Transaction<'_>,
    task: &TaskContext,
    fan_out: &FanOut,
) -> Result<Option<Vec<TaskMessage>>, DbError> {
    let Work::List(at) = &task.work else { return Ok(Some(Vec::new())) };
    if fan_out.split_at.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let starts = &fan_out.split_at;
    let ends: Vec<Option<&str>> =
        starts.iter().skip(1).map(|s| Some(s.as_str())).chain([at.end_before.as_deref()]).collect();
    let ids: Vec<Uuid> = starts
        .iter()
        .map(|start| {
            Uuid::new_v5(
                &ID_NAMESPACE,
                format!("{}\nrange\n{}\n{start}", task.import_id, at.prefix).as_bytes(),
            )
        })
        .collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO tether.tasks (task_id, import_id, kind, prefix, state, delimited, start_at, end_before, held)
             SELECT u.id, $1, 'list', $2, 'pending', $3, u.start_at, u.end_before, true
             FROM unnest($4::uuid[], $5::text[], $6::text[]) AS u(id, start_at, end_before)
             ON CONFLICT (task_id) DO NOTHING
             RETURNING task_id",
        )
        .await?;
    let inserted: Vec<TaskMessage> = tx
        .query(&statement, &[&task.import_id, &at.prefix, &at.delimited, &ids, starts, &ends])
        .await?
        .iter()
        .map(|r| TaskMessage { task_id: r.get(0), seq: 0 })
        .collect();
    count_list_tasks(tx, task.import_id, inserted, fan_out.cap).await
}

/// Amounts added to an import's counters by one commit.
#[derive(Debug, Default)]
struct Counts {
    listed: i64,
    imported: i64,
    filtered: i64,
    unchanged: i64,
    failed: i64,
    bytes_copied: i64,
}

/// Adds to the import's counters (and marks it running); false if the import
/// no longer runs.
async fn add_counts(tx: &Transaction<'_>, import_id: Uuid, c: &Counts) -> Result<bool, DbError> {
    let statement = tx
        .prepare_cached(
            "UPDATE tether.imports
             SET objects_listed = objects_listed + $2, objects_imported = objects_imported + $3,
                 objects_filtered = objects_filtered + $4, objects_unchanged = objects_unchanged + $5,
                 objects_failed = objects_failed + $6, bytes_copied = bytes_copied + $7,
                 state = 'running', started_at = coalesce(started_at, now())
             WHERE import_id = $1 AND state IN ('queued', 'running')",
        )
        .await?;
    let updated = tx
        .execute(
            &statement,
            &[&import_id, &c.listed, &c.imported, &c.filtered, &c.unchanged, &c.failed, &c.bytes_copied],
        )
        .await?;
    Ok(updated == 1)
}

/// Upserts references; returns how many were written. Link mode (`stored`
/// is `None`) writes new and changed objects and leaves an existing copy
/// alone; copy mode (`stored` holds each copy's URL) always writes.
async fn upsert_images(
    tx: &Transaction<'_>,
    task: &TaskContext,
    images: &[ImageRow],
    stored: Option<&[&str]>,
) -> Result<i64, DbError> {
    if images.is_empty() {
        return Ok(0);
    }
    let request = &task.request;
    // Used only by rows new to the dataset; a row found by name keeps its id.
    let ids: Vec<Uuid> =
        images.iter().map(|_| new_image_id(&request.workspace_id, &request.dataset_id)).collect();
    let urls: Vec<&str> = images.iter().map(|i| i.source_url.as_str()).collect();
    let sizes: Vec<i64> = images.iter().map(|i| i.size_bytes).collect();
    let etags: Vec<Option<&str>> = images.iter().map(|i| i.etag.as_deref()).collect();
    let modified: Vec<Option<DateTime<Utc>>> = images.iter().map(|i| i.last_modified).collect();
    let stored_urls: Vec<Option<&str>> = match stored {
        Some(urls) => urls.iter().map(|u| Some(*u)).collect(),
        None => vec![None; images.len()],
    };
    let storage = if stored.is_some() { "copy" } else { "link" };
    let statement = tx
        .prepare_cached(
            "INSERT INTO tether.images AS im (image_id, import_id, workspace_id, dataset_id, source_url,
                                              size_bytes, etag, last_modified, storage, stored_url)
             SELECT u.id, $1, $2, $3, u.url, u.size, u.etag, u.modified, $9, u.stored
             FROM unnest($4::uuid[], $5::text[], $6::int8[], $7::text[], $8::timestamptz[], $10::text[])
                  AS u(id, url, size, etag, modified, stored)
             ON CONFLICT (workspace_id, dataset_id, tether.url_key(source_url), (CASE WHEN superseded THEN image_id END))
             DO UPDATE
             SET import_id = EXCLUDED.import_id, size_bytes = EXCLUDED.size_bytes, etag = EXCLUDED.etag,
                 last_modified = EXCLUDED.last_modified, storage = EXCLUDED.storage,
                 stored_url = EXCLUDED.stored_url
             WHERE EXCLUDED.storage = 'copy'
                OR (im.storage = 'link' AND im.etag IS DISTINCT FROM EXCLUDED.etag)",
        )
        .await?;
    let written = tx
        .execute(
            &statement,
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
                &stored_urls,
            ],
        )
        .await?;
    Ok(written as i64)
}

/// Turns the objects of a page that need copying (not yet copied, or
/// changed since) into copy tasks; returns each task's message and size.
async fn insert_copy_tasks(
    tx: &Transaction<'_>,
    task: &TaskContext,
    images: &[ImageRow],
    batching: Batching,
) -> Result<Vec<(TaskMessage, i64)>, DbError> {
    let request = &task.request;
    let urls: Vec<&str> = images.iter().map(|i| i.source_url.as_str()).collect();
    let etags: Vec<Option<&str>> = images.iter().map(|i| i.etag.as_deref()).collect();
    // Only this workspace's dataset counts: another workspace's copy of the
    // same object is never a reason to skip.
    let statement = tx
        .prepare_cached(
            "SELECT im.source_url FROM unnest($3::text[], $4::text[]) AS u(url, etag)
             JOIN tether.images im
               ON im.workspace_id = $1 AND im.dataset_id = $2 AND NOT im.superseded
              AND tether.url_key(im.source_url) = tether.url_key(u.url) AND im.source_url = u.url
             WHERE im.storage = 'copy' AND im.etag IS NOT DISTINCT FROM u.etag",
        )
        .await?;
    let copied: std::collections::HashSet<String> = tx
        .query(&statement, &[&request.workspace_id, &request.dataset_id, &urls, &etags])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let source_prefix = request.source.url("");
    let mut batches: Vec<Vec<CopyItem>> = Vec::new();
    let mut batch_bytes = 0;
    for image in images {
        if copied.contains(&image.source_url) {
            continue;
        }
        let item = CopyItem {
            key: image.source_url.strip_prefix(&source_prefix).unwrap_or(&image.source_url).to_owned(),
            size: image.size_bytes,
            etag: image.etag.clone(),
            last_modified: image.last_modified,
        };
        let full = batches
            .last()
            .is_none_or(|b| b.len() >= batching.max_objects || batch_bytes + item.size > batching.max_bytes);
        if full {
            batches.push(Vec::new());
            batch_bytes = 0;
        }
        batch_bytes += item.size;
        if let Some(batch) = batches.last_mut() {
            batch.push(item);
        }
    }
    let mut messages = Vec::with_capacity(batches.len());
    for batch in batches {
        messages.push((insert_copy_task(tx, task.import_id, &batch, true).await?, batch.len() as i64));
    }
    Ok(messages)
}

/// Records one copy task of these objects; returns its message. A `held`
/// task waits for the scheduler to release it ([`super::dispatch`]); any
/// other is the caller's to publish.
pub(super) async fn insert_copy_task(
    tx: &Transaction<'_>,
    import_id: Uuid,
    items: &[CopyItem],
    held: bool,
) -> Result<TaskMessage, DbError> {
    let task_id = Uuid::new_v4();
    let items = serde_json::to_value(items).map_err(|e| DbError::Corrupt(e.to_string()))?;
    tx.execute(
        "INSERT INTO tether.tasks (task_id, import_id, kind, items, state, published_at, held)
         VALUES ($1, $2, 'copy', $3, 'pending', CASE WHEN NOT $4 THEN now() END, $4)",
        &[&task_id, &import_id, &items, &held],
    )
    .await?;
    Ok(TaskMessage { task_id, seq: 0 })
}

async fn insert_failures(
    tx: &Transaction<'_>,
    import_id: Uuid,
    failures: &[FailureRow],
) -> Result<(), DbError> {
    if failures.is_empty() {
        return Ok(());
    }
    let keys: Vec<Uuid> = failures.iter().map(|f| failure_key(&f.source_url)).collect();
    let urls: Vec<&str> = failures.iter().map(|f| f.source_url.as_str()).collect();
    let codes: Vec<&str> = failures.iter().map(|f| f.code.as_str()).collect();
    let messages: Vec<&str> = failures.iter().map(|f| f.message.as_str()).collect();
    let attempts: Vec<i32> = failures.iter().map(|f| f.attempts).collect();
    let objects: Vec<Option<&CopyItem>> = failures.iter().map(|f| f.object.as_ref()).collect();
    let object_keys: Vec<Option<&str>> = objects.iter().map(|o| o.map(|o| o.key.as_str())).collect();
    let sizes: Vec<Option<i64>> = objects.iter().map(|o| o.map(|o| o.size)).collect();
    let etags: Vec<Option<&str>> = objects.iter().map(|o| o.and_then(|o| o.etag.as_deref())).collect();
    let modified: Vec<Option<DateTime<Utc>>> =
        objects.iter().map(|o| o.and_then(|o| o.last_modified)).collect();
    tx.execute(
        "INSERT INTO tether.import_failures (import_id, failure_key, source_url, code, message, attempts,
                                             object_key, size_bytes, etag, last_modified)
         SELECT $1, u.k, u.url, u.code, u.message, u.attempts, u.key, u.size, u.etag, u.modified
         FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::int4[],
                     $7::text[], $8::int8[], $9::text[], $10::timestamptz[])
              AS u(k, url, code, message, attempts, key, size, etag, modified)
         ON CONFLICT (import_id, failure_key) DO UPDATE
         SET code = EXCLUDED.code, message = EXCLUDED.message, object_key = EXCLUDED.object_key,
             size_bytes = EXCLUDED.size_bytes, etag = EXCLUDED.etag, last_modified = EXCLUDED.last_modified,
             attempts = tether.import_failures.attempts + EXCLUDED.attempts, last_attempt_at = now()",
        &[&import_id, &keys, &urls, &codes, &messages, &attempts, &object_keys, &sizes, &etags, &modified],
    )
    .await?;
    Ok(())
}
