//! Base-image presets (`latest`, `lts`, `hosted`) against a real HTTP server on 127.0.0.1 that
//! serves the GitHub release JSON and an S3 `ListObjectsV2` listing, plus the cache behaviour:
//! reuse without a second download, verification before reuse, `force_download`, LRU eviction.

mod image_common;

use flick::ErrorCode;
use flick::image::cache::{BaseImageCache, BundleSource, EnsureOptions, MANIFEST_FILE};
use flick::image::{BaseImagePreset, ManifestSource, NoProgress, ProgressEvent, RootfsType};
use flick_testkit::fixture_server::CI_BUCKET;
use image_common::*;

#[tokio::test]
async fn latest_preset_picks_newest_kernel_by_version_and_prefers_squashfs() {
    let env = Env::new();
    let cache = env.cache(2);
    let rec = Recorder::default();
    let progress = rec.progress();
    let got = cache
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &progress,
        )
        .await
        .expect("latest preset");
    assert!(got.downloaded);
    let r = &got.bundle.record;
    assert_eq!(
        r.kernel.file_name, "vmlinux-6.1.10",
        "6.1.10 > 6.1.9 > 5.10.239"
    );
    assert_eq!(r.rootfs.file_name, "ubuntu-24.04.squashfs");
    assert_eq!(r.rootfs_type, RootfsType::Squashfs);
    assert!(r.rootfs_is_read_only);
    assert!(r.boot_args.split(' ').any(|a| a == "ro"), "{}", r.boot_args);
    assert_eq!(r.firecracker_version.as_deref(), Some(LATEST));
    assert_eq!(r.preset, "latest");
    let arch = host_arch();
    assert_eq!(
        got.bundle.id(),
        format!("fc-ci-v1.16-{arch}-vmlinux-6.1.10-ubuntu-24.04-squashfs")
    );
    match &r.source {
        BundleSource::CiBucket {
            bucket_url,
            train,
            kernel_key,
            rootfs_key,
            prefix,
        } => {
            assert_eq!(bucket_url, &env.server.ci_bucket_base());
            assert_eq!(train, "v1.16");
            assert_eq!(prefix, &format!("firecracker-ci/v1.16/{arch}/"));
            assert_eq!(
                kernel_key,
                &format!("firecracker-ci/v1.16/{arch}/vmlinux-6.1.10")
            );
            assert_eq!(
                rootfs_key,
                &format!("firecracker-ci/v1.16/{arch}/ubuntu-24.04.squashfs")
            );
        }
        other => panic!("unexpected source {other:?}"),
    }
    // The files are the served bytes, and the record's digests and sizes match them.
    let kernel = std::fs::read(got.bundle.kernel_path()).unwrap();
    assert_eq!(kernel, env.ci_bytes(LATEST_TRAIN, "vmlinux-6.1.10"));
    assert_eq!(r.kernel.sha256, sha256_hex(&kernel));
    assert_eq!(r.kernel.size_bytes, kernel.len() as u64);
    let rootfs = std::fs::read(got.bundle.rootfs_path()).unwrap();
    assert_eq!(rootfs, env.ci_bytes(LATEST_TRAIN, "ubuntu-24.04.squashfs"));
    assert_eq!(r.rootfs.sha256, sha256_hex(&rootfs));
    // manifest.json on disk is the record, in camelCase.
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(got.bundle.dir.join(MANIFEST_FILE)).unwrap())
            .unwrap();
    assert_eq!(on_disk["bundleId"], got.bundle.id());
    assert_eq!(on_disk["rootfsType"], "squashfs");
    assert_eq!(on_disk["kernel"]["sha256"], r.kernel.sha256);
    assert_eq!(on_disk["source"]["kind"], "ciBucket");
    assert!(on_disk["createdUnixMs"].as_u64().unwrap() > 0);
    // The listing asked for the right prefix; nothing internal is left in the cache.
    let listing = env
        .server
        .requests()
        .into_iter()
        .find(|q| q.path == format!("/{CI_BUCKET}/"))
        .expect("a listing request");
    let query = listing.query.unwrap();
    assert!(query.contains("list-type=2"), "{query}");
    assert!(
        query.contains(&format!("prefix=firecracker-ci/v1.16/{arch}/")),
        "{query}"
    );
    let names: Vec<_> = std::fs::read_dir(env.cache_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![got.bundle.id().to_owned()]);
    // Progress: both artifacts started and finished with the right totals.
    let events = rec.events();
    for (name, len) in [
        ("vmlinux-6.1.10", ARTIFACT_LEN as u64),
        ("ubuntu-24.04.squashfs", ARTIFACT_LEN as u64),
    ] {
        assert!(
            events
                .iter()
                .any(|e| e.0 == name && e.3 == ProgressEvent::Started && e.2 == Some(len))
        );
        assert!(
            events
                .iter()
                .any(|e| e.0 == name && e.3 == ProgressEvent::Finished && e.1 == len)
        );
    }
}

