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
//! The probe's user is known by the id headwarden recorded when it created it in production
//! (`Target::probe_user`), never by its name alone: with OIDC a person can be called
//! `headwarden-probe` too, and their user is neither used nor swept ([`ensure_user`]).
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
use crate::settings::{Secret, SmokeCheck};

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

    let user = within(timeout, Step::MintKey, ensure_user(t, timeout)).await?;
    let result = registered(t, user.id(), &base, &state, &conn, timeout).await;
    drop(conn);
    let cleanup = sweep_user(t, Some(user.id()), timeout).await;
    let (probed, listed) = match (result, cleanup) {
        (Err(e), _) => return Err(e),
        (Ok(_), Err(e)) => return Err(fail(Step::Cleanup, e)),
        (Ok(update), Ok(listed)) => (update, listed),
    };
    judge(
        t.open_policy,
        &state.node_keys.public.to_string(),
        &MapSeen::of(&probed),
        &listed,
    )
}

/// Steps 3 to 5: mint a key for `user`, register, read the first map response.
async fn registered(
    t: &Target,
    user: u64,
    base: &Url,
    state: &NodeState,
    conn: &Http2<BytesBody>,
    timeout: Duration,
) -> Result<StateUpdate, ProbeError> {
    let key = cli::ephemeral_key(&t.cli, &t.config, user, KEY_EXPIRATION, timeout)
        .await
        .map_err(|e| fail(Step::MintKey, e))?;
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

/// The probe's user in an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeUser {
    /// The user headwarden recorded, still there under its name.
    Recorded(u64),
    /// Created just now (production's caller records it; staging's goes with the copy).
    Created(u64),
}

impl ProbeUser {
    pub fn id(self) -> u64 {
        match self {
            ProbeUser::Recorded(id) | ProbeUser::Created(id) => id,
        }
    }
}

/// Before checks on `t`: when they include the probe, makes sure of its user and points `t` at
/// it; `Some(id)` when it was created just now (production's caller records it, staging's
/// carries it to the next hop on the same copy). A refusal is left for the probe to report.
pub async fn prepare(t: &mut Target, checks: &[SmokeCheck], timeout: Duration) -> Option<u64> {
    if !checks.contains(&SmokeCheck::Connectivity) {
        return None;
    }
    match ensure_user(t, timeout).await {
        Ok(ProbeUser::Created(id)) => {
            t.probe_user = Some(id);
            Some(id)
        }
        Ok(ProbeUser::Recorded(_)) => None,
        Err(e) => {
            tracing::debug!(error = %e, "the probe will report its user");
            None
        }
    }
}

/// The probe's user: the one recorded in `t.probe_user` when the instance still has it under
/// [`PROBE_USER`], else a new one. A user of that name headwarden did not create is refused,
/// never used or swept (security review N10).
pub async fn ensure_user(t: &Target, timeout: Duration) -> Result<ProbeUser, ProbeError> {
    let users = cli::list_users(&t.cli, &t.config, timeout)
        .await
        .map_err(|e| fail(Step::MintKey, e))?;
    let named: Vec<u64> = users
        .iter()
        .filter(|u| u.name == PROBE_USER)
        .map(|u| u.id)
        .collect();
    if let Some(id) = t.probe_user.filter(|id| named.contains(id)) {
        return Ok(ProbeUser::Recorded(id));
    }
    if let Some(id) = named.first() {
        return Err(fail(
            Step::MintKey,
            format!("user {id} is named {PROBE_USER}, but headwarden did not create it (it may be a person's, from OIDC): it is neither used nor swept; rename it (`headscale users rename --identifier {id} --new-name …`) and run again"),
        ));
    }
    let created = cli::create_user(&t.cli, &t.config, PROBE_USER, timeout)
        .await
        .map_err(|e| fail(Step::MintKey, e))?;
    Ok(ProbeUser::Created(created.id))
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
    sweep_user(t, t.probe_user, timeout).await
}

/// [`sweep`] for the probe user `user` (none: nothing is the probe's).
async fn sweep_user(
    t: &Target,
    user: Option<u64>,
    timeout: Duration,
) -> Result<Vec<NodeRef>, CliError> {
    let nodes = cli::list_nodes(&t.cli, &t.config, timeout).await?;
    let (probes, others): (Vec<NodeRef>, Vec<NodeRef>) = nodes
        .into_iter()
        .partition(|n| Some(n.user_id) == user && n.user == PROBE_USER);
    for n in &probes {
        cli::delete_node(&t.cli, &t.config, n.id, timeout).await?;
    }
    Ok(others)
}

/// What step 5 judges of the first map response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MapSeen {
    /// The node key of the node the map describes as the probe itself.
    own: Option<String>,
    derp_regions: usize,
    peers: Vec<u64>,
}

impl MapSeen {
    fn of(update: &StateUpdate) -> Self {
        let peers = match &update.peer_update {
            Some(PeerUpdate::Full(peers)) => peers.iter().map(|p| p.id).collect(),
            Some(PeerUpdate::Delta { upsert, .. }) => upsert.iter().map(|p| p.id).collect(),
            None => Vec::new(),
        };
        MapSeen {
            own: update.node.as_ref().map(|n| n.node_key.to_string()),
            derp_regions: update.derp.as_ref().map_or(0, |d| d.len()),
            // A negative id is no node headscale lists (its ids are unsigned).
            peers: peers
                .into_iter()
                .map(|id: i64| u64::try_from(id).unwrap_or(u64::MAX))
                .collect(),
        }
    }
}

