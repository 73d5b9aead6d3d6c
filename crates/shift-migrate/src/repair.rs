//! Repair through a running proxy: turns a [`VerifyReport`] into the proxy calls that bring the
//! target in line with the source (a backfill of each missing collection, reconciliations of
//! the diverged records, queued in the proxy's journal under its order locks) and waits for
//! them to land.
//!
//! The proxy is reached through [`ProxyControl`], which its admin client implements
//! (`shift_control::client::AdminClient`): this crate sits below the control plane, so it
//! names what it needs of the proxy rather than the client.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use shift_config::BackendName;

use crate::backfill::{BackfillProgress, BackfillRequest, BackfillState};
use crate::verify::{CollectionReport, Verdict, VerifyReport};

/// How often a backfill's progress is read while waiting for it.
const BACKFILL_POLL: Duration = Duration::from_millis(300);
/// How long to wait before asking again to start a backfill while another runs.
const BUSY_RETRY: Duration = Duration::from_millis(500);
/// How often the journal is read while waiting for it to drain.
const DRAIN_POLL: Duration = Duration::from_millis(200);
/// Ids per repair call.
const IDS_PER_CALL: usize = 10_000;

/// What a repair needs of the running proxy.
pub trait ProxyControl: Send + Sync {
    /// Journal entries waiting for `target`.
    fn journal_entries(
        &self,
        target: BackendName,
    ) -> impl Future<Output = Result<u64, String>> + Send;

    /// Starts a backfill; [`Started::Busy`] while another one runs.
    fn start_backfill(
        &self,
        request: &BackfillRequest,
    ) -> impl Future<Output = Result<Started, String>> + Send;

    /// The backfill's progress.
    fn backfill_progress(&self) -> impl Future<Output = Result<BackfillProgress, String>> + Send;

    /// Queues the reconciliation of `ids` of the collection the proxy knows by the client id
    /// `collection`; [`Queued::UnknownCollection`] when it knows none by that id.
    fn reconcile(
        &self,
        collection: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Queued, String>> + Send;
}

/// The answer to a request to start a backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    Started,
    /// Another backfill runs.
    Busy,
}

/// The answer to a request to reconcile records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Queued,
    /// The proxy knows no collection by that id.
    UnknownCollection,
}

/// Why a repair could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    /// A call to the proxy failed.
    #[error("{0}")]
    Proxy(String),
    /// The proxy refused to start a backfill, or the backfill did not succeed.
    #[error("the backfill of {collections} {outcome}")]
    Backfill {
        collections: String,
        outcome: String,
    },
    /// The proxy knows the collection by none of its ids, even after a backfill.
    #[error("the proxy knows collection {name} by none of its ids ({ids})")]
    UnknownCollection { name: String, ids: String },
}

/// One thing a repair did (or chose not to do), with a line for people.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum RepairAction {
    /// Nothing to do, or nothing it may do (records or a collection only on the target).
    None { collection: String, text: String },
    /// A backfill of the collections missing on the target, in one database.
    Backfill {
        tenant: String,
        database: String,
        collections: Vec<String>,
        state: BackfillState,
        records: u64,
        text: String,
    },
    /// Diverged records queued for reconciliation.
    Reconcile {
        collection: String,
        client_id: String,
        ids: usize,
        text: String,
    },
}

impl RepairAction {
    /// The line for people.
    pub fn text(&self) -> &str {
        match self {
            RepairAction::None { text, .. }
            | RepairAction::Backfill { text, .. }
            | RepairAction::Reconcile { text, .. } => text,
        }
    }
}

