//! The base-image bundle cache.
//!
//! # Layout
//!
//! ```text
//! <cache>/                       default <data>/base-images
//!   <bundle-id>/
//!     manifest.json              the BundleRecord (camelCase JSON)
//!     <kernel file>
//!     <rootfs file>
//!   <bundle-id>+lock             only while a process works on that bundle
//!   <bundle-id>+staging/         only while a bundle is being downloaded (partial files)
//!   +cache.lock                  only while bundles are being evicted
//! ```
//!
//! `+` cannot appear in a bundle id, so internal names never collide with bundles.
//!
//! # Ensuring a bundle
//!
//! 1. Resolve the preset to a plan (bundle id, artifact URLs or paths, expected sizes/digests):
//!    `latest` and `lts` list the CI bucket ([`super::ci`]); `hosted` loads a manifest
//!    ([`super::manifest`]).
//! 2. Take `<bundle-id>+lock` (an exclusive `flock`; a second process waits here and then finds
//!    the bundle ready).
//! 3. If `<bundle-id>/manifest.json` exists and every artifact still has its recorded size and
//!    SHA-256 (and matches the plan), reuse it and bump its last-accessed time. Otherwise (or with
//!    `force_download`) download everything into `<bundle-id>+staging/`, write `manifest.json`
//!    there and swap the directory into place with renames.
//! 4. Evict the least recently used bundles beyond the limit (never the one just ensured, never
//!    one another process holds locked), with a `tracing` warning; the evicted ids are returned.
//!
//! Any failure removes the staging directory, so the cache stays exactly as it was.

use std::path::{Path, PathBuf};

use futures_util::future::try_join;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ci::{self, CiSelection};
use super::download::{
    Downloaded, Downloader, Expected, copy_verified, hash_file, is_transport_error,
};
use super::lock::PathLock;
use super::manifest::{
    ArtifactLocation, HostedManifest, ManifestSource, is_valid_bundle_id, load_manifest,
};
use super::progress::{Progress, ProgressEvent, ProgressUpdate};
use super::version::{ci_train, normalize_fc_version};
use super::{
    Arch, DataDirs, Endpoints, RootfsType, create_dirs_tracked, now_unix_ms, remove_created_dirs,
    sync_dir, write_atomic,
};
use crate::error::{Error, ErrorCode, Result};

/// The Firecracker version whose CI train the `lts` preset uses by default.
pub const DEFAULT_LTS_VERSION: &str = "v1.7.0";
/// How many bundles the cache keeps by default.
pub const DEFAULT_KEEP: usize = 2;
/// The bundle record's file name.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Which base image to prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseImagePreset {
    /// The newest kernel and rootfs of the latest Firecracker release's CI train.
    Latest,
    /// The kernel and rootfs of a pinned CI train ([`CacheOptions::lts_version`]).
    Lts,
    /// A project-owned manifest.
    Hosted(ManifestSource),
}

impl BaseImagePreset {
    /// `latest`, `lts` or `hosted`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Latest => "latest",
            Self::Lts => "lts",
            Self::Hosted(_) => "hosted",
        }
    }
}

/// Cache settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    /// The cache directory.
    pub dir: PathBuf,
    /// How many bundles to keep (at least 1).
    pub keep: usize,
    /// The Firecracker version whose train `lts` uses.
    pub lts_version: String,
    /// Where to download from.
    pub endpoints: Endpoints,
}

impl CacheOptions {
    /// Defaults: `<data>/base-images`, keep 2, `lts` = v1.7.0, the public endpoints.
    #[must_use]
    pub fn new(dirs: &DataDirs) -> Self {
        Self {
            dir: dirs.base_images_dir(),
            keep: DEFAULT_KEEP,
            lts_version: DEFAULT_LTS_VERSION.into(),
            endpoints: Endpoints::default(),
        }
    }
}

/// Per-call settings of [`BaseImageCache::ensure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EnsureOptions {
    /// The architecture (default: the host's).
    pub arch: Option<Arch>,
    /// Download again even if a verified copy is cached.
    pub force_download: bool,
}

/// One artifact of a bundle record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactRecord {
    /// The file name inside the bundle directory.
    pub file_name: String,
    /// The absolute path when the record was written.
    pub path: PathBuf,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// The URL or local path it came from.
    pub origin: String,
}

