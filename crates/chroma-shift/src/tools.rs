//! `chroma-shift inventory` and `chroma-shift verify`: read-only looks at the stores
//! themselves (not through the proxy), and `verify --repair`, which asks the running proxy to
//! bring the secondary in line under its order locks (the orchestration is
//! `shift_migrate::repair`; this file parses, prints and picks the exit code).
//!
//! Exit codes of `verify`: 0 when the stores match (after the repair, with `--repair`), 1 when
//! they diverge, 2 for a bad config or a store that cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};
use shift_config::{BackendAuthConfig, BackendConfig, BackendName, Config, Secret, Secrets};
use shift_control::AdminClient;
use shift_migrate::client::ChromaClient;
use shift_migrate::inventory::{self, Inventory};
use shift_migrate::repair;
use shift_migrate::verify::{DivergenceKind, Verdict, Verifier, VerifyOptions, VerifyReport};
use shift_proxy::namespace::NamespaceMap;
use shift_proxy::{Backend, Backends};

/// How long a re-check waits for the proxy's journal to drain.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// How long `--repair` waits for its reconciliations (and backfills) to land.
const REPAIR_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// The proxy's configuration: its two stores and namespace rules.
    #[arg(long, short, required_unless_present = "url", conflicts_with = "url")]
    config: Option<PathBuf>,
    /// Only this store of the config; both when absent.
    #[arg(long, value_parser = ["old", "new"], requires = "config")]
    store: Option<String>,
    /// A Chroma server by URL instead of a config.
    #[arg(long)]
    url: Option<url::Url>,
    /// The environment variable holding the token for `--url` (sent as a bearer token).
    #[arg(long, requires = "url")]
    token_env: Option<String>,
    /// A tenant to list (repeatable); the config's namespace rules add theirs.
    #[arg(long = "tenant", default_value = "default_tenant")]
    tenants: Vec<String>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The proxy's configuration: its two stores, namespace rules, admin listener and token.
    #[arg(long, short, env = "CHROMA_SHIFT_CONFIG")]
    config: PathBuf,
    /// Only this collection (repeatable); all when absent.
    #[arg(long = "collection")]
    collections: Vec<String>,
    /// A client tenant to compare (repeatable); the config's namespace rules add theirs.
    #[arg(long = "tenant", default_value = "default_tenant")]
    tenants: Vec<String>,
    /// The store to compare against: the proxy's primary by default.
    #[arg(long, value_parser = ["old", "new"])]
    source: Option<String>,
    /// Stored embeddings queried on both stores, per collection.
    #[arg(long, default_value_t = 20)]
    sample: usize,
    /// Results per sample query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Mean recall at k below this is a divergence, when the target's neighbours are also
    /// farther than the source's by more than --max-gap (other ids at the same distances are
    /// ANN noise between two graphs, not loss).
    #[arg(long, default_value_t = 0.9)]
    min_recall: f64,
    /// Largest mean relative distance gap of the target's top-k against the source's (5%: two
    /// HNSW graphs over uniform random vectors differ by about 2%; a wrong space or a lost
    /// part of the index by far more).
    #[arg(long, default_value_t = 0.05)]
    max_gap: f64,
    /// A distance drift above this is a divergence.
    #[arg(long, default_value_t = 1e-3)]
    max_drift: f64,
    /// Records per fetch (the stores' max_batch_size at most).
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Bring the secondary in line through the running proxy, then verify again.
    #[arg(long)]
    repair: bool,
    /// With --repair: also delete records only the secondary has.
    #[arg(long, requires = "repair")]
    delete_extra: bool,
}

// ---------------------------------------------------------------------------------------------
// inventory

