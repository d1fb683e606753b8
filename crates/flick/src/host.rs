//! [`Host`]: the orchestrator that owns microVMs and every host resource made for them.
//!
//! | call | removes |
//! |---|---|
//! | [`MicroVm::cleanup`] | the VM's Firecracker process group, its runtime dir (API and vsock sockets, logs, staged drives); with a jailer, its jail and cgroup |
//! | [`Host::remove_vm`] | the same, the TAPs and egress rules the host network made for it, and forgets the VM |
//! | [`Host::stop_all`] | nothing: stops every VM (in parallel) and keeps their runtime dirs for inspection |
//! | [`Host::cleanup`] | every VM as `remove_vm` does, in parallel, then the host network (nftables table, bridge if it made it, `ip_forward`) and the view mount point this host made |
//!
//! Dropping a `MicroVm` that was not [detached](MicroVm::detach) kills its process group and
//! removes its runtime dir; [`Host::install_signal_cleanup`] makes SIGINT/SIGTERM run
//! [`Host::cleanup`] before the program exits.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::models::{self, MemoryBackend, MemoryBackendType, NetworkOverride, VsockOverride};
use crate::api::{ClientOptions, FirecrackerClient};
use crate::config::Overrides;
use crate::config::{DriveUpdate, VmConfig};
use crate::error::{Error, ErrorCode, Result};
use crate::image::cache::{BaseImageCache, BaseImagePreset, CacheOptions, EnsureOptions, Ensured};
use crate::image::{
    Arch, BinaryManager, DataDirs, Downloader, Endpoints, NoProgress, Progress, VersionSpec,
};
use crate::net::{HostNetwork, Netlink, NetworkConfig, VmRequest};
use crate::runtime::staging::{allocated_bytes, stage_file};
use crate::runtime::{RuntimeDir, default_runtime_root};
use crate::vm::jailer::JailerOptions;
use crate::vm::microvm::{
    RestoredParts, StagedDrive, StopOutcome, VmRuntimeOptions, fc_path, spawn_firecracker, wait_api,
};
use crate::vm::snapshot::Snapshot;
use crate::vm::{MicroVm, VmState};

/// Which Firecracker binary to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirecrackerBinary {
    /// An explicit binary, used as is after checking it exists and is executable.
    Path(PathBuf),
    /// A Firecracker release, downloaded, verified and cached under the data dir on first use
    /// (see [`crate::image::firecracker`]).
    Release {
        /// `Latest` or a pinned version.
        version: VersionSpec,
        /// Architecture (default: the host's).
        arch: Option<Arch>,
    },
}

/// Whether Firecracker runs in a private mount namespace showing its runtime dir at a fixed
/// path (see [`VmRuntimeOptions::view_dir`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewMode {
    /// On when running as root (the namespace needs CAP_SYS_ADMIN), off otherwise.
    #[default]
    Auto,
    /// Always on (fails to start VMs without CAP_SYS_ADMIN).
    On,
    /// Off: Firecracker sees host paths; snapshots then restore only while the source VM's
    /// drive files still exist.
    Off,
}

/// Options of a [`Host`].
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Where binaries, images and snapshots are kept.
    pub data_dir: PathBuf,
    /// Root of the per-VM runtime dirs (default: [`default_runtime_root`]).
    pub runtime_dir: Option<PathBuf>,
    /// Stage writable drives into the runtime dir (default true).
    pub ephemeral_writable_drives: bool,
    /// The Firecracker binary.
    pub firecracker: FirecrackerBinary,
    /// Mount-namespace view of the runtime dir.
    pub view: ViewMode,
    /// Upper bound for Firecracker's socket and API to come up.
    pub start_timeout: Duration,
    /// Grace periods of `stop()`.
    pub stop_grace: Duration,
    /// API client timeouts.
    pub client: ClientOptions,
    /// Extra environment for every Firecracker process.
    pub firecracker_env: Vec<(OsString, OsString)>,
    /// Extra arguments for every Firecracker process.
    pub firecracker_args: Vec<OsString>,
    /// Where releases, the CI bucket and release downloads are fetched from.
    pub endpoints: Endpoints,
    /// Run every VM's Firecracker through the `jailer` (per VM:
    /// [`Host::create_vm_with_jailer`]).
    pub jailer: Option<JailerOptions>,
    /// Host networking: when set, every network interface a VM config leaves without a
    /// `host_dev_name` gets a TAP (and, without a `guest_mac`, a MAC) from a
    /// [`HostNetwork`] this host sets up on first use in the calling thread's network
    /// namespace. A jailed Firecracker needs `tap_owner`/`tap_group` to open its TAP.
    pub network: Option<NetworkConfig>,
}

