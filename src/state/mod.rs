//! The state store: `state_dir/state.db` (SQLite), the only module with SQL.
//!
//! Holds runs and their journaled steps (the crash-recovery record), installed versions,
//! backups, seen releases (and which are bad), and the release feed's ETag cache. The schema
//! has its own version (`PRAGMA user_version`) and forward-only migrations in [`MIGRATIONS`].
//!
//! Also home to the SQLite *file* operations on Headscale's database (online copy through the
//! backup API, integrity check, WAL-aware restore), so all SQLite knowledge lives here.

pub mod sqlite_files;
mod vocab;

pub use vocab::{Key, RunId, RunKind, RunOutcome, Step};

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::error::Hinted;
use crate::event::{Event, Severity};
use crate::files::{self, FileError};

/// `state_dir`'s mode: traversable (not listable) by Headscale's account, which executes
/// `versions/<v>/headscale`; everything private inside it is 0700 or 0600.
pub const STATE_DIR_MODE: u32 = 0o711;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state store {path} has schema version {found}, newer than this headwarden understands ({known})")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("state store query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("state directory {path} is not safe to use")]
    Unsafe {
        path: PathBuf,
        #[source]
        source: FileError,
    },
}

/// No hint: the message names the state file and what failed.
impl Hinted for StateError {}

/// Forward-only schema migrations; index + 1 is the schema version they produce.
const MIGRATIONS: &[&str] = &[
    // 1: runs, journal, installs, backups, releases, feed cache
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        finished_at INTEGER,
        outcome TEXT,
        from_version TEXT,
        to_version TEXT,
        detail TEXT,
        pid INTEGER
     );
     CREATE TABLE steps (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        hop INTEGER NOT NULL,
        name TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL,
        message TEXT,
        started_at INTEGER NOT NULL,
        finished_at INTEGER,
        elapsed_ms INTEGER
     );
     CREATE INDEX steps_run ON steps(run_id, id);
     CREATE TABLE installs (
        version TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        installed_at INTEGER NOT NULL
     );
     CREATE TABLE backups (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id),
        hop INTEGER NOT NULL,
        version TEXT NOT NULL,
        to_version TEXT NOT NULL,
        dir TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        verified INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE releases (
        tag TEXT PRIMARY KEY,
        first_seen INTEGER NOT NULL,
        status TEXT NOT NULL DEFAULT 'seen',
        reason TEXT
     );
     CREATE TABLE feed_cache (
        url TEXT PRIMARY KEY,
        etag TEXT,
        body TEXT NOT NULL,
        fetched_at INTEGER NOT NULL
     );",
    // 2: the key job: observations, reminders sent, minted pre-auth keys, notification outbox
    "CREATE TABLE key_observations (
        node_id INTEGER PRIMARY KEY,
        machine_key TEXT NOT NULL,
        node_key TEXT NOT NULL,
        registered_at INTEGER NOT NULL,
        seen_at INTEGER NOT NULL
     );
     CREATE TABLE key_reminders (
        node_id INTEGER NOT NULL,
        deadline INTEGER NOT NULL,
        stage INTEGER NOT NULL,
        sent_at INTEGER NOT NULL,
        PRIMARY KEY (node_id, deadline, stage)
     );
     CREATE TABLE minted_keys (
        id INTEGER PRIMARY KEY,
        node_id INTEGER NOT NULL,
        key_id INTEGER NOT NULL,
        user_id INTEGER,
        user_name TEXT,
        secret TEXT,
        expires_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'active'
     );
     CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        event TEXT NOT NULL,
        severity TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending'
     );",
    // 3: chat delivery: one row per (event, destination); dedupe keys for repeated alerts; a
    // small key-value table for facts such as the last successful feed poll.
    "ALTER TABLE outbox ADD COLUMN dedupe TEXT;
     CREATE INDEX outbox_dedupe ON outbox (dedupe, created_at);
     CREATE TABLE deliveries (
        event_id INTEGER NOT NULL REFERENCES outbox (id),
        dest TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at INTEGER NOT NULL,
        last_error TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (event_id, dest)
     );
     CREATE INDEX deliveries_due ON deliveries (state, next_at);
     CREATE TABLE kv (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at INTEGER NOT NULL
     );",
];

