//! Firecracker `jailer` **test double**. Not a security boundary: for tests only.
//!
//! It accepts the real jailer's command line (v1.16.1: `--id`, `--exec-file`, `--uid`, `--gid`,
//! `--chroot-base-dir` default `/srv/jailer`, `--netns`, `--daemonize`, `--new-pid-ns`,
//! `--cgroup-version`, repeatable `--cgroup <file>=<value>`, `--parent-cgroup`,
//! repeatable `--resource-limit`, then `--` and Firecracker's own arguments), validates it the
//! way the jailer does, and performs the same steps in the same order:
//!
//! 1. build `<chroot-base>/<exec-file name>/<id>/root/` and copy the exec file into it;
//! 2. join the network namespace, set the file-descriptor limit (default 2048);
//! 3. create the cgroup `<cgroup root>/<parent cgroup, default exec-file name>/<id>/`, write
//!    every `--cgroup` value into it and the jailer's pid into `cgroup.procs`;
//! 4. enter a private mount namespace and `chroot` into the jail; create `/dev`, `/dev/net`,
//!    `/run` (0700, owned by uid:gid), the `/dev/net/tun`, `/dev/kvm` and `/dev/urandom` nodes,
//!    and give the jail root to uid:gid;
//! 5. with `--daemonize`, fork, `setsid`, fork again, stdio to `/dev/null`;
//! 6. with `--new-pid-ns`, clone into a new pid namespace and write the child's pid to
//!    `/<exec-file name>.pid` (otherwise its own pid), then drop to uid:gid and exec
//!    `/<exec-file name> --id <id> --start-time-us .. --start-time-cpu-us ..
//!    --parent-cpu-time-us .. <extra arguments>`.
//!
//! Where it differs from the real jailer, and why:
//! - **cgroup root.** The host running the tests has no cgroup v2 hierarchy with the cpu and
//!   memory controllers, so the cgroup root comes from `JAILER_DOUBLE_CGROUP_ROOT` (a plain
//!   directory standing in for the hierarchy) when set, else from the first `cgroup2` mount in
//!   `/proc/mounts` like the real jailer. Only cgroup version 2 is supported.
//! - **Dynamic exec file.** The real jailer needs a static Firecracker; the Firecracker double
//!   is dynamically linked, so the host's library directories (`/lib`, `/lib64`, `/usr/lib`,
//!   `/usr/lib64`) are bind-mounted read-only into the jail inside the jail's private mount
//!   namespace (the host only ever sees empty mount points there).
//! - `chroot` instead of `pivot_root`; no `/dev/userfaultfd` node.
//!
//! Like the real jailer it clears its environment before exec, so Firecracker (double) switches
//! must be passed as arguments after `--`. Failures print one line to stderr and exit with 1.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The environment variable naming the directory used as the cgroup v2 root.
const CGROUP_ROOT_ENV: &str = "JAILER_DOUBLE_CGROUP_ROOT";
const MAX_ID_LEN: usize = 64;

#[derive(Debug, Default)]
struct Args {
    id: String,
    exec_file: PathBuf,
    exec_name: String,
    uid: u32,
    gid: u32,
    chroot_base: PathBuf,
    netns: Option<PathBuf>,
    daemonize: bool,
    new_pid_ns: bool,
    cgroup_version: u8,
    cgroups: Vec<(String, String)>,
    parent_cgroup: Option<PathBuf>,
    no_file: u64,
    fsize: Option<u64>,
    extra: Vec<OsString>,
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("jailer-double: {msg}");
    std::process::exit(1);
}

fn value(it: &mut impl Iterator<Item = OsString>, name: &str) -> String {
    it.next()
        .and_then(|v| v.into_string().ok())
        .unwrap_or_else(|| fail(format!("missing value for --{name}")))
}

fn is_plain_relative(path: &Path) -> bool {
    path.components().all(|c| matches!(c, Component::Normal(_)))
}