/// Where a bundle came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum BundleSource {
    /// Firecracker's CI bucket.
    #[serde(rename_all = "camelCase")]
    CiBucket {
        /// The bucket URL.
        bucket_url: String,
        /// The CI train (`v1.N`).
        train: String,
        /// The listing prefix.
        prefix: String,
        /// The kernel's key.
        kernel_key: String,
        /// The rootfs's key.
        rootfs_key: String,
    },
    /// A hosted manifest.
    #[serde(rename_all = "camelCase")]
    Hosted {
        /// The manifest URL, if it was fetched.
        manifest_url: Option<String>,
        /// The manifest path, if it was read locally.
        manifest_path: Option<PathBuf>,
    },
}

/// The `manifest.json` of a cached bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleRecord {
    /// Format version of this record (1).
    pub schema_version: u32,
    /// The bundle id (the directory name).
    pub bundle_id: String,
    /// A display name.
    pub name: String,
    /// `latest`, `lts` or `hosted`.
    pub preset: String,
    /// The architecture.
    pub arch: Arch,
    /// The Firecracker version the bundle belongs to, when known.
    pub firecracker_version: Option<String>,
    /// The rootfs format.
    pub rootfs_type: RootfsType,
    /// Whether the rootfs is attached read-only.
    pub rootfs_is_read_only: bool,
    /// Kernel boot args.
    pub boot_args: String,
    /// The kernel.
    pub kernel: ArtifactRecord,
    /// The rootfs.
    pub rootfs: ArtifactRecord,
    /// Where the bundle came from.
    pub source: BundleSource,
    /// When the bundle was created (ms since the Unix epoch).
    pub created_unix_ms: u64,
    /// When the bundle was last ensured (ms since the Unix epoch).
    pub last_accessed_unix_ms: u64,
}

/// A cached bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Its record.
    pub record: BundleRecord,
}

impl Bundle {
    /// The kernel image path.
    #[must_use]
    pub fn kernel_path(&self) -> PathBuf {
        self.dir.join(&self.record.kernel.file_name)
    }

    /// The rootfs image path.
    #[must_use]
    pub fn rootfs_path(&self) -> PathBuf {
        self.dir.join(&self.record.rootfs.file_name)
    }

    /// The bundle id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.record.bundle_id
    }
}

/// The result of [`BaseImageCache::ensure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// The ready bundle.
    pub bundle: Bundle,
    /// Whether this call downloaded it (false when a verified copy was reused).
    pub downloaded: bool,
    /// Whether the source could not be reached and a verified cached bundle of the same preset
    /// was used without checking for a newer one.
    pub offline: bool,
    /// Bundles evicted to stay within the limit.
    pub evicted: Vec<String>,
}

#[derive(Debug, Clone)]
struct PlannedArtifact {
    file_name: String,
    location: ArtifactLocation,
    expected: Expected,
}

impl PlannedArtifact {
    fn origin(&self) -> String {
        match &self.location {
            ArtifactLocation::Url(u) => u.clone(),
            ArtifactLocation::Path(p) => p.display().to_string(),
        }
    }
}

#[derive(Debug, Clone)]
struct Plan {
    bundle_id: String,
    name: String,
    preset: &'static str,
    arch: Arch,
    firecracker_version: Option<String>,
    rootfs_type: RootfsType,
    rootfs_is_read_only: bool,
    boot_args: String,
    kernel: PlannedArtifact,
    rootfs: PlannedArtifact,
    source: BundleSource,
}

/// The base-image cache.
#[derive(Debug, Clone)]
pub struct BaseImageCache {
    opts: CacheOptions,
    downloader: Downloader,
}

fn prepare_failed(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::BaseImagePrepareFailed, msg)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(ErrorCode::BaseImagePrepareFailed, what, path, e)
}

impl BaseImageCache {
    /// A cache with `opts`, downloading through `downloader`.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidBaseImageCacheLimit`] when `opts.keep` is 0;
    /// [`ErrorCode::InvalidArgument`] for a malformed `lts_version`.
    pub fn new(opts: CacheOptions, downloader: Downloader) -> Result<Self> {
        if opts.keep == 0 {
            return Err(Error::new(
                ErrorCode::InvalidBaseImageCacheLimit,
                "the base-image cache must keep at least 1 bundle",
            )
            .with_details(json!({ "keep": 0 })));
        }
        normalize_fc_version(&opts.lts_version)?;
        Ok(Self { opts, downloader })
    }

