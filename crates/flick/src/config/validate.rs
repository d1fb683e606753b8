//! Every rule a [`VmConfig`] is checked against, resource by resource. Each rule pushes a
//! [`ConfigProblem`](super::ConfigProblem) with a field path; nothing stops at the first one.

use std::net::Ipv4Addr;

use super::VmConfig;
use super::check::{
    MAX_BOOT_ARGS, Problems, check_host_path, check_id, check_ifname, check_mac, check_socket_path,
    duplicates, parse_mac,
};
use super::resources::{HugePages, MemoryHotplug};

/// Firecracker supports at most 32 vCPUs.
pub(crate) const MAX_VCPUS: u8 = 32;
/// The smallest MTU virtio-net accepts (IPv4's minimum).
pub(crate) const MIN_MTU: u16 = 68;

/// The link-local range the spec's `ipv4_address` pattern allows: 169.254.1.0–169.254.254.255.
pub(crate) fn is_mmds_address(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 169 && b == 254 && (1..=254).contains(&c)
}

pub(crate) fn check_vcpus(at: &str, vcpus: u8, smt: bool, p: &mut Problems) {
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        p.push(at, format!("{vcpus} is outside 1..={MAX_VCPUS}"));
    } else if smt && vcpus > 1 && !vcpus.is_multiple_of(2) {
        p.push(at, format!("{vcpus} is odd; with SMT it must be 1 or even"));
    }
}

pub(crate) fn check_memory(at: &str, mib: u32, huge: HugePages, p: &mut Problems) {
    if mib == 0 {
        p.push(at, "must be positive");
    } else if huge == HugePages::Huge2M && !mib.is_multiple_of(2) {
        p.push(
            at,
            format!("{mib} MiB is not a multiple of 2 MiB, which 2M huge pages need"),
        );
    }
}

impl VmConfig {
    pub(crate) fn check(&self, p: &mut Problems) {
        self.check_boot(p);
        self.check_machine(p);
        self.check_drives(p);
        self.check_pmem(p);
        self.check_roots(p);
        self.check_shared_files(p);
        self.check_interfaces(p);
        self.check_vsock(p);
        self.check_balloon(p);
        self.check_mmds(p);
        self.check_observability(p);
        self.check_memory_hotplug(p);
    }

    fn check_boot(&self, p: &mut Problems) {
        let b = &self.boot_source;
        check_host_path("boot_source.kernel_image_path", &b.kernel_image_path, p);
        if let Some(initrd) = &b.initrd_path {
            check_host_path("boot_source.initrd_path", initrd, p);
        }
        if let Some(args) = &b.boot_args {
            if args.contains('\0') {
                p.push("boot_source.boot_args", "must not contain a NUL byte");
            }
            if args.len() > MAX_BOOT_ARGS {
                p.push(
                    "boot_source.boot_args",
                    format!(
                        "is {} bytes; the kernel command line holds at most {MAX_BOOT_ARGS}",
                        args.len()
                    ),
                );
            }
        }
    }

    fn check_machine(&self, p: &mut Problems) {
        let m = &self.machine_config;
        check_vcpus("machine_config.vcpu_count", m.vcpu_count, m.smt, p);
        check_memory(
            "machine_config.mem_size_mib",
            m.mem_size_mib,
            m.huge_pages,
            p,
        );
        if let Some(cpu) = &self.cpu_config {
            if m.cpu_template
                .is_some_and(|t| t != super::resources::CpuTemplate::None)
            {
                p.push(
                    "machine_config.cpu_template",
                    "conflicts with cpu_config: Firecracker applies only one CPU template",
                );
            }
            cpu.check("cpu_config", p);
        }
    }

