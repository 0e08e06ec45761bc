//! Queries on whole imports: recording a request (idempotently), recording a
//! rejected one, cancelling, deciding the final state, and reading status.

use serde_json::Value;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::{events, DbError, Store};
use crate::contract::ImportRequest;
use crate::model::state::{ImportState, Tally};

/// What recording a valid request did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A new import; its listing tasks are held until the scheduler releases
    /// them within the fair share ([`super::dispatch`]).
    Created,
    /// The same request again (at-least-once delivery): nothing to do.
    Duplicate,
    /// The same `import_id` with another body: reject, touch nothing.
    Conflict,
}

/// What a cancel did.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancelled {
    Cancelled,
    AlreadyFinal(ImportState),
    NotFound,
}

/// What the scheduler's gauges show.
#[derive(Debug, Default)]
pub struct Gauges {
    pub by_state: Vec<(String, i64)>,
    pub overdue: i64,
    pub oldest_running_age_secs: i64,
    pub oldest_pending_task_age_secs: i64,
}

impl Store {
    /// Records a new import and its listing tasks in one transaction.
    pub async fn record_import(
        &self,
        request: &ImportRequest,
        digest: &[u8; 32],
        sealed_secret: Option<&[u8]>,
    ) -> Result<Recorded, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO tether.imports
                     (import_id, request_digest, request, workspace_id, dataset_id, mode, provider, state, source_secret,
                      list_tasks)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9)
                 ON CONFLICT (import_id) DO NOTHING",
                &[
                    &request.import_id,
                    &digest.as_slice(),
                    &request.to_stored_json(),
                    &request.workspace_id,
                    &request.dataset_id,
                    &request.mode.as_str(),
                    &request.source.provider(),
                    &sealed_secret,
                    &i32::try_from(request.prefixes.len()).unwrap_or(i32::MAX),
                ],
            )
            .await?;
        if inserted == 0 {
            return same_digest(&tx, request.import_id, digest).await.map(|same| {
                if same {
                    Recorded::Duplicate
                } else {
                    Recorded::Conflict
                }
            });
        }
        let task_ids: Vec<Uuid> = request.prefixes.iter().map(|_| Uuid::new_v4()).collect();
        // Delimited: each fans out into its sub-prefixes (within the cap).
        tx.execute(
            "INSERT INTO tether.tasks (task_id, import_id, kind, prefix, state, delimited, held)
             SELECT t.id, $1, 'list', t.prefix, 'pending', true, true
             FROM unnest($2::uuid[], $3::text[]) AS t(id, prefix)",
            &[&request.import_id, &task_ids, &request.prefixes],
        )
        .await?;

        tx.commit().await?;
        Ok(Recorded::Created)
    }

    /// Records a rejected request that named a new `import_id`: a `failed`
    /// import whose error is `reason`, and its FinishedEvent. Returns whether
    /// the import was new; an existing import is left untouched.
    pub async fn record_rejected(
        &self,
        import_id: Uuid,
        digest: &[u8; 32],
        reason: &str,
    ) -> Result<bool, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let error = format!(
            "The import request was rejected: {reason}. Fix the request and send it with a new import_id."
        );
        let inserted = tx
            .execute(
                "INSERT INTO tether.imports (import_id, request_digest, state, error, finished_at, revision)
                 VALUES ($1, $2, 'failed', $3, now(), 1)
                 ON CONFLICT (import_id) DO NOTHING",
                &[&import_id, &digest.as_slice(), &error],
            )
            .await?;
        if inserted == 1 {
            events::enqueue_finished(&tx, import_id).await?;
        }
        tx.commit().await?;
        Ok(inserted == 1)
    }

    /// Whether a request with this id and digest was already recorded.
    pub async fn is_duplicate(&self, import_id: Uuid, digest: &[u8; 32]) -> Result<bool, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        same_digest(&tx, import_id, digest).await
    }

    /// Cancels an import that is not final: its pending tasks stop, what was
    /// imported stays, and a FinishedEvent is queued.
    pub async fn cancel_import(&self, import_id: Uuid) -> Result<Cancelled, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Tasks first, then the import: the order workers lock them in.
        tx.execute(
            "UPDATE tether.tasks SET state = 'cancelled', updated_at = now()
             WHERE import_id = $1 AND state = 'pending'",
            &[&import_id],
        )
        .await?;
        let Some(row) = tx
            .query_opt("SELECT state FROM tether.imports WHERE import_id = $1 FOR UPDATE", &[&import_id])
            .await?
        else {
            return Ok(Cancelled::NotFound);
        };
        let state: ImportState = row.get(0);
        if state.is_final() {
            return Ok(Cancelled::AlreadyFinal(state));
        }
        tx.execute(
            "UPDATE tether.imports SET state = 'cancelled', finished_at = now(), revision = revision + 1
             WHERE import_id = $1",
            &[&import_id],
        )
        .await?;
        events::enqueue_finished(&tx, import_id).await?;
        tx.commit().await?;
        Ok(Cancelled::Cancelled)
    }

    /// Finalises every running import whose tasks have all ended; returns how
    /// many became final.
    pub async fn finish_ready_imports(&self) -> Result<usize, DbError> {
        let ready: Vec<Uuid> = self
            .client()
            .await?
            .query(
                "SELECT i.import_id FROM tether.imports i
                 WHERE i.state IN ('queued', 'running')
                   AND NOT EXISTS (SELECT 1 FROM tether.tasks t
                                   WHERE t.import_id = i.import_id AND t.state = 'pending')
                 LIMIT 500",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut finished = 0;
        for import_id in ready {
            if self.finish_import(import_id).await? {
                finished += 1;
            }
        }
        Ok(finished)
    }

    async fn finish_import(&self, import_id: Uuid) -> Result<bool, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT state, request, objects_listed, objects_filtered, objects_failed, error
                 FROM tether.imports WHERE import_id = $1 FOR UPDATE",
                &[&import_id],
            )
            .await?
        else {
            return Ok(false);
        };
        let state: ImportState = row.get(0);
        let pending: i64 = tx
            .query_one(
                "SELECT count(*) FROM tether.tasks WHERE import_id = $1 AND state = 'pending'",
                &[&import_id],
            )
            .await?
            .get(0);
        if state.is_final() || pending > 0 {
            return Ok(false);
        }
        let request_json: Value = row.get(1);
        let request = ImportRequest::from_stored_json(&request_json).map_err(DbError::Corrupt)?;
        let tally = Tally {
            listed: row.get(2),
            filtered: row.get(3),
            failed: row.get(4),
            import_error: row.get(5),
            prefix_failures: prefix_failures(&tx, import_id).await?,
            object_failures: object_failure_codes(&tx, import_id).await?,
        };
        let (state, error) = tally.decide(&request);
        tx.execute(
            "UPDATE tether.imports SET state = $2, error = $3, finished_at = now(), revision = revision + 1,
                    started_at = coalesce(started_at, now())
             WHERE import_id = $1",
            &[&import_id, &state, &error],
        )
        .await?;
        events::enqueue_finished(&tx, import_id).await?;
        tx.commit().await?;
        tracing::info!(%import_id, %state, "Import finished.");
        Ok(true)
    }

    /// Imports by state, overdue imports, and the ages operators watch.
    pub async fn gauges(&self) -> Result<Gauges, DbError> {
        let client = self.client().await?;
        let by_state = client
            // Kept by a trigger (migration 0018): six rows, however long the history.
            .query("SELECT state, imports FROM tether.import_counts", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE now() > deadline_at),
                        coalesce(extract(epoch FROM now() - min(created_at)), 0)::int8
                 FROM tether.imports WHERE state IN ('queued', 'running')",
                &[],
            )
            .await?;
        let task = client
            .query_one(
                // Released tasks only: a held task waits its turn by design
                // (the fair-share gauges show those).
                "SELECT coalesce(extract(epoch FROM now() - min(updated_at)), 0)::int8
                 FROM tether.tasks WHERE state = 'pending' AND NOT held",
                &[],
            )
            .await?;
        Ok(Gauges {
            by_state,
            overdue: row.get(0),
            oldest_running_age_secs: row.get(1),
            oldest_pending_task_age_secs: task.get(0),
        })
    }

    /// The import's `tether.import_status` row as a JSON object.
    pub async fn import_status(&self, import_id: Uuid) -> Result<Option<Value>, DbError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT to_jsonb(s) FROM tether.import_status s WHERE s.import_id = $1", &[&import_id])
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The most frequent failure codes of an import, most frequent first.
    pub async fn top_failure_codes(&self, import_id: Uuid) -> Result<Vec<(String, i64)>, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        object_failure_codes(&tx, import_id).await
    }
}

