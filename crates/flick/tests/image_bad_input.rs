//! Every bad input of the artifacts issue gets a clear, coded error and leaves the cache exactly
//! as it was: each test fingerprints the data directory (every path, mode, size and SHA-256)
//! before and after. Also: interrupted downloads resume with `Range`.

mod image_common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use flick::image::cache::{BaseImageCache, EnsureOptions};
use flick::image::{
    BaseImagePreset, BinaryManager, ManifestSource, NoProgress, ProgressEvent, VersionSpec,
};
use flick::{Error, ErrorCode};
use flick_testkit::fixture_server::{
    CI_BUCKET, Fault, FixtureServer, ReleaseFixture, ReleaseOptions, ci_bucket_objects,
    pseudo_random_bytes,
};
use image_common::*;

/// A cache that already holds one good bundle, and the fingerprint of the data directory.
async fn populated(env: &Env) -> (BaseImageCache, BTreeMap<String, String>) {
    let cache = env.cache(3);
    let url = env.publish_hosted("keeper", &env.hosted_manifest("keeper"));
    cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(url)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .expect("good bundle");
    let before = tree(env.data.path());
    assert!(before.keys().any(|k| k.ends_with("keeper/manifest.json")));
    (cache, before)
}

async fn ensure_hosted(
    env: &Env,
    cache: &BaseImageCache,
    name: &str,
    m: &serde_json::Value,
) -> Error {
    let url = env.publish_hosted(name, m);
    cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(url)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .expect_err("must fail")
}

async fn ensure_latest(cache: &BaseImageCache) -> flick::Result<flick::image::Ensured> {
    cache
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
}

#[tokio::test]
async fn wrong_sha256_fails_and_leaves_cache_as_it_was() {
    let env = Env::new();
    let (cache, before) = populated(&env).await;
    let mut m = env.hosted_manifest("bad-sha");
    m["rootfs"]["sha256"] = serde_json::json!(sha256_hex(b"something else"));
    let err = ensure_hosted(&env, &cache, "bad-sha", &m).await;
    assert_eq!(err.code(), ErrorCode::DownloadFailed);
    assert!(err.message().contains("SHA-256"), "{}", err.message());
    assert_eq!(
        err.details().unwrap()["expected_sha256"],
        m["rootfs"]["sha256"]
    );
    assert_eq!(tree(env.data.path()), before);
}

#[tokio::test]
async fn wrong_bytes_from_the_server_fail_the_checksum() {
    let env = Env::new();
    let (cache, before) = populated(&env).await;
    let m = env.hosted_manifest("flipped");
    env.server
        .fault("/artifacts/flipped/vmlinux", Fault::WrongBytes);
    let err = ensure_hosted(&env, &cache, "flipped", &m).await;
    assert_eq!(err.code(), ErrorCode::DownloadFailed);
    assert!(err.details().unwrap()["actual_sha256"].is_string());
    assert_eq!(tree(env.data.path()), before);
}

#[tokio::test]
async fn size_mismatch_fails_and_leaves_cache_as_it_was() {
    let env = Env::new();
    let (cache, before) = populated(&env).await;
    let mut m = env.hosted_manifest("bad-size");
    let real = m["kernel"]["sizeBytes"].as_u64().unwrap();
    m["kernel"]["sizeBytes"] = serde_json::json!(real + 1);
    let err = ensure_hosted(&env, &cache, "bad-size", &m).await;
    assert_eq!(err.code(), ErrorCode::DownloadFailed);
    assert_eq!(err.details().unwrap()["expected_size"], real + 1);
    assert_eq!(err.details().unwrap()["actual_size"], real);
    assert_eq!(tree(env.data.path()), before);
}

