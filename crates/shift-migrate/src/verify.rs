//! Verify: compares the source store (the primary) with the target (the secondary), per
//! collection, while clients keep writing.
//!
//! Collections are matched by name (each store gives a collection its own id), in the client's
//! tenants and databases, renamed for each store by the [`NamespaceMap`]. Per collection:
//! 1. counts, and the id sets of both stores (ids only): records missing on the target, and
//!    extra records only the target has;
//! 2. the records both hold, fetched by id in batches from both stores (never paged by offset
//!    over full records) and compared by per-field content hashes ([`RecordDigest`]), so a
//!    difference is named: embedding, metadata, document or uri;
//! 3. an A/B query sample: stored embeddings of a deterministic sample of records, queried on
//!    both stores; recall at k of the target against the source, and the largest distance
//!    drift over the ids both returned.
//!
//! Writes keep flowing meanwhile, so a first-pass difference may only be a write that reached
//! one store and not yet the other. Every diverged id (and a failed query sample, and a
//! collection on one side only) is checked again, up to [`VerifyOptions::recheck_rounds`]
//! times, each after the caller's `settle` (waiting for the proxy's journal to drain) and a
//! short pause; only what is still diverged is reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::{Serialize, Serializer};
use shift_config::BackendName;
use shift_proxy::namespace::NamespaceMap;
use shift_proxy::Backends;

use crate::client::{ChromaClient, ClientError, Collection, Records};
use crate::hash::{sha256, Field, RecordDigest};

/// What to compare and how strictly.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The client's tenants (the old store's names).
    pub tenants: Vec<String>,
    /// Only collections with these names; all when empty.
    pub collections: Vec<String>,
    /// Records whose embeddings are queried on both stores, per collection.
    pub sample: usize,
    /// Results per sample query.
    pub k: usize,
    /// Mean recall at k below this is a divergence (`query_recall`) when the target's
    /// neighbours are also farther than the source's by more than `max_gap`: two HNSW graphs
    /// built in different orders return different ids for near-ties, which is noise, not loss.
    pub min_recall: f64,
    /// Largest mean relative distance gap (target's top-k against the source's) that still
    /// counts as the same quality.
    pub max_gap: f64,
    /// A distance drift above this is a divergence (`query_drift`).
    pub max_drift: f64,
    /// Records per `get`; the stores' `max_batch_size` at most.
    pub batch_size: usize,
    /// How often a diverged id is checked again before it is reported.
    pub recheck_rounds: u32,
    /// Pause before each re-check, after `settle`.
    pub recheck_pause: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            tenants: vec!["default_tenant".to_owned()],
            collections: Vec::new(),
            sample: 20,
            k: 10,
            min_recall: 0.9,
            max_gap: 0.05,
            max_drift: 1e-3,
            batch_size: 500,
            recheck_rounds: 3,
            recheck_pause: Duration::from_millis(500),
        }
    }
}

/// A kind of divergence, as reports name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DivergenceKind {
    /// The source has the collection, the target does not.
    MissingCollection,
    /// Only the target has the collection.
    ExtraCollection,
    /// The source has the record, the target does not.
    MissingRecord,
    /// Only the target has the record.
    ExtraRecord,
    ChangedEmbedding,
    ChangedMetadata,
    ChangedDocument,
    ChangedUri,
    /// The query sample's mean recall at k is below the threshold.
    QueryRecall,
    /// The query sample's distances drift more than the threshold.
    QueryDrift,
}

impl DivergenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DivergenceKind::MissingCollection => "missing_collection",
            DivergenceKind::ExtraCollection => "extra_collection",
            DivergenceKind::MissingRecord => "missing_record",
            DivergenceKind::ExtraRecord => "extra_record",
            DivergenceKind::ChangedEmbedding => "changed_embedding",
            DivergenceKind::ChangedMetadata => "changed_metadata",
            DivergenceKind::ChangedDocument => "changed_document",
            DivergenceKind::ChangedUri => "changed_uri",
            DivergenceKind::QueryRecall => "query_recall",
            DivergenceKind::QueryDrift => "query_drift",
        }
    }

    fn changed(field: Field) -> DivergenceKind {
        match field {
            Field::Embedding => DivergenceKind::ChangedEmbedding,
            Field::Metadata => DivergenceKind::ChangedMetadata,
            Field::Document => DivergenceKind::ChangedDocument,
            Field::Uri => DivergenceKind::ChangedUri,
        }
    }

    /// A record whose content differs (as opposed to one on a single side).
    pub fn is_changed_record(self) -> bool {
        matches!(
            self,
            DivergenceKind::ChangedEmbedding
                | DivergenceKind::ChangedMetadata
                | DivergenceKind::ChangedDocument
                | DivergenceKind::ChangedUri
        )
    }
}

