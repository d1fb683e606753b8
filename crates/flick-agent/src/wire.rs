//! Framed I/O, shared with the host: see [`flick_proto::io`].

pub use flick_proto::io::{FrameReader, FrameWriter, ReadError};
