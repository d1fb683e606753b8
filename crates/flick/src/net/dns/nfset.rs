//! Adding and removing elements of one nftables set over nfnetlink, without spawning `nft`.
//!
//! The resolver must put an address into the VM's set *before* the guest sees the answer (or
//! the guest's first connection would be dropped), so this sits on the answer path and has to
//! be fast: one `NFT_MSG_NEWSETELEM` message inside a batch (`NFNL_MSG_BATCH_BEGIN` /
//! `NFNL_MSG_BATCH_END`), which the kernel commits as one transaction and acknowledges.
//! Re-adding an element that exists refreshes its timeout.
//!
//! Message layout (all attributes 4-byte aligned):
//!
//! ```text
//! nlmsghdr(BATCH_BEGIN) nfgenmsg(res_id = NFNL_SUBSYS_NFTABLES)
//! nlmsghdr(NEWSETELEM | DELSETELEM, ACK) nfgenmsg(family = inet)
//!   NFTA_SET_ELEM_LIST_TABLE  "flick\0"
//!   NFTA_SET_ELEM_LIST_SET    "d_xxxx\0"
//!   NFTA_SET_ELEM_LIST_ELEMENTS
//!     NFTA_LIST_ELEM
//!       NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE <4 bytes> }
//!       NFTA_SET_ELEM_TIMEOUT <u64 ms, big endian>
//! nlmsghdr(BATCH_END)
//! ```

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;

/// An nfnetlink socket bound to one set of one `inet` table, in the network namespace it was
/// opened in.
#[derive(Debug)]
pub struct NfSet {
    fd: OwnedFd,
    table: String,
    set: String,
    seq: u32,
}

struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut v = Vec::with_capacity(128);
        v.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.push(family);
        v.push(0); // NFNETLINK_V0
        v.extend_from_slice(&res_id.to_be_bytes());
        Self(v)
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = u16::try_from(4 + data.len()).expect("small attribute");
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.pad();
    }

    fn begin_nested(&mut self, kind: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&0u16.to_ne_bytes());
        self.0
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nested(&mut self, at: usize) {
        let len = u16::try_from(self.0.len() - at).expect("small nest");
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.pad();
        let len = u32::try_from(self.0.len()).expect("small message");
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

impl NfSet {
    /// Opens the socket. Fails without `CAP_NET_ADMIN` only when used, not here.
    pub fn open(table: &str, set: &str) -> std::io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked and then owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a valid timeval for the duration of the call and the size matches.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(Self {
            fd,
            table: table.to_owned(),
            set: set.to_owned(),
            seq: std::process::id().wrapping_mul(7919),
        })
    }

    /// Adds (or refreshes) addresses with one timeout, in one transaction.
    pub fn add(&mut self, addrs: &[Ipv4Addr], timeout: Duration) -> std::io::Result<()> {
        if addrs.is_empty() {
            return Ok(());
        }
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.transact(NFT_MSG_NEWSETELEM, NLM_F_CREATE, addrs, Some(ms))
    }

    /// Removes one address; an address that is not in the set is not an error.
    pub fn remove(&mut self, addr: Ipv4Addr) -> std::io::Result<()> {
        match self.transact(NFT_MSG_DELSETELEM, 0, &[addr], None) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }

    fn transact(
        &mut self,
        op: u16,
        extra_flags: u16,
        addrs: &[Ipv4Addr],
        timeout_ms: Option<u64>,
    ) -> std::io::Result<()> {
        self.seq = self.seq.wrapping_add(3);
        let seq = self.seq;
        let mut buf = Msg::new(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish();
        let mut m = Msg::new(
            (NFNL_SUBSYS_NFTABLES << 8) | op,
            NLM_F_REQUEST | NLM_F_ACK | extra_flags,
            seq + 1,
            NFPROTO_INET,
            0,
        );
        m.attr(NFTA_SET_ELEM_LIST_TABLE, &cstr(&self.table));
        m.attr(NFTA_SET_ELEM_LIST_SET, &cstr(&self.set));
        let list = m.begin_nested(NFTA_SET_ELEM_LIST_ELEMENTS);
        for a in addrs {
            let elem = m.begin_nested(NFTA_LIST_ELEM);
            let key = m.begin_nested(NFTA_SET_ELEM_KEY);
            m.attr(NFTA_DATA_VALUE, &a.octets());
            m.end_nested(key);
            if let Some(ms) = timeout_ms {
                m.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
            }
            m.end_nested(elem);
        }
        m.end_nested(list);
        buf.extend_from_slice(&m.finish());
        buf.extend_from_slice(
            &Msg::new(
                NFNL_MSG_BATCH_END,
                NLM_F_REQUEST,
                seq + 2,
                0,
                NFNL_SUBSYS_NFTABLES,
            )
            .finish(),
        );
        // SAFETY: `buf` is valid for its length during the call.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.wait_ack(seq + 1)
    }

    fn wait_ack(&self, seq: u32) -> std::io::Result<()> {
        let mut rx = vec![0u8; 8192];
        loop {
            // SAFETY: `rx` is writable for its full length during the call.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), rx.as_mut_ptr().cast(), rx.len(), 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = usize::try_from(n).unwrap_or(0);
            let mut off = 0;
            while off + 16 <= n {
                let len =
                    u32::from_ne_bytes(rx[off..off + 4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(rx[off + 4..off + 6].try_into().expect("2 bytes"));
                let mseq = u32::from_ne_bytes(rx[off + 8..off + 12].try_into().expect("4 bytes"));
                if len < 16 || off + len > n {
                    break;
                }
                if kind == NLMSG_ERROR && off + 20 <= n {
                    let err =
                        i32::from_ne_bytes(rx[off + 16..off + 20].try_into().expect("4 bytes"));
                    if mseq == seq || err != 0 {
                        return if err == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::from_raw_os_error(-err))
                        };
                    }
                }
                off += (len + 3) & !3;
            }
        }
    }
}
