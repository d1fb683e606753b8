//! The kernel touchpoints of host networking, behind one small trait.
//!
//! [`NetKernel`] is everything [`super::HostNetwork`] asks of the kernel: links, addresses,
//! routes and policy rules (netlink), TAP creation (TUN ioctls), IPv4 forwarding (the per-netns
//! sysctl file) and nftables batches (`nft -j -f -`). [`Netlink`] is the real implementation;
//! [`RecordingKernel`] is an in-memory fake that records every call, used to unit-test the
//! orchestration logic (rollback, what cleanup removes) without privileges. Behaviour against
//! the real kernel is tested in network namespaces (`crates/flick/tests/net_*.rs`).
//!
//! Everything acts on the network namespace of the calling thread (the netlink socket is bound
//! to the namespace it was opened in).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::{IpVersion, LinkBridge, LinkUnspec, RouteMessageBuilder};
use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};

/// The kernel operations host networking needs. Methods act on the calling thread's network
/// namespace.
// The futures are awaited by concrete callers only; no `Send` bound is promised.
#[allow(async_fn_in_trait)]
pub trait NetKernel {
    /// The index of the link called `name`, if it exists.
    async fn link_index(&mut self, name: &str) -> Result<Option<u32>>;
    /// The hardware address of the link called `name`, if it exists.
    async fn link_mac(&mut self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Creates a bridge (down) and returns its index.
    async fn create_bridge(&mut self, name: &str) -> Result<u32>;
    /// Creates a persistent TAP with optional owner/group and returns its index.
    async fn create_tap(
        &mut self,
        name: &str,
        owner: Option<u32>,
        group: Option<u32>,
    ) -> Result<u32>;
    /// Adds an IPv4 address to a link; `false` if it was already there.
    async fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<bool>;
    /// Removes an IPv4 address from a link (no error if it is gone).
    async fn del_address(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<()>;
    /// Sets a link up.
    async fn set_up(&mut self, index: u32) -> Result<()>;
    /// Attaches a link to a bridge, or detaches it with `None`.
    async fn set_controller(&mut self, index: u32, bridge: Option<u32>) -> Result<()>;
    /// Deletes a link.
    async fn delete_link(&mut self, index: u32) -> Result<()>;
    /// Sets `net.ipv4.ip_forward` and returns the previous value.
    async fn set_ipv4_forwarding(&mut self, on: bool) -> Result<bool>;
    /// The name of the interface the IPv4 default route of the main table uses.
    async fn default_route_interface(&mut self) -> Result<Option<String>>;
    /// Adds `<dst> dev <index> metric <metric>` (a blackhole route when `index` is `None`) to
    /// `table` (no error if it is already there).
    async fn add_route(
        &mut self,
        table: u32,
        dst: Ipv4Net,
        index: Option<u32>,
        metric: u32,
    ) -> Result<()>;
    /// Removes what [`NetKernel::add_route`] added (no error if it is gone).
    async fn del_route(
        &mut self,
        table: u32,
        dst: Ipv4Net,
        index: Option<u32>,
        metric: u32,
    ) -> Result<()>;
    /// Adds a policy rule (no error if an identical one exists).
    async fn add_rule(&mut self, rule: &PolicyRule) -> Result<()>;
    /// Removes a policy rule (no error if it is gone).
    async fn del_rule(&mut self, rule: &PolicyRule) -> Result<()>;
    /// Applies one nftables JSON batch as one transaction.
    async fn apply_nft(&mut self, batch: &Value) -> Result<()>;
    /// Starts a VM's resolver helper (see [`super::dns::start`]).
    fn start_resolver(
        &mut self,
        spec: &super::dns::ResolverSpec,
        helper: &std::path::Path,
    ) -> Result<super::dns::ResolverState> {
        super::dns::start(spec, helper)
    }
    /// Sends a command to a running resolver (see [`super::dns::control`]).
    fn control_resolver(
        &mut self,
        state: &super::dns::ResolverState,
        cmd: &super::dns::Control,
    ) -> Result<()> {
        super::dns::control(state, cmd)
    }
    /// Stops a resolver helper (see [`super::dns::stop`]).
    fn stop_resolver(&mut self, state: &super::dns::ResolverState) -> Result<()> {
        super::dns::stop(state)
    }
    /// Whether a resolver helper is still running (see [`super::dns::is_running`]).
    fn resolver_running(&mut self, state: &super::dns::ResolverState) -> bool {
        super::dns::is_running(state)
    }
}

/// `from <from> [to <to>] lookup <table> pref <priority>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRule {
    /// Source network.
    pub from: Ipv4Net,
    /// Destination network, if any.
    pub to: Option<Ipv4Net>,
    /// The table to look up.
    pub table: u32,
    /// The rule priority.
    pub priority: u32,
}

fn nl_err(code: ErrorCode, what: String, err: rtnetlink::Error) -> Error {
    let os = match &err {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    };
    Error::new(code, what)
        .with_details(serde_json::json!({ "os_error": os }))
        .with_source(err)
}

fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// The MAC flick gives a bridge it creates (so a later run recognizes its own bridge).
#[must_use]
pub fn bridge_mac(name: &str) -> Vec<u8> {
    super::plan::mac_address("bridge", name)
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex MAC"))
        .collect()
}

/// The real kernel: rtnetlink for links/addresses/routes/rules, ioctls for TAPs, `nft` for
/// the firewall.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a netlink connection in the calling thread's network namespace and drives it on
    /// the current tokio runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| {
            Error::new(ErrorCode::NetworkSetupFailed, "open a netlink socket").with_source(e)
        })?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err(
                ErrorCode::NetworkSetupFailed,
                format!("look up link {name}"),
                e,
            )),
        }
    }

    async fn link_name(&self, index: u32) -> Result<Option<String>> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl_err(
                ErrorCode::NetworkSetupFailed,
                format!("look up link {index}"),
                e,
            )),
        }
    }

    fn route_msg(
        table: u32,
        dst: Ipv4Net,
        index: Option<u32>,
        metric: u32,
    ) -> rtnetlink::packet_route::route::RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .table_id(table)
            .priority(metric);
        b = match index {
            Some(i) => b.output_interface(i),
            None => b.kind(RouteType::BlackHole),
        };
        b.build()
    }

    async fn find_rule(
        &self,
        rule: &PolicyRule,
    ) -> Result<Option<rtnetlink::packet_route::rule::RuleMessage>> {
        let mut rules = self.handle.rule().get(IpVersion::V4).execute();
        while let Some(r) = rules
            .try_next()
            .await
            .map_err(|e| nl_err(ErrorCode::NetworkSetupFailed, "list rules".into(), e))?
        {
            let mut src = None;
            let mut dst = None;
            let mut prio = None;
            let mut tbl = u32::from(r.header.table);
            for a in &r.attributes {
                match a {
                    RuleAttribute::Source(std::net::IpAddr::V4(ip)) => src = Some(*ip),
                    RuleAttribute::Destination(std::net::IpAddr::V4(ip)) => dst = Some(*ip),
                    RuleAttribute::Priority(p) => prio = Some(*p),
                    RuleAttribute::Table(t) => tbl = *t,
                    _ => {}
                }
            }
            let want_dst = rule.to.map(|t| (t.network(), t.prefix_len()));
            let have_dst = dst.map(|d| (d, r.header.dst_len));
            if src == Some(rule.from.network())
                && r.header.src_len == rule.from.prefix_len()
                && have_dst == want_dst
                && prio == Some(rule.priority)
                && tbl == rule.table
            {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }
}

impl NetKernel for Netlink {
    async fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        Ok(self.link_by_name(name).await?.map(|m| m.header.index))
    }

    async fn link_mac(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.link_by_name(name).await?.and_then(|m| {
            m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::Address(mac) => Some(mac),
                _ => None,
            })
        }))
    }

    async fn create_bridge(&mut self, name: &str) -> Result<u32> {
        // A fixed MAC: otherwise the bridge takes the lowest port MAC, which changes whenever a
        // TAP comes or goes and leaves stale gateway entries in the guests' ARP caches.
        let msg = LinkBridge::new(name)
            .down()
            .address(bridge_mac(name))
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            nl_err(
                ErrorCode::BridgeSetupFailed,
                format!("create bridge {name}"),
                e,
            )
        })?;
        self.link_index(name).await?.ok_or_else(|| {
            Error::new(
                ErrorCode::BridgeSetupFailed,
                format!("bridge {name} vanished after creation"),
            )
        })
    }

    async fn create_tap(
        &mut self,
        name: &str,
        owner: Option<u32>,
        group: Option<u32>,
    ) -> Result<u32> {
        super::tap::create_persistent_tap(name, owner, group)?;
        self.link_index(name).await?.ok_or_else(|| {
            Error::new(
                ErrorCode::TapCreateFailed,
                format!("TAP {name} vanished after creation"),
            )
        })
    }

    async fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<bool> {
        match self
            .handle
            .address()
            .add(index, addr.into(), prefix_len)
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(nl_err(
                ErrorCode::NetworkSetupFailed,
                format!("add {addr}/{prefix_len} to link {index}"),
                e,
            )),
        }
    }

    async fn del_address(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr.into())
            .execute();
        while let Some(m) = s.try_next().await.map_err(|e| {
            nl_err(
                ErrorCode::CleanupFailed,
                format!("list addresses of link {index}"),
                e,
            )
        })? {
            if m.header.prefix_len != prefix_len {
                continue;
            }
            match self.handle.address().del(m).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => {
                    return Err(nl_err(
                        ErrorCode::CleanupFailed,
                        format!("remove {addr}/{prefix_len} from link {index}"),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    async fn set_up(&mut self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| {
                nl_err(
                    ErrorCode::NetworkSetupFailed,
                    format!("set link {index} up"),
                    e,
                )
            })
    }

    async fn set_controller(&mut self, index: u32, bridge: Option<u32>) -> Result<()> {
        let b = LinkUnspec::new_with_index(index);
        let msg = match bridge {
            Some(br) => b.controller(br).build(),
            None => b.nocontroller().build(),
        };
        self.handle.link().set(msg).execute().await.map_err(|e| {
            nl_err(
                ErrorCode::NetworkSetupFailed,
                format!("set the bridge of link {index}"),
                e,
            )
        })
    }

    async fn delete_link(&mut self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => {
                let name = self
                    .link_name(index)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                Err(nl_err(
                    ErrorCode::CleanupFailed,
                    format!("delete link {index} {name}"),
                    e,
                ))
            }
        }
    }

    async fn set_ipv4_forwarding(&mut self, on: bool) -> Result<bool> {
        // /proc/sys/net is resolved against the calling thread's network namespace.
        let path = std::path::Path::new("/proc/sys/net/ipv4/ip_forward");
        let old = std::fs::read_to_string(path)
            .map_err(|e| Error::io(ErrorCode::NetworkSetupFailed, "read", path, e))?;
        let want = if on { "1\n" } else { "0\n" };
        std::fs::write(path, want)
            .map_err(|e| Error::io(ErrorCode::NetworkSetupFailed, "write", path, e))?;
        Ok(old.trim() == "1")
    }

    async fn default_route_interface(&mut self) -> Result<Option<String>> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(query).execute();
        let mut best: Option<(u32, u32)> = None;
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(|e| nl_err(ErrorCode::NetworkSetupFailed, "list routes".into(), e))?
        {
            if r.header.destination_prefix_length != 0
                || r.header.table != rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN
                || r.header.kind != RouteType::Unicast
            {
                continue;
            }
            let mut oif = None;
            let mut metric = 0;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Priority(p) => metric = *p,
                    RouteAttribute::Destination(RouteAddress::Inet(d)) if !d.is_unspecified() => {
                        oif = None;
                        break;
                    }
                    _ => {}
                }
            }
            if let Some(i) = oif
                && best.is_none_or(|(m, _)| metric < m)
            {
                best = Some((metric, i));
            }
        }
        match best {
            Some((_, i)) => self.link_name(i).await,
            None => Ok(None),
        }
    }

    async fn add_route(
        &mut self,
        table: u32,
        dst: Ipv4Net,
        index: Option<u32>,
        metric: u32,
    ) -> Result<()> {
        let msg = Self::route_msg(table, dst, index, metric);
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(nl_err(
                ErrorCode::NetworkSetupFailed,
                format!("add route {dst} to table {table}"),
                e,
            )),
        }
    }

    async fn del_route(
        &mut self,
        table: u32,
        dst: Ipv4Net,
        index: Option<u32>,
        metric: u32,
    ) -> Result<()> {
        let msg = Self::route_msg(table, dst, index, metric);
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENODEV | libc::ENOENT)) => {
                Ok(())
            }
            Err(e) => Err(nl_err(
                ErrorCode::CleanupFailed,
                format!("remove route {dst} from table {table}"),
                e,
            )),
        }
    }

    async fn add_rule(&mut self, rule: &PolicyRule) -> Result<()> {
        if self.find_rule(rule).await?.is_some() {
            return Ok(());
        }
        let mut req = self
            .handle
            .rule()
            .add()
            .v4()
            .source_prefix(rule.from.network(), rule.from.prefix_len())
            .table_id(rule.table)
            .priority(rule.priority)
            // Without an explicit action the kernel stores RuleAction::Unspec and every lookup
            // that hits the rule fails with EINVAL.
            .action(RuleAction::ToTable);
        if let Some(to) = rule.to {
            req = req.destination_prefix(to.network(), to.prefix_len());
        }
        req.execute().await.map_err(|e| {
            nl_err(
                ErrorCode::NetworkSetupFailed,
                format!("add rule from {} lookup {}", rule.from, rule.table),
                e,
            )
        })
    }

    async fn del_rule(&mut self, rule: &PolicyRule) -> Result<()> {
        let Some(msg) = self.find_rule(rule).await? else {
            return Ok(());
        };
        self.handle.rule().del(msg).execute().await.map_err(|e| {
            nl_err(
                ErrorCode::CleanupFailed,
                format!("remove rule from {} lookup {}", rule.from, rule.table),
                e,
            )
        })
    }

    async fn apply_nft(&mut self, batch: &Value) -> Result<()> {
        let batch = batch.clone();
        // `nft` inherits the namespace of the thread that spawns it, so run it right here
        // instead of on a blocking pool thread.
        super::nft::apply(&batch)
    }
}

