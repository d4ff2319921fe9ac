//! The files step: owners and modes of production's database, keys, config and socket.

use std::path::{Path, PathBuf};

use crate::event::Severity;
use crate::headscale::config::{Database, HeadscaleConfig};

use crate::audit::{finding, mitigation, Finding, Unavailable};
use crate::headscale::config::FileKey;

pub(crate) fn resolve(c: &HeadscaleConfig, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        c.path.parent().unwrap_or(Path::new("/")).join(p)
    }
}

/// The files whose owner and mode the audit checks: `(path, what, secret)`.
fn guarded_files<'a>(
    c: &HeadscaleConfig,
    api_key_file: Option<&Path>,
) -> Vec<(PathBuf, &'a str, bool)> {
    // (path, what, secret)
    let mut files: Vec<(PathBuf, &'a str, bool)> = vec![
        (c.path.clone(), "Headscale config", false),
        (c.noise_key_path.clone(), "Noise private key", true),
    ];
    if let Database::Sqlite(db) = &c.database {
        files.push((db.clone(), "database", true));
        for suffix in ["-wal", "-shm"] {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            files.push((PathBuf::from(p), "database journal", true));
        }
    }
    if c.file_value(FileKey::DerpServerEnabled).as_deref() == Some("true") {
        if let Some(p) = c.file_value(FileKey::DerpServerPrivateKeyPath) {
            files.push((resolve(c, &p), "DERP private key", true));
        }
    }
    if let Some(p) = c.file_value(FileKey::TlsKeyPath).filter(|p| !p.is_empty()) {
        files.push((resolve(c, &p), "TLS private key", true));
    }
    if let Some(p) = c.file_value(FileKey::PolicyPath).filter(|p| !p.is_empty()) {
        files.push((resolve(c, &p), "policy file", false));
    }
    if let Some(p) = api_key_file {
        files.push((p.to_path_buf(), "headwarden's API key file", true));
    }
    files
}

pub(crate) fn file_checks(
    c: &HeadscaleConfig,
    api_key_file: Option<&Path>,
    service_user: Option<&str>,
) -> Result<Vec<Finding>, Unavailable> {
    use std::os::unix::fs::MetadataExt;
    let files = guarded_files(c, api_key_file);
    let owner = match service_user {
        Some(u) => Some((
            u.to_string(),
            nix::unistd::User::from_name(u)
                .ok()
                .flatten()
                .map(|x| x.uid.as_raw())
                .ok_or_else(|| format!("audit.service_user {u:?} does not exist on this host"))?,
        )),
        None => None,
    };
    let mut out = Vec::new();
    for (path, what, secret) in files {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.mode() & 0o777;
        let shown = path.display().to_string();
        if mode & 0o002 != 0 {
            out.push(finding(
                "files.world_writable",
                Some(&shown),
                Severity::Critical,
                format!("the {what} is writable by every local user"),
                format!("{shown}: mode {mode:04o}"),
                mitigation::CONFIG,
                &format!("chmod o-w {shown}"),
            ));
        }
        if mode & 0o004 != 0 {
            out.push(finding(
                "files.world_readable",
                Some(&shown),
                if secret {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                format!("the {what} is readable by every local user"),
                format!("{shown}: mode {mode:04o}"),
                mitigation::CONFIG,
                &format!("chmod {} {shown}", if secret { "600" } else { "640" }),
            ));
        } else if secret && mode & 0o040 != 0 {
            out.push(finding(
                "files.group_readable",
                Some(&shown),
                Severity::Warning,
                format!("the {what} is readable by its group"),
                format!("{shown}: mode {mode:04o}, gid {}", meta.gid()),
                mitigation::CONFIG,
                &format!("chmod 600 {shown}"),
            ));
        }
        if let Some((name, uid)) = &owner {
            if meta.uid() != *uid && meta.uid() != 0 {
                out.push(finding(
                    "files.wrong_owner",
                    Some(&shown),
                    Severity::Warning,
                    format!("the {what} is not owned by {name}"),
                    format!(
                        "{shown}: uid {}, expected {uid} ({name}) or root",
                        meta.uid()
                    ),
                    mitigation::CONFIG,
                    &format!("chown {name} {shown}"),
                ));
            }
        }
    }
    Ok(out)
}
