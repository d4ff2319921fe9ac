//! Headscale's `/api/v1` REST API (protojson), over TCP with a Bearer API key or over the local
//! unix socket (0.30 serves plain HTTP there), converted into domain types right here.
//!
//! Version differences handled (shared/HEADSCALE.md §1):
//! - tags: `tags` (0.28+) vs `forcedTags`/`validTags` (older);
//! - pre-auth keys: listed for all users and expired by `id` (0.28+) vs per `user` and by
//!   `user`+`key` (older); an explicit `expiration` is always sent (an omitted one is stored as
//!   the zero time, i.e. born expired);
//! - expire node: query parameters `expiry` (0.27.1+) and `disableExpiry` (0.29) up to 0.29, a
//!   JSON body in 0.30 (a body sent to ≤0.29 is ignored and the node expires *now*);
//! - API keys expired by `prefix` (all versions).
//!
//! Transport choice: `https://…`/`http://…` → TCP + Bearer; `unix://…` → plain HTTP on the
//! socket, which only 0.30 serves (≤0.29 speaks gRPC there: refused with a hint).

use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::Version;
use serde_json::{json, Value};

use super::cli;
use super::grpc::{self, GrpcClient};
use super::http as hs_http;
use crate::error::error_chain;
use crate::settings::{Secret, Settings};
use crate::state;

pub use super::model::{ApiError, ApiKeyInfo, Node, PreAuthKey, User, SUPPORTED};

enum Transport {
    Tcp {
        base: String,
        key: Secret,
        client: reqwest::Client,
    },
    /// 0.30: plain HTTP on the unix socket.
    Unix { socket: PathBuf },
    /// ≤0.29: gRPC on the unix socket.
    Grpc(GrpcClient),
}

pub struct ApiClient {
    transport: Transport,
    pub version: Version,
    target: String,
}

fn time_of(v: Option<&Value>) -> Option<i64> {
    let s = v?.as_str()?;
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    // Go's zero time (0001-01-01) means "unset" in several fields.
    (t.year() > 1).then(|| t.unix_timestamp())
}

