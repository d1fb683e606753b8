//! Spawning and supervising firecracker and jailer processes.
