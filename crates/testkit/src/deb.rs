//! A deb install of real Headscale for the tests, in a throwaway root: a private mount namespace
//! (`unshare --mount`) in which /usr, /etc, /var and /run are overlays of the machine's own
//! (lower: read only; upper: this sandbox's directory). Real dpkg installs upstream-shaped
//! packages (scripts/debs) into the machine's real dpkg database *as the namespace sees it*: its
//! maintainer scripts run for real (useradd, deb-systemd-helper, deb-systemd-invoke), every write
//! lands in the upper directories, and the machine's /usr/bin, /etc and dpkg database are never
//! touched. systemd is not PID 1 here, so `/usr/bin/systemctl` inside is a stand-in
//! (crates/testkit/systemctl.sh) that runs the package's unit as its `User=headscale`.
//!
//! Commands run inside with `nsenter --mount`; the test reads files inside through
//! `/proc/<holder>/root`. Dropping the sandbox kills every process in the namespace, and the
//! namespace (with its mounts) goes with the last of them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{
    free_port, hw, publish, rig_dir, sim, start_feed, text, upstream_config, OFFLINE_DERP,
};

const OVERLAID: [&str; 4] = ["usr", "etc", "var", "run"];

const SYSTEMCTL: &str = include_str!("../systemctl.sh");

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
    pub dir: tempfile::TempDir,
    holder: Child,
    feed: Child,
    pub feed_addr: String,
    pub pubkey: String,
    pub port: u16,
    /// Appended to headwarden's config (top level).
    pub extra_top: String,
    /// Appended under `headscale:`.
    pub extra_headscale: String,
    /// `headscale.install.kind`.
    pub kind: String,
}

impl DebHost {
    /// A host with upstream's package of real Headscale `version` installed by dpkg, its config
    /// edited by the admin, the unit enabled and started (running as `headscale`).
    pub fn new(version: &str) -> Self {
        let sb = Self::bare();
        sb.dpkg_install(&package(version));
        sb.configure_and_start();
        sb
    }

    /// The throwaway root alone: nothing installed.
    pub fn bare() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // The service account reaches the binaries some tests keep here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let mut mounts = String::new();
        for d in OVERLAID {
            for layer in ["upper", "work"] {
                std::fs::create_dir_all(dir.path().join(layer).join(d)).expect("layer dir");
            }
            mounts.push_str(&format!(
                "mount -t overlay overlay -o lowerdir=/{d},upperdir={r}/upper/{d},workdir={r}/work/{d} /{d} || exit 1; ",
                r = dir.path().display()
            ));
        }
        let ready = dir.path().join("ready");
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!(
                "{mounts}echo ok > {}; exec sleep 86400",
                ready.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare (util-linux)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "the throwaway root did not come up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let p = |s: &str| dir.path().join(s).display().to_string();
        let pubkey = sim(&["keygen", "--out", &p("keys")]);
        let (feed, feed_addr) = start_feed(dir.path());
        let sb = DebHost {
            dir,
            holder,
            feed,
            feed_addr,
            pubkey,
            port: free_port(),
            extra_top: String::new(),
            extra_headscale: String::new(),
            kind: "deb".into(),
        };
        let systemctl = sb.root("/usr/bin/systemctl");
        std::fs::write(&systemctl, SYSTEMCTL).expect("systemctl stand-in");
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        // What postinst looks for before it bounces the unit.
        std::fs::create_dir_all(sb.root("/run/systemd/system")).expect("/run/systemd/system");
        sb.write_config();
        sb
    }

