//! Configuration: raw YAML structs (`deny_unknown_fields`) resolved once into an immutable
//! [`Settings`] that is passed explicitly. Errors name the file, the key and the line, with a hint.
//!
//! Value types that can be checked while parsing (durations, semver requirements, versions,
//! cron expressions) are parsed inside deserialization, so serde's location (line, column) and
//! key path come with the error. File checks happen in [`resolve`], which finds the key's line.

pub mod cron;
pub mod notify_url;
pub mod playbook;
mod raw;
mod resolve;
mod url;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use semver::{Version, VersionReq};

use self::cron::{Cron, Zone};
use self::notify_url::Target;
use crate::error::Hinted;
use crate::event::Severity;
use crate::exit;
pub use raw::{parse_duration, DurationError, DurationValue};
pub use url::url_allowed;

/// Default location of the config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/headwarden/headwarden.yaml";

/// A secret (token, API key, webhook URL): never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Stable,
    Prerelease,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub source: PathBuf,
    pub state_dir: PathBuf,
    pub release: ReleaseSettings,
    pub headscale: HeadscaleSettings,
    pub staging: StagingSettings,
    pub smoke: SmokeSettings,
    pub keys: KeySettings,
    pub notify: Vec<NotifyTarget>,
    /// User → their own destination for key reminders.
    pub notify_users: std::collections::BTreeMap<String, UserDestination>,
    pub schedule: ScheduleSettings,
    pub metrics: MetricsSettings,
    pub playbooks: Playbooks,
    pub audit: AuditSettings,
}

impl Settings {
    /// Valid but risky choices that `config check` points out.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Install::Compose(c) = &self.headscale.install {
            if self.release.minisign_public_key.is_some() || self.release.require_signature {
                out.push(format!(
                    "release.minisign_public_key and require_signature cover release files, not images: upstream signs no image, so {} is trusted on first pull and then pinned by its digest (README, \"What covers images\")",
                    c.image
                ));
            }
        }
        for (i, n) in self.notify.iter().enumerate() {
            if n.one_time_keys == KeyDelivery::Include {
                out.push(format!(
                    "notify[{i}] receives one-time pre-auth keys (one_time_keys: include): anyone who reads that destination can register a node as the key's user"
                ));
            }
        }
        for (user, d) in &self.notify_users {
            if is_public_ntfy(d.url.expose()) {
                out.push(format!(
                    "notify_users.{user} is a topic on the public ntfy.sh: anyone who guesses the topic reads the one-time keys; use your own ntfy server or an access token"
                ));
            }
        }
        out
    }
}

/// `ntfy://topic` (no host, no credentials): the public ntfy.sh.
fn is_public_ntfy(url: &str) -> bool {
    url.strip_prefix("ntfy://").is_some_and(|rest| {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        !authority.contains(['.', ':', '@']) && !rest.contains('/')
    }) || url.starts_with("https://ntfy.sh/") && !url.contains('@')
}

/// `headwarden audit`: thresholds, optional expectations, and accepted findings.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// Pre-auth keys valid for longer than this are a finding.
    pub max_preauth_key_lifetime: Duration,
    /// Unused, still-valid pre-auth keys older than this are a finding.
    pub unused_preauth_key_after: Duration,
    /// API keys not used for this long are a finding.
    pub api_key_unused_after: Duration,
    /// Nodes not seen for this long are a finding.
    pub inactive_after: Duration,
    /// Tags a node may carry (unset: any).
    pub allowed_tags: Option<Vec<String>>,
    /// Global DNS nameservers allowed (unset: any).
    pub allowed_nameservers: Option<Vec<String>>,
    /// A YAML list of expected machines (the seeds' pre-approved node list).
    pub inventory: Option<PathBuf>,
    /// The user Headscale runs as; its files must belong to it.
    pub service_user: Option<String>,
    /// Expected reachability, evaluated against the policy.
    pub reachability: Vec<Reach>,
    pub accept: Vec<Accept>,
    pub playbook: LoadedPlaybook,
}

#[derive(Debug, Clone)]
pub struct Reach {
    pub from: String,
    pub to: String,
    pub port: u16,
    pub allow: bool,
}

/// A finding an admin accepted until a date, with the reason.
#[derive(Debug, Clone)]
pub struct Accept {
    pub id: String,
    pub until: chrono::NaiveDate,
    pub reason: String,
}

