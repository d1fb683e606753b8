//! Persistent VM records for programs that outlive a single process (the `flick` CLI).
//!
//! Layout under the store root (`<data dir>/vms`):
//!
//! ```text
//! vms/
//!   .lock            global lock: id/name allocation, listing-consistent changes
//!   <id>.json        one record per VM, replaced atomically (temp file, fsync, rename, fsync dir)
//!   <id>.lock        per-VM lock held for the whole of an operation on that VM
//!   <id>/            files flick made for the VM (scratch disk, ...)
//! ```
//!
//! Crash safety comes from the write-ahead discipline of the caller: every transition is
//! recorded (state `starting`, `stopping`, ... with the operating process as `owner`) before
//! its side effects, and the result after. A record left in a transitional state by an owner
//! that is no longer alive tells the next program what to finish or undo. Reading records
//! needs no lock (a reader sees the old or the new file, never a mix); changing one needs its
//! per-VM lock. Locks are `flock`s, released by the kernel when a process dies.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::VmConfig;
use crate::error::{Error, ErrorCode, Result};
use crate::process::ProcessIdentity;
use crate::vm::AttachRecord;

/// A VM's state as recorded. Transitional states (`creating`, `starting`, `stopping`,
/// `removing`) name an operation in progress; with a dead `owner` they mark an interrupted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// Being created (files, network).
    Creating,
    /// Created, not running.
    Created,
    /// Firecracker is being started.
    Starting,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Being stopped.
    Stopping,
    /// Stopped by request.
    Stopped,
    /// Firecracker exited without being asked to.
    Crashed,
    /// Being removed.
    Removing,
    /// A failed operation; `last_error` says why.
    Error,
}

impl RecordState {
    /// Whether an operation is in progress (or was interrupted).
    #[must_use]
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            Self::Creating | Self::Starting | Self::Stopping | Self::Removing
        )
    }

    /// Whether a live Firecracker is expected.
    #[must_use]
    pub fn expects_process(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }

    /// The lowercase name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Created => "created",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Crashed => "crashed",
            Self::Removing => "removing",
            Self::Error => "error",
        }
    }
}

impl std::fmt::Display for RecordState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One VM as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Stable id (also the runtime-dir name).
    pub id: String,
    /// Unique human name.
    pub name: String,
    /// State.
    pub state: RecordState,
    /// Creation time (seconds since the Unix epoch).
    pub created_at: u64,
    /// Last change.
    pub updated_at: u64,
    /// The process performing the current transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ProcessIdentity>,
    /// The caller's own description of the VM (CLI options, image, runtime...).
    #[serde(default)]
    pub spec: Value,
    /// The VM configuration flick boots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<VmConfig>,
    /// Everything needed to re-attach while Firecracker runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<AttachRecord>,
    /// Host networking of the VM (TAPs, addresses, policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::net::host::VmNetwork>,
    /// The agent's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_token: Option<String>,
    /// Exit or failure details of the last operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<Value>,
}

impl VmRecord {
    /// A new record in `creating` state owned by this process.
    #[must_use]
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        let now = crate::unix_time();
        Self {
            id: id.into(),
            name: name.into(),
            state: RecordState::Creating,
            created_at: now,
            updated_at: now,
            owner: current_process(),
            spec: Value::Null,
            config: None,
            attach: None,
            network: None,
            agent_token: None,
            last_error: None,
        }
    }

    /// The Firecracker process recorded for the VM.
    #[must_use]
    pub fn process(&self) -> Option<ProcessIdentity> {
        self.attach.as_ref().and_then(|a| a.status.process)
    }

    /// Whether the recorded owner of a transition is gone (or there is none).
    #[must_use]
    pub fn owner_is_gone(&self) -> bool {
        self.owner.is_none_or(|o| !o.is_alive())
    }
}

/// This process's identity, for `owner`.
#[must_use]
pub fn current_process() -> Option<ProcessIdentity> {
    ProcessIdentity::of(rustix::process::getpid().as_raw_nonzero().get()).ok()
}

/// An exclusive lock, held until dropped (or until the holder dies).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// The record store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Ids are used verbatim as file names: they must be what [`sanitize_vm_id`] keeps unchanged.
///
/// [`sanitize_vm_id`]: crate::runtime::sanitize_vm_id
fn check_id(id: &str) -> Result<()> {
    if crate::runtime::sanitize_vm_id(id)? == id {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("{id:?} is not a valid VM id (letters, digits, '-', '_', '.')"),
        ))
    }
}

