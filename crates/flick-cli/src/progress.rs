//! Download and build progress on stderr: one line per artifact, redrawn in place on a
//! terminal; silent with `--json` or when stderr is not a terminal.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use flick::image::{Progress, ProgressEvent, ProgressUpdate};

/// The progress renderer.
#[derive(Debug)]
pub struct Bars {
    enabled: bool,
    last: Mutex<Option<(String, u64)>>,
}

impl Bars {
    /// A renderer; `quiet` (for `--json`) disables it.
    pub fn new(quiet: bool) -> Self {
        Self {
            enabled: !quiet && std::io::stderr().is_terminal(),
            last: Mutex::new(None),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    b / (1024.0 * 1024.0)
}

impl Progress for Bars {
    fn update(&self, u: &ProgressUpdate<'_>) {
        if !self.enabled {
            return;
        }
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Redraw at most every 1% (or 1 MiB without a total).
        let step = u.total.map_or(1 << 20, |t| (t / 100).max(1));
        if u.event == ProgressEvent::Advanced
            && let Some((name, done)) = last.as_ref()
            && name == u.artifact
            && u.done.saturating_sub(*done) < step
        {
            return;
        }
        *last = Some((u.artifact.to_string(), u.done));
        let mut err = std::io::stderr().lock();
        let line = match (u.event, u.total) {
            (ProgressEvent::Reused, _) => format!("{}: cached", u.artifact),
            (ProgressEvent::Finished, _) => {
                format!("{}: done ({:.1} MiB)", u.artifact, mib(u.done))
            }
            (_, Some(total)) if total > 0 => {
                let pct = u.done.saturating_mul(100) / total;
                let filled = usize::try_from(pct / 4).unwrap_or(25).min(25);
                format!(
                    "{} [{}{}] {pct:>3}% {:.1}/{:.1} MiB",
                    u.artifact,
                    "#".repeat(filled),
                    " ".repeat(25 - filled),
                    mib(u.done),
                    mib(total)
                )
            }
            _ => format!("{}: {:.1} MiB", u.artifact, mib(u.done)),
        };
        let end = if matches!(u.event, ProgressEvent::Finished | ProgressEvent::Reused) {
            "\n"
        } else {
            ""
        };
        let _ = write!(err, "\r\x1b[2K{line}{end}");
        let _ = err.flush();
    }
}
