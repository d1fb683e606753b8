//! Shared helpers for the OCI tests: synthetic layers and images, writers for OCI layouts and
//! `docker save` tarballs, a real `docker-registry` on 127.0.0.1 (anonymous, htpasswd or token
//! auth) with a small token issuer, and readers for the produced ext4/squashfs images.
#![allow(dead_code, clippy::needless_pass_by_value)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

// ---------------------------------------------------------------------------------------------
// Layers

/// Builds a layer tar entry by entry, including entries the `tar` crate's safe setters refuse.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// Writes `name` straight into the header's name field (no validation).
fn set_raw_name(h: &mut tar::Header, name: &[u8]) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
}

fn set_raw_link(h: &mut tar::Header, name: &[u8]) {
    let field = &mut h.as_old_mut().linkname;
    field.fill(0);
    field[..name.len()].copy_from_slice(name);
}

impl Layer {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn raw(&mut self, mut h: tar::Header, name: &str, link: Option<&str>, data: &[u8]) {
        set_raw_name(&mut h, name.as_bytes());
        if let Some(l) = link {
            set_raw_link(&mut h, l.as_bytes());
        }
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
    }

    pub fn dir(mut self, name: &str, mode: u32) -> Self {
        self.raw(header(tar::EntryType::Directory, mode, 0), name, None, &[]);
        self
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.file_owned(name, data, 0o644, 0, 0)
    }

    pub fn file_owned(mut self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.raw(h, name, None, data);
        self
    }

    /// A file with PAX xattr records.
    pub fn file_xattr(mut self, name: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> Self {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        let h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.raw(h, name, None, data);
        self
    }

    /// A big file streamed from a pattern (not held in memory twice).
    pub fn big_file(mut self, name: &str, size: u64) -> Self {
        let mut h = header(tar::EntryType::Regular, 0o644, size);
        set_raw_name(&mut h, name.as_bytes());
        h.set_cksum();
        let reader = PatternReader { left: size, pos: 0 };
        self.builder.append(&h, reader).unwrap();
        self
    }

    pub fn symlink(mut self, name: &str, target: &str) -> Self {
        self.raw(
            header(tar::EntryType::Symlink, 0o777, 0),
            name,
            Some(target),
            &[],
        );
        self
    }

    pub fn hardlink(mut self, name: &str, target: &str) -> Self {
        self.raw(
            header(tar::EntryType::Link, 0o644, 0),
            name,
            Some(target),
            &[],
        );
        self
    }

    pub fn whiteout(self, dir: &str, name: &str) -> Self {
        let path = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&path, b"")
    }

    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"")
    }

    pub fn device(mut self, name: &str, kind: tar::EntryType, major: u32, minor: u32) -> Self {
        let mut h = header(kind, 0o620, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.raw(h, name, None, &[]);
        self
    }

    /// A GNU long-name header announcing `len` bytes of name.
    pub fn huge_long_name(mut self, len: u64) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(len);
        set_raw_name(&mut h, b"././@LongLink");
        h.set_cksum();
        self.builder
            .append(&h, PatternReader { left: len, pos: 0 })
            .unwrap();
        self
    }

    /// A PAX header of `len` bytes.
    pub fn huge_pax(mut self, len: u64) -> Self {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(len);
        set_raw_name(&mut h, b"PaxHeaders/x");
        h.set_cksum();
        self.builder
            .append(&h, PatternReader { left: len, pos: 0 })
            .unwrap();
        self
    }

    pub fn tar(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }

    pub fn gzip(self) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&self.tar()).unwrap();
        enc.finish().unwrap()
    }

    pub fn zstd(self) -> Vec<u8> {
        zstd::encode_all(&self.tar()[..], 1).unwrap()
    }
}

/// Deterministic filler bytes.
pub struct PatternReader {
    pub left: u64,
    pub pos: u64,
}

