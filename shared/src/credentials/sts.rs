//! S3 credentials through STS `AssumeRole` with the workspace's ExternalId and
//! 6-hour sessions (1-hour where STS refuses 6), cached per (role,
//! ExternalId) and refreshed `refresh_margin` before they expire.
//!
//! The AWS SDK's own cache refreshes only seconds before expiry, so the S3
//! clients built on this provider disable it and ask us on every request; a
//! cache hit is a map lookup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{self, future, ProvideCredentials};
use aws_credential_types::Credentials;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};

use super::slots::Slots;
use super::CredentialError;
use crate::telemetry::metrics;

/// Contract §2: Tether asks for 6-hour sessions...
pub const SESSION_SECONDS: i32 = 21_600;
/// ...and falls back to 1 hour where STS refuses 6.
pub const FALLBACK_SESSION_SECONDS: i32 = 3_600;
const SESSION_NAME: &str = "tether-import";
/// The session policy of every customer session: whatever the customer's
/// role grants, Tether's session can only read (and decrypt what it reads,
/// for SSE-KMS objects), so no bug of Tether's can change a customer's
/// bucket.
const READ_ONLY_SESSION_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Sid":"TetherReadsOnly","Effect":"Allow","Action":["s3:Get*","s3:List*","kms:Decrypt"],"Resource":"*"}]}"#;
/// How long one AssumeRole call may take unless the caller says otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Which role to assume, with which ExternalId.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleKey {
    pub role_arn: String,
    pub external_id: String,
}

#[derive(Debug, Clone)]
struct Session {
    credentials: Credentials,
    expires: SystemTime,
    /// The duration STS accepted for this role; kept for the next refresh.
    seconds: i32,
}

/// Assumes customer roles and keeps their sessions fresh.
#[derive(Debug)]
pub struct StsCredentials {
    client: aws_sdk_sts::Client,
    refresh_margin: Duration,
    call_timeout: Duration,
    /// What AssumeRole asks for first: [`SESSION_SECONDS`] unless the
    /// operator shortens it.
    session_seconds: i32,
    /// One slot per role: concurrent pages of one import share one
    /// AssumeRole call instead of each making their own.
    slots: Slots<RoleKey, Session>,
    refreshes: AtomicU64,
}

impl StsCredentials {
    pub fn new(client: aws_sdk_sts::Client, refresh_margin: Duration) -> Self {
        Self {
            client,
            refresh_margin,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            session_seconds: SESSION_SECONDS,
            slots: Slots::new(),
            refreshes: AtomicU64::new(0),
        }
    }

