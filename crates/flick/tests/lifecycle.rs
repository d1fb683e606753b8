//! The microVM lifecycle against the Firecracker double: real processes, real sockets, real
//! files on tmpfs. The double's request log (one JSON line per request, in the VM's runtime dir)
//! shows exactly what flick sent.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flick::config::{
    Balloon, BalloonUpdate, DriveUpdate, NetworkInterface, NetworkInterfaceUpdate, RateLimiter,
    TokenBucket, VmConfig, Vsock,
};
use flick::host::{FirecrackerBinary, Host, HostOptions, RestoreOptions, ViewMode};
use flick::process::group_members;
use flick::vm::{MicroVm, SnapshotKind, SnapshotOptions, StopOutcome, VmState};
use flick::{ErrorCode, api::models::InstanceState};
use serde_json::{Value, json};

struct Fixture {
    dir: tempfile::TempDir,
    kernel: PathBuf,
    rootfs: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs temp dir");
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"not a real kernel: the double only opens it").unwrap();
        let rootfs = dir.path().join("rootfs.ext4");
        let f = std::fs::File::create(&rootfs).unwrap();
        // 256 MiB apparent size, 3 MiB of data in three places.
        f.set_len(256 << 20).unwrap();
        for (i, off) in [0u64, 100 << 20, (256 << 20) - (1 << 20)]
            .iter()
            .enumerate()
        {
            f.write_all_at(&vec![i as u8 + 1; 1 << 20], *off).unwrap();
        }
        f.sync_all().unwrap();
        Self {
            dir,
            kernel,
            rootfs,
        }
    }

    fn options(&self) -> HostOptions {
        let mut o = HostOptions::new(
            self.dir.path().join("data"),
            FirecrackerBinary::Path(flick_testkit::fc_double_path()),
        );
        o.runtime_dir = Some(self.dir.path().join("runtime"));
        o.stop_grace = Duration::from_secs(2);
        o.firecracker_env
            .push(("FC_DOUBLE_REQUEST_LOG".into(), "requests.jsonl".into()));
        o
    }

    fn host(&self) -> Host {
        Host::new(self.options()).expect("host")
    }

    fn config(&self) -> VmConfig {
        VmConfig::new(&self.kernel, &self.rootfs)
            .with_boot_args("console=ttyS0 reboot=k panic=1")
            .with_vcpus(2)
            .with_memory_mib(256)
            .with_vsock(Vsock::new(3))
    }

    fn runtime_entries(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.dir.path().join("runtime"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".view")
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn requests(runtime_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(runtime_dir.join("requests.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("request log line"))
        .collect()
}

fn content(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn full_lifecycle_through_every_verb() {
    let fx = Fixture::new();
    let host = fx.host();
    let source_content = content(&fx.rootfs);
    let config = fx
        .config()
        .with_network_interface(NetworkInterface::with_tap("eth0", "fltap0"))
        .with_balloon(Balloon {
            amount_mib: 0,
            deflate_on_oom: true,
            stats_polling_interval_s: Some(1),
            free_page_hinting: false,
            free_page_reporting: false,
        });
    let original = config.clone();
    let vm = host.create_vm("vm-1", config).await.unwrap();
    assert_eq!(vm.state(), VmState::Created);
    assert!(
        vm.runtime_dir().await.is_none(),
        "nothing exists before start"
    );

    vm.start().await.unwrap();
    assert_eq!(vm.state(), VmState::Running);
    let runtime = vm.runtime_dir().await.unwrap();
    assert_eq!(std::fs::metadata(&runtime).unwrap().mode() & 0o777, 0o700);
    assert!(runtime.join("firecracker.sock").exists());
    assert!(runtime.join("vsock.sock").exists());
    assert!(runtime.join("serial.log").exists());
    assert_eq!(vm.info().await.unwrap().state, InstanceState::Running);
    assert_eq!(vm.version().await.unwrap(), "1.16.1");
    assert_eq!(
        vm.config(),
        &original,
        "the caller's config is never mutated"
    );

    // The root drive was staged: Firecracker got the private copy, the source is untouched.
    let status = vm.status().await;
    assert_eq!(status.staged_drives.len(), 1);
    let staged = &status.staged_drives[0];
    assert!(staged.staged.starts_with(&runtime));
    let sent = requests(&runtime);
    let drive_put = sent
        .iter()
        .find(|r| r["path"] == "/drives/rootfs")
        .expect("drive PUT");
    assert_ne!(drive_put["body"]["path_on_host"], json!(fx.rootfs));
    assert!(
        drive_put["body"]["path_on_host"]
            .as_str()
            .unwrap()
            .ends_with("drives/rootfs.img")
    );
    assert!(
        sent.iter()
            .any(|r| r["body"]["action_type"] == "InstanceStart" && r["status"] == 204)
    );

    vm.pause().await.unwrap();
    assert_eq!(vm.state(), VmState::Paused);
    assert_eq!(vm.info().await.unwrap().state, InstanceState::Paused);
    vm.resume().await.unwrap();
    assert_eq!(vm.state(), VmState::Running);

    vm.set_metadata(&json!({"latest": {"a": 1, "b": 2}}))
        .await
        .unwrap();
    vm.patch_metadata(&json!({"latest": {"b": null, "c": 3}}))
        .await
        .unwrap();
    assert_eq!(
        vm.get_metadata().await.unwrap(),
        json!({"latest": {"a": 1, "c": 3}})
    );

    vm.update_drive(&DriveUpdate {
        drive_id: "rootfs".into(),
        path_on_host: None,
        rate_limiter: Some(RateLimiter::bandwidth(TokenBucket::new(
            1 << 20,
            Duration::from_millis(100),
        ))),
    })
    .await
    .unwrap();
    vm.update_network_interface(&NetworkInterfaceUpdate {
        iface_id: "eth0".into(),
        rx_rate_limiter: Some(RateLimiter::ops(TokenBucket::new(
            1000,
            Duration::from_secs(1),
        ))),
        tx_rate_limiter: None,
    })
    .await
    .unwrap();
    vm.update_balloon(&BalloonUpdate {
        amount_mib: Some(64),
        stats_polling_interval_s: None,
    })
    .await
    .unwrap();
    let stats = vm.balloon_stats().await.unwrap();
    assert!(stats.target_mib <= 256);

    // A rejected update is an API_ERROR with Firecracker's words and leaves the VM running.
    let err = vm
        .update_drive(&DriveUpdate {
            drive_id: "nosuch".into(),
            path_on_host: None,
            rate_limiter: Some(RateLimiter::ops(TokenBucket::new(
                10,
                Duration::from_secs(1),
            ))),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ApiError, "{}", err.chain());
    assert_eq!(err.status(), Some(400));
    assert_eq!(vm.state(), VmState::Running);

    let outcome = vm.stop().await.unwrap();
    assert_eq!(
        outcome,
        StopOutcome::Graceful,
        "the double exits on Ctrl+Alt+Del"
    );
    assert_eq!(vm.state(), VmState::Stopped);
    let pid = vm.status().await.process.unwrap().pid;
    assert!(group_members(pid).is_empty());

    host.remove_vm("vm-1").await.unwrap();
    assert!(!runtime.exists());
    assert!(
        content(&fx.rootfs) == source_content,
        "the source drive is never written"
    );
    assert_eq!(host.vm_count(), 0);
}

#[tokio::test]
async fn configuration_is_sent_in_firecracker_order() {
    let fx = Fixture::new();
    let host = fx.host();
    let vm = host.create_vm("order", fx.config()).await.unwrap();
    vm.start().await.unwrap();
    let runtime = vm.runtime_dir().await.unwrap();
    let paths: Vec<String> = requests(&runtime)
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        paths,
        [
            "GET /",
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /vsock",
            "PUT /serial",
            "PUT /actions",
        ]
    );
    host.cleanup().await.unwrap();
    assert!(fx.runtime_entries().is_empty());
}

#[tokio::test]
async fn every_invalid_transition_is_invalid_state() {
    let fx = Fixture::new();
    let host = fx.host();
    let vm = host.create_vm("states", fx.config()).await.unwrap();
    let expect_invalid = |r: flick::Result<()>, what: &str| {
        let err = r.expect_err(what);
        assert_eq!(
            err.code(),
            ErrorCode::InvalidState,
            "{what}: {}",
            err.chain()
        );
        assert!(err.details().unwrap()["allowed"].is_array());
    };
    let snap = SnapshotOptions::full(fx.dir.path().join("snap"));
    // Created.
    expect_invalid(vm.pause().await, "pause in created");
    expect_invalid(vm.resume().await, "resume in created");
    expect_invalid(vm.stop().await.map(drop), "stop in created");
    expect_invalid(vm.info().await.map(drop), "info in created");
    expect_invalid(vm.get_metadata().await.map(drop), "metadata in created");
    expect_invalid(
        vm.create_snapshot(&snap).await.map(drop),
        "snapshot in created",
    );
    vm.start().await.unwrap();
    // Running.
    expect_invalid(vm.start().await, "start in running");
    expect_invalid(vm.resume().await, "resume in running");
    expect_invalid(
        vm.create_snapshot(&snap).await.map(drop),
        "snapshot in running",
    );
    vm.pause().await.unwrap();
    // Paused.
    expect_invalid(vm.pause().await, "pause in paused");
    expect_invalid(vm.start().await, "start in paused");
    vm.stop().await.unwrap();
    // Stopped.
    expect_invalid(vm.start().await, "start in stopped");
    expect_invalid(vm.pause().await, "pause in stopped");
    expect_invalid(vm.resume().await, "resume in stopped");
    expect_invalid(vm.stop().await.map(drop), "stop in stopped");
    expect_invalid(vm.info().await.map(drop), "info in stopped");
    // Cleanup works from anywhere, twice.
    vm.cleanup().await.unwrap();
    vm.cleanup().await.unwrap();
    host.cleanup().await.unwrap();
    assert!(!snap.dir.exists());
}

#[tokio::test]
async fn failed_start_leaves_nothing_behind() {
    let fx = Fixture::new();
    let mut options = fx.options();
    options
        .firecracker_env
        .push(("FC_DOUBLE_FAIL_START".into(), "1".into()));
    let host = Host::new(options).unwrap();
    let vm = host.create_vm("doomed", fx.config()).await.unwrap();
    let err = vm.start().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StartFailed);
    let details = err.details().unwrap();
    assert_eq!(details["cause"]["code"], "API_ERROR", "{details}");
    assert!(
        details["firecracker_log_tail"]
            .as_str()
            .unwrap()
            .contains("FC_DOUBLE_FAIL_START"),
        "{details}"
    );
    assert_eq!(vm.state(), VmState::Error);
    let pid = vm.status().await.process.map(|p| p.pid);
    assert!(pid.is_none(), "the process handle is gone");
    assert!(
        fx.runtime_entries().is_empty(),
        "{:?}",
        fx.runtime_entries()
    );
    // Only cleanup and kill remain; both are harmless now.
    assert_eq!(
        vm.pause().await.unwrap_err().code(),
        ErrorCode::InvalidState
    );
    vm.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_bad_kernel_fails_start_with_firecrackers_reason() {
    let fx = Fixture::new();
    let host = fx.host();
    let missing = fx.dir.path().join("no-such-vmlinux");
    let mut config = fx.config();
    config.boot_source.kernel_image_path = missing;
    let vm = host.create_vm("nokernel", config).await.unwrap();
    let err = vm.start().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::StartFailed);
    assert!(
        err.chain()
            .contains("The kernel file cannot be opened: No such file or directory"),
        "{}",
        err.chain()
    );
    assert!(fx.runtime_entries().is_empty());
}

#[tokio::test]
async fn invalid_config_is_refused_before_anything_exists() {
    let fx = Fixture::new();
    let host = fx.host();
    let config = fx.config().with_vcpus(0).with_memory_mib(0);
    let err = host.create_vm("bad", config).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidConfig);
    assert!(err.details().unwrap()["problems"].as_array().unwrap().len() >= 2);
    assert_eq!(host.vm_count(), 0);
    assert!(fx.runtime_entries().is_empty());
}

#[tokio::test]
async fn stop_escalates_when_ctrl_alt_del_is_ignored() {
    let fx = Fixture::new();
    let mut options = fx.options();
    options
        .firecracker_env
        .push(("FC_DOUBLE_IGNORE_CTRL_ALT_DEL".into(), "1".into()));
    let host = Host::new(options).unwrap();
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
    assert!(group_members(pid).is_empty());
    host.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_crashed_firecracker_is_noticed() {
    let fx = Fixture::new();
    let mut options = fx.options();
    options
        .firecracker_env
        .push(("FC_DOUBLE_EXIT_AFTER_START".into(), "1".into()));
    let host = Host::new(options).unwrap();
    let vm = host.create_vm("crashy", fx.config()).await.unwrap();
    vm.start().await.unwrap();
    let pid = vm.status().await.process.unwrap().pid;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !group_members(pid).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the double did not exit after start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The next operation finds it gone.
    let err = vm.pause().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidState);
    assert_eq!(vm.state(), VmState::Stopped);
    host.cleanup().await.unwrap();
}

fn sparse_image(path: &Path, size: u64, data: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let chunk = vec![0x5Au8; 1 << 20];
    let stride = size / (data >> 20);
    for i in 0..(data >> 20) {
        f.write_all_at(&chunk, i * stride).unwrap();
    }
    f.sync_all().unwrap();
}

#[tokio::test]
async fn staging_costs_only_the_data_and_honours_opt_outs() {
    let fx = Fixture::new();
    let big = fx.dir.path().join("big.img");
    sparse_image(&big, 1 << 30, 16 << 20);
    let keep = fx.dir.path().join("keep.img");
    sparse_image(&keep, 64 << 20, 1 << 20);
    let shared = fx.dir.path().join("shared.img");
    sparse_image(&shared, 64 << 20, 1 << 20);
    let forced = fx.dir.path().join("forced.img");
    sparse_image(&forced, 64 << 20, 1 << 20);

    let config = VmConfig::with_kernel(&fx.kernel)
        .with_drive(flick::config::Drive::root("rootfs", &big))
        .with_drive(flick::config::Drive::new("keep", &keep).ephemeral(false))
        .with_drive(flick::config::Drive::new("shared", &shared).read_only())
        .with_drive(
            flick::config::Drive::new("forced", &forced)
                .read_only()
                .ephemeral(true),
        );
    let host = fx.host();
    let vm = host.create_vm("staging", config).await.unwrap();
    vm.start().await.unwrap();
    let status = vm.status().await;
    let staged: BTreeSet<&str> = status
        .staged_drives
        .iter()
        .map(|d| d.drive_id.as_str())
        .collect();
    assert_eq!(staged, BTreeSet::from(["rootfs", "forced"]));
    let root = status
        .staged_drives
        .iter()
        .find(|d| d.drive_id == "rootfs")
        .unwrap();
    let source_alloc = std::fs::metadata(&big).unwrap().blocks() * 512;
    let staged_alloc = std::fs::metadata(&root.staged).unwrap().blocks() * 512;
    assert_eq!(
        std::fs::metadata(&root.staged).unwrap().len(),
        1 << 30,
        "same apparent size"
    );
    assert!(
        staged_alloc <= source_alloc + (1 << 20),
        "staged {staged_alloc} vs source {source_alloc}"
    );
    assert!(staged_alloc < 32 << 20, "a 1 GiB image with 16 MiB of data");
    // Firecracker got the originals for the opted-out and the shared read-only drive.
    let runtime = vm.runtime_dir().await.unwrap();
    let sent = requests(&runtime);
    let path_of = |id: &str| {
        sent.iter()
            .find(|r| r["path"] == format!("/drives/{id}"))
            .unwrap()["body"]["path_on_host"]
            .clone()
    };
    assert_eq!(path_of("keep"), json!(keep));
    assert_eq!(path_of("shared"), json!(shared));
    assert_ne!(path_of("forced"), json!(forced));
    host.cleanup().await.unwrap();

    // The global switch turns staging off for writable drives.
    let mut options = fx.options();
    options.ephemeral_writable_drives = false;
    let host = Host::new(options).unwrap();
    let vm = host.create_vm("nostaging", fx.config()).await.unwrap();
    vm.start().await.unwrap();
    assert!(vm.status().await.staged_drives.is_empty());
    host.cleanup().await.unwrap();
}

async fn snapshot_of_running_vm(fx: &Fixture, host: &Host) -> flick::vm::Snapshot {
    let config = fx
        .config()
        .with_network_interface(NetworkInterface::with_tap("eth0", "srctap0"));
    let vm = host.create_vm("source", config).await.unwrap();
    vm.start().await.unwrap();
    vm.pause().await.unwrap();
    let snap = vm
        .create_snapshot(&SnapshotOptions::full(fx.dir.path().join("snapshots/s1")))
        .await
        .unwrap();
    vm.resume().await.unwrap();
    snap
}

#[tokio::test]
async fn snapshots_write_every_file_and_refuse_bad_requests() {
    let fx = Fixture::new();
    let host = fx.host();
    let snap = snapshot_of_running_vm(&fx, &host).await;
    for file in [&snap.state_path, &snap.mem_path] {
        assert!(file.is_file(), "{}", file.display());
    }
    assert_eq!(std::fs::metadata(&snap.mem_path).unwrap().len(), 256 << 20);
    assert_eq!(snap.drives.len(), 1);
    assert!(content(&snap.drives[0].file) == content(&fx.rootfs));
    let loaded = flick::vm::Snapshot::load(&snap.dir).unwrap();
    assert_eq!(loaded, snap);

    let vm = host.get_vm("source").unwrap();
    vm.pause().await.unwrap();
    let diff = SnapshotOptions {
        dir: fx.dir.path().join("snapshots/diff"),
        kind: SnapshotKind::Diff,
    };
    let err = vm.create_snapshot(&diff).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(!diff.dir.exists());
    let err = vm
        .create_snapshot(&SnapshotOptions::full(&snap.dir))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::AlreadyExists);
    host.cleanup().await.unwrap();
}

#[tokio::test]
async fn restore_sends_load_with_overrides_and_tracks_a_normal_vm() {
    let fx = Fixture::new();
    let host = fx.host();
    let snap = snapshot_of_running_vm(&fx, &host).await;
    // The source goes away entirely: clones must not need its files.
    host.remove_vm("source").await.unwrap();

    let clone = host
        .restore_vm(
            &snap,
            RestoreOptions {
                id: Some("clone-a".into()),
                resume: true,
                tap_overrides: [("eth0".to_string(), "clonetap0".to_string())].into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(clone.state(), VmState::Running);
    assert_eq!(clone.info().await.unwrap().state, InstanceState::Running);
    let runtime = clone.runtime_dir().await.unwrap();
    let sent = requests(&runtime);
    let load = sent
        .iter()
        .find(|r| r["path"] == "/snapshot/load")
        .expect("snapshot load");
    assert_eq!(load["status"], 204);
    assert_eq!(load["body"]["resume_vm"], false);
    assert_eq!(
        load["body"]["network_overrides"],
        json!([{"iface_id": "eth0", "host_dev_name": "clonetap0"}])
    );
    assert!(load["body"]["vsock_override"]["uds_path"].is_string());
    assert_eq!(load["body"]["mem_backend"]["backend_type"], "File");
    let load_at = sent
        .iter()
        .position(|r| r["path"] == "/snapshot/load")
        .unwrap();
    let resume_at = sent
        .iter()
        .position(|r| r["path"] == "/vm" && r["body"]["state"] == "Resumed")
        .expect("resumed after loading");
    assert!(resume_at > load_at);
    assert!(runtime.join("vsock.sock").exists());
    assert_eq!(clone.tap_devices().await, vec!["clonetap0".to_string()]);
    // The clone has its own drive copy.
    let staged = &clone.status().await.staged_drives[0];
    assert!(staged.staged.starts_with(&runtime));
    // Paused restore.
    let paused = host
        .restore_vm(&snap, RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(paused.state(), VmState::Paused);
    assert_eq!(paused.id(), "source-clone-1");
    paused.resume().await.unwrap();
    host.cleanup().await.unwrap();
    assert!(fx.runtime_entries().is_empty());
}

#[tokio::test]
async fn twenty_concurrent_restores_from_one_snapshot() {
    let fx = Fixture::new();
    let host = Arc::new(fx.host());
    let snap = Arc::new(snapshot_of_running_vm(&fx, &host).await);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let host = Arc::clone(&host);
            let snap = Arc::clone(&snap);
            tokio::spawn(async move {
                host.restore_vm(
                    &snap,
                    RestoreOptions {
                        resume: true,
                        ..RestoreOptions::default()
                    },
                )
                .await
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    for t in tasks {
        let vm = t.await.unwrap().expect("restore");
        assert_eq!(vm.state(), VmState::Running);
        ids.insert(vm.id().to_string());
        dirs.insert(vm.runtime_dir().await.unwrap());
    }
    assert_eq!(ids.len(), 20);
    assert_eq!(dirs.len(), 20);
    assert_eq!(host.vm_count(), 21);
    let stopped = host.stop_all().await;
    assert_eq!(stopped.len(), 21);
    assert!(stopped.iter().all(|(_, r)| r.is_ok()));
    host.cleanup().await.unwrap();
    assert!(fx.runtime_entries().is_empty());
}

#[tokio::test]
async fn host_bookkeeping() {
    let fx = Fixture::new();
    let host = fx.host();
    host.create_vm("a", fx.config()).await.unwrap();
    host.create_vm("b", fx.config()).await.unwrap();
    let err = host.create_vm("a", fx.config()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::AlreadyExists);
    assert_eq!(host.vm_count(), 2);
    let ids: Vec<String> = host.list_vms().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["a", "b"]);
    assert!(host.get_vm("a").is_some());
    assert_eq!(
        host.remove_vm("zzz").await.unwrap_err().code(),
        ErrorCode::NotFound
    );
    host.remove_vm("a").await.unwrap();
    assert!(host.get_vm("a").is_none());
    host.cleanup().await.unwrap();
    assert_eq!(host.vm_count(), 0);
}

#[tokio::test]
async fn a_missing_binary_is_binary_not_found() {
    let fx = Fixture::new();
    let mut options = fx.options();
    let fake = fx.dir.path().join("firecracker");
    std::fs::write(&fake, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o644)).unwrap();
    options.firecracker = FirecrackerBinary::Path(fake);
    let host = Host::new(options).unwrap();
    let err = host.create_vm("x", fx.config()).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::BinaryNotFound);
}

#[tokio::test]
async fn dropping_a_vm_kills_it_and_removes_its_runtime_dir() {
    let fx = Fixture::new();
    let host = fx.host();
    let vm = host.create_vm("dropped", fx.config()).await.unwrap();
    vm.start().await.unwrap();
    let pid = vm.status().await.process.unwrap().pid;
    let runtime = vm.runtime_dir().await.unwrap();
    // Forget it in the host without cleanup, then drop the last handle.
    let options = vm.runtime_options().clone();
    drop(vm);
    drop(host);
    for _ in 0..300 {
        if group_members(pid).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(group_members(pid).is_empty());
    assert!(!runtime.exists());

    // A detached VM survives its handle.
    let vm = MicroVm::new("kept", fx.config(), options).unwrap();
    vm.start().await.unwrap();
    vm.detach().await;
    let pid = vm.status().await.process.unwrap().pid;
    let runtime = vm.runtime_dir().await.unwrap();
    drop(vm);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!group_members(pid).is_empty(), "detached VM keeps running");
    assert!(runtime.exists());
    let _ = rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    );
    std::fs::remove_dir_all(&runtime).unwrap();
}

#[tokio::test]
async fn without_a_view_firecracker_sees_host_paths_and_clones_repoint_drives() {
    let fx = Fixture::new();
    let mut options = fx.options();
    options.view = ViewMode::Off;
    let host = Host::new(options).unwrap();
    let snap = snapshot_of_running_vm(&fx, &host).await;
    assert!(snap.view_dir.is_none());
    let clone = host
        .restore_vm(&snap, RestoreOptions::default())
        .await
        .unwrap();
    let runtime = clone.runtime_dir().await.unwrap();
    let sent = requests(&runtime);
    let patch = sent
        .iter()
        .find(|r| r["method"] == "PATCH" && r["path"] == "/drives/rootfs")
        .expect("drive re-pointed");
    assert_eq!(patch["status"], 204);
    assert!(
        patch["body"]["path_on_host"]
            .as_str()
            .unwrap()
            .starts_with(runtime.to_str().unwrap())
    );
    host.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_host_is_usable_again_after_cleanup() {
    let fx = Fixture::new();
    let host = fx.host();
    for round in 0..2 {
        let vm = host
            .create_vm(format!("again-{round}"), fx.config())
            .await
            .unwrap();
        vm.start().await.unwrap();
        host.cleanup().await.unwrap();
        assert!(fx.runtime_entries().is_empty());
    }
}

#[tokio::test]
async fn a_detached_vm_is_reattached_by_another_host_and_fully_usable() {
    let fx = Fixture::new();
    let first = fx.host();
    let vm = first.create_vm("survivor", fx.config()).await.unwrap();
    vm.start().await.unwrap();
    vm.pause().await.unwrap();
    vm.detach().await;
    // The record goes through JSON, as it would through a state file.
    let record: flick::vm::AttachRecord =
        serde_json::from_str(&serde_json::to_string(&vm.attach_record().await).unwrap()).unwrap();
    let pid = record.status.process.unwrap().pid;
    let runtime = record.status.runtime_dir.clone().unwrap();
    drop(vm);
    drop(first);
    assert!(
        !group_members(pid).is_empty(),
        "the detached VM survives its host"
    );

    let second = fx.host();
    let vm = second.attach_vm(record.clone()).await.unwrap();
    assert_eq!(vm.state(), VmState::Paused, "state comes from Firecracker");
    assert_eq!(second.vm_count(), 1);
    assert_eq!(
        second.attach_vm(record.clone()).await.unwrap_err().code(),
        ErrorCode::AlreadyExists
    );
    vm.resume().await.unwrap();
    assert_eq!(vm.info().await.unwrap().state, InstanceState::Running);
    assert_eq!(vm.effective_config().await, record.effective_config);
    assert_eq!(vm.stop().await.unwrap(), StopOutcome::Graceful);
    vm.cleanup().await.unwrap();
    assert!(group_members(pid).is_empty());
    assert!(!runtime.exists());

    // The process is gone now: attaching again says so instead of pretending.
    let err = fx.host().attach_vm(record).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ProcessFailed);
}

#[tokio::test]
async fn an_adopted_vmm_that_dies_is_noticed_as_stopped() {
    let fx = Fixture::new();
    let first = fx.host();
    let vm = first.create_vm("orphan", fx.config()).await.unwrap();
    vm.start().await.unwrap();
    vm.detach().await;
    let record = vm.attach_record().await;
    drop(vm);
    drop(first);
    let second = fx.host();
    let vm = second.attach_vm(record.clone()).await.unwrap();
    assert_eq!(vm.state(), VmState::Running);
    let pid = record.status.process.unwrap().pid;
    rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let err = vm.pause().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidState, "{err:?}");
    assert_eq!(vm.state(), VmState::Stopped);
    second.cleanup().await.unwrap();
    assert!(!record.status.runtime_dir.unwrap().exists());
}
