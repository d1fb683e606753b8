//! The image store without a registry: imports of OCI layouts (directory and tar) and both
//! `docker save` forms, ext4 / squashfs root filesystems read back with debugfs / unsquashfs,
//! caching, list / get / remove / prune, and failures that leave nothing behind.

mod oci_common;

use std::path::Path;

use flick::ErrorCode;
use flick::image::NoProgress;
use flick::image::ProgressEvent;
use flick::image::oci::{ImageConfig, ImageStore, Platform, PullOptions, RootfsFormat};
use oci_common::*;
use serde_json::json;

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "rootfs builds set ownership and create device nodes: run as root"
    );
}

/// A small image touching every layer feature.
fn sample_image() -> Image {
    let base = Layer::new()
        .dir("etc", 0o755)
        .file("etc/os-release", b"ID=flicktest\n")
        .file("etc/old", b"old")
        .dir("var/cache", 0o755)
        .file("var/cache/stale", b"stale")
        .file_owned("usr/bin/app", b"#!/bin/sh\necho hi\n", 0o4755, 0, 0)
        .hardlink("usr/bin/app-link", "usr/bin/app")
        .symlink("usr/bin/sh", "/bin/busybox")
        .device("dev/console", tar::EntryType::Char, 5, 1)
        .file_owned("home/user/.profile", b"export X=1\n", 0o640, 1000, 1000)
        .file_xattr("usr/bin/ping", b"ping", &[("user.flick", b"net_raw")])
        .gzip();
    let top = Layer::new()
        .whiteout("etc", "old")
        .opaque("var/cache")
        .file("var/cache/fresh", b"fresh")
        .big_file("opt/big.bin", 3 << 20)
        .zstd();
    Image::new(
        vec![base, top],
        json!({
            "Entrypoint": ["/usr/bin/app"],
            "Cmd": ["--serve"],
            "Env": ["PATH=/usr/bin", "X=1"],
            "WorkingDir": "/home/user",
            "User": "1000:1000",
        }),
    )
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path().join("images")).unwrap();
    (dir, store)
}

