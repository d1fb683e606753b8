//! VM operations with write-ahead records: every transition is saved (with this process as
//! `owner`) before its side effects and again after them, so that a crash at any point leaves
//! a record the next command can finish or undo ([`crate::reconcile`]).
//!
//! `FLICK_CRASH_AT=<point>` makes the process SIGKILL itself at that named point (fault
//! injection for the crash tests; the points are listed in [`CRASH_POINTS`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use flick::config::{Drive, NetworkInterface, Serial, VmConfig, Vsock};
use flick::image::initrd::{self, GuestBootOptions};
use flick::net::{EgressPolicy, VmRequest};
use flick::store::{RecordState, StoreLock, VmRecord, current_process};
use flick::vm::{SnapshotOptions, StopOutcome};
use flick::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ctx::{Ctx, LOCK_WAIT};

/// Every named crash point, in the order a create → stop → rm passes them.
pub const CRASH_POINTS: &[&str] = &[
    "create:before-record",
    "create:record-saved",
    "create:files-made",
    "create:network-added",
    "create:network-saved",
    "create:created",
    "start:locked",
    "start:record-starting",
    "start:vm-started",
    "start:record-running",
    "stop:locked",
    "stop:record-stopping",
    "stop:vm-stopped",
    "stop:cleaned-up",
    "stop:record-stopped",
    "rm:locked",
    "rm:record-removing",
    "rm:network-removed",
    "rm:files-removed",
    "rm:record-deleted",
];

/// SIGKILLs this process when `FLICK_CRASH_AT` names `point`.
pub fn crash_point(point: &str) {
    if std::env::var("FLICK_CRASH_AT").is_ok_and(|p| p == point) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}

/// The guest vsock port of the agent.
pub const AGENT_PORT: u32 = flick_proto::DEFAULT_VSOCK_PORT;

/// How a sandbox is made, as the user asked (kept in the record's `spec`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateSpec {
    /// vCPUs.
    pub cpus: u8,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Writable scratch disk in MiB (`None`: none).
    pub disk_mib: Option<u64>,
    /// Runtime name.
    pub runtime: String,
    /// OCI image reference, when made from an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The kernel.
    pub kernel: PathBuf,
    /// The root filesystem.
    pub rootfs: PathBuf,
    /// Whether the root filesystem is read-only (squashfs + guest overlay).
    pub rootfs_read_only: bool,
    /// Networking, `None` without a network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<EgressPolicy>,
    /// Default command of the image (`flick run` without a command).
    #[serde(default)]
    pub command: Vec<String>,
    /// Default environment of the image.
    #[serde(default)]
    pub env: Vec<String>,
    /// Default working directory of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Default user of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run Firecracker through the jailer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub jailer: bool,
    /// Host ports forwarded to the guest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<flick::net::publish::Publish>,
}

impl CreateSpec {
    /// The spec stored in a record.
    pub fn of(record: &VmRecord) -> anyhow::Result<Self> {
        Ok(serde_json::from_value(record.spec.clone())?)
    }
}

/// A fresh VM id: 12 hex digits.
pub fn new_id() -> anyhow::Result<String> {
    let token = initrd::generate_token()?;
    Ok(token[..12].to_string())
}

/// The agent token for a new VM (`FLICK_AGENT_TOKEN` pins it, for agents run on the host).
pub fn new_token() -> anyhow::Result<String> {
    match std::env::var("FLICK_AGENT_TOKEN") {
        Ok(t) if !t.is_empty() => Ok(t),
        _ => Ok(initrd::generate_token()?),
    }
}

fn console_log(ctx: &Ctx, id: &str) -> PathBuf {
    ctx.store.files_dir(id).join("console.log")
}

/// Where the serial console of a VM is written (kept until `rm`).
pub fn console_path(ctx: &Ctx, id: &str) -> PathBuf {
    console_log(ctx, id)
}

fn lock(ctx: &Ctx, id: &str) -> anyhow::Result<StoreLock> {
    Ok(ctx.store.lock_vm(id, LOCK_WAIT)?)
}

/// Creates a VM record with its files and network; starts it when `start`.
pub async fn create(
    ctx: &Ctx,
    name: Option<String>,
    spec: CreateSpec,
    start_it: bool,
) -> anyhow::Result<VmRecord> {
    let id = new_id()?;
    let name = name.unwrap_or_else(|| format!("vm-{}", &id[..6]));
    validate_name(&name)?;
    crash_point("create:before-record");
    let mut record = VmRecord::new(&id, &name);
    record.spec = serde_json::to_value(&spec)?;
    record.agent_token = Some(new_token()?);
    claim(ctx, &mut record)?;
    let _lock = lock(ctx, &id)?;
    crash_point("create:record-saved");
    match create_steps(ctx, &mut record, &spec).await {
        Ok(()) => {}
        Err(e) => {
            undo_create(ctx, &record).await;
            return Err(e);
        }
    }
    drop(_lock);
    if start_it {
        return start(ctx, &id).await;
    }
    Ok(record)
}

