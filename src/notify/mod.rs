//! Chat notifications: events → messages → outbox → backends.
//!
//! Events are written to the state store's outbox in the same step that produces them (see
//! `state`). [`flush`] routes new events to destinations (one `deliveries` row per event and
//! destination), then sends what is due, oldest first, per destination rate limit, honouring
//! `Retry-After`, backing off exponentially, and giving up after `give_up_after`. A delivery is
//! marked `sending` before its request and `sent` after the service acknowledged it; one
//! process sends at a time (`notify.lock`), so a `sending` row found later was interrupted by a
//! crash: Matrix deliveries are resent (the transaction id makes that idempotent), the others are
//! marked `uncertain` and never resent — nothing is delivered twice.
//!
//! Delivery never decides an upgrade's outcome: callers flush after their work, within a budget.

pub mod message;
pub mod render;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::error::error_chain;
use crate::event::Severity;
use crate::lock::RunLock;
use crate::process;
use crate::settings::notify_url::Auth;
pub use crate::settings::notify_url::{targets, Service, Target, UrlError};
use crate::settings::playbook::Step;
use crate::settings::{KeyDelivery, NotifyTarget, ReminderRouting, Settings};
use crate::state;
use crate::state::{DeliveryRow, Store};

/// How long a command waits for chat delivery after its work is done.
pub const FLUSH_BUDGET: Duration = Duration::from_secs(20);

fn family_matches(wanted: &[String], event: &str) -> bool {
    wanted.is_empty()
        || wanted.iter().any(|w| {
            w == event
                || event
                    .strip_prefix(w.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        })
}

/// The `notify` step of every playbook: deliver what is queued now, within the step's timeout
/// (default: the usual budget). Chat never decides an outcome: a failure is logged, and the
/// events stay queued.
pub async fn notify_step(s: &Settings, store: &Store, step: &Step) {
    let budget = step.timeout().unwrap_or(FLUSH_BUDGET);
    match flush(s, store, budget).await {
        Ok(r) => tracing::debug!(sent = r.sent, "notify step"),
        Err(e) => {
            tracing::warn!(error = %e, "notify step: chat delivery failed; the events stay queued")
        }
    }
}

/// One resolved destination: the config entry it came from and the target.
pub struct Destination<'a> {
    pub entry: Option<&'a NotifyTarget>,
    pub target: Target,
    /// For per-user destinations (`notify_users`): whose reminders go here.
    pub owner: Option<String>,
}

/// Every destination in the config. URLs were validated when the config was loaded.
pub fn destinations(s: &Settings) -> Vec<Destination<'_>> {
    let mut out = Vec::new();
    for entry in &s.notify {
        out.extend(entry.targets.iter().map(|target| Destination {
            entry: Some(entry),
            target: target.clone(),
            owner: None,
        }));
    }
    for (user, d) in &s.notify_users {
        out.extend(d.targets.iter().map(|target| Destination {
            entry: None,
            target: target.clone(),
            owner: Some(user.clone()),
        }));
    }
    out
}

fn is_key_message(event: &str) -> bool {
    matches!(event, "keys.reminder" | "keys.rotation_requested")
}

/// Which of `dests` get an event.
pub fn route<'a, 'b>(
    s: &Settings,
    dests: &'a [Destination<'b>],
    event: &str,
    severity: Severity,
    payload: &serde_json::Value,
) -> Vec<&'a Destination<'b>> {
    let user = message::user_of(payload);
    let owned = user
        .as_ref()
        .is_some_and(|u| s.notify_users.contains_key(u));
    dests
        .iter()
        .filter(|d| match (d.entry, &d.owner) {
            (Some(e), _) => {
                family_matches(&e.events, event)
                    && severity >= e.min_severity
                    && !(is_key_message(event) && owned && e.reminders == ReminderRouting::Unrouted)
            }
            (None, Some(owner)) => is_key_message(event) && user.as_ref() == Some(owner),
            (None, None) => false,
        })
        .collect()
}

