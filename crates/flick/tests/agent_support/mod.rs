//! Shared helpers for the agent tests: build/locate the flick-agent binary, run it on a Unix
//! socket, connect a client.
#![allow(dead_code)]

use flick::agent::{AgentClient, AgentTransport};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-token-0123456789";

/// The flick-agent binary: `$FLICK_AGENT_BIN`, else built once with `$CARGO build -p flick-agent`.
pub fn agent_bin() -> PathBuf {
    match std::env::var_os("FLICK_AGENT_BIN") {
        Some(p) => PathBuf::from(p),
        None => flick_testkit::workspace_binary("flick-agent", "flick-agent"),
    }
}

/// An agent process on a Unix socket in a temp dir; killed on drop.
pub struct Agent {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Agent {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new(agent_bin())
            .arg("--unix")
            .arg(&socket)
            .arg("--token")
            .arg(TOKEN)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "agent socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Agent { child, dir, socket }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn transport(&self) -> AgentTransport {
        AgentTransport::Unix(self.socket.clone())
    }

    pub async fn client(&self) -> AgentClient {
        AgentClient::connect(self.transport(), TOKEN, Duration::from_secs(10))
            .await
            .unwrap()
    }

    /// Peak resident memory of the agent (VmHWM) in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a pid is gone (or a zombie nobody will run again).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

/// Waits (bounded) until every pid is gone; returns the ones still alive.
pub fn wait_gone(pids: &[u32], within: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| !process_gone(*p)).collect();
        if alive.is_empty() || start.elapsed() > within {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

pub fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}
