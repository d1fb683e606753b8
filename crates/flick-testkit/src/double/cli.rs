//! Command line of `fc-double`: Firecracker's own flags plus the double's test switches.
//!
//! Every test switch has a flag and an `FC_DOUBLE_*` environment variable, because a library
//! under test usually spawns the double itself and a test can only reach it through the
//! environment.

use std::path::PathBuf;

use clap::Parser;

/// Firecracker test double: serves the Firecracker v1.16.1 API on a Unix socket without running
/// a guest. For tests only.
#[derive(Debug, Clone, Parser)]
#[command(name = "fc-double", disable_version_flag = true)]
pub struct Args {
    /// Path of the API socket (Firecracker's `--api-sock`).
    #[arg(long = "api-sock", value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// MicroVM id shown in `GET /` and in log lines.
    #[arg(long, default_value = "anonymous-instance")]
    pub id: String,
    /// Print the version like Firecracker and exit.
    #[arg(long)]
    pub version: bool,
    /// Log file (Firecracker's `--log-path`).
    #[arg(long = "log-path", value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// Log level.
    #[arg(long, default_value = "Info")]
    pub level: String,
    /// Show the level in log lines.
    #[arg(long = "show-level")]
    pub show_level: bool,
    /// Show the log origin in log lines.
    #[arg(long = "show-log-origin")]
    pub show_log_origin: bool,
    /// Accepted and ignored (Firecracker's boot timer device).
    #[arg(long = "boot-timer")]
    pub boot_timer: bool,
    /// Accepted and ignored (no seccomp in the double).
    #[arg(long = "no-seccomp")]
    pub no_seccomp: bool,
    /// Accepted and ignored.
    #[arg(long = "seccomp-filter", value_name = "PATH")]
    pub seccomp_filter: Option<PathBuf>,
    /// Largest request body accepted, in bytes (default 51200, like Firecracker).
    #[arg(long = "http-api-max-payload-size", value_name = "BYTES")]
    pub http_api_max_payload_size: Option<usize>,
    /// MMDS data store limit in bytes.
    #[arg(long = "mmds-size-limit", value_name = "BYTES")]
    pub mmds_size_limit: Option<usize>,
    /// Accepted and ignored.
    #[arg(long = "start-time-us", value_name = "US")]
    pub start_time_us: Option<u64>,
    /// Accepted and ignored.
    #[arg(long = "start-time-cpu-us", value_name = "US")]
    pub start_time_cpu_us: Option<u64>,
    /// Accepted and ignored.
    #[arg(long = "parent-cpu-time-us", value_name = "US")]
    pub parent_cpu_time_us: Option<u64>,
    /// JSON file that seeds the MMDS data store.
    #[arg(long, value_name = "PATH")]
    pub metadata: Option<PathBuf>,
    /// JSON configuration applied at start, then the microVM is started.
    #[arg(long = "config-file", value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    /// Serve no API (only with `--config-file`).
    #[arg(long = "no-api", requires = "config_file")]
    pub no_api: bool,
    /// Accepted and ignored (PCI transport).
    #[arg(long = "enable-pci")]
    pub enable_pci: bool,

    /// Test switch: guest vsock port mapped to a host Unix socket, `PORT=PATH` (repeatable,
    /// comma-separated lists accepted).
    #[arg(
        long = "vsock-port",
        value_name = "PORT=PATH",
        env = "FC_DOUBLE_VSOCK_PORTS",
        value_delimiter = ','
    )]
    pub vsock_port: Vec<String>,
    /// Test switch: answer `SendCtrlAltDel` but keep running.
    #[arg(long = "ignore-ctrl-alt-del", env = "FC_DOUBLE_IGNORE_CTRL_ALT_DEL",
          value_parser = clap::builder::FalseyValueParser::new())]
    pub ignore_ctrl_alt_del: bool,
    /// Test switch: append one JSON line per request (`{method, path, body, status}`) here.
    #[arg(
        long = "request-log",
        value_name = "PATH",
        env = "FC_DOUBLE_REQUEST_LOG"
    )]
    pub request_log: Option<PathBuf>,
    /// Test switch: wait this long before creating the API socket.
    #[arg(
        long = "socket-delay-ms",
        value_name = "MS",
        env = "FC_DOUBLE_SOCKET_DELAY_MS",
        default_value_t = 0
    )]
    pub socket_delay_ms: u64,
    /// Test switch: bind the API socket but never answer.
    #[arg(long = "api-silent", env = "FC_DOUBLE_API_SILENT",
          value_parser = clap::builder::FalseyValueParser::new())]
    pub api_silent: bool,
    /// Test switch: make `InstanceStart` fail.
    #[arg(long = "fail-start", env = "FC_DOUBLE_FAIL_START",
          value_parser = clap::builder::FalseyValueParser::new())]
    pub fail_start: bool,
    /// Test switch: exit with status 1 right after a successful `InstanceStart` (a crash).
    #[arg(long = "exit-after-start", env = "FC_DOUBLE_EXIT_AFTER_START",
          value_parser = clap::builder::FalseyValueParser::new())]
    pub exit_after_start: bool,
}
