//! Snapshots as flick stores them: Firecracker's state and memory files, private copies of the
//! VM's staged drives, and `snapshot.json` describing how to bring clones back.
//!
//! Layout of a snapshot directory:
//! ```text
//! <dir>/vm.snap          Firecracker's microVM state
//! <dir>/vm.mem           guest memory
//! <dir>/drives/<id>.img  sparse copies of the VM's private drives at snapshot time
//! <dir>/snapshot.json    this module's [`Snapshot`]
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::error::{Error, ErrorCode, Result};

/// Full or incremental.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// All guest memory.
    #[default]
    Full,
    /// Memory dirtied since the last snapshot (needs dirty-page tracking).
    Diff,
}

/// Where and how to snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// A directory that must not exist yet.
    pub dir: PathBuf,
    /// Full or Diff.
    pub kind: SnapshotKind,
}

impl SnapshotOptions {
    /// A full snapshot into `dir`.
    pub fn full(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            kind: SnapshotKind::Full,
        }
    }
}

/// A drive copy kept in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDrive {
    /// Drive id.
    pub drive_id: String,
    /// The copy inside the snapshot directory.
    pub file: PathBuf,
}

/// A stored snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// Firecracker's state file.
    pub state_path: PathBuf,
    /// Guest memory file.
    pub mem_path: PathBuf,
    /// Full or Diff.
    pub kind: SnapshotKind,
    /// Private drive copies.
    pub drives: Vec<SnapshotDrive>,
    /// Id of the VM it was taken from.
    pub source_vm: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// The source VM's configuration as its caller gave it.
    pub config: VmConfig,
    /// The configuration as Firecracker received it (the paths recorded in the state file).
    pub effective_config: VmConfig,
    /// The view path the source Firecracker saw its runtime directory at, if any.
    pub view_dir: Option<PathBuf>,
    /// The source VM's runtime directory on the host.
    pub source_runtime_dir: PathBuf,
}

impl Snapshot {
    /// `(state file, memory file)` inside `dir`.
    #[must_use]
    pub fn file_paths(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("vm.snap"), dir.join("vm.mem"))
    }

    /// Writes `snapshot.json` (atomically).
    ///
    /// # Errors
    /// [`ErrorCode::SnapshotFailed`].
    pub fn save(&self) -> Result<()> {
        let path = self.dir.join("snapshot.json");
        let text = serde_json::to_vec_pretty(self).map_err(|e| {
            Error::new(ErrorCode::Internal, "cannot encode snapshot.json").with_source(e)
        })?;
        let tmp = self.dir.join(".snapshot.json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::io(ErrorCode::SnapshotFailed, "cannot write", &path, e))
    }

    /// Reads a snapshot directory.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] when it has no `snapshot.json`; [`ErrorCode::SnapshotFailed`]
    /// when it cannot be read or parsed, or its files are missing.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("snapshot.json");
        let text = std::fs::read(&path).map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorCode::NotFound
            } else {
                ErrorCode::SnapshotFailed
            };
            Error::io(code, "cannot read", &path, e)
        })?;
        let snapshot: Self = serde_json::from_slice(&text).map_err(|e| {
            Error::new(
                ErrorCode::SnapshotFailed,
                format!("{} is not a flick snapshot", path.display()),
            )
            .with_source(e)
        })?;
        for file in [&snapshot.state_path, &snapshot.mem_path]
            .into_iter()
            .chain(snapshot.drives.iter().map(|d| &d.file))
        {
            if !file.is_file() {
                return Err(Error::new(
                    ErrorCode::SnapshotFailed,
                    format!("snapshot file {} is missing", file.display()),
                ));
            }
        }
        Ok(snapshot)
    }
}
