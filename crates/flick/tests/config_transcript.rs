//! flick's validation agrees with a real Firecracker v1.16.1: every pre-boot configuration
//! request of the recorded transcript is replayed into a [`VmConfig`] (through flick's user
//! types, which accept Firecracker's JSON spelling). What real Firecracker accepted, flick must
//! accept; what it refused for a reason flick checks, flick must refuse at the right field.

use flick::config::{
    Balloon, BootSource, Drive, Entropy, Logger, MachineConfig, Metrics, MmdsConfig,
    NetworkInterface, VmConfig, Vsock,
};
use flick_testkit::spec::BUNDLED_TRANSCRIPT_MD;
use serde_json::Value;

#[derive(Debug)]
struct Exchange {
    /// The API socket: a new one is a new Firecracker process.
    socket: String,
    method: String,
    path: String,
    body: Option<Value>,
    status: u16,
    fault: String,
}

/// Parses the `curl` commands, statuses and fault messages out of the transcript.
fn exchanges(md: &str) -> Vec<Exchange> {
    let mut out: Vec<Exchange> = Vec::new();
    let mut lines = md.lines().peekable();
    let mut in_fault = false;
    while let Some(line) = lines.next() {
        if line.starts_with("curl ") {
            let mut cmd = line.to_string();
            while cmd.ends_with('\\') {
                cmd.pop();
                cmd.push_str(lines.next().unwrap_or(""));
            }
            let socket = cmd
                .split("--unix-socket ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .expect("socket")
                .to_string();
            let after_x = cmd.split(" -X ").nth(1).expect("method");
            let method = after_x.split_whitespace().next().unwrap().to_string();
            let path = cmd
                .split("'http://localhost")
                .nth(1)
                .and_then(|rest| rest.split('\'').next())
                .expect("url")
                .to_string();
            let body = cmd.split(" -d '").nth(1).map(|rest| {
                let json = rest.rsplit_once('\'').expect("closing quote").0;
                serde_json::from_str(json).expect("request body is JSON")
            });
            out.push(Exchange {
                socket,
                method,
                path,
                body,
                status: 0,
                fault: String::new(),
            });
        } else if let Some(rest) = line.strip_prefix("Response: **HTTP ") {
            let status = rest.trim_end_matches("**").parse().expect("status");
            out.last_mut().expect("a request first").status = status;
            in_fault = status >= 400;
        } else if in_fault && line.contains("\"fault_message\"") {
            let v: Value = serde_json::from_str(&format!("{{{line}}}")).expect("fault JSON");
            out.last_mut().unwrap().fault = v["fault_message"].as_str().unwrap().to_string();
            in_fault = false;
        }
    }
    out
}

/// Why real Firecracker refused a request, as far as flick's validation is concerned.
#[derive(Debug, PartialEq)]
enum Refusal {
    /// A host file is missing: only Firecracker can tell, flick's validation is pure.
    MissingFile,
    /// The request came after boot: a lifecycle matter, not a config one.
    AfterBoot,
    /// flick checks this and must refuse it at a field ending with this suffix.
    Field(&'static str),
}

fn classify(fault: &str) -> Refusal {
    if fault.contains("No such file or directory") {
        Refusal::MissingFile
    } else if fault.contains("not supported after starting") {
        Refusal::AfterBoot
    } else if fault.contains("Invalid interface name") {
        Refusal::Field("host_dev_name")
    } else {
        panic!("unclassified Firecracker refusal (decide whether flick checks it): {fault}")
    }
}

fn body<T: serde::de::DeserializeOwned>(e: &Exchange) -> T {
    serde_json::from_value(e.body.clone().expect("a body")).unwrap_or_else(|err| {
        panic!(
            "flick's user type refused Firecracker's own body for {} {}: {err}",
            e.method, e.path
        )
    })
}

/// `state` with the resource of one request applied, or `None` for requests that are not
/// configuration (actions, snapshots, reads, MMDS patches).
fn apply(state: &VmConfig, e: &Exchange) -> Option<VmConfig> {
    if e.method != "PUT" {
        return None;
    }
    let mut next = state.clone();
    let p = e.path.as_str();
    if p == "/machine-config" {
        next.machine_config = body::<MachineConfig>(e);
    } else if p == "/boot-source" {
        next.boot_source = body::<BootSource>(e);
    } else if let Some(id) = p.strip_prefix("/drives/") {
        let d: Drive = body(e);
        assert_eq!(d.drive_id, id);
        next.drives.retain(|x| x.drive_id != id);
        next.drives.push(d);
    } else if let Some(id) = p.strip_prefix("/network-interfaces/") {
        let n: NetworkInterface = body(e);
        assert_eq!(n.iface_id, id);
        next.network_interfaces.retain(|x| x.iface_id != id);
        next.network_interfaces.push(n);
    } else if p == "/mmds/config" {
        next.mmds_config = Some(body::<MmdsConfig>(e));
    } else if p == "/mmds" {
        next.mmds_data = e.body.clone();
    } else if p == "/vsock" {
        next.vsock = Some(body::<Vsock>(e));
    } else if p == "/balloon" {
        next.balloon = Some(body::<Balloon>(e));
    } else if p == "/logger" {
        next.logger = Some(body::<Logger>(e));
    } else if p == "/metrics" {
        next.metrics = Some(body::<Metrics>(e));
    } else if p == "/entropy" {
        next.entropy = Some(body::<Entropy>(e));
    } else {
        return None;
    }
    Some(next)
}

#[test]
fn flick_agrees_with_real_firecracker_on_the_transcript() {
    let all = exchanges(BUNDLED_TRANSCRIPT_MD);
    assert!(all.len() > 30, "parsed only {} exchanges", all.len());
    assert!(
        all.iter().all(|e| e.status != 0),
        "a request without status"
    );

    // Each Firecracker process starts empty; the replay starts from a placeholder kernel.
    let fresh = || VmConfig::with_kernel("/placeholder/vmlinux");
    let mut state = fresh();
    let mut socket = "";
    let (mut accepted, mut refused, mut processes) = (0, 0, 0);
    for e in &all {
        if e.socket != socket {
            socket = &e.socket;
            state = fresh();
            processes += 1;
        }
        let Some(candidate) = apply(&state, e) else {
            continue;
        };
        let problems = candidate.problems();
        if e.status < 300 {
            assert!(
                problems.is_empty(),
                "real Firecracker accepted {} {} but flick reports {problems:?}",
                e.method,
                e.path
            );
            state = candidate;
            accepted += 1;
            continue;
        }
        match classify(&e.fault) {
            Refusal::MissingFile | Refusal::AfterBoot => assert!(
                problems.is_empty(),
                "{} {}: flick refuses what only a host check could: {problems:?}",
                e.method,
                e.path
            ),
            Refusal::Field(suffix) => {
                assert!(
                    !problems.is_empty() && problems.iter().all(|p| p.field.ends_with(suffix)),
                    "{} {} ({}): flick reports {problems:?}",
                    e.method,
                    e.path,
                    e.fault
                );
                refused += 1;
            }
        }
    }
    // vCPU count 3 without SMT and an upper-case MAC are among the accepted ones.
    assert_eq!(accepted, 13);
    assert_eq!(refused, 1, "the over-long TAP name");
    assert_eq!(processes, 3);
}

#[test]
fn odd_vcpus_without_smt_and_upper_case_macs_are_accepted_as_firecracker_does() {
    let all = exchanges(BUNDLED_TRANSCRIPT_MD);
    let first = &all[0].socket;
    let mut state = VmConfig::with_kernel("/placeholder/vmlinux");
    for e in all.iter().filter(|e| &e.socket == first && e.status < 300) {
        if let Some(next) = apply(&state, e) {
            state = next;
        }
    }
    assert_eq!(state.machine_config.vcpu_count, 3);
    assert!(!state.machine_config.smt);
    assert_eq!(
        state.network_interfaces[0].guest_mac.as_deref(),
        Some("06:00:AC:10:00:02")
    );
    assert_eq!(state.problems(), vec![]);
    // And the replayed state converts into payloads.
    state.to_payloads().unwrap();
}

#[test]
fn the_parser_reads_bodies_statuses_and_faults() {
    let all = exchanges(BUNDLED_TRANSCRIPT_MD);
    let tap = all
        .iter()
        .find(|e| e.path == "/network-interfaces/eth1")
        .unwrap();
    assert_eq!(tap.status, 400);
    assert_eq!(
        tap.body.as_ref().unwrap()["host_dev_name"],
        "fc-no-such-tap-device-name-too-long"
    );
    assert!(tap.fault.ends_with("Invalid interface name"));
    let after = all
        .iter()
        .rfind(|e| e.path == "/machine-config" && e.method == "PUT")
        .unwrap();
    assert_eq!(after.status, 400);
    assert_eq!(classify(&after.fault), Refusal::AfterBoot);
}