    pub fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    /// `path` (absolute) as the throwaway root has it, seen from outside.
    pub fn root(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.holder.id()))
    }

    /// Production's database, read where the overlay keeps what the root wrote (SQLite resolves
    /// the `/proc/<pid>/root` link to the machine's own `/` and would miss it).
    pub fn db(&self) -> PathBuf {
        self.path("upper/var/lib/headscale/db.sqlite")
    }

    /// Runs `argv` inside the throwaway root.
    pub fn ns(&self, argv: &[&str]) -> Output {
        self.ns_env(argv, &[])
    }

    pub fn ns_env(&self, argv: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &self.holder.id().to_string(), "--mount", "--"])
            .args(argv)
            .stdin(Stdio::null())
            .env_remove("HEADWARDEN_CRASH_AT")
            .env_remove("HEADWARDEN_FAIL_AT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("nsenter")
    }

    /// [`DebHost::ns`], panicking with its output unless it succeeds; its stdout.
    pub fn ns_ok(&self, argv: &[&str]) -> String {
        let out = self.ns(argv);
        assert!(out.status.success(), "{argv:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `dpkg -i` as an admin runs it (`apt install ./headscale.deb` does the same for a file).
    pub fn dpkg_install(&self, deb: &Path) -> String {
        let deb = deb.display().to_string();
        self.ns_ok(&["dpkg", "--force-confold", "-i", &deb])
    }

    /// What dpkg records for `package`: `<version> <status>`, or "" when unknown.
    pub fn dpkg_state(&self, package: &str) -> String {
        dpkg_state(|argv| self.ns(argv), package)
    }

    /// Writes the admin's config and DERP map, enables and starts the unit, waits for health.
    pub fn configure_and_start(&self) {
        std::fs::write(
            self.root("/etc/headscale/config.yaml"),
            // The admin's edits to the package's conffile: this sandbox's loopback ports.
            upstream_config(
                &format!("http://{}", self.addr()),
                &self.addr(),
                &format!("127.0.0.1:{}", free_port()),
                &format!("127.0.0.1:{}", free_port()),
            ),
        )
        .expect("config");
        std::fs::write(self.root("/etc/headscale/derp.yaml"), OFFLINE_DERP).expect("derp");
        self.ns_ok(&["systemctl", "enable", "headscale.service"]);
        self.ns_ok(&["systemctl", "start", "headscale.service"]);
        self.wait_healthy();
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("headwarden.yaml")
    }

    pub fn write_config(&self) {
        let r = self.dir.path().display();
        let text = format!(
            "state_dir: {r}/state\nrelease:\n  api_url: http://{addr}\n  allow_insecure_http: true\n  min_age: 1d\n  minisign_public_key: {key}\nheadscale:\n  install:\n    kind: {kind}\n{extra}smoke:\n  timeout: 30s\n{top}",
            addr = self.feed_addr,
            key = self.pubkey,
            kind = self.kind,
            extra = self.extra_headscale,
            top = self.extra_top
        );
        std::fs::write(self.config_path(), text).expect("config");
    }

    /// Publishes release `version`: the real binary and its package, checksummed and signed.
    pub fn release(&self, version: &str) {
        self.release_package(version, &package(version));
    }

    /// Publishes release `version` with `deb` as its package.
    pub fn release_package(&self, version: &str, deb: &Path) {
        publish(
            self.dir.path(),
            version,
            &crate::headscale(version),
            Some(deb),
        );
    }

    /// Upstream's package of `version` rebuilt after `edit` changed its tree ([`variant`]).
    pub fn variant(&self, version: &str, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
        variant(self.dir.path(), version, name, edit)
    }

    /// [`package_failing_on_production`], built in this host's directory.
    pub fn package_failing_on_production(&self, version: &str) -> PathBuf {
        package_failing_on_production(self.dir.path(), version)
    }

    /// headwarden inside the throwaway root (it runs dpkg and systemctl there).
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
        format!("127.0.0.1:{}", self.port)
    }

    pub fn wait_healthy(&self) {
        crate::wait_for_health(&self.addr(), "the deb-installed Headscale", || self.log());
    }

    /// What the unit wrote (the stand-in's journal).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root("/run/systemctl-stand-in/headscale.service.log"))
            .unwrap_or_default()
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

    /// The unit's main process: its pid and the account it runs as.
    pub fn service_process(&self) -> Option<(i32, u32)> {
        let pid: i32 =
            std::fs::read_to_string(self.root("/run/systemctl-stand-in/headscale.service.pid"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
        // The unit's process, alive, and in this root (a stale pid may be reused by now).
        if !crate::alive(pid) || !self.processes().contains(&pid) {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some((pid, uid))
    }

    /// Production servers running in the throwaway root (`… serve` without a staging `-c`).
    pub fn servers(&self) -> usize {
        self.processes()
            .into_iter()
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let words: Vec<String> = cmdline
                    .split(|b| *b == 0)
                    .map(|w| String::from_utf8_lossy(w).to_string())
                    .collect();
                words.iter().any(|w| w == "serve") && !words.iter().any(|w| w == "-c")
            })
            .count()
    }

    /// Processes in the namespace but the holder.
    fn processes(&self) -> Vec<i32> {
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        let ours = ns(&self.holder.id().to_string());
        // Never the test's own namespace (a holder gone and its pid reused would name it).
        if ours.is_none() || ours == ns("self") {
            return Vec::new();
        }
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Ok(pid) = name.parse::<i32>() else {
                continue;
            };
            if pid as u32 != self.holder.id() && ours.is_some() && ns(&name) == ours {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for DebHost {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.processes();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = self.feed.kill();
        let _ = self.feed.wait();
    }
}
