//! Shared support for the privileged networking tests.
//!
//! Each test builds its own topology of throwaway network namespaces (unique names per process
//! and test, removed by `Drop` even when the test fails), never touching the host's own
//! namespace:
//!
//! ```text
//!   guest netns (veth eth0) ──veth── host netns (flick: bridge/TAPs, nft table) ──veth── internet netns
//!                                     up0 198.51.100.1/24, default via .2             eth0 198.51.100.2/24
//!                                                                                      + 203.0.113.10/32, 203.0.113.20/32
//!                                                                                      TCP 22/80/443/8080, UDP 53/5353, ICMP
//! ```
//!
//! Library code runs inside a namespace on a dedicated thread that enters it with `setns`
//! (`Netns::run` / `Netns::block_on`); everything flick opens there (netlink sockets, `nft`,
//! `/proc/sys/net`, the TUN device) belongs to that namespace. `ip` is used only as the test
//! oracle and to build the topology.
#![allow(dead_code)]

pub mod dns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flick::net::Lease;

pub const UPLINK_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const INTERNET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const FAR_A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const FAR_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
pub const TCP_PORTS: [u16; 4] = [22, 80, 443, 8080];
pub const UDP_PORTS: [u16; 2] = [53, 5353];
/// How long a probe waits before calling the traffic dropped.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(600);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (`<tag><pid%10000>x<n>`), for netns and for
/// interfaces whose names are global (WireGuard UAPI sockets live in the shared `/run`).
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}x{n}", std::process::id() % 10_000)
}

/// Fails the test (never skips) when it cannot run here.
pub fn require_privileges() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it creates network namespaces, links and nftables tables \
         (run `cargo test` as root)"
    );
    for tool in ["ip", "nft"] {
        let ok = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "this test needs the `{tool}` binary (Debian packages iproute2, nftables)"
        );
    }
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "this test needs /dev/net/tun"
    );
}

/// Runs a command, asserting success, returning stdout.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace removed on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(&format!("fl{tag}"));
        sh("ip", &["netns", "add", &name]);
        let me = Self { name };
        me.ip("link set lo up");
        // No IPv6 duplicate address detection: link-local addresses are final at once, so
        // before/after listings do not depend on timing.
        me.run(|| {
            for p in ["all", "default"] {
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{p}/accept_dad"), "0\n")
                    .expect("disable DAD");
            }
        });
        me
    }

    /// `ip -n <ns> <args>`, asserting success.
    pub fn ip(&self, args: &str) -> String {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend(args.split_whitespace());
        sh("ip", &v)
    }

    /// `ip netns exec <ns> <cmd...>`, asserting success.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut v = vec!["netns", "exec", self.name.as_str()];
        v.extend_from_slice(cmd);
        sh("ip", &v)
    }

    /// Everything the cleanup tests compare before and after.
    pub fn listing(&self) -> String {
        let mut out = String::new();
        for args in ["link", "addr", "rule", "-4 rule", "route show table all"] {
            out.push_str(&format!("## ip {args}\n{}", self.ip(args)));
        }
        out.push_str(&format!(
            "## nft\n{}",
            self.exec(&["nft", "list", "ruleset"])
        ));
        out
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&self.name);
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Runs an async body on a current-thread runtime inside this namespace.
    pub fn block_on<F, R>(&self, f: impl FnOnce() -> F + Send) -> R
    where
        F: std::future::Future<Output = R>,
        R: Send,
    {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f())
        })
    }

    /// Spawns a detached thread inside this namespace.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter(&name);
            f();
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Moves the calling thread into a named network namespace.
pub fn enter(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .expect("setns");
}

/// The host + internet part of the topology, with servers running in the internet namespace.
#[derive(Debug)]
pub struct Topology {
    pub host: Netns,
    pub internet: Netns,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    guests: AtomicU32,
}

impl Topology {
    pub fn new() -> Self {
        Self::build(&UDP_PORTS)
    }