impl std::io::Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            *b = (self.pos.wrapping_mul(2_654_435_761) >> 13) as u8;
            self.pos += 1;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// Images

/// One synthetic image: layers (as stored), a config and a manifest.
#[derive(Clone)]
pub struct Image {
    pub layers: Vec<Vec<u8>>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub platform: (String, String),
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn layer_media_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    }
}

fn uncompressed(bytes: &[u8]) -> Vec<u8> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::decode_all(bytes).unwrap()
    } else {
        bytes.to_vec()
    }
}

impl Image {
    pub fn new(layers: Vec<Vec<u8>>, run: Value) -> Self {
        Self::for_platform(layers, run, "linux", "amd64")
    }

    pub fn for_platform(layers: Vec<Vec<u8>>, run: Value, os: &str, arch: &str) -> Self {
        let diff_ids: Vec<String> = layers.iter().map(|l| digest(&uncompressed(l))).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": os,
            "config": run,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest(&config),
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": layer_media_type(l),
                "digest": digest(l),
                "size": l.len(),
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        Self {
            layers,
            config,
            manifest,
            platform: (os.into(), arch.into()),
        }
    }

    pub fn digest(&self) -> String {
        digest(&self.manifest)
    }

    /// Every blob: config and layers (not the manifest).
    pub fn blobs(&self) -> Vec<&[u8]> {
        std::iter::once(&self.config[..])
            .chain(self.layers.iter().map(|l| &l[..]))
            .collect()
    }

    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": OCI_MANIFEST,
            "digest": self.digest(),
            "size": self.manifest.len(),
            "platform": { "os": self.platform.0, "architecture": self.platform.1 },
        })
    }
}

/// An index over several images.
pub fn index(images: &[&Image], annotations: Option<Value>) -> Vec<u8> {
    let mut manifests: Vec<Value> = images.iter().map(|i| i.descriptor()).collect();
    if let Some(a) = annotations {
        for m in &mut manifests {
            m["annotations"] = a.clone();
        }
    }
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
    .unwrap()
}

/// Files of an OCI layout holding `images` (index.json names them with `annotations`).
pub fn oci_layout_files(
    images: &[&Image],
    annotations: Option<Value>,
) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert(
        "oci-layout".to_owned(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    );
    files.insert("index.json".to_owned(), index(images, annotations));
    for image in images {
        files.insert(
            format!("blobs/sha256/{}", sha256_hex(&image.manifest)),
            image.manifest.clone(),
        );
        for blob in image.blobs() {
            files.insert(format!("blobs/sha256/{}", sha256_hex(blob)), blob.to_vec());
        }
    }
    files
}

pub fn write_dir(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (name, data) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

pub fn write_tar(path: &Path, files: &BTreeMap<String, Vec<u8>>) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

/// Docker's classic `docker save` layout: `manifest.json`, `<id>.json`, `<id>/layer.tar`
/// (uncompressed), a duplicate layer stored as a symlink, and `repositories`.
pub fn docker_save_legacy(path: &Path, image: &Image, tag: &str) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let add = |b: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    };
    let config_name = format!("{}.json", sha256_hex(&image.config));
    add(&mut b, &config_name, &image.config);
    let mut layer_names = Vec::new();
    let mut first_of: BTreeMap<String, String> = BTreeMap::new();
    for (i, layer) in image.layers.iter().enumerate() {
        let raw = uncompressed(layer);
        let id = format!("{:064x}", i + 1);
        let name = format!("{id}/layer.tar");
        let key = sha256_hex(&raw);
        if let Some(first) = first_of.get(&key) {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, &name, format!("../{first}")).unwrap();
        } else {
            add(&mut b, &name, &raw);
            first_of.insert(key, name.clone());
        }
        layer_names.push(name);
    }
    let manifest = json!([{ "Config": config_name, "RepoTags": [tag], "Layers": layer_names }]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    add(&mut b, "repositories", b"{}");
    b.finish().unwrap();
}

