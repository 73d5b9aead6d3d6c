//! A typed Chroma v2 client for the migration tools, over the proxy's one HTTP client
//! ([`Backend`]). It speaks in one store's own ids and names; translating between the stores
//! is the caller's business.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use shift_chroma::paths;
use shift_config::BackendName;
use shift_proxy::backend::Answer;
use shift_proxy::error::BackendError;
use shift_proxy::Backends;

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Unreachable, timed out, 5xx or 429: worth retrying.
    #[error("{0}")]
    Unavailable(String),
    /// Refused (4xx): retrying the same call will not help.
    #[error("{0}")]
    Refused(String),
    /// Not found (404, or Chroma's "does not exist").
    #[error("{0}")]
    NotFound(String),
}

impl ClientError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Unavailable(_))
    }
}

impl From<BackendError> for ClientError {
    fn from(error: BackendError) -> ClientError {
        ClientError::Unavailable(error.to_string())
    }
}

/// A collection as a store reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Collection {
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub database: String,
    pub metadata: Option<Value>,
    pub dimension: Option<i64>,
    pub configuration_json: Option<Value>,
    /// The whole object, for recreating the collection elsewhere.
    #[serde(skip)]
    pub raw: Value,
}

pub use shift_chroma::records::{QueryResult, Records};

/// One of the two stores.
#[derive(Debug, Clone)]
pub struct ChromaClient {
    backends: Arc<Backends>,
    store: BackendName,
}

fn check(what: &str, answer: Answer) -> Result<Answer, ClientError> {
    let status = answer.status;
    if status.is_success() {
        return Ok(answer);
    }
    let text = format!("{what} answered {status}: {}", answer.text());
    if status == StatusCode::NOT_FOUND || answer.text().contains("does not exist") {
        Err(ClientError::NotFound(text))
    } else if status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Err(ClientError::Unavailable(text))
    } else {
        Err(ClientError::Refused(text))
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, answer: &Answer) -> Result<T, ClientError> {
    serde_json::from_slice(&answer.body).map_err(|e| {
        ClientError::Refused(format!(
            "{what}: unexpected answer ({e}): {}",
            answer.text()
        ))
    })
}

impl ChromaClient {
    pub fn new(backends: Arc<Backends>, store: BackendName) -> ChromaClient {
        ChromaClient { backends, store }
    }

    pub fn store(&self) -> BackendName {
        self.store
    }

