//! The listener, for the data plane and the admin API alike: HTTP/1.1 keep-alive and HTTP/2
//! (h2c, or h2 by ALPN over TLS), a cap on open connections, a header-read timeout, a bounded
//! TLS handshake, an idle timeout, and a graceful shutdown that stops accepting and drains
//! in-flight requests within a grace period.
//!
//! Past the connection cap a new connection is accepted and closed at once rather than left
//! in the kernel's backlog: the client fails fast and can retry (or reach another replica)
//! instead of hanging until its connect timeout, and the refusal is counted.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus::IntGauge;
use shift_config::{ConnectionsConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::body::BoxError;
use crate::data_threads::DataPlaneThreads;
use crate::metrics::ConnectionMetrics;
use crate::tls::ServerTls;

/// How the listener treats connections.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Names the listener in metrics and logs (`data`, `admin`).
    pub listener: &'static str,
    /// A client must send its request head within this time; a TLS client must also finish
    /// its handshake within it.
    pub header_read_timeout: Duration,
    /// Accept HTTP/2 (with prior knowledge, or by ALPN over TLS) beside HTTP/1.1.
    pub http2: bool,
    /// How long in-flight requests may take to finish once shutdown begins.
    pub shutdown_grace: Duration,
    /// Connection cap, idle timeout and HTTP/2 limits.
    pub connections: ConnectionsConfig,
    /// TLS, when the listener has it.
    pub tls: Option<ListenerTls>,
    /// Open connections and refusals.
    pub metrics: ConnectionMetrics,
}

impl ServeOptions {
    /// The options `[server]` gives a listener named `listener`, with its TLS (already loaded,
    /// so a bad certificate stops the process before it binds).
    pub fn from_config(
        listener: &'static str,
        config: &ServerConfig,
        tls: Option<ListenerTls>,
        metrics: ConnectionMetrics,
    ) -> ServeOptions {
        ServeOptions {
            listener,
            header_read_timeout: config.header_read_timeout,
            http2: config.http2,
            shutdown_grace: config.shutdown_grace,
            connections: config.connections.clone(),
            tls,
            metrics,
        }
    }
}

/// A listener's TLS and how often its certificate files are checked for a change.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub tls: ServerTls,
    pub reload_interval: Duration,
}

/// Put on every request of a TLS connection whose client presented a certificate the
/// listener's `client_ca` verified (only the admin listener takes one; see [`crate::tls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedClientCert;

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished its in-flight requests in time.
    Clean,
    /// The grace period ran out with connections still busy; they were closed.
    GraceExpired,
}

/// What a listener serves: a tower service of hyper requests that answers every one (errors
/// are responses by then), with a body hyper can send. The data plane's stack and the admin
/// API's router both are.
pub trait ListenerService:
    tower::Service<
        Request<Incoming>,
        Response = Response<Self::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The response body.
    type Body: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> ListenerService for S
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type Body = B;
}

/// Serves `service` on a listener the caller bound (tests bind port 0), until `shutdown`
/// completes; then stops accepting and drains.
pub async fn serve<S: ListenerService>(
    listener: TcpListener,
    service: S,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    // The certificate watcher ends with this function, however it ends (the connections'
    // JoinSet does the same).
    let (shared, _reload, stop, stopping) = Shared::start(options);
    let (drained, ()) = tokio::join!(accept_loop(listener, service, shared, stopping), async {
        shutdown.await;
        let _ = stop.send(true);
    });
    drained
}

/// [`serve`] on the data plane's threads: one accept loop on each thread's runtime, each with
/// its listener (bound with `SO_REUSEPORT` on the same address: see
/// [`crate::data_threads::bind_reuseport`]). The connection cap, the metrics and the TLS
/// certificates are shared; shutdown stops every loop and drains every thread's connections.
pub async fn serve_threads<S: ListenerService>(
    threads: &DataPlaneThreads,
    listeners: Vec<std::net::TcpListener>,
    service: S,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    let (shared, _reload, stop, stopping) = Shared::start(options);
    let loops: Vec<_> = threads
        .runtimes()
        .iter()
        .zip(listeners)
        .map(|(runtime, listener)| {
            let (service, shared, stopping) = (service.clone(), shared.clone(), stopping.clone());
            runtime.spawn(async move {
                // Registered with this thread's runtime.
                match TcpListener::from_std(listener) {
                    Ok(listener) => accept_loop(listener, service, shared, stopping).await,
                    Err(error) => {
                        tracing::error!(%error, "a data-plane thread cannot listen");
                        Drained::Clean
                    }
                }
            })
        })
        .collect();
    shutdown.await;
    let _ = stop.send(true);
    let mut drained = Drained::Clean;
    for accept in loops {
        if !matches!(accept.await, Ok(Drained::Clean)) {
            drained = Drained::GraceExpired;
        }
    }
    drained
}

