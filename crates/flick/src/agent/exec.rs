//! Exec sessions: streamed output, stdin, signals, PTY resize, exit status.

use super::wire::{FrameReader, FrameWriter};
use super::{AgentClient, Conn, agent_error, io_error, protocol_error, read_error};
use crate::error::{Error, ErrorCode, Result};
use flick_proto::{
    ExecRequest, ExitStatus, Kind, Message, Request, Response, SignalRequest, WinSize,
};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// One event of a running exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes from stdout (or from the PTY).
    Stdout(Vec<u8>),
    /// Bytes from stderr.
    Stderr(Vec<u8>),
    /// The exec ended; no more events follow.
    Exit(ExitStatus),
}

/// Everything an exec produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// All stdout bytes.
    pub stdout: Vec<u8>,
    /// All stderr bytes.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
}

/// A running exec on its own connection. Dropping it before the exit kills the exec's whole
/// process group in the guest.
#[derive(Debug)]
pub struct ExecSession {
    input: ExecInput,
    events: ExecEvents,
}

/// The sending half of an [`ExecSession`]: stdin, signals, resize.
#[derive(Debug)]
pub struct ExecInput {
    wr: FrameWriter<OwnedWriteHalf>,
}

/// The receiving half of an [`ExecSession`]: output and the exit status.
#[derive(Debug)]
pub struct ExecEvents {
    rd: FrameReader<OwnedReadHalf>,
    pid: u32,
    done: bool,
}

impl ExecInput {
    /// Writes bytes to the program's stdin (or the PTY).
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<()> {
        self.wr
            .send_data(Kind::Stdin, data)
            .await
            .map_err(|e| io_error("writing stdin", e))
    }

    /// Closes the program's stdin.
    pub async fn close_stdin(&mut self) -> Result<()> {
        self.wr
            .send(&Message::StdinEof)
            .await
            .map_err(|e| io_error("closing stdin", e))
    }

    /// Sends a signal to the program (`group`: to its whole process group).
    pub async fn signal(&mut self, signal: i32, group: bool) -> Result<()> {
        self.wr
            .send(&Message::Signal(SignalRequest { signal, group }))
            .await
            .map_err(|e| io_error("sending a signal", e))
    }

    /// Resizes the PTY (ignored without one).
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<()> {
        self.wr
            .send(&Message::Resize(WinSize { rows, cols }))
            .await
            .map_err(|e| io_error("resizing", e))
    }
}

impl ExecEvents {
    /// The program's pid in the guest (also its process group id).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next event; after [`ExecEvent::Exit`] this is an error.
    pub async fn next_event(&mut self) -> Result<ExecEvent> {
        if self.done {
            return Err(Error::new(
                ErrorCode::InvalidState,
                "the exec already ended",
            ));
        }
        let msg = match self.rd.read_frame().await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err(Error::new(
                    ErrorCode::AgentConnectFailed,
                    "the agent closed the connection during an exec",
                ));
            }
            Err(e) => return Err(read_error("reading exec output", e)),
        };
        match msg {
            Message::Stdout(b) => Ok(ExecEvent::Stdout(b)),
            Message::Stderr(b) => Ok(ExecEvent::Stderr(b)),
            Message::Exit(s) => {
                self.done = true;
                Ok(ExecEvent::Exit(s))
            }
            Message::Error(body) => {
                self.done = true;
                Err(agent_error(body))
            }
            other => Err(protocol_error(format!(
                "unexpected {:?} frame during an exec",
                other.kind()
            ))),
        }
    }

    /// Collects all output until the exit.
    pub async fn collect(mut self) -> Result<ExecOutput> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        loop {
            match self.next_event().await? {
                ExecEvent::Stdout(b) => stdout.extend_from_slice(&b),
                ExecEvent::Stderr(b) => stderr.extend_from_slice(&b),
                ExecEvent::Exit(status) => {
                    return Ok(ExecOutput {
                        stdout,
                        stderr,
                        status,
                    });
                }
            }
        }
    }
}

