//! The connectivity probe (`smoke.checks: connectivity`): headwarden acts as a Tailscale client
//! against an instance, the way a client that was connected before the upgrade comes back:
//!
//! 1. `key fetch`  `GET /key?v=<current capability version>`: the instance serves a key.
//! 2. `handshake`  the ts2021 upgrade and Noise IK handshake **with production's key** (the one
//!    clients hold; the served key when there is no baseline). A candidate that lost the key fails
//!    here, as every client would.
//! 3. `mint key`   the probe's own user and a one-time, ephemeral pre-auth key (10 minutes),
//!    through the instance's CLI.
//! 4. `register`   `POST /machine/register` with that key over the Noise channel.
//! 5. `map`        a streaming map request; the first response must carry the probe node itself,
//!    a non-empty DERP map and peers the server knows (all of them when no ACL policy restricts
//!    what the probe may see).
//! 6. `cleanup`    the probe's nodes are deleted, also after a failed step. [`sweep`] is what
//!    recovery runs after a crash. The user `headwarden-probe` stays (see [`sweep`]).
//!
//! The protocol is tailscale-rs's (`ts_control`, `ts_control_noise`); the key fetch is
//! headwarden's own (`headscale::http`), so it honours loopback http like every other check.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio_stream::StreamExt;
use ts_capabilityversion::CapabilityVersion;
use ts_control::client::{self as control, PeerUpdate, StateUpdate};
use ts_control::MapRequestBuilder;
use ts_control_serde::{HostInfo, RegisterAuth, RegisterRequest};
use ts_http_util::{BytesBody, ClientExt, Http2, ResponseExt};
use ts_keys::{MachineKeyPair, MachinePublicKey, NodeState};
use url::Url;

use super::Target;
use crate::headscale::cli::{self, CliError};
use crate::headscale::http;
use crate::headscale::NodeRef;
use crate::process;
use crate::settings::Secret;

/// The user the probe registers under; its nodes are the probe's.
pub const PROBE_USER: &str = "headwarden-probe";
/// The probe node's hostname starts with this.
pub const PROBE_HOST_PREFIX: &str = "headwarden-probe-";
/// How long the probe's one-time key is valid (a Go duration for the CLI).
const KEY_EXPIRATION: &str = "10m";

/// The step of the probe that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    KeyFetch,
    Handshake,
    MintKey,
    Register,
    Map,
    Cleanup,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::KeyFetch => "key fetch",
            Step::Handshake => "handshake",
            Step::MintKey => "mint key",
            Step::Register => "register",
            Step::Map => "map",
            Step::Cleanup => "cleanup",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("failed at {step}: {detail}")]
pub struct ProbeError {
    pub step: Step,
    pub detail: String,
}

fn fail(step: Step, detail: impl fmt::Display) -> ProbeError {
    ProbeError {
        step,
        detail: detail.to_string(),
    }
}

/// What the instance's map showed the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    pub derp_regions: usize,
    pub peers: usize,
    /// Nodes the instance lists besides the probe's.
    pub nodes: usize,
}

impl Probed {
    pub fn describe(&self) -> String {
        format!(
            "ts2021 handshake, registration and map: {} DERP region(s), {} peer(s) of {} node(s)",
            self.derp_regions, self.peers, self.nodes
        )
    }
}

/// Runs the probe against `t`. `production_key` is the Noise key production served before the
/// change (the one clients hold). Each step has `timeout`; the probe's node is removed before it
/// returns, whatever failed.
pub async fn probe(
    t: &Target,
    production_key: Option<&str>,
    timeout: Duration,
) -> Result<Probed, ProbeError> {
    let base = Url::parse(&t.base_url).map_err(|e| fail(Step::KeyFetch, e))?;
    let client = http::client(timeout);
    let served = http::noise_key(&client, &t.base_url)
        .await
        .map_err(|e| fail(Step::KeyFetch, e))?;
    let key_text = production_key.unwrap_or(&served);
    let server_key: MachinePublicKey = key_text
        .parse()
        .map_err(|_| fail(Step::KeyFetch, format!("{key_text:?} is not a machine key")))?;
    let state = NodeState::generate();
    let conn = within(timeout, Step::Handshake, handshake(&base, &state.machine_keys, &server_key))
        .await
        .map_err(|mut e| {
            if key_text != served {
                e.detail = format!(
                    "{}; the instance serves {served}, production's key is {key_text}: clients that hold production's key cannot connect",
                    e.detail
                );
            }
            e
        })?;

    let result = registered(t, &base, &state, &conn, timeout).await;
    drop(conn);
    let cleanup = sweep(t, timeout).await;
    let (probed, listed) = match (result, cleanup) {
        (Err(e), _) => return Err(e),
        (Ok(_), Err(e)) => return Err(fail(Step::Cleanup, e)),
        (Ok(update), Ok(listed)) => (update, listed),
    };
    judge(t, &state, &probed, &listed)
}

