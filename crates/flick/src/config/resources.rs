//! The user-facing resource types: one per thing Firecracker accepts before boot.
//!
//! Field names follow Firecracker's (so its documentation applies); enum values are written in
//! `snake_case` in flick's JSON, and Firecracker's own spelling is accepted as an alias.
//! Booleans are plain `bool`s. Flags that describe a device (`is_root_device`, `is_read_only`,
//! `root_device`, `read_only`, `deflate_on_oom`) are always sent; opt-in features (`smt`,
//! `track_dirty_pages`, `free_page_hinting`, `free_page_reporting`, `imds_compat`,
//! `show_level`, `show_log_origin`) are sent only when `true`, Firecracker's default being
//! `false`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::rate_limiter::{RateLimiter, TokenBucket};
use crate::api::models;

fn is_false(b: &bool) -> bool {
    !*b
}

/// Kernel, command line and optional initrd (`PUT /boot-source`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the uncompressed kernel image (`vmlinux`).
    pub kernel_image_path: PathBuf,
    /// Kernel command line (at most 2047 bytes; Firecracker appends its own device entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of an initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

impl BootSource {
    /// A boot source with only a kernel.
    pub fn new(kernel_image_path: impl Into<PathBuf>) -> Self {
        Self {
            kernel_image_path: kernel_image_path.into(),
            boot_args: None,
            initrd_path: None,
        }
    }

    pub(crate) fn to_wire(&self) -> models::BootSource {
        models::BootSource {
            kernel_image_path: self.kernel_image_path.clone(),
            boot_args: self.boot_args.clone(),
            initrd_path: self.initrd_path.clone(),
        }
    }
}

/// Static CPU templates (deprecated by Firecracker in favour of [`CpuConfig`](super::CpuConfig)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum CpuTemplate {
    #[serde(alias = "C3")]
    C3,
    #[serde(alias = "T2")]
    T2,
    #[serde(alias = "T2S")]
    T2s,
    #[serde(alias = "T2CL")]
    T2cl,
    #[serde(alias = "T2A")]
    T2a,
    #[serde(alias = "V1N1")]
    V1n1,
    /// No template.
    #[serde(alias = "None")]
    None,
}

impl CpuTemplate {
    pub(crate) fn to_wire(self) -> models::CpuTemplate {
        match self {
            Self::C3 => models::CpuTemplate::C3,
            Self::T2 => models::CpuTemplate::T2,
            Self::T2s => models::CpuTemplate::T2S,
            Self::T2cl => models::CpuTemplate::T2CL,
            Self::T2a => models::CpuTemplate::T2A,
            Self::V1n1 => models::CpuTemplate::V1N1,
            Self::None => models::CpuTemplate::None,
        }
    }
}

/// How guest memory is backed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Normal 4 KiB pages.
    #[default]
    #[serde(rename = "none", alias = "None")]
    None,
    /// 2 MiB hugetlbfs pages (memory must be a multiple of 2 MiB).
    #[serde(rename = "2m", alias = "2M")]
    Huge2M,
}

/// vCPUs, memory and CPU features (`PUT /machine-config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs, 1..=32 (1 or even with SMT).
    #[serde(default = "default_vcpus")]
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    #[serde(default = "default_mem")]
    pub mem_size_mib: u32,
    /// Simultaneous multithreading (x86_64 only).
    #[serde(default, skip_serializing_if = "is_false")]
    pub smt: bool,
    /// Static CPU template (deprecated; prefer `cpu_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Dirty page tracking, needed for diff snapshots.
    #[serde(default, skip_serializing_if = "is_false")]
    pub track_dirty_pages: bool,
    /// Huge page backing.
    #[serde(default, skip_serializing_if = "is_default_pages")]
    pub huge_pages: HugePages,
}

fn default_vcpus() -> u8 {
    1
}

fn default_mem() -> u32 {
    128
}

fn is_default_pages(h: &HugePages) -> bool {
    *h == HugePages::None
}

