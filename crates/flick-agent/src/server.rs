//! Listeners (AF_VSOCK and Unix) and the connection limit.

use crate::session;
use flick_proto::{ErrorBody, Message, codes};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

/// What a [`flick_proto::Request::Shutdown`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Only stop the agent process (host use: never touch the machine).
    ExitAgent,
    /// Sync and power off or reboot the machine (inside a VM).
    Machine,
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The per-VM token clients must present.
    pub token: Vec<u8>,
    /// Connections served at once; more are answered `BUSY`.
    pub max_connections: usize,
    /// Unix socket paths to listen on.
    pub unix: Vec<PathBuf>,
    /// vsock port to listen on, if any.
    pub vsock_port: Option<u32>,
    /// What shutdown requests do.
    pub shutdown: ShutdownMode,
}

/// State shared by all connections.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub config: Config,
    /// When the agent started.
    pub started: Instant,
    /// Execs running now.
    pub running_execs: AtomicU32,
    limit: Arc<Semaphore>,
}

impl Shared {
    /// Shared state for a configuration.
    pub fn new(config: Config) -> Arc<Self> {
        let limit = Arc::new(Semaphore::new(config.max_connections));
        Arc::new(Self {
            config,
            started: Instant::now(),
            running_execs: AtomicU32::new(0),
            limit,
        })
    }
}

async fn handle<S>(stream: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
        let (_, w) = tokio::io::split(stream);
        let mut w = crate::wire::FrameWriter::new(w);
        let _ = w
            .send(&Message::Error(ErrorBody::new(
                codes::BUSY,
                "too many connections",
            )))
            .await;
        return;
    };
    session::serve(stream, shared).await;
    drop(permit);
}

/// Listens on every configured socket until the process ends.
pub async fn run(config: Config) -> std::io::Result<()> {
    let shared = Shared::new(config);
    let mut tasks = tokio::task::JoinSet::new();
    // PID 1 forwards SIGHUP and SIGUSR1 to every process; they must not end the agent. A
    // handler (unlike SIG_IGN) is reset by exec, so programs started by the agent keep the
    // default behaviour.
    use tokio::signal::unix::{SignalKind, signal};
    for kind in [SignalKind::hangup(), SignalKind::user_defined1()] {
        let mut stream = signal(kind)?;
        tasks.spawn(async move { while stream.recv().await.is_some() {} });
    }
    for path in &shared.config.unix {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        let shared = shared.clone();
        tasks.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(handle(stream, shared.clone()));
                    }
                    Err(e) => {
                        eprintln!("flick-agent: accept on unix socket: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    if let Some(port) = shared.config.vsock_port {
        let bound = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
            tokio_vsock::VMADDR_CID_ANY,
            port,
        ));
        let listener = match bound {
            Ok(l) => l,
            // Without vsock (a host, a namespace) the Unix sockets still serve.
            Err(e) if !shared.config.unix.is_empty() => {
                eprintln!("flick-agent: vsock port {port} unavailable ({e}); Unix sockets only");
                return serve_until_done(tasks).await;
            }
            Err(e) => return Err(e),
        };
        let shared = shared.clone();
        tasks.spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(handle(stream, shared.clone()));
                    }
                    Err(e) => {
                        eprintln!("flick-agent: accept on vsock: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    serve_until_done(tasks).await
}

async fn serve_until_done(mut tasks: tokio::task::JoinSet<()>) -> std::io::Result<()> {
    eprintln!("flick-agent: ready");
    while tasks.join_next().await.is_some() {}
    Ok(())
}
