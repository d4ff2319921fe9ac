//! The binaries under test (headwarden, and the stand-in built once per process) and running
//! them; small helpers on their output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root (the product's checkout).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/<profile>/`, where cargo puts the binaries of the test or bench that runs.
fn profile_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        // target/<profile>/deps/<test>-<hash>
        let deps = exe.parent().expect("deps dir");
        deps.parent().expect("profile dir").to_path_buf()
    })
}

/// The headwarden binary under test.
pub fn hw() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let p = profile_dir().join("headwarden");
        assert!(
            p.is_file(),
            "{} is missing: cargo builds it for the root package's tests and benches",
            p.display()
        );
        p.to_string_lossy().into_owned()
    })
}

/// The stand-in for this profile. `cargo test` builds it (its package's own integration test
/// needs the executable); a benchmark, or a copy older than its sources, is built here first
/// (`cargo build -p headscale-sim`, same profile and target directory).
pub fn sim_bin() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = profile_dir();
        let bin = dir.join("headscale-sim");
        let crate_dir = workspace().join("crates/headscale-sim");
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let stale = match built {
            None => true,
            Some(t) => newest_mtime(&crate_dir).is_some_and(|src| src > t),
        };
        if stale {
            let target_dir = dir.parent().expect("target dir");
            let mut build = Command::new(env!("CARGO"));
            build
                .current_dir(workspace())
                .args([
                    "build",
                    "--locked",
                    "--quiet",
                    "-p",
                    "headscale-sim",
                    "--bin",
                    "headscale-sim",
                ])
                .arg("--target-dir")
                .arg(target_dir);
            if dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo to build headscale-sim");
            assert!(
                status.success(),
                "cargo build -p headscale-sim failed ({status})"
            );
        }
        bin.to_string_lossy().into_owned()
    })
}

/// The newest modification time of the files under `dir` (sources of the stand-in).
fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let p = entry.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "target") {
                    stack.push(p);
                }
            } else if let Ok(t) = entry.metadata().and_then(|m| m.modified()) {
                newest = Some(newest.map_or(t, |n: std::time::SystemTime| n.max(t)));
            }
        }
    }
    newest
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `headwarden --config CONFIG ARGS` with `env` (and no fault injection but what `env` asks).
pub fn run_hw(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let cfg = config.display().to_string();
    let mut cmd = Command::new(hw());
    cmd.args(["--config", &cfg])
        .args(args)
        .stdin(Stdio::null())
        .env_remove("HEADWARDEN_CRASH_AT")
        .env_remove("HEADWARDEN_FAIL_AT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run headwarden")
}

/// The address a fixture server published once it listens (panics after 10 s).
pub fn wait_for_addr(addr_file: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(a) = std::fs::read_to_string(addr_file) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no address in {}",
            addr_file.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn sim(args: &[&str]) -> String {
    let out = Command::new(sim_bin())
        .args(args)
        .output()
        .expect("run headscale-sim");
    assert!(
        out.status.success(),
        "headscale-sim {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits up to a minute for `GET /health` on `addr`; panics naming `what` with `log()` (what the
/// server wrote) when it never answers.
pub fn wait_for_health(addr: &str, what: &str, log: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while http_get(addr, "/health").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never became healthy: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (no client crate needed for one status line).
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[allow(dead_code)]
pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// Changes an installed executable the way a hand edit would, and puts it in place by rename
/// (a running executable cannot be written to: ETXTBSY). Bytes go in before the stand-in's
/// appended release identity (headscale-sim's `fixtures::launcher`), so the file still runs as
/// the same release, only with other contents.
pub fn patch_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut bytes = std::fs::read(path).expect("executable");
    let n = bytes.len();
    let at = if n >= 16 && &bytes[n - 8..] == b"HSSIM01\n" {
        let len = u64::from_le_bytes(bytes[n - 16..n - 8].try_into().expect("8 bytes")) as usize;
        n - 16 - len
    } else {
        n
    };
    bytes.splice(at..at, b"\n# patched by hand\n".iter().copied());
    let tmp = path.with_extension("patched");
    std::fs::write(&tmp, bytes).expect("patched copy");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, path).expect("swap");
}
