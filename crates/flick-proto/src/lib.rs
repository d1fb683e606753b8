//! Wire protocol between the flick host library and the guest agent.
//!
//! A connection carries a sequence of frames. Every frame is a 5-byte header followed by a
//! payload:
//!
//! ```text
//! +--------+----------------------+---------------------------+
//! | kind   | length (u32, BE)     | payload (length bytes)    |
//! | 1 byte | 4 bytes              | at most MAX_PAYLOAD bytes |
//! +--------+----------------------+---------------------------+
//! ```
//!
//! Control frames ([`Kind::Hello`], [`Kind::Request`], [`Kind::Response`], ...) carry one JSON
//! object; data frames ([`Kind::Stdin`], [`Kind::Stdout`], [`Kind::Stderr`], [`Kind::Data`])
//! carry raw bytes. The first frame on a connection is the client's [`Hello`] with the protocol
//! version and the per-VM token; the agent answers [`HelloOk`] or an [`ErrorBody`] and closes.
//! After that the client sends one [`Request`] at a time; an exec, upload or download takes over
//! the connection until it ends, so a connection is a natural unit of cancellation (closing it
//! kills the exec's process group). `docs/agent-protocol.md` describes every message.
//!
//! The decoder never panics: unknown kinds, oversized lengths and malformed JSON are errors.
#![warn(missing_docs)]

#[cfg(feature = "tokio")]
pub mod io;

use serde::{Deserialize, Serialize};
use std::fmt;

/// The agent protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock port the agent listens on by default.
pub const DEFAULT_VSOCK_PORT: u32 = 1024;

/// Length of a frame header in bytes.
pub const HEADER_LEN: usize = 5;

/// Largest payload a frame may carry (1 MiB). Larger lengths are rejected before allocation.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Size of the data chunks both sides send for exec streams (128 KiB).
pub const CHUNK_SIZE: usize = 128 * 1024;

/// Size of the data chunks of file transfers (512 KiB): fewer frames, same bounded memory.
pub const TRANSFER_CHUNK_SIZE: usize = 512 * 1024;

/// Frame kinds. The numeric values are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Client → agent, first frame: [`Hello`].
    Hello = 1,
    /// Agent → client: [`HelloOk`].
    HelloOk = 2,
    /// Client → agent: one [`Request`].
    Request = 3,
    /// Agent → client: one [`Response`].
    Response = 4,
    /// Agent → client: an [`ErrorBody`]; ends the current request.
    Error = 5,
    /// Client → agent: raw bytes for the running exec's stdin.
    Stdin = 16,
    /// Client → agent: close the running exec's stdin (empty payload).
    StdinEof = 17,
    /// Agent → client: raw bytes the exec wrote to stdout (or the PTY).
    Stdout = 18,
    /// Agent → client: raw bytes the exec wrote to stderr.
    Stderr = 19,
    /// Agent → client: [`ExitStatus`]; the exec is over.
    Exit = 20,
    /// Client → agent: [`SignalRequest`] for the running exec.
    Signal = 21,
    /// Client → agent: [`WinSize`] for the running exec's PTY.
    Resize = 22,
    /// Either direction: raw file bytes of an upload or download.
    Data = 32,
    /// Either direction: [`DataEnd`]; the file stream is complete.
    DataEnd = 33,
}

impl Kind {
    /// Whether frames of this kind carry raw bytes (not JSON).
    #[must_use]
    pub fn is_data(self) -> bool {
        matches!(self, Kind::Stdin | Kind::Stdout | Kind::Stderr | Kind::Data)
    }

    /// Parses a kind byte.
    #[must_use]
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::HelloOk,
            3 => Kind::Request,
            4 => Kind::Response,
            5 => Kind::Error,
            16 => Kind::Stdin,
            17 => Kind::StdinEof,
            18 => Kind::Stdout,
            19 => Kind::Stderr,
            20 => Kind::Exit,
            21 => Kind::Signal,
            22 => Kind::Resize,
            32 => Kind::Data,
            33 => Kind::DataEnd,
            _ => return None,
        })
    }
}

/// A decoding failure. Every variant means the peer broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// The kind byte is not a known [`Kind`].
    UnknownKind(u8),
    /// The declared payload length exceeds [`MAX_PAYLOAD`].
    TooLarge(u64),
    /// A control payload is not the JSON the kind requires.
    BadPayload {
        /// The frame kind.
        kind: Kind,
        /// What was wrong.
        reason: String,
    },
    /// A frame kind that is not valid at this point of the conversation.
    Unexpected(Kind),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            ProtoError::TooLarge(n) => {
                write!(
                    f,
                    "frame payload of {n} bytes exceeds the {MAX_PAYLOAD}-byte limit"
                )
            }
            ProtoError::BadPayload { kind, reason } => {
                write!(f, "malformed {kind:?} payload: {reason}")
            }
            ProtoError::Unexpected(k) => write!(f, "unexpected {k:?} frame"),
        }
    }
}

