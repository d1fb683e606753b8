//! The microVM state machine: which operation is allowed in which state.
//!
//! ```text
//!  Created ──start──► Configuring ──InstanceStart──► Running ◄──resume── Paused
//!                          │                           │ └────pause────►  │
//!                          │                           └──stop/kill──► Stopped ◄──stop/kill──┘
//!                          └──────── any failure ────► Error
//! ```
//!
//! Every operation checks the current state first and fails with [`ErrorCode::InvalidState`]
//! naming the current state and the allowed ones.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Error, ErrorCode, Result};

/// Where a microVM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Defined, nothing running yet.
    Created,
    /// Firecracker is starting and being configured.
    Configuring,
    /// Booted and running.
    Running,
    /// Booted, vCPUs paused.
    Paused,
    /// Firecracker has exited.
    Stopped,
    /// Something failed; only `cleanup` (and `kill`) remain.
    Error,
}

impl VmState {
    /// The state as its lower-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configuring => "configuring",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Error => "error",
        }
    }

    /// Whether a Firecracker process may exist in this state.
    #[must_use]
    pub fn has_process(self) -> bool {
        matches!(self, Self::Configuring | Self::Running | Self::Paused)
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Operations on a microVM, for state checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // One variant per `MicroVm` method of the same name.
pub enum Operation {
    Start,
    Pause,
    Resume,
    Stop,
    Kill,
    Cleanup,
    Info,
    Version,
    SetMetadata,
    PatchMetadata,
    GetMetadata,
    UpdateDrive,
    UpdateNetworkInterface,
    UpdateBalloon,
    BalloonStats,
    CreateSnapshot,
}

impl Operation {
    /// The operation's name as the API spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Stop => "stop",
            Self::Kill => "kill",
            Self::Cleanup => "cleanup",
            Self::Info => "info",
            Self::Version => "version",
            Self::SetMetadata => "set_metadata",
            Self::PatchMetadata => "patch_metadata",
            Self::GetMetadata => "get_metadata",
            Self::UpdateDrive => "update_drive",
            Self::UpdateNetworkInterface => "update_network_interface",
            Self::UpdateBalloon => "update_balloon",
            Self::BalloonStats => "balloon_stats",
            Self::CreateSnapshot => "create_snapshot",
        }
    }

    /// The states this operation is allowed in.
    #[must_use]
    pub fn allowed_in(self) -> &'static [VmState] {
        use VmState::{Configuring, Created, Error, Paused, Running, Stopped};
        match self {
            Self::Start => &[Created],
            Self::Pause => &[Running],
            Self::Resume => &[Paused],
            Self::Stop => &[Running, Paused],
            Self::Kill => &[Configuring, Running, Paused, Error],
            Self::Cleanup => &[Created, Configuring, Running, Paused, Stopped, Error],
            Self::CreateSnapshot => &[Paused],
            Self::Info
            | Self::Version
            | Self::SetMetadata
            | Self::PatchMetadata
            | Self::GetMetadata
            | Self::UpdateDrive
            | Self::UpdateNetworkInterface
            | Self::UpdateBalloon
            | Self::BalloonStats => &[Running, Paused],
        }
    }

    /// Checks that `self` may run in `state`.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] naming the current and the allowed states.
    pub fn check(self, state: VmState) -> Result<()> {
        let allowed = self.allowed_in();
        if allowed.contains(&state) {
            return Ok(());
        }
        let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        Err(Error::new(
            ErrorCode::InvalidState,
            format!(
                "cannot {} a VM that is {state}; allowed in: {}",
                self.as_str(),
                names.join(", ")
            ),
        )
        .with_details(json!({
            "operation": self.as_str(),
            "state": state,
            "allowed": allowed,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_STATES: [VmState; 6] = [
        VmState::Created,
        VmState::Configuring,
        VmState::Running,
        VmState::Paused,
        VmState::Stopped,
        VmState::Error,
    ];

    #[test]
    fn invalid_transitions_name_current_and_allowed_states() {
        let err = Operation::Pause.check(VmState::Created).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidState);
        assert_eq!(err.details().unwrap()["state"], "created");
        assert_eq!(err.details().unwrap()["allowed"], json!(["running"]));
        assert!(err.message().contains("cannot pause a VM that is created"));
    }

    #[test]
    fn cleanup_is_allowed_everywhere_and_snapshot_only_when_paused() {
        for s in ALL_STATES {
            assert!(Operation::Cleanup.check(s).is_ok());
            assert_eq!(
                Operation::CreateSnapshot.check(s).is_ok(),
                s == VmState::Paused
            );
            assert_eq!(Operation::Start.check(s).is_ok(), s == VmState::Created);
        }
    }
}
