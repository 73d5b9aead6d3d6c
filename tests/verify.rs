//! Verify and inventory, end to end: two real Chroma servers behind the proxy (journaled),
//! records written through the proxy, then divergences seeded directly on the new store. The
//! `chroma-shift` binary, as an operator runs it:
//!
//! - `verify` finds each kind of seeded divergence (missing record, extra record, changed
//!   metadata, changed embedding, changed document, missing collection) and names it, in JSON
//!   and in the table, and exits 1;
//! - `verify --repair --delete-extra` fixes them through the proxy, and verify then passes;
//! - `verify` while clients keep writing through the proxy reports no false divergence;
//! - `inventory` lists the collections with counts and dimension, as a table and as JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shift_testkit::stores::assert_same_records;
use shift_testkit::stores::field_of_each;
use shift_testkit::stores::two_stores;
use shift_testkit::{http_json, Chroma, Proxy, ADMIN_TOKEN};

const COLLECTIONS: &str = "/api/v2/tenants/default_tenant/databases/default_database/collections";
/// The variable the test config names for the admin token.
const TOKEN_ENV: &str = "CHROMA_SHIFT_VERIFY_TEST_ADMIN_TOKEN";
/// Bound on one run of the binary.
const RUN_LIMIT: Duration = Duration::from_secs(120);
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Two stores, the proxy in front (old primary, journaled), and a config file for the binary.
struct Stores {
    old: Chroma,
    new: Chroma,
    proxy: Proxy,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

async fn stores() -> anyhow::Result<Stores> {
    stores_with("").await
}

/// `stores`, with `extra` TOML (such as namespace rules) for the proxy and the config file.
async fn stores_with(extra: &str) -> anyhow::Result<Stores> {
    let (old, new) = two_stores().await?;
    let proxy = Proxy::in_front_of(&old, &new)
        .toml("[mirror]\nmode = \"journaled\"\nretry_initial = \"50ms\"\nretry_max = \"1s\"\n")
        .toml(extra)
        .spawn()
        .await?;
    let dir = tempfile::Builder::new()
        .prefix("chroma-shift-verify-")
        .tempdir()?;
    let config = dir.path().join("chroma-shift.toml");
    let admin = proxy.admin_url().trim_start_matches("http://").to_owned();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{data}\"\nadmin_listen = \"{admin}\"\n[backends.old]\nurl = \"{old}\"\n[backends.new]\nurl = \"{new}\"\n[routing]\nprimary = \"old\"\n[admin]\ntoken_env = \"{TOKEN_ENV}\"\n{extra}\n",
            data = proxy.addr(),
            old = old.url(),
            new = new.url(),
        ),
    )?;
    Ok(Stores {
        old,
        new,
        proxy,
        config,
        _dir: dir,
    })
}

/// What a run of the binary left.
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

