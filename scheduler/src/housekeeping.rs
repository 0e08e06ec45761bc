//! The scheduler's periodic pass. Each step reads its work from Postgres, so
//! a crash anywhere loses nothing: the next pass (of this scheduler or
//! another) picks up where it stopped.
//!
//! 1. Finish imports whose tasks have all ended (state, error, event).
//! 2. Release held tasks within the fair share and publish them
//!    ([`tether_shared::db::dispatch`]), no more of a kind than its task
//!    queue has room for (a passive declare tells its ready messages and
//!    consumers).
//! 3. Publish the FinishedEvent outbox, marking events once confirmed.
//! 4. Re-publish pending tasks whose message went out long ago without
//!    progress since: the message may have been lost.
//! 5. Delete the task rows of imports finished longer ago than the
//!    retention (`db::retention`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_shared::contract::{REJECTED_QUEUE, REQUEST_QUEUE};
use tether_shared::db::dispatch::FairShare;
use tether_shared::db::Store;
use tether_shared::model::ImportState;
use tether_shared::queue::{Link, QueueError};
use tether_shared::task::{TaskKind, TaskMessage, REQUEST_DEAD_LETTER_QUEUE, TASK_DEAD_LETTER_QUEUE};
use tether_shared::telemetry::metrics;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::SchedulerError;

/// Events or tasks handled per step and pass.
const BATCH: i64 = 500;
/// Imports whose tasks are deleted per pass: each is a transaction of its own.
const PRUNE_BATCH: i64 = 20;
/// How often the same outbox complaint may be logged.
const COMPLAINT_INTERVAL: Duration = Duration::from_secs(60);
/// How often the gauges (imports by state, ages, queue depths) are read.
const GAUGE_INTERVAL: Duration = Duration::from_secs(10);
/// The queues whose depth operators watch.
const WATCHED_QUEUES: [&str; 6] = [
    REQUEST_QUEUE,
    REJECTED_QUEUE,
    REQUEST_DEAD_LETTER_QUEUE,
    TASK_DEAD_LETTER_QUEUE,
    "tether.tasks",
    "tether.copy-tasks",
];

pub(crate) struct Keeper {
    store: Store,
    /// Publishes through whichever connection is current.
    link: Link,
    republish_after_secs: f64,
    share: FairShare,
    /// How long task rows outlive their finished import.
    retention: Duration,
    last_complaint: Option<Instant>,
    last_gauges: Option<Instant>,
    /// Workspaces the fair-share gauges showed last time, so that those
    /// whose work ended are dropped from them.
    shown_workspaces: Vec<(String, &'static str)>,
}

impl Keeper {
    pub(crate) fn new(
        store: Store,
        link: Link,
        republish_after_secs: f64,
        share: FairShare,
        retention: Duration,
    ) -> Self {
        Self {
            store,
            link,
            republish_after_secs,
            share,
            retention,
            last_complaint: None,
            last_gauges: None,
            shown_workspaces: Vec::new(),
        }
    }

