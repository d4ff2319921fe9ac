//! Headscale's unauthenticated HTTP endpoints: `/health`, `/version` (0.27+), `/key?v=`.

use std::time::Duration;

use semver::Version;

use super::parse_version_text;
use crate::error::error_chain;

/// Capability version sent to `/key`: a current client's (130 is Tailscale v1.90). From 0.29.3 a
/// version below the server's floor (113 for 0.29.x, 116 expected for 0.30) gets 400
/// "unsupported client version", and older servers answer ≥ 39 with the key as JSON.
const CAPABILITY_VERSION: u32 = 130;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: {detail}")]
    Request { url: String, detail: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

async fn get(client: &reqwest::Client, url: String) -> Result<(u16, String), HttpError> {
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| HttpError::Request {
            url: url.clone(),
            detail: error_chain(&e),
        })?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| HttpError::Request {
        url: url.clone(),
        detail: error_chain(&e),
    })?;
    Ok((status, body))
}

/// `/health` passes: 200 with `{"status":"pass"}` (or the pre-0.16 `{"healthy":"ok"}`).
pub async fn health(client: &reqwest::Client, base: &str) -> Result<(), HttpError> {
    let url = format!("{base}/health");
    let (status, body) = get(client, url.clone()).await?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let pass = v.get("status").and_then(|s| s.as_str()) == Some("pass")
        || v.get("healthy").and_then(|s| s.as_str()) == Some("ok");
    if status == 200 && pass {
        Ok(())
    } else {
        Err(HttpError::Status {
            url,
            status,
            body: body.chars().take(200).collect(),
        })
    }
}

/// `/version`; `Ok(None)` when the server predates it (404, before 0.27).
pub async fn version(client: &reqwest::Client, base: &str) -> Result<Option<Version>, HttpError> {
    let url = format!("{base}/version");
    let (status, body) = get(client, url.clone()).await?;
    match status {
        200 => parse_version_text(&body)
            .map(Some)
            .ok_or(HttpError::Status {
                url,
                status,
                body: body.chars().take(200).collect(),
            }),
        404 => Ok(None),
        _ => Err(HttpError::Status {
            url,
            status,
            body: body.chars().take(200).collect(),
        }),
    }
}

/// The Noise public key from `/key?v=…`.
pub async fn noise_key(client: &reqwest::Client, base: &str) -> Result<String, HttpError> {
    let url = format!("{base}/key?v={CAPABILITY_VERSION}");
    let (status, body) = get(client, url.clone()).await?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match (status, v.get("publicKey").and_then(|k| k.as_str())) {
        (200, Some(k)) => Ok(k.to_string()),
        _ => Err(HttpError::Status {
            url,
            status,
            body: body.chars().take(200).collect(),
        }),
    }
}
