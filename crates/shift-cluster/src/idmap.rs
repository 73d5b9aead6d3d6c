//! The collection-id map's durable side in etcd (`PREFIX/idmap/<client id>`), shared by every
//! replica: an entry is created with a transaction that succeeds only when the key is absent
//! (or holds a deleted entry, unchanged since it was read), so two replicas that register the
//! same collection at once end up with the same entry. Every replica also keeps a watched copy
//! of the map ([`Watched`]): when etcd cannot be reached (no quorum), a collection registered
//! before is found there, so requests to it are still served.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use shift_proxy::collections::CollectionEntry;
use shift_proxy::coord::{CollectionMapStore, StateCall};

use crate::keys::Keys;
use crate::watched::Watched;
use crate::{etcd_call, unavailable, ClusterError, Etcd};

/// How many times a create races another replica's change before it gives up.
const CREATE_ATTEMPTS: usize = 8;

/// The collection map in etcd.
#[derive(Debug, Clone)]
pub struct EtcdCollectionMap {
    client: Etcd,
    keys: Keys,
    timeout: Duration,
    cache: Arc<Watched<CollectionEntry>>,
}

impl EtcdCollectionMap {
    pub(crate) fn new(
        client: Etcd,
        keys: Keys,
        timeout: Duration,
        cache: Arc<Watched<CollectionEntry>>,
    ) -> EtcdCollectionMap {
        EtcdCollectionMap {
            client,
            keys,
            timeout,
            cache,
        }
    }

    /// [`Self::create_in_etcd`]; when etcd cannot answer, the live entry of the watched copy.
    async fn create(&self, entry: CollectionEntry) -> Result<CollectionEntry, ClusterError> {
        let client_id = entry.client_id.clone();
        match self.create_in_etcd(entry).await {
            Err(error @ (ClusterError::Etcd(_) | ClusterError::Timeout(_))) => {
                match self.cache.snapshot().get(client_id.as_str()) {
                    Some(known) if !known.deleted => {
                        tracing::debug!(%error, "etcd unreachable: the collection's entry from the watched copy");
                        Ok(known.clone())
                    }
                    _ => Err(error),
                }
            }
            other => other,
        }
    }

    async fn create_in_etcd(
        &self,
        entry: CollectionEntry,
    ) -> Result<CollectionEntry, ClusterError> {
        let key = self.keys.idmap_entry(&entry.client_id);
        let value = serde_json::to_vec(&entry).map_err(ClusterError::encode)?;
        // Absent: create revision 0. Present but deleted: unchanged since read.
        let mut condition = Compare::create_revision(key.clone(), CompareOp::Equal, 0);
        for _ in 0..CREATE_ATTEMPTS {
            let txn = Txn::new()
                .when([condition])
                .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                .or_else([TxnOp::get(key.clone(), None)]);
            let mut etcd = self.client.handle();
            let answer = etcd_call(self.timeout, etcd.txn(txn)).await?;
            if answer.succeeded() {
                return Ok(entry);
            }
            let stored = answer.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().cloned(),
                _ => None,
            });
            let Some(stored) = stored else {
                // Deleted in between: absent again.
                condition = Compare::create_revision(key.clone(), CompareOp::Equal, 0);
                continue;
            };
            let existing = decode(&stored)?;
            if !existing.deleted {
                return Ok(existing);
            }
            condition = Compare::mod_revision(key.clone(), CompareOp::Equal, stored.mod_revision());
        }
        Err(ClusterError::Contended(key))
    }
}

fn decode(kv: &KeyValue) -> Result<CollectionEntry, ClusterError> {
    serde_json::from_slice(kv.value()).map_err(ClusterError::decode)
}

impl CollectionMapStore for EtcdCollectionMap {
    fn load(&self) -> StateCall<'_, Vec<CollectionEntry>> {
        Box::pin(async move {
            let mut etcd = self.client.handle();
            let answer = etcd_call(
                self.timeout,
                etcd.get(self.keys.idmap(), Some(GetOptions::new().with_prefix())),
            )
            .await
            .map_err(unavailable)?;
            let mut entries = Vec::new();
            for kv in answer.kvs() {
                match decode(kv) {
                    Ok(entry) => entries.push(entry),
                    Err(error) => tracing::error!(
                        %error,
                        key = %String::from_utf8_lossy(kv.key()),
                        "unreadable collection-map entry in etcd skipped"
                    ),
                }
            }
            Ok(entries)
        })
    }

    fn create_if_absent(&self, entry: CollectionEntry) -> StateCall<'_, CollectionEntry> {
        Box::pin(async move { self.create(entry).await.map_err(unavailable) })
    }

    fn put<'a>(&'a self, entry: &'a CollectionEntry) -> StateCall<'a, ()> {
        Box::pin(async move {
            let value = serde_json::to_vec(entry)
                .map_err(ClusterError::encode)
                .map_err(unavailable)?;
            let mut etcd = self.client.handle();
            etcd_call(
                self.timeout,
                etcd.put(self.keys.idmap_entry(&entry.client_id), value, None),
            )
            .await
            .map(|_| ())
            .map_err(unavailable)
        })
    }

    fn remove<'a>(&'a self, client_id: &'a str) -> StateCall<'a, ()> {
        Box::pin(async move {
            let mut etcd = self.client.handle();
            etcd_call(
                self.timeout,
                etcd.delete(self.keys.idmap_entry(client_id), None),
            )
            .await
            .map(|_| ())
            .map_err(unavailable)
        })
    }
}
