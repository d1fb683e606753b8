//! Parser for the recorded Firecracker transcript (`spec/api-transcript-v1.16.1.md`).
//!
//! Each `## N.` section holds one request (a `curl` command with method, URL and `-d` body),
//! the status (`Response: **HTTP 400**`) and the response body in a ```` ```json ```` block
//! (`(empty body)` for 204). Sections of part 2 are numbered `2.1`, `2.2`, ...

use serde_json::Value;

/// One recorded request and answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// Section number as written (`7`, `2.12`).
    pub section: String,
    /// Upper-case method.
    pub method: String,
    /// Request path (`/drives/rootfs`).
    pub path: String,
    /// The `-d` body, if any.
    pub body: Option<String>,
    /// Recorded status.
    pub status: u16,
    /// Recorded response body (`None` when empty).
    pub response: Option<Value>,
}

impl Exchange {
    /// The recorded `fault_message`, for error answers.
    #[must_use]
    pub fn fault_message(&self) -> Option<&str> {
        self.response.as_ref()?.get("fault_message")?.as_str()
    }

    /// Whether the section belongs to part 2 (`2.N`).
    #[must_use]
    pub fn is_part_two(&self) -> bool {
        self.section.contains('.')
    }
}

/// Parses every exchange of the transcript, in order.
///
/// # Errors
/// When a section lacks its curl command, status or response block.
pub fn parse(markdown: &str) -> Result<Vec<Exchange>, String> {
    let mut out = Vec::new();
    let mut sections: Vec<(String, Vec<&str>)> = Vec::new();
    for line in markdown.lines() {
        if let Some(rest) = line.strip_prefix("## ") {
            let number = rest.split_whitespace().next().unwrap_or("");
            let number = number.trim_end_matches('.');
            if !number.is_empty() && number.chars().all(|c| c.is_ascii_digit() || c == '.') {
                sections.push((number.to_string(), Vec::new()));
                continue;
            }
        }
        if line.starts_with("# ") || line.starts_with("### ") || line.starts_with("## ") {
            // A heading that is not an exchange ends the current section.
            sections.push((String::new(), Vec::new()));
            continue;
        }
        if let Some((_, lines)) = sections.last_mut() {
            lines.push(line);
        }
    }
    for (number, lines) in sections.into_iter().filter(|(n, _)| !n.is_empty()) {
        out.push(parse_section(&number, &lines)?);
    }
    Ok(out)
}

fn parse_section(number: &str, lines: &[&str]) -> Result<Exchange, String> {
    let curl: String = lines
        .iter()
        .skip_while(|l| !l.trim_start().starts_with("curl "))
        .take_while(|l| !l.trim().starts_with("```"))
        .map(|l| l.trim().trim_end_matches('\\').trim())
        .collect::<Vec<_>>()
        .join(" ");
    if curl.is_empty() {
        return Err(format!("section {number}: no curl command"));
    }
    let method = word_after(&curl, "-X ")
        .ok_or_else(|| format!("section {number}: no -X method"))?
        .to_string();
    let url = quoted_after(&curl, "'http://localhost")
        .map(|rest| format!("http://localhost{rest}"))
        .ok_or_else(|| format!("section {number}: no URL"))?;
    let path = url.trim_start_matches("http://localhost").to_string();
    let body = quoted_after(&curl, "-d '").map(str::to_string);
    let status_line = lines
        .iter()
        .find(|l| l.starts_with("Response: **HTTP "))
        .ok_or_else(|| format!("section {number}: no status"))?;
    let status: u16 = status_line
        .trim_start_matches("Response: **HTTP ")
        .trim_end_matches("**")
        .trim()
        .parse()
        .map_err(|_| format!("section {number}: bad status line {status_line:?}"))?;
    let mut in_block = false;
    let mut block = Vec::new();
    let mut seen_status = false;
    for line in lines {
        if line.starts_with("Response: **HTTP ") {
            seen_status = true;
            continue;
        }
        if !seen_status {
            continue;
        }
        if line.trim() == "```json" {
            in_block = true;
            continue;
        }
        if in_block && line.trim() == "```" {
            break;
        }
        if in_block {
            block.push(*line);
        }
    }
    let text = block.join("\n");
    let response = if text.trim().is_empty() || text.trim() == "(empty body)" {
        None
    } else {
        Some(
            serde_json::from_str(&text)
                .map_err(|e| format!("section {number}: response is not JSON: {e}"))?,
        )
    };
    Ok(Exchange {
        section: number.to_string(),
        method,
        path,
        body,
        status,
        response,
    })
}

fn word_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let start = text.find(marker)? + marker.len();
    text[start..].split_whitespace().next()
}

/// The text after `marker` up to the next single quote.
fn quoted_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let start = text.find(marker)? + marker.len();
    let end = text[start..].find('\'')?;
    Some(&text[start..start + end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_transcript_parses_into_both_parts() {
        let all = parse(crate::spec::BUNDLED_TRANSCRIPT_MD).unwrap();
        let part_one = all.iter().filter(|e| !e.is_part_two()).count();
        let part_two = all.iter().filter(|e| e.is_part_two()).count();
        assert_eq!(part_one, 28);
        assert_eq!(part_two, 13);
        let seven = all.iter().find(|e| e.section == "7").unwrap();
        assert_eq!(seven.method, "PUT");
        assert_eq!(seven.path, "/boot-source");
        assert_eq!(seven.status, 400);
        assert!(
            seven
                .body
                .as_deref()
                .unwrap()
                .contains("/nonexistent/vmlinux")
        );
        assert!(
            seven
                .fault_message()
                .unwrap()
                .starts_with("Boot source error")
        );
        let four = all.iter().find(|e| e.section == "4").unwrap();
        assert_eq!(four.status, 204);
        assert!(four.response.is_none());
        let last = all.last().unwrap();
        assert_eq!(last.section, "2.13");
        assert_eq!(last.response.as_ref().unwrap()["state"], "Running");
    }

    #[test]
    fn broken_sections_are_reported() {
        let text = "## 1. GET /\n\nno command here\n\nResponse: **HTTP 200**\n";
        assert!(parse(text).unwrap_err().contains("no curl command"));
        let text = "## 1. GET /\n\n```\ncurl -s -X GET 'http://localhost/'\n```\n";
        assert!(parse(text).unwrap_err().contains("no status"));
    }
}
