//! `chroma-shift backfill`: starts a backfill inside the running proxy (so it shares the
//! per-record order locks with live traffic) and follows it with a progress bar until it ends.
//! Ctrl-C cancels it; its checkpoints stay, and the next run resumes there.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use http::StatusCode;
use indicatif::{ProgressBar, ProgressStyle};
use shift_control::api::{BackfillProgress, BackfillRequest, BackfillState};
use shift_control::AdminClient;

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
    let request = BackfillRequest {
        tenant: args.tenant,
        database: args.database,
        collections: args.collections,
        batch_size: args.batch_size,
        concurrency: args.concurrency,
        rate_limit: args.rate_limit,
        restart: args.restart,
    };
    match admin.start_backfill(&request).await {
        Ok(_) => {}
        Err(error) if error.status() == Some(StatusCode::CONFLICT) => {
            eprintln!("a backfill is already running; following it")
        }
        Err(error) => anyhow::bail!("the proxy refused the backfill: {error}"),
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
            answer = admin.backfill_progress() => answer?,
            _ = tokio::signal::ctrl_c() => {
                admin.cancel_backfill().await?;
                bar.abandon_with_message("cancelled; the next run resumes from the checkpoint");
                return Ok(ExitCode::from(130));
            }
        };
        let (total, done) = (progress.total_records, progress.done_records);
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(current_collection(&progress).to_owned());
        if args.no_progress && last_line.elapsed() > Duration::from_secs(5) {
            last_line = std::time::Instant::now();
            println!(
                "backfill: {done}/{total} records, {:.0}/s, eta {}",
                progress.records_per_second,
                progress
                    .eta_seconds
                    .map_or("-".to_owned(), |s| format!("{s:.0}s"))
            );
        }
        if progress.state != BackfillState::Running {
            break progress;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    bar.finish_and_clear();
    for collection in &progress.collections {
        println!(
            "  {:<32} {:>10} records{}",
            collection.name,
            collection.done,
            match collection.resumed_from_checkpoint {
                0 => String::new(),
                n => format!(" ({n} covered by an earlier run's checkpoint)"),
            }
        );
    }
    if progress.state == BackfillState::Succeeded {
        println!(
            "backfill succeeded: {} records in {:.1}s ({:.0} records/s)",
            progress.done_records, progress.elapsed_seconds, progress.records_per_second
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "backfill {}: {}",
            shift_migrate::repair::state_name(progress.state),
            progress.error.as_deref().unwrap_or("see the proxy's log")
        );
        Ok(ExitCode::from(1))
    }
}

/// The collection being copied now: the first one not finished.
fn current_collection(progress: &BackfillProgress) -> &str {
    progress
        .collections
        .iter()
        .find(|c| !c.finished)
        .map_or("", |c| c.name.as_str())
}
