//! nftables JSON batches for flick's one table.
//!
//! flick owns exactly one table (`inet flick` unless configured otherwise) and never touches any
//! other table or flushes the ruleset. Every change is one batch that `nft -j -f -` commits as a
//! single kernel transaction, so the firewall is never observed half-applied.
//!
//! Layout:
//!
//! ```text
//! table inet flick {
//!   map vm_policies { type ipv4_addr : verdict }       # guest address -> jump vm_<hash>
//!   set vm_sources { type ifname . ipv4_addr }          # isolation: TAP . guest address
//!   chain postrouting { nat hook, masquerade the pool out of the uplink (and the WireGuard link) }
//!   chain forward {                                     # filter hook forward
//!     ct state established,related accept               # return traffic of allowed flows
//!     [fail closed] ip saddr POOL ip daddr != POOL oifname != WG drop
//!     [isolation] ip saddr POOL iifname . ip saddr != @vm_sources counter drop
//!     ip saddr POOL jump egress
//!   }
//!   chain egress {
//!     ip saddr vmap @vm_policies                        # per-VM rules first
//!     <host-wide rules, first match wins>
//!     [isolation] ip daddr POOL drop                    # guest <-> guest only if a rule allowed it
//!     <default: accept | drop>
//!   }
//!   chain vm_<hash> { <the VM's rules> [its default] }  # falls back to egress when no default
//!
//!   # VMs with a domain policy (see `super::dns`) additionally get:
//!   map dns_vms { type ipv4_addr : verdict }            # guest address -> jump dns_<hash>
//!   chain prerouting { nat hook prerouting, priority dstnat: ip saddr vmap @dns_vms }
//!   chain dns_<hash> {
//!     fib daddr type local th dport 53 dnat ip to RESOLVER:PORT
//!     [inspect_names] <each VM rule> return; ip daddr @d_<hash> tcp dport { 80, 443 } dnat ip to RESOLVER:PROXY
//!   }
//!   set d_<hash> { type ipv4_addr; flags timeout }      # filled by the VM's resolver
//!   chain vm_<hash> {
//!     th dport { 53, 853 } drop                         # no DNS/DoT except flick's resolver
//!     <the VM's rules>                                  # a deny CIDR beats an allowed domain
//!     ip daddr @d_<hash> meta l4proto tcp accept
//!     drop
//!   }
//! }
//! ```
//!
//! [`full_batch`] replaces the whole table (add, delete, re-add in one transaction, so it works
//! whether or not the table exists). [`add_vm_batch`] and [`remove_vm_batch`] touch only one VM's
//! chain and map element, so removing a VM removes exactly its rules.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::firewall::{Action, CompiledPolicy, CompiledRule, Protocol};
use super::plan;
use crate::error::{Error, ErrorCode, Result};

/// The table name used when the caller does not pick one.
pub const DEFAULT_TABLE: &str = "flick";
/// The verdict map from guest address to per-VM chain.
pub const VM_MAP: &str = "vm_policies";
/// The set of (TAP, guest address) pairs allowed to send (isolation mode source pinning).
pub const VM_SOURCES: &str = "vm_sources";
/// The verdict map from guest address to the chain that redirects its DNS to its resolver.
pub const DNS_MAP: &str = "dns_vms";
/// The port guests send DNS queries to.
pub const DNS_PORT: u16 = 53;
/// The DNS-over-TLS port.
pub const DOT_PORT: u16 = 853;

/// Where WireGuard egress goes and whether other egress is blocked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardEgress {
    /// The WireGuard interface.
    pub interface: String,
    /// Drop forwarded VM traffic leaving through any other interface.
    pub fail_closed: bool,
}

/// Everything the host-wide part of the table depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableSpec {
    /// The table name (family `inet`).
    pub table: String,
    /// The VM address pool.
    pub pool: Ipv4Net,
    /// The bridge VM traffic arrives on (bridge mode); `None` in isolation mode.
    pub bridge: Option<String>,
    /// The uplink to masquerade out of; `None` when the host has no default route.
    pub uplink: Option<String>,
    /// Isolation mode: guest to guest traffic is dropped unless a rule allows it.
    pub isolation: bool,
    /// The host-wide egress policy.
    pub host_policy: CompiledPolicy,
    /// WireGuard egress, when active.
    pub wireguard: Option<WireguardEgress>,
}

