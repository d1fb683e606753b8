//! The `flick` command: Firecracker sandboxes from the shell.
//!
//! Thin by design: parse, call the library, render text or `--json`. Data goes to stdout, logs
//! and errors to stderr (errors as JSON on stdout with `--json`).

mod commands;
mod output;

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
    /// Check whether this host can run microVMs, and what will not work.
    Doctor(commands::doctor::Args),
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
    };
    match result {
        Ok(code) => code,
        Err(err) => output::print_error(&globals, &err),
    }
}
