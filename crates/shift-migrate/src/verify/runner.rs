//! [`Verifier`]: walks the client's tenants, databases and collections on both stores, compares
//! each collection (through [`super::side`]), and checks what diverged again after the writes in
//! flight have settled.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use shift_chroma::retry::Backoff;
use shift_config::BackendName;
use shift_proxy::namespace::NamespaceMap;
use shift_proxy::Backends;

use super::report::{
    CollectionReport, Diffs, Divergence, DivergenceKind, QuerySample, Verdict, VerifyOptions,
    VerifyReport,
};
use super::side::Side;
use crate::client::{ChromaClient, ClientError, Collection};

/// Why verify could not finish.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the {store} store: {source}")]
    StateStore {
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
    pub(super) source: ChromaClient,
    pub(super) target: ChromaClient,
    namespaces: NamespaceMap,
    pub(super) options: VerifyOptions,
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
pub(super) fn on(store: BackendName) -> impl Fn(ClientError) -> VerifyError {
    move |source| VerifyError::StateStore { store, source }
}

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

    pub(super) fn client(&self, store: BackendName) -> &ChromaClient {
        if store == self.source.store() {
            &self.source
        } else {
            &self.target
        }
    }

    /// The (tenant, database) `store` calls the client's `tenant`/`database`.
    pub(super) fn names(
        &self,
        store: BackendName,
        tenant: &str,
        database: &str,
    ) -> (String, String) {
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
                            Err(VerifyError::StateStore {
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

/// Attempts of a call that failed with a retryable error.
const RETRIES: u32 = 6;

/// The pause between attempts.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

/// Calls `f` until it succeeds, backing off on errors worth retrying (429, 5xx, unreachable);
/// other errors are returned at once.
pub(crate) async fn retry<T, F, Fut>(f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    BACKOFF
        .retry(
            RETRIES,
            ClientError::is_retryable,
            |error, attempt, _| tracing::warn!(%error, attempt, "verify call failed; retrying"),
            f,
        )
        .await
}