#[tokio::test]
async fn second_ensure_reuses_the_verified_bundle_without_downloading() {
    let env = Env::new();
    let cache = env.cache(2);
    let first = cache
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    let kernel = env.ci_path("vmlinux-6.1.10");
    let rootfs = env.ci_path("ubuntu-24.04.squashfs");
    assert_eq!(env.server.request_count(&kernel), 1);
    assert_eq!(env.server.request_count(&rootfs), 1);
    let rec = Recorder::default();
    let second = cache
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &rec.progress(),
        )
        .await
        .unwrap();
    assert!(!second.downloaded);
    assert_eq!(env.server.request_count(&kernel), 1, "kernel fetched again");
    assert_eq!(env.server.request_count(&rootfs), 1, "rootfs fetched again");
    assert_eq!(second.bundle.record.kernel, first.bundle.record.kernel);
    assert!(second.bundle.record.last_accessed_unix_ms > first.bundle.record.last_accessed_unix_ms);
    assert_eq!(
        second.bundle.record.created_unix_ms,
        first.bundle.record.created_unix_ms
    );
    assert!(rec.events().iter().all(|e| e.3 == ProgressEvent::Reused));
    assert_eq!(rec.events().len(), 2);
}

#[tokio::test]
async fn corrupted_cached_artifact_is_downloaded_again() {
    let env = Env::new();
    let cache = env.cache(2);
    let first = cache
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    // Same size, different content: only the SHA-256 check can notice.
    let path = first.bundle.kernel_path();
    let mut data = std::fs::read(&path).unwrap();
    data[100] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    let again = cache
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(again.downloaded);
    assert_eq!(env.server.request_count(&env.ci_path("vmlinux-6.1.10")), 2);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        env.ci_bytes(LATEST_TRAIN, "vmlinux-6.1.10")
    );
    // A truncated file (size check) is also replaced.
    std::fs::write(&path, b"short").unwrap();
    let third = cache
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(third.downloaded);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), ARTIFACT_LEN as u64);
}

#[tokio::test]
async fn force_download_fetches_again() {
    let env = Env::new();
    let cache = env.cache(2);
    cache
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    let forced = cache
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions {
                force_download: true,
                ..EnsureOptions::default()
            },
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(forced.downloaded);
    assert_eq!(env.server.request_count(&env.ci_path("vmlinux-6.1.10")), 2);
    assert_eq!(
        env.server
            .request_count(&env.ci_path("ubuntu-24.04.squashfs")),
        2
    );
}

