//! Test fixture: one local receiver that answers like each chat service's documented API.
//!
//! The first path segment names the service (tests set `endpoint: http://ADDR/<service>`):
//! slack, discord, teams, mattermost, matrix, telegram, ntfy, gotify, webhook. Requests that the
//! real service would refuse get that service's error status. Accepted messages are appended to
//! `DIR/messages.jsonl`; every request to `DIR/requests.log`. `DIR/inject` holds one fault per
//! line, consumed by successive requests: `503`, `429 SECONDS` (with Retry-After; logged as
//! `... 429 at <unix ms>`), `hang SECONDS`
//! (accept and record, then answer late). With `DIR/hmac-key`, webhook signatures are checked.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

struct Sink {
    dir: PathBuf,
    matrix_txns: Mutex<HashSet<String>>,
}

pub async fn chat_sink(a: crate::fixtures::ServerArgs) -> Result<()> {
    std::fs::create_dir_all(&a.dir)?;
    let (listener, _) = crate::fixtures::bind_and_publish(&a).await?;
    let sink = Arc::new(Sink {
        dir: a.dir,
        matrix_txns: Mutex::new(HashSet::new()),
    });
    let app = Router::new().fallback(handle).with_state(sink);
    axum::serve(listener, app).await?;
    Ok(())
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn append(sink: &Sink, file: &str, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sink.dir.join(file))
    {
        let _ = writeln!(f, "{line}");
    }
}

