//! Firecracker binaries, base images, hosted manifests, the verified download cache, rootfs
//! helpers and the initrd builder ([`initrd`]).
//!
//! # Flow
//!
//! 1. [`firecracker::BinaryManager`] resolves a Firecracker version (the latest GitHub release's
//!    `tag_name`, or a pinned one), downloads `firecracker-<ver>-<arch>.tgz`, checks it against the
//!    release's `.sha256.txt`, extracts `release-<ver>-<arch>/{firecracker,jailer}-<ver>-<arch>`,
//!    runs `--version` on both and caches them under `<data>/bin/<ver>/<arch>/`. A custom binary
//!    path skips all of that and is only checked to exist and be executable.
//! 2. [`cache::BaseImageCache`] turns a [`cache::BaseImagePreset`] into a *bundle*: a kernel and a
//!    rootfs with boot args, stored in `<data>/base-images/<bundle-id>/` next to a `manifest.json`
//!    record. `latest` and `lts` read Firecracker's CI bucket listing ([`ci`]); `hosted` reads a
//!    project-owned manifest ([`manifest`]).
//! 3. Every byte comes through [`download::Downloader`]: a partial file hashed while it is written,
//!    resumed with `Range` after a dropped connection, fsync'd and renamed into place only once
//!    size and SHA-256 match. Progress goes to a [`progress::Progress`] implementation.
//! 4. [`rootfs`] creates blank ext4 images and clones rootfs files without copying unallocated
//!    blocks.
//!
//! Every base URL is configurable through [`Endpoints`], so tests point flick at a local server.
//! The cache layout, file formats, locking and error codes are described in `docs/artifacts.md`.
//!
//! ```no_run
//! use flick::image::{
//!     BaseImageCache, BaseImagePreset, BinaryManager, CacheOptions, DataDirs, Downloader,
//!     Endpoints, EnsureOptions, ProgressUpdate, VersionSpec,
//! };
//!
//! # async fn demo() -> flick::Result<()> {
//! let dirs = DataDirs::new(DataDirs::default_root());
//! let downloader = Downloader::new()?;
//! let show = |u: &ProgressUpdate<'_>| eprintln!("{} {}/{:?}", u.artifact, u.done, u.total);
//!
//! let bins = BinaryManager::new(dirs.clone(), Endpoints::default(), downloader.clone())
//!     .ensure(&VersionSpec::Latest, None, false, &show)
//!     .await?;
//! let cache = BaseImageCache::new(CacheOptions::new(&dirs), downloader)?;
//! let ready = cache
//!     .ensure(&BaseImagePreset::Latest, EnsureOptions::default(), &show)
//!     .await?;
//! println!(
//!     "{} boots {} with {}",
//!     bins.firecracker.display(),
//!     ready.bundle.kernel_path().display(),
//!     ready.bundle.record.boot_args
//! );
//! # Ok(())
//! # }
//! ```

pub mod cache;
pub mod ci;
pub mod download;
pub mod firecracker;
pub mod initrd;
mod lock;
pub mod manifest;
pub mod oci;
pub mod progress;
pub mod rootfs;
mod version;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};

pub use cache::{BaseImageCache, BaseImagePreset, Bundle, CacheOptions, EnsureOptions, Ensured};
pub use download::Downloader;
pub use firecracker::{BinaryManager, FirecrackerBinaries, VersionSpec};
pub use manifest::{HostedManifest, ManifestSource};
pub use progress::{NoProgress, Progress, ProgressEvent, ProgressUpdate};

/// A CPU architecture Firecracker publishes artifacts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Arch {
    /// 64-bit x86 (`x86_64`).
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit ARM (`aarch64`).
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl Arch {
    /// The architecture this program runs on.
    ///
    /// # Errors
    /// [`ErrorCode::HostUnsupported`] on any other architecture.
    pub fn host() -> Result<Self> {
        Self::parse(std::env::consts::ARCH).map_err(|_| {
            Error::new(
                ErrorCode::HostUnsupported,
                format!(
                    "Firecracker publishes no artifacts for {}",
                    std::env::consts::ARCH
                ),
            )
        })
    }

    /// Parses `x86_64` / `aarch64` (also `amd64` / `arm64`).
    ///
    /// # Errors
    /// [`ErrorCode::InvalidArgument`] for anything else.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "x86_64" | "amd64" => Ok(Self::X86_64),
            "aarch64" | "arm64" => Ok(Self::Aarch64),
            other => Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("unknown architecture {other:?} (expected x86_64 or aarch64)"),
            )),
        }
    }

    /// The name Firecracker uses in file names and bucket keys.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The base URLs flick downloads from. Every one can be replaced (mirrors, tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// The GitHub API URL of the Firecracker repository; `/releases/latest` is appended.
    pub github_api: String,
    /// The release download URL; `/<tag>/<asset>` is appended.
    pub release_downloads: String,
    /// The CI bucket URL; `/?list-type=2&prefix=...` lists it and `/<key>` fetches an object.
    pub ci_bucket: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            github_api: "https://api.github.com/repos/firecracker-microvm/firecracker".into(),
            release_downloads:
                "https://github.com/firecracker-microvm/firecracker/releases/download".into(),
            ci_bucket: "https://s3.amazonaws.com/spec.ccfc.min".into(),
        }
    }
}

