//! The simulated Headscale server and its CLI client.
//!
//! Behaviour copied from upstream facts (shared/HEADSCALE.md): config keys and `HEADSCALE_*`
//! overrides, fatal deprecated keys per version, "initial DERPMap is empty" without an offline
//! DERP source, the `database_versions` minor-step rules, WAL mode, `/health` body and content
//! type, `/version` from 0.27, `/key?v=` capability rules, protojson shapes under `/api/v1`.

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value as Json_};
use serde_yaml_ng::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct SimVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    pub text: String,
}

impl SimVersion {
    pub fn parse(s: &str) -> Result<Self> {
        let text = s.trim_start_matches('v').to_string();
        let core = text.split('-').next().unwrap_or("");
        let parts: Vec<u64> = core
            .split('.')
            .map(|p| p.parse::<u64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("bad release version {s:?}"))?;
        if parts.len() != 3 {
            bail!("bad release version {s:?}");
        }
        Ok(Self {
            major: parts[0],
            minor: parts[1],
            patch: parts[2],
            text,
        })
    }
    fn at_least(&self, major: u64, minor: u64) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

pub fn version_json(v: &SimVersion) -> Json_ {
    json!({
        "version": format!("v{}", v.text),
        "commit": "simulated",
        "buildTime": "2026-01-01T00:00:00Z",
        "go": {"version": "go1.25", "os": std::env::consts::OS, "arch": "amd64"},
        "dirty": false,
    })
}

/// Parsed config with `HEADSCALE_*` environment overrides applied on lookup.
pub struct Config {
    root: Value,
    path: PathBuf,
}

impl Config {
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn get(&self, key: &str) -> Option<Value> {
        let env_key = format!("HEADSCALE_{}", key.to_uppercase().replace('.', "_"));
        if let Ok(v) = std::env::var(&env_key) {
            return Some(Value::String(v));
        }
        let mut cur = &self.root;
        for part in key.split('.') {
            cur = cur.get(part)?;
        }
        Some(cur.clone())
    }
    pub fn str(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    /// Set in the file or in the environment: a removed key set only as `HEADSCALE_*` is as
    /// fatal as in the file (upstream's deprecator reads viper, which reads both).
    fn present(&self, key: &str) -> bool {
        let env_key = format!("HEADSCALE_{}", key.to_uppercase().replace('.', "_"));
        if std::env::var_os(&env_key).is_some() {
            return true;
        }
        let mut cur = &self.root;
        for part in key.split('.') {
            match cur.get(part) {
                Some(v) => cur = v,
                None => return false,
            }
        }
        true
    }
    fn path_of(&self, key: &str) -> Result<PathBuf> {
        let p = self
            .str(key)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| anyhow!("config key {key} is required"))?;
        Ok(PathBuf::from(p))
    }
}

pub fn load_config(path: Option<&Path>) -> Result<Config> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("HEADSCALE_CONFIG") {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from("/etc/headscale/config.yaml"),
        },
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let root: Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("parsing config {}", path.display()))?;
    Ok(Config { root, path })
}

pub struct AppState {
    pub db: Mutex<Connection>,
    pub version: SimVersion,
    never_healthy: bool,
    noise_public: String,
}

pub type Shared = Arc<AppState>;

