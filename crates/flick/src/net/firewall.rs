//! The egress policy model: ordered allow/deny rules and a default action.
//!
//! A policy arrives as user data ([`EgressPolicy`], JSON/YAML friendly) and is validated once
//! into a [`CompiledPolicy`] ([`EgressPolicy::compile`]), which reports every problem at once
//! with [`ErrorCode::InvalidFirewallConfig`]. Only compiled policies reach
//! [`super::nft`], which turns them into nftables rules: first match wins, then the default.
//!
//! A per-VM policy may also name hosts instead of addresses (`allow_domains`: exact names and
//! `*.example.com` wildcards). Such a policy is enforced by flick's resolver ([`super::dns`]):
//! the VM may only use that resolver, and new TCP connections go only to addresses it handed
//! out for allowed names (plus what the CIDR rules allow; the rules are evaluated first, so a
//! deny CIDR beats an allowed domain). Without an explicit default, a domain policy drops
//! everything else.

use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Error, ErrorCode, Result};

/// What a rule (or the default) does with a matching packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through.
    #[default]
    Allow,
    /// Drop it.
    Deny,
}

/// The transport protocol a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Any protocol.
    #[default]
    All,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (IPv4).
    Icmp,
}

/// One port or a list of ports, as written by the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ports {
    /// A single port.
    One(i64),
    /// A list of ports.
    List(Vec<i64>),
}

/// One egress rule as written by the user.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// `allow` or `deny`.
    pub action: Action,
    /// An IPv4 address or CIDR; omitted means any destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `all` (default), `tcp`, `udp` or `icmp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Destination port(s); only with `tcp` or `udp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Ports>,
    /// A note kept on the nftables rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// What flick's resolver answers for a name that is not on the allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsRefusal {
    /// `REFUSED` (the default): the client knows it was a policy decision.
    #[default]
    Refused,
    /// `NXDOMAIN`: the name looks as if it did not exist.
    Nxdomain,
}

impl DnsRefusal {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// An ordered egress policy: the first matching rule decides, otherwise the default action.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicy {
    /// Rules in evaluation order.
    #[serde(default)]
    pub rules: Vec<EgressRule>,
    /// What happens when no rule matches. For the host-wide policy `None` means `allow`; for a
    /// per-VM policy `None` means "fall through to the host-wide policy" — except with
    /// `allow_domains`, where `None` means `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<Action>,
    /// Hosts the VM may connect to (TCP), by name: `api.example.com` (exactly that name) or
    /// `*.example.com` (every name below it, not `example.com` itself). Per-VM policies only.
    /// Non-empty turns on flick's resolver for the VM (see [`super::dns`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_domains: Vec<String>,
    /// What the resolver answers for other names.
    #[serde(default, skip_serializing_if = "DnsRefusal::is_default")]
    pub dns_refusal: DnsRefusal,
    /// Check the name a connection claims (TLS SNI on port 443, HTTP `Host` on port 80) against
    /// the names its address was resolved for, through flick's proxy. Needs `allow_domains`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inspect_names: bool,
    /// Let allowed names resolve to private addresses (RFC 1918, 100.64.0.0/10). Off by
    /// default: an allowed name whose DNS points inside (rebinding) does not open internal
    /// networks. Loopback, link-local, multicast, reserved addresses and the VM pool are never
    /// handed out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_private_addresses: bool,
}

impl EgressPolicy {
    /// Whether this policy needs flick's resolver.
    #[must_use]
    pub fn has_domains(&self) -> bool {
        !self.allow_domains.is_empty()
    }
}

/// The most names one policy may allow.
pub const MAX_DOMAINS: usize = 1_000;

/// One validated entry of `allow_domains`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DomainPattern {
    /// The name in lower case without a trailing dot (for a wildcard: the part after `*.`).
    pub name: String,
    /// `*.name`: matches names below `name` only.
    pub wildcard: bool,
}

