//! Egress by domain name with real traffic: a real `dnsmasq` in the "internet" namespace serves
//! several names, real TCP servers stand behind them, and a guest namespace talks through
//! flick's bridge (or isolated link), nftables table and per-VM resolver (the `flick-dns`
//! helper). Needs root and dnsmasq; see `net_common`.

mod net_common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use flick::ErrorCode;
use flick::net::dns::{ResolverState, TtlLimits, is_running};
use flick::net::nft::domain_set;
use flick::net::{
    EgressPolicy, HostNetwork, Mode, Netlink, NetworkConfig, NetworkState, VmInterface, VmRequest,
};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use net_common::dns::{Dnsmasq, query, query_port};
use net_common::*;

const API: Ipv4Addr = FAR_A; // api.example.com
const OTHER: Ipv4Addr = FAR_B; // other.example.com
const APEX: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30); // pypi.test
const FILES: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 40); // files.pypi.test
const DEEP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50); // deep.cdn.pypi.test
const BLOCKED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 60); // blocked.example.com
const ECHO_PORT: u16 = 7000;

const RECORDS: [(&str, Ipv4Addr); 9] = [
    ("api.example.com", API),
    ("other.example.com", OTHER),
    ("pypi.test", APEX),
    ("files.pypi.test", FILES),
    ("deep.cdn.pypi.test", DEEP),
    ("blocked.example.com", BLOCKED),
    ("internal.example.com", Ipv4Addr::new(10, 1, 2, 3)),
    ("loop.example.com", Ipv4Addr::LOCALHOST),
    ("metadata.example.com", Ipv4Addr::new(169, 254, 169, 254)),
];

/// The topology plus a DNS server; dnsmasq goes first when dropped.
struct Lab {
    _dns: Dnsmasq,
    t: Topology,
}

fn lab(ttl: u32) -> Lab {
    let mut t = Topology::build(&[5353]);
    for ip in [APEX, FILES, DEEP, BLOCKED] {
        t.internet.ip(&format!("addr add {ip}/32 dev eth0"));
    }
    t.add_server(|ns, stop| tcp_server(ns, 853, stop));
    t.add_server(|ns, stop| echo_server(ns, ECHO_PORT, stop));
    let dns = Dnsmasq::start(&t.internet, INTERNET, &RECORDS, ttl);
    Lab { _dns: dns, t }
}

fn config(mode: Mode) -> NetworkConfig {
    NetworkConfig {
        mode,
        dns_upstreams: vec![INTERNET.to_string()],
        dns_ttl: TtlLimits {
            min: 1,
            max: 3600,
            grace: 1,
        },
        dns_helper: Some(env!("CARGO_BIN_EXE_flick-dns").into()),
        ..NetworkConfig::default()
    }
}

fn policy(json: &str) -> EgressPolicy {
    EgressPolicy::from_json(json).expect("test policy parses")
}

fn vm(id: &str, dev: &str, policy: Option<EgressPolicy>) -> VmRequest {
    VmRequest {
        vm_id: id.into(),
        iface_id: "eth0".into(),
        host_device: Some(dev.into()),
        policy,
    }
}

fn resolve(g: &Netns, i: &VmInterface, name: &str) -> Option<net_common::dns::Answer> {
    let server = i.dns_server.expect("a domain VM has a DNS server");
    let name = name.to_owned();
    g.run(move || query(server, &name, RecordType::A, false))
}

fn set_listing(host: &Netns, vm_id: &str) -> String {
    host.exec(&["nft", "list", "set", "inet", "flick", &domain_set(vm_id)])
}

fn resolver_of(state: &NetworkState, vm_id: &str) -> ResolverState {
    state.vms[vm_id]
        .resolver
        .clone()
        .expect("the VM has a resolver")
}

