//! The agent as a host process: handshake, authentication, malformed input, readiness, the
//! Firecracker vsock CONNECT handshake (against a real Unix-socket proxy speaking it), shutdown.

mod agent_support;

use agent_support::{Agent, TOKEN, sh};
use flick::ErrorCode;
use flick::agent::{AgentClient, AgentTransport, ExecRequest, ShutdownAction, firecracker_connect};
use flick_proto::{Hello, Message, PROTOCOL_VERSION, decode_frame};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Reads one frame from a raw stream (test-side decoder).
async fn read_frame(s: &mut UnixStream) -> Option<Message> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some((m, _)) = decode_frame(&buf).expect("the agent sent a valid frame") {
            return Some(m);
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp))
            .await
            .expect("the agent answered in time")
            .unwrap();
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

async fn assert_closed(s: &mut UnixStream) {
    let mut tmp = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp))
        .await
        .expect("the agent closed the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "connection still open");
}

fn error_code(m: Option<Message>) -> String {
    match m {
        Some(Message::Error(body)) => body.code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_token_and_wrong_version_are_refused() {
    let agent = Agent::start();
    let err = AgentClient::connect(agent.transport(), "wrong-token", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::AgentAuthFailed);

    let mut s = UnixStream::connect(&agent.socket).await.unwrap();
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION + 1,
        token: TOKEN.into(),
    });
    s.write_all(&hello.encode()).await.unwrap();
    assert_eq!(error_code(read_frame(&mut s).await), "UNAUTHORIZED");
    assert_closed(&mut s).await;

    // A request before the hello is refused too.
    let mut s = UnixStream::connect(&agent.socket).await.unwrap();
    s.write_all(&Message::Request(flick_proto::Request::Health).encode())
        .await
        .unwrap();
    assert_eq!(error_code(read_frame(&mut s).await), "BAD_FRAME");
    assert_closed(&mut s).await;
}

#[tokio::test]
async fn garbage_frames_get_an_error_frame_and_the_agent_survives() {
    let agent = Agent::start();
    // Before authentication: an HTTP request is not a frame.
    let mut s = UnixStream::connect(&agent.socket).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(error_code(read_frame(&mut s).await), "BAD_FRAME");
    assert_closed(&mut s).await;

    // After authentication: an oversized length, then malformed JSON, then a wrong kind.
    for garbage in [
        vec![32u8, 0xff, 0xff, 0xff, 0xff],
        vec![3u8, 0, 0, 0, 3, b'{', b'{', b'{'],
        Message::Exit(flick_proto::ExitStatus {
            code: Some(0),
            signal: None,
            timed_out: false,
        })
        .encode(),
    ] {
        let mut s = UnixStream::connect(&agent.socket).await.unwrap();
        let hello = Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: TOKEN.into(),
        });
        s.write_all(&hello.encode()).await.unwrap();
        assert!(matches!(
            read_frame(&mut s).await,
            Some(Message::HelloOk(_))
        ));
        s.write_all(&garbage).await.unwrap();
        // The reply to the garbage is the first frame after the hello answer.
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        let reply = loop {
            if let Some((m, _)) = decode_frame(&buf).unwrap() {
                break m;
            }
            let n = s.read(&mut tmp).await.unwrap();
            assert!(n > 0, "closed without an error frame");
            buf.extend_from_slice(&tmp[..n]);
        };
        assert_eq!(error_code(Some(reply)), "BAD_FRAME");
        assert_closed(&mut s).await;
    }
    // The agent still serves new clients.
    let client = agent.client().await;
    assert_eq!(client.health().await.unwrap().running_execs, 0);
    let out = client
        .output(ExecRequest {
            argv: sh("echo alive"),
            ..ExecRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(out.stdout, b"alive\n");
}

#[tokio::test]
async fn upload_with_a_wrong_checksum_is_rejected_and_leaves_no_file() {
    let agent = Agent::start();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("f");
    let mut s = UnixStream::connect(&agent.socket).await.unwrap();
    let mut out = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        token: TOKEN.into(),
    })
    .encode();
    out.extend(
        Message::Request(flick_proto::Request::Upload(flick_proto::UploadRequest {
            path: target.to_str().unwrap().into(),
            mode: None,
            uid: None,
            gid: None,
            mkdirs: false,
            skip_checksum: false,
        }))
        .encode(),
    );
    out.extend(Message::Data(b"payload".to_vec()).encode());
    out.extend(
        Message::DataEnd(flick_proto::DataEnd {
            size: 7,
            sha256: "00".repeat(32),
        })
        .encode(),
    );
    s.write_all(&out).await.unwrap();
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while frames.len() < 3 {
        while let Some((m, used)) = decode_frame(&buf).unwrap() {
            frames.push(m);
            buf.drain(..used);
        }
        if frames.len() >= 3 {
            break;
        }
        let n = s.read(&mut tmp).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&tmp[..n]);
    }
    assert!(matches!(frames[0], Message::HelloOk(_)));
    assert!(matches!(
        frames[1],
        Message::Response(flick_proto::Response::Ok)
    ));
    assert_eq!(error_code(Some(frames[2].clone())), "CHECKSUM_MISMATCH");
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);

    // A client that disconnects mid-upload leaves nothing either.
    let mut s = UnixStream::connect(&agent.socket).await.unwrap();
    let mut out = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        token: TOKEN.into(),
    })
    .encode();
    out.extend(
        Message::Request(flick_proto::Request::Upload(flick_proto::UploadRequest {
            path: target.to_str().unwrap().into(),
            mode: None,
            uid: None,
            gid: None,
            mkdirs: false,
            skip_checksum: false,
        }))
        .encode(),
    );
    out.extend(Message::Data(vec![1u8; 1000]).encode());
    s.write_all(&out).await.unwrap();
    let _ = read_frame(&mut s).await; // hello ok
    drop(s);
    let client = agent.client().await;
    client.health().await.unwrap();
    let start = std::time::Instant::now();
    while std::fs::read_dir(work.path()).unwrap().count() != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "temp file left behind"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn wait_ready_retries_until_the_agent_appears_and_times_out_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = AgentClient::new(AgentTransport::Unix(dir.path().join("none.sock")), TOKEN);
    let err = missing
        .wait_ready(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::AgentTimeout);

    let agent = Agent::start();
    let client = AgentClient::new(agent.transport(), TOKEN);
    let health = client.wait_ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(health.running_execs, 0);
    let v = client.version().await.unwrap();
    assert_eq!(v.protocol, PROTOCOL_VERSION);
    assert!(!v.kernel.is_empty());
    client.sync().await.unwrap();
    // Invalid clock values are refused without touching the clock.
    let err = client
        .set_clock(std::time::UNIX_EPOCH - Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
}

