//! chroma-shift's data plane.
//!
//! A request goes through a short tower stack, built by [`data_plane`]:
//! - [`observe::AccessLog`], outermost, so every answer is logged and counted, the proxy's own
//!   errors included;
//! - [`service::ProxyService`]: client auth, the body limit, forwarding to the primary
//!   [`backend::Backend`], hop-by-hop header rules ([`headers`]).
//!
//! [`server::serve`] runs it on a listener; [`error`] maps every failure to an answer in
//! Chroma's error shape; [`metrics`] holds the Prometheus metrics.

pub mod auth;
pub mod backend;
pub mod body;
pub mod error;
pub mod headers;
pub mod metrics;
pub mod observe;
pub mod server;
pub mod service;

pub use backend::{Backend, Backends};
pub use metrics::ProxyMetrics;
pub use server::{serve, Drained, ServeOptions};
pub use service::{ProxyService, ProxySettings};

/// The whole data-plane service.
pub type DataPlane = observe::AccessLog<ProxyService>;

/// Builds the data-plane stack around a [`ProxyService`].
pub fn data_plane(service: ProxyService, metrics: ProxyMetrics) -> DataPlane {
    tower::ServiceBuilder::new()
        .layer(observe::AccessLogLayer::new(metrics))
        .service(service)
}
