//! A real HTTP/1.1 server on 127.0.0.1 that serves artifact fixtures in the formats of the real
//! services flick downloads from, and misbehaves on request.
//!
//! What it can stand in for:
//! - the GitHub releases API (`/repos/<owner>/<repo>/releases/latest`, a release JSON with
//!   `tag_name` and an `assets` list);
//! - GitHub release downloads (`/<owner>/<repo>/releases/download/<tag>/<asset>`), with a
//!   `firecracker-<tag>-<arch>.tgz` laid out as `release-<tag>-<arch>/...` and the matching
//!   `.sha256.txt` (the output of `sha256sum <file>`);
//! - an S3 bucket answering `ListObjectsV2` (`/<bucket>/?list-type=2&prefix=...`) with a
//!   `ListBucketResult` document, paginated with continuation tokens, and serving the objects;
//! - anything else: a static body at a path (hosted manifests, big artifacts for benchmarks).
//!
//! Every body honours `Range: bytes=N-` / `bytes=N-M` with `206 Partial Content`. A [`Fault`] set
//! on a path makes the server truncate the body, drop the connection mid-way, ignore `Range`,
//! answer an error status, serve wrong bytes, or trickle the body slowly. Faults are either
//! persistent or consumed one request at a time, so "fails once, then works" is expressible.
//!
//! The server counts requests per path and records every `Range` header, so tests can assert that
//! a cached artifact was reused (no second request) or that a resume really asked for a range.
//!
//! The server runs on its own thread with its own tokio runtime, so it works the same from
//! `#[test]`, `#[tokio::test]` (any flavour) and benchmark binaries. Dropping it stops it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};

/// The GitHub repository path Firecracker releases live under.
pub const FIRECRACKER_REPO: &str = "firecracker-microvm/firecracker";
/// The name of the public bucket Firecracker's CI artifacts live in.
pub const CI_BUCKET: &str = "spec.ccfc.min";

type Body = BoxBody<Bytes, std::io::Error>;

/// A way for the server to misbehave on one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a short text body.
    Status(u16),
    /// Send only the first `n` bytes of the body, with a `Content-Length` that says `n` (a body
    /// that is complete on the wire but shorter than the artifact).
    Truncate(usize),
    /// Announce the full length, send `n` bytes, then drop the connection.
    DropAfter(usize),
    /// Answer `200` with the whole body even when a `Range` was asked for.
    IgnoreRange,
    /// Answer a `Range` request with `206` for the whole body (`bytes 0-<last>/<len>`), a range
    /// other than the one asked for.
    RangeFromZero,
    /// Serve the body with every byte flipped (same length, wrong content).
    WrongBytes,
    /// Serve the body in chunks of `chunk` bytes with `delay` between them.
    Slow {
        /// Chunk size in bytes.
        chunk: usize,
        /// Pause between chunks.
        delay: Duration,
    },
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// The path (without the query).
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `User-Agent` header, if any.
    pub user_agent: Option<String>,
    /// The `Accept` header, if any.
    pub accept: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

/// An object stored in a fixture bucket.
#[derive(Debug, Clone)]
pub struct BucketObject {
    /// The object key (no leading slash).
    pub key: String,
    /// The object bytes.
    pub body: Bytes,
}

#[derive(Debug, Clone)]
enum Route {
    Static { body: Bytes, content_type: String },
    Bucket { name: String, page_size: usize },
}

#[derive(Debug, Default)]
struct FaultSlot {
    once: VecDeque<Fault>,
    always: Option<Fault>,
}

#[derive(Debug, Default)]
struct State {
    routes: HashMap<String, Route>,
    buckets: HashMap<String, BTreeMap<String, Bytes>>,
    faults: HashMap<String, FaultSlot>,
    seen: Vec<SeenRequest>,
}

