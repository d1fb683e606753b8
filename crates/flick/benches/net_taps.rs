//! TAP churn and large egress policies, inside a throwaway network namespace (needs root).
//!
//! 1. Create + attach + delete 200 persistent TAPs through flick (TUN ioctls + netlink) versus
//!    the same done with `ip tuntap` / `ip link` commands (one process per command, as shell
//!    tooling does it) and with one `ip -batch` process.
//! 2. The full `add_vm`/`remove_vm` path (TAP + attach + the VM's nftables chain) for 200 VMs.
//! 3. Apply a 1000-rule egress policy: time, and proof that it is one transaction: an observer
//!    listing the chain continuously while big and small policies alternate only ever sees a
//!    complete old or complete new policy, never part of one.
//!
//! Run: `cargo bench -p flick --bench net_taps` (as root).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flick::net::kernel::NetKernel;
use flick::net::{
    EgressPolicy, EgressRule, HostNetwork, Netlink, NetworkConfig, Ports, Protocol, VmRequest,
};

const TAPS: usize = 200;
const RULES: usize = 1000;
const ROUNDS: usize = 3;

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    assert!(
        rustix::process::geteuid().is_root(),
        "this benchmark needs root: it creates a network namespace, TAPs and an nftables table"
    );
    let ns = Ns(format!("flbench{}", std::process::id()));
    let out = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .output()
        .expect("ip netns add");
    assert!(out.status.success(), "ip netns add failed");
    let name = ns.0.clone();
    std::thread::spawn(move || run(&name))
        .join()
        .expect("benchmark thread");
}

