//! File transfer: uploads (streamed, checked by SHA-256, renamed into place by the agent),
//! downloads (streamed, checked, written to a temp file renamed into place), whole directories.
//!
//! By default both ends hash every byte: the sender announces the digest of what it read, the
//! receiver compares it with the digest of what it got. When the caller already knows the
//! digest of the content (`UploadOptions::sha256`, `DownloadOptions::sha256`), the sender's
//! pass is skipped and the receiver checks against the known digest instead: half the hashing,
//! the same guarantee (the file lands only if its bytes hash to that digest).

use super::{AgentClient, Conn, agent_error, io_error, protocol_error, read_error};
use crate::error::{Error, ErrorCode, Result};
use flick_proto::io::{BufferPool, HashThread, SharedChunk, release};
use flick_proto::{
    DataEnd, FileKind, Kind, Message, Request, Response, TRANSFER_CHUNK_SIZE, UploadRequest,
};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Options of an upload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadOptions {
    /// Permission bits (default: the local file's, or 0o644 for a stream).
    pub mode: Option<u32>,
    /// Owner in the guest (default: the agent's user).
    pub uid: Option<u32>,
    /// Group in the guest.
    pub gid: Option<u32>,
    /// Create missing parent directories.
    pub mkdirs: bool,
    /// Check only the size, not the SHA-256 (faster on slow CPUs; the temp-file-and-rename
    /// guarantee stays).
    pub skip_checksum: bool,
    /// The known SHA-256 of the content (hex). The source is then not hashed on the host; the
    /// agent hashes what it receives and rejects the upload (`AGENT_ERROR` with agent code
    /// `CHECKSUM_MISMATCH`, nothing left behind) unless it matches.
    pub sha256: Option<String>,
}

/// Options of a download.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownloadOptions {
    /// Check only the size, not the SHA-256.
    pub skip_checksum: bool,
    /// The expected SHA-256 of the guest file (hex). The agent then does not hash; the host
    /// hashes what it receives and fails (`AGENT_ERROR` with agent code `CHECKSUM_MISMATCH`,
    /// nothing left behind) unless it matches.
    pub sha256: Option<String>,
}

/// Checks a caller-supplied digest and returns it in lowercase.
fn known_digest(sha256: Option<&str>, skip_checksum: bool) -> Result<Option<String>> {
    let Some(hex_digest) = sha256 else {
        return Ok(None);
    };
    if skip_checksum {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            "a known sha256 and skip_checksum exclude each other",
        ));
    }
    if hex_digest.len() != 64 || !hex_digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("{hex_digest:?} is not a SHA-256 digest (64 hex digits)"),
        ));
    }
    Ok(Some(hex_digest.to_ascii_lowercase()))
}

fn checksum_mismatch(message: String) -> Error {
    agent_error(flick_proto::ErrorBody::new(
        flick_proto::codes::CHECKSUM_MISMATCH,
        message,
    ))
}

/// Size and SHA-256 of a completed, verified transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferResult {
    /// Bytes transferred.
    pub size: u64,
    /// Lowercase hex SHA-256 (empty when the checksum was skipped).
    pub sha256: String,
}

fn local_io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(ErrorCode::IoError, what, path, e)
}

async fn upload_on<R: AsyncRead + Unpin>(
    conn: &mut Conn,
    reader: &mut R,
    req: UploadRequest,
    known: Option<String>,
) -> Result<TransferResult> {
    let path = req.path.clone();
    let checksum = !req.skip_checksum && known.is_none();
    conn.send(
        &Message::Request(Request::Upload(req)),
        "starting an upload",
    )
    .await?;
    match conn.response("starting an upload").await? {
        Response::Ok => {}
        other => return Err(protocol_error(format!("unexpected response {other:?}"))),
    }
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; TRANSFER_CHUNK_SIZE];
    loop {
        let n = reader.read(&mut buf).await.map_err(|e| {
            Error::new(ErrorCode::IoError, format!("reading the source of {path}")).with_source(e)
        })?;
        if n == 0 {
            break;
        }
        if checksum {
            hasher.update(&buf[..n]);
        }
        size += n as u64;
        conn.wr
            .send_data(Kind::Data, &buf[..n])
            .await
            .map_err(|e| io_error("uploading", e))?;
    }
    let sha256 = match known {
        Some(known) => known,
        None if checksum => hex::encode(hasher.finalize()),
        None => String::new(),
    };
    conn.send(
        &Message::DataEnd(DataEnd {
            size,
            sha256: sha256.clone(),
        }),
        "finishing an upload",
    )
    .await?;
    match conn.response("finishing an upload").await? {
        Response::Uploaded { size: s, sha256: h } if s == size && h == sha256 => {
            Ok(TransferResult { size, sha256 })
        }
        other => Err(protocol_error(format!(
            "upload of {path}: unexpected answer {other:?}"
        ))),
    }
}

