//! `chroma-shift`: the command line. Thin: parsing, logging setup and signals; the work lives in
//! the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shift_config::Config;
use shift_control::ChromaShift;
use shift_local_chroma::{find_chroma_bin, LocalChroma, LocalChromaOptions};
use shift_proxy::log_writer::{self, LogFlushGuard};
use shift_proxy::Drained;

mod backfill_cmd;
mod ctl;
mod otel;
mod tools;

/// A migration proxy for Chroma: dual writes, cutover and rollback, backfill and verify.
#[derive(Debug, Parser)]
#[command(name = "chroma-shift", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The TOML configuration (see config/chroma-shift.example.toml).
        #[arg(long, short, env = "CHROMA_SHIFT_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration and its secrets, then exit.
    CheckConfig {
        #[arg(long, short, env = "CHROMA_SHIFT_CONFIG")]
        config: PathBuf,
    },
    /// Copy what the primary held before dual writes began to the secondary, inside the running
    /// proxy, with a progress bar; resumable.
    Backfill(backfill_cmd::BackfillArgs),
    /// List every tenant, database and collection of a store: counts, dimension, metadata,
    /// configuration.
    Inventory(tools::InventoryArgs),
    /// Compare the stores: ids, record contents, A/B queries; `--repair` brings the secondary
    /// in line. Exits 0 only when they match.
    Verify(tools::VerifyArgs),
    /// Operate a running proxy through its admin API: status, cutover, rollback, pause ...
    Ctl(ctl::Ctl),
    /// Print a shell completion script: `chroma-shift completions bash > /etc/bash_completion.d/chroma-shift`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Start two local Chroma servers (old and new) and the proxy in front of them (the
    /// quickstart). Writes the config it runs with to DIR/chroma-shift.toml, so the other
    /// commands (`inventory`, `backfill`, `verify`) run against it with `--config`.
    #[command(visible_alias = "quickstart")]
    Dev {
        /// Where the two servers keep their data, the proxy its state, and the config file.
        #[arg(long, default_value = ".demo")]
        dir: PathBuf,
        /// The proxy's data address: the Chroma URL for applications.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// The admin address: /metrics, /healthz, /readyz.
        #[arg(long, default_value = "127.0.0.1:9100")]
        admin_listen: SocketAddr,
        /// Port of the old Chroma server.
        #[arg(long, default_value_t = 8101)]
        old_port: u16,
        /// Port of the new Chroma server.
        #[arg(long, default_value_t = 8102)]
        new_port: u16,
    },
}

fn main() -> ExitCode {
    // Inert unless built with shift-proxy's `failpoints` feature (the tests) and FAILPOINTS set.
    let _failpoints = shift_proxy::failpoints::setup();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chroma-shift: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => serve(load(&config)?).await,
            Command::CheckConfig { config } => check_config(&config),
            Command::Ctl(ctl) => ctl::run(ctl).await,
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut <Cli as clap::CommandFactory>::command(),
                    "chroma-shift",
                    &mut std::io::stdout(),
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Backfill(args) => backfill_cmd::run(args).await,
            Command::Inventory(args) => tools::run_inventory(args).await,
            Command::Verify(args) => tools::run_verify(args).await,
            Command::Dev {
                dir,
                listen,
                admin_listen,
                old_port,
                new_port,
            } => dev(dir, listen, admin_listen, old_port, new_port).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("chroma-shift: {error:#}");
            ExitCode::from(2)
        }
    }
}

pub(crate) fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).with_context(|| format!("invalid configuration {}", path.display()))
}

fn check_config(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = load(path)?;
    config.secrets().context("missing secret")?;
    println!(
        "{}: ok (listen {}, admin {}, primary {}, mirror {:?})",
        path.display(),
        config.server.listen,
        config.server.admin_listen,
        config.routing.primary,
        config.mirror.mode
    );
    Ok(ExitCode::SUCCESS)
}