impl std::fmt::Display for DivergenceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ids a JSON report shows per divergence; the count says how many there are.
const IDS_SHOWN: usize = 100;

fn first_ids<S: Serializer>(ids: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(ids.iter().take(IDS_SHOWN))
}

/// One kind of divergence in one collection.
#[derive(Debug, Clone, Serialize)]
pub struct Divergence {
    pub kind: DivergenceKind,
    /// The client's tenant and database.
    pub tenant: String,
    pub database: String,
    /// The collection's name.
    pub collection: String,
    /// Records concerned (for a whole collection, the records it holds).
    pub count: u64,
    /// Every record id concerned, sorted (a JSON report shows the first 100).
    #[serde(serialize_with = "first_ids")]
    pub ids: Vec<String>,
    /// What was measured, for query divergences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The A/B query sample of one collection.
#[derive(Debug, Clone, Serialize)]
pub struct QuerySample {
    /// Sample embeddings queried.
    pub queries: usize,
    pub k: usize,
    /// Mean recall at k of the target against the source.
    pub recall: f64,
    /// The worst single query's recall.
    pub worst_recall: f64,
    /// Largest |distance on the source - distance on the target| over ids both returned.
    pub drift: f64,
    /// Mean over queries of (target's mean top-k distance - source's) / source's: how much
    /// farther the target's neighbours are. Near 0 when ids differ only by ANN noise.
    pub gap: f64,
    /// Why the target could not answer, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A collection's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Match,
    Diverged,
    /// Only on the source.
    Missing,
    /// Only on the target.
    Extra,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Match => "match",
            Verdict::Diverged => "diverged",
            Verdict::Missing => "missing",
            Verdict::Extra => "extra",
        }
    }
}

/// One collection's comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionReport {
    pub tenant: String,
    pub database: String,
    pub name: String,
    /// Each store's own id of the collection.
    pub source_id: Option<String>,
    pub target_id: Option<String>,
    pub source_count: Option<u64>,
    pub target_count: Option<u64>,
    /// Records both stores hold, compared by content.
    pub compared: u64,
    pub missing: u64,
    pub extra: u64,
    /// Records whose content differs.
    pub changed: u64,
    pub query: Option<QuerySample>,
    pub verdict: Verdict,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub source: BackendName,
    pub target: BackendName,
    pub collections: Vec<CollectionReport>,
    pub divergences: Vec<Divergence>,
    /// Ids found diverged on the first pass and checked again.
    pub rechecked: u64,
    /// Of those, the ones that agreed on a re-check (writes in flight during the scan).
    pub settled_on_recheck: u64,
    pub elapsed_seconds: f64,
    /// True when nothing diverges.
    pub matches: bool,
}

impl VerifyReport {
    /// The divergences of one collection.
    pub fn divergences_of<'a>(
        &'a self,
        collection: &'a CollectionReport,
    ) -> impl Iterator<Item = &'a Divergence> + 'a {
        self.divergences.iter().filter(move |d| {
            d.tenant == collection.tenant
                && d.database == collection.database
                && d.collection == collection.name
        })
    }

    /// The record ids `repair` should reconcile in `collection`: missing and changed ones, and
    /// extra ones when `delete_extra` (reconciling an extra id deletes it from the target).
    pub fn repair_ids(&self, collection: &CollectionReport, delete_extra: bool) -> Vec<String> {
        let ids: BTreeSet<&String> = self
            .divergences_of(collection)
            .filter(|d| {
                d.kind == DivergenceKind::MissingRecord
                    || d.kind.is_changed_record()
                    || (delete_extra && d.kind == DivergenceKind::ExtraRecord)
            })
            .flat_map(|d| d.ids.iter())
            .collect();
        ids.into_iter().cloned().collect()
    }
}

/// Why verify could not finish.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the {store} store: {source}")]
    Store {
        store: BackendName,
        #[source]
        source: ClientError,
    },
}

