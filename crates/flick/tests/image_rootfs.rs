//! Rootfs helpers with the real tools: blank ext4 images made by `mkfs.ext4` on sparse files, and
//! clones that keep holes (reflink where the filesystem offers it, else `SEEK_DATA` copies).

use std::os::unix::fs::FileExt as _;
use std::os::unix::fs::MetadataExt as _;

use flick::ErrorCode;
use flick::image::DataDirs;
use flick::image::rootfs::{CloneMethod, clone_rootfs, create_blank_ext4};

fn e2fsck_clean(path: &std::path::Path) {
    let out = std::process::Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(path)
        .output()
        .expect("e2fsck (e2fsprogs) must be installed");
    assert!(
        out.status.success(),
        "e2fsck found problems: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn blank_ext4_is_sparse_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("blank.ext4");
    create_blank_ext4(&img, 256).unwrap();
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), 256 << 20);
    let allocated = meta.blocks() * 512;
    assert!(
        allocated < 64 << 20,
        "a blank image should be sparse, {allocated} bytes allocated"
    );
    e2fsck_clean(&img);
    let out = std::process::Command::new("dumpe2fs")
        .arg("-h")
        .arg(&img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Filesystem magic number:  0xEF53"), "{text}");
}

#[test]
fn blank_ext4_bad_inputs_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("zero.ext4");
    let err = create_blank_ext4(&img, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::RootfsCreateFailed);
    assert!(!img.exists());
    // The smallest size still yields a valid filesystem (mkfs.ext4 drops the journal).
    let tiny = dir.path().join("tiny.ext4");
    create_blank_ext4(&tiny, 1).unwrap();
    e2fsck_clean(&tiny);
    // An existing file is never overwritten.
    let existing = dir.path().join("existing.ext4");
    std::fs::write(&existing, b"precious").unwrap();
    let err = create_blank_ext4(&existing, 8).unwrap_err();
    assert_eq!(err.code(), ErrorCode::RootfsCreateFailed);
    assert_eq!(std::fs::read(&existing).unwrap(), b"precious");
    // A missing parent directory.
    let err = create_blank_ext4(&dir.path().join("no/such/dir.ext4"), 8).unwrap_err();
    assert_eq!(err.code(), ErrorCode::RootfsCreateFailed);
}

#[test]
fn clone_keeps_content_and_holes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(b"head data", 0).unwrap();
    f.write_all_at(&[7u8; 100_000], 20 << 20).unwrap();
    f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let dst = dir.path().join("dst.img");
    let method = clone_rootfs(&src, &dst).unwrap();
    assert!(matches!(
        method,
        CloneMethod::Reflink | CloneMethod::SparseCopy
    ));
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
    let meta = std::fs::metadata(&dst).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(
        meta.blocks() * 512 < 8 << 20,
        "holes were filled: {} bytes allocated",
        meta.blocks() * 512
    );
    // The clone is independent of its source.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&dst)
        .unwrap()
        .write_all_at(b"changed", 0)
        .unwrap();
    assert_eq!(&std::fs::read(&src).unwrap()[..9], b"head data");
}

#[test]
fn clone_of_a_real_ext4_image_is_still_valid() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("base.ext4");
    create_blank_ext4(&src, 64).unwrap();
    let dst = dir.path().join("vm.ext4");
    clone_rootfs(&src, &dst).unwrap();
    e2fsck_clean(&dst);
}

#[test]
fn clone_bad_inputs_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let err = clone_rootfs(&dir.path().join("missing"), &dir.path().join("out")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::RootfsCloneFailed);
    assert!(!dir.path().join("out").exists());
    let err = clone_rootfs(dir.path(), &dir.path().join("out")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::RootfsCloneFailed);
    assert!(!dir.path().join("out").exists());
    let src = dir.path().join("src");
    std::fs::write(&src, b"x").unwrap();
    let dst = dir.path().join("dst");
    std::fs::write(&dst, b"keep me").unwrap();
    let err = clone_rootfs(&src, &dst).unwrap_err();
    assert_eq!(err.code(), ErrorCode::RootfsCloneFailed);
    assert_eq!(std::fs::read(&dst).unwrap(), b"keep me");
}

#[test]
fn data_dirs_lay_out_under_one_root() {
    let root = tempfile::tempdir().unwrap();
    let dirs = DataDirs::new(root.path());
    assert_eq!(dirs.bin_dir(), root.path().join("bin"));
    assert_eq!(
        dirs.bin_version_dir("v1.16.1", flick::image::Arch::X86_64),
        root.path().join("bin/v1.16.1/x86_64")
    );
    assert_eq!(dirs.kernels_dir(), root.path().join("kernels"));
    assert_eq!(dirs.rootfs_dir(), root.path().join("rootfs"));
    assert_eq!(dirs.sockets_dir(), root.path().join("sockets"));
    assert_eq!(dirs.base_images_dir(), root.path().join("base-images"));
    dirs.create_all().unwrap();
    for d in ["bin", "kernels", "rootfs", "sockets", "base-images"] {
        assert!(root.path().join(d).is_dir(), "{d}");
    }
    let mode = std::fs::metadata(dirs.sockets_dir()).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700);
}