impl std::error::Error for ProtoError {}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame kind.
    pub kind: Kind,
    /// The payload length (≤ [`MAX_PAYLOAD`]).
    pub len: usize,
}

impl Header {
    /// Parses and bounds-checks a header.
    pub fn parse(bytes: [u8; HEADER_LEN]) -> Result<Self, ProtoError> {
        let kind = Kind::from_u8(bytes[0]).ok_or(ProtoError::UnknownKind(bytes[0]))?;
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as u64;
        if len > MAX_PAYLOAD as u64 {
            return Err(ProtoError::TooLarge(len));
        }
        Ok(Header {
            kind,
            len: len as usize,
        })
    }

    /// Encodes a header.
    #[must_use]
    pub fn encode(kind: Kind, len: usize) -> [u8; HEADER_LEN] {
        let l = (len as u32).to_be_bytes();
        [kind as u8, l[0], l[1], l[2], l[3]]
    }
}

/// First frame of a connection (client → agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client speaks.
    pub version: u32,
    /// The per-VM token.
    pub token: String,
}

/// The agent accepted the [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloOk {
    /// The protocol version the agent speaks.
    pub version: u32,
    /// The agent's build version.
    pub agent_version: String,
}

/// A terminal window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Run a program.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Extra environment variables (added to, or replacing, the agent's base environment).
    pub env: Vec<(String, String)>,
    /// Start from an empty environment instead of the base one.
    pub clear_env: bool,
    /// Working directory (default: the user's home, else `/`).
    pub cwd: Option<String>,
    /// User name or numeric uid to run as (looked up in the guest's `/etc/passwd`).
    pub user: Option<String>,
    /// Allocate a PTY of this size (stdin/stdout/stderr all go through it).
    pub tty: Option<WinSize>,
    /// Kill the whole process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// Whether the client will stream stdin; when false stdin is `/dev/null`.
    pub stdin: bool,
    /// Send stderr through the stdout stream (like `2>&1`), preserving their relative order.
    pub merge_stderr: bool,
}

/// Write a file (followed by [`Kind::Data`] frames and one [`DataEnd`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRequest {
    /// Absolute destination path.
    pub path: String,
    /// Permission bits (default 0o644).
    #[serde(default)]
    pub mode: Option<u32>,
    /// Owner (default: unchanged, i.e. the agent's uid).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Group (default: unchanged).
    #[serde(default)]
    pub gid: Option<u32>,
    /// Create missing parent directories.
    #[serde(default)]
    pub mkdirs: bool,
    /// Skip the SHA-256 (only the size is checked; [`DataEnd::sha256`] is then empty).
    #[serde(default)]
    pub skip_checksum: bool,
}

/// What [`Request::Shutdown`] should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownAction {
    /// Stop the VM (sync, then the reboot request that makes Firecracker exit).
    Poweroff,
    /// Reboot the guest.
    Reboot,
}

/// One request (client → agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness probe; answered with [`Response::Health`].
    Health,
    /// Versions; answered with [`Response::Version`].
    Version,
    /// Run a program; answered with [`Response::ExecStarted`], output frames, then [`Kind::Exit`].
    Exec(ExecRequest),
    /// Write a file; answered with [`Response::Uploaded`] after the client's [`DataEnd`].
    Upload(UploadRequest),
    /// Read a file; answered with [`Response::DownloadStarted`], data frames, then [`DataEnd`].
    Download {
        /// Absolute path.
        path: String,
        /// Do not compute the SHA-256 ([`DataEnd::sha256`] is then empty).
        #[serde(default)]
        skip_checksum: bool,
    },
    /// Metadata of a path; answered with [`Response::Stat`].
    Stat {
        /// Absolute path.
        path: String,
        /// Follow a final symlink.
        #[serde(default)]
        follow: bool,
    },
    /// Create a directory; answered with [`Response::Ok`].
    Mkdir {
        /// Absolute path.
        path: String,
        /// Permission bits (default 0o755).
        #[serde(default)]
        mode: Option<u32>,
        /// Create parents and accept an existing directory.
        #[serde(default)]
        parents: bool,
    },
    /// Directory entries; answered with [`Response::List`].
    List {
        /// Absolute path.
        path: String,
    },
    /// Remove a file or directory; answered with [`Response::Ok`].
    Remove {
        /// Absolute path.
        path: String,
        /// Remove a directory with its contents.
        #[serde(default)]
        recursive: bool,
    },
    /// Set the guest's realtime clock; answered with [`Response::Ok`].
    SetClock {
        /// Seconds since the Unix epoch.
        secs: i64,
        /// Nanoseconds within the second.
        nanos: u32,
    },
    /// Flush filesystems; answered with [`Response::Ok`].
    Sync,
    /// Stop the guest; answered with [`Response::Ok`] before it happens.
    Shutdown {
        /// Power off or reboot.
        action: ShutdownAction,
    },
}

