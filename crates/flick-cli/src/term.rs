//! The local terminal: raw mode (restored on drop, also on errors) and its size.

use flick_proto::WinSize;
use rustix::termios::{self, Termios};

/// Raw mode on stdin while alive.
#[derive(Debug)]
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Switches stdin to raw mode; `None` when stdin is not a terminal.
    pub fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, termios::OptionalActions::Flush, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(
            std::io::stdin(),
            termios::OptionalActions::Flush,
            &self.saved,
        );
    }
}

/// The terminal's size (80×24 when there is none).
pub fn window_size() -> WinSize {
    match termios::tcgetwinsize(std::io::stdout()) {
        Ok(w) if w.ws_row > 0 && w.ws_col > 0 => WinSize {
            rows: w.ws_row,
            cols: w.ws_col,
        },
        _ => WinSize { rows: 24, cols: 80 },
    }
}
