//! The replay applies each journal entry as the client identity that wrote it, never merging
//! two identities' writes into one request, and parks an entry whose identity is gone.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;

use serde_json::json;
use shift_state::{NewEntry, StateStore};

use super::*;
use crate::apply::gone_identity;
use crate::mirror::{ids_of, RecordKind};

/// A store that logs each request's ids and identity, and knows only some identities (as the
/// real applier does, from the config).
struct Recorder {
    known: HashSet<&'static str>,
    log: Mutex<Vec<(Vec<String>, Option<String>)>>,
}

impl ApplyTarget for Recorder {
    fn apply(
        &self,
        _target: BackendName,
        op: &MirrorOp,
        caller: &Caller,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send {
        let identity = caller.identity().map(str::to_owned);
        let result = match identity.as_deref() {
            Some(name) if !self.known.contains(name) => Err(ApplyError::Refused {
                reason: gone_identity(name),
                dimension_mismatch: false,
            }),
            _ => Ok(()),
        };
        if let (Ok(()), MirrorOp::Records { body, .. }) = (&result, op) {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            log.push((ids_of(body), identity));
        }
        std::future::ready(result)
    }

    fn max_batch(&self, _target: BackendName) -> impl Future<Output = usize> + Send {
        std::future::ready(100)
    }
}

fn upsert(id: &str) -> MirrorOp {
    MirrorOp::Records {
        kind: RecordKind::Upsert,
        collection: "c".into(),
        body: json!({"ids": [id], "embeddings": [[1.0]]}),
    }
}

#[tokio::test(start_paused = true)]
async fn entries_replay_as_their_identity_unmerged_across_identities_and_a_gone_one_is_parked() {
    const TARGET: BackendName = BackendName::New;
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).await.unwrap();
    let recorder = Arc::new(Recorder {
        known: HashSet::from(["team-a", "team-b"]),
        log: Mutex::new(Vec::new()),
    });
    let written = [
        ("a1", Some("team-a")),
        ("a2", Some("team-a")),
        ("b1", Some("team-b")),
        ("o1", None),
        ("o2", None),
        ("g1", Some("gone")),
        ("a3", Some("team-a")),
    ];
    // One commit, so the worker reads them together and could merge them all.
    let entries = written
        .iter()
        .map(|(id, identity)| NewEntry {
            target: TARGET,
            collection: "c".into(),
            payload: upsert(id).to_bytes_as(*identity),
        })
        .collect();
    store.append(entries).await.unwrap();
    let worker = ReplayWorker {
        target: TARGET,
        store: Arc::new(store.clone()),
        applier: recorder.clone(),
        metrics: ProxyMetrics::register(&prometheus::Registry::new()).unwrap(),
        replay_metrics: ReplayMetrics::unregistered().unwrap(),
        settings: ReplaySettings {
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            rate_limit: 0,
            max_bytes: 1024 * 1024,
            hold_until: None,
        },
        board: Arc::new(ReplayBoard::default()),
        alert: Arc::new(|_| {}),
        topology: crate::topology::shared(crate::topology::Topology {
            epoch: 1,
            primary: TARGET.other(),
            mode: shift_config::MirrorMode::Journaled,
            reads: Default::default(),
            paused: false,
            mirror_stopped: false,
        }),
    };
    let (stop, stopped) = watch::channel(false);
    let task = worker.spawn(stopped);
    for _ in 0..10_000 {
        if store.lag(TARGET).entries == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.lag(TARGET).entries, 0, "the journal drains");
    let _ = stop.send(true);
    task.await.unwrap();

    let log = recorder.log.lock().unwrap().clone();
    let requests: Vec<(Vec<&str>, Option<&str>)> = log
        .iter()
        .map(|(ids, who)| (ids.iter().map(String::as_str).collect(), who.as_deref()))
        .collect();
    assert_eq!(
        requests,
        vec![
            (vec!["a1", "a2"], Some("team-a")),
            (vec!["b1"], Some("team-b")),
            (vec!["o1", "o2"], None),
            (vec!["a3"], Some("team-a")),
        ]
    );
    let letters = store.dead_letters(None, 10).unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].reason.contains("`gone`"),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        crate::mirror::identity_of(&letters[0].payload),
        Some("gone")
    );
}
