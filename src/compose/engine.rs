//! The container engine's CLI (`podman` or `docker`; both take the same arguments for what is
//! used here) and the compose command (`podman-compose`, `podman compose`, `docker compose`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::process::{self, ProcessError};

/// Pulls can be slow on a real network; everything else answers in seconds.
const PULL_TIMEOUT: Duration = Duration::from_secs(900);
const ENGINE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Spawn(#[from] ProcessError),
    #[error("`{argv}` exited with {code}: {tail}")]
    Exited {
        argv: String,
        code: i32,
        tail: String,
    },
    #[error("`{argv}` printed output headwarden cannot read: {detail}")]
    Output { argv: String, detail: String },
    #[error("{} cannot be bind-mounted: a comma or a line break in a path would change what `--mount` says", path.display())]
    Unmountable { path: PathBuf },
}

/// `--mount`'s value for a bind mount; a path with a comma or a line break is refused rather
/// than quoted (both engines read the value as one CSV record).
fn bind_mount(src: &Path, dst: &Path, read_only: bool) -> Result<String, EngineError> {
    for p in [src, dst] {
        if p.to_string_lossy().contains([',', '\n', '\r', '"']) {
            return Err(EngineError::Unmountable {
                path: p.to_path_buf(),
            });
        }
    }
    Ok(format!(
        "type=bind,source={},target={}{}",
        src.display(),
        dst.display(),
        if read_only { ",readonly" } else { "" }
    ))
}

/// The engine binary (first element) and any fixed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    argv: Vec<String>,
}

/// What `image inspect` says about a local image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    /// `repository@sha256:…` for each registry the image was pulled from.
    pub repo_digests: Vec<String>,
    pub entrypoint: Vec<String>,
}

impl ImageInfo {
    /// The registry's manifest digest for `repository`, as recorded at pull time.
    pub fn digest_for(&self, repository: &str) -> Option<String> {
        let want = super::normal_repository(repository);
        self.repo_digests.iter().find_map(|rd| {
            let (repo, digest) = rd.split_once('@')?;
            (super::normal_repository(repo) == want).then(|| digest.to_string())
        })
    }
}

