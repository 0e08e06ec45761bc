//! How far an error reaches, and so who deals with it. Every error type of
//! Tether's boundaries (storage, credentials, destination, Postgres) maps to
//! a [`Scope`] in one place, next to its own definition; the scheduler and
//! the workers act on the scope alone.

/// How far an error reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// May go away by itself (an outage, throttling, a timeout): the same
    /// step is tried again later, by whoever holds it (the request handler
    /// in place, a task through the retry queues, a copy in its batch), up
    /// to that step's retry policy ([`crate::model::retry`]).
    Transient,
    /// Permanent for one object: it is recorded as failed and its page or
    /// batch goes on. Never retried.
    Object,
    /// Permanent for one listing task (its prefix, or the key range it
    /// lists): recorded as a failed prefix, the import goes on.
    Prefix,
    /// The import as a whole cannot run (credentials refused, bucket
    /// missing): it fails with the error's sentence.
    Import,
    /// The request itself is unusable: it goes to `tether.rejected`.
    Request,
}

impl Scope {
    /// Whether trying the same step again may help.
    pub fn is_transient(self) -> bool {
        self == Scope::Transient
    }
}

/// Whether a Postgres error (by SQLSTATE) may go away by itself: connection
/// exceptions (class 08), serialization failures and deadlocks (40001,
/// 40P01), insufficient resources (53), an administrator's shutdown or a
/// cancelled statement (57P01-57P03, 57014), a lock not available (55P03).
/// Everything else (data exceptions, class 22; integrity violations, 23; a
/// bug) is permanent for the item that caused it and never retried.
pub fn sqlstate_is_transient(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "57014" | "55P03")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_by_class() {
        for transient in ["08006", "08001", "40001", "40P01", "57P01", "53300", "55P03"] {
            assert!(sqlstate_is_transient(transient), "{transient}");
        }
        for permanent in ["22021", "22P05", "23505", "23503", "42601", "42P01"] {
            assert!(!sqlstate_is_transient(permanent), "{permanent}");
        }
    }
}
