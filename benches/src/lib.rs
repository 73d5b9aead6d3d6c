//! What the benchmarks share: processes (the proxy as its own process, nginx, Chroma's pid,
//! graceful stops), the closed-loop load generator and its rounds, CPU accounting from /proc,
//! request bodies, the proxy's journal depth, and the pieces of the markdown reports.
//!
//! Every bench calls [`proxy::proxy_child_main`] first (through [`run_bench`], or itself): the
//! bench's own executable is what runs as the proxy process (see [`proxy::start_proxy`]).

pub mod bodies;
pub mod load;
pub mod proc;
pub mod proxy;
pub mod report;

/// A bench's `main`: in the proxy child, runs the proxy (see [`proxy::proxy_child_main`]); in
/// the bench, reads its settings and runs `bench` with them on a current-thread runtime.
pub fn run_bench<S, F>(
    settings: impl FnOnce() -> anyhow::Result<S>,
    bench: impl FnOnce(S) -> F,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    if let Some(result) = proxy::proxy_child_main() {
        return result;
    }
    let settings = settings()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(settings))
}

/// A scratch directory for one bench run, named `chroma-shift-bench-{what}…`; removed on drop.
pub fn scratch_dir(what: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("chroma-shift-bench-{what}"))
        .tempdir()?)
}

/// A setting from the environment, or `default` when unset.
pub fn env_var<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v} is not a valid value")),
        Err(_) => Ok(default),
    }
}

/// A count from the environment, or `default` when unset; refused outside `range`.
pub fn env_count(
    name: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> anyhow::Result<usize> {
    let value: usize = env_var(name, default)?;
    anyhow::ensure!(
        range.contains(&value),
        "{name} must be in {}..={}",
        range.start(),
        range.end()
    );
    Ok(value)
}

/// Chroma's collections path in the default tenant and database.
pub const COLLECTIONS: &str =
    "/api/v2/tenants/default_tenant/databases/default_database/collections";

/// Creates a collection named `name` through `url` (a Chroma or the proxy); its id.
pub async fn create_collection(url: &str, name: &str) -> anyhow::Result<String> {
    let (status, body) = shift_testkit::http_json(
        "POST",
        &format!("{url}{COLLECTIONS}"),
        Some(serde_json::json!({"name": name})),
    )
    .await?;
    if !status.is_success() {
        anyhow::bail!("creating collection {name} answered {status}: {body}");
    }
    body["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the new collection has no id"))
}

/// The id of the collection named `name` on `url`, if there is one.
pub async fn collection_id(url: &str, name: &str) -> anyhow::Result<Option<String>> {
    let (status, body) =
        shift_testkit::http_json("GET", &format!("{url}{COLLECTIONS}?limit=1000"), None).await?;
    if !status.is_success() {
        anyhow::bail!("listing collections on {url} answered {status}: {body}");
    }
    Ok(body
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .and_then(|c| c["id"].as_str())
        .map(str::to_owned))
}

/// How many records the collection `id` holds on `url`.
pub async fn count(url: &str, id: &str) -> anyhow::Result<u64> {
    let (status, body) =
        shift_testkit::http_json("GET", &format!("{url}{COLLECTIONS}/{id}/count"), None).await?;
    if !status.is_success() {
        anyhow::bail!("count on {url} answered {status}: {body}");
    }
    body.as_u64()
        .ok_or_else(|| anyhow::anyhow!("count answered {body}"))
}

/// Deletes the collection named `name` on `url` (Chroma deletes by name).
pub async fn delete_collection(url: &str, name: &str) -> anyhow::Result<()> {
    let (status, body) =
        shift_testkit::http_json("DELETE", &format!("{url}{COLLECTIONS}/{name}"), None).await?;
    if !status.is_success() {
        anyhow::bail!("deleting collection {name} on {url} answered {status}: {body}");
    }
    Ok(())
}

/// Chroma's `max_batch_size` on `url`.
pub async fn max_batch_size(url: &str) -> anyhow::Result<usize> {
    let (status, body) =
        shift_testkit::http_json("GET", &format!("{url}/api/v2/pre-flight-checks"), None).await?;
    if !status.is_success() {
        anyhow::bail!("pre-flight-checks on {url} answered {status}: {body}");
    }
    body["max_batch_size"]
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| anyhow::anyhow!("no max_batch_size in {body}"))
}

/// Runs `benches/python/<script>` with the venv's interpreter (the official `chromadb`
/// client); its standard output. Fails with its output when it exits non-zero or runs longer
/// than `limit` (it is killed then).
pub async fn run_bench_script(
    script: &str,
    args: &[&str],
    limit: std::time::Duration,
) -> anyhow::Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let output = shift_testkit::python::run_script_at(&path, args, limit).await?;
    Ok(output.stdout)
}
