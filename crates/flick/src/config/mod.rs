//! The user-facing VM configuration, validation and conversion to Firecracker payloads.
