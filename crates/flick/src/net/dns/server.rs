//! The resolver itself: the engine that answers one query, and the `flick-dns` helper's
//! main loop around it (UDP and TCP listeners, the control socket, expiry bookkeeping).
//!
//! Answer path for an allowed `A` query: forward the client's bytes (with a fresh random ID,
//! from a fresh socket with a random source port) to the first upstream that answers, check the
//! answer's ID and question, keep its `A`/`CNAME`/other answer records (never `AAAA`) and an
//! `SOA` authority record, clamp TTLs, add every `A` address to the VM's set and wait for the
//! kernel's acknowledgement, then reply. A failed set update is `SERVFAIL`: the guest never
//! gets an address it could not connect to.
//!
//! The name-checking proxy (policies with `inspect_names`): nftables redirects the VM's new TCP
//! connections to resolved addresses on ports 80 and 443 here. The proxy reads the original
//! destination (`SO_ORIGINAL_DST`), then the first bytes: the TLS ClientHello's SNI (443) or
//! the HTTP request's `Host` (80). Only when that name is allowed *and* is one of the names the
//! resolver handed out that very address for does it connect to the destination, replay the
//! bytes and relay both ways; otherwise it closes the connection.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::nfset::NfSet;
use super::{Control, ResolverPolicy, ResolverSpec, TtlLimits};
use crate::net::firewall::DnsRefusal;

/// How long one upstream gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an idle TCP client connection is kept.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The EDNS payload size the resolver advertises.
const EDNS_PAYLOAD: u16 = 1232;
/// Queries answered at once; more are dropped (the guest retries), so a flooding guest cannot
/// make the helper grow without bound.
const MAX_INFLIGHT: usize = 256;
/// Open TCP client connections (DNS) and proxied connections, each.
const MAX_CONNECTIONS: usize = 128;

#[derive(Debug)]
struct Entry {
    expires: Instant,
    names: BTreeSet<String>,
}

#[derive(Debug)]
struct Shared {
    policy: ResolverPolicy,
    entries: HashMap<Ipv4Addr, Entry>,
    set: Option<NfSet>,
}

/// Answers queries for one VM and keeps its nftables set in step.
#[derive(Debug)]
pub(crate) struct Engine {
    shared: Mutex<Shared>,
    upstreams: Vec<SocketAddrV4>,
    ttl: TtlLimits,
}

fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: `b` is writable for 2 bytes; getrandom(2) writes at most that many.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    if n != 2 {
        // Fall back to the clock's low bits; only reached if getrandom is unavailable.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        return (t ^ (t >> 16)) as u16;
    }
    u16::from_ne_bytes(b)
}

