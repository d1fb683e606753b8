//! Firecracker binaries: latest version from the GitHub release JSON, tarball verification against
//! `.sha256.txt`, extraction from the real `release-<ver>-<arch>/` layout, `--version` checks,
//! caching under `<data>/bin/<ver>/<arch>/`, and custom binary paths.

mod image_common;

use std::os::unix::fs::PermissionsExt as _;

use flick::ErrorCode;
use flick::image::firecracker::{BinarySource, ReleaseRecord};
use flick::image::{Arch, BinaryManager, NoProgress, VersionSpec};
use flick_testkit::fixture_server::{FixtureServer, ReleaseFixture, ReleaseOptions};
use image_common::*;

const LATEST_JSON: &str = "/repos/firecracker-microvm/firecracker/releases/latest";

fn manager(env: &Env) -> BinaryManager {
    BinaryManager::new(env.dirs(), env.endpoints(), downloader())
}

fn tarball_path(tag: &str, arch: Arch) -> String {
    FixtureServer::release_asset_path(tag, &format!("firecracker-{tag}-{arch}.tgz"))
}

#[tokio::test]
async fn latest_release_is_downloaded_verified_and_cached() {
    let env = Env::new();
    let mgr = manager(&env);
    assert_eq!(mgr.latest_version().await.unwrap(), LATEST);
    let arch = host_arch();
    let bins = mgr
        .ensure(&VersionSpec::Latest, None, false, &NoProgress)
        .await
        .expect("ensure latest");
    assert!(bins.downloaded);
    assert_eq!(bins.version.as_deref(), Some(LATEST));
    assert_eq!(bins.arch, arch);
    let dir = env.data.path().join(format!("bin/{LATEST}/{arch}"));
    assert_eq!(bins.firecracker, dir.join("firecracker"));
    assert_eq!(bins.jailer.as_deref(), Some(dir.join("jailer").as_path()));
    for bin in [&bins.firecracker, bins.jailer.as_ref().unwrap()] {
        let mode = std::fs::metadata(bin).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{}", bin.display());
    }
    // The extracted stand-ins really run and answer like the real binaries.
    let out = std::process::Command::new(&bins.firecracker)
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("Firecracker {LATEST}\n")));
    let record: ReleaseRecord =
        serde_json::from_str(&std::fs::read_to_string(dir.join("release.json")).unwrap()).unwrap();
    assert_eq!(record.version, LATEST);
    assert!(record.version_checked);
    assert_eq!(record.tarball_sha256, sha256_hex(&env.release.tarball));
    assert_eq!(
        record.firecracker.sha256,
        sha256_hex(&std::fs::read(&bins.firecracker).unwrap())
    );
    assert_eq!(
        record.firecracker.file_name,
        format!("firecracker-{LATEST}-{arch}")
    );
    match &bins.source {
        BinarySource::Release { tarball_url, .. } => {
            assert_eq!(tarball_url, &env.server.url(&tarball_path(LATEST, arch)));
        }
        BinarySource::Custom => panic!("not a release"),
    }
    // Only the version directory remains: no tarball, no staging, no lock.
    let mut names: Vec<_> = std::fs::read_dir(env.data.path().join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec![LATEST.to_owned()]);
    let mut inside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    inside.sort();
    assert_eq!(inside, ["firecracker", "jailer", "release.json"]);
    // The GitHub API got a User-Agent (it rejects requests without one).
    let api = env
        .server
        .requests()
        .into_iter()
        .find(|r| r.path == LATEST_JSON)
        .unwrap();
    assert!(api.user_agent.unwrap_or_default().starts_with("flick/"));

    // Second call: reused, no second tarball download.
    let again = mgr
        .ensure(&VersionSpec::Latest, None, false, &NoProgress)
        .await
        .unwrap();
    assert!(!again.downloaded);
    assert_eq!(env.server.request_count(&tarball_path(LATEST, arch)), 1);
    // force_download fetches again.
    let forced = mgr
        .ensure(&VersionSpec::Latest, None, true, &NoProgress)
        .await
        .unwrap();
    assert!(forced.downloaded);
    assert_eq!(env.server.request_count(&tarball_path(LATEST, arch)), 2);
}