#[tokio::test]
async fn lts_preset_uses_the_pinned_train_and_is_configurable() {
    let env = Env::new();
    let cache = env.cache(2);
    let got = cache
        .ensure(&BaseImagePreset::Lts, EnsureOptions::default(), &NoProgress)
        .await
        .unwrap();
    let r = &got.bundle.record;
    assert_eq!(r.preset, "lts");
    assert_eq!(r.firecracker_version.as_deref(), Some("v1.7.0"));
    assert!(
        got.bundle.id().starts_with("fc-ci-v1.7-"),
        "{}",
        got.bundle.id()
    );
    assert_eq!(
        std::fs::read(got.bundle.kernel_path()).unwrap(),
        env.ci_bytes("v1.7", "vmlinux-6.1.10")
    );
    // lts never asks GitHub for the latest release.
    assert_eq!(
        env.server
            .request_count("/repos/firecracker-microvm/firecracker/releases/latest"),
        0
    );
    // Pinning lts to the latest train's version resolves that train instead.
    let mut opts = env.cache_opts(2);
    opts.lts_version = "1.16.0".into();
    let pinned = BaseImageCache::new(opts, downloader()).unwrap();
    let got = pinned
        .ensure(&BaseImagePreset::Lts, EnsureOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert!(
        got.bundle.id().starts_with("fc-ci-v1.16-"),
        "{}",
        got.bundle.id()
    );
    assert_eq!(
        got.bundle.record.firecracker_version.as_deref(),
        Some("v1.16.0")
    );
    // A malformed lts version is refused up front.
    let mut bad = env.cache_opts(2);
    bad.lts_version = "seven".into();
    let err = BaseImageCache::new(bad, downloader()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn paginated_listing_is_followed() {
    let env = Env::new();
    // Re-serve the bucket with 3 keys per page: the kernels and rootfs sit on different pages.
    let arch = host_arch();
    let mut objects =
        flick_testkit::fixture_server::ci_bucket_objects(LATEST_TRAIN, arch.as_str(), ARTIFACT_LEN);
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    env.server.serve_bucket(CI_BUCKET, objects, 3);
    let got = env
        .cache(2)
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(got.bundle.record.kernel.file_name, "vmlinux-6.1.10");
    let listings: Vec<_> = env
        .server
        .requests()
        .into_iter()
        .filter(|q| q.path == format!("/{CI_BUCKET}/"))
        .collect();
    assert!(
        listings.len() > 2,
        "expected several pages, got {}",
        listings.len()
    );
    assert!(listings[1..].iter().all(|q| {
        q.query
            .as_deref()
            .unwrap_or("")
            .contains("continuation-token=")
    }));
}

#[tokio::test]
async fn hosted_manifest_from_url() {
    let env = Env::new();
    let manifest = env.hosted_manifest("acme-ubuntu-6.1");
    let url = env.publish_hosted("acme", &manifest);
    let cache = env.cache(2);
    let got = cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(url.clone())),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    let r = &got.bundle.record;
    assert_eq!(got.bundle.id(), "acme-ubuntu-6.1");
    assert_eq!(got.bundle.dir, env.cache_dir().join("acme-ubuntu-6.1"));
    assert_eq!(r.name, "acme-ubuntu-6.1 test bundle");
    assert_eq!(r.rootfs_type, RootfsType::Ext4);
    assert!(!r.rootfs_is_read_only);
    assert_eq!(r.boot_args, "console=ttyS0 reboot=k panic=1 pci=off rw");
    assert_eq!(r.kernel.sha256, manifest["kernel"]["sha256"]);
    assert_eq!(r.kernel.origin, manifest["kernel"]["url"]);
    assert_eq!(
        r.source,
        BundleSource::Hosted {
            manifest_url: Some(url.clone()),
            manifest_path: None
        }
    );
    assert!(
        got.bundle
            .kernel_path()
            .ends_with("acme-ubuntu-6.1/vmlinux")
    );
    // Reuse: the manifest is read again, the artifacts are not.
    let again = cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(url)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(!again.downloaded);
    assert_eq!(
        env.server
            .request_count("/artifacts/acme-ubuntu-6.1/vmlinux"),
        1
    );
}

#[tokio::test]
async fn hosted_manifest_from_local_path_with_relative_artifacts() {
    let env = Env::new();
    let src = tempfile::tempdir().unwrap();
    let kernel = flick_testkit::fixture_server::pseudo_random_bytes(50_000, 5);
    let rootfs = flick_testkit::fixture_server::pseudo_random_bytes(80_000, 6);
    std::fs::write(src.path().join("vmlinux.bin"), &kernel).unwrap();
    std::fs::create_dir(src.path().join("images")).unwrap();
    std::fs::write(src.path().join("images/root.squashfs"), &rootfs).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 1,
        "bundleId": "local_bundle.v2",
        "rootfsType": "squashfs",
        "kernel": { "path": "vmlinux.bin", "sha256": sha256_hex(&kernel) },
        "rootfs": { "path": "images/root.squashfs", "fileName": "rootfs.squashfs", "sizeBytes": rootfs.len() }
    });
    let mpath = src.path().join("bundle.json");
    std::fs::write(&mpath, manifest.to_string()).unwrap();
    let got = env
        .cache(2)
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Path(mpath.clone())),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    let r = &got.bundle.record;
    assert_eq!(r.kernel.file_name, "vmlinux.bin");
    assert_eq!(r.rootfs.file_name, "rootfs.squashfs");
    assert!(r.rootfs_is_read_only, "squashfs defaults to read-only");
    assert!(r.boot_args.contains(" ro"), "{}", r.boot_args);
    assert_eq!(std::fs::read(got.bundle.kernel_path()).unwrap(), kernel);
    assert_eq!(std::fs::read(got.bundle.rootfs_path()).unwrap(), rootfs);
    assert_eq!(r.rootfs.sha256, sha256_hex(&rootfs));
    assert_eq!(
        r.kernel.origin,
        src.path().join("vmlinux.bin").display().to_string()
    );
    assert!(
        matches!(&r.source, BundleSource::Hosted { manifest_path: Some(p), .. } if p == &mpath)
    );
}

