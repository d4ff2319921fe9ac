//! `headwarden upgrade`: confirmation on a terminal, the upgrade job, and its outcome as text and exit code.

use semver::Version;

use crate::exit;
use crate::lock::RunLock;
use crate::process;
use crate::settings::Settings;
use crate::state::Store;
use crate::upgrade::{self, UpgradeOptions, UpgradeOutcome};

use crate::cli::{load, print_json, Cli, Failure};

pub async fn run(
    cli: &Cli,
    to: &Option<Version>,
    yes: &bool,
    dry_run: &bool,
    allow_downgrade: &bool,
    ignore_window: &bool,
) -> Result<u8, Failure> {
    let s = load(cli)?;
    let _lock = RunLock::acquire(&s.state_dir, "upgrade")?;
    let store = Store::open(&s.state_dir)?;
    let opts = UpgradeOptions {
        to: to.clone(),
        dry_run: *dry_run,
        allow_downgrade: *allow_downgrade,
        progress: process::stderr_is_tty(),
        ignore_window: *ignore_window,
    };
    if !yes
        && !dry_run
        && std::io::IsTerminal::is_terminal(&std::io::stdin())
        && !confirmed(&s, &store, &opts).await?
    {
        return Ok(exit::OK);
    }
    let quiet = cli.json;
    let say = move |line: &str| {
        if !quiet {
            println!("{line}");
        }
    };
    let outcome = upgrade::upgrade(&s, &store, &opts, &say).await?;
    if cli.json {
        print_json(&outcome)?;
    }
    Ok(report(&outcome, cli.json))
}

/// Shows the plan and asks on the terminal; `false`: nothing to do, or the admin said no.
async fn confirmed(s: &Settings, store: &Store, opts: &UpgradeOptions) -> Result<bool, Failure> {
    let report = upgrade::check(s, store, opts).await?;
    if report.feed.plan.hops.is_empty() {
        println!(
            "nothing to do ({})",
            report
                .feed
                .plan
                .blocked
                .unwrap_or_else(|| "up to date".into())
        );
        return Ok(false);
    }
    let path: Vec<String> = report
        .feed
        .plan
        .hops
        .iter()
        .map(|h| h.version.to_string())
        .collect();
    if let Some(pin) = report.image.as_ref().and_then(|i| i.pin_to.as_ref()) {
        eprintln!(
            "the compose file's image {} floats; it is pinned to {pin} first (the version running now)",
            report.image.as_ref().map_or("", |i| i.image.as_str())
        );
    }
    eprint!(
        "upgrade production {} -> {}? [y/N] ",
        report.feed.current,
        path.join(" -> ")
    );
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if !answer.trim().eq_ignore_ascii_case("y") {
        println!("cancelled");
        return Ok(false);
    }
    Ok(true)
}

/// The outcome as text (unless `--json` printed it) and its exit code.
fn report(outcome: &UpgradeOutcome, json: bool) -> u8 {
    match outcome {
        UpgradeOutcome::NothingToDo { current, notes } => {
            if !json {
                println!("production runs {current}; nothing to do");
                for n in notes {
                    println!("  skipped {n}");
                }
            }
            exit::OK
        }
        UpgradeOutcome::Blocked { reason, .. } => {
            if !json {
                println!("blocked: {reason}");
            }
            exit::OK
        }
        UpgradeOutcome::DryRun { .. } => exit::OK,
        UpgradeOutcome::OutsideWindow {
            current,
            next,
            needed_minutes,
        } => {
            if !json {
                println!(
                        "production runs {current}; outside the maintenance window (an upgrade needs about {needed_minutes} min); next window: {}",
                        next.as_deref().unwrap_or("none within two weeks")
                    );
                println!("  promote now anyway with: headwarden upgrade --ignore-window");
            }
            exit::OK
        }
        UpgradeOutcome::AwaitingApproval { current, versions } => {
            if !json {
                println!(
                    "production runs {current}; waiting for approval of {}",
                    versions.join(", ")
                );
                for v in versions {
                    println!("  approve with: headwarden approve {v}");
                }
            }
            exit::OK
        }
        UpgradeOutcome::ConfigIncompatible { problems, .. } => {
            for p in problems {
                eprintln!("error: {p}");
            }
            eprintln!("hint: fix production's Headscale config first (compare with the new release's config-example.yaml); nothing was changed");
            exit::FAILURE
        }
        UpgradeOutcome::Upgraded { from, to, .. } => {
            if !json {
                println!("upgraded {from} -> {to}");
            }
            exit::OK
        }
        UpgradeOutcome::StagingFailed { .. } => exit::FAILURE,
        UpgradeOutcome::HookFailed {
            step,
            reason,
            production,
            ..
        } => {
            eprintln!("error: upgrade playbook step {step} (hook) failed: {reason}");
            eprintln!("production runs {production}");
            exit::FAILURE
        }
        UpgradeOutcome::RolledBack { .. } => exit::ROLLED_BACK,
        UpgradeOutcome::RollbackFailed {
            failed,
            reason,
            rollback_error,
            backup,
        } => {
            eprintln!("error: {failed} failed on production ({reason}) and the rollback failed too: {rollback_error}");
            if let Some(b) = backup {
                eprintln!("hint: the verified pre-upgrade backup is in {b}: stop headscale, copy db.sqlite, noise_private.key and config.yaml back, point the binary at the previous version, start");
            }
            exit::ROLLBACK_FAILED
        }
    }
}
