//! Shared helpers of the `image_*` integration tests: a fixture server populated like the real
//! services, data directories, a cache factory and a directory-tree fingerprint used to prove that
//! failed operations leave the cache exactly as it was.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flick::image::cache::{BaseImageCache, CacheOptions};
use flick::image::{Arch, DataDirs, Downloader, Endpoints, ProgressEvent, ProgressUpdate};
use flick_testkit::fixture_server::{
    BucketObject, CI_BUCKET, FixtureServer, ReleaseFixture, ReleaseOptions, ci_bucket_objects,
    pseudo_random_bytes,
};
use sha2::{Digest as _, Sha256};

/// The release the fixtures publish as latest.
pub const LATEST: &str = "v1.16.1";
/// Its CI train.
pub const LATEST_TRAIN: &str = "v1.16";
/// Size of each fixture kernel/rootfs.
pub const ARTIFACT_LEN: usize = 96 * 1024;

pub fn host_arch() -> Arch {
    Arch::host().expect("tests run on x86_64 or aarch64")
}

/// A fixture server with the latest release, and CI bucket trains v1.16 and v1.7 for the host
/// architecture.
pub struct Env {
    pub server: FixtureServer,
    pub data: tempfile::TempDir,
    pub release: ReleaseFixture,
}

impl Env {
    pub fn new() -> Self {
        let server = FixtureServer::start();
        let arch = host_arch();
        let release = ReleaseFixture::new(LATEST, arch.as_str(), &ReleaseOptions::default());
        server.serve_release(&release, true);
        let mut objects = ci_bucket_objects(LATEST_TRAIN, arch.as_str(), ARTIFACT_LEN);
        objects.extend(ci_bucket_objects("v1.7", arch.as_str(), ARTIFACT_LEN / 2));
        server.serve_bucket(CI_BUCKET, dedup(objects), 1000);
        Self {
            server,
            data: tempfile::tempdir().expect("tempdir"),
            release,
        }
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            github_api: self.server.github_api_base(),
            release_downloads: self.server.release_download_base(),
            ci_bucket: self.server.ci_bucket_base(),
        }
    }

    pub fn dirs(&self) -> DataDirs {
        DataDirs::new(self.data.path())
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dirs().base_images_dir()
    }

    pub fn cache_opts(&self, keep: usize) -> CacheOptions {
        let mut opts = CacheOptions::new(&self.dirs());
        opts.keep = keep;
        opts.endpoints = self.endpoints();
        opts
    }

    pub fn cache(&self, keep: usize) -> BaseImageCache {
        BaseImageCache::new(self.cache_opts(keep), downloader()).expect("cache")
    }

    /// The server path of a CI object of the latest train.
    pub fn ci_path(&self, name: &str) -> String {
        format!(
            "/{CI_BUCKET}/firecracker-ci/{LATEST_TRAIN}/{}/{name}",
            host_arch()
        )
    }

    /// The bytes of a CI object.
    pub fn ci_bytes(&self, train: &str, name: &str) -> Vec<u8> {
        let key = format!("firecracker-ci/{train}/{}/{name}", host_arch());
        let len = if train == LATEST_TRAIN {
            ARTIFACT_LEN
        } else {
            ARTIFACT_LEN / 2
        };
        ci_bucket_objects(train, host_arch().as_str(), len)
            .into_iter()
            .find(|o| o.key == key)
            .map(|o| o.body.to_vec())
            .expect("fixture object")
    }

    /// Publishes a hosted manifest at `/manifests/<name>.json` and its artifacts at
    /// `/artifacts/<bundle>/{vmlinux,rootfs.ext4}`; returns the manifest URL.
    pub fn publish_hosted(&self, name: &str, manifest: &serde_json::Value) -> String {
        let path = format!("/manifests/{name}.json");
        self.server
            .serve(&path, manifest.to_string(), "application/json");
        self.server.url(&path)
    }

    /// Serves a kernel and a rootfs for hosted bundles and returns a valid manifest for them.
    pub fn hosted_manifest(&self, bundle_id: &str) -> serde_json::Value {
        let kernel = pseudo_random_bytes(40_000, 77);
        let rootfs = pseudo_random_bytes(70_000, 78);
        let kpath = format!("/artifacts/{bundle_id}/vmlinux");
        let rpath = format!("/artifacts/{bundle_id}/rootfs.ext4");
        self.server
            .serve(&kpath, kernel.clone(), "application/octet-stream");
        self.server
            .serve(&rpath, rootfs.clone(), "application/octet-stream");
        serde_json::json!({
            "schemaVersion": 1,
            "bundleId": bundle_id,
            "name": format!("{bundle_id} test bundle"),
            "arch": host_arch().as_str(),
            "firecrackerVersion": "v1.16.1",
            "rootfsType": "ext4",
            "rootfsIsReadOnly": false,
            "bootArgs": "console=ttyS0 reboot=k panic=1 pci=off rw",
            "kernel": {
                "url": self.server.url(&kpath),
                "fileName": "vmlinux",
                "sha256": sha256_hex(&kernel),
                "sizeBytes": kernel.len(),
            },
            "rootfs": {
                "url": self.server.url(&rpath),
                "fileName": "rootfs.ext4",
                "sha256": sha256_hex(&rootfs),
                "sizeBytes": rootfs.len(),
            }
        })
    }
}

fn dedup(objects: Vec<BucketObject>) -> Vec<BucketObject> {
    let mut map = BTreeMap::new();
    for o in objects {
        map.insert(o.key.clone(), o);
    }
    map.into_values().collect()
}

/// A downloader that retries quickly.
pub fn downloader() -> Downloader {
    Downloader::new()
        .expect("downloader")
        .with_retry_delay(Duration::from_millis(10))
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A fingerprint of a directory tree: every entry's relative path with its type, mode and (for
/// files) size and SHA-256. Two equal fingerprints mean nothing was added, removed or changed.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if !root.exists() {
        out.insert(".".into(), "absent".into());
        return out;
    }
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            out.insert(rel, format!("dir {mode:o}"));
            walk(root, &path, out);
        } else if meta.is_file() {
            let data = std::fs::read(&path).expect("read file");
            out.insert(
                rel,
                format!("file {mode:o} {} {}", data.len(), sha256_hex(&data)),
            );
        } else {
            out.insert(rel, format!("other {mode:o}"));
        }
    }
}

/// One recorded progress update: artifact, done, total, event.
pub type Seen = (String, u64, Option<u64>, ProgressEvent);

/// Records every progress update.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    pub fn progress(&self) -> impl Fn(&ProgressUpdate<'_>) + Send + Sync + 'static {
        let log = Arc::clone(&self.0);
        move |u: &ProgressUpdate<'_>| {
            log.lock()
                .unwrap()
                .push((u.artifact.to_owned(), u.done, u.total, u.event));
        }
    }

    pub fn events(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

/// Endpoints on a port nobody listens on (connection refused), to simulate being offline.
pub fn unreachable_endpoints() -> Endpoints {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    Endpoints {
        github_api: format!("{base}/repos/firecracker-microvm/firecracker"),
        release_downloads: format!("{base}/firecracker-microvm/firecracker/releases/download"),
        ci_bucket: format!("{base}/spec.ccfc.min"),
    }
}
