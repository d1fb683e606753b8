//! Wire types shared by the flick host library and the guest agent.
#![warn(missing_docs)]

/// The agent protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
