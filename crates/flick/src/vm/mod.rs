//! The `MicroVm` state machine and its verbs.

pub mod state;

pub use state::{Operation, VmState};
