//! Tether's one model of outcomes: what every error means and who acts on
//! it, kept apart from where errors happen (storage, credentials, Postgres)
//! and from the SQL that records them.
//!
//! - [`scope`]: how far an error reaches ([`Scope`]), and Postgres's
//!   SQLSTATE classes.
//! - [`failure`]: the contract's failure codes and which keys Tether
//!   cannot take.
//! - [`state`]: import and task states, and `decide`, the final-state rule.
//! - [`retry`]: every backoff, by name.
//! - [`rejection`]: what is kept of a refused request (bounded, redacted).

pub mod failure;
pub mod rejection;
pub mod retry;
pub mod scope;
pub mod state;

pub use failure::FailureCode;
pub use scope::Scope;
pub use state::{ImportState, TaskState};
