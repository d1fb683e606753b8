//! Hosted base-image manifests (schema v1).
//!
//! A project publishes a JSON document describing one kernel + rootfs bundle:
//!
//! ```json
//! {
//!   "schemaVersion": 1,
//!   "bundleId": "acme-ubuntu-24.04-6.1.10",
//!   "name": "Acme Ubuntu 24.04",
//!   "arch": "x86_64",
//!   "firecrackerVersion": "v1.16.1",
//!   "rootfsType": "squashfs",
//!   "rootfsIsReadOnly": true,
//!   "bootArgs": "console=ttyS0 reboot=k panic=1 pci=off ro",
//!   "kernel": { "url": "https://example.com/vmlinux", "fileName": "vmlinux",
//!               "sha256": "<64 hex>", "sizeBytes": 42104248 },
//!   "rootfs": { "path": "rootfs.squashfs", "fileName": "rootfs.squashfs" }
//! }
//! ```
//!
//! Rules (each violation is [`ErrorCode::InvalidBaseImageManifest`] naming the field; every
//! violation is listed in the error details):
//! - `schemaVersion` must be the number 1.
//! - `bundleId`: letters, digits, `.`, `_`, `-`, at most 128 characters, not `.` or `..`.
//! - `name`, `bootArgs`: strings when present (`name` defaults to `bundleId`, `bootArgs` to args that
//!   fit `rootfsType`); `arch`: `x86_64` or `aarch64` when present; `firecrackerVersion`: `vX.Y.Z`
//!   when present.
//! - `rootfsType`: `ext4` or `squashfs`; `rootfsIsReadOnly`: a boolean when present (defaults to
//!   true for squashfs, false for ext4; false is rejected for squashfs).
//! - `kernel` and `rootfs`: objects with exactly one of `url` (http or https) and `path`;
//!   `fileName` a plain file name (no `/`, not `.`/`..`; defaults to the last segment of the
//!   url/path); `sha256` 64 hex digits, required with `url`; `sizeBytes` a positive integer.
//!
//! Unknown keys are ignored so newer publishers stay readable. A relative `path` is resolved
//! against the directory of a local manifest; a manifest fetched from a URL may only use absolute
//! paths. Failing to read or fetch the manifest is [`ErrorCode::BaseImageManifestFailed`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::download::{Downloader, normalize_sha256};
use super::version::normalize_fc_version;
use super::{Arch, RootfsType};
use crate::error::{Error, ErrorCode, Result};

/// Where a hosted manifest is loaded from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestSource {
    /// An `http(s)://` URL.
    Url(String),
    /// A local file.
    Path(PathBuf),
}

impl ManifestSource {
    /// Treats `text` as a URL when it starts with `http://` or `https://`, else as a path.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        if text.starts_with("http://") || text.starts_with("https://") {
            Self::Url(text.to_owned())
        } else {
            Self::Path(PathBuf::from(text))
        }
    }

    /// The URL or path as text.
    #[must_use]
    pub fn display(&self) -> String {
        match self {
            Self::Url(u) => u.clone(),
            Self::Path(p) => p.display().to_string(),
        }
    }
}

/// Where an artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactLocation {
    /// Downloaded from a URL.
    Url(String),
    /// Copied from a local file.
    Path(PathBuf),
}

/// One artifact (kernel or rootfs) of a manifest, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSpec {
    /// Where it comes from.
    pub location: ArtifactLocation,
    /// The file name inside the bundle directory.
    pub file_name: String,
    /// The expected SHA-256 (always present for URLs).
    pub sha256: Option<String>,
    /// The expected size.
    pub size_bytes: Option<u64>,
}

/// A validated schema-v1 manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedManifest {
    /// The bundle id (also the cache directory name).
    pub bundle_id: String,
    /// A display name.
    pub name: String,
    /// The architecture, when the manifest states one.
    pub arch: Option<Arch>,
    /// The Firecracker version the bundle was made for.
    pub firecracker_version: Option<String>,
    /// The rootfs format.
    pub rootfs_type: RootfsType,
    /// Whether the rootfs is attached read-only.
    pub rootfs_is_read_only: bool,
    /// Kernel boot args.
    pub boot_args: String,
    /// The kernel.
    pub kernel: ArtifactSpec,
    /// The rootfs.
    pub rootfs: ArtifactSpec,
}

