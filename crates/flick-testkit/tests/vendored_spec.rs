//! The vendored spec and transcript must equal the shared copies that sit beside the clone
//! (`shared/firecracker/`), so the double and the validator never drift from the reference.

use std::path::PathBuf;

/// `$FLICK_SHARED_DIR`, else the nearest ancestor of this crate holding
/// `shared/firecracker/firecracker.yaml` (in CI `shared/` sits beside the clone).
fn shared_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("FLICK_SHARED_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .ancestors()
        .map(|a| a.join("shared"))
        .find(|s| s.join("firecracker/firecracker.yaml").is_file())
        .ok_or_else(|| {
            format!(
                "no shared/firecracker/firecracker.yaml in any ancestor of {} (expected at \
                 {}/../../../shared, beside the clone); set FLICK_SHARED_DIR to point at it",
                crate_dir.display(),
                crate_dir.display()
            )
        })
}

#[test]
fn vendored_spec_equals_the_shared_spec() {
    let shared = shared_dir().unwrap_or_else(|e| panic!("{e}"));
    let path = shared.join("firecracker/firecracker.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        text == flick_testkit::spec::BUNDLED_SPEC_YAML,
        "crates/flick-testkit/spec/firecracker-v1.16.1.yaml differs from {}",
        path.display()
    );
}

#[test]
fn vendored_transcript_equals_the_shared_transcript() {
    let shared = shared_dir().unwrap_or_else(|e| panic!("{e}"));
    let path = shared.join("firecracker/api-transcript.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        text == flick_testkit::spec::BUNDLED_TRANSCRIPT_MD,
        "crates/flick-testkit/spec/api-transcript-v1.16.1.md differs from {}",
        path.display()
    );
}
