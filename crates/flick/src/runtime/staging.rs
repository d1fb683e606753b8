//! Giving a VM a private writable copy of a drive without paying for the whole image.
//!
//! [`stage_file`] tries, in order:
//! 1. a reflink (`FICLONE`): instant, shares every block until written (btrfs, xfs, ...);
//! 2. a sparse-aware copy: walks the source's data extents with `SEEK_DATA`/`SEEK_HOLE`, and
//!    within them skips blocks that are entirely zero, so the copy allocates only what the source
//!    really holds — a 1 GiB image with 50 MiB of data costs about 50 MiB of tmpfs.
//!
//! The source is opened read-only and never written. The destination is created exclusively
//! (never overwriting anything) with mode 0600 and removed again if the copy fails.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::SeekFrom;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};

/// How a drive was staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageMethod {
    /// A copy-on-write clone (`FICLONE`).
    Reflink,
    /// A copy of the data extents only, with all-zero blocks left as holes.
    SparseCopy,
}

/// Bytes of the staging copy buffer (also the zero-detection granularity).
const CHUNK: usize = 1 << 20;
/// Holes are punched at this granularity inside data extents (a filesystem block or page).
const BLOCK: usize = 4096;

/// Copies `source` to a new file `dest` without writing unallocated or all-zero blocks.
///
/// # Errors
/// `code` (such as [`ErrorCode::DriveStagingFailed`] or [`ErrorCode::RootfsCloneFailed`]) with
/// the path when the source cannot be read, the destination exists or cannot be written (for
/// example because the tmpfs is full). Nothing is left at `dest` on error.
pub fn stage_file(source: &Path, dest: &Path, code: ErrorCode) -> Result<StageMethod> {
    let src = File::open(source).map_err(|e| Error::io(code, "cannot open", source, e))?;
    let meta = src
        .metadata()
        .map_err(|e| Error::io(code, "cannot stat", source, e))?;
    if !meta.is_file() {
        return Err(Error::new(
            code,
            format!("{} is not a regular file", source.display()),
        ));
    }
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(|e| Error::io(code, "cannot create", dest, e))?;
    let result = copy_into(&src, &dst, meta.len());
    match result {
        Ok(method) => Ok(method),
        Err(e) => {
            drop(dst);
            let _ = std::fs::remove_file(dest);
            Err(Error::io(code, "cannot stage into", dest, e)
                .with_details(serde_json::json!({ "source": source, "dest": dest })))
        }
    }
}

fn copy_into(src: &File, dst: &File, len: u64) -> std::io::Result<StageMethod> {
    if rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(StageMethod::Reflink);
    }
    dst.set_len(len)?;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let data = match rustix::fs::seek(src.as_fd(), SeekFrom::Data(offset)) {
            Ok(pos) => pos,
            // ENXIO: no data at or after `offset`; the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            // Filesystems without SEEK_DATA: treat everything as data.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => offset,
            Err(e) => return Err(e.into()),
        };
        let hole = match rustix::fs::seek(src.as_fd(), SeekFrom::Hole(data)) {
            Ok(pos) => pos.min(len),
            Err(_) => len,
        };
        copy_extent(src, dst, data, hole, &mut buf)?;
        offset = hole;
    }
    dst.sync_all()?;
    Ok(StageMethod::SparseCopy)
}

/// Copies `[start, end)` chunk by chunk, writing only blocks that are not all zero.
fn copy_extent(
    src: &File,
    dst: &File,
    start: u64,
    end: u64,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let mut pos = start;
    while pos < end {
        let want = usize::try_from((end - pos).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = read_full_at(src, &mut buf[..want], pos)?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "source shrank while staging",
            ));
        }
        write_nonzero_blocks(dst, &buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes runs of non-zero blocks of `data` at `offset`, skipping all-zero blocks.
fn write_nonzero_blocks(dst: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut run_start: Option<usize> = None;
    let mut i = 0;
    while i < data.len() {
        let end = (i + BLOCK).min(data.len());
        let zero = data[i..end].iter().all(|b| *b == 0);
        match (zero, run_start) {
            (false, None) => run_start = Some(i),
            (true, Some(s)) => {
                dst.write_all_at(&data[s..i], offset + s as u64)?;
                run_start = None;
            }
            _ => {}
        }
        i = end;
    }
    if let Some(s) = run_start {
        dst.write_all_at(&data[s..], offset + s as u64)?;
    }
    Ok(())
}

/// Bytes actually allocated to a file (`st_blocks * 512`).
#[must_use]
pub fn allocated_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.blocks() * 512)
}