/// A running fixture server. Dropping it stops the server.
#[derive(Debug)]
pub struct FixtureServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FixtureServer {
    /// Starts a server on an ephemeral port of 127.0.0.1.
    ///
    /// # Panics
    /// If the runtime, the listener or the server thread cannot be created.
    #[must_use]
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread_state = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("fixture-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("fixture server runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind 127.0.0.1:0");
                    addr_tx
                        .send(listener.local_addr().expect("local addr"))
                        .expect("report address");
                    tokio::pin!(stop_rx);
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                let state = Arc::clone(&thread_state);
                                tokio::spawn(async move {
                                    let service = service_fn(move |req| {
                                        let state = Arc::clone(&state);
                                        async move { Ok::<_, Infallible>(handle(&state, &req)) }
                                    });
                                    let _ = hyper::server::conn::http1::Builder::new()
                                        .serve_connection(TokioIo::new(stream), service)
                                        .await;
                                });
                            }
                        }
                    }
                });
            })
            .expect("spawn fixture server thread");
        let addr = addr_rx.recv().expect("fixture server address");
        Self {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The socket address the server listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` followed by `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The base URL to configure as the GitHub API repository endpoint
    /// (`.../repos/firecracker-microvm/firecracker`).
    #[must_use]
    pub fn github_api_base(&self) -> String {
        self.url(&format!("/repos/{FIRECRACKER_REPO}"))
    }

    /// The base URL to configure as the release download endpoint
    /// (`.../firecracker-microvm/firecracker/releases/download`).
    #[must_use]
    pub fn release_download_base(&self) -> String {
        self.url(&format!("/{FIRECRACKER_REPO}/releases/download"))
    }

    /// The base URL to configure as the CI bucket endpoint (`.../spec.ccfc.min`).
    #[must_use]
    pub fn ci_bucket_base(&self) -> String {
        self.url(&format!("/{CI_BUCKET}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Serves `body` at `path` (exact match, query ignored).
    pub fn serve(&self, path: &str, body: impl Into<Bytes>, content_type: &str) {
        self.lock().routes.insert(
            path.to_owned(),
            Route::Static {
                body: body.into(),
                content_type: content_type.to_owned(),
            },
        );
    }

    /// Removes whatever is served at `path` (it answers 404 afterwards).
    pub fn remove(&self, path: &str) {
        self.lock().routes.remove(path);
    }

    /// Makes `path` misbehave on every request until [`clear_faults`](Self::clear_faults).
    pub fn fault(&self, path: &str, fault: Fault) {
        self.lock()
            .faults
            .entry(path.to_owned())
            .or_default()
            .always = Some(fault);
    }

    /// Makes the next request to `path` misbehave; queued one-shot faults are used in order and
    /// take precedence over a persistent one.
    pub fn fault_once(&self, path: &str, fault: Fault) {
        self.lock()
            .faults
            .entry(path.to_owned())
            .or_default()
            .once
            .push_back(fault);
    }

    /// Removes every fault from `path`.
    pub fn clear_faults(&self, path: &str) {
        self.lock().faults.remove(path);
    }

    /// Every request seen so far, in arrival order.
    #[must_use]
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.lock().seen.clone()
    }

    /// How many requests reached `path`.
    #[must_use]
    pub fn request_count(&self, path: &str) -> usize {
        self.lock().seen.iter().filter(|r| r.path == path).count()
    }

    /// The `Range` headers of the requests to `path`, in order (requests without one are left
    /// out).
    #[must_use]
    pub fn range_requests(&self, path: &str) -> Vec<String> {
        self.lock()
            .seen
            .iter()
            .filter(|r| r.path == path)
            .filter_map(|r| r.range.clone())
            .collect()
    }

    /// Forgets the request log.
    pub fn reset_requests(&self) {
        self.lock().seen.clear();
    }

    /// Creates (or replaces) a bucket answering `ListObjectsV2` at `/<name>/` and serving its
    /// objects at `/<name>/<key>`. `page_size` is the `MaxKeys` of each listing page.
    pub fn serve_bucket(&self, name: &str, objects: Vec<BucketObject>, page_size: usize) {
        let mut state = self.lock();
        let mut map = BTreeMap::new();
        for obj in objects {
            state.routes.insert(
                format!("/{name}/{}", obj.key),
                Route::Static {
                    body: obj.body.clone(),
                    content_type: "binary/octet-stream".into(),
                },
            );
            map.insert(obj.key, obj.body);
        }
        state.buckets.insert(name.to_owned(), map);
        let route = Route::Bucket {
            name: name.to_owned(),
            page_size: page_size.max(1),
        };
        state.routes.insert(format!("/{name}/"), route.clone());
        state.routes.insert(format!("/{name}"), route);
    }

    /// Publishes a Firecracker release: the latest-release JSON (when `latest`), the `.tgz` and its
    /// `.sha256.txt`.
    pub fn serve_release(&self, release: &ReleaseFixture, latest: bool) {
        let dl = format!("/{FIRECRACKER_REPO}/releases/download/{}", release.tag);
        self.serve(
            &format!("{dl}/{}", release.tarball_name()),
            release.tarball.clone(),
            "application/gzip",
        );
        self.serve(
            &format!("{dl}/{}.sha256.txt", release.tarball_name()),
            release.sha256_txt.clone(),
            "text/plain",
        );
        if latest {
            self.serve(
                &format!("/repos/{FIRECRACKER_REPO}/releases/latest"),
                release_json(self, &release.tag, &[release]),
                "application/json; charset=utf-8",
            );
        }
    }

    /// Serves the CI bucket ([`CI_BUCKET`]) with the objects of every train in `trains` for
    /// `arch` (see [`ci_bucket_objects`]), kernels and rootfs images of `artifact_len` bytes.
    pub fn serve_ci_trains(&self, trains: &[&str], arch: &str, artifact_len: usize) {
        let mut all = BTreeMap::new();
        for train in trains {
            for obj in ci_bucket_objects(train, arch, artifact_len) {
                all.insert(obj.key.clone(), obj);
            }
        }
        self.serve_bucket(CI_BUCKET, all.into_values().collect(), 1000);
    }

    /// Serves a hosted base-image bundle: the kernel at `/hosted/<id>/vmlinux`, the rootfs at
    /// `/hosted/<id>/rootfs.<type>` and a schema-v1 manifest (camelCase, with `sha256` and
    /// `sizeBytes`) at `/hosted/<id>/manifest.json`. Returns the manifest URL and its JSON.
    pub fn serve_hosted_bundle(
        &self,
        bundle_id: &str,
        arch: &str,
        rootfs_type: &str,
        kernel: &[u8],
        rootfs: &[u8],
    ) -> (String, serde_json::Value) {
        let base = format!("/hosted/{bundle_id}");
        let rootfs_name = format!("rootfs.{rootfs_type}");
        self.serve(
            &format!("{base}/vmlinux"),
            kernel.to_vec(),
            "application/octet-stream",
        );
        self.serve(
            &format!("{base}/{rootfs_name}"),
            rootfs.to_vec(),
            "application/octet-stream",
        );
        let manifest = serde_json::json!({
            "schemaVersion": 1,
            "bundleId": bundle_id,
            "name": format!("{bundle_id} (fixture)"),
            "arch": arch,
            "firecrackerVersion": "v1.16.1",
            "rootfsType": rootfs_type,
            "rootfsIsReadOnly": rootfs_type == "squashfs",
            "kernel": {
                "url": self.url(&format!("{base}/vmlinux")),
                "fileName": "vmlinux",
                "sha256": hex::encode(Sha256::digest(kernel)),
                "sizeBytes": kernel.len(),
            },
            "rootfs": {
                "url": self.url(&format!("{base}/{rootfs_name}")),
                "fileName": rootfs_name,
                "sha256": hex::encode(Sha256::digest(rootfs)),
                "sizeBytes": rootfs.len(),
            }
        });
        let path = format!("{base}/manifest.json");
        self.serve(
            &path,
            serde_json::to_vec_pretty(&manifest).expect("manifest json"),
            "application/json",
        );
        (self.url(&path), manifest)
    }

    /// The path of a release asset on this server.
    #[must_use]
    pub fn release_asset_path(tag: &str, asset: &str) -> String {
        format!("/{FIRECRACKER_REPO}/releases/download/{tag}/{asset}")
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut resp = Response::new(full(msg.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn handle(state: &Mutex<State>, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let header_str = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let range = header_str(header::RANGE);
    let (route, fault, bucket) = {
        let mut st = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.seen.push(SeenRequest {
            path: path.clone(),
            query: query.clone(),
            range: range.clone(),
            user_agent: header_str(header::USER_AGENT),
            accept: header_str(header::ACCEPT),
            authorization: header_str(header::AUTHORIZATION),
        });
        let fault = st
            .faults
            .get_mut(&path)
            .and_then(|slot| slot.once.pop_front().or_else(|| slot.always.clone()));
        let route = st.routes.get(&path).cloned();
        let bucket = match &route {
            Some(Route::Bucket { name, .. }) => st.buckets.get(name).cloned(),
            _ => None,
        };
        (route, fault, bucket)
    };
    if let Some(Fault::Status(code)) = fault {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return text(status, &format!("fixture fault: status {code}\n"));
    }
    match route {
        None => text(StatusCode::NOT_FOUND, "Not Found\n"),
        Some(Route::Bucket { name, page_size }) => {
            let listing = list_objects_v2(
                &name,
                &bucket.unwrap_or_default(),
                query.as_deref().unwrap_or(""),
                page_size,
            );
            let mut resp = Response::new(full(listing));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/xml"),
            );
            resp
        }
        Some(Route::Static { body, content_type }) => {
            serve_body(&body, &content_type, range.as_deref(), fault.as_ref())
        }
    }
}

/// Parses `bytes=N-` or `bytes=N-M` against a body of `len` bytes into an inclusive range.
fn parse_range(range: &str, len: usize) -> Option<Result<(usize, usize), ()>> {
    let spec = range.strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start: usize = start.trim().parse().ok()?;
    if start >= len {
        return Some(Err(()));
    }
    let end = if end.trim().is_empty() {
        len - 1
    } else {
        end.trim().parse::<usize>().ok()?.min(len - 1)
    };
    if end < start {
        return Some(Err(()));
    }
    Some(Ok((start, end)))
}

fn serve_body(
    body: &Bytes,
    content_type: &str,
    range: Option<&str>,
    fault: Option<&Fault>,
) -> Response<Body> {
    let total = body.len();
    let honour_range = fault != Some(&Fault::IgnoreRange);
    let mut status = StatusCode::OK;
    let mut slice = body.clone();
    let mut content_range = None;
    if let (Some(_), Some(Fault::RangeFromZero)) = (range, fault)
        && total > 0
    {
        status = StatusCode::PARTIAL_CONTENT;
        content_range = Some(format!("bytes 0-{}/{total}", total - 1));
    } else if let (Some(range), true) = (range, honour_range) {
        match parse_range(range, total) {
            Some(Ok((start, end))) => {
                status = StatusCode::PARTIAL_CONTENT;
                slice = body.slice(start..=end);
                content_range = Some(format!("bytes {start}-{end}/{total}"));
            }
            Some(Err(())) => {
                let mut resp = text(StatusCode::RANGE_NOT_SATISFIABLE, "");
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{total}")).expect("header"),
                );
                return resp;
            }
            None => {}
        }
    }
    let announced = slice.len();
    let body: Body = match fault {
        Some(Fault::Truncate(n)) => {
            let n = (*n).min(slice.len());
            let short = slice.slice(..n);
            let mut resp = Response::new(full(short));
            *resp.status_mut() = status;
            set_headers(&mut resp, content_type, n, content_range);
            return resp;
        }
        Some(Fault::DropAfter(n)) => {
            let n = (*n).min(slice.len());
            let first = slice.slice(..n);
            // Yield the data, stay pending briefly so hyper flushes it, then fail the body, which
            // makes hyper abort the connection before the announced length was sent.
            let stream = futures_util::stream::unfold(Some(first), |state| async move {
                match state {
                    Some(first) => Some((Ok(Frame::data(first)), None)),
                    None => {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        None
                    }
                }
            })
            .chain(futures_util::stream::once(async {
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "fixture fault: connection dropped",
                ))
            }));
            BodyExt::boxed(StreamBody::new(stream))
        }
        Some(Fault::WrongBytes) => {
            let flipped: Vec<u8> = slice.iter().map(|b| !b).collect();
            full(flipped)
        }
        Some(Fault::Slow { chunk, delay }) => {
            let (chunk, delay) = ((*chunk).max(1), *delay);
            let stream =
                futures_util::stream::unfold((slice, 0usize), move |(data, pos)| async move {
                    if pos >= data.len() {
                        return None;
                    }
                    if pos > 0 {
                        tokio::time::sleep(delay).await;
                    }
                    let end = (pos + chunk).min(data.len());
                    let frame: Result<Frame<Bytes>, std::io::Error> =
                        Ok(Frame::data(data.slice(pos..end)));
                    Some((frame, (data, end)))
                });
            BodyExt::boxed(StreamBody::new(stream))
        }
        _ => full(slice),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    set_headers(&mut resp, content_type, announced, content_range);
    resp
}

fn set_headers(
    resp: &mut Response<Body>,
    content_type: &str,
    len: usize,
    content_range: Option<String>,
) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("text/plain")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(cr) = content_range {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&cr).expect("content-range header"),
        );
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(v) = u8::from_str_radix(hex, 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders one `ListObjectsV2` page the way S3 does (namespace, `KeyCount`, `MaxKeys`,
/// `IsTruncated`, `NextContinuationToken`, one `Contents` per key with an `ETag` in quotes).
fn list_objects_v2(
    bucket: &str,
    objects: &BTreeMap<String, Bytes>,
    query: &str,
    page_size: usize,
) -> String {
    let prefix = query_param(query, "prefix").unwrap_or_default();
    let token = query_param(query, "continuation-token");
    let max_keys = query_param(query, "max-keys")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(page_size)
        .min(page_size);
    let matching: Vec<(&String, &Bytes)> = objects
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .filter(|(k, _)| token.as_ref().is_none_or(|t| k.as_str() > t.as_str()))
        .collect();
    let page: Vec<_> = matching.iter().take(max_keys).collect();
    let truncated = matching.len() > page.len();
    let mut xml = String::new();
    xml.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    xml.push('\n');
    xml.push_str(r#"<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#);
    xml.push_str(&format!("<Name>{}</Name>", xml_escape(bucket)));
    xml.push_str(&format!("<Prefix>{}</Prefix>", xml_escape(&prefix)));
    if let Some(t) = &token {
        xml.push_str(&format!(
            "<ContinuationToken>{}</ContinuationToken>",
            xml_escape(t)
        ));
    }
    xml.push_str(&format!("<KeyCount>{}</KeyCount>", page.len()));
    xml.push_str(&format!("<MaxKeys>{max_keys}</MaxKeys>"));
    xml.push_str(&format!("<IsTruncated>{truncated}</IsTruncated>"));
    if truncated && let Some((last, _)) = page.last() {
        xml.push_str(&format!(
            "<NextContinuationToken>{}</NextContinuationToken>",
            xml_escape(last)
        ));
    }
    for (key, body) in page {
        let etag = hex::encode(&Sha256::digest(body.as_ref())[..16]);
        xml.push_str("<Contents>");
        xml.push_str(&format!("<Key>{}</Key>", xml_escape(key)));
        xml.push_str("<LastModified>2026-10-02T09:14:27.000Z</LastModified>");
        xml.push_str(&format!("<ETag>&quot;{etag}&quot;</ETag>"));
        xml.push_str(&format!("<Size>{}</Size>", body.len()));
        xml.push_str("<StorageClass>STANDARD</StorageClass>");
        xml.push_str("</Contents>");
    }
    xml.push_str("</ListBucketResult>");
    xml
}

/// Options for a fixture release tarball.
#[derive(Debug, Clone, Default)]
pub struct ReleaseOptions {
    /// Leave `firecracker-<tag>-<arch>` out of the tarball.
    pub omit_firecracker: bool,
    /// Leave `jailer-<tag>-<arch>` out of the tarball.
    pub omit_jailer: bool,
    /// The version the stand-in executables report (defaults to the tag).
    pub reported_version: Option<String>,
    /// Make the `firecracker` stand-in exec this program (the Firecracker double) for anything
    /// but `--version`/`--help`, so a downloaded release can run VMs in tests.
    pub delegate_to: Option<std::path::PathBuf>,
}

/// A Firecracker release as published on GitHub: the tarball and its `.sha256.txt`.
#[derive(Debug, Clone)]
pub struct ReleaseFixture {
    /// The tag, for example `v1.16.1`.
    pub tag: String,
    /// The architecture, `x86_64` or `aarch64`.
    pub arch: String,
    /// The gzip'd tar bytes.
    pub tarball: Bytes,
    /// The `.sha256.txt` contents: `<hex>  firecracker-<tag>-<arch>.tgz\n`.
    pub sha256_txt: String,
}

impl ReleaseFixture {
    /// Builds a release with the real layout: every file under `release-<tag>-<arch>/`, the
    /// executables named `<tool>-<tag>-<arch>` with mode 0755, `.debug` companions, the seccomp
    /// filter, the API spec, licence files and `SHA256SUMS`. The `firecracker` and `jailer`
    /// stand-ins are shell scripts that answer `--version` like the real binaries.
    ///
    /// # Panics
    /// If the in-memory tarball cannot be written.
    #[must_use]
    pub fn new(tag: &str, arch: &str, opts: &ReleaseOptions) -> Self {
        let suffix = format!("{tag}-{arch}");
        let dir = format!("release-{suffix}");
        let reported = opts
            .reported_version
            .clone()
            .unwrap_or_else(|| tag.to_owned());
        let tail = match &opts.delegate_to {
            Some(p) => format!("exec '{}' \"$@\"\n", p.display()),
            None => "echo 'this is a test stand-in, not firecracker' >&2\nexit 1\n".to_owned(),
        };
        let fc_script = format!(
            "#!/bin/sh\n# stand-in for firecracker {reported}\ncase \"$1\" in\n  --version)\n    \
             printf 'Firecracker {reported}\\n\\n'\n    \
             printf 'Supported snapshot data format versions: v8.0.0\\n'\n    exit 0;;\n  \
             --help) printf 'Firecracker {reported}\\n\\nusage: firecracker [--api-sock PATH]\\n'; exit 0;;\nesac\n\
             {tail}"
        );
        let jailer_script = format!(
            "#!/bin/sh\n# stand-in for jailer {reported}\ncase \"$1\" in\n  --version)\n    \
             printf 'Jailer {reported}\\n'\n    exit 0;;\nesac\n\
             echo 'this is a test stand-in, not the jailer' >&2\nexit 1\n"
        );
        let mut files: Vec<(String, Vec<u8>, u32)> = Vec::new();
        if !opts.omit_firecracker {
            files.push((
                format!("firecracker-{suffix}"),
                fc_script.into_bytes(),
                0o755,
            ));
            files.push((
                format!("firecracker-{suffix}.debug"),
                b"debuginfo".to_vec(),
                0o644,
            ));
        }
        if !opts.omit_jailer {
            files.push((
                format!("jailer-{suffix}"),
                jailer_script.into_bytes(),
                0o755,
            ));
            files.push((
                format!("jailer-{suffix}.debug"),
                b"debuginfo".to_vec(),
                0o644,
            ));
        }
        for tool in [
            "seccompiler-bin",
            "rebase-snap",
            "cpu-template-helper",
            "snapshot-editor",
        ] {
            let script = format!("#!/bin/sh\necho '{tool} {reported}'\n");
            files.push((format!("{tool}-{suffix}"), script.into_bytes(), 0o755));
        }
        files.push((
            format!("seccomp-filter-{suffix}.json"),
            br#"{"vmm":{"default_action":"trap","filter_action":"allow","filter":[]}}"#.to_vec(),
            0o644,
        ));
        files.push((
            format!("firecracker_spec-{tag}.yaml"),
            format!(
                "swagger: \"2.0\"\ninfo:\n  version: {}\n",
                tag.trim_start_matches('v')
            )
            .into_bytes(),
            0o644,
        ));
        for name in ["LICENSE", "NOTICE", "THIRD-PARTY"] {
            files.push((
                name.to_owned(),
                format!("{name} (fixture)\n").into_bytes(),
                0o644,
            ));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sums = String::new();
        for (name, data, _) in &files {
            sums.push_str(&format!(
                "{}  ./{name}\n",
                hex::encode(Sha256::digest(data))
            ));
        }
        files.push(("SHA256SUMS".into(), sums.into_bytes(), 0o644));

        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        for (name, data, mode) in &files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(*mode);
            header.set_mtime(1_760_000_000);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, format!("{dir}/{name}"), data.as_slice())
                .expect("append tar entry");
        }
        let gz = builder.into_inner().expect("finish tar");
        let mut gz = gz;
        gz.flush().expect("flush gzip");
        let tarball = Bytes::from(gz.finish().expect("finish gzip"));
        let tarball_name = format!("firecracker-{suffix}.tgz");
        let sha256_txt = format!(
            "{}  {tarball_name}\n",
            hex::encode(Sha256::digest(&tarball))
        );
        Self {
            tag: tag.to_owned(),
            arch: arch.to_owned(),
            tarball,
            sha256_txt,
        }
    }

    /// `firecracker-<tag>-<arch>.tgz`.
    #[must_use]
    pub fn tarball_name(&self) -> String {
        format!("firecracker-{}-{}.tgz", self.tag, self.arch)
    }
}

/// A GitHub "latest release" JSON document for `tag`, listing the assets of `releases`.
fn release_json(server: &FixtureServer, tag: &str, releases: &[&ReleaseFixture]) -> String {
    let mut assets = Vec::new();
    let mut id = 200_000_000u64;
    for rel in releases {
        for (name, size, ctype) in [
            (rel.tarball_name(), rel.tarball.len(), "application/gzip"),
            (
                format!("{}.sha256.txt", rel.tarball_name()),
                rel.sha256_txt.len(),
                "text/plain",
            ),
        ] {
            id += 1;
            assets.push(serde_json::json!({
                "url": server.url(&format!("/repos/{FIRECRACKER_REPO}/releases/assets/{id}")),
                "id": id,
                "node_id": format!("RA_kwDOBn{id}"),
                "name": name,
                "label": name,
                "uploader": {"login": "fc-release-bot", "id": 1, "type": "User", "site_admin": false},
                "content_type": ctype,
                "state": "uploaded",
                "size": size,
                "download_count": 1234,
                "created_at": "2026-10-02T09:14:27Z",
                "updated_at": "2026-10-02T09:14:28Z",
                "browser_download_url": server.url(&FixtureServer::release_asset_path(tag, &name)),
            }));
        }
    }
    serde_json::to_string_pretty(&serde_json::json!({
        "url": server.url(&format!("/repos/{FIRECRACKER_REPO}/releases/250000000")),
        "assets_url": server.url(&format!("/repos/{FIRECRACKER_REPO}/releases/250000000/assets")),
        "upload_url": format!("https://uploads.github.com/repos/{FIRECRACKER_REPO}/releases/250000000/assets{{?name,label}}"),
        "html_url": format!("https://github.com/{FIRECRACKER_REPO}/releases/tag/{tag}"),
        "id": 250_000_000,
        "author": {"login": "fc-release-bot", "id": 1, "type": "User", "site_admin": false},
        "node_id": "RE_kwDOBn0000",
        "tag_name": tag,
        "target_commitish": "main",
        "name": format!("Firecracker {tag}"),
        "draft": false,
        "immutable": false,
        "prerelease": false,
        "created_at": "2026-10-01T16:02:11Z",
        "updated_at": "2026-10-02T09:20:00Z",
        "published_at": "2026-10-02T09:20:00Z",
        "assets": assets,
        "tarball_url": format!("https://api.github.com/repos/{FIRECRACKER_REPO}/tarball/{tag}"),
        "zipball_url": format!("https://api.github.com/repos/{FIRECRACKER_REPO}/zipball/{tag}"),
        "body": format!("## Firecracker {tag}\n\n### Fixed\n\n- fixture release notes\n"),
    }))
    .expect("release json")
}

/// Deterministic pseudo-random bytes (xorshift), for artifact bodies that compress badly and
/// differ per `seed`.
#[must_use]
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The CI bucket objects of one train and architecture as Firecracker publishes them: several
/// kernels (including `vmlinux-6.1.9` and `vmlinux-6.1.10`, to catch string ordering), their
/// `.config` files, a `-no-acpi` variant, Ubuntu rootfs images as squashfs and ext4 with their SSH
/// keys, and unrelated keys (other trains, other architectures, other tools).
#[must_use]
pub fn ci_bucket_objects(train: &str, arch: &str, artifact_len: usize) -> Vec<BucketObject> {
    let p = format!("firecracker-ci/{train}/{arch}");
    let other_arch = if arch == "x86_64" {
        "aarch64"
    } else {
        "x86_64"
    };
    let mut objs = Vec::new();
    let mut add = |key: String, body: Vec<u8>| {
        objs.push(BucketObject {
            key,
            body: Bytes::from(body),
        });
    };
    let mut seed = 1u64;
    let mut next = || {
        seed += 1;
        seed
    };
    for k in ["5.10.239", "6.1.9", "6.1.10"] {
        add(
            format!("{p}/vmlinux-{k}"),
            pseudo_random_bytes(artifact_len, next()),
        );
        add(
            format!("{p}/vmlinux-{k}.config"),
            b"CONFIG_VIRTIO_BLK=y\n".to_vec(),
        );
    }
    add(
        format!("{p}/vmlinux-5.10.239-no-acpi"),
        pseudo_random_bytes(64, next()),
    );
    add(
        format!("{p}/vmlinux-6.1.10.debug"),
        pseudo_random_bytes(64, next()),
    );
    for u in ["22.04", "24.04"] {
        add(
            format!("{p}/ubuntu-{u}.squashfs"),
            pseudo_random_bytes(artifact_len, next()),
        );
        add(
            format!("{p}/ubuntu-{u}.ext4"),
            pseudo_random_bytes(artifact_len, next()),
        );
        add(
            format!("{p}/ubuntu-{u}.id_rsa"),
            b"-----BEGIN OPENSSH PRIVATE KEY-----\n".to_vec(),
        );
    }
    add(
        format!("{p}/firecracker/firecracker"),
        pseudo_random_bytes(32, next()),
    );
    add(
        format!("{p}/jailer/jailer"),
        pseudo_random_bytes(32, next()),
    );
    add(
        format!("firecracker-ci/{train}/{other_arch}/vmlinux-6.1.99"),
        pseudo_random_bytes(32, next()),
    );
    add(
        "firecracker-ci/v1.1/x86_64/vmlinux-6.1.200".into(),
        pseudo_random_bytes(32, next()),
    );
    add(
        "img/hello/kernel/hello-vmlinux.bin".into(),
        pseudo_random_bytes(32, next()),
    );
    objs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn ranges_parse_like_http() {
        assert_eq!(parse_range("bytes=0-", 10), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=4-6", 10), Some(Ok((4, 6))));
        assert_eq!(parse_range("bytes=4-99", 10), Some(Ok((4, 9))));
        assert_eq!(parse_range("bytes=10-", 10), Some(Err(())));
        assert_eq!(parse_range("bytes=6-4", 10), Some(Err(())));
        assert_eq!(parse_range("items=0-", 10), None);
        assert_eq!(parse_range("bytes=-5", 10), None);
    }

    #[test]
    fn listing_pages_follow_tokens_and_prefix() {
        let objects: BTreeMap<String, Bytes> = ["a/1", "a/2", "a/3", "b/1"]
            .iter()
            .map(|k| ((*k).to_owned(), Bytes::from_static(b"xy")))
            .collect();
        let first = list_objects_v2("bkt", &objects, "list-type=2&prefix=a%2F", 2);
        assert!(first.contains("<Key>a/1</Key>") && first.contains("<Key>a/2</Key>"));
        assert!(!first.contains("a/3") && !first.contains("b/1"));
        assert!(first.contains("<IsTruncated>true</IsTruncated>"));
        assert!(first.contains("<NextContinuationToken>a/2</NextContinuationToken>"));
        assert!(first.contains("<Size>2</Size>"));
        let second = list_objects_v2("bkt", &objects, "prefix=a/&continuation-token=a%2F2", 2);
        assert!(second.contains("<Key>a/3</Key>") && !second.contains("<Key>a/2</Key>"));
        assert!(second.contains("<IsTruncated>false</IsTruncated>"));
    }

    #[test]
    fn release_tarball_has_the_real_layout() {
        let rel = ReleaseFixture::new("v1.16.1", "x86_64", &ReleaseOptions::default());
        let digest = hex::encode(Sha256::digest(&rel.tarball));
        assert_eq!(
            rel.sha256_txt,
            format!("{digest}  firecracker-v1.16.1-x86_64.tgz\n")
        );
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(rel.tarball.as_ref()));
        let mut seen = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mode = entry.header().mode().unwrap();
            let mut body = String::new();
            let _ = entry.read_to_string(&mut body);
            seen.insert(path, (mode, body));
        }
        assert!(
            seen.keys()
                .all(|p| p.starts_with("release-v1.16.1-x86_64/"))
        );
        let (mode, script) = &seen["release-v1.16.1-x86_64/firecracker-v1.16.1-x86_64"];
        assert_eq!(*mode, 0o755);
        assert!(script.contains("Firecracker v1.16.1"));
        let (mode, script) = &seen["release-v1.16.1-x86_64/jailer-v1.16.1-x86_64"];
        assert_eq!(*mode, 0o755);
        assert!(script.contains("Jailer v1.16.1"));
        for name in [
            "SHA256SUMS",
            "LICENSE",
            "seccomp-filter-v1.16.1-x86_64.json",
        ] {
            assert!(
                seen.contains_key(&format!("release-v1.16.1-x86_64/{name}")),
                "{name}"
            );
        }
        let without = ReleaseFixture::new(
            "v1.16.1",
            "x86_64",
            &ReleaseOptions {
                omit_jailer: true,
                ..ReleaseOptions::default()
            },
        );
        assert_ne!(without.tarball, rel.tarball);
    }

    #[test]
    fn ci_objects_hold_the_tricky_keys() {
        let keys: Vec<String> = ci_bucket_objects("v1.16", "x86_64", 16)
            .into_iter()
            .map(|o| o.key)
            .collect();
        for want in [
            "firecracker-ci/v1.16/x86_64/vmlinux-6.1.9",
            "firecracker-ci/v1.16/x86_64/vmlinux-6.1.10",
            "firecracker-ci/v1.16/x86_64/ubuntu-24.04.squashfs",
            "firecracker-ci/v1.16/x86_64/ubuntu-24.04.ext4",
            "firecracker-ci/v1.16/aarch64/vmlinux-6.1.99",
        ] {
            assert!(keys.iter().any(|k| k == want), "{want}");
        }
    }
}
