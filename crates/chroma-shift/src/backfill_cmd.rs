//! `chroma-shift backfill`: starts a backfill inside the running proxy (so it shares the
//! per-record order locks with live traffic) and follows it with a progress bar until it ends.
//! Ctrl-C cancels it; its checkpoints stay, and the next run resumes there.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use http::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::admin_client::AdminClient;

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The proxy's configuration (its admin listener and admin token variable).
    #[arg(long, short, env = "CHROMA_SHIFT_CONFIG")]
    config: std::path::PathBuf,
    /// The tenant (the client's name); default_tenant when absent.
    #[arg(long)]
    tenant: Option<String>,
    /// One database; every database of the tenant when absent.
    #[arg(long)]
    database: Option<String>,
    /// Only this collection (repeatable); all when absent.
    #[arg(long = "collection")]
    collections: Vec<String>,
    /// Records per batch (the stores' max_batch_size at most).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Batches in flight at once.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Records per second at most.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Ignore checkpoints and copy everything again.
    #[arg(long)]
    restart: bool,
    /// No progress bar; a line every few seconds instead (for logs).
    #[arg(long)]
    no_progress: bool,
}

pub async fn run(args: BackfillArgs) -> anyhow::Result<ExitCode> {
    let config = crate::load(&args.config)?;
    let admin = AdminClient::from_config(&config)?;
    let request = json!({
        "tenant": args.tenant,
        "database": args.database,
        "collections": args.collections,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "rate_limit": args.rate_limit,
        "restart": args.restart,
    });
    let (status, answer) = admin
        .call(Method::POST, "/admin/backfill", Some(&request))
        .await?;
    match status {
        StatusCode::ACCEPTED => {}
        StatusCode::CONFLICT => eprintln!("a backfill is already running; following it"),
        _ => anyhow::bail!(
            "the proxy refused the backfill ({status}): {}",
            answer["message"].as_str().unwrap_or("no message")
        ),
    }

    let bar = if args.no_progress {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} records ({per_sec}, eta {eta}) {msg}",
            )?
            .progress_chars("=> "),
        );
        bar
    };
    let mut last_line = std::time::Instant::now();
    let progress = loop {
        let progress = tokio::select! {
            answer = admin.call(Method::GET, "/admin/backfill", None) => answer?.1,
            _ = tokio::signal::ctrl_c() => {
                admin.call(Method::POST, "/admin/backfill/cancel", None).await?;
                bar.abandon_with_message("cancelled; the next run resumes from the checkpoint");
                return Ok(ExitCode::from(130));
            }
        };
        let total = progress["total_records"].as_u64().unwrap_or(0);
        let done = progress["done_records"].as_u64().unwrap_or(0);
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(current_collection(&progress));
        if args.no_progress && last_line.elapsed() > Duration::from_secs(5) {
            last_line = std::time::Instant::now();
            println!(
                "backfill: {done}/{total} records, {:.0}/s, eta {}",
                progress["records_per_second"].as_f64().unwrap_or(0.0),
                progress["eta_seconds"]
                    .as_f64()
                    .map_or("-".to_owned(), |s| format!("{s:.0}s"))
            );
        }
        if progress["state"] != "running" {
            break progress;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    bar.finish_and_clear();
    let done = progress["done_records"].as_u64().unwrap_or(0);
    let seconds = progress["elapsed_seconds"].as_f64().unwrap_or(0.0);
    for collection in progress["collections"].as_array().into_iter().flatten() {
        println!(
            "  {:<32} {:>10} records{}",
            collection["name"].as_str().unwrap_or("?"),
            collection["done"],
            match collection["resumed_from_checkpoint"].as_u64() {
                Some(n) if n > 0 => format!(" ({n} covered by an earlier run's checkpoint)"),
                _ => String::new(),
            }
        );
    }
    match progress["state"].as_str() {
        Some("succeeded") => {
            println!(
                "backfill succeeded: {done} records in {seconds:.1}s ({:.0} records/s)",
                progress["records_per_second"].as_f64().unwrap_or(0.0)
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(state) => {
            eprintln!(
                "backfill {state}: {}",
                progress["error"].as_str().unwrap_or("see the proxy's log")
            );
            Ok(ExitCode::from(1))
        }
        None => anyhow::bail!("unexpected answer from the proxy: {progress}"),
    }
}

fn current_collection(progress: &Value) -> String {
    progress["collections"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["finished"] != true))
        .and_then(|c| c["name"].as_str())
        .unwrap_or("")
        .to_owned()
}
