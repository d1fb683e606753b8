//! Rendering shared by every command: JSON documents, aligned tables, errors.

use std::process::ExitCode;

use serde::Serialize;

use crate::Globals;

/// Exit code for flick's own failures (a guest command's code is passed through as is).
pub const EXIT_FLICK_ERROR: u8 = 125;

/// Prints one pretty JSON document on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("flick: cannot encode output: {e}"),
    }
}

/// Prints rows as a table whose columns are padded to their widest cell.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints an error (one line plus a hint, or `{"error": ...}` with `--json`) and returns
/// flick's own failure exit code.
pub fn print_error(globals: &Globals, err: &anyhow::Error) -> ExitCode {
    let flick_err = err.downcast_ref::<flick::Error>();
    if globals.json {
        let body = match flick_err {
            Some(e) => e.to_json(),
            None => serde_json::json!({ "code": "INTERNAL", "message": format!("{err:#}") }),
        };
        print_json(&serde_json::json!({ "error": body }));
    } else {
        match flick_err {
            Some(e) => eprintln!("flick: {} [{}]", e.chain(), e.code()),
            None => eprintln!("flick: {err:#}"),
        }
    }
    ExitCode::from(EXIT_FLICK_ERROR)
}

/// "3s ago", "5m ago", "2h ago", "4d ago".
pub fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}
