//! The user-facing VM configuration, validation and conversion to Firecracker payloads.
//!
//! The flow is: build a [`VmConfig`] (in code with [`VmConfig::new`] and the `with_*`
//! builders, or from JSON), [`validate`](VmConfig::validate) it, which reports *every* problem at
//! once with a field path such as `drives[1].drive_id`, then turn it into
//! [`FirecrackerPayloads`] with [`to_payloads`](VmConfig::to_payloads). Those hold one wire model
//! ([`crate::api::models`]) per resource, and [`FirecrackerPayloads::requests`] gives the exact
//! `PUT` sequence the lifecycle sends before `InstanceStart`.
//!
//! Nothing here mutates the caller's value: conversion borrows, and
//! [`with_overrides`](VmConfig::with_overrides) (used by the runtime to point drives at staged
//! copies, interfaces at their TAPs and vsock at its socket) returns a new config.
//!
//! Some fields belong to flick, not Firecracker: [`Drive::ephemeral`] is never sent, and
//! [`NetworkInterface::host_dev_name`] / [`Vsock::uds_path`] may stay unset until networking or
//! the runtime fills them in; [`to_payloads`](VmConfig::to_payloads) insists on them.
//!
//! ```
//! use flick::config::{Drive, NetworkInterface, VmConfig, Vsock};
//!
//! let config = VmConfig::new("/images/vmlinux", "/images/rootfs.ext4")
//!     .with_boot_args("console=ttyS0 reboot=k panic=1")
//!     .with_vcpus(2)
//!     .with_memory_mib(512)
//!     .with_drive(Drive::new("data", "/images/data.img").read_only())
//!     .with_network_interface(NetworkInterface::with_tap("eth0", "tap0"))
//!     .with_vsock(Vsock::new(3));
//! // The vsock socket is still missing: validation passes, conversion insists.
//! config.validate()?;
//! let err = config.to_payloads().unwrap_err();
//! assert_eq!(err.code(), flick::ErrorCode::InvalidConfig);
//! assert_eq!(config.problems(), vec![]);
//!
//! let broken = config.clone().with_vcpus(0).with_drive(Drive::new("data", "/images/b.img"));
//! let fields: Vec<_> = broken.problems().into_iter().map(|p| p.field).collect();
//! assert_eq!(fields, ["machine_config.vcpu_count", "drives[2].drive_id"]);
//! # Ok::<(), flick::Error>(())
//! ```
//!
//! Post-boot (and pre-boot machine-config) changes have their own types in [`DriveUpdate`],
//! [`NetworkInterfaceUpdate`], [`PmemUpdate`], [`BalloonUpdate`], [`MachineConfigUpdate`] and
//! [`MemoryHotplugUpdate`].

mod check;
mod cpu;
mod payloads;
mod rate_limiter;
mod resources;
mod update;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use check::ConfigProblem;
pub use cpu::{
    ArmRegisterModifier, CpuConfig, CpuidLeafModifier, CpuidRegister, CpuidRegisterModifier,
    MsrModifier, VcpuFeatures,
};
pub use payloads::{ApiCall, FirecrackerPayloads};
pub use rate_limiter::{RateLimiter, TokenBucket};
pub use resources::{
    Balloon, BootSource, CacheType, CpuTemplate, Drive, Entropy, HugePages, IoEngine, LogLevel,
    Logger, MachineConfig, MemoryHotplug, Metrics, MmdsConfig, MmdsVersion, NetworkInterface, Pmem,
    Serial, Vsock,
};
pub use update::{
    BalloonUpdate, DriveUpdate, MachineConfigUpdate, MemoryHotplugUpdate, NetworkInterfaceUpdate,
    PmemUpdate,
};

use check::{Problems, check_host_path, check_ifname, check_socket_path, problems_to_result};

/// The id [`VmConfig::new`] gives the root drive.
pub const ROOT_DRIVE_ID: &str = "rootfs";

