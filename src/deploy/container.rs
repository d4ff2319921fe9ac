//! The compose install kind: production is one service of a compose file, run by Docker or
//! Podman. What a binary install reads from the host (the config file, the data paths, the
//! running version) is read here through the service's volumes, environment, published ports
//! and container; "switching" changes only that service's `image:` line.

use std::path::{Component, Path, PathBuf};

use semver::Version;
use sha2::{Digest, Sha256};

use crate::compose::{
    ComposeError, ComposeFile, ContainerInfo, Engine, ImageRef, MountSource, ServiceSpec, TagKind,
};
use crate::deploy::{io_err, DeployError};
use crate::files;
use crate::headscale::cli::Cli;
use crate::headscale::config::{Database, HeadscaleConfig};
use crate::settings::ComposeInstall;
use crate::state::RunId;

/// The program ko-built images (upstream's) run, used when an image declares no entrypoint.
const DEFAULT_ENTRYPOINT: &str = "/ko-app/headscale";

/// What the compose file and the engine say about production.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub file: ComposeFile,
    pub spec: ServiceSpec,
    /// The service's container, when compose has created one.
    pub container: Option<ContainerInfo>,
    /// `(host, container)` of each mount: from the container when there is one (named volumes
    /// resolved by the engine), else the file's bind mounts.
    pub mounts: Vec<(PathBuf, PathBuf)>,
}

pub fn engine(c: &ComposeInstall) -> Engine {
    Engine::new(c.engine.clone())
}

pub async fn discover(c: &ComposeInstall) -> Result<Discovered, DeployError> {
    let file = ComposeFile::load(&c.file)?;
    let spec = file.service(&c.service)?;
    let container = engine(c)
        .compose_container(&file.dir(), &c.service, spec.container_name.as_deref())
        .await?;
    let mounts = match &container {
        Some(info) if !info.mounts.is_empty() => info.mounts.clone(),
        _ => bind_mounts(&spec),
    };
    Ok(Discovered {
        file,
        spec,
        container,
        mounts,
    })
}

/// The host path of the config file from the compose file's bind mounts alone (no engine
/// asked): for readers that only need `server_url`.
pub fn host_config_path(c: &ComposeInstall, inside: &Path) -> Option<PathBuf> {
    let file = ComposeFile::load(&c.file).ok()?;
    Discovered::from_file(file, &c.service)
        .ok()?
        .host_path(inside)
        .ok()
        .flatten()
}

/// A container path refused as a way onto the host.
fn escape(inside: &Path, why: &str) -> DeployError {
    DeployError::Other(format!(
        "the container's path {} is refused: {why}; headwarden writes only inside the service's volumes",
        inside.display()
    ))
}

/// `(host, container)` of the service's bind mounts (named volumes need the engine).
fn bind_mounts(spec: &ServiceSpec) -> Vec<(PathBuf, PathBuf)> {
    spec.mounts
        .iter()
        .filter_map(|m| match &m.source {
            MountSource::Bind(p) => Some((p.clone(), m.target.clone())),
            MountSource::Volume(_) => None,
        })
        .collect()
}

impl Discovered {
    /// The service as the compose file alone has it (no engine asked): its bind mounts only.
    fn from_file(file: ComposeFile, service: &str) -> Result<Self, ComposeError> {
        let spec = file.service(service)?;
        let mounts = bind_mounts(&spec);
        Ok(Discovered {
            file,
            spec,
            container: None,
            mounts,
        })
    }

