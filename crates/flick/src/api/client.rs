//! The HTTP/1.1-over-Unix-socket client for one Firecracker process.
//!
//! Two layers:
//! - raw [`FirecrackerClient::get`] / [`put`](FirecrackerClient::put) /
//!   [`patch`](FirecrackerClient::patch) return an [`ApiResponse`] whatever the status: a 400 is
//!   an answer, not an error, at this level;
//! - one typed method per operation of Firecracker's spec, which turns a non-2xx answer into
//!   [`ErrorCode::ApiError`] carrying the status and Firecracker's `fault_message`.
//!
//! Connections are kept alive and pooled by hyper. Every request runs under the request
//! timeout ([`ErrorCode::ApiTimeout`]); failing to connect or losing the connection is
//! [`ErrorCode::SocketRequestFailed`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_client_sockets::connector::UnixConnector;
use hyper_client_sockets::tokio::TokioBackend;
use hyper_client_sockets::uri::UnixUri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::models::{
    ActionType, Balloon, BalloonHintingStatus, BalloonStartCmd, BalloonStats, BalloonStatsUpdate,
    BalloonUpdate, BootSource, CpuConfig, Drive, EntropyDevice, FaultMessage, FirecrackerVersion,
    FullVmConfiguration, InstanceActionInfo, InstanceInfo, Logger, MachineConfiguration,
    MachineConfigurationUpdate, MemoryHotplugConfig, MemoryHotplugSizeUpdate, MemoryHotplugStatus,
    Metrics, MmdsConfig, NetworkInterface, PartialDrive, PartialNetworkInterface, PartialPmem,
    Pmem, SerialDevice, SnapshotCreateParams, SnapshotLoadParams, Vm, VmState, Vsock,
};
use crate::error::{Error, ErrorCode, Result};

/// Timeouts of a [`FirecrackerClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Upper bound for one request, connecting included.
    pub request_timeout: Duration,
    /// Upper bound for snapshot create/load, which write or map the whole guest memory.
    pub snapshot_timeout: Duration,
    /// How often [`FirecrackerClient::wait_ready`] polls.
    pub poll_interval: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            snapshot_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(1),
        }
    }
}

/// A raw answer: status and body, whatever the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// `true` for a 2xx status.
    pub ok: bool,
    /// HTTP status.
    pub status: u16,
    /// Response body (empty for 204).
    pub body: Bytes,
}

impl ApiResponse {
    /// The body as JSON (`Value::Null` when empty).
    ///
    /// # Errors
    /// [`ErrorCode::SocketRequestFailed`] when the body is not JSON.
    pub fn json(&self) -> Result<Value> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::new(
                ErrorCode::SocketRequestFailed,
                format!(
                    "Firecracker answered {} with a body that is not JSON",
                    self.status
                ),
            )
            .with_source(e)
        })
    }

    /// Firecracker's `fault_message`, when the body carries one.
    #[must_use]
    pub fn fault_message(&self) -> Option<String> {
        serde_json::from_slice::<FaultMessage>(&self.body)
            .ok()
            .map(|f| f.fault_message)
            .filter(|m| !m.is_empty())
    }
}

/// Client for one Firecracker API socket. Cheap to clone (clones share the connection pool).
#[derive(Clone)]
pub struct FirecrackerClient {
    socket_path: PathBuf,
    http: Client<UnixConnector<TokioBackend>, Full<Bytes>>,
    options: ClientOptions,
}

