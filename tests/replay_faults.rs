//! The replay under faults of the secondary, end to end: the proxy in front of two real Chroma
//! servers, with a [`FaultyBackend`] in front of the new one where a fault must be scripted.
//!
//! - the secondary refuses the proxy's credentials (401) for a while: the replay stops with an
//!   alert and `chroma_shift_replay_stopped`, parks nothing, and resumes by itself once the
//!   store accepts again; both stores then hold the same records, field by field;
//! - a refusal that never changes (501) for one collection's write is parked with its reason
//!   and blocks nothing written after it;
//! - a backlog of large adds (64 MiB by default, `CHROMA_SHIFT_BACKLOG_MIB=256` for the
//!   issue's size) journaled while the secondary is down drains with the draining proxy
//!   process's peak RSS under a stated bound (measured: 136 MiB for 65 MiB, 154 MiB for
//!   259 MiB; bound 200 MiB).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shift_config::BackendName;
use shift_testkit::collection::get_or_create_collection;
use shift_testkit::collection::{collection_id, collections_url, get_records};
use shift_testkit::faulty::two_stores_one_faulty;
use shift_testkit::knobs::env_or;
use shift_testkit::scrape::{counter, metric, wait_drained};
use shift_testkit::stores::field_of_each;
use shift_testkit::stores::two_stores;
use shift_testkit::wait::wait_until;
use shift_testkit::{http_json, Fault, FaultyBackend, Proxy};

/// Bound on every wait for a state: turns a hang into a failure, never a timing assertion.
const LIMIT: Duration = Duration::from_secs(60);