/// Type of a filesystem object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Anything else (device, socket, FIFO).
    Other,
}

/// Metadata of a filesystem object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Entry name (last path component).
    pub name: String,
    /// Object type.
    pub kind: FileKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Target of a symlink.
    #[serde(default)]
    pub link_target: Option<String>,
}

/// One response (agent → client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Success without data.
    Ok,
    /// Answer to [`Request::Health`].
    Health {
        /// Milliseconds since the agent started.
        uptime_ms: u64,
        /// Execs running right now.
        running_execs: u32,
    },
    /// Answer to [`Request::Version`].
    Version {
        /// Protocol version.
        protocol: u32,
        /// Agent build version.
        agent_version: String,
        /// Kernel release (`uname -r`).
        kernel: String,
    },
    /// The exec's process started.
    ExecStarted {
        /// Its pid (also its process group id).
        pid: u32,
    },
    /// An upload was verified and renamed into place.
    Uploaded {
        /// Bytes written.
        size: u64,
        /// Lowercase hex SHA-256 of the bytes.
        sha256: String,
    },
    /// A download begins.
    DownloadStarted {
        /// Size at open time.
        size: u64,
        /// Permission bits.
        mode: u32,
    },
    /// Answer to [`Request::Stat`].
    Stat(FileInfo),
    /// Answer to [`Request::List`], sorted by name.
    List {
        /// Entries (without `.` and `..`).
        entries: Vec<FileInfo>,
    },
}

/// End of a data stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataEnd {
    /// Total bytes sent.
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes (empty when the checksum was skipped).
    pub sha256: String,
}

/// Signal the running exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    /// Signal number (Linux numbering).
    pub signal: i32,
    /// Send to the whole process group instead of the leader only.
    #[serde(default)]
    pub group: bool,
}

/// How an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, when the process exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// The agent killed the group because the timeout fired.
    #[serde(default)]
    pub timed_out: bool,
}

/// Stable error codes the agent sends in [`ErrorBody::code`].
pub mod codes {
    /// The token or protocol version was refused.
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    /// The frame could not be decoded; the agent closes the connection.
    pub const BAD_FRAME: &str = "BAD_FRAME";
    /// A well-formed request with invalid arguments.
    pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
    /// The path does not exist.
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// Permission denied.
    pub const PERMISSION_DENIED: &str = "PERMISSION_DENIED";
    /// The path exists already.
    pub const ALREADY_EXISTS: &str = "ALREADY_EXISTS";
    /// A path component is not a directory, or the target is one where a file is needed.
    pub const NOT_A_DIRECTORY: &str = "NOT_A_DIRECTORY";
    /// The path is a directory where a file is needed.
    pub const IS_A_DIRECTORY: &str = "IS_A_DIRECTORY";
    /// The uploaded bytes do not match the announced SHA-256.
    pub const CHECKSUM_MISMATCH: &str = "CHECKSUM_MISMATCH";
    /// The program could not be started.
    pub const SPAWN_FAILED: &str = "SPAWN_FAILED";
    /// The user does not exist in the guest.
    pub const NO_SUCH_USER: &str = "NO_SUCH_USER";
    /// Too many connections; retry later.
    pub const BUSY: &str = "BUSY";
    /// Any other I/O failure (see `errno`).
    pub const IO: &str = "IO";
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One of [`codes`].
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// The OS error number, when one caused it.
    #[serde(default)]
    pub errno: Option<i32>,
}

