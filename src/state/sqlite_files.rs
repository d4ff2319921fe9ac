//! SQLite file operations on Headscale's database: online copy, integrity check, restore.
//!
//! - [`online_copy`] uses SQLite's backup API, so a copy of a live WAL-mode database is
//!   consistent (it includes committed frames still in `-wal`); a raw `cp` of a live file is not.
//!   The copy keeps the owner, group and mode of the database it copies (the `headscale` user's
//!   under upstream's unit), so a restore can put them back.
//! - [`restore`] puts a backup in place of a *stopped* database: the copy is written beside the
//!   target under a random name (`O_EXCL`, never through a planted link), given the backup's
//!   owner and mode, fsynced, the target's stale `-wal`/`-shm` are removed (SQLite would
//!   otherwise replay newer frames over the restored file), then the copy is renamed over the
//!   target. A target that is a symbolic link is refused.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::files::{self, FileError};

#[derive(Debug, thiserror::Error)]
pub enum SqliteFileError {
    #[error("copying database {from} to {to}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("integrity check of {path} failed: {detail}")]
    Integrity { path: PathBuf, detail: String },
    #[error("restoring {to} from {from}")]
    Restore {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database {path} does not exist")]
    Missing { path: PathBuf },
    #[error(transparent)]
    File(#[from] FileError),
}

/// Consistent copy of `src` (possibly in use) into a new file `dst`, with `src`'s owner, group
/// and mode. `src` must be a regular file, not a link.
pub fn online_copy(src: &Path, dst: &Path) -> Result<(), SqliteFileError> {
    let err = |source| SqliteFileError::Copy {
        from: src.to_path_buf(),
        to: dst.to_path_buf(),
        source,
    };
    let meta = files::regular_meta(src)?.ok_or_else(|| SqliteFileError::Missing {
        path: src.to_path_buf(),
    })?;
    let source = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    source
        .busy_timeout(std::time::Duration::from_secs(10))
        .map_err(err)?;
    let _ = std::fs::remove_file(dst);
    let mut dest = Connection::open(dst).map_err(err)?;
    {
        let backup = rusqlite::backup::Backup::new(&source, &mut dest).map_err(err)?;
        backup
            .run_to_completion(1024, std::time::Duration::from_millis(5), None)
            .map_err(err)?;
    }
    // The copy is a standalone file: no WAL, fully on disk.
    dest.execute_batch("PRAGMA journal_mode=DELETE;")
        .map_err(err)?;
    drop(dest);
    let f = files::open_nofollow(dst)?;
    files::apply_meta(&f, dst, meta)?;
    let _ = f.sync_all();
    Ok(())
}

/// `PRAGMA integrity_check` on a (backup) file; Ok only for the single row "ok".
pub fn integrity_check(path: &Path) -> Result<(), SqliteFileError> {
    let fail = |detail: String| SqliteFileError::Integrity {
        path: path.to_path_buf(),
        detail,
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| fail(e.to_string()))?;
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| fail(e.to_string()))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(fail(rows.join("; ")))
    }
}

/// Replaces the stopped database `target` with `backup` (see the module docs for the order).
pub fn restore(backup: &Path, target: &Path) -> Result<(), SqliteFileError> {
    let err = |source| SqliteFileError::Restore {
        from: backup.to_path_buf(),
        to: target.to_path_buf(),
        source,
    };
    let staged = files::stage_copy(backup, target)?;
    for suffix in ["-wal", "-shm"] {
        match std::fs::remove_file(sibling(target, suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
    }
    staged.commit()?;
    Ok(())
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_of_live_wal_database_sees_committed_rows_and_restore_drops_stale_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("db.sqlite");
        let live = Connection::open(&db).expect("open");
        live.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x); INSERT INTO t VALUES (1),(2);")
            .expect("setup");
        let copy = dir.path().join("copy.sqlite");
        online_copy(&db, &copy).expect("copy");
        integrity_check(&copy).expect("intact");
        let n: i64 = Connection::open(&copy)
            .expect("o")
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("q");
        assert_eq!(n, 2);
        live.execute_batch("INSERT INTO t VALUES (3);")
            .expect("more");
        // Simulate a stopped server that left a WAL behind, then restore.
        std::mem::forget(live);
        restore(&copy, &db).expect("restore");
        let n: i64 = Connection::open(&db)
            .expect("o")
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("q");
        assert_eq!(
            n, 2,
            "the stale WAL frame must not be replayed over the restored file"
        );
    }

    #[test]
    fn integrity_check_rejects_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.sqlite");
        std::fs::write(&p, b"SQLite format 3\0garbage garbage garbage").expect("write");
        assert!(integrity_check(&p).is_err());
    }
}
