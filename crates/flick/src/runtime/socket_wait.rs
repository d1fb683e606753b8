//! Waiting for a file (Firecracker's API socket) to appear, woken by inotify instead of a
//! polling timer: tokio's timer ticks in whole milliseconds, which made every start pay up to a
//! millisecond more than the socket actually took.
//!
//! Flow: watch the parent directory for `IN_CREATE`/`IN_MOVED_TO`, then check whether the file
//! exists (so a file created before the watch is not missed), then sleep on the inotify
//! descriptor until an event or the deadline, re-checking after each wake-up. inotify watches
//! the directory's inode, so a socket created through a bind mount of the directory (the VM
//! view) or inside a jail is seen too. Closing an inotify instance makes the kernel wait for an
//! RCU grace period (several milliseconds here), so the descriptor is closed on the blocking
//! pool, off the caller's path.

use std::path::Path;
use std::time::Duration;

use rustix::fs::inotify;
use tokio::io::unix::AsyncFd;

/// Returns once `path` exists or `timeout` has passed, whichever comes first. Best effort: when
/// inotify is unavailable it returns at once and the caller's own polling takes over.
pub async fn wait_for_path(path: &Path, timeout: Duration) {
    let Some(dir) = path.parent() else {
        return;
    };
    let Ok(fd) = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
    else {
        return;
    };
    if inotify::add_watch(
        &fd,
        dir,
        inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO,
    )
    .is_err()
    {
        return;
    }
    if path.exists() {
        close_in_background(fd);
        return;
    }
    // SAFETY: `fd` is an `OwnedFd` moved into the `AsyncFd`: it stays open and refers to the
    // same inotify instance until the `AsyncFd` is dropped, and nothing else closes it.
    let Ok(fd) = (unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) })
    else {
        return;
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    let fd = CloseInBackground(Some(fd));
    loop {
        let Some(afd) = fd.0.as_ref() else {
            return;
        };
        let Ok(Ok(mut guard)) = tokio::time::timeout_at(deadline, afd.readable()).await else {
            return;
        };
        // Drain the queued events; which ones they were does not matter.
        loop {
            match rustix::io::read(guard.get_inner(), &mut buf) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        guard.clear_ready();
        if path.exists() {
            return;
        }
    }
}

/// Closing an inotify instance waits for an RCU grace period in the kernel (milliseconds):
/// the descriptor is closed on the blocking pool so the caller does not wait for it.
struct CloseInBackground(Option<AsyncFd<rustix::fd::OwnedFd>>);

impl Drop for CloseInBackground {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            close_in_background(fd.into_inner());
        }
    }
}

fn close_in_background(fd: rustix::fd::OwnedFd) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(move || drop(fd))),
        Err(_) => drop(fd),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_when_the_file_appears_and_gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let creator = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::os::unix::net::UnixListener::bind(&path).unwrap()
            })
        };
        wait_for_path(&path, Duration::from_secs(10)).await;
        assert!(path.exists(), "returned before the socket existed");
        drop(creator.await.unwrap());

        // Already there: returns at once. Never there: returns at the deadline.
        wait_for_path(&path, Duration::from_secs(10)).await;
        let missing = dir.path().join("never.sock");
        let started = std::time::Instant::now();
        wait_for_path(&missing, Duration::from_millis(100)).await;
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(!missing.exists());
    }
}
