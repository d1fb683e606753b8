//! One microVM: its Firecracker process, runtime directory, staged drives and API client,
//! driven through the state machine in [`super::state`].
//!
//! `start()` in order: runtime dir (0700) → stage ephemeral drives → spawn Firecracker in its
//! own session (and, as root, its own mount namespace showing the runtime dir at the host's
//! view path) → wait for the socket (`SOCKET_TIMEOUT`) and the API (`API_TIMEOUT`) → the
//! configuration PUTs in Firecracker's order → `InstanceStart`. Any failure removes everything
//! created so far and leaves the VM in `Error` with `START_FAILED` carrying the cause and the
//! tail of Firecracker's log.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::jailer::{self, JailerOptions, SnapshotPlacement};
use super::snapshot::{Snapshot, SnapshotDrive, SnapshotKind, SnapshotOptions};
use super::state::{Operation, VmState};
use crate::api::models::{self, InstanceInfo};
use crate::api::{ClientOptions, FirecrackerClient};
use crate::config::{
    BalloonUpdate, DriveUpdate, NetworkInterfaceUpdate, Overrides, Serial, VmConfig,
};
use crate::error::{Error, ErrorCode, Result};
use crate::process::{ProcessIdentity, ProcessSpec, SupervisedProcess};
use crate::runtime::RuntimeDir;
use crate::runtime::staging::{StageMethod, allocated_bytes, should_stage, stage_file};

/// How a VM's Firecracker is run; filled in by the [`Host`](crate::host::Host).
#[derive(Debug, Clone)]
pub struct VmRuntimeOptions {
    /// The `firecracker` binary.
    pub firecracker_bin: PathBuf,
    /// Root under which the VM's runtime directory is created.
    pub runtime_root: PathBuf,
    /// When set, Firecracker runs in a private mount namespace where the VM's runtime
    /// directory appears at this path, and every path Firecracker is given inside the runtime
    /// directory is expressed through it (so snapshots restore into other VMs' directories).
    pub view_dir: Option<PathBuf>,
    /// Stage writable drives into the runtime directory (per-drive `ephemeral` overrides).
    pub ephemeral_writable_drives: bool,
    /// Upper bound for the API socket to appear and answer.
    pub start_timeout: Duration,
    /// How long `stop()` waits after Ctrl+Alt+Del, and again after SIGTERM.
    pub stop_grace: Duration,
    /// API client timeouts.
    pub client: ClientOptions,
    /// Extra environment for the Firecracker process.
    pub env: Vec<(OsString, OsString)>,
    /// Extra arguments for the Firecracker process (after `--` with a jailer).
    pub extra_args: Vec<OsString>,
    /// Run Firecracker through its `jailer` (see [`super::jailer`]).
    pub jailer: Option<JailerOptions>,
    /// Applied at start on top of what staging computes: the TAPs and MACs a host network
    /// allocated for interfaces the config left open.
    pub overrides: Overrides,
}

/// A drive staged into the runtime directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedDrive {
    /// Drive id.
    pub drive_id: String,
    /// The caller's file (never written).
    pub source: PathBuf,
    /// The private copy on the host.
    pub staged: PathBuf,
    /// How it was made.
    pub method: StageMethod,
    /// Bytes the copy allocates.
    pub allocated_bytes: u64,
}

/// A point-in-time description of a VM, available in every state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// VM id.
    pub id: String,
    /// State.
    pub state: VmState,
    /// Firecracker's pid and start time while it runs.
    pub process: Option<ProcessIdentity>,
    /// Runtime directory.
    pub runtime_dir: Option<PathBuf>,
    /// API socket.
    pub api_socket: Option<PathBuf>,
    /// Host side of the vsock device.
    pub vsock_socket: Option<PathBuf>,
    /// Staged drives.
    pub staged_drives: Vec<StagedDrive>,
    /// TAP devices the VM uses.
    pub tap_devices: Vec<String>,
    /// Seconds since the Unix epoch when the VM was created.
    pub created_at: u64,
    /// The last error, in `Error` state.
    pub last_error: Option<Value>,
}

#[derive(Debug)]
struct Inner {
    state: VmState,
    runtime: Option<RuntimeDir>,
    process: Option<SupervisedProcess>,
    client: Option<FirecrackerClient>,
    effective: Option<VmConfig>,
    staged: Vec<StagedDrive>,
    taps: Vec<String>,
    last_error: Option<Value>,
    detached: bool,
}

