//! The command line: clap derive (doc comments are the help text), thin wrappers over the domain
//! functions in `upgrade`, `deploy` and `state`. Data goes to stdout (`--json` for stable
//! output), logs and progress to stderr. Errors print as a chain with a hint.

mod demo;
mod demo_real;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use semver::Version;

use crate::audit;
use crate::deploy;
use crate::event::Severity;
use crate::exit;
use crate::headscale::api;
use crate::headscale::api::ApiClient;
use crate::headscale::http;
use crate::keys;
use crate::lock::{LockError, RunLock};
use crate::metrics;
use crate::notify;
use crate::process;
use crate::schedule::daemon;
use crate::settings::cron;
use crate::settings::playbook;
use crate::settings::{self, ConfigError, Settings};
use crate::state;
use crate::state::Store;
use crate::upgrade::{self, PipelineError, UpgradeOptions, UpgradeOutcome};

#[derive(Parser, Debug)]
#[command(
    name = "headwarden",
    version,
    about = "Keeps a self-hosted Headscale server patched, safely"
)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, default_value = settings::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show what an upgrade would do and why; changes nothing.
    Check {
        /// Plan towards this version.
        #[arg(long)]
        to: Option<Version>,
    },
    /// Upgrade production: verify, stage on a copy of the database, smoke-test, promote.
    Upgrade {
        /// Target version (cooldown does not apply; other policy does).
        #[arg(long)]
        to: Option<Version>,
        /// Do not ask for confirmation on a terminal.
        #[arg(long)]
        yes: bool,
        /// Plan and print, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Allow a patch downgrade within the running minor version.
        #[arg(long)]
        allow_downgrade: bool,
        /// Promote now even outside `release.window` or on a blackout date.
        #[arg(long)]
        ignore_window: bool,
    },
    /// Restore the backup taken before the last upgrade (or the upgrade away from --to) and its binary.
    Rollback {
        #[arg(long)]
        to: Option<Version>,
    },
    /// Production version and health, interrupted runs, installed versions, backups.
    Status,
    /// Past runs and their journaled steps.
    History {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Node-key rotation.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Playbooks (pipelines as data).
    Playbook {
        #[command(subcommand)]
        cmd: PlaybookCmd,
    },
    /// Security posture audit: configuration, files, enrollment, nodes, policy, DNS, version.
    /// Stores the result; what changed since the last audit goes to chat.
    Audit {
        /// Exit 1 when a finding at or above this severity (info, warning, critical) is open.
        #[arg(long, value_parser = ["info", "warning", "critical"])]
        fail_on: Option<String>,
    },
    /// Print the Prometheus metrics (the same text the textfile and the daemon's listener carry).
    Metrics,
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to stdout: `headwarden man > /usr/local/share/man/man1/headwarden.1`.
    Man,
    /// Approve a version that `release.approval: manual` holds back.
    Approve { version: Version },
    /// Freeze all upgrades (manual and scheduled) until `unhold`.
    Hold {
        /// Why (shown by status, upgrade and chat).
        #[arg(default_value = "held by an admin")]
        reason: String,
    },
    /// Lift a `hold`.
    Unhold,
    /// Run every job that is due once (upgrade per policy, key rotation, audit) and exit: what the
    /// systemd timer calls. Jobs not due say when they next are.
    Run,
    /// Run as a daemon: the jobs on their `schedule:` (concurrently), chat delivery every 30 s;
    /// SIGTERM waits for running jobs, SIGHUP reloads the config.
    Daemon,
    /// Chat notifications.
    Notify {
        #[command(subcommand)]
        cmd: NotifyCmd,
    },
    /// Run the whole pipeline against a local Headscale stand-in (a simulation; touches nothing else).
    Demo {
        /// Keep the demo directory and leave nothing running.
        #[arg(long)]
        keep: bool,
        /// The same story on real Headscale with real Tailscale clients (needs the rig:
        /// `scripts/rig` builds it).
        #[arg(long)]
        real: bool,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCmd {
    /// Every node's key state, deadline and next action; changes nothing.
    Plan,
    /// Run the key job once: reminders with one-time keys, rotation detection, enforcement, audit.
    Run,
    /// Start a rotation for one node now (id, hostname or given name).
    Rotate { node: String },
}

#[derive(Subcommand, Debug)]
enum PlaybookCmd {
    /// Validate a playbook: known steps, parameters, and the safety rules; reasons for each refusal.
    Check { file: PathBuf },
}

#[derive(Subcommand, Debug)]
enum NotifyCmd {
    /// Send a test message to every destination (or to --url) now and report each.
    Test {
        /// A notification URL to test instead of the configured destinations; `-` reads it from
        /// standard input, which keeps its token out of the process list (`/proc/*/cmdline`).
        #[arg(long)]
        url: Option<String>,
    },
    /// Deliver queued notifications now (retries that are due included).
    Flush,
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Parse and validate the config file.
    Check,
}

/// Errors with their exit code and hint.
pub struct Failure {
    code: u8,
    error: anyhow::Error,
    hint: Option<String>,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        let (code, hint) = if let Some(c) = error.downcast_ref::<ConfigError>() {
            (exit::USAGE, c.hint().map(String::from))
        } else if let Some(l) = error.downcast_ref::<LockError>() {
            (exit::LOCKED, matches!(l, LockError::Held { .. }).then(|| "wait for it to finish; a run killed with SIGKILL releases the lock by itself".to_string()))
        } else if let Some(p) = error.downcast_ref::<PipelineError>() {
            (exit::FAILURE, p.hint())
        } else if let Some(k) = error.downcast_ref::<keys::KeysError>() {
            (exit::FAILURE, k.hint())
        } else if let Some(a) = error.downcast_ref::<api::ApiError>() {
            (exit::FAILURE, a.hint())
        } else {
            (exit::FAILURE, None)
        };
        Failure { code, error, hint }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    rt.block_on(async { process::ignore_file_size_signal() });
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {}", f.error);
            for cause in f.error.chain().skip(1) {
                eprintln!("  Caused by: {cause}");
            }
            if let Some(h) = f.hint {
                eprintln!("hint: {h}");
            }
            ExitCode::from(f.code)
        }
    }
}

