//! Notification URLs → concrete HTTP targets.
//!
//! Accepts the shoutrrr spellings Watchtower users already have (`slack://`, `discord://token@id`,
//! `telegram://token@telegram?chats=`, `ntfy://`, `gotify://`, `generic+https://`), the apprise
//! spellings where they differ (`tgram://`, `mmost://`, `mmosts://`, `ntfys://`, `gotifys://`,
//! `json://`, `jsons://`, `matrixs://`), and plain `https://` webhook URLs recognised by host.
//! Every error names the service and what is missing, never the URL itself (it holds tokens).

use sha2::{Digest, Sha256};

use super::url_allowed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Slack,
    Discord,
    Teams,
    Mattermost,
    Matrix,
    Telegram,
    Ntfy,
    Gotify,
    Webhook,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Slack => "slack",
            Service::Discord => "discord",
            Service::Teams => "teams",
            Service::Mattermost => "mattermost",
            Service::Matrix => "matrix",
            Service::Telegram => "telegram",
            Service::Ntfy => "ntfy",
            Service::Gotify => "gotify",
            Service::Webhook => "webhook",
        }
    }

    /// The service's own rate limit for one webhook/chat, as a minimum gap between messages.
    pub fn default_interval_ms(self) -> u64 {
        match self {
            // Slack: 1 message per second per webhook.
            Service::Slack => 1000,
            // Discord: 30 messages per minute per channel webhook.
            Service::Discord => 2000,
            // Telegram: 1 message per second per chat.
            Service::Telegram => 1000,
            Service::Teams => 1000,
            // ntfy.sh: bursts of 60, then one every 5 s for anonymous publishers.
            Service::Ntfy => 500,
            Service::Matrix | Service::Mattermost => 200,
            Service::Gotify | Service::Webhook => 0,
        }
    }
}

/// How a request authenticates. Values are secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Bearer(String),
    Basic(String, String),
    Header(&'static str, String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            _ => "Auth(***)",
        })
    }
}

/// One place a message goes: a webhook, a Telegram chat, a Matrix room, an ntfy topic.
#[derive(Clone)]
pub struct Target {
    pub service: Service,
    /// The request URL (secret: holds tokens or webhook paths).
    pub url: String,
    /// Telegram chat, Matrix room (id or alias), ntfy topic.
    pub chat: Option<String>,
    pub auth: Auth,
    /// Service options from the query string (ntfy `priority`/`tags`, Mattermost `channel`, …).
    pub options: Vec<(String, String)>,
    /// Safe to print: service, host and non-secret chat names only.
    pub label: String,
    /// Stable and safe to store: service plus a short hash of URL and chat.
    pub id: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({})", self.label)
    }
}

impl Target {
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{service}: {message}")]
pub struct UrlError {
    pub service: String,
    pub message: String,
    pub hint: String,
}

impl UrlError {
    pub fn hint(&self) -> String {
        self.hint.clone()
    }
}

fn err(service: &str, message: impl Into<String>, hint: impl Into<String>) -> UrlError {
    UrlError {
        service: service.to_string(),
        message: message.into(),
        hint: hint.into(),
    }
}

/// The pieces of `scheme://[user[:pass]@]host[:port][/path][?query][#fragment]`, decoded.
/// Parsed by hand: Telegram bot tokens (`123:ABC`) in the host position are not valid ports.
struct Parts {
    scheme: String,
    user: Option<String>,
    pass: Option<String>,
    host: String,
    port: Option<String>,
    path: Vec<String>,
    query: Vec<(String, String)>,
    fragment: Option<String>,
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn split(url: &str) -> Result<Parts, UrlError> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        err(
            "notify",
            "the URL has no scheme",
            "e.g. slack://…, discord://…, ntfy://…, https://…",
        )
    })?;
    // Only a well-formed scheme is ever echoed: anything else may be a token pasted in front.
    let scheme_ok = !scheme.is_empty()
        && scheme.len() <= 32
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(err(
            "notify",
            "the URL's scheme is not valid",
            "e.g. slack://…, discord://…, ntfy://…, https://…",
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(
            scheme,
            "the URL contains whitespace",
            "remove spaces and line breaks; percent-encode them if they are meant",
        ));
    }
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(decode(f))),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (
            r,
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ),
        None => (rest, Vec::new()),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, pass) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((a, b)) => (Some(decode(a)), Some(decode(b))),
            None => (Some(decode(u)), None),
        },
        None => (None, None),
    };
    let (host, port) = if hostport.starts_with('[') {
        match hostport.split_once(']') {
            Some((h, p)) => (format!("{h}]"), p.strip_prefix(':').map(str::to_string)),
            None => (hostport.to_string(), None),
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (hostport.to_string(), None),
        }
    };
    Ok(Parts {
        scheme: scheme.to_ascii_lowercase(),
        user: user.filter(|u| !u.is_empty()),
        pass: pass.filter(|p| !p.is_empty()),
        host: decode(&host),
        port,
        path: path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(decode)
            .collect(),
        query,
        fragment: fragment.filter(|f| !f.is_empty()),
    })
}

