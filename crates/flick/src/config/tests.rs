//! Unit and property tests of the whole config: rules, conversion, overrides.

use std::net::Ipv4Addr;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn base() -> VmConfig {
    VmConfig::new("/images/vmlinux", "/images/rootfs.ext4")
}

fn fields(config: &VmConfig) -> Vec<String> {
    config.problems().into_iter().map(|p| p.field).collect()
}

fn bucket() -> TokenBucket {
    TokenBucket::new(1 << 20, Duration::from_millis(100))
}

#[test]
fn minimal_config_is_valid_and_converts() {
    let config = base();
    config.validate().unwrap();
    let payloads = config.to_payloads().unwrap();
    let calls = payloads.requests();
    let paths: Vec<_> = calls.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["/machine-config", "/boot-source", "/drives/rootfs"]);
    assert!(calls.iter().all(|c| c.method == http::Method::PUT));
    assert_eq!(calls[0].body, json!({"vcpu_count": 1, "mem_size_mib": 128}));
    assert_eq!(
        calls[2].body,
        json!({"drive_id": "rootfs", "is_root_device": true, "is_read_only": false,
               "path_on_host": "/images/rootfs.ext4"})
    );
}

#[test]
fn requests_follow_the_documented_order() {
    let mut c = base()
        .with_pmem(Pmem::new("pm", "/images/pm.img"))
        .with_network_interface(NetworkInterface::with_tap("eth0", "tap0"))
        .with_vsock(Vsock {
            guest_cid: 3,
            uds_path: Some("/run/v.sock".into()),
        })
        .with_balloon(Balloon::default())
        .with_mmds(MmdsConfig::v2(["eth0"]))
        .with_mmds_data(json!({}))
        .with_logger(Logger::default())
        .with_metrics("/run/m")
        .with_entropy(Entropy::default())
        .with_serial(Serial::default())
        .with_memory_hotplug(MemoryHotplug::new(128))
        .with_cpu_config(CpuConfig::default());
    c.drives.push(Drive::new("data", "/images/d.img"));
    let paths: Vec<String> = c
        .to_payloads()
        .unwrap()
        .requests()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths,
        [
            "/logger",
            "/metrics",
            "/machine-config",
            "/cpu-config",
            "/boot-source",
            "/drives/rootfs",
            "/drives/data",
            "/pmem/pm",
            "/network-interfaces/eth0",
            "/vsock",
            "/balloon",
            "/entropy",
            "/serial",
            "/hotplug/memory",
            "/mmds/config",
            "/mmds",
        ]
    );
}

#[test]
fn an_unserializable_body_becomes_null_instead_of_panicking() {
    use std::os::unix::ffi::OsStrExt;
    let mut payloads = base().to_payloads().unwrap();
    payloads.boot_source.kernel_image_path = PathBuf::from(std::ffi::OsStr::from_bytes(b"/k\xff"));
    let calls = payloads.requests();
    assert_eq!(calls[1].path, "/boot-source");
    assert_eq!(calls[1].body, serde_json::Value::Null);
}

