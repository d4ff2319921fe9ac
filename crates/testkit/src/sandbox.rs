//! The binary-kind sandbox: a production stand-in (or real Headscale from the rig) laid out like
//! a host, a local release feed, a minisign key and a headwarden config pointing at them; dropping
//! it stops every process it started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::bins::{http_get, run_hw, sim, text};
use crate::db::dump_sqlite;
use crate::fixtures::{publish, start_feed, PROD_UID, STAND_IN_CHECKS};
use crate::procs::processes_under;
use crate::rig::headscale;

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    feed: Child,
    pub feed_addr: String,
    pub pubkey: String,
    pub extra_release: String,
    /// Under `smoke:`: `checks:` (the stand-in does not speak the Tailscale control protocol,
    /// so its sandboxes leave the connectivity probe out; real production keeps the default).
    pub checks: String,
    /// Appended under `smoke:`.
    pub extra_smoke: String,
    /// Appended under `headscale:` (e.g. the `api:` section).
    pub extra_headscale: String,
    /// Appended at the end (top-level sections such as `keys:`).
    pub extra_top: String,
}

impl Sandbox {
    pub fn new(prod_version: &str) -> Sandbox {
        Self::new_with(prod_version, false)
    }

    /// `tls`: production gets a private CA and a certificate (remote gRPC for ≤0.29).
    pub fn new_with(prod_version: &str, tls: bool) -> Sandbox {
        Self::build(prod_version, tls, None, &[])
    }

    /// Production is the real Headscale `prod_version` from the rig (scripts/rig), started
    /// offline as `nobody`, with an empty tailnet: tests build it through its CLI and clients.
    pub fn new_real(prod_version: &str) -> Sandbox {
        Self::build(prod_version, false, Some(headscale(prod_version)), &[])
    }

    /// [`Sandbox::new_real`] with `KEY=VALUE` in production's service environment.
    pub fn new_real_env(prod_version: &str, env: &[&str]) -> Sandbox {
        Self::build(prod_version, false, Some(headscale(prod_version)), env)
    }

    fn build(prod_version: &str, tls: bool, real: Option<PathBuf>, env: &[&str]) -> Sandbox {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |s: &str| dir.path().join(s).display().to_string();
        let pubkey = sim(&["keygen", "--out", &p("keys")]);
        let prod_dir = p("prod");
        let mut args = vec![
            "testbed",
            "--dir",
            &prod_dir,
            "--version",
            prod_version,
            "--start",
            "--users",
            "3",
            "--nodes-per-user",
            "2",
        ];
        if tls {
            args.push("--tls");
        }
        let real_arg = real.as_ref().map(|p| p.display().to_string());
        if let Some(r) = &real_arg {
            args.extend(["--binary", r]);
        }
        for kv in env {
            args.extend(["--env", kv]);
        }
        // Production runs as an unprivileged account, as upstream's unit runs it (`User=headscale`).
        let uid = PROD_UID.to_string();
        if nix::unistd::geteuid().is_root() {
            args.extend(["--run-as", &uid]);
        }
        sim(&args);
        let (feed, feed_addr) = start_feed(dir.path());
        let sb = Sandbox {
            dir,
            feed,
            feed_addr,
            pubkey,
            extra_release: String::new(),
            checks: if real_arg.is_some() {
                String::new()
            } else {
                STAND_IN_CHECKS.to_string()
            },
            extra_smoke: String::new(),
            extra_headscale: String::new(),
            extra_top: String::new(),
        };
        sb.write_config();
        sb
    }

