//! GCS V4 signed URLs (`GOOG4-RSA-SHA256`), built here because no client
//! library is in the dependency set: the canonical request and
//! string-to-sign of Google's V4 signing process, signed with RSA-SHA256
//! either with Tether's own service-account key (ring; imports that ran on
//! Tether's own identity, and copies) or as the workspace's impersonated
//! service account through IAM Credentials `signBlob`.

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine;
use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet};
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use sha2::{Digest, Sha256};

use super::{SignError, SignedUrl, Signer, Validity};
use crate::credentials::gcp::GcpTokens;
use crate::credentials::CredentialError;
use crate::secrets::Secret;
use crate::storage::gcs::GcsApi;
use crate::storage::UNRESERVED;

const ALGORITHM: &str = "GOOG4-RSA-SHA256";
/// An object name in the canonical URI: `/` stays a separator.
const PATH: &AsciiSet = &UNRESERVED.remove(b'/');
/// V4 signatures last at most seven days.
const MAX_SECONDS: u64 = 604_800;

/// A service-account key (the JSON file `GOOGLE_APPLICATION_CREDENTIALS`
/// names): its email and RSA private key. `Debug` shows the email only.
pub struct ServiceAccountKey {
    email: String,
    key: RsaKeyPair,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey").field("email", &self.email).finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    /// Reads a service-account JSON key; the error says what is wrong
    /// without quoting the key.
    pub fn from_json(json: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct File {
            client_email: String,
            private_key: String,
        }
        let file: File = serde_json::from_str(json).map_err(|e| {
            format!("it is not a service-account JSON key with client_email and private_key ({e})")
        })?;
        let body: String =
            file.private_key.lines().filter(|line| !line.starts_with("-----")).map(str::trim).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| "its private_key is not a PEM block".to_owned())?;
        let key = RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| format!("its private_key is not a PKCS#8 RSA key ({e})"))?;
        Ok(Self { email: file.client_email, key })
    }

    pub fn email(&self) -> &str {
        &self.email
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CredentialError> {
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), message, &mut signature).map_err(
            |_| CredentialError::Unavailable("signing with Tether's service-account key failed".into()),
        )?;
        Ok(signature)
    }
}

/// What GCS signing needs: where GCS is, Tether's own key if it has one,
/// and IAM Credentials for impersonated accounts.
#[derive(Debug, Clone)]
pub struct GcsSigning {
    /// `scheme://host[:port]` of the URLs: GCS, or the emulator.
    base: String,
    own_key: Option<Arc<ServiceAccountKey>>,
    tokens: Arc<GcpTokens>,
}

impl GcsSigning {
    pub fn new(api: &GcsApi, own_key: Option<ServiceAccountKey>, tokens: Arc<GcpTokens>) -> Self {
        Self { base: api.url(""), own_key: own_key.map(Arc::new), tokens }
    }

    /// A signer for `bucket`, as `impersonate` or, when `None`, as Tether.
    pub fn bucket(&self, bucket: &str, impersonate: Option<&str>) -> GcsSigner {
        GcsSigner {
            signing: self.clone(),
            bucket: bucket.to_owned(),
            impersonate: impersonate.map(str::to_owned),
        }
    }
}

/// Signs URLs for one GCS bucket as one service account.
#[derive(Debug)]
pub struct GcsSigner {
    signing: GcsSigning,
    bucket: String,
    impersonate: Option<String>,
}

