//! Chroma's error shape: `{"error": "<kind>", "message": "<text>"}`.
//!
//! Every error the proxy answers itself uses it, with a kind the official clients map to a
//! meaningful exception (the Python client looks the kind up by name).

use bytes::Bytes;
use serde::Serialize;

/// An error body in Chroma's own shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChromaError {
    /// The error kind, such as `InvalidArgumentError` or `NotFoundError`.
    pub error: String,
    /// A sentence for the person reading it.
    pub message: String,
}

impl ChromaError {
    pub fn new(kind: &str, message: impl Into<String>) -> ChromaError {
        ChromaError {
            error: kind.to_owned(),
            message: message.into(),
        }
    }

    /// The JSON body.
    pub fn to_bytes(&self) -> Bytes {
        // Serializing two strings cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// Error kinds that Chroma and its clients know.
pub mod kind {
    pub const INVALID_ARGUMENT: &str = "InvalidArgumentError";
    pub const NOT_FOUND: &str = "NotFoundError";
    pub const AUTH: &str = "AuthError";
    pub const INTERNAL: &str = "InternalError";
    pub const RATE_LIMIT: &str = "RateLimitError";
    /// Chroma's generic kind, used for errors of the transport rather than of the data.
    pub const CHROMA: &str = "ChromaError";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_in_chromas_shape() {
        let body = ChromaError::new(kind::NOT_FOUND, "Collection [x] does not exist").to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"error": "NotFoundError", "message": "Collection [x] does not exist"})
        );
    }
}
