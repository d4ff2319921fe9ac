//! The `headscale:` section: the install kind, the service, the API.

use std::path::{Path, PathBuf};

use super::super::raw::*;
use super::super::url::url_allowed;
use super::super::{
    ComposeInstall, ConfigError, DebInstall, ExternalInstall, HeadscaleSettings, Install,
    PackageManager, ServiceSettings,
};

use super::Ctx;

/// Where a program named without a path is looked for: the system's own directories, never the
/// caller's PATH (headwarden runs as root).
const PROGRAM_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

fn program(cx: &Ctx<'_>, key: &str, name: &str) -> Result<String, ConfigError> {
    if name.starts_with('/') {
        return Ok(name.to_string());
    }
    if name.contains('/') || name.is_empty() {
        return Err(cx.err(
            key,
            format!("{name:?} is neither a program name nor an absolute path"),
            "e.g. podman-compose or /usr/bin/podman-compose",
        ));
    }
    PROGRAM_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .ok_or_else(|| {
            cx.err(
                key,
                format!("{name} is not installed in {}", PROGRAM_DIRS.join(", ")),
                "install it, or give its absolute path",
            )
        })
}

/// `headscale.install.package`: a package name as dpkg, apk and pacman spell them.
fn package_name(cx: &Ctx<'_>, package: Option<String>) -> Result<String, ConfigError> {
    let package = package.unwrap_or_else(|| "headscale".into());
    if package.is_empty()
        || !package
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-._".contains(c))
    {
        return Err(cx.err(
            "headscale.install.package",
            format!("{package:?} is not a package name"),
            "the package's name as the package manager lists it, e.g. headscale",
        ));
    }
    Ok(package)
}

fn install(cx: &Ctx<'_>, i: RawInstall) -> Result<Install, ConfigError> {
    match i.kind.as_deref().unwrap_or("binary") {
        "binary" => Ok(Install::Binary),
        "compose" => {
            let file = i.file.ok_or_else(|| {
                cx.err(
                    "headscale.install.file",
                    "kind: compose needs the compose file",
                    "e.g. file: /srv/headscale/compose.yaml",
                )
            })?;
            let mut command = if i.command.is_empty() {
                vec!["docker".to_string(), "compose".to_string()]
            } else {
                i.command
            };
            command[0] = program(cx, "headscale.install.command", &command[0])?;
            let engine = if i.engine.is_empty() {
                let base = Path::new(&command[0])
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                match base.as_str() {
                    "podman" | "docker" => vec![command[0].clone()],
                    "podman-compose" => vec![program(cx, "headscale.install.engine", "podman")?],
                    "docker-compose" => vec![program(cx, "headscale.install.engine", "docker")?],
                    other => {
                        return Err(cx.err(
                            "headscale.install.engine",
                            format!("cannot tell which engine {other} drives"),
                            "set engine: [/usr/bin/podman] or [/usr/bin/docker]",
                        ))
                    }
                }
            } else {
                let mut e = i.engine;
                e[0] = program(cx, "headscale.install.engine", &e[0])?;
                e
            };
            let image = i
                .image
                .unwrap_or_else(|| "docker.io/headscale/headscale".into());
            if image.contains('@')
                || image
                    .rsplit('/')
                    .next()
                    .is_some_and(|last| last.contains(':'))
            {
                return Err(cx.err(
                    "headscale.install.image",
                    format!("{image:?} names a tag or digest"),
                    "give the repository only (docker.io/headscale/headscale); headwarden pins the tag",
                ));
            }
            Ok(Install::Compose(ComposeInstall {
                file: cx.path(file),
                service: i.service.unwrap_or_else(|| "headscale".into()),
                command,
                engine,
                image,
            }))
        }
        "external" => {
            let manager = match i.manager.as_deref().unwrap_or("auto") {
                "auto" => PackageManager::Auto,
                "apt" => PackageManager::Apt,
                "apk" => PackageManager::Apk,
                "pacman" => PackageManager::Pacman,
                "nix" => PackageManager::Nix,
                "other" => PackageManager::Other,
                m => {
                    return Err(cx.err(
                        "headscale.install.manager",
                        format!("unknown package manager {m:?}"),
                        "use auto, apt, apk, pacman, nix or other",
                    ))
                }
            };
            Ok(Install::External(ExternalInstall {
                manager,
                package: package_name(cx, i.package)?,
            }))
        }
        "deb" => Ok(Install::Deb(DebInstall {
            package: package_name(cx, i.package)?,
        })),
        other => Err(cx.err(
            "headscale.install.kind",
            format!("unknown install kind {other:?}"),
            "use binary, deb, compose or external",
        )),
    }
}

