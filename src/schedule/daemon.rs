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
use crate::settings::{self, Settings};
use crate::state::{now, Store};

const JOBS: [&str; 3] = ["upgrade", "keys", "audit"];
const FLUSH_EVERY: i64 = 30;
const LOCKED_RETRY: i64 = 60;

fn schedule_of<'a>(s: &'a Settings, job: &str) -> Option<&'a str> {
    match job {
        "upgrade" => s.schedule.upgrade.as_deref(),
        "keys" => s.schedule.keys.as_deref(),
        "audit" => s.schedule.audit.as_deref(),
        _ => None,
    }
}

fn job_args(config: &Path, job: &str) -> Vec<String> {
    let mut a = vec!["--config".to_string(), config.display().to_string()];
    a.extend(
        match job {
            "upgrade" => vec!["upgrade", "--yes"],
            "keys" => vec!["keys", "run"],
            "audit" => vec!["audit"],
            _ => vec!["notify", "flush"],
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
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(&'static str, i64, Option<i32>)>();
    let mut running: HashMap<&'static str, i64> = HashMap::new();
    let mut retry_at: HashMap<&'static str, i64> = HashMap::new();
    let mut last_flush = 0;
    let mut stopping = false;
    if let Some(addr) = s.metrics.listen {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let settings = s.clone();
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
    }
    tracing::info!(config = %config.display(), "daemon started");
    loop {
        let t = now();
        let mut wake = t + FLUSH_EVERY;
        if !stopping {
            let store = Store::open(&s.state_dir)?;
            for job in JOBS {
                let Some(expr) = schedule_of(&s, job) else {
                    continue;
                };
                if running.contains_key(job) {
                    continue;
                }
                if let Some(r) = retry_at.get(job).filter(|r| **r > t) {
                    wake = wake.min(*r);
                    continue;
                }
                let last = store
                    .kv_get(&format!("job.{job}.last"))?
                    .and_then(|v| v.parse().ok());
                // Due at the schedule's time plus this occurrence's jitter.
                let offset = cron::jitter_offset(job, last, s.schedule.jitter);
                let tz = s.schedule.timezone.as_deref();
                match cron::next_due(Some(expr), tz, last, t - offset) {
                    Ok(Some(next)) => wake = wake.min(next + offset),
                    Ok(None) => start(job, &config, t, &tx, &mut running),
                    Err(e) => tracing::error!(job, error = %e, "bad schedule"),
                }
            }
            let wants_chat = !s.notify.is_empty() || !s.notify_users.is_empty();
            if wants_chat && t - last_flush >= FLUSH_EVERY && !running.contains_key("notify") {
                last_flush = t;
                start("notify", &config, t, &tx, &mut running);
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
            Some((job, started, code)) = rx.recv() => {
                running.remove(job);
                tracing::info!(job, code = ?code, "job finished");
                if job == "notify" {
                    continue;
                }
                if code == Some(i32::from(exit::LOCKED)) {
                    tracing::info!(job, "its lock is held by another run; retrying in a minute");
                    retry_at.insert(job, now() + LOCKED_RETRY);
                } else {
                    Store::open(&s.state_dir)?.kv_set(&format!("job.{job}.last"), &started.to_string())?;
                }
            }
        }
    }
}

fn begin_stop(running: &HashMap<&'static str, i64>) -> bool {
    let jobs: Vec<&str> = running.keys().copied().collect();
    tracing::info!(
        ?jobs,
        "stopping: no new jobs; waiting for running ones to finish"
    );
    true
}

fn start(
    job: &'static str,
    config: &Path,
    t: i64,
    tx: &tokio::sync::mpsc::UnboundedSender<(&'static str, i64, Option<i32>)>,
    running: &mut HashMap<&'static str, i64>,
) {
    match process::spawn_self(&job_args(config, job)) {
        Ok(mut child) => {
            if job != "notify" {
                tracing::info!(job, "job started");
            }
            running.insert(job, t);
            let tx = tx.clone();
            tokio::spawn(async move {
                let code = child.wait().await.ok().and_then(|s| s.code());
                let _ = tx.send((job, t, code));
            });
        }
        Err(e) => tracing::error!(job, error = %e, "cannot start job"),
    }
}
