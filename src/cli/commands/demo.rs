//! `headwarden demo`: the real pipeline against the local Headscale stand-in, loopback only.
//!
//! 1. A temp directory holds a "production" stand-in on 0.26.1 with users and nodes, a minisign
//!    key, and a local GitHub releases API publishing 0.27.1 and 0.28.0 (good).
//! 2. Upgrade: plan 0.26.1 -> 0.27.1 -> 0.28.0, verify, stage, promote.
//! 3. Publish 0.28.1, which passes staging but crashes on production: promote, fail, roll back.
//! 4. Publish 0.29.0, whose migration drops nodes: staging catches it; production is not touched.
//! 5. The key job over the unix socket: two ageing nodes get a reminder with a one-time key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::audit;
use crate::cli::Failure;
use crate::deploy;
use crate::exit;
use crate::headscale::api::ApiClient;
use crate::keys;
use crate::notify;
use crate::process;
use crate::settings;
use crate::smoke;
use crate::state::Store;
use crate::upgrade::{self, UpgradeOptions, UpgradeOutcome};

fn sim_cmd(sim: &Path, args: &[&str]) -> Vec<String> {
    std::iter::once(sim.display().to_string())
        .chain(args.iter().map(|s| s.to_string()))
        .collect()
}

pub(super) async fn sim(sim: &Path, args: &[&str]) -> Result<String, Failure> {
    let out = process::run(&sim_cmd(sim, args), Duration::from_secs(60)).await?;
    if !out.success() {
        return Err(
            anyhow::anyhow!("headscale-sim {} failed: {}", args.join(" "), out.tail()).into(),
        );
    }
    Ok(out.stdout.trim().to_string())
}

pub async fn run(keep: bool) -> Result<u8, Failure> {
    let sim_bin = process::sibling_binary("headscale-sim").ok_or_else(|| {
        anyhow::anyhow!("headscale-sim not found next to headwarden; build both with `cargo build`")
    })?;
    let tmp = tempfile::Builder::new()
        .prefix("headwarden-demo-")
        .tempdir()?;
    let root = tmp.path().to_path_buf();
    println!("== headwarden demo: a SIMULATION on 127.0.0.1 with a Headscale stand-in (headscale-sim) ==");
    println!("   directory: {}", root.display());
    let d = |p: &str| root.join(p).display().to_string();

    let pubkey = lay_out(&sim_bin, &root).await?;
    println!("-- production stand-in 0.26.1 started with 3 users and 6 nodes; feed publishes v0.27.1 and v0.28.0 (signed)");

    let feed_log = root.join("feed.log");
    let addr_file = root.join("feed.addr");
    let mut feed = process::spawn_logged(
        &sim_bin,
        &[
            "github-feed",
            "--dir",
            &d("feed"),
            "--addr-file",
            &addr_file.display().to_string(),
        ],
        &feed_log,
    )?;
    let addr = wait_addr(&addr_file).await;
    // A local receiver that answers like Slack's and a generic webhook's APIs.
    let chat_addr_file = root.join("chat.addr");
    let mut chat = process::spawn_logged(
        &sim_bin,
        &[
            "chat-sink",
            "--dir",
            &d("chat"),
            "--addr-file",
            &chat_addr_file.display().to_string(),
        ],
        &root.join("chat.log"),
    )?;
    let chat_addr = wait_addr(&chat_addr_file).await;
    let config_path = root.join("headwarden.yaml");
    let notify = format!(
        "notify:\n  - url: slack://T000/B000/DEMO\n    endpoint: http://{chat_addr}/slack\n    min_interval: 0s\n  - url: generic+http://{chat_addr}/webhook/headwarden\n    min_interval: 0s\n"
    );
    std::fs::write(
        &config_path,
        demo_config(&root, &addr, &pubkey) + STAND_IN_CHECKS + &notify,
    )?;
    let settings = settings::load(&config_path)?;
    let store = Store::open(&settings.state_dir)?;
    let story = Story {
        settings: &settings,
        store: &store,
        sim_bin: &sim_bin,
        root: &root,
        config_path: &config_path,
    };
    let result: Result<u8, Failure> = async {
        let now = upgrade_steps(&story).await?;
        key_step(&story, &now).await?;
        audit_and_chat_steps(&story).await?;
        Ok(exit::OK)
    }
    .await;

    let _ = process::run(
        &[
            root.join("prod/service.sh").display().to_string(),
            "stop".into(),
        ],
        Duration::from_secs(30),
    )
    .await;
    process::terminate(&mut feed, Duration::from_secs(2)).await;
    process::terminate(&mut chat, Duration::from_secs(2)).await;
    if keep {
        let kept: PathBuf = tmp.keep();
        println!("kept {}", kept.display());
    }
    result
}

