//! The stand-in's `/api/v1` surface for nodes, users, pre-auth keys and API keys, per version
//! (shared/HEADSCALE.md §1): protojson (camelCase, uint64 as strings, RFC 3339 times);
//! tags as field `tags` from 0.28, `forcedTags`/`validTags`/`invalidTags` before; expire via
//! query (`expiry` 0.27.1+, `disableExpiry` 0.29) up to 0.29 and via JSON body in 0.30;
//! pre-auth keys listed/expired by id from 0.28, by user (+key) before; key formats per version.
//! An API request without `expiration` stores the zero time, as upstream does.
//!
//! `POST /api/v1/debug/register` (socket only) acts as a client: `tailscale up --auth-key`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{params, OptionalExtension, Row};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::server::{now_rfc3339, AppError, Shared, SimVersion};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/node", get(list_nodes))
        .route("/api/v1/node/{id}", get(get_node).delete(delete_node))
        .route("/api/v1/node/{id}/expire", post(expire_node))
        .route("/api/v1/preauthkey", get(list_preauth).post(create_preauth))
        .route("/api/v1/preauthkey/expire", post(expire_preauth))
        .route("/api/v1/apikey", get(list_apikeys).post(create_apikey))
        .route("/api/v1/apikey/expire", post(expire_apikey))
        .route("/api/v1/policy", get(get_policy).put(set_policy))
        .route("/api/v1/debug/register", post(register))
        .route("/api/v1/debug/apikey", post(create_apikey))
}

fn bad_request(msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"code": 3, "message": msg, "details": []})),
    )
        .into_response()
}

fn not_found(msg: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"code": 5, "message": msg, "details": []})),
    )
        .into_response()
}

fn random_hex(n: usize) -> String {
    let mut out = String::new();
    let mut seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    while out.len() < n {
        let h = hex::encode(Sha256::digest(seed.as_bytes()));
        seed = h.clone();
        out.push_str(&h);
    }
    out.truncate(n);
    out
}

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

fn is_past(s: &Option<String>) -> bool {
    s.as_deref()
        .and_then(parse_time)
        .is_some_and(|t| t <= time::OffsetDateTime::now_utc())
}

const NODE_SQL: &str = "SELECT n.id, n.machine_key, n.node_key, n.hostname, n.given_name, n.ipv4, n.created_at, n.expiry,
        u.id, u.name, u.created_at, n.last_seen, n.tags, n.register_method FROM nodes n LEFT JOIN users u ON u.id = n.user_id";

fn node_json(r: &Row, v: &SimVersion) -> rusqlite::Result<Value> {
    let tags: Vec<String> = serde_json::from_str(
        &r.get::<_, Option<String>>(12)?
            .unwrap_or_else(|| "[]".into()),
    )
    .unwrap_or_default();
    let tagged = !tags.is_empty();
    let user = if tagged && v.minor >= 28 {
        json!({"id": "2147455555", "name": "tagged-devices"})
    } else {
        json!({"id": r.get::<_, Option<i64>>(8)?.unwrap_or(0).to_string(), "name": r.get::<_, Option<String>>(9)?.unwrap_or_default(), "createdAt": r.get::<_, Option<String>>(10)?})
    };
    let mut node = json!({
        "id": r.get::<_, i64>(0)?.to_string(),
        "machineKey": r.get::<_, String>(1)?,
        "nodeKey": r.get::<_, String>(2)?,
        "discoKey": "discokey:0000",
        "ipAddresses": [r.get::<_, Option<String>>(5)?.unwrap_or_default()],
        "name": r.get::<_, String>(3)?,
        "givenName": r.get::<_, String>(4)?,
        "user": user,
        "createdAt": r.get::<_, String>(6)?,
        "registerMethod": r.get::<_, Option<String>>(13)?.unwrap_or_else(|| "REGISTER_METHOD_AUTH_KEY".into()),
        "online": false,
        "approvedRoutes": [], "availableRoutes": [], "subnetRoutes": [],
    });
    if let Some(exp) = r.get::<_, Option<String>>(7)? {
        node["expiry"] = json!(exp);
    }
    if let Some(seen) = r.get::<_, Option<String>>(11)? {
        node["lastSeen"] = json!(seen);
    }
    if v.minor >= 28 {
        node["tags"] = json!(tags);
    } else {
        node["forcedTags"] = json!(tags);
        node["validTags"] = json!(tags);
        node["invalidTags"] = json!([]);
    }
    Ok(node)
}

