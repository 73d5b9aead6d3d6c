//! Cutover and rollback through the admin API, in front of two real Chroma servers: the
//! primary moves without a restart and without losing a write; the topology survives a
//! restart; the admin API needs its token; the proxy rolls back by itself when the new
//! primary stays down, and says so on the alert webhook.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::{json, Value};
use shift_testkit::collection::create_collection;
use shift_testkit::scrape::counter;
use shift_testkit::scrape::{metric, wait_drained};
use shift_testkit::stores::two_stores_and_proxy;
use shift_testkit::stores::{
    assert_same_records, check_acked_log, post_json, two_stores, DEFAULT_DB,
};
use shift_testkit::wait::wait_until;
use shift_testkit::{http, http_json, Chroma, Fault, FaultyBackend, Proxy, ADMIN_TOKEN};

const DB: &str = DEFAULT_DB;

fn records(prefix: &str, n: usize) -> Value {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    json!({
        "ids": ids,
        "embeddings": (0..n).map(|i| vec![i as f32, 1.0, 0.5]).collect::<Vec<_>>(),
        "documents": ids,
    })
}

/// Waits until the journal for `target` is empty, then checks the stores hold the same
/// `records` records.
async fn drained_and_equal(
    proxy: &Proxy,
    old: &Chroma,
    new: &Chroma,
    target: &str,
    records: usize,
) -> anyhow::Result<()> {
    wait_drained(&proxy.admin_url(), target, Duration::from_secs(60)).await?;
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    assert_eq!(compared.records, records);
    Ok(())
}

#[tokio::test]
async fn cutover_then_rollback_moves_the_primary_and_loses_nothing() -> anyhow::Result<()> {
    let (old, new, proxy) = two_stores_and_proxy("").await?;
    let base = format!("{}{DB}", proxy.url());
    let id = create_collection(&proxy.url(), json!({"name": "moving"})).await?;
    post_json(
        format!("{base}/collections/{id}/add"),
        records("before", 20),
    )
    .await?;

    // A dry run says what would happen and changes nothing.
    let (status, plan) = proxy
        .admin("POST", "/admin/cutover", Some(json!({"dry_run": true})))
        .await?;
    assert_eq!(status, StatusCode::OK, "{plan}");
    assert_eq!(plan["switched"], false);
    assert!(
        plan["plan"].as_array().is_some_and(|p| p.len() >= 4),
        "{plan}"
    );
    // The catch-up (on by default) comes before the gate closes.
    let steps: Vec<&str> = plan["plan"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let catch_up = steps.iter().position(|s| s.starts_with("catch up"));
    let close = steps
        .iter()
        .position(|s| s.starts_with("close the write gate"));
    assert!(
        matches!((catch_up, close), (Some(a), Some(b)) if a < b),
        "{plan}"
    );
    assert!(
        plan["checks"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["passed"] == true)),
        "{plan}"
    );

    let (status, report) = proxy.admin("POST", "/admin/cutover", None).await?;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["switched"], true);
    assert_eq!(report["to"], "new");
    assert_eq!(report["epoch"], 2);
    let (_, state) = proxy.admin("GET", "/admin/status", None).await?;
    assert_eq!(state["topology"]["primary"], "new", "{state}");

    // After the cutover, reads are served by the new store, under the same collection id.
    let (status, count) = http_json("GET", &format!("{base}/collections/{id}/count"), None).await?;
    assert_eq!((status, count), (StatusCode::OK, json!(20)));
    let served_by_new = metric(
        &proxy.admin_url(),
        "chroma_shift_requests_total",
        &[("backend", "new"), ("operation", "collection_count")],
    )
    .await?;
    assert_eq!(served_by_new, Some(1.0));
    // Writes now go to the new store first and are mirrored back to the old one.
    post_json(
        format!("{base}/collections/{id}/add"),
        records("after-cutover", 15),
    )
    .await?;
    drained_and_equal(&proxy, &old, &new, "old", 35).await?;

    // A second cutover is refused with the reason.
    let (status, refused) = proxy.admin("POST", "/admin/cutover", None).await?;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        refused["refused"]
            .as_str()
            .unwrap_or_default()
            .contains("already primary"),
        "{refused}"
    );

    let (status, report) = proxy
        .admin("POST", "/admin/rollback", Some(json!({"timeout": "10s"})))
        .await?;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["to"], "old");
    assert_eq!(report["epoch"], 3);
    post_json(
        format!("{base}/collections/{id}/upsert"),
        records("after-rollback", 5),
    )
    .await?;
    drained_and_equal(&proxy, &old, &new, "new", 40).await?;
    Ok(())
}

