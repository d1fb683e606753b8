//! The double's state machine: routing, body validation and every API action.
//!
//! A request goes through the same steps, in the same order, as in Firecracker v1.16.1:
//!
//! 1. **Route** (in `route`) on method, first path segment and whether a body is present
//!    (`Invalid request method and/or path: GET no-such-endpoint.`, `Empty PUT request.`,
//!    `GET request cannot have a body.`), then path ids (`The ID cannot be empty.`).
//! 2. **Parse** the body: invalid JSON and every spec violation (unknown field, missing required
//!    field, wrong type, bad enum value, out of range) become
//!    `An error occurred when deserializing the json body of a request: ....`; then the path id
//!    is compared with the body id.
//! 3. **Phase**: pre-boot-only actions after `InstanceStart` answer
//!    `The requested operation is not supported after starting the microVM.`, post-boot-only
//!    actions before it `... before starting the microVM.`
//! 4. **Act**: check files, store the configuration, write snapshot/log/metrics/serial files,
//!    bind the vsock socket, and answer 204 / 200 or 400 with Firecracker's fault text.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::log::{Level, Logger};
use super::route::{Action, RequestError, route};
use super::vsock::{self, PortMap};
use crate::spec::Spec;

/// The Firecracker version the double imitates.
pub const VERSION: &str = "1.16.1";

/// The line written to the serial output after `InstanceStart`.
pub const SERIAL_BANNER: &str =
    "flick fc-double: this is the Firecracker test double; no guest kernel runs here.\n";

const NOT_SUPPORTED_PRE_BOOT: &str =
    "The requested operation is not supported before starting the microVM.";
const NOT_SUPPORTED_POST_BOOT: &str =
    "The requested operation is not supported after starting the microVM.";
const ID_MISMATCH: &str = "The id from the path does not match the id from the body!";
const MIB: u64 = 1024 * 1024;
/// Firecracker's default MMDS data store limit (the default HTTP payload limit).
pub const DEFAULT_MMDS_SIZE_LIMIT: usize = 51_200;
/// Exit status Firecracker uses when a failed restore leaves the process unusable.
pub const EXIT_BAD_CONFIGURATION: i32 = 152;

/// Behaviour switches for tests.
#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    /// Answer `SendCtrlAltDel` with 204 but keep running.
    pub ignore_ctrl_alt_del: bool,
    /// Make `InstanceStart` fail.
    pub fail_start: bool,
    /// Exit (status 1, socket left behind, like a crash) right after a successful `InstanceStart`.
    pub exit_after_start: bool,
    /// Guest vsock port -> host Unix socket.
    pub vsock_ports: PortMap,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body, if any.
    pub body: Option<String>,
    /// Exit the process with this status once the answer is sent.
    pub exit: Option<i32>,
}

impl Reply {
    fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
            exit: None,
        }
    }

    /// An answer with a body that is sent as it is.
    #[must_use]
    pub fn raw(status: u16, body: String) -> Self {
        Self {
            status,
            body: Some(body),
            exit: None,
        }
    }

    fn json(value: &Value) -> Self {
        let mut body = String::new();
        write_ordered(value, &mut body);
        Self {
            status: 200,
            body: Some(body),
            exit: None,
        }
    }

    fn fault(status: u16, message: &str) -> Self {
        Self {
            status,
            body: Some(json!({ "fault_message": message }).to_string()),
            exit: None,
        }
    }

    /// The `fault_message` of an error answer.
    #[must_use]
    pub fn fault_message(&self) -> Option<String> {
        let body: Value = serde_json::from_str(self.body.as_deref()?).ok()?;
        body["fault_message"].as_str().map(str::to_string)
    }
}

/// Where the microVM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before `InstanceStart` / snapshot load.
    NotStarted,
    /// Running.
    Running,
    /// Paused (`PATCH /vm` or a snapshot loaded without `resume_vm`).
    Paused,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::NotStarted => "Not started",
            Self::Running => "Running",
            Self::Paused => "Paused",
        }
    }
}

/// A bound vsock device: its config and the task serving its socket.
#[derive(Debug)]
struct VsockDevice {
    config: Value,
    path: PathBuf,
    task: Option<tokio::task::AbortHandle>,
}

impl Drop for VsockDevice {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[derive(Debug, Clone)]
struct MachineConfig {
    vcpu_count: u64,
    mem_size_mib: u64,
    smt: bool,
    track_dirty_pages: bool,
    huge_pages: String,
    cpu_template: Option<String>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            huge_pages: "None".into(),
            cpu_template: None,
        }
    }
}

impl MachineConfig {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "vcpu_count": self.vcpu_count,
            "mem_size_mib": self.mem_size_mib,
            "smt": self.smt,
            "track_dirty_pages": self.track_dirty_pages,
            "huge_pages": self.huge_pages,
        });
        if let Some(t) = self.cpu_template.as_ref().filter(|t| t.as_str() != "None") {
            v["cpu_template"] = json!(t);
        }
        v
    }
}

#[derive(Debug, Default, Clone)]
struct Balloon {
    config: Value,
    hinting_cmd: Option<u64>,
    next_cmd: u64,
}

/// The double's whole VMM state.
#[derive(Debug)]
pub struct Vmm {
    spec: Spec,
    id: String,
    logger: Arc<Logger>,
    options: TestOptions,
    ports: Arc<PortMap>,
    running: tokio::sync::watch::Sender<bool>,
    mmds_size_limit: usize,
    phase: Phase,
    boot_path: bool,
    machine: MachineConfig,
    boot_source: Option<Value>,
    drives: Vec<Value>,
    nets: Vec<Value>,
    pmem: Vec<Value>,
    vsock: Option<VsockDevice>,
    balloon: Option<Balloon>,
    entropy: Option<Value>,
    mmds_config: Option<Value>,
    mmds: Option<Value>,
    metrics: Option<File>,
    serial: Option<PathBuf>,
    cpu_config: Option<Value>,
    hotplug: Option<Value>,
    hotplug_requested: u64,
}

type Outcome = Result<Reply, String>;

impl Vmm {
    /// A fresh, unconfigured microVM.
    #[must_use]
    pub fn new(id: &str, logger: Arc<Logger>, options: TestOptions) -> Self {
        let ports = Arc::new(options.vsock_ports.clone());
        Self {
            spec: Spec::bundled(),
            id: id.to_string(),
            logger,
            options,
            ports,
            running: tokio::sync::watch::Sender::new(false),
            mmds_size_limit: DEFAULT_MMDS_SIZE_LIMIT,
            phase: Phase::NotStarted,
            boot_path: false,
            machine: MachineConfig::default(),
            boot_source: None,
            drives: Vec::new(),
            nets: Vec::new(),
            pmem: Vec::new(),
            vsock: None,
            balloon: None,
            entropy: None,
            mmds_config: None,
            mmds: None,
            metrics: None,
            serial: None,
            cpu_config: None,
            hotplug: None,
            hotplug_requested: 0,
        }
    }

