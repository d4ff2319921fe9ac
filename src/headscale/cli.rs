//! Talking to an instance through its own CLI (`headscale -c CONFIG … -o json`), as an admin
//! would on the host: over the local unix socket, no API key needed. Used for the version of a
//! binary, for data-parity snapshots of users and nodes, and for the connectivity probe's
//! own user, one-time key and node.

use std::path::Path;
use std::time::Duration;

use semver::Version;
use serde_json::Value;

use super::{parse_version_text, NodeRef, UserRef};
use crate::process;
use crate::settings::Secret;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    #[error("`{command}` failed: {detail}")]
    Failed { command: String, detail: String },
    #[error("`{command}` printed output headwarden cannot read: {detail}")]
    Output { command: String, detail: String },
}

/// How to run an instance's `headscale` CLI: the binary itself, or an argv that runs it inside
/// a container (`podman exec <container> /ko-app/headscale`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    argv: Vec<String>,
}

impl Cli {
    pub fn binary(path: &Path) -> Self {
        Self {
            argv: vec![path.display().to_string()],
        }
    }
    /// `argv` runs `headscale` (its arguments follow).
    pub fn prefixed(argv: Vec<String>) -> Self {
        Self { argv }
    }
    pub fn describe(&self) -> String {
        self.argv.join(" ")
    }
    fn with(&self, args: impl IntoIterator<Item = String>) -> Vec<String> {
        self.argv.iter().cloned().chain(args).collect()
    }
}

async fn run_json(
    cli: &Cli,
    config: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<Value, CliError> {
    let mut argv = cli.with(["-c".into(), config.display().to_string()]);
    argv.extend(args.iter().map(|s| s.to_string()));
    argv.extend(["-o".to_string(), "json".to_string()]);
    let command = format!("headscale {}", args.join(" "));
    let out = process::run(&argv, timeout).await?;
    if !out.success() {
        return Err(CliError::Failed {
            command,
            detail: out.tail(),
        });
    }
    serde_json::from_str(&out.stdout).map_err(|e| CliError::Output {
        command,
        detail: e.to_string(),
    })
}

/// The version a binary reports (`headscale version`, JSON when supported).
pub async fn binary_version(binary: &Path, timeout: Duration) -> Result<Version, CliError> {
    cli_version(&Cli::binary(binary), timeout).await
}

/// The version `headscale version` reports, run through `cli`.
pub async fn cli_version(cli: &Cli, timeout: Duration) -> Result<Version, CliError> {
    let argv = cli.with(["version".to_string()]);
    let out = process::run(&argv, timeout).await?;
    if !out.success() {
        return Err(CliError::Failed {
            command: "headscale version".into(),
            detail: out.tail(),
        });
    }
    parse_version_text(&out.stdout).ok_or_else(|| CliError::Output {
        command: "headscale version".into(),
        detail: out.stdout.trim().to_string(),
    })
}

fn id_of(v: &Value) -> Option<u64> {
    match v.get("id")? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn field<'a>(v: &'a Value, snake: &str, camel: &str) -> Option<&'a Value> {
    v.get(snake).or_else(|| v.get(camel))
}

fn list(v: Value, wrapper: &str) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove(wrapper) {
            Some(Value::Array(a)) => a,
            _ => vec![],
        },
        _ => vec![],
    }
}

pub async fn list_users(
    binary: &Cli,
    config: &Path,
    timeout: Duration,
) -> Result<Vec<UserRef>, CliError> {
    let v = run_json(binary, config, &["users", "list"], timeout).await?;
    let mut users: Vec<UserRef> = list(v, "users")
        .iter()
        .filter_map(|u| {
            Some(UserRef {
                id: id_of(u)?,
                name: u.get("name")?.as_str()?.to_string(),
            })
        })
        .collect();
    users.sort();
    Ok(users)
}

pub async fn list_nodes(
    binary: &Cli,
    config: &Path,
    timeout: Duration,
) -> Result<Vec<NodeRef>, CliError> {
    let v = run_json(binary, config, &["nodes", "list"], timeout).await?;
    let mut nodes: Vec<NodeRef> = list(v, "nodes")
        .iter()
        .filter_map(|n| {
            Some(NodeRef {
                id: id_of(n)?,
                machine_key: field(n, "machine_key", "machineKey")?.as_str()?.to_string(),
                user: n
                    .get("user")
                    .and_then(|u| u.get("name"))
                    .and_then(|s| s.as_str())
                    .unwrap_or("")
                    .to_string(),
                user_id: n.get("user").and_then(id_of).unwrap_or(0),
                name: field(n, "given_name", "givenName")
                    .or_else(|| n.get("name"))
                    .and_then(|s| s.as_str())
                    .unwrap_or("")
                    .to_string(),
                online: n.get("online").and_then(|o| o.as_bool()).unwrap_or(false),
            })
        })
        .collect();
    nodes.sort();
    Ok(nodes)
}

/// Creates user `name` (`headscale users create NAME`).
pub async fn create_user(
    cli: &Cli,
    config: &Path,
    name: &str,
    timeout: Duration,
) -> Result<UserRef, CliError> {
    let v = run_json(cli, config, &["users", "create", name], timeout).await?;
    let id = id_of(&v).ok_or_else(|| CliError::Output {
        command: "headscale users create".into(),
        detail: "no id in the created user".into(),
    })?;
    Ok(UserRef {
        id,
        name: name.to_string(),
    })
}

/// Deletes the node with `id` (`headscale nodes delete`).
pub async fn delete_node(
    cli: &Cli,
    config: &Path,
    id: u64,
    timeout: Duration,
) -> Result<(), CliError> {
    let id = id.to_string();
    run_json(
        cli,
        config,
        &["nodes", "delete", "--identifier", &id, "--force"],
        timeout,
    )
    .await
    .map(drop)
}

/// Mints a one-time, ephemeral pre-auth key for user `user` that expires after `expiration`
/// (a Go duration such as `10m`). The key is returned as a [`Secret`]; it is never in an error.
pub async fn ephemeral_key(
    cli: &Cli,
    config: &Path,
    user: u64,
    expiration: &str,
    timeout: Duration,
) -> Result<Secret, CliError> {
    let user = user.to_string();
    let command = "headscale preauthkeys create --ephemeral".to_string();
    let v = run_json(
        cli,
        config,
        &[
            "preauthkeys",
            "create",
            "--user",
            &user,
            "--ephemeral",
            "--expiration",
            expiration,
        ],
        timeout,
    )
    .await?;
    match v.get("key").and_then(Value::as_str) {
        Some(k) if !k.is_empty() => Ok(Secret::new(k)),
        _ => Err(CliError::Output {
            command,
            detail: "no key in its answer".into(),
        }),
    }
}