/// Whether `id` is a valid bundle id.
#[must_use]
pub fn is_valid_bundle_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `name` is a plain file name usable inside a bundle directory.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name != "manifest.json"
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && !name.ends_with(".part")
}

struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, field: &str, msg: impl Into<String>) {
        self.0.push((field.to_owned(), msg.into()));
    }
}

fn opt_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
    p: &mut Problems,
    field: &str,
) -> Option<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            p.add(field, "must be a string");
            None
        }
    }
}

fn artifact(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    base_dir: Option<&Path>,
    p: &mut Problems,
) -> Option<ArtifactSpec> {
    let Some(value) = obj.get(key) else {
        p.add(key, "is required");
        return None;
    };
    let Some(a) = value.as_object() else {
        p.add(key, "must be an object with url or path");
        return None;
    };
    let url = opt_str(a, "url", p, &format!("{key}.url"));
    let path = opt_str(a, "path", p, &format!("{key}.path"));
    let location = match (url, path) {
        (Some(_), Some(_)) => {
            p.add(&format!("{key}.url"), "give either url or path, not both");
            None
        }
        (None, None) => {
            p.add(&format!("{key}.url"), "one of url or path is required");
            None
        }
        (Some(u), None) => {
            let ok = (u.starts_with("https://") || u.starts_with("http://"))
                && u.len() > "https://".len()
                && !u.chars().any(char::is_whitespace);
            if ok {
                Some(ArtifactLocation::Url(u.to_owned()))
            } else {
                p.add(&format!("{key}.url"), "must be an http:// or https:// URL");
                None
            }
        }
        (None, Some(raw)) => {
            let path = Path::new(raw);
            if raw.is_empty() {
                p.add(&format!("{key}.path"), "must not be empty");
                None
            } else if path.is_absolute() {
                Some(ArtifactLocation::Path(path.to_owned()))
            } else if let Some(dir) = base_dir {
                Some(ArtifactLocation::Path(dir.join(path)))
            } else {
                p.add(
                    &format!("{key}.path"),
                    "must be absolute in a manifest fetched from a URL",
                );
                None
            }
        }
    };
    let default_name = url
        .map(|u| u.split(['?', '#']).next().unwrap_or(u))
        .or(path)
        .and_then(|s| s.rsplit('/').next())
        .map(str::to_owned);
    let file_name = match opt_str(a, "fileName", p, &format!("{key}.fileName")) {
        Some(name) if is_plain_file_name(name) => Some(name.to_owned()),
        Some(_) => {
            p.add(
                &format!("{key}.fileName"),
                "must be a plain file name (no path separators, not . or ..)",
            );
            None
        }
        None => match default_name {
            Some(n) if is_plain_file_name(&n) => Some(n),
            _ if location.is_none() => None,
            _ => {
                p.add(
                    &format!("{key}.fileName"),
                    "is required (cannot derive one)",
                );
                None
            }
        },
    };
    let sha256 = match a.get("sha256") {
        None | Some(Value::Null) => {
            if url.is_some() {
                p.add(&format!("{key}.sha256"), "is required with url");
            }
            None
        }
        Some(Value::String(s)) => match normalize_sha256(s) {
            Some(d) => Some(d),
            None => {
                p.add(&format!("{key}.sha256"), "must be 64 hex digits");
                None
            }
        },
        Some(_) => {
            p.add(
                &format!("{key}.sha256"),
                "must be a string of 64 hex digits",
            );
            None
        }
    };
    let size_bytes = match a.get("sizeBytes") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v > 0 => Some(v),
            _ => {
                p.add(&format!("{key}.sizeBytes"), "must be a positive integer");
                None
            }
        },
        Some(_) => {
            p.add(
                &format!("{key}.sizeBytes"),
                "must be a number (a positive integer)",
            );
            None
        }
    };
    Some(ArtifactSpec {
        location: location?,
        file_name: file_name?,
        sha256,
        size_bytes,
    })
}

