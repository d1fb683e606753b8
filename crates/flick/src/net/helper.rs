//! Starting a detached helper process (`flick-wg`, `flick-dns`): the spec goes in as JSON on
//! stdin, the helper answers one line — `READY [details]` once it serves, or `ERROR <why>` —
//! and is then left running on its own (it outlives the program that started it).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Error, ErrorCode, Result};

/// A helper that reported ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Started {
    /// Its pid.
    pub pid: u32,
    /// Its start time (field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
    /// What followed `READY` on its line (trimmed; empty for a bare `READY`).
    pub details: String,
}

/// Starts `helper` in the calling thread's network namespace with `spec` on its stdin and
/// waits up to `timeout` for its `READY` line. `what` names it in errors (`code`). A helper
/// that fails or says nothing is killed and reaped.
pub(crate) fn start(
    helper: &Path,
    spec: &impl serde::Serialize,
    what: &str,
    code: ErrorCode,
    timeout: Duration,
) -> Result<Started> {
    let err = |msg: String| Error::new(code, msg);
    let body = serde_json::to_vec(spec).map_err(|e| {
        Error::new(ErrorCode::Internal, format!("serialize the {what} spec")).with_source(e)
    })?;
    let mut child = Command::new(helper)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err(format!("start the {what} {}", helper.display())).with_source(e))?;
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&body);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
    }
    let line = rx.recv_timeout(timeout).unwrap_or_default();
    let line = line.trim();
    if let Some(details) = line
        .strip_prefix("READY")
        .filter(|rest| rest.is_empty() || rest.starts_with(' '))
    {
        let start_time =
            super::wireguard::start_time(pid).ok_or_else(|| err(format!("the {what} exited")))?;
        // Deliberately not waited for: it outlives this process.
        drop(child);
        return Ok(Started {
            pid,
            start_time,
            details: details.trim().to_string(),
        });
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(err(format!(
        "the {what} failed: {}",
        line.strip_prefix("ERROR ")
            .unwrap_or(if line.is_empty() { "no answer" } else { line })
    )))
}
