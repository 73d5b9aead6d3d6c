//! What chroma-shift knows of Chroma's v2 API.
//!
//! - [`route`]: the route table, from method and path to an operation, its class and params.
//! - [`error`]: Chroma's error shape, for the errors the proxy answers itself.
//! - [`paths`]: rewriting a client's path for a backend, and building the mirror's paths.
//! - [`payload`]: views of request and response bodies (record ids, delete filters), merging
//!   record batches.

pub mod error;
pub mod paths;
pub mod payload;
pub mod route;

pub use error::ChromaError;
pub use route::{classify, Operation, OperationClass, PathParams, Route};
