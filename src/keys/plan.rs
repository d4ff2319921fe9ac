//! The node-key planner: a pure function from (nodes, policy, what headwarden observed and
//! already sent, now) to one state and one next action per node.
//!
//! For each node, in order: exempt (tag, user or node name) → already expired in Headscale →
//! rotated (node key differs from the one observed) → by age: the deadline is the observed
//! (re-)registration (else creation) + max_age (per-tag overrides, shortest wins), or
//! Headscale's own expiry when sooner; within `remind_before[i]` of it the node is due-soon at
//! stage i+1; past it, in grace; past deadline + grace, overdue. A reminder is due when the
//! current stage is above the highest stage already sent for this deadline — only the most
//! urgent one, so a late run never sends a burst.

use std::collections::HashMap;

use serde::Serialize;

use crate::headscale::api::Node;
use crate::settings::{Enforce, KeySettings};

#[derive(Debug, Clone)]
pub struct Policy {
    pub max_age: i64,
    /// Seconds before the deadline, most distant first.
    pub remind_before: Vec<i64>,
    pub grace: i64,
    pub enforce: Enforce,
    pub exempt_tags: Vec<String>,
    pub exempt_users: Vec<String>,
    pub exempt_nodes: Vec<String>,
    pub per_tag: Vec<(String, i64)>,
}

impl Policy {
    pub fn from_settings(k: &KeySettings) -> Self {
        let mut remind: Vec<i64> = k.remind_before.iter().map(|d| d.as_secs() as i64).collect();
        remind.sort_unstable_by(|a, b| b.cmp(a));
        remind.dedup();
        Policy {
            max_age: k.max_age.as_secs() as i64,
            remind_before: remind,
            grace: k.grace.as_secs() as i64,
            enforce: k.enforce,
            exempt_tags: k.exempt_tags.clone(),
            exempt_users: k.exempt_users.clone(),
            exempt_nodes: k.exempt_nodes.clone(),
            per_tag: k
                .per_tag
                .iter()
                .map(|(t, d)| (t.clone(), d.as_secs() as i64))
                .collect(),
        }
    }

    /// The stage number used for "deadline passed".
    pub fn overdue_stage(&self) -> usize {
        self.remind_before.len() + 1
    }
}