#[test]
fn duplicate_drive_id_message_matches_the_documented_format() {
    let config = base().with_drive(Drive::new("rootfs", "/images/data.img"));
    let err = config.validate().unwrap_err();
    assert_eq!(err.code(), crate::ErrorCode::InvalidConfig);
    assert_eq!(
        err.message(),
        "invalid VM config: drives[1].drive_id: duplicate id \"rootfs\""
    );
    assert_eq!(
        err.details().unwrap(),
        &json!({"problems": [{"field": "drives[1].drive_id", "message": "duplicate id \"rootfs\""}]})
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut config = base()
        .with_vcpus(0)
        .with_memory_mib(0)
        .with_drive(Drive::root("second", "relative.img"))
        .with_network_interface(
            NetworkInterface::with_tap("eth-0", "a_name_that_is_too_long").with_mac("zz"),
        )
        .with_vsock(Vsock::new(2));
    config.boot_source.boot_args = Some("console=ttyS0\0".into());
    let err = config.validate().unwrap_err();
    assert_eq!(
        err.message(),
        "invalid VM config: 9 problems, first: boot_source.boot_args: must not contain a NUL byte"
    );
    assert_eq!(
        fields(&config),
        [
            "boot_source.boot_args",
            "machine_config.vcpu_count",
            "machine_config.mem_size_mib",
            "drives[1].path_on_host",
            "drives[1].is_root_device",
            "network_interfaces[0].iface_id",
            "network_interfaces[0].host_dev_name",
            "network_interfaces[0].guest_mac",
            "vsock.guest_cid",
        ]
    );
    assert_eq!(
        err.details().unwrap()["problems"].as_array().unwrap().len(),
        9
    );
}

#[test]
fn vcpu_rules_follow_firecracker() {
    assert!(fields(&base().with_vcpus(32)).is_empty());
    assert_eq!(
        fields(&base().with_vcpus(33)),
        ["machine_config.vcpu_count"]
    );
    // Real Firecracker 1.16.1 accepts 3 vCPUs without SMT (see the API transcript).
    assert!(fields(&base().with_vcpus(3)).is_empty());
    let mut smt = base().with_vcpus(3);
    smt.machine_config.smt = true;
    assert_eq!(fields(&smt), ["machine_config.vcpu_count"]);
    smt.machine_config.vcpu_count = 1;
    assert!(fields(&smt).is_empty());
    smt.machine_config.vcpu_count = 4;
    assert!(fields(&smt).is_empty());
}

#[test]
fn huge_pages_need_even_memory() {
    let mut c = base().with_memory_mib(255);
    c.machine_config.huge_pages = HugePages::Huge2M;
    assert_eq!(fields(&c), ["machine_config.mem_size_mib"]);
    c.machine_config.mem_size_mib = 256;
    assert!(fields(&c).is_empty());
}

#[test]
fn static_and_custom_cpu_templates_conflict() {
    let mut c = base().with_cpu_config(CpuConfig::default());
    c.machine_config.cpu_template = Some(CpuTemplate::T2);
    assert_eq!(fields(&c), ["machine_config.cpu_template"]);
    c.machine_config.cpu_template = Some(CpuTemplate::None);
    assert!(fields(&c).is_empty());
}

#[test]
fn drive_rules() {
    let mut vhost = Drive::vhost_user("vu", "/run/vu.sock");
    vhost.is_read_only = true;
    vhost.io_engine = Some(IoEngine::Async);
    vhost.rate_limiter = Some(RateLimiter::ops(bucket()));
    vhost.ephemeral = Some(true);
    let mut both = Drive::new("both", "/a.img");
    both.socket = Some("/run/b.sock".into());
    let mut neither = Drive::new("neither", "/a.img");
    neither.path_on_host = None;
    let mut partuuid_not_root = Drive::new("p", "/p.img");
    partuuid_not_root.partuuid = Some("abcd-01".into());
    let c = base()
        .with_drive(vhost)
        .with_drive(both)
        .with_drive(neither)
        .with_drive(partuuid_not_root);
    assert_eq!(
        fields(&c),
        [
            "drives[1].is_read_only",
            "drives[1].io_engine",
            "drives[1].rate_limiter",
            "drives[1].ephemeral",
            "drives[2].socket",
            "drives[3].path_on_host",
            "drives[4].partuuid",
        ]
    );
    let mut root = base();
    root.drives[0].partuuid = Some("0eaa91a0-01".into());
    assert!(fields(&root).is_empty());
    root.drives[0].partuuid = Some("0eaa91a0 01".into());
    assert_eq!(fields(&root), ["drives[0].partuuid"]);
}

#[test]
fn shared_backing_files_must_be_read_only_everywhere() {
    let shared = |first_ro: bool, second_ro: bool, eph: Option<bool>| {
        let mut a = Drive::new("a", "/images/shared.img");
        a.is_read_only = first_ro;
        a.ephemeral = eph;
        let mut b = Pmem::new("b", "/images/shared.img");
        b.read_only = second_ro;
        fields(&VmConfig::with_kernel("/k").with_drive(a).with_pmem(b))
    };
    assert!(shared(true, true, None).is_empty());
    assert_eq!(shared(false, true, None), ["pmem[0].path_on_host"]);
    assert_eq!(shared(true, false, None), ["pmem[0].path_on_host"]);
    // An ephemeral drive writes to its own staged copy.
    assert!(shared(false, true, Some(true)).is_empty());
    assert_eq!(shared(false, true, Some(false)), ["pmem[0].path_on_host"]);
}

#[test]
fn one_root_across_drives_and_pmem() {
    let mut pm = Pmem::new("pm0", "/images/pm.img");
    pm.root_device = true;
    let c = base().with_pmem(pm.clone());
    assert_eq!(fields(&c), ["pmem[0].root_device"]);
    let only_pmem = VmConfig::with_kernel("/k").with_pmem(pm.clone());
    assert!(fields(&only_pmem).is_empty());
    assert_eq!(only_pmem.root_device_id(), Some("pm0"));
    let dup = only_pmem.with_pmem(Pmem::new("pm0", "rel"));
    assert_eq!(fields(&dup), ["pmem[1].path_on_host", "pmem[1].id"]);
}

#[test]
fn interface_rules() {
    let c = base()
        .with_network_interface(
            NetworkInterface::with_tap("eth0", "tap0").with_mac("06:00:AC:10:00:02"),
        )
        .with_network_interface(
            NetworkInterface::with_tap("eth1", "tap0")
                .with_mac("06:00:ac:10:00:02")
                .with_mtu(67),
        )
        .with_network_interface(NetworkInterface::new("eth0").with_mac("01:00:5e:00:00:01"));
    assert_eq!(
        fields(&c),
        [
            "network_interfaces[1].mtu",
            "network_interfaces[2].guest_mac",
            "network_interfaces[2].iface_id",
            "network_interfaces[1].host_dev_name",
            "network_interfaces[1].guest_mac",
        ]
    );
    let ok = base().with_network_interface(NetworkInterface::new("eth0").with_mtu(68));
    assert!(fields(&ok).is_empty());
}

#[test]
fn vsock_rules() {
    for cid in [0, 1, 2, u32::MAX] {
        assert_eq!(
            fields(&base().with_vsock(Vsock::new(cid))),
            ["vsock.guest_cid"]
        );
    }
    assert!(fields(&base().with_vsock(Vsock::new(3))).is_empty());
    let long = Vsock {
        guest_cid: 3,
        uds_path: Some(format!("/{}", "v".repeat(120)).into()),
    };
    assert_eq!(fields(&base().with_vsock(long)), ["vsock.uds_path"]);
}

#[test]
fn mmds_rules() {
    let mut mmds = MmdsConfig::v2(["eth0", "eth9", "eth0"]);
    mmds.ipv4_address = Some(Ipv4Addr::new(169, 254, 0, 1));
    let c = base()
        .with_network_interface(NetworkInterface::new("eth0"))
        .with_mmds(mmds)
        .with_mmds_data(json!([1, 2]));
    assert_eq!(
        fields(&c),
        [
            "mmds_config.network_interfaces[1]",
            "mmds_config.network_interfaces[2]",
            "mmds_config.ipv4_address",
            "mmds_data",
        ]
    );
    let empty = base().with_mmds(MmdsConfig::v2(Vec::<String>::new()));
    assert_eq!(fields(&empty), ["mmds_config.network_interfaces"]);
    for (ip, ok) in [
        ([169, 254, 169, 254], true),
        ([169, 254, 1, 0], true),
        ([169, 254, 254, 255], true),
        ([169, 254, 255, 1], false),
        ([169, 253, 1, 1], false),
        ([10, 0, 0, 1], false),
    ] {
        assert_eq!(validate::is_mmds_address(Ipv4Addr::from(ip)), ok, "{ip:?}");
    }
}

#[test]
fn balloon_and_hotplug_rules() {
    let balloon = Balloon {
        amount_mib: 129,
        ..Balloon::default()
    };
    assert_eq!(
        fields(&base().with_balloon(balloon)),
        ["balloon.amount_mib"]
    );
    let ok = Balloon {
        amount_mib: 128,
        deflate_on_oom: true,
        ..Balloon::default()
    };
    assert!(fields(&base().with_balloon(ok)).is_empty());

    let cases = [
        (MemoryHotplug::new(1024), vec![]),
        (
            MemoryHotplug::new(64),
            vec!["memory_hotplug.total_size_mib"],
        ),
        (
            MemoryHotplug::new(1000),
            vec!["memory_hotplug.total_size_mib"],
        ),
        (
            MemoryHotplug {
                total_size_mib: 1024,
                slot_size_mib: Some(64),
                block_size_mib: Some(3),
            },
            vec![
                "memory_hotplug.block_size_mib",
                "memory_hotplug.slot_size_mib",
            ],
        ),
        (
            MemoryHotplug {
                total_size_mib: 1040,
                slot_size_mib: Some(130),
                block_size_mib: Some(4),
            },
            vec!["memory_hotplug.slot_size_mib"],
        ),
        (
            MemoryHotplug {
                total_size_mib: 0,
                slot_size_mib: None,
                block_size_mib: Some(1),
            },
            vec![
                "memory_hotplug.block_size_mib",
                "memory_hotplug.total_size_mib",
            ],
        ),
    ];
    for (hp, want) in cases {
        assert_eq!(
            fields(&base().with_memory_hotplug(hp.clone())),
            want,
            "{hp:?}"
        );
    }
}

#[test]
fn paths_everywhere_must_be_absolute() {
    let mut c = base()
        .with_initrd("initrd.img")
        .with_metrics("m.json")
        .with_logger(Logger {
            log_path: Some("fc.log".into()),
            module: Some(" ".into()),
            ..Logger::default()
        })
        .with_serial(Serial {
            serial_out_path: Some("serial.out".into()),
            rate_limiter: Some(TokenBucket::new(0, Duration::from_millis(1))),
        })
        .with_entropy(Entropy {
            rate_limiter: Some(RateLimiter::bandwidth(TokenBucket::new(1, Duration::ZERO))),
        })
        .with_drive(Drive::vhost_user("vu", "vu.sock"));
    c.boot_source.kernel_image_path = "vmlinux".into();
    assert_eq!(
        fields(&c),
        [
            "boot_source.kernel_image_path",
            "boot_source.initrd_path",
            "drives[1].socket",
            "logger.log_path",
            "logger.module",
            "metrics.metrics_path",
            "entropy.rate_limiter.bandwidth.refill_time_ms",
            "serial.serial_out_path",
            "serial.rate_limiter.size",
        ]
    );
}

#[test]
fn boot_args_length_is_bounded() {
    let ok = base().with_boot_args("a".repeat(2047));
    assert!(fields(&ok).is_empty());
    let long = base().with_boot_args("a".repeat(2048));
    assert_eq!(fields(&long), ["boot_source.boot_args"]);
}

#[test]
fn to_payloads_requires_runtime_filled_values_and_reports_them_with_the_rest() {
    let c = base()
        .with_vcpus(0)
        .with_network_interface(NetworkInterface::new("eth0"))
        .with_vsock(Vsock::new(3));
    c.validate().unwrap_err();
    let err = c.to_payloads().unwrap_err();
    let problems = err.details().unwrap()["problems"]
        .as_array()
        .unwrap()
        .clone();
    let got: Vec<_> = problems
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "machine_config.vcpu_count",
            "network_interfaces[0].host_dev_name",
            "vsock.uds_path"
        ]
    );
    // Without the vCPU defect, validate() passes: those two are the runtime's to fill.
    assert!(c.clone().with_vcpus(1).validate().is_ok());
}

