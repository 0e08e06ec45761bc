//! A fault-injecting HTTP proxy of the project's own, put between the
//! workers and the storage emulator: a share of requests is answered
//! `503 SlowDown`, another share has its connection dropped, the rest is
//! forwarded untouched. It can also play S3's region rule, which moto does
//! not enforce: a request signed for another region than the bucket's is
//! refused the way S3 refuses it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    /// The bodies of the answers forwarded, when [`Faults::record`] is set.
    pub recorded: std::sync::Mutex<Vec<String>>,
}

impl Counts {
    /// Every value of the XML element `tag` in the recorded answers
    /// (`SecretAccessKey`, `SessionToken`, ...).
    pub fn recorded_values(&self, tag: &str) -> Vec<String> {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let bodies = self.recorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
        let (task_counts, task_stop) = (Arc::clone(&counts), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = task_stop.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
                };
                let (client, upstream, counts) = (client.clone(), upstream.clone(), Arc::clone(&task_counts));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        handle(request, client.clone(), upstream.clone(), Arc::clone(&counts), faults)
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
) -> Result<Response<ProxyBody>, Dropped> {
    if let Some(response) = faults.bucket_region.and_then(|region| misdirected(&request, region)) {
        counts.misdirected.fetch_add(1, Ordering::Relaxed);
        return Ok(response);
    }
    let roll: f64 = rand::random();
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
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                    <Message>Please reduce your request rate.</Message></Error>";
        let mut response = Response::new(full(body));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return Ok(response);
    }
    counts.forwarded.fetch_add(1, Ordering::Relaxed);
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = upstream.authority().map_or("127.0.0.1", |a| a.as_str());
    parts.uri = format!("http://{authority}{path}").parse().map_err(|_| Dropped)?;
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) if faults.record => {
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map_err(|_| Dropped)?.to_bytes();
            counts
                .recorded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(String::from_utf8_lossy(&bytes).into_owned());
            Ok(Response::from_parts(parts, Full::new(bytes).map_err(|never: Infallible| match never {}).boxed()))
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

fn full(text: &'static str) -> ProxyBody {
    Full::new(Bytes::from_static(text.as_bytes())).map_err(|never: Infallible| match never {}).boxed()
}
