//! Who calls the admin API. Every `/admin` call presents an admin token
//! (`Authorization: Bearer <token>` or `X-Chroma-Token`); each token has a holder's name
//! (`[admin] tokens_env`, and `admin` for the single `[admin] token_env`), compared in constant
//! time against every token. The name goes to the handlers and the audit log as an [`Actor`]
//! in the request's extensions.
//!
//! Failed logins are counted (`chroma_shift_admin_auth_failures_total`, by reason, never by
//! token) and limited per peer IP ([`FailureLimiter`]): past `auth_failure_limit` failures in
//! `auth_failure_window`, that peer's calls are answered 429 with `Retry-After` until the window
//! ends, while other peers go on. The peer comes from the request's extensions (axum's
//! `ConnectInfo<SocketAddr>`, or a plain `SocketAddr`), which the admin listener's server must
//! put there. Without it,
//! failures are still counted and logged but not limited: one count shared by every caller
//! would let anyone lock every operator out.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{IntCounterVec, Opts, Registry};
use shift_config::{AdminConfig, Secret, Secrets, SINGLE_ADMIN_TOKEN_NAME};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio::time::Instant;

use crate::admin::error;
use crate::api::ErrorKind;

/// Who made an admin call: the name of the token presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub Arc<str>);

/// The admin tokens with their holders' names, and the limit on failed logins.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    /// Each holder's name and token.
    tokens: Arc<[(Arc<str>, Secret)]>,
    /// Failed logins per peer.
    failures: Arc<FailureLimiter>,
    /// `chroma_shift_admin_auth_failures_total{reason}`.
    failures_total: IntCounterVec,
}

/// Why a call presented no usable admin token; never holds the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` and no `X-Chroma-Token` header.
    MissingToken,
    /// A token no holder has.
    WrongToken,
}

impl AuthFailure {
    /// The metric label and the log's word for it.
    fn as_str(self) -> &'static str {
        match self {
            AuthFailure::MissingToken => "missing_token",
            AuthFailure::WrongToken => "wrong_token",
        }
    }
}

impl AdminAuth {
    /// The admin API's tokens from the secrets (the single one named `admin`, then the named
    /// ones); `None` when there are none (the admin API is off). Registers its counter.
    pub fn from_secrets(
        config: &AdminConfig,
        secrets: &Secrets,
        registry: &Registry,
    ) -> Result<Option<AdminAuth>, prometheus::Error> {
        let single = secrets
            .admin_token
            .iter()
            .map(|token| (SINGLE_ADMIN_TOKEN_NAME.to_owned(), token.clone()));
        let tokens: Vec<(String, Secret)> = single
            .chain(secrets.admin_named_tokens.iter().cloned())
            .collect();
        if tokens.is_empty() {
            return Ok(None);
        }
        let limits = FailureLimits {
            limit: config.auth_failure_limit,
            window: config.auth_failure_window,
            peers: config.auth_failure_peers,
        };
        let auth = AdminAuth::new(tokens, limits);
        registry.register(Box::new(auth.failures_total.clone()))?;
        Ok(Some(auth))
    }

    /// Over `tokens` (holder, token), with an unregistered counter.
    pub fn new(tokens: Vec<(String, Secret)>, limits: FailureLimits) -> AdminAuth {
        let failures_total = IntCounterVec::new(
            Opts::new(
                "chroma_shift_admin_auth_failures_total",
                "Admin API calls refused before authentication: missing_token, wrong_token, or rate_limited (a peer past its failure limit).",
            ),
            &["reason"],
        )
        .expect("a valid metric definition");
        AdminAuth {
            tokens: tokens
                .into_iter()
                .map(|(name, token)| (Arc::from(name), token))
                .collect(),
            failures: Arc::new(FailureLimiter::new(limits)),
            failures_total,
        }
    }

    /// The holder of the token `headers` present. Every token is compared, in constant time,
    /// whichever matches, so timing says nothing of which one came close.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Actor, AuthFailure> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .or_else(|| {
                headers
                    .get(shift_proxy::headers::X_CHROMA_TOKEN)
                    .map(HeaderValue::as_bytes)
            })
            .ok_or(AuthFailure::MissingToken)?
            .trim_ascii();
        let mut found = u32::MAX;
        for (i, (_, token)) in self.tokens.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            found.conditional_assign(&i, token.expose().as_bytes().ct_eq(presented));
        }
        let index = usize::try_from(found).map_err(|_| AuthFailure::WrongToken)?;
        self.tokens
            .get(index)
            .map(|(name, _)| Actor(name.clone()))
            .ok_or(AuthFailure::WrongToken)
    }
}