impl Parts {
    fn q(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
    fn flag(&self, key: &str) -> bool {
        self.q(key)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "yes" | "true" | "1"))
    }
    fn hostport(&self) -> String {
        match &self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
    /// `https://host[:port]`, or http when the URL asks for it (loopback only, checked later).
    fn base(&self, http: bool) -> String {
        format!(
            "{}://{}",
            if http { "http" } else { "https" },
            self.hostport()
        )
    }
    /// Query options other than the ones the parser consumed.
    fn options(&self, consumed: &[&str]) -> Vec<(String, String)> {
        self.query
            .iter()
            .filter(|(k, _)| !consumed.iter().any(|c| c.eq_ignore_ascii_case(k)))
            .cloned()
            .collect()
    }
}

/// RFC 3986 path segment: everything but unreserved characters is percent-encoded.
pub const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_string()
}

struct Draft {
    service: Service,
    url: String,
    chat: Option<String>,
    auth: Auth,
    options: Vec<(String, String)>,
    /// Shown in the label after the host (never secret).
    show_chat: bool,
}

fn draft(service: Service, url: String) -> Draft {
    Draft {
        service,
        url,
        chat: None,
        auth: Auth::None,
        options: Vec::new(),
        show_chat: false,
    }
}

/// Parses a notification URL into one target per chat/room/topic, applying `endpoint` (which
/// replaces the scheme, host and port of every request URL and prefixes its path).
pub fn targets(url: &str, endpoint: Option<&str>) -> Result<Vec<Target>, UrlError> {
    let p = split(url)?;
    let drafts = match p.scheme.as_str() {
        "https" | "http" => plain(url, &p)?,
        "slack" => vec![slack(&p)?],
        "discord" => vec![discord(&p)?],
        "teams" | "msteams" | "workflow" | "workflows" => {
            return Err(err(
                "teams",
                "this is the Office 365 connector URL format, which Microsoft retired",
                "create a Teams workflow (\"Post to a channel when a webhook request is received\") and use its https:// URL, or teams+https://…",
            ))
        }
        "mattermost" | "mmost" | "mmosts" => vec![mattermost(&p)?],
        "matrix" | "matrixs" => matrix(&p)?,
        "telegram" | "tgram" => telegram(&p)?,
        "ntfy" | "ntfys" => vec![ntfy(&p)?],
        "gotify" | "gotifys" => vec![gotify(&p)?],
        "generic" => {
            let http = p.flag("disabletls");
            let path = p.path.join("/");
            let mut d = draft(Service::Webhook, format!("{}/{path}", p.base(http)));
            d.options = p.options(&["disabletls"]);
            vec![d]
        }
        "json" | "jsons" => {
            let path = p.path.join("/");
            let d = draft(
                Service::Webhook,
                format!("{}/{path}", p.base(p.scheme == "json")),
            );
            vec![d]
        }
        s if s.starts_with("generic+") || s.starts_with("teams+") => {
            let inner = url.split_once('+').map_or("", |(_, r)| r);
            if !(inner.starts_with("https://") || inner.starts_with("http://")) {
                return Err(err(
                    s,
                    "expected generic+https://… or teams+https://…",
                    "write the service URL after the plus sign",
                ));
            }
            let service = if s.starts_with("teams+") {
                Service::Teams
            } else {
                Service::Webhook
            };
            vec![draft(service, inner.to_string())]
        }
        other => {
            return Err(err(
                other,
                "unknown notification service",
                "supported: slack, discord, teams (https workflow URL), mattermost/mmost, matrix, telegram/tgram, ntfy, gotify, generic+https, or a plain https:// webhook",
            ))
        }
    };
    drafts.into_iter().map(|d| finish(d, endpoint)).collect()
}

