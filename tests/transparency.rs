//! Transparency: the official Python client's whole workflow (`tests/python/workflow.py`)
//! gets the same answers, errors included, from Chroma directly and through the proxy.

use std::time::Duration;

use serde_json::{json, Value};
use shift_testkit::scrape::{metrics_text, samples};
use shift_testkit::stores::two_stores;
use shift_testkit::transcript::{self, assert_same_transcripts, result_of, TranscriptFile};
use shift_testkit::{http_json, python, Chroma, Proxy};

/// Generous: the script makes about a hundred calls, each a Python round trip.
const WORKFLOW_LIMIT: Duration = Duration::from_secs(180);

const COLLECTIONS: &str = "/api/v2/tenants/default_tenant/databases/default_database/collections";

/// The steps that must fail, on both sides; every other step must succeed.
const EXPECTED_ERRORS: &[(&str, &str)] = &[
    ("create_collection_duplicate", "ChromaError"),
    ("create_collection_invalid_name", "InvalidArgumentError"),
    ("get_collection_missing", "NotFoundError"),
    ("add_dimension_mismatch", "InvalidArgumentError"),
    // Rejected by the client itself, so it is the same on both sides by construction.
    ("get_where_invalid_operator", "ValueError"),
    ("get_where_invalid_top_level", "InvalidArgumentError"),
    ("query_dimension_mismatch", "InvalidArgumentError"),
    ("delete_invalid_where", "InvalidArgumentError"),
    ("get_collection_old_name", "NotFoundError"),
    ("modify_name_to_existing", "InternalError"),
    ("delete_collection_missing", "NotFoundError"),
    ("count_on_deleted_collection", "NotFoundError"),
    ("add_to_deleted_collection", "NotFoundError"),
];

/// Operations the workflow must have sent through the proxy, by the proxy's metric names.
const PROXIED_OPERATIONS: &[&str] = &[
    "create_collection",
    "get_collection",
    "list_collections",
    "count_collections",
    "update_collection",
    "delete_collection",
    "collection_add",
    "collection_upsert",
    "collection_update",
    "collection_delete",
    "collection_count",
    "collection_get",
    "collection_query",
];

#[tokio::test]
async fn python_workflow_answers_the_same_directly_and_through_the_proxy() -> anyhow::Result<()> {
    let (direct_chroma, proxied_chroma) = two_stores().await?;
    let proxy = Proxy::builder().old(proxied_chroma.url()).spawn().await?;

    same_workflow_directly_and_through(&direct_chroma, &proxy, &proxied_chroma, "old", "").await
}

/// The workflow run on Chroma directly and through the proxy (whose primary `backend` is
/// `proxied_chroma`), both at once (they touch different servers, and it halves the test's
/// time): the same transcripts, the expected outcomes, every request through the proxy, and
/// the final state on the proxied Chroma. `label` tells the runs' files apart.
async fn same_workflow_directly_and_through(
    direct_chroma: &Chroma,
    proxy: &Proxy,
    proxied_chroma: &Chroma,
    backend: &str,
    label: &str,
) -> anyhow::Result<()> {
    let (direct_url, proxy_url) = (direct_chroma.url(), proxy.url());
    let (direct_label, proxied_label) = (format!("direct{label}"), format!("proxied{label}"));
    let (direct, proxied) = tokio::try_join!(
        run_workflow(&direct_url, &direct_label),
        run_workflow(&proxy_url, &proxied_label),
    )?;
    assert_same_transcripts(&direct, &proxied);
    assert_expected_outcomes(&proxied);
    assert_known_results(&proxied);
    assert_went_through_proxy(proxy, backend).await?;
    assert_proxied_chroma_holds_the_final_state(proxied_chroma, &proxied).await
}

/// The same workflow through a proxy whose primary is the new store (as after a cutover),
/// with the old store as its secondary: the same answers as Chroma directly, served by the new
/// store, and the old store ends with the same records.
#[tokio::test]
async fn python_workflow_answers_the_same_with_new_as_primary() -> anyhow::Result<()> {
    let (direct_chroma, proxied_chroma, secondary) =
        tokio::try_join!(Chroma::spawn(), Chroma::spawn(), Chroma::spawn())?;
    let proxy = Proxy::builder()
        .old(secondary.url())
        .new_store(proxied_chroma.url())
        .primary(shift_config::BackendName::New)
        .spawn()
        .await?;
    same_workflow_directly_and_through(&direct_chroma, &proxy, &proxied_chroma, "new", "-new")
        .await?;
    shift_testkit::scrape::wait_drained(&proxy.admin_url(), "old", Duration::from_secs(60)).await?;
    let compared =
        shift_testkit::stores::assert_same_records(&proxied_chroma.url(), &secondary.url()).await?;
    // The workflow ends having deleted its records but one empty collection.
    assert!(compared.collections > 0, "{compared:?}");
    Ok(())
}

