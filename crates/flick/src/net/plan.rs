//! The address plan: pure functions and data, no kernel access.
//!
//! A [`Subnet`] is normalized to its network address and must have a prefix between 1 and 30.
//! The first usable address is the gateway (it lives on the bridge); guests get addresses from
//! the second usable one up. An [`IpAllocator`] hands out the lowest free guest address, so a
//! released address is reused by the next VM, and its [`AllocationState`] can be written to disk
//! and read back by a later process (the CLI is short-lived).
//!
//! In isolation mode a [`PointToPointAllocator`] carves one `/30` per VM out of the pool: the
//! host end of the TAP gets the first address, the guest the second, and no two VMs share a link.
//!
//! MAC addresses and TAP names are derived from the VM id and the interface id, so the same VM
//! always gets the same ones; the allocators remember TAP names so two VMs never share one even
//! if their hashes collide.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorCode, Result};

/// The subnet used when the caller does not pick one.
pub const DEFAULT_SUBNET: &str = "172.30.0.0/24";
/// The bridge name used when the caller does not pick one.
pub const DEFAULT_BRIDGE: &str = "flbr0";
/// Linux's interface name limit (`IFNAMSIZ` - 1).
pub const MAX_INTERFACE_NAME: usize = 15;
/// The prefix of every TAP name flick derives.
pub const TAP_PREFIX: &str = "fl";

/// An IPv4 subnet normalized to its network address, with a prefix of 1–30.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet(Ipv4Net);

impl Subnet {
    /// Validates and normalizes a network (host bits are cleared).
    pub fn new(net: Ipv4Net) -> Result<Self> {
        if !(1..=30).contains(&net.prefix_len()) {
            return Err(Error::new(
                ErrorCode::InvalidSubnet,
                format!(
                    "subnet {net} has prefix /{}; it must be between /1 and /30",
                    net.prefix_len()
                ),
            )
            .with_details(serde_json::json!({ "subnet": net.to_string() })));
        }
        Ok(Self(net.trunc()))
    }

    /// Parses `a.b.c.d/len` (a missing `/len` is an error: a single address is not a subnet).
    pub fn parse(text: &str) -> Result<Self> {
        let net = Ipv4Net::from_str(text.trim()).map_err(|e| {
            Error::new(
                ErrorCode::InvalidSubnet,
                format!("subnet {text:?} is not an IPv4 CIDR (a.b.c.d/len)"),
            )
            .with_details(serde_json::json!({ "subnet": text }))
            .with_source(e)
        })?;
        Self::new(net)
    }

    /// The normalized network.
    #[must_use]
    pub fn net(&self) -> Ipv4Net {
        self.0
    }

    /// The network address.
    #[must_use]
    pub fn network(&self) -> Ipv4Addr {
        self.0.network()
    }

    /// The prefix length.
    #[must_use]
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// The dotted netmask.
    #[must_use]
    pub fn netmask(&self) -> Ipv4Addr {
        self.0.netmask()
    }

    /// The broadcast address.
    #[must_use]
    pub fn broadcast(&self) -> Ipv4Addr {
        self.0.broadcast()
    }

    /// The gateway: the first usable address.
    #[must_use]
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }

    /// The first address handed to a guest.
    #[must_use]
    pub fn first_guest(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 2)
    }

    /// The last address handed to a guest (the one before the broadcast address).
    #[must_use]
    pub fn last_guest(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.broadcast()) - 1)
    }

    /// How many guests fit.
    #[must_use]
    pub fn guest_capacity(&self) -> u64 {
        u64::from(u32::from(self.last_guest())) - u64::from(u32::from(self.first_guest())) + 1
    }

    /// Whether `ip` is a guest address of this subnet (not network, gateway or broadcast).
    #[must_use]
    pub fn is_guest_address(&self, ip: Ipv4Addr) -> bool {
        ip >= self.first_guest() && ip <= self.last_guest()
    }
}

