//! Firecracker and jailer binaries: resolve a version, download the release, verify, cache.
//!
//! # Release format
//!
//! A release `vX.Y.Z` publishes `firecracker-vX.Y.Z-<arch>.tgz` and
//! `firecracker-vX.Y.Z-<arch>.tgz.sha256.txt` (the output of `sha256sum`: 64 hex digits, two
//! spaces, the file name). The tarball holds `release-vX.Y.Z-<arch>/` with
//! `firecracker-vX.Y.Z-<arch>`, `jailer-vX.Y.Z-<arch>` and other tools, debug files and licences.
//! `firecracker --version` prints `Firecracker vX.Y.Z` on its first line, `jailer --version`
//! prints `Jailer vX.Y.Z`.
//!
//! # Cache
//!
//! `<data>/bin/<version>/<arch>/` holds `firecracker`, `jailer` and `release.json` (the source URL,
//! the tarball digest and each binary's digest and size). A cached release is reused only when both
//! binaries still hash to the recorded digests and (on the host architecture) report the right
//! version. The directory is built in `<data>/bin/.<version>-<arch>.staging` and renamed into place,
//! under a lock file `<data>/bin/.<version>-<arch>.lock`, so concurrent callers download once.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::download::{Downloader, Expected, hash_file, is_transport_error, normalize_sha256};
use super::lock::PathLock;
use super::progress::{Progress, ProgressEvent, ProgressUpdate};
use super::version::{normalize_fc_version, numeric_parts};
use super::{
    Arch, DataDirs, Endpoints, create_dirs_tracked, now_unix_ms, remove_created_dirs, sync_dir,
    write_atomic,
};
use crate::error::{Error, ErrorCode, Result};

/// Which Firecracker version to use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VersionSpec {
    /// The latest GitHub release.
    #[default]
    Latest,
    /// A fixed version (`v1.16.1` or `1.16.1`).
    Pinned(String),
}

/// Where a set of binaries came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BinarySource {
    /// A downloaded release.
    Release {
        /// The tarball URL.
        tarball_url: String,
        /// The tarball's SHA-256 (from the release's `.sha256.txt`).
        tarball_sha256: String,
    },
    /// Paths supplied by the user, used as they are.
    Custom,
}

/// Ready-to-run binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerBinaries {
    /// The version (`vX.Y.Z`), when known (not for custom binaries).
    pub version: Option<String>,
    /// The architecture.
    pub arch: Arch,
    /// The `firecracker` executable.
    pub firecracker: PathBuf,
    /// The `jailer` executable, when there is one.
    pub jailer: Option<PathBuf>,
    /// Where they came from.
    pub source: BinarySource,
    /// Whether this call downloaded them (false when the cache was reused).
    pub downloaded: bool,
}

/// One binary in `release.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryRecord {
    /// File name inside the release directory.
    pub file_name: String,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// The `release.json` kept beside cached binaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// Format version of this record (1).
    pub schema_version: u32,
    /// `vX.Y.Z`.
    pub version: String,
    /// The architecture.
    pub arch: Arch,
    /// The tarball URL.
    pub tarball_url: String,
    /// The tarball's SHA-256.
    pub tarball_sha256: String,
    /// The firecracker binary.
    pub firecracker: BinaryRecord,
    /// The jailer binary.
    pub jailer: BinaryRecord,
    /// Whether `--version` was run (only possible on the host architecture).
    pub version_checked: bool,
    /// When it was downloaded (ms since the Unix epoch).
    pub fetched_unix_ms: u64,
}

/// Downloads and caches Firecracker releases.
#[derive(Debug, Clone)]
pub struct BinaryManager {
    dirs: DataDirs,
    endpoints: Endpoints,
    downloader: Downloader,
}

fn not_found(path: &Path, msg: &str) -> Error {
    Error::new(
        ErrorCode::BinaryNotFound,
        format!("{} {msg}", path.display()),
    )
    .with_details(json!({ "path": path }))
}

