//! The Firecracker API client against the Firecracker double, as a real process over a real
//! Unix socket: every typed method is called, and the double's request log proves every
//! operation of the spec was exercised.

use std::collections::BTreeSet;
use std::time::Duration;

use flick::ErrorCode;
use flick::api::models::*;
use flick::api::{ClientOptions, FirecrackerClient};
use flick_testkit::spec::Spec;
use flick_testkit::{FcDouble, FcDoubleOptions};
use serde_json::json;

fn rate_limiter() -> RateLimiter {
    RateLimiter {
        bandwidth: Some(TokenBucket {
            size: 1 << 20,
            one_time_burst: None,
            refill_time: 100,
        }),
        ops: None,
    }
}

#[tokio::test]
async fn every_typed_method_reaches_its_endpoint() {
    let fc = FcDouble::spawn(FcDoubleOptions::default());
    let dir = fc.dir().to_path_buf();
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, b"kernel").unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let client = FirecrackerClient::new(fc.socket_path());
    let info = client.wait_ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(info.state, InstanceState::NotStarted);
    assert_eq!(
        client.version().await.unwrap().firecracker_version,
        "1.16.1"
    );

    // Pre-boot configuration: every PUT must be accepted.
    client
        .put_logger(&Logger {
            log_path: Some(dir.join("fc.log")),
            level: Some(LogLevel::Info),
            ..Logger::default()
        })
        .await
        .unwrap();
    client
        .put_metrics(&Metrics {
            metrics_path: dir.join("fc.metrics"),
        })
        .await
        .unwrap();
    client
        .put_machine_config(&MachineConfiguration {
            vcpu_count: 2,
            mem_size_mib: 256,
            smt: Some(false),
            track_dirty_pages: Some(true),
            cpu_template: None,
            huge_pages: Some(HugePages::None),
        })
        .await
        .unwrap();
    client
        .patch_machine_config(&MachineConfigurationUpdate {
            mem_size_mib: Some(512),
            ..MachineConfigurationUpdate::default()
        })
        .await
        .unwrap();
    assert_eq!(client.get_machine_config().await.unwrap().mem_size_mib, 512);
    client
        .put_cpu_config(&CpuConfig {
            kvm_capabilities: Some(vec!["!56".into()]),
            ..CpuConfig::default()
        })
        .await
        .unwrap();
    client
        .put_boot_source(&BootSource {
            kernel_image_path: kernel.clone(),
            boot_args: Some("console=ttyS0".into()),
            initrd_path: None,
        })
        .await
        .unwrap();
    client
        .put_drive(&Drive {
            drive_id: "rootfs".into(),
            partuuid: None,
            is_root_device: true,
            cache_type: Some(CacheType::Unsafe),
            is_read_only: Some(false),
            path_on_host: Some(disk.clone()),
            rate_limiter: None,
            io_engine: Some(IoEngine::Sync),
            socket: None,
        })
        .await
        .unwrap();
    client
        .put_pmem(&Pmem {
            id: "pm0".into(),
            path_on_host: disk.clone(),
            root_device: None,
            read_only: Some(true),
            rate_limiter: None,
        })
        .await
        .unwrap();
    client
        .put_network_interface(&NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "fltap0".into(),
            guest_mac: Some("02:00:00:00:00:01".into()),
            mtu: Some(1500),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        })
        .await
        .unwrap();
    client
        .put_vsock(&Vsock {
            guest_cid: 3,
            uds_path: dir.join("v.sock"),
            vsock_id: None,
        })
        .await
        .unwrap();
    client
        .put_balloon(&Balloon {
            amount_mib: 0,
            deflate_on_oom: true,
            stats_polling_interval_s: Some(1),
            free_page_hinting: Some(true),
            free_page_reporting: None,
        })
        .await
        .unwrap();
    client
        .put_entropy(&EntropyDevice {
            rate_limiter: Some(rate_limiter()),
        })
        .await
        .unwrap();
    client
        .put_serial(&SerialDevice {
            serial_out_path: Some(dir.join("serial.log")),
            rate_limiter: None,
        })
        .await
        .unwrap();
    client
        .put_memory_hotplug(&MemoryHotplugConfig {
            total_size_mib: Some(1024),
            slot_size_mib: Some(128),
            block_size_mib: Some(2),
        })
        .await
        .unwrap();
    client
        .put_mmds_config(&MmdsConfig {
            version: Some(MmdsVersion::V2),
            network_interfaces: vec!["eth0".into()],
            ipv4_address: Some("169.254.169.254".parse().unwrap()),
            imds_compat: None,
        })
        .await
        .unwrap();
    client.put_mmds(&json!({"a": {"b": 1}})).await.unwrap();
    client.patch_mmds(&json!({"a": {"c": 2}})).await.unwrap();
    assert_eq!(
        client.get_mmds().await.unwrap(),
        json!({"a": {"b": 1, "c": 2}})
    );
    assert_eq!(client.get_balloon().await.unwrap().amount_mib, 0);
    let config = client.get_vm_config().await.unwrap();
    assert_eq!(config.drives.len(), 1);
    assert_eq!(config.network_interfaces[0].host_dev_name, "fltap0");

    // A pre-boot-only call's post-boot twin fails with Firecracker's words.
    let err = client.flush_metrics().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ApiError);
    assert_eq!(
        err.details().unwrap()["fault_message"],
        "The requested operation is not supported before starting the microVM."
    );

    client.instance_start().await.unwrap();
    assert_eq!(
        client.describe_instance().await.unwrap().state,
        InstanceState::Running
    );
    let err = client
        .put_machine_config(&MachineConfiguration {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: None,
            track_dirty_pages: None,
            cpu_template: None,
            huge_pages: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert_eq!(
        err.details().unwrap()["fault_message"],
        "The requested operation is not supported after starting the microVM."
    );

    // Post-boot operations (some may be refused by the VMM; the request must still go out).
    client.flush_metrics().await.unwrap();
    client
        .patch_drive(&PartialDrive {
            drive_id: "rootfs".into(),
            path_on_host: None,
            rate_limiter: Some(rate_limiter()),
        })
        .await
        .unwrap();
    client
        .patch_pmem(&PartialPmem {
            id: "pm0".into(),
            rate_limiter: Some(rate_limiter()),
        })
        .await
        .unwrap();
    client
        .patch_network_interface(&PartialNetworkInterface {
            iface_id: "eth0".into(),
            rx_rate_limiter: Some(rate_limiter()),
            tx_rate_limiter: None,
        })
        .await
        .unwrap();
    client
        .patch_balloon(&BalloonUpdate { amount_mib: 16 })
        .await
        .unwrap();
    client
        .patch_balloon_stats(&BalloonStatsUpdate {
            stats_polling_interval_s: 2,
        })
        .await
        .unwrap();
    client.get_balloon_stats().await.unwrap();
    client
        .start_balloon_hinting(&BalloonStartCmd::default())
        .await
        .unwrap();
    client.get_balloon_hinting_status().await.unwrap();
    client.stop_balloon_hinting().await.unwrap();
    let _ = client
        .patch_memory_hotplug(&MemoryHotplugSizeUpdate {
            requested_size_mib: Some(256),
        })
        .await;
    let _ = client.get_memory_hotplug().await;
    client.pause().await.unwrap();
    client
        .create_snapshot(&SnapshotCreateParams {
            mem_file_path: dir.join("vm.mem"),
            snapshot_path: dir.join("vm.snap"),
            snapshot_type: Some(SnapshotType::Full),
        })
        .await
        .unwrap();
    client.resume().await.unwrap();
    client.send_ctrl_alt_del().await.unwrap();

    // Snapshot load needs a fresh process.
    let fresh = FcDouble::spawn(FcDoubleOptions::default());
    let c2 = FirecrackerClient::new(fresh.socket_path());
    c2.wait_ready(Duration::from_secs(5)).await.unwrap();
    c2.load_snapshot(&SnapshotLoadParams {
        snapshot_path: dir.join("vm.snap"),
        mem_backend: Some(MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: dir.join("vm.mem"),
        }),
        mem_file_path: None,
        track_dirty_pages: None,
        enable_diff_snapshots: None,
        resume_vm: Some(true),
        network_overrides: Some(vec![NetworkOverride {
            iface_id: "eth0".into(),
            host_dev_name: "fltap1".into(),
        }]),
        vsock_override: Some(VsockOverride {
            uds_path: fresh.dir().join("v2.sock"),
        }),
        clock_realtime: None,
    })
    .await
    .unwrap();
    assert_eq!(
        c2.describe_instance().await.unwrap().state,
        InstanceState::Running
    );

    // Every spec operation went over the wire.
    let spec = Spec::bundled();
    let mut seen = BTreeSet::new();
    for entry in fc.request_log().into_iter().chain(fresh.request_log()) {
        let method = entry["method"].as_str().unwrap().to_string();
        let path = entry["path"].as_str().unwrap().to_string();
        let op = spec
            .find_operation(&method, &path)
            .unwrap_or_else(|| panic!("{method} {path} is not a spec operation"));
        seen.insert((method, op.template.to_string()));
    }
    let all: BTreeSet<(String, String)> = spec.operations().into_iter().collect();
    let missing: Vec<_> = all.difference(&seen).collect();
    assert!(missing.is_empty(), "never exercised: {missing:?}");
}

