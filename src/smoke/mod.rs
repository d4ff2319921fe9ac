//! Smoke checks against a running instance (staging or production), each with a timeout and a
//! line in the report: health, reported version, unchanged Noise key, data parity, the
//! Tailscale-protocol probe ([`probe`]), custom argv; and the reconnect bake after a promotion.

pub mod probe;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use semver::Version;
use serde::Serialize;

use crate::headscale::cli::{self, Cli, CliError};
use crate::headscale::http::{self, HttpError};
use crate::headscale::{NodeRef, UserRef};
use crate::process::{self, ProcessError};
use crate::settings::{Reconnect, SmokeCheck, SmokeSettings};

/// Why an instance failed a check (the text goes into the report and the journal).
#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Cli(#[from] CliError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("not healthy after {secs}s: {last}")]
    NotHealthy { secs: u64, last: String },
    /// The process (or the service) is gone while its health was awaited.
    #[error("{0}")]
    Died(String),
    #[error("reports {reported}, expected {expected}")]
    WrongVersion {
        reported: Version,
        expected: Version,
    },
    #[error("Noise public key changed from {was} to {now}: every client would fail its handshake")]
    NoiseKeyChanged { was: String, now: String },
    #[error("{} of {} users and {} of {} nodes missing after migration (users: [{}], nodes: [{}])", .users.len(), .of_users, .nodes.len(), .of_nodes, sample(.users), sample(.nodes))]
    DataMissing {
        users: Vec<String>,
        of_users: usize,
        nodes: Vec<String>,
        of_nodes: usize,
    },
    #[error("connectivity probe {0}")]
    Probe(#[from] probe::ProbeError),
    #[error("exit {code}: {tail}")]
    Command { code: i32, tail: String },
}

fn sample(v: &[String]) -> String {
    v.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
}

/// How to reach an instance.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: &'static str,
    pub base_url: String,
    /// Runs the instance's `headscale` CLI.
    pub cli: Cli,
    /// The config file as that CLI sees it (inside the container, for a compose install).
    pub config: PathBuf,
    /// No ACL policy restricts what a node sees: the probe must see every node as a peer.
    pub open_policy: bool,
    /// The probe's user as headwarden recorded it in production (`None`: not yet created).
    pub probe_user: Option<u64>,
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
    /// The report line of `check`, when it ran.
    pub fn detail_of(&self, check: SmokeCheck) -> Option<String> {
        self.results
            .iter()
            .find(|r| r.check == check.name())
            .map(|r| r.detail.clone())
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
pub async fn baseline(t: &Target, timeout: Duration) -> Result<Baseline, SmokeError> {
    let client = http::client(timeout);
    let noise_key = http::noise_key(&client, &t.base_url).await.ok();
    let users = cli::list_users(&t.cli, &t.config, timeout).await?;
    let nodes = cli::list_nodes(&t.cli, &t.config, timeout).await?;
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
    mut alive: impl FnMut() -> Result<(), SmokeError>,
) -> Result<Duration, SmokeError> {
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
    Err(SmokeError::NotHealthy {
        secs: timeout.as_secs(),
        last,
    })
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
        let outcome = match check {
            SmokeCheck::Health => http::health(&client, &t.base_url)
                .await
                .map(|()| "/health passes".to_string())
                .map_err(SmokeError::from),
            SmokeCheck::Version => check_version(&client, t, expected, timeout).await,
            SmokeCheck::NoiseKey => check_noise(&client, t, base).await,
            SmokeCheck::DataParity => check_parity(t, base, timeout).await,
            SmokeCheck::Connectivity => probe::probe(t, base.noise_key.as_deref(), timeout)
                .await
                .map(|p| p.describe())
                .map_err(SmokeError::from),
        };
        results.push(CheckResult {
            check: check.name().to_string(),
            ok: outcome.is_ok(),
            detail: outcome.unwrap_or_else(|e| e.to_string()),
            elapsed_ms: start.elapsed().as_millis(),
        });
    }
    for argv in &settings.commands {
        let start = Instant::now();
        let outcome = match process::run_env(argv, &[], timeout).await {
            Ok(o) if o.success() => Ok("exit 0".to_string()),
            Ok(o) => Err(SmokeError::Command {
                code: o.status.code().unwrap_or(-1),
                tail: o.tail(),
            }),
            Err(e) => Err(SmokeError::from(e)),
        };
        results.push(CheckResult {
            check: format!("command `{}`", argv.join(" ")),
            ok: outcome.is_ok(),
            detail: outcome.unwrap_or_else(|e| e.to_string()),
            elapsed_ms: start.elapsed().as_millis(),
        });
    }
    Report {
        target: t.name.to_string(),
        results,
    }
}

