//! DNS answer latency through flick's per-VM resolver versus straight to the upstream, side by
//! side in one run, inside throwaway network namespaces (needs root and dnsmasq).
//!
//! Topology (the same as the `net_dns` tests): a real `dnsmasq` in an "internet" namespace, a
//! host namespace running flick (bridge, nftables table, `flick-dns` helper), and two guest
//! namespaces behind the bridge:
//!
//! - guest A has a domain policy: its queries go to its gateway, are redirected to its resolver,
//!   checked against the allowlist, forwarded to dnsmasq, and every answer's address is put into
//!   the VM's nftables set (acknowledged by the kernel) before the answer is sent;
//! - guest B has no policy: it asks dnsmasq directly, through the same bridge, forward hook and
//!   NAT.
//!
//! Both send the same `A` query for an allowed name from one UDP socket, one query at a time,
//! in interleaved rounds. Reported: p50, p99 and mean per path, and the difference.
//!
//! Run: `cargo bench -p flick --bench dns_resolver` (as root).

#[path = "../tests/net_common/mod.rs"]
mod net_common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use flick::net::dns::TtlLimits;
use flick::net::{EgressPolicy, HostNetwork, Netlink, NetworkConfig, VmRequest};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use net_common::dns::Dnsmasq;
use net_common::{FAR_A, INTERNET, Netns, Topology, configure_guest};

const ROUNDS: usize = 10;
const PER_ROUND: usize = 300;
const NAME: &str = "api.example.com";

fn measure(g: &Netns, server: Ipv4Addr, n: usize) -> Vec<Duration> {
    g.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.connect(SocketAddrV4::new(server, 53)).expect("connect");
        let mut out = Vec::with_capacity(n);
        let mut buf = [0u8; 1500];
        for _ in 0..n {
            let mut m = Message::query();
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(Name::from_ascii(NAME).unwrap(), RecordType::A));
            let q = m.to_vec().unwrap();
            let t = Instant::now();
            s.send(&q).expect("send");
            let len = s.recv(&mut buf).expect("answer within 2 s");
            out.push(t.elapsed());
            let a = Message::from_vec(&buf[..len]).expect("parse");
            assert_eq!(a.metadata.id, m.metadata.id);
            assert_eq!(a.answers.len(), 1, "one A record");
        }
        out
    })
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

fn summary(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let mean = v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64 * 1e6;
    (pct(&v, 0.5), pct(&v, 0.99), mean)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let lab = Topology::build(&[]);
    let _dns = Dnsmasq::start(&lab.internet, INTERNET, &[(NAME, FAR_A)], 300);
    let (ga, deva) = lab.guest();
    let (gb, devb) = lab.guest();
    lab.host.block_on(|| async {
        let cfg = NetworkConfig {
            dns_upstreams: vec![INTERNET.to_string()],
            dns_ttl: TtlLimits::default(),
            dns_helper: Some(env!("CARGO_BIN_EXE_flick-dns").into()),
            ..NetworkConfig::default()
        };
        let mut net = HostNetwork::setup(Netlink::connect().unwrap(), cfg)
            .await
            .unwrap();
        let a = net
            .add_vm(VmRequest {
                vm_id: "bench-a".into(),
                host_device: Some(deva.clone()),
                policy: Some(
                    EgressPolicy::from_json(r#"{"allow_domains":["api.example.com"]}"#).unwrap(),
                ),
                ..VmRequest::default()
            })
            .await
            .unwrap();
        let b = net
            .add_vm(VmRequest {
                vm_id: "bench-b".into(),
                host_device: Some(devb.clone()),
                ..VmRequest::default()
            })
            .await
            .unwrap();
        configure_guest(&ga, &a.lease);
        configure_guest(&gb, &b.lease);
        let flick_server = a.dns_server.expect("DNS server");
        // Warm up both paths (ARP, conntrack, the resolver's first set update).
        measure(&ga, flick_server, 50);
        measure(&gb, INTERNET, 50);
        let mut via_flick = Vec::new();
        let mut direct = Vec::new();
        for round in 0..ROUNDS {
            if round % 2 == 0 {
                via_flick.extend(measure(&ga, flick_server, PER_ROUND));
                direct.extend(measure(&gb, INTERNET, PER_ROUND));
            } else {
                direct.extend(measure(&gb, INTERNET, PER_ROUND));
                via_flick.extend(measure(&ga, flick_server, PER_ROUND));
            }
        }
        let f = summary(via_flick);
        let d = summary(direct);
        println!(
            "DNS A query, {} per path, {ROUNDS} interleaved rounds",
            ROUNDS * PER_ROUND
        );
        println!("| path | p50 µs | p99 µs | mean µs |");
        println!("|---|---:|---:|---:|");
        println!(
            "| through flick's resolver (allowlist + set update) | {:.0} | {:.0} | {:.0} |",
            f.0, f.1, f.2
        );
        println!(
            "| direct to dnsmasq | {:.0} | {:.0} | {:.0} |",
            d.0, d.1, d.2
        );
        println!(
            "| difference | **{:+.0}** | {:+.0} | {:+.0} |",
            f.0 - d.0,
            f.1 - d.1,
            f.2 - d.2
        );
        net.teardown().await.unwrap();
    });
    lab.host.ip(&format!("link del {deva}"));
    lab.host.ip(&format!("link del {devb}"));
}
