//! Persistent TAPs, full cleanup and bad input against the real kernel, inside throwaway
//! network namespaces (needs root; see `net_common`).

mod net_common;

use flick::ErrorCode;
use flick::net::{
    EgressPolicy, HostNetwork, Mode, Netlink, NetworkConfig, VmRequest, WireguardConfig,
    WireguardMode,
};
use net_common::*;

fn req(id: &str) -> VmRequest {
    VmRequest {
        vm_id: id.into(),
        ..VmRequest::default()
    }
}

#[test]
fn persistent_tap_has_owner_sits_on_the_bridge_and_goes_away() {
    let t = Topology::new();
    let before = t.host.listing();
    t.host.block_on(|| async {
        let cfg = NetworkConfig {
            tap_owner: Some(4321),
            tap_group: Some(8765),
            ..NetworkConfig::default()
        };
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), cfg)
            .await
            .unwrap();
        let i = net.add_vm(req("tap-vm")).await.unwrap();
        assert!(i.created);
        assert!(i.host_device.len() <= 15);
        let detail = t.host.ip(&format!("-d link show {}", i.host_device));
        assert!(detail.contains("tun type tap"), "{detail}");
        assert!(detail.contains("persist on"), "{detail}");
        assert!(detail.contains("user 4321"), "{detail}");
        assert!(detail.contains("group 8765"), "{detail}");
        assert!(detail.contains("master flbr0"), "{detail}");
        assert!(
            detail.contains("state") && detail.contains(",UP"),
            "{detail}"
        );
        let bridge = t.host.ip("addr show flbr0");
        assert!(bridge.contains("inet 172.30.0.1/24"), "{bridge}");
        assert_eq!(
            i.boot_arg(),
            "ip=172.30.0.2::172.30.0.1:255.255.255.0::eth0:off"
        );
        assert_eq!(i.lease.mac, flick::net::plan::mac_address("tap-vm", "eth0"));

        // a second VM gets its own TAP and the next address
        let j = net.add_vm(req("tap-vm-2")).await.unwrap();
        assert_ne!(j.host_device, i.host_device);
        assert_eq!(j.lease.guest_ip.to_string(), "172.30.0.3");

        net.remove_vm("tap-vm").await.unwrap();
        let links = t.host.ip("link show");
        assert!(!links.contains(&i.host_device), "TAP deleted with its VM");
        assert!(links.contains(&j.host_device), "other TAP kept");
        net.teardown().await.unwrap();
    });
    assert_eq!(t.host.listing(), before, "cleanup restores every listing");
}