/// What the reconnect bake saw: of the nodes online just before the stop, how many the server
/// sees online again, and which are missing.
#[derive(Debug, Clone, Serialize)]
pub struct Bake {
    /// Nodes online before the stop.
    pub before: usize,
    /// Of those, online again.
    pub back: usize,
    /// How many had to be back (`ceil(min_ratio × before)`).
    pub needed: usize,
    /// Names of those not back (at most 20).
    pub missing: Vec<String>,
    /// `false`: too few nodes were online before to judge (`min_nodes`), or the bake is off.
    pub judged: bool,
    pub waited_ms: u128,
}

impl Bake {
    pub fn passed(&self) -> bool {
        !self.judged || self.back >= self.needed
    }

    pub fn describe(&self) -> String {
        if !self.judged {
            return format!(
                "reconnect: {} node(s) online before the stop, too few to judge",
                self.before
            );
        }
        let mut line = format!(
            "reconnect: {} of {} nodes online before the stop are back after {}s ({} needed)",
            self.back,
            self.before,
            self.waited_ms / 1000,
            self.needed
        );
        if !self.missing.is_empty() {
            line.push_str(&format!("; missing: {}", self.missing.join(", ")));
        }
        line
    }
}

/// The reconnect bake after a promotion: polls the nodes every second until at least
/// `min_ratio` of those online in `base` (captured just before the stop) are online again, or
/// `within` passes. Below `min_nodes` online before, it does not judge.
pub async fn reconnect(t: &Target, base: &Baseline, r: &Reconnect, timeout: Duration) -> Bake {
    let start = Instant::now();
    let before: Vec<&NodeRef> = base.nodes.iter().filter(|n| n.online).collect();
    let needed = (r.min_ratio * before.len() as f64).ceil() as usize;
    let mut bake = Bake {
        before: before.len(),
        back: 0,
        needed,
        missing: before.iter().map(|n| n.name.clone()).collect(),
        judged: r.min_ratio > 0.0 && before.len() >= r.min_nodes.max(1),
        waited_ms: 0,
    };
    if !bake.judged {
        return bake;
    }
    loop {
        // A failed listing (the server busy right after its start) is asked again.
        if let Ok(now) = cli::list_nodes(&t.cli, &t.config, timeout).await {
            let missing: Vec<&&NodeRef> = before
                .iter()
                .filter(|b| !now.iter().any(|n| n.id == b.id && n.online))
                .collect();
            bake.back = before.len() - missing.len();
            bake.missing = missing.iter().take(20).map(|n| n.name.clone()).collect();
        }
        bake.waited_ms = start.elapsed().as_millis();
        if bake.back >= needed || start.elapsed() >= r.within {
            return bake;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The version the server at `t` reports on `/version`; `None` before 0.27, which has none.
pub async fn served_version(t: &Target, timeout: Duration) -> Result<Option<Version>, SmokeError> {
    let client = http::client(timeout.min(Duration::from_secs(10)));
    Ok(http::version(&client, &t.base_url).await?)
}

async fn check_version(
    client: &reqwest::Client,
    t: &Target,
    expected: &Version,
    timeout: Duration,
) -> Result<String, SmokeError> {
    let reported = match http::version(client, &t.base_url).await? {
        Some(v) => v,
        // Before 0.27 there is no /version: ask the binary that was started.
        None => cli::cli_version(&t.cli, timeout).await?,
    };
    if &reported == expected {
        Ok(format!("reports {reported}"))
    } else {
        Err(SmokeError::WrongVersion {
            reported,
            expected: expected.clone(),
        })
    }
}

async fn check_noise(
    client: &reqwest::Client,
    t: &Target,
    base: &Baseline,
) -> Result<String, SmokeError> {
    let key = http::noise_key(client, &t.base_url).await?;
    match &base.noise_key {
        Some(k) if *k == key => Ok("Noise public key unchanged".to_string()),
        Some(k) => Err(SmokeError::NoiseKeyChanged {
            was: k.clone(),
            now: key,
        }),
        None => Ok("no baseline key to compare (served one now)".to_string()),
    }
}

async fn check_parity(
    t: &Target,
    base: &Baseline,
    timeout: Duration,
) -> Result<String, SmokeError> {
    let users = cli::list_users(&t.cli, &t.config, timeout).await?;
    let nodes = cli::list_nodes(&t.cli, &t.config, timeout).await?;
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
        Err(SmokeError::DataMissing {
            users: missing_users,
            of_users: base.users.len(),
            nodes: missing_nodes,
            of_nodes: base.nodes.len(),
        })
    }
}
