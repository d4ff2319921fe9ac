//! Hook steps: an admin's own command or HTTP endpoint at a chosen point of a playbook.
//!
//! - `argv`: run directly (no shell; argv[0] absolute), stdin closed, in its own process group
//!   that is killed whole on timeout, with `HEADSCALE_*` variables removed (as for every child).
//!   The run's context arrives as `HEADWARDEN_CONTEXT` (JSON) and as one `HEADWARDEN_<KEY>`
//!   variable per top-level string or number (`HEADWARDEN_FROM`, `HEADWARDEN_TO`, …). Exit 0 is
//!   success; otherwise the last lines of its output are the reason.
//! - `url`: the context as a JSON POST body; any 2xx is success.
//!
//! Secrets are never part of the context.

use std::time::Duration;

use serde_json::Value;

use crate::process::{self, ProcessError};
use crate::settings::playbook::Step;

/// Why a hook failed. The URL is never part of it (it may carry a token): only its host.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{0}")]
    Spawn(#[from] ProcessError),
    #[error("{name} failed ({status}): {tail}")]
    Command {
        name: String,
        status: std::process::ExitStatus,
        tail: String,
    },
    #[error("{0}")]
    Client(String),
    #[error("POST to {host}: {detail}")]
    Request { host: String, detail: String },
    #[error("POST to {host} answered {status}")]
    Status {
        host: String,
        status: reqwest::StatusCode,
    },
    #[error("hook has neither argv nor url")]
    Empty,
}

/// Runs one hook step with `context`; `Ok(summary)` or why it failed.
pub async fn run(step: &Step, context: &Value) -> Result<String, HookError> {
    let timeout = step.timeout().unwrap_or(Duration::from_secs(60));
    if let Some(argv) = &step.argv {
        let env = environment(context);
        let out = process::run_env(argv, &env, timeout).await?;
        let name = argv.first().map(String::as_str).unwrap_or("");
        if out.success() {
            Ok(format!("{name}: ok"))
        } else {
            Err(HookError::Command {
                name: name.to_string(),
                status: out.status,
                tail: out.tail(),
            })
        }
    } else if let Some(url) = &step.url {
        post(url, context, timeout).await
    } else {
        Err(HookError::Empty)
    }
}

fn environment(context: &Value) -> Vec<(String, String)> {
    let mut env = vec![("HEADWARDEN_CONTEXT".to_string(), context.to_string())];
    if let Some(o) = context.as_object() {
        for (k, v) in o {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => continue,
            };
            let key: String = k
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            env.push((format!("HEADWARDEN_{key}"), value));
        }
    }
    env
}

async fn post(url: &str, context: &Value, timeout: Duration) -> Result<String, HookError> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| HookError::Client(e.without_url().to_string()))?;
    // The URL may carry a token; errors are reported without it.
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let resp = client
        .post(url)
        .header(
            "user-agent",
            concat!("headwarden/", env!("CARGO_PKG_VERSION")),
        )
        .header("content-type", "application/json")
        .body(context.to_string())
        .send()
        .await
        .map_err(|e| HookError::Request {
            host: host.clone(),
            detail: e.without_url().to_string(),
        })?;
    let status = resp.status();
    if status.is_success() {
        Ok(format!("POST to {host}: {status}"))
    } else {
        Err(HookError::Status { host, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_becomes_environment() {
        let env = environment(&serde_json::json!({
            "from": "0.26.1", "to": "0.27.0", "run": 7, "dry-run": false, "path": ["0.27.0"]
        }));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HEADWARDEN_FROM"), Some("0.26.1"));
        assert_eq!(get("HEADWARDEN_RUN"), Some("7"));
        assert_eq!(get("HEADWARDEN_DRY_RUN"), Some("false"));
        assert_eq!(
            get("HEADWARDEN_PATH"),
            None,
            "arrays only in HEADWARDEN_CONTEXT"
        );
        assert!(get("HEADWARDEN_CONTEXT").is_some_and(|c| c.contains("\"path\"")));
    }
}
