//! chroma-shift's data plane.
//!
//! A request goes through a short tower stack, built by [`data_plane`]:
//! - [`observe::AccessLog`], outermost, so every answer is logged and counted, the proxy's own
//!   errors included;
//! - [`service::ProxyService`]: client auth, the body limit, hop-by-hop header rules
//!   ([`headers`]), then by operation class: [`reads`] to the primary (a canary share served
//!   by the secondary, a shadow share also sent to it and compared by [`shadow`]), [`writes`]
//!   to both stores, the rest passed through to the primary.
//!
//! The write path orders writes per record ([`locks`]), records intents and journal entries
//! in the durable store (`shift-store`), and mirrors [`mirror::MirrorOp`]s, applied to a store
//! by [`apply`] (in sync mode at once, in journaled mode by the [`replay`] worker). Collection
//! ids are translated through the [`collections`] map ([`resolve`] finds entries), tenant and
//! database names through [`namespace`]. The [`topology`] says which store is primary.
//!
//! [`server::serve`] runs the stack on a listener; [`error`] maps every failure to an answer
//! in Chroma's error shape; [`metrics`] holds the Prometheus metrics; [`backend`] is the one
//! HTTP client for the stores.

pub mod apply;
pub mod auth;
pub mod backend;
pub mod body;
pub mod collections;
pub mod coord;
pub mod embedded;
pub mod error;
pub mod failpoints;
pub mod forward;
pub mod gate;
pub mod headers;
pub mod intents;
pub mod lifecycle_writes;
pub mod locks;
pub mod metrics;
pub mod mirror;
pub mod namespace;
pub mod observe;
pub mod passthrough;
pub mod plane;
pub mod reads;
pub mod record_writes;
pub mod replay;
pub mod reset;
pub mod resolve;
pub mod server;
pub mod service;
pub mod settle;
pub mod shadow;
pub mod topology;
pub mod write_task;

pub use backend::{Backend, Backends};
pub use metrics::ProxyMetrics;
pub use plane::{DataPlaneState, PlaneParts, WriteSettings};
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
