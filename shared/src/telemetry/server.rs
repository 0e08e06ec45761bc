//! The operators' HTTP endpoints on `TETHER_METRICS_ADDR`: `/metrics`
//! (Prometheus text), `/healthz` (the process is alive) and `/readyz` (it can
//! reach Postgres, and RabbitMQ where it uses RabbitMQ, right now).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::metrics;
use crate::db::Store;
use crate::queue::Link;

/// What `/readyz` checks: Postgres answers and, for a process that uses
/// RabbitMQ (`amqp` set; not `tether-api`), the AMQP connection is up.
#[derive(Clone, Debug)]
pub struct Readiness {
    pub store: Store,
    pub amqp: Option<Link>,
}

impl Readiness {
    async fn check(&self) -> Result<(), String> {
        if self.amqp.as_ref().is_some_and(|link| !link.connected()) {
            return Err("RabbitMQ is not connected".into());
        }
        self.store.ping().await.map_err(|e| e.to_string())
    }
}

/// Serves the endpoints until `shutdown`; fails only if `addr` cannot be bound.
pub async fn serve(addr: SocketAddr, ready: Readiness, shutdown: CancellationToken) -> std::io::Result<()> {
    let ready = Arc::new(ready);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "Serving /metrics, /healthz and /readyz.");
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "Cannot accept a metrics connection.");
                        continue;
                    }
                },
            };
            let ready = Arc::clone(&ready);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| respond(request, Arc::clone(&ready)));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

async fn respond(
    request: Request<hyper::body::Incoming>,
    ready: Arc<Readiness>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => {
            let (in_use, waiting) = ready.store.pool_usage();
            metrics().db_pool_in_use.set(in_use);
            metrics().db_pool_waiting.set(waiting);
            (StatusCode::OK, "text/plain; version=0.0.4", metrics().render())
        }
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => match ready.check().await {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {reason}\n")),
        },
        _ => {
            (StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /healthz or /readyz\n".to_owned())
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}