    /// The cache directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    fn bundle_dir(&self, id: &str) -> PathBuf {
        self.opts.dir.join(id)
    }

    fn internal(&self, id: &str, what: &str) -> PathBuf {
        self.opts.dir.join(format!("{id}+{what}"))
    }

    async fn plan(&self, preset: &BaseImagePreset, arch: Arch) -> Result<Plan> {
        match preset {
            BaseImagePreset::Latest => {
                let version =
                    super::firecracker::latest_version(&self.downloader, &self.opts.endpoints)
                        .await?;
                self.plan_ci(&version, arch, "latest").await
            }
            BaseImagePreset::Lts => {
                let version = normalize_fc_version(&self.opts.lts_version)?;
                self.plan_ci(&version, arch, "lts").await
            }
            BaseImagePreset::Hosted(source) => {
                let manifest = load_manifest(&self.downloader, source).await?;
                plan_hosted(&manifest, source, arch)
            }
        }
    }

    async fn plan_ci(&self, version: &str, arch: Arch, preset: &'static str) -> Result<Plan> {
        let train = ci_train(version)?;
        let prefix = ci::train_prefix(&train, arch);
        let objects = ci::list_prefix(&self.downloader, &self.opts.endpoints, &prefix).await?;
        let sel = ci::select(&train, &prefix, &objects)?;
        Ok(plan_from_selection(
            &sel,
            version,
            arch,
            preset,
            Endpoints::base(&self.opts.endpoints.ci_bucket),
        ))
    }

    /// Makes the bundle of `preset` available: reuses a verified cached copy or downloads it,
    /// then evicts least recently used bundles beyond the limit.
    ///
    /// # Errors
    /// [`ErrorCode::VersionFetchFailed`], [`ErrorCode::BaseImageResolveFailed`],
    /// [`ErrorCode::BaseImageManifestFailed`], [`ErrorCode::InvalidBaseImageManifest`],
    /// [`ErrorCode::DownloadFailed`], [`ErrorCode::BaseImagePrepareFailed`]. The cache is left
    /// exactly as it was.
    pub async fn ensure(
        &self,
        preset: &BaseImagePreset,
        options: EnsureOptions,
        progress: &dyn Progress,
    ) -> Result<Ensured> {
        let arch = match options.arch {
            Some(a) => a,
            None => Arch::host()?,
        };
        let plan = match self.plan(preset, arch).await {
            Ok(plan) => plan,
            Err(err) if !options.force_download && is_transport_error(&err) => {
                // Offline: fall back to the most recently used verified bundle of this preset.
                let this = self.clone();
                let (p, a) = (preset.clone(), arch);
                let cached = tokio::task::spawn_blocking(move || this.offline_fallback(&p, a))
                    .await
                    .map_err(|e| Error::new(ErrorCode::Internal, "verify task").with_source(e))?;
                let Some(bundle) = cached else {
                    return Err(err);
                };
                tracing::warn!(
                    bundle = %bundle.id(),
                    error = %err.chain(),
                    "cannot reach the artifact source; using the cached bundle"
                );
                return Ok(Ensured {
                    bundle,
                    downloaded: false,
                    offline: true,
                    evicted: Vec::new(),
                });
            }
            Err(err) => return Err(err),
        };
        let created = create_dirs_tracked(&self.opts.dir)
            .map_err(|e| io_err("creating", &self.opts.dir, e))?;
        let result = self.ensure_planned(&plan, options, progress).await;
        if result.is_err() {
            remove_created_dirs(&created);
        }
        result
    }

    async fn ensure_planned(
        &self,
        plan: &Plan,
        options: EnsureOptions,
        progress: &dyn Progress,
    ) -> Result<Ensured> {
        let lock_path = self.internal(&plan.bundle_id, "lock");
        let lock = PathLock::acquire(&lock_path)
            .await
            .map_err(|e| io_err("locking", &lock_path, e))?;
        let dir = self.bundle_dir(&plan.bundle_id);
        let mut reused = None;
        if !options.force_download {
            let (d, p) = (dir.clone(), plan.clone());
            reused = tokio::task::spawn_blocking(move || reuse(&d, &p))
                .await
                .map_err(|e| Error::new(ErrorCode::Internal, "verify task").with_source(e))??;
        }
        let (bundle, downloaded) = if let Some(bundle) = reused {
            for art in [&bundle.record.kernel, &bundle.record.rootfs] {
                progress.update(&ProgressUpdate {
                    artifact: &art.file_name,
                    done: art.size_bytes,
                    total: Some(art.size_bytes),
                    event: ProgressEvent::Reused,
                });
            }
            (bundle, false)
        } else {
            let staging = self.internal(&plan.bundle_id, "staging");
            let result = self.build(plan, &staging, &dir, progress).await;
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&staging);
                let _ = std::fs::remove_dir_all(self.internal(&plan.bundle_id, "old"));
            }
            (result?, true)
        };
        drop(lock);
        // The bundle is ready; a failed eviction must not turn that into an error.
        let evicted = match self.prune(Some(&plan.bundle_id)).await {
            Ok(evicted) => evicted,
            Err(err) => {
                tracing::warn!(error = %err.chain(), "evicting old base images failed");
                Vec::new()
            }
        };
        Ok(Ensured {
            bundle,
            downloaded,
            offline: false,
            evicted,
        })
    }

    async fn fetch(
        &self,
        art: &PlannedArtifact,
        staging: &Path,
        progress: &dyn Progress,
    ) -> Result<Downloaded> {
        let dest = staging.join(&art.file_name);
        match &art.location {
            ArtifactLocation::Url(url) => {
                self.downloader
                    .fetch_to_file(url, &dest, &art.expected, progress)
                    .await
            }
            ArtifactLocation::Path(src) => {
                let run = || {
                    copy_verified(
                        src,
                        &dest,
                        &art.expected,
                        progress,
                        ErrorCode::BaseImagePrepareFailed,
                    )
                };
                if tokio::runtime::Handle::current().runtime_flavor()
                    == tokio::runtime::RuntimeFlavor::MultiThread
                {
                    tokio::task::block_in_place(run)
                } else {
                    run()
                }
            }
        }
    }

    async fn build(
        &self,
        plan: &Plan,
        staging: &Path,
        dir: &Path,
        progress: &dyn Progress,
    ) -> Result<Bundle> {
        // A staging dir left by a killed process keeps its partial files for resuming; anything
        // else in it is removed.
        std::fs::create_dir_all(staging).map_err(|e| io_err("creating", staging, e))?;
        let keep: [String; 2] = [
            format!("{}.part", plan.kernel.file_name),
            format!("{}.part", plan.rootfs.file_name),
        ];
        if let Ok(entries) = std::fs::read_dir(staging) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let (kernel, rootfs) = try_join(
            self.fetch(&plan.kernel, staging, progress),
            self.fetch(&plan.rootfs, staging, progress),
        )
        .await?;
        let now = now_unix_ms();
        let record_of = |art: &PlannedArtifact, got: &Downloaded| ArtifactRecord {
            file_name: art.file_name.clone(),
            path: dir.join(&art.file_name),
            sha256: got.sha256.clone(),
            size_bytes: got.size,
            origin: art.origin(),
        };
        let record = BundleRecord {
            schema_version: 1,
            bundle_id: plan.bundle_id.clone(),
            name: plan.name.clone(),
            preset: plan.preset.to_owned(),
            arch: plan.arch,
            firecracker_version: plan.firecracker_version.clone(),
            rootfs_type: plan.rootfs_type,
            rootfs_is_read_only: plan.rootfs_is_read_only,
            boot_args: plan.boot_args.clone(),
            kernel: record_of(&plan.kernel, &kernel),
            rootfs: record_of(&plan.rootfs, &rootfs),
            source: plan.source.clone(),
            created_unix_ms: now,
            last_accessed_unix_ms: now,
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| {
            Error::new(ErrorCode::Internal, "serializing the bundle record").with_source(e)
        })?;
        let manifest = staging.join(MANIFEST_FILE);
        write_atomic(&manifest, &json).map_err(|e| io_err("writing", &manifest, e))?;
        let old = self.internal(&plan.bundle_id, "old");
        let _ = std::fs::remove_dir_all(&old);
        let replaced = dir.exists();
        if replaced {
            std::fs::rename(dir, &old).map_err(|e| io_err("moving aside", dir, e))?;
        }
        if let Err(e) = std::fs::rename(staging, dir) {
            if replaced {
                let _ = std::fs::rename(&old, dir);
            }
            return Err(io_err("renaming", staging, e));
        }
        if replaced {
            let _ = std::fs::remove_dir_all(&old);
        }
        sync_dir(&self.opts.dir).map_err(|e| io_err("syncing", &self.opts.dir, e))?;
        Ok(Bundle {
            dir: dir.to_owned(),
            record,
        })
    }

    /// The most recently used cached bundle made from `preset` for `arch` that still verifies.
    fn offline_fallback(&self, preset: &BaseImagePreset, arch: Arch) -> Option<Bundle> {
        let lts = normalize_fc_version(&self.opts.lts_version).ok();
        let candidates = self.list().ok()?.into_iter().filter(|b| {
            let r = &b.record;
            r.arch == arch
                && r.preset == preset.kind()
                && match preset {
                    BaseImagePreset::Latest => true,
                    BaseImagePreset::Lts => r.firecracker_version == lts,
                    BaseImagePreset::Hosted(ManifestSource::Url(u)) => matches!(
                        &r.source,
                        BundleSource::Hosted { manifest_url: Some(m), .. } if m == u
                    ),
                    BaseImagePreset::Hosted(ManifestSource::Path(p)) => {
                        let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
                        matches!(
                            &r.source,
                            BundleSource::Hosted { manifest_path: Some(m), .. } if *m == abs
                        )
                    }
                }
        });
        for bundle in candidates {
            let lock_path = self.internal(bundle.id(), "lock");
            let Ok(_lock) = PathLock::acquire_blocking(&lock_path) else {
                continue;
            };
            if let Err(why) = verify_files(&bundle.dir, &bundle.record) {
                tracing::warn!(bundle = %bundle.id(), reason = %why, "cached bundle does not verify");
                continue;
            }
            if let Ok(record) = touch(&bundle.dir, bundle.record.clone()) {
                return Some(Bundle {
                    dir: bundle.dir,
                    record,
                });
            }
        }
        None
    }

    /// Every cached bundle with a readable record, most recently used first.
    ///
    /// # Errors
    /// [`ErrorCode::IoError`] when the cache directory exists but cannot be read.
    pub fn list(&self) -> Result<Vec<Bundle>> {
        let mut bundles = Vec::new();
        let entries = match std::fs::read_dir(&self.opts.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(bundles),
            Err(e) => return Err(Error::io(ErrorCode::IoError, "listing", &self.opts.dir, e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_valid_bundle_id(&name) || !entry.path().is_dir() {
                continue;
            }
            if let Some(record) = read_record(&entry.path())
                && record.bundle_id == name
            {
                bundles.push(Bundle {
                    dir: entry.path(),
                    record,
                });
            }
        }
        bundles.sort_by(|a, b| {
            b.record
                .last_accessed_unix_ms
                .cmp(&a.record.last_accessed_unix_ms)
                .then_with(|| a.record.bundle_id.cmp(&b.record.bundle_id))
        });
        Ok(bundles)
    }

    /// Evicts the least recently used bundles so that at most `keep` remain, never evicting
    /// `keep_bundle_id` or a bundle another process is working on. Logs a warning per eviction and
    /// returns the evicted ids.
    ///
    /// # Errors
    /// [`ErrorCode::IoError`] when the cache cannot be read or a bundle cannot be removed.
    pub async fn prune(&self, keep_bundle_id: Option<&str>) -> Result<Vec<String>> {
        let this = self.clone();
        let keep_id = keep_bundle_id.map(str::to_owned);
        tokio::task::spawn_blocking(move || this.prune_blocking(keep_id.as_deref()))
            .await
            .map_err(|e| Error::new(ErrorCode::Internal, "prune task").with_source(e))?
    }

    fn prune_blocking(&self, keep_id: Option<&str>) -> Result<Vec<String>> {
        if !self.opts.dir.exists() {
            return Ok(Vec::new());
        }
        let lock_path = self.opts.dir.join("+cache.lock");
        let _lock = PathLock::acquire_blocking(&lock_path)
            .map_err(|e| Error::io(ErrorCode::IoError, "locking", &lock_path, e))?;
        let bundles = self.list()?;
        let mut slots = self.opts.keep;
        if keep_id.is_some_and(|k| bundles.iter().any(|b| b.id() == k)) {
            slots -= 1;
        }
        let mut evicted = Vec::new();
        for bundle in bundles.iter().filter(|b| Some(b.id()) != keep_id) {
            if slots > 0 {
                slots -= 1;
                continue;
            }
            let id = bundle.id().to_owned();
            let Some(_busy) = PathLock::try_acquire(&self.internal(&id, "lock")).map_err(|e| {
                Error::io(
                    ErrorCode::IoError,
                    "locking",
                    &self.internal(&id, "lock"),
                    e,
                )
            })?
            else {
                tracing::debug!(bundle = %id, "bundle in use; not evicting");
                continue;
            };
            let old = self.internal(&id, "old");
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(&bundle.dir, &old)
                .map_err(|e| Error::io(ErrorCode::IoError, "evicting", &bundle.dir, e))?;
            std::fs::remove_dir_all(&old)
                .map_err(|e| Error::io(ErrorCode::IoError, "removing", &old, e))?;
            tracing::warn!(
                bundle = %id,
                limit = self.opts.keep,
                "evicted least recently used base image from the cache"
            );
            evicted.push(id);
        }
        Ok(evicted)
    }

    /// Removes one bundle.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] when it is not cached; [`ErrorCode::IoError`] on removal failures.
    pub async fn remove(&self, bundle_id: &str) -> Result<()> {
        if !is_valid_bundle_id(bundle_id) || !self.bundle_dir(bundle_id).is_dir() {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("no cached base image {bundle_id:?}"),
            ));
        }
        let lock_path = self.internal(bundle_id, "lock");
        let _lock = PathLock::acquire(&lock_path)
            .await
            .map_err(|e| Error::io(ErrorCode::IoError, "locking", &lock_path, e))?;
        let dir = self.bundle_dir(bundle_id);
        std::fs::remove_dir_all(&dir)
            .map_err(|e| Error::io(ErrorCode::IoError, "removing", &dir, e))
    }
}