#[tokio::test]
async fn size_mismatch_of_a_local_artifact_fails_too() {
    let env = Env::new();
    let (cache, before) = populated(&env).await;
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("k"), b"kernel").unwrap();
    std::fs::write(src.path().join("r"), b"rootfs").unwrap();
    let m = serde_json::json!({
        "schemaVersion": 1, "bundleId": "local-bad", "rootfsType": "ext4",
        "kernel": { "path": "k", "sizeBytes": 7 },
        "rootfs": { "path": "r" }
    });
    let mpath = src.path().join("m.json");
    std::fs::write(&mpath, m.to_string()).unwrap();
    let err = cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Path(mpath)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BaseImagePrepareFailed);
    assert_eq!(err.details().unwrap()["expected_size"], 7);
    assert_eq!(tree(env.data.path()), before);
}

#[tokio::test]
async fn truncated_body_fails_and_leaves_cache_as_it_was() {
    let env = Env::new();
    let (cache, before) = populated(&env).await;
    env.server
        .fault(&env.ci_path("vmlinux-6.1.10"), Fault::Truncate(1000));
    let err = ensure_latest(&cache).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::DownloadFailed);
    assert_eq!(err.details().unwrap()["expected_size"], ARTIFACT_LEN);
    assert_eq!(err.details().unwrap()["actual_size"], 1000);
    assert_eq!(tree(env.data.path()), before);
}

#[tokio::test]
async fn http_404_fails_and_leaves_cache_as_it_was() {
    let env = Env::new();
    let (cache, before) = populated(&env).await;
    let mut m = env.hosted_manifest("missing");
    m["rootfs"]["url"] = serde_json::json!(env.server.url("/artifacts/missing/nothing-here"));
    let err = ensure_hosted(&env, &cache, "missing", &m).await;
    assert_eq!(err.code(), ErrorCode::DownloadFailed);
    assert_eq!(err.status(), Some(404));
    assert_eq!(
        env.server.request_count("/artifacts/missing/nothing-here"),
        1,
        "4xx is not retried"
    );
    assert_eq!(tree(env.data.path()), before);
}

#[tokio::test]
async fn http_500_is_retried_then_fails_and_leaves_cache_as_it_was() {
    let env = Env::new();
    let (cache, before) = populated(&env).await;
    let path = env.ci_path("ubuntu-24.04.squashfs");
    env.server.fault(&path, Fault::Status(500));
    let err = ensure_latest(&cache).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::DownloadFailed);
    assert_eq!(err.status(), Some(500));
    assert_eq!(env.server.request_count(&path), 3, "5xx is retried");
    assert_eq!(tree(env.data.path()), before);
    // Once the server recovers, the same call succeeds.
    env.server.clear_faults(&path);
    assert!(ensure_latest(&cache).await.unwrap().downloaded);
}

#[tokio::test]
async fn connection_dropped_mid_body_resumes_with_range() {
    let env = Env::new();
    let cache = env.cache(2);
    let kernel = env.ci_path("vmlinux-6.1.10");
    env.server.fault_once(&kernel, Fault::DropAfter(30_000));
    let rec = Recorder::default();
    let got = cache
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &rec.progress(),
        )
        .await
        .expect("resumed download");
    assert_eq!(env.server.request_count(&kernel), 2);
    assert_eq!(
        env.server.range_requests(&kernel),
        vec!["bytes=30000-".to_owned()]
    );
    let bytes = std::fs::read(got.bundle.kernel_path()).unwrap();
    assert_eq!(bytes, env.ci_bytes(LATEST_TRAIN, "vmlinux-6.1.10"));
    assert_eq!(got.bundle.record.kernel.sha256, sha256_hex(&bytes));
    // The second request started where the first stopped.
    assert!(
        rec.events()
            .iter()
            .any(|e| e.0 == "vmlinux-6.1.10" && e.3 == ProgressEvent::Started && e.1 == 30_000)
    );
}

