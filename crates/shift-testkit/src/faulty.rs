//! A fake Chroma for fault injection: it answers each request with the next scripted
//! [`Fault`], or with the default once the script is used up. Never the only proof that a
//! feature works; real Chroma servers are.
//!
//! [`FaultyBackend::proxying`] puts it in front of a real Chroma instead: every request is
//! forwarded to that server ([`Fault::Forward`]) unless the script injects a fault for it, so a
//! test gets real storage with scripted failures. [`FaultyBackend::push_write_faults`] scripts
//! record writes (`add`, `upsert`, `update`, `delete`) only, leaving lookups and heartbeats
//! alone.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shift_config::BackendName;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the fake answers one request with.
#[derive(Debug, Clone)]
pub enum Fault {
    /// A status with a JSON body.
    Status(StatusCode, String),
    /// 429 with a `Retry-After` header of so many seconds.
    TooManyRequests { retry_after_secs: u64 },
    /// Waits, then answers with the inner fault.
    Delay(Duration, Box<Fault>),
    /// Closes the connection without answering.
    Reset,
    /// Forwards the request to the upstream server and answers what it answered (502 when the
    /// backend has no upstream).
    Forward,
    /// Forwards the request at once, then waits before answering what the upstream answered:
    /// the write is applied, the answer is slow (and may come after the caller gave up).
    SlowAnswer(Duration),
    /// Forwards the request, drops the upstream's answer, and answers with the inner fault:
    /// the write is applied, the caller is told otherwise.
    ForwardThen(Box<Fault>),
    /// Waits until the test releases the [`Hold`], then answers with the inner fault: a
    /// backend exactly as slow as a test needs, with no clock involved.
    Held(Hold, Box<Fault>),
    /// Forwards the request, answers the upstream's head and the first half of its body at
    /// once, and the rest only once the [`Hold`] is released: the write is applied, its
    /// answer stalls mid-body (past any limit on the response head).
    StalledBody(Hold),
    /// Answers what the [`Responder`] computes from the request: a fake as smart as a test
    /// needs (one that answers every create with a new collection, say).
    Computed(Responder),
}

/// Computes a [`Fault::Computed`] answer, a status and a JSON body, from the request's
/// method, path and body.
#[derive(Clone)]
pub struct Responder(pub Arc<Respond>);

/// What a [`Responder`] runs: method, path and body in; status and JSON body out.
pub type Respond = dyn Fn(&http::Method, &str, &Bytes) -> (StatusCode, String) + Send + Sync;

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

/// A latch a test holds requests on ([`Fault::Held`]) and releases when it has seen what it
/// wanted (e.g. the client's answer arrived while the backend was still held).
#[derive(Debug, Clone)]
pub struct Hold {
    released: Arc<tokio::sync::watch::Sender<bool>>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    arrived: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for Hold {
    fn default() -> Self {
        Hold::new()
    }
}

impl Hold {
    pub fn new() -> Hold {
        Hold {
            released: Arc::new(tokio::sync::watch::channel(false).0),
            waiting: Arc::default(),
            arrived: Arc::default(),
        }
    }

