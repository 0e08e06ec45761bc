//! `tether-api`: the stateless HTTP service that hands out short-lived URLs
//! for imported images (contract §8), so that the platform can show, annotate
//! and train on images whose bytes stay in the customer's bucket without
//! ever holding the customer's credentials.
//!
//! - [`routes`]: one axum router per resource, merged with the layers that
//!   apply everywhere; [`error`]: the one error type and its JSON object;
//!   [`auth`]: bearer tokens.
//! - [`urls`]: direct URLs signed for the store, and proxy URLs;
//!   [`capability`]: the signatures of proxy URLs; [`window`]: why the same
//!   image gets the same URL within a window.
//! - [`config`]: the configuration, checked before anything starts.
//!
//! Run as many as needed: nothing is kept but caches (customer sessions,
//! GCS signatures of the current window).

pub mod config;

mod auth;
mod capability;
mod error;
mod routes;
mod urls;
mod window;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tether_shared::checks::Checker;
use tether_shared::credentials::gcp::GcpTokens;
use tether_shared::credentials::sts::StsCredentials;
use tether_shared::db::{DbError, Store};
use tether_shared::destination::{self, Destination, DestinationError, Parts};
use tether_shared::signing::gcs::{GcsSigning, ServiceAccountKey};
use tether_shared::signing::s3::OwnS3;
use tether_shared::storage::azure::AzureSources;
use tether_shared::storage::gcs::{GcsApi, GcsSources};
use tether_shared::storage::s3::{BucketRegions, S3Sources};
use tether_shared::storage::Sources;
use tether_shared::telemetry::{self, Readiness};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::capability::ContentKeys;
pub use crate::config::ApiConfig;
use crate::urls::{SignatureCache, Signing};
use crate::window::Window;

/// How long open streams may go on after SIGTERM before they are cut.
const DRAIN: Duration = Duration::from_secs(30);

/// Why `tether-api` could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A setting is missing or unsafe: the sentence names the variable.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Destination(#[from] DestinationError),
    #[error("cannot listen on TETHER_API_ADDR {addr}: {error}")]
    Listen { addr: SocketAddr, error: std::io::Error },
    #[error("cannot serve metrics on TETHER_METRICS_ADDR: {0}")]
    Metrics(std::io::Error),
    #[error("cannot build the HTTP client for GCS and Azure: {0}")]
    Http(String),
    #[error("the HTTP server stopped: {0}")]
    Serve(std::io::Error),
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    store: Store,
    tokens: auth::Tokens,
    window: Window,
    /// `TETHER_API_PUBLIC_URL`, without a trailing slash.
    public_url: String,
    /// `TETHER_API_ALLOWED_ORIGINS`.
    origins: Vec<String>,
    content: ContentKeys,
    /// Customer buckets (reading links; S3 sessions for signing them).
    sources: Sources,
    /// `TETHER_DESTINATION`, where copies are read and signed.
    destination: Option<Arc<dyn Destination>>,
    signing: Signing,
    /// Connection checks with Tether's own identities (contract §9).
    checker: Checker,
    /// Tether's own AWS configuration (its principal, for set-up policies).
    sdk: aws_config::SdkConfig,
    /// One permit per proxied stream.
    streams: Arc<Semaphore>,
}

/// Listens on `TETHER_API_ADDR` and serves until `shutdown`.
pub async fn run(config: ApiConfig, shutdown: CancellationToken) -> Result<(), RunError> {
    let addr = config.addr;
    let listener = TcpListener::bind(addr).await.map_err(|error| RunError::Listen { addr, error })?;
    serve(config, listener, shutdown).await
}