/// Step 5's checks of the first map response against the nodes the instance lists (besides the
/// probe's own): the probe itself, DERP regions, only known peers, and every node when
/// `open_policy` (no ACL policy restricts what the probe sees).
fn judge(
    open_policy: bool,
    own_key: &str,
    map: &MapSeen,
    listed: &[NodeRef],
) -> Result<Probed, ProbeError> {
    match &map.own {
        Some(k) if k == own_key => {}
        Some(k) => {
            return Err(fail(
                Step::Map,
                format!("the map describes another node ({k}) as the probe"),
            ))
        }
        None => return Err(fail(Step::Map, "the map does not describe the probe node")),
    }
    if map.derp_regions == 0 {
        return Err(fail(
            Step::Map,
            "the map has no DERP region: clients behind NAT could not reach each other",
        ));
    }
    let unknown: Vec<String> = map
        .peers
        .iter()
        .filter(|id| !listed.iter().any(|n| n.id == **id))
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
    if open_policy {
        let unseen: Vec<&str> = listed
            .iter()
            .filter(|n| !map.peers.contains(&n.id))
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
        derp_regions: map.derp_regions,
        peers: map.peers.len(),
        nodes: listed.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, name: &str) -> NodeRef {
        NodeRef {
            id,
            machine_key: format!("mkey:{id}"),
            user: "alice".into(),
            user_id: 1,
            name: name.into(),
            online: false,
        }
    }

    fn seen(own: Option<&str>, derp_regions: usize, peers: &[u64]) -> MapSeen {
        MapSeen {
            own: own.map(str::to_string),
            derp_regions,
            peers: peers.to_vec(),
        }
    }

    fn failure(r: Result<Probed, ProbeError>) -> String {
        let e = r.expect_err("must fail");
        assert_eq!(e.step, Step::Map);
        e.to_string()
    }

    #[test]
    fn a_map_with_the_probe_derp_and_every_node_passes() {
        let listed = [node(1, "laptop"), node(2, "phone")];
        let p = judge(
            true,
            "nodekey:aa",
            &seen(Some("nodekey:aa"), 1, &[2, 1]),
            &listed,
        )
        .expect("passes");
        assert_eq!(
            p.describe(),
            "ts2021 handshake, registration and map: 1 DERP region(s), 2 peer(s) of 2 node(s)"
        );
    }

    #[test]
    fn the_map_must_describe_the_probe_itself() {
        let e = failure(judge(true, "nodekey:aa", &seen(None, 1, &[]), &[]));
        assert!(e.contains("does not describe the probe node"), "{e}");
        let e = failure(judge(
            true,
            "nodekey:aa",
            &seen(Some("nodekey:bb"), 1, &[]),
            &[],
        ));
        assert!(e.contains("another node (nodekey:bb)"), "{e}");
    }

    #[test]
    fn an_empty_derp_map_fails() {
        let e = failure(judge(true, "k", &seen(Some("k"), 0, &[]), &[]));
        assert!(e.contains("no DERP region"), "{e}");
    }

    #[test]
    fn peers_the_server_does_not_list_fail() {
        let e = failure(judge(
            false,
            "k",
            &seen(Some("k"), 1, &[1, 9]),
            &[node(1, "a")],
        ));
        assert!(e.contains("peers the instance does not (ids 9)"), "{e}");
    }

    #[test]
    fn without_a_policy_every_node_must_be_a_peer_with_one_only_what_it_lets_through() {
        let listed = [node(1, "laptop"), node(2, "phone")];
        let map = seen(Some("k"), 1, &[1]);
        let e = failure(judge(true, "k", &map, &listed));
        assert!(e.contains("1 of 2 nodes are not its peers (phone)"), "{e}");
        let p = judge(false, "k", &map, &listed).expect("a policy may hide phone");
        assert_eq!((p.peers, p.nodes), (1, 2));
    }

    #[test]
    fn the_hostname_carries_the_node_key_prefix() {
        let state = NodeState::generate();
        let h = hostname(&state);
        assert!(h.starts_with(PROBE_HOST_PREFIX), "{h}");
        assert_eq!(h.len(), PROBE_HOST_PREFIX.len() + 8, "{h}");
        let key = state.node_keys.public.to_string();
        assert!(key.contains(&h[PROBE_HOST_PREFIX.len()..]), "{h} {key}");
    }

    #[test]
    fn steps_are_named_as_the_report_says_them() {
        let names: Vec<String> = [
            Step::KeyFetch,
            Step::Handshake,
            Step::MintKey,
            Step::Register,
            Step::Map,
            Step::Cleanup,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            names,
            [
                "key fetch",
                "handshake",
                "mint key",
                "register",
                "map",
                "cleanup"
            ]
        );
        assert_eq!(
            fail(Step::Register, "refused: authkey expired").to_string(),
            "failed at register: refused: authkey expired"
        );
    }
}
