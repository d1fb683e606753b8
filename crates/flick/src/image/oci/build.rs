//! Turning an extracted tree into a filesystem image with the e2fsprogs / squashfs-tools
//! binaries.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use super::RootfsFormat;
use crate::error::{Error, ErrorCode, Result};

/// Directories a guest's init mounts over; created (empty) when an image lacks them.
const MOUNT_POINTS: &[(&str, u32)] = &[
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("run", 0o755),
    ("tmp", 0o1777),
];

fn failed(out: &Path, msg: String) -> Error {
    Error::new(ErrorCode::RootfsCreateFailed, msg).with_details(json!({ "path": out }))
}

/// What a tree holds, for sizing an ext4 image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// Bytes of allocated data, rounded to 4 KiB blocks.
    pub data_bytes: u64,
    /// Inodes (every file, directory, link and node).
    pub inodes: u64,
}

/// Walks `root` without following symlinks.
///
/// # Errors
/// [`ErrorCode::RootfsCreateFailed`] if the tree cannot be read.
pub fn tree_usage(root: &Path) -> Result<TreeUsage> {
    let mut usage = TreeUsage::default();
    let mut stack = vec![root.to_owned()];
    let mut seen = std::collections::HashSet::new();
    while let Some(dir) = stack.pop() {
        usage.inodes += 1;
        usage.data_bytes += 4096;
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| failed(&dir, format!("reading {}: {e}", dir.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| failed(&dir, format!("reading {}: {e}", dir.display())))?;
            let meta = entry
                .metadata()
                .map_err(|e| failed(&dir, format!("inspecting {}: {e}", entry.path().display())))?;
            if meta.is_dir() {
                stack.push(entry.path());
                continue;
            }
            if meta.nlink() > 1 && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            usage.inodes += 1;
            if meta.is_file() {
                usage.data_bytes += meta.len().div_ceil(4096) * 4096;
            } else if meta.file_type().is_symlink() && meta.len() >= 60 {
                usage.data_bytes += 4096;
            }
        }
    }
    Ok(usage)
}

/// The size of an ext4 image for `usage`: data plus 10 %, inode tables and journal room, in MiB.
#[must_use]
pub fn ext4_size_mib(usage: TreeUsage) -> u64 {
    let bytes = usage.data_bytes + usage.data_bytes / 10 + usage.inodes * 512 + (48 << 20);
    bytes.div_ceil(1 << 20)
}

/// Adds the mount points a guest needs when the image lacks them.
pub(crate) fn add_mount_points(tree: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for (name, mode) in MOUNT_POINTS {
        let p = tree.join(name);
        if std::fs::symlink_metadata(&p).is_err() {
            std::fs::create_dir(&p)
                .and_then(|()| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)))
                .map_err(|e| Error::io(ErrorCode::RootfsCreateFailed, "creating", &p, e))?;
        }
    }
    Ok(())
}

fn run(out: &Path, mut cmd: Command, tool: &str, package: &str) -> Result<()> {
    let output = cmd
        .output()
        .map_err(|e| failed(out, format!("running {tool} (install {package})")).with_source(e))?;
    if !output.status.success() {
        return Err(failed(
            out,
            format!(
                "{tool} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// Builds `out` (which must not exist) from `tree` in `format`.
///
/// ext4: a sparse file sized by [`ext4_size_mib`], formatted by `mkfs.ext4 -d` with enough inodes
/// for every file. squashfs: `mksquashfs` with gzip compression (every guest kernel with squashfs
/// reads it), keeping owners, xattrs and hard links.
///
/// # Errors
/// [`ErrorCode::RootfsCreateFailed`]; `out` is removed.
pub fn build_image(tree: &Path, out: &Path, format: RootfsFormat) -> Result<()> {
    let result = match format {
        RootfsFormat::Ext4 => {
            let usage = tree_usage(tree)?;
            let size = ext4_size_mib(usage);
            let inodes = usage.inodes + usage.inodes / 5 + 1024;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(out)
                .map_err(|e| Error::io(ErrorCode::RootfsCreateFailed, "creating", out, e))?;
            let sized = file
                .set_len(size << 20)
                .map_err(|e| Error::io(ErrorCode::RootfsCreateFailed, "sizing", out, e));
            drop(file);
            sized.and_then(|()| {
                let mut cmd = Command::new("mkfs.ext4");
                cmd.args([
                    "-q",
                    "-F",
                    "-m",
                    "0",
                    "-L",
                    "rootfs",
                    "-E",
                    "root_owner=0:0",
                ])
                .arg("-N")
                .arg(inodes.to_string())
                .arg("-d")
                .arg(tree)
                .arg(out);
                run(out, cmd, "mkfs.ext4", "e2fsprogs")
            })
        }
        RootfsFormat::Squashfs => {
            let mut cmd = Command::new("mksquashfs");
            cmd.arg(tree)
                .arg(out)
                .args(["-noappend", "-no-progress", "-comp", "gzip"]);
            run(out, cmd, "mksquashfs", "squashfs-tools")
        }
    };
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}
