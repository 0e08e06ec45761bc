//! Signed URLs: links that let a browser GET one object straight from its
//! store for a while, made with credentials Tether holds and the browser
//! never sees. The access API hands them out; one small trait, one module
//! per store that can sign ([`s3`]: SigV4 presigning; [`gcs`]: V4 signed
//! URLs). Azure Blob is not here on purpose: its only credential is the
//! customer's SAS token, which must never reach a browser.
//!
//! A signed URL is as much a secret as a password: it is held as a
//! [`Secret`] and never logged.

pub mod gcs;
pub mod s3;

use std::fmt;

use chrono::{DateTime, Utc};

use crate::credentials::CredentialError;
use crate::secrets::Secret;

/// When a URL is to be valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// The instant it is signed as of (`X-Amz-Date`, `X-Goog-Date`): the
    /// start of the signing window, so that the same object asked for again
    /// within the window gets the same URL, which browsers cache.
    pub start: DateTime<Utc>,
    /// When it stops working, at the latest; a signer whose credentials die
    /// sooner ends it sooner.
    pub expires_at: DateTime<Utc>,
}

impl Validity {
    /// Seconds from `start` to `expires_at` (what the URL says it lasts).
    fn seconds(self) -> u64 {
        u64::try_from((self.expires_at - self.start).num_seconds()).unwrap_or(0)
    }
}

/// A URL that lets whoever holds it GET one object until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUrl {
    pub url: Secret,
    pub expires_at: DateTime<Utc>,
}

/// Why no URL was signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// This object cannot be reached by a signed URL at all (its only
    /// credential must stay secret, or its store has no URLs).
    #[error("{0}")]
    NotSignable(String),
    /// The credentials to sign with were refused or are unavailable.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
}

/// Signs GET URLs for the objects of one bucket with one identity.
#[async_trait::async_trait]
pub trait Signer: Send + Sync + fmt::Debug {
    /// A URL to GET `key` within `validity` (or less, see [`Validity`]).
    async fn sign_get(&self, key: &str, validity: Validity) -> Result<SignedUrl, SignError>;
}