/// The demo's world: a minisign key, two signed releases in the feed, and production 0.26.1
/// with 3 users and 6 nodes. Returns the public key.
async fn lay_out(sim_bin: &Path, root: &Path) -> Result<String, Failure> {
    let d = |p: &str| root.join(p).display().to_string();
    let pubkey = sim(sim_bin, &["keygen", "--out", &d("keys")]).await?;
    for v in ["0.27.1", "0.28.0"] {
        sim(
            sim_bin,
            &[
                "make-release",
                "--feed",
                &d("feed"),
                "--version",
                v,
                "--sign",
                &d("keys/minisign.key"),
            ],
        )
        .await?;
    }
    sim(
        sim_bin,
        &[
            "testbed",
            "--dir",
            &d("prod"),
            "--version",
            "0.26.1",
            "--start",
            "--users",
            "3",
            "--nodes-per-user",
            "2",
        ],
    )
    .await?;
    Ok(pubkey)
}

/// What the story's steps share.
struct Story<'a> {
    settings: &'a settings::Settings,
    store: &'a Store,
    sim_bin: &'a Path,
    root: &'a Path,
    config_path: &'a Path,
}

/// Steps 1–4: check, a two-hop upgrade, a release that crashes on production, one that drops
/// rows; returns the version production ends on.
async fn upgrade_steps(st: &Story<'_>) -> Result<semver::Version, Failure> {
    let (settings, store, sim_bin, root, config_path) =
        (st.settings, st.store, st.sim_bin, st.root, st.config_path);
    let d = |p: &str| root.join(p).display().to_string();
    let say = |line: &str| println!("   {line}");
    let opts = UpgradeOptions::default();
    println!("\n-- step 1: check (changes nothing)");
    let report = upgrade::check(settings, store, &opts).await?;
    let path: Vec<String> = report
        .feed
        .plan
        .hops
        .iter()
        .map(|h| h.version.to_string())
        .collect();
    println!(
        "   production runs {}; plan: {}",
        report.feed.current,
        path.join(" -> ")
    );

    println!(
        "\n-- step 2: upgrade (two hops, each staged on a copy of production's database first)"
    );
    let out = upgrade::upgrade(settings, store, &opts, &say).await?;
    describe(&out);

    println!("\n-- step 3: v0.28.1 is published; it passes staging but crashes when started on production");
    sim(
        sim_bin,
        &[
            "make-release",
            "--feed",
            &d("feed"),
            "--version",
            "0.28.1",
            "--fault",
            "prod-crash",
            "--sign",
            &d("keys/minisign.key"),
        ],
    )
    .await?;
    let out = upgrade::upgrade(settings, store, &opts, &say).await?;
    describe(&out);

    println!("\n-- step 4: v0.29.0 is published; its migration silently drops nodes");
    sim(
        sim_bin,
        &[
            "make-release",
            "--feed",
            &d("feed"),
            "--version",
            "0.29.0",
            "--fault",
            "drop-rows",
            "--sign",
            &d("keys/minisign.key"),
        ],
    )
    .await?;
    let out = upgrade::upgrade(settings, store, &opts, &say).await?;
    describe(&out);

    let config = deploy::production_config(settings).await?;
    let p = upgrade::prod(settings, store, &config).await?;
    let base = smoke::baseline(&p.target(), Duration::from_secs(10))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let now = upgrade::current_version(settings).await?;
    println!("\n== result: production runs {now}, healthy, {} users and {} nodes (same as before the demo)", base.users.len(), base.nodes.len());
    println!(
        "   journal: `headwarden --config {} history`",
        config_path.display()
    );
    Ok(now)
}