fn finish(d: Draft, endpoint: Option<&str>) -> Result<Target, UrlError> {
    let url = match endpoint {
        Some(e) => {
            let rest = d.url.split_once("://").map_or("", |(_, r)| r);
            let path = rest.find('/').map_or("", |i| &rest[i..]);
            format!("{}{path}", e.trim_end_matches('/'))
        }
        None => d.url,
    };
    let name = d.service.name();
    if !url_allowed(&url, true) {
        return Err(err(
            name,
            "plain http is only allowed to a loopback address",
            "use https (e.g. ntfys://, mmosts://, or drop disabletls), or point `endpoint:` at http://127.0.0.1:PORT",
        ));
    }
    let host = host_of(&url);
    let label = match (&d.chat, d.show_chat) {
        (Some(c), true) => format!("{name} {c} via {host}"),
        _ => format!("{name} via {host}"),
    };
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(url.as_bytes());
    h.update([0]);
    h.update(d.chat.as_deref().unwrap_or("").as_bytes());
    let id = format!("{name}-{}", &hex::encode(h.finalize())[..12]);
    Ok(Target {
        service: d.service,
        url,
        chat: d.chat,
        auth: d.auth,
        options: d.options,
        label,
        id,
    })
}

fn plain(url: &str, p: &Parts) -> Result<Vec<Draft>, UrlError> {
    let host = p.host.to_ascii_lowercase();
    let path = p.path.join("/");
    if host.ends_with(".webhook.office.com")
        || ((host == "outlook.office.com" || host == "outlook.office365.com")
            && path.starts_with("webhook"))
    {
        return Err(err(
            "teams",
            "this is an Office 365 connector webhook, which Microsoft retired",
            "create a Teams workflow (\"Post to a channel when a webhook request is received\") and use its URL",
        ));
    }
    let service = if host == "hooks.slack.com" {
        if !path.starts_with("services/") {
            return Err(err(
                "slack",
                "expected https://hooks.slack.com/services/T…/B…/…",
                "copy the incoming webhook URL from Slack's app settings",
            ));
        }
        Service::Slack
    } else if matches!(
        host.as_str(),
        "discord.com" | "discordapp.com" | "ptb.discord.com" | "canary.discord.com"
    ) {
        if !path.starts_with("api/webhooks/") || p.path.len() < 4 {
            return Err(err(
                "discord",
                "expected https://discord.com/api/webhooks/ID/TOKEN",
                "copy the webhook URL from the channel's integrations",
            ));
        }
        Service::Discord
    } else if host.ends_with(".logic.azure.com") || host.ends_with(".powerplatform.com") {
        Service::Teams
    } else {
        Service::Webhook
    };
    Ok(vec![draft(service, url.to_string())])
}

fn slack(p: &Parts) -> Result<Draft, UrlError> {
    if matches!(p.user.as_deref(), Some("xoxb" | "xoxp")) {
        return Err(err(
            "slack",
            "bot tokens are not supported",
            "use an incoming webhook: slack://hook:TOKEN@webhook or slack://T…/B…/…",
        ));
    }
    // shoutrrr: slack://hook:T000-B000-XXXX@webhook ; legacy/apprise: slack://[botname@]T000/B000/XXXX
    let parts: Vec<String> = if p.user.as_deref() == Some("hook") {
        p.pass
            .as_deref()
            .unwrap_or("")
            .split(['-', '/'])
            .map(str::to_string)
            .collect()
    } else {
        std::iter::once(p.host.clone())
            .chain(p.path.iter().cloned())
            .collect()
    };
    if parts.len() != 3 || parts.iter().any(|s| s.is_empty()) {
        return Err(err(
            "slack",
            "expected three webhook tokens",
            "slack://T000/B000/XXXX or slack://hook:T000-B000-XXXX@webhook (from https://hooks.slack.com/services/T000/B000/XXXX)",
        ));
    }
    let mut d = draft(
        Service::Slack,
        format!(
            "https://hooks.slack.com/services/{}/{}/{}",
            seg(&parts[0]),
            seg(&parts[1]),
            seg(&parts[2])
        ),
    );
    d.options = p.options(&[]);
    Ok(d)
}