impl Default for MachineConfig {
    /// Firecracker's defaults: 1 vCPU, 128 MiB.
    fn default() -> Self {
        Self {
            vcpu_count: default_vcpus(),
            mem_size_mib: default_mem(),
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

impl MachineConfig {
    pub(crate) fn to_wire(&self) -> models::MachineConfiguration {
        models::MachineConfiguration {
            vcpu_count: self.vcpu_count,
            mem_size_mib: self.mem_size_mib,
            smt: self.smt.then_some(true),
            track_dirty_pages: self.track_dirty_pages.then_some(true),
            cpu_template: self.cpu_template.map(CpuTemplate::to_wire),
            huge_pages: match self.huge_pages {
                HugePages::None => None,
                HugePages::Huge2M => Some(models::HugePages::Huge2M),
            },
        }
    }
}

/// Block device caching strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheType {
    /// Flushes are ignored (Firecracker's default).
    #[serde(alias = "Unsafe")]
    Unsafe,
    /// Flushes reach the backing file.
    #[serde(alias = "Writeback")]
    Writeback,
}

/// Block device I/O engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoEngine {
    /// Blocking I/O (Firecracker's default).
    #[serde(alias = "Sync")]
    Sync,
    /// io_uring (host kernels newer than 5.10.51).
    #[serde(alias = "Async")]
    Async,
}

/// A block device (`PUT /drives/{drive_id}`): either virtio-block backed by a file
/// (`path_on_host`) or vhost-user-block backed by a backend socket (`socket`), never both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Id (ASCII letters, digits, `_`), unique among drives.
    pub drive_id: String,
    /// Backing file (virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// The guest boots from this device (at most one root among drives and pmem).
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_root_device: bool,
    /// Read-only (virtio-block).
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_read_only: bool,
    /// Partition UUID of the root partition (root device only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Caching strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// I/O engine (virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Rate limiter (virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// vhost-user-block backend socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// flick only, never sent to Firecracker: the runtime stages a private copy of the file
    /// for this VM and discards it afterwards. `None` lets the runtime choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<bool>,
}

impl Drive {
    /// A writable virtio-block data drive.
    pub fn new(drive_id: impl Into<String>, path_on_host: impl Into<PathBuf>) -> Self {
        Self {
            drive_id: drive_id.into(),
            path_on_host: Some(path_on_host.into()),
            is_root_device: false,
            is_read_only: false,
            partuuid: None,
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
            socket: None,
            ephemeral: None,
        }
    }

    /// A writable virtio-block root drive.
    pub fn root(drive_id: impl Into<String>, path_on_host: impl Into<PathBuf>) -> Self {
        Self {
            is_root_device: true,
            ..Self::new(drive_id, path_on_host)
        }
    }

    /// A vhost-user-block drive served by the backend listening on `socket`.
    pub fn vhost_user(drive_id: impl Into<String>, socket: impl Into<PathBuf>) -> Self {
        Self {
            path_on_host: None,
            socket: Some(socket.into()),
            ..Self::new(drive_id, PathBuf::new())
        }
    }

    /// Marks the drive read-only.
    #[must_use]
    pub fn read_only(mut self) -> Self {
        self.is_read_only = true;
        self
    }

    /// Sets flick's `ephemeral` flag.
    #[must_use]
    pub fn ephemeral(mut self, ephemeral: bool) -> Self {
        self.ephemeral = Some(ephemeral);
        self
    }

    /// Sets the rate limiter.
    #[must_use]
    pub fn with_rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.rate_limiter = Some(limiter);
        self
    }

    /// Whether this is a vhost-user-block drive.
    #[must_use]
    pub fn is_vhost_user(&self) -> bool {
        self.socket.is_some()
    }

    pub(crate) fn to_wire(&self) -> models::Drive {
        let vhost = self.is_vhost_user();
        models::Drive {
            drive_id: self.drive_id.clone(),
            partuuid: self.partuuid.clone(),
            is_root_device: self.is_root_device,
            cache_type: self.cache_type.map(|c| match c {
                CacheType::Unsafe => models::CacheType::Unsafe,
                CacheType::Writeback => models::CacheType::Writeback,
            }),
            // The spec requires `is_read_only` for virtio-block and forbids it for vhost-user.
            is_read_only: (!vhost).then_some(self.is_read_only),
            path_on_host: self.path_on_host.clone(),
            rate_limiter: self.rate_limiter.as_ref().map(RateLimiter::to_wire),
            io_engine: self.io_engine.map(|e| match e {
                IoEngine::Sync => models::IoEngine::Sync,
                IoEngine::Async => models::IoEngine::Async,
            }),
            socket: self.socket.clone(),
        }
    }
}

/// A virtio-pmem device (`PUT /pmem/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pmem {
    /// Id (ASCII letters, digits, `_`), unique among pmem devices.
    pub id: String,
    /// Backing file.
    pub path_on_host: PathBuf,
    /// The guest boots from this device (at most one root among drives and pmem).
    #[serde(default, skip_serializing_if = "is_false")]
    pub root_device: bool,
    /// Map the file read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl Pmem {
    /// A writable, non-root pmem device.
    pub fn new(id: impl Into<String>, path_on_host: impl Into<PathBuf>) -> Self {
        Self {
            id: id.into(),
            path_on_host: path_on_host.into(),
            root_device: false,
            read_only: false,
            rate_limiter: None,
        }
    }

    pub(crate) fn to_wire(&self) -> models::Pmem {
        models::Pmem {
            id: self.id.clone(),
            path_on_host: self.path_on_host.clone(),
            root_device: Some(self.root_device),
            read_only: Some(self.read_only),
            rate_limiter: self.rate_limiter.as_ref().map(RateLimiter::to_wire),
        }
    }
}