/// Saves a new record (state `creating`, owned by this process) if its name is free; the
/// global lock makes the check and the write one step for concurrent CLIs.
fn claim(ctx: &Ctx, record: &mut VmRecord) -> anyhow::Result<()> {
    let _global = ctx.store.lock_global(LOCK_WAIT)?;
    if ctx.store.list()?.iter().any(|r| r.name == record.name) {
        return Err(Error::new(
            ErrorCode::AlreadyExists,
            format!("a VM named {:?} exists already", record.name),
        )
        .with_details(json!({ "name": record.name }))
        .into());
    }
    ctx.store.save(record)?;
    Ok(())
}

fn validate_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("invalid VM name {name:?}: use 1-64 letters, digits, '-', '_' or '.'"),
        )
        .into())
    }
}

async fn create_steps(ctx: &Ctx, record: &mut VmRecord, spec: &CreateSpec) -> anyhow::Result<()> {
    let id = record.id.clone();
    let files = ctx.store.files_dir(&id);
    std::fs::create_dir_all(&files)?;
    let token = record.agent_token.clone().unwrap_or_default();
    let initrd = initrd::build(
        &initrd::locate_agent_binary()?,
        &ctx.data_dir().join("cache"),
    )?;
    let mut boot = GuestBootOptions::new(&token);
    boot.hostname = Some(record.name.replace(['_', '.'], "-"));
    let mut config = VmConfig::with_kernel(&spec.kernel)
        .with_initrd(&initrd.path)
        .with_vcpus(spec.cpus)
        .with_memory_mib(spec.memory_mib)
        .with_vsock(Vsock::new(3));
    // A jailed Firecracker can only write inside its jail: its console stays there.
    if !spec.jailer {
        config = config.with_serial(Serial {
            serial_out_path: Some(console_log(ctx, &id)),
            rate_limiter: None,
        });
    }
    let mut root = Drive::root("rootfs", &spec.rootfs);
    root.is_read_only = spec.rootfs_read_only;
    config = config.with_drive(root);
    if let Some(mib) = spec.disk_mib {
        let disk = files.join("scratch.ext4");
        flick::image::rootfs::create_blank_ext4(&disk, mib)?;
        let mut d = Drive::new("scratch", &disk);
        d.ephemeral = Some(false);
        config = config.with_drive(d);
    }
    crash_point("create:files-made");
    let rootfs_type = if spec.rootfs_read_only {
        flick::image::RootfsType::Squashfs
    } else {
        flick::image::RootfsType::Ext4
    };
    let mut boot_args = format!("{} root=/dev/vda", rootfs_type.default_boot_args());
    if let Some(policy) = &spec.network {
        let (iface, vm_net) = add_network(ctx, &id, policy).await?;
        crash_point("create:network-added");
        boot_args.push(' ');
        boot_args.push_str(&iface.boot_arg());
        let mut nic = NetworkInterface::new("eth0");
        nic.host_dev_name = Some(iface.host_device.clone());
        nic.guest_mac = Some(iface.lease.mac.clone());
        config = config.with_network_interface(nic);
        record.network = vm_net;
        ctx.store.save(record)?;
        crash_point("create:network-saved");
        if !spec.publish.is_empty() {
            sync_published(ctx, Some(record)).await?;
        }
    }
    boot_args.push(' ');
    boot_args.push_str(&boot.boot_args()?);
    config = config.with_boot_args(boot_args);
    config.validate()?;
    record.config = Some(config);
    record.state = RecordState::Created;
    record.owner = None;
    ctx.store.save(record)?;
    crash_point("create:created");
    Ok(())
}

/// Removes whatever a create made (best effort), then the record.
async fn undo_create(ctx: &Ctx, record: &VmRecord) {
    let id = record.id.clone();
    let _ = remove_network(ctx, &id).await;
    let _ = ctx.store.delete(&id);
}

/// Plugs VM `id`'s `eth0` in with `policy`: its interface, and its whole network entry as the
/// record keeps it.
async fn add_network(
    ctx: &Ctx,
    id: &str,
    policy: &EgressPolicy,
) -> anyhow::Result<(flick::net::VmInterface, Option<flick::net::host::VmNetwork>)> {
    let request = VmRequest {
        vm_id: id.to_string(),
        iface_id: "eth0".into(),
        host_device: None,
        policy: Some(policy.clone()),
    };
    ctx.with_network(async |net| {
        let iface = net.add_vm(request).await?;
        let vm_net = net.state().vms.get(id).cloned();
        Ok((iface, vm_net))
    })
    .await
}