impl std::fmt::Debug for FirecrackerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirecrackerClient")
            .field("socket_path", &self.socket_path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl FirecrackerClient {
    /// A client for the API socket at `socket_path` with default timeouts.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self::with_options(socket_path, ClientOptions::default())
    }

    /// A client with explicit timeouts.
    pub fn with_options(socket_path: impl Into<PathBuf>, options: ClientOptions) -> Self {
        let http = Client::builder(TokioExecutor::new())
            // Firecracker serves one VM; a couple of idle connections is plenty.
            .pool_max_idle_per_host(4)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(UnixConnector::<TokioBackend>::new());
        Self {
            socket_path: socket_path.into(),
            http,
            options,
        }
    }

    /// The API socket path.
    #[must_use]
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The client's timeouts.
    #[must_use]
    pub fn options(&self) -> ClientOptions {
        self.options
    }

    /// Waits until the socket file exists and Firecracker answers `GET /`.
    ///
    /// # Errors
    /// [`ErrorCode::SocketTimeout`] when the socket file never appears within `timeout`;
    /// [`ErrorCode::ApiTimeout`] when it exists but the API never answers.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<InstanceInfo> {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            if self.socket_path.exists() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorCode::SocketTimeout,
                    format!(
                        "API socket {} did not appear within {timeout:?}",
                        self.socket_path.display()
                    ),
                )
                .with_details(
                    json!({ "socket": self.socket_path, "timeout_ms": timeout.as_millis() }),
                ));
            }
            tokio::time::sleep(self.options.poll_interval).await;
        }
        let mut last_error: Option<Error> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                let mut err = Error::new(
                    ErrorCode::ApiTimeout,
                    format!(
                        "Firecracker API on {} did not answer within {timeout:?}",
                        self.socket_path.display()
                    ),
                )
                .with_details(
                    json!({ "socket": self.socket_path, "timeout_ms": timeout.as_millis() }),
                );
                if let Some(last) = last_error {
                    err = err.with_source(last);
                }
                return Err(err);
            }
            let attempt = (deadline - now).min(Duration::from_millis(500));
            match self.send(Method::GET, "/", None, attempt).await {
                Ok(resp) if resp.ok => return decode(&Method::GET, "/", &resp),
                Ok(resp) => {
                    last_error = Some(api_error(&Method::GET, "/", &resp));
                }
                Err(e) => last_error = Some(e),
            }
            tokio::time::sleep(self.options.poll_interval).await;
        }
    }

    /// `GET path`, any status.
    ///
    /// # Errors
    /// [`ErrorCode::SocketRequestFailed`] or [`ErrorCode::ApiTimeout`].
    pub async fn get(&self, path: &str) -> Result<ApiResponse> {
        self.send(Method::GET, path, None, self.options.request_timeout)
            .await
    }

    /// `PUT path` with a JSON body, any status.
    ///
    /// # Errors
    /// [`ErrorCode::SocketRequestFailed`] or [`ErrorCode::ApiTimeout`].
    pub async fn put<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<ApiResponse> {
        let body = encode(path, body)?;
        self.send(Method::PUT, path, Some(body), self.options.request_timeout)
            .await
    }

    /// `PATCH path` with a JSON body, any status.
    ///
    /// # Errors
    /// [`ErrorCode::SocketRequestFailed`] or [`ErrorCode::ApiTimeout`].
    pub async fn patch<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<ApiResponse> {
        let body = encode(path, body)?;
        self.send(
            Method::PATCH,
            path,
            Some(body),
            self.options.request_timeout,
        )
        .await
    }

    /// Any method with an optional pre-encoded JSON body, any status.
    ///
    /// # Errors
    /// [`ErrorCode::SocketRequestFailed`] or [`ErrorCode::ApiTimeout`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<ApiResponse> {
        self.send(method, path, body, self.options.request_timeout)
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<ApiResponse> {
        let uri = hyper::Uri::unix(&self.socket_path, path).map_err(|e| {
            Error::new(
                ErrorCode::SocketRequestFailed,
                format!("cannot build a request URI for {path}"),
            )
            .with_source(e)
        })?;
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(http::header::ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| {
                Error::new(ErrorCode::Internal, format!("cannot build {method} {path}"))
                    .with_source(e)
            })?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                let what = if e.is_connect() {
                    format!("cannot connect to {}", self.socket_path.display())
                } else {
                    format!("{method} {path} on {} failed", self.socket_path.display())
                };
                Error::new(ErrorCode::SocketRequestFailed, what)
                    .with_details(json!({ "socket": self.socket_path, "method": method.as_str(), "path": path }))
                    .with_source(e)
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorCode::SocketRequestFailed,
                        format!("reading the answer to {method} {path} failed"),
                    )
                    .with_source(e)
                })?
                .to_bytes();
            Ok(ApiResponse {
                ok: status.is_success(),
                status: status.as_u16(),
                body,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorCode::ApiTimeout,
                format!("{method} {path} got no answer within {timeout:?}"),
            )
            .with_details(json!({ "socket": self.socket_path, "method": method.as_str(), "path": path, "timeout_ms": timeout.as_millis() }))),
        }
    }

    /// Any method and path with an optional JSON body, with a non-2xx answer turned into
    /// [`ErrorCode::ApiError`] exactly as the typed methods do (for request sequences built
    /// elsewhere, such as [`crate::config::FirecrackerPayloads::requests`]).
    ///
    /// # Errors
    /// [`ErrorCode::ApiError`], [`ErrorCode::SocketRequestFailed`], [`ErrorCode::ApiTimeout`].
    pub async fn request_checked(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse> {
        self.call(method, path, body, self.options.request_timeout)
            .await
    }

    async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<ApiResponse> {
        let encoded = body.map(|b| encode(path, b)).transpose()?;
        let resp = self.send(method.clone(), path, encoded, timeout).await?;
        if resp.ok {
            Ok(resp)
        } else {
            Err(api_error(&method, path, &resp))
        }
    }

    async fn typed_get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .call::<()>(Method::GET, path, None, self.options.request_timeout)
            .await?;
        decode(&Method::GET, path, &resp)
    }

    async fn typed_put<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<()> {
        self.call(Method::PUT, path, Some(body), self.options.request_timeout)
            .await
            .map(drop)
    }

    async fn typed_patch<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<()> {
        self.call(
            Method::PATCH,
            path,
            Some(body),
            self.options.request_timeout,
        )
        .await
        .map(drop)
    }

    // --- Typed methods: one per operation of Firecracker v1.16.1's spec -----------------------

    /// `GET /`: instance information.
    ///
    /// # Errors
    /// [`ErrorCode::ApiError`] on a non-2xx answer; transport errors as for [`Self::get`].
    pub async fn describe_instance(&self) -> Result<InstanceInfo> {
        self.typed_get("/").await
    }

    /// `GET /version`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn version(&self) -> Result<FirecrackerVersion> {
        self.typed_get("/version").await
    }

    /// `PUT /actions` with any action.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn action(&self, action_type: ActionType) -> Result<()> {
        self.typed_put("/actions", &InstanceActionInfo { action_type })
            .await
    }

    /// `PUT /actions` `InstanceStart`: boots the microVM.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn instance_start(&self) -> Result<()> {
        self.action(ActionType::InstanceStart).await
    }

    /// `PUT /actions` `SendCtrlAltDel`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn send_ctrl_alt_del(&self) -> Result<()> {
        self.action(ActionType::SendCtrlAltDel).await
    }

    /// `PUT /actions` `FlushMetrics`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn flush_metrics(&self) -> Result<()> {
        self.action(ActionType::FlushMetrics).await
    }

    /// `GET /balloon`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn get_balloon(&self) -> Result<Balloon> {
        self.typed_get("/balloon").await
    }

    /// `PUT /balloon` (pre-boot).
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_balloon(&self, balloon: &Balloon) -> Result<()> {
        self.typed_put("/balloon", balloon).await
    }

    /// `PATCH /balloon`: new target size.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn patch_balloon(&self, update: &BalloonUpdate) -> Result<()> {
        self.typed_patch("/balloon", update).await
    }

    /// `GET /balloon/statistics`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn get_balloon_stats(&self) -> Result<BalloonStats> {
        self.typed_get("/balloon/statistics").await
    }

    /// `PATCH /balloon/statistics`: new polling interval.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn patch_balloon_stats(&self, update: &BalloonStatsUpdate) -> Result<()> {
        self.typed_patch("/balloon/statistics", update).await
    }

    /// `PATCH /balloon/hinting/start`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn start_balloon_hinting(&self, cmd: &BalloonStartCmd) -> Result<()> {
        self.typed_patch("/balloon/hinting/start", cmd).await
    }

    /// `GET /balloon/hinting/status`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn get_balloon_hinting_status(&self) -> Result<BalloonHintingStatus> {
        self.typed_get("/balloon/hinting/status").await
    }

    /// `PATCH /balloon/hinting/stop` (no body).
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn stop_balloon_hinting(&self) -> Result<()> {
        self.call::<()>(
            Method::PATCH,
            "/balloon/hinting/stop",
            None,
            self.options.request_timeout,
        )
        .await
        .map(drop)
    }

    /// `PUT /boot-source` (pre-boot).
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_boot_source(&self, boot: &BootSource) -> Result<()> {
        self.typed_put("/boot-source", boot).await
    }

    /// `PUT /cpu-config` (pre-boot).
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_cpu_config(&self, config: &CpuConfig) -> Result<()> {
        self.typed_put("/cpu-config", config).await
    }

    /// `PUT /drives/{drive_id}` (pre-boot).
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_drive(&self, drive: &Drive) -> Result<()> {
        self.typed_put(&resource_path("/drives", &drive.drive_id)?, drive)
            .await
    }

    /// `PATCH /drives/{drive_id}` (post-boot): new backing file or rate limiter.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn patch_drive(&self, drive: &PartialDrive) -> Result<()> {
        self.typed_patch(&resource_path("/drives", &drive.drive_id)?, drive)
            .await
    }

    /// `PUT /pmem/{id}` (pre-boot).
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_pmem(&self, pmem: &Pmem) -> Result<()> {
        self.typed_put(&resource_path("/pmem", &pmem.id)?, pmem)
            .await
    }

    /// `PATCH /pmem/{id}` (post-boot).
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn patch_pmem(&self, pmem: &PartialPmem) -> Result<()> {
        self.typed_patch(&resource_path("/pmem", &pmem.id)?, pmem)
            .await
    }

    /// `PUT /logger`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_logger(&self, logger: &Logger) -> Result<()> {
        self.typed_put("/logger", logger).await
    }

    /// `GET /machine-config`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn get_machine_config(&self) -> Result<MachineConfiguration> {
        self.typed_get("/machine-config").await
    }

    /// `PUT /machine-config` (pre-boot).
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_machine_config(&self, config: &MachineConfiguration) -> Result<()> {
        self.typed_put("/machine-config", config).await
    }

    /// `PATCH /machine-config` (pre-boot): only the given fields change.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn patch_machine_config(&self, update: &MachineConfigurationUpdate) -> Result<()> {
        self.typed_patch("/machine-config", update).await
    }

    /// `PUT /metrics`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_metrics(&self, metrics: &Metrics) -> Result<()> {
        self.typed_put("/metrics", metrics).await
    }

    /// `PUT /mmds`: replaces the whole metadata store.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_mmds(&self, data: &Value) -> Result<()> {
        self.typed_put("/mmds", data).await
    }

    /// `PATCH /mmds`: JSON merge-patch of the metadata store.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn patch_mmds(&self, patch: &Value) -> Result<()> {
        self.typed_patch("/mmds", patch).await
    }

    /// `GET /mmds`: the metadata store.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn get_mmds(&self) -> Result<Value> {
        self.typed_get("/mmds").await
    }

    /// `PUT /mmds/config` (pre-boot).
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_mmds_config(&self, config: &MmdsConfig) -> Result<()> {
        self.typed_put("/mmds/config", config).await
    }

    /// `PUT /entropy` (pre-boot).
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_entropy(&self, device: &EntropyDevice) -> Result<()> {
        self.typed_put("/entropy", device).await
    }

    /// `PUT /serial`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_serial(&self, device: &SerialDevice) -> Result<()> {
        self.typed_put("/serial", device).await
    }

    /// `PUT /hotplug/memory` (pre-boot).
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_memory_hotplug(&self, config: &MemoryHotplugConfig) -> Result<()> {
        self.typed_put("/hotplug/memory", config).await
    }

    /// `PATCH /hotplug/memory`: new requested size.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn patch_memory_hotplug(&self, update: &MemoryHotplugSizeUpdate) -> Result<()> {
        self.typed_patch("/hotplug/memory", update).await
    }

    /// `GET /hotplug/memory`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn get_memory_hotplug(&self) -> Result<MemoryHotplugStatus> {
        self.typed_get("/hotplug/memory").await
    }

    /// `PUT /network-interfaces/{iface_id}` (pre-boot).
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_network_interface(&self, iface: &NetworkInterface) -> Result<()> {
        self.typed_put(
            &resource_path("/network-interfaces", &iface.iface_id)?,
            iface,
        )
        .await
    }

    /// `PATCH /network-interfaces/{iface_id}` (post-boot): new rate limiters.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn patch_network_interface(&self, iface: &PartialNetworkInterface) -> Result<()> {
        self.typed_patch(
            &resource_path("/network-interfaces", &iface.iface_id)?,
            iface,
        )
        .await
    }

    /// `PUT /snapshot/create` (paused VMs), with the longer snapshot timeout.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn create_snapshot(&self, params: &SnapshotCreateParams) -> Result<()> {
        self.call(
            Method::PUT,
            "/snapshot/create",
            Some(params),
            self.options.snapshot_timeout,
        )
        .await
        .map(drop)
    }

    /// `PUT /snapshot/load` (fresh process only), with the longer snapshot timeout.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn load_snapshot(&self, params: &SnapshotLoadParams) -> Result<()> {
        self.call(
            Method::PUT,
            "/snapshot/load",
            Some(params),
            self.options.snapshot_timeout,
        )
        .await
        .map(drop)
    }

    /// `PATCH /vm` with a desired state.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn patch_vm(&self, state: VmState) -> Result<()> {
        self.typed_patch("/vm", &Vm { state }).await
    }

    /// `PATCH /vm` `Paused`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn pause(&self) -> Result<()> {
        self.patch_vm(VmState::Paused).await
    }

    /// `PATCH /vm` `Resumed`.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn resume(&self) -> Result<()> {
        self.patch_vm(VmState::Resumed).await
    }

    /// `GET /vm/config`: every configured resource.
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn get_vm_config(&self) -> Result<FullVmConfiguration> {
        self.typed_get("/vm/config").await
    }

    /// `PUT /vsock` (pre-boot).
    ///
    /// # Errors
    /// As [`Self::describe_instance`].
    pub async fn put_vsock(&self, vsock: &Vsock) -> Result<()> {
        self.typed_put("/vsock", vsock).await
    }
}

