//! The guest side of flick.
//!
//! One static binary plays two roles:
//! - **flick-init** ([`init`]): PID 1 from the initrd. It mounts the pseudo filesystems and the
//!   root drive (with a tmpfs overlay over a read-only root), switches root, configures eth0 and
//!   the hostname, starts the agent and then either hands PID 1 to the image's init or stays PID 1.
//! - **flick-agent** ([`server`], [`session`]): serves the [`flick_proto`] protocol on AF_VSOCK
//!   (inside a VM) or on a Unix socket (tests, non-VM use).
//!
//! The code keeps to APIs that exist on both glibc and musl, and never calls NSS.

pub mod exec;
pub mod files;
pub mod init;
pub mod server;
pub mod session;
pub mod system;
pub mod users;
pub mod wire;

/// The agent's build version.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
