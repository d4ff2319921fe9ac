//! Compose installs: reading a compose file (a service's image, volumes, environment and
//! published ports), changing one service's `image:` line without touching anything else, and
//! the container engine's CLI (pull, inspect, ps, exec, run, rm). The only module that knows
//! compose files and engine commands; `deploy` builds the install kind on top of it.

pub mod engine;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use semver::Version;
use serde_yaml_ng::Value;

pub use engine::{ContainerInfo, Engine, EngineError, ImageInfo};

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a compose file headwarden can read: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{path} has no service {service:?} (services: {known})")]
    NoService {
        path: PathBuf,
        service: String,
        known: String,
    },
    #[error("{path}: service {service:?} {detail}")]
    Service {
        path: PathBuf,
        service: String,
        detail: String,
    },
}

/// A compose file as read from disk: its text (for the line edit) and its parsed tree.
#[derive(Debug, Clone)]
pub struct ComposeFile {
    pub path: PathBuf,
    text: String,
    root: Value,
}

/// One service of a compose file, as far as a Headscale install needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub image: ImageRef,
    pub container_name: Option<String>,
    pub mounts: Vec<Mount>,
    /// `environment:` (list or map form); values are taken literally (no `${…}` interpolation).
    pub environment: BTreeMap<String, String>,
    pub ports: Vec<Port>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: MountSource,
    /// The path inside the container.
    pub target: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A host directory or file (relative paths resolved against the compose file's directory).
    Bind(PathBuf),
    /// A named volume; the engine knows where it lives.
    Volume(String),
}

/// A published port: `[host_ip:]host_port:container_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
}

/// `repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// What `check`, `status` and the audit say about a compose install's image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageFacts {
    /// The `image:` the compose file names now.
    pub image: String,
    /// The tag, when it floats (`latest`, `0.29`, …).
    pub floating: Option<String>,
    /// What the next upgrade pins a floating tag to (the version running now).
    pub pin_to: Option<String>,
}

impl ImageFacts {
    pub fn of(image: &ImageRef, running: &Version) -> Self {
        let floating = match image.tag_kind() {
            TagKind::Exact(_) => None,
            TagKind::Floating(t) => Some(t),
        };
        Self {
            image: image.to_string(),
            pin_to: floating.as_ref().map(|_| image.at(running)),
            floating,
        }
    }

    /// The line admins read.
    pub fn describe(&self) -> String {
        match (&self.floating, &self.pin_to) {
            (Some(tag), Some(pin)) => format!(
                "compose image {} floats (tag {tag}): it can skip minors, which Headscale refuses at start; the next upgrade first pins it to {pin}, the version running now",
                self.image
            ),
            _ => format!("compose image {} (pinned to an exact version)", self.image),
        }
    }
}

/// What an image tag pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagKind {
    /// `0.26.1` or `v0.26.1`: one release.
    Exact(Version),
    /// `latest`, `stable`, `0`, `0.29`, `main-…`, `sha-…`, no tag at all: moves under the admin's
    /// feet, and can skip minors (which Headscale 0.29+ refuses at start).
    Floating(String),
}

