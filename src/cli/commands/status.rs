//! `headwarden status [--json]`: production, the last runs, pending approvals, open findings.

use crate::compose::ImageFacts;
use crate::deploy;
use crate::error::error_chain;
use crate::exit;
use crate::headscale::http;
use crate::release::watch::ExternalFacts;
use crate::settings::{Install, Settings};
use crate::state::{BackupRow, InstallRow, RunRow, Store};
use crate::upgrade;

use crate::cli::{fmt_local, load, print_json, Cli, Failure};

pub async fn run(cli: &Cli) -> Result<u8, Failure> {
    let s = load(cli)?;
    let store = Store::open(&s.state_dir)?;
    show(cli, &s, &store).await
}

/// What both renderings show.
struct Facts {
    current: String,
    /// A compose install's image.
    image: Option<ImageFacts>,
    target: std::path::PathBuf,
    /// A deb install: what dpkg records (`0.29.3 (ii)`).
    package: Option<String>,
    /// An external install: the binary on disk against the running server.
    external: Option<ExternalFacts>,
    /// `kind: binary` over a path dpkg owns.
    conflict: Option<String>,
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
        json(s, store, &f)?;
    } else {
        text(s, store, &f)?;
    }
    Ok(exit::OK)
}

async fn facts(s: &Settings, store: &Store) -> Result<Facts, Failure> {
    let running = upgrade::current_version(s).await;
    let image = match &running {
        Ok(v) => upgrade::image_facts(s, v).unwrap_or_default(),
        Err(_) => None,
    };
    let current = running
        .map(|v| v.to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let target = deploy::current_target(&s.headscale.binary);
    let package = match &s.headscale.install {
        Install::Deb(d) => Some(match deploy::package::installed(&d.package).await {
            Ok(Some(st)) => format!("{} ({})", st.version, st.status),
            Ok(None) => "not installed".to_string(),
            Err(e) => format!("unknown: {e}"),
        }),
        _ => None,
    };
    let conflict = deploy::install_conflict(s).await;
    let production = deploy::Production::find(s).await;
    let external = match (&s.headscale.install, &production) {
        (Install::External(e), Ok(production)) => {
            deploy::external::facts(s, e, production).await.ok()
        }
        _ => None,
    };
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
        image,
        target,
        package,
        external,
        conflict,
        server,
        health,
        open,
        last,
        installs,
        backups,
        bad,
    })
}

/// `status --json` (schema headwarden.status/v1).
fn json(s: &Settings, store: &Store, f: &Facts) -> Result<(), Failure> {
    let Facts {
        current,
        image,
        target,
        package,
        external,
        conflict,
        server,
        health,
        open,
        last,
        installs,
        backups,
        bad,
    } = f;
    let jobs: std::collections::BTreeMap<&str, Option<i64>> = ["upgrade", "keys", "audit"]
        .into_iter()
        .map(|j| {
            let last = store
                .kv_get(&format!("job.{j}.last"))
                .ok()
                .flatten()
                .and_then(|v| v.parse().ok());
            (j, last)
        })
        .collect();
    print_json(&serde_json::json!({
        "schema": "headwarden.status/v1",
        "newest_release": store.kv_get("feed.newest")?,
        "pending_approvals": store.kv_get("approvals.pending")?.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0),
        "audit": {
            "last": store.kv_get("audit.last_at")?.and_then(|v| v.parse::<i64>().ok()),
            "open": store.kv_get("audit.counts")?.and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()),
        },
        "jobs_last_start": jobs,
        "production": match image {
            None => serde_json::json!({"version": current, "binary": s.headscale.binary, "target": target, "package": package, "external": external, "install_conflict": conflict, "server": server, "health": health}),
            // A compose install has no binary or symlink of its own: those keys stay, null.
            Some(image) => serde_json::json!({"version": current, "binary": null, "target": null, "image": image, "server": server, "health": health}),
        },
        "interrupted_runs": open,
        "last_run": last.first(),
        "installed": installs,
        "backups": backups,
        "bad_releases": bad,
        "state_schema": store.schema_version()?,
        "hold": store.kv_get("hold")?,
        "notifications_queued": store.outbox()?.iter().filter(|r| r.state == "pending").count(),
        "notifications": store.delivery_counts()?.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    }))?;
    Ok(())
}

fn text(s: &Settings, store: &Store, f: &Facts) -> Result<(), Failure> {
    let Facts {
        current,
        image,
        target,
        package,
        external,
        conflict,
        server,
        health,
        open,
        last,
        installs,
        backups,
        bad,
    } = f;
    println!("production: {current} ({health})");
    if let Some(reason) = store.kv_get("hold")? {
        println!("  upgrades ON HOLD: {reason} (`headwarden unhold` releases them)");
    }
    match (image, &s.headscale.install) {
        (Some(image), Install::Compose(c)) => {
            println!("  compose service {} of {}", c.service, c.file.display());
            println!("  {}", image.describe());
        }
        (_, Install::External(e)) => println!(
            "  binary {} (package {}, installed by the package manager)",
            s.headscale.binary.display(),
            e.package
        ),
        (_, Install::Deb(d)) => println!(
            "  Debian package {}: dpkg records {}; binary {}",
            d.package,
            package.as_deref().unwrap_or("?"),
            s.headscale.binary.display()
        ),
        _ => println!(
            "  binary {} -> {}",
            s.headscale.binary.display(),
            target.display()
        ),
    }
    if let Some(e) = external {
        println!("  kind external ({}): {}", e.manager, e.describe());
    }
    println!("  server: {server}");
    if let Some(c) = conflict {
        println!("  WARNING: {c}");
    }
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
            r.outcome.as_deref().unwrap_or("in progress")
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
        .kv_get("approvals.pending")?
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n > 0)
    {
        println!("waiting for approval: {n} version(s) (`headwarden check` names them)");
    }
    if let Some(at) = store
        .kv_get("audit.last_at")?
        .and_then(|v| v.parse::<i64>().ok())
    {
        let counts: serde_json::Value = store
            .kv_get("audit.counts")?
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