/// What headwarden last saw of a node.
#[derive(Debug, Clone)]
pub struct Observed {
    pub node_key: String,
    pub registered_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KeyState {
    Ok,
    DueSoon { stage: usize },
    InGrace,
    Overdue,
    Rotated,
    Exempt { reason: String },
    AlreadyExpired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    None,
    /// Send reminder `stage` with a freshly minted one-time key.
    Remind {
        stage: usize,
    },
    /// Expire the node in Headscale (enforce: expire, past deadline + grace).
    Expire,
    /// Record the new node key as the start of a fresh key age.
    RecordRotation,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub node_id: u64,
    pub name: String,
    pub user: String,
    pub tags: Vec<String>,
    pub state: KeyState,
    /// Start of the key's age (unix seconds).
    pub since: i64,
    pub deadline: Option<i64>,
    /// Headscale will never expire this node (null expiry; always true for tagged nodes).
    pub never_expires: bool,
    pub action: Action,
}

pub fn plan(
    nodes: &[Node],
    policy: &Policy,
    observed: &HashMap<u64, Observed>,
    sent: &HashMap<(u64, i64), usize>,
    now: i64,
) -> Vec<NodePlan> {
    nodes
        .iter()
        .map(|n| plan_node(n, policy, observed.get(&n.id), sent, now))
        .collect()
}

fn exemption(n: &Node, p: &Policy) -> Option<String> {
    if let Some(t) = n.tags.iter().find(|t| p.exempt_tags.contains(t)) {
        return Some(format!("tag {t}"));
    }
    if p.exempt_users.contains(&n.user.name) {
        return Some(format!("user {}", n.user.name));
    }
    if p.exempt_nodes.contains(&n.name) || p.exempt_nodes.contains(&n.given_name) {
        return Some(format!("node {}", n.given_name));
    }
    None
}

fn plan_node(
    n: &Node,
    p: &Policy,
    obs: Option<&Observed>,
    sent: &HashMap<(u64, i64), usize>,
    now: i64,
) -> NodePlan {
    let never_expires = n.expiry.is_none() || !n.tags.is_empty();
    let mut out = NodePlan {
        node_id: n.id,
        name: n.given_name.clone(),
        user: n.user.name.clone(),
        tags: n.tags.clone(),
        state: KeyState::Ok,
        since: n.created_at.unwrap_or(now),
        deadline: None,
        never_expires,
        action: Action::None,
    };
    if let Some(reason) = exemption(n, p) {
        out.state = KeyState::Exempt { reason };
        return out;
    }
    if n.expiry.is_some_and(|e| e <= now) {
        out.state = KeyState::AlreadyExpired;
        return out;
    }
    let max_age = p
        .per_tag
        .iter()
        .filter(|(t, _)| n.tags.contains(t))
        .map(|(_, d)| *d)
        .min()
        .unwrap_or(p.max_age);
    let (since, rotated) = match obs {
        Some(o) if o.node_key != n.node_key => (now, true),
        Some(o) => (o.registered_at, false),
        None => (n.created_at.unwrap_or(now), false),
    };
    out.since = since;
    let mut deadline = since + max_age;
    if let Some(e) = n.expiry {
        deadline = deadline.min(e);
    }
    out.deadline = Some(deadline);
    if rotated {
        out.state = KeyState::Rotated;
        out.action = Action::RecordRotation;
        return out;
    }
    let stage = if now >= deadline {
        p.overdue_stage()
    } else {
        p.remind_before
            .iter()
            .enumerate()
            .filter(|(_, before)| now >= deadline - **before)
            .map(|(i, _)| i + 1)
            .max()
            .unwrap_or(0)
    };
    out.state = if now >= deadline + p.grace {
        KeyState::Overdue
    } else if now >= deadline {
        KeyState::InGrace
    } else if stage > 0 {
        KeyState::DueSoon { stage }
    } else {
        KeyState::Ok
    };
    let already = sent.get(&(n.id, deadline)).copied().unwrap_or(0);
    out.action = if out.state == KeyState::Overdue && p.enforce == Enforce::Expire {
        Action::Expire
    } else if stage > already {
        Action::Remind { stage }
    } else {
        Action::None
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headscale::api::User;

    const DAY: i64 = 86400;
    const NOW: i64 = 1_800_000_000;

    fn node(id: u64, age_days: i64) -> Node {
        Node {
            id,
            machine_key: format!("mkey:{id}"),
            node_key: format!("nodekey:{id}"),
            name: format!("n{id}"),
            given_name: format!("n{id}"),
            user: User {
                id: 1,
                name: "alice".into(),
            },
            created_at: Some(NOW - age_days * DAY),
            last_seen: None,
            expiry: None,
            tags: vec![],
            register_method: "REGISTER_METHOD_AUTH_KEY".into(),
            online: true,
        }
    }

    fn policy(enforce: Enforce) -> Policy {
        Policy {
            max_age: 90 * DAY,
            remind_before: vec![14 * DAY, 7 * DAY, DAY],
            grace: 7 * DAY,
            enforce,
            exempt_tags: vec!["tag:server".into()],
            exempt_users: vec!["robot".into()],
            exempt_nodes: vec!["printer".into()],
            per_tag: vec![("tag:laptop".into(), 30 * DAY)],
        }
    }

    fn check(
        n: Node,
        obs: Option<Observed>,
        sent: &[(u64, i64, usize)],
        enforce: Enforce,
        state: KeyState,
        action: Action,
    ) {
        let observed: HashMap<u64, Observed> = obs.into_iter().map(|o| (n.id, o)).collect();
        let sent: HashMap<(u64, i64), usize> =
            sent.iter().map(|(id, d, s)| ((*id, *d), *s)).collect();
        let p = plan(
            std::slice::from_ref(&n),
            &policy(enforce),
            &observed,
            &sent,
            NOW,
        );
        assert_eq!(
            (p[0].state.clone(), p[0].action.clone()),
            (state, action),
            "{n:?}"
        );
    }

    #[test]
    fn states_by_age() {
        use Action as A;
        use KeyState as S;
        check(node(1, 10), None, &[], Enforce::Remind, S::Ok, A::None);
        check(
            node(1, 77),
            None,
            &[],
            Enforce::Remind,
            S::DueSoon { stage: 1 },
            A::Remind { stage: 1 },
        );
        check(
            node(1, 84),
            None,
            &[],
            Enforce::Remind,
            S::DueSoon { stage: 2 },
            A::Remind { stage: 2 },
        );
        check(
            node(1, 89),
            None,
            &[],
            Enforce::Remind,
            S::DueSoon { stage: 3 },
            A::Remind { stage: 3 },
        );
        check(
            node(1, 92),
            None,
            &[],
            Enforce::Remind,
            S::InGrace,
            A::Remind { stage: 4 },
        );
        check(
            node(1, 100),
            None,
            &[],
            Enforce::Remind,
            S::Overdue,
            A::Remind { stage: 4 },
        );
        check(
            node(1, 100),
            None,
            &[],
            Enforce::Expire,
            S::Overdue,
            A::Expire,
        );
        check(
            node(1, 92),
            None,
            &[],
            Enforce::Expire,
            S::InGrace,
            A::Remind { stage: 4 },
        );
    }

    #[test]
    fn reminders_once_per_stage_and_late_runs_send_only_the_most_urgent() {
        let deadline = NOW - 84 * DAY + 90 * DAY;
        check(
            node(1, 84),
            None,
            &[(1, deadline, 2)],
            Enforce::Remind,
            KeyState::DueSoon { stage: 2 },
            Action::None,
        );
        // Stage 1 was sent, stage 2 was missed, now stage 3 is due: send 3 only.
        check(
            node(1, 89),
            None,
            &[(1, NOW - 89 * DAY + 90 * DAY, 1)],
            Enforce::Remind,
            KeyState::DueSoon { stage: 3 },
            Action::Remind { stage: 3 },
        );
    }

    #[test]
    fn observations_rotation_expiry_and_exemptions() {
        let obs = |key: &str, days_ago: i64| {
            Some(Observed {
                node_key: key.into(),
                registered_at: NOW - days_ago * DAY,
            })
        };
        // Re-registered 5 days ago with the same key: young again, though created long ago.
        check(
            node(1, 300),
            obs("nodekey:1", 5),
            &[],
            Enforce::Remind,
            KeyState::Ok,
            Action::None,
        );
        check(
            node(1, 300),
            obs("nodekey:old", 100),
            &[],
            Enforce::Remind,
            KeyState::Rotated,
            Action::RecordRotation,
        );
        let mut n = node(1, 10);
        n.expiry = Some(NOW + 3 * DAY);
        check(
            n.clone(),
            None,
            &[],
            Enforce::Remind,
            KeyState::DueSoon { stage: 2 },
            Action::Remind { stage: 2 },
        );
        n.expiry = Some(NOW - DAY);
        check(
            n,
            None,
            &[],
            Enforce::Expire,
            KeyState::AlreadyExpired,
            Action::None,
        );
        let mut n = node(1, 300);
        n.tags = vec!["tag:server".into()];
        check(
            n,
            None,
            &[],
            Enforce::Expire,
            KeyState::Exempt {
                reason: "tag tag:server".into(),
            },
            Action::None,
        );
        let mut n = node(1, 300);
        n.user.name = "robot".into();
        assert!(matches!(
            plan(
                &[n],
                &policy(Enforce::Expire),
                &HashMap::new(),
                &HashMap::new(),
                NOW
            )[0]
            .state,
            KeyState::Exempt { .. }
        ));
        let mut n = node(1, 25);
        n.tags = vec!["tag:laptop".into()];
        check(
            n,
            None,
            &[],
            Enforce::Remind,
            KeyState::DueSoon { stage: 2 },
            Action::Remind { stage: 2 },
        );
    }

    #[test]
    fn never_expiring_is_reported() {
        let p = plan(
            &[node(1, 1)],
            &policy(Enforce::Remind),
            &HashMap::new(),
            &HashMap::new(),
            NOW,
        );
        assert!(p[0].never_expires);
    }
}