/// Newer `docker save` output: an OCI layout plus a `manifest.json` pointing into `blobs/`.
pub fn docker_save_oci(path: &Path, image: &Image, tag: &str) {
    let mut files = oci_layout_files(
        &[image],
        Some(json!({
            "io.containerd.image.name": tag,
            "org.opencontainers.image.ref.name": "latest",
        })),
    );
    let manifest = json!([{
        "Config": format!("blobs/sha256/{}", sha256_hex(&image.config)),
        "RepoTags": [tag],
        "Layers": image.layers.iter().map(|l| format!("blobs/sha256/{}", sha256_hex(l))).collect::<Vec<_>>(),
    }]);
    files.insert(
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    );
    write_tar(path, &files);
}

// ---------------------------------------------------------------------------------------------
// Tree snapshots (proof that nothing changed outside a target)

/// Every path below `dir` with its type, size and mode.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (String, u64, u32)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let kind = if m.is_dir() {
                stack.push(e.path());
                "dir".to_owned()
            } else if m.file_type().is_symlink() {
                format!("link->{}", std::fs::read_link(e.path()).unwrap().display())
            } else {
                "file".to_owned()
            };
            out.insert(
                e.path().strip_prefix(dir).unwrap().to_owned(),
                (kind, m.len(), m.mode()),
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Reading images back

/// `debugfs -R <request> <image>` stdout.
pub fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs) must be installed");
    assert!(out.status.success(), "debugfs failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads a file's content out of an ext4 image.
pub fn debugfs_cat(image: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .unwrap();
    out.stdout
}

/// `unsquashfs -lln <image>` stdout (long listing with numeric owners).
pub fn unsquashfs_list(image: &Path) -> String {
    let out = Command::new("unsquashfs")
        .args(["-lln"])
        .arg(image)
        .output()
        .expect("unsquashfs (squashfs-tools) must be installed");
    assert!(out.status.success(), "unsquashfs failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// A real registry

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub enum RegistryAuthMode {
    None,
    /// htpasswd with one user.
    Basic {
        user: String,
        password: String,
    },
    /// Token auth through [`TokenIssuer`].
    Token(Arc<TokenIssuer>),
}

/// `docker-registry` (CNCF distribution) listening on 127.0.0.1.
pub struct TestRegistry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub push_auth: Option<(String, String)>,
    pub token: Option<Arc<TokenIssuer>>,
    client: reqwest::Client,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestRegistry {
    pub async fn start(mode: RegistryAuthMode) -> Self {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.exists(),
            "/usr/bin/docker-registry is missing: apt-get install -y docker-registry"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut auth_yaml = String::new();
        let mut push_auth = None;
        let mut token = None;
        match mode {
            RegistryAuthMode::None => {}
            RegistryAuthMode::Basic { user, password } => {
                let htpasswd = dir.path().join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", &user, &password])
                    .output()
                    .expect("htpasswd (apache2-utils) must be installed");
                assert!(out.status.success());
                std::fs::write(&htpasswd, out.stdout).unwrap();
                auth_yaml = format!(
                    "auth:\n  htpasswd:\n    realm: flick-test\n    path: {}\n",
                    htpasswd.display()
                );
                push_auth = Some((user, password));
            }
            RegistryAuthMode::Token(issuer) => {
                auth_yaml = format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: flick-test\n    issuer: flick-test-issuer\n    rootcertbundle: {}\n",
                    issuer.port,
                    issuer.cert.display()
                );
                push_auth = Some((issuer.user.clone(), issuer.password.clone()));
                token = Some(issuer);
            }
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("registry.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let reg = Self {
            child,
            port,
            dir,
            push_auth,
            token,
            client: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reg.client.get(format!("{}/v2/", reg.base())).send().await
                && (r.status().is_success() || r.status() == 401)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not come up: {}",
                std::fs::read_to_string(reg.dir.path().join("registry.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        reg
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The `Authorization` header for pushing to `repo`.
    async fn auth_header(&self, repo: &str) -> Option<String> {
        let (user, password) = self.push_auth.as_ref()?;
        let basic = format!(
            "Basic {}",
            base64_std(format!("{user}:{password}").as_bytes())
        );
        if let Some(issuer) = &self.token {
            let url = format!(
                "http://127.0.0.1:{}/token?service=flick-test&scope=repository:{repo}:pull,push",
                issuer.port
            );
            let resp: Value = self
                .client
                .get(url)
                .header("authorization", basic)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            return Some(format!("Bearer {}", resp["token"].as_str().unwrap()));
        }
        Some(basic)
    }

    pub async fn push_blob(&self, repo: &str, data: &[u8]) {
        let auth = self.auth_header(repo).await;
        let mut req = self
            .client
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.base()));
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 202, "starting an upload: {resp:?}");
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.base())
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let mut req = self
            .client
            .put(format!("{url}{sep}digest={}", digest(data)))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec());
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 201, "finishing an upload: {resp:?}");
    }

    pub async fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
        let auth = self.auth_header(repo).await;
        let mut req = self
            .client
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.base()))
            .header("content-type", media_type)
            .body(body.to_vec());
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        assert_eq!(
            status,
            201,
            "pushing a manifest: {}",
            resp.text().await.unwrap()
        );
    }

    /// Pushes an image (blobs then manifest) under `repo:tag`.
    pub async fn push_image(&self, repo: &str, tag: &str, image: &Image) {
        for blob in image.blobs() {
            self.push_blob(repo, blob).await;
        }
        self.push_manifest(repo, tag, OCI_MANIFEST, &image.manifest)
            .await;
    }

    /// Pushes several platform images and an index over them under `repo:tag`.
    pub async fn push_index(&self, repo: &str, tag: &str, images: &[&Image]) -> Vec<u8> {
        for image in images {
            for blob in image.blobs() {
                self.push_blob(repo, blob).await;
            }
            self.push_manifest(repo, &image.digest(), OCI_MANIFEST, &image.manifest)
                .await;
        }
        let idx = index(images, None);
        self.push_manifest(repo, tag, OCI_INDEX, &idx).await;
        idx
    }

    /// The file holding a blob in the registry's storage (to corrupt it).
    pub fn blob_data_path(&self, blob_digest: &str) -> PathBuf {
        let hex = blob_digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

pub fn base64_std(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn base64_url(input: &[u8]) -> String {
    base64_std(input)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

// ---------------------------------------------------------------------------------------------
// Token issuer for the registry's token auth

/// Issues RS256 JWTs the registry trusts (its certificate is the registry's root bundle).
/// Repositories under `public/` are pullable anonymously; everything else needs `user:password`.
pub struct TokenIssuer {
    pub port: u16,
    pub cert: PathBuf,
    key: PathBuf,
    cert_der_b64: String,
    pub user: String,
    pub password: String,
    stop: Arc<AtomicBool>,
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl TokenIssuer {
    pub fn start(user: &str, password: &str) -> Arc<Self> {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=flick-test-issuer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl must be installed");
        assert!(out.status.success(), "{out:?}");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        assert!(der.status.success());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let issuer = Arc::new(Self {
            port,
            cert,
            key,
            cert_der_b64: base64_std(&der.stdout),
            user: user.into(),
            password: password.into(),
            stop: Arc::new(AtomicBool::new(false)),
            requests: Arc::default(),
            _dir: dir,
        });
        let me = Arc::clone(&issuer);
        let stop = Arc::clone(&issuer.stop);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    me.serve(conn);
                }
            }
        });
        issuer
    }

    fn serve(&self, mut conn: std::net::TcpStream) {
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        self.requests.fetch_add(1, Ordering::SeqCst);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let target = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let auth = text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("authorization")
                .then(|| v.trim().to_owned())
        });
        let expected = format!(
            "Basic {}",
            base64_std(format!("{}:{}", self.user, self.password).as_bytes())
        );
        let (status, body) = match auth {
            Some(a) if a != expected => (
                "401 Unauthorized",
                r#"{"error":"bad credentials"}"#.to_owned(),
            ),
            authed => {
                let authed = authed.is_some();
                let query = target.split_once('?').map_or("", |(_, q)| q);
                let mut access = Vec::new();
                for pair in query.split('&') {
                    let Some(("scope", v)) = pair.split_once('=') else {
                        continue;
                    };
                    let v = v
                        .replace("%3A", ":")
                        .replace("%2F", "/")
                        .replace("%2C", ",");
                    let mut parts = v.splitn(3, ':');
                    let (Some(kind), Some(name), Some(actions)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    if authed || name.starts_with("public/") {
                        let actions: Vec<&str> = actions
                            .split(',')
                            .filter(|a| authed || *a == "pull")
                            .collect();
                        access.push(json!({ "type": kind, "name": name, "actions": actions }));
                    }
                }
                let token = self.sign(&json!(access));
                (
                    "200 OK",
                    json!({ "token": token, "access_token": token }).to_string(),
                )
            }
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(resp.as_bytes());
    }

    fn sign(&self, access: &Value) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = json!({ "typ": "JWT", "alg": "RS256", "x5c": [self.cert_der_b64] });
        let claims = json!({
            "iss": "flick-test-issuer",
            "sub": self.user,
            "aud": "flick-test",
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{now}-{}", self.requests.load(Ordering::SeqCst)),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            base64_url(header.to_string().as_bytes()),
            base64_url(claims.to_string().as_bytes())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        format!("{input}.{}", base64_url(&out.stdout))
    }
}

// ---------------------------------------------------------------------------------------------
// Progress capture

#[derive(Default)]
pub struct Events(pub std::sync::Mutex<Vec<(String, flick::image::ProgressEvent)>>);

impl flick::image::Progress for Events {
    fn update(&self, u: &flick::image::ProgressUpdate<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((u.artifact.to_owned(), u.event));
    }
}

impl Events {
    pub fn count(&self, ev: flick::image::ProgressEvent) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| *e == ev)
            .count()
    }
}