/// Step 5: the key job on nodes registered long ago.
async fn key_step(st: &Story<'_>, now: &semver::Version) -> Result<(), Failure> {
    let (settings, store, root) = (st.settings, st.store, st.root);
    let say = |line: &str| println!("   {line}");
    println!("\n-- step 5: the key job (over the unix socket: gRPC, since production runs {now})");
    let prod_cfg = root.join("prod/etc/config.yaml").display().to_string();
    let launcher = root.join("prod/bin/headscale");
    for (prefix, age) in [("laptop", "80"), ("phone", "95")] {
        process::run(
            &[
                launcher.display().to_string(),
                "-c".into(),
                prod_cfg.clone(),
                "debug".into(),
                "seed".into(),
                "--users".into(),
                "1".into(),
                "--nodes-per-user".into(),
                "1".into(),
                "--age-days".into(),
                age.into(),
                "--prefix".into(),
                prefix.into(),
            ],
            Duration::from_secs(30),
        )
        .await?;
    }
    println!("   registered a laptop 80 days ago and a phone 95 days ago (max_age 90d, reminders at 14d/7d/1d, grace 7d)");
    let mut api = ApiClient::connect(settings).await?;
    for p in keys::plan_now(settings, store, &api)
        .await?
        .iter()
        .filter(|p| !p.name.starts_with("user"))
    {
        let state = serde_json::to_value(&p.state).unwrap_or_default();
        let action = serde_json::to_value(&p.action).unwrap_or_default();
        println!(
            "   plan: {:<14} {}{} -> {}{}",
            p.name,
            state["state"].as_str().unwrap_or("?"),
            state
                .get("stage")
                .map(|s| format!(" (stage {s})"))
                .unwrap_or_default(),
            action["action"].as_str().unwrap_or("?"),
            action
                .get("stage")
                .map(|s| format!(" (stage {s})"))
                .unwrap_or_default()
        );
    }
    keys::run(settings, store, &mut api, &say).await?;
    for row in store
        .outbox()?
        .iter()
        .filter(|r| r.event == "keys.reminder")
    {
        let cmd = row.payload["command"].as_str().unwrap_or("");
        let masked: String = cmd
            .split(' ')
            .map(|w| {
                if w.starts_with("hskey-auth-") {
                    "hskey-auth-…(one-time key)"
                } else {
                    w
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "   queued for {}: {masked}",
            row.payload["node"]["user"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Steps 6 and 7: the audit, then chat delivery.
async fn audit_and_chat_steps(st: &Story<'_>) -> Result<(), Failure> {
    let (settings, store, root) = (st.settings, st.store, st.root);
    println!("\n-- step 6: security audit (the seed mitigations as checks; chat hears only what changed)");
    let report = audit::run(settings, store)
        .await
        .map_err(|e| anyhow::anyhow!("audit: {e}"))?;
    for f in &report.findings {
        println!("   [{}] {} — {}", f.severity.as_str(), f.id, f.title);
    }
    println!(
        "   {} open finding(s), {} skipped check(s); the first audit is the baseline, later ones report only new and resolved findings",
        report.findings.len(),
        report.skipped.len()
    );
    println!("\n-- step 7: chat delivery (a local receiver speaking Slack's and a generic webhook's APIs)");
    // The playbooks' notify steps already delivered most of it; this sends the rest.
    let r = notify::flush(settings, store, notify::FLUSH_BUDGET).await?;
    let messages = std::fs::read_to_string(root.join("chat/messages.jsonl")).unwrap_or_default();
    for line in messages.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        if m["service"] == "webhook" {
            println!(
                "   [{}] {}",
                m["body"]["severity"].as_str().unwrap_or(""),
                m["body"]["title"].as_str().unwrap_or("")
            );
        }
    }
    let delivered = messages.lines().count();
    println!(
        "   delivered {delivered} messages ({} events, each to Slack and the webhook); {} waiting, {} failed; a second run sends nothing again",
        delivered / 2,
        r.retrying,
        r.failed
    );
    Ok(())
}

/// The address a fixture server wrote once it listens (empty after five seconds).
pub(super) async fn wait_addr(file: &Path) -> String {
    for _ in 0..500 {
        if let Ok(a) = std::fs::read_to_string(file) {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    String::new()
}

pub(super) fn describe(out: &UpgradeOutcome) {
    match out {
        UpgradeOutcome::Upgraded { from, to, .. } => println!("   => upgraded {from} -> {to}"),
        UpgradeOutcome::RolledBack { failed, now, .. } => println!("   => {failed} failed on production and was ROLLED BACK; production is on {now} with its data"),
        UpgradeOutcome::StagingFailed { version, .. } => println!("   => {version} REJECTED on staging; production untouched"),
        UpgradeOutcome::NothingToDo { current, .. } => println!("   => {current}: nothing to do"),
        other => println!("   => {other:?}"),
    }
}

/// The stand-in does not speak the Tailscale control protocol: its demo leaves the connectivity
/// probe out (`headwarden demo --real` runs it against real Headscale).
const STAND_IN_CHECKS: &str = "  # the stand-in does not speak the Tailscale control protocol; `headwarden demo --real` runs the connectivity probe\n  checks: [health, version, noise_key, data_parity]\n";

pub(super) fn demo_config(root: &Path, feed_addr: &str, pubkey: &str) -> String {
    let r = root.display();
    format!(
        "# generated by `headwarden demo`\nstate_dir: {r}/state\nrelease:\n  repo: juanfont/headscale\n  api_url: http://{feed_addr}\n  allow_insecure_http: true\n  channel: stable\n  constraint: \">=0.26, <1.0\"\n  min_age: 1d\n  require_signature: true\n  minisign_public_key: {pubkey}\nheadscale:\n  binary: {r}/prod/bin/headscale\n  config: {r}/prod/etc/config.yaml\n  service:\n    kind: command\n    start: [{r}/prod/service.sh, start]\n    stop: [{r}/prod/service.sh, stop]\n    status: [{r}/prod/service.sh, status]\n    pidfile: {r}/prod/headscale.pid\n  api:\n    url: unix://{r}/prod/run/headscale.sock\nsmoke:\n  timeout: 15s\n"
    )
}