    /// The host path behind a path inside the container (the longest mount that holds it);
    /// `Ok(None)` when no mount holds it. The container's config names these paths, and the
    /// container may write that config and its volumes: a path with `..` or `.` in it, or one
    /// that leaves the mount's source through a link, is refused rather than mapped onto the host.
    pub fn host_path(&self, inside: &Path) -> Result<Option<PathBuf>, DeployError> {
        if inside
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(escape(inside, "it has `..` or `.` in it"));
        }
        let Some((src, dst)) = self
            .mounts
            .iter()
            .filter(|(_, dst)| inside.starts_with(dst))
            .max_by_key(|(_, dst)| dst.as_os_str().len())
        else {
            return Ok(None);
        };
        let rest = inside.strip_prefix(dst).unwrap_or(Path::new(""));
        let host = if rest.as_os_str().is_empty() {
            src.clone()
        } else {
            src.join(rest)
        };
        // The deepest part that exists must resolve inside the mount's source.
        let root = std::fs::canonicalize(src).unwrap_or_else(|_| src.clone());
        let mut probe = host.clone();
        while std::fs::symlink_metadata(&probe).is_err() && probe.pop() {}
        if let Ok(real) = std::fs::canonicalize(&probe) {
            if !real.starts_with(&root) {
                return Err(escape(
                    inside,
                    &format!(
                        "on the host it resolves to {}, outside {}",
                        real.display(),
                        root.display()
                    ),
                ));
            }
        }
        Ok(Some(host))
    }

    fn must_host(&self, what: &str, inside: &Path) -> Result<PathBuf, DeployError> {
        self.host_path(inside)?.ok_or_else(|| {
            DeployError::Other(format!(
                "{what} {} is not on a volume of compose service {}: headwarden cannot back it up or stage a copy; mount it from the host",
                inside.display(),
                self.spec.name
            ))
        })
    }

    /// The service's `HEADSCALE_*` environment: the container's when it exists (compose has
    /// resolved `env_file:` and interpolation), else the file's `environment:`.
    pub fn headscale_env(&self) -> std::collections::BTreeMap<String, String> {
        let all = match &self.container {
            Some(c) => c.env.clone(),
            None => self.spec.environment.clone(),
        };
        all.into_iter()
            .filter(|(k, _)| k.starts_with("HEADSCALE_"))
            .collect()
    }

    /// Production's config as it runs, seen from the host: paths mapped through the volumes,
    /// the listen address replaced by the published one.
    pub fn config(&self, inside: &Path) -> Result<HeadscaleConfig, DeployError> {
        let host = self.must_host("the config file", inside)?;
        let text = std::fs::read_to_string(&host).map_err(io_err("reading", &host))?;
        let mut cfg = HeadscaleConfig::parse(inside, &text)?.with_env(self.headscale_env())?;
        cfg.path = host;
        if let Database::Sqlite(path) = &cfg.database {
            cfg.database = Database::Sqlite(self.must_host("the database", path)?);
        }
        cfg.noise_key_path = self.must_host("the noise key", &cfg.noise_key_path)?;
        if let Some(sock) = self.host_path(&cfg.unix_socket)? {
            cfg.unix_socket = sock;
        }
        let port = listen_port(&cfg.listen_addr).ok_or_else(|| {
            DeployError::Other(format!(
                "cannot read the port of listen_addr {:?}",
                cfg.listen_addr
            ))
        })?;
        let published = self
            .spec
            .ports
            .iter()
            .find(|p| p.container_port == port)
            .ok_or_else(|| {
                DeployError::Other(format!(
                    "compose service {} publishes no port for listen_addr {} (ports: \"127.0.0.1:8080:{port}\"); headwarden checks health through it",
                    self.spec.name, cfg.listen_addr
                ))
            })?;
        let ip = match published.host_ip.as_deref() {
            None | Some("") | Some("0.0.0.0") | Some("::") => "127.0.0.1",
            Some(ip) => ip,
        };
        cfg.listen_addr = format!("{ip}:{}", published.host_port);
        Ok(cfg)
    }

    /// Production's mounts a staging container needs too (config, policy, certificates), read
    /// only: every mount but the one holding the database.
    pub fn shared_mounts(&self, database: &Path) -> Vec<(PathBuf, PathBuf)> {
        self.mounts
            .iter()
            .filter(|(src, _)| !database.starts_with(src))
            .cloned()
            .collect()
    }
}

fn listen_port(addr: &str) -> Option<u16> {
    addr.rsplit(':').next()?.parse().ok()
}