#[test]
fn ephemeral_never_reaches_the_wire() {
    let c = base().with_drive(Drive::new("scratch", "/images/s.img").ephemeral(true));
    let user = serde_json::to_value(&c).unwrap();
    assert_eq!(user["drives"][1]["ephemeral"], true);
    for call in c.to_payloads().unwrap().requests() {
        assert!(!call.body.to_string().contains("ephemeral"), "{call:?}");
    }
}

#[test]
fn overrides_return_a_new_config() {
    let original = base()
        .with_drive(Drive::vhost_user("vu", "/run/vu.sock"))
        .with_network_interface(NetworkInterface::new("eth0"))
        .with_vsock(Vsock::new(3))
        .with_initrd("/images/initrd");
    let before = original.clone();
    let mut o = Overrides::default();
    o.drive_paths
        .insert("rootfs".into(), "/run/vm1/rootfs.ext4".into());
    o.host_dev_names.insert("eth0".into(), "tap7".into());
    o.guest_macs
        .insert("eth0".into(), "06:00:00:00:00:07".into());
    o.vsock_uds_path = Some("/run/vm1/v.sock".into());
    o.kernel_image_path = Some("/run/vm1/vmlinux".into());
    o.initrd_path = Some("/run/vm1/initrd".into());
    let staged = original.with_overrides(&o).unwrap();
    assert_eq!(original, before);
    assert_eq!(
        staged.drives[0].path_on_host.as_deref(),
        Some(std::path::Path::new("/run/vm1/rootfs.ext4"))
    );
    assert_eq!(
        staged.network_interfaces[0].host_dev_name.as_deref(),
        Some("tap7")
    );
    assert_eq!(
        staged.network_interfaces[0].guest_mac.as_deref(),
        Some("06:00:00:00:00:07")
    );
    assert_eq!(
        staged.vsock.as_ref().unwrap().uds_path.as_deref(),
        Some(std::path::Path::new("/run/vm1/v.sock"))
    );
    staged.to_payloads().unwrap();

    let mut bad = Overrides::default();
    bad.drive_paths.insert("nope".into(), "/x".into());
    bad.drive_paths.insert("vu".into(), "/x".into());
    bad.drive_paths.insert("rootfs".into(), "relative".into());
    bad.host_dev_names.insert("eth0".into(), "bad/name".into());
    bad.host_dev_names.insert("eth9".into(), "tap9".into());
    let err = original.with_overrides(&bad).unwrap_err();
    assert_eq!(err.code(), crate::ErrorCode::InvalidConfig);
    let got: Vec<_> = err.details().unwrap()["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        got,
        [
            "overrides.drive_paths[\"nope\"]",
            "overrides.drive_paths[\"rootfs\"]",
            "overrides.drive_paths[\"vu\"]",
            "overrides.host_dev_names[\"eth0\"]",
            "overrides.host_dev_names[\"eth9\"]",
        ]
    );
    assert_eq!(original, before);
    let no_vsock = base().with_overrides(&Overrides {
        vsock_uds_path: Some("/v.sock".into()),
        initrd_path: Some("/i".into()),
        ..Overrides::default()
    });
    assert_eq!(
        no_vsock.unwrap_err().details().unwrap()["problems"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn user_json_uses_snake_case_and_accepts_firecracker_spelling() {
    let text = r#"{
        "boot_source": {"kernel_image_path": "/k"},
        "machine_config": {"vcpu_count": 2, "mem_size_mib": 256, "huge_pages": "2M",
                           "cpu_template": "T2S"},
        "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
                    "cache_type": "Writeback", "io_engine": "async"}],
        "logger": {"level": "Debug"},
        "mmds_config": {"version": "V2", "network_interfaces": []}
    }"#;
    let c: VmConfig = serde_json::from_str(text).unwrap();
    assert_eq!(c.machine_config.huge_pages, HugePages::Huge2M);
    assert_eq!(c.machine_config.cpu_template, Some(CpuTemplate::T2s));
    assert_eq!(c.drives[0].cache_type, Some(CacheType::Writeback));
    let back = serde_json::to_value(&c).unwrap();
    assert_eq!(back["machine_config"]["huge_pages"], "2m");
    assert_eq!(back["machine_config"]["cpu_template"], "t2s");
    assert_eq!(back["drives"][0]["cache_type"], "writeback");
    assert_eq!(back["logger"]["level"], "debug");
    assert_eq!(back["mmds_config"]["version"], "v2");
    let typo = "{\"boot_source\": {\"kernel_image_path\": \"/k\"},\n \"drivez\": []}";
    let err = VmConfig::from_json(typo).unwrap_err();
    assert_eq!(err.code(), crate::ErrorCode::InvalidConfig);
    assert_eq!(err.details().unwrap()["line"], 2);
    assert!(
        err.chain().contains("unknown field `drivez`"),
        "{}",
        err.chain()
    );
    assert_eq!(VmConfig::from_json(text).unwrap(), c);
    let defaults: VmConfig =
        serde_json::from_str(r#"{"boot_source": {"kernel_image_path": "/k"}}"#).unwrap();
    assert_eq!(defaults, VmConfig::with_kernel("/k"));
}

// ---- property tests ----------------------------------------------------------------------

fn path() -> impl Strategy<Value = PathBuf> {
    "/[a-z]{1,6}(/[a-z0-9._-]{1,8}){0,3}".prop_map(PathBuf::from)
}

fn bucket_strategy() -> impl Strategy<Value = TokenBucket> {
    (
        1u64..=i64::MAX as u64,
        proptest::option::of(0u64..=i64::MAX as u64),
        1u64..=i64::MAX as u64,
    )
        .prop_map(|(size, one_time_burst, refill_time_ms)| TokenBucket {
            size,
            one_time_burst,
            refill_time_ms,
        })
}

fn limiter() -> impl Strategy<Value = Option<RateLimiter>> {
    proptest::option::of(
        (
            proptest::option::of(bucket_strategy()),
            proptest::option::of(bucket_strategy()),
        )
            .prop_map(|(bandwidth, ops)| RateLimiter { bandwidth, ops }),
    )
}

fn machine() -> impl Strategy<Value = MachineConfig> {
    (
        1u8..=32,
        any::<bool>(),
        1u32..=65536,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(vcpus, smt, mem, huge, dirty)| {
            let vcpu_count = if smt && vcpus > 1 && vcpus % 2 == 1 {
                vcpus - 1
            } else {
                vcpus
            };
            MachineConfig {
                vcpu_count,
                mem_size_mib: if huge { mem * 2 } else { mem },
                smt,
                cpu_template: None,
                track_dirty_pages: dirty,
                huge_pages: if huge {
                    HugePages::Huge2M
                } else {
                    HugePages::None
                },
            }
        })
}

fn drive(i: usize) -> impl Strategy<Value = Drive> {
    (
        path(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(prop_oneof![
            Just(CacheType::Unsafe),
            Just(CacheType::Writeback)
        ]),
        proptest::option::of(prop_oneof![Just(IoEngine::Sync), Just(IoEngine::Async)]),
        limiter(),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(move |(p, vhost, ro, cache, io, rl, eph)| {
            let id = format!("d{i}");
            let p = PathBuf::from(format!("/d{i}")).join(p.strip_prefix("/").unwrap_or(&p));
            if vhost {
                let mut d = Drive::vhost_user(id, p);
                d.cache_type = cache;
                d
            } else {
                Drive {
                    is_read_only: ro,
                    cache_type: cache,
                    io_engine: io,
                    rate_limiter: rl,
                    ephemeral: eph,
                    ..Drive::new(id, p)
                }
            }
        })
}

fn iface(i: usize) -> impl Strategy<Value = NetworkInterface> {
    (
        any::<[u8; 4]>(),
        any::<bool>(),
        proptest::option::of(68u16..=65535),
        limiter(),
        limiter(),
    )
        .prop_map(move |(mid, with_mac, mtu, rx, tx)| NetworkInterface {
            iface_id: format!("eth{i}"),
            host_dev_name: Some(format!("tap{i}")),
            guest_mac: with_mac.then(|| {
                format!(
                    "06:{:02x}:{:02x}:{:02x}:{:02x}:{i:02x}",
                    mid[0], mid[1], mid[2], mid[3]
                )
            }),
            mtu,
            rx_rate_limiter: rx,
            tx_rate_limiter: tx,
        })
}

prop_compose! {
    fn valid_config()(
        machine in machine(),
        kernel in path(),
        initrd in proptest::option::of(path()),
        args in proptest::option::of("[ -~]{0,64}"),
        root in any::<bool>(),
        drives in (0usize..4).prop_flat_map(|n| (0..n).map(drive).collect::<Vec<_>>()),
        ifaces in (0usize..3).prop_flat_map(|n| (0..n).map(iface).collect::<Vec<_>>()),
        cid in 3u32..u32::MAX,
        vsock_path in proptest::option::of(path()),
        with_vsock in any::<bool>(),
        balloon_frac in proptest::option::of(0u32..=100),
        stats in proptest::option::of(0u32..100),
        mmds_v2 in any::<bool>(),
        mmds_ip in proptest::option::of((1u8..=254, any::<u8>())),
        data in proptest::option::of("[a-z]{1,8}"),
        hotplug_slots in proptest::option::of(1u64..8),
        entropy in proptest::option::of(limiter()),
        serial in proptest::option::of((proptest::option::of(path()), proptest::option::of(bucket_strategy()))),
        metrics in proptest::option::of(path()),
        log in proptest::option::of(path()),
    ) -> VmConfig {
        let mut c = VmConfig::with_kernel(kernel).with_machine_config(machine);
        c.boot_source.initrd_path = initrd;
        c.boot_source.boot_args = args;
        c.drives = drives;
        if root && let Some(d) = c.drives.iter_mut().find(|d| !d.is_vhost_user()) {
            d.is_root_device = true;
        }
        if let Some(ifc) = ifaces.first() {
            let mut m = MmdsConfig::v2([ifc.iface_id.clone()]);
            if !mmds_v2 { m.version = Some(MmdsVersion::V1); }
            m.ipv4_address = mmds_ip.map(|(a, b)| Ipv4Addr::new(169, 254, a, b));
            c.mmds_config = Some(m);
        }
        c.network_interfaces = ifaces;
        if with_vsock {
            c.vsock = Some(Vsock { guest_cid: cid, uds_path: vsock_path.or(Some("/run/v.sock".into())) });
        }
        if let Some(frac) = balloon_frac {
            c.balloon = Some(Balloon {
                amount_mib: c.machine_config.mem_size_mib / 100 * frac,
                deflate_on_oom: frac % 2 == 0,
                stats_polling_interval_s: stats,
                free_page_hinting: frac % 3 == 0,
                free_page_reporting: frac % 5 == 0,
            });
        }
        c.mmds_data = data.map(|k| json!({ k: {"v": 1} }));
        c.memory_hotplug = hotplug_slots.map(|n| MemoryHotplug::new(n * 128));
        c.entropy = entropy.map(|rate_limiter| Entropy { rate_limiter });
        c.serial = serial.map(|(serial_out_path, rate_limiter)| Serial { serial_out_path, rate_limiter });
        c.metrics = metrics.map(|metrics_path| Metrics { metrics_path });
        c.logger = log.map(|p| Logger { log_path: Some(p), level: Some(LogLevel::Info), ..Logger::default() });
        c
    }
}

/// One defect and the field path that must report it.
#[derive(Debug, Clone)]
enum Defect {
    Vcpus(u8),
    Memory,
    RelativeKernel,
    NulInBootArgs,
    DuplicateDrive,
    BadDriveId(String),
    SecondRoot,
    BadMac(String),
    LongTap(usize),
    SmallMtu(u16),
    ReservedCid(u32),
    MissingMmdsIface,
    MmdsAddress(Ipv4Addr),
    ZeroBucket,
    BalloonTooBig,
    SmallSlot(u64),
    RelativeMetrics,
}

fn defect() -> impl Strategy<Value = Defect> {
    prop_oneof![
        prop_oneof![Just(0u8), 33u8..=255].prop_map(Defect::Vcpus),
        Just(Defect::Memory),
        Just(Defect::RelativeKernel),
        Just(Defect::NulInBootArgs),
        Just(Defect::DuplicateDrive),
        "[a-z]{0,3}[-./ ][a-z]{0,3}".prop_map(Defect::BadDriveId),
        Just(Defect::SecondRoot),
        prop_oneof![
            "[0-9a-f]{12}",
            "0[13579bdf](:[0-9a-f]{2}){5}",
            "([0-9a-f]{2}:){6}[0-9a-f]{2}"
        ]
        .prop_map(Defect::BadMac),
        (16usize..40).prop_map(Defect::LongTap),
        (0u16..68).prop_map(Defect::SmallMtu),
        prop_oneof![0u32..3, Just(u32::MAX)].prop_map(Defect::ReservedCid),
        Just(Defect::MissingMmdsIface),
        any::<[u8; 4]>()
            .prop_filter("outside the MMDS range", |o| !(o[0] == 169
                && o[1] == 254
                && (1..=254).contains(&o[2])))
            .prop_map(|o| Defect::MmdsAddress(Ipv4Addr::from(o))),
        Just(Defect::ZeroBucket),
        Just(Defect::BalloonTooBig),
        (0u64..128).prop_map(Defect::SmallSlot),
        Just(Defect::RelativeMetrics),
    ]
}

/// Applies `d` to a valid config, returning the field path that must now be reported.
fn inject(c: &mut VmConfig, d: &Defect) -> String {
    match d {
        Defect::Vcpus(n) => {
            c.machine_config.vcpu_count = *n;
            "machine_config.vcpu_count".into()
        }
        Defect::Memory => {
            c.machine_config.mem_size_mib = 0;
            c.balloon = None;
            "machine_config.mem_size_mib".into()
        }
        Defect::RelativeKernel => {
            c.boot_source.kernel_image_path = "boot/vmlinux".into();
            "boot_source.kernel_image_path".into()
        }
        Defect::NulInBootArgs => {
            c.boot_source.boot_args = Some("console=ttyS0\0".into());
            "boot_source.boot_args".into()
        }
        Defect::DuplicateDrive => {
            c.drives.push(Drive::new("dup", "/a.img"));
            c.drives.push(Drive::new("dup", "/b.img"));
            format!("drives[{}].drive_id", c.drives.len() - 1)
        }
        Defect::BadDriveId(id) => {
            c.drives.push(Drive::new(id.clone(), "/a.img"));
            format!("drives[{}].drive_id", c.drives.len() - 1)
        }
        Defect::SecondRoot => {
            if c.root_device_id().is_none() {
                c.drives.push(Drive::root("r1", "/r1.img"));
            }
            c.drives.push(Drive::root("r2", "/r2.img"));
            format!("drives[{}].is_root_device", c.drives.len() - 1)
        }
        Defect::BadMac(mac) => {
            c.network_interfaces
                .push(NetworkInterface::new("bad").with_mac(mac.clone()));
            format!(
                "network_interfaces[{}].guest_mac",
                c.network_interfaces.len() - 1
            )
        }
        Defect::LongTap(n) => {
            c.network_interfaces
                .push(NetworkInterface::with_tap("bad", "t".repeat(*n)));
            format!(
                "network_interfaces[{}].host_dev_name",
                c.network_interfaces.len() - 1
            )
        }
        Defect::SmallMtu(mtu) => {
            c.network_interfaces
                .push(NetworkInterface::new("bad").with_mtu(*mtu));
            format!("network_interfaces[{}].mtu", c.network_interfaces.len() - 1)
        }
        Defect::ReservedCid(cid) => {
            c.vsock = Some(Vsock::new(*cid));
            "vsock.guest_cid".into()
        }
        Defect::MissingMmdsIface => {
            let mut m = c.mmds_config.clone().unwrap_or_else(|| {
                c.network_interfaces.push(NetworkInterface::new("mm"));
                MmdsConfig::v2(["mm"])
            });
            m.network_interfaces.push("ghost".into());
            let i = m.network_interfaces.len() - 1;
            c.mmds_config = Some(m);
            format!("mmds_config.network_interfaces[{i}]")
        }
        Defect::MmdsAddress(ip) => {
            if c.mmds_config.is_none() {
                c.network_interfaces.push(NetworkInterface::new("mm"));
                c.mmds_config = Some(MmdsConfig::v2(["mm"]));
            }
            if let Some(m) = c.mmds_config.as_mut() {
                m.ipv4_address = Some(*ip);
            }
            "mmds_config.ipv4_address".into()
        }
        Defect::ZeroBucket => {
            c.entropy = Some(Entropy {
                rate_limiter: Some(RateLimiter::ops(TokenBucket::new(
                    0,
                    Duration::from_secs(1),
                ))),
            });
            "entropy.rate_limiter.ops.size".into()
        }
        Defect::BalloonTooBig => {
            c.balloon = Some(Balloon {
                amount_mib: c.machine_config.mem_size_mib + 1,
                ..Balloon::default()
            });
            "balloon.amount_mib".into()
        }
        Defect::SmallSlot(slot) => {
            c.memory_hotplug = Some(MemoryHotplug {
                total_size_mib: 1024,
                slot_size_mib: Some(*slot),
                block_size_mib: None,
            });
            "memory_hotplug.slot_size_mib".into()
        }
        Defect::RelativeMetrics => {
            c.metrics = Some(Metrics {
                metrics_path: "metrics.json".into(),
            });
            "metrics.metrics_path".into()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_configs_validate_convert_and_are_not_mutated(c in valid_config()) {
        let before = c.clone();
        prop_assert_eq!(c.problems(), vec![]);
        let payloads = c.to_payloads().unwrap();
        prop_assert_eq!(&c, &before);
        let calls = payloads.requests();
        let expected = 2
            + c.drives.len()
            + c.network_interfaces.len()
            + usize::from(c.vsock.is_some())
            + usize::from(c.balloon.is_some())
            + usize::from(c.mmds_config.is_some())
            + usize::from(c.mmds_data.is_some())
            + usize::from(c.memory_hotplug.is_some())
            + usize::from(c.entropy.is_some())
            + usize::from(c.serial.is_some())
            + usize::from(c.metrics.is_some())
            + usize::from(c.logger.is_some());
        prop_assert_eq!(calls.len(), expected);
        for call in &calls {
            prop_assert!(!call.body.is_null(), "{:?}", call);
            prop_assert!(!call.body.to_string().contains("ephemeral"));
        }
        // Round trip of the user type.
        let text = serde_json::to_string(&c).unwrap();
        let back: VmConfig = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(back, c);
    }

    #[test]
    fn a_single_defect_is_reported_at_its_field(c in valid_config(), d in defect()) {
        let mut broken = c.clone();
        let field = inject(&mut broken, &d);
        let problems = broken.problems();
        prop_assert_eq!(problems.len(), 1, "{:?} -> {:?}", d, problems);
        prop_assert_eq!(&problems[0].field, &field);
        let err = broken.to_payloads().unwrap_err();
        prop_assert_eq!(err.code(), crate::ErrorCode::InvalidConfig);
    }

    #[test]
    fn overrides_change_only_what_they_name(
        c in valid_config(),
        drive_dir in "/[a-z]{1,8}",
        tap_prefix in "[a-z]{1,4}",
        sock in "/[a-z]{1,8}/v[.]sock",
    ) {
        let before = c.clone();
        let mut o = Overrides::default();
        for d in c.drives.iter().filter(|d| !d.is_vhost_user()) {
            o.drive_paths.insert(d.drive_id.clone(), PathBuf::from(format!("{drive_dir}/{}.img", d.drive_id)));
        }
        for (i, n) in c.network_interfaces.iter().enumerate() {
            o.host_dev_names.insert(n.iface_id.clone(), format!("{tap_prefix}{i}"));
        }
        if c.vsock.is_some() {
            o.vsock_uds_path = Some(sock.clone().into());
        }
        let staged = c.with_overrides(&o).unwrap();
        prop_assert_eq!(&c, &before);
        prop_assert_eq!(staged.problems(), vec![]);
        prop_assert!(staged.to_payloads().is_ok());
        prop_assert_eq!(staged.drives.len(), c.drives.len());
        for (new, old) in staged.drives.iter().zip(&c.drives) {
            match o.drive_paths.get(&new.drive_id) {
                Some(p) => prop_assert_eq!(new.path_on_host.as_ref(), Some(p)),
                None => prop_assert_eq!(new, old),
            }
            prop_assert_eq!(new.is_root_device, old.is_root_device);
            prop_assert_eq!(new.ephemeral, old.ephemeral);
        }
        for (new, old) in staged.network_interfaces.iter().zip(&c.network_interfaces) {
            prop_assert_eq!(new.host_dev_name.as_ref(), o.host_dev_names.get(&new.iface_id));
            prop_assert_eq!(&new.guest_mac, &old.guest_mac);
        }
        prop_assert_eq!(&staged.machine_config, &c.machine_config);
        prop_assert_eq!(&staged.boot_source, &c.boot_source);
        prop_assert_eq!(&staged.mmds_config, &c.mmds_config);
    }

    #[test]
    fn validation_never_panics_on_arbitrary_values(
        vcpus in any::<u8>(),
        mem in any::<u32>(),
        smt in any::<bool>(),
        strings in proptest::collection::vec(any::<String>(), 8),
        nums in proptest::collection::vec(any::<u64>(), 8),
        cid in any::<u32>(),
        mtu in any::<u16>(),
        ip in any::<[u8; 4]>(),
    ) {
        let mut d = Drive::new(strings[0].clone(), strings[1].clone());
        d.partuuid = Some(strings[2].clone());
        d.is_root_device = smt;
        d.socket = smt.then(|| PathBuf::from(strings[3].clone()));
        d.rate_limiter = Some(RateLimiter::bandwidth(TokenBucket { size: nums[0], one_time_burst: Some(nums[1]), refill_time_ms: nums[2] }));
        let c = VmConfig::with_kernel(strings[4].clone())
            .with_boot_args(strings[5].clone())
            .with_vcpus(vcpus)
            .with_memory_mib(mem)
            .with_drive(d)
            .with_network_interface(NetworkInterface {
                iface_id: strings[6].clone(),
                host_dev_name: Some(strings[7].clone()),
                guest_mac: Some(strings[6].clone()),
                mtu: Some(mtu),
                rx_rate_limiter: None,
                tx_rate_limiter: None,
            })
            .with_vsock(Vsock { guest_cid: cid, uds_path: Some(strings[3].clone().into()) })
            .with_mmds(MmdsConfig { version: None, network_interfaces: vec![strings[0].clone()], ipv4_address: Some(Ipv4Addr::from(ip)), imds_compat: smt })
            .with_memory_hotplug(MemoryHotplug { total_size_mib: nums[3], slot_size_mib: Some(nums[4]), block_size_mib: Some(nums[5]) })
            .with_balloon(Balloon { amount_mib: mem.wrapping_add(1), ..Balloon::default() })
            .with_cpu_config(CpuConfig {
                kvm_capabilities: vec![strings[1].clone()],
                msr_modifiers: vec![MsrModifier { addr: strings[2].clone(), bitmap: strings[5].clone() }],
                ..CpuConfig::default()
            });
        let before = c.clone();
        let problems = c.problems();
        match c.validate() {
            Ok(()) => prop_assert!(problems.is_empty()),
            Err(e) => {
                prop_assert_eq!(e.code(), crate::ErrorCode::InvalidConfig);
                let listed = e.details().unwrap()["problems"].as_array().unwrap().len();
                prop_assert_eq!(listed, problems.len());
                let first = problems[0].to_string();
                prop_assert!(e.message().ends_with(first.as_str()));
            }
        }
        prop_assert_eq!(c.problems(), problems.clone(), "validation is deterministic");
        match c.to_payloads() {
            Ok(p) => {
                prop_assert!(problems.is_empty());
                prop_assert!(!p.requests().is_empty());
            }
            Err(e) => prop_assert_eq!(e.code(), crate::ErrorCode::InvalidConfig),
        }
        prop_assert_eq!(c, before);
    }
}
