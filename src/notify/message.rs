//! Outbox events → a service-neutral message (title, lines, facts, a command, a link).
//! Every value here is plain text; each backend escapes it for its own markup.

use serde_json::Value;

use crate::event::Severity;

#[derive(Debug, Clone)]
pub struct Message {
    pub id: i64,
    pub event: String,
    pub severity: Severity,
    pub title: String,
    pub lines: Vec<String>,
    pub facts: Vec<(String, String)>,
    /// A command to copy (key reminders).
    pub code: Option<String>,
    pub link: Option<String>,
    /// The Headscale user the event is about (routing and mentions).
    pub user: Option<String>,
    pub created_at: i64,
    pub payload: Value,
    /// Mention text for `user`, from the destination's `mentions` map (trusted config).
    pub mention: Option<String>,
}

fn s<'a>(p: &'a Value, k: &str) -> &'a str {
    p.get(k).and_then(Value::as_str).unwrap_or("")
}

fn list(p: &Value, k: &str) -> Vec<String> {
    p.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The user a payload is about: `user` or `node.user`.
pub fn user_of(p: &Value) -> Option<String> {
    p.get("user")
        .and_then(Value::as_str)
        .or_else(|| p.pointer("/node/user").and_then(Value::as_str))
        .map(str::to_string)
}

pub fn build(
    id: i64,
    event: &str,
    severity: Severity,
    payload: &Value,
    created_at: i64,
) -> Message {
    let p = payload;
    let mut m = Message {
        id,
        event: event.to_string(),
        severity,
        title: String::new(),
        lines: Vec::new(),
        facts: Vec::new(),
        code: None,
        link: None,
        user: user_of(p),
        created_at,
        payload: p.clone(),
        mention: None,
    };
    let handled = match event {
        "release" => {
            release_text(&mut m, p);
            true
        }
        "test" => {
            m.title = "headwarden test message".into();
            m.lines
                .push("If you can read this, headwarden can reach this destination.".into());
            true
        }
        e if e.starts_with("upgrade.") => upgrade_text(&mut m, e, p),
        e if e.starts_with("keys.") => keys_text(&mut m, e, p),
        _ => false,
    };
    if !handled {
        generic_text(&mut m, event, p);
    }
    m.lines.retain(|l| !l.is_empty());
    m
}

fn fact(m: &mut Message, k: &str, v: &str) {
    if !v.is_empty() {
        m.facts.push((k.to_string(), v.to_string()));
    }
}

/// A new release: what changed and what headwarden will do about it.
fn release_text(m: &mut Message, p: &Value) {
    m.title = format!("Headscale {} released", s(p, "version"));
    for b in list(p, "breaking") {
        m.lines.push(format!("Breaking: {b}"));
    }
    for b in list(p, "backup") {
        m.lines.push(format!("Back up first: {b}"));
    }
    for b in list(p, "security") {
        m.lines.push(format!("Security: {b}"));
    }
    fact(m, "headwarden will", s(p, "action"));
    fact(m, "Minimum Tailscale client", s(p, "min_tailscale"));
    fact(m, "Running", s(p, "current"));
    m.link = Some(s(p, "url").to_string()).filter(|u| u.starts_with("https://"));
}

/// The `upgrade.*` events with their own wording; `false` for the rest.
fn upgrade_text(m: &mut Message, event: &str, p: &Value) -> bool {
    match event {
        "upgrade.started" => {
            m.title = format!("Upgrading Headscale {} → {}", s(p, "from"), s(p, "to"));
            fact(m, "Path", &list(p, "path").join(" → "));
            m.lines
                .push("Each hop runs on staging first, on a copy of production's database.".into());
        }
        "upgrade.promoted" => {
            m.title = format!("Production now on Headscale {}", s(p, "to"));
            fact(m, "From", s(p, "from"));
            if let Some(ms) = p.get("downtime_ms").and_then(Value::as_u64) {
                fact(m, "Downtime", &format!("{ms} ms"));
            }
            if p.get("connectivity").is_some_and(Value::is_string) {
                fact(m, "Protocol probe", s(p, "connectivity"));
            }
            fact(
                m,
                "Clients",
                s(p, "reconnect").trim_start_matches("reconnect: "),
            );
        }
        "upgrade.succeeded" => {
            m.title = format!("Headscale upgraded {} → {}", s(p, "from"), s(p, "to"));
        }
        "upgrade.staging_failed" => {
            m.title = format!(
                "Headscale {} rejected on staging; production untouched",
                s(p, "version")
            );
            m.lines.push(s(p, "reason").to_string());
        }
        "upgrade.rolled_back" => {
            m.title = if p.get("manual").and_then(Value::as_bool) == Some(true) {
                format!("Headscale rolled back by hand to {}", s(p, "now"))
            } else {
                format!(
                    "Upgrade to Headscale {} rolled back; production on {}",
                    s(p, "failed"),
                    s(p, "now")
                )
            };
            m.lines.push(s(p, "reason").to_string());
        }
        "upgrade.rollback_failed" => {
            m.title = format!(
                "ROLLBACK FAILED after Headscale {}: act now",
                s(p, "failed")
            );
            m.lines.push(s(p, "reason").to_string());
            m.lines.push(s(p, "rollback_error").to_string());
            fact(m, "Backup", s(p, "backup"));
        }
        "upgrade.reconnect_incomplete" => {
            m.title = format!(
                "Headscale {}: only {} of {} nodes came back after the upgrade",
                s(p, "version"),
                p.get("back").and_then(Value::as_u64).unwrap_or(0),
                p.get("before").and_then(Value::as_u64).unwrap_or(0)
            );
            fact(m, "Missing", &list(p, "missing").join(", "));
            m.lines.push(format!(
                "They were online before the stop and not again within {} s; the upgrade was kept (smoke.reconnect.on_failure: alert). Check those clients (`tailscale status`; a `tailscaled` restart has helped after past upgrades).",
                p.get("within_secs").and_then(Value::as_u64).unwrap_or(0)
            ));
        }
        "upgrade.backup_unverified" => {
            m.title = "The pre-upgrade backup failed its integrity check: take a backup now".into();
            m.lines.push(s(p, "error").to_string());
            m.lines.push("Production runs the new version and is healthy; a rollback to this backup would be refused.".into());
            fact(m, "Backup", s(p, "backup"));
        }
        "upgrade.recovered" => {
            m.title = format!(
                "An interrupted headwarden run was finished: {}",
                s(p, "outcome").replace('_', " ")
            );
            m.lines.push(s(p, "detail").to_string());
        }
        "upgrade.failed" => {
            m.title = "Headscale upgrade failed".into();
            m.lines.push(s(p, "error").to_string());
        }
        "upgrade.blocked" => {
            m.title = format!("Headscale upgrade to {} is blocked", s(p, "to"));
            m.lines.extend(list(p, "problems"));
        }
        _ => return false,
    }
    true
}

/// The `keys.*` events with their own wording; `false` for the rest.
fn keys_text(m: &mut Message, event: &str, p: &Value) -> bool {
    match event {
        "keys.reminder" | "keys.rotation_requested" => {
            let node = p
                .pointer("/node/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let overdue = p.get("overdue").and_then(Value::as_bool) == Some(true);
            m.title = if event == "keys.rotation_requested" {
                format!("Key rotation requested for node {node}")
            } else if overdue {
                format!("Node {node} is overdue for key rotation")
            } else {
                format!("Node {node}: rotate its key by {}", s(p, "deadline"))
            };
            match p.get("key_withheld").and_then(Value::as_str) {
                Some(how) => m.lines.push(format!("Re-register the node: {how}.")),
                None => {
                    m.lines
                        .push("Re-register the node with this one-time key:".into());
                    m.code = Some(s(p, "command").to_string()).filter(|c| !c.is_empty());
                    // Real `tailscale up` refuses a command that leaves out settings the node
                    // was brought up with (--hostname, --accept-dns=false, routes, …) and prints
                    // the same command with them added.
                    m.lines.push("If tailscale answers that it \"requires mentioning all non-default flags\", run the complete command it prints: it is this one with the node's current settings added.".into());
                }
            }
            m.lines.push(s(p, "warning").to_string());
            let owner = m.user.clone().unwrap_or_default();
            fact(m, "Owner", &owner);
            fact(m, "Deadline", s(p, "deadline"));
            fact(m, "Key valid until", s(p, "key_expires"));
        }
        "keys.rotated" => {
            m.title = format!("Node {} rotated its key", s(p, "node"));
            fact(m, "How", s(p, "how"));
        }
        "keys.expiring" | "keys.expired" => {
            m.title = format!(
                "Node {} expired: past its key deadline and grace period",
                s(p, "node")
            );
            fact(m, "Deadline", s(p, "deadline"));
        }
        _ => return false,
    }
    true
}

/// Any other event: its summary as the title, its scalar fields as facts.
fn generic_text(m: &mut Message, event: &str, p: &Value) {
    m.title = match s(p, "summary") {
        "" => event.to_string(),
        t => t.to_string(),
    };
    if let Some(o) = p.as_object() {
        for (k, v) in o {
            if k != "summary" {
                if let Some(v) = scalar(v) {
                    fact(m, k, &v);
                }
            }
        }
    }
}

impl Message {
    /// The plain-text rendering: title, lines, command, facts, link.
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        if let Some(mn) = &self.mention {
            out.push(mn.clone());
        }
        out.extend(self.lines.iter().cloned());
        if let Some(c) = &self.code {
            out.push(c.clone());
        }
        for (k, v) in &self.facts {
            out.push(format!("{k}: {v}"));
        }
        if let Some(l) = &self.link {
            out.push(l.clone());
        }
        out.join("\n")
    }

    /// Applies a destination's template: replaces `lines` (title and link stay).
    pub fn apply_template(&mut self, template: &str) {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let key = &after[..end];
            let value = match key {
                "title" => Some(self.title.clone()),
                "text" => Some(self.text()),
                "event" => Some(self.event.clone()),
                "severity" => Some(self.severity.as_str().to_string()),
                "link" => Some(self.link.clone().unwrap_or_default()),
                "user" => Some(self.user.clone().unwrap_or_default()),
                k => k.strip_prefix("payload.").map(|path| {
                    let ptr = format!("/{}", path.replace('.', "/"));
                    self.payload
                        .pointer(&ptr)
                        .and_then(scalar)
                        .unwrap_or_default()
                }),
            };
            match value {
                Some(v) => out.push_str(&v),
                None => out.push_str(&rest[start..start + end + 2]),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        self.lines = vec![out];
        self.facts.clear();
        self.code = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_promotion_says_what_the_probe_and_the_bake_saw() {
        let p = json!({"run": 3, "from": "0.28.0", "to": "0.29.3", "downtime_ms": 70,
            "connectivity": "ts2021 handshake, registration and map: 1 DERP region(s), 2 peer(s) of 2 node(s)",
            "reconnect": "reconnect: 2 of 2 nodes online before the stop are back after 3s (2 needed)"});
        let m = build(1, "upgrade.promoted", Severity::Info, &p, 0);
        let fact = |k: &str| {
            m.facts
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            fact("Protocol probe"),
            Some(
                "ts2021 handshake, registration and map: 1 DERP region(s), 2 peer(s) of 2 node(s)"
            )
        );
        assert_eq!(
            fact("Clients"),
            Some("2 of 2 nodes online before the stop are back after 3s (2 needed)")
        );
        // Without the probe in smoke.checks the fact is absent, not empty.
        let p = json!({"from": "0.28.0", "to": "0.29.3", "connectivity": null, "reconnect": "r"});
        let m = build(1, "upgrade.promoted", Severity::Info, &p, 0);
        assert!(m.facts.iter().all(|(n, _)| n != "Protocol probe"));
    }

    #[test]
    fn reminder_and_template() {
        let p = json!({"node": {"name": "laptop", "user": "alice"}, "deadline": "2026-12-01T00:00:00Z",
            "command": "tailscale up --auth-key K --force-reauth", "warning": "run it locally", "key_expires": "x"});
        let mut m = build(7, "keys.reminder", Severity::Warning, &p, 0);
        assert_eq!(m.user.as_deref(), Some("alice"));
        assert!(m.title.contains("laptop"));
        assert!(m.text().contains("--auth-key K"));
        m.apply_template("{title} for {user} ({payload.node.name}) {unknown} {");
        assert_eq!(
            m.lines,
            vec!["Node laptop: rotate its key by 2026-12-01T00:00:00Z for alice (laptop) {unknown} {"]
        );
    }
}
