//! `fc-double`: a Firecracker v1.16.1 **test double**. It is not a VMM and runs no guest.
//!
//! Real Firecracker needs KVM and a bootable guest kernel; CI machines and nested hosts often
//! have neither. The double speaks Firecracker's API on a Unix socket with Firecracker's status
//! codes and fault texts, keeps the configuration as Firecracker would, and writes the files a
//! library expects (snapshot state and memory, log, metrics, serial output), so lifecycle code
//! can be tested end to end against a real process over a real socket.
//!
//! Flow of one process:
//!
//! 1. [`cli::Args`] are parsed (Firecracker's flags plus `FC_DOUBLE_*` test switches).
//! 2. `--config-file` is applied (configure, then start) when given.
//! 3. The API socket is bound (after an optional delay; a stale file is removed first), and
//!    each HTTP/1.1 request goes to [`vmm::Vmm::handle`], which routes, validates the body
//!    against the vendored spec, checks the phase and acts.
//! 4. The answer is sent, logged and (with `FC_DOUBLE_REQUEST_LOG`) appended as a JSON line.
//!    `SendCtrlAltDel`, a failed snapshot restore and `FC_DOUBLE_EXIT_AFTER_START` end the
//!    process after the answer is out; the socket is removed on every exit but the simulated
//!    crash.

pub mod cli;
pub mod log;
mod route;
pub mod vmm;
pub mod vsock;

use std::convert::Infallible;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::UnixListener;

use self::cli::Args;
use self::log::{Level, Logger};
use self::vmm::{TestOptions, VERSION, Vmm};

/// Exit status when the double is misused (bad flags or files).
const EXIT_USAGE: i32 = 2;

/// Runs the double with parsed arguments; returns the process exit status.
#[must_use]
pub fn run(args: Args) -> i32 {
    if args.version {
        println!("Firecracker v{VERSION}");
        return 0;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fc-double: cannot start the runtime: {e}");
            return EXIT_USAGE;
        }
    };
    runtime.block_on(serve(args))
}

fn fatal(message: &str) -> i32 {
    eprintln!("fc-double: {message}");
    EXIT_USAGE
}