fn parse(raw: Vec<OsString>) -> Args {
    let mut args = Args {
        cgroup_version: 1,
        no_file: 2048,
        chroot_base: PathBuf::from("/srv/jailer"),
        ..Args::default()
    };
    let (mut id, mut exec, mut uid, mut gid) = (None, None, None, None);
    let mut it = raw.into_iter();
    while let Some(arg) = it.next() {
        let Some(name) = arg.to_str().and_then(|a| a.strip_prefix("--")) else {
            fail(format!("unexpected argument {arg:?}"));
        };
        match name {
            "" => {
                args.extra = it.by_ref().collect();
                break;
            }
            "id" => id = Some(value(&mut it, name)),
            "exec-file" => exec = Some(value(&mut it, name)),
            "uid" => uid = Some(value(&mut it, name)),
            "gid" => gid = Some(value(&mut it, name)),
            "chroot-base-dir" => args.chroot_base = PathBuf::from(value(&mut it, name)),
            "netns" => args.netns = Some(PathBuf::from(value(&mut it, name))),
            "daemonize" => args.daemonize = true,
            "new-pid-ns" => args.new_pid_ns = true,
            "cgroup-version" => {
                let v = value(&mut it, name);
                args.cgroup_version = match v.as_str() {
                    "1" => 1,
                    "2" => 2,
                    _ => fail(format!("{v} is an invalid cgroup version specifier")),
                };
            }
            "cgroup" => {
                let v = value(&mut it, name);
                let Some((file, val)) = v.split_once('=').filter(|(f, v)| {
                    !v.is_empty() && !v.contains('=') && is_plain_relative(Path::new(f))
                }) else {
                    fail(format!("invalid format for cgroups: {v}"));
                };
                if !file.contains('.') || file.contains('/') {
                    fail(format!("cgroup invalid file: {v}"));
                }
                args.cgroups.push((file.to_string(), val.to_string()));
            }
            "parent-cgroup" => {
                let v = PathBuf::from(value(&mut it, name));
                if !is_plain_relative(&v) {
                    fail("parent cgroup path is invalid: it must be relative without . or ..");
                }
                args.parent_cgroup = Some(v);
            }
            "resource-limit" => {
                let v = value(&mut it, name);
                let Some((res, limit)) = v.split_once('=') else {
                    fail(format!("invalid format for resources limits: {v}"));
                };
                let limit: u64 = limit
                    .parse()
                    .unwrap_or_else(|_| fail(format!("invalid limit value for resource: {v}")));
                match res {
                    "no-file" => args.no_file = limit,
                    "fsize" => args.fsize = Some(limit),
                    _ => fail(format!("invalid resource argument: {res}")),
                }
            }
            other => fail(format!("unknown argument --{other}")),
        }
    }
    let id = id.unwrap_or_else(|| fail("missing --id"));
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        fail(format!("invalid instance id: {id:?}"));
    }
    args.id = id;
    let exec = exec.unwrap_or_else(|| fail("missing --exec-file"));
    args.exec_file = fs::canonicalize(&exec)
        .unwrap_or_else(|e| fail(format!("failed to canonicalize path {exec}: {e}")));
    if !args.exec_file.is_file() {
        fail(format!("{} is not a file", args.exec_file.display()));
    }
    args.exec_name = args
        .exec_file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| fail("exec file has no name"))
        .to_string();
    if !args.exec_name.contains("firecracker") {
        fail(format!(
            "invalid filename: the --exec-file name must contain \"firecracker\": {}",
            args.exec_name
        ));
    }
    let uid = uid.unwrap_or_else(|| fail("missing --uid"));
    args.uid = uid
        .parse()
        .unwrap_or_else(|_| fail(format!("invalid uid: {uid}")));
    let gid = gid.unwrap_or_else(|| fail("missing --gid"));
    args.gid = gid
        .parse()
        .unwrap_or_else(|_| fail(format!("invalid gid: {gid}")));
    args.chroot_base = fs::canonicalize(&args.chroot_base).unwrap_or_else(|e| {
        fail(format!(
            "failed to canonicalize path {}: {e}",
            args.chroot_base.display()
        ))
    });
    if !args.chroot_base.is_dir() {
        fail(format!("{} is not a directory", args.chroot_base.display()));
    }
    if !args.cgroups.is_empty() && args.cgroup_version != 2 {
        fail("the jailer double supports cgroup version 2 only");
    }
    args
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn cgroup_root(env_root: Option<OsString>) -> PathBuf {
    if let Some(root) = env_root {
        return PathBuf::from(root);
    }
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .next()
        .unwrap_or_else(|| fail("hierarchy not found: no cgroup2 mount"))
}

