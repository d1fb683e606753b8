//! Verified, resumable downloads.
//!
//! # Flow of [`Downloader::fetch_to_file`]
//!
//! 1. Bytes go to `<dest>.part`. If that file exists (an earlier run was interrupted), its bytes
//!    are hashed first and the request asks for the rest with `Range: bytes=<len>-`.
//! 2. A `206` whose `Content-Range` starts at that offset continues the file; a `200` (the server
//!    ignored `Range`) restarts the file with the full body it carries; a `416` or a `206` at
//!    another offset restarts from zero with a new request.
//! 3. The body streams through a bounded channel to a blocking writer thread that feeds the
//!    SHA-256 hasher and the file in the same pass, so hashing overlaps with receiving.
//! 4. A connection that breaks mid-body is retried with `Range` from the bytes already written;
//!    `5xx` answers are retried; `4xx` answers are not.
//! 5. At the end the size and digest are compared with what the caller expects, the file is
//!    fsync'd and renamed onto `<dest>`, and the directory is fsync'd. If the digest is wrong after
//!    a resume from an earlier run's partial file, the download is repeated once from zero.
//!
//! Any error removes the partial file, so a failed call leaves nothing behind. A call that is
//! cancelled (its future dropped, the process killed) leaves the partial file for the next call to
//! resume.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::progress::{Progress, ProgressEvent, ProgressUpdate};
use super::sync_dir;
use crate::error::{Error, ErrorCode, Result};

/// The largest text document (release JSON, checksum file, bucket listing, manifest) accepted.
const MAX_TEXT_BYTES: usize = 32 << 20;
/// Write buffer of the writer thread.
const WRITE_BUFFER: usize = 1 << 20;

/// What a downloaded artifact must look like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// The lowercase hex SHA-256, when known.
    pub sha256: Option<String>,
    /// The size in bytes, when known.
    pub size: Option<u64>,
}

/// A verified artifact in its final place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Where it is.
    pub path: PathBuf,
    /// Its lowercase hex SHA-256.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes taken over from an earlier run's partial file (0 when started fresh).
    pub resumed_from: u64,
    /// HTTP requests made (0 for local copies).
    pub requests: u32,
}

/// An HTTP client for artifacts, with retry and resume.
#[derive(Clone)]
pub struct Downloader {
    client: reqwest::Client,
    max_attempts: u32,
    retry_delay: Duration,
    github_token: Option<String>,
}

impl std::fmt::Debug for Downloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloader")
            .field("max_attempts", &self.max_attempts)
            .field("retry_delay", &self.retry_delay)
            .field(
                "github_token",
                &self.github_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// Extra headers of one text request.
pub(crate) type Headers<'a> = &'a [(&'static str, String)];

enum Step {
    /// The body was received completely.
    Complete,
    /// The connection broke; resume from the bytes written.
    Broken(reqwest::Error),
}

struct WriterOut {
    file: Option<File>,
    hasher: Sha256,
    written: u64,
    error: Option<std::io::Error>,
}

fn download_failed(url: &str, msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::DownloadFailed, msg).with_details(json!({ "url": url }))
}

fn io_failed(url: &str, what: &str, path: &Path, err: std::io::Error) -> Error {
    Error::new(
        ErrorCode::DownloadFailed,
        format!("{what} {} while downloading {url}", path.display()),
    )
    .with_details(json!({ "url": url, "path": path, "os_error": err.raw_os_error() }))
    .with_source(err)
}

/// An error for a request that never got an HTTP answer (or lost its connection), marked with
/// `details.transport = true` so callers can tell "offline" from "the server said no".
fn transport_failed(code: ErrorCode, url: &str, msg: String) -> Error {
    Error::new(code, msg).with_details(json!({ "url": url, "transport": true }))
}

/// Whether `err` is a connection-level failure (no HTTP answer) from [`Downloader`].
#[must_use]
pub fn is_transport_error(err: &Error) -> bool {
    err.details()
        .and_then(|d| d.get("transport"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
}

/// `<dest>.part`.
#[must_use]
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Opens (or creates) a partial file and hashes what it already holds.
fn open_partial(part: &Path) -> std::io::Result<(File, Sha256, u64)> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(part)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    file.seek(std::io::SeekFrom::Start(len))?;
    Ok((file, hasher, len))
}

fn reset_file(file: &mut File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(std::io::SeekFrom::Start(0))?;
    Ok(())
}

/// Parses the start offset of `Content-Range: bytes START-END/TOTAL`.
fn content_range_start(value: Option<&reqwest::header::HeaderValue>) -> Option<u64> {
    let text = value?.to_str().ok()?;
    let spec = text.trim().strip_prefix("bytes ")?;
    let (range, _total) = spec.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    start.trim().parse().ok()
}

/// Hashes a file (1 MiB reads); returns the hex digest and the length.
pub(crate) fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), len))
}