fn u64_of(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn str_of(v: &Value, camel: &str, snake: &str) -> String {
    v.get(camel)
        .or_else(|| v.get(snake))
        .and_then(|s| s.as_str())
        .unwrap_or("")
        .to_string()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn user_of(v: Option<&Value>) -> Option<User> {
    let u = v?;
    Some(User {
        id: u64_of(u.get("id")).unwrap_or(0),
        name: u
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string(),
    })
}

/// protojson (or CLI Go JSON) node → domain node.
/// A ListNodes REST body (protojson, any supported version's shape) into nodes.
pub fn parse_node_list(body: &[u8]) -> Result<Vec<Node>, ApiError> {
    let wire: WireNodes = serde_json::from_slice(body).map_err(|e| ApiError::Shape {
        path: "/api/v1/node".into(),
        detail: e.to_string(),
    })?;
    Ok(wire.nodes.into_iter().map(WireNode::into_node).collect())
}

pub fn parse_node(v: &Value) -> Option<Node> {
    let mut tags = strings(v.get("tags"));
    if tags.is_empty() {
        // Before 0.28: forced tags plus valid requested tags.
        tags = strings(v.get("forcedTags").or_else(|| v.get("forced_tags")));
        for t in strings(v.get("validTags").or_else(|| v.get("valid_tags"))) {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
    }
    Some(Node {
        id: u64_of(v.get("id"))?,
        machine_key: str_of(v, "machineKey", "machine_key"),
        node_key: str_of(v, "nodeKey", "node_key"),
        name: str_of(v, "name", "name"),
        given_name: str_of(v, "givenName", "given_name"),
        user: user_of(v.get("user")).unwrap_or(User {
            id: 0,
            name: String::new(),
        }),
        created_at: time_of(v.get("createdAt").or_else(|| v.get("created_at"))),
        last_seen: time_of(v.get("lastSeen").or_else(|| v.get("last_seen"))),
        expiry: time_of(v.get("expiry")),
        tags,
        register_method: str_of(v, "registerMethod", "register_method"),
        online: v.get("online").and_then(|o| o.as_bool()).unwrap_or(false),
    })
}

fn parse_preauth(v: &Value) -> Option<PreAuthKey> {
    Some(PreAuthKey {
        id: u64_of(v.get("id"))?,
        user: user_of(v.get("user")).filter(|u| u.id != 0 || !u.name.is_empty()),
        key: Secret::new(v.get("key").and_then(|k| k.as_str()).unwrap_or("")),
        reusable: v.get("reusable").and_then(|b| b.as_bool()).unwrap_or(false),
        ephemeral: v
            .get("ephemeral")
            .and_then(|b| b.as_bool())
            .unwrap_or(false),
        used: v.get("used").and_then(|b| b.as_bool()).unwrap_or(false),
        expiration: time_of(v.get("expiration")),
        created_at: time_of(v.get("createdAt")),
        acl_tags: strings(v.get("aclTags")),
    })
}

#[derive(serde::Deserialize)]
struct WireNodes<'a> {
    #[serde(default, borrow)]
    nodes: Vec<WireNode<'a>>,
}

type Text<'a> = std::borrow::Cow<'a, str>;

/// A uint64 as protojson writes it (a string) or as Go's JSON does (a number).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum WireId<'a> {
    #[serde(borrow)]
    Text(Text<'a>),
    Number(u64),
}

impl WireId<'_> {
    fn get(&self) -> u64 {
        match self {
            WireId::Text(s) => s.parse().unwrap_or(0),
            WireId::Number(n) => *n,
        }
    }
}

#[derive(serde::Deserialize)]
struct WireUser<'a> {
    #[serde(borrow)]
    id: Option<WireId<'a>>,
    #[serde(default, borrow)]
    name: Text<'a>,
}

/// Borrows from the response body where the JSON has no escapes: a large node list is parsed
/// without an intermediate tree or a second copy of every string.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireNode<'a> {
    #[serde(borrow)]
    id: WireId<'a>,
    #[serde(default, borrow, alias = "machine_key")]
    machine_key: Text<'a>,
    #[serde(default, borrow, alias = "node_key")]
    node_key: Text<'a>,
    #[serde(default, borrow)]
    name: Text<'a>,
    #[serde(default, borrow, alias = "given_name")]
    given_name: Text<'a>,
    #[serde(borrow)]
    user: Option<WireUser<'a>>,
    #[serde(borrow, alias = "created_at")]
    created_at: Option<Text<'a>>,
    #[serde(borrow, alias = "last_seen")]
    last_seen: Option<Text<'a>>,
    #[serde(borrow)]
    expiry: Option<Text<'a>>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default, alias = "forced_tags")]
    forced_tags: Vec<String>,
    #[serde(default, alias = "valid_tags")]
    valid_tags: Vec<String>,
    #[serde(default, borrow, alias = "register_method")]
    register_method: Text<'a>,
    #[serde(default)]
    online: bool,
}

fn parse_rfc3339(s: Option<&str>) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s?, &time::format_description::well_known::Rfc3339).ok()?;
    (t.year() > 1).then(|| t.unix_timestamp())
}

impl WireNode<'_> {
    fn into_node(self) -> Node {
        let t = |s: Option<Text<'_>>| parse_rfc3339(s.as_deref());
        let mut tags = self.tags;
        if tags.is_empty() {
            tags = self.forced_tags;
            for v in self.valid_tags {
                if !tags.contains(&v) {
                    tags.push(v);
                }
            }
        }
        Node {
            id: self.id.get(),
            machine_key: self.machine_key.into_owned(),
            node_key: self.node_key.into_owned(),
            name: self.name.into_owned(),
            given_name: self.given_name.into_owned(),
            user: self
                .user
                .map(|u| User {
                    id: u.id.map_or(0, |i| i.get()),
                    name: u.name.into_owned(),
                })
                .unwrap_or(User {
                    id: 0,
                    name: String::new(),
                }),
            created_at: t(self.created_at),
            last_seen: t(self.last_seen),
            expiry: t(self.expiry),
            tags,
            register_method: self.register_method.into_owned(),
            online: self.online,
        }
    }
}

