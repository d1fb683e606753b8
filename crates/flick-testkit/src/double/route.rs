//! Routing of API requests, the way Firecracker's API server does it.
//!
//! Firecracker looks at the method, the first path segment and whether a body is present, then
//! at the rest of the path (`/drives/{id}`, `/snapshot/create`, `/balloon/hinting/start`). The
//! errors found here (unknown path, empty body, bad id) answer before any body is parsed.

/// An error while routing or parsing, before the VMM sees the request.
#[derive(Debug)]
pub(super) enum RequestError {
    Generic(String),
    EmptyId,
    InvalidId,
    InvalidPathMethod(String, String),
    Serde(String),
}

impl RequestError {
    pub(super) fn message(&self) -> String {
        match self {
            Self::Generic(m) => m.clone(),
            Self::EmptyId => "The ID cannot be empty.".into(),
            Self::InvalidId => {
                "API Resource IDs can only contain alphanumeric characters and underscores.".into()
            }
            Self::InvalidPathMethod(path, method) => {
                format!("Invalid request method and/or path: {method} {path}.")
            }
            Self::Serde(detail) => {
                format!(
                    "An error occurred when deserializing the json body of a request: {detail}."
                )
            }
        }
    }

    pub(super) fn debug_line(&self) -> String {
        match self {
            Self::InvalidPathMethod(path, method) => {
                let m = match method.as_str() {
                    "GET" => "Get".to_string(),
                    "PUT" => "Put".to_string(),
                    "PATCH" => "Patch".to_string(),
                    other => other.to_string(),
                };
                format!("InvalidPathMethod({path:?}, {m})")
            }
            Self::Generic(m) => format!("Generic(400, {m:?})"),
            Self::EmptyId => "EmptyID".into(),
            Self::InvalidId => "InvalidID".into(),
            Self::Serde(d) => format!("SerdeJson({d:?})"),
        }
    }
}

/// What a request asks for, after routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    GetInstanceInfo,
    GetVersion,
    GetVmConfig,
    GetMachineConfig,
    GetMmds,
    GetBalloon,
    GetBalloonStats,
    GetHintingStatus,
    GetHotplugMemory,
    PutActions,
    PutBalloon,
    PutBootSource,
    PutCpuConfig,
    PutDrive(String),
    PutPmem(String),
    PutLogger,
    PutSerial,
    PutMachineConfig,
    PutMetrics,
    PutMmds,
    PutMmdsConfig,
    PutNet(String),
    SnapshotCreate,
    SnapshotLoad,
    PutVsock,
    PutEntropy,
    PutHotplugMemory,
    PatchBalloon,
    PatchBalloonStats,
    HintingStart,
    HintingStop,
    PatchDrive(String),
    PatchPmem(String),
    PatchMachineConfig,
    PatchMmds,
    PatchNet(String),
    PatchVm,
    PatchHotplugMemory,
}

impl Action {
    /// The spec definition the body must satisfy.
    pub(super) fn definition(&self) -> Option<&'static str> {
        Some(match self {
            Self::PutActions => "InstanceActionInfo",
            Self::PutBalloon => "Balloon",
            Self::PutBootSource => "BootSource",
            Self::PutCpuConfig => "CpuConfig",
            Self::PutDrive(_) => "Drive",
            Self::PutPmem(_) => "Pmem",
            Self::PutLogger => "Logger",
            Self::PutSerial => "SerialDevice",
            Self::PutMachineConfig | Self::PatchMachineConfig => "MachineConfiguration",
            Self::PutMetrics => "Metrics",
            Self::PutMmds | Self::PatchMmds => "MmdsContentsObject",
            Self::PutMmdsConfig => "MmdsConfig",
            Self::PutNet(_) => "NetworkInterface",
            Self::SnapshotCreate => "SnapshotCreateParams",
            Self::SnapshotLoad => "SnapshotLoadParams",
            Self::PutVsock => "Vsock",
            Self::PutEntropy => "EntropyDevice",
            Self::PutHotplugMemory => "MemoryHotplugConfig",
            Self::PatchBalloon => "BalloonUpdate",
            Self::PatchBalloonStats => "BalloonStatsUpdate",
            Self::HintingStart => "BalloonStartCmd",
            Self::PatchDrive(_) => "PartialDrive",
            Self::PatchPmem(_) => "PartialPmem",
            Self::PatchNet(_) => "PartialNetworkInterface",
            Self::PatchVm => "Vm",
            Self::PatchHotplugMemory => "MemoryHotplugSizeUpdate",
            _ => return None,
        })
    }

    /// Whether this action is only allowed before boot (`Some(true)`), only after (`Some(false)`),
    /// or in both phases (`None`). `PUT /actions` decides per action type.
    pub(super) fn pre_boot_only(&self) -> Option<bool> {
        match self {
            Self::PutBalloon
            | Self::PutBootSource
            | Self::PutCpuConfig
            | Self::PutDrive(_)
            | Self::PutPmem(_)
            | Self::PutLogger
            | Self::PutSerial
            | Self::PutMachineConfig
            | Self::PatchMachineConfig
            | Self::PutMetrics
            | Self::PutMmdsConfig
            | Self::PutNet(_)
            | Self::SnapshotLoad
            | Self::PutVsock
            | Self::PutEntropy
            | Self::PutHotplugMemory => Some(true),
            Self::SnapshotCreate
            | Self::GetBalloonStats
            | Self::GetHintingStatus
            | Self::GetHotplugMemory
            | Self::PatchBalloon
            | Self::PatchBalloonStats
            | Self::HintingStart
            | Self::HintingStop
            | Self::PatchDrive(_)
            | Self::PatchPmem(_)
            | Self::PatchNet(_)
            | Self::PatchVm
            | Self::PatchHotplugMemory => Some(false),
            _ => None,
        }
    }
}