/// Serves on `listener` until `shutdown` (tests pass a listener of their
/// own), then lets open streams finish for a while.
pub async fn serve(
    config: ApiConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let checked = config.check().map_err(RunError::Config)?;
    let own_key = match &config.google_application_credentials {
        Some(path) => own_google_key(path)?,
        None => None,
    };
    let store = Store::connect_with(&config.database_url, config.db_pool_size, config.db_session)?;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let refresh_margin = Duration::from_secs(config.sts_refresh_margin_secs);
    let http = tether_shared::storage::http_client(Duration::from_secs(60), Duration::from_secs(60))
        .map_err(RunError::Http)?;
    let gcp_tokens = Arc::new(GcpTokens::new(http.clone(), refresh_margin));
    let gcs =
        GcsApi::new(http.clone(), config.stores.storage_emulator_host.as_deref(), Arc::clone(&gcp_tokens));
    let destination = match &config.destination {
        Some(url) => {
            let parts = Parts::new(destination::s3::MIN_PART_BYTES, 1, destination::s3::MIN_PART_BYTES);
            Some(destination::open(url, &sdk, config.stores.s3_force_path_style, &gcs, parts).await?)
        }
        None => None,
    };
    let sts = StsCredentials::new(aws_sdk_sts::Client::new(&sdk), refresh_margin)
        .with_session_seconds(config.sts_session_secs);
    // What a check learns of a bucket's region, signing uses, and the other
    // way round.
    let regions = Arc::new(BucketRegions::default());
    let checker = Checker::new(&sdk, &config.stores, &checked.origins, Arc::clone(&regions))
        .map_err(|e| RunError::Config(e.to_string()))?
        .refusing_destination(config.destination.as_deref());
    let state = Arc::new(AppState {
        store: store.clone(),
        tokens: checked.tokens,
        window: Window::new(checked.window),
        public_url: checked.public_url,
        origins: checked.origins,
        content: ContentKeys::new(&checked.secrets_key, &config.previous_secrets_keys),
        sources: Sources::new(
            S3Sources::new(&sdk, Arc::new(sts), config.stores.s3_force_path_style).sharing_regions(regions),
            GcsSources::new(gcs.clone()),
            AzureSources::new(http, Some(&config.stores.azure_blob_endpoint)),
            Some(checked.secrets_key),
        ),
        destination,
        signing: Signing {
            own_s3: Arc::new(OwnS3::new(&sdk, config.stores.s3_force_path_style, refresh_margin)),
            gcs: GcsSigning::new(&gcs, own_key, gcp_tokens),
            cache: SignatureCache::default(),
        },
        checker,
        sdk,
        streams: Arc::new(Semaphore::new(config.max_streams)),
    });
    if let Some(addr) = config.metrics_addr {
        let ready = Readiness { store, amqp: None };
        telemetry::serve(addr, ready, shutdown.clone()).await.map_err(RunError::Metrics)?;
    }
    let addr = listener.local_addr().map_err(RunError::Serve)?;
    tracing::info!(%addr, window_secs = state.window.seconds(), origins = state.origins.len(), "tether-api listening.");
    let server = axum::serve(listener, routes::router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    tokio::select! {
        served = server => served.map_err(RunError::Serve)?,
        () = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN).await } => {
            tracing::warn!("Streams still open {DRAIN:?} after the shutdown signal; cutting them.");
        }
    }
    tracing::info!("tether-api stopped.");
    Ok(())
}

/// Tether's own service-account key, for signing gs:// URLs; another kind
/// of Google credentials file (a gcloud user's) signs nothing.
fn own_google_key(path: &std::path::Path) -> Result<Option<ServiceAccountKey>, RunError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        RunError::Config(format!(
            "GOOGLE_APPLICATION_CREDENTIALS names {}, which cannot be read ({e}): point it at Tether's service-account JSON key",
            path.display()
        ))
    })?;
    let kind = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned));
    if kind.as_deref().is_some_and(|k| k != "service_account") {
        tracing::warn!(kind, "GOOGLE_APPLICATION_CREDENTIALS is not a service-account key: gs:// URLs can only be signed for impersonated accounts.");
        return Ok(None);
    }
    ServiceAccountKey::from_json(&text).map(Some).map_err(|e| {
        RunError::Config(format!(
            "GOOGLE_APPLICATION_CREDENTIALS names {}, but {e}: point it at Tether's service-account JSON key",
            path.display()
        ))
    })
}
