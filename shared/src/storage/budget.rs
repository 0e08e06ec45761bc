//! The request budget of a customer's bucket: however many workers import
//! from it, the fleet sends it at most `TETHER_BUDGET_LIST_PER_SEC` listing
//! and `TETHER_BUDGET_READ_PER_SEC` read requests a second, so that the
//! customer's own traffic is not throttled because of Tether.
//!
//! [`Budgeted`] wraps an [`ObjectSource`]: every call first takes a token
//! from the bucket's token bucket in Postgres ([`crate::db::budgets`]),
//! shared by every worker; a worker takes a few at a time (about 50 ms of
//! the rate) and keeps them at most a second, so a busy bucket costs a few
//! statements a second. A throttling answer (S3 `SlowDown`, 429, 503) halves
//! the bucket's rate for the whole fleet, which then grows back linearly over
//! `TETHER_BUDGET_RECOVERY_SECS` (AIMD); the call is tried again, within the
//! budget, up to [`ATTEMPTS`] times. The AWS SDK's own retries are off for
//! sources, so that every request sent is one the budget counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::contract::Source;
use crate::db::budgets::RequestClass;
use crate::db::{DbError, Store};
use crate::storage::{ByteRange, ListPage, ListQuery, ObjectBody, ObjectSource, StorageError};
use crate::telemetry::metrics;

/// Attempts at one call that the store throttled or failed transiently.
pub const ATTEMPTS: usize = 3;
/// Tokens kept by a worker longer than this are dropped: they would let it
/// burst above the rate later.
const TOKEN_LIFETIME: Duration = Duration::from_secs(1);
/// The rate a slow-down never goes below, requests/s.
const FLOOR: f64 = 1.0;

/// The operator's settings (requests/s; 0 turns a budget off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    pub list_per_sec: f64,
    pub read_per_sec: f64,
    /// Seconds to grow back from a slow-down to the full rate.
    pub recovery_secs: f64,
}

impl BudgetConfig {
    fn ceiling(&self, class: RequestClass) -> f64 {
        match class {
            RequestClass::List => self.list_per_sec,
            RequestClass::Read => self.read_per_sec,
        }
    }
}

/// Tokens this process holds for one budget.
#[derive(Debug, Default)]
struct Held {
    tokens: u32,
    taken_at: Option<Instant>,
    /// The rate the database last reported: sizes the next batch.
    rate: f64,
}

/// The budgets of this process: the settings, and the tokens in hand.
#[derive(Debug)]
pub struct RequestBudgets {
    store: Store,
    config: BudgetConfig,
    held: Mutex<HashMap<(String, RequestClass), Held>>,
}

impl RequestBudgets {
    pub fn new(store: Store, config: BudgetConfig) -> Arc<Self> {
        Arc::new(Self { store, config, held: Mutex::new(HashMap::new()) })
    }

    /// `inner` within the budget of `source`'s bucket.
    pub fn wrap(self: &Arc<Self>, inner: Arc<dyn ObjectSource>, source: &Source) -> Arc<dyn ObjectSource> {
        Arc::new(Budgeted {
            inner,
            budgets: Arc::clone(self),
            bucket: source.url("").trim_end_matches('/').to_owned(),
            provider: source.provider(),
        })
    }