impl Default for Subnet {
    fn default() -> Self {
        Self::parse(DEFAULT_SUBNET).expect("the default subnet is valid")
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Subnet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Subnet {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> Self {
        s.to_string()
    }
}

/// Validates a bridge or TAP name the way the kernel would, but stricter: 1–15 bytes of ASCII
/// letters, digits, `-`, `_` and `.`, and not `.` or `..`.
pub fn validate_interface_name(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_INTERFACE_NAME {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is reserved")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("may contain only ASCII letters, digits, '-', '_' and '.'")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(why) => Err(Error::new(
            ErrorCode::InvalidInterfaceName,
            format!("interface name {name:?} {why}"),
        )
        .with_details(serde_json::json!({ "name": name }))),
    }
}

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

/// A locally administered unicast MAC (`02:xx:xx:xx:xx:xx`) derived from the VM id and the
/// interface id: the same pair always gets the same address.
#[must_use]
pub fn mac_address(vm_id: &str, iface_id: &str) -> String {
    let d = digest(&["mac", vm_id, iface_id]);
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        d[0], d[1], d[2], d[3], d[4]
    )
}

/// The TAP name derived from the VM id and interface id with a collision counter (`salt` 0 is
/// the normal case): `fl` + 12 lowercase base-32 characters, 14 bytes in all.
#[must_use]
pub fn tap_name(vm_id: &str, iface_id: &str, salt: u32) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let salt = salt.to_string();
    let d = digest(&["tap", vm_id, iface_id, &salt]);
    let mut bits = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
    let mut out = String::from(TAP_PREFIX);
    for _ in 0..12 {
        out.push(ALPHABET[(bits >> 59) as usize] as char);
        bits <<= 5;
    }
    out
}

/// The guest's static network configuration as a kernel command-line argument:
/// `ip=<guest>::<gateway>:<netmask>::eth0:off`.
#[must_use]
pub fn boot_arg(guest: Ipv4Addr, gateway: Ipv4Addr, netmask: Ipv4Addr) -> String {
    format!("ip={guest}::{gateway}:{netmask}::eth0:off")
}

/// What one VM interface got from the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The VM id.
    pub vm_id: String,
    /// The guest interface id (`eth0`).
    pub iface_id: String,
    /// The guest address.
    pub guest_ip: Ipv4Addr,
    /// The guest's gateway (the bridge address, or the host end of the point-to-point link).
    pub gateway: Ipv4Addr,
    /// The prefix of the guest's network.
    pub prefix_len: u8,
    /// The host TAP device.
    pub tap: String,
    /// The guest MAC.
    pub mac: String,
}

impl Lease {
    /// The guest netmask.
    #[must_use]
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Net::new(self.guest_ip, self.prefix_len)
            .expect("prefix validated")
            .netmask()
    }

    /// The guest's network.
    #[must_use]
    pub fn network(&self) -> Ipv4Net {
        Ipv4Net::new(self.guest_ip, self.prefix_len)
            .expect("prefix validated")
            .trunc()
    }

    /// The kernel boot argument for this lease.
    #[must_use]
    pub fn boot_arg(&self) -> String {
        boot_arg(self.guest_ip, self.gateway, self.netmask())
    }
}

/// The serializable state of an allocator: its subnet and every lease, in address order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationState {
    /// The pool.
    pub subnet: Subnet,
    /// Whether leases are point-to-point `/30` blocks (isolation mode).
    #[serde(default)]
    pub point_to_point: bool,
    /// Every lease.
    pub leases: Vec<Lease>,
}

/// Shared bookkeeping of both allocators: leases keyed by their slot, TAP names in use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Book {
    subnet: Subnet,
    slots: BTreeMap<u32, Lease>,
}

impl Book {
    fn find(&self, vm_id: &str, iface_id: &str) -> Option<&Lease> {
        self.slots
            .values()
            .find(|l| l.vm_id == vm_id && l.iface_id == iface_id)
    }

