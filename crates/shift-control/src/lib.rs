//! chroma-shift's control plane.
//!
//! - [`health`]: heartbeats each backend on an interval and keeps the result on a board.
//! - [`admin`]: the admin HTTP API on its own listener: `/metrics`, `/healthz`, `/readyz`.
//! - [`process`]: the whole proxy assembled from the config, for the binary and the tests.

pub mod admin;
pub mod health;

pub use admin::{app, AdminState};
pub use health::{HealthBoard, HealthMonitor};
pub mod process;

pub use process::{ChromaShift, StartError};
