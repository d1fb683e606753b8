//! Firecracker API **test double** (see `flick_testkit::double`). Not a VMM: no guest runs.
use clap::Parser;

fn main() {
    let args = flick_testkit::double::cli::Args::parse();
    std::process::exit(flick_testkit::double::run(args));
}
