//! `flick version`.

use std::process::ExitCode;

use crate::Globals;
use crate::output::print_json;

pub fn run(globals: &Globals) -> anyhow::Result<ExitCode> {
    let version = env!("CARGO_PKG_VERSION");
    if globals.json {
        print_json(&serde_json::json!({
            "flick": version,
            "firecracker_reference": flick::FIRECRACKER_REFERENCE_VERSION,
            "agent_protocol": flick::agent_protocol_version(),
        }));
    } else {
        println!("flick {version}");
        println!(
            "Firecracker API reference: v{}",
            flick::FIRECRACKER_REFERENCE_VERSION
        );
    }
    Ok(ExitCode::SUCCESS)
}