async fn chroma_shift(args: &[&str]) -> anyhow::Result<Output> {
    let bin = shift_testkit::process::chroma_shift_bin()?;
    let started = Instant::now();
    let child = tokio::process::Command::new(bin)
        .args(args)
        .env(TOKEN_ENV, ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_LIMIT, child).await??;
    eprintln!(
        "chroma-shift {} took {:?}",
        args.join(" "),
        started.elapsed()
    );
    Ok(Output {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

async fn verify(stores: &Stores, extra: &[&str]) -> anyhow::Result<Output> {
    let config = stores.config.display().to_string();
    let mut args = vec!["verify", "--config", config.as_str()];
    args.extend_from_slice(extra);
    chroma_shift(&args).await
}

/// `verify --json`, which must exit with `code`; its report.
async fn verify_json(stores: &Stores, code: i32) -> anyhow::Result<Value> {
    let run = verify(stores, &["--json"]).await?;
    assert_eq!(run.code, Some(code), "{run}");
    Ok(run.json())
}

/// An embedding of dimension `dim` for record `i`, the same every run.
fn embedding(i: usize, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|d| ((i * 7 + d * 13) as f32 * 0.37).sin())
        .collect()
}

/// Creates a collection through `base` (the proxy or a store) and adds `n` records with
/// ids `{prefix}-{i}`; the collection's id as `base` knows it.
async fn create_with_records(
    base: &str,
    name: &str,
    prefix: &str,
    n: usize,
    dim: usize,
) -> anyhow::Result<String> {
    let (status, created) = http_json(
        "POST",
        &format!("{base}{COLLECTIONS}"),
        Some(json!({"name": name, "metadata": {"purpose": "verify-test", "dim": dim}})),
    )
    .await?;
    anyhow::ensure!(status.is_success(), "create {name}: {status} {created}");
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let embeddings: Vec<Vec<f32>> = (0..n).map(|i| embedding(i, dim)).collect();
    let metadatas: Vec<Value> = (0..n)
        .map(|i| json!({"n": i, "group": format!("g{}", i % 3), "score": i as f64 * 0.25}))
        .collect();
    let documents: Vec<String> = (0..n).map(|i| format!("document {prefix} {i}")).collect();
    let uris: Vec<Option<String>> = (0..n)
        .map(|i| (i % 4 == 0).then(|| format!("s3://bucket/{prefix}/{i}")))
        .collect();
    let body = json!({"ids": ids, "embeddings": embeddings, "metadatas": metadatas, "documents": documents, "uris": uris});
    let (status, answer) =
        http_json("POST", &format!("{base}{COLLECTIONS}/{id}/add"), Some(body)).await?;
    anyhow::ensure!(status.is_success(), "add to {name}: {status} {answer}");
    Ok(id)
}

/// A store's own id of a collection, by name.
async fn store_id(store: &Chroma, name: &str) -> anyhow::Result<String> {
    let (status, body) =
        http_json("GET", &format!("{}{COLLECTIONS}/{name}", store.url()), None).await?;
    anyhow::ensure!(status.is_success(), "get {name}: {status} {body}");
    Ok(body["id"].as_str().unwrap_or_default().to_owned())
}

/// One write straight to a store (around the proxy), as drift or a bad manual fix would.
async fn direct(store: &Chroma, collection: &str, verb: &str, body: Value) -> anyhow::Result<()> {
    let id = store_id(store, collection).await?;
    let url = format!("{}{COLLECTIONS}/{id}/{verb}", store.url());
    let (status, answer) = http_json("POST", &url, Some(body)).await?;
    anyhow::ensure!(
        status.is_success(),
        "{verb} on {collection}: {status} {answer}"
    );
    Ok(())
}

async fn get_direct(store: &Chroma, collection: &str, ids: &[&str]) -> anyhow::Result<Value> {
    let id = store_id(store, collection).await?;
    let url = format!("{}{COLLECTIONS}/{id}/get", store.url());
    let (status, answer) = http_json(
        "POST",
        &url,
        Some(json!({"ids": ids, "include": ["metadatas", "documents", "embeddings"]})),
    )
    .await?;
    anyhow::ensure!(
        status.is_success(),
        "get on {collection}: {status} {answer}"
    );
    Ok(answer)
}

/// The divergences of `kind` in `collection` in a JSON report.
fn divergence<'a>(report: &'a Value, kind: &str, collection: &str) -> Option<&'a Value> {
    report["divergences"]
        .as_array()?
        .iter()
        .find(|d| d["kind"] == kind && d["collection"] == collection)
}

