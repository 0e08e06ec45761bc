//! The audit trail of staff's actions (`tetherctl requeue`, `cancel`,
//! `submit`): who did what to which import, when and why. An action's row is
//! written before it runs, so that nothing is done without one, and its
//! outcome after.

use serde_json::Value;
use uuid::Uuid;

use super::{DbError, Store};

/// An action staff take on imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Requeue,
    Cancel,
    Submit,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Requeue => "requeue",
            AuditAction::Cancel => "cancel",
            AuditAction::Submit => "submit",
        }
    }
}

/// Who is about to do what, to which import, and why.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub action: AuditAction,
    pub import_id: Option<Uuid>,
    pub reason: Option<&'a str>,
}

/// A recorded action whose outcome is still to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditId(i64);

impl Store {
    /// Records an action about to run.
    pub async fn audit_begin(&self, entry: &AuditEntry<'_>) -> Result<AuditId, DbError> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO tether.audit (actor, action, import_id, reason) VALUES ($1, $2, $3, $4)
                 RETURNING audit_id",
                &[&entry.actor, &entry.action.as_str(), &entry.import_id, &entry.reason],
            )
            .await?;
        Ok(AuditId(row.get(0)))
    }

    /// Records what came of an action.
    pub async fn audit_end(&self, id: AuditId, outcome: &str) -> Result<(), DbError> {
        self.client()
            .await?
            .execute("UPDATE tether.audit SET outcome = $2 WHERE audit_id = $1", &[&id.0, &outcome])
            .await?;
        Ok(())
    }

    /// The trail, oldest first: of one import, or the latest `limit` rows
    /// of all.
    pub async fn audit_trail(&self, import_id: Option<Uuid>, limit: i64) -> Result<Vec<Value>, DbError> {
        Ok(self
            .client()
            .await?
            .query(
                "SELECT entry FROM (
                     SELECT audit_id, jsonb_build_object('at', at, 'actor', actor, 'action', action,
                                                         'import_id', import_id, 'reason', reason,
                                                         'outcome', outcome) AS entry
                     FROM tether.audit WHERE $1::uuid IS NULL OR import_id = $1
                     ORDER BY audit_id DESC LIMIT $2) latest
                 ORDER BY audit_id",
                &[&import_id, &limit],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}
