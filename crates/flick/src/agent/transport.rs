//! Reaching the agent: a Unix socket directly, or Firecracker's vsock Unix socket with the
//! `CONNECT <port>\n` → `OK <host port>\n` handshake.

use crate::error::{Error, ErrorCode, Result};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Where the agent listens, seen from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentTransport {
    /// A Unix socket the agent listens on itself (agent running on the host, tests).
    Unix(PathBuf),
    /// Firecracker's host side of the guest vsock device (`vsock.uds_path`) and the agent's port.
    FirecrackerVsock {
        /// The `uds_path` configured for the VM's vsock device.
        uds_path: PathBuf,
        /// The guest port the agent listens on (usually [`flick_proto::DEFAULT_VSOCK_PORT`]).
        port: u32,
    },
}

/// Longest `OK ...` line accepted from Firecracker.
const MAX_REPLY: usize = 64;

/// Performs the Firecracker vsock handshake on a connected stream.
///
/// The reply is read one byte at a time: whatever follows the newline already belongs to the
/// agent's stream and must stay in the socket.
pub async fn firecracker_connect(stream: &mut UnixStream, port: u32) -> std::io::Result<u32> {
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!(
                    "Firecracker closed the connection (nothing listens on guest port {port}?)"
                ),
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_REPLY {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "over-long vsock handshake reply",
            ));
        }
    }
    let text = String::from_utf8_lossy(&line);
    text.strip_prefix("OK ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected vsock handshake reply {text:?}"),
            )
        })
}

impl AgentTransport {
    /// Opens one byte stream to the agent, bounded by `timeout`.
    pub(crate) async fn open(&self, timeout: Duration) -> Result<UnixStream> {
        let fut = async {
            match self {
                AgentTransport::Unix(path) => UnixStream::connect(path).await,
                AgentTransport::FirecrackerVsock { uds_path, port } => {
                    let mut s = UnixStream::connect(uds_path).await?;
                    firecracker_connect(&mut s, *port).await?;
                    Ok(s)
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(Error::new(
                ErrorCode::AgentConnectFailed,
                format!("cannot reach the agent through {}", self.describe()),
            )
            .with_source(e)),
            Err(_) => Err(Error::new(
                ErrorCode::AgentTimeout,
                format!(
                    "connecting to the agent through {} timed out",
                    self.describe()
                ),
            )),
        }
    }

    fn describe(&self) -> String {
        match self {
            AgentTransport::Unix(p) => p.display().to_string(),
            AgentTransport::FirecrackerVsock { uds_path, port } => {
                format!("{} port {port}", uds_path.display())
            }
        }
    }
}
