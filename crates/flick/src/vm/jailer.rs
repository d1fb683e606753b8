//! Running Firecracker through Firecracker's `jailer`.
//!
//! The jailer (v1.16.1) builds `<chroot base>/<exec-file name>/<jail id>/root/`, copies the
//! Firecracker binary into it, joins the network namespace, creates the cgroup
//! `<cgroup v2 root>/<parent cgroup, default exec-file name>/<jail id>/` with the limits it is
//! given, chroots, optionally daemonizes (double fork, new session, stdio on `/dev/null`) and
//! clones into a new pid namespace, drops to uid:gid and execs Firecracker. It writes the pid of
//! the process running Firecracker to `/<exec-file name>.pid` inside the jail.
//!
//! flick's side, per VM:
//! 1. The jail root **is** the VM's runtime directory (`create_runtime_dir`): flick creates
//!    it before the jailer runs (the jailer accepts an existing directory) and stages writable
//!    drives straight into `drives/` there, sparse, as without the jailer.
//! 2. Kernel, initrd and the other drives are hard-linked into the jail (`boot/kernel`,
//!    `boot/initrd`, `drives/<id>.img`), or copied (sparse) when a link is impossible (another
//!    filesystem) or the jailed user could not read the original; copies and staged drives are
//!    given to uid:gid (`place_files`). Firecracker only ever receives jail-relative paths
//!    (the VM runs with the view `/`, see [`VmRuntimeOptions::view_dir`]).
//! 3. The API socket is `/firecracker.sock` inside the jail, i.e. the runtime dir's socket.
//! 4. With `--daemonize` or `--new-pid-ns` the process flick spawned is not Firecracker: flick
//!    waits for it to exit, reads the pid file and supervises that process by pid and start
//!    time (`follow_daemon`).
//! 5. Cleanup after the jailer is the caller's job (Firecracker's docs say so): flick removes
//!    `<chroot base>/<exec-file name>/<jail id>/` and the VM's cgroup directory
//!    (`remove_jail`). On a real cgroup v2 filesystem the cgroup is removed with `rmdir`; a
//!    cgroup root on any other filesystem (a stand-in directory) is removed recursively.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::microvm::{VmRuntimeOptions, fc_path};
use crate::config::{Overrides, VmConfig};
use crate::error::{Error, ErrorCode, Result};
use crate::process::{ProcessIdentity, ProcessSpec, SupervisedProcess};
use crate::runtime::RuntimeDir;
use crate::runtime::staging::stage_file;

/// The jailer's limit on instance ids.
const MAX_JAIL_ID_LEN: usize = 64;
/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// `cpu.max` of the VM's cgroup: `quota_us` of CPU time per `period_us` (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuMax {
    /// Microseconds of CPU time per period (`None` writes `max`).
    pub quota_us: Option<u64>,
    /// Period in microseconds (the kernel accepts 1000 to 1000000).
    pub period_us: u64,
}

impl CpuMax {
    /// `cpus` CPUs' worth of time per 100 ms period (`0.5` = half a CPU).
    #[must_use]
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a CPU share times 100000 is a small positive number"
    )]
    pub fn cpus(cpus: f64) -> Self {
        Self {
            quota_us: Some((cpus * 100_000.0).round().max(0.0) as u64),
            period_us: 100_000,
        }
    }

    fn value(&self) -> String {
        match self.quota_us {
            Some(q) => format!("{q} {}", self.period_us),
            None => format!("max {}", self.period_us),
        }
    }
}

/// How to run a VM through Firecracker's `jailer`. See the module docs for what flick does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailerOptions {
    /// The `jailer` binary.
    pub jailer_bin: PathBuf,
    /// `--uid`: the user Firecracker runs as.
    pub uid: u32,
    /// `--gid`: the group Firecracker runs as.
    pub gid: u32,
    /// `--chroot-base-dir` (default: `<runtime root>/jailer`, on the same tmpfs as the runtime
    /// dirs so writable drives are staged there cheaply). Created if missing.
    pub chroot_base_dir: Option<PathBuf>,
    /// `--netns`: a network namespace handle such as `/var/run/netns/<name>`.
    pub netns: Option<PathBuf>,
    /// `--daemonize` (default true).
    pub daemonize: bool,
    /// `--new-pid-ns` (default true).
    pub new_pid_ns: bool,
    /// `--cgroup cpu.max=...` (cgroup version 2).
    pub cpu_max: Option<CpuMax>,
    /// `--cgroup memory.max=<bytes>` (cgroup version 2).
    pub memory_max: Option<u64>,
    /// `--parent-cgroup` (the jailer's default is the exec file's name).
    pub parent_cgroup: Option<String>,
    /// Where the cgroup v2 hierarchy is, so the VM's cgroup can be removed on cleanup
    /// (default: the first `cgroup2` mount in `/proc/mounts`, as the jailer finds it).
    pub cgroup_root: Option<PathBuf>,
}

