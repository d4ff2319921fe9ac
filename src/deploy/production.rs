//! Production, found once: the server process its service manager names, checked, and the
//! Headscale config as *that* process runs it. Nothing is ever taken for production because it
//! looks like Headscale (a local account can start a process with any command line and any
//! `HEADSCALE_*` environment; whatever it says would steer the health checks, the probe's
//! one-time key and later restores).
//!
//! 1. Ask the service manager which process is production:
//!    - systemd: `systemctl show -p MainPID -p ActiveState -p User <unit>`;
//!    - `kind: command`: its `pidfile` (root's or headwarden's own, writable by nobody else;
//!      `pid [start time]`, the start time guarding against a reused pid); without a pidfile the
//!      process is not looked for and the config file alone is production's config;
//!    - compose: the engine names the service's container by its compose labels
//!      (`container::discover`), and the engine gives its environment.
//! 2. Check the named process: its account is the unit's `User=` (systemd; root when none) or,
//!    for `kind: command`, root or the owner of the data directory; and its executable is the
//!    installed binary (same device and inode as `headscale.binary`'s target or a binary kept
//!    under `versions/`, or that file as a package manager replaced it: `<path> (deleted)`).
//! 3. Read production's config: the file plus the `HEADSCALE_*` environment of that process.
//!
//! A named process that fails a check is not production: [`IdentityError::NotProduction`] stops
//! the run before anything is read from it, sent to it or changed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;

use crate::compose::ImageFacts;
use crate::deploy::{
    container, current_target, external, external::ExternalFacts, install_conflict, package,
    production_cli, version_of, versions_dir, CurrentVersionError, DeployError,
};
use crate::headscale::cli::Cli;
use crate::headscale::config::HeadscaleConfig;
use crate::process::{self, Account, ProcError, ProcInfo};
use crate::settings::{Install, ServiceSettings, Settings};

const ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a named process may take to become what it execs.
const EXEC_GRACE: Duration = Duration::from_secs(2);

/// Why production's process could not be confirmed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot ask systemd which process is {unit}: {detail}")]
    Systemd { unit: String, detail: String },
    #[error("cannot use pidfile {}: {detail}", path.display())]
    Pidfile { path: PathBuf, detail: String },
    #[error("process {pid}, which {named_by} names as production, {why}: it is not production, and nothing was read from it or sent to it")]
    NotProduction {
        pid: i32,
        named_by: String,
        why: String,
    },
    #[error("cannot check process {pid}, which {named_by} names as production")]
    Unchecked {
        pid: i32,
        named_by: String,
        #[source]
        source: ProcError,
    },
}

impl IdentityError {
    pub fn hint(&self) -> &'static str {
        match self {
            Self::NotProduction { .. } => "see which unit or pidfile names that process, and why it runs as another account or another binary; headwarden changes nothing until production is what its service manager says",
            Self::Unchecked { .. } => "headwarden reads /proc/<pid>/exe, status and environ of Headscale's process: run it as root (with CAP_SYS_PTRACE when capabilities are bounded)",
            Self::Pidfile { .. } => "the pidfile must be a regular file owned by root (or headwarden's account) and writable by no one else, holding the server's pid",
            Self::Systemd { .. } => "check headscale.service.unit and that systemctl answers",
        }
    }
}

/// Production's server as its service manager has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    /// The service manager names this process, and it passed the checks.
    Process(ProcInfo),
    /// The service manager says no production process runs.
    Stopped,
    /// `kind: command` without a pidfile: production's process is not looked for.
    Unnamed,
    /// A compose service: the engine names its container (and gives its environment).
    Container,
}

/// Production, read once: its server and its Headscale config as that server runs it.
#[derive(Debug, Clone)]
pub struct Production {
    pub config: HeadscaleConfig,
    pub server: Server,
    /// Who named the server: `systemd unit headscale.service`, `pidfile /run/headscale.pid`, …
    pub named_by: String,
}

