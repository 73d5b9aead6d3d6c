//! Forwarding: each collection's writes are handled by its owner replica ([`crate::owner`]),
//! so its order locks and its journal see every write of the collection, whichever replica a
//! client reached. A replica that receives a write of a collection another replica owns
//! sends it there over the owner's internal address, unchanged (the client's credentials
//! included, so the owner authenticates it as it would), and streams the answer back. A
//! forwarded request carries [`FORWARDED_BY`] and is never forwarded again.
//!
//! What is forwarded: record writes (add, upsert, update, delete) and the collection changes
//! that name one collection (modify, delete, fork, attached functions). Reads, creates of
//! collections, databases and tenants are handled where they arrive (reads go to the primary
//! and the collection map converges through etcd).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use shift_chroma::error::{kind, ChromaError};
use shift_chroma::{classify, Operation, OperationClass};
use shift_proxy::body::{self, ProxyBody};
use shift_proxy::error::error_response;
use shift_proxy::DataPlaneState;

use crate::member::MemberRecord;
use crate::owner::owner;
use crate::view::MemberView;

/// The header a forwarded request carries: the forwarding replica's member id.
pub const FORWARDED_BY: &str = "x-chroma-shift-forwarded-by";

/// What the forwarding layer shares between requests.
#[derive(Debug)]
pub struct Forwarder {
    me: String,
    view: Arc<MemberView>,
    plane: Arc<DataPlaneState>,
    client: Client<HttpConnector, Incoming>,
    /// `chroma_shift_cluster_forwarded_total{outcome}`: answered (any status from the
    /// owner), unreachable (never sent), failed (broken after sending).
    forwarded: prometheus::IntCounterVec,
}

impl Forwarder {
    /// Forwards for replica `me`, over the members of `view`, resolving collection names in
    /// `plane`'s map; `connect_timeout` bounds reaching an owner.
    pub fn new(
        me: String,
        view: Arc<MemberView>,
        plane: Arc<DataPlaneState>,
        connect_timeout: Duration,
        registry: &prometheus::Registry,
    ) -> Result<Forwarder, prometheus::Error> {
        let forwarded = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "chroma_shift_cluster_forwarded_total",
                "Writes forwarded to the replica that owns their collection, by outcome (answered, unreachable, failed).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(forwarded.clone()))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        Ok(Forwarder {
            me,
            view,
            plane,
            client: Client::builder(TokioExecutor::new()).build(connector),
            forwarded,
        })
    }

    /// Wraps the data plane `inner`.
    pub fn layer<S>(self: &Arc<Self>, inner: S) -> Forwarding<S> {
        Forwarding {
            inner,
            forwarder: self.clone(),
        }
    }

    /// The owner to forward `request` to; `None` to handle it here.
    fn target<B>(&self, request: &Request<B>) -> Option<MemberRecord> {
        if request.headers().contains_key(FORWARDED_BY) {
            return None;
        }
        let route = classify(request.method(), request.uri().path());
        let collection = route.params.collection.as_ref()?.as_str();
        let client_id = match (route.class(), route.operation) {
            (OperationClass::RecordWrite, _) => collection.to_owned(),
            (OperationClass::LifecycleWrite, Operation::DeleteCollection) => {
                // By name: the owner is the named collection's.
                let tenant = route.params.tenant.as_ref()?.as_str();
                let database = route.params.database.as_ref()?.as_str();
                self.plane
                    .collections()
                    .into_iter()
                    .find(|e| {
                        !e.deleted
                            && e.tenant == tenant
                            && e.database == database
                            && (e.name == collection || e.client_id.as_str() == collection)
                    })
                    .map(|e| e.client_id.as_str().to_owned())?
            }
            (OperationClass::LifecycleWrite, _) => collection.to_owned(),
            _ => return None,
        };
        let members = self.view.live();
        let owner = owner(&members, &client_id)?;
        (owner.id != self.me).then(|| owner.clone())
    }

    async fn forward(
        &self,
        owner: MemberRecord,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri: Uri = match format!("{}{path}", owner.address).parse() {
            Ok(uri) => uri,
            Err(error) => return refused(&owner, &format!("bad internal address: {error}"), false),
        };
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        for hop in [
            header::CONNECTION,
            header::HOST,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
        ] {
            parts.headers.remove(hop);
        }
        parts.headers.remove("keep-alive");
        if let Ok(me) = HeaderValue::from_str(&self.me) {
            parts.headers.insert(FORWARDED_BY, me);
        }
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(answer) => {
                self.forwarded.with_label_values(&["answered"]).inc();
                let (mut parts, body) = answer.into_parts();
                for hop in [header::CONNECTION, header::TRANSFER_ENCODING] {
                    parts.headers.remove(hop);
                }
                Response::from_parts(parts, body::stream(body))
            }
            Err(error) => {
                let unsent = error.is_connect();
                let outcome = if unsent { "unreachable" } else { "failed" };
                self.forwarded.with_label_values(&[outcome]).inc();
                tracing::warn!(%error, owner = %owner.id, unsent, "cannot forward a write to its collection's owner");
                refused(&owner, &error.to_string(), unsent)
            }
        }
    }
}

/// The answer when the owner could not be reached: 503 (nothing applied) when the request
/// was never sent, 502 (outcome unknown) when the connection broke after.
fn refused(owner: &MemberRecord, reason: &str, unsent: bool) -> Response<ProxyBody> {
    let (status, message) = if unsent {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("chroma-shift replica {} owns this collection's writes and cannot be reached ({reason}); nothing was applied. Retry shortly", owner.id),
        )
    } else {
        (
            StatusCode::BAD_GATEWAY,
            format!("chroma-shift replica {} owns this collection's writes and failed while handling this one ({reason}); it may or may not be applied. Retry", owner.id),
        )
    };
    let mut response = error_response(status, ChromaError::new(kind::INTERNAL, message));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The data plane with forwarding in front.
#[derive(Debug, Clone)]
pub struct Forwarding<S> {
    inner: S,
    forwarder: Arc<Forwarder>,
}

impl<S> tower::Service<Request<Incoming>> for Forwarding<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        match self.forwarder.target(&request) {
            None => Box::pin(self.inner.call(request)),
            Some(owner) => {
                let forwarder = self.forwarder.clone();
                Box::pin(async move { Ok(forwarder.forward(owner, request).await) })
            }
        }
    }
}
