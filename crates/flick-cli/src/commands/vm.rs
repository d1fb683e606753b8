//! `create`, `run`, `ls`, `start`, `stop`, `rm`, `inspect`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use flick::net::{Action, EgressPolicy, EgressRule};
use flick::store::VmRecord;
use flick::{Error, ErrorCode};
use serde_json::json;

use crate::artifacts;
use crate::ctx::Ctx;
use crate::output::{print_json, print_table};
use crate::reconcile;
use crate::vmops::{self, CreateSpec};

/// Options shared by `create` and `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// A unique name (default: `vm-` and the id's start).
    #[arg(long)]
    pub name: Option<String>,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// Memory, in MiB or with a unit (`512M`, `1G`).
    #[arg(long, default_value = "512M")]
    pub memory: String,
    /// A writable scratch disk of this size (`1G`), attached as the second drive.
    #[arg(long)]
    pub disk: Option<String>,
    /// `base` (Firecracker's CI Ubuntu image), `node`, `python`, or a runtime from
    /// `<data dir>/runtimes.json`.
    #[arg(long, default_value = "base")]
    pub runtime: String,
    /// Make the root filesystem from this OCI/Docker image (registry reference, or a path to a
    /// `docker save` tarball or OCI layout).
    #[arg(long, visible_alias = "from-image")]
    pub image: Option<String>,
    /// Use this kernel instead of the runtime's.
    #[arg(long, env = "FLICK_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// Use this root filesystem instead of the runtime's (ext4 is writable through a private
    /// copy-on-write staging; squashfs is read-only with a guest overlay).
    #[arg(long, env = "FLICK_ROOTFS")]
    pub rootfs: Option<PathBuf>,
    /// Egress: `allow-all`, `deny-all`, or `custom` (deny unless an `--allow-*` rule matches).
    #[arg(long, default_value = "allow-all")]
    pub network_policy: String,
    /// Allow egress to this CIDR (repeatable).
    #[arg(long)]
    pub allow_cidr: Vec<String>,
    /// Deny egress to this CIDR (repeatable; wins over allows).
    #[arg(long)]
    pub deny_cidr: Vec<String>,
    /// Allow egress to this domain (`api.example.com`, `*.pypi.org`; repeatable).
    #[arg(long)]
    pub allow_domain: Vec<String>,
    /// No network interface at all.
    #[arg(long)]
    pub no_network: bool,
    /// Forward a host port to a guest port (`HOST:GUEST`).
    #[arg(long)]
    pub publish: Vec<String>,
    /// Run Firecracker through the jailer.
    #[arg(long)]
    pub jailer: bool,
}

/// Parses `512`, `512M`, `1G`, `1024K` into MiB.
pub fn parse_mib(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let unit = &t[i..];
            let m: f64 = match unit.to_ascii_uppercase().as_str() {
                "K" => 1.0 / 1024.0,
                "M" => 1.0,
                "G" => 1024.0,
                "T" => 1024.0 * 1024.0,
                _ => return Err(bad_size(text)),
            };
            (&t[..i], m)
        }
        _ => (t, 1.0),
    };
    let n: f64 = num.trim().parse().map_err(|_| bad_size(text))?;
    let mib = (n * mult).ceil();
    if !(1.0..=16.0 * 1024.0 * 1024.0).contains(&mib) {
        return Err(bad_size(text));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(mib as u64)
}

fn bad_size(text: &str) -> anyhow::Error {
    Error::new(
        ErrorCode::InvalidArgument,
        format!("{text:?} is not a size (examples: 512M, 1G)"),
    )
    .into()
}

fn policy(args: &CreateArgs) -> anyhow::Result<Option<EgressPolicy>> {
    if args.no_network {
        return Ok(None);
    }
    let mut rules = Vec::new();
    for cidr in &args.deny_cidr {
        rules.push(EgressRule {
            action: Action::Deny,
            to: Some(cidr.clone()),
            ..EgressRule::default()
        });
    }
    for cidr in &args.allow_cidr {
        rules.push(EgressRule {
            action: Action::Allow,
            to: Some(cidr.clone()),
            ..EgressRule::default()
        });
    }
    let default_action = match args.network_policy.as_str() {
        "allow-all" if args.allow_cidr.is_empty() && args.allow_domain.is_empty() => Action::Allow,
        "allow-all" | "deny-all" | "custom" => Action::Deny,
        other => {
            return Err(Error::new(
                ErrorCode::InvalidEgressPolicy,
                format!("unknown network policy {other:?}: allow-all, deny-all or custom"),
            )
            .into());
        }
    };
    if args.network_policy == "deny-all"
        && !(args.allow_cidr.is_empty() && args.allow_domain.is_empty())
    {
        return Err(Error::new(
            ErrorCode::InvalidEgressPolicy,
            "deny-all takes no --allow-* rules (use custom)",
        )
        .into());
    }
    let policy = EgressPolicy {
        rules,
        default_action: Some(default_action),
        allow_domains: args.allow_domain.clone(),
        ..EgressPolicy::default()
    };
    policy.compile()?;
    Ok(Some(policy))
}