/// Validates a manifest document. `base_dir` is the directory relative `path`s are resolved
/// against (the manifest's own directory for local manifests, `None` for fetched ones).
///
/// # Errors
/// [`ErrorCode::InvalidBaseImageManifest`]; the message names every offending field, the details
/// list them as `{"field", "problem"}` objects.
pub fn parse_manifest(text: &str, base_dir: Option<&Path>) -> Result<HostedManifest> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Error::new(
            ErrorCode::InvalidBaseImageManifest,
            format!(
                "manifest is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
        .with_details(json!({ "problems": [{ "field": "$", "problem": e.to_string() }] }))
    })?;
    let Some(obj) = value.as_object() else {
        return Err(Error::new(
            ErrorCode::InvalidBaseImageManifest,
            "manifest must be a JSON object",
        )
        .with_details(json!({ "problems": [{ "field": "$", "problem": "not an object" }] })));
    };
    let mut p = Problems(Vec::new());
    match obj.get("schemaVersion") {
        Some(v) if v.as_u64() == Some(1) => {}
        None => p.add("schemaVersion", "is required (1)"),
        Some(v) => p.add("schemaVersion", format!("must be 1, got {v}")),
    }
    let bundle_id = match obj.get("bundleId") {
        Some(Value::String(id)) if is_valid_bundle_id(id) => Some(id.clone()),
        Some(Value::String(_)) => {
            p.add(
                "bundleId",
                "may contain only letters, digits, '.', '_' and '-' (at most 128, not . or ..)",
            );
            None
        }
        None => {
            p.add("bundleId", "is required");
            None
        }
        Some(_) => {
            p.add("bundleId", "must be a string");
            None
        }
    };
    let name = opt_str(obj, "name", &mut p, "name").map(str::to_owned);
    let arch = opt_str(obj, "arch", &mut p, "arch").and_then(|a| match Arch::parse(a) {
        Ok(a) => Some(a),
        Err(_) => {
            p.add("arch", "must be x86_64 or aarch64");
            None
        }
    });
    let firecracker_version = opt_str(obj, "firecrackerVersion", &mut p, "firecrackerVersion")
        .and_then(|v| match normalize_fc_version(v) {
            Ok(v) => Some(v),
            Err(_) => {
                p.add("firecrackerVersion", "must look like v1.16.1");
                None
            }
        });
    let rootfs_type = match obj.get("rootfsType") {
        Some(Value::String(t)) if t == "ext4" => Some(RootfsType::Ext4),
        Some(Value::String(t)) if t == "squashfs" => Some(RootfsType::Squashfs),
        Some(Value::String(t)) => {
            p.add("rootfsType", format!("must be ext4 or squashfs, got {t:?}"));
            None
        }
        None => {
            p.add("rootfsType", "is required (ext4 or squashfs)");
            None
        }
        Some(_) => {
            p.add("rootfsType", "must be the string ext4 or squashfs");
            None
        }
    };
    let read_only = match obj.get("rootfsIsReadOnly") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            p.add("rootfsIsReadOnly", "must be true or false");
            None
        }
    };
    if rootfs_type == Some(RootfsType::Squashfs) && read_only == Some(false) {
        p.add(
            "rootfsIsReadOnly",
            "squashfs is read-only; it cannot be false",
        );
    }
    let boot_args = opt_str(obj, "bootArgs", &mut p, "bootArgs").map(str::to_owned);
    let kernel = artifact(obj, "kernel", base_dir, &mut p);
    let rootfs = artifact(obj, "rootfs", base_dir, &mut p);
    if let (Some(k), Some(r)) = (&kernel, &rootfs)
        && k.file_name == r.file_name
    {
        p.add("rootfs.fileName", "must differ from kernel.fileName");
    }
    if !p.0.is_empty() {
        let fields: Vec<String> = p.0.iter().map(|(f, m)| format!("{f} {m}")).collect();
        let details: Vec<Value> =
            p.0.iter()
                .map(|(f, m)| json!({ "field": f, "problem": m }))
                .collect();
        return Err(Error::new(
            ErrorCode::InvalidBaseImageManifest,
            format!("invalid base-image manifest: {}", fields.join("; ")),
        )
        .with_details(json!({ "problems": details })));
    }
    let (Some(bundle_id), Some(rootfs_type), Some(kernel), Some(rootfs)) =
        (bundle_id, rootfs_type, kernel, rootfs)
    else {
        return Err(Error::new(
            ErrorCode::Internal,
            "manifest validation lost a field",
        ));
    };
    Ok(HostedManifest {
        name: name.unwrap_or_else(|| bundle_id.clone()),
        bundle_id,
        arch,
        firecracker_version,
        rootfs_is_read_only: read_only.unwrap_or(rootfs_type.is_read_only()),
        boot_args: boot_args.unwrap_or_else(|| rootfs_type.default_boot_args()),
        rootfs_type,
        kernel,
        rootfs,
    })
}