fn run(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&f),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .expect("setns");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut k = Netlink::connect().unwrap();
        let br = k.create_bridge("flbr0").await.unwrap();
        k.set_up(br).await.unwrap();
        let names: Vec<String> = (0..TAPS).map(|i| format!("fltap{i}")).collect();

        let mut flick_t = Vec::new();
        let mut ip_t = Vec::new();
        let mut batch_t = Vec::new();
        for _ in 0..ROUNDS {
            let start = Instant::now();
            let mut idx = Vec::with_capacity(TAPS);
            for n in &names {
                let i = k.create_tap(n, Some(1000), None).await.unwrap();
                k.set_controller(i, Some(br)).await.unwrap();
                k.set_up(i).await.unwrap();
                idx.push(i);
            }
            for i in idx {
                k.delete_link(i).await.unwrap();
            }
            flick_t.push(start.elapsed());

            let start = Instant::now();
            for n in &names {
                ip(
                    ns,
                    &["tuntap", "add", "dev", n, "mode", "tap", "user", "1000"],
                );
                ip(ns, &["link", "set", n, "master", "flbr0", "up"]);
            }
            for n in &names {
                ip(ns, &["link", "del", n]);
            }
            ip_t.push(start.elapsed());

            let mut script = String::new();
            for n in &names {
                script.push_str(&format!("tuntap add dev {n} mode tap user 1000\n"));
                script.push_str(&format!("link set {n} master flbr0 up\n"));
            }
            for n in &names {
                script.push_str(&format!("link del {n}\n"));
            }
            let start = Instant::now();
            let mut child = Command::new("ip")
                .args(["-n", ns, "-batch", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success());
            batch_t.push(start.elapsed());
        }
        k.delete_link(br).await.unwrap();

        // Full VM path: TAP + attach + per-VM nftables chain, then removal.
        let mut vm_t = Vec::new();
        let mut net = HostNetwork::setup(
            Netlink::connect().unwrap(),
            NetworkConfig {
                subnet: "10.100.0.0/16".into(),
                uplink: Some("lo".into()),
                ..NetworkConfig::default()
            },
        )
        .await
        .unwrap();
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for i in 0..TAPS {
                net.add_vm(VmRequest {
                    vm_id: format!("bench-{i}"),
                    ..VmRequest::default()
                })
                .await
                .unwrap();
            }
            for i in 0..TAPS {
                net.remove_vm(&format!("bench-{i}")).await.unwrap();
            }
            vm_t.push(start.elapsed());
        }

        // 1000-rule policy in one transaction, watched by a concurrent observer.
        let policy = EgressPolicy {
            rules: (0..RULES)
                .map(|i| EgressRule {
                    action: if i % 2 == 0 {
                        flick::net::Action::Allow
                    } else {
                        flick::net::Action::Deny
                    },
                    to: Some(format!("10.{}.{}.0/24", i / 250, i % 250)),
                    protocol: Protocol::Tcp,
                    ports: Some(Ports::List(vec![80, 443, 1000 + i as i64])),
                    comment: Some(format!("rule {i}")),
                })
                .collect(),
            default_action: Some(flick::net::Action::Deny),
            ..EgressPolicy::default()
        };
        let small = EgressPolicy {
            rules: policy.rules[..1].to_vec(),
            default_action: None,
            ..EgressPolicy::default()
        };
        // An observer lists the chain continuously: it must only ever see the old or the new
        // rule count, never a partly applied policy.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let ns_name = ns.to_owned();
        let observer = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::<usize, usize>::new();
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let out = Command::new("ip")
                    .args([
                        "netns", "exec", &ns_name, "nft", "-a", "list", "chain", "inet", "flick",
                        "egress",
                    ])
                    .output()
                    .unwrap();
                if out.status.success() {
                    let n = String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter(|l| l.contains("# handle") && !l.contains("chain "))
                        .count();
                    *seen.entry(n).or_default() += 1;
                }
            }
            seen
        });
        std::thread::sleep(Duration::from_millis(300));
        let mut policy_t = Vec::new();
        for _ in 0..ROUNDS {
            let start = Instant::now();
            net.set_host_policy(policy.clone()).await.unwrap();
            policy_t.push(start.elapsed());
            std::thread::sleep(Duration::from_millis(100));
            net.set_host_policy(small.clone()).await.unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = observer.join().unwrap();
        net.teardown().await.unwrap();

        let f = median(flick_t);
        let i = median(ip_t);
        let b = median(batch_t);
        let v = median(vm_t);
        let p = median(policy_t);
        println!(
            "TAP churn: {TAPS} x (create + attach + up) then {TAPS} x delete, median of {ROUNDS}"
        );
        println!(
            "  flick (ioctl + netlink)       {:>9.1} ms",
            f.as_secs_f64() * 1e3
        );
        println!(
            "  ip tuntap/ip link (3 procs)   {:>9.1} ms   ratio {:.1}x",
            i.as_secs_f64() * 1e3,
            i.as_secs_f64() / f.as_secs_f64()
        );
        println!(
            "  ip -batch (1 proc)            {:>9.1} ms   ratio {:.1}x",
            b.as_secs_f64() * 1e3,
            b.as_secs_f64() / f.as_secs_f64()
        );
        println!(
            "  flick add_vm+remove_vm (+nft) {:>9.1} ms   ({:.2} ms per VM)",
            v.as_secs_f64() * 1e3,
            v.as_secs_f64() * 1e3 / TAPS as f64
        );
        println!("Egress policy: {RULES} rules, median of {ROUNDS}");
        println!(
            "  set_host_policy               {:>9.1} ms",
            p.as_secs_f64() * 1e3
        );
        println!(
            "  {} applies (big and small alternating), each one `nft -j -f -` batch",
            2 * ROUNDS
        );
        println!("  observer: rule counts seen in chain egress (count: times) {seen:?}");
        // two fixed rules (per-VM dispatch, default) around the policy's own
        let allowed = [2, small.rules.len() + 2, RULES + 2];
        assert!(
            seen.keys().all(|n| allowed.contains(n)),
            "a partly applied policy was visible: {seen:?}"
        );
        assert!(
            seen.contains_key(&allowed[2]),
            "the observer saw the big policy"
        );
    });
}
