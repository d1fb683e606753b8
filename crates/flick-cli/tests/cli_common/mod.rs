//! Running the built `flick` binary against the Firecracker double, with the agent as a host
//! process behind the double's vsock emulation, inside a private network namespace (so the
//! bridge, TAPs and nftables table are real but invisible to the host and to other tests).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

pub const TOKEN: &str = "cli-test-token-42";

/// One isolated flick installation: data dir, runtime dir, network namespace, host agent.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub netns: String,
    pub agent: Child,
    pub agent_socket: PathBuf,
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Env {
    pub fn new() -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "the CLI tests need root (network namespaces, TAPs, nftables)"
        );
        let dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs temp dir");
        let netns = format!(
            "flcli{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run_ok(Command::new("ip").args(["netns", "add", &netns]));
        run_ok(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]));
        let agent_socket = dir.path().join("agent.sock");
        let agent = Command::new(flick_testkit::workspace_binary(
            "flick-agent",
            "flick-agent",
        ))
        .arg("--unix")
        .arg(&agent_socket)
        .arg("--token")
        .arg(TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flick-agent");
        for _ in 0..500 {
            if agent_socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(agent_socket.exists(), "the agent did not listen");
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"kernel bytes: the double only opens the file").unwrap();
        let rootfs = dir.path().join("rootfs.ext4");
        std::fs::File::create(&rootfs)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        Self {
            dir,
            netns,
            agent,
            agent_socket,
            kernel,
            rootfs,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("runtime")
    }

    /// The `flick` command with this environment, run inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(env!("CARGO_BIN_EXE_flick"));
        self.configure(&mut cmd, args);
        cmd
    }

    /// The `flick` command with this environment in the host's own network namespace (to
    /// reach servers on the host's loopback; use it only with `--no-network`).
    pub fn host_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flick"));
        self.configure(&mut cmd, args);
        cmd
    }

    fn configure(&self, cmd: &mut Command, args: &[&str]) {
        cmd.args(args)
            .env("FLICK_DATA_DIR", self.data_dir())
            .env("FLICK_RUNTIME_DIR", self.runtime_dir())
            .env("FLICK_FIRECRACKER", flick_testkit::fc_double_path())
            .env(
                "FLICK_AGENT_BIN",
                flick_testkit::workspace_binary("flick-agent", "flick-agent"),
            )
            .env("FLICK_AGENT_TOKEN", TOKEN)
            .env(
                "FLICK_DNS_HELPER",
                flick_testkit::workspace_binary("flick", "flick-dns"),
            )
            .env(
                "FC_DOUBLE_VSOCK_PORTS",
                format!("1024={}", self.agent_socket.display()),
            )
            .env("FLICK_KERNEL", &self.kernel)
            .env("FLICK_ROOTFS", &self.rootfs)
            .env("NO_COLOR", "1")
            .env_remove("FLICK_CRASH_AT")
            .stdin(Stdio::null());
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run flick")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "flick {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `--json`, asserts success, parses the document.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let text = self.ok(&full);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
    }

    /// Interfaces in the namespace, by name.
    pub fn links(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", &self.netns, "-j", "link", "show"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(vec![]));
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .filter(|n| n != "lo")
            .collect()
    }

    /// The namespace's nftables ruleset, as text.
    pub fn nft(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "nft", "list", "ruleset"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Live processes marked as VMs of this data dir.
    pub fn marked_processes(&self) -> Vec<i32> {
        let mark = format!("FLICK_VM_OWNER={}\t", self.data_dir().display());
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let marked = std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    env.split(|b| *b == 0)
                        .any(|v| v.starts_with(mark.as_bytes()))
                });
                // Jailed ones have a cleared environment and a jail as their root.
                let jailed = std::fs::read_link(format!("/proc/{pid}/root"))
                    .is_ok_and(|root| root.starts_with(self.runtime_dir().join("jailer")));
                (marked || jailed)
                    && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                        !s.rsplit(')')
                            .next()
                            .unwrap_or("")
                            .trim_start()
                            .starts_with('Z')
                    })
            })
            .collect()
    }

    /// Entries of the runtime dir (the `.view` mount point excluded).
    pub fn runtime_entries(&self) -> Vec<String> {
        dir_names(&self.runtime_dir())
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect()
    }

    /// VM record files.
    pub fn records(&self) -> Vec<String> {
        dir_names(&self.data_dir().join("vms"))
            .into_iter()
            .filter(|n| n.ends_with(".json"))
            .collect()
    }
}

pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever a failed test left running goes with it.
        for pid in self.marked_processes() {
            let _ = rustix::process::kill_process_group(
                rustix::process::Pid::from_raw(pid).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}
