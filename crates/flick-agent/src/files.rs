//! File operations: upload (temp file, checksum, rename), download, stat, mkdir, list, remove.

use crate::session::{Closed, bad_frame};
use crate::wire::{FrameReader, FrameWriter};
use flick_proto::io::{BufferPool, HashThread, SharedChunk, release};
use flick_proto::{
    DataEnd, ErrorBody, FileInfo, FileKind, Kind, Message, Response, UploadRequest, codes,
};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncWrite};

/// Maps an I/O error on `path` to an error body with a stable code.
pub fn io_body(what: &str, path: &str, e: &io::Error) -> ErrorBody {
    let code = match e.raw_os_error() {
        Some(libc::ENOENT) => codes::NOT_FOUND,
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => codes::PERMISSION_DENIED,
        Some(libc::EEXIST | libc::ENOTEMPTY) => codes::ALREADY_EXISTS,
        Some(libc::ENOTDIR) => codes::NOT_A_DIRECTORY,
        Some(libc::EISDIR) => codes::IS_A_DIRECTORY,
        _ => codes::IO,
    };
    let mut body = ErrorBody::new(code, format!("{what} {path}: {e}"));
    body.errno = e.raw_os_error();
    body
}

fn absolute(path: &str) -> Result<&Path, ErrorBody> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(ErrorBody::new(
            codes::INVALID_REQUEST,
            format!("path {path:?} must be absolute"),
        ));
    }
    Ok(Path::new(path))
}

fn info(name: String, path: &Path, meta: &fs::Metadata) -> FileInfo {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        FileKind::File
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    let link_target = ft
        .is_symlink()
        .then(|| fs::read_link(path).ok())
        .flatten()
        .map(|t| t.to_string_lossy().into_owned());
    FileInfo {
        name,
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.size(),
        mtime: meta.mtime(),
        link_target,
    }
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "/".to_owned(), |n| n.to_string_lossy().into_owned())
}

/// Metadata of one path.
pub fn stat(path: &str, follow: bool) -> Result<Response, ErrorBody> {
    let p = absolute(path)?;
    let meta = if follow {
        fs::metadata(p)
    } else {
        fs::symlink_metadata(p)
    }
    .map_err(|e| io_body("stat", path, &e))?;
    Ok(Response::Stat(info(name_of(p), p, &meta)))
}

/// Creates a directory with exactly `mode` (the umask does not apply).
pub fn mkdir(path: &str, mode: u32, parents: bool) -> Result<Response, ErrorBody> {
    let p = absolute(path)?;
    if parents && p.is_dir() {
        return Ok(Response::Ok);
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(parents);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, mode & 0o7777);
    builder.create(p).map_err(|e| io_body("mkdir", path, &e))?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| io_body("chmod", path, &e))?;
    Ok(Response::Ok)
}

/// Entries of a directory, sorted by name.
pub fn list(path: &str) -> Result<Response, ErrorBody> {
    let p = absolute(path)?;
    let mut entries = Vec::new();
    for entry in fs::read_dir(p).map_err(|e| io_body("list", path, &e))? {
        let entry = entry.map_err(|e| io_body("list", path, &e))?;
        let ep = entry.path();
        let Ok(meta) = fs::symlink_metadata(&ep) else {
            continue; // removed while listing
        };
        entries.push(info(
            entry.file_name().to_string_lossy().into_owned(),
            &ep,
            &meta,
        ));
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Response::List { entries })
}

/// Removes a file, a symlink or (recursively, if asked) a directory.
pub fn remove(path: &str, recursive: bool) -> Result<Response, ErrorBody> {
    let p = absolute(path)?;
    if p == Path::new("/") {
        return Err(ErrorBody::new(
            codes::INVALID_REQUEST,
            "refusing to remove /",
        ));
    }
    let meta = fs::symlink_metadata(p).map_err(|e| io_body("remove", path, &e))?;
    let r = if meta.is_dir() {
        if recursive {
            fs::remove_dir_all(p)
        } else {
            fs::remove_dir(p)
        }
    } else {
        fs::remove_file(p)
    };
    r.map_err(|e| io_body("remove", path, &e))?;
    Ok(Response::Ok)
}

