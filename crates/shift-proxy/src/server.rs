//! The listener: HTTP/1.1 keep-alive and h2c from clients, a header-read timeout, and a
//! graceful shutdown that stops accepting and drains in-flight requests within a grace period.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::body::ProxyBody;

/// How the listener treats connections.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A client must send its request head within this time.
    pub header_read_timeout: Duration,
    /// Accept HTTP/2 with prior knowledge (h2c) beside HTTP/1.1.
    pub http2: bool,
    /// How long in-flight requests may take to finish once shutdown begins.
    pub shutdown_grace: Duration,
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished its in-flight requests in time.
    Clean,
    /// The grace period ran out with connections still busy; they were closed.
    GraceExpired,
}

/// Serves `service` on a listener the caller bound (tests bind port 0), until `shutdown`
/// completes; then stops accepting and drains.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Drained
where
    S: tower::Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    if !options.http2 {
        builder = builder.http1_only();
    }
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = builder
            .serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service.clone()),
            )
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::info!(grace = ?options.shutdown_grace, "stopped accepting; draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => Drained::Clean,
        () = tokio::time::sleep(options.shutdown_grace) => Drained::GraceExpired,
    }
}
