//! The status page (`/ui`), driven in Debian's headless Chromium by `tests/ui/drive.mjs`
//! (playwright-core, installed by `npm ci` in `tests/ui`; `.ci/run` installs both).
//!
//! The scene: two real Chroma servers behind the proxy, every read shadowed; a backfill run; a
//! write the new store refuses for good (a dead letter), whose record a shadowed read then
//! misses there (a mismatch sample); then the new store killed and three writes waiting for it
//! in the journal. The page, signed in with the admin token (a wrong
//! token first: refused, no data shown), must show the numbers `/admin/status` gives. Then the
//! new store comes back, the page's cutover dialog shows the dry run's checks and plan (the
//! same as the API's), refuses to run until the dry run passes (forced past the dead letter)
//! and the word is typed, and cuts over; the page shows the new epoch and the audit row. The
//! token is in no URL the browser requested, and every admin call carried it as a header.
//!
//! The screenshot goes to a temp file, or to `CHROMA_SHIFT_UI_SCREENSHOT` when set (the
//! README's `docs/status-page.png` is made with
//! `CHROMA_SHIFT_UI_SCREENSHOT=$PWD/docs/status-page.png cargo nextest run -p chroma-shift-e2e --test ui`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use shift_testkit::collection::create_collection;
use shift_testkit::scene::{
    dimension_dead_letter, items, queries, records, restart_new_store, status, stop_new_store,
    wait_status,
};
use shift_testkit::stores::{post_json, two_stores, DEFAULT_DB};
use shift_testkit::{http, repo_root, Proxy, ADMIN_TOKEN};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Bound on a wait: only turns a hang into a failure.
const BOUND: Duration = Duration::from_secs(90);
const WRONG_TOKEN: &str = "not-the-admin-token";

/// The Chromium the script drives: `CHROMIUM`, or Debian's.
fn chromium() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    anyhow::ensure!(
        path.is_file(),
        "no Chromium at {}: `apt-get install -y chromium` (.ci/run's ui_browser does)",
        path.display()
    );
    Ok(path)
}

/// The node script, after checking its dependency is installed.
fn driver() -> anyhow::Result<PathBuf> {
    let dir = repo_root().join("tests/ui");
    anyhow::ensure!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in {} (.ci/run's ui_browser does)",
        dir.display()
    );
    Ok(dir.join("drive.mjs"))
}

/// The node script, spoken to one JSON line at a time.
struct Driver {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Driver {
    fn start(
        proxy: &Proxy,
        screenshot: &std::path::Path,
        profile: &std::path::Path,
    ) -> anyhow::Result<Driver> {
        let mut child = tokio::process::Command::new("node")
            .arg(driver()?)
            .env("UI_URL", proxy.admin_url())
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("WRONG_TOKEN", WRONG_TOKEN)
            .env("SCREENSHOT", screenshot)
            .env("USER_DATA_DIR", profile)
            .env("CHROMIUM", chromium()?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        Ok(Driver {
            child,
            stdout: BufReader::new(stdout).lines(),
        })
    }

    /// The script's next report, `{key: ...}`.
    async fn report(&mut self, key: &str) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(BOUND, self.stdout.next_line()).await??;
        let Some(line) = line else {
            let status = self.child.wait().await?;
            anyhow::bail!("the browser script ended ({status}) before its {key:?} report");
        };
        let mut report: Value = serde_json::from_str(&line)?;
        Ok(report[key].take())
    }

    async fn proceed(&mut self) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"continue\n").await?;
        Ok(stdin.flush().await?)
    }
}