/// The data listener's sockets and the threads that serve them.
#[derive(Debug)]
pub struct DataListeners<'a> {
    /// The data plane's threads; `None` (or none) for the shared runtime.
    pub threads: Option<&'a DataPlaneThreads>,
    /// The first listener.
    pub listener: TcpListener,
    /// With threads, the other `SO_REUSEPORT` listeners of
    /// [`crate::data_threads::bind_reuseport`], one per thread after the first.
    pub others: Vec<std::net::TcpListener>,
}

/// The data listener: on the data plane's threads when there are any, else [`serve`] on
/// the first listener alone.
pub async fn serve_data_plane<S: ListenerService>(
    listeners: DataListeners<'_>,
    service: S,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    let DataListeners {
        threads,
        listener,
        others,
    } = listeners;
    match threads {
        Some(threads) if !threads.is_empty() => match listener.into_std() {
            Ok(first) => {
                let listeners = std::iter::once(first).chain(others).collect();
                serve_threads(threads, listeners, service, options, shutdown).await
            }
            Err(error) => {
                tracing::error!(%error, "cannot hand the data listener to its threads");
                Drained::Clean
            }
        },
        _ => serve(listener, service, options, shutdown).await,
    }
}

/// What every accept loop of a listener shares.
struct Shared {
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// The connection cap, over all the listener's loops.
    slots: Arc<Semaphore>,
    open: IntGauge,
    options: ServeOptions,
}

impl Shared {
    fn new(options: ServeOptions) -> Shared {
        Shared {
            builder: Arc::new(http_builder(&options)),
            slots: Arc::new(Semaphore::new(options.connections.max_connections)),
            open: options.metrics.open.with_label_values(&[options.listener]),
            options,
        }
    }

    /// What a listener's loops share, its certificate watcher (stopped when dropped) and the
    /// stop signal of its loops (`true`: stop accepting and drain).
    #[allow(clippy::type_complexity)]
    fn start(
        options: ServeOptions,
    ) -> (
        Arc<Shared>,
        Option<AbortOnDrop>,
        watch::Sender<bool>,
        watch::Receiver<bool>,
    ) {
        let shared = Arc::new(Shared::new(options));
        let reload = shared.watch_certificates();
        let (stop, stopping) = watch::channel(false);
        (shared, reload, stop, stopping)
    }

    /// The certificate watcher, when the listener has TLS; stops when dropped.
    fn watch_certificates(&self) -> Option<AbortOnDrop> {
        self.options
            .tls
            .as_ref()
            .map(|tls| AbortOnDrop(tls.tls.watch(tls.reload_interval)))
    }

    fn refused(&self, reason: &str) {
        self.options
            .metrics
            .refused
            .with_label_values(&[self.options.listener, reason])
            .inc();
    }
}

/// Completes once `stopping` turns true (or its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Accepts connections until `stopping` turns true, then drains them within the grace period.
async fn accept_loop<S: ListenerService>(
    listener: TcpListener,
    service: S,
    shared: Arc<Shared>,
    mut stopping: watch::Receiver<bool>,
) -> Drained {
    let options = &shared.options;
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = options.listener, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reap finished connections as they end, so the set holds only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = stopped(&mut stopping) => break,
        };
        let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
            shared.refused("at_capacity");
            tracing::debug!(listener = options.listener, %peer, "connection cap reached; closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = Slot::take(permit, shared.open.clone());
        let connection = Connection {
            builder: shared.builder.clone(),
            idle_timeout: options.connections.idle_timeout,
            stopping: stopping.clone(),
            peer,
            listener: options.listener,
        };
        let service = service.clone();
        match &options.tls {
            None => {
                connections.spawn(async move {
                    let _slot = slot;
                    connection.run(stream, service, false).await;
                });
            }
            Some(tls) => {
                let acceptor = tls.tls.acceptor();
                let handshake_timeout = options.header_read_timeout;
                let metrics = options.metrics.clone();
                connections.spawn(async move {
                    let _slot = slot;
                    // A client that opens TCP and sends nothing holds a slot this long at most.
                    let reason =
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => {
                                // Any certificate presented has passed the verifier by now.
                                let verified = stream.get_ref().1.peer_certificates().is_some();
                                return connection.run(stream, service, verified).await;
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(listener = connection.listener, %peer, %error, "TLS handshake failed");
                                "tls_handshake"
                            }
                            Err(_) => "handshake_timeout",
                        };
                    metrics
                        .refused
                        .with_label_values(&[connection.listener, reason])
                        .inc();
                });
            }
        }
    }

    drop(listener);
    tracing::info!(listener = options.listener, grace = ?options.shutdown_grace, "stopped accepting; draining in-flight requests");
    let drained = tokio::time::timeout(options.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    match drained {
        Ok(()) => Drained::Clean,
        Err(_) => {
            connections.shutdown().await;
            Drained::GraceExpired
        }
    }
}

