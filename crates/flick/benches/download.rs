//! Download + verify throughput from a loopback HTTP server, flick against the baseline tools.
//!
//! One run measures, each `FLICK_BENCH_ITERS` times (default 5) on a `FLICK_BENCH_MIB` MiB
//! artifact (default 256) served from memory by the testkit fixture server on 127.0.0.1:
//!
//! - `flick`: `Downloader::fetch_to_file` with the expected SHA-256 (one pass: hash while writing,
//!   fsync, rename);
//! - `curl`: `curl -s -o file URL`;
//! - `sha256sum`: `sha256sum file` on the file curl just wrote (page cache);
//! - `curl+sha256sum`: both, one after the other (what a shell script does);
//! - `curl+sha256sum+sync`: the same plus `sync file`, since flick fsyncs before renaming.
//!
//! Medians are printed as a Markdown table with the ratio against `max(curl, sha256sum)` (the
//! target for a single pass is at most 1.15×). Run with `cargo bench -p flick --bench download`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flick::image::NoProgress;
use flick::image::download::{Downloader, Expected};
use flick_testkit::fixture_server::{FixtureServer, pseudo_random_bytes};
use sha2::{Digest as _, Sha256};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let status = cmd.status().expect("run baseline tool");
    let took = start.elapsed();
    assert!(status.success(), "{cmd:?} failed: {status}");
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

fn main() {
    let mib = env_usize("FLICK_BENCH_MIB", 256);
    let iters = env_usize("FLICK_BENCH_ITERS", 5).max(1);
    let body = pseudo_random_bytes(mib << 20, 42);
    let sha = hex::encode(Sha256::digest(&body));
    let server = FixtureServer::start();
    server.serve("/artifact.bin", body, "application/octet-stream");
    let url = server.url("/artifact.bin");
    let dir = tempfile::tempdir_in(
        std::env::var("FLICK_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()),
    )
    .expect("bench dir");
    let dest = dir.path().join("flick.bin");
    let curl_out = dir.path().join("curl.bin");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let downloader = Downloader::new().unwrap();
    let expected = Expected {
        sha256: Some(sha.clone()),
        size: Some((mib as u64) << 20),
    };

    let mut flick = Vec::new();
    let mut curl = Vec::new();
    let mut sum = Vec::new();
    let mut both = Vec::new();
    let mut both_sync = Vec::new();
    // One warm-up round of each, then measured rounds interleaved so drift hits all alike.
    for round in 0..=iters {
        remove(&dest);
        let start = Instant::now();
        let got = rt
            .block_on(downloader.fetch_to_file(&url, &dest, &expected, &NoProgress))
            .expect("flick download");
        let t_flick = start.elapsed();
        assert_eq!(got.sha256, sha);
        remove(&dest);

        remove(&curl_out);
        let t_curl = run(Command::new("curl")
            .args(["-s", "-f", "-o"])
            .arg(&curl_out)
            .arg(&url));
        let t_sum = run(Command::new("sha256sum")
            .arg(&curl_out)
            .stdout(std::process::Stdio::null()));
        remove(&curl_out);

        let start = Instant::now();
        run(Command::new("curl")
            .args(["-s", "-f", "-o"])
            .arg(&curl_out)
            .arg(&url));
        run(Command::new("sha256sum")
            .arg(&curl_out)
            .stdout(std::process::Stdio::null()));
        let t_both = start.elapsed();
        remove(&curl_out);

        let start = Instant::now();
        run(Command::new("curl")
            .args(["-s", "-f", "-o"])
            .arg(&curl_out)
            .arg(&url));
        run(Command::new("sha256sum")
            .arg(&curl_out)
            .stdout(std::process::Stdio::null()));
        run(Command::new("sync").arg(&curl_out));
        let t_both_sync = start.elapsed();
        remove(&curl_out);

        if round > 0 {
            flick.push(t_flick);
            curl.push(t_curl);
            sum.push(t_sum);
            both.push(t_both);
            both_sync.push(t_both_sync);
        }
    }
    let (flick, curl, sum, both, both_sync) = (
        median(flick),
        median(curl),
        median(sum),
        median(both),
        median(both_sync),
    );
    let max_single = curl.max(sum);
    let mbps = |d: Duration| (mib as f64) / d.as_secs_f64();
    let ratio = |d: Duration| d.as_secs_f64() / max_single.as_secs_f64();
    println!("download + verify of {mib} MiB over loopback, median of {iters} runs");
    println!();
    println!("| method | time | MiB/s | vs max(curl, sha256sum) |");
    println!("|---|---:|---:|---:|");
    for (name, d) in [
        ("flick (download + SHA-256 + fsync, one pass)", flick),
        ("curl -o file", curl),
        ("sha256sum file", sum),
        ("curl -o file; sha256sum file", both),
        ("curl -o file; sha256sum file; sync file", both_sync),
    ] {
        println!(
            "| {name} | {:.0} ms | {:.0} | {:.2}x |",
            d.as_secs_f64() * 1000.0,
            mbps(d),
            ratio(d)
        );
    }
    println!();
    println!(
        "flick / max(curl, sha256sum) = {:.2} (target <= 1.15); flick / (curl; sha256sum) = {:.2}",
        ratio(flick),
        flick.as_secs_f64() / both.as_secs_f64()
    );
}
