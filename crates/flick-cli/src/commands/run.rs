//! `flick run`: create, boot, run one command, remove; exit with the command's code.

use std::process::ExitCode;

use flick::{Error, ErrorCode};
use flick_proto::ExecRequest;

use crate::commands::guest;
use crate::commands::vm::{CreateArgs, spec};
use crate::ctx::Ctx;
use crate::vmops;

#[derive(Debug, clap::Args)]
pub struct RunCmd {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Keep the sandbox after the command ends.
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub opts: guest::ExecOpts,
    /// The command (default: the image's entrypoint and command).
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub async fn run(ctx: &Ctx, cmd: &RunCmd) -> anyhow::Result<ExitCode> {
    let spec = spec(ctx, &cmd.create).await?;
    let command = if cmd.command.is_empty() {
        spec.command.clone()
    } else {
        cmd.command.clone()
    };
    if command.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            "no command: give one after `--` (the runtime has no default command)",
        )
        .into());
    }
    let record = vmops::create(ctx, cmd.create.name.clone(), spec, true).await;
    let record = record?;
    let outcome = async {
        let req: ExecRequest = guest::request(&record, &cmd.opts, &command)?;
        tokio::select! {
            code = guest::run_command(ctx, &record, req) => code,
            _ = tokio::signal::ctrl_c() => Ok(130),
        }
    }
    .await;
    if !cmd.keep {
        vmops::remove(ctx, &record.id, true).await?;
    }
    Ok(ExitCode::from(outcome?))
}
