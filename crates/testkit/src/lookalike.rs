//! A planted look-alike of production: a process another account starts with `serve -c
//! <production's config>` on its command line and its own `HEADSCALE_*` environment pointing at a
//! port it listens on, started before production so that it comes first in `/proc`. It answers
//! nothing and records every connection: a headwarden that took it for production would send it
//! health checks, the probe's handshake and a minted key, and each would show in its log.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The account the look-alike runs as when the suite runs as root: neither root nor production's.
pub const LOOKALIKE_UID: u32 = 4242;

const LISTENER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
import os
print("ready", os.getpid(), flush=True)
while True:
    c, _ = s.accept()
    print("connection", flush=True)
    c.close()
"#;

pub struct LookAlike {
    child: Child,
    log: PathBuf,
    pub port: u16,
    pid: u32,
}

impl LookAlike {
    /// Starts it with `serve -c <config>` in its command line, `HEADSCALE_LISTEN_ADDR`,
    /// `HEADSCALE_SERVER_URL` and `HEADSCALE_UNIX_SOCKET` of its own, logging to `log`.
    pub fn start(config: &Path, log: &Path) -> LookAlike {
        Self::start_via(
            |argv| {
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            },
            config,
            log,
        )
    }

    /// [`LookAlike::start`] through `command`, which makes the command that runs an argv (on a
    /// booted host: inside it).
    pub fn start_via(
        command: impl FnOnce(&[&str]) -> Command,
        config: &Path,
        log: &Path,
    ) -> LookAlike {
        let port = crate::free_port();
        let out = std::fs::File::create(log).expect("look-alike log");
        let (uid, port_arg, config) = (
            format!("{LOOKALIKE_UID}"),
            port.to_string(),
            config.display().to_string(),
        );
        let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
        let mut argv: Vec<&str> = if nix::unistd::geteuid().is_root() {
            vec!["setpriv", &reuid, &regid, "--clear-groups"]
        } else {
            vec![]
        };
        argv.extend([
            "/usr/bin/python3",
            "-c",
            LISTENER,
            &port_arg,
            "serve",
            "-c",
            &config,
        ]);
        let mut cmd = command(&argv);
        cmd.env("HEADSCALE_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("HEADSCALE_SERVER_URL", format!("http://127.0.0.1:{port}"))
            .env("HEADSCALE_UNIX_SOCKET", "/tmp/headwarden-lookalike.sock")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("look-alike");
        let mut l = LookAlike {
            child,
            log: log.to_path_buf(),
            port,
            pid: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !l.log().contains("ready") {
            assert!(Instant::now() < deadline, "look-alike did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        l.pid = l
            .log()
            .lines()
            .find_map(|line| line.strip_prefix("ready "))
            .and_then(|p| p.trim().parse().ok())
            .expect("the look-alike's pid");
        l
    }

    /// Its pid, as its own pid namespace has it.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// How many connections it received.
    pub fn connections(&self) -> usize {
        self.log().lines().filter(|l| *l == "connection").count()
    }
}

impl Drop for LookAlike {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
