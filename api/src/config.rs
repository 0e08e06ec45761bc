//! `tether-api`'s configuration (contract §5): read from the environment by
//! clap, then checked as a whole before anything starts, so that a missing
//! or unsafe setting stops the process with a sentence naming the variable
//! and the fix, rather than a half-working service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tether_shared::config::{LogFormat, StoresConfig};
use tether_shared::secrets::Secret;
use tether_shared::secrets::SecretsKey;

use crate::auth::Tokens;

/// The shortest bearer token accepted (contract §8).
const MIN_TOKEN_CHARS: usize = 16;
/// The longest signing window: a URL lasts at most 43,200 s plus a window,
/// and stays within SigV4's and GCS V4's seven days.
const MAX_WINDOW_SECS: u64 = 3_600;
/// Sessions must outlive a URL's safety margin by this much at least.
const MIN_REFRESH_MARGIN_SECS: u64 = 120;

/// `tether-api` as the operator configures it (environment, or flags).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tether-api", version, about)]
pub struct ApiConfig {
    /// Where tether-api listens for the platform and for browsers.
    #[arg(long, env = "TETHER_API_ADDR", default_value = "127.0.0.1:8480")]
    pub addr: SocketAddr,
    /// Comma-separated bearer tokens the platform may present (two during a
    /// rotation); each at least 16 characters. Required.
    #[arg(long, env = "TETHER_API_TOKENS", hide_env_values = true)]
    pub tokens: Option<Secret>,
    /// The address browsers reach tether-api at; proxy URLs start with it.
    /// Required.
    #[arg(long, env = "TETHER_API_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The signing window in seconds: URLs asked for within one window are
    /// the same, so browsers cache them.
    #[arg(long, env = "TETHER_SIGN_WINDOW_SECS", default_value_t = 300)]
    pub sign_window_secs: u64,
    /// Comma-separated web origins allowed to fetch proxied content (CORS);
    /// `*` is refused.
    #[arg(long, env = "TETHER_API_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,
    /// Proxied streams served at once; past this, content requests get 503.
    #[arg(long, env = "TETHER_API_MAX_STREAMS", default_value_t = 64)]
    pub max_streams: usize,
    /// Postgres (read-only use: images and imports); may hold a password.
    #[arg(long, env = "TETHER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Secret,
    /// Postgres connections of this process.
    #[arg(long, env = "TETHER_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,
    #[command(flatten)]
    pub db_session: tether_shared::config::DbSession,
    /// Where `/metrics`, `/healthz` and `/readyz` (Postgres only) are served.
    #[arg(long, env = "TETHER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// The installation's secrets key: opens sealed SAS tokens and yields
    /// the key that signs proxy URLs. Required.
    #[arg(long, env = "TETHER_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<SecretsKey>,
    /// Earlier secrets keys, comma-separated: proxy URLs they signed keep
    /// working until they expire, after TETHER_SECRETS_KEY was rotated.
    #[arg(long, env = "TETHER_SECRETS_KEY_PREVIOUS", hide_env_values = true, value_delimiter = ',')]
    pub previous_secrets_keys: Vec<SecretsKey>,
    #[arg(long, env = "TETHER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Renew customer sessions this many seconds before they expire.
    #[arg(long, env = "TETHER_STS_REFRESH_MARGIN_SECS", default_value_t = 900)]
    pub sts_refresh_margin_secs: u64,
    /// The STS session length asked for (21,600: contract §2); shorter for
    /// roles whose maximum is lower.
    #[arg(long, env = "TETHER_STS_SESSION_SECS", default_value_t = tether_shared::credentials::sts::SESSION_SECONDS)]
    pub sts_session_secs: i32,
    /// Where the stores are (emulators, path-style S3, the Azure endpoint).
    #[command(flatten)]
    pub stores: StoresConfig,
    /// Where copies are (as the workers' TETHER_DESTINATION); copies are read
    /// and signed only inside it. Unset: copies cannot be served.
    #[arg(long, env = "TETHER_DESTINATION")]
    pub destination: Option<String>,
    /// A service-account JSON key: Tether's own key, which signs gs:// URLs
    /// of copies and of imports that ran on Tether's own identity.
    #[arg(long, env = "GOOGLE_APPLICATION_CREDENTIALS")]
    pub google_application_credentials: Option<PathBuf>,
}

/// What `tether-api` refuses to start without, checked.
#[derive(Debug)]
pub(crate) struct Checked {
    pub tokens: Tokens,
    pub public_url: String,
    pub window: Duration,
    pub origins: Vec<String>,
    pub secrets_key: SecretsKey,
}

