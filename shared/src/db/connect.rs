//! How a process reaches Postgres: the URL as libpq reads it, TLS when the
//! URL asks for it, and the limits every session runs under.
//!
//! tokio-postgres knows `sslmode` only up to `require` and has no
//! `sslrootcert`, so both are taken out of the URL here and turned into a
//! rustls configuration (tokio-postgres-rustls; the ring provider, as for
//! every other TLS connection of Tether):
//!
//! | `sslmode` | TLS | server certificate |
//! | --- | --- | --- |
//! | absent, `disable`, `allow`, `prefer` | no | — |
//! | `require` | yes | not checked (libpq's meaning), unless `sslrootcert` is given: then as `verify-ca` |
//! | `verify-ca` | yes | signed by a root of `sslrootcert` |
//! | `verify-full` | yes | signed by a root of `sslrootcert`, and issued for the host |
//!
//! `sslrootcert` is a PEM file, or `system` (the default) for the
//! machine's roots.
//!
//! `statement_timeout` and `lock_timeout` are sent as start-up options, so
//! they hold on every connection (the pool's and the scheduler's wake-up
//! connection) from its first statement, at no round trip.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::DbError;

/// What every Postgres connection of a process is limited to. TLS is asked
/// for in `TETHER_DATABASE_URL` itself (`sslmode=require`, `verify-ca`,
/// `verify-full`, with `sslrootcert`), as libpq does.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct DbSession {
    /// A statement running longer than this is cancelled (0: no limit).
    #[arg(long, env = "TETHER_DB_STATEMENT_TIMEOUT_SECS", default_value_t = DbSession::DEFAULT.statement_timeout_secs)]
    pub statement_timeout_secs: u64,
    /// A statement waiting longer than this for a lock fails (0: no limit).
    #[arg(long, env = "TETHER_DB_LOCK_TIMEOUT_SECS", default_value_t = DbSession::DEFAULT.lock_timeout_secs)]
    pub lock_timeout_secs: u64,
}

impl DbSession {
    pub const DEFAULT: Self = Self { statement_timeout_secs: 60, lock_timeout_secs: 10 };
}

impl Default for DbSession {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A parsed database URL: what tokio-postgres connects with, and the TLS
/// connector if the URL asked for TLS.
#[derive(Clone)]
pub(super) struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config holds the password: show only where it points.
        f.debug_struct("Target")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndHost,
}

impl Target {
    pub(super) fn parse(url: &str, session: DbSession) -> Result<Self, DbError> {
        let (rest, ssl_mode, root_cert) = take_tls_params(url);
        let mut config: tokio_postgres::Config =
            rest.parse().map_err(|e: tokio_postgres::Error| DbError::BadUrl(e.to_string()))?;
        let verify = match ssl_mode.as_deref() {
            None | Some("disable" | "allow" | "prefer") => None,
            Some("require") if root_cert.is_none() => Some(Verify::Nothing),
            Some("require" | "verify-ca") => Some(Verify::Chain),
            Some("verify-full") => Some(Verify::ChainAndHost),
            Some(other) => {
                return Err(DbError::BadUrl(format!(
                "sslmode={other} is not a mode Tether knows; use disable, require, verify-ca or verify-full"
            )))
            }
        };
        let mut options = config.get_options().map(str::to_owned).unwrap_or_default();
        for (name, secs) in [
            ("statement_timeout", session.statement_timeout_secs),
            ("lock_timeout", session.lock_timeout_secs),
        ] {
            options.push_str(&format!(" -c {name}={}", secs.saturating_mul(1000)));
        }
        config.options(options.trim_start());
        let tls = match verify {
            None => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            Some(verify) => {
                config.ssl_mode(SslMode::Require);
                Some(MakeRustlsConnect::new(client_config(verify, root_cert.as_deref())?))
            }
        };
        Ok(Self { config, tls })
    }
}

/// Removes `sslmode` and `sslrootcert` from a URL (`postgres://…?k=v&…`) or
/// a key/value string (`host=… sslmode=…`); returns the rest and both values.
fn take_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None, None) };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !is_tls_param(key, value, &mut mode, &mut root)
            })
            .collect();
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        (rest, mode, root)
    } else {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !is_tls_param(key.trim(), value.trim_matches('\''), &mut mode, &mut root)
            })
            .collect();
        (kept.join(" "), mode, root)
    }
}

/// Records `sslmode` or `sslrootcert`; false for any other parameter.
fn is_tls_param(key: &str, value: &str, mode: &mut Option<String>, root: &mut Option<String>) -> bool {
    let decoded = || percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned();
    match key {
        "sslmode" => *mode = Some(decoded()),
        "sslrootcert" => *root = Some(decoded()),
        _ => return false,
    }
    true
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(verify: Verify, root_cert: Option<&str>) -> Result<rustls::ClientConfig, DbError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::BadUrl(format!("TLS to Postgres cannot be set up: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(AnyCertificate(provider)),
        Verify::Chain | Verify::ChainAndHost => {
            let roots = Arc::new(roots(root_cert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| DbError::BadUrl(format!("sslrootcert holds no usable CA certificate: {e}")))?;
            if verify == Verify::Chain {
                Arc::new(AnyHostName(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

/// The roots of `sslrootcert`: a PEM file, or the machine's (`system`, or
/// none given).
fn roots(root_cert: Option<&str>) -> Result<RootCertStore, DbError> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        None | Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(path).and_then(Iterator::collect).map_err(|e| {
                    DbError::BadUrl(format!("sslrootcert={path} cannot be read as PEM certificates ({e})"))
                })?;
            roots.add_parsable_certificates(certs);
        }
    }
    if roots.is_empty() {
        return Err(DbError::BadUrl(format!(
            "sslrootcert={} holds no CA certificate: give the PEM file of the CA that signed the server's certificate",
            root_cert.unwrap_or("system")
        )));
    }
    Ok(roots)
}

/// `sslmode=require` without a root: encrypted, the certificate unchecked
/// (libpq's meaning). The handshake's signatures are still verified.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url() {
        let (rest, mode, root) = take_tls_params(
            "postgres://u:p@db:5432/tether?sslmode=verify-full&application_name=x&sslrootcert=%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@db:5432/tether?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        let (rest, mode, _) = take_tls_params("host=db dbname=tether sslmode=require");
        assert_eq!(rest, "host=db dbname=tether");
        assert_eq!(mode.as_deref(), Some("require"));
    }

    #[test]
    fn an_unknown_mode_is_named() {
        let error = Target::parse("postgres://db/t?sslmode=verify", DbSession::DEFAULT).err();
        assert!(error.is_some_and(|e| e.to_string().contains("sslmode=verify ")));
    }

    #[test]
    fn timeouts_become_start_up_options() {
        let target = Target::parse("postgres://db/t?options=-c%20search_path%3Dx", DbSession::DEFAULT)
            .expect("a valid URL");
        assert_eq!(
            target.config.get_options(),
            Some("-c search_path=x -c statement_timeout=60000 -c lock_timeout=10000")
        );
        assert!(target.tls.is_none());
    }
}