fn ids_of(divergence: &Value) -> Vec<&str> {
    divergence["ids"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_each_seeded_divergence_and_repair_fixes_them() -> anyhow::Result<()> {
    let started = Instant::now();
    let stores = stores().await?;
    let proxy = stores.proxy.url();
    create_with_records(&proxy, "verify-a", "a", 60, 4).await?;
    create_with_records(&proxy, "verify-b", "b", 40, 4).await?;
    create_with_records(&proxy, "verify-c", "c", 30, 3).await?;
    shift_testkit::scrape::wait_drained(&stores.proxy.admin_url(), "new", DRAIN_LIMIT).await?;

    // In sync first: verify passes and says so.
    let clean = verify(&stores, &[]).await?;
    assert_eq!(clean.code, Some(0), "{clean}");
    assert!(clean.stdout.contains("the stores match"), "{clean}");
    for name in ["verify-a", "verify-b", "verify-c"] {
        assert!(
            clean.stdout.contains(name),
            "{name} not in the table: {clean}"
        );
    }

    // Divergences, straight on the new store.
    let new = &stores.new;
    direct(new, "verify-a", "delete", json!({"ids": ["a-5"]})).await?;
    direct(
        new,
        "verify-a",
        "add",
        json!({"ids": ["a-extra"], "embeddings": [embedding(999, 4)], "documents": ["only on new"]}),
    )
    .await?;
    direct(
        new,
        "verify-a",
        "update",
        json!({"ids": ["a-10"], "metadatas": [{"n": 1000}]}),
    )
    .await?;
    direct(
        new,
        "verify-b",
        "update",
        json!({"ids": ["b-3"], "embeddings": [[0.5, -0.5, 0.25, 1.0]]}),
    )
    .await?;
    direct(
        new,
        "verify-b",
        "update",
        json!({"ids": ["b-7"], "documents": ["tampered"]}),
    )
    .await?;
    let (status, answer) = http_json(
        "DELETE",
        &format!("{}{COLLECTIONS}/verify-c", new.url()),
        None,
    )
    .await?;
    assert!(status.is_success(), "delete verify-c: {status} {answer}");

    let report = verify_json(&stores, 1).await?;
    assert_eq!(report["matches"], false);
    assert_eq!(report["source"], "old");
    assert_eq!(report["target"], "new");
    let expect = [
        ("missing_record", "verify-a", Some("a-5")),
        ("extra_record", "verify-a", Some("a-extra")),
        ("changed_metadata", "verify-a", Some("a-10")),
        ("changed_embedding", "verify-b", Some("b-3")),
        ("changed_document", "verify-b", Some("b-7")),
        ("missing_collection", "verify-c", None),
    ];
    for (kind, collection, id) in expect {
        let d = divergence(&report, kind, collection)
            .unwrap_or_else(|| panic!("no {kind} in {collection}: {report:#}"));
        if let Some(id) = id {
            assert_eq!(ids_of(d), vec![id], "{kind} in {collection}: {d}");
        }
    }
    assert_eq!(
        divergence(&report, "missing_collection", "verify-c").unwrap()["count"],
        30
    );
    // Nothing else is reported as changed: the seeded fields only.
    for d in report["divergences"].as_array().into_iter().flatten() {
        let kind = d["kind"].as_str().unwrap_or("");
        if kind.starts_with("changed_") || kind.ends_with("_record") {
            assert!(
                expect
                    .iter()
                    .any(|(k, c, _)| *k == kind && d["collection"] == *c),
                "unexpected divergence {d}"
            );
        }
    }
    let a = report["collections"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "verify-a"))
        .expect("verify-a in the report");
    assert_eq!(
        (a["source_count"].as_u64(), a["target_count"].as_u64()),
        (Some(60), Some(60)),
        "{a}"
    );
    assert_eq!(
        (
            a["missing"].as_u64(),
            a["extra"].as_u64(),
            a["changed"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(a["verdict"], "diverged");

    // The table names them too.
    let table = verify(&stores, &[]).await?;
    assert_eq!(table.code, Some(1), "{table}");
    eprintln!("{}", table.stdout);
    for (kind, collection, id) in expect {
        assert!(
            table.stdout.lines().any(|l| l.contains(kind)
                && l.contains(collection)
                && id.is_none_or(|id| l.contains(id))),
            "no line for {kind} in {collection}: {table}"
        );
    }

    // One collection only; a name neither store has is an error, not a pass.
    let only_b = verify(&stores, &["--collection", "verify-b", "--json"]).await?;
    assert_eq!(only_b.code, Some(1), "{only_b}");
    let only_b_report = only_b.json();
    let names = field_of_each(&only_b_report["collections"], "name");
    assert_eq!(names, vec!["verify-b"], "{only_b}");
    let nope = verify(&stores, &["--collection", "nope"]).await?;
    assert_eq!(nope.code, Some(2), "{nope}");
    assert!(nope.stderr.contains("nope"), "{nope}");

    // Repair, deleting what only the new store has; the second verify inside passes.
    let repaired = verify(&stores, &["--repair", "--delete-extra", "--json"]).await?;
    assert_eq!(repaired.code, Some(0), "{repaired}");
    let answer = repaired.json();
    assert_eq!(answer["matches"], true, "{answer:#}");
    assert_eq!(answer["before"]["matches"], false);
    let actions = field_of_each(&answer["repairs"], "action");
    assert!(
        actions.contains(&"reconcile") && actions.contains(&"backfill"),
        "{answer:#}"
    );

    // The records are back as the old store has them, every field of every record, the
    // deleted collection included; and a fresh verify passes.
    let compared = assert_same_records(&stores.old.url(), &new.url()).await?;
    assert_eq!(compared.collections, 3, "{compared:?}");
    assert_eq!(
        compared.per_collection.get("verify-c"),
        Some(&30),
        "{compared:?}"
    );
    let b = get_direct(new, "verify-b", &["b-7"]).await?;
    assert_eq!(b["documents"][0], "document b 7");
    let again = verify(&stores, &[]).await?;
    assert_eq!(again.code, Some(0), "{again}");
    eprintln!("{}", again.stdout);
    assert!(again.stdout.contains("the stores match"), "{again}");
    eprintln!(
        "seeded divergences found and repaired in {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Clients keep writing through the proxy while verify scans: writes in flight are checked
/// again after the journal drains, not reported as divergences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_under_live_traffic_reports_no_false_divergence() -> anyhow::Result<()> {
    let started = Instant::now();
    let stores = stores().await?;
    let proxy = stores.proxy.url();
    const RECORDS: usize = 2000;
    let id = create_with_records(&proxy, "verify-live", "l", RECORDS, 8).await?;
    shift_testkit::scrape::wait_drained(&stores.proxy.admin_url(), "new", DRAIN_LIMIT).await?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Two clients: upserts (new and existing ids) and deletes, spread over the collection.
    let writers: Vec<_> = (0..2u64)
        .map(|seed| {
            let stop = stop.clone();
            let made = made.clone();
            let url = format!("{proxy}{COLLECTIONS}/{id}");
            tokio::spawn(async move {
                let mut state: u64 = 7 + seed;
                let mut writes = 0usize;
                let deadline = Instant::now() + Duration::from_secs(90);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let i = (state >> 33) as usize % (RECORDS + RECORDS / 10);
                    let (verb, body) = if (state >> 20).is_multiple_of(5) {
                        ("delete", json!({"ids": [format!("l-{i}")]}))
                    } else {
                        (
                            "upsert",
                            json!({"ids": [format!("l-{i}")], "embeddings": [embedding(i + writes, 8)], "metadatas": [{"n": writes}], "documents": [format!("write {writes}")]}),
                        )
                    };
                    let (status, answer) =
                        http_json("POST", &format!("{url}/{verb}"), Some(body)).await?;
                    anyhow::ensure!(status.is_success(), "{verb}: {status} {answer}");
                    writes += 1;
                    made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(writes)
            })
        })
        .collect();
    // The traffic runs before and during the scan.
    let waited = Instant::now();
    while made.load(std::sync::atomic::Ordering::Relaxed) < 20 {
        anyhow::ensure!(waited.elapsed() < DRAIN_LIMIT, "the traffic did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = verify(&stores, &["--json"]).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut writes = 0;
    for writer in writers {
        writes += writer.await??;
    }
    assert!(writes > 20, "the traffic hardly ran: {writes} writes");
    assert_eq!(result.code, Some(0), "{result}");
    let report = result.json();
    assert_eq!(report["matches"], true, "{report:#}");
    assert_eq!(report["collections"][0]["name"], "verify-live");
    assert!(
        report["collections"][0]["compared"].as_u64() > Some(100),
        "{report:#}"
    );
    // Writes in flight during the scan were re-checked, not reported: the count is there
    // (how many depends on how the scan and the writes interleaved).
    let rechecked = report["rechecked"].as_u64();
    assert!(rechecked.is_some(), "no rechecked count: {report:#}");
    // And "matches" was the truth: once the traffic stopped and the journal drained, the stores
    // hold the same records, field by field.
    shift_testkit::scrape::wait_drained(&stores.proxy.admin_url(), "new", DRAIN_LIMIT).await?;
    assert_same_records(&stores.old.url(), &stores.new.url()).await?;
    eprintln!(
        "{writes} writes during verify; {rechecked:?} ids re-checked; {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_lists_collections_with_counts_and_dimension() -> anyhow::Result<()> {
    let stores = stores().await?;
    let proxy = stores.proxy.url();
    create_with_records(&proxy, "inv-small", "s", 12, 3).await?;
    create_with_records(&proxy, "inv-large", "l", 50, 5).await?;
    // One only on the old store, from before the migration.
    create_with_records(&stores.old.url(), "inv-old-only", "o", 7, 2).await?;
    shift_testkit::scrape::wait_drained(&stores.proxy.admin_url(), "new", DRAIN_LIMIT).await?;
    let config = stores.config.display().to_string();

    let json_out = chroma_shift(&["inventory", "--config", &config, "--json"]).await?;
    assert_eq!(json_out.code, Some(0), "{json_out}");
    let inventories = json_out.json();
    let stores_listed = inventories["stores"].as_array().expect("two stores");
    assert_eq!(stores_listed.len(), 2, "{inventories:#}");
    for inventory in stores_listed {
        let store = inventory["store"].as_str().unwrap_or("?");
        let collections: Vec<&Value> = inventory["tenants"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| t["databases"].as_array().into_iter().flatten())
            .flat_map(|d| d["collections"].as_array().into_iter().flatten())
            .collect();
        let find = |name: &str| collections.iter().find(|c| c["name"] == name).copied();
        for (name, count, dim) in [("inv-small", 12, 3), ("inv-large", 50, 5)] {
            let c = find(name).unwrap_or_else(|| panic!("{name} not on {store}: {inventory:#}"));
            assert_eq!(c["count"], count, "{store} {c}");
            assert_eq!(c["dimension"], dim, "{store} {c}");
            assert_eq!(c["metadata"]["purpose"], "verify-test", "{store} {c}");
            assert!(c["configuration"].is_object(), "{store} {c}");
        }
        assert_eq!(find("inv-old-only").is_some(), store == "old", "{store}");
        assert_eq!(inventory["tenants"][0]["name"], "default_tenant");
        assert_eq!(
            inventory["tenants"][0]["databases"][0]["name"],
            "default_database"
        );
    }

    let table = chroma_shift(&["inventory", "--config", &config, "--store", "old"]).await?;
    assert_eq!(table.code, Some(0), "{table}");
    eprintln!("{}", table.stdout);
    for (name, count, dim) in [
        ("inv-small", "12", "3"),
        ("inv-large", "50", "5"),
        ("inv-old-only", "7", "2"),
    ] {
        let line = table
            .stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no row for {name}: {table}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert!(
            cells.contains(&count) && cells.contains(&dim),
            "{name}: {line}"
        );
    }
    assert!(
        table.stdout.contains("3 collections, 69 records"),
        "{table}"
    );

    // A bare URL, without a config.
    let url = chroma_shift(&["inventory", "--url", &stores.new.url(), "--json"]).await?;
    assert_eq!(url.code, Some(0), "{url}");
    let listed = url.json();
    let names = field_of_each(
        &listed["stores"][0]["tenants"][0]["databases"][0]["collections"],
        "name",
    );
    assert_eq!(names, vec!["inv-large", "inv-small"], "{listed:#}");
    // An unknown tenant is listed as not found, not an error.
    let unknown = chroma_shift(&[
        "inventory",
        "--url",
        &stores.old.url(),
        "--tenant",
        "nobody",
        "--json",
    ])
    .await?;
    assert_eq!(unknown.code, Some(0), "{unknown}");
    assert_eq!(
        unknown.json()["stores"][0]["tenants"][0]["found"],
        false,
        "{unknown}"
    );
    Ok(())
}

/// The new store names the tenant differently: verify matches the collections across the
/// rename, and inventory lists each store under its own tenant name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_inventory_follow_namespace_rules() -> anyhow::Result<()> {
    let stores = stores_with("[[namespaces]]\nold = \"default_tenant\"\nnew = \"acme\"\n").await?;
    create_with_records(&stores.proxy.url(), "renamed", "r", 25, 3).await?;
    shift_testkit::scrape::wait_drained(&stores.proxy.admin_url(), "new", DRAIN_LIMIT).await?;
    let (status, _) = http_json(
        "GET",
        &format!(
            "{}/api/v2/tenants/acme/databases/default_database/collections/renamed",
            stores.new.url()
        ),
        None,
    )
    .await?;
    assert!(status.is_success(), "the proxy did not rename: {status}");

    let report = verify_json(&stores, 0).await?;
    assert_eq!(report["collections"][0]["name"], "renamed", "{report:#}");
    assert_eq!(report["collections"][0]["target_count"], 25, "{report:#}");

    // After a cutover the new store is the source, as the proxy says.
    let (status, answer) = stores.proxy.admin("POST", "/admin/cutover", None).await?;
    assert!(status.is_success(), "cutover: {status} {answer}");
    let report = verify_json(&stores, 0).await?;
    assert_eq!(
        (report["source"].as_str(), report["target"].as_str()),
        (Some("new"), Some("old")),
        "{report:#}"
    );
    assert_eq!(report["collections"][0]["source_count"], 25, "{report:#}");

    let config = stores.config.display().to_string();
    let listed = chroma_shift(&["inventory", "--config", &config, "--json"]).await?;
    assert_eq!(listed.code, Some(0), "{listed}");
    let inventory = listed.json();
    for (index, tenant) in [(0, "default_tenant"), (1, "acme")] {
        let store = &inventory["stores"][index];
        let found = store["tenants"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["name"] == tenant && t["found"] == true)
            .unwrap_or_else(|| panic!("no {tenant} on store {index}: {inventory:#}"));
        assert_eq!(
            found["databases"][0]["collections"][0]["count"], 25,
            "{inventory:#}"
        );
    }
    Ok(())
}
