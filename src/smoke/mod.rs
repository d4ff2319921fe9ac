//! Smoke checks against a running instance (staging or production), each with a timeout and a
//! line in the report: health, reported version, unchanged Noise key, data parity, custom argv.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use semver::Version;
use serde::Serialize;

use crate::headscale::{cli, http, NodeRef, UserRef};
use crate::process;
use crate::settings::{SmokeCheck, SmokeSettings};

/// How to reach an instance.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: &'static str,
    pub base_url: String,
    pub binary: PathBuf,
    pub config: PathBuf,
}

/// What production looked like before the change.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub noise_key: Option<String>,
    pub users: Vec<UserRef>,
    pub nodes: Vec<NodeRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub check: String,
    pub ok: bool,
    pub detail: String,
    pub elapsed_ms: u128,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub target: String,
    pub results: Vec<CheckResult>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.ok)
    }
    pub fn failures(&self) -> String {
        self.results
            .iter()
            .filter(|r| !r.ok)
            .map(|r| format!("{}: {}", r.check, r.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Captures the baseline from a healthy instance.
pub async fn baseline(t: &Target, timeout: Duration) -> Result<Baseline, String> {
    let client = http::client(timeout);
    let noise_key = http::noise_key(&client, &t.base_url).await.ok();
    let users = cli::list_users(&t.binary, &t.config, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let nodes = cli::list_nodes(&t.binary, &t.config, timeout)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Baseline {
        noise_key,
        users,
        nodes,
    })
}

/// Polls `/health` every 10 ms until it passes, `alive` reports the process gone, or the deadline.
pub async fn wait_healthy(
    base_url: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<Duration, String> {
    let start = Instant::now();
    let client = http::client(Duration::from_secs(2));
    let mut last = String::from("no answer yet");
    while start.elapsed() < timeout {
        match http::health(&client, base_url).await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => last = e.to_string(),
        }
        alive()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("not healthy after {}s: {last}", timeout.as_secs()))
}

pub async fn run(
    t: &Target,
    expected: &Version,
    base: &Baseline,
    settings: &SmokeSettings,
) -> Report {
    let timeout = settings.timeout;
    let client = http::client(timeout.min(Duration::from_secs(10)));
    let mut results = Vec::new();
    for check in &settings.checks {
        let start = Instant::now();
        let (name, outcome): (&str, Result<String, String>) = match check {
            SmokeCheck::Health => (
                "health",
                http::health(&client, &t.base_url)
                    .await
                    .map(|()| "/health passes".to_string())
                    .map_err(|e| e.to_string()),
            ),
            SmokeCheck::Version => (
                "version",
                check_version(&client, t, expected, timeout).await,
            ),
            SmokeCheck::NoiseKey => ("noise_key", check_noise(&client, t, base).await),
            SmokeCheck::DataParity => ("data_parity", check_parity(t, base, timeout).await),
        };
        results.push(CheckResult {
            check: name.to_string(),
            ok: outcome.is_ok(),
            detail: outcome.unwrap_or_else(|e| e),
            elapsed_ms: start.elapsed().as_millis(),
        });
    }
    for argv in &settings.commands {
        let start = Instant::now();
        let outcome = match process::run_env(argv, &[], timeout).await {
            Ok(o) if o.success() => Ok("exit 0".to_string()),
            Ok(o) => Err(format!(
                "exit {}: {}",
                o.status.code().unwrap_or(-1),
                o.tail()
            )),
            Err(e) => Err(e.to_string()),
        };
        results.push(CheckResult {
            check: format!("command `{}`", argv.join(" ")),
            ok: outcome.is_ok(),
            detail: outcome.unwrap_or_else(|e| e),
            elapsed_ms: start.elapsed().as_millis(),
        });
    }
    Report {
        target: t.name.to_string(),
        results,
    }
}

/// The version the server at `t` reports on `/version`; `None` before 0.27, which has none.
pub async fn served_version(t: &Target, timeout: Duration) -> Result<Option<Version>, String> {
    let client = http::client(timeout.min(Duration::from_secs(10)));
    http::version(&client, &t.base_url)
        .await
        .map_err(|e| e.to_string())
}

async fn check_version(
    client: &reqwest::Client,
    t: &Target,
    expected: &Version,
    timeout: Duration,
) -> Result<String, String> {
    let reported = match http::version(client, &t.base_url)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(v) => v,
        // Before 0.27 there is no /version: ask the binary that was started.
        None => cli::binary_version(&t.binary, timeout)
            .await
            .map_err(|e| e.to_string())?,
    };
    if &reported == expected {
        Ok(format!("reports {reported}"))
    } else {
        Err(format!("reports {reported}, expected {expected}"))
    }
}

async fn check_noise(
    client: &reqwest::Client,
    t: &Target,
    base: &Baseline,
) -> Result<String, String> {
    let key = http::noise_key(client, &t.base_url)
        .await
        .map_err(|e| e.to_string())?;
    match &base.noise_key {
        Some(k) if *k == key => Ok("Noise public key unchanged".to_string()),
        Some(k) => Err(format!(
            "Noise public key changed from {k} to {key}: every client would fail its handshake"
        )),
        None => Ok("no baseline key to compare (served one now)".to_string()),
    }
}

async fn check_parity(t: &Target, base: &Baseline, timeout: Duration) -> Result<String, String> {
    let users = cli::list_users(&t.binary, &t.config, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let nodes = cli::list_nodes(&t.binary, &t.config, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let missing_users: Vec<String> = base
        .users
        .iter()
        .filter(|u| !users.contains(u))
        .map(|u| format!("{} (id {})", u.name, u.id))
        .collect();
    let missing_nodes: Vec<String> = base
        .nodes
        .iter()
        .filter(|n| !nodes.iter().any(|after| n.kept_as(after)))
        .map(|n| format!("id {}", n.id))
        .collect();
    if missing_users.is_empty() && missing_nodes.is_empty() {
        Ok(format!(
            "{} users and {} nodes all present",
            base.users.len(),
            base.nodes.len()
        ))
    } else {
        let sample = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        Err(format!(
            "{} of {} users and {} of {} nodes missing after migration (users: [{}], nodes: [{}])",
            missing_users.len(),
            base.users.len(),
            missing_nodes.len(),
            base.nodes.len(),
            sample(&missing_users),
            sample(&missing_nodes)
        ))
    }
}