/// Checks that `path` is an existing regular file with an execute bit.
fn check_executable(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| not_found(path, "does not exist or cannot be read").with_source(e))?;
    if !meta.is_file() {
        return Err(not_found(path, "is not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(not_found(path, "is not executable"));
    }
    Ok(())
}

/// Parses the `.sha256.txt` asset: `<hex>  <name>` (also `<hex> *<name>` or a bare digest).
fn parse_sha256_txt(text: &str, tarball: &str) -> Option<String> {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(digest) = parts.next() else { continue };
        let name = parts
            .next()
            .map(|n| n.trim_start_matches('*').trim_start_matches("./"));
        if name.is_none_or(|n| n == tarball)
            && let Some(d) = normalize_sha256(digest)
        {
            return Some(d);
        }
    }
    None
}

/// Runs `<bin> --version` and returns the first `vX.Y.Z` on its first line.
async fn reported_version(bin: &Path) -> Result<String> {
    let mut tries = 0;
    let out = loop {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("--version").kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(10), cmd.output()).await {
            Err(_) => return Err(not_found(bin, "did not answer --version within 10 s")),
            // A just-written executable can be briefly busy while another thread of this process
            // forks with the write descriptor still open; try again.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 10 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => return Err(not_found(bin, "could not be run").with_source(e)),
            Ok(Ok(out)) => break out,
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    if !out.status.success() {
        return Err(not_found(
            bin,
            &format!("--version failed ({})", out.status),
        ));
    }
    first
        .split_whitespace()
        .find_map(|w| normalize_fc_version(w).ok().filter(|_| w.starts_with('v')))
        .ok_or_else(|| not_found(bin, &format!("--version printed no version: {first:?}")))
}

impl BinaryManager {
    /// A manager caching under `dirs`, downloading from `endpoints`.
    #[must_use]
    pub fn new(dirs: DataDirs, endpoints: Endpoints, downloader: Downloader) -> Self {
        Self {
            dirs,
            endpoints,
            downloader,
        }
    }

    /// Uses user-supplied binaries as they are, after checking that each exists and is executable.
    ///
    /// # Errors
    /// [`ErrorCode::BinaryNotFound`] naming the path.
    pub fn custom(firecracker: &Path, jailer: Option<&Path>) -> Result<FirecrackerBinaries> {
        check_executable(firecracker)?;
        if let Some(jailer) = jailer {
            check_executable(jailer)?;
        }
        Ok(FirecrackerBinaries {
            version: None,
            arch: Arch::host()?,
            firecracker: firecracker.to_owned(),
            jailer: jailer.map(Path::to_owned),
            source: BinarySource::Custom,
            downloaded: false,
        })
    }

    /// The `tag_name` of the latest release.
    ///
    /// # Errors
    /// [`ErrorCode::VersionFetchFailed`] when the API cannot be reached, answers non-2xx, or the
    /// JSON has no valid `tag_name`.
    pub async fn latest_version(&self) -> Result<String> {
        latest_version(&self.downloader, &self.endpoints).await
    }

    /// Resolves `spec` to a version tag (`vX.Y.Z`).
    ///
    /// # Errors
    /// As [`latest_version`](Self::latest_version); [`ErrorCode::InvalidArgument`] for a malformed
    /// pinned version.
    pub async fn resolve(&self, spec: &VersionSpec) -> Result<String> {
        match spec {
            VersionSpec::Latest => self.latest_version().await,
            VersionSpec::Pinned(v) => normalize_fc_version(v),
        }
    }

    /// Makes the binaries of `spec` for `arch` (default: the host's) available, downloading and
    /// verifying them unless a verified copy is cached (or `force_download` is set).
    ///
    /// # Errors
    /// [`ErrorCode::VersionFetchFailed`], [`ErrorCode::DownloadFailed`] (HTTP, checksum, version
    /// mismatch), [`ErrorCode::BinaryNotFound`] (the tarball lacks a binary), [`ErrorCode::IoError`].
    /// On error the cache is left as it was.
    pub async fn ensure(
        &self,
        spec: &VersionSpec,
        arch: Option<Arch>,
        force_download: bool,
        progress: &dyn Progress,
    ) -> Result<FirecrackerBinaries> {
        let arch = match arch {
            Some(a) => a,
            None => Arch::host()?,
        };
        let version = match self.resolve(spec).await {
            Ok(v) => v,
            Err(err) if !force_download && is_transport_error(&err) => {
                // Offline: the newest cached release that still verifies will do.
                if let Some(found) = self.newest_cached(arch).await {
                    tracing::warn!(
                        version = found.version.as_deref().unwrap_or_default(),
                        error = %err.chain(),
                        "cannot reach the release API; using the newest cached Firecracker"
                    );
                    return Ok(found);
                }
                return Err(err);
            }
            Err(err) => return Err(err),
        };
        let bin_dir = self.dirs.bin_dir();
        let created = create_dirs_tracked(&bin_dir)
            .map_err(|e| Error::io(ErrorCode::IoError, "creating", &bin_dir, e))?;
        let result = self
            .ensure_version(&version, arch, force_download, progress)
            .await;
        if result.is_err() {
            remove_created_dirs(&created);
        }
        result
    }

    async fn ensure_version(
        &self,
        version: &str,
        arch: Arch,
        force_download: bool,
        progress: &dyn Progress,
    ) -> Result<FirecrackerBinaries> {
        let version = version.to_owned();
        let bin_dir = self.dirs.bin_dir();
        let lock_path = bin_dir.join(format!(".{version}-{arch}.lock"));
        let _lock = PathLock::acquire(&lock_path)
            .await
            .map_err(|e| Error::io(ErrorCode::IoError, "locking", &lock_path, e))?;
        let final_dir = self.dirs.bin_version_dir(&version, arch);
        if !force_download && let Some(found) = self.reuse(&final_dir, &version, arch).await {
            progress.update(&ProgressUpdate {
                artifact: &format!("firecracker-{version}-{arch}"),
                done: 0,
                total: None,
                event: ProgressEvent::Reused,
            });
            return Ok(found);
        }
        let staging = bin_dir.join(format!(".{version}-{arch}.staging"));
        let result = self
            .download_into(&staging, &final_dir, &version, arch, progress)
            .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    /// The newest cached release for `arch` whose binaries still verify.
    async fn newest_cached(&self, arch: Arch) -> Option<FirecrackerBinaries> {
        let mut versions: Vec<(Vec<u64>, String)> = std::fs::read_dir(self.dirs.bin_dir())
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let tag = normalize_fc_version(&name).ok().filter(|t| *t == name)?;
                Some((numeric_parts(&tag[1..])?, tag))
            })
            .collect();
        versions.sort();
        for (_, version) in versions.into_iter().rev() {
            let lock_path = self.dirs.bin_dir().join(format!(".{version}-{arch}.lock"));
            let Ok(_lock) = PathLock::acquire(&lock_path).await else {
                continue;
            };
            let dir = self.dirs.bin_version_dir(&version, arch);
            if let Some(found) = self.reuse(&dir, &version, arch).await {
                return Some(found);
            }
        }
        None
    }

    async fn reuse(&self, dir: &Path, version: &str, arch: Arch) -> Option<FirecrackerBinaries> {
        let text = std::fs::read_to_string(dir.join("release.json")).ok()?;
        let record: ReleaseRecord = serde_json::from_str(&text).ok()?;
        if record.version != version || record.arch != arch {
            return None;
        }
        let fc = dir.join("firecracker");
        let jailer = dir.join("jailer");
        for (path, rec) in [(&fc, &record.firecracker), (&jailer, &record.jailer)] {
            match hash_file(path) {
                Ok((sha, len)) if sha == rec.sha256 && len == rec.size_bytes => {}
                _ => {
                    tracing::warn!(path = %path.display(), "cached binary does not verify; downloading again");
                    return None;
                }
            }
            if check_executable(path).is_err() {
                return None;
            }
        }
        if Arch::host().ok() == Some(arch) {
            for bin in [&fc, &jailer] {
                if reported_version(bin).await.ok().as_deref() != Some(version) {
                    return None;
                }
            }
        }
        Some(FirecrackerBinaries {
            version: Some(version.to_owned()),
            arch,
            firecracker: fc,
            jailer: Some(jailer),
            source: BinarySource::Release {
                tarball_url: record.tarball_url,
                tarball_sha256: record.tarball_sha256,
            },
            downloaded: false,
        })
    }

    async fn download_into(
        &self,
        staging: &Path,
        final_dir: &Path,
        version: &str,
        arch: Arch,
        progress: &dyn Progress,
    ) -> Result<FirecrackerBinaries> {
        let _ = std::fs::remove_dir_all(staging);
        std::fs::create_dir_all(staging)
            .map_err(|e| Error::io(ErrorCode::IoError, "creating", staging, e))?;
        let tarball_name = format!("firecracker-{version}-{arch}.tgz");
        let base = Endpoints::base(&self.endpoints.release_downloads);
        let tarball_url = format!("{base}/{version}/{tarball_name}");
        let sums_url = format!("{tarball_url}.sha256.txt");
        let sums = self
            .downloader
            .fetch_text(&sums_url, ErrorCode::DownloadFailed, "release checksum")
            .await?;
        let sha = parse_sha256_txt(&sums, &tarball_name).ok_or_else(|| {
            Error::new(
                ErrorCode::DownloadFailed,
                format!("{sums_url} holds no SHA-256 for {tarball_name}"),
            )
            .with_details(json!({ "url": sums_url }))
        })?;
        let tarball_path = staging.join(&tarball_name);
        self.downloader
            .fetch_to_file(
                &tarball_url,
                &tarball_path,
                &Expected {
                    sha256: Some(sha.clone()),
                    size: None,
                },
                progress,
            )
            .await?;
        let suffix = format!("{version}-{arch}");
        let wanted = [
            (format!("firecracker-{suffix}"), staging.join("firecracker")),
            (format!("jailer-{suffix}"), staging.join("jailer")),
        ];
        let tp = tarball_path.clone();
        let dir_name = format!("release-{suffix}");
        let wanted_c = wanted.clone();
        tokio::task::spawn_blocking(move || extract(&tp, &dir_name, &wanted_c))
            .await
            .map_err(|e| Error::new(ErrorCode::Internal, "extract task").with_source(e))??;
        std::fs::remove_file(&tarball_path)
            .map_err(|e| Error::io(ErrorCode::IoError, "removing", &tarball_path, e))?;
        let version_checked = Arch::host().ok() == Some(arch);
        if version_checked {
            for (_, path) in &wanted {
                let got = reported_version(path).await?;
                if got != version {
                    return Err(Error::new(
                        ErrorCode::DownloadFailed,
                        format!("{} reports {got}, expected {version}", path.display()),
                    )
                    .with_details(json!({ "expected": version, "reported": got })));
                }
            }
        }
        let record_of = |name: &str, path: &Path| -> Result<BinaryRecord> {
            let (sha256, size_bytes) =
                hash_file(path).map_err(|e| Error::io(ErrorCode::IoError, "hashing", path, e))?;
            Ok(BinaryRecord {
                file_name: name.to_owned(),
                sha256,
                size_bytes,
            })
        };
        let fc_rec = record_of(&wanted[0].0, &wanted[0].1)?;
        let jailer_rec = record_of(&wanted[1].0, &wanted[1].1)?;
        let record = ReleaseRecord {
            schema_version: 1,
            version: version.to_owned(),
            arch,
            tarball_url: tarball_url.clone(),
            tarball_sha256: sha.clone(),
            firecracker: fc_rec,
            jailer: jailer_rec,
            version_checked,
            fetched_unix_ms: now_unix_ms(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| {
            Error::new(ErrorCode::Internal, "serializing release.json").with_source(e)
        })?;
        let record_path = staging.join("release.json");
        write_atomic(&record_path, &json)
            .map_err(|e| Error::io(ErrorCode::IoError, "writing", &record_path, e))?;
        let parent = final_dir.parent().unwrap_or(final_dir);
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(ErrorCode::IoError, "creating", parent, e))?;
        // Swap with renames so the old binaries stay in place until the new ones are complete.
        let old = staging.with_extension("old");
        let _ = std::fs::remove_dir_all(&old);
        let replaced = final_dir.exists();
        if replaced {
            std::fs::rename(final_dir, &old)
                .map_err(|e| Error::io(ErrorCode::IoError, "moving aside", final_dir, e))?;
        }
        if let Err(e) = std::fs::rename(staging, final_dir) {
            if replaced {
                let _ = std::fs::rename(&old, final_dir);
            }
            return Err(Error::io(ErrorCode::IoError, "renaming", staging, e));
        }
        if replaced {
            let _ = std::fs::remove_dir_all(&old);
        }
        sync_dir(parent).map_err(|e| Error::io(ErrorCode::IoError, "syncing", parent, e))?;
        Ok(FirecrackerBinaries {
            version: Some(version.to_owned()),
            arch,
            firecracker: final_dir.join("firecracker"),
            jailer: Some(final_dir.join("jailer")),
            source: BinarySource::Release {
                tarball_url,
                tarball_sha256: sha,
            },
            downloaded: true,
        })
    }
}