#[tokio::test]
async fn a_cutover_is_refused_when_the_target_is_down_or_the_lag_too_high() -> anyhow::Result<()> {
    let (_old, mut new, proxy) = two_stores_and_proxy("").await?;
    let base = format!("{}{DB}", proxy.url());
    let id = create_collection(&proxy.url(), json!({"name": "stuck"})).await?;
    new.stop().await?;
    // Writes keep working; they queue for the new store.
    for round in 0..3 {
        post_json(
            format!("{base}/collections/{id}/add"),
            records(&format!("r{round}"), 5),
        )
        .await?;
    }
    // Once the health monitor saw the new store down (a state, not a clock).
    let started = Instant::now();
    loop {
        let (_, state) = proxy.admin("GET", "/admin/status", None).await?;
        if state["backends"]["new"]["up"] == false
            && state["backends"]["new"]["consecutive_failures"].as_u64() >= Some(1)
        {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the new store was never seen down: {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, refused) = proxy
        .admin("POST", "/admin/cutover", Some(json!({"max_lag": 1})))
        .await?;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let reason = refused["refused"].as_str().unwrap_or_default();
    assert!(reason.contains("target_healthy"), "{refused}");
    let lag = refused["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "journal_lag").cloned());
    assert_eq!(lag.map(|l| l["passed"].clone()), Some(json!(false)));
    let (_, state) = proxy.admin("GET", "/admin/status", None).await?;
    assert_eq!(state["topology"]["primary"], "old");
    assert!(
        state["journal"]["new"]["entries"].as_u64().unwrap_or(0) >= 3,
        "{state}"
    );
    Ok(())
}

#[tokio::test]
async fn the_admin_api_needs_its_token_and_is_not_on_the_data_port() -> anyhow::Result<()> {
    let (_old, _new, proxy) = two_stores_and_proxy("").await?;
    let admin = proxy.admin_url();
    for (method, path) in [
        ("GET", "/admin/status"),
        ("POST", "/admin/cutover"),
        ("POST", "/admin/rollback"),
        ("POST", "/admin/pause"),
    ] {
        let (status, _, body) = http(method, &format!("{admin}{path}"), &[], "").await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} without a token");
        let body: Value = serde_json::from_slice(&body)?;
        assert_eq!(body["error"], "AuthError");
        let (status, _, _) = http(
            method,
            &format!("{admin}{path}"),
            &[("authorization", "Bearer wrong")],
            "",
        )
        .await?;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{path} with a wrong token"
        );
        let (status, _, _) = http(
            method,
            &format!("{}{path}", proxy.url()),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            "",
        )
        .await?;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{path} answered on the data port"
        );
    }
    let (_, state) = proxy.admin("GET", "/admin/status", None).await?;
    assert_eq!(state["topology"]["primary"], "old", "nothing changed");
    Ok(())
}