impl Engine {
    /// An engine that fills `set` (`None`: answer only, touch no set).
    #[must_use]
    pub(crate) fn new(
        policy: ResolverPolicy,
        upstreams: Vec<SocketAddrV4>,
        ttl: TtlLimits,
        set: Option<NfSet>,
    ) -> Self {
        Self {
            shared: Mutex::new(Shared {
                policy,
                entries: HashMap::new(),
                set,
            }),
            upstreams,
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the policy and removes set entries that no allowed name accounts for.
    pub(crate) fn update(&self, policy: ResolverPolicy) -> std::io::Result<()> {
        let mut sh = self.lock();
        sh.policy = policy;
        let Shared {
            policy,
            entries,
            set,
            ..
        } = &mut *sh;
        let mut gone = Vec::new();
        for (addr, e) in entries.iter_mut() {
            e.names.retain(|n| policy.allows(n));
            if e.names.is_empty() {
                gone.push(*addr);
            }
        }
        let mut first = None;
        for a in gone {
            entries.remove(&a);
            if let Some(s) = set.as_mut()
                && let Err(e) = s.remove(a)
            {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Re-adds every live entry with its remaining lifetime.
    pub(crate) fn resync(&self) -> std::io::Result<()> {
        let mut sh = self.lock();
        let now = Instant::now();
        sh.entries.retain(|_, e| e.expires > now);
        let live: Vec<(Ipv4Addr, Duration)> = sh
            .entries
            .iter()
            .map(|(a, e)| (*a, e.expires - now))
            .collect();
        if let Some(s) = sh.set.as_mut() {
            for (a, left) in live {
                s.add(&[a], left)?;
            }
        }
        Ok(())
    }

    /// Forgets entries whose set element has expired (the kernel removed them already).
    pub(crate) fn expire(&self) {
        let now = Instant::now();
        self.lock().entries.retain(|_, e| e.expires > now);
    }

    /// Answers one query from `src`; `None` means "send nothing" (not a query at all).
    pub(crate) async fn answer(&self, query: &[u8], src: Ipv4Addr, tcp: bool) -> Option<Vec<u8>> {
        let Ok(req) = Message::from_vec(query) else {
            // Unparseable: FORMERR with the client's ID if there is a header at all.
            if query.len() >= 12 && query[2] & 0x80 == 0 {
                let id = u16::from_be_bytes([query[0], query[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
            return None;
        };
        if req.metadata.message_type != MessageType::Query {
            return None;
        }
        let reply = |code: ResponseCode| -> Option<Vec<u8>> {
            let mut m = Message::error_msg(req.metadata.id, req.metadata.op_code, code);
            m.queries.clone_from(&req.queries);
            m.metadata.recursion_desired = req.metadata.recursion_desired;
            m.metadata.recursion_available = true;
            if req.edns.is_some() {
                m.edns = Some(edns());
            }
            m.to_vec().ok()
        };
        if req.metadata.op_code != OpCode::Query {
            return reply(ResponseCode::NotImp);
        }
        if req.queries.len() != 1 {
            return reply(ResponseCode::FormErr);
        }
        let q = &req.queries[0];
        let qname = q.name().to_ascii().to_ascii_lowercase();
        let qname = qname.trim_end_matches('.').to_owned();
        let (client_ok, allowed, refusal) = {
            let sh = self.lock();
            (
                sh.policy.clients.contains(&src),
                sh.policy.allows(&qname),
                sh.policy.refusal,
            )
        };
        if !client_ok {
            return reply(ResponseCode::Refused);
        }
        if q.query_class() != DNSClass::IN
            || !allowed
            || matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR)
        {
            return reply(match refusal {
                DnsRefusal::Refused => ResponseCode::Refused,
                DnsRefusal::Nxdomain if allowed => ResponseCode::Refused,
                DnsRefusal::Nxdomain => ResponseCode::NXDomain,
            });
        }
        if q.query_type() == RecordType::AAAA {
            // Egress is IPv4 only: an empty answer makes clients use A.
            return reply(ResponseCode::NoError);
        }
        let Ok(up) = self.forward(query, tcp).await else {
            return reply(ResponseCode::ServFail);
        };
        let Ok(resp) = Message::from_vec(&up) else {
            return reply(ResponseCode::ServFail);
        };
        if resp.metadata.message_type != MessageType::Response || resp.queries != req.queries {
            return reply(ResponseCode::ServFail);
        }
        let mut out = Message::response(req.metadata.id, OpCode::Query);
        out.metadata.response_code = resp.metadata.response_code;
        out.metadata.recursion_desired = req.metadata.recursion_desired;
        out.metadata.recursion_available = true;
        out.queries.clone_from(&req.queries);
        if req.edns.is_some() {
            out.edns = Some(edns());
        }
        let mut addrs = Vec::new();
        let mut longest = 0;
        for mut r in resp.answers {
            match &r.data {
                RData::AAAA(_) => continue,
                RData::A(a) if !self.address_allowed(a.0) => continue,
                RData::A(a) => {
                    addrs.push(a.0);
                    r.ttl = self.ttl.clamp(r.ttl);
                    longest = longest.max(r.ttl);
                }
                _ => r.ttl = self.ttl.clamp(r.ttl),
            }
            out.answers.push(r);
        }
        for r in resp.authorities {
            if r.record_type() == RecordType::SOA {
                out.authorities.push(r);
            }
        }
        if !addrs.is_empty() {
            addrs.sort();
            addrs.dedup();
            let life = Duration::from_secs(u64::from(longest) + u64::from(self.ttl.grace));
            let mut sh = self.lock();
            if let Some(s) = sh.set.as_mut()
                && s.add(&addrs, life).is_err()
            {
                drop(sh);
                return reply(ResponseCode::ServFail);
            }
            let expires = Instant::now() + life;
            for a in addrs {
                let e = sh.entries.entry(a).or_insert_with(|| Entry {
                    expires,
                    names: BTreeSet::new(),
                });
                e.expires = e.expires.max(expires);
                e.names.insert(qname.clone());
            }
        }
        let bytes = out.to_vec().ok()?;
        let limit = usize::from(req.max_payload().max(512));
        if !tcp && bytes.len() > limit {
            return out.truncate().to_vec().ok();
        }
        Some(bytes)
    }

    fn address_allowed(&self, ip: Ipv4Addr) -> bool {
        let sh = self.lock();
        super::answer_address_allowed(ip, sh.policy.allow_private, &sh.policy.never)
    }

    /// Whether a connection from `src` to `addr` claiming `name` may pass the proxy: the name is
    /// allowed and the resolver handed `addr` out for it (and the entry is live).
    #[must_use]
    pub(crate) fn name_resolved_to(&self, src: Ipv4Addr, addr: Ipv4Addr, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let sh = self.lock();
        sh.policy.inspect_names
            && sh.policy.clients.contains(&src)
            && sh.policy.allows(&name)
            && sh
                .entries
                .get(&addr)
                .is_some_and(|e| e.expires > Instant::now() && e.names.contains(&name))
    }

    async fn forward(&self, query: &[u8], tcp: bool) -> std::io::Result<Vec<u8>> {
        let mut q = query.to_vec();
        let id = random_u16();
        q[..2].copy_from_slice(&id.to_be_bytes());
        let mut last = std::io::Error::other("no upstream resolver");
        for up in &self.upstreams {
            let r = if tcp {
                tokio::time::timeout(UPSTREAM_TIMEOUT, tcp_exchange(*up, &q)).await
            } else {
                tokio::time::timeout(UPSTREAM_TIMEOUT, udp_exchange(*up, &q, id)).await
            };
            match r {
                Ok(Ok(a)) if a.len() >= 12 && a[..2] == id.to_be_bytes() => {
                    if !tcp && a[2] & 0x02 != 0 {
                        // Truncated over UDP: ask the same upstream over TCP.
                        if let Ok(Ok(t)) =
                            tokio::time::timeout(UPSTREAM_TIMEOUT, tcp_exchange(*up, &q)).await
                            && t.len() >= 12
                            && t[..2] == id.to_be_bytes()
                        {
                            return Ok(t);
                        }
                    }
                    return Ok(a);
                }
                Ok(Ok(_)) => last = std::io::Error::other("mismatched answer"),
                Ok(Err(e)) => last = e,
                Err(_) => last = std::io::Error::other("upstream timed out"),
            }
        }
        Err(last)
    }
}

/// What the first bytes of a connection say about the host it wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Not enough bytes yet.
    More,
    /// The claimed host name.
    Name(String),
    /// Not TLS with SNI / not HTTP with `Host`.
    Unusable,
}

/// The largest head the proxy reads before deciding.
pub const MAX_HEAD: usize = 16 * 1024;

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
    ])))
}

/// The SNI host name of a TLS ClientHello (in the first record).
#[must_use]
pub fn tls_sni(buf: &[u8]) -> Claim {
    if buf.len() < 5 {
        return if buf.first().is_none_or(|b| *b == 0x16) {
            Claim::More
        } else {
            Claim::Unusable
        };
    }
    if buf[0] != 0x16 {
        return Claim::Unusable;
    }
    let Some(rec_len) = be16(buf, 3) else {
        return Claim::More;
    };
    if buf.len() < 5 + rec_len {
        return if 5 + rec_len > MAX_HEAD {
            Claim::Unusable
        } else {
            Claim::More
        };
    }
    parse_client_hello(&buf[5..5 + rec_len]).map_or(Claim::Unusable, Claim::Name)
}

fn parse_client_hello(h: &[u8]) -> Option<String> {
    if *h.first()? != 0x01 {
        return None;
    }
    // type(1) length(3) version(2) random(32)
    let mut at = 4 + 2 + 32;
    at += 1 + usize::from(*h.get(at)?); // session id
    at += 2 + be16(h, at)?; // cipher suites
    at += 1 + usize::from(*h.get(at)?); // compression methods
    let ext_end = at + 2 + be16(h, at)?;
    at += 2;
    if ext_end > h.len() {
        return None;
    }
    while at + 4 <= ext_end {
        let kind = be16(h, at)?;
        let len = be16(h, at + 2)?;
        let data = h.get(at + 4..at + 4 + len)?;
        if kind == 0 {
            // server_name: list length(2), then entries of type(1) length(2) name
            let mut p = 2;
            while p + 3 <= data.len() {
                let nlen = be16(data, p + 1)?;
                let name = data.get(p + 3..p + 3 + nlen)?;
                if data[p] == 0 {
                    let n = std::str::from_utf8(name).ok()?;
                    return (!n.is_empty() && n.is_ascii()).then(|| n.to_ascii_lowercase());
                }
                p += 3 + nlen;
            }
            return None;
        }
        at += 4 + len;
    }
    None
}

/// The `Host` of an HTTP/1.x request head (port stripped).
#[must_use]
pub fn http_host(buf: &[u8]) -> Claim {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_HEAD {
            Claim::Unusable
        } else {
            Claim::More
        };
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Claim::Unusable;
    };
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or("");
    if !request.ends_with("HTTP/1.1") && !request.ends_with("HTTP/1.0") {
        return Claim::Unusable;
    }
    let mut found = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':')
            && k.trim().eq_ignore_ascii_case("host")
        {
            if found.is_some() {
                return Claim::Unusable; // two Host headers: ambiguous
            }
            found = Some(v.trim().to_owned());
        }
    }
    let Some(host) = found else {
        return Claim::Unusable;
    };
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_owned(),
        _ => host,
    };
    if name.is_empty() || !name.is_ascii() {
        return Claim::Unusable;
    }
    Claim::Name(name.to_ascii_lowercase())
}

