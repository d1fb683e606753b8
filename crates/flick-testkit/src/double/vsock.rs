//! The host side of Firecracker's vsock device, emulated.
//!
//! Firecracker listens on the vsock device's `uds_path`. A host process connects, writes
//! `CONNECT <port>\n`, and Firecracker answers `OK <host port>\n` once the guest accepted, after
//! which the Unix connection carries the guest stream. When nothing in the guest listens on the
//! port, Firecracker closes the connection without writing anything.
//!
//! The double has no guest, so each guest port maps to a Unix socket chosen by the test
//! (`--vsock-port PORT=PATH` or `FC_DOUBLE_VSOCK_PORTS`): on `CONNECT` the double dials that
//! socket and, if it answers, writes `OK <n>` and splices bytes both ways. The `CONNECT` line is
//! read one byte at a time so no byte meant for the guest is swallowed.
//!
//! Only a running microVM answers: before `InstanceStart` and while paused, a connection waits
//! (as the guest could not accept it) and is served once the microVM runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// Guest port -> host Unix socket standing in for the guest service.
pub type PortMap = BTreeMap<u32, PathBuf>;

/// The first local port number Firecracker hands out to host-initiated connections (`1 << 30`).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Longest `CONNECT` line accepted (Firecracker keeps it short too).
const MAX_LINE: usize = 64;

/// Parses `1024=/p/a.sock,1025=/p/b.sock` (entries also accepted one by one).
///
/// # Errors
/// On an entry that is not `PORT=PATH` with a numeric port.
pub fn parse_port_map(entries: &[String]) -> Result<PortMap, String> {
    let mut map = PortMap::new();
    for entry in entries.iter().flat_map(|e| e.split(',')) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (port, path) = entry
            .split_once('=')
            .ok_or_else(|| format!("vsock port entry `{entry}` is not PORT=PATH"))?;
        let port: u32 = port
            .trim()
            .parse()
            .map_err(|_| format!("vsock port `{port}` is not a number"))?;
        if path.is_empty() {
            return Err(format!("vsock port {port} has an empty path"));
        }
        map.insert(port, PathBuf::from(path));
    }
    Ok(map)
}

/// Serves host-initiated vsock connections on `listener` until the task is aborted.
pub async fn serve(listener: UnixListener, ports: Arc<PortMap>, running: watch::Receiver<bool>) {
    let next_port = Arc::new(AtomicU32::new(FIRST_LOCAL_PORT));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let ports = Arc::clone(&ports);
        let next_port = Arc::clone(&next_port);
        let mut running = running.clone();
        tokio::spawn(async move {
            let _ = handle(stream, &ports, &next_port, &mut running).await;
        });
    }
}

async fn handle(
    mut host: UnixStream,
    ports: &PortMap,
    next_port: &AtomicU32,
    running: &mut watch::Receiver<bool>,
) -> std::io::Result<()> {
    let Some(line) = read_line(&mut host).await? else {
        return Ok(());
    };
    if running.wait_for(|r| *r).await.is_err() {
        return Ok(());
    }
    let Some(port) = parse_connect(&line) else {
        return Ok(());
    };
    let Some(target) = ports.get(&port) else {
        return Ok(());
    };
    let Ok(mut guest) = UnixStream::connect(target).await else {
        return Ok(());
    };
    let local = next_port.fetch_add(1, Ordering::Relaxed);
    host.write_all(format!("OK {local}\n").as_bytes()).await?;
    let _ = tokio::io::copy_bidirectional(&mut host, &mut guest).await;
    Ok(())
}

/// Reads up to and including `\n`, one byte at a time. `None` on EOF or an overlong line.
async fn read_line(stream: &mut UnixStream) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Ok(None);
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8(line).ok());
        }
        line.push(byte[0]);
        if line.len() > MAX_LINE {
            return Ok(None);
        }
    }
}

/// `CONNECT 1024` -> `Some(1024)`.
fn parse_connect(line: &str) -> Option<u32> {
    let rest = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    rest.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_maps_parse_from_flags_and_env_shapes() {
        let map = parse_port_map(&["1024=/p/a.sock,1025=/p/b.sock".into(), "7=/x".into()]).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(map[&1025], PathBuf::from("/p/b.sock"));
        assert!(parse_port_map(&["abc=/x".into()]).is_err());
        assert!(parse_port_map(&["1024".into()]).is_err());
        assert!(parse_port_map(&["1024=".into()]).is_err());
    }

    #[test]
    fn connect_lines_parse() {
        assert_eq!(parse_connect("CONNECT 52"), Some(52));
        assert_eq!(parse_connect("CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect("connect 52"), None);
        assert_eq!(parse_connect("CONNECT x"), None);
    }
}