/// One VM's part of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmRules {
    /// The VM id.
    pub vm_id: String,
    /// The guest address its packets come from.
    pub guest_ip: Ipv4Addr,
    /// Its own host device in isolation mode: only `guest_ip` may send from it.
    pub device: Option<String>,
    /// Its policy.
    pub policy: CompiledPolicy,
    /// Its resolver, when the policy names domains.
    pub dns: Option<VmDns>,
}

/// Where a VM's resolver listens (on the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDns {
    /// The host address it is bound to.
    pub addr: Ipv4Addr,
    /// Its UDP and TCP port.
    pub port: u16,
    /// Its name-checking proxy's TCP port (0: none).
    #[serde(default)]
    pub proxy_port: u16,
}

/// The ports whose connections the name-checking proxy inspects (HTTP, HTTPS).
pub const INSPECTED_PORTS: [u16; 2] = [80, 443];

/// The chain name of a VM's policy: `vm_` + a hash of its id.
#[must_use]
pub fn vm_chain(vm_id: &str) -> String {
    format!(
        "vm_{}",
        &plan::tap_name(vm_id, "egress", 0)[plan::TAP_PREFIX.len()..]
    )
}

fn hash_suffix(vm_id: &str) -> String {
    plan::tap_name(vm_id, "egress", 0)[plan::TAP_PREFIX.len()..].to_owned()
}

/// The chain that redirects a VM's DNS queries to its resolver: `dns_` + the hash of its id.
#[must_use]
pub fn dns_chain(vm_id: &str) -> String {
    format!("dns_{}", hash_suffix(vm_id))
}

/// The set of addresses a VM's resolver handed out: `d_` + the hash of its id.
#[must_use]
pub fn domain_set(vm_id: &str) -> String {
    format!("d_{}", hash_suffix(vm_id))
}

fn ip_field(field: &str) -> Value {
    json!({ "payload": { "protocol": "ip", "field": field } })
}

fn net_value(net: Ipv4Net) -> Value {
    if net.prefix_len() == 32 {
        json!(net.addr().to_string())
    } else {
        json!({ "prefix": { "addr": net.network().to_string(), "len": net.prefix_len() } })
    }
}

fn matches(op: &str, left: Value, right: Value) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("op".into(), Value::from(op));
    m.insert("left".into(), left);
    m.insert("right".into(), right);
    let mut outer = serde_json::Map::new();
    outer.insert("match".into(), Value::Object(m));
    Value::Object(outer)
}

fn verdict(action: Action) -> Value {
    match action {
        Action::Allow => json!({ "accept": null }),
        Action::Deny => json!({ "drop": null }),
    }
}

fn rule_exprs(rule: &CompiledRule) -> Vec<Value> {
    let mut exprs = Vec::new();
    if let Some(net) = rule.to.filter(|n| n.prefix_len() > 0) {
        exprs.push(matches("==", ip_field("daddr"), net_value(net)));
    }
    let proto = match rule.protocol {
        Protocol::All => None,
        Protocol::Tcp => Some("tcp"),
        Protocol::Udp => Some("udp"),
        Protocol::Icmp => Some("icmp"),
    };
    if let Some(p) = proto {
        if rule.ports.is_empty() {
            exprs.push(matches(
                "==",
                json!({ "meta": { "key": "l4proto" } }),
                json!(p),
            ));
        } else {
            let right = if rule.ports.len() == 1 {
                json!(rule.ports[0])
            } else {
                json!({ "set": rule.ports })
            };
            exprs.push(matches(
                "==",
                json!({ "payload": { "protocol": p, "field": "dport" } }),
                right,
            ));
        }
    }
    exprs.push(verdict(rule.action));
    exprs
}

struct Batch<'a> {
    table: &'a str,
    items: Vec<Value>,
}

impl<'a> Batch<'a> {
    fn new(table: &'a str) -> Self {
        Self {
            table,
            items: Vec::new(),
        }
    }

    fn cmd(&mut self, verb: &str, kind: &str, mut body: Value) {
        body["family"] = json!("inet");
        if kind == "table" {
            body["name"] = json!(self.table);
        } else {
            body["table"] = json!(self.table);
        }
        self.items.push(json!({ verb: { kind: body } }));
    }