    fn unique_tap(&self, vm_id: &str, iface_id: &str) -> String {
        (0u32..)
            .map(|salt| tap_name(vm_id, iface_id, salt))
            .find(|name| !self.slots.values().any(|l| &l.tap == name))
            .expect("a free name exists")
    }

    fn release_vm(&mut self, vm_id: &str) -> Vec<Lease> {
        let keys: Vec<u32> = self
            .slots
            .iter()
            .filter(|(_, l)| l.vm_id == vm_id)
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.slots.remove(&k))
            .collect()
    }
}

fn check_ids(vm_id: &str, iface_id: &str) -> Result<()> {
    for (what, v) in [("vm id", vm_id), ("interface id", iface_id)] {
        if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{what} {v:?} must be 1–128 printable characters"),
            ));
        }
    }
    Ok(())
}

fn exhausted(subnet: Subnet) -> Error {
    Error::new(
        ErrorCode::IpExhausted,
        format!("no guest address is left in {subnet}"),
    )
    .with_details(serde_json::json!({ "subnet": subnet.to_string() }))
}

/// Hands out guest addresses of a shared subnet (bridge mode), lowest free first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAllocator {
    book: Book,
}

impl IpAllocator {
    /// An empty allocator for `subnet`.
    #[must_use]
    pub fn new(subnet: Subnet) -> Self {
        Self {
            book: Book {
                subnet,
                slots: BTreeMap::new(),
            },
        }
    }

    /// The pool.
    #[must_use]
    pub fn subnet(&self) -> Subnet {
        self.book.subnet
    }

    /// Every lease in address order.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.book.slots.values()
    }

    /// The lease of a VM interface, allocating the lowest free address if it has none yet
    /// (idempotent: the same VM interface keeps its lease).
    pub fn allocate(&mut self, vm_id: &str, iface_id: &str) -> Result<Lease> {
        check_ids(vm_id, iface_id)?;
        if let Some(l) = self.book.find(vm_id, iface_id) {
            return Ok(l.clone());
        }
        let subnet = self.book.subnet;
        let first = u32::from(subnet.first_guest());
        let last = u32::from(subnet.last_guest());
        // Lowest free: walk the sorted taken addresses until a gap appears.
        let mut candidate = first;
        for &taken in self.book.slots.keys() {
            if taken == candidate {
                candidate += 1;
            } else if taken > candidate {
                break;
            }
        }
        if candidate > last {
            return Err(exhausted(subnet));
        }
        let lease = Lease {
            vm_id: vm_id.to_owned(),
            iface_id: iface_id.to_owned(),
            guest_ip: Ipv4Addr::from(candidate),
            gateway: subnet.gateway(),
            prefix_len: subnet.prefix_len(),
            tap: self.book.unique_tap(vm_id, iface_id),
            mac: mac_address(vm_id, iface_id),
        };
        self.book.slots.insert(candidate, lease.clone());
        Ok(lease)
    }

    /// Releases every lease of a VM and returns them.
    pub fn release_vm(&mut self, vm_id: &str) -> Vec<Lease> {
        self.book.release_vm(vm_id)
    }

    /// The state to persist.
    #[must_use]
    pub fn state(&self) -> AllocationState {
        AllocationState {
            subnet: self.book.subnet,
            point_to_point: false,
            leases: self.book.slots.values().cloned().collect(),
        }
    }

    /// Restores an allocator from persisted state, checking every lease against the subnet.
    pub fn restore(state: AllocationState) -> Result<Self> {
        if state.point_to_point {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "allocation state is point-to-point; restore it with PointToPointAllocator",
            ));
        }
        let mut me = Self::new(state.subnet);
        for lease in state.leases {
            if !state.subnet.is_guest_address(lease.guest_ip)
                || lease.gateway != state.subnet.gateway()
                || lease.prefix_len != state.subnet.prefix_len()
            {
                return Err(bad_state(&lease, "is not a guest address of the subnet"));
            }
            me.book.insert_checked(u32::from(lease.guest_ip), lease)?;
        }
        Ok(me)
    }
}