pub async fn serve(
    version: SimVersion,
    fault: &str,
    start_counter: Option<&Path>,
    config: Config,
) -> Result<()> {
    if fault == "crash" {
        bail!("simulated crash at start (fault mode `crash`)");
    }
    if fault == "port-in-use" {
        let addr = config
            .str("listen_addr")
            .unwrap_or_else(|| "0.0.0.0:8080".into());
        bail!("listen tcp {addr}: bind: address already in use");
    }
    // `prod-wreck`: on production (the second start) migrate the database, replace the noise key
    // and rewrite the config, then crash: a rollback must put all three back.
    let mut wreck = false;
    if let Some(counter) = start_counter {
        let n: u64 = std::fs::read_to_string(counter)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
            + 1;
        std::fs::write(counter, n.to_string())?;
        if fault == "prod-crash" && n >= 2 {
            bail!("simulated crash at start number {n} (fault mode `prod-crash`)");
        }
        wreck = fault == "prod-wreck" && n >= 2;
    }
    validate_config(&version, &config)?;

    let noise_path = config.path_of("noise.private_key_path")?;
    let noise_private = load_or_create_noise_key(&noise_path, fault == "noise-key")?;
    let noise_public = format!(
        "mkey:{}",
        hex::encode(Sha256::digest(noise_private.as_bytes()))
    );

    let db_type = config
        .str("database.type")
        .unwrap_or_else(|| "sqlite".into());
    if db_type != "sqlite" && db_type != "sqlite3" {
        bail!("the stand-in only supports database.type sqlite, got {db_type:?}");
    }
    let db_path = config.path_of("database.sqlite.path")?;
    let conn = open_and_migrate(&db_path, &version, fault == "drop-rows")?;
    if wreck {
        load_or_create_noise_key(&noise_path, true)?;
        let cfg = config.path();
        if let Ok(text) = std::fs::read_to_string(cfg) {
            let _ = std::fs::write(
                cfg,
                format!("{text}# rewritten by {version:?} (fault prod-wreck)\n"),
            );
        }
        drop(conn);
        bail!("simulated crash after migrating, replacing the noise key and rewriting the config (fault mode `prod-wreck`)");
    }

    if fault == "slow-start" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let state: Shared = Arc::new(AppState {
        db: Mutex::new(conn),
        version: version.clone(),
        never_healthy: fault == "never-healthy",
        noise_public,
    });

    let listen = config
        .str("listen_addr")
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let tcp = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(axum::serve(tcp, router(state.clone(), true)).into_future());

    if let Some(metrics) = config.str("metrics_listen_addr").filter(|s| !s.is_empty()) {
        let l = tokio::net::TcpListener::bind(&metrics)
            .await
            .with_context(|| format!("listening on {metrics}"))?;
        let app = Router::new().route(
            "/metrics",
            get(|| async { "# HELP headscale_up simulated\nheadscale_up 1\n" }),
        );
        tasks.spawn(axum::serve(l, app).into_future());
    }
    // Remote gRPC: only ≤0.29, and only with TLS (tls_cert_path/tls_key_path) or
    // grpc_allow_insecure; otherwise it silently does not listen, as upstream.
    let tls_files = match (
        config.str("tls_cert_path").filter(|s| !s.is_empty()),
        config.str("tls_key_path").filter(|s| !s.is_empty()),
    ) {
        (Some(c), Some(k)) => Some((
            std::fs::read(&c).with_context(|| format!("reading {c}"))?,
            std::fs::read(&k).with_context(|| format!("reading {k}"))?,
        )),
        _ => None,
    };
    let insecure = config.str("grpc_allow_insecure").as_deref() == Some("true");
    if !version.at_least(0, 30) && (tls_files.is_some() || insecure) {
        if let Some(addr) = config.str("grpc_listen_addr").filter(|s| !s.is_empty()) {
            let l = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            let grpc = crate::grpc::serve_remote(state.clone(), l, tls_files);
            tasks.spawn(async move {
                grpc.await;
                Ok(())
            });
        }
    }
    let socket = config
        .path_of("unix_socket")
        .unwrap_or_else(|_| PathBuf::from("/var/run/headscale/headscale.sock"));
    let _ = std::fs::remove_file(&socket); // upstream deletes a stale socket at start
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let ul = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding unix socket {}", socket.display()))?;
    // ≤0.29 serves gRPC on the socket (h2c), next to the HTTP/1 surface the stand-in's own CLI uses.
    let socket_app = if version.at_least(0, 30) {
        router(state.clone(), false)
    } else {
        router(state.clone(), false).merge(crate::grpc::routes(state.clone()))
    };
    tasks.spawn(axum::serve(ul, socket_app).into_future());
    eprintln!(
        "INF headscale v{} listening on {listen}, socket {}",
        version.text,
        socket.display()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        r = tasks.join_next() => { eprintln!("ERR listener stopped: {r:?}"); }
    }
    // Graceful stop: checkpoint the WAL so the database file is complete on disk.
    if let Ok(db) = state.db.lock() {
        let _ = db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    }
    let _ = std::fs::remove_file(&socket);
    eprintln!("INF headscale stopped");
    Ok(())
}