/// Everything Firecracker is told about one VM before it boots.
///
/// Only the boot source is required; [`MachineConfig`] defaults to Firecracker's 1 vCPU and
/// 128 MiB, and every other resource is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel, command line, initrd.
    pub boot_source: BootSource,
    /// vCPUs, memory, SMT, static CPU template, dirty pages, huge pages.
    #[serde(default)]
    pub machine_config: MachineConfig,
    /// Custom CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_config: Option<CpuConfig>,
    /// Block devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<Drive>,
    /// Persistent-memory devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pmem: Vec<Pmem>,
    /// Network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// The memory balloon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Balloon>,
    /// MMDS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmds_config: Option<MmdsConfig>,
    /// Initial MMDS contents (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmds_data: Option<Value>,
    /// Firecracker's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    /// Firecracker's metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// The entropy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<Entropy>,
    /// The serial console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<Serial>,
    /// Hot-pluggable memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_hotplug: Option<MemoryHotplug>,
}

impl VmConfig {
    /// A VM booting `kernel` with `rootfs` as its writable root drive (id [`ROOT_DRIVE_ID`]),
    /// 1 vCPU and 128 MiB.
    pub fn new(kernel: impl Into<PathBuf>, rootfs: impl Into<PathBuf>) -> Self {
        let mut config = Self::with_kernel(kernel);
        config.drives.push(Drive::root(ROOT_DRIVE_ID, rootfs));
        config
    }

    /// A VM with only a kernel (add an initrd, drives or pmem yourself).
    pub fn with_kernel(kernel: impl Into<PathBuf>) -> Self {
        Self {
            boot_source: BootSource::new(kernel),
            machine_config: MachineConfig::default(),
            cpu_config: None,
            drives: Vec::new(),
            pmem: Vec::new(),
            network_interfaces: Vec::new(),
            vsock: None,
            balloon: None,
            mmds_config: None,
            mmds_data: None,
            logger: None,
            metrics: None,
            entropy: None,
            serial: None,
            memory_hotplug: None,
        }
    }

    /// Sets the kernel command line.
    #[must_use]
    pub fn with_boot_args(mut self, args: impl Into<String>) -> Self {
        self.boot_source.boot_args = Some(args.into());
        self
    }

    /// Sets the initrd.
    #[must_use]
    pub fn with_initrd(mut self, initrd: impl Into<PathBuf>) -> Self {
        self.boot_source.initrd_path = Some(initrd.into());
        self
    }

    /// Sets the vCPU count.
    #[must_use]
    pub fn with_vcpus(mut self, vcpus: u8) -> Self {
        self.machine_config.vcpu_count = vcpus;
        self
    }

    /// Sets the memory size in MiB.
    #[must_use]
    pub fn with_memory_mib(mut self, mib: u32) -> Self {
        self.machine_config.mem_size_mib = mib;
        self
    }

    /// Replaces the whole machine config.
    #[must_use]
    pub fn with_machine_config(mut self, machine: MachineConfig) -> Self {
        self.machine_config = machine;
        self
    }

    /// Sets a custom CPU template.
    #[must_use]
    pub fn with_cpu_config(mut self, cpu: CpuConfig) -> Self {
        self.cpu_config = Some(cpu);
        self
    }

    /// Adds a drive.
    #[must_use]
    pub fn with_drive(mut self, drive: Drive) -> Self {
        self.drives.push(drive);
        self
    }

    /// Adds a pmem device.
    #[must_use]
    pub fn with_pmem(mut self, pmem: Pmem) -> Self {
        self.pmem.push(pmem);
        self
    }

    /// Adds a network interface.
    #[must_use]
    pub fn with_network_interface(mut self, iface: NetworkInterface) -> Self {
        self.network_interfaces.push(iface);
        self
    }

    /// Sets the vsock device.
    #[must_use]
    pub fn with_vsock(mut self, vsock: Vsock) -> Self {
        self.vsock = Some(vsock);
        self
    }

    /// Sets the balloon.
    #[must_use]
    pub fn with_balloon(mut self, balloon: Balloon) -> Self {
        self.balloon = Some(balloon);
        self
    }

