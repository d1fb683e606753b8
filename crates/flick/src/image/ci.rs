//! Firecracker's CI bucket: list a train's artifacts and pick a kernel and a rootfs.
//!
//! The bucket answers S3 `ListObjectsV2` (`GET <bucket>/?list-type=2&prefix=<p>`) with a
//! `ListBucketResult` XML document: one `<Contents>` per object (`Key`, `Size`, `ETag`,
//! `LastModified`), and `IsTruncated` / `NextContinuationToken` when more pages follow.
//! Artifacts of a train live under `firecracker-ci/v1.N/<arch>/`: kernels `vmlinux-X.Y.Z`
//! (besides `.config`, `.debug` and `-no-acpi` variants that are not bootable defaults) and
//! Ubuntu root filesystems `ubuntu-X.Y.squashfs` / `ubuntu-X.Y.ext4` (besides SSH keys and other
//! files).
//!
//! Selection: the kernel with the highest version (compared numerically, so `6.1.10` beats
//! `6.1.9`), and the rootfs with the highest Ubuntu release, squashfs preferred over ext4 for the
//! same release.

use quick_xml::events::Event;
use serde_json::json;

use super::download::Downloader;
use super::version::numeric_parts;
use super::{Arch, Endpoints, RootfsType};
use crate::error::{Error, ErrorCode, Result};

/// The most listing pages followed before giving up (1000 keys each on S3).
const MAX_PAGES: usize = 100;

/// One object of a bucket listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// The key.
    pub key: String,
    /// The size in bytes.
    pub size: u64,
    /// The `ETag` without quotes, if given.
    pub etag: Option<String>,
    /// `LastModified`, as the bucket wrote it.
    pub last_modified: Option<String>,
}

/// One page of a `ListObjectsV2` answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPage {
    /// The objects on this page.
    pub objects: Vec<ListedObject>,
    /// Whether more pages follow.
    pub is_truncated: bool,
    /// The token for the next page.
    pub next_continuation_token: Option<String>,
}

/// `Key`, `Size`, `ETag`, `LastModified` of the `<Contents>` being read.
type ObjectFields = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The best rootfs so far: ordering key (Ubuntu version, squashfs rank), object, version, type.
type RootfsCandidate<'a> = ((Vec<u64>, u8), &'a ListedObject, String, RootfsType);

fn resolve_failed(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::BaseImageResolveFailed, msg)
}

