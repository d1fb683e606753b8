//! Host readiness checks: can this machine run Firecracker microVMs, and what will not work.
//!
//! Each [`Check`] is independent and never changes the host. The most important subtlety is the
//! KVM flavour: a nested host that exposes KVM through PVM (`kvm_pvm`, no VMX/SVM in the CPU
//! flags) runs the Firecracker VMM fine, but only guest kernels built as PVM guests boot there;
//! a stock guest kernel reaches `Running` on the VMM side and then prints nothing.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Works.
    Ok,
    /// Works with limits, or is only needed by some features.
    Warn,
    /// Missing: VMs cannot run until this is fixed.
    Fail,
}

/// One host check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short stable name (`kvm`, `tun`, ...).
    pub name: &'static str,
    /// Outcome.
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
    /// What to do about it, when something is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    fn new(name: &'static str, status: CheckStatus, detail: impl Into<String>) -> Self {
        Self {
            name,
            status,
            detail: detail.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// The KVM flavour the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvmFlavour {
    /// Hardware virtualization (VMX or SVM): stock guest kernels boot.
    Hardware,
    /// PVM (`kvm_pvm`): only PVM-enabled guest kernels boot.
    Pvm,
    /// `/dev/kvm` exists but the flavour could not be told.
    Unknown,
    /// No `/dev/kvm`.
    Absent,
}

/// Where to look.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// flick's data directory (binaries and images are looked up below it).
    pub data_dir: PathBuf,
    /// The tmpfs runtime directory VMs will use.
    pub runtime_dir: PathBuf,
}

/// Runs every check.
#[must_use]
pub fn run_checks(options: &DoctorOptions) -> Vec<Check> {
    vec![
        check_root(),
        check_kvm(Path::new("/dev/kvm")),
        check_tun(),
        check_tool(
            "nft",
            "nftables (NAT and egress firewall)",
            "apt-get install nftables",
        ),
        check_tool(
            "mkfs.ext4",
            "e2fsprogs (scratch disks, image conversion)",
            "apt-get install e2fsprogs",
        ),
        check_tool(
            "mksquashfs",
            "squashfs-tools (read-only root images)",
            "apt-get install squashfs-tools",
        ),
        check_tmpfs(&options.runtime_dir),
        check_firecracker(&options.data_dir),
        check_images(&options.data_dir),
        check_cgroup_v2(),
    ]
}

fn count_entries(dir: &Path, keep: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| keep(&e.file_name().to_string_lossy()))
        .count()
}

fn check_images(data_dir: &Path) -> Check {
    // Base-image bundles are directories in `<data>/base-images`; OCI images are records in
    // `<data>/images/refs/`.
    let bundles = count_entries(&data_dir.join("base-images"), |n| {
        !n.starts_with('.') && !n.contains('+')
    });
    let images = count_entries(&data_dir.join("images/refs"), |n| n.ends_with(".json"));
    let detail = format!("{bundles} base image(s), {images} OCI image(s) cached");
    if bundles + images > 0 {
        Check::new("images", CheckStatus::Ok, detail)
    } else {
        Check::new("images", CheckStatus::Warn, detail)
            .hint("the first `flick run` downloads a base image; `flick images pull REF` fetches OCI images")
    }
}

/// Tells the KVM flavour from `/proc/cpuinfo` and `/sys/module`.
#[must_use]
pub fn kvm_flavour(dev_kvm: &Path) -> KvmFlavour {
    if !dev_kvm.exists() {
        return KvmFlavour::Absent;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hardware {
        KvmFlavour::Hardware
    } else if Path::new("/sys/module/kvm_pvm").exists() {
        KvmFlavour::Pvm
    } else {
        KvmFlavour::Unknown
    }
}

fn check_root() -> Check {
    if rustix::process::geteuid().is_root() {
        Check::new("root", CheckStatus::Ok, "running as root")
    } else {
        Check::new(
            "root",
            CheckStatus::Warn,
            "not root: bridges, TAPs and nftables need CAP_NET_ADMIN",
        )
        .hint("run as root, or use the jailer with a pre-made network")
    }
}

fn check_kvm(dev_kvm: &Path) -> Check {
    let flavour = kvm_flavour(dev_kvm);
    if flavour == KvmFlavour::Absent {
        return Check::new("kvm", CheckStatus::Fail, "/dev/kvm does not exist")
            .hint("enable virtualization (VMX/SVM) or load kvm_intel/kvm_amd");
    }
    let file = match OpenOptions::new().read(true).write(true).open(dev_kvm) {
        Ok(f) => f,
        Err(e) => {
            return Check::new(
                "kvm",
                CheckStatus::Fail,
                format!("/dev/kvm cannot be opened read-write: {e}"),
            )
            .hint("add the user to the kvm group or run as root");
        }
    };
    // KVM_GET_API_VERSION = _IO(KVMIO, 0x00); the stable API answers 12.
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    // SAFETY: the fd is a valid open /dev/kvm for the duration of the call, and this ioctl
    // takes no argument and only returns an integer.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version != 12 {
        return Check::new(
            "kvm",
            CheckStatus::Fail,
            format!("KVM_GET_API_VERSION answered {version}, expected 12"),
        );
    }
    match flavour {
        KvmFlavour::Pvm => Check::new(
            "kvm",
            CheckStatus::Warn,
            "KVM API 12 through PVM (kvm_pvm, no VMX/SVM): the Firecracker VMM runs, but only \
             guest kernels built as PVM guests boot; stock guest kernels reach Running and print nothing",
        )
        .hint("use a PVM-enabled guest kernel, or a host with hardware virtualization"),
        KvmFlavour::Unknown => Check::new(
            "kvm",
            CheckStatus::Warn,
            "KVM API 12, but neither VMX/SVM nor PVM was detected",
        ),
        _ => Check::new(
            "kvm",
            CheckStatus::Ok,
            "KVM API 12 with hardware virtualization",
        ),
    }
}