/// Every `/admin` call needs an admin token; the holder's name goes into the request's
/// extensions as an [`Actor`]. A peer past its failure limit is answered 429 before its token
/// is looked at, so guessing goes no faster with a right token in between.
pub(crate) async fn authorize(
    State(auth): State<Option<AdminAuth>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(auth) = &auth else {
        return error(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFoundError,
            "the admin API is off",
        );
    };
    let peer = peer_of(&request);
    let now = Instant::now();
    if let Some(wait) = auth.failures.blocked(peer, now) {
        auth.failures_total
            .with_label_values(&["rate_limited"])
            .inc();
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        // The warning was given when the peer reached its limit; one line per refused call
        // would let a guesser flood the log.
        tracing::debug!(
            peer = ?peer,
            retry_after_s = seconds,
            "admin call refused: too many failed admin logins from this peer"
        );
        let mut answer = error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::RateLimitError,
            format!("too many failed admin logins from this address; retry in {seconds}s"),
        );
        answer
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return answer;
    }
    match auth.identify(request.headers()) {
        Ok(actor) => {
            auth.failures.forgive(peer);
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        Err(failure) => {
            let failures = auth.failures.fail(peer, now);
            auth.failures_total
                .with_label_values(&[failure.as_str()])
                .inc();
            // At most `auth_failure_limit` lines per peer and window: past it the peer is
            // refused before its token is looked at.
            tracing::warn!(
                peer = ?peer,
                reason = failure.as_str(),
                failures_in_window = failures,
                method = %request.method(),
                path = request.uri().path(),
                "admin login failed"
            );
            if failures == auth.failures.limits.limit {
                tracing::warn!(
                    peer = ?peer,
                    window_s = auth.failures.limits.window.as_secs_f64(),
                    "too many failed admin logins: this peer is refused (429) until its window ends"
                );
            }
            let message = match failure {
                AuthFailure::MissingToken => "an admin token is required",
                AuthFailure::WrongToken => "the admin token is not valid",
            };
            error(StatusCode::UNAUTHORIZED, ErrorKind::AuthError, message)
        }
    }
}

/// The caller's IP address: from axum's `ConnectInfo<SocketAddr>` (`axum::serve` with
/// `into_make_service_with_connect_info`), or a plain `SocketAddr` in the request's extensions
/// (what an accept loop without axum puts there).
fn peer_of(request: &Request) -> Option<IpAddr> {
    let extensions = request.extensions();
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
        .or_else(|| extensions.get::<SocketAddr>().copied())
        .map(|addr| addr.ip())
}

/// How failed logins are limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureLimits {
    /// Failures a peer may make within `window`; the next call within it is refused.
    pub limit: u32,
    /// From a peer's first failure.
    pub window: Duration,
    /// Peers kept at most.
    pub peers: usize,
}