pub struct Store {
    conn: Connection,
}

pub type StepId = i64;

#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: RunId,
    pub kind: RunKind,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: Option<RunOutcome>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    pub id: StepId,
    pub run_id: RunId,
    pub hop: i64,
    pub name: Step,
    pub data: serde_json::Value,
    pub status: String,
    pub message: Option<String>,
    pub elapsed_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupRow {
    pub id: i64,
    pub run_id: RunId,
    pub hop: i64,
    /// The production version the backup was taken from.
    pub version: String,
    /// The version that was being installed.
    pub to_version: String,
    pub dir: String,
    pub created_at: i64,
    pub verified: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstallRow {
    pub version: String,
    pub path: String,
    pub sha256: String,
    pub installed_at: i64,
}

#[derive(Debug, Clone)]
pub struct KeyObservation {
    pub node_id: i64,
    pub machine_key: String,
    pub node_key: String,
    pub registered_at: i64,
}

/// A pre-auth key headwarden minted for a node's re-registration. `Debug` never shows the key.
#[derive(Clone)]
pub struct MintedKey {
    pub node_id: i64,
    pub key_id: i64,
    pub user_id: Option<i64>,
    pub user_name: Option<String>,
    /// Kept only for servers before 0.28, which expire keys by user + full key.
    pub secret: Option<String>,
    pub expires_at: i64,
}

impl std::fmt::Debug for MintedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedKey")
            .field("node_id", &self.node_id)
            .field("key_id", &self.key_id)
            .field("user_id", &self.user_id)
            .field("user_name", &self.user_name)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxRow {
    pub id: i64,
    pub event: String,
    pub severity: String,
    pub payload: serde_json::Value,
    pub created_at: i64,
    pub state: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRow {
    pub event_id: i64,
    pub dest: String,
    pub state: String,
    pub attempts: i64,
    pub next_at: i64,
    pub last_error: Option<String>,
    pub event: String,
    pub severity: String,
    pub payload: serde_json::Value,
    pub created_at: i64,
}

/// Unix seconds as RFC 3339 (UTC); empty when out of range.
pub fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Store {
    /// Opens (creating and migrating) `state_dir/state.db`.
    ///
    /// `state_dir` and its ancestors must be owned by root or headwarden's user and writable by
    /// nobody else (a swapped `versions/<v>` would otherwise run as root). It is kept at 0711:
    /// Headscale's account may traverse it to execute `versions/<v>/headscale` but list nothing;
    /// `state.db` (which briefly holds minted keys) is 0600.
    pub fn open(state_dir: &Path) -> Result<Store, StateError> {
        let path = state_dir.join("state.db");
        let open_err = |source| StateError::Open {
            path: path.clone(),
            source,
        };
        let unsafe_dir = |source| StateError::Unsafe {
            path: state_dir.to_path_buf(),
            source,
        };
        files::check_ancestors(state_dir).map_err(unsafe_dir)?;
        files::owned_dir(state_dir, STATE_DIR_MODE).map_err(unsafe_dir)?;
        for suffix in ["", "-wal", "-shm"] {
            let file = state_dir.join(format!("state.db{suffix}"));
            if files::regular_meta(&file)
                .map_err(unsafe_dir)?
                .is_some_and(|m| m.mode & 0o077 != 0)
            {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
            }
        }
        if files::regular_meta(&path).map_err(unsafe_dir)?.is_none() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        }
        let conn = Connection::open(&path).map_err(open_err)?;
        // secure_delete: a purged one-time key is overwritten, not left in a free page.
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON; PRAGMA secure_delete=ON;")
            .map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StateError::TooNew {
                path,
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.unchecked_transaction().map_err(open_err)?;
            tx.execute_batch(sql).map_err(open_err)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(open_err)?;
            tx.commit().map_err(open_err)?;
        }
        Ok(Store { conn })
    }

    pub fn schema_version(&self) -> Result<i64, StateError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    // ---- runs and the journal ----

    pub fn begin_run(
        &self,
        kind: RunKind,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<RunId, StateError> {
        self.conn.execute(
            "INSERT INTO runs (kind, started_at, from_version, to_version, pid) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![kind, now(), from, to, std::process::id()],
        )?;
        Ok(RunId(self.conn.last_insert_rowid()))
    }

    pub fn finish_run(
        &self,
        run: RunId,
        outcome: RunOutcome,
        detail: &str,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE runs SET finished_at = ?2, outcome = ?3, detail = ?4 WHERE id = ?1",
            params![run, now(), outcome, detail],
        )?;
        Ok(())
    }

    pub fn set_run_versions(&self, run: RunId, from: &str, to: &str) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE runs SET from_version = ?2, to_version = ?3 WHERE id = ?1",
            params![run, from, to],
        )?;
        Ok(())
    }

    /// Journals that a step is about to act. Durable before the step runs (synchronous=FULL).
    pub fn step_start(
        &self,
        run: RunId,
        hop: i64,
        name: Step,
        data: &serde_json::Value,
    ) -> Result<StepId, StateError> {
        self.conn.execute(
            "INSERT INTO steps (run_id, hop, name, data, status, started_at) VALUES (?1, ?2, ?3, ?4, 'started', ?5)",
            params![run, hop, name, data.to_string(), now()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn step_finish(
        &self,
        step: StepId,
        ok: bool,
        message: &str,
        elapsed_ms: u128,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE steps SET status = ?2, message = ?3, finished_at = ?4, elapsed_ms = ?5 WHERE id = ?1",
            params![step, if ok { "done" } else { "failed" }, message, now(), elapsed_ms as i64],
        )?;
        Ok(())
    }

    pub fn step_update_data(
        &self,
        step: StepId,
        data: &serde_json::Value,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE steps SET data = ?2 WHERE id = ?1",
            params![step, data.to_string()],
        )?;
        Ok(())
    }

    pub fn open_runs(&self) -> Result<Vec<RunRow>, StateError> {
        self.query_runs("WHERE outcome IS NULL ORDER BY id", [])
    }

    pub fn recent_runs(&self, limit: i64) -> Result<Vec<RunRow>, StateError> {
        self.query_runs("ORDER BY id DESC LIMIT ?1", [limit])
    }

    fn query_runs<P: rusqlite::Params>(&self, tail: &str, p: P) -> Result<Vec<RunRow>, StateError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, kind, started_at, finished_at, outcome, from_version, to_version, detail FROM runs {tail}"
        ))?;
        let rows = stmt
            .query_map(p, |r| {
                Ok(RunRow {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    started_at: r.get(2)?,
                    finished_at: r.get(3)?,
                    outcome: r.get(4)?,
                    from_version: r.get(5)?,
                    to_version: r.get(6)?,
                    detail: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn steps(&self, run: RunId) -> Result<Vec<StepRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, run_id, hop, name, data, status, message, elapsed_ms FROM steps WHERE run_id = ?1 ORDER BY id")?;
        let rows = stmt
            .query_map([run], |r| {
                let data: String = r.get(4)?;
                Ok(StepRow {
                    id: r.get(0)?,
                    run_id: r.get(1)?,
                    hop: r.get(2)?,
                    name: r.get(3)?,
                    data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
                    status: r.get(5)?,
                    message: r.get(6)?,
                    elapsed_ms: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    // ---- installs ----

    pub fn record_install(
        &self,
        version: &str,
        path: &Path,
        sha256: &str,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO installs (version, path, sha256, installed_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(version) DO UPDATE SET path = excluded.path, sha256 = excluded.sha256, installed_at = excluded.installed_at",
            params![version, path.to_string_lossy(), sha256, now()],
        )?;
        Ok(())
    }

    pub fn installs(&self) -> Result<Vec<InstallRow>, StateError> {
        let mut stmt = self.conn.prepare("SELECT version, path, sha256, installed_at FROM installs ORDER BY installed_at DESC, version DESC")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(InstallRow {
                    version: r.get(0)?,
                    path: r.get(1)?,
                    sha256: r.get(2)?,
                    installed_at: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn forget_install(&self, version: &str) -> Result<(), StateError> {
        self.conn
            .execute("DELETE FROM installs WHERE version = ?1", [version])?;
        Ok(())
    }

    // ---- backups ----

    pub fn record_backup(
        &self,
        run: RunId,
        hop: i64,
        version: &str,
        to_version: &str,
        dir: &Path,
        verified: bool,
    ) -> Result<i64, StateError> {
        self.conn.execute(
            "INSERT INTO backups (run_id, hop, version, to_version, dir, created_at, verified) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![run, hop, version, to_version, dir.to_string_lossy(), now(), verified],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn backups(&self) -> Result<Vec<BackupRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, run_id, hop, version, to_version, dir, created_at, verified FROM backups ORDER BY id DESC")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(BackupRow {
                    id: r.get(0)?,
                    run_id: r.get(1)?,
                    hop: r.get(2)?,
                    version: r.get(3)?,
                    to_version: r.get(4)?,
                    dir: r.get(5)?,
                    created_at: r.get(6)?,
                    verified: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    // ---- releases ----

    pub fn mark_release_seen(&self, tag: &str) -> Result<bool, StateError> {
        let n = self.conn.execute(
            "INSERT INTO releases (tag, first_seen) VALUES (?1, ?2) ON CONFLICT(tag) DO NOTHING",
            params![tag, now()],
        )?;
        Ok(n > 0)
    }

    pub fn mark_release_bad(&self, tag: &str, reason: &str) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO releases (tag, first_seen, status, reason) VALUES (?1, ?2, 'bad', ?3)
             ON CONFLICT(tag) DO UPDATE SET status = 'bad', reason = excluded.reason",
            params![tag, now(), reason],
        )?;
        Ok(())
    }

    /// Tags recorded as bad, with the reason.
    pub fn bad_releases(&self) -> Result<Vec<(String, String)>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT tag, coalesce(reason, '') FROM releases WHERE status = 'bad' ORDER BY tag",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    // ---- key job ----

    pub fn key_observations(&self) -> Result<Vec<KeyObservation>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT node_id, machine_key, node_key, registered_at FROM key_observations",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(KeyObservation {
                    node_id: r.get(0)?,
                    machine_key: r.get(1)?,
                    node_key: r.get(2)?,
                    registered_at: r.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn observe_key(&self, o: &KeyObservation) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO key_observations (node_id, machine_key, node_key, registered_at, seen_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(node_id) DO UPDATE SET machine_key = excluded.machine_key, node_key = excluded.node_key,
                registered_at = excluded.registered_at, seen_at = excluded.seen_at",
            params![o.node_id, o.machine_key, o.node_key, o.registered_at, now()],
        )?;
        Ok(())
    }

    pub fn forget_node(&self, node_id: i64) -> Result<(), StateError> {
        self.conn
            .execute("DELETE FROM key_observations WHERE node_id = ?1", [node_id])?;
        Ok(())
    }

    /// Highest reminder stage sent per (node, deadline).
    pub fn reminders_sent(&self) -> Result<Vec<(i64, i64, i64)>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT node_id, deadline, max(stage) FROM key_reminders GROUP BY node_id, deadline",
        )?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Records a reminder and queues its event atomically: either both happen or neither.
    pub fn record_reminder(
        &self,
        node_id: i64,
        deadline: i64,
        stage: i64,
        event: Event,
        payload: &serde_json::Value,
    ) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO key_reminders (node_id, deadline, stage, sent_at) VALUES (?1, ?2, ?3, ?4)",
            params![node_id, deadline, stage, now()],
        )?;
        tx.execute(
            "INSERT INTO outbox (event, severity, payload, created_at) VALUES (?1, 'warning', ?2, ?3)",
            params![event.as_str(), payload.to_string(), now()],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn record_minted_key(&self, m: &MintedKey) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO minted_keys (node_id, key_id, user_id, user_name, secret, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![m.node_id, m.key_id, m.user_id, m.user_name, m.secret, m.expires_at, now()],
        )?;
        Ok(())
    }

    /// Active minted keys (to expire when used up, superseded or past their window).
    pub fn active_minted_keys(&self) -> Result<Vec<(i64, MintedKey)>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, node_id, key_id, user_id, user_name, secret, expires_at FROM minted_keys WHERE state = 'active' ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    MintedKey {
                        node_id: r.get(1)?,
                        key_id: r.get(2)?,
                        user_id: r.get(3)?,
                        user_name: r.get(4)?,
                        secret: r.get(5)?,
                        expires_at: r.get(6)?,
                    },
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn retire_minted_key(&self, id: i64, state: &str) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE minted_keys SET state = ?2, secret = NULL WHERE id = ?1",
            params![id, state],
        )?;
        Ok(())
    }

    /// Queues a notification event (delivered by the notification backends).
    pub fn push_event(
        &self,
        event: Event,
        severity: Severity,
        payload: &serde_json::Value,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO outbox (event, severity, payload, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                event.as_str(),
                severity.as_str(),
                payload.to_string(),
                now()
            ],
        )?;
        Ok(())
    }

    /// Queues an event unless one with the same `dedupe` key was queued within `window` seconds.
    /// Returns whether it was queued.
    pub fn push_event_once(
        &self,
        event: Event,
        severity: Severity,
        payload: &serde_json::Value,
        dedupe: &str,
        window: i64,
    ) -> Result<bool, StateError> {
        let recent: Option<i64> = self
            .conn
            .query_row(
                "SELECT id FROM outbox WHERE dedupe = ?1 AND created_at > ?2 LIMIT 1",
                params![dedupe, now() - window],
                |r| r.get(0),
            )
            .optional()?;
        if recent.is_some() {
            return Ok(false);
        }
        self.conn.execute(
            "INSERT INTO outbox (event, severity, payload, created_at, dedupe) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![event.as_str(), severity.as_str(), payload.to_string(), now(), dedupe],
        )?;
        Ok(true)
    }

    /// Events not yet fanned out to destinations.
    pub fn unrouted_events(&self) -> Result<Vec<OutboxRow>, StateError> {
        Ok(self
            .outbox()?
            .into_iter()
            .filter(|r| r.state == "pending")
            .collect())
    }

    /// Takes the one-time key out of stored key messages once nothing can still send it (routed,
    /// and no delivery pending or in flight) or once the key has expired. Returns how many.
    pub fn purge_delivered_keys(&self) -> Result<usize, StateError> {
        let purged = self.conn.execute(
            "UPDATE outbox SET payload = json_set(json_remove(payload, '$.command'), '$.key_withheld',
                 'the one-time key was purged from headwarden''s store after delivery')
             WHERE event IN ('keys.reminder', 'keys.rotation_requested')
               AND json_extract(payload, '$.command') IS NOT NULL
               AND ((state != 'pending' AND NOT EXISTS (SELECT 1 FROM deliveries d
                        WHERE d.event_id = outbox.id AND d.state IN ('pending', 'sending')))
                    OR unixepoch(json_extract(payload, '$.key_expires')) <= ?1)",
            params![now()],
        )?;
        if purged > 0 {
            // The old pages still sit in the WAL until a checkpoint: write them back and truncate.
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        }
        Ok(purged)
    }

    /// Fans an event out: one delivery per destination id, and the event leaves 'pending'.
    pub fn route_event(&self, event_id: i64, dests: &[String]) -> Result<(), StateError> {
        let tx = self.conn.unchecked_transaction()?;
        let t = now();
        for d in dests {
            tx.execute(
                "INSERT OR IGNORE INTO deliveries (event_id, dest, next_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                params![event_id, d, t],
            )?;
        }
        tx.execute(
            "UPDATE outbox SET state = ?2 WHERE id = ?1",
            params![
                event_id,
                if dests.is_empty() {
                    "unrouted"
                } else {
                    "routed"
                }
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deliveries in a given state, oldest event first.
    pub fn deliveries(&self, state: &str) -> Result<Vec<DeliveryRow>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT d.event_id, d.dest, d.state, d.attempts, d.next_at, d.last_error,
                    o.event, o.severity, o.payload, o.created_at
             FROM deliveries d JOIN outbox o ON o.id = d.event_id
             WHERE d.state = ?1 ORDER BY d.event_id, d.dest",
        )?;
        let rows = stmt
            .query_map([state], |r| {
                let payload: String = r.get(8)?;
                Ok(DeliveryRow {
                    event_id: r.get(0)?,
                    dest: r.get(1)?,
                    state: r.get(2)?,
                    attempts: r.get(3)?,
                    next_at: r.get(4)?,
                    last_error: r.get(5)?,
                    event: r.get(6)?,
                    severity: r.get(7)?,
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                    created_at: r.get(9)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Moves a delivery to `state` (attempts counted when it goes to 'sending').
    pub fn set_delivery(
        &self,
        event_id: i64,
        dest: &str,
        state: &str,
        next_at: Option<i64>,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE deliveries SET state = ?3,
                attempts = attempts + (?3 = 'sending'),
                next_at = COALESCE(?4, next_at),
                last_error = COALESCE(?5, last_error),
                updated_at = ?6
             WHERE event_id = ?1 AND dest = ?2",
            params![event_id, dest, state, next_at, error, now()],
        )?;
        Ok(())
    }

    /// Delivery counts by state.
    pub fn delivery_counts(&self) -> Result<Vec<(String, i64)>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM deliveries GROUP BY state ORDER BY state")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn kv_get(&self, key: Key<'_>) -> Result<Option<String>, StateError> {
        let key = key.name();
        Ok(self
            .conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn kv_set(&self, key: Key<'_>, value: &str) -> Result<(), StateError> {
        let key = key.name();
        self.conn.execute(
            "INSERT INTO kv (key, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            params![key, value, now()],
        )?;
        Ok(())
    }

    pub fn kv_delete(&self, key: Key<'_>) -> Result<(), StateError> {
        let key = key.name();
        self.conn.execute("DELETE FROM kv WHERE key = ?1", [key])?;
        Ok(())
    }

    pub fn outbox(&self) -> Result<Vec<OutboxRow>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, event, severity, payload, created_at, state FROM outbox ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                let payload: String = r.get(3)?;
                Ok(OutboxRow {
                    id: r.get(0)?,
                    event: r.get(1)?,
                    severity: r.get(2)?,
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                    created_at: r.get(4)?,
                    state: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    // ---- feed cache ----

    pub fn feed_cache(&self, url: &str) -> Result<Option<(Option<String>, String)>, StateError> {
        Ok(self
            .conn
            .query_row(
                "SELECT etag, body FROM feed_cache WHERE url = ?1",
                [url],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    pub fn store_feed_cache(
        &self,
        url: &str,
        etag: Option<&str>,
        body: &str,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO feed_cache (url, etag, body, fetched_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(url) DO UPDATE SET etag = excluded.etag, body = excluded.body, fetched_at = excluded.fetched_at",
            params![url, etag, body, now()],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::error_chain;

    #[test]
    fn migrates_and_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        assert_eq!(s.schema_version().expect("v"), MIGRATIONS.len() as i64);
        let run = s
            .begin_run(RunKind::Upgrade, Some("0.26.1"), Some("0.27.1"))
            .expect("run");
        let step = s
            .step_start(run, 0, Step::Stop, &serde_json::json!({"a": 1}))
            .expect("step");
        drop(s);
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.open_runs().expect("runs").len(), 1);
        s.step_finish(step, true, "ok", 5).expect("finish");
        s.finish_run(run, RunOutcome::Upgraded, "")
            .expect("finish run");
        assert!(s.open_runs().expect("runs").is_empty());
        assert_eq!(s.steps(run).expect("steps")[0].status, "done");
    }

    #[test]
    fn run_kinds_and_outcomes_are_stored_as_their_text_and_unknown_text_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        for kind in [RunKind::Upgrade, RunKind::Rollback, RunKind::Smoke] {
            assert_eq!(RunKind::parse(kind.as_str()), Some(kind));
            let run = s.begin_run(kind, None, None).expect("run");
            s.finish_run(run, RunOutcome::Aborted, "").expect("finish");
        }
        let kinds: Vec<String> = s
            .conn
            .prepare("SELECT kind FROM runs ORDER BY id")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .expect("kinds");
        assert_eq!(kinds, ["upgrade", "rollback", "smoke"]);
        s.conn
            .execute("UPDATE runs SET outcome = 'exploded' WHERE id = 1", [])
            .expect("update");
        let err = s.recent_runs(5).expect_err("unknown outcome");
        assert!(
            error_chain(&err).contains("unknown RunOutcome \"exploded\""),
            "{}",
            error_chain(&err)
        );
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path()).expect("open"));
        let c = Connection::open(dir.path().join("state.db")).expect("raw");
        c.pragma_update(None, "user_version", 99).expect("set");
        drop(c);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StateError::TooNew { .. })
        ));
    }
}