fn checked_id(id: Option<&str>) -> Result<String, RequestError> {
    let id = id.ok_or(RequestError::EmptyId)?;
    if id.is_empty() {
        return Err(RequestError::EmptyId);
    }
    if !id.chars().all(|c| c == '_' || c.is_alphanumeric()) {
        return Err(RequestError::InvalidId);
    }
    Ok(id.to_string())
}

/// Routes like Firecracker's `ParsedRequest::try_from`.
pub(super) fn route(method: &str, path: &str, has_body: bool) -> Result<Action, RequestError> {
    let trimmed = path.trim_start_matches('/');
    let mut tokens = trimmed.split_terminator('/');
    let first = tokens.next().unwrap_or("");
    let unknown = || RequestError::InvalidPathMethod(first.to_string(), method.to_string());
    match (method, first, has_body) {
        ("GET", "", false) => Ok(Action::GetInstanceInfo),
        ("GET", "balloon", false) => match tokens.next() {
            None => Ok(Action::GetBalloon),
            Some("statistics") => Ok(Action::GetBalloonStats),
            Some("hinting") => match tokens.next() {
                Some("status") => Ok(Action::GetHintingStatus),
                Some(other) => Err(RequestError::Generic(format!(
                    "Unrecognized GET request path `/hinting/{other}`."
                ))),
                None => Err(RequestError::Generic(
                    "Unrecognized GET request path `/hinting/`.".into(),
                )),
            },
            Some(other) => Err(RequestError::Generic(format!(
                "Unrecognized GET request path `{other}`."
            ))),
        },
        ("GET", "version", false) => Ok(Action::GetVersion),
        ("GET", "vm", false) if tokens.next() == Some("config") => Ok(Action::GetVmConfig),
        ("GET", "machine-config", false) => Ok(Action::GetMachineConfig),
        ("GET", "mmds", false) => Ok(Action::GetMmds),
        ("GET", "hotplug", false) if tokens.next() == Some("memory") => {
            Ok(Action::GetHotplugMemory)
        }
        ("GET", _, true) => Err(RequestError::Generic(
            "GET request cannot have a body.".into(),
        )),
        ("PUT", "actions", true) => Ok(Action::PutActions),
        ("PUT", "balloon", true) => Ok(Action::PutBalloon),
        ("PUT", "boot-source", true) => Ok(Action::PutBootSource),
        ("PUT", "cpu-config", true) => Ok(Action::PutCpuConfig),
        ("PUT", "drives", true) => checked_id(tokens.next()).map(Action::PutDrive),
        ("PUT", "pmem", true) => checked_id(tokens.next()).map(Action::PutPmem),
        ("PUT", "logger", true) => Ok(Action::PutLogger),
        ("PUT", "serial", true) => Ok(Action::PutSerial),
        ("PUT", "machine-config", true) => Ok(Action::PutMachineConfig),
        ("PUT", "metrics", true) => Ok(Action::PutMetrics),
        ("PUT", "mmds", true) => match tokens.next() {
            None => Ok(Action::PutMmds),
            Some("config") => Ok(Action::PutMmdsConfig),
            Some(other) => Err(RequestError::Generic(format!(
                "Unrecognized PUT request path `{other}`."
            ))),
        },
        ("PUT", "network-interfaces", true) => checked_id(tokens.next()).map(Action::PutNet),
        ("PUT", "snapshot", true) => match tokens.next() {
            Some("create") => Ok(Action::SnapshotCreate),
            Some("load") => Ok(Action::SnapshotLoad),
            Some(other) => Err(RequestError::InvalidPathMethod(
                format!("/snapshot/{other}"),
                "PUT".into(),
            )),
            None => Err(RequestError::Generic(
                "Missing snapshot operation type.".into(),
            )),
        },
        ("PUT", "vsock", true) => Ok(Action::PutVsock),
        ("PUT", "entropy", true) => Ok(Action::PutEntropy),
        ("PUT", "hotplug", true) if tokens.next() == Some("memory") => Ok(Action::PutHotplugMemory),
        ("PUT", _, false) => Err(RequestError::Generic("Empty PUT request.".into())),
        ("PATCH", "balloon", _) => match (tokens.next(), has_body) {
            (Some("statistics"), true) => Ok(Action::PatchBalloonStats),
            (Some("hinting"), _) => match tokens.next() {
                Some("start") => Ok(Action::HintingStart),
                Some("stop") => Ok(Action::HintingStop),
                Some(other) => Err(RequestError::Generic(format!(
                    "Unrecognized PATCH request path `/hinting/{other}`."
                ))),
                None => Err(RequestError::Generic(
                    "Unrecognized PATCH request path `/hinting/`.".into(),
                )),
            },
            (_, true) => Ok(Action::PatchBalloon),
            (_, false) => Err(RequestError::Generic("Empty PATCH request.".into())),
        },
        ("PATCH", "drives", true) => checked_id(tokens.next()).map(Action::PatchDrive),
        ("PATCH", "pmem", true) => checked_id(tokens.next()).map(Action::PatchPmem),
        ("PATCH", "machine-config", true) => Ok(Action::PatchMachineConfig),
        ("PATCH", "mmds", true) => Ok(Action::PatchMmds),
        ("PATCH", "network-interfaces", true) => checked_id(tokens.next()).map(Action::PatchNet),
        ("PATCH", "vm", true) => Ok(Action::PatchVm),
        ("PATCH", "hotplug", true) if tokens.next() == Some("memory") => {
            Ok(Action::PatchHotplugMemory)
        }
        ("PATCH", _, false) => Err(RequestError::Generic("Empty PATCH request.".into())),
        _ => Err(unknown()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;

    #[test]
    fn routing_matches_firecracker() {
        assert_eq!(route("GET", "/", false).unwrap(), Action::GetInstanceInfo);
        assert_eq!(
            route("GET", "/no-such-endpoint", false)
                .unwrap_err()
                .message(),
            "Invalid request method and/or path: GET no-such-endpoint."
        );
        assert_eq!(
            route("GET", "/vm", false).unwrap_err().message(),
            "Invalid request method and/or path: GET vm."
        );
        assert_eq!(
            route("PUT", "/drives/rootfs", false).unwrap_err().message(),
            "Empty PUT request."
        );
        assert_eq!(
            route("GET", "/machine-config", true).unwrap_err().message(),
            "GET request cannot have a body."
        );
        assert_eq!(
            route("PUT", "/drives/a-b", true).unwrap_err().message(),
            "API Resource IDs can only contain alphanumeric characters and underscores."
        );
        assert_eq!(
            route("PUT", "/drives", true).unwrap_err().message(),
            "The ID cannot be empty."
        );
        assert_eq!(
            route("PUT", "/snapshot/zap", true).unwrap_err().message(),
            "Invalid request method and/or path: PUT /snapshot/zap."
        );
        assert_eq!(
            route("PATCH", "/balloon/hinting/stop", false).unwrap(),
            Action::HintingStop
        );
    }

    #[test]
    fn every_spec_operation_routes() {
        let spec = Spec::bundled();
        for (method, template) in spec.operations() {
            let path = template
                .replace("{drive_id}", "d")
                .replace("{iface_id}", "i")
                .replace("{id}", "p");
            let has_body = spec
                .find_operation(&method, &path)
                .is_some_and(|op| op.body_schema.is_some());
            assert!(
                route(&method, &path, has_body).is_ok(),
                "{method} {path} does not route"
            );
        }
    }
}
