//! The FinishedEvent outbox: an event is written in the same transaction that
//! makes an import final, and published (at least once) after the commit.

use serde_json::Value;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::{DbError, Store};

/// Queues the FinishedEvent of an import that this transaction made final.
pub(crate) async fn enqueue_finished(tx: &Transaction<'_>, import_id: Uuid) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO tether.events (import_id, body)
         SELECT i.import_id, jsonb_build_object(
             'version', 1, 'import_id', i.import_id, 'revision', i.revision,
             'workspace_id', i.workspace_id, 'dataset_id', i.dataset_id, 'state', i.state,
             'objects_listed', i.objects_listed, 'objects_imported', i.objects_imported,
             'objects_skipped', i.objects_filtered + i.objects_unchanged,
             'objects_failed', i.objects_failed, 'bytes_copied', i.bytes_copied,
             'error', i.error,
             'finished_at', to_char(i.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))
         FROM tether.imports i WHERE i.import_id = $1",
        &[&import_id],
    )
    .await?;
    Ok(())
}

impl Store {
    /// Events not yet confirmed by the broker, oldest first.
    pub async fn unpublished_events(&self, limit: i64) -> Result<Vec<(i64, Value)>, DbError> {
        Ok(self
            .client()
            .await?
            .query(
                "SELECT event_id, body FROM tether.events WHERE published_at IS NULL
                 ORDER BY event_id LIMIT $1",
                &[&limit],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    pub async fn mark_events_published(&self, event_ids: &[i64]) -> Result<(), DbError> {
        self.client()
            .await?
            .execute("UPDATE tether.events SET published_at = now() WHERE event_id = ANY($1)", &[&event_ids])
            .await?;
        Ok(())
    }
}