#[tokio::test]
async fn oci_layout_dir_to_ext4_and_squashfs() {
    require_root();
    let (dir, store) = store();
    let image = sample_image();
    let layout = dir.path().join("layout");
    write_dir(
        &layout,
        &oci_layout_files(
            &[&image],
            Some(json!({ "io.containerd.image.name": "example.com/team/app:1.0" })),
        ),
    );
    let record = store
        .import(&layout, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(record.reference, "example.com/team/app:1.0");
    assert_eq!(record.digest, image.digest());
    assert_eq!(record.platform, Platform::default());
    assert_eq!(record.layers.len(), 2);
    assert_eq!(
        record.config,
        ImageConfig {
            entrypoint: vec!["/usr/bin/app".into()],
            cmd: vec!["--serve".into()],
            env: vec!["PATH=/usr/bin".into(), "X=1".into()],
            working_dir: Some("/home/user".into()),
            user: Some("1000:1000".into()),
        }
    );
    assert_eq!(record.config.command(&[]), ["/usr/bin/app", "--serve"]);
    assert_eq!(
        record.config.command(&["--once".into()]),
        ["/usr/bin/app", "--once"]
    );

    let events = Events::default();
    let ext4 = store
        .rootfs(&record, RootfsFormat::Ext4, &events)
        .await
        .unwrap();
    assert!(
        events.count(ProgressEvent::Finished) >= 3,
        "per-layer progress"
    );
    // Read it back.
    let etc = debugfs(&ext4, "ls -l /etc");
    assert!(etc.contains("os-release"), "{etc}");
    assert!(!etc.contains(" old"), "whiteout applied: {etc}");
    let cache = debugfs(&ext4, "ls /var/cache");
    assert!(
        cache.contains("fresh") && !cache.contains("stale"),
        "{cache}"
    );
    let app = debugfs(&ext4, "stat /usr/bin/app");
    assert!(app.contains("Mode:  04755"), "{app}");
    assert!(app.contains("Links: 2"), "{app}");
    let console = debugfs(&ext4, "stat /dev/console");
    assert!(
        console.contains("character special") || console.contains("Type: character"),
        "{console}"
    );
    assert!(
        console.contains("Device major/minor number: 05:01"),
        "{console}"
    );
    let profile = debugfs(&ext4, "stat /home/user/.profile");
    assert!(
        profile.contains("User:  1000") && profile.contains("Group:  1000"),
        "{profile}"
    );
    let sh = debugfs(&ext4, "stat /usr/bin/sh");
    assert!(sh.contains("Fast link dest: \"/bin/busybox\""), "{sh}");
    let big = debugfs(&ext4, "stat /opt/big.bin");
    assert!(big.contains(&format!("Size: {}", 3 << 20)), "{big}");
    assert_eq!(debugfs_cat(&ext4, "/var/cache/fresh"), b"fresh");
    let xattrs = debugfs(&ext4, "ea_list /usr/bin/ping");
    assert!(
        xattrs.contains("user.flick") && xattrs.contains("net_raw"),
        "{xattrs}"
    );
    // Mount points a guest needs exist.
    let root = debugfs(&ext4, "ls /");
    for d in ["proc", "sys", "dev", "tmp", "run"] {
        assert!(root.contains(d), "{d} missing: {root}");
    }
    // The config sits beside the rootfs.
    let cfg: ImageConfig =
        serde_json::from_slice(&std::fs::read(store.config_path(&record)).unwrap()).unwrap();
    assert_eq!(cfg, record.config);

    let sqfs = store
        .rootfs(&record, RootfsFormat::Squashfs, &NoProgress)
        .await
        .unwrap();
    let listing = unsquashfs_list(&sqfs);
    assert!(
        listing.contains("-rwsr-xr-x 0/0") && listing.contains("/usr/bin/app"),
        "{listing}"
    );
    assert!(
        listing.contains("crw--w---- 0/0") && listing.contains("/dev/console"),
        "{listing}"
    );
    assert!(
        listing.contains("1000/1000") && listing.contains("/home/user/.profile"),
        "{listing}"
    );
    assert!(listing.contains("/usr/bin/sh -> /bin/busybox"), "{listing}");
    assert!(
        !listing.contains("/etc/old") && !listing.contains("stale"),
        "{listing}"
    );
    assert!(!listing.contains(".wh."), "{listing}");
    // Extract it back (as root, with xattrs) and compare file contents and attributes.
    let back = dir.path().join("unsquashed");
    let out = std::process::Command::new("unsquashfs")
        .arg("-q")
        .arg("-d")
        .arg(&back)
        .arg(&sqfs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read(back.join("var/cache/fresh")).unwrap(),
        b"fresh"
    );
    let mut value = [0u8; 16];
    let n = rustix::fs::getxattr(back.join("usr/bin/ping"), "user.flick", &mut value).unwrap();
    assert_eq!(&value[..n], b"net_raw");
    assert_eq!(
        std::fs::metadata(back.join("opt/big.bin")).unwrap().len(),
        3 << 20
    );
}

#[tokio::test]
async fn rootfs_is_built_once_per_digest_and_format() {
    require_root();
    let (dir, store) = store();
    let image = sample_image();
    let layout = dir.path().join("layout");
    write_dir(&layout, &oci_layout_files(&[&image], None));
    let record = store
        .import_as(
            &layout,
            Some("cached:1"),
            &PullOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(record.reference, "docker.io/library/cached:1");
    let first = store
        .rootfs(&record, RootfsFormat::Ext4, &NoProgress)
        .await
        .unwrap();
    let mtime = std::fs::metadata(&first).unwrap().modified().unwrap();
    let events = Events::default();
    let second = store
        .rootfs(&record, RootfsFormat::Ext4, &events)
        .await
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(
        std::fs::metadata(&second).unwrap().modified().unwrap(),
        mtime
    );
    assert_eq!(events.count(ProgressEvent::Reused), 1);
    assert_eq!(events.count(ProgressEvent::Started), 0);
    // No scratch left.
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn docker_save_archives_both_forms() {
    require_root();
    let (dir, store) = store();
    // A duplicate layer exercises the legacy form's symlinked layer.tar.
    let dup = Layer::new().file("dup/x", b"same").tar();
    let image = Image::new(
        vec![
            Layer::new().file("bin/hello", b"hello").gzip(),
            dup.clone(),
            Layer::new().whiteout("bin", "hello").tar(),
            dup,
        ],
        json!({ "Cmd": ["/bin/sh"] }),
    );
    let legacy = dir.path().join("legacy.tar");
    docker_save_legacy(&legacy, &image, "saved/legacy:v1");
    let rec = store
        .import(&legacy, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(rec.reference, "docker.io/saved/legacy:v1");
    assert_eq!(rec.layers.len(), 4);
    assert_eq!(rec.config.command(&[]), ["/bin/sh"]);
    let fs = store
        .rootfs(&rec, RootfsFormat::Squashfs, &NoProgress)
        .await
        .unwrap();
    let listing = unsquashfs_list(&fs);
    assert!(
        listing.contains("/dup/x") && !listing.contains("/bin/hello"),
        "{listing}"
    );

    let modern = dir.path().join("modern.tar");
    docker_save_oci(&modern, &image, "saved/modern:v2");
    let rec2 = store
        .import(&modern, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(rec2.reference, "docker.io/saved/modern:v2");
    assert_eq!(
        rec2.digest,
        image.digest(),
        "the OCI form keeps the real manifest digest"
    );

    // OCI layout as a tar, unnamed: recorded under its digest.
    let oci_tar = dir.path().join("layout.tar");
    write_tar(&oci_tar, &oci_layout_files(&[&image], None));
    let rec3 = store
        .import(&oci_tar, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(rec3.reference, image.digest());

    // list / get / remove / prune.
    let refs: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.reference)
        .collect();
    assert_eq!(refs.len(), 3, "{refs:?}");
    assert_eq!(
        store.get("saved/modern:v2").unwrap().unwrap().digest,
        image.digest()
    );
    let short = image.digest()[7..19].to_owned();
    assert_eq!(store.get(&short).unwrap().unwrap().digest, image.digest());
    assert!(store.get("nothing:here").unwrap().is_none());

    let nothing = store.prune().unwrap();
    assert!(
        nothing.blobs.is_empty() && nothing.rootfs.is_empty(),
        "{nothing:?}"
    );
    store.remove("saved/legacy:v1").unwrap();
    let err = store.remove("saved/legacy:v1").unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    let pruned = store.prune().unwrap();
    // The legacy import synthesized its own manifest; its rootfs goes with it.
    assert!(pruned.blobs.contains(&rec.digest), "{pruned:?}");
    assert!(
        pruned
            .rootfs
            .iter()
            .any(|p| p.ends_with(format!("{}.squashfs", &rec.digest[7..])))
    );
    assert!(!fs.exists());
    store.remove("saved/modern:v2").unwrap();
    store.remove(&image.digest()).unwrap();
    store.prune().unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store_files(store.root()), Vec::<std::path::PathBuf>::new());
}

#[tokio::test]
async fn failed_conversion_leaves_nothing_behind() {
    require_root();
    let (dir, store) = store();
    let evil = Image::new(
        vec![
            Layer::new().file("ok", b"fine").gzip(),
            Layer::new()
                .symlink("escape", "../../../..")
                .file("escape/pwned", b"x")
                .tar(),
        ],
        json!({}),
    );
    let layout = dir.path().join("layout");
    write_dir(&layout, &oci_layout_files(&[&evil], None));
    let record = store
        .import_as(
            &layout,
            Some("evil:1"),
            &PullOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    let before = store_files(store.root());
    for format in [RootfsFormat::Ext4, RootfsFormat::Squashfs] {
        let err = store
            .rootfs(&record, format, &NoProgress)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnsafeArchivePath, "{err}");
        assert!(!store.rootfs_path(&record, format).exists());
    }
    assert!(!store.config_path(&record).exists());
    assert_eq!(store_files(store.root()), before);
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn bad_imports_leave_the_store_untouched() {
    let (dir, store) = store();
    let image = sample_image();
    // A layer whose bytes do not match its digest.
    let mut files = oci_layout_files(&[&image], None);
    let layer_name = format!("blobs/sha256/{}", sha256_hex(&image.layers[1]));
    let mut tampered = image.layers[1].clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    files.insert(layer_name, tampered);
    let bad = dir.path().join("bad");
    write_dir(&bad, &files);
    let err = store
        .import(&bad, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ImagePullFailed, "{err}");
    assert_eq!(store_files(store.root()), Vec::<std::path::PathBuf>::new());

    // The same as a tar.
    let bad_tar = dir.path().join("bad.tar");
    write_tar(&bad_tar, &files);
    let err = store
        .import(&bad_tar, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ImagePullFailed, "{err}");
    assert_eq!(store_files(store.root()), Vec::<std::path::PathBuf>::new());

    // Not an image at all, a missing path, a bad name, and a wrong platform.
    let junk = dir.path().join("junk.tar");
    write_tar(&junk, &[("hello".to_owned(), b"x".to_vec())].into());
    for path in [junk.as_path(), Path::new("/nonexistent/flick-image.tar")] {
        let err = store
            .import(path, &PullOptions::default(), &NoProgress)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::ImagePullFailed, "{err}");
    }
    let good = dir.path().join("good");
    write_dir(&good, &oci_layout_files(&[&image], None));
    let err = store
        .import_as(
            &good,
            Some("Bad Name"),
            &PullOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidImageReference);
    let arm = PullOptions {
        platform: Platform::parse("linux/arm64").unwrap(),
        ..PullOptions::default()
    };
    let err = store.import(&good, &arm, &NoProgress).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ImagePullFailed, "{err}");
    assert!(err.to_string().contains("linux/amd64"), "{err}");
    assert_eq!(store_files(store.root()), Vec::<std::path::PathBuf>::new());

    // A tar member climbing out of the archive.
    let climbing = dir.path().join("climb.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&climbing).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        h.as_old_mut().name[..5].copy_from_slice(b"../..");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.finish().unwrap();
    }
    let err = store
        .import(&climbing, &PullOptions::default(), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnsafeArchivePath, "{err}");
    assert_eq!(store_files(store.root()), Vec::<std::path::PathBuf>::new());
}

#[test]
fn get_rejects_ambiguous_prefixes_and_parses_platforms() {
    let p = Platform::parse("linux/arm64/v8").unwrap();
    assert_eq!(p.to_string(), "linux/arm64/v8");
    assert_eq!(
        Platform::parse("linux/x86_64").unwrap(),
        Platform::default()
    );
    assert_eq!(
        Platform::parse("linux").unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    let (_dir, store) = store();
    assert!(store.get("abcd").unwrap().is_none());
    assert_eq!(
        store.remove("abcd").unwrap_err().code(),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn compressed_archives_import() {
    let (dir, store) = store();
    let image = Image::new(
        vec![Layer::new().file("hello", b"compressed").gzip()],
        json!({ "Cmd": ["/hello"] }),
    );
    let plain = dir.path().join("save.tar");
    docker_save_legacy(&plain, &image, "zipped/app:gz");
    let raw = std::fs::read(&plain).unwrap();
    let gz_path = dir.path().join("save.tar.gz");
    {
        use std::io::Write as _;
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz_path).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(&raw).unwrap();
        enc.finish().unwrap();
    }
    let zst_path = dir.path().join("layout.tar.zst");
    let layout_tar = dir.path().join("layout.tar");
    write_tar(&layout_tar, &oci_layout_files(&[&image], None));
    std::fs::write(
        &zst_path,
        zstd::encode_all(&std::fs::read(&layout_tar).unwrap()[..], 3).unwrap(),
    )
    .unwrap();

    let a = store
        .import(&gz_path, &PullOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(a.reference, "docker.io/zipped/app:gz");
    assert_eq!(a.config.command(&[]), ["/hello"]);
    let b = store
        .import_as(
            &zst_path,
            Some("zipped/app:zst"),
            &PullOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(b.digest, image.digest());
    assert_eq!(store.list().unwrap().len(), 2);
}

#[tokio::test]
async fn prune_clears_stale_scratch_and_missing_layers_fail_cleanly() {
    let (dir, store) = store();
    let image = Image::new(vec![Layer::new().file("f", b"1").gzip()], json!({}));
    let layout = dir.path().join("layout");
    write_dir(&layout, &oci_layout_files(&[&image], None));
    let record = store
        .import_as(
            &layout,
            Some("gone:1"),
            &PullOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
    // A scratch directory left by a crashed run.
    let stale = store.root().join("tmp/build-deadbeef-1-2");
    std::fs::create_dir_all(stale.join("tree/etc")).unwrap();
    std::fs::write(stale.join("tree/etc/x"), b"x").unwrap();
    let report = store.prune().unwrap();
    assert_eq!(report.scratch, vec![stale.clone()]);
    assert!(!stale.exists());
    assert!(
        report.blobs.is_empty(),
        "the image is still referenced: {report:?}"
    );

    store.remove("gone:1").unwrap();
    let report = store.prune().unwrap();
    assert_eq!(report.blobs.len(), 3, "manifest, config, layer: {report:?}");
    assert!(report.freed_bytes > 0);
    // A stale record handle whose layers were pruned fails with a code and leaves nothing.
    let err = store
        .rootfs(&record, RootfsFormat::Squashfs, &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ImagePullFailed, "{err}");
    assert_eq!(store_files(store.root()), Vec::<std::path::PathBuf>::new());
}