impl DomainPattern {
    /// Parses `name`, `name.` or `*.name` (ASCII; internationalized names in their `xn--` form).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let t = text.trim();
        let (wildcard, rest) = match t.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, t),
        };
        let name = rest.strip_suffix('.').unwrap_or(rest).to_ascii_lowercase();
        let bad = |why: &str| Err(format!("domain {text:?} {why}"));
        if name.is_empty() {
            return bad("is empty");
        }
        if !name.is_ascii() {
            return bad("is not ASCII (write internationalized names in their xn-- form)");
        }
        if name.contains('*') {
            return bad("may only use '*' as its whole first label (\"*.example.com\")");
        }
        if name.len() > 253 {
            return bad("is longer than 253 bytes");
        }
        for label in name.split('.') {
            if label.is_empty() {
                return bad("has an empty label");
            }
            if label.len() > 63 {
                return bad("has a label longer than 63 bytes");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad("may contain only letters, digits, '-' and '_'");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return bad("has a label that starts or ends with '-'");
            }
        }
        if name.parse::<Ipv4Addr>().is_ok() {
            return bad("is an address; use a rule with `to` for addresses");
        }
        Ok(Self { name, wildcard })
    }

    /// Whether a query name (any case, with or without the trailing dot) is covered.
    #[must_use]
    pub fn matches(&self, qname: &str) -> bool {
        let q = qname.strip_suffix('.').unwrap_or(qname);
        if self.wildcard {
            q.len() > self.name.len() + 1
                && q.as_bytes()[q.len() - self.name.len() - 1] == b'.'
                && q[q.len() - self.name.len()..].eq_ignore_ascii_case(&self.name)
        } else {
            q.eq_ignore_ascii_case(&self.name)
        }
    }
}

impl std::fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.wildcard {
            write!(f, "*.{}", self.name)
        } else {
            f.write_str(&self.name)
        }
    }
}

/// The most rules one policy may hold.
pub const MAX_RULES: usize = 10_000;
/// The longest comment nftables keeps.
pub const MAX_COMMENT: usize = 128;

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompiledRule {
    /// The verdict.
    pub action: Action,
    /// Destination network; `None` is any.
    pub to: Option<Ipv4Net>,
    /// The protocol.
    pub protocol: Protocol,
    /// Sorted, deduplicated destination ports (empty = any), only for tcp/udp.
    pub ports: Vec<u16>,
    /// The comment.
    pub comment: Option<String>,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct CompiledPolicy {
    /// Rules in order.
    pub rules: Vec<CompiledRule>,
    /// The default action, if the policy sets one (always `Some(Deny)` with domains, unless
    /// the policy said otherwise, which is rejected).
    pub default_action: Option<Action>,
    /// Sorted, deduplicated allowed names; empty without a domain policy.
    pub domains: Vec<DomainPattern>,
    /// The resolver's answer for other names.
    pub dns_refusal: DnsRefusal,
    /// Whether TLS SNI / HTTP `Host` are checked on ports 443/80.
    pub inspect_names: bool,
    /// Whether answers may carry private addresses.
    pub allow_private_addresses: bool,
}

impl CompiledPolicy {
    /// Whether this policy needs flick's resolver.
    #[must_use]
    pub fn has_domains(&self) -> bool {
        !self.domains.is_empty()
    }

    /// Whether a query name is allowed.
    #[must_use]
    pub fn allows_name(&self, qname: &str) -> bool {
        self.domains.iter().any(|d| d.matches(qname))
    }
}

impl EgressPolicy {
    /// Parses a policy from JSON text; syntax errors and unknown fields are
    /// [`ErrorCode::InvalidFirewallConfig`].
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| {
            Error::new(
                ErrorCode::InvalidFirewallConfig,
                format!("egress policy is not valid: {e}"),
            )
        })
    }

    /// Validates every rule and reports all problems at once.
    pub fn compile(&self) -> Result<CompiledPolicy> {
        let mut problems = Vec::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        if self.rules.len() > MAX_RULES {
            problems.push(json!({
                "rule": Value::Null,
                "message": format!("{} rules exceed the limit of {MAX_RULES}", self.rules.len()),
            }));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            match compile_rule(rule) {
                Ok(r) => rules.push(r),
                Err(msgs) => problems.extend(
                    msgs.into_iter()
                        .map(|(field, m)| json!({ "rule": i, "field": field, "message": m })),
                ),
            }
        }
        if self.allow_domains.len() > MAX_DOMAINS {
            problems.push(json!({
                "rule": Value::Null,
                "field": "allow_domains",
                "message": format!(
                    "{} domains exceed the limit of {MAX_DOMAINS}",
                    self.allow_domains.len()
                ),
            }));
        }
        let mut domains = Vec::with_capacity(self.allow_domains.len());
        for (i, d) in self.allow_domains.iter().enumerate() {
            match DomainPattern::parse(d) {
                Ok(p) => domains.push(p),
                Err(m) => problems.push(json!({
                    "rule": Value::Null, "field": "allow_domains", "domain": i, "message": m,
                })),
            }
        }
        domains.sort();
        domains.dedup();
        let mut default_action = self.default_action;
        if !domains.is_empty() || !self.allow_domains.is_empty() {
            if default_action == Some(Action::Allow) {
                problems.push(json!({
                    "rule": Value::Null,
                    "field": "default_action",
                    "message": "allow_domains with default_action allow would allow every host; \
                                leave the default out (it becomes deny)",
                }));
            }
            default_action = Some(Action::Deny);
        }
        if self.inspect_names && self.allow_domains.is_empty() {
            problems.push(json!({
                "rule": Value::Null,
                "field": "inspect_names",
                "message": "inspect_names needs allow_domains",
            }));
        }
        if problems.is_empty() {
            Ok(CompiledPolicy {
                rules,
                default_action,
                domains,
                dns_refusal: self.dns_refusal,
                inspect_names: self.inspect_names,
                allow_private_addresses: self.allow_private_addresses,
            })
        } else {
            let first = problems[0]["message"].as_str().unwrap_or("").to_owned();
            let at = problems[0]["rule"]
                .as_u64()
                .map(|i| format!("rule {i}: "))
                .unwrap_or_default();
            Err(Error::new(
                ErrorCode::InvalidFirewallConfig,
                format!(
                    "egress policy has {} problem(s); {at}{first}",
                    problems.len()
                ),
            )
            .with_details(json!({ "problems": problems })))
        }
    }
}