#[tokio::test]
async fn least_recently_used_bundles_are_evicted_beyond_the_limit() {
    let env = Env::new();
    let cache = env.cache(2);
    let mut ids = Vec::new();
    for name in ["b-one", "b-two", "b-three"] {
        let url = env.publish_hosted(name, &env.hosted_manifest(name));
        let got = cache
            .ensure(
                &BaseImagePreset::Hosted(ManifestSource::Url(url)),
                EnsureOptions::default(),
                &NoProgress,
            )
            .await
            .unwrap();
        ids.push((got.bundle.id().to_owned(), got.evicted));
    }
    assert!(ids[0].1.is_empty() && ids[1].1.is_empty());
    assert_eq!(ids[2].1, vec!["b-one".to_owned()], "the oldest goes first");
    let listed: Vec<_> = cache
        .list()
        .unwrap()
        .iter()
        .map(|b| b.id().to_owned())
        .collect();
    assert_eq!(listed, vec!["b-three".to_owned(), "b-two".to_owned()]);
    assert!(!env.cache_dir().join("b-one").exists());
    // Touching b-two makes b-three the least recently used.
    let url = env.server.url("/manifests/b-two.json");
    let got = cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(url)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(!got.downloaded);
    assert!(got.evicted.is_empty());
    // prune with a smaller limit keeps the named bundle even though it is older.
    let small = BaseImageCache::new(env.cache_opts(1), downloader()).unwrap();
    let evicted = small.prune(Some("b-three")).await.unwrap();
    assert_eq!(evicted, vec!["b-two".to_owned()]);
    let listed: Vec<_> = small
        .list()
        .unwrap()
        .iter()
        .map(|b| b.id().to_owned())
        .collect();
    assert_eq!(listed, vec!["b-three".to_owned()]);
    // Nothing but bundle directories remains.
    let names: Vec<_> = std::fs::read_dir(env.cache_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["b-three".to_owned()]);
}

#[tokio::test]
async fn cache_limit_zero_is_rejected() {
    let env = Env::new();
    let err = BaseImageCache::new(env.cache_opts(0), downloader()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidBaseImageCacheLimit);
    assert!(
        !env.cache_dir().exists(),
        "nothing is created for a bad limit"
    );
}

#[tokio::test]
async fn remove_deletes_one_bundle_and_unknown_ids_are_not_found() {
    let env = Env::new();
    let cache = env.cache(2);
    let url = env.publish_hosted("gone", &env.hosted_manifest("gone"));
    cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(url)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    cache.remove("gone").await.unwrap();
    assert!(cache.list().unwrap().is_empty());
    assert_eq!(
        cache.remove("gone").await.unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert_eq!(
        cache.remove("../etc").await.unwrap_err().code(),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn unreachable_source_falls_back_to_a_verified_cached_bundle() {
    let env = Env::new();
    let first = env
        .cache(2)
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    let mut opts = env.cache_opts(2);
    opts.endpoints = unreachable_endpoints();
    let offline = BaseImageCache::new(opts, downloader()).unwrap();
    let got = offline
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .expect("cached bundle used offline");
    assert!(got.offline);
    assert!(!got.downloaded);
    assert_eq!(got.bundle.id(), first.bundle.id());
    // No lts bundle is cached: the transport error comes through.
    let err = offline
        .ensure(&BaseImagePreset::Lts, EnsureOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BaseImageResolveFailed);
    assert!(flick::image::download::is_transport_error(&err));
    // force_download never settles for the cache.
    let err = offline
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions {
                force_download: true,
                ..EnsureOptions::default()
            },
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::VersionFetchFailed);
    // A cached bundle that no longer verifies is not used either.
    std::fs::write(got.bundle.rootfs_path(), b"corrupt").unwrap();
    let err = offline
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::VersionFetchFailed);
    // A server that answers with an error is not "offline": no fallback.
    env.server.fault(
        "/repos/firecracker-microvm/firecracker/releases/latest",
        flick_testkit::fixture_server::Fault::Status(503),
    );
    let err = env
        .cache(2)
        .ensure(&BaseImagePreset::Lts, EnsureOptions::default(), &NoProgress)
        .await;
    assert!(err.is_ok(), "lts does not need the API");
    let err = env
        .cache(2)
        .ensure(
            &BaseImagePreset::Latest,
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(503));
}

#[tokio::test]
async fn hosted_manifest_arch_mismatch_is_refused() {
    let env = Env::new();
    let mut m = env.hosted_manifest("other-arch");
    let other = match host_arch() {
        flick::image::Arch::X86_64 => "aarch64",
        flick::image::Arch::Aarch64 => "x86_64",
    };
    m["arch"] = other.into();
    let url = env.publish_hosted("other-arch", &m);
    let before = tree(env.data.path());
    let err = env
        .cache(2)
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(url)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BaseImagePrepareFailed);
    assert_eq!(err.details().unwrap()["field"], "arch");
    assert_eq!(tree(env.data.path()), before);
}

