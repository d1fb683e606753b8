//! Egress by domain name: flick's per-VM resolver and its lifecycle.
//!
//! A VM whose [`super::EgressPolicy`] has `allow_domains` gets its own resolver process
//! (`flick-dns`, a small helper binary, because VMs outlive the short-lived program that
//! created them). The flow:
//!
//! 1. [`super::HostNetwork::add_vm`] (or `set_vm_policy`) starts the helper with a
//!    [`ResolverSpec`] on stdin. The helper starts its own session, binds UDP and TCP on the
//!    VM's gateway address with a free port, opens an abstract control socket (scoped to the
//!    network namespace, only the same uid may use it) and prints `READY <port>`.
//! 2. One nftables transaction installs the VM's address set `d_<hash>`, a DNAT rule that sends
//!    the VM's DNS (UDP/TCP 53 to any host address, i.e. its gateway) to that port, and the
//!    VM's egress chain: DNS and DNS-over-TLS (53, 853) to anywhere else dropped, the CIDR rules,
//!    `ip daddr @d_<hash> tcp accept`, drop.
//! 3. For each query the resolver checks the name against the allowlist (exact names and
//!    `*.suffix` wildcards, which match names *below* the suffix only). Other names get
//!    `REFUSED` (or `NXDOMAIN`, per policy). Allowed names are forwarded to the upstream
//!    resolvers; every IPv4 address in the answer goes into the set over nfnetlink, with a
//!    timeout of the answer's TTL (clamped to [`TtlLimits`]) plus a grace period, and only when
//!    the kernel has acknowledged that does the guest get the answer (with the clamped TTL).
//!    `AAAA` queries get an empty answer: egress is IPv4 only.
//! 4. A policy change on a running VM sends the new allowlist over the control socket (the
//!    resolver swaps it at once and removes set entries no allowed name still accounts for)
//!    and replaces the VM's chain in one transaction.
//! 5. With `inspect_names`, new TCP connections of the VM to resolved addresses on ports 80
//!    and 443 are redirected to the helper's proxy, which lets a connection through only when
//!    its TLS SNI / HTTP `Host` is an allowed name that resolved to that very address (see
//!    [`server`]).
//! 6. `remove_vm` / `teardown` remove the rules and the set in one transaction and stop the
//!    helper (SIGTERM, then SIGKILL). [`ResolverState`] (pid + start time) is kept in
//!    [`super::NetworkState`], so a later process stops the right one.

pub(crate) mod nfset;
pub mod server;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::firewall::{DnsRefusal, DomainPattern};
use crate::error::{Error, ErrorCode, Result};

/// The helper binary's name.
pub const HELPER_NAME: &str = "flick-dns";
/// The environment variable that names the helper binary.
pub const HELPER_ENV: &str = "FLICK_DNS_HELPER";

/// Bounds for the TTLs the resolver hands out and the lifetime of set entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtlLimits {
    /// The smallest TTL given to the guest (seconds; an upstream 0 becomes this).
    pub min: u32,
    /// The largest TTL given to the guest (seconds).
    pub max: u32,
    /// Seconds a set entry outlives the TTL the guest got (covers clock skew and a connection
    /// that starts just as the guest's cache entry expires).
    pub grace: u32,
}

impl Default for TtlLimits {
    fn default() -> Self {
        Self {
            min: 5,
            max: 3600,
            grace: 10,
        }
    }
}

impl TtlLimits {
    /// Checks `1 <= min <= max <= 1 day` and `grace <= 1 hour`.
    pub fn validate(&self) -> Result<()> {
        if self.min == 0 || self.min > self.max || self.max > 86_400 || self.grace > 3600 {
            return Err(Error::new(
                ErrorCode::InvalidFirewallConfig,
                format!(
                    "DNS TTL limits {}..{} (+{} s) are invalid: need 1 <= min <= max <= 86400 and grace <= 3600",
                    self.min, self.max, self.grace
                ),
            ));
        }
        Ok(())
    }

    /// The TTL handed to the guest for an upstream TTL.
    #[must_use]
    pub fn clamp(&self, ttl: u32) -> u32 {
        ttl.clamp(self.min, self.max)
    }
}

/// What the resolver enforces; replaced atomically by [`Control::Update`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResolverPolicy {
    /// Allowed names.
    pub domains: Vec<DomainPattern>,
    /// The answer for other names.
    pub refusal: DnsRefusal,
    /// The guest addresses that may query (anyone else gets `REFUSED`).
    pub clients: Vec<Ipv4Addr>,
    /// Whether the proxy accepts connections (TLS SNI / HTTP `Host` checked); when off it
    /// refuses every connection (nothing is redirected to it then).
    #[serde(default)]
    pub inspect_names: bool,
    /// Whether answers may carry private addresses (see [`answer_address_allowed`]).
    #[serde(default)]
    pub allow_private: bool,
    /// Networks never handed out (the VM pool: guests must not reach the host or each other
    /// through a name).
    #[serde(default)]
    pub never: Vec<ipnet::Ipv4Net>,
}