#[tokio::test]
async fn ignored_range_restarts_from_zero() {
    let env = Env::new();
    let cache = env.cache(2);
    let kernel = env.ci_path("vmlinux-6.1.10");
    env.server.fault_once(&kernel, Fault::DropAfter(20_000));
    env.server.fault_once(&kernel, Fault::IgnoreRange);
    let rec = Recorder::default();
    let got = cache
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &rec.progress(),
        )
        .await
        .expect("restarted download");
    assert_eq!(
        env.server.range_requests(&kernel),
        vec!["bytes=20000-".to_owned()]
    );
    assert_eq!(
        std::fs::read(got.bundle.kernel_path()).unwrap(),
        env.ci_bytes(LATEST_TRAIN, "vmlinux-6.1.10")
    );
    assert!(
        rec.events()
            .iter()
            .any(|e| e.0 == "vmlinux-6.1.10" && e.3 == ProgressEvent::Restarted)
    );
}

#[tokio::test]
async fn partial_content_for_another_range_is_not_spliced_in() {
    let env = Env::new();
    let cache = env.cache(2);
    let kernel = env.ci_path("vmlinux-6.1.10");
    env.server.fault_once(&kernel, Fault::DropAfter(20_000));
    env.server.fault_once(&kernel, Fault::RangeFromZero);
    let got = cache
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .expect("recovered download");
    let seen: Vec<_> = env
        .server
        .requests()
        .into_iter()
        .filter(|r| r.path == kernel)
        .map(|r| r.range)
        .collect();
    assert_eq!(seen, vec![None, Some("bytes=20000-".to_owned()), None]);
    assert_eq!(
        std::fs::read(got.bundle.kernel_path()).unwrap(),
        env.ci_bytes(LATEST_TRAIN, "vmlinux-6.1.10")
    );
}

#[tokio::test]
async fn dropped_connection_on_every_attempt_fails_and_leaves_cache_as_it_was() {
    let env = Env::new();
    let (cache, before) = populated(&env).await;
    let kernel = env.ci_path("vmlinux-6.1.10");
    env.server.fault(&kernel, Fault::DropAfter(10_000));
    let err = ensure_latest(&cache).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::DownloadFailed);
    assert_eq!(env.server.request_count(&kernel), 3);
    assert_eq!(tree(env.data.path()), before);
}

#[tokio::test]
async fn partial_file_left_by_a_killed_process_is_resumed() {
    let env = Env::new();
    let cache = env.cache(2);
    // Learn the bundle id, then simulate a process killed mid-download.
    let id = ensure_latest(&cache).await.unwrap().bundle.id().to_owned();
    cache.remove(&id).await.unwrap();
    env.server.reset_requests();
    let staging = env.cache_dir().join(format!("{id}+staging"));
    std::fs::create_dir_all(&staging).unwrap();
    let full = env.ci_bytes(LATEST_TRAIN, "vmlinux-6.1.10");
    std::fs::write(staging.join("vmlinux-6.1.10.part"), &full[..20_000]).unwrap();
    std::fs::write(staging.join("stray-file"), b"junk").unwrap();
    let got = ensure_latest(&cache).await.unwrap();
    let kernel = env.ci_path("vmlinux-6.1.10");
    assert_eq!(
        env.server.range_requests(&kernel),
        vec!["bytes=20000-".to_owned()]
    );
    assert_eq!(std::fs::read(got.bundle.kernel_path()).unwrap(), full);
    assert!(!staging.exists());
    assert!(!got.bundle.dir.join("stray-file").exists());
}