fn read_record(dir: &Path) -> Option<BundleRecord> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Checks every artifact of `record` in `dir`: present, recorded size, recorded SHA-256.
fn verify_files(dir: &Path, record: &BundleRecord) -> std::result::Result<(), String> {
    for rec in [&record.kernel, &record.rootfs] {
        let path = dir.join(&rec.file_name);
        let meta =
            std::fs::metadata(&path).map_err(|e| format!("{} is missing: {e}", rec.file_name))?;
        if meta.len() != rec.size_bytes {
            return Err(format!(
                "{} is {} bytes, recorded {}",
                rec.file_name,
                meta.len(),
                rec.size_bytes
            ));
        }
        let (sha, _) =
            hash_file(&path).map_err(|e| format!("{} cannot be read: {e}", rec.file_name))?;
        if sha != rec.sha256 {
            return Err(format!(
                "{} hashes to {sha}, recorded {}",
                rec.file_name, rec.sha256
            ));
        }
    }
    Ok(())
}

/// Bumps the last-accessed time of a bundle record and writes it back.
fn touch(dir: &Path, mut record: BundleRecord) -> Result<BundleRecord> {
    record.last_accessed_unix_ms = now_unix_ms().max(record.last_accessed_unix_ms + 1);
    let json = serde_json::to_vec_pretty(&record).map_err(|e| {
        Error::new(ErrorCode::Internal, "serializing the bundle record").with_source(e)
    })?;
    let manifest = dir.join(MANIFEST_FILE);
    write_atomic(&manifest, &json).map_err(|e| io_err("writing", &manifest, e))?;
    Ok(record)
}

