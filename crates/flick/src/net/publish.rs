//! Publishing guest ports on the host (`--publish HOST:GUEST`): destination NAT from the host's
//! own addresses to a VM's address.
//!
//! The forwards live in a table of their own, `ip flick_publish`, which is always replaced as a
//! whole from the complete list of forwards in one `nft` transaction ([`apply`]): the list is
//! derived from the VMs that exist, so re-applying it after a crash converges, and an empty
//! list removes the table. flick's main table accepts traffic *to* VMs and return traffic of
//! established flows, so nothing else is needed for forwarded connections.
//!
//! ```text
//! table ip flick_publish {
//!   chain prerouting { type nat hook prerouting priority dstnat; # from other hosts
//!     fib daddr type local tcp dport 8080 dnat to 172.30.0.2:80 comment "vm <id>"
//!   }
//!   chain output { type nat hook output priority -100;           # from this host's processes
//!     fib daddr type local tcp dport 8080 dnat to 172.30.0.2:80
//!   }
//! }
//! ```
//!
//! Reachable at every address of the host except loopback (`127.0.0.1` would need
//! `route_localnet` and source NAT; connect to the host's own address instead).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::NetKernel;
use crate::error::{Error, ErrorCode, Result};

/// The table holding every forward.
pub const PUBLISH_TABLE: &str = "flick_publish";

/// A transport protocol a port can be published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl PortProtocol {
    /// `tcp` or `udp`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A published port as the user writes it: `8080:80`, `8080:80/udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// Port on the host.
    pub host_port: u16,
    /// Port in the guest.
    pub guest_port: u16,
    /// Protocol.
    pub protocol: PortProtocol,
}

impl Publish {
    /// Parses `HOST:GUEST[/tcp|/udp]`.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidArgument`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("--publish {text:?}: {why} (expected HOST:GUEST, HOST:GUEST/udp)"),
            )
        };
        let (ports, protocol) = match text.split_once('/') {
            None => (text, PortProtocol::Tcp),
            Some((p, "tcp")) => (p, PortProtocol::Tcp),
            Some((p, "udp")) => (p, PortProtocol::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
        };
        let (host, guest) = ports.split_once(':').ok_or_else(|| bad("no ':'"))?;
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad("ports are 1-65535")),
            Ok(n) => Ok(n),
        };
        Ok(Self {
            host_port: port(host)?,
            guest_port: port(guest)?,
            protocol,
        })
    }
}

/// One forward: a host port to a VM's address and port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    /// The VM it belongs to (kept as the rule's comment).
    pub vm_id: String,
    /// The port.
    pub publish: Publish,
    /// The VM's address.
    pub guest_ip: Ipv4Addr,
}

/// Checks that no host port (per protocol) is published twice.
///
/// # Errors
/// [`ErrorCode::AlreadyExists`] naming the port and both VMs.
pub fn check_conflicts(forwards: &[PortForward]) -> Result<()> {
    let mut seen = std::collections::BTreeMap::new();
    for f in forwards {
        let key = (f.publish.protocol, f.publish.host_port);
        if let Some(other) = seen.insert(key, &f.vm_id) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!(
                    "host port {}/{} is already published by VM {other}",
                    f.publish.host_port,
                    f.publish.protocol.as_str()
                ),
            )
            .with_details(json!({ "port": f.publish.host_port, "vm": other })));
        }
    }
    Ok(())
}

fn rule(chain: &str, f: &PortForward) -> Value {
    json!({ "add": { "rule": {
        "family": "ip", "table": PUBLISH_TABLE, "chain": chain,
        "comment": format!("vm {}", f.vm_id),
        "expr": [
            { "match": { "op": "==", "left": { "fib": { "result": "type", "flags": ["daddr"] } }, "right": "local" } },
            { "match": { "op": "==", "left": { "payload": { "protocol": f.publish.protocol.as_str(), "field": "dport" } }, "right": f.publish.host_port } },
            { "dnat": { "addr": f.guest_ip.to_string(), "port": f.publish.guest_port } },
        ],
    } } })
}

/// The batch that makes the table hold exactly `forwards` (and removes it when empty).
#[must_use]
pub fn batch(forwards: &[PortForward]) -> Value {
    let table = json!({ "family": "ip", "name": PUBLISH_TABLE });
    // Add-then-delete works whether or not the table exists.
    let mut cmds = vec![
        json!({ "add": { "table": table } }),
        json!({ "delete": { "table": table } }),
    ];
    if !forwards.is_empty() {
        cmds.push(json!({ "add": { "table": table } }));
        for (name, hook) in [("prerouting", "prerouting"), ("output", "output")] {
            cmds.push(json!({ "add": { "chain": {
                "family": "ip", "table": PUBLISH_TABLE, "name": name,
                "type": "nat", "hook": hook, "prio": -100, "policy": "accept",
            } } }));
        }
        for f in forwards {
            cmds.push(rule("prerouting", f));
            cmds.push(rule("output", f));
        }
    }
    json!({ "nftables": cmds })
}

/// Replaces the forwards with `forwards`, in one transaction.
///
/// # Errors
/// [`ErrorCode::AlreadyExists`] for a port published twice (nothing is changed);
/// `NFT_FAILED` from nftables.
pub async fn apply<K: NetKernel>(kernel: &mut K, forwards: &[PortForward]) -> Result<()> {
    check_conflicts(forwards)?;
    kernel.apply_nft(&batch(forwards)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_and_errors() {
        assert_eq!(
            Publish::parse("8080:80").unwrap(),
            Publish {
                host_port: 8080,
                guest_port: 80,
                protocol: PortProtocol::Tcp
            }
        );
        assert_eq!(
            Publish::parse("53:5353/udp").unwrap().protocol,
            PortProtocol::Udp
        );
        for bad in ["80", "0:80", "80:70000", "a:b", "80:80/sctp", ""] {
            assert_eq!(
                Publish::parse(bad).unwrap_err().code(),
                ErrorCode::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_port_published_twice_is_refused_and_udp_is_separate() {
        let f = |vm: &str, port: u16, protocol| PortForward {
            vm_id: vm.into(),
            publish: Publish {
                host_port: port,
                guest_port: 80,
                protocol,
            },
            guest_ip: Ipv4Addr::new(172, 30, 0, 2),
        };
        assert!(
            check_conflicts(&[f("a", 80, PortProtocol::Tcp), f("b", 80, PortProtocol::Udp)])
                .is_ok()
        );
        let err = check_conflicts(&[f("a", 80, PortProtocol::Tcp), f("b", 80, PortProtocol::Tcp)])
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::AlreadyExists);
        let empty = batch(&[]);
        assert_eq!(
            empty["nftables"].as_array().unwrap().len(),
            2,
            "only add+delete"
        );
        let one = batch(&[f("a", 8080, PortProtocol::Tcp)]);
        let text = one.to_string();
        assert!(text.contains("\"dnat\"") && text.contains("8080") && text.contains("vm a"));
    }
}
