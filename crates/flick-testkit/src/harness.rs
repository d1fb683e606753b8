//! Helpers for tests in other crates: find (or build) `fc-double`, run it, talk to it.
//!
//! ```no_run
//! # async fn demo() {
//! use flick_testkit::{FcDouble, FcDoubleOptions, raw_request};
//! let double = FcDouble::spawn(FcDoubleOptions::default());
//! let (status, body) = raw_request(double.socket_path(), "GET", "/", None).await;
//! assert_eq!(status, 200);
//! # let _ = body;
//! # }
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

/// Path of the built `fc-double` binary (see [`workspace_binary`]).
///
/// # Panics
/// When the binary cannot be found or built: a test cannot run without it.
pub fn fc_double_path() -> PathBuf {
    workspace_binary("flick-testkit", "fc-double")
}

/// Path of the built `jailer-double` binary (the jailer test double, see its module docs),
/// found and kept up to date like [`fc_double_path`].
///
/// # Panics
/// When the binary cannot be found or built.
pub fn jailer_double_path() -> PathBuf {
    workspace_binary("flick-testkit", "jailer-double")
}

/// Path of binary `bin` of workspace package `package`, built for the running test's profile.
///
/// The binary lives next to the test executable's directory (`target/<profile>/<bin>`; the
/// test itself runs from `target/<profile>/deps/`). When the test runs under cargo (`$CARGO` is
/// set), the binary is brought up to date once per process with
/// `$CARGO build -p <package> --bin <bin>` for the same profile and target directory, so tests
/// never run a stale binary; cargo's own lock serializes concurrent builds. Outside cargo an
/// existing binary is used as it is.
///
/// # Panics
/// When the binary cannot be found or built: a test cannot run without it.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    // Held across the build: one build per binary and process.
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, path)) = built.iter().find(|(b, _)| b == bin) {
        return path.clone();
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let mut profile_dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if profile_dir.ends_with("deps") {
        profile_dir.pop();
    }
    let candidate = profile_dir.join(bin);
    let cargo = std::env::var("CARGO").ok();
    if cargo.is_some() || !candidate.exists() {
        build(
            cargo.as_deref().unwrap_or("cargo"),
            &profile_dir,
            &candidate,
            package,
            bin,
        );
    }
    built.push((bin.to_string(), candidate.clone()));
    candidate
}

fn build(cargo: &str, profile_dir: &Path, candidate: &Path, package: &str, bin: &str) {
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let target_dir = profile_dir
        .parent()
        .expect("profile directory has a parent")
        .to_path_buf();
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", package, "--bin", bin, "--target-dir"])
        .arg(&target_dir);
    if profile != "debug" {
        cmd.args(["--profile", &profile]);
    }
    let out = cmd
        .output()
        .expect("running cargo to build a workspace binary");
    assert!(
        out.status.success(),
        "building {bin} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        candidate.exists(),
        "{bin} was built but is not at {}",
        candidate.display()
    );
}

/// How to start a double. Every field maps to a flag or `FC_DOUBLE_*` variable.
#[derive(Debug, Clone, Default)]
pub struct FcDoubleOptions {
    /// `--id`.
    pub id: Option<String>,
    /// Guest vsock port -> host Unix socket (`--vsock-port`).
    pub vsock_ports: Vec<(u32, PathBuf)>,
    /// `--ignore-ctrl-alt-del`.
    pub ignore_ctrl_alt_del: bool,
    /// `--fail-start`.
    pub fail_start: bool,
    /// `--exit-after-start`.
    pub exit_after_start: bool,
    /// `--api-silent`.
    pub api_silent: bool,
    /// `--socket-delay-ms`.
    pub socket_delay_ms: u64,
    /// Extra arguments passed as they are.
    pub extra_args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl FcDoubleOptions {
    /// The test switches as `FC_DOUBLE_*` environment variables, for a double that the library
    /// under test spawns itself (set them on the test process or on the library's command).
    /// `request_log` adds `FC_DOUBLE_REQUEST_LOG`. `id` and `extra_args` are not switches and
    /// are left out.
    #[must_use]
    pub fn env_vars(&self, request_log: Option<&Path>) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        if !self.vsock_ports.is_empty() {
            let ports: Vec<String> = self
                .vsock_ports
                .iter()
                .map(|(port, path)| format!("{port}={}", path.display()))
                .collect();
            vars.push(("FC_DOUBLE_VSOCK_PORTS".to_string(), ports.join(",")));
        }
        for (on, name) in [
            (self.ignore_ctrl_alt_del, "FC_DOUBLE_IGNORE_CTRL_ALT_DEL"),
            (self.fail_start, "FC_DOUBLE_FAIL_START"),
            (self.exit_after_start, "FC_DOUBLE_EXIT_AFTER_START"),
            (self.api_silent, "FC_DOUBLE_API_SILENT"),
        ] {
            if on {
                vars.push((name.to_string(), "1".to_string()));
            }
        }
        if self.socket_delay_ms > 0 {
            vars.push((
                "FC_DOUBLE_SOCKET_DELAY_MS".to_string(),
                self.socket_delay_ms.to_string(),
            ));
        }
        if let Some(path) = request_log {
            vars.push((
                "FC_DOUBLE_REQUEST_LOG".to_string(),
                path.display().to_string(),
            ));
        }
        vars.extend(self.env.iter().cloned());
        vars
    }
}

