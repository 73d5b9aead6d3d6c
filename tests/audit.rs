//! The audit log of admin actions and the limit on failed admin logins, against a proxy
//! process in front of two real Chroma servers: two operators with named admin tokens
//! (`alice` through `chroma-shift ctl`, `ci` through the admin API) cut over (a dry run first),
//! try a second cutover (refused), pause, resume, roll back, repair (once for a collection the
//! proxy does not know: refused), start and cancel a backfill, set the write mode, drop a dead
//! letter that does not exist (refused); every action is in
//! `/admin/audit` with its actor, action and outcome, in `/admin/status`, and still in
//! `ctl audit` after a restart on the same state. Then wrong tokens from one address are
//! counted in `/metrics` and, past the limit, answered 429 with `Retry-After` even for the
//! right token, while another address logs in; after the (short, configured) window the right
//! token works again from the first address.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use shift_testkit::collection::create_collection;
use shift_testkit::scrape::counter;
use shift_testkit::stores::{post_json, two_stores, DEFAULT_DB};
use shift_testkit::wait::wait_until;
use shift_testkit::{admin_call, Proxy, ProxyProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound on a wait for a condition: only turns a hang into a failure.
const BOUND: Duration = Duration::from_secs(60);
const ALICE: &str = "tok-alice-3f9";
const CI: &str = "tok-ci-77a";
const WRONG: &str = "tok-wrong-guess";
/// Failed logins allowed per address in the window.
const LIMIT: u32 = 3;

/// `chroma-shift ctl ARGS` with `token`; exit code, stdout, stderr.
async fn ctl(admin: &str, token: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let args: Vec<&str> = ["ctl"].iter().chain(args).copied().collect();
    shift_testkit::process::run_chroma_shift(admin, token, &args).await
}

/// `GET /admin/status` with `token` from the local address `from` (another loopback address
/// than the test's usual 127.0.0.1): the status code and the `Retry-After` header.
async fn status_from(
    from: [u8; 4],
    admin: SocketAddr,
    token: &str,
) -> anyhow::Result<(u16, Option<String>)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let mut stream = socket.connect(admin).await?;
    let request = format!(
        "GET /admin/status HTTP/1.1\r\nhost: {admin}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let retry_after = text.lines().find_map(|line| {
        line.to_ascii_lowercase()
            .strip_prefix("retry-after:")
            .map(|v| v.trim().to_owned())
    });
    Ok((code, retry_after))
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Actor, action and outcome status of each entry, oldest first.
fn summary(entries: &Value) -> Vec<(String, String, String)> {
    let mut rows: Vec<_> = entries
        .as_array()
        .expect("a list of entries")
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or_default().to_owned(),
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["outcome"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    rows.reverse();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_are_audited_by_name_survive_a_restart_and_failed_logins_are_limited(
) -> anyhow::Result<()> {
    let started_ms = now_ms();
    let (old, new) = two_stores().await?;
    let builder = Proxy::in_front_of(&old, &new).toml(&format!(
        "[admin]\nauth_failure_limit = {LIMIT}\nauth_failure_window = \"3s\"\n"
    ));
    let tokens = format!("alice={ALICE},ci={CI}");
    let mut proxy =
        ProxyProcess::start_with_env(builder, &[("CHROMA_SHIFT_ADMIN_TOKENS", &tokens)]).await?;
    let admin = proxy.admin_url();
    let collection = create_collection(&proxy.url(), json!({"name": "audited"})).await?;
    post_json(
        format!(
            "{}{DEFAULT_DB}/collections/{collection}/upsert",
            proxy.url()
        ),
        json!({"ids": ["a", "b"], "embeddings": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}),
    )
    .await?;

    // alice through ctl: a dry run, then the cutover.
    let (code, out, err) = ctl(&admin, ALICE, &["cutover", "--dry-run"]).await?;
    assert_eq!(code, 0, "cutover --dry-run: {out}{err}");
    let (code, out, err) = ctl(&admin, ALICE, &["cutover"]).await?;
    assert_eq!(code, 0, "cutover: {out}{err}");
    // ci through the API: a second cutover is refused, pause, resume.
    let (status, report) = admin_call(&admin, CI, "POST", "/admin/cutover", None).await?;
    assert_eq!(status, StatusCode::CONFLICT, "{report}");
    for route in ["/admin/pause", "/admin/resume"] {
        let (status, answer) = admin_call(&admin, CI, "POST", route, None).await?;
        assert_eq!(status, StatusCode::OK, "{route}: {answer}");
    }
    let (code, out, err) = ctl(&admin, ALICE, &["rollback"]).await?;
    assert_eq!(code, 0, "rollback: {out}{err}");
    let repair = json!({"collection": collection, "ids": ["a"]});
    let (status, answer) = admin_call(&admin, CI, "POST", "/admin/repair", Some(repair)).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let unknown = json!({"collection": "no-such-collection", "ids": ["a"]});
    let (status, _) = admin_call(&admin, CI, "POST", "/admin/repair", Some(unknown)).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, answer) =
        admin_call(&admin, ALICE, "POST", "/admin/backfill", Some(json!({}))).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let (status, answer) =
        admin_call(&admin, ALICE, "POST", "/admin/backfill/cancel", None).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let sync = json!({"mode": "sync"});
    let (status, answer) =
        admin_call(&admin, ALICE, "POST", "/admin/write-mode", Some(sync)).await?;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, _) = admin_call(&admin, CI, "POST", "/admin/dead-letters/999/drop", None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let finished_ms = now_ms();

    let expected: Vec<(String, String, String)> = [
        ("alice", "cutover", "done"),
        ("alice", "cutover", "done"),
        ("ci", "cutover", "refused"),
        ("ci", "pause", "done"),
        ("ci", "resume", "done"),
        ("alice", "rollback", "done"),
        ("ci", "repair", "done"),
        ("ci", "repair", "refused"),
        ("alice", "backfill", "done"),
        ("alice", "backfill-cancel", "done"),
        ("alice", "write-mode", "done"),
        ("ci", "dead-letters-drop", "refused"),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
    .collect();
    let (status, audit) = admin_call(&admin, CI, "GET", "/admin/audit?limit=50", None).await?;
    assert_eq!(status, StatusCode::OK, "{audit}");
    let entries = &audit["entries"];
    assert_eq!(summary(entries), expected, "{audit:#}");
    let oldest_first: Vec<&Value> = entries.as_array().unwrap().iter().rev().collect();
    assert!(
        oldest_first[0]["detail"]
            .as_str()
            .unwrap()
            .contains("\"dry_run\":true"),
        "the dry run is marked: {:#}",
        oldest_first[0]
    );
    assert!(
        oldest_first[2]["outcome"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "a refusal says why: {:#}",
        oldest_first[2]
    );
    assert!(
        oldest_first[7]["outcome"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no-such-collection")),
        "{:#}",
        oldest_first[7]
    );
    assert_eq!(
        oldest_first[6]["detail"],
        format!("collection={collection} ids=1")
    );
    assert_eq!(oldest_first[11]["detail"], "seq=999");
    // When: in the order they were made, within the test's run.
    let times: Vec<u64> = oldest_first
        .iter()
        .map(|e| e["at_ms"].as_u64().unwrap_or(0))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(
        times[0] >= started_ms && times[11] <= finished_ms,
        "{times:?}"
    );
    // Reads are not actions: the audit listing above added nothing.
    let (_, status) = admin_call(&admin, ALICE, "GET", "/admin/status", None).await?;
    let recent = summary(&status["audit"]);
    assert_eq!(recent, expected[expected.len() - 10..], "{status:#}");

    // A restart on the same state: `ctl audit` still shows every action.
    proxy.stop().await?;
    proxy.restart().await?;
    let (code, out, err) = ctl(&admin, CI, &["audit", "--json", "--limit", "50"]).await?;
    assert_eq!(code, 0, "ctl audit --json: {out}{err}");
    let listed: Value = serde_json::from_str(&out)?;
    assert_eq!(summary(&listed["entries"]), expected, "{listed:#}");
    let (code, table, err) = ctl(&admin, CI, &["audit"]).await?;
    assert_eq!(code, 0, "ctl audit: {table}{err}");
    assert_eq!(table.lines().count(), expected.len(), "{table}");
    let first_line = table.lines().last().unwrap_or_default();
    assert!(
        first_line.contains("alice") && first_line.contains("cutover"),
        "{table}"
    );
    assert!(table.contains("refused: "), "{table}");

    // Wrong tokens from 127.0.0.1: counted, then refused with 429 for the window, even with
    // the right token; another address is not affected.
    let admin_addr: SocketAddr = admin.trim_start_matches("http://").parse()?;
    for _ in 0..LIMIT {
        let (status, answer) = admin_call(&admin, WRONG, "GET", "/admin/status", None).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        assert_eq!(answer["error"], "AuthError");
    }
    let (code, retry_after) = status_from([127, 0, 0, 1], admin_addr, ALICE).await?;
    assert_eq!(code, 429, "past the limit, the right token waits too");
    let retry_after: u64 = retry_after.expect("a Retry-After header").parse()?;
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    let (code, _) = status_from([127, 0, 0, 2], admin_addr, CI).await?;
    assert_eq!(code, 200, "another address logs in");
    let wrong = counter(
        &admin,
        "chroma_shift_admin_auth_failures_total",
        &[("reason", "wrong_token")],
    )
    .await?;
    assert_eq!(wrong, f64::from(LIMIT));
    let limited = counter(
        &admin,
        "chroma_shift_admin_auth_failures_total",
        &[("reason", "rate_limited")],
    )
    .await?;
    assert!(limited >= 1.0, "{limited}");
    wait_until("the failure window to pass", BOUND, || async {
        Ok(status_from([127, 0, 0, 1], admin_addr, ALICE).await?.0 == 200)
    })
    .await?;

    // The log says what failed and who acted, never a token.
    let log = proxy.log_tail(2000);
    assert!(log.contains("admin login failed"), "{log}");
    assert!(log.contains("admin action"), "{log}");
    for token in [ALICE, CI, WRONG] {
        assert!(!log.contains(token), "a token in the log");
    }
    proxy.stop().await?;
    Ok(())
}
