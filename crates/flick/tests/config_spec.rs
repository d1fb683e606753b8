//! Every request body flick builds from a config is checked against Firecracker v1.16.1's own
//! API spec (vendored in flick-testkit), so drift from the real API fails the build. The JSON of
//! each payload of the maximal config is pinned with insta snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use flick::config::{
    ApiCall, ArmRegisterModifier, Balloon, BalloonUpdate, CacheType, CpuConfig, CpuTemplate,
    CpuidLeafModifier, CpuidRegister, CpuidRegisterModifier, Drive, DriveUpdate, Entropy,
    HugePages, IoEngine, LogLevel, Logger, MachineConfig, MachineConfigUpdate, MemoryHotplug,
    MemoryHotplugUpdate, MmdsConfig, MmdsVersion, MsrModifier, NetworkInterface,
    NetworkInterfaceUpdate, Pmem, PmemUpdate, RateLimiter, Serial, TokenBucket, VcpuFeatures,
    VmConfig, Vsock,
};
use flick_testkit::spec::Spec;
use proptest::prelude::*;
use serde_json::{Value, json};

fn limiter(seed: u64) -> RateLimiter {
    RateLimiter::bandwidth(
        TokenBucket::new(1 << (20 + seed), Duration::from_millis(100 + seed))
            .with_one_time_burst(1 << (22 + seed)),
    )
    .with_ops(TokenBucket::new(1000 + seed, Duration::from_secs(1)).with_one_time_burst(50))
}

/// Every resource, every optional field.
fn maximal() -> VmConfig {
    let mut root = Drive::root("rootfs", "/srv/vm/rootfs.ext4").with_rate_limiter(limiter(0));
    root.partuuid = Some("0eaa91a0-01".into());
    root.cache_type = Some(CacheType::Writeback);
    root.io_engine = Some(IoEngine::Async);
    let data = Drive::new("data", "/srv/vm/data.img")
        .read_only()
        .ephemeral(true);
    let mut vhost = Drive::vhost_user("vhost0", "/run/vm/vhost-blk.sock");
    vhost.cache_type = Some(CacheType::Unsafe);
    let mut pmem = Pmem::new("pmem0", "/srv/vm/pmem.img");
    pmem.read_only = true;
    pmem.rate_limiter = Some(limiter(1));
    let mut eth0 = NetworkInterface::with_tap("eth0", "fc-tap0")
        .with_mac("06:00:ac:10:00:02")
        .with_mtu(1500);
    eth0.rx_rate_limiter = Some(limiter(2));
    eth0.tx_rate_limiter = Some(limiter(3));
    let eth1 = NetworkInterface::with_tap("eth1", "fc-tap1");
    let mut mmds = MmdsConfig::v2(["eth0"]);
    mmds.ipv4_address = Some(Ipv4Addr::new(169, 254, 170, 2));
    mmds.imds_compat = true;
    VmConfig::with_kernel("/srv/vm/vmlinux")
        .with_boot_args("console=ttyS0 reboot=k panic=1 pci=off")
        .with_initrd("/srv/vm/initrd.cpio")
        .with_machine_config(MachineConfig {
            vcpu_count: 4,
            mem_size_mib: 1024,
            smt: true,
            cpu_template: Some(CpuTemplate::None),
            track_dirty_pages: true,
            huge_pages: HugePages::Huge2M,
        })
        .with_cpu_config(CpuConfig {
            kvm_capabilities: vec!["171".into(), "!172".into()],
            cpuid_modifiers: vec![CpuidLeafModifier {
                leaf: "0x1".into(),
                subleaf: "0x0".into(),
                flags: 0,
                modifiers: vec![CpuidRegisterModifier {
                    register: CpuidRegister::Ecx,
                    bitmap: format!("0b{}1", "x".repeat(31)),
                }],
            }],
            msr_modifiers: vec![MsrModifier {
                addr: "0x10a".into(),
                bitmap: format!("0b{}_{}", "0".repeat(32), "x".repeat(32)),
            }],
            reg_modifiers: vec![ArmRegisterModifier {
                addr: "0x603000000013c020".into(),
                bitmap: "0bxx10".into(),
            }],
            vcpu_features: vec![VcpuFeatures {
                index: 0,
                bitmap: format!("0b{}1{}", "x".repeat(26), "x".repeat(5)),
            }],
        })
        .with_drive(root)
        .with_drive(data)
        .with_drive(vhost)
        .with_pmem(pmem)
        .with_network_interface(eth0)
        .with_network_interface(eth1)
        .with_vsock(Vsock {
            guest_cid: 3,
            uds_path: Some("/run/vm/v.sock".into()),
        })
        .with_balloon(Balloon {
            amount_mib: 256,
            deflate_on_oom: true,
            stats_polling_interval_s: Some(5),
            free_page_hinting: true,
            free_page_reporting: true,
        })
        .with_mmds(mmds)
        .with_mmds_data(json!({"latest": {"meta-data": {"instance-id": "i-flick"}}}))
        .with_logger(Logger {
            level: Some(LogLevel::Debug),
            log_path: Some("/run/vm/fc.log".into()),
            show_level: true,
            show_log_origin: true,
            module: Some("api_server::request".into()),
        })
        .with_metrics("/run/vm/fc.metrics")
        .with_entropy(Entropy {
            rate_limiter: Some(limiter(4)),
        })
        .with_serial(Serial {
            serial_out_path: Some("/run/vm/serial.out".into()),
            rate_limiter: Some(
                TokenBucket::new(4096, Duration::from_millis(10)).with_one_time_burst(8192),
            ),
        })
        .with_memory_hotplug(MemoryHotplug {
            total_size_mib: 2048,
            slot_size_mib: Some(256),
            block_size_mib: Some(4),
        })
}

