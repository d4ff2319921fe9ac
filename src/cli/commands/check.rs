//! `headwarden check`: what an upgrade would do; reads the feed and changes nothing else.

use semver::Version;

use crate::exit;
use crate::settings::{ReconnectPolicy, SmokeCheck};
use crate::state::Store;
use crate::upgrade::{self, UpgradeOptions};

use crate::cli::{load, print_json, Cli, Failure};

pub async fn run(cli: &Cli, to: &Option<Version>) -> Result<u8, Failure> {
    let s = load(cli)?;
    let store = Store::open(&s.state_dir)?;
    let opts = UpgradeOptions {
        to: to.clone(),
        ..Default::default()
    };
    let report = upgrade::check(&s, &store, &opts).await?;
    if cli.json {
        print_json(&report)?;
    } else {
        let p = &report.feed.plan;
        println!("production runs {}", report.feed.current);
        if let Some(why) = &report.refused {
            println!("upgrade refused: {why}");
        }
        if let Some(image) = &report.image {
            println!("{}", image.describe());
        }
        match &report.external {
            Some(facts) => println!(
                "{} (kind external: no release feed is read)",
                facts.describe()
            ),
            None => println!(
                "release feed: {} ({} request{}, rate limit remaining: {})",
                if report.feed.feed_not_modified {
                    "unchanged since last poll (304)"
                } else {
                    "fetched"
                },
                report.feed.feed_requests,
                if report.feed.feed_requests == 1 {
                    ""
                } else {
                    "s"
                },
                report
                    .feed
                    .rate_remaining
                    .map_or("unknown".to_string(), |r| r.to_string())
            ),
        }
        match (&p.blocked, p.hops.is_empty()) {
            (Some(reason), _) => println!("blocked: {reason}"),
            (None, true) => println!("up to date: nothing to do"),
            (None, false) => {
                let path: Vec<String> = p.hops.iter().map(|h| h.version.to_string()).collect();
                println!("plan: {} -> {}", report.feed.current, path.join(" -> "));
                println!("  (Headscale cannot skip a minor version: one hop per minor, newest patch of each)");
                let checks: Vec<&str> = s.smoke.checks.iter().map(|c| c.name()).collect();
                println!(
                    "  smoke checks, on staging and on production before commit: {}{}",
                    checks.join(", "),
                    if s.smoke.checks.contains(&SmokeCheck::Connectivity) {
                        " (connectivity: ts2021 handshake with production's key, an ephemeral probe node registers and reads its map)"
                    } else {
                        ""
                    }
                );
                let r = &s.smoke.reconnect;
                if r.min_ratio > 0.0 {
                    println!(
                        "  after each promotion: {:.0}% of the nodes online before the stop must be back within {}s (from {} nodes online; else {})",
                        r.min_ratio * 100.0,
                        r.within.as_secs(),
                        r.min_nodes,
                        match r.on_failure {
                            ReconnectPolicy::Rollback => "roll back",
                            ReconnectPolicy::Alert => "alert",
                        }
                    );
                }
            }
        }
        for n in &p.notes {
            println!("  skipped {n}");
        }
        for c in &report.feed.config_problems {
            println!("  config: {c}");
        }
    }
    Ok(exit::OK)
}