    pub fn path(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    /// Publishes a signed release with an optional fault.
    pub fn release(&self, version: &str, fault: &str) {
        self.release_with(version, fault, Some("keys/minisign.key"));
    }

    pub fn release_with(&self, version: &str, fault: &str, key: Option<&str>) {
        self.release_args(version, fault, key, &[]);
    }

    /// Clones production's first node `n` times in its real database (production stopped while
    /// it happens): distinct ids, keys, addresses and names, the rest as the real server wrote
    /// it. A tailnet of `n + 1` nodes without `n` clients.
    pub fn real_bulk_nodes(&self, n: u32) {
        use std::os::unix::fs::MetadataExt;
        let service = self.path("prod/service.sh");
        assert!(Command::new(&service)
            .arg("stop")
            .status()
            .expect("stop")
            .success());
        let db_path = self.path("prod/lib/db.sqlite");
        let owner = std::fs::metadata(&db_path).expect("db");
        {
            let db = rusqlite::Connection::open(&db_path).expect("db");
            let cols: Vec<String> = db
                .prepare("SELECT name FROM pragma_table_info('nodes')")
                .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
                .expect("columns");
            let value = |c: &str| -> String {
                match c {
                    "id" => "NULL".into(),
                    "machine_key" => "'mkey:' || printf('%064x', s.n)".into(),
                    "node_key" => "'nodekey:' || printf('%064x', s.n)".into(),
                    "disco_key" => "'discokey:' || printf('%064x', s.n)".into(),
                    "ipv4" => "'100.64.' || (s.n / 250 + 1) || '.' || (s.n % 250 + 1)".into(),
                    "ipv6" => "'fd7a:115c:a1e0::' || printf('%x', s.n + 4096)".into(),
                    "hostname" | "given_name" => "'bulk-' || s.n".into(),
                    other => format!("t.\"{other}\""),
                }
            };
            let sql = format!(
                "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {n})
                 INSERT INTO nodes ({}) SELECT {} FROM s, (SELECT * FROM nodes ORDER BY id LIMIT 1) t",
                cols.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", "),
                cols.iter().map(|c| value(c)).collect::<Vec<_>>().join(", ")
            );
            db.execute_batch(&sql).expect("bulk nodes");
            db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .expect("checkpoint");
        }
        // Whatever SQLite created as root goes back to the service account.
        for f in ["db.sqlite", "db.sqlite-wal", "db.sqlite-shm"] {
            let p = self.path(&format!("prod/lib/{f}"));
            if p.exists() {
                std::os::unix::fs::chown(&p, Some(owner.uid()), Some(owner.gid())).expect("chown");
            }
        }
        assert!(Command::new(&service)
            .arg("start")
            .status()
            .expect("start")
            .success());
        let deadline = Instant::now() + Duration::from_secs(120);
        while http_get(&self.prod_setting("listen_addr"), "/health").is_none() {
            if Instant::now() > deadline || !self.service_running() {
                let log =
                    std::fs::read_to_string(self.path("prod/headscale.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "production did not come back with {n} bulk nodes:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Publishes the real Headscale `version` from the rig as a signed release.
    pub fn release_real(&self, version: &str) {
        self.publish_binary(version, &headscale(version));
    }

    /// Publishes `binary` as release `version`, named, checksummed and signed like upstream's.
    fn publish_binary(&self, version: &str, binary: &Path) {
        publish(self.dir.path(), version, binary, None);
    }

    /// A release of the real `version` that fails only as production, after migrating production's
    /// database: run with production's config it cannot bind its port (127.0.0.1:1 as `nobody`),
    /// which real Headscale tries only after opening and migrating the database. Staging passes.
    pub fn release_failing_on_production(&self, version: &str) {
        self.release_wrapped(
            version,
            "failing after migration when it serves production",
            &format!(
                "case \" $* \" in *\" serve \"*\"{prod}\"*) export HEADSCALE_LISTEN_ADDR=127.0.0.1:1 ;; esac",
                prod = self.path("prod/etc/config.yaml").display()
            ),
        );
    }

    /// Publishes release `version` as a shell wrapper around the real binary: `script` runs
    /// first (with `$real` set to it and the arguments in `$@`), then the real binary is exec'd.
    pub fn release_wrapped(&self, version: &str, what: &str, script: &str) {
        let real = self.path(&format!("real-headscale-{version}"));
        std::fs::copy(headscale(version), &real).expect("copy");
        let wrapper = self.path(&format!("headscale-{version}-{}", what.replace(' ', "-")));
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n# headscale {version}, {what}\nreal='{real}'\n{script}\nexec \"$real\" \"$@\"\n",
                real = real.display()
            ),
        )
        .expect("wrapper");
        self.publish_binary(version, &wrapper);
    }

    pub fn release_args(&self, version: &str, fault: &str, key: Option<&str>, extra: &[&str]) {
        let feed = self.path("feed").display().to_string();
        let mut args = vec![
            "make-release",
            "--feed",
            &feed,
            "--version",
            version,
            "--fault",
            fault,
        ];
        args.extend_from_slice(extra);
        let key_path = key.map(|k| self.path(k).display().to_string());
        if let Some(k) = &key_path {
            args.extend(["--sign", k]);
        }
        sim(&args);
    }

    pub fn asset_path(&self, version: &str) -> PathBuf {
        let arch = if cfg!(target_arch = "aarch64") {
            "arm64"
        } else {
            "amd64"
        };
        self.path(&format!(
            "feed/releases/v{version}/assets/headscale_{version}_linux_{arch}"
        ))
    }

    pub fn edit_meta(&self, version: &str, f: impl FnOnce(&mut serde_json::Value)) {
        let p = self.path(&format!("feed/releases/v{version}/release.json"));
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).expect("meta")).expect("json");
        f(&mut v);
        std::fs::write(&p, v.to_string()).expect("write meta");
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("headwarden.yaml")
    }

    pub fn write_config(&self) {
        let r = self.dir.path().display();
        let text = format!(
            "state_dir: {r}/state\nrelease:\n  api_url: http://{addr}\n  allow_insecure_http: true\n  min_age: 1d\n  minisign_public_key: {key}\n{extra}headscale:\n  binary: {r}/prod/bin/headscale\n  config: {r}/prod/etc/config.yaml\n  service:\n    kind: command\n    start: [{r}/prod/service.sh, start]\n    stop: [{r}/prod/service.sh, stop]\n    status: [{r}/prod/service.sh, status]\n    pidfile: {r}/prod/headscale.pid\n{api}smoke:\n  timeout: 5s\n{checks}{smoke}{top}",
            checks = self.checks,
            addr = self.feed_addr,
            key = self.pubkey,
            extra = self.extra_release,
            smoke = self.extra_smoke,
            api = self.extra_headscale,
            top = self.extra_top
        );
        std::fs::write(self.config_path(), text).expect("config");
    }

    pub fn hw(&self, args: &[&str]) -> Output {
        self.hw_env(args, &[])
    }

    pub fn hw_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        run_hw(&self.config_path(), args, env)
    }

