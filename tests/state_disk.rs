//! The state store under faults, end to end: the proxy in-process in front of two real Chroma
//! servers, its state directory on a small tmpfs.
//!
//! - the state disk fills up under writes: every write is refused with 503 in Chroma's error
//!   shape with Retry-After, `/readyz` says not ready and why, and once space is freed writes
//!   are accepted again and `/readyz` is ready, without restarting the proxy; every write that
//!   was acknowledged is on both stores, whole;
//! - the journal reaches `[state] max_journal_bytes` while the secondary is down: writes are
//!   refused the same way until the replay drains it, then accepted again;
//! - dead letters re-driven and dropped through the admin API.
//!
//! The tmpfs needs `mount` (root); where it is refused the disk test says so and passes
//! without running.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use shift_config::Secrets;
use shift_testkit::collection::create_collection;
use shift_testkit::process::chroma_shift_bin;
use shift_testkit::scrape::metric;
use shift_testkit::stores::two_stores_and_proxy;
use shift_testkit::stores::{two_stores, DEFAULT_DB};
use shift_testkit::{http, http_json, Chroma, Proxy, ADMIN_TOKEN};

/// Bound on every wait: turns a hang into a failure, never a slow machine into one.
const WAIT: Duration = Duration::from_secs(60);
/// Fast replay retries, so a secondary that comes back is caught up at once.
const FAST_RETRIES: &str =
    "[mirror]\nmode = \"journaled\"\nretry_initial = \"50ms\"\nretry_max = \"500ms\"\n";

fn collections(url: &str) -> String {
    format!("{url}{DEFAULT_DB}/collections")
}

/// A tmpfs mounted on a fresh directory, unmounted when dropped (also when a test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None`, with the reason printed, where mounting is not permitted.
    fn mount(size: &str) -> anyhow::Result<Option<Tmpfs>> {
        let dir = tempfile::Builder::new()
            .prefix("chroma-shift-tmpfs-")
            .tempdir()?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Ok(Some(Tmpfs { dir })),
            Ok(out) => {
                println!(
                    "SKIPPED: cannot mount a tmpfs for the state dir ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok(None)
            }
            Err(e) => {
                println!("SKIPPED: cannot run mount for the state dir's tmpfs: {e}");
                Ok(None)
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // A file still open (a proxy not yet stopped): detach it now, freed when closed.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Fills the filesystem of `path` with one file, until it refuses more.
fn fill_disk(path: &Path) -> anyhow::Result<u64> {
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => return Err(e.into()),
        }
    }
    // Some last bytes may fit in a smaller write.
    while let Ok(n) = file.write(&chunk[..512]) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    let _ = file.sync_all();
    Ok(written)
}

/// One add's content, kept to check both stores afterwards.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    embedding: Vec<f64>,
    document: String,
    metadata: Value,
}

/// An add of `per` records, `doc_bytes` of document each, ids from `first`.
fn batch(first: usize, per: usize, doc_bytes: usize) -> (Value, BTreeMap<String, Record>) {
    let mut records = BTreeMap::new();
    for i in first..first + per {
        let n = i as f64;
        let unit = format!("{i}:");
        records.insert(
            format!("r{i:06}"),
            Record {
                embedding: vec![n, n / 2.0, 1.0 - n / 7.0],
                document: unit.repeat(doc_bytes / unit.len() + 1)[..doc_bytes].to_owned(),
                metadata: json!({"i": i as i64, "tag": format!("t{}", i % 5)}),
            },
        );
    }
    let body = json!({
        "ids": records.keys().collect::<Vec<_>>(),
        "embeddings": records.values().map(|r| r.embedding.clone()).collect::<Vec<_>>(),
        "documents": records.values().map(|r| r.document.clone()).collect::<Vec<_>>(),
        "metadatas": records.values().map(|r| r.metadata.clone()).collect::<Vec<_>>(),
    });
    (body, records)
}

/// What one write got from the proxy.
struct Answer {
    status: http::StatusCode,
    retry_after: Option<String>,
    body: Value,
}

async fn add(proxy: &Proxy, collection: &str, body: &Value) -> anyhow::Result<Answer> {
    let (status, headers, bytes) = http(
        "POST",
        &format!("{}/{collection}/add", collections(&proxy.url())),
        &[("content-type", "application/json")],
        serde_json::to_vec(body)?,
    )
    .await?;
    Ok(Answer {
        status,
        retry_after: headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    })
}

