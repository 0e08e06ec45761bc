//! Customer credentials: how Tether gets the right to read a customer's
//! bucket. One module per mechanism: STS `AssumeRole` for S3 ([`sts`]) and
//! service-account impersonation for GCS ([`gcp`]); Azure's SAS token comes
//! with the request. Each caches what it obtained and refreshes it a configurable
//! margin before it expires, because a long import outlives one session.

pub mod gcp;
pub(crate) mod slots;
pub mod sts;

/// Why credentials for a customer's bucket could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The provider said no: the customer's set-up must change.
    #[error("{sentence}")]
    Refused {
        /// What a person reads in the import's `error`.
        sentence: String,
    },
    /// The provider could not be reached or failed; worth retrying.
    #[error("credentials are unavailable for now: {0}")]
    Unavailable(String),
}

impl CredentialError {
    /// How far the error reaches: a refusal fails the import, an outage is
    /// transient.
    pub fn scope(&self) -> crate::model::Scope {
        match self {
            CredentialError::Refused { .. } => crate::model::Scope::Import,
            CredentialError::Unavailable(_) => crate::model::Scope::Transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scope;

    #[test]
    fn credential_errors_by_scope() {
        let cases = [
            (CredentialError::Refused { sentence: "AssumeRole was denied".into() }, Scope::Import),
            (CredentialError::Unavailable("STS timed out".into()), Scope::Transient),
        ];
        for (error, scope) in cases {
            assert_eq!(error.scope(), scope, "{error:?}");
        }
    }
}