#[test]
fn allowed_names_resolve_and_connect_everything_else_fails() {
    let lab = lab(60);
    let t = &lab.t;
    let (g, dev) = t.guest();
    let (g2, dev2) = t.guest();
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), config(Mode::Bridge))
            .await
            .unwrap();
        let p = policy(r#"{"allow_domains":["api.example.com","*.pypi.test"]}"#);
        let i = net.add_vm(vm("vm-a", &dev, Some(p))).await.unwrap();
        assert_eq!(
            i.dns_server,
            Some(i.lease.gateway),
            "DNS server is the gateway"
        );
        assert!(
            i.boot_arg().ends_with(&format!(":{}", i.lease.gateway)),
            "{}",
            i.boot_arg()
        );
        configure_guest(&g, &i.lease);
        let r = resolver_of(net.state(), "vm-a");
        assert!(is_running(&r), "the resolver runs");

        // Nothing is reachable before a name is resolved, not even an allowed host's address.
        assert!(g.run(|| tcp_probe(API, 80)).is_none(), "unresolved address");

        let a = resolve(&g, &i, "api.example.com").expect("answer");
        assert_eq!(a.code, ResponseCode::NoError);
        assert_eq!(a.addrs, vec![API]);
        assert!(set_listing(&t.host, "vm-a").contains(&API.to_string()));
        assert_eq!(
            g.run(|| tcp_probe(API, 80)).as_deref(),
            Some("198.51.100.1"),
            "allowed name connects (NAT'd)"
        );
        assert!(
            g.run(|| tcp_probe(API, 443)).is_some(),
            "any TCP port of it"
        );

        // Other names do not resolve; their addresses stay unreachable.
        let o = resolve(&g, &i, "other.example.com").expect("answer");
        assert_eq!(o.code, ResponseCode::Refused);
        assert!(o.addrs.is_empty());
        assert!(
            g.run(|| tcp_probe(OTHER, 80)).is_none(),
            "direct IP not allowed"
        );
        assert!(!set_listing(&t.host, "vm-a").contains(&OTHER.to_string()));

        // Wildcards: names below the suffix, not the suffix itself.
        let f = resolve(&g, &i, "files.pypi.test").expect("answer");
        assert_eq!(
            (f.code, f.addrs.clone()),
            (ResponseCode::NoError, vec![FILES])
        );
        let d = resolve(&g, &i, "DEEP.cdn.pypi.test.").expect("answer");
        assert_eq!(d.addrs, vec![DEEP], "case-insensitive, any depth");
        assert!(g.run(|| tcp_probe(FILES, 8080)).is_some());
        assert!(g.run(|| tcp_probe(DEEP, 22)).is_some());
        let apex = resolve(&g, &i, "pypi.test").expect("answer");
        assert_eq!(apex.code, ResponseCode::Refused, "the apex is not covered");
        assert!(g.run(|| tcp_probe(APEX, 80)).is_none());

        // No way around the resolver: DNS straight to the real server (UDP and TCP), DNS over
        // TLS, and UDP (QUIC) to an allowed address are all dropped.
        assert!(
            g.run(|| query(INTERNET, "api.example.com", RecordType::A, false))
                .is_none(),
            "UDP DNS to another server"
        );
        assert!(
            g.run(|| query(INTERNET, "api.example.com", RecordType::A, true))
                .is_none(),
            "TCP DNS to another server"
        );
        assert!(g.run(|| tcp_probe(INTERNET, 853)).is_none(), "DoT");
        assert!(
            g.run(|| tcp_probe(API, 853)).is_none(),
            "DoT even to an allowed address"
        );
        assert!(
            g.run(|| udp_probe(API, 5353)).is_none(),
            "UDP to an allowed address"
        );
        assert!(!g.run(|| icmp_probe(OTHER)), "ICMP elsewhere");

        // The resolver speaks TCP too, and answers AAAA with nothing (egress is IPv4).
        let gw = i.lease.gateway;
        let tcp = g
            .run(|| query(gw, "api.example.com", RecordType::A, true))
            .expect("TCP answer");
        assert_eq!(tcp.addrs, vec![API]);
        let six = g
            .run(|| query(gw, "api.example.com", RecordType::AAAA, false))
            .expect("AAAA answer");
        assert_eq!((six.code, six.answers), (ResponseCode::NoError, 0));

        // A VM without a domain policy can neither use nor reach vm-a's resolver.
        let j = net.add_vm(vm("vm-b", &dev2, None)).await.unwrap();
        assert_eq!(j.dns_server, None);
        configure_guest(&g2, &j.lease);
        let direct = SocketAddrV4::new(r.addr, r.port);
        let foreign = g2
            .run(|| query_port(direct, "api.example.com", RecordType::A, false))
            .expect("the resolver answers");
        assert_eq!(foreign.code, ResponseCode::Refused, "not its client");

        // REFUSED or NXDOMAIN is configurable (and applies to the running resolver).
        net.set_vm_policy(
            "vm-a",
            policy(
                r#"{"allow_domains":["api.example.com","*.pypi.test"],"dns_refusal":"nxdomain"}"#,
            ),
        )
        .await
        .unwrap();
        let nx = resolve(&g, &i, "other.example.com").expect("answer");
        assert_eq!(nx.code, ResponseCode::NXDomain);
        assert_eq!(
            resolver_of(net.state(), "vm-a"),
            r,
            "updated in place, not restarted"
        );

        net.teardown().await.unwrap();
        assert!(!is_running(&r), "teardown stops the resolver");
    });
}