/// Checks that `text` is 64 hex digits; returns it lowercased.
pub(crate) fn normalize_sha256(text: &str) -> Option<String> {
    (text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

impl Downloader {
    /// A client with flick's user agent, a 30 s connect timeout and a 60 s read timeout, three
    /// attempts per request and 200 ms between attempts.
    ///
    /// # Errors
    /// [`ErrorCode::Internal`] if the HTTP client cannot be built (TLS setup).
    pub fn new() -> Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("flick/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| {
                Error::new(ErrorCode::Internal, "building the HTTP client").with_source(e)
            })?;
        Ok(Self {
            client,
            max_attempts: 3,
            retry_delay: Duration::from_millis(200),
            github_token: None,
        })
    }

    /// Sets how many requests one download may make before giving up (at least 1).
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sends `token` as a bearer token to the GitHub releases API (raises its rate limit for
    /// unauthenticated clients, 60 requests an hour). It is only sent on the release lookup, never
    /// to download hosts.
    #[must_use]
    pub fn with_github_token(mut self, token: Option<String>) -> Self {
        self.github_token = token.filter(|t| !t.trim().is_empty());
        self
    }

    /// The headers for a GitHub API request: the JSON media type, the API version and the token.
    pub(crate) fn github_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("accept", "application/vnd.github+json".to_owned()),
            ("x-github-api-version", "2022-11-28".to_owned()),
        ];
        if let Some(token) = &self.github_token {
            headers.push(("authorization", format!("Bearer {}", token.trim())));
        }
        headers
    }

    /// Sets the pause between attempts.
    #[must_use]
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    async fn pause(&self, attempt: u32) {
        tokio::time::sleep(self.retry_delay * attempt).await;
    }

    /// GETs a small text document (JSON, XML, checksum file). Connection errors and `5xx` are
    /// retried; any failure becomes `code` with the HTTP status attached when there was one.
    ///
    /// # Errors
    /// `code` for connection failures, non-2xx answers, bodies over 32 MiB or non-UTF-8 bodies.
    pub async fn fetch_text(&self, url: &str, code: ErrorCode, what: &str) -> Result<String> {
        self.fetch_text_with(url, code, what, &[]).await
    }

    /// [`fetch_text`](Self::fetch_text) with extra request headers.
    pub(crate) async fn fetch_text_with(
        &self,
        url: &str,
        code: ErrorCode,
        what: &str,
        headers: Headers<'_>,
    ) -> Result<String> {
        let fail = |msg: String| Error::new(code, msg).with_details(json!({ "url": url }));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.client.get(url);
            for (name, value) in headers {
                req = req.header(*name, value);
            }
            let resp = match req.send().await {
                Ok(resp) => resp,
                Err(e) if attempt < self.max_attempts => {
                    tracing::debug!(url, error = %e, "retrying request");
                    self.pause(attempt).await;
                    continue;
                }
                Err(e) => {
                    return Err(
                        transport_failed(code, url, format!("fetching {what} from {url}"))
                            .with_source(e),
                    );
                }
            };
            let status = resp.status();
            if status.is_server_error() && attempt < self.max_attempts {
                self.pause(attempt).await;
                continue;
            }
            if !status.is_success() {
                return Err(fail(format!("fetching {what} from {url}: HTTP {status}"))
                    .with_status(status.as_u16()));
            }
            if resp
                .content_length()
                .is_some_and(|l| l > MAX_TEXT_BYTES as u64)
            {
                return Err(fail(format!("{what} at {url} is larger than 32 MiB")));
            }
            let mut body = Vec::new();
            let mut stream = resp.bytes_stream();
            let mut broken = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => {
                        body.extend_from_slice(&chunk);
                        if body.len() > MAX_TEXT_BYTES {
                            return Err(fail(format!("{what} at {url} is larger than 32 MiB")));
                        }
                    }
                    Err(e) => {
                        broken = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = broken {
                if attempt < self.max_attempts {
                    self.pause(attempt).await;
                    continue;
                }
                return Err(
                    transport_failed(code, url, format!("reading {what} from {url}"))
                        .with_source(e),
                );
            }
            return String::from_utf8(body)
                .map_err(|e| fail(format!("{what} at {url} is not UTF-8")).with_source(e));
        }
    }

    /// Downloads `url` to `dest`, verifying `expected`; see the module docs for the flow.
    ///
    /// # Errors
    /// [`ErrorCode::DownloadFailed`] for HTTP errors (status attached), broken connections after
    /// every attempt, size or checksum mismatches and local write failures (disk full). The partial
    /// file is removed.
    pub async fn fetch_to_file(
        &self,
        url: &str,
        dest: &Path,
        expected: &Expected,
        progress: &dyn Progress,
    ) -> Result<Downloaded> {
        self.fetch_to_file_with(url, dest, expected, &[], progress)
            .await
    }

    /// [`fetch_to_file`](Self::fetch_to_file) with extra request headers (registry
    /// credentials). reqwest drops `Authorization` when a redirect leaves the host.
    pub(crate) async fn fetch_to_file_with(
        &self,
        url: &str,
        dest: &Path,
        expected: &Expected,
        headers: Headers<'_>,
        progress: &dyn Progress,
    ) -> Result<Downloaded> {
        let part = partial_path(dest);
        let result = self
            .fetch_inner(url, dest, &part, expected, headers, progress)
            .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        result
    }

    async fn fetch_inner(
        &self,
        url: &str,
        dest: &Path,
        part: &Path,
        expected: &Expected,
        headers: Headers<'_>,
        progress: &dyn Progress,
    ) -> Result<Downloaded> {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let part_owned = part.to_owned();
        let (mut file, mut hasher, mut offset) =
            tokio::task::spawn_blocking(move || open_partial(&part_owned))
                .await
                .map_err(|e| Error::new(ErrorCode::Internal, "writer task").with_source(e))?
                .map_err(|e| io_failed(url, "opening", part, e))?;
        if expected.size.is_some_and(|size| offset > size) {
            reset_file(&mut file).map_err(|e| io_failed(url, "truncating", part, e))?;
            hasher = Sha256::new();
            offset = 0;
        }
        let mut resumed_from = offset;
        let mut requests = 0u32;
        let mut attempt = 0u32;
        let report = |done: u64, total: Option<u64>, event: ProgressEvent| {
            progress.update(&ProgressUpdate {
                artifact: &name,
                done,
                total,
                event,
            });
        };
        loop {
            let complete_already = offset > 0 && expected.size == Some(offset);
            if !complete_already {
                attempt += 1;
                requests += 1;
                let mut req = self.client.get(url);
                for (name, value) in headers {
                    req = req.header(*name, value);
                }
                if offset > 0 {
                    req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
                }
                let resp = match req.send().await {
                    Ok(resp) => resp,
                    Err(e) if attempt < self.max_attempts => {
                        tracing::debug!(url, error = %e, "retrying download");
                        self.pause(attempt).await;
                        continue;
                    }
                    Err(e) => {
                        return Err(
                            download_failed(url, format!("requesting {url}")).with_source(e)
                        );
                    }
                };
                let status = resp.status();
                let restart = match status.as_u16() {
                    206 if offset > 0 => {
                        content_range_start(resp.headers().get(reqwest::header::CONTENT_RANGE))
                            != Some(offset)
                    }
                    200 | 206 => offset > 0,
                    416 if offset > 0 => true,
                    _ => {
                        if status.is_server_error() && attempt < self.max_attempts {
                            self.pause(attempt).await;
                            continue;
                        }
                        return Err(download_failed(url, format!("GET {url}: HTTP {status}"))
                            .with_status(status.as_u16()));
                    }
                };
                if restart {
                    tracing::debug!(url, offset, %status, "server did not continue the range; restarting");
                    reset_file(&mut file).map_err(|e| io_failed(url, "truncating", part, e))?;
                    hasher = Sha256::new();
                    offset = 0;
                    resumed_from = 0;
                    report(0, expected.size, ProgressEvent::Restarted);
                    // A 200 carries the whole body from byte 0: keep it. A 416 or a 206 for
                    // another range is useless: ask again without a range.
                    if status.as_u16() != 200 {
                        continue;
                    }
                }
                let total = resp.content_length().map(|len| offset + len);
                if let (Some(total), Some(size)) = (total, expected.size)
                    && total != size
                {
                    return Err(download_failed(
                        url,
                        format!("{url} is {total} bytes, expected {size}"),
                    )
                    .with_details(
                        json!({ "url": url, "expected_size": size, "actual_size": total }),
                    ));
                }
                let total = total.or(expected.size);
                report(offset, total, ProgressEvent::Started);
                let (step, out) = self
                    .stream_body(resp, file, hasher, offset, total, &report)
                    .await;
                hasher = out.hasher;
                offset += out.written;
                if let Some(err) = out.error {
                    return Err(io_failed(url, "writing", part, err));
                }
                file = out
                    .file
                    .ok_or_else(|| Error::new(ErrorCode::Internal, "writer lost the file"))?;
                if let Step::Broken(e) = step {
                    if attempt < self.max_attempts {
                        tracing::warn!(url, offset, error = %e, "download interrupted; resuming");
                        self.pause(attempt).await;
                        continue;
                    }
                    return Err(download_failed(
                        url,
                        format!("connection to {url} broke after {offset} bytes"),
                    )
                    .with_source(e));
                }
            }
            if let Some(size) = expected.size
                && offset != size
            {
                return Err(download_failed(
                    url,
                    format!("{url} delivered {offset} bytes, expected {size}"),
                )
                .with_details(
                    json!({ "url": url, "expected_size": size, "actual_size": offset }),
                ));
            }
            let digest = hex::encode(hasher.clone().finalize());
            if let Some(want) = &expected.sha256
                && !want.eq_ignore_ascii_case(&digest)
            {
                if resumed_from > 0 {
                    tracing::warn!(
                        url,
                        "resumed partial file did not verify; downloading again"
                    );
                    reset_file(&mut file).map_err(|e| io_failed(url, "truncating", part, e))?;
                    hasher = Sha256::new();
                    offset = 0;
                    resumed_from = 0;
                    report(0, expected.size, ProgressEvent::Restarted);
                    continue;
                }
                return Err(download_failed(
                    url,
                    format!("SHA-256 of {url} is {digest}, expected {want}"),
                )
                .with_details(
                    json!({ "url": url, "expected_sha256": want, "actual_sha256": digest }),
                ));
            }
            file.sync_all()
                .map_err(|e| io_failed(url, "syncing", part, e))?;
            drop(file);
            std::fs::rename(part, dest).map_err(|e| io_failed(url, "renaming", part, e))?;
            if let Some(parent) = dest.parent() {
                sync_dir(parent).map_err(|e| io_failed(url, "syncing", parent, e))?;
            }
            report(offset, Some(offset), ProgressEvent::Finished);
            return Ok(Downloaded {
                path: dest.to_owned(),
                sha256: digest,
                size: offset,
                resumed_from,
                requests,
            });
        }
    }

    /// Streams one response body into the writer thread.
    async fn stream_body(
        &self,
        resp: reqwest::Response,
        file: File,
        hasher: Sha256,
        offset: u64,
        total: Option<u64>,
        report: &(dyn Fn(u64, Option<u64>, ProgressEvent) + Sync),
    ) -> (Step, WriterOut) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(32);
        let writer = tokio::task::spawn_blocking(move || {
            let mut hasher = hasher;
            let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
            let mut written = 0u64;
            while let Some(chunk) = rx.blocking_recv() {
                hasher.update(&chunk);
                if let Err(e) = out.write_all(&chunk) {
                    return WriterOut {
                        file: None,
                        hasher,
                        written,
                        error: Some(e),
                    };
                }
                written += chunk.len() as u64;
            }
            match out.into_inner() {
                Ok(file) => WriterOut {
                    file: Some(file),
                    hasher,
                    written,
                    error: None,
                },
                Err(e) => WriterOut {
                    file: None,
                    hasher,
                    written,
                    error: Some(e.into_error()),
                },
            }
        });
        let mut stream = resp.bytes_stream();
        let mut done = offset;
        let mut step = Step::Complete;
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => {
                    done += chunk.len() as u64;
                    if tx.send(chunk).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                    report(done, total, ProgressEvent::Advanced);
                }
                Err(e) => {
                    step = Step::Broken(e);
                    break;
                }
            }
        }
        drop(tx);
        let out = writer.await.unwrap_or_else(|e| WriterOut {
            file: None,
            hasher: Sha256::new(),
            written: 0,
            error: Some(std::io::Error::other(e)),
        });
        (step, out)
    }
}

