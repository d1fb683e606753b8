//! Root filesystems from OCI / Docker images, without Docker.
//!
//! # Flow
//!
//! 1. **Sources.** [`ImageStore::pull`] talks to a registry ([`registry`]): it fetches the
//!    manifest for a tag or digest (answering `Basic` or `Bearer` challenges), resolves an index /
//!    manifest list to the requested [`Platform`] (`linux/amd64` by default), verifies the manifest
//!    digest, and downloads the config and every layer through the shared
//!    [`Downloader`] (resumable, SHA-256 verified, progress per layer).
//!    [`ImageStore::import`] reads the same objects from a `docker save` tarball (either form), an
//!    OCI layout directory or an OCI layout tar ([`archive`]).
//! 2. **Cache.** Everything is content-addressed below the store root:
//!    - `blobs/sha256/<hex>`: manifests, configs and layers, shared between images;
//!    - `refs/<sha256 of the reference>.json`: one [`ImageRecord`] per image reference;
//!    - `rootfs/<manifest hex>.<ext4|squashfs>` and `rootfs/<manifest hex>.config.json`: built
//!      root filesystems with the image config beside them;
//!    - `tmp/`: scratch space of running operations.
//!
//!    Records and rootfs images appear by atomic rename only; a failed pull or conversion removes
//!    what it created (blobs it added included), so the cache never holds half an entry.
//! 3. **Layers.** [`ImageStore::rootfs`] applies the layers in order to a scratch directory with
//!    [`layer::apply_layer`] (gzip / zstd / plain detected by magic bytes, whiteouts, opaque
//!    directories, hard links, symlinks, device nodes, ownership, xattrs; every path resolved
//!    beneath the root, escapes refused with [`ErrorCode::UnsafeArchivePath`]).
//! 4. **Output.** The tree becomes an ext4 image (`mkfs.ext4 -d`, sized to content plus headroom)
//!    or a squashfs image (`mksquashfs`), built once per manifest digest and format ([`build`]).
//!
//! Locks: blob downloads and rootfs builds take a per-entry lock; pulls and imports hold a shared
//! store lock that [`ImageStore::prune`] takes exclusively, so pruning never removes a blob a
//! running pull is about to reference.
//!
//! Layout, formats and error codes are described in `docs/images.md`.

pub mod archive;
pub mod build;
pub mod layer;
pub mod reference;
pub mod registry;
pub mod spec;

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::download::{Expected, copy_verified};
use super::lock::PathLock;
use super::progress::{Progress, ProgressEvent, ProgressUpdate};
use super::{Downloader, write_atomic};
use crate::error::{Error, ErrorCode, Result};

pub use reference::Reference;
pub use spec::Platform;

use archive::Source;
use registry::Registry;
use spec::{Descriptor, DockerSaveEntry, Index, Manifest, RawImageConfig};

/// Credentials for a registry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to pull or import an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullOptions {
    /// The guest platform; index entries are resolved to it (default `linux/amd64`).
    pub platform: Platform,
    /// Credentials for `Basic` challenges and for bearer-token requests.
    pub auth: Option<RegistryAuth>,
    /// Use plain HTTP for registries on `localhost`, `127.0.0.1` or `[::1]`.
    pub allow_http: bool,
}

/// The filesystem a root filesystem image is built as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsFormat {
    /// ext4 (`mkfs.ext4 -d`).
    Ext4,
    /// squashfs (`mksquashfs`, read-only).
    Squashfs,
}

impl RootfsFormat {
    /// `ext4` or `squashfs`, also the file extension.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Squashfs => "squashfs",
        }
    }
}

impl From<RootfsFormat> for super::RootfsType {
    /// The base-image rootfs type with the same filesystem, for its boot arguments
    /// ([`RootfsType::default_boot_args`](super::RootfsType::default_boot_args)).
    fn from(format: RootfsFormat) -> Self {
        match format {
            RootfsFormat::Ext4 => Self::Ext4,
            RootfsFormat::Squashfs => Self::Squashfs,
        }
    }
}

/// What an image runs: the runtime part of its config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `ENTRYPOINT`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `CMD`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `ENV`, as `KEY=value`.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WORKDIR`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `USER` (`name`, `uid`, `uid:gid`, ...).
    #[serde(default)]
    pub user: Option<String>,
}

impl ImageConfig {
    /// The command line Docker would run: the entrypoint followed by `override_cmd` when it is
    /// not empty, else by the image's `CMD`.
    #[must_use]
    pub fn command(&self, override_cmd: &[String]) -> Vec<String> {
        let tail = if override_cmd.is_empty() {
            &self.cmd
        } else {
            override_cmd
        };
        self.entrypoint.iter().chain(tail).cloned().collect()
    }
}