/// Uploads chunks produced (and hashed) by a blocking reader thread.
async fn upload_chunks(
    conn: &mut Conn,
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<SharedChunk>>,
    reader: tokio::task::JoinHandle<Option<(u64, String)>>,
    pool: &BufferPool,
    req: UploadRequest,
    known: Option<String>,
    local: &Path,
) -> Result<TransferResult> {
    let path = req.path.clone();
    conn.send(
        &Message::Request(Request::Upload(req)),
        "starting an upload",
    )
    .await?;
    match conn.response("starting an upload").await? {
        Response::Ok => {}
        other => return Err(protocol_error(format!("unexpected response {other:?}"))),
    }
    while let Some(chunk) = rx.recv().await {
        let data = chunk.map_err(|e| local_io("read", local, e))?;
        conn.wr
            .send_data(Kind::Data, &data)
            .await
            .map_err(|e| io_error("uploading", e))?;
        release(pool, data);
    }
    let (size, read_digest) =
        reader.await.ok().flatten().ok_or_else(|| {
            Error::new(ErrorCode::IoError, format!("reading {}", local.display()))
        })?;
    let sha256 = known.unwrap_or(read_digest);
    conn.send(
        &Message::DataEnd(DataEnd {
            size,
            sha256: sha256.clone(),
        }),
        "finishing an upload",
    )
    .await?;
    match conn.response("finishing an upload").await? {
        Response::Uploaded { size: s, sha256: h } if s == size && h == sha256 => {
            Ok(TransferResult { size, sha256 })
        }
        other => Err(protocol_error(format!(
            "upload of {path}: unexpected answer {other:?}"
        ))),
    }
}

/// Where downloaded bytes go; computes size and SHA-256 of what it received.
trait ChunkSink {
    async fn put(&mut self, data: Vec<u8>) -> std::io::Result<()>;
    async fn finish(self) -> std::io::Result<(u64, String)>;
}

/// Writes into an async writer, hashing inline.
struct HashingWriter<'a, W> {
    writer: &'a mut W,
    hasher: Option<Sha256>,
    size: u64,
    pool: BufferPool,
}

impl<W: AsyncWrite + Unpin> ChunkSink for HashingWriter<'_, W> {
    async fn put(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        if let Some(h) = &mut self.hasher {
            h.update(&data);
        }
        self.size += data.len() as u64;
        self.writer.write_all(&data).await?;
        self.pool.put(data);
        Ok(())
    }

    async fn finish(self) -> std::io::Result<(u64, String)> {
        self.writer.flush().await?;
        Ok((
            self.size,
            self.hasher
                .map(|h| hex::encode(h.finalize()))
                .unwrap_or_default(),
        ))
    }
}

/// Writes a file on a blocking thread, in parallel with reading the socket, while a
/// [`HashThread`] hashes the same chunks.
struct FileSink {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    handle: tokio::task::JoinHandle<std::io::Result<(u64, String)>>,
}

impl FileSink {
    fn new(mut file: std::fs::File, checksum: bool, pool: BufferPool) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let handle = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let hasher = if checksum {
                Some(HashThread::spawn(pool.clone())?)
            } else {
                None
            };
            let mut size = 0u64;
            while let Some(data) = rx.blocking_recv() {
                size += data.len() as u64;
                let chunk = std::sync::Arc::new(data);
                if let Some(h) = &hasher {
                    h.feed(chunk.clone());
                }
                file.write_all(&chunk)?;
                release(&pool, chunk);
            }
            file.flush()?;
            Ok((size, hasher.map(HashThread::finish).unwrap_or_default()))
        });
        Self { tx, handle }
    }
}

impl ChunkSink for FileSink {
    async fn put(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        if self.tx.send(data).await.is_err() {
            // The writer stopped on an error; `finish` reports it.
            return Err(std::io::Error::other("the file writer stopped"));
        }
        Ok(())
    }