fn validate_config(v: &SimVersion, c: &Config) -> Result<()> {
    let server_url = c.str("server_url").unwrap_or_default();
    if !(server_url.starts_with("http://") || server_url.starts_with("https://")) {
        bail!("server_url must start with https:// or http://");
    }
    if v.at_least(0, 29) && c.present("randomize_client_port") {
        bail!("randomize_client_port has been removed, configure randomizeClientPort in the policy instead");
    }
    if v.at_least(0, 29) && c.present("oidc.expiry") {
        bail!("oidc.expiry has been removed, use node.expiry instead");
    }
    if v.at_least(0, 26) && c.present("oidc.strip_email_domain") {
        bail!("oidc.strip_email_domain has been removed");
    }
    // DERP: this sandbox is offline, so derp.urls never load; a map needs paths or the embedded server.
    let paths: Vec<String> = match c.get("derp.paths") {
        Some(Value::Sequence(s)) => s
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => vec![],
    };
    let embedded = c.str("derp.server.enabled").as_deref() == Some("true");
    let mut regions = 0;
    for p in &paths {
        let text = std::fs::read_to_string(p).with_context(|| format!("loading DERP map {p}"))?;
        let map: Value =
            serde_yaml_ng::from_str(&text).with_context(|| format!("parsing DERP map {p}"))?;
        regions += map
            .get("regions")
            .and_then(|r| r.as_mapping())
            .map_or(0, |m| m.len());
    }
    if regions == 0 && !embedded {
        bail!("initial DERPMap is empty, Headscale requires at least one entry");
    }
    Ok(())
}

fn load_or_create_noise_key(path: &Path, replace: bool) -> Result<String> {
    if !replace {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Ok(text.trim().to_string());
        }
    }
    let mut seed = Sha256::new();
    seed.update(format!(
        "{:?}{}",
        std::time::SystemTime::now(),
        std::process::id()
    ));
    let key = format!("privkey:{}", hex::encode(seed.finalize()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // As upstream: the private key file is created 0600.
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(key.as_bytes()))
            .with_context(|| format!("writing noise key {}", path.display()))?;
    }
    Ok(key)
}

const MIGRATIONS: &[(u64, &str)] = &[
    (
        27,
        "CREATE INDEX IF NOT EXISTS idx_nodes_machine_key ON nodes(machine_key);",
    ),
    (
        28,
        "ALTER TABLE nodes ADD COLUMN approved_routes TEXT NOT NULL DEFAULT '[]';",
    ),
    (
        29,
        "UPDATE nodes SET expiry = NULL WHERE expiry LIKE '0001-01-01%';",
    ),
    (
        30,
        // Upstream has had the table since 0.24 (policy.mode: database); kept as an idempotent
        // migration for databases the stand-in created before the base schema had it.
        "CREATE TABLE IF NOT EXISTS policies (id INTEGER PRIMARY KEY, data TEXT);",
    ),
];

