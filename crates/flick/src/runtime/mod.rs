//! Per-VM runtime directories and drive staging.
