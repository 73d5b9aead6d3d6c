//! The online backfill: copies what the primary held before dual writes began to the
//! secondary, while clients keep writing through the proxy.
//!
//! It runs inside the proxy so it takes the same per-record order locks as live writes. Per
//! collection:
//! 1. make sure the secondary has the collection (same metadata and schema);
//! 2. snapshot the ids (ids only, sorted), never paging over full records by offset: Chroma's
//!    offsets shift when records are deleted, and a shifted page skips records;
//! 3. in batches, in id order: lock the batch's ids, re-read them from the primary, upsert
//!    what still exists to the secondary, unlock. A record deleted meanwhile is not resurrected;
//!    a newer dual write is not overwritten (it is either already applied, or queued behind);
//! 4. checkpoint the last id of every finished prefix, so a killed backfill resumes there;
//! 5. list the ids again and copy any the first snapshot missed.
//!
//! Every batch (and the creation of a collection on the target) passes the write gate, like a
//! client write, and checks under its pass that the topology is the one the backfill started
//! in. A cutover or rollback closes the gate, so it waits for the batches in flight and holds
//! the next ones; once it has swapped the primary, the next batch finds a new epoch and the
//! backfill stops as `aborted`, saying why. It does not follow the topology: its job is to
//! copy what the old primary held before dual writes began, and after a switch the records
//! it has not copied yet are missing from the new primary, which no copy in the other
//! direction can bring back. Copying from the old store into what is now the primary would
//! write stale data into it. So it stops, and an operator rolls back and backfills again
//! (the checkpoints keep what was done), or runs `verify --repair`.
//!
//! The batching decisions (batch size, concurrency, resuming at a checkpoint, finishing
//! concurrent batches in order) are pure functions in `backfill/batching.rs`, tested there
//! against a fake copy.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};
use shift_chroma::retry::Backoff;
use shift_config::BackendName;
use shift_proxy::DataPlaneState;

use crate::client::{ChromaClient, ClientError, Collection};

mod batching;

/// What to backfill and how fast.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackfillRequest {
    /// The client's tenant; `default_tenant` when absent.
    pub tenant: Option<String>,
    /// One database; every database of the tenant when absent.
    pub database: Option<String>,
    /// Only these collections (names); all when empty.
    pub collections: Vec<String>,
    /// Records per batch; the smaller store's `max_batch_size` at most.
    pub batch_size: Option<usize>,
    /// Batches in flight at once.
    pub concurrency: Option<usize>,
    /// Records per second at most; unlimited when absent.
    pub rate_limit: Option<u32>,
    /// Ignore checkpoints and copy everything again.
    pub restart: bool,
}

/// Where a backfill stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackfillState {
    Idle,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// A cutover or rollback changed the primary while it ran; `error` says which.
    Aborted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionProgress {
    pub name: String,
    pub tenant: String,
    pub database: String,
    pub client_id: String,
    pub total: u64,
    pub done: u64,
    /// Records skipped because an earlier run's checkpoint covered them.
    pub resumed_from_checkpoint: u64,
    pub finished: bool,
}

/// What `/admin/backfill` and the CLI's progress bar show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackfillProgress {
    pub state: BackfillState,
    pub request: Option<BackfillRequest>,
    pub total_records: u64,
    pub done_records: u64,
    pub records_per_second: f64,
    pub eta_seconds: Option<f64>,
    pub elapsed_seconds: f64,
    pub collections: Vec<CollectionProgress>,
    pub error: Option<String>,
}

impl BackfillProgress {
    fn idle() -> BackfillProgress {
        BackfillProgress {
            state: BackfillState::Idle,
            request: None,
            total_records: 0,
            done_records: 0,
            records_per_second: 0.0,
            eta_seconds: None,
            elapsed_seconds: 0.0,
            collections: Vec::new(),
            error: None,
        }
    }
}

/// A checkpoint: every id up to `last_id` (in sorted order) is copied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoint {
    last_id: Option<String>,
    complete: bool,
}

#[derive(Debug, Clone)]
struct BackfillMetrics {
    records: IntCounterVec,
    remaining: IntGauge,
}

