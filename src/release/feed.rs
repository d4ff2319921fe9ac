//! The GitHub releases feed, through octocrab, with conditional requests and back-off.
//!
//! Procedure for one poll:
//! 1. GET `{api_url}/repos/{owner}/{repo}/releases?per_page=100` with `If-None-Match` set to the
//!    ETag cached in the state store (a 304 costs no rate limit on GitHub).
//! 2. 304: reuse the cached body. 200: cache body + ETag.
//! 3. 5xx or a connection error: retry with exponential back-off (3 retries).
//!    429 / 403-with-`x-ratelimit-remaining: 0`: wait for `Retry-After` / `x-ratelimit-reset` when
//!    that is at most [`MAX_RATE_WAIT`] away, otherwise fail with the reset time and a hint.
//! 4. Convert wire JSON to domain [`Release`]s: drafts dropped, tags parsed strictly, assets with
//!    path-like names dropped.

use std::time::Duration;

use http::header::HeaderMap;
use http_body_util::BodyExt;
use serde::Deserialize;

use super::{parse_tag, Asset, Release};
use crate::error::error_chain;
use crate::settings::ReleaseSettings;
use crate::state;
use crate::state::Store;

/// Longest rate-limit wait headwarden sits through inside one run.
pub const MAX_RATE_WAIT: Duration = Duration::from_secs(60);
const MAX_BODY: usize = 16 * 1024 * 1024;
const RETRIES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot reach the release feed {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the release feed {url} is rate limited until {reset}")]
    RateLimited { url: String, reset: String },
    #[error("the release feed {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("the release feed {url} sent malformed JSON: {detail}")]
    Malformed { url: String, detail: String },
    #[error("release feed cache")]
    State(#[from] state::StateError),
}

impl FeedError {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            FeedError::RateLimited { .. } => Some("set release.token_file to a GitHub token (5000 requests/hour instead of 60), or wait"),
            FeedError::Unreachable { .. } => Some("check release.api_url and the network; headwarden retries on its next run"),
            FeedError::Status { status: 401, .. } => Some("the token in release.token_file was refused; create a new one"),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct FeedResult {
    pub releases: Vec<Release>,
    /// The server answered 304 (the feed is unchanged since the last poll).
    pub not_modified: bool,
    pub requests: u32,
    pub rate_remaining: Option<u64>,
    /// Entries ignored, with the reason (drafts, foreign tags, hostile asset names).
    pub ignored: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct WireRelease {
    tag_name: String,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    prerelease: bool,
    published_at: Option<String>,
    body: Option<String>,
    html_url: Option<String>,
    #[serde(default)]
    assets: Vec<WireAsset>,
}

#[derive(Debug, Deserialize)]
struct WireAsset {
    name: String,
    size: u64,
    digest: Option<String>,
    browser_download_url: String,
    state: Option<String>,
}

pub fn feed_url(s: &ReleaseSettings) -> String {
    format!(
        "{}/repos/{}/{}/releases?per_page=100",
        s.api_url, s.owner, s.repo
    )
}

pub async fn fetch(settings: &ReleaseSettings, store: &Store) -> Result<FeedResult, FeedError> {
    let url = feed_url(settings);
    let unreachable = |detail: String| FeedError::Unreachable {
        url: url.clone(),
        detail,
    };
    let mut builder = octocrab::Octocrab::builder()
        .base_uri(settings.api_url.as_str())
        .map_err(|e| unreachable(e.to_string()))?
        .set_connect_timeout(Some(Duration::from_secs(10)))
        .set_read_timeout(Some(settings.feed_timeout));
    if let Some(token) = &settings.token {
        builder = builder.personal_token(token.expose().to_string());
    }
    let client = builder.build().map_err(|e| unreachable(e.to_string()))?;
    let cached = store.feed_cache(&url)?;

    let mut requests = 0;
    let mut attempt = 0;
    let (status, headers, body) = loop {
        attempt += 1;
        requests += 1;
        let h = request_headers(cached.as_ref().and_then(|(e, _)| e.as_deref()));
        let result = client._get_with_headers(url.as_str(), Some(h)).await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                if attempt > RETRIES {
                    return Err(unreachable(error_chain(&e)));
                }
                tracing::warn!(url = %url, attempt, error = %error_chain(&e), "release feed unreachable, retrying");
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if let Some(wait) = rate_limit_wait(status, &headers) {
            if attempt > RETRIES || wait > MAX_RATE_WAIT {
                return Err(FeedError::RateLimited {
                    url: url.clone(),
                    reset: describe_reset(&headers, wait),
                });
            }
            tracing::warn!(url = %url, status, wait_ms = wait.as_millis() as u64, "release feed rate limited, waiting");
            tokio::time::sleep(wait).await;
            continue;
        }
        if status >= 500 {
            if attempt > RETRIES {
                return Err(FeedError::Status {
                    url: url.clone(),
                    status,
                });
            }
            tracing::warn!(url = %url, status, attempt, "release feed server error, retrying");
            tokio::time::sleep(backoff(attempt)).await;
            continue;
        }
        let body = if status == 304 {
            String::new()
        } else {
            // The whole body within feed_timeout: a server that drips bytes cannot hold the run.
            tokio::time::timeout(settings.feed_timeout, read_capped(response, &url))
                .await
                .map_err(|_| {
                    unreachable(format!(
                        "the response body did not arrive within release.feed_timeout ({}s)",
                        settings.feed_timeout.as_secs()
                    ))
                })??
        };
        break (status, headers, body);
    };
    let rate_remaining = headers
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok());

    let (not_modified, body) = checked_body(status, body, cached, &url)?;
    let (releases, ignored) = parse_releases(&body).map_err(|e| FeedError::Malformed {
        url: url.clone(),
        detail: e.to_string(),
    })?;
    if !not_modified {
        let etag = headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok());
        store.store_feed_cache(&url, etag, &body)?;
    }
    Ok(FeedResult {
        releases,
        not_modified,
        requests,
        rate_remaining,
        ignored,
    })
}

/// GitHub's JSON media type and API version, and the cached ETag for a conditional request.
fn request_headers(etag: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/vnd.github+json"),
    );
    h.insert(
        "x-github-api-version",
        http::HeaderValue::from_static("2022-11-28"),
    );
    if let Some(etag) = etag {
        if let Ok(v) = http::HeaderValue::from_str(etag) {
            h.insert(http::header::IF_NONE_MATCH, v);
        }
    }
    h
}

