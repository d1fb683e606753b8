//! `Host::install_signal_cleanup`: a program holding VMs gets SIGTERM (or SIGINT) and every
//! Firecracker process, runtime dir, jail and cgroup it made is gone when it exits with 143
//! (130).
//!
//! The test re-executes its own binary as the program under test (`--child <dir> <vms>`): the
//! child starts VMs against the Firecracker double (one of them through the jailer double),
//! installs the handler, writes what it made to `<dir>/ready.json` and waits. The parent checks
//! that everything exists, sends the signal and checks that everything is gone.
//! `harness = false`: the binary's own `main` picks the role.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flick::config::{VmConfig, Vsock};
use flick::host::{FirecrackerBinary, Host, HostOptions};
use flick::process::ProcessIdentity;
use flick::vm::{CpuMax, JailerOptions};
use serde_json::{Value, json};

const FC_ENV: &str = "FLICK_SIGNAL_TEST_FC";
const JAILER_ENV: &str = "FLICK_SIGNAL_TEST_JAILER";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let dir = PathBuf::from(&args[pos + 1]);
        let vms: usize = args[pos + 2].parse().expect("VM count");
        child(&dir, vms);
        return;
    }
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (the jailed VM chroots and switches uid)"
    );
    parent(rustix::process::Signal::TERM, 143, 3);
    parent(rustix::process::Signal::INT, 130, 1);
    println!("signal_cleanup: 2 scenarios passed");
}

fn options(dir: &Path) -> HostOptions {
    let fc = PathBuf::from(std::env::var_os(FC_ENV).expect("firecracker double path"));
    let mut o = HostOptions::new(dir.join("data"), FirecrackerBinary::Path(fc));
    o.runtime_dir = Some(dir.join("runtime"));
    o.firecracker_env.push((
        "JAILER_DOUBLE_CGROUP_ROOT".into(),
        dir.join("cgroup").into(),
    ));
    o
}

fn jailer(dir: &Path) -> JailerOptions {
    let bin = PathBuf::from(std::env::var_os(JAILER_ENV).expect("jailer double path"));
    let mut j = JailerOptions::new(bin, 4242, 4242);
    j.chroot_base_dir = Some(dir.join("jail"));
    j.cgroup_root = Some(dir.join("cgroup"));
    j.cpu_max = Some(CpuMax::cpus(1.0));
    j
}

/// The program under test.
fn child(dir: &Path, vms: usize) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let host = Arc::new(Host::new(options(dir)).expect("host"));
        let _handler = host.install_signal_cleanup();
        let config = VmConfig::new(dir.join("vmlinux"), dir.join("rootfs.img"))
            .with_memory_mib(128)
            .with_vsock(Vsock::new(3));
        let mut made = Vec::new();
        for i in 0..vms {
            // The first VM runs through the jailer.
            let vm = if i == 0 {
                host.create_vm_with_jailer(format!("vm-{i}"), config.clone(), Some(jailer(dir)))
                    .await
            } else {
                host.create_vm(format!("vm-{i}"), config.clone()).await
            }
            .expect("create");
            vm.start().await.expect("start");
            let status = vm.status().await;
            made.push(json!({
                "process": status.process.expect("running VM has a process"),
                "runtime_dir": status.runtime_dir.expect("started VM has a runtime dir"),
            }));
        }
        let tmp = dir.join("ready.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&made).unwrap()).unwrap();
        std::fs::rename(&tmp, dir.join("ready.json")).unwrap();
        std::future::pending::<()>().await;
    });
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the program did not exit within {timeout:?} after the signal");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn parent(signal: rustix::process::Signal, expected_code: i32, vms: usize) {
    let dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs temp dir");
    std::fs::write(dir.path().join("vmlinux"), b"kernel").unwrap();
    std::fs::write(dir.path().join("rootfs.img"), vec![1u8; 65536]).unwrap();
    std::fs::create_dir(dir.path().join("cgroup")).unwrap();
    // The jailer only execs a file whose name contains "firecracker".
    let fc = dir.path().join("firecracker");
    std::fs::copy(flick_testkit::fc_double_path(), &fc).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--child")
        .arg(dir.path())
        .arg(vms.to_string())
        .env(FC_ENV, &fc)
        .env(JAILER_ENV, flick_testkit::jailer_double_path())
        .spawn()
        .expect("spawning the program under test");

    let ready = dir.path().join("ready.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the program exited before its VMs were up: {status}");
        }
        assert!(Instant::now() < deadline, "VMs never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
    let made: Vec<Value> = serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
    assert_eq!(made.len(), vms);
    let processes: Vec<ProcessIdentity> = made
        .iter()
        .map(|m| serde_json::from_value(m["process"].clone()).unwrap())
        .collect();
    let dirs: Vec<PathBuf> = made
        .iter()
        .map(|m| PathBuf::from(m["runtime_dir"].as_str().unwrap()))
        .collect();
    for (p, d) in processes.iter().zip(&dirs) {
        assert!(p.is_alive(), "{p:?} should run before the signal");
        assert!(d.exists(), "{} should exist before the signal", d.display());
    }
    let jail = dir.path().join("jail/firecracker/vm-0");
    let cgroup = dir.path().join("cgroup/firecracker/vm-0");
    assert!(jail.exists() && cgroup.exists());

    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(30)),
        Some(expected_code)
    );

    for p in &processes {
        assert!(!p.is_alive(), "{p:?} survived the signal");
    }
    for d in &dirs {
        assert!(!d.exists(), "{} survived the signal", d.display());
    }
    assert!(!jail.exists(), "jail survived the signal");
    assert!(!cgroup.exists(), "cgroup survived the signal");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("runtime"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "jailer")
        .collect();
    assert!(left.is_empty(), "runtime root still holds {left:?}");
}
