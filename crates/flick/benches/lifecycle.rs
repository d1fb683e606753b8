//! Lifecycle benchmarks, each side by side with its baseline in one run:
//!
//! 1. `start()` up to InstanceStart accepted vs the same requests sent over a raw `UnixStream`
//!    to a freshly spawned double (both include spawning the process and waiting for its
//!    socket; the VM's drive is read-only so no staging is involved);
//! 2. staging a 1 GiB sparse image holding 64 MiB of data: flick vs `cp --sparse=always` vs a
//!    plain full copy (`cp --sparse=never`) — time and allocated bytes;
//! 3. 50 VMs started concurrently vs one VM: per-VM start rate ratio.
//!
//! Run: `cargo bench -p flick --bench lifecycle`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flick::config::{Drive, VmConfig};
use flick::host::{FirecrackerBinary, Host, HostOptions, ViewMode};
use flick::runtime::staging::stage_file;

fn main() {
    let dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs");
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"kernel").unwrap();
    let rootfs = dir.path().join("rootfs.img");
    std::fs::File::create(&rootfs)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    start_vs_raw(&runtime, dir.path(), &kernel, &rootfs);
    staging(dir.path());
    concurrency(&runtime, dir.path(), &kernel, &rootfs);
}

fn host(dir: &Path, name: &str) -> Host {
    host_with_view(dir, name, ViewMode::Auto)
}

fn host_with_view(dir: &Path, name: &str, view: ViewMode) -> Host {
    let mut options = HostOptions::new(
        dir.join(format!("{name}-data")),
        FirecrackerBinary::Path(flick_testkit::fc_double_path()),
    );
    options.runtime_dir = Some(dir.join(format!("{name}-runtime")));
    options.stop_grace = Duration::from_millis(500);
    options.view = view;
    Host::new(options).unwrap()
}

fn config(kernel: &Path, rootfs: &Path) -> VmConfig {
    VmConfig::with_kernel(kernel)
        .with_boot_args("console=ttyS0 reboot=k panic=1")
        .with_vcpus(1)
        .with_memory_mib(128)
        .with_drive(Drive::root("rootfs", rootfs).read_only())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn start_vs_raw(rt: &tokio::runtime::Runtime, dir: &Path, kernel: &Path, rootfs: &Path) {
    const N: usize = 40;
    let host = host(dir, "start");
    let host_off = host_with_view(dir, "start-noview", ViewMode::Off);
    let cfg = config(kernel, rootfs);
    // The exact sequence flick sends, replayed raw.
    let calls = cfg.to_payloads().unwrap().requests();
    let serial = dir.join("raw-serial.log");
    let mut flick_t = Vec::new();
    let mut raw_t = Vec::new();
    let mut off_t = Vec::new();
    for i in 0..N {
        let id = format!("b{i}");
        let t = Instant::now();
        let vm = rt.block_on(host.create_vm(&id, cfg.clone())).unwrap();
        rt.block_on(vm.start()).unwrap();
        flick_t.push(t.elapsed());
        rt.block_on(host.remove_vm(&id)).unwrap();

        let t = Instant::now();
        let vm = rt.block_on(host_off.create_vm(&id, cfg.clone())).unwrap();
        rt.block_on(vm.start()).unwrap();
        off_t.push(t.elapsed());
        rt.block_on(host_off.remove_vm(&id)).unwrap();

        let socket = dir.join(format!("raw{i}.sock"));
        let t = Instant::now();
        let mut child = Command::new(flick_testkit::fc_double_path())
            .arg("--api-sock")
            .arg(&socket)
            .arg("--id")
            .arg(&id)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while !socket.exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut conn = Raw::connect(&socket);
        conn.send("GET", "/", None);
        for call in &calls {
            conn.send(
                call.method.as_str(),
                &call.path,
                Some(&call.body.to_string()),
            );
        }
        let serial_body = format!("{{\"serial_out_path\":{:?}}}", serial.display().to_string());
        conn.send("PUT", "/serial", Some(&serial_body));
        conn.send(
            "PUT",
            "/actions",
            Some("{\"action_type\":\"InstanceStart\"}"),
        );
        raw_t.push(t.elapsed());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&socket);
    }
    let f = median(&mut flick_t);
    let r = median(&mut raw_t);
    let o = median(&mut off_t);
    println!("== start() up to InstanceStart accepted (median of {N}, process spawn included)");
    println!(
        "flick Host::create_vm + start : {:>8.2} ms",
        f.as_secs_f64() * 1e3
    );
    println!(
        "raw socket, same requests     : {:>8.2} ms",
        r.as_secs_f64() * 1e3
    );
    println!(
        "ratio flick/raw               : {:>8.2}x (target <= 1.1x)",
        f.as_secs_f64() / r.as_secs_f64()
    );
    println!(
        "flick without the view        : {:>8.2} ms ({:.2}x raw)",
        o.as_secs_f64() * 1e3,
        o.as_secs_f64() / r.as_secs_f64()
    );
}

