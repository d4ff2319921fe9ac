//! A deb install of real Headscale for the tests, on a booted Debian system with a real systemd
//! as PID 1 ([`Booted`]: `systemd-nspawn -b` over an overlay of the cached rootfs). Real dpkg
//! installs upstream-shaped packages (scripts/debs): their maintainer scripts run for real
//! (useradd, deb-systemd-helper, deb-systemd-invoke), and the real systemd runs the package's
//! unit as its `User=headscale`, sandboxed as upstream wrote it. headwarden under test runs
//! inside (as root, through `nsenter`), with its config and state in the test's directory, which
//! the container shares at the same path.
//!
//! The test reads files inside through `/proc/<PID 1>/root`; production's database as a copy
//! ([`DebHost::db`]). Dropping the host powers the container off.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::booted::Booted;
use crate::{free_port, hw, rig_dir, text, upstream_config, OFFLINE_DERP};

static SNAPSHOT: AtomicU32 = AtomicU32::new(0);

/// `$RIG/deb/headscale_<version>_linux_<arch>.deb` (scripts/debs builds it).
pub fn package(version: &str) -> PathBuf {
    let arch = if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        "amd64"
    };
    let p = rig_dir().join(format!("deb/headscale_{version}_linux_{arch}.deb"));
    assert!(
        p.exists(),
        "{} is missing: run the suite through scripts/test (scripts/debs builds it)",
        p.display()
    );
    p
}

/// Upstream's package of `version` rebuilt in `dir` after `edit` changed its tree (`dpkg-deb -R`
/// layout: the files, and DEBIAN/ with control and maintainer scripts).
pub fn variant(dir: &Path, version: &str, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let tree = dir.join(format!("variant-{name}"));
    let run = |args: &[&str]| {
        let out = Command::new("dpkg-deb")
            .args(args)
            .output()
            .expect("dpkg-deb");
        assert!(out.status.success(), "dpkg-deb {args:?}: {}", text(&out));
    };
    let upstream = package(version).display().to_string();
    let t = tree.display().to_string();
    run(&["-R", &upstream, &t]);
    edit(&tree);
    let out = dir.join(format!("headscale-{version}-{name}.deb"));
    run(&[
        "--build",
        "--root-owner-group",
        &t,
        &out.display().to_string(),
    ]);
    out
}

/// Upstream's package of `version` whose binary fails only as production, after migrating
/// production's database: started by the unit (`headscale serve`, the package's config) it
/// cannot bind its port (127.0.0.1:1 as `headscale`); staging (`serve -c <staging config>`)
/// passes. The real binary it runs is kept in `dir` (which the service account must reach).
pub fn package_failing_on_production(dir: &Path, version: &str) -> PathBuf {
    let real = dir.join(format!("real-headscale-{version}"));
    std::fs::copy(crate::headscale(version), &real).expect("copy");
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    package_failing_on_production_at(dir, version, &real)
}

/// [`package_failing_on_production`] whose wrapper runs the real binary at `real` (where the
/// host that installs it has put it).
pub fn package_failing_on_production_at(dir: &Path, version: &str, real: &Path) -> PathBuf {
    variant(dir, version, "prod-fails", |tree| {
        let bin = tree.join("usr/bin/headscale");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\n# headscale {version}, failing after migration when the unit serves production\n[ \"$*\" = serve ] && export HEADSCALE_LISTEN_ADDR=127.0.0.1:1\nexec '{real}' \"$@\"\n",
                real = real.display()
            ),
        )
        .expect("wrapper");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    })
}

