//! One benchmark report (harness = false): `cargo bench --bench report`.
//!
//! Runs every benchmark and writes `target/benchmark-report.md` (also printed): the machine, the
//! date and, per figure, the comparison measured in the same run — ratios first, absolute
//! figures second:
//! 1. promotion downtime vs the manual procedure from the seeds (stop, copy a backup, replace the
//!    binary, start) scripted in shell, both polled on `/health` every 10 ms;
//! 2. rollback vs the manual restore (stop, copy the backup back, old binary, start);
//! 3. sha256 throughput vs `sha256sum` on the same 200 MB file;
//! 4. idle daemon CPU and memory over a minute (vs timer mode: nothing resident);
//! 5. an unchanged-feed poll: requests and rate-limit units spent, vs an unconditional poll;
//! 6. key planning for 100,000 nodes (REST and gRPC);
//! 7. an end-to-end staged upgrade of a 10,000-node database vs the manual procedure;
//! 8. peak memory while downloading and verifying a 200 MB release;
//! 9. the connectivity probe on every rig version vs a real `tailscaled` joining with an
//!    ephemeral key (what an admin does by hand to see that clients can register).
//!
//! Everything runs on 127.0.0.1 against the stand-in or the rig's real server; the numbers are
//! for this machine only.
#![allow(clippy::disallowed_methods)] // spawns the real binaries and reads the rig's environment

use testkit as support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{code, text, Sandbox};

const MB: usize = 1024 * 1024;

static OUT: Mutex<String> = Mutex::new(String::new());

/// Appends a line to the report and prints it.
macro_rules! w {
    ($($t:tt)*) => {{
        let line = format!($($t)*);
        println!("{line}");
        let mut o = OUT.lock().expect("report");
        o.push_str(&line);
        o.push('\n');
    }};
}

/// Summary rows: (figure, ratio, headwarden, comparison).
static SUMMARY: Mutex<Vec<[String; 4]>> = Mutex::new(Vec::new());

