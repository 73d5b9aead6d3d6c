//! Authentication of clients at the proxy, and [`Caller`]: on whose behalf a request reaches
//! a backend, which decides the credential it carries there.
//!
//! Who uses which credential:
//! - a client presenting an identity's token (`[[server.client_auth.identities]]`): its
//!   identity's backend token, on its reads, writes, shadow reads, the sync mirror and the
//!   journaled mirror's replay (the journal stores the identity's name, never a token);
//! - a client presenting a `tokens_env` token, or any client when client auth is off: the
//!   backend's own `[backends.*.auth]` credential (the operator's);
//! - with `forward_client_auth`: the client's own `Authorization` / `X-Chroma-Token`, except on
//!   the journaled replay, which runs later and uses the operator's credential;
//! - the proxy's own work (collection lookups, heartbeats, backfill, verify, repair, batch size
//!   probes): the operator's credential.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{header, HeaderMap};
use shift_config::{IdentitySecrets, Secret};
use subtle::ConstantTimeEq;

use crate::error::RefusedRequest;
use crate::headers::X_CHROMA_TOKEN;

/// The name of a client identity of `[[server.client_auth.identities]]`.
pub type IdentityName = Arc<str>;

/// On whose behalf a request reaches a backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Caller {
    /// The operator: the backend's own `[backends.*.auth]` credential, if it has one.
    #[default]
    Operator,
    /// A client identity: that identity's token for the backend.
    Identity(IdentityName),
    /// The client's own credential headers, passed on as they came (marked sensitive, so
    /// `Debug` does not show them); the backend's own credential is not added.
    Forwarded(Vec<(HeaderName, HeaderValue)>),
}

impl Caller {
    /// The client's credential headers of `headers`, to pass on.
    pub fn forwarded(headers: &HeaderMap) -> Caller {
        let credentials = [header::AUTHORIZATION, X_CHROMA_TOKEN]
            .into_iter()
            .flat_map(|name| {
                headers.get_all(&name).iter().map(move |value| {
                    let mut value = value.clone();
                    value.set_sensitive(true);
                    (name.clone(), value)
                })
            })
            .collect();
        Caller::Forwarded(credentials)
    }

    /// The identity's name, for logs and the journal; `None` for the operator and forwarding.
    pub fn identity(&self) -> Option<&str> {
        match self {
            Caller::Identity(name) => Some(name),
            Caller::Operator | Caller::Forwarded(_) => None,
        }
    }

    /// The caller a journaled write is replayed as: its identity, else the operator (a
    /// forwarded client credential is never stored).
    pub fn from_journal(identity: Option<&str>) -> Caller {
        identity.map_or(Caller::Operator, |name| Caller::Identity(name.into()))
    }
}

/// The tokens clients may present, as Chroma's clients send them: `Authorization: Bearer`
/// or `X-Chroma-Token`, each accepted as the operator or as one identity.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// Accepted tokens and the identity each stands for (`None`: the operator); compared in
    /// constant time, every one of them on every request.
    tokens: Vec<(Secret, Option<IdentityName>)>,
}

impl ClientAuth {
    /// Accepts `tokens`, all as the operator.
    pub fn new(tokens: Vec<Secret>) -> ClientAuth {
        ClientAuth {
            tokens: tokens.into_iter().map(|t| (t, None)).collect(),
        }
    }

    /// Also accepts each identity's client tokens, as that identity.
    pub fn with_identities(mut self, identities: &[IdentitySecrets]) -> ClientAuth {
        for identity in identities {
            let name: IdentityName = identity.name.as_str().into();
            self.tokens.extend(
                identity
                    .client_tokens
                    .iter()
                    .map(|t| (t.clone(), Some(name.clone()))),
            );
        }
        self
    }

    /// Whether the request carries an accepted token.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), RefusedRequest> {
        self.identify(headers).map(drop)
    }

    /// Who the client is: [`Caller::Identity`] for an identity's token, [`Caller::Operator`]
    /// for an operator token.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Caller, RefusedRequest> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .or_else(|| headers.get(X_CHROMA_TOKEN).map(|v| v.as_bytes()))
            .ok_or(RefusedRequest::MissingCredentials)?;
        let presented = presented.trim_ascii();
        // Compare with every token without stopping early, so timing says nothing of which
        // token came close. Tokens are distinct (checked at start), so at most one matches.
        let mut matched = None;
        for (token, identity) in &self.tokens {
            if bool::from(token.expose().as_bytes().ct_eq(presented)) {
                matched = Some(identity);
            }
        }
        match matched {
            Some(Some(name)) => Ok(Caller::Identity(name.clone())),
            Some(None) => Ok(Caller::Operator),
            None => Err(RefusedRequest::InvalidCredentials),
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
    fn an_identity_token_names_its_identity_and_an_operator_token_none() {
        let identity = IdentitySecrets {
            name: "team-a".into(),
            client_tokens: vec![Secret::new("gamma".into())],
            ..IdentitySecrets::default()
        };
        let auth = auth().with_identities(&[identity]);
        let caller = auth.identify(&headers(X_CHROMA_TOKEN, "gamma")).unwrap();
        assert_eq!(caller, Caller::Identity("team-a".into()));
        assert_eq!(caller.identity(), Some("team-a"));
        let bearer = headers(header::AUTHORIZATION, "Bearer alpha");
        assert_eq!(auth.identify(&bearer).unwrap(), Caller::Operator);
        assert!(matches!(
            auth.check(&headers(X_CHROMA_TOKEN, "gamm")),
            Err(RefusedRequest::InvalidCredentials)
        ));
    }

    #[test]
    fn forwarded_credentials_are_kept_sensitive() {
        let caller = Caller::forwarded(&headers(header::AUTHORIZATION, "Bearer s3cret"));
        let Caller::Forwarded(credentials) = &caller else {
            panic!("forwarded")
        };
        assert_eq!(credentials.len(), 1);
        assert!(credentials[0].1.is_sensitive());
        assert!(!format!("{caller:?}").contains("s3cret"));
        assert_eq!(caller.identity(), None);
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
