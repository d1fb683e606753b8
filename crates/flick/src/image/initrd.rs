//! The initrd that puts flick-init and the agent into any guest.
//!
//! The archive is a gzip-compressed newc cpio holding the directories flick-init mounts on, the
//! two device nodes the kernel needs before devtmpfs (`/dev/console`, `/dev/null`) and the
//! static flick-agent binary as `/init`. Every entry has uid/gid 0 and mtime 0, entries come in
//! a fixed order, and the gzip header carries mtime 0 and OS byte 255, so the same agent binary
//! always yields the same bytes. Archives are cached as `<cache>/initrd/<sha256>.cpio.gz`, keyed
//! by the hash of the format version and the agent binary.
//!
//! The per-VM token is not in the archive (the archive is shared); it goes on the kernel command
//! line, see [`GuestBootOptions::boot_args`].

use crate::error::{Error, ErrorCode, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bumped whenever the archive layout changes, so cached archives are rebuilt.
pub const INITRD_FORMAT_VERSION: u32 = 1;

/// Environment variable naming the flick-agent binary to put into the initrd.
pub const AGENT_BIN_ENV: &str = "FLICK_AGENT_BIN";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// A newc ("070701") cpio writer. Inode numbers are assigned in order, times are 0.
#[derive(Debug, Default)]
struct CpioWriter {
    out: Vec<u8>,
    next_ino: u32,
}

impl CpioWriter {
    fn pad4(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_ino += 1;
        let ino = if name == "TRAILER!!!" {
            0
        } else {
            self.next_ino
        };
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad4();
        self.out.extend_from_slice(data);
        self.pad4();
    }

    fn dir(&mut self, name: &str, perm: u32) {
        self.entry(name, S_IFDIR | perm, 2, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data);
    }

    fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        // The kernel reads the archive in 512-byte blocks; pad like cpio(1) does.
        while !self.out.len().is_multiple_of(512) {
            self.out.push(0);
        }
        self.out
    }
}

/// The uncompressed cpio archive for an agent binary.
#[must_use]
pub fn cpio_archive(agent: &[u8]) -> Vec<u8> {
    let mut w = CpioWriter::default();
    w.dir(".", 0o755);
    w.dir("dev", 0o755);
    w.char_dev("dev/console", 0o600, 5, 1);
    w.char_dev("dev/null", 0o666, 1, 3);
    w.dir("etc", 0o755);
    w.file("init", 0o755, agent);
    w.dir("newroot", 0o755);
    w.dir("proc", 0o555);
    w.dir("run", 0o755);
    w.dir("sys", 0o555);
    w.dir("tmp", 0o1777);
    w.finish()
}

/// The gzip-compressed archive, reproducible byte for byte.
pub fn initrd_bytes(agent: &[u8]) -> Result<Vec<u8>> {
    let cpio = cpio_archive(agent);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(
            Vec::with_capacity(cpio.len() / 2),
            flate2::Compression::default(),
        );
    gz.write_all(&cpio).and_then(|()| gz.finish()).map_err(|e| {
        Error::new(ErrorCode::InitrdBuildFailed, "gzip compression failed").with_source(e)
    })
}

/// A built (or cached) initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initrd {
    /// The archive, for the boot source's `initrd_path`.
    pub path: PathBuf,
    /// The cache key: SHA-256 of the format version and the agent binary.
    pub key: String,
}

/// Finds the flick-agent binary: `$FLICK_AGENT_BIN`, else `flick-agent` next to the running
/// executable (or its parent directory, for test executables in `deps/`).
pub fn locate_agent_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(AGENT_BIN_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(Error::new(
            ErrorCode::BinaryNotFound,
            format!("{AGENT_BIN_ENV}={} is not a file", p.display()),
        ));
    }
    let exe = std::env::current_exe().map_err(|e| {
        Error::new(
            ErrorCode::BinaryNotFound,
            "cannot locate the running executable",
        )
        .with_source(e)
    })?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("flick-agent");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Error::new(
        ErrorCode::BinaryNotFound,
        format!(
            "flick-agent not found next to {} (set {AGENT_BIN_ENV})",
            exe.display()
        ),
    ))
}