    fn rule(&mut self, chain: &str, exprs: Vec<Value>, comment: Option<&str>) {
        let mut body = json!({ "chain": chain });
        body["expr"] = Value::Array(exprs);
        if let Some(c) = comment {
            body["comment"] = json!(c);
        }
        self.cmd("add", "rule", body);
    }

    fn chain(&mut self, name: &str) {
        self.cmd("add", "chain", json!({ "name": name }));
    }

    fn policy(&mut self, chain: &str, policy: &CompiledPolicy) {
        for r in &policy.rules {
            self.rule(chain, rule_exprs(r), r.comment.as_deref());
        }
    }

    fn finish(self) -> Value {
        json!({ "nftables": self.items })
    }
}

/// The batch that deletes the table, if it exists, and nothing else.
#[must_use]
pub fn delete_table_batch(table: &str) -> Value {
    let mut b = Batch::new(table);
    b.cmd("add", "table", json!({}));
    b.cmd("delete", "table", json!({}));
    b.finish()
}

fn dns_ports_match() -> Vec<Value> {
    vec![
        matches(
            "==",
            json!({ "meta": { "key": "l4proto" } }),
            json!({ "set": ["tcp", "udp"] }),
        ),
        matches(
            "==",
            json!({ "payload": { "protocol": "th", "field": "dport" } }),
            json!({ "set": [DNS_PORT, DOT_PORT] }),
        ),
    ]
}

fn vm_part(b: &mut Batch<'_>, vm: &VmRules) {
    let chain = vm_chain(&vm.vm_id);
    let domains = vm.policy.has_domains() && vm.dns.is_some();
    if domains {
        // The set must exist before the rule that reads it; `add` keeps existing elements.
        b.cmd(
            "add",
            "set",
            json!({ "name": domain_set(&vm.vm_id), "type": "ipv4_addr", "flags": ["timeout"] }),
        );
    }
    b.chain(&chain);
    // Re-applying a VM replaces its rules instead of appending a second copy.
    b.cmd("flush", "chain", json!({ "name": chain }));
    if domains {
        let mut guard = dns_ports_match();
        guard.push(json!({ "drop": null }));
        b.rule(
            &chain,
            guard,
            Some("flick: DNS only through flick's resolver"),
        );
    }
    b.policy(&chain, &vm.policy);
    if domains {
        b.rule(
            &chain,
            vec![
                matches(
                    "==",
                    ip_field("daddr"),
                    json!(format!("@{}", domain_set(&vm.vm_id))),
                ),
                matches("==", json!({ "meta": { "key": "l4proto" } }), json!("tcp")),
                json!({ "accept": null }),
            ],
            Some("flick: allowed domains"),
        );
    }
    if let Some(d) = vm.policy.default_action {
        b.rule(&chain, vec![verdict(d)], Some("vm default"));
    }
    if let (true, Some(dns)) = (domains, vm.dns) {
        let dchain = dns_chain(&vm.vm_id);
        b.chain(&dchain);
        b.cmd("flush", "chain", json!({ "name": dchain }));
        for proto in ["udp", "tcp"] {
            b.rule(
                &dchain,
                vec![
                    matches(
                        "==",
                        json!({ "fib": { "result": "type", "flags": ["daddr"] } }),
                        json!("local"),
                    ),
                    matches(
                        "==",
                        json!({ "payload": { "protocol": proto, "field": "dport" } }),
                        json!(DNS_PORT),
                    ),
                    json!({ "dnat": { "family": "ip", "addr": dns.addr.to_string(), "port": dns.port } }),
                ],
                Some("flick: DNS to the VM's resolver"),
            );
        }
        if vm.policy.inspect_names && dns.proxy_port != 0 {
            // The CIDR rules keep deciding in the forward hook: what they match is not
            // redirected. New HTTP(S) connections to resolved addresses go to the proxy.
            for r in &vm.policy.rules {
                let mut exprs = rule_exprs(r);
                exprs.pop();
                exprs.push(json!({ "return": null }));
                b.rule(&dchain, exprs, Some("flick: decided by a rule"));
            }
            b.rule(
                &dchain,
                vec![
                    matches(
                        "==",
                        ip_field("daddr"),
                        json!(format!("@{}", domain_set(&vm.vm_id))),
                    ),
                    matches(
                        "==",
                        json!({ "payload": { "protocol": "tcp", "field": "dport" } }),
                        json!({ "set": INSPECTED_PORTS }),
                    ),
                    json!({ "dnat": { "family": "ip", "addr": dns.addr.to_string(), "port": dns.proxy_port } }),
                ],
                Some("flick: SNI/Host check"),
            );
        }
        b.cmd(
            "add",
            "element",
            json!({
                "name": DNS_MAP,
                "elem": [[vm.guest_ip.to_string(), { "jump": { "target": dchain } }]],
            }),
        );
    }
    b.cmd(
        "add",
        "element",
        json!({
            "name": VM_MAP,
            "elem": [[vm.guest_ip.to_string(), { "jump": { "target": chain } }]],
        }),
    );
    if let Some(dev) = &vm.device {
        b.cmd(
            "add",
            "element",
            json!({ "name": VM_SOURCES, "elem": [source_elem(dev, vm.guest_ip)] }),
        );
    }
}

