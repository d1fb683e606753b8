//! flick-init's mount logic against a real squashfs (built with `mksquashfs`) on a real loop
//! device, inside a private mount + pid namespace (`unshare --mount --pid --fork`).
//!
//! This binary re-executes itself inside the namespaces with `FLICK_INIT_HELPER=<role>`; the
//! roles run the init functions as they run in a VM, parameterised by directories under a
//! temp dir. Needs root, `unshare` (util-linux), `losetup` (mount) and `mksquashfs`
//! (squashfs-tools); without them the test fails and says why.

use flick_agent::init::{cmdline::BootOptions, mounts};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const HELPER_ENV: &str = "FLICK_INIT_HELPER";

fn check(cond: bool, what: &str) {
    if !cond {
        eprintln!("check failed: {what}");
        std::process::exit(1);
    }
}

fn net_helper() {
    use flick_agent::init::{cmdline::IpConfig, net};
    let ok = Command::new("ip")
        .args([
            "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ])
        .status()
        .unwrap()
        .success();
    check(ok, "veth pair created");
    let ip = IpConfig::parse("172.31.9.2::172.31.9.1:255.255.255.0:vm:eth0:off:9.9.9.9").unwrap();
    check(
        net::address_of("eth0").unwrap().is_none(),
        "eth0 starts without an address",
    );
    check(net::configure(&ip).unwrap(), "configure changed eth0");
    check(
        net::address_of("eth0").unwrap() == Some(ip.address),
        "eth0 has the address",
    );
    let addr = Command::new("ip")
        .args(["-4", "addr", "show", "eth0"])
        .output()
        .unwrap();
    let addr = String::from_utf8_lossy(&addr.stdout);
    check(
        addr.contains("inet 172.31.9.2/24"),
        "ip shows 172.31.9.2/24",
    );
    check(addr.contains(",UP"), "eth0 is up");
    let routes = Command::new("ip")
        .args(["-4", "route", "show"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    check(
        routes.contains("default via 172.31.9.1 dev eth0"),
        "default route",
    );
    check(
        routes.contains("169.254.169.254 dev eth0"),
        "MMDS host route",
    );
    // The kernel (or an earlier run) already configured it: left alone.
    check(!net::configure(&ip).unwrap(), "second configure is a no-op");
    check(
        net::resolv_conf(&ip).as_deref() == Some("nameserver 9.9.9.9\n"),
        "resolv.conf",
    );
    check(
        net::configure(
            &IpConfig::parse("10.0.0.2::::::")
                .map(|mut c| {
                    c.device = "nope0".into();
                    c
                })
                .unwrap(),
        )
        .is_err(),
        "a missing device is an error",
    );
    println!("HELPER OK");
}

fn helper(role: &str) {
    if role == "net" {
        return net_helper();
    }
    let work = PathBuf::from(std::env::var("FLICK_INIT_WORK").unwrap());
    let device = std::env::var("FLICK_INIT_DEV").unwrap();
    check(
        std::process::id() == 1,
        "helper runs as PID 1 of its pid namespace",
    );
    let initramfs = work.join("initramfs");
    mounts::mount_pseudo(&initramfs).unwrap();
    check(initramfs.join("proc/self/stat").exists(), "proc mounted");
    let pid_in_proc = std::fs::read_link(initramfs.join("proc/self")).unwrap();
    check(
        pid_in_proc == Path::new("1"),
        "proc shows the new pid namespace",
    );
    check(initramfs.join("dev/null").exists(), "devtmpfs mounted");
    check(initramfs.join("dev/pts/ptmx").exists(), "devpts mounted");
    let tmp_mode = std::fs::metadata(initramfs.join("tmp"))
        .unwrap()
        .permissions()
        .mode();
    check(tmp_mode & 0o7777 == 0o1777, "tmp is 1777");
    // Idempotent: a second call mounts nothing new.
    let before = mounts::mounts_under(&work).len();
    mounts::mount_pseudo(&initramfs).unwrap();
    check(
        mounts::mounts_under(&work).len() == before,
        "mount_pseudo is idempotent",
    );

    let opts = BootOptions::parse("root=/dev/vda ro");
    let spec = mounts::RootSpec {
        device: device.clone(),
        fstype: None,
        flags: None,
        read_only: opts.read_only,
        overlay: None,
        overlay_size: Some("64m".into()),
    };
    let newroot = work.join("newroot");
    let scratch = initramfs.join("run/flick");
    let m = mounts::mount_root(&spec, &newroot, &scratch, |fs| opts.wants_overlay(fs)).unwrap();
    check(m.fstype == "squashfs", "autodetected squashfs");
    let lower = m.lower.clone().expect("overlay over squashfs");
    let upper = m.upper_tmpfs.clone().unwrap().join("upper");

    match role {
        "overlay" => {
            check(
                std::fs::read_to_string(newroot.join("etc/hostname")).unwrap() == "image\n",
                "image content visible",
            );
            std::fs::write(newroot.join("new.txt"), b"written in the guest").unwrap();
            std::fs::write(newroot.join("etc/hostname"), b"changed\n").unwrap();
            std::fs::create_dir(newroot.join("newdir")).unwrap();
            std::fs::remove_file(newroot.join("bin/tool")).unwrap();
            check(
                upper.join("new.txt").exists(),
                "new file in the upper layer",
            );
            check(
                std::fs::read_to_string(upper.join("etc/hostname")).unwrap() == "changed\n",
                "copy-up in the upper layer",
            );
            check(!lower.join("new.txt").exists(), "lower untouched");
            check(
                std::fs::read_to_string(lower.join("etc/hostname")).unwrap() == "image\n",
                "lower content unchanged",
            );
            check(
                lower.join("bin/tool").exists(),
                "deletion is a whiteout only",
            );
            let err = std::fs::write(lower.join("x"), b"x").unwrap_err();
            check(
                err.raw_os_error() == Some(libc::EROFS),
                "lower is read-only",
            );
            // Shutdown: everything comes off cleanly.
            let failed = mounts::unmount_all(&work);
            check(failed.is_empty(), "every mount unmounted");
            check(
                mounts::mounts_under(&work).is_empty(),
                "no mount left under work",
            );
            println!("HELPER OK");
        }
        "switch" => {
            mounts::move_pseudo(&initramfs, &newroot).unwrap();
            mounts::switch_root(&newroot).unwrap();
            check(
                std::fs::read_to_string("/etc/hostname").unwrap() == "image\n",
                "the squashfs is the root",
            );
            check(
                Path::new("/proc/1/stat").exists(),
                "proc moved into the new root",
            );
            check(
                Path::new("/dev/null").exists(),
                "dev moved into the new root",
            );
            check(
                Path::new("/run/flick/lower/etc/hostname").exists(),
                "layers under /run/flick",
            );
            std::fs::write("/tmp/t", b"t").unwrap();
            std::fs::write("/root-write", b"w").unwrap();
            check(
                Path::new("/run/flick/overlay/upper/root-write").exists(),
                "root writes land in the overlay",
            );
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            check(
                mountinfo
                    .lines()
                    .any(|l| l.contains(" / / ") && l.contains(" - overlay ")),
                "/ is the overlay",
            );
            println!("HELPER OK");
        }
        other => panic!("unknown role {other}"),
    }
}

fn sha256(path: &Path) -> Vec<u8> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().to_vec()
}

fn require_tool(name: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(found, "{name} is required (Debian package {package})");
}

fn run_net() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (network namespaces)"
    );
    require_tool("unshare", "util-linux");
    require_tool("ip", "iproute2");
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--pid", "--fork"])
        .arg(std::env::current_exe().unwrap())
        .env(HELPER_ENV, "net")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("HELPER OK"),
        "net helper failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_role(role: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (loop devices, mount namespaces)"
    );
    require_tool("unshare", "util-linux");
    require_tool("losetup", "mount");
    require_tool("mksquashfs", "squashfs-tools");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("image");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::write(src.join("etc/hostname"), b"image\n").unwrap();
    std::fs::write(src.join("bin/tool"), b"#!/bin/sh\n").unwrap();
    let img = work.path().join("root.sqfs");
    let out = Command::new("mksquashfs")
        .arg(&src)
        .arg(&img)
        .args(["-noappend", "-comp", "gzip", "-quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mksquashfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = sha256(&img);
    let out = Command::new("losetup")
        .args(["-f", "--show", "-r"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loopdev = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let out = Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .env(HELPER_ENV, role)
        .env("FLICK_INIT_WORK", work.path())
        .env("FLICK_INIT_DEV", &loopdev)
        .output()
        .unwrap();
    let _ = Command::new("losetup").arg("-d").arg(&loopdev).status();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("HELPER OK"),
        "helper {role} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&img), before, "the squashfs image changed");
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host_mounts.contains(work.path().to_str().unwrap()),
        "a mount leaked into the host namespace"
    );
}

fn run_overlay() {
    run_role("overlay");
}

fn run_switch() {
    run_role("switch");
}

fn main() {
    if let Ok(role) = std::env::var(HELPER_ENV) {
        helper(&role);
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: [(&str, fn()); 3] = [
        ("ip_config_by_ioctl_in_a_network_namespace", run_net),
        (
            "overlay_writes_land_in_tmpfs_and_unmount_cleanly",
            run_overlay,
        ),
        ("switch_root_into_the_overlay", run_switch),
    ];
    let mut failed = 0;
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        match std::panic::catch_unwind(f) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        println!("test result: FAILED. {failed} failed");
        std::process::exit(1);
    }
    println!("test result: ok.");
}
