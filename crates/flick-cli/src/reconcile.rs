//! Making records match reality, and reclaiming what nobody owns.
//!
//! Every command reconciles the records it touches first: a Firecracker that died makes its VM
//! `crashed` (its runtime dir is removed); a transition whose owner died is finished or undone
//! (`creating` → removed, `starting` → re-attached when Firecracker answers as booted, else
//! stopped, `stopping` → stopped, `removing` → removed). `flick gc` additionally reclaims
//! resources without a live owner: marked Firecracker processes, runtime dirs, network entries.

use std::path::PathBuf;
use std::time::Duration;

use flick::process::{ProcessIdentity, terminate_detached};
use flick::store::{RecordState, VmRecord};
use serde::Serialize;

use crate::ctx::{Ctx, OWNER_ENV};
use crate::vmops;

/// Firecracker processes carrying the owner mark of VM `id` of this data dir (`None`: any VM
/// of this data dir), with the VM id each belongs to.
pub fn marked_processes(ctx: &Ctx, id: Option<&str>) -> Vec<(ProcessIdentity, String)> {
    let prefix = format!("{OWNER_ENV}={}\t", ctx.data_dir().display());
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // A jailed Firecracker has a cleared environment; its root directory gives it away.
        if let Some(vm) = jailed_vm_of(ctx, pid) {
            if id.is_none_or(|id| id == vm)
                && let Ok(identity) = ProcessIdentity::of(pid)
                && identity.is_alive()
            {
                found.push((identity, vm));
            }
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        for var in environ.split(|b| *b == 0) {
            let Some(rest) = var.strip_prefix(prefix.as_bytes()) else {
                continue;
            };
            let vm = String::from_utf8_lossy(rest).into_owned();
            if id.is_none_or(|id| id == vm)
                && let Ok(identity) = ProcessIdentity::of(pid)
                && identity.is_alive()
            {
                found.push((identity, vm));
            }
        }
    }
    found
}

fn jails_dir(ctx: &Ctx) -> PathBuf {
    ctx.runtime_root().join("jailer")
}

/// The VM whose jail (`<runtime root>/jailer/<exec>/<id>/root`) is process `pid`'s root.
fn jailed_vm_of(ctx: &Ctx, pid: i32) -> Option<String> {
    let root = std::fs::read_link(format!("/proc/{pid}/root")).ok()?;
    let rel = root.strip_prefix(jails_dir(ctx)).ok()?;
    let parts: Vec<_> = rel.components().collect();
    match parts.as_slice() {
        [_exec, id, root] if root.as_os_str() == "root" => {
            Some(id.as_os_str().to_string_lossy().into_owned())
        }
        _ => None,
    }
}

/// Removes VM `id`'s jails and cgroups (jailed VMs). Returns whether there were any.
fn remove_jails(ctx: &Ctx, id: &str) -> bool {
    let mut removed = false;
    for exec in std::fs::read_dir(jails_dir(ctx))
        .into_iter()
        .flatten()
        .flatten()
    {
        let jail = exec.path().join(id);
        if jail.exists() && std::fs::remove_dir_all(&jail).is_ok() {
            removed = true;
        }
        if let Ok(Some(root)) = ctx.jailer_options().map(|j| j.cgroup_root) {
            let cg = root.join(exec.file_name()).join(id);
            let _ = std::fs::remove_dir(&cg).or_else(|_| std::fs::remove_dir_all(&cg));
        }
    }
    removed
}

/// Kills every marked process of VM `id`. Returns how many there were.
pub async fn kill_marked(ctx: &Ctx, id: &str) -> usize {
    let procs = marked_processes(ctx, Some(id));
    for (identity, _) in &procs {
        terminate_detached(*identity, Duration::from_millis(500)).await;
    }
    procs.len()
}

/// Removes VM `id`'s runtime dir. Returns whether there was one.
pub fn remove_runtime_dir(ctx: &Ctx, id: &str) -> bool {
    let dir = ctx.runtime_root().join(id);
    let jailed = remove_jails(ctx, id);
    (dir.exists() && std::fs::remove_dir_all(&dir).is_ok()) || jailed
}

