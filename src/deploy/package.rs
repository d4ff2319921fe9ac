//! Upstream's Debian package through dpkg: what dpkg says is installed, installing a verified
//! `.deb` non-interactively (the admin's conffiles kept), the binary inside a package (what
//! staging runs), and which package owns a path.
//!
//! dpkg is the authority on a deb install: the version it records as installed is what
//! production runs from, and `dpkg -i` of the previous release's package is the way back. Its
//! postinst restarts `headscale.service` when the unit is enabled (`deb-systemd-invoke
//! restart`), so a promotion's start happens inside `dpkg -i`; the start step that follows finds
//! the unit running and leaves it alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;

use crate::process::{self, ProcessError};

const DPKG: &str = "/usr/bin/dpkg";
const DPKG_QUERY: &str = "/usr/bin/dpkg-query";
const DPKG_DEB: &str = "/usr/bin/dpkg-deb";
/// dpkg runs maintainer scripts (postinst restarts the server, which migrates the database).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{0}")]
    Spawn(#[from] ProcessError),
    #[error("`{argv}` exited with {code}: {tail}")]
    Failed {
        argv: String,
        code: i32,
        tail: String,
    },
    #[error("{deb}: {detail}")]
    BadPackage { deb: PathBuf, detail: String },
    /// `dpkg -i` returned, but dpkg's database does not show the package installed at the version.
    #[error("after `dpkg -i {deb}` dpkg reports {package} {found}, not {expected} installed and configured")]
    NotInstalled {
        deb: PathBuf,
        package: String,
        expected: String,
        found: String,
    },
    #[error("{0}")]
    Io(String),
}

/// A package as dpkg's database records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageState {
    /// The Debian version (`0.29.3`, `0.28.0~beta.1`).
    pub version: String,
    /// `db:Status-Abbrev`: `ii` is installed and configured; `iU` unpacked, `iF` half
    /// configured (a maintainer script failed), `rc` removed with its conffiles left.
    pub status: String,
}

impl PackageState {
    pub fn configured(&self) -> bool {
        self.status == "ii"
    }
    /// The Headscale release this Debian version is (`~` is nFPM's spelling of semver's `-`).
    pub fn release(&self) -> Option<Version> {
        debian_to_semver(&self.version)
    }
}

pub fn debian_to_semver(v: &str) -> Option<Version> {
    Version::parse(&v.replace('~', "-")).ok()
}

async fn run(argv: &[&str], timeout: Duration) -> Result<process::Output, PackageError> {
    let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    Ok(process::run(&argv, timeout).await?)
}

fn failed(argv: &[&str], out: &process::Output) -> PackageError {
    PackageError::Failed {
        argv: argv.join(" "),
        code: out.status.code().unwrap_or(-1),
        tail: out.tail(),
    }
}

/// The process holding dpkg's lock (`apt`, `unattended-upgrades`, another `dpkg`), asked
/// without taking it (`F_GETLK` on the lock files dpkg and apt take); `None` when it is free.
pub fn lock_holder() -> Option<i32> {
    for path in ["/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock"] {
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        else {
            continue;
        };
        let mut fl = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        let asked = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETLK(&mut fl));
        if asked.is_ok() && fl.l_type != libc::F_UNLCK as libc::c_short {
            return Some(fl.l_pid);
        }
    }
    None
}

/// What dpkg records for `package`; `None` when dpkg has never heard of it.
pub async fn installed(package: &str) -> Result<Option<PackageState>, PackageError> {
    let argv = [
        DPKG_QUERY,
        "-W",
        "-f",
        "${Version}\t${db:Status-Abbrev}",
        package,
    ];
    let out = run(&argv, QUERY_TIMEOUT).await?;
    if !out.success() {
        // dpkg-query exits 1 for a package it does not know.
        return match out.status.code() {
            Some(1) => Ok(None),
            _ => Err(failed(&argv, &out)),
        };
    }
    let (version, status) = out.stdout.split_once('\t').unwrap_or((&out.stdout, ""));
    if version.is_empty() {
        return Ok(None);
    }
    Ok(Some(PackageState {
        version: version.trim().to_string(),
        status: status.trim().to_string(),
    }))
}