#[tokio::test]
async fn pinned_version_needs_no_api_and_accepts_both_spellings() {
    let env = Env::new();
    let arch = host_arch();
    let older = ReleaseFixture::new("v1.7.0", arch.as_str(), &ReleaseOptions::default());
    env.server.serve_release(&older, false);
    let mgr = manager(&env);
    let bins = mgr
        .ensure(
            &VersionSpec::Pinned("1.7.0".into()),
            None,
            false,
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(bins.version.as_deref(), Some("v1.7.0"));
    assert!(
        bins.firecracker
            .ends_with(format!("bin/v1.7.0/{arch}/firecracker"))
    );
    assert_eq!(env.server.request_count(LATEST_JSON), 0);
    let err = mgr
        .ensure(&VersionSpec::Pinned("1.7".into()), None, false, &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    let err = mgr
        .ensure(
            &VersionSpec::Pinned("../../x".into()),
            None,
            false,
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn other_architecture_is_fetched_without_running_it() {
    let env = Env::new();
    let other = match host_arch() {
        Arch::X86_64 => Arch::Aarch64,
        Arch::Aarch64 => Arch::X86_64,
    };
    let rel = ReleaseFixture::new(LATEST, other.as_str(), &ReleaseOptions::default());
    env.server.serve_release(&rel, false);
    let bins = manager(&env)
        .ensure(&VersionSpec::Latest, Some(other), false, &NoProgress)
        .await
        .unwrap();
    assert_eq!(bins.arch, other);
    let dir = env.data.path().join(format!("bin/{LATEST}/{other}"));
    let record: ReleaseRecord =
        serde_json::from_str(&std::fs::read_to_string(dir.join("release.json")).unwrap()).unwrap();
    assert!(!record.version_checked, "a foreign binary cannot be run");
    assert_eq!(record.arch, other);
}

#[tokio::test]
async fn latest_version_failures_are_version_fetch_failed() {
    let env = Env::new();
    let mgr = manager(&env);
    env.server.fault(
        LATEST_JSON,
        flick_testkit::fixture_server::Fault::Status(500),
    );
    let err = mgr.latest_version().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::VersionFetchFailed);
    assert_eq!(err.status(), Some(500));
    env.server.clear_faults(LATEST_JSON);
    env.server
        .serve(LATEST_JSON, "{not json", "application/json");
    assert_eq!(
        mgr.latest_version().await.unwrap_err().code(),
        ErrorCode::VersionFetchFailed
    );
    env.server
        .serve(LATEST_JSON, r#"{"name":"x"}"#, "application/json");
    assert_eq!(
        mgr.latest_version().await.unwrap_err().code(),
        ErrorCode::VersionFetchFailed
    );
    env.server
        .serve(LATEST_JSON, r#"{"tag_name":"nightly"}"#, "application/json");
    assert_eq!(
        mgr.latest_version().await.unwrap_err().code(),
        ErrorCode::VersionFetchFailed
    );
    env.server.remove(LATEST_JSON);
    let err = mgr
        .ensure(&VersionSpec::Latest, None, false, &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::VersionFetchFailed);
    assert_eq!(err.status(), Some(404));
    assert!(!env.data.path().join("bin").exists());
}

#[tokio::test]
async fn binary_reporting_another_version_is_refused() {
    let env = Env::new();
    let arch = host_arch();
    let liar = ReleaseFixture::new(
        "v1.8.0",
        arch.as_str(),
        &ReleaseOptions {
            reported_version: Some("v1.9.9".into()),
            ..ReleaseOptions::default()
        },
    );
    env.server.serve_release(&liar, false);
    std::fs::create_dir_all(env.data.path().join("bin")).unwrap();
    let before = tree(env.data.path());
    let err = manager(&env)
        .ensure(
            &VersionSpec::Pinned("v1.8.0".into()),
            None,
            false,
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::DownloadFailed);
    assert_eq!(err.details().unwrap()["reported"], "v1.9.9");
    assert_eq!(tree(env.data.path()), before);
}

#[tokio::test]
async fn tampered_cached_binary_is_downloaded_again() {
    let env = Env::new();
    let mgr = manager(&env);
    let bins = mgr
        .ensure(&VersionSpec::Latest, None, false, &NoProgress)
        .await
        .unwrap();
    std::fs::write(&bins.firecracker, "#!/bin/sh\necho tampered\n").unwrap();
    let again = mgr
        .ensure(&VersionSpec::Latest, None, false, &NoProgress)
        .await
        .unwrap();
    assert!(again.downloaded);
    let text = std::fs::read_to_string(&again.firecracker).unwrap();
    assert!(text.contains("stand-in for firecracker"));
}

#[test]
fn custom_binary_paths_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let fc = dir.path().join("firecracker");
    std::fs::write(&fc, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&fc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bins = BinaryManager::custom(&fc, None).unwrap();
    assert_eq!(bins.firecracker, fc);
    assert_eq!(bins.source, BinarySource::Custom);
    assert_eq!(bins.version, None);

    let missing = dir.path().join("nope");
    let err = BinaryManager::custom(&missing, None).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BinaryNotFound);
    assert!(err.message().contains("nope"));

    let err = BinaryManager::custom(dir.path(), None).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BinaryNotFound);

    let jailer = dir.path().join("jailer");
    std::fs::write(&jailer, "#!/bin/sh\n").unwrap();
    let err = BinaryManager::custom(&fc, Some(&jailer)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BinaryNotFound);
    assert!(
        err.message().contains("not executable"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn unreachable_api_falls_back_to_the_newest_cached_release() {
    let env = Env::new();
    let arch = host_arch();
    let older = ReleaseFixture::new("v1.9.0", arch.as_str(), &ReleaseOptions::default());
    env.server.serve_release(&older, false);
    let online = manager(&env);
    online
        .ensure(
            &VersionSpec::Pinned("v1.9.0".into()),
            None,
            false,
            &NoProgress,
        )
        .await
        .unwrap();
    online
        .ensure(&VersionSpec::Latest, None, false, &NoProgress)
        .await
        .unwrap();
    let offline = BinaryManager::new(env.dirs(), unreachable_endpoints(), downloader());
    let got = offline
        .ensure(&VersionSpec::Latest, None, false, &NoProgress)
        .await
        .expect("cached release used offline");
    assert_eq!(
        got.version.as_deref(),
        Some(LATEST),
        "v1.16.1 is newer than v1.9.0"
    );
    assert!(!got.downloaded);
    // Without a usable cache the error is the version lookup's.
    let empty = tempfile::tempdir().unwrap();
    let err = BinaryManager::new(
        flick::image::DataDirs::new(empty.path()),
        unreachable_endpoints(),
        downloader(),
    )
    .ensure(&VersionSpec::Latest, None, false, &NoProgress)
    .await
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::VersionFetchFailed);
    assert!(flick::image::download::is_transport_error(&err));
}

#[tokio::test]
async fn two_handles_fetch_a_release_once() {
    let env = Env::new();
    let arch = host_arch();
    env.server.fault(
        &tarball_path(LATEST, arch),
        flick_testkit::fixture_server::Fault::Slow {
            chunk: 1024,
            delay: std::time::Duration::from_millis(5),
        },
    );
    let (a, b) = (manager(&env), manager(&env));
    let spec = VersionSpec::Pinned(LATEST.into());
    let (ra, rb) = tokio::join!(
        a.ensure(&spec, None, false, &NoProgress),
        b.ensure(&spec, None, false, &NoProgress),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(u8::from(ra.downloaded) + u8::from(rb.downloaded), 1);
    assert_eq!(env.server.request_count(&tarball_path(LATEST, arch)), 1);
    assert_eq!(ra.firecracker, rb.firecracker);
}

#[tokio::test]
async fn github_token_goes_to_the_api_only() {
    let env = Env::new();
    let mgr = BinaryManager::new(
        env.dirs(),
        env.endpoints(),
        downloader().with_github_token(Some("t0ken".into())),
    );
    mgr.ensure(&VersionSpec::Latest, None, false, &NoProgress)
        .await
        .unwrap();
    let requests = env.server.requests();
    let api = requests.iter().find(|r| r.path == LATEST_JSON).unwrap();
    assert_eq!(api.authorization.as_deref(), Some("Bearer t0ken"));
    assert_eq!(api.accept.as_deref(), Some("application/vnd.github+json"));
    assert!(
        requests
            .iter()
            .filter(|r| r.path != LATEST_JSON)
            .all(|r| r.authorization.is_none()),
        "the token leaked to a download"
    );
    assert!(
        !format!("{mgr:?}").contains("t0ken"),
        "the token shows in Debug output"
    );
    // A rate-limited API answer says so.
    env.server.fault(
        LATEST_JSON,
        flick_testkit::fixture_server::Fault::Status(403),
    );
    let err = mgr.latest_version().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::VersionFetchFailed);
    assert_eq!(err.status(), Some(403));
    assert!(err.message().contains("rate limit"), "{}", err.message());
}