/// Whether the record's Firecracker is alive.
pub fn process_alive(record: &VmRecord) -> bool {
    record.process().is_some_and(|p| p.is_alive())
}

/// Whether a record needs fixing.
pub fn needs_reconcile(record: &VmRecord) -> bool {
    (record.state.expects_process() && !process_alive(record))
        || (record.state.is_transitional() && record.owner_is_gone())
}

/// Reconciles VM `id`; the caller holds its lock. `None` when the record is (now) gone.
pub async fn reconcile_locked(ctx: &Ctx, id: &str) -> anyhow::Result<Option<VmRecord>> {
    let Some(mut record) = ctx.store.load(id)? else {
        return Ok(None);
    };
    if !needs_reconcile(&record) {
        return Ok(Some(record));
    }
    let was = record.state;
    match record.state {
        RecordState::Running | RecordState::Paused => {
            kill_marked(ctx, id).await;
            remove_runtime_dir(ctx, id);
            record.state = RecordState::Crashed;
            record.attach = None;
            record.last_error = Some(serde_json::json!({
                "code": "PROCESS_FAILED",
                "message": "Firecracker exited without being asked to",
            }));
        }
        RecordState::Creating => {
            vmops::remove_network(ctx, id).await?;
            ctx.store.delete(id)?;
            tracing::info!(vm = id, "removed a VM whose creation was interrupted");
            return Ok(None);
        }
        RecordState::Removing => {
            vmops::finish_remove(ctx, &record).await?;
            tracing::info!(vm = id, "finished an interrupted removal");
            return Ok(None);
        }
        RecordState::Starting => {
            if let Some(attached) = try_adopt(ctx, &record).await {
                record.attach = Some(attached);
                record.state = RecordState::Running;
            } else {
                kill_marked(ctx, id).await;
                remove_runtime_dir(ctx, id);
                record.attach = None;
                record.state = RecordState::Stopped;
            }
        }
        RecordState::Stopping => {
            vmops::stop_process(ctx, &record, Duration::from_secs(2)).await?;
            record.attach = None;
            record.state = RecordState::Stopped;
        }
        RecordState::Created | RecordState::Stopped | RecordState::Crashed | RecordState::Error => {
        }
    }
    record.owner = None;
    ctx.store.save(&mut record)?;
    tracing::info!(vm = id, from = %was, to = %record.state, "reconciled");
    Ok(Some(record))
}

/// A start interrupted after Firecracker came up: adopt it when it answers as booted.
async fn try_adopt(ctx: &Ctx, record: &VmRecord) -> Option<flick::vm::AttachRecord> {
    if record
        .spec
        .get("jailer")
        .and_then(serde_json::Value::as_bool)
        == Some(true)
    {
        // A jail's layout is the library's to know: an interrupted jailed start is undone.
        return None;
    }
    let procs = marked_processes(ctx, Some(&record.id));
    let [(identity, _)] = procs.as_slice() else {
        return None;
    };
    let config = record.config.clone()?;
    let runtime = ctx.runtime_root().join(&record.id);
    let host = ctx.host_for(record).ok()?;
    // What start() would have recorded: the runtime layout is fixed, the effective config is
    // the caller's with the staged paths, which this VM (no staged drives) does not have.
    let status = flick::vm::VmStatus {
        id: record.id.clone(),
        state: flick::VmState::Running,
        process: Some(*identity),
        runtime_dir: Some(runtime.clone()),
        api_socket: Some(runtime.join("firecracker.sock")),
        vsock_socket: Some(runtime.join("vsock.sock")),
        staged_drives: Vec::new(),
        tap_devices: record
            .network
            .iter()
            .flat_map(|n| n.interfaces.iter().map(|i| i.host_device.clone()))
            .collect(),
        created_at: record.created_at,
        last_error: None,
    };
    let attach = flick::vm::AttachRecord {
        config,
        effective_config: None,
        status,
    };
    let vm = host.attach_vm(attach).await.ok()?;
    vm.detach().await;
    Some(vm.attach_record().await)
}

