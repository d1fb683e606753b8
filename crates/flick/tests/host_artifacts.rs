//! `Host` fetching its Firecracker binary and base images through the artifact cache, against
//! the loopback fixture server that serves the real services' formats.

mod image_common;

use flick::host::{FirecrackerBinary, Host, HostOptions};
use flick::image::cache::BaseImagePreset;
use flick::image::{NoProgress, VersionSpec};
use image_common::{Env, LATEST};

fn host(env: &Env, firecracker: FirecrackerBinary) -> Host {
    let mut options = HostOptions::new(env.data.path(), firecracker);
    options.runtime_dir = Some(env.data.path().join("runtime"));
    options.endpoints = env.endpoints();
    Host::new(options).unwrap()
}

#[tokio::test]
async fn a_release_is_fetched_once_and_reused() {
    let env = Env::new();
    let h = host(
        &env,
        FirecrackerBinary::Release {
            version: VersionSpec::Latest,
            arch: None,
        },
    );
    let bin = h.ensure_binary().await.unwrap();
    assert!(
        bin.starts_with(env.data.path().join("bin")),
        "{}",
        bin.display()
    );
    assert!(flick::doctor::is_executable(&bin));
    let out = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&LATEST[1..]));
    let api_calls = env.server.requests().len();
    // Asked again (as every create_vm does): nothing goes over the network.
    assert_eq!(h.ensure_binary().await.unwrap(), bin);
    assert_eq!(env.server.requests().len(), api_calls);

    // A second host on the same data dir reuses the verified cache.
    let h2 = host(
        &env,
        FirecrackerBinary::Release {
            version: VersionSpec::Pinned(LATEST.into()),
            arch: None,
        },
    );
    assert_eq!(h2.ensure_binary().await.unwrap(), bin);
}

#[tokio::test]
async fn a_base_image_preset_becomes_a_kernel_and_rootfs() {
    let env = Env::new();
    let h = host(
        &env,
        FirecrackerBinary::Path(flick_testkit::fc_double_path()),
    );
    let ensured = h
        .ensure_base_image(&BaseImagePreset::Latest, &NoProgress)
        .await
        .unwrap();
    assert!(ensured.downloaded);
    assert!(ensured.bundle.kernel_path().is_file());
    assert!(ensured.bundle.rootfs_path().is_file());
    let again = h
        .ensure_base_image(&BaseImagePreset::Latest, &NoProgress)
        .await
        .unwrap();
    assert!(!again.downloaded);
    assert_eq!(again.bundle.id(), ensured.bundle.id());
}