/// The argv that runs `headscale` inside `container` of `image` (its entrypoint; the image has
/// no shell).
pub async fn cli_in(engine: &Engine, container: &str, image: &str) -> Result<Cli, DeployError> {
    let entry = engine
        .image(image)
        .await?
        .and_then(|i| i.entrypoint.first().cloned())
        .unwrap_or_else(|| DEFAULT_ENTRYPOINT.to_string());
    Ok(Cli::prefixed(engine.exec(container, &entry)))
}

/// Production's CLI: `headscale` inside the service's container. While compose has no
/// container for the service (a recreate was interrupted), the name compose will give it.
pub async fn production_cli(c: &ComposeInstall) -> Result<Cli, DeployError> {
    let d = discover(c).await?;
    let (name, image) = match &d.container {
        Some(info) => (info.name.clone(), info.image_id.clone()),
        None => (expected_name(c, &d), d.spec.image.to_string()),
    };
    cli_in(&engine(c), &name, &image).await
}

/// The container name compose gives the service: `container_name:`, else the project (the
/// directory's name, lower-cased, `[a-z0-9_-]` kept) and service joined by `_` (podman-compose)
/// or `-` (Docker Compose v2), numbered 1.
fn expected_name(c: &ComposeInstall, d: &Discovered) -> String {
    if let Some(n) = &d.spec.container_name {
        return n.clone();
    }
    let dir = d.file.dir();
    let project: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .filter(|ch| ch.is_ascii_alphanumeric() || *ch == '-' || *ch == '_')
        .collect();
    let sep = if c.command[0].ends_with("podman-compose") {
        "_"
    } else {
        "-"
    };
    format!("{project}{sep}{}{sep}1", c.service)
}

/// After a start: the service's container runs the image `reference` names. For a reference
/// pinned by digest (`repo:X.Y.Z@sha256:…`, what headwarden writes) that is the verified image
/// itself; a tag re-pointed by another pull or an auto-updater, or an engine that resolved the
/// name elsewhere, is refused.
pub async fn check_running_image(c: &ComposeInstall, reference: &str) -> Result<(), DeployError> {
    let wanted = engine(c).image(reference).await?.ok_or_else(|| {
        DeployError::Other(format!(
            "the image {reference} is not in the engine's storage after the start"
        ))
    })?;
    let found = discover(c).await?;
    let running = found.container.as_ref().ok_or_else(|| {
        DeployError::Other(format!(
            "compose service {} has no container after the start",
            c.service
        ))
    })?;
    if !same_image_id(&running.image_id, &wanted.id) {
        return Err(DeployError::Other(format!(
            "compose service {}'s container {} runs image {}, not {reference} (image {}): production does not run what was verified",
            c.service, running.name, running.image_id, wanted.id
        )));
    }
    Ok(())
}

/// Image ids as engines print them (`sha256:` prefixed or not, full or short).
fn same_image_id(a: &str, b: &str) -> bool {
    let (a, b) = (
        a.trim_start_matches("sha256:"),
        b.trim_start_matches("sha256:"),
    );
    !a.is_empty() && !b.is_empty() && (a.starts_with(b) || b.starts_with(a))
}

/// The digest headwarden recorded for `repo:X.Y.Z` when it first pulled it, checked against what
/// the engine holds under that tag now: the reference pinned by that digest. `None` when
/// headwarden never pulled the tag (the admin's own image: trusted as found, README says so).
pub async fn kept_image(
    c: &ComposeInstall,
    reference: &str,
    recorded: Option<String>,
) -> Result<Option<String>, DeployError> {
    let Some(recorded) = recorded else {
        return Ok(None);
    };
    let now = engine(c)
        .image(reference)
        .await?
        .and_then(|i| i.digest_for(&ImageRef::parse(reference).repository));
    if now.as_deref() != Some(recorded.as_str()) {
        return Err(DeployError::Other(format!(
            "the image {reference} in the engine's storage has digest {}, but headwarden verified {recorded} for it: not rolling back onto it; pull {}@{recorded} and run `headwarden rollback` again",
            now.as_deref().unwrap_or("none"),
            ImageRef::parse(reference).repository
        )));
    }
    Ok(Some(format!("{reference}@{recorded}")))
}

