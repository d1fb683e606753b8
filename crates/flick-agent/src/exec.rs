//! Running programs: pipes or a PTY, process groups, timeouts, streaming with backpressure.
//!
//! Every exec gets its own process group (a new session when it has a PTY), so a timeout or a
//! client disconnect kills the whole tree it started, not only the leader. Output is read in
//! [`flick_proto::CHUNK_SIZE`] chunks into a channel of a few slots and written to the client
//! from one place; when the client reads slowly, the channel fills, the pipe fills and the
//! program blocks in `write`: memory stays bounded whatever the output size.

use crate::server::Shared;
use crate::session::{Closed, bad_frame};
use crate::users;
use crate::wire::{FrameReader, FrameWriter, ReadError};
use flick_proto::{
    CHUNK_SIZE, ErrorBody, ExecRequest, ExitStatus, Kind, Message, Response, WinSize, codes,
};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

/// After the program exited, output still held open by its background children is read until
/// it stays quiet this long.
const EXIT_IDLE: Duration = Duration::from_millis(250);

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

struct Spawned {
    child: tokio::process::Child,
    pid: i32,
    outputs: Vec<(Kind, BoxRead)>,
    stdin: Option<BoxWrite>,
    pty: Option<Arc<OwnedFd>>,
}

fn err_body(code: &str, message: String, err: Option<&io::Error>) -> ErrorBody {
    let mut body = ErrorBody::new(code, message);
    body.errno = err.and_then(io::Error::raw_os_error);
    body
}

/// Sends `sig` to the process group `pgid`.
pub fn kill_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid only signals that process group.
        unsafe { libc::kill(-pgid, sig) };
    }
}

fn build_command(req: &ExecRequest) -> Result<tokio::process::Command, ErrorBody> {
    let mut cmd = tokio::process::Command::new(&req.argv[0]);
    cmd.args(&req.argv[1..]);
    if req.clear_env {
        cmd.env_clear();
    }
    let mut home = None;
    if let Some(spec) = &req.user {
        let user = users::lookup_system(spec).ok_or_else(|| {
            ErrorBody::new(
                codes::NO_SUCH_USER,
                format!("no user {spec} in /etc/passwd"),
            )
        })?;
        cmd.uid(user.uid).gid(user.gid);
        cmd.env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name)
            .env("SHELL", &user.shell);
        home = Some(user.home);
    }
    let has_path = req.env.iter().any(|(k, _)| k == "PATH")
        || (!req.clear_env && std::env::var_os("PATH").is_some());
    if !has_path {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if req.tty.is_some() && !req.env.iter().any(|(k, _)| k == "TERM") {
        cmd.env("TERM", "xterm-256color");
    }
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ErrorBody::new(
                codes::INVALID_REQUEST,
                format!("invalid environment variable {k:?}"),
            ));
        }
        cmd.env(k, v);
    }
    let cwd = match (&req.cwd, home) {
        (Some(cwd), _) => {
            if !std::path::Path::new(cwd).is_dir() {
                return Err(ErrorBody::new(
                    codes::NOT_FOUND,
                    format!("working directory {cwd} does not exist"),
                ));
            }
            cwd.clone()
        }
        (None, Some(home)) if std::path::Path::new(&home).is_dir() => home,
        (None, _) => "/".to_owned(),
    };
    cmd.current_dir(cwd);
    Ok(cmd)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

fn receiver(fd: OwnedFd) -> io::Result<BoxRead> {
    Ok(Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(
        fd,
    )?))
}

fn spawn_error(req: &ExecRequest, e: &io::Error) -> ErrorBody {
    err_body(
        codes::SPAWN_FAILED,
        format!("cannot start {}: {e}", req.argv[0]),
        Some(e),
    )
}

