//! Firecracker binaries, base images, manifests, the verified download cache and the initrd builder.
pub mod initrd;