impl Production {
    /// Finds production through its service manager, checks it, and reads its config.
    pub async fn find(s: &Settings) -> Result<Self, DeployError> {
        if let Install::Compose(c) = &s.headscale.install {
            let config = container::discover(c).await?.config(&s.headscale.config)?;
            return Ok(Self {
                config,
                server: Server::Container,
                named_by: format!("compose service {} of {}", c.service, c.file.display()),
            });
        }
        let file = HeadscaleConfig::load(&s.headscale.config)?;
        let (server, named_by) = named_server(s, &file).await?;
        let config = match &server {
            Server::Process(p) => {
                let env =
                    process::headscale_env(p.pid).map_err(|source| IdentityError::Unchecked {
                        pid: p.pid,
                        named_by: named_by.clone(),
                        source,
                    })?;
                file.with_env(env)?
            }
            Server::Stopped | Server::Unnamed | Server::Container => file,
        };
        Ok(Self {
            config,
            server,
            named_by,
        })
    }

    /// The version production runs: its CLI's, or for an external install the version of the
    /// server process found here (it runs the old version until restarted).
    pub async fn version(&self, s: &Settings) -> Result<Version, CurrentVersionError> {
        version_of(s, self.pid()).await
    }

    /// Production's `headscale` CLI (the binary, or the one in the compose service's container).
    pub async fn cli(&self, s: &Settings) -> Result<Cli, DeployError> {
        production_cli(s).await
    }

    /// The confirmed server process's pid.
    pub fn pid(&self) -> Option<i32> {
        match &self.server {
            Server::Process(p) => Some(p.pid),
            Server::Stopped | Server::Unnamed | Server::Container => None,
        }
    }

    /// The account production's server runs as: the confirmed process's effective uid and gid,
    /// else (stopped, or not looked for) the owner of the directory holding its database. `None`
    /// for a compose service (its containers run as their image says).
    pub fn account(&self) -> Option<Account> {
        match &self.server {
            Server::Process(p) => Some(Account {
                uid: p.uid,
                gid: p.gid,
            }),
            Server::Stopped | Server::Unnamed => data_owner(&self.config),
            Server::Container => None,
        }
    }

    /// One line for `status`, `check` and `config check`: the server and its database.
    pub fn describe(&self) -> String {
        let server = match &self.server {
            Server::Process(p) => format!(
                "process {} (uid {}, {}), named by {}",
                p.pid,
                p.uid,
                p.exe.display(),
                self.named_by
            ),
            Server::Stopped => format!("not running ({})", self.named_by),
            Server::Unnamed => "not looked for (kind: command without pidfile: production's environment is not read, only its config file)".to_string(),
            Server::Container => format!("the container of {}", self.named_by),
        };
        format!("{server}; database: {}", self.config.database)
    }
}

/// The process the service manager names as production, checked; who named it.
async fn named_server(
    s: &Settings,
    file: &HeadscaleConfig,
) -> Result<(Server, String), DeployError> {
    match &s.headscale.service {
        ServiceSettings::Systemd { unit } => {
            let named_by = format!("systemd unit {unit}");
            let Some((pid, user)) = systemd_main_pid(unit).await? else {
                return Ok((Server::Stopped, named_by));
            };
            let uid = uid_of(&user).ok_or_else(|| IdentityError::NotProduction {
                pid,
                named_by: named_by.clone(),
                why: format!("runs for User={user}, which is no account here"),
            })?;
            let server = checked(s, pid, None, &[uid], &named_by).await?;
            Ok((server, named_by))
        }
        ServiceSettings::Command {
            pidfile: Some(path),
            ..
        } => {
            let named_by = format!("pidfile {}", path.display());
            let Some((pid, started)) = read_pidfile(path)? else {
                return Ok((Server::Stopped, named_by));
            };
            let mut uids = vec![0, nix::unistd::geteuid().as_raw()];
            uids.extend(data_owner(file).map(|a| a.uid));
            let server = checked(s, pid, started, &uids, &named_by).await?;
            Ok((server, named_by))
        }
        ServiceSettings::Command { pidfile: None, .. } => {
            Ok((Server::Unnamed, "service commands".to_string()))
        }
        ServiceSettings::Compose(c) => Ok((
            Server::Container,
            format!("compose service {} of {}", c.service, c.file.display()),
        )),
    }
}

