//! Applying layer tarballs to a directory, with every path kept beneath it.
//!
//! # Flow of [`apply_layer`]
//!
//! 1. The compression is taken from the first bytes: gzip (`1f 8b`), zstd (`28 b5 2f fd`), or
//!    none. Compressed streams are inflated on a second thread, 1 MiB chunks ahead of the
//!    extractor. The `tar` crate parses the stream (GNU long names, PAX records).
//! 2. Every entry name is split into components. An absolute name or a `..` component is refused
//!    with [`ErrorCode::UnsafeArchivePath`] before anything is touched.
//! 3. The parent directory is opened with `openat2(root, parent, RESOLVE_BENEATH |
//!    RESOLVE_NO_MAGICLINKS)`: the kernel follows symlinks that stay below the root and fails with
//!    `EXDEV` for any that leave it (absolute targets or too many `..`), which becomes
//!    [`ErrorCode::UnsafeArchivePath`]. Missing parents are created one level at a time the same
//!    way.
//! 4. The last component is created relative to that directory descriptor with the `*at` calls
//!    that never follow it (`O_NOFOLLOW | O_EXCL`, `AT_SYMLINK_NOFOLLOW`), after removing what
//!    was there. Hard-link targets are resolved with the same rules as entry names.
//! 5. Whiteouts: `.wh.<name>` removes `<name>` from the layers below; `.wh..wh..opq` empties its
//!    directory of everything the lower layers put there (entries this layer wrote stay).
//! 6. Ownership (numeric ids), permission bits including set-id bits, modification times and
//!    `SCHILY.xattr.*` records are applied; device nodes and FIFOs are created with `mknodat`.
//!
//! Headers are bounded too: GNU long names and PAX records larger than 1 MiB are refused before
//! the `tar` crate buffers them.
//!
//! Running as root is required for ownership and device nodes to match the image; without it,
//! `chown` and `mknod` fail and so does the layer.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead as _, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps, XattrFlags};
use rustix::io::Errno;
use serde_json::json;

use crate::error::{Error, ErrorCode, Result};

/// The largest header block (GNU long name/link, PAX records) accepted.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// How a layer stream was compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// What one layer did to the tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// The compression detected.
    pub compression: Option<Compression>,
    /// Entries written (files, directories, links, nodes).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
}

/// Detects the compression from the first bytes of a stream.
#[must_use]
pub fn detect_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn unsafe_path(name: &[u8], why: &str) -> Error {
    let shown = String::from_utf8_lossy(name).into_owned();
    Error::new(
        ErrorCode::UnsafeArchivePath,
        format!("refusing archive entry {shown:?}: {why}"),
    )
    .with_details(json!({ "entry": shown }))
}

fn layer_failed(name: &[u8], what: &str, err: impl Into<std::io::Error>) -> Error {
    let err = err.into();
    let shown = String::from_utf8_lossy(name).into_owned();
    Error::new(
        ErrorCode::ImagePullFailed,
        format!("{what} {shown:?} while applying a layer"),
    )
    .with_details(json!({ "entry": shown, "os_error": err.raw_os_error() }))
    .with_source(err)
}

/// Splits an archive path into normal components; refuses absolute paths and `..`.
///
/// # Errors
/// [`ErrorCode::UnsafeArchivePath`].
pub fn clean_path(raw: &[u8]) -> Result<Vec<OsString>> {
    if raw.first() == Some(&b'/') {
        return Err(unsafe_path(raw, "absolute path"));
    }
    if raw.contains(&0) {
        return Err(unsafe_path(raw, "NUL byte in the name"));
    }
    let mut out = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(unsafe_path(raw, "`..` component")),
            c => out.push(OsStr::from_bytes(c).to_owned()),
        }
    }
    Ok(out)
}

fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

#[derive(Clone, Copy, Default)]
struct GuardState {
    counting: bool,
    used: u64,
    budget: u64,
    tripped: bool,
}

