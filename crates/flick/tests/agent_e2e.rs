//! End to end: a VM started by `Host` (Firecracker double), its vsock device's host socket,
//! Firecracker's `CONNECT`/`OK` handshake emulated by the double, and the real `flick-agent`
//! (running as a host process where the guest would run it) — exec and file transfer through
//! the whole chain, also in clones restored from a snapshot.

mod agent_support;

use std::time::Duration;

use agent_support::{Agent, TOKEN};
use flick::agent::{AgentClient, AgentTransport, ExecRequest, UploadOptions};
use flick::config::{VmConfig, Vsock};
use flick::host::{FirecrackerBinary, Host, HostOptions, RestoreOptions};
use flick::vm::SnapshotOptions;

fn host_for(agent: &Agent, dir: &std::path::Path) -> Host {
    let mut options = HostOptions::new(
        dir.join("data"),
        FirecrackerBinary::Path(flick_testkit::fc_double_path()),
    );
    options.runtime_dir = Some(dir.join("runtime"));
    options.firecracker_env.push((
        "FC_DOUBLE_VSOCK_PORTS".into(),
        format!(
            "{}={}",
            flick_proto::DEFAULT_VSOCK_PORT,
            agent.socket.display()
        )
        .into(),
    ));
    Host::new(options).unwrap()
}

async fn client_for(vm: &flick::MicroVm) -> AgentClient {
    let vsock = vm.status().await.vsock_socket.expect("vsock socket");
    AgentClient::connect(
        AgentTransport::FirecrackerVsock {
            uds_path: vsock,
            port: flick_proto::DEFAULT_VSOCK_PORT,
        },
        TOKEN,
        Duration::from_secs(10),
    )
    .await
    .expect("agent through the vsock emulation")
}

async fn echo(client: &AgentClient, word: &str) -> String {
    let out = client
        .output(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), format!("echo {word}; exit 3")],
            ..ExecRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(out.status.code, Some(3));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn exec_and_files_through_firecrackers_vsock_and_in_restored_clones() {
    let agent = Agent::start();
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"kernel").unwrap();
    let rootfs = dir.path().join("rootfs.img");
    std::fs::File::create(&rootfs)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let host = host_for(&agent, dir.path());
    let config = VmConfig::new(&kernel, &rootfs).with_vsock(Vsock::new(3));
    let vm = host.create_vm("e2e", config).await.unwrap();
    vm.start().await.unwrap();

    let client = client_for(&vm).await;
    assert_eq!(echo(&client, "hello").await, "hello\n");
    let local = dir.path().join("payload.bin");
    let payload: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(&local, &payload).unwrap();
    let remote = agent.dir.path().join("uploaded.bin");
    client
        .upload(&local, remote.to_str().unwrap(), &UploadOptions::default())
        .await
        .unwrap();
    let back = dir.path().join("back.bin");
    client
        .download(remote.to_str().unwrap(), &back)
        .await
        .unwrap();
    assert!(std::fs::read(&back).unwrap() == payload);

    // Snapshot, then two clones: each has its own vsock socket reaching the agent.
    vm.pause().await.unwrap();
    let snap = vm
        .create_snapshot(&SnapshotOptions::full(dir.path().join("snap")))
        .await
        .unwrap();
    host.remove_vm("e2e").await.unwrap();
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let clone = host
            .restore_vm(
                &snap,
                RestoreOptions {
                    resume: true,
                    ..RestoreOptions::default()
                },
            )
            .await
            .unwrap();
        let client = client_for(&clone).await;
        assert_eq!(echo(&client, clone.id()).await, format!("{}\n", clone.id()));
        sockets.push(clone.status().await.vsock_socket.unwrap());
    }
    assert_ne!(sockets[0], sockets[1]);
    host.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_port_nobody_listens_on_is_agent_connect_failed() {
    let agent = Agent::start();
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"kernel").unwrap();
    let host = host_for(&agent, dir.path());
    let config = VmConfig::with_kernel(&kernel).with_vsock(Vsock::new(3));
    let vm = host.create_vm("noport", config).await.unwrap();
    vm.start().await.unwrap();
    let vsock = vm.status().await.vsock_socket.unwrap();
    let err = AgentClient::connect(
        AgentTransport::FirecrackerVsock {
            uds_path: vsock,
            port: 4242,
        },
        TOKEN,
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err.code(),
            flick::ErrorCode::AgentConnectFailed | flick::ErrorCode::AgentTimeout
        ),
        "{}",
        err.chain()
    );
    host.cleanup().await.unwrap();
}
