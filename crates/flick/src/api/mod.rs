//! Firecracker API: HTTP/1.1 over a Unix socket, typed methods for every endpoint, wire models.
//!
//! [`models`] holds Firecracker's JSON shapes; [`FirecrackerClient`] talks to one Firecracker
//! process through its API socket. [`OPERATIONS`] lists every operation of the spec with the
//! method that performs it.

mod client;
pub mod models;

pub use client::{ApiResponse, ClientOptions, FirecrackerClient, OPERATIONS};