fn init_tracing(cli: &Cli) {
    let default = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "warn,headwarden=info",
            1 => "info,headwarden=debug",
            _ => "debug",
        }
    };
    let filter = process::log_filter_env()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if process::stderr_is_journal() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.with_ansi(process::stderr_is_tty()).init();
    }
}

fn load(cli: &Cli) -> Result<Settings, Failure> {
    Ok(settings::load(&cli.config)?)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(anyhow::Error::from)?
    );
    Ok(())
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let result = run_command(&cli).await;
    if let Err(f) = &result {
        report_health(&cli, f).await;
    }
    if matches!(
        cli.command,
        Command::Check { .. }
            | Command::Upgrade { .. }
            | Command::Rollback { .. }
            | Command::Keys { .. }
            | Command::Audit { .. }
            | Command::Run
    ) {
        deliver_queued(&cli).await;
    }
    result
}

/// headwarden's own health reaches chat: a run lock held for more than six hours (queued, once
/// per six hours), and a state store that cannot be used (sent directly: there is no outbox).
async fn report_health(cli: &Cli, f: &Failure) {
    let Ok(s) = settings::load(&cli.config) else {
        return;
    };
    if let Some(LockError::Held { holder, path }) = f.error.downcast_ref::<LockError>() {
        let since = holder
            .rsplit_once("since ")
            .and_then(|(_, t)| {
                time::OffsetDateTime::parse(
                    t.trim(),
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()
            })
            .map(|t| t.unix_timestamp());
        if let (Some(since), Ok(store)) = (since, Store::open(&s.state_dir)) {
            let hours = (state::now() - since) / 3600;
            if hours >= 6 {
                let _ = store.push_event_once(
                    "health.lock_stuck",
                    "warning",
                    &serde_json::json!({"summary": format!("headwarden's lock has been held for {hours} hours"), "holder": holder, "lock": path}),
                    &format!("health.lock_stuck:{holder}"),
                    6 * 3600,
                );
            }
        }
    } else if let Some(e) = f.error.downcast_ref::<state::StateError>() {
        notify::send_direct(
            &s,
            "health.state_error",
            Severity::Critical,
            &serde_json::json!({"summary": "headwarden's state store is failing", "error": e.to_string()}),
        )
        .await;
    }
}

/// After a command's work: deliver what it queued, within a budget. Never changes the outcome.
async fn deliver_queued(cli: &Cli) {
    let Ok(s) = settings::load(&cli.config) else {
        return;
    };
    if s.notify.is_empty() && s.notify_users.is_empty() {
        return;
    }
    let Ok(store) = Store::open(&s.state_dir) else {
        return;
    };
    match notify::flush(&s, &store, notify::FLUSH_BUDGET).await {
        Ok(r) if r.retrying > 0 || r.failed > 0 => tracing::warn!(
            sent = r.sent,
            waiting = r.retrying,
            failed = r.failed,
            "some notifications are not delivered yet; they stay queued (`headwarden notify flush`)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot deliver notifications"),
    }
}

async fn notify_command(cli: &Cli, cmd: &NotifyCmd) -> Result<u8, Failure> {
    let s = load(cli)?;
    match cmd {
        NotifyCmd::Test { url } => {
            let url = match url.as_deref() {
                Some("-") => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).map_err(|e| Failure {
                        code: exit::USAGE,
                        hint: None,
                        error: anyhow::anyhow!("cannot read the URL from standard input: {e}"),
                    })?;
                    Some(line.trim().to_string())
                }
                other => other.map(str::to_string),
            };
            let results = notify::test(&s, url.as_deref())
                .await
                .map_err(|e| Failure {
                    code: exit::USAGE,
                    hint: Some(e.hint()),
                    error: anyhow::anyhow!("{e}"),
                })?;
            if results.is_empty() {
                println!("no notification destinations configured (notify: in the config)");
                return Ok(exit::USAGE);
            }
            let mut failed = 0;
            for (label, r) in &results {
                match r {
                    Ok(ms) => println!("ok      {label} ({ms} ms)"),
                    Err(e) => {
                        failed += 1;
                        println!("FAILED  {e}");
                    }
                }
            }
            Ok(if failed == 0 { exit::OK } else { exit::FAILURE })
        }
        NotifyCmd::Flush => {
            let store = Store::open(&s.state_dir)?;
            let r = notify::flush(&s, &store, notify::FLUSH_BUDGET).await?;
            if cli.json {
                print_json(&r)?;
            } else if r.busy {
                println!("another headwarden process is delivering notifications");
            } else {
                println!(
                    "sent {}, waiting to retry {}, failed {}, uncertain {}",
                    r.sent, r.retrying, r.failed, r.uncertain
                );
                for e in &r.errors {
                    println!("  {e}");
                }
            }
            Ok(exit::OK)
        }
    }
}