/// Waits, bounded, until writes queued for the target have reached it; called before every
/// re-check.
pub type Settle = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// Compares the two stores.
pub struct Verifier {
    source: ChromaClient,
    target: ChromaClient,
    namespaces: NamespaceMap,
    options: VerifyOptions,
    settle: Option<Settle>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("source", &self.source.store())
            .field("target", &self.target.store())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Which side an error came from.
fn on(store: BackendName) -> impl Fn(ClientError) -> VerifyError {
    move |source| VerifyError::Store { store, source }
}

/// Record ids and what differs about each.
pub type Diffs = BTreeMap<String, BTreeSet<DivergenceKind>>;

impl Verifier {
    /// Compares `source` against the other store.
    pub fn new(
        backends: Arc<Backends>,
        namespaces: NamespaceMap,
        source: BackendName,
        options: VerifyOptions,
    ) -> Verifier {
        Verifier {
            source: ChromaClient::new(backends.clone(), source),
            target: ChromaClient::new(backends, source.other()),
            namespaces,
            options,
            settle: None,
        }
    }

    /// Waits with `settle` before every re-check (the CLI waits for the proxy's journal).
    pub fn with_settle(mut self, settle: Settle) -> Verifier {
        self.settle = Some(settle);
        self
    }

    fn client(&self, store: BackendName) -> &ChromaClient {
        if store == self.source.store() {
            &self.source
        } else {
            &self.target
        }
    }

    /// The (tenant, database) `store` calls the client's `tenant`/`database`.
    fn names(&self, store: BackendName, tenant: &str, database: &str) -> (String, String) {
        let ns = self.namespaces.to_backend(store, tenant, Some(database));
        (
            ns.tenant,
            ns.database.unwrap_or_else(|| database.to_owned()),
        )
    }

    /// Runs the comparison.
    pub async fn run(&self) -> Result<VerifyReport, VerifyError> {
        let started = Instant::now();
        let mut run = Run::default();
        let mut seen = BTreeSet::new();
        for tenant in &self.options.tenants {
            if !seen.insert(tenant.clone()) {
                continue;
            }
            let mut databases = BTreeSet::new();
            for store in [self.source.store(), self.target.store()] {
                databases.extend(self.client_databases(store, tenant).await?);
            }
            for database in &databases {
                self.database(tenant, database, &mut run).await?;
            }
        }
        let matches = run.divergences.is_empty();
        Ok(VerifyReport {
            source: self.source.store(),
            target: self.target.store(),
            collections: run.collections,
            divergences: run.divergences,
            rechecked: run.rechecked,
            settled_on_recheck: run.settled,
            elapsed_seconds: started.elapsed().as_secs_f64(),
            matches,
        })
    }

    /// The client's names of the databases `store` holds for the client's `tenant`. A tenant
    /// the store does not know has none. (Tenant rules, and a rule for the tenant's
    /// `default_database`, are followed; other database-only rules to another tenant are not.)
    async fn client_databases(
        &self,
        store: BackendName,
        tenant: &str,
    ) -> Result<BTreeSet<String>, VerifyError> {
        let client = self.client(store);
        let mut backend_tenants = BTreeSet::new();
        backend_tenants.insert(self.namespaces.to_backend(store, tenant, None).tenant);
        backend_tenants.insert(
            self.namespaces
                .to_backend(store, tenant, Some("default_database"))
                .tenant,
        );
        let mut out = BTreeSet::new();
        for backend_tenant in backend_tenants {
            let databases = match retry(|| client.databases(&backend_tenant)).await {
                Ok(d) => d,
                Err(ClientError::NotFound(_)) => continue,
                Err(e) => return Err(on(store)(e)),
            };
            for database in databases {
                let ns = self
                    .namespaces
                    .to_client(store, &backend_tenant, Some(&database));
                if ns.tenant == tenant {
                    out.insert(ns.database.unwrap_or(database));
                }
            }
        }
        Ok(out)
    }

