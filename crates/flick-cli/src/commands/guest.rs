//! Commands that talk to the guest agent: `exec`, `connect`, `upload`, `download`, `logs`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use flick::agent::{AgentClient, AgentTransport, ExecEvent, UploadOptions};
use flick::store::VmRecord;
use flick::{Error, ErrorCode};
use flick_proto::{ExecRequest, FileKind, WinSize};
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::ctx::Ctx;
use crate::output::print_json;
use crate::reconcile;
use crate::vmops::{self, AGENT_PORT, CreateSpec};

/// How long to wait for the agent to answer its first health probe.
const AGENT_WAIT: Duration = Duration::from_secs(60);

/// The running VM named `key`, reconciled.
pub async fn running(ctx: &Ctx, key: &str) -> anyhow::Result<VmRecord> {
    let mut record = ctx.store.resolve(key)?;
    if reconcile::needs_reconcile(&record)
        && let Some(_lock) = ctx.store.try_lock_vm(&record.id)?
    {
        record = reconcile::reconcile_locked(ctx, &record.id)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("no VM {key:?}")))?;
    }
    if record.state != flick::store::RecordState::Running {
        return Err(vmops::invalid_state(&record, record.state, "reach the agent of").into());
    }
    Ok(record)
}

/// An agent client for a running VM, ready (first health round trip done).
pub async fn agent(record: &VmRecord) -> anyhow::Result<AgentClient> {
    let uds_path = record
        .attach
        .as_ref()
        .and_then(|a| a.status.vsock_socket.clone())
        .ok_or_else(|| Error::new(ErrorCode::AgentConnectFailed, "the VM has no vsock device"))?;
    let token = record.agent_token.clone().unwrap_or_default();
    let client = AgentClient::new(
        AgentTransport::FirecrackerVsock {
            uds_path,
            port: AGENT_PORT,
        },
        token,
    );
    client.wait_ready(AGENT_WAIT).await?;
    Ok(client)
}

/// How a command runs in the guest (shared by `exec` and `run`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ExecOpts {
    /// Keep stdin open and stream it to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Environment variable `KEY=VALUE` (repeatable).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Working directory in the guest.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// User (name or uid) in the guest.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Kill the command after this many seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct ExecCmd {
    /// VM name or id.
    pub vm: String,
    #[command(flatten)]
    pub opts: ExecOpts,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn parse_env(items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{kv:?} is not KEY=VALUE"),
            )
            .into()),
        })
        .collect()
}

/// The exit code a guest status maps to: its code, 128 + signal, 124 on timeout.
pub fn exit_code(status: &flick_proto::ExitStatus) -> u8 {
    if status.timed_out {
        return 124;
    }
    match (status.code, status.signal) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(s)) => u8::try_from((128 + s) & 0xff).unwrap_or(1),
        _ => 1,
    }
}

/// Runs a command in a VM, streaming its output; returns the exit code to use.
pub async fn run_command(ctx: &Ctx, record: &VmRecord, req: ExecRequest) -> anyhow::Result<u8> {
    let client = agent(record).await?;
    let tty = req.tty.is_some();
    let stdin = req.stdin;
    let session = client.exec(req).await?;
    let (mut input, mut events) = session.split();
    let raw = if tty {
        crate::term::RawMode::enter()
    } else {
        None
    };
    // The write half stays open until the exit: the agent reads a closed connection as the
    // client going away and kills the command.
    let (pump, _held) = if stdin {
        let pump = tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if input.write_stdin(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = input.close_stdin().await;
            // Keep the connection's write half until the command ends.
            std::future::pending::<()>().await;
        });
        (Some(pump), None)
    } else {
        (None, Some(input))
    };
    let status = loop {
        match events.next_event().await? {
            ExecEvent::Stdout(b) => emit(ctx, "stdout", &b),
            ExecEvent::Stderr(b) => emit(ctx, "stderr", &b),
            ExecEvent::Exit(status) => break status,
        }
    };
    drop(raw);
    if let Some(p) = pump {
        p.abort();
    }
    if ctx.globals.json {
        println!("{}", json!({ "exit": status }));
    }
    Ok(exit_code(&status))
}