/// 304 → the cached body; 200 → the body within the size limit; anything else is an error.
fn checked_body(
    status: u16,
    body: String,
    cached: Option<(Option<String>, String)>,
    url: &str,
) -> Result<(bool, String), FeedError> {
    let url = url.to_string();
    Ok(match status {
        304 => match cached {
            Some((_, body)) => (true, body),
            None => {
                return Err(FeedError::Malformed {
                    url,
                    detail: "304 Not Modified without a cached copy".into(),
                })
            }
        },
        200 => {
            if body.len() > MAX_BODY {
                return Err(FeedError::Malformed {
                    url,
                    detail: format!(
                        "response of {} bytes exceeds the {MAX_BODY}-byte limit",
                        body.len()
                    ),
                });
            }
            (false, body)
        }
        other => return Err(FeedError::Status { url, status: other }),
    })
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 * (1 << attempt.min(6)))
}

fn rate_limit_wait(status: u16, headers: &HeaderMap) -> Option<Duration> {
    let get = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    if status == 429
        || (status == 403
            && (get("retry-after").is_some() || get("x-ratelimit-remaining") == Some(0)))
    {
        if let Some(secs) = get("retry-after") {
            return Some(Duration::from_secs(secs));
        }
        if let Some(reset) = get("x-ratelimit-reset") {
            let now = state::now() as u64;
            return Some(Duration::from_secs(reset.saturating_sub(now) + 1));
        }
        return Some(Duration::from_secs(60));
    }
    None
}