/// One call recorded by [`RecordingKernel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// [`NetKernel::create_bridge`].
    CreateBridge(String),
    /// [`NetKernel::create_tap`].
    CreateTap(String, Option<u32>, Option<u32>),
    /// [`NetKernel::add_address`].
    AddAddress(String, Ipv4Addr, u8),
    /// [`NetKernel::del_address`].
    DelAddress(String, Ipv4Addr, u8),
    /// [`NetKernel::set_up`].
    SetUp(String),
    /// [`NetKernel::set_controller`].
    SetController(String, Option<String>),
    /// [`NetKernel::delete_link`].
    DeleteLink(String),
    /// [`NetKernel::set_ipv4_forwarding`].
    SetForwarding(bool),
    /// [`NetKernel::add_route`] (table, destination, device; `None` = blackhole).
    AddRoute(u32, Ipv4Net, Option<String>),
    /// [`NetKernel::del_route`].
    DelRoute(u32, Ipv4Net, Option<String>),
    /// [`NetKernel::add_rule`].
    AddRule(PolicyRule),
    /// [`NetKernel::del_rule`].
    DelRule(PolicyRule),
    /// [`NetKernel::apply_nft`].
    Nft(Value),
    /// [`NetKernel::start_resolver`] (the set name).
    StartResolver(String),
    /// [`NetKernel::control_resolver`] (the set name and the command).
    ControlResolver(String, super::dns::Control),
    /// [`NetKernel::stop_resolver`] (the set name).
    StopResolver(String),
}

