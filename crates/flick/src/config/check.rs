//! The problem collector and the small checks every resource shares (ids, host paths, MACs,
//! interface names, CPU bitmaps). Validation is pure: it never touches the filesystem.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The longest Unix socket path the kernel accepts (`sun_path` is 108 bytes with the NUL).
pub(crate) const MAX_UNIX_SOCKET_PATH: usize = 107;

/// Linux network interface names are at most `IFNAMSIZ - 1` bytes.
pub(crate) const MAX_IFNAME: usize = 15;

/// Firecracker's kernel command line buffer (x86_64 and aarch64) is 2048 bytes with the NUL.
pub(crate) const MAX_BOOT_ARGS: usize = 2047;

/// One thing wrong with a configuration: where (a field path such as `drives[1].drive_id`)
/// and what.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfigProblem {
    /// Field path: dotted fields, `[i]` for list items, `["key"]` for map keys.
    pub field: String,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Collects every problem of one validation run.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<ConfigProblem>);

impl Problems {
    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            field: field.into(),
            message: message.into(),
        });
    }

    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &ConfigProblem> {
        self.0.iter()
    }

    pub(crate) fn into_vec(self) -> Vec<ConfigProblem> {
        self.0
    }

    /// `Ok(())` when empty, otherwise the one [`ErrorCode::InvalidConfig`] error listing all.
    ///
    /// [`ErrorCode::InvalidConfig`]: crate::ErrorCode::InvalidConfig
    pub(crate) fn into_result(self, what: &str) -> crate::Result<()> {
        problems_to_result(what, &self.0)
    }
}

/// Turns a problem list into `Ok(())` or an `INVALID_CONFIG` error with every problem in the
/// details.
pub(crate) fn problems_to_result(what: &str, problems: &[ConfigProblem]) -> crate::Result<()> {
    let Some(first) = problems.first() else {
        return Ok(());
    };
    let count = problems.len();
    let noun = if count == 1 { "problem" } else { "problems" };
    let message = if count == 1 {
        format!("invalid {what}: {first}")
    } else {
        format!("invalid {what}: {count} {noun}, first: {first}")
    };
    let details = serde_json::json!({ "problems": problems });
    Err(crate::Error::new(crate::ErrorCode::InvalidConfig, message).with_details(details))
}

/// Resource ids (drive, interface, pmem) go into URL paths; Firecracker accepts only
/// alphanumerics and `_` (its `checked_id`). flick further limits them to ASCII, so the id
/// needs no percent-encoding in the request path.
pub(crate) fn check_id(at: &str, id: &str, p: &mut Problems) {
    if id.is_empty() {
        p.push(at, "must not be empty");
    } else if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        p.push(
            at,
            format!("{id:?} may only contain ASCII letters, digits and '_'"),
        );
    }
}

/// A host path Firecracker opens: absolute, UTF-8 (JSON carries strings), no NUL byte.
pub(crate) fn check_host_path(at: &str, path: &Path, p: &mut Problems) {
    let Some(text) = path.to_str() else {
        p.push(at, "must be valid UTF-8");
        return;
    };
    if text.is_empty() {
        p.push(at, "must not be empty");
    } else if text.contains('\0') {
        p.push(at, "must not contain a NUL byte");
    } else if !path.is_absolute() {
        p.push(at, format!("{text:?} must be an absolute path"));
    } else if text.ends_with('/') {
        p.push(at, format!("{text:?} names a directory, not a file"));
    }
}

/// A host path Firecracker binds or connects a Unix socket on.
pub(crate) fn check_socket_path(at: &str, path: &Path, p: &mut Problems) {
    let before = p.0.len();
    check_host_path(at, path, p);
    if p.0.len() == before && path.as_os_str().len() > MAX_UNIX_SOCKET_PATH {
        p.push(
            at,
            format!(
                "is {} bytes; a Unix socket path holds at most {MAX_UNIX_SOCKET_PATH}",
                path.as_os_str().len()
            ),
        );
    }
}

