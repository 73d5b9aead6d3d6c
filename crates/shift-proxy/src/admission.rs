//! Admission: what keeps the data plane bounded when more arrives than it can hold.
//!
//! - A limit on requests in flight. Past it a request is shed at once (503 with
//!   `Retry-After`), never queued: a queue in front of a saturated proxy only adds latency.
//!   Liveness routes (heartbeat, healthcheck, version) never count and are never shed.
//! - A memory budget for buffered request bodies, shared by all requests. A body with a
//!   declared length reserves it before the first byte is read; a streamed body reserves as
//!   its chunks arrive. A body the budget cannot hold is refused (503 with `Retry-After`), and
//!   its bytes are released as soon as it is refused. A reservation lives as long as the
//!   request's [`BodyPermit`], so the budget counts what is really held. The last eighth of
//!   the budget (at most what the budget has beyond `max_body`) is kept for bodies of at most
//!   [`SMALL_BODY`]: a flood of large bodies cannot shut out queries and small writes.
//! - A body read timeout: a client that stops sending mid-body is answered 408 and cut off,
//!   instead of holding its share of the budget forever.
//! - Routes that take no body (heartbeat, gets by path, deletes) accept at most
//!   [`NO_BODY_ALLOWANCE`] bytes: Chroma 1.5.9 ignores a body there, and a client may send a
//!   stray `{}`, but nothing larger is read.
//!
//! [`crate::shed`] applies the in-flight limit as a tower layer; the service reads bodies with
//! [`Admission::read_body`] after client auth, so an unauthenticated client buffers nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Too many requests in flight.
    #[error("the proxy has {limit} requests in flight, its limit (server.limits.max_in_flight): retry later")]
    InFlight { limit: usize },
    /// The body does not fit in what is left of the body budget.
    #[error(
        "request bodies in flight fill the proxy's body budget of {budget} bytes (server.limits.body_budget): retry later"
    )]
    BodyBudget { budget: u64 },
    /// The declared or streamed body is larger than one request may be.
    #[error("Request body is larger than the proxy's limit of {limit} bytes (server.max_body, or server.limits.body_budget when smaller)")]
    BodyTooLarge { limit: u64 },
    /// The client stopped sending the body.
    #[error("the request body was not received within {}s (server.limits.body_read_timeout)", .timeout.as_secs_f64())]
    BodyTimeout { timeout: Duration },
    /// A route that takes no body got more than a stray one.
    #[error("this route takes no request body (at most {limit} bytes are accepted and ignored)")]
    UnexpectedBody { limit: u64 },
    /// The client's connection failed mid-body.
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
}

impl Refusal {
    /// The HTTP status of the answer.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Refusal::InFlight { .. } | Refusal::BodyBudget { .. } => {
                http::StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::BodyTooLarge { .. } | Refusal::UnexpectedBody { .. } => {
                http::StatusCode::PAYLOAD_TOO_LARGE
            }
            Refusal::BodyTimeout { .. } => http::StatusCode::REQUEST_TIMEOUT,
            Refusal::BodyRead(_) => http::StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the client should retry after a pause (the answer carries `Retry-After`).
    pub fn is_overload(&self) -> bool {
        matches!(self, Refusal::InFlight { .. } | Refusal::BodyBudget { .. })
    }

    /// Whether the connection must be closed after the answer: a body left half sent cannot
    /// be told apart from the next request.
    pub fn closes_connection(&self) -> bool {
        matches!(self, Refusal::BodyTimeout { .. } | Refusal::BodyRead(_))
    }

    /// The label of the shed-requests metric (the rejected-requests metric shares it).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::InFlight { .. } => "in_flight",
            Refusal::BodyBudget { .. } => "body_budget",
            Refusal::BodyTooLarge { .. } => "body_too_large",
            Refusal::UnexpectedBody { .. } => "unexpected_body",
            Refusal::BodyTimeout { .. } => "body_timeout",
            Refusal::BodyRead(_) => "body_unreadable",
        }
    }
}

/// Bytes a route that takes no body may still carry (and the proxy ignores): enough for a
/// stray `{}` or `null` from a generic client, far too little to hold memory.
pub const NO_BODY_ALLOWANCE: u64 = 1024;

/// The largest body the reserve at the end of the budget is kept for.
pub const SMALL_BODY: u64 = 1 << 20;