/// Steps 3 to 5: mint a key, register, read the first map response.
async fn registered(
    t: &Target,
    base: &Url,
    state: &NodeState,
    conn: &Http2<BytesBody>,
    timeout: Duration,
) -> Result<StateUpdate, ProbeError> {
    let key = mint(t, timeout).await.map_err(|e| fail(Step::MintKey, e))?;
    let hostname = hostname(state);
    within(
        timeout,
        Step::Register,
        register(base, state, &hostname, &key, conn),
    )
    .await?;
    process::crash_point(&format!("probe:{}:registered", t.name));
    within(timeout, Step::Map, async {
        let request = MapRequestBuilder::new(state)
            .as_stream()
            .hostname(&hostname)
            .build();
        let url = base.join("machine/map").map_err(|e| fail(Step::Map, e))?;
        let reader = control::send_map_request(request, &url, conn)
            .await
            .map_err(|e| fail(Step::Map, format!("the map request was refused: {e}")))?;
        let mut stream = Box::pin(control::map_stream(reader));
        stream
            .next()
            .await
            .ok_or_else(|| fail(Step::Map, "no map response could be read"))
    })
    .await
}

async fn within<T>(
    timeout: Duration,
    step: Step,
    f: impl Future<Output = Result<T, ProbeError>>,
) -> Result<T, ProbeError> {
    tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
        Err(fail(
            step,
            format!("no answer within {}s", timeout.as_secs()),
        ))
    })
}

/// The ts2021 upgrade with `server_key` (not the key `/key` serves now), then HTTP/2 inside.
async fn handshake(
    base: &Url,
    machine: &MachineKeyPair,
    server_key: &MachinePublicKey,
) -> Result<Http2<BytesBody>, ProbeError> {
    let h1 = if base.scheme() == "https" {
        ts_http_util::http1::connect_tls(base).await
    } else {
        ts_http_util::http1::connect_tcp(base).await
    }
    .map_err(|e| fail(Step::Handshake, format!("cannot connect: {e}")))?;
    let (handshake, init) = ts_control_noise::Handshake::initialize(
        &control::CONTROL_PROTOCOL_VERSION,
        machine,
        server_key,
        CapabilityVersion::CURRENT,
    );
    let noise = control::upgrade_ts2021(base, &init, handshake, machine, h1)
        .await
        .map_err(|e| fail(Step::Handshake, e))?;
    let noise = control::read_challenge_packet(noise)
        .await
        .map_err(|e| fail(Step::Handshake, e))?;
    ts_http_util::http2::connect(noise).await.map_err(|e| {
        fail(
            Step::Handshake,
            format!("HTTP/2 over the Noise channel: {e}"),
        )
    })
}

fn hostname(state: &NodeState) -> String {
    let key = state.node_keys.public.to_string();
    let hex = key.rsplit(':').next().unwrap_or_default();
    format!("{PROBE_HOST_PREFIX}{}", &hex[..hex.len().min(8)])
}

/// The probe's user (created when missing) and a one-time ephemeral key for it.
async fn mint(t: &Target, timeout: Duration) -> Result<Secret, CliError> {
    let users = cli::list_users(&t.cli, &t.config, timeout).await?;
    let user = match users.into_iter().find(|u| u.name == PROBE_USER) {
        Some(u) => u,
        None => cli::create_user(&t.cli, &t.config, PROBE_USER, timeout).await?,
    };
    cli::ephemeral_key(&t.cli, &t.config, user.id, KEY_EXPIRATION, timeout).await
}

