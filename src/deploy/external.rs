//! `kind: external`: a package manager owns `headscale.binary` and decides when it changes.
//! NixOS, Alpine and Arch replace the binary without restarting the service, so the server keeps
//! running the old version (its executable deleted on disk) until the next restart or reboot
//! migrates the database at an unplanned time. headwarden installs nothing here: it notices the
//! skew (the binary on disk newer than the running server) and an update the package manager
//! has pending, stages the on-disk binary on a copy of the data, and performs the restart itself
//! with a backup and the smoke checks.
//!
//! What it cannot undo is the package manager's own change: after a failed restart the data is
//! restored and the server left stopped (starting the new binary again would migrate again),
//! with the commands that put the old package back. The running binary of the old version is
//! kept under `versions/` before the stop (`deploy::adopt_current`), so it is never lost.

use std::path::Path;
use std::time::Duration;

use semver::Version;
use serde::Serialize;

use crate::deploy::package;
use crate::deploy::production::Production;
use crate::headscale::cli::{binary_version, CliError};
use crate::process;
use crate::settings::{ExternalInstall, PackageManager, Settings};

const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// What `check` and `status` report of an external install .
#[derive(Debug, Clone, Serialize)]
pub struct ExternalFacts {
    /// `headscale.binary version`.
    pub on_disk: Version,
    /// The running server's own version (`/proc/<pid>/exe version`), when one runs.
    pub running: Option<Version>,
    /// The package manager's update waiting to be installed, when it can tell (APT).
    pub pending: Option<String>,
    pub manager: &'static str,
}

impl ExternalFacts {
    /// A line for admins.
    pub fn describe(&self) -> String {
        let mut line = match &self.running {
            Some(r) if *r != self.on_disk => format!(
                "the binary on disk is {} but the server still runs {r}: the next restart migrates the database; `headwarden upgrade` stages {} and guards that restart",
                self.on_disk, self.on_disk
            ),
            Some(r) => format!("the server runs the binary on disk ({r})"),
            None => format!("no server runs; the binary on disk is {}", self.on_disk),
        };
        if let Some(p) = &self.pending {
            line.push_str(&format!(
                "; {} has an update to {p} pending: once it is installed, `headwarden upgrade` stages and guards the restart",
                self.manager
            ));
        }
        line
    }
}

/// The binary on disk, the running server's version and a pending update. The running server
/// is the one its service manager names ([`Production::find`]), never one found by looking.
pub async fn facts(
    s: &Settings,
    e: &ExternalInstall,
    production: &Production,
) -> Result<ExternalFacts, CliError> {
    let binary = &s.headscale.binary;
    let on_disk = binary_version(binary, QUERY_TIMEOUT).await?;
    let running = match production.pid() {
        Some(pid) => Some(running_version(pid).await?),
        None => None,
    };
    let m = manager(e, binary).await;
    Ok(ExternalFacts {
        on_disk,
        running,
        pending: pending(m, &e.package).await,
        manager: manager_name(m),
    })
}

/// The running server's version, asked of its own executable (which stays reachable through
/// `/proc/<pid>/exe` after the package manager deleted the file).
pub async fn running_version(pid: i32) -> Result<Version, CliError> {
    binary_version(Path::new(&format!("/proc/{pid}/exe")), QUERY_TIMEOUT).await
}

/// The package manager, told apart when the config says `auto`.
pub async fn manager(e: &ExternalInstall, binary: &Path) -> PackageManager {
    if e.manager != PackageManager::Auto {
        return e.manager;
    }
    let real = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
    if real.starts_with("/nix/store") {
        return PackageManager::Nix;
    }
    if package::owner(binary).await.ok().flatten().is_some() {
        return PackageManager::Apt;
    }
    if Path::new("/sbin/apk").exists() {
        return PackageManager::Apk;
    }
    if Path::new("/usr/bin/pacman").exists() {
        return PackageManager::Pacman;
    }
    PackageManager::Other
}

pub fn manager_name(m: PackageManager) -> &'static str {
    match m {
        PackageManager::Auto | PackageManager::Other => "the package manager",
        PackageManager::Apt => "APT",
        PackageManager::Apk => "apk",
        PackageManager::Pacman => "pacman",
        PackageManager::Nix => "Nix",
    }
}

/// APT's candidate for `package` when it differs from the installed version (`apt-cache
/// policy`); other managers are not asked (their queries need a synced index or root).
pub async fn pending(m: PackageManager, package: &str) -> Option<String> {
    if m != PackageManager::Apt || !Path::new("/usr/bin/apt-cache").exists() {
        return None;
    }
    let argv = vec![
        "/usr/bin/apt-cache".to_string(),
        "policy".to_string(),
        package.to_string(),
    ];
    let out = process::run(&argv, QUERY_TIMEOUT).await.ok()?;
    parse_policy(&out.stdout)
}

/// `Installed:` and `Candidate:` of `apt-cache policy`: the candidate when it is newer.
fn parse_policy(text: &str) -> Option<String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let (installed, candidate) = (field("Installed:")?, field("Candidate:")?);
    (candidate != installed && candidate != "(none)").then_some(candidate)
}

/// What an admin runs to put `old` back (after a failed restart onto `new`), and the copy of
/// the old binary headwarden kept.
pub fn instructions(
    m: PackageManager,
    package: &str,
    old: &Version,
    new: &str,
    kept: &Path,
) -> String {
    let how = match m {
        PackageManager::Apt => format!(
            "`apt install {package}={old}` (or `apt install ./headscale_{old}_linux_amd64.deb` from the release), then `apt-mark hold {package}` until {new} is fixed"
        ),
        PackageManager::Apk => format!(
            "`apk add {package}={old}-r0` (apk keeps older packages in /var/cache/apk when a cache is set up)"
        ),
        PackageManager::Pacman => format!(
            "`pacman -U /var/cache/pacman/pkg/{package}-{old}-*.pkg.tar.zst`, then add {package} to IgnorePkg in /etc/pacman.conf until {new} is fixed"
        ),
        PackageManager::Nix => {
            "`nixos-rebuild switch --rollback` (or pin services.headscale.package to the old version)".to_string()
        }
        PackageManager::Auto | PackageManager::Other => {
            format!("reinstall {package} {old} the way it was installed")
        }
    };
    format!(
        "{} owns the binary, so headwarden cannot put {old} back: the data is restored to before the restart and the server is left stopped (starting {new} again would migrate it again). Put {old} back with {how}, then start the service. The binary of {old} that ran is kept at {}",
        manager_name(m),
        kept.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_policy_names_a_pending_update() {
        let text = "headscale:\n  Installed: 0.27.1\n  Candidate: 0.28.0\n  Version table:\n     0.28.0 500\n";
        assert_eq!(parse_policy(text).as_deref(), Some("0.28.0"));
        let same = "headscale:\n  Installed: 0.28.0\n  Candidate: 0.28.0\n";
        assert_eq!(parse_policy(same), None);
        assert_eq!(
            parse_policy("headscale:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );
        assert_eq!(parse_policy(""), None);
    }

    #[test]
    fn instructions_name_the_old_version_and_the_kept_binary() {
        let old = Version::new(0, 27, 1);
        let kept = Path::new("/var/lib/headwarden/versions/0.27.1/headscale");
        let text = instructions(PackageManager::Pacman, "headscale", &old, "0.28.0", kept);
        assert!(
            text.contains("pacman -U /var/cache/pacman/pkg/headscale-0.27.1-"),
            "{text}"
        );
        assert!(text.contains(&kept.display().to_string()), "{text}");
        assert!(text.contains("left stopped"), "{text}");
    }
}
