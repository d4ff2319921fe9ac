//! Deployment: the only module that touches the production binary path, the production database
//! or the service. Install layout, service control, staging instances, and (in `transaction`)
//! promotion, rollback and crash recovery.
//!
//! Layout under `state_dir`:
//! ```text
//! versions/<version>/headscale   installed binaries; the directories 0755 and the binaries
//!                                0755, set explicitly (the units' UMask=0077 would make them
//!                                0700), all owned by headwarden's user: Headscale's own account
//!                                can execute them and no other account can replace them.
//!                                headscale.binary is a symlink to one.
//! downloads/                     0700; verified downloads land here before install
//! backups/run<id>-hop<n>-<ver>/  db.sqlite (integrity-checked), config.yaml, noise_private.key
//! staging/                       the staging instance: config, db copy, socket, logs
//! ```

pub mod backup;
pub mod container;
pub mod external;
pub mod inputs;
pub mod package;
pub mod postgres;
pub mod prepare;
pub mod production;
pub mod service;
pub mod staging;
pub mod transaction;
pub mod unit;

use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;

use crate::compose::{ComposeError, EngineError};
use crate::deploy::backup::RestoreRefused;
use crate::error::error_chain;
use crate::error::Hinted;
use crate::files::{self, FileMeta};
use crate::headscale::cli::{self, binary_version, Cli, CliError};
use crate::headscale::config;
use crate::headscale::config::HeadscaleConfig;
use crate::release::{asset_name, AssetKind};
use crate::settings::{Install, Settings};
use crate::state;
use crate::state::sqlite_files;
use crate::state::Store;
use crate::verify;
use crate::verify::Verified;