#[tokio::test]
async fn corrupt_partial_file_is_detected_and_downloaded_again() {
    let env = Env::new();
    let cache = env.cache(2);
    let m = env.hosted_manifest("resume-bad");
    let staging = env.cache_dir().join("resume-bad+staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("vmlinux.part"), vec![0u8; 10_000]).unwrap();
    let url = env.publish_hosted("resume-bad", &m);
    let got = cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(url)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .expect("re-downloaded after a bad resume");
    assert_eq!(got.bundle.record.kernel.sha256, m["kernel"]["sha256"]);
    let path = "/artifacts/resume-bad/vmlinux";
    assert_eq!(env.server.request_count(path), 2);
    assert_eq!(
        env.server.range_requests(path),
        vec!["bytes=10000-".to_owned()]
    );
}

/// Publishes `m` after `edit` and checks the manifest is refused naming `field`, without any
/// artifact request and without touching the cache.
async fn manifest_rejected(edit: impl FnOnce(&mut serde_json::Value), field: &str) {
    let env = Env::new();
    let (cache, before) = populated(&env).await;
    let mut m = env.hosted_manifest("edited");
    edit(&mut m);
    env.server.reset_requests();
    let err = ensure_hosted(&env, &cache, "edited", &m).await;
    assert_eq!(err.code(), ErrorCode::InvalidBaseImageManifest, "{err:?}");
    assert!(
        err.message().contains(field),
        "{field} not named: {}",
        err.message()
    );
    let problems = err.details().unwrap()["problems"]
        .as_array()
        .unwrap()
        .clone();
    assert!(problems.iter().any(|p| p["field"] == field), "{problems:?}");
    assert!(
        env.server
            .requests()
            .iter()
            .all(|r| r.path.starts_with("/manifests/")),
        "no artifact may be fetched for an invalid manifest"
    );
    assert_eq!(tree(env.data.path()), before);
}

#[tokio::test]
async fn manifest_with_traversal_file_name() {
    manifest_rejected(
        |m| m["kernel"]["fileName"] = "../../../etc/cron.d/x".into(),
        "kernel.fileName",
    )
    .await;
    manifest_rejected(|m| m["rootfs"]["fileName"] = "..".into(), "rootfs.fileName").await;
}

#[tokio::test]
async fn manifest_with_bad_bundle_id() {
    manifest_rejected(|m| m["bundleId"] = "../escape".into(), "bundleId").await;
    manifest_rejected(|m| m["bundleId"] = "..".into(), "bundleId").await;
    manifest_rejected(|m| m["bundleId"] = "has space".into(), "bundleId").await;
}

#[tokio::test]
async fn manifest_url_without_sha256() {
    manifest_rejected(
        |m| {
            m["kernel"].as_object_mut().unwrap().remove("sha256");
        },
        "kernel.sha256",
    )
    .await;
    manifest_rejected(|m| m["rootfs"]["sha256"] = "abc".into(), "rootfs.sha256").await;
}

#[tokio::test]
async fn manifest_with_wrong_schema_version() {
    manifest_rejected(|m| m["schemaVersion"] = 2.into(), "schemaVersion").await;
    manifest_rejected(|m| m["schemaVersion"] = "1".into(), "schemaVersion").await;
}

#[tokio::test]
async fn manifest_with_unknown_rootfs_type() {
    manifest_rejected(|m| m["rootfsType"] = "btrfs".into(), "rootfsType").await;
}

#[tokio::test]
async fn manifest_with_non_numeric_size() {
    manifest_rejected(
        |m| m["kernel"]["sizeBytes"] = "40000".into(),
        "kernel.sizeBytes",
    )
    .await;
    manifest_rejected(
        |m| m["rootfs"]["sizeBytes"] = (-5).into(),
        "rootfs.sizeBytes",
    )
    .await;
    manifest_rejected(|m| m["rootfs"]["sizeBytes"] = 0.into(), "rootfs.sizeBytes").await;
}

#[tokio::test]
async fn manifest_that_cannot_be_loaded() {
    let env = Env::new();
    let (cache, before) = populated(&env).await;
    let err = cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(env.server.url("/manifests/none.json"))),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BaseImageManifestFailed);
    assert_eq!(err.status(), Some(404));
    let err = cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Path("/nonexistent/m.json".into())),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BaseImageManifestFailed);
    env.server
        .serve("/manifests/garbage.json", "<html>", "text/html");
    let err = cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(
                env.server.url("/manifests/garbage.json"),
            )),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidBaseImageManifest);
    assert_eq!(tree(env.data.path()), before);
}

