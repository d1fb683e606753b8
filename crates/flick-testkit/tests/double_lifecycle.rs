//! Lifecycle of the double as a process: snapshots, Ctrl+Alt+Del, vsock, test switches, CLI.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{boot, call, disk, double, fault, state};
use flick_testkit::{FcDouble, FcDoubleOptions, fc_double_path};
use serde_json::{Value, json};

fn env(pairs: &[(&str, &str)]) -> FcDoubleOptions {
    FcDoubleOptions {
        env: pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
        ..Default::default()
    }
}

/// Configures drives, a network interface, vsock and machine config, boots and pauses.
async fn configured_and_paused(d: &FcDouble) {
    let root = disk(d, "root.img");
    let (s, _) = call(
        d,
        "PUT",
        "/machine-config",
        Some(json!({"vcpu_count": 2, "mem_size_mib": 64, "track_dirty_pages": true})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = call(d, "PUT", "/drives/rootfs", Some(json!({"drive_id": "rootfs", "path_on_host": root, "is_root_device": true, "is_read_only": false}))).await;
    assert_eq!(s, 204);
    let (s, _) = call(
        d,
        "PUT",
        "/network-interfaces/eth0",
        Some(json!({"iface_id": "eth0", "host_dev_name": "tap-a"})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = call(
        d,
        "PUT",
        "/vsock",
        Some(json!({"guest_cid": 3, "uds_path": d.dir().join("v.sock")})),
    )
    .await;
    assert_eq!(s, 204);
    boot(d).await;
    let (s, b) = call(
        d,
        "PUT",
        "/snapshot/create",
        Some(json!({"snapshot_path": d.dir().join("s"), "mem_file_path": d.dir().join("m")})),
    )
    .await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running"
        )
    );
    let (s, _) = call(d, "PATCH", "/vm", Some(json!({"state": "Paused"}))).await;
    assert_eq!(s, 204);
}

#[tokio::test]
async fn snapshot_create_writes_state_and_sparse_memory() {
    let d = double();
    configured_and_paused(&d).await;
    let snap = d.dir().join("vm.snap");
    let mem = d.dir().join("vm.mem");
    let (s, b) = call(
        &d,
        "PUT",
        "/snapshot/create",
        Some(json!({"snapshot_type": "Diff", "snapshot_path": snap, "mem_file_path": mem})),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let state: Value = serde_json::from_str(&std::fs::read_to_string(&snap).unwrap()).unwrap();
    let cfg = &state["vm_config"];
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    assert_eq!(cfg["network-interfaces"][0]["host_dev_name"], "tap-a");
    assert_eq!(cfg["vsock"]["guest_cid"], 3);
    let meta = std::fs::metadata(&mem).unwrap();
    assert_eq!(meta.len(), 64 * 1024 * 1024);
    {
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < meta.len(), "memory file is sparse");
    }
    // Diff needs dirty page tracking.
    let d2 = double();
    boot(&d2).await;
    let (s, _) = call(&d2, "PATCH", "/vm", Some(json!({"state": "Paused"}))).await;
    assert_eq!(s, 204);
    let (s, b) = call(&d2, "PUT", "/snapshot/create", Some(json!({"snapshot_type": "Diff", "snapshot_path": d2.dir().join("s"), "mem_file_path": d2.dir().join("m")}))).await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "The requested operation is not supported: Diff snapshots are not allowed on uVMs with dirty page tracking disabled."
        )
    );
    assert!(!d2.dir().join("s").exists() && !d2.dir().join("m").exists());
    let (s, b) = call(&d2, "PUT", "/snapshot/create", Some(json!({"snapshot_path": d2.dir().join("no/such/dir/s"), "mem_file_path": d2.dir().join("m")}))).await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "Create snapshot error: Cannot perform open on the snapshot backing file: No such file or directory (os error 2)"
        )
    );
}