/// Runs workflow.py against `url` and returns its transcript's steps.
async fn run_workflow(url: &str, label: &str) -> anyhow::Result<Vec<Value>> {
    let out = TranscriptFile::new(label);
    python::run_script(
        "workflow.py",
        &["--url", url, "--out", &out.arg()],
        WORKFLOW_LIMIT,
    )
    .await?;
    out.steps()
}

/// Exactly the expected steps failed, with the expected error types, and every other step
/// has a result.
fn assert_expected_outcomes(steps: &[Value]) {
    transcript::assert_expected_outcomes(steps, EXPECTED_ERRORS, 40);
}

/// A few answers checked against what Chroma must say, so equal-but-wrong cannot pass.
fn assert_known_results(steps: &[Value]) {
    assert_eq!(result_of(steps, "count_collections"), &json!(2));
    assert_eq!(
        result_of(steps, "list_collections_paged"),
        &json!({"page_sizes": [1, 1, 0], "names": ["shift-docs", "shift-extra"]})
    );
    assert_eq!(result_of(steps, "count_after_add"), &json!(6));
    assert_eq!(
        result_of(steps, "get_all")["ids"],
        json!(["a", "b", "c", "d", "e", "f"])
    );
    assert_eq!(
        result_of(steps, "get_where_document")["ids"],
        json!(["a", "d"])
    );
    assert_eq!(result_of(steps, "query")["ids"], json!([["a", "f", "d"]]));
    assert_eq!(result_of(steps, "count_after_writes"), &json!(7));
    assert_eq!(result_of(steps, "count_after_deletes"), &json!(3));
    assert_eq!(
        result_of(steps, "modify_name")["name"],
        json!("shift-docs-renamed")
    );
    assert_eq!(
        result_of(steps, "list_collections_final"),
        &json!(["shift-extra"])
    );
}

/// The proxy's own metrics count successful requests of every kind the workflow makes.
async fn assert_went_through_proxy(proxy: &Proxy, backend: &str) -> anyhow::Result<()> {
    let text = metrics_text(&proxy.admin_url()).await?;
    for operation in PROXIED_OPERATIONS {
        let answered = successful_requests(&text, operation, backend);
        assert!(
            answered > 0,
            "the proxy's metrics show no successful `{operation}` from the {backend} backend:\n{text}"
        );
    }
    Ok(())
}

/// The sum of `chroma_shift_requests_total` for `operation` answered by `backend` with a 2xx
/// status.
fn successful_requests(metrics: &str, operation: &str, backend: &str) -> u64 {
    samples(metrics, "chroma_shift_requests_total")
        .into_iter()
        .filter(|(labels, _)| {
            labels.get("operation").map(String::as_str) == Some(operation)
                && labels.get("backend").map(String::as_str) == Some(backend)
                && labels.get("status").is_some_and(|s| s.starts_with('2'))
        })
        .map(|(_, value)| value as u64)
        .sum()
}

/// Asked directly, the Chroma behind the proxy holds what the proxied transcript ends with:
/// the writes really reached it.
async fn assert_proxied_chroma_holds_the_final_state(
    chroma: &Chroma,
    transcript: &[Value],
) -> anyhow::Result<()> {
    let (status, collections) =
        http_json("GET", &format!("{}{COLLECTIONS}", chroma.url()), None).await?;
    anyhow::ensure!(
        status.is_success(),
        "listing collections: {status} {collections}"
    );
    let mut names: Vec<&str> = collections
        .as_array()
        .map(|list| list.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    names.sort_unstable();
    assert_eq!(
        json!(names),
        *result_of(transcript, "list_collections_final"),
        "the Chroma behind the proxy holds other collections than the transcript says"
    );
    let extra = collections
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == "shift-extra"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(extra["metadata"], json!({"topic": "extra"}), "{extra}");
    Ok(())
}