/// Reconciles every record that needs it (skipping those another process is working on).
pub async fn reconcile_all(ctx: &Ctx) -> anyhow::Result<Vec<VmRecord>> {
    let records = ctx.store.list()?;
    if !records.iter().any(needs_reconcile) {
        return Ok(records);
    }
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        if !needs_reconcile(&record) {
            out.push(record);
            continue;
        }
        match ctx.store.try_lock_vm(&record.id)? {
            Some(_lock) => {
                if let Some(r) = reconcile_locked(ctx, &record.id).await? {
                    out.push(r);
                }
            }
            None => out.push(record),
        }
    }
    Ok(out)
}

/// A process `flick gc` killed.
#[derive(Debug, Serialize)]
pub struct KilledProcess {
    /// Its pid.
    pub pid: i32,
    /// The VM id it was marked with.
    pub vm: String,
}

/// What `flick gc` reclaimed.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// Records whose state was fixed.
    pub reconciled: Vec<String>,
    /// Orphaned Firecracker processes killed.
    pub killed_processes: Vec<KilledProcess>,
    /// Runtime dirs removed.
    pub removed_runtime_dirs: Vec<PathBuf>,
    /// Network entries (TAP, addresses, firewall chain) of VMs without a record.
    pub removed_networks: Vec<String>,
    /// Unreadable record files moved aside.
    pub quarantined_records: Vec<PathBuf>,
    /// Whether the host network was torn down because no VM uses it.
    pub network_torn_down: bool,
}

/// Reconciles everything and reclaims resources without a live owner.
pub async fn gc(ctx: &Ctx) -> anyhow::Result<GcReport> {
    let mut report = GcReport::default();
    let before = ctx.store.list()?;
    let after = reconcile_all(ctx).await?;
    for r in &before {
        match after.iter().find(|a| a.id == r.id) {
            Some(a) if a.state == r.state => {}
            _ => report.reconciled.push(r.id.clone()),
        }
    }
    let (records, invalid) = ctx.store.scan()?;
    for path in invalid {
        let aside = path.with_extension("json.invalid");
        if std::fs::rename(&path, &aside).is_ok() {
            report.quarantined_records.push(aside);
        }
    }
    let live: std::collections::BTreeMap<&str, &VmRecord> =
        records.iter().map(|r| (r.id.as_str(), r)).collect();
    // Marked processes that no record names as its live Firecracker.
    for (identity, vm) in marked_processes(ctx, None) {
        let owned = live.get(vm.as_str()).is_some_and(|r| {
            r.process() == Some(identity) || (r.state.is_transitional() && !r.owner_is_gone())
        });
        if !owned {
            terminate_detached(identity, Duration::from_millis(500)).await;
            report.killed_processes.push(KilledProcess {
                pid: identity.pid,
                vm,
            });
        }
    }
    // Runtime dirs of VMs that do not run.
    if let Ok(entries) = std::fs::read_dir(ctx.runtime_root()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "jailer" {
                continue;
            }
            let keep = live
                .get(name.as_str())
                .is_some_and(|r| r.state.expects_process() || r.state.is_transitional());
            if !keep && std::fs::remove_dir_all(entry.path()).is_ok() {
                report.removed_runtime_dirs.push(entry.path());
            }
        }
    }
    // Jails of VMs that do not run.
    for exec in std::fs::read_dir(jails_dir(ctx))
        .into_iter()
        .flatten()
        .flatten()
    {
        for jail in std::fs::read_dir(exec.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = jail.file_name().to_string_lossy().into_owned();
            let keep = live
                .get(name.as_str())
                .is_some_and(|r| r.state.expects_process() || r.state.is_transitional());
            if !keep && remove_jails(ctx, &name) {
                report.removed_runtime_dirs.push(jail.path());
            }
        }
    }
    // Network entries of VMs without a record.
    if let Some(state) = ctx.load_network()? {
        for vm in state.vms.keys() {
            if !live.contains_key(vm.as_str()) {
                let id = vm.clone();
                ctx.with_network(async |net| net.remove_vm(&id).await)
                    .await?;
                report.removed_networks.push(vm.clone());
            }
        }
    }
    // Published ports: exactly those of the recorded VMs.
    vmops::sync_published(ctx, None).await?;
    report.network_torn_down = ctx.release_network_if_unused().await?;
    Ok(report)
}
