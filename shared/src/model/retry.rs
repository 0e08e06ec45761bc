//! Every backoff of Tether, by name: one place says how often and how long
//! each kind of step is retried after a [transient](crate::model::Scope)
//! error. All are jittered exponential backoffs (backon), so a fleet that
//! met the same outage does not come back in lock-step.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How long a task waits in place for the database to come back before it
/// is handed back to its queue.
pub const DB_OUTAGE_PATIENCE: Duration = Duration::from_secs(600);

/// An import request the scheduler holds: retried in place until the outage
/// ends (the message is not handed back, so the queue's delivery limit is
/// not spent), 1 s growing to 30 s.
pub fn request_intake() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .with_jitter()
}

/// A task whose database is unreachable: tried again in place for at most
/// [`DB_OUTAGE_PATIENCE`], 0.5 s growing to 15 s.
pub fn task_in_place() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(15))
        .with_total_delay(Some(DB_OUTAGE_PATIENCE))
        .without_max_times()
        .with_jitter()
}

/// The delay before a task's `attempts`-th retry through the retry queues
/// (a store's outage or throttling): 1 s growing to 60 s.
pub fn task_delay(attempts: i32) -> Duration {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(60))
        .without_max_times()
        .with_jitter()
        .build();
    delays.nth(usize::try_from(attempts.max(1) - 1).unwrap_or(0)).unwrap_or(Duration::from_secs(60))
}

/// One object of a copy batch: `attempts` in all, 0.2 s growing to 10 s.
pub fn object(attempts: usize) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(attempts.saturating_sub(1))
        .with_jitter()
}

/// Messages published right after their commit: a few quick tries (the
/// scheduler re-publishes what is still lost).
pub fn publish() -> ExponentialBuilder {
    ExponentialBuilder::default().with_jitter()
}

/// Reconnecting to RabbitMQ: 1 s growing to 30 s, without end.
pub fn reconnect() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .with_jitter()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_delays_grow_and_stay_bounded() {
        assert!(task_delay(1) <= Duration::from_secs(2));
        assert!(task_delay(100) <= Duration::from_secs(120));
        assert_eq!(object(3).build().count(), 2);
    }
}
