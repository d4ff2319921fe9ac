//! What the Headscale API returns, whatever the transport (REST, gRPC on the socket or over
//! TLS, HTTP on the 0.30 socket): the domain types `api` and `grpc` both convert into, and the
//! API's error. Neither transport imports the other for them.

use std::path::PathBuf;

use crate::error::Hinted;
use crate::settings::Secret;

/// Versions whose API shapes headwarden knows.
pub const SUPPORTED: &str = "0.26–0.30";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the Headscale API at {target}: {detail}")]
    Unreachable { target: String, detail: String },
    #[error("no permission to use the Headscale socket {path}")]
    SocketPermission { path: PathBuf },
    #[error("the Headscale API at {target} refused the API key (401 Unauthorized)")]
    Unauthorized { target: String },
    #[error("Headscale {version} is not a version headwarden knows ({SUPPORTED})")]
    UnknownVersion { version: String },
    #[error("{method} {path} failed with HTTP {status}: {message}")]
    Status {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{path}: unexpected response: {detail}")]
    Shape { path: String, detail: String },
    #[error("headscale.api.api_key_file is required for {url}")]
    MissingKey { url: String },
    #[error("API key file {path}: {detail}")]
    KeyFile { path: PathBuf, detail: String },
}

impl Hinted for ApiError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            ApiError::Unreachable { .. } => "check headscale.api.url and that headscale is running".into(),
            ApiError::SocketPermission { path } => format!("run headwarden as a user in the socket's group, or widen unix_socket_permission for {}", path.display()),
            ApiError::Unauthorized { .. } => "the key is expired or revoked: create one with `headscale apikeys create --expiration 90d` and put it in headscale.api.api_key_file".into(),
            ApiError::UnknownVersion { .. } => "upgrade headwarden, or point it at a supported Headscale".into(),
            ApiError::MissingKey { .. } => "create an API key with `headscale apikeys create` and store it in a file readable only by headwarden".into(),
            ApiError::KeyFile { path, .. } => format!("chmod 600 {}", path.display()),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub id: u64,
    pub name: String,
}

/// A node, as the key job sees it. Times are unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    pub id: u64,
    pub machine_key: String,
    pub node_key: String,
    pub name: String,
    pub given_name: String,
    pub user: User,
    pub created_at: Option<i64>,
    pub last_seen: Option<i64>,
    /// `None`: the node never expires (null expiry).
    pub expiry: Option<i64>,
    pub tags: Vec<String>,
    pub register_method: String,
    pub online: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PreAuthKey {
    pub id: u64,
    pub user: Option<User>,
    /// Full key only right after creation; listings show a masked prefix (0.28+).
    #[serde(skip)]
    pub key: Secret,
    pub reusable: bool,
    pub ephemeral: bool,
    pub used: bool,
    pub expiration: Option<i64>,
    pub created_at: Option<i64>,
    pub acl_tags: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ApiKeyInfo {
    pub id: u64,
    pub prefix: String,
    pub expiration: Option<i64>,
    pub created_at: Option<i64>,
    pub last_seen: Option<i64>,
}