    /// The collections of one database on `store`, by name (a database the store lacks has
    /// none).
    async fn collections(
        &self,
        store: BackendName,
        tenant: &str,
        database: &str,
    ) -> Result<BTreeMap<String, Collection>, VerifyError> {
        let (t, d) = self.names(store, tenant, database);
        let client = self.client(store);
        let list = match retry(|| client.collections(&t, &d)).await {
            Ok(list) => list,
            Err(ClientError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(on(store)(e)),
        };
        Ok(list
            .into_iter()
            .filter(|c| {
                self.options.collections.is_empty() || self.options.collections.contains(&c.name)
            })
            .map(|c| (c.name.clone(), c))
            .collect())
    }

    /// One collection by name on `store`, `None` when it does not exist.
    async fn collection(
        &self,
        store: BackendName,
        tenant: &str,
        database: &str,
        name: &str,
    ) -> Result<Option<Collection>, VerifyError> {
        let (t, d) = self.names(store, tenant, database);
        let client = self.client(store);
        retry(|| client.collection(&t, &d, name))
            .await
            .map_err(on(store))
    }

    async fn database(
        &self,
        tenant: &str,
        database: &str,
        run: &mut Run,
    ) -> Result<(), VerifyError> {
        let source = self
            .collections(self.source.store(), tenant, database)
            .await?;
        let target = self
            .collections(self.target.store(), tenant, database)
            .await?;
        let names: BTreeSet<&String> = source.keys().chain(target.keys()).collect();
        for name in names {
            let mut pair = (source.get(name).cloned(), target.get(name).cloned());
            // A collection on one side only may be one being created or deleted right now, and
            // one deleted during its scan vanishes under it: look again after the writes in
            // flight have landed.
            let mut round = 0;
            loop {
                while pair.0.is_some() != pair.1.is_some() && round < self.options.recheck_rounds {
                    round += 1;
                    self.settle().await;
                    pair = self.pair(tenant, database, name).await?;
                }
                match &pair {
                    (Some(s), Some(t)) => {
                        match self.compare_collection(tenant, database, s, t, run).await {
                            Err(VerifyError::Store {
                                source: ClientError::NotFound(_),
                                ..
                            }) if round < self.options.recheck_rounds => {
                                round += 1;
                                self.settle().await;
                                pair = self.pair(tenant, database, name).await?;
                                continue;
                            }
                            result => result?,
                        }
                    }
                    (Some(s), None) => {
                        let count = self
                            .count(self.source.store(), tenant, database, &s.id)
                            .await?;
                        run.one_sided(tenant, database, s, count, Verdict::Missing);
                    }
                    (None, Some(t)) => {
                        let count = self
                            .count(self.target.store(), tenant, database, &t.id)
                            .await?;
                        run.one_sided(tenant, database, t, count, Verdict::Extra);
                    }
                    (None, None) => {}
                }
                break;
            }
        }
        Ok(())
    }

    /// The collection called `name` on the source and on the target, as they are now.
    async fn pair(
        &self,
        tenant: &str,
        database: &str,
        name: &str,
    ) -> Result<(Option<Collection>, Option<Collection>), VerifyError> {
        Ok((
            self.collection(self.source.store(), tenant, database, name)
                .await?,
            self.collection(self.target.store(), tenant, database, name)
                .await?,
        ))
    }

    async fn count(
        &self,
        store: BackendName,
        tenant: &str,
        database: &str,
        id: &str,
    ) -> Result<Option<u64>, VerifyError> {
        let (t, d) = self.names(store, tenant, database);
        let client = self.client(store);
        match retry(|| client.count(&t, &d, id)).await {
            Ok(n) => Ok(Some(n)),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(on(store)(e)),
        }
    }

    async fn settle(&self) {
        if let Some(settle) = &self.settle {
            settle().await;
        }
        tokio::time::sleep(self.options.recheck_pause).await;
    }

    async fn compare_collection(
        &self,
        tenant: &str,
        database: &str,
        source: &Collection,
        target: &Collection,
        run: &mut Run,
    ) -> Result<(), VerifyError> {
        let side = Side {
            verifier: self,
            tenant,
            database,
            source_id: &source.id,
            target_id: &target.id,
        };
        let (source_ids, target_ids) = tokio::try_join!(
            side.all_ids(self.source.store()),
            side.all_ids(self.target.store())
        )?;
        let source_set: BTreeSet<&String> = source_ids.iter().collect();
        let target_set: BTreeSet<&String> = target_ids.iter().collect();
        let mut diffs = Diffs::new();
        for id in source_set.difference(&target_set) {
            diffs
                .entry((*id).clone())
                .or_default()
                .insert(DivergenceKind::MissingRecord);
        }
        for id in target_set.difference(&source_set) {
            diffs
                .entry((*id).clone())
                .or_default()
                .insert(DivergenceKind::ExtraRecord);
        }
        let common: Vec<String> = source_set
            .intersection(&target_set)
            .map(|id| (*id).clone())
            .collect();
        let batch = side.batch_size().await?;
        for chunk in common.chunks(batch) {
            diffs.extend(side.classify(chunk).await?);
        }
        let compared = common.len() as u64;

        let mut query = side.query_sample(&source_ids).await?;
        let first_pass = diffs.len() as u64;
        let mut round = 0;
        while (!diffs.is_empty() || self.query_fails(query.as_ref()))
            && round < self.options.recheck_rounds
        {
            round += 1;
            self.settle().await;
            if !diffs.is_empty() {
                let ids: Vec<String> = diffs.keys().cloned().collect();
                let mut again = Diffs::new();
                for chunk in ids.chunks(batch) {
                    again.extend(side.classify(chunk).await?);
                }
                diffs = again;
            }
            if self.query_fails(query.as_ref()) {
                query = side
                    .query_sample(&side.all_ids(self.source.store()).await?)
                    .await?;
            }
        }
        run.rechecked += first_pass;
        run.settled += first_pass.saturating_sub(diffs.len() as u64);

        let (source_count, target_count) = tokio::try_join!(
            self.count(self.source.store(), tenant, database, &source.id),
            self.count(self.target.store(), tenant, database, &target.id)
        )?;
        let mut by_kind: BTreeMap<DivergenceKind, Vec<String>> = BTreeMap::new();
        for (id, kinds) in &diffs {
            for kind in kinds {
                by_kind.entry(*kind).or_default().push(id.clone());
            }
        }
        let count_of = |kind: DivergenceKind| by_kind.get(&kind).map_or(0, Vec::len) as u64;
        let changed = diffs
            .values()
            .filter(|kinds| kinds.iter().any(|k| k.is_changed_record()))
            .count() as u64;
        let divergence = |kind, count: u64, ids: Vec<String>, detail: Option<String>| Divergence {
            kind,
            tenant: tenant.to_owned(),
            database: database.to_owned(),
            collection: source.name.clone(),
            count,
            ids,
            detail,
        };
        let mut found: Vec<Divergence> = Vec::new();
        let (missing, extra) = (
            count_of(DivergenceKind::MissingRecord),
            count_of(DivergenceKind::ExtraRecord),
        );
        for (kind, ids) in by_kind {
            found.push(divergence(kind, ids.len() as u64, ids, None));
        }
        if let Some(q) = &query {
            let detail = format!(
                "{} queries at k={}: mean recall {:.3} (worst {:.3}), distance gap {:+.2}%, drift {:.2e}{}",
                q.queries,
                q.k,
                q.recall,
                q.worst_recall,
                q.gap * 100.0,
                q.drift,
                q.error
                    .as_ref()
                    .map_or(String::new(), |e| format!("; the target failed: {e}"))
            );
            if q.error.is_some() || self.recall_fails(q) {
                let d = divergence(
                    DivergenceKind::QueryRecall,
                    q.queries as u64,
                    Vec::new(),
                    Some(detail.clone()),
                );
                found.push(d);
            }
            if q.drift > self.options.max_drift {
                let d = divergence(
                    DivergenceKind::QueryDrift,
                    q.queries as u64,
                    Vec::new(),
                    Some(detail),
                );
                found.push(d);
            }
        }
        run.collections.push(CollectionReport {
            tenant: tenant.to_owned(),
            database: database.to_owned(),
            name: source.name.clone(),
            source_id: Some(source.id.clone()),
            target_id: Some(target.id.clone()),
            source_count,
            target_count,
            compared,
            missing,
            extra,
            changed,
            query,
            verdict: if found.is_empty() {
                Verdict::Match
            } else {
                Verdict::Diverged
            },
        });
        run.divergences.extend(found);
        Ok(())
    }

    fn query_fails(&self, query: Option<&QuerySample>) -> bool {
        query.is_some_and(|q| {
            q.error.is_some() || self.recall_fails(q) || q.drift > self.options.max_drift
        })
    }

    /// Lost recall that is more than ANN noise: other ids, and farther ones.
    fn recall_fails(&self, q: &QuerySample) -> bool {
        q.recall < self.options.min_recall && q.gap > self.options.max_gap
    }
}

/// What a run has found so far.
#[derive(Debug, Default)]
struct Run {
    collections: Vec<CollectionReport>,
    divergences: Vec<Divergence>,
    rechecked: u64,
    settled: u64,
}

impl Run {
    /// A collection only one store has.
    fn one_sided(
        &mut self,
        tenant: &str,
        database: &str,
        collection: &Collection,
        count: Option<u64>,
        verdict: Verdict,
    ) {
        let on_source = verdict == Verdict::Missing;
        self.collections.push(CollectionReport {
            tenant: tenant.to_owned(),
            database: database.to_owned(),
            name: collection.name.clone(),
            source_id: on_source.then(|| collection.id.clone()),
            target_id: (!on_source).then(|| collection.id.clone()),
            source_count: if on_source { count } else { None },
            target_count: if on_source { None } else { count },
            compared: 0,
            missing: 0,
            extra: 0,
            changed: 0,
            query: None,
            verdict,
        });
        self.divergences.push(Divergence {
            kind: if on_source {
                DivergenceKind::MissingCollection
            } else {
                DivergenceKind::ExtraCollection
            },
            tenant: tenant.to_owned(),
            database: database.to_owned(),
            collection: collection.name.clone(),
            count: count.unwrap_or(0),
            ids: Vec::new(),
            detail: None,
        });
    }
}

/// One collection on both stores.
struct Side<'a> {
    verifier: &'a Verifier,
    tenant: &'a str,
    database: &'a str,
    source_id: &'a str,
    target_id: &'a str,
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

