//! `flick-dns`: the detached helper that runs one VM's egress resolver for flick.
//!
//! Started by `flick::net::dns`; it reads its spec as JSON on stdin, answers the VM's DNS
//! queries, fills the VM's nftables address set and runs until SIGTERM. Not meant to be run by
//! hand.

fn main() -> std::process::ExitCode {
    flick::net::dns::server::helper_main()
}
