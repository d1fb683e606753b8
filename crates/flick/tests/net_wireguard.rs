//! WireGuard egress between two network namespaces with the userspace tunnel (this kernel has
//! no WireGuard module), real packets through it, fail-closed and cleanup (needs root; see
//! `net_common`).

mod net_common;

use std::path::PathBuf;

use defguard_wireguard_rs::key::Key;
use flick::net::wireguard::{self, TunnelBackend, TunnelSpec, WgQuickConfig};
use flick::net::{HostNetwork, Netlink, NetworkConfig, VmRequest, WireguardConfig, WireguardMode};
use net_common::*;

const TUNNEL_FAR: &str = "10.99.0.1";
const TUNNEL_NEAR: &str = "10.99.0.2";

fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flick-wg"))
}

struct Peers {
    near_config: String,
    far: (u32, u64),
    far_name: String,
}

/// Starts the far peer in the internet namespace and returns the near side's wg-quick text.
fn far_peer(t: &Topology) -> Peers {
    let near_key = Key::generate();
    let far_key = Key::generate();
    let psk = Key::generate();
    let far_name = unique("wgf");
    let far_text = format!(
        "[Interface]\nPrivateKey = {far_key}\nAddress = {TUNNEL_FAR}/24\nListenPort = 51820\n\n[Peer]\nPublicKey = {}\nPresharedKey = {psk}\nAllowedIPs = {TUNNEL_NEAR}/32\n",
        near_key.public_key()
    );
    let spec = TunnelSpec {
        interface: far_name.clone(),
        config: WgQuickConfig::parse(&far_text).unwrap(),
        endpoints: vec![None],
    };
    let far = t
        .internet
        .run(|| wireguard::start_userspace_tunnel(&spec, &helper()))
        .expect("far peer starts");
    let TunnelBackend::Userspace { pid, start_time } = far else {
        panic!("userspace expected")
    };
    let near_config = format!(
        "[Interface]\nPrivateKey = {near_key}\nAddress = {TUNNEL_NEAR}/32\nMTU = 1380\nDNS = 9.9.9.9\n\n[Peer]\nPublicKey = {}\nPresharedKey = {psk}\nAllowedIPs = 0.0.0.0/0\nEndpoint = {INTERNET}:51820\nPersistentKeepalive = 1\n",
        far_key.public_key()
    );
    Peers {
        near_config,
        far: (pid, start_time),
        far_name,
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let _ = wireguard::stop_userspace_tunnel(&self.far_name, self.far.0, self.far.1);
    }
}

#[test]
fn managed_userspace_tunnel_carries_guest_traffic_and_fails_closed() {
    let t = Topology::new();
    let peers = far_peer(&t);
    assert!(t.internet.ip("link show").contains(&peers.far_name));
    let before = t.host.listing();
    let (g, dev) = t.guest();
    let near_name = unique("wgn");
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), NetworkConfig::default())
            .await
            .unwrap();
        let i = net
            .add_vm(VmRequest {
                vm_id: "wg-vm".into(),
                host_device: Some(dev.clone()),
                ..VmRequest::default()
            })
            .await
            .unwrap();
        configure_guest(&g, &i.lease);
        assert_eq!(
            g.run(|| tcp_probe(INTERNET, 80)).as_deref(),
            Some("198.51.100.1")
        );

        let cfg = WireguardConfig {
            mode: WireguardMode::Managed {
                config: peers.near_config.clone(),
                interface: Some(near_name.clone()),
            },
            helper: Some(helper()),
            ..WireguardConfig::managed("")
        };
        let warnings = wireguard::enable(&mut net, &cfg).await.unwrap();
        assert!(warnings.iter().any(|w| w.contains("DNS")), "{warnings:?}");
        let st = net.state().wireguard.clone().unwrap();
        let Some(TunnelBackend::Userspace { pid, start_time }) = st.managed else {
            panic!("this kernel has no WireGuard: the userspace helper must be used")
        };

        // guest traffic leaves through the tunnel, masqueraded to the tunnel address
        assert_eq!(
            g.run(|| tcp_probe(INTERNET, 80)).as_deref(),
            Some(TUNNEL_NEAR),
            "server sees the tunnel address"
        );
        let far: std::net::Ipv4Addr = TUNNEL_FAR.parse().unwrap();
        assert_eq!(g.run(|| udp_probe(far, 53)).as_deref(), Some(TUNNEL_NEAR));
        // host traffic keeps the normal default route
        assert_eq!(
            t.host.run(|| tcp_probe(INTERNET, 80)).as_deref(),
            Some("198.51.100.1")
        );
        let rules = t.host.ip("rule");
        assert!(rules.contains("lookup 51820"), "{rules}");
        // the helper speaks the standard UAPI: wireguard-tools can read it
        let show = t.host.exec(&["wg", "show", &near_name]);
        assert!(show.contains("latest handshake"), "{show}");
        assert!(
            show.contains(&format!("endpoint: {INTERNET}:51820")),
            "{show}"
        );
        let table = t.host.ip("route show table 51820");
        assert!(
            table.contains(&format!("default dev {near_name}")),
            "{table}"
        );
        assert!(table.contains("blackhole default"), "{table}");

        // the tunnel dies (helper gone): guest traffic is dropped, never leaked to the uplink
        wireguard::stop_userspace_tunnel(&near_name, pid, start_time).unwrap();
        assert!(!t.host.ip("link show").contains(&near_name), "tunnel gone");
        assert_eq!(g.run(|| tcp_probe(INTERNET, 80)), None, "fail closed");
        assert!(!g.run(|| icmp_probe(INTERNET)), "fail closed (ICMP)");
        assert_eq!(
            t.host.run(|| tcp_probe(INTERNET, 80)).as_deref(),
            Some("198.51.100.1"),
            "host traffic unaffected"
        );

        wireguard::disable(&mut net).await.unwrap();
        assert_eq!(
            g.run(|| tcp_probe(INTERNET, 80)).as_deref(),
            Some("198.51.100.1"),
            "plain NAT again after disabling"
        );
        net.teardown().await.unwrap();
    });
    t.host.ip(&format!("link del {dev}"));
    assert_eq!(t.host.listing(), before, "WireGuard cleanup left nothing");
    drop(peers);
}

