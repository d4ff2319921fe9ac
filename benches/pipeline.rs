//! Whole-system benchmarks (harness = false): `cargo bench --bench pipeline`.
//!
//! Prints a markdown report:
//! 1. sha256 streaming throughput of headwarden's hasher vs `sha256sum` on the same 200 MB file.
//! 2. Production unavailability during a promotion, from a poller hitting `/health` every 10 ms,
//!    broken into the journaled stop / backup / switch / start-to-healthy durations, and
//!    headwarden's own overhead (unavailability not covered by those steps).
//! 3. Rollback time: from the failure being detected to production healthy again.
//! 4. Peak memory (VmHWM) of `headwarden upgrade` downloading and verifying a 200 MB release.
//!
//! Everything runs on 127.0.0.1 against the stand-in; the numbers are for this machine only.

#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{code, text, Sandbox};

const MB: usize = 1024 * 1024;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` discovery
    }
    println!("# headwarden benchmark report\n");
    println!(
        "machine: {} cores, {}; date: {}\n",
        num_cpus(),
        std::env::consts::ARCH,
        now()
    );
    sha256_throughput();
    let (unavailable_ms, steps) = promotion_downtime();
    rollback_time(unavailable_ms, &steps);
    peak_memory();
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn now() -> String {
    String::from_utf8_lossy(
        &std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%dT%H:%M:%SZ")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .trim()
    .to_string()
}

fn big_file(path: &std::path::Path, size: usize) {
    let mut f = std::fs::File::create(path).expect("create");
    let mut block = vec![0u8; MB];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in 0..size / MB {
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        block[0] = chunk as u8;
        f.write_all(&block).expect("write");
    }
    f.sync_all().expect("sync");
}

fn sha256_throughput() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("200mb.bin");
    big_file(&file, 200 * MB);
    let best = |f: &dyn Fn() -> String| -> (Duration, String) {
        let mut best = Duration::MAX;
        let mut out = String::new();
        for _ in 0..3 {
            let t = Instant::now();
            out = f();
            best = best.min(t.elapsed());
        }
        (best, out)
    };
    let (ours, h1) = best(&|| headwarden::verify::sha256_file(&file).expect("hash"));
    let (theirs, h2) = best(&|| {
        let o = std::process::Command::new("sha256sum")
            .arg(&file)
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    });
    assert_eq!(h1, h2, "both hashers agree");
    let mbps = |d: Duration| 200.0 / d.as_secs_f64();
    println!("## sha256 streaming (200 MB, best of 3)\n");
    println!("| hasher | MB/s | ratio to sha256sum |\n|---|---|---|");
    println!(
        "| headwarden (`verify::sha256_file`, 256 KiB chunks) | {:.0} | **{:.2}** |",
        mbps(ours),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    println!("| sha256sum | {:.0} | 1.00 |\n", mbps(theirs));
}

fn health_ok(addr: &str) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_millis(50))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

fn prod_addr(sb: &Sandbox) -> String {
    let cfg = std::fs::read_to_string(sb.path("prod/etc/config.yaml")).expect("cfg");
    cfg.lines()
        .find_map(|l| l.strip_prefix("listen_addr: "))
        .expect("listen_addr")
        .trim()
        .to_string()
}

/// Polls /health every 10 ms while `f` runs; returns the longest continuous unavailability.
fn with_poller(addr: String, f: impl FnOnce()) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(Mutex::new(Duration::ZERO));
    let poller = {
        let (stop, worst) = (stop.clone(), worst.clone());
        std::thread::spawn(move || {
            let mut down_since: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match (health_ok(&addr), down_since) {
                    (false, None) => down_since = Some(t),
                    (true, Some(s)) => {
                        let mut w = worst.lock().expect("lock");
                        *w = (*w).max(t - s);
                        down_since = None;
                    }
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(10).saturating_sub(t.elapsed()));
            }
        })
    };
    f();
    stop.store(true, Ordering::Relaxed);
    poller.join().expect("poller");
    let w = *worst.lock().expect("lock");
    w
}

fn steps_of_last_run(sb: &Sandbox) -> Vec<(String, i64)> {
    let out = sb.hw(&["history", "--json", "--limit", "1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("history json");
    v[0]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("").to_string(),
                s["elapsed_ms"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

fn promotion_downtime() -> (f64, Vec<(String, i64)>) {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    let addr = prod_addr(&sb);
    let mut out = None;
    let unavailable = with_poller(addr, || out = Some(sb.hw(&["upgrade", "--yes"])));
    let out = out.expect("ran");
    assert_eq!(code(&out), 0, "{}", text(&out));
    let steps = steps_of_last_run(&sb);
    let get = |n: &str| steps.iter().find(|(s, _)| s == n).map_or(0, |(_, ms)| *ms);
    let (stop, backup, switch, start) = (get("stop"), get("backup"), get("switch"), get("start"));
    let covered = (stop + backup + switch + start) as f64;
    let unavailable_ms = unavailable.as_secs_f64() * 1000.0;
    println!("## Promotion downtime (0.27.1 → 0.28.0, health polled every 10 ms)\n");
    println!("| part | ms |\n|---|---|");
    println!("| production unavailable (poller) | **{unavailable_ms:.0}** |");
    println!("| stop (service manager) | {stop} |\n| backup (online copy + integrity_check) | {backup} |\n| switch (symlink rename) | {switch} |\n| start to healthy | {start} |");
    println!(
        "| headwarden overhead (unavailable − steps; poll granularity ±10 ms) | {:.0} |\n",
        (unavailable_ms - covered).max(0.0)
    );
    (unavailable_ms, steps)
}

fn rollback_time(_: f64, _: &[(String, i64)]) {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "prod-crash");
    let addr = prod_addr(&sb);
    let mut out = None;
    let unavailable = with_poller(addr, || out = Some(sb.hw(&["upgrade", "--yes"])));
    let out = out.expect("ran");
    assert_eq!(code(&out), 3, "{}", text(&out));
    let steps = steps_of_last_run(&sb);
    let get = |n: &str| {
        steps
            .iter()
            .rev()
            .find(|(s, _)| s == n)
            .map_or(0, |(_, ms)| *ms)
    };
    println!("## Rollback (0.28.0 crashes on production start)\n");
    println!("| part | ms |\n|---|---|");
    println!(
        "| failed start detected (service reported not running) | {} |",
        get("start")
    );
    println!(
        "| rollback: failure detected → old version healthy on restored data | **{}** |",
        get("rollback")
    );
    println!(
        "| production unavailable in total (poller) | {:.0} |\n",
        unavailable.as_secs_f64() * 1000.0
    );
}

fn peak_memory() {
    let sb = Sandbox::new("0.27.1");
    sb.release_with("0.28.0", "none", None);
    // Pad the launcher to 200 MB (the shell execs before reading the padding) and re-list it.
    let asset = sb.asset_path("0.28.0");
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&asset)
            .expect("asset");
        let pad = vec![b'#'; MB];
        for _ in 0..200 {
            f.write_all(&pad).expect("pad");
        }
    }
    let name = asset
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let sum = headwarden::verify::sha256_file(&asset).expect("hash");
    let sums_path = asset.with_file_name("checksums.txt");
    let sums: String = std::fs::read_to_string(&sums_path)
        .expect("sums")
        .lines()
        .map(|l| {
            if l.ends_with(&format!("  {name}")) {
                format!("{sum}  {name}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&sums_path, sums).expect("sums");
    let cfg = sb.config_path().display().to_string();
    let t = Instant::now();
    let mut child = std::process::Command::new(support::HW)
        .args(["--config", &cfg, "upgrade", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut hwm_kb = 0u64;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            if let Some(v) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
                hwm_kb = hwm_kb.max(v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0));
            }
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("## Memory while downloading and verifying a 200 MB release\n");
    println!("| figure | value |\n|---|---|");
    println!(
        "| peak RSS (VmHWM) of `headwarden upgrade` | **{:.1} MB** |",
        hwm_kb as f64 / 1024.0
    );
    println!(
        "| whole upgrade incl. staging and promotion | {:.1} s |\n",
        t.elapsed().as_secs_f64()
    );
}
