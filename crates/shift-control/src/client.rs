//! A client of a running proxy's admin API, one typed method per route, for the commands that
//! drive a proxy (`chroma-shift ctl`, `backfill`, `verify --repair`), the migration tools and
//! the benches. It speaks the types of [`crate::api`], over the proxy's one HTTP client
//! ([`ServiceClient`], named `admin API` in its errors).

use std::path::PathBuf;
use std::time::Duration;

use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shift_config::{BackendName, Config, MirrorMode, Secret};
use shift_migrate::repair::{Queued, Started};
use shift_proxy::backend::{ClientIdentity, ServiceClient};

use crate::api::{
    ApiError, AuditEntries, AuditEntry, BackfillProgress, BackfillRequest, DeadLetter,
    DeadLetterPage, DeadLetters, Direction, Dropped, ReadPolicy, Readiness, RepairQueued,
    RepairRequest, Retried, ShadowDetail, Status, SwitchReport, SwitchRequest, Topology,
    TopologyChanged, WriteModeRequest,
};

/// How long a call may take: a switch may hold writes for its whole timeout, so longer than
/// that.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an admin call did not give the answer asked for.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The client could not be built: no token, or a URL it cannot use.
    #[error("{0}")]
    Setup(String),
    /// The API could not be reached or did not answer in time.
    #[error("the admin API at {url} {reason}")]
    Unreachable { url: url::Url, reason: String },
    /// The API answered with an error (a wrong token, an unknown seq, a running backfill).
    #[error("the admin API at {url} answered {status}: {}", .error.message)]
    Api {
        url: url::Url,
        status: StatusCode,
        error: ApiError,
    },
    /// The API answered something this client cannot read.
    #[error("the admin API at {url} answered {status} with an unexpected body: {reason}")]
    Unexpected {
        url: url::Url,
        status: StatusCode,
        reason: String,
    },
}

impl AdminError {
    /// The status the API answered with, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            AdminError::Api { status, .. } | AdminError::Unexpected { status, .. } => Some(*status),
            AdminError::Setup(_) | AdminError::Unreachable { .. } => None,
        }
    }

    /// The API's error answer, when it gave one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            AdminError::Api { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The environment variable naming the CA file that signed an `https://` admin listener's
/// certificate (`chroma-shift ctl --ca-file`).
pub const ADMIN_CA_ENV: &str = "CHROMA_SHIFT_ADMIN_CA";
/// The environment variable naming the client certificate for an admin listener that asks
/// for one (`[admin.tls] client_ca`; `chroma-shift ctl --client-cert`).
pub const ADMIN_CLIENT_CERT_ENV: &str = "CHROMA_SHIFT_ADMIN_CLIENT_CERT";
/// The environment variable naming that certificate's key (`chroma-shift ctl --client-key`).
pub const ADMIN_CLIENT_KEY_ENV: &str = "CHROMA_SHIFT_ADMIN_CLIENT_KEY";

/// How the client reaches an `https://` admin listener: the CA that signed its certificate
/// (beside the system's roots) and, when the listener asks for one, a client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminTls {
    /// PEM root certificates to trust for the admin listener.
    pub ca_file: Option<PathBuf>,
    /// The client certificate and key presented to it.
    pub identity: Option<ClientIdentity>,
}

impl AdminTls {
    /// From [`ADMIN_CA_ENV`], [`ADMIN_CLIENT_CERT_ENV`] and [`ADMIN_CLIENT_KEY_ENV`].
    pub fn from_env() -> Result<AdminTls, AdminError> {
        let path = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        AdminTls::new(
            path(ADMIN_CA_ENV),
            path(ADMIN_CLIENT_CERT_ENV),
            path(ADMIN_CLIENT_KEY_ENV),
        )
    }

