//! `snapshot create|list|rm|restore`.

use std::process::ExitCode;

use flick::{Error, ErrorCode};
use serde_json::json;

use crate::ctx::Ctx;
use crate::output::{print_json, print_table};
use crate::vmops;

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a running VM (paused for the copy, then resumed).
    Create {
        /// VM name or id.
        vm: String,
        /// Snapshot name (default: the VM's name and a timestamp).
        #[arg(long)]
        name: Option<String>,
    },
    /// List snapshots.
    #[command(visible_alias = "ls")]
    List,
    /// Remove snapshots.
    #[command(visible_alias = "remove")]
    Rm {
        /// Snapshot names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Start new VMs from a snapshot.
    Restore {
        /// Snapshot name.
        snapshot: String,
        /// How many clones.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Name of the clone (with `--count` > 1: a prefix, `-1`, `-2`... appended).
        #[arg(long)]
        name: Option<String>,
    },
}

pub async fn run(ctx: &Ctx, cmd: &SnapshotCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SnapshotCmd::Create { vm, name } => {
            let name = match name {
                Some(n) => n.clone(),
                None => {
                    let r = ctx.store.resolve(vm)?;
                    let now = flick::unix_time();
                    format!("{}-{now}", r.name)
                }
            };
            let meta = vmops::snapshot(ctx, vm, &name).await?;
            if ctx.globals.json {
                print_json(&meta);
            } else {
                println!("{}", meta.name);
            }
        }
        SnapshotCmd::List => {
            let mut metas = Vec::new();
            if let Ok(entries) = std::fs::read_dir(vmops::snapshots_dir(ctx)) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Ok(m) = vmops::load_snapshot_meta(ctx, &name) {
                        metas.push(m);
                    }
                }
            }
            metas.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
            if ctx.globals.json {
                print_json(&metas);
            } else {
                let now = flick::unix_time();
                let rows: Vec<Vec<String>> = metas
                    .iter()
                    .map(|m| {
                        vec![
                            m.name.clone(),
                            m.source_name.clone(),
                            crate::output::ago(now.saturating_sub(m.created_at)),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "SOURCE VM", "CREATED"], &rows);
            }
        }
        SnapshotCmd::Rm { names } => {
            let mut removed = Vec::new();
            for name in names {
                vmops::load_snapshot_meta(ctx, name)?;
                std::fs::remove_dir_all(vmops::snapshots_dir(ctx).join(name))?;
                removed.push(name.clone());
                if !ctx.globals.json {
                    println!("{name}");
                }
            }
            if ctx.globals.json {
                print_json(&json!({ "removed": removed }));
            }
        }
        SnapshotCmd::Restore {
            snapshot,
            count,
            name,
        } => {
            if *count == 0 {
                return Err(
                    Error::new(ErrorCode::InvalidArgument, "--count must be at least 1").into(),
                );
            }
            // Clones restore concurrently: each has its own runtime dir, socket and TAP.
            let mut tasks = Vec::new();
            for i in 0..*count {
                let clone_name = match (name, *count) {
                    (Some(n), 1) => Some(n.clone()),
                    (Some(n), _) => Some(format!("{n}-{}", i + 1)),
                    (None, _) => None,
                };
                tasks.push(vmops::restore(ctx, snapshot, clone_name));
            }
            let results = futures_util::future::join_all(tasks).await;
            let mut docs = Vec::new();
            let mut first_err = None;
            for r in results {
                match r {
                    Ok(record) => {
                        if !ctx.globals.json {
                            println!("{}", record.name);
                        }
                        docs.push(crate::commands::vm::describe(&record));
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
            if ctx.globals.json {
                print_json(&docs);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