async fn make_snapshot(dir: &Path) -> (PathBuf, PathBuf) {
    let d = double();
    configured_and_paused(&d).await;
    let snap = dir.join("vm.snap");
    let mem = dir.join("vm.mem");
    let (s, b) = call(
        &d,
        "PUT",
        "/snapshot/create",
        Some(json!({"snapshot_path": snap, "mem_file_path": mem})),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    (snap, mem)
}

#[tokio::test]
async fn snapshot_load_applies_overrides_on_a_fresh_process() {
    let keep = tempfile::tempdir().unwrap();
    let (snap, mem) = make_snapshot(keep.path()).await;

    let d = double();
    let new_vsock = d.dir().join("restored-v.sock");
    // Logger and metrics do not count as boot configuration.
    let (s, _) = call(
        &d,
        "PUT",
        "/logger",
        Some(json!({"log_path": d.dir().join("l.log")})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = call(
        &d,
        "PUT",
        "/snapshot/load",
        Some(json!({
            "snapshot_path": snap, "mem_file_path": mem, "resume_vm": false,
            "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap-b"}],
            "vsock_override": {"uds_path": new_vsock},
        })),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(state(&d).await, "Paused");
    let (_, cfg) = call(&d, "GET", "/vm/config", None).await;
    assert_eq!(cfg["network-interfaces"][0]["host_dev_name"], "tap-b");
    assert_eq!(cfg["vsock"]["uds_path"], json!(new_vsock));
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    assert!(new_vsock.exists(), "vsock listens at the override path");
    let (s, _) = call(&d, "PATCH", "/vm", Some(json!({"state": "Resumed"}))).await;
    assert_eq!(s, 204);
    assert_eq!(state(&d).await, "Running");

    // Not on a process that was configured for boot.
    let d = double();
    let (s, _) = call(
        &d,
        "PUT",
        "/machine-config",
        Some(json!({"vcpu_count": 1, "mem_size_mib": 128})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = call(&d, "PUT", "/snapshot/load", Some(json!({"snapshot_path": snap, "mem_backend": {"backend_type": "File", "backend_path": mem}}))).await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources."
        )
    );
    assert_eq!(state(&d).await, "Not started");
}

#[tokio::test]
async fn failed_restores_answer_then_end_the_process() {
    let keep = tempfile::tempdir().unwrap();
    let (snap, mem) = make_snapshot(keep.path()).await;
    let restore = "Load snapshot error: Failed to restore from snapshot";
    let cases = [
        (
            json!({"snapshot_path": snap, "mem_file_path": mem, "network_overrides": [{"iface_id": "eth9", "host_dev_name": "x"}]}),
            format!("{restore}: Failed to get snapshot state from file: Unknown Network Device."),
        ),
        (
            json!({"snapshot_path": keep.path().join("nope"), "mem_file_path": mem}),
            format!(
                "{restore}: Failed to get snapshot state from file: Failed to open snapshot file: No such file or directory (os error 2)"
            ),
        ),
        (
            json!({"snapshot_path": snap, "mem_backend": {"backend_type": "File", "backend_path": keep.path().join("nomem")}}),
            format!(
                "{restore}: Failed to load guest memory: Error creating guest memory from file: Failed to load guest memory: No such file or directory (os error 2)"
            ),
        ),
    ];
    for (body, want) in cases {
        let mut d = double();
        let (s, b) = call(&d, "PUT", "/snapshot/load", Some(body)).await;
        assert_eq!((s, fault(&b)), (400, want));
        assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(Some(152)));
        assert!(!d.socket_path().exists());
    }
}

#[tokio::test]
async fn ctrl_alt_del_exits_unless_ignored() {
    let mut d = double();
    let (s, b) = call(
        &d,
        "PUT",
        "/actions",
        Some(json!({"action_type": "SendCtrlAltDel"})),
    )
    .await;
    assert_eq!((s, fault(&b).as_str()), (400, common::PRE_BOOT));
    boot(&d).await;
    let (s, _) = call(
        &d,
        "PUT",
        "/actions",
        Some(json!({"action_type": "SendCtrlAltDel"})),
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(Some(0)));
    assert!(!d.socket_path().exists(), "socket removed on exit");

    for options in [
        FcDoubleOptions {
            ignore_ctrl_alt_del: true,
            ..Default::default()
        },
        env(&[("FC_DOUBLE_IGNORE_CTRL_ALT_DEL", "1")]),
    ] {
        let mut d = FcDouble::spawn(options);
        boot(&d).await;
        let (s, _) = call(
            &d,
            "PUT",
            "/actions",
            Some(json!({"action_type": "SendCtrlAltDel"})),
        )
        .await;
        assert_eq!(s, 204);
        // Still answering after the request that would have ended it.
        assert_eq!(state(&d).await, "Running");
        assert_eq!(d.wait_exit(Duration::from_millis(300)), None);
        assert_eq!(state(&d).await, "Running");
    }
}

/// A Unix echo server standing in for a guest service; returns its path.
fn echo_server(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    path
}

fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

async fn vsock_double(options: FcDoubleOptions) -> (FcDouble, PathBuf) {
    let d = FcDouble::spawn(options);
    let uds = d.dir().join("v.sock");
    let (s, _) = call(
        &d,
        "PUT",
        "/vsock",
        Some(json!({"guest_cid": 3, "uds_path": uds})),
    )
    .await;
    assert_eq!(s, 204);
    boot(&d).await;
    (d, uds)
}

fn check_splice(uds: &Path, port: u32) {
    let mut conn = UnixStream::connect(uds).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // CONNECT line and payload in one write: the double must not swallow the payload.
    conn.write_all(format!("CONNECT {port}\nhello").as_bytes())
        .unwrap();
    let ok = read_line(&mut conn);
    assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "{ok:?}");
    let n: u32 = ok[3..].trim().parse().unwrap();
    assert!(n >= 1 << 30, "{n}");
    let mut got = [0u8; 5];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = conn.try_clone().unwrap();
    let sent = big.clone();
    let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut back = vec![0u8; big.len()];
    conn.read_exact(&mut back).unwrap();
    t.join().unwrap();
    assert_eq!(back, big);
}

