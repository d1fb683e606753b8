//! Kernel command-line options that flick-init understands.
//!
//! | option | meaning |
//! |---|---|
//! | `root=DEV` | the root drive (`/dev/vda`, `LABEL=` and `UUID=` are not resolved) |
//! | `rootfstype=FS` | its filesystem; when absent, ext4, squashfs, erofs, xfs, btrfs are tried |
//! | `rootflags=OPTS` | mount data passed through |
//! | `ro` / `rw` | mount the root read-only / read-write |
//! | `ip=CLIENT::GW:MASK:HOST:DEV:off[:DNS0[:DNS1]]` | static eth0 address (kernel `ip=` syntax) |
//! | `flick.token=T` | the agent token |
//! | `flick.port=N` | the agent's vsock port (default 1024) |
//! | `flick.overlay=auto\|1\|0` | tmpfs overlay over the root (auto: for squashfs/erofs and `ro`) |
//! | `flick.init=PATH` | hand PID 1 over to this program in the root (agent keeps running) |
//! | `flick.hostname=NAME` | hostname (else the `ip=` hostname) |
//! | `flick.mmds=1` | read the token from MMDS (`/flick/token`) when none is on the command line |
//! | `flick.unix=PATH` | the agent also listens on this Unix socket (debugging, tests) |
//! | `flick.overlay_size=SIZE` | tmpfs size of the overlay's upper layer (tmpfs syntax, default 50%) |

use std::net::Ipv4Addr;

/// Whether to put a tmpfs overlay over the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayMode {
    /// For read-only roots and read-only filesystems (squashfs, erofs).
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// A static IPv4 configuration from `ip=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// The guest address.
    pub address: Ipv4Addr,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Netmask.
    pub netmask: Ipv4Addr,
    /// Hostname field.
    pub hostname: Option<String>,
    /// Interface (default `eth0`).
    pub device: String,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
}

impl IpConfig {
    /// Parses the kernel's `ip=` value; `None` for DHCP/auto forms and malformed values.
    pub fn parse(value: &str) -> Option<Self> {
        let f: Vec<&str> = value.split(':').collect();
        let address: Ipv4Addr = f.first()?.parse().ok()?;
        let get = |i: usize| f.get(i).copied().filter(|s| !s.is_empty());
        let gateway = get(2).and_then(|s| s.parse().ok());
        let netmask = get(3)
            .and_then(|s| s.parse().ok())
            .unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
        let dns = [get(7), get(8)]
            .into_iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .collect();
        Some(Self {
            address,
            gateway,
            netmask,
            hostname: get(4).map(str::to_owned),
            device: get(5).unwrap_or("eth0").to_owned(),
            dns,
        })
    }
}

/// Everything flick-init reads from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    /// `root=`.
    pub root: Option<String>,
    /// `rootfstype=`.
    pub rootfstype: Option<String>,
    /// `rootflags=`.
    pub rootflags: Option<String>,
    /// `ro` (true) or `rw` (false, the default).
    pub read_only: bool,
    /// `ip=`.
    pub ip: Option<IpConfig>,
    /// `flick.token=`.
    pub token: Option<String>,
    /// `flick.port=`.
    pub port: u32,
    /// `flick.overlay=`.
    pub overlay: OverlayMode,
    /// `flick.overlay_size=`.
    pub overlay_size: Option<String>,
    /// `flick.init=`.
    pub init: Option<String>,
    /// `flick.hostname=` or the `ip=` hostname.
    pub hostname: Option<String>,
    /// `flick.mmds=1`.
    pub mmds: bool,
    /// `flick.unix=`.
    pub unix: Option<String>,
}