/// Brings the target in line with `report` through `proxy`: a backfill of each missing
/// collection (one per database), reconciliations of the diverged records (in the journal,
/// under the order locks). Extra records are deleted only with `delete_extra`; collections
/// only on the target are left alone. Each backfill is waited for within `limit`.
pub async fn repair(
    proxy: &impl ProxyControl,
    report: &VerifyReport,
    delete_extra: bool,
    limit: Duration,
) -> Result<Vec<RepairAction>, RepairError> {
    let mut actions = Vec::new();
    // Missing collections: one backfill per database.
    let mut missing: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for collection in &report.collections {
        match collection.verdict {
            Verdict::Missing => missing
                .entry((collection.tenant.clone(), collection.database.clone()))
                .or_default()
                .push(collection.name.clone()),
            Verdict::Extra => actions.push(RepairAction::None {
                collection: collection.name.clone(),
                text: format!(
                    "{}: only on {}; left alone (delete it there yourself if it should not exist)",
                    collection.name, report.target
                ),
            }),
            _ => {}
        }
    }
    for ((tenant, database), names) in missing {
        let progress = backfill(proxy, &tenant, &database, &names, limit).await?;
        let text = format!(
            "{}: missing on {}; backfilled ({} records, {})",
            names.join(", "),
            report.target,
            progress.done_records,
            state_name(progress.state)
        );
        actions.push(RepairAction::Backfill {
            tenant,
            database,
            collections: names,
            state: progress.state,
            records: progress.done_records,
            text,
        });
    }

    for collection in report
        .collections
        .iter()
        .filter(|c| c.verdict == Verdict::Diverged)
    {
        let ids = report.repair_ids(collection, delete_extra);
        let extra_left = if delete_extra { 0 } else { collection.extra };
        if ids.is_empty() {
            let text = if extra_left > 0 {
                format!(
                    "{}: {extra_left} records only on {}; left (pass --delete-extra to delete them)",
                    collection.name, report.target
                )
            } else {
                format!(
                    "{}: no record to repair (the query sample differs: an index difference, not a record one)",
                    collection.name
                )
            };
            actions.push(RepairAction::None {
                collection: collection.name.clone(),
                text,
            });
            continue;
        }
        let client_id = reconcile(proxy, report, collection, &ids, limit).await?;
        let mut text = format!(
            "{}: {} records queued for reconciliation (collection {client_id})",
            collection.name,
            ids.len()
        );
        if extra_left > 0 {
            text.push_str(&format!(
                "; {extra_left} records only on {} left (pass --delete-extra to delete them)",
                report.target
            ));
        }
        actions.push(RepairAction::Reconcile {
            collection: collection.name.clone(),
            client_id,
            ids: ids.len(),
            text,
        });
    }
    Ok(actions)
}

/// Waits until the proxy's journal holds nothing for `target`; false when `limit` passed or
/// the proxy could not tell.
pub async fn wait_drained(proxy: &impl ProxyControl, target: BackendName, limit: Duration) -> bool {
    let started = Instant::now();
    loop {
        match proxy.journal_entries(target).await {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "the proxy's status could not be read");
                return false;
            }
        }
        if started.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Queues the reconciliation of `ids`; the client id it used. The proxy knows a collection by
/// the id of the store where it first saw it: the old store's for anything that existed before
/// the migration, the new store's for one created there. A collection the proxy has never seen
/// is registered by a backfill first.
async fn reconcile(
    proxy: &impl ProxyControl,
    report: &VerifyReport,
    collection: &CollectionReport,
    ids: &[String],
    limit: Duration,
) -> Result<String, RepairError> {
    let id_on = |store: BackendName| {
        if store == report.source {
            collection.source_id.clone()
        } else {
            collection.target_id.clone()
        }
    };
    let candidates: Vec<String> = [id_on(BackendName::Old), id_on(BackendName::New)]
        .into_iter()
        .flatten()
        .collect();
    for attempt in 0..2 {
        for candidate in &candidates {
            let mut known = true;
            for chunk in ids.chunks(IDS_PER_CALL) {
                match proxy.reconcile(candidate, chunk).await {
                    Ok(Queued::Queued) => {}
                    Ok(Queued::UnknownCollection) => {
                        known = false;
                        break;
                    }
                    Err(error) => {
                        return Err(RepairError::Proxy(format!(
                            "the proxy refused the repair of {}: {error}",
                            collection.name
                        )))
                    }
                }
            }
            if known {
                return Ok(candidate.clone());
            }
        }
        if attempt == 0 {
            // Unknown to the proxy: a backfill of the collection registers it (and copies it).
            backfill(
                proxy,
                &collection.tenant,
                &collection.database,
                std::slice::from_ref(&collection.name),
                limit,
            )
            .await?;
        }
    }
    Err(RepairError::UnknownCollection {
        name: collection.name.clone(),
        ids: candidates.join(", "),
    })
}

/// Runs a backfill of `names` in the proxy and waits (within `limit`) for it to end; its final
/// progress.
async fn backfill(
    proxy: &impl ProxyControl,
    tenant: &str,
    database: &str,
    names: &[String],
    limit: Duration,
) -> Result<BackfillProgress, RepairError> {
    let request = BackfillRequest {
        tenant: Some(tenant.to_owned()),
        database: Some(database.to_owned()),
        collections: names.to_vec(),
        ..BackfillRequest::default()
    };
    let failed = |outcome: String| RepairError::Backfill {
        collections: names.join(", "),
        outcome,
    };
    let started = Instant::now();
    loop {
        match proxy.start_backfill(&request).await {
            Ok(Started::Started) => break,
            // Another backfill runs: wait for it, then start ours.
            Ok(Started::Busy) if started.elapsed() < limit => tokio::time::sleep(BUSY_RETRY).await,
            Ok(Started::Busy) => {
                return Err(failed(format!(
                    "could not start: another backfill ran for {limit:?}"
                )))
            }
            Err(error) => return Err(failed(format!("was refused: {error}"))),
        }
    }
    loop {
        let progress = proxy
            .backfill_progress()
            .await
            .map_err(RepairError::Proxy)?;
        if progress.state != BackfillState::Running {
            if progress.state != BackfillState::Succeeded {
                return Err(failed(format!(
                    "{}: {}",
                    state_name(progress.state),
                    progress.error.as_deref().unwrap_or("see the proxy's log")
                )));
            }
            return Ok(progress);
        }
        if started.elapsed() >= limit {
            return Err(failed(format!("did not end within {limit:?}")));
        }
        tokio::time::sleep(BACKFILL_POLL).await;
    }
}