fn fmt_local(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| {
            d.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string()
        })
        .unwrap_or_default()
}

/// `headwarden run`: each due job once, in turn. A job whose lock is held is left for the next
/// invocation (not a failure); a failed job does not stop the next one. The exit code is the
/// first failing job's.
async fn run_due(cli: &Cli) -> Result<u8, Failure> {
    let s = load(cli)?;
    let store = Store::open(&s.state_dir)?;
    let now = state::now();
    let mut result = exit::OK;
    for (job, expr) in [
        ("upgrade", &s.schedule.upgrade),
        ("keys", &s.schedule.keys),
        ("audit", &s.schedule.audit),
    ] {
        let key = format!("job.{job}.last");
        let last = store.kv_get(&key)?.and_then(|v| v.parse().ok());
        let next = cron::next_due(expr.as_deref(), s.schedule.timezone.as_deref(), last, now)
            .map_err(|e| anyhow::anyhow!("schedule.{job}: {e}"))?;
        if let Some(next) = next {
            println!("{job}: not due; next at {}", fmt_local(next));
            continue;
        }
        println!("{job}: due");
        let command = match job {
            "upgrade" => Command::Upgrade {
                to: None,
                yes: true,
                dry_run: false,
                allow_downgrade: false,
                ignore_window: false,
            },
            "keys" => Command::Keys { cmd: KeysCmd::Run },
            _ => Command::Audit { fail_on: None },
        };
        let sub = Cli {
            config: cli.config.clone(),
            json: false,
            verbose: cli.verbose,
            quiet: cli.quiet,
            command,
        };
        let code = match Box::pin(run_command(&sub)).await {
            Ok(code) => code,
            Err(f) if f.code == exit::LOCKED => {
                println!("{job}: another run holds its lock; it runs at the next invocation");
                continue;
            }
            Err(f) => {
                eprintln!("error: {job}: {:#}", f.error);
                if let Some(h) = &f.hint {
                    eprintln!("hint: {h}");
                }
                f.code
            }
        };
        store.kv_set(&key, &now.to_string())?;
        if result == exit::OK {
            result = code;
        }
    }
    if let Some(path) = &s.metrics.textfile {
        let text = metrics::text(&s).await?;
        metrics::write_textfile(path, &text)
            .map_err(|e| anyhow::anyhow!("cannot write metrics to {}: {e}", path.display()))?;
    }
    Ok(result)
}

