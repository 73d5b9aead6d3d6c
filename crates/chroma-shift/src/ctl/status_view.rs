//! `chroma-shift ctl status` for people: every section as aligned key/values, a table per
//! collection where a section has them. Rendered to a string, so `--watch` can redraw it whole.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;
use shift_config::{BackendName, MirrorMode};
use shift_control::api::{
    AuditEntry, BackfillProgress, FinalizePhase, FinalizeStatus, Status, TopologyStatus,
};
use shift_control::finalize::rfc3339;

use crate::tools::table;

/// Width of the key column.
const KEY: usize = 12;

/// The whole status.
pub(crate) fn status_text(status: &Status) -> String {
    let mut out = topology_line(&status.topology);
    for name in [BackendName::Old, BackendName::New] {
        let health = status.backends.get(name);
        let _ = writeln!(
            out,
            "{:<KEY$} {}{}",
            name.as_str(),
            if health.up { "up" } else { "DOWN" },
            match &health.error {
                Some(error) => format!(" ({error})"),
                None => format!(" ({:.1} ms)", health.latency_ms),
            }
        );
    }
    for target in [BackendName::New, BackendName::Old] {
        let journal = status.journal.get(target);
        let _ = writeln!(
            out,
            "journal→{:<4} {} entries{}",
            target.as_str(),
            journal.entries,
            journal
                .oldest_age_s
                .map_or(String::new(), |age| format!(", oldest {age:.1}s"))
        );
        for (id, lag) in &journal.collections {
            let _ = writeln!(
                out,
                "  {:<38} {:>8} entries  {}",
                id,
                lag.entries,
                lag.name.as_deref().unwrap_or("")
            );
        }
    }
    let _ = writeln!(out, "{:<KEY$} {}", "writes held", status.writes_held);
    let _ = writeln!(
        out,
        "{:<KEY$} {}",
        "dead letters", status.dead_letters.count
    );
    let state = &status.state;
    let _ = writeln!(
        out,
        "{:<KEY$} {}; journal {} of {} bytes{}; {} intents pending",
        "state store",
        match &state.unwritable_reason {
            Some(reason) => format!("CANNOT WRITE ({reason})"),
            None => "writable".to_owned(),
        },
        state.journal_bytes,
        match state.max_journal_bytes {
            0 => "unlimited".to_owned(),
            max => max.to_string(),
        },
        if state.journal_full {
            " (FULL: writes refused)"
        } else {
            ""
        },
        state.pending_intents
    );
    if let Some(replay) = &status.replay {
        out.push_str(&replay_text(replay));
    }
    if let Some(shadow) = &status.shadow {
        out.push_str(&shadow_text(shadow));
    }
    if let Some(backfill) = &status.backfill {
        out.push_str(&backfill_text(backfill));
    }
    if let Some(finalize) = &status.finalize {
        out.push_str(&finalize_text(finalize));
    }
    if let Some(entries) = status.audit.as_ref().filter(|e| !e.is_empty()) {
        out.push_str("admin actions (newest first):\n");
        out.push_str(&audit_text(entries));
    }
    out
}

/// The topology in one line.
pub(crate) fn topology_line(topology: &TopologyStatus) -> String {
    format!(
        "{:<KEY$} {} (epoch {}); {} writes; reads: canary {}%, shadow {}%{}\n",
        "primary",
        topology.primary,
        topology.epoch,
        match topology.write_mode {
            MirrorMode::Journaled => "journaled",
            MirrorMode::Sync => "sync",
        },
        topology.read_policy.canary_percent,
        topology.read_policy.shadow_percent,
        if topology.paused {
            "; WRITES PAUSED"
        } else {
            ""
        }
    )
}