#[tokio::test]
async fn raw_calls_return_non_2xx_as_answers() {
    let fc = FcDouble::spawn(FcDoubleOptions::default());
    let client = FirecrackerClient::new(fc.socket_path());
    client.wait_ready(Duration::from_secs(5)).await.unwrap();
    let resp = client.get("/no-such-endpoint").await.unwrap();
    assert!(!resp.ok);
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.fault_message().unwrap(),
        "Invalid request method and/or path: GET no-such-endpoint."
    );
    let resp = client
        .patch("/vm", &json!({"state": "Paused"}))
        .await
        .unwrap();
    assert_eq!(resp.status, 400);
    let resp = client
        .put(
            "/machine-config",
            &json!({"vcpu_count": 2, "mem_size_mib": 256}),
        )
        .await
        .unwrap();
    assert!(resp.ok);
    assert_eq!(resp.status, 204);
    assert!(resp.body.is_empty());
    assert_eq!(
        client.get("/").await.unwrap().json().unwrap()["state"],
        "Not started"
    );
}

#[tokio::test]
async fn a_silent_api_times_out_with_api_timeout() {
    let fc = FcDouble::spawn(FcDoubleOptions {
        api_silent: true,
        ..FcDoubleOptions::default()
    });
    let client = FirecrackerClient::with_options(
        fc.socket_path(),
        ClientOptions {
            request_timeout: Duration::from_millis(200),
            ..ClientOptions::default()
        },
    );
    let err = client.get("/").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ApiTimeout);
    let err = client
        .wait_ready(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::ApiTimeout);
}

#[tokio::test]
async fn wait_ready_waits_for_a_late_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("late.sock");
    let mut child = std::process::Command::new(flick_testkit::fc_double_path())
        .arg("--api-sock")
        .arg(&socket)
        .env("FC_DOUBLE_SOCKET_DELAY_MS", "300")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = FirecrackerClient::new(&socket);
    assert!(!socket.exists());
    let info = client.wait_ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(info.app_name, "Firecracker");
    // And SOCKET_TIMEOUT when the wait is shorter than the delay.
    let other = dir.path().join("later.sock");
    let mut child2 = std::process::Command::new(flick_testkit::fc_double_path())
        .arg("--api-sock")
        .arg(&other)
        .env("FC_DOUBLE_SOCKET_DELAY_MS", "2000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let err = FirecrackerClient::new(&other)
        .wait_ready(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::SocketTimeout);
    for c in [&mut child, &mut child2] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[tokio::test]
async fn concurrent_requests_share_one_client() {
    let fc = FcDouble::spawn(FcDoubleOptions::default());
    let client = FirecrackerClient::new(fc.socket_path());
    client.wait_ready(Duration::from_secs(5)).await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { c.put_mmds(&json!({ "n": i })).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(client.get_mmds().await.unwrap()["n"].is_number());
}