    /// Like [`Topology::new`], with UDP servers only on `udp_ports` (leaving port 53 free for a
    /// real DNS server).
    pub fn build(udp_ports: &[u16]) -> Self {
        require_privileges();
        let host = Netns::new("h");
        let internet = Netns::new("i");
        host.ip(&format!(
            "link add up0 type veth peer name eth0 netns {}",
            internet.name
        ));
        host.ip(&format!("addr add {UPLINK_HOST}/24 dev up0"));
        host.ip("link set up0 up");
        host.ip(&format!("route add default via {INTERNET}"));
        internet.ip(&format!("addr add {INTERNET}/24 dev eth0"));
        internet.ip(&format!("addr add {FAR_A}/32 dev eth0"));
        internet.ip(&format!("addr add {FAR_B}/32 dev eth0"));
        internet.ip("link set eth0 up");
        // A veth reports carrier only once both ends are up, a moment later, and its link-local
        // address stays tentative until then: wait for both, so the first probe and the
        // "before" listings never catch the link half up.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !host.ip("link show up0").contains("state UP")
            || host.ip("addr show up0").contains("tentative")
        {
            assert!(Instant::now() < deadline, "up0 never got carrier");
            std::thread::sleep(Duration::from_millis(5));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut servers = Vec::new();
        for port in TCP_PORTS {
            servers.push(tcp_server(&internet, port, stop.clone()));
        }
        for port in udp_ports {
            servers.push(udp_server(&internet, *port, stop.clone()));
        }
        Self {
            host,
            internet,
            stop,
            servers,
            guests: AtomicU32::new(0),
        }
    }

    /// A guest namespace whose `eth0` is a veth; the host end is returned (to hand to flick as
    /// the VM's host device, standing in for a TAP).
    pub fn guest(&self) -> (Netns, String) {
        let g = Netns::new("g");
        let n = self.guests.fetch_add(1, Ordering::Relaxed);
        let dev = format!("gv{n}");
        self.host.ip(&format!(
            "link add {dev} type veth peer name eth0 netns {}",
            g.name
        ));
        g.ip("link set eth0 up");
        (g, dev)
    }
}

impl Topology {
    /// Starts one more server in the internet namespace, stopped with the topology.
    pub fn add_server(&mut self, start: impl FnOnce(&Netns, Arc<AtomicBool>) -> JoinHandle<()>) {
        let h = start(&self.internet, self.stop.clone());
        self.servers.push(h);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.servers.drain(..) {
            let _ = s.join();
        }
    }
}

/// Gives a guest namespace the address and default route of a lease.
pub fn configure_guest(g: &Netns, lease: &Lease) {
    g.ip(&format!(
        "addr add {}/{} dev eth0",
        lease.guest_ip, lease.prefix_len
    ));
    g.ip(&format!("route add default via {}", lease.gateway));
}

/// A TCP server that writes the peer's address and closes.
pub fn tcp_server(ns: &Netns, port: u16, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.write_all(peer.ip().to_string().as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    rx.recv().unwrap();
    h
}

/// A TCP server that echoes every byte back until the peer closes (for long-lived flows).
pub fn echo_server(ns: &Netns, port: u16, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                        let mut buf = [0u8; 256];
                        while !stop.load(Ordering::Relaxed) {
                            match s.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    rx.recv().unwrap();
    h
}

/// A UDP server that answers each datagram with the sender's address.
pub fn udp_server(ns: &Netns, port: u16, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.spawn(move || {
        let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(peer.ip().to_string().as_bytes(), peer);
            }
        }
    });
    rx.recv().unwrap();
    h
}

/// Connects over TCP and returns what the server says (the source address it saw), or `None`
/// when the connection does not complete in time.
pub fn tcp_probe(ip: Ipv4Addr, port: u16) -> Option<String> {
    let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    s.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Sends one UDP datagram and returns the answer (the source address the server saw).
pub fn udp_probe(ip: Ipv4Addr, port: u16) -> Option<String> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    s.send_to(b"ping", (ip, port)).ok()?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one ICMP echo request over a raw socket; true when the echo reply arrives.
pub fn icmp_probe(ip: Ipv4Addr) -> bool {
    // SAFETY: plain socket(2) call; the returned descriptor is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert!(
        fd >= 0,
        "raw ICMP socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let id = (std::process::id() as u16) ^ (COUNTER.fetch_add(1, Ordering::Relaxed) as u16);
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&1u16.to_be_bytes());
    pkt.extend_from_slice(b"flick-probe");
    let c = checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: `tv` is a valid timeval that outlives the call; the size matches.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    // SAFETY: `pkt` and `dst` are valid for the given lengths for the duration of the call.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&raw const dst).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return false;
    }
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        // SAFETY: `buf` is writable for its full length during the call.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let n = n as usize;
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        if n < ihl + 8 {
            continue;
        }
        let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        let icmp = &buf[ihl..n];
        if src == ip && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
            return true;
        }
    }
    false
}
