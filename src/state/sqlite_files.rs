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

use std::os::unix::fs::MetadataExt;
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
    #[error(
        "database {path} was replaced by another file while it was copied; the copy was discarded"
    )]
    Swapped { path: PathBuf },
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
    // The admin's own links on the way to the directory are resolved once; then the file as it
    // is now, by an open that does not follow a link; SQLite opens it again by name, told not to
    // follow links anywhere on the path, and the name must still be that file afterwards
    // (another account that may write the directory can swap names in between).
    let src = &resolved_dir(src)?;
    let pinned = match files::open_nofollow(src) {
        Ok(f) => f,
        Err(FileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(SqliteFileError::Missing {
                path: src.to_path_buf(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let pinned_meta = pinned.metadata().map_err(|source| FileError::Io {
        what: "reading",
        path: src.to_path_buf(),
        source,
    })?;
    let meta = files::FileMeta::of(&pinned_meta);
    let source = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
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
    drop(source);
    let same = std::fs::symlink_metadata(src)
        .is_ok_and(|m| (m.dev(), m.ino()) == (pinned_meta.dev(), pinned_meta.ino()));
    if !same {
        let _ = std::fs::remove_file(dst);
        return Err(SqliteFileError::Swapped {
            path: src.to_path_buf(),
        });
    }
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

/// `path` with its directory's links resolved (the file name itself is kept, never followed).
fn resolved_dir(path: &Path) -> Result<PathBuf, SqliteFileError> {
    let missing = || SqliteFileError::Missing {
        path: path.to_path_buf(),
    };
    let name = path.file_name().ok_or_else(missing)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(dir).map_err(|_| missing())?;
    Ok(dir.join(name))
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

    /// Security review N6: another account that may write the database's directory swaps its
    /// name with a link to a root-only database, over and over, while copies are taken. No copy
    /// may ever hold the other database (SQLite used to follow the link it opened by name).
    #[test]
    fn a_database_name_swapped_for_a_link_is_never_copied_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let make = |path: &Path, marker: &str| {
            let c = Connection::open(path).expect("open");
            c.execute_batch(&format!(
                "CREATE TABLE t(x); INSERT INTO t VALUES ('{marker}');"
            ))
            .expect("fill");
        };
        let db = dir.path().join("db.sqlite");
        make(&db, "production");
        let victim = dir.path().join("root-only.sqlite");
        make(&victim, "secret");
        let link = dir.path().join("swap");
        std::os::unix::fs::symlink(&victim, &link).expect("link");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, db, link) = (stop.clone(), db.clone(), link.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = nix::fcntl::renameat2(
                        nix::fcntl::AT_FDCWD,
                        &db,
                        nix::fcntl::AT_FDCWD,
                        &link,
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    );
                }
            })
        };
        let (mut copied, mut refused) = (0, 0);
        for i in 0..400 {
            let copy = dir.path().join(format!("copy{i}.sqlite"));
            match online_copy(&db, &copy) {
                Ok(()) => {
                    copied += 1;
                    let x: String = Connection::open(&copy)
                        .expect("copy")
                        .query_row("SELECT x FROM t", [], |r| r.get(0))
                        .expect("row");
                    assert_eq!(x, "production", "copy {i} holds the linked database");
                }
                Err(_) => refused += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().expect("swapper");
        assert_eq!(copied + refused, 400);
    }

    #[test]
    fn integrity_check_rejects_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.sqlite");
        std::fs::write(&p, b"SQLite format 3\0garbage garbage garbage").expect("write");
        assert!(integrity_check(&p).is_err());
    }
}