fn serve_bucket_without(env: &Env, drop: impl Fn(&str) -> bool) {
    let objects = ci_bucket_objects(LATEST_TRAIN, host_arch().as_str(), 1000)
        .into_iter()
        .filter(|o| !drop(o.key.rsplit('/').next().unwrap()))
        .collect();
    env.server.serve_bucket(CI_BUCKET, objects, 1000);
}

#[tokio::test]
async fn bucket_listing_without_a_kernel() {
    let env = Env::new();
    let (cache, before) = populated(&env).await;
    serve_bucket_without(&env, |name| {
        name.starts_with("vmlinux-")
            && !name.ends_with(".config")
            && !name.contains("no-acpi")
            && !name.ends_with(".debug")
    });
    let err = ensure_latest(&cache).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BaseImageResolveFailed);
    assert!(err.message().contains("kernel"), "{}", err.message());
    assert_eq!(tree(env.data.path()), before);
}

#[tokio::test]
async fn bucket_listing_without_a_rootfs() {
    let env = Env::new();
    let (cache, before) = populated(&env).await;
    serve_bucket_without(&env, |name| {
        name.ends_with(".squashfs") || name.ends_with(".ext4")
    });
    let err = ensure_latest(&cache).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BaseImageResolveFailed);
    assert!(err.message().contains("rootfs"), "{}", err.message());
    assert_eq!(tree(env.data.path()), before);
}

#[tokio::test]
async fn bucket_answering_an_s3_error() {
    let env = Env::new();
    let (cache, before) = populated(&env).await;
    env.server
        .fault(&format!("/{CI_BUCKET}/"), Fault::Status(403));
    let err = ensure_latest(&cache).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BaseImageResolveFailed);
    assert_eq!(err.status(), Some(403));
    assert_eq!(tree(env.data.path()), before);
}

async fn binaries_cached(env: &Env) -> (BinaryManager, BTreeMap<String, String>) {
    let mgr = BinaryManager::new(env.dirs(), env.endpoints(), downloader());
    mgr.ensure(&VersionSpec::Latest, None, false, &NoProgress)
        .await
        .expect("good release");
    (mgr, tree(env.data.path()))
}

#[tokio::test]
async fn tarball_missing_the_binary() {
    for (opts, missing) in [
        (
            ReleaseOptions {
                omit_firecracker: true,
                ..ReleaseOptions::default()
            },
            "firecracker-v1.8.0",
        ),
        (
            ReleaseOptions {
                omit_jailer: true,
                ..ReleaseOptions::default()
            },
            "jailer-v1.8.0",
        ),
    ] {
        let env = Env::new();
        let (mgr, before) = binaries_cached(&env).await;
        let rel = ReleaseFixture::new("v1.8.0", host_arch().as_str(), &opts);
        env.server.serve_release(&rel, false);
        let err = mgr
            .ensure(
                &VersionSpec::Pinned("v1.8.0".into()),
                None,
                false,
                &NoProgress,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::BinaryNotFound);
        assert!(err.message().contains(missing), "{}", err.message());
        assert!(
            err.message().contains("release-v1.8.0-"),
            "{}",
            err.message()
        );
        assert_eq!(tree(env.data.path()), before);
    }
}

#[tokio::test]
async fn tarball_not_matching_its_sha256_txt() {
    let env = Env::new();
    let (mgr, before) = binaries_cached(&env).await;
    let arch = host_arch();
    let rel = ReleaseFixture::new("v1.8.0", arch.as_str(), &ReleaseOptions::default());
    env.server.serve_release(&rel, false);
    let sums =
        FixtureServer::release_asset_path("v1.8.0", &format!("{}.sha256.txt", rel.tarball_name()));
    env.server.serve(
        &sums,
        format!("{}  {}\n", sha256_hex(b"other"), rel.tarball_name()),
        "text/plain",
    );
    let err = mgr
        .ensure(
            &VersionSpec::Pinned("v1.8.0".into()),
            None,
            false,
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DownloadFailed);
    assert!(err.message().contains("SHA-256"), "{}", err.message());
    assert_eq!(tree(env.data.path()), before);
    // A checksum file for another name is refused as well.
    env.server.serve(
        &sums,
        format!("{}  other.tgz\n", sha256_hex(&rel.tarball)),
        "text/plain",
    );
    let err = mgr
        .ensure(
            &VersionSpec::Pinned("v1.8.0".into()),
            None,
            false,
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DownloadFailed);
    assert_eq!(tree(env.data.path()), before);
}

