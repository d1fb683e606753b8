//! The agent as a host process on a Unix socket: exec semantics.

mod agent_support;

use agent_support::{Agent, sh, wait_gone};
use flick::ErrorCode;
use flick::agent::{ExecEvent, ExecRequest};
use std::time::Duration;

fn req(argv: Vec<String>) -> ExecRequest {
    ExecRequest {
        argv,
        ..ExecRequest::default()
    }
}

#[tokio::test]
async fn stdout_and_stderr_keep_their_order() {
    let agent = Agent::start();
    let client = agent.client().await;
    let script = "i=1; while [ $i -le 300 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done";
    let out = client.output(req(sh(script))).await.unwrap();
    let want_out: String = (1..=300).map(|i| format!("out{i}\n")).collect();
    let want_err: String = (1..=300).map(|i| format!("err{i}\n")).collect();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want_out);
    assert_eq!(String::from_utf8(out.stderr).unwrap(), want_err);
    assert_eq!(out.status.code, Some(0));

    // merge_stderr keeps the exact interleaving, like 2>&1.
    let mut merged = req(sh(script));
    merged.merge_stderr = true;
    let out = client.output(merged).await.unwrap();
    let want: String = (1..=300).map(|i| format!("out{i}\nerr{i}\n")).collect();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), want);
    assert!(out.stderr.is_empty());
}

