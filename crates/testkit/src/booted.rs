//! A booted Debian system with a real systemd as PID 1 (`systemd-nspawn -b` over an overlay of
//! the cached rootfs `scripts/sdroot` builds): upstream-shaped Headscale packages and headwarden's
//! own package are installed by real dpkg, their units enabled, started and sandboxed by the real
//! systemd, so the shipped units are tested as admins run them. The container shares the host's
//! network: the release feed the test runs on the host's 127.0.0.1 is reachable inside.
//!
//! Commands run inside with `nsenter -t <PID 1> -a`; files inside are read and written through
//! `/proc/<PID 1>/root`. Dropping the host powers the container off (its overlay goes with it)
//! and removes its private cgroups: the rootfs and the machine are left as they were.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::deb::package;
use crate::{free_port, publish, rig_dir, sim, start_feed, text, upstream_config, OFFLINE_DERP};

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/booted");

static NEXT: AtomicU32 = AtomicU32::new(0);

/// headwarden's own package (scripts/package, built by scripts/test).
pub fn own_package() -> PathBuf {
    let p = PathBuf::from(std::env::var_os("HEADWARDEN_OWN_DEB").expect(
        "HEADWARDEN_OWN_DEB is not set: run the suite through scripts/test (it builds headwarden's package)",
    ));
    assert!(p.exists(), "{} is missing", p.display());
    p
}

pub struct Booted {
    pub dir: tempfile::TempDir,
    name: String,
    leader: i32,
    feed: Child,
    pub feed_addr: String,
    pub pubkey: String,
    /// Headscale's listen port (on the shared 127.0.0.1).
    pub port: u16,
}

impl Booted {
    /// Boots the cached rootfs; nothing installed yet.
    pub fn boot() -> Self {
        let base = rig_dir().join("sdroot/bookworm");
        assert!(
            rig_dir().join("sdroot/ready").exists(),
            "{} is missing: run the suite through scripts/test (scripts/sdroot builds it)",
            base.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        // Headscale's account inside reaches the files some tests keep here (same path inside).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let name = format!(
            "hw{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let own = own_package();
        let hw_dir = Path::new(crate::hw()).parent().expect("profile dir");
        // The test's directory read-write (headwarden run inside keeps its state there, where
        // the test reads it); the rig and the headwarden under test read only, at their paths.
        let binds = [
            format!("--bind-ro={}:/opt/rig-deb", rig_dir().join("deb").display()),
            format!(
                "--bind-ro={}:/opt/hw-deb",
                own.parent().expect("package dir").display()
            ),
            format!("--bind={d}:{d}", d = dir.path().display()),
            format!("--bind-ro={d}:{d}", d = rig_dir().display()),
            format!("--bind-ro={d}:{d}", d = hw_dir.display()),
        ];
        let out = Command::new(format!("{SCRIPTS}/sdboot.sh"))
            .arg(&base)
            .arg(dir.path().join("run"))
            .arg(&name)
            .args(&binds)
            .stdin(Stdio::null())
            .output()
            .expect("sdboot.sh");
        let leader: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("booting the container failed: {}", text(&out)));
        let pubkey = sim(&[
            "keygen",
            "--out",
            &dir.path().join("keys").display().to_string(),
        ]);
        let (feed, feed_addr) = start_feed(dir.path());
        Booted {
            dir,
            name,
            leader,
            feed,
            feed_addr,
            pubkey,
            port: free_port(),
        }
    }

    /// Runs `argv` inside (every namespace of the container's PID 1).
    pub fn x(&self, argv: &[&str]) -> Output {
        self.x_env(argv, &[])
    }

    /// [`Booted::x`] with `env` added (and no fault injection of the test's own).
    pub fn x_env(&self, argv: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(argv);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("nsenter")
    }

