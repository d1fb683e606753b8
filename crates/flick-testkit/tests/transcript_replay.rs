//! Replays every request of the recorded Firecracker v1.16.1 transcript against `fc-double` and
//! checks it answers like the real Firecracker did: same status, same `fault_message` for
//! errors, same JSON for successful GETs (host paths rewritten into a temporary directory).

use std::path::Path;
use std::time::Duration;

use flick_testkit::transcript::{self, Exchange};
use flick_testkit::{FcDouble, FcDoubleOptions, raw_request};
use serde_json::Value;

const KERNEL: &str = "stock-debian-6.1.0-56-cloud-amd64.vmlinux";

/// Maps the recording host's paths into `root`.
struct Rewrite {
    run: String,
    images: String,
}

impl Rewrite {
    fn new(root: &Path) -> Self {
        Self {
            run: format!("{}/run/", root.display()),
            images: format!("{}/images/", root.display()),
        }
    }

    fn text(&self, s: &str) -> String {
        s.replace("/run/fc/", &self.run)
            .replace("/images/", &self.images)
    }

    fn value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(items) => Value::Array(items.iter().map(|i| self.value(i)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

fn fixture_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    std::fs::write(dir.path().join("run/rootfs.ext4"), vec![0u8; 4096]).unwrap();
    std::fs::write(
        dir.path().join("images").join(KERNEL),
        b"\x7fELF not a kernel",
    )
    .unwrap();
    dir
}

/// Sends each exchange in order; returns one line per difference from the recording.
async fn replay(socket: &Path, exchanges: &[Exchange], rewrite: &Rewrite) -> Vec<String> {
    let mut mismatches = Vec::new();
    for ex in exchanges {
        let body = ex.body.as_deref().map(|b| rewrite.text(b));
        let (status, text) = raw_request(socket, &ex.method, &ex.path, body.as_deref()).await;
        let label = format!("section {} ({} {})", ex.section, ex.method, ex.path);
        if status != ex.status {
            mismatches.push(format!(
                "{label}: status {status}, recorded {} (body {text})",
                ex.status
            ));
            continue;
        }
        let got: Option<Value> = if text.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&text).unwrap_or(Value::String(text.clone())))
        };
        let want = ex.response.as_ref().map(|v| rewrite.value(v));
        if status == 400 {
            let got_fault = got.as_ref().and_then(|g| g["fault_message"].as_str());
            let want_fault = want.as_ref().and_then(|w| w["fault_message"].as_str());
            if got_fault != want_fault {
                mismatches.push(format!(
                    "{label}: fault {got_fault:?}, recorded {want_fault:?}"
                ));
            }
        } else if status == 200 && got != want {
            mismatches.push(format!("{label}: body {got:?}, recorded {want:?}"));
        } else if status == 204 && !text.is_empty() {
            mismatches.push(format!("{label}: 204 with body {text}"));
        }
    }
    mismatches
}

fn exchanges() -> Vec<Exchange> {
    transcript::parse(flick_testkit::spec::BUNDLED_TRANSCRIPT_MD).unwrap()
}