#[tokio::test]
async fn exit_codes_signals_and_spawn_errors() {
    let agent = Agent::start();
    let client = agent.client().await;
    let out = client.output(req(sh("exit 7"))).await.unwrap();
    assert_eq!((out.status.code, out.status.signal), (Some(7), None));
    let out = client.output(req(sh("kill -TERM $$"))).await.unwrap();
    assert_eq!((out.status.code, out.status.signal), (None, Some(15)));
    assert!(!out.status.timed_out);

    let err = client
        .output(req(vec!["/definitely/not/here".into()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::AgentError);
    assert_eq!(err.details().unwrap()["agent_code"], "SPAWN_FAILED");

    let mut bad_cwd = req(vec!["true".into()]);
    bad_cwd.cwd = Some("/no/such/dir".into());
    let err = client.output(bad_cwd).await.unwrap_err();
    assert_eq!(err.details().unwrap()["agent_code"], "NOT_FOUND");

    let err = client.output(req(vec![])).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    let err = client
        .output(req(vec!["echo".into(), "x".repeat(2 << 20)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);

    // The pooled connection still works after the errors.
    let out = client.output(req(sh("echo ok"))).await.unwrap();
    assert_eq!(out.stdout, b"ok\n");
}

#[tokio::test]
async fn env_cwd_and_user() {
    let agent = Agent::start();
    let client = agent.client().await;
    let mut r = req(sh("echo $FOO; pwd; id -u"));
    r.env = vec![("FOO".into(), "bar baz".into())];
    r.cwd = Some("/tmp".into());
    r.user = Some("nobody".into());
    let out = client.output(r).await.unwrap();
    let nobody = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("nobody:x:"))
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .to_owned();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("bar baz\n/tmp\n{nobody}\n")
    );
    let mut r = req(vec!["true".into()]);
    r.user = Some("no-such-user-here".into());
    let err = client.output(r).await.unwrap_err();
    assert_eq!(err.details().unwrap()["agent_code"], "NO_SUCH_USER");
}

#[tokio::test]
async fn signal_reaches_the_running_program() {
    let agent = Agent::start();
    let client = agent.client().await;
    let mut s = client
        .exec(req(vec!["sleep".into(), "100".into()]))
        .await
        .unwrap();
    s.signal(SIGTERM, false).await.unwrap();
    let out = s.collect().await.unwrap();
    assert_eq!(out.status.signal, Some(15));
}

const SIGTERM: i32 = 15;

#[tokio::test]
async fn pty_as_another_user_gets_its_controlling_terminal() {
    let agent = Agent::start();
    let client = agent.client().await;
    let mut r = req(sh("id -u; tty; stty size"));
    r.user = Some("nobody".into());
    r.tty = Some(flick::agent::WinSize { rows: 33, cols: 77 });
    let out = client.output(r).await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_ne!(lines[0], "0", "{text:?}");
    assert!(lines[1].starts_with("/dev/pts/"), "{text:?}");
    assert_eq!(lines[2], "33 77");
    assert_eq!(out.status.code, Some(0));
}

#[tokio::test]
async fn group_signal_reaches_every_member() {
    let agent = Agent::start();
    let client = agent.client().await;
    let mut s = client
        .exec(req(sh("sleep 100 & echo $!; wait; echo waited")))
        .await
        .unwrap();
    let line = first_line(&mut s).await;
    let bg: u32 = line.trim().parse().unwrap();
    s.signal(SIGTERM, true).await.unwrap();
    let out = s.collect().await.unwrap();
    // The shell itself got SIGTERM too (it is the group leader).
    assert_eq!(out.status.signal, Some(15));
    assert_eq!(wait_gone(&[bg], Duration::from_secs(5)), Vec::<u32>::new());
}

#[tokio::test]
async fn hundred_mib_of_output_arrive_whole_with_bounded_agent_memory() {
    let agent = Agent::start();
    let client = agent.client().await;
    let mut s = client
        .exec(req(sh("head -c 104857600 /dev/zero; echo end >&2")))
        .await
        .unwrap();
    // Read nothing for a while: the agent must block the writer, not buffer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut total = 0usize;
    let mut nonzero = false;
    let mut stderr = Vec::new();
    let status = loop {
        match s.next_event().await.unwrap() {
            ExecEvent::Stdout(b) => {
                total += b.len();
                nonzero |= b.iter().any(|x| *x != 0);
            }
            ExecEvent::Stderr(b) => stderr.extend(b),
            ExecEvent::Exit(st) => break st,
        }
    };
    assert_eq!(total, 100 * 1024 * 1024);
    assert!(!nonzero);
    assert_eq!(stderr, b"end\n");
    assert_eq!(status.code, Some(0));
    let hwm = agent.vm_hwm_kib();
    assert!(
        hwm < 48 * 1024,
        "agent peak RSS {hwm} KiB: output was buffered"
    );
}

#[tokio::test]
async fn binary_stdin_round_trips_through_cat() {
    let agent = Agent::start();
    let client = agent.client().await;
    let mut r = req(vec!["cat".into()]);
    r.stdin = true;
    let session = client.exec(r).await.unwrap();
    let (mut input, events) = session.split();
    let data: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(100_000) {
            input.write_stdin(chunk).await.unwrap();
        }
        input.close_stdin().await.unwrap();
        input
    });
    let out = events.collect().await.unwrap();
    let _input = writer.await.unwrap();
    assert_eq!(out.status.code, Some(0));
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data);
}

#[tokio::test]
async fn fifty_concurrent_execs() {
    let agent = Agent::start();
    let client = std::sync::Arc::new(agent.client().await);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = req(sh("sleep 0.3; echo $0; echo e$0 >&2"));
            r.argv.push(format!("n{i}"));
            let out = client.output(r).await.unwrap();
            (i, out)
        }));
    }
    for t in tasks {
        let (i, out) = t.await.unwrap();
        assert_eq!(out.stdout, format!("n{i}\n").into_bytes());
        assert_eq!(out.stderr, format!("en{i}\n").into_bytes());
        assert_eq!(out.status.code, Some(0));
    }
    assert_eq!(client.health().await.unwrap().running_execs, 0);
}