impl ApiConfig {
    /// Checks the settings the contract makes mandatory or constrains; the
    /// error is one sentence naming the variable and the fix.
    pub(crate) fn check(&self) -> Result<Checked, String> {
        let tokens = self.tokens.as_ref().ok_or(
            "TETHER_API_TOKENS is unset: give tether-api at least one bearer token of 16 or more characters (for example `head -c 32 /dev/urandom | base64`), the one the platform presents",
        )?;
        let tokens = parse_tokens(tokens)?;
        let public_url = parse_public_url(self.public_url.as_deref())?;
        let secrets_key = self.secrets_key.clone().ok_or(
            "TETHER_SECRETS_KEY is unset: give tether-api the installation's secrets key (the schedulers' and workers'); it opens SAS tokens and signs proxy URLs",
        )?;
        if !(1..=MAX_WINDOW_SECS).contains(&self.sign_window_secs) {
            return Err(format!(
                "TETHER_SIGN_WINDOW_SECS is {}: use 1 to {MAX_WINDOW_SECS} seconds (default 300)",
                self.sign_window_secs
            ));
        }
        if self.sts_refresh_margin_secs < MIN_REFRESH_MARGIN_SECS {
            return Err(format!(
                "TETHER_STS_REFRESH_MARGIN_SECS is {}: tether-api needs at least {MIN_REFRESH_MARGIN_SECS}, or S3 URLs would die with their session moments after they are handed out",
                self.sts_refresh_margin_secs
            ));
        }
        if self.max_streams == 0 {
            return Err("TETHER_API_MAX_STREAMS is 0: allow at least one proxied stream".into());
        }
        Ok(Checked {
            tokens,
            public_url,
            window: Duration::from_secs(self.sign_window_secs),
            origins: parse_origins(&self.allowed_origins)?,
            secrets_key,
        })
    }
}

/// Trimmed tokens; an empty entry or a short token is refused, naming its
/// position but never its value.
fn parse_tokens(tokens: &Secret) -> Result<Tokens, String> {
    let mut accepted = Vec::new();
    for (i, token) in tokens.expose().split(',').map(str::trim).enumerate() {
        let n = i + 1;
        if token.is_empty() {
            return Err(format!(
                "TETHER_API_TOKENS has an empty entry (number {n}): remove the stray comma or fill it in"
            ));
        }
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "TETHER_API_TOKENS entry number {n} is shorter than {MIN_TOKEN_CHARS} characters: use long random tokens (for example `head -c 32 /dev/urandom | base64`)"
            ));
        }
        accepted.push(Secret::new(token));
    }
    Ok(Tokens::new(&accepted))
}

fn parse_public_url(url: Option<&str>) -> Result<String, String> {
    let url = url.map(str::trim).filter(|u| !u.is_empty()).ok_or(
        "TETHER_API_PUBLIC_URL is unset: give the address browsers reach tether-api at, such as https://images.example.com",
    )?;
    let parsed = reqwest::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        .filter(|u| u.query().is_none() && u.fragment().is_none());
    match parsed {
        Some(_) => Ok(url.trim_end_matches('/').to_owned()),
        None => Err(format!(
            "TETHER_API_PUBLIC_URL is {url:?}: give an http or https URL without query, such as https://images.example.com"
        )),
    }
}

fn parse_origins(origins: &str) -> Result<Vec<String>, String> {
    let mut parsed = Vec::new();
    for origin in origins.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        if origin == "*" {
            return Err("TETHER_API_ALLOWED_ORIGINS holds `*`: list the platform's web origins one by one (such as https://app.example.com); any origin could otherwise read customer images".into());
        }
        let exact = reqwest::Url::parse(origin)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .is_some_and(|u| u.origin().ascii_serialization() == origin);
        if !exact {
            return Err(format!(
                "TETHER_API_ALLOWED_ORIGINS holds {origin:?}, which is not a web origin: write scheme://host[:port] without a path or trailing slash, such as https://app.example.com"
            ));
        }
        parsed.push(origin.to_owned());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_trimmed_and_short_or_empty_ones_refused_without_quoting_them() {
        let ok = parse_tokens(&Secret::new(" aaaaaaaaaaaaaaaa , bbbbbbbbbbbbbbbbbbbb")).expect("two tokens");
        assert!(ok.accepts("aaaaaaaaaaaaaaaa") && ok.accepts("bbbbbbbbbbbbbbbbbbbb"));
        assert!(!ok.accepts(" aaaaaaaaaaaaaaaa") && !ok.accepts("aaaaaaaaaaaaaaa"));
        let empty = parse_tokens(&Secret::new("aaaaaaaaaaaaaaaa,,")).expect_err("empty");
        assert!(empty.contains("TETHER_API_TOKENS") && empty.contains("number 2"), "{empty}");
        let short = parse_tokens(&Secret::new("aaaaaaaaaaaaaaaa,short-token")).expect_err("short");
        assert!(short.contains("number 2") && !short.contains("short-token"), "{short}");
    }

    #[test]
    fn origins_are_exact_and_never_a_wildcard() {
        assert_eq!(
            parse_origins(" https://app.example.com ,http://127.0.0.1:3000").expect("valid"),
            ["https://app.example.com", "http://127.0.0.1:3000"]
        );
        assert!(parse_origins("").expect("none").is_empty());
        assert!(parse_origins("*").expect_err("wildcard").contains("`*`"));
        for bad in ["https://app.example.com/", "app.example.com", "https://a.example.com/path", "ftp://x.y"]
        {
            assert!(parse_origins(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_public_url_is_an_http_url() {
        assert_eq!(
            parse_public_url(Some("https://img.example.com/")).expect("ok"),
            "https://img.example.com"
        );
        assert_eq!(parse_public_url(Some("http://127.0.0.1:8480/t")).expect("ok"), "http://127.0.0.1:8480/t");
        assert!(parse_public_url(None).expect_err("unset").contains("TETHER_API_PUBLIC_URL"));
        assert!(parse_public_url(Some("img.example.com")).is_err());
        assert!(parse_public_url(Some("https://img.example.com/?a=b")).is_err());
    }
}
