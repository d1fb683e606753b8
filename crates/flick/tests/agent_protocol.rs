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