    /// Bounds each AssumeRole call (and a wait for another caller's call of
    /// the same role) by `timeout` instead of [`DEFAULT_CALL_TIMEOUT`].
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Asks STS for sessions of `seconds` instead of six hours (a role whose
    /// maximum is shorter; tests of what a dying session means).
    pub fn with_session_seconds(mut self, seconds: i32) -> Self {
        self.session_seconds = seconds;
        self
    }

    /// How many times a session was obtained or renewed (for tests and metrics).
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// Valid credentials for the role, from the cache or from STS; they
    /// carry their expiry, and have more than the refresh margin left.
    ///
    /// Callers for one role share one AssumeRole call (single-flight on the
    /// role's slot; other roles go on unhindered), and none waits longer
    /// than the call timeout, twice (the 6-hour try and the 1-hour one):
    /// a silent STS costs each caller one bounded wait, and the slot is free
    /// again after it.
    pub async fn credentials(&self, key: &RoleKey) -> Result<Credentials, CredentialError> {
        tokio::time::timeout(self.call_timeout * 2, self.credentials_now(key)).await.unwrap_or_else(|_| {
            metrics().credential_refresh_failures.with_label_values(&["s3"]).inc();
            Err(CredentialError::Unavailable(format!(
                "STS did not answer AssumeRole for {} within {} s",
                key.role_arn,
                (self.call_timeout * 2).as_secs()
            )))
        })
    }

    async fn credentials_now(&self, key: &RoleKey) -> Result<Credentials, CredentialError> {
        let slot = self.slots.get(key);
        let mut session = slot.lock().await;
        if let Some(s) = session.as_ref() {
            let left = s.expires.duration_since(SystemTime::now()).unwrap_or_default();
            metrics()
                .credential_expiry
                .with_label_values(&["s3"])
                .set(i64::try_from(left.as_secs()).unwrap_or(i64::MAX));
            if left > self.refresh_margin {
                return Ok(s.credentials.clone());
            }
        }
        let seconds = session.as_ref().map_or(self.session_seconds, |s| s.seconds);
        let fresh = self.assume(key, seconds).await.inspect_err(|_| {
            metrics().credential_refresh_failures.with_label_values(&["s3"]).inc();
        })?;
        metrics().credential_refreshes.with_label_values(&["s3"]).inc();
        let credentials = fresh.credentials.clone();
        *session = Some(fresh);
        Ok(credentials)
    }

    async fn assume(&self, key: &RoleKey, seconds: i32) -> Result<Session, CredentialError> {
        match self.assume_once(key, seconds).await {
            Err(AssumeError::DurationRefused(message)) if seconds > FALLBACK_SESSION_SECONDS => {
                tracing::warn!(
                    role_arn = %key.role_arn,
                    reason = %message,
                    "STS refused 6-hour sessions for this role; using 1-hour sessions, refreshed more often."
                );
                self.assume_once(key, FALLBACK_SESSION_SECONDS).await.map_err(|e| e.into_error(key))
            }
            other => other.map_err(|e| e.into_error(key)),
        }
    }

    async fn assume_once(&self, key: &RoleKey, seconds: i32) -> Result<Session, AssumeError> {
        let output = self
            .client
            .assume_role()
            .role_arn(&key.role_arn)
            .external_id(&key.external_id)
            .role_session_name(SESSION_NAME)
            .policy(READ_ONLY_SESSION_POLICY)
            .duration_seconds(seconds)
            .send()
            .await
            .map_err(classify)?;
        let c = output
            .credentials()
            .ok_or_else(|| AssumeError::Unavailable("STS answered AssumeRole without credentials".into()))?;
        let expires = SystemTime::try_from(*c.expiration())
            .map_err(|_| AssumeError::Unavailable("STS returned an unreadable expiration".into()))?;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(role_arn = %key.role_arn, seconds, "Assumed the customer's role.");
        Ok(Session {
            credentials: Credentials::new(
                c.access_key_id(),
                c.secret_access_key(),
                Some(c.session_token().to_owned()),
                Some(expires),
                "tether-sts",
            ),
            expires,
            seconds,
        })
    }

    /// Forgets the role's session, so that the next request assumes the role
    /// again (the store refused the session before its time).
    pub async fn invalidate(&self, key: &RoleKey) {
        self.slots.invalidate(key).await;
    }

    /// A credentials provider for SDK clients that reads this cache.
    pub fn provider(self: &Arc<Self>, key: RoleKey) -> RoleProvider {
        RoleProvider { sts: Arc::clone(self), key }
    }
}

#[derive(Debug)]
enum AssumeError {
    DurationRefused(String),
    Refused { code: String, message: String },
    Unavailable(String),
}

impl AssumeError {
    fn into_error(self, key: &RoleKey) -> CredentialError {
        match self {
            AssumeError::Refused { code, message } => CredentialError::Refused {
                sentence: format!(
                    "AWS refused to let Tether assume the role {} ({code}: {message}): check that the role's trust policy allows Tether's AWS account and requires the ExternalId {}",
                    key.role_arn, key.external_id
                ),
            },
            AssumeError::DurationRefused(message) => CredentialError::Refused {
                sentence: format!(
                    "AWS refused even 1-hour sessions for the role {} ({message}): check the role's maximum session duration",
                    key.role_arn
                ),
            },
            AssumeError::Unavailable(message) => CredentialError::Unavailable(message),
        }
    }
}

/// Tells apart "this role does not allow 6 hours" (retry with 1 hour), a
/// refusal the customer must fix, and an outage.
fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    error: SdkError<E>,
) -> AssumeError {
    match &error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("unknown").to_owned();
            let message = service.err().message().unwrap_or("no message").to_owned();
            if is_duration_refusal(&code, &message) {
                AssumeError::DurationRefused(message)
            } else if status >= 500 || code.contains("Throttl") {
                AssumeError::Unavailable(format!("STS {code} ({status}): {message}"))
            } else {
                AssumeError::Refused { code, message }
            }
        }
        _ => AssumeError::Unavailable(format!(
            "STS could not be reached: {}",
            aws_sdk_sts::error::DisplayErrorContext(&error)
        )),
    }
}

/// STS's two ways of saying the requested duration is too long.
fn is_duration_refusal(code: &str, message: &str) -> bool {
    code == "ValidationError" && (message.contains("MaxSessionDuration") || message.contains("role chaining"))
}

/// An SDK credentials provider for one role, backed by [`StsCredentials`].
#[derive(Debug, Clone)]
pub struct RoleProvider {
    sts: Arc<StsCredentials>,
    key: RoleKey,
}

impl ProvideCredentials for RoleProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            self.sts.credentials(&self.key).await.map_err(provider::error::CredentialsError::provider_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{is_duration_refusal, READ_ONLY_SESSION_POLICY};

    #[test]
    fn customer_sessions_may_only_read() {
        let policy: serde_json::Value = serde_json::from_str(READ_ONLY_SESSION_POLICY).expect("JSON");
        let statements = policy["Statement"].as_array().expect("statements");
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0]["Effect"], "Allow");
        let actions: Vec<&str> =
            statements[0]["Action"].as_array().expect("actions").iter().filter_map(|a| a.as_str()).collect();
        assert_eq!(actions, ["s3:Get*", "s3:List*", "kms:Decrypt"]);
    }

    #[test]
    fn recognises_both_duration_refusals() {
        assert!(is_duration_refusal(
            "ValidationError",
            "The requested DurationSeconds exceeds the MaxSessionDuration set for this role."
        ));
        assert!(is_duration_refusal(
            "ValidationError",
            "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining."
        ));
        assert!(!is_duration_refusal("AccessDenied", "not authorized to perform sts:AssumeRole"));
        assert!(!is_duration_refusal("ValidationError", "1 validation error detected: roleArn"));
    }
}
