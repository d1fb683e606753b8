//! Spawning and supervising `firecracker` (and `jailer`) processes.
//!
//! A VMM runs in its own process group, with stdin on `/dev/null` and stdout/stderr appended to
//! a log file, so that:
//! - a terminal's Ctrl+C (sent to the terminal's foreground group) or the exit of the program
//!   that started it does not reach it (VMs can outlive a short-lived CLI);
//! - stopping it means signalling the whole group, so no helper it forked is left behind.
//!
//! Processes are started with `posix_spawn` (no `fork`, no code run in the child): on nested
//! hosts, copying the parent's page tables for a `fork` costs milliseconds per VM. The one thing
//! the child needs a different context for — a private mount namespace for the VM view — is
//! prepared on a short-lived thread of our own, from which the child inherits it.
//!
//! A process is identified by its pid **and** its start time (field 22 of `/proc/<pid>/stat`), so
//! a recycled pid is never mistaken for the VMM after a crash of the supervising program
//! ([`ProcessIdentity::is_alive`]).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, ErrorCode, Result};

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables (the rest is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// File that receives stdout and stderr (appended, created 0600).
    pub log_path: PathBuf,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Run in a private mount namespace where `source` is bind-mounted on `target` (needs
    /// CAP_SYS_ADMIN). flick uses it to show every Firecracker its own runtime directory at one
    /// fixed path, so paths recorded in a snapshot resolve to each clone's own files.
    pub bind_view: Option<(PathBuf, PathBuf)>,
}

impl ProcessSpec {
    /// A spec for `program` logging to `log_path`.
    pub fn new(program: impl Into<PathBuf>, log_path: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            log_path: log_path.into(),
            cwd: None,
            bind_view: None,
        }
    }

    /// Appends an argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A pid plus the kernel's start time of that process, which together never repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// Process id (also the process group and session id: the VMM leads both).
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

impl ProcessIdentity {
    /// Reads the identity of a live process.
    ///
    /// # Errors
    /// [`ErrorCode::ProcessFailed`] when the process does not exist.
    pub fn of(pid: i32) -> Result<Self> {
        let start_time = read_start_time(pid).ok_or_else(|| {
            Error::new(
                ErrorCode::ProcessFailed,
                format!("process {pid} does not exist"),
            )
        })?;
        Ok(Self { pid, start_time })
    }

    /// Whether this exact process still exists (and is not a zombie).
    #[must_use]
    pub fn is_alive(&self) -> bool {
        read_start_time(self.pid) == Some(self.start_time) && !is_zombie(self.pid)
    }

    /// Sends `signal` to the whole process group, if this process still exists.
    /// Returns whether a signal was sent.
    ///
    /// A process that does not lead its group (a VMM a daemonizing jailer left behind, whose
    /// group leader has exited) gets the signal alone; as the init of its own pid namespace,
    /// its death takes every process of that namespace with it.
    #[must_use]
    pub fn signal_group(&self, signal: Signal) -> bool {
        if read_start_time(self.pid) != Some(self.start_time) {
            return false;
        }
        let Some(pid) = Pid::from_raw(self.pid) else {
            return false;
        };
        if read_pgid(self.pid) == Some(self.pid) {
            rustix::process::kill_process_group(pid, signal).is_ok()
        } else {
            rustix::process::kill_process(pid, signal).is_ok()
        }
    }
}

fn read_stat(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// Fields after the command name, which may itself contain spaces and parentheses.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat[close + 1..].split_whitespace().collect())
}

fn read_start_time(pid: i32) -> Option<u64> {
    let stat = read_stat(pid)?;
    // Field 3 (state) is index 0 after the command; field 22 (starttime) is index 19.
    stat_fields(&stat)?.get(19)?.parse().ok()
}

fn read_pgid(pid: i32) -> Option<i32> {
    let stat = read_stat(pid)?;
    // Field 5 (pgrp) is index 2 after the command.
    stat_fields(&stat)?.get(2)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    read_stat(pid)
        .and_then(|s| stat_fields(&s).and_then(|f| f.first().map(|s| *s == "Z" || *s == "X")))
        .unwrap_or(false)
}

/// A supervised process: one this program spawned, or one it adopted after a restart
/// ([`SupervisedProcess::adopt`]), identified by pid and start time.
#[derive(Debug)]
pub struct SupervisedProcess {
    // `None` for an adopted process: not our child, so it is watched through `/proc`.
    child: Option<tokio::process::Child>,
    identity: ProcessIdentity,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl SupervisedProcess {
    /// Spawns `spec` in a new session and process group.
    ///
    /// # Errors
    /// [`ErrorCode::BinaryNotFound`] when the program is missing or not executable,
    /// [`ErrorCode::ProcessFailed`] when the log cannot be opened or the spawn fails.
    pub fn spawn(spec: &ProcessSpec) -> Result<Self> {
        if !crate::doctor::is_executable(&spec.program) {
            return Err(Error::new(
                ErrorCode::BinaryNotFound,
                format!("{} is missing or not executable", spec.program.display()),
            )
            .with_details(json!({ "path": spec.program })));
        }
        let log = open_log(&spec.log_path)?;
        let log_err = log.try_clone().map_err(|e| {
            Error::io(
                ErrorCode::ProcessFailed,
                "cannot duplicate log file",
                &spec.log_path,
                e,
            )
        })?;
        let mut command = std::process::Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        if let Some(cwd) = &spec.cwd {
            command.current_dir(cwd);
        }
        command.process_group(0);
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(false);
        let spawned = match &spec.bind_view {
            None => command.spawn(),
            Some((source, target)) => spawn_in_view(command, source.clone(), target.clone()),
        };
        let child = spawned.map_err(|e| {
            Error::new(
                ErrorCode::ProcessFailed,
                format!("cannot start {}", spec.program.display()),
            )
            .with_source(e)
        })?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| Error::new(ErrorCode::ProcessFailed, "spawned process has no pid"))?;
        // The child exists until we reap it, so its stat is readable even if it already exited.
        let start_time = read_start_time(pid).unwrap_or(0);
        Ok(Self {
            child: Some(child),
            identity: ProcessIdentity { pid, start_time },
            log_path: spec.log_path.clone(),
            exit: None,
        })
    }

    /// Supervises a live process another program (or an earlier run of this one) spawned,
    /// such as a VMM left running by a CLI that has exited. Its exit is noticed by polling
    /// `/proc`; an adopted process that exits reports a success status (its real status went
    /// to its parent).
    ///
    /// # Errors
    /// [`ErrorCode::ProcessFailed`] when that exact process (pid and start time) is gone.
    pub fn adopt(identity: ProcessIdentity, log_path: impl Into<PathBuf>) -> Result<Self> {
        if !identity.is_alive() {
            return Err(Error::new(
                ErrorCode::ProcessFailed,
                format!("process {} is not running any more", identity.pid),
            )
            .with_details(json!({ "pid": identity.pid, "start_time": identity.start_time })));
        }
        Ok(Self {
            child: None,
            identity,
            log_path: log_path.into(),
            exit: None,
        })
    }

    /// Whether this process was adopted rather than spawned here.
    #[must_use]
    pub fn is_adopted(&self) -> bool {
        self.child.is_none()
    }

    /// Pid and start time.
    #[must_use]
    pub fn identity(&self) -> ProcessIdentity {
        self.identity
    }

    /// The log file receiving stdout and stderr.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The exit status, if the process has exited (reaps it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = match &mut self.child {
                Some(child) => child.try_wait().ok().flatten(),
                None if self.identity.is_alive() => None,
                None => Some(std::os::unix::process::ExitStatusExt::from_raw(0)),
            };
        }
        self.exit
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_exit() {
            return Some(status);
        }
        let Some(child) = self.child.as_mut() else {
            if wait_gone(self.identity, timeout).await {
                return self.try_exit();
            }
            return None;
        };
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => {
                self.exit = Some(status);
                Some(status)
            }
            _ => None,
        }
    }

    /// Signals the whole process group (no-op once the leader has been reaped).
    pub fn signal_group(&mut self, signal: Signal) -> bool {
        if self.exit.is_some() {
            // The group may still hold children of the leader; they share its pgid.
            return Pid::from_raw(self.identity.pid)
                .is_some_and(|pid| rustix::process::kill_process_group(pid, signal).is_ok());
        }
        self.identity.signal_group(signal)
    }

    /// SIGTERM to the group, wait `grace`, then SIGKILL to the group; always reaps the leader.
    /// Returns how the process ended.
    pub async fn terminate(&mut self, grace: Duration) -> Termination {
        if let Some(status) = self.try_exit() {
            // Leftover members of the group (if any) get no grace.
            let _ = self.signal_group(Signal::KILL);
            return Termination::AlreadyExited(status);
        }
        let _ = self.signal_group(Signal::TERM);
        if let Some(status) = self.wait_timeout(grace).await {
            let _ = self.signal_group(Signal::KILL);
            return Termination::Terminated(status);
        }
        let _ = self.signal_group(Signal::KILL);
        let status = self.wait_timeout(Duration::from_secs(10)).await;
        Termination::Killed(status)
    }

    /// Kills the whole group at once and reaps the leader.
    pub async fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.signal_group(Signal::KILL);
        self.wait_timeout(Duration::from_secs(10)).await
    }

    /// The last `max_bytes` of the log, lossily decoded.
    #[must_use]
    pub fn log_tail(&self, max_bytes: u64) -> String {
        log_tail(&self.log_path, max_bytes)
    }
}