fn read_key_file(path: &Path) -> Result<Secret, ApiError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |detail: String| ApiError::KeyFile {
        path: path.to_path_buf(),
        detail,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err("readable by group or others; refusing to use it".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(err("empty".into()));
    }
    Ok(Secret::new(key))
}

/// `hskey-api-<prefix>-<secret>` (0.28+) or legacy `<prefix>.<secret>`.
pub fn api_key_prefix(key: &str) -> Option<String> {
    if let Some(rest) = key.strip_prefix("hskey-api-") {
        return rest.split_once('-').map(|(p, _)| p.to_string());
    }
    key.split_once('.')
        .map(|(p, _)| p.to_string())
        .filter(|p| !p.is_empty())
}

pub fn check_version(v: &Version) -> Result<(), ApiError> {
    if v.major == 0 && (26..=30).contains(&v.minor) {
        Ok(())
    } else {
        Err(ApiError::UnknownVersion {
            version: v.to_string(),
        })
    }
}

/// The version of production's binary (beside the server; gRPC has no version endpoint).
async fn server_binary_version(s: &Settings) -> Result<Version, ApiError> {
    cli::binary_version(&s.headscale.binary, Duration::from_secs(15))
        .await
        .map_err(|e| ApiError::Unreachable {
            target: s.headscale.binary.display().to_string(),
            detail: e.to_string(),
        })
}

impl ApiClient {
    /// Connects according to `headscale.api`, detecting the server version from `/version`
    /// (0.27+) or, failing that, the local binary's `headscale version`.
    pub async fn connect(s: &Settings) -> Result<ApiClient, ApiError> {
        let url = s.headscale.api_url.clone();
        if let Some(path) = url.strip_prefix("unix://") {
            let socket = PathBuf::from(path);
            return Self::connect_unix(s, socket, url.clone()).await;
        }
        if let Some(host_port) = url.strip_prefix("grpcs://") {
            let host_port = host_port.to_string();
            return Self::connect_grpcs(s, &host_port, url).await;
        }
        Self::connect_rest(s, url).await
    }

    /// The unix socket: gRPC up to 0.29, REST from 0.30.
    async fn connect_unix(
        s: &Settings,
        socket: PathBuf,
        url: String,
    ) -> Result<ApiClient, ApiError> {
        let version = server_binary_version(s).await?;
        check_version(&version)?;
        if version.minor < 30 {
            let grpc = GrpcClient::connect(&socket).await?;
            grpc.health().await?;
            return Ok(ApiClient {
                transport: Transport::Grpc(grpc),
                version,
                target: url,
            });
        }
        let client = ApiClient {
            transport: Transport::Unix {
                socket: socket.clone(),
            },
            version,
            target: url,
        };
        client.request("GET", "/api/v1/health", None).await?;
        Ok(client)
    }

