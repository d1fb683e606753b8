//! The double's API: phases, body validation, devices, MMDS, logger/metrics/serial files.

mod common;

use common::{POST_BOOT, PRE_BOOT, boot, call, disk, double, fault, state};
use serde_json::{Value, json};

/// Requests with valid bodies for every pre-boot-only operation.
fn pre_boot_only(dir: &std::path::Path) -> Vec<(&'static str, String, Option<Value>)> {
    let file = dir.join("disk.img");
    vec![
        (
            "PUT",
            "/boot-source".into(),
            Some(json!({"kernel_image_path": dir.join("vmlinux")})),
        ),
        (
            "PUT",
            "/machine-config".into(),
            Some(json!({"vcpu_count": 1, "mem_size_mib": 128})),
        ),
        (
            "PATCH",
            "/machine-config".into(),
            Some(json!({"mem_size_mib": 64})),
        ),
        (
            "PUT",
            "/drives/d1".into(),
            Some(
                json!({"drive_id": "d1", "path_on_host": file, "is_root_device": false, "is_read_only": true}),
            ),
        ),
        (
            "PUT",
            "/pmem/p1".into(),
            Some(json!({"id": "p1", "path_on_host": file})),
        ),
        (
            "PUT",
            "/network-interfaces/eth9".into(),
            Some(json!({"iface_id": "eth9", "host_dev_name": "tap9"})),
        ),
        (
            "PUT",
            "/vsock".into(),
            Some(json!({"guest_cid": 3, "uds_path": dir.join("late.sock")})),
        ),
        (
            "PUT",
            "/balloon".into(),
            Some(json!({"amount_mib": 0, "deflate_on_oom": false})),
        ),
        ("PUT", "/entropy".into(), Some(json!({}))),
        (
            "PUT",
            "/logger".into(),
            Some(json!({"log_path": dir.join("late.log")})),
        ),
        (
            "PUT",
            "/metrics".into(),
            Some(json!({"metrics_path": dir.join("late.metrics")})),
        ),
        (
            "PUT",
            "/serial".into(),
            Some(json!({"serial_out_path": dir.join("late.serial")})),
        ),
        ("PUT", "/cpu-config".into(), Some(json!({}))),
        (
            "PUT",
            "/mmds/config".into(),
            Some(json!({"network_interfaces": ["eth0"]})),
        ),
        (
            "PUT",
            "/hotplug/memory".into(),
            Some(json!({"total_size_mib": 1024})),
        ),
        (
            "PUT",
            "/snapshot/load".into(),
            Some(json!({"snapshot_path": dir.join("s"), "mem_file_path": dir.join("m")})),
        ),
        (
            "PUT",
            "/actions".into(),
            Some(json!({"action_type": "InstanceStart"})),
        ),
    ]
}

/// Requests with valid bodies for every post-boot-only operation.
fn post_boot_only(dir: &std::path::Path) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("PATCH", "/vm".into(), Some(json!({"state": "Paused"}))),
        ("PATCH", "/vm".into(), Some(json!({"state": "Resumed"}))),
        (
            "PUT",
            "/snapshot/create".into(),
            Some(json!({"snapshot_path": dir.join("s"), "mem_file_path": dir.join("m")})),
        ),
        (
            "PUT",
            "/actions".into(),
            Some(json!({"action_type": "FlushMetrics"})),
        ),
        (
            "PUT",
            "/actions".into(),
            Some(json!({"action_type": "SendCtrlAltDel"})),
        ),
        (
            "PATCH",
            "/drives/rootfs".into(),
            Some(json!({"drive_id": "rootfs"})),
        ),
        (
            "PATCH",
            "/network-interfaces/eth0".into(),
            Some(json!({"iface_id": "eth0"})),
        ),
        ("PATCH", "/pmem/p0".into(), Some(json!({"id": "p0"}))),
        ("PATCH", "/balloon".into(), Some(json!({"amount_mib": 1}))),
        (
            "PATCH",
            "/balloon/statistics".into(),
            Some(json!({"stats_polling_interval_s": 2})),
        ),
        ("GET", "/balloon/statistics".into(), None),
        ("PATCH", "/balloon/hinting/start".into(), Some(json!({}))),
        ("PATCH", "/balloon/hinting/stop".into(), None),
        ("GET", "/balloon/hinting/status".into(), None),
        ("GET", "/hotplug/memory".into(), None),
        (
            "PATCH",
            "/hotplug/memory".into(),
            Some(json!({"requested_size_mib": 128})),
        ),
    ]
}

