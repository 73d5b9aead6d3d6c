//! One collection on both stores: its ids, its records fetched in batches, and the A/B query
//! sample.

use shift_config::BackendName;

use super::compare::{classify, sample_ids, score_sample};
use super::report::{Diffs, QuerySample};
use super::runner::{on, retry, Verifier, VerifyError};
use crate::client::{ClientError, Records};

/// One collection on both stores.
pub(super) struct Side<'a> {
    pub(super) verifier: &'a Verifier,
    pub(super) tenant: &'a str,
    pub(super) database: &'a str,
    pub(super) source_id: &'a str,
    pub(super) target_id: &'a str,
}

impl Side<'_> {
    /// The store's (tenant, database, collection id).
    fn names(&self, store: BackendName) -> (String, String, &str) {
        let (t, d) = self.verifier.names(store, self.tenant, self.database);
        let id = if store == self.verifier.source.store() {
            self.source_id
        } else {
            self.target_id
        };
        (t, d, id)
    }

    pub(super) async fn all_ids(&self, store: BackendName) -> Result<Vec<String>, VerifyError> {
        let (t, d, id) = self.names(store);
        let client = self.verifier.client(store);
        retry(|| client.all_ids(&t, &d, id))
            .await
            .map_err(on(store))
    }

    pub(super) async fn get(
        &self,
        store: BackendName,
        ids: &[String],
    ) -> Result<Records, VerifyError> {
        let (t, d, id) = self.names(store);
        let client = self.verifier.client(store);
        retry(|| client.get(&t, &d, id, ids))
            .await
            .map_err(on(store))
    }

    /// Records per `get`: the option, within both stores' `max_batch_size`.
    pub(super) async fn batch_size(&self) -> Result<usize, VerifyError> {
        let v = self.verifier;
        let (s, t) = tokio::try_join!(
            async {
                retry(|| v.source.max_batch_size())
                    .await
                    .map_err(on(v.source.store()))
            },
            async {
                retry(|| v.target.max_batch_size())
                    .await
                    .map_err(on(v.target.store()))
            }
        )?;
        Ok(v.options.batch_size.min(s).min(t).max(1))
    }

    /// Fetches `ids` from both stores and says what differs for each diverged one.
    pub(super) async fn classify(&self, ids: &[String]) -> Result<Diffs, VerifyError> {
        let (source, target) = tokio::try_join!(
            self.get(self.verifier.source.store(), ids),
            self.get(self.verifier.target.store(), ids)
        )?;
        Ok(classify(ids, &source, &target))
    }

    /// Queries a deterministic sample of the source's stored embeddings on both stores.
    pub(super) async fn query_sample(
        &self,
        source_ids: &[String],
    ) -> Result<Option<QuerySample>, VerifyError> {
        let options = &self.verifier.options;
        if options.sample == 0 || options.k == 0 || source_ids.is_empty() {
            return Ok(None);
        }
        let sample = sample_ids(source_ids, options.sample);
        let records = self.get(self.verifier.source.store(), &sample).await?;
        let embeddings: Vec<Vec<f32>> = records
            .embeddings
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect();
        if embeddings.is_empty() {
            return Ok(None);
        }
        let k = options.k.min(source_ids.len());
        let source_store = self.verifier.source.store();
        let (t, d, id) = self.names(source_store);
        let client = self.verifier.client(source_store);
        let expected = retry(|| client.query(&t, &d, id, &embeddings, k))
            .await
            .map_err(on(source_store))?;
        let target_store = self.verifier.target.store();
        let (t, d, id) = self.names(target_store);
        let client = self.verifier.client(target_store);
        let got = match retry(|| client.query(&t, &d, id, &embeddings, k)).await {
            Ok(got) => got,
            // The target refusing the query (a wrong dimension, say) is a finding, not a
            // failure of verify.
            Err(e @ ClientError::Refused(_)) => {
                return Ok(Some(QuerySample {
                    queries: embeddings.len(),
                    k,
                    recall: 0.0,
                    worst_recall: 0.0,
                    drift: 0.0,
                    gap: 0.0,
                    error: Some(e.to_string()),
                }))
            }
            Err(e) => return Err(on(target_store)(e)),
        };
        Ok(score_sample(k, &expected, &got))
    }
}
