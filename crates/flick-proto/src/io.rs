//! Framed reading and writing over any async byte stream (feature `tokio`), shared by the host
//! client and the agent.
//!
//! The reader keeps its own buffer and only ever performs one `read` per poll, so
//! [`FrameReader::read_frame`] is cancellation safe: dropping it inside `select!` loses no bytes.
//!
//! File transfers move their bytes in [`crate::TRANSFER_CHUNK_SIZE`] buffers that circulate
//! through a [`BufferPool`]: the producer (the file reader, or the frame reader for large data
//! frames) takes a buffer, the consumer (the socket writer, or the file writer) gives it back.
//! A transfer thus touches a handful of buffers whose pages stay mapped, instead of allocating,
//! faulting in and freeing half a megabyte per chunk.
//!
//! SHA-256 runs on a [`HashThread`] of its own, fed the same chunks (shared, not copied) as the
//! file or socket side, so hashing overlaps reading and writing instead of adding to them.

use crate::{HEADER_LEN, Header, Kind, MAX_PAYLOAD, Message, ProtoError, decode_frame};
use std::io;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Idle buffers a pool keeps at most; more are freed when given back.
const POOL_LIMIT: usize = 8;

/// A shared stash of byte buffers for reuse (cheap to clone; clones share the stash).
#[derive(Debug, Clone, Default)]
pub struct BufferPool {
    idle: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl BufferPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer with room for at least `capacity` bytes, reused when one is idle.
    pub fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = self.idle.lock().map(|mut idle| idle.pop()).ok().flatten();
        match reused {
            Some(mut buf) => {
                buf.clear();
                buf.reserve(capacity);
                buf
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Gives a buffer back for reuse (freed if the pool is full or the buffer is tiny).
    pub fn put(&self, buf: Vec<u8>) {
        if buf.capacity() < DIRECT_READ_MIN {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < POOL_LIMIT
        {
            idle.push(buf);
        }
    }

    /// Frees the idle buffers (a connection that stays open after a transfer keeps nothing).
    pub fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            *idle = Vec::new();
        }
    }

    /// Number of idle buffers (for tests and diagnostics).
    pub fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }
}

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
    /// Where the buffers of large data payloads come from; consumers may give them back.
    pool: BufferPool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(2 * crate::CHUNK_SIZE),
            start: 0,
            partial: None,
            pool: BufferPool::new(),
        }
    }

    /// The pool large data payloads are read into. Giving a payload's buffer back
    /// ([`BufferPool::put`]) once it is consumed lets the next frame reuse it.
    pub fn pool(&self) -> &BufferPool {
        &self.pool
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
                    let mut payload = self.pool.take(header.len);
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

    /// Writes a data-carrying frame without copying the payload into a message first. Header
    /// and payload go out in one vectored write, so the peer never wakes up for a lone header.
    pub async fn send_data(&mut self, kind: Kind, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_PAYLOAD) {
            let header = Header::encode(kind, chunk.len());
            let mut done = 0;
            let total = HEADER_LEN + chunk.len();
            while done < total {
                let n = if done < HEADER_LEN {
                    let parts = [io::IoSlice::new(&header[done..]), io::IoSlice::new(chunk)];
                    self.inner.write_vectored(&parts).await?
                } else {
                    self.inner.write(&chunk[done - HEADER_LEN..]).await?
                };
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                done += n;
            }
        }
        Ok(())
    }

    /// Flushes buffered bytes.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().await
    }
}

/// A chunk shared by the consumers of one transfer (the file or socket side and the hasher).
pub type SharedChunk = Arc<Vec<u8>>;

/// Gives `chunk` back to `pool` if this was its last user.
pub fn release(pool: &BufferPool, chunk: SharedChunk) {
    if let Some(buf) = Arc::into_inner(chunk) {
        pool.put(buf);
    }
}

/// Chunks that may wait for the hasher; beyond that the feeder blocks (bounded memory).
const HASH_QUEUE: usize = 4;

/// SHA-256 of a stream of chunks, computed on its own thread. Feed it from blocking code only
/// ([`HashThread::feed`] blocks while the queue is full).
#[derive(Debug)]
pub struct HashThread {
    tx: Option<std::sync::mpsc::SyncSender<SharedChunk>>,
    handle: Option<std::thread::JoinHandle<String>>,
}

impl HashThread {
    /// Starts the thread; hashed chunks are released to `pool`.
    pub fn spawn(pool: BufferPool) -> io::Result<Self> {
        use sha2::{Digest, Sha256};
        let (tx, rx) = std::sync::mpsc::sync_channel::<SharedChunk>(HASH_QUEUE);
        let handle = std::thread::Builder::new()
            .name("flick-sha256".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                for chunk in rx {
                    hasher.update(&chunk[..]);
                    release(&pool, chunk);
                }
                hex::encode(hasher.finalize())
            })?;
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Queues a chunk (in stream order).
    pub fn feed(&self, chunk: SharedChunk) {
        if let Some(tx) = &self.tx {
            // The thread only stops once `tx` is dropped, so sending cannot fail.
            let _ = tx.send(chunk);
        }
    }