/// Every operation of Firecracker v1.16.1's spec, with the typed method that performs it.
///
/// A test checks this table against the spec and calls every method against the Firecracker
/// double, so a new endpoint without a method fails the build.
pub const OPERATIONS: &[(&str, &str, &str)] = &[
    ("GET", "/", "describe_instance"),
    ("GET", "/version", "version"),
    ("PUT", "/actions", "action"),
    ("GET", "/balloon", "get_balloon"),
    ("PUT", "/balloon", "put_balloon"),
    ("PATCH", "/balloon", "patch_balloon"),
    ("GET", "/balloon/statistics", "get_balloon_stats"),
    ("PATCH", "/balloon/statistics", "patch_balloon_stats"),
    ("PATCH", "/balloon/hinting/start", "start_balloon_hinting"),
    (
        "GET",
        "/balloon/hinting/status",
        "get_balloon_hinting_status",
    ),
    ("PATCH", "/balloon/hinting/stop", "stop_balloon_hinting"),
    ("PUT", "/boot-source", "put_boot_source"),
    ("PUT", "/cpu-config", "put_cpu_config"),
    ("PUT", "/drives/{drive_id}", "put_drive"),
    ("PATCH", "/drives/{drive_id}", "patch_drive"),
    ("PUT", "/pmem/{id}", "put_pmem"),
    ("PATCH", "/pmem/{id}", "patch_pmem"),
    ("PUT", "/logger", "put_logger"),
    ("GET", "/machine-config", "get_machine_config"),
    ("PUT", "/machine-config", "put_machine_config"),
    ("PATCH", "/machine-config", "patch_machine_config"),
    ("PUT", "/metrics", "put_metrics"),
    ("PUT", "/mmds", "put_mmds"),
    ("PATCH", "/mmds", "patch_mmds"),
    ("GET", "/mmds", "get_mmds"),
    ("PUT", "/mmds/config", "put_mmds_config"),
    ("PUT", "/entropy", "put_entropy"),
    ("PUT", "/serial", "put_serial"),
    ("PUT", "/hotplug/memory", "put_memory_hotplug"),
    ("PATCH", "/hotplug/memory", "patch_memory_hotplug"),
    ("GET", "/hotplug/memory", "get_memory_hotplug"),
    (
        "PUT",
        "/network-interfaces/{iface_id}",
        "put_network_interface",
    ),
    (
        "PATCH",
        "/network-interfaces/{iface_id}",
        "patch_network_interface",
    ),
    ("PUT", "/snapshot/create", "create_snapshot"),
    ("PUT", "/snapshot/load", "load_snapshot"),
    ("PATCH", "/vm", "patch_vm"),
    ("GET", "/vm/config", "get_vm_config"),
    ("PUT", "/vsock", "put_vsock"),
];

