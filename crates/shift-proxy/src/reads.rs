//! The read path: reads go to the primary with the client's collection id translated to the
//! primary's, and answers that carry collection objects come back with the client's ids.

use http::Response;
use http_body_util::BodyExt;
use serde_json::Value;
use shift_chroma::Operation;

use crate::error::{BackendError, BackendErrorKind, ProxyError};
use crate::writes::{relay, relay_json, resolve_failure, Answered, BufferedRequest, Mirror};

/// Reads whose answer holds collection objects.
fn returns_collections(operation: Operation) -> bool {
    matches!(
        operation,
        Operation::GetCollection
            | Operation::GetCollectionById
            | Operation::GetCollectionByCrn
            | Operation::ListCollections
    )
}

impl Mirror {
    pub async fn read(&self, request: BufferedRequest) -> Result<Answered, ProxyError> {
        let topology = self.topology.load_full();
        let primary = topology.primary;
        let params = &request.route.params;

        // A client id the map knows (or can find) is sent as the primary's id; anything else
        // (a name, an id no store has) goes as it is and Chroma answers it.
        let mut collection = None;
        if let (Some(tenant), Some(database), Some(segment)) = (
            params.tenant.as_deref(),
            params.database.as_deref(),
            params.collection.as_deref(),
        ) {
            if uuid::Uuid::parse_str(segment).is_ok() {
                let entry = self
                    .resolver
                    .by_client_id(primary, tenant, database, segment)
                    .await
                    .map_err(resolve_failure)?;
                collection = entry
                    .filter(|e| !e.deleted)
                    .and_then(|e| e.id_on(primary).map(str::to_owned));
            }
        }
        let path = self.backend_path(primary, &request, collection.as_deref());
        let response = self
            .resolver
            .backends
            .get(primary)
            .send(
                request.method.clone(),
                &path,
                request.headers.clone(),
                request.body.clone(),
            )
            .await?;
        if !returns_collections(request.route.operation) || !response.status().is_success() {
            return Ok(Answered {
                response: relay(response),
                backend: primary,
            });
        }
        let (parts, body) = response.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| {
                ProxyError::Backend(BackendError {
                    backend: primary,
                    kind: BackendErrorKind::Transport(e.to_string()),
                })
            })?
            .to_bytes();
        let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
            let mut parts = parts;
            crate::headers::strip_hop_by_hop(&mut parts.headers);
            return Ok(Answered {
                response: Response::from_parts(parts, crate::body::full(bytes)),
                backend: primary,
            });
        };
        self.resolver
            .rewrite_collections(primary, &mut value)
            .await
            .map_err(resolve_failure)?;
        Ok(Answered {
            response: relay_json(parts, &value),
            backend: primary,
        })
    }
}
