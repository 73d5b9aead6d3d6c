//! What chroma-shift knows of Chroma's v2 API.
//!
//! - [`route`]: the route table, from method and path to an operation, its class and params.
//! - [`records`]: typed records and query results, as `get` and `query` answer them.
//! - [`compare`]: the one comparison of two stores' answers (recall at k, distance drift,
//!   record equality), for shadow reads and verify.
//! - [`error`]: Chroma's error shape, for the errors the proxy answers itself.
//! - [`paths`]: rewriting a client's path for a backend, and building the mirror's paths.
//! - [`retry`]: the one backoff with jitter for retrying calls to a Chroma server.
//! - [`payload`]: views of request and response bodies (record ids, delete filters), merging
//!   record batches.

pub mod compare;
pub mod error;
pub mod paths;
pub mod payload;
pub mod records;
pub mod retry;
pub mod route;

pub use error::ChromaError;
pub use route::{classify, Operation, OperationClass, PathParams, Route};
