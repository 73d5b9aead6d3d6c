//! `chroma-shift ctl`: the admin API from the command line, through the typed client
//! ([`shift_control::client`]). Readable output by default, `--json` for scripts (the API's
//! answer); a refused switch exits 3, an API that refuses the call exits 1, one that cannot be
//! reached exits 2.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::Value;
use shift_config::{MirrorMode, Secret};
use shift_control::api::{
    AuditEntries, AuditEntry, DeadLetter, DeadLetterPage, DeadLetters, Dropped, FinalizeStatus,
    ReadPolicy, Retried, Status, SwitchReport, SwitchRequest, Topology, TopologyChanged,
    TopologyStatus,
};
use shift_control::{AdminClient, AdminError, AdminTls};

mod status_view;
mod watch;

use status_view::{audit_text, finalize_text, status_text, topology_line};

#[derive(Debug, Args)]
pub struct Ctl {
    /// The admin listener of the running proxy.
    #[arg(
        long,
        env = "CHROMA_SHIFT_ADMIN_URL",
        default_value = "http://127.0.0.1:9100",
        global = true
    )]
    admin_url: url::Url,
    /// The admin token (better from the environment than on the command line).
    #[arg(
        long,
        env = "CHROMA_SHIFT_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// For an https:// admin URL: the PEM CA certificate(s) that signed the admin listener's
    /// certificate ([admin.tls] cert), trusted beside the system's roots.
    #[arg(long, env = shift_control::client::ADMIN_CA_ENV, global = true)]
    ca_file: Option<PathBuf>,
    /// For an admin listener that asks for client certificates ([admin.tls] client_ca): the
    /// PEM certificate to present (with --client-key).
    #[arg(long, env = shift_control::client::ADMIN_CLIENT_CERT_ENV, global = true, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The private key of --client-cert, PEM.
    #[arg(long, env = shift_control::client::ADMIN_CLIENT_KEY_ENV, global = true, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Topology, backend health, journal lag, dead letters, shadow reads, backfill, finalize.
    Status(watch::WatchArgs),
    /// End the migration after a cutover: checks (no lag, no dead letters, a recent passing
    /// verify), then mirroring to the old store stops once `[finalize] retention` has passed.
    Finalize(FinalizeArgs),
    /// Make the new store primary.
    Cutover(SwitchArgs),
    /// Make the old store primary again.
    Rollback(SwitchArgs),
    /// Hold every write at the gate (reads go on).
    Pause,
    /// Let held writes go.
    Resume,
    /// Set the write mode.
    WriteMode {
        #[arg(value_parser = parse_mode)]
        mode: MirrorMode,
    },
    /// Set the canary and shadow shares of reads, in percent.
    ReadPolicy {
        #[arg(long, default_value_t = 0.0)]
        canary: f64,
        #[arg(long, default_value_t = 0.0)]
        shadow: f64,
    },
    /// List dead letters (mirrored writes a store refused); `retry` or `drop` them.
    DeadLetters(DeadLettersArgs),
    /// The newest admin actions, newest first: when, who (the admin token's name), what, how
    /// it ended.
    Audit {
        /// How many to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Debug, Args)]
struct FinalizeArgs {
    /// Undo a pending finalize: mirroring to the old store goes on.
    #[arg(long, conflicts_with = "status")]
    undo: bool,
    /// Only show where the last finalize stands and the checks now.
    #[arg(long)]
    status: bool,
}

#[derive(Debug, Args)]
struct DeadLettersArgs {
    /// How many to list.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[command(subcommand)]
    action: Option<DeadLetterAction>,
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// Put dead letters back at the end of their target's journal, for the replay to try again.
    Retry {
        /// The dead letter's seq (from the list).
        #[arg(required_unless_present = "all")]
        seq: Option<u64>,
        /// Every dead letter, oldest first.
        #[arg(long, conflicts_with = "seq")]
        all: bool,
    },
    /// Delete a dead letter for good (its write never reaches its target); logged by the proxy.
    Drop {
        /// The dead letter's seq (from the list).
        seq: u64,
    },
}

#[derive(Debug, Args)]
struct SwitchArgs {
    /// Print the plan and the checks; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Refuse when more journal entries than this wait for the target.
    #[arg(long)]
    max_lag: Option<u64>,
    /// How long writes may be held while the journal drains, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Go even though the current primary is down, dead letters exist or the lag is above the
    /// bound; what only a dead primary can settle waits for it in its own queue.
    #[arg(long)]
    force: bool,
}

impl SwitchArgs {
    fn request(&self) -> SwitchRequest {
        SwitchRequest {
            dry_run: self.dry_run,
            max_lag: self.max_lag,
            timeout: self.timeout,
            force: self.force,
        }
    }
}

fn parse_mode(text: &str) -> Result<MirrorMode, String> {
    match text {
        "journaled" => Ok(MirrorMode::Journaled),
        "sync" => Ok(MirrorMode::Sync),
        _ => Err(format!("{text:?} is not a write mode: journaled or sync")),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// What the admin API answered a command.
enum Answer {
    Status(Box<Status>),
    Switch(Box<SwitchReport>),
    Topology(Topology),
    DeadLetters(Vec<DeadLetter>),
    Retried(Retried),
    /// `retry --all`: what was re-driven, and the refusal that stopped it, if one did.
    RetriedAll(Vec<Retried>, Option<AdminError>),
    Dropped(Dropped),
    Audit(Vec<AuditEntry>),
    Finalize(Box<FinalizeStatus>),
}

/// The JSON of `retry --all`.
#[derive(Serialize)]
struct RetriedAll<'a> {
    retried: &'a [Retried],
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    error: Option<&'a shift_control::api::ApiError>,
}

impl Answer {
    /// The API's answer, as JSON.
    fn json(&self) -> serde_json::Result<Value> {
        match self {
            Answer::Status(status) => serde_json::to_value(status),
            Answer::Switch(report) => serde_json::to_value(report),
            Answer::Topology(topology) => serde_json::to_value(TopologyChanged {
                topology: topology.clone(),
            }),
            Answer::DeadLetters(letters) => serde_json::to_value(DeadLetters {
                dead_letters: letters.clone(),
            }),
            Answer::Retried(retried) => serde_json::to_value(retried),
            Answer::RetriedAll(retried, error) => serde_json::to_value(RetriedAll {
                retried,
                error: error.as_ref().and_then(AdminError::api_error),
            }),
            Answer::Dropped(dropped) => serde_json::to_value(dropped),
            Answer::Audit(entries) => serde_json::to_value(AuditEntries {
                entries: entries.clone(),
            }),
            Answer::Finalize(status) => serde_json::to_value(status),
        }
    }

    fn print(&self) {
        match self {
            Answer::Status(status) => print!("{}", status_text(status)),
            Answer::Switch(report) => print_switch(report),
            Answer::Topology(topology) => {
                print!("{}", topology_line(&TopologyStatus::from(topology)))
            }
            Answer::DeadLetters(letters) => print_dead_letters(letters),
            Answer::Retried(retried) => print_retried(std::slice::from_ref(retried)),
            Answer::RetriedAll(retried, _) => print_retried(retried),
            Answer::Dropped(Dropped { dropped }) => println!(
                "dropped #{} → {} collection {}: {}",
                dropped.seq, dropped.target, dropped.collection, dropped.reason
            ),
            Answer::Audit(entries) => print!("{}", audit_text(entries)),
            Answer::Finalize(status) => print!("{}", finalize_text(status)),
        }
    }
}

async fn call(admin: &AdminClient, command: &CtlCommand) -> Result<Answer, AdminError> {
    Ok(match command {
        CtlCommand::Status(_) => Answer::Status(Box::new(admin.status().await?)),
        CtlCommand::Finalize(args) if args.status => {
            Answer::Finalize(Box::new(admin.finalize_status().await?))
        }
        CtlCommand::Finalize(args) if args.undo => {
            Answer::Finalize(Box::new(admin.undo_finalize().await?))
        }
        CtlCommand::Finalize(_) => Answer::Finalize(Box::new(admin.finalize().await?)),
        CtlCommand::Cutover(args) => {
            Answer::Switch(Box::new(admin.cutover(&args.request()).await?))
        }
        CtlCommand::Rollback(args) => {
            Answer::Switch(Box::new(admin.rollback(&args.request()).await?))
        }
        CtlCommand::Pause => Answer::Topology(admin.pause().await?),
        CtlCommand::Resume => Answer::Topology(admin.resume().await?),
        CtlCommand::WriteMode { mode } => Answer::Topology(admin.set_write_mode(*mode).await?),
        CtlCommand::ReadPolicy { canary, shadow } => Answer::Topology(
            admin
                .set_read_policy(ReadPolicy {
                    canary_percent: *canary,
                    shadow_percent: *shadow,
                })
                .await?,
        ),
        CtlCommand::DeadLetters(args) => match &args.action {
            None => Answer::DeadLetters(
                admin
                    .dead_letters(DeadLetterPage {
                        after: None,
                        limit: Some(args.limit),
                    })
                    .await?,
            ),
            Some(DeadLetterAction::Retry { seq: Some(seq), .. }) => {
                Answer::Retried(admin.retry_dead_letter(*seq).await?)
            }
            Some(DeadLetterAction::Retry { seq: None, .. }) => retry_all(admin).await?,
            Some(DeadLetterAction::Drop { seq }) => {
                Answer::Dropped(admin.drop_dead_letter(*seq).await?)
            }
        },
        CtlCommand::Audit { limit } => Answer::Audit(admin.audit(Some(*limit)).await?),
    })
}

pub async fn run(ctl: Ctl) -> anyhow::Result<ExitCode> {
    let token = ctl
        .token
        .clone()
        .filter(|t| !t.trim().is_empty())
        .context("no admin token: set CHROMA_SHIFT_ADMIN_TOKEN (or --token)")?;
    let tls = AdminTls::new(
        ctl.ca_file.clone(),
        ctl.client_cert.clone(),
        ctl.client_key.clone(),
    )?;
    let admin = AdminClient::with_tls(ctl.admin_url.clone(), Secret::new(token), &tls)?;
    if let CtlCommand::Status(args) = &ctl.command {
        if let Some(every) = args.watch {
            return watch::run(&admin, every, args.count, ctl.json).await;
        }
    }
    let answer = match call(&admin, &ctl.command).await {
        Ok(answer) => answer,
        // The API refused the call: its error, exit 1.
        Err(error @ (AdminError::Api { .. } | AdminError::Unexpected { .. })) => {
            match error.api_error() {
                Some(api) if ctl.json => println!("{}", serde_json::to_string_pretty(api)?),
                _ => eprintln!("chroma-shift ctl: {error}"),
            }
            return Ok(ExitCode::from(1));
        }
        Err(error) => return Err(error.into()),
    };
    if ctl.json {
        println!("{}", serde_json::to_string_pretty(&answer.json()?)?);
    } else {
        answer.print();
    }
    Ok(match &answer {
        Answer::Switch(report) if report.refused.is_some() => ExitCode::from(3),
        Answer::RetriedAll(_, Some(error)) => {
            if !ctl.json {
                eprintln!("chroma-shift ctl: {error}");
            }
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    })
}

fn print_switch(report: &SwitchReport) {
    for check in &report.checks {
        println!(
            "[{}] {:<16} {}",
            if check.passed { "ok" } else { "!!" },
            check.name,
            check.detail
        );
    }
    if report.dry_run {
        println!("plan:");
        for (i, step) in report.plan.iter().enumerate() {
            println!("  {}. {}", i + 1, step);
        }
    }
    if let Some(caught) = &report.catch_up {
        println!(
            "catch-up: {:.0} ms with writes flowing, {} -> {} journal entries (bound {}){}",
            caught.ms,
            caught.lag_before,
            caught.lag_after,
            caught.bound,
            if caught.caught_up { "" } else { ", timed out" }
        );
    }
    match (&report.refused, report.switched) {
        (Some(reason), _) => println!("refused: {reason}"),
        (None, true) => println!(
            "switched: {} is primary (epoch {}); writes held {:.0} ms; {} journal entries drained",
            report.to, report.epoch, report.writes_held_ms, report.drained_entries
        ),
        _ => println!("dry run: nothing changed"),
    }
    if report.hold.reopened_ms.is_some() {
        println!(
            "hold (ms since the gate began to close): {}",
            report.hold.summary()
        );
    }
    for note in &report.notes {
        println!("note: {note}");
    }
}

/// Re-drives every dead letter, a page at a time, oldest first. Stops at the first refusal
/// and answers with it, listing what was re-driven before.
async fn retry_all(admin: &AdminClient) -> Result<Answer, AdminError> {
    let mut retried = Vec::new();
    let mut after: Option<u64> = None;
    // A re-driven write gets a seq above every letter that existed then; if it is parked again
    // it comes back as a letter with that seq. Stopping there keeps this from looping on it.
    let mut ceiling = u64::MAX;
    loop {
        let page = admin
            .dead_letters(DeadLetterPage {
                after,
                limit: Some(1000),
            })
            .await?;
        let Some(last) = page.last().map(|letter| letter.seq) else {
            return Ok(Answer::RetriedAll(retried, None));
        };
        for letter in page {
            if letter.seq >= ceiling {
                return Ok(Answer::RetriedAll(retried, None));
            }
            match admin.retry_dead_letter(letter.seq).await {
                Ok(answer) => {
                    ceiling = ceiling.min(answer.journal_seq);
                    retried.push(answer);
                }
                // One re-driven meanwhile by someone else is not a failure.
                Err(error) if error.status() == Some(http::StatusCode::NOT_FOUND) => {}
                Err(error @ AdminError::Api { .. }) => {
                    return Ok(Answer::RetriedAll(retried, Some(error)))
                }
                Err(error) => return Err(error),
            }
        }
        after = Some(last);
    }
}

fn print_retried(retried: &[Retried]) {
    print_lines(retried, "no dead letters to retry", |one| {
        let letter = &one.retried;
        format!(
            "retried #{} → {} collection {}: back in the journal as #{}",
            letter.seq, letter.target, letter.collection, one.journal_seq
        )
    });
}

fn print_dead_letters(letters: &[DeadLetter]) {
    print_lines(letters, "no dead letters", |letter| {
        format!(
            "#{} → {} collection {}: {}",
            letter.seq, letter.target, letter.collection, letter.reason
        )
    });
}

/// One line per item, or `none` when there are none.
fn print_lines<T>(items: &[T], none: &str, line: impl Fn(&T) -> String) {
    if items.is_empty() {
        println!("{none}");
    }
    for item in items {
        println!("{}", line(item));
    }
}