fn minimal() -> VmConfig {
    VmConfig::with_kernel("/srv/vm/vmlinux")
}

/// The spec's violations for one request, or a note that the spec has no such operation.
fn violations(spec: &Spec, call: &ApiCall) -> Vec<String> {
    let Some(op) = spec.find_operation(call.method.as_str(), &call.path) else {
        return vec![format!("{} {} is not in the spec", call.method, call.path)];
    };
    let Some(schema) = op.body_schema else {
        return vec![format!("{} {} takes no body", call.method, call.path)];
    };
    spec.validate(schema, &call.body)
        .into_iter()
        .map(|v| format!("{} {}: {v}", call.method, call.path))
        .collect()
}

fn assert_conforms(spec: &Spec, calls: &[ApiCall]) {
    let all: Vec<String> = calls.iter().flat_map(|c| violations(spec, c)).collect();
    assert!(
        all.is_empty(),
        "payloads drift from the spec:\n{}",
        all.join("\n")
    );
}

#[test]
fn maximal_and_minimal_payloads_match_the_spec() {
    let spec = Spec::bundled();
    assert_eq!(spec.version(), flick::FIRECRACKER_REFERENCE_VERSION);
    for config in [maximal(), minimal(), VmConfig::new("/k", "/r")] {
        config.validate().unwrap();
        let before = config.clone();
        let calls = config.to_payloads().unwrap().requests();
        assert_eq!(config, before, "conversion mutated the config");
        assert!(calls.iter().all(|c| c.method == http::Method::PUT));
        assert_conforms(&spec, &calls);
    }
}

#[test]
fn path_ids_match_body_ids() {
    // Firecracker refuses a body whose id differs from the one in the path.
    let spec = Spec::bundled();
    let mut checked = 0;
    for call in maximal().to_payloads().unwrap().requests() {
        let op = spec.find_operation("PUT", &call.path).unwrap();
        for (name, value) in &op.params {
            let key = if name == "id" { "id" } else { name.as_str() };
            assert_eq!(call.body[key], json!(value), "{}", call.path);
            checked += 1;
        }
    }
    assert_eq!(checked, 6, "three drives, one pmem, two interfaces");
}

