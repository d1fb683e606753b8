//! WireGuard egress: wg-quick parsing, the tunnel, policy routing and fail-closed.
//!
//! Two modes:
//! - **Managed**: flick brings up a WireGuard interface from wg-quick-style text. With the
//!   kernel module it creates a kernel interface (which outlives any process); without it
//!   (this is the common case on Firecracker hosts that are themselves guests) it starts the
//!   `flick-wg` helper: a small detached process (its own session, stdio closed) that runs the
//!   userspace implementation (boringtun, through `defguard_wireguard_rs`) and exposes the
//!   standard UAPI socket at `/var/run/wireguard/<if>.sock` (`wg show` works). The tunnel lives
//!   exactly as long as that process, so a short-lived CLI can exit and VMs keep their tunnel;
//!   the helper's pid and start time are kept in [`WireguardState`] so a later process stops
//!   the right one.
//! - **Existing interface**: flick routes through an interface it does not own and never
//!   deletes it.
//!
//! Routing: VM-subnet traffic looks up a dedicated table (default 51820) whose default route is
//! the WireGuard interface, behind it (with `fail_closed`) a blackhole default, so a vanished
//! tunnel never falls back to the main table, via `from <pool> lookup <table>`; VM-to-VM
//! traffic keeps the main table. Without `fail_closed` a dead tunnel falls back to the uplink.
//! With `fail_closed`, flick's nftables forward chain also drops VM traffic leaving through any
//! other interface. Host traffic keeps the normal default route. Cleanup removes only the routes,
//! rules, nftables objects and interfaces flick created.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::host::HostNetwork;
use super::kernel::{NetKernel, PolicyRule};
use super::nft::WireguardEgress;
use super::plan;
use crate::error::{Error, ErrorCode, Result};

/// The routing table used when the caller does not pick one.
pub const DEFAULT_TABLE: u32 = 51820;
/// The priority of flick's policy rules when the caller does not pick one.
pub const DEFAULT_RULE_PRIORITY: u32 = 10_000;
/// The managed interface name used when the caller does not pick one.
pub const DEFAULT_INTERFACE: &str = "flwg0";
/// The helper binary's file name.
pub const HELPER_NAME: &str = "flick-wg";
/// Environment variable naming the helper binary.
pub const HELPER_ENV: &str = "FLICK_WG_HELPER";
/// The main routing table.
const MAIN_TABLE: u32 = 254;
/// The metric of the blackhole default behind the tunnel route.
const BLACKHOLE_METRIC: u32 = 4_000_000;

/// `[Interface]` of a wg-quick file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgInterface {
    /// Base64 private key.
    pub private_key: String,
    /// Tunnel addresses.
    pub addresses: Vec<Ipv4Net>,
    /// MTU.
    pub mtu: Option<u32>,
    /// UDP listen port.
    pub listen_port: Option<u16>,
}

impl std::fmt::Debug for WgInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgInterface")
            .field("private_key", &"<redacted>")
            .field("addresses", &self.addresses)
            .field("mtu", &self.mtu)
            .field("listen_port", &self.listen_port)
            .finish()
    }
}

/// `[Peer]` of a wg-quick file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgPeer {
    /// Base64 public key.
    pub public_key: String,
    /// Base64 preshared key.
    pub preshared_key: Option<String>,
    /// Allowed source/destination networks.
    pub allowed_ips: Vec<Ipv4Net>,
    /// `host:port` as written.
    pub endpoint: Option<String>,
    /// Keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
}

impl std::fmt::Debug for WgPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgPeer")
            .field("public_key", &self.public_key)
            .field(
                "preshared_key",
                &self.preshared_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allowed_ips", &self.allowed_ips)
            .field("endpoint", &self.endpoint)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .finish()
    }
}

/// A parsed wg-quick configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgQuickConfig {
    /// The interface section.
    pub interface: WgInterface,
    /// The peers.
    pub peers: Vec<WgPeer>,
    /// Keys that were ignored (DNS, Table), one message each.
    pub warnings: Vec<String>,
}

fn bad(line: usize, msg: impl Into<String>) -> Error {
    let msg = msg.into();
    Error::new(
        ErrorCode::InvalidWireguardConfig,
        if line == 0 {
            msg.clone()
        } else {
            format!("line {line}: {msg}")
        },
    )
    .with_details(json!({ "line": line, "message": msg }))
}

fn check_key(line: usize, what: &str, v: &str) -> Result<String> {
    defguard_wireguard_rs::key::Key::from_str(v)
        .map_err(|_| bad(line, format!("{what} is not a base64 WireGuard key")))?;
    Ok(v.to_owned())
}

fn parse_nets(line: usize, key: &str, v: &str) -> Result<Vec<Ipv4Net>> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.contains(':') {
            return Err(bad(
                line,
                format!("{key} {part}: IPv6 is not supported yet"),
            ));
        }
        let net = if part.contains('/') {
            Ipv4Net::from_str(part).ok()
        } else {
            Ipv4Addr::from_str(part).ok().map(Ipv4Net::from)
        }
        .ok_or_else(|| {
            bad(
                line,
                format!("{key} {part:?} is not an IPv4 address or CIDR"),
            )
        })?;
        out.push(net);
    }
    if out.is_empty() {
        return Err(bad(line, format!("{key} is empty")));
    }
    Ok(out)
}