#[test]
fn existing_interface_is_used_and_never_deleted() {
    let t = Topology::new();
    let peers = far_peer(&t);
    // the operator's own tunnel, not created through HostNetwork
    let own = unique("wgo");
    let spec = TunnelSpec {
        interface: own.clone(),
        config: WgQuickConfig::parse(&peers.near_config).unwrap(),
        endpoints: vec![Some(format!("{INTERNET}:51820").parse().unwrap())],
    };
    let TunnelBackend::Userspace { pid, start_time } = t
        .host
        .run(|| wireguard::start_userspace_tunnel(&spec, &helper()))
        .unwrap()
    else {
        panic!("userspace expected")
    };
    let before = t.host.listing();
    let (g, dev) = t.guest();
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), NetworkConfig::default())
            .await
            .unwrap();
        let i = net
            .add_vm(VmRequest {
                vm_id: "wg-existing".into(),
                host_device: Some(dev.clone()),
                ..VmRequest::default()
            })
            .await
            .unwrap();
        configure_guest(&g, &i.lease);
        let cfg = WireguardConfig {
            mode: WireguardMode::Existing {
                interface: own.clone(),
            },
            table: 4242,
            ..WireguardConfig::managed("")
        };
        wireguard::enable(&mut net, &cfg).await.unwrap();
        assert!(t.host.ip("route show table 4242").contains(&own));
        assert_eq!(
            g.run(|| tcp_probe(INTERNET, 80)).as_deref(),
            Some(TUNNEL_NEAR)
        );
        net.teardown().await.unwrap();
    });
    assert!(
        t.host.ip("link show").contains(&own),
        "existing interface kept"
    );
    t.host.ip(&format!("link del {dev}"));
    assert_eq!(
        t.host.listing(),
        before,
        "only flick's routes, rules and nft objects removed"
    );
    wireguard::stop_userspace_tunnel(&own, pid, start_time).unwrap();
    assert!(!t.host.ip("link show").contains(&own));
    assert!(!wireguard::uapi_socket(&own).exists());
    drop(peers);
}

#[test]
fn kernel_backend_is_used_only_when_the_kernel_has_it() {
    let t = Topology::new();
    let peers = far_peer(&t);
    let before = t.host.listing();
    let kernel_has_wireguard = std::path::Path::new("/sys/module/wireguard").exists();
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), NetworkConfig::default())
            .await
            .unwrap();
        let ready = t.host.listing();
        let cfg = WireguardConfig {
            mode: WireguardMode::Managed {
                config: peers.near_config.clone(),
                interface: Some(unique("wgk")),
            },
            backend: wireguard::BackendChoice::Kernel,
            ..WireguardConfig::managed("")
        };
        let r = wireguard::enable(&mut net, &cfg).await;
        if kernel_has_wireguard {
            r.unwrap();
            assert_eq!(
                net.state().wireguard.as_ref().unwrap().managed,
                Some(TunnelBackend::Kernel)
            );
            wireguard::disable(&mut net).await.unwrap();
        } else {
            let e = r.unwrap_err();
            assert_eq!(e.code(), flick::ErrorCode::WireguardSetupFailed, "{e:?}");
            assert!(net.state().wireguard.is_none());
        }
        assert_eq!(t.host.listing(), ready, "nothing left behind");
        net.teardown().await.unwrap();
    });
    assert_eq!(t.host.listing(), before);
}