use package::PackageError;
pub use production::{IdentityError, Production, Server};
pub use service::Service;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Sqlite(#[from] sqlite_files::SqliteFileError),
    #[error(transparent)]
    Config(#[from] config::HeadscaleConfigError),
    #[error(transparent)]
    File(#[from] files::FileError),
    #[error(transparent)]
    Compose(#[from] ComposeError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error(transparent)]
    Image(#[from] verify::image::ImageError),
    #[error(transparent)]
    RestoreRefused(#[from] RestoreRefused),
    #[error("{0}")]
    Other(String),
}

impl Hinted for DeployError {
    fn hint(&self) -> Option<String> {
        match self {
            DeployError::Identity(e) => Some(e.hint().into()),
            DeployError::RestoreRefused(_) => Some("a backup is restored only to the paths it was taken from; production's config, its service's environment or its directories changed since: find out who changed them".into()),
            _ => None,
        }
    }
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DeployError + 'a {
    move |source| DeployError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Production's version could not be read from its binary.
#[derive(Debug, thiserror::Error)]
#[error("cannot tell which version production runs ({binary})")]
pub struct CurrentVersionError {
    pub binary: String,
    #[source]
    pub source: CliError,
}

/// The version production runs: `<headscale.binary> version`, or `headscale version` inside the
/// compose service's container. For an external install this finds production first (its
/// running server's own executable): a run that has found it already asks
/// [`Production::version`].
pub async fn current_version(s: &Settings) -> Result<Version, CurrentVersionError> {
    if let Install::External(_) = &s.headscale.install {
        let found = Production::find(s).await.map_err(|e| CurrentVersionError {
            binary: s.headscale.binary.display().to_string(),
            source: CliError::Failed {
                command: "finding the running server".into(),
                detail: error_chain(&e),
            },
        })?;
        return found.version(s).await;
    }
    version_of(s, None).await
}

/// The version of production's CLI, or (external install) of the running server `running`.
pub(crate) async fn version_of(
    s: &Settings,
    running: Option<i32>,
) -> Result<Version, CurrentVersionError> {
    let (cli, what) = match &s.headscale.install {
        // The running server's own executable: after a package manager replaced the binary it
        // still runs the old version until restarted.
        Install::External(_) => {
            if let Some(pid) = running {
                return external::running_version(pid).await.map_err(|source| {
                    CurrentVersionError {
                        binary: format!("the running server (pid {pid})"),
                        source,
                    }
                });
            }
            (
                Cli::binary(&s.headscale.binary),
                s.headscale.binary.display().to_string(),
            )
        }
        Install::Binary | Install::Deb(_) => (
            Cli::binary(&s.headscale.binary),
            s.headscale.binary.display().to_string(),
        ),
        Install::Compose(c) => {
            let what = format!("compose service {} of {}", c.service, c.file.display());
            match container::production_cli(c).await {
                Ok(cli) => (cli, what),
                Err(e) => {
                    return Err(CurrentVersionError {
                        binary: what,
                        source: CliError::Failed {
                            command: "headscale version".into(),
                            detail: error_chain(&e),
                        },
                    })
                }
            }
        }
    };
    cli::cli_version(&cli, Duration::from_secs(30))
        .await
        .map_err(|source| CurrentVersionError {
            binary: what,
            source,
        })
}

/// After production started on `slot`: what runs is that slot (for a compose install, the
/// container's image is the pinned one). Other kinds are checked by the version they answer.
pub async fn check_running(s: &Settings, slot: &Slot) -> Result<(), DeployError> {
    match (&s.headscale.install, slot) {
        (Install::Compose(c), Slot::Image(r)) => container::check_running_image(c, r).await,
        _ => Ok(()),
    }
}

/// Production's `headscale` CLI: the binary, or the one in the compose service's container.
pub async fn production_cli(s: &Settings) -> Result<Cli, DeployError> {
    match &s.headscale.install {
        Install::Binary | Install::Deb(_) | Install::External(_) => {
            Ok(Cli::binary(&s.headscale.binary))
        }
        Install::Compose(c) => container::production_cli(c).await,
    }
}

/// What production runs from, as the journal records it: the binary its symlink points at, the
/// image its compose file names, or the package file dpkg installed it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Binary(PathBuf),
    Image(String),
    /// A verified `.deb` kept under `versions/<v>/`.
    Package(PathBuf),
}

impl Slot {
    /// The journal's text for it.
    pub fn journal(&self) -> String {
        match self {
            Slot::Binary(p) | Slot::Package(p) => p.display().to_string(),
            Slot::Image(r) => r.clone(),
        }
    }
    /// Reads a journal entry back, as the install kind records it.
    pub fn from_journal(s: &Settings, text: &str) -> Self {
        match &s.headscale.install {
            Install::Binary | Install::External(_) => Slot::Binary(PathBuf::from(text)),
            Install::Deb(_) => Slot::Package(PathBuf::from(text)),
            Install::Compose(_) => Slot::Image(text.to_string()),
        }
    }
    /// The version it runs: the binary's own report, the image's exact tag, or the package's
    /// `Version` field.
    pub async fn version(&self, timeout: Duration) -> Result<Version, CliError> {
        match self {
            Slot::Binary(p) => binary_version(p, timeout).await,
            Slot::Image(r) => container::image_version(r).ok_or_else(|| CliError::Output {
                command: format!("the tag of {r}"),
                detail: "not an exact version".into(),
            }),
            Slot::Package(p) => package::release_of(p).await.map_err(|e| CliError::Output {
                command: format!("dpkg-deb -f {} Version", p.display()),
                detail: e.to_string(),
            }),
        }
    }
}

/// Where production points now. For a deb install: the kept package file of the version dpkg
/// records as installed (which need not exist yet: the upgrade's fetch keeps it).
pub async fn current_slot(s: &Settings) -> Result<Slot, DeployError> {
    match &s.headscale.install {
        Install::Binary => Ok(Slot::Binary(current_target(&s.headscale.binary))),
        Install::External(_) => Ok(Slot::Binary(s.headscale.binary.clone())),
        Install::Compose(c) => Ok(Slot::Image(container::current_image(c)?.to_string())),
        Install::Deb(d) => {
            let state = package::installed(&d.package).await?.ok_or_else(|| {
                DeployError::Other(format!(
                    "dpkg has no package {} installed (headscale.install.kind is deb)",
                    d.package
                ))
            })?;
            let version = state.release().ok_or_else(|| {
                DeployError::Other(format!(
                    "dpkg records {} {}, which is not a Headscale release",
                    d.package, state.version
                ))
            })?;
            Ok(Slot::Package(package_path(s, &version)))
        }
    }
}

/// Points production at `slot`: the symlink, the compose file's `image:` line, or `dpkg -i` of
/// the package (whose postinst restarts an enabled unit).
pub async fn switch_to(s: &Settings, slot: &Slot) -> Result<(), DeployError> {
    match (&s.headscale.install, slot) {
        (Install::Binary, Slot::Binary(p)) => switch_binary(&s.headscale.binary, p),
        (Install::Compose(c), Slot::Image(r)) => container::switch_image(c, r),
        (Install::Deb(d), Slot::Package(p)) => {
            package::install(&d.package, p).await?;
            Ok(())
        }
        // The package manager's binary is already in place; the way back is the admin's.
        (Install::External(_), Slot::Binary(p)) if p == &s.headscale.binary => Ok(()),
        (Install::External(e), Slot::Binary(kept)) => {
            let old = kept
                .parent()
                .and_then(|d| d.file_name())
                .and_then(|v| Version::parse(&v.to_string_lossy()).ok())
                .ok_or_else(|| {
                    DeployError::Other(format!("{} is not a kept binary", kept.display()))
                })?;
            let new = binary_version(&s.headscale.binary, Duration::from_secs(30))
                .await
                .map_or_else(|_| "the new version".to_string(), |v| v.to_string());
            let m = external::manager(e, &s.headscale.binary).await;
            Err(DeployError::Other(external::instructions(
                m, &e.package, &old, &new, kept,
            )))
        }
        (_, other) => Err(DeployError::Other(format!(
            "{} does not fit this install kind",
            other.journal()
        ))),
    }
}

/// Why the install kind does not fit the host, if it does not: `kind: binary` over a path dpkg
/// owns fights dpkg (the next `apt install` of the package replaces headwarden's symlink, and the
/// way back with it).
pub async fn install_conflict(s: &Settings) -> Option<String> {
    let Install::Binary = &s.headscale.install else {
        return None;
    };
    let binary = &s.headscale.binary;
    let owner = package::owner(binary).await.ok().flatten()?;
    Some(format!(
        "headscale.binary {} belongs to the Debian package {owner} (dpkg-query -S): a symlink swap over it fights dpkg, whose next install of {owner} replaces the link and with it the way back; set headscale.install.kind: deb (package: {owner})",
        binary.display()
    ))
}

/// Why a switch cannot be made now although nothing is wrong with the release: another package
/// manager holds dpkg's lock (a deb install's switch is `dpkg -i`). Asked before each hop's stop.
pub fn switch_blocked(s: &Settings) -> Option<String> {
    let Install::Deb(_) = &s.headscale.install else {
        return None;
    };
    package::lock_holder()
        .map(|pid| format!("dpkg is locked by process {pid} (apt or unattended-upgrades?)"))
}

/// A verified release ready to be staged or promoted: a binary under `versions/`, or a pulled
/// image with the digest it was verified at.
#[derive(Debug, Clone)]
pub struct Installed {
    version: Version,
    artifact: Artifact,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    Binary(PathBuf),
    Image {
        reference: String,
        digest: String,
    },
    /// A verified `.deb` and the binary unpacked from it (what staging runs).
    Package {
        deb: PathBuf,
        binary: PathBuf,
    },
}

impl Installed {
    pub fn version(&self) -> &Version {
        &self.version
    }
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }
    /// What production points at once this is promoted.
    pub fn slot(&self) -> Slot {
        match &self.artifact {
            Artifact::Binary(p) => Slot::Binary(p.clone()),
            // Pinned by the verified digest: production runs exactly what staging tested,
            // whatever the tag resolves to later.
            Artifact::Image { reference, digest } => Slot::Image(format!("{reference}@{digest}")),
            Artifact::Package { deb, .. } => Slot::Package(deb.clone()),
        }
    }
    /// An image pulled and checked by `verify` (its digest recorded).
    pub fn image(verified: verify::VerifiedImage) -> Self {
        Self {
            version: verified.version().clone(),
            artifact: Artifact::Image {
                reference: verified.reference().to_string(),
                digest: verified.digest().to_string(),
            },
        }
    }
}

/// The probe's user headwarden created in production (security review N10), as recorded.
pub fn probe_user(store: &Store) -> Option<u64> {
    store
        .kv_get(state::Key::ProbeUser)
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
}

pub fn versions_dir(s: &Settings) -> PathBuf {
    s.state_dir.join("versions")
}

pub fn downloads_dir(s: &Settings) -> PathBuf {
    s.state_dir.join("downloads")
}

pub fn version_path(s: &Settings, v: &Version) -> PathBuf {
    versions_dir(s).join(v.to_string()).join("headscale")
}

/// Where a deb install keeps the verified package of `v`: `versions/<v>/<upstream's name>.deb`.
pub fn package_path(s: &Settings, v: &Version) -> PathBuf {
    versions_dir(s)
        .join(v.to_string())
        .join(asset_name(&format!("v{v}"), AssetKind::Deb))
}

/// Moves a verified `.deb` to [`package_path`] (0644) and unpacks its `headscale.binary` beside
/// it as `versions/<v>/headscale` (0755) for staging; records the package's sha256.
pub async fn install_package(
    s: &Settings,
    store: &Store,
    verified: Verified,
) -> Result<Installed, DeployError> {
    let deb = keep_package(s, &verified)?;
    let binary = version_path(s, verified.version());
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(versions_dir(s))
        .map_err(io_err("creating a directory in", &versions_dir(s)))?;
    let inside = package::unpack(&deb, tmp.path(), &s.headscale.binary).await?;
    let mut src = files::open_nofollow(&inside)?;
    files::replace_with(&binary, &mut src, Some(executable_meta()), 0o755)?;
    store.record_install(&verified.version().to_string(), &deb, verified.sha256())?;
    Ok(Installed {
        version: verified.version().clone(),
        artifact: Artifact::Package { deb, binary },
    })
}

/// Moves a verified `.deb` to [`package_path`] (0644, headwarden's own).
pub fn keep_package(s: &Settings, verified: &Verified) -> Result<PathBuf, DeployError> {
    let deb = package_path(s, verified.version());
    version_dir(s, &deb)?;
    let mut src = files::open_nofollow(verified.path())?;
    let meta = FileMeta {
        mode: 0o644,
        ..executable_meta()
    };
    files::replace_with(&deb, &mut src, Some(meta), 0o644)?;
    let _ = std::fs::remove_file(verified.path());
    Ok(deb)
}

/// An external install's candidate: the binary the package manager put on disk, as it is now
/// (its sha256 is re-checked before the restart).
pub fn on_disk(s: &Settings, version: &Version) -> Result<(Installed, String), DeployError> {
    let binary = &s.headscale.binary;
    let sha = verify::sha256_file(binary).map_err(io_err("hashing", binary))?;
    Ok((
        Installed {
            version: version.clone(),
            artifact: Artifact::Binary(binary.clone()),
        },
        sha,
    ))
}

/// Moves a verified download into `versions/<v>/headscale` (0755) and records it.
pub fn install(s: &Settings, store: &Store, verified: Verified) -> Result<Installed, DeployError> {
    let target = version_path(s, verified.version());
    version_dir(s, &target)?;
    let mut src = files::open_nofollow(verified.path())?;
    files::replace_with(&target, &mut src, Some(executable_meta()), 0o755)?;
    let _ = std::fs::remove_file(verified.path());
    store.record_install(&verified.version().to_string(), &target, verified.sha256())?;
    Ok(Installed {
        version: verified.version().clone(),
        artifact: Artifact::Binary(target),
    })
}

/// Creates `versions/` and `versions/<v>/` for `binary` with exactly 0755 (traversable by
/// Headscale's account whatever the umask), refusing directories someone else owns or may write.
fn version_dir(s: &Settings, binary: &Path) -> Result<(), DeployError> {
    files::owned_dir(&versions_dir(s), 0o755)?;
    files::owned_dir(binary.parent().unwrap_or(Path::new(".")), 0o755)?;
    Ok(())
}

/// Installed binaries: owned by headwarden's user, 0755.
fn executable_meta() -> FileMeta {
    FileMeta {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        mode: 0o755,
    }
}

/// Where the production binary path points now (itself when it is not a symlink).
pub fn current_target(binary: &Path) -> PathBuf {
    match std::fs::read_link(binary) {
        Ok(t) if t.is_absolute() => t,
        Ok(t) => binary.parent().unwrap_or(Path::new("/")).join(t),
        Err(_) => binary.to_path_buf(),
    }
}

/// Atomically points the production binary path at `target` (symlink + rename over).
pub fn switch_binary(binary: &Path, target: &Path) -> Result<(), DeployError> {
    let dir = binary.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".{}.headwarden-switch",
        binary
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err("creating symlink", &tmp))?;
    std::fs::rename(&tmp, binary).map_err(io_err("switching", binary))?;
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

/// Makes sure the running version's binary lives under `versions/` so a rollback can return to
/// it even when production's binary path is still the plain file an admin installed.
///
/// For a compose install the running image stays where the engine keeps it: the slot is the
/// compose file's (pinned) image.
///
/// For a deb install the slot is the running version's package, which the upgrade's fetch
/// kept under `versions/` (verified like any release file) before anything was touched.
pub async fn adopt_current(
    s: &Settings,
    store: &Store,
    current: &Version,
) -> Result<Slot, DeployError> {
    match &s.headscale.install {
        Install::Binary => {}
        Install::Compose(_) => return current_slot(s).await,
        // The running server's executable, copied before the restart replaces it in memory.
        Install::External(_) => {
            let pid = Production::find(s).await?.pid().ok_or_else(|| {
                DeployError::Other(format!(
                    "no server of {} runs: nothing to guard",
                    s.headscale.binary.display()
                ))
            })?;
            let dest = version_path(s, current);
            version_dir(s, &dest)?;
            if !dest.exists() {
                // Readable through /proc after the package manager deleted the file.
                let exe = PathBuf::from(format!("/proc/{pid}/exe"));
                let mut src = std::fs::File::open(&exe)
                    .map_err(io_err("copying the running binary", &exe))?;
                files::replace_with(&dest, &mut src, Some(executable_meta()), 0o755)?;
            }
            let sha = verify::sha256_file(&dest).map_err(io_err("hashing", &dest))?;
            store.record_install(&current.to_string(), &dest, &sha)?;
            return Ok(Slot::Binary(dest));
        }
        Install::Deb(d) => {
            let deb = package_path(s, current);
            if files::regular_meta(&deb)?.is_none() {
                return Err(DeployError::Other(format!(
                    "the package of the running version ({} {current}) is not kept at {}: without it there is no way back",
                    d.package,
                    deb.display()
                )));
            }
            return Ok(Slot::Package(deb));
        }
    }
    let binary = &s.headscale.binary;
    let target = current_target(binary);
    if target.starts_with(versions_dir(s)) {
        return Ok(Slot::Binary(target));
    }
    let dest = version_path(s, current);
    version_dir(s, &dest)?;
    if !dest.exists() {
        let mut src =
            std::fs::File::open(&target).map_err(io_err("copying the running binary", &target))?;
        files::replace_with(&dest, &mut src, Some(executable_meta()), 0o755)?;
        let sha = verify::sha256_file(&dest).map_err(io_err("hashing", &dest))?;
        store.record_install(&current.to_string(), &dest, &sha)?;
    }
    Ok(Slot::Binary(dest))
}

/// Keeps the newest `keep` installed versions, never removing `protect`ed paths.
pub fn prune_versions(
    s: &Settings,
    store: &Store,
    protect: &[PathBuf],
) -> Result<Vec<String>, DeployError> {
    let mut removed = Vec::new();
    for row in store.installs()?.into_iter().skip(s.release.keep_versions) {
        let path = PathBuf::from(&row.path);
        if protect.contains(&path) {
            continue;
        }
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        store.forget_install(&row.version)?;
        removed.push(row.version);
    }
    Ok(removed)
}

/// Production's Headscale config as it really runs: the file plus the `HEADSCALE_*`
/// environment of the server its service manager names ([`Production::find`]); a compose
/// install's through the service's volumes and environment ([`container::Discovered::config`]).
pub async fn production_config(s: &Settings) -> Result<HeadscaleConfig, DeployError> {
    Ok(Production::find(s).await?.config)
}

/// Refuses to start a promotion that could not finish its backup: the state directory's file
/// system needs room for two copies of the database (backup + staging copy) plus slack.
pub fn check_backup_space(s: &Settings, config: &HeadscaleConfig) -> Result<(), DeployError> {
    let db = config.sqlite_path()?;
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let needed = 2 * (size(db) + size(Path::new(&wal))) + 16 * 1024 * 1024;
    let stat = nix::sys::statvfs::statvfs(&s.state_dir).map_err(|e| {
        DeployError::Other(format!(
            "cannot read free space of {}: {e}",
            s.state_dir.display()
        ))
    })?;
    let available = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    if available < needed {
        return Err(DeployError::Other(format!(
            "not enough free space in {} for the backup: {} MiB needed, {} MiB available; production was not touched",
            s.state_dir.display(),
            needed / (1024 * 1024),
            available / (1024 * 1024)
        )));
    }
    Ok(())
}