/// Sets up logging, and the trace export when `[tracing]` is on. The access log's lines are
/// formatted and written out by a thread of their own (off the request path, see
/// `shift_proxy::log_writer`); keep the guards until the end, they write out the last lines
/// and spans.
fn init_logging(config: &Config) -> anyhow::Result<(LogFlushGuard, otel::OtelGuard)> {
    let (traces, traces_guard) = otel::layer(&config.tracing)?;
    let guard = log_writer::init_logging_with(&config.log, traces)
        .context("cannot start the log writer")?;
    Ok((guard, traces_guard))
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let _log = init_logging(&config)?;
    let secrets = config.secrets().context("missing secret")?;
    let proxy = ChromaShift::bind(config, secrets).await?;
    tracing::info!(data = %proxy.data_addr(), admin = %proxy.admin_addr(), "listening");
    let drained = proxy.run(shutdown_signal()).await;
    Ok(match drained {
        Drained::Clean => ExitCode::SUCCESS,
        Drained::GraceExpired => ExitCode::from(1),
    })
}

async fn dev(
    dir: PathBuf,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    old_port: u16,
    new_port: u16,
) -> anyhow::Result<ExitCode> {
    let bin = find_chroma_bin().context(
        "no `chroma` command: run scripts/quickstart.sh, or `pip install chromadb==1.5.9`",
    )?;
    // Absolute, so the config written below works from any directory.
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let mut servers = Vec::new();
    for (name, port) in [("old", old_port), ("new", new_port)] {
        let mut options = LocalChromaOptions::new(bin.clone(), dir.join(name));
        options.port = Some(port);
        let server = LocalChroma::start(options)
            .await
            .with_context(|| format!("cannot start the {name} Chroma on port {port}"))?;
        servers.push(server);
    }
    let text = format!(
        r#"# Written by `chroma-shift quickstart`: the config this proxy runs with. The walk-through
# in the README uses it: chroma-shift inventory|backfill|verify --config {path}
[server]
listen = "{listen}"
admin_listen = "{admin_listen}"
[backends.old]
url = "{old}"
[backends.new]
url = "{new}"
[routing]
primary = "old"
[state]
dir = "{state}"
"#,
        old = servers[0].url(),
        new = servers[1].url(),
        state = dir.join("state").display(),
        path = dir.join(QUICKSTART_CONFIG).display(),
    );
    let config = Config::from_toml(&text).context("the dev configuration")?;
    let path = dir.join(QUICKSTART_CONFIG);
    std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("config: {}\n{text}", path.display());
    let _log = init_logging(&config)?;
    // The admin API needs a token: the environment's, or one made up for this run.
    let (admin_token, shown) = match std::env::var("CHROMA_SHIFT_ADMIN_TOKEN") {
        Ok(token) if !token.trim().is_empty() => {
            (token, "(yours, from CHROMA_SHIFT_ADMIN_TOKEN)".to_owned())
        }
        _ => {
            // Made up for this run, and shown once so the developer can use the admin API.
            let token = format!("dev-{:016x}", fastrand::u64(..));
            (
                token.clone(),
                format!("export CHROMA_SHIFT_ADMIN_TOKEN={token}"),
            )
        }
    };
    let secrets = shift_config::Secrets {
        admin_token: Some(shift_config::Secret::new(admin_token)),
        ..Default::default()
    };
    let proxy = ChromaShift::bind(config, secrets).await?;
    println!(
        "\nchroma-shift is up.\n  Chroma URL for your app:  http://{data}\n  admin and metrics:        http://{admin}/metrics\n  admin token:              {shown}\n  admin URL for ctl:        export CHROMA_SHIFT_ADMIN_URL=http://{admin}\n  config:                   {config}\n  old store (primary):      {old}  (data in {dir}/old)\n  new store:                {new}  (data in {dir}/new)\n\n  python: chromadb.HttpClient(host=\"{host}\", port={port})\n\nCtrl-C stops the proxy and both Chroma servers.\n",
        data = proxy.data_addr(),
        admin = proxy.admin_addr(),
        old = servers[0].url(),
        new = servers[1].url(),
        dir = dir.display(),
        config = path.display(),
        host = proxy.data_addr().ip(),
        port = proxy.data_addr().port(),
    );
    proxy.run(shutdown_signal()).await;
    for mut server in servers {
        let _ = server.stop().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// The file the quickstart writes its config to, in its directory.
const QUICKSTART_CONFIG: &str = "chroma-shift.toml";

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