#[tokio::test]
async fn pause_holds_writes_without_rejecting_them() -> anyhow::Result<()> {
    let (old, new, proxy) = two_stores_and_proxy("").await?;
    let base = format!("{}{DB}", proxy.url());
    let id = create_collection(&proxy.url(), json!({"name": "paused"})).await?;
    let (status, _) = proxy.admin("POST", "/admin/pause", None).await?;
    assert_eq!(status, StatusCode::OK);
    let url = format!("{base}/collections/{id}/add");
    let held = tokio::spawn(async move { post_json(url, records("held", 3)).await });
    // The write reaches the gate and waits there (a state, not a clock).
    let started = Instant::now();
    loop {
        let (_, state) = proxy.admin("GET", "/admin/status", None).await?;
        if state["writes_held"] == 1 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the write never reached the gate: {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Held, not applied: the store has nothing.
    let (_, count) = http_json(
        "GET",
        &format!("{}{DB}/collections/{id}/count", old.url()),
        None,
    )
    .await?;
    assert_eq!(count, json!(0), "a write went through a paused gate");
    // Reads still flow.
    let (status, _) = http_json("GET", &format!("{base}/collections/{id}/count"), None).await?;
    assert_eq!(status, StatusCode::OK);
    proxy.admin("POST", "/admin/resume", None).await?;
    tokio::time::timeout(Duration::from_secs(10), held).await???;
    drained_and_equal(&proxy, &old, &new, "new", 3).await?;
    Ok(())
}

#[tokio::test]
async fn a_restart_keeps_the_topology_and_the_collection_ids() -> anyhow::Result<()> {
    let (old, new) = two_stores().await?;
    let state_dir = tempfile::tempdir()?;
    let builder = Proxy::in_front_of(&old, &new).state_dir(state_dir.path());
    let proxy = builder.clone().spawn().await?;
    let base = format!("{}{DB}", proxy.url());
    let created = post_json(format!("{base}/collections"), json!({"name": "kept"})).await?;
    let id = created["id"].clone();
    let (status, report) = proxy.admin("POST", "/admin/cutover", None).await?;
    assert_eq!(status, StatusCode::OK, "{report}");
    proxy.shutdown().await?;

    // The config still says old; the persisted topology wins.
    let proxy = builder.spawn().await?;
    let (_, state) = proxy.admin("GET", "/admin/status", None).await?;
    assert_eq!(state["topology"]["primary"], "new", "{state}");
    assert_eq!(state["topology"]["epoch"], 2);
    let base = format!("{}{DB}", proxy.url());
    let (_, listed) = http_json("GET", &format!("{base}/collections"), None).await?;
    assert_eq!(
        listed[0]["id"], id,
        "the client id changed across the restart"
    );
    let client_id = id.as_str().unwrap_or_default();
    post_json(
        format!("{base}/collections/{client_id}/add"),
        records("after-restart", 4),
    )
    .await?;
    let (_, count) = http_json(
        "GET",
        &format!("{base}/collections/{client_id}/count"),
        None,
    )
    .await?;
    assert_eq!(count, json!(4));
    Ok(())
}

#[tokio::test]
async fn the_proxy_rolls_back_by_itself_when_the_new_primary_stays_down() -> anyhow::Result<()> {
    let (old, mut new) = two_stores().await?;
    let webhook = FaultyBackend::spawn(Fault::Status(StatusCode::OK, "ok".into())).await?;
    let proxy = Proxy::in_front_of(&old, &new)
        .health_toml("interval = \"200ms\"\ntimeout = \"300ms\"\nauto_rollback = true\nauto_rollback_after = \"1s\"\noutage_alert_after = \"600ms\"")
        .toml(&format!("[alerts]\nwebhook_url = \"{}/hooks/chroma-shift\"\n", webhook.url()))
        .spawn()
        .await?;
    let base = format!("{}{DB}", proxy.url());
    let id = create_collection(&proxy.url(), json!({"name": "failover"})).await?;
    let (status, report) = proxy.admin("POST", "/admin/cutover", None).await?;
    assert_eq!(status, StatusCode::OK, "{report}");
    new.stop().await?;

    // Clients keep writing while the new primary is down: the first write surely comes
    // before the rollback. A write the primary cannot take is refused in Chroma's error
    // shape; none of them may keep the proxy from rolling back.
    let started = Instant::now();
    let (mut attempted, mut refused, mut acknowledged) = (0, 0, 0);
    loop {
        let (status, answer) = http_json(
            "POST",
            &format!("{base}/collections/{id}/add"),
            Some(records(&format!("outage-{attempted}"), 2)),
        )
        .await?;
        attempted += 1;
        if status.is_success() {
            acknowledged += 1;
        } else {
            refused += 1;
            assert!(answer["error"].is_string(), "{status} {answer}");
        }
        let (_, state) = proxy.admin("GET", "/admin/status", None).await?;
        if state["topology"]["primary"] == "old" {
            assert_eq!(state["topology"]["epoch"], 3, "{state}");
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "no auto-rollback while writes were made ({attempted} attempted, {refused} refused): {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(attempted >= 1);
    // Clients keep working on the old store; their writes wait in the journal for the new one.
    post_json(
        format!("{base}/collections/{id}/add"),
        records("after-failover", 3),
    )
    .await?;
    let (_, count) = http_json("GET", &format!("{base}/collections/{id}/count"), None).await?;
    assert_eq!(count, json!(3 + 2 * acknowledged));

    let started = Instant::now();
    let texts = loop {
        let texts: Vec<String> = webhook
            .received()
            .iter()
            .filter(|r| r.path_and_query == "/hooks/chroma-shift")
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .filter_map(|v| v["text"].as_str().map(str::to_owned))
            .collect();
        if texts.iter().any(|t| t.contains("auto-rollback"))
            || started.elapsed() > Duration::from_secs(60)
        {
            break texts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(texts.iter().any(|t| t.contains("cutover")), "{texts:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.contains("auto-rollback") && t.contains("old store is primary")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("new store has been unhealthy")),
        "{texts:?}"
    );

    // The new store comes back and catches up: both stores hold the same records.
    new.restart().await?;
    drained_and_equal(&proxy, &old, &new, "new", 3 + 2 * acknowledged).await?;
    Ok(())
}

/// A cutover or rollback (`route`) with a 20 s drain bound, which must switch; its report.
async fn switched_under_load(proxy: &Proxy, route: &str) -> anyhow::Result<Value> {
    let (status, report) = proxy
        .admin("POST", route, Some(json!({"timeout": "20s"})))
        .await?;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["switched"], true, "{report}");
    // It caught up with writes flowing before it held them (the defaults: at most 2 entries
    // left, within 10 s), and says how that went.
    let caught = &report["catch_up"];
    assert_eq!(caught["bound"], 2, "{report}");
    let lag_after = caught["lag_after"].as_u64().unwrap_or(u64::MAX);
    assert_eq!(caught["caught_up"], lag_after <= 2, "{report}");
    Ok(report)
}

/// Python clients write and read through the proxy without pause while it cuts over and rolls
/// back: no client sees an error, reads after the cutover come from the new store, no write
/// is lost, and the longest write pause is measured.
#[tokio::test]
async fn cutover_and_rollback_under_a_python_load_lose_nothing() -> anyhow::Result<()> {
    use shift_testkit::python::run_script;
    let (old, new, proxy) = two_stores_and_proxy("").await?;
    let url = proxy.url();
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("acked.jsonl");
    let log_arg = log.to_string_lossy().into_owned();
    let load = tokio::spawn(async move {
        run_script(
            "writers.py",
            &[
                "--url",
                &url,
                "--writers",
                "3",
                "--ops",
                "120",
                "--collections",
                "2",
                "--seed",
                "11",
                "--prefix",
                "moving",
                "--mode",
                "owned",
                "--acked",
                &log_arg,
                "--pause-ms",
                "30",
                "--reads",
            ],
            Duration::from_secs(600),
        )
        .await
    });
    // Let the load get going on the old store.
    let admin = proxy.admin_url();
    wait_until("the load to start", Duration::from_secs(120), || async {
        let journaled = [("outcome", "journaled")];
        Ok(counter(&admin, "chroma_shift_mirrored_writes_total", &journaled).await? >= 30.0)
    })
    .await?;
    let cutover = switched_under_load(&proxy, "/admin/cutover").await?;
    // Reads after the cutover are served by the new store.
    wait_until(
        "a read to reach the new primary",
        Duration::from_secs(60),
        || async {
            let reads = [("backend", "new"), ("operation", "collection_query")];
            Ok(counter(&admin, "chroma_shift_requests_total", &reads).await? >= 5.0)
        },
    )
    .await?;
    let rollback = switched_under_load(&proxy, "/admin/rollback").await?;

    let output = load.await??;
    let summary: Value = serde_json::from_str(output.stdout.trim())?;
    assert_eq!(summary["errors"], 0, "a client saw an error: {summary}");
    assert_eq!(summary["ops"], 360, "{summary}");
    eprintln!(
        "writes held: cutover {} ms, rollback {} ms; slowest client write with its reads: {:.0} ms",
        cutover["writes_held_ms"],
        rollback["writes_held_ms"],
        summary["max_op_ms"].as_f64().unwrap_or(0.0)
    );
    wait_drained(&proxy.admin_url(), "new", Duration::from_secs(120)).await?;
    wait_drained(&proxy.admin_url(), "old", Duration::from_secs(120)).await?;
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    // Every write a client saw acknowledged is on both stores, exactly as written.
    let checked = check_acked_log(&log, &[("old", &old.url()), ("new", &new.url())]).await?;
    assert_eq!(checked.uncertain, 0, "{checked:?}");
    assert!(checked.present > 0, "{checked:?}");
    for name in ["moving-0", "moving-1"] {
        assert!(
            compared.per_collection.get(name).copied().unwrap_or(0) > 0,
            "{name} is empty: {compared:?}"
        );
    }
    Ok(())
}