impl ErrorBody {
    /// A new error body.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            errno: None,
        }
    }
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Kind::Hello`].
    Hello(Hello),
    /// See [`Kind::HelloOk`].
    HelloOk(HelloOk),
    /// See [`Kind::Request`].
    Request(Request),
    /// See [`Kind::Response`].
    Response(Response),
    /// See [`Kind::Error`].
    Error(ErrorBody),
    /// See [`Kind::Stdin`].
    Stdin(Vec<u8>),
    /// See [`Kind::StdinEof`].
    StdinEof,
    /// See [`Kind::Stdout`].
    Stdout(Vec<u8>),
    /// See [`Kind::Stderr`].
    Stderr(Vec<u8>),
    /// See [`Kind::Exit`].
    Exit(ExitStatus),
    /// See [`Kind::Signal`].
    Signal(SignalRequest),
    /// See [`Kind::Resize`].
    Resize(WinSize),
    /// See [`Kind::Data`].
    Data(Vec<u8>),
    /// See [`Kind::DataEnd`].
    DataEnd(DataEnd),
}

fn json<T: serde::de::DeserializeOwned>(kind: Kind, payload: &[u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(payload).map_err(|e| ProtoError::BadPayload {
        kind,
        reason: e.to_string(),
    })
}

impl Message {
    /// The frame kind of this message.
    #[must_use]
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::HelloOk(_) => Kind::HelloOk,
            Message::Request(_) => Kind::Request,
            Message::Response(_) => Kind::Response,
            Message::Error(_) => Kind::Error,
            Message::Stdin(_) => Kind::Stdin,
            Message::StdinEof => Kind::StdinEof,
            Message::Stdout(_) => Kind::Stdout,
            Message::Stderr(_) => Kind::Stderr,
            Message::Exit(_) => Kind::Exit,
            Message::Signal(_) => Kind::Signal,
            Message::Resize(_) => Kind::Resize,
            Message::Data(_) => Kind::Data,
            Message::DataEnd(_) => Kind::DataEnd,
        }
    }

    /// Wraps an owned payload of a data kind without copying it; `None` for other kinds.
    #[must_use]
    pub fn from_data(kind: Kind, payload: Vec<u8>) -> Option<Self> {
        Some(match kind {
            Kind::Stdin => Message::Stdin(payload),
            Kind::Stdout => Message::Stdout(payload),
            Kind::Stderr => Message::Stderr(payload),
            Kind::Data => Message::Data(payload),
            _ => return None,
        })
    }

    /// Decodes a payload of a frame whose header was already parsed.
    pub fn decode(kind: Kind, payload: &[u8]) -> Result<Self, ProtoError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(ProtoError::TooLarge(payload.len() as u64));
        }
        Ok(match kind {
            Kind::Hello => Message::Hello(json(kind, payload)?),
            Kind::HelloOk => Message::HelloOk(json(kind, payload)?),
            Kind::Request => Message::Request(json(kind, payload)?),
            Kind::Response => Message::Response(json(kind, payload)?),
            Kind::Error => Message::Error(json(kind, payload)?),
            Kind::Stdin => Message::Stdin(payload.to_vec()),
            Kind::StdinEof => {
                if !payload.is_empty() {
                    return Err(ProtoError::BadPayload {
                        kind,
                        reason: "must be empty".into(),
                    });
                }
                Message::StdinEof
            }
            Kind::Stdout => Message::Stdout(payload.to_vec()),
            Kind::Stderr => Message::Stderr(payload.to_vec()),
            Kind::Exit => Message::Exit(json(kind, payload)?),
            Kind::Signal => Message::Signal(json(kind, payload)?),
            Kind::Resize => Message::Resize(json(kind, payload)?),
            Kind::Data => Message::Data(payload.to_vec()),
            Kind::DataEnd => Message::DataEnd(json(kind, payload)?),
        })
    }

    /// Appends the encoded frame (header and payload) to `out`.
    ///
    /// Data messages larger than [`MAX_PAYLOAD`] must be split by the caller; control messages
    /// are always far below the limit.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        let to_json = |out: &mut Vec<u8>, r: serde_json::Result<()>| {
            // Serializing these plain structs cannot fail; keep the frame well-formed regardless.
            if r.is_err() {
                out.truncate(start + HEADER_LEN);
                out.extend_from_slice(b"{}");
            }
        };
        match self {
            Message::Hello(v) => {
                let r = serde_json::to_writer(&mut *out, v);
                to_json(out, r);
            }
            Message::HelloOk(v) => {
                let r = serde_json::to_writer(&mut *out, v);
                to_json(out, r);
            }
            Message::Request(v) => {
                let r = serde_json::to_writer(&mut *out, v);
                to_json(out, r);
            }
            Message::Response(v) => {
                let r = serde_json::to_writer(&mut *out, v);
                to_json(out, r);
            }
            Message::Error(v) => {
                let r = serde_json::to_writer(&mut *out, v);
                to_json(out, r);
            }
            Message::Exit(v) => {
                let r = serde_json::to_writer(&mut *out, v);
                to_json(out, r);
            }
            Message::Signal(v) => {
                let r = serde_json::to_writer(&mut *out, v);
                to_json(out, r);
            }
            Message::Resize(v) => {
                let r = serde_json::to_writer(&mut *out, v);
                to_json(out, r);
            }
            Message::DataEnd(v) => {
                let r = serde_json::to_writer(&mut *out, v);
                to_json(out, r);
            }
            Message::Stdin(b) | Message::Stdout(b) | Message::Stderr(b) | Message::Data(b) => {
                out.extend_from_slice(b);
            }
            Message::StdinEof => {}
        }
        let len = out.len() - start - HEADER_LEN;
        out[start..start + HEADER_LEN].copy_from_slice(&Header::encode(self.kind(), len));
    }

    /// The encoded frame as a new buffer.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Decodes frames from a byte buffer that may hold partial frames.
///
/// Returns `Ok(Some((message, consumed)))` for a complete frame, `Ok(None)` when more bytes are
/// needed, and an error when the bytes can never form a valid frame.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Message, usize)>, ProtoError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&buf[..HEADER_LEN]);
    let header = Header::parse(h)?;
    let end = HEADER_LEN + header.len;
    if buf.len() < end {
        return Ok(None);
    }
    let msg = Message::decode(header.kind, &buf[HEADER_LEN..end])?;
    Ok(Some((msg, end)))
}

/// Compares two byte strings in time that depends only on their lengths.
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keep the optimizer from short-circuiting the loop.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: &Message) {
        let bytes = m.encode();
        let (back, used) = decode_frame(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(&back, m);
        // Every strict prefix is incomplete, never an error.
        for cut in 0..bytes.len() {
            assert_eq!(decode_frame(&bytes[..cut]).unwrap(), None);
        }
    }

    #[test]
    fn messages_round_trip() {
        round_trip(&Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: "t0k".into(),
        }));
        round_trip(&Message::Request(Request::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "b".into())],
            tty: Some(WinSize { rows: 24, cols: 80 }),
            timeout_ms: Some(5),
            ..ExecRequest::default()
        })));
        round_trip(&Message::Request(Request::Shutdown {
            action: ShutdownAction::Poweroff,
        }));
        round_trip(&Message::Response(Response::List {
            entries: vec![FileInfo {
                name: "a".into(),
                kind: FileKind::Symlink,
                mode: 0o777,
                uid: 0,
                gid: 0,
                size: 1,
                mtime: -1,
                link_target: Some("b".into()),
            }],
        }));
        round_trip(&Message::Stdout(vec![0, 255, 10]));
        round_trip(&Message::StdinEof);
        round_trip(&Message::Exit(ExitStatus {
            code: None,
            signal: Some(9),
            timed_out: true,
        }));
        round_trip(&Message::Error(ErrorBody::new(codes::NOT_FOUND, "x")));
    }

    #[test]
    fn oversized_and_unknown_frames_are_rejected() {
        let mut big = Header::encode(Kind::Data, 0).to_vec();
        big[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode_frame(&big),
            Err(ProtoError::TooLarge(u64::from(u32::MAX)))
        );
        assert_eq!(
            decode_frame(&[99, 0, 0, 0, 0]),
            Err(ProtoError::UnknownKind(99))
        );
        let bad = [3u8, 0, 0, 0, 2, b'{', b'x'];
        assert!(matches!(
            decode_frame(&bad),
            Err(ProtoError::BadPayload { .. })
        ));
        assert!(decode_frame(&[17, 0, 0, 0, 1, 0]).is_err());
    }

    #[test]
    fn constant_time_eq_matches_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics_and_never_overreads(data in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            if let Ok(Some((_, used))) = decode_frame(&data) {
                proptest::prop_assert!(used <= data.len());
            }
        }

        #[test]
        fn data_frames_round_trip(data in proptest::collection::vec(proptest::num::u8::ANY, 0..70000)) {
            let m = Message::Data(data);
            let bytes = m.encode();
            let (back, used) = decode_frame(&bytes).unwrap().unwrap();
            proptest::prop_assert_eq!(used, bytes.len());
            proptest::prop_assert_eq!(back, m);
        }
    }

    #[test]
    fn request_json_shape_is_stable() {
        let r = Request::Stat {
            path: "/x".into(),
            follow: true,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"stat","path":"/x","follow":true}"#
        );
        let ok: Request = serde_json::from_str(r#"{"op":"health"}"#).unwrap();
        assert_eq!(ok, Request::Health);
    }
}
