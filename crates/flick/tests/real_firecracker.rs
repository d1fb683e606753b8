//! The lifecycle against a REAL Firecracker. Opt-in: it runs only when
//! `FLICK_TEST_FIRECRACKER` (a firecracker binary), `FLICK_TEST_KERNEL` (an uncompressed guest
//! kernel) and `FLICK_TEST_ROOTFS` (an ext4 or squashfs root image) are all set; otherwise it
//! prints that it was skipped and why (straight to the terminal, past the test harness's output
//! capture).
//!
//! It checks the VMM side only — start, pause, snapshot, resume, stop, restore — so it also
//! passes on hosts where the guest kernel cannot boot (nested PVM: the VMM reaches `Running`,
//! the guest prints nothing). Set `FLICK_TEST_EXPECT_GUEST_BOOT=1` to also require the guest
//! kernel's banner on the serial console.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flick::api::models::InstanceState;
use flick::config::{VmConfig, Vsock};
use flick::host::{FirecrackerBinary, Host, HostOptions, RestoreOptions};
use flick::vm::{SnapshotOptions, VmState};

struct RealSetup {
    firecracker: PathBuf,
    kernel: PathBuf,
    rootfs: PathBuf,
    expect_boot: bool,
}

fn setup(test: &str) -> Option<RealSetup> {
    let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
    match (
        var("FLICK_TEST_FIRECRACKER"),
        var("FLICK_TEST_KERNEL"),
        var("FLICK_TEST_ROOTFS"),
    ) {
        (Some(firecracker), Some(kernel), Some(rootfs)) => Some(RealSetup {
            firecracker,
            kernel,
            rootfs,
            expect_boot: std::env::var("FLICK_TEST_EXPECT_GUEST_BOOT").as_deref() == Ok("1"),
        }),
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: real-Firecracker tests are opt-in; set FLICK_TEST_FIRECRACKER, \
                 FLICK_TEST_KERNEL and FLICK_TEST_ROOTFS to run them"
            );
            None
        }
    }
}

#[tokio::test]
async fn real_firecracker_lifecycle_start_pause_snapshot_resume_stop_restore() {
    let Some(real) = setup("real_firecracker_lifecycle") else {
        return;
    };
    for path in [&real.firecracker, &real.kernel, &real.rootfs] {
        assert!(path.exists(), "{} does not exist", path.display());
    }
    let dir = tempfile::tempdir().unwrap();
    let mut options = HostOptions::new(
        dir.path().join("data"),
        FirecrackerBinary::Path(real.firecracker.clone()),
    );
    options.runtime_dir = Some(dir.path().join("runtime"));
    options.stop_grace = Duration::from_secs(3);
    let host = Host::new(options).unwrap();
    let config = VmConfig::new(&real.kernel, &real.rootfs)
        .with_boot_args("console=ttyS0 reboot=k panic=1 pci=off")
        .with_vcpus(1)
        .with_memory_mib(128)
        .with_vsock(Vsock::new(3));
    let vm = host.create_vm("real-1", config).await.unwrap();
    vm.start().await.unwrap();
    assert_eq!(vm.state(), VmState::Running);
    assert_eq!(vm.info().await.unwrap().state, InstanceState::Running);
    let runtime = vm.runtime_dir().await.unwrap();

    if real.expect_boot {
        let serial = runtime.join("serial.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            if text.contains("Linux version") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no kernel banner on the serial console within 30 s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    vm.pause().await.unwrap();
    assert_eq!(vm.info().await.unwrap().state, InstanceState::Paused);
    let snap = vm
        .create_snapshot(&SnapshotOptions::full(dir.path().join("snap")))
        .await
        .unwrap();
    assert!(snap.state_path.is_file() && snap.mem_path.is_file());
    assert_eq!(std::fs::metadata(&snap.mem_path).unwrap().len(), 128 << 20);
    vm.resume().await.unwrap();
    assert_eq!(vm.info().await.unwrap().state, InstanceState::Running);
    vm.stop().await.unwrap();
    assert_eq!(vm.state(), VmState::Stopped);

    let clone = host
        .restore_vm(
            &snap,
            RestoreOptions {
                resume: true,
                ..RestoreOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(clone.info().await.unwrap().state, InstanceState::Running);
    host.cleanup().await.unwrap();
    assert!(!runtime.exists());
}
