//! Two callers asking for the same bundle at once: exactly one downloads, the other waits on the
//! bundle lock and reuses the result.
//!
//! Runs without the libtest harness: `main` runs the scenarios, and re-executes this binary as
//! child processes (marked by `FLICK_IMAGE_TEST_CHILD`) for the two-process case.

mod image_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use flick::image::cache::{BaseImageCache, CacheOptions, EnsureOptions};
use flick::image::{BaseImagePreset, NoProgress};
use flick_testkit::fixture_server::Fault;
use image_common::*;

const CHILD_ENV: &str = "FLICK_IMAGE_TEST_CHILD";

fn slow() -> Fault {
    Fault::Slow {
        chunk: 8 * 1024,
        delay: Duration::from_millis(25),
    }
}

/// Child mode: ensure the latest bundle with the options passed in the environment and print
/// `downloaded <bool> <bundle id> <kernel sha256>`.
fn child(spec: &str) {
    let (dir, endpoints) = spec.split_once('\n').expect("child spec");
    let endpoints: flick::image::Endpoints = serde_json::from_str(endpoints).expect("endpoints");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        let opts = CacheOptions {
            dir: dir.into(),
            keep: 2,
            lts_version: "v1.7.0".into(),
            endpoints,
        };
        BaseImageCache::new(opts, downloader())
            .unwrap()
            .ensure(
                &BaseImagePreset::Latest,
                EnsureOptions::default(),
                &NoProgress,
            )
            .await
            .expect("child ensure")
    });
    println!(
        "downloaded {} {} {}",
        got.downloaded,
        got.bundle.id(),
        got.bundle.record.kernel.sha256
    );
}

fn two_tasks_download_once() {
    let env = Env::new();
    let kernel = env.ci_path("vmlinux-6.1.10");
    let rootfs = env.ci_path("ubuntu-24.04.squashfs");
    env.server.fault(&kernel, slow());
    env.server.fault(&rootfs, slow());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (a, b) = rt.block_on(async {
        // Two independent cache handles: separate lock file descriptions, as in two processes.
        let c1 = env.cache(2);
        let c2 = env.cache(2);
        let t1 = tokio::spawn(async move {
            c1.ensure(
                &BaseImagePreset::Latest,
                EnsureOptions::default(),
                &NoProgress,
            )
            .await
        });
        let t2 = tokio::spawn(async move {
            c2.ensure(
                &BaseImagePreset::Latest,
                EnsureOptions::default(),
                &NoProgress,
            )
            .await
        });
        (t1.await.unwrap().unwrap(), t2.await.unwrap().unwrap())
    });
    assert_eq!(
        env.server.request_count(&kernel),
        1,
        "kernel downloaded twice"
    );
    assert_eq!(
        env.server.request_count(&rootfs),
        1,
        "rootfs downloaded twice"
    );
    assert_eq!(
        u8::from(a.downloaded) + u8::from(b.downloaded),
        1,
        "exactly one caller downloads"
    );
    assert_eq!(a.bundle.dir, b.bundle.dir);
    assert_eq!(a.bundle.record.kernel.sha256, b.bundle.record.kernel.sha256);
    let names: Vec<_> = std::fs::read_dir(env.cache_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![a.bundle.id().to_owned()],
        "no lock or staging left"
    );
}

fn two_processes_download_once() {
    let env = Env::new();
    let kernel = env.ci_path("vmlinux-6.1.10");
    let rootfs = env.ci_path("ubuntu-24.04.squashfs");
    env.server.fault(&kernel, slow());
    env.server.fault(&rootfs, slow());
    let spec = format!(
        "{}\n{}",
        env.cache_dir().display(),
        serde_json::to_string(&env.endpoints()).unwrap()
    );
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .env(CHILD_ENV, &spec)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    let outputs: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "child failed: {}", out.status);
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    assert_eq!(
        env.server.request_count(&kernel),
        1,
        "kernel downloaded twice"
    );
    assert_eq!(
        env.server.request_count(&rootfs),
        1,
        "rootfs downloaded twice"
    );
    let lines: Vec<Vec<&str>> = outputs
        .iter()
        .map(|o| o.trim().split(' ').collect())
        .collect();
    let downloads = lines.iter().filter(|l| l[1] == "true").count();
    assert_eq!(downloads, 1, "exactly one process downloads: {outputs:?}");
    assert_eq!(lines[0][2], lines[1][2]);
    assert_eq!(lines[0][3], lines[1][3]);
    assert_eq!(
        lines[0][3],
        sha256_hex(&env.ci_bytes(LATEST_TRAIN, "vmlinux-6.1.10"))
    );
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: [(&str, fn()); 2] = [
        ("two_tasks_download_once", two_tasks_download_once),
        ("two_processes_download_once", two_processes_download_once),
    ];
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    let mut ran = 0;
    for (name, test) in tests {
        if filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())) {
            test();
            println!("test {name} ... ok");
            ran += 1;
        }
    }
    println!("test result: ok. {ran} passed");
}