/// A virtio-net interface (`PUT /network-interfaces/{iface_id}`).
///
/// `host_dev_name` and `guest_mac` are optional here because flick's networking can allocate
/// them; a config is only converted into payloads once the TAP name is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Id (ASCII letters, digits, `_`), unique among interfaces.
    pub iface_id: String,
    /// Host TAP device (1..=15 bytes, no `/`, `:`, whitespace or NUL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_dev_name: Option<String>,
    /// Guest MAC address (`06:00:ac:10:00:02`), unicast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU advertised to the guest, 68..=65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Receive rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Transmit rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl NetworkInterface {
    /// An interface whose TAP and MAC are filled in later.
    pub fn new(iface_id: impl Into<String>) -> Self {
        Self {
            iface_id: iface_id.into(),
            host_dev_name: None,
            guest_mac: None,
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }
    }

    /// An interface on an existing TAP.
    pub fn with_tap(iface_id: impl Into<String>, host_dev_name: impl Into<String>) -> Self {
        Self {
            host_dev_name: Some(host_dev_name.into()),
            ..Self::new(iface_id)
        }
    }

    /// Sets the guest MAC.
    #[must_use]
    pub fn with_mac(mut self, mac: impl Into<String>) -> Self {
        self.guest_mac = Some(mac.into());
        self
    }

    /// Sets the MTU.
    #[must_use]
    pub fn with_mtu(mut self, mtu: u16) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Converts; the caller has checked `host_dev_name` is present.
    pub(crate) fn to_wire(&self) -> models::NetworkInterface {
        models::NetworkInterface {
            iface_id: self.iface_id.clone(),
            host_dev_name: self.host_dev_name.clone().unwrap_or_default(),
            guest_mac: self.guest_mac.clone(),
            mtu: self.mtu,
            rx_rate_limiter: self.rx_rate_limiter.as_ref().map(RateLimiter::to_wire),
            tx_rate_limiter: self.tx_rate_limiter.as_ref().map(RateLimiter::to_wire),
        }
    }
}

/// A virtio-vsock device (`PUT /vsock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Guest context id, at least 3 (0–2 are reserved) and not `u32::MAX`.
    pub guest_cid: u32,
    /// Host Unix socket Firecracker listens on. `None` lets the runtime put it in the VM's
    /// runtime directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uds_path: Option<PathBuf>,
}

impl Vsock {
    /// A vsock device whose socket path the runtime chooses.
    #[must_use]
    pub fn new(guest_cid: u32) -> Self {
        Self {
            guest_cid,
            uds_path: None,
        }
    }

    /// Converts; the caller has checked `uds_path` is present.
    pub(crate) fn to_wire(&self) -> models::Vsock {
        models::Vsock {
            guest_cid: self.guest_cid,
            uds_path: self.uds_path.clone().unwrap_or_default(),
            vsock_id: None,
        }
    }
}

/// A memory balloon (`PUT /balloon`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// Target size in MiB (at most the guest memory).
    pub amount_mib: u32,
    /// Deflate when the guest runs low on memory.
    #[serde(default)]
    pub deflate_on_oom: bool,
    /// Statistics refresh interval in seconds; `None` or 0 leaves statistics off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_polling_interval_s: Option<u32>,
    /// Free page hinting.
    #[serde(default, skip_serializing_if = "is_false")]
    pub free_page_hinting: bool,
    /// Free page reporting.
    #[serde(default, skip_serializing_if = "is_false")]
    pub free_page_reporting: bool,
}

impl Balloon {
    pub(crate) fn to_wire(&self) -> models::Balloon {
        models::Balloon {
            amount_mib: self.amount_mib,
            deflate_on_oom: self.deflate_on_oom,
            stats_polling_interval_s: self.stats_polling_interval_s,
            free_page_hinting: self.free_page_hinting.then_some(true),
            free_page_reporting: self.free_page_reporting.then_some(true),
        }
    }
}

/// MMDS protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MmdsVersion {
    /// No session tokens (Firecracker's default).
    #[serde(alias = "V1")]
    V1,
    /// Session tokens required (IMDSv2 style).
    #[serde(alias = "V2")]
    V2,
}

/// Microvm metadata service settings (`PUT /mmds/config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    /// Version; Firecracker defaults to V1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<MmdsVersion>,
    /// Ids of the interfaces that may reach MMDS (at least one, each configured).
    pub network_interfaces: Vec<String>,
    /// Link-local address MMDS answers on (169.254.1.0–169.254.254.255; default
    /// 169.254.169.254).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<Ipv4Addr>,
    /// Answer `text/plain` regardless of `Accept`, as EC2 IMDS does.
    #[serde(default, skip_serializing_if = "is_false")]
    pub imds_compat: bool,
}

