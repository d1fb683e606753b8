//! Real packets through flick's bridge, NAT and egress firewall, inside throwaway network
//! namespaces (needs root; see `net_common`).

mod net_common;

use flick::net::{EgressPolicy, HostNetwork, Mode, Netlink, NetworkConfig, VmRequest};
use net_common::*;
use std::net::Ipv4Addr;

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

#[test]
fn nat_masquerades_out_of_the_discovered_uplink() {
    let t = Topology::new();
    let before = t.host.listing();
    let (g, dev) = t.guest();
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), NetworkConfig::default())
            .await
            .unwrap();
        assert_eq!(
            net.state().uplink.as_deref(),
            Some("up0"),
            "uplink from the default route"
        );
        let i = net.add_vm(vm("vm-nat", &dev, None)).await.unwrap();
        configure_guest(&g, &i.lease);
        let seen = g.run(|| {
            (
                tcp_probe(INTERNET, 80),
                udp_probe(INTERNET, 53),
                icmp_probe(INTERNET),
            )
        });
        assert_eq!(
            seen.0.as_deref(),
            Some("198.51.100.1"),
            "TCP server sees the uplink address"
        );
        assert_eq!(
            seen.1.as_deref(),
            Some("198.51.100.1"),
            "UDP server sees the uplink address"
        );
        assert!(seen.2, "ICMP echo answered");
        let fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
        assert_eq!(fwd.trim(), "1", "forwarding on in the host namespace");
        net.teardown().await.unwrap();
    });
    // the guest's veth end is the caller's device: flick detached it but did not delete it
    assert!(t.host.ip("link show").contains(&format!("{dev}@")));
    t.host.ip(&format!("link del {dev}"));
    assert_eq!(t.host.listing(), before);
}

#[test]
fn every_rule_shape_allows_and_denies_exactly_what_it_says() {
    let t = Topology::new();
    let (g, dev) = t.guest();
    let host_policy = policy(
        r#"{"rules":[
            {"action":"allow","protocol":"tcp","ports":80,"comment":"web anywhere"},
            {"action":"allow","protocol":"udp","ports":53},
            {"action":"deny","to":"203.0.113.10","protocol":"tcp","ports":8080,"comment":"order"},
            {"action":"allow","to":"203.0.113.0/24","protocol":"tcp","ports":[443,8080]},
            {"action":"deny","to":"203.0.113.20","protocol":"icmp"},
            {"action":"allow","protocol":"icmp"}
        ],"default_action":"deny"}"#,
    );
    t.host.block_on(|| async {
        let cfg = NetworkConfig {
            host_policy,
            ..NetworkConfig::default()
        };
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), cfg)
            .await
            .unwrap();
        let i = net.add_vm(vm("vm-rules", &dev, None)).await.unwrap();
        configure_guest(&g, &i.lease);
        let r = g.run(|| {
            [
                (
                    "tcp 80 internet (single port)",
                    tcp_probe(INTERNET, 80).is_some(),
                    true,
                ),
                (
                    "tcp 22 internet (default deny)",
                    tcp_probe(INTERNET, 22).is_some(),
                    false,
                ),
                ("udp 53 (udp port)", udp_probe(INTERNET, 53).is_some(), true),
                (
                    "udp 5353 (default deny)",
                    udp_probe(INTERNET, 5353).is_some(),
                    false,
                ),
                (
                    "tcp 443 far-a (list + CIDR)",
                    tcp_probe(FAR_A, 443).is_some(),
                    true,
                ),
                (
                    "tcp 8080 far-b (list + CIDR)",
                    tcp_probe(FAR_B, 8080).is_some(),
                    true,
                ),
                (
                    "tcp 8080 far-a (earlier deny wins)",
                    tcp_probe(FAR_A, 8080).is_some(),
                    false,
                ),
                (
                    "tcp 443 internet (outside CIDR)",
                    tcp_probe(INTERNET, 443).is_some(),
                    false,
                ),
                ("icmp internet", icmp_probe(INTERNET), true),
                (
                    "icmp far-b (address deny before allow)",
                    icmp_probe(FAR_B),
                    false,
                ),
            ]
        });
        for (what, got, want) in r {
            assert_eq!(got, want, "{what}");
        }
        // one transaction replaces the policy: now everything is allowed
        net.set_host_policy(EgressPolicy::default()).await.unwrap();
        assert!(
            g.run(|| tcp_probe(INTERNET, 22).is_some()),
            "default allow after replace"
        );
        net.teardown().await.unwrap();
    });
}

