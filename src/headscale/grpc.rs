//! gRPC `headscale.v1.HeadscaleService` over the local unix socket (≤0.29: no TLS, no auth —
//! local trust, as upstream's CLI uses it). Code generated at build time from
//! `proto/headscale/v1/headscale.proto` by protox + tonic-prost-build (no protoc needed).
//! Protobuf types are converted into the domain types of `api` right here.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};

use super::model::{ApiError, ApiKeyInfo, Node, PreAuthKey, User};
use crate::error::error_chain;
use crate::settings::Secret;

#[allow(clippy::all, clippy::unwrap_used, missing_docs)]
pub mod pb {
    tonic::include_proto!("headscale.v1");
}

use pb::headscale_service_client::HeadscaleServiceClient;

/// Adds `authorization: Bearer <API key>` to every call (remote gRPC); nothing on the socket.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[derive(Clone)]
pub struct GrpcClient {
    inner: HeadscaleServiceClient<InterceptedService<Channel, Auth>>,
    /// Where it is connected (for messages): unix://… or grpcs://…
    target: String,
}

/// Largest response accepted (100,000 nodes are about 30 MB of protobuf).
const MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// Go's zero time (0001-01-01T00:00:00Z) as unix seconds.
const GO_ZERO_TIME: i64 = -62_135_596_800;

fn secs(t: Option<prost_types::Timestamp>) -> Option<i64> {
    t.map(|t| t.seconds).filter(|s| *s > GO_ZERO_TIME)
}

pub fn timestamp(secs: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    }
}

fn user(u: Option<pb::User>) -> Option<User> {
    u.map(|u| User {
        id: u.id,
        name: u.name,
    })
}