fn encode<B: Serialize + ?Sized>(path: &str, body: &B) -> Result<Bytes> {
    serde_json::to_vec(body).map(Bytes::from).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("cannot encode the body for {path}"),
        )
        .with_source(e)
    })
}

fn decode<T: DeserializeOwned>(method: &Method, path: &str, resp: &ApiResponse) -> Result<T> {
    serde_json::from_slice(&resp.body).map_err(|e| {
        Error::new(
            ErrorCode::SocketRequestFailed,
            format!("unexpected answer to {method} {path}"),
        )
        .with_details(json!({ "status": resp.status, "body": String::from_utf8_lossy(&resp.body) }))
        .with_source(e)
    })
}

fn api_error(method: &Method, path: &str, resp: &ApiResponse) -> Error {
    let fault = resp.fault_message();
    let reason = StatusCode::from_u16(resp.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let message = match &fault {
        Some(fault) => format!("{method} {path} answered {}: {fault}", resp.status),
        None => format!("{method} {path} answered {} {reason}", resp.status),
    };
    Error::new(ErrorCode::ApiError, message)
        .with_status(resp.status)
        .with_details(json!({
            "method": method.as_str(),
            "path": path,
            "status": resp.status,
            "fault_message": fault,
        }))
}

/// `/drives` + `rootfs` → `/drives/rootfs`, refusing ids that would change the path.
fn resource_path(prefix: &str, id: &str) -> Result<String> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        || id == "."
        || id == ".."
    {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("resource id {id:?} cannot be used in an API path"),
        ));
    }
    Ok(format!("{prefix}/{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_paths_refuse_path_changing_ids() {
        assert_eq!(
            resource_path("/drives", "rootfs").unwrap(),
            "/drives/rootfs"
        );
        for bad in ["", "..", "a/b", "a b", "a?x", "é"] {
            let err = resource_path("/drives", bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn api_errors_carry_status_and_fault_message() {
        let resp = ApiResponse {
            ok: false,
            status: 400,
            body: Bytes::from_static(
                br#"{"fault_message":"The requested operation is not supported after starting the microVM."}"#,
            ),
        };
        let err = api_error(&Method::PUT, "/machine-config", &resp);
        assert_eq!(err.code(), ErrorCode::ApiError);
        assert_eq!(err.status(), Some(400));
        assert_eq!(
            err.details().unwrap()["fault_message"],
            "The requested operation is not supported after starting the microVM."
        );
        assert!(err.message().contains("PUT /machine-config answered 400"));

        let resp = ApiResponse {
            ok: false,
            status: 500,
            body: Bytes::new(),
        };
        let err = api_error(&Method::GET, "/", &resp);
        assert_eq!(err.details().unwrap()["fault_message"], Value::Null);
        assert!(err.message().ends_with("500 Internal Server Error"));
    }

    #[test]
    fn operations_table_has_no_duplicates() {
        let mut seen = std::collections::BTreeSet::new();
        for (method, path, _) in OPERATIONS {
            assert!(seen.insert((method, path)), "{method} {path} listed twice");
        }
    }

    #[tokio::test]
    async fn wait_ready_reports_socket_timeout_when_no_socket_appears() {
        let dir = tempfile::tempdir().unwrap();
        let client = FirecrackerClient::new(dir.path().join("never.sock"));
        let err = client
            .wait_ready(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::SocketTimeout);
    }

    #[tokio::test]
    async fn wait_ready_reports_api_timeout_when_nothing_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        // A listener that accepts nothing: the socket exists, the API never answers.
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let client = FirecrackerClient::new(&path);
        let err = client
            .wait_ready(Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::ApiTimeout);
    }

    #[tokio::test]
    async fn connecting_to_a_dead_socket_is_socket_request_failed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let client = FirecrackerClient::new(&path);
        let err = client.get("/").await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::SocketRequestFailed);
        assert!(err.chain().contains("cannot connect"), "{}", err.chain());
    }
}