/// The pipelines as data: the built-in defaults (`playbooks/*.yaml`) or the admin's validated copy.
#[derive(Debug, Clone)]
pub struct Playbooks {
    pub upgrade: LoadedPlaybook,
    pub rotate_keys: LoadedPlaybook,
}

#[derive(Debug, Clone)]
pub struct LoadedPlaybook {
    pub playbook: playbook::Playbook,
    /// `None`: the built-in default.
    pub path: Option<PathBuf>,
}

/// Prometheus metrics: a node-exporter textfile written by `run`, and/or a loopback listener
/// served by the daemon.
#[derive(Debug, Clone, Default)]
pub struct MetricsSettings {
    pub textfile: Option<PathBuf>,
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct ReleaseSettings {
    pub owner: String,
    pub repo: String,
    pub api_url: String,
    pub token: Option<Secret>,
    pub channel: Channel,
    pub constraint: VersionReq,
    pub min_age: Duration,
    pub skip: Vec<Version>,
    pub pin: Option<Version>,
    pub require_signature: bool,
    /// Base64 minisign public key ("RW…").
    pub minisign_public_key: Option<String>,
    pub allow_insecure_http: bool,
    pub keep_versions: usize,
    pub max_asset_size: u64,
    /// Read timeout per feed request (each is retried up to 3 times).
    pub feed_timeout: Duration,
    /// Overall deadline for one download (asset, checksums, signature), however slowly the
    /// server drips bytes: a stalled mirror must not hold the run lock forever.
    pub download_timeout: Duration,
    pub approval: Approval,
    /// Promotions happen only inside this window (in `schedule.timezone`).
    pub window: Option<Window>,
    /// Dates with no promotion at all (YYYY-MM-DD, in `schedule.timezone`).
    pub blackout: Vec<chrono::NaiveDate>,
}

/// A maintenance window: on these weekdays, from `start` for `duration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub days: Vec<chrono::Weekday>,
    pub start: chrono::NaiveTime,
    pub duration: Duration,
    /// The window's own zone (the Headscale host's users may not share the timer's); unset:
    /// `schedule.timezone`.
    pub timezone: Option<Zone>,
}

/// Which upgrade steps wait for `headwarden approve VERSION`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Approval {
    /// A hop within the same minor (x.y.z → x.y.z+n).
    pub patch_manual: bool,
    /// A hop to the next minor (x.y → x.y+1).
    pub minor_manual: bool,
}

#[derive(Debug, Clone)]
pub enum ServiceSettings {
    Systemd {
        unit: String,
    },
    Command {
        start: Vec<String>,
        stop: Vec<String>,
        status: Option<Vec<String>>,
        /// The file the start command writes the server's pid to (`pid`, optionally followed by
        /// its start time in clock ticks, as `/proc/<pid>/stat` field 22): how headwarden finds
        /// production's process. Without it the process is not looked for, and production's
        /// environment is not read (the config file alone is production's config).
        pidfile: Option<PathBuf>,
    },
    /// The compose install's own service: `stop` / `up -d --force-recreate` of that service.
    Compose(ComposeInstall),
}

/// How Headscale is installed (`headscale.install.kind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Install {
    /// `headscale.binary` is a symlink headwarden points at `versions/<v>/headscale`.
    Binary,
    /// A service of a compose file, run by Docker or Podman.
    Compose(ComposeInstall),
    /// Upstream's Debian package: `headscale.binary` belongs to dpkg, and a version changes
    /// through `dpkg -i` of the release's `.deb`.
    Deb(DebInstall),
    /// A package manager (NixOS, Alpine, Arch, an APT repository) installs the binary:
    /// headwarden installs nothing and guards the restart onto what is on disk.
    External(ExternalInstall),
}

impl Install {
    /// Whether a release is installed as upstream's `.deb` (else as the raw binary, or an
    /// image, or not at all).
    pub fn installs_package(&self) -> bool {
        matches!(self, Install::Deb(_))
    }

    /// The config's name of the kind (`headscale.install.kind`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Install::Binary => "binary",
            Install::Compose(_) => "compose",
            Install::Deb(_) => "deb",
            Install::External(_) => "external",
        }
    }
}

/// Who installs Headscale's binary when headwarden does not (`kind: external`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    /// Told apart at run time: a /nix/store binary is Nix's; else the first of dpkg, apk and
    /// pacman that owns `headscale.binary`.
    Auto,
    Apt,
    Apk,
    Pacman,
    Nix,
    /// Something else (a configuration-management tool, a script): no commands to suggest.
    Other,
}

