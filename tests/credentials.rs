//! Credentials: each client identity reaches the backends with its own backend token (the
//! token map), on its reads, its writes, the shadow reads and the journaled mirror replayed
//! later; forwarding passes the client's own header; an unknown token is refused in Chroma's
//! shape; a journaled write whose identity left the config is parked, not sent with another
//! credential; and the binary refuses to start with backend credentials open to anyone.
//!
//! The backends are recording proxies ([`FaultyBackend::proxying`]) in front of real Chroma
//! servers: each request they pass on is kept with its headers.

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use shift_config::{Config, IdentitySecrets, Secret, Secrets};
use shift_proxy::mirror::ids_of;
use shift_testkit::faulty::Received;
use shift_testkit::python::run_script;
use shift_testkit::scrape::wait_drained;
use shift_testkit::wait::wait_until;
use shift_testkit::{
    admin_call, http, Chroma, Fault, FaultyBackend, Proxy, ProxyProcess, ADMIN_TOKEN,
};

const SCRIPT_LIMIT: Duration = Duration::from_secs(120);
/// Only catches a hang.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Two real stores, each behind a recording proxy.
struct Stores {
    _old: Chroma,
    _new: Chroma,
    old: FaultyBackend,
    new: FaultyBackend,
}

async fn stores() -> anyhow::Result<Stores> {
    let (old, new) = (Chroma::spawn().await?, Chroma::spawn().await?);
    Ok(Stores {
        old: FaultyBackend::proxying(&old.url()).await?,
        new: FaultyBackend::proxying(&new.url()).await?,
        _old: old,
        _new: new,
    })
}

/// A config over `stores` with `extra` TOML; the secrets come from [`secrets`], not from the
/// environment variables named here.
fn config(stores: &Stores, extra: &str) -> anyhow::Result<Config> {
    Ok(Config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\
         [backends.old]\nurl = \"{}\"\n[backends.new]\nurl = \"{}\"\n\
         [health]\ninterval = \"200ms\"\ntimeout = \"1s\"\n{extra}",
        stores.old.url(),
        stores.new.url()
    ))?)
}

/// Operator credentials on both stores (bearer on old, `x-chroma-token` on new), and the
/// identities `team-a` and `team-b` when `teams` are given.
const OPERATOR_AUTH: &str = "[backends.old.auth]\ntoken_env = \"OLD_KEY\"\n\
    [backends.new.auth]\ntoken_env = \"NEW_KEY\"\nheader = \"x-chroma-token\"\n";

/// The identity `name`, its tokens in `TEAM_A_TOKEN`, `TEAM_A_OLD`, `TEAM_A_NEW` (for `team-a`).
fn identity_toml(name: &str) -> String {
    let env = name.to_uppercase().replace('-', "_");
    format!(
        "[[server.client_auth.identities]]\nname = \"{name}\"\ntoken_env = \"{env}_TOKEN\"\n\
         backend_tokens = {{ old = \"{env}_OLD\", new = \"{env}_NEW\" }}\n"
    )
}

/// The identity `name` (`team-a`): clients present `token-a`; it sends `a-old-key` to old and
/// `a-new-key` to new.
fn identity(name: &str) -> IdentitySecrets {
    let letter = name.trim_start_matches("team-");
    IdentitySecrets {
        name: name.to_owned(),
        client_tokens: vec![Secret::new(format!("token-{letter}"))],
        old: Some(Secret::new(format!("{letter}-old-key"))),
        new: Some(Secret::new(format!("{letter}-new-key"))),
    }
}

fn secrets(teams: &[&str]) -> Secrets {
    Secrets {
        old: Some(Secret::new("operator-old-key".into())),
        new: Some(Secret::new("operator-new-key".into())),
        client_tokens: vec![Secret::new("operator-client".into())],
        identities: teams.iter().map(|t| identity(t)).collect(),
        ..Secrets::default()
    }
}

/// The credential a request carried: its bearer token, else its `X-Chroma-Token`.
fn credential(request: &Received) -> String {
    let header = |name: &str| {
        request
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
            .join(",")
    };
    let bearer = header("authorization");
    if bearer.is_empty() {
        header("x-chroma-token")
    } else {
        bearer.trim_start_matches("Bearer ").to_owned()
    }
}

