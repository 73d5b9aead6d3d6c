//! Optional authentication of clients at the proxy.

use http::{header, HeaderMap};
use shift_config::Secret;
use subtle::ConstantTimeEq;

use crate::error::RefusedRequest;
use crate::headers::X_CHROMA_TOKEN;

/// The tokens clients may present, as Chroma's clients send them: `Authorization: Bearer`
/// or `X-Chroma-Token`.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// Accepted tokens; compared in constant time, every one of them on every request.
    tokens: Vec<Secret>,
}

impl ClientAuth {
    pub fn new(tokens: Vec<Secret>) -> ClientAuth {
        ClientAuth { tokens }
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<(), RefusedRequest> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .or_else(|| headers.get(X_CHROMA_TOKEN).map(|v| v.as_bytes()))
            .ok_or(RefusedRequest::MissingCredentials)?;
        let presented = presented.trim_ascii();
        // Fold over every token without stopping early, so timing says nothing of which
        // token came close.
        let matched = self
            .tokens
            .iter()
            .fold(subtle::Choice::from(0), |acc, token| {
                acc | token.expose().as_bytes().ct_eq(presented)
            });
        if bool::from(matched) {
            Ok(())
        } else {
            Err(RefusedRequest::InvalidCredentials)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn auth() -> ClientAuth {
        ClientAuth::new(vec![
            Secret::new("alpha".into()),
            Secret::new("beta".into()),
        ])
    }

    /// Headers holding only `name: value`.
    fn headers(name: impl header::IntoHeaderName, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn accepts_either_header_and_any_configured_token() {
        let bearer = headers(header::AUTHORIZATION, "Bearer beta");
        assert!(auth().check(&bearer).is_ok());
        assert!(auth().check(&headers(X_CHROMA_TOKEN, "alpha")).is_ok());
    }

    #[test]
    fn refuses_missing_and_wrong_tokens() {
        assert!(matches!(
            auth().check(&HeaderMap::new()),
            Err(RefusedRequest::MissingCredentials)
        ));
        let wrong = headers(header::AUTHORIZATION, "Bearer alph");
        assert!(matches!(
            auth().check(&wrong),
            Err(RefusedRequest::InvalidCredentials)
        ));
        let basic = headers(header::AUTHORIZATION, "Basic alpha");
        assert!(matches!(
            auth().check(&basic),
            Err(RefusedRequest::MissingCredentials)
        ));
    }
}