fn discord(p: &Parts) -> Result<Draft, UrlError> {
    // shoutrrr: discord://TOKEN@ID ; apprise: discord://ID/TOKEN
    let (id, token) = match (&p.user, p.path.first()) {
        (Some(token), _) => (p.host.clone(), token.clone()),
        (None, Some(token)) => (p.host.clone(), token.clone()),
        (None, None) => (p.host.clone(), String::new()),
    };
    if token.is_empty() || id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(err(
            "discord",
            "expected a numeric webhook id and a token",
            "discord://TOKEN@ID (from https://discord.com/api/webhooks/ID/TOKEN)",
        ));
    }
    let mut d = draft(
        Service::Discord,
        format!("https://discord.com/api/webhooks/{id}/{}", seg(&token)),
    );
    d.options = p.options(&[]);
    Ok(d)
}

fn mattermost(p: &Parts) -> Result<Draft, UrlError> {
    // mattermost://[username@]host[:port][/path]/TOKEN[/channel]  (shoutrrr; https unless disabletls)
    // mmost:// (apprise: http) and mmosts:// (https).
    let http = p.scheme == "mmost" || p.flag("disabletls");
    if p.host.is_empty() || p.path.is_empty() {
        return Err(err(
            "mattermost",
            "expected a host and a webhook token",
            "mattermost://[username@]host/TOKEN[/channel]",
        ));
    }
    // The token is the last segment unless a channel follows it; shoutrrr puts the channel
    // after the token, so with two or more segments the first is the token.
    let (token, channel) = match p.path.as_slice() {
        [t] => (t.clone(), None),
        [t, c] => (t.clone(), Some(c.clone())),
        [prefix @ .., t, c] => (format!("{}/hooks/{t}", prefix.join("/")), Some(c.clone())),
        [] => unreachable!(),
    };
    let url = if token.contains("/hooks/") {
        format!("{}/{token}", p.base(http))
    } else {
        format!("{}/hooks/{}", p.base(http), seg(&token))
    };
    let mut d = draft(Service::Mattermost, url);
    d.options = p.options(&["disabletls"]);
    if let Some(u) = &p.user {
        d.options.push(("username".into(), u.clone()));
    }
    if let Some(c) = channel {
        d.options.push(("channel".into(), c));
    }
    Ok(d)
}

