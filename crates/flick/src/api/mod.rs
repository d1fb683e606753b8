//! Firecracker API: HTTP/1.1 over a Unix socket, typed methods for every endpoint, wire models.
//!
//! [`models`] holds Firecracker's JSON shapes; [`FirecrackerClient`] talks to one Firecracker
//! process through its API socket.

pub mod models;