    /// Runs a pass every `tick`, and at once when `wake` is notified (a task
    /// ended).
    pub(crate) async fn run(mut self, tick: Duration, wake: Arc<Notify>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(tick) => {}
                () = wake.notified() => {}
            }
            if let Err(error) = self.pass().await {
                self.complain(&error);
            }
        }
    }

    async fn pass(&mut self) -> Result<(), SchedulerError> {
        // Finishing first: an import whose last task just ended is final
        // without waiting for the releases of the others.
        self.store.finish_ready_imports().await?;
        let room = self.queue_room().await?;
        let room_of = |kind| room.iter().find(|(k, _)| *k == kind).map_or(i64::MAX, |(_, n)| *n);
        let released = self.store.release_tasks(self.share, room_of).await?;
        // Committed already: if publishing fails, step 4 re-publishes them.
        self.publish_tasks(&released).await?;
        if self.last_gauges.is_none_or(|t| t.elapsed() >= GAUGE_INTERVAL) {
            self.last_gauges = Some(Instant::now());
            self.read_gauges().await?;
        }
        let lost = self.store.tasks_to_republish(self.republish_after_secs, BATCH).await?;
        if !lost.is_empty() {
            tracing::warn!(tasks = lost.len(), "Re-publishing tasks whose message may have been lost.");
            self.publish_tasks(&lost).await?;
        }
        self.publish_events().await?;
        let pruned = self.store.prune_finished_tasks(self.retention, PRUNE_BATCH).await?;
        if pruned > 0 {
            tracing::info!(imports = pruned, "Deleted the task rows of imports past the retention.");
        }
        Ok(())
    }

    /// How many tasks of each kind the release may publish: what its queue
    /// lacks of its depth, as the broker says now (no entry: no limit).
    /// Several schedulers may each fill the same room (their passes read
    /// the broker apart): the caps still hold.
    async fn queue_room(&self) -> Result<Vec<(TaskKind, i64)>, SchedulerError> {
        let m = metrics();
        let mut room = Vec::new();
        for kind in TaskKind::ALL {
            let load = self.link.publisher()?.queue_load(kind.queue()).await?;
            m.fair_queue_ready.with_label_values(&[kind.as_str()]).set(i64::from(load.ready));
            if let Some(depth) = self.share.queue_depth(load.consumers) {
                m.fair_queue_depth.with_label_values(&[kind.as_str()]).set(depth);
                room.push((kind, (depth - i64::from(load.ready)).max(0)));
            }
        }
        Ok(room)
    }

    async fn publish_tasks(&self, tasks: &[(TaskKind, TaskMessage)]) -> Result<(), SchedulerError> {
        for kind in TaskKind::ALL {
            let messages: Vec<_> = tasks.iter().filter(|(k, _)| *k == kind).map(|(_, m)| *m).collect();
            if !messages.is_empty() {
                self.link.publisher()?.publish_tasks(kind, &messages).await?;
                metrics().fair_releases.with_label_values(&[kind.as_str()]).inc_by(messages.len() as u64);
            }
        }
        Ok(())
    }

    /// Sets the gauges that only Postgres and the broker know.
    async fn read_gauges(&mut self) -> Result<(), SchedulerError> {
        let m = metrics();
        let gauges = self.store.gauges().await?;
        for state in ImportState::ALL {
            let count = gauges.by_state.iter().find(|(s, _)| s == state.as_str()).map_or(0, |(_, n)| *n);
            m.imports.with_label_values(&[state.as_str()]).set(count);
        }
        m.imports_overdue.set(gauges.overdue);
        m.oldest_running_import_age.set(gauges.oldest_running_age_secs);
        m.oldest_pending_task_age.set(gauges.oldest_pending_task_age_secs);
        for queue in WATCHED_QUEUES {
            let load = self.link.publisher()?.queue_load(queue).await?;
            m.queue_messages.with_label_values(&[queue]).set(i64::from(load.ready));
        }
        self.read_fair_share().await
    }

    /// Tasks held back, in flight and the share of each workspace with work.
    async fn read_fair_share(&mut self) -> Result<(), SchedulerError> {
        let m = metrics();
        let loads = self.store.workspace_loads().await?;
        for (workspace, kind) in std::mem::take(&mut self.shown_workspaces) {
            let labels = [workspace.as_str(), kind];
            let _ = m.fair_tasks_held.remove_label_values(&labels);
            let _ = m.fair_tasks_in_flight.remove_label_values(&labels);
            let _ = m.fair_share.remove_label_values(&labels);
        }
        for load in &loads {
            let kind = load.kind.as_str();
            let total: i64 = loads.iter().filter(|l| l.kind == load.kind).map(|l| l.in_flight).sum();
            let labels = [load.workspace_id.as_str(), kind];
            m.fair_tasks_held.with_label_values(&labels).set(load.held);
            m.fair_tasks_in_flight.with_label_values(&labels).set(load.in_flight);
            let share = if total > 0 { load.in_flight as f64 / total as f64 } else { 0.0 };
            m.fair_share.with_label_values(&labels).set(share);
            self.shown_workspaces.push((load.workspace_id.clone(), kind));
        }
        Ok(())
    }

    async fn publish_events(&mut self) -> Result<(), SchedulerError> {
        loop {
            let events = self.store.unpublished_events(BATCH).await?;
            if events.is_empty() {
                return Ok(());
            }
            let publisher = self.link.publisher()?;
            let mut published = Vec::with_capacity(events.len());
            let mut failure = None;
            for (event_id, body) in &events {
                match publisher.publish_finished(body.to_string().as_bytes()).await {
                    Ok(()) => published.push(*event_id),
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            self.store.mark_events_published(&published).await?;
            if let Some(error) = failure {
                return Err(error.into());
            }
        }
    }

    fn complain(&mut self, error: &SchedulerError) {
        let due = self.last_complaint.is_none_or(|t| t.elapsed() >= COMPLAINT_INTERVAL);
        if due {
            if let SchedulerError::Queue(QueueError::Unroutable(_)) = error {
                tracing::warn!("No queue is bound to import.finished on exchange tether: FinishedEvents wait in the outbox until the platform binds one.");
            } else {
                tracing::warn!(%error, "Housekeeping pass failed; retrying on the next tick.");
            }
            self.last_complaint = Some(Instant::now());
        }
    }
}