    fn check_drives(&self, p: &mut Problems) {
        for (i, d) in self.drives.iter().enumerate() {
            let at = format!("drives[{i}]");
            check_id(&format!("{at}.drive_id"), &d.drive_id, p);
            match (&d.path_on_host, &d.socket) {
                (Some(_), Some(_)) => p.push(
                    format!("{at}.socket"),
                    "a drive is either virtio-block (path_on_host) or vhost-user (socket), not both",
                ),
                (None, None) => p.push(
                    format!("{at}.path_on_host"),
                    "a drive needs path_on_host (virtio-block) or socket (vhost-user)",
                ),
                _ => {}
            }
            if let Some(path) = &d.path_on_host {
                check_host_path(&format!("{at}.path_on_host"), path, p);
            }
            if let Some(socket) = &d.socket {
                check_socket_path(&format!("{at}.socket"), socket, p);
            }
            // A drive with both kinds set is reported above; the vhost-user rules apply to a
            // clear vhost-user drive only.
            if d.socket.is_some() && d.path_on_host.is_none() {
                let virtio_only = "is a virtio-block setting; a vhost-user drive must omit it";
                if d.is_read_only {
                    p.push(format!("{at}.is_read_only"), virtio_only);
                }
                if d.io_engine.is_some() {
                    p.push(format!("{at}.io_engine"), virtio_only);
                }
                if d.rate_limiter.is_some() {
                    p.push(format!("{at}.rate_limiter"), virtio_only);
                }
                if d.ephemeral == Some(true) {
                    p.push(
                        format!("{at}.ephemeral"),
                        "a vhost-user drive has no file flick could stage",
                    );
                }
            }
            if let Some(uuid) = &d.partuuid {
                if !d.is_root_device {
                    p.push(
                        format!("{at}.partuuid"),
                        "only the root device may name a partition UUID",
                    );
                } else if uuid.is_empty()
                    || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
                {
                    p.push(
                        format!("{at}.partuuid"),
                        format!(
                            "{uuid:?} must be hex digits and '-' (it goes into root=PARTUUID=)"
                        ),
                    );
                }
            }
            if let Some(rl) = &d.rate_limiter {
                rl.check(&format!("{at}.rate_limiter"), p);
            }
        }
        for (i, id) in duplicates(self.drives.iter().map(|d| d.drive_id.as_str())) {
            p.push(
                format!("drives[{i}].drive_id"),
                format!("duplicate id {id:?}"),
            );
        }
    }

    fn check_pmem(&self, p: &mut Problems) {
        for (i, d) in self.pmem.iter().enumerate() {
            let at = format!("pmem[{i}]");
            check_id(&format!("{at}.id"), &d.id, p);
            check_host_path(&format!("{at}.path_on_host"), &d.path_on_host, p);
            if let Some(rl) = &d.rate_limiter {
                rl.check(&format!("{at}.rate_limiter"), p);
            }
        }
        for (i, id) in duplicates(self.pmem.iter().map(|d| d.id.as_str())) {
            p.push(format!("pmem[{i}].id"), format!("duplicate id {id:?}"));
        }
    }