#[test]
fn maximal_config_covers_every_pre_boot_put_endpoint() {
    let spec = Spec::bundled();
    // PUTs that are actions or snapshots, not configuration resources.
    let not_resources = ["/actions", "/snapshot/create", "/snapshot/load"];
    let wanted: BTreeSet<String> = spec
        .operations()
        .into_iter()
        .filter(|(m, p)| m == "PUT" && !not_resources.contains(&p.as_str()))
        .map(|(_, p)| p)
        .collect();
    let covered: BTreeSet<String> = maximal()
        .to_payloads()
        .unwrap()
        .requests()
        .iter()
        .filter_map(|c| spec.find_operation("PUT", &c.path))
        .map(|op| op.template.to_string())
        .collect();
    let missing: Vec<_> = wanted.difference(&covered).collect();
    assert!(missing.is_empty(), "no payload for {missing:?}");
    assert!(wanted.len() >= 15, "{wanted:?}");
}

/// Every property path (`rate_limiter.bandwidth.one_time_burst`) of a schema.
fn schema_paths(spec: &Spec, schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    let mut schema = schema;
    while let Some(name) = schema.get("$ref").and_then(Value::as_str) {
        schema = spec
            .definition(name.trim_start_matches("#/definitions/"))
            .expect("reference resolves");
    }
    if let Some(items) = schema.get("items") {
        schema_paths(spec, items, &format!("{prefix}[]"), out);
        return;
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            out.insert(path.clone());
            schema_paths(spec, sub, &path, out);
        }
    }
}

