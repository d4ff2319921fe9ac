//! A PostgreSQL-backed production database as headwarden's own clients reach it, with the
//! connection Headscale builds from `database.postgres.*` (the password and `sslmode` in the
//! client's environment, never on its command line): who headwarden is there, what it may do,
//! and whether the client tools can dump that server. `config check` shows it; staging, backups
//! and restores (issue 26) will build on it.

use std::path::PathBuf;
use std::time::Duration;

use crate::headscale::config::Postgres;
use crate::process;

const ASK_TIMEOUT: Duration = Duration::from_secs(30);

/// What the server says of headwarden's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgFacts {
    pub user: String,
    pub database: String,
    /// The role owns the database (a copy, a backup and an in-place restore need no more).
    pub owner: bool,
    /// The role may create databases (a staging database, a restore beside production).
    pub createdb: bool,
    /// `server_version`, and its major.
    pub server: String,
    pub server_major: u32,
    /// `pg_dump --version`'s version, when a client is installed.
    pub pg_dump: Option<String>,
    /// Other sessions on the database (production's pool among them).
    pub other_sessions: u64,
}

impl PgFacts {
    pub fn describe(&self) -> String {
        let dump = match &self.pg_dump {
            Some(v) if major(v).is_some_and(|m| m < self.server_major) => {
                format!("pg_dump {v} is older than the server and refuses to dump it")
            }
            Some(v) => format!("pg_dump {v}"),
            None => "no pg_dump installed".to_string(),
        };
        format!(
            "reachable as {} ({} {}, {}); server {}; {dump}; {} other session{}",
            self.user,
            if self.owner {
                "owner of"
            } else {
                "NOT the owner of"
            },
            self.database,
            if self.createdb {
                "with CREATEDB"
            } else {
                "no CREATEDB"
            },
            self.server,
            self.other_sessions,
            if self.other_sessions == 1 { "" } else { "s" }
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("no PostgreSQL client (psql) is installed: install postgresql-client")]
    NoClient,
    #[error("cannot reach database {database} as {user}: {detail}")]
    Unreachable {
        database: String,
        user: String,
        detail: String,
    },
    #[error("psql printed an answer headwarden cannot read: {0:?}")]
    Output(String),
}

/// The major of a version text (`15.18 (Debian …)` → 15).
fn major(version: &str) -> Option<u32> {
    version.split(['.', ' ']).next()?.parse().ok()
}

/// A client program: the newest installed PostgreSQL's, else the one on the PATH.
fn client(program: &str) -> Option<PathBuf> {
    let mut majors: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    majors.sort_unstable();
    majors
        .iter()
        .rev()
        .map(|m| PathBuf::from(format!("/usr/lib/postgresql/{m}/bin/{program}")))
        .chain(["/usr/bin", "/usr/local/bin"].map(|d| PathBuf::from(d).join(program)))
        .find(|p| p.is_file())
}

/// The connection as libpq's environment: what must not be on a command line.
fn client_env(pg: &Postgres) -> Vec<(String, String)> {
    let mut env = vec![("PGCONNECT_TIMEOUT".to_string(), "10".to_string())];
    if let Some(p) = &pg.password {
        env.push(("PGPASSWORD".into(), p.expose().to_string()));
    }
    if let Some(mode) = &pg.sslmode {
        env.push(("PGSSLMODE".into(), mode.clone()));
    }
    env
}

/// Asks the server, as production's role, what headwarden may do there.
pub async fn preflight(pg: &Postgres) -> Result<PgFacts, PgError> {
    let psql = client("psql").ok_or(PgError::NoClient)?;
    let mut argv = vec![
        psql.display().to_string(),
        "-X".into(),
        "-A".into(),
        "-t".into(),
        "-F".into(),
        "|".into(),
        "-h".into(),
        pg.host.clone(),
        "-U".into(),
        pg.user.clone(),
        "-d".into(),
        pg.name.clone(),
    ];
    if let Some(port) = pg.port {
        argv.extend(["-p".to_string(), port.to_string()]);
    }
    argv.extend([
        "-c".to_string(),
        "SELECT current_user, (SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user), \
         pg_get_userbyid(d.datdba) = current_user, current_setting('server_version'), \
         (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid()) FROM pg_database d WHERE d.datname = current_database()"
            .to_string(),
    ]);
    let unreachable = |detail: String| PgError::Unreachable {
        database: pg.name.clone(),
        user: pg.user.clone(),
        detail,
    };
    let out = process::run_env(&argv, &client_env(pg), ASK_TIMEOUT)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if !out.success() {
        return Err(unreachable(out.tail()));
    }
    let line = out.stdout.trim().to_string();
    let f: Vec<&str> = line.split('|').collect();
    let [user, createdb, owner, server, sessions] = f[..] else {
        return Err(PgError::Output(line));
    };
    let server = server.to_string();
    Ok(PgFacts {
        user: user.to_string(),
        database: pg.name.clone(),
        owner: owner == "t",
        createdb: createdb == "t",
        server_major: major(&server).ok_or_else(|| PgError::Output(line.clone()))?,
        server,
        pg_dump: pg_dump_version().await,
        other_sessions: sessions
            .parse()
            .map_err(|_| PgError::Output(line.clone()))?,
    })
}

/// `pg_dump --version`'s version (`pg_dump (PostgreSQL) 15.18 (Debian …)` → `15.18`).
async fn pg_dump_version() -> Option<String> {
    let argv = [client("pg_dump")?.display().to_string(), "--version".into()];
    let out = process::run(&argv, ASK_TIMEOUT).await.ok()?;
    out.stdout.split_whitespace().nth(2).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_pg_dump_is_named_as_refusing_the_server() {
        let facts = PgFacts {
            user: "headscale".into(),
            database: "headscale".into(),
            owner: true,
            createdb: false,
            server: "16.4".into(),
            server_major: 16,
            pg_dump: Some("15.18".into()),
            other_sessions: 1,
        };
        assert_eq!(
            facts.describe(),
            "reachable as headscale (owner of headscale, no CREATEDB); server 16.4; pg_dump 15.18 is older than the server and refuses to dump it; 1 other session"
        );
        assert_eq!(major("15.18 (Debian 15.18-0+deb12u1)"), Some(15));
    }
}