fn staging(dir: &Path) {
    let source = dir.join("stage-src.img");
    let f = std::fs::File::create(&source).unwrap();
    f.set_len(1 << 30).unwrap();
    let chunk = vec![0xA5u8; 1 << 20];
    for i in 0..64u64 {
        f.write_all_at(&chunk, i * (16 << 20)).unwrap();
    }
    f.sync_all().unwrap();
    let alloc = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
    println!("== staging a 1 GiB sparse image with 64 MiB of data (tmpfs -> tmpfs, best of 3)");
    println!("source allocated: {} MiB", alloc(&source) >> 20);
    let run = |name: &str, f: &dyn Fn(&Path)| {
        let mut best = Duration::MAX;
        let mut bytes = 0;
        for i in 0..3 {
            let dest = dir.join(format!("stage-{name}-{i}.img"));
            let t = Instant::now();
            f(&dest);
            best = best.min(t.elapsed());
            bytes = alloc(&dest);
            std::fs::remove_file(&dest).unwrap();
        }
        println!(
            "{name:<24} {:>8.1} ms  {:>6} MiB allocated",
            best.as_secs_f64() * 1e3,
            bytes >> 20
        );
    };
    run("flick stage_file", &|d| {
        stage_file(&source, d, flick::ErrorCode::DriveStagingFailed).unwrap();
    });
    run("cp --sparse=always", &|d| cp(&source, d, "--sparse=always"));
    run("cp --sparse=never (full)", &|d| {
        cp(&source, d, "--sparse=never");
    });
}

fn cp(src: &Path, dst: &Path, flag: &str) {
    let ok = Command::new("cp")
        .arg(flag)
        .arg(src)
        .arg(dst)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn concurrency(rt: &tokio::runtime::Runtime, dir: &Path, kernel: &Path, rootfs: &Path) {
    let host = Arc::new(host(dir, "conc"));
    let cfg = config(kernel, rootfs);
    let start_n = |n: usize, round: usize| -> Duration {
        let host = Arc::clone(&host);
        let cfg = cfg.clone();
        rt.block_on(async move {
            let t = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let host = Arc::clone(&host);
                    let cfg = cfg.clone();
                    tokio::spawn(async move {
                        let vm = host.create_vm(format!("c{round}-{i}"), cfg).await.unwrap();
                        vm.start().await.unwrap();
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let elapsed = t.elapsed();
            host.cleanup().await.unwrap();
            elapsed
        })
    };
    let mut one: Vec<Duration> = (0..10).map(|r| start_n(1, r)).collect();
    let mut fifty: Vec<Duration> = (0..3).map(|r| start_n(50, 100 + r)).collect();
    let one = median(&mut one).as_secs_f64();
    let fifty = median(&mut fifty).as_secs_f64();
    let rate_one = 1.0 / one;
    let rate_fifty = 50.0 / fifty;
    println!("== 50 VMs started concurrently vs 1 VM (2 cores)");
    println!("1 VM   : {:>8.2} ms  -> {:>7.1} VMs/s", one * 1e3, rate_one);
    println!(
        "50 VMs : {:>8.2} ms  -> {:>7.1} VMs/s",
        fifty * 1e3,
        rate_fifty
    );
    println!(
        "per-VM rate ratio 50/1: {:.2}x (target >= 0.9x)",
        rate_fifty / rate_one
    );
}

struct Raw {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Raw {
    fn connect(socket: &PathBuf) -> Self {
        let s = UnixStream::connect(socket).unwrap();
        Self {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    fn send(&mut self, method: &str, path: &str, body: Option<&str>) {
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.writer.write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        let mut len = 0usize;
        self.reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 2"), "{method} {path}: {line}");
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).unwrap();
    }
}
