//! `chroma-shift ctl`: the admin API from the command line. Readable output by default,
//! `--json` for scripts; a refused switch exits 3, an unreachable or refusing API exits 1.

use anyhow::Context;
use clap::{Args, Subcommand};
use http::Method;
use serde_json::{json, Value};
use std::process::ExitCode;

use crate::admin_client::AdminClient;

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
    /// Print the API's JSON answer instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Topology, backend health, journal lag, dead letters.
    Status,
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
        #[arg(value_parser = ["journaled", "sync"])]
        mode: String,
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
    #[arg(long)]
    timeout: Option<String>,
    /// Rollback only: go even though the current primary is down.
    #[arg(long)]
    force: bool,
}

impl SwitchArgs {
    fn body(&self) -> Value {
        let mut body = json!({"dry_run": self.dry_run, "force": self.force});
        if let Some(lag) = self.max_lag {
            body["max_lag"] = json!(lag);
        }
        if let Some(timeout) = &self.timeout {
            body["timeout"] = json!(timeout);
        }
        body
    }
}

pub async fn run(ctl: Ctl) -> anyhow::Result<ExitCode> {
    let token = ctl
        .token
        .clone()
        .filter(|t| !t.trim().is_empty())
        .context("no admin token: set CHROMA_SHIFT_ADMIN_TOKEN (or --token)")?;
    let admin = AdminClient::new(ctl.admin_url.clone(), token)?;
    let call = |method: Method, path: String, body: Option<Value>| {
        let admin = &admin;
        async move { admin.call(method, &path, body.as_ref()).await }
    };
    let (status, answer) = match &ctl.command {
        CtlCommand::Status => call(Method::GET, "/admin/status".into(), None).await?,
        CtlCommand::Cutover(args) => {
            call(Method::POST, "/admin/cutover".into(), Some(args.body())).await?
        }
        CtlCommand::Rollback(args) => {
            call(Method::POST, "/admin/rollback".into(), Some(args.body())).await?
        }
        CtlCommand::Pause => call(Method::POST, "/admin/pause".into(), None).await?,
        CtlCommand::Resume => call(Method::POST, "/admin/resume".into(), None).await?,
        CtlCommand::WriteMode { mode } => {
            call(
                Method::POST,
                "/admin/write-mode".into(),
                Some(json!({"mode": mode})),
            )
            .await?
        }
        CtlCommand::ReadPolicy { canary, shadow } => {
            let body = json!({"canary_percent": canary, "shadow_percent": shadow});
            call(Method::POST, "/admin/read-policy".into(), Some(body)).await?
        }
        CtlCommand::DeadLetters(args) => match &args.action {
            None => {
                call(
                    Method::GET,
                    format!("/admin/dead-letters?limit={}", args.limit),
                    None,
                )
                .await?
            }
            Some(DeadLetterAction::Retry { seq: Some(seq), .. }) => {
                call(
                    Method::POST,
                    format!("/admin/dead-letters/{seq}/retry"),
                    None,
                )
                .await?
            }
            Some(DeadLetterAction::Retry { seq: None, .. }) => retry_all(&admin).await?,
            Some(DeadLetterAction::Drop { seq }) => {
                call(
                    Method::POST,
                    format!("/admin/dead-letters/{seq}/drop"),
                    None,
                )
                .await?
            }
        },
    };
    if ctl.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    if status == http::StatusCode::UNAUTHORIZED
        || (!status.is_success() && status != http::StatusCode::CONFLICT)
    {
        if !ctl.json {
            eprintln!(
                "chroma-shift ctl: the admin API answered {status}: {}",
                answer["message"].as_str().unwrap_or("(no message)")
            );
        }
        return Ok(ExitCode::from(1));
    }
    if !ctl.json {
        match &ctl.command {
            CtlCommand::Status => print_status(&answer),
            CtlCommand::Cutover(_) | CtlCommand::Rollback(_) => print_switch(&answer),
            CtlCommand::DeadLetters(args) => match &args.action {
                None => print_dead_letters(&answer),
                Some(DeadLetterAction::Retry { .. }) => print_retried(&answer),
                Some(DeadLetterAction::Drop { .. }) => {
                    let dropped = &answer["dropped"];
                    println!(
                        "dropped #{} → {} collection {}: {}",
                        text(&dropped["seq"]),
                        text(&dropped["target"]),
                        text(&dropped["collection"]),
                        text(&dropped["reason"])
                    );
                }
            },
            _ => print_topology(&answer["topology"]),
        }
    }
    Ok(if answer["refused"].is_string() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn print_topology(topology: &Value) {
    println!(
        "primary      {} (epoch {}); {} writes; reads: canary {}%, shadow {}%{}",
        text(&topology["primary"]),
        text(&topology["epoch"]),
        text(
            &topology["write_mode"]
                .as_str()
                .map_or(topology["mode"].clone(), Value::from)
        ),
        text(
            &topology["read_policy"]
                .get("canary_percent")
                .or(topology["reads"].get("canary_percent"))
                .cloned()
                .unwrap_or(Value::Null)
        ),
        text(
            &topology["read_policy"]
                .get("shadow_percent")
                .or(topology["reads"].get("shadow_percent"))
                .cloned()
                .unwrap_or(Value::Null)
        ),
        if topology["paused"] == true {
            "; WRITES PAUSED"
        } else {
            ""
        }
    );
}

fn print_status(status: &Value) {
    print_topology(&status["topology"]);
    for name in ["old", "new"] {
        let health = &status["backends"][name];
        println!(
            "{name:<12} {}{}",
            if health["up"] == true { "up" } else { "DOWN" },
            match health["error"].as_str() {
                Some(error) => format!(" ({error})"),
                None => format!(" ({:.1} ms)", health["latency_ms"].as_f64().unwrap_or(0.0)),
            }
        );
    }
    for target in ["new", "old"] {
        let journal = &status["journal"][target];
        println!(
            "journal→{target:<4} {} entries{}",
            text(&journal["entries"]),
            journal["oldest_age_s"]
                .as_f64()
                .map_or(String::new(), |age| format!(", oldest {age:.1}s"))
        );
        if let Some(collections) = journal["collections"].as_object() {
            for (id, lag) in collections {
                println!(
                    "  {:<38} {:>8} entries  {}",
                    id,
                    text(&lag["entries"]),
                    lag["name"].as_str().unwrap_or("")
                );
            }
        }
    }
    println!("writes held  {}", text(&status["writes_held"]));
    println!("dead letters {}", text(&status["dead_letters"]["count"]));
    for section in ["shadow", "backfill"] {
        if !status[section].is_null() {
            println!("{section:<12} {}", status[section]);
        }
    }
}

fn print_switch(report: &Value) {
    for check in report["checks"].as_array().into_iter().flatten() {
        println!(
            "[{}] {:<16} {}",
            if check["passed"] == true { "ok" } else { "!!" },
            text(&check["name"]),
            text(&check["detail"])
        );
    }
    if report["dry_run"] == true {
        println!("plan:");
        for (i, step) in report["plan"].as_array().into_iter().flatten().enumerate() {
            println!("  {}. {}", i + 1, text(step));
        }
    }
    match (&report["refused"], report["switched"] == true) {
        (Value::String(reason), _) => println!("refused: {reason}"),
        (_, true) => println!(
            "switched: {} is primary (epoch {}); writes held {:.0} ms; {} journal entries drained",
            text(&report["to"]),
            text(&report["epoch"]),
            report["writes_held_ms"].as_f64().unwrap_or(0.0),
            text(&report["drained_entries"])
        ),
        _ => println!("dry run: nothing changed"),
    }
}

/// Re-drives every dead letter, a page at a time, oldest first. Stops at the first refusal
/// and answers with it, listing what was re-driven before.
async fn retry_all(admin: &AdminClient) -> anyhow::Result<(http::StatusCode, Value)> {
    let mut retried = Vec::new();
    let mut after: Option<u64> = None;
    // A re-driven write gets a seq above every letter that existed then; if it is parked again
    // it comes back as a letter with that seq. Stopping there keeps this from looping on it.
    let mut ceiling = u64::MAX;
    loop {
        let page = match after {
            None => "/admin/dead-letters?limit=1000".to_owned(),
            Some(after) => format!("/admin/dead-letters?limit=1000&after={after}"),
        };
        let (status, answer) = admin.call(Method::GET, &page, None).await?;
        if !status.is_success() {
            return Ok((status, answer));
        }
        let seqs: Vec<u64> = answer["dead_letters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|letter| letter["seq"].as_u64())
            .collect();
        let Some(&last) = seqs.last() else {
            return Ok((http::StatusCode::OK, json!({"retried": retried})));
        };
        for seq in seqs {
            if seq >= ceiling {
                return Ok((http::StatusCode::OK, json!({"retried": retried})));
            }
            let path = format!("/admin/dead-letters/{seq}/retry");
            let (status, answer) = admin.call(Method::POST, &path, None).await?;
            // One re-driven meanwhile by someone else is not a failure.
            if status == http::StatusCode::NOT_FOUND {
                continue;
            }
            if !status.is_success() {
                let mut answer = answer;
                answer["retried"] = json!(retried);
                return Ok((status, answer));
            }
            if let Some(requeued) = answer["journal_seq"].as_u64() {
                ceiling = ceiling.min(requeued);
            }
            retried.push(answer);
        }
        after = Some(last);
    }
}

fn print_retried(answer: &Value) {
    let retried: Vec<Value> = match answer["retried"].as_array() {
        Some(all) => all.clone(),
        None => vec![answer.clone()],
    };
    if retried.is_empty() {
        println!("no dead letters to retry");
    }
    for one in retried {
        println!(
            "retried #{} → {} collection {}: back in the journal as #{}",
            text(&one["retried"]["seq"]),
            text(&one["retried"]["target"]),
            text(&one["retried"]["collection"]),
            text(&one["journal_seq"])
        );
    }
}

fn print_dead_letters(answer: &Value) {
    let letters = answer["dead_letters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if letters.is_empty() {
        println!("no dead letters");
    }
    for letter in letters {
        println!(
            "#{} → {} collection {}: {}",
            text(&letter["seq"]),
            text(&letter["target"]),
            text(&letter["collection"]),
            text(&letter["reason"])
        );
    }
}