fn summary(figure: &str, ratio: String, ours: String, theirs: String) {
    SUMMARY
        .lock()
        .expect("summary")
        .push([figure.into(), ratio, ours, theirs]);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` discovery
    }
    let only: Option<String> = std::env::var("HEADWARDEN_BENCH_ONLY").ok();
    // `HEADWARDEN_BENCH_ONLY=downtime,feed` runs a subset (the report says which ran).
    let benches: [(&str, fn()); 12] = [
        ("downtime", promotion_downtime),
        ("rollback", rollback_time),
        ("real-downtime", real_promotion_downtime),
        ("real-rollback", real_rollback_time),
        ("sha256", sha256_throughput),
        ("daemon", idle_daemon),
        ("feed", unchanged_feed),
        ("keys", key_planning),
        ("e2e", end_to_end_10k),
        ("real-e2e", real_end_to_end_fleet),
        ("memory", peak_memory),
        ("probe", connectivity_probe),
    ];
    for (name, bench) in benches {
        if only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|x| x == name))
        {
            bench();
        }
    }
    let body = std::mem::take(&mut *OUT.lock().expect("report"));
    let mut report = format!(
        "# headwarden benchmark report\n\nmachine: {} cores, {} {}, {}; date: {}; command: `cargo bench --bench report`\n\n## Summary (ratios first)\n\n| figure | ratio | headwarden | comparison |\n|---|---|---|---|\n",
        num_cpus(),
        std::env::consts::OS,
        std::env::consts::ARCH,
        cpu_model(),
        now()
    );
    for [f, r, o, t] in SUMMARY.lock().expect("summary").iter() {
        report.push_str(&format!("| {f} | **{r}** | {o} | {t} |\n"));
    }
    report.push('\n');
    report.push_str(&body);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/benchmark-report.md");
    std::fs::write(&path, &report).expect("write report");
    println!(
        "\n{}",
        &report[..report
            .find("\n## ")
            .map_or(report.len(), |i| report[i + 1..]
                .find("\n## ")
                .map_or(report.len(), |j| i + 1 + j))]
    );
    println!("written to {}", path.display());
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
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
    w!("## sha256 streaming (200 MB, best of 3)\n");
    w!("| hasher | MB/s | ratio to sha256sum |\n|---|---|---|");
    w!(
        "| headwarden (`verify::sha256_file`, 256 KiB chunks) | {:.0} | **{:.2}** |",
        mbps(ours),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    w!("| sha256sum | {:.0} | 1.00 |\n", mbps(theirs));
    summary(
        "sha256 throughput, 200 MB file",
        format!(
            "{:.2}× sha256sum",
            theirs.as_secs_f64() / ours.as_secs_f64()
        ),
        format!("{:.0} MB/s", mbps(ours)),
        format!("{:.0} MB/s (`sha256sum`)", mbps(theirs)),
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
    let mut child = std::process::Command::new(support::hw())
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
    w!("## Memory while downloading and verifying a 200 MB release\n");
    w!("| figure | value |\n|---|---|");
    w!(
        "| peak RSS (VmHWM) of `headwarden upgrade` | **{:.1} MB** |",
        hwm_kb as f64 / 1024.0
    );
    w!(
        "| whole upgrade incl. staging and promotion | {:.1} s |\n",
        t.elapsed().as_secs_f64()
    );
    summary(
        "peak memory, downloading + verifying a 200 MB release",
        format!("{:.3}× the file", hwm_kb as f64 / 1024.0 / 200.0),
        format!("{:.1} MB RSS", hwm_kb as f64 / 1024.0),
        "200 MB (holding the file in memory)".into(),
    );
}

/// The seeds' manual procedure, scripted as an admin would: stop, copy a backup, replace the
/// binary, start, wait until it answers. Returns the script's path.
fn manual_upgrade_script(sb: &Sandbox, new_binary: &std::path::Path) -> std::path::PathBuf {
    let d = sb.path("prod");
    let script = sb.path("manual-upgrade.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\nD='{d}'\n\"$D/service.sh\" stop\ncp \"$D/lib/db.sqlite\" \"$D/lib/db.sqlite.bak\"\ncp \"$D/bin/headscale\" \"$D/bin/headscale.old\"\ninstall -m 0755 '{new}' \"$D/bin/headscale.new\" && mv \"$D/bin/headscale.new\" \"$D/bin/headscale\"\n\"$D/service.sh\" start\nn=0; until curl -sf http://{addr}/health >/dev/null; do n=$((n+1)); [ $n -lt 6000 ] || exit 1; sleep 0.01; done\n",
            d = d.display(),
            new = new_binary.display(),
            addr = prod_addr(sb)
        ),
    )
    .expect("script");
    chmod_x(&script);
    script
}

fn manual_rollback_script(sb: &Sandbox) -> std::path::PathBuf {
    let d = sb.path("prod");
    let script = sb.path("manual-rollback.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\nD='{d}'\n\"$D/service.sh\" stop\nrm -f \"$D/lib/db.sqlite-wal\" \"$D/lib/db.sqlite-shm\"\ncp \"$D/lib/db.sqlite.bak\" \"$D/lib/db.sqlite\"\ncp \"$D/bin/headscale.old\" \"$D/bin/headscale\"\n\"$D/service.sh\" start\nn=0; until curl -sf http://{addr}/health >/dev/null; do n=$((n+1)); [ $n -lt 6000 ] || exit 1; sleep 0.01; done\n",
            d = d.display(),
            addr = prod_addr(sb)
        ),
    )
    .expect("script");
    chmod_x(&script);
    script
}

fn chmod_x(p: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn run_script(p: &std::path::Path) -> Duration {
    let t = Instant::now();
    let out = std::process::Command::new(p).output().expect("script");
    assert!(
        out.status.success(),
        "{}: {}",
        p.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `headwarden upgrade --yes` under a 10 ms `/health` poller: the longest gap it saw and the
/// run's journaled steps.
fn polled_upgrade(sb: &Sandbox, expect_code: i32) -> (Duration, Vec<(String, i64)>) {
    let mut out = None;
    let gap = with_poller(prod_addr(sb), || out = Some(sb.hw(&["upgrade", "--yes"])));
    let out = out.expect("ran");
    assert_eq!(code(&out), expect_code, "{}", text(&out));
    (gap, steps_of_last_run(sb))
}

/// The promotion window from the journal: stop + backup + switch + start-to-healthy.
fn window_ms(steps: &[(String, i64)]) -> i64 {
    steps
        .iter()
        .filter(|(n, _)| matches!(n.as_str(), "stop" | "backup" | "switch" | "start"))
        .map(|(_, ms)| ms)
        .sum()
}

/// The median of `n` runs of `f` (by duration), each on a fresh sandbox.
fn median_of<T>(n: usize, mut f: impl FnMut() -> (Duration, T)) -> (Duration, T) {
    let mut runs: Vec<(Duration, T)> = (0..n).map(|_| f()).collect();
    runs.sort_by_key(|r| r.0);
    runs.swap_remove(n / 2)
}

/// One promotion setup: production, the release, and the new binary the manual script installs.
struct Setup {
    label: &'static str,
    fresh: fn() -> (Sandbox, std::path::PathBuf),
    failing: fn() -> Sandbox,
    failing_code: i32,
}

const STAND_IN: Setup = Setup {
    label: "0.27.1 → 0.28.0, the stand-in",
    fresh: || {
        let sb = Sandbox::new("0.27.1");
        sb.release("0.28.0", "none");
        let asset = sb.asset_path("0.28.0");
        (sb, asset)
    },
    failing: || {
        let sb = Sandbox::new("0.27.1");
        sb.release("0.28.0", "prod-crash");
        sb
    },
    failing_code: 3,
};

/// The real server (scripts/rig): 0.28.0 → the newest 0.29.x, production running as `nobody`.
const REAL: Setup = Setup {
    label: "real Headscale 0.28.0 → 0.29.3",
    fresh: || {
        let sb = Sandbox::new_real("0.28.0");
        sb.release_real("0.29.3");
        (sb, support::headscale("0.29.3"))
    },
    failing: || {
        let sb = Sandbox::new_real("0.28.0");
        sb.release_failing_on_production("0.29.3");
        sb
    },
    failing_code: 3,
};

fn promotion_downtime() {
    downtime(&STAND_IN, "promotion downtime");
}

fn real_promotion_downtime() {
    downtime(&REAL, "promotion downtime, real server");
}

fn rollback_time() {
    rollback(&STAND_IN, "rollback");
}

fn real_rollback_time() {
    rollback(&REAL, "rollback, real server");
}

fn downtime(setup: &Setup, figure: &str) {
    let (ours, steps) = median_of(3, || {
        let (sb, _) = (setup.fresh)();
        let (unavailable, steps) = polled_upgrade(&sb, 0);
        // From the stop to healthy again: the journaled steps, or the poller when it saw more.
        let covered = window_ms(&steps);
        (
            unavailable.max(Duration::from_millis(covered as u64)),
            steps,
        )
    });
    // The script runs from its stop to the first healthy answer: that is its downtime.
    let (manual, ()) = median_of(3, || {
        let (sb, binary) = (setup.fresh)();
        let script = manual_upgrade_script(&sb, &binary);
        (run_script(&script), ())
    });
    let get = |n: &str| steps.iter().find(|(s, _)| s == n).map_or(0, |(_, ms)| *ms);
    let (stop, backup, switch, start) = (get("stop"), get("backup"), get("switch"), get("start"));
    let covered = (stop + backup + switch + start) as f64;
    w!(
        "## Promotion downtime ({}, median of 3; from the stop to the first healthy answer)\n",
        setup.label
    );
    w!("| | ms |\n|---|---|");
    w!(
        "| headwarden: production unavailable | **{:.0}** |",
        ms(ours)
    );
    w!(
        "| manual procedure (stop, cp backup, replace binary, start): unavailable | {:.0} |",
        ms(manual)
    );
    w!("| headwarden steps: stop / backup (online copy of the stopped database, config, noise key) / switch / start-to-healthy | {stop} / {backup} / {switch} / {start} |");
    w!(
        "| headwarden overhead (unavailable − steps; poll granularity ±10 ms) | {:.0} |\n",
        (ms(ours) - covered).max(0.0)
    );
    w!("headwarden does more inside the window than the script (a backup of the stopped database through SQLite's backup API, config and noise key; its integrity check runs after the start) and staged the release beforehand; the script has no staging, no verification and no way back but the admin.\n");
    summary(
        figure,
        format!("{:.2}× manual", ms(ours) / ms(manual).max(1.0)),
        format!("{:.0} ms", ms(ours)),
        format!("{:.0} ms (manual shell procedure)", ms(manual)),
    );
}

fn rollback(setup: &Setup, figure: &str) {
    let (ours, rollback_ms) = median_of(3, || {
        let sb = (setup.failing)();
        let (unavailable, steps) = polled_upgrade(&sb, setup.failing_code);
        let rb = steps
            .iter()
            .rev()
            .find(|(s, _)| s == "rollback")
            .map_or(0, |(_, ms)| *ms);
        (Duration::from_millis(rb as u64), unavailable)
    });
    let (manual, ()) = median_of(3, || {
        let (sb, binary) = (setup.fresh)();
        run_script(&manual_upgrade_script(&sb, &binary));
        (run_script(&manual_rollback_script(&sb)), ())
    });
    w!("## Rollback ({}, median of 3)\n", setup.label);
    w!("| | ms |\n|---|---|");
    w!("| headwarden: failure detected → old version healthy on its restored database, noise key and config | **{:.0}** |", ms(ours));
    w!(
        "| manual restore (stop, cp backup back, old binary, start, wait for health) | {:.0} |",
        ms(manual)
    );
    w!(
        "| headwarden: production unavailable in total for the failed upgrade (poller) | {:.0} |\n",
        ms(rollback_ms)
    );
    summary(
        figure,
        format!("{:.2}× manual", ms(ours) / ms(manual).max(1.0)),
        format!("{:.0} ms", ms(ours)),
        format!(
            "{:.0} ms (manual restore script, once someone noticed)",
            ms(manual)
        ),
    );
}

fn proc_stat_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // fields after ")": state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14)
    f.get(11..15).map_or(0, |s| s.iter().sum())
}

fn status_kb(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(key).map(|v| {
                    v.trim_start_matches(':')
                        .trim()
                        .trim_end_matches(" kB")
                        .trim()
                        .parse()
                        .unwrap_or(0.0)
                })
            })
        })
        .unwrap_or(0.0)
}

fn idle_daemon() {
    let mut sb = Sandbox::new("0.27.1");
    sb.extra_top =
        "schedule:\n  upgrade: \"0 4 1 1 *\"\n  keys: \"0 4 1 1 *\"\n  audit: \"0 4 1 1 *\"\n"
            .into();
    sb.write_config();
    let cfg = sb.config_path().display().to_string();
    let mut child = std::process::Command::new(support::hw())
        .args(["--config", &cfg, "daemon"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("daemon");
    std::thread::sleep(Duration::from_secs(3));
    let pid = child.id();
    let t0 = proc_stat_ticks(pid);
    let start = Instant::now();
    let mut rss_max: f64 = 0.0;
    while start.elapsed() < Duration::from_secs(60) {
        rss_max = rss_max.max(status_kb(pid, "VmRSS"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let ticks = proc_stat_ticks(pid) - t0;
    let hz = 100.0; // USER_HZ on Linux
    let cpu_pct = ticks as f64 / hz / start.elapsed().as_secs_f64() * 100.0;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    w!("## Idle daemon over one minute (jobs not due; chat flush every 30 s)\n");
    w!("| figure | value |\n|---|---|");
    w!(
        "| CPU (daemon + its flush children) | **{cpu_pct:.2} %** ({ticks} ticks in {:.0} s) |",
        start.elapsed().as_secs_f64()
    );
    w!(
        "| resident memory (max VmRSS) | **{:.1} MB** |",
        rss_max / 1024.0
    );
    w!("| timer mode (`headwarden run` from systemd) for comparison | 0 MB resident between runs |\n");
    summary(
        "idle daemon, one minute",
        format!("{cpu_pct:.2} % CPU"),
        format!("{:.1} MB RSS", rss_max / 1024.0),
        "timer mode: nothing resident".into(),
    );
}

fn unchanged_feed() {
    let sb = Sandbox::new("0.27.1");
    sb.release("0.28.0", "none");
    sb.release("0.27.2", "none");
    let remaining = |o: &std::process::Output| -> i64 {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("check json");
        v["rate_remaining"].as_i64().unwrap_or(-1)
    };
    let first = sb.hw(&["check", "--json"]);
    let r1 = remaining(&first);
    let log_len = |sb: &Sandbox| {
        std::fs::read_to_string(sb.path("feed/requests.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let before = log_len(&sb);
    let t = Instant::now();
    let second = sb.hw(&["check", "--json"]);
    let poll = t.elapsed();
    let requests = log_len(&sb) - before;
    let r2 = remaining(&second);
    let v: serde_json::Value = serde_json::from_slice(&second.stdout).expect("json");
    // An unconditional poll, as a cron'd curl does it.
    let url = format!("http://{}/repos/juanfont/headscale/releases", sb.feed_addr);
    let naive = std::process::Command::new("curl")
        .args(["-sD", "-", "-o", "/dev/null", &url])
        .output()
        .expect("curl");
    let headers = String::from_utf8_lossy(&naive.stdout).to_lowercase();
    let naive_remaining: i64 = headers
        .lines()
        .find_map(|l| l.strip_prefix("x-ratelimit-remaining:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1);
    w!("## Polling an unchanged feed\n");
    w!("| | requests | rate-limit units | answer |\n|---|---|---|---|");
    w!(
        "| headwarden `check` (ETag, `If-None-Match`) | {requests} | **{}** | {} in {:.0} ms (whole command) |",
        r1 - r2,
        if v["feed_not_modified"] == true { "304 Not Modified" } else { "200" },
        ms(poll)
    );
    w!(
        "| unconditional poll (curl) | 1 | {} | 200 with the full listing |\n",
        r2 - naive_remaining
    );
    summary(
        "unchanged-feed poll",
        format!("{} vs {} rate-limit units", r1 - r2, r2 - naive_remaining),
        format!("{requests} request, 304"),
        "unconditional poll: 1 request, 200, 1 unit".into(),
    );
}

fn vm_hwm_mb() -> f64 {
    status_kb(std::process::id(), "VmHWM") / 1024.0
}

fn key_planning() {
    use headwarden::keys::plan::{plan, Policy};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    w!("## Key planning for 100,000 nodes\n");
    w!("| transport | list nodes (API) | plan (pure) | peak RSS of the bench process |\n|---|---|---|---|");
    let mut plan_ms = Vec::new();
    // gRPC first: VmHWM only grows, so each row's figure is an upper bound for that transport.
    for (version, socket) in [("0.29.2", true), ("0.30.0", false)] {
        let mut sb = Sandbox::new(version);
        sb.prod_cmd(&[
            "debug",
            "seed",
            "--users",
            "1000",
            "--nodes-per-user",
            "100",
            "--age-days",
            "80",
            "--prefix",
            "bench",
        ]);
        sb.enable_api(socket);
        let settings = headwarden::settings::load(&sb.config_path()).expect("config");
        let (nodes, list_time) = rt.block_on(async {
            let api = headwarden::headscale::api::ApiClient::connect(&settings)
                .await
                .expect("connect");
            let t = Instant::now();
            let nodes = api.list_nodes().await.expect("list");
            (nodes, t.elapsed())
        });
        assert!(nodes.len() >= 100_000, "{}", nodes.len());
        let policy = Policy::from_settings(&settings.keys);
        let t = Instant::now();
        let plans = plan(
            &nodes,
            &policy,
            &HashMap::new(),
            &HashMap::new(),
            headwarden::state::now(),
        );
        let plan_time = t.elapsed();
        assert_eq!(plans.len(), nodes.len());
        plan_ms.push(ms(plan_time));
        let transport = if socket {
            format!("gRPC, unix socket ({version})")
        } else {
            format!("REST, TCP + API key ({version})")
        };
        w!(
            "| {transport} | {:.2} s | **{:.0} ms** | {:.0} MB |",
            list_time.as_secs_f64(),
            ms(plan_time),
            vm_hwm_mb()
        );
    }
    w!("\nListing is dominated by the stand-in producing the response.\n");
    let worst = plan_ms.iter().copied().fold(0.0, f64::max);
    summary(
        "key planning, 100,000 nodes",
        format!("{:.3}× the 1 s target", worst / 1000.0),
        format!("{worst:.0} ms (slower transport)"),
        "target < 1 s, < 300 MB".into(),
    );
}

fn seed_10k(sb: &Sandbox) {
    sb.prod_cmd(&[
        "debug",
        "seed",
        "--users",
        "100",
        "--nodes-per-user",
        "100",
        "--age-days",
        "30",
        "--prefix",
        "fleet",
    ]);
}

/// Real Headscale 0.28.0 with 1,001 nodes (one real client's node cloned in the database).
/// 10,000 nodes in one allow-all tailnet did not start within two minutes on this machine (real
/// 0.28.0 sat after "Opening database"), so the real-server figure is for 1,001 nodes.
/// A new user on real production and a pre-auth key for it (`extra`: e.g. `--ephemeral`).
fn real_user_key(sb: &Sandbox, user: &str, extra: &[&str]) -> String {
    let made: serde_json::Value =
        serde_json::from_str(&sb.prod_cmd(&["users", "create", user, "-o", "json"])).expect("user");
    let id = made["id"].to_string();
    let mut args = vec!["preauthkeys", "create", "--user", &id, "--expiration", "1h"];
    args.extend_from_slice(extra);
    args.extend(["-o", "json"]);
    let key: serde_json::Value = serde_json::from_str(&sb.prod_cmd(&args)).expect("key");
    key["key"].as_str().expect("key").to_string()
}

/// The connectivity probe (`headwarden smoke`, its `connectivity` line) on every rig version,
/// next to what an admin does by hand to see that a client can register: a fresh `tailscaled`
/// brought up with an ephemeral key until `tailscale up` returns.
fn connectivity_probe() {
    let list = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rig/versions"),
    )
    .expect("rig/versions");
    let versions: Vec<&str> = list
        .lines()
        .filter_map(|l| l.strip_prefix("headscale "))
        .map(str::trim)
        .collect();
    w!("## The connectivity probe on the real server (median of 3, one real client as its peer)\n");
    w!("| version | headwarden probe (key fetch, handshake, mint key, register, map, cleanup) | a real `tailscaled` joining with an ephemeral key |\n|---|---|---|");
    let (mut ours_all, mut theirs_all) = (Vec::new(), Vec::new());
    for v in &versions {
        let sb = Sandbox::new_real(v);
        let _peer = support::Client::join(&sb, "peer", &real_user_key(&sb, "alice", &[]));
        let (ours, ()) = median_of(3, || {
            let out = sb.hw(&["--json", "smoke"]);
            assert_eq!(code(&out), 0, "{}", text(&out));
            let report: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("smoke --json");
            let probe = report["results"]
                .as_array()
                .and_then(|r| r.iter().find(|c| c["check"] == "connectivity"))
                .expect("connectivity ran");
            (
                Duration::from_millis(probe["elapsed_ms"].as_u64().expect("ms")),
                (),
            )
        });
        let mut round = 0;
        let (theirs, ()) = median_of(3, || {
            round += 1;
            let key = real_user_key(&sb, &format!("manual{round}"), &["--ephemeral"]);
            let login = format!("http://{}", sb.prod_setting("listen_addr"));
            let dir = sb.path(&format!("clients/manual{round}"));
            let t = Instant::now();
            let client = support::Client::join_at(&dir, &format!("manual{round}"), &login, &key);
            let took = t.elapsed();
            drop(client);
            (took, ())
        });
        w!("| {v} | **{:.0} ms** | {:.0} ms |", ms(ours), ms(theirs));
        ours_all.push(ms(ours));
        theirs_all.push(ms(theirs));
    }
    w!("\nThe probe runs on staging before production is touched and on production before commit; the manual check needs a spare machine, leaves a node behind until the ephemeral timeout, and proves nothing about a candidate that is not running yet.\n");
    let (o, t) = (
        ours_all.iter().copied().fold(0.0, f64::max),
        theirs_all.iter().copied().fold(0.0, f64::max),
    );
    summary(
        "connectivity probe, real server (slowest version)",
        format!("{:.2}× manual", o / t.max(1.0)),
        format!("{o:.0} ms"),
        format!("{t:.0} ms (a real tailscaled joining)"),
    );
}

fn real_fleet() -> Sandbox {
    let sb = Sandbox::new_real("0.28.0");
    let key = real_user_key(&sb, "fleet", &[]);
    let client = support::Client::join(&sb, "template", &key);
    sb.real_bulk_nodes(1_000);
    drop(client);
    sb.release_real("0.29.3");
    sb
}

fn real_end_to_end_fleet() {
    let sb = real_fleet();
    let t = Instant::now();
    let (polled, steps) = polled_upgrade(&sb, 0);
    let total = t.elapsed();
    let unavailable = Duration::from_millis(window_ms(&steps) as u64);
    let step = |n: &str| steps.iter().find(|(s, _)| s == n).map_or(0, |(_, ms)| *ms);
    let staging: i64 = steps
        .iter()
        .filter(|(s, _)| s.starts_with("stage"))
        .map(|(_, ms)| ms)
        .sum();
    let m = real_fleet();
    let script = manual_upgrade_script(&m, &support::headscale("0.29.3"));
    let t = Instant::now();
    let manual_down = run_script(&script);
    let manual_total = t.elapsed();
    w!("## End-to-end staged upgrade of a 1,001-node database on the real server (0.28.0 → 0.29.3)\n");
    w!("| | headwarden | manual procedure |\n|---|---|---|");
    w!(
        "| total wall time | **{:.1} s** | {:.1} s |",
        total.as_secs_f64(),
        manual_total.as_secs_f64()
    );
    w!(
        "| production unavailable (stop → first healthy answer) | **{:.0} ms** | {:.0} ms |",
        ms(unavailable),
        ms(manual_down)
    );
    w!(
        "| … stop / backup / switch / start-to-healthy | {} / {} / {} / {} ms | — |",
        step("stop"),
        step("backup"),
        step("switch"),
        step("start")
    );
    w!(
        "| longest gap in 10 ms health polls, smoke load included | {:.0} ms | — |",
        ms(polled)
    );
    w!("| staging (copy of the database, the real migration, smoke incl. data parity over 1,001 nodes) | {staging} ms | — |\n");
    summary(
        "staged upgrade, 1,001 nodes, real server: production unavailable",
        format!("{:.2}× manual", ms(unavailable) / ms(manual_down).max(1.0)),
        format!(
            "{:.0} ms ({:.1} s in all, staging included)",
            ms(unavailable),
            total.as_secs_f64()
        ),
        format!(
            "{:.0} ms ({:.1} s, unverified, unstaged)",
            ms(manual_down),
            manual_total.as_secs_f64()
        ),
    );
}

fn end_to_end_10k() {
    let sb = Sandbox::new("0.27.1");
    seed_10k(&sb);
    sb.release("0.28.0", "none");
    let t = Instant::now();
    let (polled, steps) = polled_upgrade(&sb, 0);
    let total = t.elapsed();
    let covered = window_ms(&steps);
    // Stop to healthy, from the journal; the poller also counts health checks that went
    // unanswered while the post-switch smoke (data parity over 10,000 nodes) loaded the server.
    let unavailable = Duration::from_millis(covered as u64);
    let step = |n: &str| steps.iter().find(|(s, _)| s == n).map_or(0, |(_, ms)| *ms);
    let sum = |pred: &dyn Fn(&str) -> bool| -> i64 {
        steps
            .iter()
            .filter(|(s, _)| pred(s))
            .map(|(_, ms)| ms)
            .sum()
    };
    let download = sum(&|s| s == "download");
    let staging = sum(&|s| s.starts_with("stage"));
    let backup = sum(&|s| s == "backup");

    let m = Sandbox::new("0.27.1");
    seed_10k(&m);
    m.release("0.28.0", "none");
    let script = manual_upgrade_script(&m, &m.asset_path("0.28.0"));
    let maddr = prod_addr(&m);
    let t = Instant::now();
    let _ = maddr;
    let manual_down = run_script(&script);
    let manual_total = t.elapsed();
    w!("## End-to-end staged upgrade of a 10,000-node database (0.27.1 → 0.28.0)\n");
    w!("| | headwarden | manual procedure |\n|---|---|---|");
    w!(
        "| total wall time | **{:.1} s** | {:.1} s |",
        total.as_secs_f64(),
        manual_total.as_secs_f64()
    );
    w!(
        "| production unavailable (stop → first healthy answer) | **{:.0} ms** | {:.0} ms |",
        ms(unavailable),
        ms(manual_down)
    );
    w!(
        "| … stop / backup / switch / start-to-healthy | {} / {} / {} / {} ms | — |",
        step("stop"),
        step("backup"),
        step("switch"),
        step("start")
    );
    w!(
        "| longest gap in 10 ms health polls, smoke load included | {:.0} ms | — |",
        ms(polled)
    );
    w!("| download + verify | {download} ms | — |");
    w!("| staging (copy of the database, migration, smoke incl. data parity over 10,000 nodes) | {staging} ms | — |");
    w!("| backup of the stopped database (+ integrity_check) | {backup} ms | plain cp |\n");
    summary(
        "staged upgrade, 10,000 nodes: production unavailable",
        format!("{:.2}× manual", ms(unavailable) / ms(manual_down).max(1.0)),
        format!(
            "{:.0} ms ({:.1} s in all, staging included)",
            ms(unavailable),
            total.as_secs_f64()
        ),
        format!(
            "{:.0} ms ({:.1} s, unverified, unstaged)",
            ms(manual_down),
            manual_total.as_secs_f64()
        ),
    );
}
