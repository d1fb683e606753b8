//! Host networking: address plan, bridge and TAPs, NAT and egress firewall, WireGuard egress.
//!
//! - [`plan`]: pure address plan (subnets, leases, MACs, TAP names, boot arguments).
//! - [`firewall`]: the egress policy model and its validation.
//! - [`nft`]: the nftables JSON batches for flick's one table.
//! - [`kernel`]: the kernel touchpoints behind [`kernel::NetKernel`] (netlink, TUN ioctls,
//!   sysctl, `nft`), with a recording fake.
//! - [`host`]: [`HostNetwork`], which ties them together from setup to cleanup.
//! - [`wireguard`]: wg-quick parsing, the userspace tunnel helper, policy routing.
//! - [`dns`]: egress by domain name: the per-VM resolver helper and its lifecycle.
//!
//! Everything acts on the network namespace of the calling thread, which is how the tests run
//! it inside throwaway namespaces.

pub mod dns;
pub mod firewall;
mod helper;
pub mod host;
pub mod kernel;
pub mod nft;
pub mod plan;
pub mod publish;
pub mod tap;
pub mod wireguard;

pub use firewall::{Action, DnsRefusal, DomainPattern, EgressPolicy, EgressRule, Ports, Protocol};
pub use host::{HostNetwork, Mode, NetworkConfig, NetworkState, VmInterface, VmRequest};
pub use kernel::{NetKernel, Netlink, RecordingKernel};
pub use plan::{IpAllocator, Lease, PointToPointAllocator, Subnet};
pub use wireguard::{WgQuickConfig, WireguardConfig, WireguardMode, WireguardState};