/// One line per admin action: when (UTC), who, what, how it ended, and its parameters.
pub(crate) fn audit_text(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "no admin actions recorded\n".to_owned();
    }
    let mut out = String::new();
    for entry in entries {
        let detail = if entry.detail.is_empty() {
            String::new()
        } else {
            format!("  [{}]", entry.detail)
        };
        let _ = writeln!(
            out,
            "{}  {:<14} {:<20} {}{detail}",
            rfc3339(entry.at_ms),
            entry.actor,
            entry.action,
            entry.outcome,
        );
    }
    out
}

/// A count from a JSON object of counts (0 when absent).
fn count(map: &Value, key: &str) -> u64 {
    map.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// `a 3, b 1` from a JSON object of counts, skipping zeros; `none` when all are.
fn counts(map: &Value) -> String {
    let parts: Vec<String> = map
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(key, n)| n.as_u64().filter(|n| *n > 0).map(|n| format!("{key} {n}")))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

fn number(value: Option<&Value>, digits: usize) -> String {
    value
        .and_then(Value::as_f64)
        .map_or("-".to_owned(), |n| format!("{n:.digits$}"))
}

/// The replay section: each target's replay, running or stopped (and why), what waits for a
/// retry.
pub(crate) fn replay_text(replay: &Value) -> String {
    let mut out = String::new();
    for target in [BackendName::New, BackendName::Old] {
        let one = &replay[target.as_str()];
        let state = one["state"].as_str().unwrap_or("-");
        let stopped = &one["stopped"];
        let _ = writeln!(
            out,
            "replay→{:<5} {state}{}; {} lanes, {} bytes held",
            target.as_str(),
            if stopped.is_object() {
                format!(
                    " since {} ({})",
                    rfc3339(stopped["since_ms"].as_u64().unwrap_or(0)),
                    stopped["reason"].as_str().unwrap_or("")
                )
            } else {
                String::new()
            },
            count(one, "lanes"),
            count(one, "held_bytes"),
        );
        for (key, failure) in one["waiting"].as_object().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  retrying {key:<38} {}",
                failure.as_str().unwrap_or("")
            );
        }
    }
    out
}

/// The shadow section: totals, a table per collection, the recent mismatches.
pub(crate) fn shadow_text(shadow: &Value) -> String {
    let totals = &shadow["totals"];
    let queue = &shadow["queue"];
    let mut out = format!(
        "{:<KEY$} {}; queue {}/{}\n",
        "shadow",
        counts(totals),
        count(queue, "running"),
        count(queue, "capacity"),
    );
    let _ = writeln!(out, "{:<KEY$} {}", "canary", counts(&shadow["canary"]));
    if counts(&shadow["skipped"]) != "none" {
        let _ = writeln!(out, "{:<KEY$} {}", "skipped", counts(&shadow["skipped"]));
    }
    let collections = shadow["collections"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !collections.is_empty() {
        let mut rows = vec![[
            "COLLECTION".to_owned(),
            "MATCH".to_owned(),
            "MISMATCH".to_owned(),
            "ERROR".to_owned(),
            "TIMEOUT".to_owned(),
            "RECALL".to_owned(),
            "MIN RECALL".to_owned(),
            "MAX DRIFT".to_owned(),
            "CANARY".to_owned(),
        ]];
        for c in &collections {
            let outcomes = &c["shadow"];
            let canary: u64 = c["canary"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, n)| n.as_u64())
                .sum();
            rows.push([
                c["name"]
                    .as_str()
                    .or_else(|| c["collection"].as_str())
                    .unwrap_or("-")
                    .to_owned(),
                count(outcomes, "match").to_string(),
                count(outcomes, "mismatch").to_string(),
                count(outcomes, "error").to_string(),
                count(outcomes, "timeout").to_string(),
                number(c.get("recall_last"), 3),
                number(c.get("recall_min"), 3),
                c.get("drift_max")
                    .and_then(Value::as_f64)
                    .map_or("-".to_owned(), |d| format!("{d:.1e}")),
                canary.to_string(),
            ]);
        }
        out.push_str(&indent(&table(&rows, &[1, 2, 3, 4, 5, 6, 7, 8])));
    }
    let recent = shadow["recent_mismatches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !recent.is_empty() {
        out.push_str("  recent mismatches (newest first):\n");
        for sample in &recent {
            let _ = writeln!(
                out,
                "    {}  {:<20} {:<10} {}",
                rfc3339(sample["at_ms"].as_u64().unwrap_or(0)),
                sample["collection"]["name"].as_str().unwrap_or("-"),
                sample["operation"].as_str().unwrap_or("-"),
                sample["description"].as_str().unwrap_or(""),
            );
        }
    }
    out
}

