//! The staging instance: the candidate binary on a consistent copy of production's database.
//!
//! Procedure:
//! 1. Wipe and recreate `state_dir/staging` (0700); write the offline DERP map.
//! 2. Online-copy production's SQLite database (backup API) and copy its Noise key.
//! 3. For each hop in order, on the same database copy (so migrations chain like production's
//!    will): pick free loopback ports, derive the config, start `<binary> serve -c …` as our
//!    own child (pid journaled so recovery can stop an orphan), wait for `/health`, run the smoke
//!    checks against the production baseline, stop it.
//! 4. Any failure stops the child and reports the checks plus the last lines of its log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::deploy::{io_err, DeployError, Installed};
use crate::files;
use crate::headscale::config::{derive_staging, staging_env, HeadscaleConfig, StagingLayout};
use crate::process;
use crate::settings;
use crate::settings::Settings;
use crate::smoke::{self, Baseline, Report, SmokeError, Target};
use crate::state::{sqlite_files, RunId, Store};
use crate::verify;

pub const OFFLINE_DERP_MAP: &str = include_str!("../../staging/derp.yaml");

pub fn staging_dir(s: &Settings) -> PathBuf {
    s.state_dir.join("staging")
}

#[derive(Debug)]
pub enum StageOutcome {
    Passed(Vec<Report>),
    /// The candidate failed on staging; production was not touched.
    Failed {
        version: String,
        reason: String,
        reports: Vec<Report>,
        /// `false` when the host, not the release, failed (a port conflict): not recorded bad.
        release_is_bad: bool,
    },
}

fn free_port() -> Result<u16, DeployError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(io_err("binding a free port on", Path::new("127.0.0.1")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(io_err("reading the port of", Path::new("127.0.0.1")))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

pub async fn stage(
    s: &Settings,
    store: &Store,
    run: RunId,
    prod: &HeadscaleConfig,
    hops: &[Installed],
    baseline: &Baseline,
    full_checks: bool,
) -> Result<StageOutcome, DeployError> {
    let dir = staging_dir(s);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_err("clearing", &dir))?;
    }
    verify::create_private_dir(&dir).map_err(io_err("creating", &dir))?;
    let derp = dir.join("derp.yaml");
    std::fs::write(&derp, OFFLINE_DERP_MAP).map_err(io_err("writing", &derp))?;
    let overlay = read_overlay(s)?;
    let mut layout = StagingLayout {
        dir: dir.clone(),
        http_port: 0,
        metrics_port: 0,
        grpc_port: 0,
        derp_map: derp,
    };
    copy_production(store, run, prod, &layout)?;

    let mut reports = Vec::new();
    for (i, hop) in hops.iter().enumerate() {
        let started = match start_hop(s, store, run, i, hop, prod, &mut layout, overlay.as_ref())
            .await?
        {
            Ok(started) => started,
            Err((reason, port_conflict)) => {
                return Ok(StageOutcome::Failed {
                    version: hop.version.to_string(),
                    reason: if port_conflict {
                        format!("staging could not bind its ports twice (another process on this host?): {reason}")
                    } else {
                        format!("did not become healthy: {reason}")
                    },
                    reports,
                    release_is_bad: !port_conflict,
                });
            }
        };
        let Started {
            mut child,
            step,
            t,
            base_url,
            config_path,
        } = started;
        store.step_finish(step, true, "healthy", t.elapsed().as_millis())?;

        let step = store.step_start(
            run,
            i as i64,
            "stage_smoke",
            &serde_json::json!({"version": hop.version.to_string()}),
        )?;
        let t = std::time::Instant::now();
        let target = Target {
            name: "staging",
            base_url,
            binary: hop.path.clone(),
            config: config_path.clone(),
        };
        // Without the playbook's smoke step staging only proves the candidate starts, migrates
        // the copy and answers /health (checked above).
        let report = if full_checks {
            smoke::run(&target, &hop.version, baseline, &s.smoke).await
        } else {
            Report::default()
        };
        process::terminate(&mut child, Duration::from_secs(10)).await;
        let passed = report.passed();
        let failures = report.failures();
        store.step_finish(
            step,
            passed,
            if passed {
                "all checks passed"
            } else {
                &failures
            },
            t.elapsed().as_millis(),
        )?;
        reports.push(report);
        if !passed {
            return Ok(StageOutcome::Failed {
                version: hop.version.to_string(),
                reason: failures,
                reports,
                release_is_bad: true,
            });
        }
    }
    Ok(StageOutcome::Passed(reports))
}

