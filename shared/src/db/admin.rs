//! Queries behind `tetherctl`, for staff: listing imports, reading their
//! failures, and requeueing what failed once its cause is fixed.

use serde_json::Value;
use uuid::Uuid;

use super::tasks::insert_copy_task;
use super::wakeups::wake_scheduler;
use super::{DbError, Store};
use crate::task::{CopyItem, DEFAULT_COPY_BATCH_OBJECTS};

/// Which imports `tetherctl list` shows.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<String>,
    pub workspace: Option<String>,
    pub overdue: bool,
    pub limit: i64,
}

/// What a requeue did.
#[derive(Debug)]
pub enum Requeued {
    /// The import runs again: its tasks are held, for the scheduler to
    /// release within the fair share like any other.
    Requeued {
        prefixes: usize,
        objects: usize,
    },
    NotFound,
    /// Only failed and partially succeeded imports can be requeued.
    NotRequeueable(String),
    /// Nothing failed that a requeue can retry (too_large objects stay).
    NothingToRetry,
}

impl Store {
    /// `tether.import_status` rows, newest first.
    pub async fn list_imports(&self, filter: &ListFilter) -> Result<Vec<Value>, DbError> {
        Ok(self
            .client()
            .await?
            .query(
                "SELECT to_jsonb(s) FROM tether.import_status s
                 WHERE ($1::text IS NULL OR s.state = $1) AND ($2::text IS NULL OR s.workspace_id = $2)
                   AND (NOT $3 OR s.overdue)
                 ORDER BY s.created_at DESC LIMIT $4",
                &[&filter.state, &filter.workspace, &filter.overdue, &filter.limit],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// An import's failures (objects and prefixes), as JSON objects.
    pub async fn failures(&self, import_id: Uuid) -> Result<Vec<Value>, DbError> {
        Ok(self
            .client()
            .await?
            .query(
                "SELECT jsonb_build_object('source_url', source_url, 'code', code, 'message', message,
                                           'attempts', attempts, 'last_attempt_at', last_attempt_at)
                 FROM tether.import_failures WHERE import_id = $1 ORDER BY source_url",
                &[&import_id],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Makes a failed or partially succeeded import run again: failed and
    /// stopped tasks resume from their checkpoint, failed copies are tried
    /// again, their failures are no longer counted. The scheduler finishes it
    /// again (a new FinishedEvent, revision + 1). Its tasks are recorded
    /// held and the scheduler woken: a requeue of a big import takes its
    /// fair share of the fleet, no more.
    pub async fn requeue_import(&self, import_id: Uuid) -> Result<Requeued, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The import first: retention locks it before deleting its tasks.
        // No worker holds a task of a final import, so this order meets no
        // page commit (which locks its task, then the import).
        let Some(row) = tx
            .query_opt(
                "SELECT state, request IS NOT NULL, to_char(tasks_pruned_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')
                 FROM tether.imports WHERE import_id = $1 FOR UPDATE",
                &[&import_id],
            )
            .await?
        else {
            return Ok(Requeued::NotFound);
        };
        let (state, has_request, pruned_on): (String, bool, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        if let Some(day) = pruned_on {
            return Ok(Requeued::NotRequeueable(format!(
                "its tasks were deleted on {day} by retention (TETHER_RETENTION_DAYS after it finished), so there is nothing to resume; send the same request with a new import_id: objects already imported are skipped"
            )));
        }
        if !has_request {
            return Ok(Requeued::NotRequeueable(
                "its request was rejected; send a corrected request with a new import_id".into(),
            ));
        }
        if state != "failed" && state != "partially_succeeded" {
            return Ok(Requeued::NotRequeueable(format!(
                "it is {state}; only failed or partially succeeded imports can be requeued"
            )));
        }
        let resumed = tx
            .query(
                "UPDATE tether.tasks SET state = 'pending', seq = seq + 1, attempts = 0, held = true,
                        updated_at = now()
                 WHERE import_id = $1 AND state IN ('failed', 'cancelled')
                 RETURNING task_id",
                &[&import_id],
            )
            .await?;
        let resumed_ids: Vec<Uuid> = resumed.iter().map(|r| r.get(0)).collect();
        let prefixes = tx
            .execute(
                "DELETE FROM tether.import_failures WHERE import_id = $1 AND failure_key = ANY($2)",
                &[&import_id, &resumed_ids],
            )
            .await?;
        let items: Vec<CopyItem> = tx
            .query(
                "DELETE FROM tether.import_failures WHERE import_id = $1 AND object_key IS NOT NULL
                 RETURNING object_key, size_bytes, etag, last_modified",
                &[&import_id],
            )
            .await?
            .iter()
            .map(|r| CopyItem {
                key: r.get(0),
                size: r.get::<_, Option<i64>>(1).unwrap_or(0),
                etag: r.get(2),
                last_modified: r.get(3),
            })
            .collect();
        if resumed.is_empty() && items.is_empty() {
            return Ok(Requeued::NothingToRetry);
        }
        for batch in items.chunks(DEFAULT_COPY_BATCH_OBJECTS) {
            insert_copy_task(&tx, import_id, batch, true).await?;
        }
        tx.execute(
            "UPDATE tether.imports SET state = 'running', error = NULL, finished_at = NULL,
                    objects_failed = objects_failed - $2
             WHERE import_id = $1",
            &[&import_id, &(items.len() as i64)],
        )
        .await?;
        // Resumed tasks are updates, which no trigger announces.
        wake_scheduler(&tx).await?;
        tx.commit().await?;
        Ok(Requeued::Requeued { prefixes: prefixes as usize, objects: items.len() })
    }
}