/// Every line of `text` indented by two spaces.
fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        "-".to_owned()
    } else {
        format!("{:.0}%", done as f64 * 100.0 / total as f64)
    }
}

/// The backfill section: a summary line and a table per collection.
pub(crate) fn backfill_text(progress: &BackfillProgress) -> String {
    let state = serde_json::to_value(progress.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut out = format!(
        "{:<KEY$} {state}: {} of {} records ({}), {:.0} records/s, elapsed {:.1}s{}\n",
        "backfill",
        progress.done_records,
        progress.total_records,
        percent(progress.done_records, progress.total_records),
        progress.records_per_second,
        progress.elapsed_seconds,
        progress
            .eta_seconds
            .map_or(String::new(), |eta| format!(", eta {eta:.0}s")),
    );
    if let Some(error) = &progress.error {
        let _ = writeln!(out, "  error: {error}");
    }
    if !progress.collections.is_empty() {
        let mut rows = vec![[
            "COLLECTION".to_owned(),
            "DONE".to_owned(),
            "TOTAL".to_owned(),
            "%".to_owned(),
            "RESUMED".to_owned(),
            "FINISHED".to_owned(),
        ]];
        for c in &progress.collections {
            let name = if c.tenant == "default_tenant" && c.database == "default_database" {
                c.name.clone()
            } else {
                format!("{}/{}/{}", c.tenant, c.database, c.name)
            };
            rows.push([
                name,
                c.done.to_string(),
                c.total.to_string(),
                percent(c.done, c.total),
                c.resumed_from_checkpoint.to_string(),
                if c.finished { "yes" } else { "no" }.to_owned(),
            ]);
        }
        out.push_str(&indent(&table(&rows, &[1, 2, 3, 4])));
    }
    out
}

/// The finalize section: where the last finalize stands, the checks, the last verify.
pub(crate) fn finalize_text(finalize: &FinalizeStatus) -> String {
    let record = &finalize.record;
    let retired = record.retired.unwrap_or(BackendName::Old);
    let at = |ms: Option<u64>| rfc3339(ms.unwrap_or_default());
    let now = shift_proxy::replay::now_ms();
    let mut out = match record.phase {
        FinalizePhase::None => format!("{:<KEY$} not asked\n", "finalize"),
        FinalizePhase::Pending => {
            let left = record.until_ms.unwrap_or_default().saturating_sub(now);
            format!(
                "{:<KEY$} pending until {} (in {}): mirroring to {retired} stops then; undo: chroma-shift ctl finalize --undo\n",
                "finalize",
                at(record.until_ms),
                humantime_serde::re::humantime::format_duration(Duration::from_secs(left / 1000)),
            )
        }
        FinalizePhase::Done => format!(
            "{:<KEY$} done at {}: nothing is mirrored to {retired} any more\n",
            "finalize",
            at(record.ended_ms)
        ),
        FinalizePhase::Undone => format!(
            "{:<KEY$} undone at {} ({})\n",
            "finalize",
            at(record.ended_ms),
            record.note.as_deref().unwrap_or("")
        ),
    };
    if record.phase != FinalizePhase::Done {
        out.push_str(&checks_text(&finalize.checks));
    }
    if let Some(verify) = &finalize.last_verify {
        let _ = writeln!(
            out,
            "{:<KEY$} {} at {} ({} against {}, {} collections, {} divergences)",
            "last verify",
            if verify.result.matches {
                "passed"
            } else {
                "DIVERGED"
            },
            rfc3339(verify.at_ms),
            verify.result.target,
            verify.result.source,
            verify.result.collections,
            verify.result.divergences,
        );
    }
    out
}

/// `[ok] name  detail` per check.
pub(crate) fn checks_text(checks: &[shift_control::api::Check]) -> String {
    let mut out = String::new();
    for check in checks {
        let _ = writeln!(
            out,
            "  [{}] {:<16} {}",
            if check.passed { "ok" } else { "!!" },
            check.name,
            check.detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_shadow_section_is_a_summary_and_a_table() {
        let shadow = json!({
            "queue": {"capacity": 256, "running": 1},
            "totals": {"match": 40, "mismatch": 2, "error": 0},
            "canary": {"ok": 5},
            "skipped": {},
            "collections": [{
                "collection": "c-1", "name": "docs",
                "shadow": {"match": 40, "mismatch": 2},
                "canary": {"ok": 5},
                "recall_last": 0.9, "recall_min": 0.8, "drift_max": 0.002,
            }],
            "recent_mismatches": [{
                "at_ms": 0, "collection": {"id": "c-1", "name": "docs"},
                "operation": "query", "description": "recall@10 0.80",
            }],
        });
        let text = shadow_text(&shadow);
        assert!(
            text.starts_with("shadow       match 40, mismatch 2; queue 1/256\n"),
            "{text}"
        );
        assert!(text.contains("canary       ok 5\n"), "{text}");
        assert!(
            text.contains("  COLLECTION  MATCH  MISMATCH  ERROR  TIMEOUT  RECALL  MIN RECALL  MAX DRIFT  CANARY\n"),
            "{text}"
        );
        assert!(
            text.contains("  docs           40         2      0        0   0.900       0.800     2.0e-3       5\n"),
            "{text}"
        );
        assert!(text.contains("query      recall@10 0.80"), "{text}");
        assert!(!text.contains('{'), "no raw JSON: {text}");
    }

    #[test]
    fn the_replay_section_says_what_runs_and_what_waits() {
        let replay = json!({
            "new": {"state": "running", "stopped": null, "waiting": {}, "held_bytes": 0, "lanes": 0},
            "old": {"state": "stopped: unauthorized",
                "stopped": {"cause": "unauthorized", "reason": "401", "since_ms": 0, "probes": 3},
                "waiting": {"c-1": "503 busy"}, "held_bytes": 120, "lanes": 1},
        });
        assert_eq!(
            replay_text(&replay),
            "replay→new   running; 0 lanes, 0 bytes held\nreplay→old   stopped: unauthorized since 1970-01-01T00:00:00Z (401); 1 lanes, 120 bytes held\n  retrying c-1                                    503 busy\n"
        );
    }

    #[test]
    fn the_backfill_section_is_a_summary_and_a_table() {
        let progress: BackfillProgress = serde_json::from_value(json!({
            "state": "running", "request": null, "total_records": 200, "done_records": 50,
            "records_per_second": 100.0, "eta_seconds": 1.6, "elapsed_seconds": 0.5,
            "collections": [{"name": "docs", "tenant": "default_tenant",
                "database": "default_database", "client_id": "c-1", "total": 200, "done": 50,
                "resumed_from_checkpoint": 0, "finished": false}],
            "error": null,
        }))
        .unwrap();
        let text = backfill_text(&progress);
        assert_eq!(
            text,
            "backfill     running: 50 of 200 records (25%), 100 records/s, elapsed 0.5s, eta 2s\n  COLLECTION  DONE  TOTAL    %  RESUMED  FINISHED\n  docs          50    200  25%        0  no\n"
        );
    }
}
