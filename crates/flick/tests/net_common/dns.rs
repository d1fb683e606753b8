//! DNS support for the networking tests: a real `dnsmasq` in the internet namespace and a
//! small stub client (hickory-proto messages over real UDP/TCP sockets).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::{Netns, PROBE_TIMEOUT};

/// A `dnsmasq` serving fixed host records, killed on drop.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Child,
}

impl Dnsmasq {
    /// Starts dnsmasq in `ns` on `listen:53` with `records` (name, address) and `ttl`, and waits
    /// until it answers.
    pub fn start(ns: &Netns, listen: Ipv4Addr, records: &[(&str, Ipv4Addr)], ttl: u32) -> Self {
        Self::start_with(ns, listen, records, ttl, &[])
    }

    /// Like [`Dnsmasq::start`], with extra dnsmasq arguments (`--cname=…`).
    pub fn start_with(
        ns: &Netns,
        listen: Ipv4Addr,
        records: &[(&str, Ipv4Addr)],
        ttl: u32,
        extra: &[String],
    ) -> Self {
        assert!(
            Command::new("dnsmasq")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "this test needs `dnsmasq` (Debian package dnsmasq)"
        );
        let mut args: Vec<String> = [
            "netns",
            "exec",
            ns.name.as_str(),
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--pid-file",
            "--port=53",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push(format!("--listen-address={listen}"));
        args.push(format!("--local-ttl={ttl}"));
        for (name, ip) in records {
            args.push(format!("--host-record={name},{ip}"));
        }
        args.extend(extra.iter().cloned());
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq");
        let me = Self { child };
        let name = records[0].0.to_owned();
        let ok = ns.run(|| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if query(listen, &name, RecordType::A, false).is_some() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        });
        assert!(ok, "dnsmasq did not start answering");
        me
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer: its response code and the A addresses in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub code: ResponseCode,
    pub addrs: Vec<Ipv4Addr>,
    pub ttls: Vec<u32>,
    pub answers: usize,
    pub truncated: bool,
    pub cnames: usize,
}

fn build(name: &str, qtype: RecordType) -> (u16, Vec<u8>) {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    (m.metadata.id, m.to_vec().expect("encode"))
}

fn parse(id: u16, bytes: &[u8]) -> Option<Answer> {
    let m = Message::from_vec(bytes).ok()?;
    if m.metadata.id != id {
        return None;
    }
    let mut addrs = Vec::new();
    let mut ttls = Vec::new();
    let mut cnames = 0;
    for r in &m.answers {
        match &r.data {
            RData::A(a) => {
                addrs.push(a.0);
                ttls.push(r.ttl);
            }
            RData::CNAME(_) => cnames += 1,
            _ => {}
        }
    }
    Some(Answer {
        code: m.metadata.response_code,
        addrs,
        ttls,
        answers: m.answers.len(),
        truncated: m.metadata.truncation,
        cnames,
    })
}

/// Sends one query to `server:53` (UDP or TCP); `None` when nothing answers in time.
pub fn query(server: Ipv4Addr, name: &str, qtype: RecordType, tcp: bool) -> Option<Answer> {
    query_port(SocketAddrV4::new(server, 53), name, qtype, tcp)
}

/// Like [`query`], to any port.
pub fn query_port(
    server: SocketAddrV4,
    name: &str,
    qtype: RecordType,
    tcp: bool,
) -> Option<Answer> {
    let (id, q) = build(name, qtype);
    if tcp {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(server), PROBE_TIMEOUT).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(1500))).ok()?;
        let mut framed = u16::try_from(q.len()).ok()?.to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).ok()?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).ok()?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).ok()?;
        parse(id, &buf)
    } else {
        let s = UdpSocket::bind("0.0.0.0:0").ok()?;
        s.set_read_timeout(Some(Duration::from_millis(1500))).ok()?;
        s.send_to(&q, server).ok()?;
        let mut buf = [0u8; 4096];
        let (n, _) = s.recv_from(&mut buf).ok()?;
        parse(id, &buf[..n])
    }
}