    async fn all_ids(&self, store: BackendName) -> Result<Vec<String>, VerifyError> {
        let (t, d, id) = self.names(store);
        let client = self.verifier.client(store);
        retry(|| client.all_ids(&t, &d, id))
            .await
            .map_err(on(store))
    }

    async fn get(&self, store: BackendName, ids: &[String]) -> Result<Records, VerifyError> {
        let (t, d, id) = self.names(store);
        let client = self.verifier.client(store);
        retry(|| client.get(&t, &d, id, ids))
            .await
            .map_err(on(store))
    }

    /// Records per `get`: the option, within both stores' `max_batch_size`.
    async fn batch_size(&self) -> Result<usize, VerifyError> {
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
    async fn classify(&self, ids: &[String]) -> Result<Diffs, VerifyError> {
        let (source, target) = tokio::try_join!(
            self.get(self.verifier.source.store(), ids),
            self.get(self.verifier.target.store(), ids)
        )?;
        Ok(classify(ids, &source, &target))
    }

    /// Queries a deterministic sample of the source's stored embeddings on both stores.
    async fn query_sample(
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
        let mut recalls = Vec::new();
        let mut gaps = Vec::new();
        let mut drift: f64 = 0.0;
        for (index, source_ids) in expected.ids.iter().enumerate() {
            let target_ids = got.ids.get(index).map_or(&[][..], Vec::as_slice);
            let no_distances = Vec::new();
            let source_d = distances(&expected, index).unwrap_or(&no_distances);
            let target_d = distances(&got, index).unwrap_or(&no_distances);
            let (recall, d) = recall_and_drift(source_ids, source_d, target_ids, target_d);
            if let Some(recall) = recall {
                recalls.push(recall);
            }
            if let Some(gap) = distance_gap(source_d, target_d) {
                gaps.push(gap);
            }
            drift = drift.max(d);
        }
        if recalls.is_empty() {
            return Ok(None);
        }
        Ok(Some(QuerySample {
            queries: recalls.len(),
            k,
            recall: recalls.iter().sum::<f64>() / recalls.len() as f64,
            worst_recall: recalls.iter().copied().fold(1.0, f64::min),
            drift,
            gap: if gaps.is_empty() {
                0.0
            } else {
                gaps.iter().sum::<f64>() / gaps.len() as f64
            },
            error: None,
        }))
    }
}

fn distances(result: &crate::client::QueryResult, index: usize) -> Option<&Vec<Option<f32>>> {
    result.distances.as_ref().and_then(|d| d.get(index))
}

/// Up to `n` ids, picked by the order of their SHA-256: the same ids every run, spread over
/// the collection whatever its id scheme.
pub fn sample_ids(ids: &[String], n: usize) -> Vec<String> {
    let mut ranked: Vec<([u8; 32], &String)> =
        ids.iter().map(|id| (sha256(id.as_bytes()), id)).collect();
    ranked.sort_unstable();
    ranked
        .into_iter()
        .take(n)
        .map(|(_, id)| id.clone())
        .collect()
}

/// Recall at k of one query's target answer against its source answer
/// (|source ∩ target| / |source|, `None` when the source returned nothing) and the largest
/// |distance difference| over the ids both returned.
pub fn recall_and_drift(
    source_ids: &[String],
    source_distances: &[Option<f32>],
    target_ids: &[String],
    target_distances: &[Option<f32>],
) -> (Option<f64>, f64) {
    if source_ids.is_empty() {
        return (None, 0.0);
    }
    let target: HashMap<&String, Option<f32>> = target_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id, target_distances.get(i).copied().flatten()))
        .collect();
    let mut hits = 0usize;
    let mut drift: f64 = 0.0;
    for (i, id) in source_ids.iter().enumerate() {
        if let Some(target_distance) = target.get(id) {
            hits += 1;
            if let (Some(s), Some(t)) =
                (source_distances.get(i).copied().flatten(), target_distance)
            {
                drift = drift.max((f64::from(s) - f64::from(*t)).abs());
            }
        }
    }
    (Some(hits as f64 / source_ids.len() as f64), drift)
}