    /// Waits for a token of (`bucket`, `class`).
    async fn acquire(
        &self,
        bucket: &str,
        class: RequestClass,
        provider: &'static str,
    ) -> Result<(), DbError> {
        let ceiling = self.config.ceiling(class);
        if ceiling <= 0.0 {
            return Ok(());
        }
        let key = (bucket.to_owned(), class);
        let started = Instant::now();
        loop {
            let rate = {
                let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = held.entry(key.clone()).or_default();
                if entry.taken_at.is_some_and(|t| t.elapsed() > TOKEN_LIFETIME) {
                    entry.tokens = 0;
                }
                if entry.tokens > 0 {
                    entry.tokens -= 1;
                    break;
                }
                if entry.rate > 0.0 {
                    entry.rate
                } else {
                    ceiling
                }
            };
            // About 50 ms of the rate, at least one.
            let want = (rate / 20.0).clamp(1.0, 1000.0) as u32;
            let grant =
                self.store.take_tokens(bucket, class, want, ceiling, self.config.recovery_secs).await?;
            {
                let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
                let entry = held.entry(key.clone()).or_default();
                entry.rate = grant.rate;
                if grant.tokens > 0 {
                    entry.tokens += grant.tokens - 1;
                    entry.taken_at = Some(Instant::now());
                    break;
                }
            }
            let jitter = 1.0 + rand::random::<f64>() * 0.2;
            tokio::time::sleep(Duration::from_secs_f64((grant.wait_secs * jitter).clamp(0.001, 1.0))).await;
        }
        let waited = started.elapsed().as_secs_f64();
        if waited > 0.0 {
            metrics().budget_wait.with_label_values(&[provider, class.as_str()]).inc_by(waited);
        }
        Ok(())
    }

    /// The store throttled a request: the fleet slows down on this bucket.
    async fn throttled(&self, bucket: &str, class: RequestClass, provider: &'static str) {
        if self.config.ceiling(class) <= 0.0 {
            return;
        }
        // Tokens in hand were granted at the old rate.
        if let Some(held) =
            self.held.lock().unwrap_or_else(PoisonError::into_inner).get_mut(&(bucket.to_owned(), class))
        {
            held.tokens = 0;
        }
        match self.store.slow_down(bucket, class, FLOOR).await {
            Ok(Some(rate)) => {
                metrics().budget_slowdowns.with_label_values(&[provider]).inc();
                tracing::info!(
                    bucket,
                    class = class.as_str(),
                    rate,
                    "The store throttled Tether; the fleet slows down on this bucket."
                );
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "Cannot lower the request budget."),
        }
    }
}

/// An [`ObjectSource`] whose calls wait for the bucket's request budget.
#[derive(Debug)]
struct Budgeted {
    inner: Arc<dyn ObjectSource>,
    budgets: Arc<RequestBudgets>,
    /// `s3://bucket`, `gs://bucket` or `azure://account/container`.
    bucket: String,
    provider: &'static str,
}

impl Budgeted {
    /// Runs `call` within the budget, trying a throttled or failed call
    /// again (each attempt takes its token).
    async fn within<T, F, Fut>(&self, class: RequestClass, call: F) -> Result<T, StorageError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StorageError>>,
    {
        let mut attempt = 1;
        loop {
            self.budgets
                .acquire(&self.bucket, class, self.provider)
                .await
                .map_err(|e| StorageError::Unavailable(format!("the request budget is unavailable: {e}")))?;
            let result = call().await;
            let retry = match &result {
                Err(StorageError::Throttled(_)) => {
                    self.budgets.throttled(&self.bucket, class, self.provider).await;
                    true
                }
                Err(StorageError::Unavailable(_)) => true,
                _ => false,
            };
            if !retry || attempt >= ATTEMPTS {
                return result;
            }
            let backoff = 0.1 * f64::from(1 << attempt) * (0.5 + rand::random::<f64>());
            tokio::time::sleep(Duration::from_secs_f64(backoff)).await;
            attempt += 1;
        }
    }
}

#[async_trait::async_trait]
impl ObjectSource for Budgeted {
    async fn list_page(&self, query: ListQuery<'_>) -> Result<ListPage, StorageError> {
        self.within(RequestClass::List, || self.inner.list_page(query)).await
    }

    async fn read(
        &self,
        key: &str,
        etag: Option<&str>,
        range: Option<ByteRange>,
    ) -> Result<ObjectBody, StorageError> {
        self.within(RequestClass::Read, || self.inner.read(key, etag, range)).await
    }
}
