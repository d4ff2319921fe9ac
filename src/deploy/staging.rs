//! The staging instance: the candidate binary on a consistent copy of production's database.
//!
//! Procedure:
//! 1. Wipe and recreate `state_dir/staging` (root's: config, DERP map, logs) and its `data/`
//!    (the candidate's: database, key, socket); write the offline DERP map.
//! 2. Online-copy production's SQLite database (backup API) and copy its Noise key into `data/`,
//!    then hand `data/` to production's account (security review N7: the candidate runs as
//!    production's account, never as root on data that account wrote).
//! 3. For each hop in order, on the same database copy (so migrations chain like production's
//!    will): pick free loopback ports, derive the config, start `<binary> serve -c …` as our
//!    own child running as production's account (pid journaled so recovery can stop an orphan),
//!    wait for `/health`, run the smoke checks against the production baseline, stop it.
//! 4. Any failure stops the child and reports the checks plus the last lines of its log.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::compose::{Engine, ImageRef};
use crate::deploy;
use crate::deploy::container::{self, Discovered};
use crate::deploy::production::Production;
use crate::deploy::{io_err, Artifact, DeployError, Installed};
use crate::error::error_chain;
use crate::files;
use crate::headscale::cli::Cli;
use crate::headscale::config::{derive_staging, staging_env, HeadscaleConfig, StagingLayout};
use crate::process::{self, Account};
use crate::settings;
use crate::settings::{Install, Settings};
use crate::smoke::probe;
use crate::smoke::{self, Baseline, Report, SmokeError, Target};
use crate::state::{sqlite_files, RunId, Step, Store};
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
    production: &Production,
    hops: &[Installed],
    baseline: &Baseline,
    full_checks: bool,
) -> Result<StageOutcome, DeployError> {
    let prod = &production.config;
    let overlay = read_overlay(s)?;
    let account = candidate_account(production);
    let mut layout = fresh_layout(s, account)?;
    copy_production(store, run, prod, &layout)?;
    if let Some(a) = account {
        files::hand_over(&layout.data(), a.uid, a.gid)?;
    }
    let host = staging_host(s).await?;

    let mut reports = Vec::new();
    // The probe's user as production has it; one the probe creates on the copy is the
    // probe's for the later hops on that copy too.
    let mut probe_user = deploy::probe_user(store);
    for (i, hop) in hops.iter().enumerate() {
        let hop_env = HopEnv {
            s,
            store,
            run,
            i,
            hop,
            prod,
            overlay: overlay.as_ref(),
            host: &host,
            account,
        };
        let started = match start_hop(&hop_env, &mut layout).await? {
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
        let report = smoke_hop(&hop_env, started, baseline, full_checks, &mut probe_user).await?;
        let (passed, failures) = (report.passed(), report.failures());
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

/// The smoke checks on a hop's healthy instance (journaled), which is then stopped. Without the
/// playbook's smoke step staging only proves the candidate starts, migrates the copy and
/// answers /health.
async fn smoke_hop(
    h: &HopEnv<'_>,
    started: Started,
    baseline: &Baseline,
    full_checks: bool,
    probe_user: &mut Option<u64>,
) -> Result<Report, DeployError> {
    let Started {
        mut instance,
        step,
        t,
        base_url,
        config_path,
        cli,
    } = started;
    let (store, hop) = (h.store, h.hop);
    store.step_finish(step, true, "healthy", t.elapsed().as_millis())?;
    let step = store.step_start(
        h.run,
        h.i as i64,
        Step::StageSmoke,
        &serde_json::json!({"version": hop.version.to_string()}),
    )?;
    let t = std::time::Instant::now();
    let mut target = Target {
        name: "staging",
        base_url,
        cli,
        config: config_path,
        open_policy: h.prod.open_policy(),
        probe_user: *probe_user,
    };
    let report = if full_checks {
        let smoke = &h.s.smoke;
        if let Some(id) = probe::prepare(&mut target, &smoke.checks, smoke.timeout).await {
            *probe_user = Some(id);
        }
        smoke::run(&target, &hop.version, baseline, smoke).await
    } else {
        Report::default()
    };
    instance.stop().await;
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
    Ok(report)
}

/// Whom the candidate runs as on staging: production's account when that is not root and we
/// are; unprivileged, headwarden runs it as itself (it can be no one else).
fn candidate_account(production: &Production) -> Option<Account> {
    let me = nix::unistd::geteuid().as_raw();
    production.account().filter(|a| me == 0 && a.uid != 0)
}

/// A new staging directory with the offline DERP map (ports chosen per hop): private, or only
/// traversable (0711) when the candidate runs as another account, which owns just `data/`.
fn fresh_layout(s: &Settings, account: Option<Account>) -> Result<StagingLayout, DeployError> {
    let dir = staging_dir(s);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_err("clearing", &dir))?;
    }
    verify::create_private_dir(&dir).map_err(io_err("creating", &dir))?;
    if account.is_some() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(io_err("setting the mode of", &dir))?;
    }
    let derp = dir.join("derp.yaml");
    files::write_atomic(&derp, OFFLINE_DERP_MAP.as_bytes(), 0o644)?;
    let layout = StagingLayout {
        dir,
        http_port: 0,
        metrics_port: 0,
        grpc_port: 0,
        derp_map: derp,
    };
    let data = layout.data();
    verify::create_private_dir(&data).map_err(io_err("creating", &data))?;
    Ok(layout)
}

