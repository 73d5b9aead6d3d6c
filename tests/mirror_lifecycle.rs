//! Collection, tenant and database changes reach both stores; tenant and database names are
//! renamed for the new store; a filtered delete removes the same records on both; reset goes
//! to both or to neither. Two real Chroma servers behind the proxy, checked directly.

use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use shift_testkit::collection::create_collection;
use shift_testkit::scrape::{metric, wait_drained};
use shift_testkit::stores::two_stores_and_proxy;
use shift_testkit::stores::{
    assert_same_records, compare_stores, db_path, post_json, record_ids, DEFAULT_DB,
};
use shift_testkit::{http_json, Chroma, Proxy};

const DB: &str = DEFAULT_DB;

/// Collections of a store's database: name -> (metadata, sorted record ids).
async fn contents(url: &str, db_path: &str) -> anyhow::Result<Vec<(String, Value, Vec<String>)>> {
    let (status, list) = http_json("GET", &format!("{url}{db_path}/collections"), None).await?;
    anyhow::ensure!(status.is_success(), "list answered {status}: {list}");
    let mut out = Vec::new();
    for collection in list.as_array().cloned().unwrap_or_default() {
        let id = collection["id"].as_str().unwrap_or_default();
        let ids = record_ids(url, db_path, id).await?;
        out.push((
            collection["name"].as_str().unwrap_or_default().to_owned(),
            collection["metadata"].clone(),
            ids,
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn records(ids: &[&str]) -> Value {
    json!({
        "ids": ids,
        "embeddings": ids.iter().enumerate().map(|(i, _)| vec![i as f32, 1.0, 2.0]).collect::<Vec<_>>(),
        "metadatas": ids.iter().enumerate().map(|(i, _)| json!({"bucket": i % 2})).collect::<Vec<_>>(),
    })
}

#[tokio::test]
async fn collection_changes_reach_both_stores_and_the_client_id_stays() -> anyhow::Result<()> {
    let (old, new, proxy) = two_stores_and_proxy("").await?;
    let base = format!("{}{DB}", proxy.url());

    let created = post_json(
        format!("{base}/collections"),
        json!({"name": "alpha", "metadata": {"team": "search"}}),
    )
    .await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let (_, direct_old) =
        http_json("GET", &format!("{}{DB}/collections/alpha", old.url()), None).await?;
    assert_eq!(
        direct_old["id"], created["id"],
        "the client id is the old store's id"
    );

    post_json(
        format!("{base}/collections/{id}/add"),
        records(&["a", "b", "c", "d"]),
    )
    .await?;
    // Rename and change metadata, then a second collection that is deleted again.
    let (status, _) = http_json(
        "PUT",
        &format!("{base}/collections/{id}"),
        Some(json!({"new_name": "beta", "new_metadata": {"team": "ranking"}})),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    post_json(format!("{base}/collections"), json!({"name": "doomed"})).await?;
    let (status, _) = http_json("DELETE", &format!("{base}/collections/doomed"), None).await?;
    assert_eq!(status, StatusCode::OK);
    // A filtered delete: decided on the primary, the same ids removed on both.
    post_json(
        format!("{base}/collections/{id}/delete"),
        json!({"where": {"bucket": 0}}),
    )
    .await?;

    wait_drained(&proxy.admin_url(), "new", Duration::from_secs(60)).await?;
    // Both stores hold the same records, field by field.
    assert_same_records(&old.url(), &new.url()).await?;
    let on_old = contents(&old.url(), DB).await?;
    assert_eq!(
        on_old,
        vec![(
            "beta".to_owned(),
            json!({"team": "ranking"}),
            vec!["b".to_owned(), "d".to_owned()]
        )]
    );

    // Through the proxy the collection keeps the client's id, under its new name.
    let (_, got) = http_json("GET", &format!("{base}/collections/beta"), None).await?;
    assert_eq!(got["id"], json!(id));
    let (_, listed) = http_json("GET", &format!("{base}/collections"), None).await?;
    assert_eq!(listed[0]["id"], json!(id));
    let journaled = metric(
        &proxy.admin_url(),
        "chroma_shift_mirrored_writes_total",
        &[("outcome", "journaled")],
    )
    .await?;
    assert!(journaled.unwrap_or(0.0) >= 6.0, "{journaled:?}");
    Ok(())
}

/// A rename onto a taken name: Chroma 1.5.9 answers 500 (a UNIQUE constraint) and changes
/// nothing, metadata included. The proxy passes that answer on and, finding the name held by
/// another collection on the primary, knows the rename cannot land: it does not hold the
/// lifecycle lock for `unknown_outcome_grace` (ten minutes here, so a stall cannot pass for
/// noise), and the next create goes through. Both stores end with the same collections.
#[tokio::test]
async fn a_rename_onto_a_taken_name_does_not_hold_up_the_next_change() -> anyhow::Result<()> {
    let (old, new, proxy) =
        two_stores_and_proxy("[mirror]\nmode = \"journaled\"\nunknown_outcome_grace = \"10m\"\n")
            .await?;
    let base = format!("{}{DB}", proxy.url());
    post_json(format!("{base}/collections"), json!({"name": "taken"})).await?;
    let mover = post_json(
        format!("{base}/collections"),
        json!({"name": "mover", "metadata": {"v": 1}}),
    )
    .await?;
    let id = mover["id"].as_str().unwrap_or_default().to_owned();

    let (status, answer) = http_json(
        "PUT",
        &format!("{base}/collections/{id}"),
        Some(json!({"new_name": "taken", "new_metadata": {"v": 2}})),
    )
    .await?;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(
        answer["error"],
        json!("InternalError"),
        "Chroma's own answer"
    );

    // Without the fix this waits the ten minutes' grace for the lifecycle lock.
    let next = post_json(format!("{base}/collections"), json!({"name": "next"}));
    tokio::time::timeout(Duration::from_secs(120), next)
        .await
        .map_err(|_| anyhow::anyhow!("a create after the refused rename was held for 120 s"))??;

    wait_drained(&proxy.admin_url(), "new", Duration::from_secs(60)).await?;
    let on_old = contents(&old.url(), DB).await?;
    let names: Vec<(&str, &Value)> = on_old.iter().map(|c| (c.0.as_str(), &c.1)).collect();
    assert_eq!(
        names,
        vec![
            ("mover", &json!({"v": 1})),
            ("next", &Value::Null),
            ("taken", &Value::Null)
        ]
    );
    assert_eq!(contents(&new.url(), DB).await?, on_old);
    Ok(())
}

#[tokio::test]
async fn namespaces_are_renamed_on_the_new_store() -> anyhow::Result<()> {
    let (old, new, proxy) = two_stores_and_proxy(
        "[[namespaces]]\nold = \"default_tenant/default_database\"\nnew = \"acme/production\"\n",
    )
    .await?;
    let base = format!("{}{DB}", proxy.url());
    let id = create_collection(&proxy.url(), json!({"name": "docs"})).await?;
    post_json(
        format!("{base}/collections/{id}/upsert"),
        records(&["x", "y"]),
    )
    .await?;
    // A tenant and a database made through the proxy exist on both stores.
    post_json(
        format!("{}/api/v2/tenants", proxy.url()),
        json!({"name": "team-x"}),
    )
    .await?;
    post_json(
        format!("{}/api/v2/tenants/team-x/databases", proxy.url()),
        json!({"name": "db-one"}),
    )
    .await?;

    wait_drained(&proxy.admin_url(), "new", Duration::from_secs(60)).await?;
    let renamed = "/api/v2/tenants/acme/databases/production";
    let team_x = db_path("team-x", "db-one");
    let compared =
        compare_stores(&old.url(), &new.url(), &[(DB, renamed), (&team_x, &team_x)]).await?;
    assert_eq!(compared.records, 2, "{compared:?}");
    assert_eq!(contents(&old.url(), DB).await?.len(), 1);
    for store in [&old, &new] {
        let (status, db) = http_json(
            "GET",
            &format!("{}/api/v2/tenants/team-x/databases/db-one", store.url()),
            None,
        )
        .await?;
        assert_eq!(status, StatusCode::OK, "{db}");
    }
    // The new store's default database was left alone.
    assert!(contents(&new.url(), DB).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn sync_mode_applies_to_both_before_answering() -> anyhow::Result<()> {
    let (old, new, proxy) = two_stores_and_proxy("[mirror]\nmode = \"sync\"\n").await?;
    let base = format!("{}{DB}", proxy.url());
    let id = create_collection(&proxy.url(), json!({"name": "synced"})).await?;
    post_json(
        format!("{base}/collections/{id}/add"),
        records(&["a", "b", "c"]),
    )
    .await?;
    post_json(
        format!("{base}/collections/{id}/delete"),
        json!({"ids": ["b"]}),
    )
    .await?;
    // No waiting: in sync mode the answer came after both stores applied the write.
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    assert_eq!(compared.records, 2, "{compared:?}");
    let applied = metric(
        &proxy.admin_url(),
        "chroma_shift_mirrored_writes_total",
        &[("mode", "sync"), ("outcome", "applied")],
    )
    .await?;
    assert!(applied.unwrap_or(0.0) >= 3.0, "{applied:?}");
    Ok(())
}

#[tokio::test]
async fn reset_goes_to_both_stores_only_when_allowed() -> anyhow::Result<()> {
    let (old, new) = tokio::join!(
        Chroma::spawn_allowing_reset(),
        Chroma::spawn_allowing_reset()
    );
    let (old, new) = (old?, new?);
    let refusing = Proxy::in_front_of(&old, &new).spawn().await?;
    post_json(
        format!("{}{DB}/collections", refusing.url()),
        json!({"name": "kept"}),
    )
    .await?;
    let (status, body) =
        http_json("POST", &format!("{}/api/v2/reset", refusing.url()), None).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "AuthorizationError", "{body}");
    wait_drained(&refusing.admin_url(), "new", Duration::from_secs(60)).await?;
    assert_eq!(contents(&old.url(), DB).await?.len(), 1);
    assert_eq!(contents(&new.url(), DB).await?.len(), 1);
    refusing.shutdown().await?;

    let allowing = Proxy::in_front_of(&old, &new)
        .toml("[mirror]\nallow_reset = true\n")
        .spawn()
        .await?;
    let (status, body) =
        http_json("POST", &format!("{}/api/v2/reset", allowing.url()), None).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(contents(&old.url(), DB).await?.is_empty());
    assert!(contents(&new.url(), DB).await?.is_empty());
    Ok(())
}
