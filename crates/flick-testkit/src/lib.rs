//! Test support for flick. **Not for production use.**
//!
//! - [`spec`]: Firecracker v1.16.1's own API spec, vendored, and a validator for request bodies.
//! - [`double`] and the `fc-double` binary: a Firecracker *test double* that serves the v1.16.1
//!   API on a Unix socket so tests can run on hosts where a real Firecracker cannot boot. It is a
//!   stand-in for tests, never a replacement for Firecracker: it runs no guest.
//! - [`harness`]: find or build `fc-double` ([`fc_double_path`]), run it ([`FcDouble`]) and talk
//!   to it ([`raw_request`]) from other crates' tests.
//! - the `jailer-double` binary ([`jailer_double_path`]): a test double of Firecracker's
//!   `jailer` that builds the real jail and cgroup layout and execs `fc-double` inside it.
//! - [`transcript`]: the recorded answers of a real Firecracker v1.16.1, parsed.
//! - [`fixture_server`]: a real HTTP server on 127.0.0.1 serving release, bucket and manifest
//!   fixtures in the formats of the real services, able to misbehave on request.
#![warn(missing_docs)]

pub mod double;
pub mod fixture_server;
pub mod harness;
pub mod spec;
pub mod transcript;

pub use harness::{
    FcDouble, FcDoubleOptions, fc_double_path, jailer_double_path, raw_request, workspace_binary,
};