/// `kind: external`: a package manager owns the binary and decides when it changes; headwarden
/// stages what is on disk and guards the restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalInstall {
    pub manager: PackageManager,
    /// The package's name in that manager.
    pub package: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebInstall {
    /// The package's name in dpkg's database (upstream's: `headscale`).
    pub package: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeInstall {
    pub file: PathBuf,
    pub service: String,
    /// The compose command, first element an absolute path: `[/usr/bin/docker, compose]`,
    /// `[/usr/bin/podman, compose]` or `[/usr/bin/podman-compose]`.
    pub command: Vec<String>,
    /// The engine CLI beside it (`/usr/bin/podman` or `/usr/bin/docker`).
    pub engine: Vec<String>,
    /// The image repository the tag is pinned in, e.g. `docker.io/headscale/headscale`.
    pub image: String,
}

#[derive(Debug, Clone)]
pub struct HeadscaleSettings {
    pub install: Install,
    pub binary: PathBuf,
    /// The config file the server reads; for a compose install, its path inside the container
    /// (the host path follows from the service's volumes).
    pub config: PathBuf,
    pub service: ServiceSettings,
    pub api_url: String,
    pub api_key_file: Option<PathBuf>,
    /// PEM CA for a Headscale with a private certificate (grpcs:// and https://).
    pub api_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct StagingSettings {
    pub overlay: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmokeCheck {
    Health,
    Version,
    NoiseKey,
    DataParity,
    /// The Tailscale-protocol probe: handshake, register, map (`smoke::probe`).
    Connectivity,
}

impl SmokeCheck {
    pub const ALL: [SmokeCheck; 5] = [
        SmokeCheck::Health,
        SmokeCheck::Version,
        SmokeCheck::NoiseKey,
        SmokeCheck::DataParity,
        SmokeCheck::Connectivity,
    ];

    /// The name in `smoke.checks` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            SmokeCheck::Health => "health",
            SmokeCheck::Version => "version",
            SmokeCheck::NoiseKey => "noise_key",
            SmokeCheck::DataParity => "data_parity",
            SmokeCheck::Connectivity => "connectivity",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SmokeSettings {
    pub timeout: Duration,
    pub checks: Vec<SmokeCheck>,
    pub commands: Vec<Vec<String>>,
    /// After a promotion's smoke checks: the nodes online before the stop must come back.
    pub reconnect: Reconnect,
}

/// The reconnect bake (`smoke.reconnect`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reconnect {
    /// How long the nodes online before the stop have to come back.
    pub within: Duration,
    /// The share of them that must (0 turns the bake off).
    pub min_ratio: f64,
    /// Fewer nodes online before the stop than this: too few to judge, the bake passes.
    pub min_nodes: usize,
    pub on_failure: ReconnectPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectPolicy {
    /// The promotion fails and is rolled back.
    Rollback,
    /// The promotion commits; a warning event names the nodes missing.
    Alert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforce {
    Remind,
    Expire,
}

#[derive(Debug, Clone)]
pub struct KeySettings {
    pub max_age: Duration,
    pub remind_before: Vec<Duration>,
    pub grace: Duration,
    pub enforce: Enforce,
    pub exempt_tags: Vec<String>,
    pub exempt_users: Vec<String>,
    /// Node names (hostname or given name).
    pub exempt_nodes: Vec<String>,
    /// max_age per tag (the shortest applies when a node has several).
    pub per_tag: Vec<(String, Duration)>,
    /// Lifetime of a minted one-time pre-auth key.
    pub key_lifetime: Duration,
    /// Delete the old entry when the same machine re-registers as a new node.
    pub remove_stale_duplicates: bool,
    /// Node audit: report nodes not seen for this long.
    pub inactive_after: Duration,
    /// Rotate headwarden's own API key when it expires within this.
    pub api_key_rotate_before: Duration,
    /// Lifetime of an API key headwarden creates for itself.
    pub api_key_lifetime: Duration,
    /// The login server reminders name (`tailscale up --login-server …`), pinned here rather
    /// than read from a Headscale config another account may be able to change.
    pub login_server: Option<String>,
}

/// Which key reminders a chat destination receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReminderRouting {
    /// Every reminder (an admin channel).
    All,
    /// Only reminders for users without their own destination in `notify_users` (the fallback).
    Unrouted,
}

/// Whether a shared destination's key messages carry the one-time key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDelivery {
    /// The default: the key goes only to the owner's own destination (`notify_users`); shared
    /// channels hear that a key was minted and how to get one.
    Withhold,
    /// The admin routes keys here explicitly (`one_time_keys: include`), e.g. a private channel.
    Include,
}

/// One `notify:` entry: a chat destination and what it wants to hear.
#[derive(Debug, Clone)]
pub struct NotifyTarget {
    /// The service URL (shoutrrr/apprise style or a plain https webhook); holds tokens.
    pub url: Secret,
    /// What `url` names (with `endpoint` applied), parsed when the config loads.
    pub targets: Vec<Target>,
    /// Event families (`release`, `upgrade`, `keys`, `audit`, `health`) or exact events
    /// (`keys.reminder`); empty means all.
    pub events: Vec<String>,
    pub min_severity: Severity,
    pub reminders: ReminderRouting,
    pub one_time_keys: KeyDelivery,
    /// User → mention text (`<@U024BE7LH>`, `@alice:example.org`) added to that user's key messages.
    pub mentions: std::collections::BTreeMap<String, String>,
    /// Replaces scheme://host:port of the service's API (self-hosted relays, tests).
    pub endpoint: Option<String>,
    /// HMAC-SHA256 key for generic webhooks.
    pub secret: Option<Secret>,
    /// Overrides the message text: `{title}`, `{text}`, `{event}`, `{severity}`, `{link}`,
    /// `{user}`, `{payload.KEY}`.
    pub template: Option<String>,
    /// Minimum gap between two messages to this destination; `None` = the service's default.
    pub min_interval: Option<Duration>,
    pub timeout: Duration,
    /// First retry delay; doubles per attempt up to an hour.
    pub backoff: Duration,
    /// An event still undelivered this long after it was queued is marked failed.
    pub give_up_after: Duration,
}

/// A `notify_users` entry: the user's own destination URL and what it names.
#[derive(Debug, Clone)]
pub struct UserDestination {
    pub url: Secret,
    pub targets: Vec<Target>,
}

/// The scheduled jobs, in the order `run` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    Upgrade,
    Keys,
    Audit,
}

impl Job {
    pub const ALL: [Job; 3] = [Job::Upgrade, Job::Keys, Job::Audit];
    /// The name in `schedule.<job>`, state keys (`job.<name>.last`) and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Upgrade => "upgrade",
            Job::Keys => "keys",
            Job::Audit => "audit",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ScheduleSettings {
    pub upgrade: Option<Cron>,
    pub keys: Option<Cron>,
    pub audit: Option<Cron>,
    pub timezone: Zone,
    /// The daemon starts each job up to this much after its scheduled time (spread load).
    pub jitter: Duration,
}

impl ScheduleSettings {
    /// A job's schedule; `None`: it runs only when asked (or on every `run`).
    pub fn of(&self, job: Job) -> Option<&Cron> {
        match job {
            Job::Upgrade => self.upgrade.as_ref(),
            Job::Keys => self.keys.as_ref(),
            Job::Audit => self.audit.as_ref(),
        }
    }
}

/// A configuration error: file, key, line, what is wrong, and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", location(*.line, key))]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: Option<String>,
    pub line: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

fn location(line: Option<usize>, key: &Option<String>) -> String {
    let mut s = String::new();
    if let Some(l) = line {
        s.push_str(&format!(":{l}"));
    }
    if let Some(k) = key {
        s.push_str(&format!(" (key `{k}`)"));
    }
    s
}

impl ConfigError {
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

impl Hinted for ConfigError {
    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
    fn exit_code(&self) -> u8 {
        exit::USAGE
    }
}

/// Reads, parses and resolves the config file.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        key: None,
        line: None,
        message: format!("cannot read config: {e}"),
        hint: Some(format!("create it (see headwarden.example.yaml) or pass --config; the default is {DEFAULT_CONFIG_PATH}")),
    })?;
    parse(path, &text)
}

/// The largest YAML file headwarden reads (configs, playbooks, inventories, overlays).
pub const YAML_MAX_BYTES: usize = 1 << 20;
const YAML_MAX_FLOW_DEPTH: usize = 64;
const YAML_MAX_ALIASES: usize = 64;

/// Why [`yaml_guard`] refused a YAML text before parsing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlRefused {
    #[error("{0} bytes is more than the {YAML_MAX_BYTES} a YAML file here may have")]
    Size(usize),
    #[error("collections nested deeper than {YAML_MAX_FLOW_DEPTH} levels")]
    Depth,
    #[error("more than {YAML_MAX_ALIASES} alias references (*name)")]
    Aliases,
}

