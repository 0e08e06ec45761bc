//! Tether's library crate: everything the scheduler, the workers and
//! `tetherctl` share, so that each binary is only a thin loop around it.
//!
//! - [`contract`]: the fixed external interface (ImportRequest, FinishedEvent,
//!   AMQP names) and its validation.
//! - [`config`]: operator configuration read from the environment.
//! - [`db`]: the Postgres pool, migrations and every named query.
//! - [`queue`]: the AMQP topology and a publisher that waits for confirms.
//! - [`storage`]: the one trait every bucket provider implements.
//! - [`model`]: what every outcome and error means (scope, codes, states).
//! - [`destination`]: where copy mode writes (the platform's storage).
//! - [`credentials`]: customer credentials (STS AssumeRole, GCP service-account
//!   impersonation) with their caches.
//! - [`secrets`]: sealing the secrets Tether keeps (SAS tokens) with
//!   `TETHER_SECRETS_KEY`.
//! - [`signing`]: signed URLs of S3 and GCS objects (the access API).
//! - [`task`]: the internal task message the scheduler and workers exchange,
//!   and the vocabulary of a task's work (positions, pages, outcomes).
//! - [`telemetry`]: logging set-up and the metrics every process exposes.
//! - [`shutdown`]: one cancellation token flipped by SIGTERM / SIGINT.

pub mod checks;
pub mod config;
pub mod contract;
pub mod credentials;
pub mod db;
pub mod destination;
pub mod model;
pub mod queue;
pub mod secrets;
pub mod shutdown;
pub mod signing;
pub mod storage;
pub mod task;
pub mod telemetry;