#[test]
fn cleanup_restores_links_addresses_rules_routes_and_ruleset() {
    for mode in [Mode::Bridge, Mode::Isolated] {
        let t = Topology::new();
        let before = t.host.listing();
        // a table of someone else's that flick must never touch
        t.host.exec(&["nft", "add", "table", "ip", "other"]);
        t.host.exec(&[
            "nft",
            "add chain ip other passthrough { type filter hook forward priority 10; }",
        ]);
        let with_other = t.host.listing();
        t.host.block_on(|| async {
            let cfg = NetworkConfig {
                mode,
                subnet: "10.80.0.0/24".into(),
                host_policy: EgressPolicy::from_json(
                    r#"{"rules":[{"action":"deny","to":"203.0.113.0/24"}]}"#,
                )
                .unwrap(),
                ..NetworkConfig::default()
            };
            let mut net = HostNetwork::setup(Netlink::connect().unwrap(), cfg).await.unwrap();
            for n in 0..3 {
                let policy = EgressPolicy::from_json(
                    r#"{"rules":[{"action":"allow","protocol":"tcp","ports":[80,443]}],"default_action":"deny"}"#,
                )
                .unwrap();
                net.add_vm(VmRequest {
                    vm_id: format!("c{n}"),
                    policy: Some(policy),
                    ..VmRequest::default()
                })
                .await
                .unwrap();
            }
            // a second interface of one VM shares its chain; removing the VM removes both
            let policy = EgressPolicy::from_json(
                r#"{"rules":[{"action":"allow","protocol":"tcp","ports":[80,443]}],"default_action":"deny"}"#,
            )
            .unwrap();
            let second = net
                .add_vm(VmRequest {
                    vm_id: "c0".into(),
                    iface_id: "eth1".into(),
                    policy: Some(policy),
                    ..VmRequest::default()
                })
                .await
                .unwrap();
            assert_eq!(net.state().vms["c0"].interfaces.len(), 2);
            assert_ne!(second.host_device, net.state().vms["c0"].interfaces[0].host_device);
            let e = net
                .add_vm(VmRequest {
                    vm_id: "c0".into(),
                    iface_id: "eth2".into(),
                    ..VmRequest::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidArgument, "one policy per VM");
            assert_ne!(t.host.listing(), with_other);
            assert!(
                t.host
                    .exec(&["nft", "list", "ruleset"])
                    .contains("table ip other")
            );
            // a new process restores the state and cleans up
            let state = serde_json::to_string(net.state()).unwrap();
            let mut again =
                HostNetwork::restore(Netlink::connect().unwrap(), serde_json::from_str(&state).unwrap())
                    .unwrap();
            again.teardown().await.unwrap();
        });
        assert_eq!(
            t.host.listing(),
            with_other,
            "{mode:?}: only flick's objects removed"
        );
        t.host.exec(&["nft", "delete", "table", "ip", "other"]);
        assert_eq!(t.host.listing(), before);
    }
}

const KEY: &str = "YAnz3FEiHvZLwUsc7bJDTBCtHvaMXX7Rc/v/Le9WvV8=";

#[test]
fn bad_input_gets_its_code_and_changes_nothing() {
    let t = Topology::new();
    let before = t.host.listing();
    t.host.block_on(|| async {
        let bad_configs: Vec<(NetworkConfig, ErrorCode)> = vec![
            ("10.0.0.0/31", ErrorCode::InvalidSubnet),
            ("10.0.0.0/32", ErrorCode::InvalidSubnet),
            ("10.0.0.0/0", ErrorCode::InvalidSubnet),
            ("10.0.0.0/33", ErrorCode::InvalidSubnet),
            ("10.0.0.0", ErrorCode::InvalidSubnet),
            ("fd00::/64", ErrorCode::InvalidSubnet),
            ("not-a-subnet", ErrorCode::InvalidSubnet),
        ]
        .into_iter()
        .map(|(s, c)| {
            (
                NetworkConfig {
                    subnet: s.into(),
                    ..NetworkConfig::default()
                },
                c,
            )
        })
        .chain(
            ["", "sixteen-chars-xx", "a b", "a/b", "a:b", "..", "ünï"]
                .into_iter()
                .map(|b| {
                    (
                        NetworkConfig {
                            bridge: b.into(),
                            ..NetworkConfig::default()
                        },
                        ErrorCode::InvalidInterfaceName,
                    )
                }),
        )
        .chain([
            (
                NetworkConfig {
                    uplink: Some("bad uplink".into()),
                    ..NetworkConfig::default()
                },
                ErrorCode::InvalidInterfaceName,
            ),
            (
                NetworkConfig {
                    table: "flick; flush ruleset".into(),
                    ..NetworkConfig::default()
                },
                ErrorCode::InvalidFirewallConfig,
            ),
        ])
        .collect();
        let bad_rules = [
            r#"{"action":"allow","protocol":"all","ports":80}"#,
            r#"{"action":"allow","protocol":"icmp","ports":[1,2]}"#,
            r#"{"action":"allow","ports":22}"#,
            r#"{"action":"allow","protocol":"tcp","ports":0}"#,
            r#"{"action":"allow","protocol":"udp","ports":65536}"#,
            r#"{"action":"allow","protocol":"udp","ports":[]}"#,
            r#"{"action":"deny","to":"10.0.0.0/40"}"#,
            r#"{"action":"deny","to":"2001:db8::1"}"#,
            r#"{"action":"deny","to":"example.org"}"#,
            r#"{"action":"deny","comment":"quote\"inside"}"#,
        ];
        let mut all = bad_configs;
        for r in bad_rules {
            let policy: EgressPolicy =
                serde_json::from_str(&format!(r#"{{"rules":[{{"action":"allow"}},{r}]}}"#)).unwrap();
            all.push((
                NetworkConfig {
                    host_policy: policy,
                    ..NetworkConfig::default()
                },
                ErrorCode::InvalidFirewallConfig,
            ));
        }
        for (cfg, code) in all {
            let e = HostNetwork::setup(Netlink::connect().unwrap(), cfg.clone())
                .await
                .unwrap_err();
            assert_eq!(e.code(), code, "{cfg:?}: {e:?}");
            assert_eq!(t.host.listing(), before, "{cfg:?} changed the host");
        }

        // with a working setup: bad VM requests and WireGuard configs change nothing either
        let mut net = HostNetwork::setup(
            Netlink::connect().unwrap(),
            NetworkConfig {
                subnet: "10.90.0.0/30".into(),
                ..NetworkConfig::default()
            },
        )
        .await
        .unwrap();
        let ready = t.host.listing();
        for r in bad_rules {
            let policy: EgressPolicy =
                serde_json::from_str(&format!(r#"{{"rules":[{r}]}}"#)).unwrap();
            let e = net
                .add_vm(VmRequest {
                    vm_id: "bad".into(),
                    policy: Some(policy),
                    ..VmRequest::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidFirewallConfig, "{r}");
            assert_eq!(t.host.listing(), ready, "{r} changed the host");
        }
        for dev in ["", "x".repeat(16).as_str(), "tap 0"] {
            let e = net
                .add_vm(VmRequest {
                    vm_id: "bad".into(),
                    host_device: Some(dev.into()),
                    ..VmRequest::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidInterfaceName, "{dev:?}");
        }
        let e = net
            .add_vm(VmRequest {
                vm_id: "bad".into(),
                host_device: Some("nosuchdev".into()),
                ..VmRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
        assert_eq!(t.host.listing(), ready);
        // a /30 holds one guest: the second is IP_EXHAUSTED and leaks no TAP
        net.add_vm(req("only")).await.unwrap();
        let one = t.host.listing();
        let e = net.add_vm(req("second")).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::IpExhausted);
        assert_eq!(t.host.listing(), one);

        let good = format!(
            "[Interface]\nPrivateKey = {KEY}\nAddress = 10.99.0.2/32\n[Peer]\nPublicKey = {KEY}\nAllowedIPs = 0.0.0.0/0\nEndpoint = 198.51.100.2:51820\n"
        );
        let bad_wg = [
            good.replace("[Interface]", "[Interface]\nPostUp = touch /tmp/pwned"),
            good.replace("[Interface]", "[Interface]\nPreUp = x"),
            good.replace("[Interface]", "[Interface]\nPreDown = x"),
            good.replace("[Interface]", "[Interface]\nPostDown = x"),
            good.replace("[Interface]", "[Interface]\nSaveConfig = true"),
            good.replace("10.99.0.2/32", "fd00::2/128"),
            good.replace("0.0.0.0/0", "0.0.0.0/0, ::/0"),
            good.replace("198.51.100.2:51820", "[2001:db8::1]:51820"),
            good.replace(KEY, "short"),
            good.replace("Address = 10.99.0.2/32\n", ""),
            good.replace("[Peer]", "[Nonsense]"),
            String::from("[Interface]\n"),
        ];
        for text in &bad_wg {
            let e = flick::net::wireguard::enable(&mut net, &WireguardConfig::managed(text))
                .await
                .unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidWireguardConfig, "{text}");
            assert_eq!(t.host.listing(), one, "{text} changed the host");
        }
        let mut bad_table = WireguardConfig::managed(&good);
        bad_table.table = 254;
        let e = flick::net::wireguard::enable(&mut net, &bad_table)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidWireguardConfig);
        let existing_missing = WireguardConfig {
            mode: WireguardMode::Existing {
                interface: "nosuchwg".into(),
            },
            ..WireguardConfig::managed(&good)
        };
        let e = flick::net::wireguard::enable(&mut net, &existing_missing)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::WireguardSetupFailed);
        assert_eq!(t.host.listing(), one, "failed WireGuard setup left nothing");
        assert!(!std::path::Path::new("/tmp/pwned").exists());
        net.teardown().await.unwrap();
    });
    assert_eq!(t.host.listing(), before);
}

#[test]
fn an_existing_bridge_is_used_and_kept() {
    let t = Topology::new();
    // an operator's bridge: fixed MAC and a port of its own (so its carrier and MAC do not
    // depend on which TAPs come and go)
    t.host
        .ip("link add flbr0 address 02:aa:bb:cc:dd:ee type bridge");
    t.host.ip("link add own0 type veth peer name own1");
    t.host.ip("link set own1 up");
    t.host.ip("link set own0 master flbr0 up");
    t.host.ip("link set flbr0 up");
    // let the operator's bridge settle (carrier, link-local address) before the snapshot
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !(t.host.ip("link show flbr0").contains("state UP")
        && t.host.ip("addr show flbr0").contains("inet6 fe80"))
    {
        assert!(std::time::Instant::now() < deadline, "bridge never came up");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before = t.host.listing();
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), NetworkConfig::default())
            .await
            .unwrap();
        assert!(!net.state().created_bridge);
        assert!(net.state().added_gateway_address);
        let i = net.add_vm(req("on-foreign-bridge")).await.unwrap();
        assert!(
            t.host
                .ip(&format!("link show {}", i.host_device))
                .contains("master flbr0")
        );
        net.teardown().await.unwrap();
    });
    assert!(t.host.ip("link show").contains("flbr0"), "bridge kept");
    assert_eq!(
        t.host.listing(),
        before,
        "only the gateway address and the TAP went away"
    );
}

#[test]
fn setup_after_a_crash_recognizes_its_own_bridge() {
    let t = Topology::new();
    let before = t.host.listing();
    t.host.block_on(|| async {
        let mut crashed = HostNetwork::setup(Netlink::connect().unwrap(), NetworkConfig::default())
            .await
            .unwrap();
        crashed.add_vm(req("lost")).await.unwrap();
        let lost_tap = crashed.state().vms["lost"].interfaces[0]
            .host_device
            .clone();
        drop(crashed); // state lost: no teardown

        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), NetworkConfig::default())
            .await
            .unwrap();
        assert!(
            net.state().created_bridge,
            "flick's MAC marks the bridge as its own"
        );
        net.teardown().await.unwrap();
        // the orphaned TAP is the only thing the lost state knew about
        t.host.ip(&format!("link del {lost_tap}"));
    });
    assert_eq!(t.host.listing(), before);
}

#[test]
fn a_foreign_device_with_the_tap_name_is_never_adopted_or_deleted() {
    let t = Topology::new();
    let clash = flick::net::plan::tap_name("clash", "eth0", 0);
    t.host
        .ip(&format!("link add {clash} type veth peer name clashpeer"));
    let before = t.host.listing();
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), NetworkConfig::default())
            .await
            .unwrap();
        let ready = t.host.listing();
        let e = net.add_vm(req("clash")).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::TapCreateFailed, "{e:?}");
        assert_eq!(t.host.listing(), ready, "the foreign device is untouched");
        assert!(net.state().vms.is_empty());
        net.teardown().await.unwrap();
    });
    assert_eq!(t.host.listing(), before);
}