fn section(
    all: &[Exchange],
    part_two: bool,
    range: std::ops::RangeInclusive<u32>,
) -> Vec<Exchange> {
    all.iter()
        .filter(|e| e.is_part_two() == part_two)
        .filter(|e| {
            let n: u32 = e.section.rsplit('.').next().unwrap().parse().unwrap();
            range.contains(&n)
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn part_one_replays_with_the_recorded_answers() {
    let root = fixture_dir();
    let rewrite = Rewrite::new(root.path());
    let all = exchanges();
    let part_one = section(&all, false, 1..=28);
    assert_eq!(part_one.len(), 28);
    let double = FcDouble::spawn(FcDoubleOptions::default());
    let mismatches = replay(double.socket_path(), &part_one, &rewrite).await;
    assert!(mismatches.is_empty(), "{mismatches:#?}");

    // Log lines have Firecracker's shape; after PUT /logger they go to the log file.
    let stderr = double.stderr();
    assert!(
        stderr.contains("[anonymous-instance:main] Running Firecracker v1.16.1"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "Listening on API socket ({:?}).",
            double.socket_path()
        )),
        "{stderr}"
    );
    assert!(stderr.contains(
        "[anonymous-instance:fc_api] The API server received a Put request on \"/machine-config\" with body \"{\\\"vcpu_count\\\": 2, \\\"mem_size_mib\\\": 256, \\\"smt\\\": false}\"."
    ), "{stderr}");
    assert!(
        !stderr.contains("\"/metrics\""),
        "after PUT /logger lines go to the file"
    );
    let log = std::fs::read_to_string(root.path().join("run/fc.log")).unwrap();
    assert!(
        log.contains(
            "[anonymous-instance:fc_api:INFO] The API server received a Put request on \"/metrics\""
        ),
        "{log}"
    );
    assert!(log.contains(
        "[anonymous-instance:fc_api:ERROR] Received Error. Status code: 400 Bad Request. Message: Start microvm error: Cannot start microvm without kernel configuration."
    ));
    assert!(log.contains(
        "[anonymous-instance:fc_api:ERROR] InvalidPathMethod(\"no-such-endpoint\", Get)"
    ));
    assert!(root.path().join("run/fc.metrics").exists());
    // The vsock device listens on its socket.
    assert!(root.path().join("run/v.sock").exists());
    let log = double.request_log();
    assert_eq!(log.len(), 28);
    assert_eq!(log[6]["path"], "/boot-source");
    assert_eq!(log[6]["status"], 400);
}

#[tokio::test]
async fn part_two_replays_across_three_processes() {
    let root = fixture_dir();
    let rewrite = Rewrite::new(root.path());
    let all = exchanges();

    let mut second = FcDouble::spawn(FcDoubleOptions::default());
    let booted = section(&all, true, 1..=11);
    assert_eq!(booted.len(), 11);
    let mismatches = replay(second.socket_path(), &booted, &rewrite).await;
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    // 2.11 was SendCtrlAltDel: the process ends on its own, with status 0, socket removed.
    assert_eq!(second.wait_exit(Duration::from_secs(10)), Some(Some(0)));
    assert!(!second.socket_path().exists());
    let snap = root.path().join("run/vm.snap");
    let mem = root.path().join("run/vm.mem");
    assert!(snap.exists());
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), 128 * 1024 * 1024);

    let third = FcDouble::spawn(FcDoubleOptions::default());
    let restored = section(&all, true, 12..=13);
    assert_eq!(restored.len(), 2);
    let mismatches = replay(third.socket_path(), &restored, &rewrite).await;
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

#[tokio::test]
async fn replay_check_detects_a_tampered_recording() {
    let root = fixture_dir();
    let rewrite = Rewrite::new(root.path());
    let all = exchanges();
    let mut part_one = section(&all, false, 1..=28);
    // Tamper: a changed fault text, a changed status and a changed GET body.
    for ex in &mut part_one {
        match ex.section.as_str() {
            "7" => {
                ex.response = Some(serde_json::json!({
                    "fault_message": "Boot source error: The kernel file cannot be opened: Permission denied (os error 13)"
                }));
            }
            "4" => ex.status = 400,
            "2" => ex.response = Some(serde_json::json!({ "firecracker_version": "1.15.0" })),
            _ => {}
        }
    }
    let double = FcDouble::spawn(FcDoubleOptions::default());
    let mismatches = replay(double.socket_path(), &part_one, &rewrite).await;
    assert_eq!(mismatches.len(), 3, "{mismatches:#?}");
    assert!(mismatches[0].starts_with("section 2 "), "{mismatches:#?}");
    assert!(mismatches[1].starts_with("section 4 "), "{mismatches:#?}");
    assert!(mismatches[2].starts_with("section 7 "), "{mismatches:#?}");
}