/// How much farther the target's neighbours are than the source's, relative to the source's
/// mean distance; `None` without distances. A target missing neighbours returns farther ones.
pub fn distance_gap(source: &[Option<f32>], target: &[Option<f32>]) -> Option<f64> {
    let mean = |d: &[Option<f32>]| {
        let known: Vec<f64> = d.iter().flatten().map(|v| f64::from(*v)).collect();
        (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
    };
    let (s, t) = (mean(source)?, mean(target)?);
    Some(if s > f64::EPSILON { (t - s) / s } else { t - s })
}

/// Per-record digests of what a store returned, by id.
fn digests(records: &Records) -> HashMap<&str, RecordDigest> {
    records
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let embedding = records
                .embeddings
                .as_ref()
                .and_then(|e| e.get(i))
                .and_then(Option::as_deref);
            let metadata = records
                .metadatas
                .as_ref()
                .and_then(|m| m.get(i))
                .and_then(Option::as_ref);
            let document = records
                .documents
                .as_ref()
                .and_then(|d| d.get(i))
                .and_then(Option::as_deref);
            let uri = records
                .uris
                .as_ref()
                .and_then(|u| u.get(i))
                .and_then(Option::as_deref);
            (
                id.as_str(),
                RecordDigest::of(embedding, metadata, document, uri),
            )
        })
        .collect()
}