fn spawn_pipes(req: &ExecRequest) -> Result<Spawned, ErrorBody> {
    let mut cmd = build_command(req)?;
    let io_err = |e: io::Error| err_body(codes::IO, format!("pipe: {e}"), Some(&e));
    let (out_r, out_w) = pipe().map_err(io_err)?;
    let mut outputs = vec![(Kind::Stdout, receiver(out_r).map_err(io_err)?)];
    cmd.stdout(Stdio::from(out_w.try_clone().map_err(io_err)?));
    if req.merge_stderr {
        cmd.stderr(Stdio::from(out_w));
    } else {
        drop(out_w);
        let (err_r, err_w) = pipe().map_err(io_err)?;
        outputs.push((Kind::Stderr, receiver(err_r).map_err(io_err)?));
        cmd.stderr(Stdio::from(err_w));
    }
    cmd.stdin(if req.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(|e| spawn_error(req, &e))?;
    // The command holds the write ends of the pipes; drop it so EOF arrives when the child ends.
    drop(cmd);
    let pid = child.id().unwrap_or(0) as i32;
    let stdin = child.stdin.take().map(|s| Box::new(s) as BoxWrite);
    Ok(Spawned {
        child,
        pid,
        outputs,
        stdin,
        pty: None,
    })
}

/// One direction of a PTY master, driven by the tokio reactor.
struct PtyHalf(AsyncFd<OwnedFd>);

impl PtyHalf {
    fn new(fd: &OwnedFd) -> io::Result<Self> {
        let dup = rustix::io::fcntl_dupfd_cloexec(fd, 3)?;
        rustix::io::ioctl_fionbio(&dup, true)?;
        // SAFETY: `dup` is an open descriptor owned by the AsyncFd for its whole life, and
        // OwnedFd::as_raw_fd always returns that same descriptor.
        let fd = unsafe { AsyncFd::register(dup) }?;
        Ok(Self(fd))
    }
}

impl AsyncRead for PtyHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut *unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave side is closed, which is a PTY's end of file.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for PtyHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn set_winsize(fd: &OwnedFd, ws: WinSize) -> io::Result<()> {
    rustix::termios::tcsetwinsize(
        fd,
        rustix::termios::Winsize {
            ws_row: ws.rows,
            ws_col: ws.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

fn open_pty(ws: WinSize) -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::pty::OpenptFlags;
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    set_winsize(&master, ws)?;
    Ok((master, slave))
}

fn spawn_pty(req: &ExecRequest, ws: WinSize) -> Result<Spawned, ErrorBody> {
    let mut cmd = build_command(req)?;
    let io_err = |e: io::Error| err_body(codes::IO, format!("pty: {e}"), Some(&e));
    let (master, slave) = open_pty(ws).map_err(io_err)?;
    cmd.stdin(Stdio::from(slave.try_clone().map_err(io_err)?));
    cmd.stdout(Stdio::from(slave.try_clone().map_err(io_err)?));
    cmd.stderr(Stdio::from(slave));
    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe setsid(2) and ioctl(2).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| spawn_error(req, &e))?;
    drop(cmd);
    let pid = child.id().unwrap_or(0) as i32;
    let reader = PtyHalf::new(&master).map_err(io_err)?;
    let writer = PtyHalf::new(&master).map_err(io_err)?;
    Ok(Spawned {
        child,
        pid,
        outputs: vec![(Kind::Stdout, Box::new(reader))],
        stdin: req.stdin.then(|| Box::new(writer) as BoxWrite),
        pty: Some(Arc::new(master)),
    })
}

async fn pump(mut reader: BoxRead, kind: Kind, tx: mpsc::Sender<(Kind, Vec<u8>)>) {
    loop {
        let mut buf = Vec::with_capacity(CHUNK_SIZE);
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx.send((kind, buf)).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn feed(mut writer: BoxWrite, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(data) = rx.recv().await {
        if writer.write_all(&data).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

struct RunningGuard<'a>(&'a Shared);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running_execs.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn reap(mut child: tokio::process::Child, pid: i32) {
    kill_group(pid, libc::SIGKILL);
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
}

/// Runs one exec on this connection until it ends.
pub async fn run<R, W>(
    req: ExecRequest,
    rd: &mut FrameReader<R>,
    wr: &mut FrameWriter<W>,
    shared: &Arc<Shared>,
) -> Result<(), Closed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if req.argv.is_empty() || req.argv[0].is_empty() {
        let body = ErrorBody::new(codes::INVALID_REQUEST, "argv must not be empty");
        return wr.send(&Message::Error(body)).await.map_err(|_| Closed);
    }
    let spawned = match req.tty {
        Some(ws) => spawn_pty(&req, ws),
        None => spawn_pipes(&req),
    };
    let spawned = match spawned {
        Ok(s) => s,
        Err(body) => return wr.send(&Message::Error(body)).await.map_err(|_| Closed),
    };
    shared.running_execs.fetch_add(1, Ordering::Relaxed);
    let _running = RunningGuard(shared);
    let Spawned {
        mut child,
        pid,
        outputs,
        stdin,
        pty,
    } = spawned;

    let mut tasks = tokio::task::JoinSet::new();
    let (out_tx, mut out_rx) = mpsc::channel::<(Kind, Vec<u8>)>(4);
    for (kind, reader) in outputs {
        tasks.spawn(pump(reader, kind, out_tx.clone()));
    }
    drop(out_tx);
    let mut stdin_tx = stdin.map(|w| {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
        tasks.spawn(feed(w, rx));
        tx
    });

    if wr
        .send(&Message::Response(Response::ExecStarted {
            pid: pid as u32,
        }))
        .await
        .is_err()
    {
        reap(child, pid).await;
        return Err(Closed);
    }

    let deadline = req
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut pending: Option<Vec<u8>> = None;
    let mut status: Option<std::process::ExitStatus> = None;
    let mut outputs_open = true;
    let mut timed_out = false;

    loop {
        if status.is_some() && !outputs_open {
            break;
        }
        let stdin_for_reserve = stdin_tx.clone();
        tokio::select! {
            permit = async move {
                match stdin_for_reserve {
                    Some(tx) => tx.reserve_owned().await,
                    None => std::future::pending().await,
                }
            },
                if pending.is_some() && stdin_tx.is_some() =>
            {
                match permit {
                    Ok(p) => {
                        p.send(pending.take().unwrap_or_default());
                    }
                    // The program closed its stdin; later input is dropped.
                    Err(_) => {
                        pending = None;
                        stdin_tx = None;
                    }
                }
            }
            out = out_rx.recv(), if outputs_open => match out {
                Some((kind, data)) => {
                    if wr.send_data(kind, &data).await.is_err() {
                        reap(child, pid).await;
                        return Err(Closed);
                    }
                }
                None => outputs_open = false,
            },
            st = child.wait(), if status.is_none() => {
                status = Some(st.unwrap_or_else(|_| std::process::ExitStatus::from_raw(0xff00)));
            }
            () = async { tokio::time::sleep_until(deadline.expect("guarded")).await },
                if deadline.is_some() && !timed_out && status.is_none() =>
            {
                timed_out = true;
                kill_group(pid, libc::SIGKILL);
            }
            () = tokio::time::sleep(EXIT_IDLE), if status.is_some() => break,
            frame = rd.read_frame(), if pending.is_none() => match frame {
                Ok(Some(Message::Stdin(data))) => {
                    if stdin_tx.is_some() && !data.is_empty() {
                        pending = Some(data);
                    }
                }
                Ok(Some(Message::StdinEof)) => stdin_tx = None,
                Ok(Some(Message::Signal(s))) => {
                    if (1..=64).contains(&s.signal) && status.is_none() {
                        if s.group {
                            kill_group(pid, s.signal);
                        } else {
                            // SAFETY: kill(2) on the leader's pid, which we have not reaped yet.
                            unsafe { libc::kill(pid, s.signal) };
                        }
                    }
                }
                Ok(Some(Message::Resize(ws))) => {
                    if let Some(master) = &pty {
                        let _ = set_winsize(master, ws);
                    }
                }
                Ok(Some(other)) => {
                    let body = ErrorBody::new(
                        codes::BAD_FRAME,
                        format!("unexpected {:?} frame during an exec", other.kind()),
                    );
                    let _ = wr.send(&Message::Error(body)).await;
                    reap(child, pid).await;
                    return Err(Closed);
                }
                Ok(None) | Err(ReadError::Io(_)) => {
                    // The client left: the exec goes with it.
                    reap(child, pid).await;
                    return Err(Closed);
                }
                Err(e @ ReadError::Proto(_)) => {
                    bad_frame(wr, &e).await;
                    reap(child, pid).await;
                    return Err(Closed);
                }
            },
        }
    }
    drop(out_rx);
    drop(stdin_tx);
    tasks.abort_all();
    let status = status.unwrap_or_else(|| std::process::ExitStatus::from_raw(0xff00));
    let exit = ExitStatus {
        code: status.code(),
        signal: status.signal(),
        timed_out,
    };
    drop(pty);
    wr.send(&Message::Exit(exit)).await.map_err(|_| Closed)?;
    Ok(())
}
