//! Talking to an instance through its own CLI (`headscale -c CONFIG … -o json`), as an admin
//! would on the host: over the local unix socket, no API key needed. Used for the version of a
//! binary and for data-parity snapshots of users and nodes.

use std::path::Path;
use std::time::Duration;

use semver::Version;
use serde_json::Value;

use super::{parse_version_text, NodeRef, UserRef};
use crate::process;

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