#[derive(Debug, Default, serde::Serialize)]
pub struct FlushReport {
    pub sent: usize,
    pub retrying: usize,
    pub failed: usize,
    pub uncertain: usize,
    /// Another process holds the sender lock; it delivers.
    pub busy: bool,
    /// Per destination label: the last error seen (secrets removed).
    pub errors: Vec<String>,
}

/// A test message the destination did not take: what the service (or the network) said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct NotDelivered(pub String);

/// What a send attempt came to.
#[derive(Debug)]
pub enum Sent {
    Ok,
    /// Try again, not before this many seconds.
    Retry {
        after: Option<u64>,
        error: String,
    },
    Permanent(String),
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("headwarden/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("static client configuration")
}

/// Removes every secret of `t` from `text` (a service may echo the URL or token back).
fn scrub(text: &str, t: &Target, secret: Option<&str>) -> String {
    let mut out = text.to_string();
    let mut secrets = vec![t.url.clone()];
    match &t.auth {
        Auth::Bearer(v) | Auth::Header(_, v) => secrets.push(v.clone()),
        Auth::Basic(_, p) => secrets.push(p.clone()),
        Auth::None => {}
    }
    // Path segments of the URL hold webhook tokens.
    secrets.extend(
        t.url
            .split(['/', '?', '&', '='])
            .filter(|s| s.len() >= 6)
            .map(str::to_string),
    );
    if let Some(s) = secret {
        secrets.push(s.to_string());
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s.as_str(), "***");
    }
    out.chars().take(300).collect()
}

fn retry_after(headers: &reqwest::header::HeaderMap, body: &str) -> Option<u64> {
    let header = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.trim()
                .parse::<f64>()
                .ok()
                .map(|s| s.ceil() as u64)
                .or_else(|| httpdate_secs(v).map(|at| (at - state::now()).max(0) as u64))
        });
    // Discord: {"retry_after": 1.5}; Telegram: {"parameters": {"retry_after": 3}}.
    let json = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("retry_after")
                .or_else(|| v.pointer("/parameters/retry_after"))
                .and_then(serde_json::Value::as_f64)
                .map(|s| s.ceil() as u64)
        });
    header.or(json).map(|s| s.min(3600))
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) as a Unix time.
fn httpdate_secs(v: &str) -> Option<i64> {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(v.trim(), &fmt)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

/// Sends one request and classifies the answer.
pub async fn send(
    http: &reqwest::Client,
    req: &render::Request,
    t: &Target,
    secret: Option<&str>,
    timeout: Duration,
) -> Sent {
    let mut rb = http
        .request(req.method.clone(), &req.url)
        .timeout(timeout)
        .body(req.body.clone());
    for (k, v) in &req.headers {
        rb = rb.header(k, v);
    }
    rb = match &t.auth {
        Auth::None => rb,
        Auth::Bearer(tok) => rb.bearer_auth(tok),
        Auth::Basic(u, p) => rb.basic_auth(u, Some(p)),
        Auth::Header(name, v) => rb.header(*name, v),
    };
    let resp = match rb.send().await {
        Ok(r) => r,
        Err(e) => {
            let kind = if e.is_timeout() {
                "timed out".to_string()
            } else {
                error_chain(&e.without_url())
            };
            return Sent::Retry {
                after: None,
                error: scrub(&format!("{}: {kind}", t.label), t, secret),
            };
        }
    };
    let status = resp.status();
    let body_text = |b: String| scrub(&b, t, secret);
    if status.is_success() {
        // Telegram answers 200 with {"ok": false} for some refusals.
        let body = resp.text().await.unwrap_or_default();
        if t.service == Service::Telegram
            && serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("ok").and_then(serde_json::Value::as_bool))
                == Some(false)
        {
            return Sent::Permanent(format!("{}: refused: {}", t.label, body_text(body)));
        }
        return Sent::Ok;
    }
    let after_hdr = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    let error = format!("{}: HTTP {status}: {}", t.label, body_text(body.clone()));
    if status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 408 {
        let after = retry_after(&after_hdr, &body);
        Sent::Retry { after, error }
    } else {
        Sent::Permanent(error)
    }
}

