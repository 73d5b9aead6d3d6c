//! `chroma-shift ctl status --watch [SECS]`: a live terminal view. Every SECS seconds it asks
//! for the status and redraws the screen (clear, then the whole view); Ctrl-C stops it.
//! `--count N` stops after N views (for scripts and tests). With `--json`, one compact JSON
//! line per view instead, and no screen clearing.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use shift_control::AdminClient;

use super::status_view::status_text;

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Redraw a live view every SECS seconds (2 when given without a value) until Ctrl-C.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub(crate) watch: Option<f64>,
    /// With --watch: stop after this many views.
    #[arg(long, requires = "watch")]
    pub(crate) count: Option<u64>,
}

/// Clears the screen and puts the cursor at the top left (ANSI).
const CLEAR: &str = "\x1b[2J\x1b[H";

/// Redraws the status every `every` seconds, `count` times (until Ctrl-C when `None`). A
/// status that cannot be read is shown in the view; the watch goes on.
pub(crate) async fn run(
    admin: &AdminClient,
    every: f64,
    count: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        every.is_finite() && every > 0.0,
        "--watch takes a positive number of seconds"
    );
    let every = Duration::from_secs_f64(every);
    let mut views = 0u64;
    loop {
        let status = admin.status().await;
        let view = match (&status, json) {
            (Ok(status), true) => serde_json::to_string(status)? + "\n",
            (Err(error), true) => {
                serde_json::json!({"error": "Unreachable", "message": error.to_string()})
                    .to_string()
                    + "\n"
            }
            (Ok(status), false) => frame(admin, every, &status_text(status)),
            (Err(error), false) => {
                frame(admin, every, &format!("cannot read the status: {error}\n"))
            }
        };
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(view.as_bytes())?;
        stdout.flush()?;
        drop(stdout);
        views += 1;
        if count.is_some_and(|count| views >= count) {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// One screen: cleared, a header line, the view.
fn frame(admin: &AdminClient, every: Duration, body: &str) -> String {
    let now = humantime_serde::re::humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    format!(
        "{CLEAR}chroma-shift at {}  ·  {now}  ·  every {:?}  ·  Ctrl-C stops\n\n{body}",
        admin.url(),
        every
    )
}