impl ExecSession {
    /// The program's pid in the guest.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.events.pid
    }

    /// See [`ExecInput::write_stdin`].
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<()> {
        self.input.write_stdin(data).await
    }

    /// See [`ExecInput::close_stdin`].
    pub async fn close_stdin(&mut self) -> Result<()> {
        self.input.close_stdin().await
    }

    /// See [`ExecInput::signal`].
    pub async fn signal(&mut self, signal: i32, group: bool) -> Result<()> {
        self.input.signal(signal, group).await
    }

    /// See [`ExecInput::resize`].
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<()> {
        self.input.resize(rows, cols).await
    }

    /// See [`ExecEvents::next_event`].
    pub async fn next_event(&mut self) -> Result<ExecEvent> {
        self.events.next_event().await
    }

    /// Collects all output until the exit.
    pub async fn collect(self) -> Result<ExecOutput> {
        let ExecSession { input, events } = self;
        let out = events.collect().await;
        drop(input);
        out
    }

    /// Splits into independently usable halves (for example stdin from one task, output in
    /// another).
    #[must_use]
    pub fn split(self) -> (ExecInput, ExecEvents) {
        (self.input, self.events)
    }
}

async fn start(conn: &mut Conn, req: ExecRequest) -> Result<u32> {
    if req.argv.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            "argv must not be empty",
        ));
    }
    let msg = Message::Request(Request::Exec(req));
    let encoded = msg.encode();
    if encoded.len() - flick_proto::HEADER_LEN > flick_proto::MAX_PAYLOAD {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "the exec request is {} bytes; argv and env must fit in {} bytes",
                encoded.len(),
                flick_proto::MAX_PAYLOAD
            ),
        ));
    }
    conn.send(&msg, "starting an exec").await?;
    match conn.response("starting an exec").await? {
        Response::ExecStarted { pid } => Ok(pid),
        other => Err(protocol_error(format!("unexpected response {other:?}"))),
    }
}

impl AgentClient {
    /// Starts a program and returns its session (its own connection).
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecSession> {
        let mut conn = self.open().await?;
        let pid = start(&mut conn, req).await?;
        Ok(ExecSession {
            input: ExecInput { wr: conn.wr },
            events: ExecEvents {
                rd: conn.rd,
                pid,
                done: false,
            },
        })
    }

    /// Starts an interactive program on a PTY of `rows` × `cols` (stdin enabled).
    pub async fn shell(&self, argv: Vec<String>, rows: u16, cols: u16) -> Result<ExecSession> {
        self.exec(ExecRequest {
            argv,
            tty: Some(WinSize { rows, cols }),
            stdin: true,
            ..ExecRequest::default()
        })
        .await
    }

    /// Runs a program without stdin to completion and returns its output. Uses a pooled
    /// connection, which makes short commands cheap.
    pub async fn output(&self, mut req: ExecRequest) -> Result<ExecOutput> {
        req.stdin = false;
        let (mut conn, pooled) = self.checkout().await?;
        let pid = match start(&mut conn, req.clone()).await {
            Ok(pid) => pid,
            Err(e) if pooled && e.code() == ErrorCode::AgentConnectFailed => {
                conn = self.open().await?;
                start(&mut conn, req).await?
            }
            Err(e) => {
                if e.code() == ErrorCode::AgentError {
                    self.give_back(conn);
                }
                return Err(e);
            }
        };
        let mut events = ExecEvents {
            rd: conn.rd,
            pid,
            done: false,
        };
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let status = loop {
            match events.next_event().await? {
                ExecEvent::Stdout(b) => stdout.extend_from_slice(&b),
                ExecEvent::Stderr(b) => stderr.extend_from_slice(&b),
                ExecEvent::Exit(s) => break s,
            }
        };
        self.give_back(Conn {
            rd: events.rd,
            wr: conn.wr,
        });
        Ok(ExecOutput {
            stdout,
            stderr,
            status,
        })
    }
}