/// What the page showed of `/admin/status`, against `/admin/status` itself.
fn assert_page_shows(observed: &Value, status: &Value) {
    let topology = &status["topology"];
    assert_eq!(observed["primary"], topology["primary"], "{observed}");
    assert_eq!(observed["secondary"], topology["secondary"], "{observed}");
    assert_eq!(
        observed["epoch"],
        topology["epoch"].to_string(),
        "{observed}"
    );
    assert_eq!(observed["phase"], "serving", "{observed}");
    assert_eq!(observed["collections"], status["collections"].to_string());
    for target in ["old", "new"] {
        assert_eq!(
            observed["journal"][target],
            status["journal"][target]["entries"].to_string(),
            "journal toward {target}: {observed}"
        );
        let backend = observed["backends"]
            .as_array()
            .and_then(|rows| rows.iter().find(|row| row["name"] == target))
            .unwrap_or_else(|| panic!("no row of {target}: {observed}"));
        assert_eq!(
            backend["up"],
            status["backends"][target]["up"].to_string(),
            "{backend}"
        );
    }
    // Every collection's lag, by target and key.
    let mut shown: Vec<(String, String, String)> = items(&observed["lag"])
        .map(|row| {
            let field = |k: &str| row[k].as_str().unwrap_or_default().to_owned();
            (field("target"), field("collection"), field("entries"))
        })
        .collect();
    shown.sort();
    let mut expected = Vec::new();
    for target in ["old", "new"] {
        for (key, lag) in status["journal"][target]["collections"]
            .as_object()
            .into_iter()
            .flatten()
        {
            expected.push((target.to_owned(), key.clone(), lag["entries"].to_string()));
        }
    }
    expected.sort();
    assert_eq!(shown, expected, "{observed}");
    // Dead letters with their reasons.
    let dead = &status["dead_letters"];
    assert_eq!(observed["dead_letter_count"], dead["count"].to_string());
    let letters = dead["first"].as_array().cloned().unwrap_or_default();
    let rows = observed["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rows.len(), letters.len(), "{observed}");
    for (row, letter) in rows.iter().zip(&letters) {
        assert_eq!(row["seq"], letter["seq"].to_string());
        assert_eq!(row["cells"][4], letter["reason"], "{row}");
    }
    // Backfill progress.
    let backfill = &status["backfill"];
    assert_eq!(observed["backfill"]["state"], backfill["state"]);
    assert_eq!(
        observed["backfill"]["done"],
        backfill["done_records"].to_string()
    );
    assert_eq!(
        observed["backfill"]["total"],
        backfill["total_records"].to_string()
    );
    // Shadow reads: every total, every collection.
    let totals = status["shadow"]["totals"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (outcome, n) in &totals {
        assert_eq!(
            observed["shadow_totals"][outcome],
            n.to_string(),
            "{outcome}: {observed}"
        );
    }
    assert_eq!(
        observed["shadow_totals"].as_object().map(|o| o.len()),
        Some(totals.len())
    );
    let shadowed: Vec<&Value> = items(&status["shadow"]["collections"])
        .map(|c| &c["collection"])
        .collect();
    let shown: Vec<&Value> = items(&observed["shadow_rows"])
        .map(|row| &row["collection"])
        .collect();
    assert_eq!(shown, shadowed, "{observed}");
    // The mismatch samples, newest first, with what differs.
    let samples: Vec<&Value> = items(&status["shadow"]["recent_mismatches"])
        .map(|m| &m["description"])
        .collect();
    let shown: Vec<&Value> = items(&observed["mismatches"]).map(|row| &row[3]).collect();
    assert_eq!(shown, samples, "{observed}");
}

/// Names and results of a switch report's checks, as the page words them.
fn checks(report: &Value) -> Vec<(String, String)> {
    items(&report["checks"])
        .map(|c| {
            let result = if c["passed"] == true {
                "passed"
            } else {
                "failed"
            };
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                result.to_owned(),
            )
        })
        .collect()
}

fn shown_checks(dialog: &Value) -> Vec<(String, String)> {
    items(&dialog["checks"])
        .map(|c| {
            let field = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (field("name"), field("result"))
        })
        .collect()
}

#[tokio::test]
async fn the_status_page_shows_the_status_and_cuts_over_after_a_dry_run() -> anyhow::Result<()> {
    // Both are needed: fail before the scene is set up without them.
    chromium()?;
    driver()?;
    let (old, mut new) = two_stores().await?;
    let proxy = Proxy::in_front_of(&old, &new)
        .toml("[mirror]\nretry_initial = \"50ms\"\nretry_max = \"1s\"\n[reads]\nshadow_percent = 100.0\n")
        .spawn()
        .await?;
    let docs = create_collection(&proxy.url(), json!({"name": "docs"})).await?;
    let docs_url = format!("{}{DEFAULT_DB}/collections/{docs}", proxy.url());
    post_json(format!("{docs_url}/add"), records("doc", 6)).await?;
    wait_status(&proxy, "the journal drained", |s| {
        s["journal"]["new"]["entries"] == 0
    })
    .await?;

    // A backfill, run to its end.
    let (code, started) = proxy.admin("POST", "/admin/backfill", None).await?;
    assert_eq!(code, StatusCode::ACCEPTED, "{started}");
    wait_status(&proxy, "the backfill succeeded", |s| {
        s["backfill"]["state"] == "succeeded"
    })
    .await?;

    // A dead letter, then shadowed reads compared in the background.
    let dims = dimension_dead_letter(&proxy, &new).await?;
    queries(&docs_url, 4).await?;
    // The dead letter's record is on the old store only: its shadowed read is a mismatch.
    post_json(
        format!("{}{DEFAULT_DB}/collections/{dims}/get", proxy.url()),
        json!({"ids": ["eight"]}),
    )
    .await?;
    wait_status(&proxy, "the shadow reads compared", |s| {
        let totals = &s["shadow"]["totals"];
        totals["match"].as_u64().unwrap_or(0) >= 4 && totals["mismatch"] == 1
    })
    .await?;

    // The new store goes down; three writes wait for it.
    stop_new_store(&proxy, &mut new).await?;
    for round in 0..3 {
        post_json(
            format!("{docs_url}/add"),
            records(&format!("late{round}"), 2),
        )
        .await?;
    }
    let before = wait_status(&proxy, "three entries waiting", |s| {
        s["journal"]["new"]["entries"] == 3
    })
    .await?;

    let temp = tempfile::tempdir()?;
    let screenshot = std::env::var_os("CHROMA_SHIFT_UI_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| temp.path().join("status-page.png"));
    let profile = temp.path().join("chromium-profile");
    std::fs::create_dir_all(&profile)?;
    let mut browser = Driver::start(&proxy, &screenshot, &profile)?;

    let observed = browser.report("observed").await?;
    let now = status(&proxy).await?;
    assert_page_shows(&observed, &now);
    assert_eq!(now["journal"]["new"]["entries"], 3, "{now}");
    assert_eq!(
        before["dead_letters"]["count"], now["dead_letters"]["count"],
        "the scene changed while the page read it"
    );
    assert_eq!(observed["backfill"]["state"], "succeeded");
    assert_eq!(observed["mismatches"].as_array().map(Vec::len), Some(1));
    assert!(
        observed["wrong_token_error"]
            .as_str()
            .unwrap_or_default()
            .contains("refused"),
        "{observed}"
    );
    assert_eq!(observed["dashboard_hidden_after_wrong_token"], true);
    let (_, audit) = proxy.admin("GET", "/admin/audit?limit=20", None).await?;
    let actions: Vec<&Value> = items(&audit["entries"]).map(|e| &e["action"]).collect();
    let shown: Vec<&Value> = items(&observed["audit"]).map(|row| &row[2]).collect();
    assert_eq!(shown, actions, "{observed}");
    let png = std::fs::read(&screenshot)?;
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is no PNG");

    // The new store is back and caught up; the API's own dry runs, unforced and forced, are
    // what the page's dialog must show.
    restart_new_store(&proxy, &mut new).await?;
    let (code, refused) = proxy
        .admin("POST", "/admin/cutover", Some(json!({"dry_run": true})))
        .await?;
    assert_eq!(
        code,
        StatusCode::CONFLICT,
        "the dead letter refuses it: {refused}"
    );
    let (code, forced) = proxy
        .admin(
            "POST",
            "/admin/cutover",
            Some(json!({"dry_run": true, "force": true})),
        )
        .await?;
    assert_eq!(code, StatusCode::OK, "{forced}");

    browser.proceed().await?;
    let done = browser.report("done").await?;
    let dry_run = &done["dry_run"];
    assert_eq!(shown_checks(dry_run), checks(&refused), "{done}");
    assert_eq!(dry_run["plan"], refused["plan"], "{done}");
    assert!(dry_run["refused"].is_string(), "{done}");
    assert_eq!(done["run_disabled_before_typing"], true, "{done}");
    assert_eq!(done["run_disabled_typed_while_refused"], true, "{done}");
    let forced_shown = &done["forced_dry_run"];
    assert_eq!(shown_checks(forced_shown), checks(&forced), "{done}");
    assert_eq!(forced_shown["plan"], forced["plan"], "{done}");
    assert_eq!(forced_shown["refused"], Value::Null, "{done}");
    assert_eq!(done["run_disabled_wrong_word"], true, "{done}");
    assert_eq!(done["run_disabled_right_word"], false, "{done}");
    assert_eq!(done["result_good"], true, "{done}");

    let after = status(&proxy).await?;
    let epoch = before["topology"]["epoch"].as_u64().unwrap_or_default();
    assert_eq!(after["topology"]["epoch"], epoch + 1, "{after}");
    assert_eq!(after["topology"]["primary"], "new", "{after}");
    assert_eq!(done["epoch"], (epoch + 1).to_string(), "{done}");
    assert_eq!(done["primary"], "new", "{done}");
    let cutover = items(&done["audit"])
        .find(|row| {
            row[2] == "cutover"
                && row[3]
                    .as_str()
                    .unwrap_or_default()
                    .contains("\"dry_run\":false")
        })
        .unwrap_or_else(|| panic!("no cutover in the page's audit rows: {done}"));
    assert_eq!(cutover[4], "done", "{cutover}");

    // The token travelled only in headers.
    let requests = done["requests"].as_array().cloned().unwrap_or_default();
    assert!(requests.len() > 3, "{done}");
    for request in &requests {
        let url = request["url"].as_str().unwrap_or_default();
        assert!(
            !url.contains(ADMIN_TOKEN) && !url.contains(WRONG_TOKEN),
            "a token in a URL: {url}"
        );
    }
    let admin: Vec<&Value> = requests.iter().filter(|r| r["admin"] == true).collect();
    let without: Vec<&&Value> = admin.iter().filter(|r| r["bearer"] != true).collect();
    assert_eq!(
        without.len(),
        1,
        "only the wrong token's sign-in lacks it: {without:?}"
    );
    assert!(admin.len() > without.len() + 4, "{done}");
    assert!(!done["page_url"]
        .as_str()
        .unwrap_or_default()
        .contains(ADMIN_TOKEN));
    assert_eq!(done["local_storage_keys"], json!([]), "{done}");
    assert_eq!(
        done["problems"],
        json!([]),
        "script errors or CSP violations: {done}"
    );
    let exit = tokio::time::timeout(BOUND, browser.child.wait()).await??;
    assert!(exit.success(), "the browser script failed: {exit}");
    Ok(())
}

/// The page is served without a token, with a strict CSP, while its data needs the token; with
/// the admin API off, the page is not served either.
#[tokio::test]
async fn the_page_needs_the_admin_api_and_only_its_data_needs_the_token() -> anyhow::Result<()> {
    let proxy = Proxy::builder().spawn().await?;
    let admin = proxy.admin_url();
    let (code, headers, body) = http("GET", &format!("{admin}/ui"), &[], "").await?;
    assert_eq!(code, StatusCode::OK);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    let csp = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert!(String::from_utf8_lossy(&body).contains("/ui/app.js"));
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let (code, headers, _) = http("GET", &format!("{admin}{path}"), &[], "").await?;
        assert_eq!(code, StatusCode::OK, "{path}");
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
        assert!(content_type.unwrap_or_default().starts_with(kind), "{path}");
    }
    let (code, _, _) = http("GET", &format!("{admin}/admin/status"), &[], "").await?;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    drop(proxy);

    let off = Proxy::builder()
        .toml("[admin]\nenabled = false\n")
        .spawn()
        .await?;
    let (code, _, body) = http("GET", &format!("{}/ui", off.admin_url()), &[], "").await?;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let answer: Value = serde_json::from_slice(&body)?;
    assert_eq!(answer["error"], "NotFoundError", "{answer}");
    assert!(answer["message"]
        .as_str()
        .unwrap_or_default()
        .contains("[admin]"));
    Ok(())
}