/// `staging.overlay`: YAML merged over the derived staging config.
fn read_overlay(s: &Settings) -> Result<Option<serde_yaml_ng::Value>, DeployError> {
    let Some(p) = &s.staging.overlay else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(p).map_err(io_err("reading", p))?;
    let bad = |e: String| DeployError::Other(format!("staging overlay {}: {e}", p.display()));
    settings::yaml_guard(&text).map_err(|e| bad(e.to_string()))?;
    Ok(Some(
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).map_err(|e| bad(e.to_string()))?,
    ))
}

/// The staging copy: SQLite's online backup of production's database, and its noise key.
fn copy_production(
    store: &Store,
    run: RunId,
    prod: &HeadscaleConfig,
    layout: &StagingLayout,
) -> Result<(), DeployError> {
    let step = store.step_start(
        run,
        0,
        "stage_copy",
        &serde_json::json!({"from": prod.database_path}),
    )?;
    let t = std::time::Instant::now();
    sqlite_files::online_copy(&prod.database_path, &layout.database())?;
    if files::regular_meta(&prod.noise_key_path)?.is_some() {
        files::copy_preserving(&prod.noise_key_path, &layout.noise_key())?;
    }
    store.step_finish(
        step,
        true,
        "copied production database and noise key",
        t.elapsed().as_millis(),
    )?;
    Ok(())
}

/// A staging instance that became healthy, with its open journal step.
struct Started {
    child: tokio::process::Child,
    step: i64,
    t: std::time::Instant,
    base_url: String,
    config_path: PathBuf,
}

/// Starts one hop's candidate on the copy and waits for `/health`. `Err((reason, port
/// conflict))` when it did not become healthy (its step is closed as failed).
#[allow(clippy::too_many_arguments)]
async fn start_hop(
    s: &Settings,
    store: &Store,
    run: RunId,
    i: usize,
    hop: &Installed,
    prod: &HeadscaleConfig,
    layout: &mut StagingLayout,
    overlay: Option<&serde_yaml_ng::Value>,
) -> Result<Result<Started, (String, bool)>, DeployError> {
    let log = layout.dir.join(format!("headscale-{}.log", hop.version));
    // Ports are picked free just before the start; another process can take one in between.
    // A start that fails with "address already in use" gets one retry on fresh ports, and a
    // second such failure is the host's problem, not the release's.
    let mut attempt = 0;
    loop {
        attempt += 1;
        layout.http_port = free_port()?;
        layout.metrics_port = free_port()?;
        layout.grpc_port = free_port()?;
        let config = derive_staging(prod, layout, overlay);
        let config_path = layout.config();
        let text = serde_yaml_ng::to_string(&config)
            .map_err(|e| DeployError::Other(format!("serialising staging config: {e}")))?;
        std::fs::write(&config_path, text).map_err(io_err("writing", &config_path))?;
        let base_url = format!("http://127.0.0.1:{}", layout.http_port);
        let config_arg = config_path.display().to_string();
        let mut child = process::spawn_logged_env(
            &hop.path,
            &["serve", "-c", &config_arg],
            &log,
            &staging_env(prod),
        )
        .map_err(|e| DeployError::Other(e.to_string()))?;
        let pid = child.id().unwrap_or(0);
        let step = store.step_start(run, i as i64, "stage_start", &serde_json::json!({"version": hop.version.to_string(), "pid": pid, "marker": config_arg}))?;
        process::crash_point("stage_start:after");
        let t = std::time::Instant::now();
        tracing::info!(version = %hop.version, pid, url = %base_url, attempt, "staging instance starting");
        let health = smoke::wait_healthy(&base_url, s.smoke.timeout, || match child.try_wait() {
            Ok(Some(status)) => Err(SmokeError::Died(format!(
                "staging process exited ({status}): {}",
                log_tail(&log)
            ))),
            _ => Ok(()),
        })
        .await;
        let Err(e) = health else {
            return Ok(Ok(Started {
                child,
                step,
                t,
                base_url,
                config_path,
            }));
        };
        let reason = e.to_string();
        process::terminate(&mut child, Duration::from_secs(5)).await;
        store.step_finish(step, false, &reason, t.elapsed().as_millis())?;
        let port_conflict = reason.contains("address already in use");
        if port_conflict && attempt < 2 {
            tracing::warn!(version = %hop.version, "staging port taken meanwhile; retrying on fresh ports");
            continue;
        }
        return Ok(Err((reason, port_conflict)));
    }
}