    /// A CA file and a client certificate with its key; a certificate without its key (or
    /// the reverse) is refused.
    pub fn new(
        ca_file: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<AdminTls, AdminError> {
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
            (None, None) => None,
            _ => {
                return Err(AdminError::Setup(
                    "a client certificate needs its key, and a key its certificate".to_owned(),
                ))
            }
        };
        Ok(AdminTls { ca_file, identity })
    }

    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.identity.is_some()
    }
}

/// A client of one proxy's admin API.
#[derive(Debug)]
pub struct AdminClient {
    http: ServiceClient,
    token: Secret,
    /// Where it points, for messages.
    url: url::Url,
}

impl AdminClient {
    /// A client of the admin API at `url`, calling with `token`.
    pub fn new(url: url::Url, token: Secret) -> Result<AdminClient, AdminError> {
        AdminClient::with_tls(url, token, &AdminTls::default())
    }

    /// A client of the admin API at an `https://` `url` (TLS settings need one).
    pub fn with_tls(
        url: url::Url,
        token: Secret,
        tls: &AdminTls,
    ) -> Result<AdminClient, AdminError> {
        if tls.is_set() && url.scheme() != "https" {
            return Err(AdminError::Setup(format!(
                "a CA file or a client certificate needs an https:// admin URL, not {url}"
            )));
        }
        let http = ServiceClient::with_tls(
            "admin API",
            &url,
            CALL_TIMEOUT,
            tls.ca_file.clone(),
            tls.identity.as_ref(),
        )
        .map_err(|reason| AdminError::Setup(format!("cannot use the admin URL {url}: {reason}")))?;
        Ok(AdminClient { http, token, url })
    }

