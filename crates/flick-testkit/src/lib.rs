//! Test support for flick. **Not for production use.**
//!
//! - [`spec`]: Firecracker v1.16.1's own API spec, vendored, and a validator for request bodies.
//! - `fc-double` (a binary): a Firecracker *test double* that serves the v1.16.1 API on a Unix
//!   socket so tests can run on hosts where a real Firecracker cannot boot. It is a stand-in for
//!   tests, never a replacement for Firecracker.
#![warn(missing_docs)]

pub mod fixture_server;
pub mod spec;