    /// Waits for the queued chunks and returns the lowercase hex digest.
    pub fn finish(mut self) -> String {
        drop(self.tx.take());
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for HashThread {
    fn drop(&mut self) {
        // Closing the queue ends the thread; nobody waits for its result.
        drop(self.tx.take());
    }
}

/// Reads `file` in [`crate::TRANSFER_CHUNK_SIZE`] chunks on a blocking thread and sends them to
/// `tx`; with `checksum`, a [`HashThread`] hashes the same chunks meanwhile. Chunk buffers come
/// from `pool`; the consumer hands them back with [`release`]. Returns the size and the hex
/// digest (empty without `checksum`), or `None` when reading failed (the error was sent) or the
/// receiver went away.
#[must_use]
pub fn read_chunks(
    mut file: std::fs::File,
    checksum: bool,
    tx: &tokio::sync::mpsc::Sender<io::Result<SharedChunk>>,
    pool: &BufferPool,
) -> Option<(u64, String)> {
    use std::io::Read;
    let hasher = if checksum {
        match HashThread::spawn(pool.clone()) {
            Ok(h) => Some(h),
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return None;
            }
        }
    } else {
        None
    };
    let mut size = 0u64;
    loop {
        let mut buf = pool.take(crate::TRANSFER_CHUNK_SIZE);
        // `read_to_end` on a `File` reads into the spare capacity without zeroing it first,
        // and fills the whole chunk unless the file ends.
        match (&mut file)
            .take(crate::TRANSFER_CHUNK_SIZE as u64)
            .read_to_end(&mut buf)
        {
            Ok(0) => {
                pool.put(buf);
                let digest = hasher.map(HashThread::finish).unwrap_or_default();
                return Some((size, digest));
            }
            Ok(n) => size += n as u64,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return None;
            }
        }
        let chunk = Arc::new(buf);
        if let Some(h) = &hasher {
            h.feed(chunk.clone());
        }
        if tx.blocking_send(Ok(chunk)).is_err() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DataEnd, TRANSFER_CHUNK_SIZE};
    use sha2::{Digest, Sha256};

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
            .collect()
    }

    #[test]
    fn pool_reuses_buffers_and_keeps_a_bounded_number() {
        let pool = BufferPool::new();
        let mut buf = pool.take(100_000);
        assert!(buf.capacity() >= 100_000 && buf.is_empty());
        buf.extend_from_slice(&[7; 1000]);
        let ptr = buf.as_ptr();
        pool.put(buf);
        assert_eq!(pool.idle(), 1);
        // The same allocation comes back, emptied, and grows when asked for more.
        let again = pool.take(50_000);
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0));
        let bigger = {
            pool.put(again);
            pool.take(300_000)
        };
        assert!(bigger.capacity() >= 300_000);
        // Tiny buffers are not worth keeping; the stash is capped.
        pool.put(Vec::with_capacity(16));
        assert_eq!(pool.idle(), 0);
        for _ in 0..3 * POOL_LIMIT {
            pool.put(Vec::with_capacity(DIRECT_READ_MIN));
        }
        assert_eq!(pool.idle(), POOL_LIMIT);
        // Clones share the stash.
        let clone = pool.clone();
        let _ = clone.take(1);
        assert_eq!(pool.idle(), POOL_LIMIT - 1);
        clone.clear();
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn data_frames_survive_partial_writes_and_split_at_the_payload_limit() {
        // A 7-byte pipe forces the vectored header+payload write to be cut everywhere.
        let (a, b) = tokio::io::duplex(7);
        let small = pattern(300_001, 1);
        let huge = pattern(2 * MAX_PAYLOAD + 5, 2);
        let (s2, h2) = (small.clone(), huge.clone());
        let writer = tokio::spawn(async move {
            let mut wr = FrameWriter::new(a);
            wr.send_data(Kind::Data, &s2).await.unwrap();
            wr.send_data(Kind::Stdout, &h2).await.unwrap();
            wr.send_data(Kind::Data, b"").await.unwrap();
            wr.send(&Message::DataEnd(DataEnd {
                size: 1,
                sha256: "x".into(),
            }))
            .await
            .unwrap();
        });
        let mut rd = FrameReader::new(b);
        let mut frames = Vec::new();
        while let Some(m) = rd.read_frame().await.unwrap() {
            frames.push(m);
        }
        writer.await.unwrap();
        let kinds: Vec<Kind> = frames.iter().map(Message::kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Data,
                Kind::Stdout,
                Kind::Stdout,
                Kind::Stdout,
                Kind::DataEnd
            ],
            "an empty data slice sends no frame; 2 MiB + 5 is split in three"
        );
        assert!(matches!(&frames[0], Message::Data(d) if *d == small));
        let mut joined = Vec::new();
        for f in &frames[1..4] {
            let Message::Stdout(d) = f else {
                panic!("{f:?}")
            };
            assert!(d.len() <= MAX_PAYLOAD);
            joined.extend_from_slice(d);
        }
        assert!(joined == huge);
    }

    #[tokio::test]
    async fn large_payloads_land_in_recycled_buffers_without_stale_bytes() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let first = pattern(TRANSFER_CHUNK_SIZE, 3);
        let second = pattern(DIRECT_READ_MIN + 1, 4);
        let (f2, s2) = (first.clone(), second.clone());
        tokio::spawn(async move {
            let mut wr = FrameWriter::new(a);
            wr.send_data(Kind::Data, &f2).await.unwrap();
            wr.send_data(Kind::Data, &s2).await.unwrap();
        });
        let mut rd = FrameReader::new(b);
        let Some(Message::Data(one)) = rd.read_frame().await.unwrap() else {
            panic!("expected data")
        };
        assert!(one == first);
        let ptr = one.as_ptr();
        rd.pool().put(one);
        let Some(Message::Data(two)) = rd.read_frame().await.unwrap() else {
            panic!("expected data")
        };
        assert_eq!(two.as_ptr(), ptr, "the given-back buffer is reused");
        assert!(
            two == second,
            "exactly the new payload, nothing of the old one"
        );
        assert_eq!(rd.pool().idle(), 0);
        assert!(rd.read_frame().await.unwrap().is_none());
    }

    #[test]
    fn hash_thread_digests_the_stream_and_releases_each_chunk_after_its_last_user() {
        let pool = BufferPool::new();
        let h = HashThread::spawn(pool.clone()).unwrap();
        let mut whole = Vec::new();
        let mut held = Vec::new();
        for i in 0..10u8 {
            let mut buf = pool.take(DIRECT_READ_MIN);
            buf.extend(pattern(DIRECT_READ_MIN + usize::from(i) * 1000, i));
            whole.extend_from_slice(&buf);
            let chunk = Arc::new(buf);
            h.feed(chunk.clone());
            held.push(chunk);
        }
        let digest = h.finish();
        assert_eq!(digest, hex::encode(Sha256::digest(&whole)));
        // The hasher is done, but the chunks are still held here: nothing went back yet.
        assert_eq!(pool.idle(), 0);
        for chunk in held {
            release(&pool, chunk);
        }
        assert_eq!(
            pool.idle(),
            POOL_LIMIT,
            "released by the last user, up to the limit"
        );
        // An empty stream has the digest of nothing.
        let empty = HashThread::spawn(BufferPool::new()).unwrap().finish();
        assert_eq!(empty, hex::encode(Sha256::digest(b"")));
    }

    fn temp_file(name: &str, data: &[u8]) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("flick-proto-io-{}-{name}", std::process::id()));
        std::fs::write(&path, data).unwrap();
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_chunks_fills_whole_chunks_and_hashes_what_it_sent() {
        let c = TRANSFER_CHUNK_SIZE;
        for (i, len) in [0, 1, c - 1, c, c + 1, 3 * c + 7].into_iter().enumerate() {
            let data = pattern(len, i as u8);
            let path = temp_file(&format!("chunks-{len}"), &data);
            for checksum in [true, false] {
                let file = std::fs::File::open(&path).unwrap();
                let pool = BufferPool::new();
                let (tx, mut rx) = tokio::sync::mpsc::channel(2);
                let p2 = pool.clone();
                let reader =
                    tokio::task::spawn_blocking(move || read_chunks(file, checksum, &tx, &p2));
                let mut got = Vec::new();
                let mut sizes = Vec::new();
                while let Some(chunk) = rx.recv().await {
                    let chunk = chunk.unwrap();
                    sizes.push(chunk.len());
                    got.extend_from_slice(&chunk);
                    // Given back at once: a later chunk reuses it and must not show old bytes.
                    release(&pool, chunk);
                }
                let (size, digest) = reader.await.unwrap().unwrap();
                assert_eq!(size, len as u64);
                assert!(got == data, "len {len}");
                let full = sizes.iter().filter(|&&n| n == c).count();
                assert_eq!(
                    full,
                    len / c,
                    "every chunk but the last is whole: {sizes:?}"
                );
                assert_eq!(sizes.len(), len.div_ceil(c));
                let want = if checksum {
                    hex::encode(Sha256::digest(&data))
                } else {
                    String::new()
                };
                assert_eq!(digest, want);
            }
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_chunks_sends_a_read_error_and_stops() {
        // Reading a directory fails with EISDIR after a successful open.
        let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let reader =
            tokio::task::spawn_blocking(move || read_chunks(dir, true, &tx, &BufferPool::new()));
        let err = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::IsADirectory);
        assert!(rx.recv().await.is_none());
        assert!(reader.await.unwrap().is_none());
    }
}