/// One microVM. Share it as `Arc<MicroVm>`; operations on one VM are serialized.
#[derive(Debug)]
pub struct MicroVm {
    id: String,
    config: VmConfig,
    options: VmRuntimeOptions,
    created_at: u64,
    inner: Mutex<Inner>,
    // A copy of the state readable without awaiting the operation lock.
    state: StdMutex<VmState>,
}

impl MicroVm {
    /// A VM in `Created` state. The config is validated here (`INVALID_CONFIG` with every
    /// problem) and kept unchanged; nothing runs until [`start`](Self::start).
    ///
    /// # Errors
    /// [`ErrorCode::InvalidConfig`].
    pub fn new(id: impl Into<String>, config: VmConfig, options: VmRuntimeOptions) -> Result<Self> {
        config.validate()?;
        if let Some(j) = &options.jailer {
            j.validate(&options.firecracker_bin)?;
            jailer::check_config(&config)?;
        }
        let options = jailer::normalize(options);
        let taps = config
            .network_interfaces
            .iter()
            .filter_map(|i| {
                options
                    .overrides
                    .host_dev_names
                    .get(&i.iface_id)
                    .or(i.host_dev_name.as_ref())
                    .cloned()
            })
            .collect();
        Ok(Self {
            id: id.into(),
            config,
            options,
            created_at: crate::unix_time(),
            inner: Mutex::new(Inner {
                state: VmState::Created,
                runtime: None,
                process: None,
                client: None,
                effective: None,
                staged: Vec::new(),
                taps,
                last_error: None,
                detached: false,
            }),
            state: StdMutex::new(VmState::Created),
        })
    }

    /// The VM id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> VmState {
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The configuration as the caller gave it (staging never changes it).
    #[must_use]
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The runtime options.
    #[must_use]
    pub fn runtime_options(&self) -> &VmRuntimeOptions {
        &self.options
    }

    fn set_state(&self, inner: &mut Inner, state: VmState) {
        inner.state = state;
        *self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = state;
    }

    /// A snapshot of everything known about the VM.
    pub async fn status(&self) -> VmStatus {
        let inner = self.inner.lock().await;
        VmStatus {
            id: self.id.clone(),
            state: inner.state,
            process: inner.process.as_ref().map(SupervisedProcess::identity),
            runtime_dir: inner.runtime.as_ref().map(|r| r.path().to_path_buf()),
            api_socket: inner.runtime.as_ref().map(RuntimeDir::api_socket),
            vsock_socket: inner
                .runtime
                .as_ref()
                .filter(|_| self.config.vsock.is_some())
                .map(RuntimeDir::vsock_socket),
            staged_drives: inner.staged.clone(),
            tap_devices: inner.taps.clone(),
            created_at: self.created_at,
            last_error: inner.last_error.clone(),
        }
    }

    /// The runtime directory, once started.
    pub async fn runtime_dir(&self) -> Option<PathBuf> {
        self.inner
            .lock()
            .await
            .runtime
            .as_ref()
            .map(|r| r.path().to_path_buf())
    }

    /// TAP devices the VM uses.
    pub async fn tap_devices(&self) -> Vec<String> {
        self.inner.lock().await.taps.clone()
    }

    /// The API client, while Firecracker runs.
    pub async fn client(&self) -> Option<FirecrackerClient> {
        self.inner.lock().await.client.clone()
    }

    /// The configuration as Firecracker received it (staged paths, sockets), once started.
    pub async fn effective_config(&self) -> Option<VmConfig> {
        self.inner.lock().await.effective.clone()
    }

    /// Keeps the VM running when this value is dropped (for programs that exit while their
    /// VMs live on). Explicit [`cleanup`](Self::cleanup) still removes everything.
    pub async fn detach(&self) {
        self.inner.lock().await.detached = true;
    }

    fn fc_path(&self, runtime: &RuntimeDir, host_path: &Path) -> PathBuf {
        fc_path(self.options.view_dir.as_deref(), runtime, host_path)
    }

