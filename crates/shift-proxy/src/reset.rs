//! `POST /api/v2/reset`: both stores or neither, refused unless the config allows it.

use bytes::Bytes;
use http::{Method, StatusCode};
use shift_chroma::error::{kind, ChromaError};

use crate::error::{error_response, BackendError, BackendErrorKind, ProxyError};
use crate::forward::{relay, send, state_failure, Answered, BufferedRequest};
use crate::plane::DataPlaneState;

/// How long a reset waits for the secondary's journal to empty.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Resets the primary, then (once its collections are forgotten) the secondary.
pub async fn reset(
    plane: &DataPlaneState,
    request: BufferedRequest,
) -> Result<Answered, ProxyError> {
    if !plane.writes.allow_reset {
        return Ok(Answered {
            response: error_response(
                StatusCode::FORBIDDEN,
                ChromaError::new(
                    "AuthorizationError",
                    "Reset is disabled at chroma-shift; set [mirror] allow_reset = true to reset both stores",
                ),
            ),
            backend: plane.topology.current().primary,
        });
    }
    let _pass = plane.gate.enter().await;
    let _lifecycle = plane.locks.lifecycle().await;
    let topology = plane.topology.current();
    let (primary, secondary) = (topology.primary, topology.secondary());
    // Queued writes would land after the reset: wait for them first.
    let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
    while plane.journal.lag(secondary).entries > 0 {
        if tokio::time::Instant::now() > deadline {
            return Ok(Answered {
                response: error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ChromaError::new(
                        kind::INTERNAL,
                        "Reset refused: the secondary store still has queued writes; try again when the journal is empty",
                    ),
                ),
                backend: primary,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let response = send(plane, primary, &request, "/api/v2/reset", Bytes::new()).await?;
    if response.status().is_success() {
        // The primary's collections are gone whatever the secondary says: forget their ids
        // first, so no later write is sent to an id that no longer exists.
        plane.resolver.map.clear().await.map_err(state_failure)?;
        let answer = plane
            .resolver
            .backends
            .get(secondary)
            // As the client: its reset must not run with the operator's key.
            .call_as(&request.caller, Method::POST, "/api/v2/reset", None)
            .await?;
        if !answer.status.is_success() {
            return Err(ProxyError::Backend(BackendError {
                backend: secondary,
                kind: BackendErrorKind::Transport(format!(
                    "the primary was reset, the secondary refused: {} {}",
                    answer.status,
                    answer.text()
                )),
            }));
        }
    }
    Ok(Answered {
        response: relay(response),
        backend: primary,
    })
}
