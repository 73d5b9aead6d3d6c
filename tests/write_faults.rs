//! Faults at the worst moments of the write path, against real Chroma servers:
//!
//! - clients hanging up mid-write (HTTP/1 and h2c) while the primary applies at once and
//!   answers slowly: every write still reaches the secondary, without a restart;
//! - the proxy killed (`kill -9`) exactly between the primary's answer and the journal commit,
//!   held there by a failpoint, with an add, an update and a delete in flight: recovery at the
//!   next start brings the secondary in line;
//! - a primary that applies a write after the proxy gave up on it, and a client retry of the
//!   same record right behind it: the retry does not overtake the late write on either store;
//! - an update naming ids the collection lacks is answered by Chroma itself, and Chroma
//!   1.5.9's stale embedding of such an update never comes back on either store;
//! - lifecycle writes Chroma refuses (a rename to a taken name, a delete by id, a function it
//!   does not implement) change nothing on the secondary and block nothing behind them;
//! - request targets that are not paths, bodies the proxy cannot read and write routes Chroma
//!   lacks are refused in Chroma's error shape and reach no store.
//!
//! Every test ends by comparing whole records (ids, embeddings, metadatas, documents, uris) on
//! both stores, and checks them against what the clients were told.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use shift_config::BackendName;
use shift_config::Secrets;
use shift_testkit::collection::create_collection;
use shift_testkit::faulty::two_stores_one_faulty;
use shift_testkit::scrape::counter;
use shift_testkit::stores::two_stores;
use shift_testkit::stores::two_stores_and_proxy;
use shift_testkit::{http, http_json, Chroma, Fault, Proxy, ProxyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const COLLECTIONS: &str = "/api/v2/tenants/default_tenant/databases/default_database/collections";
/// Bound on every wait: only turns a hang into a failure.
const WAIT: Duration = Duration::from_secs(90);

const JOURNALED: &str =
    "[mirror]\nmode = \"journaled\"\nretry_initial = \"50ms\"\nretry_max = \"1s\"\n";

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Waits until `check` says yes.
async fn wait_for<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        // A local Chroma sometimes fails a read while it writes its index to disk ("Nothing
        // found on disk"): a failed read is a "not yet".
        let last = match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => String::new(),
            Err(error) => error.to_string(),
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "gave up waiting for {what} {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of the collection `name` on the store at `url`, whole.
async fn records(url: &str, name: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    shift_testkit::stores::records_json(url, name).await
}

/// Waits until both stores hold the same records of `name`, and returns them.
async fn same_on_both(old: &str, new: &str, name: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let read = async { anyhow::Ok((records(old, name).await?, records(new, name).await?)) };
        let (on_old, on_new) = match read.await {
            Ok(both) => both,
            // See `wait_for`: a failed read is a "not yet".
            Err(error) if Instant::now() < deadline => {
                eprintln!("reading {name}: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        if on_old == on_new {
            return Ok(on_old);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the stores still differ on {name}\nold: {}\nnew: {}",
            serde_json::to_string(&on_old)?,
            serde_json::to_string(&on_new)?
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn write(
    proxy: &str,
    id: &str,
    verb: &str,
    body: Value,
) -> anyhow::Result<(http::StatusCode, Value)> {
    http_json(
        "POST",
        &format!("{proxy}{COLLECTIONS}/{id}/{verb}"),
        Some(body),
    )
    .await
}

/// `n` records from `first`, with 4-dimensional embeddings exact in f32.
/// Restarts `proxy` with the failpoint `spec` (`name=action`) configured.
async fn restart_with_failpoint(proxy: &mut ProxyProcess, spec: &str) -> anyhow::Result<()> {
    proxy.stop().await?;
    proxy.set_env(&[("FAILPOINTS", spec)]);
    proxy.restart().await?;
    ensure_failpoints(proxy)
}

/// Fails the test, saying why, when the binary has no failpoints compiled in.
fn ensure_failpoints(proxy: &ProxyProcess) -> anyhow::Result<()> {
    anyhow::ensure!(
        proxy.log_tail(200).contains("failpoints enabled"),
        "the chroma-shift binary was built without the `failpoints` feature; run the tests through the workspace (scripts/test.sh)"
    );
    Ok(())
}

fn batch(first: usize, n: usize, tag: &str) -> Value {
    let ids: Vec<String> = (first..first + n).map(|i| format!("r{i}")).collect();
    let embeddings: Vec<Vec<f64>> = (first..first + n)
        .map(|i| vec![i as f64 / 8.0, 1.0, 0.5, -0.25])
        .collect();
    let metadatas: Vec<Value> = (first..first + n)
        .map(|i| json!({"i": i, "tag": tag}))
        .collect();
    let documents: Vec<String> = (first..first + n)
        .map(|i| format!("doc {i} {tag}"))
        .collect();
    json!({"ids": ids, "embeddings": embeddings, "metadatas": metadatas, "documents": documents})
}

/// The record `batch` made for `i`, as [`records`] reads it back.
fn expected(i: usize, tag: &str) -> Value {
    json!({
        "embedding": [i as f64 / 8.0, 1.0, 0.5, -0.25],
        "metadata": {"i": i, "tag": tag},
        "document": format!("doc {i} {tag}"),
        "uri": null,
    })
}

// ---------------------------------------------------------------------------------------------
// Clients hanging up.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_mid_write_lose_nothing_http1() -> anyhow::Result<()> {
    hang_ups(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_mid_write_lose_nothing_h2c() -> anyhow::Result<()> {
    hang_ups(true).await
}

/// The old store (primary) applies each add at once and answers after 2 s; each client gives
/// up after 0.7 s and closes its connection (HTTP/1) or resets its stream (h2c). The proxy's
/// settlement does not belong to the connection: every add reaches the new store.
async fn hang_ups(h2: bool) -> anyhow::Result<()> {
    let (old, new, faulty, builder) = two_stores_one_faulty(BackendName::Old).await?;
    let proxy = builder.toml(JOURNALED).spawn().await?;
    let name = if h2 { "hangup-h2" } else { "hangup-h1" };
    let id = create_collection(&proxy.url(), json!({"name": name})).await?;
    faulty.push_write_faults((0..3).map(|_| Fault::SlowAnswer(Duration::from_secs(2))));

    let client = {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.http2_only(h2);
        builder.build_http::<Full<Bytes>>()
    };
    for round in 0..3 {
        let body = serde_json::to_vec(&batch(round * 50, 50, "a"))?;
        let request = http::Request::post(format!("{}{COLLECTIONS}/{id}/add", proxy.url()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let gave_up = tokio::time::timeout(Duration::from_millis(700), async {
            let response = client.request(request).await?;
            response.into_body().collect().await?;
            anyhow::Ok(())
        })
        .await;
        assert!(
            gave_up.is_err(),
            "the slow answer came before the client gave up"
        );
        // The next round's ids share order locks with this one's: let this one settle, or
        // the next would wait for it (and be dropped unsent when its client gives up).
        wait_for("the add to settle on both stores", || async {
            Ok(records(&new.url(), name).await?.len() == (round + 1) * 50)
        })
        .await?;
    }
    // The connections die with the client.
    drop(client);

    let stored = same_on_both(&old.url(), &new.url(), name).await?;
    assert_eq!(stored.len(), 150, "every add the old store applied");
    for (i, record) in (0..150).map(|i| (i, &stored[&format!("r{i}")])) {
        assert_eq!(record, &expected(i, "a"), "r{i}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// kill -9 between the primary's answer and the journal commit.

/// Whether a write shows in a store's records.
type Applied = fn(&BTreeMap<String, Value>) -> bool;

/// One write in flight, held after the primary's answer by a failpoint, the proxy killed
/// there; at the next start the write's intent becomes a reconciliation and the new store
/// ends up with what the old one holds. For an add, an update and a delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_between_primary_answer_and_journal_commit_recovers() -> anyhow::Result<()> {
    let (old, new) = two_stores().await?;
    let builder = Proxy::in_front_of(&old, &new).toml(JOURNALED);
    let mut proxy = ProxyProcess::start(builder).await?;
    let id = create_collection(&proxy.url(), json!({"name": "killed"})).await?;
    let (status, body) = write(&proxy.url(), &id, "add", batch(0, 10, "seed")).await?;
    anyhow::ensure!(status.is_success(), "{status} {body}");
    same_on_both(&old.url(), &new.url(), "killed").await?;

    let add = batch(10, 3, "late");
    let update = json!({
        "ids": ["r0", "r1", "r2"],
        "embeddings": [[9.0, 9.0, 9.0, 9.0], [8.0, 8.0, 8.0, 8.0], [7.0, 7.0, 7.0, 7.0]],
        "metadatas": [{"tag": "updated"}, {"tag": "updated"}, {"tag": "updated"}],
    });
    let delete = json!({"ids": ["r3", "r4", "r5"]});
    let cases: [(&str, Value, Applied); 3] = [
        ("add", add, |r| {
            r.contains_key("r10") && r.contains_key("r12")
        }),
        ("update", update, |r| {
            r.get("r0")
                .is_some_and(|v| v["metadata"]["tag"] == "updated")
        }),
        ("delete", delete, |r| {
            !r.contains_key("r3") && !r.contains_key("r5")
        }),
    ];
    for (verb, body, applied) in cases {
        restart_with_failpoint(&mut proxy, "write::after_primary=pause").await?;
        let url = proxy.url();
        let collection = id.clone();
        let in_flight = tokio::spawn(async move { write(&url, &collection, verb, body).await });

        // The primary has it; the journal does not: the proxy is held between the two.
        wait_for(&format!("the old store to apply the {verb}"), || async {
            Ok(applied(&records(&old.url(), "killed").await?))
        })
        .await?;
        assert!(
            !applied(&records(&new.url(), "killed").await?),
            "the {verb} reached the new store before the kill"
        );
        proxy.kill9().await?;
        let answered = in_flight.await?;
        assert!(
            !answered
                .as_ref()
                .is_ok_and(|(status, _)| status.is_success()),
            "the client was told the {verb} succeeded: {answered:?}"
        );

        proxy.set_env(&[]);
        proxy.restart().await?;
        let stored = same_on_both(&old.url(), &new.url(), "killed").await?;
        assert!(applied(&stored), "the {verb} is on both stores");
        assert!(
            proxy
                .log_tail(400)
                .contains("recovered writes in flight at the last stop"),
            "recovery did not report the intent:\n{}",
            proxy.log_tail(40)
        );
    }
    let stored = same_on_both(&old.url(), &new.url(), "killed").await?;
    let ids: Vec<&str> = stored.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        ["r0", "r1", "r10", "r11", "r12", "r2", "r6", "r7", "r8", "r9"]
    );
    assert_eq!(stored["r0"]["embedding"], json!([9.0, 9.0, 9.0, 9.0]));
    assert_eq!(stored["r11"], expected(11, "late"));
    Ok(())
}

/// The proxy killed after a write's settlement was committed but before any later commit
/// made it durable (the settlement of a record write waits for the next fsync; here the new
/// store is down, so no replay commit comes either): the settlement is lost, the intent is
/// back at the next start and its reconciliation brings the new store in line, as if the
/// kill had come before the settlement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_a_deferred_settlement_recovers() -> anyhow::Result<()> {
    let (old, mut new) = two_stores().await?;
    let builder = Proxy::in_front_of(&old, &new).toml(JOURNALED);
    let mut proxy = ProxyProcess::start(builder).await?;
    let id = create_collection(&proxy.url(), json!({"name": "deferred"})).await?;
    let (status, body) = write(&proxy.url(), &id, "add", batch(0, 3, "seed")).await?;
    anyhow::ensure!(status.is_success(), "{status} {body}");
    same_on_both(&old.url(), &new.url(), "deferred").await?;

    new.stop().await?;
    restart_with_failpoint(&mut proxy, "write::after_commit=pause").await?;
    let url = proxy.url();
    let collection = id.clone();
    let in_flight =
        tokio::spawn(async move { write(&url, &collection, "upsert", batch(1, 2, "late")).await });
    // The settlement is committed (deferred, no fsync) and the task held right after it.
    let admin = proxy.admin_url();
    wait_for("the write's deferred settlement", || async {
        let deferred = counter(
            &admin,
            "chroma_shift_state_commits_total",
            &[("durability", "deferred")],
        )
        .await?;
        let pending = counter(&admin, "chroma_shift_pending_intents", &[]).await?;
        Ok(deferred >= 1.0 && pending == 0.0)
    })
    .await?;
    assert_eq!(
        records(&old.url(), "deferred").await?["r2"],
        expected(2, "late")
    );
    proxy.kill9().await?;
    let _ = in_flight.await?;

    new.restart().await?;
    proxy.set_env(&[]);
    proxy.restart().await?;
    assert!(
        proxy
            .log_tail(400)
            .contains("recovered writes in flight at the last stop"),
        "the lost settlement's intent was not recovered:\n{}",
        proxy.log_tail(40)
    );
    let stored = same_on_both(&old.url(), &new.url(), "deferred").await?;
    assert_eq!(stored["r0"], expected(0, "seed"));
    assert_eq!(stored["r1"], expected(1, "late"));
    assert_eq!(stored["r2"], expected(2, "late"));
    Ok(())
}

/// The replay removes applied adds, upserts and deletes without an fsync of their own (the
/// next durable commit, a write's intent say, makes them durable). Here the whole journal is
/// applied while nothing else commits, and the proxy is killed once it is empty: the removes
/// are lost, the entries are back at the next start and applied again, in order, onto a store
/// that holds them already, which leaves both stores with what the clients wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_after_deferred_replay_removes_applies_them_again_harmlessly() -> anyhow::Result<()> {
    let (old, mut new) = two_stores().await?;
    let builder = Proxy::in_front_of(&old, &new).toml(JOURNALED);
    let mut proxy = ProxyProcess::start(builder).await?;
    let id = create_collection(&proxy.url(), json!({"name": "reapplied"})).await?;
    same_on_both(&old.url(), &new.url(), "reapplied").await?;
    // Queued while the new store is down: the same records added, rewritten, deleted and
    // added again, applied in one run once it is back.
    new.stop().await?;
    for (verb, body) in [
        ("add", batch(0, 4, "first")),
        ("upsert", batch(1, 2, "second")),
        ("delete", json!({"ids": ["r2", "r3"]})),
        ("add", batch(3, 2, "third")),
    ] {
        let (status, body) = write(&proxy.url(), &id, verb, body).await?;
        anyhow::ensure!(status.is_success(), "{verb}: {status} {body}");
    }
    new.restart().await?;
    let admin = proxy.admin_url();
    let drained = |admin: String, entries: f64| async move {
        let depth = &[("target", "new"), ("collection", "")];
        let depth = counter(&admin, "chroma_shift_journal_depth", depth).await?;
        let applied = counter(
            &admin,
            "chroma_shift_replay_applied_total",
            &[("target", "new")],
        );
        Ok(depth == 0.0 && applied.await? >= entries)
    };
    wait_for("the journal applied", || drained(admin.clone(), 4.0)).await?;
    proxy.kill9().await?;

    proxy.restart().await?;
    // Nothing was written since: what the new process applies came back with the lost
    // removes (the first three writes' entries at least; the last one's settlement may be
    // lost too, and then its intent comes back as a reconciliation).
    wait_for("the entries applied again", || {
        drained(proxy.admin_url(), 3.0)
    })
    .await?;
    let stored = same_on_both(&old.url(), &new.url(), "reapplied").await?;
    let ids: Vec<&str> = stored.keys().map(String::as_str).collect();
    assert_eq!(ids, ["r0", "r1", "r3", "r4"]);
    assert_eq!(stored["r0"], expected(0, "first"));
    assert_eq!(stored["r1"], expected(1, "second"));
    assert_eq!(stored["r3"], expected(3, "third"));
    assert_eq!(stored["r4"], expected(4, "third"));
    Ok(())
}

/// On the success path a journaled record write costs the state one fsync (its intent); its
/// settlement is committed without one. The new store is down, so the replay commits nothing
/// meanwhile: every fsync counted is the writes'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_write_costs_the_state_one_fsync() -> anyhow::Result<()> {
    const WRITES: usize = 20;
    let old = Chroma::spawn().await?;
    let proxy = Proxy::builder()
        .old(old.url())
        .new_store("http://127.0.0.1:9")
        .toml(JOURNALED)
        .spawn()
        .await?;
    let id = create_collection(&proxy.url(), json!({"name": "fsyncs"})).await?;
    let (status, body) = write(&proxy.url(), &id, "add", batch(0, 1, "first")).await?;
    anyhow::ensure!(status.is_success(), "{status} {body}");
    let admin = proxy.admin_url();
    let commits = |durability: &'static str| {
        let admin = admin.clone();
        async move {
            counter(
                &admin,
                "chroma_shift_state_commits_total",
                &[("durability", durability)],
            )
            .await
        }
    };
    let (fsyncs, deferred) = (commits("fsync").await?, commits("deferred").await?);
    for i in 1..=WRITES {
        let verb = if i % 2 == 0 { "add" } else { "upsert" };
        let (status, body) = write(&proxy.url(), &id, verb, batch(i, 1, "w")).await?;
        anyhow::ensure!(status.is_success(), "{status} {body}");
    }
    let fsyncs = commits("fsync").await? - fsyncs;
    let deferred = commits("deferred").await? - deferred;
    assert!(
        (1.0..=WRITES as f64).contains(&fsyncs),
        "{WRITES} writes cost {fsyncs} fsyncs ({deferred} deferred commits)"
    );
    assert!(deferred >= 1.0, "no settlement was deferred");
    let depth = counter(
        &admin,
        "chroma_shift_journal_depth",
        &[("target", "new"), ("collection", "")],
    )
    .await?;
    assert!(depth >= (WRITES + 1) as f64, "journal depth {depth}");
    assert_eq!(
        counter(&admin, "chroma_shift_pending_intents", &[]).await?,
        0.0
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A late commit on the primary and a retry right behind it.

/// The old store applies an upsert a second after it arrived, after the proxy's 500 ms
/// request timeout: the client hears 504 and upserts the same record again at once. The retry
/// waits until the unknown outcome's grace has passed, so it lands after the late write on the
/// primary, and the new store, reconciled after the grace, ends with the same value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_primary_commit_is_not_overtaken_by_a_retry() -> anyhow::Result<()> {
    let (old, new, faulty, builder) = two_stores_one_faulty(BackendName::Old).await?;
    let builder = builder.toml(&format!("{JOURNALED}unknown_outcome_grace = \"4s\"\n"));
    let mut config = builder.config()?;
    config.backends.old.request_timeout = Duration::from_millis(500);
    let proxy = Proxy::start_fresh(config, Secrets::default()).await?;
    let id = create_collection(&proxy.url(), json!({"name": "late"})).await?;

    faulty.push_write_faults([Fault::Delay(
        Duration::from_secs(1),
        Box::new(Fault::Forward),
    )]);
    let (status, body) = write(&proxy.url(), &id, "upsert", batch(0, 1, "first")).await?;
    assert_eq!(status, http::StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"], "InternalError", "{body}");
    let (status, body) = write(&proxy.url(), &id, "upsert", batch(0, 1, "retry")).await?;
    assert!(status.is_success(), "{status} {body}");

    let stored = same_on_both(&old.url(), &new.url(), "late").await?;
    assert_eq!(
        stored["r0"],
        expected(0, "retry"),
        "the retry is the last write on both"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Updates of ids the collection lacks.

/// Chroma answers an update naming missing ids itself (here: a wrong dimension, 400 as
/// directly); a valid one is applied, and Chroma 1.5.9's stale embedding of the missing id
/// does not come back after the id is added, on either store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_missing_ids_answer_as_chroma_and_leave_nothing_behind() -> anyhow::Result<()> {
    let (old, new, direct) = tokio::try_join!(Chroma::spawn(), Chroma::spawn(), Chroma::spawn())?;
    let proxy = Proxy::in_front_of(&old, &new)
        .toml(JOURNALED)
        .spawn()
        .await?;
    let through = create_collection(&proxy.url(), json!({"name": "ghosts"})).await?;
    let straight = create_collection(&direct.url(), json!({"name": "ghosts"})).await?;
    for (url, id) in [(proxy.url(), &through), (direct.url(), &straight)] {
        let (status, body) = write(&url, id, "add", batch(0, 2, "a")).await?;
        anyhow::ensure!(status.is_success(), "{status} {body}");
    }
    let wrong_dimension = json!({"ids": ["missing"], "embeddings": [[1.0, 2.0]]});
    let via_proxy = write(&proxy.url(), &through, "update", wrong_dimension.clone()).await?;
    let via_chroma = write(&direct.url(), &straight, "update", wrong_dimension).await?;
    assert_eq!(
        via_proxy.0, via_chroma.0,
        "{} / {}",
        via_proxy.1, via_chroma.1
    );
    assert_eq!(via_proxy.1, via_chroma.1);
    assert_eq!(via_proxy.0, http::StatusCode::BAD_REQUEST);

    // The stale embedding: update a missing r5, add r5, read, write anything, read r5.
    let stale =
        json!({"ids": ["r5", "r0"], "embeddings": [[9.0, 9.0, 9.0, 9.0], [3.0, 3.0, 3.0, 3.0]]});
    let (status, body) = write(&proxy.url(), &through, "update", stale).await?;
    assert!(status.is_success(), "{status} {body}");
    let (status, body) = write(&proxy.url(), &through, "add", batch(5, 1, "fresh")).await?;
    assert!(status.is_success(), "{status} {body}");
    let (status, _) = write(
        &proxy.url(),
        &through,
        "get",
        json!({"include": ["embeddings"]}),
    )
    .await?;
    assert!(status.is_success());
    let (status, _) = write(&proxy.url(), &through, "upsert", batch(7, 1, "poke")).await?;
    assert!(status.is_success());
    let stored = same_on_both(&old.url(), &new.url(), "ghosts").await?;
    assert_eq!(
        stored["r5"],
        expected(5, "fresh"),
        "the stale update came back"
    );
    assert_eq!(stored["r0"]["embedding"], json!([3.0, 3.0, 3.0, 3.0]));

    // On an empty collection such an update fixes the dimension, on both stores.
    let empty = create_collection(&proxy.url(), json!({"name": "dim-fix"})).await?;
    let fix = json!({"ids": ["missing"], "embeddings": [[1.0, 2.0, 3.0]]});
    let (status, body) = write(&proxy.url(), &empty, "update", fix).await?;
    assert!(status.is_success(), "{status} {body}");
    wait_for("the new store to take the dimension", || async {
        let (_, on_new) =
            http_json("GET", &format!("{}{COLLECTIONS}/dim-fix", new.url()), None).await?;
        Ok(on_new["dimension"] == json!(3))
    })
    .await?;
    let (_, on_old) =
        http_json("GET", &format!("{}{COLLECTIONS}/dim-fix", old.url()), None).await?;
    assert_eq!(on_old["dimension"], json!(3));
    let two = json!({"ids": ["a"], "embeddings": [[1.0, 2.0]]});
    let (status, _) = write(&proxy.url(), &empty, "upsert", two).await?;
    assert_eq!(status, http::StatusCode::BAD_REQUEST, "the dimension holds");
    assert!(same_on_both(&old.url(), &new.url(), "dim-fix")
        .await?
        .is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Lifecycle writes Chroma refuses.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_lifecycle_writes_change_nothing_on_the_secondary() -> anyhow::Result<()> {
    let (old, new, proxy) =
        two_stores_and_proxy(&format!("{JOURNALED}unknown_outcome_grace = \"200ms\"\n")).await?;
    let url = proxy.url();
    let a = create_collection(&url, json!({"name": "lc-a"})).await?;
    let b = create_collection(&url, json!({"name": "lc-b"})).await?;
    for id in [&a, &b] {
        let (status, body) = write(&url, id, "add", batch(0, 3, "x")).await?;
        anyhow::ensure!(status.is_success(), "{status} {body}");
    }
    same_on_both(&old.url(), &new.url(), "lc-a").await?;

    // A rename to a taken name: Chroma refuses it (with a 500 in 1.5.9).
    let (status, body) = http_json(
        "PUT",
        &format!("{url}{COLLECTIONS}/{a}"),
        Some(json!({"new_name": "lc-b"})),
    )
    .await?;
    assert!(!status.is_success(), "{status} {body}");
    // A delete by id: Chroma deletes by name only, and answers 404.
    let (status, body) = http_json("DELETE", &format!("{url}{COLLECTIONS}/{a}"), None).await?;
    assert_eq!(status, http::StatusCode::NOT_FOUND, "{body}");
    // A function Chroma does not implement on a single node: 501, and nothing queued.
    let (status, body) = http_json(
        "POST",
        &format!("{url}{COLLECTIONS}/{a}/functions/attach"),
        Some(json!({"name": "f", "function_id": "record_counter", "output_collection": "lc-out", "params": {}})),
    )
    .await?;
    assert!(
        status.is_client_error() || status == http::StatusCode::NOT_IMPLEMENTED,
        "{status} {body}"
    );

    // Writes after them reach the new store, on either collection.
    let (status, body) = write(&url, &b, "upsert", batch(10, 2, "after")).await?;
    assert!(status.is_success(), "{status} {body}");
    let after = create_collection(&url, json!({"name": "lc-later"})).await?;
    let (status, body) = write(&url, &after, "add", batch(0, 1, "later")).await?;
    assert!(status.is_success(), "{status} {body}");

    let stored_a = same_on_both(&old.url(), &new.url(), "lc-a").await?;
    assert_eq!(stored_a.len(), 3, "lc-a lost records");
    assert_eq!(same_on_both(&old.url(), &new.url(), "lc-b").await?.len(), 5);
    assert_eq!(
        same_on_both(&old.url(), &new.url(), "lc-later")
            .await?
            .len(),
        1
    );
    for store in [old.url(), new.url()] {
        let (status, body) = http_json("GET", &format!("{store}{COLLECTIONS}/lc-a"), None).await?;
        assert!(status.is_success(), "lc-a is gone from {store}: {body}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What the proxy refuses itself.

/// The proxy's `/admin/status`.
async fn admin_status(admin: &str) -> anyhow::Result<(http::StatusCode, Value)> {
    shift_testkit::admin_call(
        admin,
        shift_testkit::ADMIN_TOKEN,
        "GET",
        "/admin/status",
        None,
    )
    .await
}

/// Sends raw bytes on one connection and returns the status line and the body.
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await??;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_bodies_and_routes_the_proxy_cannot_mirror_are_refused() -> anyhow::Result<()> {
    let (old, new, proxy) = two_stores_and_proxy(JOURNALED).await?;
    let url = proxy.url();
    let id = create_collection(&url, json!({"name": "refusals"})).await?;

    let star = "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (status, body) = raw(proxy.addr(), star.as_bytes()).await?;
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body)?;
    assert_eq!(error["error"], "InvalidArgumentError", "{body}");
    // An absolute-form target is served by its path: the authority (port 9 here, where
    // nothing listens) is never used.
    let absolute =
        "GET http://127.0.0.1:9/api/v2/heartbeat HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (status, body) = raw(proxy.addr(), absolute.as_bytes()).await?;
    assert_eq!(status, 200, "{body}");

    // Invalid UTF-8 in a string, and nesting deeper than JSON parsers take.
    let mut invalid =
        br#"{"ids": ["bad"], "embeddings": [[1.0, 1.0, 1.0, 1.0]], "documents": [""#.to_vec();
    invalid.extend_from_slice(&[0xff, 0xfe]);
    invalid.extend_from_slice(br#""]}"#);
    let deep = format!(
        r#"{{"ids": ["deep"], "embeddings": [[1.0, 1.0, 1.0, 1.0]], "metadatas": [{{"k": {}{}}}]}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    for body in [invalid, deep.into_bytes()] {
        let (status, _, answer) = http(
            "POST",
            &format!("{url}{COLLECTIONS}/{id}/add"),
            &[("content-type", "application/json")],
            body,
        )
        .await?;
        assert_eq!(status, http::StatusCode::BAD_REQUEST, "{answer:?}");
        let error: Value = serde_json::from_slice(&answer)?;
        assert_eq!(error["error"], "InvalidArgumentError");
    }

    // A write route Chroma does not have.
    let (status, body) = http_json(
        "POST",
        &format!("{url}/api/v2/not-a-route"),
        Some(json!({})),
    )
    .await?;
    assert_eq!(status, http::StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "NotFoundError");

    // A collection id in another spelling Chroma accepts is still mirrored.
    let upper = id.to_uppercase();
    let (status, body) = write(&url, &upper, "add", batch(0, 2, "upper")).await?;
    assert!(status.is_success(), "{status} {body}");
    let braced = format!("{{{id}}}");
    let (status, body) = write(&url, &braced, "upsert", batch(2, 1, "braced")).await?;
    assert!(status.is_success(), "{status} {body}");

    let stored = same_on_both(&old.url(), &new.url(), "refusals").await?;
    let ids: Vec<&str> = stored.keys().map(String::as_str).collect();
    assert_eq!(ids, ["r0", "r1", "r2"], "nothing refused reached a store");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A collection created the way LangChain does it.

/// `create_collection(metadata={"hnsw:space": "cosine"})`, as the Python client sends it,
/// reaches the new store with the same configuration, and its records follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_with_legacy_hnsw_metadata_is_mirrored() -> anyhow::Result<()> {
    let (old, new, proxy) = two_stores_and_proxy(JOURNALED).await?;
    let (status, created) = http_json(
        "POST",
        &format!("{}{COLLECTIONS}", proxy.url()),
        Some(json!({"name": "hnsw-meta", "metadata": {"hnsw:space": "cosine"}, "configuration": null, "schema": null, "get_or_create": false})),
    )
    .await?;
    assert!(status.is_success(), "{status} {created}");
    let id = created["id"].as_str().unwrap_or_default();
    let (status, body) = write(&proxy.url(), id, "add", batch(0, 3, "cos")).await?;
    assert!(status.is_success(), "{status} {body}");
    let stored = same_on_both(&old.url(), &new.url(), "hnsw-meta").await?;
    assert_eq!(stored.len(), 3);
    let (_, on_old) = http_json(
        "GET",
        &format!("{}{COLLECTIONS}/hnsw-meta", old.url()),
        None,
    )
    .await?;
    let (_, on_new) = http_json(
        "GET",
        &format!("{}{COLLECTIONS}/hnsw-meta", new.url()),
        None,
    )
    .await?;
    for field in ["metadata", "configuration_json", "schema"] {
        assert_eq!(on_old[field], on_new[field], "{field}");
    }
    assert_eq!(on_new["configuration_json"]["hnsw"]["space"], "cosine");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// kill -9 in the middle of a switch.

/// A cutover killed while it drains the journal, writes held at its gate: at the next start
/// the old store is still primary with the same epoch, the held write was answered by nobody,
/// and every acknowledged write reaches both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_in_the_middle_of_a_switch_drain_changes_nothing() -> anyhow::Result<()> {
    let (old, new, shim, builder) = two_stores_one_faulty(BackendName::New).await?;
    let builder = builder.toml(JOURNALED);
    let mut proxy =
        ProxyProcess::start_with_env(builder, &[("FAILPOINTS", "switch::draining=pause")]).await?;
    ensure_failpoints(&proxy)?;
    let url = proxy.url();
    let id = create_collection(&url, json!({"name": "mid-switch"})).await?;
    // The new store holds the replay's writes unanswered until the test lets them go, so the
    // journal has entries to drain when the cutover comes.
    let hold = shift_testkit::faulty::Hold::new();
    shim.push_write_faults((0..100).map(|_| Fault::Held(hold.clone(), Box::new(Fault::Forward))));
    for round in 0..4 {
        let (status, body) = write(&url, &id, "upsert", batch(round * 5, 5, "acked")).await?;
        anyhow::ensure!(status.is_success(), "{status} {body}");
    }
    hold.wait_arrived(1, WAIT).await?;
    let (_, before) = admin_status(&proxy.admin_url()).await?;
    let admin = proxy.admin_url();
    let cutover = tokio::spawn(async move {
        shift_testkit::admin_call(
            &admin,
            shift_testkit::ADMIN_TOKEN,
            "POST",
            "/admin/cutover",
            Some(json!({"timeout": "60s", "max_lag": 1000})),
        )
        .await
    });
    // A write after the gate closed is held; once one is, the switch is draining. A write
    // that races the cutover and passes before the gate closes is acknowledged: it must then
    // be on both stores, and the next one is tried.
    let admin_url = proxy.admin_url();
    let mut passed_early = Vec::new();
    let (held_n, held) = loop {
        let n = 100 + passed_early.len();
        let (held_url, held_id) = (url.clone(), id.clone());
        let task =
            tokio::spawn(
                async move { write(&held_url, &held_id, "upsert", batch(n, 1, "held")).await },
            );
        wait_for("a write held at the switch's gate, or answered", || {
            let done = task.is_finished();
            let admin_url = admin_url.clone();
            async move {
                let (_, status) = admin_status(&admin_url).await?;
                Ok(done || status["writes_held"].as_u64() == Some(1))
            }
        })
        .await?;
        if !task.is_finished() {
            break (n, task);
        }
        let (status, body) = task.await??;
        anyhow::ensure!(status.is_success(), "{status} {body}");
        passed_early.push(n);
    };
    proxy.kill9().await?;
    let held = held.await?;
    assert!(
        !held.as_ref().is_ok_and(|(status, _)| status.is_success()),
        "the held write was acknowledged: {held:?}"
    );
    assert!(
        !cutover.await?.is_ok_and(|(status, _)| status.is_success()),
        "the cutover answered"
    );

    hold.release();
    proxy.set_env(&[]);
    proxy.restart().await?;
    let (_, status) = admin_status(&proxy.admin_url()).await?;
    assert_eq!(status["topology"]["primary"], "old", "{status}");
    assert_eq!(
        status["topology"]["epoch"], before["topology"]["epoch"],
        "{status}"
    );
    let stored = same_on_both(&old.url(), &new.url(), "mid-switch").await?;
    for i in 0..20 {
        assert_eq!(stored[&format!("r{i}")], expected(i, "acked"), "r{i}");
    }
    assert!(
        !stored.contains_key(&format!("r{held_n}")),
        "the held write was never sent"
    );
    for n in passed_early {
        assert_eq!(stored[&format!("r{n}")], expected(n, "held"), "r{n}");
    }
    Ok(())
}