/// What `inspect` says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    pub running: bool,
    /// The image id it was created from.
    pub image_id: String,
    /// `(host source, container destination)` of each mount, volumes resolved.
    pub mounts: Vec<(PathBuf, PathBuf)>,
    pub env: BTreeMap<String, String>,
}

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl Engine {
    pub fn new(argv: Vec<String>) -> Self {
        Self { argv }
    }

    fn argv<'a>(&self, args: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        self.argv
            .iter()
            .cloned()
            .chain(args.into_iter().map(str::to_string))
            .collect()
    }

    async fn run(&self, args: &[&str], timeout: Duration) -> Result<String, EngineError> {
        self.run_env(args, &[], timeout).await
    }

    /// With `env` in the engine's own environment (values never on its command line, so never
    /// in an error's text).
    async fn run_env(
        &self,
        args: &[&str],
        env: &[(String, String)],
        timeout: Duration,
    ) -> Result<String, EngineError> {
        let argv = self.argv(args.iter().copied());
        let out = process::run_env(&argv, env, timeout).await?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(EngineError::Exited {
                argv: argv.join(" "),
                code: out.status.code().unwrap_or(-1),
                tail: out.tail(),
            })
        }
    }

    async fn json(&self, args: &[&str]) -> Result<Value, EngineError> {
        let text = self.run(args, ENGINE_TIMEOUT).await?;
        serde_json::from_str(&text).map_err(|e| EngineError::Output {
            argv: self.argv(args.iter().copied()).join(" "),
            detail: e.to_string(),
        })
    }

    pub async fn pull(&self, reference: &str) -> Result<(), EngineError> {
        self.run(&["pull", "--quiet", "--", reference], PULL_TIMEOUT)
            .await
            .map(drop)
    }

    /// The first object `<kind> inspect <name>` prints, or `None` when there is no such object.
    async fn inspect(&self, kind: &str, name: &str) -> Result<Option<Value>, EngineError> {
        match self.json(&[kind, "inspect", "--", name]).await {
            Ok(Value::Array(mut a)) if !a.is_empty() => Ok(Some(a.swap_remove(0))),
            Ok(_) | Err(EngineError::Exited { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Names of the containers (running or not) that match every `label=…` filter.
    async fn names(&self, filters: &[&str]) -> Result<Vec<String>, EngineError> {
        let mut args = vec!["ps", "-a"];
        for f in filters {
            args.extend(["--filter", f]);
        }
        args.extend(["--format", "{{.Names}}"]);
        let out = self.run(&args, ENGINE_TIMEOUT).await?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// A local image, or `None` when the engine has no such image.
    pub async fn image(&self, reference: &str) -> Result<Option<ImageInfo>, EngineError> {
        let Some(i) = self.inspect("image", reference).await? else {
            return Ok(None);
        };
        Ok(Some(ImageInfo {
            id: i
                .get("Id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            repo_digests: strs(i.get("RepoDigests")),
            entrypoint: strs(i.get("Config").and_then(|c| c.get("Entrypoint"))),
        }))
    }

    /// The container compose made for `service` of the project in `dir` (or the service's
    /// `container_name`), running or not.
    pub async fn compose_container(
        &self,
        dir: &Path,
        service: &str,
        container_name: Option<&str>,
    ) -> Result<Option<ContainerInfo>, EngineError> {
        let name = match container_name {
            Some(n) => n.to_string(),
            None => {
                let wd = format!(
                    "label=com.docker.compose.project.working_dir={}",
                    dir.display()
                );
                let svc = format!("label=com.docker.compose.service={service}");
                match self.names(&[&wd, &svc]).await?.into_iter().next() {
                    Some(n) => n,
                    None => return Ok(None),
                }
            }
        };
        self.container(&name).await
    }

    /// A container by name, or `None` when there is none.
    pub async fn container(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let Some(c) = self.inspect("container", name).await? else {
            return Ok(None);
        };
        let mounts = c
            .get("Mounts")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|m| {
                        Some((
                            PathBuf::from(m.get("Source")?.as_str()?),
                            PathBuf::from(m.get("Destination")?.as_str()?),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let env = strs(c.get("Config").and_then(|c| c.get("Env")))
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(Some(ContainerInfo {
            name: c
                .get("Name")
                .and_then(Value::as_str)
                .unwrap_or(name)
                .trim_start_matches('/')
                .to_string(),
            running: c
                .get("State")
                .and_then(|s| s.get("Running"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            image_id: c
                .get("Image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            mounts,
            env,
        }))
    }

    /// The argv that runs `program` inside `container` (the image has no shell).
    pub fn exec(&self, container: &str, program: &str) -> Vec<String> {
        self.argv(["exec", "--", container, program])
    }

    /// Starts a throwaway container on the host's network: `mounts` as `(host, inside, read
    /// only)`, `env` set, `args` after the image's entrypoint. The values of `env` (an OIDC
    /// secret, say) reach the container through the engine's environment (`-e NAME`), never
    /// its argv.
    pub async fn run_detached(
        &self,
        name: &str,
        image: &str,
        mounts: &[(PathBuf, PathBuf, bool)],
        env: &[(String, String)],
        labels: &[(&str, &str)],
        args: &[&str],
    ) -> Result<(), EngineError> {
        let mut a: Vec<String> = ["run", "-d", "--name", name, "--network", "host"]
            .into_iter()
            .map(str::to_string)
            .collect();
        for (src, dst, ro) in mounts {
            a.push("--mount".into());
            a.push(bind_mount(src, dst, *ro)?);
        }
        for (k, _) in env {
            a.push("-e".into());
            a.push(k.clone());
        }
        for (k, v) in labels {
            a.push("--label".into());
            a.push(format!("{k}={v}"));
        }
        a.push("--".into());
        a.push(image.into());
        a.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        self.run_env(&refs, env, ENGINE_TIMEOUT).await.map(drop)
    }

    /// Stops and removes a container; one that is already gone is not an error.
    pub async fn remove(&self, name: &str) -> Result<(), EngineError> {
        match self
            .run(&["rm", "-f", "-t", "10", "--", name], ENGINE_TIMEOUT)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if self.container(name).await.ok().flatten().is_none() => {
                tracing::debug!(error = %e, name, "container already gone");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The last lines a container printed (for error messages).
    pub async fn logs_tail(&self, name: &str) -> String {
        let argv = self.argv(["logs", "--tail", "5", "--", name]);
        match process::run(&argv, ENGINE_TIMEOUT).await {
            Ok(out) => {
                let text = format!("{}{}", out.stdout, out.stderr);
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(3)..].join(" | ")
            }
            Err(e) => e.to_string(),
        }
    }

    /// Containers carrying `label` (`key=value`), running or not.
    pub async fn labelled(&self, label: &str) -> Result<Vec<String>, EngineError> {
        self.names(&[&format!("label={label}")]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path cannot add options to `--mount` (security review N11).
    #[test]
    fn bind_mounts_refuse_what_would_change_their_meaning() {
        let ok = bind_mount(Path::new("/s"), Path::new("/s"), true).expect("plain");
        assert_eq!(ok, "type=bind,source=/s,target=/s,readonly");
        for bad in ["/s,target=/etc", "/s\nx", "/s\"x"] {
            let refused = bind_mount(Path::new(bad), Path::new("/s"), false);
            assert!(
                matches!(refused, Err(EngineError::Unmountable { .. })),
                "{bad}: {refused:?}"
            );
        }
    }
}