/// A pulled or imported image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The normalized reference (`docker.io/library/python:3.13-slim`), or the manifest digest
    /// for an unnamed import.
    pub reference: String,
    /// The manifest digest (`sha256:<hex>`); the cache key.
    pub digest: String,
    /// The platform of the image.
    pub platform: Platform,
    /// Entrypoint, command, environment, working directory and user.
    pub config: ImageConfig,
    /// Layer digests, bottom first.
    pub layers: Vec<String>,
    /// Config plus layer bytes (compressed, as stored).
    pub size_bytes: u64,
    /// When the record was written (Unix seconds).
    pub created_at: u64,
    /// The config blob's digest.
    #[serde(default)]
    pub config_digest: String,
}

impl ImageRecord {
    fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }
}

/// What [`ImageStore::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Blob digests removed.
    pub blobs: Vec<String>,
    /// Root filesystem images (and their config files) removed.
    pub rootfs: Vec<PathBuf>,
    /// Leftover scratch directories removed.
    pub scratch: Vec<PathBuf>,
    /// Bytes freed.
    pub freed_bytes: u64,
}

/// The image cache below `<data_dir>/images`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    downloader: Downloader,
}

fn store_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(ErrorCode::StoreFailed, what, path, e)
}

fn pull_failed(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::ImagePullFailed, msg)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn digest_hex(digest: &str) -> Result<String> {
    reference::parse_digest(digest)
        .map(|d| d["sha256:".len()..].to_owned())
        .ok_or_else(|| {
            pull_failed(format!(
                "unsupported digest {digest:?} (only sha256 is accepted)"
            ))
        })
}

fn report(
    progress: &dyn Progress,
    artifact: &str,
    done: u64,
    total: Option<u64>,
    ev: ProgressEvent,
) {
    progress.update(&ProgressUpdate {
        artifact,
        done,
        total,
        event: ev,
    });
}

/// A store-wide lock: shared for pulls and builds, exclusive for prune.
struct StoreLock(#[allow(dead_code)] File);

/// Blobs added by one operation, removed again unless it succeeds.
struct Added<'a> {
    store: &'a ImageStore,
    blobs: Vec<String>,
    armed: bool,
}

impl Drop for Added<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let referenced = self.store.referenced().unwrap_or_default();
        for hex in &self.blobs {
            if !referenced.contains(hex) {
                let _ = std::fs::remove_file(self.store.blob_path(hex));
            }
        }
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Picks the index entry for `platform`.
fn choose_platform<'a>(
    index: &'a Index,
    platform: &Platform,
    what: &str,
) -> Result<&'a Descriptor> {
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .ok_or_else(|| {
            let available: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                .collect();
            pull_failed(format!(
                "{what} has no image for {platform} (available: {})",
                if available.is_empty() {
                    "none".to_owned()
                } else {
                    available.join(", ")
                }
            ))
            .with_details(json!({ "platform": platform.to_string(), "available": available }))
        })
}