#[tokio::test]
async fn vsock_connect_is_spliced_to_the_chosen_socket() {
    let services = tempfile::tempdir().unwrap();
    let echo = echo_server(services.path(), "echo.sock");
    let dead = services.path().join("dead.sock");
    drop(UnixListener::bind(&dead).unwrap()); // exists, refuses connections
    let (d, uds) = vsock_double(FcDoubleOptions {
        vsock_ports: vec![(1024, echo.clone()), (1025, dead)],
        ..Default::default()
    })
    .await;
    check_splice(&uds, 1024);
    check_splice(&uds, 1024);
    // Unknown port and refused target: closed with nothing written.
    for line in ["CONNECT 9999\n", "CONNECT 1025\n", "HELLO\n"] {
        let mut conn = UnixStream::connect(&uds).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(line.as_bytes()).unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{line:?} got {rest:?}");
    }
    drop(d);

    // Same through the environment variable a library-spawned double would see.
    let (_d, uds) = vsock_double(env(&[(
        "FC_DOUBLE_VSOCK_PORTS",
        &format!("7000={},7001=/nonexistent.sock", echo.display()),
    )]))
    .await;
    check_splice(&uds, 7000);
}

#[tokio::test]
async fn env_switch_fail_start() {
    let d = FcDouble::spawn(env(&[("FC_DOUBLE_FAIL_START", "1")]));
    let k = common::kernel(&d);
    let (s, _) = call(
        &d,
        "PUT",
        "/boot-source",
        Some(json!({"kernel_image_path": k})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = call(
        &d,
        "PUT",
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(fault(&b).starts_with("Start microvm error: "), "{b}");
    assert_eq!(state(&d).await, "Not started");
    assert!(
        d.stderr().contains("FC_DOUBLE_FAIL_START"),
        "{}",
        d.stderr()
    );
}

#[tokio::test]
async fn env_switch_exit_after_start_simulates_a_crash() {
    let mut d = FcDouble::spawn(env(&[("FC_DOUBLE_EXIT_AFTER_START", "1")]));
    boot(&d).await;
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(Some(1)));
    assert!(d.socket_path().exists(), "a crash leaves the socket behind");
}

#[tokio::test]
async fn env_switch_api_silent_never_answers() {
    let d = FcDouble::spawn(env(&[("FC_DOUBLE_API_SILENT", "1")]));
    let mut conn = UnixStream::connect(d.socket_path()).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 16];
    let err = conn.read(&mut buf).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
}

/// Milliseconds since midnight of a Firecracker log line's timestamp.
fn log_ms(line: &str) -> u64 {
    let time = &line[11..29]; // HH:MM:SS.nnnnnnnnn
    let h: u64 = time[0..2].parse().unwrap();
    let m: u64 = time[3..5].parse().unwrap();
    let s: u64 = time[6..8].parse().unwrap();
    let ns: u64 = time[9..18].parse().unwrap();
    ((h * 60 + m) * 60 + s) * 1000 + ns / 1_000_000
}

#[tokio::test]
async fn env_switch_request_log_and_socket_delay() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let log = dir.path().join("req.jsonl");
    let stderr = dir.path().join("stderr");
    let mut child = Command::new(fc_double_path())
        .arg("--api-sock")
        .arg(&sock)
        .env("FC_DOUBLE_REQUEST_LOG", &log)
        .env("FC_DOUBLE_SOCKET_DELAY_MS", "1000")
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (s, _) = flick_testkit::raw_request(&sock, "GET", "/version", None).await;
    assert_eq!(s, 200);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.trim(),
        r#"{"body":null,"method":"GET","path":"/version","status":200}"#
    );
    // The socket came up no earlier than the delay after start.
    let err = std::fs::read_to_string(&stderr).unwrap();
    let running = err
        .lines()
        .find(|l| l.ends_with("Running Firecracker v1.16.1"))
        .unwrap();
    let listening = err
        .lines()
        .find(|l| l.contains("Listening on API socket"))
        .unwrap();
    let waited = (log_ms(listening) + 86_400_000 - log_ms(running)) % 86_400_000;
    assert!(waited >= 1000, "socket appeared after {waited} ms:\n{err}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn version_flag_prints_like_firecracker() {
    let out = Command::new(fc_double_path())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Firecracker v1.16.1"
    );
}

