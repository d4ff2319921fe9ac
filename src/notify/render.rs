//! Message → the HTTP request each service documents. One function per service; every piece of
//! user-controlled text (node and user names, release notes, errors) goes through that
//! service's escaping, or into a plain-text field that has none.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::message::Message;
use crate::event::Severity;
use crate::settings::notify_url::{Service, Target, SEGMENT};
use crate::state;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: reqwest::Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Slack mrkdwn: only `&`, `<` and `>` are escaped (Slack's "Escaping text" rules).
pub fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Markdown (Discord, Mattermost, Teams TextBlock): backslash before every markup character.
pub fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\*_~`|>#[]()<@".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Mattermost and Matrix read `@channel`, `@all`, `@here`, `@room` and `@name` in plain text as
/// mentions, backslash or not (Mattermost joins adjacent markdown text nodes before looking for
/// mentions). A WORD JOINER after every `@` keeps the text readable and mentions nobody.
pub fn defuse_mentions(s: &str) -> String {
    s.replace('@', "@\u{2060}")
}

/// A link from the feed, only if it is an http(s) URL, with the characters that could end or
/// rewrite a markdown or Slack link (`|`, `(`, `)`, `<`, `>`, space) percent-encoded.
pub fn safe_link(l: &str) -> Option<String> {
    let u = url::Url::parse(l).ok()?;
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    let mut out = String::with_capacity(l.len());
    for c in u.as_str().chars() {
        match c {
            '|' => out.push_str("%7C"),
            '(' => out.push_str("%28"),
            ')' => out.push_str("%29"),
            '<' => out.push_str("%3C"),
            '>' => out.push_str("%3E"),
            ' ' => out.push_str("%20"),
            c => out.push(c),
        }
    }
    Some(out)
}

pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

fn icon(sev: Severity) -> &'static str {
    match sev {
        Severity::Info => "ℹ️",
        Severity::Warning => "⚠️",
        Severity::Critical => "🚨",
    }
}

fn json_body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Builds the request for `m` to `t`; `notify::send` adds the authentication. `secret` signs
/// generic webhooks; `now` is the signing time.
pub fn request(m: &Message, t: &Target, secret: Option<&str>, now: i64) -> Request {
    let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
    let mut method = reqwest::Method::POST;
    let mut url = t.url.clone();
    let body = match t.service {
        Service::Slack => slack(m),
        Service::Discord => discord(m),
        Service::Teams => teams(m),
        Service::Mattermost => {
            let mut v = json!({"text": mattermost_markdown(m)});
            if let Some(u) = t.option("username") {
                v["username"] = json!(u);
            }
            if let Some(c) = t.option("channel") {
                v["channel"] = json!(c);
            }
            json_body(&v)
        }
        Service::Matrix => {
            method = reqwest::Method::PUT;
            let (u, body) = matrix(m, t);
            url = u;
            body
        }
        Service::Telegram => {
            let chat = t.chat.clone().unwrap_or_default();
            let chat_id = match chat.parse::<i64>() {
                Ok(n) => json!(n),
                Err(_) => json!(chat),
            };
            // No parse_mode: the text is shown exactly as sent, so nothing needs escaping.
            json_body(&json!({
                "chat_id": chat_id,
                "text": truncate(&format!("{} {}\n{}", icon(m.severity), m.title, m.text()), 4096),
                "disable_web_page_preview": true,
            }))
        }
        Service::Ntfy => ntfy(m, t),
        Service::Gotify => json_body(&json!({
            "title": m.title,
            "message": m.text(),
            "priority": match m.severity { Severity::Info => 2, Severity::Warning => 5, Severity::Critical => 8 },
            "extras": {"client::display": {"contentType": "text/plain"}},
        })),
        Service::Webhook => webhook(m, t, secret, now, &mut headers),
    };
    Request {
        method,
        url,
        headers,
        body,
    }
}

/// Matrix: a PUT to the room with an HTML body and a transaction id of the message and the
/// destination, so a resend after a crash is idempotent on the homeserver.
fn matrix(m: &Message, t: &Target) -> (String, Vec<u8>) {
    let room = t.chat.as_deref().unwrap_or("");
    // The transaction id makes a resend after a crash idempotent on the homeserver.
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/send/m.room.message/headwarden-{}-{}",
        t.url.trim_end_matches('/'),
        percent_encoding::utf8_percent_encode(room, SEGMENT),
        m.id,
        t.id
    );
    let text = |s: &str| html_escape(&defuse_mentions(s));
    let mut html = format!("<strong>{} {}</strong>", icon(m.severity), text(&m.title));
    if let Some(mn) = &m.mention {
        html = format!("{} {html}", html_escape(mn));
    }
    for l in &m.lines {
        html.push_str(&format!("<br>{}", text(l)));
    }
    if let Some(c) = &m.code {
        html.push_str(&format!("<pre><code>{}</code></pre>", text(c)));
    }
    if !m.facts.is_empty() {
        html.push_str("<ul>");
        for (k, v) in &m.facts {
            html.push_str(&format!("<li>{}: {}</li>", text(k), text(v)));
        }
        html.push_str("</ul>");
    }
    if let Some(l) = m.link.as_deref().and_then(safe_link) {
        html.push_str(&format!(
            "<a href=\"{}\">release notes</a>",
            html_escape(&l)
        ));
    }
    let mut body = defuse_mentions(&format!("{}\n{}", m.title, m.text()));
    // Intentional mentions only: the configured Matrix user id, nothing from the text
    // (`m.mentions` makes clients ignore the legacy body rules, `@room` included).
    let mut mentions = json!({});
    if let Some(mn) = m
        .mention
        .as_deref()
        .filter(|mn| mn.starts_with('@') && mn.contains(':'))
    {
        body = format!("{mn} {body}");
        mentions = json!({"user_ids": [mn]});
    }
    let body = json_body(&json!({
        "msgtype": "m.notice",
        "body": body,
        "format": "org.matrix.custom.html",
        "formatted_body": html,
        "m.mentions": mentions,
    }));
    (url, body)
}

fn ntfy(m: &Message, t: &Target) -> Vec<u8> {
    let priority = t
        .option("priority")
        .and_then(|p| p.parse::<u8>().ok())
        .unwrap_or(match m.severity {
            Severity::Info => 3,
            Severity::Warning => 4,
            Severity::Critical => 5,
        });
    let mut tags = vec![match m.severity {
        Severity::Info => "information_source",
        Severity::Warning => "warning",
        Severity::Critical => "rotating_light",
    }
    .to_string()];
    if let Some(extra) = t.option("tags") {
        tags.extend(extra.split(',').map(str::to_string));
    }
    let mut v = json!({
        "topic": t.chat.clone().unwrap_or_default(),
        "title": truncate(&m.title, 250),
        "message": m.text(),
        "priority": priority,
        "tags": tags,
    });
    if let Some(l) = m.link.as_deref().and_then(safe_link) {
        v["click"] = json!(l);
    }
    json_body(&v)
}

/// A generic webhook: the event as JSON, with delivery headers and, given a secret, an HMAC
/// signature over timestamp and body.
fn webhook(
    m: &Message,
    t: &Target,
    secret: Option<&str>,
    now: i64,
    headers: &mut Vec<(String, String)>,
) -> Vec<u8> {
    let body = json_body(&json!({
        "schema": "headwarden.event/v1",
        "id": m.id,
        "event": m.event,
        "severity": m.severity.as_str(),
        "title": m.title,
        "text": m.text(),
        "user": m.user,
        "created_at": state::rfc3339(m.created_at),
        "data": m.payload,
    }));
    headers.push(("X-Headwarden-Event".into(), m.event.clone()));
    headers.push(("X-Headwarden-Delivery".into(), format!("{}-{}", m.id, t.id)));
    headers.push(("X-Headwarden-Timestamp".into(), now.to_string()));
    if let Some(key) = secret {
        headers.push((
            "X-Headwarden-Signature".into(),
            format!("sha256={}", sign(key, now, &body)),
        ));
    }
    body
}

/// HMAC-SHA256 over `"{timestamp}.{body}"`, hex: what a receiver recomputes to authenticate.
pub fn sign(key: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Mattermost's markdown, with `@` in user text defused (see [`defuse_mentions`]).
fn mattermost_markdown(m: &Message) -> String {
    let esc = |s: &str| md_escape(&defuse_mentions(s));
    let mut out = Vec::new();
    let head = format!("{} **{}**", icon(m.severity), esc(&m.title));
    out.push(match &m.mention {
        Some(mn) => format!("{mn} {head}"),
        None => head,
    });
    out.extend(m.lines.iter().map(|l| esc(l)));
    if let Some(c) = &m.code {
        out.push(format!("```\n{}\n```", c.replace("```", "'''")));
    }
    for (k, v) in &m.facts {
        out.push(format!("**{}:** {}", esc(k), esc(v)));
    }
    if let Some(l) = m.link.as_deref().and_then(safe_link) {
        out.push(format!("[Release notes]({l})"));
    }
    out.join("\n")
}

fn slack(m: &Message) -> Vec<u8> {
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&format!("{} {}", icon(m.severity), m.title), 150)}}),
    ];
    let mut body = Vec::new();
    if let Some(mn) = &m.mention {
        body.push(mn.clone());
    }
    body.extend(m.lines.iter().map(|l| slack_escape(l)));
    if !body.is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&body.join("\n"), 3000)}}));
    }
    if let Some(c) = &m.code {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{}```", slack_escape(c))}}));
    }
    if !m.facts.is_empty() {
        let fields: Vec<Value> = m
            .facts
            .iter()
            .take(10)
            .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{}*\n{}", slack_escape(k), slack_escape(v))}))
            .collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    if let Some(l) = m.link.as_deref().and_then(safe_link) {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("<{}|Release notes>", slack_escape(&l))}]}));
    }
    json_body(&json!({
        "text": slack_escape(&format!("{} {}", icon(m.severity), m.title)),
        "blocks": blocks,
    }))
}

fn discord(m: &Message) -> Vec<u8> {
    let color = match m.severity {
        Severity::Info => 0x2e86de,
        Severity::Warning => 0xf39c12,
        Severity::Critical => 0xe74c3c,
    };
    let mut desc: Vec<String> = m.lines.iter().map(|l| md_escape(l)).collect();
    if let Some(c) = &m.code {
        desc.push(format!("```\n{}\n```", c.replace("```", "'''")));
    }
    let fields: Vec<Value> = m
        .facts
        .iter()
        .take(25)
        .map(|(k, v)| json!({"name": truncate(k, 256), "value": truncate(&md_escape(v), 1024), "inline": true}))
        .collect();
    let mut embed = json!({
        "title": truncate(&m.title, 256),
        "description": truncate(&desc.join("\n"), 4096),
        "color": color,
        "fields": fields,
        "timestamp": state::rfc3339(m.created_at),
    });
    if let Some(l) = m.link.as_deref().and_then(safe_link) {
        embed["url"] = json!(l);
    }
    // Only the configured mention may ping; node names like "@everyone" never do.
    let users: Vec<String> = m
        .mention
        .as_deref()
        .and_then(|mn| mn.strip_prefix("<@"))
        .and_then(|r| r.strip_suffix('>'))
        .map(|id| vec![id.trim_start_matches('!').to_string()])
        .unwrap_or_default();
    let mut v = json!({
        "username": "headwarden",
        "embeds": [embed],
        "allowed_mentions": {"parse": [], "users": users},
    });
    if let Some(mn) = &m.mention {
        v["content"] = json!(mn);
    }
    json_body(&v)
}