/// Whether the resolver may hand `ip` out: never loopback, unspecified (`0/8`), link-local,
/// multicast, reserved (`240/4`), broadcast or anything in `never`; private ranges
/// (`10/8`, `172.16/12`, `192.168/16`, `100.64/10`) only with `allow_private`.
#[must_use]
pub fn answer_address_allowed(ip: Ipv4Addr, allow_private: bool, never: &[ipnet::Ipv4Net]) -> bool {
    let o = ip.octets();
    let special =
        ip.is_loopback() || o[0] == 0 || ip.is_link_local() || ip.is_multicast() || o[0] >= 240;
    let private = ip.is_private() || (o[0] == 100 && (64..128).contains(&o[1]));
    !special && (allow_private || !private) && !never.iter().any(|n| n.contains(&ip))
}

impl ResolverPolicy {
    /// Whether `qname` is allowed.
    #[must_use]
    pub fn allows(&self, qname: &str) -> bool {
        self.domains.iter().any(|d| d.matches(qname))
    }
}

/// Everything the helper needs, sent as JSON on its stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolverSpec {
    /// The host address to bind (the VM's gateway).
    pub listen: Ipv4Addr,
    /// The port to bind; 0 picks a free one.
    #[serde(default)]
    pub port: u16,
    /// The nftables table (family `inet`).
    pub table: String,
    /// The set the resolver fills.
    pub set: String,
    /// The abstract control socket name.
    pub control: String,
    /// Upstream resolvers, tried in order.
    pub upstreams: Vec<SocketAddrV4>,
    /// The allowlist.
    pub policy: ResolverPolicy,
    /// TTL bounds.
    #[serde(default)]
    pub ttl: TtlLimits,
}

/// A running resolver, as recorded in [`super::NetworkState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolverState {
    /// The helper's pid.
    pub pid: u32,
    /// Its start time (field 22 of `/proc/<pid>/stat`), so a reused pid is never signalled.
    pub start_time: u64,
    /// The host address it listens on.
    pub addr: Ipv4Addr,
    /// Its UDP/TCP port.
    pub port: u16,
    /// Its name-checking proxy's TCP port (0 for a resolver without one).
    #[serde(default)]
    pub proxy_port: u16,
    /// Its abstract control socket name.
    pub control: String,
    /// The nftables set it fills.
    pub set: String,
}

/// A command on the control socket (one JSON line; the answer is `OK` or `ERROR <message>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    /// Replace the policy; set entries no allowed name accounts for any more are removed.
    Update(ResolverPolicy),
    /// Re-add every live entry to the set (after the table was replaced).
    Resync,
    /// Answer `OK`.
    Ping,
}

fn setup_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::NetworkSetupFailed, msg)
}

/// The helper binary: `explicit`, then `$FLICK_DNS_HELPER`, then next to the running
/// executable (or its parent directory, for test and bench binaries in `target/*/deps`), then
/// `PATH`.
#[must_use]
pub fn helper_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os(HELPER_ENV) {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let p = dir.join(HELPER_NAME);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(HELPER_NAME)
}

/// Parses `a.b.c.d` or `a.b.c.d:port`.
pub fn parse_upstream(text: &str) -> Result<SocketAddrV4> {
    let t = text.trim();
    if let Ok(ip) = t.parse::<Ipv4Addr>() {
        return Ok(SocketAddrV4::new(ip, 53));
    }
    t.parse::<SocketAddrV4>().map_err(|_| {
        Error::new(
            ErrorCode::InvalidFirewallConfig,
            format!("DNS upstream {text:?} is not an IPv4 address or address:port"),
        )
    })
}

/// The IPv4 `nameserver` entries of a resolv.conf text.
#[must_use]
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddrV4> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
                .map(|ip| SocketAddrV4::new(ip, 53))
        })
        .collect()
}

/// The host's upstream resolvers from `/etc/resolv.conf`.
pub fn system_upstreams() -> Result<Vec<SocketAddrV4>> {
    let path = Path::new("/etc/resolv.conf");
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(ErrorCode::NetworkSetupFailed, "read", path, e))?;
    Ok(parse_resolv_conf(&text))
}

/// Starts a resolver in the calling thread's network namespace and waits until it listens.
pub fn start(spec: &ResolverSpec, helper: &Path) -> Result<ResolverState> {
    let started = super::helper::start(
        helper,
        spec,
        "DNS resolver helper",
        ErrorCode::NetworkSetupFailed,
        Duration::from_secs(10),
    )?;
    let mut words = started.details.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(port)), Some(Ok(proxy_port))) = (words.next(), words.next()) else {
        let _ = crate::process::ProcessIdentity {
            pid: i32::try_from(started.pid).unwrap_or(i32::MAX),
            start_time: started.start_time,
        }
        .signal_group(rustix::process::Signal::KILL);
        return Err(setup_err(format!(
            "the DNS resolver helper said READY without its ports: {:?}",
            started.details
        )));
    };
    Ok(ResolverState {
        pid: started.pid,
        start_time: started.start_time,
        addr: spec.listen,
        port,
        proxy_port,
        control: spec.control.clone(),
        set: spec.set.clone(),
    })
}