    /// Boots the VM: see the module docs for the sequence.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] unless `Created`; [`ErrorCode::StartFailed`] for any
    /// failure after that (cause chained, Firecracker's log tail in the details), with
    /// everything created so far removed and the VM in `Error`.
    pub async fn start(&self) -> Result<()> {
        let mut inner = self.inner.lock().await;
        Operation::Start.check(inner.state)?;
        self.set_state(&mut inner, VmState::Configuring);
        match self.start_inner(&mut inner).await {
            Ok(()) => {
                self.set_state(&mut inner, VmState::Running);
                Ok(())
            }
            Err(cause) => {
                let log_tail = inner
                    .process
                    .as_ref()
                    .map(|p| p.log_tail(4096))
                    .unwrap_or_default();
                self.teardown(&mut inner).await;
                let err = Error::new(
                    ErrorCode::StartFailed,
                    format!("VM {} failed to start", self.id),
                )
                .with_details(json!({
                    "vm_id": self.id,
                    "cause": cause.to_json(),
                    "firecracker_log_tail": log_tail,
                }))
                .with_source(cause);
                inner.last_error = Some(err.to_json());
                self.set_state(&mut inner, VmState::Error);
                Err(err)
            }
        }
    }

    async fn start_inner(&self, inner: &mut Inner) -> Result<()> {
        let runtime = jailer::create_runtime_dir(&self.options, &self.id)?;
        inner.runtime = Some(runtime.clone());

        // Stage drives and compute every host-side override.
        let mut overrides = self.options.overrides.clone();
        for drive in &self.config.drives {
            let Some(source) = &drive.path_on_host else {
                continue;
            };
            if drive.is_vhost_user()
                || !should_stage(
                    drive.is_read_only,
                    drive.ephemeral,
                    self.options.ephemeral_writable_drives,
                )
            {
                continue;
            }
            let staged = runtime.drives_dir().join(format!("{}.img", drive.drive_id));
            let method = stage_file(source, &staged, ErrorCode::DriveStagingFailed)?;
            inner.staged.push(StagedDrive {
                drive_id: drive.drive_id.clone(),
                source: source.clone(),
                staged: staged.clone(),
                method,
                allocated_bytes: allocated_bytes(&staged).unwrap_or(0),
            });
            overrides
                .drive_paths
                .insert(drive.drive_id.clone(), self.fc_path(&runtime, &staged));
        }
        jailer::place_files(&self.options, &self.config, &runtime, &mut overrides)?;
        if let Some(vsock) = &self.config.vsock
            && vsock.uds_path.is_none()
        {
            overrides.vsock_uds_path = Some(self.fc_path(&runtime, &runtime.vsock_socket()));
        }
        let mut effective = self.config.with_overrides(&overrides)?;
        // The guest console goes to the runtime dir unless the caller chose a place.
        match &mut effective.serial {
            Some(serial) if serial.serial_out_path.is_some() => {}
            Some(serial) => {
                serial.serial_out_path = Some(self.fc_path(&runtime, &runtime.serial_log_path()));
            }
            None => {
                effective.serial = Some(Serial {
                    serial_out_path: Some(self.fc_path(&runtime, &runtime.serial_log_path())),
                    rate_limiter: None,
                });
            }
        }
        let payloads = effective.to_payloads()?;
        inner.effective = Some(effective);

        let process = self.spawn_firecracker(&runtime)?;
        inner.process = Some(process);
        jailer::follow_daemon(&self.options, &runtime, &self.id, &mut inner.process).await?;
        let client = FirecrackerClient::with_options(runtime.api_socket(), self.options.client);
        inner.client = Some(client.clone());
        self.wait_api(inner, &client).await?;

        for call in payloads.requests() {
            client
                .request_checked(call.method.clone(), &call.path, Some(&call.body))
                .await?;
        }
        client.instance_start().await?;
        Ok(())
    }

    fn spawn_firecracker(&self, runtime: &RuntimeDir) -> Result<SupervisedProcess> {
        spawn_firecracker(&self.options, runtime, &self.id)
    }

    async fn wait_api(
        &self,
        inner: &mut Inner,
        client: &FirecrackerClient,
    ) -> Result<InstanceInfo> {
        let process = inner
            .process
            .as_mut()
            .ok_or_else(|| Error::new(ErrorCode::Internal, "no process to wait for"))?;
        wait_api(process, client, self.options.start_timeout).await
    }

