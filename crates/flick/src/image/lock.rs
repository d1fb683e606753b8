//! Cross-process exclusive locks on lock files that are removed when released.
//!
//! A lock is a `flock` on `<path>` (std's `File::lock`). Releasing deletes the file first, so the
//! cache directory holds no lock files between operations. That opens a race (a waiter may lock a
//! file that was just unlinked), closed the classic way: after locking, the holder checks that
//! `<path>` still names the inode it locked, and starts over if not.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// A held lock; dropping it removes the lock file and releases the lock.
#[derive(Debug)]
pub(crate) struct PathLock {
    path: PathBuf,
    _file: File,
}

fn same_inode(file: &File, path: &Path) -> io::Result<bool> {
    let held = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.ino() == held.ino() && now.dev() == held.dev()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn open(path: &Path) -> io::Result<File> {
    let opts = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    match opts() {
        // The directory may have just been removed by a failing caller that had created it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            opts()
        }
        other => other,
    }
}

impl PathLock {
    /// Blocks until the lock is held.
    pub(crate) fn acquire_blocking(path: &Path) -> io::Result<Self> {
        loop {
            let file = open(path)?;
            file.lock()?;
            if same_inode(&file, path)? {
                return Ok(Self {
                    path: path.to_owned(),
                    _file: file,
                });
            }
        }
    }

    /// Takes the lock if nobody holds it.
    pub(crate) fn try_acquire(path: &Path) -> io::Result<Option<Self>> {
        loop {
            let file = open(path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
            if same_inode(&file, path)? {
                return Ok(Some(Self {
                    path: path.to_owned(),
                    _file: file,
                }));
            }
        }
    }

    /// Waits for the lock without blocking the async runtime.
    pub(crate) async fn acquire(path: &Path) -> io::Result<Self> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::acquire_blocking(&path))
            .await
            .map_err(io::Error::other)?
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock; waiters notice the inode changed and retry.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_excludes_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".x.lock");
        let held = PathLock::acquire_blocking(&path).unwrap();
        assert!(path.exists());
        assert!(PathLock::try_acquire(&path).unwrap().is_none());
        drop(held);
        assert!(!path.exists());
        let again = PathLock::try_acquire(&path).unwrap();
        assert!(again.is_some());
        drop(again);
        assert!(!path.exists());
    }

    #[test]
    fn waiter_gets_the_lock_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".y.lock");
        let held = PathLock::acquire_blocking(&path).unwrap();
        let p2 = path.clone();
        let waiter = std::thread::spawn(move || {
            let lock = PathLock::acquire_blocking(&p2).unwrap();
            assert!(p2.exists());
            drop(lock);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(held);
        waiter.join().unwrap();
        assert!(!path.exists());
    }
}
