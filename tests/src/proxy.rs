//! A fault-injecting HTTP proxy of the project's own, put between the
//! workers and the storage emulator: a share of requests is answered
//! `503 SlowDown`, another share has its connection dropped, the rest is
//! forwarded untouched; the shares are drawn from a seeded generator (the
//! seed is printed, and `TETHER_TEST_SEED` replays it). Deterministic faults
//! too: the first N attempts at each listing page and object read refused,
//! or an object's bytes corrupted on the way. It can also play S3's region
//! rule, which moto does not enforce: a request signed for another region
//! than the bucket's is refused the way S3 refuses it. It notes when each
//! request arrived, so a test can read the rate the store saw.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rand::{Rng, SeedableRng};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

/// Which share of requests gets which fault.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Answered `503 SlowDown`.
    pub slow_down: f64,
    /// Connection dropped without an answer.
    pub reset: f64,
    /// Answered `400 ExpiredToken`: the session expired (or was revoked).
    pub expired_token: f64,
    /// The region of every bucket behind the proxy: a request signed for
    /// another is refused (see [`misdirected`]).
    pub bucket_region: Option<&'static str>,
    /// Keep every answer's body (see [`Counts::recorded`]): the secrets a
    /// store handed out, STS sessions say, for a test to look for.
    pub record: bool,
    /// Each listing page and object read (the same request: method, path
    /// and query) is answered `503 SlowDown` this many times before it is
    /// forwarded: more than the SDK's own attempts, so only Tether's
    /// retries get through.
    pub fail_first: u32,
    /// Object reads whose key contains this come back with their bytes
    /// changed (same length): a body that is not what was listed.
    pub corrupt: Option<&'static str>,
}

/// What the proxy did so far.
#[derive(Debug, Default)]
pub struct Counts {
    pub forwarded: AtomicU64,
    pub slowed_down: AtomicU64,
    pub reset: AtomicU64,
    pub expired: AtomicU64,
    /// Refused for being signed for the wrong region.
    pub misdirected: AtomicU64,
    /// Forwarded requests that asked for a byte range.
    pub ranged: AtomicU64,
    pub corrupted: AtomicU64,
    /// The bodies of the answers forwarded, when [`Faults::record`] is set.
    pub recorded: Mutex<Vec<String>>,
    /// When each request arrived, and what it was (`METHOD path?query`).
    pub requests: Mutex<Vec<(Instant, String)>>,
    /// How often each request was seen ([`Faults::fail_first`]).
    seen: Mutex<HashMap<String, u32>>,
}

impl Counts {
    /// The arrival times of listings (`lists`) or of other requests.
    pub fn arrivals(&self, lists: bool) -> Vec<Instant> {
        self.times_of(|request| request.contains("list-type=") == lists)
    }

    /// The arrival times of the requests that `matches` picks out.
    pub fn times_of(&self, matches: impl Fn(&str) -> bool) -> Vec<Instant> {
        let requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        requests.iter().filter(|(_, r)| matches(r)).map(|(t, _)| *t).collect()
    }