    /// Sets the MMDS config.
    #[must_use]
    pub fn with_mmds(mut self, mmds: MmdsConfig) -> Self {
        self.mmds_config = Some(mmds);
        self
    }

    /// Sets the initial MMDS contents.
    #[must_use]
    pub fn with_mmds_data(mut self, data: Value) -> Self {
        self.mmds_data = Some(data);
        self
    }

    /// Sets the logger.
    #[must_use]
    pub fn with_logger(mut self, logger: Logger) -> Self {
        self.logger = Some(logger);
        self
    }

    /// Sets the metrics sink.
    #[must_use]
    pub fn with_metrics(mut self, metrics_path: impl Into<PathBuf>) -> Self {
        self.metrics = Some(Metrics {
            metrics_path: metrics_path.into(),
        });
        self
    }

    /// Sets the entropy device.
    #[must_use]
    pub fn with_entropy(mut self, entropy: Entropy) -> Self {
        self.entropy = Some(entropy);
        self
    }

    /// Sets the serial console.
    #[must_use]
    pub fn with_serial(mut self, serial: Serial) -> Self {
        self.serial = Some(serial);
        self
    }

    /// Sets hot-pluggable memory.
    #[must_use]
    pub fn with_memory_hotplug(mut self, hotplug: MemoryHotplug) -> Self {
        self.memory_hotplug = Some(hotplug);
        self
    }

    /// Parses a config from flick's JSON (unknown keys are refused). Parsing does not
    /// validate; call [`validate`](Self::validate) next.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidConfig`](crate::ErrorCode::InvalidConfig) whose details give the
    /// `line` and `column` serde stopped at.
    pub fn from_json(text: &str) -> crate::Result<Self> {
        serde_json::from_str(text).map_err(|err| {
            let details = serde_json::json!({ "line": err.line(), "column": err.column() });
            crate::Error::new(
                crate::ErrorCode::InvalidConfig,
                "VM config is not valid JSON for flick's schema",
            )
            .with_details(details)
            .with_source(err)
        })
    }

    /// The root device's id, if any drive or pmem device is marked root.
    #[must_use]
    pub fn root_device_id(&self) -> Option<&str> {
        self.drives
            .iter()
            .find(|d| d.is_root_device)
            .map(|d| d.drive_id.as_str())
            .or_else(|| {
                self.pmem
                    .iter()
                    .find(|d| d.root_device)
                    .map(|d| d.id.as_str())
            })
    }