/// Removes the VM's network (a no-op when it has none).
pub async fn remove_network(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    let in_state = ctx.load_network()?.is_some_and(|s| s.vms.contains_key(id));
    if in_state {
        let id = id.to_string();
        ctx.with_network(async |net| net.remove_vm(&id).await)
            .await?;
    }
    ctx.release_network_if_unused().await?;
    Ok(())
}

/// Starts a created or stopped VM.
pub async fn start(ctx: &Ctx, key: &str) -> anyhow::Result<VmRecord> {
    let id = ctx.store.resolve(key)?.id;
    let _lock = lock(ctx, &id)?;
    crash_point("start:locked");
    let mut record = crate::reconcile::reconcile_locked(ctx, &id)
        .await?
        .ok_or_else(|| not_found(key))?;
    match record.state {
        RecordState::Created | RecordState::Stopped | RecordState::Crashed | RecordState::Error => {
        }
        RecordState::Running | RecordState::Paused => return Ok(record),
        other => return Err(invalid_state(&record, other, "start").into()),
    }
    let config = record
        .config
        .clone()
        .ok_or_else(|| Error::new(ErrorCode::Internal, "the record has no VM config"))?;
    record.state = RecordState::Starting;
    record.owner = current_process();
    record.last_error = None;
    ctx.store.save(&mut record)?;
    crash_point("start:record-starting");
    let host = ctx.host_for(&record)?;
    let result = async {
        let vm = host.create_vm(&id, config).await?;
        vm.start().await?;
        Ok::<_, Error>(vm)
    }
    .await;
    let vm = match result {
        Ok(vm) => vm,
        Err(e) => {
            record.state = RecordState::Error;
            record.owner = None;
            record.attach = None;
            record.last_error = Some(e.to_json());
            ctx.store.save(&mut record)?;
            return Err(e.into());
        }
    };
    vm.detach().await;
    crash_point("start:vm-started");
    record.attach = Some(vm.attach_record().await);
    record.state = RecordState::Running;
    record.owner = None;
    ctx.store.save(&mut record)?;
    crash_point("start:record-running");
    Ok(record)
}

fn not_found(key: &str) -> Error {
    Error::new(
        ErrorCode::NotFound,
        format!("no VM named or with id {key:?}"),
    )
}

/// `INVALID_STATE` for an operation a recorded state does not allow.
pub fn invalid_state(record: &VmRecord, state: RecordState, op: &str) -> Error {
    Error::new(
        ErrorCode::InvalidState,
        format!("cannot {op} VM {}: it is {state}", record.name),
    )
    .with_details(json!({ "vm": record.id, "state": state, "operation": op }))
}

/// Stops a running or paused VM: Ctrl+Alt+Del, then SIGTERM and SIGKILL after `grace`.
pub async fn stop(
    ctx: &Ctx,
    key: &str,
    grace: Duration,
) -> anyhow::Result<(VmRecord, Option<StopOutcome>)> {
    let id = ctx.store.resolve(key)?.id;
    let _lock = lock(ctx, &id)?;
    crash_point("stop:locked");
    let mut record = crate::reconcile::reconcile_locked(ctx, &id)
        .await?
        .ok_or_else(|| not_found(key))?;
    if !record.state.expects_process() {
        return Ok((record, None));
    }
    record.state = RecordState::Stopping;
    record.owner = current_process();
    ctx.store.save(&mut record)?;
    crash_point("stop:record-stopping");
    let outcome = stop_process(ctx, &record, grace).await?;
    record.state = RecordState::Stopped;
    record.owner = None;
    record.attach = None;
    ctx.store.save(&mut record)?;
    crash_point("stop:record-stopped");
    Ok((record, outcome))
}

/// Ends the recorded Firecracker (attached through the API when it answers, else by signals)
/// and removes its runtime dir.
pub async fn stop_process(
    ctx: &Ctx,
    record: &VmRecord,
    grace: Duration,
) -> anyhow::Result<Option<StopOutcome>> {
    let Some(attach) = record.attach.clone() else {
        crate::reconcile::kill_marked(ctx, &record.id).await;
        crate::reconcile::remove_runtime_dir(ctx, &record.id);
        return Ok(None);
    };
    let host = ctx.host_for(record)?;
    let outcome = match host.attach_vm(attach).await {
        Ok(vm) => {
            let outcome = vm.stop_with_grace(grace).await.ok();
            crash_point("stop:vm-stopped");
            vm.cleanup().await?;
            outcome
        }
        Err(_) => None,
    };
    crash_point("stop:cleaned-up");
    crate::reconcile::kill_marked(ctx, &record.id).await;
    crate::reconcile::remove_runtime_dir(ctx, &record.id);
    Ok(outcome)
}