/// Writes the received chunks to `file` while a [`HashThread`] hashes the same chunks (with
/// `checksum`). Returns the digest (empty without `checksum`), the size and the first write
/// error; after an error it keeps draining so the upload can be answered.
fn write_chunks(
    mut file: fs::File,
    checksum: bool,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pool: &BufferPool,
) -> (String, u64, Option<io::Error>) {
    let mut size = 0u64;
    let mut err = None;
    let hasher = if checksum {
        HashThread::spawn(pool.clone())
            .map_err(|e| err = Some(e))
            .ok()
    } else {
        None
    };
    while let Some(data) = rx.blocking_recv() {
        size += data.len() as u64;
        let chunk = Arc::new(data);
        if let Some(h) = &hasher {
            h.feed(chunk.clone());
        }
        if err.is_none()
            && let Err(e) = file.write_all(&chunk)
        {
            err = Some(e);
        }
        release(pool, chunk);
    }
    (
        hasher.map(HashThread::finish).unwrap_or_default(),
        size,
        err,
    )
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary file next to the destination, removed unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    file: fs::File,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn open_temp(req: &UploadRequest) -> Result<(TempFile, PathBuf), ErrorBody> {
    let dest = absolute(&req.path)?.to_path_buf();
    let Some(name) = dest.file_name() else {
        return Err(ErrorBody::new(
            codes::INVALID_REQUEST,
            "upload path has no file name",
        ));
    };
    let parent = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
    if req.mkdirs {
        fs::create_dir_all(&parent).map_err(|e| io_body("create parent of", &req.path, &e))?;
    }
    match fs::metadata(&dest) {
        Ok(m) if m.is_dir() => {
            return Err(ErrorBody::new(
                codes::IS_A_DIRECTORY,
                format!("{} is a directory", req.path),
            ));
        }
        _ => {}
    }
    let tmp = parent.join(format!(
        ".{}.flick-upload-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io_body("upload to", &req.path, &e))?;
    Ok((
        TempFile {
            path: tmp,
            file,
            keep: false,
        },
        dest,
    ))
}

/// Receives an upload: answers `Ok` (ready), reads data frames into a temp file, checks the
/// SHA-256 of the closing [`DataEnd`], applies mode and owner, renames into place.
pub async fn upload<R, W>(
    req: UploadRequest,
    rd: &mut FrameReader<R>,
    wr: &mut FrameWriter<W>,
) -> Result<(), Closed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut tmp, dest) = match open_temp(&req) {
        Ok(t) => t,
        Err(body) => return wr.send(&Message::Error(body)).await.map_err(|_| Closed),
    };
    wr.send(&Message::Response(Response::Ok))
        .await
        .map_err(|_| Closed)?;
    // Hashing and writing run on a blocking thread, in parallel with reading the socket.
    let file = match tmp.file.try_clone() {
        Ok(f) => f,
        Err(e) => {
            let body = io_body("upload to", &req.path, &e);
            return wr.send(&Message::Error(body)).await.map_err(|_| Closed);
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let checksum = !req.skip_checksum;
    let pool = rd.pool().clone();
    let writer = tokio::task::spawn_blocking(move || write_chunks(file, checksum, rx, &pool));
    let end = loop {
        match rd.read_frame().await {
            Ok(Some(Message::Data(data))) => {
                // A failed send means the writer stopped; its error is reported at the end.
                let _ = tx.send(data).await;
            }
            Ok(Some(Message::DataEnd(end))) => break end,
            Ok(Some(other)) => {
                let body = ErrorBody::new(
                    codes::BAD_FRAME,
                    format!("unexpected {:?} frame during an upload", other.kind()),
                );
                let _ = wr.send(&Message::Error(body)).await;
                return Err(Closed);
            }
            Ok(None) => return Err(Closed),
            Err(e) => return Err(bad_frame(wr, &e).await),
        }
    };
    drop(tx);
    let (digest, size, write_err) = match writer.await {
        Ok(v) => v,
        Err(e) => (String::new(), 0, Some(io::Error::other(e.to_string()))),
    };
    // The writer and its hasher are done: the connection keeps no chunk buffers.
    rd.pool().clear();
    let result = finish_upload(&req, &mut tmp, &dest, digest, size, &end, write_err);
    // Remove a rejected temp file before answering, so the client never sees it.
    drop(tmp);
    let msg = match result {
        Ok(resp) => Message::Response(resp),
        Err(body) => Message::Error(body),
    };
    wr.send(&msg).await.map_err(|_| Closed)
}

fn finish_upload(
    req: &UploadRequest,
    tmp: &mut TempFile,
    dest: &Path,
    digest: String,
    size: u64,
    end: &DataEnd,
    write_err: Option<io::Error>,
) -> Result<Response, ErrorBody> {
    if let Some(e) = write_err {
        return Err(io_body("write", &req.path, &e));
    }
    if size != end.size || !digest.eq_ignore_ascii_case(&end.sha256) {
        return Err(ErrorBody::new(
            codes::CHECKSUM_MISMATCH,
            format!(
                "{}: received {size} bytes with sha256 {digest}, client announced {} bytes with sha256 {}",
                req.path, end.size, end.sha256
            ),
        ));
    }
    let path = &req.path;
    if req.uid.is_some() || req.gid.is_some() {
        std::os::unix::fs::fchown(&tmp.file, req.uid, req.gid)
            .map_err(|e| io_body("chown", path, &e))?;
    }
    // After chown, because chown clears set-id bits.
    tmp.file
        .set_permissions(fs::Permissions::from_mode(
            req.mode.unwrap_or(0o644) & 0o7777,
        ))
        .map_err(|e| io_body("chmod", path, &e))?;
    fs::rename(&tmp.path, dest).map_err(|e| io_body("rename into", path, &e))?;
    tmp.keep = true;
    Ok(Response::Uploaded {
        size,
        sha256: digest,
    })
}

/// Streams a file: `DownloadStarted`, data frames, then a [`DataEnd`] with size and SHA-256
/// (unless `checksum` is false).
pub async fn download<W: AsyncWrite + Unpin>(
    path: &str,
    checksum: bool,
    wr: &mut FrameWriter<W>,
) -> Result<(), Closed> {
    let opened = absolute(path).and_then(|p| {
        let file = fs::File::open(p).map_err(|e| io_body("download", path, &e))?;
        let meta = file.metadata().map_err(|e| io_body("download", path, &e))?;
        if meta.is_dir() {
            return Err(ErrorBody::new(
                codes::IS_A_DIRECTORY,
                format!("{path} is a directory"),
            ));
        }
        Ok((file, meta))
    });
    let (file, meta) = match opened {
        Ok(v) => v,
        Err(body) => return wr.send(&Message::Error(body)).await.map_err(|_| Closed),
    };
    wr.send(&Message::Response(Response::DownloadStarted {
        size: meta.len(),
        mode: meta.mode() & 0o7777,
    }))
    .await
    .map_err(|_| Closed)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<SharedChunk>>(4);
    let pool = BufferPool::new();
    let reader_pool = pool.clone();
    let reader = tokio::task::spawn_blocking(move || {
        flick_proto::io::read_chunks(file, checksum, &tx, &reader_pool)
    });
    while let Some(chunk) = rx.recv().await {
        match chunk {
            Ok(data) => {
                wr.send_data(Kind::Data, &data).await.map_err(|_| Closed)?;
                release(&pool, data);
            }
            Err(e) => {
                // The stream is mid-flight: an error frame ends it.
                let _ = wr.send(&Message::Error(io_body("read", path, &e))).await;
                return Ok(());
            }
        }
    }
    let Ok(Some((size, sha256))) = reader.await else {
        let body = ErrorBody::new(codes::IO, format!("reading {path} failed"));
        let _ = wr.send(&Message::Error(body)).await;
        return Ok(());
    };
    wr.send(&Message::DataEnd(DataEnd { size, sha256 }))
        .await
        .map_err(|_| Closed)
}
