//! Image-to-rootfs conversion: flick against doing it by hand, side by side in one run.
//!
//! A synthetic image (default 300 MiB of content in 4 gzip layers, mostly small files) is
//! written as an OCI layout and imported once. Then, alternating, for `FLICK_BENCH_ROUNDS`
//! rounds (default 3):
//! - **flick**: `ImageStore::rootfs(.., Ext4)` from the stored layers (the cached image is
//!   removed before every round);
//! - **by hand**: `tar -xzf` of every layer into a directory, then `mkfs.ext4 -d` into an image of
//!   the same size with the same inode count, then removing the extracted tree (flick removes its
//!   scratch tree before it returns, too).
//!
//! `FLICK_BENCH_OCI_MIB` changes the content size. Needs root, `tar`, `mkfs.ext4`.
//! Run: `cargo bench -p flick --bench oci_convert`.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flick::image::NoProgress;
use flick::image::oci::{ImageStore, PullOptions, RootfsFormat};
use serde_json::json;
use sha2::{Digest as _, Sha256};

const ALPHABET: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\n";

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One gzip layer: `files` small files (1-8 KiB) in 100 directories plus one 4 MiB file.
fn layer(index: usize, files: usize) -> (Vec<u8>, Vec<u8>) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut seed = 0x9e37_79b9_u64.wrapping_mul(index as u64 + 1);
    let mut data = vec![0u8; 8192];
    for i in 0..files {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = 1024 + (seed % 7168) as usize;
        let mut r = seed | 1;
        for b in &mut data[..len] {
            // Text-like: random letters from a 64-symbol alphabet (gzip gets about 4:3).
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            *b = ALPHABET[(r >> 29) as usize & 63];
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(len as u64);
        h.set_mtime(1_700_000_000);
        builder
            .append_data(
                &mut h,
                format!("l{index}/d{:03}/f{i:06}.txt", i % 100),
                &data[..len],
            )
            .unwrap();
    }
    let big: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(big.len() as u64);
    builder
        .append_data(&mut h, format!("l{index}/big.bin"), &big[..])
        .unwrap();
    let raw = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    (gz.finish().unwrap(), raw)
}

fn write_layout(dir: &Path, layers: &[(Vec<u8>, Vec<u8>)]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = digest(bytes);
        std::fs::write(blobs.join(&d[7..]), bytes).unwrap();
        d
    };
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["/bin/sh"] },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|(_, raw)| digest(raw)).collect::<Vec<_>>() },
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&config), "size": config.len() },
        "layers": layers.iter().map(|(gz, _)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(gz), "size": gz.len(),
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(&manifest), "size": manifest.len() }],
    }))
    .unwrap();
    std::fs::write(dir.join("index.json"), index).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn by_hand(layers: &[&Path], work: &Path, size_bytes: u64, inodes: u64) -> Duration {
    let tree = work.join("tree");
    let img = work.join("hand.ext4");
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_file(&img);
    std::fs::create_dir_all(&tree).unwrap();
    let start = Instant::now();
    for layer in layers {
        let st = Command::new("tar")
            .arg("-xzf")
            .arg(layer)
            .arg("-C")
            .arg(&tree)
            .status()
            .unwrap();
        assert!(st.success());
    }
    std::fs::File::create(&img)
        .unwrap()
        .set_len(size_bytes)
        .unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-E", "root_owner=0:0", "-N"])
        .arg(inodes.to_string())
        .arg("-d")
        .arg(&tree)
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success());
    // flick removes its scratch tree before returning; so does the manual pipeline.
    std::fs::remove_dir_all(&tree).unwrap();
    let took = start.elapsed();
    let _ = std::fs::remove_file(&img);
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the conversion sets ownership and creates device nodes: run as root"
    );
    let mib: usize = std::env::var("FLICK_BENCH_OCI_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let rounds: usize = std::env::var("FLICK_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let layers_n = 4;
    // ~4.5 KiB per small file plus 4 MiB per layer.
    let files_per_layer = ((mib / layers_n).saturating_sub(4) << 20) / 4608;
    let work = tempfile::tempdir_in(
        std::env::var_os("FLICK_BENCH_DIR").unwrap_or_else(|| "/var/tmp".into()),
    )
    .unwrap();
    eprintln!("generating {layers_n} layers x {files_per_layer} files ...");
    let layers: Vec<(Vec<u8>, Vec<u8>)> =
        (0..layers_n).map(|i| layer(i, files_per_layer)).collect();
    let content: usize = layers.iter().map(|(_, raw)| raw.len()).sum();
    let compressed: usize = layers.iter().map(|(gz, _)| gz.len()).sum();
    let layout = work.path().join("layout");
    write_layout(&layout, &layers);
    let layer_files: Vec<std::path::PathBuf> = layers
        .iter()
        .map(|(gz, _)| layout.join("blobs/sha256").join(&digest(gz)[7..]))
        .collect();
    drop(layers);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = ImageStore::open(work.path().join("images")).unwrap();
    let record = rt
        .block_on(store.import(&layout, &PullOptions::default(), &NoProgress))
        .unwrap();
    let inodes = (files_per_layer as u64 + 102) * layers_n as u64;

    let mut flick_times = Vec::new();
    let mut hand_times = Vec::new();
    let mut image_size = 0;
    for round in 0..rounds {
        let out = store.rootfs_path(&record, RootfsFormat::Ext4);
        let _ = std::fs::remove_file(&out);
        let start = Instant::now();
        let path = rt
            .block_on(store.rootfs(&record, RootfsFormat::Ext4, &NoProgress))
            .unwrap();
        let took = start.elapsed();
        image_size = std::fs::metadata(&path).unwrap().len();
        flick_times.push(took);
        let refs: Vec<&Path> = layer_files
            .iter()
            .map(std::path::PathBuf::as_path)
            .collect();
        let hand = by_hand(&refs, work.path(), image_size, inodes + inodes / 5 + 1024);
        hand_times.push(hand);
        eprintln!(
            "round {round}: flick {:.2}s, tar -x + mkfs.ext4 -d + rm -rf {:.2}s",
            took.as_secs_f64(),
            hand.as_secs_f64()
        );
    }
    let show = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.1}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let (flick_rounds, hand_rounds) = (show(&flick_times), show(&hand_times));
    let f = median(flick_times);
    let h = median(hand_times);
    println!(
        "oci_convert: {} MiB content ({} MiB gzip), {} files, {} layers, ext4 image {} MiB",
        content >> 20,
        compressed >> 20,
        inodes,
        layers_n,
        image_size >> 20
    );
    println!("| method | median of {rounds} | rounds (s) |");
    println!("|---|---|---|");
    println!(
        "| flick ImageStore::rootfs (ext4) | {:.2} s | {flick_rounds} |",
        f.as_secs_f64()
    );
    println!(
        "| tar -xzf per layer + mkfs.ext4 -d + rm -rf | {:.2} s | {hand_rounds} |",
        h.as_secs_f64()
    );
    println!(
        "ratio flick / by hand = {:.2}",
        f.as_secs_f64() / h.as_secs_f64()
    );
}
