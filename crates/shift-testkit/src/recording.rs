//! A recording shim: a pass-through HTTP proxy in front of a store that logs every request's
//! arrival and completion time (Unix milliseconds, this machine's clock), method, path,
//! status and whether it came from a client (it carries a `User-Agent`: the proxy passes a
//! client's headers on with its writes to the primary, while its own calls, the journal's
//! replay among them, send none). A test reads the log to show what reached the store when.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request that went through the shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// When the request arrived and when its answer was complete, Unix milliseconds.
    pub arrived_ms: u64,
    pub completed_ms: u64,
    /// The store's status; 502 when it could not be reached.
    pub status: u16,
    /// Whether it carried a `User-Agent` (a client's request passed on by the proxy).
    pub from_client: bool,
}

impl Recorded {
    /// Whether it changes records or collections: a POST, PUT, PATCH or DELETE other than a
    /// read sent as a POST (get, query, count).
    pub fn is_write(&self) -> bool {
        let read = ["/get", "/query", "/count", "/search"]
            .iter()
            .any(|verb| self.path.ends_with(verb));
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE") && !read
    }
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A running shim; stops when dropped.
#[derive(Debug)]
pub struct RecordingShim {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl RecordingShim {
    /// Starts on a free loopback port in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<RecordingShim> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let origin: Arc<str> = upstream.trim_end_matches('/').into();
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let shared = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, origin, client) = (shared.clone(), origin.clone(), client.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        pass(log.clone(), origin.clone(), client.clone(), request)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(RecordingShim { addr, log, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in the order they completed.
    pub fn log(&self) -> Vec<Recorded> {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }
}

impl Drop for RecordingShim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Passes `request` to `origin`, reads the whole answer, records it and returns it.
async fn pass(
    log: Arc<Mutex<Vec<Recorded>>>,
    origin: Arc<str>,
    client: Client<HttpConnector, Incoming>,
    request: Request<Incoming>,
) -> Result<Response<Full<bytes::Bytes>>, std::convert::Infallible> {
    let arrived_ms = unix_ms();
    let (mut parts, body) = request.into_parts();
    let method = parts.method.to_string();
    let path = parts.uri.path().to_owned();
    let from_client = parts.headers.contains_key(http::header::USER_AGENT);
    let target = format!(
        "{origin}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let answer = match target.parse() {
        Ok(uri) => {
            parts.uri = uri;
            parts.headers.remove(http::header::HOST);
            match client.request(Request::from_parts(parts, body)).await {
                Ok(answer) => {
                    let (mut parts, body) = answer.into_parts();
                    // The body is passed on whole: its length is the new one.
                    parts.headers.remove(http::header::TRANSFER_ENCODING);
                    parts.headers.remove(http::header::CONTENT_LENGTH);
                    match body.collect().await {
                        Ok(bytes) => Response::from_parts(parts, Full::new(bytes.to_bytes())),
                        Err(_) => bad_gateway(),
                    }
                }
                Err(_) => bad_gateway(),
            }
        }
        Err(_) => bad_gateway(),
    };
    let record = Recorded {
        method,
        path,
        arrived_ms,
        completed_ms: unix_ms(),
        status: answer.status().as_u16(),
        from_client,
    };
    if let Ok(mut log) = log.lock() {
        log.push(record);
    }
    Ok(answer)
}

fn bad_gateway() -> Response<Full<bytes::Bytes>> {
    let mut answer = Response::new(Full::new(bytes::Bytes::from_static(
        br#"{"error":"InternalError","message":"recording shim: the store is unreachable"}"#,
    )));
    *answer.status_mut() = StatusCode::BAD_GATEWAY;
    answer
}
