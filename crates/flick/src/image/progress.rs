//! Progress reporting for downloads, free of any terminal rendering.
//!
//! The library calls [`Progress::update`] as bytes arrive; the CLI turns the updates into progress
//! bars. A closure `Fn(&ProgressUpdate)` works as a [`Progress`] too.

/// What happened to an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressEvent {
    /// A transfer started; `done` is where it starts (non-zero when resuming).
    Started,
    /// More bytes arrived.
    Advanced,
    /// The server ignored a range request or a resume failed: counting starts again from zero.
    Restarted,
    /// The artifact was complete and verified.
    Finished,
    /// A verified cached copy was reused; nothing was transferred.
    Reused,
}

/// One progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressUpdate<'a> {
    /// The artifact's display name (a file name).
    pub artifact: &'a str,
    /// Bytes done so far, including bytes resumed from an earlier attempt.
    pub done: u64,
    /// The total size when known.
    pub total: Option<u64>,
    /// What happened.
    pub event: ProgressEvent,
}

/// Receives progress reports. Implementations must be cheap: they are called per received chunk.
pub trait Progress: Send + Sync {
    /// Called for every progress event.
    fn update(&self, update: &ProgressUpdate<'_>);
}

impl<F> Progress for F
where
    F: Fn(&ProgressUpdate<'_>) + Send + Sync,
{
    fn update(&self, update: &ProgressUpdate<'_>) {
        self(update);
    }
}

/// A [`Progress`] that ignores every report.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _update: &ProgressUpdate<'_>) {}
}