fn load_node(s: &Shared, id: i64) -> Result<Option<Value>, AppError> {
    let db = s.db.lock().map_err(|_| AppError("db lock".into()))?;
    Ok(db
        .query_row(&format!("{NODE_SQL} WHERE n.id = ?1"), [id], |r| {
            node_json(r, &s.version)
        })
        .optional()?)
}

pub(crate) async fn list_nodes(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, AppError> {
    let db = s.db.lock().map_err(|_| AppError("db lock".into()))?;
    let (sql, user) = match q.get("user").filter(|u| !u.is_empty()) {
        Some(u) => (
            format!("{NODE_SQL} WHERE u.name = ?1 ORDER BY n.id"),
            Some(u.clone()),
        ),
        None => (format!("{NODE_SQL} ORDER BY n.id"), None),
    };
    let mut stmt = db.prepare(&sql)?;
    let nodes: Vec<Value> = match user {
        Some(u) => stmt
            .query_map([u], |r| node_json(r, &s.version))?
            .collect::<Result<_, _>>()?,
        None => stmt
            .query_map([], |r| node_json(r, &s.version))?
            .collect::<Result<_, _>>()?,
    };
    Ok(Json(json!({ "nodes": nodes })))
}

pub(crate) async fn get_node(
    State(s): State<Shared>,
    Path(id): Path<i64>,
) -> Result<Response, AppError> {
    Ok(match load_node(&s, id)? {
        Some(n) => Json(json!({ "node": n })).into_response(),
        None => not_found("node not found"),
    })
}

pub(crate) async fn delete_node(
    State(s): State<Shared>,
    Path(id): Path<i64>,
) -> Result<Response, AppError> {
    let db = s.db.lock().map_err(|_| AppError("db lock".into()))?;
    let n = db.execute("DELETE FROM nodes WHERE id = ?1", [id])?;
    Ok(if n == 0 {
        not_found("node not found")
    } else {
        Json(json!({})).into_response()
    })
}

pub(crate) async fn expire_node(
    State(s): State<Shared>,
    Path(id): Path<i64>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    // ≤0.29: grpc-gateway maps only query parameters (a body is ignored); 0.30: JSON body only.
    let (expiry, disable) = if s.version.minor >= 30 {
        let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (
            b.get("expiry").and_then(|v| v.as_str()).map(String::from),
            b.get("disableExpiry")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        )
    } else {
        let expiry = if (s.version.minor, s.version.patch) >= (27, 1) {
            q.get("expiry").cloned()
        } else {
            None
        };
        let disable = s.version.minor >= 29 && q.get("disableExpiry").is_some_and(|v| v == "true");
        (expiry, disable)
    };
    if expiry.is_some() && disable {
        return Ok(bad_request("cannot set both expiry and disable_expiry"));
    }
    let value: Option<String> = if disable {
        None
    } else {
        match expiry {
            Some(e) => match parse_time(&e) {
                Some(_) => Some(e),
                None => return Ok(bad_request("invalid expiry")),
            },
            None => Some(now_rfc3339()),
        }
    };
    {
        let db = s.db.lock().map_err(|_| AppError("db lock".into()))?;
        if db.execute(
            "UPDATE nodes SET expiry = ?2 WHERE id = ?1",
            params![id, value],
        )? == 0
        {
            return Ok(not_found("node not found"));
        }
    }
    Ok(match load_node(&s, id)? {
        Some(n) => Json(json!({ "node": n })).into_response(),
        None => not_found("node not found"),
    })
}

fn preauth_json(r: &Row, v: &SimVersion, full: bool) -> rusqlite::Result<Value> {
    let key: String = r.get(2)?;
    let shown = if full || v.minor < 28 {
        key.clone()
    } else {
        format!("{}-***", key.rsplit_once('-').map_or("", |x| x.0))
    };
    let tags: Vec<String> = serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default();
    Ok(json!({
        "id": r.get::<_, i64>(0)?.to_string(),
        "user": {"id": r.get::<_, Option<i64>>(1)?.unwrap_or(0).to_string(), "name": r.get::<_, Option<String>>(10)?.unwrap_or_default()},
        "key": shown,
        "reusable": r.get::<_, bool>(3)?,
        "ephemeral": r.get::<_, bool>(4)?,
        "used": r.get::<_, bool>(5)?,
        "expiration": r.get::<_, String>(6)?,
        "createdAt": r.get::<_, String>(7)?,
        "aclTags": tags,
    }))
}

const PAK_SQL: &str = "SELECT p.id, p.user_id, p.key, p.reusable, p.ephemeral, p.used, p.expiration, p.created_at, p.id, p.acl_tags, u.name
    FROM pre_auth_keys p LEFT JOIN users u ON u.id = p.user_id";

pub(crate) async fn create_preauth(
    State(s): State<Shared>,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    // grpc-gateway does not insist on a content type.
    let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let user: Option<i64> = match b.get("user") {
        Some(Value::String(u)) if !u.is_empty() => u.parse().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    };
    let tags: Vec<String> = b
        .get("aclTags")
        .and_then(|t| serde_json::from_value(t.clone()).ok())
        .unwrap_or_default();
    if user.is_none() && tags.is_empty() {
        return Ok(bad_request("a pre-auth key needs a user or tags"));
    }
    // Upstream stores an omitted expiration as the zero time: the key is born expired.
    let expiration = b
        .get("expiration")
        .and_then(|v| v.as_str())
        .unwrap_or("0001-01-01T00:00:00Z")
        .to_string();
    let key = if s.version.minor >= 28 {
        format!("hskey-auth-{}-{}", random_hex(12), random_hex(64))
    } else {
        random_hex(48)
    };
    let db = s.db.lock().map_err(|_| AppError("db lock".into()))?;
    if let Some(u) = user {
        if db.query_row("SELECT count(*) FROM users WHERE id = ?1", [u], |r| {
            r.get::<_, i64>(0)
        })? == 0
        {
            return Ok(not_found("user not found"));
        }
    }
    db.execute(
        "INSERT INTO pre_auth_keys (user_id, key, reusable, ephemeral, used, expiration, created_at, acl_tags) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7)",
        params![
            user,
            key,
            b.get("reusable").and_then(|v| v.as_bool()).unwrap_or(false),
            b.get("ephemeral").and_then(|v| v.as_bool()).unwrap_or(false),
            expiration,
            now_rfc3339(),
            serde_json::to_string(&tags)?
        ],
    )?;
    let id = db.last_insert_rowid();
    let k = db.query_row(&format!("{PAK_SQL} WHERE p.id = ?1"), [id], |r| {
        preauth_json(r, &s.version, true)
    })?;
    Ok(Json(json!({ "preAuthKey": k })).into_response())
}

pub(crate) async fn list_preauth(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let db = s.db.lock().map_err(|_| AppError("db lock".into()))?;
    let keys: Vec<Value> = if s.version.minor >= 28 {
        let mut stmt = db.prepare(&format!("{PAK_SQL} ORDER BY p.id"))?;
        let rows = stmt
            .query_map([], |r| preauth_json(r, &s.version, false))?
            .collect::<Result<_, _>>()?;
        rows
    } else {
        let Some(user) = q.get("user").and_then(|u| u.parse::<i64>().ok()) else {
            return Ok(bad_request("user is required"));
        };
        let mut stmt = db.prepare(&format!("{PAK_SQL} WHERE p.user_id = ?1 ORDER BY p.id"))?;
        let rows = stmt
            .query_map([user], |r| preauth_json(r, &s.version, false))?
            .collect::<Result<_, _>>()?;
        rows
    };
    Ok(Json(json!({ "preAuthKeys": keys })).into_response())
}

pub(crate) async fn expire_preauth(
    State(s): State<Shared>,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    // grpc-gateway does not insist on a content type.
    let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let db = s.db.lock().map_err(|_| AppError("db lock".into()))?;
    let now = now_rfc3339();
    let n = if s.version.minor >= 28 {
        let id: i64 = b
            .get("id")
            .and_then(|v| {
                v.as_str()
                    .and_then(|s| s.parse().ok())
                    .or_else(|| v.as_i64())
            })
            .unwrap_or(0);
        db.execute(
            "UPDATE pre_auth_keys SET expiration = ?2 WHERE id = ?1",
            params![id, now],
        )?
    } else {
        let user: i64 = b
            .get("user")
            .and_then(|v| {
                v.as_str()
                    .and_then(|s| s.parse().ok())
                    .or_else(|| v.as_i64())
            })
            .unwrap_or(0);
        let key = b.get("key").and_then(|v| v.as_str()).unwrap_or("");
        db.execute(
            "UPDATE pre_auth_keys SET expiration = ?3 WHERE user_id = ?1 AND key = ?2",
            params![user, key, now],
        )?
    };
    Ok(if n == 0 {
        not_found("pre-auth key not found")
    } else {
        Json(json!({})).into_response()
    })
}

/// GetPolicy in database mode: the newest stored policy; none stored is an error, as upstream's
/// "loading ACL from database: record not found".
pub(crate) async fn get_policy(State(s): State<Shared>) -> Result<Response, AppError> {
    let db = s.db.lock().map_err(|_| AppError("db lock".into()))?;
    let row: Option<String> = db
        .query_row(
            "SELECT data FROM policies ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .ok();
    Ok(match row {
        Some(data) => Json(json!({"policy": data, "updatedAt": now_rfc3339()})).into_response(),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"code": 2, "message": "loading ACL from database: record not found", "details": []})),
        )
            .into_response(),
    })
}