#[tokio::test]
async fn shutdown_stops_a_host_agent_without_touching_the_machine() {
    let mut agent = Agent::start();
    let client = agent.client().await;
    client.shutdown(ShutdownAction::Poweroff).await.unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = agent.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "agent did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}

/// A stand-in for Firecracker's vsock multiplexer: accepts on `uds`, expects `CONNECT <port>\n`,
/// forwards to the agent's Unix socket when the port matches, answers `OK <n>\n` in the same
/// write as `extra` (to catch clients that read the reply through a buffer and lose bytes), or
/// closes the connection for other ports, like Firecracker does.
async fn vsock_proxy(uds: PathBuf, agent: PathBuf, port: u32, extra: &'static [u8]) {
    let listener = UnixListener::bind(&uds).unwrap();
    loop {
        let (mut s, _) = listener.accept().await.unwrap();
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).await.unwrap_or(0) == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            let want = format!("CONNECT {port}");
            if line != want.as_bytes() {
                return; // drop: refused
            }
            let mut reply = b"OK 1073741824\n".to_vec();
            reply.extend_from_slice(extra);
            if agent == Path::new("-") {
                s.write_all(&reply).await.unwrap();
                let _ = s.read(&mut b).await;
                return;
            }
            let mut upstream = UnixStream::connect(&agent).await.unwrap();
            s.write_all(&reply).await.unwrap();
            let _ = tokio::io::copy_bidirectional(&mut s, &mut upstream).await;
        });
    }
}