/// Turns the arguments into a spec (downloading what the runtime or image needs).
pub async fn spec(ctx: &Ctx, args: &CreateArgs) -> anyhow::Result<CreateSpec> {
    let publish = args
        .publish
        .iter()
        .map(|p| flick::net::publish::Publish::parse(p))
        .collect::<flick::Result<Vec<_>>>()?;
    if !publish.is_empty() {
        if args.no_network {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "--publish needs a network (drop --no-network)",
            )
            .into());
        }
        crate::vmops::check_publish_free(ctx, &publish)?;
    }
    if args.jailer {
        // Fails early (BINARY_NOT_FOUND) when there is no jailer to run.
        ctx.jailer_options()?;
    }
    let memory = parse_mib(&args.memory)?;
    let disk_mib = args.disk.as_deref().map(parse_mib).transpose()?;
    let network = policy(args)?;
    let boot = artifacts::resolve(ctx, args).await?;
    Ok(CreateSpec {
        cpus: args.cpus,
        memory_mib: u32::try_from(memory).map_err(|_| bad_size(&args.memory))?,
        disk_mib,
        runtime: args.runtime.clone(),
        image: args.image.clone(),
        kernel: boot.kernel,
        rootfs: boot.rootfs,
        rootfs_read_only: boot.read_only,
        network,
        command: boot.command,
        env: boot.env,
        workdir: boot.workdir,
        user: boot.user,
        jailer: args.jailer,
        publish,
    })
}

/// One row/document per VM.
pub fn describe(record: &VmRecord) -> serde_json::Value {
    let ip = record
        .network
        .as_ref()
        .and_then(|n| n.interfaces.first())
        .map(|i| i.lease.guest_ip.to_string());
    let spec = CreateSpec::of(record).ok();
    json!({
        "id": record.id,
        "name": record.name,
        "state": record.state,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "pid": record.process().map(|p| p.pid),
        "ip": ip,
        "tap": record.network.as_ref().and_then(|n| n.interfaces.first()).map(|i| i.host_device.clone()),
        "cpus": spec.as_ref().map(|s| s.cpus),
        "memory_mib": spec.as_ref().map(|s| s.memory_mib),
        "runtime": spec.as_ref().map(|s| s.runtime.clone()),
        "image": spec.as_ref().and_then(|s| s.image.clone()),
        "last_error": record.last_error,
    })
}

#[derive(Debug, clap::Args)]
pub struct CreateCmd {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Only define the VM; do not boot it.
    #[arg(long)]
    pub no_start: bool,
}