/// Removes a VM: stops it first only when `force`.
pub async fn remove(ctx: &Ctx, key: &str, force: bool) -> anyhow::Result<VmRecord> {
    let id = ctx.store.resolve(key)?.id;
    let _lock = lock(ctx, &id)?;
    crash_point("rm:locked");
    let Some(mut record) = crate::reconcile::reconcile_locked(ctx, &id).await? else {
        return Err(not_found(key).into());
    };
    if record.state.expects_process() && !force {
        return Err(Error::new(
            ErrorCode::InvalidState,
            format!(
                "VM {} is {}: stop it first or use --force",
                record.name, record.state
            ),
        )
        .with_details(json!({ "vm": record.id, "state": record.state }))
        .into());
    }
    record.state = RecordState::Removing;
    record.owner = current_process();
    ctx.store.save(&mut record)?;
    crash_point("rm:record-removing");
    finish_remove(ctx, &record).await?;
    Ok(record)
}

/// The rest of a removal (also used to finish an interrupted one).
pub async fn finish_remove(ctx: &Ctx, record: &VmRecord) -> anyhow::Result<()> {
    stop_process(ctx, record, Duration::from_secs(2)).await?;
    if CreateSpec::of(record).is_ok_and(|s| !s.publish.is_empty()) {
        // The record is still there: leave it out explicitly.
        sync_published_except(ctx, &record.id).await?;
    }
    remove_network(ctx, &record.id).await?;
    crash_point("rm:network-removed");
    let files = ctx.store.files_dir(&record.id);
    if files.exists() {
        std::fs::remove_dir_all(&files)?;
    }
    crash_point("rm:files-removed");
    ctx.store.delete(&record.id)?;
    crash_point("rm:record-deleted");
    Ok(())
}

/// The directory holding named snapshots.
pub fn snapshots_dir(ctx: &Ctx) -> PathBuf {
    ctx.data_dir().join("snapshots")
}

/// What flick keeps beside a snapshot to make VMs from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Snapshot name.
    pub name: String,
    /// The VM it was taken from.
    pub source_id: String,
    /// Its name.
    pub source_name: String,
    /// Its creation spec.
    pub spec: serde_json::Value,
    /// The agent token inside the snapshot's memory.
    pub agent_token: Option<String>,
    /// When it was taken.
    pub created_at: u64,
}

/// Pauses, snapshots and resumes a VM.
pub async fn snapshot(ctx: &Ctx, key: &str, name: &str) -> anyhow::Result<SnapshotMeta> {
    validate_name(name)?;
    let id = ctx.store.resolve(key)?.id;
    let _lock = lock(ctx, &id)?;
    let record = crate::reconcile::reconcile_locked(ctx, &id)
        .await?
        .ok_or_else(|| not_found(key))?;
    let attach = match (&record.attach, record.state.expects_process()) {
        (Some(a), true) => a.clone(),
        _ => return Err(invalid_state(&record, record.state, "snapshot").into()),
    };
    let dir = snapshots_dir(ctx).join(name);
    if dir.exists() {
        return Err(Error::new(
            ErrorCode::AlreadyExists,
            format!("a snapshot named {name:?} exists already"),
        )
        .into());
    }
    std::fs::create_dir_all(snapshots_dir(ctx))?;
    let host = ctx.host_for(&record)?;
    let vm = host.attach_vm(attach).await?;
    vm.detach().await;
    let was_running = record.state == RecordState::Running;
    if was_running {
        vm.pause().await?;
    }
    let taken = vm
        .create_snapshot(&SnapshotOptions::full(dir.join("vm")))
        .await;
    if was_running {
        vm.resume().await?;
    }
    taken?;
    let meta = SnapshotMeta {
        name: name.to_string(),
        source_id: record.id.clone(),
        source_name: record.name.clone(),
        spec: record.spec.clone(),
        agent_token: record.agent_token.clone(),
        created_at: flick::unix_time(),
    };
    write_json(&dir.join("flick-snapshot.json"), &meta)?;
    Ok(meta)
}

/// Writes JSON atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &serde_json::to_vec_pretty(value)?)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    Ok(())
}