impl WgQuickConfig {
    /// Parses wg-quick text. Hook keys (PreUp, PostUp, PreDown, PostDown) and SaveConfig are
    /// rejected, DNS and Table are ignored with a warning, IPv6 is rejected, unknown keys are
    /// rejected. All errors are [`ErrorCode::InvalidWireguardConfig`].
    pub fn parse(text: &str) -> Result<Self> {
        #[derive(PartialEq)]
        enum Section {
            None,
            Interface,
            Peer,
        }
        let mut section = Section::None;
        let mut seen_interface = false;
        let mut private_key = None;
        let mut addresses = Vec::new();
        let mut mtu = None;
        let mut listen_port = None;
        let mut peers: Vec<WgPeer> = Vec::new();
        let mut warnings = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                match line.to_ascii_lowercase().as_str() {
                    "[interface]" => {
                        if seen_interface {
                            return Err(bad(n, "a second [Interface] section"));
                        }
                        seen_interface = true;
                        section = Section::Interface;
                    }
                    "[peer]" => {
                        section = Section::Peer;
                        peers.push(WgPeer {
                            public_key: String::new(),
                            preshared_key: None,
                            allowed_ips: Vec::new(),
                            endpoint: None,
                            persistent_keepalive: None,
                        });
                    }
                    _ => return Err(bad(n, format!("unknown section {line}"))),
                }
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(bad(n, "expected `Key = Value`"));
            };
            let key = k.trim();
            let v = v.trim();
            let lk = key.to_ascii_lowercase();
            match (&section, lk.as_str()) {
                (Section::None, _) => return Err(bad(n, format!("{key} outside a section"))),
                (_, "preup" | "postup" | "predown" | "postdown") => {
                    return Err(bad(
                        n,
                        format!("{key} runs shell commands and is not accepted"),
                    ));
                }
                (_, "saveconfig") => {
                    return Err(bad(
                        n,
                        "SaveConfig is not accepted (flick never writes the file back)",
                    ));
                }
                (Section::Interface, "dns" | "table") => {
                    warnings.push(format!("line {n}: {key} is ignored"));
                }
                (Section::Interface, "privatekey") => {
                    private_key = Some(check_key(n, "PrivateKey", v)?);
                }
                (Section::Interface, "address") => addresses.extend(parse_nets(n, key, v)?),
                (Section::Interface, "mtu") => {
                    let m: u32 = v
                        .parse()
                        .ok()
                        .filter(|m| (576..=9000).contains(m))
                        .ok_or_else(|| bad(n, format!("MTU {v:?} is not between 576 and 9000")))?;
                    mtu = Some(m);
                }
                (Section::Interface, "listenport") => {
                    listen_port = Some(
                        v.parse::<u16>()
                            .map_err(|_| bad(n, format!("ListenPort {v:?} is not 0–65535")))?,
                    );
                }
                (Section::Peer, "publickey") => {
                    peers.last_mut().expect("in a peer").public_key = check_key(n, "PublicKey", v)?;
                }
                (Section::Peer, "presharedkey") => {
                    peers.last_mut().expect("in a peer").preshared_key =
                        Some(check_key(n, "PresharedKey", v)?);
                }
                (Section::Peer, "allowedips") => {
                    peers
                        .last_mut()
                        .expect("in a peer")
                        .allowed_ips
                        .extend(parse_nets(n, key, v)?);
                }
                (Section::Peer, "endpoint") => {
                    let (host, port) = v
                        .rsplit_once(':')
                        .ok_or_else(|| bad(n, format!("Endpoint {v:?} is not host:port")))?;
                    if host.starts_with('[') || host.contains(':') {
                        return Err(bad(n, format!("Endpoint {v}: IPv6 is not supported yet")));
                    }
                    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                        return Err(bad(n, format!("Endpoint {v:?} is not host:port")));
                    }
                    peers.last_mut().expect("in a peer").endpoint = Some(v.to_owned());
                }
                (Section::Peer, "persistentkeepalive") => {
                    let k = if v.eq_ignore_ascii_case("off") {
                        None
                    } else {
                        Some(v.parse::<u16>().map_err(|_| {
                            bad(
                                n,
                                format!("PersistentKeepalive {v:?} is not off or 0–65535"),
                            )
                        })?)
                    };
                    peers.last_mut().expect("in a peer").persistent_keepalive =
                        k.filter(|s| *s > 0);
                }
                _ => return Err(bad(n, format!("unknown key {key}"))),
            }
        }
        if !seen_interface {
            return Err(bad(0, "no [Interface] section"));
        }
        let private_key = private_key.ok_or_else(|| bad(0, "[Interface] has no PrivateKey"))?;
        if addresses.is_empty() {
            return Err(bad(0, "[Interface] has no Address"));
        }
        if peers.is_empty() {
            return Err(bad(0, "no [Peer] section"));
        }
        for (i, p) in peers.iter().enumerate() {
            if p.public_key.is_empty() {
                return Err(bad(0, format!("peer {} has no PublicKey", i + 1)));
            }
            if p.allowed_ips.is_empty() {
                return Err(bad(0, format!("peer {} has no AllowedIPs", i + 1)));
            }
        }
        Ok(Self {
            interface: WgInterface {
                private_key,
                addresses,
                mtu,
                listen_port,
            },
            peers,
            warnings,
        })
    }
}