/// An add the proxy must accept (`when` says why, in the failure message).
async fn add_accepted(
    proxy: &Proxy,
    collection: &str,
    body: &Value,
    when: &str,
) -> anyhow::Result<()> {
    let answer = add(proxy, collection, body).await?;
    assert!(answer.status.is_success(), "{when}: {}", answer.body);
    Ok(())
}

/// The end of a test: the journal drains, both stores hold exactly `acknowledged` in the
/// collection `name`, and the proxy shuts down.
async fn drained_and_held(
    proxy: Proxy,
    old: &Chroma,
    new: &Chroma,
    name: &str,
    acknowledged: &BTreeMap<String, Record>,
) -> anyhow::Result<()> {
    wait_drained(&proxy).await?;
    assert_stores_hold(old, new, name, acknowledged).await?;
    proxy.shutdown().await?;
    Ok(())
}

/// A refusal as the client must see it: 503, Retry-After, Chroma's error shape.
fn assert_refused_in_chroma_shape(answer: &Answer) {
    assert_eq!(answer.status, 503, "{}", answer.body);
    let retry_after: u64 = answer
        .retry_after
        .as_deref()
        .expect("a 503 without Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    let object = answer.body.as_object().expect("a JSON object");
    assert!(object["error"].is_string(), "{}", answer.body);
    assert!(object["message"].is_string(), "{}", answer.body);
}

async fn readyz(proxy: &Proxy) -> anyhow::Result<(http::StatusCode, Value)> {
    http_json("GET", &format!("{}/readyz", proxy.admin_url()), None).await
}

/// Waits until `/readyz` answers `want`; its last answer.
async fn wait_ready(proxy: &Proxy, want: http::StatusCode) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = readyz(proxy).await?;
        if status == want {
            return Ok(body);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "/readyz still {status} after {WAIT:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every write intent is settled and the journals to both stores are empty. An
/// intent left by a write whose primary applied it but whose journal commit failed (the disk
/// was full) is settled by the proxy's sweeper once the store can write again.
async fn wait_drained(proxy: &Proxy) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let pending = metric(&proxy.admin_url(), "chroma_shift_pending_intents", &[]).await?;
        if pending == Some(0.0) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{pending:?} write intents still pending after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let (status, body) = proxy.admin("GET", "/admin/status", None).await?;
        anyhow::ensure!(status.is_success(), "status: {status} {body}");
        let waiting = body["journal"]["old"]["entries"].as_u64().unwrap_or(1)
            + body["journal"]["new"]["entries"].as_u64().unwrap_or(1);
        if waiting == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "journal not drained after {WAIT:?}: {}",
            body["journal"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of collection `name` on a store, read directly, whole.
async fn store_records(store: &Chroma, name: &str) -> anyhow::Result<BTreeMap<String, Record>> {
    let (status, collection) = http_json(
        "GET",
        &format!("{}/{name}", collections(&store.url())),
        None,
    )
    .await?;
    anyhow::ensure!(
        status.is_success(),
        "{name} on {}: {collection}",
        store.url()
    );
    let id = collection["id"].as_str().unwrap_or_default();
    let (status, got) = http_json(
        "POST",
        &format!("{}/{id}/get", collections(&store.url())),
        Some(json!({"include": ["embeddings", "documents", "metadatas"]})),
    )
    .await?;
    anyhow::ensure!(status.is_success(), "get {name}: {got}");
    let mut out = BTreeMap::new();
    let ids = got["ids"].as_array().cloned().unwrap_or_default();
    for (i, id) in ids.iter().enumerate() {
        out.insert(
            id.as_str().unwrap_or_default().to_owned(),
            Record {
                embedding: got["embeddings"][i]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .collect(),
                document: got["documents"][i].as_str().unwrap_or_default().to_owned(),
                metadata: got["metadatas"][i].clone(),
            },
        );
    }
    Ok(out)
}

/// Embeddings come back as f32: compare them at that precision, the rest exactly.
fn same_record(a: &Record, b: &Record) -> bool {
    a.document == b.document
        && a.metadata == b.metadata
        && a.embedding.len() == b.embedding.len()
        && a.embedding
            .iter()
            .zip(&b.embedding)
            .all(|(x, y)| (*x as f32).to_bits() == (*y as f32).to_bits())
}

/// Both stores hold the same records, and every acknowledged one as it was written.
async fn assert_stores_hold(
    old: &Chroma,
    new: &Chroma,
    name: &str,
    acknowledged: &BTreeMap<String, Record>,
) -> anyhow::Result<()> {
    let (on_old, on_new) = (
        store_records(old, name).await?,
        store_records(new, name).await?,
    );
    for (id, record) in acknowledged {
        for (store, records) in [("old", &on_old), ("new", &on_new)] {
            let found = records.get(id);
            assert!(
                found.is_some_and(|f| same_record(f, record)),
                "acknowledged record {id} on the {store} store: {found:?}, written {record:?}"
            );
        }
    }
    assert_eq!(
        on_old.keys().collect::<Vec<_>>(),
        on_new.keys().collect::<Vec<_>>(),
        "the stores hold different ids"
    );
    for (id, record) in &on_old {
        assert!(
            same_record(record, &on_new[id]),
            "record {id} differs: old {record:?}, new {:?}",
            on_new[id]
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_refuses_writes_then_recovers_without_a_restart() -> anyhow::Result<()> {
    let Some(tmpfs) = Tmpfs::mount("8m")? else {
        return Ok(());
    };
    let (old, new) = two_stores().await?;
    let proxy = Proxy::in_front_of(&old, &new)
        .state_dir(tmpfs.path().join("state"))
        .toml(FAST_RETRIES)
        .spawn()
        .await?;
    let collection = create_collection(&proxy.url(), json!({"name": "disk"})).await?;
    let mut acknowledged = BTreeMap::new();
    let mut next = 0;
    // 20 records of 8 KiB documents: each write journals about 160 KiB, twice (intent and
    // entry), so the state file must grow within a few writes once the disk is full.
    let (per, doc) = (20, 8 * 1024);
    for _ in 0..3 {
        let (body, records) = batch(next, per, doc);
        next += per;
        let answer = add(&proxy, &collection, &body).await?;
        assert!(
            answer.status.is_success(),
            "before the disk is full: {}",
            answer.body
        );
        acknowledged.extend(records);
    }
    assert_eq!(readyz(&proxy).await?.0, 200);

    let filler = tmpfs.path().join("filler");
    let filled = fill_disk(&filler)?;
    println!("filled the state disk with {filled} bytes");
    let mut refused = 0;
    let mut accepted_while_full = 0;
    for _ in 0..200 {
        let (body, records) = batch(next, per, doc);
        next += per;
        let answer = add(&proxy, &collection, &body).await?;
        match answer.status.as_u16() {
            200..=299 => {
                accepted_while_full += 1;
                acknowledged.extend(records);
            }
            _ => {
                assert_refused_in_chroma_shape(&answer);
                refused += 1;
                if refused == 1 {
                    println!("first refusal: {}", answer.body);
                }
                if refused >= 3 {
                    break;
                }
            }
        }
    }
    println!("accepted {accepted_while_full} writes on the full disk before the first refusal");
    assert!(refused >= 3, "no write was refused on a full state disk");
    let not_ready = wait_ready(&proxy, http::StatusCode::SERVICE_UNAVAILABLE).await?;
    assert_eq!(not_ready["state"]["writable"], json!(false), "{not_ready}");
    let reason = not_ready["state"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("state disk cannot be written"),
        "{not_ready}"
    );
    let writable = metric(&proxy.admin_url(), "chroma_shift_state_writable", &[]).await?;
    assert_eq!(writable, Some(0.0));

    // Space is back: the same proxy accepts writes again, and says it is ready.
    std::fs::remove_file(&filler)?;
    wait_ready(&proxy, http::StatusCode::OK).await?;
    let writable = metric(&proxy.admin_url(), "chroma_shift_state_writable", &[]).await?;
    assert_eq!(writable, Some(1.0));
    for round in 0..3 {
        let (body, records) = batch(next + round * per, per, doc);
        add_accepted(&proxy, &collection, &body, "after space was freed").await?;
        acknowledged.extend(records);
    }
    drained_and_held(proxy, &old, &new, "disk", &acknowledged).await?;
    drop(tmpfs);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_refuses_writes_until_the_replay_drains_it() -> anyhow::Result<()> {
    let (old, mut new) = two_stores().await?;
    let builder = Proxy::in_front_of(&old, &new).toml(FAST_RETRIES);
    let mut config = builder.config()?;
    config.state.max_journal_bytes = "64 KiB".parse().map_err(anyhow::Error::msg)?;
    let proxy = Proxy::start_fresh(config, Secrets::default()).await?;
    let collection = create_collection(&proxy.url(), json!({"name": "capped"})).await?;
    // The collection exists on both stores before the secondary goes away.
    wait_drained(&proxy).await?;
    new.stop().await?;

    let mut acknowledged = BTreeMap::new();
    let mut next = 0;
    let mut refused = 0;
    // 4 records of 4 KiB: 16 KiB a write, so the 64 KiB cap is reached within five writes.
    for _ in 0..40 {
        let (body, records) = batch(next, 4, 4 * 1024);
        next += 4;
        let answer = add(&proxy, &collection, &body).await?;
        if answer.status.is_success() {
            assert_eq!(
                refused, 0,
                "a write accepted after one was refused for the cap"
            );
            acknowledged.extend(records);
        } else {
            assert_refused_in_chroma_shape(&answer);
            let message = answer.body["message"].as_str().unwrap_or_default();
            assert!(message.contains("max_journal_bytes"), "{message}");
            refused += 1;
            if refused >= 3 {
                break;
            }
        }
    }
    assert!(refused >= 3, "no write was refused past the journal's cap");
    // Each write journals its 16 KiB of documents plus the request around them: the cap
    // stops the fourth or fifth, give or take the encoding; never none, never many.
    let accepted = acknowledged.len() / 4;
    assert!(
        (2..=8).contains(&accepted),
        "{accepted} writes of 16 KiB accepted under a 64 KiB cap"
    );
    let not_ready = wait_ready(&proxy, http::StatusCode::SERVICE_UNAVAILABLE).await?;
    assert_eq!(not_ready["state"]["writable"], json!(true), "{not_ready}");
    assert!(
        not_ready["state"]["journal_bytes"].as_u64().unwrap_or(0) >= 64 * 1024,
        "{not_ready}"
    );
    let (_, status) = proxy.admin("GET", "/admin/status", None).await?;
    assert_eq!(status["state"]["journal_full"], json!(true), "{status}");
    assert_eq!(status["state"]["max_journal_bytes"], json!(64 * 1024));
    let full = ctl(&proxy, &["status"]).await?;
    assert!(full.contains("(FULL: writes refused)"), "{full}");

    // The secondary is back: the replay drains the journal and writes are accepted again.
    new.restart().await?;
    wait_ready(&proxy, http::StatusCode::OK).await?;
    let (body, records) = batch(next, 4, 4 * 1024);
    add_accepted(&proxy, &collection, &body, "after the drain").await?;
    acknowledged.extend(records);
    drained_and_held(proxy, &old, &new, "capped", &acknowledged).await
}

/// Parks a write on the new store: the collection there is made 2-dimensional behind the
/// proxy's back, so the 3-dimensional add the old store took is refused by the new one.
async fn park_one(
    proxy: &Proxy,
    new: &Chroma,
    name: &str,
    first: usize,
) -> anyhow::Result<(String, BTreeMap<String, Record>)> {
    let collection = create_collection(&proxy.url(), json!({"name": name})).await?;
    wait_drained(proxy).await?;
    let (status, on_new) =
        http_json("GET", &format!("{}/{name}", collections(&new.url())), None).await?;
    anyhow::ensure!(status.is_success(), "{on_new}");
    let new_id = on_new["id"].as_str().unwrap_or_default();
    let (status, answer) = http_json(
        "POST",
        &format!("{}/{new_id}/add", collections(&new.url())),
        Some(json!({"ids": ["behind-the-back"], "embeddings": [[1.0, 2.0]]})),
    )
    .await?;
    anyhow::ensure!(status.is_success(), "{answer}");
    let (body, records) = batch(first, 2, 16);
    let answer = add(proxy, &collection, &body).await?;
    assert!(answer.status.is_success(), "{}", answer.body);
    Ok((collection, records))
}

async fn dead_letters(proxy: &Proxy) -> anyhow::Result<Vec<Value>> {
    let (status, body) = proxy.admin("GET", "/admin/dead-letters", None).await?;
    anyhow::ensure!(status.is_success(), "{body}");
    Ok(body["dead_letters"].as_array().cloned().unwrap_or_default())
}

async fn wait_dead_letters(proxy: &Proxy, count: usize) -> anyhow::Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let letters = dead_letters(proxy).await?;
        if letters.len() == count {
            return Ok(letters);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} dead letters after {WAIT:?}, waiting for {count}: {letters:?}",
            letters.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_retried_and_dropped_through_the_admin_api() -> anyhow::Result<()> {
    let (_old, new, proxy) = two_stores_and_proxy(FAST_RETRIES).await?;
    let (collection, _) = park_one(&proxy, &new, "parked", 0).await?;
    let letters = wait_dead_letters(&proxy, 1).await?;
    let seq = letters[0]["seq"].as_u64().expect("a seq");
    assert_eq!(letters[0]["target"], json!("new"));

    // Retry: the write goes back to the journal, is refused again, and is parked again under
    // a new seq; the old letter is gone.
    let (status, retried) = proxy
        .admin("POST", &format!("/admin/dead-letters/{seq}/retry"), None)
        .await?;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["retried"]["seq"], json!(seq));
    assert_eq!(retried["retried"]["collection"], json!(collection));
    let requeued = retried["journal_seq"].as_u64().expect("the journal seq");
    assert!(requeued > seq);
    let letters = wait_dead_letters(&proxy, 1).await?;
    assert_eq!(
        letters[0]["seq"],
        json!(requeued),
        "parked again as {requeued}"
    );

    // Retrying or dropping what is gone is a 404 in the admin API's error shape.
    let (status, gone) = proxy
        .admin("POST", &format!("/admin/dead-letters/{seq}/retry"), None)
        .await?;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["error"], json!("NotFoundError"));
    assert!(gone["message"].is_string());
    let (status, bad) = proxy
        .admin("POST", "/admin/dead-letters/abc/drop", None)
        .await?;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"], json!("InvalidArgumentError"));

    // Drop: gone for good, and the answer says what was dropped.
    let drop_path = format!("/admin/dead-letters/{requeued}/drop");
    let (status, dropped) = proxy.admin("POST", &drop_path, None).await?;
    assert_eq!(status, 200, "{dropped}");
    assert_eq!(dropped["dropped"]["seq"], json!(requeued));
    assert_eq!(dropped["dropped"]["target"], json!("new"));
    assert!(dropped["dropped"]["reason"].is_string());
    assert!(dead_letters(&proxy).await?.is_empty());
    let (status, gone) = proxy.admin("POST", &drop_path, None).await?;
    assert_eq!(status, 404, "{gone}");

    // The same through `chroma-shift ctl dead-letters`: list, retry --all, drop.
    park_one(&proxy, &new, "parked-ctl", 100).await?;
    let letters = wait_dead_letters(&proxy, 1).await?;
    let seq = letters[0]["seq"].as_u64().expect("a seq");
    let listed = ctl(&proxy, &["dead-letters"]).await?;
    assert!(listed.contains(&format!("#{seq} → new")), "{listed}");
    let retried = ctl(&proxy, &["dead-letters", "retry", "--all"]).await?;
    assert!(
        retried.contains(&format!("retried #{seq} → new")),
        "{retried}"
    );
    assert_eq!(retried.matches("retried #").count(), 1, "{retried}");
    let letters = wait_dead_letters(&proxy, 1).await?;
    let again = letters[0]["seq"].as_u64().expect("a seq");
    assert!(again > seq, "parked again under a new seq");
    let dropped = ctl(&proxy, &["dead-letters", "drop", &again.to_string()]).await?;
    assert!(
        dropped.contains(&format!("dropped #{again} → new")),
        "{dropped}"
    );
    assert!(dead_letters(&proxy).await?.is_empty());
    let listed = ctl(&proxy, &["dead-letters"]).await?;
    assert!(listed.contains("no dead letters"), "{listed}");
    proxy.shutdown().await?;
    Ok(())
}

/// Runs `chroma-shift ctl ARGS` against the proxy's admin API; its standard output, once it
/// exited 0.
async fn ctl(proxy: &Proxy, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(chroma_shift_bin()?)
        .arg("ctl")
        .args(["--admin-url", &proxy.admin_url(), "--token", ADMIN_TOKEN])
        .args(args)
        .output();
    let out = tokio::time::timeout(WAIT, out).await??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "ctl {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}
