//! Firecracker v1.16.1 wire models, one type per definition of the spec.
//!
//! These mirror Firecracker's JSON exactly (field names, optionality, enum spellings). They are
//! not the user-facing configuration: [`crate::config`] validates a
//! [`VmConfig`](crate::config::VmConfig) and converts it into these. Optional fields are omitted
//! from the JSON when `None`, so a payload carries only what the caller set. PUT and PATCH
//! shapes are separate types (`Drive` vs [`PartialDrive`]) as in Firecracker itself.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `GET /`: general information about the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Application name (`Firecracker`).
    pub app_name: String,
    /// Instance id (`--id`, `anonymous-instance` by default).
    pub id: String,
    /// Detailed state.
    pub state: InstanceState,
    /// VMM version.
    pub vmm_version: String,
}

/// The instance state as Firecracker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Not booted yet (pre-boot phase).
    #[serde(rename = "Not started")]
    NotStarted,
    /// Booted and running.
    Running,
    /// Booted and paused.
    Paused,
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    /// Build version, such as `1.16.1`.
    pub firecracker_version: String,
}

/// `PUT /actions` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    /// The action.
    pub action_type: ActionType,
}

/// Synchronous actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Flush the metrics file (post-boot).
    FlushMetrics,
    /// Boot the microVM.
    InstanceStart,
    /// Send Ctrl+Alt+Del to the guest (x86_64), which a guest with `reboot=k` turns into an exit.
    SendCtrlAltDel,
}

/// `PUT /balloon` body and `GET /balloon` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balloon {
    /// Target balloon size in MiB.
    pub amount_mib: u32,
    /// Deflate when the guest is under memory pressure.
    pub deflate_on_oom: bool,
    /// Statistics refresh interval in seconds; 0 disables statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_polling_interval_s: Option<u32>,
    /// Free page hinting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_page_hinting: Option<bool>,
    /// Free page reporting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_page_reporting: Option<bool>,
}

/// `PATCH /balloon` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonUpdate {
    /// New target size in MiB.
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStatsUpdate {
    /// New polling interval in seconds.
    pub stats_polling_interval_s: u32,
}

/// `PATCH /balloon/hinting/start` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStartCmd {
    /// Acknowledge automatically when the guest reports it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledge_on_stop: Option<bool>,
}

/// `GET /balloon/hinting/status` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonHintingStatus {
    /// Last command issued by the host.
    pub host_cmd: u64,
    /// Last command provided by the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_cmd: Option<u64>,
}

/// `GET /balloon/statistics` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Field meanings are Firecracker's; see its spec.
pub struct BalloonStats {
    pub target_pages: u64,
    pub actual_pages: u64,
    pub target_mib: u64,
    pub actual_mib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

/// `PUT /boot-source` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    /// Host path of the uncompressed kernel (vmlinux).
    pub kernel_image_path: PathBuf,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of the initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

/// Static CPU templates (deprecated by Firecracker in favour of [`CpuConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    None,
}

/// `PUT /cpu-config` body: a custom CPU template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuConfig {
    /// KVM capabilities to add (`"121"`) or remove (`"!121"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm_capabilities: Option<Vec<String>>,
    /// CPUID leaf modifiers (x86_64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuid_modifiers: Option<Vec<CpuidLeafModifier>>,
    /// MSR modifiers (x86_64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msr_modifiers: Option<Vec<MsrModifier>>,
    /// Register modifiers (aarch64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reg_modifiers: Option<Vec<ArmRegisterModifier>>,
    /// vCPU feature modifiers (aarch64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_features: Option<Vec<VcpuFeatures>>,
}

/// A CPUID leaf/subleaf modifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidLeafModifier {
    /// Leaf index as a hex, binary or decimal string.
    pub leaf: String,
    /// Subleaf index as a hex, binary or decimal string.
    pub subleaf: String,
    /// KVM feature flags.
    pub flags: i32,
    /// Register modifiers.
    pub modifiers: Vec<CpuidRegisterModifier>,
}

