//! Host side of the guest agent (vsock CONNECT handshake, authenticated typed client).
