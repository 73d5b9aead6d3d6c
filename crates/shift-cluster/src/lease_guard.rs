//! Reads after the lease is lost. From its lease deadline on a replica takes no write (the
//! journal refuses the intent: [`crate::fence`]); it keeps serving reads for `[cluster]
//! read_grace`, so a short cut from etcd costs no read, then refuses every data-plane request
//! (503 in Chroma's error shape, `Retry-After`) until it holds a lease again: a replica cut
//! off for long may serve from a topology the others have moved past (a cutover committed
//! without it). It rejoins by itself once etcd answers ([`crate::member`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use shift_chroma::error::{kind, ChromaError};
use shift_proxy::body::ProxyBody;
use shift_proxy::error::error_response;

use crate::clock::LeaseClock;

/// Whether this replica may still answer, by its lease and the read grace.
#[derive(Debug, Clone)]
pub struct LeaseGuard {
    clock: Arc<LeaseClock>,
    read_grace: Duration,
    /// `chroma_shift_cluster_lease_refused_total`: requests refused past the read grace.
    refused: prometheus::IntCounter,
}

impl LeaseGuard {
    /// A guard on `clock` letting reads through for `read_grace` past the deadline; its
    /// counter goes in `registry`.
    pub fn new(
        clock: Arc<LeaseClock>,
        read_grace: Duration,
        registry: &prometheus::Registry,
    ) -> Result<LeaseGuard, prometheus::Error> {
        let refused = prometheus::IntCounter::new(
            "chroma_shift_cluster_lease_refused_total",
            "Data-plane requests refused (503) because this replica's membership lease ran out more than [cluster] read_grace ago.",
        )?;
        registry.register(Box::new(refused.clone()))?;
        Ok(LeaseGuard {
            clock,
            read_grace,
            refused,
        })
    }

    /// Wraps the data plane `inner`.
    pub fn layer<S>(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }

    /// The refusal for a request now; `None` to serve it.
    pub fn check(&self) -> Option<Response<ProxyBody>> {
        let lapsed = self.clock.lapsed_for()?;
        if lapsed < self.read_grace {
            return None;
        }
        self.refused.inc();
        let message = format!(
            "this chroma-shift replica lost its membership lease in etcd {} ms ago (more than the read grace of {:?}): it serves nothing until it rejoins the cluster; the other replicas serve. Retry shortly",
            lapsed.as_millis(),
            self.read_grace
        );
        let mut response = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ChromaError::new(kind::INTERNAL, message),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        Some(response)
    }
}

/// The data plane behind the lease guard.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: LeaseGuard,
}

impl<S, B> tower::Service<Request<B>> for Guarded<S>
where
    S: tower::Service<Request<B>, Response = Response<ProxyBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.guard.check() {
            Some(refused) => Box::pin(std::future::ready(Ok(refused))),
            None => Box::pin(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reads_are_served_for_the_grace_past_the_deadline_then_refused_until_a_renewal() {
        let clock = Arc::new(LeaseClock::default());
        let registry = prometheus::Registry::new();
        let guard = LeaseGuard::new(clock.clone(), Duration::from_secs(5), &registry).unwrap();
        clock.renewed(Instant::now(), Duration::from_secs(3));
        assert!(guard.check().is_none(), "lease held");
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(
            guard.check().is_none(),
            "past the deadline, within the grace"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        let refused = guard.check().expect("past the grace");
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = http_body_util::BodyExt::collect(refused.into_body())
            .await
            .unwrap()
            .to_bytes();
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(error["error"].is_string(), "{error}");
        assert!(
            error["message"].as_str().unwrap().contains("lease"),
            "{error}"
        );
        assert_eq!(guard.refused.get(), 1);
        clock.renewed(Instant::now(), Duration::from_secs(3));
        assert!(guard.check().is_none(), "a lease again");
    }
}
