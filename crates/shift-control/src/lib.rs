//! chroma-shift's control plane.
//!
//! - [`health`]: heartbeats each backend on an interval, keeps the result on a board, alerts on
//!   long outages and rolls back by itself when configured to.
//! - [`switch`]: every topology change: cutover, rollback, write mode, read policy, pause.
//! - [`alerts`]: alerts to a Slack-compatible webhook.
//! - [`audit`]: the audit log of admin actions, kept in the state store; [`audit_layer`]:
//!   records every admin action in it.
//! - [`store_alerts`]: alerts when the state store cannot take writes, and when it can again.
//! - [`admin`]: the admin HTTP API on its own listener: `/metrics`, `/healthz`, `/readyz`,
//!   `/admin/...`; [`migrate_api`]: its backfill and repair routes; [`admin_auth`]: its named
//!   tokens and the limit on failed logins; [`finalize_api`]: its finalize and verify-record
//!   routes, over [`finalize`], which ends a migration after a cutover.
//! - [`api`]: the admin API's request and response types, shared by the server and the client;
//!   [`client`]: a typed client of a running proxy's admin API.
//! - [`topology_metrics`]: the epoch and the primary as metrics, read at each scrape.
//! - [`ui`]: the status page, `/ui` on the admin listener.
//! - [`process`]: the whole proxy assembled from the config, for the binary and the tests.

pub mod admin;
pub mod admin_auth;
pub mod alerts;
pub mod api;
pub mod audit;
pub mod audit_layer;
pub mod client;
pub mod finalize;
pub mod finalize_api;
pub mod health;
pub mod migrate_api;
pub mod store_alerts;
pub mod switch;
pub mod topology_metrics;
pub mod ui;

pub use admin::{app, AdminState};
pub use client::{AdminClient, AdminError, AdminTls};
pub use health::{HealthBoard, HealthMonitor};
pub mod primary_commit;
pub mod process;
pub mod supervise;

pub use process::{ChromaShift, ProxyStartError};