fn setup_cgroup(args: &Args, root: &Path) {
    let parent = args
        .parent_cgroup
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.exec_name));
    let dir = root.join(parent).join(&args.id);
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| fail(format!("failed to create {}: {e}", dir.display())));
    for (file, value) in &args.cgroups {
        let path = dir.join(file);
        fs::write(&path, format!("{value}\n"))
            .unwrap_or_else(|e| fail(format!("failed to write {}: {e}", path.display())));
    }
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, format!("{}\n", std::process::id()))
        .unwrap_or_else(|e| fail(format!("failed to write {}: {e}", procs.display())));
}

fn join_netns(path: &Path) {
    let file = fs::File::open(path)
        .unwrap_or_else(|e| fail(format!("failed to open {}: {e}", path.display())));
    use std::os::fd::AsFd;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| fail(format!("failed to join network namespace: {e}")));
}

fn set_limits(args: &Args) {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let limit = |v: u64| Rlimit {
        current: Some(v),
        maximum: Some(v),
    };
    setrlimit(Resource::Nofile, limit(args.no_file))
        .unwrap_or_else(|e| fail(format!("failed to set limit for no-file: {e}")));
    if let Some(fsize) = args.fsize {
        setrlimit(Resource::Fsize, limit(fsize))
            .unwrap_or_else(|e| fail(format!("failed to set limit for fsize: {e}")));
    }
}

/// Private mount namespace, the host's libraries visible read-only inside the jail, `chroot`.
fn enter_jail(chroot: &Path) {
    use rustix::mount::{
        MountFlags, MountPropagationFlags, mount_bind, mount_change, mount_remount,
    };
    // SAFETY: this program is single-threaded; the new mount namespace changes no memory or
    // file descriptor this process holds.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .unwrap_or_else(|e| fail(format!("failed to unshare into a new mount namespace: {e}")));
    mount_change(
        c"/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .unwrap_or_else(|e| fail(format!("failed to make mounts private: {e}")));
    for lib in ["/usr/lib", "/usr/lib64", "/lib", "/lib64"] {
        let host = Path::new(lib);
        let inside = chroot.join(lib.trim_start_matches('/'));
        let Ok(meta) = fs::symlink_metadata(host) else {
            continue;
        };
        if inside.symlink_metadata().is_ok() {
            continue;
        }
        if meta.file_type().is_symlink() {
            let target = fs::read_link(host).unwrap_or_else(|e| fail(e));
            if let Some(parent) = inside.parent() {
                fs::create_dir_all(parent).unwrap_or_else(|e| fail(e));
            }
            std::os::unix::fs::symlink(target, &inside).unwrap_or_else(|e| fail(e));
        } else if meta.is_dir() {
            fs::create_dir_all(&inside).unwrap_or_else(|e| fail(e));
            mount_bind(host, &inside)
                .unwrap_or_else(|e| fail(format!("failed to bind {lib} into the jail: {e}")));
            mount_remount(&inside, MountFlags::BIND | MountFlags::RDONLY, "")
                .unwrap_or_else(|e| fail(format!("failed to make {lib} read-only: {e}")));
        }
    }
    rustix::process::chroot(chroot)
        .unwrap_or_else(|e| fail(format!("failed to chroot into {}: {e}", chroot.display())));
    std::env::set_current_dir("/").unwrap_or_else(|e| fail(format!("failed to chdir: {e}")));
}

fn own(path: &Path, args: &Args) {
    rustix::fs::chown(
        path,
        Some(rustix::fs::Uid::from_raw(args.uid)),
        Some(rustix::fs::Gid::from_raw(args.gid)),
    )
    .unwrap_or_else(|e| {
        fail(format!(
            "failed to change owner for {}: {e}",
            path.display()
        ))
    });
}

fn setup_jailed_folders(args: &Args) {
    for folder in ["/", "/dev", "/dev/net", "/run"] {
        let path = Path::new(folder);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .unwrap_or_else(|e| fail(format!("failed to create directory {folder}: {e}")));
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| fail(format!("failed to change permissions on {folder}: {e}")));
        own(path, args);
    }
    let nodes: [(&str, u32, u32, bool); 3] = [
        ("/dev/net/tun", 10, 200, true),
        ("/dev/kvm", 10, 232, true),
        ("/dev/urandom", 1, 9, false),
    ];
    for (path, major, minor, required) in nodes {
        let made = rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            rustix::fs::makedev(major, minor),
        );
        match made {
            Ok(()) => own(Path::new(path), args),
            Err(e) if required => fail(format!("failed to create {path} via mknod: {e}")),
            Err(e) => println!("Warning! Could not create {path} inside the jail: {e}."),
        }
    }
}

