//! The body type the data plane answers with.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// Errors of a body stream (the backend's connection failing mid-body).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: a backend's streamed body, or one the proxy wrote.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body the proxy wrote itself.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body streamed from a backend, unchanged.
pub fn stream(body: hyper::body::Incoming) -> ProxyBody {
    body.map_err(BoxError::from).boxed_unsync()
}