    async fn finish(self) -> std::io::Result<(u64, String)> {
        drop(self.tx);
        self.handle
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

/// Runs a download into `sink`. The agent hashes when `agent_hashes`; with a `known` digest,
/// what the sink computed must equal it.
async fn download_on<S: ChunkSink>(
    conn: &mut Conn,
    remote: &str,
    mut sink: S,
    agent_hashes: bool,
    known: Option<&str>,
) -> Result<(TransferResult, u32)> {
    let req = Request::Download {
        path: remote.to_owned(),
        skip_checksum: !agent_hashes,
    };
    conn.send(&Message::Request(req), "starting a download")
        .await?;
    let mode = match conn.response("starting a download").await? {
        Response::DownloadStarted { mode, .. } => mode,
        other => return Err(protocol_error(format!("unexpected response {other:?}"))),
    };
    let write_err = |e: std::io::Error| {
        Error::new(
            ErrorCode::IoError,
            format!("writing the download of {remote}"),
        )
        .with_source(e)
    };
    let mut sink_failed: Option<std::io::Error> = None;
    loop {
        let msg = match conn.rd.read_frame().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(Error::new(
                    ErrorCode::AgentConnectFailed,
                    format!("the agent closed the connection while sending {remote}"),
                ));
            }
            Err(e) => return Err(read_error("downloading", e)),
        };
        match msg {
            Message::Data(data) => {
                // Keep reading to the end of the stream so the connection stays usable.
                if sink_failed.is_none()
                    && let Err(e) = sink.put(data).await
                {
                    sink_failed = Some(e);
                }
            }
            Message::DataEnd(end) => {
                let finished = sink.finish().await;
                if let Some(e) = sink_failed {
                    return Err(write_err(finished.err().unwrap_or(e)));
                }
                let (size, sha256) = finished.map_err(write_err)?;
                if end.size != size || (agent_hashes && end.sha256 != sha256) {
                    return Err(Error::new(
                        ErrorCode::AgentProtocolError,
                        format!(
                            "download of {remote}: received {size} bytes with sha256 {sha256}, \
                             the agent announced {} bytes with sha256 {}",
                            end.size, end.sha256
                        ),
                    ));
                }
                if let Some(known) = known
                    && known != sha256
                {
                    return Err(checksum_mismatch(format!(
                        "download of {remote}: received {size} bytes with sha256 {sha256}, \
                         expected sha256 {known}"
                    )));
                }
                return Ok((TransferResult { size, sha256 }, mode));
            }
            Message::Error(body) => return Err(agent_error(body)),
            other => {
                return Err(protocol_error(format!(
                    "unexpected {:?} frame during a download",
                    other.kind()
                )));
            }
        }
    }
}

impl AgentClient {
    /// Streams `reader` into the guest file `remote`. The agent writes a temp file, checks the
    /// SHA-256 and renames it into place, so a failed upload leaves nothing behind.
    pub async fn upload_reader<R: AsyncRead + Unpin>(
        &self,
        reader: &mut R,
        remote: &str,
        opts: &UploadOptions,
    ) -> Result<TransferResult> {
        let req = UploadRequest {
            path: remote.to_owned(),
            mode: opts.mode,
            uid: opts.uid,
            gid: opts.gid,
            mkdirs: opts.mkdirs,
            skip_checksum: opts.skip_checksum,
        };
        let known = known_digest(opts.sha256.as_deref(), opts.skip_checksum)?;
        let (mut conn, _) = self.checkout().await?;
        let result = upload_on(&mut conn, reader, req, known).await;
        if result.is_ok() {
            self.give_back(conn);
        }
        result
    }