#[test]
fn deny_cidr_beats_allowed_domain_and_allow_cidr_needs_no_dns() {
    let lab = lab(60);
    let t = &lab.t;
    let (g, dev) = t.guest();
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), config(Mode::Bridge))
            .await
            .unwrap();
        let p = policy(
            r#"{"allow_domains":["*.example.com"],"rules":[
                {"action":"deny","to":"203.0.113.56/29"},
                {"action":"deny","to":"203.0.113.10","protocol":"tcp","ports":22},
                {"action":"allow","to":"203.0.113.30","protocol":"tcp","ports":80}
            ]}"#,
        );
        let i = net.add_vm(vm("vm-c", &dev, Some(p))).await.unwrap();
        configure_guest(&g, &i.lease);
        let b = resolve(&g, &i, "blocked.example.com").expect("answer");
        assert_eq!(b.addrs, vec![BLOCKED], "the name is allowed and resolves");
        assert!(
            g.run(|| tcp_probe(BLOCKED, 80)).is_none(),
            "but the deny CIDR wins"
        );
        resolve(&g, &i, "api.example.com").expect("answer");
        assert!(g.run(|| tcp_probe(API, 80)).is_some());
        assert!(
            g.run(|| tcp_probe(API, 22)).is_none(),
            "a port-specific deny wins too"
        );
        assert!(
            g.run(|| tcp_probe(APEX, 80)).is_some(),
            "an allowed CIDR needs no name"
        );
        assert!(
            g.run(|| tcp_probe(APEX, 443)).is_none(),
            "only what the rule says"
        );
        net.teardown().await.unwrap();
    });
}

#[test]
fn ttl_expiry_removes_addresses_from_the_set() {
    let lab = lab(2);
    let t = &lab.t;
    let (g, dev) = t.guest();
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), config(Mode::Bridge))
            .await
            .unwrap();
        let p = policy(r#"{"allow_domains":["api.example.com"]}"#);
        let i = net.add_vm(vm("vm-t", &dev, Some(p))).await.unwrap();
        configure_guest(&g, &i.lease);
        let a = resolve(&g, &i, "api.example.com").expect("answer");
        assert_eq!(a.ttls, vec![2], "the guest gets the upstream TTL");
        let listing = set_listing(&t.host, "vm-t");
        assert!(listing.contains(&API.to_string()), "{listing}");
        assert!(
            listing.contains("expires"),
            "the entry has a timeout: {listing}"
        );
        // Established flows survive the expiry; new ones do not.
        let mut flow = g
            .run(|| TcpStream::connect_timeout(&SocketAddr::from((API, ECHO_PORT)), PROBE_TIMEOUT))
            .expect("connect while resolved");
        let deadline = Instant::now() + Duration::from_secs(15);
        while set_listing(&t.host, "vm-t").contains(&API.to_string()) {
            assert!(Instant::now() < deadline, "the address never left the set");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            g.run(|| tcp_probe(API, 80)).is_none(),
            "expired: new connections fail"
        );
        assert_eq!(echo(&mut flow, b"still"), b"still", "established flow kept");
        // Resolving again puts it back.
        resolve(&g, &i, "api.example.com").expect("answer");
        assert!(g.run(|| tcp_probe(API, 80)).is_some());
        net.teardown().await.unwrap();
    });
}

fn echo(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(data).expect("write on the flow");
    let mut buf = vec![0u8; data.len()];
    s.read_exact(&mut buf).expect("echo on the flow");
    buf
}

