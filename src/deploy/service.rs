//! Service control for production: systemd through `systemctl`, or admin-given start/stop argv
//! for hosts without systemd (and for tests).

use std::time::Duration;

use crate::compose::{ComposeError, ComposeFile, Engine, EngineError};
use crate::process::{self, ProcessError};
use crate::settings::{ComposeInstall, ServiceSettings};

const SERVICE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the service manager did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Spawn(#[from] ProcessError),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Compose(#[from] ComposeError),
    /// The compose service's container is not running.
    #[error("the container of compose service {0} is not running")]
    NotRunning(String),
    #[error("`{argv}` exited with {code}: {tail}")]
    Exited {
        argv: String,
        code: i32,
        tail: String,
    },
}

/// What the service manager says about production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    Running,
    Stopped,
    /// `kind: command` without a `status` argv: there is no way to ask.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Service {
    settings: ServiceSettings,
}

impl Service {
    pub fn new(settings: &ServiceSettings) -> Self {
        Self {
            settings: settings.clone(),
        }
    }

    async fn run(&self, action: &str) -> Result<(), ServiceError> {
        let argv: Vec<String> = match (&self.settings, action) {
            (ServiceSettings::Compose(c), "is-active") => return compose_running(c).await,
            (ServiceSettings::Compose(c), "start") => compose_argv(
                c,
                &["up", "-d", "--force-recreate", "--no-deps", &c.service],
            ),
            (ServiceSettings::Compose(c), _) => compose_argv(c, &[action, &c.service]),
            (ServiceSettings::Systemd { unit }, _) => {
                vec!["systemctl".into(), action.into(), unit.clone()]
            }
            (ServiceSettings::Command { start, .. }, "start") => start.clone(),
            (ServiceSettings::Command { stop, .. }, "stop") => stop.clone(),
            (
                ServiceSettings::Command {
                    status: Some(status),
                    ..
                },
                "is-active",
            ) => status.clone(),
            (ServiceSettings::Command { .. }, _) => return Ok(()),
        };
        let out = process::run(&argv, SERVICE_TIMEOUT).await?;
        if out.success() {
            Ok(())
        } else {
            Err(ServiceError::Exited {
                argv: argv.join(" "),
                code: out.status.code().unwrap_or(-1),
                tail: out.tail(),
            })
        }
    }

    pub async fn stop(&self) -> Result<(), ServiceError> {
        self.run("stop").await
    }

    pub async fn start(&self) -> Result<(), ServiceError> {
        self.run("start").await
    }

    /// `Ok` while the service runs (or when there is no way to ask).
    pub async fn is_running(&self) -> Result<(), ServiceError> {
        self.run("is-active").await
    }

    /// Asks the service manager (`systemctl is-active`, or the `status` argv) whether production
    /// runs: exit 0 is running, anything else stopped.
    pub async fn state(&self) -> ServiceState {
        if let ServiceSettings::Command { status: None, .. } = &self.settings {
            return ServiceState::Unknown;
        }
        match self.run("is-active").await {
            Ok(()) => ServiceState::Running,
            Err(_) => ServiceState::Stopped,
        }
    }

    pub fn describe(&self) -> String {
        match &self.settings {
            ServiceSettings::Systemd { unit } => format!("systemd unit {unit}"),
            ServiceSettings::Command { .. } => "service commands".to_string(),
            ServiceSettings::Compose(c) => {
                format!("compose service {} of {}", c.service, c.file.display())
            }
        }
    }
}

/// `<compose command> -f <file> <args…>`.
fn compose_argv(c: &ComposeInstall, args: &[&str]) -> Vec<String> {
    let mut argv = c.command.clone();
    argv.push("-f".into());
    argv.push(c.file.display().to_string());
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

/// The service's container runs (asked of the engine: compose commands' `ps` output differs
/// between implementations).
async fn compose_running(c: &ComposeInstall) -> Result<(), ServiceError> {
    let file = ComposeFile::load(&c.file)?;
    let name = file.service(&c.service)?.container_name;
    match Engine::new(c.engine.clone())
        .compose_container(&file.dir(), &c.service, name.as_deref())
        .await?
    {
        Some(info) if info.running => Ok(()),
        _ => Err(ServiceError::NotRunning(c.service.clone())),
    }
}
