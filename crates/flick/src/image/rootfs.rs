//! Root filesystem image helpers: blank ext4 images and cheap clones.
//!
//! - [`create_blank_ext4`] makes a sparse file of the requested size and formats it with
//!   `mkfs.ext4` (e2fsprogs), so an empty 4 GiB image takes a few MiB on disk.
//! - [`clone_rootfs`] first asks the filesystem for a reflink (`FICLONE`: btrfs, XFS, bcachefs …),
//!   which shares every block. Where that is not supported it copies only the allocated ranges
//!   found with `SEEK_DATA`/`SEEK_HOLE` and leaves holes as holes.
//!
//! Both remove their output on failure.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use rustix::fs::SeekFrom;
use serde_json::json;

use crate::error::{Error, ErrorCode, Result};

/// How a clone was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMethod {
    /// A reflink: the clone shares the source's blocks.
    Reflink,
    /// A copy of the allocated ranges; holes stay holes.
    SparseCopy,
}

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
    let input =
        File::open(src).map_err(|e| Error::io(ErrorCode::RootfsCloneFailed, "opening", src, e))?;
    let meta = input
        .metadata()
        .map_err(|e| Error::io(ErrorCode::RootfsCloneFailed, "inspecting", src, e))?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorCode::RootfsCloneFailed,
            format!("{} is not a regular file", src.display()),
        ));
    }
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| Error::io(ErrorCode::RootfsCloneFailed, "creating", dst, e))?;
    let result = (|| {
        if rustix::fs::ioctl_ficlone(&output, &input).is_ok() {
            output
                .sync_all()
                .map_err(|e| Error::io(ErrorCode::RootfsCloneFailed, "syncing", dst, e))?;
            return Ok(CloneMethod::Reflink);
        }
        sparse_copy(&input, &output, meta.len(), src, dst)?;
        Ok(CloneMethod::SparseCopy)
    })();
    if result.is_err() {
        drop(output);
        let _ = std::fs::remove_file(dst);
    }
    result
}

fn sparse_copy(input: &File, output: &File, len: u64, src: &Path, dst: &Path) -> Result<()> {
    let read_err = |e: std::io::Error| Error::io(ErrorCode::RootfsCloneFailed, "reading", src, e);
    let write_err = |e: std::io::Error| Error::io(ErrorCode::RootfsCloneFailed, "writing", dst, e);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let start = match rustix::fs::seek(input, SeekFrom::Data(pos)) {
            Ok(off) => off,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(rustix::io::Errno::INVAL) => pos,  // no SEEK_DATA support: copy everything
            Err(e) => return Err(read_err(e.into())),
        };
        let end = match rustix::fs::seek(input, SeekFrom::Hole(start)) {
            Ok(off) => off.min(len),
            Err(_) => len,
        };
        let mut off = start;
        while off < end {
            let want = usize::try_from((end - off).min(buf.len() as u64)).unwrap_or(buf.len());
            let n = input.read_at(&mut buf[..want], off).map_err(read_err)?;
            if n == 0 {
                break;
            }
            output.write_all_at(&buf[..n], off).map_err(write_err)?;
            off += n as u64;
        }
        pos = end.max(start + 1);
    }
    output.set_len(len).map_err(write_err)?;
    output.sync_all().map_err(write_err)?;
    Ok(())
}
