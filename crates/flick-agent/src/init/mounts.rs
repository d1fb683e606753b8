//! Mounting: pseudo filesystems, the root drive (optionally under a tmpfs overlay), moving the
//! mounts into the new root, switching root, and unmounting everything at shutdown.
//!
//! Every function takes the directories it works on as parameters, so the logic runs unchanged
//! inside a test's private mount namespace, not only as PID 1 of a VM.

use rustix::mount::{MountFlags, UnmountFlags};
use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

/// A failed step, with the path it concerned.
#[derive(Debug)]
pub struct MountError {
    /// What was being done.
    pub what: String,
    /// The OS error.
    pub source: io::Error,
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for MountError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T, MountError> {
    r.map_err(|source| MountError {
        what: what(),
        source,
    })
}

fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    ctx(std::fs::create_dir_all(target), || {
        format!("create mount point {}", target.display())
    })?;
    let data_c = data.map(|d| CString::new(d).unwrap_or_default());
    ctx(
        rustix::mount::mount(source, target, fstype, flags, data_c.as_deref())
            .map_err(io::Error::from),
        || format!("mount {fstype} {source} on {}", target.display()),
    )
}

fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape(mp) == want)
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts `/proc`, `/sys`, `/dev` (devtmpfs, with `/dev/pts` and `/dev/shm`), `/run` and `/tmp`
/// under `root`. Already-mounted points are left alone.
pub fn mount_pseudo(root: &Path) -> Result<(), MountError> {
    let nosuid_nodev_noexec = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    let table: [(&str, &str, &str, MountFlags, Option<&str>); 5] = [
        ("proc", "proc", "proc", nosuid_nodev_noexec, None),
        ("sys", "sysfs", "sysfs", nosuid_nodev_noexec, None),
        (
            "dev",
            "devtmpfs",
            "devtmpfs",
            MountFlags::NOSUID,
            Some("mode=0755"),
        ),
        (
            "run",
            "tmpfs",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some("mode=0755"),
        ),
        (
            "tmp",
            "tmpfs",
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some("mode=1777"),
        ),
    ];
    for (dir, source, fstype, flags, data) in table {
        let target = root.join(dir);
        if is_mountpoint(&target) {
            continue;
        }
        mount(source, &target, fstype, flags, data)?;
    }
    let pts = root.join("dev/pts");
    if !is_mountpoint(&pts) {
        mount(
            "devpts",
            &pts,
            "devpts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            Some("mode=0620,ptmxmode=0666"),
        )?;
    }
    let shm = root.join("dev/shm");
    if !is_mountpoint(&shm) {
        mount(
            "shm",
            &shm,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some("mode=1777"),
        )?;
    }
    Ok(())
}

/// How to mount the root drive.
#[derive(Debug, Clone)]
pub struct RootSpec {
    /// Block device (or any source `mount(2)` accepts for the filesystem).
    pub device: String,
    /// Filesystem type; `None` tries the usual ones.
    pub fstype: Option<String>,
    /// Extra mount data.
    pub flags: Option<String>,
    /// Mount the drive read-only.
    pub read_only: bool,
    /// Put a tmpfs overlay on top (decided by [`super::cmdline::BootOptions::wants_overlay`]).
    pub overlay: Option<bool>,
    /// tmpfs `size=` for the overlay's upper layer.
    pub overlay_size: Option<String>,
}

/// Where the root ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootMounts {
    /// The mounted root (`newroot`).
    pub root: PathBuf,
    /// The filesystem type that mounted.
    pub fstype: String,
    /// With an overlay: the read-only lower mount.
    pub lower: Option<PathBuf>,
    /// With an overlay: the tmpfs holding `upper/` and `work/`.
    pub upper_tmpfs: Option<PathBuf>,
}

const TRY_FSTYPES: [&str; 5] = ["ext4", "squashfs", "erofs", "xfs", "btrfs"];