#[tokio::test]
async fn post_boot_only_operations_are_refused_before_boot() {
    let d = double();
    for (method, path, body) in post_boot_only(d.dir()) {
        let (s, b) = call(&d, method, &path, body).await;
        assert_eq!(
            (s, fault(&b)),
            (400, PRE_BOOT.to_string()),
            "{method} {path}"
        );
    }
    assert_eq!(state(&d).await, "Not started");
    // Nothing was written by the refused snapshot request.
    assert!(!d.dir().join("s").exists());
}

#[tokio::test]
async fn pre_boot_only_operations_are_refused_after_boot() {
    let d = double();
    disk(&d, "disk.img");
    boot(&d).await;
    for (method, path, body) in pre_boot_only(d.dir()) {
        let (s, b) = call(&d, method, &path, body).await;
        assert_eq!(
            (s, fault(&b)),
            (400, POST_BOOT.to_string()),
            "{method} {path}"
        );
    }
    // None of them took effect.
    assert!(!d.dir().join("late.sock").exists());
    assert!(!d.dir().join("late.log").exists());
    let (_, cfg) = call(&d, "GET", "/vm/config", None).await;
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 128);
    assert_eq!(cfg["drives"], json!([]));
}

#[tokio::test]
async fn operations_allowed_in_both_phases_answer_before_and_after_boot() {
    let d = double();
    for phase in 0..2 {
        for path in ["/", "/version", "/machine-config", "/vm/config", "/mmds"] {
            let (s, b) = call(&d, "GET", path, None).await;
            assert_eq!(s, 200, "phase {phase} {path}: {b}");
        }
        let (s, _) = call(&d, "PUT", "/mmds", Some(json!({"phase": phase}))).await;
        assert_eq!(s, 204);
        let (s, _) = call(&d, "PATCH", "/mmds", Some(json!({"extra": 1}))).await;
        assert_eq!(s, 204);
        if phase == 0 {
            boot(&d).await;
        }
    }
    assert_eq!(state(&d).await, "Running");
}

#[tokio::test]
async fn bodies_are_validated_against_the_spec() {
    let d = double();
    let prefix = "An error occurred when deserializing the json body of a request: ";
    let cases = [
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 256, "bogus": 1}"#,
            "unknown field `bogus`",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2}"#,
            "missing required field `mem_size_mib`",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": "two", "mem_size_mib": 256}"#,
            "expected an integer",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 64, "mem_size_mib": 256}"#,
            "above the maximum",
        ),
        (
            "PATCH",
            "/vm",
            r#"{"state": "Sleeping"}"#,
            "`Sleeping` is not one of",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "Reboot"}"#,
            "is not one of",
        ),
        (
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs"}"#,
            "missing required field `is_root_device`",
        ),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid": 2, "uds_path": "/x"}"#,
            "below the minimum",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/k""#,
            "EOF while parsing",
        ),
        ("PUT", "/boot-source", "not json", "expected ident"),
        (
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/s"}"#,
            "missing field: either `mem_backend` or `mem_file_path` is required",
        ),
        (
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#,
            "too many fields: either `mem_backend` or `mem_file_path` exclusively is required",
        ),
        (
            "PUT",
            "/mmds/config",
            r#"{"network_interfaces": ["eth0"], "ipv4_address": "not-an-ip"}"#,
            "invalid IPv4 address syntax",
        ),
    ];
    for (method, path, body, needle) in cases {
        let (s, text) = flick_testkit::raw_request(d.socket_path(), method, path, Some(body)).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        let f = fault(&v);
        assert_eq!(s, 400, "{method} {path} {body}: {text}");
        assert!(f.starts_with(prefix) && f.ends_with('.'), "{f}");
        assert!(f.contains(needle), "{method} {path} {body}: {f}");
    }
    // Optional fields may be null, as Firecracker reads them as Options.
    let img = disk(&d, "nulls.img");
    let (s, b) = call(
        &d,
        "PUT",
        "/drives/nulls",
        Some(json!({
            "drive_id": "nulls", "path_on_host": img, "is_root_device": false,
            "is_read_only": false, "partuuid": null, "rate_limiter": null
        })),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    // Nothing of the rejected bodies was applied.
    let (_, mc) = call(&d, "GET", "/machine-config", None).await;
    assert_eq!(mc["vcpu_count"], 1);
}

