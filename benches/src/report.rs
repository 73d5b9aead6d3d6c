//! Pieces of the markdown reports.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// Tells the operator how fast one copy of `records` records went.
pub fn print_rate(records: u64, seconds: f64) {
    eprintln!(
        "  {records} records in {seconds:.2} s = {:.0} records/s",
        records as f64 / seconds
    );
}

/// Prints a bench's markdown report, and writes it to the file `BENCH_OUT` names, if any.
pub fn publish(report: &str) -> anyhow::Result<()> {
    println!("{report}");
    if let Some(path) = std::env::var_os("BENCH_OUT").map(std::path::PathBuf::from) {
        std::fs::write(&path, report)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM` in UTC.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (hour, minute) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let (year, month, day) = shift_proxy::access_line::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}")
}

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// The three load averages from /proc/loadavg (`1m 5m 15m`).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `- machine: ...` and `- date (UTC): ...` lines.
pub fn machine_lines(load_before: &str, load_after: &str) -> String {
    format!(
        "- date (UTC): {}\n- machine: {} cores, {}\n- load average (1m 5m 15m) before / after: {load_before} / {load_after}",
        utc_now(),
        cores(),
        cpu_model(),
    )
}