fn store_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(ErrorCode::StoreFailed, what, path, e)
}

impl Store {
    /// Opens (creating) the store at `root`.
    ///
    /// # Errors
    /// [`ErrorCode::StoreFailed`] when the directory cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| store_err("cannot create", &root, e))?;
        Ok(Self { root })
    }

    /// The store directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.json"))
    }

    /// The directory for files flick makes for one VM (created on demand by the caller).
    #[must_use]
    pub fn files_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn lock_file(&self, path: &Path, timeout: Duration) -> Result<StoreLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| store_err("cannot open lock", path, e))?;
        let deadline = Instant::now() + timeout;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StoreLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::new(
                        ErrorCode::StoreFailed,
                        format!(
                            "{} is locked by another flick process (waited {timeout:?})",
                            path.display()
                        ),
                    )
                    .with_details(json!({ "lock": path })));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(store_err("cannot lock", path, e));
                }
            }
        }
    }

    /// The global lock (id and name allocation).
    ///
    /// # Errors
    /// [`ErrorCode::StoreFailed`] after `timeout`.
    pub fn lock_global(&self, timeout: Duration) -> Result<StoreLock> {
        self.lock_file(&self.root.join(".lock"), timeout)
    }

    /// The lock of one VM, held for a whole operation on it.
    ///
    /// # Errors
    /// [`ErrorCode::StoreFailed`] after `timeout`.
    pub fn lock_vm(&self, id: &str, timeout: Duration) -> Result<StoreLock> {
        check_id(id)?;
        self.lock_file(&self.root.join(format!("{id}.lock")), timeout)
    }

    /// The VM's lock if nobody holds it now.
    ///
    /// # Errors
    /// [`ErrorCode::StoreFailed`] when the lock file cannot be opened.
    pub fn try_lock_vm(&self, id: &str) -> Result<Option<StoreLock>> {
        match self.lock_vm(id, Duration::ZERO) {
            Ok(lock) => Ok(Some(lock)),
            Err(e) if e.code() == ErrorCode::StoreFailed && e.details().is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One record.
    ///
    /// # Errors
    /// [`ErrorCode::StoreFailed`] when it exists but cannot be read or parsed.
    pub fn load(&self, id: &str) -> Result<Option<VmRecord>> {
        let path = self.record_path(id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::new(
                    ErrorCode::StoreFailed,
                    format!("{} is not a valid VM record", path.display()),
                )
                .with_source(e)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(store_err("cannot read", &path, e)),
        }
    }

    /// Writes a record atomically and durably (the `updated_at` stamp is set here).
    ///
    /// # Errors
    /// [`ErrorCode::StoreFailed`].
    pub fn save(&self, record: &mut VmRecord) -> Result<()> {
        check_id(&record.id)?;
        record.updated_at = crate::unix_time();
        let path = self.record_path(&record.id);
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| {
            Error::new(ErrorCode::StoreFailed, "cannot encode record").with_source(e)
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.root)
            .map_err(|e| store_err("cannot create temp file in", &self.root, e))?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| store_err("cannot write", tmp.path(), e))?;
        tmp.persist(&path)
            .map_err(|e| store_err("cannot rename into", &path, e.error))?;
        self.sync_dir();
        Ok(())
    }

    fn sync_dir(&self) {
        if let Ok(dir) = File::open(&self.root) {
            let _ = dir.sync_all();
        }
    }

    /// Removes a record, its lock file and its files directory.
    ///
    /// # Errors
    /// [`ErrorCode::StoreFailed`].
    pub fn delete(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let files = self.files_dir(id);
        if files.exists() {
            std::fs::remove_dir_all(&files).map_err(|e| store_err("cannot remove", &files, e))?;
        }
        let path = self.record_path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(store_err("cannot remove", &path, e)),
        }
        // The lock file goes last; a waiter holding the old inode finds no record.
        let _ = std::fs::remove_file(self.root.join(format!("{id}.lock")));
        self.sync_dir();
        Ok(())
    }

    /// Every record, sorted by creation time then id. Unreadable records are skipped with
    /// a warning (and reported by `invalid`).
    ///
    /// # Errors
    /// [`ErrorCode::StoreFailed`] when the directory cannot be read.
    pub fn list(&self) -> Result<Vec<VmRecord>> {
        Ok(self.scan()?.0)
    }

    /// Records plus the paths of files that are not valid records.
    ///
    /// # Errors
    /// [`ErrorCode::StoreFailed`] when the directory cannot be read.
    pub fn scan(&self) -> Result<(Vec<VmRecord>, Vec<PathBuf>)> {
        let entries =
            std::fs::read_dir(&self.root).map_err(|e| store_err("cannot list", &self.root, e))?;
        let mut records = Vec::new();
        let mut invalid = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if id.starts_with('.') {
                continue;
            }
            match self.load(id) {
                Ok(Some(r)) => records.push(r),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "skipping unreadable VM record");
                    invalid.push(entry.path());
                }
            }
        }
        records.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok((records, invalid))
    }

    /// A record by exact id, by name, or by a unique id prefix.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`]; [`ErrorCode::InvalidArgument`] for an ambiguous prefix.
    pub fn resolve(&self, key: &str) -> Result<VmRecord> {
        if check_id(key).is_ok()
            && let Some(r) = self.load(key)?
        {
            return Ok(r);
        }
        let records = self.list()?;
        if let Some(r) = records.iter().find(|r| r.name == key) {
            return Ok(r.clone());
        }
        let matches: Vec<&VmRecord> = records.iter().filter(|r| r.id.starts_with(key)).collect();
        match matches.as_slice() {
            [one] if !key.is_empty() => Ok((*one).clone()),
            [] | [_] => Err(Error::new(
                ErrorCode::NotFound,
                format!("no VM named or with id {key:?}"),
            )
            .with_details(json!({ "vm": key }))),
            many => Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{key:?} matches {} VMs; give more of the id", many.len()),
            )
            .with_details(json!({ "matches": many.iter().map(|r| &r.id).collect::<Vec<_>>() }))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_resolve_by_id_name_and_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("vms")).unwrap();
        let mut a = VmRecord::new("a1b2c3", "alpha");
        store.save(&mut a).unwrap();
        let mut b = VmRecord::new("a1ffff", "beta");
        b.created_at += 1;
        store.save(&mut b).unwrap();
        assert_eq!(store.load("a1b2c3").unwrap().unwrap(), a);
        assert_eq!(store.resolve("beta").unwrap().id, "a1ffff");
        assert_eq!(store.resolve("a1b").unwrap().id, "a1b2c3");
        assert_eq!(
            store.resolve("a1").unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            store.resolve("zzz").unwrap_err().code(),
            ErrorCode::NotFound
        );
        let ids: Vec<_> = store.list().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["a1b2c3", "a1ffff"]);
        store.delete("a1b2c3").unwrap();
        assert!(store.load("a1b2c3").unwrap().is_none());
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(store.root())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn a_garbage_record_is_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("bad.json"), b"{not json").unwrap();
        let mut ok = VmRecord::new("good", "good");
        store.save(&mut ok).unwrap();
        let (records, invalid) = store.scan().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(invalid, [dir.path().join("bad.json")]);
        assert_eq!(
            store.load("bad").unwrap_err().code(),
            ErrorCode::StoreFailed
        );
    }

    #[test]
    fn vm_locks_exclude_each_other_and_die_with_their_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let held = store.lock_vm("x", Duration::ZERO).unwrap();
        assert!(store.try_lock_vm("x").unwrap().is_none());
        let err = store.lock_vm("x", Duration::from_millis(20)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::StoreFailed);
        drop(held);
        assert!(store.try_lock_vm("x").unwrap().is_some());
        assert_eq!(
            store.lock_vm("../x", Duration::ZERO).unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn owners_are_this_process_and_dead_owners_are_noticed() {
        let mut r = VmRecord::new("o", "o");
        assert!(!r.owner_is_gone());
        r.owner = Some(ProcessIdentity {
            pid: r.owner.unwrap().pid,
            start_time: 1,
        });
        assert!(r.owner_is_gone());
        r.owner = None;
        assert!(r.owner_is_gone());
        assert!(RecordState::Starting.is_transitional());
        assert!(RecordState::Paused.expects_process());
    }
}
