//! `headwarden status [--json]`: production, the last runs, pending approvals, open findings.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::deploy;
use crate::deploy::production::{KindDoc, KindFacts};
use crate::deploy::Production;
use crate::error::error_chain;
use crate::exit;
use crate::headscale::http;
use crate::settings::{Job, Settings};
use crate::state::{BackupRow, InstallRow, Key, RunOutcome, RunRow, Store};

use crate::cli::{fmt_local, load, print_json, Cli, Failure};

pub async fn run(cli: &Cli) -> Result<u8, Failure> {
    let s = load(cli)?;
    let store = Store::open(&s.state_dir)?;
    show(cli, &s, &store).await
}

/// What both renderings show.
struct Facts {
    current: String,
    /// The install kind's facts (binary and symlink, package, image, binary on disk).
    kind: KindFacts,
    /// Production's server as its service manager names it (or why it is not production).
    server: String,
    health: String,
    open: Vec<RunRow>,
    last: Vec<RunRow>,
    installs: Vec<InstallRow>,
    backups: Vec<BackupRow>,
    bad: Vec<(String, String)>,
}

async fn show(cli: &Cli, s: &Settings, store: &Store) -> Result<u8, Failure> {
    let f = facts(s, store).await?;
    if cli.json {
        json(store, &f)?;
    } else {
        text(store, &f)?;
    }
    Ok(exit::OK)
}

async fn facts(s: &Settings, store: &Store) -> Result<Facts, Failure> {
    let production = Production::find(s).await;
    let running = match &production {
        Ok(p) => p.version(s).await,
        Err(_) => deploy::current_version(s).await,
    };
    let kind = KindFacts::read(s, production.as_ref().ok(), running.as_ref().ok()).await;
    let current = running
        .map(|v| v.to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let server = match &production {
        Ok(p) => p.describe(),
        Err(e) => format!("NOT CONFIRMED: {}", error_chain(e)),
    };
    let health = match &production {
        Ok(p) => {
            let client = http::client(std::time::Duration::from_secs(5));
            match http::health(&client, &p.config.http_base()).await {
                Ok(()) => "healthy".to_string(),
                Err(e) => format!("unhealthy: {e}"),
            }
        }
        Err(e) => format!("unknown: {e}"),
    };
    let open = store.open_runs()?;
    let last = store.recent_runs(1)?;
    let installs = store.installs()?;
    let backups = store.backups()?;
    let bad = store.bad_releases()?;
    Ok(Facts {
        current,
        kind,
        server,
        health,
        open,
        last,
        installs,
        backups,
        bad,
    })
}

/// `status --json` (schema headwarden.status/v1; README lists the keys).
#[derive(Serialize)]
struct StatusDoc<'a> {
    schema: &'static str,
    newest_release: Option<String>,
    pending_approvals: u64,
    audit: AuditDoc,
    jobs_last_start: BTreeMap<&'static str, Option<i64>>,
    production: ProductionDoc<'a>,
    interrupted_runs: &'a [RunRow],
    last_run: Option<&'a RunRow>,
    installed: &'a [InstallRow],
    backups: &'a [BackupRow],
    bad_releases: &'a [(String, String)],
    state_schema: i64,
    hold: Option<String>,
    notifications_queued: usize,
    notifications: BTreeMap<String, i64>,
}

#[derive(Serialize)]
struct AuditDoc {
    /// Unix time of the last audit.
    last: Option<i64>,
    /// Its open findings by severity.
    open: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct ProductionDoc<'a> {
    version: &'a str,
    #[serde(flatten)]
    kind: KindDoc<'a>,
    server: &'a str,
    health: &'a str,
}

fn json(store: &Store, f: &Facts) -> Result<(), Failure> {
    let jobs = Job::ALL
        .into_iter()
        .map(|j| {
            let last = store
                .kv_get(Key::JobLast(j))
                .ok()
                .flatten()
                .and_then(|v| v.parse().ok());
            (j.as_str(), last)
        })
        .collect();
    let doc = StatusDoc {
        schema: "headwarden.status/v1",
        newest_release: store.kv_get(Key::FeedNewest)?,
        pending_approvals: store
            .kv_get(Key::ApprovalsPending)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        audit: AuditDoc {
            last: store.kv_get(Key::AuditLastAt)?.and_then(|v| v.parse().ok()),
            open: store
                .kv_get(Key::AuditCounts)?
                .and_then(|t| serde_json::from_str(&t).ok()),
        },
        jobs_last_start: jobs,
        production: ProductionDoc {
            version: &f.current,
            kind: f.kind.doc(),
            server: &f.server,
            health: &f.health,
        },
        interrupted_runs: &f.open,
        last_run: f.last.first(),
        installed: &f.installs,
        backups: &f.backups,
        bad_releases: &f.bad,
        state_schema: store.schema_version()?,
        hold: store.kv_get(Key::Hold)?,
        notifications_queued: store
            .outbox()?
            .iter()
            .filter(|r| r.state == "pending")
            .count(),
        notifications: store.delivery_counts()?.into_iter().collect(),
    };
    print_json(&doc)?;
    Ok(())
}

fn text(store: &Store, f: &Facts) -> Result<(), Failure> {
    let Facts {
        current,
        kind,
        server,
        health,
        open,
        last,
        installs,
        backups,
        bad,
    } = f;
    println!("production: {current} ({health})");
    if let Some(reason) = store.kv_get(Key::Hold)? {
        println!("  upgrades ON HOLD: {reason} (`headwarden unhold` releases them)");
    }
    for line in kind.lines() {
        println!("  {line}");
    }
    println!("  server: {server}");
    for r in open {
        println!(
            "INTERRUPTED run {} ({} {} -> {}): the next upgrade/rollback finishes it",
            r.id,
            r.kind,
            r.from_version.as_deref().unwrap_or("?"),
            r.to_version.as_deref().unwrap_or("?")
        );
    }
    if let Some(r) = last.first() {
        println!(
            "last run: {} {} -> {}: {}",
            r.kind,
            r.from_version.as_deref().unwrap_or("?"),
            r.to_version.as_deref().unwrap_or("?"),
            r.outcome.map_or("in progress", RunOutcome::as_str)
        );
    }
    println!(
        "installed: {}",
        installs
            .iter()
            .map(|i| i.version.clone())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for b in backups.iter().take(5) {
        println!(
            "backup: before {} -> {} in {}",
            b.version, b.to_version, b.dir
        );
    }
    for (tag, reason) in bad {
        println!("bad release: {tag}: {reason}");
    }
    if let Some(n) = store
        .kv_get(Key::ApprovalsPending)?
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n > 0)
    {
        println!("waiting for approval: {n} version(s) (`headwarden check` names them)");
    }
    if let Some(at) = store
        .kv_get(Key::AuditLastAt)?
        .and_then(|v| v.parse::<i64>().ok())
    {
        let counts: serde_json::Value = store
            .kv_get(Key::AuditCounts)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let n = |k: &str| {
            counts
                .get(k)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        println!(
            "last audit: {}: {} critical, {} warning, {} info open (`headwarden audit` for details)",
            fmt_local(at),
            n("critical"),
            n("warning"),
            n("info")
        );
    }
    let queued = store
        .outbox()?
        .iter()
        .filter(|r| r.state == "pending")
        .count();
    if queued > 0 {
        println!("notifications queued: {queued} (in the state store's outbox)");
    }
    let counts = store.delivery_counts()?;
    if !counts.is_empty() {
        let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("notification deliveries: {}", parts.join(", "));
    }
    Ok(())
}
