//! A backend's keep-alive connections driven by the requests that use them (the read path).
//!
//! hyper's pooled client gives every connection a task of its own and hands each request to
//! it through a channel, the answer coming back through a oneshot: every request wakes that
//! task as well as its own, often on the other worker thread. Here a request checks out an
//! idle connection (a hyper `http1` sender and its connection future), polls the connection
//! future itself while it waits for the answer's head, and its response body
//! ([`DrivenBody`]) keeps polling it while the body streams; once the body ended, the
//! connection goes back to the pool. One task, woken by the socket, does all the work of a
//! request, as an event loop would.
//!
//! A pooled connection is idle and unpolled: one the server closed meanwhile is found at
//! checkout (its connection future completes, or its sender says closed), and a request that
//! a closed connection gave back unsent is sent again on a new one. Connections idle past
//! `pool_idle_timeout` are closed at checkout; at most `pool_max_idle` wait in the pool of
//! each data-plane thread ([`crate::data_threads`]).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::data_threads;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
type Driver = Pin<Box<http1::Connection<Io, Full<Bytes>>>>;

/// Why a driven request failed.
#[derive(Debug)]
pub(crate) enum DrivenError {
    /// No connection could be opened.
    Connect(String),
    /// The connection failed before or while the answer's head came.
    Transport(hyper::Error),
}

/// One keep-alive connection: its sender and the future that does its I/O.
struct Conn {
    send: http1::SendRequest<Full<Bytes>>,
    /// `None` once the connection ended.
    driver: Option<Driver>,
}

impl Conn {
    /// Polls the connection's I/O; drops it when it ended (a request waiting on it then
    /// fails rather than hang).
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = self.driver.as_mut() {
            if let Poll::Ready(result) = driver.as_mut().poll(cx) {
                if let Err(error) = result {
                    tracing::debug!(%error, "backend connection ended with an error");
                }
                self.driver = None;
            }
        }
    }

    /// Waits until the connection takes a request; `false` when it is closed.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            self.drive(cx);
            if self.driver.is_none() {
                return Poll::Ready(false);
            }
            self.send.poll_ready(cx).map(|ready| ready.is_ok())
        })
        .await
    }

    fn reusable(&self) -> bool {
        self.driver.is_some() && !self.send.is_closed()
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The connections of one backend for requests that drive their own.
pub(crate) struct DrivenPool {
    connector: HttpsConnector<HttpConnector>,
    /// The backend's scheme and authority, for the connector.
    origin: Uri,
    http1: http1::Builder,
    /// The idle connections of each data-plane thread (and, first, of the other threads):
    /// a request takes one of its own thread's, whose I/O that thread's runtime polls. Last
    /// in, first out: the most recently used connection is the likeliest still open.
    idle: Box<[Mutex<Vec<Idle>>]>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl std::fmt::Debug for DrivenPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrivenPool")
            .field("origin", &self.origin)
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

impl DrivenPool {
    pub(crate) fn new(
        connector: HttpsConnector<HttpConnector>,
        origin: Uri,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> DrivenPool {
        DrivenPool {
            connector,
            origin,
            http1: {
                let mut http1 = http1::Builder::new();
                http1.writev(false);
                http1
            },
            idle: (0..=data_threads::SLOTS)
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            max_idle,
            idle_timeout,
        }
    }

    /// The idle connections of the current thread.
    fn idle(&self) -> &Mutex<Vec<Idle>> {
        &self.idle[data_threads::slot()]
    }

    /// The most recent idle connection not past its idle timeout.
    fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let found = {
            let mut idle = self.idle().lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match idle.pop() {
                    None => break None,
                    Some(entry) if now.duration_since(entry.since) >= self.idle_timeout => {
                        expired.push(entry);
                    }
                    Some(entry) if !entry.conn.reusable() => expired.push(entry),
                    Some(entry) => break Some(entry.conn),
                }
            }
        };
        // Closed outside the lock.
        drop(expired);
        found
    }

    fn put_back(&self, conn: Conn) {
        if !conn.reusable() {
            return;
        }
        let mut idle = self.idle().lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<Conn, DrivenError> {
        let io = self
            .connector
            .clone()
            .oneshot(self.origin.clone())
            .await
            .map_err(|e| DrivenError::Connect(crate::backend::describe(&*e)))?;
        let (send, driver) = self
            .http1
            .handshake(io)
            .await
            .map_err(DrivenError::Transport)?;
        Ok(Conn {
            send,
            driver: Some(Box::pin(driver)),
        })
    }

    /// Sends `request` (origin-form URI, `Host` set) on a pooled or new connection and waits
    /// for the answer's head, driving the connection meanwhile. A request a reused
    /// connection gave back unsent (it had closed) goes again on a new connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<DrivenBody>, DrivenError> {
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            if !conn.ready().await {
                if reused {
                    continue;
                }
                return Err(DrivenError::Connect(
                    "the new connection closed at once".into(),
                ));
            }
            let answer = conn.send.try_send_request(request);
            let mut answer = std::pin::pin!(answer);
            let result = poll_fn(|cx| {
                conn.drive(cx);
                answer.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = DrivenBody {
                        body,
                        conn: Some(conn),
                        pool: Arc::clone(self),
                        ended: false,
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(DrivenError::Transport(error.into_error())),
                },
            }
        }
    }
}

/// A backend's response body that drives its connection while it streams, and gives the
/// connection back to the pool once it ended.
pub struct DrivenBody {
    body: Incoming,
    /// `None` once given back (or lost).
    conn: Option<Conn>,
    pool: Arc<DrivenPool>,
    ended: bool,
}

impl std::fmt::Debug for DrivenBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrivenBody").finish_non_exhaustive()
    }
}

impl Body for DrivenBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(conn) = this.conn.as_mut() {
            conn.drive(cx);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.ended = true;
            if let Some(conn) = this.conn.take() {
                this.pool.put_back(conn);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for DrivenBody {
    fn drop(&mut self) {
        // A body read to its end (hyper's server stops polling once the length is reached)
        // leaves its connection reusable; one dropped midway does not: it is closed.
        if let Some(conn) = self.conn.take() {
            if self.ended || self.body.is_end_stream() {
                self.pool.put_back(conn);
            }
        }
    }
}

#[cfg(test)]
#[path = "driven_tests.rs"]
mod tests;
