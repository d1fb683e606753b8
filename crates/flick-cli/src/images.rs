//! OCI/Docker images as root filesystems.

use flick::{Error, ErrorCode};

use crate::artifacts::Boot;
use crate::ctx::Ctx;
use crate::progress::Bars;

/// Replaces the root filesystem (and the default command, env, workdir, user) with those of
/// an image.
pub async fn apply_image(
    _ctx: &Ctx,
    reference: &str,
    _boot: &mut Boot,
    _bars: &Bars,
) -> anyhow::Result<()> {
    Err(Error::new(
        ErrorCode::HostUnsupported,
        format!("cannot use image {reference:?}: OCI images are not available in this build"),
    )
    .into())
}