fn value_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (name, sub) in map {
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                out.insert(path.clone());
                value_paths(sub, &path, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                value_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn maximal_config_sets_every_field_the_spec_defines() {
    let spec = Spec::bundled();
    // Deprecated in the spec; flick never sends it.
    let never_sent: BTreeSet<(&str, &str)> = [("/vsock", "vsock_id")].into();
    let mut sent: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut schemas: BTreeMap<String, Value> = BTreeMap::new();
    for call in maximal().to_payloads().unwrap().requests() {
        let op = spec.find_operation("PUT", &call.path).unwrap();
        value_paths(
            &call.body,
            "",
            sent.entry(op.template.to_string()).or_default(),
        );
        schemas.insert(op.template.to_string(), op.body_schema.unwrap().clone());
    }
    let mut missing = Vec::new();
    for (template, schema) in &schemas {
        if template == "/mmds" {
            continue; // Free-form metadata object.
        }
        let mut want = BTreeSet::new();
        schema_paths(&spec, schema, "", &mut want);
        for path in want.difference(&sent[template]) {
            if !never_sent.contains(&(template.as_str(), path.as_str())) {
                missing.push(format!("{template}: {path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "maximal config never sends:\n{}",
        missing.join("\n")
    );
}

#[test]
fn update_payloads_match_the_spec() {
    let spec = Spec::bundled();
    let current = maximal();
    let mut calls = vec![
        DriveUpdate {
            drive_id: "data".into(),
            path_on_host: Some("/srv/vm/data2.img".into()),
            rate_limiter: Some(limiter(0)),
        }
        .api_call()
        .unwrap(),
        NetworkInterfaceUpdate {
            iface_id: "eth0".into(),
            rx_rate_limiter: Some(limiter(1)),
            tx_rate_limiter: Some(limiter(2)),
        }
        .api_call()
        .unwrap(),
        PmemUpdate {
            id: "pmem0".into(),
            rate_limiter: limiter(3),
        }
        .api_call()
        .unwrap(),
        MachineConfigUpdate {
            vcpu_count: Some(2),
            mem_size_mib: Some(512),
            smt: Some(false),
            cpu_template: Some(CpuTemplate::None),
            track_dirty_pages: Some(false),
            huge_pages: Some(HugePages::None),
        }
        .api_call(&current)
        .unwrap(),
        MemoryHotplugUpdate {
            requested_size_mib: 512,
        }
        .api_call(&MemoryHotplug::new(1024))
        .unwrap(),
    ];
    calls.extend(
        BalloonUpdate {
            amount_mib: Some(128),
            stats_polling_interval_s: Some(2),
        }
        .api_calls(&current)
        .unwrap(),
    );
    assert!(calls.iter().all(|c| c.method == http::Method::PATCH));
    assert_eq!(calls.len(), 7);
    assert_conforms(&spec, &calls);
}

#[test]
fn the_spec_check_catches_misspelled_and_extra_fields() {
    let spec = Spec::bundled();
    let calls = maximal().to_payloads().unwrap().requests();
    let drive = calls.iter().find(|c| c.path == "/drives/rootfs").unwrap();
    assert!(violations(&spec, drive).is_empty());

    // A misspelled field: the real name goes missing and the wrong one is unknown.
    let mut misspelled = drive.clone();
    let obj = misspelled.body.as_object_mut().unwrap();
    let v = obj.remove("is_root_device").unwrap();
    obj.insert("is_root_devise".into(), v);
    let found = violations(&spec, &misspelled);
    assert!(
        found.iter().any(|v| v.contains("is_root_devise")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|v| v.contains("is_root_device")),
        "{found:?}"
    );

    // An extra field, including flick's own `ephemeral`, would be refused by Firecracker.
    let mut extra = drive.clone();
    extra.body["ephemeral"] = json!(true);
    let found = violations(&spec, &extra);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("ephemeral"));

    // A nested one too.
    let mut nested = drive.clone();
    nested.body["rate_limiter"]["bandwidth"]["refill_time_ms"] = json!(5);
    assert!(!violations(&spec, &nested).is_empty());

    // A wrong type and an out-of-range value.
    let machine = calls.iter().find(|c| c.path == "/machine-config").unwrap();
    let mut wrong = machine.clone();
    wrong.body["vcpu_count"] = json!(33);
    wrong.body["smt"] = json!("yes");
    assert_eq!(violations(&spec, &wrong).len(), 2);
}

#[test]
fn flick_limits_agree_with_the_spec() {
    let spec = Spec::bundled();
    let prop = |def: &str, field: &str| spec.definition(def).unwrap()["properties"][field].clone();
    assert_eq!(prop("MachineConfiguration", "vcpu_count")["minimum"], 1);
    assert_eq!(prop("MachineConfiguration", "vcpu_count")["maximum"], 32);
    assert_eq!(prop("NetworkInterface", "mtu")["minimum"], 68);
    assert_eq!(prop("NetworkInterface", "mtu")["maximum"], 65535);
    assert_eq!(prop("Vsock", "guest_cid")["minimum"], 3);
    assert_eq!(prop("MemoryHotplugConfig", "slot_size_mib")["minimum"], 128);
    assert_eq!(prop("MemoryHotplugConfig", "block_size_mib")["minimum"], 2);
    // flick implements this pattern by hand (169.254.[1-254].[0-255]); a changed pattern must
    // be looked at.
    assert_eq!(
        prop("MmdsConfig", "ipv4_address")["format"],
        "169.254.([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-4]).([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])"
    );

    let base = || VmConfig::new("/k", "/r");
    let ok = |c: VmConfig| c.problems().is_empty();
    assert!(ok(base().with_vcpus(1)) && ok(base().with_vcpus(32)));
    assert!(!ok(base().with_vcpus(0)) && !ok(base().with_vcpus(33)));
    let mtu = |m| base().with_network_interface(NetworkInterface::with_tap("e", "t").with_mtu(m));
    assert!(ok(mtu(68)) && ok(mtu(65535)) && !ok(mtu(67)));
    assert!(ok(base().with_vsock(Vsock::new(3))) && !ok(base().with_vsock(Vsock::new(2))));
    let hp = |slot, block| {
        base().with_memory_hotplug(MemoryHotplug {
            total_size_mib: 1024,
            slot_size_mib: Some(slot),
            block_size_mib: Some(block),
        })
    };
    assert!(ok(hp(128, 2)) && !ok(hp(127, 2)) && !ok(hp(128, 1)));
    let mmds = |ip: [u8; 4]| {
        let mut m = MmdsConfig::v2(["e"]);
        m.version = Some(MmdsVersion::V1);
        m.ipv4_address = Some(Ipv4Addr::from(ip));
        base()
            .with_network_interface(NetworkInterface::with_tap("e", "t"))
            .with_mmds(m)
    };
    assert!(ok(mmds([169, 254, 1, 0])) && ok(mmds([169, 254, 254, 255])));
    assert!(!ok(mmds([169, 254, 0, 1])) && !ok(mmds([169, 254, 255, 0])));
}

#[test]
fn ephemeral_is_never_sent_and_user_types_round_trip() {
    let config = maximal();
    let text = serde_json::to_string_pretty(&config).unwrap();
    assert!(text.contains("\"ephemeral\": true"));
    let back: VmConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(back, config);
    for call in config.to_payloads().unwrap().requests() {
        let mut paths = BTreeSet::new();
        value_paths(&call.body, "", &mut paths);
        assert!(
            paths.iter().all(|p| !p.contains("ephemeral")),
            "{} carries ephemeral",
            call.path
        );
    }
}

fn slug(call: &ApiCall) -> String {
    call.path.trim_start_matches('/').replace(['/', '-'], "_")
}

#[test]
fn maximal_payload_snapshots() {
    let calls = maximal().to_payloads().unwrap().requests();
    let order: Vec<String> = calls
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    insta::assert_json_snapshot!("maximal_request_order", order);
    for call in &calls {
        insta::assert_json_snapshot!(format!("maximal_{}", slug(call)), call.body);
    }
}

#[test]
fn minimal_payload_snapshots() {
    let calls = minimal().to_payloads().unwrap().requests();
    let all: Vec<Value> = calls
        .iter()
        .map(|c| json!({"method": c.method.as_str(), "path": c.path, "body": c.body}))
        .collect();
    insta::assert_json_snapshot!("minimal_requests", all);
}

/// JSON pointers of every leaf (and every array or object, so whole parts can be replaced).
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                pointers(v, format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    if !at.is_empty() {
        out.push(at);
    }
}

/// A replacement of the same JSON kind as `old` (so the result usually still deserializes and
/// the interesting part, flick's validation, runs), or now and then a value of another kind.
fn replacement(old: &Value, pick: u8, num: i64, text: &str) -> Value {
    match (old, pick % 8) {
        (_, 7) => {
            [Value::Null, json!({}), json!([]), json!(text)][usize::from(pick / 8 % 4)].clone()
        }
        (Value::Bool(b), _) => Value::Bool(!b),
        (Value::Number(_), 0) => json!(num),
        (Value::Number(_), 1) => json!(u64::MAX - (num.unsigned_abs() % 4)),
        (Value::Number(_), _) => json!(num.rem_euclid(300)),
        (Value::String(_), 0..=2) => json!(text),
        (Value::String(s), 3) => json!(format!("{s}{text}")),
        (Value::String(s), 4) => json!(s.trim_start_matches('/')),
        (Value::String(s), _) => json!(s.chars().rev().collect::<String>()),
        (Value::Array(items), _) => json!(items.iter().chain(items.iter()).collect::<Vec<_>>()),
        (other, _) => other.clone(),
    }
}

static SPEC: std::sync::LazyLock<Spec> = std::sync::LazyLock::new(Spec::bundled);

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever flick accepts, Firecracker's spec accepts: mutate the maximal config's JSON in
    /// up to three places; if the result still deserializes and converts, every request body
    /// must conform to the spec. Nothing may panic on the way.
    #[test]
    fn whatever_flick_accepts_the_spec_accepts(
        picks in proptest::collection::vec(
            (any::<proptest::sample::Index>(), any::<u8>(), any::<i64>(), "[ -~]{0,12}"),
            1..4,
        ),
    ) {
        let spec = &*SPEC;
        let mut value = serde_json::to_value(maximal()).unwrap();
        for (index, pick, num, text) in picks {
            let mut all = Vec::new();
            pointers(&value, String::new(), &mut all);
            let at = index.get(&all).clone();
            if let Some(slot) = value.pointer_mut(&at) {
                *slot = replacement(slot, pick, num, &text);
            }
        }
        let parsed = serde_json::from_value::<VmConfig>(value);
        // A value of the wrong type or range is serde's to refuse; those cases are skipped.
        prop_assume!(parsed.is_ok());
        let config = parsed.unwrap();
        let problems = config.problems();
        match config.to_payloads() {
            Ok(payloads) => {
                prop_assert!(problems.is_empty());
                let calls = payloads.requests();
                let found: Vec<String> = calls.iter().flat_map(|c| violations(spec, c)).collect();
                prop_assert!(found.is_empty(), "flick accepted what the spec refuses: {:?}", found);
            }
            Err(e) => {
                prop_assert_eq!(e.code(), flick::ErrorCode::InvalidConfig);
            }
        }
    }
}