/// Parses a `ListBucketResult` document.
///
/// # Errors
/// [`ErrorCode::BaseImageResolveFailed`] for malformed XML, a different root element, or an
/// object without a key or with a non-numeric size.
pub fn parse_list_objects_v2(xml: &str) -> Result<ListPage> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut page = ListPage::default();
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut current: Option<ObjectFields> = None;
    let malformed = |detail: String| {
        resolve_failed(format!(
            "the bucket listing is not a ListBucketResult: {detail}"
        ))
    };
    loop {
        let event = reader.read_event().map_err(|e| {
            malformed(format!("XML error at byte {}", reader.error_position())).with_source(e)
        })?;
        match event {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_owned();
                if path.is_empty() && name != "ListBucketResult" {
                    return Err(malformed(format!("root element is <{name}>")));
                }
                if path.len() == 1 && name == "Contents" {
                    current = Some((None, None, None, None));
                }
                path.push(name);
                text.clear();
            }
            Event::Empty(e) => {
                let name = e.local_name().as_ref().to_owned();
                if path.is_empty() {
                    return Err(malformed(format!("root element is <{name}/>")));
                }
            }
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::CData(t) => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                if let Ok(Some(ch)) = r.resolve_char_ref() {
                    text.push(ch);
                } else {
                    let name = r.xml10_content();
                    let resolved = quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| malformed(format!("unknown entity &{name};")))?;
                    text.push_str(resolved);
                }
            }
            Event::End(_) => {
                let name = path.pop().unwrap_or_default();
                let value = std::mem::take(&mut text);
                match (path.len(), name.as_str()) {
                    (1, "IsTruncated") => page.is_truncated = value.trim() == "true",
                    (1, "NextContinuationToken") => {
                        page.next_continuation_token = Some(value.trim().to_owned());
                    }
                    (1, "Contents") => {
                        let (key, size, etag, modified) = current.take().unwrap_or_default();
                        let key = key.ok_or_else(|| malformed("an object has no <Key>".into()))?;
                        let size = size
                            .as_deref()
                            .and_then(|s| s.trim().parse::<u64>().ok())
                            .ok_or_else(|| {
                                malformed(format!("object {key} has no numeric <Size>"))
                            })?;
                        page.objects.push(ListedObject {
                            key,
                            size,
                            etag: etag.map(|e| e.trim().trim_matches('"').to_owned()),
                            last_modified: modified,
                        });
                    }
                    (2, field) if path.last().is_some_and(|p| p == "Contents") => {
                        if let Some(cur) = current.as_mut() {
                            match field {
                                "Key" => cur.0 = Some(value),
                                "Size" => cur.1 = Some(value),
                                "ETag" => cur.2 = Some(value),
                                "LastModified" => cur.3 = Some(value),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !path.is_empty() {
        return Err(malformed("the document ends inside an element".into()));
    }
    Ok(page)
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Lists every object under `prefix`, following continuation tokens.
///
/// # Errors
/// [`ErrorCode::BaseImageResolveFailed`] when the bucket cannot be listed or answers garbage.
pub async fn list_prefix(
    downloader: &Downloader,
    endpoints: &Endpoints,
    prefix: &str,
) -> Result<Vec<ListedObject>> {
    let base = Endpoints::base(&endpoints.ci_bucket);
    let mut objects = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut url = format!("{base}/?list-type=2&prefix={}", encode_query(prefix));
        if let Some(t) = &token {
            url.push_str(&format!("&continuation-token={}", encode_query(t)));
        }
        let xml = downloader
            .fetch_text(
                &url,
                ErrorCode::BaseImageResolveFailed,
                "the CI bucket listing",
            )
            .await?;
        let page = parse_list_objects_v2(&xml)?;
        objects.extend(page.objects);
        match (page.is_truncated, page.next_continuation_token) {
            (true, Some(next)) if !next.is_empty() => token = Some(next),
            (true, _) => {
                return Err(resolve_failed(format!(
                    "{url} is truncated but gives no continuation token"
                )));
            }
            (false, _) => return Ok(objects),
        }
    }
    Err(resolve_failed(format!(
        "the CI bucket listing under {prefix} has more than {MAX_PAGES} pages"
    )))
}

/// The kernel and rootfs chosen from a train's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiSelection {
    /// The CI train (`v1.N`).
    pub train: String,
    /// The listing prefix (`firecracker-ci/v1.N/<arch>/`).
    pub prefix: String,
    /// The kernel object.
    pub kernel: ListedObject,
    /// The kernel version (`6.1.10`).
    pub kernel_version: String,
    /// The rootfs object.
    pub rootfs: ListedObject,
    /// The Ubuntu release of the rootfs (`24.04`).
    pub ubuntu_version: String,
    /// The rootfs format.
    pub rootfs_type: RootfsType,
}

/// The listing prefix of a train and architecture.
#[must_use]
pub fn train_prefix(train: &str, arch: Arch) -> String {
    format!("firecracker-ci/{train}/{arch}/")
}

/// Picks the newest kernel and the preferred rootfs under `prefix` (see the module docs).
///
/// # Errors
/// [`ErrorCode::BaseImageResolveFailed`] naming what is missing.
pub fn select(train: &str, prefix: &str, objects: &[ListedObject]) -> Result<CiSelection> {
    let mut kernel: Option<(Vec<u64>, &ListedObject, String)> = None;
    let mut rootfs: Option<RootfsCandidate<'_>> = None;
    for obj in objects {
        let Some(name) = obj.key.strip_prefix(prefix) else {
            continue;
        };
        if name.contains('/') || obj.size == 0 {
            continue;
        }
        if let Some(ver) = name.strip_prefix("vmlinux-")
            && let Some(parts) = numeric_parts(ver).filter(|p| (2..=4).contains(&p.len()))
            && kernel.as_ref().is_none_or(|(best, _, _)| parts > *best)
        {
            kernel = Some((parts, obj, ver.to_owned()));
        }
        if let Some(rest) = name.strip_prefix("ubuntu-") {
            let (ver, ty, rank) = if let Some(v) = rest.strip_suffix(".squashfs") {
                (v, RootfsType::Squashfs, 1)
            } else if let Some(v) = rest.strip_suffix(".ext4") {
                (v, RootfsType::Ext4, 0)
            } else {
                continue;
            };
            if let Some(parts) = numeric_parts(ver).filter(|p| p.len() == 2) {
                let order = (parts, rank);
                if rootfs.as_ref().is_none_or(|(best, _, _, _)| order > *best) {
                    rootfs = Some((order, obj, ver.to_owned(), ty));
                }
            }
        }
    }
    let details = json!({ "prefix": prefix, "keys": objects.len() });
    let (_, kernel, kernel_version) = kernel.ok_or_else(|| {
        resolve_failed(format!("no vmlinux-X.Y.Z kernel under {prefix}"))
            .with_details(details.clone())
    })?;
    let (_, rootfs, ubuntu_version, rootfs_type) = rootfs.ok_or_else(|| {
        resolve_failed(format!(
            "no ubuntu-X.Y.squashfs or ubuntu-X.Y.ext4 rootfs under {prefix}"
        ))
        .with_details(details)
    })?;
    Ok(CiSelection {
        train: train.to_owned(),
        prefix: prefix.to_owned(),
        kernel: kernel.clone(),
        kernel_version,
        rootfs: rootfs.clone(),
        ubuntu_version,
        rootfs_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str) -> ListedObject {
        ListedObject {
            key: key.into(),
            size: 10,
            etag: None,
            last_modified: None,
        }
    }

    #[test]
    fn parses_a_real_shaped_listing() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>spec.ccfc.min</Name><Prefix>firecracker-ci/v1.10/x86_64/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>1a2b&amp;c</NextContinuationToken><Contents><Key>firecracker-ci/v1.10/x86_64/vmlinux-6.1.102</Key><LastModified>2024-09-03T10:00:00.000Z</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag><Size>42104248</Size><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>a&amp;b</Key><Size>1</Size></Contents></ListBucketResult>"#;
        let page = parse_list_objects_v2(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_continuation_token.as_deref(), Some("1a2b&c"));
        assert_eq!(page.objects.len(), 2);
        assert_eq!(page.objects[0].size, 42_104_248);
        assert_eq!(
            page.objects[0].etag.as_deref(),
            Some("9b2cf535f27731c974343645a3985328")
        );
        assert_eq!(page.objects[1].key, "a&b");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "<Error><Code>AccessDenied</Code></Error>",
            "<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>",
            "<ListBucketResult><Contents><Key>k</Key><Size>x</Size></Contents></ListBucketResult>",
            "<ListBucketResult><Contents>",
        ] {
            let err = parse_list_objects_v2(bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BaseImageResolveFailed, "{bad}");
        }
    }

    #[test]
    fn picks_numeric_newest_kernel_and_prefers_squashfs() {
        let p = "firecracker-ci/v1.10/x86_64/";
        let objects: Vec<_> = [
            "vmlinux-6.1.9",
            "vmlinux-6.1.10",
            "vmlinux-6.1.10.config",
            "vmlinux-6.1.99-no-acpi",
            "vmlinux-5.10.239",
            "ubuntu-22.04.squashfs",
            "ubuntu-24.04.ext4",
            "ubuntu-24.04.squashfs",
            "ubuntu-24.04.id_rsa",
        ]
        .iter()
        .map(|k| obj(&format!("{p}{k}")))
        .chain([obj("firecracker-ci/v1.10/aarch64/vmlinux-7.0.0")])
        .collect();
        let sel = select("v1.10", p, &objects).unwrap();
        assert_eq!(sel.kernel_version, "6.1.10");
        assert_eq!(sel.ubuntu_version, "24.04");
        assert_eq!(sel.rootfs_type, RootfsType::Squashfs);
        let ext4_only: Vec<_> = objects
            .iter()
            .filter(|o| !o.key.ends_with(".squashfs"))
            .cloned()
            .collect();
        let sel = select("v1.10", p, &ext4_only).unwrap();
        assert_eq!(sel.rootfs_type, RootfsType::Ext4);
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            encode_query("firecracker-ci/v1.10/x86_64/"),
            "firecracker-ci/v1.10/x86_64/"
        );
        assert_eq!(encode_query("a b&c=d+"), "a%20b%26c%3Dd%2B");
    }

    fn escape(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&apos;")
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(text in ".{0,400}") {
            let _ = parse_list_objects_v2(&text);
        }

        #[test]
        fn listings_round_trip(
            keys in proptest::collection::vec("[a-zA-Z0-9/&<>\"'. _-]{1,40}", 0..20),
            sizes in proptest::collection::vec(0u64..u64::MAX, 20),
            truncated in proptest::bool::ANY,
        ) {
            let mut xml = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>"#);
            xml.push_str(&format!("<IsTruncated>{truncated}</IsTruncated>"));
            if truncated {
                xml.push_str("<NextContinuationToken>t&amp;1</NextContinuationToken>");
            }
            for (key, size) in keys.iter().zip(&sizes) {
                xml.push_str(&format!(
                    "<Contents><Key>{}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified><ETag>&quot;x&quot;</ETag><Size>{size}</Size></Contents>",
                    escape(key)
                ));
            }
            xml.push_str("</ListBucketResult>");
            let page = parse_list_objects_v2(&xml).unwrap();
            proptest::prop_assert_eq!(page.is_truncated, truncated);
            proptest::prop_assert_eq!(page.next_continuation_token.is_some(), truncated);
            let got: Vec<(String, u64)> = page.objects.into_iter().map(|o| (o.key, o.size)).collect();
            let want: Vec<(String, u64)> = keys.iter().cloned().zip(sizes.iter().copied()).collect();
            proptest::prop_assert_eq!(got, want);
        }

        #[test]
        fn newest_kernel_wins_by_number(versions in proptest::collection::btree_set((0u64..30, 0u64..30, 0u64..300), 1..12)) {
            let p = "firecracker-ci/v1.16/x86_64/";
            let mut objects: Vec<ListedObject> = versions
                .iter()
                .map(|(a, b, c)| obj(&format!("{p}vmlinux-{a}.{b}.{c}")))
                .collect();
            objects.push(obj(&format!("{p}ubuntu-24.04.ext4")));
            objects.reverse();
            let sel = select("v1.16", p, &objects).unwrap();
            let (a, b, c) = versions.iter().max().unwrap();
            proptest::prop_assert_eq!(sel.kernel_version, format!("{a}.{b}.{c}"));
        }
    }
}