fn header(h: &HeaderMap, k: &str) -> String {
    h.get(k)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn nonempty(v: &Value, ptr: &str) -> bool {
    v.pointer(ptr)
        .is_some_and(|x| x.as_str().is_some_and(|s| !s.is_empty()) || x.is_array() || x.is_object())
}

/// What the real service would answer: Ok(status, body) to accept, Err(status, body) to refuse.
fn validate(
    sink: &Sink,
    service: &str,
    method: &Method,
    path: &[&str],
    headers: &HeaderMap,
    raw: &[u8],
    body: &Value,
) -> std::result::Result<(u16, String, bool), (u16, String)> {
    let json_ct = header(headers, "content-type").starts_with("application/json");
    let post = method == Method::POST;
    match service {
        "slack" => {
            if !post || path.len() != 4 || path[0] != "services" {
                return Err((404, "no_service".into()));
            }
            if !json_ct || !(nonempty(body, "/text") || nonempty(body, "/blocks")) {
                return Err((400, "invalid_payload".into()));
            }
            Ok((200, "ok".into(), false))
        }
        "discord" => {
            if !post || path.len() != 4 || path[..2] != ["api", "webhooks"] {
                return Err((
                    404,
                    r#"{"message": "Unknown Webhook", "code": 10015}"#.into(),
                ));
            }
            let embeds = body.get("embeds").and_then(Value::as_array);
            if !nonempty(body, "/content") && embeds.is_none_or(|e| e.is_empty()) {
                return Err((
                    400,
                    r#"{"message": "Cannot send an empty message", "code": 50006}"#.into(),
                ));
            }
            if embeds.is_some_and(|e| {
                e.len() > 10
                    || e.iter()
                        .any(|x| x["title"].as_str().unwrap_or("").chars().count() > 256)
            }) {
                return Err((
                    400,
                    r#"{"message": "Invalid Form Body", "code": 50035}"#.into(),
                ));
            }
            Ok((204, String::new(), false))
        }
        "teams" => {
            let card = &body["attachments"][0];
            if !post
                || body["type"] != "message"
                || card["contentType"] != "application/vnd.microsoft.card.adaptive"
                || card["content"]["type"] != "AdaptiveCard"
            {
                return Err((400, "Bad Request: not an adaptive card message".into()));
            }
            Ok((202, String::new(), false))
        }
        "mattermost" => {
            if !post || path.len() != 2 || path[0] != "hooks" {
                return Err((404, "Unable to find the webhook".into()));
            }
            if !nonempty(body, "/text") {
                return Err((400, "Unable to parse incoming data".into()));
            }
            Ok((200, "ok".into(), false))
        }
        "matrix" => {
            // PUT /_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId}
            if method != Method::PUT
                || path.len() != 8
                || path[..4] != ["_matrix", "client", "v3", "rooms"]
                || path[5] != "send"
            {
                return Err((404, r#"{"errcode": "M_UNRECOGNIZED"}"#.into()));
            }
            let auth = header(headers, "authorization");
            let Some(token) = auth.strip_prefix("Bearer ") else {
                return Err((401, r#"{"errcode": "M_MISSING_TOKEN"}"#.into()));
            };
            if !nonempty(body, "/msgtype") || !nonempty(body, "/body") {
                return Err((400, r#"{"errcode": "M_BAD_JSON"}"#.into()));
            }
            // Transaction ids are idempotent per access token: a resend is not a new message.
            let dup = !sink
                .matrix_txns
                .lock()
                .map(|mut t| t.insert(format!("{token}/{}", path[7])))
                .unwrap_or(true);
            Ok((200, format!(r#"{{"event_id": "$ev-{}"}}"#, path[7]), dup))
        }
        "telegram" => {
            if !post || path.len() != 2 || !path[0].starts_with("bot") || path[1] != "sendMessage" {
                return Err((
                    404,
                    r#"{"ok": false, "error_code": 404, "description": "Not Found"}"#.into(),
                ));
            }
            if body.get("chat_id").is_none() || !nonempty(body, "/text") {
                return Err((400, r#"{"ok": false, "error_code": 400, "description": "Bad Request: message text is empty"}"#.into()));
            }
            Ok((
                200,
                r#"{"ok": true, "result": {"message_id": 1}}"#.into(),
                false,
            ))
        }
        "ntfy" => {
            if !post || !path.is_empty() || !json_ct || !nonempty(body, "/topic") {
                return Err((400, r#"{"code": 40001, "error": "invalid request"}"#.into()));
            }
            Ok((200, r#"{"id": "x", "event": "message"}"#.into(), false))
        }
        "gotify" => {
            if !post || path != ["message"] {
                return Err((404, "not found".into()));
            }
            if header(headers, "x-gotify-key").is_empty() {
                return Err((401, r#"{"error": "Unauthorized"}"#.into()));
            }
            if !nonempty(body, "/message") {
                return Err((400, r#"{"error": "Bad Request"}"#.into()));
            }
            Ok((200, r#"{"id": 1}"#.into(), false))
        }
        "webhook" => {
            if let Ok(key) = std::fs::read_to_string(sink.dir.join("hmac-key")) {
                let ts = header(headers, "x-headwarden-timestamp");
                let mut mac = Hmac::<Sha256>::new_from_slice(key.trim().as_bytes())
                    .map_err(|_| (500, "bad key".to_string()))?;
                mac.update(ts.as_bytes());
                mac.update(b".");
                mac.update(raw);
                let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                if header(headers, "x-headwarden-signature") != want {
                    return Err((401, "bad signature".into()));
                }
            }
            Ok((200, "{}".into(), false))
        }
        _ => Err((404, "unknown service".into())),
    }
}

async fn handle(
    State(sink): State<Arc<Sink>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let segs: Vec<String> = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let service = segs.first().cloned().unwrap_or_default();
    let path: Vec<&str> = segs.iter().skip(1).map(String::as_str).collect();
    let inj = crate::fixtures::pop_injection(&sink.dir);
    let mut hang = 0;
    match inj
        .as_deref()
        .map(|s| s.split_whitespace().collect::<Vec<_>>())
    {
        Some(v) if v.first() == Some(&"503") => {
            append(
                &sink,
                "requests.log",
                &format!("{service} {} 503", uri.path()),
            );
            return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
        }
        Some(v) if v.first() == Some(&"429") => {
            append(
                &sink,
                "requests.log",
                &format!("{service} {} 429 at {}", uri.path(), now_ms()),
            );
            let secs = v.get(1).copied().unwrap_or("1").to_string();
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("Retry-After", secs)],
                "slow down",
            )
                .into_response();
        }
        Some(v) if v.first() == Some(&"hang") => {
            hang = v.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
        }
        _ => {}
    }
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let (status, text) = match validate(&sink, &service, &method, &path, &headers, &raw, &body) {
        Ok((status, text, duplicate)) => {
            let kept: serde_json::Map<String, Value> = headers
                .iter()
                .filter(|(k, _)| {
                    let k = k.as_str();
                    k == "content-type" || k == "authorization" || k.starts_with("x-")
                })
                .map(|(k, v)| (k.as_str().to_string(), json!(v.to_str().unwrap_or(""))))
                .collect();
            append(
                &sink,
                "messages.jsonl",
                &json!({"service": service, "method": method.as_str(), "path": uri.path(),
                        "headers": kept, "body": body, "raw": String::from_utf8_lossy(&raw),
                        "duplicate": duplicate, "received_ms": now_ms()})
                .to_string(),
            );
            (status, text)
        }
        Err((status, text)) => (status, text),
    };
    append(
        &sink,
        "requests.log",
        &format!("{service} {} {status}", uri.path()),
    );
    if hang > 0 {
        tokio::time::sleep(std::time::Duration::from_secs(hang)).await;
    }
    (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), text).into_response()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}