fn open_and_migrate(path: &Path, v: &SimVersion, drop_rows: bool) -> Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let conn =
        Connection::open(path).with_context(|| format!("opening database {}", path.display()))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;",
    )?;
    let fresh: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name='users'",
        [],
        |r| r.get::<_, i64>(0),
    )? == 0;
    if fresh {
        conn.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, created_at TEXT NOT NULL);
             CREATE TABLE nodes (id INTEGER PRIMARY KEY, machine_key TEXT NOT NULL, node_key TEXT NOT NULL,
                hostname TEXT NOT NULL, given_name TEXT NOT NULL, user_id INTEGER REFERENCES users(id),
                ipv4 TEXT, created_at TEXT NOT NULL, expiry TEXT, last_seen TEXT,
                tags TEXT NOT NULL DEFAULT '[]', register_method TEXT);
             CREATE TABLE api_keys (id INTEGER PRIMARY KEY, prefix TEXT UNIQUE, hash TEXT, expiration TEXT, created_at TEXT, last_seen TEXT);
             CREATE TABLE pre_auth_keys (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), key TEXT UNIQUE NOT NULL,
                reusable INTEGER NOT NULL, ephemeral INTEGER NOT NULL, used INTEGER NOT NULL, expiration TEXT NOT NULL,
                created_at TEXT NOT NULL, acl_tags TEXT NOT NULL DEFAULT '[]');
             CREATE TABLE database_versions (id INTEGER PRIMARY KEY CHECK (id = 1), version TEXT, updated_at TEXT);
             CREATE TABLE migrations (id TEXT PRIMARY KEY);
             CREATE TABLE policies (id INTEGER PRIMARY KEY, data TEXT);",
        )?;
        for (minor, sql) in MIGRATIONS {
            if v.minor >= *minor {
                conn.execute_batch(sql)?;
                conn.execute(
                    "INSERT INTO migrations (id) VALUES (?1)",
                    params![format!("0.{minor}")],
                )?;
            }
        }
    } else {
        let stored: Option<String> = conn
            .query_row(
                "SELECT version FROM database_versions WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(stored) = stored.filter(|s| !s.is_empty()) {
            let s = SimVersion::parse(&stored)?;
            if s.major != v.major {
                bail!(
                    "database version v{} and binary v{} differ in major version",
                    s.text,
                    v.text
                );
            }
            if v.minor > s.minor + 1 {
                bail!(
                    "upgrading more than one minor version at a time is not supported, please upgrade to the latest v{}.{}.x release first",
                    s.major,
                    s.minor + 1
                );
            }
            if v.minor < s.minor {
                bail!("downgrading to a previous minor version is not supported");
            }
        }
        let tx = conn.unchecked_transaction()?;
        for (minor, sql) in MIGRATIONS {
            let id = format!("0.{minor}");
            let done: bool = tx.query_row(
                "SELECT count(*) FROM migrations WHERE id = ?1",
                params![id],
                |r| r.get::<_, i64>(0),
            )? > 0;
            if v.minor >= *minor && !done {
                tx.execute_batch(sql)
                    .with_context(|| format!("migration {id}"))?;
                tx.execute("INSERT INTO migrations (id) VALUES (?1)", params![id])?;
                if drop_rows {
                    // The fault: a migration that silently loses data.
                    tx.execute("DELETE FROM nodes WHERE id % 2 = 0", [])?;
                }
            }
        }
        tx.commit()?;
    }
    conn.execute(
        "INSERT INTO database_versions (id, version, updated_at) VALUES (1, ?1, ?2)
         ON CONFLICT(id) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        params![format!("v{}", v.text), now_rfc3339()],
    )?;
    Ok(conn)
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn router(state: Shared, tcp: bool) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/version", get(version_handler))
        .route("/key", get(key_handler))
        .route("/api/v1/user", get(list_users).post(create_user))
        .route("/api/v1/health", get(api_health))
        .route("/api/v1/debug/seed", post(seed))
        .merge(crate::api::routes())
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), tcp),
            authenticate,
        ))
        .with_state(state)
}

/// A stored, unexpired API key (its last_seen is updated).
pub fn valid_api_key(state: &Shared, token: &str) -> bool {
    !token.is_empty()
        && state.db.lock().is_ok_and(|db| {
            let now = now_rfc3339();
            db.execute(
                "UPDATE api_keys SET last_seen = ?2 WHERE hash = ?1 AND (expiration IS NULL OR expiration > ?2)",
                params![crate::api::hash(token), now],
            )
            .is_ok_and(|n| n == 1)
        })
}

/// TCP API requests need a valid, unexpired Bearer API key; the unix socket is trusted (as
/// upstream). The debug endpoints (acting as a client) exist on the socket only.
async fn authenticate(
    State((state, tcp)): State<(Shared, bool)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if tcp && path.starts_with("/api/") {
        if path.starts_with("/api/v1/debug/") {
            return (StatusCode::NOT_FOUND, "404 page not found").into_response();
        }
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        if !valid_api_key(&state, &token) {
            return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
        }
    }
    next.run(req).await
}

