//! Framed reading and writing on the host side: the same code as the agent's, from
//! [`flick_proto::io`].

pub(crate) use flick_proto::io::{FrameReader, FrameWriter, ReadError};