/// Whether the recorded helper is still the running process.
#[must_use]
pub fn is_running(state: &ResolverState) -> bool {
    super::wireguard::start_time(state.pid) == Some(state.start_time)
}

/// Sends one control command and waits for `OK`.
pub fn control(state: &ResolverState, cmd: &Control) -> Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let err = |m: String| setup_err(format!("DNS resolver {}: {m}", state.control));
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(state.control.as_bytes())
        .map_err(|e| err(e.to_string()))?;
    let mut s = std::os::unix::net::UnixStream::connect_addr(&addr)
        .map_err(|e| err(format!("connect: {e}")))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut line = serde_json::to_vec(cmd)
        .map_err(|e| Error::new(ErrorCode::Internal, "serialize control").with_source(e))?;
    line.push(b'\n');
    s.write_all(&line).map_err(|e| err(format!("write: {e}")))?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| err(format!("read: {e}")))?;
    match answer.trim() {
        "OK" => Ok(()),
        other => Err(err(other
            .strip_prefix("ERROR ")
            .unwrap_or(if other.is_empty() { "no answer" } else { other })
            .to_owned())),
    }
}

/// Stops the helper (SIGTERM, SIGKILL after 3 s). A helper that is gone, or whose pid now
/// belongs to another process, is not signalled.
pub fn stop(state: &ResolverState) -> Result<()> {
    super::wireguard::signal_helper(state.pid, state.start_time)
}

/// The abstract control socket name for a VM's resolver (abstract names are per network
/// namespace, so names only need to be unique within one).
#[must_use]
pub fn control_name(table: &str, vm_id: &str) -> String {
    format!("flick-dns/{table}/{}", super::nft::domain_set(vm_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_parse() {
        assert_eq!(
            parse_upstream("10.0.0.1").unwrap(),
            "10.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("10.0.0.1:5353").unwrap(),
            "10.0.0.1:5353".parse().unwrap()
        );
        for bad in ["", "dns.google", "::1", "10.0.0.1:99999", "10.0.0.1:"] {
            assert_eq!(
                parse_upstream(bad).unwrap_err().code(),
                ErrorCode::InvalidFirewallConfig,
                "{bad}"
            );
        }
        let rc = "# comment\nsearch x\nnameserver 10.1.1.1\nnameserver ::1\nnameserver  10.2.2.2 \noptions ndots:1\n";
        assert_eq!(
            parse_resolv_conf(rc),
            vec![
                "10.1.1.1:53".parse().unwrap(),
                "10.2.2.2:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn ttl_limits() {
        let t = TtlLimits::default();
        t.validate().unwrap();
        assert_eq!(t.clamp(0), t.min);
        assert_eq!(t.clamp(1_000_000), t.max);
        assert_eq!(t.clamp(60), 60);
        for bad in [
            TtlLimits {
                min: 0,
                ..TtlLimits::default()
            },
            TtlLimits {
                min: 10,
                max: 5,
                grace: 0,
            },
            TtlLimits {
                grace: 7200,
                ..TtlLimits::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn answer_addresses_are_filtered() {
        let pool: Vec<ipnet::Ipv4Net> = vec!["172.30.0.0/24".parse().unwrap()];
        for (ip, public_only, with_private) in [
            ("203.0.113.10", true, true),
            ("8.8.8.8", true, true),
            ("10.1.2.3", false, true),
            ("172.16.0.1", false, true),
            ("192.168.1.1", false, true),
            ("100.64.0.1", false, true),
            ("100.128.0.1", true, true),
            ("127.0.0.1", false, false),
            ("0.0.0.0", false, false),
            ("169.254.169.254", false, false),
            ("224.0.0.1", false, false),
            ("255.255.255.255", false, false),
            ("172.30.0.1", false, false),
        ] {
            let a: Ipv4Addr = ip.parse().unwrap();
            assert_eq!(answer_address_allowed(a, false, &pool), public_only, "{ip}");
            assert_eq!(
                answer_address_allowed(a, true, &pool),
                with_private,
                "{ip} (private ok)"
            );
        }
    }

    #[test]
    fn control_round_trips() {
        for c in [
            Control::Ping,
            Control::Resync,
            Control::Update(ResolverPolicy {
                domains: vec![DomainPattern::parse("*.x.org").unwrap()],
                refusal: DnsRefusal::Nxdomain,
                clients: vec![Ipv4Addr::new(10, 0, 0, 2)],
                inspect_names: true,
                allow_private: false,
                never: vec!["172.30.0.0/24".parse().unwrap()],
            }),
        ] {
            let j = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Control>(&j).unwrap(), c);
        }
    }
}