/// The package that owns `path` in dpkg's database (`dpkg-query -S`), if any. A path dpkg
/// does not know (or a machine without dpkg) is owned by nobody.
pub async fn owner(path: &Path) -> Result<Option<String>, PackageError> {
    if !Path::new(DPKG_QUERY).exists() {
        return Ok(None);
    }
    let p = path.display().to_string();
    let argv = [DPKG_QUERY, "-S", &p];
    let out = run(&argv, QUERY_TIMEOUT).await?;
    if !out.success() {
        return Ok(None);
    }
    // `headscale: /usr/bin/headscale`; diversions print other lines first.
    Ok(out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("diversion "))
        .find_map(|l| l.split_once(": ").map(|(pkg, _)| pkg.trim().to_string())))
}

/// A control field of a package file (`dpkg-deb -f`).
pub async fn field(deb: &Path, name: &str) -> Result<String, PackageError> {
    let d = deb.display().to_string();
    let argv = [DPKG_DEB, "-f", &d, name];
    let out = run(&argv, QUERY_TIMEOUT).await?;
    if !out.success() {
        return Err(PackageError::BadPackage {
            deb: deb.to_path_buf(),
            detail: out.tail(),
        });
    }
    Ok(out.stdout.trim().to_string())
}

/// The Headscale release a package file holds, from its `Version` field.
pub async fn release_of(deb: &Path) -> Result<Version, PackageError> {
    let v = field(deb, "Version").await?;
    debian_to_semver(&v).ok_or_else(|| PackageError::BadPackage {
        deb: deb.to_path_buf(),
        detail: format!("version {v:?} is not a Headscale release"),
    })
}

/// Unpacks `deb` into `dir` (`dpkg-deb -x`, no maintainer script runs) and returns the path of
/// `inside` (an absolute path in the package) under it.
pub async fn unpack(deb: &Path, dir: &Path, inside: &Path) -> Result<PathBuf, PackageError> {
    let (d, t) = (deb.display().to_string(), dir.display().to_string());
    let argv = [DPKG_DEB, "-x", &d, &t];
    let out = run(&argv, QUERY_TIMEOUT).await?;
    if !out.success() {
        return Err(PackageError::BadPackage {
            deb: deb.to_path_buf(),
            detail: out.tail(),
        });
    }
    let found = dir.join(inside.strip_prefix("/").unwrap_or(inside));
    match std::fs::symlink_metadata(&found) {
        Ok(m) if m.is_file() => Ok(found),
        _ => Err(PackageError::BadPackage {
            deb: deb.to_path_buf(),
            detail: format!("it holds no regular file {}", inside.display()),
        }),
    }
}

/// `dpkg -i deb`, non-interactively and keeping the admin's conffiles (`--force-confdef
/// --force-confold`: the admin's `/etc/headscale/config.yaml` is never replaced), then checks
/// that dpkg records `package` at the file's version, configured.
pub async fn install(package: &str, deb: &Path) -> Result<PackageState, PackageError> {
    let expected = field(deb, "Version").await?;
    let d = deb.display().to_string();
    let argv = [DPKG, "--force-confdef", "--force-confold", "-i", &d];
    let owned: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
    let env = [("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string())];
    let out = process::run_env(&owned, &env, INSTALL_TIMEOUT).await?;
    if !out.success() {
        return Err(failed(&argv, &out));
    }
    match installed(package).await? {
        Some(state) if state.version == expected && state.configured() => Ok(state),
        other => Err(PackageError::NotInstalled {
            deb: deb.to_path_buf(),
            package: package.to_string(),
            expected,
            found: other.map_or("not installed".into(), |s| {
                format!("{} ({})", s.version, s.status)
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions_map_to_releases() {
        assert_eq!(debian_to_semver("0.29.3"), Some(Version::new(0, 29, 3)));
        assert_eq!(
            debian_to_semver("0.28.0~beta.1").map(|v| v.to_string()),
            Some("0.28.0-beta.1".into())
        );
        assert_eq!(debian_to_semver("1:0.29.3-1"), None);
        let s = PackageState {
            version: "0.26.1".into(),
            status: "iF".into(),
        };
        assert!(!s.configured());
        assert_eq!(s.release(), Some(Version::new(0, 26, 1)));
    }
}