fn teams(m: &Message) -> Vec<u8> {
    let color = match m.severity {
        Severity::Info => "Accent",
        Severity::Warning => "Warning",
        Severity::Critical => "Attention",
    };
    let mut body = vec![
        json!({"type": "TextBlock", "text": md_escape(&m.title), "weight": "Bolder", "size": "Medium", "wrap": true, "color": color}),
    ];
    if let Some(mn) = &m.mention {
        body.push(json!({"type": "TextBlock", "text": mn, "wrap": true}));
    }
    for l in &m.lines {
        body.push(json!({"type": "TextBlock", "text": md_escape(l), "wrap": true}));
    }
    if let Some(c) = &m.code {
        body.push(json!({"type": "TextBlock", "text": c, "fontType": "Monospace", "wrap": true}));
    }
    if !m.facts.is_empty() {
        let facts: Vec<Value> = m
            .facts
            .iter()
            .map(|(k, v)| json!({"title": md_escape(k), "value": md_escape(v)}))
            .collect();
        body.push(json!({"type": "FactSet", "facts": facts}));
    }
    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    });
    if let Some(l) = m.link.as_deref().and_then(safe_link) {
        card["actions"] = json!([{"type": "Action.OpenUrl", "title": "Release notes", "url": l}]);
    }
    json_body(&json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::message::build;

    #[test]
    fn escaping_per_service() {
        assert_eq!(slack_escape("<b>&"), "&lt;b&gt;&amp;");
        assert_eq!(md_escape("*x* @everyone"), "\\*x\\* \\@everyone");
        assert_eq!(html_escape("<script>\"'"), "&lt;script&gt;&quot;&#39;");
    }

    #[test]
    fn webhook_signature_verifies() {
        let t = &crate::settings::notify_url::targets("generic+https://h.example.com/x", None)
            .expect("test value")[0];
        let m = build(1, "test", Severity::Info, &json!({}), 0);
        let r = request(&m, t, Some("k"), 1700000000);
        let sig = r
            .headers
            .iter()
            .find(|(k, _)| k == "X-Headwarden-Signature")
            .expect("test value")
            .1
            .clone();
        assert_eq!(sig, format!("sha256={}", sign("k", 1700000000, &r.body)));
    }
}