impl HostOptions {
    /// Defaults around an explicit Firecracker binary.
    pub fn new(data_dir: impl Into<PathBuf>, firecracker: FirecrackerBinary) -> Self {
        Self {
            data_dir: data_dir.into(),
            runtime_dir: None,
            ephemeral_writable_drives: true,
            firecracker,
            view: ViewMode::Auto,
            start_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_secs(5),
            client: ClientOptions::default(),
            firecracker_env: Vec::new(),
            firecracker_args: Vec::new(),
            endpoints: Endpoints::default(),
            jailer: None,
            network: None,
        }
    }
}

/// Summary row of [`Host::list_vms`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSummary {
    /// VM id.
    pub id: String,
    /// State.
    pub state: VmState,
}

/// Options of [`Host::restore_vm`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Id of the new VM (generated from the snapshot's source when `None`).
    pub id: Option<String>,
    /// Resume right after loading (otherwise the VM is `Paused`).
    pub resume: bool,
    /// New TAP per interface id.
    pub tap_overrides: BTreeMap<String, String>,
}

/// The orchestrator.
#[derive(Debug)]
pub struct Host {
    options: HostOptions,
    runtime_root: PathBuf,
    view_dir: Option<PathBuf>,
    vms: Mutex<BTreeMap<String, Arc<MicroVm>>>,
    // The resolved binary, so `latest` is asked for once per host, not once per VM.
    binary: tokio::sync::OnceCell<PathBuf>,
    // Set up on the first VM that needs a TAP; torn down by `cleanup`.
    network: tokio::sync::Mutex<Option<HostNetwork<Netlink>>>,
}

impl Host {
    /// A host with these options. Creates the runtime root (and the view mount point).
    ///
    /// # Errors
    /// [`ErrorCode::IoError`] when the runtime root cannot be created;
    /// [`ErrorCode::HostUnsupported`] for [`ViewMode::On`] without root;
    /// [`ErrorCode::InvalidConfig`] for bad jailer options (nothing is created then).
    pub fn new(options: HostOptions) -> Result<Self> {
        if let (Some(jailer), FirecrackerBinary::Path(bin)) =
            (&options.jailer, &options.firecracker)
        {
            jailer.validate(bin)?;
        }
        let runtime_root = options
            .runtime_dir
            .clone()
            .unwrap_or_else(default_runtime_root);
        std::fs::create_dir_all(&runtime_root).map_err(|e| {
            Error::io(
                ErrorCode::IoError,
                "cannot create runtime root",
                &runtime_root,
                e,
            )
        })?;
        let root = rustix::process::geteuid().is_root();
        let use_view = match options.view {
            ViewMode::Auto => root,
            ViewMode::On if !root => {
                return Err(Error::new(
                    ErrorCode::HostUnsupported,
                    "the runtime-dir view needs root (CAP_SYS_ADMIN)",
                ));
            }
            ViewMode::On => true,
            ViewMode::Off => false,
        };
        let view_dir = if use_view {
            // The mount point: an empty directory nothing is ever written to on the host.
            let view = runtime_root.join(".view");
            std::fs::create_dir_all(&view)
                .map_err(|e| Error::io(ErrorCode::IoError, "cannot create", &view, e))?;
            Some(view)
        } else {
            None
        };
        Ok(Self {
            options,
            runtime_root,
            view_dir,
            vms: Mutex::new(BTreeMap::new()),
            binary: tokio::sync::OnceCell::new(),
            network: tokio::sync::Mutex::new(None),
        })
    }

