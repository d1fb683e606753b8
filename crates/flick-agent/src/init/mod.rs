//! flick-init: PID 1 from the initrd.
//!
//! Boot flow:
//! 1. mount `/proc`, `/sys`, `/dev`, `/run`, `/tmp` in the initramfs;
//! 2. read the kernel command line ([`cmdline::BootOptions`]);
//! 3. mount the root drive at `/newroot`, under a tmpfs overlay when it is read-only
//!    ([`mounts::mount_root`]), move the pseudo filesystems into it and switch root;
//! 4. configure the `ip=` interface when the kernel did not ([`net::configure`]), set the hostname;
//! 5. find the token (command line, else MMDS), write it to `/run/flick/token` and start the
//!    agent as a child process (`/proc/self/exe`, so it survives the root switch);
//! 6. exec the image's init when `flick.init=` names one that exists (the agent keeps running),
//!    else stay PID 1: reap zombies, restart the agent if it dies, forward SIGHUP/SIGUSR1 to
//!    all processes, and on SIGTERM/SIGINT/SIGPWR (Ctrl+Alt+Del arrives as SIGINT) stop
//!    everything, sync, unmount and request the reboot that makes Firecracker exit.

pub mod cmdline;
pub mod mmds;
pub mod mounts;
pub mod net;

use cmdline::BootOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn log(msg: &str) {
    let _ = writeln!(std::io::stderr(), "flick-init: {msg}");
}

fn wait_for(path: &Path, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    path.exists()
}

/// Starts the agent as a child process; returns its pid.
pub fn spawn_agent(port: u32, token_file: &Path, unix: Option<&str>) -> std::io::Result<u32> {
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(path) = unix {
        cmd.arg("--unix").arg(path);
    }
    let child = cmd
        .arg0("flick-agent")
        .arg("--vsock-port")
        .arg(port.to_string())
        .arg("--token-file")
        .arg(token_file)
        .arg("--machine")
        .spawn()?;
    Ok(child.id())
}

fn find_token(opts: &BootOptions) -> Option<String> {
    if let Some(t) = &opts.token {
        return Some(t.clone());
    }
    if opts.mmds {
        let addr = std::net::SocketAddr::from(([169, 254, 169, 254], 80));
        for _ in 0..20 {
            match mmds::fetch(addr, "/flick/token") {
                Ok(t) if !t.is_empty() => return Some(t),
                Ok(_) => {}
                Err(e) => log(&format!("MMDS: {e}")),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    None
}

/// Runs flick-init. Only returns on a fatal error (after which the kernel panics, which
/// Firecracker reports).
pub fn main() -> ! {
    if let Err(e) = mounts::mount_pseudo(Path::new("/")) {
        log(&format!("{e}"));
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let opts = BootOptions::parse(&cmdline);

    if let Some(device) = &opts.root {
        let spec = mounts::RootSpec {
            device: device.clone(),
            fstype: opts.rootfstype.clone(),
            flags: opts.rootflags.clone(),
            read_only: opts.read_only,
            overlay: None,
            overlay_size: opts.overlay_size.clone(),
        };
        if device.starts_with("/dev/") && !wait_for(Path::new(device), Duration::from_secs(5)) {
            log(&format!("root device {device} did not appear"));
        }
        let newroot = Path::new("/newroot");
        let scratch = Path::new("/run/flick");
        let result = mounts::mount_root(&spec, newroot, scratch, |fs| opts.wants_overlay(fs))
            .and_then(|m| {
                log(&format!(
                    "root {device} ({}){} mounted",
                    m.fstype,
                    if m.lower.is_some() {
                        " with a tmpfs overlay"
                    } else {
                        ""
                    }
                ));
                mounts::move_pseudo(Path::new("/"), newroot)
            })
            .and_then(|()| mounts::switch_root(newroot));
        if let Err(e) = result {
            log(&format!("{e}; staying in the initramfs"));
        }
    }

    if let Some(ip) = &opts.ip {
        match net::configure(ip) {
            Ok(true) => log(&format!("{} configured as {}", ip.device, ip.address)),
            Ok(false) => {}
            Err(e) => log(&format!("configuring {}: {e}", ip.device)),
        }
        if let Some(conf) = net::resolv_conf(ip) {
            let _ = std::fs::write("/etc/resolv.conf", conf);
        }
    } else {
        let _ = net::link_up("lo");
    }
    if let Some(name) = &opts.hostname
        && let Err(e) = rustix::system::sethostname(name.as_bytes())
    {
        log(&format!("sethostname: {e}"));
    }

    let token_file = Path::new("/run/flick/token");
    let mut agent_pid = None;
    match find_token(&opts) {
        Some(token) => {
            let _ = std::fs::create_dir_all("/run/flick");
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(token_file)
                .and_then(|mut f| {
                    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                    f.write_all(token.as_bytes())
                });
            match written.and_then(|()| spawn_agent(opts.port, token_file, opts.unix.as_deref())) {
                Ok(pid) => agent_pid = Some(pid),
                Err(e) => log(&format!("starting the agent: {e}")),
            }
        }
        None => log("no flick.token (and none in MMDS): the agent is not started"),
    }

    if let Some(init) = &opts.init {
        if Path::new(init).exists() {
            log(&format!("handing over to {init}"));
            let err = Command::new(init).exec();
            log(&format!("exec {init}: {err}"));
        } else {
            log(&format!("{init} does not exist; staying PID 1"));
        }
    }
    pid1_loop(agent_pid, &opts, token_file)
}

fn signal_set(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for the duration of these calls.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
    }
    set
}

fn reap_all() -> Vec<i32> {
    let mut reaped = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG and a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return reaped;
        }
        reaped.push(pid);
    }
}

fn pid1_loop(mut agent_pid: Option<u32>, opts: &BootOptions, token_file: &Path) -> ! {
    // Ctrl+Alt+Del becomes SIGINT to PID 1 instead of an immediate reboot.
    let _ = rustix::system::reboot(rustix::system::RebootCommand::CadOff);
    let handled = [
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGPWR,
        libc::SIGHUP,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ];
    let set = signal_set(&handled);
    // SAFETY: blocks the signals we consume synchronously with sigtimedwait; children get a
    // clean mask because Command resets it before exec.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let mut restart_at: Option<Instant> = None;
    loop {
        let timeout = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: valid set and timeout pointers; a null siginfo is allowed.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        for pid in reap_all() {
            if agent_pid == Some(pid as u32) {
                log("the agent exited; restarting it");
                agent_pid = None;
                restart_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
        if let Some(at) = restart_at
            && Instant::now() >= at
        {
            restart_at = None;
            match spawn_agent(opts.port, token_file, opts.unix.as_deref()) {
                Ok(pid) => agent_pid = Some(pid),
                Err(e) => log(&format!("restarting the agent: {e}")),
            }
        }
        match sig {
            libc::SIGTERM | libc::SIGINT | libc::SIGPWR | libc::SIGUSR2 => shutdown(),
            libc::SIGHUP | libc::SIGUSR1 => {
                // SAFETY: kill(-1, sig) signals every process except PID 1 itself.
                unsafe { libc::kill(-1, sig) };
            }
            _ => {}
        }
    }
}

fn shutdown() -> ! {
    log("shutting down");
    // SAFETY: signals every process but PID 1.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        reap_all();
        // SAFETY: probing with signal 0 whether any process is left.
        if unsafe { libc::kill(-1, 0) } != 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above, with SIGKILL.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    reap_all();
    mounts::shutdown_unmount();
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    // Unreachable in a VM; keep PID 1 alive otherwise.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