    /// Sets the MMDS data store limit (`--mmds-size-limit`).
    pub fn set_mmds_size_limit(&mut self, limit: usize) {
        self.mmds_size_limit = limit;
    }

    /// Seeds the MMDS data store (`--metadata FILE`).
    pub fn seed_mmds(&mut self, data: Value) {
        self.mmds = Some(data);
    }

    /// Files the process should remove when it exits (the vsock socket).
    #[must_use]
    pub fn cleanup_paths(&self) -> Vec<PathBuf> {
        self.vsock.iter().map(|v| v.path.clone()).collect()
    }

    /// The current phase.
    #[must_use]
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Moves to `phase`; vsock connections are served only while running.
    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.running.send_replace(phase == Phase::Running);
    }

    /// Handles one API request and logs it like Firecracker.
    ///
    /// Must run inside a tokio runtime: `PUT /vsock` and snapshot loads spawn the task that
    /// serves the vsock socket.
    pub fn handle(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
        let body = body.filter(|b| !b.is_empty());
        self.log_received(method, path, body);
        match self.dispatch(method, path, body) {
            Ok(Ok(reply)) => {
                let status = match reply.status {
                    200 => "200 OK",
                    _ => "204 No Content",
                };
                self.logger.info(
                    "fc_api",
                    &format!("The request was executed successfully. Status code: {status}."),
                );
                reply
            }
            Ok(Err(message)) => {
                let (status, text) = if message.starts_with("MMDS limit exceeded") {
                    (413, "413 Payload too large")
                } else {
                    (400, "400 Bad Request")
                };
                self.logger.error(
                    "fc_api",
                    &format!("Received Error. Status code: {text}. Message: {message}"),
                );
                let mut reply = Reply::fault(status, &message);
                if message.starts_with("Load snapshot error: Failed to restore")
                    || message.starts_with("Load snapshot error: Failed to resume")
                {
                    // Firecracker treats a failed restore as fatal for the process.
                    reply.exit = Some(EXIT_BAD_CONFIGURATION);
                }
                reply
            }
            Err(err) => {
                self.logger.error("fc_api", &err.debug_line());
                Reply::fault(400, &err.message())
            }
        }
    }

    fn log_received(&self, method: &str, path: &str, body: Option<&[u8]>) {
        let m = match method {
            "GET" => "Get",
            "PUT" => "Put",
            "PATCH" => "Patch",
            other => other,
        };
        let line = match body {
            Some(_) if path == "/cpu-config" && !self.logger.enabled(Level::Debug) => format!(
                "The API server received a {m} request on {path:?}. To view the CPU template \
                 received by the API, configure log-level to DEBUG."
            ),
            Some(b) if path != "/mmds" => {
                let text = std::str::from_utf8(b).unwrap_or("inconvertible to UTF-8");
                format!("The API server received a {m} request on {path:?} with body {text:?}.")
            }
            _ => format!("The API server received a {m} request on {path:?}."),
        };
        self.logger.info("fc_api", &line);
    }

    fn dispatch(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Outcome, RequestError> {
        let action = route(method, path, body.is_some())?;
        let value = match (action.definition(), body) {
            (Some(definition), Some(bytes)) => Some(self.parse_body(&action, definition, bytes)?),
            (Some(_), None) if action == Action::HintingStart => Some(json!({})),
            _ => None,
        };
        // Path id vs body id.
        let id_field = match &action {
            Action::PutDrive(id) | Action::PatchDrive(id) => Some((id, "drive_id")),
            Action::PutNet(id) | Action::PatchNet(id) => Some((id, "iface_id")),
            Action::PutPmem(id) | Action::PatchPmem(id) => Some((id, "id")),
            _ => None,
        };
        if let (Some((id, field)), Some(v)) = (id_field, &value)
            && v[field].as_str() != Some(id.as_str())
        {
            return Err(RequestError::Generic(ID_MISMATCH.into()));
        }
        let value = value.unwrap_or(Value::Null);
        // Phase.
        let started = self.phase != Phase::NotStarted;
        let pre_only = match action {
            Action::PutActions => match value["action_type"].as_str() {
                Some("InstanceStart") => Some(true),
                _ => Some(false),
            },
            ref a => a.pre_boot_only(),
        };
        match pre_only {
            Some(true) if started => return Ok(Err(NOT_SUPPORTED_POST_BOOT.into())),
            Some(false) if !started => return Ok(Err(NOT_SUPPORTED_PRE_BOOT.into())),
            _ => {}
        }
        Ok(self.act(action, value))
    }

    fn parse_body(
        &self,
        action: &Action,
        definition: &str,
        bytes: &[u8],
    ) -> Result<Value, RequestError> {
        let mut value: Value =
            serde_json::from_slice(bytes).map_err(|e| RequestError::Serde(e.to_string()))?;
        let mut schema = self
            .spec
            .definition(definition)
            .cloned()
            .unwrap_or(Value::Null);
        if *action == Action::PatchMachineConfig {
            // Firecracker's MachineConfigUpdate makes every field optional.
            if let Some(obj) = schema.as_object_mut() {
                obj.remove("required");
            }
        }
        if *action == Action::PutLogger
            && let Some(level) = value.get("level").and_then(Value::as_str)
            && let Some(parsed) = Level::parse(level)
        {
            // Firecracker reads the level case-insensitively.
            let canonical = match parsed {
                Level::Off => "Off",
                Level::Error => "Error",
                Level::Warning => "Warning",
                Level::Info => "Info",
                Level::Debug => "Debug",
                Level::Trace => "Trace",
            };
            value["level"] = json!(canonical);
        }
        let violations = self.spec.validate_body(&schema, &value);
        if !violations.is_empty() {
            let detail = violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(RequestError::Serde(detail));
        }
        if *action == Action::SnapshotLoad {
            match (value.get("mem_backend"), value.get("mem_file_path")) {
                (Some(a), Some(b)) if !a.is_null() && !b.is_null() => {
                    return Err(RequestError::Serde(
                        "too many fields: either `mem_backend` or `mem_file_path` exclusively is required"
                            .into(),
                    ));
                }
                (a, b) if a.is_none_or(Value::is_null) && b.is_none_or(Value::is_null) => {
                    return Err(RequestError::Serde(
                        "missing field: either `mem_backend` or `mem_file_path` is required".into(),
                    ));
                }
                _ => {}
            }
        }
        if *action == Action::PutMmdsConfig
            && let Some(addr) = value.get("ipv4_address").and_then(Value::as_str)
            && addr.parse::<Ipv4Addr>().is_err()
        {
            return Err(RequestError::Serde("invalid IPv4 address syntax".into()));
        }
        if matches!(action, Action::PutNet(_))
            && let Some(mac) = value.get("guest_mac").and_then(Value::as_str)
            && !valid_mac(mac)
        {
            return Err(RequestError::Serde(format!("Invalid MAC address: {mac}")));
        }
        Ok(value)
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one arm per API action reads best as a single table"
    )]
    fn act(&mut self, action: Action, body: Value) -> Outcome {
        match action {
            Action::GetInstanceInfo => Ok(Reply::json(&json!({
                "id": self.id,
                "state": self.phase.name(),
                "vmm_version": VERSION,
                "app_name": "Firecracker",
            }))),
            Action::GetVersion => Ok(Reply::json(&json!({ "firecracker_version": VERSION }))),
            Action::GetMachineConfig => Ok(Reply::json(&self.machine.to_json())),
            Action::GetVmConfig => {
                if self.phase == Phase::NotStarted {
                    self.logger.log(
                        "main",
                        Level::Warning,
                        "If the VM was restored from snapshot, boot-source, machine-config.smt, \
                         and machine-config.cpu_template will all be empty.",
                    );
                }
                Ok(Reply::json(&self.full_config()))
            }
            Action::GetMmds => Ok(Reply::json(self.mmds.as_ref().unwrap_or(&json!({})))),
            Action::GetBalloon => match &self.balloon {
                Some(b) => Ok(Reply::json(&b.config)),
                None if self.phase == Phase::NotStarted => {
                    Err("Balloon config error: No balloon device found.".into())
                }
                None => Err("Internal VMM error: Device not found".into()),
            },
            Action::GetBalloonStats => self.balloon_stats(),
            Action::GetHintingStatus => {
                let b = self.hinting_balloon()?;
                Ok(Reply::json(&json!({
                    "host_cmd": b.hinting_cmd.unwrap_or(0),
                    "guest_cmd": null,
                })))
            }
            Action::GetHotplugMemory => match &self.hotplug {
                Some(h) => Ok(Reply::json(&json!({
                    "total_size_mib": h["total_size_mib"],
                    "slot_size_mib": h["slot_size_mib"],
                    "block_size_mib": h["block_size_mib"],
                    "plugged_size_mib": self.hotplug_requested,
                    "requested_size_mib": self.hotplug_requested,
                }))),
                None => Err("Internal VMM error: Device not found".into()),
            },
            Action::PutActions => self.instance_action(&body),
            Action::PutBalloon => {
                self.boot_path = true;
                let amount = body["amount_mib"].as_u64().unwrap_or(0);
                if amount > self.machine.mem_size_mib {
                    return Err(
                        "Balloon config error: Amount of pages requested is too large.".into(),
                    );
                }
                self.balloon = Some(Balloon {
                    config: json!({
                        "amount_mib": amount,
                        "deflate_on_oom": body["deflate_on_oom"],
                        "stats_polling_interval_s": body["stats_polling_interval_s"].as_u64().unwrap_or(0),
                        "free_page_hinting": body["free_page_hinting"].as_bool().unwrap_or(false),
                        "free_page_reporting": body["free_page_reporting"].as_bool().unwrap_or(false),
                    }),
                    hinting_cmd: None,
                    next_cmd: 2,
                });
                Ok(Reply::no_content())
            }
            Action::PutBootSource => {
                self.boot_path = true;
                let kernel = body["kernel_image_path"].as_str().unwrap_or_default();
                if let Err(e) = File::open(kernel) {
                    return Err(format!(
                        "Boot source error: The kernel file cannot be opened: {e}"
                    ));
                }
                if let Some(initrd) = body["initrd_path"].as_str()
                    && let Err(e) = File::open(initrd)
                {
                    return Err(format!(
                        "Boot source error: The initrd file cannot be opened: {e}"
                    ));
                }
                self.boot_source = Some(json!({
                    "kernel_image_path": kernel,
                    "initrd_path": body["initrd_path"],
                    "boot_args": body["boot_args"],
                }));
                Ok(Reply::no_content())
            }
            Action::PutCpuConfig => {
                self.cpu_config = Some(body);
                Ok(Reply::no_content())
            }
            Action::PutDrive(id) => {
                self.boot_path = true;
                self.put_drive(&id, &body)
            }
            Action::PutPmem(id) => {
                self.boot_path = true;
                self.put_pmem(&id, &body)
            }
            Action::PutLogger => self.put_logger(&body),
            Action::PutSerial => {
                if let Some(path) = body["serial_out_path"].as_str() {
                    open_append(Path::new(path)).map_err(|e| {
                        format!("Serial config error: Failed to open serial output: {e}")
                    })?;
                    self.serial = Some(PathBuf::from(path));
                }
                Ok(Reply::no_content())
            }
            Action::PutMachineConfig | Action::PatchMachineConfig => {
                self.boot_path = true;
                let full = action == Action::PutMachineConfig;
                self.update_machine(&body, full)
            }
            Action::PutMetrics => {
                if self.metrics.is_some() {
                    return Err("Metrics error: Reinitialization of metrics not allowed.".into());
                }
                let path = body["metrics_path"].as_str().unwrap_or_default();
                let file =
                    open_append(Path::new(path)).map_err(|e| format!("Metrics error: {e}"))?;
                self.metrics = Some(file);
                Ok(Reply::no_content())
            }
            Action::PutMmds => {
                if body.to_string().len() > self.mmds_size_limit {
                    return Err(
                        "MMDS limit exceeded error: The MMDS patch request doesn't fit.".into(),
                    );
                }
                self.mmds = Some(body);
                Ok(Reply::no_content())
            }
            Action::PatchMmds => {
                let Some(current) = self.mmds.as_mut() else {
                    return Err("MMDS error: The MMDS data store is not initialized.".into());
                };
                let mut merged = current.clone();
                merge_patch(&mut merged, &body);
                if merged.to_string().len() > self.mmds_size_limit {
                    return Err(
                        "MMDS limit exceeded error: The MMDS patch request doesn't fit.".into(),
                    );
                }
                *current = merged;
                Ok(Reply::no_content())
            }
            Action::PutMmdsConfig => {
                self.boot_path = true;
                self.put_mmds_config(&body)
            }
            Action::PutNet(id) => {
                self.boot_path = true;
                self.put_net(&id, &body)
            }
            Action::SnapshotCreate => self.snapshot_create(&body),
            Action::SnapshotLoad => self.snapshot_load(&body),
            Action::PutVsock => {
                self.boot_path = true;
                let path = PathBuf::from(body["uds_path"].as_str().unwrap_or_default());
                // Release a previous device (and its socket) first, like a replacement.
                self.vsock = None;
                let config =
                    json!({ "guest_cid": body["guest_cid"], "uds_path": body["uds_path"] });
                self.vsock = Some(self.bind_vsock(config, &path).map_err(|e| {
                    format!(
                        "Vsock config error: Cannot create backend for vsock device: \
                         Error binding to the host-side Unix socket: {e}"
                    )
                })?);
                Ok(Reply::no_content())
            }
            Action::PutEntropy => {
                self.boot_path = true;
                self.entropy =
                    Some(json!({ "rate_limiter": rate_limiter(body.get("rate_limiter")) }));
                Ok(Reply::no_content())
            }
            Action::PutHotplugMemory => {
                self.boot_path = true;
                self.hotplug = Some(json!({
                    "total_size_mib": body["total_size_mib"].as_u64().unwrap_or(0),
                    "slot_size_mib": body["slot_size_mib"].as_u64().unwrap_or(128),
                    "block_size_mib": body["block_size_mib"].as_u64().unwrap_or(2),
                }));
                Ok(Reply::no_content())
            }
            Action::PatchHotplugMemory => {
                let Some(h) = &self.hotplug else {
                    return Err("Memory hotplug update error: Device not found".into());
                };
                let requested = body["requested_size_mib"].as_u64().unwrap_or(0);
                if requested > h["total_size_mib"].as_u64().unwrap_or(0) {
                    return Err(
                        "Memory hotplug update error: The requested size exceeds the total size of the hotpluggable memory."
                            .into(),
                    );
                }
                self.hotplug_requested = requested;
                Ok(Reply::no_content())
            }
            Action::PatchBalloon => {
                let mem = self.machine.mem_size_mib;
                let Some(b) = self.balloon.as_mut() else {
                    return Err("Balloon update error: Device not found".into());
                };
                let amount = body["amount_mib"].as_u64().unwrap_or(0);
                if amount > mem {
                    return Err(
                        "Balloon update error: Amount of pages requested is too large.".into(),
                    );
                }
                b.config["amount_mib"] = json!(amount);
                Ok(Reply::no_content())
            }
            Action::PatchBalloonStats => {
                let Some(b) = self.balloon.as_mut() else {
                    return Err("Balloon update error: Device not found".into());
                };
                let new = body["stats_polling_interval_s"].as_u64().unwrap_or(0);
                let old = b.config["stats_polling_interval_s"].as_u64().unwrap_or(0);
                if (old == 0) != (new == 0) {
                    return Err(
                        "Balloon update error: Cannot enable/disable the statistics after boot."
                            .into(),
                    );
                }
                b.config["stats_polling_interval_s"] = json!(new);
                Ok(Reply::no_content())
            }
            Action::HintingStart => {
                self.hinting_balloon()?;
                if let Some(b) = self.balloon.as_mut() {
                    b.hinting_cmd = Some(b.next_cmd);
                    b.next_cmd += 1;
                }
                Ok(Reply::no_content())
            }
            Action::HintingStop => {
                self.hinting_balloon()?;
                if let Some(b) = self.balloon.as_mut() {
                    b.hinting_cmd = Some(0);
                }
                Ok(Reply::no_content())
            }
            Action::PatchDrive(id) => self.patch_drive(&id, &body),
            Action::PatchPmem(id) => {
                let Some(p) = self.pmem.iter_mut().find(|p| p["id"] == json!(id)) else {
                    return Err(format!("Pmem device error: Device {id} not found."));
                };
                if let Some(rl) = body.get("rate_limiter") {
                    p["rate_limiter"] = rl.clone();
                }
                Ok(Reply::no_content())
            }
            Action::PatchNet(id) => {
                let Some(n) = self.nets.iter_mut().find(|n| n["iface_id"] == json!(id)) else {
                    return Err(format!(
                        "Network config error: Could not update the network device: Device {id} not found."
                    ));
                };
                for key in ["rx_rate_limiter", "tx_rate_limiter"] {
                    if let Some(rl) = body.get(key) {
                        n[key] = rl.clone();
                    }
                }
                Ok(Reply::no_content())
            }
            Action::PatchVm => {
                let target = if body["state"] == "Paused" {
                    self.logger.info("main", "'pause vm' VMM action took 1 us.");
                    Phase::Paused
                } else {
                    self.logger
                        .info("main", "'resume vm' VMM action took 1 us.");
                    Phase::Running
                };
                self.set_phase(target);
                Ok(Reply::no_content())
            }
        }
    }

    fn instance_action(&mut self, body: &Value) -> Outcome {
        match body["action_type"].as_str() {
            Some("InstanceStart") => {
                if self.boot_source.is_none() {
                    return Err(
                        "Start microvm error: Cannot start microvm without kernel configuration."
                            .into(),
                    );
                }
                if self.options.fail_start {
                    let message = "Start microvm error: Cannot load kernel due to invalid memory \
                                   configuration or invalid kernel image: Kernel Loader: failed \
                                   to load ELF kernel image";
                    let _ = writeln!(
                        std::io::stderr(),
                        "fc-double: InstanceStart fails on purpose (FC_DOUBLE_FAIL_START): {message}"
                    );
                    return Err(message.into());
                }
                self.set_phase(Phase::Running);
                self.write_banner();
                let mut reply = Reply::no_content();
                if self.options.exit_after_start {
                    reply.exit = Some(1);
                }
                Ok(reply)
            }
            Some("FlushMetrics") => {
                if let Some(file) = self.metrics.as_mut() {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis())
                        .unwrap_or(0);
                    let line = json!({
                        "utc_timestamp_ms": now_ms,
                        "api_server": { "process_startup_time_us": 0, "process_startup_time_cpu_us": 0 },
                        "vmm": { "panic_count": 0 },
                        "fc_double": { "note": "synthetic metrics from the flick Firecracker test double" },
                    });
                    file.write_all(format!("{line}\n").as_bytes())
                        .map_err(|e| format!("Internal VMM error: Metrics error: {e}"))?;
                }
                Ok(Reply::no_content())
            }
            Some("SendCtrlAltDel") => {
                let mut reply = Reply::no_content();
                if !self.options.ignore_ctrl_alt_del {
                    self.logger.info(
                        "main",
                        "Vmm is stopping (Ctrl+Alt+Del received; the test double has no guest and exits).",
                    );
                    reply.exit = Some(0);
                }
                Ok(reply)
            }
            _ => Err("Internal VMM error: unknown action".into()),
        }
    }

    fn write_banner(&self) {
        match &self.serial {
            Some(path) => {
                if let Ok(mut f) = open_append(path) {
                    let _ = f.write_all(SERIAL_BANNER.as_bytes());
                }
            }
            None => {
                let _ = std::io::stdout().write_all(SERIAL_BANNER.as_bytes());
                let _ = std::io::stdout().flush();
            }
        }
    }

    fn update_machine(&mut self, body: &Value, full: bool) -> Outcome {
        let mut next = if full {
            MachineConfig {
                cpu_template: None,
                ..MachineConfig::default()
            }
        } else {
            self.machine.clone()
        };
        if let Some(v) = body["vcpu_count"].as_u64() {
            next.vcpu_count = v;
        }
        if let Some(v) = body["mem_size_mib"].as_u64() {
            next.mem_size_mib = v;
        }
        if let Some(v) = body["smt"].as_bool() {
            next.smt = v;
        }
        if let Some(v) = body["track_dirty_pages"].as_bool() {
            next.track_dirty_pages = v;
        }
        if let Some(v) = body["huge_pages"].as_str() {
            next.huge_pages = v.to_string();
        }
        if let Some(v) = body["cpu_template"].as_str() {
            next.cpu_template = Some(v.to_string());
        }
        if next.vcpu_count == 0 || (next.smt && next.vcpu_count > 1 && next.vcpu_count % 2 == 1) {
            return Err(
                "Machine config error: The vCPU number is invalid! The vCPU number can only \
                        be 1 or an even number when SMT is enabled."
                    .into(),
            );
        }
        if next.mem_size_mib == 0 {
            return Err("Machine config error: The memory size (MiB) is invalid.".into());
        }
        if next.huge_pages == "2M" && next.mem_size_mib % 2 != 0 {
            return Err(
                "Machine config error: The memory size (MiB) is either 0, or not a \
                        multiple of the configured page size."
                    .into(),
            );
        }
        self.machine = next;
        Ok(Reply::no_content())
    }

    fn put_drive(&mut self, id: &str, body: &Value) -> Outcome {
        let is_root = body["is_root_device"].as_bool().unwrap_or(false);
        if is_root
            && self
                .drives
                .iter()
                .any(|d| d["is_root_device"] == json!(true) && d["drive_id"] != json!(id))
        {
            return Err("Drive config error: A root block device already exists!".into());
        }
        let socket = body.get("socket").filter(|s| !s.is_null());
        let path = body["path_on_host"].as_str();
        if socket.is_none() {
            let path = path.unwrap_or_default();
            let read_only = body["is_read_only"].as_bool().unwrap_or(false);
            if let Err(e) = OpenOptions::new().read(true).write(!read_only).open(path) {
                return Err(format!(
                    "Drive config error: Unable to create the virtio block device: Virtio backend \
                     error: Error manipulating the backing file: {e} {path}"
                ));
            }
        }
        let drive = json!({
            "drive_id": id,
            "partuuid": body.get("partuuid").cloned().unwrap_or(Value::Null),
            "is_root_device": is_root,
            "cache_type": body["cache_type"].as_str().unwrap_or("Unsafe"),
            "is_read_only": if socket.is_some() { body.get("is_read_only").cloned().unwrap_or(Value::Null) } else { json!(body["is_read_only"].as_bool().unwrap_or(false)) },
            "path_on_host": body.get("path_on_host").cloned().unwrap_or(Value::Null),
            "rate_limiter": rate_limiter(body.get("rate_limiter")),
            "io_engine": if socket.is_some() { Value::Null } else { json!(body["io_engine"].as_str().unwrap_or("Sync")) },
            "socket": socket.cloned().unwrap_or(Value::Null),
        });
        if let Some(pos) = self.drives.iter().position(|d| d["drive_id"] == json!(id)) {
            self.drives.remove(pos);
            if is_root {
                self.drives.insert(0, drive);
            } else {
                self.drives.insert(pos.min(self.drives.len()), drive);
            }
        } else if is_root {
            self.drives.insert(0, drive);
        } else {
            self.drives.push(drive);
        }
        Ok(Reply::no_content())
    }

    fn patch_drive(&mut self, id: &str, body: &Value) -> Outcome {
        let Some(drive) = self.drives.iter_mut().find(|d| d["drive_id"] == json!(id)) else {
            return Err(format!(
                "Drive config error: Unable to patch the block device: Device not found \
                 (drive {id}) Please verify the request arguments."
            ));
        };
        if let Some(path) = body["path_on_host"].as_str() {
            let read_only = drive["is_read_only"].as_bool().unwrap_or(false);
            if let Err(e) = OpenOptions::new().read(true).write(!read_only).open(path) {
                return Err(format!(
                    "Drive config error: Unable to patch the block device: Virtio backend error: \
                     Error manipulating the backing file: {e} {path} Please verify the request \
                     arguments."
                ));
            }
            drive["path_on_host"] = json!(path);
        }
        if let Some(rl) = body.get("rate_limiter") {
            drive["rate_limiter"] = rate_limiter(Some(rl));
        }
        Ok(Reply::no_content())
    }

    fn put_pmem(&mut self, id: &str, body: &Value) -> Outcome {
        let root = body["root_device"].as_bool().unwrap_or(false);
        if root
            && (self
                .pmem
                .iter()
                .any(|p| p["root_device"] == json!(true) && p["id"] != json!(id))
                || self
                    .drives
                    .iter()
                    .any(|d| d["is_root_device"] == json!(true)))
        {
            return Err("Pmem device error: A root block device already exists!".into());
        }
        let path = body["path_on_host"].as_str().unwrap_or_default();
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("Pmem device error: Error accessing backing file: {e}"))?;
        if meta.len() == 0 {
            return Err("Pmem device error: Error backing file size is 0".into());
        }
        let dev = json!({
            "id": id,
            "path_on_host": path,
            "root_device": root,
            "read_only": body["read_only"].as_bool().unwrap_or(false),
            "rate_limiter": rate_limiter(body.get("rate_limiter")),
        });
        match self.pmem.iter_mut().find(|p| p["id"] == json!(id)) {
            Some(existing) => *existing = dev,
            None => self.pmem.push(dev),
        }
        Ok(Reply::no_content())
    }

    fn put_net(&mut self, id: &str, body: &Value) -> Outcome {
        let host = body["host_dev_name"].as_str().unwrap_or_default();
        if host.len() > 15 || host.is_empty() {
            return Err(
                "Network config error: Could not create the network device: Open tap \
                        device failed: Invalid interface name"
                    .into(),
            );
        }
        let mac = body["guest_mac"].as_str().map(str::to_ascii_lowercase);
        if let Some(mac) = &mac
            && self
                .nets
                .iter()
                .any(|n| n["guest_mac"] == json!(mac) && n["iface_id"] != json!(id))
        {
            return Err(format!(
                "Network config error: The MAC address is already in use: {mac}"
            ));
        }
        let net = json!({
            "iface_id": id,
            "host_dev_name": host,
            "guest_mac": mac,
            "mtu": body.get("mtu").cloned().unwrap_or(Value::Null),
            "rx_rate_limiter": rate_limiter(body.get("rx_rate_limiter")),
            "tx_rate_limiter": rate_limiter(body.get("tx_rate_limiter")),
        });
        match self.nets.iter_mut().find(|n| n["iface_id"] == json!(id)) {
            Some(existing) => *existing = net,
            None => self.nets.push(net),
        }
        Ok(Reply::no_content())
    }

    fn put_logger(&mut self, body: &Value) -> Outcome {
        let level = body["level"]
            .as_str()
            .and_then(Level::parse)
            .unwrap_or(Level::Info);
        let show_level = body["show_level"].as_bool().unwrap_or(false);
        let show_origin = body["show_log_origin"].as_bool().unwrap_or(false);
        if let Some(path) = body["log_path"].as_str() {
            let file = open_append(Path::new(path))
                .map_err(|e| format!("Logger error: Failed to open target file: {e}"))?;
            self.logger.configure(file, level, show_level, show_origin);
        }
        Ok(Reply::no_content())
    }

    fn put_mmds_config(&mut self, body: &Value) -> Outcome {
        let ifaces: Vec<String> = body["network_interfaces"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if ifaces.is_empty() {
            return Err(
                "MMMDS config error: The list of network interface IDs that allow \
                        forwarding MMDS requests is empty."
                    .into(),
            );
        }
        if ifaces
            .iter()
            .any(|i| !self.nets.iter().any(|n| n["iface_id"] == json!(i)))
        {
            return Err(
                "MMMDS config error: The list of network interface IDs provided contains \
                        at least one ID that does not correspond to any existing network \
                        interface."
                    .into(),
            );
        }
        let addr = body["ipv4_address"].as_str().unwrap_or("169.254.169.254");
        let parsed: Ipv4Addr = addr.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
        if !parsed.is_link_local() {
            return Err("MMMDS config error: The MMDS IPv4 address is not link local.".into());
        }
        self.mmds_config = Some(json!({
            "version": body["version"].as_str().unwrap_or("V1"),
            "network_interfaces": ifaces,
            "ipv4_address": addr,
            "imds_compat": body["imds_compat"].as_bool().unwrap_or(false),
        }));
        Ok(Reply::no_content())
    }

    fn balloon_stats(&self) -> Outcome {
        let Some(b) = &self.balloon else {
            return Err("Internal VMM error: Device not found".into());
        };
        if b.config["stats_polling_interval_s"].as_u64().unwrap_or(0) == 0 {
            return Err(
                "Internal VMM error: Balloon: Statistics for the balloon device are not enabled"
                    .into(),
            );
        }
        let amount = b.config["amount_mib"].as_u64().unwrap_or(0);
        let total = self.machine.mem_size_mib * MIB;
        let free = total.saturating_sub(amount * MIB) / 2;
        Ok(Reply::json(&json!({
            "target_pages": amount * 256,
            "actual_pages": amount * 256,
            "target_mib": amount,
            "actual_mib": amount,
            "swap_in": 0,
            "swap_out": 0,
            "major_faults": 12,
            "minor_faults": 3456,
            "free_memory": free,
            "total_memory": total,
            "available_memory": free + free / 2,
            "disk_caches": free / 4,
            "hugetlb_allocations": 0,
            "hugetlb_failures": 0,
        })))
    }

    fn hinting_balloon(&self) -> Result<&Balloon, String> {
        let Some(b) = &self.balloon else {
            return Err("Balloon update error: Device not found".into());
        };
        if b.config["free_page_hinting"] != json!(true) {
            return Err(
                "Balloon update error: Free page hinting was not enabled when the balloon was configured."
                    .into(),
            );
        }
        Ok(b)
    }

    fn bind_vsock(&self, config: Value, path: &Path) -> std::io::Result<VsockDevice> {
        let std_listener = std::os::unix::net::UnixListener::bind(path)?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        let ports = Arc::clone(&self.ports);
        let running = self.running.subscribe();
        let task = tokio::spawn(vsock::serve(listener, ports, running)).abort_handle();
        Ok(VsockDevice {
            config,
            path: path.to_path_buf(),
            task: Some(task),
        })
    }

    fn full_config(&self) -> Value {
        json!({
            "balloon": self.balloon.as_ref().map(|b| b.config.clone()),
            "drives": self.drives,
            "boot-source": self.boot_source.clone().unwrap_or_else(|| json!({
                "kernel_image_path": "",
                "initrd_path": null,
                "boot_args": null,
            })),
            "cpu-config": self.cpu_config,
            "logger": null,
            "machine-config": self.machine.to_json(),
            "metrics": null,
            "mmds-config": self.mmds_config,
            "network-interfaces": self.nets,
            "vsock": self.vsock.as_ref().map(|v| v.config.clone()),
            "entropy": self.entropy,
            "pmem": self.pmem,
            "memory-hotplug": self.hotplug,
        })
    }

    fn snapshot_create(&mut self, body: &Value) -> Outcome {
        let diff = body["snapshot_type"] == "Diff";
        if diff && !self.machine.track_dirty_pages {
            return Err(
                "The requested operation is not supported: Diff snapshots are not allowed \
                        on uVMs with dirty page tracking disabled."
                    .into(),
            );
        }
        if self.phase != Phase::Paused {
            return Err(
                "Create snapshot error: Cannot save the microVM state: Operation not \
                        allowed: save/restore unavailable while running"
                    .into(),
            );
        }
        let snapshot_path = body["snapshot_path"].as_str().unwrap_or_default();
        let mem_path = Path::new(body["mem_file_path"].as_str().unwrap_or_default());
        let state = json!({
            "format": SNAPSHOT_FORMAT,
            "note": "Snapshot state written by the flick Firecracker test double; it holds no guest state.",
            "firecracker_version": VERSION,
            "snapshot_type": if diff { "Diff" } else { "Full" },
            "vm_config": self.full_config(),
            "mmds_config": self.mmds_config,
        });
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(snapshot_path)
            .map_err(|e| {
                format!(
                    "Create snapshot error: Cannot perform open on the snapshot backing file: {e}"
                )
            })?;
        let text = serde_json::to_string_pretty(&state).unwrap_or_default();
        file.write_all(text.as_bytes()).map_err(|e| {
            format!("Create snapshot error: Cannot perform flush on the snapshot backing file: {e}")
        })?;
        let existed = mem_path.exists();
        let mem = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(mem_path)
            .map_err(|e| {
                format!(
                    "Create snapshot error: Cannot perform open on the memory backing file: {e}"
                )
            })?;
        let expected = self.machine.mem_size_mib * MIB;
        if existed && mem.metadata().map(|m| m.len()).unwrap_or(0) != expected {
            let _ = mem.set_len(0);
        }
        mem.set_len(expected).map_err(|e| {
            format!(
                "Create snapshot error: Cannot perform set_length on the memory backing file: {e}"
            )
        })?;
        self.logger.info(
            "main",
            &format!(
                "'create {} snapshot' VMM action took 1 us.",
                if diff { "diff" } else { "full" }
            ),
        );
        Ok(Reply::no_content())
    }

    fn snapshot_load(&mut self, body: &Value) -> Outcome {
        if self.boot_path {
            let message =
                "Loading a microVM snapshot not allowed after configuring boot-specific resources.";
            self.logger.info("main", message);
            return Err(format!("Load snapshot error: {message}"));
        }
        const RESTORE: &str = "Load snapshot error: Failed to restore from snapshot";
        let path = body["snapshot_path"].as_str().unwrap_or_default();
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!("{RESTORE}: Failed to get snapshot state from file: Failed to open snapshot file: {e}")
        })?;
        let state: Value = serde_json::from_str(&text)
            .ok()
            .filter(|s: &Value| s["format"] == SNAPSHOT_FORMAT)
            .ok_or_else(|| {
                format!(
                    "{RESTORE}: Failed to get snapshot state from file: Failed to load snapshot \
                     state from file: Snapshot magic value mismatch (not a snapshot of this test double)"
                )
            })?;
        let mut config = state["vm_config"].clone();
        if let Some(overrides) = body["network_overrides"].as_array() {
            for o in overrides {
                let iface = &o["iface_id"];
                let nets = config["network-interfaces"].as_array_mut();
                let found = nets.and_then(|nets| nets.iter_mut().find(|n| &n["iface_id"] == iface));
                match found {
                    Some(n) => n["host_dev_name"] = o["host_dev_name"].clone(),
                    None => {
                        return Err(format!(
                            "{RESTORE}: Failed to get snapshot state from file: Unknown Network Device."
                        ));
                    }
                }
            }
        }
        if let Some(v) = body.get("vsock_override").filter(|v| !v.is_null()) {
            if config["vsock"].is_null() {
                return Err(format!(
                    "{RESTORE}: Failed to get snapshot state from file: Unknown Vsock Device."
                ));
            }
            config["vsock"]["uds_path"] = v["uds_path"].clone();
        }
        let (backend_type, backend_path) = match body.get("mem_backend").filter(|m| !m.is_null()) {
            Some(m) => (
                m["backend_type"].as_str().unwrap_or("File").to_string(),
                m["backend_path"].as_str().unwrap_or_default().to_string(),
            ),
            None => {
                self.logger.log(
                    "fc_api",
                    Level::Warning,
                    "PUT /snapshot/load: mem_file_path field is deprecated.",
                );
                (
                    "File".into(),
                    body["mem_file_path"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            }
        };
        if backend_type == "File" {
            File::open(&backend_path).map_err(|e| {
                format!(
                    "{RESTORE}: Failed to load guest memory: Error creating guest memory from \
                     file: Failed to load guest memory: {e}"
                )
            })?;
        } else {
            std::os::unix::net::UnixStream::connect(&backend_path).map_err(|e| {
                format!(
                    "{RESTORE}: Failed to load guest memory: Error creating guest memory from \
                     uffd: Failed to connect to UDS Unix stream: {e}"
                )
            })?;
        }
        // Rebuild the resources from the state file.
        let m = &config["machine-config"];
        self.machine = MachineConfig {
            vcpu_count: m["vcpu_count"].as_u64().unwrap_or(1),
            mem_size_mib: m["mem_size_mib"].as_u64().unwrap_or(128),
            smt: m["smt"].as_bool().unwrap_or(false),
            track_dirty_pages: body["track_dirty_pages"].as_bool().unwrap_or(false)
                || body["enable_diff_snapshots"].as_bool().unwrap_or(false),
            huge_pages: m["huge_pages"].as_str().unwrap_or("None").to_string(),
            cpu_template: m["cpu_template"].as_str().map(str::to_string),
        };
        self.drives = config["drives"].as_array().cloned().unwrap_or_default();
        self.nets = config["network-interfaces"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        self.pmem = config["pmem"].as_array().cloned().unwrap_or_default();
        self.balloon = config["balloon"].as_object().map(|b| Balloon {
            config: Value::Object(b.clone()),
            hinting_cmd: None,
            next_cmd: 2,
        });
        self.entropy = Some(config["entropy"].clone()).filter(|v| !v.is_null());
        self.mmds_config = Some(config["mmds-config"].clone()).filter(|v| !v.is_null());
        self.hotplug = Some(config["memory-hotplug"].clone()).filter(|v| !v.is_null());
        self.boot_source = None;
        if !config["vsock"].is_null() {
            let path = PathBuf::from(config["vsock"]["uds_path"].as_str().unwrap_or_default());
            let device = self.bind_vsock(config["vsock"].clone(), &path).map_err(|e| {
                format!(
                    "{RESTORE}: Failed to build microVM from snapshot: Cannot create backend for \
                     vsock device: Error binding to the host-side Unix socket: {e}"
                )
            })?;
            self.vsock = Some(device);
        }
        self.set_phase(if body["resume_vm"].as_bool().unwrap_or(false) {
            Phase::Running
        } else {
            Phase::Paused
        });
        self.write_banner();
        self.logger
            .info("fc_api", "'load snapshot' API request took 1 us.");
        Ok(Reply::no_content())
    }

    /// Applies a `--config-file` document: configures every section, then starts the microVM.
    ///
    /// # Errors
    /// The first failing section's fault message.
    pub fn apply_config_file(&mut self, doc: &Value) -> Result<(), String> {
        let single = [
            ("logger", "/logger"),
            ("metrics", "/metrics"),
            ("serial", "/serial"),
            ("machine-config", "/machine-config"),
            ("cpu-config", "/cpu-config"),
            ("boot-source", "/boot-source"),
            ("balloon", "/balloon"),
            ("vsock", "/vsock"),
            ("entropy", "/entropy"),
            ("memory-hotplug", "/hotplug/memory"),
        ];
        let run = |this: &mut Self, path: &str, body: &Value| -> Result<(), String> {
            let reply = this.handle("PUT", path, Some(body.to_string().as_bytes()));
            if reply.status >= 300 {
                return Err(reply.fault_message().unwrap_or_default());
            }
            Ok(())
        };
        for (key, path) in &single[..5] {
            let Some(mut v) = doc.get(*key).filter(|v| !v.is_null()).cloned() else {
                continue;
            };
            if *key == "cpu-config"
                && let Some(file) = v.as_str()
            {
                // In a configuration file `cpu-config` names a CPU template file.
                let text = std::fs::read_to_string(file)
                    .map_err(|e| format!("Unable to load custom cpu template file: {e}"))?;
                v = serde_json::from_str(&text)
                    .map_err(|e| format!("Unable to parse custom cpu template file: {e}"))?;
            }
            run(self, path, &v)?;
        }
        for d in doc["drives"].as_array().into_iter().flatten() {
            let id = d["drive_id"].as_str().unwrap_or_default();
            run(self, &format!("/drives/{id}"), d)?;
        }
        for p in doc["pmem"].as_array().into_iter().flatten() {
            let id = p["id"].as_str().unwrap_or_default();
            run(self, &format!("/pmem/{id}"), p)?;
        }
        for n in doc["network-interfaces"].as_array().into_iter().flatten() {
            let id = n["iface_id"].as_str().unwrap_or_default();
            run(self, &format!("/network-interfaces/{id}"), n)?;
        }
        for (key, path) in &single[5..] {
            if let Some(v) = doc.get(*key).filter(|v| !v.is_null()) {
                run(self, path, v)?;
            }
        }
        if let Some(v) = doc.get("mmds-config").filter(|v| !v.is_null()) {
            run(self, "/mmds/config", v)?;
        }
        run(self, "/actions", &json!({ "action_type": "InstanceStart" }))
    }
}

/// Field order of Firecracker's answers (serde writes struct fields in declaration order).
/// Keys not listed follow, alphabetically.
const KEY_ORDER: &[&str] = &[
    "id",
    "state",
    "vmm_version",
    "app_name",
    "firecracker_version",
    "vcpu_count",
    "mem_size_mib",
    "smt",
    "cpu_template",
    "track_dirty_pages",
    "huge_pages",
    "amount_mib",
    "deflate_on_oom",
    "stats_polling_interval_s",
    "free_page_hinting",
    "free_page_reporting",
    "target_pages",
    "actual_pages",
    "target_mib",
    "actual_mib",
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
    "host_cmd",
    "guest_cmd",
    "balloon",
    "drives",
    "boot-source",
    "cpu-config",
    "logger",
    "machine-config",
    "metrics",
    "mmds-config",
    "network-interfaces",
    "vsock",
    "entropy",
    "pmem",
    "memory-hotplug",
    "drive_id",
    "partuuid",
    "is_root_device",
    "cache_type",
    "is_read_only",
    "path_on_host",
    "root_device",
    "read_only",
    "rate_limiter",
    "io_engine",
    "socket",
    "kernel_image_path",
    "initrd_path",
    "boot_args",
    "version",
    "network_interfaces",
    "ipv4_address",
    "imds_compat",
    "iface_id",
    "host_dev_name",
    "guest_mac",
    "mtu",
    "rx_rate_limiter",
    "tx_rate_limiter",
    "guest_cid",
    "uds_path",
    "bandwidth",
    "ops",
    "size",
    "one_time_burst",
    "refill_time",
    "total_size_mib",
    "slot_size_mib",
    "block_size_mib",
    "plugged_size_mib",
    "requested_size_mib",
];

/// Writes compact JSON with object keys in Firecracker's order.
fn write_ordered(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let rank = |k: &str| KEY_ORDER.iter().position(|o| *o == k).unwrap_or(usize::MAX);
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*key).clone()).to_string());
                out.push(':');
                write_ordered(&map[key.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_ordered(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Marks state files written by the double.
const SNAPSHOT_FORMAT: &str = "flick-fc-double-snapshot-v1";

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Firecracker's serialized rate limiter: both buckets present, `null` when unset.
fn rate_limiter(value: Option<&Value>) -> Value {
    match value.filter(|v| !v.is_null()) {
        None => Value::Null,
        Some(v) => {
            let bucket = |b: &Value| {
                if b.is_null() {
                    Value::Null
                } else {
                    json!({
                        "size": b["size"],
                        "one_time_burst": b.get("one_time_burst").cloned().unwrap_or(Value::Null),
                        "refill_time": b["refill_time"],
                    })
                }
            };
            json!({ "bandwidth": bucket(&v["bandwidth"]), "ops": bucket(&v["ops"]) })
        }
    }
}

/// RFC 7396 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_obj) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target_obj) = target {
        for (key, value) in patch_obj {
            if value.is_null() {
                target_obj.remove(key);
            } else {
                merge_patch(target_obj.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = json!({"a": [1, 2]});
        merge_patch(&mut doc, &json!({"a": [3], "n": {"x": 1}}));
        assert_eq!(doc, json!({"a": [3], "n": {"x": 1}}));
        let mut doc = json!({"a": 1});
        merge_patch(&mut doc, &json!("scalar"));
        assert_eq!(doc, json!("scalar"));
    }

    #[test]
    fn answers_keep_firecracker_field_order() {
        let reply = Reply::json(&json!({
            "app_name": "Firecracker", "id": "x", "state": "Running", "vmm_version": "1.16.1"
        }));
        assert_eq!(
            reply.body.unwrap(),
            r#"{"id":"x","state":"Running","vmm_version":"1.16.1","app_name":"Firecracker"}"#
        );
        let reply = Reply::json(&json!({"zeta": 1, "alpha": {"b": 2, "a": 1}}));
        assert_eq!(reply.body.unwrap(), r#"{"alpha":{"a":1,"b":2},"zeta":1}"#);
    }

    #[test]
    fn macs_are_checked() {
        assert!(valid_mac("06:00:AC:10:00:02"));
        assert!(!valid_mac("06:00:AC:10:00"));
        assert!(!valid_mac("zz:00:AC:10:00:02"));
    }
}
