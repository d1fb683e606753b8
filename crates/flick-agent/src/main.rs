//! flick-agent / flick-init entry point: picks the role, parses the few flags, runs.
use flick_agent::server::{Config, ShutdownMode};
use std::path::PathBuf;

const USAGE: &str = "usage: flick-agent [--unix PATH]... [--vsock-port PORT] \
[--token TOKEN | --token-file PATH] [--max-connections N] [--machine]

Serves the flick agent protocol. Without --unix it listens on vsock port 1024.
The token may also come from the FLICK_AGENT_TOKEN environment variable.
--machine: shutdown requests power the machine off (default: only the agent exits).
Run as PID 1, or under the name flick-init, it acts as the VM's init.";

fn fail(msg: &str) -> ! {
    eprintln!("flick-agent: {msg}\n\n{USAGE}");
    std::process::exit(2);
}

fn parse_args(args: Vec<String>) -> Config {
    let mut unix = Vec::new();
    let mut vsock_port = None;
    let mut token: Option<String> = std::env::var("FLICK_AGENT_TOKEN").ok();
    let mut max_connections = 128;
    let mut shutdown = ShutdownMode::ExitAgent;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| fail(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--unix" => unix.push(PathBuf::from(value("--unix"))),
            "--vsock-port" => {
                vsock_port = Some(
                    value("--vsock-port")
                        .parse()
                        .unwrap_or_else(|_| fail("bad --vsock-port")),
                );
            }
            "--token" => token = Some(value("--token")),
            "--token-file" => {
                let path = value("--token-file");
                let t = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| fail(&format!("reading {path}: {e}")));
                token = Some(t.trim().to_owned());
            }
            "--max-connections" => {
                max_connections = value("--max-connections")
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| fail("bad --max-connections"));
            }
            "--machine" => shutdown = ShutdownMode::Machine,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => fail(&format!("unknown argument {other}")),
        }
    }
    let token = token
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| fail("a token is required"));
    if unix.is_empty() && vsock_port.is_none() {
        vsock_port = Some(flick_proto::DEFAULT_VSOCK_PORT);
    }
    Config {
        token: token.into_bytes(),
        max_connections,
        unix,
        vsock_port,
        shutdown,
    }
}

fn main() {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let name = argv0.rsplit('/').next().unwrap_or_default();
    if std::process::id() == 1 || name == "flick-init" {
        flick_agent::init::main();
    }
    let config = parse_args(args.collect());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("cannot start the runtime: {e}")));
    if let Err(e) = runtime.block_on(flick_agent::server::run(config)) {
        eprintln!("flick-agent: {e}");
        std::process::exit(1);
    }
}
