//! flick-agent: the guest side of flick (PID 1 from the initrd, and the vsock agent).
fn main() {
    eprintln!(
        "flick-agent (protocol {}): not built yet",
        flick_proto::PROTOCOL_VERSION
    );
    std::process::exit(2);
}