#[test]
fn per_vm_rules_vanish_with_the_vm() {
    let t = Topology::new();
    let (g1, d1) = t.guest();
    let (g2, d2) = t.guest();
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), NetworkConfig::default())
            .await
            .unwrap();
        let i2 = net.add_vm(vm("vm-two", &d2, None)).await.unwrap();
        configure_guest(&g2, &i2.lease);
        let nft_before = t.host.exec(&["nft", "list", "table", "inet", "flick"]);
        let strict = policy(
            r#"{"rules":[{"action":"allow","to":"203.0.113.10","protocol":"tcp","ports":443}],
                "default_action":"deny"}"#,
        );
        let i1 = net.add_vm(vm("vm-one", &d1, Some(strict))).await.unwrap();
        configure_guest(&g1, &i1.lease);
        assert_eq!(
            g1.run(|| tcp_probe(FAR_A, 443)).as_deref(),
            Some("198.51.100.1")
        );
        assert_eq!(g1.run(|| tcp_probe(INTERNET, 80)), None, "VM default deny");
        assert!(
            g2.run(|| tcp_probe(INTERNET, 80)).is_some(),
            "other VM unaffected"
        );
        let chain = flick::net::nft::vm_chain("vm-one");
        assert!(
            t.host
                .exec(&["nft", "list", "table", "inet", "flick"])
                .contains(&chain)
        );

        net.remove_vm("vm-one").await.unwrap();
        let nft_after = t.host.exec(&["nft", "list", "table", "inet", "flick"]);
        assert_eq!(
            nft_after, nft_before,
            "exactly the VM's chain and map element are gone"
        );
        assert!(g2.run(|| tcp_probe(INTERNET, 80)).is_some());

        // the same guest plugged in again without a policy is unrestricted
        let again = net.add_vm(vm("vm-one-again", &d1, None)).await.unwrap();
        assert_eq!(
            again.lease.guest_ip, i1.lease.guest_ip,
            "released address reused"
        );
        assert!(g1.run(|| tcp_probe(INTERNET, 80)).is_some());
        net.teardown().await.unwrap();
    });
}

#[test]
fn isolation_mode_blocks_guest_to_guest_unless_a_rule_allows() {
    let t = Topology::new();
    let before = t.host.listing();
    let (g1, d1) = t.guest();
    let (g2, d2) = t.guest();
    t.host.block_on(|| async {
        let cfg = NetworkConfig {
            mode: Mode::Isolated,
            subnet: "10.70.0.0/24".into(),
            ..NetworkConfig::default()
        };
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), cfg)
            .await
            .unwrap();
        let i1 = net.add_vm(vm("iso-1", &d1, None)).await.unwrap();
        let i2 = net.add_vm(vm("iso-2", &d2, None)).await.unwrap();
        assert_eq!(i1.lease.prefix_len, 30);
        assert_ne!(i1.lease.network(), i2.lease.network());
        configure_guest(&g1, &i1.lease);
        configure_guest(&g2, &i2.lease);
        assert!(
            !t.host.ip("link show").contains("flbr0"),
            "no bridge in isolation mode"
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let server = tcp_server(&g2, 9000, stop.clone());
        let g2_ip: Ipv4Addr = i2.lease.guest_ip;
        assert_eq!(
            g1.run(|| tcp_probe(g2_ip, 9000)),
            None,
            "guest to guest blocked"
        );
        assert!(!g1.run(|| icmp_probe(g2_ip)), "guest to guest ICMP blocked");
        assert_eq!(
            g1.run(|| tcp_probe(INTERNET, 80)).as_deref(),
            Some("198.51.100.1")
        );
        assert_eq!(
            g2.run(|| tcp_probe(INTERNET, 80)).as_deref(),
            Some("198.51.100.1")
        );

        net.set_host_policy(policy(&format!(
            r#"{{"rules":[{{"action":"allow","to":"{g2_ip}","protocol":"tcp","ports":9000}}]}}"#
        )))
        .await
        .unwrap();
        assert_eq!(
            g1.run(|| tcp_probe(g2_ip, 9000)).as_deref(),
            Some(i1.lease.guest_ip.to_string().as_str()),
            "allowed by a rule, routed without NAT"
        );
        assert!(!g1.run(|| icmp_probe(g2_ip)), "only what the rule allows");
        // g1 borrows g2's address: dropped at the forward hook, before any policy
        let pinned = || {
            let table = t
                .host
                .exec(&["nft", "list", "chain", "inet", "flick", "forward"]);
            let line = table
                .lines()
                .find(|l| l.contains("source pinning"))
                .unwrap_or_else(|| panic!("no pinning rule: {table}"))
                .to_owned();
            let n: u64 = line
                .split("counter packets ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no counter: {line}"));
            n
        };
        let clean = pinned();
        assert!(g1.run(|| udp_probe(INTERNET, 53)).is_some());
        assert_eq!(pinned(), clean, "own address passes");
        g1.ip(&format!("addr add {g2_ip}/32 dev eth0"));
        g1.ip(&format!(
            "route replace default via {} src {g2_ip}",
            i1.lease.gateway
        ));
        assert_eq!(g1.run(|| udp_probe(INTERNET, 53)), None);
        assert!(
            pinned() > clean,
            "spoofed source dropped by the pinning rule"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        server.join().unwrap();
        net.teardown().await.unwrap();
    });
    let after_links = t.host.ip("addr show");
    assert!(
        !after_links.contains("10.70.0."),
        "point-to-point addresses removed"
    );
    t.host.ip(&format!("link del {d1}"));
    t.host.ip(&format!("link del {d2}"));
    assert_eq!(t.host.listing(), before);
}