#[async_trait::async_trait]
impl Signer for GcsSigner {
    async fn sign_get(&self, key: &str, validity: Validity) -> Result<SignedUrl, SignError> {
        let (email, own_key) = match (&self.impersonate, self.signing.own_key.as_deref()) {
            (Some(account), _) => (account.as_str(), None),
            (None, Some(own)) => (own.email(), Some(own)),
            (None, None) => {
                return Err(CredentialError::Unavailable(
                    "Tether holds no service-account key to sign gs:// URLs with: set GOOGLE_APPLICATION_CREDENTIALS on tether-api to a service-account JSON key, or ask for proxy URLs".into(),
                )
                .into())
            }
        };
        let base = &self.signing.base;
        let host = base.split_once("://").map_or(base.as_str(), |(_, host)| host);
        let request = V4Request { host, bucket: &self.bucket, key, email, validity };
        let (query, to_sign) = request.string_to_sign();
        let signature = match own_key {
            Some(own) => own.sign(to_sign.as_bytes())?,
            None => self.signing.tokens.sign_blob(email, to_sign.as_bytes()).await?,
        };
        Ok(SignedUrl {
            url: Secret::new(format!(
                "{base}{}?{query}&X-Goog-Signature={}",
                request.path(),
                hex(&signature)
            )),
            expires_at: validity.expires_at,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One GET to sign, and Google's V4 canonical forms of it.
struct V4Request<'a> {
    host: &'a str,
    bucket: &'a str,
    key: &'a str,
    email: &'a str,
    validity: Validity,
}

impl V4Request<'_> {
    /// Path-style: `/bucket/object`.
    fn path(&self) -> String {
        format!("/{}/{}", self.bucket, utf8_percent_encode(self.key, PATH))
    }

    /// The canonical query string (also the URL's, less the signature) and
    /// the string to sign.
    fn string_to_sign(&self) -> (String, String) {
        let start: DateTime<Utc> = self.validity.start;
        let timestamp = start.format("%Y%m%dT%H%M%SZ").to_string();
        let scope = format!("{}/auto/storage/goog4_request", start.format("%Y%m%d"));
        let credential = format!("{}/{scope}", self.email);
        let seconds = self.validity.seconds().min(MAX_SECONDS).to_string();
        // Already in the sorted order the canonical form needs.
        let params = [
            ("X-Goog-Algorithm", ALGORITHM),
            ("X-Goog-Credential", credential.as_str()),
            ("X-Goog-Date", timestamp.as_str()),
            ("X-Goog-Expires", seconds.as_str()),
            ("X-Goog-SignedHeaders", "host"),
        ];
        let query = params
            .iter()
            .map(|(name, value)| format!("{name}={}", utf8_percent_encode(value, UNRESERVED)))
            .collect::<Vec<_>>()
            .join("&");
        let canonical =
            format!("GET\n{}\n{query}\nhost:{}\n\nhost\nUNSIGNED-PAYLOAD", self.path(), self.host);
        let hashed = hex(&Sha256::digest(canonical.as_bytes()));
        (query, format!("{ALGORITHM}\n{timestamp}\n{scope}\n{hashed}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_follow_googles_v4_process() {
        let start = DateTime::parse_from_rfc3339("2026-11-28T10:05:00Z").expect("date").to_utc();
        let request = V4Request {
            host: "storage.googleapis.com",
            bucket: "acme-images",
            key: "2024/06/a b+c.jpg",
            email: "importer@acme.iam.gserviceaccount.com",
            validity: Validity { start, expires_at: start + chrono::Duration::seconds(1200) },
        };
        assert_eq!(request.path(), "/acme-images/2024/06/a%20b%2Bc.jpg");
        let (query, to_sign) = request.string_to_sign();
        assert_eq!(
            query,
            "X-Goog-Algorithm=GOOG4-RSA-SHA256\
             &X-Goog-Credential=importer%40acme.iam.gserviceaccount.com%2F20261128%2Fauto%2Fstorage%2Fgoog4_request\
             &X-Goog-Date=20261128T100500Z&X-Goog-Expires=1200&X-Goog-SignedHeaders=host"
        );
        let lines: Vec<&str> = to_sign.lines().collect();
        assert_eq!(
            lines[..3],
            ["GOOG4-RSA-SHA256", "20261128T100500Z", "20261128/auto/storage/goog4_request"]
        );
        assert_eq!(lines[3].len(), 64, "the hex SHA-256 of the canonical request");
    }

    #[test]
    fn keys_that_are_not_service_account_keys_are_refused_without_quoting_them() {
        let error = ServiceAccountKey::from_json(r#"{"client_email":"a@b","private_key":"c2VjcmV0"}"#)
            .expect_err("not RSA");
        assert!(error.contains("PKCS#8") && !error.contains("c2VjcmV0"), "{error}");
        assert!(ServiceAccountKey::from_json("{}").is_err());
    }
}
