//! Chroma 1.5.9's phantom updates, the one place where the proxy's stores may rightly differ
//! from a Chroma server that got the same requests.
//!
//! Chroma keeps the embedding of an `update` of an id the collection lacks, and brings it back
//! later: after the id is added, a read and another write turn its embedding into the
//! update's. The proxy clears such updates on its primary (a delete of the missing ids right
//! after the update, see `record_writes::update_of_existing`), so the two stores agree; a
//! Chroma reached directly may then hold the phantom embedding where the proxy's stores hold
//! the add's. The run records which updates named missing ids, and a difference in exactly
//! such an embedding is reported and not failed. Any other difference, in that record or
//! elsewhere, still fails. Which ids are missing is read from the proxy's primary just before
//! the update: a read of the direct Chroma there changes whether the phantom comes back, and
//! the proxy reads its primary there itself.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{json, Value};
use shift_testkit::http_json;

use super::requests::{FuzzRequest, Part};

/// Embeddings sent by updates of ids the direct Chroma lacked, by (direct collection id,
/// record id).
#[derive(Default)]
pub(crate) struct PhantomUpdates {
    sent: HashMap<(String, String), Vec<Vec<f32>>>,
}

/// An update about to go to the direct Chroma: its collection there and the ids the
/// collection held just before.
pub(crate) struct PendingUpdate {
    collection: String,
    existing: HashSet<String>,
}

impl PhantomUpdates {
    /// For a POST to a collection's `/update`: reads which of its ids the store at `url`
    /// holds now, in `collection` there; `key` is the collection's id in the direct Chroma.
    /// `None` for anything else, or when the body has no ids to read.
    pub(crate) async fn before(
        request: &FuzzRequest,
        url: &str,
        collection: Option<String>,
        key: Option<String>,
    ) -> Option<PendingUpdate> {
        let is_update = request.method == "POST"
            && matches!(request.target.last(), Some(Part::Text(t)) if t.ends_with("/update"));
        if !is_update {
            return None;
        }
        let Some(Part::Text(prefix)) = request.target.first() else {
            return None;
        };
        let (collection, key) = (collection?, key?);
        let ids = update_ids(&request.body).filter(|ids| !ids.is_empty())?;
        let url = format!("{url}{prefix}{collection}/get");
        let (status, got) = http_json("POST", &url, Some(json!({"ids": ids, "include": []})))
            .await
            .ok()?;
        let existing = status
            .is_success()
            .then(|| got["ids"].as_array().cloned())
            .flatten()?
            .iter()
            .filter_map(|id| id.as_str().map(str::to_owned))
            .collect();
        Some(PendingUpdate {
            collection: key,
            existing,
        })
    }

    /// The direct Chroma applied the update: keeps the embeddings it sent for missing ids.
    pub(crate) fn applied(&mut self, pending: PendingUpdate, body: &[u8]) {
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let ids = body["ids"].as_array().cloned().unwrap_or_default();
        let embeddings = body["embeddings"].as_array().cloned().unwrap_or_default();
        for (id, embedding) in ids.iter().zip(&embeddings) {
            let (Some(id), Some(embedding)) = (id.as_str(), as_f32s(embedding)) else {
                continue;
            };
            if !pending.existing.contains(id) {
                self.sent
                    .entry((pending.collection.clone(), id.to_owned()))
                    .or_default()
                    .push(embedding);
            }
        }
    }

    /// Replaces, in the direct store's dump, every embedding that differs from the primary's
    /// and is one a phantom update sent, by the primary's; returns where it did. `ids` maps
    /// (tenant, database, name) to the collection's id in the direct Chroma.
    pub(crate) fn excuse(
        &self,
        direct: &mut Value,
        primary: &Value,
        ids: &HashMap<(String, String, String), String>,
    ) -> Vec<String> {
        let mut excused = Vec::new();
        let Some(tenants) = direct.as_object_mut() else {
            return excused;
        };
        for (tenant, databases) in tenants.iter_mut() {
            for (database, collections) in databases.as_object_mut().into_iter().flatten() {
                for (name, collection) in collections.as_object_mut().into_iter().flatten() {
                    let key = (tenant.clone(), database.clone(), name.clone());
                    let Some(id) = ids.get(&key) else { continue };
                    let theirs = &primary[tenant][database][name]["records"];
                    let records = collection["records"].as_object_mut();
                    for (record, fields) in records.into_iter().flatten() {
                        let ours = &theirs[record]["embedding"];
                        let phantom = as_f32s(&fields["embedding"]).is_some_and(|e| {
                            self.sent
                                .get(&(id.clone(), record.clone()))
                                .is_some_and(|sent| sent.contains(&e))
                        });
                        if phantom && !ours.is_null() && fields["embedding"] != *ours {
                            excused.push(format!(
                                "{tenant}/{database}/{name}/records/{record}/embedding: {} (a phantom update, direct) vs {ours} (proxy)",
                                fields["embedding"]
                            ));
                            fields["embedding"] = ours.clone();
                        }
                    }
                }
            }
        }
        excused
    }
}

/// The distinct string ids of an update's body, if it is JSON with an `ids` array.
fn update_ids(body: &[u8]) -> Option<Vec<String>> {
    let body: Value = serde_json::from_slice(body).ok()?;
    let ids: BTreeSet<String> = body["ids"]
        .as_array()?
        .iter()
        .filter_map(|id| id.as_str().map(str::to_owned))
        .collect();
    Some(ids.into_iter().collect())
}

/// An embedding as Chroma stores it (f32), so the numbers sent compare equal to those read.
fn as_f32s(embedding: &Value) -> Option<Vec<f32>> {
    embedding
        .as_array()?
        .iter()
        .map(|x| x.as_f64().map(|x| x as f32))
        .collect()
}
