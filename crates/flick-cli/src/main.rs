//! The `flick` command.
fn main() {
    println!("flick {}", env!("CARGO_PKG_VERSION"));
}
