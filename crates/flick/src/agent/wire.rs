//! Framed reading and writing on the host side (same layout as the agent's, see
//! [`flick_proto`]). The reader buffers internally so it is cancellation safe.

use flick_proto::{HEADER_LEN, Header, Kind, MAX_PAYLOAD, Message, ProtoError, decode_frame};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Proto(ProtoError),
}

#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(2 * flick_proto::CHUNK_SIZE),
            start: 0,
        }
    }

    /// The next frame; `Ok(None)` on a clean end of stream between frames.
    pub(crate) async fn read_frame(&mut self) -> Result<Option<Message>, ReadError> {
        loop {
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
            let room = want.max(flick_proto::CHUNK_SIZE + HEADER_LEN);
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
        }
    }
}

#[derive(Debug)]
pub(crate) struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(4096),
        }
    }

    pub(crate) async fn send(&mut self, msg: &Message) -> io::Result<()> {
        self.buf.clear();
        msg.encode_into(&mut self.buf);
        self.inner.write_all(&self.buf).await
    }

    pub(crate) async fn send_data(&mut self, kind: Kind, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_PAYLOAD) {
            self.inner
                .write_all(&Header::encode(kind, chunk.len()))
                .await?;
            self.inner.write_all(chunk).await?;
        }
        Ok(())
    }
}