impl JailerOptions {
    /// A daemonizing jailer with a new pid namespace, no cgroup limits, default chroot base.
    pub fn new(jailer_bin: impl Into<PathBuf>, uid: u32, gid: u32) -> Self {
        Self {
            jailer_bin: jailer_bin.into(),
            uid,
            gid,
            chroot_base_dir: None,
            netns: None,
            daemonize: true,
            new_pid_ns: true,
            cpu_max: None,
            memory_max: None,
            parent_cgroup: None,
            cgroup_root: None,
        }
    }

    fn has_cgroups(&self) -> bool {
        self.cpu_max.is_some() || self.memory_max.is_some()
    }

    /// Every problem with these options (and the Firecracker binary they will exec) at once.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidConfig`] listing the problems in `details.problems`.
    pub fn validate(&self, firecracker_bin: &Path) -> Result<()> {
        let mut problems: Vec<String> = Vec::new();
        if !crate::doctor::is_executable(&self.jailer_bin) {
            problems.push(format!(
                "jailer_bin: {} is missing or not executable",
                self.jailer_bin.display()
            ));
        }
        match exec_name(firecracker_bin) {
            Some(name) if name.contains("firecracker") => {}
            Some(name) => problems.push(format!(
                "the jailer only execs a file whose name contains \"firecracker\"; got {name:?}"
            )),
            None => problems.push(format!(
                "firecracker binary {} does not exist",
                firecracker_bin.display()
            )),
        }
        if let Some(base) = &self.chroot_base_dir
            && !base.is_absolute()
        {
            problems.push(format!(
                "chroot_base_dir must be absolute: {}",
                base.display()
            ));
        }
        if let Some(netns) = &self.netns
            && (!netns.is_absolute() || !netns.exists())
        {
            problems.push(format!(
                "netns must be an existing absolute path: {}",
                netns.display()
            ));
        }
        if let Some(cpu) = &self.cpu_max {
            if !(1000..=1_000_000).contains(&cpu.period_us) {
                problems.push(format!(
                    "cpu_max.period_us must be 1000..=1000000, got {}",
                    cpu.period_us
                ));
            }
            if let Some(q) = cpu.quota_us
                && q < 1000
            {
                problems.push(format!("cpu_max.quota_us must be at least 1000, got {q}"));
            }
        }
        if self.memory_max == Some(0) {
            problems.push("memory_max must be more than 0 bytes".to_string());
        }
        if let Some(parent) = &self.parent_cgroup {
            let path = Path::new(parent);
            if parent.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
                problems.push(format!(
                    "parent_cgroup must be a relative path without . or ..: {parent:?}"
                ));
            }
        }
        if let Some(root) = &self.cgroup_root
            && !root.is_absolute()
        {
            problems.push(format!("cgroup_root must be absolute: {}", root.display()));
        }
        if self.has_cgroups() && self.cgroup_root.is_none() && cgroup2_mount().is_none() {
            problems.push(
                "cgroup limits need a cgroup v2 hierarchy: none is mounted (set cgroup_root)"
                    .to_string(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(
                Error::new(ErrorCode::InvalidConfig, "invalid jailer options")
                    .with_details(json!({ "problems": problems })),
            )
        }
    }
}

/// Settings of a VM config that name host paths Firecracker would open by itself, which a
/// jailed Firecracker cannot see.
///
/// # Errors
/// [`ErrorCode::InvalidConfig`] listing them.
pub fn check_config(config: &VmConfig) -> Result<()> {
    let mut problems: Vec<String> = Vec::new();
    if config.logger.is_some() {
        problems.push("logger: not supported with the jailer (Firecracker's output goes to the runtime dir's firecracker.log)".into());
    }
    if config.metrics.is_some() {
        problems.push("metrics: not supported with the jailer".into());
    }
    if config
        .serial
        .as_ref()
        .is_some_and(|s| s.serial_out_path.is_some())
    {
        problems.push(
            "serial.serial_out_path: the jailed console goes to serial.log in the jail".into(),
        );
    }
    if config.vsock.as_ref().is_some_and(|v| v.uds_path.is_some()) {
        problems.push("vsock.uds_path: the jailed vsock socket is vsock.sock in the jail".into());
    }
    if !config.pmem.is_empty() {
        problems.push("pmem: not supported with the jailer".into());
    }
    if config
        .drives
        .iter()
        .any(crate::config::Drive::is_vhost_user)
    {
        problems.push("vhost-user drives: not supported with the jailer".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidConfig,
            "config not usable with the jailer",
        )
        .with_details(json!({ "problems": problems })))
    }
}