    /// Uploads a local file; its permission bits are kept unless `opts.mode` says otherwise.
    pub async fn upload(
        &self,
        local: &Path,
        remote: &str,
        opts: &UploadOptions,
    ) -> Result<TransferResult> {
        let known = known_digest(opts.sha256.as_deref(), opts.skip_checksum)?;
        let file = std::fs::File::open(local).map_err(|e| local_io("open", local, e))?;
        let meta = file.metadata().map_err(|e| local_io("stat", local, e))?;
        if meta.is_dir() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{} is a directory (use upload_dir)", local.display()),
            ));
        }
        let req = UploadRequest {
            path: remote.to_owned(),
            mode: opts.mode.or(Some(meta.permissions().mode() & 0o7777)),
            uid: opts.uid,
            gid: opts.gid,
            mkdirs: opts.mkdirs,
            skip_checksum: opts.skip_checksum,
        };
        let checksum = !opts.skip_checksum && known.is_none();
        let (mut conn, _) = self.checkout().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let pool = BufferPool::new();
        let reader_pool = pool.clone();
        let reader = tokio::task::spawn_blocking(move || {
            flick_proto::io::read_chunks(file, checksum, &tx, &reader_pool)
        });
        let result = upload_chunks(&mut conn, rx, reader, &pool, req, known, local).await;
        if result.is_ok() {
            self.give_back(conn);
        }
        result
    }

    /// Streams the guest file `remote` into `writer`, checking its SHA-256.
    pub async fn download_writer<W: AsyncWrite + Unpin>(
        &self,
        remote: &str,
        writer: &mut W,
    ) -> Result<TransferResult> {
        let (mut conn, _) = self.checkout().await?;
        let sink = HashingWriter {
            writer,
            hasher: Some(Sha256::new()),
            size: 0,
            pool: conn.rd.pool().clone(),
        };
        let result = download_on(&mut conn, remote, sink, true, None).await;
        conn.rd.pool().clear();
        match result {
            Ok((r, _)) => {
                self.give_back(conn);
                Ok(r)
            }
            Err(e) => Err(e),
        }
    }

    /// Downloads a guest file to `local` (temp file in the same directory, renamed into place
    /// after the checksum matched; the guest file's permission bits are kept).
    pub async fn download(&self, remote: &str, local: &Path) -> Result<TransferResult> {
        self.download_with(remote, local, &DownloadOptions::default())
            .await
    }

    /// [`AgentClient::download`] with options.
    pub async fn download_with(
        &self,
        remote: &str,
        local: &Path,
        opts: &DownloadOptions,
    ) -> Result<TransferResult> {
        let known = known_digest(opts.sha256.as_deref(), opts.skip_checksum)?;
        let parent = local
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".flick-download-")
            .tempfile_in(parent)
            .map_err(|e| local_io("create a temp file in", parent, e))?;
        let (tmp_file, tmp_path) = tmp.into_parts();
        let perms_handle = tmp_file
            .try_clone()
            .map_err(|e| local_io("open", &tmp_path, e))?;
        let (mut conn, _) = self.checkout().await?;
        let sink = FileSink::new(tmp_file, !opts.skip_checksum, conn.rd.pool().clone());
        let agent_hashes = !opts.skip_checksum && known.is_none();
        let outcome = download_on(&mut conn, remote, sink, agent_hashes, known.as_deref()).await;
        // The sink has finished with its chunks: the pooled connection keeps no buffers.
        conn.rd.pool().clear();
        let (result, mode) = outcome?;
        self.give_back(conn);
        perms_handle
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| local_io("chmod", local, e))?;
        drop(perms_handle);
        tmp_path
            .persist(local)
            .map_err(|e| local_io("rename into", local, e.error))?;
        Ok(result)
    }

    /// Uploads a local directory tree to `remote` (created if missing). Files and directories
    /// keep their permission bits; symlinks are followed.
    pub async fn upload_dir(
        &self,
        local: &Path,
        remote: &str,
        opts: &UploadOptions,
    ) -> Result<u64> {
        let meta = std::fs::metadata(local).map_err(|e| local_io("stat", local, e))?;
        self.mkdir(remote, meta.permissions().mode() & 0o7777, true)
            .await?;
        let mut count = 0;
        let mut stack = vec![(local.to_path_buf(), remote.trim_end_matches('/').to_owned())];
        while let Some((dir, rdir)) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| local_io("list", &dir, e))?
                .collect::<std::io::Result<_>>()
                .map_err(|e| local_io("list", &dir, e))?;
            entries.sort_by_key(std::fs::DirEntry::file_name);
            for entry in entries {
                let path = entry.path();
                let name = entry.file_name();
                let rpath = format!("{rdir}/{}", name.to_string_lossy());
                let meta = std::fs::metadata(&path).map_err(|e| local_io("stat", &path, e))?;
                if meta.is_dir() {
                    self.mkdir(&rpath, meta.permissions().mode() & 0o7777, true)
                        .await?;
                    stack.push((path, rpath));
                } else {
                    let mut o = opts.clone();
                    o.mode = None;
                    self.upload(&path, &rpath, &o).await?;
                    count += 1;
                }
            }
        }
        Ok(count)
    }

    /// Downloads a guest directory tree into `local` (created if missing); symlinks are
    /// recreated as symlinks. Returns the number of files.
    pub async fn download_dir(&self, remote: &str, local: &Path) -> Result<u64> {
        std::fs::create_dir_all(local).map_err(|e| local_io("create", local, e))?;
        let mut count = 0;
        let mut stack = vec![(remote.trim_end_matches('/').to_owned(), local.to_path_buf())];
        while let Some((rdir, dir)) = stack.pop() {
            for entry in self.list(if rdir.is_empty() { "/" } else { &rdir }).await? {
                let rpath = format!("{rdir}/{}", entry.name);
                let path = dir.join(&entry.name);
                match entry.kind {
                    FileKind::Dir => {
                        std::fs::create_dir_all(&path).map_err(|e| local_io("create", &path, e))?;
                        std::fs::set_permissions(
                            &path,
                            std::fs::Permissions::from_mode(entry.mode),
                        )
                        .map_err(|e| local_io("chmod", &path, e))?;
                        stack.push((rpath, path));
                    }
                    FileKind::File => {
                        self.download(&rpath, &path).await?;
                        count += 1;
                    }
                    FileKind::Symlink => {
                        if let Some(target) = &entry.link_target {
                            let _ = std::fs::remove_file(&path);
                            std::os::unix::fs::symlink(target, &path)
                                .map_err(|e| local_io("symlink", &path, e))?;
                        }
                    }
                    FileKind::Other => {}
                }
            }
        }
        Ok(count)
    }
}
