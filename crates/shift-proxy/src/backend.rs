//! The one HTTP client for Chroma backends.
//!
//! Each backend has its own pool of keep-alive connections (HTTP/1.1, plain or rustls TLS),
//! its own connect and request timeouts, and its own credentials: the operator's, and each
//! client identity's; a request carries the one of its [`Caller`] (see [`crate::auth`]).
//! [`ServiceClient`] is the same client for HTTP services that are not a store
//! (the admin API, an alert webhook), named for the service in its errors.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{header, HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use shift_config::{AuthHeader, BackendConfig, BackendName, IdentitySecrets, Secret, Secrets};

use crate::auth::{Caller, IdentityName};
use crate::driven::{DrivenBody, DrivenError, DrivenPool};
use crate::error::{BackendError, BackendErrorKind};
use crate::headers::X_CHROMA_TOKEN;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why a backend client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BackendBuildError {
    #[error("backend {backend}: cannot read ca_file: {reason}")]
    CaFile {
        backend: BackendName,
        reason: String,
    },
    #[error("backend {backend}: TLS setup failed: {source}")]
    Tls {
        backend: BackendName,
        #[source]
        source: rustls::Error,
    },
    #[error("backend {backend}: the token is not a valid header value")]
    Token { backend: BackendName },
    #[error("backend {backend}: the token of identity `{identity}` is not a valid header value")]
    IdentityToken {
        backend: BackendName,
        identity: String,
    },
    #[error("backend {backend}: url {url} cannot be used as a base URI")]
    Url { backend: BackendName, url: String },
    #[error("backend {backend}: the client certificate: {reason}")]
    ClientIdentity {
        backend: BackendName,
        reason: String,
    },
}

/// A client certificate and its key (PEM files), presented to a server that asks for one:
/// the admin listener with `[admin.tls] client_ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// A Chroma server the proxy talks to.
#[derive(Debug)]
pub struct Backend {
    /// `old` or `new`: labels in metrics and logs.
    name: BackendName,
    /// The server's scheme and authority, parsed once: a request's URI is built from them and
    /// its path without formatting and parsing a whole URI string each time.
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// A path prefix of the base URL (`/chroma` in `https://host/chroma`), without a trailing slash.
    path_prefix: String,
    /// The pooled client.
    client: HttpClient,
    /// Connections the read path's requests drive themselves (see [`crate::driven`]).
    driven: Arc<DrivenPool>,
    /// The `Host` header of a request sent on a driven connection.
    host: HeaderValue,
    /// The operator's credential header (`[backends.X.auth]`), marked sensitive.
    credential: Option<(HeaderName, HeaderValue)>,
    /// The header a token goes in: the one of `[backends.X.auth]`, else `Authorization: Bearer`.
    header: AuthHeader,
    /// Each client identity's credential header for this backend (`None`: it sends none).
    identities: HashMap<IdentityName, Option<(HeaderName, HeaderValue)>>,
    /// Limit on a request, from sending it to the response head.
    request_timeout: Duration,
}

impl Backend {
    pub fn new(
        name: BackendName,
        config: &BackendConfig,
        token: Option<&Secret>,
    ) -> Result<Backend, BackendBuildError> {
        Backend::with_identity(name, config, token, None)
    }

    /// [`Backend::new`], presenting `identity` to a server that asks for a client certificate.
    pub fn with_identity(
        name: BackendName,
        config: &BackendConfig,
        token: Option<&Secret>,
        identity: Option<&ClientIdentity>,
    ) -> Result<Backend, BackendBuildError> {
        let url = &config.url;
        let host = url.host_str().ok_or_else(|| BackendBuildError::Url {
            backend: name,
            url: url.to_string(),
        })?;
        let origin = match url.port() {
            Some(port) => format!("{}://{}:{}", url.scheme(), host, port),
            None => format!("{}://{}", url.scheme(), host),
        };
        let parts = origin.parse::<Uri>().map(Uri::into_parts);
        let Some((scheme, authority)) = parts.ok().and_then(|p| p.scheme.zip(p.authority)) else {
            return Err(BackendBuildError::Url {
                backend: name,
                url: url.to_string(),
            });
        };
        let path_prefix = url.path().trim_end_matches('/').to_owned();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let tls = tls_config(name, config, identity)?;
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let host =
            HeaderValue::from_str(authority.as_str()).map_err(|_| BackendBuildError::Url {
                backend: name,
                url: url.to_string(),
            })?;
        let driven = Arc::new(DrivenPool::new(
            connector.clone(),
            Uri::from_parts({
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(scheme.clone());
                parts.authority = Some(authority.clone());
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
                parts
            })
            .map_err(|_| BackendBuildError::Url {
                backend: name,
                url: url.to_string(),
            })?,
            config.pool_max_idle,
            config.pool_idle_timeout,
        ));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);