/// Everything under a store root except lock files: proof of "nothing left behind".
pub fn store_files(root: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = snapshot(root)
        .into_iter()
        .filter(|(p, (kind, _, _))| kind != "dir" && !p.ends_with(".store.lock"))
        .map(|(p, _)| p)
        .collect();
    all.sort();
    all
}

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

impl Image {
    /// The same image with Docker schema 2 media types (manifest, config, gzip layers).
    pub fn docker(mut self) -> Self {
        let mut m: Value = serde_json::from_slice(&self.manifest).unwrap();
        m["mediaType"] = json!(DOCKER_MANIFEST);
        m["config"]["mediaType"] = json!("application/vnd.docker.container.image.v1+json");
        for l in m["layers"].as_array_mut().unwrap() {
            l["mediaType"] = json!("application/vnd.docker.image.rootfs.diff.tar.gzip");
        }
        self.manifest = serde_json::to_vec(&m).unwrap();
        self
    }
}

impl TestRegistry {
    /// Pushes Docker schema 2 images and a Docker manifest list over them.
    pub async fn push_docker_list(&self, repo: &str, tag: &str, images: &[&Image]) {
        let mut entries = Vec::new();
        for image in images {
            for blob in image.blobs() {
                self.push_blob(repo, blob).await;
            }
            self.push_manifest(repo, &image.digest(), DOCKER_MANIFEST, &image.manifest)
                .await;
            let mut d = image.descriptor();
            d["mediaType"] = json!(DOCKER_MANIFEST);
            entries.push(d);
        }
        let list = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": entries,
        }))
        .unwrap();
        self.push_manifest(repo, tag, DOCKER_LIST, &list).await;
    }
}