/// With a jailer, Firecracker's paths are jail-relative: the jail root is the runtime dir,
/// seen by Firecracker as `/`.
pub(crate) fn normalize(mut options: VmRuntimeOptions) -> VmRuntimeOptions {
    if options.jailer.is_some() {
        options.view_dir = Some(PathBuf::from("/"));
    }
    options
}

/// The jailer's `--id` for a VM: the id itself when the jailer accepts it (letters, digits and
/// `-`, at most 64), else a mapped form with a hash of the original appended.
#[must_use]
pub fn jail_id(vm_id: &str) -> String {
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '-';
    if !vm_id.is_empty() && vm_id.len() <= MAX_JAIL_ID_LEN && vm_id.chars().all(valid) {
        return vm_id.to_string();
    }
    let hash = hex::encode(&Sha256::digest(vm_id.as_bytes())[..4]);
    let mapped: String = vm_id
        .chars()
        .map(|c| if valid(c) { c } else { '-' })
        .take(MAX_JAIL_ID_LEN - 9)
        .collect();
    format!("{mapped}-{hash}")
}

fn exec_name(firecracker_bin: &Path) -> Option<String> {
    // The jailer names the jail after the canonical exec file (symlinks resolved).
    let canonical = fs::canonicalize(firecracker_bin).ok()?;
    canonical.file_name()?.to_str().map(str::to_string)
}

fn cgroup2_mount() -> Option<PathBuf> {
    fs::read_to_string("/proc/mounts")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
}

/// Where a VM's jail and cgroup live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPaths {
    /// `<chroot base>/<exec-file name>/<jail id>`: removed on cleanup.
    pub instance_dir: PathBuf,
    /// `<instance dir>/root`: the jail root and the VM's runtime dir.
    pub chroot_dir: PathBuf,
    /// The VM's cgroup, when limits are set.
    pub cgroup_dir: Option<PathBuf>,
    /// The exec file's name inside the jail.
    pub exec_name: String,
}

fn chroot_base(jailer: &JailerOptions, options: &VmRuntimeOptions) -> PathBuf {
    let base = jailer
        .chroot_base_dir
        .clone()
        .unwrap_or_else(|| options.runtime_root.join("jailer"));
    fs::canonicalize(&base).unwrap_or(base)
}

/// The jail of VM `id` under these options (`None` without a jailer).
#[must_use]
pub fn jail_paths(options: &VmRuntimeOptions, id: &str) -> Option<JailPaths> {
    let jailer = options.jailer.as_ref()?;
    let exec_name = exec_name(&options.firecracker_bin).unwrap_or_else(|| {
        options.firecracker_bin.file_name().map_or_else(
            || "firecracker".into(),
            |n| n.to_string_lossy().into_owned(),
        )
    });
    let jail = jail_id(id);
    let instance_dir = chroot_base(jailer, options).join(&exec_name).join(&jail);
    let cgroup_dir = jailer
        .has_cgroups()
        .then(|| jailer.cgroup_root.clone().or_else(cgroup2_mount))
        .flatten()
        .map(|root| {
            root.join(jailer.parent_cgroup.as_deref().unwrap_or(&exec_name))
                .join(&jail)
        });
    Some(JailPaths {
        chroot_dir: instance_dir.join("root"),
        instance_dir,
        cgroup_dir,
        exec_name,
    })
}

