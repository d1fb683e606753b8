//! The `flick` command: Firecracker sandboxes from the shell.
//!
//! Thin by design: parse, call the library, render text or `--json`. Data goes to stdout, logs
//! and errors to stderr (errors as JSON on stdout with `--json`).

mod artifacts;
mod commands;
mod ctx;
mod images;
mod output;
mod progress;
mod reconcile;
mod term;
mod vmops;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Firecracker microVM sandboxes.
#[derive(Debug, Parser)]
#[command(name = "flick", version, about, long_about = None)]
struct Cli {
    /// Print one JSON document per command (NDJSON for streaming commands).
    #[arg(long, global = true)]
    json: bool,
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Where flick keeps binaries, images and VM records.
    #[arg(long, global = true, env = "FLICK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a sandbox, run a command in it (default: the image's command), remove it.
    Run(commands::run::RunCmd),
    /// Create a sandbox (and boot it, unless `--no-start`).
    Create(commands::vm::CreateCmd),
    /// List sandboxes.
    #[command(visible_alias = "ls")]
    List(commands::vm::LsCmd),
    /// Boot stopped sandboxes.
    Start(commands::vm::VmsCmd),
    /// Stop sandboxes: Ctrl+Alt+Del, then SIGTERM, then SIGKILL.
    Stop(commands::vm::StopCmd),
    /// Remove sandboxes and everything flick made for them.
    #[command(visible_alias = "rm")]
    Remove(commands::vm::RmCmd),
    /// Show everything recorded about a sandbox (JSON).
    Inspect(commands::vm::InspectCmd),
    /// Run a command in a sandbox; exits with the command's exit code.
    Exec(commands::guest::ExecCmd),
    /// An interactive shell in a sandbox.
    Connect(commands::guest::ConnectCmd),
    /// Copy a file or directory into a sandbox.
    Upload(commands::guest::UploadCmd),
    /// Copy a file or directory out of a sandbox.
    Download(commands::guest::DownloadCmd),
    /// A sandbox's serial console.
    Logs(commands::guest::LogsCmd),
    /// Snapshots and clones.
    #[command(subcommand)]
    Snapshot(commands::snapshot::SnapshotCmd),
    /// OCI/Docker images.
    #[command(subcommand)]
    Images(commands::images::ImagesCmd),
    /// Reconcile records and reclaim orphaned processes, runtime dirs and network entries.
    Gc(commands::vm::GcCmd),
    /// Check whether this host can run microVMs, and what will not work.
    Doctor(commands::doctor::Args),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print version information.
    Version,
}

/// Global settings every command receives.
#[derive(Debug, Clone)]
pub struct Globals {
    /// `--json`.
    pub json: bool,
    /// The data directory.
    pub data_dir: PathBuf,
}

fn default_data_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/flick");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("flick");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/flick"),
        None => std::env::temp_dir().join("flick"),
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

fn run_async(globals: &Globals, command: Command) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if let Ok(point) = std::env::var("FLICK_CRASH_AT")
        && !vmops::CRASH_POINTS.contains(&point.as_str())
    {
        return Err(flick::Error::new(
            flick::ErrorCode::InvalidArgument,
            format!("FLICK_CRASH_AT={point:?} names no crash point"),
        )
        .with_details(serde_json::json!({ "points": vmops::CRASH_POINTS }))
        .into());
    }
    let result = runtime.block_on(async {
        let ctx = ctx::Ctx::new(globals)?;
        match command {
            Command::Run(c) => commands::run::run(&ctx, &c).await,
            Command::Create(c) => commands::vm::create(&ctx, &c).await,
            Command::List(c) => commands::vm::ls(&ctx, &c).await,
            Command::Start(c) => commands::vm::start(&ctx, &c).await,
            Command::Stop(c) => commands::vm::stop(&ctx, &c).await,
            Command::Remove(c) => commands::vm::rm(&ctx, &c).await,
            Command::Inspect(c) => commands::vm::inspect(&ctx, &c).await,
            Command::Exec(c) => commands::guest::exec(&ctx, &c).await,
            Command::Connect(c) => commands::guest::connect(&ctx, &c).await,
            Command::Upload(c) => commands::guest::upload(&ctx, &c).await,
            Command::Download(c) => commands::guest::download(&ctx, &c).await,
            Command::Logs(c) => commands::guest::logs(&ctx, &c).await,
            Command::Snapshot(c) => commands::snapshot::run(&ctx, &c).await,
            Command::Images(c) => commands::images::run(&ctx, &c).await,
            Command::Gc(c) => commands::vm::gc(&ctx, &c).await,
            Command::Doctor(_) | Command::Version | Command::Completions { .. } => {
                unreachable!("handled synchronously")
            }
        }
    });
    // A read of the terminal may still be blocked on its thread: do not wait for it.
    runtime.shutdown_background();
    result
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let globals = Globals {
        json: cli.json,
        data_dir: cli.data_dir.unwrap_or_else(default_data_dir),
    };
    let result = match cli.command {
        Command::Doctor(args) => commands::doctor::run(&globals, &args),
        Command::Version => commands::version::run(&globals),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "flick", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        command => run_async(&globals, command),
    };
    match result {
        Ok(code) => code,
        Err(err) => output::print_error(&globals, &err),
    }
}
