//! OCI/Docker images as root filesystems: the image cache under `<data dir>/images`.
//!
//! Registry credentials come from `FLICK_REGISTRY_USER` / `FLICK_REGISTRY_PASSWORD`; plain
//! HTTP is used only for registries on the local host (`localhost`, `127.0.0.1`, `[::1]`).

use std::path::Path;

use flick::image::oci::{ImageRecord, ImageStore, PullOptions, RegistryAuth, RootfsFormat};

use crate::artifacts::Boot;
use crate::ctx::Ctx;
use crate::progress::Bars;

/// The image cache.
pub fn store(ctx: &Ctx) -> anyhow::Result<ImageStore> {
    Ok(ImageStore::open(ctx.data_dir().join("images"))?)
}

/// Pull options from the environment.
pub fn pull_options() -> PullOptions {
    let auth = match (
        std::env::var("FLICK_REGISTRY_USER"),
        std::env::var("FLICK_REGISTRY_PASSWORD"),
    ) {
        (Ok(username), Ok(password)) if !username.is_empty() => {
            Some(RegistryAuth { username, password })
        }
        _ => None,
    };
    PullOptions {
        auth,
        allow_http: true,
        ..PullOptions::default()
    }
}

/// The image named `reference`: a local tarball or OCI layout when the path exists, else the
/// cached image of that name, else pulled from its registry.
pub async fn ensure(ctx: &Ctx, reference: &str, bars: &Bars) -> anyhow::Result<ImageRecord> {
    let store = store(ctx)?;
    let path = Path::new(reference);
    if path.exists() {
        return Ok(store.import(path, &pull_options(), bars).await?);
    }
    if let Some(image) = store.get(reference)? {
        return Ok(image);
    }
    Ok(store.pull(reference, &pull_options(), bars).await?)
}

/// Replaces the root filesystem (and the default command, env, workdir, user) with those of
/// an image, built once as a read-only squashfs the guest overlays with tmpfs.
pub async fn apply_image(
    ctx: &Ctx,
    reference: &str,
    boot: &mut Boot,
    bars: &Bars,
) -> anyhow::Result<()> {
    let image = ensure(ctx, reference, bars).await?;
    let rootfs = store(ctx)?
        .rootfs(&image, RootfsFormat::Squashfs, bars)
        .await?;
    boot.rootfs = rootfs;
    boot.read_only = true;
    boot.command = image.config.command(&[]);
    boot.env.clone_from(&image.config.env);
    boot.workdir.clone_from(&image.config.working_dir);
    boot.user.clone_from(&image.config.user);
    Ok(())
}