/// Reads or fetches a manifest and validates it.
///
/// # Errors
/// [`ErrorCode::BaseImageManifestFailed`] when it cannot be read or fetched;
/// [`ErrorCode::InvalidBaseImageManifest`] when it is invalid.
pub async fn load_manifest(
    downloader: &Downloader,
    source: &ManifestSource,
) -> Result<HostedManifest> {
    match source {
        ManifestSource::Url(url) => {
            let text = downloader
                .fetch_text(
                    url,
                    ErrorCode::BaseImageManifestFailed,
                    "the base-image manifest",
                )
                .await?;
            parse_manifest(&text, None)
        }
        ManifestSource::Path(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::io(
                    ErrorCode::BaseImageManifestFailed,
                    "reading manifest",
                    path,
                    e,
                )
            })?;
            let dir = path
                .parent()
                .map(|d| {
                    if d.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        d
                    }
                })
                .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.to_owned()));
            parse_manifest(&text, dir.as_deref())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Value {
        json!({
            "schemaVersion": 1,
            "bundleId": "acme-24.04",
            "rootfsType": "squashfs",
            "kernel": { "url": "https://example.com/k/vmlinux-6.1.10", "sha256": "a".repeat(64), "sizeBytes": 10 },
            "rootfs": { "path": "/srv/rootfs.squashfs" }
        })
    }

    #[test]
    fn defaults_fill_in() {
        let m = parse_manifest(&good().to_string(), None).unwrap();
        assert_eq!(m.name, "acme-24.04");
        assert!(m.rootfs_is_read_only);
        assert_eq!(m.kernel.file_name, "vmlinux-6.1.10");
        assert_eq!(m.rootfs.file_name, "rootfs.squashfs");
        assert!(m.boot_args.contains("ro"));
    }

    #[test]
    fn every_problem_is_named() {
        let mut v = good();
        v["schemaVersion"] = json!(2);
        v["bundleId"] = json!("../x");
        v["kernel"]["fileName"] = json!("../../etc/passwd");
        v["rootfs"]["sizeBytes"] = json!("big");
        let err = parse_manifest(&v.to_string(), None).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidBaseImageManifest);
        for field in [
            "schemaVersion",
            "bundleId",
            "kernel.fileName",
            "rootfs.sizeBytes",
        ] {
            assert!(
                err.message().contains(field),
                "{field} missing in {}",
                err.message()
            );
        }
        assert_eq!(
            err.details().unwrap()["problems"].as_array().unwrap().len(),
            4
        );
    }

    type Edit = Box<dyn Fn(&mut Value)>;

    #[test]
    fn conflicting_fields_are_named() {
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["kernel"]["path"] = json!("/k")),
                "kernel.url",
            ),
            (Box::new(|v| v["rootfs"] = json!({})), "rootfs.url"),
            (
                Box::new(|v| v["rootfsIsReadOnly"] = json!(false)),
                "rootfsIsReadOnly",
            ),
            (
                Box::new(|v| v["rootfsIsReadOnly"] = json!("yes")),
                "rootfsIsReadOnly",
            ),
            (
                Box::new(|v| v["rootfs"]["fileName"] = json!("vmlinux-6.1.10")),
                "rootfs.fileName",
            ),
            (
                Box::new(|v| v["kernel"]["url"] = json!("ftp://example.com/k")),
                "kernel.url",
            ),
            (
                Box::new(|v| v["kernel"]["fileName"] = json!("manifest.json")),
                "kernel.fileName",
            ),
            (
                Box::new(|v| v["kernel"]["fileName"] = json!("a\\b")),
                "kernel.fileName",
            ),
            (Box::new(|v| v["arch"] = json!("riscv64")), "arch"),
            (
                Box::new(|v| v["firecrackerVersion"] = json!("latest")),
                "firecrackerVersion",
            ),
            (
                Box::new(|v| v["kernel"]["sizeBytes"] = json!(1.5)),
                "kernel.sizeBytes",
            ),
            (Box::new(|v| v["bootArgs"] = json!(["ro"])), "bootArgs"),
            (Box::new(|v| v["bundleId"] = json!(7)), "bundleId"),
        ];
        for (edit, field) in cases {
            let mut v = good();
            edit(&mut v);
            let err = parse_manifest(&v.to_string(), None).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidBaseImageManifest);
            let problems = err.details().unwrap()["problems"]
                .as_array()
                .unwrap()
                .clone();
            assert!(
                problems.iter().any(|p| p["field"] == field),
                "{field}: {problems:?}"
            );
        }
        let err = parse_manifest("[1, 2]", None).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidBaseImageManifest);
        let err = parse_manifest("{", None).unwrap_err();
        assert_eq!(err.details().unwrap()["problems"][0]["field"], "$");
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let mut v = good();
        v["publisher"] = json!({ "team": "acme" });
        v["kernel"]["mirror"] = json!("https://mirror.example.com/k");
        assert!(parse_manifest(&v.to_string(), None).is_ok());
    }

    #[test]
    fn relative_paths_need_a_base() {
        let mut v = good();
        v["rootfs"]["path"] = json!("rootfs.squashfs");
        let err = parse_manifest(&v.to_string(), None).unwrap_err();
        assert!(err.message().contains("rootfs.path"));
        let m = parse_manifest(&v.to_string(), Some(Path::new("/srv/m"))).unwrap();
        assert_eq!(
            m.rootfs.location,
            ArtifactLocation::Path(PathBuf::from("/srv/m/rootfs.squashfs"))
        );
    }

    #[test]
    fn bundle_ids() {
        for ok in ["a", "A.b_c-9", "..a"] {
            assert!(is_valid_bundle_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(!is_valid_bundle_id(bad), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(text in ".{0,300}") {
            let _ = parse_manifest(&text, None);
        }

        #[test]
        fn file_names_never_escape(name in ".{0,40}") {
            let mut v = good();
            v["kernel"]["fileName"] = json!(name);
            if let Ok(m) = parse_manifest(&v.to_string(), None) {
                let joined = Path::new("/cache/b").join(&m.kernel.file_name);
                proptest::prop_assert_eq!(joined.parent(), Some(Path::new("/cache/b")));
                proptest::prop_assert!(m.kernel.file_name != ".." && m.kernel.file_name != ".");
            }
        }

        #[test]
        fn valid_bundle_ids_are_accepted(id in "[A-Za-z0-9_-][A-Za-z0-9._-]{0,60}") {
            let mut v = good();
            v["bundleId"] = json!(id.clone());
            let m = parse_manifest(&v.to_string(), None).unwrap();
            proptest::prop_assert_eq!(m.bundle_id, id);
        }
    }
}
