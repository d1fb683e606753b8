//! [`HostNetwork`]: the host side of VM networking, from setup to cleanup.
//!
//! Flow:
//! 1. [`HostNetwork::setup`] validates the whole [`NetworkConfig`] before touching anything,
//!    then (bridge mode) ensures the bridge with the gateway address, turns on IPv4 forwarding
//!    and installs flick's nftables table in one transaction. A failure undoes what this call
//!    did.
//! 2. [`HostNetwork::add_vm`] leases an address, creates a persistent TAP (or adopts a device
//!    the caller names), attaches it (bridge mode) or puts the host end of the VM's `/30` on it
//!    (isolation mode), and installs the VM's egress chain. A failure leaves nothing behind.
//! 3. [`HostNetwork::remove_vm`] removes exactly that VM's chain, map element and TAP.
//! 4. [`HostNetwork::teardown`] removes every VM, the table, the bridge if flick created it,
//!    and puts `ip_forward` back.
//!
//! [`NetworkState`] is serializable so a short-lived CLI can persist it and a later process can
//! [`HostNetwork::restore`] it.
//!
//! A VM whose policy has `allow_domains` also gets its own resolver process (see
//! [`super::dns`]): `add_vm`/`set_vm_policy` start or update it, `remove_vm` stops it, and its
//! pid is part of the state. Its guest-facing address is [`VmInterface::dns_server`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use super::dns::{self, Control, ResolverPolicy, ResolverSpec, ResolverState, TtlLimits};
use super::firewall::{CompiledPolicy, EgressPolicy};
use super::kernel::NetKernel;
use super::nft::{self, TableSpec, VmDns, VmRules};
use super::plan::{self, AllocationState, IpAllocator, Lease, PointToPointAllocator, Subnet};
use super::wireguard::WireguardState;
use crate::error::{Error, ErrorCode, Result};

/// How VMs are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// All TAPs on one bridge that carries the gateway address.
    #[default]
    Bridge,
    /// One point-to-point `/30` per VM, no bridge, no L2 path between VMs.
    Isolated,
}

/// What the operator configures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// The VM address pool.
    pub subnet: String,
    /// The bridge (bridge mode).
    pub bridge: String,
    /// Bridge or isolation mode.
    pub mode: Mode,
    /// The nftables table flick owns (family `inet`).
    pub table: String,
    /// The host-wide egress policy.
    pub host_policy: EgressPolicy,
    /// Owner of created TAPs (so a jailed Firecracker can open them).
    pub tap_owner: Option<u32>,
    /// Group of created TAPs.
    pub tap_group: Option<u32>,
    /// The uplink to masquerade out of; discovered from the default route when `None`.
    pub uplink: Option<String>,
    /// Upstream resolvers for VMs with a domain policy (`a.b.c.d` or `a.b.c.d:port`); empty
    /// means the IPv4 `nameserver`s of the host's `/etc/resolv.conf`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_upstreams: Vec<String>,
    /// TTL bounds for domain policies.
    pub dns_ttl: TtlLimits,
    /// The `flick-dns` helper binary; default: `$FLICK_DNS_HELPER`, next to the running
    /// executable, then `PATH`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_helper: Option<PathBuf>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            subnet: plan::DEFAULT_SUBNET.into(),
            bridge: plan::DEFAULT_BRIDGE.into(),
            mode: Mode::Bridge,
            table: nft::DEFAULT_TABLE.into(),
            host_policy: EgressPolicy::default(),
            tap_owner: None,
            tap_group: None,
            uplink: None,
            dns_upstreams: Vec::new(),
            dns_ttl: TtlLimits::default(),
            dns_helper: None,
        }
    }
}

/// Validates an nftables table name: 1–64 ASCII letters, digits or `_`, starting with a letter.
pub fn validate_table_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::InvalidFirewallConfig,
            format!(
                "nftables table name {name:?} must be 1–64 letters, digits or '_', starting with a letter"
            ),
        ))
    }
}

/// A validated [`NetworkConfig`].
#[derive(Debug, Clone)]
struct Validated {
    subnet: Subnet,
    host_policy: CompiledPolicy,
}

impl NetworkConfig {
    fn validate(&self) -> Result<Validated> {
        let subnet = Subnet::parse(&self.subnet)?;
        if self.mode == Mode::Bridge {
            plan::validate_interface_name(&self.bridge)?;
        } else {
            PointToPointAllocator::new(subnet)?;
        }
        if let Some(u) = &self.uplink {
            plan::validate_interface_name(u)?;
        }
        validate_table_name(&self.table)?;
        let host_policy = self.host_policy.compile()?;
        if host_policy.has_domains() {
            return Err(Error::new(
                ErrorCode::InvalidFirewallConfig,
                "allow_domains is a per-VM policy; the host-wide policy cannot name domains",
            ));
        }
        for u in &self.dns_upstreams {
            dns::parse_upstream(u)?;
        }
        self.dns_ttl.validate()?;
        Ok(Validated {
            subnet,
            host_policy,
        })
    }
}

/// What one VM interface is plugged into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInterface {
    /// Address, gateway, MAC and derived TAP name.
    pub lease: Lease,
    /// The host device actually used (the derived TAP, or the caller's device).
    pub host_device: String,
    /// Whether flick created the device (and deletes it on removal).
    pub created: bool,
    /// The DNS server the guest must use: set when its policy names domains (flick's resolver
    /// answers there; other DNS servers are unreachable). It is the guest's gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_server: Option<Ipv4Addr>,
}

impl VmInterface {
    /// The kernel boot argument for the guest (with the DNS server as `dns0` when there is
    /// one; the guest kernel then lists it in `/proc/net/pnp`, which can serve as
    /// `/etc/resolv.conf`).
    #[must_use]
    pub fn boot_arg(&self) -> String {
        match self.dns_server {
            Some(d) => format!("{}:{d}", self.lease.boot_arg()),
            None => self.lease.boot_arg(),
        }
    }
}

/// One VM's networking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNetwork {
    /// Its interfaces.
    pub interfaces: Vec<VmInterface>,
    /// Its own egress policy.
    pub policy: EgressPolicy,
    /// Its resolver, when the policy names domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<ResolverState>,
}

