//! VMs run through Firecracker's jailer, against the jailer double (`jailer-double`, which
//! builds the real jail and cgroup layout, chroots, drops to uid:gid, daemonizes, unshares a pid
//! namespace and execs the Firecracker double inside the jail). Real processes, real sockets,
//! real files on tmpfs. The cgroup root is a plain directory given to the double through
//! `JAILER_DOUBLE_CGROUP_ROOT` (this host has no cgroup v2 hierarchy with cpu and memory
//! controllers). Needs root (chroot, mknod, uid switch).

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flick::ErrorCode;
use flick::api::models::InstanceState;
use flick::config::{Drive, Logger, VmConfig, Vsock};
use flick::host::{FirecrackerBinary, Host, HostOptions};
use flick::vm::{CpuMax, JailerOptions, SnapshotKind, SnapshotOptions, StopOutcome, VmState};
use serde_json::Value;

const UID: u32 = 4242;
const GID: u32 = 4343;

struct Fixture {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    rootfs: PathBuf,
    data: PathBuf,
    firecracker: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "the jailer tests need root (chroot, mknod, switching uid)"
        );
        let dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs temp dir");
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"not a real kernel: the double only opens it").unwrap();
        std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
        let rootfs = dir.path().join("rootfs.ext4");
        let f = std::fs::File::create(&rootfs).unwrap();
        f.set_len(256 << 20).unwrap();
        f.write_all_at(&[7u8; 1 << 20], 64 << 20).unwrap();
        // Readable by root only: the jailed user cannot read it, so it must be copied.
        let data = dir.path().join("data.img");
        std::fs::write(&data, vec![3u8; 8192]).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The jailer only execs a file whose name contains "firecracker".
        let firecracker = dir.path().join("firecracker");
        std::fs::copy(flick_testkit::fc_double_path(), &firecracker).unwrap();
        std::fs::create_dir(dir.path().join("cgroup")).unwrap();
        Self {
            dir,
            kernel,
            rootfs,
            data,
            firecracker,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn jailer(&self) -> JailerOptions {
        let mut j = JailerOptions::new(flick_testkit::jailer_double_path(), UID, GID);
        j.chroot_base_dir = Some(self.path("jail"));
        j.cgroup_root = Some(self.path("cgroup"));
        j.cpu_max = Some(CpuMax::cpus(0.5));
        j.memory_max = Some(256 << 20);
        j
    }

    fn options(&self, jailer: Option<JailerOptions>, fc_args: &[&str]) -> HostOptions {
        let mut o = HostOptions::new(
            self.path("data"),
            FirecrackerBinary::Path(self.firecracker.clone()),
        );
        o.runtime_dir = Some(self.path("runtime"));
        o.stop_grace = Duration::from_secs(2);
        o.jailer = jailer;
        // The jailer clears the environment: Firecracker (double) switches go as arguments.
        o.firecracker_args = ["--request-log", "/requests.jsonl"]
            .iter()
            .chain(fc_args)
            .map(Into::into)
            .collect();
        o.firecracker_env.push((
            "JAILER_DOUBLE_CGROUP_ROOT".into(),
            self.path("cgroup").into(),
        ));
        o
    }

    fn config(&self) -> VmConfig {
        VmConfig::new(&self.kernel, &self.rootfs)
            .with_boot_args("console=ttyS0 reboot=k panic=1")
            .with_memory_mib(128)
            .with_vsock(Vsock::new(3))
            .with_drive(Drive::new("data", &self.data).read_only())
    }

    fn instance_dir(&self, id: &str) -> PathBuf {
        self.path("jail").join("firecracker").join(id)
    }

    fn cgroup_dir(&self, id: &str) -> PathBuf {
        self.path("cgroup").join("firecracker").join(id)
    }
}

