//! `HostOptions::network`: VMs whose interfaces name no host device get a TAP and a MAC from the
//! host network, removed again by `remove_vm` and `Host::cleanup`. Runs the library inside a
//! throwaway network namespace (see `net_common`) against the Firecracker double; needs root.

mod net_common;

use std::path::Path;
use std::time::Duration;

use flick::ErrorCode;
use flick::config::{NetworkInterface, VmConfig};
use flick::host::{FirecrackerBinary, Host, HostOptions};
use flick::net::NetworkConfig;
use net_common::*;
use serde_json::Value;

fn options(dir: &Path) -> HostOptions {
    let mut o = HostOptions::new(
        dir.join("data"),
        FirecrackerBinary::Path(flick_testkit::fc_double_path()),
    );
    o.runtime_dir = Some(dir.join("runtime"));
    o.stop_grace = Duration::from_secs(2);
    o.firecracker_env
        .push(("FC_DOUBLE_REQUEST_LOG".into(), "requests.jsonl".into()));
    o.network = Some(NetworkConfig::default());
    o
}

fn config(dir: &Path) -> VmConfig {
    std::fs::write(dir.join("vmlinux"), b"kernel").unwrap();
    std::fs::write(dir.join("rootfs.img"), vec![0u8; 4096]).unwrap();
    VmConfig::new(dir.join("vmlinux"), dir.join("rootfs.img")).with_memory_mib(128)
}

fn interface_request(runtime: &Path, iface: &str) -> Value {
    std::fs::read_to_string(runtime.join("requests.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["method"] == "PUT" && r["path"] == format!("/network-interfaces/{iface}"))
        .unwrap_or_else(|| panic!("no PUT for {iface}"))["body"]
        .clone()
}

#[test]
fn open_interfaces_get_taps_that_go_away_with_the_vm_and_the_host() {
    let t = Topology::new();
    let before = t.host.listing();
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().to_path_buf();
    let taps = t.host.block_on(|| async {
        let host = Host::new(options(&path)).unwrap();
        // eth0 is open; eth1 names a device of the caller's and is left alone.
        let cfg = config(&path)
            .with_network_interface(NetworkInterface::new("eth0"))
            .with_network_interface(NetworkInterface::with_tap("eth1", "callers0"));
        let vm = host.create_vm("net-a", cfg.clone()).await.unwrap();
        assert!(
            vm.config().network_interfaces[0].host_dev_name.is_none(),
            "the caller's config stays as given"
        );
        let taps = vm.tap_devices().await;
        assert_eq!(taps.len(), 2, "{taps:?}");
        assert_eq!(taps[1], "callers0");
        let tap_a = taps[0].clone();
        let link = t.host.ip(&format!("-d link show {tap_a}"));
        assert!(
            link.contains("tun type tap") && link.contains("master flbr0"),
            "{link}"
        );

        vm.start().await.unwrap();
        let runtime = vm.runtime_dir().await.unwrap();
        let eth0 = interface_request(&runtime, "eth0");
        assert_eq!(eth0["host_dev_name"], tap_a.as_str());
        assert_eq!(
            eth0["guest_mac"],
            flick::net::plan::mac_address("net-a", "eth0").as_str()
        );
        assert_eq!(
            interface_request(&runtime, "eth1")["host_dev_name"],
            "callers0"
        );

        // A second VM gets its own TAP.
        let vm_b = host.create_vm("net-b", cfg).await.unwrap();
        let tap_b = vm_b.tap_devices().await[0].clone();
        assert_ne!(tap_a, tap_b);
        vm_b.start().await.unwrap();

        host.remove_vm("net-a").await.unwrap();
        let links = t.host.ip("link show");
        assert!(!links.contains(&tap_a), "{links}");
        assert!(links.contains(&tap_b), "{links}");

        // A config that is refused creates no TAP.
        let bad = config(&path)
            .with_vcpus(0)
            .with_network_interface(NetworkInterface::new("eth0"));
        let err = host.create_vm("net-bad", bad).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidConfig);
        assert_eq!(host.vm_count(), 1);

        host.cleanup().await.unwrap();
        (tap_a, tap_b)
    });
    let after = t.host.listing();
    assert!(
        !after.contains(&taps.0) && !after.contains(&taps.1),
        "{after}"
    );
    assert_eq!(
        before, after,
        "host cleanup removes every TAP, rule and the bridge"
    );
    assert!(
        std::fs::read_dir(dir.path().join("runtime"))
            .unwrap()
            .flatten()
            .all(|e| e.file_name() == ".view"),
        "runtime dirs removed"
    );
}

#[test]
fn vms_without_open_interfaces_never_touch_the_network() {
    let t = Topology::new();
    let before = t.host.listing();
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let path = dir.path().to_path_buf();
    t.host.block_on(|| async {
        let host = Host::new(options(&path)).unwrap();
        let vm = host
            .create_vm(
                "no-net",
                config(&path).with_network_interface(NetworkInterface::with_tap("eth0", "mine0")),
            )
            .await
            .unwrap();
        assert_eq!(vm.tap_devices().await, vec!["mine0".to_string()]);
        vm.start().await.unwrap();
        host.cleanup().await.unwrap();
    });
    assert_eq!(before, t.host.listing(), "no bridge, table or TAP was made");
}