fn original_dst(s: &tokio::net::TcpStream) -> std::io::Result<SocketAddrV4> {
    use std::os::fd::AsRawFd;
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for writes of the given size during the call.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

async fn proxy_one(engine: Arc<Engine>, mut conn: tokio::net::TcpStream, peer: SocketAddr) {
    let src = src_v4(peer);
    let Ok(dst) = original_dst(&conn) else {
        return;
    };
    let mut head = Vec::with_capacity(2048);
    let claim = tokio::time::timeout(Duration::from_secs(5), async {
        let mut b = [0u8; 4096];
        loop {
            let c = match dst.port() {
                443 => tls_sni(&head),
                80 => http_host(&head),
                _ => Claim::Unusable,
            };
            if c != Claim::More {
                return c;
            }
            match conn.read(&mut b).await {
                Ok(0) | Err(_) => return Claim::Unusable,
                Ok(n) => head.extend_from_slice(&b[..n]),
            }
        }
    })
    .await
    .unwrap_or(Claim::Unusable);
    let Claim::Name(name) = claim else {
        return;
    };
    if !engine.name_resolved_to(src, *dst.ip(), &name) {
        return;
    }
    let Ok(Ok(mut up)) =
        tokio::time::timeout(UPSTREAM_TIMEOUT, tokio::net::TcpStream::connect(dst)).await
    else {
        return;
    };
    if up.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
}

async fn proxy_loop(engine: Arc<Engine>, listener: tokio::net::TcpListener) {
    let conns = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((conn, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            continue;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let _permit = permit;
            proxy_one(engine, conn, peer).await;
        });
    }
}

