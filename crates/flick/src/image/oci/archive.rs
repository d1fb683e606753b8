//! Reading images that arrive as files: `docker save` tarballs (Docker's `manifest.json` form and
//! the OCI-layout form newer Docker writes), OCI layout directories and OCI layout tars.
//!
//! A tar is read once: every regular member is copied into a scratch directory while it is hashed,
//! symlinks between members (older `docker save` output links duplicate layers) are remembered and
//! resolved by name inside the archive. Nothing in the archive is ever extracted by its own name.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::layer::{Compression, detect_compression};
use crate::error::{Error, ErrorCode, Result};

/// Largest JSON document (index, manifest, config) read from an archive.
const MAX_DOC: u64 = 16 << 20;

fn import_failed(path: &Path, msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::ImagePullFailed, msg).with_details(json!({ "path": path }))
}

/// A member copied out of a tar.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// Where an archive's files come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// An OCI layout directory.
    Dir(PathBuf),
    /// A tar, copied member by member into a scratch directory.
    Tar {
        origin: PathBuf,
        files: HashMap<String, Member>,
        links: HashMap<String, String>,
    },
}

/// Normalizes an archive member name: no leading `./` or `/`, no `.` components; `..` is
/// resolved lexically and may not climb above the archive root.
pub(crate) fn normalize(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for comp in name.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

impl Source {
    /// Opens `path`: a directory is an OCI layout; a file is a tar (optionally gzip/zstd
    /// compressed) copied into `scratch`.
    pub(crate) fn open(path: &Path, scratch: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(ErrorCode::ImagePullFailed, "opening", path, e))?;
        if meta.is_dir() {
            return Ok(Self::Dir(path.to_owned()));
        }
        let file = std::fs::File::open(path)
            .map_err(|e| Error::io(ErrorCode::ImagePullFailed, "opening", path, e))?;
        let mut buffered = BufReader::with_capacity(1 << 20, file);
        let head = buffered
            .fill_buf()
            .map_err(|e| Error::io(ErrorCode::ImagePullFailed, "reading", path, e))?;
        let reader: Box<dyn Read> = match detect_compression(head) {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(buffered)
                    .map_err(|e| Error::io(ErrorCode::ImagePullFailed, "decompressing", path, e))?,
            ),
            Compression::None => Box::new(buffered),
        };
        let mut archive = tar::Archive::new(reader);
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        let entries = archive
            .entries()
            .map_err(|e| Error::io(ErrorCode::ImagePullFailed, "reading", path, e))?;
        for (n, entry) in entries.enumerate() {
            let mut entry = entry.map_err(|e| {
                import_failed(
                    path,
                    format!("{} is not a readable tar: {e}", path.display()),
                )
            })?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(name) = normalize(&raw) else {
                return Err(Error::new(
                    ErrorCode::UnsafeArchivePath,
                    format!("refusing archive member {raw:?}: it climbs above the archive root"),
                )
                .with_details(json!({ "entry": raw, "path": path })));
            };
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let dest = scratch.join(format!("m{n}"));
                    let mut out = std::fs::File::create(&dest)
                        .map_err(|e| Error::io(ErrorCode::StoreFailed, "creating", &dest, e))?;
                    let mut hasher = Sha256::new();
                    let mut buf = vec![0u8; 1 << 20];
                    let mut size = 0u64;
                    loop {
                        let k = entry.read(&mut buf).map_err(|e| {
                            Error::io(ErrorCode::ImagePullFailed, "reading", path, e)
                        })?;
                        if k == 0 {
                            break;
                        }
                        hasher.update(&buf[..k]);
                        out.write_all(&buf[..k])
                            .map_err(|e| Error::io(ErrorCode::StoreFailed, "writing", &dest, e))?;
                        size += k as u64;
                    }
                    files.insert(
                        name,
                        Member {
                            path: dest,
                            sha256: hex::encode(hasher.finalize()),
                            size,
                        },
                    );
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Some(target) = entry.link_name_bytes() {
                        let target = String::from_utf8_lossy(&target).into_owned();
                        let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                            name.rsplit_once('/').map_or("", |(d, _)| d).to_owned()
                        } else {
                            String::new()
                        };
                        if let Some(t) = normalize(&format!("{base}/{target}")) {
                            links.insert(name, t);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Self::Tar {
            origin: path.to_owned(),
            files,
            links,
        })
    }

    fn origin(&self) -> &Path {
        match self {
            Self::Dir(p) | Self::Tar { origin: p, .. } => p,
        }
    }

    /// Whether the archive holds `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.locate(name).is_ok()
    }

    /// The local file holding member `name` and, for tars, its digest and size.
    pub(crate) fn locate(&self, name: &str) -> Result<(PathBuf, Option<Member>)> {
        let missing = || {
            import_failed(
                self.origin(),
                format!("{} has no member {name:?}", self.origin().display()),
            )
        };
        let name = normalize(name).ok_or_else(missing)?;
        match self {
            Self::Dir(root) => {
                let path = root.join(&name);
                let real = std::fs::canonicalize(&path).map_err(|_| missing())?;
                let base = std::fs::canonicalize(root).map_err(|_| missing())?;
                if !real.starts_with(&base) || !real.is_file() {
                    return Err(missing());
                }
                Ok((real, None))
            }
            Self::Tar { files, links, .. } => {
                let mut cur = name;
                for _ in 0..16 {
                    if let Some(m) = files.get(&cur) {
                        return Ok((m.path.clone(), Some(m.clone())));
                    }
                    match links.get(&cur) {
                        Some(next) => cur = next.clone(),
                        None => return Err(missing()),
                    }
                }
                Err(missing())
            }
        }
    }

    /// Reads a JSON member (at most 16 MiB).
    pub(crate) fn read_doc(&self, name: &str) -> Result<Vec<u8>> {
        let (path, _) = self.locate(name)?;
        let mut body = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_DOC + 1).read_to_end(&mut body))
            .map_err(|e| Error::io(ErrorCode::ImagePullFailed, "reading", &path, e))?;
        if body.len() as u64 > MAX_DOC {
            return Err(import_failed(
                self.origin(),
                format!(
                    "{name} in {} is larger than 16 MiB",
                    self.origin().display()
                ),
            ));
        }
        Ok(body)
    }
}