/// Double fork: the daemon is in a new session, not its leader, with stdio on `/dev/null`.
fn daemonize(dev_null: &fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: this program is single-threaded, so the child of `fork` may run any code.
    let pid = unsafe { libc::fork() };
    match pid {
        ..0 => fail("failed to daemonize: fork"),
        0 => {}
        _ => std::process::exit(0),
    }
    rustix::process::setsid().unwrap_or_else(|e| fail(format!("failed to daemonize: setsid: {e}")));
    // SAFETY: as above, still single-threaded.
    let pid = unsafe { libc::fork() };
    match pid {
        ..0 => fail("failed to daemonize: fork"),
        0 => {}
        _ => std::process::exit(0),
    }
    for target in [0, 1, 2] {
        // SAFETY: `dup2` onto a standard descriptor number of this process; the source is an
        // open descriptor borrowed for the duration of the call.
        if unsafe { libc::dup2(dev_null.as_raw_fd(), target) } < 0 {
            fail(format!(
                "failed to duplicate fd: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
}

fn write_pid_file(args: &Args, pid: i32) {
    let path = format!("/{}.pid", args.exec_name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap_or_else(|e| fail(format!("failed to open file {path}: {e}")));
    write!(file, "{pid}").unwrap_or_else(|e| fail(format!("failed to write to {path}: {e}")));
}

fn exec(args: &Args, start_us: u64, started: Instant) -> ! {
    let err = Command::new(format!("/{}", args.exec_name))
        .args(["--id", &args.id])
        .args(["--start-time-us", &start_us.to_string()])
        .args(["--start-time-cpu-us", "0"])
        .args([
            "--parent-cpu-time-us",
            &started.elapsed().as_micros().to_string(),
        ])
        .args(&args.extra)
        .uid(args.uid)
        .gid(args.gid)
        .exec();
    fail(format!("failed to exec into Firecracker: {err}"));
}

fn main() {
    let started = Instant::now();
    let start_us = now_us();
    let env_cgroup_root = std::env::var_os(CGROUP_ROOT_ENV);
    // Like the jailer: nothing from the caller's environment reaches Firecracker.
    let keys: Vec<OsString> = std::env::vars_os().map(|(k, _)| k).collect();
    for key in keys {
        // SAFETY: single-threaded program; no other thread reads the environment.
        unsafe { std::env::remove_var(key) };
    }
    let args = parse(std::env::args_os().skip(1).collect());

    let chroot = args
        .chroot_base
        .join(&args.exec_name)
        .join(&args.id)
        .join("root");
    fs::create_dir_all(&chroot)
        .unwrap_or_else(|e| fail(format!("failed to create {}: {e}", chroot.display())));
    let jailed_exec = chroot.join(&args.exec_name);
    fs::copy(&args.exec_file, &jailed_exec).unwrap_or_else(|e| {
        fail(format!(
            "failed to copy {} to {}: {e}",
            args.exec_file.display(),
            jailed_exec.display()
        ))
    });
    if let Some(netns) = &args.netns {
        join_netns(netns);
    }
    set_limits(&args);
    if !args.cgroups.is_empty() {
        setup_cgroup(&args, &cgroup_root(env_cgroup_root));
    }
    let dev_null = args.daemonize.then(|| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap_or_else(|e| fail(format!("failed to open /dev/null: {e}")))
    });
    enter_jail(&chroot);
    setup_jailed_folders(&args);
    if let Some(dev_null) = &dev_null {
        daemonize(dev_null);
    }
    if args.new_pid_ns {
        // SAFETY: a fork-like clone (no CLONE_VM, null stack: the child gets a copy of this
        // single-threaded process's stack) into a new pid namespace.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::CLONE_NEWPID | libc::SIGCHLD,
                std::ptr::null_mut::<libc::c_void>(),
                0,
                0,
                0,
            )
        };
        match pid {
            ..0 => fail(format!(
                "failed cloning into a new child process: {}",
                std::io::Error::last_os_error()
            )),
            0 => exec(&args, start_us, started),
            child => {
                write_pid_file(&args, i32::try_from(child).unwrap_or(-1));
                std::process::exit(0);
            }
        }
    }
    write_pid_file(&args, i32::try_from(std::process::id()).unwrap_or(-1));
    exec(&args, start_us, started)
}