    /// Kills the process group, removes the runtime dir (staged drives with it).
    async fn teardown(&self, inner: &mut Inner) {
        if let Some(mut process) = inner.process.take() {
            process.kill().await;
        }
        inner.client = None;
        if let Some(runtime) = inner.runtime.take() {
            if let Err(e) = runtime.remove() {
                tracing::warn!(vm = %self.id, error = %e.chain(), "runtime dir not removed");
            }
            // Only a jail this VM made (never one that was in the way of its start).
            if let Err(e) = jailer::remove_jail(&self.options, &self.id) {
                tracing::warn!(vm = %self.id, error = %e.chain(), "jail not removed");
            }
        }
        inner.staged.clear();
    }

    fn require_client(&self, inner: &Inner) -> Result<FirecrackerClient> {
        inner.client.clone().ok_or_else(|| {
            Error::new(
                ErrorCode::NoClient,
                format!("VM {} has no running Firecracker", self.id),
            )
        })
    }

    /// Marks the VM stopped when Firecracker has exited behind our back.
    fn reap_if_exited(&self, inner: &mut Inner) {
        if inner.state.has_process()
            && let Some(p) = inner.process.as_mut()
            && p.try_exit().is_some()
        {
            inner.client = None;
            self.set_state(inner, VmState::Stopped);
        }
    }

    async fn checked(
        &self,
        op: Operation,
    ) -> Result<(tokio::sync::MutexGuard<'_, Inner>, FirecrackerClient)> {
        let mut inner = self.inner.lock().await;
        self.reap_if_exited(&mut inner);
        op.check(inner.state)?;
        let client = self.require_client(&inner)?;
        Ok((inner, client))
    }