#[tokio::test]
async fn custom_binary_not_executable() {
    let env = Env::new();
    let (_mgr, before) = binaries_cached(&env).await;
    let fc = env.data.path().join("my-firecracker");
    std::fs::write(&fc, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&fc, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = {
        let mut b = before;
        b.extend(tree(env.data.path()));
        b
    };
    let err = BinaryManager::custom(&fc, None).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BinaryNotFound);
    assert!(err.message().contains("not executable"));
    assert_eq!(tree(env.data.path()), before);
}

/// A tmpfs mounted for the test and lazily unmounted when dropped (even on panic).
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(at: &Path, size: &str) -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "the disk-full test mounts a tmpfs and needs root (run the tests as root)"
        );
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "flick-test",
            ])
            .arg(at)
            .status()
            .expect("run mount(8)");
        assert!(
            status.success(),
            "mounting a tmpfs at {} failed: {status}",
            at.display()
        );
        Self(at.to_owned())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn disk_full_fails_and_leaves_cache_as_it_was() {
    let env = Env::new();
    let root = tempfile::tempdir().unwrap();
    let mount = TmpfsMount::new(&root.path().join("small"), "1m");
    let mut opts = env.cache_opts(3);
    opts.dir = mount.0.join("base-images");
    let cache = BaseImageCache::new(opts, downloader()).unwrap();
    let url = env.publish_hosted("keeper", &env.hosted_manifest("keeper"));
    cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(url)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .expect("a small bundle fits");
    let before = tree(&mount.0);
    // 2 MiB of rootfs cannot fit in what is left of 1 MiB.
    let mut m = env.hosted_manifest("big");
    let big = pseudo_random_bytes(2 << 20, 99);
    env.server.serve(
        "/artifacts/big/rootfs.ext4",
        big.clone(),
        "application/octet-stream",
    );
    m["rootfs"]["sha256"] = sha256_hex(&big).into();
    m["rootfs"]["sizeBytes"] = big.len().into();
    let err = ensure_hosted(&env, &cache, "big", &m).await;
    assert_eq!(err.code(), ErrorCode::DownloadFailed, "{err:?}");
    assert_eq!(err.details().unwrap()["os_error"], libc::ENOSPC, "{err:?}");
    assert!(err.chain().contains("No space left"), "{}", err.chain());
    assert_eq!(tree(&mount.0), before);
}

#[tokio::test]
async fn failures_on_a_fresh_data_dir_create_nothing() {
    let env = Env::new();
    let before = tree(env.data.path());
    assert!(before.is_empty(), "the data dir starts empty");
    // A bundle download that fails after the plan was made.
    let mut m = env.hosted_manifest("fresh");
    m["kernel"]["sha256"] = sha256_hex(b"nope").into();
    let err = ensure_hosted(&env, &env.cache(2), "fresh", &m).await;
    assert_eq!(err.code(), ErrorCode::DownloadFailed);
    assert_eq!(tree(env.data.path()), before, "no empty base-images/ left");
    // A release download that fails.
    let arch = host_arch();
    let rel = ReleaseFixture::new(
        "v1.8.0",
        arch.as_str(),
        &ReleaseOptions {
            omit_jailer: true,
            ..ReleaseOptions::default()
        },
    );
    env.server.serve_release(&rel, false);
    let err = BinaryManager::new(env.dirs(), env.endpoints(), downloader())
        .ensure(
            &VersionSpec::Pinned("v1.8.0".into()),
            None,
            false,
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BinaryNotFound);
    assert_eq!(tree(env.data.path()), before, "no empty bin/ left");
}
