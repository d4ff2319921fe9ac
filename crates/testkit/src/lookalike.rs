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
print("ready", flush=True)
while True:
    c, _ = s.accept()
    print("connection", flush=True)
    c.close()
"#;

pub struct LookAlike {
    child: Child,
    log: PathBuf,
    pub port: u16,
}

impl LookAlike {
    /// Starts it with `serve -c <config>` in its command line, `HEADSCALE_LISTEN_ADDR`,
    /// `HEADSCALE_SERVER_URL` and `HEADSCALE_UNIX_SOCKET` of its own, logging to `log`.
    pub fn start(config: &Path, log: &Path) -> LookAlike {
        let port = crate::free_port();
        let out = std::fs::File::create(log).expect("look-alike log");
        let mut cmd = if nix::unistd::geteuid().is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={LOOKALIKE_UID}"),
                &format!("--regid={LOOKALIKE_UID}"),
                "--clear-groups",
                "/usr/bin/python3",
            ]);
            c
        } else {
            Command::new("/usr/bin/python3")
        };
        let config = config.display().to_string();
        cmd.args(["-c", LISTENER, &port.to_string(), "serve", "-c", &config])
            .env("HEADSCALE_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("HEADSCALE_SERVER_URL", format!("http://127.0.0.1:{port}"))
            .env("HEADSCALE_UNIX_SOCKET", "/tmp/headwarden-lookalike.sock")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("look-alike");
        let l = LookAlike {
            child,
            log: log.to_path_buf(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !l.log().contains("ready") {
            assert!(Instant::now() < deadline, "look-alike did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        l
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
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