    /// The command that runs `argv` inside, to be started by the caller.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.leader.to_string(), "-a", "--"])
            .args(argv)
            .stdin(Stdio::null())
            .env_remove("HEADWARDEN_CRASH_AT")
            .env_remove("HEADWARDEN_FAIL_AT");
        cmd
    }

    /// [`Booted::x`], panicking with its output unless it succeeds; its stdout.
    pub fn x_ok(&self, argv: &[&str]) -> String {
        let out = self.x(argv);
        assert!(out.status.success(), "{argv:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `path` (absolute) inside, seen from the host.
    pub fn root(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.leader))
    }

    /// Writes `text` to `path` inside (its directory created), owned by root.
    pub fn write(&self, path: &str, text: &str) {
        let p = self.root(path);
        std::fs::create_dir_all(p.parent().expect("dir")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }

    /// `systemctl show -p …` of `unit`, as a map.
    pub fn show(&self, unit: &str, props: &[&str]) -> BTreeMap<String, String> {
        let mut argv = vec!["systemctl", "show"];
        for p in props {
            argv.extend(["-p", p]);
        }
        argv.push(unit);
        self.x_ok(&argv)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The unit's journal.
    pub fn journal(&self, unit: &str) -> String {
        self.x_ok(&["journalctl", "--no-pager", "-o", "cat", "-u", unit])
    }

    /// The admin's Headscale config: this host's loopback ports (the listen address `listen`),
    /// an offline DERP map.
    pub(crate) fn write_headscale_config(&self, listen: &str) {
        self.write(
            "/etc/headscale/config.yaml",
            &upstream_config(
                &format!("http://{}", self.addr()),
                listen,
                &format!("127.0.0.1:{}", free_port()),
                &format!("127.0.0.1:{}", free_port()),
            ),
        );
        self.write("/etc/headscale/derp.yaml", OFFLINE_DERP);
    }

    /// Upstream's package of Headscale `version` installed as an admin does: the admin's config
    /// written first, then `dpkg -i`, whose postinst enables and starts the unit under the real
    /// systemd. Waits for health.
    pub fn install_headscale(&self, version: &str) {
        self.write_headscale_config(&self.addr());
        let deb = format!(
            "/opt/rig-deb/{}",
            package(version)
                .file_name()
                .expect("name")
                .to_string_lossy()
        );
        self.x_ok(&["dpkg", "--force-confold", "-i", &deb]);
        self.wait_healthy();
    }

    /// Headscale `version` as a raw binary at /usr/local/bin/headscale, run by upstream's unit
    /// (the one its package ships, `ExecStart` pointed there) as the `headscale` account the
    /// admin created. The listen address is the unit's `EnvironmentFile=`
    /// (`HEADSCALE_LISTEN_ADDR`): the config file names a port nothing listens on. Waits for
    /// health.
    pub fn install_headscale_binary(&self, version: &str) {
        self.write_headscale_config(&format!("127.0.0.1:{}", free_port()));
        self.write(
            "/etc/default/headscale",
            &format!("HEADSCALE_LISTEN_ADDR={}\n", self.addr()),
        );
        self.write(
            "/etc/systemd/system/headscale.service.d/environment.conf",
            "[Service]\nEnvironmentFile=/etc/default/headscale\n",
        );
        let unpacked = self.path(&format!("unpacked-{version}"));
        let out = Command::new("dpkg-deb")
            .arg("-x")
            .arg(package(version))
            .arg(&unpacked)
            .output()
            .expect("dpkg-deb");
        assert!(out.status.success(), "dpkg-deb -x: {}", text(&out));
        let unit =
            std::fs::read_to_string(unpacked.join("usr/lib/systemd/system/headscale.service"))
                .expect("upstream's unit");
        self.write(
            "/etc/systemd/system/headscale.service",
            &unit.replace("/usr/bin/headscale", "/usr/local/bin/headscale"),
        );
        std::fs::copy(
            crate::headscale(version),
            self.root("/usr/local/bin/headscale"),
        )
        .expect("binary");
        self.x_ok(&["chmod", "0755", "/usr/local/bin/headscale"]);
        self.x_ok(&[
            "useradd",
            "--system",
            "--home-dir",
            "/var/lib/headscale",
            "--shell",
            "/usr/sbin/nologin",
            "headscale",
        ]);
        self.x_ok(&["systemctl", "daemon-reload"]);
        self.x_ok(&["systemctl", "enable", "--now", "headscale.service"]);
        self.wait_healthy();
    }

    /// headwarden's own package, its config (`kind: deb` against the systemd unit, this test's
    /// feed) and the given drop-ins for headwarden.service (`name` → text).
    pub fn install_headwarden(&self, drop_ins: &[(&str, &str)]) {
        self.install_headwarden_for("  install:\n    kind: deb\n", drop_ins);
    }

    /// [`Booted::install_headwarden`] with `headscale:` lines of its own (`install`, `binary`).
    pub fn install_headwarden_for(&self, headscale: &str, drop_ins: &[(&str, &str)]) {
        let own = own_package();
        let deb = format!(
            "/opt/hw-deb/{}",
            own.file_name().expect("name").to_string_lossy()
        );
        self.x_ok(&["dpkg", "-i", &deb]);
        self.write(
            "/etc/headwarden/headwarden.yaml",
            &format!(
                "release:\n  api_url: http://{}\n  allow_insecure_http: true\n  min_age: 1d\n  minisign_public_key: {}\nheadscale:\n{headscale}  service:\n    kind: systemd\n    unit: headscale.service\nsmoke:\n  timeout: 30s\n",
                self.feed_addr, self.pubkey
            ),
        );
        for (name, text) in drop_ins {
            self.write(
                &format!("/etc/systemd/system/headwarden.service.d/{name}"),
                text,
            );
        }
        self.x_ok(&["systemctl", "daemon-reload"]);
    }

    /// Publishes release `version`: the real binary and upstream's package, checksummed and signed.
    pub fn release(&self, version: &str) {
        publish(
            self.dir.path(),
            version,
            &crate::headscale(version),
            Some(&package(version)),
        );
    }

    /// Publishes release `version` with `deb` as its package (the real binary beside it).
    pub fn release_package(&self, version: &str, deb: &Path) {
        publish(
            self.dir.path(),
            version,
            &crate::headscale(version),
            Some(deb),
        );
    }

    /// Starts `unit` and waits until it is no longer starting or running (a oneshot's run);
    /// its `Result`, `ExecMainStatus` and journal. `systemctl start` waits for a oneshot to finish; a unit that ended well and nothing
    /// references is unloaded at once (its properties read as defaults), so success is taken
    /// from `start`'s own exit, and a failure (which keeps the unit loaded) from the unit.
    pub fn run_unit(&self, unit: &str, timeout: Duration) -> (String, String, String) {
        let secs = timeout.as_secs().to_string();
        let out = self.x(&["timeout", &secs, "systemctl", "start", unit]);
        if out.status.success() {
            return ("success".into(), "0".into(), self.journal(unit));
        }
        assert_ne!(
            out.status.code(),
            Some(124),
            "{unit} did not finish in {timeout:?}: {}",
            self.journal(unit)
        );
        let s = self.show(unit, &["Result", "ExecMainStatus"]);
        (
            s.get("Result").cloned().unwrap_or_default(),
            s.get("ExecMainStatus").cloned().unwrap_or_default(),
            self.journal(unit),
        )
    }

    /// When `unit` last left the inactive state (systemd's monotonic µs; "0" when never).
    pub fn left_inactive(&self, unit: &str) -> String {
        self.show(unit, &["InactiveExitTimestampMonotonic"])
            .remove("InactiveExitTimestampMonotonic")
            .unwrap_or_default()
    }

    /// Waits until `unit` has been started (after `since`, [`Booted::left_inactive`]) and is
    /// inactive or failed again.
    pub fn wait_done(
        &self,
        unit: &str,
        since: &str,
        timeout: Duration,
    ) -> (String, String, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.show(
                unit,
                &[
                    "ActiveState",
                    "Result",
                    "ExecMainStatus",
                    "InactiveExitTimestampMonotonic",
                ],
            );
            let started = s
                .get("InactiveExitTimestampMonotonic")
                .is_some_and(|t| t != since && t != "0");
            let state = s.get("ActiveState").cloned().unwrap_or_default();
            if started && (state == "inactive" || state == "failed") {
                return (
                    s.get("Result").cloned().unwrap_or_default(),
                    s.get("ExecMainStatus").cloned().unwrap_or_default(),
                    self.journal(unit),
                );
            }
            assert!(
                Instant::now() < deadline,
                "{unit} did not finish in {timeout:?}: {s:?}\n{}",
                self.journal(unit)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn wait_healthy(&self) {
        crate::wait_for_health(&self.addr(), "the packaged Headscale", || {
            self.journal("headscale.service")
        });
    }

    /// The version the server answering on Headscale's address reports.
    pub fn served_version(&self) -> String {
        crate::http_get(&self.addr(), "/version")
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["version"].as_str().map(String::from))
            .unwrap_or_default()
    }

    /// What dpkg records for `package`: `<version> <status>`.
    pub fn dpkg_state(&self, package: &str) -> String {
        crate::deb::dpkg_state(|argv| self.x(argv), package)
    }

    /// Owner, group and mode of `path` inside (`stat -c '%U:%G %a'`).
    pub fn owner_mode(&self, path: &str) -> String {
        self.x_ok(&["stat", "-c", "%U:%G %a", path])
    }

    /// The account the unit's main process runs as (its real uid's name), from `/proc` inside.
    pub fn main_user(&self, unit: &str) -> String {
        let pid = self.show(unit, &["MainPID"])["MainPID"].clone();
        assert_ne!(pid, "0", "{unit} runs no process");
        self.x_ok(&["ps", "-o", "user=", "-p", &pid])
    }

    /// The container's directory of this test's files (the same path inside).
    pub fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        let _ = Command::new(format!("{SCRIPTS}/sdstop.sh"))
            .arg(self.dir.path().join("run"))
            .arg(&self.name)
            .status();
        let _ = self.feed.kill();
        let _ = self.feed.wait();
    }
}

/// Makes `path` (inside `root`) the stamp of a timer that last fired two days ago, so a
/// `Persistent=true` timer catches up at once when started.
pub fn backdate(stamp: &Path) {
    std::fs::create_dir_all(stamp.parent().expect("dir")).expect("mkdir");
    std::fs::write(stamp, "").expect("stamp");
    let two_days = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    let f = std::fs::File::options()
        .write(true)
        .open(stamp)
        .expect("stamp");
    f.set_modified(two_days).expect("mtime");
}
