//! headwarden's test kit, shared by the integration tests (tests/it) and the benchmarks: the
//! sandbox (a production stand-in, a local release feed, a minisign key, and a headwarden config
//! pointing at them; dropping it stops every process it started), SQLite dumps, process checks,
//! and the real Headscale and Tailscale binaries of the rig (`scripts/rig`).
//!
//! The binaries under test are found beside the test executable (`target/<profile>/`): cargo
//! builds `headwarden` for the root package's tests and benches; the stand-in is another package
//! of the workspace, so [`sim_bin`] builds it once per process (`cargo build -p headscale-sim`,
//! same profile and target directory; seconds when it is up to date) so it is never stale.

pub mod compose;
pub mod deb;
pub mod lookalike;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// Real Headscale's config as the compose and deb sandboxes give it: upstream's paths
/// (/var/lib/headscale, /var/run/headscale, /etc/headscale/derp.yaml), offline DERP, no update
/// check, policy in the database.
pub fn upstream_config(server_url: &str, listen: &str, metrics: &str, grpc: &str) -> String {
    UPSTREAM_CONFIG
        .replace("{server}", server_url)
        .replace("{listen}", listen)
        .replace("{metrics}", metrics)
        .replace("{grpc}", grpc)
}

const UPSTREAM_CONFIG: &str = "server_url: {server}
listen_addr: {listen}
metrics_listen_addr: {metrics}
grpc_listen_addr: {grpc}
noise:
  private_key_path: /var/lib/headscale/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: false
  urls: []
  paths: [/etc/headscale/derp.yaml]
  auto_update_enabled: false
disable_check_updates: true
ephemeral_node_inactivity_timeout: 30m
database:
  type: sqlite
  sqlite:
    path: /var/lib/headscale/db.sqlite
    write_ahead_log: true
log:
  level: info
policy:
  mode: database
dns:
  magic_dns: false
  base_domain: tailnet.example
  override_local_dns: false
  nameservers:
    global: []
unix_socket: /var/run/headscale/headscale.sock
unix_socket_permission: \"0770\"
";

/// An offline DERP map (the real server must start without fetching one).
pub const OFFLINE_DERP: &str = "regions:
  900:
    regionid: 900
    regioncode: local
    regionname: Offline
    nodes:
      - name: 900a
        regionid: 900
        hostname: 127.0.0.1
        ipv4: 127.0.0.1
        stunport: -1
        derpport: 1
";

/// `smoke.checks` for a stand-in production: every check but the connectivity probe.
pub const STAND_IN_CHECKS: &str = "  checks: [health, version, noise_key, data_parity]\n";

/// The account production runs as when the suite runs as root (`nobody`).
pub const PROD_UID: u32 = 65534;

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

/// The stand-in's GitHub releases API over `dir/feed` (its releases under `feed/releases`), and
/// the address it listens on.
pub fn start_feed(dir: &Path) -> (Child, String) {
    std::fs::create_dir_all(dir.join("feed/releases")).expect("feed dir");
    let addr_file = dir.join("feed.addr");
    let feed = Command::new(sim_bin())
        .args([
            "github-feed",
            "--dir",
            &dir.join("feed").display().to_string(),
            "--addr-file",
            &addr_file.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("feed");
    let addr = wait_for_addr(&addr_file);
    (feed, addr)
}

/// Publishes release `version` in the feed under `dir` (`dir/feed`, signed with
/// `dir/keys/minisign.key`): `binary` as its asset and, when given, `deb` as its package, named,
/// checksummed and signed like upstream's.
pub fn publish(dir: &Path, version: &str, binary: &Path, deb: Option<&Path>) {
    let feed = dir.join("feed").display().to_string();
    let key = dir.join("keys/minisign.key").display().to_string();
    let binary = binary.display().to_string();
    let deb = deb.map(|d| d.display().to_string());
    let mut args = vec![
        "make-release",
        "--feed",
        &feed,
        "--version",
        version,
        "--binary",
        &binary,
        "--sign",
        &key,
    ];
    if let Some(d) = &deb {
        args.extend(["--deb", d.as_str()]);
    }
    sim(&args);
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

/// The first column of `sql`'s rows in the SQLite database at `path` (read only), as text.
pub fn sqlite_column(path: &Path, sql: &str) -> Vec<String> {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open database");
    let mut stmt = db.prepare(sql).expect("query");
    let rows = stmt
        .query_map([], |r| {
            r.get::<_, String>(0)
                .or_else(|_| r.get::<_, i64>(0).map(|i| i.to_string()))
        })
        .expect("rows")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    rows
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

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| {
            st.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Whether the journal in `state_dir/state.db` has a step named `name` (read-only).
pub fn journal_has(state_dir: &Path, name: &str) -> bool {
    rusqlite::Connection::open_with_flags(
        state_dir.join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .and_then(|db| {
        db.query_row("SELECT count(*) FROM steps WHERE name = ?1", [name], |r| {
            r.get::<_, i64>(0)
        })
    })
    .is_ok_and(|n| n > 0)
}

/// Live processes (not zombies) whose command line names something under `dir`.
pub fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|st| {
                st.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie && cmd.contains(&needle) {
            out.push((pid, cmd.trim().to_string()));
        }
    }
    out
}

/// Every row of every table of the SQLite file at `path` (read-only, WAL-aware), except
/// `database_versions`, after `PRAGMA integrity_check` passed.
pub fn dump_sqlite(path: &Path) -> Result<Vec<String>, String> {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if ok != "ok" {
        return Err(format!("integrity_check: {ok}"));
    }
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != 'database_versions' ORDER BY name")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = db
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY 1"))
            .map_err(|e| e.to_string())?;
        let n = stmt.column_count();
        let rows: Vec<String> = stmt
            .query_map([], |r| {
                let cells: Vec<String> = (0..n)
                    .map(|i| {
                        format!(
                            "{:?}",
                            r.get_ref(i).map(|v| v
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|_| format!("{v:?}")))
                        )
                    })
                    .collect();
                Ok(cells.join("|"))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| e.to_string())?;
        out.extend(rows.into_iter().map(|r| format!("{t}: {r}")));
    }
    Ok(out)
}

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