/// Where WireGuard egress comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WireguardMode {
    /// flick brings the tunnel up from wg-quick text.
    Managed {
        /// The wg-quick text.
        config: String,
        /// The interface name (default `flwg0`).
        #[serde(default)]
        interface: Option<String>,
    },
    /// Route through an interface flick does not own (and never deletes).
    Existing {
        /// The interface.
        interface: String,
    },
}

/// WireGuard egress settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireguardConfig {
    /// Managed or existing interface.
    pub mode: WireguardMode,
    /// The routing table for VM traffic.
    #[serde(default = "default_table")]
    pub table: u32,
    /// The priority of flick's `ip rule`s.
    #[serde(default = "default_priority")]
    pub rule_priority: u32,
    /// Route all VM traffic through the tunnel (otherwise only the peers' AllowedIPs).
    #[serde(default = "yes")]
    pub route_all_vm_traffic: bool,
    /// Drop forwarded VM traffic toward any other egress interface.
    #[serde(default = "yes")]
    pub fail_closed: bool,
    /// The helper binary (default: `$FLICK_WG_HELPER`, then `flick-wg` next to the running
    /// executable, then on `PATH`).
    #[serde(default)]
    pub helper: Option<PathBuf>,
    /// Which implementation runs a managed tunnel.
    #[serde(default)]
    pub backend: BackendChoice,
}

/// Which WireGuard implementation a managed tunnel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// The kernel module when the kernel has it, otherwise the userspace helper.
    #[default]
    Auto,
    /// Only the kernel module.
    Kernel,
    /// Only the userspace helper.
    Userspace,
}

fn default_table() -> u32 {
    DEFAULT_TABLE
}
fn default_priority() -> u32 {
    DEFAULT_RULE_PRIORITY
}
fn yes() -> bool {
    true
}

impl WireguardConfig {
    /// Managed mode from wg-quick text with every default.
    #[must_use]
    pub fn managed(text: &str) -> Self {
        Self {
            mode: WireguardMode::Managed {
                config: text.to_owned(),
                interface: None,
            },
            table: DEFAULT_TABLE,
            rule_priority: DEFAULT_RULE_PRIORITY,
            route_all_vm_traffic: true,
            fail_closed: true,
            helper: None,
            backend: BackendChoice::Auto,
        }
    }
}

/// How a managed tunnel runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelBackend {
    /// A kernel WireGuard interface (deleted on cleanup).
    Kernel,
    /// A `flick-wg` helper process.
    Userspace {
        /// Its pid.
        pid: u32,
        /// Its start time (field 22 of `/proc/<pid>/stat`), so a reused pid is never killed.
        start_time: u64,
    },
}

/// What flick set up for WireGuard egress (persisted with [`super::NetworkState`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardState {
    /// The interface traffic leaves through.
    pub interface: String,
    /// `Some` when flick created the tunnel.
    pub managed: Option<TunnelBackend>,
    /// The routing table.
    pub table: u32,
    /// The rule priority.
    pub rule_priority: u32,
    /// Whether all VM traffic is routed through the tunnel.
    pub route_all_vm_traffic: bool,
    /// Whether other egress is dropped.
    pub fail_closed: bool,
    /// Networks routed through the tunnel in `table` (`0.0.0.0/0` when routing all).
    pub routed: Vec<Ipv4Net>,
    /// Warnings from parsing.
    pub warnings: Vec<String>,
}

impl WireguardState {
    /// The nftables view of this state.
    #[must_use]
    pub fn egress(&self) -> WireguardEgress {
        WireguardEgress {
            interface: self.interface.clone(),
            fail_closed: self.fail_closed && self.route_all_vm_traffic,
        }
    }
}

/// What the helper reads on stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelSpec {
    /// Interface name.
    pub interface: String,
    /// The parsed config.
    pub config: WgQuickConfig,
    /// Resolved peer endpoints, in peer order.
    pub endpoints: Vec<Option<SocketAddrV4>>,
}

fn setup_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::WireguardSetupFailed, msg)
}

fn resolve_endpoints(cfg: &WgQuickConfig) -> Result<Vec<Option<SocketAddrV4>>> {
    cfg.peers
        .iter()
        .map(|p| {
            let Some(ep) = &p.endpoint else {
                return Ok(None);
            };
            let addrs = ep
                .to_socket_addrs()
                .map_err(|e| setup_err(format!("resolve endpoint {ep}")).with_source(e))?;
            addrs
                .into_iter()
                .find_map(|a| match a {
                    SocketAddr::V4(v4) => Some(v4),
                    SocketAddr::V6(_) => None,
                })
                .map(Some)
                .ok_or_else(|| setup_err(format!("endpoint {ep} has no IPv4 address")))
        })
        .collect()
}