/// Whether a drive gets a private staged copy.
///
/// Writable drives are staged when the host option `ephemeral_writable_drives` is on, unless
/// the drive says `ephemeral: Some(false)`; read-only drives only when they say
/// `ephemeral: Some(true)`.
#[must_use]
pub fn should_stage(
    read_only: bool,
    ephemeral: Option<bool>,
    ephemeral_writable_drives: bool,
) -> bool {
    match ephemeral {
        Some(explicit) => explicit,
        None => !read_only && ephemeral_writable_drives,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sparse_source(dir: &Path, size: u64, chunks: &[(u64, usize, u8)]) -> std::path::PathBuf {
        let path = dir.join("source.img");
        let f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        for (off, len, byte) in chunks {
            f.write_all_at(&vec![*byte; *len], *off).unwrap();
        }
        f.sync_all().unwrap();
        path
    }

    #[test]
    fn sparse_copy_preserves_content_and_allocates_only_data() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let src = sparse_source(
            dir.path(),
            64 << 20,
            &[
                (0, 8192, 0xAB),
                (10 << 20, 1 << 20, 0x11),
                ((64 << 20) - 4096, 4096, 0x7F),
            ],
        );
        let dst = dir.path().join("staged.img");
        let method = stage_file(&src, &dst, ErrorCode::DriveStagingFailed).unwrap();
        assert_eq!(method, StageMethod::SparseCopy, "tmpfs has no reflink");
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let staged = allocated_bytes(&dst).unwrap();
        let source = allocated_bytes(&src).unwrap();
        assert!(
            staged <= source + 8192,
            "staged {staged} vs source {source}"
        );
        assert!(staged < 2 << 20, "staged {staged} bytes for ~1 MiB of data");
    }

    #[test]
    fn zero_filled_but_allocated_blocks_become_holes() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let src = dir.path().join("dense.img");
        let mut f = File::create(&src).unwrap();
        f.write_all(&vec![0u8; 4 << 20]).unwrap();
        f.write_all_at(b"hello", 3 << 20).unwrap();
        drop(f);
        assert!(allocated_bytes(&src).unwrap() >= 4 << 20);
        let dst = dir.path().join("staged.img");
        stage_file(&src, &dst, ErrorCode::DriveStagingFailed).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert!(allocated_bytes(&dst).unwrap() <= 8192);
    }

    #[test]
    fn existing_destination_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let src = sparse_source(dir.path(), 4096, &[(0, 10, 1)]);
        let dst = dir.path().join("taken");
        std::fs::write(&dst, "keep").unwrap();
        let err = stage_file(&src, &dst, ErrorCode::DriveStagingFailed).unwrap_err();
        assert_eq!(err.code(), ErrorCode::DriveStagingFailed);
        assert_eq!(std::fs::read_to_string(&dst).unwrap(), "keep");
    }

    #[test]
    fn missing_source_leaves_no_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("staged");
        let err =
            stage_file(&dir.path().join("nope"), &dst, ErrorCode::RootfsCloneFailed).unwrap_err();
        assert_eq!(err.code(), ErrorCode::RootfsCloneFailed);
        assert!(!dst.exists());
    }

    #[test]
    fn staging_policy() {
        assert!(should_stage(false, None, true));
        assert!(!should_stage(false, None, false), "global opt-out");
        assert!(!should_stage(false, Some(false), true), "per-drive opt-out");
        assert!(
            !should_stage(true, None, true),
            "read-only drives are shared"
        );
        assert!(
            should_stage(true, Some(true), false),
            "explicit ephemeral wins"
        );
    }
}