#[test]
fn missing_api_sock_is_a_usage_error() {
    let out = Command::new(fc_double_path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-sock"));
}

#[tokio::test]
async fn stale_socket_is_replaced_and_firecracker_flags_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    std::fs::write(&sock, b"stale").unwrap();
    let meta = dir.path().join("meta.json");
    std::fs::write(&meta, r#"{"latest": {"k": "v"}}"#).unwrap();
    let mut child = Command::new(fc_double_path())
        .args(["--api-sock"])
        .arg(&sock)
        .args([
            "--id",
            "flags_vm",
            "--level",
            "Debug",
            "--show-level",
            "--show-log-origin",
            "--boot-timer",
            "--no-seccomp",
            "--seccomp-filter",
            "/dev/null",
            "--http-api-max-payload-size",
            "51200",
            "--mmds-size-limit",
            "51200",
            "--start-time-us",
            "1",
            "--start-time-cpu-us",
            "2",
            "--parent-cpu-time-us",
            "3",
        ])
        .arg("--metadata")
        .arg(&meta)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if std::fs::metadata(&sock).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "socket never replaced");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (s, b) = flick_testkit::raw_request(&sock, "GET", "/mmds", None).await;
    assert_eq!((s, b.as_str()), (200, r#"{"latest":{"k":"v"}}"#));
    // SIGTERM ends it and removes the socket.
    // SAFETY: kill(2) on the pid of our own child process.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!sock.exists());
}

#[tokio::test]
async fn config_file_configures_and_boots() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF").unwrap();
    let root = dir.path().join("root.img");
    std::fs::write(&root, [0u8; 512]).unwrap();
    let config = dir.path().join("vm.json");
    std::fs::write(&config, json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
        "drives": [{"drive_id": "rootfs", "path_on_host": root, "is_root_device": true, "is_read_only": false}],
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
        "mmds-config": {"network_interfaces": ["eth0"]},
        "cpu-config": dir.path().join("template.json"),
    }).to_string()).unwrap();
    std::fs::write(
        dir.path().join("template.json"),
        r#"{"kvm_capabilities": ["!56"]}"#,
    )
    .unwrap();
    let d = FcDouble::spawn(FcDoubleOptions {
        extra_args: vec!["--config-file".into(), config.display().to_string()],
        ..Default::default()
    });
    assert_eq!(state(&d).await, "Running");
    let (_, cfg) = call(&d, "GET", "/vm/config", None).await;
    assert_eq!(cfg["machine-config"]["vcpu_count"], 2);
    assert_eq!(cfg["boot-source"]["boot_args"], "console=ttyS0");
    assert_eq!(cfg["mmds-config"]["network_interfaces"], json!(["eth0"]));
    assert_eq!(cfg["cpu-config"], json!({"kvm_capabilities": ["!56"]}));

    // --no-api: no socket, still running until a signal.
    let sock = dir.path().join("never.sock");
    let mut child = Command::new(fc_double_path())
        .arg("--api-sock")
        .arg(&sock)
        .arg("--no-api")
        .arg("--config-file")
        .arg(&config)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    assert!(!sock.exists());
    child.kill().unwrap();
    child.wait().unwrap();

    // A broken configuration ends the process with Firecracker's bad-configuration status.
    std::fs::write(
        &config,
        json!({"boot-source": {"kernel_image_path": dir.path().join("none")}}).to_string(),
    )
    .unwrap();
    let out = Command::new(fc_double_path())
        .arg("--api-sock")
        .arg(dir.path().join("bad.sock"))
        .arg("--config-file")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(152));
    assert!(
        !dir.path().join("bad.sock").exists(),
        "no socket left behind"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("The kernel file cannot be opened"));
}

