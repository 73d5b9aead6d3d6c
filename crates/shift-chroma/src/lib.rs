//! What chroma-shift knows of Chroma's v2 API.
//!
//! - [`route`]: the route table, from method and path to an operation, its class and params.
//! - [`error`]: Chroma's error shape, for the errors the proxy answers itself.
//! - [`local`]: a local `chroma run` server process, for the quickstart and the tests.

pub mod error;
pub mod local;
pub mod route;

pub use error::ChromaError;
pub use route::{classify, Operation, OperationClass, PathParams, Route};