    /// Runs `f` with the API client if `op` is allowed now; a transport failure caused by
    /// Firecracker having exited is reported as the VM being stopped.
    async fn with_client<T, F, Fut>(&self, op: Operation, f: F) -> Result<T>
    where
        F: FnOnce(FirecrackerClient) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let (mut inner, client) = self.checked(op).await?;
        let result = f(client).await;
        self.notice_exit(&mut inner, result).await
    }

    /// Turns a transport error into `INVALID_STATE` (stopped) when Firecracker has exited.
    async fn notice_exit<T>(&self, inner: &mut Inner, result: Result<T>) -> Result<T> {
        let err = match result {
            Err(e)
                if matches!(
                    e.code(),
                    ErrorCode::SocketRequestFailed | ErrorCode::ApiTimeout
                ) =>
            {
                e
            }
            other => return other,
        };
        // A closed socket usually means the process is exiting right now.
        if let Some(p) = inner.process.as_mut() {
            p.wait_timeout(Duration::from_millis(200)).await;
        }
        self.reap_if_exited(inner);
        if inner.state == VmState::Stopped {
            return Err(Error::new(
                ErrorCode::InvalidState,
                format!("VM {} is stopped: Firecracker exited", self.id),
            )
            .with_details(json!({ "state": VmState::Stopped }))
            .with_source(err));
        }
        Err(err)
    }

    /// Pauses the vCPUs.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] unless `Running`; [`ErrorCode::ApiError`] from Firecracker.
    pub async fn pause(&self) -> Result<()> {
        let (mut inner, client) = self.checked(Operation::Pause).await?;
        let result = client.pause().await;
        self.notice_exit(&mut inner, result).await?;
        self.set_state(&mut inner, VmState::Paused);
        Ok(())
    }

    /// Resumes the vCPUs.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] unless `Paused`; [`ErrorCode::ApiError`] from Firecracker.
    pub async fn resume(&self) -> Result<()> {
        let (mut inner, client) = self.checked(Operation::Resume).await?;
        let result = client.resume().await;
        self.notice_exit(&mut inner, result).await?;
        self.set_state(&mut inner, VmState::Running);
        Ok(())
    }

    /// Graceful stop with the configured grace period: Ctrl+Alt+Del, wait, SIGTERM, wait,
    /// SIGKILL (always to the whole process group).
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] unless `Running` or `Paused`.
    pub async fn stop(&self) -> Result<StopOutcome> {
        self.stop_with_grace(self.options.stop_grace).await
    }

    /// [`stop`](Self::stop) with an explicit grace period.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] unless `Running` or `Paused`.
    pub async fn stop_with_grace(&self, grace: Duration) -> Result<StopOutcome> {
        let mut inner = self.inner.lock().await;
        Operation::Stop.check(inner.state)?;
        // Firecracker may have exited on its own since the last operation.
        self.reap_if_exited(&mut inner);
        if inner.state == VmState::Stopped {
            return Ok(StopOutcome::AlreadyExited);
        }
        let client = self.require_client(&inner)?;
        let paused = inner.state == VmState::Paused;
        // A paused guest cannot react to Ctrl+Alt+Del.
        if paused {
            let _ = client.resume().await;
        }
        let asked = client.send_ctrl_alt_del().await.is_ok();
        let process = inner
            .process
            .as_mut()
            .ok_or_else(|| Error::new(ErrorCode::NoClient, "no process"))?;
        let outcome = if asked && process.wait_timeout(grace).await.is_some() {
            StopOutcome::Graceful
        } else {
            match process.terminate(grace).await {
                crate::process::Termination::AlreadyExited(_) => StopOutcome::Graceful,
                crate::process::Termination::Terminated(_) => StopOutcome::Terminated,
                crate::process::Termination::Killed(_) => StopOutcome::Killed,
            }
        };
        inner.client = None;
        self.set_state(&mut inner, VmState::Stopped);
        Ok(outcome)
    }

    /// SIGKILL to the whole process group at once.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] when no process can exist.
    pub async fn kill(&self) -> Result<()> {
        let mut inner = self.inner.lock().await;
        Operation::Kill.check(inner.state)?;
        if let Some(p) = inner.process.as_mut() {
            p.kill().await;
        }
        inner.client = None;
        let next = if inner.state == VmState::Error {
            VmState::Error
        } else {
            VmState::Stopped
        };
        self.set_state(&mut inner, next);
        Ok(())
    }

    /// Removes everything the VM holds on the host: the process group (killed), the runtime
    /// directory with its sockets, logs and staged drives. Idempotent, from any state.
    ///
    /// # Errors
    /// Never fails today; kept fallible for resources whose removal can fail.
    pub async fn cleanup(&self) -> Result<()> {
        let mut inner = self.inner.lock().await;
        let had_process = inner.process.is_some();
        self.teardown(&mut inner).await;
        if had_process && inner.state != VmState::Error {
            self.set_state(&mut inner, VmState::Stopped);
        }
        Ok(())
    }

    /// `GET /`: Firecracker's instance information.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] unless `Running` or `Paused`.
    pub async fn info(&self) -> Result<InstanceInfo> {
        self.with_client(Operation::Info, |client| async move {
            client.describe_instance().await
        })
        .await
    }

    /// Firecracker's version.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] unless `Running` or `Paused`.
    pub async fn version(&self) -> Result<String> {
        self.with_client(Operation::Version, |client| async move {
            Ok(client.version().await?.firecracker_version)
        })
        .await
    }

    /// Replaces the MMDS store.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] unless `Running` or `Paused`.
    pub async fn set_metadata(&self, data: &Value) -> Result<()> {
        self.with_client(Operation::SetMetadata, |client| async move {
            client.put_mmds(data).await
        })
        .await
    }

    /// JSON merge-patch of the MMDS store.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] unless `Running` or `Paused`.
    pub async fn patch_metadata(&self, patch: &Value) -> Result<()> {
        self.with_client(Operation::PatchMetadata, |client| async move {
            client.patch_mmds(patch).await
        })
        .await
    }

    /// The MMDS store.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] unless `Running` or `Paused`.
    pub async fn get_metadata(&self) -> Result<Value> {
        self.with_client(Operation::GetMetadata, |client| async move {
            client.get_mmds().await
        })
        .await
    }

    /// New backing file or rate limiter for a drive.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] unless `Running` or `Paused`; `INVALID_CONFIG` for a bad
    /// update; `API_ERROR` from Firecracker.
    pub async fn update_drive(&self, update: &DriveUpdate) -> Result<()> {
        self.with_client(Operation::UpdateDrive, |client| async move {
            client.patch_drive(&update.to_payload()?).await
        })
        .await
    }

    /// New rate limiters for a network interface.
    ///
    /// # Errors
    /// As [`update_drive`](Self::update_drive).
    pub async fn update_network_interface(&self, update: &NetworkInterfaceUpdate) -> Result<()> {
        self.with_client(Operation::UpdateNetworkInterface, |client| async move {
            client.patch_network_interface(&update.to_payload()?).await
        })
        .await
    }

    /// New balloon target and/or statistics interval.
    ///
    /// # Errors
    /// As [`update_drive`](Self::update_drive).
    pub async fn update_balloon(&self, update: &BalloonUpdate) -> Result<()> {
        let (_inner, client) = self.checked(Operation::UpdateBalloon).await?;
        for call in update.api_calls(&self.config)? {
            client
                .request_checked(call.method.clone(), &call.path, Some(&call.body))
                .await?;
        }
        Ok(())
    }

    /// Balloon statistics.
    ///
    /// # Errors
    /// As [`update_drive`](Self::update_drive).
    pub async fn balloon_stats(&self) -> Result<models::BalloonStats> {
        self.with_client(Operation::BalloonStats, |client| async move {
            client.get_balloon_stats().await
        })
        .await
    }

    /// Writes a snapshot of a paused VM: Firecracker's state and memory files, plus a sparse
    /// copy of every staged (private) drive, so clones can be restored from it later even
    /// after this VM is gone.
    ///
    /// # Errors
    /// [`ErrorCode::InvalidState`] unless `Paused`; [`ErrorCode::InvalidArgument`] for a Diff
    /// snapshot without dirty-page tracking or an existing snapshot directory;
    /// [`ErrorCode::SnapshotFailed`] otherwise. A failed snapshot leaves no directory behind.
    pub async fn create_snapshot(&self, options: &SnapshotOptions) -> Result<Snapshot> {
        let (inner, client) = self.checked(Operation::CreateSnapshot).await?;
        if options.kind == SnapshotKind::Diff && !self.config.machine_config.track_dirty_pages {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "a Diff snapshot needs machine_config.track_dirty_pages = true",
            ));
        }
        let effective = inner
            .effective
            .clone()
            .ok_or_else(|| Error::new(ErrorCode::Internal, "started VM without a config"))?;
        std::fs::create_dir_all(options.dir.parent().unwrap_or(Path::new("/")))
            .map_err(|e| Error::io(ErrorCode::SnapshotFailed, "cannot create", &options.dir, e))?;
        std::fs::create_dir(&options.dir).map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::AlreadyExists {
                ErrorCode::AlreadyExists
            } else {
                ErrorCode::SnapshotFailed
            };
            Error::io(code, "cannot create snapshot directory", &options.dir, e)
        })?;
        let result = async {
            let (state_path, mem_path) = Snapshot::file_paths(&options.dir);
            let runtime = inner.runtime.as_ref().ok_or_else(|| {
                Error::new(ErrorCode::Internal, "started VM without a runtime dir")
            })?;
            let placement = SnapshotPlacement::new(&self.options, runtime, &state_path, &mem_path)?;
            let created = client
                .create_snapshot(&models::SnapshotCreateParams {
                    mem_file_path: placement.fc_mem.clone(),
                    snapshot_path: placement.fc_state.clone(),
                    snapshot_type: Some(match options.kind {
                        SnapshotKind::Full => models::SnapshotType::Full,
                        SnapshotKind::Diff => models::SnapshotType::Diff,
                    }),
                })
                .await;
            match created {
                Ok(()) => placement.finish(&state_path, &mem_path)?,
                Err(e) => {
                    placement.abandon();
                    return Err(e);
                }
            }
            std::fs::create_dir(options.dir.join("drives")).map_err(|e| {
                Error::io(ErrorCode::SnapshotFailed, "cannot create", &options.dir, e)
            })?;
            let mut drives = Vec::new();
            for staged in &inner.staged {
                let file = options
                    .dir
                    .join("drives")
                    .join(format!("{}.img", staged.drive_id));
                stage_file(&staged.staged, &file, ErrorCode::SnapshotFailed)?;
                drives.push(SnapshotDrive {
                    drive_id: staged.drive_id.clone(),
                    file,
                });
            }
            let runtime = inner.runtime.as_ref().ok_or_else(|| {
                Error::new(ErrorCode::Internal, "started VM without a runtime dir")
            })?;
            let snapshot = Snapshot {
                dir: options.dir.clone(),
                state_path,
                mem_path,
                kind: options.kind,
                drives,
                source_vm: self.id.clone(),
                created_at: crate::unix_time(),
                config: self.config.clone(),
                effective_config: effective,
                view_dir: self.options.view_dir.clone(),
                source_runtime_dir: runtime.path().to_path_buf(),
            };
            snapshot.save()?;
            Ok(snapshot)
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&options.dir);
        }
        result
    }

    /// A VM restored from a snapshot by the [`Host`](crate::host::Host): already running or
    /// paused, with its process, client and runtime dir.
    pub(crate) fn restored(
        id: String,
        snapshot: &Snapshot,
        options: VmRuntimeOptions,
        parts: RestoredParts,
    ) -> Self {
        let state = if parts.resumed {
            VmState::Running
        } else {
            VmState::Paused
        };
        Self {
            id,
            config: snapshot.config.clone(),
            options,
            created_at: crate::unix_time(),
            inner: Mutex::new(Inner {
                state,
                runtime: Some(parts.runtime),
                process: Some(parts.process),
                client: Some(parts.client),
                effective: Some(parts.effective),
                staged: parts.staged,
                taps: parts.taps,
                last_error: None,
                detached: false,
            }),
            state: StdMutex::new(state),
        }
    }
}