/// The VM's runtime dir: the jail root with a jailer, else `<runtime root>/<id>`.
pub(crate) fn create_runtime_dir(options: &VmRuntimeOptions, id: &str) -> Result<RuntimeDir> {
    let Some(paths) = jail_paths(options, id) else {
        return RuntimeDir::create(&options.runtime_root, id);
    };
    if paths.instance_dir.exists() {
        return Err(Error::new(
            ErrorCode::AlreadyExists,
            format!("jail {} exists already", paths.instance_dir.display()),
        ));
    }
    RuntimeDir::create(&paths.instance_dir, "root")
}

fn chown(path: &Path, jailer: &JailerOptions) -> Result<()> {
    rustix::fs::chown(
        path,
        Some(rustix::fs::Uid::from_raw(jailer.uid)),
        Some(rustix::fs::Gid::from_raw(jailer.gid)),
    )
    .map_err(|e| {
        Error::io(
            ErrorCode::DriveStagingFailed,
            "cannot give to the jailed user",
            path,
            e.into(),
        )
    })
}

/// Whether uid:gid may read (and, with `write`, write) a file, judged by its mode bits.
fn accessible(meta: &fs::Metadata, jailer: &JailerOptions, write: bool) -> bool {
    if jailer.uid == 0 {
        return true;
    }
    let mode = meta.permissions().mode();
    let (r, w) = if meta.uid() == jailer.uid {
        (0o400, 0o200)
    } else if meta.gid() == jailer.gid {
        (0o040, 0o020)
    } else {
        (0o004, 0o002)
    };
    mode & r != 0 && (!write || mode & w != 0)
}

/// How a file got into the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JailPlacement {
    /// A hard link: the same file, no copy.
    HardLink,
    /// A sparse copy owned by the jailed user.
    Copy,
}

/// Hard-links `source` to `dest` (read-only use), or copies it sparsely and gives the copy to
/// uid:gid when a link is impossible or the jailed user could not read the original.
fn link_or_copy(source: &Path, dest: &Path, jailer: &JailerOptions) -> Result<JailPlacement> {
    let meta = fs::metadata(source)
        .map_err(|e| Error::io(ErrorCode::DriveStagingFailed, "cannot stat", source, e))?;
    if accessible(&meta, jailer, false) && fs::hard_link(source, dest).is_ok() {
        return Ok(JailPlacement::HardLink);
    }
    stage_file(source, dest, ErrorCode::DriveStagingFailed)?;
    chown(dest, jailer)?;
    Ok(JailPlacement::Copy)
}

fn make_owned_dir(path: &Path, jailer: &JailerOptions) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(Error::io(
                ErrorCode::DriveStagingFailed,
                "cannot create",
                path,
                e,
            ));
        }
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    chown(path, jailer)
}

/// Puts the kernel, the initrd and every drive into the jail and points `overrides` at their
/// jail-relative paths. Drives already staged (their `overrides.drive_paths` entries) are given
/// to uid:gid. No-op without a jailer.
pub(crate) fn place_files(
    options: &VmRuntimeOptions,
    config: &VmConfig,
    runtime: &RuntimeDir,
    overrides: &mut Overrides,
) -> Result<()> {
    let Some(jailer) = &options.jailer else {
        return Ok(());
    };
    let view = options.view_dir.as_deref();
    let boot = runtime.path().join("boot");
    make_owned_dir(&boot, jailer)?;
    make_owned_dir(&runtime.drives_dir(), jailer)?;
    let kernel = boot.join("kernel");
    link_or_copy(&config.boot_source.kernel_image_path, &kernel, jailer)?;
    overrides.kernel_image_path = Some(fc_path(view, runtime, &kernel));
    if let Some(initrd) = &config.boot_source.initrd_path {
        let dest = boot.join("initrd");
        link_or_copy(initrd, &dest, jailer)?;
        overrides.initrd_path = Some(fc_path(view, runtime, &dest));
    }
    for drive in &config.drives {
        let Some(source) = &drive.path_on_host else {
            continue;
        };
        let dest = runtime.drives_dir().join(format!("{}.img", drive.drive_id));
        if overrides.drive_paths.contains_key(&drive.drive_id) {
            // A private staged copy: Firecracker writes to it as uid:gid.
            chown(&dest, jailer)?;
            continue;
        }
        if drive.is_read_only {
            link_or_copy(source, &dest, jailer)?;
        } else {
            // A persistent writable drive: Firecracker must write the caller's own file, so
            // only a hard link will do.
            fs::hard_link(source, &dest).map_err(|e| {
                Error::io(
                    ErrorCode::DriveStagingFailed,
                    "a persistent writable drive must be on the jail's filesystem to be \
                     hard-linked into it",
                    source,
                    e,
                )
            })?;
        }
        overrides
            .drive_paths
            .insert(drive.drive_id.clone(), fc_path(view, runtime, &dest));
    }
    Ok(())
}