/// A request to plug one VM interface in.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRequest {
    /// The VM id.
    pub vm_id: String,
    /// The guest interface id (`eth0` when empty).
    #[serde(default)]
    pub iface_id: String,
    /// Use this existing host device instead of creating a TAP (flick never deletes it).
    #[serde(default)]
    pub host_device: Option<String>,
    /// The VM's own egress policy, evaluated before the host-wide one.
    #[serde(default)]
    pub policy: Option<EgressPolicy>,
}

/// Everything needed to manage (and clean up) host networking from another process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    /// The configuration in force.
    pub config: NetworkConfig,
    /// The address allocations.
    pub allocation: AllocationState,
    /// The uplink masquerade goes out of.
    pub uplink: Option<String>,
    /// Whether flick created the bridge (and removes it on cleanup).
    pub created_bridge: bool,
    /// Whether flick added the gateway address to a bridge it did not create.
    pub added_gateway_address: bool,
    /// `ip_forward` before setup.
    pub forwarding_before: bool,
    /// VMs by id.
    pub vms: BTreeMap<String, VmNetwork>,
    /// WireGuard egress, when configured.
    #[serde(default)]
    pub wireguard: Option<WireguardState>,
}

fn vm_dns(r: &ResolverState) -> VmDns {
    VmDns {
        addr: r.addr,
        port: r.port,
        proxy_port: r.proxy_port,
    }
}

#[derive(Debug, Clone)]
enum Alloc {
    Shared(IpAllocator),
    PointToPoint(PointToPointAllocator),
}

impl Alloc {
    fn allocate(&mut self, vm: &str, iface: &str) -> Result<Lease> {
        match self {
            Alloc::Shared(a) => a.allocate(vm, iface),
            Alloc::PointToPoint(a) => a.allocate(vm, iface),
        }
    }
    fn release(&mut self, vm: &str) {
        match self {
            Alloc::Shared(a) => drop(a.release_vm(vm)),
            Alloc::PointToPoint(a) => drop(a.release_vm(vm)),
        }
    }
    fn state(&self) -> AllocationState {
        match self {
            Alloc::Shared(a) => a.state(),
            Alloc::PointToPoint(a) => a.state(),
        }
    }
}

/// The host side of VM networking on one kernel (see the module docs for the flow).
#[derive(Debug)]
pub struct HostNetwork<K: NetKernel> {
    kernel: K,
    state: NetworkState,
    subnet: Subnet,
    host_policy: CompiledPolicy,
    alloc: Alloc,
}

impl<K: NetKernel> HostNetwork<K> {
    /// Validates `config`, then sets up the bridge, forwarding and the nftables table.
    pub async fn setup(mut kernel: K, config: NetworkConfig) -> Result<Self> {
        let v = config.validate()?;
        let uplink = match &config.uplink {
            Some(u) => Some(u.clone()),
            None => kernel.default_route_interface().await?,
        };
        let alloc = match config.mode {
            Mode::Bridge => Alloc::Shared(IpAllocator::new(v.subnet)),
            Mode::Isolated => Alloc::PointToPoint(PointToPointAllocator::new(v.subnet)?),
        };
        let mut me = Self {
            kernel,
            state: NetworkState {
                allocation: alloc.state(),
                config,
                uplink,
                created_bridge: false,
                added_gateway_address: false,
                forwarding_before: false,
                vms: BTreeMap::new(),
                wireguard: None,
            },
            subnet: v.subnet,
            host_policy: v.host_policy,
            alloc,
        };
        let mut forwarding_set = false;
        let result = me.setup_steps(&mut forwarding_set).await;
        if let Err(e) = result {
            me.undo_setup(forwarding_set).await;
            return Err(e);
        }
        Ok(me)
    }

    async fn setup_steps(&mut self, forwarding_set: &mut bool) -> Result<()> {
        if self.state.config.mode == Mode::Bridge {
            let name = self.state.config.bridge.clone();
            let index = match self.kernel.link_index(&name).await? {
                Some(i) => {
                    // A bridge with flick's own MAC was created by an earlier run whose state
                    // was lost (a crash): it is flick's to remove.
                    let mac = self.kernel.link_mac(&name).await?;
                    self.state.created_bridge =
                        mac.as_deref() == Some(super::kernel::bridge_mac(&name).as_slice());
                    i
                }
                None => {
                    let i = self.kernel.create_bridge(&name).await?;
                    self.state.created_bridge = true;
                    i
                }
            };
            let added = self
                .kernel
                .add_address(index, self.subnet.gateway(), self.subnet.prefix_len())
                .await?;
            self.state.added_gateway_address = added && !self.state.created_bridge;
            self.kernel.set_up(index).await?;
        }
        self.state.forwarding_before = self.kernel.set_ipv4_forwarding(true).await?;
        *forwarding_set = true;
        self.apply_full().await
    }

    async fn undo_setup(&mut self, forwarding_set: bool) {
        let _ = self
            .kernel
            .apply_nft(&nft::delete_table_batch(&self.state.config.table))
            .await;
        if forwarding_set && !self.state.forwarding_before {
            let _ = self.kernel.set_ipv4_forwarding(false).await;
        }
        if let Ok(Some(i)) = self.kernel.link_index(&self.state.config.bridge).await {
            if self.state.created_bridge {
                let _ = self.kernel.delete_link(i).await;
            } else if self.state.added_gateway_address {
                let _ = self
                    .kernel
                    .del_address(i, self.subnet.gateway(), self.subnet.prefix_len())
                    .await;
            }
        }
    }

    /// Rebuilds a manager from persisted state (no kernel calls).
    pub fn restore(kernel: K, state: NetworkState) -> Result<Self> {
        let v = state.config.validate()?;
        let alloc = if state.allocation.point_to_point {
            Alloc::PointToPoint(PointToPointAllocator::restore(state.allocation.clone())?)
        } else {
            Alloc::Shared(IpAllocator::restore(state.allocation.clone())?)
        };
        Ok(Self {
            kernel,
            state,
            subnet: v.subnet,
            host_policy: v.host_policy,
            alloc,
        })
    }

    /// The state to persist.
    #[must_use]
    pub fn state(&self) -> &NetworkState {
        &self.state
    }

    /// The kernel implementation (for tests that inspect a fake).
    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// The VM address pool.
    #[must_use]
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    pub(crate) fn table_spec(&self) -> TableSpec {
        TableSpec {
            table: self.state.config.table.clone(),
            pool: self.subnet.net(),
            bridge: (self.state.config.mode == Mode::Bridge)
                .then(|| self.state.config.bridge.clone()),
            uplink: self.state.uplink.clone(),
            isolation: self.state.config.mode == Mode::Isolated,
            host_policy: self.host_policy.clone(),
            wireguard: self.state.wireguard.as_ref().map(WireguardState::egress),
        }
    }