/// Where the candidates run: as headwarden's children, or in throwaway containers beside the
/// compose service.
async fn staging_host(s: &Settings) -> Result<Host, DeployError> {
    Ok(match &s.headscale.install {
        Install::Binary | Install::Deb(_) | Install::External(_) => Host::Process,
        Install::Compose(c) => Host::Container {
            engine: container::engine(c),
            production: Box::new(container::discover(c).await?),
        },
    })
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
        Step::StageCopy,
        &serde_json::json!({"from": prod.sqlite_path()?}),
    )?;
    let t = std::time::Instant::now();
    sqlite_files::online_copy(prod.sqlite_path()?, &layout.database())?;
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

/// Where staging instances run: as our own child processes, or as throwaway containers of the
/// candidate image beside production's (which they never share a volume with, but for its
/// config directory, read only).
enum Host {
    Process,
    Container {
        engine: Engine,
        production: Box<Discovered>,
    },
}

/// One running staging instance.
enum Instance {
    Child(tokio::process::Child),
    Container { engine: Engine, name: String },
}

impl Instance {
    async fn stop(&mut self) {
        match self {
            Instance::Child(child) => process::terminate(child, Duration::from_secs(10)).await,
            Instance::Container { engine, name } => {
                if let Err(e) = engine.remove(name).await {
                    tracing::error!(name = %name, error = %e, "cannot remove the staging container");
                }
            }
        }
    }

    /// `Err(why)` once the instance has exited.
    async fn exited(&mut self, log: &Path) -> Result<(), String> {
        match self {
            Instance::Child(child) => match child.try_wait() {
                Ok(Some(status)) => Err(format!(
                    "staging process exited ({status}): {}",
                    log_tail(log)
                )),
                _ => Ok(()),
            },
            Instance::Container { engine, name } => match engine.container(name).await {
                Ok(Some(info)) if info.running => Ok(()),
                Ok(_) => Err(format!(
                    "staging container exited: {}",
                    engine.logs_tail(name).await
                )),
                Err(e) => Err(format!(
                    "cannot ask the engine about the staging container: {e}"
                )),
            },
        }
    }

    async fn log_tail(&self, log: &Path) -> String {
        match self {
            Instance::Child(_) => log_tail(log),
            Instance::Container { engine, name } => engine.logs_tail(name).await,
        }
    }
}

/// A staging instance that became healthy, with its open journal step.
struct Started {
    instance: Instance,
    step: i64,
    t: std::time::Instant,
    base_url: String,
    config_path: PathBuf,
    cli: Cli,
}

/// What one hop's start needs.
struct HopEnv<'a> {
    s: &'a Settings,
    store: &'a Store,
    run: RunId,
    i: usize,
    hop: &'a Installed,
    prod: &'a HeadscaleConfig,
    overlay: Option<&'a serde_yaml_ng::Value>,
    host: &'a Host,
    /// Whom a candidate process runs as (`None`: as headwarden).
    account: Option<Account>,
}