fn matrix(p: &Parts) -> Result<Vec<Draft>, UrlError> {
    // matrix://[user]:ACCESS_TOKEN@host[:port]/?rooms=!id:server,#alias:server  (https unless
    // disabletls); apprise: matrix://TOKEN@host/#room. headwarden uses an access token, never a
    // password login.
    let http = p.flag("disabletls");
    let token = p
        .pass
        .clone()
        .or_else(|| p.user.clone())
        .unwrap_or_default();
    if token.is_empty() || p.host.is_empty() {
        return Err(err(
            "matrix",
            "expected an access token and a homeserver",
            "matrix://:ACCESS_TOKEN@matrix.example.org/?rooms=!roomid:example.org",
        ));
    }
    let server = p.host.clone();
    let mut rooms: Vec<String> = p
        .q("rooms")
        .map(|r| {
            r.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    rooms.extend(p.path.iter().cloned());
    if let Some(f) = &p.fragment {
        rooms.push(format!("#{f}"));
    }
    if rooms.iter().any(|r| !r.starts_with('!')) {
        return Err(err(
            "matrix",
            "rooms must be given by id (!…), not by alias or name",
            "find the id under the room's settings → advanced, e.g. ?rooms=!abcdef:example.org",
        ));
    }
    if rooms.is_empty() {
        return Err(err(
            "matrix",
            "no room given",
            "add ?rooms=!roomid:server (or #alias:server)",
        ));
    }
    Ok(rooms
        .into_iter()
        .map(|r| {
            let room = if r.contains(':') {
                r
            } else {
                format!("{r}:{server}")
            };
            let mut d = draft(Service::Matrix, p.base(http));
            d.chat = Some(room);
            d.show_chat = true;
            d.auth = Auth::Bearer(token.clone());
            d.options = p.options(&["rooms", "disabletls"]);
            d
        })
        .collect())
}

fn telegram(p: &Parts) -> Result<Vec<Draft>, UrlError> {
    // shoutrrr: telegram://123456:ABC@telegram?chats=@channel,-100123 ; apprise: tgram://123456:ABC/chat/…
    let (token, mut chats): (String, Vec<String>) = match (&p.user, &p.pass) {
        (Some(u), Some(pw)) => (format!("{u}:{pw}"), Vec::new()),
        (Some(u), None) => (u.clone(), Vec::new()),
        _ => (p.hostport(), p.path.clone()),
    };
    if let Some(c) = p.q("chats").or(p.q("to")) {
        chats.extend(
            c.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        );
    }
    let valid_token = token.split_once(':').is_some_and(|(id, rest)| {
        !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()) && !rest.is_empty()
    });
    if !valid_token {
        return Err(err(
            "telegram",
            "expected a bot token of the form 123456:ABC…",
            "telegram://TOKEN@telegram?chats=@channel,123456 (token from @BotFather)",
        ));
    }
    if chats.is_empty() {
        return Err(err(
            "telegram",
            "no chat given",
            "add ?chats=@channel or a numeric chat id",
        ));
    }
    Ok(chats
        .into_iter()
        .map(|chat| {
            let mut d = draft(
                Service::Telegram,
                format!("https://api.telegram.org/bot{token}/sendMessage"),
            );
            d.chat = Some(chat);
            d.show_chat = true;
            d.options = p.options(&["chats", "to"]);
            d
        })
        .collect())
}

fn ntfy(p: &Parts) -> Result<Draft, UrlError> {
    // shoutrrr: ntfy://[user:pass@]host[:port]/topic[?scheme=http] ; apprise: ntfy://topic (ntfy.sh),
    // ntfys://host/topic. An access token goes in the password position with an empty user.
    let http = p.q("scheme") == Some("http") || p.flag("disabletls");
    let (base, topic) = match p.path.as_slice() {
        [] => ("https://ntfy.sh".to_string(), p.host.clone()),
        [topic] => (p.base(http), topic.clone()),
        [prefix @ .., topic] => (
            format!("{}/{}", p.base(http), prefix.join("/")),
            topic.clone(),
        ),
    };
    if topic.is_empty() {
        return Err(err(
            "ntfy",
            "no topic given",
            "ntfy://host/topic (or ntfy://topic for ntfy.sh)",
        ));
    }
    let mut d = draft(Service::Ntfy, format!("{base}/"));
    d.chat = Some(topic);
    d.auth = match (&p.user, &p.pass) {
        (Some(u), Some(pw)) => Auth::Basic(u.clone(), pw.clone()),
        (None, Some(tok)) => Auth::Bearer(tok.clone()),
        (Some(tok), None) if tok.starts_with("tk_") => Auth::Bearer(tok.clone()),
        _ => match p.q("token") {
            Some(t) => Auth::Bearer(t.to_string()),
            None => Auth::None,
        },
    };
    d.options = p.options(&["scheme", "disabletls", "token"]);
    Ok(d)
}

fn gotify(p: &Parts) -> Result<Draft, UrlError> {
    // gotify://host[:port][/path]/APP_TOKEN[?disabletls=yes] (shoutrrr); gotifys:// (apprise)
    let http = p.flag("disabletls");
    let Some((token, prefix)) = p.path.split_last() else {
        return Err(err(
            "gotify",
            "no application token given",
            "gotify://host/APP_TOKEN",
        ));
    };
    if p.host.is_empty() {
        return Err(err("gotify", "no host given", "gotify://host/APP_TOKEN"));
    }
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("/{}", prefix.join("/"))
    };
    let mut d = draft(Service::Gotify, format!("{}{prefix}/message", p.base(http)));
    d.auth = Auth::Header("X-Gotify-Key", token.clone());
    d.options = p.options(&["disabletls"]);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(url: &str) -> Target {
        let mut t = targets(url, None).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(t.len(), 1, "{url}");
        t.remove(0)
    }

    #[test]
    fn shoutrrr_and_apprise_spellings() {
        let t = one("slack://T000/B000/XXXX");
        assert_eq!(t.service, Service::Slack);
        assert_eq!(t.url, "https://hooks.slack.com/services/T000/B000/XXXX");
        assert_eq!(
            one("slack://hook:T000-B000-XXXX@webhook").url,
            "https://hooks.slack.com/services/T000/B000/XXXX"
        );
        assert_eq!(
            one("discord://tok3n@123456").url,
            "https://discord.com/api/webhooks/123456/tok3n"
        );
        assert_eq!(
            one("discord://123456/tok3n").url,
            "https://discord.com/api/webhooks/123456/tok3n"
        );
        let tg =
            targets("telegram://123:ABC-def@telegram?chats=@chan,-1001", None).expect("test value");
        assert_eq!(tg.len(), 2);
        assert_eq!(
            tg[0].url,
            "https://api.telegram.org/bot123:ABC-def/sendMessage"
        );
        assert_eq!(tg[1].chat.as_deref(), Some("-1001"));
        let tg = one("tgram://123:ABC/42");
        assert_eq!(tg.chat.as_deref(), Some("42"));
        assert_eq!(tg.url, "https://api.telegram.org/bot123:ABC/sendMessage");
        let n = one("ntfy://ntfy.example.com/alerts");
        assert_eq!(
            (n.url.as_str(), n.chat.as_deref()),
            ("https://ntfy.example.com/", Some("alerts"))
        );
        assert_eq!(one("ntfy://alerts").url, "https://ntfy.sh/");
        assert_eq!(
            one("ntfy://u:p@h/t").auth,
            Auth::Basic("u".into(), "p".into())
        );
        let g = one("gotify://gotify.example.com/sub/AbCd");
        assert_eq!(g.url, "https://gotify.example.com/sub/message");
        assert_eq!(g.auth, Auth::Header("X-Gotify-Key", "AbCd".into()));
        assert_eq!(
            one("mattermost://bot@mm.example.com/tok/town-square").url,
            "https://mm.example.com/hooks/tok"
        );
        assert_eq!(
            one("mmosts://mm.example.com:8443/tok").url,
            "https://mm.example.com:8443/hooks/tok"
        );
        let m = one("matrix://:syt_tok@matrix.example.org/?rooms=!abc:example.org");
        assert_eq!(m.chat.as_deref(), Some("!abc:example.org"));
        assert_eq!(m.auth, Auth::Bearer("syt_tok".into()));
        assert_eq!(
            one("matrixs://syt_tok@matrix.example.org/!ops")
                .chat
                .as_deref(),
            Some("!ops:matrix.example.org")
        );
        assert!(targets("matrix://:t@m.org/#ops:m.org", None).is_err());
        assert_eq!(
            one("generic+https://hooks.example.com/x?a=1").service,
            Service::Webhook
        );
        assert_eq!(
            one("generic://hooks.example.com/x").url,
            "https://hooks.example.com/x"
        );
        assert_eq!(
            one("https://prod-01.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?sig=x").service,
            Service::Teams
        );
        assert_eq!(
            one("https://hooks.slack.com/services/A/B/C").service,
            Service::Slack
        );
        assert_eq!(
            one("https://discord.com/api/webhooks/1/t").service,
            Service::Discord
        );
        assert_eq!(one("https://example.com/hook").service, Service::Webhook);
    }

    #[test]
    fn endpoint_replaces_origin() {
        let t =
            targets("discord://tok@42", Some("http://127.0.0.1:9000/discord")).expect("test value");
        assert_eq!(
            t[0].url,
            "http://127.0.0.1:9000/discord/api/webhooks/42/tok"
        );
    }

    #[test]
    fn refusals_name_the_service_not_the_secret() {
        for (url, service) in [
            ("slack://T000/B000", "slack"),
            ("slack://xoxb:secret-bot-token@C123", "slack"),
            ("discord://nohost", "discord"),
            (
                "teams://group@tenant/alt/owner?host=x.webhook.office.com",
                "teams",
            ),
            (
                "https://contoso.webhook.office.com/webhookb2/secret-path",
                "teams",
            ),
            ("telegram://notatoken@telegram?chats=1", "telegram"),
            ("telegram://123:ABC@telegram", "telegram"),
            ("matrix://matrix.example.org/?rooms=!a:b", "matrix"),
            ("gotify://host", "gotify"),
            ("mmost://mm.example.com/secret-tok", "mattermost"),
            ("ntfy://h/t?scheme=http", "ntfy"),
            ("http://example.com/secret-hook", "webhook"),
            ("carrier-pigeon://x", "carrier-pigeon"),
        ] {
            let e = targets(url, None).expect_err(url);
            assert_eq!(e.service, service, "{url}: {e}");
            let text = format!("{e} {}", e.hint);
            for secret in ["secret", "notatoken"] {
                assert!(!text.contains(secret), "{url}: {text}");
            }
        }
    }

    #[test]
    fn ids_are_stable_and_labels_hide_tokens() {
        let a = one("slack://T000/B000/XXXX");
        let b = one("slack://T000/B000/XXXX");
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, one("slack://T000/B000/YYYY").id);
        assert_eq!(a.label, "slack via hooks.slack.com");
        assert!(!format!("{a:?}").contains("XXXX"));
        let t = one("tgram://123:ABC/42");
        assert_eq!(t.label, "telegram 42 via api.telegram.org");
    }
}
