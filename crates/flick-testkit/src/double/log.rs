//! Firecracker-style log lines for the test double.
//!
//! Firecracker writes `<RFC 3339 UTC with nanoseconds> [<id>:<thread>] <message>` to stderr
//! until `PUT /logger` names a file; from then on lines go to that file, with the level shown
//! when `show_level` is set (`[<id>:<thread>:INFO]`). The double keeps that shape so a library's
//! log handling sees what it would see with a real Firecracker.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Log levels, most severe first, as Firecracker names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Logging disabled.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// Informational lines (Firecracker's default).
    Info,
    /// Debug lines.
    Debug,
    /// Everything.
    Trace,
}

impl Level {
    /// Parses a level name, case-insensitively (`Info`, `warn`, `WARNING`, ...).
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "off" => Self::Off,
            "error" => Self::Error,
            "warn" | "warning" => Self::Warning,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return None,
        })
    }

    fn tag(self) -> &'static str {
        match self {
            Self::Off => "OFF",
            Self::Error => "ERROR",
            Self::Warning => "WARN",
            Self::Info => "INFO",
            Self::Debug => "DEBUG",
            Self::Trace => "TRACE",
        }
    }
}

#[derive(Debug)]
struct Inner {
    file: Option<File>,
    level: Level,
    show_level: bool,
    show_origin: bool,
}

/// The double's logger: stderr until a log file is configured.
#[derive(Debug)]
pub struct Logger {
    id: String,
    inner: Mutex<Inner>,
}

impl Logger {
    /// A logger for instance `id` writing to stderr.
    #[must_use]
    pub fn new(id: &str, level: Level, show_level: bool, show_origin: bool) -> Self {
        Self {
            id: id.to_string(),
            inner: Mutex::new(Inner {
                file: None,
                level,
                show_level,
                show_origin,
            }),
        }
    }

    /// Sends further lines to `file` with the given settings (what `PUT /logger` does).
    pub fn configure(&self, file: File, level: Level, show_level: bool, show_origin: bool) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.file = Some(file);
        inner.level = level;
        inner.show_level = show_level;
        inner.show_origin = show_origin;
    }

    /// Writes one line from `thread` (`main`, `fc_api`, `fc_vcpu 0`) at `level`.
    pub fn log(&self, thread: &str, level: Level, message: &str) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if level == Level::Off || level > inner.level {
            return;
        }
        let mut tag = format!("{}:{thread}", self.id);
        if inner.show_level {
            tag.push(':');
            tag.push_str(level.tag());
        }
        if inner.show_origin {
            tag.push_str(":fc-double");
        }
        let line = format!("{} [{tag}] {message}\n", timestamp_now());
        match inner.file.as_mut() {
            Some(file) => {
                let _ = file.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        }
    }

    /// Whether lines at `level` are written.
    #[must_use]
    pub fn enabled(&self, level: Level) -> bool {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        level != Level::Off && level <= inner.level
    }

    /// Shorthand for an info line.
    pub fn info(&self, thread: &str, message: &str) {
        self.log(thread, Level::Info, message);
    }

    /// Shorthand for an error line.
    pub fn error(&self, thread: &str, message: &str) {
        self.log(thread, Level::Error, message);
    }
}

/// The current UTC time as Firecracker prints it: `2026-11-23T19:12:11.244340375`.
#[must_use]
pub fn timestamp_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_timestamp(now.as_secs(), now.subsec_nanos())
}

/// Formats seconds since the epoch plus nanoseconds as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnn`.
#[must_use]
pub fn format_timestamp(secs: u64, nanos: u32) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) date in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_firecracker_shape() {
        // 2026-11-23T19:12:11 UTC
        assert_eq!(
            format_timestamp(1_795_461_131, 244_340_375),
            "2026-11-23T19:12:11.244340375"
        );
        assert_eq!(format_timestamp(0, 5), "1970-01-01T00:00:00.000000005");
        assert_eq!(
            format_timestamp(951_782_400, 0),
            "2000-02-29T00:00:00.000000000"
        );
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!(Level::parse("info"), Some(Level::Info));
        assert_eq!(Level::parse("Warning"), Some(Level::Warning));
        assert_eq!(Level::parse("loud"), None);
        assert!(Level::Debug > Level::Info);
    }
}
