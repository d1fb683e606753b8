//! Health, version, clock, sync and shutdown.

use crate::server::{Shared, ShutdownMode};
use flick_proto::{ErrorBody, PROTOCOL_VERSION, Response, ShutdownAction, codes};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Answer to a health probe.
pub fn health(shared: &Shared) -> Response {
    Response::Health {
        uptime_ms: shared.started.elapsed().as_millis() as u64,
        running_execs: shared.running_execs.load(Ordering::Relaxed),
    }
}

/// Protocol, agent and kernel versions.
pub fn version() -> Response {
    let uname = rustix::system::uname();
    Response::Version {
        protocol: PROTOCOL_VERSION,
        agent_version: crate::AGENT_VERSION.to_owned(),
        kernel: uname.release().to_string_lossy().into_owned(),
    }
}

/// Sets the realtime clock.
pub fn set_clock(secs: i64, nanos: u32) -> Result<Response, ErrorBody> {
    if nanos >= 1_000_000_000 {
        return Err(ErrorBody::new(
            codes::INVALID_REQUEST,
            "nanos must be below 1e9",
        ));
    }
    let ts = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as _,
    };
    // SAFETY: `ts` is a valid timespec that lives across the call.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        let mut body = ErrorBody::new(
            codes::PERMISSION_DENIED,
            format!("clock_settime failed: {err}"),
        );
        body.errno = err.raw_os_error();
        return Err(body);
    }
    Ok(Response::Ok)
}

/// Flushes all filesystems.
pub fn sync() {
    rustix::fs::sync();
}

/// Carries out a shutdown request after its answer was sent.
pub fn shutdown(mode: ShutdownMode, action: ShutdownAction) {
    match mode {
        ShutdownMode::ExitAgent => {
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                std::process::exit(0);
            });
        }
        ShutdownMode::Machine => {
            std::thread::spawn(move || power_off(action));
        }
    }
}

/// Stops every process, syncs and asks the kernel to power off or reboot.
///
/// Firecracker implements no power-off device: a guest that powers off only halts its vCPUs,
/// while the reboot request (keyboard-controller reset) makes the Firecracker process exit. Both
/// actions therefore end in the reboot request; they differ only in intent for other VMMs.
pub fn power_off(action: ShutdownAction) {
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: kill(-1, SIGTERM) signals every process we may signal except ourselves and PID 1.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: as above, with SIGKILL.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    rustix::fs::sync();
    let _ = action;
    let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
}