/// `POST /machine/register` with the one-time key. The server's answer (never the key) is in
/// the error.
async fn register(
    base: &Url,
    state: &NodeState,
    hostname: &str,
    key: &Secret,
    conn: &Http2<BytesBody>,
) -> Result<(), ProbeError> {
    let request = RegisterRequest {
        version: CapabilityVersion::CURRENT,
        node_key: state.node_keys.public,
        hostinfo: HostInfo {
            hostname: Some(hostname),
            app: "headwarden",
            ipn_version: env!("CARGO_PKG_VERSION"),
            ..Default::default()
        },
        nl_key: Some(state.network_lock_keys.public),
        auth: Some(RegisterAuth::from(key.expose())),
        ephemeral: true,
        ..Default::default()
    };
    let body = serde_json::to_vec(&request).map_err(|e| fail(Step::Register, e))?;
    let url = base
        .join("machine/register")
        .map_err(|e| fail(Step::Register, e))?;
    let response = conn
        .post(&url, [], Bytes::from(body).into())
        .await
        .map_err(|e| fail(Step::Register, e))?;
    let status = response.status();
    let body = response
        .collect_bytes()
        .await
        .map_err(|e| fail(Step::Register, e))?;
    let text = String::from_utf8_lossy(&body);
    let said = || text.trim().chars().take(200).collect::<String>();
    if !status.is_success() {
        return Err(fail(Step::Register, format!("HTTP {status}: {}", said())));
    }
    let v: Value = serde_json::from_str(&text)
        .map_err(|_| fail(Step::Register, format!("unreadable answer: {}", said())))?;
    let error = v.get("Error").and_then(Value::as_str).unwrap_or_default();
    if !error.is_empty() {
        return Err(fail(Step::Register, format!("refused: {error}")));
    }
    if v.get("MachineAuthorized").and_then(Value::as_bool) != Some(true) {
        return Err(fail(
            Step::Register,
            "the one-time key did not authorize the probe node",
        ));
    }
    Ok(())
}

/// Deletes every node of the probe's user and returns the nodes the instance lists besides
/// them. Recovery runs this after a crash. The user itself is kept: on Headscale 0.28
/// `users destroy` deletes the pre-auth keys of *every* user (measured on the rig's 0.28.0;
/// 0.29.3 deletes only the user's own).
pub async fn sweep(t: &Target, timeout: Duration) -> Result<Vec<NodeRef>, CliError> {
    let nodes = cli::list_nodes(&t.cli, &t.config, timeout).await?;
    let (probes, others): (Vec<NodeRef>, Vec<NodeRef>) =
        nodes.into_iter().partition(|n| n.user == PROBE_USER);
    for n in &probes {
        cli::delete_node(&t.cli, &t.config, n.id, timeout).await?;
    }
    Ok(others)
}

/// Step 5's checks of the first map response, against the nodes the instance lists.
fn judge(
    t: &Target,
    state: &NodeState,
    update: &StateUpdate,
    listed: &[NodeRef],
) -> Result<Probed, ProbeError> {
    match &update.node {
        Some(n) if n.node_key == state.node_keys.public => {}
        Some(n) => {
            return Err(fail(
                Step::Map,
                format!(
                    "the map describes another node ({}) as the probe",
                    n.node_key
                ),
            ))
        }
        None => return Err(fail(Step::Map, "the map does not describe the probe node")),
    }
    let derp_regions = update.derp.as_ref().map_or(0, |d| d.len());
    if derp_regions == 0 {
        return Err(fail(
            Step::Map,
            "the map has no DERP region: clients behind NAT could not reach each other",
        ));
    }
    let peers: Vec<i64> = match &update.peer_update {
        Some(PeerUpdate::Full(peers)) => peers.iter().map(|p| p.id).collect(),
        Some(PeerUpdate::Delta { upsert, .. }) => upsert.iter().map(|p| p.id).collect(),
        None => vec![],
    };
    let unknown: Vec<String> = peers
        .iter()
        .filter(|id| {
            !listed
                .iter()
                .any(|n| i64::try_from(n.id).ok() == Some(**id))
        })
        .map(|id| id.to_string())
        .collect();
    if !unknown.is_empty() {
        return Err(fail(
            Step::Map,
            format!(
                "the map lists peers the instance does not (ids {})",
                unknown.join(", ")
            ),
        ));
    }
    if t.open_policy {
        let unseen: Vec<&str> = listed
            .iter()
            .filter(|n| !peers.contains(&i64::try_from(n.id).unwrap_or(-1)))
            .map(|n| n.name.as_str())
            .collect();
        if !unseen.is_empty() {
            return Err(fail(
                Step::Map,
                format!(
                    "no ACL policy restricts the probe, yet {} of {} nodes are not its peers ({})",
                    unseen.len(),
                    listed.len(),
                    unseen
                        .iter()
                        .take(5)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(Probed {
        derp_regions,
        peers: peers.len(),
        nodes: listed.len(),
    })
}
