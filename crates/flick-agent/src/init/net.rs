//! Static IPv4 configuration of one interface with the classic ioctls (`SIOCSIFADDR`,
//! `SIOCSIFNETMASK`, `SIOCSIFFLAGS`, `SIOCADDRT`): no netlink library needed in the guest.

use super::cmdline::IpConfig;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The kernel's `struct rtentry` (not exported by every libc).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and any bit pattern is a
    // valid sockaddr.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn ioctl<T>(fd: &OwnedFd, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: every request used here takes a pointer to the struct type passed in `arg`,
    // which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the interface up (and `lo`).
pub fn link_up(name: &str) -> io::Result<()> {
    let fd = socket()?;
    let mut req = ifreq(name)?;
    ioctl(&fd, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(&fd, libc::SIOCSIFFLAGS, &mut req)
}

/// The interface's IPv4 address, if it has one.
pub fn address_of(name: &str) -> io::Result<Option<Ipv4Addr>> {
    let fd = socket()?;
    let mut req = ifreq(name)?;
    match ioctl(&fd, libc::SIOCGIFADDR, &mut req) {
        Ok(()) => {
            // SAFETY: SIOCGIFADDR filled ifru_addr with a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe {
                std::mem::transmute::<libc::sockaddr, libc::sockaddr_in>(req.ifr_ifru.ifru_addr)
            };
            Ok(Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
        }
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(None),
        Err(e) => Err(e),
    }
}

fn add_route(
    fd: &OwnedFd,
    dst: Ipv4Addr,
    mask: Ipv4Addr,
    gw: Option<Ipv4Addr>,
    dev: &str,
) -> io::Result<()> {
    let mut dev_c = std::ffi::CString::new(dev)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?
        .into_bytes_with_nul();
    let mut flags = libc::RTF_UP;
    if gw.is_some() {
        flags |= libc::RTF_GATEWAY;
    }
    if mask == Ipv4Addr::BROADCAST {
        flags |= libc::RTF_HOST;
    }
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr(dst),
        rt_gateway: sockaddr(gw.unwrap_or(Ipv4Addr::UNSPECIFIED)),
        rt_genmask: sockaddr(mask),
        rt_flags: flags,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev_c.as_mut_ptr().cast(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    match ioctl(fd, libc::SIOCADDRT, &mut rt) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Applies `ip=`: address, netmask, link up, default route, and a host route to MMDS
/// (169.254.169.254) through the device. Does nothing to an interface that already has an
/// address (the kernel's own `ip=` handling ran). Returns whether it changed anything.
pub fn configure(ip: &IpConfig) -> io::Result<bool> {
    let _ = link_up("lo");
    if address_of(&ip.device)?.is_some() {
        return Ok(false);
    }
    let fd = socket()?;
    let mut req = ifreq(&ip.device)?;
    req.ifr_ifru.ifru_addr = sockaddr(ip.address);
    ioctl(&fd, libc::SIOCSIFADDR, &mut req)?;
    let mut req = ifreq(&ip.device)?;
    req.ifr_ifru.ifru_netmask = sockaddr(ip.netmask);
    ioctl(&fd, libc::SIOCSIFNETMASK, &mut req)?;
    link_up(&ip.device)?;
    if let Some(gw) = ip.gateway {
        add_route(
            &fd,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Some(gw),
            &ip.device,
        )?;
    }
    add_route(
        &fd,
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::BROADCAST,
        None,
        &ip.device,
    )?;
    Ok(true)
}

/// Writes `resolv.conf` content for the DNS servers of `ip=`.
pub fn resolv_conf(ip: &IpConfig) -> Option<String> {
    if ip.dns.is_empty() {
        return None;
    }
    Some(ip.dns.iter().map(|d| format!("nameserver {d}\n")).collect())
}
