//! chroma-shift's data plane.
//!
//! A request goes through a short tower stack, built by [`data_plane`]:
//! - [`observe::AccessLog`], outermost, so every answer is logged and counted, the proxy's own
//!   errors included;
//! - [`shed::Shed`], the in-flight limit of [`admission`]: past it, 503 before any work;
//! - [`service::ProxyService`]: client auth, the body read within [`admission`]'s budget,
//!   size limit and read timeout, hop-by-hop header rules
//!   ([`headers`]), then one module per operation class, each a function of the shared
//!   [`plane::DataPlaneState`]: [`reads`] to the primary (a canary share served by the
//!   secondary, a shadow share also sent to it and compared by [`shadow`]), [`record_writes`]
//!   and [`lifecycle_writes`] to both stores, [`reset`] of both, and [`passthrough`] of the
//!   rest to the primary. [`forward`] holds what they share to send a request and relay the
//!   answer.
//!
//! A write takes its order locks and hands itself to a task of its own ([`write_task`]), which
//! records an intent, sends the write and settles it by the decision table in [`settle`];
//! [`intents`] settles the intents a crash or a failed state write left behind. Writes mirror
//! [`mirror::MirrorOp`]s, applied to a store by [`apply`] (in sync mode at once, in journaled
//! mode by the [`replay`] worker). Collection ids ([`ids`]) are translated through the
//! [`collections`] map ([`resolve`] finds entries), tenant and database names through
//! [`namespace`]. The [`topology`] says which store is primary.
//!
//! What holds state or coordinates it (the order scope, the write gate, the topology, the
//! collection map's durable side, the journal) sits behind the traits of [`coord`]; the
//! request path uses only those. The in-process implementations ([`locks`], [`gate`],
//! [`topology`], and [`embedded`] for the redb state of `shift-state`) are the default.
//!
//! [`server::serve`] runs the stack on a listener; [`error`] maps every failure to an answer
//! in Chroma's error shape; [`metrics`] holds the Prometheus metrics ([`collection_series`]
//! bounds their per-collection labels); [`backend`] is the one
//! HTTP client for the stores.

pub mod access_line;
pub mod admission;
pub mod apply;
pub mod auth;
pub mod backend;
pub mod body;
pub mod body_ids;
pub mod collection_series;
pub mod collections;
pub mod coord;
pub mod data_threads;
pub mod driven;
pub mod embedded;
pub mod error;
pub mod failpoints;
pub mod forward;
pub mod gate;
pub mod headers;
pub mod ids;
pub mod intents;
pub mod lifecycle_writes;
pub mod locks;
pub mod log_writer;
pub mod metrics;
pub mod mirror;
pub mod namespace;
pub mod observe;
pub mod passthrough;
pub mod plane;
pub mod reads;
pub mod record_writes;
pub mod replay;
pub mod request_series;
pub mod reset;
pub mod resolve;
pub mod retired;
pub mod server;
pub mod service;
pub mod settle;
pub mod shadow;
pub mod shed;
pub mod tls;
pub mod topology;
pub mod trace_ctx;
pub mod window;
pub mod write_task;

pub use backend::{Backend, Backends};
pub use metrics::ProxyMetrics;
pub use plane::{DataPlaneState, PlaneParts, WriteSettings};
pub use server::{serve, Drained, ServeOptions};
pub use service::{ProxyService, ProxySettings};

/// The whole data-plane service.
pub type DataPlane = observe::AccessLog<shed::Shed<ProxyService>>;

/// Builds the data-plane stack around a [`ProxyService`]: the access log outermost (every
/// answer is logged and counted, shed ones too), then the in-flight limit (a shed request
/// costs nothing more), then the service, which reads bodies within the body budget after
/// client auth.
pub fn data_plane(service: ProxyService, metrics: ProxyMetrics) -> DataPlane {
    let shed = shed::ShedLayer::new(service.admission().clone(), metrics.clone());
    tower::ServiceBuilder::new()
        .layer(observe::AccessLogLayer::new(metrics))
        .layer(shed)
        .service(service)
}
