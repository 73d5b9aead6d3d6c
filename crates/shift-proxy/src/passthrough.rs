//! Passthrough: requests that change nothing the proxy mirrors (heartbeats, identity, writes
//! the stores do not know) go to the primary as they are, with namespaces renamed.

use crate::error::ProxyError;
use crate::forward::{backend_path, relay, send_driven, Answered, BufferedRequest};
use crate::plane::DataPlaneState;
use crate::topology::Topology;

/// Sends the request to the primary as it is (with namespaces renamed), mirroring nothing.
pub async fn passthrough(
    plane: &DataPlaneState,
    topology: &Topology,
    request: BufferedRequest,
) -> Result<Answered, ProxyError> {
    let path = backend_path(plane, topology.primary, &request, None);
    let response = send_driven(plane, topology.primary, &request, &path).await?;
    Ok(Answered {
        response: relay(response),
        backend: topology.primary,
    })
}