    /// Every problem with this config, in field order (empty when valid). Values left for the
    /// runtime to fill in (TAP names, the vsock socket) are not problems here.
    #[must_use]
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut p = Problems::default();
        self.check(&mut p);
        p.into_vec()
    }

    /// Checks every rule and reports all problems at once.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidConfig`](crate::ErrorCode::InvalidConfig) whose message gives the
    /// count and the first problem and whose details are
    /// `{"problems": [{"field", "message"}, ...]}`.
    pub fn validate(&self) -> crate::Result<()> {
        problems_to_result("VM config", &self.problems())
    }

    /// Validates, then builds every Firecracker payload. Also requires what the runtime fills
    /// in (each interface's `host_dev_name`, the vsock `uds_path`).
    ///
    /// # Errors
    /// [`ErrorCode::InvalidConfig`](crate::ErrorCode::InvalidConfig) listing every problem.
    pub fn to_payloads(&self) -> crate::Result<FirecrackerPayloads> {
        let mut p = Problems::default();
        self.check(&mut p);
        self.check_complete(&mut p);
        p.into_result("VM config")?;
        Ok(FirecrackerPayloads {
            logger: self.logger.as_ref().map(Logger::to_wire),
            metrics: self.metrics.as_ref().map(Metrics::to_wire),
            machine_config: self.machine_config.to_wire(),
            cpu_config: self.cpu_config.as_ref().map(CpuConfig::to_wire),
            boot_source: self.boot_source.to_wire(),
            drives: self.drives.iter().map(Drive::to_wire).collect(),
            pmem: self.pmem.iter().map(Pmem::to_wire).collect(),
            network_interfaces: self
                .network_interfaces
                .iter()
                .map(NetworkInterface::to_wire)
                .collect(),
            vsock: self.vsock.as_ref().map(Vsock::to_wire),
            balloon: self.balloon.as_ref().map(Balloon::to_wire),
            entropy: self.entropy.as_ref().map(Entropy::to_wire),
            serial: self.serial.as_ref().map(Serial::to_wire),
            memory_hotplug: self.memory_hotplug.as_ref().map(MemoryHotplug::to_wire),
            mmds_config: self.mmds_config.as_ref().map(MmdsConfig::to_wire),
            mmds_data: self.mmds_data.clone(),
        })
    }

    /// A new config with host-side locations replaced (drive files staged into the runtime
    /// directory, TAP names, the vsock socket, kernel and initrd); `self` is untouched.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidConfig`](crate::ErrorCode::InvalidConfig) when an override names a
    /// drive or interface the config does not have, targets a vhost-user drive, or carries an
    /// invalid path or name; every such problem is listed.
    pub fn with_overrides(&self, overrides: &Overrides) -> crate::Result<VmConfig> {
        let mut p = Problems::default();
        let mut out = self.clone();
        for (id, path) in &overrides.drive_paths {
            let at = format!("overrides.drive_paths[{id:?}]");
            check_host_path(&at, path, &mut p);
            match out.drives.iter_mut().find(|d| &d.drive_id == id) {
                None => p.push(at, format!("no drive has id {id:?}")),
                Some(d) if d.is_vhost_user() => {
                    p.push(at, format!("drive {id:?} is vhost-user and has no file"));
                }
                Some(d) => d.path_on_host = Some(path.clone()),
            }
        }
        for (id, name) in &overrides.host_dev_names {
            let at = format!("overrides.host_dev_names[{id:?}]");
            check_ifname(&at, name, &mut p);
            match out
                .network_interfaces
                .iter_mut()
                .find(|n| &n.iface_id == id)
            {
                None => p.push(at, format!("no network interface has id {id:?}")),
                Some(n) => n.host_dev_name = Some(name.clone()),
            }
        }
        for (id, mac) in &overrides.guest_macs {
            let at = format!("overrides.guest_macs[{id:?}]");
            check::check_mac(&at, mac, &mut p);
            match out
                .network_interfaces
                .iter_mut()
                .find(|n| &n.iface_id == id)
            {
                None => p.push(at, format!("no network interface has id {id:?}")),
                Some(n) => n.guest_mac = Some(mac.clone()),
            }
        }
        if let Some(path) = &overrides.vsock_uds_path {
            check_socket_path("overrides.vsock_uds_path", path, &mut p);
            match out.vsock.as_mut() {
                None => p.push("overrides.vsock_uds_path", "the config has no vsock device"),
                Some(v) => v.uds_path = Some(path.clone()),
            }
        }
        if let Some(path) = &overrides.kernel_image_path {
            check_host_path("overrides.kernel_image_path", path, &mut p);
            out.boot_source.kernel_image_path = path.clone();
        }
        if let Some(path) = &overrides.initrd_path {
            check_host_path("overrides.initrd_path", path, &mut p);
            if out.boot_source.initrd_path.is_none() {
                p.push("overrides.initrd_path", "the config has no initrd");
            }
            out.boot_source.initrd_path = Some(path.clone());
        }
        p.into_result("config overrides")?;
        Ok(out)
    }
}

/// Host-side replacements the runtime applies with [`VmConfig::with_overrides`]. Maps are keyed
/// by drive or interface id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// New `path_on_host` per drive id (a staged copy, for example).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drive_paths: BTreeMap<String, PathBuf>,
    /// New `host_dev_name` per interface id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_dev_names: BTreeMap<String, String>,
    /// New `guest_mac` per interface id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub guest_macs: BTreeMap<String, String>,
    /// New vsock `uds_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_uds_path: Option<PathBuf>,
    /// New kernel path (inside a jail, for example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_image_path: Option<PathBuf>,
    /// New initrd path (the config must have an initrd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

#[cfg(test)]
mod tests;