/// Starts the hop's candidate (process or container) with the staging config written at
/// `config_path`; returns it and the journal data that lets recovery stop it.
async fn launch(
    h: &HopEnv<'_>,
    layout: &StagingLayout,
    config_path: &Path,
    log: &Path,
) -> Result<(Instance, Cli, serde_json::Value), DeployError> {
    let config_arg = config_path.display().to_string();
    let version = h.hop.version.to_string();
    match (&h.hop.artifact, h.host) {
        (Artifact::Binary(path), _) | (Artifact::Package { binary: path, .. }, _) => {
            let child = process::spawn_logged_env(
                path,
                &["serve", "-c", &config_arg],
                log,
                &staging_env(h.prod),
                h.account,
            )
            .map_err(|e| DeployError::Other(e.to_string()))?;
            let pid = child.id().unwrap_or(0);
            let data = serde_json::json!({"version": version, "pid": pid, "marker": config_arg});
            Ok((Instance::Child(child), Cli::binary(path), data))
        }
        (Artifact::Image { reference, digest }, Host::Container { engine, production }) => {
            let name = container::staging_name(&h.s.state_dir, h.run, h.i);
            engine.remove(&name).await?;
            // The container writes only `data/`: the config and DERP map beside it are
            // root's, read only, so it leaves nothing there that root later writes through.
            let data = layout.data();
            let mut mounts = vec![
                (layout.dir.clone(), layout.dir.clone(), true),
                (data.clone(), data, false),
            ];
            mounts.extend(
                production
                    .shared_mounts(h.prod.sqlite_path()?)
                    .into_iter()
                    .map(|(src, dst)| (src, dst, true)),
            );
            let label = container::staging_label(&h.s.state_dir, h.run);
            // The journal names the container before it exists: recovery removes it by name.
            let data = serde_json::json!({"version": version, "container": name, "image": reference, "digest": digest});
            let image = format!("{}@{digest}", ImageRef::parse(reference).repository);
            engine
                .run_detached(
                    &name,
                    &image,
                    &mounts,
                    &staging_env(h.prod),
                    &[("io.headwarden.staging", &label)],
                    &["serve", "-c", &config_arg],
                )
                .await?;
            let cli = container::cli_in(engine, &name, &image).await?;
            Ok((
                Instance::Container {
                    engine: engine.clone(),
                    name,
                },
                cli,
                data,
            ))
        }
        (Artifact::Image { reference, .. }, Host::Process) => Err(DeployError::Other(format!(
            "{reference} is an image, but headscale.install.kind is binary"
        ))),
    }
}

/// Starts one hop's candidate on the copy and waits for `/health`. `Err((reason, port
/// conflict))` when it did not become healthy (its step is closed as failed).
async fn start_hop(
    h: &HopEnv<'_>,
    layout: &mut StagingLayout,
) -> Result<Result<Started, (String, bool)>, DeployError> {
    let (s, store, hop) = (h.s, h.store, h.hop);
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
        let config = derive_staging(h.prod, layout, h.overlay);
        let config_path = layout.config();
        let text = serde_yaml_ng::to_string(&config)
            .map_err(|e| DeployError::Other(format!("serialising staging config: {e}")))?;
        // A fresh file renamed into place: a link an earlier hop's container left in the
        // read-write staging directory is replaced, never written through (security review N9).
        files::write_atomic(&config_path, text.as_bytes(), 0o644)?;
        let base_url = format!("http://127.0.0.1:{}", layout.http_port);
        let (mut instance, cli, data) = match launch(h, layout, &config_path, &log).await {
            Ok(started) => started,
            // An image that cannot even be started is the release's failure, as a crash is.
            Err(e) => return Ok(Err((error_chain(&e), false))),
        };
        let step = store.step_start(h.run, h.i as i64, Step::StageStart, &data)?;
        process::crash_point("stage_start:after");
        let t = std::time::Instant::now();
        tracing::info!(version = %hop.version, url = %base_url, attempt, "staging instance starting");
        let health = wait_healthy(&mut instance, &base_url, s.smoke.timeout, &log).await;
        let Err(e) = health else {
            return Ok(Ok(Started {
                instance,
                step,
                t,
                base_url,
                config_path,
                cli,
            }));
        };
        let mut reason = e.to_string();
        if !reason.contains("exited") {
            let tail = instance.log_tail(&log).await;
            if !tail.is_empty() {
                reason = format!("{reason}; last log lines: {tail}");
            }
        }
        instance.stop().await;
        store.step_finish(step, false, &reason, t.elapsed().as_millis())?;
        let port_conflict = reason.contains("address already in use");
        if port_conflict && attempt < 2 {
            tracing::warn!(version = %hop.version, "staging port taken meanwhile; retrying on fresh ports");
            continue;
        }
        return Ok(Err((reason, port_conflict)));
    }
}

/// Polls `/health`, failing fast once the instance has exited.
async fn wait_healthy(
    instance: &mut Instance,
    base_url: &str,
    timeout: Duration,
    log: &Path,
) -> Result<(), SmokeError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // Each round: up to half a second of health polling, then ask whether it still runs.
        let round = left.min(Duration::from_millis(500));
        match smoke::wait_healthy(base_url, round, || Ok(())).await {
            Ok(_) => return Ok(()),
            Err(SmokeError::NotHealthy { last, .. }) if left <= round => {
                return Err(SmokeError::NotHealthy {
                    secs: timeout.as_secs(),
                    last,
                })
            }
            Err(e) if left <= round => return Err(e),
            Err(_) => {}
        }
        if let Err(why) = instance.exited(log).await {
            return Err(SmokeError::Died(why));
        }
    }
}