fn describe_reset(headers: &HeaderMap, wait: Duration) -> String {
    let reset = headers
        .get("x-ratelimit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i64>().ok());
    match reset.and_then(|r| time::OffsetDateTime::from_unix_timestamp(r).ok()) {
        Some(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        None => format!("{}s from now", wait.as_secs()),
    }
}

fn parse_time(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Wire JSON to domain releases (pure; the fuzz/property tests target this).
pub fn parse_releases(body: &str) -> Result<(Vec<Release>, Vec<String>), serde_json::Error> {
    let wire: Vec<WireRelease> = serde_json::from_str(body)?;
    let mut out = Vec::new();
    let mut ignored = Vec::new();
    for w in wire {
        if w.draft {
            ignored.push(format!("{}: draft", w.tag_name));
            continue;
        }
        let Some(version) = parse_tag(&w.tag_name) else {
            ignored.push(format!("{:?}: not a release tag", w.tag_name));
            continue;
        };
        let Some(published_at) = w.published_at.as_deref().and_then(parse_time) else {
            ignored.push(format!("{}: no publication time", w.tag_name));
            continue;
        };
        let mut assets = Vec::new();
        for a in w.assets {
            if a.name.is_empty()
                || a.name.contains('/')
                || a.name.contains('\\')
                || a.name.contains("..")
                || a.name.starts_with('.')
            {
                ignored.push(format!(
                    "{}: asset with hostile name {:?}",
                    w.tag_name, a.name
                ));
                continue;
            }
            assets.push(Asset {
                name: a.name,
                size: a.size,
                sha256: a.digest,
                url: a.browser_download_url,
                uploaded: a.state.as_deref().is_none_or(|s| s == "uploaded"),
            });
        }
        out.push(Release {
            tag: w.tag_name,
            version,
            prerelease: w.prerelease,
            published_at: Some(published_at),
            notes: w.body.unwrap_or_default(),
            url: w.html_url.unwrap_or_default(),
            assets,
        });
    }
    Ok((out, ignored))
}

/// The response body, read with a running cap: a hostile or broken feed cannot make headwarden
/// buffer more than [`MAX_BODY`] bytes (a `Content-Length` above it is refused unread).
async fn read_capped<B>(response: http::Response<B>, url: &str) -> Result<String, FeedError>
where
    B: hyper::body::Body<Data = hyper::body::Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || FeedError::Malformed {
        url: url.to_string(),
        detail: format!("response exceeds the {MAX_BODY}-byte limit"),
    };
    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(response.into_body(), MAX_BODY);
    let bytes = match limited.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(FeedError::Unreachable {
                url: url.to_string(),
                detail: e.to_string(),
            })
        }
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| FeedError::Malformed {
        url: url.to_string(),
        detail: "the response is not UTF-8".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Frames =
        std::vec::IntoIter<Result<hyper::body::Frame<hyper::body::Bytes>, std::io::Error>>;
    type Streamed = http::Response<http_body_util::StreamBody<tokio_stream::Iter<Frames>>>;

    /// A body streamed in 1 MiB frames without a `Content-Length`.
    fn streamed(mib: usize) -> Streamed {
        let frames: Vec<_> = (0..mib)
            .map(|_| {
                Ok(hyper::body::Frame::data(hyper::body::Bytes::from(
                    vec![b' '; 1 << 20],
                )))
            })
            .collect();
        http::Response::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)))
    }

    #[tokio::test]
    async fn bodies_are_capped_while_read_and_a_large_declared_length_is_refused_unread() {
        let ok = read_capped(streamed(2), "http://127.0.0.1/r")
            .await
            .expect("2 MiB is fine");
        assert_eq!(ok.len(), 2 << 20);
        let err = read_capped(streamed(17), "http://127.0.0.1/r")
            .await
            .expect_err("17 MiB is over the cap");
        assert!(
            err.to_string().contains("exceeds the 16777216-byte limit"),
            "{err}"
        );
        // Declared too large: refused before a byte is read (the body would fail if polled).
        let mut r = streamed(0);
        r.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from_static("17000000"),
        );
        let err = read_capped(r, "http://127.0.0.1/r")
            .await
            .expect_err("a declared 17 MB is over the cap");
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[test]
    fn parses_and_filters_wire_json() {
        let body = r#"[
          {"tag_name":"v0.29.2","draft":false,"prerelease":false,"published_at":"2026-07-01T00:00:00Z","assets":[
             {"name":"headscale_0.29.2_linux_amd64","size":10,"digest":"sha256:aa","browser_download_url":"https://x/a","state":"uploaded"},
             {"name":"../../etc/passwd","size":1,"browser_download_url":"https://x/b"}]},
          {"tag_name":"v0.30.0","draft":true,"published_at":null},
          {"tag_name":"v0.28-fix","published_at":"2026-01-01T00:00:00Z"}
        ]"#;
        let (rels, ignored) = parse_releases(body).expect("parse");
        assert_eq!(rels.len(), 1);
        assert_eq!(rels[0].assets.len(), 1);
        assert_eq!(ignored.len(), 3, "{ignored:?}");
        assert!(parse_releases("{").is_err());
        assert!(parse_releases(r#"[{"tag_name": 5}]"#).is_err());
    }

    #[test]
    fn rate_limit_headers() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "2".parse().expect("h"));
        assert_eq!(rate_limit_wait(429, &h), Some(Duration::from_secs(2)));
        assert_eq!(rate_limit_wait(500, &h), None);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", "0".parse().expect("h"));
        h.insert(
            "x-ratelimit-reset",
            (crate::state::now() + 3600).to_string().parse().expect("h"),
        );
        assert!(rate_limit_wait(403, &h).expect("wait") > MAX_RATE_WAIT);
        assert_eq!(
            rate_limit_wait(403, &HeaderMap::new()),
            None,
            "a plain 403 is not a rate limit"
        );
    }
}
