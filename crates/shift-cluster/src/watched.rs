//! A prefix of etcd keys kept in memory: listed once, then watched; after a broken watch the
//! prefix is listed again, so nothing missed while it was down stays wrong. The members
//! ([`crate::view`]) and the collection map's cache ([`crate::idmap`]) are two.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::{etcd_call, ClusterError, Etcd};

/// Pause before listing and watching again after a break.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The decoded values under one prefix, by key suffix (the part after the prefix).
#[derive(Debug)]
pub struct Watched<T> {
    values: RwLock<Arc<BTreeMap<String, T>>>,
}

impl<T> Default for Watched<T> {
    fn default() -> Self {
        Watched {
            values: RwLock::new(Arc::new(BTreeMap::new())),
        }
    }
}

impl<T> Watched<T> {
    /// The values now: a pointer copy.
    pub fn snapshot(&self) -> Arc<BTreeMap<String, T>> {
        self.values
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, values: BTreeMap<String, T>) {
        *self.values.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(values);
    }
}

impl<T: DeserializeOwned + Clone + Send + Sync + 'static> Watched<T> {
    /// Lists `prefix` and keeps the copy current in the background.
    pub(crate) async fn follow(
        client: &Etcd,
        prefix: String,
        timeout: Duration,
    ) -> Result<(Arc<Watched<T>>, JoinHandle<()>), ClusterError> {
        let watched = Arc::new(Watched::default());
        let revision = watched.list(client, &prefix, timeout).await?;
        let task = tokio::spawn(
            watched
                .clone()
                .watch(client.clone(), prefix, timeout, revision),
        );
        Ok((watched, task))
    }

    fn decode(prefix: &str, kv: &KeyValue) -> Option<(String, T)> {
        let key = String::from_utf8_lossy(kv.key());
        let suffix = key.strip_prefix(prefix)?.to_owned();
        match serde_json::from_slice(kv.value()) {
            Ok(value) => Some((suffix, value)),
            Err(error) => {
                tracing::error!(%error, %key, "unreadable value in etcd ignored");
                None
            }
        }
    }

    /// Lists `prefix` into the copy; the revision it was read at.
    async fn list(
        &self,
        client: &Etcd,
        prefix: &str,
        timeout: Duration,
    ) -> Result<i64, ClusterError> {
        let mut etcd = client.handle();
        let answer = etcd_call(
            timeout,
            etcd.get(prefix, Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let values = answer
            .kvs()
            .iter()
            .filter_map(|kv| Self::decode(prefix, kv))
            .collect();
        self.set(values);
        Ok(answer.header().map(|h| h.revision()).unwrap_or(0))
    }

    async fn watch(
        self: Arc<Self>,
        client: Etcd,
        prefix: String,
        timeout: Duration,
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
                        let mut values = (*self.snapshot()).clone();
                        for event in answer.events() {
                            let Some(kv) = event.kv() else { continue };
                            match event.event_type() {
                                EventType::Put => {
                                    if let Some((key, value)) = Self::decode(&prefix, kv) {
                                        values.insert(key, value);
                                    }
                                }
                                EventType::Delete => {
                                    let key = String::from_utf8_lossy(kv.key());
                                    if let Some(suffix) = key.strip_prefix(&prefix) {
                                        values.remove(suffix);
                                    }
                                }
                            }
                        }
                        self.set(values);
                        if answer.canceled() {
                            break;
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, %prefix, "cannot watch etcd"),
            }
            tokio::time::sleep(RETRY_PAUSE).await;
            match self.list(&client, &prefix, timeout).await {
                Ok(at) => revision = at,
                Err(error) => tracing::warn!(%error, %prefix, "cannot list etcd"),
            }
        }
    }
}