/// How [`SupervisedProcess::terminate`] ended the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// It had exited before anything was sent.
    AlreadyExited(ExitStatus),
    /// It exited within the grace period after SIGTERM.
    Terminated(ExitStatus),
    /// It needed SIGKILL (`None` if even that could not be confirmed).
    Killed(Option<ExitStatus>),
}

/// Waits until a process this program did not spawn (a re-attached VMM) is gone, polling.
/// Returns whether it exited within `timeout`.
pub async fn wait_gone(identity: ProcessIdentity, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while identity.is_alive() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// SIGTERM then SIGKILL for a process this program did not spawn. Returns whether it is gone.
pub async fn terminate_detached(identity: ProcessIdentity, grace: Duration) -> bool {
    if !identity.is_alive() {
        let _ = identity.signal_group(Signal::KILL);
        return true;
    }
    let _ = identity.signal_group(Signal::TERM);
    if wait_gone(identity, grace).await {
        let _ = identity.signal_group(Signal::KILL);
        return true;
    }
    let _ = identity.signal_group(Signal::KILL);
    wait_gone(identity, Duration::from_secs(10)).await
}

/// Pids of every live process whose process group is `pgid`.
#[must_use]
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            read_stat(*pid)
                .and_then(|s| {
                    stat_fields(&s).map(|f| {
                        f.first().is_some_and(|st| *st != "Z" && *st != "X")
                            && f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
                    })
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Spawns `command` from a fresh thread that first moves itself into a private mount namespace
/// where `source` is bind-mounted on `target`; the child inherits that namespace, the thread
/// then ends and the rest of this process never sees the mount.
fn spawn_in_view(
    mut command: tokio::process::Command,
    source: PathBuf,
    target: PathBuf,
) -> std::io::Result<tokio::process::Child> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| std::io::Error::other(format!("no async runtime to spawn in: {e}")))?;
    let thread = std::thread::Builder::new()
        .name("flick-view-spawn".into())
        .spawn(move || {
            let _runtime = runtime.enter();
            enter_view(&source, &target).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot show {} at {} in a private mount namespace: {e}",
                        source.display(),
                        target.display()
                    ),
                )
            })?;
            command.spawn()
        })?;
    thread
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("view spawn thread panicked")))
}