#[tokio::test]
async fn vsock_connections_wait_until_the_microvm_runs() {
    let services = tempfile::tempdir().unwrap();
    let echo = echo_server(services.path(), "echo.sock");
    let d = FcDouble::spawn(FcDoubleOptions {
        vsock_ports: vec![(52, echo)],
        ..Default::default()
    });
    let uds = d.dir().join("v.sock");
    let (s, _) = call(
        &d,
        "PUT",
        "/vsock",
        Some(json!({"guest_cid": 3, "uds_path": uds})),
    )
    .await;
    assert_eq!(s, 204);
    let pending = |uds: &Path| {
        let mut conn = UnixStream::connect(uds).unwrap();
        conn.write_all(b"CONNECT 52\n").unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        let err = conn.read(&mut byte).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn
    };
    // Before boot: no answer yet; the same connection is served once the microVM runs.
    let mut early = pending(&uds);
    boot(&d).await;
    assert!(read_line(&mut early).starts_with("OK "));
    early.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    early.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    // Paused: waits again until resumed.
    let (s, _) = call(&d, "PATCH", "/vm", Some(json!({"state": "Paused"}))).await;
    assert_eq!(s, 204);
    let mut paused = pending(&uds);
    let (s, _) = call(&d, "PATCH", "/vm", Some(json!({"state": "Resumed"}))).await;
    assert_eq!(s, 204);
    assert!(read_line(&mut paused).starts_with("OK "));
}

#[tokio::test]
async fn snapshot_load_with_a_uffd_backend_needs_its_socket() {
    let keep = tempfile::tempdir().unwrap();
    let (snap, _mem) = make_snapshot(keep.path()).await;
    let uffd = keep.path().join("uffd.sock");
    let _listener = UnixListener::bind(&uffd).unwrap();
    let d = double();
    let (s, b) = call(&d, "PUT", "/snapshot/load", Some(json!({"snapshot_path": snap, "mem_backend": {"backend_type": "Uffd", "backend_path": uffd}, "resume_vm": true,
        // The snapshot's vsock socket lived in a directory that is gone: restore needs a new one.
        "vsock_override": {"uds_path": keep.path().join("v2.sock")}}))).await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(state(&d).await, "Running");

    let mut d = double();
    let (s, b) = call(&d, "PUT", "/snapshot/load", Some(json!({"snapshot_path": snap, "mem_backend": {"backend_type": "Uffd", "backend_path": keep.path().join("none.sock")}}))).await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "Load snapshot error: Failed to restore from snapshot: Failed to load guest memory: Error creating guest memory from uffd: Failed to connect to UDS Unix stream: No such file or directory (os error 2)"
        )
    );
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(Some(152)));
}

#[tokio::test]
async fn options_as_environment_drive_a_double_spawned_by_someone_else() {
    let services = tempfile::tempdir().unwrap();
    let echo = echo_server(services.path(), "echo.sock");
    let options = FcDoubleOptions {
        vsock_ports: vec![(1024, echo)],
        ignore_ctrl_alt_del: true,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let log = dir.path().join("req.jsonl");
    // What a library does: spawn the binary with its own arguments, inheriting the environment.
    let mut child = Command::new(fc_double_path())
        .arg("--api-sock")
        .arg(&sock)
        .envs(options.env_vars(Some(&log)))
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"k").unwrap();
    let uds = dir.path().join("v.sock");
    for (method, path, body) in [
        ("PUT", "/vsock", json!({"guest_cid": 3, "uds_path": uds})),
        ("PUT", "/boot-source", json!({"kernel_image_path": kernel})),
        ("PUT", "/actions", json!({"action_type": "InstanceStart"})),
        ("PUT", "/actions", json!({"action_type": "SendCtrlAltDel"})),
    ] {
        let (s, b) = flick_testkit::raw_request(&sock, method, path, Some(&body.to_string())).await;
        assert_eq!(s, 204, "{method} {path}: {b}");
    }
    check_splice(&uds, 1024);
    assert!(
        child.try_wait().unwrap().is_none(),
        "Ctrl+Alt+Del was ignored"
    );
    let logged: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let paths: Vec<&str> = logged.iter().map(|v| v["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/vsock", "/boot-source", "/actions", "/actions"]);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn dropping_a_double_leaves_no_socket_behind() {
    let outside = tempfile::tempdir().unwrap();
    let uds = outside.path().join("v.sock");
    let d = double();
    let api = d.socket_path().to_path_buf();
    let (s, _) = call(
        &d,
        "PUT",
        "/vsock",
        Some(json!({"guest_cid": 3, "uds_path": uds})),
    )
    .await;
    assert_eq!(s, 204);
    assert!(uds.exists());
    let pid = d.pid();
    drop(d);
    assert!(
        !uds.exists(),
        "vsock socket outside the double's directory is removed"
    );
    assert!(!api.exists());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process reaped"
    );
}
