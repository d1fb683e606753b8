//! Host side of the guest agent.
//!
//! flick-agent runs inside the VM (started by flick-init from the initrd) and listens on vsock.
//! The host reaches it through Firecracker's vsock Unix socket: connect, write
//! `CONNECT <port>\n`, read `OK <n>\n` byte by byte, and the socket is now a byte stream to the
//! agent ([`AgentTransport`]). Over that stream both sides speak [`flick_proto`]: the client's
//! hello carries the protocol version and the per-VM token, then requests follow one at a time.
//!
//! [`AgentClient`] keeps a few idle authenticated connections for quick requests; an exec, an
//! upload or a download uses a connection of its own, so closing an [`ExecSession`] kills its
//! process group in the guest. Every failure is a [`crate::Error`] with an `AGENT_*` code:
//! unreachable ([`ErrorCode::AgentConnectFailed`]), refused token or version
//! ([`ErrorCode::AgentAuthFailed`]), no answer in time ([`ErrorCode::AgentTimeout`]), broken
//! protocol ([`ErrorCode::AgentProtocolError`]) or a failure the agent reported
//! ([`ErrorCode::AgentError`], whose details carry the agent's own code and errno).
//!
//! ```no_run
//! use flick::agent::{AgentClient, AgentTransport, ExecRequest, UploadOptions};
//! use std::time::Duration;
//!
//! # async fn demo(uds: std::path::PathBuf, token: String) -> flick::Result<()> {
//! let agent = AgentClient::connect(
//!     AgentTransport::FirecrackerVsock { uds_path: uds, port: 1024 },
//!     token,
//!     Duration::from_secs(10),
//! )
//! .await?;
//! let out = agent
//!     .output(ExecRequest { argv: vec!["uname".into(), "-a".into()], ..Default::default() })
//!     .await?;
//! assert_eq!(out.status.code, Some(0));
//! agent
//!     .upload(std::path::Path::new("app.tar"), "/root/app.tar", &UploadOptions::default())
//!     .await?;
//! let mut shell = agent.shell(vec!["/bin/sh".into(), "-i".into()], 24, 80).await?;
//! shell.resize(40, 120).await?;
//! agent.sync_clock().await?;
//! # Ok(()) }
//! ```

mod exec;
mod files;
mod transport;
mod wire;

pub use exec::{ExecEvent, ExecEvents, ExecInput, ExecOutput, ExecSession};
pub use files::{DownloadOptions, TransferResult, UploadOptions};
pub use flick_proto::{ExecRequest, ExitStatus, FileInfo, FileKind, ShutdownAction, WinSize};
pub use transport::{AgentTransport, firecracker_connect};

use crate::error::{Error, ErrorCode, Result};
use flick_proto::{ErrorBody, Hello, Message, PROTOCOL_VERSION, Request, Response};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use wire::{FrameReader, FrameWriter, ReadError};

/// Idle connections kept for reuse.
const POOL_SIZE: usize = 8;

/// The agent's answer to a health probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Time since the agent started.
    pub uptime: Duration,
    /// Execs running in the guest now.
    pub running_execs: u32,
}

/// The agent's versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentVersion {
    /// Protocol version.
    pub protocol: u32,
    /// Agent build version.
    pub agent: String,
    /// Guest kernel release.
    pub kernel: String,
}

/// An authenticated connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) rd: FrameReader<OwnedReadHalf>,
    pub(crate) wr: FrameWriter<OwnedWriteHalf>,
}

pub(crate) fn protocol_error(what: impl Into<String>) -> Error {
    Error::new(ErrorCode::AgentProtocolError, what)
}

pub(crate) fn io_error(what: &str, e: std::io::Error) -> Error {
    Error::new(
        ErrorCode::AgentConnectFailed,
        format!("agent connection lost while {what}"),
    )
    .with_source(e)
}

pub(crate) fn read_error(what: &str, e: ReadError) -> Error {
    match e {
        ReadError::Io(e) => io_error(what, e),
        ReadError::Proto(p) => protocol_error(format!("while {what}: {p}")),
    }
}

/// Turns an agent error frame into a library error.
pub(crate) fn agent_error(body: ErrorBody) -> Error {
    let agent_code = body.code.clone();
    let code = if body.code == flick_proto::codes::UNAUTHORIZED {
        ErrorCode::AgentAuthFailed
    } else if body.code == flick_proto::codes::BAD_FRAME {
        ErrorCode::AgentProtocolError
    } else {
        ErrorCode::AgentError
    };
    Error::new(code, body.message).with_details(serde_json::json!({
        "agent_code": agent_code,
        "errno": body.errno,
    }))
}