/// The ids of a record write's body.
fn ids(request: &Received) -> Vec<String> {
    ids_of(&serde_json::from_slice(&request.body).unwrap_or_default())
}

fn is_write(request: &Received) -> bool {
    ["/add", "/upsert"]
        .iter()
        .any(|verb| request.path_and_query.ends_with(verb))
}

/// Every record write `store` received of ids starting with `prefix`, and the credentials
/// they carried.
fn write_credentials(store: &FaultyBackend, prefix: &str) -> Vec<String> {
    store
        .received()
        .iter()
        .filter(|r| is_write(r) && ids(r).iter().any(|id| id.starts_with(prefix)))
        .map(credential)
        .collect()
}

/// The credentials `store`'s requests whose path ends with `suffix` carried.
fn credentials_of(store: &FaultyBackend, suffix: &str) -> Vec<String> {
    let mut found: Vec<String> = store
        .received()
        .iter()
        .filter(|r| {
            r.path_and_query
                .split('?')
                .next()
                .unwrap_or("")
                .ends_with(suffix)
        })
        .map(credential)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The official client at `url` as `token`: adds `prefix-0..2` to `coll-prefix` (unless
/// `--query-only` in `extra`) and queries.
async fn client(url: &str, token: &str, prefix: &str, extra: &[&str]) -> anyhow::Result<Value> {
    let collection = format!("coll-{prefix}");
    let mut args = vec![
        "--url",
        url,
        "--token",
        token,
        "--collection",
        &collection,
        "--prefix",
        prefix,
    ];
    args.extend_from_slice(extra);
    let out = run_script("identity_client.py", &args, SCRIPT_LIMIT).await?;
    Ok(serde_json::from_str(out.stdout.trim())?)
}

#[tokio::test]
async fn two_identities_reach_each_store_with_their_own_tokens_including_the_replay(
) -> anyhow::Result<()> {
    let stores = stores().await?;
    let toml = format!(
        "{OPERATOR_AUTH}[server.client_auth]\nenabled = true\n{}{}\
         [mirror]\nmode = \"journaled\"\n[reads]\nshadow_percent = 100.0\n",
        identity_toml("team-a"),
        identity_toml("team-b")
    );
    let proxy = Proxy::start_fresh(config(&stores, &toml)?, secrets(&["team-a", "team-b"])).await?;
    let url = proxy.url();

    // Two official clients, each with its own token, at the same time.
    let (a, b) = tokio::join!(
        client(&url, "token-a", "a", &[]),
        client(&url, "token-b", "b", &[])
    );
    let (a, b) = (a?, b?);
    assert_eq!(a["count"], 3, "{a}");
    assert_eq!(b["count"], 3, "{b}");
    assert_eq!(a["ids"][0], "a-0", "{a}");
    wait_drained(&proxy.admin_url(), "new", DRAIN_LIMIT).await?;

    // The primary got each client's writes with that client's old-store token ...
    assert_eq!(write_credentials(&stores.old, "a-"), ["a-old-key"]);
    assert_eq!(write_credentials(&stores.old, "b-"), ["b-old-key"]);
    // ... and the secondary got the journaled copies, replayed later, with the new-store
    // tokens of the identity that wrote them.
    assert_eq!(write_credentials(&stores.new, "a-"), ["a-new-key"]);
    assert_eq!(write_credentials(&stores.new, "b-"), ["b-new-key"]);
    // Reads and collection creates went as the client too.
    assert_eq!(
        credentials_of(&stores.old, "/query"),
        ["a-old-key", "b-old-key"]
    );
    assert_eq!(
        credentials_of(&stores.old, "/collections"),
        ["a-old-key", "b-old-key"]
    );
    // The collection the replay created on the secondary, as the identity that wrote first.
    assert_eq!(
        credentials_of(&stores.new, "/collections"),
        ["a-new-key", "b-new-key"]
    );

    // Once the secondary caught up, a query is shadowed there, as the client.
    client(&url, "token-a", "a", &["--query-only"]).await?;
    wait_until(
        "a shadow query reached the new store",
        DRAIN_LIMIT,
        || async { Ok(!credentials_of(&stores.new, "/query").is_empty()) },
    )
    .await?;
    assert_eq!(credentials_of(&stores.new, "/query"), ["a-new-key"]);

    // The proxy's own work keeps the operator's credential; no client token ever reached a
    // store.
    assert_eq!(
        credentials_of(&stores.old, "/heartbeat"),
        ["operator-old-key"]
    );
    assert_eq!(
        credentials_of(&stores.new, "/heartbeat"),
        ["operator-new-key"]
    );
    for store in [&stores.old, &stores.new] {
        for request in store.received() {
            let carried = credential(&request);
            assert!(
                !carried.starts_with("token-") && carried != "operator-client",
                "a client token reached a store: {} {}",
                request.method,
                request.path_and_query
            );
        }
    }

    // An unknown token is refused in Chroma's shape, and reaches no store.
    let before = stores.old.received().len();
    let (status, _, body) = http(
        "GET",
        &format!(
            "{}/api/v2/tenants/default_tenant/databases/default_database/collections",
            proxy.url()
        ),
        &[("authorization", "Bearer token-c")],
        "",
    )
    .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_slice(&body)?;
    assert_eq!(body["error"], "AuthError", "{body}");
    assert!(body["message"].is_string(), "{body}");
    let reached = stores.old.received()[before..]
        .iter()
        .any(|r| r.path_and_query.contains("/collections"));
    assert!(!reached, "a refused request reached the store");
    Ok(())
}

#[tokio::test]
async fn forwarding_passes_the_clients_own_header_to_both_stores_in_sync_mode() -> anyhow::Result<()>
{
    let stores = stores().await?;
    let toml = format!(
        "{OPERATOR_AUTH}[server.client_auth]\nforward_client_auth = true\n[mirror]\nmode = \"sync\"\n"
    );
    let proxy = Proxy::start_fresh(config(&stores, &toml)?, secrets(&[])).await?;
    let url = proxy.url();
    let out = client(&url, "the-clients-own", "f", &[]).await?;
    assert_eq!(out["count"], 3, "{out}");
    // The primary's write and the sync mirror's both carried the client's header alone.
    assert_eq!(write_credentials(&stores.old, "f-"), ["the-clients-own"]);
    assert_eq!(write_credentials(&stores.new, "f-"), ["the-clients-own"]);
    assert_eq!(credentials_of(&stores.old, "/query"), ["the-clients-own"]);
    // The proxy's own work keeps the operator's.
    assert_eq!(
        credentials_of(&stores.old, "/heartbeat"),
        ["operator-old-key"]
    );
    Ok(())
}

#[tokio::test]
async fn a_journaled_write_whose_identity_left_the_config_is_parked_naming_it() -> anyhow::Result<()>
{
    let stores = stores().await?;
    let state = tempfile::tempdir()?;
    let both = format!(
        "{OPERATOR_AUTH}[server.client_auth]\nenabled = true\n{}{}[mirror]\nmode = \"journaled\"\n",
        identity_toml("team-a"),
        identity_toml("team-b")
    );
    let mut first = config(&stores, &both)?;
    first.state.dir = state.path().to_path_buf();
    // The secondary refuses writes for now, so team-b's stay in the journal.
    stores.new.set_default(Fault::Status(
        StatusCode::SERVICE_UNAVAILABLE,
        r#"{"error":"Unavailable","message":"down for the test"}"#.into(),
    ));
    let proxy = Proxy::start(first, secrets(&["team-a", "team-b"])).await?;
    let url = proxy.url();
    client(&url, "token-b", "b", &[]).await?;
    proxy.shutdown().await?;

    // team-b leaves the config; the secondary is back.
    stores.new.set_default(Fault::Forward);
    let only_a = format!(
        "{OPERATOR_AUTH}[server.client_auth]\nenabled = true\n{}[mirror]\nmode = \"journaled\"\n",
        identity_toml("team-a")
    );
    let mut second = config(&stores, &only_a)?;
    second.state.dir = state.path().to_path_buf();
    let proxy = Proxy::start(second, secrets(&["team-a"])).await?;
    wait_drained(&proxy.admin_url(), "new", DRAIN_LIMIT).await?;
    let (status, letters) = admin_call(
        &proxy.admin_url(),
        ADMIN_TOKEN,
        "GET",
        "/admin/dead-letters",
        None,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{letters}");
    let letters = letters["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!letters.is_empty(), "nothing parked");
    for letter in &letters {
        assert_eq!(letter["identity"], "team-b", "{letter}");
        let reason = letter["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("`team-b`"), "{letter}");
    }
    // None of team-b's writes reached the secondary with any credential.
    assert!(write_credentials(&stores.new, "b-")
        .iter()
        .all(|c| c == "b-new-key"));
    assert!(stores
        .new
        .received()
        .iter()
        .filter(|r| r.fault == "Forward" && is_write(r))
        .all(|r| ids(r).iter().all(|id| !id.starts_with("b-"))));
    proxy.shutdown().await?;
    Ok(())
}

/// The binary reads each identity's tokens from the environment the config names.
#[tokio::test]
async fn the_binary_maps_a_client_token_read_from_the_environment() -> anyhow::Result<()> {
    let stores = stores().await?;
    let builder = Proxy::builder()
        .old(stores.old.url())
        .new_store(stores.new.url())
        .client_tokens(&["operator-client"])
        .toml(&format!("{OPERATOR_AUTH}{}", identity_toml("team-a")));
    let env = [
        ("OLD_KEY", "operator-old-key"),
        ("NEW_KEY", "operator-new-key"),
        ("TEAM_A_TOKEN", "token-a"),
        ("TEAM_A_OLD", "a-old-key"),
        ("TEAM_A_NEW", "a-new-key"),
    ];
    let mut proxy = ProxyProcess::start_with_env(builder, &env).await?;
    let url = proxy.url();
    let out = client(&url, "token-a", "a", &[]).await?;
    assert_eq!(out["count"], 3, "{out}");
    wait_drained(&proxy.admin_url(), "new", DRAIN_LIMIT).await?;
    assert_eq!(write_credentials(&stores.old, "a-"), ["a-old-key"]);
    assert_eq!(write_credentials(&stores.new, "a-"), ["a-new-key"]);
    // The operator's client token still works, with the operator's backend key.
    let out = client(&url, "operator-client", "o", &[]).await?;
    assert_eq!(out["count"], 3, "{out}");
    assert_eq!(write_credentials(&stores.old, "o-"), ["operator-old-key"]);
    let log = proxy.log_tail(400);
    let access = log
        .lines()
        .filter(|l| l.contains("chroma_shift::access") && l.contains("collection_add"))
        .collect::<Vec<_>>();
    assert!(
        access.iter().any(|l| l.contains("identity=\"team-a\"")),
        "no identity in the access log: {access:?}"
    );
    for secret in ["token-a", "a-old-key", "a-new-key", "operator-old-key"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
    proxy.stop().await
}

#[tokio::test]
async fn the_binary_refuses_to_start_with_backend_credentials_open_to_anyone() -> anyhow::Result<()>
{
    let bin = tokio::task::spawn_blocking(shift_testkit::process::chroma_shift_bin).await??;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("chroma-shift.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"0.0.0.0:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [backends.old]\nurl = \"http://127.0.0.1:9\"\n[backends.old.auth]\ntoken_env = \"OLD_KEY\"\n\
             [backends.new]\nurl = \"http://127.0.0.1:10\"\n[state]\ndir = \"{}\"\n",
            dir.path().join("state").display()
        ),
    )?;
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin)
            .args(["serve", "--config"])
            .arg(&path)
            .env("OLD_KEY", "operator-old-key")
            .env("CHROMA_SHIFT_ADMIN_TOKEN", ADMIN_TOKEN)
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    assert!(!output.status.success(), "it started");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for key in [
        "backends.old.auth",
        "server.client_auth.enabled",
        "server.listen",
        "server.client_auth.allow_unauthenticated_with_backend_credentials",
    ] {
        assert!(said.contains(key), "{key} not in: {said}");
    }
    assert!(!said.contains("operator-old-key"), "{said}");
    Ok(())
}