fn check_tun() -> Check {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => Check::new("tun", CheckStatus::Ok, "/dev/net/tun opens read-write"),
        Err(e) => Check::new(
            "tun",
            CheckStatus::Fail,
            format!("/dev/net/tun cannot be opened: {e}"),
        )
        .hint("the kernel needs CONFIG_TUN; VMs with networking cannot start"),
    }
}

/// Finds an executable on `PATH` (and the sbin directories root usually has).
#[must_use]
pub fn find_executable(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file with an execute bit.
#[must_use]
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn check_tool(name: &'static str, what: &str, install: &str) -> Check {
    match find_executable(name) {
        Some(path) => Check::new(name, CheckStatus::Ok, format!("{what}: {}", path.display())),
        None => Check::new(name, CheckStatus::Warn, format!("{what}: not found")).hint(install),
    }
}

fn check_tmpfs(runtime_dir: &Path) -> Check {
    // Walk up to the first existing ancestor: the runtime dir is created on first use.
    let mut probe = runtime_dir;
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    match rustix::fs::statfs(probe) {
        Ok(st) => {
            const TMPFS_MAGIC: i64 = 0x0102_1994;
            #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
            let is_tmpfs = i64::from(st.f_type as i64) == TMPFS_MAGIC;
            #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
            let free = (st.f_bavail as u64).saturating_mul(st.f_bsize as u64);
            let detail = format!(
                "{} ({}): {} MiB free",
                runtime_dir.display(),
                if is_tmpfs { "tmpfs" } else { "not tmpfs" },
                free / (1024 * 1024)
            );
            if is_tmpfs {
                Check::new("runtime_dir", CheckStatus::Ok, detail)
            } else {
                Check::new("runtime_dir", CheckStatus::Warn, detail).hint(
                    "a tmpfs runtime dir keeps writable drive copies in memory and gone at reboot",
                )
            }
        }
        Err(e) => Check::new(
            "runtime_dir",
            CheckStatus::Warn,
            format!("cannot stat {}: {e}", probe.display()),
        ),
    }
}

fn check_firecracker(data_dir: &Path) -> Check {
    // `<data>/bin/<version>/<arch>/firecracker`, as the artifact cache lays binaries out.
    let arch = std::env::consts::ARCH;
    let cached = std::fs::read_dir(data_dir.join("bin"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(arch).join("firecracker"))
        .find(|p| is_executable(p));
    match cached.or_else(|| find_executable("firecracker")) {
        Some(path) => Check::new(
            "firecracker",
            CheckStatus::Ok,
            format!("binary at {}", path.display()),
        ),
        None => Check::new(
            "firecracker",
            CheckStatus::Warn,
            format!(
                "no Firecracker binary in {} or on PATH",
                data_dir.join("bin").display()
            ),
        )
        .hint("it is downloaded and verified on first use"),
    }
}

fn check_cgroup_v2() -> Check {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        Check::new("cgroup_v2", CheckStatus::Ok, "cgroup v2 is mounted")
    } else {
        Check::new("cgroup_v2", CheckStatus::Warn, "cgroup v2 is not mounted")
            .hint("the jailer's CPU and memory limits need cgroup v2")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_kvm_fails_with_a_hint() {
        let check = check_kvm(Path::new("/nonexistent/kvm"));
        assert_eq!(check.status, CheckStatus::Fail);
        assert!(check.hint.is_some());
        assert_eq!(
            kvm_flavour(Path::new("/nonexistent/kvm")),
            KvmFlavour::Absent
        );
    }

    #[test]
    fn every_check_has_a_unique_name_and_hints_when_not_ok() {
        let dir = tempfile::tempdir().unwrap();
        let checks = run_checks(&DoctorOptions {
            data_dir: dir.path().to_path_buf(),
            runtime_dir: dir.path().join("runtime"),
        });
        let mut names = std::collections::BTreeSet::new();
        for c in &checks {
            assert!(names.insert(c.name), "duplicate check {}", c.name);
            if c.status != CheckStatus::Ok {
                assert!(c.hint.is_some() || c.name == "kvm", "{c:?} has no hint");
            }
        }
        // An empty data dir has no cached Firecracker binary.
        let fc = checks.iter().find(|c| c.name == "firecracker").unwrap();
        if find_executable("firecracker").is_none() {
            assert_eq!(fc.status, CheckStatus::Warn);
        }
    }

    #[test]
    fn a_cached_binary_is_found() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin/v1.16.1").join(std::env::consts::ARCH);
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("firecracker"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            bin.join("firecracker"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let check = check_firecracker(dir.path());
        assert_eq!(check.status, CheckStatus::Ok);
        assert!(check.detail.contains("v1.16.1/"), "{}", check.detail);
    }
}