/// What differs for each of `ids` between the two stores' answers; ids that agree (or that
/// neither store has any more) are left out.
pub fn classify(ids: &[String], source: &Records, target: &Records) -> Diffs {
    let source = digests(source);
    let target = digests(target);
    let mut diffs = Diffs::new();
    for id in ids {
        let kinds: BTreeSet<DivergenceKind> =
            match (source.get(id.as_str()), target.get(id.as_str())) {
                (Some(s), Some(t)) => s
                    .differences(t)
                    .into_iter()
                    .map(DivergenceKind::changed)
                    .collect(),
                (Some(_), None) => [DivergenceKind::MissingRecord].into(),
                (None, Some(_)) => [DivergenceKind::ExtraRecord].into(),
                (None, None) => BTreeSet::new(),
            };
        if !kinds.is_empty() {
            diffs.insert(id.clone(), kinds);
        }
    }
    diffs
}

/// Attempts of a call that failed with a retryable error.
const RETRIES: u32 = 6;

/// Calls `f` until it succeeds, backing off on errors worth retrying (429, 5xx, unreachable);
/// other errors are returned at once.
pub(crate) async fn retry<T, F, Fut>(mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut wait = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match f().await {
            Err(error) if error.is_retryable() && attempt < RETRIES => {
                tracing::warn!(%error, attempt, "verify call failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_distance_gap_tells_ann_noise_from_farther_neighbours() {
        let source = [Some(1.0), Some(2.0), Some(3.0)];
        // Other ids at the same distances: no gap.
        assert_eq!(
            distance_gap(&source, &[Some(1.0), Some(2.0), Some(3.0)]),
            Some(0.0)
        );
        // Farther neighbours: a 50% gap.
        let gap = distance_gap(&source, &[Some(2.0), Some(3.0), Some(4.0)]).unwrap();
        assert!((gap - 0.5).abs() < 1e-9, "{gap}");
        assert_eq!(distance_gap(&[], &source), None);
    }

    #[test]
    fn recall_is_the_share_of_source_ids_the_target_returned() {
        let (recall, drift) = recall_and_drift(
            &ids(&["a", "b", "c", "d"]),
            &[Some(0.1), Some(0.2), Some(0.3), Some(0.4)],
            &ids(&["b", "a", "x", "d"]),
            &[Some(0.2), Some(0.1), Some(0.25), Some(0.4005)],
        );
        assert_eq!(recall, Some(0.75));
        assert!((drift - 0.0005).abs() < 1e-6, "{drift}");
        // Identical answers: recall 1, no drift.
        let (recall, drift) = recall_and_drift(
            &ids(&["a", "b"]),
            &[Some(0.5), Some(0.7)],
            &ids(&["a", "b"]),
            &[Some(0.5), Some(0.7)],
        );
        assert_eq!((recall, drift), (Some(1.0), 0.0));
        // Nothing expected: no recall to speak of.
        assert_eq!(
            recall_and_drift(&[], &[], &ids(&["a"]), &[None]),
            (None, 0.0)
        );
        // Nothing returned by the target.
        assert_eq!(
            recall_and_drift(&ids(&["a"]), &[Some(0.1)], &[], &[]),
            (Some(0.0), 0.0)
        );
    }

    #[test]
    fn the_sample_is_deterministic_and_bounded() {
        let all: Vec<String> = (0..100).map(|i| format!("id-{i}")).collect();
        let a = sample_ids(&all, 20);
        let mut shuffled = all.clone();
        shuffled.reverse();
        assert_eq!(a, sample_ids(&shuffled, 20));
        assert_eq!(a.len(), 20);
        assert_eq!(sample_ids(&all[..5], 20).len(), 5);
        // Spread, not the first ids in order.
        assert_ne!(a, all[..20].to_vec());
    }

    #[test]
    fn classify_names_each_kind() {
        let source = Records {
            ids: ids(&["same", "emb", "meta", "doc", "uri", "gone"]),
            embeddings: Some(vec![
                Some(vec![1.0, 2.0]),
                Some(vec![1.0, 2.0]),
                Some(vec![1.0, 2.0]),
                Some(vec![1.0, 2.0]),
                Some(vec![1.0, 2.0]),
                Some(vec![1.0, 2.0]),
            ]),
            metadatas: Some(vec![
                Some(json!({"a": 1, "b": "x"})),
                None,
                Some(json!({"a": 1})),
                None,
                None,
                None,
            ]),
            documents: Some(vec![
                Some("d".into()),
                None,
                None,
                Some("d".into()),
                None,
                None,
            ]),
            uris: Some(vec![None, None, None, None, Some("u".into()), None]),
        };
        let target = Records {
            ids: ids(&["uri", "doc", "meta", "emb", "same", "new"]),
            embeddings: Some(vec![
                Some(vec![1.0, 2.0]),
                Some(vec![1.0, 2.0]),
                Some(vec![1.0, 2.0]),
                Some(vec![1.0, 2.5]),
                Some(vec![1.0, 2.0]),
                Some(vec![1.0, 2.0]),
            ]),
            metadatas: Some(vec![
                Some(json!({})),
                None,
                Some(json!({"a": 2})),
                None,
                Some(json!({"b": "x", "a": 1})),
                None,
            ]),
            documents: Some(vec![
                None,
                Some("e".into()),
                None,
                None,
                Some("d".into()),
                None,
            ]),
            uris: Some(vec![Some("v".into()), None, None, None, None, None]),
        };
        let all = ids(&[
            "same", "emb", "meta", "doc", "uri", "gone", "new", "neither",
        ]);
        let diffs = classify(&all, &source, &target);
        let kinds = |id: &str| diffs.get(id).map(|k| k.iter().copied().collect::<Vec<_>>());
        assert_eq!(kinds("same"), None);
        assert_eq!(kinds("neither"), None);
        assert_eq!(kinds("emb"), Some(vec![DivergenceKind::ChangedEmbedding]));
        assert_eq!(kinds("meta"), Some(vec![DivergenceKind::ChangedMetadata]));
        assert_eq!(kinds("doc"), Some(vec![DivergenceKind::ChangedDocument]));
        assert_eq!(kinds("uri"), Some(vec![DivergenceKind::ChangedUri]));
        assert_eq!(kinds("gone"), Some(vec![DivergenceKind::MissingRecord]));
        assert_eq!(kinds("new"), Some(vec![DivergenceKind::ExtraRecord]));
    }

    #[test]
    fn repair_takes_extra_ids_only_when_asked() {
        let divergence = |kind, list: &[&str]| Divergence {
            kind,
            tenant: "t".into(),
            database: "d".into(),
            collection: "c".into(),
            count: list.len() as u64,
            ids: ids(list),
            detail: None,
        };
        let collection = CollectionReport {
            tenant: "t".into(),
            database: "d".into(),
            name: "c".into(),
            source_id: None,
            target_id: None,
            source_count: None,
            target_count: None,
            compared: 0,
            missing: 1,
            extra: 1,
            changed: 2,
            query: None,
            verdict: Verdict::Diverged,
        };
        let report = VerifyReport {
            source: BackendName::Old,
            target: BackendName::New,
            collections: vec![collection.clone()],
            divergences: vec![
                divergence(DivergenceKind::MissingRecord, &["m"]),
                divergence(DivergenceKind::ExtraRecord, &["x"]),
                divergence(DivergenceKind::ChangedMetadata, &["c1", "c2"]),
                divergence(DivergenceKind::ChangedDocument, &["c2"]),
            ],
            rechecked: 0,
            settled_on_recheck: 0,
            elapsed_seconds: 0.0,
            matches: false,
        };
        assert_eq!(
            report.repair_ids(&collection, false),
            ids(&["c1", "c2", "m"])
        );
        assert_eq!(
            report.repair_ids(&collection, true),
            ids(&["c1", "c2", "m", "x"])
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["divergences"][0]["kind"], "missing_record");
        assert_eq!(json["collections"][0]["verdict"], "diverged");
    }
}