/// The image reference the compose file names now.
pub fn current_image(c: &ComposeInstall) -> Result<ImageRef, DeployError> {
    Ok(ComposeFile::load(&c.file)?.service(&c.service)?.image)
}

/// Points the compose file's `image:` line of the service at `image`: the new text is written
/// to a temp file beside it and renamed over (owner and mode kept), after the previous file was
/// kept as `<file>.headwarden-previous`.
pub fn switch_image(c: &ComposeInstall, image: &str) -> Result<(), DeployError> {
    let file = ComposeFile::load(&c.file)?;
    if file.service(&c.service)?.image.to_string() == image {
        return Ok(());
    }
    let text = file.with_image(&c.service, image)?;
    let previous = previous_copy(&c.file);
    files::copy_preserving(&c.file, &previous)?;
    let meta = files::regular_meta(&c.file)?;
    files::replace_with(
        &c.file,
        &mut std::io::Cursor::new(text.into_bytes()),
        meta,
        0o644,
    )?;
    Ok(())
}

pub fn previous_copy(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".headwarden-previous");
    PathBuf::from(name)
}

/// The version an image reference pins (its exact tag).
pub fn image_version(image: &str) -> Option<Version> {
    match ImageRef::parse(image).tag_kind() {
        TagKind::Exact(v) => Some(v),
        TagKind::Floating(_) => None,
    }
}

/// This headwarden's staging containers among others on the same engine (another install's
/// headwarden, with its own `state_dir`, counts its runs from 1 too): the start of the sha256 of
/// `state_dir`.
fn instance(state_dir: &Path) -> String {
    let digest = Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// The name of the staging container of `run`, hop `hop` (the journal records it).
pub fn staging_name(state_dir: &Path, run: RunId, hop: usize) -> String {
    format!(
        "headwarden-staging-{}-run{run}-hop{hop}",
        instance(state_dir)
    )
}

/// The label value every staging container of `run` carries (`io.headwarden.staging=…`).
pub fn staging_label(state_dir: &Path, run: RunId) -> String {
    format!("{}-run{run}", instance(state_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service with `<dir>/data` mounted at `/var/lib/headscale`.
    fn discovered(dir: &Path) -> Discovered {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("data");
        let text = format!(
            "services:\n  headscale:\n    image: headscale/headscale:0.28.0\n    volumes:\n      - {}:/var/lib/headscale\n",
            data.display()
        );
        let file = ComposeFile::parse(&dir.join("compose.yaml"), text).expect("compose");
        Discovered::from_file(file, "headscale").expect("service")
    }

    #[test]
    fn container_paths_never_map_outside_their_volume() {
        // Security review N2: the container's own config names the paths a restore writes.
        let d = tempfile::tempdir().expect("tempdir");
        let found = discovered(d.path());
        assert_eq!(
            found
                .host_path(Path::new("/var/lib/headscale/db.sqlite"))
                .expect("inside"),
            Some(d.path().join("data/db.sqlite"))
        );
        assert_eq!(
            found
                .host_path(Path::new("/etc/headscale/config.yaml"))
                .expect("no mount"),
            None
        );
        let dotdot = found.host_path(Path::new(
            "/var/lib/headscale/../../../../etc/ld.so.preload",
        ));
        assert!(
            dotdot
                .as_ref()
                .is_err_and(|e| e.to_string().contains("`..`")),
            "{dotdot:?}"
        );
        // A link the container made inside its volume, pointing out of it.
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).expect("outside");
        std::os::unix::fs::symlink(&outside, d.path().join("data/sub")).expect("link");
        let linked = found.host_path(Path::new("/var/lib/headscale/sub/db.sqlite"));
        assert!(
            linked
                .as_ref()
                .is_err_and(|e| e.to_string().contains("outside")),
            "{linked:?}"
        );
    }
}