    /// Remote gRPC over TLS with an API key (0.29 and older).
    async fn connect_grpcs(
        s: &Settings,
        host_port: &str,
        url: String,
    ) -> Result<ApiClient, ApiError> {
        let key_file = s
            .headscale
            .api_key_file
            .as_ref()
            .ok_or_else(|| ApiError::MissingKey { url: url.clone() })?;
        let key = read_key_file(key_file)?;
        let ca = match &s.headscale.api_ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|e| ApiError::KeyFile {
                path: p.clone(),
                detail: e.to_string(),
            })?),
            None => None,
        };
        // gRPC has no version endpoint: headwarden runs beside Headscale and asks its binary.
        let version = server_binary_version(s).await?;
        check_version(&version)?;
        if version.minor >= 30 {
            return Err(ApiError::Unreachable {
                target: url,
                detail: "Headscale 0.30 removed gRPC; use its https:// REST address".into(),
            });
        }
        let grpc = GrpcClient::connect_tls(host_port.trim_end_matches('/'), ca, &key).await?;
        grpc.health().await?;
        Ok(ApiClient {
            transport: Transport::Grpc(grpc),
            version,
            target: url,
        })
    }

    /// REST over https (or http to loopback) with an API key.
    async fn connect_rest(s: &Settings, url: String) -> Result<ApiClient, ApiError> {
        let key_file = s
            .headscale
            .api_key_file
            .as_ref()
            .ok_or_else(|| ApiError::MissingKey { url: url.clone() })?;
        let key = read_key_file(key_file)?;
        let base = url.trim_end_matches('/').to_string();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ApiError::Unreachable {
                target: base.clone(),
                detail: e.to_string(),
            })?;
        let http = hs_http::client(Duration::from_secs(10));
        let version = match hs_http::version(&http, &base).await {
            Ok(Some(v)) => v,
            Ok(None) => server_binary_version(s).await?,
            Err(e) => {
                return Err(ApiError::Unreachable {
                    target: base,
                    detail: e.to_string(),
                })
            }
        };
        check_version(&version)?;
        let api = ApiClient {
            transport: Transport::Tcp {
                base: base.clone(),
                key,
                client,
            },
            version,
            target: base,
        };
        // Check the key with a cheap authenticated call (not the node list, which can be huge).
        let probe = if api.at_least(27, 0) {
            "/api/v1/health"
        } else {
            "/api/v1/apikey"
        };
        api.request_raw("GET", probe, None).await?;
        Ok(api)
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        let bytes = self.request_raw(method, path, body).await?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text).map_err(|e| ApiError::Shape {
            path: path.to_string(),
            detail: e.to_string(),
        })
    }

    /// The response body of a successful call (errors mapped), unparsed.
    async fn request_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<hyper::body::Bytes, ApiError> {
        let (status, text) = match &self.transport {
            Transport::Tcp { base, key, client } => {
                let m =
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
                let mut req = client
                    .request(m, format!("{base}{path}"))
                    .bearer_auth(key.expose());
                if let Some(b) = &body {
                    req = req
                        .header("content-type", "application/json")
                        .body(b.to_string());
                }
                let resp = req.send().await.map_err(|e| ApiError::Unreachable {
                    target: self.target.clone(),
                    detail: error_chain(&e),
                })?;
                let status = resp.status().as_u16();
                // Read into one buffer sized from Content-Length: no doubling copies of a
                // large node list.
                let mut resp = resp;
                let mut buf =
                    Vec::with_capacity(resp.content_length().unwrap_or(0).min(512 << 20) as usize);
                while let Some(chunk) = resp.chunk().await.map_err(|e| ApiError::Unreachable {
                    target: self.target.clone(),
                    detail: error_chain(&e),
                })? {
                    buf.extend_from_slice(&chunk);
                }
                (status, hyper::body::Bytes::from(buf))
            }
            Transport::Unix { socket } => unix_request(socket, method, path, body.as_ref()).await?,
            Transport::Grpc(_) => {
                return Err(ApiError::Shape {
                    path: path.to_string(),
                    detail: "REST call on a gRPC connection".into(),
                })
            }
        };
        match status {
            200..=299 => Ok(text),
            401 => Err(ApiError::Unauthorized {
                target: self.target.clone(),
            }),
            _ => {
                let message = serde_json::from_slice::<Value>(&text)
                    .ok()
                    .and_then(|v| {
                        v.get("message")
                            .or_else(|| v.get("detail"))
                            .and_then(|m| m.as_str())
                            .map(String::from)
                    })
                    .unwrap_or_else(|| String::from_utf8_lossy(&text).chars().take(200).collect());
                Err(ApiError::Status {
                    method: method.to_string(),
                    path: path.to_string(),
                    status,
                    message,
                })
            }
        }
    }

    fn at_least(&self, minor: u64, patch: u64) -> bool {
        (self.version.minor, self.version.patch) >= (minor, patch)
    }

    pub async fn list_users(&self) -> Result<Vec<User>, ApiError> {
        if let Transport::Grpc(g) = &self.transport {
            return g.list_users().await;
        }
        let v = self.request("GET", "/api/v1/user", None).await?;
        Ok(v.get("users")
            .and_then(|u| u.as_array())
            .map(|a| a.iter().filter_map(|u| user_of(Some(u))).collect())
            .unwrap_or_default())
    }

    pub async fn list_nodes(&self) -> Result<Vec<Node>, ApiError> {
        if let Transport::Grpc(g) = &self.transport {
            return g.list_nodes().await;
        }
        // Typed parsing straight from the body: 100,000 nodes must not become a JSON tree.
        let text = self.request_raw("GET", "/api/v1/node", None).await?;
        parse_node_list(&text)
    }

    /// A one-time key for `user` (or for `tags`), always with an explicit expiration.
    pub async fn create_preauth_key(
        &self,
        user: Option<&User>,
        tags: &[String],
        expires_at: i64,
    ) -> Result<PreAuthKey, ApiError> {
        if let Transport::Grpc(g) = &self.transport {
            return g
                .create_preauth_key(user.map(|u| u.id), tags, expires_at)
                .await;
        }
        let mut body = json!({"reusable": false, "ephemeral": false, "expiration": state::rfc3339(expires_at)});
        if let Some(u) = user {
            body["user"] = json!(u.id.to_string());
        }
        if !tags.is_empty() {
            body["aclTags"] = json!(tags);
        }
        let v = self
            .request("POST", "/api/v1/preauthkey", Some(body))
            .await?;
        v.get("preAuthKey")
            .and_then(parse_preauth)
            .ok_or_else(|| ApiError::Shape {
                path: "/api/v1/preauthkey".into(),
                detail: "no preAuthKey".into(),
            })
    }

    /// All pre-auth keys (0.28+), or those of `users` (older servers list per user).
    pub async fn list_preauth_keys(&self, users: &[User]) -> Result<Vec<PreAuthKey>, ApiError> {
        if let Transport::Grpc(g) = &self.transport {
            if self.at_least(28, 0) {
                return g.list_preauth_keys(0).await;
            }
            let mut out = Vec::new();
            for u in users {
                out.extend(g.list_preauth_keys(u.id).await?);
            }
            return Ok(out);
        }
        let parse = |v: Value| -> Vec<PreAuthKey> {
            v.get("preAuthKeys")
                .and_then(|k| k.as_array())
                .map(|a| a.iter().filter_map(parse_preauth).collect())
                .unwrap_or_default()
        };
        if self.at_least(28, 0) {
            return Ok(parse(
                self.request("GET", "/api/v1/preauthkey", None).await?,
            ));
        }
        let mut out = Vec::new();
        for u in users {
            out.extend(parse(
                self.request("GET", &format!("/api/v1/preauthkey?user={}", u.id), None)
                    .await?,
            ));
        }
        Ok(out)
    }

    /// Expires a pre-auth key: by id (0.28+), by user + full key before.
    pub async fn expire_preauth_key(
        &self,
        id: u64,
        user: Option<&User>,
        key: &Secret,
    ) -> Result<(), ApiError> {
        if let Transport::Grpc(g) = &self.transport {
            return if self.at_least(28, 0) {
                g.expire_preauth_key(id, "").await
            } else {
                g.expire_preauth_key(user.map_or(0, |u| u.id), key.expose())
                    .await
            };
        }
        let body = if self.at_least(28, 0) {
            json!({"id": id.to_string()})
        } else {
            json!({"user": user.map(|u| u.id.to_string()).unwrap_or_default(), "key": key.expose()})
        };
        self.request("POST", "/api/v1/preauthkey/expire", Some(body))
            .await
            .map(|_| ())
    }

    /// Expires a node now, or at `at` (0.27.1+); query parameters up to 0.29, JSON body in 0.30.
    pub async fn expire_node(&self, id: u64, at: Option<i64>) -> Result<Node, ApiError> {
        if let Transport::Grpc(g) = &self.transport {
            let expiry = at.filter(|_| self.at_least(27, 1)).map(grpc::timestamp);
            return g.expire_node(id, expiry).await;
        }
        let path = format!("/api/v1/node/{id}/expire");
        let v = if self.at_least(30, 0) {
            let mut body = json!({});
            if let Some(t) = at {
                body["expiry"] = json!(state::rfc3339(t));
            }
            self.request("POST", &path, Some(body)).await?
        } else {
            let q = match at {
                Some(t) if self.at_least(27, 1) => format!(
                    "?expiry={}",
                    state::rfc3339(t).replace(':', "%3A").replace('+', "%2B")
                ),
                _ => String::new(),
            };
            self.request("POST", &format!("{path}{q}"), None).await?
        };
        v.get("node")
            .and_then(parse_node)
            .ok_or_else(|| ApiError::Shape {
                path,
                detail: "no node".into(),
            })
    }

    pub async fn delete_node(&self, id: u64) -> Result<(), ApiError> {
        if let Transport::Grpc(g) = &self.transport {
            return g.delete_node(id).await;
        }
        self.request("DELETE", &format!("/api/v1/node/{id}"), None)
            .await
            .map(|_| ())
    }

    /// The prefix of the API key this client authenticates with (TCP only).
    pub fn own_key_prefix(&self) -> Option<String> {
        match &self.transport {
            Transport::Tcp { key, .. } => api_key_prefix(key.expose()),
            _ => None,
        }
    }

    /// Creates an API key expiring at `expires_at`; returns the full key (shown once).
    pub async fn create_api_key(&self, expires_at: i64) -> Result<Secret, ApiError> {
        let v = self
            .request(
                "POST",
                "/api/v1/apikey",
                Some(json!({"expiration": state::rfc3339(expires_at)})),
            )
            .await?;
        v.get("apiKey")
            .and_then(|k| k.as_str())
            .map(Secret::new)
            .ok_or_else(|| ApiError::Shape {
                path: "/api/v1/apikey".into(),
                detail: "no apiKey".into(),
            })
    }

    pub async fn expire_api_key(&self, prefix: &str) -> Result<(), ApiError> {
        self.request(
            "POST",
            "/api/v1/apikey/expire",
            Some(json!({"prefix": prefix})),
        )
        .await
        .map(|_| ())
    }

    /// Switches this client to a new API key (after rotating it).
    pub fn use_key(&mut self, new: Secret) {
        if let Transport::Tcp { key, .. } = &mut self.transport {
            *key = new;
        }
    }

    /// GetPolicy (database policy mode): the policy text (HuJSON).
    pub async fn get_policy(&self) -> Result<String, ApiError> {
        if let Transport::Grpc(g) = &self.transport {
            return g.get_policy().await;
        }
        let v = self.request("GET", "/api/v1/policy", None).await?;
        Ok(v.get("policy")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyInfo>, ApiError> {
        if let Transport::Grpc(g) = &self.transport {
            return g.list_api_keys().await;
        }
        let v = self.request("GET", "/api/v1/apikey", None).await?;
        Ok(v.get("apiKeys")
            .and_then(|k| k.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|k| {
                        Some(ApiKeyInfo {
                            id: u64_of(k.get("id"))?,
                            prefix: k.get("prefix")?.as_str()?.to_string(),
                            expiration: time_of(k.get("expiration")),
                            created_at: time_of(k.get("createdAt")),
                            last_seen: time_of(k.get("lastSeen")),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

async fn unix_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, hyper::body::Bytes), ApiError> {
    use http_body_util::{BodyExt, Full};
    let target = format!("unix://{}", socket.display());
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => ApiError::SocketPermission {
                path: socket.to_path_buf(),
            },
            _ => ApiError::Unreachable {
                target: target.clone(),
                detail: e.to_string(),
            },
        })?;
    let unreachable = |e: &dyn std::fmt::Display| ApiError::Unreachable {
        target: target.clone(),
        detail: e.to_string(),
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(bytes_of(payload)))
        .map_err(|e| unreachable(&e))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(&e))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    Ok((status, bytes))
}

fn bytes_of(s: String) -> hyper::body::Bytes {
    hyper::body::Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_from_every_version_shape() {
        let v030 = json!({"id": "7", "machineKey": "mkey:a", "nodeKey": "nodekey:b", "name": "laptop", "givenName": "laptop",
            "user": {"id": "3", "name": "alice"}, "createdAt": "2026-01-01T00:00:00Z", "expiry": "2026-06-01T00:00:00Z", "tags": ["tag:x"]});
        let n = parse_node(&v030).expect("node");
        assert_eq!(
            (n.id, n.user.name.as_str(), n.tags.clone()),
            (7, "alice", vec!["tag:x".to_string()])
        );
        assert!(n.expiry.is_some() && n.created_at.is_some());
        let v026 = json!({"id": "8", "machineKey": "m", "nodeKey": "k", "forcedTags": ["tag:a"], "validTags": ["tag:a", "tag:b"], "expiry": "0001-01-01T00:00:00Z"});
        let n = parse_node(&v026).expect("node");
        assert_eq!(n.tags, vec!["tag:a".to_string(), "tag:b".to_string()]);
        assert_eq!(n.expiry, None, "Go's zero time means never");
        let cli =
            json!({"id": 9, "machine_key": "m", "node_key": "k", "user": {"id": 1, "name": "bob"}});
        assert_eq!(parse_node(&cli).expect("node").user.name, "bob");
        assert!(parse_node(&json!({"name": "no id"})).is_none());
    }

    #[test]
    fn api_key_prefixes() {
        assert_eq!(
            api_key_prefix("hskey-api-abcdef123456-0123").as_deref(),
            Some("abcdef123456")
        );
        assert_eq!(api_key_prefix("abc1234.secret").as_deref(), Some("abc1234"));
        assert_eq!(api_key_prefix("garbage"), None);
    }

    #[test]
    fn typed_and_tree_parsing_agree() {
        let body = json!({"nodes": [
            {"id": "7", "machineKey": "mkey:a", "nodeKey": "nodekey:b", "name": "laptop", "givenName": "laptop",
             "user": {"id": "3", "name": "alice"}, "createdAt": "2026-01-01T00:00:00Z", "expiry": "0001-01-01T00:00:00Z",
             "forcedTags": ["tag:a"], "validTags": ["tag:b"], "online": true},
            {"id": 8, "machine_key": "m", "node_key": "k", "user": {"id": 1, "name": "bob"}, "tags": ["tag:x"]}
        ]});
        let raw = body.to_string();
        let wire: WireNodes = serde_json::from_str(&raw).expect("typed");
        let typed: Vec<Node> = wire.nodes.into_iter().map(WireNode::into_node).collect();
        let tree: Vec<Node> = body["nodes"]
            .as_array()
            .expect("a")
            .iter()
            .map(|n| parse_node(n).expect("n"))
            .collect();
        assert_eq!(typed, tree);
    }

    #[test]
    fn versions() {
        assert!(check_version(&Version::new(0, 26, 0)).is_ok());
        assert!(check_version(&Version::new(0, 30, 0)).is_ok());
        assert!(check_version(&Version::new(0, 25, 1)).is_err());
        assert!(check_version(&Version::new(1, 0, 0)).is_err());
    }
}