#[tokio::test]
async fn routing_errors_use_firecracker_texts() {
    let d = double();
    let cases: [(&str, &str, Option<&str>, &str); 8] = [
        (
            "GET",
            "/no-such-endpoint",
            None,
            "Invalid request method and/or path: GET no-such-endpoint.",
        ),
        ("PUT", "/machine-config", None, "Empty PUT request."),
        ("PATCH", "/machine-config", None, "Empty PATCH request."),
        (
            "GET",
            "/machine-config",
            Some("{}"),
            "GET request cannot have a body.",
        ),
        (
            "PUT",
            "/drives/bad-id",
            Some("{}"),
            "API Resource IDs can only contain alphanumeric characters and underscores.",
        ),
        (
            "PUT",
            "/drives/a",
            Some(r#"{"drive_id": "b", "is_root_device": false}"#),
            "The id from the path does not match the id from the body!",
        ),
        (
            "PUT",
            "/network-interfaces/a",
            Some(r#"{"iface_id": "b", "host_dev_name": "t"}"#),
            "The id from the path does not match the id from the body!",
        ),
        (
            "PUT",
            "/snapshot",
            Some("{}"),
            "Missing snapshot operation type.",
        ),
    ];
    for (method, path, body, want) in cases {
        let (s, text) = flick_testkit::raw_request(d.socket_path(), method, path, body).await;
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!((s, fault(&v)), (400, want.to_string()), "{method} {path}");
    }
}

#[tokio::test]
async fn machine_config_put_resets_and_patch_is_partial() {
    let d = double();
    let (s, _) = call(
        &d,
        "PUT",
        "/machine-config",
        Some(json!({"vcpu_count": 2, "mem_size_mib": 512, "track_dirty_pages": true})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = call(
        &d,
        "PATCH",
        "/machine-config",
        Some(json!({"vcpu_count": 4})),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let (_, mc) = call(&d, "GET", "/machine-config", None).await;
    assert_eq!(
        mc,
        json!({"vcpu_count": 4, "mem_size_mib": 512, "smt": false, "track_dirty_pages": true, "huge_pages": "None"})
    );
    let (s, _) = call(
        &d,
        "PUT",
        "/machine-config",
        Some(json!({"vcpu_count": 1, "mem_size_mib": 256})),
    )
    .await;
    assert_eq!(s, 204);
    let (_, mc) = call(&d, "GET", "/machine-config", None).await;
    assert_eq!(
        mc["track_dirty_pages"], false,
        "PUT resets unspecified fields"
    );
    let (s, b) = call(
        &d,
        "PATCH",
        "/machine-config",
        Some(json!({"mem_size_mib": 0})),
    )
    .await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "Machine config error: The memory size (MiB) is invalid."
        )
    );
}

#[tokio::test]
async fn boot_needs_a_kernel_that_exists() {
    let d = double();
    let (s, b) = call(
        &d,
        "PUT",
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
    )
    .await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "Start microvm error: Cannot start microvm without kernel configuration."
        )
    );
    let missing = d.dir().join("no-kernel");
    let (s, b) = call(
        &d,
        "PUT",
        "/boot-source",
        Some(json!({"kernel_image_path": missing})),
    )
    .await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)"
        )
    );
    assert_eq!(state(&d).await, "Not started");
    boot(&d).await;
    assert_eq!(state(&d).await, "Running");
    let (s, b) = call(&d, "PATCH", "/vm", Some(json!({"state": "Paused"}))).await;
    assert_eq!(s, 204, "{b}");
    assert_eq!(state(&d).await, "Paused");
    let (s, _) = call(&d, "PATCH", "/vm", Some(json!({"state": "Resumed"}))).await;
    assert_eq!(s, 204);
    assert_eq!(state(&d).await, "Running");
}

