//! Queries on request budgets (migration 0016): taking tokens from a
//! bucket's shared token bucket, and lowering its rate when the store
//! throttles. Each is one statement on one row, locked for the statement
//! only; the refill (up to a quarter second of tokens), the additive
//! increase and the grant are computed in it,
//! from the database's clock, so that workers' clocks do not matter. (The
//! clock is read before the row lock is granted: `refilled_at` only ever
//! moves forward, so no second is credited twice.)

use super::{DbError, Store};

/// Which budget of a bucket a request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestClass {
    /// Listing pages (ListObjectsV2, objects.list, List Blobs).
    List,
    /// Object reads (GetObject, alt=media, Get Blob).
    Read,
}

impl RequestClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestClass::List => "list",
            RequestClass::Read => "read",
        }
    }
}

/// What one take gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    /// Tokens granted (requests that may be sent), possibly none.
    pub tokens: u32,
    /// The bucket's rate now, requests/s.
    pub rate: f64,
    /// With no token granted: seconds until one is there.
    pub wait_secs: f64,
}

impl Store {
    /// Takes up to `want` tokens of the budget of (`bucket`, `class`), whose
    /// ceiling is `ceiling` requests/s and which grows back from a slow-down
    /// to the ceiling in `recovery_secs`. The budget row is made on first use.
    pub async fn take_tokens(
        &self,
        bucket: &str,
        class: RequestClass,
        want: u32,
        ceiling: f64,
        recovery_secs: f64,
    ) -> Result<Grant, DbError> {
        let client = self.client().await?;
        let create = client
            .prepare_cached(
                "INSERT INTO tether.request_budgets (bucket, class, ceiling, rate, tokens)
                 VALUES ($1, $2, $3, $3, 0) ON CONFLICT DO NOTHING",
            )
            .await?;
        let take = client
            .prepare_cached(
                "WITH cur AS (
                     SELECT b.rate, b.tokens, greatest(0, extract(epoch FROM now - b.refilled_at)::float8) AS dt,
                            greatest(now, b.refilled_at) AS now
                     FROM tether.request_budgets b, clock_timestamp() AS now
                     WHERE b.bucket = $1 AND b.class = $2 FOR UPDATE
                 ), fill AS (
                     SELECT least($3::float8, rate + $3::float8 / $5::float8 * dt) AS rate, tokens, dt, now FROM cur
                 ), grant_ AS (
                     SELECT rate, now,
                            least(greatest(rate / 4, 1), tokens + rate * dt) AS available
                     FROM fill
                 ), taken AS (
                     SELECT rate, now, available, greatest(0, floor(least($4::float8, available))) AS granted
                     FROM grant_
                 )
                 UPDATE tether.request_budgets b
                 SET rate = t.rate, tokens = t.available - t.granted, refilled_at = t.now, ceiling = $3
                 FROM taken t WHERE b.bucket = $1 AND b.class = $2
                 RETURNING t.granted::int4, t.rate, t.available - t.granted",
            )
            .await?;
        let class = class.as_str();
        let want = f64::from(want);
        let mut row = client.query_opt(&take, &[&bucket, &class, &ceiling, &want, &recovery_secs]).await?;
        if row.is_none() {
            client.execute(&create, &[&bucket, &class, &ceiling]).await?;
            row = client.query_opt(&take, &[&bucket, &class, &ceiling, &want, &recovery_secs]).await?;
        }
        let Some(row) = row else {
            return Err(DbError::Corrupt(format!("the request budget of {bucket} vanished")));
        };
        let (granted, rate, left): (i32, f64, f64) = (row.get(0), row.get(1), row.get(2));
        Ok(Grant {
            tokens: u32::try_from(granted).unwrap_or(0),
            rate,
            wait_secs: if granted > 0 { 0.0 } else { (1.0 - left).max(0.0) / rate },
        })
    }

    /// The store throttled a request of (`bucket`, `class`): halves its rate
    /// (not below `floor`) and empties its tokens, at most once a second
    /// however many workers saw it. Returns the new rate if it was lowered.
    pub async fn slow_down(
        &self,
        bucket: &str,
        class: RequestClass,
        floor: f64,
    ) -> Result<Option<f64>, DbError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE tether.request_budgets
                 SET rate = greatest($3::float8, rate / 2), tokens = least(tokens, 0), slowed_at = clock_timestamp()
                 WHERE bucket = $1 AND class = $2
                   AND (slowed_at IS NULL OR slowed_at < clock_timestamp() - interval '1 second')
                 RETURNING rate",
            )
            .await?;
        let row = client.query_opt(&statement, &[&bucket, &class.as_str(), &floor]).await?;
        Ok(row.map(|r| r.get(0)))
    }
}
