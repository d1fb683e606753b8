//! flick-init end to end without a VM: the agent binary runs as PID 1 (`/init`) of a chroot in
//! fresh mount, pid, UTS and network namespaces, with a fake `/proc/cmdline` bind-mounted in.
//! It mounts a real squashfs from a loop device under a tmpfs overlay, switches root, starts
//! the agent (on the Unix socket named by `flick.unix=`, since this kernel has no vsock), and
//! shuts down on SIGTERM. `reboot(2)` in a non-initial pid namespace only ends that namespace.
//!
//! Needs root, `unshare`/`chroot` (util-linux, coreutils), `losetup` (mount), `mksquashfs`
//! (squashfs-tools) and `ldd` (libc-bin) to copy a dynamically linked agent's libraries.

mod agent_support;

use agent_support::{TOKEN, agent_bin};
use flick::agent::{AgentClient, AgentTransport, ExecRequest, UploadOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn require_tool(name: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(found, "{name} is required (Debian package {package})");
}

/// Copies `bin` to `dest` inside `root`, with the shared libraries `ldd` lists.
fn install(bin: &Path, root: &Path, dest: &str) {
    let target = root.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(bin, &target).unwrap();
    let out = Command::new("ldd").arg(bin).output().unwrap();
    for lib in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn child_pid(parent: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn init_boots_a_squashfs_root_serves_the_agent_and_shuts_down() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (namespaces, loop devices)"
    );
    for (tool, pkg) in [
        ("unshare", "util-linux"),
        ("chroot", "coreutils"),
        ("losetup", "mount"),
        ("mksquashfs", "squashfs-tools"),
        ("ldd", "libc-bin"),
    ] {
        require_tool(tool, pkg);
    }
    let bin = agent_bin();
    let work = tempfile::tempdir().unwrap();
    let image_dir = work.path().join("image");
    for d in ["etc", "proc", "sys", "dev", "run", "tmp"] {
        std::fs::create_dir_all(image_dir.join(d)).unwrap();
    }
    std::fs::write(image_dir.join("etc/hostname"), b"image\n").unwrap();
    install(&bin, &image_dir, "/bin/tool");
    let img = work.path().join("root.sqfs");
    let ok = Command::new("mksquashfs")
        .arg(&image_dir)
        .arg(&img)
        .args(["-noappend", "-quiet"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mksquashfs failed");
    let image_sha = sha256(&img);

    let initramfs = work.path().join("initramfs");
    for d in ["dev", "proc", "sys", "run", "tmp", "newroot", "etc"] {
        std::fs::create_dir_all(initramfs.join(d)).unwrap();
    }
    install(&bin, &initramfs, "/init");

    let out = Command::new("losetup")
        .args(["-f", "--show", "-r"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "losetup failed");
    let loopdev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let cmdline = work.path().join("cmdline");
    std::fs::write(
        &cmdline,
        format!(
            "console=ttyS0 root={loopdev} rootfstype=squashfs ro flick.token={TOKEN} \
             flick.unix=/run/flick/agent.sock flick.hostname=boottest\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(work.path().join("init.log")).unwrap();
    let mut ns = Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "--uts", "--net", "--propagation", "private"])
        .args(["sh", "-c", r#"mount -t proc proc "$1/proc" && mount --bind "$2" "$1/proc/cmdline" && exec chroot "$1" /init"#, "sh"])
        .arg(&initramfs)
        .arg(&cmdline)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    let result = async {
        let start = Instant::now();
        let (init_pid, socket) = loop {
            if let Some(pid) = child_pid(ns.id()) {
                let s = PathBuf::from(format!("/proc/{pid}/root/run/flick/agent.sock"));
                if s.exists() {
                    break (pid, s);
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the agent socket never appeared; init log:\n{}",
                std::fs::read_to_string(work.path().join("init.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let client = AgentClient::connect(
            AgentTransport::Unix(socket.clone()),
            TOKEN,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        // Programs of the image run (the image's copy of the binary prints its usage).
        let out = client
            .output(ExecRequest {
                argv: vec!["/bin/tool".into(), "--help".into()],
                ..ExecRequest::default()
            })
            .await
            .unwrap();
        assert_eq!(out.status.code, Some(0));
        assert!(String::from_utf8_lossy(&out.stdout).contains("usage: flick-agent"));
        let mut text = Vec::new();
        client
            .download_writer("/proc/sys/kernel/hostname", &mut text)
            .await
            .unwrap();
        assert_eq!(text, b"boottest\n");
        let mut text = Vec::new();
        client
            .download_writer("/proc/1/cmdline", &mut text)
            .await
            .unwrap();
        assert!(
            text.starts_with(b"/init"),
            "PID 1 is {:?}",
            String::from_utf8_lossy(&text)
        );
        let mut text = Vec::new();
        client
            .download_writer("/proc/self/mountinfo", &mut text)
            .await
            .unwrap();
        let mountinfo = String::from_utf8_lossy(&text).into_owned();
        assert!(
            mountinfo
                .lines()
                .any(|l| l.contains(" / / ") && l.contains(" - overlay ")),
            "root is not the overlay:\n{mountinfo}"
        );
        let mut text = Vec::new();
        client
            .download_writer("/etc/hostname", &mut text)
            .await
            .unwrap();
        assert_eq!(text, b"image\n");
        // Writes land in the tmpfs upper layer; the squashfs stays as it was.
        let opts = UploadOptions {
            mkdirs: true,
            ..UploadOptions::default()
        };
        client
            .upload_reader(&mut &b"guest data"[..], "/data/x", &opts)
            .await
            .unwrap();
        assert_eq!(
            client
                .stat("/run/flick/overlay/upper/data/x", false)
                .await
                .unwrap()
                .size,
            10
        );
        let err = client
            .stat("/run/flick/lower/data", false)
            .await
            .unwrap_err();
        assert_eq!(err.details().unwrap()["agent_code"], "NOT_FOUND");
        // SIGHUP to PID 1 is forwarded to every process; the agent survives it.
        let agent_before = child_pid(init_pid);
        assert!(agent_before.is_some());
        // SAFETY: signalling the namespace's init, a descendant of our `unshare` process.
        unsafe { libc::kill(init_pid as i32, libc::SIGHUP) };
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.health().await.unwrap();
        assert_eq!(child_pid(init_pid), agent_before, "the agent was replaced");
        // An agent that dies is restarted by PID 1.
        let agent_pid = child_pid(init_pid).expect("the agent is PID 1's child");
        // SAFETY: killing the agent process inside the test namespace.
        unsafe { libc::kill(agent_pid as i32, libc::SIGKILL) };
        let start = Instant::now();
        let restarted = loop {
            let again = AgentClient::connect(
                AgentTransport::Unix(socket.clone()),
                TOKEN,
                Duration::from_secs(1),
            )
            .await;
            if let Ok(c) = again {
                break c;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the agent was not restarted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        restarted.health().await.unwrap();
        assert_ne!(child_pid(init_pid), Some(agent_pid));
        init_pid
    }
    .await;

    // SIGTERM to PID 1: stop everything, sync, unmount, reboot (which ends the namespace).
    // SAFETY: signalling the namespace's init, a child of our `unshare` process.
    unsafe { libc::kill(result as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(st) = ns.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = ns.kill();
            panic!("init did not shut down on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = Command::new("losetup").arg("-d").arg(&loopdev).status();
    let log = std::fs::read_to_string(work.path().join("init.log")).unwrap_or_default();
    assert!(log.contains("shutting down"), "init log:\n{log}");
    // reboot(2) from a pid namespace's init ends it with SIGHUP, which `unshare` passes on.
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGHUP),
        "{status:?}\n{log}"
    );
    assert_eq!(sha256(&img), image_sha, "the squashfs image changed");
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host_mounts.contains(work.path().to_str().unwrap()));
}
