//! The live members as this replica sees them: the member keys (each on its replica's lease),
//! kept by [`Watched`]; a key is gone once its lease expired or was revoked.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::member::MemberRecord;
use crate::watched::Watched;
use crate::{ClusterError, Etcd};

/// The live members.
#[derive(Debug)]
pub struct MemberView {
    watched: Arc<Watched<MemberRecord>>,
}

impl MemberView {
    /// The members now, sorted by id.
    pub fn live(&self) -> Arc<Vec<MemberRecord>> {
        Arc::new(self.watched.snapshot().values().cloned().collect())
    }
}

/// Lists the members under `prefix` and keeps the view current in the background.
pub(crate) async fn follow(
    client: &Etcd,
    prefix: String,
    timeout: Duration,
) -> Result<(Arc<MemberView>, JoinHandle<()>), ClusterError> {
    let (watched, task) = Watched::follow(client, prefix, timeout).await?;
    Ok((Arc::new(MemberView { watched }), task))
}
