//! The CLI SIGKILLed at every named point of create, start, stop and rm (`FLICK_CRASH_AT`),
//! then `flick ls` and `flick gc`: no leaked process, TAP, nftables object or runtime dir, and
//! a VM that was left running is re-attached and usable.

mod cli_common;

use std::os::unix::process::ExitStatusExt;

use cli_common::Env;
use serde_json::Value;

/// The crash points the CLI knows, in the order a create → start → stop → rm passes them
/// (an unknown `FLICK_CRASH_AT` is refused with the list in its details).
fn points(env: &Env) -> Vec<String> {
    let out = env
        .command(&["--json", "ls"])
        .env("FLICK_CRASH_AT", "nowhere")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"]["code"], "INVALID_ARGUMENT");
    err["error"]["details"]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

/// Checks that what exists matches the records exactly.
fn assert_consistent(env: &Env, point: &str) {
    let list = env.json(&["ls", "--all"]);
    let records = list.as_array().unwrap();
    let running: Vec<&Value> = records.iter().filter(|r| r["state"] == "running").collect();
    // Exactly the running VMs have a live Firecracker and a runtime dir.
    let procs = env.marked_processes();
    assert_eq!(
        procs.len(),
        running.len(),
        "{point}: processes {procs:?} vs {list:#}"
    );
    let mut dirs = env.runtime_entries();
    let mut ids: Vec<String> = running
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    dirs.sort();
    ids.sort();
    assert_eq!(dirs, ids, "{point}: runtime dirs");
    // TAPs only for recorded VMs; no VM means no bridge and no table.
    let taps: Vec<String> = records
        .iter()
        .filter_map(|r| r["tap"].as_str().map(str::to_string))
        .collect();
    let links = env.links();
    for link in &links {
        assert!(
            taps.contains(link) || (link.starts_with("flbr") && !taps.is_empty()),
            "{point}: leaked link {link} ({links:?}, records {list:#})"
        );
    }
    for tap in &taps {
        assert!(links.contains(tap), "{point}: recorded TAP {tap} missing");
    }
    let nft = env.nft();
    if records.iter().all(|r| r["tap"].is_null()) {
        assert!(
            nft.trim().is_empty(),
            "{point}: leaked nftables objects:\n{nft}"
        );
    }
    for r in records {
        let chain = flick::net::nft::vm_chain(r["id"].as_str().unwrap());
        assert_eq!(
            nft.contains(&chain),
            !r["tap"].is_null(),
            "{point}: chain {chain} vs record {r:#}"
        );
    }
    for r in running {
        let name = r["name"].as_str().unwrap();
        assert_eq!(
            env.ok(&["exec", name, "--", "echo", "usable"]),
            "usable\n",
            "{point}"
        );
    }
}

fn crash(env: &Env, point: &str, args: &[&str]) {
    let out = env
        .command(args)
        .env("FLICK_CRASH_AT", point)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{point}: flick {args:?} should have been SIGKILLed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scenario(env: &Env, point: &str) {
    let name = "crashy";
    match point.split(':').next().unwrap() {
        "create" => crash(env, point, &["create", "--name", name, "--disk", "8M"]),
        "start" => {
            env.ok(&["create", "--name", name, "--no-start"]);
            crash(env, point, &["start", name]);
        }
        "stop" => {
            env.ok(&["create", "--name", name]);
            crash(env, point, &["stop", "--timeout", "1", name]);
        }
        "rm" => {
            env.ok(&["create", "--name", name]);
            crash(env, point, &["rm", "--force", name]);
        }
        other => panic!("unknown phase {other}"),
    }
    // Every command reconciles first; gc reclaims the rest.
    env.ok(&["ls", "--all"]);
    env.json(&["gc"]);
    assert_consistent(env, point);
    let states: Vec<String> = env
        .json(&["ls", "--all"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        states,
        expected_after(point),
        "{point}: state after recovery"
    );
    // Whatever survived still works as a VM: start it if needed, use it, remove it.
    if let Some(r) = env.json(&["ls", "--all"]).as_array().unwrap().first() {
        let id = r["id"].as_str().unwrap().to_string();
        if r["state"] != "running" {
            env.ok(&["start", &id]);
        }
        assert_eq!(
            env.ok(&["exec", &id, "--", "echo", "ok"]),
            "ok\n",
            "{point}"
        );
        env.ok(&["rm", "--force", &id]);
    }
    assert!(env.records().is_empty(), "{point}");
    assert!(env.marked_processes().is_empty(), "{point}");
    assert!(env.runtime_entries().is_empty(), "{point}");
    assert!(env.links().is_empty(), "{point}: {:?}", env.links());
    assert!(env.nft().trim().is_empty(), "{point}");
}

/// What recovery must make of each interruption.
fn expected_after(point: &str) -> Vec<String> {
    let state = match point {
        // A create that did not finish is undone.
        "create:before-record"
        | "create:record-saved"
        | "create:files-made"
        | "create:network-added"
        | "create:network-saved" => None,
        "create:created" | "start:locked" => Some("created"),
        // Firecracker never came up: the start is rolled back.
        "start:record-starting" => Some("stopped"),
        // Firecracker is up: the VM is adopted.
        "start:vm-started" | "start:record-running" | "stop:locked" => Some("running"),
        "stop:record-stopping" | "stop:vm-stopped" | "stop:cleaned-up" | "stop:record-stopped" => {
            Some("stopped")
        }
        // rm --force is finished once it has started.
        "rm:locked" => Some("running"),
        "rm:record-removing" | "rm:network-removed" | "rm:files-removed" | "rm:record-deleted" => {
            None
        }
        other => panic!("no expected outcome for crash point {other}: add one"),
    };
    state.into_iter().map(str::to_string).collect()
}

fn run_phases(phases: &[&str]) {
    let env = Env::new();
    for point in points(&env) {
        if phases.iter().any(|ph| point.starts_with(ph)) {
            scenario(&env, &point);
        }
    }
}

#[test]
fn there_are_at_least_twenty_points_and_each_has_an_expected_outcome() {
    let env = Env::new();
    let all = points(&env);
    assert!(all.len() >= 20, "{all:?}");
    for phase in ["create:", "start:", "stop:", "rm:"] {
        assert!(
            all.iter().any(|p| p.starts_with(phase)),
            "{phase} has points"
        );
    }
    assert_eq!(
        all.iter().filter(|p| *p == "start:vm-started").count(),
        1,
        "the adopt-after-boot point exists"
    );
}

#[test]
fn sigkill_during_create_and_start() {
    run_phases(&["create:", "start:"]);
}

#[test]
fn sigkill_during_stop_and_rm() {
    run_phases(&["stop:", "rm:"]);
}

#[test]
fn a_vm_whose_firecracker_dies_is_marked_crashed_and_restartable() {
    let env = Env::new();
    let vm = env.json(&["create", "--name", "fragile"]);
    let pid = vm["pid"].as_i64().unwrap();
    rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let list = env.json(&["ls", "--all"]);
    assert_eq!(list[0]["state"], "crashed");
    assert_eq!(list[0]["last_error"]["code"], "PROCESS_FAILED");
    assert!(env.runtime_entries().is_empty());
    env.ok(&["start", "fragile"]);
    assert_eq!(env.ok(&["exec", "fragile", "--", "echo", "up"]), "up\n");
    env.ok(&["rm", "-f", "fragile"]);
    assert!(env.links().is_empty());
}

#[test]
fn concurrent_clis_never_corrupt_the_store() {
    let env = Env::new();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let cmd = env.command(&["--json", "create", "--name", &format!("par{i}")]);
            std::thread::spawn(move || {
                let mut cmd = cmd;
                cmd.output().unwrap()
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let list = env.json(&["ls"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 6);
    let ips: std::collections::BTreeSet<_> =
        list.iter().map(|r| r["ip"].as_str().unwrap()).collect();
    assert_eq!(ips.len(), 6, "addresses are unique");
    // Same name from two CLIs at once: exactly one wins.
    let a = env.command(&["create", "--name", "same", "--no-network"]);
    let b = env.command(&["create", "--name", "same", "--no-network"]);
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(move || {
            let mut a = a;
            a.output().unwrap()
        });
        let hb = s.spawn(move || {
            let mut b = b;
            b.output().unwrap()
        });
        (ha.join().unwrap(), hb.join().unwrap())
    });
    assert_eq!(
        u8::from(ra.status.success()) + u8::from(rb.status.success()),
        1,
        "one create of a name wins"
    );
    let mut all: Vec<String> = env
        .json(&["ls", "-a"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    all.insert(0, "--force".into());
    all.insert(0, "rm".into());
    let args: Vec<&str> = all.iter().map(String::as_str).collect();
    env.ok(&args);
    assert!(env.links().is_empty());
    assert!(env.nft().trim().is_empty());
}

#[test]
fn jailed_vms_are_recorded_stopped_and_reclaimed_with_their_jails() {
    let env = Env::new();
    let cgroups = env.dir.path().join("cgroup");
    std::fs::create_dir_all(&cgroups).unwrap();
    // The jailer only execs a file named like Firecracker.
    let firecracker = env.dir.path().join("firecracker");
    std::fs::copy(flick_testkit::fc_double_path(), &firecracker).unwrap();
    let flick = |args: &[&str]| {
        let out = env
            .command(args)
            .env("FLICK_FIRECRACKER", &firecracker)
            .env("FLICK_JAILER", flick_testkit::jailer_double_path())
            .env("FLICK_JAILER_CGROUP_ROOT", &cgroups)
            .env("JAILER_DOUBLE_CGROUP_ROOT", &cgroups)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let jails = env.runtime_dir().join("jailer");
    let jail_count = || {
        cli_common::dir_names(&jails)
            .iter()
            .map(|exec| cli_common::dir_names(&jails.join(exec)).len())
            .sum::<usize>()
    };
    let vm: Value = serde_json::from_str(&flick(&[
        "--json",
        "create",
        "--name",
        "jailed",
        "--jailer",
        "--no-network",
    ]))
    .unwrap();
    assert_eq!(vm["state"], "running");
    let record: Value = serde_json::from_str(&flick(&["--json", "inspect", "jailed"])).unwrap();
    let runtime = record["attach"]["status"]["runtime_dir"].as_str().unwrap();
    assert!(
        runtime.starts_with(jails.to_str().unwrap()),
        "the jail is the runtime dir: {runtime}"
    );
    assert_eq!(jail_count(), 1);
    assert_eq!(
        env.marked_processes().len(),
        1,
        "the jailed Firecracker is found by its root"
    );

    flick(&["stop", "jailed"]);
    assert_eq!(jail_count(), 0, "stop removes the jail");
    flick(&["start", "jailed"]);
    assert_eq!(jail_count(), 1);
    // A jailed Firecracker that dies: crashed, and its jail reclaimed.
    let pid = env.marked_processes()[0];
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let list: Value = serde_json::from_str(&flick(&["--json", "ls", "-a"])).unwrap();
    assert_eq!(list[0]["state"], "crashed");
    assert_eq!(jail_count(), 0);
    flick(&["start", "jailed"]);
    flick(&["rm", "-f", "jailed"]);
    flick(&["gc"]);
    assert_eq!(jail_count(), 0);
    assert!(env.marked_processes().is_empty());
    let leftover_cgroups: Vec<String> = cli_common::dir_names(&cgroups)
        .iter()
        .flat_map(|d| cli_common::dir_names(&cgroups.join(d)))
        .collect();
    assert!(
        leftover_cgroups.is_empty(),
        "cgroups removed: {leftover_cgroups:?}"
    );
}
