//! The resolver itself: the [`Engine`] that answers one query, and the `flick-dns` helper's
//! main loop around it (UDP and TCP listeners, the control socket, expiry bookkeeping).
//!
//! Answer path for an allowed `A` query: forward the client's bytes (with a fresh random ID,
//! from a fresh socket with a random source port) to the first upstream that answers, check the
//! answer's ID and question, keep its `A`/`CNAME`/other answer records (never `AAAA`) and an
//! `SOA` authority record, clamp TTLs, add every `A` address to the VM's set and wait for the
//! kernel's acknowledgement, then reply. A failed set update is `SERVFAIL`: the guest never
//! gets an address it could not connect to.

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
pub struct Engine {
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
    pub fn new(
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
    pub fn update(&self, policy: ResolverPolicy) -> std::io::Result<()> {
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
    pub fn resync(&self) -> std::io::Result<()> {
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
    pub fn expire(&self) {
        let now = Instant::now();
        self.lock().entries.retain(|_, e| e.expires > now);
    }

    /// The addresses currently handed out, for inspection.
    #[must_use]
    pub fn live_addresses(&self) -> Vec<Ipv4Addr> {
        let now = Instant::now();
        let mut v: Vec<_> = self
            .lock()
            .entries
            .iter()
            .filter(|(_, e)| e.expires > now)
            .map(|(a, _)| *a)
            .collect();
        v.sort();
        v
    }

    /// Answers one query from `src`; `None` means "send nothing" (not a query at all).
    pub async fn answer(&self, query: &[u8], src: Ipv4Addr, tcp: bool) -> Option<Vec<u8>> {
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
pub async fn serve(
    engine: Arc<Engine>,
    udp: Arc<tokio::net::UdpSocket>,
    tcp: tokio::net::TcpListener,
) {
    let e2 = engine.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, peer)) = tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let engine = e2.clone();
            tokio::spawn(async move {
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
    loop {
        let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
            continue;
        };
        let q = buf[..n].to_vec();
        let engine = engine.clone();
        let udp = udp.clone();
        tokio::spawn(async move {
            if let Some(a) = engine.answer(&q, src_v4(peer), false).await {
                let _ = udp.send_to(&a, peer).await;
            }
        });
    }
}

/// Binds UDP and TCP on the same port of `addr` (`port` 0: a free one).
pub async fn bind(
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
/// serves until SIGTERM or SIGKILL ends it.
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
        let port = udp.local_addr().map(|a| a.port()).unwrap_or(0);
        let engine = Arc::new(Engine::new(
            spec.policy,
            spec.upstreams,
            spec.ttl,
            Some(set),
        ));
        let e2 = engine.clone();
        tokio::spawn(control_loop(engine.clone(), control));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                e2.expire();
            }
        });
        let mut out = std::io::stdout();
        let _ = writeln!(out, "READY {port}");
        let _ = out.flush();
        serve(engine, Arc::new(udp), tcp).await;
        ExitCode::SUCCESS
    })
}
