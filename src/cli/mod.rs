//! The command line: clap derive (doc comments are the help text), thin wrappers over the domain
//! functions in `upgrade`, `deploy` and `state`. Data goes to stdout (`--json` for stable
//! output), logs and progress to stderr. Errors print as a chain with a hint.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use semver::Version;

use crate::error::Hinted;
use crate::event::{Event, Severity};
use crate::exit;
use crate::lock::LockError;
use crate::notify;
use crate::process;
use crate::schedule::daemon;
use crate::settings::{self, Settings};
use crate::state;
use crate::state::Store;

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
    /// Run the smoke checks (smoke.checks, smoke.commands) against production now; exit 1 if one
    /// fails. The connectivity probe's node is removed afterwards.
    Smoke,
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

impl<E: Hinted> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: e.exit_code(),
            hint: e.hint(),
            error: anyhow::Error::new(e),
        }
    }
}

/// The demo's own plumbing (temporary directories, fixtures): no hint to give.
impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure {
            code: exit::FAILURE,
            hint: None,
            error,
        }
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

pub(crate) fn load(cli: &Cli) -> Result<Settings, Failure> {
    Ok(settings::load(&cli.config)?)
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
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
    if let Some(LockError::Held {
        holder,
        path,
        since,
    }) = f.error.downcast_ref::<LockError>()
    {
        if let (Some(since), Ok(store)) = (*since, Store::open(&s.state_dir)) {
            let hours = (state::now() - since) / 3600;
            if hours >= 6 {
                let _ = store.push_event_once(
                    Event::HealthLockStuck,
                    Severity::Warning,
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

pub(crate) fn fmt_local(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| {
            d.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string()
        })
        .unwrap_or_default()
}

pub(crate) async fn run_command(cli: &Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Run => commands::run::run(cli).await,
        Command::Completions { shell } => commands::completions::run(shell),
        Command::Playbook {
            cmd: PlaybookCmd::Check { file },
        } => commands::playbook::run(file),
        Command::Audit { fail_on } => commands::audit::run(cli, fail_on).await,
        Command::Metrics => commands::metrics::run(cli).await,
        Command::Man => commands::man::run(),
        Command::Approve { version } => commands::approve::run(cli, version),
        Command::Hold { reason } => commands::hold::hold(cli, reason),
        Command::Unhold => commands::hold::unhold(cli),
        Command::Daemon => Ok(daemon::run(cli.config.clone()).await?),
        Command::Notify { cmd } => commands::notify::run(cli, cmd).await,
        Command::Config {
            cmd: ConfigCmd::Check,
        } => commands::config::check(cli).await,
        Command::Check { to } => commands::check::run(cli, to).await,
        Command::Upgrade {
            to,
            yes,
            dry_run,
            allow_downgrade,
            ignore_window,
        } => commands::upgrade::run(cli, to, yes, dry_run, allow_downgrade, ignore_window).await,
        Command::Rollback { to } => commands::rollback::run(cli, to).await,
        Command::Status => commands::status::run(cli).await,
        Command::Smoke => commands::smoke::run(cli).await,
        Command::History { limit } => commands::history::run(cli, limit),
        Command::Demo { keep, real: false } => commands::demo::run(*keep).await,
        Command::Demo { keep, real: true } => commands::demo_real::run(*keep).await,
        Command::Keys { cmd } => commands::keys::run(cli, cmd).await,
    }
}