/// What dpkg records for `package` (`<version> <status>`, or "" when unknown), asked through
/// `run` (inside whichever root the host runs commands in).
pub fn dpkg_state(run: impl Fn(&[&str]) -> Output, package: &str) -> String {
    let out = run(&[
        "dpkg-query",
        "-W",
        "-f",
        "${Version} ${db:Status-Abbrev}",
        package,
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub struct DebHost {
    host: Booted,
    /// Appended to headwarden's config (top level).
    pub extra_top: String,
    /// Appended under `headscale:`.
    pub extra_headscale: String,
    /// `headscale.install.kind`.
    pub kind: String,
}

impl DebHost {
    /// A host with upstream's package of real Headscale `version` installed by dpkg (the
    /// admin's config written first), its unit enabled and started by the real systemd (running
    /// as `headscale`). 0.26.1's package only enables the unit in postinst; the admin starts it.
    pub fn new(version: &str) -> Self {
        let sb = Self::bare();
        sb.host.write_headscale_config(&sb.addr());
        sb.dpkg_install(&package(version));
        sb.ns_ok(&["systemctl", "enable", "--now", "headscale.service"]);
        sb.wait_healthy();
        sb
    }

    /// The booted system alone: nothing installed.
    pub fn bare() -> Self {
        let sb = DebHost {
            host: Booted::boot(),
            extra_top: String::new(),
            extra_headscale: String::new(),
            kind: "deb".into(),
        };
        sb.write_config();
        sb
    }

    pub fn path(&self, s: &str) -> PathBuf {
        self.host.path(s)
    }

    /// `path` (absolute) inside, seen from outside.
    pub fn root(&self, path: &str) -> PathBuf {
        self.host.root(path)
    }

    /// A copy of production's database as it is now (with its WAL), in the test's directory:
    /// SQLite resolves the `/proc/<pid>/root` link to the machine's own `/` and would miss it.
    pub fn db(&self) -> PathBuf {
        let n = SNAPSHOT.fetch_add(1, Ordering::Relaxed);
        let dir = self.path(&format!("db-copy-{n}"));
        std::fs::create_dir_all(&dir).expect("db copy dir");
        for suffix in ["", "-wal", "-shm"] {
            let from = self.root(&format!("/var/lib/headscale/db.sqlite{suffix}"));
            if from.exists() {
                std::fs::copy(&from, dir.join(format!("db.sqlite{suffix}"))).expect("db copy");
            }
        }
        dir.join("db.sqlite")
    }

    /// Runs `argv` inside.
    pub fn ns(&self, argv: &[&str]) -> Output {
        self.ns_env(argv, &[])
    }

    pub fn ns_env(&self, argv: &[&str], env: &[(&str, &str)]) -> Output {
        self.host.x_env(argv, env)
    }

    /// [`DebHost::ns`], panicking with its output unless it succeeds; its stdout.
    pub fn ns_ok(&self, argv: &[&str]) -> String {
        self.host.x_ok(argv)
    }

    /// The command that runs `argv` inside, for the caller to start.
    pub fn command(&self, argv: &[&str]) -> Command {
        self.host.command(argv)
    }

    /// `dpkg -i` as an admin runs it (`apt install ./headscale.deb` does the same for a file).
    pub fn dpkg_install(&self, deb: &Path) -> String {
        let deb = deb.display().to_string();
        self.ns_ok(&["dpkg", "--force-confold", "-i", &deb])
    }

    /// What dpkg records for `package`: `<version> <status>`, or "" when unknown.
    pub fn dpkg_state(&self, package: &str) -> String {
        self.host.dpkg_state(package)
    }

    /// Writes the admin's config and DERP map, enables and starts the unit, waits for health.
    pub fn configure_and_start(&self) {
        std::fs::write(
            self.root("/etc/headscale/config.yaml"),
            // The admin's edits to the package's conffile: this host's loopback ports.
            upstream_config(
                &format!("http://{}", self.addr()),
                &self.addr(),
                &format!("127.0.0.1:{}", free_port()),
                &format!("127.0.0.1:{}", free_port()),
            ),
        )
        .expect("config");
        std::fs::write(self.root("/etc/headscale/derp.yaml"), OFFLINE_DERP).expect("derp");
        self.ns_ok(&["systemctl", "enable", "--now", "headscale.service"]);
        self.wait_healthy();
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("headwarden.yaml")
    }

    pub fn write_config(&self) {
        let r = self.host.dir.path().display();
        let text = format!(
            "state_dir: {r}/state\nrelease:\n  api_url: http://{addr}\n  allow_insecure_http: true\n  min_age: 1d\n  minisign_public_key: {key}\nheadscale:\n  install:\n    kind: {kind}\n{extra}smoke:\n  timeout: 30s\n{top}",
            addr = self.host.feed_addr,
            key = self.host.pubkey,
            kind = self.kind,
            extra = self.extra_headscale,
            top = self.extra_top
        );
        std::fs::write(self.config_path(), text).expect("config");
    }

    /// Publishes release `version`: the real binary and its package, checksummed and signed.
    pub fn release(&self, version: &str) {
        self.host.release(version);
    }

    /// Publishes release `version` with `deb` as its package.
    pub fn release_package(&self, version: &str, deb: &Path) {
        self.host.release_package(version, deb);
    }

    /// Upstream's package of `version` rebuilt after `edit` changed its tree ([`variant`]).
    pub fn variant(&self, version: &str, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
        variant(self.host.dir.path(), version, name, edit)
    }

    /// [`package_failing_on_production`], built in this host's directory.
    pub fn package_failing_on_production(&self, version: &str) -> PathBuf {
        package_failing_on_production(self.host.dir.path(), version)
    }

    /// headwarden inside (it runs dpkg and systemctl there).
    pub fn hw(&self, args: &[&str]) -> Output {
        self.hw_env(args, &[])
    }

    pub fn hw_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let cfg = self.config_path().display().to_string();
        let mut argv = vec![hw(), "--config", &cfg];
        argv.extend_from_slice(args);
        self.ns_env(&argv, env)
    }

    pub fn addr(&self) -> String {
        self.host.addr()
    }

    pub fn wait_healthy(&self) {
        self.host.wait_healthy();
    }

    /// What the unit wrote (its journal).
    pub fn log(&self) -> String {
        self.host.journal("headscale.service")
    }

    /// The version the running server's CLI reports (`headscale version` as root inside).
    pub fn cli_version(&self) -> String {
        self.ns_ok(&["/usr/bin/headscale", "version"])
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or("")
            .trim_start_matches('v')
            .to_string()
    }

    /// `headscale ARGS -o json` inside, parsed.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut argv = vec!["/usr/bin/headscale"];
        argv.extend_from_slice(args);
        argv.extend(["-o", "json"]);
        serde_json::from_str(&self.ns_ok(&argv)).expect("headscale json")
    }

    /// The uid of the `headscale` account the package created in this root.
    pub fn headscale_uid(&self) -> u32 {
        let passwd = std::fs::read_to_string(self.root("/etc/passwd")).expect("passwd");
        passwd
            .lines()
            .find_map(|l| l.strip_prefix("headscale:"))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|uid| uid.parse().ok())
            .expect("a headscale account")
    }

    /// The unit's main process as systemd names it: its pid (inside) and its real uid.
    pub fn service_process(&self) -> Option<(i32, u32)> {
        let pid: i32 = self.host.show("headscale.service", &["MainPID"])["MainPID"]
            .parse()
            .ok()
            .filter(|p| *p != 0)?;
        let out = self.ns(&["ps", "-o", "ruid=", "-p", &pid.to_string()]);
        let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        Some((pid, uid))
    }

    /// Production servers running inside (`… serve` without a staging `-c`).
    pub fn servers(&self) -> usize {
        self.ns_ok(&["ps", "-eo", "args="])
            .lines()
            .filter(|args| {
                let words: Vec<&str> = args.split_whitespace().collect();
                words.contains(&"serve") && !words.contains(&"-c")
            })
            .count()
    }
}