/// The part of the budget only bodies of at most [`SMALL_BODY`] may fill: an eighth, but never
/// so much that a body of `max_body` could not fit.
fn small_reserve(limits: Limits) -> u64 {
    (limits.body_budget / 8).min(limits.body_budget.saturating_sub(limits.max_body))
}

/// Whether the route of a request takes a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A JSON body, up to the size limit (also unknown routes, passed through as they are).
    Body,
    /// No body: at most [`NO_BODY_ALLOWANCE`] bytes are read.
    NoBody,
}

/// The limits, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight at once (liveness routes aside).
    pub max_in_flight: usize,
    /// Bytes of request bodies buffered at once, all requests together.
    pub body_budget: u64,
    /// Largest body of one request.
    pub max_body: u64,
    /// How long a body may take to arrive once its headers did.
    pub body_timeout: Duration,
}

impl Limits {
    /// The limits of `[server]` and `[server.limits]`.
    pub fn from_config(server: &shift_config::ServerConfig) -> Limits {
        Limits {
            max_in_flight: server.limits.max_in_flight,
            body_budget: server.limits.body_budget.as_u64(),
            max_body: server.max_body.as_u64(),
            body_timeout: server.limits.body_read_timeout,
        }
    }
}

/// The shared admission state of one data plane.
#[derive(Debug, Clone)]
pub struct Admission {
    limits: Limits,
    in_flight: Arc<Semaphore>,
    budget: Arc<Budget>,
}

#[derive(Debug)]
struct Budget {
    total: u64,
    /// What a body larger than [`SMALL_BODY`] may fill up to: `total` less the reserve for
    /// small ones.
    for_large: u64,
    used: AtomicU64,
    /// `chroma_shift_body_bytes_buffered`, moved with `used`.
    gauge: IntGauge,
}

/// A request's place among those in flight; released when dropped.
#[derive(Debug)]
pub struct InFlightPermit {
    _permit: OwnedSemaphorePermit,
}

/// Bytes of the body budget held by one request; given back when dropped.
#[derive(Debug)]
pub struct BodyPermit {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.gauge.sub(gauge_value(self.bytes));
    }
}

impl BodyPermit {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds `more` bytes too, if the budget has them.
    fn grow(&mut self, more: u64) -> bool {
        let large = self.bytes + more > SMALL_BODY;
        if self.budget.try_take(more, large) {
            self.bytes += more;
            true
        } else {
            false
        }
    }
}

impl Budget {
    /// The largest body that fits in an empty budget.
    fn largest(&self) -> u64 {
        self.total.min(SMALL_BODY).max(self.for_large)
    }

    fn try_take(&self, bytes: u64, large: bool) -> bool {
        let limit = if large { self.for_large } else { self.total };
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&after| after <= limit)
            })
            .is_ok();
        if taken {
            self.gauge.add(gauge_value(bytes));
        }
        taken
    }
}