    fn check_roots(&self, p: &mut Problems) {
        let roots = self
            .drives
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_root_device)
            .map(|(i, d)| (format!("drives[{i}].is_root_device"), d.drive_id.as_str()))
            .chain(
                self.pmem
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.root_device)
                    .map(|(i, d)| (format!("pmem[{i}].root_device"), d.id.as_str())),
            );
        let mut first: Option<String> = None;
        for (field, id) in roots {
            match &first {
                None => first = Some(id.to_string()),
                Some(root) => p.push(
                    field,
                    format!("{id:?} is a second root device; {root:?} is already the root"),
                ),
            }
        }
    }

    /// Two devices on one backing file corrupt it unless neither writes to it. An ephemeral
    /// drive writes to a private copy, so it counts as not writing.
    fn check_shared_files(&self, p: &mut Problems) {
        let drives = self.drives.iter().enumerate().filter_map(|(i, d)| {
            let writes = !d.is_read_only && d.ephemeral != Some(true);
            d.path_on_host
                .as_deref()
                .map(|path| (format!("drives[{i}].path_on_host"), path, writes))
        });
        let pmem = self.pmem.iter().enumerate().map(|(i, d)| {
            (
                format!("pmem[{i}].path_on_host"),
                d.path_on_host.as_path(),
                !d.read_only,
            )
        });
        let mut seen: Vec<(String, &std::path::Path, bool)> = Vec::new();
        for (field, path, writes) in drives.chain(pmem) {
            if let Some((other, _, other_writes)) = seen.iter().find(|(_, q, _)| *q == path)
                && (writes || *other_writes)
            {
                p.push(
                    &field,
                    format!(
                        "{:?} is also the backing file of {other}; a shared file must be read-only everywhere",
                        path.display().to_string()
                    ),
                );
            }
            seen.push((field, path, writes));
        }
    }

    fn check_interfaces(&self, p: &mut Problems) {
        for (i, n) in self.network_interfaces.iter().enumerate() {
            let at = format!("network_interfaces[{i}]");
            check_id(&format!("{at}.iface_id"), &n.iface_id, p);
            if let Some(name) = &n.host_dev_name {
                check_ifname(&format!("{at}.host_dev_name"), name, p);
            }
            if let Some(mac) = &n.guest_mac {
                check_mac(&format!("{at}.guest_mac"), mac, p);
            }
            if let Some(mtu) = n.mtu
                && mtu < MIN_MTU
            {
                p.push(
                    format!("{at}.mtu"),
                    format!("{mtu} is outside {MIN_MTU}..=65535"),
                );
            }
            if let Some(rl) = &n.rx_rate_limiter {
                rl.check(&format!("{at}.rx_rate_limiter"), p);
            }
            if let Some(rl) = &n.tx_rate_limiter {
                rl.check(&format!("{at}.tx_rate_limiter"), p);
            }
        }
        let ifaces = &self.network_interfaces;
        for (i, id) in duplicates(ifaces.iter().map(|n| n.iface_id.as_str())) {
            p.push(
                format!("network_interfaces[{i}].iface_id"),
                format!("duplicate id {id:?}"),
            );
        }
        let named: Vec<(usize, &str)> = ifaces
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.host_dev_name.as_deref().map(|h| (i, h)))
            .collect();
        for (k, name) in duplicates(named.iter().map(|(_, h)| *h)) {
            p.push(
                format!("network_interfaces[{}].host_dev_name", named[k].0),
                format!("TAP {name:?} is already used by another interface"),
            );
        }
        let macs: Vec<(usize, [u8; 6])> = ifaces
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.guest_mac.as_deref().and_then(parse_mac).map(|m| (i, m)))
            .collect();
        let keys: Vec<String> = macs.iter().map(|(_, m)| hex::encode(m)).collect();
        for (k, _) in duplicates(keys.iter().map(String::as_str)) {
            let i = macs[k].0;
            p.push(
                format!("network_interfaces[{i}].guest_mac"),
                format!(
                    "{:?} is already used by another interface",
                    ifaces[i].guest_mac.as_deref().unwrap_or_default()
                ),
            );
        }
    }

    fn check_vsock(&self, p: &mut Problems) {
        let Some(v) = &self.vsock else { return };
        if v.guest_cid < 3 {
            p.push(
                "vsock.guest_cid",
                format!("{} is reserved; guest CIDs start at 3", v.guest_cid),
            );
        } else if v.guest_cid == u32::MAX {
            p.push(
                "vsock.guest_cid",
                "4294967295 is VMADDR_CID_ANY, not a guest CID",
            );
        }
        if let Some(path) = &v.uds_path {
            check_socket_path("vsock.uds_path", path, p);
        }
    }

    fn check_balloon(&self, p: &mut Problems) {
        let Some(b) = &self.balloon else { return };
        let mem = self.machine_config.mem_size_mib;
        if b.amount_mib > mem {
            p.push(
                "balloon.amount_mib",
                format!(
                    "{} MiB is more than the guest's {mem} MiB of memory",
                    b.amount_mib
                ),
            );
        }
    }

    fn check_mmds(&self, p: &mut Problems) {
        if let Some(m) = &self.mmds_config {
            if m.network_interfaces.is_empty() {
                p.push(
                    "mmds_config.network_interfaces",
                    "must name at least one interface",
                );
            }
            for (i, id) in m.network_interfaces.iter().enumerate() {
                if !self.network_interfaces.iter().any(|n| &n.iface_id == id) {
                    p.push(
                        format!("mmds_config.network_interfaces[{i}]"),
                        format!("no network interface has id {id:?}"),
                    );
                }
            }
            for (i, id) in duplicates(m.network_interfaces.iter().map(String::as_str)) {
                p.push(
                    format!("mmds_config.network_interfaces[{i}]"),
                    format!("{id:?} is listed twice"),
                );
            }
            if let Some(ip) = m.ipv4_address
                && !is_mmds_address(ip)
            {
                p.push(
                    "mmds_config.ipv4_address",
                    format!("{ip} is not a link-local address in 169.254.1.0-169.254.254.255"),
                );
            }
        }
        if let Some(data) = &self.mmds_data
            && !data.is_object()
        {
            p.push("mmds_data", "must be a JSON object");
        }
    }

    fn check_observability(&self, p: &mut Problems) {
        if let Some(l) = &self.logger {
            if let Some(path) = &l.log_path {
                check_host_path("logger.log_path", path, p);
            }
            if l.module.as_deref().is_some_and(|m| m.trim().is_empty()) {
                p.push("logger.module", "must not be empty");
            }
        }
        if let Some(m) = &self.metrics {
            check_host_path("metrics.metrics_path", &m.metrics_path, p);
        }
        if let Some(e) = &self.entropy
            && let Some(rl) = &e.rate_limiter
        {
            rl.check("entropy.rate_limiter", p);
        }
        if let Some(s) = &self.serial {
            if let Some(path) = &s.serial_out_path {
                check_host_path("serial.serial_out_path", path, p);
            }
            if let Some(b) = &s.rate_limiter {
                b.check("serial.rate_limiter", p);
            }
        }
    }

    fn check_memory_hotplug(&self, p: &mut Problems) {
        let Some(h) = &self.memory_hotplug else {
            return;
        };
        let block = h
            .block_size_mib
            .unwrap_or(MemoryHotplug::DEFAULT_BLOCK_SIZE_MIB);
        let slot = h
            .slot_size_mib
            .unwrap_or(MemoryHotplug::DEFAULT_SLOT_SIZE_MIB);
        let block_ok = block >= MemoryHotplug::DEFAULT_BLOCK_SIZE_MIB && block.is_power_of_two();
        if !block_ok {
            p.push(
                "memory_hotplug.block_size_mib",
                format!("{block} MiB must be a power of two of at least 2 MiB"),
            );
        }
        let slot_ok = slot >= MemoryHotplug::DEFAULT_SLOT_SIZE_MIB;
        if !slot_ok {
            p.push(
                "memory_hotplug.slot_size_mib",
                format!("{slot} MiB is below the minimum of 128 MiB"),
            );
        } else if block_ok && !slot.is_multiple_of(block) {
            p.push(
                "memory_hotplug.slot_size_mib",
                format!("{slot} MiB is not a multiple of the {block} MiB block size"),
            );
        }
        // The total is measured in slots; with an invalid slot size only the slot is reported.
        if !slot_ok {
            return;
        }
        if h.total_size_mib < slot {
            p.push(
                "memory_hotplug.total_size_mib",
                format!("{} MiB is less than one {slot} MiB slot", h.total_size_mib),
            );
        } else if !h.total_size_mib.is_multiple_of(slot) {
            p.push(
                "memory_hotplug.total_size_mib",
                format!(
                    "{} MiB is not a multiple of the {slot} MiB slot size",
                    h.total_size_mib
                ),
            );
        }
    }

    /// Problems that only matter when payloads are built: values the runtime fills in later.
    pub(crate) fn check_complete(&self, p: &mut Problems) {
        for (i, n) in self.network_interfaces.iter().enumerate() {
            if n.host_dev_name.is_none() {
                p.push(
                    format!("network_interfaces[{i}].host_dev_name"),
                    "is required to build the Firecracker request (networking fills it in)",
                );
            }
        }
        if let Some(v) = &self.vsock
            && v.uds_path.is_none()
        {
            p.push(
                "vsock.uds_path",
                "is required to build the Firecracker request (the runtime fills it in)",
            );
        }
    }
}