    /// The runtime root.
    #[must_use]
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_root
    }

    /// The options.
    #[must_use]
    pub fn options(&self) -> &HostOptions {
        &self.options
    }

    /// The Firecracker binary to run: an explicit path is checked; a release is downloaded,
    /// verified and cached on first use (once per host).
    ///
    /// # Errors
    /// [`ErrorCode::BinaryNotFound`] when a path is missing or not executable; for releases,
    /// `VERSION_FETCH_FAILED`, `DOWNLOAD_FAILED` and the other artifact codes.
    pub async fn ensure_binary(&self) -> Result<PathBuf> {
        self.ensure_binary_with_progress(&NoProgress).await
    }

    /// [`ensure_binary`](Self::ensure_binary) reporting download progress.
    ///
    /// # Errors
    /// As [`ensure_binary`](Self::ensure_binary).
    pub async fn ensure_binary_with_progress(&self, progress: &dyn Progress) -> Result<PathBuf> {
        self.binary
            .get_or_try_init(|| async {
                match &self.options.firecracker {
                    FirecrackerBinary::Path(path) => {
                        BinaryManager::custom(path, None).map(|b| b.firecracker)
                    }
                    FirecrackerBinary::Release { version, arch } => {
                        let manager = BinaryManager::new(
                            DataDirs::new(&self.options.data_dir),
                            self.options.endpoints.clone(),
                            Downloader::new()?,
                        );
                        Ok(manager
                            .ensure(version, *arch, false, progress)
                            .await?
                            .firecracker)
                    }
                }
            })
            .await
            .cloned()
    }

    /// A kernel and root filesystem from a base-image preset (Firecracker's CI images or a
    /// hosted manifest), downloaded, verified and cached under `<data>/base-images`.
    ///
    /// # Errors
    /// The artifact codes: `BASE_IMAGE_RESOLVE_FAILED`, `BASE_IMAGE_MANIFEST_FAILED`,
    /// `INVALID_BASE_IMAGE_MANIFEST`, `DOWNLOAD_FAILED`, `BASE_IMAGE_PREPARE_FAILED`, ...
    pub async fn ensure_base_image(
        &self,
        preset: &BaseImagePreset,
        progress: &dyn Progress,
    ) -> Result<Ensured> {
        let mut options = CacheOptions::new(&DataDirs::new(&self.options.data_dir));
        options.endpoints = self.options.endpoints.clone();
        BaseImageCache::new(options, Downloader::new()?)?
            .ensure(preset, EnsureOptions::default(), progress)
            .await
    }

    async fn vm_options(&self) -> Result<VmRuntimeOptions> {
        Ok(VmRuntimeOptions {
            firecracker_bin: self.ensure_binary().await?,
            runtime_root: self.runtime_root.clone(),
            view_dir: self.view_dir.clone(),
            ephemeral_writable_drives: self.options.ephemeral_writable_drives,
            start_timeout: self.options.start_timeout,
            stop_grace: self.options.stop_grace,
            client: self.options.client,
            env: self.options.firecracker_env.clone(),
            extra_args: self.options.firecracker_args.clone(),
            jailer: self.options.jailer.clone(),
            overrides: Overrides::default(),
        })
    }

    /// Gives every interface of `config` without a host device a TAP (and MAC) from the host
    /// network, setting that network up first if needed. All or nothing.
    async fn plug_network(&self, id: &str, config: &VmConfig) -> Result<Overrides> {
        let mut overrides = Overrides::default();
        let Some(net_config) = &self.options.network else {
            return Ok(overrides);
        };
        let open: Vec<_> = config
            .network_interfaces
            .iter()
            .filter(|i| i.host_dev_name.is_none())
            .collect();
        if open.is_empty() {
            return Ok(overrides);
        }
        let mut guard = self.network.lock().await;
        let net = match guard.as_mut() {
            Some(net) => net,
            None => {
                guard.insert(HostNetwork::setup(Netlink::connect()?, net_config.clone()).await?)
            }
        };
        for iface in open {
            let plugged = net
                .add_vm(VmRequest {
                    vm_id: id.to_string(),
                    iface_id: iface.iface_id.clone(),
                    ..VmRequest::default()
                })
                .await;
            match plugged {
                Ok(i) => {
                    overrides
                        .host_dev_names
                        .insert(iface.iface_id.clone(), i.host_device.clone());
                    if iface.guest_mac.is_none() {
                        overrides
                            .guest_macs
                            .insert(iface.iface_id.clone(), i.lease.mac.clone());
                    }
                }
                Err(e) => {
                    let _ = net.remove_vm(id).await;
                    return Err(e);
                }
            }
        }
        Ok(overrides)
    }

    /// Removes the TAPs and rules the host network made for VM `id` (none: nothing to do).
    async fn unplug_network(&self, id: &str) -> Result<()> {
        let mut guard = self.network.lock().await;
        let Some(net) = guard.as_mut() else {
            return Ok(());
        };
        match net.remove_vm(id).await {
            Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
            other => other,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<MicroVm>>> {
        self.vms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, vm: Arc<MicroVm>) -> Result<Arc<MicroVm>> {
        let mut vms = self.lock();
        if vms.contains_key(vm.id()) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("a VM with id {:?} exists already", vm.id()),
            ));
        }
        vms.insert(vm.id().to_string(), Arc::clone(&vm));
        Ok(vm)
    }

    /// Defines a VM (validated, not booted).
    ///
    /// # Errors
    /// [`ErrorCode::InvalidConfig`] with every problem; [`ErrorCode::AlreadyExists`] for a
    /// taken id; [`ErrorCode::BinaryNotFound`].
    pub async fn create_vm(&self, id: impl Into<String>, config: VmConfig) -> Result<Arc<MicroVm>> {
        self.create_with(id.into(), config, None).await
    }

    /// `jailer`: `None` = the host's default, `Some(choice)` = that choice for this VM.
    async fn create_with(
        &self,
        id: String,
        config: VmConfig,
        jailer: Option<Option<JailerOptions>>,
    ) -> Result<Arc<MicroVm>> {
        crate::runtime::sanitize_vm_id(&id)?;
        if self.lock().contains_key(&id) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("a VM with id {id:?} exists already"),
            ));
        }
        let mut options = self.vm_options().await?;
        if let Some(jailer) = jailer {
            if jailer.is_none() {
                options.view_dir.clone_from(&self.view_dir);
            }
            options.jailer = jailer;
        }
        // Everything the VM would be refused for is checked before any TAP exists.
        config.validate()?;
        if let Some(j) = &options.jailer {
            j.validate(&options.firecracker_bin)?;
            crate::vm::jailer::check_config(&config)?;
        }
        options.overrides = self.plug_network(&id, &config).await?;
        let created =
            MicroVm::new(id.clone(), config, options).and_then(|vm| self.insert(Arc::new(vm)));
        if created.is_err() {
            let _ = self.unplug_network(&id).await;
        }
        created
    }

    /// Defines a VM whose Firecracker runs through this jailer (`Some`) or directly (`None`),
    /// whatever the host's default.
    ///
    /// # Errors
    /// As [`create_vm`](Self::create_vm); [`ErrorCode::InvalidConfig`] for bad jailer options
    /// or a config a jailed Firecracker cannot use.
    pub async fn create_vm_with_jailer(
        &self,
        id: impl Into<String>,
        config: VmConfig,
        jailer: Option<JailerOptions>,
    ) -> Result<Arc<MicroVm>> {
        self.create_with(id.into(), config, Some(jailer)).await
    }

    /// Re-attaches to a running VM another process started and [`detach`](MicroVm::detach)ed
    /// (see [`MicroVm::attach`]) and tracks it like any other VM of this host.
    ///
    /// # Errors
    /// [`ErrorCode::AlreadyExists`] when this host already tracks that id; the errors of
    /// [`MicroVm::attach`].
    pub async fn attach_vm(&self, record: crate::vm::AttachRecord) -> Result<Arc<MicroVm>> {
        if self.lock().contains_key(&record.status.id) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("a VM with id {:?} exists already", record.status.id),
            ));
        }
        let vm = MicroVm::attach(record, self.vm_options().await?).await?;
        self.insert(Arc::new(vm))
    }

    /// A VM by id.
    #[must_use]
    pub fn get_vm(&self, id: &str) -> Option<Arc<MicroVm>> {
        self.lock().get(id).cloned()
    }

    /// Every VM, by id.
    #[must_use]
    pub fn list_vms(&self) -> Vec<VmSummary> {
        self.lock()
            .values()
            .map(|vm| VmSummary {
                id: vm.id().to_string(),
                state: vm.state(),
            })
            .collect()
    }

    /// How many VMs this host holds.
    #[must_use]
    pub fn vm_count(&self) -> usize {
        self.lock().len()
    }

    /// Cleans a VM up, removes the TAPs the host network made for it, and forgets it.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`]; [`ErrorCode::CleanupFailed`] when its network could not be
    /// fully removed.
    pub async fn remove_vm(&self, id: &str) -> Result<()> {
        let vm = self
            .lock()
            .remove(id)
            .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("no VM with id {id:?}")))?;
        let cleaned = vm.cleanup().await;
        let unplugged = self.unplug_network(id).await;
        cleaned.and(unplugged)
    }

    /// Stops every running or paused VM, all at once. Returns each VM's outcome.
    pub async fn stop_all(&self) -> Vec<(String, Result<StopOutcome>)> {
        let vms: Vec<Arc<MicroVm>> = self.lock().values().cloned().collect();
        let tasks = vms
            .into_iter()
            .filter(|vm| matches!(vm.state(), VmState::Running | VmState::Paused))
            .map(|vm| async move { (vm.id().to_string(), vm.stop().await) });
        futures_util::future::join_all(tasks).await
    }

    /// Removes every VM and every host resource this host created, in parallel.
    ///
    /// # Errors
    /// [`ErrorCode::CleanupFailed`] listing what could not be removed (everything else is).
    pub async fn cleanup(&self) -> Result<()> {
        let vms: Vec<Arc<MicroVm>> = std::mem::take(&mut *self.lock()).into_values().collect();
        let results = futures_util::future::join_all(vms.iter().map(|vm| vm.cleanup())).await;
        let mut failures: Vec<String> = results
            .into_iter()
            .zip(&vms)
            .filter_map(|(r, vm)| r.err().map(|e| format!("{}: {}", vm.id(), e.chain())))
            .collect();
        // Every VM's TAPs and rules, then the table, bridge and forwarding setting.
        if let Some(mut net) = self.network.lock().await.take()
            && let Err(e) = net.teardown().await
        {
            failures.push(format!("network: {}", e.chain()));
        }
        if let Some(view) = &self.view_dir {
            // Only the empty mount point this host made; never anything with content.
            let _ = std::fs::remove_dir(view);
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::CleanupFailed,
                format!("{} VM(s) not fully cleaned up", failures.len()),
            )
            .with_details(json!({ "failures": failures })))
        }
    }

    /// Runs [`cleanup`](Self::cleanup) when the process gets SIGINT or SIGTERM, then exits
    /// with 130 (SIGINT) or 143 (SIGTERM).
    pub fn install_signal_cleanup(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let host = Arc::clone(self);
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            let code = tokio::select! {
                _ = int.recv() => 130,
                _ = term.recv() => 143,
            };
            if let Err(e) = host.cleanup().await {
                tracing::warn!(error = %e.chain(), "cleanup on signal was incomplete");
            }
            std::process::exit(code);
        })
    }

    /// Starts a fresh Firecracker and loads `snapshot` into it: the snapshot's private drives
    /// are staged into the new VM's runtime dir, the vsock socket and TAPs are overridden, and
    /// the result is tracked as a normal [`MicroVm`] (`Running` with `resume`, else `Paused`).
    /// Restores of one snapshot may run concurrently.
    ///
    /// # Errors
    /// [`ErrorCode::AlreadyExists`] for a taken id; [`ErrorCode::RestoreFailed`] for any
    /// failure, with everything created for the new VM removed.
    pub async fn restore_vm(
        &self,
        snapshot: &Snapshot,
        options: RestoreOptions,
    ) -> Result<Arc<MicroVm>> {
        // A jailed VM sees its jail at `/`, which is the view its snapshot records.
        let vm_options = crate::vm::jailer::normalize(self.vm_options().await?);
        let jailed_snapshot = snapshot.view_dir.as_deref() == Some(Path::new("/"));
        if jailed_snapshot != vm_options.jailer.is_some()
            || (snapshot.view_dir.is_some() && snapshot.view_dir != vm_options.view_dir)
        {
            return Err(Error::new(
                ErrorCode::RestoreFailed,
                format!(
                    "the snapshot was taken with runtime view {:?}; this host uses {:?}{}",
                    snapshot.view_dir,
                    vm_options.view_dir,
                    if vm_options.jailer.is_some() {
                        " (the jailer)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let (id, runtime) = match options.id.clone() {
            Some(id) => {
                crate::runtime::sanitize_vm_id(&id)?;
                if self.lock().contains_key(&id) {
                    return Err(Error::new(
                        ErrorCode::AlreadyExists,
                        format!("a VM with id {id:?} exists already"),
                    ));
                }
                let runtime = crate::vm::jailer::create_runtime_dir(&vm_options, &id)?;
                (id, runtime)
            }
            // Concurrent restores race for the same generated id: creating the runtime dir
            // (an atomic mkdir) decides who gets it.
            None => self.claim_clone_id(&snapshot.source_vm, &vm_options)?,
        };
        let mut process = None;
        match self
            .restore_inner(snapshot, &options, &vm_options, &runtime, &id, &mut process)
            .await
        {
            Ok((client, staged, effective)) => {
                let parts = RestoredParts {
                    runtime,
                    process: process
                        .ok_or_else(|| Error::new(ErrorCode::Internal, "no process"))?,
                    client,
                    effective,
                    staged,
                    taps: options.tap_overrides.values().cloned().collect(),
                    resumed: options.resume,
                };
                let vm = Arc::new(MicroVm::restored(id, snapshot, vm_options, parts));
                self.insert(vm)
            }
            Err(cause) => {
                let log_tail = process
                    .as_ref()
                    .map(|p| p.log_tail(4096))
                    .unwrap_or_default();
                if let Some(mut p) = process {
                    p.kill().await;
                }
                let _ = runtime.remove();
                let _ = crate::vm::jailer::remove_jail(&vm_options, &id);
                Err(Error::new(
                    ErrorCode::RestoreFailed,
                    format!("restoring {} from {} failed", id, snapshot.dir.display()),
                )
                .with_details(json!({
                    "vm_id": id,
                    "cause": cause.to_json(),
                    "firecracker_log_tail": log_tail,
                }))
                .with_source(cause))
            }
        }
    }

    async fn restore_inner(
        &self,
        snapshot: &Snapshot,
        options: &RestoreOptions,
        vm_options: &VmRuntimeOptions,
        runtime: &RuntimeDir,
        id: &str,
        process_slot: &mut Option<crate::process::SupervisedProcess>,
    ) -> Result<(FirecrackerClient, Vec<StagedDrive>, VmConfig)> {
        let view = vm_options.view_dir.as_deref();
        let mut staged = Vec::new();
        let mut effective = snapshot.effective_config.clone();
        for drive in &snapshot.drives {
            let file = runtime.drives_dir().join(format!("{}.img", drive.drive_id));
            let method = stage_file(&drive.file, &file, ErrorCode::RestoreFailed)?;
            staged.push(StagedDrive {
                drive_id: drive.drive_id.clone(),
                source: drive.file.clone(),
                staged: file.clone(),
                method,
                allocated_bytes: allocated_bytes(&file).unwrap_or(0),
            });
            if let Some(d) = effective
                .drives
                .iter_mut()
                .find(|d| d.drive_id == drive.drive_id)
            {
                d.path_on_host = Some(fc_path(view, runtime, &file));
            }
        }
        let vsock_path = fc_path(view, runtime, &runtime.vsock_socket());
        if let Some(v) = effective.vsock.as_mut() {
            v.uds_path = Some(vsock_path.clone());
        }
        for iface in &mut effective.network_interfaces {
            if let Some(tap) = options.tap_overrides.get(&iface.iface_id) {
                iface.host_dev_name = Some(tap.clone());
            }
        }
        let snapshot_files =
            crate::vm::jailer::place_restore_files(vm_options, snapshot, runtime, &staged)?;
        *process_slot = Some(spawn_firecracker(vm_options, runtime, id)?);
        crate::vm::jailer::follow_daemon(vm_options, runtime, id, process_slot).await?;
        let process = process_slot
            .as_mut()
            .ok_or_else(|| Error::new(ErrorCode::Internal, "no process"))?;
        let client = FirecrackerClient::with_options(runtime.api_socket(), vm_options.client);
        wait_api(process, &client, vm_options.start_timeout).await?;
        let network_overrides: Vec<NetworkOverride> = options
            .tap_overrides
            .iter()
            .map(|(iface_id, tap)| NetworkOverride {
                iface_id: iface_id.clone(),
                host_dev_name: tap.clone(),
            })
            .collect();
        client
            .load_snapshot(&models::SnapshotLoadParams {
                snapshot_path: snapshot_files.0,
                mem_backend: Some(MemoryBackend {
                    backend_type: MemoryBackendType::File,
                    backend_path: snapshot_files.1,
                }),
                mem_file_path: None,
                track_dirty_pages: Some(snapshot.config.machine_config.track_dirty_pages),
                enable_diff_snapshots: None,
                resume_vm: Some(false),
                network_overrides: (!network_overrides.is_empty()).then_some(network_overrides),
                vsock_override: snapshot
                    .effective_config
                    .vsock
                    .as_ref()
                    .map(|_| VsockOverride {
                        uds_path: vsock_path.clone(),
                    }),
                clock_realtime: None,
            })
            .await?;
        if view.is_none() {
            // Without a view, Firecracker reopened the source VM's drive files: point each
            // private drive at this VM's own copy before the guest runs again.
            for drive in &staged {
                let update = DriveUpdate {
                    drive_id: drive.drive_id.clone(),
                    path_on_host: Some(drive.staged.clone()),
                    rate_limiter: None,
                };
                client.patch_drive(&update.to_payload()?).await?;
            }
        }
        if options.resume {
            client.resume().await?;
        }
        Ok((client, staged, effective))
    }
}

impl Host {
    /// `<source>-clone-<n>` with the smallest free `n`, and its runtime dir.
    fn claim_clone_id(
        &self,
        source: &str,
        vm_options: &VmRuntimeOptions,
    ) -> Result<(String, RuntimeDir)> {
        for n in 1..=100_000u32 {
            let candidate = format!("{source}-clone-{n}");
            if self.lock().contains_key(&candidate) {
                continue;
            }
            match crate::vm::jailer::create_runtime_dir(vm_options, &candidate) {
                Ok(runtime) => return Ok((candidate, runtime)),
                Err(e) if e.code() == ErrorCode::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(
            ErrorCode::RestoreFailed,
            format!("no free clone id for {source}"),
        ))
    }
}