/// The message for a destination: mention and template applied.
/// Whether `d` may see the one-time key in a key message about `user`'s node: only the owner's
/// own destination, or a shared entry whose admin set `one_time_keys: include`.
fn shows_key(d: &Destination<'_>, user: Option<&str>) -> bool {
    match (d.entry, &d.owner) {
        (None, Some(owner)) => user == Some(owner.as_str()),
        (Some(e), _) => e.one_time_keys == KeyDelivery::Include,
        (None, None) => false,
    }
}

/// A key message's payload with the one-time key taken out: the command becomes instructions.
fn withhold_key(payload: &serde_json::Value, owned: bool) -> serde_json::Value {
    let mut p = payload.clone();
    let node = p
        .pointer("/node/name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("NODE")
        .to_string();
    if let Some(obj) = p.as_object_mut() {
        obj.remove("command");
        let how = if owned {
            "a one-time key was sent to the owner's own destination only".to_string()
        } else {
            format!("no key is shown here: on the Headscale host, `headwarden keys rotate {node}` prints a one-time key for the owner")
        };
        obj.insert("key_withheld".into(), serde_json::Value::String(how));
    }
    p
}

fn message_for(
    s: &Settings,
    d: &Destination<'_>,
    id: i64,
    event: &str,
    severity: Severity,
    payload: &serde_json::Value,
    created_at: i64,
) -> message::Message {
    let user = message::user_of(payload);
    let redacted;
    let payload = if is_key_message(event) && !shows_key(d, user.as_deref()) {
        let owned = user
            .as_ref()
            .is_some_and(|u| s.notify_users.contains_key(u));
        redacted = withhold_key(payload, owned);
        &redacted
    } else {
        payload
    };
    let mut m = message::build(id, event, severity, payload, created_at);
    if let (Some(e), Some(u)) = (d.entry, &m.user) {
        m.mention = e.mentions.get(u).cloned();
    }
    if let Some(tpl) = d.entry.and_then(|e| e.template.as_deref()) {
        m.apply_template(tpl);
    }
    m
}

fn interval(d: &Destination<'_>) -> Duration {
    d.entry
        .and_then(|e| e.min_interval)
        .unwrap_or(Duration::from_millis(
            d.target.service.default_interval_ms(),
        ))
}

fn timeout(d: &Destination<'_>) -> Duration {
    d.entry.map_or(Duration::from_secs(10), |e| e.timeout)
}

/// Routes new events, then delivers what is due until nothing is due or `budget` is spent.
pub async fn flush(
    s: &Settings,
    store: &Store,
    budget: Duration,
) -> Result<FlushReport, state::StateError> {
    let mut report = FlushReport::default();
    let _lock = match RunLock::acquire_notify(&s.state_dir, "notify") {
        Ok(l) => l,
        Err(_) => {
            report.busy = true;
            return Ok(report);
        }
    };
    let deadline = Instant::now() + budget;
    let dests = destinations(s);
    route_new(s, store, &dests)?;
    let by_id: HashMap<&str, &Destination<'_>> =
        dests.iter().map(|d| (d.target.id.as_str(), d)).collect();
    settle_interrupted(store, &by_id, &mut report)?;
    let http = client();
    let mut next_ok: HashMap<String, Instant> = HashMap::new();
    let mut down: HashMap<String, ()> = HashMap::new();
    loop {
        let now = state::now();
        let due: Vec<_> = store
            .deliveries("pending")?
            .into_iter()
            .filter(|d| d.next_at <= now && !down.contains_key(&d.dest))
            .collect();
        if due.is_empty() || Instant::now() >= deadline {
            break;
        }
        let mut progressed = false;
        let mut wait: Option<Instant> = None;
        let mut seen_dest: HashMap<String, ()> = HashMap::new();
        for d in due {
            // Oldest first per destination: skip later events of a destination this round.
            if seen_dest.insert(d.dest.clone(), ()).is_some() {
                continue;
            }
            let Some(dest) = by_id.get(d.dest.as_str()) else {
                give_up(store, &d, "destination no longer configured", &mut report)?;
                continue;
            };
            let give_up_after = dest
                .entry
                .map_or(Duration::from_secs(86400), |e| e.give_up_after);
            if now - d.created_at > give_up_after.as_secs() as i64 {
                give_up(
                    store,
                    &d,
                    "gave up: undelivered past give_up_after",
                    &mut report,
                )?;
                progressed = true;
                continue;
            }
            if let Some(at) = next_ok.get(&d.dest) {
                if *at > Instant::now() {
                    wait = Some(wait.map_or(*at, |w: Instant| w.min(*at)));
                    continue;
                }
            }
            let sev = Severity::parse(&d.severity).unwrap_or_default();
            let m = message_for(s, dest, d.event_id, &d.event, sev, &d.payload, d.created_at);
            let secret = dest
                .entry
                .and_then(|e| e.secret.as_ref())
                .map(|s| s.expose());
            let req = render::request(&m, &dest.target, secret, now);
            let left = deadline.saturating_duration_since(Instant::now());
            store.set_delivery(d.event_id, &d.dest, "sending", None, None)?;
            process::crash_point("notify-send");
            let outcome = send(
                &http,
                &req,
                &dest.target,
                secret,
                timeout(dest).min(left.max(Duration::from_secs(1))),
            )
            .await;
            next_ok.insert(d.dest.clone(), Instant::now() + interval(dest));
            progressed = true;
            record(store, &d, dest, outcome, &mut report, &mut down)?;
        }
        if !progressed {
            match wait {
                Some(at) if at < deadline => tokio::time::sleep_until(at.into()).await,
                _ => break,
            }
        }
    }
    report.retrying = store.deliveries("pending")?.len();
    store.purge_delivered_keys()?;
    Ok(report)
}

/// Routes each new outbox event to the destinations that want it.
fn route_new(
    s: &Settings,
    store: &Store,
    dests: &[Destination<'_>],
) -> Result<(), state::StateError> {
    for ev in store.unrouted_events()? {
        let sev = Severity::parse(&ev.severity).unwrap_or_default();
        let ids: Vec<String> = route(s, dests, &ev.event, sev, &ev.payload)
            .into_iter()
            .map(|d| d.target.id.clone())
            .collect();
        store.route_event(ev.id, &ids)?;
    }
    Ok(())
}

/// Deliveries a crash interrupted mid-send: resent only where the service deduplicates
/// (Matrix), otherwise marked uncertain so nothing arrives twice.
fn settle_interrupted(
    store: &Store,
    by_id: &HashMap<&str, &Destination<'_>>,
    report: &mut FlushReport,
) -> Result<(), state::StateError> {
    for d in store.deliveries("sending")? {
        let idempotent = by_id
            .get(d.dest.as_str())
            .is_some_and(|x| x.target.service == Service::Matrix);
        if idempotent {
            store.set_delivery(d.event_id, &d.dest, "pending", None, None)?;
        } else {
            store.set_delivery(
                d.event_id,
                &d.dest,
                "uncertain",
                None,
                Some("interrupted while sending; not resent, so it cannot arrive twice"),
            )?;
            tracing::warn!(event = d.event_id, dest = %d.dest, "a delivery was interrupted mid-send; not resent");
            report.uncertain += 1;
        }
    }
    Ok(())
}

/// Records what one send came to: sent, retried later (with backoff or the service's
/// Retry-After; the destination rests for this flush), or failed for good.
/// Marks a delivery that can no longer be sent as failed, saying why.
fn give_up(
    store: &Store,
    d: &DeliveryRow,
    why: &str,
    report: &mut FlushReport,
) -> Result<(), state::StateError> {
    store.set_delivery(d.event_id, &d.dest, "failed", None, Some(why))?;
    report.failed += 1;
    Ok(())
}

fn record(
    store: &Store,
    d: &DeliveryRow,
    dest: &Destination<'_>,
    outcome: Sent,
    report: &mut FlushReport,
    down: &mut HashMap<String, ()>,
) -> Result<(), state::StateError> {
    match outcome {
        Sent::Ok => {
            store.set_delivery(d.event_id, &d.dest, "sent", None, None)?;
            tracing::debug!(event = %d.event, id = d.event_id, to = %dest.target.label, "notification delivered");
            report.sent += 1;
        }
        Sent::Retry { after, error } => {
            let backoff = dest.entry.map_or(30, |e| e.backoff.as_secs()) as i64;
            let exp = backoff
                .saturating_mul(1 << d.attempts.clamp(0, 10))
                .min(3600);
            // The clock is read in whole seconds: one more makes sure a Retry-After of
            // N seconds is never cut short by the fraction already past.
            let delay = after.map_or(exp, |a| a as i64 + 1);
            store.set_delivery(
                d.event_id,
                &d.dest,
                "pending",
                Some(state::now() + delay),
                Some(&error),
            )?;
            tracing::warn!(to = %dest.target.label, retry_in_s = delay, %error, "notification not delivered; will retry");
            report.errors.push(error);
            if delay > 0 {
                down.insert(d.dest.clone(), ());
            }
        }
        Sent::Permanent(error) => {
            store.set_delivery(d.event_id, &d.dest, "failed", None, Some(&error))?;
            tracing::error!(to = %dest.target.label, %error, "notification refused by the service; not retried");
            report.failed += 1;
            report.errors.push(error);
        }
    }
    Ok(())
}

/// Sends an event straight to its destinations, bypassing the outbox: for when the state store
/// itself is what failed. Best effort, one attempt each.
pub async fn send_direct(
    s: &Settings,
    event: &str,
    severity: Severity,
    payload: &serde_json::Value,
) {
    let dests = destinations(s);
    let http = client();
    let now = state::now();
    for d in route(s, &dests, event, severity, payload) {
        let m = message_for(s, d, now, event, severity, payload, now);
        let secret = d.entry.and_then(|e| e.secret.as_ref()).map(|s| s.expose());
        let req = render::request(&m, &d.target, secret, now);
        if let Sent::Retry { error, .. } | Sent::Permanent(error) =
            send(&http, &req, &d.target, secret, timeout(d)).await
        {
            tracing::warn!(%error, "could not send {event} directly");
        }
    }
}

/// `headwarden notify test`: one test message to each destination (or to `url`), sent now
/// without the outbox. Returns (label, result) per destination.
pub async fn test(
    s: &Settings,
    url: Option<&str>,
) -> Result<Vec<(String, Result<u128, NotDelivered>)>, UrlError> {
    let extra: Vec<Destination<'_>>;
    let dests = match url {
        Some(u) => {
            extra = targets(u, None)?
                .into_iter()
                .map(|target| Destination {
                    entry: None,
                    target,
                    owner: None,
                })
                .collect();
            extra
        }
        None => destinations(s),
    };
    let http = client();
    let now = state::now();
    let mut out = Vec::new();
    for d in &dests {
        let m = message_for(
            s,
            d,
            now,
            "test",
            Severity::Info,
            &serde_json::json!({}),
            now,
        );
        let secret = d.entry.and_then(|e| e.secret.as_ref()).map(|s| s.expose());
        let req = render::request(&m, &d.target, secret, now);
        let t = Instant::now();
        let r = match send(&http, &req, &d.target, secret, timeout(d)).await {
            Sent::Ok => Ok(t.elapsed().as_millis()),
            Sent::Retry { error, .. } | Sent::Permanent(error) => Err(NotDelivered(error)),
        };
        out.push((d.target.label.clone(), r));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(family_matches(&w(&[]), "keys.reminder"));
        assert!(family_matches(&w(&["keys"]), "keys.reminder"));
        assert!(family_matches(&w(&["keys.reminder"]), "keys.reminder"));
        assert!(!family_matches(&w(&["key"]), "keys.reminder"));
        assert!(family_matches(&w(&["release"]), "release"));
        assert!(!family_matches(&w(&["upgrade"]), "release"));
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            httpdate_secs("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784111777)
        );
    }
}
