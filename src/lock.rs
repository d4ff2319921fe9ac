//! The run lock: one headwarden run at a time per state directory.
//!
//! `state_dir/lock` is held with an exclusive advisory lock (flock) for the whole run, so the
//! kernel releases it even when headwarden is SIGKILLed. The file's content names the holder
//! (pid, command, start time) for the "locked" error message; it is informational only.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::Hinted;
use crate::exit;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another headwarden run holds the lock {path}: {holder}")]
    Held {
        path: PathBuf,
        /// What the holder wrote: `pid N (command) since <RFC 3339>`.
        holder: String,
        /// When the holder took it (Unix time), read from `holder`'s `since`.
        since: Option<i64>,
    },
    #[error("cannot open lock file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Hinted for LockError {
    fn hint(&self) -> Option<String> {
        matches!(self, LockError::Held { .. }).then(|| {
            "wait for it to finish; a run killed with SIGKILL releases the lock by itself".into()
        })
    }
    fn exit_code(&self) -> u8 {
        exit::LOCKED
    }
}

/// Held for the life of the value.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// The upgrade lock (`state_dir/lock`).
    pub fn acquire(state_dir: &Path, command: &str) -> Result<RunLock, LockError> {
        Self::acquire_file(state_dir, "lock", command)
    }

    /// The key job's own lock (`state_dir/keys.lock`): it runs beside upgrades, never twice.
    pub fn acquire_keys(state_dir: &Path, command: &str) -> Result<RunLock, LockError> {
        Self::acquire_file(state_dir, "keys.lock", command)
    }

    /// The audit job's lock (`state_dir/audit.lock`): one audit at a time, so drift is computed
    /// against a stored result nobody else is writing.
    pub fn acquire_audit(state_dir: &Path, command: &str) -> Result<RunLock, LockError> {
        Self::acquire_file(state_dir, "audit.lock", command)
    }

    /// The chat sender's lock (`state_dir/notify.lock`): one process delivers at a time, so a
    /// delivery found mid-send belongs to a process that died.
    pub fn acquire_notify(state_dir: &Path, command: &str) -> Result<RunLock, LockError> {
        Self::acquire_file(state_dir, "notify.lock", command)
    }

    fn acquire_file(state_dir: &Path, file: &str, command: &str) -> Result<RunLock, LockError> {
        let path = state_dir.join(file);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = if holder.trim().is_empty() {
                    "unknown holder".to_string()
                } else {
                    holder.trim().to_string()
                };
                let since = holder.rsplit_once("since ").and_then(|(_, t)| {
                    time::OffsetDateTime::parse(
                        t.trim(),
                        &time::format_description::well_known::Rfc3339,
                    )
                    .ok()
                    .map(|t| t.unix_timestamp())
                });
                return Err(LockError::Held {
                    path,
                    holder,
                    since,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        write!(
            file,
            "pid {} (headwarden {command}) since {now}",
            std::process::id()
        )
        .map_err(io)?;
        file.flush().map_err(io)?;
        Ok(RunLock { _file: file })
    }
}
