//! Framed reading and writing over any async byte stream (feature `tokio`), shared by the host
//! client and the agent.
//!
//! The reader keeps its own buffer and only ever performs one `read` per poll, so
//! [`FrameReader::read_frame`] is cancellation safe: dropping it inside `select!` loses no bytes.

use crate::{HEADER_LEN, Header, Kind, MAX_PAYLOAD, Message, ProtoError, decode_frame};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Data payloads at least this large are read straight into their own buffer.
const DIRECT_READ_MIN: usize = 16 * 1024;

/// Why a frame could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The transport failed (or closed in the middle of a frame).
    Io(io::Error),
    /// The peer sent bytes that are not a valid frame.
    Proto(ProtoError),
}

/// Reads frames from a stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    /// A large data payload being read straight into its own buffer: kind, bytes, length.
    partial: Option<(Kind, Vec<u8>, usize)>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(2 * crate::CHUNK_SIZE),
            start: 0,
            partial: None,
        }
    }

    /// The next frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Message>, ReadError> {
        loop {
            if let Some((_, payload, len)) = &mut self.partial {
                if payload.len() == *len {
                    let (kind, payload, _) = self.partial.take().expect("checked");
                    let msg = Message::from_data(kind, payload).expect("data kind");
                    return Ok(Some(msg));
                }
                let want = (*len - payload.len()) as u64;
                let n = (&mut self.inner)
                    .take(want)
                    .read_buf(payload)
                    .await
                    .map_err(ReadError::Io)?;
                if n == 0 {
                    return Err(ReadError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "stream ended inside a frame",
                    )));
                }
                continue;
            }
            // Large data payloads skip the shared buffer: one copy from the socket, no memmove.
            let avail = &self.buf[self.start..];
            if avail.len() >= HEADER_LEN {
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(&avail[..HEADER_LEN]);
                let header = Header::parse(h).map_err(ReadError::Proto)?;
                if header.kind.is_data()
                    && header.len >= DIRECT_READ_MIN
                    && avail.len() < HEADER_LEN + header.len
                {
                    let mut payload = Vec::with_capacity(header.len);
                    payload.extend_from_slice(&avail[HEADER_LEN..]);
                    self.buf.clear();
                    self.start = 0;
                    self.partial = Some((header.kind, payload, header.len));
                    continue;
                }
            }
            match decode_frame(&self.buf[self.start..]) {
                Ok(Some((msg, used))) => {
                    self.start += used;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    return Ok(Some(msg));
                }
                Ok(None) => {}
                Err(e) => return Err(ReadError::Proto(e)),
            }
            // Compact so the buffer never exceeds one maximal frame plus one read.
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let want = if self.buf.len() >= HEADER_LEN {
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(&self.buf[..HEADER_LEN]);
                let header = Header::parse(h).map_err(ReadError::Proto)?;
                (HEADER_LEN + header.len).saturating_sub(self.buf.len())
            } else {
                HEADER_LEN - self.buf.len()
            };
            // Small reads: a large payload is read directly once its header is known.
            let room = want.clamp(4096, 64 * 1024);
            self.buf.reserve(room);
            let n = (&mut self.inner)
                .take(room as u64)
                .read_buf(&mut self.buf)
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a frame",
                )));
            }
            debug_assert!(self.buf.len() <= 2 * (MAX_PAYLOAD + HEADER_LEN));
        }
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes frames to a stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Encodes and writes one message.
    pub async fn send(&mut self, msg: &Message) -> io::Result<()> {
        self.buf.clear();
        msg.encode_into(&mut self.buf);
        self.inner.write_all(&self.buf).await
    }

    /// Writes a data-carrying frame without copying the payload into a message first.
    pub async fn send_data(&mut self, kind: Kind, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_PAYLOAD) {
            self.inner
                .write_all(&Header::encode(kind, chunk.len()))
                .await?;
            self.inner.write_all(chunk).await?;
        }
        Ok(())
    }

    /// Flushes buffered bytes.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().await
    }
}

/// Reads `file` in [`crate::TRANSFER_CHUNK_SIZE`] chunks on a blocking thread and sends them to
/// `tx`, hashing with SHA-256 as it goes when `checksum` is set. Returns the size and the hex
/// digest (empty without `checksum`), or `None` when reading failed (the error was sent) or the
/// receiver went away.
#[must_use]
pub fn read_chunks(
    mut file: std::fs::File,
    checksum: bool,
    tx: &tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>,
) -> Option<(u64, String)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let mut buf = vec![0u8; crate::TRANSFER_CHUNK_SIZE];
        let n = match file.read(&mut buf) {
            Ok(0) => {
                let digest = if checksum {
                    hex::encode(hasher.finalize())
                } else {
                    String::new()
                };
                return Some((size, digest));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return None;
            }
        };
        buf.truncate(n);
        if checksum {
            hasher.update(&buf);
        }
        size += n as u64;
        if tx.blocking_send(Ok(buf)).is_err() {
            return None;
        }
    }
}