fn requests(chroot: &Path) -> Vec<Value> {
    std::fs::read_to_string(chroot.join("requests.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("request log line"))
        .collect()
}

fn body_of(requests: &[Value], method: &str, path: &str) -> Value {
    requests
        .iter()
        .find(|r| r["method"] == method && r["path"] == path)
        .unwrap_or_else(|| panic!("no {method} {path} in {requests:#?}"))["body"]
        .clone()
}

fn proc_status(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

fn status_field(pid: i32, name: &str) -> Vec<String> {
    proc_status(pid)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let state = status_field(*pid, "State");
            String::from_utf8_lossy(&cmdline).contains(needle)
                && state.first().is_some_and(|s| s != "Z")
        })
        .collect()
}

async fn wait_gone(pid: i32) {
    for _ in 0..500 {
        let state = status_field(pid, "State");
        if state.is_empty() || state[0] == "Z" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("process {pid} still alive: {}", proc_status(pid));
}

#[tokio::test]
async fn jailed_lifecycle_start_pause_snapshot_resume_stop_and_cleanup() {
    let fx = Fixture::new();
    let host = Host::new(fx.options(Some(fx.jailer()), &[])).unwrap();
    let vm = host.create_vm("vm-1", fx.config()).await.unwrap();
    vm.start().await.unwrap();
    assert_eq!(vm.state(), VmState::Running);

    // The jail root is the runtime dir, and holds the API socket Firecracker made.
    let chroot = fx.instance_dir("vm-1").join("root");
    assert_eq!(vm.runtime_dir().await.unwrap(), chroot);
    assert!(chroot.join("firecracker.sock").exists());
    assert!(chroot.join("firecracker").is_file(), "exec file copied in");
    assert!(chroot.join("dev/kvm").exists() && chroot.join("dev/net/tun").exists());

    // The supervised process is Firecracker itself, not the jailer flick spawned: it runs as
    // uid:gid, as init of its own pid namespace, and is not flick's child (daemonized).
    let status = vm.status().await;
    let pid = status.process.unwrap().pid;
    assert_eq!(status_field(pid, "Uid")[0], UID.to_string());
    assert_eq!(status_field(pid, "Gid")[0], GID.to_string());
    assert_eq!(
        status_field(pid, "NSpid").last().unwrap(),
        "1",
        "{}",
        proc_status(pid)
    );
    assert_ne!(status_field(pid, "PPid")[0], std::process::id().to_string());
    assert_eq!(
        std::fs::read_to_string(chroot.join("firecracker.pid")).unwrap(),
        pid.to_string()
    );

    // Kernel hard-linked; root drive staged sparse and given to the jailed user; the data
    // drive (unreadable for that user) copied and given to it.
    let kernel = std::fs::metadata(chroot.join("boot/kernel")).unwrap();
    assert_eq!(kernel.ino(), std::fs::metadata(&fx.kernel).unwrap().ino());
    let rootfs = std::fs::metadata(chroot.join("drives/rootfs.img")).unwrap();
    assert_ne!(rootfs.ino(), std::fs::metadata(&fx.rootfs).unwrap().ino());
    assert_eq!((rootfs.uid(), rootfs.gid()), (UID, GID));
    assert!(
        rootfs.blocks() * 512 <= 2 << 20,
        "staged sparse: {}",
        rootfs.blocks()
    );
    let data = std::fs::metadata(chroot.join("drives/data.img")).unwrap();
    assert_ne!(data.ino(), std::fs::metadata(&fx.data).unwrap().ino());
    assert_eq!(data.uid(), UID);
    assert_eq!(
        std::fs::read(chroot.join("drives/data.img")).unwrap(),
        vec![3u8; 8192]
    );

    // Firecracker only ever received jail-relative paths.
    let log = requests(&chroot);
    let boot = body_of(&log, "PUT", "/boot-source");
    assert_eq!(boot["kernel_image_path"], "/boot/kernel");
    assert_eq!(
        body_of(&log, "PUT", "/drives/rootfs")["path_on_host"],
        "/drives/rootfs.img"
    );
    assert_eq!(
        body_of(&log, "PUT", "/drives/data")["path_on_host"],
        "/drives/data.img"
    );
    assert_eq!(body_of(&log, "PUT", "/vsock")["uds_path"], "/vsock.sock");
    let everything = serde_json::to_string(&log).unwrap();
    assert!(
        !everything.contains(fx.dir.path().to_str().unwrap()),
        "a host path reached Firecracker: {everything}"
    );

    // The cgroup with its limits.
    let cgroup = fx.cgroup_dir("vm-1");
    assert_eq!(
        std::fs::read_to_string(cgroup.join("cpu.max")).unwrap(),
        "50000 100000\n"
    );
    assert_eq!(
        std::fs::read_to_string(cgroup.join("memory.max")).unwrap(),
        format!("{}\n", 256 << 20)
    );
    assert!(
        !std::fs::read_to_string(cgroup.join("cgroup.procs"))
            .unwrap()
            .trim()
            .is_empty()
    );

    vm.pause().await.unwrap();
    assert_eq!(vm.info().await.unwrap().state, InstanceState::Paused);
    let snap_dir = fx.path("snapshots/s1");
    let snapshot = vm
        .create_snapshot(&SnapshotOptions {
            dir: snap_dir.clone(),
            kind: SnapshotKind::Full,
        })
        .await
        .unwrap();
    assert!(snapshot.state_path.starts_with(&snap_dir) && snapshot.state_path.is_file());
    assert!(snapshot.mem_path.is_file());
    assert!(
        !chroot.join("snapshot").exists(),
        "nothing left in the jail"
    );
    let created = body_of(&requests(&chroot), "PUT", "/snapshot/create");
    assert_eq!(created["snapshot_path"], "/snapshot/vm.snap");
    assert_eq!(created["mem_file_path"], "/snapshot/vm.mem");

    vm.resume().await.unwrap();
    assert_eq!(vm.info().await.unwrap().state, InstanceState::Running);
    let outcome = vm.stop().await.unwrap();
    assert_eq!(outcome, StopOutcome::Graceful);
    wait_gone(pid).await;
    assert!(chroot.exists(), "stop keeps the jail for inspection");

    host.cleanup().await.unwrap();
    assert!(!fx.instance_dir("vm-1").exists(), "jail removed");
    assert!(!cgroup.exists(), "cgroup removed");
    assert!(fx.kernel.exists() && fx.rootfs.exists() && fx.data.exists());
    assert!(
        snap_dir.join("vm.snap").exists(),
        "snapshots are the caller's"
    );
}

#[tokio::test]
async fn without_daemonize_the_jailer_becomes_firecracker_and_per_vm_choice_works() {
    let fx = Fixture::new();
    // A host without a jailer; one VM jailed, one not.
    let host = Host::new(fx.options(None, &[])).unwrap();
    let mut jailer = fx.jailer();
    jailer.daemonize = false;
    jailer.new_pid_ns = false;
    jailer.cpu_max = None;
    jailer.memory_max = None;
    let jailed = host
        .create_vm_with_jailer("jailed", fx.config(), Some(jailer))
        .await
        .unwrap();
    let plain = host.create_vm("plain", fx.config()).await.unwrap();
    jailed.start().await.unwrap();
    plain.start().await.unwrap();

    let pid = jailed.status().await.process.unwrap().pid;
    // Our own child (no daemon), in our pid namespace, but as the jailed user.
    assert_eq!(status_field(pid, "PPid")[0], std::process::id().to_string());
    assert_eq!(status_field(pid, "NSpid").len(), 1);
    assert_eq!(status_field(pid, "Uid")[0], UID.to_string());
    assert!(
        !fx.path("cgroup/firecracker").exists(),
        "no limits, no cgroup"
    );
    let plain_dir = plain.runtime_dir().await.unwrap();
    assert!(
        plain_dir.starts_with(fx.path("runtime")),
        "{}",
        plain_dir.display()
    );

    jailed.kill().await.unwrap();
    assert_eq!(jailed.state(), VmState::Stopped);
    wait_gone(pid).await;
    host.remove_vm("jailed").await.unwrap();
    assert!(!fx.instance_dir("jailed").exists());
    host.cleanup().await.unwrap();
    assert!(!plain_dir.exists());
}

#[tokio::test]
async fn files_on_another_filesystem_are_copied_into_the_jail() {
    let fx = Fixture::new();
    // The target dir is on disk, not on the jail's tmpfs: no hard link is possible.
    let elsewhere = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let initrd = elsewhere.path().join("initrd.cpio");
    std::fs::write(&initrd, b"initrd bytes").unwrap();
    std::fs::set_permissions(&initrd, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_ne!(
        std::fs::metadata(&initrd).unwrap().dev(),
        std::fs::metadata(fx.dir.path()).unwrap().dev(),
        "precondition: {} must be on another filesystem than /dev/shm",
        elsewhere.path().display()
    );
    let host = Host::new(fx.options(Some(fx.jailer()), &[])).unwrap();
    let vm = host
        .create_vm("vm-initrd", fx.config().with_initrd(&initrd))
        .await
        .unwrap();
    vm.start().await.unwrap();
    let chroot = vm.runtime_dir().await.unwrap();
    let copied = chroot.join("boot/initrd");
    assert_eq!(std::fs::read(&copied).unwrap(), b"initrd bytes");
    assert_eq!(std::fs::metadata(&copied).unwrap().uid(), UID);
    assert_eq!(
        body_of(&requests(&chroot), "PUT", "/boot-source")["initrd_path"],
        "/boot/initrd"
    );
    host.cleanup().await.unwrap();
    assert!(!fx.instance_dir("vm-initrd").exists());
    assert_eq!(
        std::fs::read(&initrd).unwrap(),
        b"initrd bytes",
        "source kept"
    );
}

#[tokio::test]
async fn a_failed_start_leaves_no_jail_cgroup_or_process() {
    let fx = Fixture::new();
    let id = format!("failing-{}", std::process::id());
    // Firecracker fails InstanceStart.
    let host = Host::new(fx.options(Some(fx.jailer()), &["--fail-start"])).unwrap();
    let vm = host.create_vm(id.clone(), fx.config()).await.unwrap();
    let err = vm.start().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StartFailed);
    assert_eq!(vm.state(), VmState::Error);
    assert!(!fx.instance_dir(&id).exists(), "jail removed");
    assert!(!fx.cgroup_dir(&id).exists(), "cgroup removed");
    assert!(
        processes_mentioning(&id).is_empty(),
        "{:?}",
        processes_mentioning(&id)
    );

    // The jailer itself fails (the netns handle is not a namespace): its output is in the error.
    let not_a_netns = fx.path("not-a-netns");
    std::fs::write(&not_a_netns, "").unwrap();
    let mut jailer = fx.jailer();
    jailer.netns = Some(not_a_netns);
    let id2 = format!("{id}-netns");
    let vm = host
        .create_vm_with_jailer(id2.clone(), fx.config(), Some(jailer))
        .await
        .unwrap();
    let err = vm.start().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StartFailed);
    let tail = err.details().unwrap()["firecracker_log_tail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(tail.contains("network namespace"), "{tail}");
    assert!(!fx.instance_dir(&id2).exists());
    assert!(processes_mentioning(&id2).is_empty());
    host.cleanup().await.unwrap();
    let left: Vec<_> = std::fs::read_dir(fx.path("jail/firecracker"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn bad_jailer_options_are_invalid_config_and_create_nothing() {
    let fx = Fixture::new();
    let mut bad = fx.jailer();
    bad.chroot_base_dir = Some("relative/jail".into());
    bad.memory_max = Some(0);
    bad.parent_cgroup = Some("../escape".into());
    let err = Host::new(fx.options(Some(bad.clone()), &[])).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidConfig);
    let problems = err.details().unwrap()["problems"].as_array().unwrap().len();
    assert_eq!(problems, 3, "{:?}", err.details());

    // The exec file's name must contain "firecracker" (as the jailer demands).
    let mut options = fx.options(Some(fx.jailer()), &[]);
    options.firecracker = FirecrackerBinary::Path(flick_testkit::fc_double_path());
    assert_eq!(
        Host::new(options).unwrap_err().code(),
        ErrorCode::InvalidConfig
    );

    // Per VM: bad options, and a config naming host paths a jailed Firecracker cannot open.
    let host = Host::new(fx.options(None, &[])).unwrap();
    let err = host
        .create_vm_with_jailer("bad", fx.config(), Some(bad))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidConfig);
    let err = host
        .create_vm_with_jailer(
            "bad2",
            fx.config().with_logger(Logger {
                log_path: Some(fx.path("fc.log")),
                ..Logger::default()
            }),
            Some(fx.jailer()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidConfig);
    assert_eq!(host.vm_count(), 0);

    assert!(!fx.path("jail").exists(), "no chroot base created");
    assert!(
        std::fs::read_dir(fx.path("cgroup"))
            .unwrap()
            .next()
            .is_none()
    );
    host.cleanup().await.unwrap();
}

#[test]
fn the_jailer_double_rejects_what_the_jailer_rejects() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.path("jail")).unwrap();
    let run = |args: &[&str]| {
        Command::new(flick_testkit::jailer_double_path())
            .args(args)
            .output()
            .unwrap()
    };
    let fc = fx.firecracker.to_str().unwrap().to_string();
    let base = fx.path("jail").to_str().unwrap().to_string();
    let common = |id: &str, exec: &str| {
        vec![
            "--id".to_string(),
            id.to_string(),
            "--exec-file".into(),
            exec.to_string(),
            "--uid".into(),
            "1".into(),
            "--gid".into(),
            "1".into(),
            "--chroot-base-dir".into(),
            base.clone(),
        ]
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (common("bad_id", &fc), "invalid instance id"),
        (common(&"x".repeat(65), &fc), "invalid instance id"),
        (
            common("ok", flick_testkit::fc_double_path().to_str().unwrap()),
            "must contain \"firecracker\"",
        ),
        (
            [common("ok", &fc), vec!["--cgroup".into(), "cpu.max".into()]].concat(),
            "invalid format for cgroups",
        ),
        (
            [
                common("ok", &fc),
                vec!["--cgroup-version".into(), "3".into()],
            ]
            .concat(),
            "invalid cgroup version",
        ),
        (
            [common("ok", &fc), vec!["--bogus".into()]].concat(),
            "unknown argument",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(
        std::fs::read_dir(fx.path("jail")).unwrap().next().is_none(),
        "nothing created for rejected arguments"
    );
}

#[tokio::test]
async fn stop_escalates_to_signals_through_the_jailer_and_its_pid_namespace() {
    let fx = Fixture::new();
    let host = Host::new(fx.options(Some(fx.jailer()), &["--ignore-ctrl-alt-del"])).unwrap();
    let vm = host.create_vm("stubborn", fx.config()).await.unwrap();
    vm.start().await.unwrap();
    let pid = vm.status().await.process.unwrap().pid;
    let outcome = vm
        .stop_with_grace(Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        matches!(outcome, StopOutcome::Terminated | StopOutcome::Killed),
        "{outcome:?}"
    );
    assert_eq!(vm.state(), VmState::Stopped);
    wait_gone(pid).await;
    host.cleanup().await.unwrap();
    assert!(!fx.instance_dir("stubborn").exists());
    assert!(!fx.cgroup_dir("stubborn").exists());
}

#[tokio::test]
async fn dropping_a_jailed_vm_kills_firecracker_and_removes_jail_and_cgroup() {
    let fx = Fixture::new();
    let mut options = fx.options(Some(fx.jailer()), &[]);
    options.jailer = None;
    let host = Host::new(options).unwrap();
    let vm = host
        .create_vm_with_jailer("dropped", fx.config(), Some(fx.jailer()))
        .await
        .unwrap();
    vm.start().await.unwrap();
    let pid = vm.status().await.process.unwrap().pid;
    assert!(fx.cgroup_dir("dropped").exists());
    // The host forgets it without cleanup; the last handle goes away.
    drop(host);
    drop(vm);
    wait_gone(pid).await;
    assert!(!fx.instance_dir("dropped").exists(), "jail removed on drop");
    assert!(!fx.cgroup_dir("dropped").exists(), "cgroup removed on drop");
}

#[tokio::test]
async fn a_jail_in_the_way_is_reported_and_left_alone() {
    let fx = Fixture::new();
    // Another host's VM with the same id already owns the jail.
    let theirs = fx.instance_dir("taken").join("root");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("marker"), "theirs").unwrap();
    let host = Host::new(fx.options(Some(fx.jailer()), &[])).unwrap();
    let vm = host.create_vm("taken", fx.config()).await.unwrap();
    let err = vm.start().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StartFailed);
    assert_eq!(
        err.details().unwrap()["cause"]["code"],
        "ALREADY_EXISTS",
        "{:?}",
        err.details()
    );
    host.cleanup().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(theirs.join("marker")).unwrap(),
        "theirs",
        "a jail this VM did not make is never removed"
    );
}

#[tokio::test]
async fn jailed_snapshots_restore_into_fresh_jails_concurrently() {
    let fx = Fixture::new();
    let host = Host::new(fx.options(Some(fx.jailer()), &[])).unwrap();
    let vm = host.create_vm("origin", fx.config()).await.unwrap();
    vm.start().await.unwrap();
    vm.pause().await.unwrap();
    let snapshot = vm
        .create_snapshot(&SnapshotOptions {
            dir: fx.path("snapshots/origin"),
            kind: SnapshotKind::Full,
        })
        .await
        .unwrap();
    // The source VM and its jail are gone before any clone starts.
    host.remove_vm("origin").await.unwrap();
    assert!(!fx.instance_dir("origin").exists());

    let restores = (0..3).map(|_| {
        host.restore_vm(
            &snapshot,
            flick::host::RestoreOptions {
                resume: true,
                ..Default::default()
            },
        )
    });
    let clones: Vec<_> = futures_util::future::join_all(restores)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut jails = std::collections::BTreeSet::new();
    for clone in &clones {
        assert_eq!(clone.state(), VmState::Running);
        let chroot = clone.runtime_dir().await.unwrap();
        assert!(
            chroot.starts_with(fx.path("jail/firecracker")),
            "{}",
            chroot.display()
        );
        assert!(jails.insert(chroot.clone()), "each clone has its own jail");
        let pid = clone.status().await.process.unwrap().pid;
        assert_eq!(status_field(pid, "Uid")[0], UID.to_string());
        assert_eq!(status_field(pid, "NSpid").last().unwrap(), "1");
        let load = body_of(&requests(&chroot), "PUT", "/snapshot/load");
        assert_eq!(load["snapshot_path"], "/snapshot/vm.snap");
        assert_eq!(load["mem_backend"]["backend_path"], "/snapshot/vm.mem");
        assert_eq!(load["vsock_override"]["uds_path"], "/vsock.sock");
        let drive = std::fs::metadata(chroot.join("drives/rootfs.img")).unwrap();
        assert_eq!(
            drive.uid(),
            UID,
            "the clone's private drive belongs to the jailed user"
        );
        assert!(
            chroot.join("drives/data.img").exists(),
            "shared drive placed where recorded"
        );
        assert_eq!(clone.info().await.unwrap().state, InstanceState::Running);
    }
    host.cleanup().await.unwrap();
    for jail in &jails {
        assert!(!jail.parent().unwrap().exists(), "{} left", jail.display());
    }
    let cgroups: Vec<_> = std::fs::read_dir(fx.path("cgroup/firecracker"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(cgroups.is_empty(), "{cgroups:?}");
    assert!(
        snapshot.state_path.exists(),
        "the snapshot stays the caller's"
    );

    // A host without the jailer refuses a jailed snapshot (its paths only resolve in a jail).
    let plain = Host::new(fx.options(None, &[])).unwrap();
    let err = plain
        .restore_vm(&snapshot, flick::host::RestoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::RestoreFailed);
    assert_eq!(plain.vm_count(), 0);
}