fn http_builder(options: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let limits = &options.connections;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .writev(false)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    if !options.http2 {
        builder = builder.http1_only();
    }
    builder
}

/// The certificate watcher, stopped when the listener stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection's place under the cap, counted in the open-connections gauge while held.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
}

impl Slot {
    fn take(permit: OwnedSemaphorePermit, open: IntGauge) -> Slot {
        open.inc();
        Slot {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// One accepted connection (after its TLS handshake, if any).
struct Connection {
    builder: Arc<auto::Builder<TokioExecutor>>,
    idle_timeout: Duration,
    stopping: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
    listener: &'static str,
}

impl Connection {
    /// Serves requests until the client leaves, the connection idles past its timeout, or
    /// shutdown asks it to finish (the last two gracefully: requests in flight complete).
    /// `client_cert`: the client presented a verified certificate.
    async fn run<I, S>(mut self, io: I, service: S, client_cert: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: ListenerService,
    {
        let activity = Arc::new(Activity::new());
        let service = Tracked {
            inner: service,
            activity: activity.clone(),
            client_cert,
            peer: self.peer,
        };
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
            .into_owned();
        tokio::pin!(connection);
        let mut closing = *self.stopping.borrow();
        if closing {
            connection.as_mut().graceful_shutdown();
        }
        // The stop and idle watches are polled only when they woke the task (their own
        // waker), not at each of the connection's wake-ups (several per request).
        let listener = self.listener;
        let peer = self.peer;
        let mut stop = std::pin::pin!(self.stopping.changed());
        let mut idle = std::pin::pin!(activity.idle_for(self.idle_timeout));
        let watches = Arc::new(WatchWake::default());
        let watches_waker = Waker::from(watches.clone());
        poll_fn(|cx| loop {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                if let Err(error) = result {
                    tracing::debug!(listener, peer = %peer, %error, "connection ended with an error");
                }
                return Poll::Ready(());
            }
            if closing {
                return Poll::Pending;
            }
            watches.task.register(cx.waker());
            if !watches.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut watches_cx = Context::from_waker(&watches_waker);
            if stop.as_mut().poll(&mut watches_cx).is_ready() {
                closing = true;
            } else if idle.as_mut().poll(&mut watches_cx).is_ready() {
                tracing::debug!(listener, peer = %peer, "idle connection closed");
                closing = true;
            } else {
                return Poll::Pending;
            }
            // Polled again at once, so that the shutdown goes ahead.
            connection.as_mut().graceful_shutdown();
        })
        .await;
    }
}

/// The waker of a connection's stop and idle watches: marks them woken and wakes the
/// connection's task.
struct WatchWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Default for WatchWake {
    fn default() -> WatchWake {
        WatchWake {
            // Polled once first, to register their waker.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Wake for WatchWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// When a connection last started or finished a request, and how many it has in flight.
#[derive(Debug)]
struct Activity {
    /// The connection's start, the origin of `last`.
    since: Instant,
    /// Milliseconds from `since` to the last request start or finish.
    last: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            since: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(millis, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// Completes once no request has been in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let deadline = self.last() + limit;
            tokio::time::sleep_until(deadline).await;
            if self.in_flight.load(Ordering::Relaxed) == 0 && Instant::now() >= self.last() + limit
            {
                return;
            }
            if self.in_flight.load(Ordering::Relaxed) > 0 {
                // Busy: look again a whole period later rather than spin on a past deadline.
                tokio::time::sleep(limit).await;
            }
        }
    }
}

/// Counts a connection's requests in and out of its [`Activity`], and marks them with the
/// connection's client certificate.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Mark each request with [`VerifiedClientCert`].
    client_cert: bool,
    /// The client's address, put in each request's extensions (the admin API limits failed
    /// logins per address).
    peer: std::net::SocketAddr,
}

/// Marks a request finished when dropped (answered, or cancelled by a reset).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl<S, B> tower::Service<Request<Incoming>> for Tracked<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        if self.client_cert {
            request.extensions_mut().insert(VerifiedClientCert);
        }
        request.extensions_mut().insert(self.peer);
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        self.activity.touch();
        let guard = InFlight(self.activity.clone());
        TrackedFuture {
            answer: self.inner.call(request),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer, the request counted in flight until it is ready (or dropped). A
    /// named future rather than a boxed `async` block: no allocation per request.
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        answer: F,
        guard: Option<InFlight>,
    }
}

impl<F: Future> Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.answer.poll(cx));
        this.guard.take();
        Poll::Ready(answer)
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