    fn vm_rules(&self) -> Result<Vec<VmRules>> {
        let mut out = Vec::new();
        for (id, vm) in &self.state.vms {
            let policy = vm.policy.compile()?;
            for i in &vm.interfaces {
                out.push(VmRules {
                    vm_id: id.clone(),
                    guest_ip: i.lease.guest_ip,
                    device: self.pinned_device(&i.host_device),
                    policy: policy.clone(),
                    dns: vm.resolver.as_ref().map(vm_dns),
                });
            }
        }
        Ok(out)
    }

    /// The device a guest address is pinned to (isolation mode only).
    fn pinned_device(&self, device: &str) -> Option<String> {
        (self.state.config.mode == Mode::Isolated).then(|| device.to_owned())
    }

    pub(crate) async fn apply_full(&mut self) -> Result<()> {
        let batch = nft::full_batch(&self.table_spec(), &self.vm_rules()?);
        self.kernel.apply_nft(&batch).await?;
        // Replacing the table emptied the resolvers' address sets: refill them.
        let resolvers: Vec<ResolverState> = self
            .state
            .vms
            .values()
            .filter_map(|v| v.resolver.clone())
            .collect();
        for r in resolvers {
            if let Err(e) = self.kernel.control_resolver(&r, &Control::Resync) {
                tracing::warn!(error = %e.chain(), set = %r.set, "refilling a domain set failed");
            }
        }
        Ok(())
    }

    fn upstreams(&self) -> Result<Vec<SocketAddrV4>> {
        let ups = if self.state.config.dns_upstreams.is_empty() {
            dns::system_upstreams()?
        } else {
            self.state
                .config
                .dns_upstreams
                .iter()
                .map(|u| dns::parse_upstream(u))
                .collect::<Result<_>>()?
        };
        if ups.is_empty() {
            return Err(Error::new(
                ErrorCode::NetworkSetupFailed,
                "a domain policy needs an upstream resolver: set dns_upstreams or add an IPv4 \
                 nameserver to /etc/resolv.conf",
            ));
        }
        Ok(ups)
    }

    fn check_inspection(&self, policy: &CompiledPolicy) -> Result<()> {
        if policy.inspect_names && self.state.wireguard.is_some() {
            return Err(Error::new(
                ErrorCode::InvalidFirewallConfig,
                "inspect_names cannot be used with WireGuard egress: the checking proxy \
                 connects from the host and would bypass the tunnel",
            ));
        }
        Ok(())
    }

    fn resolver_policy(&self, policy: &CompiledPolicy, clients: Vec<Ipv4Addr>) -> ResolverPolicy {
        ResolverPolicy {
            domains: policy.domains.clone(),
            refusal: policy.dns_refusal,
            clients,
            inspect_names: policy.inspect_names,
            allow_private: policy.allow_private_addresses,
            never: vec![self.subnet.net()],
        }
    }

    fn start_resolver(
        &mut self,
        vm_id: &str,
        listen: Ipv4Addr,
        clients: Vec<Ipv4Addr>,
        policy: &CompiledPolicy,
    ) -> Result<ResolverState> {
        let spec = ResolverSpec {
            listen,
            port: 0,
            table: self.state.config.table.clone(),
            set: nft::domain_set(vm_id),
            control: dns::control_name(&self.state.config.table, vm_id),
            upstreams: self.upstreams()?,
            policy: self.resolver_policy(policy, clients),
            ttl: self.state.config.dns_ttl,
        };
        let helper = dns::helper_path(self.state.config.dns_helper.as_deref());
        self.kernel.start_resolver(&spec, &helper)
    }

    pub(crate) fn kernel_and_state(&mut self) -> (&mut K, &mut NetworkState) {
        (&mut self.kernel, &mut self.state)
    }

    /// Replaces the host-wide egress policy (one transaction).
    pub async fn set_host_policy(&mut self, policy: EgressPolicy) -> Result<()> {
        let compiled = policy.compile()?;
        let old = std::mem::replace(&mut self.host_policy, compiled);
        if let Err(e) = self.apply_full().await {
            self.host_policy = old;
            return Err(e);
        }
        self.state.config.host_policy = policy;
        Ok(())
    }

