//! Round trip of `PUT /machine-config` through [`FirecrackerClient`] vs a raw `UnixStream`
//! write/read of the same request bytes, against the same Firecracker double process, in one
//! run. Both sides keep one connection alive; rounds are interleaved so drift hits both alike.
//!
//! Run: `cargo bench -p flick --bench api_roundtrip` (target: client p50 ≤ 1.2× raw p50).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flick::api::FirecrackerClient;
use flick::api::models::MachineConfiguration;

const ROUNDS: usize = 8;
const PER_ROUND: usize = 500;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("api.sock");
    let mut double = spawn_double(&socket);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let config = MachineConfiguration {
        vcpu_count: 2,
        mem_size_mib: 256,
        smt: Some(false),
        track_dirty_pages: None,
        cpu_template: None,
        huge_pages: None,
    };
    let body = serde_json::to_vec(&config).expect("encode");
    let client = FirecrackerClient::new(&socket);
    runtime
        .block_on(client.wait_ready(Duration::from_secs(10)))
        .expect("double ready");

    let mut raw = RawConnection::connect(&socket);
    // Warm up both paths (connection setup, allocator, page cache).
    for _ in 0..200 {
        runtime
            .block_on(client.put_machine_config(&config))
            .expect("client put");
        raw.put("/machine-config", &body);
    }

    let mut client_samples = Vec::with_capacity(ROUNDS * PER_ROUND);
    let mut raw_samples = Vec::with_capacity(ROUNDS * PER_ROUND);
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            runtime
                .block_on(client.put_machine_config(&config))
                .expect("client put");
            client_samples.push(t.elapsed());
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            raw.put("/machine-config", &body);
            raw_samples.push(t.elapsed());
        }
    }

    let c = Stats::of(&mut client_samples);
    let r = Stats::of(&mut raw_samples);
    println!(
        "PUT /machine-config round trip, {} requests each, same fc-double process",
        ROUNDS * PER_ROUND
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "", "p50 µs", "p99 µs", "mean µs"
    );
    println!(
        "{:<22} {:>10.1} {:>10.1} {:>10.1}",
        "FirecrackerClient", c.p50, c.p99, c.mean
    );
    println!(
        "{:<22} {:>10.1} {:>10.1} {:>10.1}",
        "raw UnixStream", r.p50, r.p99, r.mean
    );
    println!(
        "ratio client/raw: p50 {:.2}x  p99 {:.2}x  mean {:.2}x  (target p50 <= 1.2x)",
        c.p50 / r.p50,
        c.p99 / r.p99,
        c.mean / r.mean
    );
    let _ = double.kill();
    let _ = double.wait();
}

struct Stats {
    p50: f64,
    p99: f64,
    mean: f64,
}

impl Stats {
    fn of(samples: &mut [Duration]) -> Self {
        samples.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let pick = |q: f64| us(samples[((samples.len() as f64 - 1.0) * q).round() as usize]);
        let mean = samples.iter().map(|d| us(*d)).sum::<f64>() / samples.len() as f64;
        Self {
            p50: pick(0.50),
            p99: pick(0.99),
            mean,
        }
    }
}

fn spawn_double(socket: &Path) -> Child {
    let child = Command::new(flick_testkit::fc_double_path())
        .arg("--api-sock")
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fc-double");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "fc-double socket never appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// One keep-alive HTTP/1.1 connection written and parsed by hand.
struct RawConnection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: String,
}

impl RawConnection {
    fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).expect("connect");
        let writer = stream.try_clone().expect("clone");
        Self {
            reader: BufReader::new(stream),
            writer,
            line: String::new(),
        }
    }

    fn put(&mut self, path: &str, body: &[u8]) {
        let head = format!(
            "PUT {path} HTTP/1.1\r\nhost: localhost\r\naccept: application/json\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.writer.write_all(&request).expect("write");
        // Status line and headers.
        let mut content_length = 0usize;
        let mut first = true;
        loop {
            self.line.clear();
            self.reader.read_line(&mut self.line).expect("read");
            if first {
                assert!(self.line.starts_with("HTTP/1.1 2"), "{}", self.line);
                first = false;
            }
            let line = self.line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().expect("content-length");
            }
        }
        let mut sink = vec![0u8; content_length];
        self.reader.read_exact(&mut sink).expect("body");
    }
}
