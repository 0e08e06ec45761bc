//! List tasks: one page of one prefix per message.

use backon::{ExponentialBuilder, Retryable};
use tether_shared::contract::Mode;
use tether_shared::credentials::CredentialError;
use tether_shared::db::tasks::{FailureRow, PageCommit, TaskContext};
use tether_shared::db::DbError;
use tether_shared::storage::StorageError;
use tether_shared::task::{TaskKind, TaskMessage};

use tether_shared::telemetry::metrics;

use crate::{counter, page, retry_delay, Outcome, Worker, COPY_NOT_CONFIGURED};

impl Worker {
    /// Lists and commits one page of a task.
    pub(crate) async fn list(
        &self,
        task: &TaskContext,
        prefix: &str,
        continuation: Option<&str>,
    ) -> Result<Outcome, DbError> {
        if task.request.mode == Mode::Copy && self.copier.is_none() {
            self.store.fail_import(task.import_id, COPY_NOT_CONFIGURED, "unavailable").await?;
            return Ok(Outcome::Done);
        }
        let listed = match self
            .sources
            .open(&task.request.source, task.import_id, task.sealed_secret.as_deref())
            .await
        {
            Ok(source) => source.list_page(prefix, continuation, self.page_size).await,
            Err(error) => Err(error),
        };
        let page = match listed {
            Ok(page) => page,
            Err(error) => return self.listing_failed(task, prefix, error).await,
        };
        let result = page::build(&task.request, page);
        match self.store.commit_page(task, &result, self.batching).await? {
            PageCommit::Stale => {}
            PageCommit::Committed { imported, unchanged, next, copies } => {
                tracing::debug!(
                    listed = result.listed,
                    imported,
                    unchanged,
                    copy_tasks = copies.len(),
                    "Page committed."
                );
                let m = metrics();
                let (provider, mode) = (task.request.source.provider(), task.request.mode.as_str());
                m.objects_listed.with_label_values(&[provider, mode]).inc_by(counter(result.listed));
                m.objects_imported.with_label_values(&[provider, mode]).inc_by(counter(imported));
                m.objects_skipped
                    .with_label_values(&[provider, mode, "filtered"])
                    .inc_by(counter(result.filtered));
                m.objects_skipped
                    .with_label_values(&[provider, mode, "unchanged"])
                    .inc_by(counter(unchanged));
                for failure in &result.failures {
                    m.objects_failed.with_label_values(&[provider, mode, failure.code]).inc();
                }
                if !copies.is_empty() {
                    self.publish(TaskKind::Copy, &copies).await;
                }
                if let Some(next) = next {
                    self.publish(TaskKind::List, &[next]).await;
                }
            }
        }
        Ok(Outcome::Done)
    }

    /// Publishes tasks committed a moment ago, retrying briefly. If that still
    /// fails, the scheduler re-publishes them once their lease passes.
    async fn publish(&self, kind: TaskKind, messages: &[TaskMessage]) {
        let publish = || async { self.link.publisher()?.publish_tasks(kind, messages).await };
        if let Err(error) = publish.retry(ExponentialBuilder::default().with_jitter()).await {
            tracing::warn!(%error, "Could not publish tasks; the scheduler will re-publish them.");
        }
    }

    /// Decides what a listing error means for the task and the import.
    async fn listing_failed(
        &self,
        task: &TaskContext,
        prefix: &str,
        error: StorageError,
    ) -> Result<Outcome, DbError> {
        let prefix_url = task.request.source.url(prefix);
        if error.is_transient() {
            let attempts = self.store.record_attempt(task.message).await?;
            if attempts < self.max_attempts {
                tracing::warn!(%error, attempts, "Listing failed; retrying later.");
                return Ok(Outcome::Retry(retry_delay(attempts)));
            }
            let failure = FailureRow {
                source_url: prefix_url,
                code: error.code(),
                message: format!(
                    "Listing kept failing after {attempts} attempts ({error}); requeue the import once the store recovers."
                ),
                attempts,
                object: None,
            };
            self.store.fail_task(task, &failure).await?;
            return Ok(Outcome::Done);
        }
        match error {
            StorageError::AccessDenied(message) => {
                tracing::warn!(%message, "Listing denied; the prefix fails, the import goes on.");
                let failure = FailureRow {
                    source_url: prefix_url,
                    code: "access_denied",
                    message,
                    attempts: 1,
                    object: None,
                };
                self.store.fail_task(task, &failure).await?;
            }
            other => self.fail_import(task, &other).await?,
        }
        Ok(Outcome::Done)
    }

    /// Fails the whole import with the error's sentence (credentials refused,
    /// bucket or container missing).
    pub(crate) async fn fail_import(&self, task: &TaskContext, error: &StorageError) -> Result<(), DbError> {
        let sentence = match error {
            StorageError::Credentials(CredentialError::Refused { sentence }) => sentence.clone(),
            other => other.to_string(),
        };
        tracing::warn!(error = %sentence, "The import cannot run.");
        self.store.fail_import(task.import_id, &sentence, error.code()).await
    }
}