/// A Linux interface name: 1..=15 bytes, not `.`/`..`, no `/`, `:`, whitespace or NUL
/// (the kernel's `dev_valid_name`).
pub(crate) fn check_ifname(at: &str, name: &str, p: &mut Problems) {
    if name.is_empty() {
        p.push(at, "must not be empty");
    } else if name.len() > MAX_IFNAME {
        p.push(
            at,
            format!(
                "{name:?} is {} bytes; interface names hold at most {MAX_IFNAME}",
                name.len()
            ),
        );
    } else if name == "." || name == ".." {
        p.push(at, format!("{name:?} is not a valid interface name"));
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        p.push(
            at,
            format!("{name:?} must not contain '/', ':', whitespace or NUL"),
        );
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case) into its six octets.
pub(crate) fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for slot in &mut out {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *slot = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// A guest MAC: six hex octets separated by `:`, unicast (the group bit of the first octet is
/// clear).
pub(crate) fn check_mac(at: &str, mac: &str, p: &mut Problems) {
    match parse_mac(mac) {
        None => p.push(
            at,
            format!("{mac:?} is not a MAC address (six hex octets separated by ':')"),
        ),
        Some(octets) if octets[0] & 1 == 1 => p.push(
            at,
            format!("{mac:?} is a multicast address; a guest MAC must be unicast"),
        ),
        Some(_) => {}
    }
}

/// A CPU template bitmap: `0b` then exactly (or, with `up_to`, at most) `bits` characters of
/// `0`, `1` or `x`; `_` separators are allowed where the spec allows them and do not count.
pub(crate) fn check_bitmap(
    at: &str,
    bitmap: &str,
    bits: usize,
    up_to: bool,
    underscores: bool,
    p: &mut Problems,
) {
    let Some(body) = bitmap.strip_prefix("0b") else {
        p.push(at, format!("{bitmap:?} must start with \"0b\""));
        return;
    };
    let mut count = 0usize;
    for c in body.chars() {
        match c {
            '0' | '1' | 'x' => count += 1,
            '_' if underscores => {}
            other => {
                p.push(
                    at,
                    format!("{bitmap:?} contains {other:?}; only '0', '1' and 'x' are allowed"),
                );
                return;
            }
        }
    }
    let ok = if up_to {
        (1..=bits).contains(&count)
    } else {
        count == bits
    };
    if !ok {
        let want = if up_to {
            format!("1 to {bits}")
        } else {
            bits.to_string()
        };
        p.push(
            at,
            format!("{bitmap:?} has {count} bit characters after \"0b\"; expected {want}"),
        );
    }
}

/// A number written as hex (`0x`), binary (`0b`) or decimal, as Firecracker's CPU templates
/// accept it; `None` when malformed or out of range for `u64`.
pub(crate) fn parse_cpu_number(text: &str) -> Option<u64> {
    let (digits, radix) = if let Some(h) = text.strip_prefix("0x") {
        (h, 16)
    } else if let Some(b) = text.strip_prefix("0b") {
        (b, 2)
    } else {
        (text, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// A CPU template number that must fit in `max`.
pub(crate) fn check_cpu_number(at: &str, text: &str, max: u64, p: &mut Problems) {
    match parse_cpu_number(text) {
        None => p.push(
            at,
            format!("{text:?} is not a hex (0x), binary (0b) or decimal number"),
        ),
        Some(v) if v > max => p.push(at, format!("{text:?} does not fit in {max:#x}")),
        Some(_) => {}
    }
}

/// Every index of `items` whose key was already seen, with the key, in order.
pub(crate) fn duplicates<'a, I>(items: I) -> Vec<(usize, String)>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, key) in items.into_iter().enumerate() {
        if !seen.insert(key) {
            out.push((i, key.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: impl FnOnce(&mut Problems)) -> Vec<String> {
        let mut p = Problems::default();
        f(&mut p);
        p.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn ids() {
        assert!(run(|p| check_id("x", "rootfs_2", p)).is_empty());
        assert_eq!(run(|p| check_id("x", "", p)), ["x: must not be empty"]);
        for bad in ["a-b", "a b", "a/b", "é", "a.b"] {
            assert_eq!(run(|p| check_id("x", bad, p)).len(), 1, "{bad}");
        }
    }

    #[test]
    fn host_paths() {
        assert!(run(|p| check_host_path("k", Path::new("/a/b"), p)).is_empty());
        for bad in ["", "rel/x", "/a/\0b", "/dir/"] {
            assert_eq!(
                run(|p| check_host_path("k", Path::new(bad), p)).len(),
                1,
                "{bad}"
            );
        }
        use std::os::unix::ffi::OsStrExt;
        let not_utf8 = Path::new(std::ffi::OsStr::from_bytes(b"/a/\xff"));
        assert_eq!(
            run(|p| check_host_path("k", not_utf8, p)),
            ["k: must be valid UTF-8"]
        );
        let long = format!("/{}", "s".repeat(MAX_UNIX_SOCKET_PATH));
        assert_eq!(
            run(|p| check_socket_path("s", Path::new(&long), p)).len(),
            1
        );
        let fits = format!("/{}", "s".repeat(MAX_UNIX_SOCKET_PATH - 1));
        assert!(run(|p| check_socket_path("s", Path::new(&fits), p)).is_empty());
    }

    #[test]
    fn interface_names() {
        assert!(run(|p| check_ifname("n", "tap-0_a.b", p)).is_empty());
        assert!(run(|p| check_ifname("n", "fifteen_chars_x", p)).is_empty());
        for bad in [
            "",
            "sixteen_chars_xx",
            ".",
            "..",
            "a/b",
            "a b",
            "a:b",
            "a\tb",
            "a\0b",
        ] {
            assert_eq!(run(|p| check_ifname("n", bad, p)).len(), 1, "{bad:?}");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("06:00:AC:10:00:02"),
            Some([6, 0, 0xac, 0x10, 0, 2])
        );
        assert!(run(|p| check_mac("m", "06:00:ac:10:00:02", p)).is_empty());
        for bad in [
            "",
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "06-00-ac-10-00-02",
            "6:00:ac:10:00:02",
            "06:00:ac:10:00:0g",
            "01:00:5e:00:00:01",
        ] {
            assert_eq!(run(|p| check_mac("m", bad, p)).len(), 1, "{bad}");
        }
    }

    #[test]
    fn bitmaps() {
        let ok32 = format!("0b{}", "x".repeat(28) + "0101");
        assert!(run(|p| check_bitmap("b", &ok32, 32, false, false, p)).is_empty());
        let short = format!("0b{}", "1".repeat(31));
        assert_eq!(
            run(|p| check_bitmap("b", &short, 32, false, false, p)).len(),
            1
        );
        let no_prefix = "1".repeat(32);
        assert_eq!(
            run(|p| check_bitmap("b", &no_prefix, 32, false, false, p)).len(),
            1
        );
        let bad_char = format!("0b{}2", "1".repeat(31));
        assert_eq!(
            run(|p| check_bitmap("b", &bad_char, 32, false, false, p)).len(),
            1
        );
        let underscored = format!("0b{}_{}", "0".repeat(32), "1".repeat(32));
        assert!(run(|p| check_bitmap("b", &underscored, 64, false, true, p)).is_empty());
        assert_eq!(
            run(|p| check_bitmap("b", &underscored, 64, false, false, p)).len(),
            1
        );
        assert!(run(|p| check_bitmap("b", "0b1x", 128, true, true, p)).is_empty());
        assert_eq!(
            run(|p| check_bitmap("b", "0b", 128, true, true, p)).len(),
            1
        );
    }

    #[test]
    fn cpu_numbers() {
        assert_eq!(parse_cpu_number("0x10a"), Some(0x10a));
        assert_eq!(parse_cpu_number("0b100001010"), Some(266));
        assert_eq!(parse_cpu_number("266"), Some(266));
        for bad in ["", "0x", "0b2", "-1", "12a", "0x1_0"] {
            assert_eq!(parse_cpu_number(bad), None, "{bad}");
        }
        assert_eq!(
            run(|p| check_cpu_number("a", "0x100000000", 0xffff_ffff, p)).len(),
            1
        );
    }

    #[test]
    fn summary_message_and_details() {
        let err = problems_to_result(
            "VM config",
            &[
                ConfigProblem {
                    field: "a".into(),
                    message: "x".into(),
                },
                ConfigProblem {
                    field: "b".into(),
                    message: "y".into(),
                },
            ],
        )
        .unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::InvalidConfig);
        assert_eq!(err.message(), "invalid VM config: 2 problems, first: a: x");
        assert_eq!(
            err.details().unwrap(),
            &serde_json::json!({"problems": [
                {"field": "a", "message": "x"}, {"field": "b", "message": "y"}
            ]})
        );
        assert!(problems_to_result("VM config", &[]).is_ok());
    }
}