pub(crate) async fn set_policy(
    State(s): State<Shared>,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(policy) = v.get("policy").and_then(Value::as_str) else {
        return Ok(bad_request("policy is required"));
    };
    let db = s.db.lock().map_err(|_| AppError("db lock".into()))?;
    db.execute("INSERT INTO policies (data) VALUES (?1)", [policy])?;
    Ok(Json(json!({"policy": policy, "updatedAt": now_rfc3339()})).into_response())
}

pub(crate) async fn list_apikeys(State(s): State<Shared>) -> Result<Json<Value>, AppError> {
    let db = s.db.lock().map_err(|_| AppError("db lock".into()))?;
    let mut stmt = db.prepare(
        "SELECT id, prefix, expiration, created_at, last_seen FROM api_keys ORDER BY id",
    )?;
    let keys: Vec<Value> = stmt
        .query_map([], |r| {
            Ok(json!({
                "id": r.get::<_, i64>(0)?.to_string(),
                "prefix": r.get::<_, String>(1)?,
                "expiration": r.get::<_, Option<String>>(2)?,
                "createdAt": r.get::<_, Option<String>>(3)?,
                "lastSeen": r.get::<_, Option<String>>(4)?,
            }))
        })?
        .collect::<Result<_, _>>()?;
    Ok(Json(json!({ "apiKeys": keys })))
}