#[test]
fn policy_updates_on_a_running_vm_keep_established_flows() {
    let lab = lab(60);
    let t = &lab.t;
    let (g, dev) = t.guest();
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), config(Mode::Bridge))
            .await
            .unwrap();
        // Start without any domain policy: everything goes (host default allow).
        let i = net.add_vm(vm("vm-u", &dev, None)).await.unwrap();
        configure_guest(&g, &i.lease);
        assert!(net.state().vms["vm-u"].resolver.is_none());
        assert!(g.run(|| tcp_probe(OTHER, 80)).is_some());

        // Turn the domain policy on for the running VM.
        net.set_vm_policy("vm-u", policy(r#"{"allow_domains":["api.example.com"]}"#))
            .await
            .unwrap();
        let i = net.state().vms["vm-u"].interfaces[0].clone();
        assert_eq!(i.dns_server, Some(i.lease.gateway));
        let first = resolver_of(net.state(), "vm-u");
        assert!(g.run(|| tcp_probe(OTHER, 80)).is_none(), "now restricted");
        resolve(&g, &i, "api.example.com").expect("answer");
        let mut flow = g
            .run(|| TcpStream::connect_timeout(&SocketAddr::from((API, ECHO_PORT)), PROBE_TIMEOUT))
            .expect("connect to the allowed host");
        assert_eq!(echo(&mut flow, b"one"), b"one");

        // Swap the allowlist: the old host's address leaves the set at once, the established
        // flow to it continues, the new name works.
        net.set_vm_policy("vm-u", policy(r#"{"allow_domains":["files.pypi.test"]}"#))
            .await
            .unwrap();
        assert_eq!(resolver_of(net.state(), "vm-u"), first, "same resolver");
        assert!(!set_listing(&t.host, "vm-u").contains(&API.to_string()));
        assert_eq!(echo(&mut flow, b"two"), b"two", "established flow kept");
        assert!(g.run(|| tcp_probe(API, 80)).is_none(), "new flows refused");
        assert_eq!(
            resolve(&g, &i, "api.example.com").expect("answer").code,
            ResponseCode::Refused
        );
        assert_eq!(
            resolve(&g, &i, "files.pypi.test").expect("answer").addrs,
            vec![FILES]
        );
        assert!(g.run(|| tcp_probe(FILES, 80)).is_some());

        // A table-wide change (host policy) keeps the resolved addresses.
        net.set_host_policy(EgressPolicy::default()).await.unwrap();
        assert!(
            set_listing(&t.host, "vm-u").contains(&FILES.to_string()),
            "the resolver refilled its set"
        );
        assert!(g.run(|| tcp_probe(FILES, 80)).is_some());

        // Turn the domain policy off: resolver stopped, set gone, plain rules apply.
        net.set_vm_policy("vm-u", EgressPolicy::default())
            .await
            .unwrap();
        assert!(!is_running(&first), "resolver stopped");
        assert!(net.state().vms["vm-u"].resolver.is_none());
        assert_eq!(net.state().vms["vm-u"].interfaces[0].dns_server, None);
        let sets = t.host.exec(&["nft", "list", "sets", "inet"]);
        assert!(!sets.contains(&domain_set("vm-u")), "{sets}");
        assert!(g.run(|| tcp_probe(OTHER, 80)).is_some());
        assert_eq!(echo(&mut flow, b"three"), b"three");
        net.teardown().await.unwrap();
    });
}

#[test]
fn isolation_mode_enforces_domains_too() {
    let lab = lab(60);
    let t = &lab.t;
    let (g, dev) = t.guest();
    t.host.block_on(|| async {
        let cfg = NetworkConfig {
            subnet: "10.77.0.0/24".into(),
            ..config(Mode::Isolated)
        };
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), cfg)
            .await
            .unwrap();
        let p = policy(r#"{"allow_domains":["api.example.com"]}"#);
        let i = net.add_vm(vm("vm-i", &dev, Some(p))).await.unwrap();
        assert_eq!(i.lease.prefix_len, 30);
        configure_guest(&g, &i.lease);
        assert_eq!(
            resolve(&g, &i, "api.example.com").expect("answer").addrs,
            vec![API]
        );
        assert!(g.run(|| tcp_probe(API, 80)).is_some());
        assert_eq!(
            resolve(&g, &i, "other.example.com").expect("answer").code,
            ResponseCode::Refused
        );
        assert!(g.run(|| tcp_probe(OTHER, 80)).is_none());
        net.teardown().await.unwrap();
    });
}