/// Returns the cached bundle when it verifies against its record and the plan; bumps its
/// last-accessed time.
fn reuse(dir: &Path, plan: &Plan) -> Result<Option<Bundle>> {
    let Some(record) = read_record(dir) else {
        if dir.exists() {
            tracing::warn!(dir = %dir.display(), "cached bundle has no readable record; downloading again");
        }
        return Ok(None);
    };
    let mismatch = |why: String| {
        tracing::warn!(bundle = %plan.bundle_id, reason = %why, "cached bundle does not verify; downloading again");
        Ok(None)
    };
    if record.bundle_id != plan.bundle_id || record.arch != plan.arch {
        return mismatch("the record names another bundle".into());
    }
    for (rec, planned) in [
        (&record.kernel, &plan.kernel),
        (&record.rootfs, &plan.rootfs),
    ] {
        if rec.file_name != planned.file_name || rec.origin != planned.origin() {
            return mismatch(format!(
                "{} now comes from {}",
                rec.file_name,
                planned.origin()
            ));
        }
        if planned.expected.size.is_some_and(|s| s != rec.size_bytes)
            || planned
                .expected
                .sha256
                .as_ref()
                .is_some_and(|s| *s != rec.sha256)
        {
            return mismatch(format!("{} changed upstream", rec.file_name));
        }
    }
    if let Err(why) = verify_files(dir, &record) {
        return mismatch(why);
    }
    let record = touch(dir, record)?;
    Ok(Some(Bundle {
        dir: dir.to_owned(),
        record,
    }))
}

