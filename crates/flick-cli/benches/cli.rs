//! CLI benchmarks, side by side in one run:
//!
//! 1. `flick ls --all` (table and `--json`) over 200 VM records (target < 30 ms per call,
//!    process start included);
//! 2. `flick exec VM true` end to end (process start, record lookup, agent connect and
//!    handshake, exec) vs the same exec through the library with a fresh client per call.
//!
//! The VM runs on the Firecracker double with the agent as a host process behind its vsock
//! emulation, without networking. Run: `cargo bench -p flick-cli --bench cli`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flick::agent::{AgentClient, AgentTransport};
use flick::store::{RecordState, Store, VmRecord};
use flick_proto::ExecRequest;

const TOKEN: &str = "bench-token-1234";

fn flick(data: &Path, runtime: &Path, agent_sock: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flick"));
    c.args(args)
        .env("FLICK_DATA_DIR", data)
        .env("FLICK_RUNTIME_DIR", runtime)
        .env("FLICK_FIRECRACKER", flick_testkit::fc_double_path())
        .env(
            "FLICK_AGENT_BIN",
            flick_testkit::workspace_binary("flick-agent", "flick-agent"),
        )
        .env("FLICK_AGENT_TOKEN", TOKEN)
        .env(
            "FC_DOUBLE_VSOCK_PORTS",
            format!("1024={}", agent_sock.display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    c
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn time_runs(n: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut v: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let data = dir.path().join("data");
    let runtime = dir.path().join("runtime");
    let agent_sock = dir.path().join("agent.sock");

    // 1. ls over 200 records (stopped VMs with a realistic spec).
    let store = Store::open(data.join("vms")).unwrap();
    for i in 0..200 {
        let mut r = VmRecord::new(format!("{i:012x}"), format!("vm-{i}"));
        r.state = RecordState::Stopped;
        r.owner = None;
        r.spec = serde_json::json!({
            "cpus": 1, "memory_mib": 512, "disk_mib": 1024, "runtime": "base",
            "kernel": "/var/lib/flick/base-images/x/vmlinux", "rootfs": "/var/lib/flick/base-images/x/rootfs.squashfs",
            "rootfs_read_only": true, "network": { "rules": [], "default_action": "allow" },
            "command": [], "env": [],
        });
        store.save(&mut r).unwrap();
    }
    let mut ls = || {
        let s = flick(&data, &runtime, &agent_sock, &["ls", "--all"])
            .status()
            .unwrap();
        assert!(s.success());
    };
    ls();
    let (p50, p99) = time_runs(50, &mut ls);
    let (jp50, jp99) = time_runs(50, || {
        let s = flick(&data, &runtime, &agent_sock, &["--json", "ls", "--all"])
            .status()
            .unwrap();
        assert!(s.success());
    });
    println!(
        "ls --all, 200 records:        p50 {:7.2} ms  p99 {:7.2} ms  (target < 30 ms)",
        ms(p50),
        ms(p99)
    );
    println!(
        "--json ls --all, 200 records: p50 {:7.2} ms  p99 {:7.2} ms",
        ms(jp50),
        ms(jp99)
    );
    for entry in std::fs::read_dir(data.join("vms")).unwrap().flatten() {
        let _ = std::fs::remove_file(entry.path());
    }

    // 2. exec through the CLI vs through the library.
    let mut agent = Command::new(flick_testkit::workspace_binary(
        "flick-agent",
        "flick-agent",
    ))
    .arg("--unix")
    .arg(&agent_sock)
    .arg("--token")
    .arg(TOKEN)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    while !agent_sock.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"kernel").unwrap();
    let rootfs = dir.path().join("rootfs.ext4");
    std::fs::File::create(&rootfs)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let k = kernel.to_str().unwrap();
    let r = rootfs.to_str().unwrap();
    let s = flick(
        &data,
        &runtime,
        &agent_sock,
        &[
            "create",
            "--name",
            "b",
            "--no-network",
            "--kernel",
            k,
            "--rootfs",
            r,
        ],
    )
    .status()
    .unwrap();
    assert!(s.success());
    let exec_cli = || {
        let s = flick(&data, &runtime, &agent_sock, &["exec", "b", "--", "true"])
            .status()
            .unwrap();
        assert!(s.success());
    };
    exec_cli();
    let vsock = std::fs::read_dir(&runtime)
        .unwrap()
        .flatten()
        .find(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .unwrap()
        .path()
        .join("vsock.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let exec_lib = || {
        rt.block_on(async {
            let client = AgentClient::new(
                AgentTransport::FirecrackerVsock {
                    uds_path: vsock.clone(),
                    port: 1024,
                },
                TOKEN,
            );
            client.wait_ready(Duration::from_secs(5)).await.unwrap();
            let out = client
                .output(ExecRequest {
                    argv: vec!["true".into()],
                    ..ExecRequest::default()
                })
                .await
                .unwrap();
            assert_eq!(out.status.code, Some(0));
        });
    };
    exec_lib();
    let mut cli = Vec::new();
    let mut lib = Vec::new();
    // Interleaved, so both see the same machine load.
    for _ in 0..100 {
        let t = Instant::now();
        exec_cli();
        cli.push(t.elapsed());
        let t = Instant::now();
        exec_lib();
        lib.push(t.elapsed());
    }
    cli.sort();
    lib.sort();
    let (c50, c99) = (percentile(&cli, 0.5), percentile(&cli, 0.99));
    let (l50, l99) = (percentile(&lib, 0.5), percentile(&lib, 0.99));
    println!(
        "exec true, CLI:     p50 {:7.2} ms  p99 {:7.2} ms",
        ms(c50),
        ms(c99)
    );
    println!(
        "exec true, library: p50 {:7.2} ms  p99 {:7.2} ms",
        ms(l50),
        ms(l99)
    );
    println!(
        "CLI / library: p50 {:.2}x  p99 {:.2}x  (the difference is the CLI's process start and record lookup)",
        c50.as_secs_f64() / l50.as_secs_f64(),
        c99.as_secs_f64() / l99.as_secs_f64()
    );
    let s = flick(&data, &runtime, &agent_sock, &["rm", "-f", "b"])
        .status()
        .unwrap();
    assert!(s.success());
    let _ = agent.kill();
    let _ = agent.wait();
}
