//! A private PostgreSQL cluster for the tests: Debian's PostgreSQL (scripts/test installs it),
//! `initdb`'d in a directory of its own as the `postgres` account (PostgreSQL refuses to run as
//! root), listening on 127.0.0.1 only and on a unix socket in that directory, with a role and a
//! database for Headscale (the database owned by the role, as upstream's docs set it up).
//! Dropping it stops the cluster; its directory goes with it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{free_port, text};

/// Headscale's role and its password (a test cluster on loopback only).
pub const ROLE: &str = "headscale";
pub const PASSWORD: &str = "hs-test-pass";
pub const DATABASE: &str = "headscale";

pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

/// The newest installed PostgreSQL's programs (`/usr/lib/postgresql/<major>/bin`).
fn bin_dir() -> PathBuf {
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("/usr/lib/postgresql: run the suite through scripts/test (it installs PostgreSQL)")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    majors.sort_unstable();
    let major = majors.last().expect("an installed PostgreSQL");
    PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))
}

impl PgCluster {
    pub fn start() -> PgCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let pg = PgCluster {
            bin: bin_dir(),
            port: free_port(),
            dir,
        };
        let sock = pg.sock();
        std::fs::create_dir_all(&sock).expect("socket dir");
        pg.own_by_postgres(pg.dir.path());
        pg.own_by_postgres(&sock);
        let data = pg.data().display().to_string();
        pg.as_postgres(&[
            "initdb",
            "-D",
            &data,
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]);
        let log = pg.dir.path().join("pg.log").display().to_string();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            pg.port,
            sock.display()
        );
        pg.as_postgres(&[
            "pg_ctl", "-D", &data, "-l", &log, "-w", "start", "-o", &opts,
        ]);
        // One statement a call: CREATE DATABASE cannot run in a transaction block.
        pg.sql_in(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"),
        );
        pg.sql_in(
            "postgres",
            &format!("CREATE DATABASE {DATABASE} OWNER {ROLE}"),
        );
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn own_by_postgres(&self, path: &Path) {
        let out = Command::new("chown")
            .args(["postgres:postgres", &path.display().to_string()])
            .output()
            .expect("chown");
        assert!(out.status.success(), "chown: {}", text(&out));
    }

    /// One of the cluster's programs as the `postgres` account.
    fn as_postgres(&self, argv: &[&str]) -> Output {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(argv[0]))
            .args(&argv[1..])
            .current_dir(self.dir.path())
            .output()
            .expect("runuser");
        assert!(out.status.success(), "{argv:?}: {}", text(&out));
        out
    }

    /// `psql` on Headscale's database as the superuser over the socket: its unaligned,
    /// tuples-only output.
    pub fn sql(&self, statements: &str) -> String {
        self.sql_in(DATABASE, statements)
    }

    fn sql_in(&self, database: &str, statements: &str) -> String {
        let (port, sock) = (self.port.to_string(), self.sock().display().to_string());
        let out = self.as_postgres(&[
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-h",
            &sock,
            "-p",
            &port,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            statements,
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Headscale's `database.*` for this cluster as its service environment
    /// (`HEADSCALE_DATABASE_*`, `KEY=VALUE`).
    pub fn headscale_env(&self) -> Vec<String> {
        vec![
            "HEADSCALE_DATABASE_TYPE=postgres".to_string(),
            "HEADSCALE_DATABASE_POSTGRES_HOST=127.0.0.1".to_string(),
            format!("HEADSCALE_DATABASE_POSTGRES_PORT={}", self.port),
            format!("HEADSCALE_DATABASE_POSTGRES_NAME={DATABASE}"),
            format!("HEADSCALE_DATABASE_POSTGRES_USER={ROLE}"),
            format!("HEADSCALE_DATABASE_POSTGRES_PASS={PASSWORD}"),
            "HEADSCALE_DATABASE_POSTGRES_SSL=false".to_string(),
        ]
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}
