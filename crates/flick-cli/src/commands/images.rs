//! `images pull|list|rm|prune`.

use std::process::ExitCode;

use serde_json::json;

use crate::ctx::Ctx;
use crate::images;
use crate::output::{print_json, print_table};
use crate::progress::Bars;

#[derive(Debug, clap::Subcommand)]
pub enum ImagesCmd {
    /// Pull an image from a registry (or import a `docker save` tarball / OCI layout) and build
    /// its root filesystem.
    Pull {
        /// Reference (`python:3.13-slim`, `ghcr.io/org/img@sha256:...`) or path.
        reference: String,
    },
    /// List images.
    #[command(visible_alias = "ls")]
    List,
    /// Remove images (by reference or digest prefix).
    #[command(visible_alias = "remove")]
    Rm {
        /// References or digests.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove layers and root filesystems no image uses.
    Prune,
}

fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

pub async fn run(ctx: &Ctx, cmd: &ImagesCmd) -> anyhow::Result<ExitCode> {
    let store = images::store(ctx)?;
    match cmd {
        ImagesCmd::Pull { reference } => {
            let bars = Bars::new(ctx.globals.json);
            let image = images::ensure(ctx, reference, &bars).await?;
            let rootfs = store
                .rootfs(&image, flick::image::oci::RootfsFormat::Squashfs, &bars)
                .await?;
            if ctx.globals.json {
                let mut doc = serde_json::to_value(&image)?;
                doc["rootfs"] = json!(rootfs);
                print_json(&doc);
            } else {
                println!("{} {}", image.reference, image.digest);
            }
        }
        ImagesCmd::List => {
            let list = store.list()?;
            if ctx.globals.json {
                print_json(&list);
            } else {
                let now = flick::unix_time();
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|i| {
                        #[allow(clippy::cast_precision_loss)]
                        let mib = i.size_bytes as f64 / (1024.0 * 1024.0);
                        vec![
                            i.reference.clone(),
                            short(&i.digest),
                            format!("{}/{}", i.platform.os, i.platform.architecture),
                            format!("{mib:.1} MiB"),
                            crate::output::ago(now.saturating_sub(i.created_at)),
                        ]
                    })
                    .collect();
                print_table(
                    &["REFERENCE", "DIGEST", "PLATFORM", "SIZE", "PULLED"],
                    &rows,
                );
            }
        }
        ImagesCmd::Rm { images } => {
            let mut removed = Vec::new();
            for name in images {
                let image = store.remove(name)?;
                if !ctx.globals.json {
                    println!("{}", image.reference);
                }
                removed.push(image);
            }
            if ctx.globals.json {
                print_json(&json!({ "removed": removed }));
            }
        }
        ImagesCmd::Prune => {
            let report = store.prune()?;
            if ctx.globals.json {
                print_json(&report);
            } else {
                #[allow(clippy::cast_precision_loss)]
                let mib = report.freed_bytes as f64 / (1024.0 * 1024.0);
                println!(
                    "removed {} blobs, {} root filesystems; {mib:.1} MiB freed",
                    report.blobs.len(),
                    report.rootfs.len()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