fn interface_config(spec: &TunnelSpec) -> Result<defguard_wireguard_rs::InterfaceConfiguration> {
    use defguard_wireguard_rs::{key::Key, net::IpAddrMask, peer::Peer};
    let key = |k: &str| Key::from_str(k).map_err(|_| setup_err("a key is not valid base64"));
    let mut peers = Vec::new();
    for (p, ep) in spec.config.peers.iter().zip(&spec.endpoints) {
        let mut peer = Peer::new(key(&p.public_key)?);
        peer.preshared_key = p.preshared_key.as_deref().map(key).transpose()?;
        peer.endpoint = ep.map(SocketAddr::V4);
        peer.persistent_keepalive_interval = p.persistent_keepalive;
        peer.allowed_ips = p
            .allowed_ips
            .iter()
            .map(|n| IpAddrMask::new(IpAddr::V4(n.network()), n.prefix_len()))
            .collect();
        peers.push(peer);
    }
    Ok(defguard_wireguard_rs::InterfaceConfiguration {
        name: spec.interface.clone(),
        prvkey: spec.config.interface.private_key.clone(),
        addresses: spec
            .config
            .interface
            .addresses
            .iter()
            .map(|n| IpAddrMask::new(IpAddr::V4(n.addr()), n.prefix_len()))
            .collect(),
        port: spec.config.interface.listen_port.unwrap_or(0),
        peers,
        mtu: spec.config.interface.mtu,
        fwmark: None,
    })
}

/// The `flick-wg` helper's entry point: detaches into its own session, reads a [`TunnelSpec`]
/// as JSON on stdin, brings the userspace tunnel up, prints `READY` (or `ERROR <message>`) on
/// stdout, then holds the tunnel until SIGTERM, SIGINT or SIGKILL ends the process (the kernel
/// then removes the TUN device; [`stop_userspace_tunnel`] removes the UAPI socket file).
#[must_use]
pub fn helper_main() -> ExitCode {
    use defguard_wireguard_rs::{Userspace, WGApi, WireguardInterfaceApi};
    // Every exit goes through process::exit: the tunnel's destructors may block on worker
    // threads, while exiting lets the kernel close the TUN device and sockets at once.
    let fail = |msg: String| -> ExitCode {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "ERROR {msg}");
        let _ = out.flush();
        std::process::exit(1)
    };
    // A new session (and process group) first: no controlling terminal, and signals sent to
    // the CLI's process group or terminal never reach the tunnel.
    if let Err(e) = rustix::process::setsid() {
        return fail(format!("setsid: {e}"));
    }
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        return fail(format!("read stdin: {e}"));
    }
    let spec: TunnelSpec = match serde_json::from_str(&input) {
        Ok(s) => s,
        Err(e) => return fail(format!("bad spec: {e}")),
    };
    // SIGTERM and SIGINT get their default action: the process dies and the kernel removes the
    // TUN device with it, so stopping never depends on this process cooperating. Ignored
    // dispositions and blocked masks are inherited across exec (a shell's background jobs
    // ignore SIGINT, for example), so reset both before any thread exists. Without a
    // controlling terminal no SIGHUP is expected; ignore it anyway.
    // SAFETY: only default/ignore dispositions are installed (no handler code runs), and `set`
    // is a local sigset_t initialised by sigemptyset before it is passed to pthread_sigmask.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    let config = match interface_config(&spec) {
        Ok(c) => c,
        Err(e) => return fail(e.chain()),
    };
    let mut api = match WGApi::<Userspace>::new(spec.interface.clone()) {
        Ok(a) => a,
        Err(e) => return fail(format!("init: {e}")),
    };
    if let Err(e) = api.create_interface() {
        return fail(format!("create interface: {e}"));
    }
    if let Err(e) = api.configure_interface(&config) {
        let _ = std::fs::remove_file(uapi_socket(&spec.interface));
        return fail(format!("configure interface: {e}"));
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "READY");
    let _ = out.flush();
    // The userspace device blocks SIGINT/SIGTERM to read them from a signalfd (it then only
    // stops its worker threads). Unblock them in this thread: a process-directed signal goes to
    // a thread that does not block it, so the default action ends the whole process.
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before use; only this
    // thread's mask changes.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    // Hold the tunnel (its worker threads run) until a signal ends the process.
    loop {
        std::thread::park();
    }
}

/// The UAPI socket of a userspace tunnel.
#[must_use]
pub fn uapi_socket(interface: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/wireguard/{interface}.sock"))
}

