//! flick: Firecracker microVMs from Rust.
//!
//! flick does the host plumbing around [Firecracker](https://firecracker-microvm.github.io/):
//!
//! | module | what it owns |
//! |---|---|
//! | [`config`] | the user-facing VM configuration, its validation (every problem at once) and its conversion into Firecracker API payloads |
//! | [`api`] | the HTTP-over-Unix-socket client for Firecracker's API, with a typed method per endpoint, and the wire models |
//! | [`error`] | the one error type with stable [`ErrorCode`]s |
//! | [`host`] | the `Host` orchestrator: creates, lists, restores and cleans up VMs |
//! | [`vm`] | the `MicroVm` state machine (created → configuring → running ⇄ paused → stopped, or error) |
//! | [`process`] | spawning and supervising `firecracker` and `jailer` processes |
//! | [`runtime`] | per-VM runtime directories on tmpfs and drive staging without copying unallocated blocks |
//! | [`image`] | Firecracker binaries, base images, hosted manifests, the verified download cache, the initrd |
//! | [`net`] | address plan, bridge and TAPs over netlink, NAT and egress firewall in nftables, WireGuard |
//! | [`agent`] | the host side of the guest agent reached over vsock |
//! | [`store`] | persistent VM records that survive crashes of the program that made them |
//!
//! Start with [`config::VmConfig`] and [`api::FirecrackerClient`].
#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod config;
pub mod doctor;
pub mod error;
pub mod host;
pub mod image;
pub mod net;
pub mod process;
pub mod runtime;
pub mod store;
pub mod vm;

pub use error::{Error, ErrorCode, Result};
pub use host::{Host, HostOptions};
pub use vm::{MicroVm, VmState};

/// The Firecracker version flick's API models and tests are written against.
pub const FIRECRACKER_REFERENCE_VERSION: &str = "1.16.1";

/// The guest-agent protocol version this library speaks.
#[must_use]
pub fn agent_protocol_version() -> u32 {
    flick_proto::PROTOCOL_VERSION
}

/// Seconds since the Unix epoch (0 if the clock is before it): the timestamps of VM records,
/// snapshots and images.
#[must_use]
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