/// Failed logins per peer IP, in fixed windows from each peer's first failure. Bounded: at
/// `peers` entries, expired windows are dropped, then the oldest window.
#[derive(Debug)]
pub struct FailureLimiter {
    limits: FailureLimits,
    /// Per peer (an IPv6 peer by its /64): when its window started, failures in it.
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn new(limits: FailureLimits) -> FailureLimiter {
        FailureLimiter {
            limits,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// How long `peer` is still refused, if it is; never an unknown peer.
    pub fn blocked(&self, peer: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let (started, failures) = *windows.get(&key(peer?))?;
        let left = self
            .limits
            .window
            .checked_sub(now.duration_since(started))?;
        (failures >= self.limits.limit && !left.is_zero()).then_some(left)
    }

    /// Counts a failure of `peer`; the failures in its window now (0 for an unknown peer,
    /// which is not kept).
    pub fn fail(&self, peer: Option<IpAddr>, now: Instant) -> u32 {
        let Some(peer) = peer else {
            return 0;
        };
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let key = key(peer);
        if !windows.contains_key(&key) && windows.len() >= self.limits.peers {
            let window = self.limits.window;
            windows.retain(|_, (started, _)| now.duration_since(*started) < window);
            if windows.len() >= self.limits.peers {
                let oldest = windows
                    .iter()
                    .min_by_key(|(_, (started, _))| *started)
                    .map(|(peer, _)| *peer);
                if let Some(oldest) = oldest {
                    windows.remove(&oldest);
                }
            }
        }
        let entry = windows.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.limits.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1
    }

    /// Forgets `peer`'s failures (it logged in).
    pub fn forgive(&self, peer: Option<IpAddr>) {
        if let Some(peer) = peer {
            let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            windows.remove(&key(peer));
        }
    }

    /// Peers with failures kept now.
    pub fn peers(&self) -> usize {
        self.windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The key of a peer: IPv4 as is (an IPv4-mapped IPv6 address as IPv4), IPv6 by its /64, as
/// one host usually holds a whole /64.
fn key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> AdminAuth {
        let tokens = vec![
            ("alice".to_owned(), Secret::new("tok-a".into())),
            ("ci".to_owned(), Secret::new("tok-c".into())),
        ];
        AdminAuth::new(tokens, limits(3, 60, 100))
    }

    fn limits(limit: u32, window_s: u64, peers: usize) -> FailureLimits {
        FailureLimits {
            limit,
            window: Duration::from_secs(window_s),
            peers,
        }
    }

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn each_token_names_its_holder_by_either_header() {
        let auth = auth();
        let alice = auth.identify(&headers("authorization", "Bearer tok-a"));
        assert_eq!(alice, Ok(Actor("alice".into())));
        let ci = auth.identify(&headers("x-chroma-token", " tok-c "));
        assert_eq!(ci, Ok(Actor("ci".into())));
        let wrong = auth.identify(&headers("authorization", "Bearer tok-"));
        assert_eq!(wrong, Err(AuthFailure::WrongToken));
        let basic = auth.identify(&headers("authorization", "Basic tok-a"));
        assert_eq!(basic, Err(AuthFailure::MissingToken));
        assert_eq!(
            auth.identify(&HeaderMap::new()),
            Err(AuthFailure::MissingToken)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_past_its_limit_waits_out_its_window_and_others_go_on() {
        let limiter = FailureLimiter::new(limits(3, 60, 100));
        let bad: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let other: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        let start = Instant::now();
        for n in 1..=3 {
            assert_eq!(limiter.blocked(bad, start), None, "before failure {n}");
            assert_eq!(limiter.fail(bad, start), n);
        }
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            limiter.blocked(bad, Instant::now()),
            Some(Duration::from_secs(40))
        );
        assert_eq!(limiter.blocked(other, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(limiter.blocked(bad, Instant::now()), None, "window over");
        assert_eq!(limiter.fail(bad, Instant::now()), 1, "a new window");
        limiter.forgive(bad);
        assert_eq!(limiter.peers(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_of_peers_stays_bounded() {
        use std::net::Ipv4Addr;

        let limiter = FailureLimiter::new(limits(2, 60, 4));
        for i in 0..50u8 {
            let peer = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 1, i)));
            limiter.fail(peer, Instant::now());
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(limiter.peers(), 4);
        // The newest peers are the ones kept.
        let newest = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 49)));
        limiter.fail(newest, Instant::now());
        assert!(limiter.blocked(newest, Instant::now()).is_some());
    }

    #[test]
    fn ipv6_peers_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert_eq!(key(a), key(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_peer_comes_from_connect_info_or_a_plain_address() {
        let addr = SocketAddr::from(([10, 0, 0, 7], 5000));
        let mut request = Request::new(axum::body::Body::empty());
        assert_eq!(peer_of(&request), None);
        request.extensions_mut().insert(addr);
        assert_eq!(peer_of(&request), Some(addr.ip()));
        let mut request = Request::new(axum::body::Body::empty());
        request.extensions_mut().insert(ConnectInfo(addr));
        assert_eq!(peer_of(&request), Some(addr.ip()));
    }

    #[test]
    fn an_unknown_peer_is_never_limited_so_it_cannot_lock_others_out() {
        let limiter = FailureLimiter::new(limits(1, 60, 100));
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.fail(None, now), 0);
        }
        assert_eq!(limiter.blocked(None, now), None);
        assert_eq!(limiter.peers(), 0);
    }
}