/// Runs one backfill at a time inside the proxy.
#[derive(Debug)]
pub struct Backfiller {
    plane: Arc<DataPlaneState>,
    progress: Arc<Mutex<BackfillProgress>>,
    /// Set to stop the running backfill after its batches in flight.
    cancel: Arc<std::sync::atomic::AtomicBool>,
    metrics: BackfillMetrics,
    started: Mutex<Option<Instant>>,
    /// Set when the running backfill stopped because the topology changed under it.
    aborted: Arc<std::sync::atomic::AtomicBool>,
}

/// Why a backfill could not start.
#[derive(Debug, thiserror::Error)]
pub enum BackfillStartError {
    #[error("a backfill is already running")]
    AlreadyRunning,
}

/// Attempts of a call or a batch that fails with an error worth retrying (429, 5xx,
/// unreachable).
const RETRIES: u32 = 12;

/// The pause between attempts: a store that is restarting gets about two minutes in all.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(20));

impl Backfiller {
    pub fn new(
        plane: Arc<DataPlaneState>,
        registry: &Registry,
    ) -> prometheus::Result<Arc<Backfiller>> {
        let metrics = BackfillMetrics {
            records: IntCounterVec::new(
                Opts::new(
                    "chroma_shift_backfill_records_total",
                    "Records the backfill copied to the secondary, by collection.",
                ),
                &["collection"],
            )?,
            remaining: IntGauge::new(
                "chroma_shift_backfill_remaining_records",
                "Records the running backfill has still to copy.",
            )?,
        };
        registry.register(Box::new(metrics.records.clone()))?;
        registry.register(Box::new(metrics.remaining.clone()))?;
        Ok(Arc::new(Backfiller {
            plane,
            progress: Arc::new(Mutex::new(BackfillProgress::idle())),
            cancel: Arc::default(),
            metrics,
            started: Mutex::new(None),
            aborted: Arc::default(),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BackfillProgress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where the current (or last) backfill stands.
    pub fn progress(&self) -> BackfillProgress {
        let mut progress = self.lock().clone();
        if let Some(started) = *self.started.lock().unwrap_or_else(|e| e.into_inner()) {
            if progress.state == BackfillState::Running {
                progress.elapsed_seconds = started.elapsed().as_secs_f64();
                let rate = progress.done_records as f64 / progress.elapsed_seconds.max(0.001);
                progress.records_per_second = rate;
                let left = progress.total_records.saturating_sub(progress.done_records) as f64;
                progress.eta_seconds = (rate > 0.0).then(|| left / rate);
            }
        }
        progress
    }

    /// Starts a backfill in the background.
    pub fn start(
        self: &Arc<Self>,
        request: BackfillRequest,
    ) -> Result<BackfillProgress, BackfillStartError> {
        {
            let mut progress = self.lock();
            if progress.state == BackfillState::Running {
                return Err(BackfillStartError::AlreadyRunning);
            }
            *progress = BackfillProgress {
                state: BackfillState::Running,
                request: Some(request.clone()),
                ..BackfillProgress::idle()
            };
        }
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.cancel
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.aborted
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.run(&request).await;
            let elapsed = this
                .started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map_or(0.0, |s| s.elapsed().as_secs_f64());
            let mut progress = this.lock();
            progress.elapsed_seconds = elapsed;
            progress.records_per_second = progress.done_records as f64 / elapsed.max(0.001);
            progress.eta_seconds = None;
            match result {
                Ok(()) if this.cancel.load(std::sync::atomic::Ordering::Relaxed) => {
                    progress.state = BackfillState::Cancelled;
                }
                Ok(()) => progress.state = BackfillState::Succeeded,
                Err(error) if this.aborted.load(std::sync::atomic::Ordering::Relaxed) => {
                    tracing::warn!(%error, "backfill aborted");
                    progress.state = BackfillState::Aborted;
                    progress.error = Some(error);
                }
                Err(error) => {
                    tracing::error!(%error, "backfill failed");
                    progress.state = BackfillState::Failed;
                    progress.error = Some(error);
                }
            }
            this.metrics.remaining.set(0);
            tracing::info!(state = ?progress.state, records = progress.done_records, elapsed_s = elapsed, "backfill ended");
        });
        Ok(self.progress())
    }

    /// Stops the running backfill after the batches in flight; its checkpoints stay.
    pub fn cancel(&self) {
        self.cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A pass through the write gate, as long as `source` is still the primary of `epoch`:
    /// held while copying, so a switch waits for the copy and the copy never lands in a
    /// store that has become primary.
    async fn pass(
        &self,
        epoch: u64,
        source: BackendName,
    ) -> Result<shift_proxy::gate::WritePass, String> {
        let pass = self.plane.pass_gate().await;
        let now = self.plane.topology();
        if now.epoch != epoch || now.primary != source {
            self.aborted
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(format!(
                "aborted: the primary changed from {source} to {} (epoch {epoch} -> {}) while the backfill ran; it copies from the old primary only, so it stopped rather than write into the new one (its checkpoints are kept)",
                now.primary, now.epoch
            ));
        }
        Ok(pass)
    }

    fn client(&self, backend: BackendName) -> ChromaClient {
        ChromaClient::new(self.plane.backends().clone(), backend)
    }

    /// The client's (tenant, database) as `backend` names them.
    fn names(&self, backend: BackendName, tenant: &str, database: &str) -> (String, String) {
        let ns = self
            .plane
            .namespaces()
            .to_backend(backend, tenant, Some(database));
        (
            ns.tenant,
            ns.database.unwrap_or_else(|| database.to_owned()),
        )
    }

    async fn run(&self, request: &BackfillRequest) -> Result<(), String> {
        let topology = self.plane.topology();
        let (source, target) = (topology.primary, topology.secondary());
        let epoch = topology.epoch;
        let tenant = request
            .tenant
            .clone()
            .unwrap_or_else(|| "default_tenant".to_owned());
        let source_client = self.client(source);
        let target_client = self.client(target);
        let databases = match &request.database {
            Some(db) => vec![db.clone()],
            None => {
                let (source_tenant, _) = self.names(source, &tenant, "");
                retry("list databases", || source_client.databases(&source_tenant)).await?
            }
        };
        let max_batch = retry("max batch size", || source_client.max_batch_size())
            .await?
            .min(retry("max batch size", || target_client.max_batch_size()).await?);
        let batch_size = batching::batch_size(request.batch_size, max_batch);
        let concurrency = batching::concurrency(request.concurrency);

        // Inventory first, so the progress has a total from the start.
        let mut work: Vec<(String, Collection)> = Vec::new();
        for database in &databases {
            let (s_tenant, s_database) = self.names(source, &tenant, database);
            let collections = retry("list collections", || {
                source_client.collections(&s_tenant, &s_database)
            })
            .await?;
            for collection in collections {
                if request.collections.is_empty() || request.collections.contains(&collection.name)
                {
                    work.push((database.clone(), collection));
                }
            }
        }
        for (database, collection) in &work {
            let (s_tenant, s_database) = self.names(source, &tenant, database);
            let total = retry("count", || {
                source_client.count(&s_tenant, &s_database, &collection.id)
            })
            .await?;
            let entry = self
                .plane
                .register_collection(source, &collection.raw)
                .await
                .map_err(|e| e.to_string())?;
            let mut progress = self.lock();
            progress.total_records += total;
            progress.collections.push(CollectionProgress {
                name: collection.name.clone(),
                tenant: tenant.clone(),
                database: database.clone(),
                client_id: entry.client_id.to_string(),
                total,
                done: 0,
                resumed_from_checkpoint: 0,
                finished: false,
            });
        }
        self.metrics
            .remaining
            .set(i64::try_from(self.lock().total_records).unwrap_or(i64::MAX));

        for (index, (database, collection)) in work.iter().enumerate() {
            if self.cancelled() {
                return Ok(());
            }
            self.collection(
                index,
                epoch,
                source,
                target,
                &tenant,
                database,
                collection,
                batch_size,
                concurrency,
                request,
            )
            .await
            .map_err(|e| format!("collection {}: {e}", collection.name))?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn collection(
        &self,
        index: usize,
        epoch: u64,
        source: BackendName,
        target: BackendName,
        tenant: &str,
        database: &str,
        collection: &Collection,
        batch_size: usize,
        concurrency: usize,
        request: &BackfillRequest,
    ) -> Result<(), String> {
        let client_id = self.lock().collections[index].client_id.clone();
        let entry = self
            .plane
            .collection(&client_id)
            .ok_or("the collection left the map")?;
        let target_id = {
            let _pass = self.pass(epoch, source).await?;
            let entry = self
                .forget_lost_target(target, tenant, database, entry)
                .await?;
            // The secondary gets the collection with the primary's metadata and schema.
            self.plane
                .ensure_collection(target, &entry)
                .await
                .map_err(|e| e.to_string())?
        };
        let (s_tenant, s_database) = self.names(source, tenant, database);
        let (t_tenant, t_database) = self.names(target, tenant, database);
        let source_client = self.client(source);
        let target_client = self.client(target);

        let key = format!("backfill/{client_id}");
        let checkpoint: Checkpoint = match (request.restart, self.plane.checkpoint(&key)) {
            (false, Ok(Some(bytes))) => serde_json::from_slice(&bytes).unwrap_or_default(),
            _ => Checkpoint::default(),
        };
        let snapshot = retry("list ids", || {
            source_client.all_ids(&s_tenant, &s_database, &collection.id)
        })
        .await?;
        let (skipped, todo) = batching::resume(&snapshot, checkpoint.last_id.as_deref());
        if skipped > 0 {
            tracing::info!(
                collection = collection.name,
                skipped,
                "backfill resumes from its checkpoint"
            );
            let mut progress = self.lock();
            progress.done_records += skipped as u64;
            let c = &mut progress.collections[index];
            c.done += skipped as u64;
            c.resumed_from_checkpoint = skipped as u64;
        }

        let copy = BatchCopy {
            backfiller: self,
            source_client: &source_client,
            target_client: &target_client,
            source_names: (&s_tenant, &s_database, &collection.id),
            target_names: (&t_tenant, &t_database, &target_id),
            client_id: &client_id,
            rate_limit: request.rate_limit,
            index,
            epoch,
            source,
        };
        copy.copy_in_order(&todo, batch_size, concurrency, Some(&key))
            .await?;
        if self.cancelled() {
            return Ok(());
        }
        // Ids the snapshot missed (a page shifted by a delete) are copied now; ids written
        // since the snapshot went to both stores already, so copying them again is harmless.
        let again = retry("list ids", || {
            source_client.all_ids(&s_tenant, &s_database, &collection.id)
        })
        .await?;
        let missed = batching::missed(&snapshot, again);
        if !missed.is_empty() {
            copy.copy_in_order(&missed, batch_size, concurrency, None)
                .await?;
        }
        let done = Checkpoint {
            last_id: snapshot.last().cloned(),
            complete: true,
        };
        self.plane
            .save_checkpoint(&key, serde_json::to_vec(&done).unwrap_or_default())
            .await
            .map_err(|e| e.to_string())?;
        self.lock().collections[index].finished = true;
        Ok(())
    }

    /// A collection deleted on the target behind the proxy's back (found by `verify`) leaves
    /// its old id in the map, and copying to that id would fail: forget the id, so `ensure`
    /// creates the collection again.
    async fn forget_lost_target(
        &self,
        target: BackendName,
        tenant: &str,
        database: &str,
        entry: Arc<shift_proxy::collections::CollectionEntry>,
    ) -> Result<Arc<shift_proxy::collections::CollectionEntry>, String> {
        let Some(id) = entry.id_on(target) else {
            return Ok(entry);
        };
        let (t_tenant, t_database) = self.names(target, tenant, database);
        let client = self.client(target);
        if retry("get collection", || {
            client.collection(&t_tenant, &t_database, id)
        })
        .await?
        .is_some()
        {
            return Ok(entry);
        }
        tracing::warn!(collection = entry.name, %target, "the target lost the collection; it is created again");
        let updated = self
            .plane
            .forget_collection_on(&entry.client_id, target)
            .await
            .map_err(|e| e.to_string())?;
        Ok(updated.unwrap_or(entry))
    }

    fn advance(&self, index: usize, collection: &str, records: u64) {
        let mut progress = self.lock();
        progress.done_records += records;
        progress.collections[index].done += records;
        self.metrics
            .records
            .with_label_values(&[collection])
            .inc_by(records);
        let remaining = progress.total_records.saturating_sub(progress.done_records);
        self.metrics
            .remaining
            .set(i64::try_from(remaining).unwrap_or(i64::MAX));
    }
}

/// Copying the batches of one collection.
struct BatchCopy<'a> {
    backfiller: &'a Backfiller,
    source_client: &'a ChromaClient,
    target_client: &'a ChromaClient,
    /// (tenant, database, collection id) on the source.
    source_names: (&'a str, &'a str, &'a str),
    /// (tenant, database, collection id) on the target.
    target_names: (&'a str, &'a str, &'a str),
    client_id: &'a str,
    rate_limit: Option<u32>,
    index: usize,
    /// The topology the backfill started in: its batches stop once it changes.
    epoch: u64,
    source: BackendName,
}

impl BatchCopy<'_> {
    /// Copies `ids` in batches, `concurrency` at a time, finishing them in order so the
    /// checkpoint under `checkpoint_key` always covers a prefix.
    async fn copy_in_order(
        &self,
        ids: &[String],
        batch_size: usize,
        concurrency: usize,
        checkpoint_key: Option<&str>,
    ) -> Result<(), String> {
        let copy = |batch: Vec<String>| async move {
            let copied = self.copy_batch(&batch).await?;
            Ok::<_, String>((batch, copied))
        };
        let finished = |batch: Vec<String>, copied: usize| async move {
            self.backfiller
                .advance(self.index, self.client_id, batch.len() as u64);
            tracing::debug!(collection = self.client_id, copied, "backfill batch copied");
            if let (Some(key), Some(last)) = (checkpoint_key, batch.last()) {
                let checkpoint = Checkpoint {
                    last_id: Some(last.clone()),
                    complete: false,
                };
                self.backfiller
                    .plane
                    .save_checkpoint(key, serde_json::to_vec(&checkpoint).unwrap_or_default())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(self.backfiller.cancelled())
        };
        batching::copy_in_order(ids, batch_size, concurrency, copy, finished).await
    }

    /// Passes the gate, locks the batch's ids, re-reads them from the source, upserts what
    /// exists. A failed attempt gives the pass back before it waits, so a switch is never held
    /// by a backfill's retries.
    async fn copy_batch(&self, batch: &[String]) -> Result<usize, String> {
        let started = Instant::now();
        let (s_tenant, s_database, s_id) = self.source_names;
        let (t_tenant, t_database, t_id) = self.target_names;
        let attempt = || async {
            // The pass is given back before a retry's pause: `Ok(Err(_))` is the backfill
            // aborted by a switch, not a failure to retry.
            let _pass = match self.backfiller.pass(self.epoch, self.source).await {
                Ok(pass) => pass,
                Err(aborted) => return Ok(Err(aborted)),
            };
            let _order = self
                .backfiller
                .plane
                .order_records(self.client_id, batch)
                .await;
            match self
                .source_client
                .get(s_tenant, s_database, s_id, batch)
                .await
            {
                Ok(records) if records.ids.is_empty() => Ok(Ok(0)),
                Ok(records) => self
                    .target_client
                    .upsert(t_tenant, t_database, t_id, &records)
                    .await
                    .map(|()| Ok(records.ids.len())),
                Err(error) => Err(error),
            }
        };
        let copied = BACKOFF
            .retry(
                RETRIES,
                ClientError::is_retryable,
                |error, attempt, _| tracing::warn!(%error, attempt, "backfill batch failed; retrying"),
                attempt,
            )
            .await
            .map_err(|error| format!("copy: {error}"))??;
        if let Some(rate) = self.rate_limit.filter(|r| *r > 0) {
            let budget = Duration::from_secs_f64(batch.len() as f64 / f64::from(rate));
            if let Some(wait) = budget.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(copied)
    }
}

/// Calls `f` until it succeeds, backing off on errors worth retrying (429, 5xx, unreachable).
async fn retry<T, F, Fut>(what: &str, f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    BACKOFF
        .retry(
            RETRIES,
            ClientError::is_retryable,
            |error, attempt, _| tracing::warn!(what, %error, attempt, "backfill call failed; retrying"),
            f,
        )
        .await
        .map_err(|error| format!("{what}: {error}"))
}