    /// POSTs `body` to the collection's `verb` (`get`, `query`) and reads the answer as a `T`;
    /// `what` names the call in errors.
    async fn post_verb<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        (tenant, database, id): (&str, &str, &str),
        verb: &str,
        body: &Value,
    ) -> Result<T, ClientError> {
        let path = paths::collection_verb(tenant, database, id, verb);
        let answer = self.call(what, Method::POST, &path, Some(body)).await?;
        parse(what, &answer)
    }

    async fn call(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        check(
            what,
            self.backends
                .get(self.store)
                .call(method, path, body)
                .await?,
        )
    }

    /// `max_batch_size` from the pre-flight checks.
    pub async fn max_batch_size(&self) -> Result<usize, ClientError> {
        let answer = self
            .call(
                "pre-flight-checks",
                Method::GET,
                "/api/v2/pre-flight-checks",
                None,
            )
            .await?;
        Ok(answer.json()["max_batch_size"]
            .as_u64()
            .map_or(1000, |n| n as usize))
    }

    /// Whether the store knows a tenant (listing the databases of an unknown one answers an
    /// empty list, not an error).
    pub async fn tenant_exists(&self, tenant: &str) -> Result<bool, ClientError> {
        match self
            .call("get tenant", Method::GET, &paths::tenant(tenant), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(ClientError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The databases of a tenant.
    pub async fn databases(&self, tenant: &str) -> Result<Vec<String>, ClientError> {
        let answer = self
            .call(
                "list databases",
                Method::GET,
                &paths::databases(tenant),
                None,
            )
            .await?;
        let list: Vec<Value> = parse("list databases", &answer)?;
        Ok(list
            .iter()
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// Every collection of a database (paged).
    pub async fn collections(
        &self,
        tenant: &str,
        database: &str,
    ) -> Result<Vec<Collection>, ClientError> {
        const PAGE: usize = 100;
        let mut all = Vec::new();
        loop {
            let path = format!(
                "{}?limit={PAGE}&offset={}",
                paths::collections(tenant, database),
                all.len()
            );
            let answer = self
                .call("list collections", Method::GET, &path, None)
                .await?;
            let page: Vec<Value> = parse("list collections", &answer)?;
            let n = page.len();
            for raw in page {
                let mut collection: Collection =
                    serde_json::from_value(raw.clone()).map_err(|e| {
                        ClientError::Refused(format!("unexpected collection object: {e}"))
                    })?;
                collection.raw = raw;
                all.push(collection);
            }
            if n < PAGE {
                return Ok(all);
            }
        }
    }

    /// One collection by id or name; `None` when it does not exist.
    pub async fn collection(
        &self,
        tenant: &str,
        database: &str,
        id_or_name: &str,
    ) -> Result<Option<Collection>, ClientError> {
        match self
            .call(
                "get collection",
                Method::GET,
                &paths::collection(tenant, database, id_or_name),
                None,
            )
            .await
        {
            Ok(answer) => {
                let raw = answer.json();
                let mut collection: Collection = parse("get collection", &answer)?;
                collection.raw = raw;
                Ok(Some(collection))
            }
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn count(&self, tenant: &str, database: &str, id: &str) -> Result<u64, ClientError> {
        let path = format!(
            "{}?read_level=index_and_wal",
            paths::collection_verb(tenant, database, id, "count")
        );
        let answer = self.call("count", Method::GET, &path, None).await?;
        parse("count", &answer)
    }

    /// A page of ids only (`include: []`), in the store's order.
    pub async fn ids_page(
        &self,
        tenant: &str,
        database: &str,
        id: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<String>, ClientError> {
        let body = json!({"include": [], "limit": limit, "offset": offset});
        let page: Records = self
            .post_verb("get ids", (tenant, database, id), "get", &body)
            .await?;
        Ok(page.ids)
    }

    /// Every id of a collection, sorted: a snapshot to page the records by.
    pub async fn all_ids(
        &self,
        tenant: &str,
        database: &str,
        id: &str,
    ) -> Result<Vec<String>, ClientError> {
        const PAGE: usize = 50_000;
        let mut ids = Vec::new();
        loop {
            let page = self.ids_page(tenant, database, id, PAGE, ids.len()).await?;
            let n = page.len();
            ids.extend(page);
            if n < PAGE {
                break;
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Full records by id.
    pub async fn get(
        &self,
        tenant: &str,
        database: &str,
        id: &str,
        ids: &[String],
    ) -> Result<Records, ClientError> {
        let body = json!({"ids": ids, "include": ["embeddings", "metadatas", "documents", "uris"]});
        self.post_verb("get", (tenant, database, id), "get", &body)
            .await
    }

    pub async fn upsert(
        &self,
        tenant: &str,
        database: &str,
        id: &str,
        records: &Records,
    ) -> Result<(), ClientError> {
        let path = paths::collection_verb(tenant, database, id, "upsert");
        self.call("upsert", Method::POST, &path, Some(&records.upsert_body()))
            .await
            .map(|_| ())
    }

    pub async fn delete(
        &self,
        tenant: &str,
        database: &str,
        id: &str,
        ids: &[String],
    ) -> Result<(), ClientError> {
        let path = paths::collection_verb(tenant, database, id, "delete");
        self.call("delete", Method::POST, &path, Some(&json!({"ids": ids})))
            .await
            .map(|_| ())
    }

    /// Nearest neighbours of each embedding, with distances.
    pub async fn query(
        &self,
        tenant: &str,
        database: &str,
        id: &str,
        embeddings: &[Vec<f32>],
        k: usize,
    ) -> Result<QueryResult, ClientError> {
        let body =
            json!({"query_embeddings": embeddings, "n_results": k, "include": ["distances"]});
        self.post_verb("query", (tenant, database, id), "query", &body)
            .await
    }
}