/// Reads a snapshot's flick metadata.
pub fn load_snapshot_meta(ctx: &Ctx, name: &str) -> anyhow::Result<SnapshotMeta> {
    let path = snapshots_dir(ctx).join(name).join("flick-snapshot.json");
    let bytes = std::fs::read(&path).map_err(|_| {
        Error::new(ErrorCode::NotFound, format!("no snapshot named {name:?}"))
            .with_details(json!({ "snapshot": name }))
    })?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Makes a new running VM from a snapshot (its own runtime dir, socket and TAP).
pub async fn restore(
    ctx: &Ctx,
    snapshot_name: &str,
    name: Option<String>,
) -> anyhow::Result<VmRecord> {
    let meta = load_snapshot_meta(ctx, snapshot_name)?;
    let snapshot = flick::vm::Snapshot::load(&snapshots_dir(ctx).join(snapshot_name).join("vm"))?;
    let id = new_id()?;
    let name = name.unwrap_or_else(|| format!("{}-{}", meta.source_name, &id[..6]));
    validate_name(&name)?;
    let mut record = VmRecord::new(&id, &name);
    // Clones share the source's guest ports, not its host ports.
    let mut clone_spec: CreateSpec = serde_json::from_value(meta.spec.clone())?;
    clone_spec.publish.clear();
    record.spec = serde_json::to_value(&clone_spec)?;
    record.agent_token = meta.agent_token.clone();
    record.config = Some(snapshot.config.clone());
    claim(ctx, &mut record)?;
    let _lock = lock(ctx, &id)?;
    let result = async {
        std::fs::create_dir_all(ctx.store.files_dir(&id))?;
        let spec = CreateSpec::of(&record)?;
        let mut taps = std::collections::BTreeMap::new();
        if let Some(policy) = &spec.network {
            let (iface, vm_net) = add_network(ctx, &id, policy).await?;
            taps.insert("eth0".to_string(), iface.host_device.clone());
            record.network = vm_net;
        }
        record.state = RecordState::Starting;
        ctx.store.save(&mut record)?;
        let host = ctx.host_for(&record)?;
        let vm = host
            .restore_vm(
                &snapshot,
                flick::host::RestoreOptions {
                    id: Some(id.clone()),
                    resume: true,
                    tap_overrides: taps,
                },
            )
            .await?;
        vm.detach().await;
        record.attach = Some(vm.attach_record().await);
        record.state = RecordState::Running;
        record.owner = None;
        ctx.store.save(&mut record)?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        crate::reconcile::kill_marked(ctx, &id).await;
        crate::reconcile::remove_runtime_dir(ctx, &id);
        undo_create(ctx, &record).await;
        return Err(e);
    }
    Ok(record)
}

/// The port forwards of every recorded VM with a network (plus `extra`, a record not saved yet
/// in its final form), minus VM `except`.
fn forwards(
    ctx: &Ctx,
    extra: Option<&VmRecord>,
    except: Option<&str>,
) -> anyhow::Result<Vec<flick::net::publish::PortForward>> {
    let mut records = ctx.store.list()?;
    if let Some(extra) = extra {
        records.retain(|r| r.id != extra.id);
        records.push(extra.clone());
    }
    let mut out = Vec::new();
    for r in records.iter().filter(|r| Some(r.id.as_str()) != except) {
        let (Ok(spec), Some(net)) = (CreateSpec::of(r), &r.network) else {
            continue;
        };
        let Some(iface) = net.interfaces.first() else {
            continue;
        };
        for publish in spec.publish {
            out.push(flick::net::publish::PortForward {
                vm_id: r.id.clone(),
                publish,
                guest_ip: iface.lease.guest_ip,
            });
        }
    }
    Ok(out)
}

/// Makes the host's published ports match the records (one nftables transaction).
pub async fn sync_published(ctx: &Ctx, extra: Option<&VmRecord>) -> anyhow::Result<()> {
    let forwards = forwards(ctx, extra, None)?;
    ctx.apply_published(&forwards).await
}

async fn sync_published_except(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    let forwards = forwards(ctx, None, Some(id))?;
    ctx.apply_published(&forwards).await
}

/// Refuses ports another VM publishes already, before anything is made.
pub fn check_publish_free(
    ctx: &Ctx,
    publish: &[flick::net::publish::Publish],
) -> anyhow::Result<()> {
    let mut all = forwards(ctx, None, None)?;
    all.extend(publish.iter().map(|p| flick::net::publish::PortForward {
        vm_id: "(new VM)".into(),
        publish: *p,
        guest_ip: std::net::Ipv4Addr::UNSPECIFIED,
    }));
    flick::net::publish::check_conflicts(&all)?;
    Ok(())
}
