//! Retention: task rows (and with them the copy items they carry) are
//! working state, needed only while an import runs or may be requeued. Kept
//! forever they would grow with history (a 10^8-object copy import leaves
//! 10^6 copy tasks). The scheduler deletes the task rows of imports
//! finished longer ago than `TETHER_RETENTION_DAYS` and marks them
//! (`tasks_pruned_at`); `tetherctl requeue` then refuses them, saying so.
//! Images, failures and the imports themselves are never deleted here.

use std::time::Duration;

use super::{DbError, Store};

impl Store {
    /// Deletes the task rows of up to `limit` imports finished before
    /// `retention` ago, one import per transaction; returns how many imports
    /// were pruned.
    pub async fn prune_finished_tasks(&self, retention: Duration, limit: i64) -> Result<usize, DbError> {
        let due: Vec<uuid::Uuid> = self
            .client()
            .await?
            .query(
                "SELECT import_id FROM tether.imports
                 WHERE tasks_pruned_at IS NULL AND finished_at IS NOT NULL
                   AND finished_at < now() - make_interval(secs => $1)
                 ORDER BY finished_at LIMIT $2",
                &[&retention.as_secs_f64(), &limit],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut pruned = 0;
        for import_id in due {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // The import first (as requeue locks it), and only while it is
            // still final: a requeue that came first has made it run again.
            let locked = tx
                .query_opt(
                    "SELECT 1 FROM tether.imports
                     WHERE import_id = $1 AND tasks_pruned_at IS NULL AND finished_at IS NOT NULL
                       AND state IN ('succeeded', 'partially_succeeded', 'failed', 'cancelled')
                     FOR UPDATE SKIP LOCKED",
                    &[&import_id],
                )
                .await?;
            if locked.is_none() {
                continue;
            }
            // An import of 10^8 objects has 10^6 copy tasks: longer than the
            // session's statement limit allows, and nobody waits on it.
            tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
            tx.execute("DELETE FROM tether.tasks WHERE import_id = $1", &[&import_id]).await?;
            tx.execute(
                "UPDATE tether.imports SET tasks_pruned_at = now() WHERE import_id = $1",
                &[&import_id],
            )
            .await?;
            tx.commit().await?;
            pruned += 1;
        }
        Ok(pruned)
    }
}
