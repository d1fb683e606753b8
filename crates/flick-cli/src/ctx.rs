//! What every VM command shares: the record store, the host settings (binary, runtime dir,
//! endpoints) and the persisted host network.
//!
//! Environment (all optional): `FLICK_FIRECRACKER` (use this binary instead of downloading a
//! release), `FLICK_FIRECRACKER_VERSION` (`latest` or `v1.x.y`), `FLICK_RUNTIME_DIR`,
//! `FLICK_GITHUB_API` / `FLICK_RELEASES_URL` / `FLICK_CI_BUCKET` (mirrors), `FLICK_AGENT_TOKEN`
//! (a fixed agent token, for agents run on the host), `FLICK_NETWORK_SUBNET`,
//! `FLICK_NETWORK_BRIDGE`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use flick::host::{FirecrackerBinary, Host, HostOptions};
use flick::image::{Endpoints, VersionSpec};
use flick::net::{HostNetwork, Netlink, NetworkConfig, NetworkState};
use flick::store::Store;
use flick::{Error, ErrorCode};
use sha2::Digest as _;

use crate::Globals;

/// How long a command waits for another flick process holding a VM's lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// The environment variable marking a Firecracker process as a VM of this data dir:
/// `<data dir>\t<vm id>`; `flick gc` finds orphans by it.
pub const OWNER_ENV: &str = "FLICK_VM_OWNER";