fn helper_path(cfg: &WireguardConfig) -> Result<PathBuf> {
    if let Some(p) = &cfg.helper {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os(HELPER_ENV) {
        return Ok(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let p = dir.join(HELPER_NAME);
        if p.is_file() {
            return Ok(p);
        }
    }
    Ok(PathBuf::from(HELPER_NAME))
}

pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are space separated.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Starts a userspace tunnel through the helper and waits until it reports ready. The helper
/// is created in the calling thread's network namespace.
pub fn start_userspace_tunnel(spec: &TunnelSpec, helper: &Path) -> Result<TunnelBackend> {
    let started = super::helper::start(
        helper,
        spec,
        "WireGuard helper",
        ErrorCode::WireguardSetupFailed,
        Duration::from_secs(15),
    )?;
    Ok(TunnelBackend::Userspace {
        pid: started.pid,
        start_time: started.start_time,
    })
}

/// Creates and configures a kernel WireGuard interface in the calling thread's namespace.
/// Fails (leaving nothing) when the kernel has no WireGuard.
pub fn start_kernel_tunnel(spec: &TunnelSpec) -> Result<()> {
    use defguard_wireguard_rs::{Kernel, WGApi, WireguardInterfaceApi};
    let config = interface_config(spec)?;
    let mut api = WGApi::<Kernel>::new(spec.interface.clone())
        .map_err(|e| setup_err("kernel WireGuard").with_source(e))?;
    api.create_interface()
        .map_err(|e| setup_err("kernel WireGuard is not available").with_source(e))?;
    if let Err(e) = api.configure_interface(&config) {
        let _ = api.remove_interface();
        return Err(setup_err("configure the kernel WireGuard interface").with_source(e));
    }
    Ok(())
}

/// Stops the userspace tunnel helper of `interface` (SIGTERM, then SIGKILL after 3 s) and
/// removes its UAPI socket file. A helper that is already gone (or whose pid was reused) is not
/// signalled.
pub fn stop_userspace_tunnel(interface: &str, pid: u32, start: u64) -> Result<()> {
    let r = signal_helper(pid, start);
    let _ = std::fs::remove_file(uapi_socket(interface));
    r
}

pub(crate) fn signal_helper(pid: u32, start: u64) -> Result<()> {
    if start_time(pid) != Some(start) {
        reap(pid);
        return Ok(());
    }
    let p = rustix::process::Pid::from_raw(pid.cast_signed()).ok_or_else(|| setup_err("pid 0"))?;
    let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if start_time(pid) != Some(start) {
            reap(pid);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    std::thread::sleep(Duration::from_millis(50));
    reap(pid);
    Ok(())
}

/// Reaps the helper if it is this process's own child (otherwise its parent or init does).
/// Returns whether it is gone for good (reaped, or not our child).
fn try_reap(pid: u32) -> bool {
    // SAFETY: waitpid with WNOHANG on a specific pid and a null status pointer has no memory
    // effects on this process.
    let r = unsafe { libc::waitpid(pid.cast_signed(), std::ptr::null_mut(), libc::WNOHANG) };
    r == pid.cast_signed() || r < 0
}

/// Waits briefly for a dying child helper so it does not linger as a zombie.
fn reap(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !try_reap(pid) && Instant::now() < deadline {
        if start_time(pid).is_some() {
            // still running (not ours to wait for any longer)
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn validate(cfg: &WireguardConfig) -> Result<(String, Option<WgQuickConfig>)> {
    if cfg.table == 0 || cfg.table == 253 || cfg.table == 254 || cfg.table == 255 {
        return Err(bad(0, format!("table {} is reserved", cfg.table)));
    }
    if cfg.rule_priority == 0 || cfg.rule_priority >= 32766 {
        return Err(bad(0, "rule_priority must be between 1 and 32765"));
    }
    match &cfg.mode {
        WireguardMode::Managed { config, interface } => {
            let name = interface
                .clone()
                .unwrap_or_else(|| DEFAULT_INTERFACE.into());
            plan::validate_interface_name(&name)?;
            Ok((name, Some(WgQuickConfig::parse(config)?)))
        }
        WireguardMode::Existing { interface } => {
            plan::validate_interface_name(interface)?;
            Ok((interface.clone(), None))
        }
    }
}

/// Turns WireGuard egress on for a [`HostNetwork`]: tunnel (managed mode), routes and rules,
/// then the nftables table (masquerade out of the tunnel, fail-closed). A failure undoes every
/// step and is [`ErrorCode::WireguardSetupFailed`]; bad configuration is
/// [`ErrorCode::InvalidWireguardConfig`] with nothing changed.
pub async fn enable<K: NetKernel>(
    net: &mut HostNetwork<K>,
    cfg: &WireguardConfig,
) -> Result<Vec<String>> {
    let (name, parsed) = validate(cfg)?;
    if net.state().wireguard.is_some() {
        return Err(Error::new(
            ErrorCode::InvalidState,
            "WireGuard egress is already enabled",
        ));
    }
    if let Some((vm, _)) = net.state().vms.iter().find(|(_, v)| v.policy.inspect_names) {
        // The name-checking proxy connects from the host itself, outside the VM routing
        // through the tunnel: it would bypass it.
        return Err(Error::new(
            ErrorCode::InvalidState,
            format!("VM {vm} uses inspect_names, which does not go through WireGuard egress"),
        ));
    }
    let routed: Vec<Ipv4Net> = if cfg.route_all_vm_traffic {
        vec![Ipv4Net::default()]
    } else {
        match &parsed {
            Some(p) => p.peers.iter().flat_map(|p| p.allowed_ips.clone()).collect(),
            None => {
                return Err(bad(
                    0,
                    "route_all_vm_traffic = false needs a managed config (its AllowedIPs)",
                ));
            }
        }
    };
    let mut state = WireguardState {
        interface: name.clone(),
        managed: None,
        table: cfg.table,
        rule_priority: cfg.rule_priority,
        route_all_vm_traffic: cfg.route_all_vm_traffic,
        fail_closed: cfg.fail_closed,
        routed,
        warnings: parsed
            .as_ref()
            .map(|p| p.warnings.clone())
            .unwrap_or_default(),
    };
    if let Some(p) = &parsed {
        let (kernel, _) = net.kernel_and_state();
        if kernel.link_index(&name).await?.is_some() {
            return Err(setup_err(format!("interface {name} exists already")));
        }
        let spec = TunnelSpec {
            interface: name.clone(),
            endpoints: resolve_endpoints(p)?,
            config: p.clone(),
        };
        let kernel_attempt = match cfg.backend {
            BackendChoice::Userspace => None,
            BackendChoice::Auto | BackendChoice::Kernel => Some(start_kernel_tunnel(&spec)),
        };
        state.managed = Some(match (kernel_attempt, cfg.backend) {
            (Some(Ok(())), _) => TunnelBackend::Kernel,
            (Some(Err(e)), BackendChoice::Kernel) => return Err(e),
            _ => start_userspace_tunnel(&spec, &helper_path(cfg)?)?,
        });
    }
    let warnings = state.warnings.clone();
    let result = install(net, &mut state).await;
    match result {
        Ok(()) => {
            net.kernel_and_state().1.wireguard = Some(state.clone());
            if let Err(e) = net.apply_full().await {
                net.kernel_and_state().1.wireguard = None;
                let _ = remove(net, &state).await;
                let _ = net.apply_full().await;
                return Err(setup_err("install WireGuard firewall rules").with_source(e));
            }
            Ok(warnings)
        }
        Err(e) => {
            let _ = remove(net, &state).await;
            Err(if e.code() == ErrorCode::WireguardSetupFailed {
                e
            } else {
                setup_err("WireGuard routing").with_source(e)
            })
        }
    }
}

fn rules(pool: Ipv4Net, st: &WireguardState) -> [PolicyRule; 2] {
    [
        // VM-to-VM and VM-to-host traffic keeps the main table.
        PolicyRule {
            from: pool,
            to: Some(pool),
            table: MAIN_TABLE,
            priority: st.rule_priority - 1,
        },
        PolicyRule {
            from: pool,
            to: None,
            table: st.table,
            priority: st.rule_priority,
        },
    ]
}

async fn install<K: NetKernel>(net: &mut HostNetwork<K>, st: &mut WireguardState) -> Result<()> {
    let pool = net.subnet().net();
    let (kernel, _) = net.kernel_and_state();
    let index = kernel
        .link_index(&st.interface)
        .await?
        .ok_or_else(|| setup_err(format!("interface {} does not exist", st.interface)))?;
    kernel.set_up(index).await?;
    for dst in &st.routed {
        kernel.add_route(st.table, *dst, Some(index), 0).await?;
    }
    if st.route_all_vm_traffic && st.fail_closed {
        // If the tunnel route vanishes (interface gone), VM traffic hits this instead of
        // falling through to the main table and its uplink.
        kernel
            .add_route(st.table, Ipv4Net::default(), None, BLACKHOLE_METRIC)
            .await?;
    }
    for r in rules(pool, st) {
        kernel.add_rule(&r).await?;
    }
    Ok(())
}

async fn remove<K: NetKernel>(net: &mut HostNetwork<K>, st: &WireguardState) -> Result<()> {
    let pool = net.subnet().net();
    let (kernel, _) = net.kernel_and_state();
    let mut first: Option<Error> = None;
    let mut keep = |r: Result<()>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };
    for r in rules(pool, st).iter().rev() {
        keep(kernel.del_rule(r).await);
    }
    keep(
        kernel
            .del_route(st.table, Ipv4Net::default(), None, BLACKHOLE_METRIC)
            .await,
    );
    let index = kernel.link_index(&st.interface).await.ok().flatten();
    if let Some(i) = index {
        for dst in &st.routed {
            keep(kernel.del_route(st.table, *dst, Some(i), 0).await);
        }
    }
    match &st.managed {
        Some(TunnelBackend::Userspace { pid, start_time }) => {
            keep(stop_userspace_tunnel(&st.interface, *pid, *start_time));
        }
        Some(TunnelBackend::Kernel) => {
            if let Some(i) = index {
                keep(kernel.delete_link(i).await);
            }
        }
        None => {}
    }
    first.map_or(Ok(()), Err)
}

/// Turns WireGuard egress off: removes flick's rules and routes, stops a managed tunnel and
/// re-applies the table without the WireGuard parts. An existing interface is left alone.
pub async fn disable<K: NetKernel>(net: &mut HostNetwork<K>) -> Result<()> {
    let Some(st) = net.state().wireguard.clone() else {
        return Ok(());
    };
    let r = remove(net, &st).await;
    net.kernel_and_state().1.wireguard = None;
    let nft = net.apply_full().await;
    r.and(nft)
        .map_err(|e| Error::new(ErrorCode::CleanupFailed, "WireGuard cleanup").with_source(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "YAnz3FEiHvZLwUsc7bJDTBCtHvaMXX7Rc/v/Le9WvV8=";
    const PUB: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn good() -> String {
        format!(
            "# comment\n[Interface]\nPrivateKey = {KEY}\nAddress = 10.99.0.2/32\nMTU = 1420\nListenPort = 51821\nDNS = 1.1.1.1\n\n[Peer]\nPublicKey = {PUB}\nPresharedKey = {KEY}\nAllowedIPs = 0.0.0.0/0, 10.0.0.0/8\nEndpoint = 198.51.100.2:51820\nPersistentKeepalive = 25\n"
        )
    }

    #[test]
    fn parses_every_key() {
        let c = WgQuickConfig::parse(&good()).unwrap();
        assert_eq!(c.interface.addresses[0].to_string(), "10.99.0.2/32");
        assert_eq!(c.interface.mtu, Some(1420));
        assert_eq!(c.interface.listen_port, Some(51821));
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].allowed_ips.len(), 2);
        assert_eq!(c.peers[0].persistent_keepalive, Some(25));
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("DNS"));
        assert!(
            !format!("{c:?}").contains(KEY),
            "keys are redacted in Debug"
        );
    }

    #[test]
    fn rejects_bad_configs() {
        let g = good();
        let cases = [
            g.replace("[Interface]", "[Interface]\nPostUp = iptables -F"),
            g.replace("[Interface]", "[Interface]\nPreUp = x"),
            g.replace("[Interface]", "[Interface]\nPreDown = x"),
            g.replace("[Interface]", "[Interface]\npostdown = x"),
            g.replace("[Interface]", "[Interface]\nSaveConfig = true"),
            g.replace("10.99.0.2/32", "fd00::2/128"),
            g.replace("0.0.0.0/0, 10.0.0.0/8", "::/0"),
            g.replace("198.51.100.2:51820", "[fd00::1]:51820"),
            g.replace("198.51.100.2:51820", "198.51.100.2"),
            g.replace("198.51.100.2:51820", "198.51.100.2:0"),
            g.replace(&format!("PrivateKey = {KEY}"), "PrivateKey = nope"),
            g.replace(&format!("PublicKey = {PUB}"), "PublicKey = AAAA"),
            g.replace(&format!("PrivateKey = {KEY}\n"), ""),
            g.replace("Address = 10.99.0.2/32\n", ""),
            g.replace("MTU = 1420", "MTU = 10"),
            g.replace("ListenPort = 51821", "ListenPort = 70000"),
            g.replace("PersistentKeepalive = 25", "PersistentKeepalive = soon"),
            g.replace("FwMark", "x")
                .replace("[Interface]", "[Interface]\nFwMark = 1"),
            g.replace("[Peer]", "[Pear]"),
            g.replace("Address = 10.99.0.2/32", "Address 10.99.0.2/32"),
            g.replace("Address = 10.99.0.2/32", "Address = 10.99.0.300/32"),
            g.split("[Peer]").next().unwrap().to_owned(),
            g.replace("AllowedIPs = 0.0.0.0/0, 10.0.0.0/8\n", ""),
            format!("PrivateKey = {KEY}\n{g}"),
            format!("{g}\n[Interface]\nPrivateKey = {KEY}\n"),
            String::new(),
        ];
        for (i, c) in cases.iter().enumerate() {
            let e = WgQuickConfig::parse(c).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidWireguardConfig, "case {i}: {c}");
        }
        let e = WgQuickConfig::parse(&cases[0]).unwrap_err();
        assert!(e.message().contains("PostUp"), "{}", e.message());
        assert!(
            WgQuickConfig::parse(&cases[5])
                .unwrap_err()
                .message()
                .contains("IPv6")
        );
    }

    #[test]
    fn table_is_ignored_with_warning() {
        let c = WgQuickConfig::parse(&good().replace("DNS = 1.1.1.1", "Table = off")).unwrap();
        assert!(c.warnings[0].contains("Table"));
    }

    #[test]
    fn existing_interface_routing_calls_and_cleanup() {
        use crate::net::host::{HostNetwork, NetworkConfig};
        use crate::net::kernel::{Call, RecordingKernel};
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut k = RecordingKernel::with_uplink("eth0");
            k.links.insert("wg7".into(), 7);
            let mut net = HostNetwork::setup(k, NetworkConfig::default())
                .await
                .unwrap();
            let cfg = WireguardConfig {
                mode: WireguardMode::Existing {
                    interface: "wg7".into(),
                },
                ..WireguardConfig::managed("")
            };
            enable(&mut net, &cfg).await.unwrap();
            let pool: Ipv4Net = "172.30.0.0/24".parse().unwrap();
            let calls = net.kernel_mut().calls.clone();
            let any: Ipv4Net = Ipv4Net::default();
            assert!(calls.contains(&Call::AddRoute(DEFAULT_TABLE, any, Some("wg7".into()))));
            assert!(
                calls.contains(&Call::AddRoute(DEFAULT_TABLE, any, None)),
                "blackhole"
            );
            let main_rule = PolicyRule {
                from: pool,
                to: Some(pool),
                table: MAIN_TABLE,
                priority: DEFAULT_RULE_PRIORITY - 1,
            };
            let wg_rule = PolicyRule {
                from: pool,
                to: None,
                table: DEFAULT_TABLE,
                priority: DEFAULT_RULE_PRIORITY,
            };
            assert!(calls.contains(&Call::AddRule(main_rule)));
            assert!(calls.contains(&Call::AddRule(wg_rule)));
            let last_nft = calls.iter().rev().find_map(|c| match c {
                Call::Nft(v) => Some(v.to_string()),
                _ => None,
            });
            assert!(last_nft.unwrap().contains("wireguard fail closed"));
            assert_eq!(
                enable(&mut net, &cfg).await.unwrap_err().code(),
                ErrorCode::InvalidState
            );
            disable(&mut net).await.unwrap();
            let calls = net.kernel_mut().calls.clone();
            assert!(calls.contains(&Call::DelRule(wg_rule)));
            assert!(calls.contains(&Call::DelRule(main_rule)));
            assert!(calls.contains(&Call::DelRoute(DEFAULT_TABLE, any, Some("wg7".into()))));
            assert!(
                !calls.contains(&Call::DeleteLink("wg7".into())),
                "never deleted"
            );
            assert!(net.state().wireguard.is_none());
            let last_nft = calls.iter().rev().find_map(|c| match c {
                Call::Nft(v) => Some(v.to_string()),
                _ => None,
            });
            assert!(!last_nft.unwrap().contains("wireguard"));
        });
    }

    #[test]
    fn routing_failure_rolls_back() {
        use crate::net::host::{HostNetwork, NetworkConfig};
        use crate::net::kernel::{Call, RecordingKernel};
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut k = RecordingKernel::with_uplink("eth0");
            k.links.insert("wg7".into(), 7);
            let mut net = HostNetwork::setup(k, NetworkConfig::default())
                .await
                .unwrap();
            net.kernel_mut().fail_on = Some("AddRule".into());
            let cfg = WireguardConfig {
                mode: WireguardMode::Existing {
                    interface: "wg7".into(),
                },
                ..WireguardConfig::managed("")
            };
            let e = enable(&mut net, &cfg).await.unwrap_err();
            assert_eq!(e.code(), ErrorCode::WireguardSetupFailed);
            assert!(net.state().wireguard.is_none());
            let calls = net.kernel_mut().calls.clone();
            let any = Ipv4Net::default();
            assert!(calls.contains(&Call::DelRoute(DEFAULT_TABLE, any, Some("wg7".into()))));
            assert!(calls.contains(&Call::DelRoute(DEFAULT_TABLE, any, None)));
        });
    }

    #[test]
    fn firewall_failure_rolls_back_routing() {
        use crate::net::host::{HostNetwork, NetworkConfig};
        use crate::net::kernel::{Call, RecordingKernel};
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut k = RecordingKernel::with_uplink("eth0");
            k.links.insert("wg7".into(), 7);
            let mut net = HostNetwork::setup(k, NetworkConfig::default())
                .await
                .unwrap();
            net.kernel_mut().fail_on = Some("wireguard fail closed".into());
            let cfg = WireguardConfig {
                mode: WireguardMode::Existing {
                    interface: "wg7".into(),
                },
                ..WireguardConfig::managed("")
            };
            let e = enable(&mut net, &cfg).await.unwrap_err();
            assert_eq!(e.code(), ErrorCode::WireguardSetupFailed);
            assert!(net.state().wireguard.is_none());
            let calls = net.kernel_mut().calls.clone();
            let pool: Ipv4Net = "172.30.0.0/24".parse().unwrap();
            let wg_rule = PolicyRule {
                from: pool,
                to: None,
                table: DEFAULT_TABLE,
                priority: DEFAULT_RULE_PRIORITY,
            };
            assert!(calls.contains(&Call::DelRule(wg_rule)));
            let Some(Call::Nft(last)) = calls.last() else {
                panic!("the table is re-applied last")
            };
            assert!(!last.to_string().contains("wireguard"));
        });
    }

    #[test]
    fn invalid_settings() {
        let mut cfg = WireguardConfig::managed(&good());
        cfg.table = 254;
        assert_eq!(
            validate(&cfg).unwrap_err().code(),
            ErrorCode::InvalidWireguardConfig
        );
        let mut cfg = WireguardConfig::managed(&good());
        cfg.mode = WireguardMode::Managed {
            config: good(),
            interface: Some("much-too-long-name".into()),
        };
        assert_eq!(
            validate(&cfg).unwrap_err().code(),
            ErrorCode::InvalidInterfaceName
        );
        let cfg: std::result::Result<WireguardConfig, _> =
            serde_json::from_str(r#"{"mode":{"existing":{"interface":"wg0"}},"tabel":5}"#);
        assert!(cfg.is_err());
    }

    #[test]
    fn name_inspection_and_wireguard_exclude_each_other() {
        use crate::net::host::{HostNetwork, NetworkConfig, VmRequest};
        use crate::net::kernel::RecordingKernel;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let cfg = || NetworkConfig {
                dns_upstreams: vec!["10.9.9.9".into()],
                ..NetworkConfig::default()
            };
            let wg = WireguardConfig {
                mode: WireguardMode::Existing {
                    interface: "wg7".into(),
                },
                ..WireguardConfig::managed("")
            };
            let inspecting = || VmRequest {
                vm_id: "a".into(),
                policy: Some(
                    crate::net::EgressPolicy::from_json(
                        r#"{"allow_domains":["a.example"],"inspect_names":true}"#,
                    )
                    .unwrap(),
                ),
                ..VmRequest::default()
            };
            let mut k = RecordingKernel::with_uplink("eth0");
            k.links.insert("wg7".into(), 7);
            let mut net = HostNetwork::setup(k.clone(), cfg()).await.unwrap();
            net.add_vm(inspecting()).await.unwrap();
            let e = enable(&mut net, &wg).await.unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidState);
            assert!(net.state().wireguard.is_none());

            let mut net = HostNetwork::setup(k, cfg()).await.unwrap();
            enable(&mut net, &wg).await.unwrap();
            let e = net.add_vm(inspecting()).await.unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidFirewallConfig);
            assert!(net.state().vms.is_empty());
        });
    }
}