/// On the calling thread only: a private mount namespace with `source` bind-mounted on
/// `target`.
fn enter_view(source: &Path, target: &Path) -> std::io::Result<()> {
    use rustix::mount::MountPropagationFlags;
    use rustix::thread::UnshareFlags;
    // SAFETY: unsharing the filesystem context and the mount namespace affects only this
    // thread (one of our own that spawns a single child and ends); no other thread observes
    // the change, and no file descriptor or memory is invalidated by it.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::FS | UnshareFlags::NEWNS)? };
    // Nothing mounted here may propagate back to the host.
    rustix::mount::mount_change(
        c"/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )?;
    rustix::mount::mount_bind(source, target)?;
    Ok(())
}

fn open_log(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(ErrorCode::ProcessFailed, "cannot open log file", path, e))
}

/// The last `max_bytes` of a file, lossily decoded (empty if unreadable).
#[must_use]
pub fn log_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max_bytes);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = file.take(max_bytes).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    // Start at a line boundary when the tail cut a line in half.
    if start > 0
        && let Some(nl) = text.find('\n')
    {
        return text[nl + 1..].to_string();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, log: &Path) -> ProcessSpec {
        ProcessSpec::new("/bin/sh", log).arg("-c").arg(script)
    }

    #[tokio::test]
    async fn spawned_process_leads_its_own_group_and_logs() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let mut p =
            SupervisedProcess::spawn(&sh("echo out; echo err >&2; sleep 30", &log)).unwrap();
        let pid = p.identity().pid;
        // The process group is the pid itself, not ours.
        let stat = read_stat(pid).unwrap();
        let f = stat_fields(&stat).unwrap();
        assert_eq!(f[2].parse::<i32>().unwrap(), pid, "pgid");
        let own = read_stat(std::process::id() as i32).unwrap();
        assert_ne!(stat_fields(&own).unwrap()[2].parse::<i32>().unwrap(), pid);
        assert!(p.identity().is_alive());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tail = p.log_tail(1024);
        assert!(tail.contains("out") && tail.contains("err"), "{tail:?}");
        assert!(matches!(
            p.terminate(Duration::from_secs(2)).await,
            Termination::Terminated(_)
        ));
        assert!(!p.identity().is_alive());
    }

    #[tokio::test]
    async fn terminate_escalates_to_sigkill_and_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        // The leader and a grandchild both ignore SIGTERM.
        let mut p = SupervisedProcess::spawn(&sh(
            "trap '' TERM; (trap '' TERM; sleep 60) & sleep 60",
            &log,
        ))
        .unwrap();
        let pgid = p.identity().pid;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(group_members(pgid).len() >= 2, "{:?}", group_members(pgid));
        let end = p.terminate(Duration::from_millis(200)).await;
        assert!(matches!(end, Termination::Killed(Some(_))), "{end:?}");
        // Give the kernel a moment to reap the reparented grandchild.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !group_members(pgid).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(group_members(pgid).is_empty(), "{:?}", group_members(pgid));
    }

    #[tokio::test]
    async fn identity_detects_exit_and_rejects_recycled_pids() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let mut p = SupervisedProcess::spawn(&sh("exit 3", &log)).unwrap();
        let status = p.wait_timeout(Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(!p.identity().is_alive());
        let me = ProcessIdentity::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let fake = ProcessIdentity {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(
            !fake.is_alive(),
            "a different start time is a different process"
        );
        assert!(!fake.signal_group(Signal::TERM));
    }

    #[tokio::test]
    async fn missing_binary_is_binary_not_found_and_creates_no_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let err =
            SupervisedProcess::spawn(&ProcessSpec::new(dir.path().join("nope"), &log)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BinaryNotFound);
        assert!(!log.exists());
    }

    #[tokio::test]
    async fn detached_termination_works_on_processes_we_did_not_spawn_as_children() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let mut p = SupervisedProcess::spawn(&sh("sleep 60", &log)).unwrap();
        let id = p.identity();
        // Reap from a background task, as the real parent would, while we act "detached".
        let reaper = tokio::spawn(async move { p.wait_timeout(Duration::from_secs(20)).await });
        assert!(terminate_detached(id, Duration::from_secs(2)).await);
        assert!(reaper.await.unwrap().is_some());
    }

    #[tokio::test]
    async fn bind_view_shows_the_source_at_the_target_only_inside_the_namespace() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root (CAP_SYS_ADMIN) for a private mount namespace"
        );
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("vm-a");
        let target = dir.path().join("view");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(source.join("marker"), "vm-a").unwrap();
        let log = dir.path().join("out.log");
        let mut spec = sh(
            &format!(
                "cat {}/marker; echo written > {}/from-inside",
                target.display(),
                target.display()
            ),
            &log,
        );
        spec.bind_view = Some((source.clone(), target.clone()));
        let mut p = SupervisedProcess::spawn(&spec).unwrap();
        let status = p.wait_timeout(Duration::from_secs(5)).await.unwrap();
        assert!(status.success(), "{}", p.log_tail(4096));
        assert!(p.log_tail(4096).contains("vm-a"));
        // The write through the view landed in the source; the host's target stayed empty.
        assert_eq!(
            std::fs::read_to_string(source.join("from-inside")).unwrap(),
            "written\n"
        );
        assert!(std::fs::read_dir(&target).unwrap().next().is_none());
    }

    #[test]
    fn log_tail_starts_at_a_line_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "first line\nsecond line\nthird\n").unwrap();
        assert_eq!(log_tail(&path, 14), "third\n");
        assert_eq!(log_tail(&path, 1000), "first line\nsecond line\nthird\n");
        assert_eq!(log_tail(&dir.path().join("missing"), 10), "");
    }
}