#[tokio::test]
async fn connect_handshake_keeps_bytes_after_the_ok_line() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    tokio::spawn(vsock_proxy(uds.clone(), PathBuf::from("-"), 52, b"EXTRA"));
    while !uds.exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut s = UnixStream::connect(&uds).await.unwrap();
    assert_eq!(
        firecracker_connect(&mut s, 52).await.unwrap(),
        1_073_741_824
    );
    let mut rest = [0u8; 5];
    s.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"EXTRA");

    let mut s = UnixStream::connect(&uds).await.unwrap();
    let err = firecracker_connect(&mut s, 53).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn client_works_through_the_vsock_connect_tunnel() {
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    tokio::spawn(vsock_proxy(uds.clone(), agent.socket.clone(), 1024, b""));
    let transport = AgentTransport::FirecrackerVsock {
        uds_path: uds.clone(),
        port: 1024,
    };
    let client = AgentClient::connect(transport, TOKEN, Duration::from_secs(5))
        .await
        .unwrap();
    let out = client
        .output(ExecRequest {
            argv: sh("echo through-vsock"),
            ..ExecRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(out.stdout, b"through-vsock\n");

    let wrong_port = AgentClient::new(
        AgentTransport::FirecrackerVsock {
            uds_path: uds,
            port: 9,
        },
        TOKEN,
    );
    let err = wrong_port.health().await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::AgentConnectFailed);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_told_busy() {
    let agent = Agent::start_with(&["--max-connections", "2"]);
    let a = agent.client().await;
    let b = agent.client().await;
    // Each client holds one pooled, authenticated connection.
    let mut s = UnixStream::connect(&agent.socket).await.unwrap();
    assert_eq!(error_code(read_frame(&mut s).await), "BUSY");
    assert_closed(&mut s).await;
    drop(b);
    // A freed slot serves the next client.
    let start = std::time::Instant::now();
    let c = loop {
        match AgentClient::connect(agent.transport(), TOKEN, Duration::from_secs(2)).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(5), "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    c.health().await.unwrap();
    a.health().await.unwrap();
}

/// How the stand-in agent below ends a download.
#[derive(Clone, Copy, Debug)]
enum BadEnd {
    /// `DataEnd` announces a digest that is not the one of the bytes sent.
    WrongDigest,
    /// `DataEnd` announces one byte more than was sent.
    WrongSize,
    /// An error frame in the middle of the stream (a read error in the guest).
    ErrorFrame,
    /// The connection drops in the middle of the stream.
    Disconnect,
}

/// A stand-in agent on a real Unix socket that answers every download with `bytes` and then
/// misbehaves as `end` says. Serves connections until the listener task is dropped.
fn misbehaving_agent(socket: &Path, bytes: Vec<u8>, end: BadEnd) -> tokio::task::JoinHandle<()> {
    use flick_proto::io::{FrameReader, FrameWriter};
    use flick_proto::{DataEnd, ErrorBody, HelloOk, Kind, Request, Response};
    use sha2::Digest;
    let listener = UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let (r, w) = stream.into_split();
                let (mut rd, mut wr) = (FrameReader::new(r), FrameWriter::new(w));
                while let Ok(Some(msg)) = rd.read_frame().await {
                    match msg {
                        Message::Hello(_) => {
                            let ok = HelloOk {
                                version: PROTOCOL_VERSION,
                                agent_version: "stand-in".into(),
                            };
                            wr.send(&Message::HelloOk(ok)).await.unwrap();
                        }
                        Message::Request(Request::Download { skip_checksum, .. }) => {
                            let started = Response::DownloadStarted {
                                size: bytes.len() as u64,
                                mode: 0o600,
                            };
                            wr.send(&Message::Response(started)).await.unwrap();
                            let half = bytes.len() / 2;
                            wr.send_data(Kind::Data, &bytes[..half]).await.unwrap();
                            let (size, mut sha256) = (
                                bytes.len() as u64,
                                hex::encode(sha2::Sha256::digest(&bytes)),
                            );
                            if skip_checksum {
                                sha256.clear();
                            }
                            let last = match end {
                                BadEnd::Disconnect => return,
                                BadEnd::ErrorFrame => Message::Error(ErrorBody::new(
                                    flick_proto::codes::IO,
                                    "read /f: Input/output error",
                                )),
                                BadEnd::WrongDigest => Message::DataEnd(DataEnd {
                                    size,
                                    sha256: "ab".repeat(32),
                                }),
                                BadEnd::WrongSize => Message::DataEnd(DataEnd {
                                    size: size + 1,
                                    sha256,
                                }),
                            };
                            wr.send_data(Kind::Data, &bytes[half..]).await.unwrap();
                            wr.send(&last).await.unwrap();
                        }
                        other => panic!("the stand-in agent got {other:?}"),
                    }
                }
            });
        }
    })
}