/// A running `fc-double` process in its own temporary directory; killed and reaped on drop.
#[derive(Debug)]
pub struct FcDouble {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    request_log: PathBuf,
    stderr_path: PathBuf,
}

impl FcDouble {
    /// Starts a double on `<tempdir>/api.sock` and waits (up to 10 s) until the socket accepts
    /// connections.
    ///
    /// # Panics
    /// When the process cannot start or the socket never appears.
    #[must_use]
    #[allow(
        clippy::needless_pass_by_value,
        reason = "options are a small value built per test"
    )]
    pub fn spawn(options: FcDoubleOptions) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for fc-double");
        let socket = dir.path().join("api.sock");
        let request_log = dir.path().join("requests.jsonl");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = File::create(&stderr_path).expect("stderr file");
        let mut cmd = Command::new(fc_double_path());
        cmd.arg("--api-sock")
            .arg(&socket)
            .arg("--request-log")
            .arg(&request_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // Do not let the caller's environment switch on test behaviour by accident.
        for var in [
            "FC_DOUBLE_VSOCK_PORTS",
            "FC_DOUBLE_IGNORE_CTRL_ALT_DEL",
            "FC_DOUBLE_REQUEST_LOG",
            "FC_DOUBLE_SOCKET_DELAY_MS",
            "FC_DOUBLE_API_SILENT",
            "FC_DOUBLE_FAIL_START",
            "FC_DOUBLE_EXIT_AFTER_START",
        ] {
            cmd.env_remove(var);
        }
        if let Some(id) = &options.id {
            cmd.args(["--id", id]);
        }
        for (port, path) in &options.vsock_ports {
            cmd.arg("--vsock-port")
                .arg(format!("{port}={}", path.display()));
        }
        if options.ignore_ctrl_alt_del {
            cmd.arg("--ignore-ctrl-alt-del");
        }
        if options.fail_start {
            cmd.arg("--fail-start");
        }
        if options.exit_after_start {
            cmd.arg("--exit-after-start");
        }
        if options.api_silent {
            cmd.arg("--api-silent");
        }
        if options.socket_delay_ms > 0 {
            cmd.arg("--socket-delay-ms")
                .arg(options.socket_delay_ms.to_string());
        }
        cmd.args(&options.extra_args);
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning fc-double");
        let mut double = Self {
            child,
            dir,
            socket,
            request_log,
            stderr_path,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&double.socket).is_err() {
            if let Ok(Some(status)) = double.child.try_wait() {
                panic!(
                    "fc-double exited early with {status}; stderr:\n{}",
                    double.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "fc-double socket {} never appeared; stderr:\n{}",
                double.socket.display(),
                double.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        double
    }

    /// The API socket.
    #[must_use]
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The double's private temporary directory (removed on drop).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every request the double answered so far, as `{method, path, body, status}` objects.
    #[must_use]
    pub fn request_log(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.request_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Everything the double wrote to stderr so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit code if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FcDouble {
    /// Asks the double to stop (SIGTERM: it removes its sockets, including a vsock socket
    /// outside its directory), then kills it if it has not exited within two seconds, and reaps it.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = i32::try_from(self.child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            if self.wait_exit(Duration::from_secs(2)).is_none() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// Sends one HTTP/1.1 request over the Unix socket; returns (status, body text).
///
/// # Panics
/// When the socket cannot be reached or the exchange fails (the test cannot go on).
pub async fn raw_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .header("Host", "localhost")
        .header("Accept", "application/json");
    let payload = match body {
        Some(b) => {
            req = req.header("Content-Type", "application/json");
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    let req = req.body(Full::new(payload)).expect("request builds");
    let resp = sender.send_request(req).await.expect("request answered");
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}
