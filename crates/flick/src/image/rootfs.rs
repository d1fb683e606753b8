//! Root filesystem image helpers: blank ext4 images and cheap clones.
//!
//! - [`create_blank_ext4`] makes a sparse file of the requested size and formats it with
//!   `mkfs.ext4` (e2fsprogs), so an empty 4 GiB image takes a few MiB on disk.
//! - [`clone_rootfs`] first asks the filesystem for a reflink (`FICLONE`: btrfs, XFS, bcachefs …),
//!   which shares every block. Where that is not supported it copies only the allocated ranges
//!   found with `SEEK_DATA`/`SEEK_HOLE` and leaves holes as holes.
//!
//! Both remove their output on failure.

use std::fs::OpenOptions;
use std::path::Path;

use serde_json::json;

use crate::error::{Error, ErrorCode, Result};

/// How a clone was made: the same copier the runtime stages drives with.
pub use crate::runtime::staging::StageMethod as CloneMethod;

/// Creates a blank ext4 image of `size_mib` MiB at `path` (which must not exist).
///
/// # Errors
/// [`ErrorCode::RootfsCreateFailed`] for a zero size, an existing `path`, a missing `mkfs.ext4`
/// or its failure (stderr in the message). Nothing is left at `path` on error.
pub fn create_blank_ext4(path: &Path, size_mib: u64) -> Result<()> {
    let fail = |msg: String| {
        Error::new(ErrorCode::RootfsCreateFailed, msg).with_details(json!({ "path": path }))
    };
    if size_mib == 0 {
        return Err(fail("an ext4 image needs a size of at least 1 MiB".into()));
    }
    let bytes = size_mib
        .checked_mul(1 << 20)
        .ok_or_else(|| fail(format!("{size_mib} MiB is too large")))?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(ErrorCode::RootfsCreateFailed, "creating", path, e))?;
    let result = (|| {
        file.set_len(bytes)
            .map_err(|e| Error::io(ErrorCode::RootfsCreateFailed, "sizing", path, e))?;
        drop(file);
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(path)
            .output()
            .map_err(|e| fail("running mkfs.ext4 (install e2fsprogs)".into()).with_source(e))?;
        if !out.status.success() {
            return Err(fail(format!(
                "mkfs.ext4 {} failed ({}): {}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Clones `src` to `dst` (which must not exist) by reflink, or by a sparse copy where reflinks
/// are not supported.
///
/// # Errors
/// [`ErrorCode::RootfsCloneFailed`] naming the path that failed. Nothing is left at `dst` on
/// error.
pub fn clone_rootfs(src: &Path, dst: &Path) -> Result<CloneMethod> {
    crate::runtime::staging::stage_file(src, dst, ErrorCode::RootfsCloneFailed)
}