fn source_elem(dev: &str, ip: Ipv4Addr) -> Value {
    json!({ "concat": [dev, ip.to_string()] })
}

/// The batch that replaces the whole table with `spec` and the given VMs, atomically.
#[must_use]
pub fn full_batch(spec: &TableSpec, vms: &[VmRules]) -> Value {
    let mut b = Batch::new(&spec.table);
    b.cmd("add", "table", json!({}));
    b.cmd("delete", "table", json!({}));
    b.cmd("add", "table", json!({}));
    b.cmd(
        "add",
        "map",
        json!({ "name": VM_MAP, "type": "ipv4_addr", "map": "verdict" }),
    );
    b.cmd(
        "add",
        "set",
        json!({ "name": VM_SOURCES, "type": ["ifname", "ipv4_addr"] }),
    );
    b.cmd(
        "add",
        "map",
        json!({ "name": DNS_MAP, "type": "ipv4_addr", "map": "verdict" }),
    );
    b.cmd(
        "add",
        "chain",
        json!({ "name": "prerouting", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept" }),
    );
    b.cmd(
        "add",
        "chain",
        json!({ "name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept" }),
    );
    b.cmd(
        "add",
        "chain",
        json!({ "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept" }),
    );
    b.chain("egress");
    // Per-VM chains must exist before the map elements that jump to them.
    for vm in vms {
        vm_part(&mut b, vm);
    }

    let pool = net_value(spec.pool);
    b.rule(
        "prerouting",
        vec![json!({ "vmap": { "key": ip_field("saddr"), "data": format!("@{DNS_MAP}") } })],
        Some("flick: per-VM resolver"),
    );
    let oif = json!({ "meta": { "key": "oifname" } });
    let masq_out: Vec<&str> = spec
        .uplink
        .iter()
        .map(String::as_str)
        .chain(spec.wireguard.iter().map(|w| w.interface.as_str()))
        .collect();
    for out in masq_out {
        b.rule(
            "postrouting",
            vec![
                matches("==", ip_field("saddr"), pool.clone()),
                matches("==", oif.clone(), json!(out)),
                json!({ "masquerade": null }),
            ],
            Some("flick: masquerade VM traffic"),
        );
    }

    b.rule(
        "forward",
        vec![
            matches(
                "in",
                json!({ "ct": { "key": "state" } }),
                json!(["established", "related"]),
            ),
            json!({ "accept": null }),
        ],
        Some("flick: return traffic"),
    );
    if let Some(wg) = spec.wireguard.as_ref().filter(|w| w.fail_closed) {
        b.rule(
            "forward",
            vec![
                matches("==", ip_field("saddr"), pool.clone()),
                matches("!=", ip_field("daddr"), pool.clone()),
                matches("!=", oif.clone(), json!(wg.interface)),
                json!({ "drop": null }),
            ],
            Some("flick: wireguard fail closed"),
        );
    }
    if spec.isolation {
        // Each VM has its own TAP here, so its source address can be pinned to it: no VM can
        // borrow another's address (and with it, that VM's egress policy).
        b.rule(
            "forward",
            vec![
                matches("==", ip_field("saddr"), pool.clone()),
                matches(
                    "!=",
                    json!({ "concat": [{ "meta": { "key": "iifname" } }, ip_field("saddr")] }),
                    json!(format!("@{VM_SOURCES}")),
                ),
                json!({ "counter": null }),
                json!({ "drop": null }),
            ],
            Some("flick: source pinning"),
        );
    }
    let mut from_vms = Vec::new();
    if let Some(br) = &spec.bridge {
        from_vms.push(matches(
            "==",
            json!({ "meta": { "key": "iifname" } }),
            json!(br),
        ));
    }
    from_vms.push(matches("==", ip_field("saddr"), pool.clone()));
    from_vms.push(json!({ "jump": { "target": "egress" } }));
    b.rule("forward", from_vms, Some("flick: VM egress"));

    b.rule(
        "egress",
        vec![json!({ "vmap": { "key": ip_field("saddr"), "data": format!("@{VM_MAP}") } })],
        Some("flick: per-VM policy"),
    );
    b.policy("egress", &spec.host_policy);
    if spec.isolation {
        b.rule(
            "egress",
            vec![
                matches("==", ip_field("daddr"), pool),
                json!({ "drop": null }),
            ],
            Some("flick: isolation"),
        );
    }
    b.rule(
        "egress",
        vec![verdict(spec.host_policy.default_action.unwrap_or_default())],
        Some("flick: default"),
    );
    b.finish()
}

/// The batch that adds one VM's chain and map element.
#[must_use]
pub fn add_vm_batch(table: &str, vm: &VmRules) -> Value {
    let mut b = Batch::new(table);
    vm_part(&mut b, vm);
    b.finish()
}

/// The batch that gives a VM (all its interfaces) a new policy in one transaction. When the
/// VM had a domain policy and `vms` no longer has one, its DNS redirect, resolver chain and
/// address set go in the same transaction.
#[must_use]
pub fn vm_policy_batch(table: &str, vms: &[VmRules], had_domains: bool) -> Value {
    let mut b = Batch::new(table);
    for vm in vms {
        vm_part(&mut b, vm);
    }
    let now = vms
        .first()
        .is_some_and(|v| v.policy.has_domains() && v.dns.is_some());
    if let (true, false, Some(first)) = (had_domains, now, vms.first()) {
        for vm in vms {
            b.cmd(
                "delete",
                "element",
                json!({ "name": DNS_MAP, "elem": [vm.guest_ip.to_string()] }),
            );
        }
        retire_domains(&mut b, &first.vm_id);
    }
    b.finish()
}

fn retire_domains(b: &mut Batch<'_>, vm_id: &str) {
    let dchain = dns_chain(vm_id);
    b.cmd("flush", "chain", json!({ "name": dchain }));
    b.cmd("delete", "chain", json!({ "name": dchain }));
    b.cmd("delete", "set", json!({ "name": domain_set(vm_id) }));
}

/// The batch that removes exactly one VM's map elements, source elements and chain, for all
/// its interfaces (`(guest address, pinned device)` each) at once: the chain can only go after
/// every element jumping to it.
#[must_use]
pub fn remove_vm_batch(table: &str, vm_id: &str, interfaces: &[(Ipv4Addr, Option<&str>)]) -> Value {
    remove_vm_batch_with(table, vm_id, interfaces, false)
}

/// [`remove_vm_batch`], also removing the VM's DNS redirect and address set when `domains`.
#[must_use]
pub fn remove_vm_batch_with(
    table: &str,
    vm_id: &str,
    interfaces: &[(Ipv4Addr, Option<&str>)],
    domains: bool,
) -> Value {
    let chain = vm_chain(vm_id);
    let mut b = Batch::new(table);
    if domains {
        for (ip, _) in interfaces {
            b.cmd(
                "delete",
                "element",
                json!({ "name": DNS_MAP, "elem": [ip.to_string()] }),
            );
        }
    }
    for (ip, device) in interfaces {
        b.cmd(
            "delete",
            "element",
            json!({ "name": VM_MAP, "elem": [ip.to_string()] }),
        );
        if let Some(dev) = device {
            b.cmd(
                "delete",
                "element",
                json!({ "name": VM_SOURCES, "elem": [source_elem(dev, *ip)] }),
            );
        }
    }
    b.cmd("flush", "chain", json!({ "name": chain }));
    b.cmd("delete", "chain", json!({ "name": chain }));
    if domains {
        retire_domains(&mut b, vm_id);
    }
    b.finish()
}

/// Runs `nft -j -f -` with a batch: one kernel transaction.
pub fn apply(batch: &Value) -> Result<()> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let text = serde_json::to_vec(batch)
        .map_err(|e| Error::new(ErrorCode::Internal, "serialize nft batch").with_source(e))?;
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::new(
                ErrorCode::HostUnsupported,
                "cannot run nft (install the nftables package)",
            )
            .with_source(e)
        })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let write = stdin.write_all(&text);
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| {
        Error::new(ErrorCode::FirewallSetupFailed, "waiting for nft").with_source(e)
    })?;
    if !out.status.success() || write.is_err() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(Error::new(
            ErrorCode::FirewallSetupFailed,
            format!("nft rejected the batch ({}): {stderr}", out.status),
        )
        .with_details(json!({ "stderr": stderr })));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::firewall::EgressPolicy;

    fn policy(text: &str) -> CompiledPolicy {
        EgressPolicy::from_json(text).unwrap().compile().unwrap()
    }

    fn spec() -> TableSpec {
        TableSpec {
            table: DEFAULT_TABLE.into(),
            pool: "172.30.0.0/24".parse().unwrap(),
            bridge: Some("flbr0".into()),
            uplink: Some("eth0".into()),
            isolation: false,
            host_policy: policy(
                r#"{"rules":[
                {"action":"allow","to":"10.0.0.1","protocol":"tcp","ports":443,"comment":"api"},
                {"action":"deny","to":"10.0.0.0/8"},
                {"action":"allow","protocol":"udp","ports":[53,123]},
                {"action":"deny","protocol":"icmp"}
            ],"default_action":"deny"}"#,
            ),
            wireguard: None,
        }
    }

    fn vm() -> VmRules {
        VmRules {
            vm_id: "vm-1".into(),
            guest_ip: "172.30.0.2".parse().unwrap(),
            device: None,
            policy: policy(r#"{"rules":[{"action":"allow","protocol":"tcp","ports":22}]}"#),
            dns: None,
        }
    }

    #[test]
    fn full_table_bridge_mode() {
        insta::assert_json_snapshot!(full_batch(&spec(), &[vm()]));
    }

    #[test]
    fn full_table_isolation_wireguard() {
        let mut s = spec();
        s.bridge = None;
        s.isolation = true;
        s.host_policy = CompiledPolicy::default();
        s.wireguard = Some(WireguardEgress {
            interface: "flwg0".into(),
            fail_closed: true,
        });
        let mut v = vm();
        v.device = Some("fltap0".into());
        insta::assert_json_snapshot!(full_batch(&s, &[v]));
    }

    #[test]
    fn vm_batches() {
        let mut v = vm();
        v.policy.default_action = Some(Action::Deny);
        insta::assert_json_snapshot!(add_vm_batch("flick", &v));
        insta::assert_json_snapshot!(remove_vm_batch("flick", &v.vm_id, &[(v.guest_ip, None)]));
        v.device = Some("fltap0".into());
        insta::assert_json_snapshot!(add_vm_batch("flick", &v));
        insta::assert_json_snapshot!(remove_vm_batch(
            "flick",
            &v.vm_id,
            &[(v.guest_ip, Some("fltap0"))]
        ));
    }

    #[test]
    fn domain_vm_batches() {
        let mut v = vm();
        v.policy = policy(
            r#"{"rules":[{"action":"deny","to":"203.0.113.0/24"}],"allow_domains":["*.example.com"]}"#,
        );
        v.dns = Some(VmDns {
            addr: "172.30.0.1".parse().unwrap(),
            port: 40053,
            proxy_port: 40054,
        });
        insta::assert_json_snapshot!(add_vm_batch("flick", &v));
        insta::assert_json_snapshot!(remove_vm_batch_with(
            "flick",
            &v.vm_id,
            &[(v.guest_ip, None)],
            true
        ));
        let mut plain = vm();
        plain.vm_id = v.vm_id.clone();
        insta::assert_json_snapshot!(vm_policy_batch("flick", &[plain], true));
        v.policy.inspect_names = true;
        insta::assert_json_snapshot!(add_vm_batch("flick", &v));
    }

    #[test]
    fn chain_names_are_stable_and_short() {
        assert_eq!(vm_chain("a"), vm_chain("a"));
        assert_ne!(vm_chain("a"), vm_chain("b"));
        assert_eq!(vm_chain("a").len(), 15);
    }
}