/// An in-memory kernel that records every call, for unit tests of the orchestration logic.
/// `fail_on` makes the first call whose debug text contains that string fail.
#[derive(Debug, Default, Clone)]
pub struct RecordingKernel {
    /// Every call, in order.
    pub calls: Vec<Call>,
    /// Existing links by name.
    pub links: BTreeMap<String, u32>,
    /// The interface of the default route.
    pub uplink: Option<String>,
    /// `ip_forward`.
    pub forwarding: bool,
    /// Makes the first call whose `Debug` text contains this string fail.
    pub fail_on: Option<String>,
    /// Resolvers (by set name) that [`NetKernel::resolver_running`] reports as gone.
    pub dead_resolvers: Vec<String>,
    next_index: u32,
}

impl RecordingKernel {
    /// A fake with an uplink called `uplink`.
    #[must_use]
    pub fn with_uplink(uplink: &str) -> Self {
        let mut k = Self {
            next_index: 10,
            ..Self::default()
        };
        k.links.insert("lo".into(), 1);
        k.links.insert(uplink.into(), 2);
        k.uplink = Some(uplink.into());
        k
    }

    fn name(&self, index: u32) -> String {
        self.links
            .iter()
            .find(|(_, i)| **i == index)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("#{index}"))
    }

    fn record(&mut self, call: Call) -> Result<()> {
        if let Some(f) = &self.fail_on
            && format!("{call:?}").contains(f.as_str())
        {
            self.fail_on = None;
            return Err(Error::new(
                ErrorCode::NetworkSetupFailed,
                format!("injected failure at {call:?}"),
            ));
        }
        self.calls.push(call);
        Ok(())
    }

    fn new_link(&mut self, name: &str) -> Result<u32> {
        if self.links.contains_key(name) {
            return Err(Error::new(
                ErrorCode::NetworkSetupFailed,
                format!("{name} exists"),
            ));
        }
        self.next_index += 1;
        self.links.insert(name.into(), self.next_index);
        Ok(self.next_index)
    }
}