/// Splits a command line into words, honouring double quotes like the kernel does.
pub fn split(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

impl BootOptions {
    /// Parses a whole command line. Unknown words are ignored; the last occurrence wins.
    pub fn parse(cmdline: &str) -> Self {
        let mut o = BootOptions {
            root: None,
            rootfstype: None,
            rootflags: None,
            read_only: false,
            ip: None,
            token: None,
            port: flick_proto::DEFAULT_VSOCK_PORT,
            overlay: OverlayMode::Auto,
            overlay_size: None,
            init: None,
            hostname: None,
            mmds: false,
            unix: None,
        };
        let mut flick_hostname = None;
        for word in split(cmdline) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            let owned = || value.filter(|v| !v.is_empty()).map(str::to_owned);
            match key {
                "root" => o.root = owned(),
                "rootfstype" => o.rootfstype = owned(),
                "rootflags" => o.rootflags = owned(),
                "ro" if value.is_none() => o.read_only = true,
                "rw" if value.is_none() => o.read_only = false,
                "ip" => o.ip = value.and_then(IpConfig::parse),
                "flick.token" => o.token = owned(),
                "flick.port" => {
                    if let Some(p) = value.and_then(|v| v.parse().ok()) {
                        o.port = p;
                    }
                }
                "flick.overlay" => {
                    o.overlay = match value {
                        Some("1" | "on" | "yes" | "true") => OverlayMode::On,
                        Some("0" | "off" | "no" | "false") => OverlayMode::Off,
                        _ => OverlayMode::Auto,
                    }
                }
                "flick.overlay_size" => o.overlay_size = owned(),
                "flick.init" => o.init = owned(),
                "flick.unix" => o.unix = owned(),
                "flick.hostname" => flick_hostname = owned(),
                "flick.mmds" => o.mmds = matches!(value, Some("1" | "on" | "yes" | "true")),
                _ => {}
            }
        }
        o.hostname = flick_hostname.or_else(|| o.ip.as_ref().and_then(|ip| ip.hostname.clone()));
        o
    }

    /// Whether the root gets a tmpfs overlay, given its filesystem type.
    pub fn wants_overlay(&self, fstype: &str) -> bool {
        match self.overlay {
            OverlayMode::On => true,
            OverlayMode::Off => false,
            OverlayMode::Auto => self.read_only || matches!(fstype, "squashfs" | "erofs"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_firecracker_command_line() {
        let o = BootOptions::parse(
            "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda ro rootfstype=squashfs \
             ip=172.16.0.2::172.16.0.1:255.255.255.252:vm1:eth0:off:1.1.1.1 \
             flick.token=\"abc def\" flick.port=2000 flick.init=/sbin/init flick.unix=/run/a.sock",
        );
        assert_eq!(o.unix.as_deref(), Some("/run/a.sock"));
        assert_eq!(o.root.as_deref(), Some("/dev/vda"));
        assert!(o.read_only);
        assert_eq!(o.token.as_deref(), Some("abc def"));
        assert_eq!(o.port, 2000);
        assert_eq!(o.init.as_deref(), Some("/sbin/init"));
        assert_eq!(o.hostname.as_deref(), Some("vm1"));
        let ip = o.ip.clone().unwrap();
        assert_eq!(ip.address, Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(ip.gateway, Some(Ipv4Addr::new(172, 16, 0, 1)));
        assert_eq!(ip.netmask, Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(ip.dns, vec![Ipv4Addr::new(1, 1, 1, 1)]);
        assert!(o.wants_overlay("ext4"));
    }

    #[test]
    fn defaults_and_overrides() {
        let o = BootOptions::parse("root=/dev/vda rw flick.overlay=0 flick.hostname=h ip=dhcp");
        assert!(!o.read_only);
        assert_eq!(o.port, 1024);
        assert!(o.ip.is_none());
        assert!(!o.wants_overlay("squashfs"));
        assert_eq!(o.hostname.as_deref(), Some("h"));
        assert!(BootOptions::parse("rw").wants_overlay("squashfs"));
        assert!(!BootOptions::parse("rw").wants_overlay("ext4"));
    }
}
