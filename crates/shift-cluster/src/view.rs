//! The live members as this replica sees them: the member keys (each on its replica's lease)
//! listed at join and watched; a key is gone once its lease expired or was revoked. After a
//! broken watch the list is read again, so nothing missed while it was down stays wrong.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::task::JoinHandle;

use crate::member::MemberRecord;
use crate::{etcd_call, ClusterError, Etcd};

/// Pause before listing and watching again after a break.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The live members, sorted by id.
#[derive(Debug, Default)]
pub struct MemberView {
    members: RwLock<Arc<Vec<MemberRecord>>>,
}

impl MemberView {
    /// The members now: a pointer copy.
    pub fn live(&self) -> Arc<Vec<MemberRecord>> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, members: &BTreeMap<String, MemberRecord>) {
        let list: Vec<MemberRecord> = members.values().cloned().collect();
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list);
    }
}

/// Lists the members under `prefix` and keeps the view current in the background.
pub(crate) async fn follow(
    client: &Etcd,
    prefix: String,
    timeout: Duration,
) -> Result<(Arc<MemberView>, JoinHandle<()>), ClusterError> {
    let view = Arc::new(MemberView::default());
    let (members, revision) = list(client, &prefix, timeout).await?;
    view.set(&members);
    let task = tokio::spawn(watch(
        client.clone(),
        prefix,
        timeout,
        view.clone(),
        members,
        revision,
    ));
    Ok((view, task))
}

async fn list(
    client: &Etcd,
    prefix: &str,
    timeout: Duration,
) -> Result<(BTreeMap<String, MemberRecord>, i64), ClusterError> {
    let mut etcd = client.handle();
    let answer = etcd_call(
        timeout,
        etcd.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut members = BTreeMap::new();
    for kv in answer.kvs() {
        match serde_json::from_slice::<MemberRecord>(kv.value()) {
            Ok(member) => {
                members.insert(String::from_utf8_lossy(kv.key()).into_owned(), member);
            }
            Err(error) => tracing::error!(%error, "unreadable member key ignored"),
        }
    }
    let revision = answer.header().map(|h| h.revision()).unwrap_or(0);
    Ok((members, revision))
}

async fn watch(
    client: Etcd,
    prefix: String,
    timeout: Duration,
    view: Arc<MemberView>,
    mut members: BTreeMap<String, MemberRecord>,
    mut revision: i64,
) {
    loop {
        let mut etcd = client.handle();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        match etcd.watch(prefix.clone(), Some(options)).await {
            Ok(mut stream) => {
                while let Ok(Some(answer)) = stream.message().await {
                    for event in answer.events() {
                        let Some(kv) = event.kv() else { continue };
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        match event.event_type() {
                            EventType::Put => {
                                if let Ok(member) = serde_json::from_slice(kv.value()) {
                                    members.insert(key, member);
                                }
                            }
                            EventType::Delete => {
                                members.remove(&key);
                            }
                        }
                    }
                    view.set(&members);
                    if answer.canceled() {
                        break;
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot watch the members in etcd"),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        match list(&client, &prefix, timeout).await {
            Ok((listed, at)) => {
                members = listed;
                revision = at;
                view.set(&members);
            }
            Err(error) => tracing::warn!(%error, "cannot list the members in etcd"),
        }
    }
}