impl MicroVm {
    /// What another process needs to [`attach`](Self::attach) to this VM later: the caller's
    /// config, the config Firecracker received, and the status (process identity, runtime
    /// dir, staged drives, TAPs). Store it next to a [`detach`](Self::detach)ed VM.
    pub async fn attach_record(&self) -> AttachRecord {
        let effective_config = self.effective_config().await;
        AttachRecord {
            config: self.config.clone(),
            effective_config,
            status: self.status().await,
        }
    }

    /// Re-attaches to a VM whose Firecracker another process started (a CLI that has exited,
    /// or an orchestrator that crashed): adopts the process by pid and start time, reopens its
    /// runtime dir and API socket, and asks Firecracker whether it is running or paused. The
    /// result is a normal `MicroVm`; drop it after [`detach`](Self::detach) to leave the VM
    /// running.
    ///
    /// # Errors
    /// [`ErrorCode::ProcessFailed`] when that exact process is gone (the caller should then
    /// clean up what the record names), [`ErrorCode::InvalidState`] when the record has no
    /// process or runtime dir, and the API codes when Firecracker does not answer.
    pub async fn attach(record: AttachRecord, options: VmRuntimeOptions) -> Result<Self> {
        let status = record.status;
        let (Some(identity), Some(dir)) = (status.process, status.runtime_dir.clone()) else {
            return Err(Error::new(
                ErrorCode::InvalidState,
                format!("VM {} has no running Firecracker to attach to", status.id),
            )
            .with_details(json!({ "state": status.state })));
        };
        let runtime = RuntimeDir::open(dir);
        let process = SupervisedProcess::adopt(identity, runtime.log_path())?;
        let client = FirecrackerClient::with_options(runtime.api_socket(), options.client);
        let info = client.describe_instance().await?;
        let state = match info.state {
            models::InstanceState::Paused => VmState::Paused,
            models::InstanceState::Running => VmState::Running,
            models::InstanceState::NotStarted => {
                return Err(Error::new(
                    ErrorCode::InvalidState,
                    format!(
                        "VM {} was never booted; only a booted VM can be attached",
                        status.id
                    ),
                )
                .with_details(json!({ "firecracker_state": info.state })));
            }
        };
        Ok(Self {
            id: status.id,
            config: record.config,
            options,
            created_at: status.created_at,
            inner: Mutex::new(Inner {
                state,
                runtime: Some(runtime),
                process: Some(process),
                client: Some(client),
                effective: record.effective_config,
                staged: status.staged_drives,
                taps: status.tap_devices,
                last_error: None,
                detached: false,
            }),
            state: StdMutex::new(state),
        })
    }
}

