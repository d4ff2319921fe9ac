//! Chat delivery against a local receiver that answers like each service's documented API:
//! request shapes and escaping per backend, outage then recovery, 429 with Retry-After, a crash
//! mid-send, per-user routing, bad URLs at `config check`, and no secret in any output.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{code, hw, sim_bin, text, Sandbox};

pub(crate) struct ChatSink {
    child: Child,
    dir: PathBuf,
    pub(crate) addr: String,
}

impl Drop for ChatSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChatSink {
    pub(crate) fn start(sb: &Sandbox) -> ChatSink {
        let dir = sb.path("chat");
        let addr_file = sb.path("chat.addr");
        let child = Command::new(sim_bin())
            .args([
                "chat-sink",
                "--dir",
                &dir.display().to_string(),
                "--addr-file",
                &addr_file.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chat sink");
        let addr = crate::support::wait_for_addr(&addr_file);
        ChatSink { child, dir, addr }
    }

    fn endpoint(&self, service: &str) -> String {
        format!("http://{}/{service}", self.addr)
    }

    pub(crate) fn messages(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("messages.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("message json"))
            .collect()
    }

    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn inject(&self, lines: &str) {
        std::fs::write(self.dir.join("inject"), lines).expect("inject");
    }
}

const HOSTILE_NOTES: &str = "### BREAKING\n\n- <script>alert(1)</script> & *bold* @everyone\n\nPlease back up your database before upgrading.\n\nMinimum supported Tailscale client version: v1.74.0\n";

/// (service, URL, secret that must never be printed)
const BACKENDS: &[(&str, &str, &str)] = &[
    ("slack", "slack://T000/B000/XslackSECRET1", "XslackSECRET1"),
    ("discord", "discord://discordSECRET2@123456", "discordSECRET2"),
    ("teams", "teams+https://prod-01.westus.logic.azure.com/workflows/teamsSECRET3/triggers/manual/paths/invoke", "teamsSECRET3"),
    ("mattermost", "mattermost://bot@mm.example.com/mmSECRET4/town-square", "mmSECRET4"),
    ("matrix", "matrix://:syt_SECRET5@matrix.example.org/?rooms=!room1:example.org", "syt_SECRET5"),
    ("telegram", "telegram://123456:tgSECRET6@telegram?chats=@ops", "tgSECRET6"),
    ("ntfy", "ntfy://:tk_SECRET7@ntfy.example.com/alerts", "tk_SECRET7"),
    ("gotify", "gotify://gotify.example.com/gotifySECRET8", "gotifySECRET8"),
    ("webhook", "generic+https://hooks.example.com/in/hookSECRET9", "hookSECRET9"),
];

fn notify_yaml(sink: &ChatSink, services: &[&str], extra: &str) -> String {
    let mut y = String::from("notify:\n");
    for (service, url, _) in BACKENDS.iter().filter(|(s, _, _)| services.contains(s)) {
        y.push_str(&format!(
            "  - url: \"{url}\"\n    endpoint: {}\n    min_interval: 0s\n    backoff: 1s\n{extra}",
            sink.endpoint(service)
        ));
        if *service == "webhook" {
            y.push_str("    secret: hmacSECRET10\n");
        }
    }
    y
}

fn of<'a>(msgs: &'a [serde_json::Value], service: &str) -> Vec<&'a serde_json::Value> {
    msgs.iter().filter(|m| m["service"] == service).collect()
}

#[test]
fn every_backend_gets_its_documented_request_with_user_text_escaped() {
    let mut sb = Sandbox::new("0.27.1");
    let sink = ChatSink::start(&sb);
    std::fs::write(sink.dir.join("hmac-key"), "hmacSECRET10").expect("key");
    sb.release("0.28.0", "none");
    sb.edit_meta("0.28.0", |m| m["body"] = serde_json::json!(HOSTILE_NOTES));
    let all: Vec<&str> = BACKENDS.iter().map(|b| b.0).collect();
    sb.extra_top = notify_yaml(&sink, &all, "");
    sb.write_config();

    let check = sb.hw(&["-vv", "check"]);
    assert_eq!(code(&check), 0, "{}", text(&check));
    let msgs = sink.messages();
    for service in &all {
        assert_eq!(
            of(&msgs, service).len(),
            1,
            "{service}: {msgs:#?}\n{}",
            text(&check)
        );
    }
    let body = |s: &str| of(&msgs, s)[0]["body"].clone();
    let raw = |s: &str| of(&msgs, s)[0]["raw"].as_str().unwrap_or("").to_string();
    for service in &all {
        assert!(raw(service).contains("0.28.0"), "{service}");
    }
    // Slack mrkdwn escapes &, <, >.
    assert!(raw("slack").contains("&lt;script&gt;") && !raw("slack").contains("<script>"));
    // Discord: markdown escaped, no mass mentions.
    let d = body("discord");
    let desc = d["embeds"][0]["description"].as_str().expect("description");
    assert!(
        desc.contains("\\*bold\\*") && desc.contains("\\@everyone"),
        "{desc}"
    );
    assert_eq!(d["allowed_mentions"]["parse"], serde_json::json!([]));
    assert!(of(&msgs, "discord")[0]["path"]
        .as_str()
        .expect("test value")
        .ends_with("/api/webhooks/123456/discordSECRET2"));
    // Teams: an Adaptive Card in a Workflows "message".
    assert!(raw("teams").contains("\\\\*bold\\\\*"), "{}", raw("teams"));
    // Matrix: HTML escaped in formatted_body, PUT with a transaction id and the access token.
    let m = of(&msgs, "matrix")[0];
    assert_eq!(m["method"], "PUT");
    let path = m["path"].as_str().expect("test value");
    assert!(
        path.contains("/rooms/%21room1%3Aexample.org/send/m.room.message/headwarden-"),
        "{path}"
    );
    assert_eq!(m["headers"]["authorization"], "Bearer syt_SECRET5");
    assert!(m["body"]["formatted_body"]
        .as_str()
        .expect("test value")
        .contains("&lt;script&gt;"));
    // Telegram: plain text (no parse_mode), so the text arrives verbatim.
    let t = body("telegram");
    assert_eq!(t["chat_id"], "@ops");
    assert!(
        t.get("parse_mode").is_none()
            && t["text"].as_str().expect("test value").contains("<script>")
    );
    assert!(of(&msgs, "telegram")[0]["path"]
        .as_str()
        .expect("test value")
        .ends_with("/bot123456:tgSECRET6/sendMessage"));
    // ntfy JSON publishing with the access token; Gotify with its app key.
    assert_eq!(body("ntfy")["topic"], "alerts");
    assert_eq!(
        of(&msgs, "ntfy")[0]["headers"]["authorization"],
        "Bearer tk_SECRET7"
    );
    assert_eq!(
        of(&msgs, "gotify")[0]["headers"]["x-gotify-key"],
        "gotifySECRET8"
    );
    // Mattermost: channel and username from the URL.
    assert_eq!(body("mattermost")["channel"], "town-square");
    assert_eq!(body("mattermost")["username"], "bot");
    // Generic webhook: stable document; the sink verified the HMAC signature.
    let w = body("webhook");
    assert_eq!(w["schema"], "headwarden.event/v1");
    assert_eq!(w["event"], "release");
    assert_eq!(w["data"]["min_tailscale"], "v1.74.0");
    assert!(
        w["data"]["action"]
            .as_str()
            .expect("test value")
            .contains("next upgrade run"),
        "{w}"
    );

    // A second run sends nothing again; status counts the deliveries.
    let again = sb.hw(&["check"]);
    assert_eq!(code(&again), 0);
    assert_eq!(sink.messages().len(), all.len());
    let status = sb.status_json();
    assert_eq!(status["notifications"]["sent"], all.len());

    // No secret in any output, even at debug level.
    let mut outputs = text(&check) + &text(&again);
    outputs += &text(&sb.hw(&["-vv", "status"]));
    outputs += &text(&sb.hw(&["-vv", "config", "check"]));
    let test = sb.hw(&["-vv", "notify", "test"]);
    assert_eq!(code(&test), 0, "{}", text(&test));
    let ok_lines = String::from_utf8_lossy(&test.stdout)
        .lines()
        .filter(|l| l.starts_with("ok "))
        .count();
    assert_eq!(ok_lines, all.len(), "{}", text(&test));
    assert_eq!(
        sink.messages().len(),
        2 * all.len(),
        "one test message each"
    );
    outputs += &text(&test);
    for (_, _, secret) in BACKENDS {
        assert!(!outputs.contains(secret), "{secret} printed:\n{outputs}");
    }
    assert!(!outputs.contains("hmacSECRET10"));
}

#[test]
fn outage_then_recovery_and_429_deliver_everything_once() {
    let mut sb = Sandbox::new("0.27.1");
    let sink = ChatSink::start(&sb);
    sb.release("0.28.0", "none");
    sb.release("0.28.1", "none");
    sb.extra_top = notify_yaml(&sink, &["webhook", "slack"], "");
    sb.write_config();
    // The chat service is down for the whole upgrade check: the command still succeeds.
    sink.inject(&"503\n".repeat(4));
    let check = sb.hw(&["check"]);
    assert_eq!(code(&check), 0, "{}", text(&check));
    assert!(sink.messages().is_empty());
    assert_eq!(
        sb.outbox().iter().filter(|(e, _)| e == "release").count(),
        2
    );
    // Retries with back-off until the service is back; then everything arrives once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.messages().len() < 4 {
        assert!(
            Instant::now() < deadline,
            "not delivered: {:?}",
            sink.requests()
        );
        let f = sb.hw(&["notify", "flush"]);
        assert_eq!(code(&f), 0, "{}", text(&f));
    }
    // Nothing is delivered twice: one more flush sends nothing.
    assert_eq!(code(&sb.hw(&["notify", "flush"])), 0);
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 4, "{msgs:#?}");
    assert!(
        sink.requests()
            .iter()
            .filter(|r| r.ends_with(" 503"))
            .count()
            >= 2
    );

    // 429 with Retry-After: nothing is sent to that service before it allows it.
    sb.release("0.28.2", "none");
    sink.inject("429 3\n");
    assert_eq!(code(&sb.hw(&["check"])), 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.messages().len() < 6 {
        assert!(
            Instant::now() < deadline,
            "not delivered: {:?}",
            sink.requests()
        );
        assert_eq!(code(&sb.hw(&["notify", "flush"])), 0);
    }
    let throttled = sink
        .requests()
        .into_iter()
        .find_map(|r| {
            let (head, at) = r.split_once(" 429 at ")?;
            let service = head.split(' ').next()?.to_string();
            Some((service, at.trim().parse::<u128>().ok()?))
        })
        .expect("a 429 was served");
    let resent = sink
        .messages()
        .into_iter()
        .filter(|m| m["service"] == throttled.0.as_str())
        .filter_map(|m| m["received_ms"].as_u64().map(u128::from))
        .find(|t| *t > throttled.1)
        .expect("the throttled message arrived later");
    assert!(
        resent - throttled.1 >= 3000,
        "resent {} ms after a 429 with Retry-After: 3",
        resent - throttled.1
    );
    assert_eq!(sink.messages().len(), 6);
}