/// Counts bytes the `tar` crate reads between entries, so oversized headers fail early.
struct HeaderGuard<R> {
    inner: R,
    state: Rc<Cell<GuardState>>,
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut st = self.state.get();
        if st.counting {
            // Never hand out more than the budget allows, so a huge header is never buffered.
            let left = st.budget.saturating_sub(st.used);
            if left == 0 {
                st.tripped = true;
                self.state.set(st);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "tar header block too large",
                ));
            }
            let cap = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let n = self.inner.read(&mut buf[..cap])?;
            st.used += n as u64;
            self.state.set(st);
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

/// Applies one layer stream (any supported compression) to `root`.
///
/// # Errors
/// [`ErrorCode::UnsafeArchivePath`] for entries that would land outside `root` (nothing is
/// written outside it), [`ErrorCode::ImagePullFailed`] for corrupt archives and filesystem
/// failures. On error the tree is left partially applied; callers build in a scratch directory.
pub fn apply_layer<'a>(root: &Path, reader: impl Read + Send + 'a) -> Result<LayerStats> {
    let mut buffered = BufReader::with_capacity(1 << 20, reader);
    let head = buffered
        .fill_buf()
        .map_err(|e| layer_failed(b"", "reading", e))?;
    let compression = detect_compression(head);
    let mut applier = Applier::open(root)?;
    let mut stats = if compression == Compression::None {
        applier.apply_tar(Box::new(buffered))?
    } else {
        // Decompress on a second thread so inflating overlaps with writing files.
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(8);
            let producer = scope.spawn(move || decompress(buffered, compression, &tx));
            let result = applier.apply_tar(Box::new(ChannelReader {
                rx,
                chunk: Vec::new(),
                pos: 0,
            }));
            let _ = producer.join();
            result
        })?
    };
    stats.compression = Some(compression);
    Ok(stats)
}

/// Chunk size handed from the decompressing thread to the extracting one.
const CHUNK: usize = 1 << 20;

/// Feeds decompressed chunks into `tx` until the end of the stream, an error, or until the
/// receiver is gone (the extractor stopped).
fn decompress<R: std::io::BufRead>(
    input: R,
    compression: Compression,
    tx: &std::sync::mpsc::SyncSender<std::io::Result<Vec<u8>>>,
) {
    let mut decoder: Box<dyn Read + '_> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => match zstd::stream::read::Decoder::with_buffer(input) {
            Ok(d) => Box::new(d),
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        },
        Compression::None => Box::new(input),
    };
    loop {
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < CHUNK {
            match decoder.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        if filled == 0 {
            return;
        }
        buf.truncate(filled);
        if tx.send(Ok(buf)).is_err() {
            return;
        }
    }
}

/// The extracting side of [`decompress`].
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct Applier {
    root: OwnedFd,
    written: HashSet<PathBuf>,
    dir_times: Vec<(Vec<OsString>, u64)>,
}

fn is_exdev(e: Errno) -> bool {
    e == Errno::XDEV || e == Errno::LOOP
}