impl MmdsConfig {
    /// MMDS V2 on the given interfaces.
    pub fn v2<I, S>(interfaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            version: Some(MmdsVersion::V2),
            network_interfaces: interfaces.into_iter().map(Into::into).collect(),
            ipv4_address: None,
            imds_compat: false,
        }
    }

    pub(crate) fn to_wire(&self) -> models::MmdsConfig {
        models::MmdsConfig {
            version: self.version.map(|v| match v {
                MmdsVersion::V1 => models::MmdsVersion::V1,
                MmdsVersion::V2 => models::MmdsVersion::V2,
            }),
            network_interfaces: self.network_interfaces.clone(),
            ipv4_address: self.ipv4_address,
            imds_compat: self.imds_compat.then_some(true),
        }
    }
}

/// Firecracker log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum LogLevel {
    #[serde(alias = "Error")]
    Error,
    #[serde(alias = "Warning")]
    Warning,
    #[serde(alias = "Info")]
    Info,
    #[serde(alias = "Debug")]
    Debug,
    #[serde(alias = "Trace")]
    Trace,
    #[serde(alias = "Off")]
    Off,
}

/// Firecracker's own log (`PUT /logger`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// Level (Firecracker's default is Info).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// File or named pipe the log goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Print the level on each line.
    #[serde(default, skip_serializing_if = "is_false")]
    pub show_level: bool,
    /// Print the source location on each line.
    #[serde(default, skip_serializing_if = "is_false")]
    pub show_log_origin: bool,
    /// Only log this module path (such as `api_server::request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl Logger {
    pub(crate) fn to_wire(&self) -> models::Logger {
        models::Logger {
            level: self.level.map(|l| match l {
                LogLevel::Error => models::LogLevel::Error,
                LogLevel::Warning => models::LogLevel::Warning,
                LogLevel::Info => models::LogLevel::Info,
                LogLevel::Debug => models::LogLevel::Debug,
                LogLevel::Trace => models::LogLevel::Trace,
                LogLevel::Off => models::LogLevel::Off,
            }),
            log_path: self.log_path.clone(),
            show_level: self.show_level.then_some(true),
            show_log_origin: self.show_log_origin.then_some(true),
            module: self.module.clone(),
        }
    }
}

/// Firecracker's metrics sink (`PUT /metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// File or named pipe the JSON metrics are flushed to.
    pub metrics_path: PathBuf,
}

impl Metrics {
    pub(crate) fn to_wire(&self) -> models::Metrics {
        models::Metrics {
            metrics_path: self.metrics_path.clone(),
        }
    }
}

/// A virtio-rng device (`PUT /entropy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    /// Rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl Entropy {
    pub(crate) fn to_wire(&self) -> models::EntropyDevice {
        models::EntropyDevice {
            rate_limiter: self.rate_limiter.as_ref().map(RateLimiter::to_wire),
        }
    }
}

/// The serial console (`PUT /serial`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serial {
    /// File or named pipe the guest's serial output goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<PathBuf>,
    /// Output bandwidth limit in bytes; excess output is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<TokenBucket>,
}

impl Serial {
    pub(crate) fn to_wire(&self) -> models::SerialDevice {
        models::SerialDevice {
            serial_out_path: self.serial_out_path.clone(),
            rate_limiter: self.rate_limiter.as_ref().map(TokenBucket::to_wire),
        }
    }
}

/// Hot-pluggable memory through virtio-mem (`PUT /hotplug/memory`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplug {
    /// Total hot-pluggable memory in MiB: at least one slot, a multiple of the slot size.
    pub total_size_mib: u64,
    /// Slot size in MiB (the host's granularity): at least 128 (the default), a multiple of
    /// the block size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_size_mib: Option<u64>,
    /// Block size in MiB (the guest's granularity): a power of two, at least 2 (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size_mib: Option<u64>,
}

impl MemoryHotplug {
    /// Firecracker's default slot size.
    pub const DEFAULT_SLOT_SIZE_MIB: u64 = 128;
    /// Firecracker's default block size.
    pub const DEFAULT_BLOCK_SIZE_MIB: u64 = 2;

    /// `total_size_mib` of hot-pluggable memory with default slot and block sizes.
    #[must_use]
    pub fn new(total_size_mib: u64) -> Self {
        Self {
            total_size_mib,
            slot_size_mib: None,
            block_size_mib: None,
        }
    }

    pub(crate) fn to_wire(&self) -> models::MemoryHotplugConfig {
        models::MemoryHotplugConfig {
            total_size_mib: Some(self.total_size_mib),
            slot_size_mib: self.slot_size_mib,
            block_size_mib: self.block_size_mib,
        }
    }
}
