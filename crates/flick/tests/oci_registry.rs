//! Pulls from a real registry (Debian's `docker-registry`, CNCF distribution) on 127.0.0.1:
//! images pushed through its HTTP API, an index with several platforms, pulls by digest,
//! htpasswd (basic) and token (bearer) protected repositories, and failed pulls that leave
//! nothing in the cache.

mod oci_common;

use flick::ErrorCode;
use flick::image::oci::{ImageStore, Platform, PullOptions, RegistryAuth, RootfsFormat};
use flick::image::{NoProgress, ProgressEvent};
use oci_common::*;
use serde_json::json;

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    (dir, store)
}

fn local() -> PullOptions {
    PullOptions {
        allow_http: true,
        ..PullOptions::default()
    }
}

fn arch_image(arch: &str, base: &[u8]) -> Image {
    Image::for_platform(
        vec![
            base.to_vec(),
            Layer::new().file("etc/arch", arch.as_bytes()).gzip(),
        ],
        json!({ "Cmd": ["/bin/echo", arch] }),
        "linux",
        arch,
    )
}

#[tokio::test]
async fn anonymous_pull_resolves_the_platform_from_an_index() {
    let reg = TestRegistry::start(RegistryAuthMode::None).await;
    let base = Layer::new().file("etc/os-release", b"ID=multi\n").gzip();
    let amd = arch_image("amd64", &base);
    let arm = arch_image("arm64", &base);
    reg.push_index("multi/app", "latest", &[&amd, &arm]).await;
    let (_dir, store) = store();
    let name = format!("{}/multi/app", reg.host());

    let events = Events::default();
    let rec = store.pull(&name, &local(), &events).await.unwrap();
    assert_eq!(rec.reference, format!("{}/multi/app:latest", reg.host()));
    assert_eq!(rec.digest, amd.digest());
    assert_eq!(rec.platform, Platform::default());
    assert_eq!(rec.config.command(&[]), ["/bin/echo", "amd64"]);
    assert_eq!(
        events.count(ProgressEvent::Finished),
        3,
        "config and two layers"
    );

    let arm_opts = PullOptions {
        platform: Platform::parse("linux/arm64").unwrap(),
        ..local()
    };
    let rec_arm = store
        .pull(&format!("{name}:latest"), &arm_opts, &NoProgress)
        .await
        .unwrap();
    assert_eq!(rec_arm.digest, arm.digest());
    // The shared base layer is stored once: 2 configs + 3 layers + 2 manifests.
    let blobs = std::fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 7);

    // A second pull transfers nothing.
    let again = Events::default();
    store.pull(&name, &local(), &again).await.unwrap();
    assert_eq!(again.count(ProgressEvent::Reused), 3);
    assert_eq!(again.count(ProgressEvent::Started), 0);

    // By digest.
    let pinned = store
        .pull(&format!("{name}@{}", arm.digest()), &local(), &NoProgress)
        .await;
    // The arm64 manifest itself is a single-platform manifest: the platform check refuses it
    // for an amd64 guest.
    let err = pinned.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ImagePullFailed);
    assert!(err.to_string().contains("linux/arm64"), "{err}");
    let by_digest = store
        .pull(&format!("{name}@{}", amd.digest()), &local(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(by_digest.digest, amd.digest());

    // The rootfs holds the amd64 layer.
    let fs = store
        .rootfs(&rec, RootfsFormat::Squashfs, &NoProgress)
        .await
        .unwrap();
    let listing = unsquashfs_list(&fs);
    assert!(
        listing.contains("/etc/arch") && listing.contains("/etc/os-release"),
        "{listing}"
    );

    // An unknown platform lists what exists.
    let s390 = PullOptions {
        platform: Platform::parse("linux/s390x").unwrap(),
        ..local()
    };
    let before = store_files(store.root());
    let err = store.pull(&name, &s390, &NoProgress).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ImagePullFailed);
    assert!(
        err.to_string().contains("linux/amd64, linux/arm64"),
        "{err}"
    );
    // A missing tag is a 404.
    let err = store
        .pull(&format!("{name}:nope"), &local(), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.status()),
        (ErrorCode::ImagePullFailed, Some(404))
    );
    assert_eq!(store_files(store.root()), before);
    // Without allow_http flick speaks TLS to the plain-HTTP registry and fails.
    let err = store
        .pull(&name, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ImagePullFailed);
    assert_eq!(store_files(store.root()), before);
}

#[tokio::test]
async fn basic_auth_protected_registry() {
    let reg = TestRegistry::start(RegistryAuthMode::Basic {
        user: "alice".into(),
        password: "s3cret".into(),
    })
    .await;
    let image = Image::new(vec![Layer::new().file("hello", b"world").gzip()], json!({}));
    reg.push_image("private/app", "1", &image).await;
    let (_dir, store) = store();
    let name = format!("{}/private/app:1", reg.host());

    let err = store.pull(&name, &local(), &NoProgress).await.unwrap_err();
    assert_eq!(
        (err.code(), err.status()),
        (ErrorCode::ImagePullFailed, Some(401)),
        "{err}"
    );
    let wrong = PullOptions {
        auth: Some(RegistryAuth {
            username: "alice".into(),
            password: "wrong".into(),
        }),
        ..local()
    };
    let err = store.pull(&name, &wrong, &NoProgress).await.unwrap_err();
    assert_eq!(
        (err.code(), err.status()),
        (ErrorCode::ImagePullFailed, Some(401)),
        "{err}"
    );
    assert_eq!(store_files(store.root()), Vec::<std::path::PathBuf>::new());

    let right = PullOptions {
        auth: Some(RegistryAuth {
            username: "alice".into(),
            password: "s3cret".into(),
        }),
        ..local()
    };
    let rec = store.pull(&name, &right, &NoProgress).await.unwrap();
    assert_eq!(rec.digest, image.digest());
}