/// Fetches the latest release's `tag_name`.
pub(crate) async fn latest_version(
    downloader: &Downloader,
    endpoints: &Endpoints,
) -> Result<String> {
    let url = format!("{}/releases/latest", Endpoints::base(&endpoints.github_api));
    let headers = downloader.github_headers();
    let text = downloader
        .fetch_text_with(
            &url,
            ErrorCode::VersionFetchFailed,
            "the latest release",
            &headers,
        )
        .await
        .map_err(|err| match err.status() {
            Some(403 | 429) => {
                let msg = format!(
                    "{} (the GitHub API may be rate limiting this address; pin a version or \
                     configure a GitHub token)",
                    err.message()
                );
                Error::new(ErrorCode::VersionFetchFailed, msg)
                    .with_status(err.status().unwrap_or_default())
                    .with_details(json!({ "url": url }))
            }
            _ => err,
        })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::new(
            ErrorCode::VersionFetchFailed,
            format!("{url} did not answer JSON"),
        )
        .with_source(e)
    })?;
    let tag = value
        .get("tag_name")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| {
            Error::new(
                ErrorCode::VersionFetchFailed,
                format!("{url} answered without a tag_name"),
            )
        })?;
    normalize_fc_version(tag).map_err(|_| {
        Error::new(
            ErrorCode::VersionFetchFailed,
            format!("{url} names an unexpected tag {tag:?}"),
        )
    })
}

