//! `flick-wg`: the detached helper that holds a userspace WireGuard tunnel for flick.
//!
//! Started by `flick::net::wireguard`; it reads its tunnel spec as JSON on stdin and runs until
//! SIGTERM. Not meant to be run by hand.

fn main() -> std::process::ExitCode {
    flick::net::wireguard::helper_main()
}