    /// Plugs a VM interface in: lease, TAP, attach (or point-to-point address), egress chain,
    /// and (for a policy with domains) the VM's resolver.
    pub async fn add_vm(&mut self, req: VmRequest) -> Result<VmInterface> {
        let iface_id = if req.iface_id.is_empty() {
            "eth0".to_owned()
        } else {
            req.iface_id.clone()
        };
        let policy = req.policy.clone().unwrap_or_default();
        let compiled = policy.compile()?;
        if let Some(d) = &req.host_device {
            plan::validate_interface_name(d)?;
        }
        if let Some(vm) = self.state.vms.get(&req.vm_id)
            && let Some(i) = vm.interfaces.iter().find(|i| i.lease.iface_id == iface_id)
        {
            return Ok(i.clone());
        }
        if let Some(vm) = self.state.vms.get(&req.vm_id)
            && vm.policy != policy
        {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("VM {} already has a different egress policy", req.vm_id),
            ));
        }
        if let Some(d) = &req.host_device
            && let Some((owner, _)) = self
                .state
                .vms
                .iter()
                .find(|(_, vm)| vm.interfaces.iter().any(|i| &i.host_device == d))
        {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("host device {d} is already used by VM {owner}"),
            ));
        }
        self.check_inspection(&compiled)?;
        if compiled.has_domains() {
            // Fail before touching anything when no resolver could work.
            self.upstreams()?;
        }
        let alloc_before = self.alloc.clone();
        let lease = self.alloc.allocate(&req.vm_id, &iface_id)?;
        let (device, created) = match &req.host_device {
            Some(d) => (d.clone(), false),
            None => (lease.tap.clone(), true),
        };
        let existing = self
            .state
            .vms
            .get(&req.vm_id)
            .and_then(|v| v.resolver.clone());
        let mut resolver = existing.clone();
        let mut index = None;
        let result = self
            .plug(
                &lease,
                &device,
                created,
                &compiled,
                &req.vm_id,
                &mut index,
                &mut resolver,
            )
            .await;
        if let Err(e) = result {
            if existing.is_none()
                && let Some(r) = &resolver
            {
                let _ = self.kernel.stop_resolver(r);
            }
            // Without an index nothing was created or attached: never look the name up, it may
            // belong to someone else's device (the reason creation failed).
            if index.is_some() {
                self.unplug(&lease, &device, created, index).await;
            }
            self.alloc = alloc_before;
            return Err(e);
        }
        let iface = VmInterface {
            dns_server: compiled.has_domains().then_some(lease.gateway),
            lease,
            host_device: device,
            created,
        };
        let vm = self
            .state
            .vms
            .entry(req.vm_id.clone())
            .or_insert_with(|| VmNetwork {
                interfaces: Vec::new(),
                policy,
                resolver: None,
            });
        vm.interfaces.push(iface.clone());
        vm.resolver = resolver;
        self.state.allocation = self.alloc.state();
        Ok(iface)
    }

    #[allow(clippy::too_many_arguments)]
    async fn plug(
        &mut self,
        lease: &Lease,
        device: &str,
        created: bool,
        policy: &CompiledPolicy,
        vm_id: &str,
        index: &mut Option<u32>,
        resolver: &mut Option<ResolverState>,
    ) -> Result<()> {
        let i = if created {
            self.kernel
                .create_tap(
                    device,
                    self.state.config.tap_owner,
                    self.state.config.tap_group,
                )
                .await?
        } else {
            self.kernel.link_index(device).await?.ok_or_else(|| {
                Error::new(
                    ErrorCode::NotFound,
                    format!("host device {device} does not exist"),
                )
            })?
        };
        *index = Some(i);
        match self.state.config.mode {
            Mode::Bridge => {
                let br = self
                    .kernel
                    .link_index(&self.state.config.bridge)
                    .await?
                    .ok_or_else(|| {
                        Error::new(
                            ErrorCode::BridgeSetupFailed,
                            format!("bridge {} is gone", self.state.config.bridge),
                        )
                    })?;
                self.kernel.set_controller(i, Some(br)).await?;
            }
            Mode::Isolated => {
                self.kernel
                    .add_address(i, lease.gateway, lease.prefix_len)
                    .await?;
            }
        }
        // The resolver starts before the device goes up, so a failure leaves the device as it
        // was found.
        if policy.has_domains() {
            let mut clients: Vec<Ipv4Addr> = self
                .state
                .vms
                .get(vm_id)
                .map(|v| v.interfaces.iter().map(|i| i.lease.guest_ip).collect())
                .unwrap_or_default();
            clients.push(lease.guest_ip);
            match resolver {
                Some(r) => {
                    let cmd = Control::Update(self.resolver_policy(policy, clients));
                    self.kernel.control_resolver(r, &cmd)?;
                }
                None => {
                    // The gateway address exists now (bridge: since setup; isolation: above).
                    *resolver = Some(self.start_resolver(vm_id, lease.gateway, clients, policy)?);
                }
            }
        }
        self.kernel.set_up(i).await?;
        let rules = VmRules {
            vm_id: vm_id.to_owned(),
            guest_ip: lease.guest_ip,
            device: self.pinned_device(device),
            policy: policy.clone(),
            dns: resolver.as_ref().map(vm_dns),
        };
        self.kernel
            .apply_nft(&nft::add_vm_batch(&self.state.config.table, &rules))
            .await
    }

    /// Best-effort removal of one interface's kernel objects; returns the first error.
    async fn unplug(
        &mut self,
        lease: &Lease,
        device: &str,
        created: bool,
        index: Option<u32>,
    ) -> Option<Error> {
        let mut first = None;
        let index = match index {
            Some(i) => Some(i),
            None => self.kernel.link_index(device).await.ok().flatten(),
        };
        if let Some(i) = index {
            let r = if created {
                self.kernel.delete_link(i).await
            } else {
                match self.state.config.mode {
                    Mode::Bridge => self.kernel.set_controller(i, None).await,
                    Mode::Isolated => {
                        self.kernel
                            .del_address(i, lease.gateway, lease.prefix_len)
                            .await
                    }
                }
            };
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first
    }

    /// Replaces one VM's egress policy on a running VM. The VM's chain (all its interfaces) is
    /// replaced in one nftables transaction; nothing else changes, and established flows are
    /// kept (return traffic is accepted before any policy). With domains, the resolver is
    /// started (none before), updated (its allowlist swapped at once, addresses of names no
    /// longer allowed removed from the set) or stopped (no domains any more), and the
    /// interfaces' [`VmInterface::dns_server`] follows.
    pub async fn set_vm_policy(&mut self, vm_id: &str, policy: EgressPolicy) -> Result<()> {
        let compiled = policy.compile()?;
        let Some(vm) = self.state.vms.get(vm_id).cloned() else {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("VM {vm_id} has no network"),
            ));
        };
        self.check_inspection(&compiled)?;
        let clients: Vec<Ipv4Addr> = vm.interfaces.iter().map(|i| i.lease.guest_ip).collect();
        let old_compiled = vm.policy.compile()?;
        let mut started = None;
        let alive = vm
            .resolver
            .as_ref()
            .is_some_and(|r| self.kernel.resolver_running(r));
        let resolver = match (&vm.resolver, compiled.has_domains()) {
            (Some(r), true) if alive => {
                let cmd = Control::Update(self.resolver_policy(&compiled, clients.clone()));
                self.kernel.control_resolver(r, &cmd)?;
                Some(r.clone())
            }
            // No resolver yet, or its helper died: start one.
            (_, true) => {
                let Some(first) = vm.interfaces.first() else {
                    return Err(Error::new(
                        ErrorCode::InvalidState,
                        format!("VM {vm_id} has no interface"),
                    ));
                };
                let r =
                    self.start_resolver(vm_id, first.lease.gateway, clients.clone(), &compiled)?;
                started = Some(r.clone());
                Some(r)
            }
            (_, false) => None,
        };
        let rules: Vec<VmRules> = vm
            .interfaces
            .iter()
            .map(|i| VmRules {
                vm_id: vm_id.to_owned(),
                guest_ip: i.lease.guest_ip,
                device: self.pinned_device(&i.host_device),
                policy: compiled.clone(),
                dns: resolver.as_ref().map(vm_dns),
            })
            .collect();
        let batch = nft::vm_policy_batch(&self.state.config.table, &rules, vm.resolver.is_some());
        if let Err(e) = self.kernel.apply_nft(&batch).await {
            // Put the resolver back the way it was.
            if let Some(r) = &started {
                let _ = self.kernel.stop_resolver(r);
            } else if let (Some(r), true) = (&vm.resolver, old_compiled.has_domains()) {
                let cmd = Control::Update(self.resolver_policy(&old_compiled, clients));
                let _ = self.kernel.control_resolver(r, &cmd);
            }
            return Err(e);
        }
        let mut stop_error = None;
        if let (Some(old), None) = (&vm.resolver, &resolver)
            && let Err(e) = self.kernel.stop_resolver(old)
        {
            stop_error = Some(e);
        }
        if let Some(v) = self.state.vms.get_mut(vm_id) {
            v.policy = policy;
            v.resolver = resolver;
            let has = compiled.has_domains();
            for i in &mut v.interfaces {
                i.dns_server = has.then_some(i.lease.gateway);
            }
        }
        match stop_error {
            None => Ok(()),
            Some(e) => Err(Error::new(
                ErrorCode::CleanupFailed,
                format!("stopping the resolver of VM {vm_id}"),
            )
            .with_source(e)),
        }
    }

    /// Restarts the resolver of every domain VM whose helper is gone (a crash, a host reboot
    /// with the VMs brought back, a stray kill) and points the VM's DNS redirect at the new one
    /// (one transaction per VM). Until then such a VM fails closed: its DNS gets no answer and
    /// no new address is allowed. Returns the ids of the VMs whose resolver was restarted.
    pub async fn ensure_resolvers(&mut self) -> Result<Vec<String>> {
        let mut restarted = Vec::new();
        let vms: Vec<(String, VmNetwork)> = self
            .state
            .vms
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, vm) in vms {
            let Some(old) = &vm.resolver else {
                continue;
            };
            if self.kernel.resolver_running(old) {
                continue;
            }
            let compiled = vm.policy.compile()?;
            let clients = vm.interfaces.iter().map(|i| i.lease.guest_ip).collect();
            let new = self.start_resolver(&id, old.addr, clients, &compiled)?;
            let rules: Vec<VmRules> = vm
                .interfaces
                .iter()
                .map(|i| VmRules {
                    vm_id: id.clone(),
                    guest_ip: i.lease.guest_ip,
                    device: self.pinned_device(&i.host_device),
                    policy: compiled.clone(),
                    dns: Some(vm_dns(&new)),
                })
                .collect();
            let batch = nft::vm_policy_batch(&self.state.config.table, &rules, true);
            if let Err(e) = self.kernel.apply_nft(&batch).await {
                let _ = self.kernel.stop_resolver(&new);
                return Err(e);
            }
            if let Some(v) = self.state.vms.get_mut(&id) {
                v.resolver = Some(new);
            }
            restarted.push(id);
        }
        Ok(restarted)
    }

    /// Unplugs every interface of a VM and removes exactly its egress rules. Unknown VMs are
    /// [`ErrorCode::NotFound`].
    pub async fn remove_vm(&mut self, vm_id: &str) -> Result<()> {
        let Some(vm) = self.state.vms.get(vm_id).cloned() else {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("VM {vm_id} has no network"),
            ));
        };
        let mut first: Option<Error> = None;
        let pinned: Vec<(std::net::Ipv4Addr, Option<String>)> = vm
            .interfaces
            .iter()
            .map(|i| (i.lease.guest_ip, self.pinned_device(&i.host_device)))
            .collect();
        let refs: Vec<(std::net::Ipv4Addr, Option<&str>)> =
            pinned.iter().map(|(ip, d)| (*ip, d.as_deref())).collect();
        let batch = nft::remove_vm_batch_with(
            &self.state.config.table,
            vm_id,
            &refs,
            vm.resolver.is_some(),
        );
        if let Err(e) = self.kernel.apply_nft(&batch).await {
            first.get_or_insert(e);
        }
        if let Some(r) = &vm.resolver
            && let Err(e) = self.kernel.stop_resolver(r)
        {
            first.get_or_insert(e);
        }
        for i in &vm.interfaces {
            if let Some(e) = self.unplug(&i.lease, &i.host_device, i.created, None).await {
                first.get_or_insert(e);
            }
        }
        self.state.vms.remove(vm_id);
        self.alloc.release(vm_id);
        self.state.allocation = self.alloc.state();
        match first {
            None => Ok(()),
            Some(e) => Err(Error::new(
                ErrorCode::CleanupFailed,
                format!("removing the network of VM {vm_id}"),
            )
            .with_source(e)),
        }
    }

    /// Removes everything flick created: VM devices, WireGuard objects, the table, the bridge
    /// (only if flick created it), and restores `ip_forward`.
    /// Afterwards this value manages nothing; drop it.
    pub async fn teardown(&mut self) -> Result<()> {
        let mut first: Option<Error> = None;
        let vms: Vec<_> = self.state.vms.keys().cloned().collect();
        for vm in vms {
            if let Err(e) = self.remove_vm(&vm).await {
                first.get_or_insert(e);
            }
        }
        if self.state.wireguard.is_some()
            && let Err(e) = super::wireguard::disable(self).await
        {
            first.get_or_insert(e);
        }
        if let Err(e) = self
            .kernel
            .apply_nft(&nft::delete_table_batch(&self.state.config.table))
            .await
        {
            first.get_or_insert(e);
        }
        if self.state.config.mode == Mode::Bridge
            && let Ok(Some(i)) = self.kernel.link_index(&self.state.config.bridge).await
        {
            let r = if self.state.created_bridge {
                self.kernel.delete_link(i).await
            } else if self.state.added_gateway_address {
                self.kernel
                    .del_address(i, self.subnet.gateway(), self.subnet.prefix_len())
                    .await
            } else {
                Ok(())
            };
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        if !self.state.forwarding_before
            && let Err(e) = self.kernel.set_ipv4_forwarding(false).await
        {
            first.get_or_insert(e);
        }
        match first {
            None => Ok(()),
            Some(e) if e.code() == ErrorCode::CleanupFailed => Err(e),
            Some(e) => Err(Error::new(ErrorCode::CleanupFailed, "network cleanup").with_source(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::kernel::{Call, RecordingKernel};
    use std::net::Ipv4Addr;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn setup_add_remove_teardown_calls() {
        rt().block_on(async {
            let k = RecordingKernel::with_uplink("eth0");
            let mut net = HostNetwork::setup(k, NetworkConfig::default())
                .await
                .unwrap();
            let i = net
                .add_vm(VmRequest {
                    vm_id: "a".into(),
                    ..VmRequest::default()
                })
                .await
                .unwrap();
            assert_eq!(i.lease.guest_ip, Ipv4Addr::new(172, 30, 0, 2));
            assert!(i.created);
            let tap = i.host_device.clone();
            net.remove_vm("a").await.unwrap();
            let calls = net.kernel_mut().calls.clone();
            assert!(calls.contains(&Call::CreateBridge("flbr0".into())));
            assert!(calls.contains(&Call::CreateTap(tap.clone(), None, None)));
            assert!(calls.contains(&Call::SetController(tap.clone(), Some("flbr0".into()))));
            assert!(calls.contains(&Call::DeleteLink(tap.clone())));
            net.teardown().await.unwrap();
        });
    }

    #[test]
    fn teardown_keeps_foreign_bridge_and_forwarding() {
        rt().block_on(async {
            let mut k = RecordingKernel::with_uplink("eth0");
            k.links.insert("flbr0".into(), 5);
            k.forwarding = true;
            let mut net = HostNetwork::setup(k, NetworkConfig::default())
                .await
                .unwrap();
            net.add_vm(VmRequest {
                vm_id: "a".into(),
                ..VmRequest::default()
            })
            .await
            .unwrap();
            assert!(!net.state().created_bridge);
            net.teardown().await.unwrap();
            let calls = &net.kernel_mut().calls;
            assert!(!calls.contains(&Call::CreateBridge("flbr0".into())));
            assert!(!calls.contains(&Call::DeleteLink("flbr0".into())));
            assert!(!calls.contains(&Call::SetForwarding(false)));
            // the gateway address flick added to the foreign bridge is removed again
            assert!(calls.contains(&Call::DelAddress(
                "flbr0".into(),
                Ipv4Addr::new(172, 30, 0, 1),
                24
            )));
        });
    }

    #[test]
    fn teardown_removes_what_flick_created() {
        rt().block_on(async {
            let k = RecordingKernel::with_uplink("eth0");
            let mut net = HostNetwork::setup(k, NetworkConfig::default())
                .await
                .unwrap();
            net.teardown().await.unwrap();
            let calls = &net.kernel_mut().calls;
            assert!(calls.contains(&Call::DeleteLink("flbr0".into())));
            assert!(calls.contains(&Call::SetForwarding(false)));
            assert!(!net.kernel_mut().links.contains_key("flbr0"));
        });
    }

    #[test]
    fn failed_tap_rolls_back_the_lease() {
        rt().block_on(async {
            let k = RecordingKernel::with_uplink("eth0");
            let mut net = HostNetwork::setup(k, NetworkConfig::default())
                .await
                .unwrap();
            net.kernel_mut().fail_on = Some("SetController".into());
            let e = net
                .add_vm(VmRequest {
                    vm_id: "a".into(),
                    ..VmRequest::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), ErrorCode::NetworkSetupFailed);
            assert!(net.state().vms.is_empty());
            assert!(net.state().allocation.leases.is_empty());
            let calls = &net.kernel_mut().calls;
            let tap = calls
                .iter()
                .find_map(|c| match c {
                    Call::CreateTap(n, ..) => Some(n.clone()),
                    _ => None,
                })
                .unwrap();
            assert!(calls.contains(&Call::DeleteLink(tap)));
            // the next VM gets the first address again
            let i = net
                .add_vm(VmRequest {
                    vm_id: "b".into(),
                    ..VmRequest::default()
                })
                .await
                .unwrap();
            assert_eq!(i.lease.guest_ip, Ipv4Addr::new(172, 30, 0, 2));
        });
    }

    #[test]
    fn every_policy_change_is_one_nft_batch() {
        rt().block_on(async {
            let k = RecordingKernel::with_uplink("eth0");
            let mut net = HostNetwork::setup(k, NetworkConfig::default())
                .await
                .unwrap();
            net.add_vm(VmRequest {
                vm_id: "a".into(),
                ..VmRequest::default()
            })
            .await
            .unwrap();
            let nft_calls =
                |k: &RecordingKernel| k.calls.iter().filter(|c| matches!(c, Call::Nft(_))).count();
            let before = nft_calls(net.kernel_mut());
            let rules: Vec<String> = (0..1000)
                .map(|i| format!(r#"{{"action":"deny","to":"10.0.{}.{}"}}"#, i / 250, i % 250))
                .collect();
            let big =
                EgressPolicy::from_json(&format!(r#"{{"rules":[{}]}}"#, rules.join(","))).unwrap();
            net.set_host_policy(big.clone()).await.unwrap();
            assert_eq!(nft_calls(net.kernel_mut()), before + 1);
            net.set_vm_policy("a", big).await.unwrap();
            assert_eq!(nft_calls(net.kernel_mut()), before + 2);
            let Call::Nft(last) = net.kernel_mut().calls.last().unwrap().clone() else {
                panic!("nft batch expected")
            };
            // flush + re-add: replacing a VM's policy never appends a second copy
            assert!(last.to_string().contains("\"flush\""));
            assert_eq!(
                net.set_vm_policy("nope", EgressPolicy::default())
                    .await
                    .unwrap_err()
                    .code(),
                ErrorCode::NotFound
            );
        });
    }

    #[test]
    fn a_host_device_serves_one_vm() {
        rt().block_on(async {
            let mut k = RecordingKernel::with_uplink("eth0");
            k.links.insert("vethx".into(), 9);
            let mut net = HostNetwork::setup(k, NetworkConfig::default())
                .await
                .unwrap();
            let req = |id: &str| VmRequest {
                vm_id: id.into(),
                host_device: Some("vethx".into()),
                ..VmRequest::default()
            };
            let i = net.add_vm(req("a")).await.unwrap();
            assert!(!i.created);
            let e = net.add_vm(req("b")).await.unwrap_err();
            assert_eq!(e.code(), ErrorCode::AlreadyExists);
            net.remove_vm("a").await.unwrap();
            let calls = &net.kernel_mut().calls;
            assert!(
                !calls.contains(&Call::DeleteLink("vethx".into())),
                "not flick's to delete"
            );
            assert!(
                calls.contains(&Call::SetController("vethx".into(), None)),
                "detached"
            );
            net.add_vm(req("b")).await.unwrap();
        });
    }

    #[test]
    fn failed_nft_undoes_setup() {
        rt().block_on(async {
            let mut k = RecordingKernel::with_uplink("eth0");
            k.fail_on = Some("Nft".into());
            let e = HostNetwork::setup(k, NetworkConfig::default())
                .await
                .unwrap_err();
            assert_eq!(e.code(), ErrorCode::NetworkSetupFailed);
        });
    }

    #[test]
    fn invalid_config_makes_no_calls() {
        rt().block_on(async {
            for cfg in [
                NetworkConfig {
                    subnet: "10.0.0.0/31".into(),
                    ..NetworkConfig::default()
                },
                NetworkConfig {
                    bridge: "way-too-long-bridge".into(),
                    ..NetworkConfig::default()
                },
                NetworkConfig {
                    table: "bad table".into(),
                    ..NetworkConfig::default()
                },
                NetworkConfig {
                    host_policy: EgressPolicy::from_json(
                        r#"{"rules":[{"action":"allow","protocol":"icmp","ports":1}]}"#,
                    )
                    .unwrap(),
                    ..NetworkConfig::default()
                },
                NetworkConfig {
                    host_policy: EgressPolicy::from_json(r#"{"allow_domains":["a.example"]}"#)
                        .unwrap(),
                    ..NetworkConfig::default()
                },
                NetworkConfig {
                    dns_upstreams: vec!["resolver.example".into()],
                    ..NetworkConfig::default()
                },
                NetworkConfig {
                    dns_ttl: TtlLimits {
                        min: 0,
                        ..TtlLimits::default()
                    },
                    ..NetworkConfig::default()
                },
            ] {
                let k = RecordingKernel::with_uplink("eth0");
                assert!(HostNetwork::setup(k, cfg).await.is_err());
            }
        });
    }

    #[test]
    fn state_round_trips() {
        rt().block_on(async {
            let k = RecordingKernel::with_uplink("eth0");
            let mut net = HostNetwork::setup(
                k,
                NetworkConfig {
                    mode: Mode::Isolated,
                    subnet: "10.60.0.0/24".into(),
                    ..NetworkConfig::default()
                },
            )
            .await
            .unwrap();
            let i = net
                .add_vm(VmRequest {
                    vm_id: "a".into(),
                    ..VmRequest::default()
                })
                .await
                .unwrap();
            assert_eq!(
                i.boot_arg(),
                "ip=10.60.0.2::10.60.0.1:255.255.255.252::eth0:off"
            );
            let json = serde_json::to_string(net.state()).unwrap();
            let state: NetworkState = serde_json::from_str(&json).unwrap();
            let mut back =
                HostNetwork::restore(RecordingKernel::with_uplink("eth0"), state).unwrap();
            assert_eq!(back.state(), net.state());
            let j = back
                .add_vm(VmRequest {
                    vm_id: "b".into(),
                    ..VmRequest::default()
                })
                .await
                .unwrap();
            assert_eq!(j.lease.guest_ip, Ipv4Addr::new(10, 60, 0, 6));
        });
    }

    fn domain_config() -> NetworkConfig {
        NetworkConfig {
            dns_upstreams: vec!["10.9.9.9".into()],
            ..NetworkConfig::default()
        }
    }

    fn domains(json: &str) -> EgressPolicy {
        EgressPolicy::from_json(json).unwrap()
    }

    fn last_nft(k: &RecordingKernel) -> String {
        k.calls
            .iter()
            .rev()
            .find_map(|c| match c {
                Call::Nft(v) => Some(v.to_string()),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn domain_vm_resolver_lifecycle() {
        rt().block_on(async {
            let k = RecordingKernel::with_uplink("eth0");
            let mut net = HostNetwork::setup(k, domain_config()).await.unwrap();
            let set = nft::domain_set("a");
            let i = net
                .add_vm(VmRequest {
                    vm_id: "a".into(),
                    policy: Some(domains(r#"{"allow_domains":["*.example.com"]}"#)),
                    ..VmRequest::default()
                })
                .await
                .unwrap();
            assert_eq!(i.dns_server, Some(Ipv4Addr::new(172, 30, 0, 1)));
            assert_eq!(
                i.boot_arg(),
                "ip=172.30.0.2::172.30.0.1:255.255.255.0::eth0:off:172.30.0.1"
            );
            let calls = net.kernel_mut().calls.clone();
            let start = calls
                .iter()
                .position(|c| *c == Call::StartResolver(set.clone()))
                .expect("resolver started");
            let up = calls
                .iter()
                .position(|c| *c == Call::SetUp(i.host_device.clone()))
                .unwrap();
            assert!(start < up, "resolver before the device goes up");
            let batch = last_nft(net.kernel_mut());
            for want in [&set, "dnat", "dns_vms", "\"timeout\"", "853"] {
                assert!(batch.contains(want), "{want} in {batch}");
            }
            let r = net.state().vms["a"].resolver.clone().unwrap();

            // New allowlist: the running resolver is updated, not restarted.
            net.set_vm_policy("a", domains(r#"{"allow_domains":["x.example.org"]}"#))
                .await
                .unwrap();
            let Some(Call::ControlResolver(s, Control::Update(p))) = net
                .kernel_mut()
                .calls
                .iter()
                .rev()
                .find(|c| matches!(c, Call::ControlResolver(..)))
                .cloned()
            else {
                panic!("update expected")
            };
            assert_eq!(s, set);
            assert_eq!(p.domains[0].to_string(), "x.example.org");
            assert_eq!(p.clients, vec![Ipv4Addr::new(172, 30, 0, 2)]);
            assert_eq!(net.state().vms["a"].resolver.as_ref(), Some(&r));

            // Replacing the whole table asks the resolver to refill its set.
            net.set_host_policy(EgressPolicy::default()).await.unwrap();
            assert_eq!(
                net.kernel_mut().calls.last(),
                Some(&Call::ControlResolver(set.clone(), Control::Resync))
            );

            // Domains off: one batch retires the redirect and the set, then the helper stops.
            net.set_vm_policy("a", EgressPolicy::default())
                .await
                .unwrap();
            let batch = last_nft(net.kernel_mut());
            assert!(batch.contains("\"delete\""), "{batch}");
            assert!(batch.contains(&set), "{batch}");
            assert_eq!(
                net.kernel_mut().calls.last(),
                Some(&Call::StopResolver(set.clone()))
            );
            assert!(net.state().vms["a"].resolver.is_none());
            assert_eq!(net.state().vms["a"].interfaces[0].dns_server, None);

            // On again, then removal stops it.
            net.set_vm_policy("a", domains(r#"{"allow_domains":["a.example"]}"#))
                .await
                .unwrap();
            assert!(net.state().vms["a"].resolver.is_some());
            net.remove_vm("a").await.unwrap();
            let calls = &net.kernel_mut().calls;
            assert_eq!(
                calls
                    .iter()
                    .filter(|c| **c == Call::StartResolver(set.clone()))
                    .count(),
                2
            );
            let started = calls
                .iter()
                .rposition(|c| *c == Call::StartResolver(set.clone()))
                .unwrap();
            let stopped = calls
                .iter()
                .rposition(|c| *c == Call::StopResolver(set.clone()))
                .unwrap();
            assert!(stopped > started, "remove_vm stops the resolver");
        });
    }

    #[test]
    fn failed_firewall_stops_the_new_resolver() {
        rt().block_on(async {
            let k = RecordingKernel::with_uplink("eth0");
            let mut net = HostNetwork::setup(k, domain_config()).await.unwrap();
            net.kernel_mut().fail_on = Some("Nft".into());
            let e = net
                .add_vm(VmRequest {
                    vm_id: "a".into(),
                    policy: Some(domains(r#"{"allow_domains":["a.example"]}"#)),
                    ..VmRequest::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), ErrorCode::NetworkSetupFailed);
            assert!(net.state().vms.is_empty());
            assert!(net.state().allocation.leases.is_empty());
            let set = nft::domain_set("a");
            assert!(
                net.kernel_mut()
                    .calls
                    .contains(&Call::StopResolver(set.clone()))
            );

            // A failed policy change on a running VM puts the old allowlist back.
            net.add_vm(VmRequest {
                vm_id: "b".into(),
                policy: Some(domains(r#"{"allow_domains":["old.example"]}"#)),
                ..VmRequest::default()
            })
            .await
            .unwrap();
            net.kernel_mut().fail_on = Some("Nft".into());
            net.set_vm_policy("b", domains(r#"{"allow_domains":["new.example"]}"#))
                .await
                .unwrap_err();
            let Some(Call::ControlResolver(_, Control::Update(p))) =
                net.kernel_mut().calls.last().cloned()
            else {
                panic!("rollback update expected")
            };
            assert_eq!(p.domains[0].to_string(), "old.example");
            assert_eq!(
                net.state().vms["b"].policy,
                domains(r#"{"allow_domains":["old.example"]}"#)
            );
        });
    }

    #[test]
    fn a_second_interface_joins_the_resolver() {
        rt().block_on(async {
            let k = RecordingKernel::with_uplink("eth0");
            let mut net = HostNetwork::setup(k, domain_config()).await.unwrap();
            let p = domains(r#"{"allow_domains":["a.example"]}"#);
            for iface in ["eth0", "eth1"] {
                net.add_vm(VmRequest {
                    vm_id: "a".into(),
                    iface_id: iface.into(),
                    policy: Some(p.clone()),
                    ..VmRequest::default()
                })
                .await
                .unwrap();
            }
            let calls = &net.kernel_mut().calls;
            assert_eq!(
                calls
                    .iter()
                    .filter(|c| matches!(c, Call::StartResolver(_)))
                    .count(),
                1
            );
            let Some(Call::ControlResolver(_, Control::Update(u))) = calls
                .iter()
                .rev()
                .find(|c| matches!(c, Call::ControlResolver(..)))
            else {
                panic!("client update expected")
            };
            assert_eq!(u.clients.len(), 2);
            let json = serde_json::to_string(net.state()).unwrap();
            let back: NetworkState = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, net.state(), "resolver state persists");
        });
    }

    #[test]
    fn dead_resolvers_are_restarted() {
        rt().block_on(async {
            let k = RecordingKernel::with_uplink("eth0");
            let mut net = HostNetwork::setup(k, domain_config()).await.unwrap();
            net.add_vm(VmRequest {
                vm_id: "a".into(),
                policy: Some(domains(r#"{"allow_domains":["a.example"]}"#)),
                ..VmRequest::default()
            })
            .await
            .unwrap();
            net.add_vm(VmRequest {
                vm_id: "b".into(),
                ..VmRequest::default()
            })
            .await
            .unwrap();
            assert!(
                net.ensure_resolvers().await.unwrap().is_empty(),
                "all alive"
            );
            let old = net.state().vms["a"].resolver.clone().unwrap();
            net.kernel_mut().dead_resolvers.push(old.set.clone());
            assert_eq!(net.ensure_resolvers().await.unwrap(), vec!["a".to_owned()]);
            let new = net.state().vms["a"].resolver.clone().unwrap();
            assert_ne!(new.port, old.port);
            let batch = last_nft(net.kernel_mut());
            assert!(batch.contains(&format!("\"port\":{}", new.port)), "{batch}");
        });
    }

    #[test]
    fn a_policy_change_replaces_a_dead_resolver() {
        rt().block_on(async {
            let k = RecordingKernel::with_uplink("eth0");
            let mut net = HostNetwork::setup(k, domain_config()).await.unwrap();
            net.add_vm(VmRequest {
                vm_id: "a".into(),
                policy: Some(domains(r#"{"allow_domains":["a.example"]}"#)),
                ..VmRequest::default()
            })
            .await
            .unwrap();
            let old = net.state().vms["a"].resolver.clone().unwrap();
            net.kernel_mut().dead_resolvers.push(old.set.clone());
            net.set_vm_policy("a", domains(r#"{"allow_domains":["b.example"]}"#))
                .await
                .unwrap();
            let new = net.state().vms["a"].resolver.clone().unwrap();
            assert_ne!(new.port, old.port, "a new helper");
            let calls = &net.kernel_mut().calls;
            assert_eq!(
                calls
                    .iter()
                    .filter(|c| matches!(c, Call::StartResolver(_)))
                    .count(),
                2
            );
            assert!(
                !calls.iter().any(|c| matches!(c, Call::ControlResolver(..))),
                "the dead one is not asked"
            );
        });
    }
}