/// Refuses YAML that would make the parser do unbounded work before it is parsed: more than
/// 1 MiB, flow collections nested deeper than 64 (libyaml rescans every open level per token, so
/// deep nesting is quadratic), or more than 64 alias references (each can expand a whole
/// subtree: "billion laughs"). Real configs are far inside all three.
pub fn yaml_guard(text: &str) -> Result<(), YamlRefused> {
    if text.len() > YAML_MAX_BYTES {
        return Err(YamlRefused::Size(text.len()));
    }
    let (mut depth, mut aliases) = (0usize, 0usize);
    for line in text.lines() {
        let (mut quote, mut prev) = (None::<char>, ' ');
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '#') if prev.is_whitespace() => break,
                (None, '"' | '\'') => quote = Some(c),
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > YAML_MAX_FLOW_DEPTH {
                        return Err(YamlRefused::Depth);
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                (None, '*') if prev.is_whitespace() || matches!(prev, '[' | ',' | ':') => {
                    aliases += 1;
                    if aliases > YAML_MAX_ALIASES {
                        return Err(YamlRefused::Aliases);
                    }
                }
                _ => {}
            }
            prev = c;
        }
    }
    Ok(())
}

/// Parses and resolves config text; `path` is used for messages and relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    yaml_guard(text).map_err(|refused| ConfigError {
        file: path.to_path_buf(),
        key: None,
        line: None,
        message: refused.to_string(),
        hint: Some("a headwarden config is a few kilobytes of plain YAML".into()),
    })?;
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = (key != "." && !key.is_empty()).then_some(key);
        let inner = e.into_inner();
        // serde reports custom errors at the enclosing mapping; the key's own line is better.
        let line = key.as_deref().and_then(|k| line_of(text, k)).or_else(|| inner.location().map(|l| l.line()));
        let message = strip_location(&inner.to_string());
        // serde_yaml_ng may prefix the message with the parent key ("release: …").
        let message = match message.split_once(": ") {
            Some((k, m)) if !k.contains(' ') && !k.is_empty() => m.to_string(),
            _ => message,
        };
        let hint = if message.contains("unknown field") {
            Some("check the spelling against headwarden.example.yaml; unknown keys are refused so typos cannot pass silently".to_string())
        } else if message.contains("duration") {
            Some("durations are a number and a unit: 60s, 15m, 12h, 3d, 2w".to_string())
        } else if message.contains("semver") || message.contains("version") {
            Some("versions look like 0.29.2; constraints like \">=0.26, <1.0\"".to_string())
        } else if message.contains("cron") {
            Some("use 5-field crontab syntax (minute hour day month weekday) or @daily".to_string())
        } else {
            None
        };
        ConfigError { file: path.to_path_buf(), key, line, message, hint }
    })?;
    resolve::resolve(path, text, raw)
}

fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// 1-based line of `key` (a dotted path) in the text: each segment is searched for after the
/// line of the previous one, so `headscale.api.url` does not match `notify[0].url`.
pub(crate) fn line_of(text: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    for seg in key
        .split('.')
        .filter(|s| !s.is_empty() && !s.starts_with('['))
    {
        let seg = seg.split('[').next().unwrap_or(seg);
        let i = (from..lines.len()).find(|&i| {
            let t = lines[i].trim_start().trim_start_matches("- ");
            t.starts_with(&format!("{seg}:"))
        })?;
        found = Some(i + 1);
        from = i + 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "state_dir: /tmp/hw\nheadscale:\n  binary: /usr/local/bin/headscale\n  config: /etc/headscale/config.yaml\n";

    #[test]
    fn a_minisign_key_requires_signatures_unless_the_admin_says_otherwise() {
        let key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
        let with_key = format!("{MINIMAL}release:\n  minisign_public_key: {key}\n");
        assert!(
            parse(Path::new("hw.yaml"), &with_key)
                .expect("valid")
                .release
                .require_signature
        );
        let opted_out = format!("{with_key}  require_signature: false\n");
        assert!(
            !parse(Path::new("hw.yaml"), &opted_out)
                .expect("valid")
                .release
                .require_signature
        );
        assert!(
            !parse(Path::new("hw.yaml"), MINIMAL)
                .expect("valid")
                .release
                .require_signature
        );
    }

    #[test]
    fn compose_installs_resolve_their_commands_and_refuse_a_tagged_repository() {
        let compose = |extra: &str| {
            format!("state_dir: /tmp/hw\nheadscale:\n  install:\n    kind: compose\n    file: /srv/hs/compose.yaml\n{extra}")
        };
        let s = parse(
            Path::new("hw.yaml"),
            &compose("    command: [/usr/bin/podman-compose]\n    image: 127.0.0.1:5000/headscale/headscale\n"),
        )
        .expect("valid");
        let Install::Compose(c) = &s.headscale.install else {
            panic!("not compose: {:?}", s.headscale.install)
        };
        assert_eq!(c.service, "headscale");
        assert_eq!(c.command, vec!["/usr/bin/podman-compose".to_string()]);
        assert!(c.engine[0].ends_with("/podman"), "{:?}", c.engine);
        assert!(matches!(s.headscale.service, ServiceSettings::Compose(_)));
        for (extra, says) in [
            (
                "    command: [/usr/bin/podman-compose]\n    image: headscale/headscale:0.26.1\n",
                "names a tag",
            ),
            (
                "    command: [/opt/bin/nerdctl-compose]\n",
                "cannot tell which engine",
            ),
            ("    command: [no/such]\n", "neither a program name"),
        ] {
            let e = parse(Path::new("hw.yaml"), &compose(extra)).expect_err(extra);
            assert!(e.to_string().contains(says), "{e}");
        }
        let e = parse(
            Path::new("hw.yaml"),
            "state_dir: /tmp/hw\nheadscale:\n  install:\n    kind: flatpak\n",
        )
        .expect_err("unknown kind");
        assert!(e.to_string().contains("unknown install kind"), "{e}");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let s = parse(Path::new("hw.yaml"), MINIMAL).expect("valid");
        assert_eq!(s.release.owner, "juanfont");
        assert_eq!(s.release.min_age, Duration::from_secs(3 * 86400));
        assert_eq!(s.keys.max_age, Duration::from_secs(90 * 86400));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = format!("{MINIMAL}release:\n  chanel: stable\n");
        let e = parse(Path::new("hw.yaml"), &text).expect_err("unknown key");
        let shown = e.to_string();
        assert!(shown.starts_with("hw.yaml:6"), "{shown}");
        assert!(shown.contains("chanel"), "{shown}");
        assert!(e.hint().is_some());
    }

    #[test]
    fn bad_duration_and_constraint() {
        let e = parse(
            Path::new("c.yaml"),
            &format!("{MINIMAL}release:\n  min_age: 3 parsecs\n"),
        )
        .expect_err("bad");
        assert!(e.to_string().contains("c.yaml:6"), "{e}");
        assert!(e.to_string().contains("release.min_age"), "{e}");
        let e = parse(
            Path::new("c.yaml"),
            &format!("{MINIMAL}release:\n  constraint: \">=banana\"\n"),
        )
        .expect_err("bad");
        assert!(e.to_string().contains("c.yaml:6"), "{e}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("ghp_abc")), "Secret(***)");
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_example_config_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("headwarden.example.yaml");
        let s = super::load(&path).expect("headwarden.example.yaml must stay valid");
        assert_eq!(s.release.owner, "juanfont");
        assert_eq!(s.smoke.checks, super::SmokeCheck::ALL.to_vec());
    }

    #[test]
    fn the_connectivity_probe_is_a_default_check_and_can_be_left_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        let load = |smoke: &str| {
            std::fs::write(
                &path,
                format!(
                    "state_dir: {}/state\nheadscale:\n  binary: /usr/local/bin/headscale\nsmoke:\n{smoke}",
                    dir.path().display()
                ),
            )
            .expect("write");
            super::load(&path)
        };
        let s = load("  timeout: 5s\n").expect("defaults");
        assert!(s.smoke.checks.contains(&super::SmokeCheck::Connectivity));
        let s = load("  checks: [health, data_parity]\n").expect("chosen");
        assert_eq!(
            s.smoke.checks,
            vec![super::SmokeCheck::Health, super::SmokeCheck::DataParity]
        );
        let e = load("  checks: [health, ping]\n").expect_err("unknown");
        assert!(e.message.contains("unknown check \"ping\""), "{e:?}");
        assert!(e.hint.is_some_and(|h| h.contains("connectivity")));
    }
}