async fn same_digest(tx: &Transaction<'_>, import_id: Uuid, digest: &[u8; 32]) -> Result<bool, DbError> {
    let row =
        tx.query_opt("SELECT request_digest FROM tether.imports WHERE import_id = $1", &[&import_id]).await?;
    Ok(row.is_some_and(|r| r.get::<_, &[u8]>(0) == digest.as_slice()))
}

/// (source_url, message) of each prefix whose listing failed.
async fn prefix_failures(tx: &Transaction<'_>, import_id: Uuid) -> Result<Vec<(String, String)>, DbError> {
    Ok(tx
        .query(
            "SELECT f.source_url, f.message FROM tether.import_failures f
             JOIN tether.tasks t ON t.import_id = f.import_id AND t.state = 'failed'
                  AND f.failure_key = t.task_id
             WHERE f.import_id = $1 ORDER BY f.source_url",
            &[&import_id],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

async fn object_failure_codes(tx: &Transaction<'_>, import_id: Uuid) -> Result<Vec<(String, i64)>, DbError> {
    Ok(tx
        .query(
            "SELECT f.code, count(*) FROM tether.import_failures f
             WHERE f.import_id = $1
               AND NOT EXISTS (SELECT 1 FROM tether.tasks t WHERE t.task_id = f.failure_key)
             GROUP BY f.code ORDER BY count(*) DESC, f.code",
            &[&import_id],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}