fn emit(ctx: &Ctx, stream: &str, bytes: &[u8]) {
    if ctx.globals.json {
        let line = match std::str::from_utf8(bytes) {
            Ok(text) => json!({ "stream": stream, "data": text }),
            Err(_) => json!({ "stream": stream, "data_hex": hex::encode(bytes) }),
        };
        println!("{line}");
        return;
    }
    if stream == "stdout" {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    } else {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(bytes);
        let _ = err.flush();
    }
}

/// Builds the exec request, filling in the image's defaults.
pub fn request(
    record: &VmRecord,
    cmd: &ExecOpts,
    command: &[String],
) -> anyhow::Result<ExecRequest> {
    let spec = CreateSpec::of(record).unwrap_or_default();
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    env.extend(parse_env(&cmd.env)?);
    let tty = cmd.tty.then(crate::term::window_size);
    Ok(ExecRequest {
        argv: command.to_vec(),
        env,
        cwd: cmd.workdir.clone().or(spec.workdir),
        user: cmd.user.clone().or(spec.user),
        tty,
        timeout_ms: cmd.timeout.map(|s| s.saturating_mul(1000)),
        stdin: cmd.interactive || cmd.tty,
        ..ExecRequest::default()
    })
}

pub async fn exec(ctx: &Ctx, cmd: &ExecCmd) -> anyhow::Result<ExitCode> {
    let record = running(ctx, &cmd.vm).await?;
    let req = request(&record, &cmd.opts, &cmd.command)?;
    let code = run_command(ctx, &record, req).await?;
    Ok(ExitCode::from(code))
}

#[derive(Debug, clap::Args)]
pub struct ConnectCmd {
    /// VM name or id.
    pub vm: String,
    /// The shell to run.
    #[arg(long, default_value = "/bin/sh")]
    pub shell: String,
}

/// An interactive shell on a PTY: raw terminal, SIGWINCH → resize, terminal restored on exit.
pub async fn connect(ctx: &Ctx, cmd: &ConnectCmd) -> anyhow::Result<ExitCode> {
    let record = running(ctx, &cmd.vm).await?;
    let client = agent(&record).await?;
    let size = crate::term::window_size();
    let session = client
        .exec(ExecRequest {
            argv: vec![cmd.shell.clone(), "-i".into()],
            env: vec![(
                "TERM".into(),
                std::env::var("TERM").unwrap_or_else(|_| "xterm".into()),
            )],
            tty: Some(size),
            stdin: true,
            ..ExecRequest::default()
        })
        .await?;
    let (mut input, mut events) = session.split();
    let raw = crate::term::RawMode::enter();
    use tokio::signal::unix::{SignalKind, signal};
    let mut winch = signal(SignalKind::window_change())?;
    // Being told to go away still restores the terminal (the raw-mode guard drops on return).
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 32 * 1024];
    let mut stdin_open = true;
    let status = loop {
        tokio::select! {
            ev = events.next_event() => match ev? {
                ExecEvent::Stdout(b) | ExecEvent::Stderr(b) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&b);
                    let _ = out.flush();
                }
                ExecEvent::Exit(status) => break status,
            },
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(0) | Err(_) => { stdin_open = false; let _ = input.close_stdin().await; }
                Ok(n) => input.write_stdin(&buf[..n]).await?,
            },
            _ = winch.recv() => {
                let WinSize { rows, cols } = crate::term::window_size();
                let _ = input.resize(rows, cols).await;
            }
            _ = term.recv() => break flick_proto::ExitStatus { code: None, signal: Some(15), timed_out: false },
            _ = hangup.recv() => break flick_proto::ExitStatus { code: None, signal: Some(1), timed_out: false },
        }
    };
    drop(raw);
    Ok(ExitCode::from(exit_code(&status)))
}

