//! gRPC `headscale.v1.HeadscaleService` on the unix socket, as Headscale ≤0.29 serves it (no
//! TLS, no auth). Each RPC runs the same handler as its REST twin (one source of truth for the
//! stand-in's behaviour per version) and converts protojson to protobuf.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tonic::{Request, Status};

use super::api;
use super::server::{list_users, Shared};

#[allow(clippy::all, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("headscale.v1");
}

use pb::headscale_service_server::{HeadscaleService, HeadscaleServiceServer};

pub struct SimGrpc {
    state: Shared,
}

/// Remote gRPC on grpc_listen_addr: TLS when certificate files are given, and an API key in the
/// `authorization` metadata on every call ("Bearer <key>"), as upstream requires.
pub async fn serve_remote(
    state: Shared,
    listener: tokio::net::TcpListener,
    tls: Option<(Vec<u8>, Vec<u8>)>,
) {
    let auth_state = state.clone();
    let check = move |req: Request<()>| {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("authorization token not supplied"))?;
        let key = token.strip_prefix("Bearer ").ok_or_else(|| {
            Status::unauthenticated("missing \"Bearer \" prefix in \"Authorization\" header")
        })?;
        if !super::server::valid_api_key(&auth_state, key) {
            return Err(Status::unauthenticated("invalid token"));
        }
        Ok(req)
    };
    let svc = HeadscaleServiceServer::with_interceptor(SimGrpc { state }, check);
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        builder = match builder.tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key)),
        ) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("ERR gRPC TLS: {e}");
                return;
            }
        };
    }
    if let Err(e) = builder
        .add_service(svc)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
    {
        eprintln!("ERR gRPC server: {e}");
    }
}

pub fn routes(state: Shared) -> axum::Router {
    tonic::service::Routes::new(HeadscaleServiceServer::new(SimGrpc { state })).into_axum_router()
}

async fn json_of(r: Response) -> Result<Value, Status> {
    let status = r.status().as_u16();
    let bytes = r
        .into_body()
        .collect()
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let message = v
        .get("message")
        .and_then(|m| m.as_str())
        .map(String::from)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    match status {
        200..=299 => Ok(v),
        400 => Err(Status::invalid_argument(message)),
        401 => Err(Status::unauthenticated(message)),
        404 => Err(Status::not_found(message)),
        _ => Err(Status::internal(message)),
    }
}

fn done<T: IntoResponse, E: IntoResponse>(r: Result<T, E>) -> Response {
    match r {
        Ok(v) => v.into_response(),
        Err(e) => e.into_response(),
    }
}

fn ts(v: Option<&Value>) -> Option<prost_types::Timestamp> {
    let s = v?.as_str()?;
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    })
}

fn rfc3339(t: &prost_types::Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn id(v: Option<&Value>) -> u64 {
    v.and_then(|x| {
        x.as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| x.as_u64())
    })
    .unwrap_or(0)
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string()
}