fn gauge_value(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl Admission {
    /// The admission state for `limits`; `body_bytes` is the gauge of buffered body bytes.
    pub fn new(limits: Limits, body_bytes: IntGauge) -> Admission {
        Admission {
            limits,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            budget: Arc::new(Budget {
                total: limits.body_budget,
                for_large: limits.body_budget - small_reserve(limits),
                used: AtomicU64::new(0),
                gauge: body_bytes,
            }),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.limits.max_in_flight.max(1) - self.in_flight.available_permits()
    }

    /// Bytes of bodies buffered now.
    pub fn body_bytes(&self) -> u64 {
        self.budget.used.load(Ordering::Acquire)
    }

    /// Admits one more request, or refuses at once.
    pub fn enter(&self) -> Result<InFlightPermit, Refusal> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map(|permit| InFlightPermit { _permit: permit })
            .map_err(|_| Refusal::InFlight {
                limit: self.limits.max_in_flight,
            })
    }

    /// Reads a request body within the size limit, the shared budget and the read timeout.
    /// The bytes stay counted against the budget until the returned permit is dropped.
    pub async fn read_body<B>(
        &self,
        headers: &http::HeaderMap,
        body: B,
        expect: Expect,
    ) -> Result<(Bytes, BodyPermit), Refusal>
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        // A body the whole budget cannot hold would be refused as overload on every retry:
        // it is too large, whatever else is in flight.
        let limit = match expect {
            Expect::Body => self.limits.max_body.min(self.budget.largest()),
            Expect::NoBody => NO_BODY_ALLOWANCE,
        };
        let too_large = || match expect {
            Expect::Body => Refusal::BodyTooLarge { limit },
            Expect::NoBody => Refusal::UnexpectedBody { limit },
        };
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let mut permit = BodyPermit {
            budget: self.budget.clone(),
            bytes: 0,
        };
        let upfront = declared.unwrap_or(0);
        if !permit.grow(upfront) {
            return Err(Refusal::BodyBudget {
                budget: self.limits.body_budget,
            });
        }
        let timeout = self.limits.body_timeout;
        let read = async {
            let mut body = std::pin::pin!(body);
            let mut buf = BytesMut::with_capacity(usize::try_from(upfront).unwrap_or(0));
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Refusal::BodyRead(e.to_string()))?;
                let Ok(chunk) = frame.into_data() else {
                    continue; // trailers
                };
                let after = (buf.len() + chunk.len()) as u64;
                if after > limit {
                    return Err(too_large());
                }
                if after > permit.bytes() && !permit.grow(after - permit.bytes()) {
                    return Err(Refusal::BodyBudget {
                        budget: self.limits.body_budget,
                    });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(buf.freeze())
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(bytes)) => Ok((bytes, permit)),
            Ok(Err(refusal)) => Err(refusal),
            Err(_) => Err(Refusal::BodyTimeout { timeout }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    fn limits() -> Limits {
        Limits {
            max_in_flight: 2,
            body_budget: 100,
            max_body: 60,
            body_timeout: Duration::from_secs(10),
        }
    }

    fn admission(limits: Limits) -> Admission {
        Admission::new(limits, IntGauge::new("buffered", "body bytes").unwrap())
    }

    fn length(n: usize) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, n.into());
        headers
    }

    #[test]
    fn requests_past_the_in_flight_limit_are_shed_and_readmitted_after() {
        let admission = admission(limits());
        let first = admission.enter().unwrap();
        let _second = admission.enter().unwrap();
        assert_eq!(admission.in_flight(), 2);
        let refusal = admission.enter().unwrap_err();
        assert_eq!(refusal.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(refusal.is_overload());
        drop(first);
        assert!(admission.enter().is_ok());
    }

    #[tokio::test]
    async fn bodies_share_one_budget_and_give_it_back() {
        let admission = admission(limits());
        let body = Full::new(Bytes::from(vec![1u8; 50]));
        let (bytes, held) = admission
            .read_body(&length(50), body, Expect::Body)
            .await
            .unwrap();
        assert_eq!((bytes.len(), admission.body_bytes()), (50, 50));

        // 50 more fit exactly; a further 10 do not, and are not left counted.
        let body = Full::new(Bytes::from(vec![2u8; 50]));
        let (_, held_too) = admission
            .read_body(&length(50), body, Expect::Body)
            .await
            .unwrap();
        let body = Full::new(Bytes::from(vec![3u8; 10]));
        let refusal = admission
            .read_body(&length(10), body, Expect::Body)
            .await
            .unwrap_err();
        assert_eq!(refusal, Refusal::BodyBudget { budget: 100 });
        assert_eq!(admission.body_bytes(), 100);

        drop((held, held_too));
        assert_eq!(admission.body_bytes(), 0);
        let body = Full::new(Bytes::from(vec![3u8; 10]));
        assert!(admission
            .read_body(&length(10), body, Expect::Body)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn streamed_bodies_count_as_they_arrive_and_stop_at_the_limit() {
        let admission = admission(limits());
        let chunks =
            (0..7).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![0u8; 10]))));
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let refusal = admission
            .read_body(&http::HeaderMap::new(), body, Expect::Body)
            .await
            .unwrap_err();
        assert_eq!(refusal, Refusal::BodyTooLarge { limit: 60 });
        assert_eq!(
            admission.body_bytes(),
            0,
            "a refused body gives its bytes back"
        );

        let declared_too_large = Full::new(Bytes::new());
        let refusal = admission
            .read_body(&length(61), declared_too_large, Expect::Body)
            .await
            .unwrap_err();
        assert_eq!(refusal.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn a_body_larger_than_the_whole_budget_is_too_large_not_overload() {
        let admission = admission(Limits {
            max_body: 500,
            ..limits()
        });
        let body = Full::new(Bytes::from(vec![0u8; 150]));
        let refusal = admission
            .read_body(&length(150), body, Expect::Body)
            .await
            .unwrap_err();
        assert_eq!(refusal, Refusal::BodyTooLarge { limit: 100 });
        assert!(!refusal.is_overload(), "a retry could never succeed");
        assert_eq!(admission.body_bytes(), 0);
    }

    #[tokio::test]
    async fn the_end_of_the_budget_is_kept_for_small_bodies() {
        const MIB: u64 = 1 << 20;
        let admission = admission(Limits {
            max_in_flight: 8,
            body_budget: 16 * MIB,
            max_body: 8 * MIB,
            body_timeout: Duration::from_secs(10),
        });
        let read = |size: u64| {
            let admission = admission.clone();
            async move {
                let body = Full::new(Bytes::from(vec![0u8; size as usize]));
                let headers = length(size as usize);
                admission.read_body(&headers, body, Expect::Body).await
            }
        };
        // Large bodies fill 14 MiB (16 less a reserve of 2) and no more.
        let large = read(8 * MIB).await.unwrap();
        let large_too = read(6 * MIB).await.unwrap();
        assert_eq!(
            read(MIB + 1).await.unwrap_err(),
            Refusal::BodyBudget { budget: 16 * MIB }
        );
        // Small ones still pass, up to the whole budget.
        let small = read(MIB).await.unwrap();
        let small_too = read(MIB).await.unwrap();
        assert_eq!(admission.body_bytes(), 16 * MIB);
        assert!(read(1).await.is_err());
        drop((large, large_too, small, small_too));
        assert_eq!(admission.body_bytes(), 0);
    }

    #[tokio::test]
    async fn the_gauge_follows_the_bytes_held() {
        let gauge = IntGauge::new("buffered", "body bytes").unwrap();
        let admission = Admission::new(limits(), gauge.clone());
        let body = Full::new(Bytes::from(vec![1u8; 40]));
        let (_, held) = admission
            .read_body(&length(40), body, Expect::Body)
            .await
            .unwrap();
        assert_eq!(gauge.get(), 40);
        drop(held);
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test]
    async fn a_route_without_a_body_takes_a_stray_one_and_refuses_more_before_reading() {
        let admission = admission(Limits {
            max_body: 10_000,
            body_budget: 10_000,
            ..limits()
        });
        let stray = Full::new(Bytes::from_static(b"{}"));
        let (bytes, held) = admission
            .read_body(&length(2), stray, Expect::NoBody)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"{}");
        drop(held);

        // Refused on its declared length: the body itself is never polled.
        let never_read = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, std::io::Error>,
        >());
        let refusal = admission
            .read_body(&length(2000), never_read, Expect::NoBody)
            .await
            .unwrap_err();
        assert_eq!(refusal, Refusal::UnexpectedBody { limit: 1024 });
        assert_eq!(refusal.status(), http::StatusCode::PAYLOAD_TOO_LARGE);

        // A streamed one stops at the allowance.
        let chunks =
            (0..3).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![0u8; 500]))));
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let refusal = admission
            .read_body(&http::HeaderMap::new(), body, Expect::NoBody)
            .await
            .unwrap_err();
        assert_eq!(refusal, Refusal::UnexpectedBody { limit: 1024 });
        assert_eq!(admission.body_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_with_408_and_frees_its_bytes() {
        let admission = admission(limits());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        tx.send(Ok(Frame::data(Bytes::from(vec![0u8; 30]))))
            .await
            .unwrap();
        let body = StreamBody::new(tokio_stream_from(rx));
        let read = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.read_body(&length(40), body, Expect::Body).await })
        };
        // The sender stays open and silent: the read can only end by its timeout, which the
        // paused clock reaches as soon as every task is idle.
        let refusal = read.await.unwrap().unwrap_err();
        assert_eq!(refusal.status(), http::StatusCode::REQUEST_TIMEOUT);
        assert_eq!(admission.body_bytes(), 0);
        drop(tx);
    }

    /// A receiver as a stream of frames.
    fn tokio_stream_from(
        rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
    }
}