#[tokio::test]
async fn downloads_that_do_not_add_up_are_reported_and_leave_nothing_behind() {
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let cases = [
        (BadEnd::WrongDigest, false, ErrorCode::AgentProtocolError),
        (BadEnd::WrongSize, false, ErrorCode::AgentProtocolError),
        (BadEnd::WrongSize, true, ErrorCode::AgentProtocolError),
        (BadEnd::ErrorFrame, false, ErrorCode::AgentError),
        (BadEnd::Disconnect, false, ErrorCode::AgentConnectFailed),
    ];
    for (end, skip_checksum, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let server = misbehaving_agent(&socket, data.clone(), end);
        let client = AgentClient::new(AgentTransport::Unix(socket), TOKEN);
        let local = dir.path().join("local");
        let opts = flick::agent::DownloadOptions {
            skip_checksum,
            ..Default::default()
        };
        let e = client
            .download_with("/f", &local, &opts)
            .await
            .expect_err("a download that does not add up fails");
        assert_eq!(e.code(), want, "{end:?}: {e}");
        if matches!(end, BadEnd::ErrorFrame) {
            assert_eq!(e.details().unwrap()["agent_code"], "IO");
        }
        // Neither the destination nor a temp file exists.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["agent.sock"], "{end:?}");
        // The streaming variant reports the same failure.
        if !skip_checksum {
            let mut sink = Vec::new();
            let e = client.download_writer("/f", &mut sink).await.unwrap_err();
            assert_eq!(e.code(), want, "{end:?} (writer): {e}");
        }
        server.abort();
    }
}

#[tokio::test]
async fn a_multi_chunk_upload_with_a_flipped_byte_or_short_size_is_rejected() {
    use flick_proto::io::{FrameReader, FrameWriter};
    use flick_proto::{DataEnd, Kind, Request, Response, UploadRequest};
    use sha2::Digest;
    let agent = Agent::start();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("f");
    std::fs::write(&target, b"original").unwrap();
    let data: Vec<u8> = (0..(3 << 20) + 17u32).map(|i| (i % 253) as u8).collect();
    let digest = hex::encode(sha2::Sha256::digest(&data));
    // (bytes sent, announced size, announced digest)
    let mut flipped = data.clone();
    flipped[(3 << 20) / 2] ^= 0x40;
    let cases = [
        (flipped, data.len() as u64, digest.clone()),
        (
            data[..data.len() - 1].to_vec(),
            data.len() as u64,
            digest.clone(),
        ),
        (data.clone(), data.len() as u64 - 1, digest.clone()),
    ];
    let stream = UnixStream::connect(&agent.socket).await.unwrap();
    let (r, w) = stream.into_split();
    let (mut rd, mut wr) = (FrameReader::new(r), FrameWriter::new(w));
    wr.send(&Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        token: TOKEN.into(),
    }))
    .await
    .unwrap();
    assert!(matches!(
        rd.read_frame().await,
        Ok(Some(Message::HelloOk(_)))
    ));
    for (i, (bytes, size, sha256)) in cases.into_iter().enumerate() {
        let req = UploadRequest {
            path: target.to_str().unwrap().into(),
            mode: None,
            uid: None,
            gid: None,
            mkdirs: false,
            skip_checksum: false,
        };
        wr.send(&Message::Request(Request::Upload(req)))
            .await
            .unwrap();
        assert!(matches!(
            rd.read_frame().await,
            Ok(Some(Message::Response(Response::Ok)))
        ));
        for chunk in bytes.chunks(flick_proto::TRANSFER_CHUNK_SIZE) {
            wr.send_data(Kind::Data, chunk).await.unwrap();
        }
        wr.send(&Message::DataEnd(DataEnd { size, sha256 }))
            .await
            .unwrap();
        let answer = rd.read_frame().await.unwrap();
        assert_eq!(error_code(answer), "CHECKSUM_MISMATCH", "case {i}");
        // The destination is untouched and no temp file remains; the connection goes on.
        assert_eq!(std::fs::read(&target).unwrap(), b"original", "case {i}");
        assert_eq!(
            std::fs::read_dir(work.path()).unwrap().count(),
            1,
            "case {i}"
        );
    }
    // The right bytes on the same connection are accepted.
    let req = UploadRequest {
        path: target.to_str().unwrap().into(),
        mode: None,
        uid: None,
        gid: None,
        mkdirs: false,
        skip_checksum: false,
    };
    wr.send(&Message::Request(Request::Upload(req)))
        .await
        .unwrap();
    assert!(matches!(
        rd.read_frame().await,
        Ok(Some(Message::Response(Response::Ok)))
    ));
    for chunk in data.chunks(flick_proto::TRANSFER_CHUNK_SIZE) {
        wr.send_data(Kind::Data, chunk).await.unwrap();
    }
    wr.send(&Message::DataEnd(DataEnd {
        size: data.len() as u64,
        sha256: digest.clone(),
    }))
    .await
    .unwrap();
    assert!(matches!(
        rd.read_frame().await,
        Ok(Some(Message::Response(Response::Uploaded { sha256, .. }))) if sha256 == digest
    ));
    assert!(std::fs::read(&target).unwrap() == data);
}