        let header = config.auth.as_ref().map(|a| a.header).unwrap_or_default();
        let credential = match (token, config.auth.as_ref()) {
            (Some(token), Some(_)) => {
                Some(credential(header, token).ok_or(BackendBuildError::Token { backend: name })?)
            }
            _ => None,
        };

        Ok(Backend {
            name,
            scheme,
            authority,
            path_prefix,
            client,
            driven,
            host,
            credential,
            header,
            identities: HashMap::new(),
            request_timeout: config.request_timeout,
        })
    }

    /// Adds the client identities' tokens for this backend.
    pub fn with_identities(
        mut self,
        identities: &[IdentitySecrets],
    ) -> Result<Backend, BackendBuildError> {
        for identity in identities {
            let header = identity
                .backend(self.name)
                .map(|token| {
                    credential(self.header, token).ok_or_else(|| BackendBuildError::IdentityToken {
                        backend: self.name,
                        identity: identity.name.clone(),
                    })
                })
                .transpose()?;
            self.identities
                .insert(identity.name.as_str().into(), header);
        }
        Ok(self)
    }

    /// Whether this backend knows the identity `name` (the config may have dropped one a
    /// journal entry still names).
    pub fn knows_identity(&self, name: &str) -> bool {
        self.identities.contains_key(name)
    }

    pub fn name(&self) -> BackendName {
        self.name
    }

    /// The limit on a request: from sending it to the response head, and for a call that reads
    /// the answer whole, to its last byte.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Reads an answer's body until `deadline`: a body that stalls is a timeout, never a hang.
    pub async fn read_body(
        &self,
        body: Incoming,
        deadline: tokio::time::Instant,
    ) -> Result<Bytes, BackendError> {
        match tokio::time::timeout_at(deadline, body.collect()).await {
            Err(_) => Err(self.error(BackendErrorKind::Timeout(self.request_timeout))),
            Ok(Err(e)) => Err(self.error(BackendErrorKind::Transport(describe(&e)))),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }

    /// The URI of `path_and_query` on this backend.
    fn uri(&self, path_and_query: &str) -> Result<Uri, BackendError> {
        let path = if self.path_prefix.is_empty() {
            http::uri::PathAndQuery::try_from(path_and_query)
        } else {
            http::uri::PathAndQuery::try_from(format!("{}{path_and_query}", self.path_prefix))
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query =
            Some(path.map_err(|e| self.error(BackendErrorKind::Request(e.to_string())))?);
        Uri::from_parts(parts).map_err(|e| self.error(BackendErrorKind::Request(e.to_string())))
    }

    fn error(&self, kind: BackendErrorKind) -> BackendError {
        BackendError {
            backend: self.name,
            kind,
        }
    }

    /// Sends a request as the operator; see [`Backend::send_as`].
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, BackendError> {
        self.send_as(&Caller::Operator, method, path_and_query, headers, body)
            .await
    }

    /// Sends a request on behalf of `caller` and waits for the response head; the body
    /// streams afterwards.
    ///
    /// `headers` are sent as they are, plus the credential `caller` has on this backend; the
    /// caller has already removed hop-by-hop headers and the client's credentials.
    pub async fn send_as(
        &self,
        caller: &Caller,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, BackendError> {
        let uri = self.uri(path_and_query)?;
        let (request, span) = self.request(caller, method, uri, path_and_query, headers, body)?;
        let sent = tracing::Instrument::instrument(self.client.request(request), span);
        match tokio::time::timeout(self.request_timeout, sent).await {
            Err(_) => Err(self.error(BackendErrorKind::Timeout(self.request_timeout))),
            Ok(Err(e)) if e.is_connect() => {
                Err(self.error(BackendErrorKind::Connect(describe(&e))))
            }
            Ok(Err(e)) => Err(self.error(BackendErrorKind::Transport(describe(&e)))),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// [`send_as`](Self::send_as) on a connection the request drives itself, with no task
    /// of its own (see [`crate::driven`]): the read path's, whose answers the client reads
    /// as they stream. The body must be read (or dropped) for the connection to be reused.
    pub async fn send_driven_as(
        &self,
        caller: &Caller,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<DrivenBody>, BackendError> {
        let uri = if self.path_prefix.is_empty() {
            Uri::try_from(path_and_query)
        } else {
            Uri::try_from(format!("{}{path_and_query}", self.path_prefix))
        }
        .map_err(|e| self.error(BackendErrorKind::Request(e.to_string())))?;
        headers.insert(header::HOST, self.host.clone());
        let (request, span) = self.request(caller, method, uri, path_and_query, headers, body)?;
        let sent = tracing::Instrument::instrument(self.driven.send(request), span);
        match tokio::time::timeout(self.request_timeout, sent).await {
            Err(_) => Err(self.error(BackendErrorKind::Timeout(self.request_timeout))),
            Ok(Err(DrivenError::Connect(e))) => Err(self.error(BackendErrorKind::Connect(e))),
            Ok(Err(DrivenError::Transport(e))) => {
                Err(self.error(BackendErrorKind::Transport(describe(&e))))
            }
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// The request to send: `headers` with `caller`'s credential on this backend (the
    /// `Host` header the caller's, if any), and the call's trace span.
    fn request(
        &self,
        caller: &Caller,
        method: Method,
        uri: Uri,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<(Request<Full<Bytes>>, tracing::Span), BackendError> {
        if uri.authority().is_some() {
            headers.remove(header::HOST);
        }
        headers.remove(header::CONTENT_LENGTH);
        match caller {
            Caller::Operator => {
                if let Some((name, value)) = &self.credential {
                    headers.insert(name.clone(), value.clone());
                }
            }
            Caller::Identity(identity) => match self.identities.get(identity) {
                Some(Some((name, value))) => {
                    headers.insert(name.clone(), value.clone());
                }
                Some(None) => {}
                None => {
                    return Err(self.error(BackendErrorKind::Request(format!(
                        "the identity `{identity}` is not in server.client_auth.identities"
                    ))))
                }
            },
            Caller::Forwarded(credentials) => {
                for (name, value) in credentials {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        // The call's trace span (none unless `[tracing]` is on); the store continues its trace.
        let span = crate::trace_ctx::backend_span(self.name.as_str(), &method, path_and_query);
        crate::trace_ctx::inject(&span, &mut headers);
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok((request, span))
    }

    /// Sends a JSON request the proxy made itself (the resolver, probes) as the operator and
    /// reads the whole answer, all within `request_timeout`; see [`Backend::call_as`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, BackendError> {
        self.call_as(&Caller::Operator, method, path, body).await
    }

    /// Sends a JSON request the proxy made itself (the mirror, a client write's lookups) on
    /// behalf of `caller`, and reads the whole answer.
    pub async fn call_as(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, BackendError> {
        let mut headers = HeaderMap::new();
        let bytes = match body {
            Some(value) => {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Bytes::from(serde_json::to_vec(value).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        self.call_with(caller, method, path, headers, bytes).await
    }

    /// [`call_as`](Self::call_as) with a JSON body already serialized (the replay's adds,
    /// merged from the journal's bytes).
    pub async fn call_as_json(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        json: Bytes,
    ) -> Result<Answer, BackendError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.call_with(caller, method, path, headers, json).await
    }

    async fn call_with(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        headers: HeaderMap,
        bytes: Bytes,
    ) -> Result<Answer, BackendError> {
        // One limit for the whole call, head and body.
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let response = self.send_as(caller, method, path, headers, bytes).await?;
        let (parts, body) = response.into_parts();
        let body = self.read_body(body, deadline).await?;
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `GET /api/v2/heartbeat` within `timeout`; `Ok` when it answered 200.
    pub async fn heartbeat(&self, timeout: Duration) -> Result<(), BackendError> {
        let call = async {
            let response = self
                .send(
                    Method::GET,
                    "/api/v2/heartbeat",
                    HeaderMap::new(),
                    Bytes::new(),
                )
                .await?;
            let status = response.status();
            // Read the body so the connection goes back to the pool.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(self.error(BackendErrorKind::Transport(format!(
                    "heartbeat answered {status}"
                ))))
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(self.error(BackendErrorKind::Timeout(timeout))),
        }
    }
}

/// A whole answer of a backend.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text, cut to a length that fits a log line or a dead letter.
    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(500).collect()
    }
}

/// A client for an HTTP service that is not a Chroma store (the admin API, an alert webhook),
/// with the same pooling, TLS and timeouts as a [`Backend`], named for what it is: its errors
/// and logs carry the service's name, never a store's.
#[derive(Debug)]
pub struct ServiceClient {
    /// What it talks to (`admin API`, `alert webhook`), for errors.
    service: &'static str,
    /// The pooled client; its store name is never shown.
    http: Backend,
}

/// A service that failed to answer.
#[derive(Debug, thiserror::Error)]
#[error("the {service} {kind}")]
pub struct ServiceError {
    /// Which service failed.
    pub service: &'static str,
    /// How it failed.
    pub kind: BackendErrorKind,
}

impl ServiceClient {
    /// A client of the service at `url` (its query and fragment dropped), each request within
    /// `timeout`.
    pub fn new(
        service: &'static str,
        url: &url::Url,
        timeout: Duration,
    ) -> Result<ServiceClient, String> {
        ServiceClient::with_tls(service, url, timeout, None, None)
    }

    /// [`ServiceClient::new`] for an `https://` service whose certificate is signed by the CA
    /// in `ca_file` (beside the system's roots), presenting `identity` when it asks for a
    /// client certificate.
    pub fn with_tls(
        service: &'static str,
        url: &url::Url,
        timeout: Duration,
        ca_file: Option<PathBuf>,
        identity: Option<&ClientIdentity>,
    ) -> Result<ServiceClient, String> {
        let mut base = url.clone();
        base.set_query(None);
        base.set_fragment(None);
        let config = BackendConfig {
            url: base,
            connect_timeout: timeout.min(Duration::from_secs(5)),
            request_timeout: timeout,
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle: 2,
            auth: None,
            ca_file,
        };
        // A build error names the store it was built as; say the service and the cause.
        let http = Backend::with_identity(BackendName::Old, &config, None, identity).map_err(
            |e| match e {
                BackendBuildError::Url { url, .. } => format!("{url} cannot be used as a base URI"),
                BackendBuildError::Tls { source, .. } => format!("TLS setup failed: {source}"),
                BackendBuildError::CaFile { reason, .. } => reason,
                BackendBuildError::Token { .. } | BackendBuildError::IdentityToken { .. } => {
                    "the token is not a valid header value".to_owned()
                }
                BackendBuildError::ClientIdentity { reason, .. } => {
                    format!("the client certificate: {reason}")
                }
            },
        )?;
        Ok(ServiceClient { service, http })
    }

    /// Sends a request and waits for the response head; see [`Backend::send`].
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, ServiceError> {
        self.http
            .send(method, path_and_query, headers, body)
            .await
            .map_err(|e| self.error(e))
    }

    /// Sends a JSON request and reads the whole answer; see [`Backend::call`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, ServiceError> {
        self.http
            .call(method, path, body)
            .await
            .map_err(|e| self.error(e))
    }

    fn error(&self, error: BackendError) -> ServiceError {
        ServiceError {
            service: self.service,
            kind: error.kind,
        }
    }
}

/// The header carrying `token` as `kind` says, marked sensitive; `None` when the token cannot be
/// a header value.
fn credential(kind: AuthHeader, token: &Secret) -> Option<(HeaderName, HeaderValue)> {
    let (name, value) = match kind {
        AuthHeader::Bearer => (header::AUTHORIZATION, format!("Bearer {}", token.expose())),
        AuthHeader::XChromaToken => (X_CHROMA_TOKEN, token.expose().to_owned()),
    };
    let mut value = HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Some((name, value))
}

/// The error and its sources in one line (hyper's top-level message alone says little).
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn tls_config(
    name: BackendName,
    config: &BackendConfig,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, BackendBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    if config.url.scheme() == "https" {
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::warn!(backend = %name, %error, "could not load a system root certificate");
        }
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 && config.ca_file.is_none() {
            tracing::warn!(backend = %name, "no system root certificates found; set ca_file");
        }
    }
    if let Some(path) = &config.ca_file {
        let file = std::fs::File::open(path).map_err(|e| BackendBuildError::CaFile {
            backend: name,
            reason: format!("{}: {e}", path.display()),
        })?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(file))
            .collect::<Result<_, _>>()
            .map_err(|e| BackendBuildError::CaFile {
                backend: name,
                reason: format!("{}: {e}", path.display()),
            })?;
        for cert in certs {
            roots.add(cert).map_err(|source| BackendBuildError::Tls {
                backend: name,
                source,
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| BackendBuildError::Tls {
            backend: name,
            source,
        })?
        .with_root_certificates(roots);
    let config = match identity {
        None => config.with_no_client_auth(),
        Some(identity) => {
            let identity_error = |reason: String| BackendBuildError::ClientIdentity {
                backend: name,
                reason,
            };
            let certs = crate::tls::read_certs(&identity.cert)
                .map_err(|e| identity_error(e.to_string()))?;
            let key =
                crate::tls::read_key(&identity.key).map_err(|e| identity_error(e.to_string()))?;
            config
                .with_client_auth_cert(certs, key)
                .map_err(|e| identity_error(e.to_string()))?
        }
    };
    Ok(config)
}

/// The two stores.
#[derive(Debug)]
pub struct Backends {
    pub old: Backend,
    pub new: Backend,
}

impl Backends {
    pub fn from_config(
        config: &shift_config::BackendsConfig,
        secrets: &Secrets,
    ) -> Result<Backends, BackendBuildError> {
        Ok(Backends {
            old: Backend::new(
                BackendName::Old,
                &config.old,
                secrets.backend(BackendName::Old),
            )?
            .with_identities(&secrets.identities)?,
            new: Backend::new(
                BackendName::New,
                &config.new,
                secrets.backend(BackendName::New),
            )?
            .with_identities(&secrets.identities)?,
        })
    }

    pub fn get(&self, name: BackendName) -> &Backend {
        match name {
            BackendName::Old => &self.old,
            BackendName::New => &self.new,
        }
    }
}
