//! `images pull|list|rm|prune`.

use std::process::ExitCode;

use flick::{Error, ErrorCode};

use crate::ctx::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum ImagesCmd {
    /// Pull an image from a registry (or import a `docker save` tarball / OCI layout).
    Pull {
        /// Reference or path.
        reference: String,
    },
    /// List images.
    #[command(visible_alias = "ls")]
    List,
    /// Remove images.
    #[command(visible_alias = "remove")]
    Rm {
        /// References or digests.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove unreferenced layers and root filesystems.
    Prune,
}

pub async fn run(_ctx: &Ctx, _cmd: &ImagesCmd) -> anyhow::Result<ExitCode> {
    Err(Error::new(
        ErrorCode::HostUnsupported,
        "OCI images are not available in this build",
    )
    .into())
}