    /// Lets every held request (and every later one) go on.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    /// Requests held right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests that reached the hold so far (held or passed).
    pub fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits (up to `limit`, then fails) until at least `n` requests reached the hold.
    pub async fn wait_arrived(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        while self.arrived() < n {
            anyhow::ensure!(
                started.elapsed() < limit,
                "only {} of {n} requests reached the hold within {limit:?}",
                self.arrived()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    async fn pass(&self) {
        use std::sync::atomic::Ordering;
        self.arrived.fetch_add(1, Ordering::SeqCst);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut released = self.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Fault {
    /// A short name: `Status(500)`, `TooManyRequests(1s)`, `Forward`, `Held(Forward)`, ...
    pub fn kind(&self) -> String {
        match self {
            Fault::Status(status, _) => format!("Status({})", status.as_u16()),
            Fault::TooManyRequests { retry_after_secs } => {
                format!("TooManyRequests({retry_after_secs}s)")
            }
            Fault::Delay(_, inner) => format!("Delay({})", inner.kind()),
            Fault::Reset => "Reset".to_owned(),
            Fault::Forward => "Forward".to_owned(),
            Fault::SlowAnswer(_) => "SlowAnswer".to_owned(),
            Fault::ForwardThen(inner) => format!("ForwardThen({})", inner.kind()),
            Fault::Held(_, inner) => format!("Held({})", inner.kind()),
            Fault::StalledBody(_) => "StalledBody".to_owned(),
            Fault::Computed(_) => "Computed".to_owned(),
        }
    }

    /// 200 with a heartbeat-like JSON body.
    pub fn ok() -> Fault {
        Fault::Status(StatusCode::OK, r#"{"nanosecond heartbeat":1}"#.to_owned())
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: http::Method,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// When it arrived.
    pub at: std::time::Instant,
    /// What it was answered with ([`Fault::kind`]).
    pub fault: String,
}

#[derive(Debug)]
struct Script {
    queue: VecDeque<Fault>,
    /// Faults for record writes only, taken before `queue`.
    write_queue: VecDeque<Fault>,
    default: Fault,
    received: Vec<Received>,
}

/// Where [`Fault::Forward`] sends requests.
#[derive(Debug, Clone)]
struct Upstream {
    /// `http://host:port` of the real server.
    origin: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

/// A running fake backend.
#[derive(Debug)]
pub struct FaultyBackend {
    addr: SocketAddr,
    /// `https` when serving TLS with a self-signed certificate.
    scheme: &'static str,
    /// The PEM of that certificate, for the proxy's `ca_file`.
    ca_pem: Option<String>,
    script: Arc<Mutex<Script>>,
    task: JoinHandle<()>,
}

impl FaultyBackend {
    /// Starts on a free port, answering `default` to every request.
    pub async fn spawn(default: Fault) -> anyhow::Result<FaultyBackend> {
        FaultyBackend::start(default, None, None).await
    }

    /// Starts on a free port in front of the real server at `upstream` (`http://host:port`):
    /// every request is forwarded there unless the script says otherwise.
    pub async fn proxying(upstream: &str) -> anyhow::Result<FaultyBackend> {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let upstream = Upstream {
            origin: upstream.trim_end_matches('/').to_owned(),
            client,
        };
        FaultyBackend::start(Fault::Forward, None, Some(upstream)).await
    }

    /// Starts serving TLS for `localhost` with a fresh self-signed certificate
    /// ([`FaultyBackend::ca_pem`]).
    pub async fn spawn_tls(default: Fault) -> anyhow::Result<FaultyBackend> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let cert_der = certified.cert.der().clone();
        let key_der =
            rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
                .map_err(|e| anyhow::anyhow!("test key: {e}"))?;
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let mut backend = FaultyBackend::start(default, Some(acceptor), None).await?;
        backend.ca_pem = Some(certified.cert.pem());
        Ok(backend)
    }

    async fn start(
        default: Fault,
        tls: Option<tokio_rustls::TlsAcceptor>,
        upstream: Option<Upstream>,
    ) -> anyhow::Result<FaultyBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let script = Arc::new(Mutex::new(Script {
            queue: VecDeque::new(),
            write_queue: VecDeque::new(),
            default,
            received: Vec::new(),
        }));
        let upstream = Arc::new(upstream);
        let shared = script.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let script = shared.clone();
                let tls = tls.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        answer(script.clone(), upstream.clone(), request)
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Ok(FaultyBackend {
            addr,
            scheme,
            ca_pem: None,
            script,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` when serving TLS (the name the
    /// certificate is for).
    pub fn url(&self) -> String {
        match self.scheme {
            "https" => format!("https://localhost:{}", self.addr.port()),
            _ => format!("http://{}", self.addr),
        }
    }

    /// The self-signed certificate of a TLS backend, in PEM.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Queues faults for the next requests, in order.
    pub fn push(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().queue.extend(faults);
    }

    /// Queues faults for the next record writes (`POST .../add`, `/upsert`, `/update`,
    /// `/delete`), in order; other requests do not consume them.
    pub fn push_write_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().write_queue.extend(faults);
    }

    /// Record-write faults not used yet.
    pub fn pending_write_faults(&self) -> usize {
        self.lock().write_queue.len()
    }

    /// Changes the answer once the queue is used up.
    pub fn set_default(&self, fault: Fault) {
        self.lock().default = fault;
    }

    /// Every request received so far (heartbeats included).
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FaultyBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An error that makes hyper drop the connection without a response.
#[derive(Debug)]
struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted connection reset")
    }
}

impl std::error::Error for ResetConnection {}

/// Whether a request is a record write.
fn is_record_write(method: &http::Method, path: &str) -> bool {
    method == http::Method::POST
        && ["/add", "/upsert", "/update", "/delete"]
            .iter()
            .any(|verb| path.ends_with(verb))
}

/// A whole body; empty when the peer broke off.
async fn collected(body: Incoming) -> Bytes {
    body.collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

async fn answer(
    script: Arc<Mutex<Script>>,
    upstream: Arc<Option<Upstream>>,
    request: Request<Incoming>,
) -> Result<Response<FakeBody>, ResetConnection> {
    let (parts, body) = request.into_parts();
    let body = collected(body).await;
    let mut fault = {
        let at = std::time::Instant::now();
        let mut script = script.lock().unwrap_or_else(|e| e.into_inner());
        let write_fault = if is_record_write(&parts.method, parts.uri.path()) {
            script.write_queue.pop_front()
        } else {
            None
        };
        let fault = if let Some(fault) = write_fault {
            fault
        } else if parts.uri.path() == "/api/v2/heartbeat" {
            // Heartbeats from the health monitor take no scripted fault.
            if upstream.is_some() {
                Fault::Forward
            } else {
                Fault::ok()
            }
        } else {
            let default = script.default.clone();
            script.queue.pop_front().unwrap_or(default)
        };
        script.received.push(Received {
            method: parts.method.clone(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: parts.headers.clone(),
            body: body.clone(),
            at,
            fault: fault.kind(),
        });
        fault
    };
    loop {
        match fault {
            Fault::Delay(wait, inner) => {
                tokio::time::sleep(wait).await;
                fault = *inner;
            }
            Fault::Forward => return Ok(forward(upstream.as_ref().as_ref(), &parts, body).await),
            Fault::SlowAnswer(wait) => {
                let response = forward(upstream.as_ref().as_ref(), &parts, body).await;
                tokio::time::sleep(wait).await;
                return Ok(response);
            }
            Fault::ForwardThen(inner) => {
                let _ = forward(upstream.as_ref().as_ref(), &parts, body.clone()).await;
                fault = *inner;
            }
            Fault::Held(hold, inner) => {
                hold.pass().await;
                fault = *inner;
            }
            Fault::StalledBody(hold) => {
                let (head, whole) = forward(upstream.as_ref().as_ref(), &parts, body)
                    .await
                    .into_parts();
                let FakeBody { now, .. } = whole;
                let bytes = now.unwrap_or_default();
                let rest = bytes.slice(bytes.len() / 2..);
                let stalled = FakeBody {
                    now: Some(bytes.slice(..bytes.len() / 2)),
                    later: Some((Box::pin(async move { hold.pass().await }), rest)),
                };
                return Ok(Response::from_parts(head, stalled));
            }
            Fault::Reset => return Err(ResetConnection),
            Fault::TooManyRequests { retry_after_secs } => {
                let mut response = json(
                    StatusCode::TOO_MANY_REQUESTS,
                    r#"{"error":"RateLimitError","message":"slow down"}"#.to_owned(),
                );
                response
                    .headers_mut()
                    .insert("retry-after", retry_after_secs.into());
                return Ok(response);
            }
            Fault::Status(status, body) => return Ok(json(status, body)),
            Fault::Computed(responder) => {
                let (status, answer) = (responder.0)(&parts.method, parts.uri.path(), &body);
                return Ok(json(status, answer));
            }
        }
    }
}

/// Sends the request on to the upstream server and returns its whole answer; a 502 when there
/// is no upstream or it cannot be reached.
async fn forward(
    upstream: Option<&Upstream>,
    parts: &http::request::Parts,
    body: Bytes,
) -> Response<FakeBody> {
    let Some(upstream) = upstream else {
        return json(
            StatusCode::BAD_GATEWAY,
            r#"{"error":"InternalError","message":"this fake has no upstream"}"#.to_owned(),
        );
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut request = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{}{path}", upstream.origin));
    for (name, value) in &parts.headers {
        if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
            request = request.header(name, value);
        }
    }
    let result = match request.body(Full::new(body)) {
        Ok(request) => upstream
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let response = match result {
        Ok(response) => response,
        Err(error) => return json(
            StatusCode::BAD_GATEWAY,
            serde_json::json!({"error": "InternalError", "message": format!("upstream: {error}")})
                .to_string(),
        ),
    };
    let (parts, body) = response.into_parts();
    let bytes = collected(body).await;
    let mut answer = Response::new(FakeBody::whole(bytes));
    *answer.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_LENGTH && name != http::header::TRANSFER_ENCODING {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer
}

/// A body the fake answers with: whole, or its first part at once and the rest after a wait
/// ([`Fault::StalledBody`]).
pub struct FakeBody {
    now: Option<Bytes>,
    /// What to wait for, and the bytes that follow it.
    later: Option<(Wait, Bytes)>,
}

/// What a stalled body waits for before its last bytes.
type Wait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl FakeBody {
    fn whole(bytes: Bytes) -> FakeBody {
        FakeBody {
            now: Some(bytes),
            later: None,
        }
    }
}

impl hyper::body::Body for FakeBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if let Some(bytes) = this.now.take() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes))));
        }
        let Some((wait, _)) = this.later.as_mut() else {
            return Poll::Ready(None);
        };
        if wait.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let rest = this.later.take().map(|(_, rest)| rest).unwrap_or_default();
        Poll::Ready(Some(Ok(hyper::body::Frame::data(rest))))
    }
}

fn json(status: StatusCode, body: String) -> Response<FakeBody> {
    let mut response = Response::new(FakeBody::whole(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Two fresh stores, the one named `behind` reached through a [`FaultyBackend`] that forwards
/// to it, and a builder for the proxy in front of the two: the old store, the new store, the
/// fault injector and the builder.
pub async fn two_stores_one_faulty(
    behind: BackendName,
) -> anyhow::Result<(
    crate::Chroma,
    crate::Chroma,
    FaultyBackend,
    crate::ProxyBuilder,
)> {
    let (old, new) = crate::stores::two_stores().await?;
    let behind_url = match behind {
        BackendName::Old => old.url(),
        BackendName::New => new.url(),
    };
    let faulty = FaultyBackend::proxying(&behind_url).await?;
    let builder = match behind {
        BackendName::Old => crate::Proxy::builder()
            .old(faulty.url())
            .new_store(new.url()),
        BackendName::New => crate::Proxy::builder()
            .old(old.url())
            .new_store(faulty.url()),
    };
    Ok((old, new, faulty, builder))
}