#[tokio::test]
async fn eviction_skips_a_bundle_another_process_is_using() {
    let env = Env::new();
    let cache = env.cache(1);
    let first = env.publish_hosted("in-use", &env.hosted_manifest("in-use"));
    cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(first)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    // Another process holds the bundle's lock (same flock protocol).
    let lock_path = env.cache_dir().join("in-use+lock");
    let holder = std::fs::File::create(&lock_path).unwrap();
    holder.lock().unwrap();
    let second = env.publish_hosted("newer", &env.hosted_manifest("newer"));
    let got = cache
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(second)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(
        got.evicted.is_empty(),
        "a locked bundle must not be evicted"
    );
    assert!(env.cache_dir().join("in-use/manifest.json").exists());
    holder.unlock().unwrap();
    drop(holder);
    std::fs::remove_file(&lock_path).unwrap();
    assert_eq!(
        cache.prune(Some("newer")).await.unwrap(),
        vec!["in-use".to_owned()]
    );
}

#[tokio::test]
async fn stray_directory_with_the_bundle_name_is_replaced() {
    let env = Env::new();
    let m = env.hosted_manifest("stray");
    let url = env.publish_hosted("stray", &m);
    let dir = env.cache_dir().join("stray");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("leftover"), b"?").unwrap();
    let got = env
        .cache(2)
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(url)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(got.downloaded);
    assert!(!dir.join("leftover").exists());
    assert_eq!(got.bundle.record.kernel.sha256, m["kernel"]["sha256"]);
    let names: Vec<_> = std::fs::read_dir(env.cache_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["stray".to_owned()]);
}

#[tokio::test]
async fn complete_partial_file_needs_no_request() {
    let env = Env::new();
    let m = env.hosted_manifest("complete-part");
    let staging = env.cache_dir().join("complete-part+staging");
    std::fs::create_dir_all(&staging).unwrap();
    let body = flick_testkit::fixture_server::pseudo_random_bytes(40_000, 77);
    assert_eq!(sha256_hex(&body), m["kernel"]["sha256"]);
    std::fs::write(staging.join("vmlinux.part"), &body).unwrap();
    let url = env.publish_hosted("complete-part", &m);
    let got = env
        .cache(2)
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(url)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(
        env.server.request_count("/artifacts/complete-part/vmlinux"),
        0
    );
    assert_eq!(
        env.server
            .request_count("/artifacts/complete-part/rootfs.ext4"),
        1
    );
    assert_eq!(std::fs::read(got.bundle.kernel_path()).unwrap(), body);
}

#[tokio::test]
async fn testkit_hosted_bundle_helper_round_trips() {
    let env = Env::new();
    let kernel = flick_testkit::fixture_server::pseudo_random_bytes(12_345, 1);
    let rootfs = flick_testkit::fixture_server::pseudo_random_bytes(23_456, 2);
    let (url, manifest) = env.server.serve_hosted_bundle(
        "kit-bundle",
        host_arch().as_str(),
        "squashfs",
        &kernel,
        &rootfs,
    );
    let got = env
        .cache(2)
        .ensure(
            &BaseImagePreset::Hosted(ManifestSource::Url(url)),
            EnsureOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(
        got.bundle.record.rootfs.sha256,
        manifest["rootfs"]["sha256"]
    );
    assert_eq!(std::fs::read(got.bundle.rootfs_path()).unwrap(), rootfs);
    assert!(got.bundle.record.rootfs_is_read_only);
}
