//! `headwarden daemon`: an event loop over timers, signals and job results.
//!
//! Each job (the upgrade, the key job, chat delivery every 30 s) runs as a child process of this
//! binary, so the jobs run concurrently and independently, each under its own lock, and a crash
//! in one never takes the daemon or the other job down. A job is due when its schedule's first
//! time after its last start has passed (`next_due`); a job without a schedule does not run in
//! the daemon. A job that finds its lock held (an admin's manual run) is retried a minute later.
//!
//! SIGTERM/SIGINT: start nothing new, wait for running jobs (a promotion finishes or rolls back
//! by itself), exit 0. Jobs run in their own process group, so the signal reaches only the
//! daemon (`KillMode=mixed` in the unit). SIGHUP: reload the config; an invalid one is refused
//! with an error and the old one kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::exit;
use crate::metrics;
use crate::process;
use crate::settings::cron;
use crate::settings::{self, Job, Settings};
use crate::state::{now, Key, Store};

const FLUSH_EVERY: i64 = 30;
const LOCKED_RETRY: i64 = 60;

/// What the daemon runs as a child: a scheduled job, or chat delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Task {
    Job(Job),
    Flush,
}

impl Task {
    fn as_str(self) -> &'static str {
        match self {
            Task::Job(j) => j.as_str(),
            Task::Flush => "notify",
        }
    }
}

fn job_args(config: &Path, task: Task) -> Vec<String> {
    let mut a = vec!["--config".to_string(), config.display().to_string()];
    a.extend(
        match task {
            Task::Job(Job::Upgrade) => vec!["upgrade", "--yes"],
            Task::Job(Job::Keys) => vec!["keys", "run"],
            Task::Job(Job::Audit) => vec!["audit"],
            Task::Flush => vec!["notify", "flush"],
        }
        .into_iter()
        .map(String::from),
    );
    a
}

pub async fn run(config: PathBuf) -> anyhow::Result<u8> {
    let mut s = settings::load(&config)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Task, i64, Option<i32>)>();
    let mut running: HashMap<Task, i64> = HashMap::new();
    let mut retry_at: HashMap<Job, i64> = HashMap::new();
    let mut last_flush = 0;
    let mut stopping = false;
    if let Some(addr) = s.metrics.listen {
        serve_metrics(addr, s.clone()).await?;
    }
    tracing::info!(config = %config.display(), "daemon started");
    loop {
        let t = now();
        let mut wake = t + FLUSH_EVERY;
        if !stopping {
            let store = Store::open(&s.state_dir)?;
            for job in Job::ALL {
                let Some(schedule) = s.schedule.of(job) else {
                    continue;
                };
                if running.contains_key(&Task::Job(job)) {
                    continue;
                }
                if let Some(r) = retry_at.get(&job).filter(|r| **r > t) {
                    wake = wake.min(*r);
                    continue;
                }
                let last = store
                    .kv_get(Key::JobLast(job))?
                    .and_then(|v| v.parse().ok());
                // Due at the schedule's time plus this occurrence's jitter.
                let offset = cron::jitter_offset(job.as_str(), last, s.schedule.jitter);
                match cron::next_due(Some(schedule), s.schedule.timezone, last, t - offset) {
                    Some(next) => wake = wake.min(next + offset),
                    None => start(Task::Job(job), &config, t, &tx, &mut running),
                }
            }
            let wants_chat = !s.notify.is_empty() || !s.notify_users.is_empty();
            if wants_chat && t - last_flush >= FLUSH_EVERY && !running.contains_key(&Task::Flush) {
                last_flush = t;
                start(Task::Flush, &config, t, &tx, &mut running);
            }
        } else if running.is_empty() {
            tracing::info!("daemon stopped");
            return Ok(exit::OK);
        }
        let sleep = Duration::from_secs((wake - now()).clamp(1, 3600) as u64);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = term.recv() => stopping = begin_stop(&running),
            _ = int.recv() => stopping = begin_stop(&running),
            _ = hup.recv() => match settings::load(&config) {
                Ok(new) => {
                    s = new;
                    tracing::info!("config reloaded");
                }
                Err(e) => tracing::error!(error = %e, "config reload refused; keeping the previous config"),
            },
            Some((task, started, code)) = rx.recv() => {
                running.remove(&task);
                let job = task.as_str();
                tracing::info!(job, code = ?code, "job finished");
                let Task::Job(j) = task else { continue };
                if code == Some(i32::from(exit::LOCKED)) {
                    tracing::info!(job, "its lock is held by another run; retrying in a minute");
                    retry_at.insert(j, now() + LOCKED_RETRY);
                } else {
                    Store::open(&s.state_dir)?.kv_set(Key::JobLast(j), &started.to_string())?;
                }
            }
        }
    }
}

/// Serves `/metrics` on `addr` (a loopback address, checked when the config loaded).
async fn serve_metrics(addr: std::net::SocketAddr, settings: Settings) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let s = settings.clone();
            async move {
                match metrics::text(&s).await {
                    Ok(t) => (
                        axum::http::StatusCode::OK,
                        [("content-type", "text/plain; version=0.0.4")],
                        t,
                    ),
                    Err(_) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [("content-type", "text/plain; version=0.0.4")],
                        "state store unavailable\n".to_string(),
                    ),
                }
            }
        }),
    );
    tracing::info!(%addr, "serving metrics on /metrics");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

fn begin_stop(running: &HashMap<Task, i64>) -> bool {
    let jobs: Vec<&str> = running.keys().map(|t| t.as_str()).collect();
    tracing::info!(
        ?jobs,
        "stopping: no new jobs; waiting for running ones to finish"
    );
    true
}

fn start(
    task: Task,
    config: &Path,
    t: i64,
    tx: &tokio::sync::mpsc::UnboundedSender<(Task, i64, Option<i32>)>,
    running: &mut HashMap<Task, i64>,
) {
    let job = task.as_str();
    match process::spawn_self(&job_args(config, task)) {
        Ok(mut child) => {
            if task != Task::Flush {
                tracing::info!(job, "job started");
            }
            running.insert(task, t);
            let tx = tx.clone();
            tokio::spawn(async move {
                let code = child.wait().await.ok().and_then(|s| s.code());
                let _ = tx.send((task, t, code));
            });
        }
        Err(e) => tracing::error!(job, error = %e, "cannot start job"),
    }
}
