//! Agent benchmarks, each side by side with its baseline in one run:
//! - exec of `true` through the agent (pooled connection over a Unix socket) vs a local
//!   fork+exec of `true`: p50/p99 over 1000 runs each, interleaved in rounds;
//! - upload and download throughput vs `cat | <Unix socket> | cat` moving the same file.
//!
//! Run: `cargo bench -p flick --bench agent_exec_transfer` (uses `$FLICK_AGENT_BIN`, else builds
//! `flick-agent` in release mode). Files live in /dev/shm so the disk does not dominate.

use flick::agent::{AgentClient, AgentTransport, DownloadOptions, ExecRequest, UploadOptions};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token";
const RUNS: usize = 1000;
const ROUNDS: usize = 10;
const FILE_SIZE: u64 = 512 << 20;
const TRANSFER_REPEATS: usize = 3;

fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FLICK_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .args([
            "build",
            "-q",
            "--release",
            "-p",
            "flick-agent",
            "--bin",
            "flick-agent",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build")
        .success();
    assert!(ok, "building flick-agent failed");
    // target/release/deps/<bench> -> target/release/flick-agent
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("flick-agent")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn cat_through_socket(src: &Path, dst: &Path) -> Duration {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let start = Instant::now();
    let mut sender = Command::new("cat")
        .arg(src)
        .stdout(Stdio::from(OwnedFd::from(a)))
        .spawn()
        .unwrap();
    let receiver = Command::new("cat")
        .stdin(Stdio::from(OwnedFd::from(b)))
        .stdout(std::fs::File::create(dst).unwrap())
        .spawn()
        .unwrap();
    assert!(sender.wait().unwrap().success());
    let out = receiver.wait_with_output().unwrap();
    assert!(out.status.success());
    start.elapsed()
}

fn gib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1u64 << 30) as f64
}

fn best(v: &[Duration]) -> Duration {
    *v.iter().min().unwrap()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let bin = agent_bin();
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let socket = dir.path().join("agent.sock");
    let mut agent = Command::new(&bin)
        .arg("--unix")
        .arg(&socket)
        .arg("--token")
        .arg(TOKEN)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = AgentClient::connect(
            AgentTransport::Unix(socket.clone()),
            TOKEN,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let req = ExecRequest {
            argv: vec!["true".into()],
            ..ExecRequest::default()
        };
        // Warm up both paths.
        for _ in 0..50 {
            client.output(req.clone()).await.unwrap();
            Command::new("true").status().unwrap();
        }
        let mut agent_t = Vec::with_capacity(RUNS);
        let mut local_t = Vec::with_capacity(RUNS);
        for _ in 0..ROUNDS {
            for _ in 0..RUNS / ROUNDS {
                let t = Instant::now();
                let out = client.output(req.clone()).await.unwrap();
                agent_t.push(t.elapsed());
                assert_eq!(out.status.code, Some(0));
            }
            for _ in 0..RUNS / ROUNDS {
                let t = Instant::now();
                let st = Command::new("true").status().unwrap();
                local_t.push(t.elapsed());
                assert!(st.success());
            }
        }
        agent_t.sort();
        local_t.sort();
        let (ap50, ap99) = (percentile(&agent_t, 0.5), percentile(&agent_t, 0.99));
        let (lp50, lp99) = (percentile(&local_t, 0.5), percentile(&local_t, 0.99));
        println!("exec `true`, {RUNS} runs each (µs):");
        println!("  {:<28} {:>9} {:>9}", "", "p50", "p99");
        println!(
            "  {:<28} {:>9.0} {:>9.0}",
            "agent (Unix socket)",
            micros(ap50),
            micros(ap99)
        );
        println!(
            "  {:<28} {:>9.0} {:>9.0}",
            "local fork+exec",
            micros(lp50),
            micros(lp99)
        );
        println!(
            "  ratio agent/local          {:>9.2} {:>9.2}   (targets ≤ 1.50, ≤ 3.00)",
            micros(ap50) / micros(lp50),
            micros(ap99) / micros(lp99)
        );

        // Transfers.
        let src = dir.path().join("src.bin");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&src).unwrap();
            let block: Vec<u8> = (0..1u32 << 20)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            for _ in 0..(FILE_SIZE >> 20) {
                f.write_all(&block).unwrap();
            }
        }
        let remote = dir.path().join("remote.bin");
        let back = dir.path().join("back.bin");
        let cat_dst = dir.path().join("cat.bin");
        let mut up = Vec::new();
        let mut down = Vec::new();
        let mut up_fast = Vec::new();
        let mut down_fast = Vec::new();
        let mut cat = Vec::new();
        let unchecked = UploadOptions {
            skip_checksum: true,
            ..UploadOptions::default()
        };
        let unchecked_down = DownloadOptions {
            skip_checksum: true,
        };
        for _ in 0..TRANSFER_REPEATS {
            let t = Instant::now();
            client
                .upload(&src, remote.to_str().unwrap(), &unchecked)
                .await
                .unwrap();
            up_fast.push(t.elapsed());
            let t = Instant::now();
            client
                .download_with(remote.to_str().unwrap(), &back, unchecked_down)
                .await
                .unwrap();
            down_fast.push(t.elapsed());
            let _ = std::fs::remove_file(&back);
            let t = Instant::now();
            client
                .upload(&src, remote.to_str().unwrap(), &UploadOptions::default())
                .await
                .unwrap();
            up.push(t.elapsed());
            let t = Instant::now();
            client
                .download(remote.to_str().unwrap(), &back)
                .await
                .unwrap();
            down.push(t.elapsed());
            cat.push(cat_through_socket(&src, &cat_dst));
            let _ = std::fs::remove_file(&back);
            let _ = std::fs::remove_file(&cat_dst);
        }
        let (u, d, c) = (best(&up), best(&down), best(&cat));
        let (uf, df) = (best(&up_fast), best(&down_fast));
        println!(
            "transfer of {} MiB (best of {TRANSFER_REPEATS}, GiB/s):",
            FILE_SIZE >> 20
        );
        let rows = [
            ("upload, SHA-256 checked", u),
            ("download, SHA-256 checked", d),
            ("upload, size checked", uf),
            ("download, size checked", df),
        ];
        for (name, t) in rows {
            println!(
                "  agent {name:<26} {:>6.2}   ratio to cat {:.2}   (target >= 0.70)",
                gib_per_s(FILE_SIZE, t),
                c.as_secs_f64() / t.as_secs_f64()
            );
        }
        println!(
            "  cat | Unix socket | cat         {:>6.2}",
            gib_per_s(FILE_SIZE, c)
        );
        // The hashing rate bounds the checked transfers on this CPU.
        use sha2::Digest;
        let block = vec![5u8; 64 << 20];
        let t = Instant::now();
        let _ = sha2::Sha256::digest(&block);
        println!(
            "  (SHA-256 alone on this CPU: {:.2} GiB/s)",
            gib_per_s(64 << 20, t.elapsed())
        );
    });
    let _ = agent.kill();
    let _ = agent.wait();
}