/// Before a restore: gives the staged drive copies to uid:gid, and puts the snapshot's state
/// and memory files (`/snapshot/vm.snap`, `/snapshot/vm.mem`) and its shared drives (at the
/// jail paths the snapshot recorded) into the jail. Returns the state and memory paths to give
/// Firecracker: jail-relative with a jailer, the snapshot's own files without.
pub(crate) fn place_restore_files(
    options: &VmRuntimeOptions,
    snapshot: &super::snapshot::Snapshot,
    runtime: &RuntimeDir,
    staged: &[super::microvm::StagedDrive],
) -> Result<(PathBuf, PathBuf)> {
    let Some(jailer) = &options.jailer else {
        return Ok((snapshot.state_path.clone(), snapshot.mem_path.clone()));
    };
    let fail = |e: Error| {
        Error::new(
            ErrorCode::RestoreFailed,
            "cannot prepare the jail for a restore",
        )
        .with_source(e)
    };
    make_owned_dir(&runtime.drives_dir(), jailer).map_err(fail)?;
    for drive in staged {
        chown(&drive.staged, jailer).map_err(fail)?;
    }
    // Drives the snapshot did not copy (shared, read-only) are linked where they were.
    for drive in &snapshot.config.drives {
        let (Some(source), Some(recorded)) = (
            &drive.path_on_host,
            snapshot
                .effective_config
                .drives
                .iter()
                .find(|d| d.drive_id == drive.drive_id)
                .and_then(|d| d.path_on_host.as_ref()),
        ) else {
            continue;
        };
        if staged.iter().any(|s| s.drive_id == drive.drive_id) {
            continue;
        }
        let Ok(rel) = recorded.strip_prefix("/") else {
            continue;
        };
        let dest = runtime.path().join(rel);
        if let Some(parent) = dest.parent() {
            make_owned_dir(parent, jailer).map_err(fail)?;
        }
        link_or_copy(source, &dest, jailer).map_err(fail)?;
    }
    let dir = runtime.path().join("snapshot");
    make_owned_dir(&dir, jailer).map_err(fail)?;
    let state = dir.join("vm.snap");
    let mem = dir.join("vm.mem");
    link_or_copy(&snapshot.state_path, &state, jailer).map_err(fail)?;
    link_or_copy(&snapshot.mem_path, &mem, jailer).map_err(fail)?;
    let view = options.view_dir.as_deref();
    Ok((fc_path(view, runtime, &state), fc_path(view, runtime, &mem)))
}

/// Spawns the jailer for a VM. Its stdout/stderr (and, without `--daemonize`, Firecracker's)
/// go to the runtime dir's `firecracker.log`.
pub(crate) fn spawn(
    options: &VmRuntimeOptions,
    runtime: &RuntimeDir,
    id: &str,
) -> Result<SupervisedProcess> {
    let jailer = options
        .jailer
        .as_ref()
        .ok_or_else(|| Error::new(ErrorCode::Internal, "no jailer configured"))?;
    let exec_file = fs::canonicalize(&options.firecracker_bin).map_err(|e| {
        Error::io(
            ErrorCode::BinaryNotFound,
            "cannot resolve",
            &options.firecracker_bin,
            e,
        )
    })?;
    let mut spec = ProcessSpec::new(&jailer.jailer_bin, runtime.log_path())
        .arg("--id")
        .arg(jail_id(id))
        .arg("--exec-file")
        .arg(exec_file)
        .arg("--uid")
        .arg(jailer.uid.to_string())
        .arg("--gid")
        .arg(jailer.gid.to_string())
        .arg("--chroot-base-dir")
        .arg(chroot_base(jailer, options))
        .arg("--cgroup-version")
        .arg("2");
    if let Some(netns) = &jailer.netns {
        spec = spec.arg("--netns").arg(netns);
    }
    if jailer.daemonize {
        spec = spec.arg("--daemonize");
    }
    if jailer.new_pid_ns {
        spec = spec.arg("--new-pid-ns");
    }
    if let Some(parent) = &jailer.parent_cgroup {
        spec = spec.arg("--parent-cgroup").arg(parent);
    }
    if let Some(cpu) = &jailer.cpu_max {
        spec = spec.arg("--cgroup").arg(format!("cpu.max={}", cpu.value()));
    }
    if let Some(mem) = jailer.memory_max {
        spec = spec.arg("--cgroup").arg(format!("memory.max={mem}"));
    }
    spec = spec.arg("--").arg("--api-sock").arg(fc_path(
        options.view_dir.as_deref(),
        runtime,
        &runtime.api_socket(),
    ));
    spec.args.extend(options.extra_args.iter().cloned());
    spec.env.extend(options.env.iter().cloned());
    spec.cwd = Some(runtime.path().to_path_buf());
    SupervisedProcess::spawn(&spec)
}