fn strings(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(|a| a.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn user(v: Option<&Value>) -> Option<pb::User> {
    let u = v?;
    Some(pb::User {
        id: id(u.get("id")),
        name: s(u, "name"),
        created_at: ts(u.get("createdAt")),
        ..Default::default()
    })
}

fn node(v: &Value) -> pb::Node {
    pb::Node {
        id: id(v.get("id")),
        machine_key: s(v, "machineKey"),
        node_key: s(v, "nodeKey"),
        disco_key: s(v, "discoKey"),
        ip_addresses: strings(v, "ipAddresses"),
        name: s(v, "name"),
        user: user(v.get("user")),
        last_seen: ts(v.get("lastSeen")),
        expiry: ts(v.get("expiry")),
        created_at: ts(v.get("createdAt")),
        register_method: pb::RegisterMethod::from_str_name(&s(v, "registerMethod"))
            .unwrap_or_default() as i32,
        forced_tags: strings(v, "forcedTags"),
        invalid_tags: strings(v, "invalidTags"),
        valid_tags: strings(v, "validTags"),
        given_name: s(v, "givenName"),
        online: v.get("online").and_then(|o| o.as_bool()).unwrap_or(false),
        tags: strings(v, "tags"),
        ..Default::default()
    }
}

fn preauth(v: &Value) -> pb::PreAuthKey {
    pb::PreAuthKey {
        user: user(v.get("user")),
        id: id(v.get("id")),
        key: s(v, "key"),
        reusable: v.get("reusable").and_then(|b| b.as_bool()).unwrap_or(false),
        ephemeral: v
            .get("ephemeral")
            .and_then(|b| b.as_bool())
            .unwrap_or(false),
        used: v.get("used").and_then(|b| b.as_bool()).unwrap_or(false),
        expiration: ts(v.get("expiration")),
        created_at: ts(v.get("createdAt")),
        acl_tags: strings(v, "aclTags"),
    }
}

fn bytes(v: Value) -> axum::body::Bytes {
    axum::body::Bytes::from(v.to_string())
}

type R<T> = Result<tonic::Response<T>, Status>;

#[tonic::async_trait]
impl HeadscaleService for SimGrpc {
    async fn list_users(&self, _: Request<pb::ListUsersRequest>) -> R<pb::ListUsersResponse> {
        let v = json_of(done(list_users(State(self.state.clone())).await)).await?;
        let users = v["users"]
            .as_array()
            .map(|a| a.iter().filter_map(|u| user(Some(u))).collect())
            .unwrap_or_default();
        Ok(tonic::Response::new(pb::ListUsersResponse { users }))
    }

    async fn list_nodes(&self, req: Request<pb::ListNodesRequest>) -> R<pb::ListNodesResponse> {
        let mut q = HashMap::new();
        q.insert("user".to_string(), req.into_inner().user);
        let v = json_of(done(
            api::list_nodes(State(self.state.clone()), Query(q)).await,
        ))
        .await?;
        Ok(tonic::Response::new(pb::ListNodesResponse {
            nodes: v["nodes"]
                .as_array()
                .map(|a| a.iter().map(node).collect())
                .unwrap_or_default(),
        }))
    }

    async fn get_node(&self, req: Request<pb::GetNodeRequest>) -> R<pb::GetNodeResponse> {
        let v = json_of(done(
            api::get_node(
                State(self.state.clone()),
                Path(req.into_inner().node_id as i64),
            )
            .await,
        ))
        .await?;
        Ok(tonic::Response::new(pb::GetNodeResponse {
            node: Some(node(&v["node"])),
        }))
    }

    async fn expire_node(&self, req: Request<pb::ExpireNodeRequest>) -> R<pb::ExpireNodeResponse> {
        let r = req.into_inner();
        let mut q = HashMap::new();
        if let Some(t) = &r.expiry {
            q.insert("expiry".to_string(), rfc3339(t));
        }
        if r.disable_expiry {
            q.insert("disableExpiry".to_string(), "true".to_string());
        }
        let v = json_of(done(
            api::expire_node(
                State(self.state.clone()),
                Path(r.node_id as i64),
                Query(q),
                axum::body::Bytes::new(),
            )
            .await,
        ))
        .await?;
        Ok(tonic::Response::new(pb::ExpireNodeResponse {
            node: Some(node(&v["node"])),
        }))
    }

    async fn delete_node(&self, req: Request<pb::DeleteNodeRequest>) -> R<pb::DeleteNodeResponse> {
        json_of(done(
            api::delete_node(
                State(self.state.clone()),
                Path(req.into_inner().node_id as i64),
            )
            .await,
        ))
        .await?;
        Ok(tonic::Response::new(pb::DeleteNodeResponse {}))
    }

    async fn create_pre_auth_key(
        &self,
        req: Request<pb::CreatePreAuthKeyRequest>,
    ) -> R<pb::CreatePreAuthKeyResponse> {
        let r = req.into_inner();
        let mut body =
            json!({"reusable": r.reusable, "ephemeral": r.ephemeral, "aclTags": r.acl_tags});
        if r.user != 0 {
            body["user"] = json!(r.user.to_string());
        }
        if let Some(t) = &r.expiration {
            body["expiration"] = json!(rfc3339(t));
        }
        let v = json_of(done(
            api::create_preauth(State(self.state.clone()), bytes(body)).await,
        ))
        .await?;
        Ok(tonic::Response::new(pb::CreatePreAuthKeyResponse {
            pre_auth_key: Some(preauth(&v["preAuthKey"])),
        }))
    }

    async fn expire_pre_auth_key(
        &self,
        req: Request<pb::ExpirePreAuthKeyRequest>,
    ) -> R<pb::ExpirePreAuthKeyResponse> {
        let r = req.into_inner();
        // Field 1 is the key id from 0.28, the user id before (with the key in field 2).
        let body = if self.state.version.minor >= 28 {
            json!({"id": r.id.to_string()})
        } else {
            json!({"user": r.id.to_string(), "key": r.key})
        };
        json_of(done(
            api::expire_preauth(State(self.state.clone()), bytes(body)).await,
        ))
        .await?;
        Ok(tonic::Response::new(pb::ExpirePreAuthKeyResponse {}))
    }

    async fn list_pre_auth_keys(
        &self,
        req: Request<pb::ListPreAuthKeysRequest>,
    ) -> R<pb::ListPreAuthKeysResponse> {
        let mut q = HashMap::new();
        let user = req.into_inner().user;
        if user != 0 {
            q.insert("user".to_string(), user.to_string());
        }
        let v = json_of(done(
            api::list_preauth(State(self.state.clone()), Query(q)).await,
        ))
        .await?;
        Ok(tonic::Response::new(pb::ListPreAuthKeysResponse {
            pre_auth_keys: v["preAuthKeys"]
                .as_array()
                .map(|a| a.iter().map(preauth).collect())
                .unwrap_or_default(),
        }))
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> R<pb::CreateApiKeyResponse> {
        let body = match &req.into_inner().expiration {
            Some(t) => json!({"expiration": rfc3339(t)}),
            None => json!({}),
        };
        let v = json_of(done(
            api::create_apikey(State(self.state.clone()), bytes(body)).await,
        ))
        .await?;
        Ok(tonic::Response::new(pb::CreateApiKeyResponse {
            api_key: s(&v, "apiKey"),
        }))
    }

    async fn expire_api_key(
        &self,
        req: Request<pb::ExpireApiKeyRequest>,
    ) -> R<pb::ExpireApiKeyResponse> {
        let r = req.into_inner();
        let body = if r.prefix.is_empty() {
            json!({"id": r.id.to_string()})
        } else {
            json!({"prefix": r.prefix})
        };
        json_of(done(
            api::expire_apikey(State(self.state.clone()), bytes(body)).await,
        ))
        .await?;
        Ok(tonic::Response::new(pb::ExpireApiKeyResponse {}))
    }

    async fn list_api_keys(
        &self,
        _: Request<pb::ListApiKeysRequest>,
    ) -> R<pb::ListApiKeysResponse> {
        let v = json_of(done(api::list_apikeys(State(self.state.clone())).await)).await?;
        let api_keys = v["apiKeys"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|k| pb::ApiKey {
                        id: id(k.get("id")),
                        prefix: s(k, "prefix"),
                        expiration: ts(k.get("expiration")),
                        created_at: ts(k.get("createdAt")),
                        last_seen: ts(k.get("lastSeen")),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(tonic::Response::new(pb::ListApiKeysResponse { api_keys }))
    }

    async fn get_policy(&self, _: Request<pb::GetPolicyRequest>) -> R<pb::GetPolicyResponse> {
        let v = json_of(done(api::get_policy(State(self.state.clone())).await)).await?;
        Ok(tonic::Response::new(pb::GetPolicyResponse {
            policy: s(&v, "policy"),
            updated_at: ts(v.get("updatedAt")),
        }))
    }

    async fn health(&self, _: Request<pb::HealthRequest>) -> R<pb::HealthResponse> {
        let ok = self
            .state
            .db
            .lock()
            .map(|db| db.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).is_ok())
            .unwrap_or(false);
        if !ok {
            return Err(Status::internal("database ping failed"));
        }
        Ok(tonic::Response::new(pb::HealthResponse {
            database_connectivity: true,
        }))
    }
}
