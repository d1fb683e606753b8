//! Version strings: Firecracker tags (`v1.16.1`), kernel versions (`6.1.10`) and Ubuntu releases
//! (`24.04`), compared numerically (so `6.1.10` > `6.1.9`).

use crate::error::{Error, ErrorCode, Result};

/// Parses dot-separated decimal components (`1.16.1`), rejecting empty or non-digit parts.
pub(crate) fn numeric_parts(text: &str) -> Option<Vec<u64>> {
    if text.is_empty() {
        return None;
    }
    text.split('.')
        .map(|part| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || part.len() > 12 {
                None
            } else {
                part.parse().ok()
            }
        })
        .collect()
}

/// Normalizes a Firecracker version to its tag form `vX.Y.Z` (accepts `X.Y.Z` too).
///
/// # Errors
/// [`ErrorCode::InvalidArgument`] when it is not three numeric components.
pub(crate) fn normalize_fc_version(text: &str) -> Result<String> {
    let bare = text.trim().strip_prefix('v').unwrap_or(text.trim());
    match numeric_parts(bare) {
        Some(parts) if parts.len() == 3 => Ok(format!("v{bare}")),
        _ => Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("invalid Firecracker version {text:?} (expected vX.Y.Z)"),
        )),
    }
}

/// The CI train of a Firecracker version: `v1.16.1` → `v1.16`.
pub(crate) fn ci_train(version: &str) -> Result<String> {
    let tag = normalize_fc_version(version)?;
    let parts = numeric_parts(&tag[1..]).unwrap_or_default();
    Ok(format!("v{}.{}", parts[0], parts[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_order_is_not_string_order() {
        assert!(numeric_parts("6.1.10") > numeric_parts("6.1.9"));
        assert!(numeric_parts("5.10.239") < numeric_parts("6.1.9"));
        assert_eq!(numeric_parts("6.1."), None);
        assert_eq!(numeric_parts("6.x.1"), None);
        assert_eq!(numeric_parts(""), None);
    }

    #[test]
    fn versions_normalize_and_trains_derive() {
        assert_eq!(normalize_fc_version("1.16.1").unwrap(), "v1.16.1");
        assert_eq!(normalize_fc_version("v1.7.0").unwrap(), "v1.7.0");
        assert!(normalize_fc_version("v1.7").is_err());
        assert!(normalize_fc_version("../x").is_err());
        assert_eq!(ci_train("v1.16.1").unwrap(), "v1.16");
        assert_eq!(ci_train("1.7.0").unwrap(), "v1.7");
    }
}