/// Builds the initrd for `agent_binary` into `cache_dir/initrd/`, or returns the cached one.
///
/// The file is written to a temp file and renamed, so concurrent builders and crashes never
/// leave a partial archive under the final name.
pub fn build(agent_binary: &Path, cache_dir: &Path) -> Result<Initrd> {
    let agent = std::fs::read(agent_binary).map_err(|e| {
        Error::io(
            ErrorCode::InitrdBuildFailed,
            "read agent binary",
            agent_binary,
            e,
        )
    })?;
    let mut h = Sha256::new();
    h.update(format!("flick-initrd-v{INITRD_FORMAT_VERSION}\0").as_bytes());
    h.update(&agent);
    let key = hex::encode(h.finalize());
    let dir = cache_dir.join("initrd");
    let path = dir.join(format!("{key}.cpio.gz"));
    if path.is_file() {
        return Ok(Initrd { path, key });
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(ErrorCode::InitrdBuildFailed, "create", &dir, e))?;
    let bytes = initrd_bytes(&agent)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".initrd-")
        .tempfile_in(&dir)
        .map_err(|e| Error::io(ErrorCode::InitrdBuildFailed, "create temp file in", &dir, e))?;
    tmp.write_all(&bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io(ErrorCode::InitrdBuildFailed, "write", tmp.path(), e))?;
    tmp.persist(&path)
        .map_err(|e| Error::io(ErrorCode::InitrdBuildFailed, "rename into", &path, e.error))?;
    Ok(Initrd { path, key })
}

/// Guest options that flick-init reads from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestBootOptions {
    /// The per-VM agent token (see [`generate_token`]).
    pub token: String,
    /// The agent's vsock port.
    pub port: u32,
    /// Hand PID 1 to this program of the root filesystem (for example `/sbin/init`).
    pub init: Option<String>,
    /// Guest hostname.
    pub hostname: Option<String>,
    /// Force (`Some(true)`) or forbid (`Some(false)`) the tmpfs overlay over the root; `None`
    /// lets flick-init decide (overlay for read-only roots).
    pub overlay: Option<bool>,
}

impl GuestBootOptions {
    /// Options with a token and defaults for the rest.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            port: flick_proto::DEFAULT_VSOCK_PORT,
            init: None,
            hostname: None,
            overlay: None,
        }
    }

    /// The words to append to the VM's boot args. Values are checked so they cannot break
    /// the command line.
    pub fn boot_args(&self) -> Result<String> {
        let safe = |what: &str, v: &str, extra: &str| {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c) || extra.contains(c))
            {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "{what} {v:?} must be non-empty and use only letters, digits and -_.{extra}"
                    ),
                ));
            }
            Ok(())
        };
        safe("agent token", &self.token, "")?;
        let mut args = vec![
            format!("flick.token={}", self.token),
            format!("flick.port={}", self.port),
        ];
        if let Some(init) = &self.init {
            safe("init path", init, "/")?;
            args.push(format!("flick.init={init}"));
        }
        if let Some(h) = &self.hostname {
            safe("hostname", h, "")?;
            args.push(format!("flick.hostname={h}"));
        }
        if let Some(o) = self.overlay {
            args.push(format!("flick.overlay={}", u8::from(o)));
        }
        Ok(args.join(" "))
    }
}

/// A fresh random token (32 bytes from the kernel's CSPRNG, hex).
pub fn generate_token() -> Result<String> {
    let mut buf = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom")
        .map_err(|e| Error::io(ErrorCode::Internal, "open", Path::new("/dev/urandom"), e))?;
    std::io::Read::read_exact(&mut f, &mut buf)
        .map_err(|e| Error::io(ErrorCode::Internal, "read", Path::new("/dev/urandom"), e))?;
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_header_layout() {
        let a = cpio_archive(b"abc");
        assert_eq!(&a[..6], b"070701");
        assert_eq!(a.len() % 512, 0);
        // First entry is "." with a 2-byte name.
        assert_eq!(&a[6 + 11 * 8..6 + 12 * 8], b"00000002");
        assert_eq!(&a[110..112], b".\0");
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn boot_args_are_checked() {
        let mut o = GuestBootOptions::new("abc123");
        o.init = Some("/sbin/init".into());
        o.overlay = Some(true);
        assert_eq!(
            o.boot_args().unwrap(),
            "flick.token=abc123 flick.port=1024 flick.init=/sbin/init flick.overlay=1"
        );
        let bad = GuestBootOptions::new("a b");
        assert_eq!(
            bad.boot_args().unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(generate_token().unwrap().len(), 64);
    }
}
