//! The `flick` binary end to end: create → exec → upload → download → snapshot → restore (×3)
//! → stop → rm, in human and `--json` modes, every JSON document checked against
//! `tests/schemas.yaml`, exit codes propagated, and nothing left behind.

mod cli_common;

use cli_common::Env;
use flick_testkit::spec::Spec;
use serde_json::{Value, json};

fn schemas() -> Spec {
    Spec::from_yaml(include_str!("schemas.yaml")).expect("schemas parse")
}

fn check(spec: &Spec, definition: &str, doc: &Value) {
    let problems = spec.validate_body(
        &json!({ "$ref": format!("#/definitions/{definition}") }),
        doc,
    );
    assert!(
        problems.is_empty(),
        "{definition} does not match its schema: {problems:?}\n{doc:#}"
    );
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not NDJSON ({e}): {l}")))
        .collect()
}

#[test]
fn json_mode_full_flow_with_schemas() {
    let env = Env::new();
    let spec = schemas();
    let vm = env.json(&[
        "create", "--name", "box", "--cpus", "2", "--memory", "256M", "--disk", "32M",
    ]);
    check(&spec, "Vm", &vm);
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["cpus"], 2);
    assert_eq!(vm["memory_mib"], 256);
    let ip = vm["ip"].as_str().expect("an address").to_string();
    let tap = vm["tap"].as_str().expect("a TAP").to_string();
    assert!(
        env.links().contains(&tap),
        "TAP {tap} exists: {:?}",
        env.links()
    );

    let list = env.json(&["ls"]);
    check(&spec, "VmList", &list);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["ip"], ip.as_str());

    // exec: NDJSON events, stdout and stderr apart, the exit code propagated.
    let out = env.run(&[
        "--json",
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let events = ndjson(&String::from_utf8(out.stdout).unwrap());
    for e in &events {
        check(&spec, "ExecEvent", e);
    }
    assert!(events.contains(&json!({ "stream": "stdout", "data": "out\n" })));
    assert!(events.contains(&json!({ "stream": "stderr", "data": "err\n" })));
    assert_eq!(events.last().unwrap()["exit"]["code"], 3);

    // Files, both ways, checked by content.
    let local = env.dir.path().join("in.bin");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &bytes).unwrap();
    let remote = env.dir.path().join("guest/in.bin");
    let up = env.json(&[
        "upload",
        "box",
        local.to_str().unwrap(),
        remote.to_str().unwrap(),
    ]);
    check(&spec, "Upload", &up);
    assert_eq!(up["size"], bytes.len());
    let back = env.dir.path().join("back.bin");
    let down = env.json(&[
        "download",
        "box",
        remote.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    check(&spec, "Download", &down);
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
    assert_eq!(up["sha256"], down["sha256"]);

    // Snapshot, then three clones from it, each reachable.
    let snap = env.json(&["snapshot", "create", "box", "--name", "s1"]);
    check(&spec, "Snapshot", &snap);
    check(&spec, "SnapshotList", &env.json(&["snapshot", "ls"]));
    let clones = env.json(&[
        "snapshot", "restore", "s1", "--count", "3", "--name", "clone",
    ]);
    check(&spec, "VmList", &clones);
    let clones = clones.as_array().unwrap();
    assert_eq!(clones.len(), 3);
    let mut taps = std::collections::BTreeSet::from([tap.clone()]);
    for c in clones {
        assert_eq!(c["state"], "running");
        taps.insert(c["tap"].as_str().unwrap().to_string());
        let out = env.ok(&["exec", c["name"].as_str().unwrap(), "--", "echo", "alive"]);
        assert_eq!(out, "alive\n");
    }
    assert_eq!(taps.len(), 4, "every clone has its own TAP");
    let all = env.json(&["ls"]);
    assert_eq!(all.as_array().unwrap().len(), 4);

    let inspect = env.json(&["inspect", "box"]);
    check(&spec, "Inspect", &inspect);
    assert_eq!(
        inspect["agent_token"], "<set>",
        "the token is never printed"
    );

    let stopped = env.json(&["stop", "box"]);
    check(&spec, "StoppedList", &stopped);
    assert_eq!(stopped[0]["state"], "stopped");
    assert_eq!(stopped[0]["outcome"], "graceful");
    assert!(
        env.json(&["ls"]).as_array().unwrap().len() == 3,
        "ls hides stopped VMs"
    );
    assert_eq!(env.json(&["ls", "--all"]).as_array().unwrap().len(), 4);

    // Errors are one JSON document with the library's code, and exit code 125.
    let out = env.run(&["--json", "exec", "box", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    check(&spec, "Error", &err);
    assert_eq!(err["error"]["code"], "INVALID_STATE");
    let out = env.run(&["--json", "rm", "clone-1"]);
    assert_eq!(out.status.code(), Some(125));
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        err["error"]["code"], "INVALID_STATE",
        "rm of a running VM needs --force"
    );

    let mut names = vec!["rm", "--force", "box"];
    names.extend(clones.iter().map(|c| c["name"].as_str().unwrap()));
    let removed = env.json(&names);
    check(&spec, "Removed", &removed);
    assert_eq!(removed.as_array().unwrap().len(), 4);
    check(
        &spec,
        "SnapshotRemoved",
        &env.json(&["snapshot", "rm", "s1"]),
    );
    let gc = env.json(&["gc"]);
    check(&spec, "Gc", &gc);

    assert!(env.records().is_empty());
    assert!(
        env.runtime_entries().is_empty(),
        "{:?}",
        env.runtime_entries()
    );
    assert!(env.marked_processes().is_empty());
    assert!(
        env.links().is_empty(),
        "bridge and TAPs removed: {:?}",
        env.links()
    );
    assert!(
        env.nft().trim().is_empty(),
        "nftables table removed:\n{}",
        env.nft()
    );
}

#[test]
fn human_mode_flow_and_exit_codes() {
    let env = Env::new();
    let name = env.ok(&["create", "--name", "plain", "--no-network"]);
    assert_eq!(name, "plain\n");
    let table = env.ok(&["ls"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("STATE"),
        "{table}"
    );
    let row = lines.next().unwrap();
    assert!(row.contains("plain") && row.contains("running"), "{table}");
    // Columns line up: STATE starts at the same offset in header and row.
    let col = header.find("STATE").unwrap();
    assert_eq!(&row[col..col + 7], "running", "{table}");

    // Output streams stay apart and the exit code is the command's.
    let out = env.run(&[
        "exec",
        "plain",
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 42",
    ]);
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-err\n");
    let out = env.run(&["exec", "plain", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15), "a signal maps to 128+N");
    let out = env.run(&["exec", "--timeout", "1", "plain", "--", "sleep", "30"]);
    assert_eq!(out.status.code(), Some(124), "a timeout is 124");
    let out = env.run(&[
        "exec",
        "-e",
        "GREETING=hi there",
        "-w",
        "/tmp",
        "plain",
        "--",
        "sh",
        "-c",
        "echo $GREETING; pwd",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi there\n/tmp\n");

    // stdin streams with -i.
    let mut child = env
        .command(&["exec", "-i", "plain", "--", "wc", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&[b'x'; 12345]).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "12345");

    // Flick's own failures: 125 and one line with the code.
    let out = env.run(&["exec", "nope", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("flick: ") && err.contains("[NOT_FOUND]"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = env.run(&["create", "--name", "plain", "--no-network"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("[ALREADY_EXISTS]"));
    let out = env.run(&["create", "--memory", "lots", "--no-network"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("[INVALID_ARGUMENT]"));
    let out = env.run(&["create", "--network-policy", "sometimes"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("[INVALID_EGRESS_POLICY]"));
    assert_eq!(env.records().len(), 1, "failed creates leave no record");

    // logs: the serial console file, kept until rm.
    let console = env
        .data_dir()
        .join("vms")
        .join(env.json(&["inspect", "plain"])["id"].as_str().unwrap());
    std::fs::write(
        console.join("console.log"),
        b"[    0.000000] Linux version\n",
    )
    .unwrap();
    assert_eq!(env.ok(&["logs", "plain"]), "[    0.000000] Linux version\n");

    assert_eq!(env.ok(&["stop", "plain"]), "plain\n");
    assert_eq!(env.ok(&["start", "plain"]), "plain\n");
    assert_eq!(env.ok(&["exec", "plain", "--", "echo", "again"]), "again\n");
    assert_eq!(env.ok(&["rm", "-f", "plain"]), "plain\n");
    assert!(env.records().is_empty());
    assert!(env.marked_processes().is_empty());
    assert!(env.runtime_entries().is_empty());
}

#[test]
fn run_creates_executes_and_removes() {
    let env = Env::new();
    let out = env.run(&[
        "run",
        "--no-network",
        "--",
        "sh",
        "-c",
        "echo hello; exit 5",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    assert_eq!(out.status.code(), Some(5));
    assert!(env.records().is_empty(), "run removes its sandbox");
    assert!(env.marked_processes().is_empty());
    assert!(env.runtime_entries().is_empty());
    let out = env.run(&["run", "--keep", "--name", "kept", "--", "true"]);
    assert!(out.status.success());
    assert_eq!(env.json(&["ls"])[0]["name"], "kept");
    env.ok(&["rm", "-f", "kept"]);
    assert!(env.links().is_empty());
}

#[test]
fn completions_and_version_need_no_host() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish"] {
        let script = env.ok(&["completions", shell]);
        assert!(
            script.contains("flick") && script.contains("snapshot"),
            "{shell}"
        );
    }
    let out = env.run(&["completions", "cmd.exe"]);
    assert!(!out.status.success());
}

#[test]
fn connect_gives_a_terminal_and_restores_the_local_one() {
    let env = Env::new();
    env.ok(&["create", "--name", "term", "--no-network"]);
    // `script` gives flick a terminal of its own; its stdin is typed into that terminal.
    let flick = env.command(&["connect", "term"]);
    let line: Vec<String> = std::iter::once(flick.get_program().to_string_lossy().into_owned())
        .chain(flick.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect();
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qfec", &line.join(" "), "/dev/null"]);
    for (k, v) in flick.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (bsdutils) is installed");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(800));
        // One line at a time: a shell may discard input typed ahead of its prompt.
        for line in [&b"stty size; tty; echo marker-$((6*7))\n"[..], b"exit 3\n"] {
            stdin.write_all(line).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(800));
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("marker-42"), "{text}");
    assert!(
        text.contains("/dev/pts/"),
        "the shell runs on a terminal: {text}"
    );
    assert!(
        text.lines().any(|l| l.trim() == "24 80"),
        "the guest terminal has the local size (80x24 without one): {text}"
    );
    assert_eq!(out.status.code(), Some(3), "the shell's exit code: {text}");
    env.ok(&["rm", "-f", "term"]);
}

#[test]
fn run_downloads_firecracker_and_a_base_image_then_reuses_them() {
    use flick_testkit::fixture_server::{FixtureServer, ReleaseFixture, ReleaseOptions};
    let env = Env::new();
    let server = FixtureServer::start();
    let arch = flick::image::Arch::host().unwrap();
    let release = ReleaseFixture::new(
        "v1.16.1",
        arch.as_str(),
        &ReleaseOptions {
            delegate_to: Some(flick_testkit::fc_double_path()),
            ..ReleaseOptions::default()
        },
    );
    server.serve_release(&release, true);
    server.serve_ci_trains(&["v1.16"], arch.as_str(), 64 * 1024);
    // The fixture server listens on the host's loopback: these runs stay in the host's
    // network namespace, without a VM network.
    let flick_run = |args: &[&str]| {
        env.host_command(args)
            .env_remove("FLICK_FIRECRACKER")
            .env_remove("FLICK_KERNEL")
            .env_remove("FLICK_ROOTFS")
            .env("FLICK_GITHUB_API", server.github_api_base())
            .env("FLICK_RELEASES_URL", server.release_download_base())
            .env("FLICK_CI_BUCKET", server.ci_bucket_base())
            .output()
            .unwrap()
    };
    let out = flick_run(&["run", "--no-network", "--", "echo", "hello"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    let tarball = format!("/{}/{}", release.tag, release.tarball_name());
    let fetched = server.requests().len();
    assert!(
        server.requests().iter().any(|r| r.path.ends_with(&tarball)),
        "the release was downloaded: {:?}",
        server.requests()
    );
    // The second run uses the verified cache: no artifact is downloaded again.
    let out = flick_run(&["run", "--no-network", "--", "echo", "again"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "again\n");
    let again: Vec<_> = server.requests()[fetched..]
        .iter()
        .filter(|r| {
            r.path.ends_with(".tgz") || r.path.contains("vmlinux") || r.path.contains(".squashfs")
        })
        .map(|r| r.path.clone())
        .collect();
    assert!(again.is_empty(), "artifacts downloaded twice: {again:?}");
    assert!(env.records().is_empty());
    assert!(env.links().is_empty());
}

/// A `docker save` tarball of a one-layer image whose command prints its env and workdir.
fn docker_save_tarball(dir: &std::path::Path) -> std::path::PathBuf {
    use sha2::{Digest, Sha256};
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    let body = b"inside the image\n";
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    layer.append_data(&mut h, "etc/motd", &body[..]).unwrap();
    let layer = layer.into_inner().unwrap();
    let layer_hex = hex::encode(Sha256::digest(&layer));
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": ["sh", "-c", "echo from-image $IMG_VAR $(pwd)"],
            "Env": ["IMG_VAR=set-by-image"],
            "WorkingDir": "/tmp",
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_hex}")] },
    }))
    .unwrap();
    let config_hex = hex::encode(Sha256::digest(&config));
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": ["demo:1"],
        "Layers": [format!("{layer_hex}/layer.tar")],
    }]))
    .unwrap();
    let mut out = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json".to_string(), manifest),
        (format!("{config_hex}.json"), config),
        (format!("{layer_hex}/layer.tar"), layer),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        out.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    let path = dir.join("demo.tar");
    std::fs::write(&path, out.into_inner().unwrap()).unwrap();
    path
}

#[test]
fn images_pull_list_run_rm_prune() {
    let env = Env::new();
    let tarball = docker_save_tarball(env.dir.path());
    let tar = tarball.to_str().unwrap();
    let pulled = env.json(&["images", "pull", tar]);
    assert!(
        pulled["digest"].as_str().unwrap().starts_with("sha256:"),
        "{pulled:#}"
    );
    let rootfs = std::path::PathBuf::from(pulled["rootfs"].as_str().unwrap());
    let listing = std::process::Command::new("unsquashfs")
        .args(["-l", rootfs.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("etc/motd"),
        "the image's files are in the root filesystem"
    );
    let table = env.ok(&["images", "ls"]);
    assert!(
        table.starts_with("REFERENCE") && table.contains("demo"),
        "{table}"
    );
    assert_eq!(env.json(&["images", "ls"]).as_array().unwrap().len(), 1);

    // The image's own command, environment and working directory by default.
    let out = env.run(&["run", "--no-network", "--image", tar]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from-image set-by-image /tmp\n"
    );
    // A command given on the line replaces it.
    let out = env.run(&["run", "--no-network", "--image", tar, "--", "echo", "mine"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "mine\n");

    let removed = env.json(&["images", "rm", pulled["reference"].as_str().unwrap()]);
    assert_eq!(removed["removed"].as_array().unwrap().len(), 1);
    let pruned = env.json(&["images", "prune"]);
    assert!(pruned["freed_bytes"].as_u64().unwrap() > 0, "{pruned:#}");
    assert!(!rootfs.exists());
    let out = env.run(&["--json", "images", "rm", "demo:1"]);
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"]["code"], "NOT_FOUND");
}

#[test]
fn published_ports_follow_their_vm() {
    let env = Env::new();
    let vm = env.json(&[
        "create",
        "--name",
        "web",
        "--publish",
        "8080:80",
        "--publish",
        "5353:53/udp",
    ]);
    let ip = vm["ip"].as_str().unwrap();
    let table = || {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &env.netns,
                "nft",
                "list",
                "table",
                "ip",
                "flick_publish",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rules = table();
    assert!(
        rules.contains(&format!("tcp dport 8080 dnat to {ip}:80")),
        "{rules}"
    );
    assert!(
        rules.contains(&format!("udp dport 5353 dnat to {ip}:53")),
        "{rules}"
    );
    // The same host port again is refused before anything is made.
    let out = env.run(&["--json", "create", "--name", "web2", "--publish", "8080:81"]);
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"]["code"], "ALREADY_EXISTS", "{err:#}");
    assert_eq!(env.records().len(), 1);
    let out = env.run(&["--json", "create", "--publish", "80", "--name", "bad"]);
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"]["code"], "INVALID_ARGUMENT");
    // Clones of a publishing VM do not take its host ports.
    env.ok(&["snapshot", "create", "web", "--name", "websnap"]);
    env.ok(&["snapshot", "restore", "websnap", "--name", "webclone"]);
    assert_eq!(
        table().matches("dnat to").count(),
        4,
        "two ports × prerouting and output"
    );
    env.ok(&["rm", "-f", "web", "webclone"]);
    assert!(
        table().is_empty(),
        "the table goes with the last published port"
    );
    assert!(env.nft().trim().is_empty(), "{}", env.nft());
}

#[test]
fn allow_domain_runs_a_resolver_for_the_vm_and_rm_stops_it() {
    let env = Env::new();
    let vm = env.json(&[
        "create",
        "--name",
        "fenced",
        "--allow-domain",
        "example.com",
        "--allow-domain",
        "*.pypi.org",
    ]);
    let record = env.json(&["inspect", "fenced"]);
    let net = &record["network"];
    assert_eq!(
        net["policy"]["allow_domains"],
        json!(["example.com", "*.pypi.org"])
    );
    let pid = net["resolver"]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("a resolver is recorded: {net:#}"));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the resolver runs"
    );
    // The guest is told to use it (the kernel's `ip=` dns0 field).
    let boot_args = record["config"]["boot_source"]["boot_args"]
        .as_str()
        .unwrap();
    let gateway = net["interfaces"][0]["lease"]["gateway"].as_str().unwrap();
    assert!(boot_args.contains(&format!(":{gateway}")), "{boot_args}");
    assert!(
        env.nft().contains("d_"),
        "the VM's address set exists:\n{}",
        env.nft()
    );
    assert_eq!(vm["state"], "running");
    env.ok(&["rm", "-f", "fenced"]);
    for _ in 0..100 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "the resolver stopped: {stat}"
    );
    assert!(env.nft().trim().is_empty());
    assert!(env.links().is_empty());
}