fn plan_from_selection(
    sel: &CiSelection,
    version: &str,
    arch: Arch,
    preset: &'static str,
    bucket: &str,
) -> Plan {
    let kernel_name = sel
        .kernel
        .key
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let rootfs_name = sel
        .rootfs
        .key
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let bundle_id = format!(
        "fc-ci-{}-{arch}-vmlinux-{}-ubuntu-{}-{}",
        sel.train,
        sel.kernel_version,
        sel.ubuntu_version,
        sel.rootfs_type.as_str()
    );
    Plan {
        name: format!(
            "Firecracker CI {} ({arch}): Linux {}, Ubuntu {} {}",
            sel.train,
            sel.kernel_version,
            sel.ubuntu_version,
            sel.rootfs_type.as_str()
        ),
        bundle_id,
        preset,
        arch,
        firecracker_version: Some(version.to_owned()),
        rootfs_type: sel.rootfs_type,
        rootfs_is_read_only: sel.rootfs_type.is_read_only(),
        boot_args: sel.rootfs_type.default_boot_args(),
        kernel: PlannedArtifact {
            file_name: kernel_name,
            location: ArtifactLocation::Url(format!("{bucket}/{}", sel.kernel.key)),
            expected: Expected {
                sha256: None,
                size: Some(sel.kernel.size),
            },
        },
        rootfs: PlannedArtifact {
            file_name: rootfs_name,
            location: ArtifactLocation::Url(format!("{bucket}/{}", sel.rootfs.key)),
            expected: Expected {
                sha256: None,
                size: Some(sel.rootfs.size),
            },
        },
        source: BundleSource::CiBucket {
            bucket_url: bucket.to_owned(),
            train: sel.train.clone(),
            prefix: sel.prefix.clone(),
            kernel_key: sel.kernel.key.clone(),
            rootfs_key: sel.rootfs.key.clone(),
        },
    }
}