impl ImageStore {
    /// Opens (creating) a store rooted at `root`, normally `<data_dir>/images`.
    ///
    /// # Errors
    /// [`ErrorCode::StoreFailed`] if the directories cannot be created,
    /// [`ErrorCode::Internal`] if the HTTP client cannot be built.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for sub in ["blobs/sha256", "refs", "rootfs", "tmp"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(|e| store_err("creating", &dir, e))?;
        }
        Ok(Self {
            root,
            downloader: Downloader::new()?,
        })
    }

    /// Replaces the downloader (retry policy, tests).
    #[must_use]
    pub fn with_downloader(mut self, downloader: Downloader) -> Self {
        self.downloader = downloader;
        self
    }

    /// The store root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex)
    }

    fn ref_path(&self, normalized: &str) -> PathBuf {
        self.root
            .join("refs")
            .join(format!("{}.json", sha256_hex(normalized.as_bytes())))
    }

    /// Where the root filesystem of `image` in `format` lives (built or not).
    #[must_use]
    pub fn rootfs_path(&self, image: &ImageRecord, format: RootfsFormat) -> PathBuf {
        self.root
            .join("rootfs")
            .join(format!("{}.{}", image.hex(), format.as_str()))
    }

    /// Where the image config is stored beside its root filesystems.
    #[must_use]
    pub fn config_path(&self, image: &ImageRecord) -> PathBuf {
        self.root
            .join("rootfs")
            .join(format!("{}.config.json", image.hex()))
    }

    fn store_lock(&self, exclusive: bool) -> Result<StoreLock> {
        let path = self.root.join(".store.lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| store_err("opening", &path, e))?;
        if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        }
        .map_err(|e| store_err("locking", &path, e))?;
        Ok(StoreLock(file))
    }

    fn scratch(&self, what: &str) -> Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = self
            .root
            .join("tmp")
            .join(format!("{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| store_err("creating", &dir, e))?;
        Ok(Scratch(dir))
    }

    /// Pulls `reference` from its registry.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidImageReference`] for a malformed reference;
    /// [`ErrorCode::ImagePullFailed`] for registry, authentication (status 401), platform and
    /// digest failures; [`ErrorCode::DownloadFailed`] for blob transfers;
    /// [`ErrorCode::StoreFailed`] for local writes. Nothing is left in the cache on error.
    pub async fn pull(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<ImageRecord> {
        let parsed = Reference::parse(reference)?;
        let registry = Registry::new(&parsed, options)?;
        let _shared = self.store_lock(false)?;
        let mut added = Added {
            store: self,
            blobs: Vec::new(),
            armed: true,
        };
        let top = registry.manifest(parsed.manifest_ref()).await?;
        if let Some(want) = &parsed.digest {
            let got = format!("sha256:{}", sha256_hex(&top.body));
            if &got != want {
                return Err(pull_failed(format!(
                    "the registry answered {parsed} with manifest {got}"
                ))
                .with_details(json!({ "expected": want, "actual": got })));
            }
        }
        let body = if spec::is_index(top.media_type.as_deref(), &top.body) {
            let index: Index = spec::parse_json(&top.body, "the image index")?;
            let chosen = choose_platform(&index, &options.platform, &parsed.to_string())?;
            let fetched = registry.manifest(&chosen.digest).await?;
            let got = format!("sha256:{}", sha256_hex(&fetched.body));
            if got != chosen.digest {
                return Err(pull_failed(format!(
                    "manifest {} of {parsed} has digest {got}",
                    chosen.digest
                )));
            }
            fetched.body
        } else {
            top.body
        };
        let manifest: Manifest = spec::parse_json(&body, "the image manifest")?;
        let manifest_hex = sha256_hex(&body);

        let headers = registry.auth_headers();
        let mut blobs = vec![manifest.config.clone()];
        blobs.extend(manifest.layers.iter().cloned());
        for desc in &blobs {
            let hex = digest_hex(&desc.digest)?;
            let dest = self.blob_path(&hex);
            let _lock = PathLock::acquire(&self.root.join("tmp").join(format!(".blob-{hex}.lock")))
                .await
                .map_err(|e| store_err("locking", &dest, e))?;
            if dest.exists() {
                report(
                    progress,
                    &hex,
                    desc.size,
                    Some(desc.size),
                    ProgressEvent::Reused,
                );
                continue;
            }
            self.downloader
                .fetch_to_file_with(
                    &registry.blob_url(&desc.digest),
                    &dest,
                    &Expected {
                        sha256: Some(hex.clone()),
                        size: Some(desc.size),
                    },
                    &headers,
                    progress,
                )
                .await?;
            added.blobs.push(hex);
        }
        let manifest_path = self.blob_path(&manifest_hex);
        if !manifest_path.exists() {
            write_atomic(&manifest_path, &body)
                .map_err(|e| store_err("writing", &manifest_path, e))?;
            added.blobs.push(manifest_hex.clone());
        }
        let record = self.finish_record(
            parsed.to_string(),
            &manifest_hex,
            &manifest,
            Some(&options.platform),
        )?;
        added.armed = false;
        Ok(record)
    }

    /// Builds and writes the record of a manifest whose blobs are all stored.
    fn finish_record(
        &self,
        reference: String,
        manifest_hex: &str,
        manifest: &Manifest,
        wanted: Option<&Platform>,
    ) -> Result<ImageRecord> {
        let config_hex = digest_hex(&manifest.config.digest)?;
        let config_path = self.blob_path(&config_hex);
        let mut raw = Vec::new();
        File::open(&config_path)
            .and_then(|f| f.take(16 << 20).read_to_end(&mut raw))
            .map_err(|e| store_err("reading", &config_path, e))?;
        let cfg: RawImageConfig = spec::parse_json(&raw, "the image config")?;
        let platform = Platform {
            os: if cfg.os.is_empty() {
                "linux".into()
            } else {
                cfg.os.clone()
            },
            architecture: if cfg.architecture.is_empty() {
                "amd64".into()
            } else {
                cfg.architecture.clone()
            },
            variant: cfg.variant.clone(),
        };
        if let Some(want) = wanted
            && !cfg.architecture.is_empty()
            && !want.matches(&platform)
        {
            return Err(pull_failed(format!(
                "{reference} is an image for {platform}, not {want}"
            ))
            .with_details(
                json!({ "platform": platform.to_string(), "wanted": want.to_string() }),
            ));
        }
        if !cfg.rootfs.diff_ids.is_empty() && cfg.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(pull_failed(format!(
                "the config of {reference} lists {} layers, the manifest {}",
                cfg.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let run = cfg.config.unwrap_or_default();
        let config = ImageConfig {
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.filter(|w| !w.is_empty()),
            user: run.user.filter(|u| !u.is_empty()),
        };
        let record = ImageRecord {
            reference,
            digest: format!("sha256:{manifest_hex}"),
            platform,
            config,
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            size_bytes: manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            created_at: crate::unix_time(),
            config_digest: manifest.config.digest.clone(),
        };
        let path = self.ref_path(&record.reference);
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| Error::new(ErrorCode::Internal, "serializing a record").with_source(e))?;
        write_atomic(&path, &json).map_err(|e| store_err("writing", &path, e))?;
        Ok(record)
    }

    /// Imports a `docker save` tarball (Docker's `manifest.json` form or the OCI-layout form), an
    /// OCI layout directory, or an OCI layout tar. The reference comes from the archive
    /// (`RepoTags`, `io.containerd.image.name`, or a full `org.opencontainers.image.ref.name`);
    /// an unnamed image is recorded under its manifest digest.
    ///
    /// # Errors
    /// [`ErrorCode::ImagePullFailed`] for unreadable or inconsistent archives (digest mismatches
    /// included), [`ErrorCode::UnsafeArchivePath`] for members climbing out of the archive,
    /// [`ErrorCode::StoreFailed`] for local writes. Nothing is left in the cache on error.
    pub async fn import(
        &self,
        path: &Path,
        options: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<ImageRecord> {
        self.import_as(path, None, options, progress).await
    }

    /// [`import`](Self::import) under an explicit `name` (a reference).
    ///
    /// # Errors
    /// As [`import`](Self::import), plus [`ErrorCode::InvalidImageReference`] for a bad `name`.
    pub async fn import_as(
        &self,
        path: &Path,
        name: Option<&str>,
        options: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<ImageRecord> {
        let name = name.map(Reference::parse).transpose()?;
        let store = self.clone();
        let path = path.to_owned();
        let options = options.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::task::spawn_blocking(move || {
            let sink = move |u: &ProgressUpdate<'_>| {
                let _ = tx.send((u.artifact.to_owned(), u.done, u.total, u.event));
            };
            store.import_blocking(&path, name, &options, &sink)
        });
        while let Some((artifact, done, total, ev)) = rx.recv().await {
            report(progress, &artifact, done, total, ev);
        }
        task.await
            .map_err(|e| Error::new(ErrorCode::Internal, "import task failed").with_source(e))?
    }

    fn import_blocking(
        &self,
        path: &Path,
        name: Option<Reference>,
        options: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<ImageRecord> {
        let _shared = self.store_lock(false)?;
        let scratch = self.scratch("import")?;
        let source = Source::open(path, &scratch.0)?;
        let mut added = Added {
            store: self,
            blobs: Vec::new(),
            armed: true,
        };
        let mut found_name: Option<String>;
        let (manifest_body, manifest) = if source.has("index.json") {
            let body = source.read_doc("index.json")?;
            let index: Index = spec::parse_json(&body, "index.json")?;
            let mut chosen = if index.manifests.len() == 1 {
                index.manifests[0].clone()
            } else {
                choose_platform(&index, &options.platform, "index.json")?.clone()
            };
            found_name = name_from_annotations(&chosen);
            // Nested indexes (one per tag, as Docker writes them).
            for _ in 0..4 {
                let body = self.read_blob_from(&source, &chosen.digest)?;
                if spec::is_index(
                    Some(chosen.media_type.as_str()).filter(|m| !m.is_empty()),
                    &body,
                ) {
                    let inner: Index = spec::parse_json(&body, "a nested index")?;
                    chosen = choose_platform(&inner, &options.platform, "a nested index")?.clone();
                    continue;
                }
                break;
            }
            let body = self.read_blob_from(&source, &chosen.digest)?;
            let manifest: Manifest = spec::parse_json(&body, "the image manifest")?;
            if found_name.is_none() && source.has("manifest.json") {
                found_name = docker_save_name(&source);
            }
            (body, manifest)
        } else if source.has("manifest.json") {
            let body = source.read_doc("manifest.json")?;
            let entries: Vec<DockerSaveEntry> = spec::parse_json(&body, "manifest.json")?;
            let entry = entries
                .first()
                .ok_or_else(|| pull_failed(format!("{} lists no image", path.display())))?;
            found_name = entry
                .repo_tags
                .as_ref()
                .and_then(|t| t.first())
                .and_then(|t| Reference::parse(t).ok())
                .map(|r| r.to_string());
            let describe = |member: &str, media_type: &str| -> Result<Descriptor> {
                let (file, info) = source.locate(member)?;
                let (hex, size) = match info {
                    Some(m) => (m.sha256, m.size),
                    None => super::download::hash_file(&file)
                        .map_err(|e| store_err("hashing", &file, e))?,
                };
                Ok(Descriptor {
                    media_type: media_type.to_owned(),
                    digest: format!("sha256:{hex}"),
                    size,
                    platform: None,
                    annotations: Default::default(),
                })
            };
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(spec::DOCKER_MANIFEST.to_owned()),
                config: describe(
                    &entry.config,
                    "application/vnd.docker.container.image.v1+json",
                )?,
                layers: entry
                    .layers
                    .iter()
                    .map(|l| describe(l, "application/vnd.docker.image.rootfs.diff.tar"))
                    .collect::<Result<_>>()?,
            };
            // Blobs are addressed by digest from here on: stage them under that name.
            for (member, desc) in std::iter::once((&entry.config, &manifest.config))
                .chain(entry.layers.iter().zip(&manifest.layers))
            {
                self.ingest(&source, member, desc, &mut added, progress)?;
            }
            let body = serde_json::to_vec(&manifest)
                .map_err(|e| Error::new(ErrorCode::Internal, "serializing").with_source(e))?;
            (body, manifest)
        } else {
            return Err(pull_failed(format!(
                "{} is neither a docker save archive nor an OCI layout (no index.json or manifest.json)",
                path.display()
            )));
        };
        // OCI layouts: blobs by digest.
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let member = format!("blobs/sha256/{}", digest_hex(&desc.digest)?);
            if source.has(&member) {
                self.ingest(&source, &member, desc, &mut added, progress)?;
            } else if !self.blob_path(&digest_hex(&desc.digest)?).exists() {
                return Err(pull_failed(format!(
                    "{} lacks blob {}",
                    path.display(),
                    desc.digest
                )));
            }
        }
        let manifest_hex = sha256_hex(&manifest_body);
        let manifest_path = self.blob_path(&manifest_hex);
        if !manifest_path.exists() {
            write_atomic(&manifest_path, &manifest_body)
                .map_err(|e| store_err("writing", &manifest_path, e))?;
            added.blobs.push(manifest_hex.clone());
        }
        let reference = name
            .map(|r| r.to_string())
            .or(found_name)
            .unwrap_or_else(|| format!("sha256:{manifest_hex}"));
        let record =
            self.finish_record(reference, &manifest_hex, &manifest, Some(&options.platform))?;
        added.armed = false;
        Ok(record)
    }

    fn read_blob_from(&self, source: &Source, digest: &str) -> Result<Vec<u8>> {
        let hex = digest_hex(digest)?;
        let body = source.read_doc(&format!("blobs/sha256/{hex}"))?;
        if sha256_hex(&body) != hex {
            return Err(pull_failed(format!(
                "blob {digest} does not match its digest"
            )));
        }
        Ok(body)
    }

    /// Copies archive member `member` into the blob store as `desc`, verifying size and digest.
    fn ingest(
        &self,
        source: &Source,
        member: &str,
        desc: &Descriptor,
        added: &mut Added<'_>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let hex = digest_hex(&desc.digest)?;
        let dest = self.blob_path(&hex);
        if dest.exists() {
            report(
                progress,
                &hex,
                desc.size,
                Some(desc.size),
                ProgressEvent::Reused,
            );
            return Ok(());
        }
        let (file, info) = source.locate(member)?;
        match info {
            Some(m) => {
                if m.sha256 != hex || m.size != desc.size {
                    return Err(pull_failed(format!(
                        "{member} is sha256:{} ({} bytes), expected {} ({} bytes)",
                        m.sha256, m.size, desc.digest, desc.size
                    ))
                    .with_details(json!({ "expected": desc.digest, "actual": format!("sha256:{}", m.sha256) })));
                }
                std::fs::rename(&file, &dest).map_err(|e| store_err("storing", &dest, e))?;
                report(
                    progress,
                    &hex,
                    m.size,
                    Some(m.size),
                    ProgressEvent::Finished,
                );
            }
            None => {
                copy_verified(
                    &file,
                    &dest,
                    &Expected {
                        sha256: Some(hex.clone()),
                        size: Some(desc.size),
                    },
                    progress,
                    ErrorCode::ImagePullFailed,
                )?;
            }
        }
        added.blobs.push(hex);
        Ok(())
    }

    /// Builds (once per manifest digest and format) and returns the root filesystem of `image`.
    /// The image config is written beside it ([`config_path`](Self::config_path)).
    ///
    /// # Errors
    /// [`ErrorCode::UnsafeArchivePath`] for layers that would write outside the root,
    /// [`ErrorCode::ImagePullFailed`] for missing or corrupt layers,
    /// [`ErrorCode::RootfsCreateFailed`] when `mkfs.ext4` / `mksquashfs` fail. Nothing is left
    /// behind on error.
    pub async fn rootfs(
        &self,
        image: &ImageRecord,
        format: RootfsFormat,
        progress: &dyn Progress,
    ) -> Result<PathBuf> {
        let out = self.rootfs_path(image, format);
        let lock_path =
            self.root
                .join("tmp")
                .join(format!(".rootfs-{}-{}.lock", image.hex(), format.as_str()));
        let _lock = PathLock::acquire(&lock_path)
            .await
            .map_err(|e| store_err("locking", &lock_path, e))?;
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if out.exists() {
            let size = std::fs::metadata(&out).map_or(0, |m| m.len());
            report(progress, &name, size, Some(size), ProgressEvent::Reused);
            return Ok(out);
        }
        let store = self.clone();
        let image = image.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::task::spawn_blocking(move || {
            let sink = move |u: &ProgressUpdate<'_>| {
                let _ = tx.send((u.artifact.to_owned(), u.done, u.total, u.event));
            };
            store.build_blocking(&image, format, &sink)
        });
        while let Some((artifact, done, total, ev)) = rx.recv().await {
            report(progress, &artifact, done, total, ev);
        }
        task.await
            .map_err(|e| Error::new(ErrorCode::Internal, "rootfs task failed").with_source(e))?
    }

    fn build_blocking(
        &self,
        image: &ImageRecord,
        format: RootfsFormat,
        progress: &dyn Progress,
    ) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        let _shared = self.store_lock(false)?;
        let out = self.rootfs_path(image, format);
        let scratch = self.scratch(&format!(
            "build-{}",
            &image.hex()[..12.min(image.hex().len())]
        ))?;
        let tree = scratch.0.join("tree");
        std::fs::create_dir(&tree)
            .and_then(|()| std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| store_err("creating", &tree, e))?;
        for digest in &image.layers {
            let hex = digest_hex(digest)?;
            let path = self.blob_path(&hex);
            let file = File::open(&path).map_err(|e| {
                Error::io(ErrorCode::ImagePullFailed, "opening layer", &path, e)
                    .with_details(json!({ "layer": digest }))
            })?;
            let total = file.metadata().map_or(0, |m| m.len());
            let artifact = format!("layer {}", &hex[..12]);
            report(progress, &artifact, 0, Some(total), ProgressEvent::Started);
            let reader = Counting {
                inner: file,
                done: 0,
                last: 0,
                total,
                artifact: &artifact,
                progress,
            };
            layer::apply_layer(&tree, reader).map_err(|e| {
                let details = json!({ "layer": digest, "entry": e.details().and_then(|d| d.get("entry")).cloned() });
                e.with_details(details)
            })?;
            report(
                progress,
                &artifact,
                total,
                Some(total),
                ProgressEvent::Finished,
            );
        }
        build::add_mount_points(&tree)?;
        let artifact = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        report(progress, &artifact, 0, None, ProgressEvent::Started);
        let staged = scratch.0.join(format!("image.{}", format.as_str()));
        build::build_image(&tree, &staged, format)?;
        let config_path = self.config_path(image);
        let config = serde_json::to_vec_pretty(&image.config)
            .map_err(|e| Error::new(ErrorCode::Internal, "serializing").with_source(e))?;
        write_atomic(&config_path, &config).map_err(|e| store_err("writing", &config_path, e))?;
        File::open(&staged)
            .and_then(|f| f.sync_all())
            .map_err(|e| store_err("syncing", &staged, e))?;
        std::fs::rename(&staged, &out).map_err(|e| store_err("storing", &out, e))?;
        let _ = super::sync_dir(&self.root.join("rootfs"));
        let size = std::fs::metadata(&out).map_or(0, |m| m.len());
        report(
            progress,
            &artifact,
            size,
            Some(size),
            ProgressEvent::Finished,
        );
        Ok(out)
    }

    /// Every image record, sorted by reference.
    ///
    /// # Errors
    /// [`ErrorCode::StoreFailed`] if the records cannot be read.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| store_err("reading", &dir, e))? {
            let entry = entry.map_err(|e| store_err("reading", &dir, e))?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| store_err("reading", &path, e))?;
            let record: ImageRecord = serde_json::from_slice(&bytes).map_err(|e| {
                Error::new(
                    ErrorCode::StoreFailed,
                    format!("{} is corrupt", path.display()),
                )
                .with_source(e)
            })?;
            out.push(record);
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// Finds an image by reference (normalized like Docker), by digest, or by a digest prefix of
    /// at least 4 hex digits.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidArgument`] for a prefix that matches several images,
    /// [`ErrorCode::StoreFailed`] for unreadable records.
    pub fn get(&self, name: &str) -> Result<Option<ImageRecord>> {
        if let Ok(r) = Reference::parse(name) {
            let path = self.ref_path(&r.to_string());
            if path.exists() {
                let bytes = std::fs::read(&path).map_err(|e| store_err("reading", &path, e))?;
                let record = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::new(
                        ErrorCode::StoreFailed,
                        format!("{} is corrupt", path.display()),
                    )
                    .with_source(e)
                })?;
                return Ok(Some(record));
            }
        }
        let records = self.list()?;
        if let Some(exact) = records.iter().find(|r| r.reference == name) {
            return Ok(Some(exact.clone()));
        }
        let prefix = name
            .strip_prefix("sha256:")
            .unwrap_or(name)
            .to_ascii_lowercase();
        if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let hits: Vec<&ImageRecord> = records
            .iter()
            .filter(|r| r.hex().starts_with(&prefix))
            .collect();
        let distinct: HashSet<&str> = hits.iter().map(|r| r.digest.as_str()).collect();
        match distinct.len() {
            0 => Ok(None),
            1 => Ok(hits.first().map(|r| (*r).clone())),
            _ => Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "{name:?} matches {} images; give more digits",
                    distinct.len()
                ),
            )
            .with_details(json!({ "matches": distinct }))),
        }
    }

    /// Removes the record named `name` (see [`get`](Self::get)); blobs and root filesystems stay
    /// until [`prune`](Self::prune).
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] when no image matches; [`ErrorCode::StoreFailed`].
    pub fn remove(&self, name: &str) -> Result<ImageRecord> {
        let record = self.get(name)?.ok_or_else(|| {
            Error::new(ErrorCode::NotFound, format!("no image {name:?}"))
                .with_details(json!({ "image": name }))
        })?;
        let path = self.ref_path(&record.reference);
        std::fs::remove_file(&path).map_err(|e| store_err("removing", &path, e))?;
        let _ = super::sync_dir(&self.root.join("refs"));
        Ok(record)
    }

    /// Blob hexes referenced by some record (manifest, config, layers).
    fn referenced(&self) -> Result<HashSet<String>> {
        let mut keep = HashSet::new();
        for r in self.list()? {
            keep.insert(r.hex().to_owned());
            if let Some(h) = r.config_digest.strip_prefix("sha256:") {
                keep.insert(h.to_owned());
            }
            for l in &r.layers {
                if let Some(h) = l.strip_prefix("sha256:") {
                    keep.insert(h.to_owned());
                }
            }
        }
        Ok(keep)
    }

    /// Removes blobs, root filesystems and config files no record references, and scratch
    /// directories of operations that are no longer running.
    ///
    /// # Errors
    /// [`ErrorCode::StoreFailed`].
    pub fn prune(&self) -> Result<PruneReport> {
        let _exclusive = self.store_lock(true)?;
        let keep = self.referenced()?;
        let mut report = PruneReport::default();
        let blobs = self.root.join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs).map_err(|e| store_err("reading", &blobs, e))? {
            let entry = entry.map_err(|e| store_err("reading", &blobs, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.strip_suffix(".part").unwrap_or(&name);
            if keep.contains(hex) {
                continue;
            }
            let size = entry.metadata().map_or(0, |m| m.len());
            std::fs::remove_file(entry.path())
                .map_err(|e| store_err("removing", &entry.path(), e))?;
            report.freed_bytes += size;
            if !name.ends_with(".part") {
                report.blobs.push(format!("sha256:{name}"));
            }
        }
        let rootfs = self.root.join("rootfs");
        for entry in std::fs::read_dir(&rootfs).map_err(|e| store_err("reading", &rootfs, e))? {
            let entry = entry.map_err(|e| store_err("reading", &rootfs, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name.split('.').next().unwrap_or("");
            if keep.contains(hex) {
                continue;
            }
            let size = entry.metadata().map_or(0, |m| m.len());
            std::fs::remove_file(entry.path())
                .map_err(|e| store_err("removing", &entry.path(), e))?;
            report.freed_bytes += size;
            report.rootfs.push(entry.path());
        }
        // Scratch directories: "<what>-<pid>-<nanos>"; the exclusive lock means none is in use
        // by a process that holds the store lock.
        let tmp = self.root.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(|e| store_err("reading", &tmp, e))? {
            let entry = entry.map_err(|e| store_err("reading", &tmp, e))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir_all(entry.path());
                report.scratch.push(entry.path());
            }
        }
        report.blobs.sort();
        report.rootfs.sort();
        Ok(report)
    }
}

fn name_from_annotations(desc: &Descriptor) -> Option<String> {
    if let Some(n) = desc.annotations.get("io.containerd.image.name")
        && let Ok(r) = Reference::parse(n)
    {
        return Some(r.to_string());
    }
    let n = desc.annotations.get("org.opencontainers.image.ref.name")?;
    // Only a full name counts; a bare tag says nothing about the repository.
    if n.contains('/') || n.contains(':') {
        Reference::parse(n).ok().map(|r| r.to_string())
    } else {
        None
    }
}

fn docker_save_name(source: &Source) -> Option<String> {
    let body = source.read_doc("manifest.json").ok()?;
    let entries: Vec<DockerSaveEntry> = serde_json::from_slice(&body).ok()?;
    let tag = entries.first()?.repo_tags.as_ref()?.first()?.clone();
    Reference::parse(&tag).ok().map(|r| r.to_string())
}

/// Reports layer progress as compressed bytes are consumed.
struct Counting<'a, R> {
    inner: R,
    done: u64,
    last: u64,
    total: u64,
    artifact: &'a str,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.done - self.last >= 1 << 20 || (n == 0 && self.done != self.last) {
            self.last = self.done;
            report(
                self.progress,
                self.artifact,
                self.done,
                Some(self.total),
                ProgressEvent::Advanced,
            );
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.iter().map(|s| (*s).to_owned()).collect(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            ..ImageConfig::default()
        }
    }

    #[test]
    fn formats_map_to_rootfs_types() {
        use crate::image::RootfsType;
        assert_eq!(RootfsType::from(RootfsFormat::Ext4), RootfsType::Ext4);
        assert!(RootfsType::from(RootfsFormat::Squashfs).is_read_only());
        assert_eq!(RootfsFormat::Squashfs.as_str(), "squashfs");
    }

    #[test]
    fn command_follows_docker_rules() {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        // CMD only: arguments replace it.
        let c = cfg(&[], &["python3"]);
        assert_eq!(c.command(&[]), args(&["python3"]));
        assert_eq!(c.command(&args(&["bash"])), args(&["bash"]));
        // ENTRYPOINT + CMD: CMD is the default argument list.
        let c = cfg(&["/entry.sh"], &["serve"]);
        assert_eq!(c.command(&[]), args(&["/entry.sh", "serve"]));
        assert_eq!(
            c.command(&args(&["x", "y"])),
            args(&["/entry.sh", "x", "y"])
        );
        // ENTRYPOINT only.
        let c = cfg(&["/bin/app"], &[]);
        assert_eq!(c.command(&[]), args(&["/bin/app"]));
        // Neither.
        assert!(cfg(&[], &[]).command(&[]).is_empty());
    }

    #[test]
    fn records_round_trip_and_tolerate_missing_new_fields() {
        let rec = ImageRecord {
            reference: "docker.io/library/a:1".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            platform: Platform::default(),
            config: cfg(&["/e"], &["c"]),
            layers: vec![format!("sha256:{}", "b".repeat(64))],
            size_bytes: 10,
            created_at: 1,
            config_digest: format!("sha256:{}", "c".repeat(64)),
        };
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(
            serde_json::from_value::<ImageRecord>(json.clone()).unwrap(),
            rec
        );
        let mut older = json;
        older.as_object_mut().unwrap().remove("config_digest");
        let parsed: ImageRecord = serde_json::from_value(older).unwrap();
        assert_eq!(parsed.config_digest, "");
    }
}