impl NetKernel for RecordingKernel {
    async fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        Ok(self.links.get(name).copied())
    }
    async fn link_mac(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .links
            .contains_key(name)
            .then(|| vec![0x02, 0, 0, 0, 0, 1]))
    }
    async fn create_bridge(&mut self, name: &str) -> Result<u32> {
        self.record(Call::CreateBridge(name.into()))?;
        self.new_link(name)
    }
    async fn create_tap(
        &mut self,
        name: &str,
        owner: Option<u32>,
        group: Option<u32>,
    ) -> Result<u32> {
        self.record(Call::CreateTap(name.into(), owner, group))?;
        self.new_link(name)
    }
    async fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<bool> {
        let n = self.name(index);
        self.record(Call::AddAddress(n, addr, prefix_len))?;
        Ok(true)
    }
    async fn del_address(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let n = self.name(index);
        self.record(Call::DelAddress(n, addr, prefix_len))
    }
    async fn set_up(&mut self, index: u32) -> Result<()> {
        let n = self.name(index);
        self.record(Call::SetUp(n))
    }
    async fn set_controller(&mut self, index: u32, bridge: Option<u32>) -> Result<()> {
        let n = self.name(index);
        let b = bridge.map(|b| self.name(b));
        self.record(Call::SetController(n, b))
    }
    async fn delete_link(&mut self, index: u32) -> Result<()> {
        let n = self.name(index);
        self.record(Call::DeleteLink(n.clone()))?;
        self.links.remove(&n);
        Ok(())
    }
    async fn set_ipv4_forwarding(&mut self, on: bool) -> Result<bool> {
        self.record(Call::SetForwarding(on))?;
        Ok(std::mem::replace(&mut self.forwarding, on))
    }
    async fn default_route_interface(&mut self) -> Result<Option<String>> {
        Ok(self.uplink.clone())
    }
    async fn add_route(
        &mut self,
        table: u32,
        dst: Ipv4Net,
        index: Option<u32>,
        _metric: u32,
    ) -> Result<()> {
        let n = index.map(|i| self.name(i));
        self.record(Call::AddRoute(table, dst, n))
    }
    async fn del_route(
        &mut self,
        table: u32,
        dst: Ipv4Net,
        index: Option<u32>,
        _metric: u32,
    ) -> Result<()> {
        let n = index.map(|i| self.name(i));
        self.record(Call::DelRoute(table, dst, n))
    }
    async fn add_rule(&mut self, rule: &PolicyRule) -> Result<()> {
        self.record(Call::AddRule(*rule))
    }
    async fn del_rule(&mut self, rule: &PolicyRule) -> Result<()> {
        self.record(Call::DelRule(*rule))
    }
    async fn apply_nft(&mut self, batch: &Value) -> Result<()> {
        self.record(Call::Nft(batch.clone()))
    }
    fn start_resolver(
        &mut self,
        spec: &super::dns::ResolverSpec,
        _helper: &std::path::Path,
    ) -> Result<super::dns::ResolverState> {
        self.record(Call::StartResolver(spec.set.clone()))?;
        self.next_index += 1;
        Ok(super::dns::ResolverState {
            pid: 0,
            start_time: 0,
            addr: spec.listen,
            port: 40_000 + u16::try_from(self.next_index % 20_000).unwrap_or(0),
            proxy_port: 0,
            control: spec.control.clone(),
            set: spec.set.clone(),
        })
    }
    fn control_resolver(
        &mut self,
        state: &super::dns::ResolverState,
        cmd: &super::dns::Control,
    ) -> Result<()> {
        self.record(Call::ControlResolver(state.set.clone(), cmd.clone()))
    }
    fn stop_resolver(&mut self, state: &super::dns::ResolverState) -> Result<()> {
        self.record(Call::StopResolver(state.set.clone()))
    }
    fn resolver_running(&mut self, state: &super::dns::ResolverState) -> bool {
        !self.dead_resolvers.contains(&state.set)
    }
}
