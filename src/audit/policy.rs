//! The tailnet policy (HuJSON): parsing, the allow-all and unused-name checks, and evaluation of
//! an expected-reachability table against the ACL rules.
//!
//! Headscale's ACLs are allow-lists: a connection is allowed when some `accept` rule's `src`
//! matches the source and one of its `dst` entries (`target:ports`) matches the destination.
//! With no policy at all, everything is allowed. Sources match by `*`, the exact name, or a group
//! that lists the user; `grants` are read for name usage but evaluated only for `ip: ["*"]`.

use serde_json::Value;

/// A policy that is not valid HuJSON.
#[derive(Debug, thiserror::Error)]
#[error("not valid HuJSON: {0}")]
pub struct HujsonError(#[from] serde_json::Error);

/// Parses HuJSON (JSON with `//` and `/* */` comments and trailing commas), as Headscale does.
pub fn parse_hujson(text: &str) -> Result<Value, HujsonError> {
    let plain = strip_trailing_commas(&strip_comments(text));
    Ok(serde_json::from_str(&plain)?)
}

/// Calls `f` with each character and whether it is inside a string literal.
fn scan(text: &str, mut f: impl FnMut(char, bool, &mut std::iter::Peekable<std::str::Chars>)) {
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    let mut escaped = false;
    while let Some(c) = chars.next() {
        let inside = in_string;
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
        f(c, inside || c == '"', &mut chars);
    }
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    scan(text, |c, in_string, rest| {
        if in_string {
            out.push(c);
            return;
        }
        match (c, rest.peek()) {
            ('/', Some('/')) => {
                for n in rest.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                rest.next();
                let mut prev = ' ';
                for n in rest.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    });
    out
}

fn strip_trailing_commas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    scan(text, |c, in_string, rest| {
        if !in_string && c == ',' {
            let next = rest.clone().find(|n| !n.is_whitespace());
            if matches!(next, Some('}' | ']')) {
                return;
            }
        }
        out.push(c);
    });
    out
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn rules(policy: &Value) -> Vec<&Value> {
    let mut out: Vec<&Value> = Vec::new();
    for key in ["acls", "grants", "ssh"] {
        if let Some(a) = policy.get(key).and_then(Value::as_array) {
            out.extend(a.iter());
        }
    }
    out
}

/// The target part of a `dst` entry: `tag:server:22` → `tag:server`, `*:*` → `*`.
fn dst_target(entry: &str) -> (&str, &str) {
    match entry.rsplit_once(':') {
        Some((t, ports)) if !t.is_empty() && (t != "tag" && t != "group" && t != "autogroup") => {
            (t, ports)
        }
        _ => (entry, "*"),
    }
}

/// Indices (1-based) of accept rules from `*` to `*:*` (or a grant from `*` to `*`).
pub fn allow_all_rules(policy: &Value) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, r) in policy
        .get("acls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let src = strings(r.get("src"));
        let dst = strings(r.get("dst"));
        if src.iter().any(|s| s == "*") && dst.iter().any(|d| d == "*:*" || d == "*") {
            out.push(i + 1);
        }
    }
    out
}

/// Groups and tags defined in the policy that no rule mentions.
pub fn unused_names(policy: &Value) -> (Vec<String>, Vec<String>) {
    let mut used: Vec<String> = Vec::new();
    for r in rules(policy) {
        for key in ["src", "dst", "users"] {
            for e in strings(r.get(key)) {
                used.push(dst_target(&e).0.to_string());
                used.push(e);
            }
        }
    }
    // A group can own a tag; that is a use of the group (not of the tag).
    if let Some(owners) = policy.get("tagOwners").and_then(Value::as_object) {
        for v in owners.values() {
            used.extend(strings(Some(v)));
        }
    }
    if let Some(aa) = policy.get("autoApprovers") {
        collect_strings(aa, &mut used);
    }
    let defined = |key: &str| -> Vec<String> {
        policy
            .get(key)
            .and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let groups = defined("groups")
        .into_iter()
        .filter(|g| !used.contains(g))
        .collect();
    let tag_users: Vec<String> = rules(policy)
        .iter()
        .flat_map(|r| {
            strings(r.get("src"))
                .into_iter()
                .chain(strings(r.get("dst")))
        })
        .map(|e| dst_target(&e).0.to_string())
        .collect();
    let tags = defined("tagOwners")
        .into_iter()
        .filter(|t| !tag_users.contains(t))
        .collect();
    (groups, tags)
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

fn ports_match(spec: &str, port: u16) -> bool {
    spec.split(',').any(|p| match p.trim() {
        "*" => true,
        p => match p.split_once('-') {
            Some((a, b)) => matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= port && port <= b),
            None => p.parse::<u16>() == Ok(port),
        },
    })
}

/// Whether a policy entry names `who`: `*`, the same name, `alice` ~ `alice@`, or a group
/// listing the user.
fn names(policy: &Value, entry: &str, who: &str) -> bool {
    let bare = |s: &str| s.trim_end_matches('@').to_string();
    if entry == "*" || entry == who || bare(entry) == bare(who) {
        return true;
    }
    if entry.starts_with("group:") {
        return strings(policy.pointer(&format!("/groups/{}", entry.replace('/', "~1"))))
            .iter()
            .any(|m| bare(m) == bare(who));
    }
    false
}

/// Why a connection is allowed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// There is no policy: everything is allowed.
    NoPolicy,
    /// Allowed by this ACL rule (1-based).
    Acl(usize),
    /// Allowed by this grant (1-based).
    Grant(usize),
    Denied,
}

impl Verdict {
    pub fn allowed(self) -> bool {
        self != Verdict::Denied
    }
}

/// Whether `from` may reach `to:port` under `policy` (`None`: no policy).
pub fn allows(policy: Option<&Value>, from: &str, to: &str, port: u16) -> Verdict {
    let Some(policy) = policy else {
        return Verdict::NoPolicy;
    };
    let acls = policy.get("acls").and_then(Value::as_array);
    for (i, r) in acls.into_iter().flatten().enumerate() {
        if r.get("action").and_then(Value::as_str).unwrap_or("accept") != "accept" {
            continue;
        }
        let src_ok = strings(r.get("src")).iter().any(|s| names(policy, s, from));
        let dst_ok = strings(r.get("dst")).iter().any(|d| {
            let (target, ports) = dst_target(d);
            names(policy, target, to) && ports_match(ports, port)
        });
        if src_ok && dst_ok {
            return Verdict::Acl(i + 1);
        }
    }
    for (i, g) in policy
        .get("grants")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let src_ok = strings(g.get("src")).iter().any(|s| names(policy, s, from));
        let dst_ok = strings(g.get("dst")).iter().any(|d| names(policy, d, to));
        let ip = strings(g.get("ip"));
        let port_ok = ip
            .iter()
            .any(|p| p == "*" || ports_match(p.rsplit(':').next().unwrap_or(p), port));
        if src_ok && dst_ok && port_ok {
            return Verdict::Grant(i + 1);
        }
    }
    Verdict::Denied
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{
  // Admins reach everything; developers only the dev servers on SSH and HTTPS.
  "groups": {
    "group:admins": ["alice@"],
    "group:dev": ["bob@", "carol@",],
    "group:old": ["dave@"], /* nobody uses this */
  },
  "tagOwners": {
    "tag:server": ["group:admins"],
    "tag:dev": ["group:admins"],
    "tag:legacy": ["group:admins"],
  },
  "acls": [
    {"action": "accept", "src": ["group:admins"], "dst": ["*:*"]},
    {"action": "accept", "src": ["group:dev"], "dst": ["tag:dev:22,443", "tag:server:8000-8100"]},
  ],
}"#;

    #[test]
    fn hujson_comments_and_trailing_commas() {
        let v = parse_hujson(POLICY).expect("parses");
        assert_eq!(v["groups"]["group:dev"][1], "carol@");
        let v = parse_hujson(r#"{"url": "http://x//y", "s": "a/*b*/", }"#).expect("strings kept");
        assert_eq!(v["url"], "http://x//y");
        assert_eq!(v["s"], "a/*b*/");
        assert!(parse_hujson("{\"a\": }").is_err());
    }

    #[test]
    fn reachability_follows_the_rules() {
        let v = parse_hujson(POLICY).expect("parses");
        let p = Some(&v);
        assert_eq!(allows(p, "alice@", "tag:server", 22), Verdict::Acl(1));
        assert_eq!(allows(p, "group:dev", "tag:dev", 22), Verdict::Acl(2));
        assert_eq!(allows(p, "bob", "tag:dev", 443), Verdict::Acl(2));
        assert_eq!(allows(p, "bob@", "tag:server", 8050), Verdict::Acl(2));
        assert_eq!(allows(p, "bob@", "tag:server", 22), Verdict::Denied);
        assert_eq!(allows(p, "dave@", "tag:dev", 22), Verdict::Denied);
        assert_eq!(
            allows(None, "anyone", "tag:server", 22),
            Verdict::NoPolicy,
            "no policy: allow all"
        );
    }

    #[test]
    fn allow_all_and_unused_names() {
        let v = parse_hujson(POLICY).expect("parses");
        assert!(allow_all_rules(&v).is_empty(), "admins→* is not *→*");
        let (groups, tags) = unused_names(&v);
        assert_eq!(groups, vec!["group:old".to_string()]);
        assert_eq!(tags, vec!["tag:legacy".to_string()]);
        let open =
            parse_hujson(r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#)
                .expect("parses");
        assert_eq!(allow_all_rules(&open), vec![1]);
    }
}