pub(super) fn headscale(cx: &Ctx<'_>, h: RawHeadscale) -> Result<HeadscaleSettings, ConfigError> {
    let install = install(cx, h.install)?;
    let default_kind = match &install {
        Install::Binary | Install::Deb(_) | Install::External(_) => "systemd",
        Install::Compose(_) => "compose",
    };
    let service = match h.service.kind.as_deref().unwrap_or(default_kind) {
        "compose" => match &install {
            Install::Compose(c) => ServiceSettings::Compose(c.clone()),
            Install::Binary | Install::Deb(_) | Install::External(_) => {
                return Err(cx.err(
                    "headscale.service.kind",
                    "service kind compose needs headscale.install.kind: compose",
                    "",
                ))
            }
        },
        "systemd" => ServiceSettings::Systemd {
            unit: h.service.unit.unwrap_or_else(|| "headscale.service".into()),
        },
        "command" => {
            if h.service.start.is_empty() || h.service.stop.is_empty() {
                return Err(cx.err(
                    "headscale.service",
                    "kind: command needs start and stop argv lists",
                    "e.g. start: [/usr/local/sbin/hs-ctl, start]",
                ));
            }
            for (key, argv) in [
                ("headscale.service.start", &h.service.start),
                ("headscale.service.stop", &h.service.stop),
                ("headscale.service.status", &h.service.status),
            ] {
                if argv.first().is_some_and(|p| !p.starts_with('/')) {
                    return Err(cx.err(
                        key,
                        format!("{:?} is not an absolute path", argv[0]),
                        "give the program's full path: headwarden runs as root and does not search PATH for it",
                    ));
                }
            }
            if let Some(p) = h.service.pidfile.as_ref().filter(|p| !p.is_absolute()) {
                return Err(cx.err(
                    "headscale.service.pidfile",
                    format!("{} is not an absolute path", p.display()),
                    "give the full path of the file the service writes the server's pid to",
                ));
            }
            ServiceSettings::Command {
                start: h.service.start,
                stop: h.service.stop,
                status: Some(h.service.status).filter(|s| !s.is_empty()),
                pidfile: h.service.pidfile,
            }
        }
        other => {
            return Err(cx.err(
                "headscale.service.kind",
                format!("unknown service kind {other:?}"),
                "use systemd, command or (with install kind compose) compose",
            ))
        }
    };
    let api_url = h
        .api
        .url
        .unwrap_or_else(|| "unix:///var/run/headscale/headscale.sock".into());
    if !(api_url.starts_with("unix://")
        || api_url.starts_with("grpcs://")
        || url_allowed(&api_url, true))
    {
        return Err(cx.err(
            "headscale.api.url",
            format!("unsupported API address {api_url:?}"),
            "use unix:///path/to.sock, https://host, grpcs://host:port (remote gRPC, ≤0.29), or http:// to a loopback address (the API key must not cross a network in clear text)",
        ));
    }
    // Where upstream's package puts it (nFPM `bindir`), or where admins copy the binary.
    let binary = cx.path(h.binary.unwrap_or_else(|| {
        PathBuf::from(match &install {
            Install::Deb(_) | Install::External(_) => "/usr/bin/headscale",
            _ => "/usr/local/bin/headscale",
        })
    }));
    Ok(HeadscaleSettings {
        install,
        binary,
        config: cx.path(
            h.config
                .unwrap_or_else(|| PathBuf::from("/etc/headscale/config.yaml")),
        ),
        service,
        api_url,
        api_key_file: h.api.api_key_file.map(|p| cx.path(p)),
        api_ca_file: h.api.ca_file.map(|p| cx.path(p)),
    })
}
