//! The real Headscale and Tailscale binaries of the rig (`scripts/rig`), and real `tailscaled`
//! clients.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bins::{text, workspace};
use crate::sandbox::Sandbox;

/// Where scripts/rig put its builds (`HEADWARDEN_RIG`, else ~/.cache/headwarden-rig).
pub fn rig_dir() -> PathBuf {
    std::env::var_os("HEADWARDEN_RIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/headwarden-rig")
        })
}

/// A binary of the rig; a missing one fails with the command that builds it.
pub fn rig_binary(rel: &str) -> PathBuf {
    let p = rig_dir().join(rel);
    assert!(
        p.is_file(),
        "{} is missing: the real-server tests need the rig; build it with `scripts/rig` (scripts/test does)",
        p.display()
    );
    p
}

/// The real Headscale `version` from the rig.
pub fn headscale(version: &str) -> PathBuf {
    rig_binary(&format!("headscale/{version}/headscale"))
}

/// The one Tailscale client version of the rig.
fn tailscale_version() -> String {
    let list = std::fs::read_to_string(workspace().join("rig/versions")).expect("rig/versions");
    list.lines()
        .find_map(|l| l.strip_prefix("tailscale "))
        .expect("a tailscale line in rig/versions")
        .trim()
        .to_string()
}

/// A real `tailscaled` in userspace-networking mode, logged in to production.
pub struct Client {
    pub name: String,
    dir: PathBuf,
    daemon: Child,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

impl Client {
    /// Kills `tailscaled` (SIGKILL): the node goes offline and cannot come back.
    pub fn kill(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }

    /// Starts `tailscaled` for `name` and runs `tailscale up` with `auth_key`.
    pub fn join(sb: &Sandbox, name: &str, auth_key: &str) -> Client {
        let login = format!("http://{}", sb.prod_setting("listen_addr"));
        Self::join_at(&sb.path(&format!("clients/{name}")), name, &login, auth_key)
    }

    /// Starts `tailscaled` only (not logged in).
    pub fn start(sb: &Sandbox, name: &str) -> Client {
        Self::start_in(&sb.path(&format!("clients/{name}")), name)
    }

    /// Starts `tailscaled` for `name` in `dir` and logs in to `login` with `auth_key`.
    pub fn join_at(dir: &Path, name: &str, login: &str, auth_key: &str) -> Client {
        let client = Client::start_in(dir, name);
        let out = client.cli(&[
            "up",
            "--login-server",
            login,
            "--authkey",
            auth_key,
            "--hostname",
            name,
            "--accept-dns=false",
            "--timeout",
            "60s",
        ]);
        assert!(
            out.status.success(),
            "tailscale up for {name}: {}",
            text(&out)
        );
        client
    }

    /// Starts `tailscaled` only (not logged in), its state in `dir`.
    pub fn start_in(dir: &Path, name: &str) -> Client {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).expect("client dir");
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("udp port")
            .port();
        let bin = rig_binary(&format!("tailscale/{}/tailscaled", tailscale_version()));
        let log = std::fs::File::create(dir.join("tailscaled.log")).expect("log");
        let daemon = Command::new(bin)
            .args([
                "--tun=userspace-networking",
                &format!("--statedir={}", dir.join("state").display()),
                &format!("--socket={}", dir.join("tailscaled.sock").display()),
                &format!("--port={port}"),
            ])
            // Loopback only: no log upload, no port mapping, the direct path on 127.0.0.1.
            .env("TS_NO_LOGS_NO_SUPPORT", "true")
            .env("TS_DISABLE_PORTMAPPER", "1")
            .env("TS_DEBUG_OMIT_LOCAL_ADDRS", "1")
            .env("TS_DEBUG_PRETENDPOINT", format!("127.0.0.1:{port}"))
            .env("HOME", &dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("tailscaled");
        let sock = dir.join("tailscaled.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "tailscaled for {name} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Client {
            name: name.to_string(),
            dir,
            daemon,
        }
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let bin = rig_binary(&format!("tailscale/{}/tailscale", tailscale_version()));
        Command::new(bin)
            .arg(format!(
                "--socket={}",
                self.dir.join("tailscaled.sock").display()
            ))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tailscale")
    }

    pub fn ipv4(&self) -> String {
        let out = self.cli(&["ip", "-4"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `tailscale ping` to `peer` until it answers (a deadline, not a sleep).
    pub fn pings(&self, peer: &Client) -> bool {
        let ip = peer.ipv4();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.cli(&["ping", "-c", "3", "--timeout", "5s", &ip]);
            if out.status.success() {
                return true;
            }
            if Instant::now() > deadline {
                eprintln!("{} -> {}: {}", self.name, peer.name, text(&out));
                return false;
            }
        }
    }
}