async fn health(State(s): State<Shared>) -> Response {
    let db_ok =
        s.db.lock()
            .map(|db| db.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).is_ok())
            .unwrap_or(false);
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        "application/health+json; charset=utf-8"
            .parse()
            .expect("static header"),
    );
    if s.never_healthy || !db_ok {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            headers,
            r#"{"status":"fail"}"#,
        )
            .into_response();
    }
    (StatusCode::OK, headers, r#"{"status":"pass"}"#).into_response()
}

async fn api_health(State(s): State<Shared>) -> Response {
    Json(json!({"databaseConnectivity": !s.never_healthy})).into_response()
}

async fn version_handler(State(s): State<Shared>) -> Response {
    if !s.version.at_least(0, 27) {
        return (StatusCode::NOT_FOUND, "404 page not found").into_response();
    }
    Json(version_json(&s.version)).into_response()
}

async fn key_handler(
    State(s): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(v) = q.get("v") else {
        return (StatusCode::BAD_REQUEST, "capability version must be set").into_response();
    };
    let Ok(v) = v.parse::<u32>() else {
        return (StatusCode::BAD_REQUEST, "invalid capability version").into_response();
    };
    // From 0.29.3 (#3391) /key refuses what the Noise handshake would refuse: below the floor of
    // the ten newest client minors (113 for 0.29.x) it is a 400; before, < 39 got an empty 200.
    let v0293 = (s.version.major, s.version.minor, s.version.patch) >= (0, 29, 3);
    if v0293 && v < 113 {
        return (StatusCode::BAD_REQUEST, "unsupported client version").into_response();
    }
    if !v0293 && v < 39 {
        return (StatusCode::OK, "").into_response();
    }
    Json(
        json!({"legacyPublicKey": format!("mkey:{}", "0".repeat(64)), "publicKey": s.noise_public}),
    )
    .into_response()
}

fn user_json(id: i64, name: &str, created: &str) -> Json_ {
    json!({"id": id.to_string(), "name": name, "createdAt": created})
}

