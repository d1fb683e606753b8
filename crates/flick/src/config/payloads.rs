//! Firecracker request payloads built from a validated [`VmConfig`](super::VmConfig), and the
//! order they are sent in.

use http::Method;
use serde::Serialize;
use serde_json::Value;

use crate::api::models;

/// One request to Firecracker's API: method, path and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiCall {
    /// HTTP method (`PUT` for pre-boot configuration, `PATCH` for updates).
    pub method: Method,
    /// Request path, such as `/drives/rootfs`.
    pub path: String,
    /// JSON body.
    pub body: Value,
}

impl ApiCall {
    /// A `PUT` of `body` to `path`.
    pub fn put(path: impl Into<String>, body: &impl Serialize) -> Self {
        Self::new(Method::PUT, path, body)
    }

    /// A `PATCH` of `body` to `path`.
    pub fn patch(path: impl Into<String>, body: &impl Serialize) -> Self {
        Self::new(Method::PATCH, path, body)
    }

    fn new(method: Method, path: impl Into<String>, body: &impl Serialize) -> Self {
        Self {
            method,
            path: path.into(),
            // The wire models serialize to JSON unless a path is not UTF-8, which validation
            // rules out; a body that still cannot be serialized becomes `null`, which
            // Firecracker rejects with a 400 instead of flick panicking.
            body: serde_json::to_value(body).unwrap_or(Value::Null),
        }
    }
}

/// Every pre-boot payload of one VM, one field per Firecracker resource.
///
/// Built by [`VmConfig::to_payloads`](super::VmConfig::to_payloads); [`requests`](Self::requests)
/// gives the sequence the lifecycle sends.
#[derive(Debug, Clone, PartialEq)]
pub struct FirecrackerPayloads {
    /// `PUT /logger`.
    pub logger: Option<models::Logger>,
    /// `PUT /metrics`.
    pub metrics: Option<models::Metrics>,
    /// `PUT /machine-config`.
    pub machine_config: models::MachineConfiguration,
    /// `PUT /cpu-config`.
    pub cpu_config: Option<models::CpuConfig>,
    /// `PUT /boot-source`.
    pub boot_source: models::BootSource,
    /// `PUT /drives/{drive_id}`, in configuration order.
    pub drives: Vec<models::Drive>,
    /// `PUT /pmem/{id}`, in configuration order.
    pub pmem: Vec<models::Pmem>,
    /// `PUT /network-interfaces/{iface_id}`, in configuration order.
    pub network_interfaces: Vec<models::NetworkInterface>,
    /// `PUT /vsock`.
    pub vsock: Option<models::Vsock>,
    /// `PUT /balloon`.
    pub balloon: Option<models::Balloon>,
    /// `PUT /entropy`.
    pub entropy: Option<models::EntropyDevice>,
    /// `PUT /serial`.
    pub serial: Option<models::SerialDevice>,
    /// `PUT /hotplug/memory`.
    pub memory_hotplug: Option<models::MemoryHotplugConfig>,
    /// `PUT /mmds/config` (after the interfaces it names).
    pub mmds_config: Option<models::MmdsConfig>,
    /// `PUT /mmds`: the initial metadata store.
    pub mmds_data: Option<Value>,
}

impl FirecrackerPayloads {
    /// The `PUT` sequence, in the order Firecracker needs: logger and metrics first (so the
    /// rest is logged), machine and CPU config, boot source, block, pmem and network devices,
    /// vsock, balloon (after the memory size it is checked against), entropy, serial, memory
    /// hotplug, then MMDS config (after the interfaces it names) and MMDS data.
    #[must_use]
    pub fn requests(&self) -> Vec<ApiCall> {
        let mut out = Vec::new();
        if let Some(l) = &self.logger {
            out.push(ApiCall::put("/logger", l));
        }
        if let Some(m) = &self.metrics {
            out.push(ApiCall::put("/metrics", m));
        }
        out.push(ApiCall::put("/machine-config", &self.machine_config));
        if let Some(c) = &self.cpu_config {
            out.push(ApiCall::put("/cpu-config", c));
        }
        out.push(ApiCall::put("/boot-source", &self.boot_source));
        for d in &self.drives {
            out.push(ApiCall::put(format!("/drives/{}", d.drive_id), d));
        }
        for d in &self.pmem {
            out.push(ApiCall::put(format!("/pmem/{}", d.id), d));
        }
        for n in &self.network_interfaces {
            out.push(ApiCall::put(
                format!("/network-interfaces/{}", n.iface_id),
                n,
            ));
        }
        if let Some(v) = &self.vsock {
            out.push(ApiCall::put("/vsock", v));
        }
        if let Some(b) = &self.balloon {
            out.push(ApiCall::put("/balloon", b));
        }
        if let Some(e) = &self.entropy {
            out.push(ApiCall::put("/entropy", e));
        }
        if let Some(s) = &self.serial {
            out.push(ApiCall::put("/serial", s));
        }
        if let Some(h) = &self.memory_hotplug {
            out.push(ApiCall::put("/hotplug/memory", h));
        }
        if let Some(m) = &self.mmds_config {
            out.push(ApiCall::put("/mmds/config", m));
        }
        if let Some(d) = &self.mmds_data {
            out.push(ApiCall::put("/mmds", d));
        }
        out
    }
}