fn bad_state(lease: &Lease, why: &str) -> Error {
    Error::new(
        ErrorCode::StoreFailed,
        format!(
            "allocation state: lease {} of VM {:?} {why}",
            lease.guest_ip, lease.vm_id
        ),
    )
}

impl Book {
    fn insert_checked(&mut self, slot: u32, lease: Lease) -> Result<()> {
        check_ids(&lease.vm_id, &lease.iface_id)?;
        validate_interface_name(&lease.tap)?;
        if self.slots.contains_key(&slot) {
            return Err(bad_state(&lease, "is leased twice"));
        }
        if self.find(&lease.vm_id, &lease.iface_id).is_some() {
            return Err(bad_state(&lease, "duplicates a VM interface"));
        }
        if self.slots.values().any(|l| l.tap == lease.tap) {
            return Err(bad_state(&lease, "reuses a TAP name"));
        }
        self.slots.insert(slot, lease);
        Ok(())
    }
}

/// The prefix of every point-to-point link in isolation mode.
pub const POINT_TO_POINT_PREFIX: u8 = 30;

/// Hands out one `/30` per VM interface from a pool (isolation mode): the host end of the TAP
/// is the block's first address and the guest its second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointToPointAllocator {
    book: Book,
}

impl PointToPointAllocator {
    /// An empty allocator for `pool` (which must hold at least one `/30`).
    pub fn new(pool: Subnet) -> Result<Self> {
        if pool.prefix_len() > POINT_TO_POINT_PREFIX {
            return Err(Error::new(
                ErrorCode::InvalidSubnet,
                format!("isolation pool {pool} is smaller than one /30"),
            ));
        }
        Ok(Self {
            book: Book {
                subnet: pool,
                slots: BTreeMap::new(),
            },
        })
    }

    /// The pool.
    #[must_use]
    pub fn subnet(&self) -> Subnet {
        self.book.subnet
    }

    /// How many links fit.
    #[must_use]
    pub fn capacity(&self) -> u64 {
        1u64 << (POINT_TO_POINT_PREFIX - self.book.subnet.prefix_len())
    }