pub(crate) async fn list_users(State(s): State<Shared>) -> Result<Json<Json_>, AppError> {
    let db =
        s.db.lock()
            .map_err(|_| AppError("db lock poisoned".into()))?;
    let mut stmt = db.prepare("SELECT id, name, created_at FROM users ORDER BY id")?;
    let users: Vec<Json_> = stmt
        .query_map([], |r| {
            Ok(user_json(
                r.get(0)?,
                &r.get::<_, String>(1)?,
                &r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(Json(json!({ "users": users })))
}

async fn create_user(
    State(s): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Json_>, AppError> {
    let name = q.get("name").cloned().unwrap_or_default();
    let db =
        s.db.lock()
            .map_err(|_| AppError("db lock poisoned".into()))?;
    let now = now_rfc3339();
    db.execute(
        "INSERT INTO users (name, created_at) VALUES (?1, ?2)",
        params![name, now],
    )?;
    Ok(Json(
        json!({"user": user_json(db.last_insert_rowid(), &name, &now)}),
    ))
}

async fn seed(
    State(s): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Json_>, AppError> {
    let users: u64 = q.get("users").and_then(|v| v.parse().ok()).unwrap_or(3);
    let per: u64 = q
        .get("nodes_per_user")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let mut db =
        s.db.lock()
            .map_err(|_| AppError("db lock poisoned".into()))?;
    let tx = db.transaction()?;
    let now = now_rfc3339();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    // Simulated history: nodes registered `age_days` ago, expiring in `expiry_days` (may be negative).
    let age_days: i64 = q.get("age_days").and_then(|v| v.parse().ok()).unwrap_or(0);
    let created = fmt(time::OffsetDateTime::now_utc() - time::Duration::days(age_days));
    let expiry: Option<String> = q
        .get("expiry_days")
        .and_then(|v| v.parse::<i64>().ok())
        .map(|d| fmt(time::OffsetDateTime::now_utc() + time::Duration::days(d)));
    let tags: Vec<&str> = q
        .get("tags")
        .map(|t| t.split(',').filter(|x| !x.is_empty()).collect())
        .unwrap_or_default();
    let tags_json = serde_json::to_string(&tags)?;
    let prefix = q.get("prefix").cloned().unwrap_or_else(|| "user".into());
    let base: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM users", [], |r| r.get(0))?;
    let mut count: i64 =
        tx.query_row("SELECT coalesce(max(id), 0) FROM nodes", [], |r| r.get(0))?;
    let mut created_nodes = 0u64;
    for u in 0..users {
        let name = format!("{prefix}{}", base as u64 + u + 1);
        tx.execute(
            "INSERT INTO users (name, created_at) VALUES (?1, ?2)",
            params![name, now],
        )?;
        let uid = tx.last_insert_rowid();
        for n in 0..per {
            let host = format!("{name}-node{}", n + 1);
            let mk = format!(
                "mkey:{}",
                hex::encode(Sha256::digest(format!("m{uid}-{n}")))
            );
            let nk = format!(
                "nodekey:{}",
                hex::encode(Sha256::digest(format!("n{uid}-{n}")))
            );
            count += 1;
            let ip = format!(
                "100.{}.{}.{}",
                64 + count / 62500,
                (count / 250) % 250,
                count % 250 + 1
            );
            tx.execute(
                "INSERT INTO nodes (machine_key, node_key, hostname, given_name, user_id, ipv4, created_at, expiry, last_seen, tags)
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?6, ?8)",
                params![mk, nk, host, uid, ip, created, expiry, tags_json],
            )?;
            created_nodes += 1;
        }
    }
    tx.commit()?;
    Ok(Json(json!({"users": users, "nodes": created_nodes})))
}

pub struct AppError(pub String);

impl<E: std::fmt::Display> From<E> for AppError {
    fn from(e: E) -> Self {
        AppError(e.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"code": 13, "message": self.0, "details": []})),
        )
            .into_response()
    }
}

/// Minimal HTTP/1.0 over the unix socket, as the CLI's transport.
async fn socket_request(config: &Config, method: &str, path: &str) -> Result<Json_> {
    socket_request_body(config, method, path, "").await
}

async fn socket_request_body(
    config: &Config,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Json_> {
    let socket = config.path_of("unix_socket")?;
    let mut stream = tokio::net::UnixStream::connect(&socket)
        .await
        .with_context(|| {
            format!(
                "connecting to headscale on {}; is it running?",
                socket.display()
            )
        })?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed response"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!(
            "request failed: {}: {}",
            head.lines().next().unwrap_or(""),
            body.trim()
        );
    }
    Ok(serde_json::from_str(body)?)
}

/// Like upstream's `-o json`: Go's encoding of the proto structs (snake_case, numeric ids).
fn go_json(v: Json_) -> Json_ {
    match v {
        Json_::Object(map) => Json_::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let snake: String = k
                        .chars()
                        .flat_map(|c| {
                            if c.is_ascii_uppercase() {
                                vec!['_', c.to_ascii_lowercase()]
                            } else {
                                vec![c]
                            }
                        })
                        .collect();
                    let v = if snake == "id" {
                        v.as_str()
                            .and_then(|s| s.parse::<u64>().ok())
                            .map_or(v, Json_::from)
                    } else {
                        go_json(v)
                    };
                    (snake, v)
                })
                .collect(),
        ),
        Json_::Array(a) => Json_::Array(a.into_iter().map(go_json).collect()),
        other => other,
    }
}

pub async fn cli_get(config: &Config, path: &str, field: &str) -> Result<()> {
    let v = socket_request(config, "GET", path).await?;
    let list = v.get(field).cloned().unwrap_or(Json_::Array(vec![]));
    println!("{}", serde_json::to_string_pretty(&go_json(list))?);
    Ok(())
}

pub async fn cli_post(config: &Config, path: &str) -> Result<()> {
    let v = socket_request(config, "POST", path).await?;
    println!("{}", serde_json::to_string_pretty(&go_json(v))?);
    Ok(())
}

pub async fn cli_post_json(config: &Config, path: &str, body: &Json_) -> Result<()> {
    cli_send_json(config, "POST", path, body).await
}

pub async fn cli_send_json(config: &Config, method: &str, path: &str, body: &Json_) -> Result<()> {
    let v = socket_request_body(config, method, path, &body.to_string()).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