impl Endpoints {
    /// Strips trailing slashes so paths can be appended with `/`.
    fn base(url: &str) -> &str {
        url.trim_end_matches('/')
    }
}

/// The directories flick keeps its artifacts in, all below one data root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDirs {
    root: PathBuf,
}

impl DataDirs {
    /// Uses `root` as the data root.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The default data root: `$XDG_DATA_HOME/flick`, else `$HOME/.local/share/flick`, else
    /// `/var/lib/flick`.
    #[must_use]
    pub fn default_root() -> PathBuf {
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("flick");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home).join(".local/share/flick");
        }
        PathBuf::from("/var/lib/flick")
    }

    /// The data root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<data>/bin`: cached Firecracker releases.
    #[must_use]
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    /// `<data>/bin/<version>/<arch>`: one cached release.
    #[must_use]
    pub fn bin_version_dir(&self, version: &str, arch: Arch) -> PathBuf {
        self.bin_dir().join(version).join(arch.as_str())
    }

    /// `<data>/kernels`: user-provided kernels.
    #[must_use]
    pub fn kernels_dir(&self) -> PathBuf {
        self.root.join("kernels")
    }

    /// `<data>/rootfs`: rootfs images built or cloned by flick.
    #[must_use]
    pub fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    /// `<data>/sockets`: API and vsock sockets.
    #[must_use]
    pub fn sockets_dir(&self) -> PathBuf {
        self.root.join("sockets")
    }

    /// `<data>/base-images`: the base-image bundle cache.
    #[must_use]
    pub fn base_images_dir(&self) -> PathBuf {
        self.root.join("base-images")
    }

    /// Creates every directory above (mode 0755, the sockets directory 0700).
    ///
    /// # Errors
    /// [`ErrorCode::IoError`] naming the directory that could not be created.
    pub fn create_all(&self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        for dir in [
            self.bin_dir(),
            self.kernels_dir(),
            self.rootfs_dir(),
            self.sockets_dir(),
            self.base_images_dir(),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(ErrorCode::IoError, "creating", &dir, e))?;
        }
        let sockets = self.sockets_dir();
        std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(ErrorCode::IoError, "restricting", &sockets, e))?;
        Ok(())
    }
}

/// The root filesystem format of a base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsType {
    /// A writable ext4 image.
    Ext4,
    /// A read-only squashfs image.
    Squashfs,
}

impl RootfsType {
    /// `ext4` or `squashfs`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Squashfs => "squashfs",
        }
    }

    /// Whether the format can only be mounted read-only.
    #[must_use]
    pub const fn is_read_only(self) -> bool {
        matches!(self, Self::Squashfs)
    }

    /// Kernel boot args that fit this root filesystem: Firecracker's usual serial console and
    /// reboot settings, plus a read-only root for squashfs.
    #[must_use]
    pub fn default_boot_args(self) -> String {
        let base = "console=ttyS0 reboot=k panic=1 pci=off";
        match self {
            Self::Ext4 => format!("{base} rw"),
            Self::Squashfs => format!("{base} ro rootfstype=squashfs"),
        }
    }
}

/// Milliseconds since the Unix epoch, for bundle timestamps.
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Creates `dir` and any missing parents; returns the directories it created, outermost first.
pub(crate) fn create_dirs_tracked(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_owned());
        cur = d.parent();
    }
    missing.reverse();
    std::fs::create_dir_all(dir)?;
    Ok(missing)
}

/// Removes directories made by [`create_dirs_tracked`] again, innermost first, as long as they
/// are empty (another process may have started using them).
pub(crate) fn remove_created_dirs(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        if std::fs::remove_dir(dir).is_err() {
            break;
        }
    }
}

/// fsyncs a directory so a rename inside it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically: a sibling temporary file, fsync, rename, fsync the dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