/// Everything needed to re-attach to a running VM from another process
/// ([`MicroVm::attach_record`], [`MicroVm::attach`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachRecord {
    /// The caller's configuration.
    pub config: VmConfig,
    /// The configuration Firecracker received (staged paths, sockets).
    pub effective_config: Option<VmConfig>,
    /// Process, runtime dir, staged drives, TAPs.
    pub status: VmStatus,
}

/// A path inside `runtime` as Firecracker sees it: through the view when one is used.
pub(crate) fn fc_path(view: Option<&Path>, runtime: &RuntimeDir, host_path: &Path) -> PathBuf {
    match (view, host_path.strip_prefix(runtime.path())) {
        (Some(view), Ok(rel)) => view.join(rel),
        _ => host_path.to_path_buf(),
    }
}

/// Spawns Firecracker for a VM: its own session, its log in the runtime dir, the view when
/// configured.
pub(crate) fn spawn_firecracker(
    options: &VmRuntimeOptions,
    runtime: &RuntimeDir,
    id: &str,
) -> Result<SupervisedProcess> {
    if options.jailer.is_some() {
        return jailer::spawn(options, runtime, id);
    }
    let view = options.view_dir.as_deref();
    let mut spec = ProcessSpec::new(&options.firecracker_bin, runtime.log_path())
        .arg("--api-sock")
        .arg(fc_path(view, runtime, &runtime.api_socket()))
        .arg("--id")
        .arg(crate::runtime::sanitize_vm_id(id)?);
    spec.args.extend(options.extra_args.iter().cloned());
    spec.env.extend(options.env.iter().cloned());
    // Relative paths Firecracker is given (and anything it writes by itself) stay in the VM's
    // own directory.
    spec.cwd = Some(runtime.path().to_path_buf());
    if let Some(view) = view {
        // The mount point is an empty directory; `Host::cleanup` removes it, so a host used
        // again afterwards makes it anew.
        std::fs::create_dir_all(view)
            .map_err(|e| Error::io(ErrorCode::ProcessFailed, "cannot create view", view, e))?;
        spec.bind_view = Some((runtime.path().to_path_buf(), view.to_path_buf()));
    }
    SupervisedProcess::spawn(&spec)
}