/// With `--daemonize` or `--new-pid-ns`, waits for the spawned jailer to finish and replaces
/// it in `slot` by the process running Firecracker, found through the jail's pid file.
/// Without a jailer, or without either flag (the jailer *becomes* Firecracker), does nothing.
pub(crate) async fn follow_daemon(
    options: &VmRuntimeOptions,
    runtime: &RuntimeDir,
    id: &str,
    slot: &mut Option<SupervisedProcess>,
) -> Result<()> {
    let (Some(jailer), Some(paths)) = (&options.jailer, jail_paths(options, id)) else {
        return Ok(());
    };
    if !jailer.daemonize && !jailer.new_pid_ns {
        return Ok(());
    }
    let spawned = slot
        .as_mut()
        .ok_or_else(|| Error::new(ErrorCode::Internal, "no jailer process"))?;
    let deadline = Instant::now() + options.start_timeout;
    let status = spawned
        .wait_timeout(options.start_timeout)
        .await
        .ok_or_else(|| {
            Error::new(
                ErrorCode::ProcessFailed,
                format!(
                    "the jailer did not finish within {:?}",
                    options.start_timeout
                ),
            )
        })?;
    if !status.success() {
        return Err(Error::new(
            ErrorCode::ProcessFailed,
            format!("the jailer failed ({status})"),
        ));
    }
    // The daemon writes the pid file after the process we spawned has exited.
    let pid_file = runtime.path().join(format!("{}.pid", paths.exec_name));
    let identity = loop {
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(identity) = pid.and_then(|p| ProcessIdentity::of(p).ok()) {
            break identity;
        }
        if Instant::now() >= deadline {
            return Err(Error::new(
                ErrorCode::ProcessFailed,
                format!(
                    "no live Firecracker named by {} after the jailer finished",
                    pid_file.display()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    *slot = Some(SupervisedProcess::adopt(identity, runtime.log_path())?);
    Ok(())
}

/// Removes the jail (`<chroot base>/<exec-file name>/<jail id>/`) and the VM's cgroup.
/// Idempotent; no-op without a jailer. Call it once Firecracker is gone.
///
/// # Errors
/// [`ErrorCode::CleanupFailed`] naming what could not be removed (the rest is).
pub(crate) fn remove_jail(options: &VmRuntimeOptions, id: &str) -> Result<()> {
    let Some(paths) = jail_paths(options, id) else {
        return Ok(());
    };
    let mut failures = Vec::new();
    match fs::remove_dir_all(&paths.instance_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => failures.push(format!("{}: {e}", paths.instance_dir.display())),
    }
    if let Some(cgroup) = &paths.cgroup_dir
        && let Err(e) = remove_cgroup(cgroup)
    {
        failures.push(format!("{}: {e}", cgroup.display()));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(
            Error::new(ErrorCode::CleanupFailed, "jail not fully removed")
                .with_details(json!({ "failures": failures })),
        )
    }
}

fn remove_cgroup(dir: &Path) -> std::io::Result<()> {
    #[allow(
        clippy::useless_conversion,
        reason = "f_type is i64 on x86_64 but a narrower type on other architectures"
    )]
    let on_cgroupfs = rustix::fs::statfs(dir)
        .map(|s| i64::from(s.f_type) == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    let result = if on_cgroupfs {
        // The kernel refuses while a (dying) process is still a member: retry briefly.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match fs::remove_dir(dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other,
            }
        }
    } else {
        fs::remove_dir_all(dir)
    };
    match result {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Where a jailed Firecracker writes a snapshot, and how the files get to the snapshot dir.
#[derive(Debug)]
pub(crate) struct SnapshotPlacement {
    /// State file path as Firecracker sees it.
    pub fc_state: PathBuf,
    /// Memory file path as Firecracker sees it.
    pub fc_mem: PathBuf,
    jail_dir: Option<PathBuf>,
}

impl SnapshotPlacement {
    /// Without a jailer, Firecracker writes the final files directly; with one, into a
    /// `snapshot/` directory in the jail owned by uid:gid.
    pub(crate) fn new(
        options: &VmRuntimeOptions,
        runtime: &RuntimeDir,
        state: &Path,
        mem: &Path,
    ) -> Result<Self> {
        let Some(jailer) = &options.jailer else {
            return Ok(Self {
                fc_state: state.to_path_buf(),
                fc_mem: mem.to_path_buf(),
                jail_dir: None,
            });
        };
        let dir = runtime.path().join("snapshot");
        make_owned_dir(&dir, jailer).map_err(|e| {
            Error::new(
                ErrorCode::SnapshotFailed,
                "cannot prepare the jail for a snapshot",
            )
            .with_source(e)
        })?;
        let view = options.view_dir.as_deref();
        Ok(Self {
            fc_state: fc_path(view, runtime, &dir.join("vm.snap")),
            fc_mem: fc_path(view, runtime, &dir.join("vm.mem")),
            jail_dir: Some(dir),
        })
    }

    /// Moves the files Firecracker wrote in the jail to `state` and `mem` (renamed, or copied
    /// sparsely across filesystems) and removes the jail's snapshot directory.
    pub(crate) fn finish(self, state: &Path, mem: &Path) -> Result<()> {
        let Some(dir) = self.jail_dir else {
            return Ok(());
        };
        let result = [("vm.snap", state), ("vm.mem", mem)]
            .into_iter()
            .try_for_each(|(name, dest)| {
                let src = dir.join(name);
                if fs::rename(&src, dest).is_err() {
                    stage_file(&src, dest, ErrorCode::SnapshotFailed)?;
                }
                Ok(())
            });
        let _ = fs::remove_dir_all(&dir);
        result
    }

    /// Removes the jail's snapshot directory after a failure.
    pub(crate) fn abandon(self) {
        if let Some(dir) = self.jail_dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_ids_are_what_the_jailer_accepts() {
        assert_eq!(jail_id("vm-1"), "vm-1");
        let mapped = jail_id("my_vm.2");
        assert!(mapped.starts_with("my-vm-2-"), "{mapped}");
        assert_ne!(jail_id("a_b"), jail_id("a.b"), "distinct ids stay distinct");
        let long = jail_id(&"x".repeat(200));
        assert!(long.len() <= MAX_JAIL_ID_LEN, "{}", long.len());
        for id in [mapped, long, jail_id("ä/../x")] {
            assert!(
                id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{id}"
            );
        }
    }

    #[test]
    fn cpu_max_values() {
        assert_eq!(CpuMax::cpus(0.5).value(), "50000 100000");
        let unlimited = CpuMax {
            quota_us: None,
            period_us: 100_000,
        };
        assert_eq!(unlimited.value(), "max 100000");
    }

    #[test]
    fn validation_lists_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let fc = dir.path().join("fc-double");
        fs::write(&fc, "").unwrap();
        let mut o = JailerOptions::new(dir.path().join("no-jailer"), 1, 1);
        o.chroot_base_dir = Some("relative".into());
        o.memory_max = Some(0);
        o.parent_cgroup = Some("../up".into());
        o.cpu_max = Some(CpuMax {
            quota_us: Some(10),
            period_us: 5,
        });
        o.cgroup_root = Some(dir.path().to_path_buf());
        let err = o.validate(&fc).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidConfig);
        let problems = err.details().unwrap()["problems"].as_array().unwrap().len();
        assert_eq!(problems, 7, "{:?}", err.details());
    }
}
