//! The one error type at flick's library surface.
//!
//! Every failure carries a stable [`ErrorCode`] (serialized as a SCREAMING_SNAKE string, never
//! renamed or reused), a human message that does not repeat its source, the HTTP status when a
//! Firecracker answer caused it, and structured details (for example every problem a config
//! validation found). Modules keep their own context in the message and details; callers match on
//! the code.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident => $text:literal,)*) => {
        /// Stable, machine-readable error codes.
        ///
        /// The serialized strings are a public contract: codes are only ever added.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[doc = $doc])* #[serde(rename = $text)] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as its stable string.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }

            /// Parses the stable string back into a code.
            #[must_use]
            pub fn from_code(text: &str) -> Option<Self> {
                match text {
                    $($text => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    // --- Foundation: state machine, config, API client --------------------------------------
    /// An operation was called in a state that does not allow it.
    InvalidState => "INVALID_STATE",
    /// A VM configuration failed validation; details list every problem.
    InvalidConfig => "INVALID_CONFIG",
    /// The Firecracker API socket file never appeared.
    SocketTimeout => "SOCKET_TIMEOUT",
    /// The API socket exists but Firecracker never answered, or a request timed out.
    ApiTimeout => "API_TIMEOUT",
    /// Connecting to or talking over a Unix socket failed.
    SocketRequestFailed => "SOCKET_REQUEST_FAILED",
    /// Firecracker answered a typed request with a non-2xx status.
    ApiError => "API_ERROR",
    /// A Firecracker or jailer binary is missing or not executable.
    BinaryNotFound => "BINARY_NOT_FOUND",
    /// No API client is attached (the VM has not been started or was cleaned up).
    NoClient => "NO_CLIENT",
    /// Starting a VM failed; everything created for it was removed.
    StartFailed => "START_FAILED",
    // --- Artifacts -------------------------------------------------------------------------
    /// A download failed (HTTP status, connection, checksum or size).
    DownloadFailed => "DOWNLOAD_FAILED",
    /// The latest Firecracker version could not be determined.
    VersionFetchFailed => "VERSION_FETCH_FAILED",
    /// No kernel/rootfs pair could be resolved for a base-image preset.
    BaseImageResolveFailed => "BASE_IMAGE_RESOLVE_FAILED",
    /// A hosted base-image manifest could not be loaded.
    BaseImageManifestFailed => "BASE_IMAGE_MANIFEST_FAILED",
    /// A base-image bundle could not be prepared in the cache.
    BaseImagePrepareFailed => "BASE_IMAGE_PREPARE_FAILED",
    /// A hosted base-image manifest is malformed; the message names the field.
    InvalidBaseImageManifest => "INVALID_BASE_IMAGE_MANIFEST",
    /// The base-image cache limit is invalid (for example 0).
    InvalidBaseImageCacheLimit => "INVALID_BASE_IMAGE_CACHE_LIMIT",
    /// Creating a root filesystem image failed.
    RootfsCreateFailed => "ROOTFS_CREATE_FAILED",
    /// Cloning a root filesystem image failed.
    RootfsCloneFailed => "ROOTFS_CLONE_FAILED",
    // --- Networking ------------------------------------------------------------------------
    /// A subnet is malformed or its prefix is out of range.
    InvalidSubnet => "INVALID_SUBNET",
    /// A bridge or TAP name is invalid.
    InvalidInterfaceName => "INVALID_INTERFACE_NAME",
    /// An egress firewall rule is invalid.
    InvalidFirewallConfig => "INVALID_FIREWALL_CONFIG",
    /// A WireGuard configuration is invalid.
    InvalidWireguardConfig => "INVALID_WIREGUARD_CONFIG",
    /// No guest address is left in the subnet.
    IpExhausted => "IP_EXHAUSTED",
    /// Creating or configuring the bridge failed.
    BridgeSetupFailed => "BRIDGE_SETUP_FAILED",
    /// Setting up WireGuard egress failed.
    WireguardSetupFailed => "WIREGUARD_SETUP_FAILED",
    /// Creating a TAP device failed.
    TapCreateFailed => "TAP_CREATE_FAILED",
    /// Installing NAT or firewall rules failed.
    FirewallSetupFailed => "FIREWALL_SETUP_FAILED",
    /// Another network setup step failed (forwarding, routes, rules).
    NetworkSetupFailed => "NETWORK_SETUP_FAILED",
    // --- Lifecycle -------------------------------------------------------------------------
    /// No VM (or snapshot, image, ...) with that id or name exists.
    NotFound => "NOT_FOUND",
    /// A VM (or other named object) with that id or name exists already.
    AlreadyExists => "ALREADY_EXISTS",
    /// Staging a drive into the runtime directory failed.
    DriveStagingFailed => "DRIVE_STAGING_FAILED",
    /// Spawning or supervising the Firecracker (or jailer) process failed.
    ProcessFailed => "PROCESS_FAILED",
    /// Stopping a VM failed.
    StopFailed => "STOP_FAILED",
    /// Creating a snapshot failed.
    SnapshotFailed => "SNAPSHOT_FAILED",
    /// Restoring a VM from a snapshot failed; everything created for it was removed.
    RestoreFailed => "RESTORE_FAILED",
    /// Removing a resource during cleanup failed.
    CleanupFailed => "CLEANUP_FAILED",
    // --- Guest agent -----------------------------------------------------------------------
    /// The guest agent could not be reached.
    AgentConnectFailed => "AGENT_CONNECT_FAILED",
    /// The guest agent refused the token or the protocol version.
    AgentAuthFailed => "AGENT_AUTH_FAILED",
    /// The guest agent did not become ready or answer in time.
    AgentTimeout => "AGENT_TIMEOUT",
    /// The guest agent sent something that does not follow the protocol.
    AgentProtocolError => "AGENT_PROTOCOL_ERROR",
    /// The guest agent reported a failure (details carry its own code).
    AgentError => "AGENT_ERROR",
    /// Building the initrd failed.
    InitrdBuildFailed => "INITRD_BUILD_FAILED",
    // --- Images, store, CLI ----------------------------------------------------------------
    /// An OCI image reference is malformed.
    InvalidImageReference => "INVALID_IMAGE_REFERENCE",
    /// Pulling or converting an OCI image failed.
    ImagePullFailed => "IMAGE_PULL_FAILED",
    /// An archive entry would be written outside its target root.
    UnsafeArchivePath => "UNSAFE_ARCHIVE_PATH",
    /// Reading or writing persistent state failed.
    StoreFailed => "STORE_FAILED",
    /// An egress policy is invalid.
    InvalidEgressPolicy => "INVALID_EGRESS_POLICY",
    /// A caller-supplied argument is invalid (outside config validation).
    InvalidArgument => "INVALID_ARGUMENT",
    /// A host precondition is missing (root, /dev/kvm, a tool).
    HostUnsupported => "HOST_UNSUPPORTED",
    /// A filesystem operation failed; the message names the path.
    IoError => "IO_ERROR",
    /// A bug or an unexpected condition inside flick.
    Internal => "INTERNAL",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type BoxedSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The library's error: a stable code, a message, an optional HTTP status, structured details and
/// the underlying cause.
pub struct Error {
    code: ErrorCode,
    message: String,
    status: Option<u16>,
    details: Option<Value>,
    source: Option<BoxedSource>,
}

impl Error {
    /// A new error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            status: None,
            details: None,
            source: None,
        }
    }

    /// Attaches the HTTP status that caused this error.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Attaches structured details (any JSON value).
    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxedSource>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// An [`ErrorCode::IoError`] (or another code) for an I/O failure on a path.
    pub fn io(code: ErrorCode, what: &str, path: &std::path::Path, err: std::io::Error) -> Self {
        Self::new(code, format!("{what} {}", path.display()))
            .with_details(serde_json::json!({ "path": path, "os_error": err.raw_os_error() }))
            .with_source(err)
    }

    /// The stable code.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message, without the cause.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status that caused this error, if any.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Structured details, if any.
    #[must_use]
    pub fn details(&self) -> Option<&Value> {
        self.details.as_ref()
    }

    /// The message followed by every cause, separated by `: `.
    #[must_use]
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            out.push_str(": ");
            out.push_str(&cause.to_string());
            next = cause.source();
        }
        out
    }

    /// The JSON shape the CLI prints: `{"code", "message", "status"?, "details"?}`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut obj = serde_json::Map::new();
        obj.insert("code".into(), Value::from(self.code.as_str()));
        obj.insert("message".into(), Value::from(self.chain()));
        if let Some(status) = self.status {
            obj.insert("status".into(), Value::from(status));
        }
        if let Some(details) = &self.details {
            obj.insert("details".into(), details.clone());
        }
        Value::Object(obj)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("code", &self.code).field("message", &self.message);
        if let Some(status) = self.status {
            d.field("status", &status);
        }
        if let Some(details) = &self.details {
            d.field("details", details);
        }
        if let Some(source) = &self.source {
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for code in ErrorCode::ALL {
            let text = serde_json::to_string(code).unwrap();
            assert_eq!(text, format!("\"{}\"", code.as_str()));
            assert_eq!(ErrorCode::from_code(code.as_str()), Some(*code));
            assert!(seen.insert(code.as_str()), "duplicate code {code}");
            assert!(
                code.as_str()
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_'),
                "{code} is not SCREAMING_SNAKE"
            );
        }
    }

    #[test]
    fn required_codes_exist() {
        for name in [
            "INVALID_STATE",
            "INVALID_CONFIG",
            "SOCKET_TIMEOUT",
            "API_TIMEOUT",
            "SOCKET_REQUEST_FAILED",
            "API_ERROR",
            "BINARY_NOT_FOUND",
            "DOWNLOAD_FAILED",
            "VERSION_FETCH_FAILED",
            "BASE_IMAGE_RESOLVE_FAILED",
            "BASE_IMAGE_MANIFEST_FAILED",
            "BASE_IMAGE_PREPARE_FAILED",
            "INVALID_BASE_IMAGE_MANIFEST",
            "INVALID_BASE_IMAGE_CACHE_LIMIT",
            "INVALID_SUBNET",
            "INVALID_INTERFACE_NAME",
            "INVALID_FIREWALL_CONFIG",
            "INVALID_WIREGUARD_CONFIG",
            "IP_EXHAUSTED",
            "BRIDGE_SETUP_FAILED",
            "WIREGUARD_SETUP_FAILED",
            "TAP_CREATE_FAILED",
            "ROOTFS_CREATE_FAILED",
            "ROOTFS_CLONE_FAILED",
            "START_FAILED",
            "NO_CLIENT",
        ] {
            assert!(ErrorCode::from_code(name).is_some(), "missing {name}");
        }
    }

    #[test]
    fn json_shape_carries_status_details_and_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let err = Error::new(ErrorCode::ApiError, "PUT /machine-config failed")
            .with_status(400)
            .with_details(serde_json::json!({"fault_message": "bad"}))
            .with_source(io);
        let json = err.to_json();
        assert_eq!(json["code"], "API_ERROR");
        assert_eq!(json["status"], 400);
        assert_eq!(json["details"]["fault_message"], "bad");
        assert_eq!(json["message"], "PUT /machine-config failed: gone");
        assert_eq!(err.to_string(), "API_ERROR: PUT /machine-config failed");
    }
}
