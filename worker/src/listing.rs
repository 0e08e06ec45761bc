//! List tasks: one page of one prefix per message; a delimited page also
//! fans out into tasks for its sub-prefixes ([`crate::fanout`]).

use backon::Retryable;
use tether_shared::contract::{Mode, Source};
use tether_shared::credentials::CredentialError;
use tether_shared::db::DbError;
use tether_shared::model::{retry, FailureCode, Scope};
use tether_shared::storage::{ListPage, ListQuery, ObjectSource, StorageError, DELIMITER};
use tether_shared::task::{FailureRow, FanOut, ListPosition, PageCommit, TaskContext, TaskKind, TaskMessage};

use tether_shared::telemetry::metrics;

use crate::{counter, fanout, page, split, Outcome, Worker, COPY_NOT_CONFIGURED};

impl Worker {
    /// Lists and commits one page of a task.
    pub(crate) async fn list(&self, task: &TaskContext, at: &ListPosition) -> Result<Outcome, DbError> {
        let prefix = at.prefix.as_str();
        let query = ListQuery {
            prefix,
            token: at.continuation.as_deref(),
            max_keys: self.page_size,
            delimiter: at.delimited.then_some(DELIMITER),
            start_at: at.start_at.as_deref(),
            end_before: at.end_before.as_deref(),
        };
        if task.request.mode == Mode::Copy && self.copier.is_none() {
            self.store.fail_import(task.import_id, COPY_NOT_CONFIGURED, FailureCode::Unavailable).await?;
            return Ok(Outcome::Done);
        }
        let source = match self.open_source(task).await {
            Ok(source) => source,
            Err(error) => return self.listing_failed(task, prefix, error).await,
        };
        let page = match source.list_page(query).await {
            Ok(page) => page,
            Err(error) => return self.listing_failed(task, prefix, error).await,
        };
        let mut split_at = self.split(task, at, source.as_ref(), query, &page).await;
        let (result, fan_out, commit) = loop {
            let mut fan_out = self.plan_fan_out(task, &page).await?;
            if !split_at.is_empty() {
                fan_out.split_at.clone_from(&split_at);
                fan_out.cap = Some(self.max_list_tasks);
            }
            let result = page::build(&task.request, &page, fan_out.recursive_from.as_deref());
            match self.store.commit_page(task, &result, &fan_out, self.batching).await? {
                // Other tasks of the import took the room meanwhile.
                PageCommit::OverCap => {
                    split_at.clear();
                    continue;
                }
                commit => break (result, fan_out, commit),
            }
        };
        match commit {
            PageCommit::Stale | PageCommit::OverCap => {}
            PageCommit::Committed { imported, unchanged, next, copy_tasks, sub_prefix_tasks } => {
                tracing::debug!(
                    listed = result.listed,
                    imported,
                    unchanged,
                    copy_tasks,
                    sub_prefix_tasks,
                    "Page committed."
                );
                if let Some(from) = &fan_out.recursive_from {
                    tracing::info!(
                        prefix,
                        from = from.as_str(),
                        cap = self.max_list_tasks,
                        "The import has as many listing tasks as TETHER_LIST_MAX_TASKS allows; this task lists the rest of its prefix recursively."
                    );
                }
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
                    m.objects_failed.with_label_values(&[provider, mode, failure.code.as_str()]).inc();
                }
                // The next page (or the sub-prefix task that inherits the
                // slot of a task that ended) goes out now; the other copy and
                // sub-prefix tasks wait for the scheduler to release them
                // within the fair share.
                if let Some(next) = next {
                    self.publish(TaskKind::List, &[next]).await;
                }
            }
        }
        Ok(Outcome::Done)
    }

    /// Where the rest of a long flat chain is split ([`split`]): only from a
    /// task's full first page without sub-prefixes, and not on Azure, whose
    /// listings cannot start at a key. A probe that fails splits nothing.
    async fn split(
        &self,
        task: &TaskContext,
        at: &ListPosition,
        source: &dyn ObjectSource,
        query: ListQuery<'_>,
        page: &ListPage,
    ) -> Vec<String> {
        let flat = at.continuation.is_none()
            && page.next.is_some()
            && page.prefixes.is_empty()
            && page.objects.len() >= split::MIN_PAGE;
        // Where the page's second half varies: an odd first key (`-x.jpg`
        // before `000001.jpg`) says nothing about the names to come.
        let (Some(middle), Some(last)) =
            (page.objects.get(page.objects.len().saturating_sub(1) / 2), page.objects.last())
        else {
            return Vec::new();
        };
        if !flat || matches!(task.request.source, Source::Azure(_)) {
            return Vec::new();
        }
        let candidates = split::candidates(&at.prefix, &middle.key, &last.key, at.end_before.as_deref());
        match split::split_keys(source, query, candidates).await {
            Ok(keys) => keys,
            Err(error) => {
                tracing::debug!(%error, "A probe listing failed; the chain is not split.");
                Vec::new()
            }
        }
    }

    /// The sub-prefix tasks a delimited page adds (none without prefixes).
    async fn plan_fan_out(&self, task: &TaskContext, page: &ListPage) -> Result<FanOut, DbError> {
        if page.prefixes.is_empty() {
            return Ok(FanOut::default());
        }
        // A prefix with a NUL never has a task (see the plan): not asked.
        let storable: Vec<String> = page.prefixes.iter().filter(|p| !p.contains('\0')).cloned().collect();
        let budget = self.store.list_budget(task.import_id, &storable).await?;
        Ok(fanout::plan(page, &budget, self.max_list_tasks))
    }

    /// Publishes tasks committed a moment ago, retrying briefly. If that still
    /// fails, the scheduler re-publishes them once their lease passes.
    async fn publish(&self, kind: TaskKind, messages: &[TaskMessage]) {
        let publish = || async { self.link.publisher()?.publish_tasks(kind, messages).await };
        if let Err(error) = publish.retry(retry::publish()).await {
            tracing::warn!(%error, "Could not publish tasks; the scheduler will re-publish them.");
        }
    }

    /// Decides what a listing error means for the task and the import.
    pub(crate) async fn listing_failed(
        &self,
        task: &TaskContext,
        prefix: &str,
        error: StorageError,
    ) -> Result<Outcome, DbError> {
        let prefix_url = task.request.source.url(prefix);
        match error.scope() {
            Scope::Transient => {
                let attempts = self.store.record_attempt(task.message).await?;
                if attempts < self.max_attempts {
                    tracing::warn!(%error, attempts, "Listing failed; retrying later.");
                    return Ok(Outcome::Retry(retry::task_delay(attempts)));
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
            }
            // What fails one object of a copy fails the listed prefix here
            // (a listing denied): the rest of the import goes on.
            Scope::Object | Scope::Prefix => {
                tracing::warn!(%error, "Listing refused; the prefix fails, the import goes on.");
                let failure = FailureRow {
                    source_url: prefix_url,
                    code: error.code(),
                    message: error.to_string(),
                    attempts: 1,
                    object: None,
                };
                self.store.fail_task(task, &failure).await?;
            }
            Scope::Import | Scope::Request => self.fail_import(task, &error).await?,
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