fn edns() -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(EDNS_PAYLOAD);
    e
}

async fn udp_exchange(up: SocketAddrV4, q: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
    let s = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    s.connect(up).await?;
    s.send(q).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = s.recv(&mut buf).await?;
        if n >= 12 && buf[..2] == id.to_be_bytes() {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_exchange(up: SocketAddrV4, q: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(up).await?;
    let len = u16::try_from(q.len()).map_err(|_| std::io::Error::other("query too long"))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    s.write_all(&framed).await?;
    let n = s.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

fn src_v4(a: SocketAddr) -> Ipv4Addr {
    match a {
        SocketAddr::V4(v) => *v.ip(),
        SocketAddr::V6(v) => v.ip().to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

/// Serves UDP and TCP queries on the given sockets until the process ends.
pub(crate) async fn serve(
    engine: Arc<Engine>,
    udp: Arc<tokio::net::UdpSocket>,
    tcp: tokio::net::TcpListener,
) {
    let e2 = engine.clone();
    let conns = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, peer)) = tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(permit) = conns.clone().try_acquire_owned() else {
                continue;
            };
            let engine = e2.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let src = src_v4(peer);
                loop {
                    let Ok(Ok(n)) = tokio::time::timeout(TCP_IDLE, conn.read_u16()).await else {
                        return;
                    };
                    let mut q = vec![0u8; usize::from(n)];
                    if conn.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    let Some(a) = engine.answer(&q, src, true).await else {
                        return;
                    };
                    let Ok(len) = u16::try_from(a.len()) else {
                        return;
                    };
                    let mut framed = len.to_be_bytes().to_vec();
                    framed.extend_from_slice(&a);
                    if conn.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut buf = vec![0u8; 65_535];
    let inflight = Arc::new(tokio::sync::Semaphore::new(MAX_INFLIGHT));
    loop {
        let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            continue;
        };
        let q = buf[..n].to_vec();
        let engine = engine.clone();
        let udp = udp.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(a) = engine.answer(&q, src_v4(peer), false).await {
                let _ = udp.send_to(&a, peer).await;
            }
        });
    }
}

/// Binds UDP and TCP on the same port of `addr` (`port` 0: a free one).
pub(crate) async fn bind(
    addr: Ipv4Addr,
    port: u16,
) -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut last = None;
    for _ in 0..32 {
        let udp = tokio::net::UdpSocket::bind((addr, port)).await?;
        let p = udp.local_addr()?.port();
        match tokio::net::TcpListener::bind((addr, p)).await {
            Ok(t) => return Ok((udp, t)),
            Err(e) if port == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

async fn control_loop(engine: Arc<Engine>, listener: tokio::net::UnixListener) {
    let me = rustix::process::geteuid().as_raw();
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Abstract sockets have no file permissions: only the owner's uid may steer this.
        if s.peer_cred().map(|c| c.uid()).ok() != Some(me) {
            let _ = s.write_all(b"ERROR permission denied\n").await;
            continue;
        }
        let mut line = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut b = [0u8; 4096];
            loop {
                let n = s.read(&mut b).await?;
                if n == 0 {
                    break;
                }
                line.extend_from_slice(&b[..n]);
                if line.contains(&b'\n') || line.len() > 4 << 20 {
                    break;
                }
            }
            std::io::Result::Ok(())
        })
        .await;
        let answer = match (read, serde_json::from_slice::<Control>(&line)) {
            (Ok(Ok(())), Ok(cmd)) => {
                let r = match cmd {
                    Control::Update(p) => engine.update(p),
                    Control::Resync => engine.resync(),
                    Control::Ping => Ok(()),
                };
                match r {
                    Ok(()) => "OK\n".to_owned(),
                    Err(e) => format!("ERROR {e}\n"),
                }
            }
            (_, Err(e)) => format!("ERROR bad command: {e}\n"),
            (Err(_) | Ok(Err(_)), _) => "ERROR read failed\n".to_owned(),
        };
        let _ = s.write_all(answer.as_bytes()).await;
    }
}