impl ImageRef {
    pub fn parse(s: &str) -> Self {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (s, None),
        };
        // A `:` after the last `/` separates the tag (one before it is a registry's port).
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match rest[slash..].rfind(':') {
            Some(i) => (
                rest[..slash + i].to_string(),
                Some(rest[slash + i + 1..].to_string()),
            ),
            None => (rest.to_string(), None),
        };
        Self {
            repository,
            tag,
            digest,
        }
    }

    pub fn tag_kind(&self) -> TagKind {
        match &self.tag {
            None => TagKind::Floating("latest (no tag)".into()),
            Some(t) => match Version::parse(t.strip_prefix('v').unwrap_or(t)) {
                Ok(v) => TagKind::Exact(v),
                Err(_) => TagKind::Floating(t.clone()),
            },
        }
    }

    /// The same repository at exactly `version` (upstream's tags carry no `v`).
    pub fn at(&self, version: &Version) -> String {
        format!("{}:{version}", self.repository)
    }

    /// Same repository, comparing Docker Hub's short and long spellings alike.
    pub fn same_repository(&self, repository: &str) -> bool {
        normal_repository(&self.repository) == normal_repository(repository)
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `headscale/headscale`, `docker.io/headscale/headscale` and
/// `docker.io/library/…`-style names all name the same repository.
pub fn normal_repository(r: &str) -> String {
    let r = r.strip_prefix("docker.io/").unwrap_or(r);
    let r = r.strip_prefix("index.docker.io/").unwrap_or(r);
    let r = r.strip_prefix("library/").unwrap_or(r);
    r.to_string()
}

impl ComposeFile {
    pub fn load(path: &Path) -> Result<Self, ComposeError> {
        let text = std::fs::read_to_string(path).map_err(|source| ComposeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, text)
    }

    pub fn parse(path: &Path, text: String) -> Result<Self, ComposeError> {
        let root: Value = serde_yaml_ng::from_str(&text).map_err(|e| ComposeError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        if !root.get("services").is_some_and(Value::is_mapping) {
            return Err(ComposeError::Parse {
                path: path.to_path_buf(),
                detail: "it has no `services:` mapping".into(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            text,
            root,
        })
    }

    /// The directory relative paths are resolved against (and the project's working dir).
    pub fn dir(&self) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
    }

    fn service_value(&self, name: &str) -> Result<&Value, ComposeError> {
        let services = self.root.get("services").and_then(Value::as_mapping);
        services
            .and_then(|m| m.get(name))
            .ok_or_else(|| ComposeError::NoService {
                path: self.path.clone(),
                service: name.to_string(),
                known: services
                    .map(|m| {
                        m.keys()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
            })
    }

    fn bad(&self, service: &str, detail: impl Into<String>) -> ComposeError {
        ComposeError::Service {
            path: self.path.clone(),
            service: service.to_string(),
            detail: detail.into(),
        }
    }

    pub fn service(&self, name: &str) -> Result<ServiceSpec, ComposeError> {
        let v = self.service_value(name)?;
        let image = v.get("image").and_then(Value::as_str).ok_or_else(|| {
            self.bad(
                name,
                "has no `image:` (a `build:` service is not an install headwarden can upgrade)",
            )
        })?;
        let mounts = match v.get("volumes") {
            None => vec![],
            Some(Value::Sequence(s)) => s
                .iter()
                .map(|m| self.mount(name, m))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(self.bad(name, "has `volumes:` that is not a list")),
        };
        let ports = match v.get("ports") {
            None => vec![],
            Some(Value::Sequence(s)) => s.iter().filter_map(port).collect(),
            Some(_) => return Err(self.bad(name, "has `ports:` that is not a list")),
        };
        Ok(ServiceSpec {
            name: name.to_string(),
            image: ImageRef::parse(image),
            container_name: v
                .get("container_name")
                .and_then(Value::as_str)
                .map(str::to_string),
            mounts,
            environment: environment(v.get("environment")),
            ports,
        })
    }

    fn mount(&self, service: &str, m: &Value) -> Result<Mount, ComposeError> {
        let (source, target) = match m {
            Value::String(s) => {
                let mut parts = s.splitn(3, ':');
                match (parts.next(), parts.next()) {
                    (Some(src), Some(dst)) => (src.to_string(), dst.to_string()),
                    // An anonymous volume: nothing on the host an admin chose.
                    _ => (String::new(), s.clone()),
                }
            }
            Value::Mapping(_) => (
                m.get("source")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                m.get("target")
                    .and_then(Value::as_str)
                    .ok_or_else(|| self.bad(service, "has a volume without `target:`"))?
                    .to_string(),
            ),
            _ => return Err(self.bad(service, "has a volume entry headwarden cannot read")),
        };
        let source = if source.starts_with('/') {
            MountSource::Bind(PathBuf::from(source))
        } else if source.starts_with('.') || source.starts_with('~') {
            MountSource::Bind(self.dir().join(source.trim_start_matches("./")))
        } else {
            MountSource::Volume(source)
        };
        Ok(Mount {
            source,
            target: PathBuf::from(target),
        })
    }

    /// The file's text with only `service`'s `image:` value replaced by `image`: comments,
    /// quoting, order and layout stay as they were. Refused (rather than guessed) when the line
    /// cannot be found or the edit would change anything else in the parsed file.
    pub fn with_image(&self, service: &str, image: &str) -> Result<String, ComposeError> {
        let bad = |d: &str| self.bad(service, d.to_string());
        let lines: Vec<&str> = self.text.split_inclusive('\n').collect();
        let at = image_line(&lines, service).ok_or_else(|| {
            bad("has no `image:` line headwarden can edit (flow style or anchors?)")
        })?;
        let mut out = String::with_capacity(self.text.len() + image.len());
        for (i, line) in lines.iter().enumerate() {
            if i == at {
                out.push_str(&replace_value(line, image));
            } else {
                out.push_str(line);
            }
        }
        // The edit changed exactly that value, or it is refused.
        let edited = Self::parse(&self.path, out.clone())?;
        let mut expect = self.root.clone();
        if let Some(svc) = expect
            .get_mut("services")
            .and_then(|s| s.get_mut(service))
            .and_then(Value::as_mapping_mut)
        {
            svc.insert(Value::from("image"), Value::from(image));
        }
        if edited.root != expect {
            return Err(bad(
                "edit would change more than its `image:` line; refused",
            ));
        }
        Ok(out)
    }
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// The key of a block-mapping line (`  key: …`), unquoted.
fn key_of(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let (k, _) = t.split_once(':')?;
    let k = k.trim();
    let k = k
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .or_else(|| k.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
        .unwrap_or(k);
    (!k.is_empty() && !k.starts_with('-')).then_some(k)
}

/// Index of the line holding `services.<service>.image`.
fn image_line(lines: &[&str], service: &str) -> Option<usize> {
    let services = lines
        .iter()
        .position(|l| indent(l) == 0 && key_of(l) == Some("services"))?;
    let mut svc_indent = None;
    let mut svc_at = None;
    for (i, l) in lines.iter().enumerate().skip(services + 1) {
        if blank_or_comment(l) {
            continue;
        }
        let ind = indent(l);
        if ind == 0 {
            break;
        }
        let si = *svc_indent.get_or_insert(ind);
        if ind == si && key_of(l) == Some(service) {
            svc_at = Some(i);
            break;
        }
    }
    let svc_at = svc_at?;
    let si = svc_indent?;
    let mut child = None;
    for (i, l) in lines.iter().enumerate().skip(svc_at + 1) {
        if blank_or_comment(l) {
            continue;
        }
        let ind = indent(l);
        if ind <= si {
            return None;
        }
        let ci = *child.get_or_insert(ind);
        if ind == ci && key_of(l) == Some("image") {
            return Some(i);
        }
    }
    None
}

/// `    image: "old"  # comment\n` → the same line around `new`.
fn replace_value(line: &str, new: &str) -> String {
    let (head, rest) = line.split_once(':').unwrap_or((line, ""));
    let eol = if rest.ends_with("\r\n") {
        "\r\n"
    } else if rest.ends_with('\n') {
        "\n"
    } else {
        ""
    };
    let body = &rest[..rest.len() - eol.len()];
    let lead = &body[..body.len() - body.trim_start().len()];
    let value = body.trim_start();
    let (quote, after) = match value.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let end = value[1..].find(q).map_or(value.len(), |i| i + 2);
            (Some(q), &value[end.min(value.len())..])
        }
        _ => {
            let core = value.find(" #").map_or(value, |i| &value[..i]).trim_end();
            (None, &value[core.len()..])
        }
    };
    match quote {
        Some(q) => format!("{head}:{lead}{q}{new}{q}{after}{eol}"),
        None => format!("{head}:{lead}{new}{after}{eol}"),
    }
}

fn environment(v: Option<&Value>) -> BTreeMap<String, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match v {
        Some(Value::Sequence(s)) => s
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        Some(Value::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v).unwrap_or_default())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn port(v: &Value) -> Option<Port> {
    match v {
        Value::String(s) => {
            let s = s.split('/').next()?;
            let parts: Vec<&str> = s.rsplitn(3, ':').collect();
            match parts.as_slice() {
                [c, h] => Some(Port {
                    host_ip: None,
                    host_port: h.parse().ok()?,
                    container_port: c.parse().ok()?,
                }),
                [c, h, ip] => Some(Port {
                    host_ip: Some(ip.trim_matches(['[', ']']).to_string()),
                    host_port: h.parse().ok()?,
                    container_port: c.parse().ok()?,
                }),
                _ => None,
            }
        }
        Value::Mapping(_) => Some(Port {
            host_ip: v.get("host_ip").and_then(Value::as_str).map(str::to_string),
            host_port: match v.get("published")? {
                Value::Number(n) => u16::try_from(n.as_u64()?).ok()?,
                Value::String(s) => s.parse().ok()?,
                _ => return None,
            },
            container_port: u16::try_from(v.get("target")?.as_u64()?).ok()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# Headscale, as the admin wrote it
services:
  db-proxy:
    image: alpine:3   # not ours
  headscale:
    # pinned by hand last spring
    image: "docker.io/headscale/headscale:latest"   # keep this comment
    container_name: headscale
    restart: unless-stopped
    command: serve
    volumes:
      - ./config:/etc/headscale
      - headscale-data:/var/lib/headscale
      - type: bind
        source: /srv/extra
        target: /extra
    ports:
      - "127.0.0.1:8080:8080"
      - 9090:9090
      - published: 50443
        target: 50443
    environment:
      - HEADSCALE_LOG_LEVEL=debug
      - TZ=UTC
volumes:
  headscale-data: {}
"#;

    fn file() -> ComposeFile {
        ComposeFile::parse(Path::new("/srv/hs/compose.yaml"), FILE.into()).expect("parse")
    }

    #[test]
    fn reads_image_mounts_ports_and_environment() {
        let s = file().service("headscale").expect("service");
        assert_eq!(s.image.repository, "docker.io/headscale/headscale");
        assert_eq!(s.image.tag.as_deref(), Some("latest"));
        assert_eq!(s.container_name.as_deref(), Some("headscale"));
        assert_eq!(
            s.mounts[1],
            Mount {
                source: MountSource::Volume("headscale-data".into()),
                target: "/var/lib/headscale".into()
            }
        );
        assert_eq!(s.mounts[2].source, MountSource::Bind("/srv/extra".into()));
        assert_eq!(s.ports.len(), 3);
        assert_eq!(s.ports[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(
            (s.ports[1].host_port, s.ports[1].container_port),
            (9090, 9090)
        );
        assert_eq!(s.ports[2].host_port, 50443);
        assert_eq!(s.environment["HEADSCALE_LOG_LEVEL"], "debug");
        let missing = file()
            .service("nope")
            .expect_err("no such service")
            .to_string();
        assert!(missing.contains("db-proxy, headscale"), "{missing}");
    }

    #[test]
    fn tags_are_exact_or_floating() {
        let kind = |s: &str| ImageRef::parse(s).tag_kind();
        assert_eq!(
            kind("headscale/headscale:0.26.1"),
            TagKind::Exact(Version::new(0, 26, 1))
        );
        assert_eq!(
            kind("127.0.0.1:5055/headscale/headscale:v0.29.3"),
            TagKind::Exact(Version::new(0, 29, 3))
        );
        for floating in [
            "latest",
            "stable",
            "0",
            "0.29",
            "main-abc1234",
            "sha-1a2b3c4",
            "unstable",
        ] {
            assert!(
                matches!(
                    kind(&format!("headscale/headscale:{floating}")),
                    TagKind::Floating(_)
                ),
                "{floating}"
            );
        }
        assert!(matches!(
            kind("127.0.0.1:5055/headscale/headscale"),
            TagKind::Floating(_)
        ));
        let r = ImageRef::parse("127.0.0.1:5055/headscale/headscale:0.26.1@sha256:ab");
        assert_eq!(r.repository, "127.0.0.1:5055/headscale/headscale");
        assert_eq!(r.digest.as_deref(), Some("sha256:ab"));
        assert!(
            ImageRef::parse("headscale/headscale").same_repository("docker.io/headscale/headscale")
        );
    }

    #[test]
    fn the_image_edit_changes_that_line_only() {
        let f = file();
        let new = f
            .with_image("headscale", "docker.io/headscale/headscale:0.26.1")
            .expect("edit");
        let changed: Vec<(&str, &str)> = FILE
            .lines()
            .zip(new.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            changed,
            vec![(
                r#"    image: "docker.io/headscale/headscale:latest"   # keep this comment"#,
                r#"    image: "docker.io/headscale/headscale:0.26.1"   # keep this comment"#
            )]
        );
        assert_eq!(FILE.lines().count(), new.lines().count());
        // The other service's image is untouched; a bare value keeps its comment.
        let other = f.with_image("db-proxy", "alpine:3.20").expect("edit");
        assert!(
            other.contains("    image: alpine:3.20   # not ours\n"),
            "{other}"
        );
        assert!(other.contains("headscale:latest"));
    }

    #[test]
    fn an_edit_it_cannot_make_safely_is_refused() {
        let flow = "services: {headscale: {image: headscale/headscale:0.26.1}}\n";
        let f = ComposeFile::parse(Path::new("/c.yaml"), flow.into()).expect("parse");
        assert!(f.with_image("headscale", "x:1").is_err());
        let anchored = "x-base: &base\n  image: headscale/headscale:0.26.1\nservices:\n  headscale:\n    <<: *base\n";
        let f = ComposeFile::parse(Path::new("/c.yaml"), anchored.into()).expect("parse");
        assert!(f.with_image("headscale", "x:1").is_err());
        assert!(ComposeFile::parse(Path::new("/c.yaml"), "version: '3'\n".into()).is_err());
    }
}