/// The audit report for a terminal: grouped by severity, then accepted, skipped and drift.
fn print_audit(r: &audit::Report) {
    println!(
        "security audit (Headscale {}) at {}",
        r.headscale_version.as_deref().unwrap_or("unknown"),
        r.generated_at
    );
    for sev in [Severity::Critical, Severity::Warning, Severity::Info] {
        let group: Vec<_> = r.findings.iter().filter(|f| f.severity == sev).collect();
        if group.is_empty() {
            continue;
        }
        println!("\n{} ({})", sev.as_str().to_uppercase(), group.len());
        for f in group {
            println!("  {}\n    {}", f.id, f.title);
            if !f.evidence.is_empty() {
                println!("    evidence: {}", f.evidence);
            }
            println!("    fix: {}\n    mitigation: {}", f.fix, f.mitigation);
        }
    }
    if r.findings.is_empty() {
        println!("\nno open findings");
    }
    if !r.accepted.is_empty() {
        println!("\naccepted ({})", r.accepted.len());
        for f in &r.accepted {
            if let Some(a) = &f.accepted {
                println!("  {} until {}: {}", f.id, a.until, a.reason);
            }
        }
    }
    for e in &r.expired_acceptances {
        println!("acceptance expired: {e}");
    }
    for sk in &r.skipped {
        println!("skipped {}: {}", sk.step, sk.reason);
    }
    println!(
        "\nsince the last audit: {} new, {} resolved",
        r.new.len(),
        r.resolved.len()
    );
}