fn spawn_hw(sb: &Sandbox, args: &[&str]) -> Child {
    Command::new(hw())
        .arg("--config")
        .arg(sb.config_path())
        .stdin(Stdio::null())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("headwarden")
}

fn kill_when_received(sink: &ChatSink, mut child: Child, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.messages().len() < n {
        assert!(Instant::now() < deadline, "no request arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let _ = child.wait();
}

#[test]
fn a_crash_mid_send_never_delivers_twice() {
    let mut sb = Sandbox::new("0.27.1");
    let sink = ChatSink::start(&sb);
    sb.release("0.28.0", "none");
    // Webhook: the service accepted the message, headwarden died before the answer.
    sb.extra_top = notify_yaml(&sink, &["webhook"], "");
    sb.write_config();
    sink.inject("hang 30\n");
    kill_when_received(&sink, spawn_hw(&sb, &["check"]), 1);
    let flush = sb.hw(&["notify", "flush"]);
    assert!(text(&flush).contains("uncertain 1"), "{}", text(&flush));
    assert_eq!(sink.messages().len(), 1, "not resent");
    assert_eq!(sb.status_json()["notifications"]["uncertain"], 1);

    // Matrix: the resend reuses the transaction id, so the homeserver keeps one message.
    sb.extra_top = notify_yaml(&sink, &["matrix"], "");
    sb.write_config();
    sb.release("0.28.1", "none");
    sink.inject("hang 30\n");
    kill_when_received(&sink, spawn_hw(&sb, &["check"]), 2);
    let flush = sb.hw(&["notify", "flush"]);
    assert_eq!(code(&flush), 0, "{}", text(&flush));
    let matrix: Vec<_> = sink
        .messages()
        .into_iter()
        .filter(|m| m["service"] == "matrix")
        .collect();
    assert_eq!(matrix.len(), 2, "{matrix:#?}");
    assert_eq!(matrix[0]["path"], matrix[1]["path"], "same transaction id");
    assert_eq!(matrix[1]["duplicate"], true);
}

#[test]
fn reminders_go_to_the_owner_and_the_fallback_gets_the_rest() {
    let mut sb = Sandbox::new("0.28.0");
    let sink = ChatSink::start(&sb);
    sb.enable_api(false);
    sb.seed("due", 77, None, "");
    sb.seed("late", 100, None, "");
    let plan: serde_json::Value =
        serde_json::from_slice(&sb.hw(&["keys", "plan", "--json"]).stdout).expect("plan");
    let user_of = |prefix: &str| {
        plan.as_array()
            .expect("test value")
            .iter()
            .find(|p| p["name"].as_str().expect("test value").starts_with(prefix))
            .map(|p| p["user"].as_str().expect("test value").to_string())
            .expect("user")
    };
    let (due_user, late_user) = (user_of("due"), user_of("late"));
    sb.extra_top = format!(
        "notify:\n  - url: generic+http://127.0.0.1/fallback\n    endpoint: {ep}\n    events: [keys]\n    reminders: unrouted\n    min_interval: 0s\nnotify_users:\n  {due_user}: generic+http://{addr}/webhook/personal\n",
        ep = sink.endpoint("webhook"),
        addr = sink.addr
    );
    sb.write_config();
    let run = sb.hw(&["-vv", "keys", "run"]);
    assert_eq!(code(&run), 0, "{}", text(&run));
    let msgs = sink.messages();
    // The owner's own destination gets the key; the shared fallback only hears how to get one,
    // and nothing at -vv prints it.
    let bodies = |path: &str| -> Vec<String> {
        msgs.iter()
            .filter(|m| m["path"].as_str().is_some_and(|p| p.ends_with(path)))
            .map(|m| m["raw"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let personal = bodies("/personal");
    let key = personal
        .iter()
        .find_map(|b| {
            b.split_whitespace()
                .skip_while(|w| *w != "--auth-key")
                .nth(1)
                .map(|k| {
                    k.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                        .to_string()
                })
        })
        .expect("the owner's destination got the key");
    let shared = bodies("/fallback");
    assert!(!shared.is_empty());
    assert!(
        shared
            .iter()
            .all(|b| !b.contains("hskey-auth-") && b.contains("headwarden keys rotate")),
        "the shared channel never sees a one-time key: {shared:#?}"
    );
    assert!(!text(&run).contains(&key), "{}", text(&run));
    let reminders = |path: &str| -> Vec<String> {
        msgs.iter()
            .filter(|m| {
                m["path"].as_str().expect("test value").ends_with(path)
                    && m["body"]["event"] == "keys.reminder"
            })
            .map(|m| m["body"]["user"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(reminders("/personal"), vec![due_user.clone()], "{msgs:#?}");
    let fallback = reminders("/fallback");
    assert!(
        fallback.contains(&late_user) && !fallback.contains(&due_user),
        "{fallback:?}"
    );
}

#[test]
fn bad_notification_urls_fail_config_check_without_printing_them() {
    let mut sb = Sandbox::new("0.27.1");
    for (url, expect) in [
        ("slack://T000/onlytwoSECRET", "three webhook tokens"),
        (
            "https://contoso.webhook.office.com/webhookb2/officeSECRET",
            "Office 365 connector",
        ),
        ("telegram://123456:tgSECRET@telegram", "no chat"),
        ("discord://discordSECRET", "numeric webhook id"),
        (
            "ntfy://ntfy.example.com/topicSECRET?scheme=http",
            "plain http",
        ),
        ("pigeon://coopSECRET", "unknown notification service"),
    ] {
        sb.extra_top = format!("notify:\n  - url: \"{url}\"\n");
        sb.write_config();
        let out = sb.hw(&["config", "check"]);
        assert_eq!(code(&out), 2, "{url}: {}", text(&out));
        assert!(text(&out).contains(expect), "{url}: {}", text(&out));
        assert!(text(&out).contains("notify.url"), "{}", text(&out));
        assert!(!text(&out).contains("SECRET"), "{}", text(&out));
    }
    sb.extra_top = "notify:\n  - url: slack://T/B/C\n    events: [releases]\n".into();
    sb.write_config();
    let out = sb.hw(&["config", "check"]);
    assert_eq!(code(&out), 2);
    assert!(
        text(&out).contains("unknown event \"releases\""),
        "{}",
        text(&out)
    );
}

#[test]
fn undeliverable_events_are_given_up_and_refusals_are_not_retried() {
    let mut sb = Sandbox::new("0.27.1");
    let sink = ChatSink::start(&sb);
    sb.release("0.28.0", "none");
    // One destination nobody answers (given up after 1 s), one that refuses the token (404).
    sb.extra_top = format!(
        "notify:\n  - url: generic+http://127.0.0.1:9/dead\n    give_up_after: 1s\n    backoff: 1s\n  - url: slack://T000/B000/XXXX\n    endpoint: {}/nonsense\n    min_interval: 0s\n",
        sink.endpoint("slack")
    );
    sb.write_config();
    assert_eq!(code(&sb.hw(&["check"])), 0);
    // Flush until the dead destination is given up (give_up_after: 1s), with a deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let flush = sb.hw(&["notify", "flush"]);
        if sb.status_json()["notifications"]["failed"] == 2 {
            assert!(text(&flush).contains("failed"), "{}", text(&flush));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never given up: {}",
            text(&flush)
        );
    }
    let status = sb.status_json();
    assert_eq!(status["notifications"]["failed"], 2, "{status}");
    assert!(status["notifications"].get("pending").is_none(), "{status}");
    assert_eq!(sink.requests().len(), 1, "a refusal is not retried");
}
