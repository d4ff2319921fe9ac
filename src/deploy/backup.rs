//! Production's backups: taken from a stopped production, verified, and put back **only where
//! they came from**.
//!
//! Each backup directory (in headwarden's private state) holds the copies (`db.sqlite`,
//! `noise_private.key`, `config.yaml`, a compose install's `compose.yaml`), each with the owner
//! and mode of its original, and `origins.json`: for every copy the absolute path it came from,
//! the device and inode of the directory that held it, and its owner and mode.
//!
//! A restore writes to those recorded paths and nowhere else. It refuses, before anything is
//! stopped or written, when production's config now names another path for one of them (the
//! config, a process's environment or a compose container's own config file are inputs other
//! accounts may steer between the backup and the rollback), or when a recorded directory is no
//! longer the same directory (a directory swapped for a link to `/etc`). A backup without origins
//! (made by an earlier headwarden) is not restored automatically: its files are named for a
//! restore by hand.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::deploy::{io_err, DeployError};
use crate::files;
use crate::headscale::config::HeadscaleConfig;
use crate::settings::{Install, Settings};
use crate::state::{sqlite_files, RunId};
use crate::verify;

/// A backup that is not put back, and why: nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("not restoring {}: {why}", dir.display())]
pub struct RestoreRefused {
    pub dir: PathBuf,
    pub why: String,
}

/// The file in a backup directory that records where its copies came from.
const ORIGINS: &str = "origins.json";

/// The copies a backup holds, by their name in the backup directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Database,
    NoiseKey,
    Config,
    ComposeFile,
}

impl Part {
    const ALL: [Part; 4] = [
        Part::Database,
        Part::NoiseKey,
        Part::Config,
        Part::ComposeFile,
    ];

    fn file_name(self) -> &'static str {
        match self {
            Part::Database => "db.sqlite",
            Part::NoiseKey => "noise_private.key",
            Part::Config => "config.yaml",
            Part::ComposeFile => "compose.yaml",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Part::Database => "the database",
            Part::NoiseKey => "the noise key",
            Part::Config => "the Headscale config",
            Part::ComposeFile => "the compose file",
        }
    }

    /// Where production's config (and install) says this part lives now (a PostgreSQL
    /// database is refused before a backup is taken or restored).
    fn current_path(self, s: &Settings, config: &HeadscaleConfig) -> Option<PathBuf> {
        match self {
            Part::Database => config.sqlite_path().ok().map(Path::to_path_buf),
            Part::NoiseKey => Some(config.noise_key_path.clone()),
            Part::Config => Some(config.path.clone()),
            Part::ComposeFile => match &s.headscale.install {
                Install::Compose(c) => Some(c.file.clone()),
                Install::Binary | Install::Deb(_) | Install::External(_) => None,
            },
        }
    }
}

/// Where one copy came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub part: Part,
    /// The absolute path the copy was taken from, and the only one it is restored to.
    pub path: PathBuf,
    /// Device and inode of the directory that held it.
    pub dir_dev: u64,
    pub dir_ino: u64,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// `origins.json` of a backup directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origins {
    pub files: Vec<Origin>,
}

pub fn backup_dir(s: &Settings, run: RunId, hop: i64, from: &str) -> PathBuf {
    s.state_dir
        .join("backups")
        .join(format!("run{run}-hop{hop}-{from}"))
}

/// Stopped production → backup directory with its origins. Each file keeps the owner, group and
/// mode of the original (so a restore can put them back), and none is read through a link.
///
/// The copy's `PRAGMA integrity_check` is [`verify_backup`], run by a promotion right after the
/// new version's start (outside the downtime window): the copy comes from SQLite's backup API
/// on a stopped database, and a restore checks it again before it writes anything.
pub fn take_backup(s: &Settings, config: &HeadscaleConfig, dir: &Path) -> Result<(), DeployError> {
    // Never a backup without the database.
    config.sqlite_path()?;
    verify::create_private_dir(dir).map_err(io_err("creating", dir))?;
    let mut origins = Origins { files: Vec::new() };
    for part in Part::ALL {
        let Some(path) = part.current_path(s, config) else {
            continue;
        };
        let copy = dir.join(part.file_name());
        let meta = match part {
            Part::Database => {
                sqlite_files::online_copy(&path, &copy)?;
                files::regular_meta(&copy)?.ok_or_else(|| {
                    DeployError::Other(format!("the database copy {} vanished", copy.display()))
                })?
            }
            // A server that has never started has no noise key yet.
            Part::NoiseKey if files::regular_meta(&path)?.is_none() => continue,
            Part::NoiseKey | Part::Config | Part::ComposeFile => {
                files::copy_preserving(&path, &copy)?
            }
        };
        let (dir_dev, dir_ino) = dir_identity(&path)?;
        origins.files.push(Origin {
            part,
            path: absolute(&path)?,
            dir_dev,
            dir_ino,
            uid: meta.uid,
            gid: meta.gid,
            mode: meta.mode,
        });
    }
    let text = serde_json::to_vec_pretty(&origins)
        .map_err(|e| DeployError::Other(format!("writing {ORIGINS}: {e}")))?;
    let path = dir.join(ORIGINS);
    std::fs::write(&path, text).map_err(io_err("writing", &path))?;
    Ok(())
}

