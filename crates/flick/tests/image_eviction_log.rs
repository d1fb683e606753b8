//! Evicting a bundle logs a `tracing` warning naming it (besides returning it), so a CLI that
//! installs a subscriber shows the user what disappeared from the cache.

mod image_common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use flick::image::cache::EnsureOptions;
use flick::image::{BaseImagePreset, ManifestSource, NoProgress};
use image_common::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn eviction_is_logged_as_a_warning() {
    let captured = Captured::default();
    let writer = captured.clone();
    // Global, because eviction runs on a blocking-pool thread.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let env = Env::new();
    let cache = env.cache(1);
    for name in ["old-one", "new-one"] {
        let url = env.publish_hosted(name, &env.hosted_manifest(name));
        cache
            .ensure(
                &BaseImagePreset::Hosted(ManifestSource::Url(url)),
                EnsureOptions::default(),
                &NoProgress,
            )
            .await
            .unwrap();
    }
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("evicted least recently used base image"))
        .unwrap_or_else(|| panic!("no eviction warning in {log:?}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("bundle=old-one"), "{line}");
    assert!(line.contains("limit=1"), "{line}");
}