/// Waits for the API, failing early when Firecracker exits instead.
pub(crate) async fn wait_api(
    process: &mut SupervisedProcess,
    client: &FirecrackerClient,
    timeout: Duration,
) -> Result<InstanceInfo> {
    let started = std::time::Instant::now();
    let wait = async {
        // Woken by the socket's creation rather than a millisecond timer.
        crate::runtime::socket_wait::wait_for_path(client.socket_path(), timeout).await;
        client
            .wait_ready(timeout.saturating_sub(started.elapsed()))
            .await
    };
    tokio::pin!(wait);
    loop {
        tokio::select! {
            result = &mut wait => return result,
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                if let Some(status) = process.try_exit() {
                    return Err(Error::new(
                        ErrorCode::ProcessFailed,
                        format!("firecracker exited ({status}) before its API answered"),
                    ));
                }
            }
        }
    }
}

/// What a restore hands over to the new [`MicroVm`].
#[derive(Debug)]
pub(crate) struct RestoredParts {
    pub runtime: RuntimeDir,
    pub process: SupervisedProcess,
    pub client: FirecrackerClient,
    pub effective: VmConfig,
    pub staged: Vec<StagedDrive>,
    pub taps: Vec<String>,
    pub resumed: bool,
}

/// How [`MicroVm::stop`] ended Firecracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// It exited after Ctrl+Alt+Del (or had exited already).
    Graceful,
    /// It needed SIGTERM.
    Terminated,
    /// It needed SIGKILL.
    Killed,
    /// It had exited before `stop` was called.
    AlreadyExited,
}

impl Drop for MicroVm {
    fn drop(&mut self) {
        // Best effort, synchronous: never leave a process group or a runtime dir behind for a
        // VM nobody holds any more, unless it was detached on purpose.
        let inner = self.inner.get_mut();
        if inner.detached {
            return;
        }
        if let Some(p) = inner.process.as_mut()
            && p.is_running()
        {
            let _ = p.signal_group(rustix::process::Signal::KILL);
        }
        if let Some(runtime) = inner.runtime.take() {
            let _ = runtime.remove();
            let _ = jailer::remove_jail(&self.options, &self.id);
        }
    }
}

/// Shared handle type.
pub type VmHandle = Arc<MicroVm>;