/// `PRAGMA integrity_check` of a backup's database copy.
pub fn verify_backup(dir: &Path) -> Result<(), DeployError> {
    Ok(sqlite_files::integrity_check(&dir.join("db.sqlite"))?)
}

/// The backup's origins, each checked against production now: the config names the same path,
/// and the directory holding it is the one the copy was taken from. Nothing is written.
pub fn check_restorable(
    s: &Settings,
    config: &HeadscaleConfig,
    dir: &Path,
) -> Result<Origins, DeployError> {
    let path = dir.join(ORIGINS);
    let refuse = |why: String| {
        DeployError::from(RestoreRefused {
            dir: dir.to_path_buf(),
            why,
        })
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refuse(format!(
                "it records no origins (an earlier headwarden made it), so where its files belong cannot be checked; restore them by hand from {} ({})",
                dir.display(),
                Part::ALL.map(Part::file_name).join(", ")
            )))
        }
        Err(e) => return Err(io_err("reading", &path)(e)),
    };
    let origins: Origins = serde_json::from_slice(&text)
        .map_err(|e| refuse(format!("{ORIGINS} is unreadable: {e}")))?;
    if !origins.files.iter().any(|o| o.part == Part::Database) {
        return Err(refuse("it records no database".into()));
    }
    for o in &origins.files {
        let now = part_path(s, config, o.part)?;
        if absolute(&now)? != o.path {
            return Err(refuse(format!(
                "{} came from {}, but production's config now names {}; headwarden restores a file only where it came from (if the change is yours, restore by hand)",
                o.part.what(),
                o.path.display(),
                now.display()
            )));
        }
        match dir_identity(&o.path) {
            Ok(id) if id == (o.dir_dev, o.dir_ino) => {}
            Ok(_) => {
                return Err(refuse(format!(
                "the directory of {} is no longer the directory {} came from (replaced, or a link)",
                o.path.display(),
                o.part.what()
            )))
            }
            Err(e) => return Err(refuse(format!("{} : {e}", o.path.display()))),
        }
        if !dir.join(o.part.file_name()).exists() {
            return Err(refuse(format!("its copy of {} is missing", o.part.what())));
        }
    }
    Ok(origins)
}

/// Puts a backup back, each file only where it came from ([`check_restorable`]) and through a
/// fresh file renamed into place, with the owner and mode the backup recorded.
pub fn restore_backup(
    s: &Settings,
    config: &HeadscaleConfig,
    dir: &Path,
) -> Result<(), DeployError> {
    let origins = check_restorable(s, config, dir)?;
    sqlite_files::integrity_check(&dir.join("db.sqlite"))?;
    for o in &origins.files {
        let copy = dir.join(o.part.file_name());
        match o.part {
            Part::Database => sqlite_files::restore(&copy, &o.path)?,
            Part::NoiseKey | Part::Config | Part::ComposeFile => {
                files::restore_copy(&copy, &o.path)?
            }
        }
    }
    Ok(())
}

fn part_path(s: &Settings, config: &HeadscaleConfig, part: Part) -> Result<PathBuf, DeployError> {
    part.current_path(s, config).ok_or_else(|| {
        DeployError::Other(format!(
            "the backup holds {}, which this install kind does not have",
            part.what()
        ))
    })
}

/// `path` made absolute (against the working directory), without resolving links.
fn absolute(path: &Path) -> Result<PathBuf, DeployError> {
    std::path::absolute(path).map_err(io_err("resolving", path))
}

/// Device and inode of the directory holding `path` (following links to it: a directory
/// swapped for a link resolves to another inode).
fn dir_identity(path: &Path) -> Result<(u64, u64), DeployError> {
    let dir = absolute(path)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let m = std::fs::metadata(&dir).map_err(io_err("reading", &dir))?;
    Ok((m.dev(), m.ino()))
}
