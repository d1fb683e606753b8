//! Persistent VM records for programs that outlive a single process.