#[test]
fn cleanup_and_restore_stop_the_resolver_and_leave_nothing() {
    let lab = lab(60);
    let t = &lab.t;
    let before = t.host.listing();
    let (g, dev) = t.guest();
    let state = t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), config(Mode::Bridge))
            .await
            .unwrap();
        let p = policy(r#"{"allow_domains":["api.example.com"]}"#);
        let i = net.add_vm(vm("vm-r", &dev, Some(p))).await.unwrap();
        configure_guest(&g, &i.lease);
        resolve(&g, &i, "api.example.com").expect("answer");
        // The manager goes away (a CLI exits); the resolver keeps serving the VM.
        serde_json::to_string(net.state()).unwrap()
    });
    let state: NetworkState = serde_json::from_str(&state).unwrap();
    let r = resolver_of(&state, "vm-r");
    assert!(is_running(&r), "the resolver outlives its manager");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", r.pid)).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_eq!(
        fields[3],
        r.pid.to_string(),
        "the helper leads its own session (no signal from the caller's terminal reaches it)"
    );
    let i = state.vms["vm-r"].interfaces[0].clone();
    assert_eq!(
        resolve(&g, &i, "api.example.com").expect("answer").addrs,
        vec![API]
    );
    t.host.block_on(|| async {
        let mut net = HostNetwork::restore(Netlink::connect().unwrap(), state).unwrap();
        assert!(net.ensure_resolvers().await.unwrap().is_empty(), "alive");
        // A resolver that dies fails closed, and ensure_resolvers brings it back.
        let pid = rustix::process::Pid::from_raw(r.pid as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_running(&r) {
            assert!(Instant::now() < deadline, "the helper did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            resolve(&g, &i, "api.example.com"),
            None,
            "no answer while down"
        );
        assert_eq!(
            net.ensure_resolvers().await.unwrap(),
            vec!["vm-r".to_owned()]
        );
        let r = resolver_of(net.state(), "vm-r");
        assert!(is_running(&r));
        assert_eq!(
            resolve(&g, &i, "api.example.com").expect("answer").addrs,
            vec![API],
            "answers again"
        );
        net.remove_vm("vm-r").await.unwrap();
        assert!(!is_running(&r), "a restored manager stops it");
        let sets = t.host.exec(&["nft", "list", "sets", "inet"]);
        assert!(!sets.contains(&domain_set("vm-r")), "{sets}");
        net.teardown().await.unwrap();
    });
    t.host.ip(&format!("link del {dev}"));
    assert_eq!(t.host.listing(), before);
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
    let lab = lab(60);
    let t = &lab.t;
    let (_g, dev) = t.guest();
    t.host.block_on(|| async {
        let e = HostNetwork::setup(
            Netlink::connect().unwrap(),
            NetworkConfig {
                host_policy: policy(r#"{"allow_domains":["a.example.com"]}"#),
                ..config(Mode::Bridge)
            },
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.code(),
            ErrorCode::InvalidFirewallConfig,
            "host-wide domains"
        );
        for bad_upstream in ["dns.example", "10.0.0.1:0x35"] {
            let e = HostNetwork::setup(
                Netlink::connect().unwrap(),
                NetworkConfig {
                    dns_upstreams: vec![bad_upstream.into()],
                    ..config(Mode::Bridge)
                },
            )
            .await
            .unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidFirewallConfig, "{bad_upstream}");
        }

        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), config(Mode::Bridge))
            .await
            .unwrap();
        let ready = t.host.listing();
        for (json, code) in [
            (
                r#"{"allow_domains":["ok.example.com","bad..example.com"]}"#,
                ErrorCode::InvalidFirewallConfig,
            ),
            (
                r#"{"allow_domains":["*.example.com"],"default_action":"allow"}"#,
                ErrorCode::InvalidFirewallConfig,
            ),
        ] {
            let e = net
                .add_vm(vm("vm-x", &dev, Some(policy(json))))
                .await
                .unwrap_err();
            assert_eq!(e.code(), code, "{json}");
            assert!(net.state().vms.is_empty());
            assert_eq!(t.host.listing(), ready, "nothing touched for {json}");
        }
        // A second pool whose resolver helper cannot start.
        let broken = NetworkConfig {
            dns_helper: Some("/nonexistent/flick-dns".into()),
            table: "flbad".into(),
            bridge: "flbrbad".into(),
            subnet: "10.78.0.0/24".into(),
            ..config(Mode::Bridge)
        };
        let mut net2 = HostNetwork::setup(Netlink::connect().unwrap(), broken)
            .await
            .unwrap();
        let ready2 = t.host.listing();
        let e = net2
            .add_vm(vm(
                "vm-y",
                &dev,
                Some(policy(r#"{"allow_domains":["api.example.com"]}"#)),
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::NetworkSetupFailed, "{e}");
        assert!(net2.state().vms.is_empty());
        assert!(net2.state().allocation.leases.is_empty(), "lease released");
        assert_eq!(
            t.host.listing(),
            ready2,
            "no chain, set, or attachment left"
        );
        // A running VM keeps its old policy when the new one cannot be applied.
        net2.add_vm(vm("vm-y", &dev, None)).await.unwrap();
        let e = net2
            .set_vm_policy("vm-y", policy(r#"{"allow_domains":["api.example.com"]}"#))
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::NetworkSetupFailed);
        assert_eq!(net2.state().vms["vm-y"].policy, EgressPolicy::default());
        assert!(net2.state().vms["vm-y"].resolver.is_none());
        net2.teardown().await.unwrap();
        net.teardown().await.unwrap();
    });
}

/// Connects, sends `data`, and returns everything the other side says before closing (empty
/// when the connection is closed without an answer or cannot be made).
fn talk(ip: Ipv4Addr, port: u16, data: &[u8]) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::from((ip, port)), PROBE_TIMEOUT) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = s.write_all(data);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn http(host: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: flick-test\r\n\r\n").into_bytes()
}

/// A minimal TLS 1.3 ClientHello record carrying `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let n = sni.as_bytes();
    let mut ext = vec![0x00, 0x00];
    ext.extend_from_slice(&u16::try_from(n.len() + 5).unwrap().to_be_bytes());
    ext.extend_from_slice(&u16::try_from(n.len() + 3).unwrap().to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&u16::try_from(n.len()).unwrap().to_be_bytes());
    ext.extend_from_slice(n);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x5a; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    body.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01, 0];
    hs.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn sni_and_host_inspection_rejects_a_different_name() {
    let lab = lab(60);
    let t = &lab.t;
    let (g, dev) = t.guest();
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), config(Mode::Bridge))
            .await
            .unwrap();
        let inspecting = policy(
            r#"{"allow_domains":["api.example.com","files.pypi.test"],"inspect_names":true,
                "rules":[{"action":"allow","to":"203.0.113.30","protocol":"tcp","ports":80}]}"#,
        );
        let i = net
            .add_vm(vm("vm-s", &dev, Some(inspecting)))
            .await
            .unwrap();
        configure_guest(&g, &i.lease);
        let r = resolver_of(net.state(), "vm-s");
        assert_ne!(r.proxy_port, 0, "the helper runs a proxy");
        resolve(&g, &i, "api.example.com").expect("answer");
        resolve(&g, &i, "files.pypi.test").expect("answer");
        let uplink = "198.51.100.1";

        let seen = g.run(|| {
            [
                ("HTTP, right Host", talk(API, 80, &http("api.example.com"))),
                (
                    "HTTP, Host with port",
                    talk(API, 80, &http("API.example.com:80")),
                ),
                (
                    "TLS, right SNI",
                    talk(API, 443, &client_hello("api.example.com")),
                ),
                (
                    "HTTP, other allowed name",
                    talk(API, 80, &http("files.pypi.test")),
                ),
                (
                    "HTTP, unlisted name",
                    talk(API, 80, &http("other.example.com")),
                ),
                (
                    "TLS, other allowed name",
                    talk(API, 443, &client_hello("files.pypi.test")),
                ),
                (
                    "TLS, unlisted name",
                    talk(API, 443, &client_hello("evil.example")),
                ),
                ("not TLS on 443", talk(API, 443, &http("api.example.com"))),
                ("HTTP, no Host", talk(API, 80, b"GET / HTTP/1.1\r\n\r\n")),
                (
                    "HTTP to the other host",
                    talk(FILES, 80, &http("files.pypi.test")),
                ),
                (
                    "allow rule, not inspected",
                    talk(APEX, 80, &http("anything.example")),
                ),
            ]
        });
        let want = [
            true, true, true, false, false, false, false, false, false, true, true,
        ];
        for ((what, got), ok) in seen.iter().zip(want) {
            if ok {
                assert_eq!(got, uplink, "{what}: passes");
            } else {
                assert_eq!(got, "", "{what}: closed without reaching the server");
            }
        }
        // Other ports of a resolved address are not inspected.
        assert!(g.run(|| tcp_probe(API, 8080)).is_some());

        // The same mismatch passes without inspection: the check is what stopped it.
        net.set_vm_policy(
            "vm-s",
            policy(r#"{"allow_domains":["api.example.com","files.pypi.test"]}"#),
        )
        .await
        .unwrap();
        assert_eq!(
            g.run(|| talk(API, 80, &http("files.pypi.test"))),
            uplink,
            "not inspected"
        );
        net.teardown().await.unwrap();
    });
}

