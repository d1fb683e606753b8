//! Firecracker API: HTTP/1.1 over a Unix socket, typed methods for every endpoint, wire models.