/// `MainPID` and `User` of a running unit (`None` when it runs no process).
async fn systemd_main_pid(unit: &str) -> Result<Option<(i32, String)>, IdentityError> {
    let argv: Vec<String> = [
        "systemctl",
        "show",
        "-p",
        "MainPID",
        "-p",
        "ActiveState",
        "-p",
        "User",
        "-p",
        "DynamicUser",
        unit,
    ]
    .map(String::from)
    .to_vec();
    let err = |detail: String| IdentityError::Systemd {
        unit: unit.to_string(),
        detail,
    };
    let out = process::run(&argv, ASK_TIMEOUT)
        .await
        .map_err(|e| err(e.to_string()))?;
    if !out.success() {
        return Err(err(out.tail()));
    }
    let (mut pid, mut user, mut dynamic) = (None, String::new(), false);
    for line in out.stdout.lines() {
        match line.split_once('=') {
            Some(("MainPID", v)) => pid = v.trim().parse::<i32>().ok(),
            Some(("User", v)) => user = v.trim().to_string(),
            Some(("DynamicUser", v)) => dynamic = v.trim() == "yes",
            _ => {}
        }
    }
    if dynamic && user.is_empty() {
        // systemd names a dynamic user after the unit (resolvable while it runs).
        user = unit.trim_end_matches(".service").to_string();
    }
    match pid {
        None => Err(err(format!("no MainPID in {:?}", out.stdout.trim()))),
        Some(0) => Ok(None),
        Some(pid) => Ok(Some((pid, user))),
    }
}

