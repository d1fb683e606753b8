//! I/O rate limiters: a bandwidth bucket and an operations bucket, each a token bucket.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check::Problems;
use crate::api::models;

/// A token bucket: `size` tokens refill over `refill_time_ms` milliseconds, plus a one-time
/// initial burst.
///
/// The refill time is kept in whole milliseconds because that is Firecracker's unit; build one
/// from a [`Duration`] with [`TokenBucket::new`] (sub-millisecond parts are dropped). In JSON
/// the field is `refill_time_ms`; Firecracker's spelling `refill_time` is accepted as an alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Capacity in tokens (bytes or operations). Must be positive.
    pub size: u64,
    /// Extra tokens available once, before the refill rate applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill `size` tokens. Must be positive.
    #[serde(alias = "refill_time")]
    pub refill_time_ms: u64,
}

impl TokenBucket {
    /// A bucket of `size` tokens that refills every `refill` (rounded down to milliseconds).
    #[must_use]
    pub fn new(size: u64, refill: Duration) -> Self {
        Self {
            size,
            one_time_burst: None,
            refill_time_ms: u64::try_from(refill.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Adds a one-time initial burst.
    #[must_use]
    pub fn with_one_time_burst(mut self, burst: u64) -> Self {
        self.one_time_burst = Some(burst);
        self
    }

    /// The refill time as a [`Duration`].
    #[must_use]
    pub fn refill_time(&self) -> Duration {
        Duration::from_millis(self.refill_time_ms)
    }

    pub(crate) fn check(&self, at: &str, p: &mut Problems) {
        if self.size == 0 {
            p.push(
                format!("{at}.size"),
                "must be positive (a zero bucket limits nothing)",
            );
        }
        if self.refill_time_ms == 0 {
            p.push(
                format!("{at}.refill_time_ms"),
                "must be positive (a zero refill time limits nothing)",
            );
        }
        // Firecracker's spec declares these as int64.
        for (name, value) in [
            ("size", Some(self.size)),
            ("one_time_burst", self.one_time_burst),
            ("refill_time_ms", Some(self.refill_time_ms)),
        ] {
            if value.is_some_and(|v| i64::try_from(v).is_err()) {
                p.push(
                    format!("{at}.{name}"),
                    "must fit in a signed 64-bit integer",
                );
            }
        }
    }

    pub(crate) fn to_wire(&self) -> models::TokenBucket {
        models::TokenBucket {
            size: self.size,
            one_time_burst: self.one_time_burst,
            refill_time: self.refill_time_ms,
        }
    }
}

/// Independent bandwidth (bytes) and operations limits for one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Operations (requests for block devices, frames for network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

impl RateLimiter {
    /// A limiter with only a bandwidth bucket.
    #[must_use]
    pub fn bandwidth(bucket: TokenBucket) -> Self {
        Self {
            bandwidth: Some(bucket),
            ops: None,
        }
    }

    /// A limiter with only an operations bucket.
    #[must_use]
    pub fn ops(bucket: TokenBucket) -> Self {
        Self {
            bandwidth: None,
            ops: Some(bucket),
        }
    }

    /// Adds or replaces the operations bucket.
    #[must_use]
    pub fn with_ops(mut self, bucket: TokenBucket) -> Self {
        self.ops = Some(bucket);
        self
    }

    /// Adds or replaces the bandwidth bucket.
    #[must_use]
    pub fn with_bandwidth(mut self, bucket: TokenBucket) -> Self {
        self.bandwidth = Some(bucket);
        self
    }

    pub(crate) fn check(&self, at: &str, p: &mut Problems) {
        if let Some(b) = &self.bandwidth {
            b.check(&format!("{at}.bandwidth"), p);
        }
        if let Some(b) = &self.ops {
            b.check(&format!("{at}.ops"), p);
        }
    }

    pub(crate) fn to_wire(&self) -> models::RateLimiter {
        models::RateLimiter {
            bandwidth: self.bandwidth.as_ref().map(TokenBucket::to_wire),
            ops: self.ops.as_ref().map(TokenBucket::to_wire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_is_converted_to_milliseconds() {
        let b = TokenBucket::new(10, Duration::from_micros(2_500_900));
        assert_eq!(b.refill_time_ms, 2500);
        assert_eq!(b.refill_time(), Duration::from_millis(2500));
        assert_eq!(TokenBucket::new(1, Duration::MAX).refill_time_ms, u64::MAX);
    }

    #[test]
    fn zero_size_and_refill_are_reported_with_paths() {
        let mut p = Problems::default();
        RateLimiter::bandwidth(TokenBucket::new(0, Duration::ZERO))
            .with_ops(TokenBucket::new(u64::MAX, Duration::from_millis(1)))
            .check("drives[0].rate_limiter", &mut p);
        let fields: Vec<_> = p.iter().map(|x| x.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "drives[0].rate_limiter.bandwidth.size",
                "drives[0].rate_limiter.bandwidth.refill_time_ms",
                "drives[0].rate_limiter.ops.size",
            ]
        );
    }

    #[test]
    fn firecracker_spelling_is_accepted() {
        let b: TokenBucket = serde_json::from_str(r#"{"size": 5, "refill_time": 100}"#).unwrap();
        assert_eq!(b.refill_time_ms, 100);
        let wire = serde_json::to_value(b.to_wire()).unwrap();
        assert_eq!(wire, serde_json::json!({"size": 5, "refill_time": 100}));
    }
}