/// A backfill state as the admin API names it (`succeeded`, `failed`, ...).
pub fn state_name(state: BackfillState) -> String {
    match serde_json::to_value(state) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{state:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::verify::Divergence;
    use crate::verify::DivergenceKind;

    /// A proxy that knows one collection id, answers a first backfill with "busy", and logs
    /// every call.
    #[derive(Default)]
    struct FakeProxy {
        calls: Mutex<Vec<String>>,
    }

    impl FakeProxy {
        fn log(&self, call: String) -> usize {
            let mut calls = self.calls.lock().unwrap();
            calls.push(call);
            calls.len()
        }
    }

    impl ProxyControl for FakeProxy {
        async fn journal_entries(&self, _target: BackendName) -> Result<u64, String> {
            Ok(0)
        }

        async fn start_backfill(&self, request: &BackfillRequest) -> Result<Started, String> {
            let n = self.log(format!("backfill {}", request.collections.join(",")));
            Ok(if n == 1 {
                Started::Busy
            } else {
                Started::Started
            })
        }

        async fn backfill_progress(&self) -> Result<BackfillProgress, String> {
            Ok(BackfillProgress {
                state: BackfillState::Succeeded,
                request: None,
                total_records: 5,
                done_records: 5,
                records_per_second: 1.0,
                eta_seconds: None,
                elapsed_seconds: 5.0,
                collections: Vec::new(),
                error: None,
            })
        }

        async fn reconcile(&self, collection: &str, ids: &[String]) -> Result<Queued, String> {
            self.log(format!("reconcile {collection} {}", ids.join(",")));
            Ok(if collection == "id-on-new" {
                Queued::Queued
            } else {
                Queued::UnknownCollection
            })
        }
    }

    fn collection(name: &str, verdict: Verdict) -> CollectionReport {
        CollectionReport {
            tenant: "default_tenant".to_owned(),
            database: "default_database".to_owned(),
            name: name.to_owned(),
            source_id: Some("id-on-old".to_owned()),
            target_id: Some("id-on-new".to_owned()),
            source_count: None,
            target_count: None,
            compared: 0,
            missing: 0,
            extra: 1,
            changed: 0,
            query: None,
            verdict,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_repair_backfills_missing_collections_and_reconciles_by_the_id_the_proxy_knows() {
        let report = VerifyReport {
            source: BackendName::Old,
            target: BackendName::New,
            collections: vec![
                collection("gone", Verdict::Missing),
                collection("drifted", Verdict::Diverged),
                collection("stray", Verdict::Extra),
            ],
            divergences: vec![Divergence {
                kind: DivergenceKind::MissingRecord,
                tenant: "default_tenant".to_owned(),
                database: "default_database".to_owned(),
                collection: "drifted".to_owned(),
                count: 2,
                ids: vec!["a".to_owned(), "b".to_owned()],
                detail: None,
            }],
            rechecked: 0,
            settled_on_recheck: 0,
            elapsed_seconds: 0.0,
            matches: false,
        };
        let proxy = FakeProxy::default();
        let actions = repair(&proxy, &report, false, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            *proxy.calls.lock().unwrap(),
            [
                "backfill gone",
                "backfill gone",
                "reconcile id-on-old a,b",
                "reconcile id-on-new a,b"
            ]
        );
        let kinds: Vec<&str> = actions
            .iter()
            .map(|a| match a {
                RepairAction::None { .. } => "none",
                RepairAction::Backfill { .. } => "backfill",
                RepairAction::Reconcile { .. } => "reconcile",
            })
            .collect();
        assert_eq!(kinds, ["none", "backfill", "reconcile"]);
        let reconcile = serde_json::to_value(&actions[2]).unwrap();
        assert_eq!(reconcile["action"], "reconcile");
        assert_eq!(reconcile["client_id"], "id-on-new");
        assert_eq!(reconcile["ids"], 2);
        assert!(
            actions[2].text().contains("1 records only on new left"),
            "{}",
            actions[2].text()
        );
        assert!(wait_drained(&proxy, BackendName::New, Duration::ZERO).await);
    }
}
