//! Host networking: address plan, bridge and TAPs, NAT and egress firewall, WireGuard egress.

pub mod plan;