    /// Every value of the XML element `tag` in the recorded answers
    /// (`SecretAccessKey`, `SessionToken`, ...).
    pub fn recorded_values(&self, tag: &str) -> Vec<String> {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let bodies = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
        bodies
            .iter()
            .flat_map(|body| body.split(open.as_str()).skip(1))
            .filter_map(|rest| rest.split_once(close.as_str()).map(|(value, _)| value.to_owned()))
            .collect()
    }
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    stop: CancellationToken,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

impl FaultProxy {
    /// Starts a proxy on a free local port in front of `upstream`
    /// (`http://host:port`).
    pub async fn start(upstream: &str, faults: Faults) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let upstream: hyper::Uri = upstream.parse().expect("upstream URL");
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        let counts = Arc::new(Counts::default());
        let stop = CancellationToken::new();
        let seed =
            std::env::var("TETHER_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
        eprintln!("fault proxy in front of {upstream}: seed {seed} (TETHER_TEST_SEED={seed} replays it)");
        let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
        let (task_counts, task_stop) = (Arc::clone(&counts), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = task_stop.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
                };
                let (client, upstream, counts) = (client.clone(), upstream.clone(), Arc::clone(&task_counts));
                let rng = Arc::clone(&rng);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let roll: f64 = rng.lock().unwrap_or_else(PoisonError::into_inner).random();
                        handle(request, client.clone(), upstream.clone(), Arc::clone(&counts), faults, roll)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, counts, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn handle(
    request: Request<Incoming>,
    client: Client<HttpConnector, Incoming>,
    upstream: hyper::Uri,
    counts: Arc<Counts>,
    faults: Faults,
    roll: f64,
) -> Result<Response<ProxyBody>, Dropped> {
    let what = format!("{} {}", request.method(), request.uri().path_and_query().map_or("/", |p| p.as_str()));
    counts.requests.lock().unwrap_or_else(PoisonError::into_inner).push((Instant::now(), what.clone()));
    if let Some(response) = faults.bucket_region.and_then(|region| misdirected(&request, region)) {
        counts.misdirected.fetch_add(1, Ordering::Relaxed);
        return Ok(response);
    }
    let object_read = is_object_read(&request);
    if faults.fail_first > 0 && (object_read || is_listing(&request)) {
        let mut seen = counts.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let n = seen.entry(what).or_insert(0);
        *n += 1;
        if *n <= faults.fail_first {
            counts.slowed_down.fetch_add(1, Ordering::Relaxed);
            return Ok(slow_down());
        }
    }
    let corrupt = object_read && faults.corrupt.is_some_and(|marker| request.uri().path().contains(marker));
    if roll < faults.reset {
        counts.reset.fetch_add(1, Ordering::Relaxed);
        return Err(Dropped); // hyper closes the connection without an answer
    }
    if roll < faults.reset + faults.expired_token {
        counts.expired.fetch_add(1, Ordering::Relaxed);
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ExpiredToken</Code>\
                    <Message>The provided token has expired.</Message></Error>";
        let mut response = Response::new(full(body));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(response);
    }
    if roll < faults.reset + faults.expired_token + faults.slow_down {
        counts.slowed_down.fetch_add(1, Ordering::Relaxed);
        return Ok(slow_down());
    }
    counts.forwarded.fetch_add(1, Ordering::Relaxed);
    if request.headers().contains_key(hyper::header::RANGE) {
        counts.ranged.fetch_add(1, Ordering::Relaxed);
    }
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = upstream.authority().map_or("127.0.0.1", |a| a.as_str());
    parts.uri = format!("http://{authority}{path}").parse().map_err(|_| Dropped)?;
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) if corrupt && response.status().is_success() => {
            counts.corrupted.fetch_add(1, Ordering::Relaxed);
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map_err(|_| Dropped)?.to_bytes();
            let changed: Vec<u8> = bytes.iter().map(|b| b ^ 0x5a).collect();
            Ok(Response::from_parts(
                parts,
                Full::new(Bytes::from(changed)).map_err(|never: Infallible| match never {}).boxed(),
            ))
        }
        Ok(response) if faults.record => {
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map_err(|_| Dropped)?.to_bytes();
            counts
                .recorded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(String::from_utf8_lossy(&bytes).into_owned());
            Ok(Response::from_parts(
                parts,
                Full::new(bytes).map_err(|never: Infallible| match never {}).boxed(),
            ))
        }
        Ok(response) => Ok(response.map(BodyExt::boxed)),
        Err(_) => {
            let mut response = Response::new(full("the emulator did not answer"));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(response)
        }
    }
}

/// S3's answer to a request signed for another region than the bucket's
/// `region` (`GetBucketLocation` is answered in every region): a request
/// signed for us-east-1 gets `301 PermanentRedirect` with the
/// `x-amz-bucket-region` header, as from S3's global endpoint; any other
/// region gets `400 AuthorizationHeaderMalformed` naming the region only in
/// its body.
fn misdirected(request: &Request<Incoming>, region: &'static str) -> Option<Response<ProxyBody>> {
    if request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "location" || p == "location=")) {
        return None;
    }
    let authorization = request.headers().get("authorization")?.to_str().ok()?;
    let scope = authorization.split("Credential=").nth(1)?.split(',').next()?;
    let signed_for = scope.split('/').nth(2)?;
    if signed_for == region {
        return None;
    }
    let head = request.method() == hyper::Method::HEAD;
    let (status, body) = if signed_for == "us-east-1" {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>PermanentRedirect</Code>\
                    <Message>The bucket you are attempting to access must be addressed using the specified endpoint.</Message></Error>";
        (StatusCode::MOVED_PERMANENTLY, body.to_owned())
    } else {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AuthorizationHeaderMalformed</Code>\
             <Message>The authorization header is malformed; the region '{signed_for}' is wrong; expecting '{region}'</Message>\
             <Region>{region}</Region></Error>"
        );
        (StatusCode::BAD_REQUEST, body)
    };
    let body = if head { String::new() } else { body };
    let mut response =
        Response::new(Full::new(Bytes::from(body)).map_err(|never: Infallible| match never {}).boxed());
    *response.status_mut() = status;
    if status == StatusCode::MOVED_PERMANENTLY {
        response.headers_mut().insert("x-amz-bucket-region", hyper::header::HeaderValue::from_static(region));
    }
    Some(response)
}

/// S3's answer to a request rate it will not take.
fn slow_down() -> Response<ProxyBody> {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                <Message>Please reduce your request rate.</Message></Error>";
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
}

/// A ListObjectsV2 request (a listing page).
fn is_listing(request: &Request<Incoming>) -> bool {
    request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "list-type=2"))
}

/// A GetObject request: a GET of a key (path-style: `/bucket/key`), not of
/// the bucket's listing or sub-resources.
fn is_object_read(request: &Request<Incoming>) -> bool {
    let path = request.uri().path().trim_start_matches('/');
    request.method() == hyper::Method::GET
        && path.split_once('/').is_some_and(|(_, key)| !key.is_empty())
        && !is_listing(request)
}

fn full(text: &'static str) -> ProxyBody {
    Full::new(Bytes::from_static(text.as_bytes())).map_err(|never: Infallible| match never {}).boxed()
}