async fn serve(args: Args) -> i32 {
    let level = Level::parse(&args.level).unwrap_or(Level::Info);
    let logger = Arc::new(Logger::new(
        &args.id,
        level,
        args.show_level,
        args.show_log_origin,
    ));
    if let Some(path) = &args.log_path {
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => logger.configure(file, level, args.show_level, args.show_log_origin),
            Err(e) => return fatal(&format!("cannot open log file {}: {e}", path.display())),
        }
    }
    let vsock_ports = match vsock::parse_port_map(&args.vsock_port) {
        Ok(map) => map,
        Err(e) => return fatal(&e),
    };
    if args.api_sock.is_none() && !args.no_api {
        return fatal("--api-sock PATH is required (or --no-api with --config-file)");
    }
    logger.info("main", &format!("Running Firecracker v{VERSION}"));
    let options = TestOptions {
        ignore_ctrl_alt_del: args.ignore_ctrl_alt_del,
        fail_start: args.fail_start,
        exit_after_start: args.exit_after_start,
        vsock_ports,
    };
    let mut vmm = Vmm::new(&args.id, Arc::clone(&logger), options);
    if let Some(limit) = args.mmds_size_limit {
        vmm.set_mmds_size_limit(limit);
    }
    if let Some(path) = &args.metadata {
        let data = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()));
        match data {
            Ok(v) => {
                vmm.seed_mmds(v);
                logger.info("main", "Successfully added metadata to mmds from file");
            }
            Err(e) => {
                return fatal(&format!(
                    "MMDS error: metadata provided not valid json: {e}"
                ));
            }
        }
    }
    if let Some(path) = &args.config_file {
        let doc = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()));
        let result = match doc {
            Ok(doc) => vmm.apply_config_file(&doc),
            Err(e) => Err(format!("Invalid configuration file: {e}")),
        };
        if let Err(e) = result {
            logger.error(
                "main",
                &format!("Building VMM configured from cmdline json failed: {e}"),
            );
            return vmm::EXIT_BAD_CONFIGURATION;
        }
    }
    let vmm = Arc::new(Mutex::new(vmm));
    let Some(sock) = args.api_sock.clone().filter(|_| !args.no_api) else {
        // No API: run until a signal ends the process.
        install_signal_exit(vmm, None);
        std::future::pending::<()>().await;
        return 0;
    };
    if args.socket_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.socket_delay_ms)).await;
    }
    let listener = match bind_atomically(&sock) {
        Ok(l) => l,
        Err(e) => {
            return fatal(&format!("cannot bind API socket {}: {e}", sock.display()));
        }
    };
    logger.info("main", &format!("Listening on API socket ({sock:?})."));
    logger.info("fc_api", "API server started.");
    let request_log = match &args.request_log {
        Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(Arc::new(Mutex::new(f))),
            Err(e) => return fatal(&format!("cannot open request log {}: {e}", path.display())),
        },
        None => None,
    };
    let ctx = Arc::new(Ctx {
        max_payload: args
            .http_api_max_payload_size
            .unwrap_or(DEFAULT_MAX_PAYLOAD),
        vmm,
        request_log,
        sock: sock.clone(),
    });
    install_signal_exit(Arc::clone(&ctx.vmm), Some(sock.clone()));
    let silent = args.api_silent;
    let mut held = Vec::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if silent {
            // Keep the connection open and never answer.
            held.push(stream);
            continue;
        }
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = Arc::clone(&ctx);
                async move { Ok::<_, Infallible>(ctx.respond(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds and listens under a temporary name, then renames into place, so the socket path
/// never exists without a listener behind it. A stale file at the path is replaced.
fn bind_atomically(sock: &std::path::Path) -> std::io::Result<UnixListener> {
    let mut tmp_name = sock.as_os_str().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    if let Err(e) = std::fs::rename(&tmp, sock) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// On SIGTERM or SIGINT: remove the API socket and the vsock socket, then exit with status 0.
/// The handlers are registered before this returns, so no signal is missed afterwards.
fn install_signal_exit(vmm: Arc<Mutex<Vmm>>, sock: Option<PathBuf>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let mut paths: Vec<PathBuf> = sock.into_iter().collect();
        if let Ok(vmm) = vmm.lock() {
            paths.extend(vmm.cleanup_paths());
        }
        remove_all(&paths);
        std::process::exit(0);
    });
}

/// Firecracker's default limit for an API request body, in bytes.
const DEFAULT_MAX_PAYLOAD: usize = 51_200;

/// The answer Firecracker's HTTP layer gives to a request it cannot parse (note the raw newline:
/// Firecracker sends it like that).
fn http_parse_error(detail: &str) -> String {
    format!("{{ \"error\": \"{detail}\nAll previous unanswered requests will be dropped.\" }}")
}

struct Ctx {
    max_payload: usize,
    vmm: Arc<Mutex<Vmm>>,
    request_log: Option<Arc<Mutex<std::fs::File>>>,
    sock: PathBuf,
}

impl Ctx {
    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let reply = if !matches!(method.as_str(), "GET" | "PUT" | "PATCH") {
            vmm::Reply::raw(
                400,
                http_parse_error("Invalid HTTP Method: Unsupported HTTP method."),
            )
        } else if body.len() > self.max_payload {
            vmm::Reply::raw(
                400,
                http_parse_error(&format!(
                    "Request payload with size {} is larger than the limit of {} allowed by server.",
                    body.len(),
                    self.max_payload
                )),
            )
        } else {
            let mut vmm = self
                .vmm
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            vmm.handle(&method, &path, Some(&body))
        };
        if let Some(log) = &self.request_log {
            let logged_body = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
            };
            let line = json!({
                "method": method,
                "path": path,
                "body": logged_body,
                "status": reply.status,
            });
            let mut f = log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = f.write_all(format!("{line}\n").as_bytes());
            let _ = f.flush();
        }
        if let Some(code) = reply.exit {
            let mut paths = vec![self.sock.clone()];
            if let Ok(vmm) = self.vmm.lock() {
                paths.extend(vmm.cleanup_paths());
            }
            schedule_exit(code, paths);
        }
        let mut builder = Response::builder()
            .status(reply.status)
            .header("Server", "Firecracker API");
        let body = match reply.body {
            Some(text) => {
                builder = builder.header("Content-Type", "application/json");
                Bytes::from(text)
            }
            None => Bytes::new(),
        };
        builder
            .body(Full::new(body))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }
}

/// Ends the process shortly after the current answer went out. Status 1 is the simulated crash
/// (`FC_DOUBLE_EXIT_AFTER_START`), which leaves the socket behind like a real crash would.
fn schedule_exit(code: i32, paths: Vec<PathBuf>) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if code != 1 {
            remove_all(&paths);
        }
        std::process::exit(code);
    });
}

fn remove_all(paths: &[PathBuf]) {
    for path in paths {
        let _ = std::fs::remove_file(path);
    }
}