impl Applier {
    fn open(root: &Path) -> Result<Self> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| layer_failed(root.as_os_str().as_bytes(), "opening", e))?;
        Ok(Self {
            root: fd,
            written: HashSet::new(),
            dir_times: Vec::new(),
        })
    }

    fn apply_tar(&mut self, stream: Box<dyn Read + '_>) -> Result<LayerStats> {
        let state = Rc::new(Cell::new(GuardState::default()));
        let guard = HeaderGuard {
            inner: stream,
            state: Rc::clone(&state),
        };
        let mut archive = tar::Archive::new(guard);
        let mut entries = archive
            .entries()
            .map_err(|e| layer_failed(b"", "reading", e))?;
        let mut stats = LayerStats::default();
        let mut unread = 0u64;
        loop {
            state.set(GuardState {
                counting: true,
                used: 0,
                // The rest of the previous entry, its padding, then at most this much header.
                budget: unread + 1024 + MAX_HEADER_BYTES,
                tripped: false,
            });
            let next = entries.next();
            let st = state.get();
            state.set(GuardState::default());
            let entry = match next {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    if st.tripped {
                        return Err(unsafe_path(
                            b"<header>",
                            "a header block (long name or PAX records) is larger than 1 MiB",
                        ));
                    }
                    return Err(layer_failed(b"", "reading a tar header in", e));
                }
            };
            let size = entry.size();
            let consumed = self.apply_entry(entry, &mut stats)?;
            unread = size.saturating_sub(consumed);
        }
        self.restore_dir_times();
        Ok(stats)
    }

    /// Opens `comps` (a directory below the root) as an `O_PATH` descriptor, creating missing
    /// directories (mode 0755, root-owned) when `create` is set.
    fn open_dir(&self, raw: &[u8], comps: &[OsString], create: bool) -> Result<OwnedFd> {
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let open = |upto: usize| {
            let p = join(&comps[..upto]);
            let p = if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p
            };
            rustix::fs::openat2(&self.root, &p, flags, Mode::empty(), how)
        };
        match open(comps.len()) {
            Ok(fd) => return Ok(fd),
            Err(e) if is_exdev(e) => {
                return Err(unsafe_path(raw, "its parent resolves outside the root"));
            }
            Err(Errno::NOENT) if create => {}
            Err(Errno::NOTDIR) => {
                return Err(layer_failed(raw, "a parent of", Errno::NOTDIR));
            }
            Err(e) => return Err(layer_failed(raw, "opening the parent of", e)),
        }
        let mut cur = open(0).map_err(|e| layer_failed(raw, "opening the root for", e))?;
        for (i, comp) in comps.iter().enumerate() {
            cur = match open(i + 1) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&cur, comp, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(layer_failed(raw, "creating a parent of", e)),
                    }
                    // Counter the umask.
                    let _ = rustix::fs::chmodat(
                        &cur,
                        comp,
                        Mode::from_raw_mode(0o755),
                        AtFlags::empty(),
                    );
                    open(i + 1).map_err(|e| {
                        if is_exdev(e) {
                            unsafe_path(raw, "its parent resolves outside the root")
                        } else {
                            layer_failed(raw, "opening a parent of", e)
                        }
                    })?
                }
                Err(e) if is_exdev(e) => {
                    return Err(unsafe_path(raw, "its parent resolves outside the root"));
                }
                Err(e) => return Err(layer_failed(raw, "opening a parent of", e)),
            };
        }
        Ok(cur)
    }

    /// Removes `name` in `dir` (recursively for directories) without following symlinks.
    fn remove(dir: &impl AsFd, name: &OsStr) -> std::result::Result<(), Errno> {
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let fd = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            Self::empty_dir(&fd, None, &PathBuf::new())?;
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        } else {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())
        }
    }

    /// Removes the children of the directory `fd`; with `keep`, children whose relative path
    /// (below `rel`) is in it survive, and kept directories are emptied the same way.
    fn empty_dir(
        fd: &OwnedFd,
        keep: Option<&HashSet<PathBuf>>,
        rel: &Path,
    ) -> std::result::Result<(), Errno> {
        let mut names = Vec::new();
        {
            let dup = rustix::io::fcntl_dupfd_cloexec(fd, 0)?;
            let dir = rustix::fs::Dir::read_from(&dup)?;
            for entry in dir {
                let entry = entry?;
                let name = entry.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        for name in names {
            let child_rel = rel.join(&name);
            if let Some(keep) = keep
                && keep.contains(&child_rel)
            {
                let st = rustix::fs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    let child = rustix::fs::openat(
                        fd,
                        &name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    Self::empty_dir(&child, Some(keep), &child_rel)?;
                }
                continue;
            }
            Self::remove(fd, &name)?;
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        stats: &mut LayerStats,
    ) -> Result<u64> {
        let raw = entry.path_bytes().into_owned();
        let comps = clean_path(&raw)?;
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header
            .uid()
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0);
        let gid = header
            .gid()
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0);
        let dev = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );
        let link = entry.link_name_bytes().map(std::borrow::Cow::into_owned);
        let mut xattrs = Vec::new();
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                if let Ok(key) = ext.key()
                    && let Some(name) = key.strip_prefix("SCHILY.xattr.")
                {
                    xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                }
            }
        }

        let Some((name, parents)) = comps.split_last() else {
            // The root itself: only directory metadata applies.
            if kind.is_dir() {
                let fd = self.open_dir(&raw, &[], false)?;
                self.set_owner_mode(&raw, &fd, None, uid, gid, mode)?;
            }
            return Ok(0);
        };
        let rel = join(&comps);
        let parent = self.open_dir(&raw, parents, true)?;

        // Whiteouts.
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            let dir = rustix::fs::openat(
                &parent,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| layer_failed(&raw, "opening", e))?;
            let parent_rel = join(parents);
            Self::empty_dir(&dir, Some(&self.written), &parent_rel)
                .map_err(|e| layer_failed(&raw, "applying opaque marker", e))?;
            stats.whiteouts += 1;
            return Ok(0);
        }
        if let Some(target) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(unsafe_path(&raw, "malformed whiteout"));
            }
            Self::remove(&parent, OsStr::from_bytes(target))
                .map_err(|e| layer_failed(&raw, "applying whiteout", e))?;
            stats.whiteouts += 1;
            return Ok(0);
        }

        let mut consumed = 0u64;
        match kind {
            tar::EntryType::Directory => {
                let existing = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW).ok();
                let is_dir = existing
                    .as_ref()
                    .is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory);
                if !is_dir {
                    if existing.is_some() {
                        Self::remove(&parent, name)
                            .map_err(|e| layer_failed(&raw, "replacing", e))?;
                    }
                    rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))
                        .map_err(|e| layer_failed(&raw, "creating directory", e))?;
                }
                let fd = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| layer_failed(&raw, "opening directory", e))?;
                self.set_owner_mode(&raw, &fd, None, uid, gid, mode)?;
                set_xattrs_fd(&raw, &fd, &xattrs)?;
                self.dir_times.push((comps.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                Self::remove(&parent, name).map_err(|e| layer_failed(&raw, "replacing", e))?;
                let fd = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| layer_failed(&raw, "creating", e))?;
                let mut file = std::fs::File::from(fd);
                consumed = std::io::copy(&mut entry, &mut file)
                    .map_err(|e| layer_failed(&raw, "writing", e))?;
                stats.bytes += consumed;
                self.set_owner_mode(&raw, &file, None, uid, gid, mode)?;
                set_xattrs_fd(&raw, &file, &xattrs)?;
                let t = timestamps(mtime);
                rustix::fs::futimens(&file, &t).map_err(|e| layer_failed(&raw, "timing", e))?;
            }
            tar::EntryType::Symlink => {
                let Some(target) = link else {
                    return Err(layer_failed(&raw, "reading the target of", Errno::INVAL));
                };
                Self::remove(&parent, name).map_err(|e| layer_failed(&raw, "replacing", e))?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, name)
                    .map_err(|e| layer_failed(&raw, "creating symlink", e))?;
                rustix::fs::chownat(
                    &parent,
                    name,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| layer_failed(&raw, "chowning", e))?;
                let _ = rustix::fs::utimensat(
                    &parent,
                    name,
                    &timestamps(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
            }
            tar::EntryType::Link => {
                let Some(target) = link else {
                    return Err(layer_failed(&raw, "reading the target of", Errno::INVAL));
                };
                let tcomps = clean_path(&target)
                    .map_err(|_| unsafe_path(&raw, "its hard-link target leaves the root"))?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(unsafe_path(&raw, "hard link to the root directory"));
                };
                let tparent = self.open_dir(&raw, tparents, false).map_err(|e| {
                    if e.code() == ErrorCode::UnsafeArchivePath {
                        unsafe_path(&raw, "its hard-link target resolves outside the root")
                    } else {
                        e
                    }
                })?;
                let st = rustix::fs::statat(&tparent, tname, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| layer_failed(&raw, "finding the hard-link target of", e))?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    return Err(unsafe_path(&raw, "hard link to a directory"));
                }
                if let Ok(cur) = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
                    && cur.st_ino == st.st_ino
                    && cur.st_dev == st.st_dev
                {
                    // Already the same file.
                } else {
                    Self::remove(&parent, name).map_err(|e| layer_failed(&raw, "replacing", e))?;
                    rustix::fs::linkat(&tparent, tname, &parent, name, AtFlags::empty())
                        .map_err(|e| layer_failed(&raw, "linking", e))?;
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                Self::remove(&parent, name).map_err(|e| layer_failed(&raw, "replacing", e))?;
                rustix::fs::mknodat(
                    &parent,
                    name,
                    ft,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(dev.0, dev.1),
                )
                .map_err(|e| layer_failed(&raw, "creating device node", e))?;
                let fd = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| layer_failed(&raw, "opening", e))?;
                self.set_owner_mode(&raw, &fd, Some((&parent, name)), uid, gid, mode)?;
                let _ = rustix::fs::utimensat(
                    &parent,
                    name,
                    &timestamps(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
            }
            // PAX/GNU bookkeeping the tar crate already folded into the next entry, and kinds
            // a root filesystem has no use for.
            _ => return Ok(0),
        }
        self.written.insert(rel);
        stats.entries += 1;
        Ok(consumed)
    }

    /// chown then chmod (chown clears set-id bits). `at` is used for nodes opened `O_PATH`.
    fn set_owner_mode(
        &self,
        raw: &[u8],
        fd: &impl AsFd,
        at: Option<(&OwnedFd, &OsStr)>,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<()> {
        let (u, g) = (
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        );
        let m = Mode::from_raw_mode(mode);
        match at {
            Some((dir, name)) => {
                rustix::fs::chownat(dir, name, u, g, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| layer_failed(raw, "chowning", e))?;
                rustix::fs::chmodat(dir, name, m, AtFlags::empty())
                    .map_err(|e| layer_failed(raw, "chmoding", e))?;
            }
            None => {
                rustix::fs::fchown(fd, u, g).map_err(|e| layer_failed(raw, "chowning", e))?;
                rustix::fs::fchmod(fd, m).map_err(|e| layer_failed(raw, "chmoding", e))?;
            }
        }
        Ok(())
    }

    /// Directory mtimes change as children arrive: set them once the layer is complete.
    fn restore_dir_times(&mut self) {
        for (comps, mtime) in std::mem::take(&mut self.dir_times) {
            let Some((name, parents)) = comps.split_last() else {
                continue;
            };
            if let Ok(parent) = self.open_dir(b"", parents, false) {
                let _ = rustix::fs::utimensat(
                    &parent,
                    name,
                    &timestamps(mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                );
            }
        }
    }
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(0),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn set_xattrs_fd(raw: &[u8], fd: &impl AsFd, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
    for (name, value) in xattrs {
        rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty())
            .map_err(|e| layer_failed(raw, &format!("setting xattr {name} on"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_refuses_escapes() {
        assert_eq!(
            clean_path(b"./a//b/./c").unwrap(),
            vec![OsString::from("a"), "b".into(), "c".into()]
        );
        assert!(clean_path(b"./").unwrap().is_empty());
        for bad in [&b"/etc/passwd"[..], b"../x", b"a/../../x", b"a/.."] {
            assert_eq!(
                clean_path(bad).unwrap_err().code(),
                ErrorCode::UnsafeArchivePath
            );
        }
    }

    #[test]
    fn detects_magic() {
        assert_eq!(detect_compression(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            detect_compression(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(detect_compression(b"ustar"), Compression::None);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the name, an accepted path is relative and has only normal components.
        #[test]
        fn accepted_paths_stay_relative(parts in proptest::collection::vec(
            prop_oneof![Just("..".to_owned()), Just(".".to_owned()), Just(String::new()), "[a-z.]{1,4}"],
            0..8,
        ), lead in any::<bool>()) {
            let mut name = parts.join("/");
            if lead {
                name.insert(0, '/');
            }
            let absolute = name.starts_with('/');
            match clean_path(name.as_bytes()) {
                Ok(comps) => {
                    prop_assert!(!absolute);
                    for c in &comps {
                        prop_assert!(c != ".." && c != "." && !c.is_empty());
                        prop_assert!(!c.as_bytes().contains(&b'/'));
                    }
                    prop_assert!(join(&comps).is_relative());
                }
                Err(e) => {
                    prop_assert_eq!(e.code(), ErrorCode::UnsafeArchivePath);
                    prop_assert!(absolute || parts.iter().any(|p| p == ".."));
                }
            }
        }
    }
}
