//! The `MicroVm` state machine and its verbs.
//!
//! - [`state`]: which operation is allowed in which state;
//! - [`microvm`]: one VM — start, pause/resume, stop, kill, cleanup, metadata, updates,
//!   snapshots;
//! - [`snapshot`]: the on-disk snapshot format clones are restored from.

pub mod jailer;
pub mod microvm;
pub mod snapshot;
pub mod state;

pub use jailer::{CpuMax, JailerOptions};
pub use microvm::{AttachRecord, MicroVm, StagedDrive, StopOutcome, VmRuntimeOptions, VmStatus};
pub use snapshot::{Snapshot, SnapshotKind, SnapshotOptions};
pub use state::{Operation, VmState};
