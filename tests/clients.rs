//! More clients proven unchanged: the official JavaScript client (`tests/js/workflow.mjs`, npm
//! `chromadb` pinned in `tests/js/package.json`) and LangChain's Chroma vector store
//! (`tests/python/langchain_workflow.py`, `langchain-chroma` pinned in
//! `tests/python/requirements-clients.txt`). Each workflow runs once against Chroma directly
//! and once through the proxy, on fresh servers: the same transcripts (ids and times that
//! differ by nature normalized by the scripts), and afterwards the proxy's two stores hold
//! the same records.

use std::time::Duration;

use serde_json::{json, Value};
use shift_testkit::scrape::wait_drained;
use shift_testkit::stores::assert_same_records;
use shift_testkit::transcript::{
    assert_expected_outcomes, assert_same_transcripts, result_of, TranscriptFile,
};
use shift_testkit::{node, python, Chroma, Proxy};

/// Generous: each script makes a few dozen calls; only a hang trips it.
const WORKFLOW_LIMIT: Duration = Duration::from_secs(180);
/// How long the journal may take to reach the secondary.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// The JavaScript workflow's steps that must fail, on both sides.
const JS_EXPECTED_ERRORS: &[(&str, &str)] = &[
    ("create_collection_duplicate", "ChromaUniqueError"),
    ("get_collection_missing", "ChromaNotFoundError"),
    ("add_dimension_mismatch", "ChromaClientError"),
    ("delete_collection_missing", "ChromaNotFoundError"),
];

/// A client whose workflow script the tests run.
#[derive(Debug, Clone, Copy)]
enum Client {
    JavaScript,
    LangChain,
}

/// Runs `client`'s workflow against `url` and returns its transcript (`label` names its file).
async fn run_workflow(client: Client, url: &str, label: &str) -> anyhow::Result<Vec<Value>> {
    let out = TranscriptFile::new(&format!("{client:?}-{label}"));
    let out_arg = out.arg();
    let args = ["--url", url, "--out", &out_arg];
    match client {
        Client::JavaScript => node::run_script("workflow.mjs", &args, WORKFLOW_LIMIT).await?,
        Client::LangChain => {
            python::run_script("langchain_workflow.py", &args, WORKFLOW_LIMIT).await?
        }
    };
    out.steps()
}

/// Runs `client`'s workflow on a fresh Chroma directly and through a proxy in front of two fresh
/// stores (old primary), both at once; checks the transcripts match, then that the new store
/// caught up and holds what the old one does. Returns the proxied transcript.
async fn directly_and_through_the_proxy(client: Client) -> anyhow::Result<Vec<Value>> {
    let (direct, old, new) = tokio::try_join!(Chroma::spawn(), Chroma::spawn(), Chroma::spawn())?;
    let proxy = Proxy::in_front_of(&old, &new).spawn().await?;
    let (direct_url, proxy_url) = (direct.url(), proxy.url());
    let (direct_steps, proxied_steps) = tokio::try_join!(
        run_workflow(client, &direct_url, "direct"),
        run_workflow(client, &proxy_url, "proxied")
    )?;
    assert_same_transcripts(&direct_steps, &proxied_steps);
    wait_drained(&proxy.admin_url(), "new", DRAIN_LIMIT).await?;
    let compared = assert_same_records(&old.url(), &new.url()).await?;
    // The direct Chroma ends as the proxied stores do: the writes reached them through it.
    let direct_compared = assert_same_records(&direct.url(), &old.url()).await?;
    assert_eq!(compared.per_collection, direct_compared.per_collection);
    assert!(compared.records > 0, "{compared:?}");
    Ok(proxied_steps)
}

#[tokio::test]
async fn javascript_client_answers_the_same_directly_and_through_the_proxy() -> anyhow::Result<()> {
    let steps = directly_and_through_the_proxy(Client::JavaScript).await?;
    assert_expected_outcomes(&steps, JS_EXPECTED_ERRORS, 25);
    // A few answers checked against what Chroma must say, so equal-but-wrong cannot pass.
    assert_eq!(result_of(&steps, "count_after_add"), &json!(5));
    assert_eq!(result_of(&steps, "get_where")["ids"], json!(["a", "d"]));
    assert_eq!(
        result_of(&steps, "query")["ids"],
        json!([["a", "d", "e"], ["c", "e", "d"]])
    );
    assert_eq!(
        result_of(&steps, "get_after_update")["documents"],
        json!(["bravo blueberries", "charlie chestnuts", "foxtrot figs"])
    );
    assert_eq!(result_of(&steps, "count_after_delete"), &json!(3));
    Ok(())
}

#[tokio::test]
async fn langchain_vector_store_answers_the_same_directly_and_through_the_proxy(
) -> anyhow::Result<()> {
    let steps = directly_and_through_the_proxy(Client::LangChain).await?;
    assert_expected_outcomes(&steps, &[], 15);
    assert_eq!(result_of(&steps, "count"), &json!(6));
    assert_eq!(
        result_of(&steps, "similarity_search_filtered")
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(
        result_of(&steps, "get_where")["ids"],
        json!(["a", "b", "d", "f"])
    );
    assert_eq!(
        result_of(&steps, "get_all")["documents"],
        json!([
            "bravo blueberries",
            "charlie cabbages",
            "delta dragonfruit",
            "foxtrot figs are soft"
        ])
    );
    assert_eq!(result_of(&steps, "count_after_delete"), &json!(4));
    Ok(())
}