impl Conn {
    /// The next frame, which must exist.
    pub(crate) async fn recv(&mut self, what: &str) -> Result<Message> {
        match self.rd.read_frame().await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(Error::new(
                ErrorCode::AgentConnectFailed,
                format!("the agent closed the connection while {what}"),
            )),
            Err(e) => Err(read_error(what, e)),
        }
    }

    /// The next frame as a response (an error frame becomes an error).
    pub(crate) async fn response(&mut self, what: &str) -> Result<Response> {
        match self.recv(what).await? {
            Message::Response(r) => Ok(r),
            Message::Error(body) => Err(agent_error(body)),
            other => Err(protocol_error(format!(
                "unexpected {:?} frame while {what}",
                other.kind()
            ))),
        }
    }

    pub(crate) async fn send(&mut self, msg: &Message, what: &str) -> Result<()> {
        self.wr.send(msg).await.map_err(|e| io_error(what, e))
    }
}

/// A client of one VM's agent.
#[derive(Debug)]
pub struct AgentClient {
    transport: AgentTransport,
    token: String,
    connect_timeout: Duration,
    pool: Mutex<Vec<Conn>>,
}

impl AgentClient {
    /// A client; nothing is connected yet (see [`AgentClient::wait_ready`]).
    pub fn new(transport: AgentTransport, token: impl Into<String>) -> Self {
        Self {
            transport,
            token: token.into(),
            connect_timeout: Duration::from_secs(5),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Connects and waits until the agent answers a health probe, within `timeout`.
    pub async fn connect(
        transport: AgentTransport,
        token: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self> {
        let client = Self::new(transport, token);
        client.wait_ready(timeout).await?;
        Ok(client)
    }

    /// Retries until the first health round trip succeeds. A refused token fails at once;
    /// otherwise the last failure is reported as [`ErrorCode::AgentTimeout`] at the deadline.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Health> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let attempt = tokio::time::timeout_at(deadline, async {
                let mut conn = self.open().await?;
                let h = Self::health_on(&mut conn).await?;
                self.give_back(conn);
                Ok::<_, Error>(h)
            })
            .await;
            let last = match attempt {
                Ok(Ok(h)) => return Ok(h),
                Ok(Err(e)) if e.code() == ErrorCode::AgentAuthFailed => return Err(e),
                Ok(Err(e)) => Some(e),
                Err(_) => None,
            };
            if tokio::time::Instant::now() + Duration::from_millis(50) >= deadline {
                let mut err = Error::new(
                    ErrorCode::AgentTimeout,
                    format!("the agent was not ready within {timeout:?}"),
                );
                if let Some(last) = last {
                    err = err.with_source(last);
                }
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens and authenticates a new connection.
    pub(crate) async fn open(&self) -> Result<Conn> {
        let stream = self.transport.open(self.connect_timeout).await?;
        let (r, w) = stream.into_split();
        let mut conn = Conn {
            rd: FrameReader::new(r),
            wr: FrameWriter::new(w),
        };
        let hello = Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: self.token.clone(),
        });
        let handshake = async {
            conn.send(&hello, "sending the hello").await?;
            match conn.recv("waiting for the hello answer").await? {
                Message::HelloOk(ok) if ok.version == PROTOCOL_VERSION => Ok(()),
                Message::HelloOk(ok) => Err(Error::new(
                    ErrorCode::AgentAuthFailed,
                    format!("the agent speaks protocol {}", ok.version),
                )),
                Message::Error(body) => Err(agent_error(body)),
                other => Err(protocol_error(format!(
                    "unexpected {:?} frame instead of the hello answer",
                    other.kind()
                ))),
            }
        };
        match tokio::time::timeout(self.connect_timeout, handshake).await {
            Ok(Ok(())) => Ok(conn),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::new(
                ErrorCode::AgentTimeout,
                "the agent did not answer the hello in time",
            )),
        }
    }

    /// An idle pooled connection, or a new one. The flag says whether it was pooled.
    pub(crate) async fn checkout(&self) -> Result<(Conn, bool)> {
        let pooled = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
        match pooled {
            Some(c) => Ok((c, true)),
            None => Ok((self.open().await?, false)),
        }
    }

    /// Returns a connection that finished its request cleanly.
    pub(crate) fn give_back(&self, conn: Conn) {
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() < POOL_SIZE
        {
            pool.push(conn);
        }
    }

    /// Sends one request that has a single response, retrying once on a fresh connection when
    /// a pooled one turns out to be dead.
    async fn simple(&self, req: Request, what: &str) -> Result<Response> {
        let (mut conn, pooled) = self.checkout().await?;
        let msg = Message::Request(req);
        match Self::round_trip(&mut conn, &msg, what).await {
            Ok(r) => {
                self.give_back(conn);
                Ok(r)
            }
            Err(e) if e.code() == ErrorCode::AgentError => {
                self.give_back(conn);
                Err(e)
            }
            Err(e) if pooled && e.code() == ErrorCode::AgentConnectFailed => {
                let mut conn = self.open().await?;
                let r = Self::round_trip(&mut conn, &msg, what).await?;
                self.give_back(conn);
                Ok(r)
            }
            Err(e) => Err(e),
        }
    }

    async fn round_trip(conn: &mut Conn, msg: &Message, what: &str) -> Result<Response> {
        conn.send(msg, what).await?;
        conn.response(what).await
    }

    async fn health_on(conn: &mut Conn) -> Result<Health> {
        match Self::round_trip(conn, &Message::Request(Request::Health), "probing health").await? {
            Response::Health {
                uptime_ms,
                running_execs,
            } => Ok(Health {
                uptime: Duration::from_millis(uptime_ms),
                running_execs,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// One health round trip.
    pub async fn health(&self) -> Result<Health> {
        match self.simple(Request::Health, "probing health").await? {
            Response::Health {
                uptime_ms,
                running_execs,
            } => Ok(Health {
                uptime: Duration::from_millis(uptime_ms),
                running_execs,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Protocol, agent and guest kernel versions.
    pub async fn version(&self) -> Result<AgentVersion> {
        match self.simple(Request::Version, "asking the version").await? {
            Response::Version {
                protocol,
                agent_version,
                kernel,
            } => Ok(AgentVersion {
                protocol,
                agent: agent_version,
                kernel,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Metadata of a guest path (`follow`: follow a final symlink).
    pub async fn stat(&self, path: &str, follow: bool) -> Result<FileInfo> {
        let req = Request::Stat {
            path: path.to_owned(),
            follow,
        };
        match self.simple(req, "stat").await? {
            Response::Stat(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates a guest directory with exactly `mode`; `parents` also creates missing parents
    /// and accepts an existing directory.
    pub async fn mkdir(&self, path: &str, mode: u32, parents: bool) -> Result<()> {
        let req = Request::Mkdir {
            path: path.to_owned(),
            mode: Some(mode),
            parents,
        };
        expect_ok(self.simple(req, "mkdir").await?)
    }

    /// Entries of a guest directory, sorted by name.
    pub async fn list(&self, path: &str) -> Result<Vec<FileInfo>> {
        let req = Request::List {
            path: path.to_owned(),
        };
        match self.simple(req, "listing").await? {
            Response::List { entries } => Ok(entries),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes a guest file or (with `recursive`) a directory tree.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        let req = Request::Remove {
            path: path.to_owned(),
            recursive,
        };
        expect_ok(self.simple(req, "removing").await?)
    }

    /// Sets the guest clock (needed after restoring a snapshot).
    pub async fn set_clock(&self, time: SystemTime) -> Result<()> {
        let since = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| Error::new(ErrorCode::InvalidArgument, "time before the Unix epoch"))?;
        let req = Request::SetClock {
            secs: since.as_secs() as i64,
            nanos: since.subsec_nanos(),
        };
        expect_ok(self.simple(req, "setting the clock").await?)
    }

    /// Sets the guest clock to the host's current time.
    pub async fn sync_clock(&self) -> Result<()> {
        self.set_clock(SystemTime::now()).await
    }

    /// Flushes the guest's filesystems.
    pub async fn sync(&self) -> Result<()> {
        expect_ok(self.simple(Request::Sync, "syncing").await?)
    }

    /// Asks the guest to stop. Inside a VM this ends the VM; an agent running on a host only
    /// exits itself.
    pub async fn shutdown(&self, action: ShutdownAction) -> Result<()> {
        let mut conn = self.open().await?;
        let r = Self::round_trip(
            &mut conn,
            &Message::Request(Request::Shutdown { action }),
            "shutting down",
        )
        .await?;
        expect_ok(r)
    }
}

fn unexpected(r: &Response) -> Error {
    protocol_error(format!("unexpected response {r:?}"))
}

fn expect_ok(r: Response) -> Result<()> {
    match r {
        Response::Ok => Ok(()),
        other => Err(unexpected(&other)),
    }
}