async fn first_line(s: &mut flick::agent::ExecSession) -> String {
    let mut buf = Vec::new();
    while !buf.contains(&b'\n') {
        match s.next_event().await.unwrap() {
            ExecEvent::Stdout(b) => buf.extend(b),
            other => panic!("unexpected {other:?}"),
        }
    }
    String::from_utf8(buf).unwrap()
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let agent = Agent::start();
    let client = agent.client().await;
    let mut r = req(sh("sleep 1000 & echo $! $$; wait"));
    r.timeout_ms = Some(400);
    let mut s = client.exec(r).await.unwrap();
    let line = first_line(&mut s).await;
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let out = s.collect().await.unwrap();
    assert!(out.status.timed_out);
    assert_eq!(out.status.signal, Some(9));
    assert_eq!(wait_gone(&pids, Duration::from_secs(5)), Vec::<u32>::new());
}

#[tokio::test]
async fn client_disconnect_kills_the_whole_process_group() {
    let agent = Agent::start();
    let client = agent.client().await;
    let mut s = client
        .exec(req(sh("sleep 1000 & echo $! $$; sleep 1000")))
        .await
        .unwrap();
    let line = first_line(&mut s).await;
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| !agent_support::process_gone(*p)));
    drop(s);
    assert_eq!(wait_gone(&pids, Duration::from_secs(5)), Vec::<u32>::new());
    // The agent itself is fine.
    assert_eq!(client.health().await.unwrap().running_execs, 0);
}

#[tokio::test]
async fn pty_shell_prompt_keys_and_resize() {
    let agent = Agent::start();
    let client = agent.client().await;
    let mut r = req(vec!["sh".into(), "-i".into()]);
    r.tty = Some(flick::agent::WinSize { rows: 24, cols: 80 });
    r.stdin = true;
    r.env = vec![("PS1".into(), "flick$ ".into()), ("ENV".into(), "".into())];
    let mut s = client.exec(r).await.unwrap();
    let mut screen = String::new();
    async fn read_until(s: &mut flick::agent::ExecSession, screen: &mut String, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !screen.contains(needle) {
            let ev = tokio::time::timeout_at(deadline, s.next_event())
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in {screen:?}"))
                .unwrap();
            match ev {
                ExecEvent::Stdout(b) => screen.push_str(&String::from_utf8_lossy(&b)),
                other => panic!("unexpected {other:?} with screen {screen:?}"),
            }
        }
    }
    read_until(&mut s, &mut screen, "flick$ ").await;
    s.write_stdin(b"tty; stty size\n").await.unwrap();
    read_until(&mut s, &mut screen, "24 80").await;
    assert!(screen.contains("/dev/pts/"), "{screen:?}");
    s.resize(40, 120).await.unwrap();
    screen.clear();
    s.write_stdin(b"stty size\n").await.unwrap();
    read_until(&mut s, &mut screen, "40 120").await;
    // The PTY is the controlling terminal: ^C interrupts the foreground job only.
    screen.clear();
    s.write_stdin(b"sleep 100; echo after-sleep\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_stdin(b"\x03").await.unwrap();
    read_until(&mut s, &mut screen, "^C").await;
    screen.clear();
    s.write_stdin(b"echo still-$((40+2))\n").await.unwrap();
    read_until(&mut s, &mut screen, "still-42").await;
    assert!(!screen.contains("after-sleep\r\n"), "{screen:?}");
    s.write_stdin(b"exit 3\n").await.unwrap();
    let status = loop {
        if let ExecEvent::Exit(st) = s.next_event().await.unwrap() {
            break st;
        }
    };
    assert_eq!(status.code, Some(3));
}

#[tokio::test]
async fn exit_is_reported_while_a_background_child_holds_stdout() {
    let agent = Agent::start();
    let client = agent.client().await;
    let out = client
        .output(req(sh("sleep 3 & echo $!; echo done")))
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with("done\n"), "{text:?}");
    assert_eq!(out.status.code, Some(0));
    // The background child was not killed: only timeouts and disconnects do that.
    let pid: u32 = text.lines().next().unwrap().parse().unwrap();
    assert!(!agent_support::process_gone(pid));
}