    /// The version the process that answers on production's address reports (`GET /version`),
    /// with "none" when nothing answers.
    pub fn served_version(&self) -> String {
        match http_get(&self.prod_setting("listen_addr"), "/version") {
            Some(body) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["version"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("unparsable: {body}")),
            None => "none".into(),
        }
    }

    /// A top-level setting of production's Headscale config (`listen_addr`, …).
    pub fn prod_setting(&self, key: &str) -> String {
        let cfg = std::fs::read_to_string(self.path("prod/etc/config.yaml")).expect("cfg");
        cfg.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("{key} in production's config"))
            .trim()
            .to_string()
    }

    /// Production's server processes (the service's, and any other serving its config).
    pub fn prod_processes(&self) -> Vec<(i32, String)> {
        let cfg = self.path("prod/etc/config.yaml").display().to_string();
        processes_under(self.dir.path())
            .into_iter()
            .filter(|(_, cmd)| cmd.split_whitespace().any(|w| w == "serve") && cmd.contains(&cfg))
            .collect()
    }

    /// What the service manager stand-in says: running or stopped.
    pub fn service_running(&self) -> bool {
        Command::new(self.path("prod/service.sh"))
            .arg("status")
            .status()
            .expect("status")
            .success()
    }

    pub fn prod_version(&self) -> String {
        let out = Command::new(self.path("prod/bin/headscale"))
            .arg("version")
            .output()
            .expect("version");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn prod_cli(&self, what: &str) -> serde_json::Value {
        let cfg = self.path("prod/etc/config.yaml").display().to_string();
        let out = Command::new(self.path("prod/bin/headscale"))
            .args(["-c", &cfg, what, "list", "-o", "json"])
            .output()
            .expect("list");
        assert!(
            out.status.success(),
            "{what} list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// Users and nodes of production, as identities (fields stable across versions).
    pub fn dump(&self) -> Vec<String> {
        let mut v = Vec::new();
        for u in self.prod_cli("users").as_array().expect("users") {
            v.push(format!("user {} {}", u["id"], u["name"]));
        }
        for n in self.prod_cli("nodes").as_array().expect("nodes") {
            v.push(format!(
                "node {} {} {} {}",
                n["id"], n["machine_key"], n["node_key"], n["user"]["name"]
            ));
        }
        v
    }

    /// Every row of every table of production's database (read-only, WAL-aware), except
    /// `database_versions`, which the running version rewrites on each start: users, nodes,
    /// pre-auth keys, API keys, policies, migrations — a logical dump to compare, not a count.
    pub fn db_dump(&self) -> Vec<String> {
        dump_sqlite(&self.path("prod/lib/db.sqlite")).expect("production db")
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = self.hw(&["status", "--json"]);
        assert!(out.status.success(), "status: {}", text(&out));
        serde_json::from_slice(&out.stdout).expect("status json")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new(self.path("prod/service.sh"))
            .arg("stop")
            .status();
        let _ = self.feed.kill();
        let _ = self.feed.wait();
        // Nothing the test started may outlive it: a leftover is killed, then the test fails.
        let leftovers = processes_under(self.dir.path());
        for (pid, _) in &leftovers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if !leftovers.is_empty() && !std::thread::panicking() {
            panic!("processes left behind by the test: {leftovers:?}");
        }
    }
}

impl Sandbox {
    /// Runs production's own CLI (over its socket) and returns stdout.
    pub fn prod_cmd(&self, args: &[&str]) -> String {
        let cfg = self.path("prod/etc/config.yaml").display().to_string();
        let out = Command::new(self.path("prod/bin/headscale"))
            .args(["-c", &cfg])
            .args(args)
            .output()
            .expect("prod cli");
        assert!(
            out.status.success(),
            "headscale {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Production's node whose name starts with `prefix`, as its CLI prints it.
    pub fn prod_node(&self, prefix: &str) -> serde_json::Value {
        let nodes: serde_json::Value =
            serde_json::from_str(&self.prod_cmd(&["nodes", "list", "-o", "json"])).expect("nodes");
        nodes
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["name"].as_str().is_some_and(|s| s.starts_with(prefix)))
            .expect("node")
            .clone()
    }

    /// Points headwarden at production's API: over TCP with a fresh API key (0600 file), or over
    /// the unix socket.
    pub fn enable_api(&mut self, over_socket: bool) {
        if over_socket {
            self.extra_headscale = format!(
                "  api:\n    url: unix://{}\n",
                self.path("prod/run/headscale.sock").display()
            );
        } else {
            let out = self.prod_cmd(&["debug", "apikey"]);
            let v: serde_json::Value = serde_json::from_str(&out).expect("apikey json");
            let key_file = self.path("api-key");
            std::fs::write(&key_file, v["apiKey"].as_str().expect("key")).expect("key file");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
            let listen = self.prod_setting("listen_addr");
            self.extra_headscale = format!(
                "  api:\n    url: http://{listen}\n    api_key_file: {}\n",
                key_file.display()
            );
        }
        self.write_config();
    }

    /// Points headwarden at production's remote gRPC (TLS, API key, the testbed's private CA).
    pub fn enable_grpc_tls(&mut self) {
        self.enable_api(false);
        let grpc = self.prod_setting("grpc_listen_addr");
        self.extra_headscale = format!(
            "  api:\n    url: grpcs://{grpc}\n    api_key_file: {}\n    ca_file: {}\n",
            self.path("api-key").display(),
            self.path("prod/lib/ca.crt").display()
        );
        self.write_config();
    }

    /// Registers users with nodes of a given age (days) and optional expiry / tags.
    pub fn seed(&self, prefix: &str, age_days: i64, expiry_days: Option<i64>, tags: &str) {
        let age = age_days.to_string();
        let mut args = vec![
            "debug",
            "seed",
            "--users",
            "1",
            "--nodes-per-user",
            "1",
            "--prefix",
            prefix,
            "--age-days",
            &age,
            "--tags",
            tags,
        ];
        let exp = expiry_days.map(|d| d.to_string());
        if let Some(e) = &exp {
            args.extend(["--expiry-days", e]);
        }
        self.prod_cmd(&args);
    }

    /// The notification outbox (events queued for chat), read straight from the state store.
    pub fn outbox(&self) -> Vec<(String, serde_json::Value)> {
        let db = rusqlite::Connection::open(self.path("state/state.db")).expect("state.db");
        let mut stmt = db
            .prepare("SELECT event, payload FROM outbox ORDER BY id")
            .expect("query");
        stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                serde_json::from_str(&r.get::<_, String>(1)?).unwrap_or_default(),
            ))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("collect")
    }
}