pub async fn create(ctx: &Ctx, cmd: &CreateCmd) -> anyhow::Result<ExitCode> {
    let spec = spec(ctx, &cmd.create).await?;
    let record = vmops::create(ctx, cmd.create.name.clone(), spec, !cmd.no_start).await?;
    if ctx.globals.json {
        print_json(&describe(&record));
    } else {
        println!("{}", record.name);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct LsCmd {
    /// Also list VMs that are not running.
    #[arg(short, long)]
    pub all: bool,
    /// Only print ids.
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn ls(ctx: &Ctx, cmd: &LsCmd) -> anyhow::Result<ExitCode> {
    let records = reconcile::reconcile_all(ctx).await?;
    let shown: Vec<&VmRecord> = records
        .iter()
        .filter(|r| cmd.all || r.state.expects_process() || r.state.is_transitional())
        .collect();
    if ctx.globals.json {
        print_json(&shown.iter().map(|r| describe(r)).collect::<Vec<_>>());
        return Ok(ExitCode::SUCCESS);
    }
    if cmd.quiet {
        for r in shown {
            println!("{}", r.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let now = flick::unix_time();
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|r| {
            let d = describe(r);
            let s = |k: &str| {
                d[k].as_str()
                    .map_or_else(|| "-".to_string(), str::to_string)
            };
            let n = |k: &str| {
                d[k].as_u64()
                    .map_or_else(|| "-".to_string(), |v| v.to_string())
            };
            vec![
                r.id.clone(),
                r.name.clone(),
                r.state.to_string(),
                n("cpus"),
                n("memory_mib"),
                s("ip"),
                d["image"]
                    .as_str()
                    .map_or_else(|| s("runtime"), str::to_string),
                crate::output::ago(now.saturating_sub(r.created_at)),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "NAME", "STATE", "CPUS", "MEM(MiB)", "IP", "IMAGE", "CREATED",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct VmsCmd {
    /// VM names or ids (a unique id prefix is enough).
    #[arg(required = true)]
    pub vms: Vec<String>,
}

/// Runs `op` on each named VM in turn: its name per line, or one JSON array of the documents
/// `op` returns. Stops at the first failure (the VMs before it stay done).
async fn each_vm<F, Fut>(ctx: &Ctx, keys: &[String], op: F) -> anyhow::Result<ExitCode>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(String, serde_json::Value)>>,
{
    let mut docs = Vec::new();
    for key in keys {
        let (name, doc) = op(key.clone()).await?;
        if !ctx.globals.json {
            println!("{name}");
        }
        docs.push(doc);
    }
    if ctx.globals.json {
        print_json(&docs);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn start(ctx: &Ctx, cmd: &VmsCmd) -> anyhow::Result<ExitCode> {
    each_vm(ctx, &cmd.vms, async |key| {
        let record = vmops::start(ctx, &key).await?;
        Ok((record.name.clone(), describe(&record)))
    })
    .await
}

#[derive(Debug, clap::Args)]
pub struct StopCmd {
    /// VM names or ids.
    #[arg(required = true)]
    pub vms: Vec<String>,
    /// Seconds to wait after Ctrl+Alt+Del (and again after SIGTERM).
    #[arg(short, long, default_value_t = 10)]
    pub timeout: u64,
}

pub async fn stop(ctx: &Ctx, cmd: &StopCmd) -> anyhow::Result<ExitCode> {
    let grace = Duration::from_secs(cmd.timeout);
    each_vm(ctx, &cmd.vms, async |key| {
        let (record, outcome) = vmops::stop(ctx, &key, grace).await?;
        let mut doc = describe(&record);
        doc["outcome"] = json!(outcome);
        Ok((record.name, doc))
    })
    .await
}

#[derive(Debug, clap::Args)]
pub struct RmCmd {
    /// VM names or ids.
    #[arg(required = true)]
    pub vms: Vec<String>,
    /// Stop running VMs first.
    #[arg(short, long)]
    pub force: bool,
}

pub async fn rm(ctx: &Ctx, cmd: &RmCmd) -> anyhow::Result<ExitCode> {
    each_vm(ctx, &cmd.vms, async |key| {
        let record = vmops::remove(ctx, &key, cmd.force).await?;
        let doc = json!({ "id": record.id, "name": record.name, "removed": true });
        Ok((record.name, doc))
    })
    .await
}

#[derive(Debug, clap::Args)]
pub struct InspectCmd {
    /// VM name or id.
    pub vm: String,
}

pub async fn inspect(ctx: &Ctx, cmd: &InspectCmd) -> anyhow::Result<ExitCode> {
    let id = ctx.store.resolve(&cmd.vm)?.id;
    let record = {
        let _lock = ctx.store.lock_vm(&id, crate::ctx::LOCK_WAIT)?;
        reconcile::reconcile_locked(ctx, &id).await?
    }
    .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("no VM {:?}", cmd.vm)))?;
    let mut doc = serde_json::to_value(&record)?;
    // The token is a credential: shown only as present or not.
    doc["agent_token"] = json!(record.agent_token.as_ref().map(|_| "<set>"));
    print_json(&doc);
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct GcCmd {}

pub async fn gc(ctx: &Ctx, _cmd: &GcCmd) -> anyhow::Result<ExitCode> {
    let report = reconcile::gc(ctx).await?;
    if ctx.globals.json {
        print_json(&report);
    } else {
        for id in &report.reconciled {
            println!("reconciled VM {id}");
        }
        for k in &report.killed_processes {
            println!("killed orphaned Firecracker {} (VM {})", k.pid, k.vm);
        }
        for dir in &report.removed_runtime_dirs {
            println!("removed runtime dir {}", dir.display());
        }
        for vm in &report.removed_networks {
            println!("removed network of VM {vm}");
        }
        for p in &report.quarantined_records {
            println!("moved unreadable record aside: {}", p.display());
        }
        if report.network_torn_down {
            println!("removed the host network (no VM uses it)");
        }
    }
    Ok(ExitCode::SUCCESS)
}