    /// The admin API of the proxy a config describes, with the token from the environment
    /// variable the config names; over TLS when the config has `[admin.tls]`, with the CA
    /// file and client certificate from [`AdminTls::from_env`].
    pub fn from_config(config: &Config) -> Result<AdminClient, AdminError> {
        let mut addr = config.server.admin_listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let (scheme, tls) = match config.admin.tls {
            Some(_) => ("https", AdminTls::from_env()?),
            None => ("http", AdminTls::default()),
        };
        let url: url::Url = format!("{scheme}://{addr}")
            .parse()
            .map_err(|e| AdminError::Setup(format!("the admin address {addr}: {e}")))?;
        let token = std::env::var(&config.admin.token_env)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                AdminError::Setup(format!("no admin token: set {}", config.admin.token_env))
            })?;
        AdminClient::with_tls(url, Secret::new(token), &tls)
    }

    /// Where it points.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// `GET /admin/status`.
    pub async fn status(&self) -> Result<Status, AdminError> {
        self.get("/admin/status").await
    }

    /// `GET /readyz` (ready or not: both are answers).
    pub async fn readiness(&self) -> Result<Readiness, AdminError> {
        self.call(
            Method::GET,
            "/readyz",
            None::<&()>,
            &[StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE],
        )
        .await
    }

    /// `POST /admin/cutover` or `/admin/rollback`: the report, also when the switch was
    /// refused (`refused` says why).
    pub async fn switch(
        &self,
        direction: Direction,
        request: &SwitchRequest,
    ) -> Result<SwitchReport, AdminError> {
        let path = match direction {
            Direction::Cutover => "/admin/cutover",
            Direction::Rollback => "/admin/rollback",
        };
        self.call(
            Method::POST,
            path,
            Some(request),
            &[StatusCode::OK, StatusCode::CONFLICT],
        )
        .await
    }

    /// `POST /admin/cutover`.
    pub async fn cutover(&self, request: &SwitchRequest) -> Result<SwitchReport, AdminError> {
        self.switch(Direction::Cutover, request).await
    }

    /// `POST /admin/rollback`.
    pub async fn rollback(&self, request: &SwitchRequest) -> Result<SwitchReport, AdminError> {
        self.switch(Direction::Rollback, request).await
    }

    /// `POST /admin/write-mode`; the topology now in force.
    pub async fn set_write_mode(&self, mode: MirrorMode) -> Result<Topology, AdminError> {
        self.change("/admin/write-mode", Some(&WriteModeRequest { mode }))
            .await
    }

    /// `POST /admin/read-policy`; the topology now in force.
    pub async fn set_read_policy(&self, policy: ReadPolicy) -> Result<Topology, AdminError> {
        self.change("/admin/read-policy", Some(&policy)).await
    }

    /// `POST /admin/pause`: writes are held at the gate.
    pub async fn pause(&self) -> Result<Topology, AdminError> {
        self.change("/admin/pause", None::<&()>).await
    }

    /// `POST /admin/resume`: held writes go.
    pub async fn resume(&self) -> Result<Topology, AdminError> {
        self.change("/admin/resume", None::<&()>).await
    }

    /// `GET /admin/dead-letters`: a page, oldest first.
    pub async fn dead_letters(&self, page: DeadLetterPage) -> Result<Vec<DeadLetter>, AdminError> {
        let mut path = "/admin/dead-letters".to_owned();
        let mut separator = '?';
        if let Some(limit) = page.limit {
            path.push_str(&format!("{separator}limit={limit}"));
            separator = '&';
        }
        if let Some(after) = page.after {
            path.push_str(&format!("{separator}after={after}"));
        }
        let page: DeadLetters = self.get(&path).await?;
        Ok(page.dead_letters)
    }

    /// `POST /admin/dead-letters/{seq}/retry`: back at the end of its target's journal.
    pub async fn retry_dead_letter(&self, seq: u64) -> Result<Retried, AdminError> {
        self.post(&format!("/admin/dead-letters/{seq}/retry"), None::<&()>)
            .await
    }

    /// `POST /admin/dead-letters/{seq}/drop`: deleted for good.
    pub async fn drop_dead_letter(&self, seq: u64) -> Result<Dropped, AdminError> {
        self.post(&format!("/admin/dead-letters/{seq}/drop"), None::<&()>)
            .await
    }

    /// `GET /admin/audit`: the newest `limit` admin actions (100 when `None`), newest first.
    pub async fn audit(&self, limit: Option<usize>) -> Result<Vec<AuditEntry>, AdminError> {
        let path = match limit {
            Some(limit) => format!("/admin/audit?limit={limit}"),
            None => "/admin/audit".to_owned(),
        };
        let page: AuditEntries = self.get(&path).await?;
        Ok(page.entries)
    }

    /// `GET /admin/shadow`.
    pub async fn shadow(&self) -> Result<ShadowDetail, AdminError> {
        self.get("/admin/shadow").await
    }

    /// `POST /admin/backfill`: starts one (a 409 [`AdminError::Api`] while another runs).
    pub async fn start_backfill(
        &self,
        request: &BackfillRequest,
    ) -> Result<BackfillProgress, AdminError> {
        self.post("/admin/backfill", Some(request)).await
    }

    /// `GET /admin/backfill`.
    pub async fn backfill_progress(&self) -> Result<BackfillProgress, AdminError> {
        self.get("/admin/backfill").await
    }

    /// `POST /admin/backfill/cancel`; its checkpoints stay.
    pub async fn cancel_backfill(&self) -> Result<BackfillProgress, AdminError> {
        self.post("/admin/backfill/cancel", None::<&()>).await
    }

    /// `POST /admin/repair`: queues reconciliations (a 404 [`AdminError::Api`] when the
    /// proxy does not know the collection by that id).
    pub async fn repair(&self, request: &RepairRequest) -> Result<RepairQueued, AdminError> {
        self.post("/admin/repair", Some(request)).await
    }

    /// `GET /admin/finalize`: the last finalize, the checks now, the last verify.
    pub async fn finalize_status(&self) -> Result<crate::api::FinalizeStatus, AdminError> {
        self.get("/admin/finalize").await
    }

    /// `POST /admin/finalize`: accepted (pending until the window ends), or a 409
    /// [`AdminError::Api`] naming the failing checks.
    pub async fn finalize(&self) -> Result<crate::api::FinalizeStatus, AdminError> {
        self.post("/admin/finalize", None::<&()>).await
    }

    /// `POST /admin/finalize/undo`: undoes a pending finalize (409 when none is pending).
    pub async fn undo_finalize(&self) -> Result<crate::api::FinalizeStatus, AdminError> {
        self.post("/admin/finalize/undo", None::<&()>).await
    }

    /// `POST /admin/verify`: records a verify's result, which finalize's checks read.
    pub async fn record_verify(
        &self,
        result: &crate::api::VerifyResult,
    ) -> Result<crate::api::VerifyRecord, AdminError> {
        self.post("/admin/verify", Some(result)).await
    }

    async fn change<B: Serialize>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<Topology, AdminError> {
        let changed: TopologyChanged = self.post(path, body).await?;
        Ok(changed.topology)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, AdminError> {
        self.call(Method::GET, path, None::<&()>, &[StatusCode::OK])
            .await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, AdminError> {
        self.call(
            Method::POST,
            path,
            body,
            &[StatusCode::OK, StatusCode::ACCEPTED],
        )
        .await
    }

    /// One call: the answer as `T` when the status is one of `answers`, the API's error
    /// otherwise.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        answers: &[StatusCode],
    ) -> Result<T, AdminError> {
        let mut headers = http::HeaderMap::new();
        let mut bearer = http::HeaderValue::from_str(&format!("Bearer {}", self.token.expose()))
            .map_err(|_| AdminError::Setup("the admin token is not a valid header value".into()))?;
        bearer.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, bearer);
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let bytes = match body {
            Some(body) => serde_json::to_vec(body).map_err(|e| AdminError::Setup(e.to_string()))?,
            None => Vec::new(),
        };
        let response = self
            .http
            .send(method, path, headers, bytes.into())
            .await
            .map_err(|e| AdminError::Unreachable {
                url: self.url.clone(),
                reason: e.kind.to_string(),
            })?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|e| AdminError::Unreachable {
                url: self.url.clone(),
                reason: format!("failed mid-answer: {e}"),
            })?
            .to_bytes();
        let unexpected = |reason: String| AdminError::Unexpected {
            url: self.url.clone(),
            status,
            reason,
        };
        if answers.contains(&status) {
            return serde_json::from_slice(&body).map_err(|e| unexpected(e.to_string()));
        }
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(error) => Err(AdminError::Api {
                url: self.url.clone(),
                status,
                error,
            }),
            Err(_) => Err(unexpected(
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            )),
        }
    }
}

/// The migration tools reach the proxy through its admin API.
impl shift_migrate::repair::ProxyControl for AdminClient {
    async fn journal_entries(&self, target: BackendName) -> Result<u64, String> {
        let status = self.status().await.map_err(|e| e.to_string())?;
        Ok(status.journal.get(target).entries)
    }

    async fn start_backfill(&self, request: &BackfillRequest) -> Result<Started, String> {
        match AdminClient::start_backfill(self, request).await {
            Ok(_) => Ok(Started::Started),
            Err(error) if error.status() == Some(StatusCode::CONFLICT) => Ok(Started::Busy),
            Err(error) => Err(error.to_string()),
        }
    }

    async fn backfill_progress(&self) -> Result<BackfillProgress, String> {
        AdminClient::backfill_progress(self)
            .await
            .map_err(|e| e.to_string())
    }

    async fn reconcile(&self, collection: &str, ids: &[String]) -> Result<Queued, String> {
        let request = RepairRequest {
            collection: collection.to_owned(),
            ids: ids.to_vec(),
        };
        match self.repair(&request).await {
            Ok(_) => Ok(Queued::Queued),
            Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => {
                Ok(Queued::UnknownCollection)
            }
            Err(error) => Err(error.to_string()),
        }
    }
}