/// The `flick-dns` helper's entry point: detaches into its own session, reads a
/// [`ResolverSpec`] as JSON on stdin, binds, prints `READY <port>` (or `ERROR <message>`), then
/// serves until SIGTERM or SIGKILL ends it. `READY` carries the DNS port and the proxy port.
#[must_use]
pub fn helper_main() -> ExitCode {
    let fail = |msg: String| -> ExitCode {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "ERROR {msg}");
        let _ = out.flush();
        std::process::exit(1)
    };
    // Its own session: signals to the caller's process group or terminal never reach it.
    if let Err(e) = rustix::process::setsid() {
        return fail(format!("setsid: {e}"));
    }
    // Default dispositions and an empty mask (both survive exec): SIGTERM ends the process.
    // SAFETY: only default/ignore dispositions are installed, and `set` is a local sigset_t
    // initialised by sigemptyset before pthread_sigmask reads it.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        return fail(format!("read stdin: {e}"));
    }
    let spec: ResolverSpec = match serde_json::from_str(&input) {
        Ok(s) => s,
        Err(e) => return fail(format!("bad spec: {e}")),
    };
    if spec.upstreams.is_empty() {
        return fail("no upstream resolver".into());
    }
    let set = match NfSet::open(&spec.table, &spec.set) {
        Ok(s) => s,
        Err(e) => return fail(format!("netfilter socket: {e}")),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("runtime: {e}")),
    };
    rt.block_on(async move {
        let (udp, tcp) = match bind(spec.listen, spec.port).await {
            Ok(p) => p,
            Err(e) => return fail(format!("bind {}: {e}", spec.listen)),
        };
        let control = {
            use std::os::linux::net::SocketAddrExt;
            let bound = std::os::unix::net::SocketAddr::from_abstract_name(spec.control.as_bytes())
                .and_then(|a| std::os::unix::net::UnixListener::bind_addr(&a))
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    tokio::net::UnixListener::from_std(l)
                });
            match bound {
                Ok(l) => l,
                Err(e) => return fail(format!("control socket {}: {e}", spec.control)),
            }
        };
        let proxy = match tokio::net::TcpListener::bind((spec.listen, 0)).await {
            Ok(l) => l,
            Err(e) => return fail(format!("bind the proxy on {}: {e}", spec.listen)),
        };
        let port = udp.local_addr().map(|a| a.port()).unwrap_or(0);
        let proxy_port = proxy.local_addr().map(|a| a.port()).unwrap_or(0);
        let engine = Arc::new(Engine::new(
            spec.policy,
            spec.upstreams,
            spec.ttl,
            Some(set),
        ));
        let e2 = engine.clone();
        tokio::spawn(control_loop(engine.clone(), control));
        tokio::spawn(proxy_loop(engine.clone(), proxy));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                e2.expire();
            }
        });
        let mut out = std::io::stdout();
        let _ = writeln!(out, "READY {port} {proxy_port}");
        let _ = out.flush();
        serve(engine, Arc::new(udp), tcp).await;
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        // an unrelated extension first (supported_groups)
        ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d]);
        if let Some(n) = sni {
            let n = n.as_bytes();
            let entry_len = 3 + n.len();
            ext.extend_from_slice(&[0x00, 0x00]);
            ext.extend_from_slice(&u16::try_from(entry_len + 2).unwrap().to_be_bytes());
            ext.extend_from_slice(&u16::try_from(entry_len).unwrap().to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&u16::try_from(n.len()).unwrap().to_be_bytes());
            ext.extend_from_slice(n);
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![0x01, 0];
        hs.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn sni_is_read_from_a_client_hello() {
        let hello = client_hello(Some("API.example.com"));
        assert_eq!(tls_sni(&hello), Claim::Name("api.example.com".into()));
        for cut in [0, 3, 5, 40, hello.len() - 1] {
            assert_eq!(tls_sni(&hello[..cut]), Claim::More, "cut at {cut}");
        }
        assert_eq!(tls_sni(&client_hello(None)), Claim::Unusable);
        assert_eq!(tls_sni(b"GET / HTTP/1.1\r\n"), Claim::Unusable);
        let mut broken = hello.clone();
        broken[5] = 0x02; // not a ClientHello
        assert_eq!(tls_sni(&broken), Claim::Unusable);
    }

    #[test]
    fn host_is_read_from_an_http_head() {
        assert_eq!(
            http_host(b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHOST: Api.Example.com:8080\r\n\r\n"),
            Claim::Name("api.example.com".into())
        );
        assert_eq!(http_host(b"GET / HTTP/1.1\r\nHost: a"), Claim::More);
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"\x16\x03\x01\x00\x05hello\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
        ] {
            assert_eq!(http_host(bad), Claim::Unusable, "{bad:?}");
        }
        assert_eq!(http_host(&vec![b'a'; MAX_HEAD]), Claim::Unusable);
    }

    proptest::proptest! {
        #[test]
        fn head_parsers_take_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = tls_sni(&bytes);
            let _ = http_host(&bytes);
            let mut tls = vec![0x16, 0x03, 0x01];
            tls.extend_from_slice(&bytes);
            let _ = tls_sni(&tls);
        }

        #[test]
        fn a_valid_hello_survives_any_cut(cut in 0usize..200) {
            let hello = client_hello(Some("x.example"));
            let c = tls_sni(&hello[..cut.min(hello.len())]);
            proptest::prop_assert!(
                c == Claim::More || c == Claim::Name("x.example".into()),
                "{c:?}"
            );
        }
    }

    #[test]
    fn answers_without_upstream_follow_the_policy() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = Ipv4Addr::new(10, 0, 0, 2);
        let engine = Engine::new(
            ResolverPolicy {
                domains: vec![crate::net::DomainPattern::parse("*.ok.test").unwrap()],
                refusal: DnsRefusal::Nxdomain,
                clients: vec![client],
                inspect_names: true,
                allow_private: false,
                never: Vec::new(),
            },
            Vec::new(),
            TtlLimits::default(),
            None,
        );
        let ask = |name: &str, t: RecordType, src: Ipv4Addr| {
            let mut m = Message::query();
            m.add_query(hickory_proto::op::Query::query(
                hickory_proto::rr::Name::from_ascii(name).unwrap(),
                t,
            ));
            let q = m.to_vec().unwrap();
            let a = rt
                .block_on(engine.answer(&q, src, false))
                .expect("an answer");
            let a = Message::from_vec(&a).unwrap();
            assert_eq!(a.metadata.id, m.metadata.id);
            a.metadata.response_code
        };
        assert_eq!(
            ask("x.bad.test", RecordType::A, client),
            ResponseCode::NXDomain
        );
        assert_eq!(
            ask("x.ok.test", RecordType::A, Ipv4Addr::new(10, 0, 0, 3)),
            ResponseCode::Refused,
            "not a client"
        );
        assert_eq!(
            ask("x.ok.test", RecordType::AAAA, client),
            ResponseCode::NoError
        );
        assert_eq!(
            ask("x.ok.test", RecordType::A, client),
            ResponseCode::ServFail,
            "no upstream"
        );
        assert_eq!(
            ask("x.ok.test", RecordType::AXFR, client),
            ResponseCode::Refused
        );
        assert_eq!(rt.block_on(engine.answer(b"junk", client, false)), None);
        assert!(!engine.name_resolved_to(client, Ipv4Addr::new(1, 1, 1, 1), "x.ok.test"));
    }
}