async fn run_command(cli: &Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Run => run_due(cli).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "headwarden", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Playbook {
            cmd: PlaybookCmd::Check { file },
        } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            match playbook::check(&text) {
                Ok(pb) => {
                    println!(
                        "{}: ok ({} playbook, {} steps)",
                        file.display(),
                        pb.name,
                        pb.steps.len()
                    );
                    Ok(exit::OK)
                }
                Err(problems) => {
                    for p in &problems {
                        eprintln!("error: {}: {p}", file.display());
                    }
                    Ok(exit::USAGE)
                }
            }
        }
        Command::Audit { fail_on } => {
            let fail_on = fail_on.as_deref().and_then(Severity::parse);
            let s = load(cli)?;
            let _lock = RunLock::acquire_audit(&s.state_dir, "audit")?;
            let store = Store::open(&s.state_dir)?;
            let report = audit::run(&s, &store)
                .await
                .map_err(|e| anyhow::anyhow!("audit: {e}"))?;
            if cli.json {
                print_json(&report)?;
            } else {
                print_audit(&report);
            }
            Ok(match (fail_on, report.worst()) {
                (Some(limit), Some(worst)) if worst >= limit => exit::FAILURE,
                _ => exit::OK,
            })
        }
        Command::Metrics => {
            let s = load(cli)?;
            print!("{}", metrics::text(&s).await?);
            Ok(exit::OK)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(anyhow::Error::from)?;
            Ok(exit::OK)
        }
        Command::Approve { version } => {
            let s = load(cli)?;
            let store = Store::open(&s.state_dir)?;
            upgrade::approve(&store, version)?;
            println!("approved {version}: the next upgrade run may apply it");
            Ok(exit::OK)
        }
        Command::Hold { reason } => {
            let s = load(cli)?;
            let store = Store::open(&s.state_dir)?;
            upgrade::set_hold(&store, Some(reason))?;
            println!("upgrades are on hold ({reason}); `headwarden unhold` releases them");
            Ok(exit::OK)
        }
        Command::Unhold => {
            let s = load(cli)?;
            let store = Store::open(&s.state_dir)?;
            upgrade::set_hold(&store, None)?;
            println!("upgrades are no longer on hold");
            Ok(exit::OK)
        }
        Command::Daemon => Ok(daemon::run(cli.config.clone()).await?),
        Command::Notify { cmd } => notify_command(cli, cmd).await,
        Command::Config {
            cmd: ConfigCmd::Check,
        } => {
            let s = load(cli)?;
            if cli.json {
                print_json(&serde_json::json!({"ok": true, "file": s.source}))?;
            } else {
                println!("{}: ok", s.source.display());
                println!("  state_dir: {}", s.state_dir.display());
                println!(
                    "  release feed: {}/{} at {}",
                    s.release.owner, s.release.repo, s.release.api_url
                );
                println!(
                    "  headscale: {} with {}",
                    s.headscale.binary.display(),
                    s.headscale.config.display()
                );
                if s.release.token.is_some() {
                    println!("  github token: set (not shown)");
                }
            }
            for w in s.warnings() {
                eprintln!("warning: {w}");
            }
            Ok(exit::OK)
        }
        Command::Check { to } => {
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
                let p = &report.plan;
                println!("production runs {}", report.current);
                println!(
                    "release feed: {} ({} request{}, rate limit remaining: {})",
                    if report.feed_not_modified {
                        "unchanged since last poll (304)"
                    } else {
                        "fetched"
                    },
                    report.feed_requests,
                    if report.feed_requests == 1 { "" } else { "s" },
                    report
                        .rate_remaining
                        .map_or("unknown".to_string(), |r| r.to_string())
                );
                match (&p.blocked, p.hops.is_empty()) {
                    (Some(reason), _) => println!("blocked: {reason}"),
                    (None, true) => println!("up to date: nothing to do"),
                    (None, false) => {
                        let path: Vec<String> =
                            p.hops.iter().map(|h| h.version.to_string()).collect();
                        println!("plan: {} -> {}", report.current, path.join(" -> "));
                        println!("  (Headscale cannot skip a minor version: one hop per minor, newest patch of each)");
                    }
                }
                for n in &p.notes {
                    println!("  skipped {n}");
                }
                for c in &report.config_problems {
                    println!("  config: {c}");
                }
            }
            Ok(exit::OK)
        }
        Command::Upgrade {
            to,
            yes,
            dry_run,
            allow_downgrade,
            ignore_window,
        } => {
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
            if !yes && !dry_run && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                let report = upgrade::check(&s, &store, &opts).await?;
                if report.plan.hops.is_empty() {
                    println!(
                        "nothing to do ({})",
                        report.plan.blocked.unwrap_or_else(|| "up to date".into())
                    );
                    return Ok(exit::OK);
                }
                let path: Vec<String> = report
                    .plan
                    .hops
                    .iter()
                    .map(|h| h.version.to_string())
                    .collect();
                eprint!(
                    "upgrade production {} -> {}? [y/N] ",
                    report.current,
                    path.join(" -> ")
                );
                let mut answer = String::new();
                let _ = std::io::stdin().read_line(&mut answer);
                if !answer.trim().eq_ignore_ascii_case("y") {
                    println!("cancelled");
                    return Ok(exit::OK);
                }
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
            Ok(match outcome {
                UpgradeOutcome::NothingToDo { current, notes } => {
                    if !cli.json {
                        println!("production runs {current}; nothing to do");
                        for n in notes {
                            println!("  skipped {n}");
                        }
                    }
                    exit::OK
                }
                UpgradeOutcome::Blocked { reason, .. } => {
                    if !cli.json {
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
                    if !cli.json {
                        println!(
                            "production runs {current}; outside the maintenance window (an upgrade needs about {needed_minutes} min); next window: {}",
                            next.unwrap_or_else(|| "none within two weeks".into())
                        );
                        println!("  promote now anyway with: headwarden upgrade --ignore-window");
                    }
                    exit::OK
                }
                UpgradeOutcome::AwaitingApproval { current, versions } => {
                    if !cli.json {
                        println!(
                            "production runs {current}; waiting for approval of {}",
                            versions.join(", ")
                        );
                        for v in &versions {
                            println!("  approve with: headwarden approve {v}");
                        }
                    }
                    exit::OK
                }
                UpgradeOutcome::ConfigIncompatible { problems, .. } => {
                    for p in &problems {
                        eprintln!("error: {p}");
                    }
                    eprintln!("hint: fix production's Headscale config first (compare with the new release's config-example.yaml); nothing was changed");
                    exit::FAILURE
                }
                UpgradeOutcome::Upgraded { from, to, .. } => {
                    if !cli.json {
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
            })
        }
        Command::Rollback { to } => {
            let s = load(cli)?;
            let _lock = RunLock::acquire(&s.state_dir, "rollback")?;
            let store = Store::open(&s.state_dir)?;
            let say = |line: &str| println!("{line}");
            let v = upgrade::rollback(&s, &store, to.as_ref(), &say).await?;
            println!("production restored to {v}");
            Ok(exit::OK)
        }
        Command::Status => {
            let s = load(cli)?;
            let store = Store::open(&s.state_dir)?;
            status(cli, &s, &store).await
        }
        Command::History { limit } => {
            let s = load(cli)?;
            let store = Store::open(&s.state_dir)?;
            let runs = store.recent_runs(*limit)?;
            if cli.json {
                let detailed: Vec<serde_json::Value> = runs
                    .iter()
                    .map(|r| serde_json::json!({"run": r, "steps": store.steps(r.id).unwrap_or_default()}))
                    .collect();
                return print_json(&detailed).map(|()| exit::OK);
            }
            for r in runs {
                println!(
                    "run {} {} {} -> {}: {} {}",
                    r.id,
                    r.kind,
                    r.from_version.as_deref().unwrap_or("?"),
                    r.to_version.as_deref().unwrap_or("?"),
                    r.outcome.as_deref().unwrap_or("INTERRUPTED"),
                    r.detail.as_deref().unwrap_or("")
                );
                for st in store.steps(r.id)? {
                    println!(
                        "    hop {} {:<14} {:<8} {:>6} ms  {}",
                        st.hop,
                        st.name,
                        st.status,
                        st.elapsed_ms.unwrap_or(0),
                        st.message.unwrap_or_default()
                    );
                }
            }
            Ok(exit::OK)
        }
        Command::Demo { keep, real: false } => demo::run(*keep).await,
        Command::Demo { keep, real: true } => demo_real::run(*keep).await,
        Command::Keys { cmd } => keys_command(cli, cmd).await,
    }
}

async fn keys_command(cli: &Cli, cmd: &KeysCmd) -> Result<u8, Failure> {
    use crate::keys::plan::{Action, KeyState};
    let s = load(cli)?;
    let store = Store::open(&s.state_dir)?;
    let api = ApiClient::connect(&s).await?;
    match cmd {
        KeysCmd::Plan => {
            let plans = keys::plan_now(&s, &store, &api).await?;
            if cli.json {
                return print_json(&plans).map(|()| exit::OK);
            }
            println!("Headscale {} — {} nodes", api.version, plans.len());
            println!(
                "{:>5}  {:<24} {:<14} {:<18} {:<21} next action",
                "id", "node", "user", "state", "deadline"
            );
            for p in &plans {
                let state = match &p.state {
                    KeyState::Ok => "ok".to_string(),
                    KeyState::DueSoon { stage } => format!("due-soon (stage {stage})"),
                    KeyState::InGrace => "in-grace".into(),
                    KeyState::Overdue => "overdue".into(),
                    KeyState::Rotated => "rotated".into(),
                    KeyState::Exempt { reason } => format!("exempt ({reason})"),
                    KeyState::AlreadyExpired => "already expired".into(),
                };
                let action = match &p.action {
                    Action::None => "-".to_string(),
                    Action::Remind { stage } => {
                        format!("remind (stage {stage}) with a one-time key")
                    }
                    Action::Expire => "expire node".into(),
                    Action::RecordRotation => "record rotation".into(),
                };
                let deadline = p
                    .deadline
                    .and_then(|d| time::OffsetDateTime::from_unix_timestamp(d).ok())
                    .map(|d| format!("{}-{:02}-{:02}", d.year(), d.month() as u8, d.day()))
                    .unwrap_or_else(|| "-".into());
                let flag = if p.never_expires {
                    " [never expires in Headscale]"
                } else {
                    ""
                };
                println!(
                    "{:>5}  {:<24} {:<14} {:<18} {:<21} {action}{flag}",
                    p.node_id, p.name, p.user, state, deadline
                );
            }
            Ok(exit::OK)
        }
        KeysCmd::Run => {
            let _lock = RunLock::acquire_keys(&s.state_dir, "keys run")?;
            let mut api = api;
            let quiet = cli.json;
            let say = move |line: &str| {
                if !quiet {
                    println!("{line}");
                }
            };
            let report = keys::run(&s, &store, &mut api, &say).await?;
            if cli.json {
                print_json(&report)?;
            } else {
                println!(
                    "key job: {} reminder(s), {} rotation(s), {} node(s) expired, {} stale duplicate(s) removed, {} one-time key(s) retired",
                    report.reminders.len(),
                    report.rotated.len(),
                    report.expired.len(),
                    report.duplicates_removed.len(),
                    report.keys_retired
                );
            }
            Ok(exit::OK)
        }
        KeysCmd::Rotate { node } => {
            let _lock = RunLock::acquire_keys(&s.state_dir, "keys rotate")?;
            let name = keys::rotate(&s, &store, &api, node).await?;
            println!("rotation started for {name}: a one-time key was minted and the reminder queued for its owner");
            Ok(exit::OK)
        }
    }
}

async fn status(cli: &Cli, s: &Settings, store: &Store) -> Result<u8, Failure> {
    let current = upgrade::current_version(s)
        .await
        .map(|v| v.to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let target = deploy::current_target(&s.headscale.binary);
    let health = match deploy::production_config(s) {
        Ok(c) => {
            let client = http::client(std::time::Duration::from_secs(5));
            match http::health(&client, &c.http_base()).await {
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
    if cli.json {
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
            "production": {"version": current, "binary": s.headscale.binary, "target": target, "health": health},
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
        return Ok(exit::OK);
    }
    println!("production: {current} ({health})");
    if let Some(reason) = store.kv_get("hold")? {
        println!("  upgrades ON HOLD: {reason} (`headwarden unhold` releases them)");
    }
    println!(
        "  binary {} -> {}",
        s.headscale.binary.display(),
        target.display()
    );
    for r in &open {
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
    Ok(exit::OK)
}