    /// Every lease in block order.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.book.slots.values()
    }

    /// The lease of a VM interface, allocating the lowest free block if needed.
    pub fn allocate(&mut self, vm_id: &str, iface_id: &str) -> Result<Lease> {
        check_ids(vm_id, iface_id)?;
        if let Some(l) = self.book.find(vm_id, iface_id) {
            return Ok(l.clone());
        }
        let mut block = 0u32;
        for &taken in self.book.slots.keys() {
            if taken == block {
                block += 1;
            } else if taken > block {
                break;
            }
        }
        if u64::from(block) >= self.capacity() {
            return Err(exhausted(self.book.subnet));
        }
        let base = u32::from(self.book.subnet.network()) + block * 4;
        let lease = Lease {
            vm_id: vm_id.to_owned(),
            iface_id: iface_id.to_owned(),
            guest_ip: Ipv4Addr::from(base + 2),
            gateway: Ipv4Addr::from(base + 1),
            prefix_len: POINT_TO_POINT_PREFIX,
            tap: self.book.unique_tap(vm_id, iface_id),
            mac: mac_address(vm_id, iface_id),
        };
        self.book.slots.insert(block, lease.clone());
        Ok(lease)
    }

    /// Releases every lease of a VM and returns them.
    pub fn release_vm(&mut self, vm_id: &str) -> Vec<Lease> {
        self.book.release_vm(vm_id)
    }

    /// The state to persist.
    #[must_use]
    pub fn state(&self) -> AllocationState {
        AllocationState {
            subnet: self.book.subnet,
            point_to_point: true,
            leases: self.book.slots.values().cloned().collect(),
        }
    }

    /// Restores an allocator from persisted state, checking every lease against the pool.
    pub fn restore(state: AllocationState) -> Result<Self> {
        if !state.point_to_point {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "allocation state is not point-to-point; restore it with IpAllocator",
            ));
        }
        let mut me = Self::new(state.subnet)?;
        let network = u32::from(state.subnet.network());
        for lease in state.leases {
            let ip = u32::from(lease.guest_ip);
            let ok = state.subnet.net().contains(&lease.guest_ip)
                && (ip - network) % 4 == 2
                && u32::from(lease.gateway) + 1 == ip
                && lease.prefix_len == POINT_TO_POINT_PREFIX;
            if !ok {
                return Err(bad_state(&lease, "is not a /30 guest address of the pool"));
            }
            me.book.insert_checked((ip - network) / 4, lease)?;
        }
        Ok(me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn default_plan() {
        let s = Subnet::default();
        assert_eq!(s.to_string(), "172.30.0.0/24");
        assert_eq!(s.gateway(), Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(s.first_guest(), Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(s.last_guest(), Ipv4Addr::new(172, 30, 0, 254));
        assert_eq!(s.guest_capacity(), 253);
        let mut a = IpAllocator::new(s);
        let l = a.allocate("vm1", "eth0").unwrap();
        assert_eq!(l.guest_ip, Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(
            l.boot_arg(),
            "ip=172.30.0.2::172.30.0.1:255.255.255.0::eth0:off"
        );
        assert!(l.mac.starts_with("02:"));
        assert!(l.tap.len() <= 15 && l.tap.starts_with("fl"));
    }

    #[test]
    fn normalizes_host_bits() {
        assert_eq!(
            Subnet::parse("10.1.2.3/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            Subnet::parse(" 10.0.0.9/30 ").unwrap().to_string(),
            "10.0.0.8/30"
        );
    }

    #[test]
    fn rejects_bad_subnets() {
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/31",
            "10.0.0.0/32",
            "10.0.0.0/0",
            "10.0.0.0/33",
            "10.0.0/24",
            "300.0.0.0/24",
            "fd00::/64",
            "10.0.0.0/-1",
            "abc",
            "10.0.0.0/24/1",
        ] {
            let e = Subnet::parse(bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidSubnet, "{bad:?}");
        }
        assert!(serde_json::from_str::<Subnet>("\"10.0.0.0/31\"").is_err());
    }

    #[test]
    fn slash30_holds_one_guest() {
        let mut a = IpAllocator::new(Subnet::parse("10.9.0.4/30").unwrap());
        assert_eq!(
            a.allocate("a", "eth0").unwrap().guest_ip,
            Ipv4Addr::new(10, 9, 0, 6)
        );
        let e = a.allocate("b", "eth0").unwrap_err();
        assert_eq!(e.code(), ErrorCode::IpExhausted);
    }

    #[test]
    fn reuses_released_addresses() {
        let mut a = IpAllocator::new(Subnet::default());
        let ips: Vec<_> = (0..4)
            .map(|i| a.allocate(&format!("vm{i}"), "eth0").unwrap().guest_ip)
            .collect();
        assert_eq!(a.release_vm("vm1").len(), 1);
        assert_eq!(a.allocate("new", "eth0").unwrap().guest_ip, ips[1]);
        assert_eq!(
            a.allocate("vm0", "eth0").unwrap().guest_ip,
            ips[0],
            "idempotent"
        );
    }

    #[test]
    fn interface_names() {
        for ok in ["flbr0", "a", "tap-1.x_y", "abcdefghijklmno"] {
            validate_interface_name(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "abcdefghijklmnop",
            "a b",
            "a/b",
            "a:b",
            "tap\n",
            "é",
            "a\0",
        ] {
            assert_eq!(
                validate_interface_name(bad).unwrap_err().code(),
                ErrorCode::InvalidInterfaceName,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn point_to_point_blocks() {
        let mut p = PointToPointAllocator::new(Subnet::parse("10.50.0.0/28").unwrap()).unwrap();
        assert_eq!(p.capacity(), 4);
        let l = p.allocate("a", "eth0").unwrap();
        assert_eq!(l.gateway, Ipv4Addr::new(10, 50, 0, 1));
        assert_eq!(l.guest_ip, Ipv4Addr::new(10, 50, 0, 2));
        assert_eq!(
            l.boot_arg(),
            "ip=10.50.0.2::10.50.0.1:255.255.255.252::eth0:off"
        );
        let l2 = p.allocate("b", "eth0").unwrap();
        assert_eq!(l2.guest_ip, Ipv4Addr::new(10, 50, 0, 6));
        p.allocate("c", "eth0").unwrap();
        p.allocate("d", "eth0").unwrap();
        assert_eq!(
            p.allocate("e", "eth0").unwrap_err().code(),
            ErrorCode::IpExhausted
        );
        p.release_vm("a");
        assert_eq!(
            p.allocate("e", "eth0").unwrap().guest_ip,
            Ipv4Addr::new(10, 50, 0, 2)
        );
        let back = PointToPointAllocator::restore(p.state()).unwrap();
        assert_eq!(back, p);
        assert!(IpAllocator::restore(p.state()).is_err());
    }

    #[test]
    fn restore_rejects_inconsistent_state() {
        let mut a = IpAllocator::new(Subnet::default());
        a.allocate("a", "eth0").unwrap();
        a.allocate("b", "eth0").unwrap();
        let mut s = a.state();
        s.leases[1].guest_ip = s.leases[0].guest_ip;
        assert!(IpAllocator::restore(s).is_err());
        let mut s = a.state();
        s.leases[1].guest_ip = Ipv4Addr::new(172, 30, 0, 1);
        assert!(IpAllocator::restore(s).is_err());
        let mut s = a.state();
        s.leases[1].tap = s.leases[0].tap.clone();
        assert!(IpAllocator::restore(s).is_err());
        let mut s = a.state();
        s.leases[1].tap = "bad name".into();
        assert!(IpAllocator::restore(s).is_err());
    }

    fn subnet_strategy() -> impl Strategy<Value = Subnet> {
        (any::<u32>(), 20u8..=30).prop_map(|(ip, len)| {
            Subnet::new(Ipv4Net::new(Ipv4Addr::from(ip), len).unwrap()).unwrap()
        })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u8),
        Release(u8),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![
                3 => (0u8..40).prop_map(Op::Alloc),
                1 => (0u8..40).prop_map(Op::Release),
            ],
            0..120,
        )
    }

    proptest! {
        #[test]
        fn any_valid_cidr_normalizes(ip in any::<u32>(), len in 0u8..=32) {
            let net = Ipv4Net::new(Ipv4Addr::from(ip), len).unwrap();
            match Subnet::new(net) {
                Ok(s) => {
                    prop_assert!((1..=30).contains(&len));
                    prop_assert_eq!(s.network(), net.network());
                    prop_assert!(s.net().contains(&Ipv4Addr::from(ip)));
                    prop_assert!(s.gateway() < s.first_guest());
                    prop_assert!(s.first_guest() <= s.last_guest());
                    prop_assert_eq!(Subnet::parse(&s.to_string()).unwrap(), s);
                }
                Err(e) => {
                    prop_assert!(len == 0 || len > 30);
                    prop_assert_eq!(e.code(), ErrorCode::InvalidSubnet);
                }
            }
        }

        #[test]
        fn allocator_invariants(subnet in subnet_strategy(), ops in ops()) {
            let mut a = IpAllocator::new(subnet);
            let mut model: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Alloc(i) => {
                        let id = format!("vm{i}");
                        match a.allocate(&id, "eth0") {
                            Ok(l) => {
                                prop_assert!(subnet.is_guest_address(l.guest_ip));
                                if let Some(prev) = model.get(&id) {
                                    prop_assert_eq!(*prev, l.guest_ip);
                                }
                                // lowest free: every lower guest address is taken
                                let taken: BTreeSet<_> = model.values().copied().collect();
                                if !model.contains_key(&id) {
                                    let mut x = u32::from(subnet.first_guest());
                                    while x < u32::from(l.guest_ip) {
                                        prop_assert!(taken.contains(&Ipv4Addr::from(x)));
                                        x += 1;
                                    }
                                }
                                model.insert(id, l.guest_ip);
                            }
                            Err(e) => {
                                prop_assert_eq!(e.code(), ErrorCode::IpExhausted);
                                prop_assert_eq!(model.len() as u64, subnet.guest_capacity());
                            }
                        }
                    }
                    Op::Release(i) => {
                        let id = format!("vm{i}");
                        let gone = a.release_vm(&id);
                        prop_assert_eq!(gone.len(), usize::from(model.remove(&id).is_some()));
                    }
                }
                let ips: BTreeSet<_> = a.leases().map(|l| l.guest_ip).collect();
                let taps: BTreeSet<_> = a.leases().map(|l| l.tap.clone()).collect();
                prop_assert_eq!(ips.len(), model.len());
                prop_assert_eq!(taps.len(), model.len());
            }
            let json = serde_json::to_string(&a.state()).unwrap();
            let back = IpAllocator::restore(serde_json::from_str(&json).unwrap()).unwrap();
            prop_assert_eq!(back, a);
        }

        #[test]
        fn p2p_blocks_are_disjoint(pool in (any::<u32>(), 22u8..=30).prop_map(|(ip, len)| Subnet::new(Ipv4Net::new(Ipv4Addr::from(ip), len).unwrap()).unwrap()), ops in ops()) {
            let mut p = PointToPointAllocator::new(pool).unwrap();
            for op in ops {
                match op {
                    Op::Alloc(i) => match p.allocate(&format!("vm{i}"), "eth0") {
                        Ok(l) => {
                            prop_assert!(pool.net().contains(&l.network()));
                            prop_assert_eq!(l.network().prefix_len(), 30);
                            prop_assert_eq!(u32::from(l.gateway) + 1, u32::from(l.guest_ip));
                        }
                        Err(e) => prop_assert_eq!(e.code(), ErrorCode::IpExhausted),
                    },
                    Op::Release(i) => { p.release_vm(&format!("vm{i}")); }
                }
                let nets: BTreeSet<_> = p.leases().map(Lease::network).collect();
                prop_assert_eq!(nets.len(), p.leases().count());
            }
            prop_assert_eq!(PointToPointAllocator::restore(p.state()).unwrap(), p);
        }

        #[test]
        fn tap_names_are_valid_and_stable(vm in "\\PC{1,64}", iface in "[a-z0-9]{1,8}", salt in 0u32..1000) {
            let n = tap_name(&vm, &iface, salt);
            prop_assert!(n.len() <= MAX_INTERFACE_NAME);
            prop_assert!(validate_interface_name(&n).is_ok());
            prop_assert_eq!(&n, &tap_name(&vm, &iface, salt));
            let m = mac_address(&vm, &iface);
            prop_assert_eq!(m.len(), 17);
            prop_assert!(m.starts_with("02:"));
            prop_assert_eq!(&m, &mac_address(&vm, &iface));
        }

        #[test]
        fn distinct_vms_get_distinct_taps(ids in proptest::collection::btree_set("[a-z0-9-]{1,20}", 1..60)) {
            let mut a = IpAllocator::new(Subnet::parse("10.0.0.0/16").unwrap());
            let taps: BTreeSet<_> = ids.iter().map(|id| a.allocate(id, "eth0").unwrap().tap).collect();
            prop_assert_eq!(taps.len(), ids.len());
        }
    }
}