/// Copies a local file to `dest` through `<dest>.part`, hashing while copying, then verifies and
/// renames it like a download. Failures are reported with `code` and leave no partial file.
pub(crate) fn copy_verified(
    src: &Path,
    dest: &Path,
    expected: &Expected,
    progress: &dyn Progress,
    code: ErrorCode,
) -> Result<Downloaded> {
    let part = partial_path(dest);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let result = (|| {
        let mut input = File::open(src).map_err(|e| Error::io(code, "opening", src, e))?;
        let total = input
            .metadata()
            .map_err(|e| Error::io(code, "inspecting", src, e))?
            .len();
        if let Some(size) = expected.size
            && size != total
        {
            return Err(Error::new(
                code,
                format!("{} is {total} bytes, expected {size}", src.display()),
            )
            .with_details(json!({ "path": src, "expected_size": size, "actual_size": total })));
        }
        let file = File::create(&part).map_err(|e| Error::io(code, "creating", &part, e))?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        progress.update(&ProgressUpdate {
            artifact: &name,
            done: 0,
            total: Some(total),
            event: ProgressEvent::Started,
        });
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| Error::io(code, "reading", src, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| Error::io(code, "writing", &part, e))?;
            done += n as u64;
            progress.update(&ProgressUpdate {
                artifact: &name,
                done,
                total: Some(total),
                event: ProgressEvent::Advanced,
            });
        }
        let file = out
            .into_inner()
            .map_err(|e| Error::io(code, "writing", &part, e.into_error()))?;
        let digest = hex::encode(hasher.finalize());
        if let Some(want) = &expected.sha256
            && !want.eq_ignore_ascii_case(&digest)
        {
            return Err(Error::new(
                code,
                format!("SHA-256 of {} is {digest}, expected {want}", src.display()),
            )
            .with_details(
                json!({ "path": src, "expected_sha256": want, "actual_sha256": digest }),
            ));
        }
        file.sync_all()
            .map_err(|e| Error::io(code, "syncing", &part, e))?;
        drop(file);
        std::fs::rename(&part, dest).map_err(|e| Error::io(code, "renaming", &part, e))?;
        if let Some(parent) = dest.parent() {
            sync_dir(parent).map_err(|e| Error::io(code, "syncing", parent, e))?;
        }
        progress.update(&ProgressUpdate {
            artifact: &name,
            done,
            total: Some(done),
            event: ProgressEvent::Finished,
        });
        Ok(Downloaded {
            path: dest.to_owned(),
            sha256: digest,
            size: done,
            resumed_from: 0,
            requests: 0,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        let v = reqwest::header::HeaderValue::from_static("bytes 100-199/200");
        assert_eq!(content_range_start(Some(&v)), Some(100));
        let bad = reqwest::header::HeaderValue::from_static("bytes */200");
        assert_eq!(content_range_start(Some(&bad)), None);
        assert_eq!(content_range_start(None), None);
    }

    #[test]
    fn sha256_normalizes() {
        let upper = "A".repeat(64);
        assert_eq!(normalize_sha256(&upper), Some("a".repeat(64)));
        assert_eq!(normalize_sha256(&"g".repeat(64)), None);
        assert_eq!(normalize_sha256("abc"), None);
    }

    #[test]
    fn partial_path_appends_suffix() {
        assert_eq!(
            partial_path(Path::new("/x/vmlinux-6.1.10")),
            PathBuf::from("/x/vmlinux-6.1.10.part")
        );
    }
}
