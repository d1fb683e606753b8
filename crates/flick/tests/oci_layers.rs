//! Layer application on a real filesystem: whiteouts, opaque directories, hard links, symlinks,
//! device nodes, ownership, xattrs, every compression; and malicious archives refused with
//! nothing written outside the target. Needs root (ownership, mknod).

mod oci_common;

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use flick::ErrorCode;
use flick::image::oci::layer::{Compression, apply_layer};
use oci_common::{Layer, snapshot};

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests create device nodes and set ownership: run them as root"
    );
}

fn apply(root: &Path, bytes: &[u8]) -> flick::Result<flick::image::oci::layer::LayerStats> {
    apply_layer(root, bytes)
}

#[test]
fn layers_stack_with_whiteouts_links_and_nodes() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();

    let base = Layer::new()
        .dir("etc", 0o755)
        .file("etc/hostname", b"base\n")
        .file("etc/remove-me", b"gone soon")
        .dir("etc/sub", 0o755)
        .file("etc/sub/deep", b"deep")
        .dir("opaque", 0o755)
        .file("opaque/old1", b"1")
        .dir("opaque/olddir", 0o755)
        .file("opaque/olddir/x", b"x")
        .file_owned("usr/bin/tool", b"#!/bin/sh\n", 0o4755, 0, 0)
        .file_owned("home/app/data", b"app", 0o640, 1000, 1001)
        .hardlink("usr/bin/tool-alias", "usr/bin/tool")
        .symlink("usr/bin/relative", "tool")
        .symlink("etc/absolute", "/usr/bin/tool")
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .device("dev/loop9", tar::EntryType::Block, 7, 9)
        .device("run/fifo", tar::EntryType::Fifo, 0, 0)
        .file_xattr("usr/bin/ping", b"ping", &[("user.flick", b"cap")])
        .gzip();
    let stats = apply(&root, &base).unwrap();
    assert_eq!(stats.compression, Some(Compression::Gzip));

    let upper = Layer::new()
        .whiteout("etc", "remove-me")
        .whiteout("etc", "sub")
        .dir("opaque", 0o700)
        .opaque("opaque")
        .file("opaque/new", b"new")
        .file("etc/hostname", b"upper\n")
        // A file replaced by a directory and a directory by a file.
        .dir("usr/bin/relative", 0o755)
        .file("home/app", b"now a file")
        .zstd();
    let stats = apply(&root, &upper).unwrap();
    assert_eq!(stats.compression, Some(Compression::Zstd));
    assert_eq!(stats.whiteouts, 3);

    let third = Layer::new().file("added/late", b"late").tar();
    assert_eq!(
        apply(&root, &third).unwrap().compression,
        Some(Compression::None)
    );

    // Whiteouts.
    assert!(!root.join("etc/remove-me").exists());
    assert!(!root.join("etc/sub").exists());
    assert_eq!(
        std::fs::read(root.join("etc/hostname")).unwrap(),
        b"upper\n"
    );
    // Opaque: lower entries gone, this layer's entry kept, directory metadata from the upper.
    let mut names: Vec<_> = std::fs::read_dir(root.join("opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["new"]);
    assert_eq!(
        std::fs::metadata(root.join("opaque"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );
    // No whiteout files leak into the tree.
    for (p, _) in snapshot(&root) {
        assert!(!p.to_string_lossy().contains(".wh."), "{}", p.display());
    }
    // Set-id bits, owners.
    let tool = std::fs::metadata(root.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(tool.nlink(), 2);
    let alias = std::fs::metadata(root.join("usr/bin/tool-alias")).unwrap();
    assert_eq!(alias.ino(), tool.ino());
    // Type replacements.
    assert!(
        std::fs::symlink_metadata(root.join("usr/bin/relative"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(std::fs::read(root.join("home/app")).unwrap(), b"now a file");
    assert_eq!(
        std::fs::read_link(root.join("etc/absolute")).unwrap(),
        Path::new("/usr/bin/tool")
    );
    // Device nodes and FIFOs.
    let null = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(null.mode() & 0o777, 0o620);
    let blk = std::fs::symlink_metadata(root.join("dev/loop9")).unwrap();
    assert!(blk.file_type().is_block_device());
    assert_eq!(blk.rdev(), rustix::fs::makedev(7, 9));
    assert!(
        std::fs::symlink_metadata(root.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // xattrs.
    let mut value = [0u8; 16];
    let n = rustix::fs::getxattr(root.join("usr/bin/ping"), "user.flick", &mut value).unwrap();
    assert_eq!(&value[..n], b"cap");
    // mtimes come from the headers.
    assert_eq!(tool.mtime(), 1_700_000_000);
    assert_eq!(std::fs::read(root.join("added/late")).unwrap(), b"late");
}

#[test]
fn owners_survive() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let layer = Layer::new()
        .file_owned("srv/owned", b"x", 0o600, 4242, 4343)
        .tar();
    apply(dir.path(), &layer).unwrap();
    let m = std::fs::metadata(dir.path().join("srv/owned")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (4242, 4343, 0o600));
}

#[test]
fn symlinks_inside_the_root_are_followed_for_parents() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // usrmerge-style: bin -> usr/bin; a later entry writes through it.
    let layer = Layer::new()
        .dir("usr/bin", 0o755)
        .symlink("bin", "usr/bin")
        .file("bin/sh", b"shell")
        .tar();
    apply(dir.path(), &layer).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("usr/bin/sh")).unwrap(),
        b"shell"
    );
    assert!(
        std::fs::symlink_metadata(dir.path().join("bin"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// A scratch area with a target root, a sibling directory with a secret, and a unique absolute
/// path that must never appear.
struct Arena {
    dir: tempfile::TempDir,
    abs: std::path::PathBuf,
}

impl Arena {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), b"secret").unwrap();
        let abs = std::env::temp_dir().join(format!("flick-oci-abs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&abs);
        Self { dir, abs }
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("root")
    }

    /// Applies `layer` expecting UNSAFE_ARCHIVE_PATH and proves nothing outside root changed.
    fn refuse(&self, what: &str, layer: &[u8]) {
        let outside_before = snapshot(&self.dir.path().join("outside"));
        let top_before: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let err = apply_layer(&self.root(), layer).expect_err(what);
        assert_eq!(err.code(), ErrorCode::UnsafeArchivePath, "{what}: {err}");
        assert_eq!(
            snapshot(&self.dir.path().join("outside")),
            outside_before,
            "{what} changed the sibling directory"
        );
        assert_eq!(
            std::fs::read(self.dir.path().join("outside/secret")).unwrap(),
            b"secret",
            "{what}"
        );
        let mut top_after: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut top_before = top_before;
        top_before.sort();
        top_after.sort();
        assert_eq!(
            top_after, top_before,
            "{what} created something beside the root"
        );
        assert!(!self.abs.exists(), "{what} wrote to an absolute path");
        // The entry itself did not land inside the root either.
        for (p, _) in snapshot(&self.root()) {
            assert!(
                !p.to_string_lossy().contains("pwned"),
                "{what}: {}",
                p.display()
            );
        }
    }
}

#[test]
fn malicious_archives_are_refused_and_write_nothing_outside() {
    require_root();
    let arena = Arena::new();
    let abs = arena.abs.to_string_lossy().into_owned();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot traversal",
            Layer::new().file("../pwned", b"x").tar(),
        ),
        (
            "nested traversal",
            Layer::new().file("a/../../pwned", b"x").tar(),
        ),
        (
            "absolute path",
            Layer::new().file(&format!("{abs}/pwned"), b"x").tar(),
        ),
        (
            "relative symlink escape",
            Layer::new()
                .symlink("up", "../outside")
                .file("up/pwned", b"x")
                .tar(),
        ),
        (
            "absolute symlink escape",
            Layer::new()
                .symlink("abs", &abs)
                .dir("abs/pwned", 0o755)
                .tar(),
        ),
        (
            "symlink chain escape",
            Layer::new()
                .dir("a", 0o755)
                .symlink("a/b", "../..")
                .file("a/b/outside/pwned", b"x")
                .tar(),
        ),
        (
            "hard link to outside",
            Layer::new().hardlink("pwned", "../outside/secret").tar(),
        ),
        (
            "hard link through an escaping symlink",
            Layer::new()
                .symlink("esc", "../outside")
                .hardlink("pwned", "esc/secret")
                .tar(),
        ),
        (
            "whiteout through an escaping symlink",
            Layer::new()
                .symlink("esc", "../outside")
                .whiteout("esc", "secret")
                .tar(),
        ),
        (
            "opaque marker through an escaping symlink",
            Layer::new()
                .symlink("esc", "../outside")
                .opaque("esc")
                .tar(),
        ),
        ("whiteout of ..", Layer::new().file("a/.wh...", b"").tar()),
        (
            "huge GNU long name",
            Layer::new().huge_long_name(64 << 20).tar(),
        ),
        ("huge PAX header", Layer::new().huge_pax(64 << 20).gzip()),
    ];
    for (what, layer) in &cases {
        arena.refuse(what, layer);
    }
}

#[test]
fn corrupt_streams_fail_with_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut gz = Layer::new().file("a", &[7u8; 4096]).gzip();
    let n = gz.len();
    gz.truncate(n / 2);
    let err = apply_layer(dir.path(), &gz[..]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::ImagePullFailed, "{err}");
}

#[test]
fn entries_replacing_escaping_symlinks_never_follow_them() {
    require_root();
    let arena = Arena::new();
    let root = arena.root();
    let outside_before = snapshot(&arena.dir.path().join("outside"));
    // Lower layer: traps pointing at the sibling directory and its secret.
    let lower = Layer::new()
        .symlink("file-trap", "../outside/secret")
        .symlink("dir-trap", "../outside")
        .symlink("link-trap", "../outside/secret")
        .symlink("node-trap", "../outside/secret")
        .file("real", b"inside")
        .tar();
    apply_layer(&root, &lower[..]).unwrap();
    // Upper layer: plain entries with the same names replace the symlinks themselves.
    let upper = Layer::new()
        .file("file-trap", b"replaced")
        .dir("dir-trap", 0o755)
        .file("dir-trap/inner", b"inside dir")
        .hardlink("link-trap", "real")
        .device("node-trap", tar::EntryType::Fifo, 0, 0)
        .tar();
    apply_layer(&root, &upper[..]).unwrap();
    assert_eq!(std::fs::read(root.join("file-trap")).unwrap(), b"replaced");
    assert!(
        std::fs::symlink_metadata(root.join("dir-trap"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        std::fs::read(root.join("dir-trap/inner")).unwrap(),
        b"inside dir"
    );
    assert_eq!(
        std::fs::metadata(root.join("link-trap")).unwrap().ino(),
        std::fs::metadata(root.join("real")).unwrap().ino()
    );
    assert!(
        std::fs::symlink_metadata(root.join("node-trap"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(snapshot(&arena.dir.path().join("outside")), outside_before);
    assert_eq!(
        std::fs::read(arena.dir.path().join("outside/secret")).unwrap(),
        b"secret"
    );
}