pub(crate) async fn create_apikey(
    State(s): State<Shared>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, AppError> {
    let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let expiration = b
        .get("expiration")
        .and_then(|v| v.as_str())
        .map(String::from);
    let (prefix, key) = if s.version.minor >= 28 {
        let p = random_hex(12);
        (p.clone(), format!("hskey-api-{p}-{}", random_hex(64)))
    } else {
        let p = random_hex(7);
        (p.clone(), format!("{p}.{}", random_hex(32)))
    };
    let db = s.db.lock().map_err(|_| AppError("db lock".into()))?;
    db.execute(
        "INSERT INTO api_keys (prefix, hash, expiration, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![prefix, hash(&key), expiration, now_rfc3339()],
    )?;
    Ok(Json(json!({ "apiKey": key })))
}

pub(crate) async fn expire_apikey(
    State(s): State<Shared>,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    // grpc-gateway does not insist on a content type.
    let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let db = s.db.lock().map_err(|_| AppError("db lock".into()))?;
    let now = now_rfc3339();
    let n = match (
        b.get("prefix")
            .and_then(|v| v.as_str())
            .filter(|p| !p.is_empty()),
        b.get("id"),
    ) {
        (Some(p), _) => db.execute(
            "UPDATE api_keys SET expiration = ?2 WHERE prefix = ?1",
            params![p, now],
        )?,
        (None, Some(id)) if s.version.minor >= 28 => {
            let id: i64 = id
                .as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| id.as_i64())
                .unwrap_or(0);
            db.execute(
                "UPDATE api_keys SET expiration = ?2 WHERE id = ?1",
                params![id, now],
            )?
        }
        _ => return Ok(bad_request("prefix is required")),
    };
    Ok(if n == 0 {
        not_found("api key not found")
    } else {
        Json(json!({})).into_response()
    })
}

