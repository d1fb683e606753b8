//! Persistent TAP devices through the TUN ioctls.
//!
//! Netlink cannot create TUN/TAP devices (the kernel answers `EOPNOTSUPP`), so flick opens
//! `/dev/net/tun`, names the device with `TUNSETIFF`, hands it to the owner/group that will run
//! Firecracker, marks it persistent and closes the descriptor. Firecracker later reopens the
//! device by name. The device is created in the network namespace of the calling thread.

use std::ffi::c_short;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use crate::error::{Error, ErrorCode, Result};

const TUN_PATH: &str = "/dev/net/tun";
// _IOW('T', 202, int) and friends from <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
const IFF_TAP: c_short = 0x0002;
const IFF_NO_PI: c_short = 0x1000;
const IFF_VNET_HDR: c_short = 0x4000;
// Fail with EBUSY instead of attaching to an existing device of that name, so flick never
// adopts (and later deletes) a device it did not create.
const IFF_TUN_EXCL: c_short = 0x8000_u16.cast_signed();

/// `struct ifreq` reduced to the name and the flags member of its union (40 bytes in all).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: c_short,
    _pad: [u8; 22],
}

fn fail(name: &str, step: &str, err: std::io::Error) -> Error {
    Error::new(ErrorCode::TapCreateFailed, format!("TAP {name}: {step}"))
        .with_details(serde_json::json!({ "tap": name, "os_error": err.raw_os_error() }))
        .with_source(err)
}

fn ioctl_int(
    file: &File,
    name: &str,
    step: &str,
    request: libc::c_ulong,
    arg: libc::c_ulong,
) -> Result<()> {
    // SAFETY: `file` is an open /dev/net/tun descriptor and these TUN requests take an integer
    // argument by value; no memory is shared with the kernel.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, arg) };
    if rc < 0 {
        return Err(fail(name, step, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Creates a persistent TAP named `name` (already validated) in the calling thread's network
/// namespace, owned by `owner`/`group` when given. Fails if a device of that name exists.
pub fn create_persistent_tap(name: &str, owner: Option<u32>, group: Option<u32>) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_PATH)
        .map_err(|e| fail(name, "open /dev/net/tun", e))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL,
        _pad: [0; 22],
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(Error::new(
            ErrorCode::InvalidInterfaceName,
            format!("interface name {name:?} does not fit IFNAMSIZ"),
        ));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `req` is a properly initialized, correctly sized `struct ifreq` that lives across
    // the call; TUNSETIFF reads the name and flags and writes the final name back into it.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(fail(name, "TUNSETIFF", std::io::Error::last_os_error()));
    }
    let configure = || -> Result<()> {
        if let Some(uid) = owner {
            ioctl_int(
                &file,
                name,
                "TUNSETOWNER",
                TUNSETOWNER,
                libc::c_ulong::from(uid),
            )?;
        }
        if let Some(gid) = group {
            ioctl_int(
                &file,
                name,
                "TUNSETGROUP",
                TUNSETGROUP,
                libc::c_ulong::from(gid),
            )?;
        }
        ioctl_int(&file, name, "TUNSETPERSIST", TUNSETPERSIST, 1)
    };
    // Without TUNSETPERSIST the device disappears when `file` closes, so a failure here leaves
    // nothing behind.
    configure()
}