/// Extracts exactly the wanted entries of `<dir_name>/` from a gzip'd tarball, mode 0755.
/// Nothing else is written, so hostile entry names cannot escape.
fn extract(tarball: &Path, dir_name: &str, wanted: &[(String, PathBuf)]) -> Result<()> {
    let file = std::fs::File::open(tarball)
        .map_err(|e| Error::io(ErrorCode::IoError, "opening", tarball, e))?;
    let mut archive =
        tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut found = vec![false; wanted.len()];
    let bad = |e: std::io::Error| {
        Error::new(
            ErrorCode::DownloadFailed,
            format!("{} is not a readable tar.gz", tarball.display()),
        )
        .with_source(e)
    };
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./");
        for (i, (name, dest)) in wanted.iter().enumerate() {
            if found[i] || path != format!("{dir_name}/{name}") {
                continue;
            }
            let mut out = std::fs::File::create(dest)
                .map_err(|e| Error::io(ErrorCode::IoError, "creating", dest, e))?;
            std::io::copy(&mut entry, &mut out).map_err(bad)?;
            out.sync_all()
                .map_err(|e| Error::io(ErrorCode::IoError, "syncing", dest, e))?;
            std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io(ErrorCode::IoError, "chmod", dest, e))?;
            found[i] = true;
        }
    }
    if let Some(i) = found.iter().position(|f| !f) {
        return Err(Error::new(
            ErrorCode::BinaryNotFound,
            format!(
                "release tarball {} has no {dir_name}/{}",
                tarball.file_name().unwrap_or_default().to_string_lossy(),
                wanted[i].0
            ),
        )
        .with_details(json!({ "missing": format!("{dir_name}/{}", wanted[i].0) })));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_txt_formats() {
        let d = "ab".repeat(32);
        assert_eq!(
            parse_sha256_txt(
                &format!("{d}  firecracker-v1.16.1-x86_64.tgz\n"),
                "firecracker-v1.16.1-x86_64.tgz"
            ),
            Some(d.clone())
        );
        assert_eq!(
            parse_sha256_txt(&format!("{d} *x.tgz"), "x.tgz"),
            Some(d.clone())
        );
        assert_eq!(parse_sha256_txt(&d, "x.tgz"), Some(d.clone()));
        assert_eq!(parse_sha256_txt(&format!("{d}  other.tgz"), "x.tgz"), None);
        assert_eq!(parse_sha256_txt("nothex  x.tgz", "x.tgz"), None);
        assert_eq!(parse_sha256_txt("", "x.tgz"), None);
    }
}
