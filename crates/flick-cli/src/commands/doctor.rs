//! `flick doctor`: can this host run microVMs?

use std::path::PathBuf;
use std::process::ExitCode;

use flick::doctor::{CheckStatus, DoctorOptions, run_checks};

use crate::Globals;
use crate::output::{print_json, print_table};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The tmpfs directory VMs run from.
    #[arg(long, default_value = "/dev/shm/flick/runtime")]
    runtime_dir: PathBuf,
}

pub fn run(globals: &Globals, args: &Args) -> anyhow::Result<ExitCode> {
    let checks = run_checks(&DoctorOptions {
        data_dir: globals.data_dir.clone(),
        runtime_dir: args.runtime_dir.clone(),
    });
    let failed = checks.iter().any(|c| c.status == CheckStatus::Fail);
    if globals.json {
        print_json(&serde_json::json!({ "ok": !failed, "checks": checks }));
    } else {
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|c| {
                let status = match c.status {
                    CheckStatus::Ok => "ok",
                    CheckStatus::Warn => "warn",
                    CheckStatus::Fail => "FAIL",
                };
                let mut detail = c.detail.clone();
                if let Some(hint) = &c.hint {
                    detail.push_str(&format!(" (hint: {hint})"));
                }
                vec![c.name.to_string(), status.to_string(), detail]
            })
            .collect();
        print_table(&["CHECK", "STATUS", "DETAIL"], &rows);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