/// Shared state of one CLI invocation.
#[derive(Debug)]
pub struct Ctx {
    /// Global flags.
    pub globals: Globals,
    /// VM records.
    pub store: Store,
    // Serializes this process's own network changes (concurrent restores); the file lock
    // serializes processes.
    network_mutex: tokio::sync::Mutex<()>,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Ctx {
    /// Opens the store under the data dir.
    pub fn new(globals: &Globals) -> anyhow::Result<Self> {
        let store = Store::open(globals.data_dir.join("vms"))?;
        Ok(Self {
            globals: globals.clone(),
            store,
            network_mutex: tokio::sync::Mutex::new(()),
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.globals.data_dir
    }

    /// Where this data dir's per-VM runtime dirs live: a directory of its own on tmpfs (next
    /// to the library's default root), so `flick gc` never touches another program's VMs.
    pub fn runtime_root(&self) -> PathBuf {
        if let Some(p) = env_path("FLICK_RUNTIME_DIR") {
            return p;
        }
        let base = flick::runtime::default_runtime_root();
        let parent = base.parent().map_or(base.clone(), Path::to_path_buf);
        let mut h = sha2::Sha256::new();
        sha2::Digest::update(&mut h, self.data_dir().as_os_str().as_encoded_bytes());
        let digest = sha2::Digest::finalize(h);
        parent.join(format!("cli-{}", hex::encode(&digest[..4])))
    }

    /// Download locations (defaults, or the mirrors named in the environment).
    pub fn endpoints() -> Endpoints {
        let mut e = Endpoints::default();
        if let Some(v) = env_str("FLICK_GITHUB_API") {
            e.github_api = v;
        }
        if let Some(v) = env_str("FLICK_RELEASES_URL") {
            e.release_downloads = v;
        }
        if let Some(v) = env_str("FLICK_CI_BUCKET") {
            e.ci_bucket = v;
        }
        e
    }

    /// The Firecracker binary setting.
    pub fn firecracker() -> anyhow::Result<FirecrackerBinary> {
        if let Some(p) = env_path("FLICK_FIRECRACKER") {
            return Ok(FirecrackerBinary::Path(p));
        }
        let version = match env_str("FLICK_FIRECRACKER_VERSION").as_deref() {
            None | Some("latest") => VersionSpec::Latest,
            Some(v) => VersionSpec::Pinned(v.to_string()),
        };
        Ok(FirecrackerBinary::Release {
            version,
            arch: None,
        })
    }

    /// The jailer settings of `--jailer` VMs: `FLICK_JAILER` (default: `jailer` next to the
    /// Firecracker binary), `FLICK_JAILER_UID`/`FLICK_JAILER_GID` (default 0),
    /// `FLICK_JAILER_CGROUP_ROOT` (default: the cgroup2 mount). Jails live under the runtime
    /// root, so `gc` sees them.
    pub fn jailer_options(&self) -> anyhow::Result<flick::vm::JailerOptions> {
        let bin = match env_path("FLICK_JAILER") {
            Some(p) => p,
            None => {
                let fc = match Self::firecracker()? {
                    FirecrackerBinary::Path(p) => Some(p),
                    FirecrackerBinary::Release { .. } => {
                        std::fs::read_dir(self.data_dir().join("bin"))
                            .into_iter()
                            .flatten()
                            .flatten()
                            .map(|e| e.path().join(std::env::consts::ARCH).join("firecracker"))
                            .find(|p| p.is_file())
                    }
                };
                fc.and_then(|p| p.parent().map(|d| d.join("jailer")))
                    .filter(|p| p.is_file())
                    .ok_or_else(|| {
                        Error::new(
                            ErrorCode::BinaryNotFound,
                            "no jailer binary: set FLICK_JAILER or put `jailer` next to firecracker",
                        )
                    })?
            }
        };
        let id = |name: &str| -> anyhow::Result<u32> {
            env_str(name).map_or(Ok(0), |v| {
                v.parse().map_err(|_| {
                    Error::new(
                        ErrorCode::InvalidArgument,
                        format!("{name}={v:?} is not a number"),
                    )
                    .into()
                })
            })
        };
        let mut j =
            flick::vm::JailerOptions::new(bin, id("FLICK_JAILER_UID")?, id("FLICK_JAILER_GID")?);
        j.cgroup_root = env_path("FLICK_JAILER_CGROUP_ROOT");
        Ok(j)
    }

    /// Host options for VM `id`, jailed or not: its Firecracker carries the owner mark.
    pub fn host_options_jailed(
        &self,
        id: Option<&str>,
        jailed: bool,
    ) -> anyhow::Result<HostOptions> {
        let mut o = self.host_options(id)?;
        if jailed {
            o.jailer = Some(self.jailer_options()?);
        }
        Ok(o)
    }

    /// A host for operations on a recorded VM (jailed when it was created with `--jailer`).
    pub fn host_for(&self, record: &flick::store::VmRecord) -> anyhow::Result<Host> {
        let jailed = record
            .spec
            .get("jailer")
            .and_then(serde_json::Value::as_bool)
            == Some(true);
        Ok(Host::new(
            self.host_options_jailed(Some(&record.id), jailed)?,
        )?)
    }

    /// Host options for VM `id`: its Firecracker carries the owner mark.
    pub fn host_options(&self, id: Option<&str>) -> anyhow::Result<HostOptions> {
        let mut o = HostOptions::new(self.data_dir(), Self::firecracker()?);
        o.runtime_dir = Some(self.runtime_root());
        o.endpoints = Self::endpoints();
        o.stop_grace = Duration::from_secs(5);
        if let Some(id) = id {
            o.firecracker_env.push((
                OsString::from(OWNER_ENV),
                OsString::from(owner_mark(self.data_dir(), id)),
            ));
        }
        Ok(o)
    }

    /// A host for operations on VM `id`.
    pub fn host(&self, id: Option<&str>) -> anyhow::Result<Host> {
        Ok(Host::new(self.host_options(id)?)?)
    }

    fn network_file(&self) -> PathBuf {
        self.data_dir().join("network.json")
    }

    /// The network configuration flick's VMs use.
    pub fn network_config() -> NetworkConfig {
        let mut c = NetworkConfig::default();
        if let Some(s) = env_str("FLICK_NETWORK_SUBNET") {
            c.subnet = s;
        }
        if let Some(b) = env_str("FLICK_NETWORK_BRIDGE") {
            c.bridge = b;
        }
        c
    }

    /// Runs `f` on the host network under its lock, setting the network up on first use and
    /// saving its state afterwards (also when `f` fails, since it may have changed things).
    pub async fn with_network<T>(
        &self,
        f: impl AsyncFnOnce(&mut HostNetwork<Netlink>) -> flick::Result<T>,
    ) -> anyhow::Result<T> {
        let _inner = self.network_mutex.lock().await;
        let _lock = self
            .lock_file(&self.data_dir().join("network.lock"))
            .await?;
        let mut net = match self.load_network()? {
            Some(state) => HostNetwork::restore(Netlink::connect()?, state)?,
            None => HostNetwork::setup(Netlink::connect()?, Self::network_config()).await?,
        };
        let result = f(&mut net).await;
        self.save_network(Some(net.state()))?;
        Ok(result?)
    }

    /// Replaces the published ports (under the network lock).
    pub async fn apply_published(
        &self,
        forwards: &[flick::net::publish::PortForward],
    ) -> anyhow::Result<()> {
        let _inner = self.network_mutex.lock().await;
        let _lock = self
            .lock_file(&self.data_dir().join("network.lock"))
            .await?;
        let mut kernel = Netlink::connect()?;
        flick::net::publish::apply(&mut kernel, forwards).await?;
        Ok(())
    }

    /// Tears the host network down when no VM uses it any more.
    pub async fn release_network_if_unused(&self) -> anyhow::Result<bool> {
        let _inner = self.network_mutex.lock().await;
        let _lock = self
            .lock_file(&self.data_dir().join("network.lock"))
            .await?;
        let Some(state) = self.load_network()? else {
            return Ok(false);
        };
        if !state.vms.is_empty() {
            return Ok(false);
        }
        let mut net = HostNetwork::restore(Netlink::connect()?, state)?;
        net.teardown().await?;
        self.save_network(None)?;
        Ok(true)
    }

    /// The persisted network state, if the network is set up.
    pub fn load_network(&self) -> anyhow::Result<Option<NetworkState>> {
        let path = self.network_file();
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("{} is not a valid network state", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(ErrorCode::StoreFailed, "cannot read", &path, e).into()),
        }
    }

    fn save_network(&self, state: Option<&NetworkState>) -> anyhow::Result<()> {
        let path = self.network_file();
        match state {
            None => {
                let _ = std::fs::remove_file(&path);
            }
            Some(state) => {
                let bytes = serde_json::to_vec_pretty(state)?;
                let mut tmp = tempfile::NamedTempFile::new_in(self.data_dir())?;
                std::io::Write::write_all(&mut tmp, &bytes)?;
                tmp.as_file().sync_all()?;
                tmp.persist(&path)?;
            }
        }
        Ok(())
    }

    async fn lock_file(&self, path: &Path) -> anyhow::Result<std::fs::File> {
        std::fs::create_dir_all(self.data_dir())?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => {
                    return Err(Error::new(
                        ErrorCode::StoreFailed,
                        format!("cannot lock {}: {e}", path.display()),
                    )
                    .into());
                }
            }
        }
    }
}

/// The owner mark of VM `id` of data dir `data_dir`.
pub fn owner_mark(data_dir: &Path, id: &str) -> String {
    format!("{}\t{id}", data_dir.display())
}