#[test]
fn names_pointing_inside_hand_out_nothing() {
    let lab = lab(60);
    let t = &lab.t;
    let (g, dev) = t.guest();
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), config(Mode::Bridge))
            .await
            .unwrap();
        let i = net
            .add_vm(vm(
                "vm-p",
                &dev,
                Some(policy(r#"{"allow_domains":["*.example.com"]}"#)),
            ))
            .await
            .unwrap();
        configure_guest(&g, &i.lease);
        for name in [
            "internal.example.com",
            "loop.example.com",
            "metadata.example.com",
        ] {
            let a = resolve(&g, &i, name).expect("answer");
            assert_eq!(a.code, ResponseCode::NoError, "{name}");
            assert!(a.addrs.is_empty(), "{name}: {a:?}");
        }
        let listing = set_listing(&t.host, "vm-p");
        for ip in ["10.1.2.3", "127.0.0.1", "169.254.169.254"] {
            assert!(!listing.contains(ip), "{ip} in {listing}");
        }
        // Public answers are unaffected.
        assert_eq!(
            resolve(&g, &i, "api.example.com").expect("answer").addrs,
            vec![API]
        );
        // Private addresses can be allowed explicitly; loopback and link-local never.
        net.set_vm_policy(
            "vm-p",
            policy(r#"{"allow_domains":["*.example.com"],"allow_private_addresses":true}"#),
        )
        .await
        .unwrap();
        assert_eq!(
            resolve(&g, &i, "internal.example.com")
                .expect("answer")
                .addrs,
            vec![Ipv4Addr::new(10, 1, 2, 3)]
        );
        assert!(set_listing(&t.host, "vm-p").contains("10.1.2.3"));
        assert!(
            resolve(&g, &i, "loop.example.com")
                .expect("answer")
                .addrs
                .is_empty()
        );
        net.teardown().await.unwrap();
    });
}