pub async fn run_inventory(args: InventoryArgs) -> anyhow::Result<ExitCode> {
    let mut inventories = Vec::new();
    if let Some(url) = &args.url {
        let backends = Arc::new(url_backends(url, args.token_env.as_deref())?);
        let client = ChromaClient::new(backends, BackendName::Old);
        let inventory = inventory::collect(&client, url.as_str(), &args.tenants)
            .await
            .with_context(|| format!("the Chroma server at {url}"))?;
        inventories.push(inventory);
    } else if let Some(path) = &args.config {
        let config = crate::load(path)?;
        let backends = Arc::new(
            Backends::from_config(&config.backends, &store_secrets(&config)?)
                .context("the backends of the configuration")?,
        );
        let stores = match args.store.as_deref() {
            Some("new") => vec![BackendName::New],
            Some(_) => vec![BackendName::Old],
            None => vec![BackendName::Old, BackendName::New],
        };
        for store in stores {
            let tenants = store_tenants(&config, store, &args.tenants);
            let client = ChromaClient::new(backends.clone(), store);
            let inventory = inventory::collect(&client, store.as_str(), &tenants)
                .await
                .with_context(|| {
                    format!("the {store} store ({})", config.backends.get(store).url)
                })?;
            inventories.push(inventory);
        }
    }
    if args.json {
        let value = json!({ "stores": inventories });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for (index, inventory) in inventories.iter().enumerate() {
            if index > 0 {
                println!();
            }
            print!("{}", inventory_table(inventory));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Both "stores" are the one server at `url`.
fn url_backends(url: &url::Url, token_env: Option<&str>) -> anyhow::Result<Backends> {
    let (auth, token) = match token_env {
        Some(env) => {
            let value = std::env::var(env)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .with_context(|| format!("--token-env names {env}, which is not set or empty"))?;
            (
                Some(BackendAuthConfig {
                    token_env: env.to_owned(),
                    header: Default::default(),
                }),
                Some(Secret::new(value)),
            )
        }
        None => (None, None),
    };
    let config = BackendConfig {
        url: url.clone(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(60),
        pool_idle_timeout: Duration::from_secs(30),
        pool_max_idle: 4,
        auth,
        ca_file: None,
    };
    let backend = |name| Backend::new(name, &config, token.as_ref());
    Ok(Backends {
        old: backend(BackendName::Old).with_context(|| format!("cannot use {url}"))?,
        new: backend(BackendName::New).with_context(|| format!("cannot use {url}"))?,
    })
}

/// The stores' credentials only: inventory and verify need no admin or client token.
fn store_secrets(config: &Config) -> anyhow::Result<Secrets> {
    let mut stores_only = config.clone();
    stores_only.admin.enabled = false;
    stores_only.server.client_auth.enabled = false;
    stores_only.secrets().context("missing secret")
}

/// The tenant part of a namespace rule's side (`tenant` or `tenant/database`).
fn rule_tenant(side: &str) -> String {
    side.split('/').next().unwrap_or(side).to_owned()
}

/// The tenants to list on `store`: the ones asked for, renamed for the store, and those the
/// namespace rules name on its side.
fn store_tenants(config: &Config, store: BackendName, asked: &[String]) -> Vec<String> {
    let map = NamespaceMap::new(&config.namespaces);
    let mut tenants = Vec::new();
    for tenant in asked {
        tenants.push(map.to_backend(store, tenant, None).tenant);
        tenants.push(
            map.to_backend(store, tenant, Some("default_database"))
                .tenant,
        );
    }
    for rule in &config.namespaces {
        tenants.push(rule_tenant(match store {
            BackendName::Old => &rule.old,
            BackendName::New => &rule.new,
        }));
    }
    let mut seen = std::collections::HashSet::new();
    tenants.retain(|t| seen.insert(t.clone()));
    tenants
}

/// Compact JSON cut to `width` characters, `-` when absent.
fn short_json(value: Option<&Value>, width: usize) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(v) => {
            let text = v.to_string();
            if text.chars().count() > width {
                let cut: String = text.chars().take(width.saturating_sub(1)).collect();
                format!("{cut}…")
            } else {
                text
            }
        }
    }
}

/// The index part of a collection's configuration, in one short line (the JSON has it all).
fn configuration_summary(configuration: Option<&Value>) -> String {
    for index in ["hnsw", "spann"] {
        if let Some(Value::Object(params)) = configuration.and_then(|c| c.get(index)) {
            let mut line = index.to_owned();
            for key in ["space", "ef_construction", "ef_search", "max_neighbors"] {
                if let Some(value) = params.get(key).filter(|v| !v.is_null()) {
                    let value = value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned);
                    line.push_str(&format!(" {key}={value}"));
                }
            }
            return line;
        }
    }
    short_json(configuration, 60)
}

fn inventory_table(inventory: &Inventory) -> String {
    let mut rows = vec![[
        "TENANT".to_owned(),
        "DATABASE".to_owned(),
        "COLLECTION".to_owned(),
        "COUNT".to_owned(),
        "DIM".to_owned(),
        "METADATA".to_owned(),
        "CONFIGURATION".to_owned(),
    ]];
    let mut total = 0;
    for (tenant, database, c) in inventory.collections() {
        total += c.count;
        rows.push([
            tenant.to_owned(),
            database.to_owned(),
            c.name.clone(),
            c.count.to_string(),
            c.dimension.map_or("-".to_owned(), |d| d.to_string()),
            short_json(c.metadata.as_ref(), 40),
            configuration_summary(c.configuration.as_ref()),
        ]);
    }
    let mut out = format!("store {}\n", inventory.store);
    out.push_str(&table(&rows, &[3, 4]));
    let missing: Vec<&str> = inventory
        .tenants
        .iter()
        .filter(|t| !t.found)
        .map(|t| t.name.as_str())
        .collect();
    let collections = rows.len() - 1;
    out.push_str(&format!(
        "{collections} collections, {total} records in {} databases",
        inventory
            .tenants
            .iter()
            .map(|t| t.databases.len())
            .sum::<usize>()
    ));
    if !missing.is_empty() {
        out.push_str(&format!(
            "; tenants not on this store: {}",
            missing.join(", ")
        ));
    }
    out.push('\n');
    out
}

/// Left-aligned columns, right-aligned where `numeric` says, two spaces apart.
pub(crate) fn table<const N: usize>(rows: &[[String; N]], numeric: &[usize]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i > 0 {
                line.push_str("  ");
            }
            if numeric.contains(&i) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i + 1 < N {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// verify

pub async fn run_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let config = crate::load(&args.config)?;
    let backends = Arc::new(
        Backends::from_config(&config.backends, &store_secrets(&config)?)
            .context("the backends of the configuration")?,
    );
    // The proxy, when it runs and its token is set: it says which store is primary, its
    // journal tells when writes in flight have landed, and it carries out repairs.
    let admin = match AdminClient::from_config(&config) {
        Ok(admin) => match admin.status().await {
            Ok(status) => Some((Arc::new(admin), status)),
            Err(error) => {
                eprintln!("note: {error}");
                None
            }
        },
        Err(error) => {
            eprintln!("note: not asking the proxy: {error:#}");
            None
        }
    };
    let proxy_primary = admin.as_ref().map(|(_, status)| status.topology.primary);
    let source = match args.source.as_deref().and_then(parse_store) {
        Some(source) => source,
        None => proxy_primary.unwrap_or(config.routing.primary),
    };
    let target = source.other();
    if args.repair {
        anyhow::ensure!(
            admin.is_some(),
            "--repair needs the running proxy's admin API (the config's [server] admin_listen, and the token in {})",
            config.admin.token_env
        );
        if let Some(primary) = proxy_primary {
            anyhow::ensure!(
                primary == source,
                "--repair copies from the proxy's primary ({primary}), but --source is {source}"
            );
        }
    }
    let admin = admin.map(|(admin, _)| admin);

    let mut tenants = args.tenants.clone();
    for rule in &config.namespaces {
        let tenant = rule_tenant(&rule.old);
        if !tenants.contains(&tenant) {
            tenants.push(tenant);
        }
    }
    let options = VerifyOptions {
        tenants,
        collections: args.collections.clone(),
        sample: args.sample,
        k: args.k,
        min_recall: args.min_recall,
        max_gap: args.max_gap,
        max_drift: args.max_drift,
        batch_size: args.batch_size.max(1),
        ..VerifyOptions::default()
    };
    let mut verifier = Verifier::new(
        backends,
        NamespaceMap::new(&config.namespaces),
        source,
        options,
    );
    if let Some(admin) = &admin {
        let admin = admin.clone();
        verifier = verifier.with_settle(Arc::new(move || {
            let admin = admin.clone();
            Box::pin(async move {
                repair::wait_drained(&*admin, target, SETTLE_LIMIT).await;
            })
        }));
    }

    let report = verifier.run().await.context("verify")?;
    let unknown: Vec<&String> = args
        .collections
        .iter()
        .filter(|name| !report.collections.iter().any(|c| &c.name == *name))
        .collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = unknown.iter().map(|n| n.as_str()).collect();
        anyhow::bail!("no collection named {} on either store", names.join(", "));
    }
    if !args.repair || report.matches {
        record(admin.as_deref(), &args, &report).await;
        if args.json && args.repair {
            // With --repair the JSON always has the same shape; nothing needed repairing.
            let value =
                json!({"before": report, "repairs": [], "after": Value::Null, "matches": true});
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", verify_text(&report));
        }
        return Ok(exit(&report));
    }

    // --repair
    let admin = admin.context("no admin API")?;
    if !args.json {
        print!("{}", verify_text(&report));
        println!(
            "\nrepairing {target} from {source} through the proxy at {}",
            admin.url()
        );
    }
    let actions = repair::repair(&*admin, &report, args.delete_extra, REPAIR_LIMIT).await?;
    if !args.json {
        for action in &actions {
            println!("  {}", action.text());
        }
    }
    if !repair::wait_drained(&*admin, target, REPAIR_LIMIT).await {
        eprintln!("the proxy's journal toward {target} did not drain within {REPAIR_LIMIT:?}; verifying anyway");
    }
    let after = verifier.run().await.context("verify after the repair")?;
    record(Some(&*admin), &args, &after).await;
    if args.json {
        let value = json!({
            "before": report,
            "repairs": actions,
            "after": after,
            "matches": after.matches,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("\nafter the repair:");
        print!("{}", verify_text(&after));
    }
    Ok(exit(&after))
}

/// Records a verify of every collection with the proxy, where `ctl finalize` checks for it.
async fn record(admin: Option<&AdminClient>, args: &VerifyArgs, report: &VerifyReport) {
    let Some(admin) = admin else { return };
    if !args.collections.is_empty() {
        return;
    }
    let result = shift_control::api::VerifyResult::from(report);
    if let Err(error) = admin.record_verify(&result).await {
        eprintln!("note: the proxy did not record this verify: {error}");
    }
}

fn parse_store(name: &str) -> Option<BackendName> {
    match name {
        "old" => Some(BackendName::Old),
        "new" => Some(BackendName::New),
        _ => None,
    }
}

fn exit(report: &VerifyReport) -> ExitCode {
    if report.matches {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Ids shown per divergence in the text report.
const IDS_SHOWN: usize = 5;

/// The report for people: a row per collection, then each divergence.
fn verify_text(report: &VerifyReport) -> String {
    let mut rows = vec![[
        "COLLECTION".to_owned(),
        format!("COUNT {}", report.source),
        format!("COUNT {}", report.target),
        "MISSING".to_owned(),
        "EXTRA".to_owned(),
        "CHANGED".to_owned(),
        "RECALL".to_owned(),
        "DRIFT".to_owned(),
        "VERDICT".to_owned(),
    ]];
    let count = |c: Option<u64>| c.map_or("-".to_owned(), |n| n.to_string());
    for c in &report.collections {
        let name = if c.tenant == "default_tenant" && c.database == "default_database" {
            c.name.clone()
        } else {
            format!("{}/{}/{}", c.tenant, c.database, c.name)
        };
        let (recall, drift) = match &c.query {
            Some(q) if q.error.is_some() => ("error".to_owned(), "-".to_owned()),
            Some(q) if q.drift == 0.0 => (format!("{:.3}", q.recall), "0".to_owned()),
            Some(q) => (format!("{:.3}", q.recall), format!("{:.1e}", q.drift)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        rows.push([
            name,
            count(c.source_count),
            count(c.target_count),
            c.missing.to_string(),
            c.extra.to_string(),
            c.changed.to_string(),
            recall,
            drift,
            c.verdict.as_str().to_owned(),
        ]);
    }
    let mut out = format!(
        "verify: {} (source) against {} (target), {} collections in {:.1}s\n",
        report.source,
        report.target,
        report.collections.len(),
        report.elapsed_seconds
    );
    out.push_str(&table(&rows, &[1, 2, 3, 4, 5, 6, 7]));
    if report.rechecked > 0 {
        out.push_str(&format!(
            "{} diverged ids re-checked; {} agreed on a re-check (writes in flight)\n",
            report.rechecked, report.settled_on_recheck
        ));
    }
    if report.matches {
        out.push_str("the stores match\n");
        return out;
    }
    out.push_str("\ndivergences:\n");
    for d in &report.divergences {
        let what = match d.kind {
            DivergenceKind::MissingCollection | DivergenceKind::ExtraCollection => {
                format!("{} records", d.count)
            }
            DivergenceKind::QueryRecall | DivergenceKind::QueryDrift => {
                d.detail.clone().unwrap_or_default()
            }
            _ => {
                let shown: Vec<&str> = d.ids.iter().take(IDS_SHOWN).map(String::as_str).collect();
                let more = d.ids.len().saturating_sub(IDS_SHOWN);
                format!(
                    "{} records: {}{}",
                    d.count,
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                )
            }
        };
        out.push_str(&format!(
            "  {:<18}  {:<24}  {what}\n",
            d.kind.as_str(),
            d.collection
        ));
    }
    let diverged = report
        .collections
        .iter()
        .filter(|c| c.verdict != Verdict::Match)
        .count();
    out.push_str(&format!(
        "the stores diverge: {} divergences in {diverged} collections\n",
        report.divergences.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let rows = vec![
            ["NAME".to_owned(), "N".to_owned(), "X".to_owned()],
            ["a".to_owned(), "100".to_owned(), String::new()],
        ];
        assert_eq!(table(&rows, &[1]), "NAME    N  X\na     100\n");
        assert_eq!(short_json(None, 5), "-");
        assert_eq!(
            configuration_summary(Some(
                &json!({"hnsw": {"space": "l2", "ef_construction": 100}, "spann": null})
            )),
            "hnsw space=l2 ef_construction=100"
        );
        assert_eq!(short_json(Some(&json!({"a": "bcdef"})), 8), "{\"a\":\"b…");
    }

    #[test]
    fn tenants_follow_the_namespace_rules() {
        let config = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\n[backends.old]\nurl = \"http://127.0.0.1:3\"\n[backends.new]\nurl = \"http://127.0.0.1:4\"\n[[namespaces]]\nold = \"default_tenant\"\nnew = \"acme\"\n[[namespaces]]\nold = \"t2/db\"\nnew = \"t3/db2\"\n",
        )
        .unwrap();
        let asked = vec!["default_tenant".to_owned()];
        assert_eq!(
            store_tenants(&config, BackendName::Old, &asked),
            vec!["default_tenant", "t2"]
        );
        assert_eq!(
            store_tenants(&config, BackendName::New, &asked),
            vec!["acme", "t3"]
        );
    }
}