/// A CPUID register modifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidRegisterModifier {
    /// `eax`, `ebx`, `ecx` or `edx`.
    pub register: CpuidRegister,
    /// `0b` followed by 32 characters of `0`, `1` or `x`.
    pub bitmap: String,
}

/// CPUID registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum CpuidRegister {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// A model-specific register modifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsrModifier {
    /// MSR address as a string.
    pub addr: String,
    /// `0b` followed by 64 characters.
    pub bitmap: String,
}

/// An aarch64 register modifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmRegisterModifier {
    /// Register address as a string.
    pub addr: String,
    /// `0b` followed by up to 128 characters.
    pub bitmap: String,
}

/// An aarch64 vCPU feature modifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuFeatures {
    /// Index in `kvm_vcpu_init.features`.
    pub index: i32,
    /// `0b` followed by 32 characters.
    pub bitmap: String,
}

/// Block device caching strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum CacheType {
    Unsafe,
    Writeback,
}

/// Block device I/O engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum IoEngine {
    Sync,
    Async,
}

/// `PUT /drives/{drive_id}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Drive id (also in the URL).
    pub drive_id: String,
    /// Partition UUID of the root partition (root devices only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Whether this is the root device.
    pub is_root_device: bool,
    /// Caching strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// Read-only block device (virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Backing file (virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// Rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// I/O engine (virtio-block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// vhost-user-block backend socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// `PATCH /drives/{drive_id}` body (post-boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialDrive {
    /// Drive id.
    pub drive_id: String,
    /// New backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// New rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /pmem/{id}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pmem {
    /// Device id.
    pub id: String,
    /// Backing file.
    pub path_on_host: PathBuf,
    /// Root device flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device: Option<bool>,
    /// Map read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PATCH /pmem/{id}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialPmem {
    /// Device id.
    pub id: String,
    /// New rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// Logger levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
    Trace,
    Off,
}

/// `PUT /logger` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    /// Level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// File or named pipe for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Print the level on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Print the source location on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log this module path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// Huge page backing of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Normal 4 KiB pages.
    None,
    /// 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    Huge2M,
}

/// `PUT /machine-config` body and `GET /machine-config` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    /// vCPUs, 1..=32.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading (x86_64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Dirty page tracking (needed for diff snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Static CPU template (deprecated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Huge pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

/// `PATCH /machine-config` body: only the fields to change (pre-boot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Same fields as `MachineConfiguration`, all optional.
pub struct MachineConfigurationUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

/// `PUT /metrics` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// File or named pipe the JSON metrics are flushed to.
    pub metrics_path: PathBuf,
}

/// MMDS versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    /// IMDSv1-style, no session token.
    V1,
    /// IMDSv2-style, session tokens required.
    V2,
}

/// `PUT /mmds/config` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmdsConfig {
    /// Version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<MmdsVersion>,
    /// Interfaces that may reach MMDS.
    pub network_interfaces: Vec<String>,
    /// Link-local address MMDS answers on (169.254.169.254 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<Ipv4Addr>,
    /// Answer `text/plain` regardless of `Accept`, as EC2 IMDS does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_compat: Option<bool>,
}

/// `PUT /network-interfaces/{iface_id}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Interface id (also in the URL).
    pub iface_id: String,
    /// Host TAP device name.
    pub host_dev_name: String,
    /// Guest MAC address.
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

/// `PATCH /network-interfaces/{iface_id}` body (post-boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialNetworkInterface {
    /// Interface id.
    pub iface_id: String,
    /// New receive rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// New transmit rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// An I/O rate limiter: independent bandwidth and operations buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiter {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// A token bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    /// Capacity in tokens.
    pub size: u64,
    /// Initial extra burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill `size` tokens.
    pub refill_time: u64,
}

/// Snapshot kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All guest memory.
    Full,
    /// Only memory dirtied since the last snapshot (needs dirty page tracking).
    Diff,
}

