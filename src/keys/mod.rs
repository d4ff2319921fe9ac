//! Node-key rotation: the pure planner (`plan`) and the executor that applies it.
//!
//! One pass (`run`):
//! 1. List nodes through the Headscale API.
//! 2. Detect rotations: a node whose node key differs from the one observed last time, or the
//!    same machine key reappearing as a new node (the old entry is then a stale duplicate,
//!    deleted when `remove_stale_duplicates` says so).
//! 3. Plan, then apply: record observations; for each reminder due, mint a one-time pre-auth
//!    key (explicit expiration, for the node's user or its tags), retire the node's previous
//!    minted key, and queue the reminder — the stage is recorded in the same transaction as the
//!    outbox event, so a reminder is never sent twice or lost across restarts; under
//!    `enforce: expire`, queue the notification first, then expire the node.
//! 4. Expire minted keys whose window has passed. 5. Audit (reported only).
//!
//! Secrets: minted keys travel only inside outbox payloads (the user needs them); log lines
//! and command output never contain them.

pub mod plan;

use std::collections::HashMap;

use serde::Serialize;
use serde_json::json;

use crate::deploy::production;
use crate::deploy::Production;
use crate::error::error_chain;
use crate::error::Hinted;
use crate::event::{Event, Severity};
use crate::files::{self, FileError};
use crate::headscale::api;
use crate::headscale::api::{ApiClient, ApiError, Node};
use crate::headscale::config;
use crate::hook;
use crate::hook::HookError;
use crate::notify;
use crate::settings;
use crate::settings::playbook::{OnFailure, StepKind};
use crate::settings::Secret;
use crate::settings::Settings;
use crate::state;
use crate::state::{now, Key, KeyObservation, MintedKey, StateError, Store};
use plan::{Action, KeyState, NodePlan, Observed, Policy};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no node named {0:?} (give its id, hostname or given name)")]
    NoSuchNode(String),
    #[error("cannot write the new API key to {0}")]
    KeyFile(std::path::PathBuf, #[source] FileError),
    #[error("cannot read production's Headscale config")]
    Config(#[from] config::HeadscaleConfigError),
    #[error("rotate-keys playbook step {0}: {1}")]
    Hook(usize, HookError),
    #[error("rotate-keys playbook step {0}: step {1:?} needs the plan step before it")]
    NeedsPlan(usize, &'static str),
}

impl Hinted for KeysError {
    fn hint(&self) -> Option<String> {
        match self {
            KeysError::Api(e) => e.hint(),
            KeysError::NoSuchNode(_) => Some("`headwarden keys plan` lists the nodes".into()),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct RunReport {
    pub plans: Vec<NodePlan>,
    pub reminders: Vec<String>,
    pub rotated: Vec<String>,
    pub expired: Vec<String>,
    pub duplicates_removed: Vec<String>,
    pub keys_retired: usize,
}

fn observed_map(store: &Store) -> Result<HashMap<u64, Observed>, StateError> {
    Ok(store
        .key_observations()?
        .into_iter()
        .map(|o| {
            (
                o.node_id as u64,
                Observed {
                    node_key: o.node_key,
                    registered_at: o.registered_at,
                },
            )
        })
        .collect())
}

fn sent_map(store: &Store) -> Result<HashMap<(u64, i64), usize>, StateError> {
    Ok(store
        .reminders_sent()?
        .into_iter()
        .map(|(n, d, s)| ((n as u64, d), s as usize))
        .collect())
}

/// Stale duplicates: older entries whose machine key reappears on a newer node.
fn duplicates(nodes: &[Node]) -> Vec<(u64, u64)> {
    let mut newest: HashMap<&str, u64> = HashMap::new();
    for n in nodes.iter().filter(|n| !n.machine_key.is_empty()) {
        let e = newest.entry(n.machine_key.as_str()).or_insert(n.id);
        *e = (*e).max(n.id);
    }
    nodes
        .iter()
        .filter_map(|n| {
            newest
                .get(n.machine_key.as_str())
                .filter(|&&new| new != n.id)
                .map(|&new| (n.id, new))
        })
        .collect()
}

/// `headwarden keys plan`: changes nothing.
pub async fn plan_now(
    s: &Settings,
    store: &Store,
    api: &ApiClient,
) -> Result<Vec<NodePlan>, KeysError> {
    let nodes = api.list_nodes().await?;
    let stale: Vec<u64> = duplicates(&nodes).into_iter().map(|(old, _)| old).collect();
    let nodes: Vec<Node> = nodes
        .into_iter()
        .filter(|n| !stale.contains(&n.id))
        .collect();
    Ok(plan::plan(
        &nodes,
        &Policy::from_settings(&s.keys),
        &observed_map(store)?,
        &sent_map(store)?,
        now(),
    ))
}

/// The URL clients register with: `keys.login_server` when pinned (production's `server_url`
/// saying otherwise is logged: a Headscale config another account can write must not steer
/// owners to another login server); else `server_url` as production runs it (its file and its
/// process's environment, [`Production::find`]), the file alone when production cannot be
/// confirmed now (the reminder still goes out; the API key job does not depend on the process).
async fn server_url(s: &Settings) -> String {
    let found = Production::find(s).await;
    if let Some(pinned) = &s.keys.login_server {
        if let Ok(p) = &found {
            if p.config.server_url.trim_end_matches('/') != pinned {
                tracing::warn!(pinned = %pinned, production = %p.config.server_url, "production's server_url differs from keys.login_server; reminders name keys.login_server");
            }
        }
        return pinned.clone();
    }
    match found {
        Ok(p) => p.config.server_url,
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "production not confirmed: server_url read from its config file alone");
            production::config_file(s)
                .map(|c| c.server_url)
                .unwrap_or_default()
        }
    }
}

/// Mints a one-time key for `node`, retiring any earlier one, and returns the key's secret.
async fn mint_for(
    s: &Settings,
    store: &Store,
    api: &ApiClient,
    node: &Node,
) -> Result<(settings::Secret, i64), KeysError> {
    retire_node_keys(store, api, node.id, "superseded").await?;
    let expires_at = now() + s.keys.key_lifetime.as_secs() as i64;
    let (user, tags) = if node.tags.is_empty() {
        (Some(&node.user), vec![])
    } else {
        (None, node.tags.clone())
    };
    let key = api.create_preauth_key(user, &tags, expires_at).await?;
    store.record_minted_key(&MintedKey {
        node_id: node.id as i64,
        key_id: key.id as i64,
        user_id: user.map(|u| u.id as i64),
        user_name: user.map(|u| u.name.clone()),
        secret: (api.version.minor < 28).then(|| key.key.expose().to_string()),
        expires_at,
    })?;
    Ok((key.key, expires_at))
}

async fn retire_node_keys(
    store: &Store,
    api: &ApiClient,
    node_id: u64,
    why: &str,
) -> Result<usize, KeysError> {
    let mut n = 0;
    for (row, k) in store
        .active_minted_keys()?
        .into_iter()
        .filter(|(_, k)| k.node_id == node_id as i64)
    {
        expire_minted(store, api, row, &k, why).await?;
        n += 1;
    }
    Ok(n)
}

async fn expire_minted(
    store: &Store,
    api: &ApiClient,
    row: i64,
    k: &MintedKey,
    why: &str,
) -> Result<(), KeysError> {
    let user = k.user_id.map(|id| api::User {
        id: id as u64,
        name: k.user_name.clone().unwrap_or_default(),
    });
    let secret = Secret::new(k.secret.clone().unwrap_or_default());
    match api
        .expire_preauth_key(k.key_id as u64, user.as_ref(), &secret)
        .await
    {
        Ok(()) | Err(ApiError::Status { status: 404, .. }) => {}
        Err(e) => return Err(e.into()),
    }
    store.retire_minted_key(row, why)?;
    Ok(())
}

fn reminder_payload(
    s: &Settings,
    p: &NodePlan,
    node: &Node,
    stage: usize,
    key: &settings::Secret,
    key_expires: i64,
    server: &str,
) -> serde_json::Value {
    let overdue = stage > s.keys.remind_before.len();
    json!({
        "node": {"id": p.node_id, "name": p.name, "user": p.user, "tags": p.tags},
        "stage": stage,
        "overdue": overdue,
        "deadline": p.deadline.map(state::rfc3339),
        "headscale_expiry": node.expiry.map(state::rfc3339),
        "command": format!("tailscale up --login-server {server} --auth-key {} --force-reauth", key.expose()),
        "key_expires": state::rfc3339(key_expires),
        "warning": "run this on the node itself, not over an SSH or remote session that goes through this node: the connection drops while the node re-registers",
    })
}

/// Rotates headwarden's own API key when it expires within `keys.api_key_rotate_before`:
/// create a new key (valid `keys.api_key_lifetime`), store it in `api_key_file` atomically
/// (0600), switch to it, then expire the old one. Returns the old prefix when it rotated.
pub async fn rotate_api_key_if_due(
    s: &Settings,
    store: &Store,
    api: &mut ApiClient,
) -> Result<Option<String>, KeysError> {
    let (Some(prefix), Some(file)) = (api.own_key_prefix(), s.headscale.api_key_file.as_ref())
    else {
        return Ok(None);
    };
    let keys = api.list_api_keys().await?;
    let Some(own) = keys.iter().find(|k| k.prefix == prefix) else {
        return Ok(None);
    };
    let due = own
        .expiration
        .is_some_and(|e| e - now() <= s.keys.api_key_rotate_before.as_secs() as i64);
    if !due {
        return Ok(None);
    }
    let new = api
        .create_api_key(now() + s.keys.api_key_lifetime.as_secs() as i64)
        .await?;
    write_secret_file(file, new.expose()).map_err(|e| KeysError::KeyFile(file.clone(), e))?;
    api.use_key(new);
    api.expire_api_key(&prefix).await?;
    store.push_event(
        Event::KeysApiKeyRotated,
        Severity::Info,
        &json!({"old_prefix": prefix, "old_expiry": own.expiration.map(state::rfc3339), "file": file}),
    )?;
    tracing::info!(old_prefix = %prefix, file = %file.display(), "rotated headwarden's Headscale API key");
    Ok(Some(prefix))
}

fn write_secret_file(path: &std::path::Path, secret: &str) -> Result<(), FileError> {
    files::write_atomic(path, format!("{secret}\n").as_bytes(), 0o600)
}

/// The node list and plans the `plan` step produced, for the steps after it.
struct Planned {
    nodes: Vec<Node>,
    /// (old, new) node ids: the same machine registered again.
    duplicates: Vec<(u64, u64)>,
    plans: Vec<NodePlan>,
}

/// `headwarden keys run`: one pass of the key job, walking the rotate-keys playbook
/// (`playbooks/rotate-keys.yaml` or `playbooks.rotate_keys`).
pub async fn run(
    s: &Settings,
    store: &Store,
    api: &mut ApiClient,
    say: &(dyn Fn(&str) + Sync),
) -> Result<RunReport, KeysError> {
    let pb = &s.playbooks.rotate_keys.playbook;
    let mut report = RunReport::default();
    let mut planned: Option<Planned> = None;
    for (i, step) in pb.steps.iter().enumerate() {
        let result: Result<(), KeysError> = match (step.kind, planned.as_ref()) {
            (StepKind::Plan, _) => plan_step(s, store, api).await.map(|p| planned = Some(p)),
            (StepKind::Rotate, Some(p)) => rotate_step(s, store, api, p, &mut report, say).await,
            (StepKind::Expire, Some(p)) => expire_step(s, store, api, p, &mut report, say).await,
            (StepKind::ApiKey, _) => rotate_api_key_if_due(s, store, api).await.map(|old| {
                if let Some(old) = old {
                    say(&format!("rotated headwarden's API key (old prefix {old}); the new key is in the api_key_file"));
                }
            }),
            (StepKind::Notify, _) => {
                notify::notify_step(s, store, step).await;
                Ok(())
            }
            (StepKind::Hook, _) => {
                let ctx = json!({
                    "playbook": "rotate-keys",
                    "step": i + 1,
                    "nodes": planned.as_ref().map_or(0, |p| p.nodes.len()),
                    "reminders": report.reminders.len(),
                    "rotated": report.rotated.len(),
                    "expired": report.expired.len(),
                });
                match hook::run(step, &ctx).await {
                    Ok(summary) => {
                        say(&format!("hook (step {}): {summary}", i + 1));
                        Ok(())
                    }
                    Err(reason) => Err(KeysError::Hook(i + 1, reason)),
                }
            }
            (other, _) => Err(KeysError::NeedsPlan(i + 1, other.as_str())),
        };
        if let Err(e) = result {
            if step.on_failure() == OnFailure::Continue {
                say(&format!(
                    "step {} ({}) failed, going on: {e}",
                    i + 1,
                    step.kind
                ));
                store.push_event(
                    Event::KeysStepFailed,
                    Severity::Warning,
                    &json!({"summary": format!("key job step {} ({}) failed", i + 1, step.kind), "error": e.to_string()}),
                )?;
            } else {
                return Err(e);
            }
        }
    }
    if let Some(p) = planned {
        let overdue = p
            .plans
            .iter()
            .filter(|p| matches!(p.action, Action::Expire))
            .count();
        if overdue > 0 && !pb.has(StepKind::Expire) {
            say(&format!("{overdue} node(s) past deadline and grace; not expired: the playbook has no expire step"));
        }
        // Node counts per key state, for metrics.
        let mut states: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for p in &p.plans {
            let st = serde_json::to_value(&p.state)
                .ok()
                .and_then(|v| v["state"].as_str().map(str::to_string))
                .unwrap_or_default();
            *states.entry(st).or_default() += 1;
        }
        store.kv_set(Key::KeysStates, &json!(states).to_string())?;
        report.plans = p.plans;
    }
    Ok(report)
}

/// `plan`: read the nodes, set aside stale duplicates, and plan every other node.
async fn plan_step(s: &Settings, store: &Store, api: &ApiClient) -> Result<Planned, KeysError> {
    let all_nodes = api.list_nodes().await?;
    let duplicates = duplicates(&all_nodes);
    let stale: Vec<u64> = duplicates.iter().map(|(old, _)| *old).collect();
    let nodes: Vec<Node> = all_nodes
        .into_iter()
        .filter(|n| !stale.contains(&n.id))
        .collect();
    let plans = plan::plan(
        &nodes,
        &Policy::from_settings(&s.keys),
        &observed_map(store)?,
        &sent_map(store)?,
        now(),
    );
    Ok(Planned {
        nodes,
        duplicates,
        plans,
    })
}

/// `rotate`: re-registrations, reminders with one-time keys, and retiring used or lapsed keys.
/// Same machine, new node: the new node is the rotation; the old entry is stale (removed when
/// `keys.remove_stale_duplicates` says so).
async fn settle_duplicates(
    s: &Settings,
    store: &Store,
    api: &ApiClient,
    planned: &Planned,
    by_id: &HashMap<i64, &KeyObservation>,
    report: &mut RunReport,
) -> Result<(), KeysError> {
    let all_nodes = &planned.nodes;
    let dups = &planned.duplicates;
    for (old, new) in dups {
        let new_node = all_nodes.iter().find(|n| n.id == *new);
        if let Some(n) = new_node {
            if !by_id.contains_key(&(n.id as i64)) {
                store.observe_key(&KeyObservation {
                    node_id: n.id as i64,
                    machine_key: n.machine_key.clone(),
                    node_key: n.node_key.clone(),
                    registered_at: now(),
                })?;
                store.push_event(Event::KeysRotated, Severity::Info, &json!({"node": n.given_name, "user": n.user.name, "how": "re-registered as a new node", "replaces": old}))?;
                report.rotated.push(n.given_name.clone());
                retire_node_keys(store, api, *old, "used").await?;
            }
        }
        if s.keys.remove_stale_duplicates {
            api.delete_node(*old).await?;
            store.forget_node(*old as i64)?;
            store.push_event(
                Event::KeysDuplicateRemoved,
                Severity::Info,
                &json!({"node_id": old, "replaced_by": new}),
            )?;
            report.duplicates_removed.push(old.to_string());
        }
    }
    Ok(())
}

/// A reminder with a freshly minted one-time key, queued with its stage so it goes out once.
#[allow(clippy::too_many_arguments)]
async fn remind(
    s: &Settings,
    store: &Store,
    api: &ApiClient,
    p: &NodePlan,
    node: &Node,
    stage: usize,
    server: &str,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), KeysError> {
    let (key, key_expires) = mint_for(s, store, api, node).await?;
    let payload = reminder_payload(s, p, node, stage, &key, key_expires, server);
    let deadline = p.deadline.unwrap_or(0);
    store.record_reminder(
        node.id as i64,
        deadline,
        stage as i64,
        Event::KeysReminder,
        &payload,
    )?;
    tracing::info!(node = %p.name, user = %p.user, stage, deadline = %state::rfc3339(deadline), "key reminder queued with a one-time pre-auth key");
    let what = if stage > s.keys.remind_before.len() {
        "overdue reminder".to_string()
    } else {
        format!("reminder stage {stage}")
    };
    say(&format!(
        "{}: {what} queued (deadline {}), one-time key minted",
        p.name,
        state::rfc3339(deadline)
    ));
    Ok(())
}

async fn rotate_step(
    s: &Settings,
    store: &Store,
    api: &ApiClient,
    planned: &Planned,
    report: &mut RunReport,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), KeysError> {
    let observed = store.key_observations()?;
    let by_id: HashMap<i64, &KeyObservation> = observed.iter().map(|o| (o.node_id, o)).collect();
    settle_duplicates(s, store, api, planned, &by_id, report).await?;

    let (nodes, plans) = (&planned.nodes, &planned.plans);
    let server = server_url(s).await;
    for p in plans {
        let Some(node) = nodes.iter().find(|n| n.id == p.node_id) else {
            continue;
        };
        if !by_id.contains_key(&(node.id as i64)) {
            store.observe_key(&KeyObservation {
                node_id: node.id as i64,
                machine_key: node.machine_key.clone(),
                node_key: node.node_key.clone(),
                registered_at: p.since,
            })?;
        }
        match &p.action {
            Action::None => {}
            Action::RecordRotation => {
                store.observe_key(&KeyObservation {
                    node_id: node.id as i64,
                    machine_key: node.machine_key.clone(),
                    node_key: node.node_key.clone(),
                    registered_at: now(),
                })?;
                report.keys_retired += retire_node_keys(store, api, node.id, "used").await?;
                store.push_event(
                    Event::KeysRotated,
                    Severity::Info,
                    &json!({"node": p.name, "user": p.user, "how": "new node key"}),
                )?;
                say(&format!("{}: rotated (new node key)", p.name));
                report.rotated.push(p.name.clone());
            }
            Action::Remind { stage } => {
                remind(s, store, api, p, node, *stage, &server, say).await?;
                report.reminders.push(format!("{} stage {stage}", p.name));
            }
            // Expiry is the playbook's `expire` step, after every reminder went out.
            Action::Expire => {}
        }
    }

    // Minted keys whose window has passed are expired in Headscale.
    for (row, k) in store.active_minted_keys()? {
        if k.expires_at <= now() {
            expire_minted(store, api, row, &k, "window passed").await?;
            report.keys_retired += 1;
        }
    }
    Ok(())
}

/// `expire`: nodes past their deadline and grace period (only when `keys.enforce: expire`).
async fn expire_step(
    s: &Settings,
    store: &Store,
    api: &ApiClient,
    planned: &Planned,
    report: &mut RunReport,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), KeysError> {
    for p in planned
        .plans
        .iter()
        .filter(|p| matches!(p.action, Action::Expire))
    {
        let Some(node) = planned.nodes.iter().find(|n| n.id == p.node_id) else {
            continue;
        };
        store.push_event(Event::KeysExpiring, Severity::Critical, &json!({"node": p.name, "user": p.user, "deadline": p.deadline.map(state::rfc3339), "grace_days": s.keys.grace.as_secs() / 86400}))?;
        api.expire_node(node.id, None).await?;
        store.push_event(
            Event::KeysExpired,
            Severity::Critical,
            &json!({"node": p.name, "user": p.user}),
        )?;
        say(&format!(
            "{}: overdue past grace; expired in Headscale (enforce: expire)",
            p.name
        ));
        report.expired.push(p.name.clone());
    }
    Ok(())
}

/// `headwarden keys rotate NODE`: a reminder with a fresh one-time key for one node, now.
pub async fn rotate(
    s: &Settings,
    store: &Store,
    api: &ApiClient,
    which: &str,
) -> Result<String, KeysError> {
    let nodes = api.list_nodes().await?;
    let node = nodes
        .iter()
        .find(|n| n.id.to_string() == which || n.name == which || n.given_name == which)
        .ok_or_else(|| KeysError::NoSuchNode(which.to_string()))?;
    let plans = plan::plan(
        std::slice::from_ref(node),
        &Policy::from_settings(&s.keys),
        &observed_map(store)?,
        &sent_map(store)?,
        now(),
    );
    let p = &plans[0];
    if let KeyState::Exempt { reason } = &p.state {
        tracing::warn!(node = %p.name, %reason, "rotating an exempt node on request");
    }
    let (key, key_expires) = mint_for(s, store, api, node).await?;
    let mut payload = reminder_payload(s, p, node, 0, &key, key_expires, &server_url(s).await);
    payload["requested"] = json!(true);
    store.push_event(Event::KeysRotationRequested, Severity::Warning, &payload)?;
    Ok(node.given_name.clone())
}