#[tokio::test]
async fn bearer_token_flow_with_public_and_private_repositories() {
    let issuer = TokenIssuer::start("bob", "hunter2");
    let reg = TestRegistry::start(RegistryAuthMode::Token(issuer.clone())).await;
    let image = Image::new(vec![Layer::new().file("data", b"tokens").zstd()], json!({}));
    reg.push_image("public/app", "1", &image).await;
    reg.push_image("private/app", "1", &image).await;
    let (_dir, store) = store();

    let before = issuer.requests.load(std::sync::atomic::Ordering::SeqCst);
    let rec = store
        .pull(
            &format!("{}/public/app:1", reg.host()),
            &local(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(rec.digest, image.digest());
    assert!(issuer.requests.load(std::sync::atomic::Ordering::SeqCst) > before);

    let private = format!("{}/private/app:1", reg.host());
    let err = store
        .pull(&private, &local(), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.status()),
        (ErrorCode::ImagePullFailed, Some(401)),
        "{err}"
    );
    let wrong = PullOptions {
        auth: Some(RegistryAuth {
            username: "bob".into(),
            password: "nope".into(),
        }),
        ..local()
    };
    let err = store.pull(&private, &wrong, &NoProgress).await.unwrap_err();
    assert_eq!(
        (err.code(), err.status()),
        (ErrorCode::ImagePullFailed, Some(401)),
        "{err}"
    );
    let right = PullOptions {
        auth: Some(RegistryAuth {
            username: "bob".into(),
            password: "hunter2".into(),
        }),
        ..local()
    };
    let rec = store.pull(&private, &right, &NoProgress).await.unwrap();
    assert_eq!(rec.reference, private);
    assert_eq!(store.list().unwrap().len(), 2);
}

#[tokio::test]
async fn a_corrupt_blob_fails_the_pull_and_leaves_nothing() {
    let reg = TestRegistry::start(RegistryAuthMode::None).await;
    let image = Image::new(
        vec![
            Layer::new().file("a", &[1u8; 10_000]).gzip(),
            Layer::new().file("b", &[2u8; 10_000]).gzip(),
        ],
        json!({}),
    );
    reg.push_image("broken/app", "1", &image).await;
    // Flip bytes of the second layer in the registry's own storage (same length).
    let path = reg.blob_data_path(&digest(&image.layers[1]));
    let mut data = std::fs::read(&path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&path, data).unwrap();

    let (_dir, store) = store();
    let err = store
        .pull(
            &format!("{}/broken/app:1", reg.host()),
            &local(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DownloadFailed, "{err}");
    assert!(err.to_string().contains("SHA-256"), "{err}");
    // The config and first layer were downloaded before the failure and are gone again.
    assert_eq!(store_files(store.root()), Vec::<std::path::PathBuf>::new());
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test]
async fn bad_references_are_refused_before_any_request() {
    let (_dir, store) = store();
    for bad in ["", "UPPER/case", "a:b:c:d", "x@sha256:123"] {
        let err = store.pull(bad, &local(), &NoProgress).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidImageReference, "{bad}");
    }
    assert_eq!(store_files(store.root()), Vec::<std::path::PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_and_builds_share_one_cache_entry() {
    assert!(
        rustix::process::geteuid().is_root(),
        "rootfs builds set ownership: run as root"
    );
    let reg = TestRegistry::start(RegistryAuthMode::None).await;
    let image = Image::new(
        vec![
            Layer::new().big_file("opt/one", 2 << 20).gzip(),
            Layer::new().file("etc/two", b"2").gzip(),
        ],
        json!({ "Entrypoint": ["/bin/true"] }),
    );
    reg.push_image("conc/app", "1", &image).await;
    let (_dir, store) = store();
    let name = format!("{}/conc/app:1", reg.host());
    let opts = local();
    let (a, b) = tokio::join!(
        store.pull(&name, &opts, &NoProgress),
        store.pull(&name, &opts, &NoProgress)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.digest, b.digest);
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        4
    );
    let (x, y) = tokio::join!(
        store.rootfs(&a, RootfsFormat::Squashfs, &NoProgress),
        store.rootfs(&b, RootfsFormat::Squashfs, &NoProgress)
    );
    assert_eq!(x.unwrap(), y.unwrap());
    // One image and its config file.
    assert_eq!(
        std::fs::read_dir(store.root().join("rootfs"))
            .unwrap()
            .count(),
        2
    );
}

#[tokio::test]
async fn docker_manifest_lists_resolve_too() {
    let reg = TestRegistry::start(RegistryAuthMode::None).await;
    let base = Layer::new().file("etc/os-release", b"ID=docker\n").gzip();
    let amd = arch_image("amd64", &base).docker();
    let arm = arch_image("arm64", &base).docker();
    reg.push_docker_list("dock/app", "2", &[&arm, &amd]).await;
    let (_dir, store) = store();
    let name = format!("{}/dock/app:2", reg.host());
    let rec = store.pull(&name, &local(), &NoProgress).await.unwrap();
    assert_eq!(rec.digest, amd.digest());
    let arm_opts = PullOptions {
        platform: Platform::parse("linux/aarch64").unwrap(),
        ..local()
    };
    let rec = store.pull(&name, &arm_opts, &NoProgress).await.unwrap();
    assert_eq!(rec.digest, arm.digest());
    assert_eq!(rec.platform.architecture, "arm64");
    assert_eq!(rec.config.command(&[]), ["/bin/echo", "arm64"]);
}
