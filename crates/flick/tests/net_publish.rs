//! Published ports with real traffic: a "guest" network namespace serves TCP, a "client"
//! namespace connects to the "host" namespace's address and port, and the `flick_publish` table
//! (applied with `nft` inside the host namespace) forwards it. Needs root.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use flick::net::publish::{PUBLISH_TABLE, PortForward, PortProtocol, Publish, batch};

struct Namespaces {
    names: [String; 3],
    server: std::process::Child,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Namespaces {
    fn new() -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "published-port tests need root (network namespaces, nftables)"
        );
        let id = std::process::id();
        let names = [
            format!("pubh{id}"),
            format!("pubg{id}"),
            format!("pubc{id}"),
        ];
        let [h, g, c] = &names;
        for n in &names {
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        for (peer, host_if, host_ip, peer_ip) in [
            (g, "vg0", "10.9.0.1", "10.9.0.2"),
            (c, "vc0", "10.8.0.1", "10.8.0.2"),
        ] {
            sh(&[
                "ip", "-n", h, "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                "netns", peer,
            ]);
            sh(&[
                "ip",
                "-n",
                h,
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                host_if,
            ]);
            sh(&["ip", "-n", h, "link", "set", host_if, "up"]);
            sh(&[
                "ip",
                "-n",
                peer,
                "addr",
                "add",
                &format!("{peer_ip}/24"),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", peer, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", peer, "route", "add", "default", "via", host_ip]);
        }
        sh(&[
            "ip",
            "netns",
            "exec",
            h,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                g,
                "socat",
                "TCP-LISTEN:80,fork,reuseaddr",
                "SYSTEM:echo from-guest",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is installed");
        std::thread::sleep(Duration::from_millis(300));
        Self { names, server }
    }

    fn nft(&self, batch: &serde_json::Value) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.names[0], "nft", "-j", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(batch.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Connects from namespace `ns` to `addr`, returning what the server said.
    fn connect(&self, ns: &str, addr: &str) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "socat",
                "-T2",
                "-",
                &format!("TCP:{addr},connect-timeout=2"),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn tables(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.names[0], "nft", "list", "tables"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

#[test]
fn a_published_port_reaches_the_guest_and_goes_away_with_its_rules() {
    let ns = Namespaces::new();
    let [h, _, c] = &ns.names;
    assert_eq!(
        ns.connect(c, "10.8.0.1:8080"),
        "",
        "nothing answers before publishing"
    );
    let forward = PortForward {
        vm_id: "vm-a".into(),
        publish: Publish::parse("8080:80").unwrap(),
        guest_ip: Ipv4Addr::new(10, 9, 0, 2),
    };
    assert_eq!(forward.publish.protocol, PortProtocol::Tcp);
    ns.nft(&batch(std::slice::from_ref(&forward)));
    assert_eq!(
        ns.connect(c, "10.8.0.1:8080"),
        "from-guest\n",
        "from another host"
    );
    assert_eq!(
        ns.connect(h, "10.8.0.1:8080"),
        "from-guest\n",
        "from the host itself"
    );
    assert_eq!(
        ns.connect(c, "10.8.0.1:8081"),
        "",
        "other ports are not forwarded"
    );
    // Applying the same list again is idempotent; an empty list removes the table.
    ns.nft(&batch(std::slice::from_ref(&forward)));
    assert_eq!(ns.connect(c, "10.8.0.1:8080"), "from-guest\n");
    ns.nft(&batch(&[]));
    assert!(!ns.tables().contains(PUBLISH_TABLE), "{}", ns.tables());
    assert_eq!(ns.connect(c, "10.8.0.1:8080"), "");
    // Removing an absent table is fine too.
    ns.nft(&batch(&[]));
}