#[derive(Debug, clap::Args)]
pub struct UploadCmd {
    /// VM name or id.
    pub vm: String,
    /// Local file or directory.
    pub local: PathBuf,
    /// Destination path in the guest.
    pub remote: String,
    /// Permission bits, octal (default: the local file's).
    #[arg(long, value_parser = parse_octal)]
    pub mode: Option<u32>,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|e| format!("{s:?}: {e}"))
}

pub async fn upload(ctx: &Ctx, cmd: &UploadCmd) -> anyhow::Result<ExitCode> {
    let record = running(ctx, &cmd.vm).await?;
    let client = agent(&record).await?;
    let opts = UploadOptions {
        mode: cmd.mode,
        mkdirs: true,
        ..UploadOptions::default()
    };
    let doc = if cmd.local.is_dir() {
        let files = client.upload_dir(&cmd.local, &cmd.remote, &opts).await?;
        json!({ "vm": record.id, "remote": cmd.remote, "files": files })
    } else {
        let r = client.upload(&cmd.local, &cmd.remote, &opts).await?;
        json!({ "vm": record.id, "remote": cmd.remote, "size": r.size, "sha256": r.sha256 })
    };
    if ctx.globals.json {
        print_json(&doc);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct DownloadCmd {
    /// VM name or id.
    pub vm: String,
    /// Path in the guest.
    pub remote: String,
    /// Local destination.
    pub local: PathBuf,
}

pub async fn download(ctx: &Ctx, cmd: &DownloadCmd) -> anyhow::Result<ExitCode> {
    let record = running(ctx, &cmd.vm).await?;
    let client = agent(&record).await?;
    let info = client.stat(&cmd.remote, true).await?;
    let doc = if info.kind == FileKind::Dir {
        let files = client.download_dir(&cmd.remote, &cmd.local).await?;
        json!({ "vm": record.id, "local": cmd.local, "files": files })
    } else {
        let r = client.download(&cmd.remote, &cmd.local).await?;
        json!({ "vm": record.id, "local": cmd.local, "size": r.size, "sha256": r.sha256 })
    };
    if ctx.globals.json {
        print_json(&doc);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct LogsCmd {
    /// VM name or id.
    pub vm: String,
    /// Keep printing new output until the VM stops (or Ctrl+C).
    #[arg(short, long)]
    pub follow: bool,
}

/// The serial console of a VM (kept until `rm`).
pub async fn logs(ctx: &Ctx, cmd: &LogsCmd) -> anyhow::Result<ExitCode> {
    let record = ctx.store.resolve(&cmd.vm)?;
    let mut path = vmops::console_path(ctx, &record.id);
    if !path.exists()
        && let Some(dir) = record
            .attach
            .as_ref()
            .and_then(|a| a.status.runtime_dir.clone())
    {
        // Jailed VMs keep their console in the jail while they run.
        path = dir.join("serial.log");
    }
    let mut offset = 0u64;
    loop {
        if let Ok(mut f) = std::fs::File::open(&path) {
            use std::io::{Read, Seek, SeekFrom};
            f.seek(SeekFrom::Start(offset))?;
            let mut chunk = Vec::new();
            f.read_to_end(&mut chunk)?;
            offset += chunk.len() as u64;
            if !chunk.is_empty() {
                if ctx.globals.json {
                    println!(
                        "{}",
                        json!({ "vm": record.id, "data": String::from_utf8_lossy(&chunk) })
                    );
                } else {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&chunk)?;
                    out.flush()?;
                }
            }
        }
        if !cmd.follow {
            break;
        }
        let now = ctx.store.load(&record.id)?;
        if now.as_ref().is_none_or(|r| !reconcile::process_alive(r)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(ExitCode::SUCCESS)
}