/// The client side of `tailscale up --login-server … --auth-key KEY`: validates the key as
/// upstream does (expired, already used unless reusable) and creates the node, or re-keys the
/// node with the same machine key.
async fn register(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let key = q.get("auth_key").cloned().unwrap_or_default();
    let hostname = q.get("hostname").cloned().unwrap_or_else(|| "node".into());
    let machine_key = q
        .get("machine_key")
        .cloned()
        .unwrap_or_else(|| format!("mkey:{}", random_hex(64)));
    let node_key = q
        .get("node_key")
        .cloned()
        .unwrap_or_else(|| format!("nodekey:{}", random_hex(64)));
    let mut db = s.db.lock().map_err(|_| AppError("db lock".into()))?;
    let tx = db.transaction()?;
    let pak: Option<(i64, Option<i64>, bool, bool, String, String)> = tx
        .query_row(
            "SELECT id, user_id, reusable, used, expiration, acl_tags FROM pre_auth_keys WHERE key = ?1",
            [&key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .optional()?;
    let Some((pak_id, user_id, reusable, used, expiration, tags)) = pak else {
        return Ok((StatusCode::UNAUTHORIZED, "invalid authkey").into_response());
    };
    if is_past(&Some(expiration)) {
        return Ok((StatusCode::UNAUTHORIZED, "authkey expired").into_response());
    }
    if used && !reusable {
        return Ok((StatusCode::UNAUTHORIZED, "authkey already used").into_response());
    }
    tx.execute("UPDATE pre_auth_keys SET used = 1 WHERE id = ?1", [pak_id])?;
    let now = now_rfc3339();
    let existing: Option<i64> = tx
        .query_row(
            "SELECT id FROM nodes WHERE machine_key = ?1",
            [&machine_key],
            |r| r.get(0),
        )
        .optional()?;
    let existing = existing.filter(|_| q.get("new_node").is_none_or(|v| v != "true"));
    let id = match existing {
        Some(id) => {
            tx.execute(
                "UPDATE nodes SET node_key = ?2, expiry = NULL, user_id = ?3, last_seen = ?4, tags = ?5 WHERE id = ?1",
                params![id, node_key, user_id, now, tags],
            )?;
            id
        }
        None => {
            let count: i64 =
                tx.query_row("SELECT coalesce(max(id), 0) FROM nodes", [], |r| r.get(0))?;
            tx.execute(
                "INSERT INTO nodes (machine_key, node_key, hostname, given_name, user_id, ipv4, created_at, last_seen, tags) VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?6, ?7)",
                params![machine_key, node_key, hostname, user_id, format!("100.64.{}.{}", (count + 1) / 250, (count + 1) % 250 + 1), now, tags],
            )?;
            tx.last_insert_rowid()
        }
    };
    tx.commit()?;
    drop(db);
    Ok(match load_node(&s, id)? {
        Some(n) => Json(json!({ "node": n })).into_response(),
        None => not_found("node vanished"),
    })
}