/// `PUT /snapshot/create` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    /// Where the guest memory goes.
    pub mem_file_path: PathBuf,
    /// Where the microVM state goes.
    pub snapshot_path: PathBuf,
    /// Full (default) or Diff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
}

/// Memory backends for snapshot load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// A memory file.
    File,
    /// A userfaultfd handler listening on a Unix socket.
    Uffd,
}

/// Where guest memory comes from on snapshot load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    /// Backend kind.
    pub backend_type: MemoryBackendType,
    /// Memory file or UFFD socket.
    pub backend_path: PathBuf,
}

/// Replaces a network interface's TAP on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    /// Interface id as in the snapshot.
    pub iface_id: String,
    /// New TAP.
    pub host_dev_name: String,
}

/// Replaces the vsock UDS path on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    /// New UDS path.
    pub uds_path: PathBuf,
}

/// `PUT /snapshot/load` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    /// MicroVM state file.
    pub snapshot_path: PathBuf,
    /// Memory backend (preferred over `mem_file_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Deprecated memory file path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<PathBuf>,
    /// Dirty page tracking after restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Deprecated spelling of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Resume right after loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// TAP overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// Vsock UDS override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance kvmclock by the wall-clock time since the snapshot (x86_64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
}

/// Desired microVM run state for `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Pause the vCPUs.
    Paused,
    /// Resume the vCPUs.
    Resumed,
}

/// `PATCH /vm` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// Desired state.
    pub state: VmState,
}

/// `PUT /entropy` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntropyDevice {
    /// Rate limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /serial` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDevice {
    /// File or named pipe the serial output goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<PathBuf>,
    /// Output bandwidth limit (excess is dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<TokenBucket>,
}

/// `PUT /hotplug/memory` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryHotplugConfig {
    /// Total hotpluggable memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size_mib: Option<u64>,
    /// Slot size in MiB (≥ 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_size_mib: Option<u64>,
    /// Block size in MiB (≥ 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size_mib: Option<u64>,
}

/// `PATCH /hotplug/memory` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryHotplugSizeUpdate {
    /// New target size in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_size_mib: Option<u64>,
}

/// `GET /hotplug/memory` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct MemoryHotplugStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_size_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugged_size_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_size_mib: Option<u64>,
}

/// `PUT /vsock` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// Guest CID (≥ 3).
    pub guest_cid: u32,
    /// Host-side Unix socket Firecracker listens on.
    pub uds_path: PathBuf,
    /// Deprecated id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `GET /vm/config` answer: every configured resource. Firecracker answers `null` for unset
/// resources, so every field is optional here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // One field per resource, named as Firecracker names it.
pub struct FullVmConfiguration {
    #[serde(default)]
    pub balloon: Option<Balloon>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub drives: Vec<Drive>,
    #[serde(default, rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    #[serde(default, rename = "cpu-config")]
    pub cpu_config: Option<CpuConfig>,
    #[serde(default)]
    pub logger: Option<Logger>,
    #[serde(default, rename = "machine-config")]
    pub machine_config: Option<MachineConfiguration>,
    #[serde(default)]
    pub metrics: Option<Metrics>,
    #[serde(default, rename = "memory-hotplug")]
    pub memory_hotplug: Option<MemoryHotplugConfig>,
    #[serde(default, rename = "mmds-config")]
    pub mmds_config: Option<MmdsConfig>,
    #[serde(
        default,
        rename = "network-interfaces",
        deserialize_with = "null_as_empty"
    )]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub pmem: Vec<Pmem>,
    #[serde(default)]
    pub vsock: Option<Vsock>,
    #[serde(default)]
    pub entropy: Option<EntropyDevice>,
}

fn null_as_empty<'de, D, T>(de: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(de)?.unwrap_or_default())
}

/// Firecracker's error body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultMessage {
    /// What went wrong, as Firecracker words it.
    #[serde(default)]
    pub fault_message: String,
}