/// Parses `to`: an IPv4 address or CIDR, normalized to its network.
pub fn parse_destination(text: &str) -> std::result::Result<Ipv4Net, String> {
    let t = text.trim();
    if t.contains(':') {
        return Err(format!(
            "{text:?} is IPv6; egress rules are IPv4 only for now"
        ));
    }
    if t.contains('/') {
        Ipv4Net::from_str(t)
            .map(|n| n.trunc())
            .map_err(|_| format!("{text:?} is not an IPv4 address or CIDR"))
    } else {
        Ipv4Addr::from_str(t)
            .map(Ipv4Net::from)
            .map_err(|_| format!("{text:?} is not an IPv4 address or CIDR"))
    }
}

fn compile_rule(
    rule: &EgressRule,
) -> std::result::Result<CompiledRule, Vec<(&'static str, String)>> {
    let mut errs = Vec::new();
    let to = match &rule.to {
        None => None,
        Some(t) => match parse_destination(t) {
            Ok(n) => Some(n),
            Err(m) => {
                errs.push(("to", m));
                None
            }
        },
    };
    let mut ports = Vec::new();
    if let Some(p) = &rule.ports {
        if !matches!(rule.protocol, Protocol::Tcp | Protocol::Udp) {
            errs.push((
                "ports",
                format!(
                    "ports need protocol tcp or udp, not {}",
                    serde_json::to_value(rule.protocol).unwrap_or_default()
                ),
            ));
        }
        let raw: Vec<i64> = match p {
            Ports::One(x) => vec![*x],
            Ports::List(v) => v.clone(),
        };
        if raw.is_empty() {
            errs.push(("ports", "the port list is empty".to_owned()));
        }
        for x in raw {
            match u16::try_from(x) {
                Ok(port) if port != 0 => ports.push(port),
                _ => errs.push(("ports", format!("port {x} is outside 1–65535"))),
            }
        }
        ports.sort_unstable();
        ports.dedup();
    }
    if let Some(c) = &rule.comment {
        if c.len() > MAX_COMMENT {
            errs.push((
                "comment",
                format!("comment is longer than {MAX_COMMENT} bytes"),
            ));
        }
        if c.chars().any(|ch| ch.is_control() || ch == '"') {
            errs.push((
                "comment",
                "comment may not contain control characters or '\"'".to_owned(),
            ));
        }
    }
    if errs.is_empty() {
        Ok(CompiledRule {
            action: rule.action,
            to,
            protocol: rule.protocol,
            ports,
            comment: rule.comment.clone().filter(|c| !c.is_empty()),
        })
    } else {
        Err(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(v: Value) -> EgressRule {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn accepts_every_shape() {
        let p = EgressPolicy::from_json(
            r#"{"rules":[
                {"action":"allow","to":"10.0.0.1","protocol":"tcp","ports":80,"comment":"web"},
                {"action":"deny","to":"10.1.2.3/16","protocol":"udp","ports":[53,53,5353]},
                {"action":"allow","protocol":"icmp"},
                {"action":"deny"}
            ],"default_action":"deny"}"#,
        )
        .unwrap();
        let c = p.compile().unwrap();
        assert_eq!(c.rules.len(), 4);
        assert_eq!(c.rules[0].to.unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(c.rules[1].to.unwrap().to_string(), "10.1.0.0/16");
        assert_eq!(c.rules[1].ports, vec![53, 5353]);
        assert_eq!(c.default_action, Some(Action::Deny));
        assert_eq!(EgressPolicy::default().compile().unwrap().rules.len(), 0);
    }

    #[test]
    fn rejects_every_bad_shape() {
        let bad = [
            json!({"action":"allow","protocol":"all","ports":80}),
            json!({"action":"allow","protocol":"icmp","ports":[1]}),
            json!({"action":"allow","ports":22}),
            json!({"action":"allow","protocol":"tcp","ports":0}),
            json!({"action":"allow","protocol":"tcp","ports":65536}),
            json!({"action":"allow","protocol":"tcp","ports":-1}),
            json!({"action":"allow","protocol":"udp","ports":[]}),
            json!({"action":"allow","to":"fd00::1"}),
            json!({"action":"allow","to":"10.0.0.0/33"}),
            json!({"action":"allow","to":"example.com"}),
            json!({"action":"allow","to":""}),
            json!({"action":"allow","comment":"a\"b"}),
            json!({"action":"allow","comment":"x".repeat(129)}),
            json!({"action":"allow","comment":"line\nbreak"}),
        ];
        for b in bad {
            let p = EgressPolicy {
                rules: vec![rule(b.clone())],
                ..EgressPolicy::default()
            };
            let e = p.compile().unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidFirewallConfig, "{b}");
            assert_eq!(e.details().unwrap()["problems"][0]["rule"], 0, "{b}");
        }
        for text in [
            r#"{"rules":[{"action":"maybe"}]}"#,
            r#"{"rules":[{"action":"allow","protocol":"sctp"}]}"#,
            r#"{"rules":[{"action":"allow","port":80}]}"#,
            r#"{"rules":[{"action":"allow","ports":"80"}]}"#,
            r#"{"rules":[{"to":"1.2.3.4"}]}"#,
            r#"{"default_action":"reject"}"#,
            r#"{"rules":{}}"#,
        ] {
            assert_eq!(
                EgressPolicy::from_json(text).unwrap_err().code(),
                ErrorCode::InvalidFirewallConfig,
                "{text}"
            );
        }
    }

    fn protocol() -> impl proptest::strategy::Strategy<Value = Protocol> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Protocol::All),
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Icmp)
        ]
    }

    proptest::proptest! {
        #[test]
        fn ports_valid_exactly_with_tcp_udp_in_range(
            proto in protocol(),
            ports in proptest::option::of(proptest::collection::vec(-5i64..70_000, 0..5)),
            single in proptest::bool::ANY,
        ) {
            let ports_value = ports.clone().map(|v| {
                if single && v.len() == 1 { Ports::One(v[0]) } else { Ports::List(v) }
            });
            let rule = EgressRule { action: Action::Deny, protocol: proto, ports: ports_value, ..EgressRule::default() };
            let expect_ok = match &ports {
                None => true,
                Some(v) => matches!(proto, Protocol::Tcp | Protocol::Udp)
                    && !v.is_empty()
                    && v.iter().all(|p| (1..=65_535).contains(p)),
            };
            let got = EgressPolicy { rules: vec![rule], ..EgressPolicy::default() }.compile();
            match got {
                Ok(c) => {
                    proptest::prop_assert!(expect_ok);
                    let r = &c.rules[0];
                    proptest::prop_assert!(r.ports.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
                    if let Some(v) = &ports {
                        for p in v {
                            proptest::prop_assert!(r.ports.contains(&u16::try_from(*p).unwrap()));
                        }
                    }
                }
                Err(e) => {
                    proptest::prop_assert!(!expect_ok);
                    proptest::prop_assert_eq!(e.code(), ErrorCode::InvalidFirewallConfig);
                }
            }
        }

        #[test]
        fn destinations_normalize(ip in proptest::prelude::any::<u32>(), len in 0u8..=40) {
            let text = format!("{}/{len}", Ipv4Addr::from(ip));
            match parse_destination(&text) {
                Ok(n) => {
                    proptest::prop_assert!(len <= 32);
                    proptest::prop_assert_eq!(n.prefix_len(), len);
                    proptest::prop_assert!(n.contains(&Ipv4Addr::from(ip)));
                    proptest::prop_assert_eq!(n, n.trunc());
                }
                Err(_) => proptest::prop_assert!(len > 32),
            }
        }
    }

    #[test]
    fn reports_all_problems() {
        let p = EgressPolicy {
            rules: vec![
                rule(json!({"action":"allow"})),
                rule(json!({"action":"allow","protocol":"icmp","ports":70000})),
                rule(json!({"action":"deny","to":"nope"})),
            ],
            ..EgressPolicy::default()
        };
        let e = p.compile().unwrap_err();
        let problems = e.details().unwrap()["problems"].as_array().unwrap().clone();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(problems[0]["rule"], 1);
        assert_eq!(problems[2]["rule"], 2);
    }

    #[test]
    fn domain_patterns_parse_and_match() {
        let exact = DomainPattern::parse("API.Example.com.").unwrap();
        assert_eq!(exact.to_string(), "api.example.com");
        assert!(exact.matches("api.example.com"));
        assert!(exact.matches("API.EXAMPLE.COM."));
        assert!(!exact.matches("x.api.example.com"));
        assert!(!exact.matches("example.com"));
        let wild = DomainPattern::parse("*.pypi.org").unwrap();
        assert_eq!(wild.to_string(), "*.pypi.org");
        assert!(wild.matches("files.pypi.org"));
        assert!(wild.matches("a.b.pypi.org."));
        assert!(
            !wild.matches("pypi.org"),
            "a wildcard matches subdomains only"
        );
        assert!(!wild.matches("evilpypi.org"), "label boundary");
        assert!(!wild.matches("pypi.org.evil.com"));
        for bad in [
            "",
            "*",
            "*.",
            ".",
            "a..b",
            "*.*.example.com",
            "a.*.example.com",
            "ex*ample.com",
            "-a.example.com",
            "a-.example.com",
            "bücher.de",
            "a b.com",
            "10.0.0.1",
            "a/b.com",
            &"a".repeat(64),
            &format!("{}.com", "a.".repeat(130)),
        ] {
            assert!(
                DomainPattern::parse(bad).is_err(),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn domain_policies_compile() {
        let p = EgressPolicy::from_json(
            r#"{"allow_domains":["b.example.com","*.pypi.org","B.example.com."],
                "rules":[{"action":"deny","to":"10.0.0.0/8"}],"dns_refusal":"nxdomain"}"#,
        )
        .unwrap();
        let c = p.compile().unwrap();
        assert_eq!(c.domains.len(), 2, "deduplicated");
        assert_eq!(
            c.default_action,
            Some(Action::Deny),
            "domains default to deny"
        );
        assert_eq!(c.dns_refusal, DnsRefusal::Nxdomain);
        assert!(c.allows_name("x.pypi.org") && !c.allows_name("pypi.org"));
        let back: EgressPolicy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        // no domains: the JSON shape of existing policies is unchanged
        assert_eq!(
            serde_json::to_string(&EgressPolicy::default()).unwrap(),
            r#"{"rules":[]}"#
        );
        let e = EgressPolicy::from_json(
            r#"{"allow_domains":["ok.com","bad..com","*.x.*"],"default_action":"allow"}"#,
        )
        .unwrap()
        .compile()
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidFirewallConfig);
        let problems = e.details().unwrap()["problems"].as_array().unwrap().clone();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(problems[0]["domain"], 1);
        assert!(
            EgressPolicy::from_json(r#"{"dns_refusal":"servfail"}"#).is_err(),
            "unknown refusal"
        );
        let e = EgressPolicy::from_json(r#"{"inspect_names":true}"#)
            .unwrap()
            .compile()
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidFirewallConfig);
        let ok = EgressPolicy::from_json(r#"{"inspect_names":true,"allow_domains":["a.b"]}"#)
            .unwrap()
            .compile()
            .unwrap();
        assert!(ok.inspect_names);
    }
}