#[test]
fn tunnel_outlives_its_manager_and_a_restored_manager_removes_it() {
    let t = Topology::new();
    let peers = far_peer(&t);
    let before = t.host.listing();
    let (g, dev) = t.guest();
    let name = unique("wgr");
    let state = t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), NetworkConfig::default())
            .await
            .unwrap();
        let i = net
            .add_vm(VmRequest {
                vm_id: "wg-restore".into(),
                host_device: Some(dev.clone()),
                ..VmRequest::default()
            })
            .await
            .unwrap();
        configure_guest(&g, &i.lease);
        let cfg = WireguardConfig {
            mode: WireguardMode::Managed {
                config: peers.near_config.clone(),
                interface: Some(name.clone()),
            },
            helper: Some(helper()),
            ..WireguardConfig::managed("")
        };
        wireguard::enable(&mut net, &cfg).await.unwrap();
        serde_json::to_string(net.state()).unwrap()
        // `net` is dropped here without cleanup, like a CLI that exits
    });
    let restored: flick::net::NetworkState = serde_json::from_str(&state).unwrap();
    let Some(TunnelBackend::Userspace { pid, .. }) = restored.wireguard.as_ref().unwrap().managed
    else {
        panic!("userspace expected")
    };
    let p = rustix::process::Pid::from_raw(pid.cast_signed()).unwrap();
    assert_eq!(
        rustix::process::getsid(Some(p)).unwrap(),
        p,
        "the helper leads its own session, detached from its creator"
    );
    assert_eq!(
        g.run(|| tcp_probe(INTERNET, 80)).as_deref(),
        Some(TUNNEL_NEAR),
        "tunnel still carries traffic after its manager is gone"
    );
    t.host.block_on(|| async {
        let mut net = HostNetwork::restore(Netlink::connect().unwrap(), restored).unwrap();
        net.teardown().await.unwrap();
    });
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "helper stopped"
    );
    t.host.ip(&format!("link del {dev}"));
    assert_eq!(t.host.listing(), before);
}

#[test]
fn only_allowed_ips_use_the_tunnel_when_not_routing_all() {
    let t = Topology::new();
    let peers = far_peer(&t);
    let before = t.host.listing();
    let (g, dev) = t.guest();
    let name = unique("wgs");
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), NetworkConfig::default())
            .await
            .unwrap();
        let i = net
            .add_vm(VmRequest {
                vm_id: "wg-split".into(),
                host_device: Some(dev.clone()),
                ..VmRequest::default()
            })
            .await
            .unwrap();
        configure_guest(&g, &i.lease);
        let cfg = WireguardConfig {
            mode: WireguardMode::Managed {
                config: peers
                    .near_config
                    .replace("AllowedIPs = 0.0.0.0/0", "AllowedIPs = 10.99.0.0/24"),
                interface: Some(name.clone()),
            },
            route_all_vm_traffic: false,
            helper: Some(helper()),
            ..WireguardConfig::managed("")
        };
        wireguard::enable(&mut net, &cfg).await.unwrap();
        let table = t.host.ip("route show table 51820");
        assert!(
            table.contains(&format!("10.99.0.0/24 dev {name}")),
            "{table}"
        );
        assert!(!table.contains("default"), "{table}");
        let far: std::net::Ipv4Addr = TUNNEL_FAR.parse().unwrap();
        assert_eq!(
            g.run(|| tcp_probe(far, 80)).as_deref(),
            Some(TUNNEL_NEAR),
            "AllowedIPs go through the tunnel"
        );
        assert_eq!(
            g.run(|| tcp_probe(INTERNET, 80)).as_deref(),
            Some("198.51.100.1"),
            "everything else keeps the uplink"
        );
        net.teardown().await.unwrap();
    });
    t.host.ip(&format!("link del {dev}"));
    assert_eq!(t.host.listing(), before);
    assert!(!wireguard::uapi_socket(&name).exists());
}

#[test]
fn without_fail_closed_a_dead_tunnel_falls_back_to_the_uplink() {
    let t = Topology::new();
    let peers = far_peer(&t);
    let (g, dev) = t.guest();
    let name = unique("wgx");
    t.host.block_on(|| async {
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), NetworkConfig::default())
            .await
            .unwrap();
        let i = net
            .add_vm(VmRequest {
                vm_id: "wg-open".into(),
                host_device: Some(dev.clone()),
                ..VmRequest::default()
            })
            .await
            .unwrap();
        configure_guest(&g, &i.lease);
        let cfg = WireguardConfig {
            mode: WireguardMode::Managed {
                config: peers.near_config.clone(),
                interface: Some(name.clone()),
            },
            fail_closed: false,
            helper: Some(helper()),
            ..WireguardConfig::managed("")
        };
        wireguard::enable(&mut net, &cfg).await.unwrap();
        assert_eq!(
            g.run(|| tcp_probe(INTERNET, 80)).as_deref(),
            Some(TUNNEL_NEAR)
        );
        assert!(!t.host.ip("route show table 51820").contains("blackhole"));
        let Some(TunnelBackend::Userspace { pid, start_time }) =
            net.state().wireguard.as_ref().unwrap().managed
        else {
            panic!("userspace expected")
        };
        wireguard::stop_userspace_tunnel(&name, pid, start_time).unwrap();
        assert_eq!(
            g.run(|| tcp_probe(INTERNET, 80)).as_deref(),
            Some("198.51.100.1"),
            "fail open: back to the uplink"
        );
        net.teardown().await.unwrap();
    });
}