#[tokio::test]
async fn drives_and_network_interfaces() {
    let d = double();
    let missing = d.dir().join("missing.img");
    let (s, b) = call(&d, "PUT", "/drives/data", Some(json!({"drive_id": "data", "path_on_host": missing, "is_root_device": false, "is_read_only": true}))).await;
    assert_eq!(s, 400);
    assert_eq!(
        fault(&b),
        format!(
            "Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) {}",
            missing.display()
        )
    );
    let data = disk(&d, "data.img");
    let root = disk(&d, "root.img");
    for (id, path, is_root) in [("data", &data, false), ("rootfs", &root, true)] {
        let (s, b) = call(&d, "PUT", &format!("/drives/{id}"), Some(json!({"drive_id": id, "path_on_host": path, "is_root_device": is_root, "is_read_only": false}))).await;
        assert_eq!(s, 204, "{b}");
    }
    let other_root = disk(&d, "root2.img");
    let (s, b) = call(&d, "PUT", "/drives/root2", Some(json!({"drive_id": "root2", "path_on_host": other_root, "is_root_device": true, "is_read_only": false}))).await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "Drive config error: A root block device already exists!"
        )
    );
    let (s, b) = call(
        &d,
        "PUT",
        "/network-interfaces/eth1",
        Some(json!({"iface_id": "eth1", "host_dev_name": "tap-name-16-byte"})),
    )
    .await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "Network config error: Could not create the network device: Open tap device failed: Invalid interface name"
        )
    );
    let (s, b) = call(&d, "PUT", "/network-interfaces/eth0", Some(json!({"iface_id": "eth0", "host_dev_name": "tap-name-15-byt", "guest_mac": "AA:FC:00:00:00:01"}))).await;
    assert_eq!(s, 204, "{b}");
    let (_, cfg) = call(&d, "GET", "/vm/config", None).await;
    // The root device comes first, MACs are lower-cased, nulls are present.
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    assert_eq!(cfg["drives"][1]["drive_id"], "data");
    assert_eq!(
        cfg["network-interfaces"][0],
        json!({"iface_id": "eth0", "host_dev_name": "tap-name-15-byt", "guest_mac": "aa:fc:00:00:00:01", "mtu": null, "rx_rate_limiter": null, "tx_rate_limiter": null})
    );
    boot(&d).await;
    let (s, b) = call(
        &d,
        "PATCH",
        "/drives/nosuch",
        Some(json!({"drive_id": "nosuch"})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(fault(&b).starts_with("Drive config error: "), "{b}");
    let new = disk(&d, "swapped.img");
    let (s, b) = call(
        &d,
        "PATCH",
        "/drives/data",
        Some(json!({"drive_id": "data", "path_on_host": new})),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let (s, b) = call(&d, "PATCH", "/network-interfaces/eth0", Some(json!({"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}))).await;
    assert_eq!(s, 204, "{b}");
    let (s, b) = call(
        &d,
        "PATCH",
        "/network-interfaces/eth7",
        Some(json!({"iface_id": "eth7"})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(fault(&b).starts_with("Network config error: "), "{b}");
    let (_, cfg) = call(&d, "GET", "/vm/config", None).await;
    assert_eq!(cfg["drives"][1]["path_on_host"], json!(new));
    assert_eq!(
        cfg["network-interfaces"][0]["rx_rate_limiter"]["bandwidth"]["size"],
        1000
    );
}

#[tokio::test]
async fn mmds_store_put_replaces_and_patch_merges() {
    let d = double();
    let (s, b) = call(&d, "GET", "/mmds", None).await;
    assert_eq!((s, b), (200, json!({})));
    let (s, b) = call(&d, "PATCH", "/mmds", Some(json!({"a": 1}))).await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (400, "MMDS error: The MMDS data store is not initialized.")
    );
    let (s, _) = call(
        &d,
        "PUT",
        "/mmds",
        Some(json!({"latest": {"meta-data": {"id": "i-1", "ip": "10.0.0.2"}}, "drop": true})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = call(&d, "PATCH", "/mmds", Some(json!({"latest": {"meta-data": {"id": "i-2", "ip": null}}, "drop": null, "new": [1, 2]}))).await;
    assert_eq!(s, 204);
    let (_, b) = call(&d, "GET", "/mmds", None).await;
    assert_eq!(
        b,
        json!({"latest": {"meta-data": {"id": "i-2"}}, "new": [1, 2]})
    );
    let (s, _) = call(&d, "PUT", "/mmds", Some(json!({"only": "this"}))).await;
    assert_eq!(s, 204);
    let (_, b) = call(&d, "GET", "/mmds", None).await;
    assert_eq!(b, json!({"only": "this"}));
}

#[tokio::test]
async fn mmds_config_needs_existing_interfaces() {
    let d = double();
    let (s, b) = call(
        &d,
        "PUT",
        "/mmds/config",
        Some(json!({"network_interfaces": ["eth0"]})),
    )
    .await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "MMMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface."
        )
    );
    let (s, b) = call(
        &d,
        "PUT",
        "/mmds/config",
        Some(json!({"network_interfaces": []})),
    )
    .await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty."
        )
    );
    let (s, _) = call(
        &d,
        "PUT",
        "/network-interfaces/eth0",
        Some(json!({"iface_id": "eth0", "host_dev_name": "tap0"})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = call(
        &d,
        "PUT",
        "/mmds/config",
        Some(json!({"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"})),
    )
    .await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "MMMDS config error: The MMDS IPv4 address is not link local."
        )
    );
    let (s, _) = call(
        &d,
        "PUT",
        "/mmds/config",
        Some(json!({"network_interfaces": ["eth0"], "version": "V2"})),
    )
    .await;
    assert_eq!(s, 204);
    let (_, cfg) = call(&d, "GET", "/vm/config", None).await;
    assert_eq!(
        cfg["mmds-config"],
        json!({"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.169.254", "imds_compat": false})
    );
}

#[tokio::test]
async fn balloon_configuration_statistics_and_hinting() {
    let d = double();
    let (s, b) = call(&d, "GET", "/balloon", None).await;
    assert_eq!(s, 400, "{b}");
    let (s, _) = call(
        &d,
        "PUT",
        "/balloon",
        Some(json!({"amount_mib": 16, "deflate_on_oom": true})),
    )
    .await;
    assert_eq!(s, 204);
    boot(&d).await;
    let (s, b) = call(&d, "GET", "/balloon/statistics", None).await;
    assert_eq!(s, 400);
    assert!(
        fault(&b).contains("Statistics for the balloon device are not enabled"),
        "{b}"
    );
    let (s, b) = call(
        &d,
        "PATCH",
        "/balloon/statistics",
        Some(json!({"stats_polling_interval_s": 5})),
    )
    .await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "Balloon update error: Cannot enable/disable the statistics after boot."
        )
    );
    let (s, b) = call(&d, "PATCH", "/balloon/hinting/start", None).await;
    assert_eq!(s, 400, "hinting was not enabled: {b}");
    let (s, _) = call(&d, "PATCH", "/balloon", Some(json!({"amount_mib": 32}))).await;
    assert_eq!(s, 204);
    let (_, b) = call(&d, "GET", "/balloon", None).await;
    assert_eq!(
        b,
        json!({"amount_mib": 32, "deflate_on_oom": true, "stats_polling_interval_s": 0, "free_page_hinting": false, "free_page_reporting": false})
    );

    let d = double();
    let (s, _) = call(&d, "PUT", "/balloon", Some(json!({"amount_mib": 8, "deflate_on_oom": false, "stats_polling_interval_s": 1, "free_page_hinting": true}))).await;
    assert_eq!(s, 204);
    boot(&d).await;
    let (s, stats) = call(&d, "GET", "/balloon/statistics", None).await;
    assert_eq!(s, 200);
    assert!(
        flick_testkit::spec::Spec::bundled()
            .validate_definition("BalloonStats", &stats)
            .is_empty(),
        "{stats}"
    );
    assert_eq!(stats["target_mib"], 8);
    assert_eq!(stats["total_memory"], 128 * 1024 * 1024);
    let (s, _) = call(
        &d,
        "PATCH",
        "/balloon/hinting/start",
        Some(json!({"acknowledge_on_stop": true})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, st) = call(&d, "GET", "/balloon/hinting/status", None).await;
    assert_eq!(s, 200);
    assert!(st["host_cmd"].as_u64().unwrap() >= 2, "{st}");
    let (s, _) = call(&d, "PATCH", "/balloon/hinting/stop", None).await;
    assert_eq!(s, 204);
    let (_, st) = call(&d, "GET", "/balloon/hinting/status", None).await;
    assert_eq!(st["host_cmd"], 0);
}

#[tokio::test]
async fn memory_hotplug_status_after_boot() {
    let d = double();
    let (s, _) = call(
        &d,
        "PUT",
        "/hotplug/memory",
        Some(json!({"total_size_mib": 1024})),
    )
    .await;
    assert_eq!(s, 204);
    boot(&d).await;
    let (s, _) = call(
        &d,
        "PATCH",
        "/hotplug/memory",
        Some(json!({"requested_size_mib": 256})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = call(&d, "GET", "/hotplug/memory", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        b,
        json!({"total_size_mib": 1024, "slot_size_mib": 128, "block_size_mib": 2, "plugged_size_mib": 256, "requested_size_mib": 256})
    );
}

#[tokio::test]
async fn logger_metrics_and_serial_files_are_written() {
    let d = double();
    let log = d.dir().join("fc.log");
    let metrics = d.dir().join("fc.metrics");
    let serial = d.dir().join("serial.out");
    let (s, _) = call(
        &d,
        "PUT",
        "/logger",
        Some(json!({"log_path": log, "level": "info", "show_level": true})),
    )
    .await;
    assert_eq!(s, 204, "the level is read case-insensitively");
    let (s, _) = call(
        &d,
        "PUT",
        "/metrics",
        Some(json!({"metrics_path": metrics})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = call(
        &d,
        "PUT",
        "/metrics",
        Some(json!({"metrics_path": metrics})),
    )
    .await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (
            400,
            "Metrics error: Reinitialization of metrics not allowed."
        )
    );
    let (s, _) = call(
        &d,
        "PUT",
        "/serial",
        Some(json!({"serial_out_path": serial})),
    )
    .await;
    assert_eq!(s, 204);
    assert!(serial.exists() && metrics.exists());
    boot(&d).await;
    let (s, _) = call(
        &d,
        "PUT",
        "/actions",
        Some(json!({"action_type": "FlushMetrics"})),
    )
    .await;
    assert_eq!(s, 204);
    let lines: Vec<Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert!(lines[0]["utc_timestamp_ms"].as_u64().unwrap() > 0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(
            "[anonymous-instance:fc_api:INFO] The API server received a Put request on \"/metrics\""
        ),
        "{text}"
    );
    assert!(text.contains("[anonymous-instance:fc_api:ERROR] Received Error. Status code: 400 Bad Request. Message: Metrics error: Reinitialization of metrics not allowed."), "{text}");
    let out = std::fs::read_to_string(&serial).unwrap();
    assert!(out.contains("Firecracker test double"), "{out}");
}

#[tokio::test]
async fn request_log_records_the_exact_sequence() {
    let d = double();
    let _ = call(
        &d,
        "PUT",
        "/machine-config",
        Some(json!({"vcpu_count": 2, "mem_size_mib": 256})),
    )
    .await;
    let _ = call(&d, "GET", "/machine-config", None).await;
    let _ = call(&d, "PUT", "/nope", Some(json!({}))).await;
    let log = d.request_log();
    assert_eq!(
        log,
        vec![
            json!({"method": "PUT", "path": "/machine-config", "body": {"vcpu_count": 2, "mem_size_mib": 256}, "status": 204}),
            json!({"method": "GET", "path": "/machine-config", "body": null, "status": 200}),
            json!({"method": "PUT", "path": "/nope", "body": {}, "status": 400}),
        ]
    );
}

#[tokio::test]
async fn instance_info_carries_the_id_flag() {
    let d = flick_testkit::FcDouble::spawn(flick_testkit::FcDoubleOptions {
        id: Some("vm_42".into()),
        ..Default::default()
    });
    let (_, b) = call(&d, "GET", "/", None).await;
    assert_eq!(
        b,
        json!({"id": "vm_42", "state": "Not started", "vmm_version": "1.16.1", "app_name": "Firecracker"})
    );
    let (_, text) = flick_testkit::raw_request(d.socket_path(), "GET", "/", None).await;
    assert!(
        text.starts_with(r#"{"id":"vm_42","state":"Not started""#),
        "Firecracker's field order: {text}"
    );
    assert!(
        d.stderr()
            .contains("[vm_42:main] Running Firecracker v1.16.1")
    );
}

#[tokio::test]
async fn pmem_entropy_and_cpu_config_show_in_vm_config() {
    let d = double();
    let empty = d.dir().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let (s, b) = call(
        &d,
        "PUT",
        "/pmem/p0",
        Some(json!({"id": "p0", "path_on_host": empty})),
    )
    .await;
    assert_eq!(
        (s, fault(&b).as_str()),
        (400, "Pmem device error: Error backing file size is 0")
    );
    let img = disk(&d, "pmem.img");
    let (s, b) = call(
        &d,
        "PUT",
        "/pmem/p0",
        Some(json!({"id": "p0", "path_on_host": img, "root_device": true})),
    )
    .await;
    assert_eq!(s, 204, "{b}");
    let (s, _) = call(
        &d,
        "PUT",
        "/entropy",
        Some(json!({"rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}})),
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = call(
        &d,
        "PUT",
        "/cpu-config",
        Some(json!({"kvm_capabilities": ["!56"]})),
    )
    .await;
    assert_eq!(s, 204);
    // Like Firecracker, the template itself is only logged at debug level.
    assert!(
        d.stderr().contains(
            "request on \"/cpu-config\". To view the CPU template received by the API, \
             configure log-level to DEBUG."
        ),
        "{}",
        d.stderr()
    );
    let (_, cfg) = call(&d, "GET", "/vm/config", None).await;
    assert_eq!(
        cfg["pmem"],
        json!([{"id": "p0", "path_on_host": img, "root_device": true, "read_only": false, "rate_limiter": null}])
    );
    assert_eq!(
        cfg["entropy"],
        json!({"rate_limiter": {"bandwidth": null, "ops": {"size": 10, "one_time_burst": null, "refill_time": 1000}}})
    );
    assert_eq!(cfg["cpu-config"], json!({"kvm_capabilities": ["!56"]}));
    // The whole answer satisfies the spec's FullVmConfiguration.
    let spec = flick_testkit::spec::Spec::bundled();
    let violations = spec.validate_body(spec.definition("FullVmConfiguration").unwrap(), &cfg);
    assert!(violations.is_empty(), "{violations:?}");
}

#[tokio::test]
async fn request_log_keeps_unparsable_bodies_as_text() {
    let d = double();
    let (s, _) =
        flick_testkit::raw_request(d.socket_path(), "PUT", "/machine-config", Some("{oops")).await;
    assert_eq!(s, 400);
    assert_eq!(
        d.request_log(),
        vec![json!({"method": "PUT", "path": "/machine-config", "body": "{oops", "status": 400})]
    );
}

#[tokio::test]
async fn http_layer_errors_match_firecracker() {
    let d = flick_testkit::FcDouble::spawn(flick_testkit::FcDoubleOptions {
        extra_args: vec!["--http-api-max-payload-size".into(), "250".into()],
        ..Default::default()
    });
    let big = format!(r#"{{"latest": "{}"}}"#, "x".repeat(300));
    let (s, text) = flick_testkit::raw_request(d.socket_path(), "PUT", "/mmds", Some(&big)).await;
    assert_eq!(s, 400);
    assert_eq!(
        text,
        format!(
            "{{ \"error\": \"Request payload with size {} is larger than the limit of 250 allowed by server.\nAll previous unanswered requests will be dropped.\" }}",
            big.len()
        )
    );
    let (s, text) =
        flick_testkit::raw_request(d.socket_path(), "DELETE", "/drives/rootfs", None).await;
    assert_eq!(s, 400);
    assert!(text.contains("Unsupported HTTP method."), "{text}");
    // The store was not touched.
    let (_, b) = call(&d, "GET", "/mmds", None).await;
    assert_eq!(b, json!({}));
}

#[tokio::test]
async fn bodies_are_parsed_before_the_phase_is_checked() {
    let d = double();
    boot(&d).await;
    // Like Firecracker: a malformed body is a parse error even where the phase would refuse.
    let (s, b) = call(
        &d,
        "PUT",
        "/machine-config",
        Some(json!({"vcpu_count": 1, "mem_size_mib": 128, "x": 1})),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        fault(&b).starts_with("An error occurred when deserializing the json body of a request: "),
        "{b}"
    );
    let (s, b) = call(
        &d,
        "PUT",
        "/machine-config",
        Some(json!({"vcpu_count": 1, "mem_size_mib": 128})),
    )
    .await;
    assert_eq!((s, fault(&b).as_str()), (400, POST_BOOT));
}

#[tokio::test]
async fn mmds_size_limit_answers_413() {
    let d = flick_testkit::FcDouble::spawn(flick_testkit::FcDoubleOptions {
        extra_args: vec!["--mmds-size-limit".into(), "64".into()],
        ..Default::default()
    });
    let (s, _) = call(&d, "PUT", "/mmds", Some(json!({"small": 1}))).await;
    assert_eq!(s, 204);
    let (s, b) = call(&d, "PATCH", "/mmds", Some(json!({"big": "y".repeat(100)}))).await;
    assert_eq!(s, 413, "{b}");
    assert!(fault(&b).starts_with("MMDS limit exceeded error"), "{b}");
    let (_, b) = call(&d, "GET", "/mmds", None).await;
    assert_eq!(b, json!({"small": 1}), "a refused patch changes nothing");
}

#[tokio::test]
async fn log_level_filters_lines() {
    let d = flick_testkit::FcDouble::spawn(flick_testkit::FcDoubleOptions {
        extra_args: vec!["--level".into(), "Error".into(), "--show-level".into()],
        ..Default::default()
    });
    let _ = call(&d, "GET", "/", None).await;
    let _ = call(&d, "GET", "/nowhere", None).await;
    let err = d.stderr();
    assert!(!err.contains("The API server received"), "{err}");
    assert!(
        err.contains("[anonymous-instance:fc_api:ERROR] InvalidPathMethod(\"nowhere\", Get)"),
        "{err}"
    );
}
