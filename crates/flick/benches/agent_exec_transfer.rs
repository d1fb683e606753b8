//! Agent benchmarks, each side by side with its baseline in one run:
//! - exec of `true` through the agent (pooled connection over a Unix socket) vs a local
//!   fork+exec of `true`: p50/p99 over 1000 runs each, interleaved in rounds;
//! - upload and download throughput vs `cat | <Unix socket> | cat` moving the same file, with
//!   the SHA-256 check (the default), with a size check only, and with a digest known in
//!   advance; each row also shows the CPU seconds per GiB the client and the agent used.
//!
//! `cargo bench -p flick --bench agent_exec_transfer -- transfer` runs only the transfers
//! (`-- exec` only the exec comparison).
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
const TRANSFER_REPEATS: usize = 5;

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

fn main() {
    // `cargo bench` passes `--bench`; other arguments select sections (`exec`, `transfer`).
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
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
        if run("exec") {
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
        }
        if !run("transfer") {
            return;
        }
        // Transfers.
        transfers(&client, dir.path(), agent.id()).await;
    });
    let _ = agent.kill();
    let _ = agent.wait();
}

/// User + system CPU seconds of `getrusage(who)`.
fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain data, so all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we own; `who` is RUSAGE_SELF or _CHILDREN.
    assert_eq!(unsafe { libc::getrusage(who, &mut ru) }, 0);
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds (user + system) used so far by this process (all threads) or by `pid`.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    match pid {
        None => rusage_seconds(libc::RUSAGE_SELF),
        Some(pid) => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            // SAFETY: sysconf has no memory-safety preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
            (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / hz
        }
    }
}

/// Wall time and CPU seconds of the client and of the agent (or of `cat`) for one transfer.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    client_cpu: f64,
    agent_cpu: f64,
}

async fn measure<F: std::future::Future<Output = ()>>(agent: u32, f: F) -> Sample {
    let (c0, a0) = (cpu_seconds(None), cpu_seconds(Some(agent)));
    let t = Instant::now();
    f.await;
    let wall = t.elapsed();
    Sample {
        wall,
        client_cpu: cpu_seconds(None) - c0,
        agent_cpu: cpu_seconds(Some(agent)) - a0,
    }
}

fn cat_sample(src: &Path, dst: &Path) -> Sample {
    // RUSAGE_CHILDREN covers the two `cat`s once they were waited for.
    let children = || rusage_seconds(libc::RUSAGE_CHILDREN);
    let before = children();
    let wall = cat_through_socket(src, dst);
    Sample {
        wall,
        client_cpu: children() - before,
        agent_cpu: 0.0,
    }
}

fn best_sample(v: &[Sample]) -> Sample {
    *v.iter().min_by_key(|s| s.wall).unwrap()
}

async fn transfers(client: &AgentClient, dir: &Path, agent: u32) {
    let src = dir.join("src.bin");
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
    let remote = dir.join("remote.bin");
    let remote_s = remote.to_str().unwrap();
    let back = dir.join("back.bin");
    let cat_dst = dir.join("cat.bin");
    let known = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&src).unwrap()))
    };
    // (row name, upload options, download options)
    let modes = [
        ("SHA-256 checked", false, None),
        ("size checked", true, None),
        ("known SHA-256", false, Some(known)),
    ];
    let mut samples: Vec<[Vec<Sample>; 2]> = modes.iter().map(|_| Default::default()).collect();
    let mut cat = Vec::new();
    // Every transfer writes a fresh file (as `cat` does): freeing an overwritten 512 MiB
    // file would otherwise be timed as part of the rename.
    let clean = || {
        for p in [&remote, &back, &cat_dst] {
            let _ = std::fs::remove_file(p);
        }
    };
    for _ in 0..TRANSFER_REPEATS {
        for (i, (_, skip_checksum, sha256)) in modes.iter().enumerate() {
            clean();
            let up_opts = UploadOptions {
                skip_checksum: *skip_checksum,
                sha256: sha256.clone(),
                ..UploadOptions::default()
            };
            let down_opts = DownloadOptions {
                skip_checksum: *skip_checksum,
                sha256: sha256.clone(),
            };
            let up = measure(agent, async {
                let r = client.upload(&src, remote_s, &up_opts).await.unwrap();
                assert_eq!(r.size, FILE_SIZE);
            })
            .await;
            samples[i][0].push(up);
            let down = measure(agent, async {
                let r = client
                    .download_with(remote_s, &back, &down_opts)
                    .await
                    .unwrap();
                assert_eq!(r.size, FILE_SIZE);
            })
            .await;
            samples[i][1].push(down);
        }
        clean();
        cat.push(cat_sample(&src, &cat_dst));
    }
    clean();
    let c = best_sample(&cat);
    let gib = FILE_SIZE as f64 / (1u64 << 30) as f64;
    println!(
        "transfer of {} MiB (best of {TRANSFER_REPEATS}; CPU seconds per GiB of that run):",
        FILE_SIZE >> 20
    );
    println!(
        "  {:<34} {:>6} {:>8} {:>11} {:>10}",
        "", "GiB/s", "vs cat", "client CPU", "agent CPU"
    );
    let rows = modes.iter().zip(&samples).flat_map(|((mode, ..), pair)| {
        [("upload", &pair[0]), ("download", &pair[1])]
            .map(|(dir, v)| (format!("{dir}, {mode}"), best_sample(v)))
    });
    for (name, s) in rows {
        println!(
            "  agent {name:<28} {:>6.2} {:>8.2} {:>11.2} {:>10.2}   (target >= 0.70)",
            gib_per_s(FILE_SIZE, s.wall),
            c.wall.as_secs_f64() / s.wall.as_secs_f64(),
            s.client_cpu / gib,
            s.agent_cpu / gib,
        );
    }
    println!(
        "  {:<34} {:>6.2} {:>8.2} {:>11.2}   (both cats)",
        "cat | Unix socket | cat",
        gib_per_s(FILE_SIZE, c.wall),
        1.0,
        c.client_cpu / gib
    );
    // The hashing rate bounds the checked transfers on this CPU.
    use sha2::Digest;
    let block = vec![5u8; 64 << 20];
    let hashing = (0..3)
        .map(|_| {
            let t = Instant::now();
            let _ = sha2::Sha256::digest(&block);
            t.elapsed()
        })
        .min()
        .unwrap();
    println!(
        "  (SHA-256 alone on this CPU: {:.2} GiB/s, one core, best of 3)",
        gib_per_s(64 << 20, hashing)
    );
}