/// The uid of a unit's `User=` (a name or a number; empty is root).
fn uid_of(user: &str) -> Option<u32> {
    if user.is_empty() {
        return Some(0);
    }
    if let Ok(uid) = user.parse() {
        return Some(uid);
    }
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

/// `pid [start time]` from a pidfile that only root (or headwarden's account) can have written;
/// `None` when there is none, or it names a process that is gone or was since replaced.
fn read_pidfile(path: &Path) -> Result<Option<(i32, Option<u64>)>, IdentityError> {
    let err = |detail: String| IdentityError::Pidfile {
        path: path.to_path_buf(),
        detail,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let me = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.uid() != 0 && meta.uid() != me {
        return Err(err(format!(
            "owned by uid {}, who could name any process as production",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(err(format!(
            "writable by others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut words = text.split_whitespace();
    let Some(pid) = words.next() else {
        return Ok(None);
    };
    let pid: i32 = pid
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| err(format!("{pid:?} is not a pid")))?;
    let started = words.next().and_then(|t| t.parse().ok());
    Ok(Some((pid, started)))
}

/// The owner of the directory holding production's data (as `config` says: before the process
/// is confirmed, the file alone).
fn data_owner(config: &HeadscaleConfig) -> Option<Account> {
    let dir = config.data_dir()?;
    std::fs::metadata(dir).ok().map(|m| Account {
        uid: m.uid(),
        gid: m.gid(),
    })
}

/// The checks of step 2 on the named process.
async fn checked(
    s: &Settings,
    pid: i32,
    started: Option<u64>,
    uids: &[u32],
    named_by: &str,
) -> Result<Server, IdentityError> {
    // A process the service manager has just forked is not yet what it will exec (systemd's
    // `Type=simple` reports the child at fork, a start script the shell before `exec`): a
    // mismatch is asked again for a moment before it counts. A look-alike never turns into
    // production's binary run by production's account.
    let deadline = tokio::time::Instant::now() + EXEC_GRACE;
    loop {
        match checked_once(s, pid, started, uids, named_by) {
            Err(IdentityError::NotProduction { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

fn checked_once(
    s: &Settings,
    pid: i32,
    started: Option<u64>,
    uids: &[u32],
    named_by: &str,
) -> Result<Server, IdentityError> {
    let info = match process::proc_info(pid) {
        Ok(info) => info,
        Err(ProcError::Gone(_)) => return Ok(Server::Stopped),
        Err(source) => {
            return Err(IdentityError::Unchecked {
                pid,
                named_by: named_by.to_string(),
                source,
            })
        }
    };
    if started.is_some_and(|t| t != info.start_time) {
        // The pid was reused: the process the file named is gone.
        return Ok(Server::Stopped);
    }
    let not = |why: String| IdentityError::NotProduction {
        pid,
        named_by: named_by.to_string(),
        why,
    };
    if !uids.contains(&info.uid) {
        let allowed: std::collections::BTreeSet<u32> = uids.iter().copied().collect();
        let allowed: Vec<String> = allowed.iter().map(u32::to_string).collect();
        return Err(not(format!(
            "runs as uid {} (production's account: {})",
            info.uid,
            allowed.join(" or ")
        )));
    }
    if !runs_installed_binary(s, &info) {
        return Err(not(format!(
            "runs {}, not the installed binary {}",
            info.exe.display(),
            current_target(&s.headscale.binary).display()
        )));
    }
    Ok(Server::Process(info))
}

/// Whether the process executes production's binary: the same file (device and inode) as
/// `headscale.binary`'s target or one headwarden keeps under `versions/`, or that binary's
/// path as a package manager replaced it under the running server.
fn runs_installed_binary(s: &Settings, info: &ProcInfo) -> bool {
    let installed = std::fs::canonicalize(current_target(&s.headscale.binary))
        .unwrap_or_else(|_| s.headscale.binary.clone());
    let same = |p: &Path| std::fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == info.exe_id);
    if same(&installed) {
        return true;
    }
    let versions = std::fs::canonicalize(versions_dir(s)).unwrap_or_else(|_| versions_dir(s));
    if info.exe.starts_with(&versions) && same(&info.exe) {
        return true;
    }
    let deleted = format!("{} (deleted)", installed.display());
    info.exe.as_os_str() == deleted.as_str()
}

/// What `status` shows of the install kind, read once.
#[derive(Debug, Clone)]
pub enum KindFacts {
    /// `headscale.binary` and where it points; a conflict with dpkg when it owns the path.
    Binary {
        binary: PathBuf,
        target: PathBuf,
        conflict: Option<String>,
    },
    /// What dpkg records of the package (`0.29.3 (ii)`, `not installed`).
    Deb {
        package: String,
        binary: PathBuf,
        dpkg: String,
    },
    /// The binary on disk against the running server.
    External {
        package: String,
        binary: PathBuf,
        facts: Option<ExternalFacts>,
    },
    /// The compose service and its image.
    Compose {
        service: String,
        file: PathBuf,
        image: Option<ImageFacts>,
    },
}

impl KindFacts {
    /// Reads the kind's facts; `running` is the version production runs, when known.
    pub async fn read(
        s: &Settings,
        production: Option<&Production>,
        running: Option<&Version>,
    ) -> Self {
        let binary = s.headscale.binary.clone();
        match &s.headscale.install {
            Install::Binary => KindFacts::Binary {
                target: current_target(&binary),
                conflict: install_conflict(s).await,
                binary,
            },
            Install::Deb(d) => KindFacts::Deb {
                package: d.package.clone(),
                dpkg: match package::installed(&d.package).await {
                    Ok(Some(st)) => format!("{} ({})", st.version, st.status),
                    Ok(None) => "not installed".to_string(),
                    Err(e) => format!("unknown: {e}"),
                },
                binary,
            },
            Install::External(e) => KindFacts::External {
                package: e.package.clone(),
                facts: match production {
                    Some(p) => external::facts(s, e, p).await.ok(),
                    None => None,
                },
                binary,
            },
            Install::Compose(c) => KindFacts::Compose {
                service: c.service.clone(),
                file: c.file.clone(),
                image: running.and_then(|v| image_facts(s, v).ok().flatten()),
            },
        }
    }

    /// The lines `status` prints under production's version.
    pub fn lines(&self) -> Vec<String> {
        match self {
            KindFacts::Binary {
                binary,
                target,
                conflict,
            } => {
                let mut out = vec![format!(
                    "binary {} -> {}",
                    binary.display(),
                    target.display()
                )];
                out.extend(conflict.iter().map(|c| format!("WARNING: {c}")));
                out
            }
            KindFacts::Deb {
                package,
                binary,
                dpkg,
            } => vec![format!(
                "Debian package {package}: dpkg records {dpkg}; binary {}",
                binary.display()
            )],
            KindFacts::External {
                package,
                binary,
                facts,
            } => {
                let mut out = vec![format!(
                    "binary {} (package {package}, installed by the package manager)",
                    binary.display()
                )];
                out.extend(
                    facts
                        .iter()
                        .map(|e| format!("kind external ({}): {}", e.manager, e.describe())),
                );
                out
            }
            KindFacts::Compose {
                service,
                file,
                image,
            } => {
                let mut out = vec![format!("compose service {service} of {}", file.display())];
                out.extend(image.iter().map(ImageFacts::describe));
                out
            }
        }
    }

    /// `status --json`'s `production` keys of the kind (schema headwarden.status/v1): every key
    /// for every kind, null where it does not apply (a compose install has no binary or symlink
    /// of its own; only a compose install has an image).
    pub fn doc(&self) -> KindDoc<'_> {
        let none = KindDoc {
            binary: None,
            target: None,
            package: None,
            external: None,
            install_conflict: None,
            image: None,
        };
        match self {
            KindFacts::Binary {
                binary,
                target,
                conflict,
            } => KindDoc {
                binary: Some(binary),
                target: Some(target.clone()),
                install_conflict: conflict.as_deref(),
                ..none
            },
            KindFacts::Deb { binary, dpkg, .. } => KindDoc {
                binary: Some(binary),
                target: Some(current_target(binary)),
                package: Some(dpkg),
                ..none
            },
            KindFacts::External { binary, facts, .. } => KindDoc {
                binary: Some(binary),
                target: Some(current_target(binary)),
                external: facts.as_ref(),
                ..none
            },
            KindFacts::Compose { image, .. } => KindDoc {
                image: image.as_ref(),
                ..none
            },
        }
    }
}

/// The kind's keys of `status --json`'s `production`.
#[derive(Debug, serde::Serialize)]
pub struct KindDoc<'a> {
    /// `headscale.binary` (null for compose).
    pub binary: Option<&'a Path>,
    /// Where it points (null for compose).
    pub target: Option<PathBuf>,
    /// What dpkg records (deb).
    pub package: Option<&'a str>,
    /// The binary on disk against the running server (external).
    pub external: Option<&'a ExternalFacts>,
    /// `kind: binary` over a path dpkg owns.
    pub install_conflict: Option<&'a str>,
    /// The compose file's image, its floating tag, what the next upgrade pins it to (compose).
    pub image: Option<&'a ImageFacts>,
}

/// A compose install's image and, when its tag floats, what the next upgrade pins it to.
pub fn image_facts(s: &Settings, current: &Version) -> Result<Option<ImageFacts>, DeployError> {
    match &s.headscale.install {
        Install::Binary | Install::Deb(_) | Install::External(_) => Ok(None),
        Install::Compose(c) => Ok(Some(ImageFacts::of(&container::current_image(c)?, current))),
    }
}

/// `config check`'s line for the install.
pub fn describe_install(s: &Settings) -> String {
    let config = s.headscale.config.display();
    let binary = s.headscale.binary.display();
    match &s.headscale.install {
        Install::Binary => format!("{binary} with {config}"),
        Install::Deb(d) => format!("Debian package {} ({binary}) with {config}", d.package),
        Install::External(e) => format!(
            "{binary} from package {} (kind external: the package manager installs it; headwarden stages and guards the restart) with {config}",
            e.package
        ),
        Install::Compose(c) => format!(
            "compose service {} of {} ({}), image {}, config {config} inside the container",
            c.service,
            c.file.display(),
            c.command.join(" "),
            c.image
        ),
    }
}

/// Production's config file as written (a compose install's through the compose file's bind
/// mounts), asking neither the service manager nor the engine: for readers that only need what
/// the file says (`server_url` in reminders).
pub fn config_file(s: &Settings) -> Option<HeadscaleConfig> {
    let path = match &s.headscale.install {
        Install::Binary | Install::Deb(_) | Install::External(_) => {
            Some(s.headscale.config.clone())
        }
        Install::Compose(c) => container::host_config_path(c, &s.headscale.config),
    };
    path.and_then(|p| HeadscaleConfig::load(&p).ok())
}

/// The config the audit reads: the file the admin maintains, for a host install (a finding
/// names a key of that file; the environment's overrides are the service's business), and
/// for a compose install the config as the container runs it (read through the service's
/// volumes and environment, the only way to its file).
pub fn audited_config(s: &Settings, production: Option<&Production>) -> Option<HeadscaleConfig> {
    match &s.headscale.install {
        Install::Binary | Install::Deb(_) | Install::External(_) => {
            HeadscaleConfig::load(&s.headscale.config).ok()
        }
        Install::Compose(_) => production.map(|p| p.config.clone()),
    }
}

/// An external install's facts (the binary on disk against the server its service manager
/// names); `None` for every other kind, whose next version comes from the release feed.
pub async fn external_facts(
    s: &Settings,
    production: &Production,
) -> Result<Option<ExternalFacts>, CurrentVersionError> {
    let Install::External(e) = &s.headscale.install else {
        return Ok(None);
    };
    external::facts(s, e, production)
        .await
        .map(Some)
        .map_err(|source| CurrentVersionError {
            binary: s.headscale.binary.display().to_string(),
            source,
        })
}