/// Mounts the root drive at `newroot`. With an overlay, the drive is mounted read-only at
/// `scratch/lower`, a tmpfs at `scratch/overlay` holds the upper and work directories, and the
/// overlay is mounted at `newroot`. `scratch` is usually `/run/flick` so that the layers stay
/// visible (under `/run/flick`) after the root switch.
pub fn mount_root(
    spec: &RootSpec,
    newroot: &Path,
    scratch: &Path,
    overlay_for: impl Fn(&str) -> bool,
) -> Result<RootMounts, MountError> {
    let candidates: Vec<String> = match &spec.fstype {
        Some(t) => vec![t.clone()],
        None => TRY_FSTYPES.iter().map(|s| (*s).to_owned()).collect(),
    };
    let lower = scratch.join("lower");
    let mut last_err = None;
    for fstype in &candidates {
        let overlay = spec.overlay.unwrap_or_else(|| overlay_for(fstype));
        let target = if overlay { &lower } else { newroot };
        let mut flags = MountFlags::empty();
        if overlay || spec.read_only {
            flags |= MountFlags::RDONLY;
        }
        match mount(&spec.device, target, fstype, flags, spec.flags.as_deref()) {
            Ok(()) => {
                if !overlay {
                    return Ok(RootMounts {
                        root: newroot.to_path_buf(),
                        fstype: fstype.clone(),
                        lower: None,
                        upper_tmpfs: None,
                    });
                }
                let rw = scratch.join("overlay");
                let size = spec
                    .overlay_size
                    .as_deref()
                    .map_or_else(|| "mode=0755".to_owned(), |s| format!("mode=0755,size={s}"));
                if let Err(e) = mount("tmpfs", &rw, "tmpfs", MountFlags::empty(), Some(&size)) {
                    let _ = rustix::mount::unmount(&lower, UnmountFlags::DETACH);
                    return Err(e);
                }
                for d in ["upper", "work"] {
                    ctx(std::fs::create_dir_all(rw.join(d)), || {
                        format!("create {}", rw.join(d).display())
                    })?;
                }
                let data = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.display(),
                    rw.join("upper").display(),
                    rw.join("work").display()
                );
                if let Err(e) = mount(
                    "overlay",
                    newroot,
                    "overlay",
                    MountFlags::empty(),
                    Some(&data),
                ) {
                    let _ = rustix::mount::unmount(&rw, UnmountFlags::DETACH);
                    let _ = rustix::mount::unmount(&lower, UnmountFlags::DETACH);
                    return Err(e);
                }
                return Ok(RootMounts {
                    root: newroot.to_path_buf(),
                    fstype: fstype.clone(),
                    lower: Some(lower),
                    upper_tmpfs: Some(rw),
                });
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or(MountError {
        what: format!("mount root {}", spec.device),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    }))
}

/// Moves `/proc`, `/sys`, `/dev` and `/run` from `old_root` into `newroot`, and mounts a fresh
/// tmpfs on `newroot/tmp`.
pub fn move_pseudo(old_root: &Path, newroot: &Path) -> Result<(), MountError> {
    for dir in ["dev", "proc", "sys", "run"] {
        let from = old_root.join(dir);
        let to = newroot.join(dir);
        ctx(std::fs::create_dir_all(&to), || {
            format!("create {}", to.display())
        })?;
        ctx(
            rustix::mount::mount_move(&from, &to).map_err(io::Error::from),
            || format!("move {} to {}", from.display(), to.display()),
        )?;
    }
    let tmp = newroot.join("tmp");
    if !is_mountpoint(&tmp) {
        mount(
            "tmpfs",
            &tmp,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some("mode=1777"),
        )?;
    }
    Ok(())
}

/// Makes `newroot` the root of this process: move-mount it onto `/`, chroot, chdir.
///
/// The initramfs stays in memory underneath (it cannot be unmounted); running processes keep
/// their executables, so the agent started from it lives on.
pub fn switch_root(newroot: &Path) -> Result<(), MountError> {
    let what = || format!("switch root to {}", newroot.display());
    ctx(std::env::set_current_dir(newroot), what)?;
    ctx(
        rustix::mount::mount_move(".", "/").map_err(io::Error::from),
        what,
    )?;
    ctx(rustix::process::chroot(".").map_err(io::Error::from), what)?;
    ctx(std::env::set_current_dir("/"), what)
}

/// Mount points at or below `under`, deepest first (the order to unmount them in).
pub fn mounts_under(under: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(unescape(mp)))
        .filter(|p| p.starts_with(under))
        .collect();
    // mountinfo lists parents before children; unmount in reverse.
    points.reverse();
    points
}

/// Unmounts everything at or below `under`, deepest first. A busy mount is detached lazily.
/// Returns the mount points that could not be unmounted at all.
pub fn unmount_all(under: &Path) -> Vec<PathBuf> {
    let mut failed = Vec::new();
    for p in mounts_under(under) {
        if rustix::mount::unmount(&p, UnmountFlags::empty()).is_err()
            && rustix::mount::unmount(&p, UnmountFlags::DETACH).is_err()
        {
            failed.push(p);
        }
    }
    failed
}

/// Shutdown path of PID 1: sync, unmount what can be unmounted, remount `/` read-only.
pub fn shutdown_unmount() {
    rustix::fs::sync();
    for p in mounts_under(Path::new("/")) {
        if p == Path::new("/") {
            continue;
        }
        let _ = rustix::mount::unmount(&p, UnmountFlags::empty());
    }
    let _ = rustix::mount::mount_remount("/", MountFlags::RDONLY, "");
    rustix::fs::sync();
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/x\"), "/x\\");
    }
}