/// Fast retries and probes, so a store that accepts again is caught up within a second.
const JOURNALED: &str =
    "[mirror]\nmode = \"journaled\"\nretry_initial = \"50ms\"\nretry_max = \"1s\"\n";

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_refusing_the_proxy_stops_the_replay_then_it_resumes_by_itself(
) -> anyhow::Result<()> {
    let (old, new, faulty, builder) = two_stores_one_faulty(BackendName::New).await?;
    let webhook = FaultyBackend::spawn(Fault::ok()).await?;
    let proxy = builder
        .toml(&format!(
            "{JOURNALED}[alerts]\nwebhook_url = \"{}/hook\"\n",
            webhook.url()
        ))
        .spawn()
        .await?;
    let admin = proxy.admin_url();
    // The credentials the proxy holds for the new store are refused (heartbeats still pass).
    faulty.set_default(Fault::Status(
        http::StatusCode::UNAUTHORIZED,
        r#"{"error":"AuthError","message":"Unauthorized"}"#.to_owned(),
    ));

    let a = get_or_create_collection(&proxy.url(), "rf-auth-a").await?;
    let b = get_or_create_collection(&proxy.url(), "rf-auth-b").await?;
    write_round(&proxy.url(), &a, "r1").await?;
    write_round(&proxy.url(), &b, "r1").await?;

    let stopped = [("target", "new"), ("reason", "unauthorized")];
    wait_metric(&admin, "chroma_shift_replay_stopped", &stopped, 1.0).await?;
    let (_, status) = proxy.admin("GET", "/admin/status", None).await?;
    assert_eq!(
        status["replay"]["new"]["state"], "stopped: unauthorized",
        "{status}"
    );
    assert!(
        status["replay"]["new"]["stopped"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("401")),
        "{status}"
    );
    let depth = journal_depth(&admin).await?;
    assert!(depth > 0.0, "nothing waits in the journal");
    // The lag keeps counting while stopped; nothing is parked.
    write_round(&proxy.url(), &a, "r2").await?;
    write_round(&proxy.url(), &b, "r2").await?;
    let deeper = journal_depth(&admin).await?;
    assert!(
        deeper > depth,
        "the journal did not grow: {depth} then {deeper}"
    );
    assert_eq!(dead_letters(&admin).await?, 0.0);
    wait_until("the alert of the stopped replay", LIMIT, || async {
        Ok(alerts(&webhook)
            .iter()
            .any(|a| a.contains("stopped (unauthorized)")))
    })
    .await
    .map_err(|e| e.context(format!("alerts: {:?}", alerts(&webhook))))?;

    // The credentials are fixed: the replay resumes by itself.
    faulty.set_default(Fault::Forward);
    wait_drained(&admin, "new", LIMIT).await?;
    assert_eq!(
        metric(&admin, "chroma_shift_replay_stopped", &stopped).await?,
        Some(0.0)
    );
    let (_, status) = proxy.admin("GET", "/admin/status", None).await?;
    assert_eq!(status["replay"]["new"]["state"], "running", "{status}");
    assert_eq!(dead_letters(&admin).await?, 0.0);
    wait_until("the alert of the resumed replay", LIMIT, || async {
        Ok(alerts(&webhook).iter().any(|a| a.contains("resumed")))
    })
    .await?;

    let (old_url, new_url) = (old.url(), new.url());
    let (old_records, new_records) = tokio::try_join!(dump(&old_url), dump(&new_url))?;
    assert_eq!(old_records.len(), 2, "{:?}", old_records.keys());
    for (name, records) in &old_records {
        assert!(
            records.len() >= 20,
            "{name} holds {} records",
            records.len()
        );
    }
    assert_same(&old_records, &new_records);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_that_never_changes_is_parked_and_blocks_nothing_after_it() -> anyhow::Result<()>
{
    let (old, new, faulty, builder) = two_stores_one_faulty(BackendName::New).await?;
    let proxy = builder.toml(JOURNALED).spawn().await?;
    let admin = proxy.admin_url();
    let a = get_or_create_collection(&proxy.url(), "rf-501-a").await?;
    let b = get_or_create_collection(&proxy.url(), "rf-501-b").await?;
    add(&proxy.url(), &a, &["a0"]).await?;
    add(&proxy.url(), &b, &["b0"]).await?;
    wait_drained(&admin, "new", LIMIT).await?;

    // The new store answers the next record write, a1's add, with 501 (for good, as Chroma
    // answers a function attach); then a function attach, which Chroma itself refuses so.
    faulty.push_write_faults([Fault::Status(
        http::StatusCode::NOT_IMPLEMENTED,
        r#"{"error":"ChromaError","message":"Operation is not implemented or not supported"}"#
            .to_owned(),
    )]);
    add(&proxy.url(), &a, &["a1"]).await?;
    let (status, answer) = http_json(
        "POST",
        &format!("{}/{a}/functions/attach", collections_url(&proxy.url())),
        Some(json!({"name": "f", "function_id": "x", "output_collection": "rf-501-out", "params": {}})),
    )
    .await?;
    assert_eq!(status.as_u16(), 501, "{answer}");
    // Written after both refusals, to both collections.
    for i in 1..=5 {
        add(&proxy.url(), &b, &[&format!("b{i}")]).await?;
    }
    add(&proxy.url(), &a, &["a2"]).await?;
    wait_drained(&admin, "new", LIMIT).await?;

    assert_eq!(faulty.pending_write_faults(), 0, "the 501 was not used");
    let (_, letters) = proxy.admin("GET", "/admin/dead-letters", None).await?;
    let reasons = field_of_each(&letters["dead_letters"], "reason");
    assert!(!reasons.is_empty(), "no dead letter: {letters}");
    for reason in &reasons {
        assert!(
            reason.starts_with("not implemented by the target"),
            "{reason}"
        );
    }
    let new_records = dump(&new.url()).await?;
    let ids = |name: &str| -> Vec<String> {
        new_records
            .get(name)
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(
        ids("rf-501-a"),
        ["a0", "a2"],
        "a1 was parked, a2 follows it"
    );
    assert_eq!(ids("rf-501-b"), ["b0", "b1", "b2", "b3", "b4", "b5"]);
    let old_records = dump(&old.url()).await?;
    assert_eq!(old_records["rf-501-b"], new_records["rf-501-b"]);
    Ok(())
}

/// The replay's memory budget in this test (`[mirror] replay_memory`).
const BACKLOG_REPLAY_MEMORY_MIB: u64 = 16;

/// The bound on the peak RSS of the proxy process that drains the backlog (started on the
/// journal after it was written, so the write path's own peak is not counted). What it holds
/// by design: the replay's budget (16 MiB) plus one entry (2.6 MiB); one merged request (at
/// most 8 MiB of payload) decoded, encoded and in flight, about 3 x 8 MiB; redb's page cache
/// (at most 64 MiB); the runtime, HTTP clients, metrics and a debug build's code (about
/// 40 MiB). That is about 150 MiB; the bound leaves 50 MiB for allocator slack. The replay
/// before it read 512 entries with full payloads and kept them twice: the whole backlog, twice
/// (over 250 MiB with the default 64 MiB backlog, over 700 MiB with 256 MiB).
const BACKLOG_RSS_BOUND_MIB: u64 = 200;

/// The backlog's size: `CHROMA_SHIFT_BACKLOG_MIB`, 64 MiB by default so the test stays near a
/// minute on a debug build (run it with 256 for the issue's "hundreds of MiB").
fn backlog_mib() -> usize {
    env_or("CHROMA_SHIFT_BACKLOG_MIB", 64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_large_adds_drains_within_a_memory_bound() -> anyhow::Result<()> {
    const DIM: usize = 1024;
    const PER_ADD: usize = 500;
    // One add is about 2.6 MiB of JSON.
    let adds = (backlog_mib() * 1024 * 1024).div_ceil(2_730_000).max(4);
    let started = Instant::now();
    let (old, mut new) = two_stores().await?;
    // The old store answers the large adds itself, without storing them: the test is about the
    // replay's memory, and a real store would spend most of the test's time on them. Everything
    // else reaches the real old Chroma; the backlog drains into the real new one.
    let old_front = FaultyBackend::proxying(&old.url()).await?;
    old_front.push_write_faults(
        (0..adds).map(|_| Fault::Status(http::StatusCode::CREATED, "{}".to_owned())),
    );
    let mut proxy = Proxy::builder()
        .old(old_front.url())
        .new_store(new.url())
        .toml(&format!(
            "{JOURNALED}replay_memory = \"{BACKLOG_REPLAY_MEMORY_MIB}MiB\"\n"
        ))
        .spawn_process()
        .await?;
    let admin = proxy.admin_url();
    let big = get_or_create_collection(&proxy.url(), "rf-backlog").await?;
    wait_drained(&admin, "new", LIMIT).await?;

    new.stop().await?;
    let url = format!("{}/{big}/add", collections_url(&proxy.url()));
    let mut payload = 0usize;
    for round in 0..adds.div_ceil(4) {
        let sends: Vec<_> = (round * 4..(round * 4 + 4).min(adds))
            .map(|batch| {
                let body = large_add(batch, PER_ADD, DIM);
                let url = url.clone();
                async move {
                    let bytes = serde_json::to_vec(&body)?;
                    let size = bytes.len();
                    let (status, _, answer) = shift_testkit::http(
                        "POST",
                        &url,
                        &[("content-type", "application/json")],
                        bytes,
                    )
                    .await?;
                    anyhow::ensure!(
                        status.is_success(),
                        "add {batch}: {status} {}",
                        String::from_utf8_lossy(&answer)
                    );
                    anyhow::Ok(size)
                }
            })
            .collect();
        for size in futures_join(sends).await? {
            payload += size;
        }
    }
    let journaled = journal_depth(&admin).await?;
    assert!(
        journaled >= adds as f64,
        "only {journaled} entries journaled"
    );
    let written_at = started.elapsed();

    // A fresh process drains it, so its peak RSS is the replay's (and the start's).
    proxy.stop().await?;
    new.restart().await?;
    proxy.restart().await?;
    let pid = proxy.pid().expect("the proxy runs");
    wait_drained(&admin, "new", Duration::from_secs(300)).await?;
    assert_eq!(dead_letters(&admin).await?, 0.0);
    let peak_mib = peak_rss_kib(pid)? / 1024;
    eprintln!(
        "backlog: {} MiB of adds in {adds} requests journaled in {written_at:?}, drained by {:?}; peak RSS (VmHWM) of the draining proxy {peak_mib} MiB, bound {BACKLOG_RSS_BOUND_MIB} MiB",
        payload / (1024 * 1024),
        started.elapsed()
    );
    assert!(
        payload / (1024 * 1024) >= backlog_mib().min(64) * 9 / 10,
        "the backlog was only {payload} bytes"
    );
    assert!(
        peak_mib <= BACKLOG_RSS_BOUND_MIB,
        "the draining proxy's peak RSS was {peak_mib} MiB, above the bound of {BACKLOG_RSS_BOUND_MIB} MiB"
    );

    // Every record is on the new store, and a sample holds what was sent.
    assert_eq!(old_front.pending_write_faults(), 0);
    let new_url = new.url();
    let new_big = collection_id(&new_url, "rf-backlog").await?;
    assert_eq!(
        record_count(&new_url, &new_big).await?,
        (adds * PER_ADD) as u64
    );
    for batch in (0..adds).step_by(7) {
        let sent = large_add(batch, PER_ADD, DIM);
        let i = (batch * 31) % PER_ADD;
        let id = format!("big-{batch}-{i}");
        let got = get_records(
            &format!("{}/{new_big}", collections_url(&new_url)),
            Some(std::slice::from_ref(&id)),
        )
        .await?;
        assert_eq!(got[&id]["document"], sent["documents"][i], "{id}");
        let embedding: Vec<f32> = serde_json::from_value(got[&id]["embedding"].clone())?;
        assert_eq!(
            base64(&f32_bytes(&embedding)),
            sent["embeddings"][i],
            "{id}"
        );
    }
    Ok(())
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// Writes.

async fn post(url: &str, collection: &str, verb: &str, body: Value) -> anyhow::Result<()> {
    let url = format!("{}/{collection}/{verb}", collections_url(url));
    let (status, answer) = http_json("POST", &url, Some(body)).await?;
    anyhow::ensure!(status.is_success(), "{verb}: {status} {answer}");
    Ok(())
}

/// Adds records with every field set.
async fn add(url: &str, collection: &str, ids: &[&str]) -> anyhow::Result<()> {
    post(url, collection, "add", full_records(ids, 1.0)).await
}

fn full_records(ids: &[&str], scale: f32) -> Value {
    let n = ids.len();
    json!({
        "ids": ids,
        "embeddings": (0..n).map(|i| [scale, i as f32 * 0.5, 0.25]).collect::<Vec<_>>(),
        "metadatas": ids.iter().map(|id| json!({"id": id, "scale": scale, "flag": true})).collect::<Vec<_>>(),
        "documents": ids.iter().map(|id| format!("document of {id} at {scale}")).collect::<Vec<_>>(),
        "uris": ids.iter().map(|id| format!("s3://bucket/{id}")).collect::<Vec<_>>(),
    })
}

/// Adds, upserts (new and existing ids), updates and deletes on one collection.
async fn write_round(url: &str, collection: &str, round: &str) -> anyhow::Result<()> {
    let ids: Vec<String> = (0..20).map(|i| format!("{round}-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    add(url, collection, &ids[..10]).await?;
    add(url, collection, &ids[10..]).await?;
    post(url, collection, "upsert", full_records(&ids[5..12], 2.0)).await?;
    let mut upserted = full_records(&[&format!("{round}-new")], 3.0);
    upserted["uris"] = json!(["file:///upserted"]);
    post(url, collection, "upsert", upserted).await?;
    post(
        url,
        collection,
        "update",
        json!({"ids": &ids[0..3], "metadatas": [{"updated": 1}, {"updated": 2}, {"updated": 3}], "documents": ["u0", "u1", "u2"]}),
    )
    .await?;
    post(url, collection, "delete", json!({"ids": &ids[18..]})).await
}

/// One add of `per_add` records of `dim`-dimensional embeddings sent as base64 of little-endian
/// f32 (as the Python client sends them), with a short document each.
fn large_add(batch: usize, per_add: usize, dim: usize) -> Value {
    let mut rng = fastrand_seeded(batch as u64);
    let ids: Vec<String> = (0..per_add).map(|i| format!("big-{batch}-{i}")).collect();
    let embeddings: Vec<String> = (0..per_add)
        .map(|_| {
            let bytes: Vec<u8> = (0..dim)
                .flat_map(|_| (rng() as f32 / u32::MAX as f32).to_le_bytes())
                .collect();
            base64(&bytes)
        })
        .collect();
    let documents: Vec<String> = ids.iter().map(|id| format!("doc {id}")).collect();
    json!({"ids": ids, "embeddings": embeddings, "documents": documents})
}

/// A small xorshift generator: the test needs varied floats, not good randomness.
fn fastrand_seeded(seed: u64) -> impl FnMut() -> u32 {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 32) as u32
    }
}

fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(TABLE[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn futures_join<T>(
    futures: Vec<impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static>,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await??);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Reading the stores and the proxy.

/// Collection name -> record id -> the whole record (embedding, metadata, document, uri), read
/// directly from a store's default database.
async fn dump(url: &str) -> anyhow::Result<BTreeMap<String, BTreeMap<String, Value>>> {
    let (status, list) = http_json("GET", &collections_url(url), None).await?;
    anyhow::ensure!(status.is_success(), "list: {status} {list}");
    let mut out = BTreeMap::new();
    for collection in list.as_array().into_iter().flatten() {
        let (Some(name), Some(id)) = (collection["name"].as_str(), collection["id"].as_str())
        else {
            continue;
        };
        out.insert(
            name.to_owned(),
            get_records(&format!("{}/{id}", collections_url(url)), None).await?,
        );
    }
    Ok(out)
}

async fn record_count(url: &str, collection: &str) -> anyhow::Result<u64> {
    let (status, got) = http_json(
        "GET",
        &format!(
            "{}/{collection}/count?read_level=index_and_wal",
            collections_url(url)
        ),
        None,
    )
    .await?;
    anyhow::ensure!(status.is_success(), "count: {status} {got}");
    got.as_u64()
        .ok_or_else(|| anyhow::anyhow!("count answered {got}"))
}

/// Both stores hold the same collections with the same records, field by field.
fn assert_same(
    old: &BTreeMap<String, BTreeMap<String, Value>>,
    new: &BTreeMap<String, BTreeMap<String, Value>>,
) {
    assert_eq!(
        old.keys().collect::<Vec<_>>(),
        new.keys().collect::<Vec<_>>(),
        "the stores hold different collections"
    );
    for (name, records) in old {
        let other = &new[name];
        let only_old: Vec<_> = records.keys().filter(|k| !other.contains_key(*k)).collect();
        let only_new: Vec<_> = other.keys().filter(|k| !records.contains_key(*k)).collect();
        assert!(
            only_old.is_empty() && only_new.is_empty(),
            "{name}: only on old {only_old:?}, only on new {only_new:?}"
        );
        for (id, record) in records {
            assert_eq!(record, &other[id], "{name}/{id} differs");
        }
    }
}

async fn journal_depth(admin: &str) -> anyhow::Result<f64> {
    counter(
        admin,
        "chroma_shift_journal_depth",
        &[("target", "new"), ("collection", "")],
    )
    .await
}

async fn dead_letters(admin: &str) -> anyhow::Result<f64> {
    counter(admin, "chroma_shift_dead_letters", &[]).await
}

/// Waits until the sample `name{labels}` reads `want`.
async fn wait_metric(
    admin: &str,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) -> anyhow::Result<()> {
    let mut last = None;
    let started = Instant::now();
    while started.elapsed() < LIMIT {
        last = metric(admin, name, labels).await?;
        if last == Some(want) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{name}{labels:?} did not reach {want} within {LIMIT:?} (last {last:?})")
}

/// The texts of the alerts the webhook received.
fn alerts(webhook: &FaultyBackend) -> Vec<String> {
    webhook
        .received()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_owned))
        .collect()
}

/// The peak resident set of a process (`VmHWM` in `/proc/PID/status`), in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM for {pid}"))
}
