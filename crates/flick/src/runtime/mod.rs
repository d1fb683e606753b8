//! Per-VM runtime directories and drive staging.
//!
//! Every VM gets `<runtime root>/<sanitized vm id>/` (mode 0700) holding its API socket, vsock
//! socket, staged drives, Firecracker's log and the serial console log. The root defaults to
//! `/dev/shm/flick/runtime` when `/dev/shm` is a usable tmpfs, so staged drive copies live in
//! memory and vanish at reboot; otherwise a directory under the system temp dir.

pub mod socket_wait;
pub mod staging;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorCode, Result};

/// The default runtime root for this host.
#[must_use]
pub fn default_runtime_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if is_usable_tmpfs_dir(shm) {
        shm.join("flick/runtime")
    } else {
        std::env::temp_dir().join("flick/runtime")
    }
}

fn is_usable_tmpfs_dir(path: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(st) = rustix::fs::statfs(path) else {
        return false;
    };
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let tmpfs = (st.f_type as i64) == TMPFS_MAGIC;
    tmpfs && rustix::fs::access(path, rustix::fs::Access::WRITE_OK).is_ok()
}

/// Maximum length of a sanitized VM id (it becomes a path component and a name prefix).
pub const MAX_VM_ID_LEN: usize = 64;

/// Turns a VM id into a safe path component: letters, digits, `-`, `_` and `.` are kept, every
/// other character becomes `-`, leading dots are removed, and the result is at most
/// [`MAX_VM_ID_LEN`] bytes. When anything had to change, a short hash of the original is
/// appended so that two different ids never map to the same directory.
///
/// # Errors
/// [`ErrorCode::InvalidArgument`] for an empty id.
pub fn sanitize_vm_id(id: &str) -> Result<String> {
    if id.is_empty() {
        return Err(Error::new(ErrorCode::InvalidArgument, "VM id is empty"));
    }
    let mapped: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_start_matches('.');
    if trimmed == id && id.len() <= MAX_VM_ID_LEN {
        return Ok(id.to_string());
    }
    let hash = fnv1a(id.as_bytes());
    let suffix = format!("-{:08x}", hash as u32);
    let keep = MAX_VM_ID_LEN - suffix.len();
    let mut base: String = trimmed.chars().take(keep).collect();
    if base.is_empty() {
        base.push_str("vm");
    }
    Ok(format!("{base}{suffix}"))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A VM's runtime directory and the well-known paths inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// Creates `<root>/<sanitized id>` with mode 0700 (and `drives/` inside it). The root is
    /// created if needed.
    ///
    /// # Errors
    /// [`ErrorCode::AlreadyExists`] when the directory exists (another VM owns it);
    /// [`ErrorCode::IoError`] when it cannot be created.
    pub fn create(root: &Path, vm_id: &str) -> Result<Self> {
        let name = sanitize_vm_id(vm_id)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(root)
            .map_err(|e| Error::io(ErrorCode::IoError, "cannot create runtime root", root, e))?;
        let path = root.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::new(
                    ErrorCode::AlreadyExists,
                    format!("runtime directory {} exists already", path.display()),
                ));
            }
            Err(e) => {
                return Err(Error::io(
                    ErrorCode::IoError,
                    "cannot create runtime directory",
                    &path,
                    e,
                ));
            }
        }
        // The umask may have narrowed the mode; make it exactly 0700.
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
        let dir = Self { path };
        if let Err(e) = std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir.drives_dir())
        {
            let _ = std::fs::remove_dir_all(&dir.path);
            return Err(Error::io(
                ErrorCode::IoError,
                "cannot create drives directory",
                &dir.drives_dir(),
                e,
            ));
        }
        Ok(dir)
    }

    /// Wraps an existing directory (re-attach after a restart).
    #[must_use]
    pub fn open(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Firecracker's API socket.
    #[must_use]
    pub fn api_socket(&self) -> PathBuf {
        self.path.join("firecracker.sock")
    }

    /// The host side of the vsock device.
    #[must_use]
    pub fn vsock_socket(&self) -> PathBuf {
        self.path.join("vsock.sock")
    }

    /// Where staged drives go.
    #[must_use]
    pub fn drives_dir(&self) -> PathBuf {
        self.path.join("drives")
    }

    /// Firecracker's stdout/stderr and logger output.
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.path.join("firecracker.log")
    }

    /// The guest's serial console.
    #[must_use]
    pub fn serial_log_path(&self) -> PathBuf {
        self.path.join("serial.log")
    }

    /// Firecracker's metrics file.
    #[must_use]
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.json")
    }

    /// Removes the directory and everything in it. Idempotent.
    ///
    /// # Errors
    /// [`ErrorCode::CleanupFailed`] when something exists and cannot be removed.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                ErrorCode::CleanupFailed,
                "cannot remove runtime directory",
                &self.path,
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn plain_ids_are_kept_and_others_are_made_safe() {
        assert_eq!(sanitize_vm_id("vm-1_a.b").unwrap(), "vm-1_a.b");
        for bad in ["../etc", "a/b", "..", ".hidden", "sp ace", "é"] {
            let s = sanitize_vm_id(bad).unwrap();
            assert!(!s.contains('/') && !s.starts_with('.'), "{bad:?} -> {s:?}");
        }
        assert_ne!(
            sanitize_vm_id("a/b").unwrap(),
            sanitize_vm_id("a?b").unwrap()
        );
        assert_eq!(
            sanitize_vm_id("").unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
        assert!(sanitize_vm_id(&"x".repeat(500)).unwrap().len() <= MAX_VM_ID_LEN);
    }

    proptest! {
        #[test]
        fn sanitized_ids_are_single_safe_components(id in "\\PC{1,100}") {
            let s = sanitize_vm_id(&id).unwrap();
            prop_assert!(!s.is_empty() && s.len() <= MAX_VM_ID_LEN);
            prop_assert!(!s.starts_with('.'));
            prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
            prop_assert_eq!(Path::new(&s).components().count(), 1);
        }

        #[test]
        fn distinct_ids_map_to_distinct_names(a in "[a-z/ ]{1,12}", b in "[a-z/ ]{1,12}") {
            prop_assume!(a != b);
            prop_assert_ne!(sanitize_vm_id(&a).unwrap(), sanitize_vm_id(&b).unwrap());
        }
    }

    #[test]
    fn runtime_dir_is_private_exclusive_and_removable() {
        let root = tempfile::tempdir().unwrap();
        let dir = RuntimeDir::create(root.path(), "vm/1").unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        assert!(dir.drives_dir().is_dir());
        assert!(dir.api_socket().starts_with(dir.path()));
        let again = RuntimeDir::create(root.path(), "vm/1").unwrap_err();
        assert_eq!(again.code(), ErrorCode::AlreadyExists);
        dir.remove().unwrap();
        assert!(!dir.path().exists());
        dir.remove().unwrap();
    }

    #[test]
    fn default_root_is_on_tmpfs_here() {
        let root = default_runtime_root();
        assert!(root.ends_with("flick/runtime"));
    }
}
