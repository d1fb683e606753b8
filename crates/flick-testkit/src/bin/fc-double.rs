//! Firecracker API test double (see the crate docs). Not a VMM.
fn main() {
    eprintln!("fc-double: not built yet");
    std::process::exit(2);
}