fn plan_hosted(m: &HostedManifest, source: &ManifestSource, arch: Arch) -> Result<Plan> {
    if let Some(want) = m.arch
        && want != arch
    {
        return Err(prepare_failed(format!(
            "base image {} is built for {want}, not {arch}",
            m.bundle_id
        ))
        .with_details(json!({ "field": "arch", "manifest": want, "requested": arch })));
    }
    let planned = |a: &super::manifest::ArtifactSpec| PlannedArtifact {
        file_name: a.file_name.clone(),
        location: a.location.clone(),
        expected: Expected {
            sha256: a.sha256.clone(),
            size: a.size_bytes,
        },
    };
    Ok(Plan {
        bundle_id: m.bundle_id.clone(),
        name: m.name.clone(),
        preset: "hosted",
        arch,
        firecracker_version: m.firecracker_version.clone(),
        rootfs_type: m.rootfs_type,
        rootfs_is_read_only: m.rootfs_is_read_only,
        boot_args: m.boot_args.clone(),
        kernel: planned(&m.kernel),
        rootfs: planned(&m.rootfs),
        source: match source {
            ManifestSource::Url(u) => BundleSource::Hosted {
                manifest_url: Some(u.clone()),
                manifest_path: None,
            },
            ManifestSource::Path(p) => BundleSource::Hosted {
                manifest_url: None,
                manifest_path: Some(std::path::absolute(p).unwrap_or_else(|_| p.clone())),
            },
        },
    })
}