#[test]
fn cnames_and_large_answers() {
    let mut records: Vec<(String, Ipv4Addr)> = (100..140)
        .map(|n| ("many.example.com".to_owned(), Ipv4Addr::new(203, 0, 113, n)))
        .collect();
    records.push(("files.pypi.test".into(), FILES));
    let refs: Vec<(&str, Ipv4Addr)> = records.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    let t = Topology::build(&[]);
    t.internet.ip(&format!("addr add {FILES}/32 dev eth0"));
    let _dns = Dnsmasq::start_with(
        &t.internet,
        INTERNET,
        &refs,
        60,
        &["--cname=alias.example.com,files.pypi.test".to_owned()],
    );
    let (g, dev) = t.guest();
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), config(Mode::Bridge))
            .await
            .unwrap();
        let p = policy(r#"{"allow_domains":["alias.example.com","many.example.com"]}"#);
        let i = net.add_vm(vm("vm-l", &dev, Some(p))).await.unwrap();
        configure_guest(&g, &i.lease);
        // An allowed alias opens its target's address, though the target name is not listed.
        let a = resolve(&g, &i, "alias.example.com").expect("answer");
        assert_eq!((a.cnames, a.addrs.clone()), (1, vec![FILES]));
        assert!(g.run(|| tcp_probe(FILES, 80)).is_some());
        assert_eq!(
            resolve(&g, &i, "files.pypi.test").expect("answer").code,
            ResponseCode::Refused,
            "the target itself is not allowed"
        );
        // 40 records do not fit a plain 512-byte UDP answer: truncated, complete over TCP,
        // and every address is in the set.
        let udp = resolve(&g, &i, "many.example.com").expect("answer");
        assert!(udp.truncated, "{udp:?}");
        let gw = i.lease.gateway;
        let tcp = g
            .run(|| query(gw, "many.example.com", RecordType::A, true))
            .expect("TCP answer");
        assert!(!tcp.truncated);
        assert_eq!(tcp.addrs.len(), 40);
        let listing = set_listing(&t.host, "vm-l");
        for n in 100..140 {
            assert!(listing.contains(&format!("203.0.113.{n}")), "{n}");
        }
        net.teardown().await.unwrap();
    });
}
