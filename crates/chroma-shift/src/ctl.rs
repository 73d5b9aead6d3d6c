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
    /// List dead letters: mirrored writes a store refused.
    DeadLetters {
        #[arg(long, default_value_t = 50)]
        limit: usize,
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
    /// Go even though the current primary is down, dead letters exist or the lag is above the
    /// bound; what only a dead primary can settle waits for it in its own queue.
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
        CtlCommand::DeadLetters { limit } => {
            call(
                Method::GET,
                format!("/admin/dead-letters?limit={limit}"),
                None,
            )
            .await?
        }
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
            CtlCommand::DeadLetters { .. } => print_dead_letters(&answer),
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
    for note in report["notes"].as_array().into_iter().flatten() {
        println!("note: {}", text(note));
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
