//! Copy tasks: a bounded batch of objects streamed from the customer's
//! bucket into the platform's storage, verified on the way, then committed
//! (references, failures, counts, bytes) in one transaction.
//!
//! Objects of all copy tasks in hand share one semaphore, so a worker never
//! copies more than `TETHER_COPY_CONCURRENCY` objects at once; the
//! destination's part budget (`TETHER_COPY_BUFFER_BYTES`) bounds its memory.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use backon::Retryable;
use tether_shared::contract::ImportRequest;
use tether_shared::db::DbError;
use tether_shared::destination::{object_key, verified, Destination, DestinationError};
use tether_shared::model::{retry, FailureCode, Scope};
use tether_shared::storage::ranged::RangedReads;
use tether_shared::storage::{ObjectSource, StorageError};
use tether_shared::task::{CopyItem, CopyOutcome, FailureRow, TaskContext};
use tokio::sync::Semaphore;

use tether_shared::telemetry::metrics;

use crate::{counter, Outcome, Worker, COPY_NOT_CONFIGURED};

pub(crate) struct Copier {
    destination: Arc<dyn Destination>,
    slots: Semaphore,
    max_attempts: usize,
    ranged: RangedReads,
}

impl Copier {
    pub(crate) fn new(
        destination: Arc<dyn Destination>,
        concurrency: usize,
        max_attempts: usize,
        ranged: RangedReads,
    ) -> Self {
        Self { destination, slots: Semaphore::new(concurrency), max_attempts: max_attempts.max(1), ranged }
    }

    /// Copies a batch; `Err` when an object's failure concerns the whole
    /// import (the bucket is gone, the role refused), which then fails once.
    pub(crate) async fn copy_all(
        &self,
        source: &Arc<dyn ObjectSource>,
        request: &ImportRequest,
        items: &[CopyItem],
    ) -> Result<Vec<CopyOutcome>, StorageError> {
        futures_util::future::join_all(items.iter().map(|item| self.copy_one(source, request, item)))
            .await
            .into_iter()
            .collect()
    }

    async fn copy_one(
        &self,
        source: &Arc<dyn ObjectSource>,
        request: &ImportRequest,
        item: &CopyItem,
    ) -> Result<CopyOutcome, StorageError> {
        let url = request.source.url(&item.key);
        let key = object_key(&request.workspace_id, &request.dataset_id, &url);
        let size = u64::try_from(item.size).unwrap_or(0);
        let attempts = AtomicI32::new(0);
        let attempt = || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            let _slot = self.slots.acquire().await.map_err(|e| DestinationError::Write(e.to_string()))?;
            let body = self
                .ranged
                .read(Arc::clone(source), &item.key, item.etag.as_deref(), size, url.clone())
                .await?;
            self.destination.write(&key, verified(body, size, url.clone())).await
        };
        let result = attempt
            .retry(retry::object(self.max_attempts))
            .when(DestinationError::is_transient)
            .notify(|error, delay| tracing::debug!(%error, ?delay, "Copy failed; retrying."))
            .await;
        let result = match result {
            // The bucket is gone or the credentials refused: not this
            // object's failure but the import's.
            Err(DestinationError::Source(error)) if error.scope() == Scope::Import => return Err(error),
            other => other,
        };
        let result = result.map_err(|error| FailureRow {
            source_url: url.clone(),
            code: error.code(),
            message: error.to_string(),
            attempts: attempts.load(Ordering::Relaxed),
            object: Some(item.clone()),
        });
        Ok(CopyOutcome { item: item.clone(), result })
    }
}

impl Worker {
    /// Copies one batch and commits it.
    pub(crate) async fn copy(&self, task: &TaskContext, items: &[CopyItem]) -> Result<Outcome, DbError> {
        let Some(copier) = &self.copier else {
            self.store.fail_import(task.import_id, COPY_NOT_CONFIGURED, FailureCode::Unavailable).await?;
            return Ok(Outcome::Done);
        };
        let source = match self.open_source(task).await {
            Ok(source) => source,
            Err(error) if error.is_transient() => return self.copy_failed(task, items, error).await,
            Err(error) => {
                self.fail_import(task, &error).await?;
                return Ok(Outcome::Done);
            }
        };
        let outcomes = match copier.copy_all(&source, &task.request, items).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                self.fail_import(task, &error).await?;
                return Ok(Outcome::Done);
            }
        };
        let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
        if self.store.commit_copies(task, &outcomes).await? {
            tracing::debug!(copied = outcomes.len() - failed, failed, "Copy batch committed.");
            let m = metrics();
            let provider = task.request.source.provider();
            let labels = [provider, "copy"];
            m.objects_imported.with_label_values(&labels).inc_by((outcomes.len() - failed) as u64);
            for outcome in &outcomes {
                match &outcome.result {
                    Ok(_) => m.bytes_copied.with_label_values(&[provider]).inc_by(counter(outcome.item.size)),
                    Err(failure) => {
                        m.objects_failed.with_label_values(&[provider, "copy", failure.code.as_str()]).inc()
                    }
                }
            }
        }
        Ok(Outcome::Done)
    }
}

impl Worker {
    /// A copy batch that could not run (its source unreachable, or past its
    /// deadline): another attempt later, up to `TETHER_TASK_MAX_ATTEMPTS`;
    /// then each of its objects fails with the error's code.
    pub(crate) async fn copy_failed(
        &self,
        task: &TaskContext,
        items: &[CopyItem],
        error: StorageError,
    ) -> Result<Outcome, DbError> {
        let attempts = self.store.record_attempt(task.message).await?;
        if attempts < self.max_attempts {
            tracing::warn!(%error, attempts, "A copy batch failed; retrying it later.");
            return Ok(Outcome::Retry(retry::task_delay(attempts)));
        }
        let message = format!(
            "Copying kept failing after {attempts} attempts ({error}); requeue the import once the store recovers."
        );
        self.fail_copies(task, items, error.code(), &message).await?;
        Ok(Outcome::Done)
    }

    /// Ends a copy batch with every object failed.
    pub(crate) async fn fail_copies(
        &self,
        task: &TaskContext,
        items: &[CopyItem],
        code: FailureCode,
        message: &str,
    ) -> Result<(), DbError> {
        let outcomes: Vec<CopyOutcome> = items
            .iter()
            .map(|item| CopyOutcome {
                item: item.clone(),
                result: Err(FailureRow {
                    source_url: task.request.source.url(&item.key),
                    code,
                    message: message.to_owned(),
                    attempts: 1,
                    object: Some(item.clone()),
                }),
            })
            .collect();
        self.store.commit_copies(task, &outcomes).await?;
        Ok(())
    }
}
