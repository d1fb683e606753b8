//! Where a sandbox's kernel and root filesystem come from: explicit paths, a runtime (the
//! Firecracker CI base image, or an OCI image for `node`/`python`/custom runtimes), or an image.

use std::path::{Path, PathBuf};

use flick::image::RootfsType;
use flick::image::cache::BaseImagePreset;
use flick::{Error, ErrorCode};
use serde::Deserialize;

use crate::commands::vm::CreateArgs;
use crate::ctx::Ctx;
use crate::progress::Bars;

/// What boots.
#[derive(Debug, Clone, Default)]
pub struct Boot {
    /// Kernel.
    pub kernel: PathBuf,
    /// Root filesystem.
    pub rootfs: PathBuf,
    /// Whether it is read-only (squashfs).
    pub read_only: bool,
    /// The image's default command.
    pub command: Vec<String>,
    /// The image's environment.
    pub env: Vec<String>,
    /// The image's working directory.
    pub workdir: Option<String>,
    /// The image's user.
    pub user: Option<String>,
}

/// A runtime from `<data dir>/runtimes.json`: `{"name": {"image": "ref"}}` or
/// `{"name": {"kernel": "...", "rootfs": "..."}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeDef {
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    kernel: Option<PathBuf>,
    #[serde(default)]
    rootfs: Option<PathBuf>,
}

/// The built-in runtimes besides `base`.
fn builtin_image(runtime: &str) -> Option<&'static str> {
    match runtime {
        "node" => Some("docker.io/library/node:22-slim"),
        "python" => Some("docker.io/library/python:3.13-slim"),
        _ => None,
    }
}

fn custom_runtime(ctx: &Ctx, name: &str) -> anyhow::Result<Option<RuntimeDef>> {
    let path = ctx.data_dir().join("runtimes.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    let mut all: std::collections::BTreeMap<String, RuntimeDef> = serde_json::from_slice(&bytes)
        .map_err(|e| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("{} is not a valid runtimes file", path.display()),
            )
            .with_source(e)
        })?;
    Ok(all.remove(name))
}

/// Whether `path` holds a squashfs image (magic `hsqs`).
pub fn is_squashfs(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"hsqs"
}

/// The base image: Firecracker's CI kernel and Ubuntu root filesystem.
async fn base(ctx: &Ctx, bars: &Bars) -> anyhow::Result<Boot> {
    let host = ctx.host(None)?;
    let ensured = host
        .ensure_base_image(&BaseImagePreset::Latest, bars)
        .await?;
    let record = &ensured.bundle.record;
    Ok(Boot {
        kernel: ensured.bundle.kernel_path(),
        rootfs: ensured.bundle.rootfs_path(),
        read_only: record.rootfs_type == RootfsType::Squashfs || record.rootfs_is_read_only,
        ..Boot::default()
    })
}

/// Resolves the arguments to what boots.
pub async fn resolve(ctx: &Ctx, args: &CreateArgs) -> anyhow::Result<Boot> {
    let bars = Bars::new(ctx.globals.json);
    // The Firecracker binary is needed by every VM: fetch it now, with progress.
    ctx.host(None)?.ensure_binary_with_progress(&bars).await?;
    let mut image = args.image.clone();
    let mut kernel = args.kernel.clone();
    let mut rootfs = args.rootfs.clone();
    if image.is_none() && rootfs.is_none() && args.runtime != "base" {
        if let Some(reference) = builtin_image(&args.runtime) {
            image = Some(reference.to_string());
        } else if let Some(def) = custom_runtime(ctx, &args.runtime)? {
            image = image.or(def.image);
            kernel = kernel.or(def.kernel);
            rootfs = rootfs.or(def.rootfs);
        } else {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "unknown runtime {:?}: base, node, python, or one defined in {}",
                    args.runtime,
                    ctx.data_dir().join("runtimes.json").display()
                ),
            )
            .into());
        }
    }
    let mut boot = match (&kernel, &rootfs) {
        (Some(k), Some(r)) => Boot {
            kernel: k.clone(),
            rootfs: r.clone(),
            read_only: is_squashfs(r),
            ..Boot::default()
        },
        _ => {
            let mut b = base(ctx, &bars).await?;
            if let Some(k) = &kernel {
                b.kernel = k.clone();
            }
            if let Some(r) = &rootfs {
                b.rootfs = r.clone();
                b.read_only = is_squashfs(r);
            }
            b
        }
    };
    if let Some(reference) = image {
        crate::images::apply_image(ctx, &reference, &mut boot, &bars).await?;
    }
    for (what, p) in [("kernel", &boot.kernel), ("root filesystem", &boot.rootfs)] {
        if !p.is_file() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("the {what} {} does not exist", p.display()),
            )
            .into());
        }
    }
    Ok(boot)
}