pub fn node(n: pb::Node) -> Node {
    let mut tags = n.tags;
    if tags.is_empty() {
        tags = n.forced_tags;
        for t in n.valid_tags {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
    }
    Node {
        id: n.id,
        machine_key: n.machine_key,
        node_key: n.node_key,
        name: n.name,
        given_name: n.given_name,
        user: user(n.user).unwrap_or(User {
            id: 0,
            name: String::new(),
        }),
        created_at: secs(n.created_at),
        last_seen: secs(n.last_seen),
        expiry: secs(n.expiry),
        tags,
        register_method: pb::RegisterMethod::try_from(n.register_method)
            .map(|m| m.as_str_name().to_string())
            .unwrap_or_default(),
        online: n.online,
    }
}

fn preauth(k: pb::PreAuthKey) -> PreAuthKey {
    PreAuthKey {
        id: k.id,
        user: user(k.user).filter(|u| u.id != 0 || !u.name.is_empty()),
        key: Secret::new(k.key),
        reusable: k.reusable,
        ephemeral: k.ephemeral,
        used: k.used,
        expiration: secs(k.expiration),
        created_at: secs(k.created_at),
        acl_tags: k.acl_tags,
    }
}

impl GrpcClient {
    pub async fn connect(socket: &Path) -> Result<GrpcClient, ApiError> {
        let target = format!("unix://{}", socket.display());
        let path = socket.to_path_buf();
        // The URI is required by the API but unused: the connector always dials the socket.
        let endpoint = Endpoint::try_from("http://headscale.sock")
            .map_err(|e| ApiError::Unreachable {
                target: target.clone(),
                detail: e.to_string(),
            })?
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(30));
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            }))
            .await
            .map_err(|e| classify_connect(socket, &e))?;
        Ok(GrpcClient {
            // A node list of a large tailnet exceeds tonic's 4 MiB default.
            inner: HeadscaleServiceClient::with_interceptor(channel, Auth(None))
                .max_decoding_message_size(MAX_MESSAGE),
            target: format!("unix://{}", socket.display()),
        })
    }

    /// Remote gRPC (`grpcs://host:port`): always TLS, as upstream's CLI (`RequireTransportSecurity`),
    /// with the API key in the `authorization` metadata. `ca_pem` trusts a private CA; otherwise
    /// the system roots.
    pub async fn connect_tls(
        host_port: &str,
        ca_pem: Option<Vec<u8>>,
        key: &Secret,
    ) -> Result<GrpcClient, ApiError> {
        let target = format!("grpcs://{host_port}");
        let unreachable = |detail: String| ApiError::Unreachable {
            target: target.clone(),
            detail,
        };
        let host = host_port
            .rsplit_once(':')
            .map_or(host_port, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let mut tls = ClientTlsConfig::new().domain_name(host.to_string());
        tls = match ca_pem {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        let endpoint = Endpoint::try_from(format!("https://{host_port}"))
            .map_err(|e| unreachable(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| unreachable(error_chain(&e)))?
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(30));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let bearer: MetadataValue<Ascii> =
            format!("Bearer {}", key.expose())
                .parse()
                .map_err(|_| ApiError::KeyFile {
                    path: PathBuf::from("api_key_file"),
                    detail: "not a valid header value".into(),
                })?;
        Ok(GrpcClient {
            inner: HeadscaleServiceClient::with_interceptor(channel, Auth(Some(bearer)))
                .max_decoding_message_size(MAX_MESSAGE),
            target,
        })
    }

    fn status(&self, rpc: &str, s: tonic::Status) -> ApiError {
        match s.code() {
            tonic::Code::Unauthenticated => ApiError::Unauthorized {
                target: self.target.clone(),
            },
            tonic::Code::Unavailable => ApiError::Unreachable {
                target: self.target.clone(),
                detail: s.message().to_string(),
            },
            code => ApiError::Status {
                method: "gRPC".into(),
                path: format!("/headscale.v1.HeadscaleService/{rpc}"),
                status: code as u16,
                message: s.message().to_string(),
            },
        }
    }

    pub async fn health(&self) -> Result<bool, ApiError> {
        let r = self
            .inner
            .clone()
            .health(pb::HealthRequest {})
            .await
            .map_err(|e| self.status("Health", e))?;
        Ok(r.into_inner().database_connectivity)
    }

    pub async fn list_users(&self) -> Result<Vec<User>, ApiError> {
        let r = self
            .inner
            .clone()
            .list_users(pb::ListUsersRequest::default())
            .await
            .map_err(|e| self.status("ListUsers", e))?;
        Ok(r.into_inner()
            .users
            .into_iter()
            .map(|u| User {
                id: u.id,
                name: u.name,
            })
            .collect())
    }

    pub async fn list_nodes(&self) -> Result<Vec<Node>, ApiError> {
        let r = self
            .inner
            .clone()
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .map_err(|e| self.status("ListNodes", e))?;
        Ok(r.into_inner().nodes.into_iter().map(node).collect())
    }

    pub async fn expire_node(
        &self,
        id: u64,
        at: Option<prost_types::Timestamp>,
    ) -> Result<Node, ApiError> {
        let req = pb::ExpireNodeRequest {
            node_id: id,
            expiry: at,
            disable_expiry: false,
        };
        let r = self
            .inner
            .clone()
            .expire_node(req)
            .await
            .map_err(|e| self.status("ExpireNode", e))?;
        r.into_inner()
            .node
            .map(node)
            .ok_or_else(|| ApiError::Shape {
                path: "ExpireNode".into(),
                detail: "no node".into(),
            })
    }

    pub async fn delete_node(&self, id: u64) -> Result<(), ApiError> {
        self.inner
            .clone()
            .delete_node(pb::DeleteNodeRequest { node_id: id })
            .await
            .map_err(|e| self.status("DeleteNode", e))?;
        Ok(())
    }

    pub async fn create_preauth_key(
        &self,
        user_id: Option<u64>,
        tags: &[String],
        expires_at: i64,
    ) -> Result<PreAuthKey, ApiError> {
        let req = pb::CreatePreAuthKeyRequest {
            user: user_id.unwrap_or(0),
            reusable: false,
            ephemeral: false,
            expiration: Some(timestamp(expires_at)),
            acl_tags: tags.to_vec(),
        };
        let r = self
            .inner
            .clone()
            .create_pre_auth_key(req)
            .await
            .map_err(|e| self.status("CreatePreAuthKey", e))?;
        r.into_inner()
            .pre_auth_key
            .map(preauth)
            .ok_or_else(|| ApiError::Shape {
                path: "CreatePreAuthKey".into(),
                detail: "no key".into(),
            })
    }

    /// `user`: the user id, required before 0.28 (0 = all, 0.28+).
    pub async fn list_preauth_keys(&self, user: u64) -> Result<Vec<PreAuthKey>, ApiError> {
        let r = self
            .inner
            .clone()
            .list_pre_auth_keys(pb::ListPreAuthKeysRequest { user })
            .await
            .map_err(|e| self.status("ListPreAuthKeys", e))?;
        Ok(r.into_inner()
            .pre_auth_keys
            .into_iter()
            .map(preauth)
            .collect())
    }

    /// 0.28+: `id_or_user` is the key id and `key` empty; before: the user id and the full key.
    pub async fn expire_preauth_key(&self, id_or_user: u64, key: &str) -> Result<(), ApiError> {
        let req = pb::ExpirePreAuthKeyRequest {
            id: id_or_user,
            key: key.to_string(),
        };
        self.inner
            .clone()
            .expire_pre_auth_key(req)
            .await
            .map_err(|e| self.status("ExpirePreAuthKey", e))?;
        Ok(())
    }

    pub async fn get_policy(&self) -> Result<String, ApiError> {
        let r = self
            .inner
            .clone()
            .get_policy(pb::GetPolicyRequest {})
            .await
            .map_err(|e| self.status("GetPolicy", e))?;
        Ok(r.into_inner().policy)
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyInfo>, ApiError> {
        let r = self
            .inner
            .clone()
            .list_api_keys(pb::ListApiKeysRequest {})
            .await
            .map_err(|e| self.status("ListApiKeys", e))?;
        Ok(r.into_inner()
            .api_keys
            .into_iter()
            .map(|k| ApiKeyInfo {
                id: k.id,
                prefix: k.prefix,
                expiration: secs(k.expiration),
                created_at: secs(k.created_at),
                last_seen: secs(k.last_seen),
            })
            .collect())
    }
}

fn classify_connect(socket: &Path, e: &tonic::transport::Error) -> ApiError {
    let chain = error_chain(e);
    if chain.contains("Permission denied") || chain.contains("permission denied") {
        ApiError::SocketPermission {
            path: socket.to_path_buf(),
        }
    } else {
        ApiError::Unreachable {
            target: format!("unix://{}", socket.display()),
            detail: chain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_zero_times_from_older_servers() {
        let n = node(pb::Node {
            id: 4,
            forced_tags: vec!["tag:a".into()],
            valid_tags: vec!["tag:a".into(), "tag:b".into()],
            expiry: Some(timestamp(GO_ZERO_TIME)),
            created_at: Some(timestamp(1_700_000_000)),
            register_method: pb::RegisterMethod::Cli as i32,
            ..Default::default()
        });
        assert_eq!(n.tags, vec!["tag:a".to_string(), "tag:b".to_string()]);
        assert_eq!(n.expiry, None);
        assert_eq!(n.created_at, Some(1_700_000_000));
        assert_eq!(n.register_method, "REGISTER_METHOD_CLI");
    }
}
