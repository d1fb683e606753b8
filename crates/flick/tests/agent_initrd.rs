//! The initrd: listed by the real `cpio` binary with the expected entries and modes,
//! reproducible byte for byte, cached by content hash.

mod agent_support;

use flick::image::initrd;
use std::io::Write;
use std::process::{Command, Stdio};

fn cpio_listing(archive_gz: &[u8]) -> String {
    let mut gunzip = Command::new("gzip")
        .args(["-dc"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip is installed");
    let mut stdin = gunzip.stdin.take().unwrap();
    let data = archive_gz.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = gunzip.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "gzip rejected the archive");
    let mut cpio = Command::new("cpio")
        .args(["-t", "-v", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cpio (Debian package cpio) is installed");
    let mut stdin = cpio.stdin.take().unwrap();
    let raw = out.stdout;
    let writer = std::thread::spawn(move || stdin.write_all(&raw).unwrap());
    let listed = cpio.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        listed.status.success(),
        "cpio failed: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    String::from_utf8(listed.stdout).unwrap()
}

#[test]
fn archive_lists_expected_entries_and_is_reproducible() {
    let agent = agent_support::agent_bin();
    let cache_a = tempfile::tempdir().unwrap();
    let cache_b = tempfile::tempdir().unwrap();
    let a = initrd::build(&agent, cache_a.path()).unwrap();
    let b = initrd::build(&agent, cache_b.path()).unwrap();
    assert_eq!(a.key, b.key);
    let bytes_a = std::fs::read(&a.path).unwrap();
    let bytes_b = std::fs::read(&b.path).unwrap();
    assert!(bytes_a == bytes_b, "two builds differ");
    // The gzip header carries mtime 0 and OS 255.
    assert_eq!(&bytes_a[..4], &[0x1f, 0x8b, 8, 0]);
    assert_eq!(&bytes_a[4..8], &[0, 0, 0, 0]);
    assert_eq!(bytes_a[9], 255);

    let listing = cpio_listing(&bytes_a);
    let mut entries: Vec<(String, String, String)> = Vec::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let name = cols.last().unwrap().to_string();
        entries.push((name, cols[0].to_owned(), line.to_owned()));
    }
    let find = |name: &str| {
        entries
            .iter()
            .find(|e| e.0 == name)
            .unwrap_or_else(|| panic!("{name} missing from\n{listing}"))
            .clone()
    };
    assert_eq!(find("init").1, "-rwxr-xr-x");
    assert_eq!(find("dev").1, "drwxr-xr-x");
    assert_eq!(find("dev/console").1, "crw-------");
    assert!(find("dev/console").2.contains("5,"));
    assert_eq!(find("dev/null").1, "crw-rw-rw-");
    assert_eq!(find("tmp").1, "drwxrwxrwt");
    for d in ["proc", "sys", "run", "newroot", "etc"] {
        assert!(find(d).1.starts_with('d'), "{d} is not a directory");
    }
    // The init binary is the agent, byte for byte (size column).
    let size = std::fs::metadata(&agent).unwrap().len().to_string();
    assert!(find("init").2.split_whitespace().any(|c| c == size));
    assert!(find("init").2.contains("root"));

    // Cached: a second build in the same cache returns the same file untouched.
    let mtime = std::fs::metadata(&a.path).unwrap().modified().unwrap();
    let again = initrd::build(&agent, cache_a.path()).unwrap();
    assert_eq!(again.path, a.path);
    assert_eq!(
        std::fs::metadata(&a.path).unwrap().modified().unwrap(),
        mtime
    );
    // Only the archive is in the cache (no temp files left).
    let names: Vec<_> = std::fs::read_dir(cache_a.path().join("initrd"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn missing_agent_binary_is_a_coded_error_and_leaves_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let err = initrd::build(&cache.path().join("nope"), cache.path()).unwrap_err();
    assert_eq!(err.code(), flick::ErrorCode::InitrdBuildFailed);
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}
