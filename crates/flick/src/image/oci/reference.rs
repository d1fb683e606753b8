//! Image references, normalized the way Docker does it.
//!
//! `python:3.13-slim` becomes `docker.io/library/python:3.13-slim`; a first component with a
//! `.` or a `:` (or `localhost`) names a registry host; a missing tag means `latest`; a
//! `@sha256:<hex>` suffix pins a manifest digest.

use serde_json::json;

use crate::error::{Error, ErrorCode, Result};

/// Docker Hub's canonical name.
pub(crate) const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API answers.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry host (with port), `docker.io` for Docker Hub.
    pub registry: String,
    /// The repository path (`library/python`).
    pub repository: String,
    /// The tag (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// A pinned manifest digest (`sha256:<hex>`).
    pub digest: Option<String>,
}

fn invalid(text: &str, why: &str) -> Error {
    Error::new(
        ErrorCode::InvalidImageReference,
        format!("invalid image reference {text:?}: {why}"),
    )
    .with_details(json!({ "reference": text }))
}

fn valid_component(c: &str) -> bool {
    // Lowercase alphanumerics separated by single `.`/`_`/`-`, or `__`.
    if c.is_empty() || c.len() > 255 {
        return false;
    }
    let bytes = c.as_bytes();
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut prev_sep = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            prev_sep = false;
        } else if matches!(b, b'.' | b'_' | b'-') {
            if prev_sep && !(b == b'_' && bytes[i - 1] == b'_') && b != b'-' {
                return false;
            }
            prev_sep = true;
        } else {
            return false;
        }
        i += 1;
    }
    true
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks `sha256:<64 hex>` and returns it lowercased.
pub(crate) fn parse_digest(text: &str) -> Option<String> {
    let hex = text.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || h.starts_with('[') => (host, Some(port)),
        _ => (h, None),
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if host.starts_with('[') && host.ends_with(']') {
        return host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok();
    }
    !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

impl Reference {
    /// Parses and normalizes `text`.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidImageReference`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(invalid(text, "empty"));
        }
        if trimmed.len() > 4096 {
            return Err(invalid(text, "longer than 4096 characters"));
        }
        let (rest, digest) = match trimmed.split_once('@') {
            Some((rest, digest)) => (
                rest,
                Some(parse_digest(digest).ok_or_else(|| {
                    invalid(text, "the digest must be sha256: followed by 64 hex digits")
                })?),
            ),
            None => (trimmed, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(invalid(text, "the tag is malformed"));
                }
                (&rest[..last_slash + i], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_host(first) {
                    return Err(invalid(text, "the registry host is malformed"));
                }
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if !repository.split('/').all(valid_component) {
            return Err(invalid(
                text,
                "repository names are lowercase letters, digits and single separators",
            ));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (tag, _) => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the registry API answers on.
    #[must_use]
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// Whether the registry is this host (`localhost`, `127.0.0.1`, `[::1]`, any port).
    #[must_use]
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => &self.registry,
        };
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
    }

    /// The tag or digest to ask the registry for.
    #[must_use]
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("python:3.13-slim", "docker.io/library/python:3.13-slim"),
            ("python", "docker.io/library/python:latest"),
            (
                "docker.io/library/python",
                "docker.io/library/python:latest",
            ),
            ("index.docker.io/foo/bar:1", "docker.io/foo/bar:1"),
            ("ghcr.io/owner/app:v1.2", "ghcr.io/owner/app:v1.2"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("127.0.0.1:5000/a/b_c:x", "127.0.0.1:5000/a/b_c:x"),
        ];
        for (input, want) in cases {
            assert_eq!(
                Reference::parse(input).unwrap().to_string(),
                want,
                "{input}"
            );
        }
        let pinned = format!("alpine@sha256:{}", "A".repeat(64));
        let r = Reference::parse(&pinned).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(
            r.digest.as_deref(),
            Some(&*format!("sha256:{}", "a".repeat(64)))
        );
        assert_eq!(r.manifest_ref(), r.digest.as_deref().unwrap());
        assert!(
            Reference::parse("localhost:5000/app")
                .unwrap()
                .is_loopback()
        );
        assert!(!Reference::parse("ghcr.io/a/b").unwrap().is_loopback());
        assert_eq!(
            Reference::parse("python").unwrap().api_host(),
            DOCKER_HUB_API
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "UPPER/case",
            "a//b",
            "a:",
            "a:-bad",
            "a@sha256:12",
            "a@md5:aaaa",
            "bad host.io:x/a",
            "-a",
            "a/b/",
        ] {
            let err = Reference::parse(bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidImageReference, "{bad}");
        }
    }
}
